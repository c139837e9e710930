/* The coherence models: coherent (the mapping is the device memory) and strict (the mapping is
 * a CPU-cache shadow; missed flushes/invalidates give stale data and are reported). */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ek_test.h"
#include "ek_helpers.h"

enum { N = 512, L = EK_CACHE_LINE };

static ek_coh_violation_t vio[8];

/* Recorded violations (the first 8 are in vio[]). */
static size_t report(ek_dev_t dev)
{
    size_t count = (size_t)-1;
    memset(vio, 0, sizeof vio);
    CHECK_OK(ek_dev_coherence_report(dev, vio, 8, &count));
    for (size_t i = 0; i < count && i < 8; i++)
        printf("    violation %zu: %s mem=%llu offset=%zu size=%zu: %s\n", i, ek_coh_kind_name(vio[i].kind),
               (unsigned long long)vio[i].mem, vio[i].offset, vio[i].size, vio[i].what);
    return count;
}

static void check_violation_at(const char *file, int line, const ek_coh_violation_t *v, ek_coh_kind_t kind,
                               ek_mem_t mem, size_t offset, size_t size)
{
    char what[300];
    if (v->kind != kind || v->mem != mem.id || v->offset != offset || v->size != size || v->what[0] == '\0' ||
        memchr(v->what, '\0', sizeof v->what) == NULL) {
        snprintf(what, sizeof what, "violation %s mem=%llu [%zu, +%zu), expected %s mem=%llu [%zu, +%zu)",
                 ek_coh_kind_name(v->kind), (unsigned long long)v->mem, v->offset, v->size, ek_coh_kind_name(kind),
                 (unsigned long long)mem.id, offset, size);
        ekt_report_failure(file, line, what);
    }
}
#define CHECK_VIOLATION(v, kind, mem, offset, size)                                                    \
    check_violation_at(__FILE__, __LINE__, (v), (kind), (mem), (offset), (size))

#define CHECK_NO_VIOLATIONS(dev) CHECK(report(dev) == 0)

/* Exactly one violation is recorded, and it is this one. */
#define CHECK_ONLY_VIOLATION(dev, kind, mem, offset, size)                                             \
    do {                                                                                               \
        size_t n_ = report(dev);                                                                       \
        if (n_ != 1) {                                                                                 \
            char w_[80];                                                                               \
            snprintf(w_, sizeof w_, "%zu violations recorded, expected 1", n_);                        \
            ekt_report_failure(__FILE__, __LINE__, w_);                                                \
        }                                                                                              \
        if (n_ >= 1 && n_ != (size_t)-1)                                                               \
            CHECK_VIOLATION(&vio[0], (kind), (mem), (offset), (size));                                 \
    } while (0)

/* A strict device and one N-byte memory filled with 0x11 on the device side. */
static int setup(ek_dev_t *dev, ek_mem_t *m, ek_coherence_t coherence)
{
    if (!CHECK_OK(ekt_open(dev, 0, 1 * MIB, coherence)))
        return 0;
    if (!CHECK_OK(ek_malloc_device(*dev, m, N)))
        return 0;
    uint8_t fill[N];
    memset(fill, 0x11, N);
    return CHECK_OK(ek_memcpy_s2d(*dev, *m, fill));
}

static void device_bytes(ek_dev_t dev, ek_mem_t m, uint8_t *out)
{
    memset(out, 0xEE, N);
    CHECK_OK(ek_memcpy_d2s(dev, out, m));
}

static void test_strict_config_and_env(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_STRICT));
    CHECK(STATS(dev).coherence == EK_COHERENCE_STRICT);
    CHECK_OK(ekt_close(dev));
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_COHERENT)); /* explicit beats the environment */
    CHECK(STATS(dev).coherence == EK_COHERENCE_COHERENT);
    CHECK_OK(ekt_close(dev));
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_DEFAULT));
    CHECK(STATS(dev).coherence == (ekt_env_strict() ? EK_COHERENCE_STRICT : EK_COHERENCE_COHERENT));
    CHECK_OK(ekt_close(dev));
    if (!ekt_env_strict())
        SKIP("EDGEKIT_COHERENCE=strict not set: only the coherent default was checked");
}

