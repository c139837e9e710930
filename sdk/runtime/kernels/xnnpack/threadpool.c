/* XNNPACK's operators parallelise through the pthreadpool API. This file implements that API on the
 * launch's own team of threads (the engine's ek_parallel_for, handed to the provider per run), so an
 * XNNPACK op runs on the same threads as the portable kernels: pinned to the launch's CPUs, never
 * more of them than those CPUs, spinning briefly and then blocking while it waits. Debian's
 * libpthreadpool spins up to a million iterations while its workers are off the CPU, so under load
 * from other processes a 2-thread launch took 50x its 1-thread time.
 *
 * How the calls get here: this library defines the pthreadpool_parallelize_* functions with default
 * visibility; libXNNPACK, loaded as this library's dependency, binds its calls to the first
 * definition in the dlopen's lookup scope, which is this library. ekx_threadpool_probe() checks
 * that at load time; if something else in the process already provides them (a library loaded
 * RTLD_GLOBAL), the provider falls back to libpthreadpool's pools. A pthreadpool function that is
 * not defined here (a newer XNNPACK's) goes to libpthreadpool and runs serially, never on a wrong
 * object: the provider passes XNNPACK a NULL pool, whose documented meaning is "on the calling
 * thread", and only the functions here read the team from the thread.
 *
 * Two generations of the API: the pthreadpool of 2021 (Debian 12) that the 2022 XNNPACK calls, and
 * the one of 2024 (Debian 13), whose additions the 2024 XNNPACK calls: the *_with_thread variants (the
 * task gets the index of the thread running it, below pthreadpool_get_threads_count, to pick its own
 * scratch in a workspace sized at reshape) and 2d/3d_tile_1d_with_uarch. The build defines
 * EDGEKIT_PTHREADPOOL_WITH_THREAD when the target's pthreadpool.h declares them, and this file then
 * defines them too. */
#include <stdbool.h>
#include <stdint.h>

#include <pthreadpool.h>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "threadpool.h"

#define EKX_API __attribute__((visibility("default")))

/* The team of the run this thread is inside (set around XNNPACK's setup and run), else NULL. */
static _Thread_local const struct ek_parallel *current;

void ekx_threadpool_enter(const struct ek_parallel *team) { current = team; }
void ekx_threadpool_leave(void) { current = NULL; }

/* ---- one parallelize call: up to 6 loops, the last one or two of them tiled ---- */

enum shape {
    S_1D, S_1D_UARCH, S_1D_TILE_1D,
    S_2D, S_2D_TILE_1D, S_2D_TILE_2D, S_2D_TILE_2D_UARCH,
    S_3D, S_3D_TILE_1D, S_3D_TILE_2D, S_3D_TILE_2D_UARCH,
    S_4D, S_4D_TILE_1D, S_4D_TILE_2D, S_4D_TILE_2D_UARCH,
    S_5D, S_5D_TILE_1D, S_5D_TILE_2D,
    S_6D, S_6D_TILE_1D, S_6D_TILE_2D,
#if EDGEKIT_PTHREADPOOL_WITH_THREAD
    S_1D_THREAD, S_2D_THREAD, S_2D_TILE_1D_UARCH, S_2D_TILE_1D_UARCH_THREAD, S_3D_TILE_1D_THREAD,
    S_3D_TILE_1D_UARCH, S_3D_TILE_1D_UARCH_THREAD,
#endif
};

struct job {
    enum shape shape;
    void (*task)(void);
    void *context;
    uint32_t uarch;
    int dims;
    size_t range[6], tile[6], tiles[6]; /* per loop: its range, tile size (1: untiled), tile count */
    uint32_t flags;
};

/* Calls the task for the tile at loop indices i[] (tile starts) with extents n[] (tile sizes), on
 * thread `t` of the team (0 .. its size - 1). */
