/* The two XNNPACK operator APIs the provider builds against, behind one set of calls (provider.c
 * includes this once; it is not a public header). The build picks the generation from the target's
 * xnnpack.h (sdk/runtime/cmake/xnnpack.cmake):
 *
 *   2022 (Debian 12, 0.0~git20220216): create(sizes, channels) and setup(shapes, pointers, threadpool).
 *   2024 (Debian 13, 0.0~git20241108; EDGEKIT_XNNPACK_RESHAPE): create(sizes) takes code and weights
 *     caches (NULL here); reshape(shapes, threadpool) sizes the work and says how much workspace the op
 *     needs; setup(pointers, workspace). The per-type binary and unary operators became
 *     xnn_*_binary_elementwise_nd / xnn_*_unary_elementwise_nc with a type, binary ops lost their
 *     fused clamp (a separate clamp runs after), PReLU became a binary op, and global average pooling
 *     is gone (an average pooling with one window does it here).
 *
 * Each ekx_create_* makes the op's operator(s); each ekx_setup_* is what the provider does when the
 * buffers or the team change: the 2022 setup, or the 2024 reshape + setup (which sizes the work from
 * the team, pthreadpool_get_threads_count, as the 2022 setup did). A `struct ekx_workspace` holds the
 * workspace a 2024 operator asks for at reshape (never used with the 2022 API). */
#ifndef EDGEKIT_XNNPACK_GENERATION_H
#define EDGEKIT_XNNPACK_GENERATION_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include <xnnpack.h>

#if defined(EDGEKIT_XNNPACK_RESHAPE) && EDGEKIT_XNNPACK_RESHAPE
#define EKX_GENERATION 2024
#else
#define EKX_GENERATION 2022
#endif

enum ekx_binary { EKX_ADD, EKX_SUB, EKX_MUL, EKX_DIV };
enum ekx_unary { EKX_CLAMP, EKX_LEAKY_RELU, EKX_SIGMOID, EKX_HARD_SWISH };

/* A 2024 operator's workspace, grown as reshape asks; freed with ekx_workspace_free. */
struct ekx_workspace {
    void *data;
    size_t size, alignment;
};

static inline void ekx_workspace_free(struct ekx_workspace *ws) {
    free(ws->data);
    ws->data = NULL;
    ws->size = ws->alignment = 0;
}

#if EKX_GENERATION == 2024
/* Room for `size` bytes at `alignment` (a power of two), or NULL when memory ran out. */
static inline void *ekx_workspace_fit(struct ekx_workspace *ws, size_t size, size_t alignment) {
    if (alignment < sizeof(void *))
        alignment = sizeof(void *);
    if (size == 0)
        return ws->data; /* no workspace: XNNPACK ignores the pointer */
    if (ws->data && ws->size >= size && ws->alignment >= alignment)
        return ws->data;
    const size_t rounded = (size + alignment - 1) / alignment * alignment;
    if (rounded < size)
        return NULL;
    void *data = aligned_alloc(alignment, rounded);
    if (!data)
        return NULL;
    free(ws->data);
    ws->data = data;
    ws->size = rounded;
    ws->alignment = alignment;
    return data;
}

#define EKX_WORKSPACE(ws, size, alignment, data)                                                       \
    do {                                                                                                \
        if (!((data) = ekx_workspace_fit((ws), (size), (alignment))) && (size))                       \
            return xnn_status_out_of_memory;                                                            \
    } while (0)
#endif

/* ---- convolution, deconvolution, fully connected ---- */

static inline enum xnn_status ekx_create_conv2d(uint32_t top, uint32_t right, uint32_t bottom, uint32_t left,
                                                uint32_t kh, uint32_t kw, uint32_t sh, uint32_t sw, uint32_t dh,
                                                uint32_t dw, uint32_t groups, size_t group_in, size_t group_out,
                                                size_t in_stride, size_t out_stride, const float *kernel,
                                                const float *bias, float lo, float hi, xnn_operator_t *op) {
#if EKX_GENERATION == 2024
    return xnn_create_convolution2d_nhwc_f32(top, right, bottom, left, kh, kw, sh, sw, dh, dw, groups, group_in,
                                             group_out, in_stride, out_stride, kernel, bias, lo, hi, 0, NULL, NULL,
                                             op);
#else
    return xnn_create_convolution2d_nhwc_f32(top, right, bottom, left, kh, kw, sh, sw, dh, dw, groups, group_in,
                                             group_out, in_stride, out_stride, kernel, bias, lo, hi, 0, op);
#endif
}