/* Coherent: the "wrong" programs of the strict tests just work and record nothing. */
static void test_coherent_needs_no_maintenance(void)
{
    ek_dev_t dev;
    ek_mem_t m;
    REQUIRE(setup(&dev, &m, EK_COHERENCE_COHERENT));
    uint8_t *p, out[N];
    REQUIRE_OK(ek_mem_mmap(dev, m, (void **)&p));
    memset(p + 100, 0x22, 11);
    device_bytes(dev, m, out);
    CHECK(out[100] == 0x22 && out[110] == 0x22 && out[111] == 0x11);
    uint8_t v[64];
    memset(v, 0x33, sizeof v);
    CHECK_OK(ek_memcpy_s2d_partial_offset(dev, m, v, 64, 128));
    CHECK(p[128] == 0x33 && p[191] == 0x33);
    p[200] = 0x44;
    CHECK_OK(ek_mem_unmap(dev, m));
    device_bytes(dev, m, out);
    CHECK(out[200] == 0x44);
    CHECK_NO_VIOLATIONS(dev);
    CHECK_OK(ek_free_device(dev, m));
    CHECK_OK(ekt_close(dev));
}

/* (a) CPU writes, no flush, the device reads: stale bytes and EK_COH_UNFLUSHED_READ. */
static void test_strict_unflushed_read(void)
{
    ek_dev_t dev;
    ek_mem_t m, other;
    REQUIRE(setup(&dev, &m, EK_COHERENCE_STRICT));
    REQUIRE_OK(ek_malloc_device(dev, &other, N));
    uint8_t *p, out[N];
    REQUIRE_OK(ek_mem_mmap(dev, m, (void **)&p));
    CHECK((uintptr_t)p % 64 == 0);
    CHECK(ekt_all_bytes(p, N, 0x11)); /* a fresh mapping shows the device bytes */
    memset(p + 100, 0x22, 11);         /* bytes 100..110: cache line 1 */

    device_bytes(dev, m, out);
    CHECK(ekt_all_bytes(out, N, 0x11)); /* the device still has the old bytes */
    CHECK_ONLY_VIOLATION(dev, EK_COH_UNFLUSHED_READ, m, 1 * L, L);

    /* a device read that does not touch the dirty line is fine */
    CHECK_OK(ek_dev_coherence_clear(dev));
    CHECK_NO_VIOLATIONS(dev);
    CHECK_OK(ek_memcpy_d2s_partial_offset(dev, out, m, 2 * L, 3 * L));
    CHECK_OK(ek_memcpy_d2s_partial(dev, out, m, L));
    CHECK_NO_VIOLATIONS(dev);

    /* d2d is device-side work too: it copies the stale bytes */
    CHECK_OK(ek_memcpy_d2d(dev, other, 0, m, 0, N));
    CHECK(report(dev) == 1);
    CHECK_VIOLATION(&vio[0], EK_COH_UNFLUSHED_READ, m, 1 * L, L);
    device_bytes(dev, other, out);
    CHECK(ekt_all_bytes(out, N, 0x11));
    CHECK_OK(ek_dev_coherence_clear(dev));

    /* flushed, the device sees the new bytes and nothing is recorded */
    CHECK_OK(ek_mem_flush(dev, m));
    device_bytes(dev, m, out);
    CHECK(ekt_all_bytes(out, 100, 0x11) && ekt_all_bytes(out + 100, 11, 0x22) && ekt_all_bytes(out + 111, N - 111, 0x11));
    CHECK_NO_VIOLATIONS(dev);

    /* a write across a line boundary is widened to both lines */
    memset(p + 60, 0x23, 10);
    device_bytes(dev, m, out);
    CHECK(out[60] == 0x11 && out[69] == 0x11);
    CHECK_ONLY_VIOLATION(dev, EK_COH_UNFLUSHED_READ, m, 0, 2 * L);
    CHECK_OK(ek_mem_flush(dev, m));
    CHECK_OK(ek_mem_unmap(dev, m));
    CHECK(report(dev) == 1); /* flushed before unmap: nothing new */
    CHECK_OK(ek_free_device(dev, m));
    CHECK_OK(ek_free_device(dev, other));
    CHECK_OK(ekt_close(dev));
}

