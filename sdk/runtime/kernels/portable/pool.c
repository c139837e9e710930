/* MAX_POOL, AVERAGE_POOL and GLOBAL_AVERAGE_POOL on NHWC tensors, and their int8 forms (MAX_POOL on
 * int8, QAVERAGE_POOL, QGLOBAL_AVERAGE_POOL: .ekm 1.5): loops over output pixels with the channels
 * innermost, parallel over output rows. Windows start at o * stride - pad_begin; taps outside the
 * input are skipped, and prepare() makes sure every window keeps at least one. The quantized pools sum
 * x - x_zero_point in int32 and requantize with x_scale / (y_scale x count); prepare() refuses windows
 * (or QGLOBAL_AVERAGE_POOL's H x W) of more than 2^23 taps, so the sum never overflows. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "internal.h"
#include "portable.h"
#include "quant.h"

#define ATTR_MAX ((int64_t)1 << 30)

#define QPOOL_MAX_TAPS ((int64_t)1 << 23) /* 255 x 2^23 < 2^31 */

struct pool_params {
    bool is_max;
    bool int8; /* MAX_POOL on int8 (.ekm 1.5) */
    bool quant; /* QAVERAGE_POOL, QGLOBAL_AVERAGE_POOL */
    float xs, ys;
    int32_t xzp, yzp;
    bool count_include_pad;
    size_t n, h, w, c, oh, ow, kh, kw;
    int64_t sh, sw, dh, dw, pt, pl, pb, pr;
};

static void pool_release(struct ek_op *op) {
    free(op->params);
    op->params = NULL;
}

/* The taps [*i0, *i1) of a window starting at `start` (k taps `d` apart) that fall inside [0, len). */
static void window_taps(int64_t start, int64_t d, int64_t k, int64_t len, int64_t *i0, int64_t *i1) {
    int64_t a = start >= 0 ? 0 : (-start + d - 1) / d;
    int64_t b = len - 1 - start < 0 ? 0 : (len - 1 - start) / d + 1;
    if (b > k)
        b = k;
    if (b < a)
        b = a;
    *i0 = a;
    *i1 = b;
}

/* One axis: check the output length against the floor and ceil formulas and that no window is all
 * padding. */
static ek_status_t pool_axis(const struct ek_op *op, const char *axis, int64_t in, int64_t out, int64_t k,
                             int64_t s, int64_t d, int64_t pb, int64_t pe) {
    int64_t ext = (k - 1) * d + 1, padded = in + pb + pe; /* attributes <= 2^30, dims < 2^62 */
    if (padded < ext)
        return ek_op_invalid(op, "padded input %s %lld is smaller than the window extent %lld", axis,
                             (long long)padded, (long long)ext);
    int64_t lo = (padded - ext) / s + 1, hi = (padded - ext + s - 1) / s + 1;
    if ((out < lo || out > hi) && lo == hi)
        return ek_op_invalid(op, "output %s is %lld, expected %lld", axis, (long long)out, (long long)lo);
    if (out < lo || out > hi) /* the floor formula, or one more with a ceil-mode partial window */
        return ek_op_invalid(op, "output %s is %lld, expected %lld or %lld", axis, (long long)out, (long long)lo,
                             (long long)hi);
    for (int64_t o = 0; o < out; o++) {
        int64_t i0, i1;
        window_taps(o * s - pb, d, k, in, &i0, &i1);
        if (i0 >= i1)
            return ek_op_invalid(op, "output %s %lld: the window has no tap inside the input", axis, (long long)o);
    }
    return EK_OK;
}

static ek_status_t check_attr(const struct ek_op *op, const char *name, const int64_t *v, int count, int64_t lo) {
    for (int i = 0; i < count; i++)
        if (v[i] < lo || v[i] > ATTR_MAX)
            return ek_op_invalid(op, "attribute '%s'[%d] = %lld is out of range [%lld, %lld]", name, i,
                                 (long long)v[i], (long long)lo, (long long)ATTR_MAX);
    return EK_OK;
}

/* The quantization attributes of QAVERAGE_POOL and QGLOBAL_AVERAGE_POOL. */
static ek_status_t qpool_attrs(const struct ek_op *op, float *xs, float *ys, int32_t *xzp, int32_t *yzp) {
    ek_status_t st;
    if ((st = ek_q_scale(op, "x_scale", xs)) != EK_OK || (st = ek_q_scale(op, "y_scale", ys)) != EK_OK ||
        (st = ek_q_zero_point(op, "x_zero_point", EK_DTYPE_INT8, xzp)) != EK_OK ||
        (st = ek_q_zero_point(op, "y_zero_point", EK_DTYPE_INT8, yzp)) != EK_OK)
        return st;
    return ek_q_check_multiplier(op, "x_scale / y_scale", *xs / *ys);
}

