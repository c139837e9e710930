/* The portable spatial and matrix kernels (CONV, CONV_TRANSPOSE, FULLY_CONNECTED, MATMUL, the pools,
 * RESIZE) against naive reference loops written here, on 1 and 3 threads, with constant (packed at
 * prepare) and non-constant (packed at run) weights; and prepare() refusing malformed ops with
 * EK_ERR_MODEL_INVALID. The SGEMM (ek_gemm) and the kernels on it run once per microkernel this
 * build and CPU have (generic, avx2, avx512 on x86-64; generic, neon on aarch64).
 *
 * The kernels are internal to libedgekit (hidden symbols), so this test compiles them from source
 * together with kernels/attrs.c and src/status.c, and with the small pthread ek_exec below in place
 * of the engine (-DEK_KERNEL_TEST_SHIM; tests/c/CMakeLists.txt does this). */
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
#include "portable/winograd.h"

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

static uint32_t rng_state = 12345;

static float frand(void) {
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)((rng_state >> 8) & 0xFFFF) / 32768.0f - 1.0f;
}

static float *rand_buf(size_t count) {
    float *p = malloc((count ? count : 1) * sizeof(float));
    for (size_t i = 0; i < count; i++)
        p[i] = frand();
    return p;
}

static struct ek_tensor_desc mkdesc(const char *name, int rank, const int64_t *dims) {
    struct ek_tensor_desc d;
    memset(&d, 0, sizeof d);
    d.name = name;
    d.dtype = EK_DTYPE_FLOAT32;
    d.rank = rank;
    d.count = 1;
    for (int i = 0; i < rank; i++) {
        d.dims[i] = dims[i];
        d.count *= (size_t)dims[i];
    }
    d.nbytes = d.count * sizeof(float);
    d.storage = EK_STORAGE_ARENA;
    return d;
}

#define MAX_ATTRS 10

