/* The inference engine: device workers, execution contexts, running a launch, launch completion.
 *
 * Each device has a worker: a FIFO of launches and EK_WORKER_THREADS threads, started with the first
 * launch and kept for the process (idle on a condition variable), so launches of different requests
 * run concurrently; a launch whose caller waits for it (ek_launch_run) runs on the caller's thread when
 * a worker slot is free. A launch runs in an *execution context* of its stage (exec.h), taken from the
 * stage's pool (a new one when none is free): the stage's arena (device memory, so it shows in the heap
 * statistics), per-thread scratch, the provider's per-op states and a team of threads (team.c).
 * Concurrent launches of one network therefore never share intermediate tensors or scratch, and
 * contexts are reused, so the hot path allocates nothing.
 *
 * A team is the launching thread plus threads-1 helpers owned by the context, never more threads than
 * the CPUs the launch may run on (ek_usable_cpus).
 *
 * Locks, outermost first: the runtime's lock (pools, never held while running), the device lock
 * (shared while a launch touches device memory, as copies hold it), the worker lock, the launch
 * lock. A launch never calls ek_malloc_device/ek_free_device while it holds the device lock. */
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "exec.h"
#include "plugin_internal.h"

#define ALIGN ((size_t)64)
/* Bytes past the arena's end that a provider may read (XNNPACK reads up to XNN_EXTRA_BYTES = 16
 * past a tensor); device memories are 64-byte blocks, so their tails are covered too. */
#define ARENA_SLACK ((size_t)64)

static pthread_mutex_t launch_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t launches_ended = PTHREAD_COND_INITIALIZER; /* some runtime's `launches` reached 0 */
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;
static pthread_condattr_t monotonic_attr;

static _Thread_local bool tls_worker;                 /* a device worker thread */
static _Thread_local bool tls_in_launch; /* running a launch on its caller's thread (ek_launch_run) */
static _Thread_local struct ek_launch_rec *tls_callback; /* its on_done callback runs on this thread */

/* A device's worker: the FIFO of launches and the threads that run them (one per device index). */
struct ek_dev_worker {
    pthread_mutex_t lock;
    pthread_cond_t wake; /* workers: the queue is not empty */
    pthread_cond_t idle; /* ek_dev_sync: the queue is empty and nothing runs */
    struct ek_launch_rec *head, *tail;
    int index;   /* the device's */
    int threads; /* started (they live for the process, idle on `wake`) */
    int running; /* launches taken off the queue, or run by their callers (ek_launch_run), not finished */
    ek_status_t error; /* the first failure of a handle-less launch since the last ek_dev_sync */
    char error_text[512];
};
static struct ek_dev_worker workers[EK_MAX_DEVICES];

static void engine_init(void) {
    for (int i = 0; i < EK_MAX_DEVICES; i++) {
        struct ek_dev_worker *w = &workers[i];
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->wake, NULL);
        pthread_cond_init(&w->idle, NULL);
        w->index = i;
        w->error = EK_OK;
    }
    pthread_condattr_init(&monotonic_attr);
    pthread_condattr_setclock(&monotonic_attr, CLOCK_MONOTONIC);
}

/* The worker of device `index` (a valid device index: the caller checked its handle). */
static struct ek_dev_worker *worker_of(int index) {
    pthread_once(&engine_once, engine_init);
    return &workers[index];
}

bool ek_engine_in_callback_of(const struct ek_runtime *rt) { return tls_callback && tls_callback->rt == rt; }

/* ---- execution contexts and their teams ---- */

struct ek_stage_engine {
    struct ek_exec *free_list;
    struct ek_exec *all;
};

static void exec_free(struct ek_runtime *rt, struct ek_exec *exec) {
    ek_team_destroy(exec);
    if (exec->states) {
        for (uint32_t i = 0; i < exec->stage->op_count; i++)
            if (exec->states[i])
                exec->provider->destroy(exec->states[i]);
        free(exec->states);
    }
    if (exec->arena.id && !exec->arena_borrowed)
        ek_rt_free(rt, exec->arena, exec->arena_offset);
    free(exec->scratch);
    free(exec->tensor_ptrs);
    free(exec->in_ptrs);
    free(exec->out_ptrs);
    free(exec->io_recs);
    free(exec->dims);
    free(exec->solo_ops);
    free(exec);
}

ek_status_t ek_engine_workspace_bytes(const struct ek_network *net, const struct ek_stage *stage, size_t *bytes) {
    if (stage->arena_size > SIZE_MAX - 2 * ALIGN - ARENA_SLACK)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "network '%s': arena of %zu bytes is too large", net->info.name,
                       stage->arena_size);
    /* Rounded up to the alignment, at least one block, plus the slack. */
    size_t arena = (stage->arena_size + ALIGN - 1) / ALIGN * ALIGN;
    *bytes = (arena < ALIGN ? ALIGN : arena) + ARENA_SLACK;
    return EK_OK;
}

/* Ops below this much work (FLOPs plus elements written: a few microseconds on one core) run on one
 * thread: sharing them costs a fork-join that outweighs what the second thread would save, which made
 * small models (an MLP, an SE block's gate) slower with 2 threads than with 1. */
#define SOLO_WORK ((uint64_t)32768)

