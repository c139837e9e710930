/* Internal to libedgekit_xnnpack.so: the state of one op, shared by provider.c (the float32 ops, the
 * provider table, setup and run) and quantized.c (the int8 ops of .ekm 1.5), and the helpers both use
 * to read an op. Not installed; the library's symbols are hidden, so these names never leave it. */
#ifndef EDGEKIT_XNNPACK_PROVIDER_H
#define EDGEKIT_XNNPACK_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "generation.h"
#include "kernel.h"

/* ---- one op's state ---- */

enum ekx_kind {
    EKX_CONV,
    EKX_DECONV,
    EKX_FC,
    EKX_POOL2D, /* max and average pooling */
    EKX_GLOBAL_AVG,
    EKX_BINARY,
    EKX_UNARY, /* element-wise: [batch, channels] */
    EKX_PRELU,
    EKX_SOFTMAX,
    EKX_RESIZE,
    /* int8 (quantized.c): set up by ekx_setup_quantized */
    EKX_QCONV,       /* QCONV, and (2022 API) a QFULLY_CONNECTED with per-channel scales as a 1x1 convolution */
    EKX_QFC,         /* QFULLY_CONNECTED */
    EKX_QBINARY,     /* QADD, QMUL: the shapes and constants as BINARY's */
    EKX_QGLOBAL_AVG, /* QGLOBAL_AVERAGE_POOL */
    EKX_QMAX_POOL,   /* MAX_POOL of int8 tensors */
    EKX_QDEQUANTIZE  /* DEQUANTIZE: [batch, channels] as UNARY */
};

struct ekx_state {
    enum ekx_kind kind;
    xnn_operator_t op;
    size_t batch;              /* N, or the rows of an NC / FC op */
    size_t height, width;      /* spatial input size */
    size_t channels;           /* POOL2D, GLOBAL_AVG, UNARY, PRELU, SOFTMAX, RESIZE, QGLOBAL_AVG, QMAX_POOL, QDEQUANTIZE */
    size_t out_height, out_width; /* RESIZE */
    uint32_t adj_h, adj_w;     /* DECONV */
    bool max_pool;             /* POOL2D: max, else average */
    enum ekx_binary binary;    /* BINARY, QBINARY */
    enum ekx_unary unary;      /* UNARY */
    bool per_channel;          /* QFC: per-channel weight scales */
    bool from_u8;              /* QDEQUANTIZE: the input is uint8 (else int8) */
    struct ekx_workspace workspace; /* what the 2024 API's reshape asked for */
    size_t rank_a, rank_b;     /* BINARY, QBINARY: the folded shapes */
    size_t shape_a[XNN_MAX_TENSOR_DIMS], shape_b[XNN_MAX_TENSOR_DIMS];
    float *constant[2];        /* BINARY, QBINARY: padded copies of constant operands, else NULL (QBINARY: int8) */
    float *slope;              /* PRELU: the slopes, expanded to the channels */
    /* The buffers and team size of the last setup: a run on the same ones (a context's arena, a request's
     * memory) skips XNNPACK's setup (2024: reshape + setup), which rebuilds indirection buffers and work
     * splits. */
    const void *set_x, *set_b;
    void *set_y;
    int set_threads;
    xnn_operator_t residual;   /* CONV with Z: Y = clamp(Y + Z), run after the convolution */
    size_t residual_count;     /* Y's elements */
    float *residual_z;         /* a padded copy of a constant Z (else NULL: Z is in[3]) */
    xnn_operator_t clamp;      /* the clamp of Y a 2024 binary op (or residual add) needs, run last, in place */
    size_t clamp_count;        /* Y's elements */
};

/* ---- reading an op (provider.c); the op was validated by the portable kernel's prepare ---- */

const struct ek_attr *find_attr(const struct ek_op *op, const char *name);
/* false on a wrong type: the caller declines the op. Absent: `def`. */
bool attr_int(const struct ek_op *op, const char *name, int64_t def, int64_t *out);
bool attr_float(const struct ek_op *op, const char *name, float def, float *out);
/* Exactly `count` ints, each in [lo, UINT32_MAX]; absent: every one is `def`. */
bool attr_u32s(const struct ek_op *op, const char *name, uint32_t count, int64_t def, int64_t lo, uint32_t *out);
bool is_constant(const struct ek_tensor_desc *t);
bool fits_u32(int64_t v);
/* Status of a failed create: the op stays with the portable kernel unless memory ran out. */
ek_status_t create_failed(enum xnn_status status);
/* A padded private copy of a constant XNNPACK reads at run time (it may read past the end). */
ek_status_t padded_copy(const struct ek_tensor_desc *t, float **copy);
/* A CONV's or QCONV's geometry (X[N,H,W,C], constant W[M,KH,KW,C/group], Y): its attributes, checked
 * against the shapes so XNNPACK's output size is Y's; false: declined. */
struct ekx_conv {
    uint32_t pads[4], strides[2], dilations[2]; /* pads: top, left, bottom, right */
    int64_t group, c, m, kh, kw, cg;
};
bool conv_geometry(const struct ek_op *op, struct ekx_conv *g);
/* Numpy broadcasting of a and b to y, folded into s->rank_a/b, s->shape_a/b (at most
 * XNN_MAX_TENSOR_DIMS dims); false when it does not fit. */
bool fold_broadcast(const struct ek_tensor_desc *a, const struct ek_tensor_desc *b, const struct ek_tensor_desc *y,
                    struct ekx_state *s);
/* After fold_broadcast: many broadcast rows too short for this XNNPACK's n-d binary operators, which
 * run one micro-kernel call per row (the portable kernel is faster). */
bool broadcast_rows_too_short(const struct ekx_state *s, const struct ek_tensor_desc *y);

/* ---- the int8 ops (quantized.c) ---- */

/* An op for quantized.c: the op codes of .ekm 1.5 (31..39), or an op with int8 operands. */
bool ekx_is_quantized(const struct ek_op *op);
/* Fill `s` (zeroed) for a quantized op: EK_ERR_UNSUPPORTED leaves the op to the portable kernel. */
ek_status_t ekx_create_quantized(const struct ek_op *op, struct ekx_state *s);
/* The MAX_POOL operator of int8 tensors for provider.c's create_pool, which checked the geometry. */
enum xnn_status ekx_create_max_pool_s8(const uint32_t pads[4], uint32_t bottom, uint32_t right,
                                       const uint32_t kernel[2], const uint32_t strides[2],
                                       const uint32_t dilations[2], size_t channels, xnn_operator_t *op);
/* XNNPACK's setup (2024: reshape + setup) of an EKX_Q* state on these buffers (x: in[0], y: out[0]). */
enum xnn_status ekx_setup_quantized(struct ekx_state *s, const void *const *in, const void *x, void *y,
                                    pthreadpool_t pool);

#endif
