/* Builds .ekm model bytes in memory for the C tests (docs/model-format.md), so a test writes the model
 * it needs in a few lines and may then corrupt any field of it. Header-only; every function is
 * static inline. Out of memory is remembered and reported by ekb_finish (NULL).
 *
 *   ekb_t b;
 *   ekb_init(&b);
 *   ekb_network(&b, "net", 1, 1);                       // name, inputs, outputs
 *   ekb_io(&b, "x", EK_DTYPE_FLOAT32, 64);               // its IOS: inputs first, then outputs
 *   ekb_io(&b, "y", EK_DTYPE_FLOAT32, 64);
 *   ekb_stage(&b);                                       // a stage of the last network
 *   int64_t dims[] = {1, 4, 4};
 *   uint32_t x = ekb_input(&b, "x", 0, 3, dims);         // bound to input 0
 *   uint32_t t = ekb_arena(&b, "t", 3, dims);            // placed in the stage's arena
 *   uint32_t y = ekb_output(&b, "y", 0, 3, dims);        // bound to output 0
 *   ekb_op1(&b, EK_OP_RELU, "relu", x, t);
 *   ekb_op1(&b, EK_OP_RESHAPE, "copy", t, y);
 *   size_t size;
 *   uint8_t *data = ekb_finish(&b, &size);               // 64-byte aligned; free() it
 *   ekb_free(&b);
 *
 * After ekb_finish, b.layout holds where each section went, and ekb_record() gives the file offset
 * of a record, so a test can patch it with ekb_put16/32/64. Tensor indices returned are relative to
 * the stage (what OPERANDS and BINDINGS hold); op and tensor record numbers are b.op_count - 1 and
 * ekb_tensor_record(). */
#ifndef EKM_BUILDER_H
#define EKM_BUILDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* section kinds */
enum {
    EKB_STRINGS = 1,
    EKB_NETWORKS = 2,
    EKB_IOS = 3,
    EKB_STAGES = 4,
    EKB_TENSORS = 5,
    EKB_OPS = 6,
    EKB_OPERANDS = 7,
    EKB_BINDINGS = 8,
    EKB_ATTRS = 9,
    EKB_ATTR_DATA = 10,
    EKB_CONSTANTS = 11,
    EKB_SECTIONS = 11
};
/* storage codes */
enum { EKB_ARENA = 0, EKB_CONSTANT = 1, EKB_INPUT = 2, EKB_OUTPUT = 3 };
#define EKB_ABSENT 0xFFFFFFFFu
#define EKB_HEADER_SIZE 64u

static const uint32_t ekb_record_sizes[EKB_SECTIONS + 1] = {0, 1, 32, 32, 48, 96, 24, 4, 4, 24, 1, 1};

typedef struct ekb_buf {
    uint8_t *p;
    size_t len, cap;
} ekb_buf_t;

typedef struct ekb {
    ekb_buf_t sec[EKB_SECTIONS + 1];
    bool failed; /* out of memory, or a call out of order */
    /* the network and stage being added to (record numbers), -1 before the first */
    long net, stage;
    uint32_t net_inputs, net_outputs;
    uint32_t op_count; /* OPS records so far */
    struct {
        size_t offset[EKB_SECTIONS + 1], size[EKB_SECTIONS + 1];
        size_t table_offset, file_size;
    } layout;
} ekb_t;

/* ---- little-endian access to a finished model's bytes ---- */
static inline void ekb_put16(uint8_t *p, size_t off, uint16_t v)
{
    p[off] = (uint8_t)v;
    p[off + 1] = (uint8_t)(v >> 8);
}
static inline void ekb_put32(uint8_t *p, size_t off, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[off + (size_t)i] = (uint8_t)(v >> (8 * i));
}
static inline void ekb_put64(uint8_t *p, size_t off, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[off + (size_t)i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t ekb_get16(const uint8_t *p, size_t off) { return (uint16_t)(p[off] | p[off + 1] << 8); }
static inline uint32_t ekb_get32(const uint8_t *p, size_t off)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[off + (size_t)i];
    return v;
}
static inline uint64_t ekb_get64(const uint8_t *p, size_t off)
{
    return (uint64_t)ekb_get32(p, off) | (uint64_t)ekb_get32(p, off + 4) << 32;
}

/* ---- growable section buffers ---- */
static inline uint8_t *ekb_grow(ekb_t *b, int kind, size_t n)
{
    ekb_buf_t *s = &b->sec[kind];
    if (b->failed)
        return NULL;
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap < s->len + n)
            cap *= 2;
        uint8_t *p = realloc(s->p, cap);
        if (!p) {
            b->failed = true;
            return NULL;
        }
        s->p = p;
        s->cap = cap;
    }
    uint8_t *at = s->p + s->len;
    memset(at, 0, n);
    s->len += n;
    return at;
}

