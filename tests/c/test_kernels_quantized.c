/* The portable quantized kernels of .ekm 1.5 (QUANTIZE, DEQUANTIZE, QCONV, QFULLY_CONNECTED, QADD, QMUL,
 * QAVERAGE_POOL, QGLOBAL_AVERAGE_POOL, QLUT) against straightforward scalar references of the formulas
 * in docs/model-format.md ("Quantized ops"), written here, with exact equality; the int8 data movement
 * (MAX_POOL, TRANSPOSE, SLICE, CONCAT, RESHAPE, nearest RESIZE) against the same kernels on float32
 * copies; on 1 and 3 threads; QCONV and QFULLY_CONNECTED once per int8 GEMM microkernel this build
 * and CPU have (generic, avx2, avx512vnni on x86-64; generic, neondot on aarch64); and prepare()
 * refusing every bad quantization parameter with EK_ERR_MODEL_INVALID and a message.
 *
 * Like test_kernels_spatial.c, it compiles the kernels from source with a small pthread ek_exec in
 * place of the engine (-DEK_KERNEL_TEST_SHIM; tests/c/CMakeLists.txt does this). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ek_test.h"
#include "kernel.h"
#include "portable/helpers.h"
#include "portable/portable.h"

#ifndef EK_KERNEL_TEST_SHIM
#error "build with -DEK_KERNEL_TEST_SHIM and the kernel sources (see tests/c/CMakeLists.txt)"
#endif

/* ------------------------------------------------------------------ the ek_exec shim */

#define MAX_THREADS 4

struct ek_exec {
    int threads;
    void *scratch[MAX_THREADS];
};

struct shim_job {
    ek_range_fn fn;
    void *arg;
    size_t begin, end;
    int thread;
};

static void *shim_thread(void *p) {
    struct shim_job *job = p;
    job->fn(job->arg, job->begin, job->end, job->thread);
    return NULL;
}

void ek_parallel_for(struct ek_exec *exec, size_t count, ek_range_fn fn, void *arg) {
    size_t t = (size_t)exec->threads;
    if (t > count)
        t = count;
    if (t == 0)
        return;
    struct shim_job jobs[MAX_THREADS];
    pthread_t tids[MAX_THREADS];
    for (size_t i = 0; i < t; i++)
        jobs[i] = (struct shim_job){fn, arg, count * i / t, count * (i + 1) / t, (int)i};
    for (size_t i = 1; i < t; i++)
        if (pthread_create(&tids[i], NULL, shim_thread, &jobs[i]) != 0)
            shim_thread(&jobs[i]), tids[i] = 0;
    shim_thread(&jobs[0]);
    for (size_t i = 1; i < t; i++)
        if (tids[i])
            pthread_join(tids[i], NULL);
}

int ek_exec_threads(const struct ek_exec *exec) { return exec->threads; }

void *ek_exec_scratch(struct ek_exec *exec, int thread) { return exec->scratch[thread]; }

/* ------------------------------------------------------------------ building ops */

static uint32_t rng_state = 777;

static uint32_t urand(void) {
    rng_state = rng_state * 1664525u + 1013904223u;
    return rng_state >> 8;
}

static int32_t irand(int32_t lo, int32_t hi) { return lo + (int32_t)(urand() % (uint32_t)(hi - lo + 1)); }

static float frand(float lo, float hi) { return lo + (hi - lo) * (float)(urand() & 0xFFFF) / 65535.0f; }

static void *bytes_rand(size_t count) {
    uint8_t *p = malloc(count ? count : 1);
    for (size_t i = 0; i < count; i++)
        p[i] = (uint8_t)urand();
    return p;
}

static struct ek_tensor_desc mkdesc(const char *name, ek_dtype_t dtype, int rank, const int64_t *dims) {
    struct ek_tensor_desc d;
    memset(&d, 0, sizeof d);
    d.name = name;
    d.dtype = dtype;
    d.rank = rank;
    d.count = 1;
    for (int i = 0; i < rank; i++) {
        d.dims[i] = dims[i];
        d.count *= (size_t)dims[i];
    }
    d.nbytes = d.count * ek_dtype_size(dtype);
    d.storage = EK_STORAGE_ARENA;
    return d;
}

static struct ek_tensor_desc mkconst(const char *name, ek_dtype_t dtype, int rank, const int64_t *dims,
                                     const void *data) {
    struct ek_tensor_desc d = mkdesc(name, dtype, rank, dims);
    d.storage = EK_STORAGE_CONSTANT;
    d.constant = data;
    return d;
}

#define MAX_ATTRS 16

struct opb {
    struct ek_op op;
    const struct ek_tensor_desc *in[8];
    const struct ek_tensor_desc *out[1];
    struct ek_attr attrs[MAX_ATTRS];
    int64_t ints[MAX_ATTRS][8];
};

static void opb_init(struct opb *b, enum ek_op_type type, int n_in) {
    memset(b, 0, sizeof *b);
    b->op.type = type;
    b->op.name = "node_under_test";
    b->op.n_in = n_in;
    b->op.n_out = 1;
    b->op.in = b->in;
    b->op.out = b->out;
    b->op.attrs = b->attrs;
}

static void opb_ints(struct opb *b, const char *name, uint32_t count, const int64_t *v) {
    int i = b->op.n_attrs++;
    memcpy(b->ints[i], v, count * sizeof *v);
    b->attrs[i] = (struct ek_attr){.name = name, .type = EK_ATTR_INTS, .count = count, .ints = b->ints[i]};
}

static void opb_int(struct opb *b, const char *name, int64_t v) {
    b->attrs[b->op.n_attrs++] = (struct ek_attr){.name = name, .type = EK_ATTR_INT, .count = 1, .i = v};
}

static void opb_float(struct opb *b, const char *name, float v) {
    b->attrs[b->op.n_attrs++] = (struct ek_attr){.name = name, .type = EK_ATTR_FLOAT, .count = 1, .f = v};
}

/* Replace (or add) an attribute's value, for the reject tests. */
static void opb_set_int(struct opb *b, const char *name, int64_t v) {
    for (int i = 0; i < b->op.n_attrs; i++)
        if (strcmp(b->attrs[i].name, name) == 0) {
            b->attrs[i].i = v;
            return;
        }
    opb_int(b, name, v);
}

static void opb_set_float(struct opb *b, const char *name, float v) {
    for (int i = 0; i < b->op.n_attrs; i++)
        if (strcmp(b->attrs[i].name, name) == 0) {
            b->attrs[i].f = v;
            return;
        }
    opb_float(b, name, v);
}

static const struct ek_kernel *kernel_of(enum ek_op_type type) {
    switch (type) {
    case EK_OP_QUANTIZE: return &ek_kernel_quantize;
    case EK_OP_DEQUANTIZE: return &ek_kernel_dequantize;
    case EK_OP_QCONV: return &ek_kernel_qconv;
    case EK_OP_QFULLY_CONNECTED: return &ek_kernel_qfully_connected;
    case EK_OP_QADD: return &ek_kernel_qadd;
    case EK_OP_QMUL: return &ek_kernel_qmul;
    case EK_OP_QAVERAGE_POOL: return &ek_kernel_qaverage_pool;
    case EK_OP_QGLOBAL_AVERAGE_POOL: return &ek_kernel_qglobal_average_pool;
    case EK_OP_QLUT: return &ek_kernel_qlut;
    case EK_OP_MAX_POOL: return &ek_kernel_max_pool;
    case EK_OP_TRANSPOSE: return &ek_kernel_transpose;
    case EK_OP_SLICE: return &ek_kernel_slice;
    case EK_OP_CONCAT: return &ek_kernel_concat;
    case EK_OP_RESHAPE: return &ek_kernel_reshape;
    case EK_OP_RESIZE: return &ek_kernel_resize;
    case EK_OP_PAD: return &ek_kernel_pad;
    default: return NULL;
    }
}

