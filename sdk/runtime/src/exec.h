/* An execution context (engine.c makes and pools them) and its thread team (team.c runs it). Kernels
 * see a context only through kernel.h's ek_parallel_for, ek_exec_threads, ek_exec_scratch and
 * ek_exec_set_dims, which team.c implements: so the kernels and plugins depend on team.c, below the
 * engine that runs them. Not installed. */
#ifndef EDGEKIT_EXEC_H
#define EDGEKIT_EXEC_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "internal.h"
#include "model.h"

struct helper_start {
    struct ek_exec *exec;
    int index;
    uint64_t seen; /* the team's generation when the helper was started */
};

struct ek_team {
    pthread_mutex_t lock;
    pthread_cond_t start, done;
    pthread_t *helpers;
    struct helper_start *starts;
    int helper_count;
    _Atomic uint64_t generation; /* bumped per ek_parallel_for (under `lock`) */
    _Atomic uint64_t claim;      /* (generation << 32) | the next chunk to take */
    atomic_size_t finished;      /* chunks of this generation done */
    bool quit;
    ek_range_fn fn; /* the job of this generation (under `lock`) */
    void *arg;
    size_t count;
    int chunks;
};

struct ek_exec {
    struct ek_stage *stage;
    struct ek_exec *next_free, *next_all;
    int want_threads; /* what the team was configured for */
    int threads;      /* the team's size: 1 + helpers started */
    uint64_t cpu_mask;
    ek_mem_t arena;      /* the intermediate tensors: at arena_offset of this memory */
    size_t arena_offset;
    bool arena_borrowed; /* a workspace's, the caller's memory; else the runtime allocated it */
    uint8_t *scratch;
    size_t scratch_stride;
    void **states; /* per op: the provider's state, or NULL for the portable kernel */
    const struct ek_provider *provider;
    void **tensor_ptrs;      /* per stage tensor, resolved per launch */
    const void **in_ptrs;    /* all ops' inputs, flat */
    void **out_ptrs;         /* all ops' outputs, flat */
    struct ek_mem_rec **io_recs; /* per network input, then output */
    int64_t (*dims)[EK_MAX_DIMS]; /* per stage tensor: a DYNAMIC one's dims this launch (else unused); NULL
                                     for stages without DYNAMIC tensors */
    bool *solo_ops; /* per op: too little work to share (engine.c solo_op), so it runs on one thread */
    bool any_shared; /* some op is not solo: a launch wakes the team */
    bool solo;      /* the running op is a solo one: ek_parallel_for runs it on the calling thread */
    struct ek_team team;
};

/* ---- team.c ---- */
/* Start a thread with every signal blocked, so signals go to the application's threads. */
int ek_start_thread(pthread_t *thread, void *(*fn)(void *), void *arg, bool detached);
/* A team of one thread (the launching one); ek_team_destroy frees it. */
void ek_team_init(struct ek_exec *exec);
void ek_team_destroy(struct ek_exec *exec);
/* Stop the helpers: a team of one. */
void ek_team_stop(struct ek_exec *exec);
/* Start threads - 1 helpers on a stopped team (fewer when threads cannot start: the team is smaller,
 * exec->threads says how many). EK_ERR_OUT_OF_MEMORY without memory for the list. */
ek_status_t ek_team_start(struct ek_exec *exec, int threads);
/* Wake the helpers that blocked after their spin, so they spin again: at the start of a launch, whose
 * first shared op would otherwise run alone while a helper takes tens of microseconds to wake. */
void ek_team_wake(struct ek_exec *exec);
/* Pin the helpers to `mask` (0: the CPUs the process may use). EK_ERR_SYSTEM when a non-zero mask
 * cannot be set. */
ek_status_t ek_team_pin(struct ek_exec *exec, uint64_t mask);

#endif /* EDGEKIT_EXEC_H */