static void call(const struct job *j, const size_t *i, const size_t *n, size_t t) {
    void *c = j->context;
    uint32_t u = j->uarch;
    switch (j->shape) {
    case S_1D: ((pthreadpool_task_1d_t)j->task)(c, i[0]); break;
    case S_1D_UARCH: ((pthreadpool_task_1d_with_id_t)j->task)(c, u, i[0]); break;
    case S_1D_TILE_1D: ((pthreadpool_task_1d_tile_1d_t)j->task)(c, i[0], n[0]); break;
    case S_2D: ((pthreadpool_task_2d_t)j->task)(c, i[0], i[1]); break;
    case S_2D_TILE_1D: ((pthreadpool_task_2d_tile_1d_t)j->task)(c, i[0], i[1], n[1]); break;
    case S_2D_TILE_2D: ((pthreadpool_task_2d_tile_2d_t)j->task)(c, i[0], i[1], n[0], n[1]); break;
    case S_2D_TILE_2D_UARCH:
        ((pthreadpool_task_2d_tile_2d_with_id_t)j->task)(c, u, i[0], i[1], n[0], n[1]);
        break;
    case S_3D: ((pthreadpool_task_3d_t)j->task)(c, i[0], i[1], i[2]); break;
    case S_3D_TILE_1D: ((pthreadpool_task_3d_tile_1d_t)j->task)(c, i[0], i[1], i[2], n[2]); break;
    case S_3D_TILE_2D: ((pthreadpool_task_3d_tile_2d_t)j->task)(c, i[0], i[1], i[2], n[1], n[2]); break;
    case S_3D_TILE_2D_UARCH:
        ((pthreadpool_task_3d_tile_2d_with_id_t)j->task)(c, u, i[0], i[1], i[2], n[1], n[2]);
        break;
    case S_4D: ((pthreadpool_task_4d_t)j->task)(c, i[0], i[1], i[2], i[3]); break;
    case S_4D_TILE_1D: ((pthreadpool_task_4d_tile_1d_t)j->task)(c, i[0], i[1], i[2], i[3], n[3]); break;
    case S_4D_TILE_2D:
        ((pthreadpool_task_4d_tile_2d_t)j->task)(c, i[0], i[1], i[2], i[3], n[2], n[3]);
        break;
    case S_4D_TILE_2D_UARCH:
        ((pthreadpool_task_4d_tile_2d_with_id_t)j->task)(c, u, i[0], i[1], i[2], i[3], n[2], n[3]);
        break;
    case S_5D: ((pthreadpool_task_5d_t)j->task)(c, i[0], i[1], i[2], i[3], i[4]); break;
    case S_5D_TILE_1D:
        ((pthreadpool_task_5d_tile_1d_t)j->task)(c, i[0], i[1], i[2], i[3], i[4], n[4]);
        break;
    case S_5D_TILE_2D:
        ((pthreadpool_task_5d_tile_2d_t)j->task)(c, i[0], i[1], i[2], i[3], i[4], n[3], n[4]);
        break;
    case S_6D: ((pthreadpool_task_6d_t)j->task)(c, i[0], i[1], i[2], i[3], i[4], i[5]); break;
    case S_6D_TILE_1D:
        ((pthreadpool_task_6d_tile_1d_t)j->task)(c, i[0], i[1], i[2], i[3], i[4], i[5], n[5]);
        break;
    case S_6D_TILE_2D:
        ((pthreadpool_task_6d_tile_2d_t)j->task)(c, i[0], i[1], i[2], i[3], i[4], i[5], n[4], n[5]);
        break;
#if EDGEKIT_PTHREADPOOL_WITH_THREAD
    case S_1D_THREAD: ((pthreadpool_task_1d_with_thread_t)j->task)(c, t, i[0]); break;
    case S_2D_THREAD: ((pthreadpool_task_2d_with_thread_t)j->task)(c, t, i[0], i[1]); break;
    case S_2D_TILE_1D_UARCH: ((pthreadpool_task_2d_tile_1d_with_id_t)j->task)(c, u, i[0], i[1], n[1]); break;
    case S_2D_TILE_1D_UARCH_THREAD:
        ((pthreadpool_task_2d_tile_1d_with_id_with_thread_t)j->task)(c, u, t, i[0], i[1], n[1]);
        break;
    case S_3D_TILE_1D_THREAD:
        ((pthreadpool_task_3d_tile_1d_with_thread_t)j->task)(c, t, i[0], i[1], i[2], n[2]);
        break;
    case S_3D_TILE_1D_UARCH:
        ((pthreadpool_task_3d_tile_1d_with_id_t)j->task)(c, u, i[0], i[1], i[2], n[2]);
        break;
    case S_3D_TILE_1D_UARCH_THREAD:
        ((pthreadpool_task_3d_tile_1d_with_id_with_thread_t)j->task)(c, u, t, i[0], i[1], i[2], n[2]);
        break;
#endif
    }
#if !EDGEKIT_PTHREADPOOL_WITH_THREAD
    (void)t;
#endif
}

