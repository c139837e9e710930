/* The portable element-wise, shape, softmax, reduce and select (TOP_K, NON_MAX_SUPPRESSION) kernels
 * against naive reference loops, and
 * their prepare() rejecting malformed ops with EK_ERR_MODEL_INVALID.
 *
 * Ops are built by hand (ek_op, ek_tensor_desc, ek_attr). With EK_KERNEL_TEST_SHIM the file carries a
 * serial ek_exec (it runs the ranges of ek_parallel_for one after another, last first, so range
 * splitting is exercised without the engine) and weak stand-ins for kernels not linked in. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ek_test.h"
#include "portable/portable.h"
#ifdef EK_KERNEL_TEST_SHIM
#include "internal.h" /* ek_fail */
#endif

/* ---- serial execution shim ---- */
#ifdef EK_KERNEL_TEST_SHIM
struct ek_exec {
    int threads;
};

void ek_parallel_for(struct ek_exec *exec, size_t count, ek_range_fn fn, void *arg) {
    size_t n = exec && exec->threads > 1 ? (size_t)exec->threads : 1;
    if (n > count)
        n = count;
    for (size_t t = n; t-- > 0;) /* last range first: ranges must not depend on each other */
        fn(arg, count / n * t + (t < count % n ? t : count % n),
           count / n * (t + 1) + (t + 1 < count % n ? t + 1 : count % n), (int)t);
}

int ek_exec_threads(const struct ek_exec *exec) { return exec ? exec->threads : 1; }

void *ek_exec_scratch(struct ek_exec *exec, int thread) {
    (void)exec;
    (void)thread;
    return NULL;
}

/* Kernels of other files that may not be linked into this test build. */
#define WEAK_KERNEL(name, type) __attribute__((weak)) const struct ek_kernel name = {type, 0, 0, 0, NULL, NULL, NULL}
WEAK_KERNEL(ek_kernel_conv, EK_OP_CONV);
WEAK_KERNEL(ek_kernel_conv_transpose, EK_OP_CONV_TRANSPOSE);
WEAK_KERNEL(ek_kernel_fully_connected, EK_OP_FULLY_CONNECTED);
WEAK_KERNEL(ek_kernel_matmul, EK_OP_MATMUL);
WEAK_KERNEL(ek_kernel_max_pool, EK_OP_MAX_POOL);
WEAK_KERNEL(ek_kernel_average_pool, EK_OP_AVERAGE_POOL);
WEAK_KERNEL(ek_kernel_global_average_pool, EK_OP_GLOBAL_AVERAGE_POOL);
WEAK_KERNEL(ek_kernel_resize, EK_OP_RESIZE);
WEAK_KERNEL(ek_kernel_plugin, EK_OP_PLUGIN); /* src/plugin.c */
WEAK_KERNEL(ek_kernel_quantize, EK_OP_QUANTIZE); /* quantized.c, qconv.c, pool.c */
WEAK_KERNEL(ek_kernel_dequantize, EK_OP_DEQUANTIZE);
WEAK_KERNEL(ek_kernel_qconv, EK_OP_QCONV);
WEAK_KERNEL(ek_kernel_qfully_connected, EK_OP_QFULLY_CONNECTED);
WEAK_KERNEL(ek_kernel_qadd, EK_OP_QADD);
WEAK_KERNEL(ek_kernel_qmul, EK_OP_QMUL);
WEAK_KERNEL(ek_kernel_qaverage_pool, EK_OP_QAVERAGE_POOL);
WEAK_KERNEL(ek_kernel_qglobal_average_pool, EK_OP_QGLOBAL_AVERAGE_POOL);
WEAK_KERNEL(ek_kernel_qlut, EK_OP_QLUT);

/* ek_exec_set_dims: what the last run reported for each DYNAMIC output (the engine's checks). */
#define SHIM_DIMS 8
static const struct ek_tensor_desc *shim_dims_of[SHIM_DIMS];
static int64_t shim_dims[SHIM_DIMS][EK_MAX_DIMS];

ek_status_t ek_exec_set_dims(struct ek_exec *exec, const struct ek_tensor_desc *t, const int64_t *dims) {
    (void)exec;
    if (!t || !dims || !t->dynamic)
        return ek_fail(EK_ERR_INVALID_ARG, "tensor '%s' is not DYNAMIC", t && t->name ? t->name : "?");
    for (int d = 0; d < t->rank; d++)
        if (dims[d] < 0 || dims[d] > t->dims[d])
            return ek_fail(EK_ERR_INVALID_ARG, "tensor '%s': dim %d of %lld is past its bound", t->name, d,
                           (long long)dims[d]);
    for (int i = 0; i < SHIM_DIMS; i++)
        if (shim_dims_of[i] == t || !shim_dims_of[i]) {
            shim_dims_of[i] = t;
            memcpy(shim_dims[i], dims, (size_t)t->rank * sizeof *dims);
            return EK_OK;
        }
    return ek_fail(EK_ERR_INTERNAL, "shim: too many DYNAMIC tensors");
}

/* The dims last reported for t (NULL: none). */
static const int64_t *reported_dims(const struct ek_tensor_desc *t) {
    for (int i = 0; i < SHIM_DIMS; i++)
        if (shim_dims_of[i] == t)
            return shim_dims[i];
    return NULL;
}

static void forget_dims(void) { memset(shim_dims_of, 0, sizeof shim_dims_of); }

static struct ek_exec shim_exec = {3};
static struct ek_exec *test_exec(void) { return &shim_exec; }
#else
/* The engine's ek_parallel_for runs a NULL exec on the calling thread. */
static struct ek_exec *test_exec(void) { return NULL; }
#endif

/* ---- tensors and ops built by hand ---- */

struct tensor {
    struct ek_tensor_desc d;
    float *v;
};

static uint32_t rng_state = 12345;

static float rnd(float lo, float hi) {
    rng_state = rng_state * 1664525u + 1013904223u;
    return lo + (hi - lo) * (float)(rng_state >> 8) / (float)(1u << 24);
}

static struct tensor *tensor_new(int rank, const int64_t *dims) {
    struct tensor *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->d.name = "t";
    t->d.dtype = EK_DTYPE_FLOAT32;
    t->d.rank = rank;
    t->d.count = 1;
    for (int i = 0; i < rank; i++) {
        t->d.dims[i] = dims[i];
        t->d.count *= (size_t)dims[i];
    }
    t->d.nbytes = t->d.count * sizeof(float);
    t->v = calloc(t->d.count, sizeof(float));
    for (size_t i = 0; i < t->d.count; i++)
        t->v[i] = rnd(-3.0f, 3.0f);
    return t;
}

/* T(rank, d0, d1, ...) */
static struct tensor *T(int rank, ...) {
    int64_t dims[EK_MAX_DIMS] = {0};
    va_list ap;
    va_start(ap, rank);
    for (int i = 0; i < rank; i++)
        dims[i] = va_arg(ap, int);
    va_end(ap);
    return tensor_new(rank, dims);
}

static void tensor_free(struct tensor *t) {
    if (t) {
        free(t->v);
        free(t);
    }
}

struct opb {
    struct ek_op op;
    const struct ek_tensor_desc *in[8];
    const struct ek_tensor_desc *out[1];
    struct tensor *tin[8], *tout;
    struct ek_attr attrs[8];
    int64_t ints[8][2 * EK_MAX_DIMS];
};

static void opb_init(struct opb *b, enum ek_op_type type, struct tensor *y, int n_in, ...) {
    memset(b, 0, sizeof *b);
    b->op.type = type;
    b->op.name = "node";
    b->op.in = b->in;
    b->op.out = b->out;
    b->op.attrs = b->attrs;
    b->op.n_out = 1;
    b->tout = y;
    b->out[0] = y ? &y->d : NULL;
    va_list ap;
    va_start(ap, n_in);
    for (int i = 0; i < n_in; i++) {
        b->tin[i] = va_arg(ap, struct tensor *);
        b->in[i] = b->tin[i] ? &b->tin[i]->d : NULL;
    }
    va_end(ap);
    b->op.n_in = n_in;
}

static struct ek_attr *opb_attr(struct opb *b, const char *name, enum ek_attr_type type) {
    struct ek_attr *a = &b->attrs[b->op.n_attrs++];
    a->name = name;
    a->type = type;
    a->count = 1;
    return a;
}

static void opb_int(struct opb *b, const char *name, int64_t v) { opb_attr(b, name, EK_ATTR_INT)->i = v; }
static void opb_float(struct opb *b, const char *name, float v) { opb_attr(b, name, EK_ATTR_FLOAT)->f = v; }

static void opb_ints(struct opb *b, const char *name, int count, const int64_t *v) {
    int slot = b->op.n_attrs;
    struct ek_attr *a = opb_attr(b, name, EK_ATTR_INTS);
    a->count = (uint32_t)count;
    memcpy(b->ints[slot], v, (size_t)count * sizeof *v);
    a->ints = b->ints[slot];
}

static const struct ek_kernel *kernel_of(const struct opb *b) { return ek_portable_kernel((int)b->op.type); }

static ek_status_t opb_prepare(struct opb *b) { return kernel_of(b)->prepare(&b->op); }

static ek_status_t opb_run(struct opb *b) {
    const void *in[8];
    void *out[1] = {b->tout->v};
    for (int i = 0; i < b->op.n_in; i++)
        in[i] = b->tin[i]->v;
    return kernel_of(b)->run(&b->op, in, out, test_exec());
}

static void opb_release(struct opb *b) {
    const struct ek_kernel *k = kernel_of(b);
    if (k->release)
        k->release(&b->op);
}

