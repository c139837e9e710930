/* Device memory: allocation, host<->device and device<->device copies, mapping, cache maintenance.
 * Every entry point validates its handles and ranges before touching a byte; copies hold the
 * device lock shared (they run in parallel), allocation, free and mapping hold it exclusive. */
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static uint8_t *device_address(struct ek_device *device, const struct ek_mem_rec *mem) {
    return device->pool.base + mem->offset;
}

/* Find `mem` on `device`, which the caller has locked. `freeing`: a freed `mem` is a double free. */
static ek_status_t find_memory(const struct ek_device *device, ek_mem_t mem, bool freeing, struct ek_mem_rec **rec) {
    *rec = NULL;
    void *obj;
    int owner;
    ek_status_t status;
    if (EK_IS_REMOTE(mem.id)) {
        /* A remote device's memory (remote_client.c), unless the handle is no memory at all. */
        if ((status = ek_handle_lookup(mem.id, EK_HANDLE_MEMORY | EK_HANDLE_REMOTE, freeing, NULL, NULL)) != EK_OK)
            return status;
        return ek_fail(EK_ERR_DEVICE_MISMATCH, "memory 0x%016" PRIx64 " belongs to a remote device, but this call "
                       "works on local device %d; copy between devices through the host", mem.id, device->index);
    }
    if ((status = ek_handle_lookup(mem.id, EK_HANDLE_MEMORY, freeing, &obj, &owner)) != EK_OK)
        return status;
    if (owner != device->index)
        return ek_fail(EK_ERR_DEVICE_MISMATCH, "memory 0x%016" PRIx64 " belongs to device %d, but this call works "
                       "on device %d; copy between devices through the host", mem.id, owner, device->index);
    *rec = obj;
    return EK_OK;
}

/* Lock the device of `dev` and find `mem` on it. */
static ek_status_t lock_memory(ek_dev_t dev, ek_mem_t mem, bool exclusive, bool freeing,
                               struct ek_device **device, struct ek_mem_rec **rec) {
    ek_status_t status = ek_device_lock(dev, exclusive, device);
    if (status == EK_OK && (status = find_memory(*device, mem, freeing, rec)) != EK_OK)
        ek_device_unlock(*device);
    return status;
}

static ek_status_t check_range(const struct ek_mem_rec *mem, size_t offset, size_t size, const char *call) {
    if (size == 0)
        return ek_fail(EK_ERR_INVALID_ARG, "%s: size is 0; give at least one byte", call);
    if (offset > mem->size || size > mem->size - offset)
        return ek_fail(EK_ERR_OUT_OF_RANGE, "%s: %zu byte%s at offset %zu go%s past the end of memory 0x%016" PRIx64
                       " (%zu bytes)", call, size, size == 1 ? "" : "s", offset, size == 1 ? "es" : "",
                       mem->handle, mem->size);
    return EK_OK;
}

ek_status_t ek_malloc_device(ek_dev_t dev, ek_mem_t *mem, size_t size) {
    if (!mem)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_malloc_device: mem is NULL");
    if (size == 0)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_malloc_device: size is 0; give at least one byte");
    if (EK_IS_REMOTE(dev.id))
        return ek_rc_malloc(dev, mem, size);
    struct ek_device *device;
    ek_status_t status = ek_device_lock(dev, true, &device);
    if (status != EK_OK)
        return status;
    /* The handle first: if the table cannot grow, nothing has touched the heap (not even its peak).
     * Nobody can use the handle before we return: every use takes the device lock we hold. */
    struct ek_mem_rec *rec = calloc(1, sizeof *rec);
    if (rec)
        rec->handle = ek_handle_new(EK_HANDLE_MEMORY, rec, device->index);
    if (!rec || !rec->handle) {
        free(rec);
        ek_device_unlock(device);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "ek_malloc_device: no host memory for another memory handle");
    }
    struct ek_block *block = ek_heap_alloc(device->heap, size);
    if (!block) {
        ek_heap_stats_t stats;
        ek_heap_stats(device->heap, &stats);
        ek_handle_retire(rec->handle, EK_HANDLE_MEMORY);
        free(rec);
        ek_device_unlock(device);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "ek_malloc_device: no block of %zu bytes on device %d (heap %zu bytes, "
                       "%zu free, largest free block %zu)", size, device->index, stats.total, stats.free,
                       stats.largest_free);
    }
    rec->block = block;
    rec->offset = ek_block_offset(block);
    rec->size = size;
    rec->next = device->mems;
    if (rec->next)
        rec->next->prev = rec;
    device->mems = rec;
    ek_device_unlock(device);
    mem->id = rec->handle;
    return EK_OK;
}

