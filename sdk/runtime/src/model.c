/* The .ekm loader (docs/model-format.md). Every count, offset, size, index and string of the file
 * is checked before anything points into it, so no later code reads outside the file, the arena
 * or the CONSTANTS section; then each op is prepared by its portable kernel, which checks the
 * attributes and computes the output shapes.
 *
 * The in-memory arrays are indexed like the file's records (TENSORS[i] is tensors[i], ...), so a
 * stage's tensors and ops are slices of them; only what is per stage or per op (shapes, bound
 * tensors, operand pointers) is laid out in "slots" counted while the networks are checked. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "model.h"
#include "plugin_internal.h"

#define BAD(...) ek_fail(EK_ERR_MODEL_INVALID, __VA_ARGS__)
#define OOM(what) ek_fail(EK_ERR_OUT_OF_MEMORY, "out of memory loading the model (%s)", (what))

#define HEADER_SIZE 64u
#define ENTRY_SIZE 24u
#define MAX_IOS 64u
#define MAX_ARRAY_ATTR 64u
#define ABSENT 0xFFFFFFFFu
#define NONE UINT32_MAX  /* no op (writer / last reader) */
#define NO_SLOT SIZE_MAX /* a record no network loads */
/* Names in messages are cut so the location and the reason still fit the 512-byte message. */
#define NM "%.64s"

enum section_kind {
    SEC_STRINGS = 1,
    SEC_NETWORKS,
    SEC_IOS,
    SEC_STAGES,
    SEC_TENSORS,
    SEC_OPS,
    SEC_OPERANDS,
    SEC_BINDINGS,
    SEC_ATTRS,
    SEC_ATTR_DATA,
    SEC_CONSTANTS,
    SEC_OP_SOURCES,   /* optional (1.1), with SOURCE_NODES */
    SEC_SOURCE_NODES,
    SEC_REQUIRED_LAST = SEC_CONSTANTS,
    SEC_LAST = SEC_SOURCE_NODES
};

static const struct {
    const char *name;
    uint32_t record_size;
} section_defs[SEC_LAST + 1] = {
    [SEC_STRINGS] = {"STRINGS", 1},   [SEC_NETWORKS] = {"NETWORKS", 32}, [SEC_IOS] = {"IOS", 32},
    [SEC_STAGES] = {"STAGES", 48},    [SEC_TENSORS] = {"TENSORS", 96},   [SEC_OPS] = {"OPS", 24},
    [SEC_OPERANDS] = {"OPERANDS", 4}, [SEC_BINDINGS] = {"BINDINGS", 4},  [SEC_ATTRS] = {"ATTRS", 24},
    [SEC_ATTR_DATA] = {"ATTR_DATA", 1}, [SEC_CONSTANTS] = {"CONSTANTS", 1},
    [SEC_OP_SOURCES] = {"OP_SOURCES", 24}, [SEC_SOURCE_NODES] = {"SOURCE_NODES", 4},
};

static const char *const storage_names[4] = {"ARENA", "CONSTANT", "INPUT", "OUTPUT"};

/* The model format's dtype sizes (its own table: the format, not the API, defines the codes). */
static size_t dtype_size(unsigned code) {
    switch (code) {
    case EK_DTYPE_FLOAT32: return 4;
    case EK_DTYPE_FLOAT16: return 2;
    case EK_DTYPE_INT8: return 1;
    case EK_DTYPE_UINT8: return 1;
    case EK_DTYPE_INT32: return 4;
    case EK_DTYPE_INT64: return 8;
    default: return 0;
    }
}

static const char *dtype_name(unsigned code) {
    static const char *const names[] = {"?", "float32", "float16", "int8", "uint8", "int32", "int64"};
    return code < sizeof names / sizeof names[0] ? names[code] : "?";
}

/* Does a u64 of the file fit size_t (always on 64-bit hosts)? */
static bool fits_size(uint64_t v) {
#if SIZE_MAX < UINT64_MAX
    return v <= SIZE_MAX;
#else
    (void)v;
    return true;
#endif
}

/* What model.c allocates besides model->networks (model->allocations). */
struct model_arrays {
    size_t tensor_count, op_count, attr_count, io_count, stage_count;
    struct ek_tensor_desc *tensors;     /* per TENSORS record */
    struct ek_op *ops;                  /* per OPS record */
    const struct ek_kernel **prepared;  /* per OPS record: its kernel once prepare() succeeded */
    struct ek_attr *attrs;              /* per ATTRS record */
    ek_io_info_t *ios;                  /* per IOS record */
    struct ek_stage *stages;            /* per STAGES record */
    ek_stage_info_t *stage_infos;       /* per STAGES record */
    ek_shape_t *shapes;                 /* io slots: per loaded stage, inputs + outputs */
    const struct ek_tensor_desc **bound; /* io slots */
    const struct ek_tensor_desc **operands; /* operand slots: per loaded op, inputs + outputs */
    struct ek_op_source *sources;       /* per OPS record, when the file has OP_SOURCES */
    const char **source_nodes;          /* per SOURCE_NODES record */
};

struct section {
    size_t offset, size, count; /* count: records */
};

struct loader {
    const uint8_t *data;
    size_t size;
    struct section sec[SEC_LAST + 1];
    bool has_sources; /* OP_SOURCES and SOURCE_NODES are present */
    struct ek_model *model;
    struct model_arrays *a;
    const struct ek_plugin_lib *plugins; /* the runtime's, for PLUGIN ops (NULL: none) */
    /* per STAGES / OPS record: the first slot, or NO_SLOT for records no network loads */
    size_t *stage_slot;
    size_t *op_slot;
    size_t io_slots, operand_slots;
    uint32_t max_tensors; /* the most tensors of one loaded stage */
    /* per-stage scratch, max_tensors each */
    uint32_t *writer, *last_read, *live;
};

/* ---- little-endian reads (the file need not be aligned for these) ---- */
static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (unsigned)p[1] << 8); }
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static const uint8_t *record(const struct loader *L, int kind, size_t index) {
    return L->data + L->sec[kind].offset + index * section_defs[kind].record_size;
}

/* The offset of the first byte of p[0..n) that is not well-formed UTF-8 (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or SIZE_MAX when all of it is. Names reach Python and
 * error messages, so they must decode. */
static size_t utf8_invalid_at(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        size_t len;
        uint32_t min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, min = 0x10000;
        } else {
            return i;
        }
        if (n - i < len)
            return i;
        uint32_t cp = c & (0x7Fu >> len);
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return i;
            cp = cp << 6 | (p[i + k] & 0x3Fu);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += len;
    }
    return SIZE_MAX;
}

/* A string ref inside STRINGS whose string ends there; NULL otherwise. */
static const char *string_at(const struct loader *L, uint64_t ref) {
    const struct section *s = &L->sec[SEC_STRINGS];
    if (ref >= s->size)
        return NULL;
    const char *p = (const char *)L->data + s->offset + (size_t)ref;
    return memchr(p, 0, s->size - (size_t)ref) ? p : NULL;
}

