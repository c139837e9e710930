/* The int8 ops of .ekm 1.5 on XNNPACK (docs/model-format.md, "Quantized ops"), for provider.c, which
 * owns the op states, the setup cache, the team and the provider table.
 *
 * The spec requantizes with float32 arithmetic (y = rint(acc x mult) + zero point, ties to even), and
 * allows a kernel one unit of the output's int8 value more. XNNPACK's operators here:
 * - QCONV: convolution2d_nhwc_qc8 (per-channel scales; a one-element w_scale is repeated), whose
 *   requantization is the spec's float32 one on every ISA; the qs8 convolution would use fixed-point
 *   requantization on ARM. Depthwise is a convolution with groups = C.
 * - QFULLY_CONNECTED: fully_connected_nc_qs8 with one weight scale; per-channel scales run on the 2024
 *   API's fully_connected_nc_qs8_qc8w, and with the 2022 API (no qc8 fully connected operator) as a 1x1
 *   qc8 convolution over the rows (XNNPACK runs a 1x1 stride-1 unpadded convolution as one GEMM, as its
 *   fully connected operator).
 * - QADD, QMUL: add_nd_qs8 (fixed-point multipliers: within one unit), multiply_nd_qs8.
 * - QGLOBAL_AVERAGE_POOL: global_average_pooling_nwc_qs8 (2022); the 2024 API has only the reduce
 *   operator: its qint8 mean over [N, H*W, C] axis 1 (its float mean crashes in xnn_run_operator in
 *   Debian 13's build, generation.h; the qint8 one ran and matched the spec on trixie's amd64 library).
 * - MAX_POOL on int8: max_pooling2d_nhwc_s8 (create_pool in provider.c checks the windows).
 * - DEQUANTIZE (from int8 and uint8): the convert_nc operators, exact.
 * Declined (the portable kernel runs them): QUANTIZE (XNNPACK's convert_nc_f32_qs8 makes NaN q_max, the
 * spec zero_point; it also multiplies by 1/scale, one unit off near ties), QAVERAGE_POOL (this XNNPACK
 * has a qu8 one only), QLUT,
 * q_min == q_max (XNNPACK wants output_min < output_max), and whatever XNNPACK's create refuses, such as
 * a requantization scale outside its range (e.g. x_scale x w_scale / y_scale >= 256 for convolutions).
 *
 * Both XNNPACK generations of generation.h: every XNNPACK call is in the "XNNPACK's calls" section below
 * (2022: create with the channels, setup with the shapes, pointers and pool; 2024: create, reshape with the
 * shapes and pool, setup with pointers and workspace). The 2024 binary operators have no output range: a
 * QADD or QMUL with q_min/q_max narrower than the int8 range gets a qint8 clamp run after it in place
 * (provider.c's s->clamp, as the float binary ops there). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

#include "provider.h"


bool ekx_is_quantized(const struct ek_op *op) {
    if (op->type >= EK_OP_QUANTIZE && op->type <= EK_OP_QLUT)
        return true;
    return op->type == EK_OP_MAX_POOL && op->n_in >= 1 && op->in[0] && op->in[0]->dtype == EK_DTYPE_INT8;
}

static bool is_dtype(const struct ek_tensor_desc *t, ek_dtype_t dtype) {
    return t && t->dtype == dtype;
}

/* A tensor's quantization: `<prefix>_scale` (finite, > 0) and `<prefix>_zero_point` (within int8, or
 * uint8 when `unsigned_zp`); defaults 1 and 0. false: declined (the loader refuses such models anyway). */
static bool attr_quant(const struct ek_op *op, const char *scale_name, const char *zp_name, bool unsigned_zp,
                       float *scale, int32_t *zero_point) {
    int64_t zp;
    if (!attr_float(op, scale_name, 1.0f, scale) || !attr_int(op, zp_name, 0, &zp))
        return false;
    if (!isfinite(*scale) || !(*scale > 0.0f))
        return false;
    if (unsigned_zp ? (zp < 0 || zp > 255) : (zp < -128 || zp > 127))
        return false;
    *zero_point = (int32_t)zp;
    return true;
}

