/* Allocators, the dynamic memory strategy: a caller's callbacks or a pool over one device block,
 * the statistics of each, and ek_rt_alloc / ek_rt_free, the one path every device allocation of a
 * runtime takes (engine.c's workspaces, runtime.c's outputs and staging copies).
 *
 * An allocator knows every block it gave out (a short list: a runtime allocates per execution
 * context, not per launch), so a block given back twice or never given out is an error, not a
 * corrupted pool, and destroying an allocator that is still in use is refused. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

#define ALLOC_ALIGN ((size_t)EK_CACHE_LINE) /* what ek_mem_check_block asks of an answer */

struct live_block {
    ek_mem_t mem;
    size_t offset, size;
    struct ek_block *block; /* a pool's; NULL for a custom allocator's */
    bool to_caller;         /* an output handed to the caller, who gives it back with ek_allocator_free */
    struct live_block *next;
};

struct ek_allocator_obj {
    uint64_t handle;
    pthread_mutex_t calls; /* a custom allocator's callbacks, one at a time */
    pthread_mutex_t lock;  /* the live list and the statistics; never held across a callback, which may
                              read the statistics */
    int users;             /* ek_allocator_free calls in progress (under registry_lock) */
    ek_allocator_ops_t ops; /* a custom allocator's; NULL functions for a pool */
    void *user_data;
    ek_dev_t dev;   /* a pool: its own device handle, so the block outlives the caller's */
    ek_mem_t block; /* a pool: the device block it hands out parts of */
    struct ek_heap *heap;
    struct live_block *live;
    ek_allocator_stats_t stats; /* .runtimes under registry_lock */
};