/* prepare must fail with EK_ERR_MODEL_INVALID and leave no params behind. */
static int expect_invalid(struct opb *b, const char *needle, const char *file, int line) {
    ek_status_t st = opb_prepare(b);
    char what[256];
    if (st != EK_ERR_MODEL_INVALID) {
        snprintf(what, sizeof what, "prepare returned %s, expected EK_ERR_MODEL_INVALID (%s)", ek_status_name(st),
                 needle);
        ekt_report_failure(file, line, what);
        if (st == EK_OK)
            opb_release(b);
        return 0;
    }
    if (!strstr(ek_last_error(), needle) || !strstr(ek_last_error(), "node")) {
        snprintf(what, sizeof what, "error does not mention \"%s\" and the op name", needle);
        ekt_report_failure(file, line, what);
        return 0;
    }
    if (b->op.params) {
        ekt_report_failure(file, line, "a failed prepare left params");
        return 0;
    }
    return 1;
}
#define EXPECT_INVALID(b, needle) expect_invalid((b), (needle), __FILE__, __LINE__)

static int compare(const float *got, const float *want, size_t n, float tol, const char *what, int line) {
    for (size_t i = 0; i < n; i++) {
        float diff = fabsf(got[i] - want[i]);
        bool ok = (isnan(got[i]) && isnan(want[i])) || diff <= tol * (1.0f + fabsf(want[i]));
        if (!ok) {
            char msg[256];
            snprintf(msg, sizeof msg, "%s: element %zu is %.9g, expected %.9g", what, i, (double)got[i],
                     (double)want[i]);
            ekt_report_failure(__FILE__, line, msg);
            return 0;
        }
    }
    return 1;
}
#define COMPARE(got, want, n, what) compare((got), (want), (n), 1e-5f, (what), __LINE__)

/* Flat index of `in` read for output element `flat` under numpy broadcasting. */
static size_t bcast_index(const struct ek_tensor_desc *in, const struct ek_tensor_desc *out, size_t flat) {
    size_t idx = 0, stride = 1;
    for (int i = 0; i < out->rank; i++) {
        size_t od = (size_t)out->dims[out->rank - 1 - i];
        size_t o = flat % od;
        flat /= od;
        if (i < in->rank) {
            size_t dim = (size_t)in->dims[in->rank - 1 - i];
            if (dim != 1)
                idx += o * stride;
            stride *= dim;
        }
    }
    return idx;
}

/* Unravel a flat index of d into idx. */
static void unravel(const struct ek_tensor_desc *d, size_t flat, int64_t *idx) {
    for (int i = d->rank - 1; i >= 0; i--) {
        idx[i] = (int64_t)(flat % (size_t)d->dims[i]);
        flat /= (size_t)d->dims[i];
    }
}

static size_t ravel(const struct ek_tensor_desc *d, const int64_t *idx) {
    size_t flat = 0;
    for (int i = 0; i < d->rank; i++)
        flat = flat * (size_t)d->dims[i] + (size_t)idx[i];
    return flat;
}

/* ---- tests ---- */

static void test_registry(void) {
    for (int t = 1; t <= EK_OP_TYPE_MAX; t++) {
        const struct ek_kernel *k = ek_portable_kernel(t);
        CHECK(k != NULL && (int)k->type == t);
    }
    static const int mine[] = {EK_OP_ADD,        EK_OP_SUB,          EK_OP_MUL,        EK_OP_DIV,        EK_OP_RELU,
                               EK_OP_CLIP,       EK_OP_LEAKY_RELU,   EK_OP_PRELU,      EK_OP_SIGMOID,
                               EK_OP_HARD_SIGMOID, EK_OP_HARD_SWISH, EK_OP_TANH,       EK_OP_TRANSPOSE,
                               EK_OP_CONCAT,     EK_OP_SOFTMAX,      EK_OP_PAD,        EK_OP_SLICE,
                               EK_OP_REDUCE_MEAN, EK_OP_RESHAPE};
    for (size_t i = 0; i < sizeof mine / sizeof mine[0]; i++) {
        const struct ek_kernel *k = ek_portable_kernel(mine[i]);
        CHECK(k && k->prepare && k->run && k->outputs == 1 && k->min_inputs >= 1 &&
              k->max_inputs >= k->min_inputs);
    }
#ifndef EK_KERNEL_TEST_SHIM
    /* the real runtime links every kernel */
    for (int t = 1; t <= EK_OP_TYPE_MAX; t++) {
        const struct ek_kernel *k = ek_portable_kernel(t);
        CHECK(k && k->prepare && k->run);
    }
#endif
    CHECK(ek_portable_kernel(0) == NULL);
    CHECK(ek_portable_kernel(EK_OP_TYPE_MAX + 1) == NULL);
    CHECK(ek_portable_kernel(-1) == NULL);
}

static float ref_binary(enum ek_op_type type, float a, float c) {
    switch (type) {
    case EK_OP_ADD:
        return a + c;
    case EK_OP_SUB:
        return a - c;
    case EK_OP_MUL:
        return a * c;
    case EK_OP_DIV:
        return a / c;
    default:
        return a < 0.0f ? c * a : a; /* PRELU */
    }
}

/* One binary op over the given shapes, optionally clamped, against the reference. */
static void check_binary(enum ek_op_type type, struct tensor *x, struct tensor *b, struct tensor *y, float lo,
                         float hi, int line) {
    struct opb ob;
    REQUIRE(x && b && y);
    if (type == EK_OP_DIV) /* keep divisors away from 0 */
        for (size_t i = 0; i < b->d.count; i++)
            b->v[i] = b->v[i] < 0 ? b->v[i] - 0.5f : b->v[i] + 0.5f;
    opb_init(&ob, type, y, 2, x, b);
    if (lo > -INFINITY)
        opb_float(&ob, "act_min", lo);
    if (hi < INFINITY)
        opb_float(&ob, "act_max", hi);
    if (!ekt_check_status(__FILE__, line, "prepare", opb_prepare(&ob), EK_OK))
        goto done;
    CHECK_OK(opb_run(&ob));
    float *want = malloc(y->d.count * sizeof(float));
    REQUIRE(want);
    for (size_t i = 0; i < y->d.count; i++) {
        float v = ref_binary(type, x->v[bcast_index(&x->d, &y->d, i)], b->v[bcast_index(&b->d, &y->d, i)]);
        v = v < lo ? lo : v;
        want[i] = v > hi ? hi : v;
    }
    compare(y->v, want, y->d.count, 1e-6f, ek_op_type_name((int)type), line);
    free(want);
    opb_release(&ob);
done:
    tensor_free(x);
    tensor_free(b);
    tensor_free(y);
}

static void test_binary_broadcast(void) {
    const enum ek_op_type ops[] = {EK_OP_ADD, EK_OP_SUB, EK_OP_MUL, EK_OP_DIV};
    const float inf = INFINITY;
    for (int k = 0; k < 4; k++) {
        enum ek_op_type t = ops[k];
        check_binary(t, T(3, 2, 3, 4), T(3, 2, 3, 4), T(3, 2, 3, 4), -inf, inf, __LINE__);    /* same shape */
        check_binary(t, T(3, 2, 3, 4), T(0), T(3, 2, 3, 4), -inf, inf, __LINE__);             /* scalar B */
        check_binary(t, T(1, 1), T(2, 5, 7), T(2, 5, 7), -inf, inf, __LINE__);                 /* scalar-ish X */
        check_binary(t, T(4, 2, 5, 5, 8), T(1, 8), T(4, 2, 5, 5, 8), -inf, inf, __LINE__);      /* per channel */
        check_binary(t, T(3, 3, 1, 5), T(2, 4, 1), T(3, 3, 4, 5), -inf, inf, __LINE__);        /* rank mismatch */
        check_binary(t, T(4, 2, 1, 4, 1), T(4, 1, 3, 1, 5), T(4, 2, 3, 4, 5), -inf, inf, __LINE__); /* both */
        check_binary(t, T(4, 2, 3, 1, 6), T(2, 3, 6), T(4, 2, 3, 3, 6), -inf, inf, __LINE__);  /* middle bcast */
        check_binary(t, T(2, 6, 7), T(2, 6, 7), T(2, 6, 7), -1.0f, 1.5f, __LINE__);            /* act clamp */
        check_binary(t, T(2, 6, 7), T(1, 7), T(2, 6, 7), 0.0f, inf, __LINE__);                 /* fused relu */
        check_binary(t, T(0), T(0), T(0), -inf, inf, __LINE__);                                /* scalars */
    }
}

static void test_prelu(void) {
    const float inf = INFINITY;
    check_binary(EK_OP_PRELU, T(4, 2, 3, 4, 5), T(1, 5), T(4, 2, 3, 4, 5), -inf, inf, __LINE__);
    check_binary(EK_OP_PRELU, T(4, 2, 3, 4, 5), T(3, 3, 1, 1), T(4, 2, 3, 4, 5), -inf, inf, __LINE__);
    check_binary(EK_OP_PRELU, T(2, 3, 4), T(0), T(2, 3, 4), -inf, inf, __LINE__);
    check_binary(EK_OP_PRELU, T(2, 3, 4), T(2, 3, 4), T(2, 3, 4), -inf, inf, __LINE__);
}

static double ref_unary(enum ek_op_type type, double x) {
    switch (type) {
    case EK_OP_RELU:
        return x > 0 ? x : 0;
    case EK_OP_CLIP:
        return x < -0.5 ? -0.5 : x > 1.25 ? 1.25 : x;
    case EK_OP_LEAKY_RELU:
        return x < 0 ? 0.125 * x : x;
    case EK_OP_SIGMOID:
        return 1.0 / (1.0 + exp(-x));
    case EK_OP_HARD_SIGMOID: {
        double v = 0.25 * x + 0.375;
        return v < 0 ? 0 : v > 1 ? 1 : v;
    }
    case EK_OP_HARD_SWISH: {
        double v = x / 6.0 + 0.5;
        return x * (v < 0 ? 0 : v > 1 ? 1 : v);
    }
    default:
        return tanh(x);
    }
}

