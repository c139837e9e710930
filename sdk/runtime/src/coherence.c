/* Strict coherence: an emulated non-coherent SoC, where the CPU sees device memory through a
 * write-back cache that nothing keeps in step with the device.
 *
 * While a memory is mapped, the CPU's view is a shadow copy (the "cache"). Per 64-byte line we
 * know:
 *   - CPU-dirty: the shadow differs from `synced`, the shadow as of the last flush/invalidate;
 *   - device-written: the device wrote the line after the CPU's last invalidate of it.
 * Flush writes dirty lines back (dc cvac: clean lines are left alone, as on hardware).
 * Invalidate writes dirty lines back, then reloads every line from the device (dc civac).
 * The device never sees the shadow, so a forgotten flush or invalidate gives the stale data a real
 * SoC would give, and the checker records where and which call exposed it. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define LINE ((size_t)EK_CACHE_LINE)

struct ek_shadow {
    uint8_t *cpu;           /* what the CPU sees through the mapping */
    uint8_t *synced;        /* the shadow as of the last flush/invalidate of each line */
    uint8_t *device_wrote;  /* one flag per line */
    size_t lines;
};

static uint8_t *device_bytes(struct ek_device *device, const struct ek_mem_rec *mem) {
    return device->pool.base + mem->offset;
}

static size_t line_bytes(const struct ek_mem_rec *mem, size_t line) {
    size_t start = line * LINE;
    return mem->size - start < LINE ? mem->size - start : LINE;
}

static bool cpu_dirty(const struct ek_shadow *s, const struct ek_mem_rec *mem, size_t line) {
    return memcmp(s->cpu + line * LINE, s->synced + line * LINE, line_bytes(mem, line)) != 0;
}

static void record_locked(struct ek_device *device, ek_coh_kind_t kind, const struct ek_mem_rec *mem,
                          size_t offset, size_t size, const char *fmt, ...) EK_PRINTF(6, 7);

static void record_locked(struct ek_device *device, ek_coh_kind_t kind, const struct ek_mem_rec *mem,
                          size_t offset, size_t size, const char *fmt, ...) {
    if (!device->violations)
        device->violations = calloc(EK_MAX_VIOLATIONS, sizeof *device->violations);
    if (!device->violations)
        return; /* the host is out of memory: nothing to record into */
    if (device->violation_count < EK_MAX_VIOLATIONS) {
        ek_coh_violation_t *v = &device->violations[device->violation_count];
        v->kind = kind;
        v->mem = mem->handle;
        v->offset = offset;
        v->size = size;
        va_list args;
        va_start(args, fmt);
        vsnprintf(v->what, sizeof v->what, fmt, args);
        va_end(args);
    }
    device->violation_count++;
}

enum line_test { DIRTY, DEVICE_WROTE, DIRTY_AND_DEVICE_WROTE };

static bool line_matches(const struct ek_shadow *s, const struct ek_mem_rec *mem, size_t line,
                         enum line_test test) {
    switch (test) {
    case DIRTY:
        return cpu_dirty(s, mem, line);
    case DEVICE_WROTE:
        return s->device_wrote[line] != 0;
    case DIRTY_AND_DEVICE_WROTE:
        return s->device_wrote[line] && cpu_dirty(s, mem, line);
    }
    return false;
}

/* Record one violation of `kind` per run of consecutive lines in [first, last] passing `test`. */
static void report_runs(struct ek_device *device, struct ek_mem_rec *mem, size_t first, size_t last,
                        enum line_test test, ek_coh_kind_t kind, const char *call) {
    static const char *const what[] = {
        [EK_COH_UNFLUSHED_READ] = "%s: the device read bytes [%zu, %zu) that the CPU wrote through the "
                                  "mapping but never flushed; it saw the old data",
        [EK_COH_STALE_MAPPING] = "%s ended the mapping, but the device wrote bytes [%zu, %zu) after the "
                                 "CPU last invalidated them: CPU reads there were stale",
        [EK_COH_WRITE_CONFLICT] = "%s wrote CPU bytes [%zu, %zu) back over data the device wrote there "
                                  "since the CPU last invalidated them",
        [EK_COH_UNFLUSHED_UNMAP] = "%s ended the mapping with CPU writes to bytes [%zu, %zu) never "
                                   "flushed: the device never saw them",
    };
    struct ek_shadow *s = mem->shadow;
    for (size_t line = first; line <= last; line++) {
        if (!line_matches(s, mem, line, test))
            continue;
        size_t run_end = line;
        while (run_end + 1 <= last && line_matches(s, mem, run_end + 1, test))
            run_end++;
        size_t start = line * LINE, end = run_end * LINE + line_bytes(mem, run_end);
        record_locked(device, kind, mem, start, end - start, what[kind], call, start, end);
        line = run_end;
    }
}

