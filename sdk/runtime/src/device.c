/* Devices: the process-wide table, configuration from the environment, open/close, statistics. */
#include <ctype.h>
#include <stdio.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define DEFAULT_HEAP_SIZE ((size_t)512 << 20)
#define HEAP_ALIGNMENT ((size_t)64)

static struct ek_device devices[EK_MAX_DEVICES];
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int device_count;
static char device_count_error[160]; /* set when EDGEKIT_DEVICES is malformed */

static void init_devices(void) {
    /* Copies take the lock shared and may run back to back from many threads: prefer writers, so
     * malloc/free/map/close are not starved (glibc's default prefers readers). */
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    for (int i = 0; i < EK_MAX_DEVICES; i++) {
        pthread_rwlock_init(&devices[i].lock, &attr);
        pthread_mutex_init(&devices[i].coh_lock, NULL);
        devices[i].index = i;
    }
    pthread_rwlockattr_destroy(&attr);
    device_count = 1;
    const char *env = getenv("EDGEKIT_DEVICES");
    if (env && *env) {
        char *end;
        errno = 0;
        long n = strtol(env, &end, 10);
        if (errno || *end || n < 1 || n > EK_MAX_DEVICES)
            snprintf(device_count_error, sizeof device_count_error,
                     "EDGEKIT_DEVICES='%.40s' is not a whole number from 1 to %d", env, EK_MAX_DEVICES);
        else
            device_count = (int)n;
    }
}

static ek_status_t check_device_count(void) {
    pthread_once(&init_once, init_devices);
    return device_count_error[0] ? ek_fail(EK_ERR_INVALID_ARG, "%s", device_count_error) : EK_OK;
}

ek_status_t ek_dev_count(int *count) {
    if (!count)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_dev_count: count is NULL");
    ek_status_t status = check_device_count();
    if (status == EK_OK)
        *count = device_count;
    return status;
}

/* "512M", "1G", "65536", "64KiB" -> bytes (> 0). */
static bool parse_size(const char *text, size_t *out) {
    char *end;
    errno = 0;
    unsigned long long n = strtoull(text, &end, 10);
    if (errno || end == text || *text == '-')
        return false;
    unsigned shift = 0;
    switch (toupper((unsigned char)*end)) {
    case 'K': shift = 10; end++; break;
    case 'M': shift = 20; end++; break;
    case 'G': shift = 30; end++; break;
    default: break;
    }
    if (shift && (end[0] == 'i' || end[0] == 'I'))
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end || n == 0 || n > (SIZE_MAX >> 1) >> shift)
        return false;
    *out = (size_t)n << shift;
    return true;
}