/* Prepare, run on `threads` threads (output prefilled with garbage, scratch too), release. */
static ek_status_t prepare_run(struct ek_op *op, const void *const *in, void *out, int threads) {
    const struct ek_kernel *k = kernel_of(op->type);
    if (!k)
        return EK_ERR_INTERNAL;
    ek_status_t st = k->prepare(op);
    if (st != EK_OK)
        return st;
    struct ek_exec ex;
    memset(&ex, 0, sizeof ex);
    ex.threads = threads;
    size_t bytes = (op->scratch_per_thread + 63) / 64 * 64;
    for (int i = 0; i < threads; i++)
        if (bytes) {
            ex.scratch[i] = aligned_alloc(64, bytes);
            memset(ex.scratch[i], 0xA5, bytes);
        }
    memset(out, 0x5A, op->out[0]->nbytes);
    void *outs[1] = {out};
    st = k->run(op, in, outs, &ex);
    for (int i = 0; i < threads; i++)
        free(ex.scratch[i]);
    if (k->release)
        k->release(op);
    return st;
}

/* Prepare only (the reject tests): the status, released again. */
static ek_status_t prepare_only(struct ek_op *op) {
    const struct ek_kernel *k = kernel_of(op->type);
    ek_status_t st = k->prepare(op);
    if (k->release)
        k->release(op);
    op->params = NULL;
    return st;
}

/* ------------------------------------------------------------------ the reference formulas */

/* sat(rint(v) + zp) to [lo, hi], rint in the default mode (ties to even); NaN gives zp. */
static int32_t ref_q(float v, int32_t zp, int32_t lo, int32_t hi) {
    if (isnan(v))
        return zp < lo ? lo : zp > hi ? hi : zp;
    double r = (double)nearbyintf(v) + zp;
    return r < lo ? lo : r > hi ? hi : (int32_t)r;
}

static int compare_bytes(const char *what, const void *got_, const void *want_, size_t count, bool is_signed) {
    const uint8_t *got = got_, *want = want_;
    size_t bad = 0;
    for (size_t i = 0; i < count; i++)
        if (got[i] != want[i]) {
            if (bad < 3)
                printf("  %s: element %zu is %d, expected %d\n", what, i,
                       is_signed ? (int)(int8_t)got[i] : (int)got[i], is_signed ? (int)(int8_t)want[i] : (int)want[i]);
            bad++;
        }
    if (bad)
        printf("  %s: %zu of %zu elements differ\n", what, bad, count);
    return bad == 0;
}

/* ------------------------------------------------------------------ QCONV, QFULLY_CONNECTED */

struct qconv_case {
    int64_t n, h, w, c, m, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, group;
    int bias, per_channel;
    int32_t qmin, qmax;
    int no_min_weight; /* no weight is -128: the depthwise inner-pixel path (two taps summed in int16) runs */
};

/* When set: y_scale and y_zero_point of every case (test_qconv_saturation). */
static float ys_override;
static int32_t yzp_override;
static bool no_min_weights; /* every case without -128 weights (test_qconv_no_min_weight) */

static void qconv_case(const struct qconv_case *cc, bool fc, int threads, int index) {
    int64_t oh = fc ? 1 : (cc->h + cc->pt + cc->pb - ((cc->kh - 1) * cc->dh + 1)) / cc->sh + 1;
    int64_t ow = fc ? 1 : (cc->w + cc->pl + cc->pr - ((cc->kw - 1) * cc->dw + 1)) / cc->sw + 1;
    int64_t cg = cc->c / cc->group, mg = cc->m / cc->group;
    int64_t xd[4] = {cc->n, cc->h, cc->w, cc->c}, wd[4] = {cc->m, cc->kh, cc->kw, cg}, yd[4] = {cc->n, oh, ow, cc->m};
    int64_t fxd[2] = {cc->n, cc->c}, fwd[2] = {cc->m, cc->c}, fyd[2] = {cc->n, cc->m};
    int64_t md[1] = {cc->m}, one[1] = {1};
    struct ek_tensor_desc x = fc ? mkdesc("x", EK_DTYPE_INT8, 2, fxd) : mkdesc("x", EK_DTYPE_INT8, 4, xd);
    struct ek_tensor_desc y = fc ? mkdesc("y", EK_DTYPE_INT8, 2, fyd) : mkdesc("y", EK_DTYPE_INT8, 4, yd);
    size_t wcount = (size_t)(cc->m * (fc ? cc->c : cc->kh * cc->kw * cg));
    int8_t *wv = bytes_rand(wcount), *xv = bytes_rand(x.count), *yv = malloc(y.count), *ref = malloc(y.count);
    const bool no_min = cc->no_min_weight || no_min_weights;
    for (size_t i = 0; no_min && i < wcount; i++)
        wv[i] = wv[i] == -128 ? 127 : wv[i];
    if (no_min) /* the extreme products: x = -128 against w = 127, and -127 */
        for (size_t i = 0; i < x.count; i += 3)
            xv[i] = -128;
    size_t k = wcount / (size_t)cc->m;
    float *ws = malloc((size_t)cc->m * sizeof *ws);
    int32_t *bias = malloc((size_t)cc->m * sizeof *bias);
    const float xs = frand(0.01f, 0.05f);
    float wsum = 0;
    for (int64_t j = 0; j < cc->m; j++) {
        ws[j] = cc->per_channel ? frand(0.001f, 0.01f) : (j == 0 ? 0.005f : ws[0]);
        bias[j] = irand(-5000, 5000);
        wsum += ws[j];
    }
    /* a y_scale that spreads the outputs over the int8 range */
    const float ys = ys_override ? ys_override : xs * (wsum / (float)cc->m) * sqrtf((float)k) * 5476.0f / 60.0f;
    const int32_t xzp = irand(-20, 20), yzp = ys_override ? yzp_override : irand(-10, 10);
    struct ek_tensor_desc w = fc ? mkconst("w", EK_DTYPE_INT8, 2, fwd, wv) : mkconst("w", EK_DTYPE_INT8, 4, wd, wv);
    struct ek_tensor_desc wsd = mkconst("w_scale", EK_DTYPE_FLOAT32, 1, cc->per_channel ? md : one, ws);
    struct ek_tensor_desc bd = mkconst("bias", EK_DTYPE_INT32, 1, md, bias);

    /* reference: acc = bias + sum (x - xzp) w, padding taps contribute 0 */
    for (int64_t n = 0; n < cc->n; n++)
        for (int64_t i = 0; i < oh; i++)
            for (int64_t j = 0; j < ow; j++)
                for (int64_t mo = 0; mo < cc->m; mo++) {
                    int64_t g = mo / mg, acc = cc->bias ? bias[mo] : 0;
                    if (fc) {
                        for (int64_t q = 0; q < cc->c; q++)
                            acc += (int64_t)(xv[n * cc->c + q] - xzp) * wv[mo * cc->c + q];
                    } else {
                        for (int64_t a = 0; a < cc->kh; a++)
                            for (int64_t b = 0; b < cc->kw; b++) {
                                int64_t ih = i * cc->sh - cc->pt + a * cc->dh, iw = j * cc->sw - cc->pl + b * cc->dw;
                                if (ih < 0 || ih >= cc->h || iw < 0 || iw >= cc->w)
                                    continue;
                                for (int64_t q = 0; q < cg; q++)
                                    acc += (int64_t)(xv[((n * cc->h + ih) * cc->w + iw) * cc->c + g * cg + q] - xzp) *
                                           wv[((mo * cc->kh + a) * cc->kw + b) * cg + q];
                            }
                    }
                    float mult = xs * ws[cc->per_channel ? mo : 0] / ys;
                    ref[((n * oh + i) * ow + j) * cc->m + mo] =
                        (int8_t)ref_q((float)(int32_t)acc * mult, yzp, cc->qmin, cc->qmax);
                }

    struct opb ob;
    opb_init(&ob, fc ? EK_OP_QFULLY_CONNECTED : EK_OP_QCONV, cc->bias ? 4 : 3);
    ob.in[0] = &x;
    ob.in[1] = &w;
    ob.in[2] = &wsd;
    ob.in[3] = cc->bias ? &bd : NULL;
    ob.out[0] = &y;
    if (!fc) {
        int64_t pads[4] = {cc->pt, cc->pl, cc->pb, cc->pr}, strides[2] = {cc->sh, cc->sw}, dil[2] = {cc->dh, cc->dw};
        opb_ints(&ob, "pads", 4, pads);
        opb_ints(&ob, "strides", 2, strides);
        opb_ints(&ob, "dilations", 2, dil);
        opb_int(&ob, "group", cc->group);
    }
    opb_float(&ob, "x_scale", xs);
    opb_int(&ob, "x_zero_point", xzp);
    opb_float(&ob, "y_scale", ys);
    opb_int(&ob, "y_zero_point", yzp);
    opb_int(&ob, "q_min", cc->qmin);
    opb_int(&ob, "q_max", cc->qmax);
    const void *ins[4] = {xv, wv, ws, bias};
    if (CHECK_OK(prepare_run(&ob.op, ins, yv, threads))) {
        char what[96];
        snprintf(what, sizeof what, "%s case %d (%d threads)", fc ? "QFULLY_CONNECTED" : "QCONV", index, threads);
        CHECK(compare_bytes(what, yv, ref, y.count, true));
    }
    free(wv);
    free(xv);
    free(yv);
    free(ref);
    free(ws);
    free(bias);
}

