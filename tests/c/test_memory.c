/* Device memory: malloc/free/size, the s2d/d2s/d2d copies, mmap/unmap, flush/invalidate, and
 * every bad input of issue 2 (each leaves the heap stats unchanged). */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ek_test.h"
#include "ek_helpers.h"

static void test_malloc_sizes(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 8 * MIB, EK_COHERENCE_COHERENT));
    const size_t sizes[] = {1, 63, 64, 65, 1 * MIB, 3, 4096, 100000};
    enum { N = sizeof sizes / sizeof sizes[0] };
    ek_mem_t m[N];
    ek_heap_stats_t st0 = STATS(dev);
    size_t align = st0.alignment;
    size_t used = 0;
    for (size_t i = 0; i < N; i++) {
        REQUIRE_OK(ek_malloc_device(dev, &m[i], sizes[i]));
        CHECK(m[i].id != 0);
        size_t got = 0;
        CHECK_OK(ek_mem_size(m[i], &got));
        CHECK(got == sizes[i]);
        used += ekt_round(sizes[i], align);
        ek_heap_stats_t st = STATS(dev);
        CHECK(st.used == used);
        CHECK(st.allocations == i + 1);
        CHECK(st.free == st.total - st.used);

        uint8_t *in = malloc(sizes[i]), *out = malloc(sizes[i]);
        REQUIRE(in && out);
        ekt_fill(in, sizes[i], (uint32_t)i + 1);
        CHECK_OK(ek_memcpy_s2d(dev, m[i], in));
        memset(out, 0, sizes[i]);
        CHECK_OK(ek_memcpy_d2s(dev, out, m[i]));
        CHECK(memcmp(in, out, sizes[i]) == 0);
        void *p = NULL;
        if (CHECK_OK(ek_mem_mmap(dev, m[i], &p))) {
            CHECK(p != NULL && (uintptr_t)p % 64 == 0);
            CHECK(p != NULL && memcmp(p, in, sizes[i]) == 0);
            CHECK_OK(ek_mem_unmap(dev, m[i]));
        }
        free(in);
        free(out);
    }
    for (size_t i = 0; i < N; i++)
        CHECK(m[i].id != m[(i + 1) % N].id);
    for (size_t i = 0; i < N; i++)
        CHECK_OK(ek_free_device(dev, m[i]));
    ek_heap_stats_t st = STATS(dev);
    CHECK(st.used == 0 && st.allocations == 0 && st.largest_free == st.total);
    CHECK(st.peak == used);
    CHECK_OK(ekt_close(dev));
}

static void test_malloc_bad_sizes(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_DEFAULT));
    ek_mem_t keep, m = {0};
    REQUIRE_OK(ek_malloc_device(dev, &keep, 100)); /* so the heap is not empty */
    ek_heap_stats_t before = STATS(dev);

    CHECK_STATUS(ek_malloc_device(dev, &m, 0), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("size");
    CHECK_STATS_SAME(dev, before);
    CHECK_STATUS(ek_malloc_device(dev, NULL, 64), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("mem");
    CHECK_STATS_SAME(dev, before);
    const size_t huge[] = {SIZE_MAX, SIZE_MAX - 1, SIZE_MAX - 62, SIZE_MAX / 2 + 1, (size_t)1 << 40, 1 * MIB + 1,
                           1 * MIB};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        CHECK_STATUS(ek_malloc_device(dev, &m, huge[i]), EK_ERR_OUT_OF_MEMORY);
        CHECK(ek_last_error()[0] != '\0');
        CHECK_STATS_SAME(dev, before);
    }
    CHECK_OK(ek_free_device(dev, keep));
    /* the whole heap fits when it is empty, one byte more does not */
    CHECK_STATUS(ek_malloc_device(dev, &m, 1 * MIB + 1), EK_ERR_OUT_OF_MEMORY);
    if (CHECK_OK(ek_malloc_device(dev, &m, 1 * MIB)))
        CHECK_OK(ek_free_device(dev, m));
    CHECK_OK(ekt_close(dev));
}