static bool solo_op(const struct ek_op *op) {
    if (op->type == EK_OP_PLUGIN || op->n_out < 1) /* a plugin's work is unknown to the runtime */
        return false;
    uint64_t written = 0;
    for (int i = 0; i < op->n_out; i++)
        written += op->out[i]->count;
    return ek_op_flops(op) + written < SOLO_WORK;
}

/* A context whose arena is `mem` at `offset` (a workspace's), or one the runtime allocates (mem {0}). */
static ek_status_t exec_create(struct ek_runtime *rt, struct ek_network *net, struct ek_stage *stage, ek_mem_t mem,
                               size_t offset, struct ek_exec **out) {
    struct ek_exec *exec = calloc(1, sizeof *exec);
    if (!exec)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for an execution context of network '%s'",
                       net->info.name);
    exec->stage = stage;
    ek_team_init(exec);

    ek_status_t status = EK_OK;
    size_t in_total = 0, out_total = 0;
    for (uint32_t i = 0; i < stage->op_count; i++) {
        in_total += (size_t)stage->ops[i].n_in; /* each below 65536, op_count below 2^32: no overflow */
        out_total += (size_t)stage->ops[i].n_out;
    }
    size_t ios = (size_t)net->info.input_count + (size_t)net->info.output_count;
    exec->tensor_ptrs = calloc(stage->tensor_count ? stage->tensor_count : 1, sizeof *exec->tensor_ptrs);
    exec->in_ptrs = calloc(in_total ? in_total : 1, sizeof *exec->in_ptrs);
    exec->out_ptrs = calloc(out_total ? out_total : 1, sizeof *exec->out_ptrs);
    exec->io_recs = calloc(ios ? ios : 1, sizeof *exec->io_recs);
    bool dynamic = false;
    for (int i = 0; i < net->info.output_count; i++)
        dynamic = dynamic || stage->output_tensors[i]->dynamic;
    if (dynamic)
        exec->dims = calloc(stage->tensor_count, sizeof *exec->dims);
    exec->solo_ops = calloc(stage->op_count ? stage->op_count : 1, sizeof *exec->solo_ops);
    if (!exec->tensor_ptrs || !exec->in_ptrs || !exec->out_ptrs || !exec->io_recs || (dynamic && !exec->dims) ||
        !exec->solo_ops) {
        status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for an execution context of network '%s'",
                         net->info.name);
        goto fail;
    }

    for (uint32_t i = 0; i < stage->op_count; i++) {
        exec->solo_ops[i] = solo_op(&stage->ops[i]);
        exec->any_shared = exec->any_shared || !exec->solo_ops[i];
    }

    size_t arena = 0;
    if ((status = ek_engine_workspace_bytes(net, stage, &arena)) != EK_OK)
        goto fail;
    if (mem.id) {
        exec->arena = mem;
        exec->arena_offset = offset;
        exec->arena_borrowed = true;
    } else if ((status = ek_rt_alloc(rt, arena, false, &exec->arena, &exec->arena_offset)) != EK_OK) {
        char why[400];
        snprintf(why, sizeof why, "%s", ek_last_error());
        status = ek_fail(status, "network '%s': no device memory for its %zu-byte workspace: %s", net->info.name,
                         arena, why);
        goto fail;
    }

    exec->provider = rt->provider;
    if (rt->provider && stage->op_count) {
        exec->states = calloc(stage->op_count, sizeof *exec->states);
        if (!exec->states) {
            status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for the provider states of network '%s'",
                             net->info.name);
            goto fail;
        }
        for (uint32_t i = 0; i < stage->op_count; i++) {
            const struct ek_op *op = &stage->ops[i];
            void *state = NULL;
            if (rt->kernels == EK_KERNELS_AUTO && ek_op_prefers_portable(op))
                continue; /* e.g. a Winograd CONV: faster than the provider's */
            ek_status_t s = rt->provider->create(op, &state);
            if (s == EK_ERR_UNSUPPORTED) {
                continue; /* the portable kernel runs this op */
            } else if (s != EK_OK) {
                status = ek_fail(s, "network '%s': the %s provider failed to set up op '%s' (%s): %s", net->info.name,
                                 rt->provider->name, op->name, ek_op_type_name(op->type), ek_status_str(s));
                goto fail;
            }
            exec->states[i] = state;
        }
    }
    *out = exec;
    return EK_OK;
fail:
    exec_free(rt, exec);
    return status;
}

/* Size the team and scratch for `threads`, pin them to `mask`. */
static ek_status_t exec_configure(struct ek_exec *exec, const struct ek_network *net, int threads, uint64_t mask) {
    if (threads != exec->want_threads) {
        ek_team_stop(exec);
        free(exec->scratch);
        exec->scratch = NULL;
        exec->want_threads = 0;
        size_t per = exec->stage->scratch_per_thread;
        if (per > SIZE_MAX - ALIGN)
            return ek_fail(EK_ERR_OUT_OF_MEMORY, "network '%s': %zu bytes of scratch per thread are too many",
                           net->info.name, per);
        size_t stride = (per + ALIGN - 1) / ALIGN * ALIGN;
        if (stride && (size_t)threads > SIZE_MAX / stride)
            return ek_fail(EK_ERR_OUT_OF_MEMORY, "network '%s': scratch of %d x %zu bytes is too large",
                           net->info.name, threads, stride);
        if (stride) {
            exec->scratch = aligned_alloc(ALIGN, stride * (size_t)threads);
            if (!exec->scratch)
                return ek_fail(EK_ERR_OUT_OF_MEMORY, "network '%s': no host memory for %d x %zu bytes of scratch",
                               net->info.name, threads, stride);
        }
        exec->scratch_stride = stride;
        ek_status_t status = ek_team_start(exec, threads);
        if (status != EK_OK)
            return status;
        exec->want_threads = threads;
        exec->cpu_mask = 0;
    }
    if (mask != exec->cpu_mask) {
        ek_status_t status = ek_team_pin(exec, mask);
        if (status != EK_OK)
            return status;
        exec->cpu_mask = mask;
    }
    return EK_OK;
}

