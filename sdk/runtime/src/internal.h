/* Private declarations shared by the runtime's source files. Not installed. */
#ifndef EDGEKIT_INTERNAL_H
#define EDGEKIT_INTERNAL_H

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "edgekit/edgekit.h"

#if defined(__GNUC__)
#define EK_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define EK_PRINTF(f, a)
#endif

/* ---- status.c ---- */
/* Set this thread's last-error message and return `status`, so callers write
 * `return ek_fail(EK_ERR_..., "...", ...);`. */
ek_status_t ek_fail(ek_status_t status, const char *fmt, ...) EK_PRINTF(2, 3);

/* ---- handles.c: generation-checked handles, so stale and forged ones are errors ---- */
enum ek_handle_kind { EK_HANDLE_DEVICE = 1, EK_HANDLE_MEMORY = 2, EK_HANDLE_RUNTIME = 3, EK_HANDLE_LAUNCH = 4,
                      EK_HANDLE_PROFILE = 5, EK_HANDLE_ALLOCATOR = 6, EK_HANDLE_WORKSPACE = 7,
                      /* or'ed into a kind for the objects of remote devices (remote_client.c) */
                      EK_HANDLE_REMOTE = 0x80 };
/* A handle of a remote device's object: the kind's top bit, so the public calls test it without a lookup. */
#define EK_IS_REMOTE(id) (((id) >> 63) != 0)

/* A new live handle for `obj`, owned by device `owner`; 0 when the table cannot grow. */
uint64_t ek_handle_new(enum ek_handle_kind kind, void *obj, int owner);
/* Look a handle up. On success sets *obj and *owner (either may be NULL). */
ek_status_t ek_handle_get(uint64_t handle, enum ek_handle_kind kind, void **obj, int *owner);
/* The same; with `freeing`, a freed handle is reported as EK_ERR_DOUBLE_FREE. Changes nothing. */
ek_status_t ek_handle_lookup(uint64_t handle, enum ek_handle_kind kind, bool freeing, void **obj, int *owner);
/* Retire a handle: later lookups report EK_ERR_FREED_HANDLE, a second retire EK_ERR_DOUBLE_FREE. */
ek_status_t ek_handle_retire(uint64_t handle, enum ek_handle_kind kind);

/* ---- runtime.c ---- */
/* The bytes of a C-order tensor of `dtype` and `shape` (callers pass shapes already checked or bounded). */
size_t ek_shape_bytes(ek_dtype_t dtype, const ek_shape_t *shape);

/* ---- memory.c ---- */
/* Is [offset, offset + size) of `mem` a live memory of `dev`'s device, the offset 64-aligned? A
 * workspace's memory, a custom allocator's answer. The error's status: the handle's, DEVICE_MISMATCH,
 * INVALID_ARG (alignment) or OUT_OF_RANGE. */
ek_status_t ek_mem_check_block(ek_dev_t dev, ek_mem_t mem, size_t offset, size_t size);
/* Mark (or unmark, before the pool frees it) `mem` as an allocator pool's block. */
ek_status_t ek_mem_mark_pool(ek_dev_t dev, ek_mem_t mem, bool pool);

/* ---- heap.c: the allocator over a device pool (offsets only; it never touches the pool) ---- */
struct ek_heap;
struct ek_block;
struct ek_heap *ek_heap_create(size_t total, size_t alignment);
void ek_heap_destroy(struct ek_heap *heap);
/* Best-fit allocation of `size` bytes, rounded up to the alignment. NULL when no block fits. */
struct ek_block *ek_heap_alloc(struct ek_heap *heap, size_t size);
/* Return a block; neighbours that are free merge with it. */
void ek_heap_free(struct ek_heap *heap, struct ek_block *block);
size_t ek_block_offset(const struct ek_block *block);
void ek_heap_stats(const struct ek_heap *heap, ek_heap_stats_t *stats);

/* ---- pool.c: the memory a device heap lives in ---- */
struct ek_pool {
    ek_backing_t kind;
    int fd;       /* memfd or dma-buf fd; -1 for anonymous memory */
    uint8_t *base;
    size_t size;
};
ek_status_t ek_pool_create(struct ek_pool *pool, ek_backing_t kind, size_t size);
void ek_pool_destroy(struct ek_pool *pool);
/* dma-buf begin/end CPU access around flush and invalidate; no-ops for other kinds. */
ek_status_t ek_pool_sync(const struct ek_pool *pool, bool to_device);