/* Fill the DEFAULT fields of `config` from the environment, then the built-in defaults. */
static ek_status_t resolve_config(ek_dev_config_t *config) {
    const char *env;
    if (config->coherence == EK_COHERENCE_DEFAULT) {
        env = getenv("EDGEKIT_COHERENCE");
        if (!env || !*env || strcmp(env, "coherent") == 0)
            config->coherence = EK_COHERENCE_COHERENT;
        else if (strcmp(env, "strict") == 0)
            config->coherence = EK_COHERENCE_STRICT;
        else
            return ek_fail(EK_ERR_INVALID_ARG, "EDGEKIT_COHERENCE='%.40s': expected 'coherent' or 'strict'", env);
    } else if (config->coherence != EK_COHERENCE_COHERENT && config->coherence != EK_COHERENCE_STRICT) {
        return ek_fail(EK_ERR_INVALID_ARG, "unknown coherence mode %d", (int)config->coherence);
    }
    if (config->backing == EK_BACKING_DEFAULT) {
        env = getenv("EDGEKIT_BACKING");
        if (!env || !*env || strcmp(env, "auto") == 0)
            config->backing = EK_BACKING_DEFAULT;
        else if (strcmp(env, "memfd") == 0)
            config->backing = EK_BACKING_MEMFD;
        else if (strcmp(env, "dmabuf") == 0)
            config->backing = EK_BACKING_DMABUF;
        else if (strcmp(env, "anonymous") == 0)
            config->backing = EK_BACKING_ANONYMOUS;
        else
            return ek_fail(EK_ERR_INVALID_ARG,
                           "EDGEKIT_BACKING='%.40s': expected 'auto', 'memfd', 'dmabuf' or 'anonymous'", env);
    } else if ((unsigned)config->backing > EK_BACKING_ANONYMOUS) {
        return ek_fail(EK_ERR_INVALID_ARG, "unknown backing kind %d", (int)config->backing);
    }
    if (config->heap_size == 0) {
        env = getenv("EDGEKIT_HEAP_SIZE");
        config->heap_size = DEFAULT_HEAP_SIZE;
        if (env && *env && !parse_size(env, &config->heap_size))
            return ek_fail(EK_ERR_INVALID_ARG, "EDGEKIT_HEAP_SIZE='%.40s': expected bytes like 268435456 or 256M",
                           env);
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (config->heap_size > (SIZE_MAX >> 1))
        return ek_fail(EK_ERR_INVALID_ARG, "heap size %zu is too large", config->heap_size);
    config->heap_size = (config->heap_size + page - 1) / page * page;
    return EK_OK;
}

static ek_status_t open_device(struct ek_device *device, const ek_dev_config_t *config) {
    /* One spare page past the heap: vectorised kernels (XNNPACK) may read up to 16 bytes past the
     * end of an input, which must stay mapped even for the last block of the heap. */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    ek_status_t status = ek_pool_create(&device->pool, config->backing, config->heap_size + page);
    if (status != EK_OK)
        return status;
    device->heap = ek_heap_create(config->heap_size, HEAP_ALIGNMENT);
    if (!device->heap) {
        ek_pool_destroy(&device->pool);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for the heap bookkeeping of device %d",
                       device->index);
    }
    device->heap_size = config->heap_size;
    device->coherence = config->coherence;
    device->violation_count = 0;
    return EK_OK;
}

ek_status_t ek_dev_request(ek_dev_t *handle, int id) { return ek_dev_request_ex(handle, id, NULL); }

ek_status_t ek_dev_request_ex(ek_dev_t *handle, int id, const ek_dev_config_t *config) {
    if (!handle)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_dev_request: handle is NULL");
    ek_status_t status = check_device_count();
    if (status != EK_OK)
        return status;
    if (id < 0 || id >= device_count)
        return ek_fail(EK_ERR_NO_DEVICE, "device id %d is out of range: this process has %d device%s (ids 0..%d; "
                       "set EDGEKIT_DEVICES for more)", id, device_count, device_count == 1 ? "" : "s",
                       device_count - 1);
    ek_dev_config_t wanted = config ? *config : (ek_dev_config_t){0};
    ek_dev_config_t resolved = wanted;
    if ((status = resolve_config(&resolved)) != EK_OK)
        return status;

    struct ek_device *device = &devices[id];
    pthread_rwlock_wrlock(&device->lock);
    if (device->open_handles > 0) {
        if ((wanted.coherence && wanted.coherence != device->coherence) ||
            (wanted.heap_size && resolved.heap_size != device->heap_size) ||
            (wanted.backing && wanted.backing != device->pool.kind)) {
            pthread_rwlock_unlock(&device->lock);
            return ek_fail(EK_ERR_BUSY, "device %d is already open with another configuration (coherence %s, "
                           "heap %zu bytes); close its other handles first", id,
                           device->coherence == EK_COHERENCE_STRICT ? "strict" : "coherent", device->heap_size);
        }
    } else if ((status = open_device(device, &resolved)) != EK_OK) {
        pthread_rwlock_unlock(&device->lock);
        return status;
    }
    uint64_t h = ek_handle_new(EK_HANDLE_DEVICE, device, id);
    if (!h) {
        if (device->open_handles == 0)
            ek_device_release_memory(device);
        pthread_rwlock_unlock(&device->lock);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no room for another handle");
    }
    device->open_handles++;
    pthread_rwlock_unlock(&device->lock);
    handle->id = h;
    return EK_OK;
}

struct ek_device *ek_device_at(int index) { return &devices[index]; }

ek_status_t ek_device_lock(ek_dev_t handle, bool exclusive, struct ek_device **out) {
    int index;
    ek_status_t status = ek_handle_get(handle.id, EK_HANDLE_DEVICE, NULL, &index);
    if (status != EK_OK)
        return status;
    struct ek_device *device = &devices[index];
    if (exclusive)
        pthread_rwlock_wrlock(&device->lock);
    else
        pthread_rwlock_rdlock(&device->lock);
    /* The handle may have been freed while we waited for the lock. */
    if ((status = ek_handle_get(handle.id, EK_HANDLE_DEVICE, NULL, NULL)) != EK_OK) {
        pthread_rwlock_unlock(&device->lock);
        return status;
    }
    *out = device;
    return EK_OK;
}