static void test_s2d_d2s_forms(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_DEFAULT));
    enum { N = 1000 };
    ek_mem_t m;
    REQUIRE_OK(ek_malloc_device(dev, &m, N));
    uint8_t a[N], b[N], c[N], out[N + 16], want[N];

    ekt_fill(a, N, 1);
    ekt_fill(b, N, 2);
    ekt_fill(c, N, 3);
    CHECK_OK(ek_memcpy_s2d(dev, m, a));
    memcpy(want, a, N);
    CHECK_OK(ek_memcpy_s2d_partial(dev, m, b, 100));
    memcpy(want, b, 100);
    CHECK_OK(ek_memcpy_s2d_partial_offset(dev, m, c, 37, 501));
    memcpy(want + 501, c, 37);
    CHECK_OK(ek_memcpy_s2d_partial_offset(dev, m, c + 500, 1, N - 1)); /* the last byte */
    want[N - 1] = c[500];
    uint8_t big[N]; /* offset 0 and the whole size */
    ekt_fill(big, N, 9);
    CHECK_OK(ek_memcpy_s2d_partial_offset(dev, m, big, N, 0));
    memcpy(want, big, N);
    CHECK_OK(ek_memcpy_s2d_partial_offset(dev, m, a, 64, 64));
    memcpy(want + 64, a, 64);

    memset(out, 0xEE, sizeof out);
    CHECK_OK(ek_memcpy_d2s(dev, out, m));
    CHECK(memcmp(out, want, N) == 0);
    CHECK(ekt_all_bytes(out + N, 16, 0xEE)); /* nothing written past the size */

    memset(out, 0xEE, sizeof out);
    CHECK_OK(ek_memcpy_d2s_partial(dev, out, m, 10));
    CHECK(memcmp(out, want, 10) == 0);
    CHECK(ekt_all_bytes(out + 10, sizeof out - 10, 0xEE));

    memset(out, 0xEE, sizeof out);
    CHECK_OK(ek_memcpy_d2s_partial_offset(dev, out, m, 37, 501));
    CHECK(memcmp(out, want + 501, 37) == 0);
    CHECK(ekt_all_bytes(out + 37, sizeof out - 37, 0xEE));

    memset(out, 0xEE, sizeof out);
    CHECK_OK(ek_memcpy_d2s_partial_offset(dev, out, m, 1, N - 1));
    CHECK(out[0] == want[N - 1] && out[1] == 0xEE);
    CHECK_OK(ek_memcpy_d2s_partial_offset(dev, out, m, N, 0));
    CHECK(memcmp(out, want, N) == 0);
    CHECK_OK(ek_free_device(dev, m));
    CHECK_OK(ekt_close(dev));
}

/* Device content of m equals want[0..n). */
#define CHECK_DEVICE_BYTES(dev, m, want, n)                                                            \
    do {                                                                                               \
        uint8_t *got_ = malloc(n);                                                                     \
        if (got_ && CHECK_OK(ek_memcpy_d2s(dev, got_, m)))                                             \
            CHECK(memcmp(got_, want, n) == 0);                                                         \
        free(got_);                                                                                    \
    } while (0)

