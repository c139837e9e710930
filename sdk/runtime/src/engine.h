/* Internal declarations between runtime.c (the ek_rt_* API and launch validation), engine.c (the
 * device workers, execution contexts and thread teams) and provider.c (kernel providers). Not
 * installed. */
#ifndef EDGEKIT_ENGINE_H
#define EDGEKIT_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "internal.h"
#include "model.h"

/* Most threads one launch may use (options->threads, EDGEKIT_THREADS). */
#define EK_MAX_LAUNCH_THREADS 64
/* Worker threads per device: launches of different requests run concurrently on them. */
#define EK_WORKER_THREADS 2

/* ---- runtime.c ---- */
struct ek_runtime {
    uint64_t handle;
    ek_dev_t dev; /* the runtime's own device handle */
    int device_index;
    ek_kernels_t kernels;              /* resolved: EK_KERNELS_PORTABLE, _AUTO or _XNNPACK */
    const struct ek_provider *provider; /* NULL: the portable kernels only */
    const char *kernels_why;            /* "" or why AUTO runs the portable kernels (ek_provider_select) */
    int threads;                        /* a launch's default */
    pthread_mutex_t lock;               /* the model and network lists, the stages' context pools */
    struct ek_model **models;
    size_t model_count, model_cap;
    struct ek_network **networks;
    int network_count, network_cap;
    int users;    /* API calls in progress (runtime.c, under its table lock) */
    int launches; /* launches queued or running (engine.c, under its launch lock) */
    /* Test hook (docs/profiling.md): the op name whose output every launch corrupts, from
     * EDGEKIT_TEST_CORRUPT_OP, honoured only with EDGEKIT_TEST_HOOKS=1; NULL otherwise. */
    char *test_corrupt_op;
    /* Test hook: every launch sleeps this long before it runs (EDGEKIT_TEST_SLOW_LAUNCH_MS, with
     * EDGEKIT_TEST_HOOKS=1); 0 otherwise. */
    int test_slow_launch_ms;
    struct ek_allocator_obj *allocator; /* NULL: the device heap */
    struct ek_workspace_rec *workspaces; /* the runtime's workspaces (under `lock`) */
    /* Plugin libraries loaded into this runtime (plugin.c): a list that only grows, under `lock`,
     * closed by ek_rt_destroy after the models. */
    struct ek_plugin_lib *plugins;
};

/* A launch's default threads: EDGEKIT_THREADS, else the CPUs this process may use, at most 8. */
ek_status_t ek_default_threads(int *threads);

/* ---- allocator.c ---- */
struct ek_allocator_obj;
/* A runtime's reference to its allocator (config.allocator), which makes ek_allocator_destroy refuse. */
ek_status_t ek_allocator_attach(ek_allocator_t handle, int device_index, struct ek_allocator_obj **a);
void ek_allocator_detach(struct ek_allocator_obj *a);
/* Every device allocation of a runtime: through its allocator, else the device heap (offset 0).
 * `to_caller`: a launch's output the caller gives back (ek_allocator_free); else the runtime's own. */
ek_status_t ek_rt_alloc(struct ek_runtime *rt, size_t size, bool to_caller, ek_mem_t *mem, size_t *offset);
void ek_rt_free(struct ek_runtime *rt, ek_mem_t mem, size_t offset);

/* ---- engine.c ---- */
struct ek_exec;
/* A workspace (ek_rt_workspace_create): an execution context over the caller's memory. */
struct ek_workspace_rec {
    uint64_t handle;
    struct ek_runtime *rt;
    struct ek_network *net;
    struct ek_stage *stage;
    struct ek_exec *exec;
    _Atomic bool busy; /* a launch runs in it */
    struct ek_workspace_rec *next;
};
/* The size of a stage's workspace: its arena rounded up, plus the slack kernels may read past it. */
ek_status_t ek_engine_workspace_bytes(const struct ek_network *net, const struct ek_stage *stage, size_t *bytes);
/* An execution context for `stage` whose arena is [offset, offset + size) of `mem` (checked by the caller). */
ek_status_t ek_engine_exec_create_in(struct ek_runtime *rt, struct ek_network *net, struct ek_stage *stage,
                                     ek_mem_t mem, size_t offset, struct ek_exec **exec);
void ek_engine_exec_free(struct ek_runtime *rt, struct ek_exec *exec);

struct ek_launch_rec {
    uint64_t handle; /* 0: handle-less, its error goes to ek_dev_sync */
    struct ek_runtime *rt;
    struct ek_network *net;
    struct ek_stage *stage;
    int n_in, n_out;
    ek_tensor_t *tensors; /* inputs, then outputs */
    int threads;
    uint64_t cpu_mask;
    void (*on_done)(void *user_data, ek_status_t status);
    void *user_data;
    struct ek_profiler *profile; /* a reference (released with the record), or NULL: not profiled */
    uint64_t profile_launch;     /* the launch's number in the profile */
    uint64_t submit_ns;          /* when it was queued (profiled launches) */
    uint64_t caller_thread;      /* who queued it (profiled launches) */
    char *dump_dir;              /* owned; NULL: no dump */
    struct ek_workspace_rec *workspace; /* run in it (its busy flag set by the launch); NULL: the pool */
    ek_tensor_t *caller_outputs; /* networks with DYNAMIC outputs: the caller's array, whose shapes the launch
                                    sets when it ends; NULL: none */
    bool caller_waits;           /* ek_launch_run's: its status goes to the caller, not to ek_dev_sync */
    /* completion, under the engine's launch lock */
    ek_status_t status;
    char error[512];
    bool done;
    int refs; /* the worker, the live handle, and the waiters */
    pthread_cond_t cond;
    struct ek_launch_rec *next; /* the device queue */
};