static ek_status_t bad_string(const struct loader *L, const char *section, size_t index, const char *field,
                              uint64_t ref) {
    return BAD("%s[%zu]: %s: string ref %llu is not a NUL-terminated string inside STRINGS (%zu bytes)",
               section, index, field, (unsigned long long)ref, L->sec[SEC_STRINGS].size);
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A name that occurs twice in names[0..n) (which this sorts), or NULL. */
static const char *duplicate_name(const char **names, size_t n) {
    if (n < 2)
        return NULL;
    qsort(names, n, sizeof *names, compare_names);
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            return names[i];
    return NULL;
}

/* Size arithmetic that reports overflow instead of wrapping. */
static bool add_overflows(size_t a, size_t b, size_t *sum) {
    if (a > SIZE_MAX - b)
        return true;
    *sum = a + b;
    return false;
}

/* ---- header and section table ---- */

static bool ranges_overlap(size_t a, size_t a_size, size_t b, size_t b_size) {
    return a_size && b_size && a < b + b_size && b < a + a_size;
}

static ek_status_t read_sections(struct loader *L) {
    const uint8_t *d = L->data;
    if (L->size < HEADER_SIZE)
        return BAD("header: the model is %zu bytes, shorter than the %u-byte header", L->size, HEADER_SIZE);
    if (memcmp(d, "EDGEKIT\0", 8) != 0)
        return BAD("header: magic is not \"EDGEKIT\\0\" (not an .ekm model)");
    unsigned major = rd16(d + 8), minor = rd16(d + 10);
    if (major != EK_MODEL_FORMAT_MAJOR)
        return BAD("header: version_major %u is not supported: the file is .ekm %u.%u, this reader reads %u.x",
                   major, major, minor, EK_MODEL_FORMAT_MAJOR);
    uint32_t header_size = rd32(d + 12);
    if (header_size != HEADER_SIZE)
        return BAD("header: header_size %u is not %u", (unsigned)header_size, HEADER_SIZE);
    uint64_t file_size = rd64(d + 16);
    if (file_size != (uint64_t)L->size)
        return BAD("header: file_size %llu does not match the %zu bytes given (a truncated or padded file?)",
                   (unsigned long long)file_size, L->size);
    uint64_t table = rd64(d + 24);
    uint32_t count = rd32(d + 32), flags = rd32(d + 36);
    if (flags != 0)
        return BAD("header: flags 0x%x are unknown (must be 0)", (unsigned)flags);
    if (table % 8 || table < HEADER_SIZE)
        return BAD("header: section_table_offset %llu is not 8-aligned after the header",
                   (unsigned long long)table);
    if (table > L->size || count > (L->size - (size_t)table) / ENTRY_SIZE)
        return BAD("header: the section table (%u entries of %u bytes at offset %llu) is past the end of the "
                   "file (%zu bytes)",
                   (unsigned)count, ENTRY_SIZE, (unsigned long long)table, L->size);
    size_t table_size = (size_t)count * ENTRY_SIZE;

    bool present[SEC_LAST + 1] = {false};
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *e = d + (size_t)table + (size_t)i * ENTRY_SIZE;
        uint32_t kind = rd32(e), record_size = rd32(e + 4);
        uint64_t offset = rd64(e + 8), size = rd64(e + 16);
        const char *name = kind >= 1 && kind <= SEC_LAST ? section_defs[kind].name : "unknown kind";
        if (offset > L->size || size > L->size - (size_t)offset)
            return BAD("section table[%u] (%s): offset %llu + size %llu is past the end of the file (%zu bytes)",
                       (unsigned)i, name, (unsigned long long)offset, (unsigned long long)size, L->size);
        if (kind < 1 || kind > SEC_LAST)
            continue; /* a kind this reader does not know: skipped */
        if (present[kind])
            return BAD("section table[%u]: a second %s section (kind %u)", (unsigned)i, name, (unsigned)kind);
        present[kind] = true;
        if (record_size != section_defs[kind].record_size)
            return BAD("section table[%u] (%s): record_size %u is not %u", (unsigned)i, name,
                       (unsigned)record_size, (unsigned)section_defs[kind].record_size);
        unsigned align = kind == SEC_CONSTANTS ? 64 : 8;
        if (offset % align)
            return BAD("section table[%u] (%s): offset %llu is not %u-aligned", (unsigned)i, name,
                       (unsigned long long)offset, align);
        if (size % record_size)
            return BAD("section table[%u] (%s): size %llu is not a multiple of record_size %u", (unsigned)i,
                       name, (unsigned long long)size, (unsigned)record_size);
        if (ranges_overlap((size_t)offset, (size_t)size, 0, HEADER_SIZE) ||
            ranges_overlap((size_t)offset, (size_t)size, (size_t)table, table_size))
            return BAD("section table[%u] (%s): bytes %llu .. %llu overlap the header or the section table",
                       (unsigned)i, name, (unsigned long long)offset, (unsigned long long)(offset + size));
        L->sec[kind].offset = (size_t)offset;
        L->sec[kind].size = (size_t)size;
        L->sec[kind].count = (size_t)size / record_size;
    }
    if (present[SEC_OP_SOURCES] != present[SEC_SOURCE_NODES])
        return BAD("section table: %s without %s (the two come together)",
                   present[SEC_OP_SOURCES] ? "OP_SOURCES" : "SOURCE_NODES",
                   present[SEC_OP_SOURCES] ? "SOURCE_NODES" : "OP_SOURCES");
    L->has_sources = present[SEC_OP_SOURCES];
    for (int k = 1; k <= SEC_LAST; k++) {
        if (!present[k] && k <= SEC_REQUIRED_LAST)
            return BAD("section table: there is no %s section (kind %d)", section_defs[k].name, k);
        for (int j = 1; j < k; j++)
            if (ranges_overlap(L->sec[k].offset, L->sec[k].size, L->sec[j].offset, L->sec[j].size))
                return BAD("section table: sections %s (bytes %zu .. %zu) and %s (bytes %zu .. %zu) overlap",
                           section_defs[j].name, L->sec[j].offset, L->sec[j].offset + L->sec[j].size,
                           section_defs[k].name, L->sec[k].offset, L->sec[k].offset + L->sec[k].size);
    }
    if (L->sec[SEC_STRINGS].size == 0 || d[L->sec[SEC_STRINGS].offset] != 0)
        return BAD("STRINGS: byte 0 must be NUL (string ref 0 is \"\")");
    size_t bad_byte = utf8_invalid_at(d + L->sec[SEC_STRINGS].offset, L->sec[SEC_STRINGS].size);
    if (bad_byte != SIZE_MAX)
        return BAD("STRINGS: byte %zu is not valid UTF-8 (names must be UTF-8)", bad_byte);
    if (L->sec[SEC_NETWORKS].count == 0)
        return BAD("NETWORKS: the model has no network");
    if (L->has_sources) {
        if (L->sec[SEC_OP_SOURCES].count != L->sec[SEC_OPS].count)
            return BAD("OP_SOURCES: %zu records for %zu OPS records (one per op)", L->sec[SEC_OP_SOURCES].count,
                       L->sec[SEC_OPS].count);
        for (size_t i = 0; i < L->sec[SEC_SOURCE_NODES].count; i++) {
            uint32_t ref = rd32(record(L, SEC_SOURCE_NODES, i));
            if (!string_at(L, ref))
                return bad_string(L, "SOURCE_NODES", i, "node", ref);
        }
    }
    return EK_OK;
}

/* ---- networks, their IOS and STAGES records: ranges, ownership, slots ---- */

struct net_rec {
    const char *name;
    uint32_t inputs, outputs, stage_count, first_io, first_stage;
};

struct stage_rec {
    uint32_t network, first_tensor, tensor_count, first_op, op_count, first_binding;
    uint64_t arena_size;
};

struct op_rec {
    uint32_t name, type, first_operand, inputs, outputs, first_attr, attr_count;
};

static struct net_rec read_net(const struct loader *L, size_t n) {
    const uint8_t *r = record(L, SEC_NETWORKS, n);
    struct net_rec net = {string_at(L, rd32(r)), rd32(r + 4), rd32(r + 8), rd32(r + 12), rd32(r + 16),
                          rd32(r + 20)};
    return net;
}

static struct stage_rec read_stage(const struct loader *L, size_t s) {
    const uint8_t *r = record(L, SEC_STAGES, s);
    struct stage_rec st = {rd32(r), rd32(r + 4), rd32(r + 8), rd32(r + 12), rd32(r + 16), rd32(r + 20),
                           rd64(r + 24)};
    return st;
}

static struct op_rec read_op(const struct loader *L, size_t o) {
    const uint8_t *r = record(L, SEC_OPS, o);
    struct op_rec op = {rd32(r), rd16(r + 4), rd32(r + 8), rd16(r + 12), rd16(r + 14), rd32(r + 16),
                        rd32(r + 20)};
    return op;
}

/* Is [first, first + count) inside a section of `total` records? */
static bool range_ok(uint64_t first, uint64_t count, size_t total) {
    return first <= total && count <= total - first;
}