static inline enum xnn_status ekx_setup_conv2d(xnn_operator_t op, struct ekx_workspace *ws, size_t batch,
                                               size_t height, size_t width, const float *x, float *y,
                                               pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    size_t size = 0, alignment = 0;
    void *data;
    enum xnn_status st =
        xnn_reshape_convolution2d_nhwc_f32(op, batch, height, width, &size, &alignment, NULL, NULL, pool);
    if (st != xnn_status_success)
        return st;
    EKX_WORKSPACE(ws, size, alignment, data);
    return xnn_setup_convolution2d_nhwc_f32(op, data, x, y);
#else
    (void)ws;
    return xnn_setup_convolution2d_nhwc_f32(op, batch, height, width, x, y, pool);
#endif
}

static inline enum xnn_status ekx_create_deconv2d(uint32_t top, uint32_t right, uint32_t bottom, uint32_t left,
                                                  uint32_t kh, uint32_t kw, uint32_t sh, uint32_t sw, uint32_t dh,
                                                  uint32_t dw, uint32_t groups, size_t group_in, size_t group_out,
                                                  size_t in_stride, size_t out_stride, const float *kernel,
                                                  const float *bias, float lo, float hi, xnn_operator_t *op) {
#if EKX_GENERATION == 2024
    return xnn_create_deconvolution2d_nhwc_f32(top, right, bottom, left, kh, kw, sh, sw, dh, dw, groups, group_in,
                                               group_out, in_stride, out_stride, kernel, bias, lo, hi, 0, NULL,
                                               NULL, op);
#else
    return xnn_create_deconvolution2d_nhwc_f32(top, right, bottom, left, kh, kw, sh, sw, dh, dw, groups, group_in,
                                               group_out, in_stride, out_stride, kernel, bias, lo, hi, 0, op);
#endif
}

static inline enum xnn_status ekx_setup_deconv2d(xnn_operator_t op, size_t batch, size_t height, size_t width,
                                                 uint32_t adj_h, uint32_t adj_w, const float *x, float *y,
                                                 pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    enum xnn_status st =
        xnn_reshape_deconvolution2d_nhwc_f32(op, batch, height, width, adj_h, adj_w, NULL, NULL, pool);
    return st != xnn_status_success ? st : xnn_setup_deconvolution2d_nhwc_f32(op, x, y);
#else
    return xnn_setup_deconvolution2d_nhwc_f32(op, batch, height, width, adj_h, adj_w, x, y, pool);
#endif
}

static inline enum xnn_status ekx_create_fc(size_t in_channels, size_t out_channels, const float *kernel,
                                            const float *bias, float lo, float hi, xnn_operator_t *op) {
#if EKX_GENERATION == 2024
    return xnn_create_fully_connected_nc_f32(in_channels, out_channels, in_channels, out_channels, kernel, bias, lo,
                                             hi, 0, NULL, NULL, op);
#else
    return xnn_create_fully_connected_nc_f32(in_channels, out_channels, in_channels, out_channels, kernel, bias, lo,
                                             hi, 0, op);
#endif
}

static inline enum xnn_status ekx_setup_fc(xnn_operator_t op, size_t batch, const float *x, float *y,
                                           pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    enum xnn_status st = xnn_reshape_fully_connected_nc_f32(op, batch, pool);
    return st != xnn_status_success ? st : xnn_setup_fully_connected_nc_f32(op, x, y);
#else
    return xnn_setup_fully_connected_nc_f32(op, batch, x, y, pool);
#endif
}

/* ---- pooling (no fused clamp: the ops have none) ---- */

static inline enum xnn_status ekx_create_max_pool2d(uint32_t top, uint32_t right, uint32_t bottom, uint32_t left,
                                                    uint32_t kh, uint32_t kw, uint32_t sh, uint32_t sw,
                                                    uint32_t dh, uint32_t dw, size_t channels, xnn_operator_t *op) {
#if EKX_GENERATION == 2024
    (void)channels; /* given at reshape */
    return xnn_create_max_pooling2d_nhwc_f32(top, right, bottom, left, kh, kw, sh, sw, dh, dw, -INFINITY, INFINITY,
                                             0, op);
#else
    return xnn_create_max_pooling2d_nhwc_f32(top, right, bottom, left, kh, kw, sh, sw, dh, dw, channels, channels,
                                             channels, -INFINITY, INFINITY, 0, op);
#endif
}

