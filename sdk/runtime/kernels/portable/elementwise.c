/* Element-wise kernels: ADD, SUB, MUL, DIV and PRELU with numpy broadcasting, and the unary
 * activations RELU, CLIP, LEAKY_RELU, SIGMOID, HARD_SIGMOID, HARD_SWISH, TANH.
 *
 * A binary op is planned once in prepare(): the output dims with, per input, the element stride that
 * walks it along each output dim (0 where the input broadcasts). Dims of size 1 are dropped and
 * neighbours that both inputs walk contiguously (or both broadcast) merge, so the common cases collapse
 * to one or two dims: same shapes -> one contiguous run, a scalar -> stride 0, a per-channel (last-dim)
 * operand -> rows of C against one vector. run() walks the output in ranges, innermost dim as a tight
 * loop specialised on the two inner strides (each 0 or 1). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "helpers.h"
#include "portable.h"

/* Below this many elements a run stays on the calling thread (tests lower it to cover the splits). */
#ifndef EK_KERNEL_PAR_MIN
#define EK_KERNEL_PAR_MIN 16384
#endif

/* ---- helpers shared by the op families of this file ---- */

static ek_status_t check_counts(const struct ek_op *op, int n_in, int n_out) {
    if (op->n_in != n_in || op->n_out != n_out || !op->in || !op->out)
        return ek_op_invalid(op, "takes %d inputs and %d outputs, has %d and %d", n_in, n_out, op->n_in,
                             op->n_out);
    return EK_OK;
}

static void run_ranges(struct ek_exec *exec, size_t count, ek_range_fn fn, void *arg) {
    if (count == 0)
        return;
    if (exec && count >= EK_KERNEL_PAR_MIN && ek_exec_threads(exec) > 1)
        ek_parallel_for(exec, count, fn, arg);
    else
        fn(arg, 0, count, 0);
}

static void release_params(struct ek_op *op) {
    free(op->params);
    op->params = NULL;
}

/* ---- binary ops ---- */

enum bin_kind { BIN_ADD, BIN_SUB, BIN_MUL, BIN_DIV, BIN_PRELU };

struct bin_params {
    enum bin_kind kind;
    int rank;                 /* >= 1 after collapsing */
    size_t dims[EK_MAX_DIMS]; /* collapsed output dims */
    size_t sx[EK_MAX_DIMS];   /* element stride of X (resp. B) per output dim; 0 where it broadcasts */
    size_t sb[EK_MAX_DIMS];
    size_t count;
    float lo, hi; /* the act clamp; -inf, +inf without one */
};

static ek_status_t prepare_binary(struct ek_op *op, enum bin_kind kind) {
    ek_status_t st = check_counts(op, 2, 1);
    const char *bname = kind == BIN_PRELU ? "slope" : "B";
    if (st == EK_OK)
        st = ek_check_float_tensor(op, op->in[0], "input X", EK_RANK_ANY);
    if (st == EK_OK)
        st = ek_check_float_tensor(op, op->in[1], kind == BIN_PRELU ? "input slope" : "input B", EK_RANK_ANY);
    if (st == EK_OK)
        st = ek_check_float_tensor(op, op->out[0], "output Y", EK_RANK_ANY);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *x = op->in[0], *b = op->in[1], *y = op->out[0];
    char s1[200], s2[200], s3[200], s4[200];

    /* The shape the inputs broadcast to: numpy rules (PRELU: the slope broadcasts to X). */
    int rank = x->rank > b->rank ? x->rank : b->rank;
    int64_t want[EK_MAX_DIMS];
    for (int i = 0; i < rank; i++) {
        int64_t dx = i < x->rank ? x->dims[x->rank - 1 - i] : 1;
        int64_t db = i < b->rank ? b->dims[b->rank - 1 - i] : 1;
        bool ok = kind == BIN_PRELU ? (i < x->rank && (db == dx || db == 1))
                                    : (dx == db || dx == 1 || db == 1);
        if (!ok)
            return ek_op_invalid(op, "X %s and %s %s do not broadcast%s", ek_shape_str(x, s1, sizeof s1),
                                 bname, ek_shape_str(b, s2, sizeof s2),
                                 kind == BIN_PRELU ? " to X's shape" : "");
        want[rank - 1 - i] = dx > db ? dx : db;
    }
    bool same = y->rank == rank;
    for (int i = 0; same && i < rank; i++)
        same = y->dims[i] == want[i];
    if (!same) {
        struct ek_tensor_desc expect = {0};
        expect.rank = rank;
        memcpy(expect.dims, want, sizeof want);
        return ek_op_invalid(op, "output Y is %s, expected %s from X %s and %s %s",
                             ek_shape_str(y, s1, sizeof s1), ek_shape_str(&expect, s2, sizeof s2),
                             ek_shape_str(x, s3, sizeof s3), bname, ek_shape_str(b, s4, sizeof s4));
    }

    float lo = -INFINITY, hi = INFINITY;
    if (kind != BIN_PRELU) {
        st = ek_attr_float(op, "act_min", -INFINITY, &lo);
        if (st == EK_OK)
            st = ek_attr_float(op, "act_max", INFINITY, &hi);
        if (st != EK_OK)
            return st;
        if (lo > hi)
            return ek_op_invalid(op, "act_min %g is above act_max %g", (double)lo, (double)hi);
    }

    struct bin_params *p = calloc(1, sizeof *p);
    if (!p)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "out of memory preparing op '%.120s'", op->name ? op->name : "");
    p->kind = kind;
    p->count = y->count;
    p->lo = lo;
    p->hi = hi;

    p->rank = ek_broadcast_walk(x, b, want, rank, p->dims, p->sx, p->sb);
    op->params = p;
    op->scratch_per_thread = 0;
    return EK_OK;
}