/* q_min, q_max (defaults -128, 127): XNNPACK's output_min < output_max, so q_min == q_max is declined. */
static bool attr_qrange(const struct ek_op *op, int8_t *lo, int8_t *hi) {
    int64_t qmin, qmax;
    if (!attr_int(op, "q_min", -128, &qmin) || !attr_int(op, "q_max", 127, &qmax))
        return false;
    if (qmin < -128 || qmax > 127 || !(qmin < qmax))
        return false;
    *lo = (int8_t)qmin;
    *hi = (int8_t)qmax;
    return true;
}

/* The weights of QCONV / QFULLY_CONNECTED: w_scale (constant float32, `channels` or 1 elements, each
 * finite and > 0) and the optional constant int32 bias of `channels`. */
static bool quant_weights(const struct ek_op *op, int64_t channels, const float **w_scale, size_t *w_scale_count,
                          const int32_t **bias) {
    const struct ek_tensor_desc *ws = op->n_in > 2 ? op->in[2] : NULL, *b = op->n_in > 3 ? op->in[3] : NULL;
    if (!is_dtype(op->in[1], EK_DTYPE_INT8) || !is_constant(op->in[1]))
        return false;
    if (!is_dtype(ws, EK_DTYPE_FLOAT32) || !is_constant(ws) || (ws->count != 1 && (int64_t)ws->count != channels))
        return false;
    const float *v = (const float *)ws->constant;
    for (size_t i = 0; i < ws->count; i++)
        if (!isfinite(v[i]) || !(v[i] > 0.0f))
            return false;
    *w_scale = v;
    *w_scale_count = ws->count;
    *bias = NULL;
    if (b) {
        if (!is_dtype(b, EK_DTYPE_INT32) || !is_constant(b) || (int64_t)b->count != channels)
            return false;
        *bias = (const int32_t *)b->constant;
    }
    return true;
}

/* w_scale per output channel: a one-element w_scale repeated (the caller frees). */
static float *channel_scales(const float *w_scale, size_t count, int64_t channels) {
    float *scales = malloc((size_t)channels * sizeof *scales);
    if (scales)
        for (int64_t i = 0; i < channels; i++)
            scales[i] = w_scale[count == 1 ? 0 : i];
    return scales;
}

/* ---- XNNPACK's calls, for both generations (generation.h) ---- */

#if EKX_GENERATION == 2024
#define EKX_CACHES , NULL, NULL /* the 2024 creates' code and weights caches: none */
#else
#define EKX_CACHES
#endif

