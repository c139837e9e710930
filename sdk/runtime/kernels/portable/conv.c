/* CONV and CONV_TRANSPOSE on NHWC tensors with weights W[M, KH, KW, C/group].
 *
 * Four ways to run, chosen at prepare:
 * - pointwise (1x1, stride 1, no padding): the input rows already are the GEMM's A, one GEMM per group;
 * - depthwise (CONV with group == C == M): a direct loop with the channels innermost;
 * - otherwise im2col: each thread gathers a block of output pixels' receptive fields into its scratch
 *   (zeros for taps outside the input) and multiplies that block by the packed weights;
 * - Winograd F(4x4, 3x3) (winograd.c) when the op's STRING attribute `algorithm` is "winograd": only
 *   for a 3x3 CONV with stride 1, dilation 1, group 1 and constant weights; otherwise (or an unknown
 *   value) the model is invalid. The compiler records the attribute where it pays.
 * A CONV's optional input Z (a fused residual Add, .ekm 1.4) is added after the bias and before the
 * clamp, in the epilogue of each block while it is in cache: the GEMM runs without the clamp, then
 * the block gets + Z and the clamp.
 * CONV_TRANSPOSE uses the same im2col + GEMM: output pixel o takes input i through tap t when
 * i * stride + t * dilation == o + pad_begin, so its gathered row holds X[i] at tap t, or zero. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "internal.h"
#include "portable.h"
#include "winograd.h"

#define MR ek_gemm_mr() /* the SGEMM register tile's rows (per-process microkernel choice) */
#define ATTR_MAX ((int64_t)1 << 30) /* strides, dilations and pads beyond this are not real models */
#define IM2COL_BYTES ((size_t)256 * 1024) /* a block of gathered rows stays in L2 */

enum conv_kind { CONV_IM2COL, CONV_POINTWISE, CONV_DEPTHWISE, CONV_WINOGRAD };

struct conv_params {
    bool transpose;
    enum conv_kind kind;
    size_t n, h, w, c, oh, ow, m, kh, kw, group, cg, mg, k; /* k = kh * kw * cg */
    int64_t sh, sw, dh, dw, pt, pl;
    float lo, hi;
    bool has_bias;
    bool has_z;          /* CONV's input Z: Y = act(conv(X) + bias + Z) */
    float *packed;       /* constant weights packed at prepare, or NULL: packed into scratch by run */
    size_t group_floats; /* packed floats per group (depthwise: the whole kh * kw * c) */
    size_t packed_total;
    size_t block_rows;   /* im2col rows per block, a multiple of MR */
    size_t col_offset;   /* floats: where the im2col block starts in the scratch */
    struct ek_wino *wino; /* CONV_WINOGRAD */
};

static void conv_release(struct ek_op *op) {
    struct conv_params *p = op->params;
    if (p) {
        free(p->packed);
        ek_wino_free(p->wino);
        free(p);
    }
    op->params = NULL;
}

static void pack_weights(const struct conv_params *p, const float *w, float *dst) {
    if (p->kind == CONV_DEPTHWISE) {
        /* W[c][tap] -> dst[tap][c], so the inner loop runs over contiguous channels. */
        size_t taps = p->kh * p->kw;
        for (size_t t = 0; t < taps; t++)
            for (size_t c = 0; c < p->c; c++)
                dst[t * p->c + c] = w[c * taps + t];
        return;
    }
    for (size_t g = 0; g < p->group; g++)
        ek_gemm_pack_bt(p->mg, p->k, w + g * p->mg * p->k, p->k, dst + g * p->group_floats);
}

static ek_status_t attr_range(const struct ek_op *op, const char *name, const int64_t *v, int count, int64_t lo) {
    for (int i = 0; i < count; i++)
        if (v[i] < lo || v[i] > ATTR_MAX)
            return ek_op_invalid(op, "attribute '%s'[%d] = %lld is out of range [%lld, %lld]", name, i,
                                 (long long)v[i], (long long)lo, (long long)ATTR_MAX);
    return EK_OK;
}