static ek_status_t pool_prepare_common(struct ek_op *op, bool is_max) {
    ek_status_t st = ek_check_arity(op, 1, 1);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    const bool quant = op->type == EK_OP_QAVERAGE_POOL;
    /* MAX_POOL also moves int8 (X and Y both) */
    const ek_dtype_t dtype = quant ? EK_DTYPE_INT8 : is_max ? ek_movement_dtype(op) : EK_DTYPE_FLOAT32;
    if ((st = ek_check_tensor(op, x, "X", 4, dtype)) != EK_OK || (st = ek_check_tensor(op, y, "Y", 4, dtype)) != EK_OK)
        return st;
    static const int64_t zeros[4] = {0, 0, 0, 0}, ones[2] = {1, 1};
    int64_t kernel[2], strides[2], pads[4], dil[2], cip = 0;
    if ((st = ek_attr_ints(op, "kernel", 2, NULL, kernel)) != EK_OK ||
        (st = ek_attr_ints(op, "strides", 2, ones, strides)) != EK_OK ||
        (st = ek_attr_ints(op, "pads", 4, zeros, pads)) != EK_OK ||
        (st = ek_attr_ints(op, "dilations", 2, ones, dil)) != EK_OK ||
        (!is_max && (st = ek_attr_int(op, "count_include_pad", 0, &cip)) != EK_OK))
        return st;
    if ((st = check_attr(op, "kernel", kernel, 2, 1)) != EK_OK ||
        (st = check_attr(op, "strides", strides, 2, 1)) != EK_OK ||
        (st = check_attr(op, "pads", pads, 4, 0)) != EK_OK || (st = check_attr(op, "dilations", dil, 2, 1)) != EK_OK)
        return st;
    if (cip != 0 && cip != 1)
        return ek_op_invalid(op, "count_include_pad must be 0 or 1, is %lld", (long long)cip);
    float xs = 1.0f, ys = 1.0f;
    int32_t xzp = 0, yzp = 0;
    if (quant) {
        if (kernel[0] * kernel[1] > QPOOL_MAX_TAPS)
            return ek_op_invalid(op, "a window of %lld x %lld taps is over 2^23: the int32 sum could overflow",
                                 (long long)kernel[0], (long long)kernel[1]);
        if ((st = qpool_attrs(op, &xs, &ys, &xzp, &yzp)) != EK_OK)
            return st;
    }
    if (y->dims[0] != x->dims[0] || y->dims[3] != x->dims[3])
        return ek_op_invalid(op, "Y is [%lld, %lld, %lld, %lld] for X [%lld, %lld, %lld, %lld]", (long long)y->dims[0],
                             (long long)y->dims[1], (long long)y->dims[2], (long long)y->dims[3], (long long)x->dims[0],
                             (long long)x->dims[1], (long long)x->dims[2], (long long)x->dims[3]);
    st = pool_axis(op, "height", x->dims[1], y->dims[1], kernel[0], strides[0], dil[0], pads[0], pads[2]);
    if (st == EK_OK)
        st = pool_axis(op, "width", x->dims[2], y->dims[2], kernel[1], strides[1], dil[1], pads[1], pads[3]);
    if (st != EK_OK)
        return st;
    struct pool_params *p = calloc(1, sizeof *p);
    if (!p)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no memory for op parameters");
    p->is_max = is_max;
    p->int8 = dtype == EK_DTYPE_INT8;
    p->quant = quant;
    p->xs = xs;
    p->ys = ys;
    p->xzp = xzp;
    p->yzp = yzp;
    p->count_include_pad = cip != 0;
    p->n = (size_t)x->dims[0];
    p->h = (size_t)x->dims[1];
    p->w = (size_t)x->dims[2];
    p->c = (size_t)x->dims[3];
    p->oh = (size_t)y->dims[1];
    p->ow = (size_t)y->dims[2];
    p->kh = (size_t)kernel[0];
    p->kw = (size_t)kernel[1];
    p->sh = strides[0];
    p->sw = strides[1];
    p->dh = dil[0];
    p->dw = dil[1];
    p->pt = pads[0];
    p->pl = pads[1];
    p->pb = pads[2];
    p->pr = pads[3];
    op->params = p;
    op->scratch_per_thread = 0;
    return EK_OK;
}