struct opb {
    struct ek_op op;
    const struct ek_tensor_desc *in[4];
    const struct ek_tensor_desc *out[1];
    struct ek_attr attrs[MAX_ATTRS];
    int64_t ints[MAX_ATTRS][8];
    float floats[MAX_ATTRS][2];
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

static void opb_string(struct opb *b, const char *name, const char *v) {
    b->attrs[b->op.n_attrs++] = (struct ek_attr){.name = name, .type = EK_ATTR_STRING, .count = 1, .s = v};
}

static void opb_floats2(struct opb *b, const char *name, float v0, float v1) {
    int i = b->op.n_attrs++;
    b->floats[i][0] = v0;
    b->floats[i][1] = v1;
    b->attrs[i] = (struct ek_attr){.name = name, .type = EK_ATTR_FLOATS, .count = 2, .floats = b->floats[i]};
}

/* Run a prepared op on `threads` threads; the output starts as NaN and the scratch as garbage, so
 * unwritten outputs and uninitialised scratch reads show up. */
static ek_status_t run_op(const struct ek_kernel *k, struct ek_op *op, const void *const *in, float *out,
                          size_t out_count, int threads) {
    struct ek_exec ex;
    memset(&ex, 0, sizeof ex);
    ex.threads = threads;
    size_t bytes = (op->scratch_per_thread + 63) / 64 * 64;
    for (int i = 0; i < threads; i++) {
        if (bytes) {
            ex.scratch[i] = aligned_alloc(64, bytes);
            memset(ex.scratch[i], 0xFF, bytes);
        }
    }
    for (size_t i = 0; i < out_count; i++)
        out[i] = NAN;
    void *outs[1] = {out};
    ek_status_t st = k->run(op, in, outs, &ex);
    for (int i = 0; i < threads; i++)
        free(ex.scratch[i]);
    return st;
}

/* Compare with a double reference; tolerance grows with the number of summed terms. */
static int compare(const char *what, const float *got, const double *want, size_t count, size_t terms) {
    double tol_scale = 1e-5 * (double)(terms + 10);
    size_t bad = 0;
    for (size_t i = 0; i < count; i++) {
        double g = got[i], w = want[i];
        if (!(fabs(g - w) <= tol_scale * (1.0 + fabs(w)))) {
            if (bad < 3)
                printf("  %s: element %zu is %.7g, expected %.7g\n", what, i, g, w);
            bad++;
        }
    }
    if (bad)
        printf("  %s: %zu of %zu elements differ\n", what, bad, count);
    return bad == 0;
}

static double clampd(double v, float lo, float hi) {
    if (v < lo)
        v = lo;
    if (v > hi)
        v = hi;
    return v;
}

/* ------------------------------------------------------------------ CONV / CONV_TRANSPOSE */

struct conv_case {
    int64_t n, h, w, c, m, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, adjh, adjw, group;
    int bias;
    float lo, hi;
};

/* residual: CONV with the input Z (.ekm 1.4), against the reference conv, + Z, then the clamp. */
static void conv_case(const struct conv_case *cc, bool transpose, bool constant, int threads, int index,
                      bool residual) {
    int64_t oh, ow;
    if (!transpose) {
        oh = (cc->h + cc->pt + cc->pb - ((cc->kh - 1) * cc->dh + 1)) / cc->sh + 1;
        ow = (cc->w + cc->pl + cc->pr - ((cc->kw - 1) * cc->dw + 1)) / cc->sw + 1;
    } else {
        oh = (cc->h - 1) * cc->sh + (cc->kh - 1) * cc->dh + 1 - cc->pt - cc->pb + cc->adjh;
        ow = (cc->w - 1) * cc->sw + (cc->kw - 1) * cc->dw + 1 - cc->pl - cc->pr + cc->adjw;
    }
    int64_t cg = cc->c / cc->group, mg = cc->m / cc->group;
    int64_t xd[4] = {cc->n, cc->h, cc->w, cc->c}, wd[4] = {cc->m, cc->kh, cc->kw, cg}, bd[1] = {cc->m};
    int64_t yd[4] = {cc->n, oh, ow, cc->m};
    struct ek_tensor_desc x = mkdesc("x", 4, xd), w = mkdesc("w", 4, wd), b = mkdesc("b", 1, bd), y = mkdesc("y", 4, yd);
    float *xv = rand_buf(x.count), *wv = rand_buf(w.count), *bv = rand_buf(b.count);
    float *yv = malloc(y.count * sizeof(float));
    double *ref = calloc(y.count, sizeof(double));
    struct ek_tensor_desc z = mkdesc("z", 4, yd);
    float *zv = residual ? rand_buf(z.count) : NULL;
    if (constant) {
        w.storage = EK_STORAGE_CONSTANT;
        w.constant = wv;
    }
    struct opb ob;
    opb_init(&ob, transpose ? EK_OP_CONV_TRANSPOSE : EK_OP_CONV, residual ? 4 : cc->bias ? 3 : 2);
    ob.in[0] = &x;
    ob.in[1] = &w;
    ob.in[2] = cc->bias ? &b : NULL; /* absent bias with Z: in[2] NULL, as the loader gives it */
    ob.in[3] = residual ? &z : NULL;
    ob.out[0] = &y;
    int64_t pads[4] = {cc->pt, cc->pl, cc->pb, cc->pr}, strides[2] = {cc->sh, cc->sw}, dil[2] = {cc->dh, cc->dw};
    int64_t adj[2] = {cc->adjh, cc->adjw};
    opb_ints(&ob, "pads", 4, pads);
    opb_ints(&ob, "strides", 2, strides);
    opb_ints(&ob, "dilations", 2, dil);
    opb_int(&ob, "group", cc->group);
    if (transpose)
        opb_ints(&ob, "adjustments", 2, adj);
    if (cc->lo > -INFINITY)
        opb_float(&ob, "act_min", cc->lo);
    if (cc->hi < INFINITY)
        opb_float(&ob, "act_max", cc->hi);
    const struct ek_kernel *k = transpose ? &ek_kernel_conv_transpose : &ek_kernel_conv;

    /* reference */
    for (int64_t n = 0; n < cc->n; n++) {
        if (!transpose) {
            for (int64_t i = 0; i < oh; i++)
                for (int64_t j = 0; j < ow; j++)
                    for (int64_t m = 0; m < cc->m; m++) {
                        int64_t g = m / mg;
                        double acc = cc->bias ? bv[m] : 0.0;
                        for (int64_t a = 0; a < cc->kh; a++)
                            for (int64_t bb = 0; bb < cc->kw; bb++) {
                                int64_t ih = i * cc->sh - cc->pt + a * cc->dh, iw = j * cc->sw - cc->pl + bb * cc->dw;
                                if (ih < 0 || ih >= cc->h || iw < 0 || iw >= cc->w)
                                    continue;
                                for (int64_t ch = 0; ch < cg; ch++)
                                    acc += (double)xv[((n * cc->h + ih) * cc->w + iw) * cc->c + g * cg + ch] *
                                           wv[((m * cc->kh + a) * cc->kw + bb) * cg + ch];
                            }
                        ref[((n * oh + i) * ow + j) * cc->m + m] = acc;
                    }
        } else {
            /* scatter: every input pixel adds its contribution to the outputs its taps reach */
            for (int64_t ih = 0; ih < cc->h; ih++)
                for (int64_t iw = 0; iw < cc->w; iw++)
                    for (int64_t m = 0; m < cc->m; m++) {
                        int64_t g = m / mg;
                        for (int64_t a = 0; a < cc->kh; a++)
                            for (int64_t bb = 0; bb < cc->kw; bb++) {
                                int64_t i = ih * cc->sh + a * cc->dh - cc->pt, j = iw * cc->sw + bb * cc->dw - cc->pl;
                                if (i < 0 || i >= oh || j < 0 || j >= ow)
                                    continue;
                                double acc = 0;
                                for (int64_t ch = 0; ch < cg; ch++)
                                    acc += (double)xv[((n * cc->h + ih) * cc->w + iw) * cc->c + g * cg + ch] *
                                           wv[((m * cc->kh + a) * cc->kw + bb) * cg + ch];
                                ref[((n * oh + i) * ow + j) * cc->m + m] += acc;
                            }
                    }
            for (int64_t i = 0; i < oh * ow; i++)
                for (int64_t m = 0; m < cc->m; m++)
                    ref[(n * oh * ow + i) * cc->m + m] += cc->bias ? bv[m] : 0.0;
        }
    }
    for (size_t i = 0; i < y.count; i++)
        ref[i] = clampd(ref[i] + (zv ? zv[i] : 0.0), cc->lo, cc->hi);

    ek_status_t st = k->prepare(&ob.op);
    if (!CHECK_OK(st)) {
        printf("  case %d (%s)\n", index, transpose ? "transpose" : "conv");
    } else {
        const void *ins[4] = {xv, wv, cc->bias ? bv : NULL, zv};
        CHECK_OK(run_op(k, &ob.op, ins, yv, y.count, threads));
        char what[96];
        snprintf(what, sizeof what, "%s case %d, %s weights, %d threads%s", transpose ? "conv_transpose" : "conv",
                 index, constant ? "constant" : "arena", threads, residual ? ", + Z" : "");
        CHECK(compare(what, yv, ref, y.count, (size_t)(cc->kh * cc->kw * cg)));
        k->release(&ob.op);
        CHECK(ob.op.params == NULL);
    }
    free(xv);
    free(wv);
    free(bv);
    free(zv);
    free(yv);
    free(ref);
}

#define NOACT -INFINITY, INFINITY

static const struct conv_case conv_cases[] = {
    /* n h  w  c   m  kh kw sh sw dh dw pt pl pb pr ah aw g  bias act */
    {1, 5, 7, 16, 24, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0.0f, INFINITY},    /* pointwise, relu */
    {2, 6, 5, 8, 12, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 4, 0, NOACT},              /* grouped pointwise */
    {1, 9, 8, 3, 10, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, NOACT},              /* first layer */
    {2, 11, 9, 8, 16, 3, 3, 2, 2, 1, 1, 0, 1, 1, 0, 0, 0, 2, 1, -0.5f, 0.5f},       /* groups, asym pads */
    {1, 12, 13, 5, 7, 5, 3, 1, 2, 2, 1, 2, 1, 3, 0, 0, 0, 1, 1, NOACT},             /* dilation, strides */
    {1, 10, 9, 12, 12, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0, 0, 12, 1, 0.0f, 6.0f},      /* depthwise relu6 */
    {2, 7, 7, 9, 9, 5, 5, 1, 1, 2, 2, 4, 4, 4, 4, 0, 0, 9, 0, NOACT},               /* depthwise dilated */
    {1, 8, 8, 64, 37, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, NOACT},             /* k = 576 > KC */
    {1, 6, 6, 6, 12, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 6, 1, NOACT},              /* depth multiplier 2 */
    {1, 4, 4, 4, 5, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, NOACT},               /* 1x1 stride 2 */
    {3, 17, 3, 2, 3, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, NOACT},              /* tiny */
};

static const struct conv_case conv_transpose_cases[] = {
    /* n h  w  c   m  kh kw sh sw dh dw pt pl pb pr ah aw g  bias act */
    {1, 4, 5, 6, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, NOACT},               /* stride 2, adj */
    {2, 3, 4, 8, 6, 4, 4, 2, 2, 1, 1, 1, 1, 1, 1, 0, 0, 2, 1, 0.0f, INFINITY},      /* groups, relu */
    {1, 5, 3, 4, 4, 3, 2, 1, 3, 2, 1, 0, 1, 2, 0, 1, 2, 1, 0, NOACT},               /* dilation, strides */
    {1, 6, 6, 16, 8, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, NOACT},              /* pointwise */
    {1, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0, 4, 1, NOACT},               /* depthwise transpose */
    {1, 7, 7, 40, 20, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, NOACT},             /* k = 360 > KC */
};

static void test_conv(void) {
    int n = (int)(sizeof conv_cases / sizeof conv_cases[0]);
    for (int i = 0; i < n; i++) {
        conv_case(&conv_cases[i], false, true, 1, i, false);
        conv_case(&conv_cases[i], false, true, 3, i, false);
        conv_case(&conv_cases[i], false, false, 2, i, false);
    }
}

/* Every conv kind (pointwise, depthwise, im2col; with and without bias and clamp) with the residual Z. */
static void test_conv_residual(void) {
    int n = (int)(sizeof conv_cases / sizeof conv_cases[0]);
    for (int i = 0; i < n; i++) {
        conv_case(&conv_cases[i], false, true, 1, i, true);
        conv_case(&conv_cases[i], false, true, 3, i, true);
        conv_case(&conv_cases[i], false, false, 2, i, true);
    }
}

static void test_conv_transpose(void) {
    int n = (int)(sizeof conv_transpose_cases / sizeof conv_transpose_cases[0]);
    for (int i = 0; i < n; i++) {
        conv_case(&conv_transpose_cases[i], true, true, 1, i, false);
        conv_case(&conv_transpose_cases[i], true, true, 3, i, false);
        conv_case(&conv_transpose_cases[i], true, false, 2, i, false);
    }
}

/* ------------------------------------------------------------------ FULLY_CONNECTED / MATMUL */

static void fc_case(int rank, const int64_t *xdims, int64_t nout, int bias, bool constant, float lo, float hi,
                    int threads) {
    int64_t k = xdims[rank - 1], wd[2] = {nout, k}, bd[1] = {nout}, yd[EK_MAX_DIMS];
    memcpy(yd, xdims, (size_t)rank * sizeof *yd);
    yd[rank - 1] = nout;
    struct ek_tensor_desc x = mkdesc("x", rank, xdims), w = mkdesc("w", 2, wd), b = mkdesc("b", 1, bd),
                          y = mkdesc("y", rank, yd);
    float *xv = rand_buf(x.count), *wv = rand_buf(w.count), *bv = rand_buf(b.count);
    float *yv = malloc(y.count * sizeof(float));
    double *ref = malloc(y.count * sizeof(double));
    if (constant) {
        w.storage = EK_STORAGE_CONSTANT;
        w.constant = wv;
    }
    size_t rows = x.count / (size_t)k;
    for (size_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < nout; j++) {
            double acc = bias ? bv[j] : 0.0;
            for (int64_t p = 0; p < k; p++)
                acc += (double)xv[r * (size_t)k + (size_t)p] * wv[j * k + p];
            ref[r * (size_t)nout + (size_t)j] = clampd(acc, lo, hi);
        }
    struct opb ob;
    opb_init(&ob, EK_OP_FULLY_CONNECTED, bias ? 3 : 2);
    ob.in[0] = &x;
    ob.in[1] = &w;
    ob.in[2] = bias ? &b : NULL;
    ob.out[0] = &y;
    if (lo > -INFINITY)
        opb_float(&ob, "act_min", lo);
    if (hi < INFINITY)
        opb_float(&ob, "act_max", hi);
    if (CHECK_OK(ek_kernel_fully_connected.prepare(&ob.op))) {
        const void *ins[3] = {xv, wv, bias ? bv : NULL};
        CHECK_OK(run_op(&ek_kernel_fully_connected, &ob.op, ins, yv, y.count, threads));
        char what[80];
        snprintf(what, sizeof what, "fc k=%lld n=%lld %s %d threads", (long long)k, (long long)nout,
                 constant ? "constant" : "arena", threads);
        CHECK(compare(what, yv, ref, y.count, (size_t)k));
        ek_kernel_fully_connected.release(&ob.op);
    }
    free(xv);
    free(wv);
    free(bv);
    free(yv);
    free(ref);
}

static void test_fully_connected(void) {
    const int64_t x1[3] = {2, 3, 37}, x2[2] = {1, 300}, x3[1] = {5}, x4[2] = {9, 1};
    for (int t = 1; t <= 3; t += 2) {
        fc_case(3, x1, 19, 1, true, NOACT, t);
        fc_case(3, x1, 19, 0, false, 0.0f, INFINITY, t);
        fc_case(2, x2, 100, 1, true, -0.25f, 0.25f, t); /* matrix-vector: columns split over threads */
        fc_case(2, x2, 100, 1, false, NOACT, t);
        fc_case(1, x3, 3, 1, false, NOACT, t);
        fc_case(2, x4, 8, 0, true, NOACT, t);
    }
}

static void matmul_case(int ra, const int64_t *ad, int rb, const int64_t *bd, bool constant, int threads) {
    int ry = ra > rb ? ra : rb;
    int64_t yd[EK_MAX_DIMS];
    for (int i = 0; i < ry - 2; i++) {
        int ia = i - (ry - ra), ib = i - (ry - rb);
        int64_t da = ia >= 0 ? ad[ia] : 1, db = ib >= 0 ? bd[ib] : 1;
        yd[i] = da > db ? da : db;
    }
    int64_t m = ad[ra - 2], k = ad[ra - 1], n = bd[rb - 1];
    yd[ry - 2] = m;
    yd[ry - 1] = n;
    struct ek_tensor_desc a = mkdesc("a", ra, ad), b = mkdesc("b", rb, bd), y = mkdesc("y", ry, yd);
    float *av = rand_buf(a.count), *bv = rand_buf(b.count), *yv = malloc(y.count * sizeof(float));
    double *ref = malloc(y.count * sizeof(double));
    if (constant) {
        b.storage = EK_STORAGE_CONSTANT;
        b.constant = bv;
    }
    size_t batches = y.count / (size_t)(m * n);
    for (size_t bt = 0; bt < batches; bt++) {
        /* the batch's index per dim of Y, mapped into A and B (size-1 dims broadcast) */
        size_t rest = bt, aoff = 0, boff = 0, astr = 1, bstr = 1;
        for (int i = ry - 3; i >= 0; i--) {
            size_t idx = rest % (size_t)yd[i];
            rest /= (size_t)yd[i];
            int ia = i - (ry - ra), ib = i - (ry - rb);
            int64_t da = ia >= 0 ? ad[ia] : 1, db = ib >= 0 ? bd[ib] : 1;
            aoff += (da == 1 ? 0 : idx) * astr;
            boff += (db == 1 ? 0 : idx) * bstr;
            astr *= (size_t)da;
            bstr *= (size_t)db;
        }
        const float *am = av + aoff * (size_t)(m * k), *bm = bv + boff * (size_t)(k * n);
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                double acc = 0;
                for (int64_t p = 0; p < k; p++)
                    acc += (double)am[i * k + p] * bm[p * n + j];
                ref[bt * (size_t)(m * n) + (size_t)(i * n + j)] = acc;
            }
    }
    struct opb ob;
    opb_init(&ob, EK_OP_MATMUL, 2);
    ob.in[0] = &a;
    ob.in[1] = &b;
    ob.out[0] = &y;
    if (CHECK_OK(ek_kernel_matmul.prepare(&ob.op))) {
        const void *ins[2] = {av, bv};
        CHECK_OK(run_op(&ek_kernel_matmul, &ob.op, ins, yv, y.count, threads));
        char what[80];
        snprintf(what, sizeof what, "matmul ranks %d,%d m=%lld k=%lld n=%lld %s %d threads", ra, rb, (long long)m,
                 (long long)k, (long long)n, constant ? "constant" : "arena", threads);
        CHECK(compare(what, yv, ref, y.count, (size_t)k));
        ek_kernel_matmul.release(&ob.op);
    }
    free(av);
    free(bv);
    free(yv);
    free(ref);
}