static void test_copy_range_errors(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_DEFAULT));
    enum { N = 1000 };
    ek_mem_t m, one;
    REQUIRE_OK(ek_malloc_device(dev, &m, N));
    REQUIRE_OK(ek_malloc_device(dev, &one, 1));
    uint8_t content[N], src[2 * N], out[2 * N], one_byte = 0x42;
    ekt_fill(content, N, 5);
    ekt_fill(src, sizeof src, 6);
    REQUIRE_OK(ek_memcpy_s2d(dev, m, content));
    REQUIRE_OK(ek_memcpy_s2d(dev, one, &one_byte));
    ek_heap_stats_t before = STATS(dev);

    struct { size_t size, offset; } bad[] = {
        {N + 1, 0}, {1, N}, {2, N - 1}, {N, 1}, {2, SIZE_MAX}, {SIZE_MAX, 1}, {SIZE_MAX, 0},
        {1, SIZE_MAX}, {SIZE_MAX - N / 2, N}, {SIZE_MAX / 2 + 1, SIZE_MAX / 2 + 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t size = bad[i].size, off = bad[i].offset;
        CHECK_STATUS(ek_memcpy_s2d_partial_offset(dev, m, src, size, off), EK_ERR_OUT_OF_RANGE);
        CHECK(ek_last_error()[0] != '\0');
        memset(out, 0xEE, sizeof out);
        CHECK_STATUS(ek_memcpy_d2s_partial_offset(dev, out, m, size, off), EK_ERR_OUT_OF_RANGE);
        CHECK(ekt_all_bytes(out, sizeof out, 0xEE)); /* nothing copied */
        if (off == 0) {
            CHECK_STATUS(ek_memcpy_s2d_partial(dev, m, src, size), EK_ERR_OUT_OF_RANGE);
            CHECK_STATUS(ek_memcpy_d2s_partial(dev, out, m, size), EK_ERR_OUT_OF_RANGE);
        }
        CHECK_STATS_SAME(dev, before);
    }
    /* the message names the range: the offset of a bad call */
    CHECK_STATUS(ek_memcpy_s2d_partial_offset(dev, m, src, 5, 4321), EK_ERR_OUT_OF_RANGE);
    CHECK_ERROR_MENTIONS("4321");
    CHECK_STATUS(ek_memcpy_d2s_partial_offset(dev, out, m, 5, 4321), EK_ERR_OUT_OF_RANGE);
    CHECK_ERROR_MENTIONS("4321");

    /* a 1-byte memory: offset == size is past the end */
    CHECK_STATUS(ek_memcpy_s2d_partial_offset(dev, one, src, 1, 1), EK_ERR_OUT_OF_RANGE);
    CHECK_STATUS(ek_memcpy_d2s_partial_offset(dev, out, one, 1, 1), EK_ERR_OUT_OF_RANGE);
    CHECK_STATUS(ek_memcpy_s2d_partial(dev, one, src, 2), EK_ERR_OUT_OF_RANGE);
    CHECK_STATUS(ek_memcpy_d2s_partial(dev, out, one, 2), EK_ERR_OUT_OF_RANGE);

    /* zero sizes: status.h lists "a zero size" under EK_ERR_INVALID_ARG */
    CHECK_STATUS(ek_memcpy_s2d_partial(dev, m, src, 0), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_memcpy_s2d_partial_offset(dev, m, src, 0, 10), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_memcpy_d2s_partial(dev, out, m, 0), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_memcpy_d2s_partial_offset(dev, out, m, 0, 10), EK_ERR_INVALID_ARG);

    /* NULL host pointers */
    CHECK_STATUS(ek_memcpy_s2d(dev, m, NULL), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("src");
    CHECK_STATUS(ek_memcpy_s2d_partial(dev, m, NULL, 10), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_memcpy_s2d_partial_offset(dev, m, NULL, 10, 10), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_memcpy_d2s(dev, NULL, m), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("dst");
    CHECK_STATUS(ek_memcpy_d2s_partial(dev, NULL, m, 10), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_memcpy_d2s_partial_offset(dev, NULL, m, 10, 10), EK_ERR_INVALID_ARG);

    CHECK_STATS_SAME(dev, before);
    CHECK_DEVICE_BYTES(dev, m, content, N); /* no failed call wrote anything */
    CHECK_DEVICE_BYTES(dev, one, &one_byte, 1);
    CHECK_OK(ek_free_device(dev, m));
    CHECK_OK(ek_free_device(dev, one));
    CHECK_OK(ekt_close(dev));
}

static void test_d2d(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_DEFAULT));
    enum { NA = 300, NB = 500 };
    ek_mem_t a, b;
    REQUIRE_OK(ek_malloc_device(dev, &a, NA));
    REQUIRE_OK(ek_malloc_device(dev, &b, NB));
    uint8_t ha[NA], hb[NB];
    ekt_fill(ha, NA, 11);
    ekt_fill(hb, NB, 12);
    REQUIRE_OK(ek_memcpy_s2d(dev, a, ha));
    REQUIRE_OK(ek_memcpy_s2d(dev, b, hb));

    /* lengths are bytes: 11 bytes at odd offsets */
    CHECK_OK(ek_memcpy_d2d(dev, b, 7, a, 3, 11));
    memcpy(hb + 7, ha + 3, 11);
    CHECK_DEVICE_BYTES(dev, b, hb, NB);
    CHECK_DEVICE_BYTES(dev, a, ha, NA);
    /* whole block, and up to the very end of both */
    CHECK_OK(ek_memcpy_d2d(dev, b, NB - NA, a, 0, NA));
    memcpy(hb + NB - NA, ha, NA);
    CHECK_DEVICE_BYTES(dev, b, hb, NB);
    CHECK_OK(ek_memcpy_d2d(dev, a, NA - 1, b, NB - 1, 1));
    ha[NA - 1] = hb[NB - 1];
    CHECK_DEVICE_BYTES(dev, a, ha, NA);

    /* overlapping ranges in one block behave like memmove, both directions */
    CHECK_OK(ek_memcpy_d2d(dev, a, 10, a, 0, 200));
    memmove(ha + 10, ha, 200);
    CHECK_DEVICE_BYTES(dev, a, ha, NA);
    CHECK_OK(ek_memcpy_d2d(dev, a, 0, a, 33, 250));
    memmove(ha, ha + 33, 250);
    CHECK_DEVICE_BYTES(dev, a, ha, NA);
    CHECK_OK(ek_memcpy_d2d(dev, a, 1, a, 0, NA - 1));
    memmove(ha + 1, ha, NA - 1);
    CHECK_DEVICE_BYTES(dev, a, ha, NA);
    CHECK_OK(ek_memcpy_d2d(dev, a, 0, a, 0, NA)); /* onto itself */
    CHECK_DEVICE_BYTES(dev, a, ha, NA);

    /* bad ranges: nothing copied, stats unchanged */
    ek_heap_stats_t before = STATS(dev);
    struct { size_t dst_off, src_off, size; } bad[] = {
        {0, 0, NA + 1},       {NA, 0, 1},        {0, NA, 1},         {NA - 10, 0, 11},
        {0, NA - 10, 11},     {SIZE_MAX, 0, 2},  {0, SIZE_MAX, 2},   {1, 0, SIZE_MAX},
        {0, 1, SIZE_MAX},     {SIZE_MAX - 5, SIZE_MAX - 5, 10},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_STATUS(ek_memcpy_d2d(dev, a, bad[i].dst_off, a, bad[i].src_off, bad[i].size),
                     EK_ERR_OUT_OF_RANGE);
        CHECK(ek_last_error()[0] != '\0');
        CHECK_STATS_SAME(dev, before);
    }
    CHECK_STATUS(ek_memcpy_d2d(dev, b, 0, a, 0, NA + 1), EK_ERR_OUT_OF_RANGE);   /* src too short */
    CHECK_STATUS(ek_memcpy_d2d(dev, a, 0, b, 0, NA + 1), EK_ERR_OUT_OF_RANGE);   /* dst too short */
    CHECK_STATUS(ek_memcpy_d2d(dev, b, NB - 1, a, 0, 2), EK_ERR_OUT_OF_RANGE);
    CHECK_STATUS(ek_memcpy_d2d(dev, b, 0, a, NA - 1, 2), EK_ERR_OUT_OF_RANGE);
    CHECK_STATUS(ek_memcpy_d2d(dev, a, 0, b, 0, 0), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_memcpy_d2d(dev, a, 4321, b, 0, 1), EK_ERR_OUT_OF_RANGE);
    CHECK_ERROR_MENTIONS("4321");
    CHECK_STATUS(ek_memcpy_d2d(dev, a, 0, b, 4321, 1), EK_ERR_OUT_OF_RANGE);
    CHECK_ERROR_MENTIONS("4321");
    CHECK_STATS_SAME(dev, before);
    CHECK_DEVICE_BYTES(dev, a, ha, NA);
    CHECK_DEVICE_BYTES(dev, b, hb, NB);
    CHECK_OK(ek_free_device(dev, a));
    CHECK_OK(ek_free_device(dev, b));
    CHECK_OK(ekt_close(dev));
}

