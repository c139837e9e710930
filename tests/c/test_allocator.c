/* The device heap allocator: statistics, coalescing, fragmentation, and a randomized
 * alloc/free run that checks the invariants after every step. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ek_test.h"
#include "ek_helpers.h"

static void test_stats(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_DEFAULT));
    ek_heap_stats_t st = STATS(dev);
    const size_t al = st.alignment;
    CHECK(al >= 64 && (al & (al - 1)) == 0);
    CHECK(st.total == 1 * MIB);
    CHECK(st.used == 0 && st.peak == 0 && st.allocations == 0);
    CHECK(st.free == st.total && st.largest_free == st.total);

    ek_mem_t a, b, c;
    REQUIRE_OK(ek_malloc_device(dev, &a, 1));
    st = STATS(dev);
    CHECK(st.used == ekt_round(1, al) && st.allocations == 1 && st.peak == st.used);
    CHECK(st.free == st.total - st.used);
    CHECK(st.largest_free == st.total - st.used); /* one allocation: the rest is one block */
    REQUIRE_OK(ek_malloc_device(dev, &b, 1000));
    REQUIRE_OK(ek_malloc_device(dev, &c, 65));
    size_t used = ekt_round(1, al) + ekt_round(1000, al) + ekt_round(65, al);
    st = STATS(dev);
    CHECK(st.used == used && st.allocations == 3 && st.peak == used);
    CHECK(st.free == st.total - used);
    CHECK(st.largest_free <= st.free);

    CHECK_OK(ek_free_device(dev, b));
    st = STATS(dev);
    CHECK(st.used == used - ekt_round(1000, al) && st.allocations == 2);
    CHECK(st.peak == used); /* peak remembers the high-water mark */
    CHECK(st.free == st.total - st.used);
    CHECK_OK(ek_free_device(dev, a));
    CHECK_OK(ek_free_device(dev, c));
    st = STATS(dev);
    CHECK(st.used == 0 && st.allocations == 0 && st.peak == used);
    CHECK(st.free == st.total && st.largest_free == st.total);
    CHECK_OK(ekt_close(dev));
}

static void test_coalescing_abc(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_DEFAULT));
    const size_t total = STATS(dev).total;
    ek_mem_t a, b, c, x;
    REQUIRE_OK(ek_malloc_device(dev, &a, 256 * KIB));
    REQUIRE_OK(ek_malloc_device(dev, &b, 512 * KIB));
    REQUIRE_OK(ek_malloc_device(dev, &c, 256 * KIB));
    ek_heap_stats_t st = STATS(dev);
    CHECK(st.used == total && st.free == 0 && st.largest_free == 0);
    CHECK_STATUS(ek_malloc_device(dev, &x, 1), EK_ERR_OUT_OF_MEMORY);
    CHECK_STATS_SAME(dev, st);

    CHECK_OK(ek_free_device(dev, a));
    CHECK_OK(ek_free_device(dev, c));
    st = STATS(dev);
    CHECK(st.free == 512 * KIB);
    CHECK(st.largest_free == 256 * KIB || st.largest_free == 512 * KIB); /* depends on placement */
    CHECK_OK(ek_free_device(dev, b));
    st = STATS(dev);
    CHECK(st.used == 0 && st.allocations == 0);
    CHECK(st.largest_free == total); /* A, B and C merged back into one block */
    if (CHECK_OK(ek_malloc_device(dev, &x, total)))
        CHECK_OK(ek_free_device(dev, x));
    if (CHECK_OK(ek_malloc_device(dev, &x, total - 63)))
        CHECK_OK(ek_free_device(dev, x));
    CHECK_OK(ekt_close(dev));
}

/* Fill the heap with 16 blocks, free them in a scrambled order: everything merges back. */
static void test_coalescing_any_order(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_DEFAULT));
    const size_t total = STATS(dev).total;
    enum { N = 16 };
    const size_t bs = total / N;
    const int orders[3][N] = {
        {0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15},
        {15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0},
        {5, 11, 0, 15, 7, 3, 9, 13, 1, 14, 6, 10, 2, 8, 12, 4},
    };
    for (int o = 0; o < 3; o++) {
        ek_mem_t m[N];
        for (int i = 0; i < N; i++)
            REQUIRE_OK(ek_malloc_device(dev, &m[i], bs));
        CHECK(STATS(dev).largest_free == 0);
        for (int i = 0; i < N; i++) {
            CHECK_OK(ek_free_device(dev, m[orders[o][i]]));
            ek_heap_stats_t st = STATS(dev);
            CHECK(st.free == (size_t)(i + 1) * bs);
            CHECK(st.largest_free <= st.free);
        }
        ek_heap_stats_t st = STATS(dev);
        CHECK(st.largest_free == total && st.used == 0);
        ek_mem_t whole;
        if (CHECK_OK(ek_malloc_device(dev, &whole, total)))
            CHECK_OK(ek_free_device(dev, whole));
    }
    CHECK_OK(ekt_close(dev));
}