static void test_matmul(void) {
    const int64_t a1[4] = {2, 1, 5, 7}, b1[3] = {3, 7, 6};      /* both broadcast -> [2, 3, 5, 6] */
    const int64_t a2[2] = {4, 5}, b2[3] = {2, 5, 3};            /* A broadcast over B's batch */
    const int64_t a3[4] = {3, 4, 9, 5}, b3[2] = {5, 11};        /* one B: folded into one product */
    const int64_t a4[3] = {2, 13, 300}, b4[3] = {2, 300, 17};   /* k > KC */
    const int64_t a5[2] = {1, 64}, b5[2] = {64, 130};           /* matrix-vector */
    const int64_t a6[4] = {1, 1, 3, 2}, b6[4] = {1, 1, 2, 3};   /* batch of ones */
    for (int t = 1; t <= 3; t += 2)
        for (int c = 0; c < 2; c++) {
            matmul_case(4, a1, 3, b1, c, t);
            matmul_case(2, a2, 3, b2, c, t);
            matmul_case(4, a3, 2, b3, c, t);
            matmul_case(3, a4, 3, b4, c, t);
            matmul_case(2, a5, 2, b5, c, t);
            matmul_case(4, a6, 4, b6, c, t);
        }
}

/* ------------------------------------------------------------------ the SGEMM, per microkernel */

static const char *const gemm_isas[] = {"generic", "avx2", "avx512", "neon"};

/* One ek_gemm against a double reference: B given as B^T or row-major (each with a row stride past
 * its width), A and C with row strides past theirs; C's padding must stay untouched. The buffers are
 * exactly as large as the SGEMM may touch, for ASan. */
static void gemm_case(size_t m, size_t n, size_t k, bool bt, bool with_bias, float lo, float hi) {
    size_t lda = k + rng_state % 3, ldc = n + (rng_state >> 4) % 3, ldb = (bt ? k : n) + (rng_state >> 8) % 2;
    size_t brows = bt ? n : k, bcols = bt ? k : n, packed_floats;
    REQUIRE(ek_gemm_packed_size(k, n, &packed_floats));
    float *a = rand_buf(m ? (m - 1) * lda + k : 1), *b = rand_buf(brows ? (brows - 1) * ldb + bcols : 1);
    float *bias = with_bias ? rand_buf(n) : NULL, *packed = malloc((packed_floats ? packed_floats : 1) * sizeof(float));
    float *c = malloc((m ? (m - 1) * ldc + n : 1) * sizeof(float));
    double *ref = malloc((m && n ? m * n : 1) * sizeof(double));
    for (size_t i = 0; m && i < (m - 1) * ldc + n; i++)
        c[i] = 1234.5f; /* also over C's padding, which must keep it */
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double acc = bias ? bias[j] : 0.0;
            for (size_t p = 0; p < k; p++)
                acc += (double)a[i * lda + p] * (bt ? b[j * ldb + p] : b[p * ldb + j]);
            ref[i * n + j] = clampd(acc, lo, hi);
        }
    if (bt)
        ek_gemm_pack_bt(n, k, b, ldb, packed);
    else
        ek_gemm_pack_b(k, n, b, ldb, packed);
    ek_gemm(m, n, k, a, lda, packed, c, ldc, bias, lo, hi);
    size_t bad = 0, pad_bad = 0;
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < n; j++) {
            double g = c[i * ldc + j], w = ref[i * n + j];
            if (!(fabs(g - w) <= 1e-5 * (double)(k + 10) * (1.0 + fabs(w)))) {
                if (bad++ < 3)
                    printf("  C[%zu][%zu] is %.7g, expected %.7g\n", i, j, g, w);
            }
        }
        for (size_t j = n; i + 1 < m && j < ldc; j++)
            pad_bad += c[i * ldc + j] != 1234.5f;
    }
    if (bad || pad_bad)
        printf("  ek_gemm %s m=%zu n=%zu k=%zu lda=%zu ldb=%zu ldc=%zu bias=%d clamp=[%g, %g]: %zu wrong, %zu padding "
               "changed\n",
               ek_gemm_isa(), m, n, k, lda, ldb, ldc, with_bias, (double)lo, (double)hi, bad, pad_bad);
    CHECK(bad == 0 && pad_bad == 0);
    free(a);
    free(b);
    free(bias);
    free(packed);
    free(c);
    free(ref);
}

/* Edge sizes around the register tile (MR x NR) of the microkernel in use, k past the k slice. */
/* A NaN in A makes NaN in its row of C, full register tiles and edge ones alike, with and without a
 * clamp (as ONNX: a NaN is no number to clamp), never -inf or the clamp's bound. */
static void gemm_nan(void) {
    const size_t m = 2 * ek_gemm_mr() + 1, n = 2 * ek_gemm_nr() + 3, k = 5;
    size_t floats = 0;
    bool sized = ek_gemm_packed_size(k, n, &floats);
    CHECK(sized);
    float *a = calloc(m * k, sizeof *a), *b = calloc(k * n, sizeof *b), *c = calloc(m * n, sizeof *c);
    float *packed = sized ? calloc(floats, sizeof *packed) : NULL;
    CHECK(a && b && c && packed);
    if (!a || !b || !c || !packed)
        goto done;
    for (size_t i = 0; i < k * n; i++)
        b[i] = 0.25f * (float)(i % 7) - 0.5f;
    ek_gemm_pack_b(k, n, b, n, packed);
    const size_t nan_rows[2] = {0, m - 1}; /* in the first full tile, and in the edge tile */
    for (int clamp = 0; clamp < 2; clamp++) {
        for (size_t i = 0; i < m * k; i++)
            a[i] = 1.0f;
        for (int r = 0; r < 2; r++)
            a[nan_rows[r] * k + 2] = NAN;
        ek_gemm(m, n, k, a, k, packed, c, n, NULL, clamp ? 0.0f : -INFINITY, clamp ? 6.0f : INFINITY);
        size_t wrong = 0;
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < n; j++) {
                bool nan_row = i == nan_rows[0] || i == nan_rows[1];
                wrong += nan_row != (c[i * n + j] != c[i * n + j]);
            }
        if (wrong)
            printf("    %s: %zu elements wrong about NaN (clamp %d)\n", ek_gemm_isa(), wrong, clamp);
        CHECK(wrong == 0);
    }