/* Pad a byte section with zeros to a multiple of `align`. */
static inline void ekb_align(ekb_t *b, int kind, size_t align)
{
    size_t pad = (align - b->sec[kind].len % align) % align;
    if (pad)
        ekb_grow(b, kind, pad);
}

static inline uint32_t ekb_count(const ekb_t *b, int kind)
{
    return (uint32_t)(b->sec[kind].len / ekb_record_sizes[kind]);
}

static inline void ekb_init(ekb_t *b)
{
    memset(b, 0, sizeof *b);
    b->net = b->stage = -1;
    ekb_grow(b, EKB_STRINGS, 1); /* byte 0 is NUL: ref 0 is "" */
}

static inline void ekb_free(ekb_t *b)
{
    for (int k = 0; k <= EKB_SECTIONS; k++)
        free(b->sec[k].p);
    memset(b->sec, 0, sizeof b->sec);
}

/* A string ref for `s` ("" is ref 0). */
static inline uint32_t ekb_str(ekb_t *b, const char *s)
{
    if (!s || !s[0])
        return 0;
    size_t n = strlen(s) + 1;
    uint32_t ref = (uint32_t)b->sec[EKB_STRINGS].len;
    uint8_t *p = ekb_grow(b, EKB_STRINGS, n);
    if (p)
        memcpy(p, s, n);
    return ref;
}

/* ---- records ---- */

/* Start a network; its IOS records follow (ekb_io, inputs then outputs), then its stages. */
static inline void ekb_network(ekb_t *b, const char *name, uint32_t inputs, uint32_t outputs)
{
    uint32_t name_ref = ekb_str(b, name);
    uint32_t first_io = ekb_count(b, EKB_IOS), first_stage = ekb_count(b, EKB_STAGES);
    uint8_t *r = ekb_grow(b, EKB_NETWORKS, 32);
    if (!r)
        return;
    ekb_put32(r, 0, name_ref);
    ekb_put32(r, 4, inputs);
    ekb_put32(r, 8, outputs);
    ekb_put32(r, 12, 0); /* stage_count: ekb_stage counts */
    ekb_put32(r, 16, first_io);
    ekb_put32(r, 20, first_stage);
    b->net = (long)ekb_count(b, EKB_NETWORKS) - 1;
    b->net_inputs = inputs;
    b->net_outputs = outputs;
}

/* An IOS record of the current network (float tensors: scale 1, zero point 0). */
static inline void ekb_io_q(ekb_t *b, const char *name, int dtype, uint64_t max_bytes, float scale, int32_t zero_point)
{
    uint32_t name_ref = ekb_str(b, name);
    uint8_t *r = ekb_grow(b, EKB_IOS, 32);
    if (!r)
        return;
    uint32_t scale_bits;
    memcpy(&scale_bits, &scale, sizeof scale_bits);
    ekb_put32(r, 0, name_ref);
    r[4] = (uint8_t)dtype;
    ekb_put32(r, 8, scale_bits);
    ekb_put32(r, 12, (uint32_t)zero_point);
    ekb_put64(r, 16, max_bytes);
}
static inline void ekb_io(ekb_t *b, const char *name, int dtype, uint64_t max_bytes)
{
    ekb_io_q(b, name, dtype, max_bytes, 1.0f, 0);
}

/* Start a stage of the current network; its BINDINGS are reserved (EKB_ABSENT until bound). */
static inline void ekb_stage(ekb_t *b)
{
    if (b->net < 0) {
        b->failed = true;
        return;
    }
    uint32_t first_tensor = ekb_count(b, EKB_TENSORS), first_op = ekb_count(b, EKB_OPS);
    uint32_t first_binding = ekb_count(b, EKB_BINDINGS);
    for (uint32_t i = 0; i < b->net_inputs + b->net_outputs; i++) {
        uint8_t *p = ekb_grow(b, EKB_BINDINGS, 4);
        if (p)
            ekb_put32(p, 0, EKB_ABSENT);
    }
    uint8_t *r = ekb_grow(b, EKB_STAGES, 48);
    if (!r)
        return;
    ekb_put32(r, 0, (uint32_t)b->net);
    ekb_put32(r, 4, first_tensor);
    ekb_put32(r, 12, first_op);
    ekb_put32(r, 20, first_binding);
    b->stage = (long)ekb_count(b, EKB_STAGES) - 1;
    uint8_t *net = b->sec[EKB_NETWORKS].p + (size_t)b->net * 32;
    ekb_put32(net, 12, ekb_get32(net, 12) + 1);
}