ek_status_t ek_free_device(ek_dev_t dev, ek_mem_t mem) {
    if (EK_IS_REMOTE(dev.id))
        return ek_rc_free(dev, mem);
    struct ek_device *device;
    struct ek_mem_rec *rec;
    ek_status_t status = lock_memory(dev, mem, true, true, &device, &rec);
    if (status != EK_OK)
        return status;
    if (rec->pool_block) {
        ek_device_unlock(device);
        return ek_fail(EK_ERR_BUSY, "ek_free_device: memory 0x%016" PRIx64 " is the block of an allocator pool "
                       "(ek_allocator_create_pool): give its parts back with ek_allocator_free, and the block goes "
                       "with ek_allocator_destroy", mem.id);
    }
    if (rec->map_count)
        ek_coh_unmap(device, rec, "ek_free_device");
    ek_handle_retire(rec->handle, EK_HANDLE_MEMORY);
    if (rec->prev)
        rec->prev->next = rec->next;
    else
        device->mems = rec->next;
    if (rec->next)
        rec->next->prev = rec->prev;
    ek_heap_free(device->heap, rec->block);
    free(rec);
    ek_device_unlock(device);
    return EK_OK;
}

ek_status_t ek_mem_check_block(ek_dev_t dev, ek_mem_t mem, size_t offset, size_t size) {
    struct ek_device *device;
    ek_status_t status = ek_device_lock(dev, false, &device);
    if (status != EK_OK)
        return status;
    void *obj;
    int owner;
    if (EK_IS_REMOTE(mem.id) || (status = ek_handle_get(mem.id, EK_HANDLE_MEMORY, &obj, &owner)) != EK_OK) {
        status = ek_fail(EK_IS_REMOTE(mem.id) ? EK_ERR_DEVICE_MISMATCH : status, "memory 0x%016" PRIx64 " is not a "
                         "live memory of device %d", mem.id, device->index);
    } else if (owner != device->index) {
        status = ek_fail(EK_ERR_DEVICE_MISMATCH, "memory 0x%016" PRIx64 " is on device %d, the runtime on device %d",
                         mem.id, owner, device->index);
    } else if (offset % EK_CACHE_LINE) {
        status = ek_fail(EK_ERR_INVALID_ARG, "offset %zu is not a multiple of %d", offset, EK_CACHE_LINE);
    } else if (offset > ((struct ek_mem_rec *)obj)->size || size > ((struct ek_mem_rec *)obj)->size - offset) {
        status = ek_fail(EK_ERR_OUT_OF_RANGE, "%zu bytes at offset %zu go past the end of memory 0x%016" PRIx64
                         " (%zu bytes)", size, offset, mem.id, ((struct ek_mem_rec *)obj)->size);
    }
    ek_device_unlock(device);
    return status;
}

ek_status_t ek_mem_mark_pool(ek_dev_t dev, ek_mem_t mem, bool pool) {
    struct ek_device *device;
    struct ek_mem_rec *rec;
    ek_status_t status = lock_memory(dev, mem, true, false, &device, &rec);
    if (status != EK_OK)
        return status;
    rec->pool_block = pool;
    ek_device_unlock(device);
    return EK_OK;
}