static void exec_release(struct ek_runtime *rt, struct ek_exec *exec) {
    struct ek_stage_engine *pool = exec->stage->engine;
    pthread_mutex_lock(&rt->lock);
    exec->next_free = pool->free_list;
    pool->free_list = exec;
    pthread_mutex_unlock(&rt->lock);
}

static ek_status_t exec_acquire(struct ek_runtime *rt, struct ek_network *net, struct ek_stage *stage, int threads,
                                uint64_t mask, struct ek_exec **out) {
    pthread_mutex_lock(&rt->lock);
    if (!stage->engine && !(stage->engine = calloc(1, sizeof *stage->engine))) {
        pthread_mutex_unlock(&rt->lock);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for the contexts of network '%s'", net->info.name);
    }
    struct ek_stage_engine *pool = stage->engine;
    /* Prefer a context already set up for this thread count and mask. */
    struct ek_exec **pick = NULL;
    for (struct ek_exec **p = &pool->free_list; *p; p = &(*p)->next_free) {
        if (!pick)
            pick = p;
        if ((*p)->want_threads == threads && (*p)->cpu_mask == mask) {
            pick = p;
            break;
        }
    }
    struct ek_exec *exec = NULL;
    if (pick) {
        exec = *pick;
        *pick = exec->next_free;
        exec->next_free = NULL;
    }
    pthread_mutex_unlock(&rt->lock);
    if (!exec) {
        ek_status_t status = exec_create(rt, net, stage, (ek_mem_t){0}, 0, &exec);
        if (status != EK_OK)
            return status;
        pthread_mutex_lock(&rt->lock);
        exec->next_all = pool->all;
        pool->all = exec;
        pthread_mutex_unlock(&rt->lock);
    }
    ek_status_t status = exec_configure(exec, net, threads, mask);
    if (status != EK_OK) {
        exec_release(rt, exec);
        return status;
    }
    *out = exec;
    return EK_OK;
}

ek_status_t ek_engine_exec_create_in(struct ek_runtime *rt, struct ek_network *net, struct ek_stage *stage,
                                     ek_mem_t mem, size_t offset, struct ek_exec **exec) {
    return exec_create(rt, net, stage, mem, offset, exec);
}

void ek_engine_exec_free(struct ek_runtime *rt, struct ek_exec *exec) { exec_free(rt, exec); }

void ek_engine_release_stage(struct ek_runtime *rt, struct ek_stage *stage) {
    struct ek_stage_engine *pool = stage->engine;
    if (!pool)
        return;
    struct ek_exec *exec = pool->all;
    while (exec) {
        struct ek_exec *next = exec->next_all;
        exec_free(rt, exec);
        exec = next;
    }
    free(pool);
    stage->engine = NULL;
}

/* ---- running a launch ---- */

static ek_status_t op_failed(const struct ek_network *net, const struct ek_op *op, ek_status_t status,
                             const char *provider) {
    char why[400];
    if (provider)
        snprintf(why, sizeof why, "the %s provider returned %s", provider, ek_status_name(status));
    else
        snprintf(why, sizeof why, "%s", ek_last_error()[0] ? ek_last_error() : ek_status_str(status));
    return ek_fail(status, "network '%s', op '%s' (%s): %s", net->info.name, op->name ? op->name : "",
                   ek_op_display_type(op), why);
}

/* Find the memories of the launch's tensors again (they may have been freed since it was queued). */
static ek_status_t resolve_memories(struct ek_device *device, struct ek_launch_rec *rec, struct ek_exec *exec,
                                    uint8_t **arena) {
    const ek_net_info_t *info = &rec->net->info;
    for (int i = 0; i < rec->n_in + rec->n_out; i++) {
        bool is_in = i < rec->n_in;
        const ek_io_info_t *io = is_in ? &info->inputs[i] : &info->outputs[i - rec->n_in];
        const struct ek_tensor_desc *desc =
            is_in ? rec->stage->input_tensors[i] : rec->stage->output_tensors[i - rec->n_in];
        void *obj;
        int owner;
        ek_status_t status = ek_handle_get(rec->tensors[i].mem.id, EK_HANDLE_MEMORY, &obj, &owner);
        if (status != EK_OK)
            return ek_fail(status, "network '%s': the memory of %s '%s' (0x%016" PRIx64 ") %s before the launch ran",
                           info->name, is_in ? "input" : "output", io->name, rec->tensors[i].mem.id,
                           status == EK_ERR_FREED_HANDLE ? "was freed" : "is not valid");
        struct ek_mem_rec *mem = obj;
        /* A DYNAMIC output needs room for what it gets, checked when that is known. */
        size_t need = desc->dynamic ? 0 : desc->nbytes;
        if (owner != device->index || rec->tensors[i].offset > mem->size || need > mem->size - rec->tensors[i].offset)
            return ek_fail(EK_ERR_FREED_HANDLE, "network '%s': the memory of %s '%s' changed before the launch ran",
                           info->name, is_in ? "input" : "output", io->name);
        exec->io_recs[i] = mem;
    }
    void *obj;
    int owner;
    ek_status_t status = ek_handle_get(exec->arena.id, EK_HANDLE_MEMORY, &obj, &owner);
    if (status != EK_OK && exec->arena_borrowed)
        return ek_fail(EK_ERR_FREED_HANDLE, "network '%s': the memory of its workspace (0x%016" PRIx64 ") was freed "
                       "before the launch ran; destroy the workspace before freeing its memory", info->name,
                       exec->arena.id);
    if (status != EK_OK)
        return ek_fail(EK_ERR_INTERNAL, "network '%s': its workspace memory 0x%016" PRIx64 " was freed by someone "
                       "else", info->name, exec->arena.id);
    const struct ek_mem_rec *mem = obj;
    size_t need = 0;
    (void)ek_engine_workspace_bytes(rec->net, rec->stage, &need);
    if (owner != device->index || exec->arena_offset > mem->size || need > mem->size - exec->arena_offset)
        return ek_fail(EK_ERR_INTERNAL, "network '%s': its workspace memory 0x%016" PRIx64 " changed", info->name,
                       exec->arena.id);
    *arena = device->pool.base + mem->offset + exec->arena_offset;
    return EK_OK;
}