static inline uint8_t *ekb_stage_record(ekb_t *b) { return b->sec[EKB_STAGES].p + (size_t)b->stage * 48; }

static inline size_t ekb_dtype_bytes(int dtype)
{
    static const size_t sizes[] = {0, 4, 2, 1, 1, 4, 8};
    return dtype > 0 && dtype <= 6 ? sizes[dtype] : 0;
}

/* A tensor of the current stage with every field given; returns its index in the stage. INPUT and
 * OUTPUT tensors are bound to io_index. nbytes is computed from the dims. */
static inline uint32_t ekb_tensor(ekb_t *b, const char *name, int dtype, int storage, uint32_t io_index,
                                  uint64_t offset, int rank, const int64_t *dims)
{
    if (b->stage < 0 || rank < 0 || rank > 8) {
        b->failed = true;
        return 0;
    }
    uint32_t name_ref = ekb_str(b, name);
    uint8_t *st = ekb_stage_record(b);
    uint32_t index = ekb_get32(st, 8);
    uint64_t count = 1;
    for (int i = 0; i < rank; i++)
        count *= (uint64_t)dims[i];
    uint8_t *r = ekb_grow(b, EKB_TENSORS, 96);
    if (!r)
        return index;
    st = ekb_stage_record(b);
    ekb_put32(r, 0, name_ref);
    r[4] = (uint8_t)dtype;
    r[5] = (uint8_t)storage;
    r[6] = (uint8_t)rank;
    ekb_put32(r, 8, io_index);
    ekb_put64(r, 16, offset);
    ekb_put64(r, 24, count * ekb_dtype_bytes(dtype));
    for (int i = 0; i < rank; i++)
        ekb_put64(r, 32 + 8 * (size_t)i, (uint64_t)dims[i]);
    ekb_put32(st, 8, index + 1);
    if (storage == EKB_INPUT || storage == EKB_OUTPUT) {
        uint32_t slot = (storage == EKB_INPUT ? 0 : b->net_inputs) + io_index;
        uint8_t *bind = b->sec[EKB_BINDINGS].p + ((size_t)ekb_get32(st, 20) + slot) * 4;
        ekb_put32(bind, 0, index);
    }
    return index;
}

/* The TENSORS record number of stage tensor `index` of the current stage. */
static inline uint32_t ekb_tensor_record(ekb_t *b, uint32_t index) { return ekb_get32(ekb_stage_record(b), 4) + index; }

static inline uint32_t ekb_input(ekb_t *b, const char *name, uint32_t io_index, int rank, const int64_t *dims)
{
    return ekb_tensor(b, name, 1, EKB_INPUT, io_index, 0, rank, dims);
}

static inline uint32_t ekb_output(ekb_t *b, const char *name, uint32_t io_index, int rank, const int64_t *dims)
{
    return ekb_tensor(b, name, 1, EKB_OUTPUT, io_index, 0, rank, dims);
}

/* A float32 ARENA tensor at the end of the stage's arena (each tensor its own bytes: no reuse). */
static inline uint32_t ekb_arena(ekb_t *b, const char *name, int rank, const int64_t *dims)
{
    if (b->stage < 0) {
        b->failed = true;
        return 0;
    }
    uint64_t count = 1;
    for (int i = 0; i < rank; i++)
        count *= (uint64_t)dims[i];
    uint8_t *st = ekb_stage_record(b);
    uint64_t offset = (ekb_get64(st, 24) + 63) / 64 * 64;
    ekb_put64(st, 24, offset + count * 4);
    return ekb_tensor(b, name, 1, EKB_ARENA, 0, offset, rank, dims);
}