ek_status_t ek_mem_size(ek_mem_t mem, size_t *size) {
    if (!size)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_mem_size: size is NULL");
    if (EK_IS_REMOTE(mem.id))
        return ek_rc_mem_size(mem, size);
    int owner;
    ek_status_t status = ek_handle_get(mem.id, EK_HANDLE_MEMORY, NULL, &owner);
    if (status != EK_OK)
        return status;
    struct ek_device *device = ek_device_at(owner);
    pthread_rwlock_rdlock(&device->lock);
    void *obj;
    if ((status = ek_handle_get(mem.id, EK_HANDLE_MEMORY, &obj, NULL)) == EK_OK)
        *size = ((struct ek_mem_rec *)obj)->size;
    ek_device_unlock(device);
    return status;
}

/* ---- copies ---- */

/* Host <-> device. `whole`: the full memory (size is ignored). `host` is only read when to_device. */
static ek_status_t copy_host(ek_dev_t dev, ek_mem_t mem, void *host, size_t size, size_t offset, bool whole,
                             bool to_device, const char *call) {
    if (!host)
        return ek_fail(EK_ERR_INVALID_ARG, "%s: %s is NULL", call, to_device ? "src" : "dst");
    if (EK_IS_REMOTE(dev.id))
        return ek_rc_copy_host(dev, mem, host, size, offset, whole, to_device, call);
    struct ek_device *device;
    struct ek_mem_rec *rec;
    ek_status_t status = lock_memory(dev, mem, false, false, &device, &rec);
    if (status != EK_OK)
        return status;
    if (whole)
        size = rec->size;
    if ((status = check_range(rec, offset, size, call)) == EK_OK) {
        uint8_t *bytes = device_address(device, rec) + offset;
        /* memmove: the host buffer may be this memory's own mapping. */
        if (to_device) {
            memmove(bytes, host, size);
            ek_coh_device_wrote(device, rec, offset, size);
        } else {
            ek_coh_device_read(device, rec, offset, size, call);
            memmove(host, bytes, size);
        }
    }
    ek_device_unlock(device);
    return status;
}

ek_status_t ek_memcpy_s2d(ek_dev_t dev, ek_mem_t dst, const void *src) {
    return copy_host(dev, dst, (void *)src, 0, 0, true, true, "ek_memcpy_s2d");
}
ek_status_t ek_memcpy_s2d_partial(ek_dev_t dev, ek_mem_t dst, const void *src, size_t size) {
    return copy_host(dev, dst, (void *)src, size, 0, false, true, "ek_memcpy_s2d_partial");
}
ek_status_t ek_memcpy_s2d_partial_offset(ek_dev_t dev, ek_mem_t dst, const void *src, size_t size, size_t offset) {
    return copy_host(dev, dst, (void *)src, size, offset, false, true, "ek_memcpy_s2d_partial_offset");
}
ek_status_t ek_memcpy_d2s(ek_dev_t dev, void *dst, ek_mem_t src) {
    return copy_host(dev, src, dst, 0, 0, true, false, "ek_memcpy_d2s");
}
ek_status_t ek_memcpy_d2s_partial(ek_dev_t dev, void *dst, ek_mem_t src, size_t size) {
    return copy_host(dev, src, dst, size, 0, false, false, "ek_memcpy_d2s_partial");
}
ek_status_t ek_memcpy_d2s_partial_offset(ek_dev_t dev, void *dst, ek_mem_t src, size_t size, size_t offset) {
    return copy_host(dev, src, dst, size, offset, false, false, "ek_memcpy_d2s_partial_offset");
}

ek_status_t ek_memcpy_d2d(ek_dev_t dev, ek_mem_t dst, size_t dst_offset, ek_mem_t src, size_t src_offset,
                          size_t size) {
    if (EK_IS_REMOTE(dev.id))
        return ek_rc_memcpy_d2d(dev, dst, dst_offset, src, src_offset, size);
    struct ek_device *device;
    struct ek_mem_rec *to;
    ek_status_t status = lock_memory(dev, dst, false, false, &device, &to);
    if (status != EK_OK)
        return status;
    struct ek_mem_rec *from;
    if ((status = find_memory(device, src, false, &from)) == EK_OK &&
        (status = check_range(from, src_offset, size, "ek_memcpy_d2d (source)")) == EK_OK &&
        (status = check_range(to, dst_offset, size, "ek_memcpy_d2d (destination)")) == EK_OK) {
        ek_coh_device_read(device, from, src_offset, size, "ek_memcpy_d2d");
        memmove(device_address(device, to) + dst_offset, device_address(device, from) + src_offset, size);
        ek_coh_device_wrote(device, to, dst_offset, size);
    }
    ek_device_unlock(device);
    return status;
}