/* One inner run of n outputs. sx and sb are 0 or 1 (the innermost non-unit output dim is contiguous
 * or broadcast in each input), so the four loops below cover it and each vectorises. The act clamp is
 * fused (lo, hi = -inf, +inf without one: two cheap vector ops instead of a second pass). */
#define CLAMP(v) (v = v < lo ? lo : v, v > hi ? hi : v) /* two selects: each vectorises */
#define BIN_LOOPS(EXPR)                                                                                 \
    do {                                                                                                \
        if (sx && sb) {                                                                                 \
            for (size_t i = 0; i < n; i++) {                                                            \
                float a = x[i], c = b[i], v = (EXPR);                                                   \
                y[i] = CLAMP(v);                                                                        \
            }                                                                                           \
        } else if (sx) {                                                                                \
            const float c = b[0];                                                                       \
            for (size_t i = 0; i < n; i++) {                                                            \
                float a = x[i], v = (EXPR);                                                             \
                y[i] = CLAMP(v);                                                                        \
            }                                                                                           \
        } else if (sb) {                                                                                \
            const float a = x[0];                                                                       \
            for (size_t i = 0; i < n; i++) {                                                            \
                float c = b[i], v = (EXPR);                                                             \
                y[i] = CLAMP(v);                                                                        \
            }                                                                                           \
        } else {                                                                                        \
            const float a = x[0], c = b[0];                                                             \
            float v = (EXPR);                                                                           \
            const float w = CLAMP(v);                                                                   \
            for (size_t i = 0; i < n; i++)                                                              \
                y[i] = w;                                                                               \
        }                                                                                               \
    } while (0)

static void bin_inner(enum bin_kind kind, const float *x, size_t sx, const float *b, size_t sb, float *y,
                      size_t n, float lo, float hi) {
    switch (kind) {
    case BIN_ADD:
        BIN_LOOPS(a + c);
        break;
    case BIN_SUB:
        BIN_LOOPS(a - c);
        break;
    case BIN_MUL:
        BIN_LOOPS(a * c);
        break;
    case BIN_DIV:
        BIN_LOOPS(a / c);
        break;
    case BIN_PRELU:
        BIN_LOOPS(a < 0.0f ? c * a : a);
        break;
    }
}

struct bin_job {
    const struct bin_params *p;
    const float *x, *b;
    float *y;
};

static void bin_range(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct bin_job *job = arg;
    const struct bin_params *p = job->p;
    const int last = p->rank - 1;
    size_t idx[EK_MAX_DIMS];
    size_t ox = 0, ob = 0, rest = begin;
    for (int d = last; d >= 0; d--) {
        idx[d] = rest % p->dims[d];
        rest /= p->dims[d];
        ox += idx[d] * p->sx[d];
        ob += idx[d] * p->sb[d];
    }
    size_t pos = begin;
    while (pos < end) {
        size_t n = p->dims[last] - idx[last];
        if (n > end - pos)
            n = end - pos;
        bin_inner(p->kind, job->x + ox, p->sx[last], job->b + ob, p->sb[last], job->y + pos, n, p->lo, p->hi);
        pos += n;
        if (pos >= end)
            break;
        /* Advance the odometer by n along the innermost dim, carrying outwards. */
        idx[last] += n;
        ox += n * p->sx[last];
        ob += n * p->sb[last];
        for (int d = last; d > 0 && idx[d] == p->dims[d]; d--) {
            ox -= idx[d] * p->sx[d];
            ob -= idx[d] * p->sb[d];
            idx[d] = 0;
            idx[d - 1]++;
            ox += p->sx[d - 1];
            ob += p->sb[d - 1];
        }
    }
}