static void text_dims(char *buf, size_t size, size_t *at, const struct ek_tensor_desc *t) {
    if (!t) {
        *at += (size_t)snprintf(buf + *at, *at < size ? size - *at : 0, "-");
    } else if (t->rank == 0) {
        *at += (size_t)snprintf(buf + *at, *at < size ? size - *at : 0, "scalar");
    }
    for (int d = 0; t && d < t->rank; d++)
        *at += (size_t)snprintf(buf + *at, *at < size ? size - *at : 0, "%s%" PRId64, d ? "x" : "", t->dims[d]);
    if (*at >= size)
        *at = size - 1;
}

/* The LayerExecute record of op k, run from t0 to t1. */
static void profile_op(const struct ek_launch_rec *rec, const struct ek_exec *exec, uint32_t k, uint64_t t0,
                       uint64_t t1, const char *provider) {
    const struct ek_stage *stage = rec->stage;
    const struct ek_op *op = &stage->ops[k];
    const struct ek_op_source *src = stage->sources ? &stage->sources[k] : NULL;
    char shapes[512], nodes[2048];
    size_t at = 0;
    shapes[0] = '\0';
    for (int i = 0; i < op->n_in; i++) {
        if (i)
            at += (size_t)snprintf(shapes + at, at < sizeof shapes ? sizeof shapes - at : 0, ", ");
        if (at >= sizeof shapes)
            at = sizeof shapes - 1;
        text_dims(shapes, sizeof shapes, &at, op->in[i]);
    }
    at += (size_t)snprintf(shapes + at, at < sizeof shapes ? sizeof shapes - at : 0, " -> ");
    if (at >= sizeof shapes)
        at = sizeof shapes - 1;
    for (int i = 0; i < op->n_out; i++)
        text_dims(shapes, sizeof shapes, &at, op->out[i]);
    at = 0;
    nodes[0] = '\0';
    for (uint32_t i = 0; src && i < src->node_count && at < sizeof nodes - 1; i++)
        at += (size_t)snprintf(nodes + at, sizeof nodes - at, "%s%s", i ? "\x1f" : "", src->nodes[i]);
    ek_profile_record_t r;
    memset(&r, 0, sizeof r);
    r.kind = EK_PROFILE_LAYER_EXECUTE;
    r.name = op->name;
    r.network = rec->net->info.name;
    r.op_type = ek_op_display_type(op);
    r.provider = provider;
    r.algorithm = strcmp(provider, "portable") == 0 ? ek_op_algorithm(op) : "";
    r.nodes = nodes;
    r.tensor = src ? src->tensor : "";
    r.shapes = shapes;
    r.op_index = (int)k;
    r.stage = (int)(stage - rec->net->stages);
    r.threads = ek_exec_threads(exec);
    r.launch = rec->profile_launch;
    r.flops = ek_op_flops(op);
    r.start_ns = t0;
    r.duration_ns = t1 - t0;
    r.thread = ek_thread_id();
    ek_profiler_add(rec->profile, &r);
}

/* The test hook: add 1 to every element of the op's (float32) output. */
static void corrupt_output(const struct ek_op *op, void *out) {
    if (op->n_out < 1 || op->out[0]->dtype != EK_DTYPE_FLOAT32)
        return;
    float *y = out;
    for (size_t i = 0; i < op->out[0]->count; i++)
        y[i] += 1.0f;
}