static inline enum xnn_status ekx_setup_max_pool2d(xnn_operator_t op, size_t batch, size_t height, size_t width,
                                                   size_t channels, const float *x, float *y, pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    enum xnn_status st = xnn_reshape_max_pooling2d_nhwc_f32(op, batch, height, width, channels, channels, channels,
                                                            NULL, NULL, pool);
    return st != xnn_status_success ? st : xnn_setup_max_pooling2d_nhwc_f32(op, x, y);
#else
    (void)channels;
    return xnn_setup_max_pooling2d_nhwc_f32(op, batch, height, width, x, y, pool);
#endif
}

static inline enum xnn_status ekx_create_avg_pool2d(uint32_t top, uint32_t right, uint32_t bottom, uint32_t left,
                                                    uint32_t kh, uint32_t kw, uint32_t sh, uint32_t sw,
                                                    size_t channels, xnn_operator_t *op) {
#if EKX_GENERATION == 2024
    (void)channels;
    return xnn_create_average_pooling2d_nhwc_f32(top, right, bottom, left, kh, kw, sh, sw, -INFINITY, INFINITY, 0,
                                                 op);
#else
    return xnn_create_average_pooling2d_nhwc_f32(top, right, bottom, left, kh, kw, sh, sw, channels, channels,
                                                 channels, -INFINITY, INFINITY, 0, op);
#endif
}

static inline enum xnn_status ekx_setup_avg_pool2d(xnn_operator_t op, struct ekx_workspace *ws, size_t batch,
                                                   size_t height, size_t width, size_t channels, const float *x,
                                                   float *y, pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    size_t size = 0, alignment = 0;
    void *data;
    enum xnn_status st = xnn_reshape_average_pooling2d_nhwc_f32(op, batch, height, width, channels, channels,
                                                                channels, &size, &alignment, NULL, NULL, pool);
    if (st != xnn_status_success)
        return st;
    EKX_WORKSPACE(ws, size, alignment, data);
    return xnn_setup_average_pooling2d_nhwc_f32(op, data, x, y);
#else
    (void)ws;
    (void)channels;
    return xnn_setup_average_pooling2d_nhwc_f32(op, batch, height, width, x, y, pool);
#endif
}

/* The mean over the `width` pixels of each of `batch` images of `channels` channels (NWC). The 2024
 * API has no global average pooling; its reduce (mean) over the middle axis crashed in Debian 13's
 * build (a SIGSEGV in xnn_run_operator for any shape, without a pool), so it is an average pooling
 * of one 1 x width window there (XNNPACK refuses a window of 1: the portable kernel runs that). */
static inline enum xnn_status ekx_create_global_avg(size_t width, size_t channels, xnn_operator_t *op) {
#if EKX_GENERATION == 2024
    (void)channels;
    if (width > UINT32_MAX)
        return xnn_status_unsupported_parameter;
    return xnn_create_average_pooling2d_nhwc_f32(0, 0, 0, 0, 1, (uint32_t)width, 1, 1, -INFINITY, INFINITY, 0, op);
#else
    (void)width;
    return xnn_create_global_average_pooling_nwc_f32(channels, channels, channels, -INFINITY, INFINITY, 0, op);
#endif
}

static inline enum xnn_status ekx_setup_global_avg(xnn_operator_t op, struct ekx_workspace *ws, size_t batch,
                                                   size_t width, size_t channels, const float *x, float *y,
                                                   pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    return ekx_setup_avg_pool2d(op, ws, batch, 1, width, channels, x, y, pool);
#else
    (void)ws;
    (void)channels;
    return xnn_setup_global_average_pooling_nwc_f32(op, batch, width, x, y, pool);
#endif
}

/* ---- element-wise ---- */

/* The clamp, leaky ReLU, sigmoid and hard swish of [rows, channels]; `a`, `b` are the clamp's bounds
 * or the leaky ReLU's slope (a). */