/* Creating a runtime with an allocator and destroying the allocator exclude each other here. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;

static ek_status_t lookup(ek_allocator_t handle, const char *call, struct ek_allocator_obj **out) {
    void *obj;
    ek_status_t status = ek_handle_get(handle.id, EK_HANDLE_ALLOCATOR, &obj, NULL);
    if (status != EK_OK) {
        char why[300];
        snprintf(why, sizeof why, "%s", ek_last_error());
        return ek_fail(status, "%s: %s", call, why);
    }
    *out = obj;
    return EK_OK;
}

static ek_status_t publish(struct ek_allocator_obj *a, ek_allocator_t *out) {
    pthread_mutex_init(&a->lock, NULL);
    pthread_mutex_init(&a->calls, NULL);
    if (!(a->handle = ek_handle_new(EK_HANDLE_ALLOCATOR, a, 0))) {
        pthread_mutex_destroy(&a->lock);
        pthread_mutex_destroy(&a->calls);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no room for another allocator handle");
    }
    out->id = a->handle;
    return EK_OK;
}

ek_status_t ek_allocator_create(ek_allocator_t *allocator, const ek_allocator_ops_t *ops, void *user_data) {
    if (!allocator || !ops || !ops->alloc || !ops->free)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_allocator_create: %s is NULL",
                       !allocator ? "allocator" : !ops ? "ops" : !ops->alloc ? "ops->alloc" : "ops->free");
    allocator->id = 0;
    struct ek_allocator_obj *a = calloc(1, sizeof *a);
    if (!a)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for an allocator");
    a->ops = *ops;
    a->user_data = user_data;
    ek_status_t status = publish(a, allocator);
    if (status != EK_OK)
        free(a);
    return status;
}

ek_status_t ek_allocator_create_pool(ek_allocator_t *allocator, ek_dev_t dev, size_t capacity) {
    if (!allocator)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_allocator_create_pool: allocator is NULL");
    allocator->id = 0;
    if (capacity == 0)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_allocator_create_pool: capacity is 0");
    if (EK_IS_REMOTE(dev.id))
        return ek_fail(EK_ERR_UNSUPPORTED, "ek_allocator_create_pool: device 0x%016" PRIx64 " is remote; allocators "
                       "are for local runtimes (a remote runtime allocates on the board)", dev.id);
    int id;
    ek_status_t status = ek_dev_id(dev, &id);
    if (status != EK_OK)
        return status;
    struct ek_allocator_obj *a = calloc(1, sizeof *a);
    if (!a)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for an allocator");
    if ((status = ek_dev_request(&a->dev, id)) != EK_OK) {
        free(a);
        return status;
    }
    if ((status = ek_malloc_device(a->dev, &a->block, capacity)) != EK_OK) {
        char why[300];
        snprintf(why, sizeof why, "%s", ek_last_error());
        ek_dev_free(a->dev);
        free(a);
        return ek_fail(status, "ek_allocator_create_pool: no %zu-byte block for the pool on device %d: %s", capacity,
                       id, why);
    }
    if ((status = ek_mem_mark_pool(a->dev, a->block, true)) != EK_OK ||
        !(a->heap = ek_heap_create(capacity, ALLOC_ALIGN))) {
        (void)ek_mem_mark_pool(a->dev, a->block, false);
        ek_free_device(a->dev, a->block);
        ek_dev_free(a->dev);
        free(a);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for an allocator");
    }
    a->stats.capacity = capacity;
    if ((status = publish(a, allocator)) != EK_OK) {
        ek_heap_destroy(a->heap);
        (void)ek_mem_mark_pool(a->dev, a->block, false);
        ek_free_device(a->dev, a->block);
        ek_dev_free(a->dev);
        free(a);
    }
    return status;
}

ek_status_t ek_allocator_destroy(ek_allocator_t handle) {
    pthread_mutex_lock(&registry_lock);
    void *obj;
    ek_status_t status = ek_handle_lookup(handle.id, EK_HANDLE_ALLOCATOR, true, &obj, NULL);
    if (status != EK_OK) {
        pthread_mutex_unlock(&registry_lock);
        return status;
    }
    struct ek_allocator_obj *a = obj;
    pthread_mutex_lock(&a->lock);
    int runtimes = a->stats.runtimes;
    size_t blocks = a->stats.live_blocks, bytes = a->stats.bytes_in_use;
    pthread_mutex_unlock(&a->lock);
    if (a->users && !runtimes && !blocks) {
        pthread_mutex_unlock(&registry_lock);
        return ek_fail(EK_ERR_BUSY, "ek_allocator_destroy: allocator 0x%016" PRIx64 " is giving a block back on "
                       "another thread", handle.id);
    }
    if (runtimes || blocks) {
        pthread_mutex_unlock(&registry_lock);
        if (runtimes)
            return ek_fail(EK_ERR_BUSY, "ek_allocator_destroy: allocator 0x%016" PRIx64 " is still used by %d "
                           "runtime%s (%zu block%s, %zu bytes); destroy %s first", handle.id, runtimes,
                           runtimes == 1 ? "" : "s", blocks, blocks == 1 ? "" : "s", bytes,
                           runtimes == 1 ? "it" : "them");
        return ek_fail(EK_ERR_BUSY, "ek_allocator_destroy: allocator 0x%016" PRIx64 " still has %zu live block%s "
                       "(%zu bytes): outputs of launches without user_mem; give them back with ek_allocator_free "
                       "first", handle.id, blocks, blocks == 1 ? "" : "s", bytes);
    }
    ek_handle_retire(handle.id, EK_HANDLE_ALLOCATOR);
    pthread_mutex_unlock(&registry_lock);
    if (a->heap) {
        ek_heap_destroy(a->heap);
        (void)ek_mem_mark_pool(a->dev, a->block, false);
        ek_free_device(a->dev, a->block);
        ek_dev_free(a->dev);
    }
    pthread_mutex_destroy(&a->lock);
    pthread_mutex_destroy(&a->calls);
    free(a);
    return EK_OK;
}

ek_status_t ek_allocator_stats(ek_allocator_t handle, ek_allocator_stats_t *stats) {
    if (!stats)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_allocator_stats: stats is NULL");
    struct ek_allocator_obj *a;
    pthread_mutex_lock(&registry_lock); /* no destroy meanwhile */
    ek_status_t status = lookup(handle, "ek_allocator_stats", &a);
    if (status == EK_OK) {
        pthread_mutex_lock(&a->lock);
        *stats = a->stats;
        pthread_mutex_unlock(&a->lock);
    }
    pthread_mutex_unlock(&registry_lock);
    return status;
}