static enum xnn_status create_conv_qc8(const struct ekx_conv *g, int8_t x_zp, float x_scale, const float *scales,
                                       const int8_t *w, const int32_t *bias, int8_t y_zp, float y_scale,
                                       int8_t lo, int8_t hi, xnn_operator_t *op) {
    /* W[M,KH,KW,C/group] is XNNPACK's [groups, group_output_channels, kh, kw, group_input_channels]. */
#if EKX_GENERATION == 2024
    return xnn_create_convolution2d_nhwc_qs8_qc8w(
#else
    return xnn_create_convolution2d_nhwc_qc8(
#endif
        g->pads[0], g->pads[3], g->pads[2], g->pads[1], (uint32_t)g->kh, (uint32_t)g->kw, g->strides[0],
        g->strides[1], g->dilations[0], g->dilations[1], (uint32_t)g->group, (size_t)g->cg,
        (size_t)(g->m / g->group), (size_t)g->c, (size_t)g->m, x_zp, x_scale, scales, w, bias, y_zp, y_scale, lo,
        hi, 0 EKX_CACHES, op);
}

static enum xnn_status setup_conv_qc8(xnn_operator_t op, struct ekx_workspace *ws, size_t batch, size_t height,
                                      size_t width, const int8_t *x, int8_t *y, pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    size_t size = 0, alignment = 0;
    void *data;
    enum xnn_status st = xnn_reshape_convolution2d_nhwc_qs8_qc8w(op, batch, height, width, &size, &alignment, NULL,
                                                                 NULL, pool);
    if (st != xnn_status_success)
        return st;
    EKX_WORKSPACE(ws, size, alignment, data);
    return xnn_setup_convolution2d_nhwc_qs8_qc8w(op, data, x, y);
#else
    (void)ws;
    return xnn_setup_convolution2d_nhwc_qc8(op, batch, height, width, x, y, pool);
#endif
}

/* W[N,K] (XNNPACK's default layout [output_channels, input_channels]); `scales`: N per-channel scales, or
 * NULL for the one scale `scale`. */
static enum xnn_status create_fc_q(size_t k, size_t n, int8_t x_zp, float x_scale, const float *scales, float scale,
                                   const int8_t *w, const int32_t *bias, int8_t y_zp, float y_scale, int8_t lo,
                                   int8_t hi, xnn_operator_t *op) {
    if (!scales)
        return xnn_create_fully_connected_nc_qs8(k, n, k, n, x_zp, x_scale, scale, w, bias, y_zp, y_scale, lo, hi,
                                                 0 EKX_CACHES, op);
#if EKX_GENERATION == 2024
    return xnn_create_fully_connected_nc_qs8_qc8w(k, n, k, n, x_zp, x_scale, scales, w, bias, y_zp, y_scale, lo, hi,
                                                  0, NULL, NULL, op);
#else
    /* No qc8 fully connected operator: the rows as a [1, rows, 1, K] image under a 1x1 convolution. */
    if (k > UINT32_MAX || n > UINT32_MAX)
        return xnn_status_unsupported_parameter;
    const struct ekx_conv g = {{0, 0, 0, 0}, {1, 1}, {1, 1}, 1, (int64_t)k, (int64_t)n, 1, 1, (int64_t)k};
    return create_conv_qc8(&g, x_zp, x_scale, scales, w, bias, y_zp, y_scale, lo, hi, op);
#endif
}

static enum xnn_status setup_fc_q(xnn_operator_t op, bool per_channel, size_t rows, const int8_t *x, int8_t *y,
                                  pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    enum xnn_status st = per_channel ? xnn_reshape_fully_connected_nc_qs8_qc8w(op, rows, pool)
                                     : xnn_reshape_fully_connected_nc_qs8(op, rows, pool);
    if (st != xnn_status_success)
        return st;
    return per_channel ? xnn_setup_fully_connected_nc_qs8_qc8w(op, x, y) : xnn_setup_fully_connected_nc_qs8(op, x, y);
#else
    if (per_channel)
        return xnn_setup_convolution2d_nhwc_qc8(op, 1, rows, 1, x, y, pool);
    return xnn_setup_fully_connected_nc_qs8(op, rows, x, y, pool);
#endif
}

/* *clamp: as generation.h's ekx_create_binary, the separate clamp of Y to [lo, hi] the 2024 API needs
 * (NULL: none), which provider.c sets up and runs after the op, in place. */
static enum xnn_status create_binary_q(enum ekx_binary type, int8_t a_zp, float a_scale, int8_t b_zp, float b_scale,
                                       int8_t y_zp, float y_scale, int8_t lo, int8_t hi, xnn_operator_t *op,
                                       xnn_operator_t *clamp) {
    *clamp = NULL;
#if EKX_GENERATION == 2024
    const struct xnn_quantization_params qa = {a_zp, a_scale}, qb = {b_zp, b_scale}, qy = {y_zp, y_scale};
    enum xnn_status st = xnn_create_binary_elementwise_nd(type == EKX_ADD ? xnn_binary_add : xnn_binary_multiply,
                                                          xnn_datatype_qint8, &qa, &qb, &qy, 0, op);
    if (st != xnn_status_success || (lo == INT8_MIN && hi == INT8_MAX))
        return st;
    /* The qint8 clamp takes its bounds as real values, which it quantizes back to lo and hi. */
    union xnn_unary_params params = {0};
    params.clamp.min = (float)(lo - y_zp) * y_scale;
    params.clamp.max = (float)(hi - y_zp) * y_scale;
    return xnn_create_unary_elementwise_nc(xnn_unary_clamp, xnn_datatype_qint8, xnn_datatype_qint8, &params, &qy, &qy,
                                           0, clamp);
#else
    if (type == EKX_ADD)
        return xnn_create_add_nd_qs8(a_zp, a_scale, b_zp, b_scale, y_zp, y_scale, lo, hi, 0, op);
    return xnn_create_multiply_nd_qs8(a_zp, a_scale, b_zp, b_scale, y_zp, y_scale, lo, hi, 0, op);
#endif
}

static enum xnn_status setup_binary_q(xnn_operator_t op, enum ekx_binary type, size_t rank_a, const size_t *shape_a,
                                      size_t rank_b, const size_t *shape_b, const int8_t *a, const int8_t *b,
                                      int8_t *y, pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    (void)type;
    enum xnn_status st = xnn_reshape_binary_elementwise_nd(op, rank_a, shape_a, rank_b, shape_b, pool);
    return st != xnn_status_success ? st : xnn_setup_binary_elementwise_nd(op, a, b, y);
#else
    if (type == EKX_ADD)
        return xnn_setup_add_nd_qs8(op, rank_a, shape_a, rank_b, shape_b, a, b, y, pool);
    return xnn_setup_multiply_nd_qs8(op, rank_a, shape_a, rank_b, shape_b, a, b, y, pool);
#endif
}

static enum xnn_status create_global_avg_q(size_t channels, int8_t x_zp, float x_scale, int8_t y_zp, float y_scale,
                                           xnn_operator_t *op) {
#if EKX_GENERATION == 2024
    (void)channels;
    const struct xnn_quantization_params qx = {x_zp, x_scale}, qy = {y_zp, y_scale};
    return xnn_create_reduce_nd(xnn_reduce_mean, xnn_datatype_qint8, &qx, &qy, 0, op);
#else
    return xnn_create_global_average_pooling_nwc_qs8(channels, channels, channels, x_zp, x_scale, y_zp, y_scale,
                                                     INT8_MIN, INT8_MAX, 0, op);
#endif
}

static enum xnn_status setup_global_avg_q(xnn_operator_t op, struct ekx_workspace *ws, size_t batch, size_t width,
                                          size_t channels, const int8_t *x, int8_t *y, pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    const size_t shape[3] = {batch, width, channels};
    const int64_t axes[1] = {1};
    size_t size = 0, alignment = 0;
    void *data;
    enum xnn_status st = xnn_reshape_reduce_nd(op, 1, axes, 3, shape, &size, &alignment, pool);
    if (st != xnn_status_success)
        return st;
    EKX_WORKSPACE(ws, size, alignment, data);
    return xnn_setup_reduce_nd(op, data, x, y);
#else
    (void)ws, (void)channels;
    return xnn_setup_global_average_pooling_nwc_qs8(op, batch, width, x, y, pool);
#endif
}

enum xnn_status ekx_create_max_pool_s8(const uint32_t pads[4], uint32_t bottom, uint32_t right,
                                       const uint32_t kernel[2], const uint32_t strides[2],
                                       const uint32_t dilations[2], size_t channels, xnn_operator_t *op) {
#if EKX_GENERATION == 2024
    (void)channels; /* given at reshape */
    return xnn_create_max_pooling2d_nhwc_s8(pads[0], right, bottom, pads[1], kernel[0], kernel[1], strides[0],
                                            strides[1], dilations[0], dilations[1], INT8_MIN, INT8_MAX, 0, op);
#else
    return xnn_create_max_pooling2d_nhwc_s8(pads[0], right, bottom, pads[1], kernel[0], kernel[1], strides[0],
                                            strides[1], dilations[0], dilations[1], channels, channels, channels,
                                            INT8_MIN, INT8_MAX, 0, op);
#endif
}

static enum xnn_status setup_max_pool_s8(xnn_operator_t op, size_t batch, size_t height, size_t width,
                                         size_t channels, const int8_t *x, int8_t *y, pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    enum xnn_status st = xnn_reshape_max_pooling2d_nhwc_s8(op, batch, height, width, channels, channels, channels,
                                                           NULL, NULL, pool);
    return st != xnn_status_success ? st : xnn_setup_max_pooling2d_nhwc_s8(op, x, y);
#else
    (void)channels;
    return xnn_setup_max_pooling2d_nhwc_s8(op, batch, height, width, x, y, pool);
#endif
}

/* DEQUANTIZE of `channels` elements per row from int8 (or uint8 when `u8`). */
static enum xnn_status create_dequantize_q(bool u8, size_t channels, float scale, int32_t zp, xnn_operator_t *op) {
#if EKX_GENERATION == 2024
    (void)channels;
    const struct xnn_quantization_params q = {zp, scale};
    return xnn_create_unary_elementwise_nc(xnn_unary_convert, u8 ? xnn_datatype_quint8 : xnn_datatype_qint8,
                                           xnn_datatype_fp32, NULL, &q, NULL, 0, op);
#else
    return u8 ? xnn_create_convert_nc_qu8_f32(channels, channels, channels, scale, (uint8_t)zp, 0, op)
              : xnn_create_convert_nc_qs8_f32(channels, channels, channels, scale, (int8_t)zp, 0, op);
#endif
}

static enum xnn_status setup_dequantize_q(xnn_operator_t op, bool u8, size_t rows, size_t channels, const void *x,
                                          float *y, pthreadpool_t pool) {
#if EKX_GENERATION == 2024
    (void)u8;
    enum xnn_status st = xnn_reshape_unary_elementwise_nc(op, rows, channels, channels, channels, pool);
    return st != xnn_status_success ? st : xnn_setup_unary_elementwise_nc(op, x, y);
#else
    (void)channels;
    return u8 ? xnn_setup_convert_nc_qu8_f32(op, rows, x, y, pool) : xnn_setup_convert_nc_qs8_f32(op, rows, x, y, pool);
#endif
}

/* ---- where the portable kernels are faster ---- */

/* Whether the portable int8 GEMM runs AVX512-VNNI here, as it picks it (kernels/portable/qconv.c): an
 * x86-64 CPU with AVX512F, AVX512BW and AVX512_VNNI whose OS saves the AVX-512 state, unless
 * EDGEKIT_QGEMM_ISA names another of its micro-kernels. */
static bool portable_qgemm_is_vnni(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    const char *forced = getenv("EDGEKIT_QGEMM_ISA");
    if (forced && *forced && strcmp(forced, "avx512vnni") != 0)
        return false;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) /* OSXSAVE */
        return false;
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0xe6) != 0xe6) /* XMM, YMM, opmask, ZMM state */
        return false;
    if (__get_cpuid_max(0, NULL) < 7)
        return false;
    __cpuid_count(7, 0, a, b, c, d);
    return (b & (1u << 16)) && (b & (1u << 30)) && (c & (1u << 11)); /* AVX512F, AVX512BW, AVX512_VNNI */
