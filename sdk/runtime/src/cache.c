/* CPU data-cache maintenance by virtual address. On aarch64 these are the real instructions, which
 * user space may issue (Linux sets SCTLR_EL1.UCI). Elsewhere the CPU mapping is cache-coherent with
 * the (CPU) device, so only the ordering a DMA engine would need is kept: a full memory fence. */
#include <stdatomic.h>

#include "internal.h"

#if defined(__aarch64__)
/* The smallest data-cache line, from CTR_EL0.DminLine (log2 of words). */
static size_t dcache_line(void) {
    uint64_t ctr;
    __asm__ volatile("mrs %0, ctr_el0" : "=r"(ctr));
    return (size_t)4 << ((ctr >> 16) & 0xf);
}

/* `dc cvac` (clean) or `dc civac` (clean and invalidate) on every line of the range, then `dsb sy`. */
static void dc_range(const void *addr, size_t size, bool invalidate) {
    if (size == 0)
        return;
    size_t line = dcache_line();
    uintptr_t p = (uintptr_t)addr & ~(uintptr_t)(line - 1), end = (uintptr_t)addr + size;
    for (; p < end; p += line) {
        if (invalidate)
            __asm__ volatile("dc civac, %0" : : "r"(p) : "memory");
        else
            __asm__ volatile("dc cvac, %0" : : "r"(p) : "memory");
    }
    __asm__ volatile("dsb sy" : : : "memory");
}

void ek_cache_clean(const void *addr, size_t size) { dc_range(addr, size, false); }

void ek_cache_clean_invalidate(const void *addr, size_t size) { dc_range(addr, size, true); }
#else
void ek_cache_clean(const void *addr, size_t size) {
    (void)addr;
    (void)size;
    atomic_thread_fence(memory_order_seq_cst);
}

void ek_cache_clean_invalidate(const void *addr, size_t size) {
    (void)addr;
    (void)size;
    atomic_thread_fence(memory_order_seq_cst);
}
#endif