static const struct qconv_case qconv_cases[] = {
    /* n h w c m kh kw sh sw dh dw pt pl pb pr group bias per_channel qmin qmax */
    {1, 5, 6, 3, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -128, 127, 0},     /* 3x3 same */
    {2, 7, 5, 8, 17, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, -128, 127, 0},    /* pointwise */
    {1, 9, 9, 16, 33, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 1, 0, 0, -128, 127, 0},   /* strided 1x1, per-tensor */
    {1, 8, 7, 6, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 6, 1, 1, 0, 127, 0},        /* depthwise, relu */
    {1, 11, 10, 40, 40, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 40, 1, 1, -128, 127, 0}, /* depthwise stride 2 (16 + 16 + 8) */
    {2, 9, 8, 32, 32, 5, 3, 1, 2, 2, 1, 2, 0, 3, 1, 32, 0, 0, -20, 50, 0},   /* depthwise 5x3, dilated, clip */
    {1, 9, 9, 8, 12, 3, 3, 2, 1, 2, 2, 2, 1, 0, 2, 4, 1, 1, -128, 127, 0},    /* grouped, dilated, asymmetric pads */
    {1, 6, 6, 3, 70, 3, 3, 2, 2, 1, 1, 0, 1, 1, 0, 1, 1, 1, -128, 127, 0},    /* the first layer of a network */
    {1, 4, 4, 37, 21, 2, 2, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 6, 0},        /* odd k, clip */
    {3, 3, 5, 64, 48, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -128, 127, 0},
    {1, 1, 1, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 4, 1, 1, -128, 127, 0},     /* all padding but the center */
    {1, 6, 5, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 56, 1, 1, -128, 127, 0},   /* depthwise 32 + 16 + 8 channels */
    {2, 5, 5, 64, 64, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 64, 1, 0, -128, 127, 0},   /* depthwise 1x1 */
    /* depthwise with no weight -128: inner pixels two taps at a time (odd and even tap counts) */
    {1, 9, 8, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 56, 1, 1, -128, 127, 1},
    {2, 11, 9, 48, 48, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 48, 0, 1, -50, 60, 1},
    {1, 10, 10, 40, 40, 2, 2, 1, 1, 2, 2, 0, 0, 1, 1, 40, 1, 0, -128, 127, 1},
    {1, 12, 12, 35, 35, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2, 35, 1, 1, -128, 127, 1},
};

static const struct qconv_case qfc_cases[] = {
    {1, 1, 1, 17, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, -128, 127, 0},
    {7, 1, 1, 64, 33, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, -128, 127, 0},
    {13, 1, 1, 1, 19, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 127, 0},
    {4, 1, 1, 300, 40, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, -100, 100, 0},
};

static void test_qconv(void) {
    for (size_t i = 0; i < sizeof qconv_cases / sizeof qconv_cases[0]; i++) {
        qconv_case(&qconv_cases[i], false, 1, (int)i);
        qconv_case(&qconv_cases[i], false, 3, (int)i);
    }
}

static void test_qfully_connected(void);

/* The same cases with no weight -128: the kernels that sum two products in int16 (the neon GEMM, the
 * depthwise inner pixels) take every op. */
static void test_qconv_no_min_weight(void) {
    no_min_weights = true;
    test_qconv();
    test_qfully_connected();
    no_min_weights = false;
}

static void test_qfully_connected(void) {
    for (size_t i = 0; i < sizeof qfc_cases / sizeof qfc_cases[0]; i++) {
        qconv_case(&qfc_cases[i], true, 1, (int)i);
        qconv_case(&qfc_cases[i], true, 3, (int)i);
    }
}

/* Products far past the int32 range (y_scale 1e-9: float(acc) x mult up to 1e16) saturate to q_min / q_max
 * in every microkernel, also with a zero point that would overflow an int32 at the top. */
static void test_qconv_saturation(void) {
    ys_override = 1e-9f;
    for (int z = 0; z < 2; z++) {
        yzp_override = z ? 127 : -128;
        qconv_case(&qconv_cases[0], false, 2, 100 + z);
        qconv_case(&qconv_cases[4], false, 2, 102 + z); /* depthwise */
        qconv_case(&qfc_cases[1], true, 2, 104 + z);
    }
    ys_override = 0.0f;
}

/* Extreme values: x and w at -128/127, the zero points at their ends, a large bias: the int32 sums
 * must stay exact in every microkernel (the corrections for the zero point and the unsigned offset
 * wrap modulo 2^32 and come back). */