static ek_status_t check_network_records(struct loader *L, const char **names) {
    const size_t n_nets = L->sec[SEC_NETWORKS].count;
    for (size_t n = 0; n < n_nets; n++) {
        struct net_rec net = read_net(L, n);
        if (!net.name)
            return bad_string(L, "NETWORKS", n, "name", rd32(record(L, SEC_NETWORKS, n)));
        if (!net.name[0])
            return BAD("NETWORKS[%zu]: name is empty", n);
        names[n] = net.name;
        if (net.inputs < 1 || net.inputs > MAX_IOS)
            return BAD("NETWORKS[%zu] '" NM "': input_count %u is not within 1..%u", n, net.name,
                       (unsigned)net.inputs, MAX_IOS);
        if (net.outputs < 1 || net.outputs > MAX_IOS)
            return BAD("NETWORKS[%zu] '" NM "': output_count %u is not within 1..%u", n, net.name,
                       (unsigned)net.outputs, MAX_IOS);
        if (net.stage_count < 1)
            return BAD("NETWORKS[%zu] '" NM "': stage_count is 0", n, net.name);
        if (!range_ok(net.first_io, (uint64_t)net.inputs + net.outputs, L->sec[SEC_IOS].count))
            return BAD("NETWORKS[%zu] '" NM "': first_io %u + %u inputs + %u outputs is past IOS (%zu records)", n,
                       net.name, (unsigned)net.first_io, (unsigned)net.inputs, (unsigned)net.outputs,
                       L->sec[SEC_IOS].count);
        if (!range_ok(net.first_stage, net.stage_count, L->sec[SEC_STAGES].count))
            return BAD("NETWORKS[%zu] '" NM "': first_stage %u + stage_count %u is past STAGES (%zu records)", n,
                       net.name, (unsigned)net.first_stage, (unsigned)net.stage_count, L->sec[SEC_STAGES].count);

        /* IOS records: names unique within the network, dtypes known */
        const char *io_names[2 * MAX_IOS];
        uint32_t n_io = net.inputs + net.outputs;
        for (uint32_t k = 0; k < n_io; k++) {
            size_t index = (size_t)net.first_io + k;
            const uint8_t *r = record(L, SEC_IOS, index);
            const char *io_name = string_at(L, rd32(r));
            if (!io_name)
                return bad_string(L, "IOS", index, "name", rd32(r));
            if (!dtype_size(r[4]))
                return BAD("IOS[%zu] '" NM "' (network '" NM "'): dtype %u is not known", index, io_name, net.name,
                           (unsigned)r[4]);
            if (!fits_size(rd64(r + 16)))
                return BAD("IOS[%zu] '" NM "': max_bytes %llu is too large for this system", index, io_name,
                           (unsigned long long)rd64(r + 16));
            if (r[5] & ~1u)
                return BAD("IOS[%zu] '" NM "': flags 0x%x are unknown (bit 0 is DYNAMIC)", index, io_name,
                           (unsigned)r[5]);
            if ((r[5] & 1u) && k < net.inputs)
                return BAD("IOS[%zu] '" NM "': an input cannot be DYNAMIC (only outputs are)", index, io_name);
            if (r[4] == EK_DTYPE_INT8 || r[4] == EK_DTYPE_UINT8) { /* 1.5: real = (q - zero_point) x scale */
                float scale;
                uint32_t bits = rd32(r + 8);
                int32_t zp = (int32_t)rd32(r + 12);
                memcpy(&scale, &bits, sizeof scale);
                if (!(scale > 0.0f) || !isfinite(scale))
                    return BAD("IOS[%zu] '" NM "' (%s): scale %g must be finite and > 0", index, io_name,
                               dtype_name(r[4]), (double)scale);
                if (r[4] == EK_DTYPE_INT8 ? zp < -128 || zp > 127 : zp < 0 || zp > 255)
                    return BAD("IOS[%zu] '" NM "' (%s): zero_point %d is outside %s", index, io_name,
                               dtype_name(r[4]), (int)zp, r[4] == EK_DTYPE_INT8 ? "-128..127" : "0..255");
            }
            io_names[k] = io_name;
        }
        const char *dup = duplicate_name(io_names, n_io);
        if (dup)
            return BAD("IOS of network '" NM "': two inputs/outputs are named '" NM "'", net.name, dup);

        /* STAGES records: each names this network back; tensor and op ranges owned by one stage */
        for (uint32_t k = 0; k < net.stage_count; k++) {
            size_t s = (size_t)net.first_stage + k;
            struct stage_rec st = read_stage(L, s);
            if (st.network != n)
                return BAD("STAGES[%zu] (stage %u of network '" NM "'): network is %u, not %zu", s, (unsigned)k,
                           net.name, (unsigned)st.network, n);
            if (L->stage_slot[s] != NO_SLOT)
                return BAD("STAGES[%zu]: network '" NM "' lists the stage twice", s, net.name);
            if (!range_ok(st.first_tensor, st.tensor_count, L->sec[SEC_TENSORS].count))
                return BAD("STAGES[%zu] (stage %u of network '" NM "'): first_tensor %u + tensor_count %u is past "
                           "TENSORS (%zu records)",
                           s, (unsigned)k, net.name, (unsigned)st.first_tensor, (unsigned)st.tensor_count,
                           L->sec[SEC_TENSORS].count);
            if (!range_ok(st.first_op, st.op_count, L->sec[SEC_OPS].count))
                return BAD("STAGES[%zu] (stage %u of network '" NM "'): first_op %u + op_count %u is past OPS "
                           "(%zu records)",
                           s, (unsigned)k, net.name, (unsigned)st.first_op, (unsigned)st.op_count,
                           L->sec[SEC_OPS].count);
            if (!range_ok(st.first_binding, n_io, L->sec[SEC_BINDINGS].count))
                return BAD("STAGES[%zu] (stage %u of network '" NM "'): first_binding %u + %u inputs/outputs is "
                           "past BINDINGS (%zu records)",
                           s, (unsigned)k, net.name, (unsigned)st.first_binding, (unsigned)n_io,
                           L->sec[SEC_BINDINGS].count);
            if (!fits_size(st.arena_size))
                return BAD("STAGES[%zu] (stage %u of network '" NM "'): arena_size %llu is too large", s,
                           (unsigned)k, net.name, (unsigned long long)st.arena_size);
            L->stage_slot[s] = L->io_slots;
            if (add_overflows(L->io_slots, n_io, &L->io_slots))
                return BAD("STAGES: too many stages");
            if (st.tensor_count > L->max_tensors)
                L->max_tensors = st.tensor_count;
            /* op ranges of different stages must not overlap: claim each op record */
            for (uint32_t o = 0; o < st.op_count; o++) {
                size_t oi = (size_t)st.first_op + o;
                if (L->op_slot[oi] != NO_SLOT)
                    return BAD("STAGES[%zu] (stage %u of network '" NM "'): OPS[%zu] also belongs to another stage",
                               s, (unsigned)k, net.name, oi);
                struct op_rec op = read_op(L, oi);
                L->op_slot[oi] = L->operand_slots;
                if (add_overflows(L->operand_slots, (size_t)op.inputs + op.outputs, &L->operand_slots))
                    return BAD("OPS: too many operands");
            }
        }
    }
    const char *dup = duplicate_name(names, n_nets);
    if (dup)
        return BAD("NETWORKS: two networks are named '" NM "'", dup);
    return EK_OK;
}

struct range {
    size_t first, count, stage;
};

static int compare_ranges(const void *a, const void *b) {
    const struct range *x = a, *y = b;
    return x->first < y->first ? -1 : x->first > y->first;
}

/* Tensor ranges of different stages must not overlap: sort the loaded ranges by their start. */
static ek_status_t check_tensor_ranges(struct loader *L) {
    const size_t n_stages = L->sec[SEC_STAGES].count;
    size_t n = 0;
    for (size_t s = 0; s < n_stages; s++)
        n += L->stage_slot[s] != NO_SLOT;
    if (n < 2)
        return EK_OK;
    struct range *ranges = malloc(n * sizeof *ranges);
    if (!ranges)
        return OOM("stage ranges");
    n = 0;
    for (size_t s = 0; s < n_stages; s++) {
        if (L->stage_slot[s] == NO_SLOT)
            continue;
        struct stage_rec st = read_stage(L, s);
        struct range r = {st.first_tensor, st.tensor_count, s};
        ranges[n++] = r;
    }
    qsort(ranges, n, sizeof *ranges, compare_ranges);
    ek_status_t status = EK_OK;
    for (size_t i = 1; i < n; i++) {
        const struct range *p = &ranges[i - 1], *r = &ranges[i];
        if (p->count && r->count && r->first < p->first + p->count) {
            status = BAD("STAGES[%zu] and STAGES[%zu]: their TENSORS ranges %zu .. %zu and %zu .. %zu overlap",
                         p->stage, r->stage, p->first, p->first + p->count, r->first, r->first + r->count);
            break;
        }
    }
    free(ranges);
    return status;
}

/* ---- building: tensors, bindings, ops ---- */

/* "stage K of network 'NAME'" for messages */
struct where {
    char text[112];
};

static struct where stage_where(uint32_t k, const char *net_name) {
    struct where w;
    snprintf(w.text, sizeof w.text, "stage %u of network '%.64s'", (unsigned)k, net_name);
    return w;
}