static void test_fragmentation(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 1 * MIB, EK_COHERENCE_DEFAULT));
    const size_t total = STATS(dev).total;
    enum { N = 16 };
    const size_t bs = total / N; /* 64 KiB */
    ek_mem_t m[N];
    for (int i = 0; i < N; i++)
        REQUIRE_OK(ek_malloc_device(dev, &m[i], bs));
    for (int i = 0; i < N; i += 2)
        CHECK_OK(ek_free_device(dev, m[i]));
    ek_heap_stats_t st = STATS(dev);
    CHECK(st.free == total / 2);
    /* 16 blocks filling an empty heap sit side by side: every other one freed leaves 64 KiB holes */
    CHECK(st.largest_free == bs);
    ek_mem_t x;
    CHECK_STATUS(ek_malloc_device(dev, &x, 2 * bs), EK_ERR_OUT_OF_MEMORY); /* enough bytes, no block */
    CHECK(ek_last_error()[0] != '\0');
    CHECK_STATS_SAME(dev, st);
    CHECK_STATUS(ek_malloc_device(dev, &x, st.largest_free + 1), EK_ERR_OUT_OF_MEMORY);
    CHECK_STATS_SAME(dev, st);
    /* largest_free is exactly what one allocation can get */
    if (CHECK_OK(ek_malloc_device(dev, &x, st.largest_free))) {
        ek_heap_stats_t st2 = STATS(dev);
        CHECK(st2.used == st.used + st.largest_free);
        CHECK_OK(ek_free_device(dev, x));
    }
    for (int i = 1; i < N; i += 2)
        CHECK_OK(ek_free_device(dev, m[i]));
    st = STATS(dev);
    CHECK(st.used == 0 && st.largest_free == total);
    CHECK_OK(ekt_close(dev));
}

/* Heap sizes that are not a multiple of the alignment, and tiny heaps: the stats stay
 * self-consistent and largest_free is exactly what one allocation can get. */
static void test_odd_heap_sizes(void)
{
    const size_t heaps[] = {1000, 64, 4096 + 1, 100000};
    for (size_t i = 0; i < sizeof heaps / sizeof heaps[0]; i++) {
        ek_dev_t dev;
        REQUIRE_OK(ekt_open(&dev, 0, heaps[i], EK_COHERENCE_DEFAULT));
        ek_heap_stats_t st = STATS(dev);
        printf("    heap_size %zu: total %zu, largest_free %zu\n", heaps[i], st.total, st.largest_free);
        CHECK(st.total >= st.largest_free && st.free == st.total && st.used == 0);
        CHECK(st.largest_free >= heaps[i] / st.alignment * st.alignment);
        ek_mem_t m;
        CHECK_STATUS(ek_malloc_device(dev, &m, st.largest_free + 1), EK_ERR_OUT_OF_MEMORY);
        CHECK_STATS_SAME(dev, st);
        if (CHECK_OK(ek_malloc_device(dev, &m, st.largest_free))) {
            uint8_t *buf = malloc(st.largest_free);
            if (buf) {
                ekt_fill(buf, st.largest_free, 5);
                CHECK_OK(ek_memcpy_s2d(dev, m, buf));
                memset(buf, 0, st.largest_free);
                CHECK_OK(ek_memcpy_d2s(dev, buf, m));
                CHECK(ekt_mismatch(buf, st.largest_free, 5) == (size_t)-1);
                free(buf);
            }
            CHECK(STATS(dev).largest_free < st.alignment);
            CHECK_OK(ek_free_device(dev, m));
        }
        CHECK_OK(ekt_close(dev));
    }
}

/* --- randomized ------------------------------------------------------------------------------ */

static uint64_t rng_state;
static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

struct live {
    ek_mem_t mem;
    size_t size;
    uint32_t seed;
};

static int verify_block(ek_dev_t dev, const struct live *b, uint8_t *scratch)
{
    memset(scratch, 0, b->size);
    if (!CHECK_OK(ek_memcpy_d2s(dev, scratch, b->mem)))
        return 0;
    size_t bad = ekt_mismatch(scratch, b->size, b->seed);
    if (bad != (size_t)-1) {
        printf("    block mem=%llu size=%zu: byte %zu corrupted\n", (unsigned long long)b->mem.id, b->size, bad);
        return 0;
    }
    return 1;
}

