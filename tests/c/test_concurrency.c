/* 8 threads share one device handle for ~2 seconds (EKT_SECONDS overrides) doing random
 * malloc / s2d / d2s / d2d / mmap (+ write + flush) / free; afterwards nothing leaked and nothing was corrupted. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ek_test.h"
#include "ek_helpers.h"

enum { THREADS = 8, MAXLIVE = 24 };
static const size_t MAXSIZE = 64 * 1024;

static ek_dev_t shared_dev;
static struct timespec deadline;
static atomic_int corrupted;
static atomic_long total_ops;

struct block {
    ek_mem_t mem;
    size_t size;
    uint8_t *mirror; /* what the device bytes must be */
};

struct worker {
    int index;
    uint64_t rng;
    struct block live[MAXLIVE];
    int nlive;
    long ops;
};

static uint32_t wrnd(struct worker *w)
{
    w->rng = w->rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(w->rng >> 33);
}

static int past_deadline(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > deadline.tv_sec || (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec);
}

static void note_corruption(struct worker *w, const struct block *b, size_t at, const char *how)
{
    printf("    thread %d: %s of mem %llu (size %zu) differs at byte %zu\n", w->index, how,
           (unsigned long long)b->mem.id, b->size, at);
    atomic_fetch_add(&corrupted, 1);
}

