/* The memory behind a device heap: a dma-buf from a Linux DMA heap, a memfd, or anonymous shared
 * memory. Each is one mapping of the whole pool; allocations are offsets into it. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

/* Declared here, not taken from <linux/dma-heap.h> / <linux/dma-buf.h>, so that old sysroots
 * (a glibc 2.17 board's kernel headers predate DMA heaps) still build. Values are the kernel ABI. */
struct ek_dma_heap_allocation_data {
    uint64_t len;
    uint32_t fd;
    uint32_t fd_flags;
    uint64_t heap_flags;
};
#define EK_DMA_HEAP_IOCTL_ALLOC _IOWR('H', 0x0, struct ek_dma_heap_allocation_data)
struct ek_dma_buf_sync {
    uint64_t flags;
};
#define EK_DMA_BUF_SYNC_READ (1 << 0)
#define EK_DMA_BUF_SYNC_WRITE (2 << 0)
#define EK_DMA_BUF_SYNC_START (0 << 2)
#define EK_DMA_BUF_SYNC_END (1 << 2)
#define EK_DMA_BUF_IOCTL_SYNC _IOW('b', 0, struct ek_dma_buf_sync)

#define EK_DMA_HEAP_PATH "/dev/dma_heap/system"

/* memfd_create through syscall(2): the libc wrapper needs glibc 2.27, above our 2.17 floor. */
#if !defined(SYS_memfd_create) && defined(__x86_64__)
#define SYS_memfd_create 319
#elif !defined(SYS_memfd_create) && defined(__aarch64__)
#define SYS_memfd_create 279
#endif

static int open_memfd(void) {
#ifdef SYS_memfd_create
    return (int)syscall(SYS_memfd_create, "edgekit-heap", 1u /* MFD_CLOEXEC */);
#else
    errno = ENOSYS;
    return -1;
#endif
}

static ek_status_t map_fd(struct ek_pool *pool, const char *what) {
    void *base = mmap(NULL, pool->size, PROT_READ | PROT_WRITE, MAP_SHARED, pool->fd, 0);
    if (base == MAP_FAILED) {
        int err = errno;
        close(pool->fd);
        return ek_fail(EK_ERR_SYSTEM, "mmap of the %zu-byte %s heap failed: %s", pool->size, what,
                       strerror(err));
    }
    pool->base = base;
    return EK_OK;
}

static ek_status_t create_dmabuf(struct ek_pool *pool) {
    int heap_fd = open(EK_DMA_HEAP_PATH, O_RDWR | O_CLOEXEC);
    if (heap_fd < 0)
        return ek_fail(EK_ERR_UNSUPPORTED, "cannot open %s: %s", EK_DMA_HEAP_PATH, strerror(errno));
    struct ek_dma_heap_allocation_data request = {.len = pool->size, .fd_flags = O_RDWR | O_CLOEXEC};
    int rc = ioctl(heap_fd, EK_DMA_HEAP_IOCTL_ALLOC, &request);
    int err = errno;
    close(heap_fd);
    if (rc < 0)
        return ek_fail(EK_ERR_SYSTEM, "DMA_HEAP_IOCTL_ALLOC of %zu bytes on %s failed: %s", pool->size,
                       EK_DMA_HEAP_PATH, strerror(err));
    pool->fd = (int)request.fd;
    return map_fd(pool, "dma-buf");
}

static ek_status_t create_memfd(struct ek_pool *pool) {
    pool->fd = open_memfd();
    if (pool->fd < 0)
        return ek_fail(errno == ENOSYS ? EK_ERR_UNSUPPORTED : EK_ERR_SYSTEM, "memfd_create failed: %s",
                       strerror(errno));
    if (ftruncate(pool->fd, (off_t)pool->size) != 0) {
        int err = errno;
        close(pool->fd);
        return ek_fail(EK_ERR_SYSTEM, "sizing the memfd heap to %zu bytes failed: %s", pool->size,
                       strerror(err));
    }
    return map_fd(pool, "memfd");
}

static ek_status_t create_anonymous(struct ek_pool *pool) {
    void *base = mmap(NULL, pool->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return ek_fail(EK_ERR_SYSTEM, "mmap of a %zu-byte anonymous heap failed: %s", pool->size,
                       strerror(errno));
    pool->base = base;
    return EK_OK;
}

ek_status_t ek_pool_create(struct ek_pool *pool, ek_backing_t kind, size_t size) {
    pool->fd = -1;
    pool->base = NULL;
    pool->size = size;
    if (kind == EK_BACKING_DEFAULT) {
        if (access(EK_DMA_HEAP_PATH, R_OK | W_OK) == 0 && create_dmabuf(pool) == EK_OK) {
            pool->kind = EK_BACKING_DMABUF;
            return EK_OK;
        }
        /* The dma-buf heap is optional: fall back quietly. A kernel without memfd gets anonymous memory. */
        ek_status_t status = create_memfd(pool);
        if (status == EK_ERR_UNSUPPORTED) {
            pool->kind = EK_BACKING_ANONYMOUS;
            return create_anonymous(pool);
        }
        pool->kind = EK_BACKING_MEMFD;
        return status;
    }
    pool->kind = kind;
    switch (kind) {
    case EK_BACKING_DMABUF:
        return create_dmabuf(pool);
    case EK_BACKING_MEMFD:
        return create_memfd(pool);
    case EK_BACKING_ANONYMOUS:
        return create_anonymous(pool);
    default:
        return ek_fail(EK_ERR_INVALID_ARG, "unknown backing kind %d", (int)kind);
    }
}

void ek_pool_destroy(struct ek_pool *pool) {
    if (pool->base)
        munmap(pool->base, pool->size);
    if (pool->fd >= 0)
        close(pool->fd);
    pool->base = NULL;
    pool->fd = -1;
}

ek_status_t ek_pool_sync(const struct ek_pool *pool, bool to_device) {
    if (pool->kind != EK_BACKING_DMABUF)
        return EK_OK;
    /* A flush ends a CPU write phase; an invalidate starts a CPU read phase. */
    struct ek_dma_buf_sync sync = {.flags = to_device ? EK_DMA_BUF_SYNC_END | EK_DMA_BUF_SYNC_WRITE
                                                      : EK_DMA_BUF_SYNC_START | EK_DMA_BUF_SYNC_READ};
    if (ioctl(pool->fd, EK_DMA_BUF_IOCTL_SYNC, &sync) != 0)
        return ek_fail(EK_ERR_SYSTEM, "DMA_BUF_IOCTL_SYNC failed: %s", strerror(errno));
    return EK_OK;
}