/* One spatial axis: the output length, or -1 with the op already failed. */
static int64_t out_len(const struct ek_op *op, bool transpose, const char *axis, int64_t in, int64_t k, int64_t s,
                       int64_t d, int64_t pb, int64_t pe, int64_t adj) {
    int64_t ext, v;
    /* extent of the dilated kernel: (k - 1) * d + 1 */
    if (!ek_i64_mul(k - 1, d, &ext) || !ek_i64_add(ext, 1, &ext)) {
        ek_op_invalid(op, "kernel %s extent overflows", axis);
        return -1;
    }
    if (!transpose) {
        if (!ek_i64_add(in, pb, &v) || !ek_i64_add(v, pe, &v)) {
            ek_op_invalid(op, "padded %s overflows", axis);
            return -1;
        }
        if (v < ext) {
            ek_op_invalid(op, "padded input %s %lld is smaller than the kernel extent %lld", axis, (long long)v,
                          (long long)ext);
            return -1;
        }
        return (v - ext) / s + 1;
    }
    if (!ek_i64_mul(in - 1, s, &v) || !ek_i64_add(v, ext, &v) || !ek_i64_add(v, adj, &v)) {
        ek_op_invalid(op, "output %s overflows", axis);
        return -1;
    }
    if (v - pb - pe < 1) { /* pads <= ATTR_MAX: no overflow */
        ek_op_invalid(op, "pads leave no output %s", axis);
        return -1;
    }
    return v - pb - pe;
}

/* The optional STRING attribute `algorithm`: absent, or "winograd" (CONV only). */
static ek_status_t conv_algorithm(const struct ek_op *op, bool transpose, bool *winograd) {
    const struct ek_attr *a = ek_attr_find(op, "algorithm");
    *winograd = false;
    if (!a)
        return EK_OK;
    if (a->type != EK_ATTR_STRING || !a->s)
        return ek_op_invalid(op, "attribute 'algorithm' must be a string");
    if (strcmp(a->s, "winograd") == 0 && !transpose) {
        *winograd = true;
        return EK_OK;
    }
    return ek_op_invalid(op, "unknown algorithm '%.60s'%s", a->s,
                         transpose ? " (CONV_TRANSPOSE takes none)" : " (known: winograd)");
}