/* Flush-to-zero and denormals-are-zero for the duration of a range (PTHREADPOOL_FLAG_DISABLE_DENORMALS,
 * which XNNPACK passes for speed); returns what to restore. */
static uint64_t denormals_off(void) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u); /* FTZ (bit 15) | DAZ (bit 6) */
    return csr;
#elif defined(__aarch64__)
    uint64_t fpcr;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
    __asm__ __volatile__("msr fpcr, %0" : : "r"(fpcr | ((uint64_t)1 << 24))); /* FZ */
    return fpcr;
#else
    return 0;
#endif
}

static void denormals_restore(uint64_t saved) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr((unsigned int)saved);
#elif defined(__aarch64__)
    __asm__ __volatile__("msr fpcr, %0" : : "r"(saved));
#else
    (void)saved;
#endif
}

/* Tiles [begin, end) in row-major order of the loops (the last loop fastest, as pthreadpool does). */
static void run_tiles(void *arg, size_t begin, size_t end, int thread) {
    const struct job *j = arg;
    bool ftz = j->flags & PTHREADPOOL_FLAG_DISABLE_DENORMALS;
    uint64_t saved = ftz ? denormals_off() : 0;
    size_t i[6] = {0}, n[6] = {0};
    for (size_t t = begin; t < end; t++) {
        size_t rest = t;
        for (int d = j->dims - 1; d >= 0; d--) {
            size_t index = rest % j->tiles[d];
            rest /= j->tiles[d];
            i[d] = index * j->tile[d];
            n[d] = j->range[d] - i[d] < j->tile[d] ? j->range[d] - i[d] : j->tile[d];
        }
        call(j, i, n, thread > 0 ? (size_t)thread : 0);
    }
    if (ftz)
        denormals_restore(saved);
}

static const struct ek_parallel *probe_team; /* the team of ekx_threadpool_probe, while it runs */
static int probe_calls;                      /* calls that reached this file meanwhile */

static void run(struct job *j) {
    if (current && current == probe_team)
        probe_calls++;
    size_t total = 1;
    for (int d = 0; d < j->dims; d++) {
        if (j->range[d] == 0)
            return;
        if (j->tile[d] == 0) /* a tile of 0 items makes no progress: take the whole range */
            j->tile[d] = j->range[d];
        j->tiles[d] = (j->range[d] - 1) / j->tile[d] + 1;
        total *= j->tiles[d];
    }
    const struct ek_parallel *team = current;
    if (team && team->threads > 1 && total > 1)
        team->parallel_for(team->exec, total, run_tiles, j);
    else
        run_tiles(j, 0, total, 0);
}

/* A job of `dims` untiled loops; the caller sets tiles and the uarch. */
static struct job job_of(enum shape shape, void (*task)(void), void *context, uint32_t flags, int dims,
                         const size_t *range) {
    struct job j = {.shape = shape, .task = task, .context = context, .dims = dims, .flags = flags};
    for (int d = 0; d < dims; d++) {
        j.range[d] = range[d];
        j.tile[d] = 1;
    }
    return j;
}

#define TASK(f) ((void (*)(void))(f))

/* ---- the pthreadpool API (pthreadpool.h); `pool` is what the provider passed: NULL ---- */