static void test_randomized(void)
{
    enum { OPS = 4000, MAXLIVE = 160 };
    const size_t heap = 2 * MIB, maxsz = 256 * KIB;
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, heap, EK_COHERENCE_DEFAULT));
    const size_t al = STATS(dev).alignment;
    static struct live live[MAXLIVE];
    size_t nlive = 0, used = 0, peak = 0;
    uint8_t *src = malloc(maxsz), *scratch = malloc(maxsz);
    REQUIRE(src && scratch);
    rng_state = 0x1234567ull;
    int corrupt = 0, ooms = 0, allocs = 0;

    for (int op = 0; op < OPS && !corrupt; op++) {
        int do_alloc = nlive == 0 || (nlive < MAXLIVE && rnd() % 100 < 55);
        if (do_alloc) {
            uint32_t r = rnd() % 100;
            size_t size = r < 50 ? 1 + rnd() % 256 : r < 90 ? 1 + rnd() % (16 * KIB) : 1 + rnd() % maxsz;
            ek_heap_stats_t before = STATS(dev);
            ek_mem_t m;
            ek_status_t s = ek_malloc_device(dev, &m, size);
            if (ekt_round(size, al) <= before.largest_free) {
                /* largest_free promises a block of that size */
                if (!CHECK_OK(s)) {
                    printf("    op %d: malloc(%zu) failed with largest_free=%zu\n", op, size, before.largest_free);
                    break;
                }
            } else {
                if (!CHECK_STATUS(s, EK_ERR_OUT_OF_MEMORY)) {
                    printf("    op %d: malloc(%zu) with largest_free=%zu\n", op, size, before.largest_free);
                    if (s == EK_OK)
                        ek_free_device(dev, m);
                    break;
                }
                CHECK_STATS_SAME(dev, before);
                ooms++;
                continue;
            }
            allocs++;
            struct live *b = &live[nlive++];
            b->mem = m;
            b->size = size;
            b->seed = (uint32_t)op * 7919u + 1;
            ekt_fill(src, size, b->seed);
            CHECK_OK(ek_memcpy_s2d(dev, m, src));
            used += ekt_round(size, al);
            if (used > peak)
                peak = used;
        } else {
            size_t i = rnd() % nlive;
            if (!verify_block(dev, &live[i], scratch))
                corrupt = 1;
            CHECK_OK(ek_free_device(dev, live[i].mem));
            used -= ekt_round(live[i].size, al);
            live[i] = live[--nlive];
        }
        ek_heap_stats_t st = STATS(dev);
        if (st.used != used || st.allocations != nlive || st.free != st.total - st.used || st.peak != peak ||
            st.largest_free > st.free || st.total != heap) {
            printf("    op %d: stats used=%zu (want %zu) allocations=%zu (want %zu) free=%zu peak=%zu (want %zu) "
                   "largest_free=%zu total=%zu\n",
                   op, st.used, used, st.allocations, nlive, st.free, st.peak, peak, st.largest_free, st.total);
            ekt_report_failure(__FILE__, __LINE__, "heap statistics are inconsistent");
            break;
        }
        if (op % 500 == 499)
            for (size_t i = 0; i < nlive && !corrupt; i++)
                corrupt |= !verify_block(dev, &live[i], scratch);
    }
    CHECK(!corrupt);
    CHECK(ooms > 0 && allocs > 1000); /* the run did exercise both paths */
    printf("    %d allocations, %d out-of-memory, %zu live at the end\n", allocs, ooms, nlive);

    /* every live block still holds its own pattern: no two blocks overlap */
    for (size_t i = 0; i < nlive; i++)
        CHECK(verify_block(dev, &live[i], scratch));
    for (size_t i = 0; i < nlive; i++)
        CHECK_OK(ek_free_device(dev, live[i].mem));
    ek_heap_stats_t st = STATS(dev);
    CHECK(st.used == 0 && st.allocations == 0 && st.largest_free == st.total);
    ek_mem_t whole;
    if (CHECK_OK(ek_malloc_device(dev, &whole, heap)))
        CHECK_OK(ek_free_device(dev, whole));
    free(src);
    free(scratch);
    CHECK_OK(ekt_close(dev));
}

int main(void)
{
    ekt_init();
    RUN(test_stats);
    RUN(test_coalescing_abc);
    RUN(test_coalescing_any_order);
    RUN(test_fragmentation);
    RUN(test_odd_heap_sizes);
    RUN(test_randomized);
    return ek_test_summary();
}