static void test_qconv_extremes(void) {
    const int64_t xd[4] = {1, 3, 3, 64}, wd[4] = {8, 3, 3, 64}, yd[4] = {1, 3, 3, 8}, md[1] = {8};
    struct ek_tensor_desc x = mkdesc("x", EK_DTYPE_INT8, 4, xd), y = mkdesc("y", EK_DTYPE_INT8, 4, yd);
    const size_t k = 3 * 3 * 64;
    int8_t xv[9 * 64], wv[8 * 576], yv[72], ref[72];
    float ws[8];
    int32_t bias[8];
    for (int zcase = 0; zcase < 2; zcase++) {
        const int32_t xzp = zcase ? 127 : -128;
        for (size_t i = 0; i < sizeof xv; i++)
            xv[i] = (int8_t)(zcase ? -128 : 127);
        for (size_t i = 0; i < sizeof wv; i++)
            wv[i] = (int8_t)((i / k) % 2 ? -128 : 127);
        const int64_t maxdev = 255;
        for (int j = 0; j < 8; j++) {
            ws[j] = 1.0f;
            int64_t room = INT32_MAX - maxdev * 128 * (int64_t)k;
            bias[j] = (int32_t)(j % 2 ? room : -room);
        }
        struct ek_tensor_desc w = mkconst("w", EK_DTYPE_INT8, 4, wd, wv), wsd = mkconst("ws", EK_DTYPE_FLOAT32, 1, md, ws);
        struct ek_tensor_desc bd = mkconst("b", EK_DTYPE_INT32, 1, md, bias);
        const float ys = 1.0e7f;
        for (int64_t p = 0; p < 9; p++) {
            int64_t i = p / 3, j = p % 3;
            for (int mo = 0; mo < 8; mo++) {
                int64_t acc = bias[mo];
                for (int a = 0; a < 3; a++)
                    for (int b = 0; b < 3; b++) {
                        int64_t ih = i - 1 + a, iw = j - 1 + b;
                        if (ih < 0 || ih > 2 || iw < 0 || iw > 2)
                            continue;
                        for (int q = 0; q < 64; q++)
                            acc += (int64_t)(xv[(ih * 3 + iw) * 64 + q] - xzp) * wv[((mo * 3 + a) * 3 + b) * 64 + q];
                    }
                CHECK(acc >= INT32_MIN && acc <= INT32_MAX);
                ref[p * 8 + mo] = (int8_t)ref_q((float)(int32_t)acc * (1.0f * 1.0f / ys), 0, -128, 127);
            }
        }
        struct opb ob;
        opb_init(&ob, EK_OP_QCONV, 4);
        ob.in[0] = &x;
        ob.in[1] = &w;
        ob.in[2] = &wsd;
        ob.in[3] = &bd;
        ob.out[0] = &y;
        const int64_t pads[4] = {1, 1, 1, 1};
        opb_ints(&ob, "pads", 4, pads);
        opb_int(&ob, "x_zero_point", xzp);
        opb_float(&ob, "y_scale", ys);
        const void *ins[4] = {xv, wv, ws, bias};
        if (CHECK_OK(prepare_run(&ob.op, ins, yv, 2)))
            CHECK(compare_bytes("QCONV extremes", yv, ref, 72, true));
    }
}

/* ------------------------------------------------------------------ QUANTIZE, DEQUANTIZE, QLUT */

static void test_quantize(void) {
    const int64_t d[2] = {3, 1500};
    struct ek_tensor_desc x = mkdesc("x", EK_DTYPE_FLOAT32, 2, d);
    float *xv = malloc(x.count * sizeof(float));
    for (size_t i = 0; i < x.count; i++)
        xv[i] = frand(-3.0f, 3.0f);
    /* ties, specials */
    const float special[] = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, NAN, INFINITY, -INFINITY, 1e30f, -1e30f, 0.0f, -0.0f};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++)
        xv[i] = special[i] * 0.02f;
    xv[6] = NAN;
    for (int u8 = 0; u8 < 2; u8++) {
        struct ek_tensor_desc y = mkdesc("y", u8 ? EK_DTYPE_UINT8 : EK_DTYPE_INT8, 2, d);
        uint8_t *yv = malloc(y.count), *ref = malloc(y.count);
        const float scale = 0.02f;
        const int32_t zp = u8 ? 128 : -3, lo = u8 ? 0 : -128, hi = u8 ? 255 : 127;
        for (size_t i = 0; i < x.count; i++)
            ref[i] = (uint8_t)ref_q(xv[i] / scale, zp, lo, hi);
        for (int threads = 1; threads <= 3; threads += 2) {
            struct opb ob;
            opb_init(&ob, EK_OP_QUANTIZE, 1);
            ob.in[0] = &x;
            ob.out[0] = &y;
            opb_float(&ob, "scale", scale);
            opb_int(&ob, "zero_point", zp);
            const void *ins[1] = {xv};
            if (CHECK_OK(prepare_run(&ob.op, ins, yv, threads)))
                CHECK(compare_bytes(u8 ? "QUANTIZE uint8" : "QUANTIZE int8", yv, ref, y.count, !u8));
        }
        /* the ties went to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 */
        CHECK(ref[0] == (uint8_t)(zp + 0) && ref[1] == (uint8_t)(zp + 2) && ref[2] == (uint8_t)(zp + 2));
        CHECK(ref[6] == (uint8_t)zp); /* NaN */
        free(yv);
        free(ref);
    }
    free(xv);
}

static void test_dequantize(void) {
    const int64_t d[3] = {2, 3, 700};
    for (int u8 = 0; u8 < 2; u8++) {
        struct ek_tensor_desc x = mkdesc("x", u8 ? EK_DTYPE_UINT8 : EK_DTYPE_INT8, 3, d);
        struct ek_tensor_desc y = mkdesc("y", EK_DTYPE_FLOAT32, 3, d);
        uint8_t *xv = bytes_rand(x.count);
        float *yv = malloc(y.count * sizeof(float));
        const float scale = 0.0371f;
        const int32_t zp = u8 ? 200 : 17;
        for (int threads = 1; threads <= 3; threads += 2) {
            struct opb ob;
            opb_init(&ob, EK_OP_DEQUANTIZE, 1);
            ob.in[0] = &x;
            ob.out[0] = &y;
            opb_float(&ob, "scale", scale);
            opb_int(&ob, "zero_point", zp);
            const void *ins[1] = {xv};
            if (CHECK_OK(prepare_run(&ob.op, ins, yv, threads))) {
                size_t bad = 0;
                for (size_t i = 0; i < y.count; i++) {
                    int32_t q = u8 ? (int32_t)xv[i] : (int32_t)(int8_t)xv[i];
                    float want = (float)(q - zp) * scale;
                    bad += memcmp(&want, &yv[i], sizeof want) != 0;
                }
                CHECK(bad == 0);
            }
        }
        free(xv);
        free(yv);
    }
}

static void test_qlut(void) {
    const int64_t d[2] = {5, 3001}, td[1] = {256};
    for (int xu8 = 0; xu8 < 2; xu8++)
        for (int yu8 = 0; yu8 < 2; yu8++) {
            struct ek_tensor_desc x = mkdesc("x", xu8 ? EK_DTYPE_UINT8 : EK_DTYPE_INT8, 2, d);
            struct ek_tensor_desc y = mkdesc("y", yu8 ? EK_DTYPE_UINT8 : EK_DTYPE_INT8, 2, d);
            uint8_t *table = bytes_rand(256), *xv = bytes_rand(x.count), *yv = malloc(y.count), *ref = malloc(y.count);
            struct ek_tensor_desc t = mkconst("table", y.dtype, 1, td, table);
            for (size_t i = 0; i < x.count; i++)
                ref[i] = table[xu8 ? xv[i] : (size_t)((int)(int8_t)xv[i] + 128)];
            struct opb ob;
            opb_init(&ob, EK_OP_QLUT, 2);
            ob.in[0] = &x;
            ob.in[1] = &t;
            ob.out[0] = &y;
            const void *ins[2] = {xv, table};
            if (CHECK_OK(prepare_run(&ob.op, ins, yv, 3)))
                CHECK(compare_bytes("QLUT", yv, ref, y.count, false));
            free(table);
            free(xv);
            free(yv);
            free(ref);
        }
}

/* ------------------------------------------------------------------ QADD, QMUL */

struct bcast_case {
    int xr, br;
    int64_t xd[4], bd[4], yd[4];
    int yr;
};