void ek_device_unlock(struct ek_device *device) { pthread_rwlock_unlock(&device->lock); }

void ek_device_release_memory(struct ek_device *device) {
    struct ek_mem_rec *mem = device->mems;
    while (mem) {
        struct ek_mem_rec *next = mem->next;
        ek_coh_unmap(device, mem, "ek_dev_free");
        ek_handle_retire(mem->handle, EK_HANDLE_MEMORY);
        free(mem);
        mem = next;
    }
    device->mems = NULL;
    ek_heap_destroy(device->heap);
    device->heap = NULL;
    ek_pool_destroy(&device->pool);
    free(device->violations);
    device->violations = NULL;
    device->violation_count = 0;
}

ek_status_t ek_dev_free(ek_dev_t handle) {
    if (EK_IS_REMOTE(handle.id))
        return ek_rc_dev_free(handle);
    int index;
    ek_status_t status = ek_handle_lookup(handle.id, EK_HANDLE_DEVICE, true, NULL, &index);
    if (status != EK_OK)
        return status;
    struct ek_device *device = &devices[index];
    pthread_rwlock_wrlock(&device->lock);
    status = ek_handle_retire(handle.id, EK_HANDLE_DEVICE);
    if (status == EK_OK && --device->open_handles == 0)
        ek_device_release_memory(device);
    pthread_rwlock_unlock(&device->lock);
    return status;
}

ek_status_t ek_dev_id(ek_dev_t handle, int *id) {
    if (!id)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_dev_id: id is NULL");
    if (EK_IS_REMOTE(handle.id))
        return ek_rc_dev_id(handle, id);
    return ek_handle_get(handle.id, EK_HANDLE_DEVICE, NULL, id);
}

ek_status_t ek_dev_heap_stats(ek_dev_t handle, ek_heap_stats_t *stats) {
    if (!stats)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_dev_heap_stats: stats is NULL");
    if (EK_IS_REMOTE(handle.id))
        return ek_rc_dev_heap_stats(handle, stats);
    struct ek_device *device;
    ek_status_t status = ek_device_lock(handle, false, &device);
    if (status != EK_OK)
        return status;
    ek_heap_stats(device->heap, stats);
    stats->coherence = device->coherence;
    stats->backing = device->pool.kind;
    ek_device_unlock(device);
    return EK_OK;
}

ek_status_t ek_dev_coherence_report(ek_dev_t handle, ek_coh_violation_t *out, size_t capacity, size_t *count) {
    if (!count || (capacity && !out))
        return ek_fail(EK_ERR_INVALID_ARG, "ek_dev_coherence_report: %s is NULL", count ? "out" : "count");
    if (EK_IS_REMOTE(handle.id))
        return ek_rc_dev_coherence_report(handle, out, capacity, count);
    struct ek_device *device;
    ek_status_t status = ek_device_lock(handle, false, &device);
    if (status != EK_OK)
        return status;
    pthread_mutex_lock(&device->coh_lock);
    /* A count above 0 means the array exists: violations are counted only once stored. */
    size_t kept = device->violation_count < EK_MAX_VIOLATIONS ? device->violation_count : EK_MAX_VIOLATIONS;
    if (kept > capacity)
        kept = capacity;
    if (kept)
        memcpy(out, device->violations, kept * sizeof *out);
    *count = device->violation_count;
    pthread_mutex_unlock(&device->coh_lock);
    ek_device_unlock(device);
    return EK_OK;
}

ek_status_t ek_dev_coherence_clear(ek_dev_t handle) {
    if (EK_IS_REMOTE(handle.id))
        return ek_rc_dev_coherence_clear(handle);
    struct ek_device *device;
    ek_status_t status = ek_device_lock(handle, false, &device);
    if (status != EK_OK)
        return status;
    pthread_mutex_lock(&device->coh_lock);
    device->violation_count = 0;
    pthread_mutex_unlock(&device->coh_lock);
    ek_device_unlock(device);
    return EK_OK;
}