static void test_unary(void) {
    const enum ek_op_type ops[] = {EK_OP_RELU,         EK_OP_CLIP,       EK_OP_LEAKY_RELU, EK_OP_SIGMOID,
                                   EK_OP_HARD_SIGMOID, EK_OP_HARD_SWISH, EK_OP_TANH};
    for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++) {
        struct tensor *x = T(3, 3, 7, 11), *y = T(3, 3, 7, 11);
        REQUIRE(x && y);
        x->v[0] = 100.0f; /* sigmoid / tanh saturate without overflow */
        x->v[1] = -100.0f;
        x->v[2] = 0.0f;
        struct opb b;
        opb_init(&b, ops[k], y, 1, x);
        if (ops[k] == EK_OP_CLIP) {
            opb_float(&b, "min", -0.5f);
            opb_float(&b, "max", 1.25f);
        } else if (ops[k] == EK_OP_LEAKY_RELU) {
            opb_float(&b, "alpha", 0.125f);
        } else if (ops[k] == EK_OP_HARD_SIGMOID) {
            opb_float(&b, "alpha", 0.25f);
            opb_float(&b, "beta", 0.375f);
        }
        if (CHECK_OK(opb_prepare(&b))) {
            CHECK_OK(opb_run(&b));
            float want[3 * 7 * 11];
            for (size_t i = 0; i < x->d.count; i++)
                want[i] = (float)ref_unary(ops[k], x->v[i]);
            COMPARE(y->v, want, x->d.count, ek_op_type_name((int)ops[k]));
            opb_release(&b);
        }
        tensor_free(x);
        tensor_free(y);
    }
    /* defaults: CLIP without bounds copies, LEAKY_RELU alpha 0.01 */
    struct tensor *x = T(1, 50), *y = T(1, 50);
    REQUIRE(x && y);
    struct opb b;
    opb_init(&b, EK_OP_CLIP, y, 1, x);
    if (CHECK_OK(opb_prepare(&b))) {
        CHECK_OK(opb_run(&b));
        COMPARE(y->v, x->v, 50, "CLIP default");
        opb_release(&b);
    }
    opb_init(&b, EK_OP_LEAKY_RELU, y, 1, x);
    if (CHECK_OK(opb_prepare(&b))) {
        CHECK_OK(opb_run(&b));
        float want[50];
        for (int i = 0; i < 50; i++)
            want[i] = x->v[i] < 0 ? 0.01f * x->v[i] : x->v[i];
        COMPARE(y->v, want, 50, "LEAKY_RELU default");
        opb_release(&b);
    }
    tensor_free(x);
    tensor_free(y);
}

static void check_transpose(struct tensor *x, const int64_t *perm, int line) {
    int64_t dims[EK_MAX_DIMS];
    for (int i = 0; i < x->d.rank; i++)
        dims[i] = x->d.dims[perm[i]];
    struct tensor *y = tensor_new(x->d.rank, dims);
    struct opb b;
    opb_init(&b, EK_OP_TRANSPOSE, y, 1, x);
    opb_ints(&b, "perm", x->d.rank, perm);
    if (ekt_check_status(__FILE__, line, "prepare", opb_prepare(&b), EK_OK)) {
        CHECK_OK(opb_run(&b));
        float *want = malloc(y->d.count * sizeof(float));
        int64_t yi[EK_MAX_DIMS], xi[EK_MAX_DIMS];
        for (size_t i = 0; i < y->d.count; i++) {
            unravel(&y->d, i, yi);
            for (int k = 0; k < x->d.rank; k++)
                xi[perm[k]] = yi[k];
            want[i] = x->v[ravel(&x->d, xi)];
        }
        compare(y->v, want, y->d.count, 0.0f, "TRANSPOSE", line);
        free(want);
        opb_release(&b);
    }
    tensor_free(y);
}

static void test_transpose(void) {
    struct tensor *x = T(4, 2, 3, 4, 5);
    REQUIRE(x);
    /* all 24 permutations of 4 axes */
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++)
            for (int c = 0; c < 4; c++) {
                int d = 6 - a - b - c;
                if (a == b || a == c || b == c || d < 0 || d > 3 || d == a || d == b || d == c)
                    continue;
                int64_t perm[4] = {a, b, c, d};
                check_transpose(x, perm, __LINE__);
            }
    tensor_free(x);
    const int64_t to_nhwc[4] = {0, 2, 3, 1}, to_nchw[4] = {0, 3, 1, 2};
    x = T(4, 2, 3, 37, 41); /* tiled path with partial tiles */
    check_transpose(x, to_nhwc, __LINE__);
    tensor_free(x);
    x = T(4, 2, 37, 41, 5);
    check_transpose(x, to_nchw, __LINE__);
    tensor_free(x);
    /* 2 and 4 channels to NHWC, over more rows than one interleaved block (2048) */
    x = T(4, 3, 2, 50, 45);
    check_transpose(x, to_nhwc, __LINE__);
    tensor_free(x);
    x = T(4, 2, 4, 33, 70);
    check_transpose(x, to_nhwc, __LINE__);
    tensor_free(x);
    x = T(4, 1, 3, 1, 5); /* unit dims */
    const int64_t p2[4] = {3, 2, 1, 0};
    check_transpose(x, p2, __LINE__);
    tensor_free(x);
    x = T(6, 2, 1, 3, 2, 2, 3);
    const int64_t p3[6] = {5, 0, 3, 1, 4, 2};
    check_transpose(x, p3, __LINE__);
    tensor_free(x);
    x = T(0); /* a scalar */
    check_transpose(x, p3, __LINE__);
    tensor_free(x);
}

static void test_concat(void) {
    for (int axis = 0; axis < 3; axis++) {
        int64_t d0[3] = {2, 3, 4}, d1[3] = {2, 3, 4}, d2[3] = {2, 3, 4}, dy[3] = {2, 3, 4};
        d1[axis] = 1;
        d2[axis] = 5;
        dy[axis] = d0[axis] + 1 + 5;
        struct tensor *x0 = tensor_new(3, d0), *x1 = tensor_new(3, d1), *x2 = tensor_new(3, d2);
        struct tensor *y = tensor_new(3, dy);
        REQUIRE(x0 && x1 && x2 && y);
        struct opb b;
        opb_init(&b, EK_OP_CONCAT, y, 3, x0, x1, x2);
        opb_int(&b, "axis", axis);
        if (CHECK_OK(opb_prepare(&b))) {
            CHECK_OK(opb_run(&b));
            float *want = malloc(y->d.count * sizeof(float));
            int64_t idx[3];
            for (size_t i = 0; i < y->d.count; i++) {
                unravel(&y->d, i, idx);
                struct tensor *src = x0;
                if (idx[axis] >= d0[axis]) {
                    idx[axis] -= d0[axis];
                    src = x1;
                    if (idx[axis] >= 1) {
                        idx[axis] -= 1;
                        src = x2;
                    }
                }
                want[i] = src->v[ravel(&src->d, idx)];
            }
            COMPARE(y->v, want, y->d.count, "CONCAT");
            free(want);
            opb_release(&b);
        }
        tensor_free(x0);
        tensor_free(x1);
        tensor_free(x2);
        tensor_free(y);
    }
    /* one input: a copy */
    struct tensor *x = T(2, 3, 4), *y = T(2, 3, 4);
    struct opb b;
    opb_init(&b, EK_OP_CONCAT, y, 1, x);
    opb_int(&b, "axis", 1);
    if (CHECK_OK(opb_prepare(&b))) {
        CHECK_OK(opb_run(&b));
        COMPARE(y->v, x->v, 12, "CONCAT of one");
        opb_release(&b);
    }
    tensor_free(x);
    tensor_free(y);
}

static void check_pad(int mode, const int64_t *pads, int line) {
    struct tensor *x = T(3, 2, 3, 4);
    int64_t dy[3];
    for (int k = 0; k < 3; k++)
        dy[k] = x->d.dims[k] + pads[k] + pads[3 + k];
    struct tensor *y = tensor_new(3, dy);
    struct opb b;
    opb_init(&b, EK_OP_PAD, y, 1, x);
    opb_ints(&b, "pads", 6, pads);
    opb_int(&b, "mode", mode);
    opb_float(&b, "value", 7.5f);
    if (ekt_check_status(__FILE__, line, "prepare", opb_prepare(&b), EK_OK)) {
        CHECK_OK(opb_run(&b));
        float *want = malloc(y->d.count * sizeof(float));
        int64_t idx[3];
        for (size_t i = 0; i < y->d.count; i++) {
            unravel(&y->d, i, idx);
            bool constant = false;
            for (int k = 0; k < 3; k++) {
                int64_t s = idx[k] - pads[k], d = x->d.dims[k];
                if (s < 0 || s >= d) {
                    if (mode == 0)
                        constant = true;
                    else if (mode == 2)
                        s = s < 0 ? 0 : d - 1;
                    else
                        s = s < 0 ? -s : 2 * (d - 1) - s;
                }
                idx[k] = s;
            }
            want[i] = constant ? 7.5f : x->v[ravel(&x->d, idx)];
        }
        compare(y->v, want, y->d.count, 0.0f, "PAD", line);
        free(want);
        opb_release(&b);
    }
    tensor_free(x);
    tensor_free(y);
}

static void test_pad(void) {
    const int64_t p1[6] = {1, 2, 3, 1, 1, 2}, p2[6] = {0, 0, 0, 0, 0, 0}, p3[6] = {0, 1, 0, 1, 0, 3};
    const int64_t big[6] = {3, 4, 5, 2, 6, 7};
    for (int mode = 0; mode < 3; mode++) {
        check_pad(mode, p1, __LINE__);
        check_pad(mode, p2, __LINE__);
        check_pad(mode, p3, __LINE__);
    }
    check_pad(0, big, __LINE__);
    check_pad(2, big, __LINE__);
}