#else
    return false;
#endif
}

/* The 2022 XNNPACK has no VNNI micro-kernels (the 2024 one has, within 0.8x to 1.5x of the portable
 * kernels' time: it keeps every op): on an x86-64 CPU with AVX512-VNNI the portable int8 GEMM beats its
 * qc8/qs8 GEMMs, measured 2.0x to 2.8x on every dense and 1x1 QCONV of MobileNetV2 at 224
 * (1 thread; 1x1 56x56x24->144: 87 us against 242 us) and on a QFULLY_CONNECTED from 8 rows
 * (1280 -> 1000: 74 against 131 us at 8 rows, 441 against 1046 at 64), so those stay portable. XNNPACK
 * keeps depthwise and grouped QCONVs (1.0x to 1.3x faster) and fully connected ops on fewer rows (its
 * GEMV: 25 against 71 us on one row). On aarch64 XNNPACK's qc8 runs fewer instructions than the portable
 * kernels on every one of those layers (Cortex-A76, qemu): nothing is declined there. */
#define EKX_VNNI_MIN_ROWS 8
static bool portable_gemm_faster(size_t rows) {
    return EKX_GENERATION == 2022 && rows >= EKX_VNNI_MIN_ROWS && portable_qgemm_is_vnni();
}

/* ---- ops ---- */