done:
    free(a);
    free(b);
    free(c);
    free(packed);
}

static void test_gemm(void) {
    const size_t mr = ek_gemm_mr(), nr = ek_gemm_nr();
    const size_t ms[] = {1, mr - 1, mr, mr + 1, 2 * mr + 3, 131}, ns[] = {1, nr - 1, nr, nr + 1, 2 * nr + 3, 70};
    const size_t ks[] = {1, 3, 17, 300, 600};
    size_t index = 0;
    for (size_t im = 0; im < sizeof ms / sizeof ms[0]; im++)
        for (size_t in = 0; in < sizeof ns / sizeof ns[0]; in++)
            for (size_t ik = 0; ik < sizeof ks / sizeof ks[0]; ik++, index++) {
                float lo = index % 3 == 0 ? -0.5f : -INFINITY, hi = index % 4 == 1 ? 0.75f : INFINITY;
                gemm_case(ms[im], ns[in], ks[ik], index % 2 == 0, index % 5 != 2, lo, hi);
            }
    gemm_case(5, 9, 0, true, true, -INFINITY, INFINITY); /* no products: the bias */
    gemm_case(5, 9, 0, false, false, 0.0f, 1.0f);
    gemm_case(0, 9, 4, true, true, -INFINITY, INFINITY); /* nothing to do */
    gemm_case(7, 0, 4, false, true, -INFINITY, INFINITY);
    gemm_nan();
}

/* The process default is the best microkernel there is; unknown names are refused. gcc's own CPU
 * detection says what this x86-64 CPU has; aarch64 always has NEON. */
static void test_gemm_choice(void) {
    const char *forced = getenv("EDGEKIT_GEMM_ISA");
    const char *isa = ek_gemm_isa();
    const char *best = NULL;
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    __builtin_cpu_init();
    best = __builtin_cpu_supports("avx512f")                                  ? "avx512"
           : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? "avx2"
                                                                              : "generic";
#elif defined(__aarch64__) && defined(__GNUC__)
    best = "neon";
#endif
    printf("  default SGEMM microkernel: %s (EDGEKIT_GEMM_ISA=%s)\n", isa, forced ? forced : "unset");
    if (best) {
        CHECK(ek_gemm_force_isa(best));
        if (!forced)
            CHECK(strcmp(isa, best) == 0);
    }
    CHECK(ek_gemm_force_isa("generic"));
    CHECK(!ek_gemm_force_isa("bogus"));
    CHECK(!ek_gemm_force_isa(NULL));
    CHECK(strcmp(ek_gemm_isa(), "generic") == 0);
}

/* ------------------------------------------------------------------ pools */

struct pool_case {
    int64_t n, h, w, c, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr;
    int ceil_mode, count_include_pad;
};

static int64_t pool_out(int64_t in, int64_t k, int64_t s, int64_t d, int64_t pb, int64_t pe, int ceil_mode) {
    int64_t num = in + pb + pe - ((k - 1) * d + 1);
    return (ceil_mode ? (num + s - 1) / s : num / s) + 1;
}

static void pool_case(const struct pool_case *pc, bool is_max, int threads, int index) {
    int64_t oh = pool_out(pc->h, pc->kh, pc->sh, pc->dh, pc->pt, pc->pb, pc->ceil_mode);
    int64_t ow = pool_out(pc->w, pc->kw, pc->sw, pc->dw, pc->pl, pc->pr, pc->ceil_mode);
    int64_t xd[4] = {pc->n, pc->h, pc->w, pc->c}, yd[4] = {pc->n, oh, ow, pc->c};
    struct ek_tensor_desc x = mkdesc("x", 4, xd), y = mkdesc("y", 4, yd);
    float *xv = rand_buf(x.count), *yv = malloc(y.count * sizeof(float));
    double *ref = malloc(y.count * sizeof(double));
    for (int64_t n = 0; n < pc->n; n++)
        for (int64_t i = 0; i < oh; i++)
            for (int64_t j = 0; j < ow; j++)
                for (int64_t ch = 0; ch < pc->c; ch++) {
                    double acc = is_max ? -INFINITY : 0.0;
                    int64_t inside = 0, padded = 0;
                    for (int64_t a = 0; a < pc->kh; a++)
                        for (int64_t b = 0; b < pc->kw; b++) {
                            int64_t ih = i * pc->sh - pc->pt + a * pc->dh, iw = j * pc->sw - pc->pl + b * pc->dw;
                            if (ih >= -pc->pt && ih < pc->h + pc->pb && iw >= -pc->pl && iw < pc->w + pc->pr)
                                padded++;
                            if (ih < 0 || ih >= pc->h || iw < 0 || iw >= pc->w)
                                continue;
                            double v = xv[((n * pc->h + ih) * pc->w + iw) * pc->c + ch];
                            inside++;
                            acc = is_max ? (v > acc ? v : acc) : acc + v;
                        }
                    if (!is_max)
                        acc /= (double)(pc->count_include_pad ? padded : inside);
                    ref[((n * oh + i) * ow + j) * pc->c + ch] = acc;
                }
    struct opb ob;
    opb_init(&ob, is_max ? EK_OP_MAX_POOL : EK_OP_AVERAGE_POOL, 1);
    ob.in[0] = &x;
    ob.out[0] = &y;
    int64_t kernel[2] = {pc->kh, pc->kw}, strides[2] = {pc->sh, pc->sw}, dil[2] = {pc->dh, pc->dw};
    int64_t pads[4] = {pc->pt, pc->pl, pc->pb, pc->pr};
    opb_ints(&ob, "kernel", 2, kernel);
    opb_ints(&ob, "strides", 2, strides);
    opb_ints(&ob, "pads", 4, pads);
    if (is_max)
        opb_ints(&ob, "dilations", 2, dil);
    else
        opb_int(&ob, "count_include_pad", pc->count_include_pad);
    const struct ek_kernel *k = is_max ? &ek_kernel_max_pool : &ek_kernel_average_pool;
    if (CHECK_OK(k->prepare(&ob.op))) {
        const void *ins[1] = {xv};
        CHECK_OK(run_op(k, &ob.op, ins, yv, y.count, threads));
        char what[64];
        snprintf(what, sizeof what, "%s case %d, %d threads", is_max ? "max_pool" : "average_pool", index, threads);
        CHECK(compare(what, yv, ref, y.count, (size_t)(pc->kh * pc->kw)));
        k->release(&ob.op);
    } else {
        printf("  pool case %d\n", index);
    }
    free(xv);
    free(yv);
    free(ref);
}

static const struct pool_case max_cases[] = {
    /* n h  w  c  kh kw sh sw dh dw pt pl pb pr ceil cip */
    {1, 8, 8, 16, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0},
    {2, 9, 10, 5, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 0},  /* ceil mode */
    {1, 10, 7, 3, 3, 2, 3, 2, 1, 1, 0, 0, 0, 0, 1, 0},  /* ceil: a partial last window */
    {1, 11, 12, 4, 3, 3, 1, 2, 2, 2, 2, 2, 2, 2, 0, 0}, /* dilation */
    {1, 5, 5, 2, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0},   /* same padding */
};

static const struct pool_case avg_cases[] = {
    /* n h  w  c  kh kw sh sw dh dw pt pl pb pr ceil cip */
    {1, 8, 8, 16, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0},
    {2, 9, 10, 5, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 0}, /* ceil mode, pads excluded */
    {2, 9, 10, 5, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1}, /* ceil mode, pads counted */
    {1, 10, 7, 3, 3, 2, 3, 2, 1, 1, 0, 0, 0, 0, 1, 1}, /* ceil overhang is not padding */
    {1, 6, 7, 9, 3, 3, 1, 1, 1, 1, 1, 0, 2, 1, 0, 1},  /* asymmetric pads counted */
    {3, 7, 7, 70, 7, 7, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0}, /* a global window */
};

static void test_pools(void) {
    for (int t = 1; t <= 3; t += 2) {
        for (int i = 0; i < (int)(sizeof max_cases / sizeof max_cases[0]); i++)
            pool_case(&max_cases[i], true, t, i);
        for (int i = 0; i < (int)(sizeof avg_cases / sizeof avg_cases[0]); i++)
            pool_case(&avg_cases[i], false, t, i);
    }
}