static void test_qbinary(void) {
    static const struct bcast_case cases[] = {
        {4, 4, {2, 5, 6, 7}, {2, 5, 6, 7}, {2, 5, 6, 7}, 4},
        {4, 1, {2, 5, 6, 7}, {7}, {2, 5, 6, 7}, 4},
        {4, 4, {2, 5, 6, 7}, {1, 1, 1, 7}, {2, 5, 6, 7}, 4},
        {3, 4, {5, 1, 7}, {2, 1, 6, 1}, {2, 5, 6, 7}, 4},
        {1, 2, {1}, {33, 40}, {33, 40}, 2},
        {2, 2, {4000, 3}, {4000, 3}, {4000, 3}, 2},
    };
    for (int mul = 0; mul < 2; mul++)
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            const struct bcast_case *bc = &cases[ci];
            struct ek_tensor_desc x = mkdesc("x", EK_DTYPE_INT8, bc->xr, bc->xd);
            struct ek_tensor_desc b = mkdesc("b", EK_DTYPE_INT8, bc->br, bc->bd);
            struct ek_tensor_desc y = mkdesc("y", EK_DTYPE_INT8, bc->yr, bc->yd);
            int8_t *xv = bytes_rand(x.count), *bv = bytes_rand(b.count), *yv = malloc(y.count), *ref = malloc(y.count);
            const float xs = frand(0.01f, 0.1f), bs = frand(0.01f, 0.1f);
            const float ys = mul ? xs * bs * 60.0f : (xs + bs) * 1.1f;
            const int32_t xzp = irand(-30, 30), bzp = irand(-30, 30), yzp = irand(-10, 10);
            const int32_t lo = ci % 3 == 1 ? yzp : -128, hi = ci % 3 == 2 ? 90 : 127;
            /* reference: index Y, map to X and B by broadcasting */
            for (size_t e = 0; e < y.count; e++) {
                size_t rest = e, ox = 0, ob = 0, sx = 1, sb = 1;
                for (int d = bc->yr - 1; d >= 0; d--) {
                    size_t i = rest % (size_t)bc->yd[d];
                    rest /= (size_t)bc->yd[d];
                    int dx = d - (bc->yr - bc->xr), db = d - (bc->yr - bc->br);
                    if (dx >= 0) {
                        ox += (bc->xd[dx] == 1 ? 0 : i) * sx;
                        sx *= (size_t)bc->xd[dx];
                    }
                    if (db >= 0) {
                        ob += (bc->bd[db] == 1 ? 0 : i) * sb;
                        sb *= (size_t)bc->bd[db];
                    }
                }
                float v;
                if (mul)
                    v = (float)((xv[ox] - xzp) * (bv[ob] - bzp)) * (xs * bs / ys);
                else { /* two statements: no fused multiply-add */
                    float tx = (float)(xv[ox] - xzp) * (xs / ys);
                    float tb = (float)(bv[ob] - bzp) * (bs / ys);
                    v = tx + tb;
                }
                ref[e] = (int8_t)ref_q(v, yzp, lo, hi);
            }
            for (int threads = 1; threads <= 3; threads += 2) {
                struct opb ob;
                opb_init(&ob, mul ? EK_OP_QMUL : EK_OP_QADD, 2);
                ob.in[0] = &x;
                ob.in[1] = &b;
                ob.out[0] = &y;
                opb_float(&ob, "x_scale", xs);
                opb_int(&ob, "x_zero_point", xzp);
                opb_float(&ob, "b_scale", bs);
                opb_int(&ob, "b_zero_point", bzp);
                opb_float(&ob, "y_scale", ys);
                opb_int(&ob, "y_zero_point", yzp);
                opb_int(&ob, "q_min", lo);
                opb_int(&ob, "q_max", hi);
                const void *ins[2] = {xv, bv};
                char what[64];
                snprintf(what, sizeof what, "%s case %zu", mul ? "QMUL" : "QADD", ci);
                if (CHECK_OK(prepare_run(&ob.op, ins, yv, threads)))
                    CHECK(compare_bytes(what, yv, ref, y.count, true));
            }
            free(xv);
            free(bv);
            free(yv);
            free(ref);
        }
}

/* ------------------------------------------------------------------ quantized pools */

static void test_qpools(void) {
    struct {
        int64_t n, h, w, c, kh, kw, sh, sw, pt, pl, pb, pr, oh, ow;
        int cip;
    } cases[] = {
        {1, 7, 7, 80, 3, 3, 2, 2, 1, 1, 1, 1, 4, 4, 0},
        {2, 7, 7, 5, 3, 3, 2, 2, 1, 1, 1, 1, 4, 4, 1},
        {1, 8, 6, 3, 2, 2, 2, 2, 0, 0, 0, 0, 4, 3, 0},
        {1, 6, 6, 130, 3, 2, 2, 2, 0, 0, 0, 0, 3, 3, 0}, /* ceil mode: a partial last window */
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int64_t xd[4] = {cases[ci].n, cases[ci].h, cases[ci].w, cases[ci].c};
        int64_t yd[4] = {cases[ci].n, cases[ci].oh, cases[ci].ow, cases[ci].c};
        struct ek_tensor_desc x = mkdesc("x", EK_DTYPE_INT8, 4, xd), y = mkdesc("y", EK_DTYPE_INT8, 4, yd);
        int8_t *xv = bytes_rand(x.count), *yv = malloc(y.count), *ref = malloc(y.count);
        const float xs = 0.05f, ys = 0.031f;
        const int32_t xzp = -7, yzp = 4;
        for (int64_t n = 0; n < cases[ci].n; n++)
            for (int64_t i = 0; i < cases[ci].oh; i++)
                for (int64_t j = 0; j < cases[ci].ow; j++)
                    for (int64_t ch = 0; ch < cases[ci].c; ch++) {
                        int32_t sum = 0, count = 0, padded = 0;
                        for (int64_t a = 0; a < cases[ci].kh; a++)
                            for (int64_t b = 0; b < cases[ci].kw; b++) {
                                int64_t ih = i * cases[ci].sh - cases[ci].pt + a, iw = j * cases[ci].sw - cases[ci].pl + b;
                                if (ih < cases[ci].h + cases[ci].pb && iw < cases[ci].w + cases[ci].pr)
                                    padded++;
                                if (ih < 0 || ih >= cases[ci].h || iw < 0 || iw >= cases[ci].w)
                                    continue;
                                sum += xv[((n * cases[ci].h + ih) * cases[ci].w + iw) * cases[ci].c + ch] - xzp;
                                count++;
                            }
                        int32_t div = cases[ci].cip ? padded : count;
                        ref[((n * cases[ci].oh + i) * cases[ci].ow + j) * cases[ci].c + ch] =
                            (int8_t)ref_q((float)sum * (xs / (ys * (float)div)), yzp, -128, 127);
                    }
        struct opb ob;
        opb_init(&ob, EK_OP_QAVERAGE_POOL, 1);
        ob.in[0] = &x;
        ob.out[0] = &y;
        int64_t kernel[2] = {cases[ci].kh, cases[ci].kw}, strides[2] = {cases[ci].sh, cases[ci].sw};
        int64_t pads[4] = {cases[ci].pt, cases[ci].pl, cases[ci].pb, cases[ci].pr};
        opb_ints(&ob, "kernel", 2, kernel);
        opb_ints(&ob, "strides", 2, strides);
        opb_ints(&ob, "pads", 4, pads);
        opb_int(&ob, "count_include_pad", cases[ci].cip);
        opb_float(&ob, "x_scale", xs);
        opb_int(&ob, "x_zero_point", xzp);
        opb_float(&ob, "y_scale", ys);
        opb_int(&ob, "y_zero_point", yzp);
        const void *ins[1] = {xv};
        char what[64];
        snprintf(what, sizeof what, "QAVERAGE_POOL case %zu", ci);
        if (CHECK_OK(prepare_run(&ob.op, ins, yv, 3)))
            CHECK(compare_bytes(what, yv, ref, y.count, true));
        free(xv);
        free(yv);
        free(ref);
    }
    /* global */
    const int64_t xd[4] = {2, 7, 9, 150}, yd[4] = {2, 1, 1, 150};
    struct ek_tensor_desc x = mkdesc("x", EK_DTYPE_INT8, 4, xd), y = mkdesc("y", EK_DTYPE_INT8, 4, yd);
    int8_t *xv = bytes_rand(x.count), yv[300], ref[300];
    const float xs = 0.2f, ys = 0.01f;
    const int32_t xzp = 5, yzp = -2;
    for (int n = 0; n < 2; n++)
        for (int ch = 0; ch < 150; ch++) {
            int32_t sum = 0;
            for (int p = 0; p < 63; p++)
                sum += xv[(n * 63 + p) * 150 + ch] - xzp;
            ref[n * 150 + ch] = (int8_t)ref_q((float)sum * (xs / (ys * 63.0f)), yzp, -128, 127);
        }
    struct opb ob;
    opb_init(&ob, EK_OP_QGLOBAL_AVERAGE_POOL, 1);
    ob.in[0] = &x;
    ob.out[0] = &y;
    opb_float(&ob, "x_scale", xs);
    opb_int(&ob, "x_zero_point", xzp);
    opb_float(&ob, "y_scale", ys);
    opb_int(&ob, "y_zero_point", yzp);
    const void *ins[1] = {xv};
    if (CHECK_OK(prepare_run(&ob.op, ins, yv, 2)))
        CHECK(compare_bytes("QGLOBAL_AVERAGE_POOL", yv, ref, 300, true));
    free(xv);
}