static ek_status_t run_binary(const struct ek_op *op, const void *const *in, void *const *out,
                              struct ek_exec *exec) {
    struct bin_job job = {op->params, in[0], in[1], out[0]};
    run_ranges(exec, job.p->count, bin_range, &job);
    return EK_OK;
}

static ek_status_t prepare_add(struct ek_op *op) { return prepare_binary(op, BIN_ADD); }
static ek_status_t prepare_sub(struct ek_op *op) { return prepare_binary(op, BIN_SUB); }
static ek_status_t prepare_mul(struct ek_op *op) { return prepare_binary(op, BIN_MUL); }
static ek_status_t prepare_div(struct ek_op *op) { return prepare_binary(op, BIN_DIV); }
static ek_status_t prepare_prelu(struct ek_op *op) { return prepare_binary(op, BIN_PRELU); }

const struct ek_kernel ek_kernel_add = {EK_OP_ADD, 2, 2, 1, prepare_add, run_binary, release_params};
const struct ek_kernel ek_kernel_sub = {EK_OP_SUB, 2, 2, 1, prepare_sub, run_binary, release_params};
const struct ek_kernel ek_kernel_mul = {EK_OP_MUL, 2, 2, 1, prepare_mul, run_binary, release_params};
const struct ek_kernel ek_kernel_div = {EK_OP_DIV, 2, 2, 1, prepare_div, run_binary, release_params};
const struct ek_kernel ek_kernel_prelu = {EK_OP_PRELU, 2, 2, 1, prepare_prelu, run_binary, release_params};

/* ---- unary ops ---- */

enum un_kind { UN_RELU, UN_CLIP, UN_LEAKY_RELU, UN_SIGMOID, UN_HARD_SIGMOID, UN_HARD_SWISH, UN_TANH };

struct un_params {
    enum un_kind kind;
    float a, b; /* CLIP: min, max; LEAKY_RELU: alpha; HARD_SIGMOID: alpha, beta */
    size_t count;
};

static ek_status_t prepare_unary(struct ek_op *op, enum un_kind kind) {
    ek_status_t st = check_counts(op, 1, 1);
    if (st == EK_OK)
        st = ek_check_float_tensor(op, op->in[0], "input X", EK_RANK_ANY);
    if (st == EK_OK)
        st = ek_check_float_tensor(op, op->out[0], "output Y", EK_RANK_ANY);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    bool same = x->rank == y->rank;
    for (int i = 0; same && i < x->rank; i++)
        same = x->dims[i] == y->dims[i];
    if (!same) {
        char s1[200], s2[200];
        return ek_op_invalid(op, "output Y is %s, expected X's shape %s", ek_shape_str(y, s1, sizeof s1),
                             ek_shape_str(x, s2, sizeof s2));
    }
    float a = 0.0f, b = 0.0f;
    switch (kind) {
    case UN_CLIP: /* absent bounds do not clip, as ONNX Clip's optional inputs */
        st = ek_attr_float(op, "min", -INFINITY, &a);
        if (st == EK_OK)
            st = ek_attr_float(op, "max", INFINITY, &b);
        break;
    case UN_LEAKY_RELU: /* ONNX defaults */
        st = ek_attr_float(op, "alpha", 0.01f, &a);
        break;
    case UN_HARD_SIGMOID:
        st = ek_attr_float(op, "alpha", 0.2f, &a);
        if (st == EK_OK)
            st = ek_attr_float(op, "beta", 0.5f, &b);
        break;
    default:
        break;
    }
    if (st != EK_OK)
        return st;
    if (!isfinite(a) && kind != UN_CLIP)
        return ek_op_invalid(op, "attribute 'alpha' must be finite");
    if (kind == UN_HARD_SIGMOID && !isfinite(b))
        return ek_op_invalid(op, "attribute 'beta' must be finite");
    struct un_params *p = calloc(1, sizeof *p);
    if (!p)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "out of memory preparing op '%.120s'", op->name ? op->name : "");
    p->kind = kind;
    p->a = a;
    p->b = b;
    p->count = x->count;
    op->params = p;
    op->scratch_per_thread = 0;
    return EK_OK;
}

