/* EdgeKit runtime: devices. A device owns a memory heap; several handles may hold it open. */
#ifndef EDGEKIT_DEVICE_H
#define EDGEKIT_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "edgekit/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The most devices a process can have (EDGEKIT_DEVICES may ask for 1 .. EK_MAX_DEVICES). */
#define EK_MAX_DEVICES 64

/* An open device. Handles are values checked on every call: a freed or forged handle is an
 * error (EK_ERR_FREED_HANDLE / EK_ERR_INVALID_HANDLE), never a crash. The zero handle is invalid. */
typedef struct ek_dev {
    uint64_t id;
} ek_dev_t;

/* How the CPU mapping of device memory relates to what the device sees. */
typedef enum ek_coherence {
    EK_COHERENCE_DEFAULT = 0,  /* EDGEKIT_COHERENCE from the environment, else coherent */
    EK_COHERENCE_COHERENT = 1, /* the CPU mapping is the device memory */
    EK_COHERENCE_STRICT = 2    /* a non-coherent SoC: the mapping is a CPU-cache shadow that only
                                  ek_mem_flush*() writes back and ek_mem_invalidate*() refreshes;
                                  misuse is recorded, see ek_dev_coherence_report() */
} ek_coherence_t;

/* How a device heap is backed. */
typedef enum ek_backing {
    EK_BACKING_DEFAULT = 0,   /* EDGEKIT_BACKING from the environment, else dma-buf heap when
                                 /dev/dma_heap/system exists, else memfd */
    EK_BACKING_MEMFD = 1,     /* memfd_create: shareable and mmap-able */
    EK_BACKING_DMABUF = 2,    /* a Linux dma-buf heap; flush/invalidate also issue DMA_BUF_IOCTL_SYNC */
    EK_BACKING_ANONYMOUS = 3  /* MAP_SHARED|MAP_ANONYMOUS, for kernels without memfd */
} ek_backing_t;

/* Settings applied when a device is first opened. Zero fields take the defaults: heap_size from
 * EDGEKIT_HEAP_SIZE (bytes, K/M/G suffixes allowed), else 512 MiB. */
typedef struct ek_dev_config {
    size_t heap_size;
    ek_coherence_t coherence;
    ek_backing_t backing;
} ek_dev_config_t;

/* The number of devices: EDGEKIT_DEVICES (1 .. EK_MAX_DEVICES), default 1. */
EK_API ek_status_t ek_dev_count(int *count);

/* Open device `id` with the default configuration. */
EK_API ek_status_t ek_dev_request(ek_dev_t *handle, int id);
/* Open device `id`. A device already open keeps its configuration; asking for a different
 * non-default one is EK_ERR_BUSY. `config` may be NULL. */
EK_API ek_status_t ek_dev_request_ex(ek_dev_t *handle, int id, const ek_dev_config_t *config);
/* Close a handle. When the last handle of a device closes, its heap and every memory still
 * allocated on it are released; their handles then report EK_ERR_FREED_HANDLE. */
EK_API ek_status_t ek_dev_free(ek_dev_t handle);
/* Wait until all work queued on the device (launches) has finished. Returns, and forgets, the first
 * error of a launch made without a launch handle since the last sync; EK_ERR_BUSY when called from a
 * launch's on_done callback (it would wait for itself). */
EK_API ek_status_t ek_dev_sync(ek_dev_t handle);
/* The device id (0-based) a handle refers to. */
EK_API ek_status_t ek_dev_id(ek_dev_t handle, int *id);

/* Heap statistics of a device. */
typedef struct ek_heap_stats {
    size_t total;         /* bytes in the heap */
    size_t used;          /* bytes in live allocations, rounded up to the alignment */
    size_t peak;          /* the most `used` has been since the device was opened */
    size_t free;          /* total - used */
    size_t largest_free;  /* the largest block one allocation could get now */
    size_t allocations;   /* live allocations */
    size_t alignment;     /* every allocation's start is a multiple of this */
    ek_coherence_t coherence;
    ek_backing_t backing;
} ek_heap_stats_t;

EK_API ek_status_t ek_dev_heap_stats(ek_dev_t handle, ek_heap_stats_t *stats);

/* What the strict-coherence checker found. Ranges are byte offsets in the memory, widened to
 * whole cache lines (EK_CACHE_LINE). */
typedef enum ek_coh_kind {
    /* the device read bytes the CPU wrote through the mapping and had not flushed:
       the device saw stale data */
    EK_COH_UNFLUSHED_READ = 1,
    /* the device wrote bytes of a live mapping and the CPU ended the mapping (unmap/free) without
       invalidating them: whatever the CPU read there was stale */
    EK_COH_STALE_MAPPING = 2,
    /* the CPU and the device both wrote the same cache line since the last flush/invalidate: the
       write-back of the CPU's line overwrote the device's bytes */
    EK_COH_WRITE_CONFLICT = 3,
    /* the CPU ended a mapping with writes it never flushed: the device never saw them */
    EK_COH_UNFLUSHED_UNMAP = 4
} ek_coh_kind_t;

#define EK_CACHE_LINE 64

typedef struct ek_coh_violation {
    ek_coh_kind_t kind;
    uint64_t mem;      /* the ek_mem_t id of the memory */
    size_t offset;     /* first byte of the range */
    size_t size;       /* bytes in the range */
    char what[160];    /* a sentence naming the call that exposed it and what was missed */
} ek_coh_violation_t;

/* Copy up to `capacity` recorded violations into `out` (oldest first; `out` may be NULL when
 * capacity is 0) and set *count to how many are recorded in all. The runtime keeps the first
 * 1024 per device. Coherent devices never record any. */
EK_API ek_status_t ek_dev_coherence_report(ek_dev_t handle, ek_coh_violation_t *out, size_t capacity,
                                           size_t *count);
/* Forget the recorded violations. */
EK_API ek_status_t ek_dev_coherence_clear(ek_dev_t handle);
/* The enum name of a violation kind ("EK_COH_UNFLUSHED_READ"). */
EK_API const char *ek_coh_kind_name(ek_coh_kind_t kind);

#ifdef __cplusplus
}
#endif
#endif /* EDGEKIT_DEVICE_H */
