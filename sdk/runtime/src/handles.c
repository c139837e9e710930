/* Generation-checked handles. A handle is (kind << 56 | slot << 32 | generation). Retiring a
 * handle bumps its slot's generation, so any older copy is recognised as freed, and a value that
 * was never issued is recognised as invalid, without ever dereferencing user-supplied pointers.
 *
 * Lookups are lock-free (every copy and map call does several): slots live in fixed-size chunks
 * that never move, and each slot's generation, kind, owner and liveness are one atomic word.
 * Issuing and retiring take a mutex. A memory handle is retired only under its device's exclusive
 * lock, so a lookup repeated under that device's lock is stable. */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "internal.h"

#define CHUNK_BITS 12
#define CHUNK_SLOTS (1u << CHUNK_BITS)
#define CHUNK_COUNT 4096u /* 16M slots: the 24 bits a handle has for them */
#define SLOT_LIMIT (CHUNK_SLOTS * CHUNK_COUNT)

/* state: generation (bits 0-31) | kind (32-39) | owner (40-47) | live (48) */
#define STATE(gen, kind, owner, live) \
    ((uint64_t)(gen) | (uint64_t)(kind) << 32 | (uint64_t)(owner) << 40 | (uint64_t)(live) << 48)
#define STATE_GEN(s) ((uint32_t)(s))
#define STATE_KIND(s) ((unsigned)((s) >> 32 & 0xff))
#define STATE_OWNER(s) ((int)((s) >> 40 & 0xff))
#define STATE_LIVE(s) ((unsigned)((s) >> 48 & 1))

struct slot {
    _Atomic uint64_t state;
    _Atomic(void *) obj;
    uint32_t next_free; /* under table_lock */
};

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(struct slot *) chunks[CHUNK_COUNT];
static _Atomic uint32_t slot_count; /* slots ever handed out; the rest of the last chunk is unused */
static uint32_t free_head = UINT32_MAX;

static struct slot *slot_at(uint32_t index) {
    return &atomic_load_explicit(&chunks[index >> CHUNK_BITS], memory_order_acquire)[index & (CHUNK_SLOTS - 1)];
}

static const char *kind_name(unsigned kind) {
    if (kind & EK_HANDLE_REMOTE) {
        kind &= ~(unsigned)EK_HANDLE_REMOTE;
        return kind == EK_HANDLE_DEVICE ? "remote device" : kind == EK_HANDLE_MEMORY ? "remote memory"
             : kind == EK_HANDLE_RUNTIME ? "remote runtime" : kind == EK_HANDLE_LAUNCH ? "remote launch" : "unknown";
    }
    return kind == EK_HANDLE_DEVICE ? "device" : kind == EK_HANDLE_MEMORY ? "memory"
         : kind == EK_HANDLE_RUNTIME ? "runtime" : kind == EK_HANDLE_LAUNCH ? "launch"
         : kind == EK_HANDLE_PROFILE ? "profile" : kind == EK_HANDLE_ALLOCATOR ? "allocator"
         : kind == EK_HANDLE_WORKSPACE ? "workspace" : "unknown";
}

uint64_t ek_handle_new(enum ek_handle_kind kind, void *obj, int owner) {
    pthread_mutex_lock(&table_lock);
    uint32_t index, generation = 1;
    if (free_head != UINT32_MAX) {
        index = free_head;
        free_head = slot_at(index)->next_free;
        generation = STATE_GEN(atomic_load_explicit(&slot_at(index)->state, memory_order_relaxed));
    } else {
        index = atomic_load_explicit(&slot_count, memory_order_relaxed);
        if (index >= SLOT_LIMIT) {
            pthread_mutex_unlock(&table_lock);
            return 0;
        }
        if (index % CHUNK_SLOTS == 0) {
            struct slot *chunk = calloc(CHUNK_SLOTS, sizeof *chunk);
            if (!chunk) {
                pthread_mutex_unlock(&table_lock);
                return 0;
            }
            atomic_store_explicit(&chunks[index >> CHUNK_BITS], chunk, memory_order_release);
        }
    }
    struct slot *s = slot_at(index);
    atomic_store_explicit(&s->obj, obj, memory_order_relaxed);
    atomic_store_explicit(&s->state, STATE(generation, kind, owner, 1), memory_order_release);
    if (index == atomic_load_explicit(&slot_count, memory_order_relaxed))
        atomic_store_explicit(&slot_count, index + 1, memory_order_release);
    pthread_mutex_unlock(&table_lock);
    return (uint64_t)kind << 56 | (uint64_t)index << 32 | generation;
}