static ek_status_t max_pool_prepare(struct ek_op *op) { return pool_prepare_common(op, true); }
static ek_status_t average_pool_prepare(struct ek_op *op) { return pool_prepare_common(op, false); }

struct pool_run {
    const struct pool_params *p;
    const float *x;
    float *y;
};

static void pool_range(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct pool_run *r = arg;
    const struct pool_params *p = r->p;
    const size_t c = p->c;
    const int64_t h = (int64_t)p->h, w = (int64_t)p->w;
    for (size_t row = begin; row < end; row++) {
        size_t n = row / p->oh, oh = row % p->oh;
        const float *xn = r->x + n * p->h * p->w * c;
        int64_t sy = (int64_t)oh * p->sh - p->pt, a0, a1, pa0, pa1;
        window_taps(sy, p->dh, (int64_t)p->kh, h, &a0, &a1);
        window_taps(sy + p->pt, p->dh, (int64_t)p->kh, h + p->pt + p->pb, &pa0, &pa1);
        for (size_t ow = 0; ow < p->ow; ow++) {
            float *restrict out = r->y + (row * p->ow + ow) * c;
            int64_t sx = (int64_t)ow * p->sw - p->pl, b0, b1;
            window_taps(sx, p->dw, (int64_t)p->kw, w, &b0, &b1);
            if (p->is_max) {
                for (size_t ch = 0; ch < c; ch++)
                    out[ch] = -INFINITY;
            } else {
                memset(out, 0, c * sizeof(float));
            }
            for (int64_t a = a0; a < a1; a++) {
                const float *xrow = xn + (size_t)(sy + a * p->dh) * p->w * c;
                for (int64_t b = b0; b < b1; b++) {
                    const float *restrict xp = xrow + (size_t)(sx + b * p->dw) * c;
                    if (p->is_max) {
                        for (size_t ch = 0; ch < c; ch++)
                            out[ch] = xp[ch] > out[ch] ? xp[ch] : out[ch];
                    } else {
                        for (size_t ch = 0; ch < c; ch++)
                            out[ch] += xp[ch];
                    }
                }
            }
            if (!p->is_max) {
                int64_t count;
                if (p->count_include_pad) {
                    int64_t pb0, pb1;
                    window_taps(sx + p->pl, p->dw, (int64_t)p->kw, w + p->pl + p->pr, &pb0, &pb1);
                    count = (pa1 - pa0) * (pb1 - pb0);
                } else {
                    count = (a1 - a0) * (b1 - b0);
                }
                float scale = 1.0f / (float)count; /* prepare: at least one tap */
                for (size_t ch = 0; ch < c; ch++)
                    out[ch] *= scale;
            }
        }
    }
}

/* MAX_POOL on int8: the same windows, the maximum of the bytes. */
static void max_pool_range8(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct pool_run *r = arg;
    const struct pool_params *p = r->p;
    const size_t c = p->c;
    const int64_t h = (int64_t)p->h, w = (int64_t)p->w;
    const int8_t *x = (const int8_t *)(const void *)r->x;
    int8_t *y = (int8_t *)(void *)r->y;
    for (size_t row = begin; row < end; row++) {
        size_t n = row / p->oh, oh = row % p->oh;
        const int8_t *xn = x + n * p->h * p->w * c;
        int64_t sy = (int64_t)oh * p->sh - p->pt, a0, a1;
        window_taps(sy, p->dh, (int64_t)p->kh, h, &a0, &a1);
        for (size_t ow = 0; ow < p->ow; ow++) {
            int8_t *restrict out = y + (row * p->ow + ow) * c;
            int64_t sx = (int64_t)ow * p->sw - p->pl, b0, b1;
            window_taps(sx, p->dw, (int64_t)p->kw, w, &b0, &b1);
            memset(out, 0x80, c); /* -128 */
            for (int64_t a = a0; a < a1; a++) {
                const int8_t *xrow = xn + (size_t)(sy + a * p->dh) * p->w * c;
                for (int64_t b = b0; b < b1; b++) {
                    const int8_t *restrict xp = xrow + (size_t)(sx + b * p->dw) * c;
                    for (size_t ch = 0; ch < c; ch++)
                        out[ch] = xp[ch] > out[ch] ? xp[ch] : out[ch];
                }
            }
        }
    }
}