/* (b) the device writes a mapped block; the CPU must invalidate before reading. */
static void test_strict_stale_mapping(void)
{
    ek_dev_t dev;
    ek_mem_t m;
    REQUIRE(setup(&dev, &m, EK_COHERENCE_STRICT));
    uint8_t *p, v[L];
    memset(v, 0x33, L);
    REQUIRE_OK(ek_mem_mmap(dev, m, (void **)&p));
    CHECK_OK(ek_memcpy_s2d_partial_offset(dev, m, v, L, 2 * L));
    CHECK(ekt_all_bytes(p + 2 * L, L, 0x11)); /* the CPU still sees the old bytes */
    CHECK_OK(ek_mem_invalidate(dev, m));
    CHECK(ekt_all_bytes(p + 2 * L, L, 0x33) && ekt_all_bytes(p, 2 * L, 0x11));
    CHECK_OK(ek_mem_unmap(dev, m));
    CHECK_NO_VIOLATIONS(dev); /* invalidated before the mapping ended */

    /* the same without the invalidate: EK_COH_STALE_MAPPING at unmap */
    REQUIRE_OK(ek_mem_mmap(dev, m, (void **)&p));
    memset(v, 0x34, L);
    CHECK_OK(ek_memcpy_s2d_partial_offset(dev, m, v, L, 4 * L));
    CHECK(ekt_all_bytes(p + 4 * L, L, 0x11));
    CHECK_OK(ek_mem_unmap(dev, m));
    CHECK_ONLY_VIOLATION(dev, EK_COH_STALE_MAPPING, m, 4 * L, L);
    CHECK_OK(ek_dev_coherence_clear(dev));

    /* a fresh mapping shows the device's bytes */
    REQUIRE_OK(ek_mem_mmap(dev, m, (void **)&p));
    CHECK(ekt_all_bytes(p + 4 * L, L, 0x34));
    /* d2d into a mapped block counts as a device write as well; free ends the mapping */
    CHECK_OK(ek_memcpy_d2d(dev, m, 5 * L + 3, m, 2 * L, 10));
    CHECK(p[5 * L + 3] == 0x11);
    CHECK_OK(ek_free_device(dev, m)); /* "unmapped first (in strict mode with the unmap checks)" */
    CHECK_ONLY_VIOLATION(dev, EK_COH_STALE_MAPPING, m, 5 * L, L);
    CHECK_OK(ekt_close(dev));
}

/* (c) CPU and device both wrote a line: the flush writes the CPU's line over the device's bytes. */
static void test_strict_write_conflict(void)
{
    ek_dev_t dev;
    ek_mem_t m;
    REQUIRE(setup(&dev, &m, EK_COHERENCE_STRICT));
    uint8_t *p, v[4], out[N];
    memset(v, 0xBB, sizeof v);
    REQUIRE_OK(ek_mem_mmap(dev, m, (void **)&p));
    memset(p + L, 0xAA, 4);                                      /* CPU: bytes 64..67 */
    CHECK_OK(ek_memcpy_s2d_partial_offset(dev, m, v, 4, L + 36)); /* device: bytes 100..103 */
    CHECK_OK(ek_mem_flush(dev, m));
    CHECK_ONLY_VIOLATION(dev, EK_COH_WRITE_CONFLICT, m, L, L);
    device_bytes(dev, m, out);
    CHECK(ekt_all_bytes(out + L, 4, 0xAA));
    CHECK(ekt_all_bytes(out + L + 36, 4, 0x11)); /* "the write-back of the CPU's line overwrote the device's bytes" */
    CHECK_OK(ek_mem_invalidate(dev, m));
    CHECK_OK(ek_mem_unmap(dev, m));
    CHECK(report(dev) == 1);
    CHECK_OK(ek_free_device(dev, m));
    CHECK_OK(ekt_close(dev));
}