/* ---- what runtimes call ---- */

ek_status_t ek_allocator_attach(ek_allocator_t handle, int device_index, struct ek_allocator_obj **out) {
    pthread_mutex_lock(&registry_lock);
    struct ek_allocator_obj *a;
    ek_status_t status = lookup(handle, "ek_rt_create: config.allocator", &a);
    if (status == EK_OK && a->heap) {
        int id = -1;
        (void)ek_dev_id(a->dev, &id);
        if (id != device_index)
            status = ek_fail(EK_ERR_DEVICE_MISMATCH, "ek_rt_create: config.allocator is a pool on device %d, the "
                             "runtime is on device %d", id, device_index);
    }
    if (status == EK_OK) {
        pthread_mutex_lock(&a->lock);
        a->stats.runtimes++;
        pthread_mutex_unlock(&a->lock);
        *out = a;
    }
    pthread_mutex_unlock(&registry_lock);
    return status;
}

void ek_allocator_detach(struct ek_allocator_obj *a) {
    if (!a)
        return;
    pthread_mutex_lock(&a->lock);
    a->stats.runtimes--;
    pthread_mutex_unlock(&a->lock);
}

/* A block from the pool (under `lock`) or the custom callbacks (under `calls` only). */
static ek_status_t take_block(struct ek_allocator_obj *a, ek_dev_t dev, size_t size, struct live_block *lb) {
    if (a->heap) {
        pthread_mutex_lock(&a->lock);
        lb->block = ek_heap_alloc(a->heap, size);
        ek_heap_stats_t hs;
        ek_heap_stats(a->heap, &hs);
        size_t in_use = a->stats.bytes_in_use;
        pthread_mutex_unlock(&a->lock);
        if (!lb->block)
            return ek_fail(EK_ERR_OUT_OF_MEMORY, "the pool allocator (%zu bytes, %zu in use, largest free block %zu) "
                           "has no room for %zu bytes", a->stats.capacity, in_use, hs.largest_free, size);
        lb->mem = a->block;
        lb->offset = ek_block_offset(lb->block);
        return EK_OK;
    }
    pthread_mutex_lock(&a->calls);
    ek_status_t status = a->ops.alloc(a->user_data, dev, size, ALLOC_ALIGN, &lb->mem, &lb->offset);
    if (status != EK_OK) {
        status = ek_fail(status > 0 && status < EK_STATUS_COUNT ? status : EK_ERR_OUT_OF_MEMORY,
                         "the allocator refused %zu bytes (%s)", size, ek_status_name(status));
    } else if (ek_mem_check_block(dev, lb->mem, lb->offset, size) != EK_OK) {
        char why[300];
        snprintf(why, sizeof why, "%s", ek_last_error());
        a->ops.free(a->user_data, dev, lb->mem, lb->offset, size); /* not ours to keep */
        status = ek_fail(EK_ERR_INVALID_ARG, "the allocator answered a request for %zu bytes with %s", size, why);
    }
    pthread_mutex_unlock(&a->calls);
    return status;
}

static ek_status_t allocator_alloc(struct ek_allocator_obj *a, ek_dev_t dev, size_t size, bool to_caller,
                                   ek_mem_t *mem, size_t *offset) {
    struct live_block *lb = calloc(1, sizeof *lb);
    if (!lb)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory to track an allocation");
    ek_status_t status = take_block(a, dev, size, lb);
    pthread_mutex_lock(&a->lock);
    if (status == EK_OK) {
        lb->size = size;
        lb->to_caller = to_caller;
        lb->next = a->live;
        a->live = lb;
        a->stats.allocations++;
        a->stats.live_blocks++;
        a->stats.bytes_in_use += size;
        if (a->stats.bytes_in_use > a->stats.peak_bytes)
            a->stats.peak_bytes = a->stats.bytes_in_use;
        *mem = lb->mem;
        *offset = lb->offset;
    } else {
        a->stats.failures++;
    }
    pthread_mutex_unlock(&a->lock);
    if (status != EK_OK)
        free(lb);
    return status;
}

