/* edgekit-app: the standalone edge app. Runs a network of a .ekm model on one or more devices with one
 * or more threads per device, each thread with its own request (device memory for its inputs and
 * outputs), optionally bound to a CPU cluster, and reports latency percentiles and throughput.
 * Bad flags or input: one line "error: ..." and exit 2; a runtime failure while running: exit 1. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <edgekit/edgekit.h>

#include "options.h"
#include "topology.h"

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2

/* --profile and --dump write here, relative to the working directory (sample_runtime's names), one
 * subdirectory per device and thread: dev<device id>_thread<thread index>. */
#define PROFILE_ROOT "sample_profiler"
#define DUMP_ROOT "sample_dump"
#define THREAD_DIR_SIZE 64

static void thread_dir(char buf[THREAD_DIR_SIZE], const char *root, int device, int thread) {
    snprintf(buf, THREAD_DIR_SIZE, "%s/dev%d_thread%d", root, device, thread);
}

static void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int code, const char *fmt, ...) {
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* One line, whatever the runtime's message held. */
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    fflush(stdout);
    fprintf(stderr, "error: %s\n", line);
    exit(code);
}

/* An output name as a file name, as `edgekit run` makes it: characters other than letters, digits,
 * '.', '_' and '-' become '_', leading dots go; "output" when nothing is left. */
static void app_file_name(const char *name, char *buf, size_t size) {
    size_t n = 0;
    for (const char *p = name; *p && n + 1 < size; p++) {
        char c = *p;
        int keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                   c == '_' || c == '-';
        if (n == 0 && c == '.')
            continue;
        buf[n++] = keep ? c : '_';
    }
    buf[n] = '\0';
    if (n == 0)
        snprintf(buf, size, "output");
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* "1,3,224,224" */
static void format_shape(const ek_shape_t *shape, char *buf, size_t size) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < shape->num_dims && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld", i ? "," : "", (long long)shape->dims[i]);
    if (shape->num_dims == 0)
        snprintf(buf, size, "(scalar)");
}

static size_t shape_elements(const ek_shape_t *shape) {
    size_t n = 1;
    for (int i = 0; i < shape->num_dims; i++)
        n *= (size_t)shape->dims[i];
    return n;
}

static int same_shape(const ek_shape_t *a, const ek_shape_t *b) {
    if (a->num_dims != b->num_dims)
        return 0;
    for (int i = 0; i < a->num_dims; i++)
        if (a->dims[i] != b->dims[i])
            return 0;
    return 1;
}

/* "stage 0: input=1,3,32,32; stage 1: input=4,3,32,32" */
static void format_stages(const ek_net_info_t *info, char *buf, size_t size) {
    size_t used = 0;
    buf[0] = '\0';
    for (int s = 0; s < info->stage_count && used < size; s++) {
        used += (size_t)snprintf(buf + used, size - used, "%sstage %d:", s ? "; " : "", s);
        for (int i = 0; i < info->input_count && used < size; i++) {
            char dims[160];
            format_shape(&info->stages[s].input_shapes[i], dims, sizeof dims);
            used += (size_t)snprintf(buf + used, size - used, " %s=%s", info->inputs[i].name, dims);
        }
    }
}

/* ---- random inputs: splitmix64, seed 0, so a run is repeatable ---- */