static ek_status_t conv_prepare_common(struct ek_op *op, bool transpose) {
    ek_status_t st = ek_check_arity(op, 2, transpose ? 3 : 4);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *x = op->in[0], *w = op->in[1], *b = op->n_in > 2 ? op->in[2] : NULL;
    const struct ek_tensor_desc *z = op->n_in > 3 ? op->in[3] : NULL;
    const struct ek_tensor_desc *y = op->out[0];
    if ((st = ek_check_float_tensor(op, x, "X", 4)) != EK_OK || (st = ek_check_float_tensor(op, w, "W", 4)) != EK_OK ||
        (st = ek_check_float_tensor(op, y, "Y", 4)) != EK_OK)
        return st;
    if (b && (st = ek_check_float_tensor(op, b, "bias", 1)) != EK_OK)
        return st;

    static const int64_t zeros[4] = {0, 0, 0, 0}, ones[2] = {1, 1};
    int64_t pads[4], strides[2], dil[2], adj[2] = {0, 0}, group;
    if ((st = ek_attr_ints(op, "pads", 4, zeros, pads)) != EK_OK ||
        (st = ek_attr_ints(op, "strides", 2, ones, strides)) != EK_OK ||
        (st = ek_attr_ints(op, "dilations", 2, ones, dil)) != EK_OK ||
        (transpose && (st = ek_attr_ints(op, "adjustments", 2, zeros, adj)) != EK_OK) ||
        (st = ek_attr_int(op, "group", 1, &group)) != EK_OK)
        return st;
    if ((st = attr_range(op, "pads", pads, 4, 0)) != EK_OK ||
        (st = attr_range(op, "strides", strides, 2, 1)) != EK_OK ||
        (st = attr_range(op, "dilations", dil, 2, 1)) != EK_OK ||
        (st = attr_range(op, "adjustments", adj, 2, 0)) != EK_OK)
        return st;
    for (int i = 0; i < 2; i++)
        if (adj[i] >= (strides[i] > dil[i] ? strides[i] : dil[i]))
            return ek_op_invalid(op, "adjustments[%d] = %lld must be smaller than the stride or the dilation", i,
                                 (long long)adj[i]);

    int64_t c = x->dims[3], m = w->dims[0];
    if (group < 1 || group > c || c % group != 0 || m % group != 0)
        return ek_op_invalid(op, "group %lld must divide the input channels %lld and the output channels %lld",
                             (long long)group, (long long)c, (long long)m);
    if (w->dims[3] != c / group)
        return ek_op_invalid(op, "W is [%lld, %lld, %lld, %lld] but C/group is %lld", (long long)w->dims[0],
                             (long long)w->dims[1], (long long)w->dims[2], (long long)w->dims[3],
                             (long long)(c / group));
    if (b && b->dims[0] != m)
        return ek_op_invalid(op, "bias has %lld values for %lld output channels", (long long)b->dims[0],
                             (long long)m);
    int64_t oh = out_len(op, transpose, "height", x->dims[1], w->dims[1], strides[0], dil[0], pads[0], pads[2], adj[0]);
    if (oh < 0)
        return EK_ERR_MODEL_INVALID;
    int64_t ow = out_len(op, transpose, "width", x->dims[2], w->dims[2], strides[1], dil[1], pads[1], pads[3], adj[1]);
    if (ow < 0)
        return EK_ERR_MODEL_INVALID;
    if (y->dims[0] != x->dims[0] || y->dims[1] != oh || y->dims[2] != ow || y->dims[3] != m)
        return ek_op_invalid(op, "Y is [%lld, %lld, %lld, %lld], expected [%lld, %lld, %lld, %lld]",
                             (long long)y->dims[0], (long long)y->dims[1], (long long)y->dims[2],
                             (long long)y->dims[3], (long long)x->dims[0], (long long)oh, (long long)ow,
                             (long long)m);
    if (z) {
        if ((st = ek_check_float_tensor(op, z, "Z", 4)) != EK_OK)
            return st;
        if (memcmp(z->dims, y->dims, 4 * sizeof z->dims[0]) != 0) {
            char zs[96], ys[96];
            return ek_op_invalid(op, "Z is %s, it must have Y's shape %s", ek_shape_str(z, zs, sizeof zs),
                                 ek_shape_str(y, ys, sizeof ys));
        }
    }

    struct conv_params *p = calloc(1, sizeof *p);
    if (!p)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no memory for op parameters");
    op->params = p;
    p->transpose = transpose;
    p->n = (size_t)x->dims[0];
    p->h = (size_t)x->dims[1];
    p->w = (size_t)x->dims[2];
    p->c = (size_t)c;
    p->oh = (size_t)oh;
    p->ow = (size_t)ow;
    p->m = (size_t)m;
    p->kh = (size_t)w->dims[1];
    p->kw = (size_t)w->dims[2];
    p->group = (size_t)group;
    p->cg = p->c / p->group;
    p->mg = p->m / p->group;
    p->k = p->kh * p->kw * p->cg; /* W's count bounds it */
    p->sh = strides[0];
    p->sw = strides[1];
    p->dh = dil[0];
    p->dw = dil[1];
    p->pt = pads[0];
    p->pl = pads[1];
    p->has_bias = b != NULL;
    p->has_z = z != NULL;
    if ((st = ek_parse_act(op, &p->lo, &p->hi)) != EK_OK)
        goto fail;

    bool winograd = false;
    if ((st = conv_algorithm(op, transpose, &winograd)) != EK_OK)
        goto fail;
    if (winograd) {
        if (p->kh != 3 || p->kw != 3 || p->sh != 1 || p->sw != 1 || p->dh != 1 || p->dw != 1 || p->group != 1 ||
            w->storage != EK_STORAGE_CONSTANT || !w->constant) {
            st = ek_op_invalid(op, "algorithm 'winograd' needs a 3x3 kernel, stride 1, dilation 1, group 1 and "
                                   "constant weights (kernel %zux%zu, strides %lld,%lld, dilations %lld,%lld, "
                                   "group %zu%s)",
                               p->kh, p->kw, (long long)p->sh, (long long)p->sw, (long long)p->dh, (long long)p->dw,
                               p->group, w->storage == EK_STORAGE_CONSTANT ? "" : ", weights not constant");
            goto fail;
        }
        struct ek_wino_shape ws = {p->n, p->h, p->w, p->c, p->oh, p->ow, p->m, (size_t)pads[0], (size_t)pads[1]};
        p->kind = CONV_WINOGRAD;
        if ((st = ek_wino_prepare(op, &ws, w->constant, p->lo, p->hi, &p->wino, &op->scratch_per_thread)) != EK_OK)
            goto fail;
        return EK_OK;
    }
    if (!transpose && p->group == p->c && p->m == p->c)
        p->kind = CONV_DEPTHWISE;
    else if (p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1 && pads[0] == 0 && pads[1] == 0 &&
             pads[2] == 0 && pads[3] == 0 && adj[0] == 0 && adj[1] == 0)
        p->kind = CONV_POINTWISE;
    else
        p->kind = CONV_IM2COL;

    if (p->kind == CONV_DEPTHWISE) {
        p->group_floats = p->kh * p->kw * p->c; /* W's count */
        p->packed_total = p->group_floats;
    } else if (!ek_gemm_packed_size(p->k, p->mg, &p->group_floats) ||
               !ek_size_mul(p->group_floats, p->group, &p->packed_total)) {
        st = ek_op_invalid(op, "weights too large");
        goto fail;
    }
    size_t packed_bytes, scratch = 0;
    if (!ek_size_mul(p->packed_total, sizeof(float), &packed_bytes)) {
        st = ek_op_invalid(op, "weights too large");
        goto fail;
    }
    if (w->storage == EK_STORAGE_CONSTANT && w->constant) {
        p->packed = malloc(packed_bytes ? packed_bytes : 1);
        if (!p->packed) {
            st = ek_fail(EK_ERR_OUT_OF_MEMORY, "op '%.120s': no memory for packed weights (%zu bytes)",
                         op->name ? op->name : "", packed_bytes);
            goto fail;
        }
        pack_weights(p, w->constant, p->packed);
    } else {
        /* Each thread packs the weights into its own scratch, 64-byte aligned after them. */
        p->col_offset = ek_round_up(p->packed_total, 16);
        if (p->col_offset < p->packed_total) {
            st = ek_op_invalid(op, "weights too large");
            goto fail;
        }
        scratch = p->col_offset;
    }
    if (p->kind == CONV_IM2COL) {
        size_t row_bytes = p->k * sizeof(float), rows = IM2COL_BYTES / row_bytes / MR * MR, col;
        /* At least 64 rows even past IM2COL_BYTES: each ek_gemm call streams all the packed weights
         * (9 MiB for a 3x3 conv of 512 channels), so a few rows per call made that traffic the cost;
         * the SGEMM's own k slices keep its working set in cache whatever the block's size. */
        if (rows < 64)
            rows = ek_round_up(64, MR);
        if (rows > 512)
            rows = 512 / MR * MR;
        p->block_rows = rows;
        if (!ek_size_mul(rows, p->k, &col) || !ek_size_add(scratch, col, &scratch)) {
            st = ek_op_invalid(op, "im2col scratch too large");
            goto fail;
        }
    } else {
        p->block_rows = 256;
    }
    if (!ek_size_mul(scratch, sizeof(float), &op->scratch_per_thread)) {
        st = ek_op_invalid(op, "scratch too large");
        goto fail;
    }
    return EK_OK;
fail:
    conv_release(op);
    op->scratch_per_thread = 0;
    return st;
}