/* QCONV: X[N,H,W,C], W[M,KH,KW,C/group], w_scale[M or 1], bias[M]? -> Y[N,OH,OW,M], all int8 but the
 * scales and the int32 bias. */
static ek_status_t create_qconv(const struct ek_op *op, struct ekx_state *s) {
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    struct ekx_conv g;
    float x_scale, y_scale;
    int32_t x_zp, y_zp;
    int8_t lo, hi;
    const float *w_scale;
    size_t w_scale_count;
    const int32_t *bias;
    if (op->n_in < 3 || !is_dtype(x, EK_DTYPE_INT8) || !is_dtype(y, EK_DTYPE_INT8) || !conv_geometry(op, &g) ||
        !quant_weights(op, g.m, &w_scale, &w_scale_count, &bias) ||
        !attr_quant(op, "x_scale", "x_zero_point", false, &x_scale, &x_zp) ||
        !attr_quant(op, "y_scale", "y_zero_point", false, &y_scale, &y_zp) || !attr_qrange(op, &lo, &hi))
        return EK_ERR_UNSUPPORTED;
    if (g.group == 1 && portable_gemm_faster(y->count / (size_t)g.m))
        return EK_ERR_UNSUPPORTED;
    float *scales = channel_scales(w_scale, w_scale_count, g.m);
    if (!scales)
        return EK_ERR_OUT_OF_MEMORY;
    enum xnn_status st = create_conv_qc8(&g, (int8_t)x_zp, x_scale, scales, (const int8_t *)op->in[1]->constant,
                                         bias, (int8_t)y_zp, y_scale, lo, hi, &s->op);
    free(scales); /* XNNPACK packed them with the weights */
    if (st != xnn_status_success)
        return create_failed(st);
    s->kind = EKX_QCONV;
    s->batch = (size_t)x->dims[0];
    s->height = (size_t)x->dims[1];
    s->width = (size_t)x->dims[2];
    return EK_OK;
}