/* ------------------------------------------------------------------ int8 data movement */

/* Run the op on int8 data and on float32 copies of it: the int8 result must be the float one's values. */
static void movement_case(const char *what, enum ek_op_type type, int n_in, const struct ek_tensor_desc *const *xs8,
                          const struct ek_tensor_desc *y8, void (*attrs)(struct opb *)) {
    struct ek_tensor_desc xf[4], yf = *y8;
    const void *in8[4], *inf[4];
    void *bufs8[4], *bufsf[4];
    for (int i = 0; i < n_in; i++) {
        xf[i] = *xs8[i];
        xf[i].dtype = EK_DTYPE_FLOAT32;
        xf[i].nbytes = xf[i].count * 4;
        bufs8[i] = bytes_rand(xs8[i]->count);
        bufsf[i] = malloc(xf[i].count * sizeof(float));
        for (size_t e = 0; e < xf[i].count; e++)
            ((float *)bufsf[i])[e] = ((int8_t *)bufs8[i])[e];
        in8[i] = bufs8[i];
        inf[i] = bufsf[i];
    }
    yf.dtype = EK_DTYPE_FLOAT32;
    yf.nbytes = yf.count * 4;
    int8_t *y8v = malloc(y8->count);
    float *yfv = malloc(yf.count * sizeof(float));
    struct opb o8, of;
    opb_init(&o8, type, n_in);
    opb_init(&of, type, n_in);
    for (int i = 0; i < n_in; i++) {
        o8.in[i] = xs8[i];
        of.in[i] = &xf[i];
    }
    o8.out[0] = y8;
    of.out[0] = &yf;
    attrs(&o8);
    attrs(&of);
    for (int threads = 1; threads <= 3; threads += 2)
        if (CHECK_OK(prepare_run(&o8.op, in8, y8v, threads)) && CHECK_OK(prepare_run(&of.op, inf, yfv, threads))) {
            size_t bad = 0;
            for (size_t e = 0; e < y8->count; e++)
                bad += (float)y8v[e] != yfv[e];
            if (bad)
                printf("  %s: %zu of %zu elements differ\n", what, bad, y8->count);
            CHECK(bad == 0);
        }
    for (int i = 0; i < n_in; i++) {
        free(bufs8[i]);
        free(bufsf[i]);
    }
    free(y8v);
    free(yfv);
}

static void attrs_maxpool(struct opb *b) {
    const int64_t k[2] = {3, 3}, s[2] = {2, 2}, p[4] = {1, 1, 1, 1};
    opb_ints(b, "kernel", 2, k);
    opb_ints(b, "strides", 2, s);
    opb_ints(b, "pads", 4, p);
}
static void attrs_transpose(struct opb *b) {
    const int64_t perm[4] = {0, 2, 3, 1};
    opb_ints(b, "perm", 4, perm);
}
static void attrs_transpose3(struct opb *b) {
    const int64_t perm[4] = {0, 3, 1, 2};
    opb_ints(b, "perm", 4, perm);
}
static void attrs_slice(struct opb *b) {
    const int64_t starts[4] = {0, 1, 5, 0}, steps[4] = {1, 2, -1, 3};
    opb_ints(b, "starts", 4, starts);
    opb_ints(b, "steps", 4, steps);
}
static void attrs_concat(struct opb *b) { opb_int(b, "axis", 3); }
static void attrs_concat1(struct opb *b) { opb_int(b, "axis", 1); }
static void attrs_none(struct opb *b) { (void)b; }
static void attrs_resize(struct opb *b) {
    opb_int(b, "mode", 0);
    opb_int(b, "coordinate", 1);
    opb_int(b, "nearest", 2);
}

static void test_int8_movement(void) {
    const int64_t xd[4] = {2, 9, 7, 19}, pd[4] = {2, 5, 4, 19}, td[4] = {2, 7, 19, 9}, rgb[4] = {1, 8, 8, 3};
    const int64_t trgb[4] = {1, 3, 8, 8};
    struct ek_tensor_desc x = mkdesc("x", EK_DTYPE_INT8, 4, xd), pool = mkdesc("y", EK_DTYPE_INT8, 4, pd);
    const struct ek_tensor_desc *one[1] = {&x};
    movement_case("MAX_POOL int8", EK_OP_MAX_POOL, 1, one, &pool, attrs_maxpool);
    struct ek_tensor_desc t = mkdesc("y", EK_DTYPE_INT8, 4, td);
    movement_case("TRANSPOSE int8", EK_OP_TRANSPOSE, 1, one, &t, attrs_transpose);
    struct ek_tensor_desc r = mkdesc("x", EK_DTYPE_INT8, 4, rgb), tr = mkdesc("y", EK_DTYPE_INT8, 4, trgb);
    const struct ek_tensor_desc *rr[1] = {&r};
    movement_case("TRANSPOSE int8 NHWC->NCHW RGB", EK_OP_TRANSPOSE, 1, rr, &tr, attrs_transpose3);
    const int64_t sd[4] = {2, 4, 6, 7};
    struct ek_tensor_desc s = mkdesc("y", EK_DTYPE_INT8, 4, sd);
    movement_case("SLICE int8", EK_OP_SLICE, 1, one, &s, attrs_slice);
    const int64_t x2d[4] = {2, 9, 7, 5}, cd[4] = {2, 9, 7, 24};
    struct ek_tensor_desc x2 = mkdesc("x2", EK_DTYPE_INT8, 4, x2d), c = mkdesc("y", EK_DTYPE_INT8, 4, cd);
    const struct ek_tensor_desc *two[2] = {&x, &x2};
    movement_case("CONCAT int8 (channels)", EK_OP_CONCAT, 2, two, &c, attrs_concat);
    const int64_t x3d[4] = {2, 4, 7, 19}, c1d[4] = {2, 13, 7, 19};
    struct ek_tensor_desc x3 = mkdesc("x3", EK_DTYPE_INT8, 4, x3d), c1 = mkdesc("y", EK_DTYPE_INT8, 4, c1d);
    const struct ek_tensor_desc *two1[2] = {&x, &x3};
    movement_case("CONCAT int8 (rows)", EK_OP_CONCAT, 2, two1, &c1, attrs_concat1);
    const int64_t rd[2] = {18, 133};
    struct ek_tensor_desc rs = mkdesc("y", EK_DTYPE_INT8, 2, rd);
    movement_case("RESHAPE int8", EK_OP_RESHAPE, 1, one, &rs, attrs_none);
    const int64_t zd[4] = {2, 18, 14, 19};
    struct ek_tensor_desc z = mkdesc("y", EK_DTYPE_INT8, 4, zd);
    movement_case("RESIZE nearest int8", EK_OP_RESIZE, 1, one, &z, attrs_resize);
}

/* ------------------------------------------------------------------ rejects */