/* A new record (refs 1, for the worker; +1 when `with_handle`, whose handle it issues). The
 * tensors array is allocated for n_in + n_out. It counts in rt->launches until it ends or is discarded. */
ek_status_t ek_launch_new(struct ek_runtime *rt, int n_in, int n_out, bool with_handle,
                          struct ek_launch_rec **rec);
/* Free a record that was never submitted (retires its handle). */
void ek_launch_discard(struct ek_launch_rec *rec);
/* Queue a launch on its device's worker. On failure the record is discarded. */
ek_status_t ek_launch_submit(struct ek_launch_rec *rec);
/* Run a handle-less launch whose caller waits for it, and return its status (its message in
 * ek_last_error()). It runs on the calling thread, without a hand-off to a worker, when it has no
 * on_done and the device has a free worker slot (it takes that slot: ek_dev_sync waits for it, and
 * the device still runs EK_WORKER_THREADS launches at once); from an on_done callback it runs there
 * (queueing it could wait for that very thread); otherwise it is queued and waited for. */
ek_status_t ek_launch_run(struct ek_launch_rec *rec);
/* True when the calling thread runs an on_done callback of a launch of `rt`. */
bool ek_engine_in_callback_of(const struct ek_runtime *rt);
/* Wait until no launch of `rt` is queued or running (ek_rt_destroy, once no new one can start). */
void ek_engine_wait_launches(struct ek_runtime *rt);
/* Free the execution contexts of a stage (arena memory via ek_free_device on `rt`'s device). */
void ek_engine_release_stage(struct ek_runtime *rt, struct ek_stage *stage);

/* ---- profile.c ---- */
struct ek_profiler;
uint64_t ek_thread_id(void); /* the OS thread id (gettid) */
/* The profile behind a handle, with a reference the caller releases. */
ek_status_t ek_profiler_acquire(ek_profile_t profile, struct ek_profiler **p);
void ek_profiler_release(struct ek_profiler *p);
bool ek_profiler_add(struct ek_profiler *p, const ek_profile_record_t *r);
uint64_t ek_profiler_next_launch(struct ek_profiler *p);
bool ek_profiler_first_sight(struct ek_profiler *p, const struct ek_model *model);
/* The same for any key (remote networks): true the first time (key, stamp) is seen. */
bool ek_profiler_first_key(struct ek_profiler *p, const void *key, uint64_t stamp);
/* A record of `kind` over [start, end) on `thread` (Wait, RequestInit, transfers, ModelExecute). */
void ek_profiler_span(struct ek_profiler *p, ek_profile_kind_t kind, const char *network, int stage, uint64_t launch,
                      uint64_t start, uint64_t end, uint64_t thread, uint64_t bytes);
uint64_t ek_op_flops(const struct ek_op *op);

/* Text buffers and files, shared with dump.c. */
struct sbuf {
    char *p;
    size_t len, cap;
    bool failed; /* out of memory: the text is incomplete */
};
void ek_sb_put(struct sbuf *b, const char *s, size_t n);
#define EK_SB_LIT(b, lit) ek_sb_put((b), "" lit, sizeof(lit) - 1)
void ek_sb_add(struct sbuf *b, const char *fmt, ...) EK_PRINTF(2, 3);
void ek_sb_json_string(struct sbuf *b, const char *s);
void ek_sb_free(struct sbuf *b);
/* mkdir -p, then check it is a writable directory; `what` names it in messages ("dump"). */
ek_status_t ek_make_dir(const char *dir, const char *what);
/* Write dir/name (data, then data2) through dir/name.tmp and a rename: a file is whole or absent. */
ek_status_t ek_write_file(const char *dir, const char *name, const void *data, size_t n);
ek_status_t ek_write_file2(const char *dir, const char *name, const void *data, size_t n, const void *data2,
                           size_t n2);

/* ---- dump.c: every op's output of one launch as .npy + manifest.json ---- */
struct ek_dump;
ek_status_t ek_dump_begin(const char *dir, const struct ek_network *net, const struct ek_stage *stage,
                          struct ek_dump **dump);
ek_status_t ek_dump_input(struct ek_dump *dump, int index, const void *data);
/* `dims`: a DYNAMIC output's dims this launch (what the op produced); NULL: its recorded dims. */
ek_status_t ek_dump_op(struct ek_dump *dump, uint32_t op_index, const void *data, const int64_t *dims);
/* Write manifest.json (the dump is complete only once it exists) and free the dump. */
ek_status_t ek_dump_finish(struct ek_dump *dump);
void ek_dump_free(struct ek_dump *dump);

/* ---- provider.c ---- */
/* Resolve `requested` (EK_KERNELS_DEFAULT reads EDGEKIT_KERNELS) to the kernels used and the
 * provider, if any (loaded and initialised once per process). `why` (may be NULL): "" or, when AUTO
 * resolved to the portable kernels, why the provider is not used (a string for the process's life). */
ek_status_t ek_provider_select(ek_kernels_t requested, ek_kernels_t *resolved, const struct ek_provider **provider,
                               const char **why);

#endif /* EDGEKIT_ENGINE_H */