static ek_status_t build_tensor(struct loader *L, size_t index, const struct net_rec *net,
                                const struct stage_rec *st, const char *where) {
    const uint8_t *r = record(L, SEC_TENSORS, index);
    struct ek_tensor_desc *t = &L->a->tensors[index];
    const char *name = string_at(L, rd32(r));
    if (!name)
        return bad_string(L, "TENSORS", index, "name", rd32(r));
    unsigned dtype = r[4], storage = r[5], rank = r[6], flags = r[7];
    uint32_t io_index = rd32(r + 8);
    uint64_t offset = rd64(r + 16), nbytes = rd64(r + 24);
    size_t elem = dtype_size(dtype);
    if (!elem)
        return BAD("TENSORS[%zu] '" NM "' (%s): dtype %u is not known", index, name, where, dtype);
    if (storage > EK_STORAGE_OUTPUT)
        return BAD("TENSORS[%zu] '" NM "' (%s): storage %u is not known", index, name, where, storage);
    if (rank > EK_MAX_DIMS)
        return BAD("TENSORS[%zu] '" NM "' (%s): rank %u is above %d", index, name, where, rank, EK_MAX_DIMS);
    if (flags & ~1u)
        return BAD("TENSORS[%zu] '" NM "' (%s): flags 0x%x are unknown (bit 0 is DYNAMIC)", index, name, where,
                   flags);
    if ((flags & 1u) && storage != EK_STORAGE_OUTPUT)
        return BAD("TENSORS[%zu] '" NM "' (%s): a DYNAMIC tensor must be an OUTPUT, not %s", index, name, where,
                   storage_names[storage]);
    size_t count = 1;
    for (unsigned i = 0; i < EK_MAX_DIMS; i++) {
        int64_t dim = (int64_t)rd64(r + 32 + 8 * i);
        if (i >= rank) {
            if (dim != 0)
                return BAD("TENSORS[%zu] '" NM "' (%s): dims[%u] is %lld past rank %u (must be 0)", index, name,
                           where, i, (long long)dim, rank);
            t->dims[i] = 0;
            continue;
        }
        if (dim < 1)
            return BAD("TENSORS[%zu] '" NM "' (%s): dims[%u] is %lld (must be >= 1)", index, name, where, i,
                       (long long)dim);
        if ((uint64_t)dim > SIZE_MAX / count)
            return BAD("TENSORS[%zu] '" NM "' (%s): the element count overflows at dims[%u]", index, name, where, i);
        count *= (size_t)dim;
        t->dims[i] = dim;
    }
    if (count > SIZE_MAX / elem || (uint64_t)(count * elem) != nbytes)
        return BAD("TENSORS[%zu] '" NM "' (%s): nbytes %llu is not %zu elements x %zu bytes", index, name, where,
                   (unsigned long long)nbytes, count, elem);
    t->name = name;
    t->dtype = (ek_dtype_t)dtype;
    t->rank = (int)rank;
    t->count = count;
    t->nbytes = (size_t)nbytes;
    t->storage = (enum ek_storage)storage;
    t->io_index = io_index;
    t->offset = 0;
    t->constant = NULL;
    t->dynamic = (flags & 1u) != 0;

    if (storage == EK_STORAGE_INPUT || storage == EK_STORAGE_OUTPUT) {
        uint32_t limit = storage == EK_STORAGE_INPUT ? net->inputs : net->outputs;
        if (io_index >= limit)
            return BAD("TENSORS[%zu] '" NM "' (%s): io_index %u is not one of the network's %u %ss", index, name,
                       where, (unsigned)io_index, (unsigned)limit,
                       storage == EK_STORAGE_INPUT ? "input" : "output");
        size_t io_rec = (size_t)net->first_io + (storage == EK_STORAGE_INPUT ? 0 : net->inputs) + io_index;
        const ek_io_info_t *io = &L->a->ios[io_rec];
        if (t->dynamic != io->dynamic)
            return BAD("TENSORS[%zu] '" NM "' (%s): %s DYNAMIC, but output '" NM "' (IOS[%zu]) %s", index, name, where,
                       t->dynamic ? "is" : "is not", io->name, io_rec, io->dynamic ? "is" : "is not");
        if (t->dynamic) { /* the op writes it in the arena; launches copy what it wrote out */
            if (offset % 64 || offset > st->arena_size || nbytes > st->arena_size - offset)
                return BAD("TENSORS[%zu] '" NM "' (%s): a DYNAMIC output's offset %llu + %llu bytes must be "
                           "64-aligned within the arena (%llu bytes)", index, name, where,
                           (unsigned long long)offset, (unsigned long long)nbytes,
                           (unsigned long long)st->arena_size);
            t->offset = (size_t)offset;
        } else if (offset != 0) {
            return BAD("TENSORS[%zu] '" NM "' (%s): offset %llu of an %s tensor (must be 0)", index, name, where,
                       (unsigned long long)offset, storage_names[storage]);
        }
        if (io->dtype != t->dtype)
            return BAD("TENSORS[%zu] '" NM "' (%s): dtype %s differs from %s '" NM "' (IOS[%zu]), which is %s", index,
                       name, where, dtype_name(t->dtype), storage == EK_STORAGE_INPUT ? "input" : "output",
                       io->name, io_rec, dtype_name(io->dtype));
        if (t->nbytes > io->max_bytes)
            return BAD("TENSORS[%zu] '" NM "' (%s): %zu bytes exceed max_bytes %zu of '" NM "' (IOS[%zu])", index, name,
                       where, t->nbytes, io->max_bytes, io->name, io_rec);
        return EK_OK;
    }
    if (io_index != 0)
        return BAD("TENSORS[%zu] '" NM "' (%s): io_index %u of an %s tensor (must be 0)", index, name, where,
                   (unsigned)io_index, storage_names[storage]);
    if (offset % 64)
        return BAD("TENSORS[%zu] '" NM "' (%s): offset %llu is not 64-aligned", index, name, where,
                   (unsigned long long)offset);
    if (storage == EK_STORAGE_ARENA) {
        if (offset > st->arena_size || nbytes > st->arena_size - offset)
            return BAD("TENSORS[%zu] '" NM "': offset %llu + %llu bytes is past the arena (%llu bytes) of %s", index,
                       name, (unsigned long long)offset, (unsigned long long)nbytes,
                       (unsigned long long)st->arena_size, where);
        t->offset = (size_t)offset;
    } else {
        const struct section *c = &L->sec[SEC_CONSTANTS];
        if (offset > c->size || nbytes > c->size - offset)
            return BAD("TENSORS[%zu] '" NM "' (%s): offset %llu + %llu bytes is past CONSTANTS (%zu bytes)", index,
                       name, where, (unsigned long long)offset, (unsigned long long)nbytes, c->size);
        t->constant = L->data + c->offset + (size_t)offset;
    }
    return EK_OK;
}

static bool shapes_equal(const ek_shape_t *a, const ek_shape_t *b) {
    if (a->num_dims != b->num_dims)
        return false;
    for (int i = 0; i < a->num_dims; i++)
        if (a->dims[i] != b->dims[i])
            return false;
    return true;
}

static void shape_of(const struct ek_tensor_desc *t, ek_shape_t *shape) {
    memset(shape, 0, sizeof *shape);
    shape->num_dims = t->rank;
    for (int i = 0; i < t->rank; i++)
        shape->dims[i] = t->dims[i];
}

static ek_status_t build_bindings(struct loader *L, size_t s, const struct net_rec *net,
                                  const struct stage_rec *st, const char *where) {
    struct model_arrays *a = L->a;
    size_t slot = L->stage_slot[s];
    uint32_t n_io = net->inputs + net->outputs;
    const struct ek_tensor_desc *tensors = a->tensors + st->first_tensor;
    for (uint32_t k = 0; k < n_io; k++) {
        size_t b = (size_t)st->first_binding + k;
        uint32_t index = rd32(record(L, SEC_BINDINGS, b));
        bool is_input = k < net->inputs;
        uint32_t io = is_input ? k : k - net->inputs;
        const char *io_name = a->ios[(size_t)net->first_io + k].name;
        if (index >= st->tensor_count)
            return BAD("BINDINGS[%zu] (%s '" NM "' of %s): tensor %u is not one of the stage's %u tensors", b,
                       is_input ? "input" : "output", io_name, where, (unsigned)index, (unsigned)st->tensor_count);
        const struct ek_tensor_desc *t = &tensors[index];
        enum ek_storage want = is_input ? EK_STORAGE_INPUT : EK_STORAGE_OUTPUT;
        if (t->storage != want || t->io_index != io)
            return BAD("BINDINGS[%zu] (%s %u '" NM "' of %s): TENSORS[%zu] '" NM "' is %s %u, not %s %u", b,
                       is_input ? "input" : "output", (unsigned)io, io_name, where,
                       (size_t)st->first_tensor + index, t->name, storage_names[t->storage], (unsigned)t->io_index,
                       storage_names[want], (unsigned)io);
        a->bound[slot + k] = t;
        shape_of(t, &a->shapes[slot + k]);
    }
    /* exactly one tensor per input/output: every INPUT/OUTPUT tensor is the bound one */
    for (uint32_t i = 0; i < st->tensor_count; i++) {
        const struct ek_tensor_desc *t = &tensors[i];
        if (t->storage != EK_STORAGE_INPUT && t->storage != EK_STORAGE_OUTPUT)
            continue;
        size_t k = (t->storage == EK_STORAGE_INPUT ? 0 : net->inputs) + t->io_index;
        if (a->bound[slot + k] != t)
            return BAD("TENSORS[%zu] '" NM "' (%s): a second %s tensor for %s %u (BINDINGS names another)",
                       (size_t)st->first_tensor + i, t->name, where, storage_names[t->storage],
                       t->storage == EK_STORAGE_INPUT ? "input" : "output", (unsigned)t->io_index);
    }
    return EK_OK;
}