/* (d) CPU writes and unmaps without flushing: the device never sees them. */
static void test_strict_unflushed_unmap(void)
{
    ek_dev_t dev;
    ek_mem_t m;
    REQUIRE(setup(&dev, &m, EK_COHERENCE_STRICT));
    uint8_t *p, *p2, out[N];
    REQUIRE_OK(ek_mem_mmap(dev, m, (void **)&p));
    p[200] = 0x44; /* line 3 */
    CHECK_OK(ek_mem_unmap(dev, m));
    CHECK_ONLY_VIOLATION(dev, EK_COH_UNFLUSHED_UNMAP, m, 3 * L, L);
    device_bytes(dev, m, out);
    CHECK(ekt_all_bytes(out, N, 0x11));
    CHECK(report(dev) == 1); /* the unmapped writes are gone, so the read is not an UNFLUSHED_READ */
    CHECK_OK(ek_dev_coherence_clear(dev));

    /* mapped twice: the mapping ends with the second unmap */
    REQUIRE_OK(ek_mem_mmap(dev, m, (void **)&p));
    REQUIRE_OK(ek_mem_mmap(dev, m, (void **)&p2));
    CHECK(p == p2);
    CHECK(p[200] == 0x11);
    p[0] = 0x45;
    CHECK_OK(ek_mem_unmap(dev, m));
    CHECK_NO_VIOLATIONS(dev);
    CHECK_OK(ek_mem_unmap(dev, m));
    CHECK_ONLY_VIOLATION(dev, EK_COH_UNFLUSHED_UNMAP, m, 0, L);
    CHECK_OK(ek_dev_coherence_clear(dev));

    /* free of a mapped block with unflushed writes */
    REQUIRE_OK(ek_mem_mmap(dev, m, (void **)&p));
    memset(p + N - 2, 0x46, 2);
    CHECK_OK(ek_free_device(dev, m));
    CHECK_ONLY_VIOLATION(dev, EK_COH_UNFLUSHED_UNMAP, m, N - L, L);
    CHECK_OK(ekt_close(dev));
}