/* A float32 CONSTANT tensor holding `values` (count of the dims), 64-aligned in CONSTANTS. */
static inline uint32_t ekb_constant(ekb_t *b, const char *name, int rank, const int64_t *dims, const float *values)
{
    uint64_t count = 1;
    for (int i = 0; i < rank; i++)
        count *= (uint64_t)dims[i];
    ekb_align(b, EKB_CONSTANTS, 64);
    uint64_t offset = b->sec[EKB_CONSTANTS].len;
    uint8_t *p = ekb_grow(b, EKB_CONSTANTS, (size_t)count * 4);
    if (p && values)
        memcpy(p, values, (size_t)count * 4);
    return ekb_tensor(b, name, 1, EKB_CONSTANT, 0, offset, rank, dims);
}

/* An ARENA tensor of any dtype (int8, int32, ... : .ekm 1.5), at the end of the stage's arena. */
static inline uint32_t ekb_arena_typed(ekb_t *b, const char *name, int dtype, int rank, const int64_t *dims)
{
    if (b->stage < 0) {
        b->failed = true;
        return 0;
    }
    uint64_t count = 1;
    for (int i = 0; i < rank; i++)
        count *= (uint64_t)dims[i];
    uint8_t *st = ekb_stage_record(b);
    uint64_t offset = (ekb_get64(st, 24) + 63) / 64 * 64;
    ekb_put64(st, 24, offset + count * ekb_dtype_bytes(dtype));
    return ekb_tensor(b, name, dtype, EKB_ARENA, 0, offset, rank, dims);
}

/* A CONSTANT tensor of any dtype holding `values` (count of the dims x the dtype's size). */
static inline uint32_t ekb_constant_typed(ekb_t *b, const char *name, int dtype, int rank, const int64_t *dims,
                                          const void *values)
{
    uint64_t count = 1;
    for (int i = 0; i < rank; i++)
        count *= (uint64_t)dims[i];
    size_t bytes = (size_t)count * ekb_dtype_bytes(dtype);
    ekb_align(b, EKB_CONSTANTS, 64);
    uint64_t offset = b->sec[EKB_CONSTANTS].len;
    uint8_t *p = ekb_grow(b, EKB_CONSTANTS, bytes);
    if (p && values)
        memcpy(p, values, bytes);
    return ekb_tensor(b, name, dtype, EKB_CONSTANT, 0, offset, rank, dims);
}

/* An op of the current stage; inputs may hold EKB_ABSENT. Attributes added next belong to it. */
static inline void ekb_op(ekb_t *b, int type, const char *name, int n_in, const uint32_t *in, int n_out,
                          const uint32_t *out)
{
    if (b->stage < 0) {
        b->failed = true;
        return;
    }
    uint32_t name_ref = ekb_str(b, name);
    uint32_t first_operand = ekb_count(b, EKB_OPERANDS), first_attr = ekb_count(b, EKB_ATTRS);
    for (int i = 0; i < n_in + n_out; i++) {
        uint8_t *p = ekb_grow(b, EKB_OPERANDS, 4);
        if (p)
            ekb_put32(p, 0, i < n_in ? in[i] : out[i - n_in]);
    }
    uint8_t *r = ekb_grow(b, EKB_OPS, 24);
    if (!r)
        return;
    ekb_put32(r, 0, name_ref);
    ekb_put16(r, 4, (uint16_t)type);
    ekb_put32(r, 8, first_operand);
    ekb_put16(r, 12, (uint16_t)n_in);
    ekb_put16(r, 14, (uint16_t)n_out);
    ekb_put32(r, 16, first_attr);
    b->op_count = ekb_count(b, EKB_OPS);
    uint8_t *st = ekb_stage_record(b);
    ekb_put32(st, 16, ekb_get32(st, 16) + 1);
}

/* One input, one output. */
static inline void ekb_op1(ekb_t *b, int type, const char *name, uint32_t in, uint32_t out)
{
    ekb_op(b, type, name, 1, &in, 1, &out);
}

/* Two inputs, one output. */
static inline void ekb_op2(ekb_t *b, int type, const char *name, uint32_t in0, uint32_t in1, uint32_t out)
{
    uint32_t in[2] = {in0, in1};
    ekb_op(b, type, name, 2, in, 1, &out);
}

static inline void ekb_attr(ekb_t *b, const char *name, int type, uint32_t count, uint64_t value)
{
    if (b->op_count == 0) {
        b->failed = true;
        return;
    }
    uint32_t name_ref = ekb_str(b, name);
    uint8_t *r = ekb_grow(b, EKB_ATTRS, 24);
    if (!r)
        return;
    ekb_put32(r, 0, name_ref);
    r[4] = (uint8_t)type;
    ekb_put32(r, 8, count);
    ekb_put64(r, 16, value);
    uint8_t *op = b->sec[EKB_OPS].p + (size_t)(b->op_count - 1) * 24;
    ekb_put32(op, 20, ekb_get32(op, 20) + 1);
}