static ek_status_t build_attr(struct loader *L, size_t index, const struct ek_op *op, size_t op_index) {
    const uint8_t *r = record(L, SEC_ATTRS, index);
    struct ek_attr *attr = &L->a->attrs[index];
    const char *name = string_at(L, rd32(r));
    if (!name)
        return bad_string(L, "ATTRS", index, "name", rd32(r));
    unsigned type = r[4];
    uint32_t count = rd32(r + 8);
    uint64_t value = rd64(r + 16);
    const struct section *ad = &L->sec[SEC_ATTR_DATA];
    memset(attr, 0, sizeof *attr);
    attr->name = name;
    attr->type = (enum ek_attr_type)type;
    attr->count = count;
    switch (type) {
    case EK_ATTR_INT:
    case EK_ATTR_FLOAT:
    case EK_ATTR_STRING:
        if (count != 1)
            return BAD("ATTRS[%zu] '" NM "' of OPS[%zu] '" NM "': count %u of a single value (must be 1)", index,
                       name, op_index, op->name, (unsigned)count);
        if (type == EK_ATTR_INT) {
            attr->i = (int64_t)value;
        } else if (type == EK_ATTR_FLOAT) {
            uint32_t bits = (uint32_t)value;
            memcpy(&attr->f, &bits, sizeof attr->f);
        } else {
            attr->s = string_at(L, value);
            if (!attr->s)
                return BAD("ATTRS[%zu] '" NM "' of OPS[%zu] '" NM "': value: string ref %llu is not a NUL-terminated "
                           "string inside STRINGS (%zu bytes)",
                           index, name, op_index, op->name, (unsigned long long)value, L->sec[SEC_STRINGS].size);
        }
        return EK_OK;
    case EK_ATTR_INTS:
    case EK_ATTR_FLOATS: {
        size_t elem = type == EK_ATTR_INTS ? sizeof(int64_t) : sizeof(float);
        if (count > MAX_ARRAY_ATTR)
            return BAD("ATTRS[%zu] '" NM "' of OPS[%zu] '" NM "': count %u is above %u", index, name, op_index,
                       op->name, (unsigned)count, MAX_ARRAY_ATTR);
        if (value % 8)
            return BAD("ATTRS[%zu] '" NM "' of OPS[%zu] '" NM "': value: ATTR_DATA offset %llu is not 8-aligned",
                       index, name, op_index, op->name, (unsigned long long)value);
        if (value > ad->size || (size_t)count * elem > ad->size - (size_t)value)
            return BAD("ATTRS[%zu] '" NM "' of OPS[%zu] '" NM "': value: %u elements at offset %llu are past "
                       "ATTR_DATA (%zu bytes)",
                       index, name, op_index, op->name, (unsigned)count, (unsigned long long)value, ad->size);
        const void *p = L->data + ad->offset + (size_t)value;
        if (type == EK_ATTR_INTS)
            attr->ints = p;
        else
            attr->floats = p;
        return EK_OK;
    }
    default:
        return BAD("ATTRS[%zu] '" NM "' of OPS[%zu] '" NM "': type %u is not known", index, name, op_index, op->name,
                   type);
    }
}

/* Only the inputs of the ops whose table entry marks them optional ("bias[M]?", NON_MAX_SUPPRESSION's
 * max_output_boxes_per_class? ...) may be absent. */
static bool may_be_absent(int type, int input, const struct ek_kernel *kernel) {
    bool has_optional = type == EK_OP_CONV || type == EK_OP_CONV_TRANSPOSE || type == EK_OP_FULLY_CONNECTED ||
                        type == EK_OP_NON_MAX_SUPPRESSION || type == EK_OP_QCONV || type == EK_OP_QFULLY_CONNECTED;
    return has_optional && input >= kernel->min_inputs;
}

/* OP_SOURCES[index] of a built op: 24 bytes, u32 tensor (string ref), u32 first_node, u32 node_count
 * (SOURCE_NODES), u8 layout (0: as ONNX, 1: permuted), u8[3] reserved, u8[8] perm. */
static ek_status_t build_source(struct loader *L, size_t index, const struct ek_op *op, const char *where) {
    const uint8_t *r = record(L, SEC_OP_SOURCES, index);
    struct ek_op_source *src = &L->a->sources[index];
    uint32_t tensor = rd32(r), first = rd32(r + 4), count = rd32(r + 8);
    unsigned layout = r[12];
    const char *name = string_at(L, tensor);
    if (!name)
        return bad_string(L, "OP_SOURCES", index, "tensor", tensor);
    if (!range_ok(first, count, L->sec[SEC_SOURCE_NODES].count))
        return BAD("OP_SOURCES[%zu] (op '" NM "', %s): first_node %u + node_count %u is past SOURCE_NODES (%zu "
                   "records)",
                   index, op->name, where, (unsigned)first, (unsigned)count, L->sec[SEC_SOURCE_NODES].count);
    if (layout > 1)
        return BAD("OP_SOURCES[%zu] (op '" NM "', %s): layout %u is not known (0 or 1)", index, op->name, where,
                   layout);
    int rank = op->n_out > 0 ? op->out[0]->rank : 0;
    bool seen[EK_MAX_DIMS] = {false};
    for (int d = 0; d < EK_MAX_DIMS; d++) {
        unsigned p = r[16 + d];
        if (!layout || d >= rank) {
            if (p != 0)
                return BAD("OP_SOURCES[%zu] (op '" NM "', %s): perm[%d] is %u (must be 0 %s)", index, op->name, where,
                           d, p, layout ? "past the output's rank" : "when layout is 0");
            continue;
        }
        if ((int)p >= rank || seen[p])
            return BAD("OP_SOURCES[%zu] (op '" NM "', %s): perm is not a permutation of the output's %d axes "
                       "(perm[%d] is %u)",
                       index, op->name, where, rank, d, p);
        seen[p] = true;
        src->perm[d] = (uint8_t)p;
    }
    src->tensor = name;
    src->nodes = L->a->source_nodes + first;
    src->node_count = count;
    src->permuted = layout == 1;
    return EK_OK;
}

/* The dtypes an op's operand may have, as a mask of (1 << dtype) (docs/model-format.md, the op table):
 * float32, except the int64 operands of TOP_K (K, Indices) and NON_MAX_SUPPRESSION
 * (max_output_boxes_per_class, selected_indices), the quantized ops of 1.5, and the data-movement ops,
 * which take all float32 or all int8 operands: `first` is the dtype of the op's input 0 (which decides),
 * or 0 for input 0 itself. */
#define DT(d) (1u << (d))
static bool movement_op(uint32_t type) {
    return type == EK_OP_MAX_POOL || type == EK_OP_TRANSPOSE || type == EK_OP_RESHAPE || type == EK_OP_CONCAT ||
           type == EK_OP_SLICE || type == EK_OP_RESIZE;
}

static unsigned operand_dtypes(uint32_t type, bool is_input, uint32_t n, unsigned first) {
    const unsigned f32 = DT(EK_DTYPE_FLOAT32), i8 = DT(EK_DTYPE_INT8), q8 = DT(EK_DTYPE_INT8) | DT(EK_DTYPE_UINT8);
    switch (type) {
    case EK_OP_TOP_K:
        return n == 1 ? DT(EK_DTYPE_INT64) : f32;
    case EK_OP_NON_MAX_SUPPRESSION:
        return (is_input && n == 2) || !is_input ? DT(EK_DTYPE_INT64) : f32;
    case EK_OP_QUANTIZE:
        return is_input ? f32 : q8;
    case EK_OP_DEQUANTIZE:
        return is_input ? q8 : f32;
    case EK_OP_QCONV:
    case EK_OP_QFULLY_CONNECTED: /* X, W int8; w_scale float32; bias int32; Y int8 */
        return !is_input || n < 2 ? i8 : n == 2 ? f32 : DT(EK_DTYPE_INT32);
    case EK_OP_QADD:
    case EK_OP_QMUL:
    case EK_OP_QAVERAGE_POOL:
    case EK_OP_QGLOBAL_AVERAGE_POOL:
        return i8;
    case EK_OP_QLUT: /* the table's dtype is Y's (checked with both known) */
        return q8;
    default:
        break;
    }
    if (movement_op(type)) {
        if (is_input && n == 0)
            return f32 | i8;
        return first == EK_DTYPE_INT8 ? i8 : f32;
    }
    return f32;
}