/* QFULLY_CONNECTED: X[..., K], W[N,K], w_scale[N or 1], bias[N]? -> Y[..., N]. */
static ek_status_t create_qfc(const struct ek_op *op, struct ekx_state *s) {
    const struct ek_tensor_desc *x = op->in[0], *w = op->n_in > 1 ? op->in[1] : NULL, *y = op->out[0];
    if (op->n_in < 3 || !w || !is_dtype(x, EK_DTYPE_INT8) || !is_dtype(y, EK_DTYPE_INT8) || x->rank < 1 ||
        w->rank != 2 || y->rank < 1)
        return EK_ERR_UNSUPPORTED;
    const int64_t k = w->dims[1], n = w->dims[0];
    if (x->dims[x->rank - 1] != k || y->dims[y->rank - 1] != n || x->count / (size_t)k != y->count / (size_t)n)
        return EK_ERR_UNSUPPORTED;
    float x_scale, y_scale;
    int32_t x_zp, y_zp;
    int8_t lo, hi;
    const float *w_scale;
    size_t w_scale_count;
    const int32_t *bias;
    if (!quant_weights(op, n, &w_scale, &w_scale_count, &bias) ||
        !attr_quant(op, "x_scale", "x_zero_point", false, &x_scale, &x_zp) ||
        !attr_quant(op, "y_scale", "y_zero_point", false, &y_scale, &y_zp) || !attr_qrange(op, &lo, &hi))
        return EK_ERR_UNSUPPORTED;
    if (portable_gemm_faster(x->count / (size_t)k))
        return EK_ERR_UNSUPPORTED;
    float *scales = NULL; /* per-channel: N of them */
    if (w_scale_count != 1 && !(scales = channel_scales(w_scale, w_scale_count, n)))
        return EK_ERR_OUT_OF_MEMORY;
    enum xnn_status st = create_fc_q((size_t)k, (size_t)n, (int8_t)x_zp, x_scale, scales, w_scale[0],
                                     (const int8_t *)w->constant, bias, (int8_t)y_zp, y_scale, lo, hi, &s->op);
    free(scales); /* XNNPACK packed them with the weights */
    s->kind = EKX_QFC;
    s->per_channel = w_scale_count != 1;
    s->batch = x->count / (size_t)k;
    return st == xnn_status_success ? EK_OK : create_failed(st);
}

