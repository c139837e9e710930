/* EdgeKit runtime: device memory (bmlib-style). All lengths and offsets are in bytes. */
#ifndef EDGEKIT_MEMORY_H
#define EDGEKIT_MEMORY_H

#include <stddef.h>
#include <stdint.h>

#include "edgekit/device.h"
#include "edgekit/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A block of device memory. Like device handles, checked on every call. */
typedef struct ek_mem {
    uint64_t id;
} ek_mem_t;

/* Allocate `size` bytes (> 0) on the device; the block starts on a 64-byte boundary. */
EK_API ek_status_t ek_malloc_device(ek_dev_t dev, ek_mem_t *mem, size_t size);
/* Free a block. A mapped block is unmapped first (in strict mode with the unmap checks). */
EK_API ek_status_t ek_free_device(ek_dev_t dev, ek_mem_t mem);
/* The size the block was allocated with. */
EK_API ek_status_t ek_mem_size(ek_mem_t mem, size_t *size);

/* Host ("system") -> device. The plain form copies the whole block, _partial the first `size`
 * bytes, _partial_offset `size` bytes to device offset `offset`. */
EK_API ek_status_t ek_memcpy_s2d(ek_dev_t dev, ek_mem_t dst, const void *src);
EK_API ek_status_t ek_memcpy_s2d_partial(ek_dev_t dev, ek_mem_t dst, const void *src, size_t size);
EK_API ek_status_t ek_memcpy_s2d_partial_offset(ek_dev_t dev, ek_mem_t dst, const void *src, size_t size,
                                                size_t offset);
/* Device -> host, the same three forms; `offset` is in the source block. */
EK_API ek_status_t ek_memcpy_d2s(ek_dev_t dev, void *dst, ek_mem_t src);
EK_API ek_status_t ek_memcpy_d2s_partial(ek_dev_t dev, void *dst, ek_mem_t src, size_t size);
EK_API ek_status_t ek_memcpy_d2s_partial_offset(ek_dev_t dev, void *dst, ek_mem_t src, size_t size,
                                                size_t offset);
/* Device -> device on the same device; ranges may overlap (the copy behaves like memmove). */
EK_API ek_status_t ek_memcpy_d2d(ek_dev_t dev, ek_mem_t dst, size_t dst_offset, ek_mem_t src,
                                 size_t src_offset, size_t size);

/* Map the block for the CPU. Mapping a mapped block returns the same address and counts up;
 * each ek_mem_mmap needs one ek_mem_unmap. In strict coherence the address is a CPU-side shadow:
 * flush before the device reads what the CPU wrote, invalidate before the CPU reads what the
 * device wrote. */
EK_API ek_status_t ek_mem_mmap(ek_dev_t dev, ek_mem_t mem, void **addr);
EK_API ek_status_t ek_mem_unmap(ek_dev_t dev, ek_mem_t mem);
/* Make CPU writes through the mapping visible to the device (aarch64: dc cvac + dsb). */
EK_API ek_status_t ek_mem_flush(ek_dev_t dev, ek_mem_t mem);
EK_API ek_status_t ek_mem_flush_partial(ek_dev_t dev, ek_mem_t mem, size_t offset, size_t size);
/* Make device writes visible to the CPU through the mapping (aarch64: dc civac + dsb). */
EK_API ek_status_t ek_mem_invalidate(ek_dev_t dev, ek_mem_t mem);
EK_API ek_status_t ek_mem_invalidate_partial(ek_dev_t dev, ek_mem_t mem, size_t offset, size_t size);

#ifdef __cplusplus
}
#endif
#endif /* EDGEKIT_MEMORY_H */
