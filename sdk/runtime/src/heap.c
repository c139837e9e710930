/* The device-heap allocator. It manages offsets in [0, total) and keeps its bookkeeping in host
 * memory, never inside the pool (device memory may not be CPU-visible on a real SoC).
 *
 * Blocks tile the pool in address order (a doubly-linked list, for O(1) coalescing with both
 * neighbours on free). Free blocks also sit in one of 64 size classes, class k holding sizes in
 * [2^k, 2^(k+1)), with a bitmap of non-empty classes. An allocation takes the best fit in its own
 * class, else the first block of the next non-empty class (any block there is large enough), and
 * splits off the rest. */
#include <stdlib.h>

#include "internal.h"

#define CLASS_COUNT 64

struct ek_block {
    size_t offset, size;
    bool free;
    struct ek_block *prev, *next;           /* address order */
    struct ek_block *free_prev, *free_next; /* the size class, while free */
};

struct ek_heap {
    size_t total, alignment, used, peak, allocations;
    struct ek_block *first;
    struct ek_block *classes[CLASS_COUNT];
    uint64_t nonempty; /* bit k: classes[k] has a block */
};

static unsigned size_class(size_t size) {
    unsigned k = 0;
    while (size >>= 1)
        k++;
    return k;
}

static void class_insert(struct ek_heap *heap, struct ek_block *block) {
    unsigned k = size_class(block->size);
    block->free = true;
    block->free_prev = NULL;
    block->free_next = heap->classes[k];
    if (block->free_next)
        block->free_next->free_prev = block;
    heap->classes[k] = block;
    heap->nonempty |= (uint64_t)1 << k;
}

static void class_remove(struct ek_heap *heap, struct ek_block *block) {
    unsigned k = size_class(block->size);
    if (block->free_prev)
        block->free_prev->free_next = block->free_next;
    else
        heap->classes[k] = block->free_next;
    if (block->free_next)
        block->free_next->free_prev = block->free_prev;
    if (!heap->classes[k])
        heap->nonempty &= ~((uint64_t)1 << k);
    block->free = false;
}

struct ek_heap *ek_heap_create(size_t total, size_t alignment) {
    struct ek_heap *heap = calloc(1, sizeof *heap);
    struct ek_block *all = calloc(1, sizeof *all);
    if (!heap || !all || total < alignment) {
        free(heap);
        free(all);
        return NULL;
    }
    heap->total = total - total % alignment;
    heap->alignment = alignment;
    all->size = heap->total;
    heap->first = all;
    class_insert(heap, all);
    return heap;
}

void ek_heap_destroy(struct ek_heap *heap) {
    if (!heap)
        return;
    struct ek_block *block = heap->first;
    while (block) {
        struct ek_block *next = block->next;
        free(block);
        block = next;
    }
    free(heap);
}

static struct ek_block *find_fit(const struct ek_heap *heap, size_t size) {
    unsigned k = size_class(size);
    struct ek_block *best = NULL;
    for (struct ek_block *b = heap->classes[k]; b; b = b->free_next)
        if (b->size >= size && (!best || b->size < best->size))
            best = b;
    if (best || k + 1 >= CLASS_COUNT)
        return best;
    uint64_t larger = heap->nonempty & ~(((uint64_t)2 << k) - 1);
    return larger ? heap->classes[__builtin_ctzll(larger)] : NULL;
}

struct ek_block *ek_heap_alloc(struct ek_heap *heap, size_t size) {
    if (size == 0 || size > heap->total)
        return NULL;
    size = (size + heap->alignment - 1) / heap->alignment * heap->alignment;
    struct ek_block *block = find_fit(heap, size);
    if (!block)
        return NULL;
    if (block->size - size >= heap->alignment) {
        struct ek_block *rest = calloc(1, sizeof *rest);
        if (!rest)
            return NULL;
        class_remove(heap, block);
        rest->offset = block->offset + size;
        rest->size = block->size - size;
        rest->prev = block;
        rest->next = block->next;
        if (rest->next)
            rest->next->prev = rest;
        block->next = rest;
        block->size = size;
        class_insert(heap, rest);
    } else {
        class_remove(heap, block);
    }
    heap->used += block->size;
    heap->allocations++;
    if (heap->used > heap->peak)
        heap->peak = heap->used;
    return block;
}

/* Fold block->next into `block` (neither is in a size class at this point). */
static void merge_next(struct ek_block *block) {
    struct ek_block *next = block->next;
    block->size += next->size;
    block->next = next->next;
    if (block->next)
        block->next->prev = block;
    free(next);
}

void ek_heap_free(struct ek_heap *heap, struct ek_block *block) {
    heap->used -= block->size;
    heap->allocations--;
    if (block->next && block->next->free) {
        class_remove(heap, block->next);
        merge_next(block);
    }
    if (block->prev && block->prev->free) {
        block = block->prev;
        class_remove(heap, block);
        merge_next(block);
    }
    class_insert(heap, block);
}

size_t ek_block_offset(const struct ek_block *block) { return block->offset; }

void ek_heap_stats(const struct ek_heap *heap, ek_heap_stats_t *stats) {
    stats->total = heap->total;
    stats->used = heap->used;
    stats->peak = heap->peak;
    stats->free = heap->total - heap->used;
    stats->allocations = heap->allocations;
    stats->alignment = heap->alignment;
    stats->largest_free = 0;
    if (heap->nonempty) {
        unsigned top = 63u - (unsigned)__builtin_clzll(heap->nonempty);
        for (const struct ek_block *b = heap->classes[top]; b; b = b->free_next)
            if (b->size > stats->largest_free)
                stats->largest_free = b->size;
    }
}
