/* Thread teams: the launching thread plus helpers that run ek_parallel_for's ranges, and the calls
 * kernels make on their execution context (kernel.h).
 *
 * ek_parallel_for is a fork-join over chunks the threads take as they come, so a late helper (asleep,
 * or its CPU taken by other work) leaves its share to the others; its threads spin briefly for the
 * next job or for the last chunks (ops follow each other within microseconds), then block on the
 * team's condition variables, so a team that shares its CPUs with other work loses at most the spin
 * per op, not its time slices. */
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exec.h"
#include "../kernels/kernel.h"

/* ek_parallel_for splits its range into this many chunks per thread, which the team's threads take
 * as they come: a thread that is late (asleep, or its CPU taken by other work) leaves its share to
 * the others instead of holding everyone up, and a tiny op is done before a helper has woken. */
#define CHUNKS_PER_THREAD 4

static _Thread_local struct ek_exec *tls_exec; /* inside a range of this context's team */
static _Thread_local int tls_thread;

int ek_start_thread(pthread_t *thread, void *(*fn)(void *), void *arg, bool detached) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    if (detached)
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(thread, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

static void range_of(size_t count, int ranges, int index, size_t *begin, size_t *end) {
    size_t base = count / (size_t)ranges, rem = count % (size_t)ranges, i = (size_t)index;
    *begin = i * base + (i < rem ? i : rem);
    *end = *begin + base + (i < rem ? 1 : 0);
}

/* How long a team thread spins before it blocks: longer than the gap between two ops' fork-joins,
 * short enough that a thread whose CPU is taken by other work gives it up soon. */
#define SPIN_NS 50000

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__ __volatile__("pause");
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#endif
}

static bool new_range(struct ek_team *t, uint64_t seen) {
    return atomic_load_explicit(&t->generation, memory_order_acquire) != seen;
}

static bool all_finished(struct ek_team *t, uint64_t chunks) {
    return atomic_load_explicit(&t->finished, memory_order_acquire) == chunks;
}

/* Spin until ready(t, arg) or SPIN_NS pass; the caller then blocks if it is still not ready. */
static void spin_until(bool (*ready)(struct ek_team *, uint64_t), struct ek_team *t, uint64_t arg) {
    uint64_t deadline = 0;
    for (unsigned i = 1;; i++) {
        if (ready(t, arg))
            return;
        cpu_relax();
        if (i % 64 == 0) {
            uint64_t now = ek_now_ns();
            if (!deadline)
                deadline = now + SPIN_NS;
            else if (now >= deadline)
                return;
        }
    }
}

/* Take chunks of generation `gen` and run them until none is left; true when this thread finished
 * the job's last chunk. A claim is a compare-and-swap on (generation, next chunk), so a thread that
 * read an older generation's job can take nothing of a newer one. */