static void test_use_after_free_and_double_free(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_DEFAULT));
    ek_mem_t m, live;
    REQUIRE_OK(ek_malloc_device(dev, &m, 256));
    REQUIRE_OK(ek_malloc_device(dev, &live, 256));
    REQUIRE_OK(ek_free_device(dev, m));
    ek_heap_stats_t before = STATS(dev);
    uint8_t buf[256] = {0};
    void *p;
    size_t size;

    CHECK_STATUS(ek_free_device(dev, m), EK_ERR_DOUBLE_FREE);
    CHECK(ek_last_error()[0] != '\0');
    CHECK_STATS_SAME(dev, before);
    CHECK_STATUS(ek_mem_size(m, &size), EK_ERR_FREED_HANDLE);
    CHECK(ek_last_error()[0] != '\0');
    CHECK_STATUS(ek_memcpy_s2d(dev, m, buf), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_memcpy_s2d_partial(dev, m, buf, 1), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_memcpy_s2d_partial_offset(dev, m, buf, 1, 1), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_memcpy_d2s(dev, buf, m), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_memcpy_d2s_partial(dev, buf, m, 1), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_memcpy_d2s_partial_offset(dev, buf, m, 1, 1), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_memcpy_d2d(dev, live, 0, m, 0, 16), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_memcpy_d2d(dev, m, 0, live, 0, 16), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_mem_mmap(dev, m, &p), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_mem_unmap(dev, m), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_mem_flush(dev, m), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_mem_flush_partial(dev, m, 0, 64), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_mem_invalidate(dev, m), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_mem_invalidate_partial(dev, m, 0, 64), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_free_device(dev, m), EK_ERR_DOUBLE_FREE);
    CHECK_STATS_SAME(dev, before);

    /* still detected after the freed block's space was handed out again */
    ek_mem_t again;
    REQUIRE_OK(ek_malloc_device(dev, &again, 256));
    CHECK(again.id != m.id);
    CHECK_STATUS(ek_mem_size(m, &size), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_free_device(dev, m), EK_ERR_DOUBLE_FREE);
    CHECK_OK(ek_free_device(dev, again));
    CHECK_OK(ek_free_device(dev, live));
    CHECK_OK(ekt_close(dev));
}