/* ---- cache.c: CPU data-cache maintenance on a virtual-address range ---- */
/* Write dirty lines back to the point of coherency (aarch64: dc cvac; dsb). */
void ek_cache_clean(const void *addr, size_t size);
/* Write back and drop the lines, so the next load comes from memory (aarch64: dc civac; dsb). */
void ek_cache_clean_invalidate(const void *addr, size_t size);

/* ---- memory records and devices ---- */
struct ek_shadow; /* coherence.c: the strict-mode CPU view of one mapped memory */

struct ek_mem_rec {
    uint64_t handle;
    struct ek_block *block;
    size_t offset; /* of the block in the device pool */
    size_t size;   /* as requested */
    int map_count; /* below INT_MAX: ek_mem_mmap refuses past it */
    struct ek_shadow *shadow; /* strict mode, while mapped */
    bool pool_block; /* an allocator pool's block (allocator.c): ek_free_device refuses it */
    struct ek_mem_rec *prev, *next; /* the device's live memories */
};

#define EK_MAX_VIOLATIONS 1024

struct ek_device {
    pthread_rwlock_t lock; /* copies take it shared; malloc/free/map/open/close exclusive */
    int index;
    int open_handles;
    ek_coherence_t coherence;
    struct ek_pool pool; /* heap_size bytes and a spare page (see open_device) */
    size_t heap_size;
    struct ek_heap *heap;
    struct ek_mem_rec *mems;
    pthread_mutex_t coh_lock; /* strict-mode shadows and the violations, under the shared device lock */
    ek_coh_violation_t *violations; /* the first EK_MAX_VIOLATIONS */
    size_t violation_count;          /* all that were recorded */
};

/* The device at `index` (0 .. EK_MAX_DEVICES-1); the table is static, so the pointer is stable. */
struct ek_device *ek_device_at(int index);
/* Validate `handle` and lock its device, shared or exclusive. The device stays open while locked. */
ek_status_t ek_device_lock(ek_dev_t handle, bool exclusive, struct ek_device **device);
void ek_device_unlock(struct ek_device *device);
/* Release every memory and the heap of a device whose last handle closed (device locked). */
void ek_device_release_memory(struct ek_device *device);

/* ---- coherence.c: the strict (non-coherent SoC) emulation and its checker ---- */
ek_status_t ek_coh_map(struct ek_device *device, struct ek_mem_rec *mem);
void ek_coh_unmap(struct ek_device *device, struct ek_mem_rec *mem, const char *call);
void ek_coh_flush(struct ek_device *device, struct ek_mem_rec *mem, size_t offset, size_t size);
void ek_coh_invalidate(struct ek_device *device, struct ek_mem_rec *mem, size_t offset, size_t size);
/* The device is about to read / has written [offset, offset+size) of `mem`. */
void ek_coh_device_read(struct ek_device *device, struct ek_mem_rec *mem, size_t offset, size_t size,
                        const char *call);
void ek_coh_device_wrote(struct ek_device *device, struct ek_mem_rec *mem, size_t offset, size_t size);
void *ek_coh_cpu_address(struct ek_mem_rec *mem);

/* ---- profile.c: the clock of profiles and spins ---- */
uint64_t ek_now_ns(void); /* CLOCK_MONOTONIC */

/* ---- cpus.c ---- */
/* The CPUs the calling thread may run on (within `mask` when it is not 0), at most the cgroup CPU
 * quota rounded up; at least 1. What a team of threads should be sized to. */
int ek_usable_cpus(uint64_t mask);
/* The CPUs (bits) this process may run on, as when first asked; 0 when unknown. */
uint64_t ek_online_mask(void);
/* `mask` as a cpu_set_t; 0: the CPUs the process may run on. */
void ek_cpu_set_of(uint64_t mask, cpu_set_t *set);