static void test_global_average_pool(void) {
    const int64_t shapes[3][4] = {{2, 5, 6, 7}, {1, 3, 3, 200}, {3, 1, 1, 1}};
    for (int s = 0; s < 3; s++)
        for (int t = 1; t <= 3; t += 2) {
            const int64_t *xd = shapes[s];
            int64_t yd[4] = {xd[0], 1, 1, xd[3]};
            struct ek_tensor_desc x = mkdesc("x", 4, xd), y = mkdesc("y", 4, yd);
            float *xv = rand_buf(x.count), *yv = malloc(y.count * sizeof(float));
            double *ref = calloc(y.count, sizeof(double));
            size_t pix = (size_t)(xd[1] * xd[2]), c = (size_t)xd[3];
            for (size_t n = 0; n < (size_t)xd[0]; n++)
                for (size_t i = 0; i < pix; i++)
                    for (size_t ch = 0; ch < c; ch++)
                        ref[n * c + ch] += xv[(n * pix + i) * c + ch] / (double)pix;
            struct opb ob;
            opb_init(&ob, EK_OP_GLOBAL_AVERAGE_POOL, 1);
            ob.in[0] = &x;
            ob.out[0] = &y;
            if (CHECK_OK(ek_kernel_global_average_pool.prepare(&ob.op))) {
                const void *ins[1] = {xv};
                CHECK_OK(run_op(&ek_kernel_global_average_pool, &ob.op, ins, yv, y.count, t));
                CHECK(compare("global_average_pool", yv, ref, y.count, pix));
                ek_kernel_global_average_pool.release(&ob.op);
            }
            free(xv);
            free(yv);
            free(ref);
        }
}

/* ------------------------------------------------------------------ RESIZE */

/* ONNX Resize's source coordinate, written from the operator specification. */
static float ref_coord(int coord, int64_t o, float scale, int64_t in, int64_t out) {
    switch (coord) {
    case 0:
        return ((float)o + 0.5f) / scale - 0.5f;
    case 1:
        return (float)o / scale;
    case 2:
        return out == 1 ? 0.0f : (float)o * (float)(in - 1) / (float)(out - 1);
    default:
        return out > 1 ? ((float)o + 0.5f) / scale - 0.5f : 0.0f;
    }
}

static int64_t ref_nearest(int mode, float v, int64_t in) {
    double r;
    double f = floor(v);
    if (mode == 0)
        r = (v - f == 0.5) ? f : floor((double)v + 0.5);
    else if (mode == 1)
        r = (v - f == 0.5) ? f + 1 : floor((double)v + 0.5);
    else if (mode == 2)
        r = f;
    else
        r = ceil(v);
    if (r < 0)
        r = 0;
    if (r > (double)(in - 1))
        r = (double)(in - 1);
    return (int64_t)r;
}

static void resize_case(const int64_t *xd, int64_t oh, int64_t ow, float sh, float sw, int mode, int coord,
                        int nearest, int threads, const float *xin, const double *expected) {
    int64_t yd[4] = {xd[0], oh, ow, xd[3]};
    struct ek_tensor_desc x = mkdesc("x", 4, xd), y = mkdesc("y", 4, yd);
    float *xv = rand_buf(x.count), *yv = malloc(y.count * sizeof(float));
    double *ref = malloc(y.count * sizeof(double));
    if (xin)
        memcpy(xv, xin, x.count * sizeof(float));
    int64_t h = xd[1], w = xd[2], c = xd[3];
    for (int64_t n = 0; n < xd[0]; n++)
        for (int64_t i = 0; i < oh; i++)
            for (int64_t j = 0; j < ow; j++)
                for (int64_t ch = 0; ch < c; ch++) {
                    float cy = ref_coord(coord, i, sh, h, oh), cx = ref_coord(coord, j, sw, w, ow);
                    double v;
                    if (mode == 0) {
                        v = xv[((n * h + ref_nearest(nearest, cy, h)) * w + ref_nearest(nearest, cx, w)) * c + ch];
                    } else {
                        double yy = cy < 0 ? 0 : cy > h - 1 ? (double)(h - 1) : cy;
                        double xx = cx < 0 ? 0 : cx > w - 1 ? (double)(w - 1) : cx;
                        int64_t y0 = (int64_t)yy, x0 = (int64_t)xx;
                        int64_t y1 = y0 + 1 < h ? y0 + 1 : y0, x1 = x0 + 1 < w ? x0 + 1 : x0;
                        double fy = yy - (double)y0, fx = xx - (double)x0;
#define XV(a, b) ((double)xv[((n * h + (a)) * w + (b)) * c + ch])
                        v = (1 - fy) * ((1 - fx) * XV(y0, x0) + fx * XV(y0, x1)) +
                            fy * ((1 - fx) * XV(y1, x0) + fx * XV(y1, x1));
#undef XV
                    }
                    ref[((n * oh + i) * ow + j) * c + ch] = expected ? expected[((n * oh + i) * ow + j) * c + ch] : v;
                }
    struct opb ob;
    opb_init(&ob, EK_OP_RESIZE, 1);
    ob.in[0] = &x;
    ob.out[0] = &y;
    opb_int(&ob, "mode", mode);
    opb_int(&ob, "coordinate", coord);
    opb_int(&ob, "nearest", nearest);
    opb_floats2(&ob, "scales", sh, sw);
    if (CHECK_OK(ek_kernel_resize.prepare(&ob.op))) {
        const void *ins[1] = {xv};
        CHECK_OK(run_op(&ek_kernel_resize, &ob.op, ins, yv, y.count, threads));
        char what[96];
        snprintf(what, sizeof what, "resize %lldx%lld -> %lldx%lld mode %d coord %d nearest %d", (long long)h,
                 (long long)w, (long long)oh, (long long)ow, mode, coord, nearest);
        CHECK(compare(what, yv, ref, y.count, 4));
        ek_kernel_resize.release(&ob.op);
    }
    free(xv);
    free(yv);
    free(ref);
}

static void test_resize(void) {
    const int64_t xd[4] = {2, 5, 4, 3};
    for (int t = 1; t <= 3; t += 2)
        for (int coord = 0; coord < 4; coord++) {
            for (int nearest = 0; nearest < 4; nearest++) {
                resize_case(xd, 10, 8, 2.0f, 2.0f, 0, coord, nearest, t, NULL, NULL);
                resize_case(xd, 8, 6, 1.6f, 1.5f, 0, coord, nearest, t, NULL, NULL);
                resize_case(xd, 2, 3, 0.5f, 0.75f, 0, coord, nearest, t, NULL, NULL);
            }
            resize_case(xd, 10, 8, 2.0f, 2.0f, 1, coord, 0, t, NULL, NULL);
            resize_case(xd, 8, 6, 1.6f, 1.5f, 1, coord, 0, t, NULL, NULL);
            resize_case(xd, 2, 3, 0.5f, 0.75f, 1, coord, 0, t, NULL, NULL);
            resize_case(xd, 1, 1, 0.25f, 0.25f, 1, coord, 0, t, NULL, NULL);
        }
    /* Known values: a 1 x 2 row [0, 1] doubled in width. */
    const int64_t row[4] = {1, 1, 2, 1};
    const float in[2] = {0.0f, 1.0f};
    const double nearest_asym[4] = {0, 0, 1, 1}, linear_half[4] = {0, 0.25, 0.75, 1};
    const double linear_asym[4] = {0, 0.5, 1, 1}, nearest_half_ceil[4] = {0, 0, 1, 1};
    const double linear_align3[3] = {0, 0.5, 1};
    resize_case(row, 1, 4, 1.0f, 2.0f, 0, 1, 0, 1, in, nearest_asym);
    resize_case(row, 1, 4, 1.0f, 2.0f, 1, 0, 0, 1, in, linear_half);
    resize_case(row, 1, 4, 1.0f, 2.0f, 1, 1, 0, 1, in, linear_asym);
    resize_case(row, 1, 4, 1.0f, 2.0f, 0, 0, 1, 1, in, nearest_half_ceil);
    resize_case(row, 1, 3, 1.0f, 1.5f, 1, 2, 0, 1, in, linear_align3);
    /* half_pixel 2x: source 0.25 and 0.75 ... 3 elements [0,1,2] at 3x: x=(o+.5)/3-.5 */
    const int64_t row3[4] = {1, 1, 3, 1};
    const float in3[3] = {0.0f, 1.0f, 2.0f};
    /* o: 0..8 -> -1/3, 0, 1/3, 2/3, 1, 4/3, 5/3, 2, 7/3; round_prefer_floor -> 0 0 0 1 1 1 2 2 2 */
    const double nn3[9] = {0, 0, 0, 1, 1, 1, 2, 2, 2};
    resize_case(row3, 1, 9, 1.0f, 3.0f, 0, 0, 0, 1, in3, nn3);
}

/* ------------------------------------------------------------------ Winograd F(4x4, 3x3) */

static void conv_op(struct opb *ob, enum ek_op_type type, const struct ek_tensor_desc *x, const struct ek_tensor_desc *w,
                    const struct ek_tensor_desc *b, const struct ek_tensor_desc *y);

static int irand(int lo, int hi) { /* [lo, hi] */
    rng_state = rng_state * 1664525u + 1013904223u;
    return lo + (int)((rng_state >> 8) % (uint32_t)(hi - lo + 1));
}

/* A random 3x3 stride-1 CONV run with algorithm "winograd" and without (im2col): equal within
 * 1e-4 * max(1, max|im2col|), the scale taken before the activation (a clamp hides the magnitude of
 * the sums the transforms work on). */