static void check_slice(struct tensor *x, const int64_t *starts, const int64_t *steps, const int64_t *dy, int line) {
    int r = x->d.rank;
    struct tensor *y = tensor_new(r, dy);
    struct opb b;
    opb_init(&b, EK_OP_SLICE, y, 1, x);
    opb_ints(&b, "starts", r, starts);
    opb_ints(&b, "steps", r, steps);
    if (ekt_check_status(__FILE__, line, "prepare", opb_prepare(&b), EK_OK)) {
        CHECK_OK(opb_run(&b));
        float *want = malloc(y->d.count * sizeof(float));
        int64_t idx[EK_MAX_DIMS];
        for (size_t i = 0; i < y->d.count; i++) {
            unravel(&y->d, i, idx);
            for (int k = 0; k < r; k++)
                idx[k] = starts[k] + idx[k] * steps[k];
            want[i] = x->v[ravel(&x->d, idx)];
        }
        compare(y->v, want, y->d.count, 0.0f, "SLICE", line);
        free(want);
        opb_release(&b);
    }
    tensor_free(y);
}

static void test_slice(void) {
    struct tensor *x = T(3, 5, 6, 7);
    REQUIRE(x);
    const int64_t s1[3] = {4, 1, 6}, t1[3] = {-1, 2, -3}, y1[3] = {5, 3, 3};
    check_slice(x, s1, t1, y1, __LINE__); /* negative steps */
    const int64_t s2[3] = {1, 0, 0}, t2[3] = {1, 1, 1}, y2[3] = {3, 6, 7};
    check_slice(x, s2, t2, y2, __LINE__); /* one contiguous block */
    const int64_t s3[3] = {0, 2, 1}, y3[3] = {5, 3, 4};
    check_slice(x, s3, t2, y3, __LINE__); /* contiguous rows */
    const int64_t s4[3] = {4, 5, 6}, t4[3] = {-1, -1, -1}, y4[3] = {5, 6, 7};
    check_slice(x, s4, t4, y4, __LINE__); /* full reversal */
    const int64_t s5[3] = {2, 3, 3}, t5[3] = {INT64_MAX, INT64_MIN, 5}, y5[3] = {1, 1, 1};
    check_slice(x, s5, t5, y5, __LINE__); /* one element: huge steps are harmless */
    tensor_free(x);
    x = T(4, 2, 37, 3, 41);
    const int64_t s6[4] = {0, 36, 0, 40}, t6[4] = {1, -2, 1, -3}, y6[4] = {2, 19, 3, 14};
    check_slice(x, s6, t6, y6, __LINE__);
    tensor_free(x);
}

static void check_softmax(struct tensor *x, int axis, int line) {
    struct tensor *y = tensor_new(x->d.rank, x->d.dims);
    struct opb b;
    opb_init(&b, EK_OP_SOFTMAX, y, 1, x);
    opb_int(&b, "axis", axis);
    if (ekt_check_status(__FILE__, line, "prepare", opb_prepare(&b), EK_OK)) {
        CHECK_OK(opb_run(&b));
        size_t outer = 1, inner = 1, n = (size_t)x->d.dims[axis];
        for (int i = 0; i < axis; i++)
            outer *= (size_t)x->d.dims[i];
        for (int i = axis + 1; i < x->d.rank; i++)
            inner *= (size_t)x->d.dims[i];
        float *want = malloc(y->d.count * sizeof(float));
        for (size_t o = 0; o < outer; o++)
            for (size_t j = 0; j < inner; j++) {
                double m = -INFINITY, s = 0;
                for (size_t k = 0; k < n; k++)
                    m = fmax(m, x->v[(o * n + k) * inner + j]);
                for (size_t k = 0; k < n; k++)
                    s += exp(x->v[(o * n + k) * inner + j] - m);
                for (size_t k = 0; k < n; k++)
                    want[(o * n + k) * inner + j] = (float)(exp(x->v[(o * n + k) * inner + j] - m) / s);
            }
        compare(y->v, want, y->d.count, 1e-5f, "SOFTMAX", line);
        free(want);
        opb_release(&b);
    }
    tensor_free(y);
}

static void test_softmax(void) {
    struct tensor *x = T(3, 2, 5, 70);
    REQUIRE(x);
    for (size_t i = 0; i < x->d.count; i += 7)
        x->v[i] *= 40.0f; /* large values: stable only when the max is subtracted */
    check_softmax(x, 1, __LINE__); /* middle axis, two tiles */
    check_softmax(x, 2, __LINE__);
    check_softmax(x, 0, __LINE__);
    tensor_free(x);
    x = T(1, 1000);
    x->v[3] = 200.0f;
    check_softmax(x, 0, __LINE__);
    tensor_free(x);
}

static void check_reduce(struct tensor *x, int n_axes, const int64_t *axes, int keepdims, int line) {
    int64_t dy[EK_MAX_DIMS];
    int ry = 0;
    bool red[EK_MAX_DIMS] = {false};
    for (int i = 0; i < n_axes; i++)
        red[axes[i]] = true;
    for (int d = 0; d < x->d.rank; d++)
        if (!red[d])
            dy[ry++] = x->d.dims[d];
        else if (keepdims)
            dy[ry++] = 1;
    struct tensor *y = tensor_new(ry, dy);
    struct opb b;
    opb_init(&b, EK_OP_REDUCE_MEAN, y, 1, x);
    opb_ints(&b, "axes", n_axes, axes);
    opb_int(&b, "keepdims", keepdims);
    if (ekt_check_status(__FILE__, line, "prepare", opb_prepare(&b), EK_OK)) {
        CHECK_OK(opb_run(&b));
        double *sum = calloc(y->d.count, sizeof(double));
        float *want = malloc(y->d.count * sizeof(float));
        size_t per = x->d.count / y->d.count;
        int64_t idx[EK_MAX_DIMS], oi[EK_MAX_DIMS];
        for (size_t i = 0; i < x->d.count; i++) {
            unravel(&x->d, i, idx);
            int k = 0;
            for (int d = 0; d < x->d.rank; d++)
                if (!red[d])
                    oi[k++] = idx[d];
                else if (keepdims)
                    oi[k++] = 0;
            sum[ravel(&y->d, oi)] += x->v[i];
        }
        for (size_t i = 0; i < y->d.count; i++)
            want[i] = (float)(sum[i] / (double)per);
        compare(y->v, want, y->d.count, 1e-5f, "REDUCE_MEAN", line);
        free(sum);
        free(want);
        opb_release(&b);
    }
    tensor_free(y);
}

static void test_reduce_mean(void) {
    struct tensor *x = T(4, 2, 3, 4, 5);
    REQUIRE(x);
    const int64_t hw[2] = {1, 2}, last[1] = {3}, a02[2] = {0, 2}, all[4] = {0, 1, 2, 3}, a13[2] = {1, 3};
    for (int keep = 0; keep < 2; keep++) {
        check_reduce(x, 2, hw, keep, __LINE__);
        check_reduce(x, 1, last, keep, __LINE__);
        check_reduce(x, 2, a02, keep, __LINE__);
        check_reduce(x, 4, all, keep, __LINE__);
        check_reduce(x, 2, a13, keep, __LINE__);
        check_reduce(x, 0, all, keep, __LINE__); /* no axes: a copy */
    }
    tensor_free(x);
    x = T(4, 1, 7, 1, 9); /* unit dims among the reduced ones */
    const int64_t a012[3] = {0, 1, 2};
    check_reduce(x, 3, a012, 1, __LINE__);
    check_reduce(x, 2, a02, 0, __LINE__);
    tensor_free(x);
}

static void test_reshape(void) {
    struct tensor *x = T(3, 2, 3, 4), *y = T(2, 6, 4);
    struct opb b;
    opb_init(&b, EK_OP_RESHAPE, y, 1, x);
    if (CHECK_OK(opb_prepare(&b))) {
        CHECK_OK(opb_run(&b));
        COMPARE(y->v, x->v, 24, "RESHAPE");
        opb_release(&b);
    }
    tensor_free(y);
    y = T(2, 5, 5);
    opb_init(&b, EK_OP_RESHAPE, y, 1, x);
    EXPECT_INVALID(&b, "element counts");
    tensor_free(x);
    tensor_free(y);
}

/* ---- prepare rejecting malformed ops ---- */

static void test_reject_elementwise(void) {
    struct tensor *x = T(2, 3, 4), *b4 = T(1, 4), *b5 = T(1, 5), *y = T(2, 3, 4), *y5 = T(2, 3, 5);
    struct tensor *y3 = T(3, 1, 3, 4), *big = T(3, 2, 3, 4);
    REQUIRE(x && b4 && b5 && y && y5 && y3 && big);
    struct opb b;
    opb_init(&b, EK_OP_ADD, y, 2, x, b5);
    EXPECT_INVALID(&b, "do not broadcast");
    opb_init(&b, EK_OP_ADD, y5, 2, x, b4);
    EXPECT_INVALID(&b, "output Y is [3,5], expected [3,4]");
    opb_init(&b, EK_OP_MUL, y3, 2, x, b4); /* an extra leading dim is not the broadcast shape */
    EXPECT_INVALID(&b, "output Y");
    opb_init(&b, EK_OP_SUB, y, 2, x, NULL);
    EXPECT_INVALID(&b, "input B is missing");
    opb_init(&b, EK_OP_DIV, y, 1, x);
    EXPECT_INVALID(&b, "takes 2 inputs");
    opb_init(&b, EK_OP_ADD, y, 2, x, b4);
    opb_float(&b, "act_min", 2.0f);
    opb_float(&b, "act_max", 1.0f);
    EXPECT_INVALID(&b, "act_min");
    opb_init(&b, EK_OP_ADD, y, 2, x, b4);
    opb_int(&b, "act_min", 0);
    EXPECT_INVALID(&b, "act_min");
    opb_init(&b, EK_OP_ADD, y, 2, x, b4);
    opb_float(&b, "act_max", NAN);
    EXPECT_INVALID(&b, "act_max");
    b4->d.dtype = EK_DTYPE_INT8;
    opb_init(&b, EK_OP_ADD, y, 2, x, b4);
    EXPECT_INVALID(&b, "float32");
    b4->d.dtype = EK_DTYPE_FLOAT32;
    b4->d.count = 5; /* dims and count disagree */
    opb_init(&b, EK_OP_ADD, y, 2, x, b4);
    EXPECT_INVALID(&b, "elements");
    b4->d.count = 4;
    opb_init(&b, EK_OP_PRELU, y, 2, x, big); /* slope of higher rank than X */
    EXPECT_INVALID(&b, "broadcast to X");
    opb_init(&b, EK_OP_PRELU, y, 2, x, b5);
    EXPECT_INVALID(&b, "broadcast");
    opb_init(&b, EK_OP_RELU, y5, 1, x);
    EXPECT_INVALID(&b, "expected X's shape");
    opb_init(&b, EK_OP_LEAKY_RELU, y, 1, x);
    opb_float(&b, "alpha", INFINITY);
    EXPECT_INVALID(&b, "alpha");
    opb_init(&b, EK_OP_HARD_SIGMOID, y, 1, x);
    opb_ints(&b, "alpha", 1, (const int64_t[]){1});
    EXPECT_INVALID(&b, "alpha");
    tensor_free(x);
    tensor_free(b4);
    tensor_free(b5);
    tensor_free(y);
    tensor_free(y5);
    tensor_free(y3);
    tensor_free(big);
}

