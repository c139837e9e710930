/* The portable element-wise, shape, softmax and reduce kernels against naive reference loops, and
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
    return ek_test_summary();
}