EKX_API size_t pthreadpool_get_threads_count(pthreadpool_t pool) {
    (void)pool;
    if (current && current == probe_team)
        probe_calls++;
    return current && current->threads > 1 ? (size_t)current->threads : 1;
}

EKX_API void pthreadpool_parallelize_1d(pthreadpool_t pool, pthreadpool_task_1d_t task, void *context,
                                        size_t range, uint32_t flags) {
    (void)pool;
    struct job j = job_of(S_1D, TASK(task), context, flags, 1, (size_t[]){range});
    run(&j);
}

EKX_API void pthreadpool_parallelize_1d_with_uarch(pthreadpool_t pool, pthreadpool_task_1d_with_id_t task,
                                                   void *context, uint32_t default_uarch_index,
                                                   uint32_t max_uarch_index, size_t range, uint32_t flags) {
    (void)pool;
    (void)max_uarch_index;
    struct job j = job_of(S_1D_UARCH, TASK(task), context, flags, 1, (size_t[]){range});
    j.uarch = default_uarch_index;
    run(&j);
}

EKX_API void pthreadpool_parallelize_1d_tile_1d(pthreadpool_t pool, pthreadpool_task_1d_tile_1d_t task,
                                                void *context, size_t range, size_t tile, uint32_t flags) {
    (void)pool;
    struct job j = job_of(S_1D_TILE_1D, TASK(task), context, flags, 1, (size_t[]){range});
    j.tile[0] = tile;
    run(&j);
}

EKX_API void pthreadpool_parallelize_2d(pthreadpool_t pool, pthreadpool_task_2d_t task, void *context,
                                        size_t range_i, size_t range_j, uint32_t flags) {
    (void)pool;
    struct job j = job_of(S_2D, TASK(task), context, flags, 2, (size_t[]){range_i, range_j});
    run(&j);
}

EKX_API void pthreadpool_parallelize_2d_tile_1d(pthreadpool_t pool, pthreadpool_task_2d_tile_1d_t task,
                                                void *context, size_t range_i, size_t range_j, size_t tile_j,
                                                uint32_t flags) {
    (void)pool;
    struct job j = job_of(S_2D_TILE_1D, TASK(task), context, flags, 2, (size_t[]){range_i, range_j});
    j.tile[1] = tile_j;
    run(&j);
}

EKX_API void pthreadpool_parallelize_2d_tile_2d(pthreadpool_t pool, pthreadpool_task_2d_tile_2d_t task,
                                                void *context, size_t range_i, size_t range_j, size_t tile_i,
                                                size_t tile_j, uint32_t flags) {
    (void)pool;
    struct job j = job_of(S_2D_TILE_2D, TASK(task), context, flags, 2, (size_t[]){range_i, range_j});
    j.tile[0] = tile_i;
    j.tile[1] = tile_j;
    run(&j);
}

EKX_API void pthreadpool_parallelize_2d_tile_2d_with_uarch(pthreadpool_t pool,
                                                           pthreadpool_task_2d_tile_2d_with_id_t task,
                                                           void *context, uint32_t default_uarch_index,
                                                           uint32_t max_uarch_index, size_t range_i,
                                                           size_t range_j, size_t tile_i, size_t tile_j,
                                                           uint32_t flags) {
    (void)pool;
    (void)max_uarch_index;
    struct job j = job_of(S_2D_TILE_2D_UARCH, TASK(task), context, flags, 2, (size_t[]){range_i, range_j});
    j.tile[0] = tile_i;
    j.tile[1] = tile_j;
    j.uarch = default_uarch_index;
    run(&j);
}

EKX_API void pthreadpool_parallelize_3d(pthreadpool_t pool, pthreadpool_task_3d_t task, void *context,
                                        size_t range_i, size_t range_j, size_t range_k, uint32_t flags) {
    (void)pool;
    struct job j = job_of(S_3D, TASK(task), context, flags, 3, (size_t[]){range_i, range_j, range_k});
    run(&j);
}