static ek_status_t run_ops(struct ek_launch_rec *rec, struct ek_exec *exec, struct ek_dump *dump) {
    const struct ek_stage *stage = rec->stage;
    struct ek_profiler *profile = rec->profile;
    const char *corrupt = rec->rt->test_corrupt_op;
    size_t in_at = 0, out_at = 0;
    for (uint32_t k = 0; k < stage->op_count; k++) {
        uint64_t t0 = profile ? ek_now_ns() : 0;
        const struct ek_op *op = &stage->ops[k];
        exec->solo = exec->solo_ops[k];
        const void **in = exec->in_ptrs + in_at;
        void **out = exec->out_ptrs + out_at;
        for (int i = 0; i < op->n_in; i++)
            in[i] = op->in[i] ? exec->tensor_ptrs[op->in[i] - stage->tensors] : NULL;
        for (int i = 0; i < op->n_out; i++)
            out[i] = exec->tensor_ptrs[op->out[i] - stage->tensors];
        in_at += (size_t)op->n_in;
        out_at += (size_t)op->n_out;
        ek_status_t status;
        if (exec->states && exec->states[k]) {
            const struct ek_parallel team = {ek_exec_threads(exec), ek_parallel_for, exec};
            status = exec->provider->run(exec->states[k], in, out, &team);
            if (status != EK_OK)
                return op_failed(rec->net, op, status, exec->provider->name);
        } else {
            const struct ek_kernel *kernel = ek_portable_kernel(op->type);
            if (!kernel || !kernel->run)
                return ek_fail(EK_ERR_INTERNAL, "network '%s', op '%s': no kernel for op type %d", rec->net->info.name,
                               op->name ? op->name : "", (int)op->type);
            status = kernel->run(op, in, out, exec);
            if (status != EK_OK)
                return op_failed(rec->net, op, status, NULL);
        }
        if (corrupt && op->name && strcmp(op->name, corrupt) == 0)
            corrupt_output(op, out[0]);
        if (profile)
            profile_op(rec, exec, k, t0, ek_now_ns(),
                       exec->states && exec->states[k] ? exec->provider->name
                       : op->type == EK_OP_PLUGIN        ? ek_plugin_provider(op)
                                                         : "portable");
        if (dump) {
            const struct ek_tensor_desc *o = op->out[0];
            const int64_t *dims = o->dynamic && exec->dims ? exec->dims[o - rec->stage->tensors] : NULL;
            if ((status = ek_dump_op(dump, k, out[0], dims)) != EK_OK)
                return status;
        }
    }
    return EK_OK;
}

/* A DYNAMIC output: the dims its op reported, its bytes copied from the arena to the caller's memory
 * when they fit there (else an error naming the size needed; nothing is written), and its shape
 * reported in the launch's outputs and the caller's array. */
static ek_status_t copy_out_dynamic(struct ek_device *device, struct ek_launch_rec *rec, struct ek_exec *exec,
                                    int i) {
    const struct ek_stage *stage = rec->stage;
    const struct ek_tensor_desc *desc = stage->output_tensors[i];
    ek_tensor_t *out = &rec->tensors[rec->n_in + i];
    ek_shape_t shape;
    memset(&shape, 0, sizeof shape);
    shape.num_dims = desc->rank;
    memcpy(shape.dims, exec->dims[desc - stage->tensors], (size_t)desc->rank * sizeof shape.dims[0]);
    size_t bytes = ek_shape_bytes(desc->dtype, &shape);
    const struct ek_mem_rec *mem = exec->io_recs[rec->n_in + i];
    size_t room = mem->size - out->offset; /* offset <= size: resolve_memories checked */
    if (bytes > room) {
        char dims[160];
        size_t at = 0;
        dims[0] = '\0';
        for (int d = 0; d < shape.num_dims && at < sizeof dims; d++)
            at += (size_t)snprintf(dims + at, sizeof dims - at, "%s%" PRId64, d ? "x" : "", shape.dims[d]);
        return ek_fail(EK_ERR_OUT_OF_RANGE, "network '%s': output '%s' is %s %s this launch, %zu bytes; its memory "
                       "holds %zu bytes from offset %zu: give it at least %zu bytes (its bound is %zu)",
                       rec->net->info.name, rec->net->info.outputs[i].name, shape.num_dims ? dims : "scalar",
                       ek_dtype_name(desc->dtype), bytes, room, out->offset, bytes, desc->nbytes);
    }
    if (bytes)
        memcpy(device->pool.base + mem->offset + out->offset, exec->tensor_ptrs[desc - stage->tensors], bytes);
    out->shape = shape;
    if (rec->caller_outputs)
        rec->caller_outputs[i].shape = shape;
    return EK_OK;
}