/* Check `handle`; on success the slot's state word. */
static ek_status_t check_handle(uint64_t handle, enum ek_handle_kind kind, bool retiring, struct slot **slot,
                                uint64_t *state) {
    unsigned handle_kind = (unsigned)(handle >> 56);
    uint32_t index = (uint32_t)(handle >> 32) & (SLOT_LIMIT - 1);
    uint32_t generation = (uint32_t)handle;
    if (handle == 0)
        return ek_fail(EK_ERR_INVALID_HANDLE, "%s handle is 0 (never initialised?)", kind_name(kind));
    if (handle_kind != (unsigned)kind)
        return ek_fail(EK_ERR_INVALID_HANDLE, "handle 0x%016" PRIx64 " is not a %s handle (its kind: %s)",
                       handle, kind_name(kind), kind_name(handle_kind));
    if (index >= atomic_load_explicit(&slot_count, memory_order_acquire))
        return ek_fail(EK_ERR_INVALID_HANDLE, "%s handle 0x%016" PRIx64 " was never issued", kind_name(kind),
                       handle);
    struct slot *s = slot_at(index);
    uint64_t st = atomic_load_explicit(&s->state, memory_order_acquire);
    if (generation == 0 || generation > STATE_GEN(st) || (STATE_GEN(st) == generation && STATE_KIND(st) != kind))
        return ek_fail(EK_ERR_INVALID_HANDLE, "%s handle 0x%016" PRIx64 " was never issued", kind_name(kind),
                       handle);
    if (generation < STATE_GEN(st) || !STATE_LIVE(st)) {
        if (retiring)
            return ek_fail(EK_ERR_DOUBLE_FREE, "%s handle 0x%016" PRIx64 " was already freed (double free)",
                           kind_name(kind), handle);
        return ek_fail(EK_ERR_FREED_HANDLE, "%s handle 0x%016" PRIx64 " was freed (use after free)",
                       kind_name(kind), handle);
    }
    *slot = s;
    *state = st;
    return EK_OK;
}

ek_status_t ek_handle_lookup(uint64_t handle, enum ek_handle_kind kind, bool freeing, void **obj, int *owner) {
    struct slot *s = NULL;
    uint64_t st = 0;
    ek_status_t status = check_handle(handle, kind, freeing, &s, &st);
    if (status == EK_OK) {
        if (obj)
            *obj = atomic_load_explicit(&s->obj, memory_order_relaxed);
        if (owner)
            *owner = STATE_OWNER(st);
    }
    return status;
}

ek_status_t ek_handle_get(uint64_t handle, enum ek_handle_kind kind, void **obj, int *owner) {
    return ek_handle_lookup(handle, kind, false, obj, owner);
}

ek_status_t ek_handle_retire(uint64_t handle, enum ek_handle_kind kind) {
    struct slot *s = NULL;
    uint64_t st = 0;
    pthread_mutex_lock(&table_lock);
    ek_status_t status = check_handle(handle, kind, true, &s, &st);
    if (status == EK_OK) {
        /* A slot that reaches the last generation is retired for good (never reused), so every
         * handle it ever issued keeps reporting "freed" rather than wrapping to "never issued". */
        uint32_t next = STATE_GEN(st) + 1;
        atomic_store_explicit(&s->state, STATE(next, kind, STATE_OWNER(st), 0), memory_order_release);
        atomic_store_explicit(&s->obj, NULL, memory_order_relaxed);
        if (next != UINT32_MAX) {
            s->next_free = free_head;
            free_head = (uint32_t)(handle >> 32) & (SLOT_LIMIT - 1);
        }
    }
    pthread_mutex_unlock(&table_lock);
    return status;
}