static void check_invalid_mem(ek_dev_t dev, ek_mem_t bad, ek_mem_t live)
{
    ek_heap_stats_t before = STATS(dev);
    uint8_t buf[64] = {0};
    void *p;
    size_t size;
    CHECK_STATUS(ek_mem_size(bad, &size), EK_ERR_INVALID_HANDLE);
    CHECK(ek_last_error()[0] != '\0');
    CHECK_STATUS(ek_free_device(dev, bad), EK_ERR_INVALID_HANDLE);
    CHECK_STATUS(ek_memcpy_s2d(dev, bad, buf), EK_ERR_INVALID_HANDLE);
    CHECK_STATUS(ek_memcpy_s2d_partial_offset(dev, bad, buf, 1, 0), EK_ERR_INVALID_HANDLE);
    CHECK_STATUS(ek_memcpy_d2s(dev, buf, bad), EK_ERR_INVALID_HANDLE);
    CHECK_STATUS(ek_memcpy_d2s_partial(dev, buf, bad, 1), EK_ERR_INVALID_HANDLE);
    CHECK_STATUS(ek_memcpy_d2d(dev, live, 0, bad, 0, 1), EK_ERR_INVALID_HANDLE);
    CHECK_STATUS(ek_memcpy_d2d(dev, bad, 0, live, 0, 1), EK_ERR_INVALID_HANDLE);
    CHECK_STATUS(ek_mem_mmap(dev, bad, &p), EK_ERR_INVALID_HANDLE);
    CHECK_STATUS(ek_mem_unmap(dev, bad), EK_ERR_INVALID_HANDLE);
    CHECK_STATUS(ek_mem_flush(dev, bad), EK_ERR_INVALID_HANDLE);
    CHECK_STATUS(ek_mem_invalidate_partial(dev, bad, 0, 1), EK_ERR_INVALID_HANDLE);
    CHECK_STATS_SAME(dev, before);
}