/* (e) partial flush and invalidate touch only their lines. */
static void test_strict_partial(void)
{
    ek_dev_t dev;
    ek_mem_t m;
    REQUIRE(setup(&dev, &m, EK_COHERENCE_STRICT));
    uint8_t *p, out[N], v[L];
    REQUIRE_OK(ek_mem_mmap(dev, m, (void **)&p));
    memset(p, 0x55, L);         /* line 0 */
    memset(p + 2 * L, 0x66, L); /* line 2 */
    CHECK_OK(ek_mem_flush_partial(dev, m, 0, L));
    memset(out, 0, N);
    CHECK_OK(ek_memcpy_d2s_partial(dev, out, m, L));
    CHECK(ekt_all_bytes(out, L, 0x55));
    CHECK_NO_VIOLATIONS(dev); /* line 0 was flushed */
    device_bytes(dev, m, out);
    CHECK(ekt_all_bytes(out, L, 0x55) && ekt_all_bytes(out + L, L, 0x11) && ekt_all_bytes(out + 2 * L, L, 0x11));
    CHECK_ONLY_VIOLATION(dev, EK_COH_UNFLUSHED_READ, m, 2 * L, L);
    CHECK_OK(ek_dev_coherence_clear(dev));
    CHECK_OK(ek_mem_flush_partial(dev, m, 2 * L, L));
    device_bytes(dev, m, out);
    CHECK(ekt_all_bytes(out + 2 * L, L, 0x66));
    CHECK_NO_VIOLATIONS(dev);

    /* an unaligned partial flush still makes its bytes visible (whole lines are written back) */
    p[5 * L + 10] = 0x67;
    CHECK_OK(ek_mem_flush_partial(dev, m, 5 * L + 10, 1));
    device_bytes(dev, m, out);
    CHECK(out[5 * L + 10] == 0x67);
    CHECK_NO_VIOLATIONS(dev);

    /* partial invalidate */
    memset(v, 0x77, L);
    CHECK_OK(ek_memcpy_s2d_partial_offset(dev, m, v, L, 1 * L));
    memset(v, 0x78, L);
    CHECK_OK(ek_memcpy_s2d_partial_offset(dev, m, v, L, 3 * L));
    CHECK_OK(ek_mem_invalidate_partial(dev, m, L, L));
    CHECK(ekt_all_bytes(p + L, L, 0x77));
    CHECK(ekt_all_bytes(p + 3 * L, L, 0x11)); /* not invalidated: still the old bytes */
    CHECK(ekt_all_bytes(p, L, 0x55));
    CHECK_OK(ek_mem_unmap(dev, m));
    CHECK_ONLY_VIOLATION(dev, EK_COH_STALE_MAPPING, m, 3 * L, L);
    CHECK_OK(ek_free_device(dev, m));
    CHECK_OK(ekt_close(dev));
}

/* A flush writes back only the lines the CPU wrote: clean lines the device wrote meanwhile keep
 * the device's bytes (no write-back of the whole shadow) and no conflict is reported. */
static void test_strict_flush_skips_clean_lines(void)
{
    ek_dev_t dev;
    ek_mem_t m;
    REQUIRE(setup(&dev, &m, EK_COHERENCE_STRICT));
    uint8_t *p, v[L], out[N];
    memset(v, 0x33, L);
    REQUIRE_OK(ek_mem_mmap(dev, m, (void **)&p));
    CHECK_OK(ek_memcpy_s2d_partial_offset(dev, m, v, L, 2 * L)); /* device: line 2 */
    memset(p, 0x22, L);                                          /* CPU: line 0 */
    CHECK_OK(ek_mem_flush(dev, m));
    device_bytes(dev, m, out);
    CHECK(ekt_all_bytes(out, L, 0x22));
    CHECK(ekt_all_bytes(out + 2 * L, L, 0x33)); /* not overwritten by the shadow's stale line */
    CHECK_NO_VIOLATIONS(dev);
    CHECK_OK(ek_mem_invalidate(dev, m));
    CHECK(ekt_all_bytes(p + 2 * L, L, 0x33) && ekt_all_bytes(p, L, 0x22));
    CHECK_OK(ek_mem_unmap(dev, m));
    CHECK_NO_VIOLATIONS(dev);
    CHECK_OK(ek_free_device(dev, m));
    CHECK_OK(ekt_close(dev));
}

/* Blocks whose size is not a multiple of a cache line: maintenance of the last line never
 * touches the neighbouring block, and reports stay inside (or line-widened around) the block. */