/* Give a block back; EK_ERR_INVALID_ARG (nothing changed) for one this allocator has not given out.
 * It counts as live until the callback has taken it, so the allocator cannot be destroyed meanwhile. */
static ek_status_t allocator_give_back(struct ek_allocator_obj *a, ek_dev_t dev, ek_mem_t mem, size_t offset,
                                       bool from_caller) {
    pthread_mutex_lock(&a->lock);
    struct live_block **p = &a->live;
    while (*p && ((*p)->mem.id != mem.id || (*p)->offset != offset))
        p = &(*p)->next;
    struct live_block *lb = *p;
    if (!lb || (from_caller && !lb->to_caller)) {
        pthread_mutex_unlock(&a->lock);
        if (lb) /* a runtime's own block (a workspace, a staging copy): not the caller's to give back */
            return ek_fail(EK_ERR_INVALID_ARG, "memory 0x%016" PRIx64 " at offset %zu is a block a runtime of "
                           "allocator 0x%016" PRIx64 " uses itself, not an output it handed out", mem.id, offset,
                           a->handle);
        return ek_fail(EK_ERR_INVALID_ARG, "memory 0x%016" PRIx64 " at offset %zu is not a block allocator "
                       "0x%016" PRIx64 " gave out (or it was given back already)", mem.id, offset, a->handle);
    }
    *p = lb->next;
    if (lb->block)
        ek_heap_free(a->heap, lb->block);
    pthread_mutex_unlock(&a->lock);
    if (!lb->block) {
        pthread_mutex_lock(&a->calls);
        a->ops.free(a->user_data, dev, lb->mem, lb->offset, lb->size);
        pthread_mutex_unlock(&a->calls);
    }
    pthread_mutex_lock(&a->lock);
    a->stats.frees++;
    a->stats.live_blocks--;
    a->stats.bytes_in_use -= lb->size;
    pthread_mutex_unlock(&a->lock);
    free(lb);
    return EK_OK;
}

ek_status_t ek_allocator_free(ek_allocator_t handle, ek_mem_t mem, size_t offset) {
    struct ek_allocator_obj *a;
    pthread_mutex_lock(&registry_lock);
    ek_status_t status = lookup(handle, "ek_allocator_free", &a);
    if (status == EK_OK)
        a->users++; /* no destroy until this returns; the callback runs without the registry lock */
    pthread_mutex_unlock(&registry_lock);
    if (status != EK_OK)
        return status;
    /* A pool frees on its own device handle; a custom allocator is told the device of the memory. */
    ek_dev_t dev = a->dev;
    if (!a->heap) {
        int owner = -1;
        if (ek_handle_get(mem.id, EK_HANDLE_MEMORY, NULL, &owner) == EK_OK)
            (void)ek_dev_request(&dev, owner);
    }
    status = allocator_give_back(a, dev, mem, offset, true);
    if (!a->heap && dev.id)
        ek_dev_free(dev);
    pthread_mutex_lock(&registry_lock);
    a->users--;
    pthread_mutex_unlock(&registry_lock);
    return status;
}

ek_status_t ek_rt_alloc(struct ek_runtime *rt, size_t size, bool to_caller, ek_mem_t *mem, size_t *offset) {
    if (!rt->allocator) {
        *offset = 0;
        return ek_malloc_device(rt->dev, mem, size);
    }
    return allocator_alloc(rt->allocator, rt->dev, size, to_caller, mem, offset);
}

void ek_rt_free(struct ek_runtime *rt, ek_mem_t mem, size_t offset) {
    if (!rt->allocator)
        (void)ek_free_device(rt->dev, mem);
    else
        (void)allocator_give_back(rt->allocator, rt->dev, mem, offset, false);
}