static void test_invalid_memory_handles(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_DEFAULT));
    ek_mem_t live;
    REQUIRE_OK(ek_malloc_device(dev, &live, 64));
    check_invalid_mem(dev, (ek_mem_t){12345}, live);
    check_invalid_mem(dev, (ek_mem_t){0}, live);
    check_invalid_mem(dev, (ek_mem_t){UINT64_MAX}, live);
    size_t size;
    CHECK_STATUS(ek_mem_size(live, NULL), EK_ERR_INVALID_ARG);
    CHECK_OK(ek_mem_size(live, &size));
    CHECK(size == 64);

    /* a valid memory with a forged or freed device handle */
    uint8_t buf[64] = {0};
    CHECK_STATUS(ek_memcpy_s2d((ek_dev_t){12345}, live, buf), EK_ERR_INVALID_HANDLE);
    CHECK_STATUS(ek_memcpy_d2s((ek_dev_t){0}, buf, live), EK_ERR_INVALID_HANDLE);
    CHECK_STATUS(ek_free_device((ek_dev_t){12345}, live), EK_ERR_INVALID_HANDLE);
    ek_dev_t other;
    REQUIRE_OK(ekt_open(&other, 0, 0, EK_COHERENCE_DEFAULT));
    REQUIRE_OK(ekt_close(other));
    CHECK_STATUS(ek_memcpy_s2d(other, live, buf), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_free_device(other, live), EK_ERR_FREED_HANDLE);
    CHECK(STATS(dev).allocations == 1);
    CHECK_OK(ek_free_device(dev, live));
    CHECK_OK(ekt_close(dev));
}

static void test_mmap_counting(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_DEFAULT));
    ek_mem_t m, never;
    REQUIRE_OK(ek_malloc_device(dev, &m, 4096));
    REQUIRE_OK(ek_malloc_device(dev, &never, 64));
    ek_heap_stats_t before = STATS(dev);

    CHECK_STATUS(ek_mem_unmap(dev, never), EK_ERR_NOT_MAPPED);
    CHECK(ek_last_error()[0] != '\0');
    CHECK_STATS_SAME(dev, before);
    CHECK_STATUS(ek_mem_mmap(dev, m, NULL), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("addr");
    CHECK_STATUS(ek_mem_unmap(dev, m), EK_ERR_NOT_MAPPED); /* the failed mmap mapped nothing */

    void *p1 = NULL, *p2 = NULL;
    REQUIRE_OK(ek_mem_mmap(dev, m, &p1));
    REQUIRE_OK(ek_mem_mmap(dev, m, &p2));
    CHECK(p1 != NULL && p1 == p2);
    CHECK_OK(ek_mem_unmap(dev, m));
    CHECK_OK(ek_mem_unmap(dev, m));
    CHECK_STATUS(ek_mem_unmap(dev, m), EK_ERR_NOT_MAPPED);
    CHECK_STATS_SAME(dev, before);

    /* mapped again after a full unmap; freeing a mapped block unmaps it */
    REQUIRE_OK(ek_mem_mmap(dev, m, &p1));
    CHECK(p1 != NULL);
    CHECK_OK(ek_free_device(dev, m));
    CHECK_STATUS(ek_mem_unmap(dev, m), EK_ERR_FREED_HANDLE);
    CHECK(STATS(dev).allocations == 1);
    CHECK_OK(ek_free_device(dev, never));
    CHECK_OK(ekt_close(dev));
}

