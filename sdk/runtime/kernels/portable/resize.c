/* RESIZE on the H and W axes of an NHWC tensor, as ONNX Resize: the source coordinate of an output
 * index comes from the given scale and the coordinate mode (computed in float, as onnxruntime does);
 * nearest rounds it by the nearest mode and clamps it to the input, linear clamps it to the input
 * and blends the two neighbours. The per-row and per-column sources and weights depend only on the
 * shapes, so prepare() tabulates them. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "internal.h"
#include "portable.h"

enum { MODE_NEAREST = 0, MODE_LINEAR = 1 };
enum { COORD_HALF_PIXEL = 0, COORD_ASYMMETRIC = 1, COORD_ALIGN_CORNERS = 2, COORD_PYTORCH_HALF_PIXEL = 3 };
enum { NEAREST_ROUND_PREFER_FLOOR = 0, NEAREST_ROUND_PREFER_CEIL = 1, NEAREST_FLOOR = 2, NEAREST_CEIL = 3 };

struct resize_axis {
    size_t *i0, *i1; /* source indices (nearest: i0 only) */
    float *frac;     /* weight of i1 */
};

struct resize_params {
    bool linear;
    size_t elem; /* bytes per element: float32, or int8 (nearest only, .ekm 1.5) */
    size_t n, h, w, c, oh, ow;
    struct resize_axis ay, ax;
};

static void resize_release(struct ek_op *op) {
    struct resize_params *p = op->params;
    if (p) {
        free(p->ay.i0);
        free(p->ay.i1);
        free(p->ay.frac);
        free(p->ax.i0);
        free(p->ax.i1);
        free(p->ax.frac);
        free(p);
    }
    op->params = NULL;
}

static float source_coordinate(int coord, size_t out_index, float scale, size_t in_len, size_t out_len) {
    float x = (float)out_index;
    switch (coord) {
    case COORD_ASYMMETRIC:
        return x / scale;
    case COORD_ALIGN_CORNERS:
        return out_len == 1 ? 0.0f : x * (float)(in_len - 1) / (float)(out_len - 1);
    case COORD_PYTORCH_HALF_PIXEL:
        return out_len > 1 ? (x + 0.5f) / scale - 0.5f : 0.0f;
    default: /* half_pixel */
        return (x + 0.5f) / scale - 0.5f;
    }
}

static float round_nearest(int mode, float v) {
    switch (mode) {
    case NEAREST_ROUND_PREFER_CEIL:
        return v == floorf(v) + 0.5f ? ceilf(v) : roundf(v);
    case NEAREST_FLOOR:
        return floorf(v);
    case NEAREST_CEIL:
        return ceilf(v);
    default: /* round_prefer_floor */
        return v == floorf(v) + 0.5f ? floorf(v) : roundf(v);
    }
}

/* Clamp to [0, len - 1] before converting, so huge or infinite coordinates stay defined. */
static size_t clamp_index(float v, size_t len) {
    if (!(v > 0.0f)) /* also NaN */
        return 0;
    if (v >= (float)(len - 1))
        return len - 1;
    return (size_t)v;
}

static ek_status_t build_axis(struct ek_op *op, struct resize_axis *axis, bool linear, int coord, int nearest,
                              float scale, size_t in_len, size_t out_len) {
    axis->i0 = malloc(out_len * sizeof(size_t));
    axis->i1 = linear ? malloc(out_len * sizeof(size_t)) : NULL;
    axis->frac = linear ? malloc(out_len * sizeof(float)) : NULL;
    if (!axis->i0 || (linear && (!axis->i1 || !axis->frac)))
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "op '%.120s': no memory for resize tables", op->name ? op->name : "");
    for (size_t o = 0; o < out_len; o++) {
        float v = source_coordinate(coord, o, scale, in_len, out_len);
        if (!linear) {
            axis->i0[o] = clamp_index(round_nearest(nearest, v), in_len);
            continue;
        }
        if (!(v > 0.0f))
            v = 0.0f;
        if (v > (float)(in_len - 1))
            v = (float)(in_len - 1);
        size_t i0 = clamp_index(v, in_len);
        axis->i0[o] = i0;
        axis->i1[o] = i0 + 1 < in_len ? i0 + 1 : i0;
        axis->frac[o] = axis->i1[o] == i0 ? 0.0f : v - (float)i0;
    }
    return EK_OK;
}