/* A valid QCONV (3x3, per-channel w_scale, bias) whose parts the tests break one at a time. */
struct qconv_fixture {
    struct ek_tensor_desc x, w, ws, b, y;
    int8_t wv[4 * 9 * 2];
    float wsv[4];
    int32_t bv[4];
    struct opb ob;
};

static void fixture_init(struct qconv_fixture *f) {
    memset(f, 0, sizeof *f);
    static const int64_t xd[4] = {1, 5, 5, 2}, wd[4] = {4, 3, 3, 2}, md[1] = {4}, yd[4] = {1, 3, 3, 4};
    for (size_t i = 0; i < sizeof f->wv; i++)
        f->wv[i] = (int8_t)(i * 7);
    for (int i = 0; i < 4; i++) {
        f->wsv[i] = 0.01f;
        f->bv[i] = 10;
    }
    f->x = mkdesc("x", EK_DTYPE_INT8, 4, xd);
    f->w = mkconst("w", EK_DTYPE_INT8, 4, wd, f->wv);
    f->ws = mkconst("w_scale", EK_DTYPE_FLOAT32, 1, md, f->wsv);
    f->b = mkconst("bias", EK_DTYPE_INT32, 1, md, f->bv);
    f->y = mkdesc("y", EK_DTYPE_INT8, 4, yd);
    opb_init(&f->ob, EK_OP_QCONV, 4);
    f->ob.in[0] = &f->x;
    f->ob.in[1] = &f->w;
    f->ob.in[2] = &f->ws;
    f->ob.in[3] = &f->b;
    f->ob.out[0] = &f->y;
    opb_float(&f->ob, "x_scale", 0.1f);
    opb_int(&f->ob, "x_zero_point", 3);
    opb_float(&f->ob, "y_scale", 0.2f);
    opb_int(&f->ob, "y_zero_point", -1);
    opb_int(&f->ob, "q_min", -128);
    opb_int(&f->ob, "q_max", 127);
}

#define EXPECT_INVALID(f, needle)                                                                                     \
    do {                                                                                                              \
        if (CHECK_STATUS(prepare_only(&(f)->ob.op), EK_ERR_MODEL_INVALID))                                           \
            CHECK_ERROR_MENTIONS(needle);                                                                             \
    } while (0)

static void test_qconv_rejects(void) {
    struct qconv_fixture f;
    fixture_init(&f);
    CHECK_OK(prepare_only(&f.ob.op));
    const float bad_scales[] = {0.0f, -1.0f, NAN, INFINITY};
    for (size_t i = 0; i < 4; i++) {
        fixture_init(&f);
        opb_set_float(&f.ob, "x_scale", bad_scales[i]);
        EXPECT_INVALID(&f, "x_scale");
        fixture_init(&f);
        opb_set_float(&f.ob, "y_scale", bad_scales[i]);
        EXPECT_INVALID(&f, "y_scale");
        fixture_init(&f);
        f.wsv[2] = bad_scales[i];
        EXPECT_INVALID(&f, "w_scale[2]");
    }
    fixture_init(&f);
    opb_set_int(&f.ob, "x_zero_point", 128);
    EXPECT_INVALID(&f, "x_zero_point");
    fixture_init(&f);
    opb_set_int(&f.ob, "y_zero_point", -129);
    EXPECT_INVALID(&f, "y_zero_point");
    fixture_init(&f);
    opb_set_int(&f.ob, "q_min", 10);
    opb_set_int(&f.ob, "q_max", 9);
    EXPECT_INVALID(&f, "q_min");
    fixture_init(&f);
    opb_set_int(&f.ob, "q_max", 128);
    EXPECT_INVALID(&f, "q_max");
    fixture_init(&f);
    opb_set_int(&f.ob, "q_min", -129);
    EXPECT_INVALID(&f, "q_min");
    /* w_scale of the wrong length */
    fixture_init(&f);
    static const int64_t three[1] = {3};
    f.ws = mkconst("w_scale", EK_DTYPE_FLOAT32, 1, three, f.wsv);
    EXPECT_INVALID(&f, "w_scale has 3 values");
    /* non-constant W, w_scale, bias */
    fixture_init(&f);
    f.w.storage = EK_STORAGE_ARENA;
    EXPECT_INVALID(&f, "W (input 1) 'w' must be a CONSTANT");
    fixture_init(&f);
    f.ws.storage = EK_STORAGE_INPUT;
    EXPECT_INVALID(&f, "w_scale (input 2)");
    fixture_init(&f);
    f.b.constant = NULL;
    EXPECT_INVALID(&f, "bias (input 3)");
    /* dtypes */
    fixture_init(&f);
    f.b.dtype = EK_DTYPE_FLOAT32;
    EXPECT_INVALID(&f, "bias must be int32");
    fixture_init(&f);
    f.x.dtype = EK_DTYPE_UINT8;
    EXPECT_INVALID(&f, "X must be int8");
    /* wrong Y shape */
    fixture_init(&f);
    static const int64_t wrong[4] = {1, 4, 3, 4};
    f.y = mkdesc("y", EK_DTYPE_INT8, 4, wrong);
    EXPECT_INVALID(&f, "Y is [1,4,3,4], expected [1, 3, 3, 4]");
    /* a multiplier that overflows float32 */
    fixture_init(&f);
    opb_set_float(&f.ob, "x_scale", 1e30f);
    opb_set_float(&f.ob, "y_scale", 1e-30f);
    EXPECT_INVALID(&f, "x_scale x w_scale / y_scale");
    /* a bias that could overflow the sum */
    fixture_init(&f);
    f.bv[1] = INT32_MAX - 100;
    EXPECT_INVALID(&f, "bias[1]");
    /* a reduction over 65536 terms (FC with K = 65537) */
    {
        const int64_t xd[2] = {1, 65537}, wd[2] = {1, 65537}, one[1] = {1}, yd[2] = {1, 1};
        int8_t *w = calloc(65537, 1);
        float s = 1.0f;
        struct ek_tensor_desc x = mkdesc("x", EK_DTYPE_INT8, 2, xd), wt = mkconst("w", EK_DTYPE_INT8, 2, wd, w);
        struct ek_tensor_desc ws = mkconst("ws", EK_DTYPE_FLOAT32, 1, one, &s), y = mkdesc("y", EK_DTYPE_INT8, 2, yd);
        struct opb ob;
        opb_init(&ob, EK_OP_QFULLY_CONNECTED, 3);
        ob.in[0] = &x;
        ob.in[1] = &wt;
        ob.in[2] = &ws;
        ob.out[0] = &y;
        if (CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID))
            CHECK_ERROR_MENTIONS("65537 terms");
        free(w);
    }
}