static ek_status_t conv_prepare(struct ek_op *op) { return conv_prepare_common(op, false); }
static ek_status_t conv_transpose_prepare(struct ek_op *op) { return conv_prepare_common(op, true); }

struct conv_run {
    const struct conv_params *p;
    const float *x, *w, *bias;
    const float *z; /* CONV's Z, or NULL */
    float *y;
    struct ek_exec *exec;
    size_t rows; /* output pixels: n * oh * ow */
    size_t block;
};

static const float *thread_weights(const struct conv_run *r, float *scratch) {
    if (r->p->packed)
        return r->p->packed;
    pack_weights(r->p, r->w, scratch);
    return scratch;
}

/* Y += Z, then the clamp, on `rows` rows of `cols` values (row stride ld) of a block just written. */
static void residual_epilogue(float *y, const float *z, size_t rows, size_t cols, size_t ld, float lo, float hi) {
    for (size_t i = 0; i < rows; i++) {
        float *yr = y + i * ld;
        const float *zr = z + i * ld;
        for (size_t j = 0; j < cols; j++) {
            float v = yr[j] + zr[j];
            v = v < lo ? lo : v;
            yr[j] = v > hi ? hi : v;
        }
    }
}

/* Gather rows [r0, r0 + count) of group g's receptive fields into col (count x k). */
static void im2col(const struct conv_params *p, const float *x, size_t r0, size_t count, size_t g, float *col) {
    const int64_t h = (int64_t)p->h, w = (int64_t)p->w;
    const size_t cg = p->cg, tap_bytes = cg * sizeof(float);
    size_t ow = r0 % p->ow, oh = (r0 / p->ow) % p->oh, n = r0 / p->ow / p->oh;
    for (size_t i = 0; i < count; i++) {
        float *dst = col + i * p->k;
        const float *xn = x + n * p->h * p->w * p->c + g * cg;
        for (size_t a = 0; a < p->kh; a++) {
            int64_t ih;
            bool row_ok;
            if (!p->transpose) {
                ih = (int64_t)oh * p->sh - p->pt + (int64_t)a * p->dh;
                row_ok = ih >= 0 && ih < h;
            } else {
                int64_t t = (int64_t)oh + p->pt - (int64_t)a * p->dh;
                ih = t / p->sh;
                row_ok = t >= 0 && t % p->sh == 0 && ih < h;
            }
            if (!row_ok) {
                memset(dst, 0, p->kw * tap_bytes);
                dst += p->kw * cg;
                continue;
            }
            const float *xrow = xn + (size_t)ih * p->w * p->c;
            for (size_t b = 0; b < p->kw; b++, dst += cg) {
                int64_t iw;
                bool ok;
                if (!p->transpose) {
                    iw = (int64_t)ow * p->sw - p->pl + (int64_t)b * p->dw;
                    ok = iw >= 0 && iw < w;
                } else {
                    int64_t t = (int64_t)ow + p->pl - (int64_t)b * p->dw;
                    iw = t / p->sw;
                    ok = t >= 0 && t % p->sw == 0 && iw < w;
                }
                if (ok)
                    memcpy(dst, xrow + (size_t)iw * p->c, tap_bytes);
                else
                    memset(dst, 0, tap_bytes);
            }
        }
        if (++ow == p->ow) {
            ow = 0;
            if (++oh == p->oh) {
                oh = 0;
                n++;
            }
        }
    }
}