struct un_job {
    const struct un_params *p;
    const float *x;
    float *y;
};

static void un_range(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct un_job *job = arg;
    const float *x = job->x + begin;
    float *y = job->y + begin;
    const size_t n = end - begin;
    const float a = job->p->a, b = job->p->b;
    switch (job->p->kind) {
    case UN_RELU:
        for (size_t i = 0; i < n; i++)
            y[i] = x[i] < 0.0f ? 0.0f : x[i];
        break;
    case UN_CLIP: /* min then max: with min > max every output is max, as ONNX says */
        for (size_t i = 0; i < n; i++) {
            float v = x[i] < a ? a : x[i];
            y[i] = v > b ? b : v;
        }
        break;
    case UN_LEAKY_RELU:
        for (size_t i = 0; i < n; i++)
            y[i] = x[i] < 0.0f ? a * x[i] : x[i];
        break;
    case UN_SIGMOID:
        for (size_t i = 0; i < n; i++) {
            /* exp of a non-positive argument only, so large |x| never overflows */
            float e = expf(-fabsf(x[i]));
            float s = 1.0f / (1.0f + e);
            y[i] = x[i] >= 0.0f ? s : e * s;
        }
        break;
    case UN_HARD_SIGMOID:
        for (size_t i = 0; i < n; i++) {
            float v = a * x[i] + b;
            v = v < 0.0f ? 0.0f : v;
            y[i] = v > 1.0f ? 1.0f : v;
        }
        break;
    case UN_HARD_SWISH:
        for (size_t i = 0; i < n; i++) {
            float v = x[i] * (1.0f / 6.0f) + 0.5f;
            v = v < 0.0f ? 0.0f : v;
            v = v > 1.0f ? 1.0f : v;
            y[i] = x[i] * v;
        }
        break;
    case UN_TANH:
        for (size_t i = 0; i < n; i++)
            y[i] = tanhf(x[i]);
        break;
    }
}

static ek_status_t run_unary(const struct ek_op *op, const void *const *in, void *const *out,
                             struct ek_exec *exec) {
    struct un_job job = {op->params, in[0], out[0]};
    run_ranges(exec, job.p->count, un_range, &job);
    return EK_OK;
}

static ek_status_t prepare_relu(struct ek_op *op) { return prepare_unary(op, UN_RELU); }
static ek_status_t prepare_clip(struct ek_op *op) { return prepare_unary(op, UN_CLIP); }
static ek_status_t prepare_leaky_relu(struct ek_op *op) { return prepare_unary(op, UN_LEAKY_RELU); }
static ek_status_t prepare_sigmoid(struct ek_op *op) { return prepare_unary(op, UN_SIGMOID); }
static ek_status_t prepare_hard_sigmoid(struct ek_op *op) { return prepare_unary(op, UN_HARD_SIGMOID); }
static ek_status_t prepare_hard_swish(struct ek_op *op) { return prepare_unary(op, UN_HARD_SWISH); }
static ek_status_t prepare_tanh(struct ek_op *op) { return prepare_unary(op, UN_TANH); }

const struct ek_kernel ek_kernel_relu = {EK_OP_RELU, 1, 1, 1, prepare_relu, run_unary, release_params};
const struct ek_kernel ek_kernel_clip = {EK_OP_CLIP, 1, 1, 1, prepare_clip, run_unary, release_params};
const struct ek_kernel ek_kernel_leaky_relu = {EK_OP_LEAKY_RELU, 1, 1, 1, prepare_leaky_relu, run_unary,
                                               release_params};
const struct ek_kernel ek_kernel_sigmoid = {EK_OP_SIGMOID, 1, 1, 1, prepare_sigmoid, run_unary, release_params};
const struct ek_kernel ek_kernel_hard_sigmoid = {EK_OP_HARD_SIGMOID, 1, 1, 1, prepare_hard_sigmoid, run_unary,
                                                 release_params};
const struct ek_kernel ek_kernel_hard_swish = {EK_OP_HARD_SWISH, 1, 1, 1, prepare_hard_swish, run_unary,
                                               release_params};
const struct ek_kernel ek_kernel_tanh = {EK_OP_TANH, 1, 1, 1, prepare_tanh, run_unary, release_params};