static void test_reject_shape(void) {
    struct tensor *x = T(3, 2, 3, 4), *yt = T(3, 4, 3, 2), *y = T(3, 2, 3, 4);
    REQUIRE(x && yt && y);
    struct opb b;
    const int64_t dup[3] = {0, 0, 2}, rev[3] = {2, 1, 0}, oor[3] = {0, 1, 3}, id[3] = {0, 1, 2};
    opb_init(&b, EK_OP_TRANSPOSE, yt, 1, x);
    opb_ints(&b, "perm", 3, dup);
    EXPECT_INVALID(&b, "permutation");
    opb_init(&b, EK_OP_TRANSPOSE, yt, 1, x);
    opb_ints(&b, "perm", 3, oor);
    EXPECT_INVALID(&b, "permutation");
    opb_init(&b, EK_OP_TRANSPOSE, yt, 1, x);
    opb_ints(&b, "perm", 2, rev);
    EXPECT_INVALID(&b, "perm");
    opb_init(&b, EK_OP_TRANSPOSE, yt, 1, x);
    EXPECT_INVALID(&b, "missing");
    opb_init(&b, EK_OP_TRANSPOSE, yt, 1, x);
    opb_ints(&b, "perm", 3, id);
    EXPECT_INVALID(&b, "output Y is [4,3,2]");

    /* CONCAT */
    struct tensor *c1 = T(3, 2, 5, 4), *c2 = T(3, 2, 3, 5), *yc = T(3, 2, 8, 4), *yc2 = T(3, 2, 9, 4);
    opb_init(&b, EK_OP_CONCAT, yc, 2, x, c1);
    opb_int(&b, "axis", 3);
    EXPECT_INVALID(&b, "axis");
    opb_init(&b, EK_OP_CONCAT, yc, 2, x, c1);
    opb_int(&b, "axis", -1);
    EXPECT_INVALID(&b, "axis");
    opb_init(&b, EK_OP_CONCAT, yc, 2, x, c2);
    opb_int(&b, "axis", 1);
    EXPECT_INVALID(&b, "every dim but axis 1");
    opb_init(&b, EK_OP_CONCAT, yc2, 2, x, c1);
    opb_int(&b, "axis", 1);
    EXPECT_INVALID(&b, "add up");
    opb_init(&b, EK_OP_CONCAT, yc, 0);
    EXPECT_INVALID(&b, "at least");

    /* PAD */
    struct tensor *yp = T(3, 4, 5, 6);
    const int64_t pads[6] = {1, 1, 1, 1, 1, 1}, neg[6] = {-1, 1, 1, 3, 1, 1}, refl[6] = {2, 0, 0, 0, 2, 2};
    opb_init(&b, EK_OP_PAD, yp, 1, x);
    opb_ints(&b, "pads", 6, neg);
    EXPECT_INVALID(&b, "negative");
    opb_init(&b, EK_OP_PAD, yp, 1, x);
    opb_ints(&b, "pads", 6, refl);
    opb_int(&b, "mode", 1);
    EXPECT_INVALID(&b, "reflect");
    opb_init(&b, EK_OP_PAD, yp, 1, x);
    opb_ints(&b, "pads", 6, pads);
    opb_int(&b, "mode", 3);
    EXPECT_INVALID(&b, "mode");
    opb_init(&b, EK_OP_PAD, y, 1, x);
    opb_ints(&b, "pads", 6, pads);
    EXPECT_INVALID(&b, "axis 0 should be 2 + 1 + 1");
    opb_init(&b, EK_OP_PAD, yp, 1, x);
    opb_ints(&b, "pads", 3, pads);
    EXPECT_INVALID(&b, "pads");
    const int64_t huge[6] = {INT64_MAX, 0, 0, INT64_MAX, 0, 0};
    opb_init(&b, EK_OP_PAD, yp, 1, x);
    opb_ints(&b, "pads", 6, huge);
    EXPECT_INVALID(&b, "axis 0");

    /* SLICE */
    struct tensor *ys = T(3, 2, 2, 2);
    const int64_t st0[3] = {0, 0, 0}, st_bad[3] = {0, 3, 0}, st_neg[3] = {0, -1, 0}, st_end[3] = {1, 0, 0};
    const int64_t ones[3] = {1, 1, 1}, zero_step[3] = {1, 0, 1}, back[3] = {1, -1, 1}, far[3] = {1, 2, 3};
    const int64_t minstep[3] = {1, INT64_MIN, 1};
    opb_init(&b, EK_OP_SLICE, ys, 1, x);
    opb_ints(&b, "starts", 3, st0);
    opb_ints(&b, "steps", 3, zero_step);
    EXPECT_INVALID(&b, "steps");
    opb_init(&b, EK_OP_SLICE, ys, 1, x);
    opb_ints(&b, "starts", 3, st_bad);
    EXPECT_INVALID(&b, "start 3 at axis 1");
    opb_init(&b, EK_OP_SLICE, ys, 1, x);
    opb_ints(&b, "starts", 3, st_neg);
    EXPECT_INVALID(&b, "start -1");
    opb_init(&b, EK_OP_SLICE, ys, 1, x);
    opb_ints(&b, "starts", 3, st_end); /* rows 1, 2 of a dim of 2 */
    opb_ints(&b, "steps", 3, ones);
    EXPECT_INVALID(&b, "axis 0");
    opb_init(&b, EK_OP_SLICE, ys, 1, x);
    opb_ints(&b, "starts", 3, st0); /* 0, -1: below 0 */
    opb_ints(&b, "steps", 3, back);
    EXPECT_INVALID(&b, "axis 1");
    opb_init(&b, EK_OP_SLICE, ys, 1, x);
    opb_ints(&b, "starts", 3, st0);
    opb_ints(&b, "steps", 3, far); /* axis 2: 0, 3 of a dim of 4 is fine; axis 1: 0, 2 of 3 is fine */
    if (CHECK_OK(opb_prepare(&b)))
        opb_release(&b);
    opb_init(&b, EK_OP_SLICE, ys, 1, x);
    opb_ints(&b, "starts", 3, st_end);
    opb_ints(&b, "steps", 3, minstep);
    EXPECT_INVALID(&b, "axis 0"); /* start 1 + 1 exceeds dim 2 first */
    const int64_t st_one[3] = {0, 2, 0};
    opb_init(&b, EK_OP_SLICE, ys, 1, x);
    opb_ints(&b, "starts", 3, st_one);
    opb_ints(&b, "steps", 3, minstep);
    EXPECT_INVALID(&b, "axis 1");
    opb_init(&b, EK_OP_SLICE, yt, 1, x);
    EXPECT_INVALID(&b, "starts");
    opb_init(&b, EK_OP_SLICE, yc, 1, x);
    opb_ints(&b, "starts", 2, st0);
    EXPECT_INVALID(&b, "starts");
    struct tensor *y2 = T(2, 2, 3);
    opb_init(&b, EK_OP_SLICE, y2, 1, x);
    opb_ints(&b, "starts", 3, st0);
    EXPECT_INVALID(&b, "rank");

    tensor_free(x);
    tensor_free(yt);
    tensor_free(y);
    tensor_free(c1);
    tensor_free(c2);
    tensor_free(yc);
    tensor_free(yc2);
    tensor_free(yp);
    tensor_free(ys);
    tensor_free(y2);
}

static void test_reject_softmax_reduce(void) {
    struct tensor *x = T(3, 2, 3, 4), *y = T(3, 2, 3, 4), *yk = T(3, 2, 1, 4), *yr = T(2, 2, 4);
    REQUIRE(x && y && yk && yr);
    struct opb b;
    opb_init(&b, EK_OP_SOFTMAX, y, 1, x);
    opb_int(&b, "axis", 3);
    EXPECT_INVALID(&b, "axis");
    opb_init(&b, EK_OP_SOFTMAX, yk, 1, x);
    opb_int(&b, "axis", 1);
    EXPECT_INVALID(&b, "shape");

    const int64_t a1[1] = {1}, unsorted[2] = {2, 1}, dup[2] = {1, 1}, oor[1] = {3}, many[4] = {0, 1, 2, 2};
    opb_init(&b, EK_OP_REDUCE_MEAN, yk, 1, x);
    opb_ints(&b, "axes", 2, unsorted);
    EXPECT_INVALID(&b, "sorted");
    opb_init(&b, EK_OP_REDUCE_MEAN, yk, 1, x);
    opb_ints(&b, "axes", 2, dup);
    EXPECT_INVALID(&b, "unique");
    opb_init(&b, EK_OP_REDUCE_MEAN, yk, 1, x);
    opb_ints(&b, "axes", 1, oor);
    EXPECT_INVALID(&b, "axes");
    opb_init(&b, EK_OP_REDUCE_MEAN, yk, 1, x);
    opb_ints(&b, "axes", 4, many);
    EXPECT_INVALID(&b, "at most 3");
    opb_init(&b, EK_OP_REDUCE_MEAN, yk, 1, x);
    opb_ints(&b, "axes", 1, a1);
    opb_int(&b, "keepdims", 2);
    EXPECT_INVALID(&b, "keepdims");
    opb_init(&b, EK_OP_REDUCE_MEAN, yr, 1, x); /* keepdims defaults to 1 */
    opb_ints(&b, "axes", 1, a1);
    EXPECT_INVALID(&b, "expected [2,1,4]");
    opb_init(&b, EK_OP_REDUCE_MEAN, yk, 1, x);
    opb_ints(&b, "axes", 1, a1);
    opb_int(&b, "keepdims", 0);
    EXPECT_INVALID(&b, "expected [2,4]");
    opb_init(&b, EK_OP_REDUCE_MEAN, yk, 1, x);
    EXPECT_INVALID(&b, "axes");
    tensor_free(x);
    tensor_free(y);
    tensor_free(yk);
    tensor_free(yr);
}