static const char *dtypes_text(unsigned mask, char *buf, size_t size) {
    size_t used = 0;
    buf[0] = 0;
    for (unsigned d = 1; d <= EK_DTYPE_INT64 && used < size; d++)
        if (mask & DT(d))
            used += (size_t)snprintf(buf + used, size - used, "%s%s", used ? " or " : "", dtype_name(d));
    return buf;
}

static ek_status_t build_op(struct loader *L, size_t index, uint32_t position, const struct stage_rec *st,
                            const char *where) {
    struct model_arrays *a = L->a;
    struct op_rec rec = read_op(L, index);
    struct ek_op *op = &a->ops[index];
    const char *name = string_at(L, rec.name);
    if (!name)
        return bad_string(L, "OPS", index, "name", rec.name);
    if (rec.type < 1 || rec.type > EK_OP_TYPE_MAX)
        return BAD("OPS[%zu] '" NM "' (%s): unknown op code %u (this reader knows 1..%d; the model needs a newer "
                   "EdgeKit)",
                   index, name, where, (unsigned)rec.type, EK_OP_TYPE_MAX);
    const char *type_name = ek_op_type_name((int)rec.type);
    const struct ek_kernel *kernel = ek_portable_kernel((int)rec.type);
    if (!kernel)
        return BAD("OPS[%zu] '" NM "' (%s): op code %u (%s) has no kernel in this build", index, name, where,
                   (unsigned)rec.type, type_name);
    if ((int)rec.inputs < kernel->min_inputs || (int)rec.inputs > kernel->max_inputs)
        return BAD("OPS[%zu] '" NM "' (%s, %s): input_count %u is not within %d..%d", index, name, type_name, where,
                   (unsigned)rec.inputs, kernel->min_inputs, kernel->max_inputs);
    bool plugin = rec.type == EK_OP_PLUGIN; /* its counts are the plugin's, checked by ek_plugin_prepare */
    if (plugin ? rec.outputs < 1 || rec.outputs > 16 : (int)rec.outputs != kernel->outputs)
        return BAD("OPS[%zu] '" NM "' (%s, %s): output_count %u is not %d", index, name, type_name, where,
                   (unsigned)rec.outputs, kernel->outputs);
    if (!range_ok(rec.first_operand, (uint64_t)rec.inputs + rec.outputs, L->sec[SEC_OPERANDS].count))
        return BAD("OPS[%zu] '" NM "' (%s, %s): first_operand %u + %u operands is past OPERANDS (%zu records)", index,
                   name, type_name, where, (unsigned)rec.first_operand, (unsigned)(rec.inputs + rec.outputs),
                   L->sec[SEC_OPERANDS].count);
    if (!range_ok(rec.first_attr, rec.attr_count, L->sec[SEC_ATTRS].count) || rec.attr_count > INT_MAX)
        return BAD("OPS[%zu] '" NM "' (%s, %s): first_attr %u + attr_count %u is past ATTRS (%zu records)", index,
                   name, type_name, where, (unsigned)rec.first_attr, (unsigned)rec.attr_count,
                   L->sec[SEC_ATTRS].count);

    const struct ek_tensor_desc **ptrs = a->operands + L->op_slot[index];
    const struct ek_tensor_desc *tensors = a->tensors + st->first_tensor;
    memset(op, 0, sizeof *op);
    op->type = (enum ek_op_type)rec.type;
    op->name = name;
    op->n_in = (int)rec.inputs;
    op->n_out = (int)rec.outputs;
    op->in = ptrs;
    op->out = ptrs + rec.inputs;
    op->n_attrs = (int)rec.attr_count;
    op->attrs = a->attrs + rec.first_attr;

    for (uint32_t k = 0; k < rec.inputs + rec.outputs; k++) {
        size_t operand = (size_t)rec.first_operand + k;
        uint32_t ti = rd32(record(L, SEC_OPERANDS, operand));
        bool is_input = k < rec.inputs;
        uint32_t n = is_input ? k : k - rec.inputs;
        const char *role = is_input ? "input" : "output";
        if (ti == ABSENT && is_input && may_be_absent((int)rec.type, (int)k, kernel)) {
            ptrs[k] = NULL;
            continue;
        }
        if (ti == ABSENT)
            return BAD("OPS[%zu] '" NM "' (%s, %s): %s %u (OPERANDS[%zu]) is absent, but it is not optional", index,
                       name, type_name, where, role, (unsigned)n, operand);
        if (ti >= st->tensor_count)
            return BAD("OPS[%zu] '" NM "' (%s, %s): %s %u (OPERANDS[%zu]) is tensor %u, not one of the stage's %u "
                       "tensors",
                       index, name, type_name, where, role, (unsigned)n, operand, (unsigned)ti,
                       (unsigned)st->tensor_count);
        const struct ek_tensor_desc *t = &tensors[ti];
        size_t tr = (size_t)st->first_tensor + ti;
        /* the kernels compute in float32 but for the int64 operands of TOP_K and NMS, the quantized ops'
         * operands and the int8 data movement */
        unsigned first = k > 0 && ptrs[0] ? (unsigned)ptrs[0]->dtype : 0;
        unsigned want = operand_dtypes(rec.type, is_input, n, first);
        if (!(want & DT(t->dtype))) {
            char text[64];
            return BAD("OPS[%zu] '" NM "' (%s, %s): %s %u is TENSORS[%zu] '" NM "' of dtype %s (it must be %s%s)",
                       index, name, type_name, where, role, (unsigned)n, tr, t->name, dtype_name(t->dtype),
                       dtypes_text(want, text, sizeof text),
                       movement_op(rec.type) && k > 0 ? ", as input 0 is" : "");
        }
        if (rec.type == EK_OP_QLUT && !is_input && rec.inputs > 1 && ptrs[1] && ptrs[1]->dtype != t->dtype)
            return BAD("OPS[%zu] '" NM "' (%s, %s): output 0 is TENSORS[%zu] '" NM "' of dtype %s, but its table "
                       "(input 1, '" NM "') is %s (they must be equal)",
                       index, name, type_name, where, tr, t->name, dtype_name(t->dtype), ptrs[1]->name,
                       dtype_name(ptrs[1]->dtype));
        if (is_input && t->dynamic)
            return BAD("OPS[%zu] '" NM "' (%s, %s): input %u reads TENSORS[%zu] '" NM "', a DYNAMIC output (no op may)",
                       index, name, type_name, where, (unsigned)n, tr, t->name);
        bool produced = t->storage == EK_STORAGE_ARENA || t->storage == EK_STORAGE_OUTPUT;
        if (is_input) {
            if (produced && L->writer[ti] == NONE)
                return BAD("OPS[%zu] '" NM "' (%s, %s): input %u reads TENSORS[%zu] '" NM "' before any op writes it",
                           index, name, type_name, where, (unsigned)n, tr, t->name);
            L->last_read[ti] = position;
        } else {
            if (!produced)
                return BAD("OPS[%zu] '" NM "' (%s, %s): output %u writes TENSORS[%zu] '" NM "', an %s tensor", index,
                           name, type_name, where, (unsigned)n, tr, t->name, storage_names[t->storage]);
            if (L->writer[ti] != NONE)
                return BAD("OPS[%zu] '" NM "' (%s, %s): output %u writes TENSORS[%zu] '" NM "', which OPS[%zu] "
                           "already wrote",
                           index, name, type_name, where, (unsigned)n, tr, t->name,
                           (size_t)st->first_op + L->writer[ti]);
            L->writer[ti] = position;
        }
        ptrs[k] = t;
    }

    const char *names[64];
    const char **attr_names = rec.attr_count <= 64 ? names : malloc(rec.attr_count * sizeof *attr_names);
    if (!attr_names)
        return OOM("attribute names");
    ek_status_t status = EK_OK;
    for (uint32_t k = 0; k < rec.attr_count && status == EK_OK; k++) {
        status = build_attr(L, (size_t)rec.first_attr + k, op, index);
        attr_names[k] = op->attrs[k].name;
    }
    const char *dup = status == EK_OK ? duplicate_name(attr_names, rec.attr_count) : NULL;
    if (attr_names != names)
        free((void *)attr_names);
    if (status != EK_OK)
        return status;
    if (dup)
        return BAD("OPS[%zu] '" NM "' (%s, %s): two attributes are named '" NM "'", index, name, type_name, where, dup);

    status = plugin ? ek_plugin_prepare(op, L->plugins) : kernel->prepare(op);
    if (status != EK_OK) {
        /* the kernel's message names the op; add where it is in the file */
        char message[400];
        snprintf(message, sizeof message, "%s", ek_last_error());
        /* prepare() may have set params before it failed */
        if (op->params && kernel->release)
            kernel->release(op);
        op->params = NULL;
        return ek_fail(status, "OPS[%zu] (%s): %s", index, where, message);
    }
    a->prepared[index] = kernel;
    return L->has_sources ? build_source(L, index, op, where) : EK_OK;
}