static void test_flush_invalidate_ranges(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_DEFAULT));
    enum { N = 256 };
    ek_mem_t m;
    REQUIRE_OK(ek_malloc_device(dev, &m, N));
    void *p;
    REQUIRE_OK(ek_mem_mmap(dev, m, &p));
    ek_heap_stats_t before = STATS(dev);

    CHECK_OK(ek_mem_flush(dev, m));
    CHECK_OK(ek_mem_invalidate(dev, m));
    CHECK_OK(ek_mem_flush_partial(dev, m, 0, N));
    CHECK_OK(ek_mem_flush_partial(dev, m, N - 1, 1));
    CHECK_OK(ek_mem_flush_partial(dev, m, 3, 5));
    CHECK_OK(ek_mem_invalidate_partial(dev, m, 0, N));
    CHECK_OK(ek_mem_invalidate_partial(dev, m, N - 1, 1));
    CHECK_OK(ek_mem_invalidate_partial(dev, m, 100, 7));

    struct { size_t offset, size; } bad[] = {
        {N, 1}, {0, N + 1}, {N - 1, 2}, {SIZE_MAX, 2}, {2, SIZE_MAX}, {SIZE_MAX, SIZE_MAX}, {N + 64, 64},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_STATUS(ek_mem_flush_partial(dev, m, bad[i].offset, bad[i].size), EK_ERR_OUT_OF_RANGE);
        CHECK(ek_last_error()[0] != '\0');
        CHECK_STATUS(ek_mem_invalidate_partial(dev, m, bad[i].offset, bad[i].size), EK_ERR_OUT_OF_RANGE);
        CHECK_STATS_SAME(dev, before);
    }
    CHECK_STATUS(ek_mem_flush_partial(dev, m, 4321, 1), EK_ERR_OUT_OF_RANGE);
    CHECK_ERROR_MENTIONS("4321");
    /* zero sizes: "a zero size" is EK_ERR_INVALID_ARG in status.h */
    CHECK_STATUS(ek_mem_flush_partial(dev, m, 0, 0), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_mem_invalidate_partial(dev, m, 0, 0), EK_ERR_INVALID_ARG);
    CHECK_STATS_SAME(dev, before);
    CHECK_OK(ek_mem_unmap(dev, m));
    CHECK_OK(ek_free_device(dev, m));
    CHECK_OK(ekt_close(dev));
}

static void test_coherent_mapping_is_device_memory(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_COHERENT));
    CHECK(STATS(dev).coherence == EK_COHERENCE_COHERENT);
    enum { N = 512 };
    ek_mem_t m;
    REQUIRE_OK(ek_malloc_device(dev, &m, N));
    uint8_t in[N], out[N];
    ekt_fill(in, N, 21);
    uint8_t *p;
    REQUIRE_OK(ek_mem_mmap(dev, m, (void **)&p));
    CHECK((uintptr_t)p % 64 == 0);
    memcpy(p, in, N); /* CPU write, no flush */
    CHECK_OK(ek_memcpy_d2s(dev, out, m));
    CHECK(memcmp(out, in, N) == 0);
    ekt_fill(in, N, 22);
    CHECK_OK(ek_memcpy_s2d(dev, m, in)); /* device write, no invalidate */
    CHECK(memcmp(p, in, N) == 0);
    CHECK_OK(ek_memcpy_d2d(dev, m, 0, m, 64, 64));
    CHECK(memcmp(p, in + 64, 64) == 0);
    CHECK_OK(ek_mem_unmap(dev, m));
    size_t count = 1;
    CHECK_OK(ek_dev_coherence_report(dev, NULL, 0, &count));
    CHECK(count == 0);
    CHECK_OK(ek_free_device(dev, m));
    CHECK_OK(ekt_close(dev));
}