static void verify(struct worker *w, const struct block *b, uint8_t *scratch)
{
    if (!CHECK_OK(ek_memcpy_d2s(shared_dev, scratch, b->mem)))
        return;
    if (memcmp(scratch, b->mirror, b->size) != 0) {
        size_t i = 0;
        while (scratch[i] == b->mirror[i])
            i++;
        note_corruption(w, b, i, "d2s");
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    uint8_t *scratch = malloc(MAXSIZE);
    if (!scratch)
        return NULL;
    char num[32];
    while (!past_deadline()) {
        uint32_t op = wrnd(w) % 100;
        w->ops++;
        if (w->nlive == 0 || (op < 30 && w->nlive < MAXLIVE)) { /* malloc + s2d */
            struct block *b = &w->live[w->nlive];
            b->size = 1 + wrnd(w) % (wrnd(w) % 4 == 0 ? MAXSIZE : 512);
            b->mirror = malloc(b->size);
            if (!b->mirror)
                break;
            if (!CHECK_OK(ek_malloc_device(shared_dev, &b->mem, b->size))) {
                free(b->mirror);
                break;
            }
            ekt_fill(b->mirror, b->size, (uint32_t)(w->index * 1000003 + w->ops));
            CHECK_OK(ek_memcpy_s2d(shared_dev, b->mem, b->mirror));
            w->nlive++;
        } else if (op < 55) { /* d2s and verify */
            verify(w, &w->live[wrnd(w) % w->nlive], scratch);
        } else if (op < 65) { /* partial s2d at an offset */
            struct block *b = &w->live[wrnd(w) % w->nlive];
            size_t off = wrnd(w) % b->size, len = 1 + wrnd(w) % (b->size - off);
            ekt_fill(b->mirror + off, len, (uint32_t)w->ops);
            CHECK_OK(ek_memcpy_s2d_partial_offset(shared_dev, b->mem, b->mirror + off, len, off));
        } else if (op < 75) { /* d2d between (or within) own blocks */
            struct block *d = &w->live[wrnd(w) % w->nlive], *s = &w->live[wrnd(w) % w->nlive];
            size_t so = wrnd(w) % s->size, dof = wrnd(w) % d->size;
            size_t max = s->size - so < d->size - dof ? s->size - so : d->size - dof;
            size_t len = 1 + wrnd(w) % max;
            CHECK_OK(ek_memcpy_d2d(shared_dev, d->mem, dof, s->mem, so, len));
            memmove(d->mirror + dof, s->mirror + so, len);
        } else if (op < 80) { /* map, read through the mapping, unmap */
            struct block *b = &w->live[wrnd(w) % w->nlive];
            uint8_t *p = NULL;
            if (CHECK_OK(ek_mem_mmap(shared_dev, b->mem, (void **)&p))) {
                if (memcmp(p, b->mirror, b->size) != 0)
                    note_corruption(w, b, 0, "mapping");
                CHECK_OK(ek_mem_unmap(shared_dev, b->mem));
            }
        } else if (op < 83) { /* zero-copy write: map, write, flush the range, unmap */
            struct block *b = &w->live[wrnd(w) % w->nlive];
            size_t off = wrnd(w) % b->size, len = 1 + wrnd(w) % (b->size - off);
            uint8_t *p = NULL;
            if (CHECK_OK(ek_mem_mmap(shared_dev, b->mem, (void **)&p))) {
                ekt_fill(b->mirror + off, len, (uint32_t)w->ops * 3u);
                memcpy(p + off, b->mirror + off, len);
                CHECK_OK(ek_mem_flush_partial(shared_dev, b->mem, off, len));
                CHECK_OK(ek_mem_unmap(shared_dev, b->mem));
            }
        } else if (op < 86) { /* a bad call: this thread's own error message */
            struct block *b = &w->live[0];
            size_t off = b->size + 1000 + (size_t)w->index;
            CHECK_STATUS(ek_memcpy_d2s_partial_offset(shared_dev, scratch, b->mem, 1, off), EK_ERR_OUT_OF_RANGE);
            snprintf(num, sizeof num, "%zu", off);
            if (!strstr(ek_last_error(), num))
                ekt_report_failure(__FILE__, __LINE__, "thread's ek_last_error() names its own offset");
        } else if (op < 88) { /* a second handle on the same device, opened and closed */
            ek_dev_t extra;
            if (CHECK_OK(ek_dev_request(&extra, 0))) {
                CHECK_OK(ek_dev_sync(extra));
                CHECK_OK(ek_dev_free(extra));
            }
        } else { /* verify, then free */
            int i = (int)(wrnd(w) % (uint32_t)w->nlive);
            struct block *b = &w->live[i];
            verify(w, b, scratch);
            CHECK_OK(ek_free_device(shared_dev, b->mem));
            free(b->mirror);
            w->live[i] = w->live[--w->nlive];
        }
    }
    while (w->nlive > 0) {
        struct block *b = &w->live[--w->nlive];
        verify(w, b, scratch);
        CHECK_OK(ek_free_device(shared_dev, b->mem));
        free(b->mirror);
    }
    atomic_fetch_add(&total_ops, w->ops);
    free(scratch);
    return NULL;
}

static void test_eight_threads(void)
{
    double seconds = 2.0;
    const char *env = getenv("EKT_SECONDS");
    if (env && *env)
        seconds = atof(env);
    REQUIRE_OK(ekt_open(&shared_dev, 0, 64 * MIB, EK_COHERENCE_DEFAULT));
    ek_heap_stats_t before = STATS(shared_dev);

    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t)seconds;
    deadline.tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    static struct worker workers[THREADS];
    pthread_t tid[THREADS];
    for (int i = 0; i < THREADS; i++) {
        memset(&workers[i], 0, sizeof workers[i]);
        workers[i].index = i;
        workers[i].rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
        REQUIRE(pthread_create(&tid[i], NULL, worker_main, &workers[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(tid[i], NULL);

    printf("    %ld operations in %.1f s on %d threads\n", atomic_load(&total_ops), seconds, THREADS);
    CHECK(atomic_load(&corrupted) == 0);
    CHECK(atomic_load(&total_ops) > 1000);
    ek_heap_stats_t st = STATS(shared_dev);
    CHECK(st.used == 0);
    CHECK(st.allocations == 0);
    CHECK(st.free == st.total);
    CHECK(st.largest_free == st.total);
    CHECK(st.total == before.total);
    CHECK(st.peak > 0);
    size_t count = 1;
    CHECK_OK(ek_dev_coherence_report(shared_dev, NULL, 0, &count));
    CHECK(count == 0); /* every write through a mapping was flushed */
    CHECK_OK(ek_dev_sync(shared_dev));
    CHECK_OK(ekt_close(shared_dev));
}

/* Many threads opening and closing the same devices at once. */
static void *open_close_main(void *arg)
{
    int n = *(int *)arg;
    for (int i = 0; i < 200; i++) {
        ek_dev_t h;
        ek_mem_t m;
        if (!CHECK_OK(ek_dev_request(&h, i % n)))
            break;
        if (CHECK_OK(ek_malloc_device(h, &m, 100)))
            CHECK_OK(ek_free_device(h, m));
        CHECK_OK(ek_dev_free(h));
        CHECK_STATUS(ek_dev_free(h), EK_ERR_DOUBLE_FREE);
    }
    return NULL;
}

static void test_concurrent_open_close(void)
{
    int n = 0;
    REQUIRE_OK(ek_dev_count(&n));
    /* the default heap can be large: keep one handle per device open with a small heap */
    ek_dev_t keep[EK_MAX_DEVICES];
    for (int i = 0; i < n; i++)
        REQUIRE_OK(ekt_open(&keep[i], i, 1 * MIB, EK_COHERENCE_DEFAULT));
    pthread_t tid[THREADS];
    for (int i = 0; i < THREADS; i++)
        REQUIRE(pthread_create(&tid[i], NULL, open_close_main, &n) == 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(tid[i], NULL);
    for (int i = 0; i < n; i++) {
        ek_heap_stats_t st = STATS(keep[i]);
        CHECK(st.used == 0 && st.allocations == 0 && st.largest_free == st.total);
        CHECK_OK(ekt_close(keep[i]));
    }
}

/* No handle kept open: the first open and the last close of a device race between threads. */
static void *race_main(void *arg)
{
    int dev_id = *(int *)arg;
    for (int i = 0; i < 150; i++) {
        ek_dev_t h;
        ek_mem_t m;
        uint8_t in[256], out[256];
        if (!CHECK_OK(ek_dev_request(&h, dev_id)))
            break;
        ekt_fill(in, sizeof in, (uint32_t)i);
        if (CHECK_OK(ek_malloc_device(h, &m, sizeof in))) {
            CHECK_OK(ek_memcpy_s2d(h, m, in));
            CHECK_OK(ek_memcpy_d2s(h, out, m));
            CHECK(memcmp(in, out, sizeof in) == 0);
            CHECK_OK(ek_free_device(h, m));
        }
        CHECK_OK(ek_dev_free(h));
    }
    return NULL;
}

static void test_first_open_last_close_race(void)
{
    int n = 0;
    REQUIRE_OK(ek_dev_count(&n));
    int dev_id = n - 1;
    pthread_t tid[THREADS];
    for (int i = 0; i < THREADS; i++)
        REQUIRE(pthread_create(&tid[i], NULL, race_main, &dev_id) == 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(tid[i], NULL);
    ek_dev_t h;
    REQUIRE_OK(ekt_open(&h, dev_id, 0, EK_COHERENCE_DEFAULT));
    ek_heap_stats_t st = STATS(h);
    CHECK(st.used == 0 && st.allocations == 0);
    CHECK_OK(ekt_close(h));
}

int main(void)
{
    ekt_init();
    RUN(test_eight_threads);
    RUN(test_concurrent_open_close);
    RUN(test_first_open_last_close_race);
    return ek_test_summary();
}