/* QAVERAGE_POOL: int32 sums of x - x_zero_point, requantized with x_scale / (y_scale x count). */
static void qavg_pool_range(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct pool_run *r = arg;
    const struct pool_params *p = r->p;
    const size_t c = p->c;
    const int64_t h = (int64_t)p->h, w = (int64_t)p->w;
    const int8_t *x = (const int8_t *)(const void *)r->x;
    int8_t *y = (int8_t *)(void *)r->y;
    int32_t acc[64];
    for (size_t row = begin; row < end; row++) {
        size_t n = row / p->oh, oh = row % p->oh;
        const int8_t *xn = x + n * p->h * p->w * c;
        int64_t sy = (int64_t)oh * p->sh - p->pt, a0, a1, pa0, pa1;
        window_taps(sy, p->dh, (int64_t)p->kh, h, &a0, &a1);
        window_taps(sy + p->pt, p->dh, (int64_t)p->kh, h + p->pt + p->pb, &pa0, &pa1);
        for (size_t ow = 0; ow < p->ow; ow++) {
            int8_t *out = y + (row * p->ow + ow) * c;
            int64_t sx = (int64_t)ow * p->sw - p->pl, b0, b1, count;
            window_taps(sx, p->dw, (int64_t)p->kw, w, &b0, &b1);
            if (p->count_include_pad) {
                int64_t pb0, pb1;
                window_taps(sx + p->pl, p->dw, (int64_t)p->kw, w + p->pl + p->pr, &pb0, &pb1);
                count = (pa1 - pa0) * (pb1 - pb0);
            } else {
                count = (a1 - a0) * (b1 - b0);
            }
            const float mult = p->xs / (p->ys * (float)count);
            const int32_t bias = -(int32_t)((a1 - a0) * (b1 - b0)) * p->xzp; /* the taps' zero points */
            for (size_t c0 = 0; c0 < c; c0 += 64) {
                size_t cn = c - c0 < 64 ? c - c0 : 64;
                for (size_t ch = 0; ch < cn; ch++)
                    acc[ch] = bias;
                for (int64_t a = a0; a < a1; a++) {
                    const int8_t *xrow = xn + (size_t)(sy + a * p->dh) * p->w * c + c0;
                    for (int64_t b = b0; b < b1; b++) {
                        const int8_t *xp = xrow + (size_t)(sx + b * p->dw) * c;
                        for (size_t ch = 0; ch < cn; ch++)
                            acc[ch] += xp[ch];
                    }
                }
                for (size_t ch = 0; ch < cn; ch++)
                    out[c0 + ch] = (int8_t)ek_q_round((float)acc[ch] * mult, p->yzp, -128, 127);
            }
        }
    }
}

static ek_status_t pool_run_fn(const struct ek_op *op, const void *const *in, void *const *out, struct ek_exec *exec) {
    const struct pool_params *p = op->params;
    if (!p)
        return ek_op_invalid(op, "not prepared");
    struct pool_run r = {p, in[0], out[0]};
    ek_parallel_for(exec, p->n * p->oh, p->quant ? qavg_pool_range : p->int8 ? max_pool_range8 : pool_range, &r);
    return EK_OK;
}

/* ---------------------------------------------------------------- GLOBAL_AVERAGE_POOL */

#define GAP_CHANNELS 64 /* channels summed at once, in registers / L1 */

static ek_status_t gap_prepare(struct ek_op *op) {
    ek_status_t st = ek_check_arity(op, 1, 1);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    const bool quant = op->type == EK_OP_QGLOBAL_AVERAGE_POOL;
    const ek_dtype_t dtype = quant ? EK_DTYPE_INT8 : EK_DTYPE_FLOAT32;
    if ((st = ek_check_tensor(op, x, "X", 4, dtype)) != EK_OK || (st = ek_check_tensor(op, y, "Y", 4, dtype)) != EK_OK)
        return st;
    if (y->dims[0] != x->dims[0] || y->dims[1] != 1 || y->dims[2] != 1 || y->dims[3] != x->dims[3])
        return ek_op_invalid(op, "Y is [%lld, %lld, %lld, %lld], expected [%lld, 1, 1, %lld]", (long long)y->dims[0],
                             (long long)y->dims[1], (long long)y->dims[2], (long long)y->dims[3], (long long)x->dims[0],
                             (long long)x->dims[3]);
    float xs = 1.0f, ys = 1.0f;
    int32_t xzp = 0, yzp = 0;
    if (quant) {
        if (x->dims[1] > QPOOL_MAX_TAPS / x->dims[2])
            return ek_op_invalid(op, "X's %lld x %lld pixels are over 2^23: the int32 sum could overflow",
                                 (long long)x->dims[1], (long long)x->dims[2]);
        if ((st = qpool_attrs(op, &xs, &ys, &xzp, &yzp)) != EK_OK)
            return st;
    }
    struct pool_params *p = calloc(1, sizeof *p);
    if (!p)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no memory for op parameters");
    p->n = (size_t)x->dims[0];
    p->h = (size_t)x->dims[1];
    p->w = (size_t)x->dims[2];
    p->c = (size_t)x->dims[3];
    p->quant = quant;
    p->xs = xs;
    p->ys = ys;
    p->xzp = xzp;
    p->yzp = yzp;
    op->params = p;
    op->scratch_per_thread = 0;
    return EK_OK;
}