static void test_strict_unaligned_sizes(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_STRICT));
    enum { S = 100, K = 6 };
    ek_mem_t m[K];
    uint8_t fill[S], out[S];
    for (int i = 0; i < K; i++) {
        REQUIRE_OK(ek_malloc_device(dev, &m[i], S));
        memset(fill, 0x10 + i, S);
        REQUIRE_OK(ek_memcpy_s2d(dev, m[i], fill));
    }
    for (int i = 0; i < K; i += 2) { /* even blocks: CPU writes the tail and flushes */
        uint8_t *p;
        REQUIRE_OK(ek_mem_mmap(dev, m[i], (void **)&p));
        memset(p + 90, 0xA0 + i, 10);
        CHECK_OK(ek_mem_flush(dev, m[i]));
        CHECK_OK(ek_mem_invalidate(dev, m[i]));
        CHECK_OK(ek_mem_unmap(dev, m[i]));
    }
    for (int i = 0; i < K; i++) {
        CHECK_OK(ek_memcpy_d2s(dev, out, m[i]));
        CHECK(ekt_all_bytes(out, 90, (uint8_t)(0x10 + i)));
        CHECK(ekt_all_bytes(out + 90, 10, (uint8_t)(i % 2 ? 0x10 + i : 0xA0 + i)));
    }
    CHECK_NO_VIOLATIONS(dev);
    /* unflushed write to the last byte: the range is the last line, widened (to 64) or clipped (36) */
    uint8_t *p;
    REQUIRE_OK(ek_mem_mmap(dev, m[1], (void **)&p));
    p[S - 1] = 0xFF;
    CHECK_OK(ek_mem_unmap(dev, m[1]));
    size_t n = report(dev);
    CHECK(n == 1);
    if (n >= 1 && n != (size_t)-1) {
        CHECK(vio[0].kind == EK_COH_UNFLUSHED_UNMAP && vio[0].mem == m[1].id && vio[0].offset == L);
        CHECK(vio[0].size == L || vio[0].size == S - L);
    }
    for (int i = 0; i < K; i++)
        CHECK_OK(ek_free_device(dev, m[i]));
    CHECK_OK(ekt_close(dev));
}

/* (f) a correct zero-copy program records nothing. */
static void test_strict_correct_program(void)
{
    ek_dev_t dev;
    ek_mem_t a, b;
    REQUIRE(setup(&dev, &a, EK_COHERENCE_STRICT));
    REQUIRE_OK(ek_malloc_device(dev, &b, N));
    uint8_t *pa, *pb, want[N], out[N];
    ekt_fill(want, N, 77);
    REQUIRE_OK(ek_mem_mmap(dev, a, (void **)&pa));
    REQUIRE_OK(ek_mem_mmap(dev, b, (void **)&pb));
    memcpy(pa, want, N);
    CHECK_OK(ek_mem_flush(dev, a));
    CHECK_OK(ek_memcpy_d2d(dev, b, 0, a, 0, N));
    CHECK_OK(ek_mem_invalidate(dev, b));
    CHECK(memcmp(pb, want, N) == 0);
    device_bytes(dev, a, out);
    CHECK(memcmp(out, want, N) == 0);
    /* the device updates b again; the CPU invalidates a part and reads only that part */
    uint8_t v[L];
    memset(v, 0x99, L);
    CHECK_OK(ek_memcpy_s2d_partial_offset(dev, b, v, L, 2 * L));
    CHECK_OK(ek_mem_invalidate_partial(dev, b, 2 * L, L));
    CHECK(ekt_all_bytes(pb + 2 * L, L, 0x99));
    /* CPU writes a line of b, flushes it, the device reads it */
    memset(pb + 4 * L, 0x9A, L);
    CHECK_OK(ek_mem_flush_partial(dev, b, 4 * L, L));
    CHECK_OK(ek_memcpy_d2s(dev, out, b));
    CHECK(ekt_all_bytes(out + 4 * L, L, 0x9A) && ekt_all_bytes(out + 2 * L, L, 0x99));
    CHECK_OK(ek_mem_unmap(dev, a));
    CHECK_OK(ek_mem_unmap(dev, b));
    /* plain copies with no mapping at all */
    CHECK_OK(ek_memcpy_s2d(dev, a, want));
    CHECK_OK(ek_memcpy_d2s(dev, out, a));
    CHECK(memcmp(out, want, N) == 0);
    CHECK_NO_VIOLATIONS(dev);
    CHECK_OK(ek_free_device(dev, a));
    CHECK_OK(ek_free_device(dev, b));
    CHECK_NO_VIOLATIONS(dev);
    CHECK_OK(ekt_close(dev));
}