static void gemm_range(void *arg, size_t begin, size_t end, int thread) {
    const struct conv_run *r = arg;
    const struct conv_params *p = r->p;
    float *s = p->packed && p->kind == CONV_POINTWISE ? NULL : ek_exec_scratch(r->exec, thread);
    const float *weights = thread_weights(r, s);
    float *col = s ? s + p->col_offset : NULL;
    for (size_t blk = begin; blk < end; blk++) {
        size_t r0 = blk * r->block, count = r->rows - r0 < r->block ? r->rows - r0 : r->block;
        for (size_t g = 0; g < p->group; g++) {
            const float *wg = weights + g * p->group_floats;
            const float *bias = r->bias ? r->bias + g * p->mg : NULL;
            float *yg = r->y + r0 * p->m + g * p->mg;
            /* with Z the clamp comes after + Z, in the epilogue */
            const float lo = r->z ? -INFINITY : p->lo, hi = r->z ? INFINITY : p->hi;
            if (p->kind == CONV_POINTWISE) {
                ek_gemm(count, p->mg, p->cg, r->x + r0 * p->c + g * p->cg, p->c, wg, yg, p->m, bias, lo, hi);
            } else {
                im2col(p, r->x, r0, count, g, col);
                ek_gemm(count, p->mg, p->k, col, p->k, wg, yg, p->m, bias, lo, hi);
            }
            if (r->z)
                residual_epilogue(yg, r->z + r0 * p->m + g * p->mg, count, p->mg, p->m, p->lo, p->hi);
        }
    }
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

static void depthwise_range(void *arg, size_t begin, size_t end, int thread) {
    const struct conv_run *r = arg;
    const struct conv_params *p = r->p;
    const float *wt = thread_weights(r, p->packed ? NULL : ek_exec_scratch(r->exec, thread));
    const size_t c = p->c, xrow_stride = p->w * c, wrow_stride = p->kw * c;
    for (size_t row = begin; row < end; row++) {
        size_t n = row / p->oh, oh = row % p->oh;
        int64_t ih0 = (int64_t)oh * p->sh - p->pt, a0, a1;
        window_taps(ih0, p->dh, (int64_t)p->kh, (int64_t)p->h, &a0, &a1);
        const float *xn = r->x + n * p->h * xrow_stride;
        for (size_t ow = 0; ow < p->ow; ow++) {
            float *out = r->y + (row * p->ow + ow) * c;
            int64_t iw0 = (int64_t)ow * p->sw - p->pl, b0, b1;
            window_taps(iw0, p->dw, (int64_t)p->kw, (int64_t)p->w, &b0, &b1);
            size_t ch = 0;
#if EK_HAVE_V4F
            /* four channels at a time, accumulated in a register over the window */
            for (; ch + 4 <= c; ch += 4) {
                ek_v4f acc = {0, 0, 0, 0};
                if (r->bias)
                    acc = ek_v4f_load(r->bias + ch);
                for (int64_t a = a0; a < a1; a++) {
                    const float *xrow = xn + (size_t)(ih0 + a * p->dh) * xrow_stride + ch;
                    const float *wrow = wt + (size_t)a * wrow_stride + ch;
                    for (int64_t b = b0; b < b1; b++)
                        acc += ek_v4f_load(xrow + (size_t)(iw0 + b * p->dw) * c) * ek_v4f_load(wrow + (size_t)b * c);
                }
                ek_v4f_store(out + ch, acc);
            }
#endif
            for (; ch < c; ch++) {
                float acc = r->bias ? r->bias[ch] : 0.0f;
                for (int64_t a = a0; a < a1; a++) {
                    const float *xrow = xn + (size_t)(ih0 + a * p->dh) * xrow_stride + ch;
                    const float *wrow = wt + (size_t)a * wrow_stride + ch;
                    for (int64_t b = b0; b < b1; b++)
                        acc += xrow[(size_t)(iw0 + b * p->dw) * c] * wrow[(size_t)b * c];
                }
                out[ch] = acc;
            }
            if (r->z)
                residual_epilogue(out, r->z + (row * p->ow + ow) * c, 1, c, c, p->lo, p->hi);
            else
                for (ch = 0; ch < c; ch++) {
                    float v = out[ch];
                    v = v < p->lo ? p->lo : v;
                    out[ch] = v > p->hi ? p->hi : v;
                }
        }
    }
}

static ek_status_t conv_run(const struct ek_op *op, const void *const *in, void *const *out, struct ek_exec *exec) {
    const struct conv_params *p = op->params;
    if (!p)
        return ek_op_invalid(op, "not prepared");
    if (op->scratch_per_thread && !ek_exec_scratch(exec, 0))
        return ek_fail(EK_ERR_INTERNAL, "op '%.120s' (%s): no scratch memory given", op->name ? op->name : "",
                       ek_op_type_name((int)op->type));
    struct conv_run r = {p, in[0], in[1], NULL, NULL, out[0], exec, p->n * p->oh * p->ow, 0};
    if (p->has_bias && op->n_in > 2)
        r.bias = in[2];
    if (p->has_z && op->n_in > 3)
        r.z = in[3];
    if (p->kind == CONV_WINOGRAD) {
        ek_wino_run(p->wino, r.x, r.bias, r.z, r.y, exec);
        return EK_OK;
    }
    if (p->kind == CONV_DEPTHWISE) {
        ek_parallel_for(exec, p->n * p->oh, depthwise_range, &r);
        return EK_OK;
    }
    size_t threads = (size_t)(ek_exec_threads(exec) > 0 ? ek_exec_threads(exec) : 1);
    r.block = ek_round_up((r.rows + threads - 1) / threads, MR);
    if (r.block > p->block_rows)
        r.block = p->block_rows;
    ek_parallel_for(exec, (r.rows + r.block - 1) / r.block, gemm_range, &r);
    return EK_OK;
}

const char *ek_op_algorithm(const struct ek_op *op) {
    if (op->type == EK_OP_QCONV || op->type == EK_OP_QFULLY_CONNECTED)
        return ek_qconv_algorithm(op);
    const struct conv_params *p = op->params;
    if ((op->type != EK_OP_CONV && op->type != EK_OP_CONV_TRANSPOSE) || !p)
        return "";
    switch (p->kind) {
    case CONV_WINOGRAD:
        return ek_wino_name(p->wino);
    case CONV_DEPTHWISE:
        return "depthwise";
    default:
        return "gemm";
    }
}

bool ek_op_prefers_portable(const struct ek_op *op) {
    if (op->type != EK_OP_CONV)
        return false;
    const struct ek_attr *a = ek_attr_find(op, "algorithm");
    return a && a->type == EK_ATTR_STRING && a->s && strcmp(a->s, "winograd") == 0;
}

const struct ek_kernel ek_kernel_conv = {EK_OP_CONV, 2, 4, 1, conv_prepare, conv_run, conv_release};
const struct ek_kernel ek_kernel_conv_transpose = {EK_OP_CONV_TRANSPOSE, 2, 3, 1, conv_transpose_prepare, conv_run,
                                                   conv_release};