/* A larger run through several ranges of the team: every range boundary must line up. */
static void test_large_broadcast(void) {
    check_binary(EK_OP_ADD, T(4, 3, 17, 19, 64), T(1, 64), T(4, 3, 17, 19, 64), 0.0f, 6.0f, __LINE__);
    check_binary(EK_OP_MUL, T(4, 3, 17, 19, 64), T(4, 3, 1, 1, 64), T(4, 3, 17, 19, 64), -INFINITY, INFINITY,
                 __LINE__);
    struct tensor *x = T(4, 1, 3, 224, 224);
    const int64_t to_nhwc[4] = {0, 2, 3, 1};
    check_transpose(x, to_nhwc, __LINE__);
    tensor_free(x);
}

/* ---- TOP_K and NON_MAX_SUPPRESSION (select.c) ---- */

struct sel {
    struct ek_op op;
    const struct ek_tensor_desc *in[5];
    const struct ek_tensor_desc *out[2];
    struct ek_attr attrs[4];
};

static void mkdesc(struct ek_tensor_desc *d, const char *name, ek_dtype_t dtype, int rank, const int64_t *dims) {
    memset(d, 0, sizeof *d);
    d->name = name;
    d->dtype = dtype;
    d->rank = rank;
    d->count = 1;
    for (int i = 0; i < rank; i++) {
        d->dims[i] = dims[i];
        d->count *= (size_t)dims[i];
    }
    d->nbytes = d->count * (dtype == EK_DTYPE_INT64 ? 8u : 4u);
    d->storage = EK_STORAGE_ARENA;
}

static void sel_init(struct sel *s, enum ek_op_type type, int n_in, int n_out) {
    memset(s, 0, sizeof *s);
    s->op.type = type;
    s->op.name = "node";
    s->op.n_in = n_in;
    s->op.n_out = n_out;
    s->op.in = s->in;
    s->op.out = s->out;
    s->op.attrs = s->attrs;
}

static void sel_int(struct sel *s, const char *name, int64_t v) {
    struct ek_attr *a = &s->attrs[s->op.n_attrs++];
    a->name = name;
    a->type = EK_ATTR_INT;
    a->count = 1;
    a->i = v;
}

static ek_status_t sel_run(struct sel *s, const void *const *in, void *const *out) {
    return ek_portable_kernel((int)s->op.type)->run(&s->op, in, out, test_exec());
}

static void sel_release(struct sel *s) { ek_portable_kernel((int)s->op.type)->release(&s->op); }

static int sel_invalid(struct sel *s, const char *needle, int line) {
    ek_status_t st = ek_portable_kernel((int)s->op.type)->prepare(&s->op);
    if (st == EK_OK)
        sel_release(s);
    char what[256];
    if (st != EK_ERR_MODEL_INVALID || !strstr(ek_last_error(), needle) || s->op.params) {
        snprintf(what, sizeof what, "prepare returned %s, expected EK_ERR_MODEL_INVALID mentioning \"%s\"",
                 ek_status_name(st), needle);
        ekt_report_failure(__FILE__, line, what);
        return 0;
    }
    return 1;
}
#define SEL_INVALID(s, needle) sel_invalid((s), (needle), __LINE__)

/* Values with ties: multiples of 0.5 in [-3, 3). */
static float tied(void) { return floorf(rnd(-3.0f, 3.0f) * 2.0f) / 2.0f; }

/* The naive top-k of one row of n values with stride: repeated selection, ties to the lower index. */
static void ref_topk_row(const float *x, size_t n, size_t stride, size_t k, bool largest, float *vals, int64_t *idx,
                         size_t ostride) {
    bool used[64] = {false};
    for (size_t r = 0; r < k; r++) {
        size_t best = n;
        for (size_t i = 0; i < n; i++) {
            if (used[i])
                continue;
            float v = x[i * stride];
            if (best == n || (largest ? v > x[best * stride] : v < x[best * stride]))
                best = i;
        }
        used[best] = true;
        vals[r * ostride] = x[best * stride];
        idx[r * ostride] = (int64_t)best;
    }
}

/* TOP_K on X of `rank` dims, K given (CONSTANT, static outputs; or at run time, DYNAMIC outputs of the
 * axis dim's bound), against the reference. */
static void check_topk(int rank, const int64_t *dims, int axis, int64_t k, bool largest, bool dynamic, int line) {
    struct ek_tensor_desc x, kd, v, ix;
    mkdesc(&x, "X", EK_DTYPE_FLOAT32, rank, dims);
    int64_t kdims[1] = {1}, odims[EK_MAX_DIMS];
    memcpy(odims, dims, (size_t)rank * sizeof *dims);
    odims[axis] = dynamic ? dims[axis] : k;
    mkdesc(&kd, "K", EK_DTYPE_INT64, 1, kdims);
    mkdesc(&v, "Values", EK_DTYPE_FLOAT32, rank, odims);
    mkdesc(&ix, "Indices", EK_DTYPE_INT64, rank, odims);
    v.dynamic = ix.dynamic = dynamic;
    v.storage = ix.storage = dynamic ? EK_STORAGE_OUTPUT : EK_STORAGE_ARENA;
    if (!dynamic) {
        kd.storage = EK_STORAGE_CONSTANT;
        kd.constant = &k;
    }
    float *xv = malloc(x.count * sizeof *xv), *vv = malloc(v.count * sizeof *vv), *wv = malloc(v.count * sizeof *wv);
    int64_t *iv = malloc(ix.count * sizeof *iv), *wi = malloc(ix.count * sizeof *wi);
    REQUIRE(xv && vv && wv && iv && wi);
    for (size_t i = 0; i < x.count; i++)
        xv[i] = tied();
    size_t outer = 1, inner = 1, n = (size_t)dims[axis];
    for (int d = 0; d < axis; d++)
        outer *= (size_t)dims[d];
    for (int d = axis + 1; d < rank; d++)
        inner *= (size_t)dims[d];
    for (size_t o = 0; o < outer; o++) /* compact, as C-order of the produced dims */
        for (size_t j = 0; j < inner; j++)
            ref_topk_row(xv + o * n * inner + j, n, inner, (size_t)k, largest, wv + o * (size_t)k * inner + j,
                         wi + o * (size_t)k * inner + j, inner);
    struct sel s;
    sel_init(&s, EK_OP_TOP_K, 2, 2);
    s.in[0] = &x;
    s.in[1] = &kd;
    s.out[0] = &v;
    s.out[1] = &ix;
    sel_int(&s, "axis", axis);
    sel_int(&s, "largest", largest);
    if (ekt_check_status(__FILE__, line, "prepare TOP_K", ek_portable_kernel(EK_OP_TOP_K)->prepare(&s.op), EK_OK)) {
        const void *in[2] = {xv, &k};
        void *out[2] = {vv, iv};
#ifdef EK_KERNEL_TEST_SHIM
        forget_dims();
#endif
        if (ekt_check_status(__FILE__, line, "run TOP_K", sel_run(&s, in, out), EK_OK)) {
            size_t produced = outer * (size_t)k * inner;
            compare(vv, wv, produced, 0.0f, "TOP_K values", line);
            for (size_t i = 0; i < produced; i++)
                if (iv[i] != wi[i]) {
                    char msg[128];
                    snprintf(msg, sizeof msg, "TOP_K index %zu is %lld, expected %lld", i, (long long)iv[i],
                             (long long)wi[i]);
                    ekt_report_failure(__FILE__, line, msg);
                    break;
                }
#ifdef EK_KERNEL_TEST_SHIM
            if (dynamic) {
                const int64_t *got_v = reported_dims(&v), *got_i = reported_dims(&ix);
                bool ok = got_v && got_i;
                for (int d = 0; ok && d < rank; d++)
                    ok = got_v[d] == (d == axis ? k : dims[d]) && got_i[d] == got_v[d];
                if (!ok)
                    ekt_report_failure(__FILE__, line, "TOP_K did not report its produced dims");
            }
#endif
        }
        sel_release(&s);
    }
    free(xv);
    free(vv);
    free(wv);
    free(iv);
    free(wi);
}

static void test_top_k(void) {
    for (int trial = 0; trial < 60; trial++) {
        int rank = 1 + (int)rnd(0.0f, 3.99f);
        int64_t dims[EK_MAX_DIMS];
        for (int d = 0; d < rank; d++)
            dims[d] = 1 + (int64_t)rnd(0.0f, 6.99f);
        int axis = (int)rnd(0.0f, (float)rank - 0.01f);
        if (trial % 5 == 0)
            dims[axis] = 40; /* longer rows */
        int64_t k = 1 + (int64_t)rnd(0.0f, (float)dims[axis] - 0.01f);
        check_topk(rank, dims, axis, k, trial % 2 == 0, false, __LINE__);
    }
    const int64_t one[1] = {1}, row[2] = {3, 17};
    check_topk(1, one, 0, 1, true, false, __LINE__);
    check_topk(2, row, 1, 17, false, false, __LINE__); /* K = the whole axis */
}