/* ---- mapping and cache maintenance ---- */

ek_status_t ek_mem_mmap(ek_dev_t dev, ek_mem_t mem, void **addr) {
    if (!addr)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_mem_mmap: addr is NULL");
    if (EK_IS_REMOTE(dev.id))
        return ek_rc_mmap(dev, mem, addr);
    struct ek_device *device;
    struct ek_mem_rec *rec;
    ek_status_t status = lock_memory(dev, mem, true, false, &device, &rec);
    if (status != EK_OK)
        return status;
    if (rec->map_count == INT_MAX)
        status = ek_fail(EK_ERR_BUSY, "ek_mem_mmap: memory 0x%016" PRIx64 " is mapped %d times already", mem.id,
                         INT_MAX);
    else if (device->coherence == EK_COHERENCE_STRICT && rec->map_count == 0)
        status = ek_coh_map(device, rec);
    if (status == EK_OK) {
        rec->map_count++;
        *addr = rec->shadow ? ek_coh_cpu_address(rec) : device_address(device, rec);
    }
    ek_device_unlock(device);
    return status;
}

ek_status_t ek_mem_unmap(ek_dev_t dev, ek_mem_t mem) {
    if (EK_IS_REMOTE(dev.id))
        return ek_rc_unmap(dev, mem);
    struct ek_device *device;
    struct ek_mem_rec *rec;
    ek_status_t status = lock_memory(dev, mem, true, false, &device, &rec);
    if (status != EK_OK)
        return status;
    if (rec->map_count == 0)
        status = ek_fail(EK_ERR_NOT_MAPPED, "ek_mem_unmap: memory 0x%016" PRIx64 " is not mapped", mem.id);
    else if (--rec->map_count == 0)
        ek_coh_unmap(device, rec, "ek_mem_unmap");
    ek_device_unlock(device);
    return status;
}

static ek_status_t sync_range(ek_dev_t dev, ek_mem_t mem, size_t offset, size_t size, bool whole, bool to_device,
                              const char *call) {
    if (EK_IS_REMOTE(dev.id))
        return ek_rc_sync_range(dev, mem, offset, size, whole, to_device, call);
    struct ek_device *device;
    struct ek_mem_rec *rec;
    ek_status_t status = lock_memory(dev, mem, false, false, &device, &rec);
    if (status != EK_OK)
        return status;
    if (whole)
        size = rec->size;
    if ((status = check_range(rec, offset, size, call)) == EK_OK) {
        uint8_t *addr = (rec->shadow ? (uint8_t *)ek_coh_cpu_address(rec) : device_address(device, rec)) + offset;
        if (to_device) {
            ek_cache_clean(addr, size);
            ek_coh_flush(device, rec, offset, size);
        } else {
            ek_coh_invalidate(device, rec, offset, size);
            ek_cache_clean_invalidate(addr, size);
        }
        status = ek_pool_sync(&device->pool, to_device);
    }
    ek_device_unlock(device);
    return status;
}

ek_status_t ek_mem_flush(ek_dev_t dev, ek_mem_t mem) {
    return sync_range(dev, mem, 0, 0, true, true, "ek_mem_flush");
}
ek_status_t ek_mem_flush_partial(ek_dev_t dev, ek_mem_t mem, size_t offset, size_t size) {
    return sync_range(dev, mem, offset, size, false, true, "ek_mem_flush_partial");
}
ek_status_t ek_mem_invalidate(ek_dev_t dev, ek_mem_t mem) {
    return sync_range(dev, mem, 0, 0, true, false, "ek_mem_invalidate");
}
ek_status_t ek_mem_invalidate_partial(ek_dev_t dev, ek_mem_t mem, size_t offset, size_t size) {
    return sync_range(dev, mem, offset, size, false, false, "ek_mem_invalidate_partial");
}