static void winograd_case(int index) {
    int64_t pads[4] = {irand(0, 2), irand(0, 2), irand(0, 2), irand(0, 2)}, ones[2] = {1, 1};
    int64_t n = irand(1, 3), c = irand(1, 70), m = irand(1, 70);
    int64_t hmin = 3 - pads[0] - pads[2] > 1 ? 3 - pads[0] - pads[2] : 1;
    int64_t wmin = 3 - pads[1] - pads[3] > 1 ? 3 - pads[1] - pads[3] : 1;
    int64_t h = irand((int)hmin, 20), w = irand((int)wmin, 20);
    int64_t oh = h + pads[0] + pads[2] - 2, ow = w + pads[1] + pads[3] - 2;
    int bias = irand(0, 1), act = irand(0, 2), threads = irand(1, 3);
    float lo = act == 1 ? 0.0f : act == 2 ? -0.3f : -INFINITY, hi = act == 2 ? 0.4f : INFINITY;
    int64_t xd[4] = {n, h, w, c}, wd[4] = {m, 3, 3, c}, bd[1] = {m}, yd[4] = {n, oh, ow, m};
    struct ek_tensor_desc x = mkdesc("x", 4, xd), wt = mkdesc("w", 4, wd), b = mkdesc("b", 1, bd), y = mkdesc("y", 4, yd);
    float *xv = rand_buf(x.count), *wv = rand_buf(wt.count), *bv = rand_buf(b.count);
    float *ys[3];
    for (int i = 0; i < 3; i++)
        ys[i] = malloc(y.count * sizeof(float));
    wt.storage = EK_STORAGE_CONSTANT;
    wt.constant = wv;
    const void *ins[3] = {xv, wv, bias ? bv : NULL};
    bool ok = true;
    /* pass 0: im2col without activation (the scale), 1: im2col, 2: Winograd */
    for (int pass = 0; pass < 3 && ok; pass++) {
        struct opb ob;
        conv_op(&ob, EK_OP_CONV, &x, &wt, bias ? &b : NULL, &y);
        opb_ints(&ob, "pads", 4, pads);
        opb_ints(&ob, "strides", 2, ones);
        if (act && pass)
            opb_float(&ob, "act_min", lo);
        if (act == 2 && pass)
            opb_float(&ob, "act_max", hi);
        if (pass == 2)
            opb_string(&ob, "algorithm", "winograd");
        ok = CHECK_OK(ek_kernel_conv.prepare(&ob.op));
        if (ok) {
            ok = CHECK_OK(run_op(&ek_kernel_conv, &ob.op, ins, ys[pass], y.count, threads));
            ek_kernel_conv.release(&ob.op);
        }
    }
    if (ok) {
        double maxref = 1.0, maxdiff = 0.0;
        for (size_t i = 0; i < y.count; i++)
            maxref = fabs(ys[0][i]) > maxref ? fabs(ys[0][i]) : maxref;
        for (size_t i = 0; i < y.count; i++) {
            double d = fabs((double)ys[1][i] - ys[2][i]);
            maxdiff = d > maxdiff || d != d ? d : maxdiff;
        }
        if (!(maxdiff <= 1e-4 * maxref))
            printf("  winograd case %d: n %lld h %lld w %lld c %lld m %lld pads %lld,%lld,%lld,%lld bias %d act %d "
                   "threads %d: max diff %g (max |ref| %g)\n",
                   index, (long long)n, (long long)h, (long long)w, (long long)c, (long long)m, (long long)pads[0],
                   (long long)pads[1], (long long)pads[2], (long long)pads[3], bias, act, threads, maxdiff, maxref);
        CHECK(maxdiff <= 1e-4 * maxref);
    }
    free(xv);
    free(wv);
    free(bv);
    for (int i = 0; i < 3; i++)
        free(ys[i]);
}

static void test_winograd(void) {
    for (int i = 0; i < 80; i++)
        winograd_case(i);
}

/* ek_wino_run's residual z (the fused Conv + Add the CONV op will take as a 4th input): Y = clamp(conv
 * + bias + z), against im2col's conv + bias, plus z, clamped here. */
static void test_winograd_residual(void) {
    const int64_t xd[4] = {2, 11, 9, 13}, wd[4] = {21, 3, 3, 13}, bd[1] = {21}, yd[4] = {2, 10, 9, 21};
    int64_t pads[4] = {1, 0, 0, 2};
    struct ek_tensor_desc x = mkdesc("x", 4, xd), w = mkdesc("w", 4, wd), b = mkdesc("b", 1, bd), y = mkdesc("y", 4, yd);
    float *xv = rand_buf(x.count), *wv = rand_buf(w.count), *bv = rand_buf(b.count), *zv = rand_buf(y.count);
    float *ref = malloc(y.count * sizeof(float)), *got = malloc(y.count * sizeof(float));
    w.storage = EK_STORAGE_CONSTANT;
    w.constant = wv;
    struct opb ob;
    conv_op(&ob, EK_OP_CONV, &x, &w, &b, &y);
    opb_ints(&ob, "pads", 4, pads);
    const void *ins[3] = {xv, wv, bv};
    if (CHECK_OK(ek_kernel_conv.prepare(&ob.op))) {
        CHECK_OK(run_op(&ek_kernel_conv, &ob.op, ins, ref, y.count, 2));
        ek_kernel_conv.release(&ob.op);
    }
    struct ek_wino_shape shape = {2, 11, 9, 13, 10, 9, 21, 1, 0};
    struct ek_wino *wp = NULL;
    size_t scratch = 0;
    const float lo = -2.0f, hi = 3.0f;
    if (CHECK_OK(ek_wino_prepare(&ob.op, &shape, wv, lo, hi, &wp, &scratch))) {
        struct ek_exec ex;
        memset(&ex, 0, sizeof ex);
        ex.threads = 2;
        for (int i = 0; i < 2; i++)
            ex.scratch[i] = aligned_alloc(64, (scratch + 63) / 64 * 64);
        ek_wino_run(wp, xv, bv, zv, got, &ex);
        for (int i = 0; i < 2; i++)
            free(ex.scratch[i]);
        ek_wino_free(wp);
        double maxdiff = 0, maxref = 1;
        for (size_t i = 0; i < y.count; i++) {
            double want = clampd((double)ref[i] + zv[i], lo, hi);
            maxref = fabs((double)ref[i] + zv[i]) > maxref ? fabs((double)ref[i] + zv[i]) : maxref;
            double d = fabs(want - got[i]);
            maxdiff = d > maxdiff || d != d ? d : maxdiff;
        }
        printf("  residual: max diff %g (max |ref| %g)\n", maxdiff, maxref);
        CHECK(maxdiff <= 1e-4 * maxref);
    }
    free(xv);
    free(wv);
    free(bv);
    free(zv);
    free(ref);
    free(got);
}

/* ------------------------------------------------------------------ prepare() refusals */

static void expect_invalid(const struct ek_kernel *k, struct opb *ob, const char *what) {
    ek_status_t st = k->prepare(&ob->op);
    if (st != EK_ERR_MODEL_INVALID) {
        printf("  %s: prepare returned %s\n", what, ek_status_name(st));
        CHECK(st == EK_ERR_MODEL_INVALID);
        if (st == EK_OK && k->release)
            k->release(&ob->op);
        return;
    }
    printf("  %s -> %s\n", what, ek_last_error());
    CHECK(strstr(ek_last_error(), "node_under_test") != NULL);
    CHECK(ob->op.params == NULL);
}

static void conv_op(struct opb *ob, enum ek_op_type type, const struct ek_tensor_desc *x, const struct ek_tensor_desc *w,
                    const struct ek_tensor_desc *b, const struct ek_tensor_desc *y) {
    opb_init(ob, type, b ? 3 : 2);
    ob->in[0] = x;
    ob->in[1] = w;
    ob->in[2] = b;
    ob->out[0] = y;
}