#ifdef EK_KERNEL_TEST_SHIM
static void test_top_k_dynamic(void) {
    for (int trial = 0; trial < 30; trial++) {
        int rank = 1 + (int)rnd(0.0f, 2.99f);
        int64_t dims[EK_MAX_DIMS];
        for (int d = 0; d < rank; d++)
            dims[d] = 1 + (int64_t)rnd(0.0f, 8.99f);
        int axis = (int)rnd(0.0f, (float)rank - 0.01f);
        int64_t k = trial == 0 ? 0 : trial == 1 ? dims[axis] : (int64_t)rnd(0.0f, (float)dims[axis] + 0.99f);
        check_topk(rank, dims, axis, k, trial % 3 != 0, true, __LINE__);
    }
    /* K outside 0 .. the bound: a clear error naming both, nothing written past the bound */
    struct ek_tensor_desc x, kd, v, ix;
    const int64_t dims[2] = {2, 5}, one[1] = {1};
    mkdesc(&x, "X", EK_DTYPE_FLOAT32, 2, dims);
    mkdesc(&kd, "K", EK_DTYPE_INT64, 1, one);
    mkdesc(&v, "Values", EK_DTYPE_FLOAT32, 2, dims);
    mkdesc(&ix, "Indices", EK_DTYPE_INT64, 2, dims);
    v.dynamic = ix.dynamic = true;
    struct sel s;
    sel_init(&s, EK_OP_TOP_K, 2, 2);
    s.in[0] = &x;
    s.in[1] = &kd;
    s.out[0] = &v;
    s.out[1] = &ix;
    REQUIRE_OK(ek_portable_kernel(EK_OP_TOP_K)->prepare(&s.op));
    float xv[10] = {0}, vv[10];
    int64_t iv[10];
    const int64_t bad[3] = {6, -1, INT64_MAX};
    for (int i = 0; i < 3; i++) {
        const void *in[2] = {xv, &bad[i]};
        void *out[2] = {vv, iv};
        CHECK_STATUS(sel_run(&s, in, out), EK_ERR_INVALID_ARG);
        char want[64];
        snprintf(want, sizeof want, "K is %lld, outside 0 .. 5", (long long)bad[i]);
        if (!strstr(ek_last_error(), want))
            ekt_report_failure(__FILE__, __LINE__, "the K error does not name K and the bound");
    }
    sel_release(&s);
}
#endif

static void test_reject_top_k(void) {
    struct ek_tensor_desc x, kd, kf, v, ix, vbad;
    const int64_t dims[2] = {2, 5}, odims[2] = {2, 3}, bad[2] = {3, 3}, one[1] = {1};
    int64_t k3 = 3;
    mkdesc(&x, "X", EK_DTYPE_FLOAT32, 2, dims);
    mkdesc(&kd, "K", EK_DTYPE_INT64, 1, one);
    mkdesc(&kf, "K", EK_DTYPE_FLOAT32, 1, one);
    mkdesc(&v, "Values", EK_DTYPE_FLOAT32, 2, odims);
    mkdesc(&ix, "Indices", EK_DTYPE_INT64, 2, odims);
    mkdesc(&vbad, "Values", EK_DTYPE_FLOAT32, 2, bad);
    kd.storage = EK_STORAGE_CONSTANT;
    kd.constant = &k3;
    struct sel s;
    sel_init(&s, EK_OP_TOP_K, 2, 2);
    s.in[0] = &x, s.in[1] = &kf, s.out[0] = &v, s.out[1] = &ix;
    SEL_INVALID(&s, "input K must be int64");
    sel_init(&s, EK_OP_TOP_K, 2, 2);
    s.in[0] = &x, s.in[1] = &kd, s.out[0] = &v, s.out[1] = &ix;
    sel_int(&s, "axis", 2);
    SEL_INVALID(&s, "axis");
    sel_init(&s, EK_OP_TOP_K, 2, 2);
    s.in[0] = &x, s.in[1] = &kd, s.out[0] = &vbad, s.out[1] = &ix;
    SEL_INVALID(&s, "X's shape");
    sel_init(&s, EK_OP_TOP_K, 2, 2);
    s.in[0] = &x, s.in[1] = &kd, s.out[0] = &v, s.out[1] = &ix;
    sel_int(&s, "largest", 2);
    SEL_INVALID(&s, "largest");
    k3 = 4; /* the constant K differs from the outputs' dim */
    sel_init(&s, EK_OP_TOP_K, 2, 2);
    s.in[0] = &x, s.in[1] = &kd, s.out[0] = &v, s.out[1] = &ix;
    SEL_INVALID(&s, "K is 4");
    kd.storage = EK_STORAGE_INPUT; /* a run-time K needs DYNAMIC outputs */
    kd.constant = NULL;
    sel_init(&s, EK_OP_TOP_K, 2, 2);
    s.in[0] = &x, s.in[1] = &kd, s.out[0] = &v, s.out[1] = &ix;
    SEL_INVALID(&s, "DYNAMIC");
    sel_init(&s, EK_OP_TOP_K, 2, 1);
    s.in[0] = &x, s.in[1] = &kd, s.out[0] = &v;
    SEL_INVALID(&s, "outputs Values, Indices");
}

/* ---- NON_MAX_SUPPRESSION: the naive greedy loop (DYNAMIC output: the shim build reports its dims) ---- */
#ifdef EK_KERNEL_TEST_SHIM

static void ref_extent(const float *b, bool center, float *x0, float *x1, float *y0, float *y1) {
    if (center) {
        *x0 = b[0] - b[2] / 2;
        *x1 = b[0] + b[2] / 2;
        *y0 = b[1] - b[3] / 2;
        *y1 = b[1] + b[3] / 2;
    } else {
        *x0 = fminf(b[1], b[3]);
        *x1 = fmaxf(b[1], b[3]);
        *y0 = fminf(b[0], b[2]);
        *y1 = fmaxf(b[0], b[2]);
    }
}

static bool ref_suppress(const float *a, const float *b, bool center, float thr) {
    float ax0, ax1, ay0, ay1, bx0, bx1, by0, by1;
    ref_extent(a, center, &ax0, &ax1, &ay0, &ay1);
    ref_extent(b, center, &bx0, &bx1, &by0, &by1);
    float w = fminf(ax1, bx1) - fmaxf(ax0, bx0), h = fminf(ay1, by1) - fmaxf(ay0, by0);
    if (!(w > 0) || !(h > 0))
        return false;
    float inter = w * h, aa = (ax1 - ax0) * (ay1 - ay0), ab = (bx1 - bx0) * (by1 - by0);
    float uni = aa + ab - inter;
    if (!(inter > 0) || !(aa > 0) || !(ab > 0) || !(uni > 0))
        return false;
    return inter / uni > thr;
}

/* Rows (b, c, i) into want; returns their count. max_out < 0: absent (none). */
static size_t ref_nms(const float *boxes, const float *scores, size_t B, size_t C, size_t N, int64_t max_out,
                      float iou, bool has_score, float score_thr, bool center, int64_t *want) {
    size_t rows = 0;
    for (size_t b = 0; b < B; b++)
        for (size_t c = 0; c < C; c++) {
            const float *sc = scores + (b * C + c) * N;
            bool done[64] = {false};
            int64_t kept[64];
            int64_t nk = 0;
            while (nk < max_out) {
                size_t best = N;
                for (size_t i = 0; i < N; i++)
                    if (!done[i] && !isnan(sc[i]) && (!has_score || sc[i] > score_thr) &&
                        (best == N || sc[i] > sc[best]))
                        best = i;
                if (best == N)
                    break;
                done[best] = true;
                bool keep = true;
                for (int64_t k = 0; k < nk && keep; k++)
                    keep = !ref_suppress(boxes + (b * N + (size_t)kept[k]) * 4, boxes + (b * N + best) * 4, center,
                                         iou);
                if (keep) {
                    kept[nk++] = (int64_t)best;
                    want[3 * rows] = (int64_t)b;
                    want[3 * rows + 1] = (int64_t)c;
                    want[3 * rows + 2] = (int64_t)best;
                    rows++;
                }
            }
        }
    return rows;
}

/* One NMS: max_out < -100 absent; iou < 0 absent (0); score_thr NAN: absent. bound_max: the max_out
 * input is a CONSTANT (bound B*C*min(N, max_out)) else a run-time input (bound B*C*N). */