/* The static memory plan: an op's ARENA outputs overlap no ARENA tensor that is live when the op runs
 * (its inputs, and every tensor written earlier and read by this op or a later one). */
static ek_status_t check_plan(struct loader *L, const struct stage_rec *st, const char *where) {
    struct model_arrays *a = L->a;
    const struct ek_tensor_desc *tensors = a->tensors + st->first_tensor;
    uint32_t n_live = 0;
    for (uint32_t k = 0; k < st->op_count; k++) {
        const struct ek_op *op = &a->ops[(size_t)st->first_op + k];
        for (int j = 0; j < op->n_out; j++) {
            const struct ek_tensor_desc *o = op->out[j];
            if (o->storage != EK_STORAGE_ARENA && !o->dynamic) /* a DYNAMIC output lives in the arena too */
                continue;
            for (uint32_t l = 0; l < n_live; l++) {
                const struct ek_tensor_desc *t = &tensors[L->live[l]];
                if (!ranges_overlap(o->offset, o->nbytes, t->offset, t->nbytes))
                    continue;
                bool same_op = L->writer[L->live[l]] == k;
                return BAD("TENSORS[%zu] '" NM "' (arena bytes %zu .. %zu of %s) overlaps TENSORS[%zu] '" NM
                           "' (bytes %zu .. %zu), which %s",
                           (size_t)(o - a->tensors), o->name, o->offset, o->offset + o->nbytes, where,
                           (size_t)(t - a->tensors), t->name, t->offset, t->offset + t->nbytes,
                           same_op ? "the same op writes" : "is still live when it is written");
            }
            L->live[n_live++] = (uint32_t)(o - tensors);
        }
        /* drop the tensors whose last reader is this op (or that no op reads); DYNAMIC outputs stay to the
         * end, when the launch copies them out */
        uint32_t kept = 0;
        for (uint32_t l = 0; l < n_live; l++) {
            uint32_t ti = L->live[l];
            if ((L->last_read[ti] != NONE && L->last_read[ti] > k) || tensors[ti].dynamic)
                L->live[kept++] = ti;
        }
        n_live = kept;
    }
    return EK_OK;
}

static ek_status_t build_stage(struct loader *L, size_t s, uint32_t k, const struct net_rec *net) {
    struct model_arrays *a = L->a;
    struct stage_rec st = read_stage(L, s);
    struct where w = stage_where(k, net->name);
    ek_status_t status;
    for (uint32_t i = 0; i < st.tensor_count; i++)
        if ((status = build_tensor(L, (size_t)st.first_tensor + i, net, &st, w.text)) != EK_OK)
            return status;
    if ((status = build_bindings(L, s, net, &st, w.text)) != EK_OK)
        return status;

    for (uint32_t i = 0; i < st.tensor_count; i++)
        L->writer[i] = L->last_read[i] = NONE;
    struct ek_stage *stage = &a->stages[s];
    size_t scratch = 0;
    for (uint32_t i = 0; i < st.op_count; i++) {
        size_t index = (size_t)st.first_op + i;
        if ((status = build_op(L, index, i, &st, w.text)) != EK_OK)
            return status;
        if (a->ops[index].scratch_per_thread > scratch)
            scratch = a->ops[index].scratch_per_thread;
    }
    for (uint32_t i = 0; i < st.tensor_count; i++) {
        const struct ek_tensor_desc *t = &a->tensors[(size_t)st.first_tensor + i];
        if ((t->storage == EK_STORAGE_ARENA || t->storage == EK_STORAGE_OUTPUT) && L->writer[i] == NONE)
            return BAD("TENSORS[%zu] '" NM "' (%s, %s): no op writes it", (size_t)st.first_tensor + i, t->name,
                       storage_names[t->storage], w.text);
    }
    if ((status = check_plan(L, &st, w.text)) != EK_OK)
        return status;

    size_t slot = L->stage_slot[s];
    stage->tensors = a->tensors + st.first_tensor;
    stage->tensor_count = st.tensor_count;
    stage->ops = a->ops + st.first_op;
    stage->op_count = st.op_count;
    stage->sources = L->has_sources ? a->sources + st.first_op : NULL;
    stage->input_tensors = a->bound + slot;
    stage->output_tensors = a->bound + slot + net->inputs;
    stage->arena_size = (size_t)st.arena_size;
    stage->scratch_per_thread = scratch;
    stage->engine = NULL;
    a->stage_infos[s].input_shapes = a->shapes + slot;
    a->stage_infos[s].output_shapes = a->shapes + slot + net->inputs;
    return EK_OK;
}

struct stage_key {
    const ek_shape_t *shapes;
    uint32_t count, stage;
};

static int compare_stage_keys(const void *a, const void *b) {
    const struct stage_key *x = a, *y = b;
    for (uint32_t i = 0; i < x->count; i++) {
        const ek_shape_t *p = &x->shapes[i], *q = &y->shapes[i];
        if (p->num_dims != q->num_dims)
            return p->num_dims < q->num_dims ? -1 : 1;
        for (int d = 0; d < p->num_dims; d++)
            if (p->dims[d] != q->dims[d])
                return p->dims[d] < q->dims[d] ? -1 : 1;
    }
    return x->stage < y->stage ? -1 : x->stage > y->stage;
}

/* A launch picks the stage whose input shapes equal the inputs': two equal stages are ambiguous. */
static ek_status_t check_stage_shapes(const struct loader *L, const struct net_rec *net) {
    if (net->stage_count < 2)
        return EK_OK;
    struct stage_key *keys = malloc((size_t)net->stage_count * sizeof *keys);
    if (!keys)
        return OOM("stage shapes");
    for (uint32_t k = 0; k < net->stage_count; k++) {
        struct stage_key key = {L->a->shapes + L->stage_slot[(size_t)net->first_stage + k], net->inputs, k};
        keys[k] = key;
    }
    qsort(keys, net->stage_count, sizeof *keys, compare_stage_keys);
    ek_status_t status = EK_OK;
    for (uint32_t k = 1; k < net->stage_count; k++) {
        bool same = true;
        for (uint32_t i = 0; i < net->inputs && same; i++)
            same = shapes_equal(&keys[k - 1].shapes[i], &keys[k].shapes[i]);
        if (same) {
            status = BAD("STAGES[%zu] and STAGES[%zu] (stages %u and %u of network '" NM "') have the same input "
                         "shapes",
                         (size_t)net->first_stage + keys[k - 1].stage, (size_t)net->first_stage + keys[k].stage,
                         (unsigned)keys[k - 1].stage, (unsigned)keys[k].stage, net->name);
            break;
        }
    }
    free(keys);
    return status;
}

static ek_status_t build_network(struct loader *L, size_t n) {
    struct model_arrays *a = L->a;
    struct net_rec net = read_net(L, n);
    struct ek_network *network = &L->model->networks[n];
    uint32_t n_io = net.inputs + net.outputs;
    for (uint32_t k = 0; k < n_io; k++) {
        size_t index = (size_t)net.first_io + k;
        const uint8_t *r = record(L, SEC_IOS, index);
        ek_io_info_t *io = &a->ios[index];
        uint32_t scale_bits = rd32(r + 8);
        io->name = string_at(L, rd32(r));
        io->dtype = (ek_dtype_t)r[4];
        memcpy(&io->scale, &scale_bits, sizeof io->scale);
        io->zero_point = (int32_t)rd32(r + 12);
        io->max_bytes = (size_t)rd64(r + 16);
        io->dynamic = (r[5] & 1u) != 0;
    }
    ek_status_t status;
    for (uint32_t k = 0; k < net.stage_count; k++)
        if ((status = build_stage(L, (size_t)net.first_stage + k, k, &net)) != EK_OK)
            return status;
    if ((status = check_stage_shapes(L, &net)) != EK_OK)
        return status;
    network->ios = a->ios + net.first_io;
    network->stage_infos = a->stage_infos + net.first_stage;
    network->stage_shapes = a->shapes + L->stage_slot[net.first_stage];
    network->stages = a->stages + net.first_stage;
    network->model = L->model;
    network->info.name = net.name;
    network->info.input_count = (int)net.inputs;
    network->info.inputs = network->ios;
    network->info.output_count = (int)net.outputs;
    network->info.outputs = network->ios + net.inputs;
    network->info.stage_count = (int)net.stage_count;
    network->info.stages = network->stage_infos;
    return EK_OK;
}