/* ---- remote_client.c: the public calls on remote handles (docs/remote-protocol.md) ---- */
ek_status_t ek_rc_dev_free(ek_dev_t handle);
ek_status_t ek_rc_dev_id(ek_dev_t handle, int *id);
ek_status_t ek_rc_dev_sync(ek_dev_t handle);
ek_status_t ek_rc_dev_heap_stats(ek_dev_t handle, ek_heap_stats_t *stats);
ek_status_t ek_rc_dev_coherence_report(ek_dev_t handle, ek_coh_violation_t *out, size_t capacity, size_t *count);
ek_status_t ek_rc_dev_coherence_clear(ek_dev_t handle);
ek_status_t ek_rc_malloc(ek_dev_t dev, ek_mem_t *mem, size_t size);
ek_status_t ek_rc_free(ek_dev_t dev, ek_mem_t mem);
ek_status_t ek_rc_mem_size(ek_mem_t mem, size_t *size);
ek_status_t ek_rc_copy_host(ek_dev_t dev, ek_mem_t mem, void *host, size_t size, size_t offset, bool whole,
                            bool to_device, const char *call);
ek_status_t ek_rc_memcpy_d2d(ek_dev_t dev, ek_mem_t dst, size_t dst_offset, ek_mem_t src, size_t src_offset,
                             size_t size);
ek_status_t ek_rc_mmap(ek_dev_t dev, ek_mem_t mem, void **addr);
ek_status_t ek_rc_unmap(ek_dev_t dev, ek_mem_t mem);
ek_status_t ek_rc_sync_range(ek_dev_t dev, ek_mem_t mem, size_t offset, size_t size, bool whole, bool to_device,
                             const char *call);
ek_status_t ek_rc_rt_create(ek_rt_t *rt, ek_dev_t dev, const ek_rt_config_t *config);
ek_status_t ek_rc_rt_destroy(ek_rt_t rt);
ek_status_t ek_rc_rt_kernels(ek_rt_t rt, const char **name);
ek_status_t ek_rc_rt_threads(ek_rt_t rt, int *threads);
ek_status_t ek_rc_rt_load_model(ek_rt_t rt, const char *path);
ek_status_t ek_rc_rt_load_model_data(ek_rt_t rt, const void *data, size_t size);
ek_status_t ek_rc_rt_network_count(ek_rt_t rt, int *count);
ek_status_t ek_rc_rt_network_name(ek_rt_t rt, int index, const char **name);
ek_status_t ek_rc_rt_network_info(ek_rt_t rt, const char *name, const ek_net_info_t **info);
ek_status_t ek_rc_rt_launch_tensor(ek_rt_t rt, const char *net_name, const ek_tensor_t *inputs, int input_count,
                                   ek_tensor_t *outputs, int output_count, bool user_mem,
                                   const ek_launch_options_t *options, ek_launch_t *launch);
ek_status_t ek_rc_launch_wait(ek_launch_t launch, int timeout_ms);
ek_status_t ek_rc_rt_launch_data(ek_rt_t rt, const char *net_name, const void *const *inputs,
                                 const ek_shape_t *input_shapes, int input_count, void *const *outputs,
                                 const size_t *output_capacity, ek_shape_t *output_shapes, int output_count,
                                 const ek_launch_options_t *options);
ek_status_t ek_rc_launch_data_staged(ek_rt_t rt, const char *net_name, const void *const *inputs,
                                     const ek_shape_t *input_shapes, int input_count, void *const *outputs,
                                     const size_t *output_capacity, ek_shape_t *output_shapes, int output_count,
                                     const ek_launch_options_t *options);

/* ---- remote_server.c ---- */
/* Serve one session on an already connected socket `fd`, on the calling thread, exactly as the listener's
 * session threads do, and close it. For the fuzz targets (tests/fuzz), which drive whole sessions
 * without a listener or a thread per session. Such a session counts in ek_server_stats' sessions_started,
 * not in sessions_open (it is not on the listener's list). */
struct ek_server;
ek_status_t ek_server_serve_fd(struct ek_server *server, int fd, const char *peer);

/* The .ekm versions this runtime reads (model.c), also told to remote clients. */
#define EK_MODEL_FORMAT_MAJOR 1
#define EK_MODEL_FORMAT_MINOR 5 /* 1.5: the quantized ops and int8/uint8/int32 tensors */

#endif /* EDGEKIT_INTERNAL_H */