static ek_status_t resize_prepare(struct ek_op *op) {
    ek_status_t st = ek_check_arity(op, 1, 1);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    const ek_dtype_t dtype = ek_movement_dtype(op); /* nearest also moves int8 */
    if ((st = ek_check_tensor(op, x, "X", 4, dtype)) != EK_OK || (st = ek_check_tensor(op, y, "Y", 4, dtype)) != EK_OK)
        return st;
    int64_t mode, coord, nearest;
    if ((st = ek_attr_int(op, "mode", MODE_NEAREST, &mode)) != EK_OK ||
        (st = ek_attr_int(op, "coordinate", COORD_HALF_PIXEL, &coord)) != EK_OK ||
        (st = ek_attr_int(op, "nearest", NEAREST_ROUND_PREFER_FLOOR, &nearest)) != EK_OK)
        return st;
    if (mode < 0 || mode > 1)
        return ek_op_invalid(op, "mode %lld is not 0 (nearest) or 1 (linear)", (long long)mode);
    if (mode == MODE_LINEAR && dtype != EK_DTYPE_FLOAT32)
        return ek_op_invalid(op, "input X is %s: linear mode takes float32 only (int8 resizes with mode 0, nearest)",
                             ek_dtype_name(x->dtype));
    if (coord < 0 || coord > 3)
        return ek_op_invalid(op, "coordinate %lld is not 0..3", (long long)coord);
    if (nearest < 0 || nearest > 3)
        return ek_op_invalid(op, "nearest %lld is not 0..3", (long long)nearest);
    if (y->dims[0] != x->dims[0] || y->dims[3] != x->dims[3])
        return ek_op_invalid(op, "Y is [%lld, %lld, %lld, %lld] for X [%lld, %lld, %lld, %lld]", (long long)y->dims[0],
                             (long long)y->dims[1], (long long)y->dims[2], (long long)y->dims[3], (long long)x->dims[0],
                             (long long)x->dims[1], (long long)x->dims[2], (long long)x->dims[3]);
    /* The scales as given; absent, the size ratio (ONNX Resize with `sizes`). */
    float scales[2] = {(float)y->dims[1] / (float)x->dims[1], (float)y->dims[2] / (float)x->dims[2]};
    const struct ek_attr *sa = ek_attr_find(op, "scales");
    if (sa) {
        if (sa->type != EK_ATTR_FLOATS || sa->count != 2 || !sa->floats)
            return ek_op_invalid(op, "attribute 'scales' must be FLOATS of 2 values");
        scales[0] = sa->floats[0];
        scales[1] = sa->floats[1];
    }
    for (int i = 0; i < 2; i++) {
        if (!(scales[i] > 0.0f) || isinf(scales[i]))
            return ek_op_invalid(op, "scales[%d] = %g must be finite and > 0", i, (double)scales[i]);
        /* The output length is floor(in * scale), or the size the scale was derived from: allow the
         * rounding of either. */
        double want = (double)x->dims[1 + i] * (double)scales[i];
        if (fabs((double)y->dims[1 + i] - want) > 1.0 + 1e-6 * want)
            return ek_op_invalid(op, "output %s %lld does not match input %lld x scale %g",
                                 i == 0 ? "height" : "width", (long long)y->dims[1 + i], (long long)x->dims[1 + i],
                                 (double)scales[i]);
    }
    struct resize_params *p = calloc(1, sizeof *p);
    if (!p)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no memory for op parameters");
    op->params = p;
    op->scratch_per_thread = 0;
    p->linear = mode == MODE_LINEAR;
    p->elem = ek_dtype_size(dtype);
    p->n = (size_t)x->dims[0];
    p->h = (size_t)x->dims[1];
    p->w = (size_t)x->dims[2];
    p->c = (size_t)x->dims[3];
    p->oh = (size_t)y->dims[1];
    p->ow = (size_t)y->dims[2];
    /* oh, ow <= Y's count, so the tables' sizes do not overflow */
    if ((st = build_axis(op, &p->ay, p->linear, (int)coord, (int)nearest, scales[0], p->h, p->oh)) != EK_OK ||
        (st = build_axis(op, &p->ax, p->linear, (int)coord, (int)nearest, scales[1], p->w, p->ow)) != EK_OK) {
        resize_release(op);
        return st;
    }
    return EK_OK;
}

struct resize_run {
    const struct resize_params *p;
    const void *x;
    void *y;
};

static void resize_range(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct resize_run *r = arg;
    const struct resize_params *p = r->p;
    const size_t c = p->c, row_stride = p->w * c;
    for (size_t row = begin; row < end; row++) {
        size_t n = row / p->oh, oh = row % p->oh;
        if (!p->linear) { /* bytes: float32 or int8 */
            const size_t e = p->elem, cb = c * e;
            const unsigned char *src = (const unsigned char *)r->x + (n * p->h + p->ay.i0[oh]) * row_stride * e;
            unsigned char *dst = (unsigned char *)r->y + row * p->ow * cb;
            for (size_t ow = 0; ow < p->ow; ow++, dst += cb)
                memcpy(dst, src + p->ax.i0[ow] * cb, cb);
            continue;
        }
        const float *xn = (const float *)r->x + n * p->h * row_stride;
        float *out = (float *)r->y + row * p->ow * c;
        const float *top = xn + p->ay.i0[oh] * row_stride, *bottom = xn + p->ay.i1[oh] * row_stride;
        const float fy = p->ay.frac[oh], gy = 1.0f - fy;
        for (size_t ow = 0; ow < p->ow; ow++, out += c) {
            const float fx = p->ax.frac[ow], gx = 1.0f - fx;
            const float *restrict a = top + p->ax.i0[ow] * c, *restrict b = top + p->ax.i1[ow] * c;
            const float *restrict cc = bottom + p->ax.i0[ow] * c, *restrict d = bottom + p->ax.i1[ow] * c;
            float *restrict o = out;
            for (size_t ch = 0; ch < c; ch++)
                o[ch] = gy * (gx * a[ch] + fx * b[ch]) + fy * (gx * cc[ch] + fx * d[ch]);
        }
    }
}

static ek_status_t resize_run_fn(const struct ek_op *op, const void *const *in, void *const *out,
                                 struct ek_exec *exec) {
    const struct resize_params *p = op->params;
    if (!p)
        return ek_op_invalid(op, "not prepared");
    struct resize_run r = {p, in[0], out[0]};
    ek_parallel_for(exec, p->n * p->oh, resize_range, &r);
    return EK_OK;
}

const struct ek_kernel ek_kernel_resize = {EK_OP_RESIZE, 1, 1, 1, resize_prepare, resize_run_fn, resize_release};