static void gap_range(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct pool_run *r = arg;
    const struct pool_params *p = r->p;
    size_t blocks = (p->c + GAP_CHANNELS - 1) / GAP_CHANNELS, pixels = p->h * p->w;
    for (size_t it = begin; it < end; it++) {
        size_t n = it / blocks, c0 = it % blocks * GAP_CHANNELS;
        size_t cn = p->c - c0 < GAP_CHANNELS ? p->c - c0 : GAP_CHANNELS;
        float acc[GAP_CHANNELS] = {0};
        const float *xp = r->x + n * pixels * p->c + c0;
        for (size_t i = 0; i < pixels; i++, xp += p->c)
            for (size_t ch = 0; ch < cn; ch++)
                acc[ch] += xp[ch];
        float scale = 1.0f / (float)pixels;
        float *out = r->y + n * p->c + c0;
        for (size_t ch = 0; ch < cn; ch++)
            out[ch] = acc[ch] * scale;
    }
}

static void qgap_range(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct pool_run *r = arg;
    const struct pool_params *p = r->p;
    size_t blocks = (p->c + GAP_CHANNELS - 1) / GAP_CHANNELS, pixels = p->h * p->w;
    const float mult = p->xs / (p->ys * (float)pixels);
    const int32_t bias = -(int32_t)pixels * p->xzp;
    for (size_t it = begin; it < end; it++) {
        size_t n = it / blocks, c0 = it % blocks * GAP_CHANNELS;
        size_t cn = p->c - c0 < GAP_CHANNELS ? p->c - c0 : GAP_CHANNELS;
        int32_t acc[GAP_CHANNELS];
        for (size_t ch = 0; ch < cn; ch++)
            acc[ch] = bias;
        const int8_t *xp = (const int8_t *)(const void *)r->x + n * pixels * p->c + c0;
        for (size_t i = 0; i < pixels; i++, xp += p->c)
            for (size_t ch = 0; ch < cn; ch++)
                acc[ch] += xp[ch];
        int8_t *out = (int8_t *)(void *)r->y + n * p->c + c0;
        for (size_t ch = 0; ch < cn; ch++)
            out[ch] = (int8_t)ek_q_round((float)acc[ch] * mult, p->yzp, -128, 127);
    }
}

static ek_status_t gap_run(const struct ek_op *op, const void *const *in, void *const *out, struct ek_exec *exec) {
    const struct pool_params *p = op->params;
    if (!p)
        return ek_op_invalid(op, "not prepared");
    struct pool_run r = {p, in[0], out[0]};
    ek_parallel_for(exec, p->n * ((p->c + GAP_CHANNELS - 1) / GAP_CHANNELS), p->quant ? qgap_range : gap_range, &r);
    return EK_OK;
}

const struct ek_kernel ek_kernel_max_pool = {EK_OP_MAX_POOL, 1, 1, 1, max_pool_prepare, pool_run_fn, pool_release};
const struct ek_kernel ek_kernel_average_pool = {EK_OP_AVERAGE_POOL, 1, 1, 1, average_pool_prepare, pool_run_fn,
                                                 pool_release};
const struct ek_kernel ek_kernel_global_average_pool = {EK_OP_GLOBAL_AVERAGE_POOL, 1, 1, 1, gap_prepare, gap_run,
                                                        pool_release};
const struct ek_kernel ek_kernel_qaverage_pool = {EK_OP_QAVERAGE_POOL, 1, 1, 1, average_pool_prepare, pool_run_fn,
                                                  pool_release};
const struct ek_kernel ek_kernel_qglobal_average_pool = {EK_OP_QGLOBAL_AVERAGE_POOL, 1, 1, 1, gap_prepare, gap_run,
                                                         pool_release};