static bool run_chunks(struct ek_team *t, uint64_t gen, ek_range_fn fn, void *arg, size_t count, int chunks,
                       int thread) {
    uint64_t tag = (gen & 0xffffffffu) << 32;
    uint64_t want = atomic_load_explicit(&t->claim, memory_order_acquire);
    bool last = false;
    while ((want & ~(uint64_t)0xffffffffu) == tag && (want & 0xffffffffu) < (uint64_t)chunks) {
        if (!atomic_compare_exchange_weak_explicit(&t->claim, &want, want + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        size_t begin, end;
        range_of(count, chunks, (int)(want & 0xffffffffu), &begin, &end);
        fn(arg, begin, end, thread);
        last = atomic_fetch_add_explicit(&t->finished, 1, memory_order_acq_rel) + 1 == (size_t)chunks;
        want = atomic_load_explicit(&t->claim, memory_order_acquire);
    }
    return last;
}

static void *helper_main(void *p) {
    struct helper_start *hs = p;
    struct ek_exec *exec = hs->exec;
    struct ek_team *t = &exec->team;
    uint64_t seen = hs->seen;
    for (;;) {
        spin_until(new_range, t, seen);
        pthread_mutex_lock(&t->lock);
        if (!new_range(t, seen) && !t->quit) {
            /* Block until a job, the team's end or ek_team_wake; then spin again, as work comes soon. */
            pthread_cond_wait(&t->start, &t->lock);
            pthread_mutex_unlock(&t->lock);
            continue;
        }
        if (t->quit) {
            pthread_mutex_unlock(&t->lock);
            return NULL;
        }
        seen = atomic_load_explicit(&t->generation, memory_order_relaxed);
        ek_range_fn fn = t->fn;
        void *arg = t->arg;
        size_t count = t->count;
        int chunks = t->chunks;
        pthread_mutex_unlock(&t->lock);
        tls_exec = exec;
        tls_thread = hs->index;
        bool last = run_chunks(t, seen, fn, arg, count, chunks, hs->index);
        tls_exec = NULL;
        if (last) {
            /* The launching thread may be blocked on `done` (after its spin): wake it under the lock,
             * so the signal cannot fall between its check of `finished` and its wait. */
            pthread_mutex_lock(&t->lock);
            pthread_cond_signal(&t->done);
            pthread_mutex_unlock(&t->lock);
        }
    }
}

void ek_team_stop(struct ek_exec *exec) {
    struct ek_team *t = &exec->team;
    if (t->helper_count) {
        pthread_mutex_lock(&t->lock);
        t->quit = true;
        pthread_cond_broadcast(&t->start);
        pthread_mutex_unlock(&t->lock);
        for (int i = 0; i < t->helper_count; i++)
            pthread_join(t->helpers[i], NULL);
        t->quit = false;
    }
    free(t->helpers);
    free(t->starts);
    t->helpers = NULL;
    t->starts = NULL;
    t->helper_count = 0;
    exec->threads = 1;
}

void ek_parallel_for(struct ek_exec *exec, size_t count, ek_range_fn fn, void *arg) {
    if (count == 0 || !fn)
        return;
    if (!exec) {
        fn(arg, 0, count, 0);
        return;
    }
    if (tls_exec == exec) { /* nested inside one of this team's ranges: run it on this thread */
        fn(arg, 0, count, tls_thread);
        return;
    }
    struct ek_team *t = &exec->team;
    int threads = exec->solo ? 1 : exec->threads;
    if (threads <= 1 || count == 1) {
        tls_exec = exec;
        tls_thread = 0;
        fn(arg, 0, count, 0);
        tls_exec = NULL;
        return;
    }
    int chunks = count < (size_t)threads * CHUNKS_PER_THREAD ? (int)count : threads * CHUNKS_PER_THREAD;
    pthread_mutex_lock(&t->lock);
    uint64_t gen = atomic_load_explicit(&t->generation, memory_order_relaxed) + 1;
    t->fn = fn;
    t->arg = arg;
    t->count = count;
    t->chunks = chunks;
    atomic_store_explicit(&t->finished, 0, memory_order_relaxed);
    atomic_store_explicit(&t->claim, (gen & 0xffffffffu) << 32, memory_order_release);
    atomic_store_explicit(&t->generation, gen, memory_order_release);
    pthread_cond_broadcast(&t->start); /* only the helpers past their spin are waiting */
    pthread_mutex_unlock(&t->lock);
    tls_exec = exec;
    tls_thread = 0;
    run_chunks(t, gen, fn, arg, count, chunks, 0);
    tls_exec = NULL;
    /* Only chunks other threads took can still be running. */
    spin_until(all_finished, t, (uint64_t)chunks);
    if (!all_finished(t, (uint64_t)chunks)) {
        pthread_mutex_lock(&t->lock);
        while (!all_finished(t, (uint64_t)chunks))
            pthread_cond_wait(&t->done, &t->lock);
        pthread_mutex_unlock(&t->lock);
    }
}

int ek_exec_threads(const struct ek_exec *exec) { return exec && !exec->solo ? exec->threads : 1; }

void *ek_exec_scratch(struct ek_exec *exec, int thread) {
    if (!exec || !exec->scratch || thread < 0 || thread >= exec->threads)
        return NULL;
    return exec->scratch + (size_t)thread * exec->scratch_stride;
}

ek_status_t ek_exec_set_dims(struct ek_exec *exec, const struct ek_tensor_desc *t, const int64_t *dims) {
    const struct ek_stage *stage = exec ? exec->stage : NULL;
    if (!stage || !exec->dims || !t || !dims || t < stage->tensors || t >= stage->tensors + stage->tensor_count ||
        !t->dynamic)
        return ek_fail(EK_ERR_INVALID_ARG, "tensor '%s' is not a DYNAMIC output of the running stage",
                       t && t->name ? t->name : "?");
    for (int d = 0; d < t->rank; d++)
        if (dims[d] < 0 || dims[d] > t->dims[d])
            return ek_fail(EK_ERR_INVALID_ARG, "tensor '%s': dim %d of %" PRId64 " is outside 0 .. %" PRId64 ", its "
                           "recorded bound", t->name, d, dims[d], t->dims[d]);
    memcpy(exec->dims[t - stage->tensors], dims, (size_t)t->rank * sizeof *dims);
    return EK_OK;
}

void ek_team_wake(struct ek_exec *exec) {
    struct ek_team *t = &exec->team;
    if (!t->helper_count)
        return;
    pthread_mutex_lock(&t->lock);
    pthread_cond_broadcast(&t->start);
    pthread_mutex_unlock(&t->lock);
}

void ek_team_init(struct ek_exec *exec) {
    exec->threads = 1;
    pthread_mutex_init(&exec->team.lock, NULL);
    pthread_cond_init(&exec->team.start, NULL);
    pthread_cond_init(&exec->team.done, NULL);
}

void ek_team_destroy(struct ek_exec *exec) {
    ek_team_stop(exec);
    pthread_mutex_destroy(&exec->team.lock);
    pthread_cond_destroy(&exec->team.start);
    pthread_cond_destroy(&exec->team.done);
}

ek_status_t ek_team_start(struct ek_exec *exec, int threads) {
    struct ek_team *t = &exec->team;
    if (threads > 1) {
        t->helpers = calloc((size_t)threads - 1, sizeof *t->helpers);
        t->starts = calloc((size_t)threads - 1, sizeof *t->starts);
        if (!t->helpers || !t->starts) {
            ek_team_stop(exec);
            return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a team of %d threads", threads);
        }
        for (int i = 0; i < threads - 1; i++) {
            t->starts[i] = (struct helper_start){exec, i + 1, atomic_load(&t->generation)};
            /* Fewer helpers than asked for is not an error: the team is just smaller. */
            if (ek_start_thread(&t->helpers[i], helper_main, &t->starts[i], false) != 0)
                break;
            t->helper_count++;
        }
    }
    exec->threads = 1 + t->helper_count;
    return EK_OK;
}

ek_status_t ek_team_pin(struct ek_exec *exec, uint64_t mask) {
    struct ek_team *t = &exec->team;
    cpu_set_t set;
    ek_cpu_set_of(mask, &set);
    for (int i = 0; i < t->helper_count; i++) {
        int rc = pthread_setaffinity_np(t->helpers[i], sizeof set, &set);
        if (rc != 0 && mask)
            return ek_fail(EK_ERR_SYSTEM, "could not pin a launch thread to cpu_mask 0x%" PRIx64 ": %s", mask,
                           strerror(rc));
    }
    return EK_OK;
}