/* ---- allocation and release ---- */

static void free_arrays(struct model_arrays *a) {
    if (!a)
        return;
    if (a->prepared) {
        for (size_t i = 0; i < a->op_count; i++)
            if (a->prepared[i] && a->prepared[i]->release)
                a->prepared[i]->release(&a->ops[i]);
    }
    free(a->tensors);
    free(a->ops);
    free((void *)a->prepared);
    free(a->attrs);
    free(a->ios);
    free(a->stages);
    free(a->stage_infos);
    free(a->shapes);
    free((void *)a->bound);
    free((void *)a->operands);
    free(a->sources);
    free((void *)a->source_nodes);
    free(a);
}

/* calloc that takes n == 0 (one element, so NULL means out of memory only) */
static void *zalloc(size_t n, size_t size) { return calloc(n ? n : 1, size); }

static ek_status_t allocate_arrays(struct loader *L) {
    struct model_arrays *a = calloc(1, sizeof *a);
    if (!a)
        return OOM("model");
    L->a = a;
    L->model->allocations = a;
    a->tensor_count = L->sec[SEC_TENSORS].count;
    a->op_count = L->sec[SEC_OPS].count;
    a->attr_count = L->sec[SEC_ATTRS].count;
    a->io_count = L->sec[SEC_IOS].count;
    a->stage_count = L->sec[SEC_STAGES].count;
    a->tensors = zalloc(a->tensor_count, sizeof *a->tensors);
    a->ops = zalloc(a->op_count, sizeof *a->ops);
    a->prepared = zalloc(a->op_count, sizeof *a->prepared);
    a->attrs = zalloc(a->attr_count, sizeof *a->attrs);
    a->ios = zalloc(a->io_count, sizeof *a->ios);
    a->stages = zalloc(a->stage_count, sizeof *a->stages);
    a->stage_infos = zalloc(a->stage_count, sizeof *a->stage_infos);
    a->shapes = zalloc(L->io_slots, sizeof *a->shapes);
    a->bound = zalloc(L->io_slots, sizeof *a->bound);
    a->operands = zalloc(L->operand_slots, sizeof *a->operands);
    if (L->has_sources) {
        a->sources = zalloc(a->op_count, sizeof *a->sources);
        a->source_nodes = zalloc(L->sec[SEC_SOURCE_NODES].count, sizeof *a->source_nodes);
        if (!a->sources || !a->source_nodes)
            return OOM("op sources");
        for (size_t i = 0; i < L->sec[SEC_SOURCE_NODES].count; i++)
            a->source_nodes[i] = string_at(L, rd32(record(L, SEC_SOURCE_NODES, i))); /* checked */
    }
        L->writer = zalloc(L->max_tensors, sizeof *L->writer);
    L->last_read = zalloc(L->max_tensors, sizeof *L->last_read);
    L->live = zalloc(L->max_tensors, sizeof *L->live);
    if (!a->tensors || !a->ops || !a->prepared || !a->attrs || !a->ios || !a->stages || !a->stage_infos ||
        !a->shapes || !a->bound || !a->operands || !L->writer || !L->last_read || !L->live)
        return OOM("model arrays");
    return EK_OK;
}

static ek_status_t load(struct loader *L) {
    ek_status_t status = read_sections(L);
    if (status != EK_OK)
        return status;
    const size_t n_nets = L->sec[SEC_NETWORKS].count;
    if (n_nets > INT_MAX)
        return BAD("NETWORKS: %zu networks are too many", n_nets);
    L->model->network_count = (uint32_t)n_nets;
    L->model->networks = zalloc(n_nets, sizeof *L->model->networks);
    L->stage_slot = zalloc(L->sec[SEC_STAGES].count, sizeof *L->stage_slot);
    L->op_slot = zalloc(L->sec[SEC_OPS].count, sizeof *L->op_slot);
    const char **names = zalloc(n_nets, sizeof *names);
    if (!L->model->networks || !L->stage_slot || !L->op_slot || !names) {
        free((void *)names);
        return OOM("networks");
    }
    for (size_t i = 0; i < L->sec[SEC_STAGES].count; i++)
        L->stage_slot[i] = NO_SLOT;
    for (size_t i = 0; i < L->sec[SEC_OPS].count; i++)
        L->op_slot[i] = NO_SLOT;
    status = check_network_records(L, names);
    free((void *)names);
    if (status == EK_OK)
        status = check_tensor_ranges(L);
    if (status == EK_OK)
        status = allocate_arrays(L);
    for (size_t n = 0; n < n_nets && status == EK_OK; n++)
        status = build_network(L, n);
    return status;
}

ek_status_t ek_model_load(const uint8_t *data, size_t size, bool mapped, struct ek_model **model) {
    return ek_model_load_ex(data, size, mapped, NULL, model);
}

ek_status_t ek_model_load_ex(const uint8_t *data, size_t size, bool mapped, const struct ek_plugin_lib *plugins,
                             struct ek_model **model) {
    if (!model)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_model_load: model is NULL");
    *model = NULL;
    if (size == 0)
        return BAD("the model is empty (0 bytes)");
    if (!data)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_model_load: data is NULL");
    /* attribute arrays are used in place as int64/float arrays */
    if ((uintptr_t)data % 8)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_model_load: the model bytes at %p are not 8-byte aligned",
                       (const void *)data);
    struct ek_model *m = calloc(1, sizeof *m);
    if (!m)
        return OOM("model");
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct loader L;
    memset(&L, 0, sizeof L);
    L.data = data;
    L.size = size;
    L.model = m;
    L.plugins = plugins;
    ek_status_t status = load(&L);
    free(L.stage_slot);
    free(L.op_slot);
    free(L.writer);
    free(L.last_read);
    free(L.live);
    if (status != EK_OK) {
        free_arrays(m->allocations);
        free(m->networks);
        free(m);
        return status;
    }
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    m->load_start_ns = (uint64_t)t0.tv_sec * 1000000000u + (uint64_t)t0.tv_nsec;
    m->load_ns = (uint64_t)t1.tv_sec * 1000000000u + (uint64_t)t1.tv_nsec - m->load_start_ns;
    m->data = data;
    m->size = size;
    m->mapped = mapped;
    *model = m;
    return EK_OK;
}

ek_status_t ek_model_load_file(const char *path, struct ek_model **model) {
    return ek_model_load_file_ex(path, NULL, model);
}

ek_status_t ek_model_load_file_ex(const char *path, const struct ek_plugin_lib *plugins, struct ek_model **model) {
    if (!path || !model)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_model_load_file: %s is NULL", path ? "model" : "path");
    *model = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ek_fail(EK_ERR_SYSTEM, "cannot open model '%.300s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return ek_fail(EK_ERR_SYSTEM, "cannot stat model '%.300s': %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ek_fail(EK_ERR_SYSTEM, "model '%.300s': %s", path,
                       S_ISDIR(st.st_mode) ? strerror(EISDIR) : "not a regular file");
    }
    if (st.st_size == 0) {
        close(fd);
        return BAD("model '%.300s' is empty (0 bytes)", path);
    }
    if (!fits_size((uint64_t)st.st_size)) {
        close(fd);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "model '%.300s' (%lld bytes) is too large to map", path,
                       (long long)st.st_size);
    }
    size_t size = (size_t)st.st_size;
    void *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (p == MAP_FAILED)
        return ek_fail(EK_ERR_SYSTEM, "cannot map model '%.300s': %s", path, strerror(err));
    ek_status_t status = ek_model_load_ex(p, size, true, plugins, model);
    if (status != EK_OK) {
        /* name the file in front of the loader's message */
        char message[512];
        snprintf(message, sizeof message, "%s", ek_last_error());
        munmap(p, size);
        return ek_fail(status, "%.200s: %s", path, message);
    }
    return EK_OK;
}

void ek_model_free(struct ek_model *model) {
    if (!model)
        return;
    free_arrays(model->allocations);
    free(model->networks);
    if (model->data) {
        if (model->mapped)
            munmap((void *)model->data, model->size);
        else
            free((void *)model->data);
    }
    free(model);
}