static inline enum xnn_status ekx_create_unary(enum ekx_unary type, size_t channels, float a, float b,
                                               xnn_operator_t *op) {
#if EKX_GENERATION == 2024
    (void)channels;
    union xnn_unary_params params = {0};
    enum xnn_unary_operator kind;
    switch (type) {
    case EKX_CLAMP:
        kind = xnn_unary_clamp;
        params.clamp.min = a;
        params.clamp.max = b;
        break;
    case EKX_LEAKY_RELU:
        kind = xnn_unary_leaky_relu;
        params.leaky_relu.negative_slope = a;
        break;
    case EKX_SIGMOID:
        kind = xnn_unary_sigmoid;
        break;
    case EKX_HARD_SWISH:
        kind = xnn_unary_hardswish;
        break;
    default:
        return xnn_status_unsupported_parameter;
    }
    return xnn_create_unary_elementwise_nc(kind, xnn_datatype_fp32, xnn_datatype_fp32, &params, NULL, NULL, 0, op);
#else
    switch (type) {
    case EKX_CLAMP:
        return xnn_create_clamp_nc_f32(channels, channels, channels, a, b, 0, op);
    case EKX_LEAKY_RELU:
        return xnn_create_leaky_relu_nc_f32(channels, channels, channels, a, 0, op);
    case EKX_SIGMOID:
        return xnn_create_sigmoid_nc_f32(channels, channels, channels, 0, op);
    case EKX_HARD_SWISH:
        return xnn_create_hardswish_nc_f32(channels, channels, channels, 0, op);
    }
    return xnn_status_unsupported_parameter;
#endif
}

static inline enum xnn_status ekx_setup_unary(xnn_operator_t op, enum ekx_unary type, size_t rows, size_t channels,
                                              const float *x, float *y, pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    (void)type;
    enum xnn_status st = xnn_reshape_unary_elementwise_nc(op, rows, channels, channels, channels, pool);
    return st != xnn_status_success ? st : xnn_setup_unary_elementwise_nc(op, x, y);
#else
    (void)channels;
    switch (type) {
    case EKX_CLAMP:
        return xnn_setup_clamp_nc_f32(op, rows, x, y, pool);
    case EKX_LEAKY_RELU:
        return xnn_setup_leaky_relu_nc_f32(op, rows, x, y, pool);
    case EKX_SIGMOID:
        return xnn_setup_sigmoid_nc_f32(op, rows, x, y, pool);
    case EKX_HARD_SWISH:
        return xnn_setup_hardswish_nc_f32(op, rows, x, y, pool);
    }
    return xnn_status_invalid_parameter;
#endif
}

/* A binary op; *clamp is the separate clamp of the output the 2024 API needs for [lo, hi] (NULL when
 * the operator has it fused, or the range is unbounded): run it on Y, in place, after the op. */
static inline enum xnn_status ekx_create_binary(enum ekx_binary type, float lo, float hi, xnn_operator_t *op,
                                                xnn_operator_t *clamp) {
    *clamp = NULL;
#if EKX_GENERATION == 2024
    static const enum xnn_binary_operator kinds[] = {
        [EKX_ADD] = xnn_binary_add, [EKX_SUB] = xnn_binary_subtract,
        [EKX_MUL] = xnn_binary_multiply, [EKX_DIV] = xnn_binary_divide};
    if ((unsigned)type >= sizeof kinds / sizeof kinds[0])
        return xnn_status_unsupported_parameter;
    enum xnn_status st = xnn_create_binary_elementwise_nd(kinds[type], xnn_datatype_fp32, NULL, NULL, NULL, 0, op);
    if (st == xnn_status_success && (lo != -INFINITY || hi != INFINITY))
        st = ekx_create_unary(EKX_CLAMP, 0, lo, hi, clamp);
    return st;
#else
    switch (type) {
    case EKX_ADD:
        return xnn_create_add_nd_f32(lo, hi, 0, op);
    case EKX_SUB:
        return xnn_create_subtract_nd_f32(lo, hi, 0, op);
    case EKX_MUL:
        return xnn_create_multiply_nd_f32(lo, hi, 0, op);
    case EKX_DIV:
        return xnn_create_divide_nd_f32(lo, hi, 0, op);
    }
    return xnn_status_unsupported_parameter;
#endif
}