EKX_API void pthreadpool_parallelize_3d_tile_1d(pthreadpool_t pool, pthreadpool_task_3d_tile_1d_t task,
                                                void *context, size_t range_i, size_t range_j, size_t range_k,
                                                size_t tile_k, uint32_t flags) {
    (void)pool;
    struct job j = job_of(S_3D_TILE_1D, TASK(task), context, flags, 3, (size_t[]){range_i, range_j, range_k});
    j.tile[2] = tile_k;
    run(&j);
}

EKX_API void pthreadpool_parallelize_3d_tile_2d(pthreadpool_t pool, pthreadpool_task_3d_tile_2d_t task,
                                                void *context, size_t range_i, size_t range_j, size_t range_k,
                                                size_t tile_j, size_t tile_k, uint32_t flags) {
    (void)pool;
    struct job j = job_of(S_3D_TILE_2D, TASK(task), context, flags, 3, (size_t[]){range_i, range_j, range_k});
    j.tile[1] = tile_j;
    j.tile[2] = tile_k;
    run(&j);
}

EKX_API void pthreadpool_parallelize_3d_tile_2d_with_uarch(pthreadpool_t pool,
                                                           pthreadpool_task_3d_tile_2d_with_id_t task,
                                                           void *context, uint32_t default_uarch_index,
                                                           uint32_t max_uarch_index, size_t range_i,
                                                           size_t range_j, size_t range_k, size_t tile_j,
                                                           size_t tile_k, uint32_t flags) {
    (void)pool;
    (void)max_uarch_index;
    struct job j =
        job_of(S_3D_TILE_2D_UARCH, TASK(task), context, flags, 3, (size_t[]){range_i, range_j, range_k});
    j.tile[1] = tile_j;
    j.tile[2] = tile_k;
    j.uarch = default_uarch_index;
    run(&j);
}

EKX_API void pthreadpool_parallelize_4d(pthreadpool_t pool, pthreadpool_task_4d_t task, void *context,
                                        size_t range_i, size_t range_j, size_t range_k, size_t range_l,
                                        uint32_t flags) {
    (void)pool;
    struct job j = job_of(S_4D, TASK(task), context, flags, 4, (size_t[]){range_i, range_j, range_k, range_l});
    run(&j);
}

EKX_API void pthreadpool_parallelize_4d_tile_1d(pthreadpool_t pool, pthreadpool_task_4d_tile_1d_t task,
                                                void *context, size_t range_i, size_t range_j, size_t range_k,
                                                size_t range_l, size_t tile_l, uint32_t flags) {
    (void)pool;
    struct job j =
        job_of(S_4D_TILE_1D, TASK(task), context, flags, 4, (size_t[]){range_i, range_j, range_k, range_l});
    j.tile[3] = tile_l;
    run(&j);
}

EKX_API void pthreadpool_parallelize_4d_tile_2d(pthreadpool_t pool, pthreadpool_task_4d_tile_2d_t task,
                                                void *context, size_t range_i, size_t range_j, size_t range_k,
                                                size_t range_l, size_t tile_k, size_t tile_l, uint32_t flags) {
    (void)pool;
    struct job j =
        job_of(S_4D_TILE_2D, TASK(task), context, flags, 4, (size_t[]){range_i, range_j, range_k, range_l});
    j.tile[2] = tile_k;
    j.tile[3] = tile_l;
    run(&j);
}

EKX_API void pthreadpool_parallelize_4d_tile_2d_with_uarch(pthreadpool_t pool,
                                                           pthreadpool_task_4d_tile_2d_with_id_t task,
                                                           void *context, uint32_t default_uarch_index,
                                                           uint32_t max_uarch_index, size_t range_i,
                                                           size_t range_j, size_t range_k, size_t range_l,
                                                           size_t tile_k, size_t tile_l, uint32_t flags) {
    (void)pool;
    (void)max_uarch_index;
    struct job j = job_of(S_4D_TILE_2D_UARCH, TASK(task), context, flags, 4,
                          (size_t[]){range_i, range_j, range_k, range_l});
    j.tile[2] = tile_k;
    j.tile[3] = tile_l;
    j.uarch = default_uarch_index;
    run(&j);
}