/* QADD, QMUL: numpy broadcasting as ADD and MUL, folded as the float binary ops. */
static ek_status_t create_qbinary(const struct ek_op *op, struct ekx_state *s) {
    const struct ek_tensor_desc *a = op->in[0], *b = op->n_in > 1 ? op->in[1] : NULL, *y = op->out[0];
    if (!is_dtype(a, EK_DTYPE_INT8) || !is_dtype(b, EK_DTYPE_INT8) || !is_dtype(y, EK_DTYPE_INT8))
        return EK_ERR_UNSUPPORTED;
    float a_scale, b_scale, y_scale;
    int32_t a_zp, b_zp, y_zp;
    int8_t lo, hi;
    if (!attr_quant(op, "x_scale", "x_zero_point", false, &a_scale, &a_zp) ||
        !attr_quant(op, "b_scale", "b_zero_point", false, &b_scale, &b_zp) ||
        !attr_quant(op, "y_scale", "y_zero_point", false, &y_scale, &y_zp) || !attr_qrange(op, &lo, &hi))
        return EK_ERR_UNSUPPORTED;
    if (!fold_broadcast(a, b, y, s) || broadcast_rows_too_short(s, y))
        return EK_ERR_UNSUPPORTED;
    s->binary = op->type == EK_OP_QADD ? EKX_ADD : EKX_MUL;
    enum xnn_status st = create_binary_q(s->binary, (int8_t)a_zp, a_scale, (int8_t)b_zp, b_scale, (int8_t)y_zp,
                                         y_scale, lo, hi, &s->op, &s->clamp);
    if (st != xnn_status_success)
        return create_failed(st);
    s->clamp_count = y->count;
    for (int i = 0; i < 2; i++) {
        if (is_constant(op->in[i])) {
            ek_status_t status = padded_copy(op->in[i], &s->constant[i]);
            if (status != EK_OK)
                return status;
        }
    }
    s->kind = EKX_QBINARY;
    return EK_OK;
}

