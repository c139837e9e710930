/* Shared helpers of the EdgeKit C tests: device handles tracked so a test that stops early
 * still closes them, heap-stat snapshots, byte patterns. Include after ek_test.h. */
#ifndef EK_HELPERS_H
#define EK_HELPERS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ek_test.h"

#define KIB ((size_t)1024)
#define MIB ((size_t)1024 * 1024)

/* A 2-D shape [a, b]. */
static inline ek_shape_t ekt_shape2(int64_t a, int64_t b)
{
    ek_shape_t s;
    memset(&s, 0, sizeof s);
    s.num_dims = 2;
    s.dims[0] = a;
    s.dims[1] = b;
    return s;
}

#define EKT_MAX_TRACKED 64
static ek_dev_t ekt_tracked[EKT_MAX_TRACKED];
static int ekt_ntracked;

static inline void ekt_track(ek_dev_t h)
{
    if (ekt_ntracked < EKT_MAX_TRACKED)
        ekt_tracked[ekt_ntracked++] = h;
}

static inline void ekt_untrack(ek_dev_t h)
{
    for (int i = 0; i < ekt_ntracked; i++) {
        if (ekt_tracked[i].id == h.id) {
            ekt_tracked[i] = ekt_tracked[--ekt_ntracked];
            return;
        }
    }
}

/* Open device `id` with the given heap size and coherence (0 / EK_COHERENCE_DEFAULT = default). */
static inline ek_status_t ekt_open(ek_dev_t *h, int id, size_t heap_size, ek_coherence_t coherence)
{
    ek_dev_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.heap_size = heap_size;
    cfg.coherence = coherence;
    cfg.backing = EK_BACKING_DEFAULT;
    ek_status_t s = ek_dev_request_ex(h, id, &cfg);
    if (s == EK_OK)
        ekt_track(*h);
    return s;
}

static inline ek_status_t ekt_close(ek_dev_t h)
{
    ekt_untrack(h);
    return ek_dev_free(h);
}

/* Run after every test: close the handles a failed test left open, so the next test gets
 * freshly configured devices. */
static inline void ekt_close_all(void)
{
    if (ekt_ntracked)
        printf("    (closing %d device handle(s) the test left open)\n", ekt_ntracked);
    while (ekt_ntracked > 0)
        (void)ek_dev_free(ekt_tracked[--ekt_ntracked]);
}

static inline void ekt_init(void)
{
    ekt_after_each = ekt_close_all;
    setvbuf(stdout, NULL, _IOLBF, 0);
}

static inline size_t ekt_round(size_t n, size_t align)
{
    return (n + align - 1) / align * align;
}

/* The heap stats, or all-0xFF when the call fails (the failure is recorded). */
static inline ek_heap_stats_t ekt_stats_at(const char *file, int line, ek_dev_t dev)
{
    ek_heap_stats_t st;
    memset(&st, 0xFF, sizeof st);
    ekt_check_status(file, line, "ek_dev_heap_stats(dev, &stats)", ek_dev_heap_stats(dev, &st), EK_OK);
    return st;
}
#define STATS(dev) ekt_stats_at(__FILE__, __LINE__, (dev))

static inline void ekt_check_stats_same(const char *file, int line, ek_dev_t dev, const ek_heap_stats_t *b)
{
    ek_heap_stats_t a = ekt_stats_at(file, line, dev);
    char what[400];
#define EKT_FIELD(f)                                                                                   \
    if (a.f != b->f) {                                                                                 \
        snprintf(what, sizeof what, "heap stats changed by a failed call: " #f " %zu -> %zu",          \
                 (size_t)b->f, (size_t)a.f);                                                           \
        ekt_report_failure(file, line, what);                                                          \
    }
    EKT_FIELD(total)
    EKT_FIELD(used)
    EKT_FIELD(peak)
    EKT_FIELD(free)
    EKT_FIELD(largest_free)
    EKT_FIELD(allocations)
    EKT_FIELD(alignment)
    EKT_FIELD(coherence)
    EKT_FIELD(backing)
#undef EKT_FIELD
}
/* After a failing call: the heap stats equal the snapshot `before`. */
#define CHECK_STATS_SAME(dev, before) ekt_check_stats_same(__FILE__, __LINE__, (dev), &(before))

/* A byte pattern that differs per seed and per position. */
static inline uint8_t ekt_pat(uint32_t seed, size_t i)
{
    uint32_t x = seed * 2654435761u + (uint32_t)i * 40503u + (uint32_t)(i >> 9) * 977u;
    x ^= x >> 13;
    return (uint8_t)(x ^ (seed >> 7) ^ 0x5A);
}

static inline void ekt_fill(void *buf, size_t n, uint32_t seed)
{
    uint8_t *p = buf;
    for (size_t i = 0; i < n; i++)
        p[i] = ekt_pat(seed, i);
}

/* The first index where buf differs from the pattern, or (size_t)-1 when it matches. */
static inline size_t ekt_mismatch(const void *buf, size_t n, uint32_t seed)
{
    const uint8_t *p = buf;
    for (size_t i = 0; i < n; i++)
        if (p[i] != ekt_pat(seed, i))
            return i;
    return (size_t)-1;
}

static inline int ekt_all_bytes(const void *buf, size_t n, uint8_t v)
{
    const uint8_t *p = buf;
    for (size_t i = 0; i < n; i++)
        if (p[i] != v)
            return 0;
    return 1;
}

/* Number of devices the environment asks for (what ek_dev_count should report). */
static inline int ekt_expected_devices(void)
{
    const char *s = getenv("EDGEKIT_DEVICES");
    return (s && *s) ? atoi(s) : 1;
}

static inline int ekt_env_strict(void)
{
    const char *s = getenv("EDGEKIT_COHERENCE");
    return s && strcmp(s, "strict") == 0;
}

#endif /* EK_HELPERS_H */