EKX_API void pthreadpool_parallelize_5d(pthreadpool_t pool, pthreadpool_task_5d_t task, void *context,
                                        size_t range_i, size_t range_j, size_t range_k, size_t range_l,
                                        size_t range_m, uint32_t flags) {
    (void)pool;
    struct job j =
        job_of(S_5D, TASK(task), context, flags, 5, (size_t[]){range_i, range_j, range_k, range_l, range_m});
    run(&j);
}

EKX_API void pthreadpool_parallelize_5d_tile_1d(pthreadpool_t pool, pthreadpool_task_5d_tile_1d_t task,
                                                void *context, size_t range_i, size_t range_j, size_t range_k,
                                                size_t range_l, size_t range_m, size_t tile_m, uint32_t flags) {
    (void)pool;
    struct job j = job_of(S_5D_TILE_1D, TASK(task), context, flags, 5,
                          (size_t[]){range_i, range_j, range_k, range_l, range_m});
    j.tile[4] = tile_m;
    run(&j);
}

EKX_API void pthreadpool_parallelize_5d_tile_2d(pthreadpool_t pool, pthreadpool_task_5d_tile_2d_t task,
                                                void *context, size_t range_i, size_t range_j, size_t range_k,
                                                size_t range_l, size_t range_m, size_t tile_l, size_t tile_m,
                                                uint32_t flags) {
    (void)pool;
    struct job j = job_of(S_5D_TILE_2D, TASK(task), context, flags, 5,
                          (size_t[]){range_i, range_j, range_k, range_l, range_m});
    j.tile[3] = tile_l;
    j.tile[4] = tile_m;
    run(&j);
}

EKX_API void pthreadpool_parallelize_6d(pthreadpool_t pool, pthreadpool_task_6d_t task, void *context,
                                        size_t range_i, size_t range_j, size_t range_k, size_t range_l,
                                        size_t range_m, size_t range_n, uint32_t flags) {
    (void)pool;
    struct job j = job_of(S_6D, TASK(task), context, flags, 6,
                          (size_t[]){range_i, range_j, range_k, range_l, range_m, range_n});
    run(&j);
}

EKX_API void pthreadpool_parallelize_6d_tile_1d(pthreadpool_t pool, pthreadpool_task_6d_tile_1d_t task,
                                                void *context, size_t range_i, size_t range_j, size_t range_k,
                                                size_t range_l, size_t range_m, size_t range_n, size_t tile_n,
                                                uint32_t flags) {
    (void)pool;
    struct job j = job_of(S_6D_TILE_1D, TASK(task), context, flags, 6,
                          (size_t[]){range_i, range_j, range_k, range_l, range_m, range_n});
    j.tile[5] = tile_n;
    run(&j);
}

EKX_API void pthreadpool_parallelize_6d_tile_2d(pthreadpool_t pool, pthreadpool_task_6d_tile_2d_t task,
                                                void *context, size_t range_i, size_t range_j, size_t range_k,
                                                size_t range_l, size_t range_m, size_t range_n, size_t tile_m,
                                                size_t tile_n, uint32_t flags) {
    (void)pool;
    struct job j = job_of(S_6D_TILE_2D, TASK(task), context, flags, 6,
                          (size_t[]){range_i, range_j, range_k, range_l, range_m, range_n});
    j.tile[4] = tile_m;
    j.tile[5] = tile_n;
    run(&j);
}

#if EDGEKIT_PTHREADPOOL_WITH_THREAD
/* ---- the 2024 additions ---- */

EKX_API void pthreadpool_parallelize_1d_with_thread(pthreadpool_t pool, pthreadpool_task_1d_with_thread_t task,
                                                    void *context, size_t range, uint32_t flags) {
    (void)pool;
    struct job j = job_of(S_1D_THREAD, TASK(task), context, flags, 1, (size_t[]){range});
    run(&j);
}

EKX_API void pthreadpool_parallelize_2d_with_thread(pthreadpool_t pool, pthreadpool_task_2d_with_thread_t task,
                                                    void *context, size_t range_i, size_t range_j, uint32_t flags) {
    (void)pool;
    struct job j = job_of(S_2D_THREAD, TASK(task), context, flags, 2, (size_t[]){range_i, range_j});
    run(&j);
}