static void test_conv_rejects(void) {
    const int64_t xd[4] = {1, 8, 8, 4}, wd[4] = {6, 3, 3, 4}, yd[4] = {1, 6, 6, 6}, bd[1] = {6};
    struct ek_tensor_desc x = mkdesc("x", 4, xd), w = mkdesc("w", 4, wd), y = mkdesc("y", 4, yd), b = mkdesc("b", 1, bd);
    struct opb ob;
    conv_op(&ob, EK_OP_CONV, &x, &w, &b, &y);
    if (CHECK_OK(ek_kernel_conv.prepare(&ob.op))) /* the baseline is valid */
        ek_kernel_conv.release(&ob.op);

    const int64_t y_bad[4] = {1, 7, 6, 6}, w_bad[4] = {6, 3, 3, 3}, b_bad[1] = {5};
    struct ek_tensor_desc yb = mkdesc("y", 4, y_bad), wb = mkdesc("w", 4, w_bad), bb = mkdesc("b", 1, b_bad);
    conv_op(&ob, EK_OP_CONV, &x, &w, &b, &yb);
    expect_invalid(&ek_kernel_conv, &ob, "wrong output shape");
    conv_op(&ob, EK_OP_CONV, &x, &wb, &b, &y);
    expect_invalid(&ek_kernel_conv, &ob, "weights' channels");
    conv_op(&ob, EK_OP_CONV, &x, &w, &bb, &y);
    expect_invalid(&ek_kernel_conv, &ob, "bias size");

    struct ek_tensor_desc xi = x;
    xi.dtype = EK_DTYPE_INT8;
    xi.nbytes = xi.count;
    conv_op(&ob, EK_OP_CONV, &xi, &w, &b, &y);
    expect_invalid(&ek_kernel_conv, &ob, "int8 input");
    struct ek_tensor_desc x3 = mkdesc("x", 3, xd);
    conv_op(&ob, EK_OP_CONV, &x3, &w, &b, &y);
    expect_invalid(&ek_kernel_conv, &ob, "rank 3 input");
    struct ek_tensor_desc xc = x;
    xc.count = 7;
    conv_op(&ob, EK_OP_CONV, &xc, &w, &b, &y);
    expect_invalid(&ek_kernel_conv, &ob, "count disagreeing with dims");
    conv_op(&ob, EK_OP_CONV, &x, &w, &b, &y);
    ob.in[0] = NULL;
    expect_invalid(&ek_kernel_conv, &ob, "missing input");

    /* algorithm: an unknown value, a non-string, Winograd where it does not apply */
    struct ek_tensor_desc wc = w;
    wc.storage = EK_STORAGE_CONSTANT;
    wc.constant = calloc(w.count, sizeof(float));
    conv_op(&ob, EK_OP_CONV, &x, &wc, &b, &y);
    opb_string(&ob, "algorithm", "winograd");
    if (CHECK_OK(ek_kernel_conv.prepare(&ob.op))) /* qualifies */
        ek_kernel_conv.release(&ob.op);
    conv_op(&ob, EK_OP_CONV, &x, &wc, &b, &y);
    opb_string(&ob, "algorithm", "fft");
    expect_invalid(&ek_kernel_conv, &ob, "unknown algorithm");
    CHECK(strstr(ek_last_error(), "fft") != NULL);
    conv_op(&ob, EK_OP_CONV, &x, &wc, &b, &y);
    opb_int(&ob, "algorithm", 1);
    expect_invalid(&ek_kernel_conv, &ob, "algorithm not a string");
    conv_op(&ob, EK_OP_CONV, &x, &w, &b, &y);
    opb_string(&ob, "algorithm", "winograd");
    expect_invalid(&ek_kernel_conv, &ob, "winograd on arena weights");
    const int64_t two[2] = {2, 2}, y2d[4] = {1, 3, 3, 6};
    struct ek_tensor_desc y2 = mkdesc("y", 4, y2d);
    conv_op(&ob, EK_OP_CONV, &x, &wc, &b, &y2);
    opb_ints(&ob, "strides", 2, two);
    opb_string(&ob, "algorithm", "winograd");
    expect_invalid(&ek_kernel_conv, &ob, "winograd on a stride-2 conv");
    CHECK(strstr(ek_last_error(), "stride") != NULL);
    free((void *)wc.constant);

    const int64_t zero_stride[2] = {0, 1}, neg_pads[4] = {-1, 0, 1, 0}, huge[3] = {(int64_t)1 << 40, 1, 1};
    conv_op(&ob, EK_OP_CONV, &x, &w, &b, &y);
    opb_ints(&ob, "strides", 2, zero_stride);
    expect_invalid(&ek_kernel_conv, &ob, "stride 0");
    conv_op(&ob, EK_OP_CONV, &x, &w, &b, &y);
    opb_ints(&ob, "pads", 4, neg_pads);
    expect_invalid(&ek_kernel_conv, &ob, "negative pad");
    conv_op(&ob, EK_OP_CONV, &x, &w, &b, &y);
    opb_ints(&ob, "dilations", 2, huge);
    expect_invalid(&ek_kernel_conv, &ob, "huge dilation");
    conv_op(&ob, EK_OP_CONV, &x, &w, &b, &y);
    opb_ints(&ob, "strides", 3, huge);
    expect_invalid(&ek_kernel_conv, &ob, "strides of 3 values");
    conv_op(&ob, EK_OP_CONV, &x, &w, &b, &y);
    opb_int(&ob, "group", 3);
    expect_invalid(&ek_kernel_conv, &ob, "group not dividing C");
    conv_op(&ob, EK_OP_CONV, &x, &w, &b, &y);
    opb_int(&ob, "group", 0);
    expect_invalid(&ek_kernel_conv, &ob, "group 0");
    conv_op(&ob, EK_OP_CONV, &x, &w, &b, &y);
    opb_float(&ob, "act_min", 1.0f);
    opb_float(&ob, "act_max", 0.0f);
    expect_invalid(&ek_kernel_conv, &ob, "act_min > act_max");
    conv_op(&ob, EK_OP_CONV, &x, &w, &b, &y);
    opb_int(&ob, "pads", 1);
    expect_invalid(&ek_kernel_conv, &ob, "pads as INT");

    /* the residual input Z: Y's exact shape, float32; CONV_TRANSPOSE takes none */
    const int64_t z_bad[4] = {1, 6, 6, 1};
    struct ek_tensor_desc z = mkdesc("z", 4, yd), zb = mkdesc("z", 4, z_bad), zi = z;
    zi.dtype = EK_DTYPE_INT8;
    zi.nbytes = zi.count;
    conv_op(&ob, EK_OP_CONV, &x, &w, &b, &y);
    ob.op.n_in = 4;
    ob.in[3] = &z;
    if (CHECK_OK(ek_kernel_conv.prepare(&ob.op))) /* valid */
        ek_kernel_conv.release(&ob.op);
    ob.in[3] = &zb;
    expect_invalid(&ek_kernel_conv, &ob, "Z broadcast over channels");
    ob.in[3] = &zi;
    expect_invalid(&ek_kernel_conv, &ob, "int8 Z");
    struct ek_tensor_desc z3 = mkdesc("z", 3, yd + 1);
    ob.in[3] = &z3;
    expect_invalid(&ek_kernel_conv, &ob, "rank 3 Z");
    conv_op(&ob, EK_OP_CONV_TRANSPOSE, &x, &w, &b, &y);
    ob.op.n_in = 4;
    ob.in[3] = &z;
    expect_invalid(&ek_kernel_conv_transpose, &ob, "CONV_TRANSPOSE with Z");

    /* a kernel larger than the padded input */
    const int64_t wbig[4] = {6, 9, 3, 4};
    struct ek_tensor_desc wg = mkdesc("w", 4, wbig);
    conv_op(&ob, EK_OP_CONV, &x, &wg, &b, &y);
    expect_invalid(&ek_kernel_conv, &ob, "kernel larger than input");

    /* CONV_TRANSPOSE: a valid one, then adjustments >= stride and pads eating the output */
    const int64_t tyd[4] = {1, 17, 17, 6};
    struct ek_tensor_desc ty = mkdesc("y", 4, tyd);
    const int64_t s2[2] = {2, 2}, adj1[2] = {0, 0}, adj2[2] = {2, 0}, pads_big[4] = {9, 0, 9, 0};
    conv_op(&ob, EK_OP_CONV_TRANSPOSE, &x, &w, &b, &ty);
    opb_ints(&ob, "strides", 2, s2);
    opb_ints(&ob, "adjustments", 2, adj1);
    if (CHECK_OK(ek_kernel_conv_transpose.prepare(&ob.op)))
        ek_kernel_conv_transpose.release(&ob.op);
    conv_op(&ob, EK_OP_CONV_TRANSPOSE, &x, &w, &b, &ty);
    opb_ints(&ob, "strides", 2, s2);
    opb_ints(&ob, "adjustments", 2, adj2);
    expect_invalid(&ek_kernel_conv_transpose, &ob, "adjustment >= stride");
    conv_op(&ob, EK_OP_CONV_TRANSPOSE, &x, &w, &b, &ty);
    opb_ints(&ob, "strides", 2, s2);
    opb_ints(&ob, "pads", 4, pads_big);
    expect_invalid(&ek_kernel_conv_transpose, &ob, "pads leaving no output");
}