static void check_nms(size_t B, size_t C, size_t N, const float *boxes, const float *scores, int64_t max_out,
                      float iou, float score_thr, bool center, bool constant_max, ek_status_t expect, int line) {
    struct ek_tensor_desc bd, sd, md, id, td, yd;
    int64_t bdims[3] = {(int64_t)B, (int64_t)N, 4}, sdims[3] = {(int64_t)B, (int64_t)C, (int64_t)N}, one[1] = {1};
    mkdesc(&bd, "boxes", EK_DTYPE_FLOAT32, 3, bdims);
    mkdesc(&sd, "scores", EK_DTYPE_FLOAT32, 3, sdims);
    mkdesc(&md, "max_out", EK_DTYPE_INT64, 1, one);
    mkdesc(&id, "iou", EK_DTYPE_FLOAT32, 0, one);
    mkdesc(&td, "score", EK_DTYPE_FLOAT32, 1, one);
    bool has_max = max_out >= -100, has_iou = !(iou < 0), has_score = !isnan(score_thr);
    if (has_max && constant_max) {
        md.storage = EK_STORAGE_CONSTANT;
        md.constant = &max_out;
    }
    int64_t per = has_max && constant_max ? (max_out < 0 ? 0 : max_out < (int64_t)N ? max_out : (int64_t)N)
                                          : (int64_t)N;
    int64_t ydims[2] = {(int64_t)(B * C) * per, 3};
    if (ydims[0] < 1)
        ydims[0] = 1;
    mkdesc(&yd, "selected_indices", EK_DTYPE_INT64, 2, ydims);
    yd.dynamic = true;
    yd.storage = EK_STORAGE_OUTPUT;
    int64_t *got = malloc(yd.nbytes + 3 * sizeof(int64_t)), *want = malloc(B * C * N * 3 * sizeof(int64_t) + 24);
    REQUIRE(got && want);
    const int64_t canary = 0x5a5a5a5a5a5a5a5aLL;
    for (size_t i = 0; i < yd.count + 3; i++)
        got[i] = canary;
    struct sel s;
    sel_init(&s, EK_OP_NON_MAX_SUPPRESSION, has_score ? 5 : has_iou ? 4 : has_max ? 3 : 2, 1);
    s.in[0] = &bd;
    s.in[1] = &sd;
    s.in[2] = has_max ? &md : NULL;
    s.in[3] = has_iou ? &id : NULL;
    s.in[4] = has_score ? &td : NULL;
    s.out[0] = &yd;
    sel_int(&s, "center_point_box", center);
    if (ekt_check_status(__FILE__, line, "prepare NMS", ek_portable_kernel(EK_OP_NON_MAX_SUPPRESSION)->prepare(&s.op),
                         EK_OK)) {
        const void *in[5] = {boxes, scores, &max_out, &iou, &score_thr};
        void *out[1] = {got};
        forget_dims();
        ek_status_t st = sel_run(&s, in, out);
        if (ekt_check_status(__FILE__, line, "run NMS", st, expect) && st == EK_OK) {
            size_t rows = ref_nms(boxes, scores, B, C, N, has_max ? max_out : 0, has_iou ? iou : 0.0f, has_score,
                                  score_thr, center, want);
            const int64_t *dims = reported_dims(&yd);
            if (!dims || dims[0] != (int64_t)rows || dims[1] != 3) {
                char msg[160];
                snprintf(msg, sizeof msg, "NMS reported %lld rows, expected %zu", dims ? (long long)dims[0] : -1LL,
                         rows);
                ekt_report_failure(__FILE__, line, msg);
            } else if (memcmp(got, want, rows * 3 * sizeof *got) != 0) {
                ekt_report_failure(__FILE__, line, "NMS selected other rows than the reference");
            }
            for (size_t i = yd.count; i < yd.count + 3; i++)
                if (got[i] != canary)
                    ekt_report_failure(__FILE__, line, "NMS wrote past its bound");
        }
        sel_release(&s);
    }
    free(got);
    free(want);
}

static void random_boxes(float *boxes, size_t n, bool center) {
    for (size_t i = 0; i < n; i++) {
        float *b = boxes + 4 * i;
        float a = floorf(rnd(0.0f, 8.0f)), c = floorf(rnd(0.0f, 8.0f));
        float w = floorf(rnd(1.0f, 5.0f)), h = floorf(rnd(1.0f, 5.0f));
        if (center) {
            b[0] = a, b[1] = c, b[2] = w, b[3] = h;
        } else if (i % 2) { /* y1, x1, y2, x2 */
            b[0] = a, b[1] = c, b[2] = a + h, b[3] = c + w;
        } else { /* corners swapped */
            b[0] = a + h, b[1] = c + w, b[2] = a, b[3] = c;
        }
    }
}

static void test_nms(void) {
    float boxes[2 * 40 * 4], scores[2 * 3 * 40];
    for (int trial = 0; trial < 80; trial++) {
        size_t B = 1 + (size_t)rnd(0.0f, 1.99f), C = 1 + (size_t)rnd(0.0f, 2.99f), N = 1 + (size_t)rnd(0.0f, 39.99f);
        bool center = trial % 4 == 3;
        random_boxes(boxes, B * N, center);
        for (size_t i = 0; i < B * C * N; i++)
            scores[i] = floorf(rnd(0.0f, 1.0f) * 8.0f) / 8.0f; /* ties */
        int64_t max_out = trial % 7 == 0 ? -1000 : (int64_t)rnd(-1.0f, (float)N + 3.0f);
        float iou = trial % 9 == 0 ? -1.0f : floorf(rnd(0.0f, 1.0f) * 10.0f) / 10.0f;
        float thr = trial % 3 == 0 ? NAN : floorf(rnd(0.0f, 1.0f) * 8.0f) / 8.0f;
        check_nms(B, C, N, boxes, scores, max_out, iou, thr, center, trial % 2 == 0, EK_OK, __LINE__);
    }
    /* boundaries */
    random_boxes(boxes, 10, false);
    for (int i = 0; i < 10; i++)
        scores[i] = 0.5f;
    check_nms(1, 1, 10, boxes, scores, -1000, 0.5f, NAN, false, true, EK_OK, __LINE__); /* no max: none */
    check_nms(1, 1, 10, boxes, scores, 0, 0.5f, NAN, false, true, EK_OK, __LINE__);
    check_nms(1, 1, 10, boxes, scores, -7, 0.5f, NAN, false, false, EK_OK, __LINE__);
    check_nms(1, 1, 10, boxes, scores, 100, 0.5f, NAN, false, false, EK_OK, __LINE__); /* more than N */
    check_nms(1, 1, 10, boxes, scores, 100, 0.5f, 0.5f, false, true, EK_OK, __LINE__); /* > is strict: none */
    check_nms(1, 1, 10, boxes, scores, 5, 1.5f, NAN, false, true, EK_ERR_INVALID_ARG, __LINE__);
    CHECK_ERROR_MENTIONS("iou_threshold is 1.5");
    check_nms(1, 1, 10, boxes, scores, 5, NAN, NAN, false, true, EK_ERR_INVALID_ARG, __LINE__);
    for (int i = 0; i < 10; i++) /* identical boxes: one survives */
        memcpy(boxes + 4 * i, boxes, 4 * sizeof *boxes);
    check_nms(1, 1, 10, boxes, scores, 10, 0.5f, NAN, false, true, EK_OK, __LINE__);
    scores[3] = NAN; /* NaN scores are never selected */
    scores[0] = NAN;
    boxes[4 * 5] = NAN; /* nor do NaN coordinates crash or suppress */
    check_nms(1, 1, 10, boxes, scores, 10, 0.5f, NAN, false, true, EK_OK, __LINE__);
    check_nms(1, 1, 10, boxes, scores, 10, 0.0f, 0.1f, true, false, EK_OK, __LINE__);
    for (int i = 0; i < 10; i++)
        scores[i] = NAN;
    check_nms(1, 1, 10, boxes, scores, 10, 0.5f, NAN, false, true, EK_OK, __LINE__);
}
#endif

static void test_reject_nms(void) {
    struct ek_tensor_desc bd, b3, sd, s2, md, mf, yd, ys;
    const int64_t bdims[3] = {1, 6, 4}, b3dims[3] = {1, 6, 3}, sdims[3] = {1, 2, 6}, s2dims[3] = {1, 2, 5},
                  one[1] = {1}, ydims[2] = {12, 3}, small[2] = {5, 3};
    int64_t max_out = 3;
    mkdesc(&bd, "boxes", EK_DTYPE_FLOAT32, 3, bdims);
    mkdesc(&b3, "boxes", EK_DTYPE_FLOAT32, 3, b3dims);
    mkdesc(&sd, "scores", EK_DTYPE_FLOAT32, 3, sdims);
    mkdesc(&s2, "scores", EK_DTYPE_FLOAT32, 3, s2dims);
    mkdesc(&md, "max", EK_DTYPE_INT64, 1, one);
    mkdesc(&mf, "max", EK_DTYPE_FLOAT32, 1, one);
    md.storage = EK_STORAGE_CONSTANT;
    md.constant = &max_out;
    mkdesc(&yd, "selected_indices", EK_DTYPE_INT64, 2, ydims);
    mkdesc(&ys, "selected_indices", EK_DTYPE_INT64, 2, small);
    yd.dynamic = ys.dynamic = true;
    struct sel s;
    sel_init(&s, EK_OP_NON_MAX_SUPPRESSION, 3, 1);
    s.in[0] = &b3, s.in[1] = &sd, s.in[2] = &md, s.out[0] = &yd;
    SEL_INVALID(&s, "[B,N,4] and [B,C,N]");
    sel_init(&s, EK_OP_NON_MAX_SUPPRESSION, 3, 1);
    s.in[0] = &bd, s.in[1] = &s2, s.in[2] = &md, s.out[0] = &yd;
    SEL_INVALID(&s, "[B,N,4] and [B,C,N]");
    sel_init(&s, EK_OP_NON_MAX_SUPPRESSION, 3, 1);
    s.in[0] = &bd, s.in[1] = &sd, s.in[2] = &mf, s.out[0] = &yd;
    SEL_INVALID(&s, "max_output_boxes_per_class must be int64");
    sel_init(&s, EK_OP_NON_MAX_SUPPRESSION, 3, 1);
    s.in[0] = &bd, s.in[1] = &sd, s.in[2] = &md, s.out[0] = &ys; /* 1 x 2 x 3 rows need 6 */
    SEL_INVALID(&s, "fewer than the 6");
    sel_init(&s, EK_OP_NON_MAX_SUPPRESSION, 3, 1);
    s.in[0] = &bd, s.in[1] = &sd, s.in[2] = &md, s.out[0] = &yd;
    sel_int(&s, "center_point_box", 2);
    SEL_INVALID(&s, "center_point_box");
    yd.dynamic = false;
    sel_init(&s, EK_OP_NON_MAX_SUPPRESSION, 3, 1);
    s.in[0] = &bd, s.in[1] = &sd, s.in[2] = &md, s.out[0] = &yd;
    SEL_INVALID(&s, "DYNAMIC");
}

int main(void) {
    RUN(test_registry);
    RUN(test_binary_broadcast);
    RUN(test_prelu);
    RUN(test_unary);
    RUN(test_transpose);
    RUN(test_concat);
    RUN(test_pad);
    RUN(test_slice);
    RUN(test_softmax);
    RUN(test_reduce_mean);
    RUN(test_reshape);
    RUN(test_reject_elementwise);
    RUN(test_reject_shape);
    RUN(test_reject_softmax_reduce);
    RUN(test_large_broadcast);
    RUN(test_top_k);
    RUN(test_reject_top_k);
    RUN(test_reject_nms);
#ifdef EK_KERNEL_TEST_SHIM
    RUN(test_top_k_dynamic);
    RUN(test_nms);
#endif
    return ek_test_summary();
}