/* Write the CPU-dirty lines in [first, last] back to the device, as a cache clean does. */
static void write_back(struct ek_device *device, struct ek_mem_rec *mem, size_t first, size_t last,
                       const char *call) {
    struct ek_shadow *s = mem->shadow;
    report_runs(device, mem, first, last, DIRTY_AND_DEVICE_WROTE, EK_COH_WRITE_CONFLICT, call);
    for (size_t line = first; line <= last; line++) {
        if (!cpu_dirty(s, mem, line))
            continue;
        size_t at = line * LINE, n = line_bytes(mem, line);
        memcpy(device_bytes(device, mem) + at, s->cpu + at, n);
        memcpy(s->synced + at, s->cpu + at, n);
    }
}

ek_status_t ek_coh_map(struct ek_device *device, struct ek_mem_rec *mem) {
    size_t lines = (mem->size + LINE - 1) / LINE;
    struct ek_shadow *s = calloc(1, sizeof *s);
    if (s) {
        s->lines = lines;
        s->cpu = aligned_alloc(LINE, lines * LINE);
        s->synced = malloc(lines * LINE);
        s->device_wrote = calloc(lines, 1);
    }
    if (!s || !s->cpu || !s->synced || !s->device_wrote) {
        if (s) {
            free(s->cpu);
            free(s->synced);
            free(s->device_wrote);
        }
        free(s);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for the %zu-byte strict-coherence shadow",
                       lines * LINE);
    }
    memset(s->cpu + mem->size, 0, lines * LINE - mem->size);
    memcpy(s->cpu, device_bytes(device, mem), mem->size);
    memcpy(s->synced, s->cpu, lines * LINE);
    mem->shadow = s;
    return EK_OK;
}

void ek_coh_unmap(struct ek_device *device, struct ek_mem_rec *mem, const char *call) {
    struct ek_shadow *s = mem->shadow;
    if (!s)
        return;
    pthread_mutex_lock(&device->coh_lock);
    report_runs(device, mem, 0, s->lines - 1, DEVICE_WROTE, EK_COH_STALE_MAPPING, call);
    report_runs(device, mem, 0, s->lines - 1, DIRTY, EK_COH_UNFLUSHED_UNMAP, call);
    pthread_mutex_unlock(&device->coh_lock);
    free(s->cpu);
    free(s->synced);
    free(s->device_wrote);
    free(s);
    mem->shadow = NULL;
}

void ek_coh_flush(struct ek_device *device, struct ek_mem_rec *mem, size_t offset, size_t size) {
    if (!mem->shadow)
        return;
    pthread_mutex_lock(&device->coh_lock);
    write_back(device, mem, offset / LINE, (offset + size - 1) / LINE, "ek_mem_flush");
    pthread_mutex_unlock(&device->coh_lock);
}

void ek_coh_invalidate(struct ek_device *device, struct ek_mem_rec *mem, size_t offset, size_t size) {
    struct ek_shadow *s = mem->shadow;
    if (!s)
        return;
    size_t first = offset / LINE, last = (offset + size - 1) / LINE;
    pthread_mutex_lock(&device->coh_lock);
    write_back(device, mem, first, last, "ek_mem_invalidate");
    size_t start = first * LINE, end = last * LINE + line_bytes(mem, last);
    memcpy(s->cpu + start, device_bytes(device, mem) + start, end - start);
    memcpy(s->synced + start, s->cpu + start, end - start);
    memset(s->device_wrote + first, 0, last - first + 1);
    pthread_mutex_unlock(&device->coh_lock);
}

void ek_coh_device_read(struct ek_device *device, struct ek_mem_rec *mem, size_t offset, size_t size,
                        const char *call) {
    if (!mem->shadow)
        return;
    pthread_mutex_lock(&device->coh_lock);
    report_runs(device, mem, offset / LINE, (offset + size - 1) / LINE, DIRTY, EK_COH_UNFLUSHED_READ, call);
    pthread_mutex_unlock(&device->coh_lock);
}

void ek_coh_device_wrote(struct ek_device *device, struct ek_mem_rec *mem, size_t offset, size_t size) {
    if (!mem->shadow)
        return;
    pthread_mutex_lock(&device->coh_lock);
    memset(mem->shadow->device_wrote + offset / LINE, 1, (offset + size - 1) / LINE - offset / LINE + 1);
    pthread_mutex_unlock(&device->coh_lock);
}

void *ek_coh_cpu_address(struct ek_mem_rec *mem) { return mem->shadow ? mem->shadow->cpu : NULL; }

const char *ek_coh_kind_name(ek_coh_kind_t kind) {
    switch (kind) {
    case EK_COH_UNFLUSHED_READ:
        return "EK_COH_UNFLUSHED_READ";
    case EK_COH_STALE_MAPPING:
        return "EK_COH_STALE_MAPPING";
    case EK_COH_WRITE_CONFLICT:
        return "EK_COH_WRITE_CONFLICT";
    case EK_COH_UNFLUSHED_UNMAP:
        return "EK_COH_UNFLUSHED_UNMAP";
    }
    return "EK_COH_UNKNOWN";
}