static void test_report_api(void)
{
    ek_dev_t dev;
    ek_mem_t m;
    REQUIRE(setup(&dev, &m, EK_COHERENCE_STRICT));
    uint8_t *p, out[N], v[L];
    memset(v, 0x12, L);
    /* three violations of three kinds, in this order */
    REQUIRE_OK(ek_mem_mmap(dev, m, (void **)&p));
    p[0] = 1;
    CHECK_OK(ek_memcpy_d2s(dev, out, m));  /* UNFLUSHED_READ, line 0 */
    CHECK_OK(ek_mem_flush(dev, m));
    CHECK_OK(ek_memcpy_s2d_partial_offset(dev, m, v, L, L));
    CHECK_OK(ek_mem_invalidate_partial(dev, m, L, L));
    CHECK_OK(ek_memcpy_s2d_partial_offset(dev, m, v, L, 2 * L));
    p[3 * L] = 1;
    CHECK_OK(ek_mem_unmap(dev, m));       /* STALE_MAPPING line 2, UNFLUSHED_UNMAP line 3 (either order) */

    size_t count = 0;
    CHECK_OK(ek_dev_coherence_report(dev, NULL, 0, &count));
    CHECK(count == 3);
    ek_coh_violation_t two[3];
    memset(two, 0xCD, sizeof two);
    CHECK_OK(ek_dev_coherence_report(dev, two, 2, &count));
    CHECK(count == 3);
    CHECK_VIOLATION(&two[0], EK_COH_UNFLUSHED_READ, m, 0, L); /* oldest first */
    CHECK(two[1].kind == EK_COH_STALE_MAPPING || two[1].kind == EK_COH_UNFLUSHED_UNMAP);
    CHECK(ekt_all_bytes(&two[2], sizeof two[2], 0xCD)); /* capacity respected */
    CHECK_OK(ek_dev_coherence_clear(dev));
    CHECK_OK(ek_dev_coherence_report(dev, NULL, 0, &count));
    CHECK(count == 0);
    CHECK_OK(ek_dev_coherence_clear(dev)); /* clearing an empty report is fine */

    /* the runtime keeps the first 1024 */
    REQUIRE_OK(ek_mem_mmap(dev, m, (void **)&p));
    p[0] = 2;
    for (int i = 0; i < 1100; i++)
        CHECK_OK(ek_memcpy_d2s_partial(dev, out, m, 1));
    CHECK_OK(ek_dev_coherence_report(dev, NULL, 0, &count));
    /* "keeps the first 1024" and "*count to how many are recorded in all": 1024 is the reading of
       "recorded"; a count of everything seen (1100) is accepted too */
    CHECK(count == 1024 || count == 1100);
    static ek_coh_violation_t all[1200];
    memset(all, 0, sizeof all);
    CHECK_OK(ek_dev_coherence_report(dev, all, 1200, &count));
    CHECK(all[0].kind == EK_COH_UNFLUSHED_READ && all[1023].kind == EK_COH_UNFLUSHED_READ);
    CHECK(all[1024].kind == 0); /* nothing beyond the 1024 kept */
    CHECK_OK(ek_dev_coherence_clear(dev));
    CHECK_OK(ek_mem_flush(dev, m));
    CHECK_OK(ek_mem_unmap(dev, m));
    CHECK_NO_VIOLATIONS(dev);
    CHECK_OK(ek_free_device(dev, m));
    CHECK_OK(ekt_close(dev));
}

int main(void)
{
    ekt_init();
    RUN(test_strict_config_and_env);
    RUN(test_coherent_needs_no_maintenance);
    RUN(test_strict_unflushed_read);
    RUN(test_strict_stale_mapping);
    RUN(test_strict_write_conflict);
    RUN(test_strict_unflushed_unmap);
    RUN(test_strict_partial);
    RUN(test_strict_flush_skips_clean_lines);
    RUN(test_strict_unaligned_sizes);
    RUN(test_strict_correct_program);
    RUN(test_report_api);
    return ek_test_summary();
}