/* QGLOBAL_AVERAGE_POOL: X[N,H,W,C] -> Y[N,1,1,C]; no q_min/q_max (the int8 range). */
static ek_status_t create_qglobal_avg(const struct ek_op *op, struct ekx_state *s) {
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    if (!is_dtype(x, EK_DTYPE_INT8) || !is_dtype(y, EK_DTYPE_INT8) || x->rank != 4 ||
        y->count != (size_t)(x->dims[0] * x->dims[3]))
        return EK_ERR_UNSUPPORTED;
    float x_scale, y_scale;
    int32_t x_zp, y_zp;
    if (!attr_quant(op, "x_scale", "x_zero_point", false, &x_scale, &x_zp) ||
        !attr_quant(op, "y_scale", "y_zero_point", false, &y_scale, &y_zp))
        return EK_ERR_UNSUPPORTED;
    const size_t c = (size_t)x->dims[3];
    enum xnn_status st = create_global_avg_q(c, (int8_t)x_zp, x_scale, (int8_t)y_zp, y_scale, &s->op);
    if (st != xnn_status_success)
        return create_failed(st);
    s->kind = EKX_QGLOBAL_AVG;
    s->channels = c;
    s->batch = (size_t)x->dims[0];
    s->width = (size_t)(x->dims[1] * x->dims[2]);
    return EK_OK;
}

/* DEQUANTIZE (int8 / uint8 -> float32): the tensor as one row, which XNNPACK splits into blocks. */
static ek_status_t create_dequantize(const struct ek_op *op, struct ekx_state *s) {
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    if (!is_dtype(y, EK_DTYPE_FLOAT32) || !(is_dtype(x, EK_DTYPE_INT8) || is_dtype(x, EK_DTYPE_UINT8)) ||
        x->count != y->count)
        return EK_ERR_UNSUPPORTED;
    const bool u8 = x->dtype == EK_DTYPE_UINT8;
    float scale;
    int32_t zp;
    if (!attr_quant(op, "scale", "zero_point", u8, &scale, &zp))
        return EK_ERR_UNSUPPORTED;
    enum xnn_status st = create_dequantize_q(u8, x->count, scale, zp, &s->op);
    if (st != xnn_status_success)
        return create_failed(st);
    s->kind = EKX_QDEQUANTIZE;
    s->from_u8 = u8;
    s->batch = 1;
    s->channels = x->count;
    return EK_OK;
}

ek_status_t ekx_create_quantized(const struct ek_op *op, struct ekx_state *s) {
    switch (op->type) {
    case EK_OP_DEQUANTIZE:
        return create_dequantize(op, s);
    case EK_OP_QCONV:
        return create_qconv(op, s);
    case EK_OP_QFULLY_CONNECTED:
        return create_qfc(op, s);
    case EK_OP_QADD:
    case EK_OP_QMUL:
        return create_qbinary(op, s);
    case EK_OP_QGLOBAL_AVERAGE_POOL:
        return create_qglobal_avg(op, s);
    default: /* QUANTIZE (NaN), QAVERAGE_POOL (qu8 only in this XNNPACK), QLUT: portable */
        return EK_ERR_UNSUPPORTED;
    }
}

/* ---- setup ---- */

enum xnn_status ekx_setup_quantized(struct ekx_state *s, const void *const *in, const void *x, void *y,
                                    pthreadpool_t pool) {
    switch (s->kind) {
    case EKX_QCONV:
        return setup_conv_qc8(s->op, &s->workspace, s->batch, s->height, s->width, x, y, pool);
    case EKX_QFC:
        return setup_fc_q(s->op, s->per_channel, s->batch, x, y, pool);
    case EKX_QBINARY: {
        const int8_t *a = s->constant[0] ? (const int8_t *)s->constant[0] : x;
        const int8_t *b = s->constant[1] ? (const int8_t *)s->constant[1] : in[1];
        return setup_binary_q(s->op, s->binary, s->rank_a, s->shape_a, s->rank_b, s->shape_b, a, b, y, pool);
    }
    case EKX_QGLOBAL_AVG:
        return setup_global_avg_q(s->op, &s->workspace, s->batch, s->width, s->channels, x, y, pool);
    case EKX_QMAX_POOL:
        return setup_max_pool_s8(s->op, s->batch, s->height, s->width, s->channels, x, y, pool);
    case EKX_QDEQUANTIZE:
        return setup_dequantize_q(s->op, s->from_u8, s->batch, s->channels, x, y, pool);
    default:
        return xnn_status_invalid_state;
    }
}
