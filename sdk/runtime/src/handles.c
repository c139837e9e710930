/* Generation-checked handles. A handle is (kind << 56 | slot << 32 | generation). Retiring a
 * handle bumps its slot's generation, so any older copy is recognised as freed, and a value that
 * was never issued is recognised as invalid, without ever dereferencing user-supplied pointers. */
#include <inttypes.h>
#include <stdlib.h>

#include "internal.h"

#define SLOT_LIMIT (1u << 24)

struct slot {
    uint32_t generation; /* of the live (or next) occupant; starts at 1 */
    uint8_t kind;
    bool live;
    int owner;
    void *obj;
    uint32_t next_free;
};

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct slot *slots;
static uint32_t slot_count, slot_capacity;
static uint32_t free_head = UINT32_MAX;

static const char *kind_name(unsigned kind) {
    return kind == EK_HANDLE_DEVICE ? "device" : kind == EK_HANDLE_MEMORY ? "memory" : "unknown";
}

uint64_t ek_handle_new(enum ek_handle_kind kind, void *obj, int owner) {
    pthread_mutex_lock(&table_lock);
    uint32_t index;
    if (free_head != UINT32_MAX) {
        index = free_head;
        free_head = slots[index].next_free;
    } else {
        if (slot_count == slot_capacity) {
            uint32_t grown = slot_capacity ? slot_capacity * 2 : 256;
            struct slot *bigger = grown <= SLOT_LIMIT ? realloc(slots, grown * sizeof *slots) : NULL;
            if (!bigger) {
                pthread_mutex_unlock(&table_lock);
                return 0;
            }
            slots = bigger;
            slot_capacity = grown;
        }
        index = slot_count++;
        slots[index].generation = 1;
    }
    struct slot *s = &slots[index];
    s->kind = (uint8_t)kind;
    s->live = true;
    s->owner = owner;
    s->obj = obj;
    uint64_t handle = (uint64_t)kind << 56 | (uint64_t)index << 32 | s->generation;
    pthread_mutex_unlock(&table_lock);
    return handle;
}

/* Check `handle` with the table locked; the slot on success. */
static ek_status_t find_locked(uint64_t handle, enum ek_handle_kind kind, bool retiring, struct slot **out) {
    unsigned handle_kind = (unsigned)(handle >> 56);
    uint32_t index = (uint32_t)(handle >> 32) & (SLOT_LIMIT - 1);
    uint32_t generation = (uint32_t)handle;
    if (handle == 0)
        return ek_fail(EK_ERR_INVALID_HANDLE, "%s handle is 0 (never initialised?)", kind_name(kind));
    if (handle_kind != (unsigned)kind)
        return ek_fail(EK_ERR_INVALID_HANDLE, "handle 0x%016" PRIx64 " is not a %s handle (its kind: %s)",
                       handle, kind_name(kind), kind_name(handle_kind));
    if (index >= slot_count || generation == 0 || generation > slots[index].generation)
        return ek_fail(EK_ERR_INVALID_HANDLE, "%s handle 0x%016" PRIx64 " was never issued", kind_name(kind),
                       handle);
    struct slot *s = &slots[index];
    if (generation < s->generation || !s->live) {
        if (retiring)
            return ek_fail(EK_ERR_DOUBLE_FREE, "%s handle 0x%016" PRIx64 " was already freed (double free)",
                           kind_name(kind), handle);
        return ek_fail(EK_ERR_FREED_HANDLE, "%s handle 0x%016" PRIx64 " was freed (use after free)",
                       kind_name(kind), handle);
    }
    *out = s;
    return EK_OK;
}

ek_status_t ek_handle_get(uint64_t handle, enum ek_handle_kind kind, void **obj, int *owner) {
    struct slot *s = NULL;
    pthread_mutex_lock(&table_lock);
    ek_status_t status = find_locked(handle, kind, false, &s);
    if (status == EK_OK) {
        if (obj)
            *obj = s->obj;
        if (owner)
            *owner = s->owner;
    }
    pthread_mutex_unlock(&table_lock);
    return status;
}

ek_status_t ek_handle_retire(uint64_t handle, enum ek_handle_kind kind) {
    struct slot *s = NULL;
    pthread_mutex_lock(&table_lock);
    ek_status_t status = find_locked(handle, kind, true, &s);
    if (status == EK_OK) {
        uint32_t index = (uint32_t)(s - slots);
        s->live = false;
        s->obj = NULL;
        /* A slot whose generation would wrap is never reused, so an old handle can't come back. */
        if (++s->generation != 0) {
            s->next_free = free_head;
            free_head = index;
        }
    }
    pthread_mutex_unlock(&table_lock);
    return status;
}