static void test_device_mismatch(void)
{
    int n = 0;
    REQUIRE_OK(ek_dev_count(&n));
    if (n < 2)
        SKIP("needs EDGEKIT_DEVICES=2");
    ek_dev_t d0, d1;
    REQUIRE_OK(ekt_open(&d0, 0, 1 * MIB, EK_COHERENCE_DEFAULT));
    REQUIRE_OK(ekt_open(&d1, 1, 1 * MIB, EK_COHERENCE_DEFAULT));
    int id = -1;
    CHECK_OK(ek_dev_id(d1, &id));
    CHECK(id == 1);
    ek_mem_t m0, m1;
    REQUIRE_OK(ek_malloc_device(d0, &m0, 256));
    REQUIRE_OK(ek_malloc_device(d1, &m1, 256));
    uint8_t h0[256], h1[256], buf[256];
    ekt_fill(h0, 256, 30);
    ekt_fill(h1, 256, 31);
    REQUIRE_OK(ek_memcpy_s2d(d0, m0, h0));
    REQUIRE_OK(ek_memcpy_s2d(d1, m1, h1));
    ek_heap_stats_t b0 = STATS(d0), b1 = STATS(d1);
    CHECK(STATS(d0).allocations == 1 && STATS(d1).allocations == 1); /* separate heaps */
    void *p;

    /* copies between memories of different devices */
    CHECK_STATUS(ek_memcpy_d2d(d0, m0, 0, m1, 0, 16), EK_ERR_DEVICE_MISMATCH);
    CHECK(ek_last_error()[0] != '\0');
    CHECK_STATUS(ek_memcpy_d2d(d1, m0, 0, m1, 0, 16), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_memcpy_d2d(d0, m1, 0, m0, 0, 16), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_memcpy_d2d(d1, m1, 0, m0, 0, 16), EK_ERR_DEVICE_MISMATCH);
    /* device 1's memory with a device 0 handle */
    CHECK_STATUS(ek_memcpy_s2d(d0, m1, buf), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_memcpy_s2d_partial(d0, m1, buf, 8), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_memcpy_s2d_partial_offset(d0, m1, buf, 8, 8), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_memcpy_d2s(d0, buf, m1), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_memcpy_d2s_partial(d0, buf, m1, 8), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_memcpy_d2s_partial_offset(d0, buf, m1, 8, 8), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_memcpy_d2d(d0, m1, 0, m1, 8, 8), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_mem_mmap(d0, m1, &p), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_mem_unmap(d0, m1), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_mem_flush(d0, m1), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_mem_flush_partial(d0, m1, 0, 64), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_mem_invalidate(d0, m1), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_mem_invalidate_partial(d0, m1, 0, 64), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_free_device(d0, m1), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_free_device(d1, m0), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATS_SAME(d0, b0);
    CHECK_STATS_SAME(d1, b1);
    CHECK_DEVICE_BYTES(d0, m0, h0, 256);
    CHECK_DEVICE_BYTES(d1, m1, h1, 256);

    /* closing device 1 leaves device 0 alone */
    CHECK_OK(ekt_close(d1));
    size_t size;
    CHECK_STATUS(ek_mem_size(m1, &size), EK_ERR_FREED_HANDLE);
    CHECK_OK(ek_mem_size(m0, &size));
    CHECK_DEVICE_BYTES(d0, m0, h0, 256);
    CHECK_OK(ek_free_device(d0, m0));
    CHECK_OK(ekt_close(d0));
}

int main(void)
{
    ekt_init();
    RUN(test_invalid_memory_handles);
    RUN(test_malloc_sizes);
    RUN(test_malloc_bad_sizes);
    RUN(test_s2d_d2s_forms);
    RUN(test_copy_range_errors);
    RUN(test_d2d);
    RUN(test_use_after_free_and_double_free);
    RUN(test_mmap_counting);
    RUN(test_flush_invalidate_ranges);
    RUN(test_coherent_mapping_is_device_memory);
    RUN(test_device_mismatch);
    return ek_test_summary();
}