static void test_elementwise_rejects(void) {
    const int64_t d[2] = {2, 3}, td[1] = {256}, t255[1] = {255};
    struct ek_tensor_desc x8 = mkdesc("x", EK_DTYPE_INT8, 2, d), u8 = mkdesc("u", EK_DTYPE_UINT8, 2, d);
    struct ek_tensor_desc f32 = mkdesc("f", EK_DTYPE_FLOAT32, 2, d), y8 = mkdesc("y", EK_DTYPE_INT8, 2, d);
    struct opb ob;
    /* QUANTIZE: scale, zero point of uint8 */
    opb_init(&ob, EK_OP_QUANTIZE, 1);
    ob.in[0] = &f32;
    ob.out[0] = &u8;
    opb_float(&ob, "scale", 0.0f);
    if (CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID))
        CHECK_ERROR_MENTIONS("'scale'");
    opb_init(&ob, EK_OP_QUANTIZE, 1);
    ob.in[0] = &f32;
    ob.out[0] = &u8;
    opb_int(&ob, "zero_point", -1);
    if (CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID))
        CHECK_ERROR_MENTIONS("0..255");
    opb_init(&ob, EK_OP_QUANTIZE, 1);
    ob.in[0] = &f32;
    ob.out[0] = &f32;
    if (CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID))
        CHECK_ERROR_MENTIONS("Y must be int8");
    /* DEQUANTIZE: NaN scale, int8 zero point */
    opb_init(&ob, EK_OP_DEQUANTIZE, 1);
    ob.in[0] = &x8;
    ob.out[0] = &f32;
    opb_float(&ob, "scale", NAN);
    CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID);
    opb_init(&ob, EK_OP_DEQUANTIZE, 1);
    ob.in[0] = &x8;
    ob.out[0] = &f32;
    opb_int(&ob, "zero_point", 200);
    if (CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID))
        CHECK_ERROR_MENTIONS("-128..127");
    /* QADD: b_scale negative, q_max out of range, shapes that do not broadcast */
    opb_init(&ob, EK_OP_QADD, 2);
    ob.in[0] = &x8;
    ob.in[1] = &x8;
    ob.out[0] = &y8;
    opb_float(&ob, "b_scale", -0.5f);
    if (CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID))
        CHECK_ERROR_MENTIONS("b_scale");
    opb_init(&ob, EK_OP_QMUL, 2);
    ob.in[0] = &x8;
    ob.in[1] = &x8;
    ob.out[0] = &y8;
    opb_int(&ob, "q_max", 300);
    CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID);
    const int64_t d3[1] = {4};
    struct ek_tensor_desc b4 = mkdesc("b", EK_DTYPE_INT8, 1, d3);
    opb_init(&ob, EK_OP_QADD, 2);
    ob.in[0] = &x8;
    ob.in[1] = &b4;
    ob.out[0] = &y8;
    if (CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID))
        CHECK_ERROR_MENTIONS("do not broadcast");
    /* QLUT: table not constant, of 255 entries, of another dtype than Y */
    uint8_t table[256] = {0};
    struct ek_tensor_desc t = mkdesc("table", EK_DTYPE_INT8, 1, td);
    opb_init(&ob, EK_OP_QLUT, 2);
    ob.in[0] = &x8;
    ob.in[1] = &t;
    ob.out[0] = &y8;
    if (CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID))
        CHECK_ERROR_MENTIONS("CONSTANT");
    t = mkconst("table", EK_DTYPE_INT8, 1, t255, table);
    if (CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID))
        CHECK_ERROR_MENTIONS("256");
    t = mkconst("table", EK_DTYPE_UINT8, 1, td, table);
    if (CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID))
        CHECK_ERROR_MENTIONS("table must be int8");
    /* QAVERAGE_POOL: zero x_scale */
    const int64_t pd[4] = {1, 4, 4, 2}, pod[4] = {1, 2, 2, 2}, k2[2] = {2, 2};
    struct ek_tensor_desc px = mkdesc("x", EK_DTYPE_INT8, 4, pd), py = mkdesc("y", EK_DTYPE_INT8, 4, pod);
    opb_init(&ob, EK_OP_QAVERAGE_POOL, 1);
    ob.in[0] = &px;
    ob.out[0] = &py;
    opb_ints(&ob, "kernel", 2, k2);
    opb_ints(&ob, "strides", 2, k2);
    opb_float(&ob, "x_scale", 0.0f);
    if (CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID))
        CHECK_ERROR_MENTIONS("x_scale");
    const int64_t gd[4] = {1, 1, 1, 2};
    struct ek_tensor_desc gy = mkdesc("y", EK_DTYPE_INT8, 4, gd);
    opb_init(&ob, EK_OP_QGLOBAL_AVERAGE_POOL, 1);
    ob.in[0] = &px;
    ob.out[0] = &gy;
    opb_int(&ob, "y_zero_point", 1000);
    if (CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID))
        CHECK_ERROR_MENTIONS("y_zero_point");
    /* data movement: mixed dtypes, int8 linear RESIZE */
    opb_init(&ob, EK_OP_TRANSPOSE, 1);
    const int64_t perm[2] = {1, 0}, td2[2] = {3, 2};
    struct ek_tensor_desc tf = mkdesc("y", EK_DTYPE_FLOAT32, 2, td2);
    ob.in[0] = &x8;
    ob.out[0] = &tf;
    opb_ints(&ob, "perm", 2, perm);
    if (CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID))
        CHECK_ERROR_MENTIONS("output Y must be int8, is float32");
    opb_init(&ob, EK_OP_CONCAT, 2);
    const int64_t cd[2] = {2, 6};
    struct ek_tensor_desc cy = mkdesc("y", EK_DTYPE_INT8, 2, cd);
    ob.in[0] = &x8;
    ob.in[1] = &f32;
    ob.out[0] = &cy;
    opb_int(&ob, "axis", 1);
    if (CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID))
        CHECK_ERROR_MENTIONS("input 1 must be int8, is float32");
    opb_init(&ob, EK_OP_RESIZE, 1);
    const int64_t rd[4] = {1, 8, 8, 2};
    struct ek_tensor_desc ry = mkdesc("y", EK_DTYPE_INT8, 4, rd);
    ob.in[0] = &px;
    ob.out[0] = &ry;
    opb_int(&ob, "mode", 1);
    if (CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID))
        CHECK_ERROR_MENTIONS("linear mode takes float32 only");
    opb_init(&ob, EK_OP_MAX_POOL, 1);
    struct ek_tensor_desc pu = mkdesc("x", EK_DTYPE_UINT8, 4, pd);
    ob.in[0] = &pu;
    ob.out[0] = &py;
    opb_ints(&ob, "kernel", 2, k2);
    if (CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID))
        CHECK_ERROR_MENTIONS("X must be float32, is uint8");
    /* ops without int8 forms keep refusing it */
    opb_init(&ob, EK_OP_PAD, 1);
    ob.in[0] = &x8;
    ob.out[0] = &y8;
    CHECK_STATUS(prepare_only(&ob.op), EK_ERR_MODEL_INVALID);
}

/* ------------------------------------------------------------------ microkernel choice */

static const char *const qisas[] = {"generic", "avx2", "avx512vnni", "neondot", "neon"};

static void test_qgemm_choice(void) {
    const char *forced = getenv("EDGEKIT_QGEMM_ISA");
    printf("  default int8 GEMM microkernel: %s (EDGEKIT_QGEMM_ISA=%s)\n", ek_qgemm_isa(), forced ? forced : "unset");
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(EK_NO_SIMD_KERNELS)
    __builtin_cpu_init();
    const char *best = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") ? "avx512vnni"
                       : __builtin_cpu_supports("avx2")                                            ? "avx2"
                                                                                                   : "generic";
    if (!forced)
        CHECK(strcmp(ek_qgemm_isa(), best) == 0);
#endif
    CHECK(ek_qgemm_force_isa("generic"));
    CHECK(!ek_qgemm_force_isa("bogus"));
    CHECK(!ek_qgemm_force_isa(NULL));
    CHECK(strcmp(ek_qgemm_isa(), "generic") == 0);
}

int main(void) {
    RUN(test_qgemm_choice);
    for (size_t i = 0; i < sizeof qisas / sizeof qisas[0]; i++) {
        if (!ek_qgemm_force_isa(qisas[i])) {
            printf("-- int8 GEMM microkernel %s: not in this build or CPU\n", qisas[i]);
            continue;
        }
        printf("-- int8 GEMM microkernel %s\n", ek_qgemm_isa());
        RUN(test_qconv);
        RUN(test_qfully_connected);
        RUN(test_qconv_extremes);
        RUN(test_qconv_saturation);
        RUN(test_qconv_no_min_weight);
    }
    RUN(test_quantize);
    RUN(test_dequantize);
    RUN(test_qlut);
    RUN(test_qbinary);
    RUN(test_qpools);
    RUN(test_int8_movement);
    RUN(test_qconv_rejects);
    RUN(test_elementwise_rejects);
    return ek_test_summary();
}