static void test_matrix_rejects(void) {
    const int64_t xd[2] = {3, 8}, wd[2] = {5, 8}, yd[2] = {3, 5}, wbad[2] = {5, 7}, ybad[2] = {3, 4}, bbad[1] = {4};
    struct ek_tensor_desc x = mkdesc("x", 2, xd), w = mkdesc("w", 2, wd), y = mkdesc("y", 2, yd);
    struct ek_tensor_desc wb = mkdesc("w", 2, wbad), yb = mkdesc("y", 2, ybad), bb = mkdesc("b", 1, bbad);
    struct opb ob;
    opb_init(&ob, EK_OP_FULLY_CONNECTED, 2);
    ob.in[0] = &x, ob.in[1] = &wb, ob.out[0] = &y;
    expect_invalid(&ek_kernel_fully_connected, &ob, "fc: K mismatch");
    opb_init(&ob, EK_OP_FULLY_CONNECTED, 2);
    ob.in[0] = &x, ob.in[1] = &w, ob.out[0] = &yb;
    expect_invalid(&ek_kernel_fully_connected, &ob, "fc: wrong Y");
    opb_init(&ob, EK_OP_FULLY_CONNECTED, 3);
    ob.in[0] = &x, ob.in[1] = &w, ob.in[2] = &bb, ob.out[0] = &y;
    expect_invalid(&ek_kernel_fully_connected, &ob, "fc: bias size");

    const int64_t ad[3] = {2, 3, 8}, bd[3] = {3, 8, 5}, yd3[3] = {2, 3, 5}, bd2[2] = {7, 5}, yd4[3] = {3, 3, 5};
    const int64_t bd1[1] = {8};
    struct ek_tensor_desc a = mkdesc("a", 3, ad), b = mkdesc("b", 3, bd), y3 = mkdesc("y", 3, yd3);
    struct ek_tensor_desc b2 = mkdesc("b", 2, bd2), y4 = mkdesc("y", 3, yd4), b1 = mkdesc("b", 1, bd1);
    opb_init(&ob, EK_OP_MATMUL, 2);
    ob.in[0] = &a, ob.in[1] = &b, ob.out[0] = &y3;
    expect_invalid(&ek_kernel_matmul, &ob, "matmul: batch 2 vs 3");
    opb_init(&ob, EK_OP_MATMUL, 2);
    ob.in[0] = &a, ob.in[1] = &b2, ob.out[0] = &y3;
    expect_invalid(&ek_kernel_matmul, &ob, "matmul: K mismatch");
    opb_init(&ob, EK_OP_MATMUL, 2);
    const int64_t bd5[2] = {8, 5};
    struct ek_tensor_desc b5 = mkdesc("b", 2, bd5);
    ob.in[0] = &a, ob.in[1] = &b5, ob.out[0] = &y4;
    expect_invalid(&ek_kernel_matmul, &ob, "matmul: wrong batch in Y");
    opb_init(&ob, EK_OP_MATMUL, 2);
    ob.in[0] = &a, ob.in[1] = &b1, ob.out[0] = &y3;
    expect_invalid(&ek_kernel_matmul, &ob, "matmul: rank 1");
    opb_init(&ob, EK_OP_MATMUL, 2);
    ob.in[0] = &a, ob.in[1] = &b5, ob.out[0] = &y3;
    if (CHECK_OK(ek_kernel_matmul.prepare(&ob.op)))
        ek_kernel_matmul.release(&ob.op);
}

static void pool_op(struct opb *ob, enum ek_op_type type, const struct ek_tensor_desc *x,
                    const struct ek_tensor_desc *y, const int64_t *kernel, const int64_t *strides, const int64_t *pads) {
    opb_init(ob, type, 1);
    ob->in[0] = x;
    ob->out[0] = y;
    if (kernel)
        opb_ints(ob, "kernel", 2, kernel);
    if (strides)
        opb_ints(ob, "strides", 2, strides);
    if (pads)
        opb_ints(ob, "pads", 4, pads);
}

static void test_pool_rejects(void) {
    const int64_t xd[4] = {1, 5, 5, 2}, k2[2] = {2, 2}, s2[2] = {2, 2}, p0[4] = {0, 0, 0, 0};
    const int64_t y2[4] = {1, 2, 2, 2}, y3[4] = {1, 3, 3, 2}, y4[4] = {1, 4, 4, 2}, y1[4] = {1, 1, 1, 2};
    struct ek_tensor_desc x = mkdesc("x", 4, xd), yf = mkdesc("y", 4, y2), yc = mkdesc("y", 4, y3);
    struct ek_tensor_desc yover = mkdesc("y", 4, y4), yone = mkdesc("y", 4, y1);
    struct opb ob;
    /* floor (2) and ceil (3) are both fine; 4 is not */
    pool_op(&ob, EK_OP_MAX_POOL, &x, &yf, k2, s2, p0);
    if (CHECK_OK(ek_kernel_max_pool.prepare(&ob.op)))
        ek_kernel_max_pool.release(&ob.op);
    pool_op(&ob, EK_OP_MAX_POOL, &x, &yc, k2, s2, p0);
    if (CHECK_OK(ek_kernel_max_pool.prepare(&ob.op)))
        ek_kernel_max_pool.release(&ob.op);
    pool_op(&ob, EK_OP_MAX_POOL, &x, &yover, k2, s2, p0);
    expect_invalid(&ek_kernel_max_pool, &ob, "pool: OH past ceil");
    pool_op(&ob, EK_OP_AVERAGE_POOL, &x, &yf, NULL, s2, p0);
    expect_invalid(&ek_kernel_average_pool, &ob, "pool: no kernel");
    /* a window entirely in the padding: pads 2 with a 2-tap kernel, stride 3 */
    const int64_t p2[4] = {2, 2, 0, 0}, s3[2] = {3, 3};
    const int64_t yp[4] = {1, 2, 2, 2};
    struct ek_tensor_desc ypad = mkdesc("y", 4, yp);
    pool_op(&ob, EK_OP_AVERAGE_POOL, &x, &ypad, k2, s3, p2);
    expect_invalid(&ek_kernel_average_pool, &ob, "pool: all-padding window");
    /* ceil mode whose last window starts past the input: H=5, k=1, s=4 -> floor 2, ceil 2 */
    const int64_t k1[2] = {1, 1}, s4[2] = {4, 4};
    pool_op(&ob, EK_OP_MAX_POOL, &x, &yc, k1, s4, p0);
    expect_invalid(&ek_kernel_max_pool, &ob, "pool: OH 3 with stride 4");
    pool_op(&ob, EK_OP_AVERAGE_POOL, &x, &yone, k2, s2, p0);
    expect_invalid(&ek_kernel_average_pool, &ob, "pool: OH below floor");
    pool_op(&ob, EK_OP_AVERAGE_POOL, &x, &yf, k2, s2, p0);
    opb_int(&ob, "count_include_pad", 2);
    expect_invalid(&ek_kernel_average_pool, &ob, "pool: count_include_pad 2");
    const int64_t k0[2] = {0, 2};
    pool_op(&ob, EK_OP_MAX_POOL, &x, &yf, k0, s2, p0);
    expect_invalid(&ek_kernel_max_pool, &ob, "pool: kernel 0");

    const int64_t gbad[4] = {1, 1, 2, 2};
    struct ek_tensor_desc yg = mkdesc("y", 4, gbad);
    opb_init(&ob, EK_OP_GLOBAL_AVERAGE_POOL, 1);
    ob.in[0] = &x, ob.out[0] = &yg;
    expect_invalid(&ek_kernel_global_average_pool, &ob, "global pool: Y not 1x1");

    /* RESIZE */
    const int64_t ry[4] = {1, 10, 10, 2}, rbad[4] = {1, 10, 10, 3};
    struct ek_tensor_desc yr = mkdesc("y", 4, ry), yrb = mkdesc("y", 4, rbad);
    opb_init(&ob, EK_OP_RESIZE, 1);
    ob.in[0] = &x, ob.out[0] = &yr;
    opb_floats2(&ob, "scales", 2.0f, 2.0f);
    if (CHECK_OK(ek_kernel_resize.prepare(&ob.op)))
        ek_kernel_resize.release(&ob.op);
    opb_init(&ob, EK_OP_RESIZE, 1);
    ob.in[0] = &x, ob.out[0] = &yrb;
    expect_invalid(&ek_kernel_resize, &ob, "resize: channels differ");
    opb_init(&ob, EK_OP_RESIZE, 1);
    ob.in[0] = &x, ob.out[0] = &yr;
    opb_int(&ob, "mode", 2);
    expect_invalid(&ek_kernel_resize, &ob, "resize: mode 2");
    opb_init(&ob, EK_OP_RESIZE, 1);
    ob.in[0] = &x, ob.out[0] = &yr;
    opb_int(&ob, "coordinate", 7);
    expect_invalid(&ek_kernel_resize, &ob, "resize: coordinate 7");
    opb_init(&ob, EK_OP_RESIZE, 1);
    ob.in[0] = &x, ob.out[0] = &yr;
    opb_floats2(&ob, "scales", 0.0f, 2.0f);
    expect_invalid(&ek_kernel_resize, &ob, "resize: scale 0");
    opb_init(&ob, EK_OP_RESIZE, 1);
    ob.in[0] = &x, ob.out[0] = &yr;
    opb_floats2(&ob, "scales", 2.0f, NAN);
    expect_invalid(&ek_kernel_resize, &ob, "resize: NaN scale");
    opb_init(&ob, EK_OP_RESIZE, 1);
    ob.in[0] = &x, ob.out[0] = &yr;
    opb_floats2(&ob, "scales", 3.0f, 2.0f);
    expect_invalid(&ek_kernel_resize, &ob, "resize: scale and size disagree");
}

int main(void) {
    RUN(test_gemm_choice);
    for (size_t i = 0; i < sizeof gemm_isas / sizeof gemm_isas[0]; i++) {
        if (!ek_gemm_force_isa(gemm_isas[i])) {
            printf("-- SGEMM microkernel %s: not in this build or CPU\n", gemm_isas[i]);
            continue;
        }
        printf("-- SGEMM microkernel %s (%zu x %zu)\n", ek_gemm_isa(), ek_gemm_mr(), ek_gemm_nr());
        RUN(test_gemm);
        RUN(test_conv);
        RUN(test_conv_residual);
        RUN(test_conv_transpose);
        RUN(test_winograd);
        RUN(test_winograd_residual);
        RUN(test_fully_connected);
        RUN(test_matmul);
    }
    RUN(test_pools);
    RUN(test_global_average_pool);
    RUN(test_resize);
    RUN(test_conv_rejects);
    RUN(test_matrix_rejects);
    RUN(test_pool_rejects);
    return ek_test_summary();
}