static uint64_t next_random(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void fill_random(void *data, ek_dtype_t dtype, size_t count, uint64_t *state) {
    for (size_t i = 0; i < count; i++) {
        uint64_t r = next_random(state);
        switch (dtype) {
        case EK_DTYPE_FLOAT32:
            ((float *)data)[i] = (float)((double)(r >> 11) * 0x1.0p-53 * 2.0 - 1.0);
            break;
        case EK_DTYPE_FLOAT16: {
            /* sign, a biased exponent of 0..14 (below 1.0) and a random mantissa: a value in (-1, 1) */
            uint16_t exponent = (uint16_t)((r >> 16) % 15);
            ((uint16_t *)data)[i] = (uint16_t)(((r >> 63) << 15) | (uint16_t)(exponent << 10) | (r & 0x3ff));
            break;
        }
        case EK_DTYPE_INT8:
        case EK_DTYPE_UINT8:
            ((uint8_t *)data)[i] = (uint8_t)r;
            break;
        case EK_DTYPE_INT32:
            ((uint32_t *)data)[i] = (uint32_t)r;
            break;
        case EK_DTYPE_INT64:
            ((uint64_t *)data)[i] = r;
            break;
        }
    }
}

/* ---- the run ---- */

/* --mem_stg dynamic: the runtime's allocations through this allocator, over the device heap. */
struct app_allocator {
    pthread_mutex_t lock;
    long allocations, frees;
};

static ek_status_t app_alloc(void *user, ek_dev_t dev, size_t size, size_t alignment, ek_mem_t *mem,
                             size_t *offset) {
    struct app_allocator *a = user;
    (void)alignment; /* device memory starts at the heap's alignment, a multiple of any the runtime asks */
    ek_status_t status = ek_malloc_device(dev, mem, size);
    if (status == EK_OK) {
        *offset = 0;
        pthread_mutex_lock(&a->lock);
        a->allocations++;
        pthread_mutex_unlock(&a->lock);
    }
    return status;
}

static void app_free(void *user, ek_dev_t dev, ek_mem_t mem, size_t offset, size_t size) {
    struct app_allocator *a = user;
    (void)offset;
    (void)size;
    if (ek_free_device(dev, mem) == EK_OK) {
        pthread_mutex_lock(&a->lock);
        a->frees++;
        pthread_mutex_unlock(&a->lock);
    }
}

struct device_ctx {
    int id;
    ek_dev_t dev;
    ek_rt_t rt;
    int dev_open, rt_open;
    ek_allocator_t allocator; /* --mem_stg dynamic */
    struct app_allocator counts;
    /* what the device had allocated when its timed iterations began (thread 0 reads it) */
    ek_heap_stats_t heap_at_start, heap_at_end;
    ek_allocator_stats_t alloc_at_start, alloc_at_end;
};

struct app;

struct worker {
    struct app *app;
    struct device_ctx *device;
    int thread;           /* index within its device */
    int cluster;          /* -1: not bound */
    cpu_set_t cpus;       /* the cluster's CPUs when bound */
    ek_launch_options_t launch;
    ek_profile_t profile; /* --profile: records the timed iterations */
    char profile_dir[THREAD_DIR_SIZE]; /* --profile: PROFILE_ROOT/dev<D>_thread<T> */
    char dump_dir[THREAD_DIR_SIZE];    /* --dump: DUMP_ROOT/dev<D>_thread<T> */
    int keep_outputs;     /* this worker's outputs go to --output_dir */
    ek_shape_t out_shapes[APP_MAX_VALUES]; /* --output_dir: the outputs' shapes in the last launch */
    void **out_host;
    void *io_out[APP_MAX_VALUES];      /* --io host: the launches' output buffers */
    ek_shape_t io_shapes[APP_MAX_VALUES]; /* --io host: the shapes the last launch produced */
    double *latency;      /* seconds, one per timed iteration */
    int done;             /* timed iterations finished */
    double start, end;
    size_t workspace_bytes; /* --mem_stg static */
    char error[1024];
};

struct app {
    const app_options_t *opts;
    const char *net_name;
    const ek_net_info_t *info;
    int stage;
    void **in_data;       /* host copies of the inputs, shared read-only by all workers */
    size_t *in_bytes, *out_bytes; /* out_bytes: the stage's (largest) output sizes */
    size_t out_room[APP_MAX_VALUES]; /* the device memory each output gets (--output_caps) */
    pthread_barrier_t barrier;
    atomic_int failed;
};

static void worker_fail(struct worker *w, const char *what, const char *message) {
    snprintf(w->error, sizeof w->error, "device %d thread %d: %s: %s", w->device->id, w->thread, what, message);
    atomic_store(&w->app->failed, 1);
}

/* One launch, waited for: on the thread's device memory (ek_rt_run), or with --io host on host buffers,
 * copied in and out by the launch (ek_rt_launch_data). */
static ek_status_t run_once(struct worker *w, ek_tensor_t *inputs, ek_tensor_t *outputs,
                            const ek_launch_options_t *options) {
    struct app *a = w->app;
    int n_in = a->info->input_count, n_out = a->info->output_count;
    if (!a->opts->io_host)
        return ek_rt_run(w->device->rt, a->net_name, inputs, n_in, outputs, n_out, options);
    ek_shape_t in_shapes[APP_MAX_VALUES];
    for (int i = 0; i < n_in; i++)
        in_shapes[i] = inputs[i].shape;
    return ek_rt_launch_data(w->device->rt, a->net_name, (const void *const *)a->in_data, in_shapes, n_in,
                             w->io_out, a->out_room, w->io_shapes, n_out, options);
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    struct app *a = w->app;
    const ek_net_info_t *info = a->info;
    ek_dev_t dev = w->device->dev;
    int n_in = info->input_count, n_out = info->output_count;
    ek_tensor_t inputs[APP_MAX_VALUES], outputs[APP_MAX_VALUES];
    memset(inputs, 0, sizeof inputs);
    memset(outputs, 0, sizeof outputs);
    int ok = 1;
    ek_mem_t workspace_mem = {0};
    ek_workspace_t workspace = {0};

    if (w->cluster >= 0) {
        int rc = pthread_setaffinity_np(pthread_self(), sizeof w->cpus, &w->cpus);
        if (rc != 0) {
            worker_fail(w, "binding to a CPU cluster", strerror(rc));
            ok = 0;
        }
    }
    /* This thread's request: its own device memory for every input and output. */
    for (int i = 0; ok && i < n_in + n_out; i++) {
        int is_in = i < n_in;
        ek_tensor_t *t = is_in ? &inputs[i] : &outputs[i - n_in];
        size_t nbytes = is_in ? a->in_bytes[i] : a->out_room[i - n_in];
        if (ek_malloc_device(dev, &t->mem, nbytes ? nbytes : 1) != EK_OK) {
            worker_fail(w, "allocating device memory", ek_last_error());
            ok = 0;
            break;
        }
        if (is_in) {
            t->dtype = info->inputs[i].dtype;
            t->shape = info->stages[a->stage].input_shapes[i];
            if (nbytes && ek_memcpy_s2d_partial(dev, t->mem, a->in_data[i], nbytes) != EK_OK) {
                worker_fail(w, "copying an input to the device", ek_last_error());
                ok = 0;
            }
        }
    }

    /* --mem_stg static: this thread's workspace, sized by the network and allocated now. */
    if (ok && a->opts->mem_stg == APP_MEM_STATIC) {
        ek_stage_memory_t need;
        if (ek_rt_stage_memory(w->device->rt, a->net_name, a->stage, &need) != EK_OK ||
            ek_malloc_device(dev, &workspace_mem, need.workspace_bytes) != EK_OK ||
            ek_rt_workspace_create(w->device->rt, a->net_name, a->stage, workspace_mem, 0, need.workspace_bytes,
                                   &workspace) != EK_OK) {
            worker_fail(w, "--mem_stg static: making the workspace", ek_last_error());
            ok = 0;
        }
        w->launch.workspace = workspace;
        w->workspace_bytes = need.workspace_bytes;
    }

    for (int i = 0; ok && a->opts->io_host && i < n_out; i++)
        if (!(w->io_out[i] = calloc(1, a->out_room[i] ? a->out_room[i] : 1))) {
            worker_fail(w, "allocating host memory for the outputs", "out of memory");
            ok = 0;
        }
    pthread_barrier_wait(&a->barrier); /* every request is ready */
    if (ok && a->opts->dump && !atomic_load(&a->failed)) {
        /* --dump: one extra, untimed launch first, written to this thread's dump directory. */
        ek_launch_options_t dumping = w->launch;
        dumping.dump_dir = w->dump_dir;
        if (run_once(w, inputs, outputs, &dumping) != EK_OK) {
            worker_fail(w, "inference (dump)", ek_last_error());
            ok = 0;
        }
    }
    for (int it = 0; ok && it < a->opts->warmup && !atomic_load(&a->failed); it++) {
        if (run_once(w, inputs, outputs, &w->launch) != EK_OK) {
            worker_fail(w, "inference (warmup)", ek_last_error());
            ok = 0;
        }
    }
    pthread_barrier_wait(&a->barrier); /* every warm-up is done: what has been allocated so far? */
    if (w->thread == 0) {
        ek_dev_heap_stats(dev, &w->device->heap_at_start);
        if (w->device->allocator.id)
            ek_allocator_stats(w->device->allocator, &w->device->alloc_at_start);
    }
    pthread_barrier_wait(&a->barrier); /* the timed iterations start together */
    ek_launch_options_t timed = w->launch;
    timed.profile = w->profile; /* {0} without --profile */
    w->start = now_seconds();
    for (int it = 0; ok && it < a->opts->iterations && !atomic_load(&a->failed); it++) {
        double t0 = now_seconds();
        /* launch + wait in one call: on this thread, no hand-off to the device's worker */
        if (run_once(w, inputs, outputs, &timed) != EK_OK) {
            worker_fail(w, "inference", ek_last_error());
            ok = 0;
            break;
        }
        w->latency[w->done++] = now_seconds() - t0;
    }
    w->end = now_seconds();

    for (int i = 0; ok && w->keep_outputs && i < n_out; i++) {
        /* the shape the last launch produced (a dynamic output's may be smaller than its largest) */
        w->out_shapes[i] = a->opts->io_host ? w->io_shapes[i] : outputs[i].shape;
        size_t bytes = ek_dtype_size(info->outputs[i].dtype) * shape_elements(&w->out_shapes[i]);
        if (bytes && a->opts->io_host) {
            memcpy(w->out_host[i], w->io_out[i], bytes);
        } else if (bytes && ek_memcpy_d2s_partial(dev, w->out_host[i], outputs[i].mem, bytes) != EK_OK) {
            worker_fail(w, "copying an output from the device", ek_last_error());
            ok = 0;
        }
    }
    pthread_barrier_wait(&a->barrier); /* every thread is done: what did the timed iterations allocate? */
    if (w->thread == 0) {
        ek_dev_heap_stats(dev, &w->device->heap_at_end);
        if (w->device->allocator.id)
            ek_allocator_stats(w->device->allocator, &w->device->alloc_at_end);
    }
    pthread_barrier_wait(&a->barrier); /* before any thread frees its memory */
    for (int i = 0; i < n_in + n_out; i++) {
        ek_tensor_t *t = i < n_in ? &inputs[i] : &outputs[i - n_in];
        if (t->mem.id)
            ek_free_device(dev, t->mem);
    }
    if (workspace.id)
        ek_workspace_destroy(workspace);
    if (workspace_mem.id)
        ek_free_device(dev, workspace_mem);
    for (int i = 0; i < n_out; i++)
        free(w->io_out[i]);
    return NULL;
}

static int compare_doubles(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* The nearest-rank percentile of sorted values. */
static double percentile(const double *sorted, int n, int p) {
    int rank = (p * n + 99) / 100;
    return sorted[rank < 1 ? 0 : rank - 1];
}

/* ---- setup ---- */

static void list_clusters(const app_topology_t *topo) {
    printf("CPU clusters of the CPUs this process may use (from %s):\n", topo->root);
    printf("%-8s %-14s %-6s %-9s %-8s %s\n", "cluster", "cpus", "count", "capacity", "max MHz", "sysfs package/cluster");
    long lo = -1, hi = -1;
    for (int i = 0; i < topo->count; i++) {
        const app_cluster_t *c = &topo->clusters[i];
        char cpus[128], capacity[24] = "-", mhz[24] = "-", package[24] = "-", cluster[24] = "-";
        app_format_cpus(&c->cpus, cpus, sizeof cpus);
        if (c->capacity >= 0) {
            snprintf(capacity, sizeof capacity, "%ld", c->capacity);
            lo = lo < 0 || c->capacity < lo ? c->capacity : lo;
            hi = c->capacity > hi ? c->capacity : hi;
        }
        if (c->max_khz >= 0)
            snprintf(mhz, sizeof mhz, "%ld", c->max_khz / 1000);
        if (c->package >= 0)
            snprintf(package, sizeof package, "%ld", c->package);
        if (c->sysfs_id >= 0)
            snprintf(cluster, sizeof cluster, "%ld", c->sysfs_id);
        printf("%-8d %-14s %-6d %-9s %-8s %s/%s\n", i, cpus, c->cpu_count, capacity, mhz, package, cluster);
    }
    if (lo >= 0 && lo != hi)
        printf("big.LITTLE: the capacities differ (%ld .. %ld; 1024 is the fastest core)\n", lo, hi);
    if (topo->note[0])
        printf("note: %s\n", topo->note);
}

/* mkdir -p, then make sure a file can be created there by creating one (not access(): it does not see a
 * read-only file system for root, and fails for existing paths under proot). `what` starts the error
 * line: "--output_dir out". */
static void prepare_dir(const char *what, const char *dir) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        die(EXIT_USAGE, "%s: the path is too long", what);
    for (char *p = path + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(path, 0777) != 0 && errno != EEXIST)
                die(EXIT_USAGE, "%s: cannot make %s: %s", what, path, strerror(errno));
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        die(EXIT_USAGE, "%s: it exists and is not a directory", what);
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/.edgekit-app-probe-%ld", dir, (long)getpid());
    FILE *f = fopen(probe, "wb");
    if (!f)
        die(EXIT_USAGE, "%s: cannot write there: %s", what, strerror(errno));
    fclose(f);
    remove(probe);
}

static void *read_data_file(const char *path, size_t want, const char *input, const char *dtype, const char *dims,
                            int stage) {
    FILE *f = fopen(path, "rb");
    if (!f)
        die(EXIT_USAGE, "--data_path %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        die(EXIT_USAGE, "--data_path %s: not a regular file", path);
    }
    if ((size_t)st.st_size != want) {
        fclose(f);
        die(EXIT_USAGE,
            "--data_path %s: %lld bytes, but input '%s' (%s %s, stage %d) takes %zu: raw %s values, no header",
            path, (long long)st.st_size, input, dtype, dims, stage, want, dtype);
    }
    void *data = malloc(want ? want : 1);
    if (!data) {
        fclose(f);
        die(EXIT_RUNTIME, "out of host memory for %s (%zu bytes)", path, want);
    }
    if (want && fread(data, 1, want, f) != want) {
        fclose(f);
        die(EXIT_USAGE, "--data_path %s: cannot read it: %s", path, strerror(errno));
    }
    fclose(f);
    return data;
}

int main(int argc, char **argv) {
    app_options_t opts;
    char err[1024];
    if (app_parse_options(argc, argv, &opts, err, sizeof err) != 0)
        die(EXIT_USAGE, "%s", err);
    if (opts.help) {
        fputs(app_help_text, stdout);
        app_free_options(&opts);
        return 0;
    }

    cpu_set_t allowed;
    if (app_allowed_cpus(&allowed, err, sizeof err) != 0)
        die(EXIT_USAGE, "%s", err);
    static app_topology_t topo;
    app_topology_read(&topo, NULL, &allowed);
    if (opts.list_clusters) {
        list_clusters(&topo);
        app_free_options(&opts);
        return 0;
    }

    if (!opts.model_path)
        die(EXIT_USAGE, "--model_path is required (see edgekit-app --help)");
    if (opts.rpc_key && !opts.rpc_server)
        die(EXIT_USAGE, "--rpc_key is the key of a --rpc_server: give both");
    if (opts.rpc_server && opts.cluster_count)
        die(EXIT_USAGE, "--visible_cluster binds threads to this machine's CPU clusters, but with --rpc_server the "
            "inferences run on the board: run edgekit-app on the board to bind its clusters");
    if (opts.rpc_server && opts.mem_stg != APP_MEM_DEFAULT)
        die(EXIT_USAGE, "--mem_stg with --rpc_server: a remote_server manages the board's memory itself; run "
            "edgekit-app with --mem_stg on the board to choose its memory strategy");
    if (opts.io_host && opts.mem_stg == APP_MEM_STATIC)
        die(EXIT_USAGE, "--io host with --mem_stg static: a launch on host buffers stages them through device "
            "memory it allocates, which a static workspace rules out; use --io device");
    if (opts.rpc_server && opts.plugin_count)
        die(EXIT_USAGE, "--plugin_libs with --rpc_server: a remote_server never loads client code, so plugins cannot "
            "run on its devices: run edgekit-app with --plugin_libs on the board itself");
    for (int i = 0; i < opts.plugin_count; i++) { /* opened, not access(), as --model_path is */
        FILE *plugin_file = fopen(opts.plugin_libs[i], "rb");
        if (!plugin_file)
            die(EXIT_USAGE, "--plugin_libs %s: %s", opts.plugin_libs[i], strerror(errno));
        fclose(plugin_file);
    }
    if (opts.cluster_count && opts.cluster_count != opts.threads)
        die(EXIT_USAGE, "--visible_cluster gave %d cluster(s) for %d thread(s) per device: give one per thread",
            opts.cluster_count, opts.threads);
    for (int i = 0; i < opts.cluster_count; i++)
        if (opts.clusters[i] >= topo.count)
            die(EXIT_USAGE, "--visible_cluster %d: there is no such cluster: this process's CPUs form %d (0..%d; see "
                "edgekit-app --list-clusters)", opts.clusters[i], topo.count, topo.count - 1);
    if (opts.dev_count == 0) {
        opts.dev_ids[0] = 0;
        opts.dev_count = 1;
    }
    int devices = 0;
    if (opts.rpc_server)
        devices = INT_MAX; /* the board checks the ids */
    else if (ek_dev_count(&devices) != EK_OK)
        die(EXIT_USAGE, "%s", ek_last_error());
    for (int i = 0; i < opts.dev_count; i++)
        if (opts.dev_ids[i] >= devices)
            die(EXIT_USAGE, "--dev_ids %d: there is no such device: there %s %d (0..%d; EDGEKIT_DEVICES sets how many)",
                opts.dev_ids[i], devices == 1 ? "is" : "are", devices, devices - 1);
    if (opts.output_dir) {
        char what[4200];
        snprintf(what, sizeof what, "--output_dir %s", opts.output_dir);
        prepare_dir(what, opts.output_dir);
    }
    /* --profile, --dump: every thread's directory, made and tried now, before anything runs (the
     * runtime makes them too, but only when the run is over or under way). */
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd))
        snprintf(cwd, sizeof cwd, "the working directory");
    for (int d = 0; d < opts.dev_count; d++)
        for (int t = 0; t < opts.threads; t++) {
            char dir[THREAD_DIR_SIZE], what[4400];
            if (opts.profile) {
                thread_dir(dir, PROFILE_ROOT, opts.dev_ids[d], t);
                snprintf(what, sizeof what, "--profile: %s in %s", dir, cwd);
                prepare_dir(what, dir);
            }
            if (opts.dump) {
                thread_dir(dir, DUMP_ROOT, opts.dev_ids[d], t);
                snprintf(what, sizeof what, "--dump: %s in %s", dir, cwd);
                prepare_dir(what, dir);
            }
        }
    FILE *model_file = fopen(opts.model_path, "rb");
    if (!model_file)
        die(EXIT_USAGE, "--model_path %s: %s", opts.model_path, strerror(errno));
    fclose(model_file);

    /* One runtime per device, each with the model loaded. */
    struct device_ctx *dctx = calloc((size_t)opts.dev_count, sizeof *dctx);
    if (!dctx)
        die(EXIT_RUNTIME, "out of host memory");
    ek_rt_config_t config = {.kernels = opts.kernels};
    for (int d = 0; d < opts.dev_count; d++) {
        dctx[d].id = opts.dev_ids[d];
        if (opts.rpc_server) {
            char url[300];
            snprintf(url, sizeof url, "tcp://%s", opts.rpc_server);
            ek_remote_options_t remote = {0};
            remote.key_file = opts.rpc_key;
            ek_status_t status = ek_dev_connect(&dctx[d].dev, url, dctx[d].id, &remote);
            if (status != EK_OK)
                die(status == EK_ERR_NO_DEVICE ? EXIT_USAGE : EXIT_RUNTIME, "--rpc_server %s, device %d: %s",
                    opts.rpc_server, dctx[d].id, ek_last_error());
            ek_remote_info_t board;
            if (d == 0 && ek_dev_remote_info(dctx[d].dev, &board) == EK_OK)
                printf("running on %s: an %s board, EdgeKit %s, %s kernels by default\n", url, board.arch,
                       board.runtime_version, board.kernels);
        } else if (ek_dev_request(&dctx[d].dev, dctx[d].id) != EK_OK) {
            die(EXIT_RUNTIME, "device %d: %s", dctx[d].id, ek_last_error());
        }
        dctx[d].dev_open = 1;
        config.allocator.id = 0;
        if (opts.mem_stg == APP_MEM_DYNAMIC) {
            ek_allocator_ops_t ops = {app_alloc, app_free};
            pthread_mutex_init(&dctx[d].counts.lock, NULL);
            if (ek_allocator_create(&dctx[d].allocator, &ops, &dctx[d].counts) != EK_OK)
                die(EXIT_RUNTIME, "--mem_stg dynamic: %s", ek_last_error());
            config.allocator = dctx[d].allocator;
        }
        if (ek_rt_create_ex(&dctx[d].rt, dctx[d].dev, &config) != EK_OK)
            die(EXIT_RUNTIME, "device %d: %s", dctx[d].id, ek_last_error());
        dctx[d].rt_open = 1;
        ek_status_t status;
        for (int i = 0; i < opts.plugin_count; i++)
            if ((status = ek_rt_load_plugin(dctx[d].rt, opts.plugin_libs[i])) != EK_OK)
                die(status == EK_ERR_OUT_OF_MEMORY || status == EK_ERR_INTERNAL ? EXIT_RUNTIME : EXIT_USAGE,
                    "--plugin_libs %s: %s", opts.plugin_libs[i], ek_last_error());
        status = ek_rt_load_model(dctx[d].rt, opts.model_path);
        if (status != EK_OK)
            die(status == EK_ERR_MODEL_INVALID || status == EK_ERR_SYSTEM || status == EK_ERR_INVALID_ARG ||
                        status == EK_ERR_UNSUPPORTED
                    ? EXIT_USAGE : EXIT_RUNTIME,
                "--model_path: %s", ek_last_error());
    }
    ek_rt_t rt0 = dctx[0].rt;

    /* The network and its stage. */
    const char *net_name = opts.network;
    if (!net_name && ek_rt_network_name(rt0, 0, &net_name) != EK_OK)
        die(EXIT_USAGE, "--model_path %s: %s", opts.model_path, ek_last_error());
    const ek_net_info_t *info;
    if (ek_rt_network_info(rt0, net_name, &info) != EK_OK)
        die(EXIT_USAGE, "--network %s: %s", net_name, ek_last_error());
    if (info->input_count > APP_MAX_VALUES || info->output_count > APP_MAX_VALUES)
        die(EXIT_USAGE, "network '%s' has more than %d inputs or outputs", net_name, APP_MAX_VALUES);
    char stages[2048];
    format_stages(info, stages, sizeof stages);
    int stage = 0;
    if (opts.dims_count) {
        if (opts.dims_count != info->input_count)
            die(EXIT_USAGE, "--input_dims gave %d shape(s), network '%s' has %d input(s); its stages: %s",
                opts.dims_count, net_name, info->input_count, stages);
        for (int i = 0; i < info->input_count; i++)
            if (opts.input_dims[i].num_dims != info->stages[0].input_shapes[i].num_dims) {
                char dims[160];
                format_shape(&opts.input_dims[i], dims, sizeof dims);
                die(EXIT_USAGE, "--input_dims %s: input '%s' has %d dims, not %d; the stages: %s", dims,
                    info->inputs[i].name, info->stages[0].input_shapes[i].num_dims, opts.input_dims[i].num_dims,
                    stages);
            }
        stage = -1;
        for (int s = 0; s < info->stage_count && stage < 0; s++) {
            int match = 1;
            for (int i = 0; i < info->input_count; i++)
                match = match && same_shape(&opts.input_dims[i], &info->stages[s].input_shapes[i]);
            if (match)
                stage = s;
        }
        if (stage < 0) {
            char given[512] = "";
            size_t used = 0;
            for (int i = 0; i < opts.dims_count && used < sizeof given; i++) {
                char dims[160];
                format_shape(&opts.input_dims[i], dims, sizeof dims);
                used += (size_t)snprintf(given + used, sizeof given - used, "%s%s", i ? " " : "", dims);
            }
            die(EXIT_USAGE, "--input_dims %s: no stage of network '%s' takes these shapes; its stages: %s", given,
                net_name, stages);
        }
    }
    const ek_stage_info_t *st = &info->stages[stage];

    /* Inputs: the --data_path files, or random data. */
    if (opts.data_count && opts.data_count != info->input_count)
        die(EXIT_USAGE, "--data_path gave %d file(s), network '%s' has %d input(s)", opts.data_count, net_name,
            info->input_count);
    struct app app = {.opts = &opts, .net_name = net_name, .info = info, .stage = stage};
    app.in_data = calloc((size_t)info->input_count + 1, sizeof *app.in_data);
    app.in_bytes = calloc((size_t)info->input_count + 1, sizeof *app.in_bytes);
    app.out_bytes = calloc((size_t)info->output_count + 1, sizeof *app.out_bytes);
    if (!app.in_data || !app.in_bytes || !app.out_bytes)
        die(EXIT_RUNTIME, "out of host memory");
    uint64_t seed = 0;
    for (int i = 0; i < info->input_count; i++) {
        const ek_io_info_t *io = &info->inputs[i];
        size_t elem = ek_dtype_size(io->dtype), count = shape_elements(&st->input_shapes[i]);
        if (elem == 0)
            die(EXIT_USAGE, "input '%s' has an unknown dtype %d", io->name, (int)io->dtype);
        app.in_bytes[i] = elem * count;
        char dims[160];
        format_shape(&st->input_shapes[i], dims, sizeof dims);
        if (opts.data_count) {
            app.in_data[i] =
                read_data_file(opts.data_paths[i], app.in_bytes[i], io->name, ek_dtype_name(io->dtype), dims, stage);
        } else {
            app.in_data[i] = malloc(app.in_bytes[i] ? app.in_bytes[i] : 1);
            if (!app.in_data[i])
                die(EXIT_RUNTIME, "out of host memory for input '%s'", io->name);
            fill_random(app.in_data[i], io->dtype, count, &seed);
        }
    }
    for (int i = 0; i < info->output_count; i++)
        app.out_bytes[i] = ek_dtype_size(info->outputs[i].dtype) * shape_elements(&st->output_shapes[i]);
    /* --output_caps: the room each output gets (a dynamic one may get less than its largest size) */
    if (opts.caps_count && opts.caps_count != info->output_count)
        die(EXIT_USAGE, "--output_caps gave %d size(s), network '%s' has %d output(s)", opts.caps_count, net_name,
            info->output_count);
    for (int i = 0; i < info->output_count; i++) {
        app.out_room[i] = opts.caps_count ? opts.output_caps[i] : app.out_bytes[i];
        if (!info->outputs[i].dynamic && app.out_room[i] < app.out_bytes[i])
            die(EXIT_USAGE, "--output_caps: output '%s' always takes %zu bytes, more than the %zu given",
                info->outputs[i].name, app.out_bytes[i], app.out_room[i]);
    }

    /* The workers: threads per device, and how many launch threads each inference gets. */
    int total = opts.dev_count * opts.threads;
    int default_threads = 1;
    if (ek_rt_threads(rt0, &default_threads) != EK_OK || default_threads < 1)
        default_threads = 1;
    int users[APP_MAX_CLUSTERS] = {0};
    for (int i = 0; i < opts.cluster_count; i++)
        users[opts.clusters[i]] += opts.dev_count;
    struct worker *workers = calloc((size_t)total, sizeof *workers);
    if (!workers)
        die(EXIT_RUNTIME, "out of host memory");
    for (int d = 0; d < opts.dev_count; d++)
        for (int t = 0; t < opts.threads; t++) {
            struct worker *w = &workers[d * opts.threads + t];
            w->app = &app;
            w->device = &dctx[d];
            w->thread = t;
            w->cluster = opts.cluster_count ? opts.clusters[t] : -1;
            int launch_threads;
            if (w->cluster >= 0) {
                const app_cluster_t *c = &topo.clusters[w->cluster];
                w->cpus = c->cpus;
                for (int cpu = 0; cpu < 64 && cpu < CPU_SETSIZE; cpu++)
                    if (CPU_ISSET(cpu, &c->cpus))
                        w->launch.cpu_mask |= (uint64_t)1 << cpu;
                launch_threads = c->cpu_count / users[w->cluster];
            } else {
                launch_threads = default_threads / total;
            }
            if (launch_threads < 1)
                launch_threads = 1;
            if (launch_threads > 64)
                launch_threads = 64;
            w->launch.threads = opts.launch_threads ? opts.launch_threads : launch_threads;
            w->latency = calloc((size_t)opts.iterations, sizeof *w->latency);
            if (!w->latency)
                die(EXIT_RUNTIME, "out of host memory");
            thread_dir(w->profile_dir, PROFILE_ROOT, dctx[d].id, t);
            thread_dir(w->dump_dir, DUMP_ROOT, dctx[d].id, t);
            if (opts.profile && ek_profile_create(&w->profile) != EK_OK)
                die(EXIT_RUNTIME, "%s", ek_last_error());
        }
    if (opts.output_dir) {
        workers[0].keep_outputs = 1;
        workers[0].out_host = calloc((size_t)info->output_count + 1, sizeof(void *));
        if (!workers[0].out_host)
            die(EXIT_RUNTIME, "out of host memory");
        for (int i = 0; i < info->output_count; i++)
            if (!(workers[0].out_host[i] = malloc(app.out_bytes[i] ? app.out_bytes[i] : 1)))
                die(EXIT_RUNTIME, "out of host memory for output '%s'", info->outputs[i].name);
    }

    const char *kernels = "?";
    ek_rt_kernels(rt0, &kernels);
    printf("edgekit-app: model %s, network '%s', %s, %s kernels\n", opts.model_path, net_name, stages, kernels);
    const char *kernels_why = "";
    if (ek_rt_kernels_reason(rt0, &kernels_why) == EK_OK && kernels_why[0])
        fprintf(stderr, "edgekit-app: the portable kernels run, XNNPACK is not used: %s\n", kernels_why);
    printf("running stage %d on device(s)", stage);
    for (int d = 0; d < opts.dev_count; d++)
        printf(" %d", dctx[d].id);
    printf(", %d thread(s) per device, %d warmup + %d timed iteration(s) per thread\n", opts.threads, opts.warmup,
           opts.iterations);
    for (int i = 0; i < info->input_count; i++) {
        char dims[160];
        format_shape(&st->input_shapes[i], dims, sizeof dims);
        printf("  input  %s: %s %s, %s\n", info->inputs[i].name, ek_dtype_name(info->inputs[i].dtype), dims,
               opts.data_count ? opts.data_paths[i] : "random");
    }
    fflush(stdout);

    /* Run. */
    pthread_t *ids = calloc((size_t)total, sizeof *ids);
    if (!ids || pthread_barrier_init(&app.barrier, NULL, (unsigned)total) != 0)
        die(EXIT_RUNTIME, "cannot set up %d threads", total);
    atomic_init(&app.failed, 0);
    int started = 0;
    for (; started < total; started++) {
        int rc = pthread_create(&ids[started], NULL, worker_main, &workers[started]);
        if (rc != 0)
            die(EXIT_RUNTIME, "cannot start thread %d of %d: %s", started + 1, total, strerror(rc));
    }
    for (int i = 0; i < total; i++)
        pthread_join(ids[i], NULL);
    for (int i = 0; i < total; i++)
        if (workers[i].error[0])
            die(EXIT_RUNTIME, "%s", workers[i].error);

    if (opts.output_dir)
        for (int i = 0; i < info->output_count; i++) {
            char name[256], path[4400];
            app_file_name(info->outputs[i].name, name, sizeof name - 4);
            strcat(name, ".npy");
            snprintf(path, sizeof path, "%s/%s", opts.output_dir, name);
            const ek_shape_t *shape = &workers[0].out_shapes[i];
            if (ek_npy_write(opts.output_dir, name, info->outputs[i].dtype, shape, workers[0].out_host[i],
                             ek_dtype_size(info->outputs[i].dtype) * shape_elements(shape)) != EK_OK)
                die(EXIT_RUNTIME, "%s", ek_last_error());
            char dims[160];
            format_shape(shape, dims, sizeof dims);
            printf("  output %s: %s %s -> %s\n", info->outputs[i].name, ek_dtype_name(info->outputs[i].dtype), dims,
                   path);
        }

    /* Report. */
    printf("%-6s %-6s %-7s %-10s %-7s %-10s %9s %9s %9s %12s\n", "device", "thread", "cluster", "cpus", "launch",
           "iterations", "p50 ms", "p90 ms", "p99 ms", "inferences/s");
    double first = 0, last = 0;
    long inferences = 0;
    for (int i = 0; i < total; i++) {
        struct worker *w = &workers[i];
        qsort(w->latency, (size_t)w->done, sizeof *w->latency, compare_doubles);
        char cluster[16] = "-", cpus[64] = "any";
        if (w->cluster >= 0) {
            snprintf(cluster, sizeof cluster, "%d", w->cluster);
            app_format_cpus(&w->cpus, cpus, sizeof cpus);
        }
        double elapsed = w->end - w->start;
        printf("%-6d %-6d %-7s %-10s %-7d %-10d %9.4f %9.4f %9.4f %12.2f\n", w->device->id, w->thread, cluster, cpus,
               w->launch.threads, w->done, percentile(w->latency, w->done, 50) * 1e3,
               percentile(w->latency, w->done, 90) * 1e3, percentile(w->latency, w->done, 99) * 1e3,
               elapsed > 0 ? w->done / elapsed : 0.0);
        first = i == 0 || w->start < first ? w->start : first;
        last = i == 0 || w->end > last ? w->end : last;
        inferences += w->done;
    }
    double wall = last - first;
    printf("total: %ld inferences in %.3f s: %.2f inferences/s\n", inferences, wall,
           wall > 0 ? (double)inferences / wall : 0.0);
    for (int d = 0; opts.mem_stg != APP_MEM_DEFAULT && d < opts.dev_count; d++) {
        const struct device_ctx *c = &dctx[d];
        /* The heap's peak only grows: equal statistics mean nothing was allocated, even briefly. */
        int heap_same = c->heap_at_end.allocations == c->heap_at_start.allocations &&
                        c->heap_at_end.used == c->heap_at_start.used && c->heap_at_end.peak == c->heap_at_start.peak;
        if (opts.mem_stg == APP_MEM_STATIC)
            printf("memory (device %d): static, one %zu-byte workspace per thread; the timed iterations allocated %s\n",
                   c->id, workers[d * opts.threads].workspace_bytes,
                   heap_same ? "no device memory" : "device memory (see docs/memory.md)");
        else
            printf("memory (device %d): dynamic, the runtime's allocations through this program's allocator: %" PRIu64
                   " allocation(s), %" PRIu64 " free(s), peak %zu bytes; %" PRIu64 " during the timed iterations\n",
                   c->id, c->alloc_at_end.allocations, c->alloc_at_end.frees, c->alloc_at_end.peak_bytes,
                   c->alloc_at_end.allocations - c->alloc_at_start.allocations);
    }

    if (opts.profile) {
        printf("profiles of the timed iterations (trace.json, summary.csv), in %s:\n", cwd);
        for (int i = 0; i < total; i++) {
            struct worker *w = &workers[i];
            if (ek_profile_write(w->profile, w->profile_dir) != EK_OK)
                die(EXIT_RUNTIME, "device %d thread %d: writing the profile: %s", w->device->id, w->thread,
                    ek_last_error());
            printf("  %s\n", w->profile_dir);
        }
        printf("  plot one (on the host): edgekit profile --plot %s\n", workers[0].profile_dir);
    }
    if (opts.dump) {
        printf("dumps of each thread's first launch (manifest.json, .npy files), in %s:\n", cwd);
        for (int i = 0; i < total; i++)
            printf("  %s\n", workers[i].dump_dir);
        printf("  compare one with ONNX (on the host): edgekit dump -o %s --compare MODEL.onnx\n",
               workers[0].dump_dir);
    }

    pthread_barrier_destroy(&app.barrier);
    /* Everything freed, so a run under LeakSanitizer is clean. */
    for (int i = 0; i < total; i++) {
        for (int k = 0; workers[i].out_host && k < info->output_count; k++)
            free(workers[i].out_host[k]);
        free(workers[i].out_host);
        free(workers[i].latency);
        if (workers[i].profile.id)
            ek_profile_destroy(workers[i].profile);
    }
    for (int i = 0; i < info->input_count; i++)
        free(app.in_data[i]);
    free(app.in_data);
    free(app.in_bytes);
    free(app.out_bytes);
    free(workers);
    free(ids);
    /* Last: the network info used above belongs to the runtimes. */
    for (int d = 0; d < opts.dev_count; d++) {
        if (dctx[d].rt_open)
            ek_rt_destroy(dctx[d].rt);
        if (dctx[d].allocator.id)
            ek_allocator_destroy(dctx[d].allocator); /* after its runtime, as it must be */
        if (dctx[d].dev_open)
            ek_dev_free(dctx[d].dev);
    }
    free(dctx);
    app_free_options(&opts);
    return 0;
}