static ek_status_t exec_run(struct ek_launch_rec *rec, struct ek_exec *exec) {
    const struct ek_stage *stage = rec->stage;
    if (exec->any_shared)
        ek_team_wake(exec); /* its helpers spin while this thread resolves memories and runs solo ops */
    struct ek_device *device;
    /* Shared, like a copy: a concurrent ek_free_device of an input waits for the launch. */
    ek_status_t status = ek_device_lock(rec->rt->dev, false, &device);
    if (status != EK_OK)
        return status;
    uint8_t *arena = NULL;
    if ((status = resolve_memories(device, rec, exec, &arena)) != EK_OK) {
        ek_device_unlock(device);
        return status;
    }
    char call[200];
    for (int i = 0; i < rec->n_in; i++) {
        if (!exec->io_recs[i]->shadow)
            continue; /* not mapped in strict mode: nothing to check, so no message to format */
        snprintf(call, sizeof call, "launch of network '%s' (input '%s')", rec->net->info.name,
                 rec->net->info.inputs[i].name);
        ek_coh_device_read(device, exec->io_recs[i], rec->tensors[i].offset, stage->input_tensors[i]->nbytes, call);
    }
    for (uint32_t t = 0; t < stage->tensor_count; t++) {
        const struct ek_tensor_desc *desc = &stage->tensors[t];
        void *p = NULL;
        int io = (int)desc->io_index;
        switch (desc->storage) {
        case EK_STORAGE_ARENA:
            p = arena + desc->offset;
            break;
        case EK_STORAGE_CONSTANT:
            p = (void *)desc->constant; /* kernels only read inputs */
            break;
        case EK_STORAGE_INPUT:
            p = device->pool.base + exec->io_recs[io]->offset + rec->tensors[io].offset;
            break;
        case EK_STORAGE_OUTPUT:
            if (desc->dynamic) { /* written in the arena; copied out below, if it fits */
                p = arena + desc->offset;
                memcpy(exec->dims[t], desc->dims, sizeof exec->dims[t]);
            } else {
                p = device->pool.base + exec->io_recs[rec->n_in + io]->offset + rec->tensors[rec->n_in + io].offset;
            }
            break;
        }
        exec->tensor_ptrs[t] = p;
    }

    /* The launching thread is thread 0 of the team: pin it too, for this launch only. */
    cpu_set_t old_set;
    bool repin = false;
    if (rec->cpu_mask) {
        cpu_set_t set;
        ek_cpu_set_of(rec->cpu_mask, &set);
        if (pthread_getaffinity_np(pthread_self(), sizeof old_set, &old_set) == 0 &&
            pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0)
            repin = true;
    }
    struct ek_dump *dump = NULL;
    if (rec->dump_dir) {
        status = ek_dump_begin(rec->dump_dir, rec->net, stage, &dump);
        for (int i = 0; i < rec->n_in && status == EK_OK; i++)
            status = ek_dump_input(dump, i, exec->tensor_ptrs[stage->input_tensors[i] - stage->tensors]);
    }
    if (status == EK_OK)
        status = run_ops(rec, exec, dump);
    exec->solo = false;
    if (dump) {
        if (status == EK_OK)
            status = ek_dump_finish(dump); /* frees it */
        else
            ek_dump_free(dump);
    }
    if (repin)
        pthread_setaffinity_np(pthread_self(), sizeof old_set, &old_set);

    for (int i = 0; i < rec->n_out && status == EK_OK; i++)
        if (stage->output_tensors[i]->dynamic)
            status = copy_out_dynamic(device, rec, exec, i);
    if (status == EK_OK)
        for (int i = 0; i < rec->n_out; i++) {
            const struct ek_tensor_desc *desc = stage->output_tensors[i];
            ek_tensor_t *out = &rec->tensors[rec->n_in + i];
            size_t wrote = desc->dynamic ? ek_shape_bytes(desc->dtype, &out->shape) : desc->nbytes;
            if (wrote)
                ek_coh_device_wrote(device, exec->io_recs[rec->n_in + i], out->offset, wrote);
        }
    ek_device_unlock(device);
    return status;
}

static void rec_unref_locked(struct ek_launch_rec *rec) {
    if (--rec->refs == 0) {
        pthread_cond_destroy(&rec->cond);
        ek_profiler_release(rec->profile);
        free(rec->dump_dir);
        free(rec->tensors);
        free(rec);
    }
}

static void launch_ended_locked(struct ek_runtime *rt) {
    if (--rt->launches == 0)
        pthread_cond_broadcast(&launches_ended);
}

void ek_engine_wait_launches(struct ek_runtime *rt) {
    pthread_mutex_lock(&launch_lock);
    while (rt->launches > 0)
        pthread_cond_wait(&launches_ended, &launch_lock);
    pthread_mutex_unlock(&launch_lock);
}