static inline void ekb_attr_int(ekb_t *b, const char *name, int64_t v) { ekb_attr(b, name, 1, 1, (uint64_t)v); }

static inline void ekb_attr_float(ekb_t *b, const char *name, float v)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    ekb_attr(b, name, 2, 1, bits);
}

static inline void ekb_attr_ints(ekb_t *b, const char *name, uint32_t count, const int64_t *v)
{
    ekb_align(b, EKB_ATTR_DATA, 8);
    uint64_t offset = b->sec[EKB_ATTR_DATA].len;
    uint8_t *p = ekb_grow(b, EKB_ATTR_DATA, (size_t)count * 8);
    for (uint32_t i = 0; p && i < count; i++)
        ekb_put64(p, 8 * (size_t)i, (uint64_t)v[i]);
    ekb_attr(b, name, 3, count, offset);
}

static inline void ekb_attr_floats(ekb_t *b, const char *name, uint32_t count, const float *v)
{
    ekb_align(b, EKB_ATTR_DATA, 8);
    uint64_t offset = b->sec[EKB_ATTR_DATA].len;
    uint8_t *p = ekb_grow(b, EKB_ATTR_DATA, (size_t)count * 4);
    if (p && count)
        memcpy(p, v, (size_t)count * 4);
    ekb_attr(b, name, 4, count, offset);
}

static inline void ekb_attr_string(ekb_t *b, const char *name, const char *s)
{
    ekb_attr(b, name, 5, 1, ekb_str(b, s));
}

/* ---- the file ---- */

/* The model's bytes: header, section table, then the sections in kind order (8-aligned, CONSTANTS
 * 64-aligned). 64-byte aligned, zero padded; the caller free()s it. NULL when out of memory. */
static inline uint8_t *ekb_finish(ekb_t *b, size_t *size)
{
    ekb_align(b, EKB_ATTR_DATA, 8);
    if (b->failed)
        return NULL;
    size_t off = EKB_HEADER_SIZE;
    b->layout.table_offset = off;
    off += (size_t)EKB_SECTIONS * 24;
    for (int k = 1; k <= EKB_SECTIONS; k++) {
        size_t align = k == EKB_CONSTANTS ? 64 : 8;
        off = (off + align - 1) / align * align;
        b->layout.offset[k] = off;
        b->layout.size[k] = b->sec[k].len;
        off += b->sec[k].len;
    }
    off = (off + 7) / 8 * 8;
    b->layout.file_size = off;
    uint8_t *data = aligned_alloc(64, (off + 63) / 64 * 64);
    if (!data)
        return NULL;
    memset(data, 0, (off + 63) / 64 * 64);
    memcpy(data, "EDGEKIT", 8);
    ekb_put16(data, 8, 1);
    ekb_put16(data, 10, 0);
    ekb_put32(data, 12, EKB_HEADER_SIZE);
    ekb_put64(data, 16, off);
    ekb_put64(data, 24, b->layout.table_offset);
    ekb_put32(data, 32, EKB_SECTIONS);
    for (int k = 1; k <= EKB_SECTIONS; k++) {
        size_t e = b->layout.table_offset + (size_t)(k - 1) * 24;
        ekb_put32(data, e, (uint32_t)k);
        ekb_put32(data, e + 4, ekb_record_sizes[k]);
        ekb_put64(data, e + 8, b->layout.offset[k]);
        ekb_put64(data, e + 16, b->layout.size[k]);
        if (b->sec[k].len)
            memcpy(data + b->layout.offset[k], b->sec[k].p, b->sec[k].len);
    }
    *size = off;
    return data;
}

/* The file offset of record `index` of section `kind` (after ekb_finish). */
static inline size_t ekb_record(const ekb_t *b, int kind, size_t index)
{
    return b->layout.offset[kind] + index * ekb_record_sizes[kind];
}

/* The file offset of section table entry of `kind` (after ekb_finish). */
static inline size_t ekb_table_entry(const ekb_t *b, int kind)
{
    return b->layout.table_offset + (size_t)(kind - 1) * 24;
}

#endif /* EKM_BUILDER_H */