EKX_API void pthreadpool_parallelize_2d_tile_1d_with_uarch(pthreadpool_t pool,
                                                           pthreadpool_task_2d_tile_1d_with_id_t task,
                                                           void *context, uint32_t default_uarch_index,
                                                           uint32_t max_uarch_index, size_t range_i,
                                                           size_t range_j, size_t tile_j, uint32_t flags) {
    (void)pool;
    (void)max_uarch_index;
    struct job j = job_of(S_2D_TILE_1D_UARCH, TASK(task), context, flags, 2, (size_t[]){range_i, range_j});
    j.tile[1] = tile_j;
    j.uarch = default_uarch_index;
    run(&j);
}

EKX_API void pthreadpool_parallelize_2d_tile_1d_with_uarch_with_thread(
    pthreadpool_t pool, pthreadpool_task_2d_tile_1d_with_id_with_thread_t task, void *context,
    uint32_t default_uarch_index, uint32_t max_uarch_index, size_t range_i, size_t range_j, size_t tile_j,
    uint32_t flags) {
    (void)pool;
    (void)max_uarch_index;
    struct job j =
        job_of(S_2D_TILE_1D_UARCH_THREAD, TASK(task), context, flags, 2, (size_t[]){range_i, range_j});
    j.tile[1] = tile_j;
    j.uarch = default_uarch_index;
    run(&j);
}

EKX_API void pthreadpool_parallelize_3d_tile_1d_with_thread(pthreadpool_t pool,
                                                            pthreadpool_task_3d_tile_1d_with_thread_t task,
                                                            void *context, size_t range_i, size_t range_j,
                                                            size_t range_k, size_t tile_k, uint32_t flags) {
    (void)pool;
    struct job j =
        job_of(S_3D_TILE_1D_THREAD, TASK(task), context, flags, 3, (size_t[]){range_i, range_j, range_k});
    j.tile[2] = tile_k;
    run(&j);
}

EKX_API void pthreadpool_parallelize_3d_tile_1d_with_uarch(pthreadpool_t pool,
                                                           pthreadpool_task_3d_tile_1d_with_id_t task,
                                                           void *context, uint32_t default_uarch_index,
                                                           uint32_t max_uarch_index, size_t range_i,
                                                           size_t range_j, size_t range_k, size_t tile_k,
                                                           uint32_t flags) {
    (void)pool;
    (void)max_uarch_index;
    struct job j =
        job_of(S_3D_TILE_1D_UARCH, TASK(task), context, flags, 3, (size_t[]){range_i, range_j, range_k});
    j.tile[2] = tile_k;
    j.uarch = default_uarch_index;
    run(&j);
}

EKX_API void pthreadpool_parallelize_3d_tile_1d_with_uarch_with_thread(
    pthreadpool_t pool, pthreadpool_task_3d_tile_1d_with_id_with_thread_t task, void *context,
    uint32_t default_uarch_index, uint32_t max_uarch_index, size_t range_i, size_t range_j, size_t range_k,
    size_t tile_k, uint32_t flags) {
    (void)pool;
    (void)max_uarch_index;
    struct job j = job_of(S_3D_TILE_1D_UARCH_THREAD, TASK(task), context, flags, 3,
                          (size_t[]){range_i, range_j, range_k});
    j.tile[2] = tile_k;
    j.uarch = default_uarch_index;
    run(&j);
}
#endif

/* ---- is it us XNNPACK calls? ---- */

static void serial_for(struct ek_exec *exec, size_t count, ek_range_fn fn, void *arg) {
    (void)exec;
    fn(arg, 0, count, 0);
}

bool ekx_threadpool_probe(bool (*run_op)(void)) {
    static const struct ek_parallel probe = {2, serial_for, NULL};
    probe_team = &probe;
    probe_calls = 0;
    ekx_threadpool_enter(&probe);
    bool ran = run_op();
    ekx_threadpool_leave();
    probe_team = NULL;
    return ran && probe_calls > 0;
}