/* Run a launch and publish its result; `rec` may be gone when this returns. */
static void execute(struct ek_launch_rec *rec) {
    struct ek_runtime *rt = rec->rt;
    struct ek_exec *exec = NULL;
    /* Never more threads than the CPUs the launch may run on: the extra ones would only wait for
     * each other, and XNNPACK's pthreadpool spins for milliseconds while it waits. */
    int threads = rec->threads, cpus = ek_usable_cpus(rec->cpu_mask);
    if (threads > cpus)
        threads = cpus;
    struct ek_profiler *profile = rec->profile;
    uint64_t t_start = 0, t_ready = 0;
    int stage_index = (int)(rec->stage - rec->net->stages);
    if (profile) {
        t_start = ek_now_ns();
        const struct ek_model *model = rec->net->model;
        if (ek_profiler_first_sight(profile, model))
            ek_profiler_span(profile, EK_PROFILE_MODEL_INIT, rec->net->info.name, -1, 0, model->load_start_ns,
                             model->load_start_ns + model->load_ns, rec->caller_thread, model->size);
        ek_profiler_span(profile, EK_PROFILE_WAIT, rec->net->info.name, stage_index, rec->profile_launch,
                         rec->submit_ns < t_start ? rec->submit_ns : t_start, t_start, rec->caller_thread, 0);
    }
    if (rt->test_slow_launch_ms > 0) {
        struct timespec pause = {rt->test_slow_launch_ms / 1000, (long)(rt->test_slow_launch_ms % 1000) * 1000000L};
        while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {
        }
    }
    ek_status_t status;
    if (rec->workspace) {
        exec = rec->workspace->exec;
        status = exec_configure(exec, rec->net, threads, rec->cpu_mask);
    } else {
        status = exec_acquire(rt, rec->net, rec->stage, threads, rec->cpu_mask, &exec);
    }
    if (profile) {
        t_ready = ek_now_ns();
        ek_profiler_span(profile, EK_PROFILE_REQUEST_INIT, rec->net->info.name, stage_index, rec->profile_launch,
                         t_start, t_ready, ek_thread_id(), 0);
    }
    int team = exec ? exec->threads : 0;
    if (status == EK_OK) {
        status = exec_run(rec, exec);
        if (status != EK_OK)
            snprintf(rec->error, sizeof rec->error, "%s", ek_last_error());
        if (!rec->workspace)
            exec_release(rt, exec);
    } else {
        snprintf(rec->error, sizeof rec->error, "%s", ek_last_error());
    }
    /* Free for the next launch before on_done, which may start it (or its waiter, at once after). */
    if (rec->workspace)
        atomic_store(&rec->workspace->busy, false);
    if (profile) {
        ek_profile_record_t r;
        memset(&r, 0, sizeof r);
        r.kind = EK_PROFILE_MODEL_EXECUTE;
        r.name = r.network = rec->net->info.name;
        r.op_index = -1;
        r.stage = stage_index;
        r.threads = team;
        r.launch = rec->profile_launch;
        r.start_ns = t_start;
        r.duration_ns = ek_now_ns() - t_start;
        r.thread = ek_thread_id();
        ek_profiler_add(profile, &r);
    }
    rec->status = status;
    if (status != EK_OK && !rec->handle && !rec->caller_waits) {
        struct ek_dev_worker *w = worker_of(rt->device_index);
        pthread_mutex_lock(&w->lock);
        if (w->error == EK_OK) {
            w->error = status;
            snprintf(w->error_text, sizeof w->error_text, "%s", rec->error);
        }
        pthread_mutex_unlock(&w->lock);
    }
    if (rec->on_done) {
        /* The status is final: waiting on this launch from its own callback returns it at once. */
        if (status != EK_OK)
            ek_fail(status, "%s", rec->error);
        struct ek_launch_rec *outer = tls_callback; /* a launch_data run inline from a callback */
        tls_callback = rec;
        rec->on_done(rec->user_data, status);
        tls_callback = outer;
    }
    pthread_mutex_lock(&launch_lock);
    rec->done = true;
    pthread_cond_broadcast(&rec->cond);
    rec_unref_locked(rec);
    launch_ended_locked(rt); /* the last touch of rt: ek_rt_destroy may free it once we unlock */
    pthread_mutex_unlock(&launch_lock);
}

/* ---- device workers ---- */

/* A launch taken from the queue or run by its caller has ended (under w->lock): ek_dev_sync may go on. */
static void slot_freed_locked(struct ek_dev_worker *w) {
    if (--w->running == 0 && !w->head)
        pthread_cond_broadcast(&w->idle);
}

static void *worker_main(void *arg) {
    struct ek_dev_worker *w = arg;
    tls_worker = true;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->head)
            pthread_cond_wait(&w->wake, &w->lock);
        struct ek_launch_rec *rec = w->head;
        w->head = rec->next;
        if (!w->head)
            w->tail = NULL;
        w->running++;
        pthread_mutex_unlock(&w->lock);
        execute(rec);
        pthread_mutex_lock(&w->lock);
        slot_freed_locked(w);
    }
    return NULL;
}

ek_status_t ek_dev_sync(ek_dev_t handle) {
    if (EK_IS_REMOTE(handle.id))
        return ek_rc_dev_sync(handle);
    int index;
    ek_status_t status = ek_handle_get(handle.id, EK_HANDLE_DEVICE, NULL, &index);
    if (status != EK_OK)
        return status;
    /* Without the device lock: the launches we wait for take it themselves. */
    struct ek_dev_worker *w = worker_of(index);
    if (tls_worker || tls_in_launch)
        return ek_fail(EK_ERR_BUSY, "ek_dev_sync inside a launch (an on_done callback, or a plugin op of a "
                       "launch run on its caller's thread) would wait for itself");
    pthread_mutex_lock(&w->lock);
    while (w->head || w->running)
        pthread_cond_wait(&w->idle, &w->lock);
    status = w->error;
    char text[sizeof w->error_text];
    memcpy(text, w->error_text, sizeof text);
    w->error = EK_OK;
    w->error_text[0] = '\0';
    pthread_mutex_unlock(&w->lock);
    if (status != EK_OK)
        return ek_fail(status, "%s", text);
    return EK_OK;
}

/* ---- launch records ---- */

ek_status_t ek_launch_new(struct ek_runtime *rt, int n_in, int n_out, bool with_handle, struct ek_launch_rec **out) {
    pthread_once(&engine_once, engine_init);
    struct ek_launch_rec *rec = calloc(1, sizeof *rec);
    if (rec)
        rec->tensors = calloc((size_t)n_in + (size_t)n_out, sizeof *rec->tensors);
    if (!rec || !rec->tensors) {
        if (rec)
            free(rec->tensors);
        free(rec);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a launch");
    }
    if (with_handle && !(rec->handle = ek_handle_new(EK_HANDLE_LAUNCH, rec, rt->device_index))) {
        free(rec->tensors);
        free(rec);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no room for another launch handle");
    }
    pthread_cond_init(&rec->cond, &monotonic_attr);
    rec->rt = rt;
    rec->n_in = n_in;
    rec->n_out = n_out;
    rec->refs = with_handle ? 2 : 1;
    pthread_mutex_lock(&launch_lock);
    rt->launches++;
    pthread_mutex_unlock(&launch_lock);
    *out = rec;
    return EK_OK;
}