static inline enum xnn_status ekx_setup_binary(xnn_operator_t op, enum ekx_binary type, size_t rank_a,
                                               const size_t *shape_a, size_t rank_b, const size_t *shape_b,
                                               const float *a, const float *b, float *y, pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    (void)type;
    enum xnn_status st = xnn_reshape_binary_elementwise_nd(op, rank_a, shape_a, rank_b, shape_b, pool);
    return st != xnn_status_success ? st : xnn_setup_binary_elementwise_nd(op, a, b, y);
#else
    switch (type) {
    case EKX_ADD:
        return xnn_setup_add_nd_f32(op, rank_a, shape_a, rank_b, shape_b, a, b, y, pool);
    case EKX_SUB:
        return xnn_setup_subtract_nd_f32(op, rank_a, shape_a, rank_b, shape_b, a, b, y, pool);
    case EKX_MUL:
        return xnn_setup_multiply_nd_f32(op, rank_a, shape_a, rank_b, shape_b, a, b, y, pool);
    case EKX_DIV:
        return xnn_setup_divide_nd_f32(op, rank_a, shape_a, rank_b, shape_b, a, b, y, pool);
    }
    return xnn_status_invalid_parameter;
#endif
}

/* PReLU of [rows, channels] with one slope per channel (`slope`: channels floats, padded). */
static inline enum xnn_status ekx_create_prelu(size_t channels, const float *slope, xnn_operator_t *op) {
#if EKX_GENERATION == 2024
    (void)channels;
    (void)slope; /* an operand of each setup */
    return xnn_create_binary_elementwise_nd(xnn_binary_prelu, xnn_datatype_fp32, NULL, NULL, NULL, 0, op);
#else
    return xnn_create_prelu_nc_f32(channels, channels, channels, slope, 0, op);
#endif
}

static inline enum xnn_status ekx_setup_prelu(xnn_operator_t op, size_t rows, size_t channels, const float *slope,
                                              const float *x, float *y, pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    const size_t shape_x[2] = {rows, channels}, shape_slope[1] = {channels};
    enum xnn_status st = xnn_reshape_binary_elementwise_nd(op, 2, shape_x, 1, shape_slope, pool);
    return st != xnn_status_success ? st : xnn_setup_binary_elementwise_nd(op, x, slope, y);
#else
    (void)channels;
    (void)slope;
    return xnn_setup_prelu_nc_f32(op, rows, x, y, pool);
#endif
}

static inline enum xnn_status ekx_create_softmax(size_t channels, xnn_operator_t *op) {
#if EKX_GENERATION == 2024
    (void)channels;
    return xnn_create_softmax_nc_f32(0, op);
#else
    return xnn_create_softmax_nc_f32(channels, channels, channels, 0, op);
#endif
}

static inline enum xnn_status ekx_setup_softmax(xnn_operator_t op, size_t rows, size_t channels, const float *x,
                                                float *y, pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    enum xnn_status st = xnn_reshape_softmax_nc_f32(op, channels, channels, channels, rows, pool);
    return st != xnn_status_success ? st : xnn_setup_softmax_nc_f32(op, x, y);
#else
    (void)channels;
    return xnn_setup_softmax_nc_f32(op, rows, x, y, pool);
#endif
}

/* ---- resize ---- */

static inline enum xnn_status ekx_create_resize_bilinear(size_t channels, size_t out_height, size_t out_width,
                                                         uint32_t flags, xnn_operator_t *op) {
#if EKX_GENERATION == 2024
    (void)channels;
    return xnn_create_resize_bilinear2d_nhwc_f32(out_height, out_width, flags, op);
#else
    (void)out_height;
    (void)out_width;
    return xnn_create_resize_bilinear2d_nhwc_f32(channels, channels, channels, flags, op);
#endif
}

static inline enum xnn_status ekx_setup_resize_bilinear(xnn_operator_t op, struct ekx_workspace *ws, size_t batch,
                                                        size_t height, size_t width, size_t channels,
                                                        size_t out_height, size_t out_width, const float *x,
                                                        float *y, pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    (void)out_height;
    (void)out_width;
    size_t size = 0, alignment = 0;
    void *data;
    enum xnn_status st = xnn_reshape_resize_bilinear2d_nhwc_f32(op, batch, height, width, channels, channels,
                                                                channels, &size, &alignment, pool);
    if (st != xnn_status_success)
        return st;
    EKX_WORKSPACE(ws, size, alignment, data);
    return xnn_setup_resize_bilinear2d_nhwc_f32(op, data, x, y);
#else
    (void)ws;
    (void)channels;
    return xnn_setup_resize_bilinear2d_nhwc_f32(op, batch, height, width, out_height, out_width, x, y, pool);
#endif
}

#endif