void ek_launch_discard(struct ek_launch_rec *rec) {
    struct ek_runtime *rt = rec->rt;
    if (rec->workspace)
        atomic_store(&rec->workspace->busy, false);
    pthread_mutex_lock(&launch_lock);
    if (rec->handle)
        ek_handle_retire(rec->handle, EK_HANDLE_LAUNCH);
    pthread_cond_destroy(&rec->cond);
    ek_profiler_release(rec->profile);
    free(rec->dump_dir);
    free(rec->tensors);
    free(rec);
    launch_ended_locked(rt);
    pthread_mutex_unlock(&launch_lock);
}

/* Start the device's workers if they are not running yet (under w->lock). */
static ek_status_t start_workers(struct ek_dev_worker *w) {
    while (w->threads < EK_WORKER_THREADS) {
        pthread_t thread;
        int rc = ek_start_thread(&thread, worker_main, w, true);
        if (rc != 0) {
            if (w->threads > 0)
                break; /* one worker is enough to make progress */
            return ek_fail(EK_ERR_SYSTEM, "could not start the worker thread of device %d: %s", w->index,
                           strerror(rc));
        }
        w->threads++;
    }
    return EK_OK;
}

ek_status_t ek_launch_submit(struct ek_launch_rec *rec) {
    struct ek_dev_worker *w = worker_of(rec->rt->device_index);
    pthread_mutex_lock(&w->lock);
    ek_status_t status = start_workers(w);
    if (status != EK_OK) {
        pthread_mutex_unlock(&w->lock);
        ek_launch_discard(rec);
        return status;
    }
    rec->next = NULL;
    if (w->tail)
        w->tail->next = rec;
    else
        w->head = rec;
    w->tail = rec;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
    return EK_OK;
}

ek_status_t ek_launch_run(struct ek_launch_rec *rec) {
    rec->caller_waits = true;
    rec->refs++; /* the caller's, until it has read the result (not shared yet: no lock needed) */
    struct ek_dev_worker *w = worker_of(rec->rt->device_index);
    pthread_mutex_lock(&w->lock);
    /* From an on_done callback: queueing it could wait for this very thread. Else a free slot, with
     * nothing queued that would have gone first; on_done is promised a worker thread. */
    bool here = tls_worker || (!rec->on_done && !w->head && w->running < EK_WORKER_THREADS);
    if (here)
        w->running++; /* so ek_dev_sync waits for it */
    pthread_mutex_unlock(&w->lock);
    if (here) {
        bool outer = tls_in_launch;
        tls_in_launch = true;
        execute(rec);
        tls_in_launch = outer;
        pthread_mutex_lock(&w->lock);
        slot_freed_locked(w);
        pthread_mutex_unlock(&w->lock);
    } else {
        ek_status_t status = ek_launch_submit(rec);
        if (status != EK_OK)
            return status; /* the record is discarded */
    }
    pthread_mutex_lock(&launch_lock);
    while (!rec->done)
        pthread_cond_wait(&rec->cond, &launch_lock);
    ek_status_t status = rec->status;
    char text[sizeof rec->error];
    memcpy(text, rec->error, sizeof text);
    rec_unref_locked(rec);
    pthread_mutex_unlock(&launch_lock);
    if (status != EK_OK)
        return ek_fail(status, "%s", text);
    return EK_OK;
}

ek_status_t ek_launch_wait(ek_launch_t launch, int timeout_ms) {
    if (EK_IS_REMOTE(launch.id))
        return ek_rc_launch_wait(launch, timeout_ms);
    pthread_once(&engine_once, engine_init);
    struct timespec deadline;
    if (timeout_ms > 0) {
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&launch_lock);
    void *obj;
    /* Handles are retired only under launch_lock, so the record stays while we hold a reference. */
    ek_status_t status = ek_handle_get(launch.id, EK_HANDLE_LAUNCH, &obj, NULL);
    if (status != EK_OK) {
        pthread_mutex_unlock(&launch_lock);
        return status;
    }
    struct ek_launch_rec *rec = obj;
    rec->refs++;
    while (!rec->done && rec != tls_callback) {
        if (timeout_ms == 0)
            break;
        if (timeout_ms < 0) {
            pthread_cond_wait(&rec->cond, &launch_lock);
        } else if (pthread_cond_timedwait(&rec->cond, &launch_lock, &deadline) == ETIMEDOUT) {
            break;
        }
    }
    char text[sizeof rec->error];
    text[0] = '\0';
    if (!rec->done && rec != tls_callback) {
        status = ek_fail(EK_ERR_TIMEOUT, "launch of network '%s' still running after %d ms", rec->net->info.name,
                         timeout_ms);
    } else if ((status = ek_handle_retire(launch.id, EK_HANDLE_LAUNCH)) == EK_OK) {
        /* Another waiter may have retired it meanwhile: then the retire above failed as a double free. */
        rec->refs--;
        status = rec->status;
        memcpy(text, rec->error, sizeof text);
    } else {
        status = ek_fail(EK_ERR_FREED_HANDLE, "launch 0x%016" PRIx64 " was already waited for", launch.id);
    }
    rec_unref_locked(rec);
    pthread_mutex_unlock(&launch_lock);
    if (status != EK_OK && status != EK_ERR_TIMEOUT && text[0])
        return ek_fail(status, "%s", text);
    return status;
}
