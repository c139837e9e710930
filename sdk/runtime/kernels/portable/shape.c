/* Data-movement kernels: TRANSPOSE, CONCAT, PAD, SLICE, RESHAPE.
 *
 * TRANSPOSE and SLICE are both a "gather": the output is contiguous and each output dim walks the
 * input with a (signed) element stride from a base offset. prepare() builds that view, drops dims of
 * size 1 and merges dims the view walks contiguously, so run() copies whole rows with memcpy when the
 * innermost stride is 1, and otherwise copies in square tiles (the NCHW <-> NHWC case) or element by
 * element. All index math is validated in prepare(), so run() never leaves the buffers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "helpers.h"
#include "portable.h"

#ifndef EK_KERNEL_PAR_MIN
#define EK_KERNEL_PAR_MIN 16384
#endif

/* ---- helpers ---- */

/* n_in inputs (any number >= 1 when n_in is 0) and one output, all checked tensors: float32, or (with
 * allow_int8: TRANSPOSE, SLICE, CONCAT, RESHAPE) all int8 when input 0 is. */
static ek_status_t check_io(const struct ek_op *op, int n_in, bool allow_int8) {
    if ((n_in ? op->n_in != n_in : op->n_in < 1) || op->n_out != 1 || !op->in || !op->out)
        return ek_op_invalid(op, "has %d inputs and %d outputs; it takes %s%d and 1", op->n_in, op->n_out,
                             n_in ? "" : "at least ", n_in ? n_in : 1);
    char role[32];
    const ek_dtype_t dtype = allow_int8 ? ek_movement_dtype(op) : EK_DTYPE_FLOAT32;
    for (int i = 0; i < op->n_in; i++) {
        snprintf(role, sizeof role, "input %d", i);
        ek_status_t st = ek_check_tensor(op, op->in[i], role, EK_RANK_ANY, dtype);
        if (st != EK_OK)
            return st;
    }
    return ek_check_tensor(op, op->out[0], "output Y", EK_RANK_ANY, dtype);
}

static ek_status_t out_of_memory(const struct ek_op *op) {
    return ek_fail(EK_ERR_OUT_OF_MEMORY, "out of memory preparing op '%.120s'", op->name ? op->name : "");
}

/* Run fn over [0, count) on the team when there is enough work (`work` elements) to share. */
static void run_ranges(struct ek_exec *exec, size_t count, size_t work, ek_range_fn fn, void *arg) {
    if (count == 0)
        return;
    if (exec && count > 1 && work >= EK_KERNEL_PAR_MIN && ek_exec_threads(exec) > 1)
        ek_parallel_for(exec, count, fn, arg);
    else
        fn(arg, 0, count, 0);
}

static void release_params(struct ek_op *op) {
    free(op->params);
    op->params = NULL;
}

static void contiguous_strides(const struct ek_tensor_desc *t, size_t *strides) {
    size_t s = 1;
    for (int i = t->rank - 1; i >= 0; i--) {
        strides[i] = s;
        s *= (size_t)t->dims[i];
    }
}

/* ---- gather: a strided view of X copied to a contiguous Y (TRANSPOSE, SLICE) ---- */

#define TILE 32

struct gather {
    int rank;                    /* >= 1 */
    size_t dims[EK_MAX_DIMS];    /* output dims */
    ptrdiff_t steps[EK_MAX_DIMS]; /* input element stride per output dim */
    ptrdiff_t base;              /* input element offset of output element 0 */
    size_t count;
    bool tiled; /* dim rank-2 walks the input contiguously: copy in TILE x TILE tiles */
    size_t block; /* tiled: rows of dim rank-2 per task (TILE, or SHORT_BLOCK when the last dim is short) */
    size_t tasks;
    size_t elem; /* bytes per element: 4 (float32) or 1 (int8) */
};

/* A tiled gather whose last dim has 2..4 elements (NCHW -> NHWC of an RGB image: 3) interleaves that
 * many contiguous input runs, SHORT_BLOCK rows per task, in a loop the compiler unrolls and vectorises
 * for each count: about 4x the generic tile loop, whose inner loop would run 3 times. */
#define SHORT_BLOCK 2048

/* Build the view from per-output-dim dims and steps: drop unit dims, merge contiguous walks. */
static void gather_init(struct gather *g, int rank, const size_t *dims, const ptrdiff_t *steps,
                        ptrdiff_t base) {
    int m = 0;
    g->count = 1;
    for (int k = 0; k < rank; k++) {
        g->count *= dims[k];
        if (dims[k] == 1)
            continue;
        if (m > 0 && g->steps[m - 1] == steps[k] * (ptrdiff_t)dims[k]) {
            g->dims[m - 1] *= dims[k];
            g->steps[m - 1] = steps[k];
        } else {
            g->dims[m] = dims[k];
            g->steps[m] = steps[k];
            m++;
        }
    }
    if (m == 0) {
        g->dims[0] = 1;
        g->steps[0] = 1;
        m = 1;
    }
    g->rank = m;
    g->base = base;
    g->tiled = m >= 2 && g->steps[m - 1] != 1 && g->steps[m - 2] == 1;
    size_t rows = g->count / g->dims[m - 1];
    /* tiled: one task per block of rows of dim rank-2 (within one outer index) */
    g->block = g->tiled && g->dims[m - 1] >= 2 && g->dims[m - 1] <= 4 ? SHORT_BLOCK : TILE;
    g->tasks = g->tiled ? rows / g->dims[m - 2] * ((g->dims[m - 2] + g->block - 1) / g->block) : rows;
}

struct gather_job {
    const struct gather *g;
    const void *x;
    void *y;
};

/* The input offset of the output row (all dims but the innermost `keep`) number `row`. */
static ptrdiff_t gather_row_offset(const struct gather *g, int outer_rank, size_t row, size_t *idx) {
    ptrdiff_t off = g->base;
    for (int d = outer_rank - 1; d >= 0; d--) {
        idx[d] = row % g->dims[d];
        row /= g->dims[d];
        off += (ptrdiff_t)idx[d] * g->steps[d];
    }
    return off;
}

static ptrdiff_t gather_row_next(const struct gather *g, int outer_rank, size_t *idx, ptrdiff_t off) {
    for (int d = outer_rank - 1; d >= 0; d--) {
        off += g->steps[d];
        if (++idx[d] < g->dims[d])
            break;
        off -= (ptrdiff_t)idx[d] * g->steps[d];
        idx[d] = 0;
    }
    return off;
}

/* The element loops of the gathers, once per element size (float32, int8). */
#define GATHER_ROWS(NAME, T)                                                                                \
    static void NAME(void *arg, size_t begin, size_t end, int thread) {                                     \
        (void)thread;                                                                                       \
        const struct gather_job *job = arg;                                                                 \
        const struct gather *g = job->g;                                                                    \
        const int last = g->rank - 1;                                                                       \
        const size_t n = g->dims[last];                                                                     \
        const ptrdiff_t step = g->steps[last];                                                              \
        size_t idx[EK_MAX_DIMS];                                                                            \
        ptrdiff_t off = gather_row_offset(g, last, begin, idx);                                             \
        for (size_t row = begin; row < end; row++) {                                                        \
            const T *src = (const T *)job->x + off;                                                         \
            T *dst = (T *)job->y + row * n;                                                                 \
            if (step == 1) {                                                                                \
                memcpy(dst, src, n * sizeof(T));                                                            \
            } else {                                                                                        \
                for (size_t i = 0; i < n; i++)                                                              \
                    dst[i] = src[(ptrdiff_t)i * step];                                                      \
            }                                                                                               \
            off = gather_row_next(g, last, idx, off);                                                       \
        }                                                                                                   \
    }

/* Rows [j0, j1) of an interleave of N input runs `step` apart: dst[j * N + i] = src[i * step + j]. */
#define INTERLEAVE(N)                                                                                       \
    for (size_t j = j0; j < j1; j++)                                                                        \
        for (size_t i = 0; i < (N); i++)                                                                    \
            dst[j * (N) + i] = src[(ptrdiff_t)i * step + (ptrdiff_t)j];

/* Tiled: the output's last two dims (J, I) read the input at j * 1 + i * step, so a TILE x TILE
 * block reads TILE contiguous input runs and writes TILE contiguous output runs. */
#define GATHER_TILES(NAME, T)                                                                               \
    static void NAME(void *arg, size_t begin, size_t end, int thread) {                                     \
        (void)thread;                                                                                       \
        const struct gather_job *job = arg;                                                                 \
        const struct gather *g = job->g;                                                                    \
        const int r = g->rank;                                                                              \
        const size_t ni = g->dims[r - 1], nj = g->dims[r - 2];                                              \
        const ptrdiff_t step = g->steps[r - 1];                                                             \
        const size_t block = g->block, blocks = (nj + block - 1) / block;                                   \
        size_t idx[EK_MAX_DIMS];                                                                            \
        for (size_t task = begin; task < end; task++) {                                                     \
            size_t outer = task / blocks, j0 = task % blocks * block;                                       \
            size_t j1 = j0 + block < nj ? j0 + block : nj;                                                  \
            ptrdiff_t off = gather_row_offset(g, r - 2, outer, idx);                                        \
            const T *src = (const T *)job->x + off;                                                         \
            T *dst = (T *)job->y + outer * nj * ni;                                                         \
            if (block == SHORT_BLOCK) {                                                                     \
                if (ni == 2) {                                                                              \
                    INTERLEAVE(2)                                                                           \
                } else if (ni == 3) {                                                                       \
                    INTERLEAVE(3)                                                                           \
                } else {                                                                                    \
                    INTERLEAVE(4)                                                                           \
                }                                                                                           \
                continue;                                                                                   \
            }                                                                                               \
            for (size_t i0 = 0; i0 < ni; i0 += TILE) {                                                      \
                size_t i1 = i0 + TILE < ni ? i0 + TILE : ni;                                                \
                for (size_t j = j0; j < j1; j++)                                                            \
                    for (size_t i = i0; i < i1; i++)                                                        \
                        dst[j * ni + i] = src[(ptrdiff_t)j + (ptrdiff_t)i * step];                          \
            }                                                                                               \
        }                                                                                                   \
    }

GATHER_ROWS(gather_rows32, float)
GATHER_ROWS(gather_rows8, uint8_t)
GATHER_TILES(gather_tiles32, float)
GATHER_TILES(gather_tiles8, uint8_t)

static void gather_run(const struct gather *g, const void *x, void *y, struct ek_exec *exec) {
    struct gather_job job = {g, x, y};
    ek_range_fn fn = g->elem == 1 ? (g->tiled ? gather_tiles8 : gather_rows8) : (g->tiled ? gather_tiles32 : gather_rows32);
    run_ranges(exec, g->tasks, g->count, fn, &job);
}

static ek_status_t run_gather(const struct ek_op *op, const void *const *in, void *const *out,
                              struct ek_exec *exec) {
    gather_run(op->params, in[0], out[0], exec);
    return EK_OK;
}

/* ---- TRANSPOSE ---- */

static ek_status_t prepare_transpose(struct ek_op *op) {
    ek_status_t st = check_io(op, 1, true);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    int64_t perm[EK_MAX_DIMS], identity[EK_MAX_DIMS];
    for (int i = 0; i < EK_MAX_DIMS; i++)
        identity[i] = i;
    /* rank 0 has an empty perm, which a writer may leave out */
    st = ek_attr_ints(op, "perm", (uint32_t)x->rank, x->rank == 0 ? identity : NULL, perm);
    if (st != EK_OK)
        return st;
    bool seen[EK_MAX_DIMS] = {false};
    for (int i = 0; i < x->rank; i++) {
        if (perm[i] < 0 || perm[i] >= x->rank || seen[perm[i]])
            return ek_op_invalid(op, "attribute 'perm' is not a permutation of 0..%d (entry %d is %lld)",
                                 x->rank - 1, i, (long long)perm[i]);
        seen[perm[i]] = true;
    }
    bool ok = y->rank == x->rank;
    for (int i = 0; ok && i < x->rank; i++)
        ok = y->dims[i] == x->dims[perm[i]];
    if (!ok) {
        char s1[200], s2[200];
        return ek_op_invalid(op, "output Y is %s; X %s permuted by 'perm' differs", ek_shape_str(y, s1, sizeof s1),
                             ek_shape_str(x, s2, sizeof s2));
    }
    size_t xs[EK_MAX_DIMS], dims[EK_MAX_DIMS];
    ptrdiff_t steps[EK_MAX_DIMS];
    contiguous_strides(x, xs);
    for (int i = 0; i < x->rank; i++) {
        dims[i] = (size_t)x->dims[perm[i]];
        steps[i] = (ptrdiff_t)xs[perm[i]];
    }
    struct gather *g = calloc(1, sizeof *g);
    if (!g)
        return out_of_memory(op);
    gather_init(g, x->rank, dims, steps, 0);
    g->elem = ek_dtype_size(x->dtype);
    op->params = g;
    op->scratch_per_thread = 0;
    return EK_OK;
}

const struct ek_kernel ek_kernel_transpose = {EK_OP_TRANSPOSE, 1, 1, 1, prepare_transpose, run_gather,
                                              release_params};

/* ---- SLICE ---- */

static ek_status_t prepare_slice(struct ek_op *op) {
    ek_status_t st = check_io(op, 1, true);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    char s1[200], s2[200];
    if (y->rank != x->rank)
        return ek_op_invalid(op, "output Y %s and input X %s differ in rank", ek_shape_str(y, s1, sizeof s1),
                             ek_shape_str(x, s2, sizeof s2));
    int64_t starts[EK_MAX_DIMS], steps[EK_MAX_DIMS], zeros[EK_MAX_DIMS] = {0}, ones[EK_MAX_DIMS];
    for (int i = 0; i < EK_MAX_DIMS; i++)
        ones[i] = 1;
    st = ek_attr_ints(op, "starts", (uint32_t)x->rank, x->rank == 0 ? zeros : NULL, starts);
    if (st == EK_OK)
        st = ek_attr_ints(op, "steps", (uint32_t)x->rank, ones, steps);
    if (st != EK_OK)
        return st;
    size_t xs[EK_MAX_DIMS], dims[EK_MAX_DIMS];
    ptrdiff_t vsteps[EK_MAX_DIMS], base = 0;
    contiguous_strides(x, xs);
    for (int k = 0; k < x->rank; k++) {
        int64_t d = x->dims[k], n = y->dims[k], s = starts[k], t = steps[k];
        if (t == 0)
            return ek_op_invalid(op, "attribute 'steps' is 0 at axis %d", k);
        if (s < 0 || s >= d)
            return ek_op_invalid(op, "start %lld at axis %d is outside X's dim %lld", (long long)s, k,
                                 (long long)d);
        /* the last index s + (n-1) t must stay in [0, d); divide rather than multiply (no overflow) */
        bool inside = n == 1 || (t > 0 ? (n - 1) <= (d - 1 - s) / t
                                       : t != INT64_MIN && (n - 1) <= s / -t);
        if (!inside)
            return ek_op_invalid(op, "output dim %lld at axis %d with start %lld and step %lld reads outside "
                                 "X's dim %lld",
                                 (long long)n, k, (long long)s, (long long)t, (long long)d);
        dims[k] = (size_t)n;
        /* a dim of 1 is dropped, and its step may be anything: keep the view's math in range */
        vsteps[k] = n == 1 ? 0 : (ptrdiff_t)t * (ptrdiff_t)xs[k];
        base += (ptrdiff_t)s * (ptrdiff_t)xs[k];
    }
    struct gather *g = calloc(1, sizeof *g);
    if (!g)
        return out_of_memory(op);
    gather_init(g, x->rank, dims, vsteps, base);
    g->elem = ek_dtype_size(x->dtype);
    op->params = g;
    op->scratch_per_thread = 0;
    return EK_OK;
}

const struct ek_kernel ek_kernel_slice = {EK_OP_SLICE, 1, 1, 1, prepare_slice, run_gather, release_params};

/* ---- CONCAT ---- */

struct concat_params {
    size_t outer;     /* product of the dims before the axis */
    size_t out_block; /* bytes of Y per outer index */
    size_t count;
    size_t elem; /* bytes per element */
    int n;
    size_t block[]; /* bytes of input i per outer index */
};

static ek_status_t prepare_concat(struct ek_op *op) {
    ek_status_t st = check_io(op, 0, true);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *y = op->out[0];
    int64_t axis;
    st = ek_attr_int(op, "axis", 0, &axis);
    if (st != EK_OK)
        return st;
    if (axis < 0 || axis >= y->rank)
        return ek_op_invalid(op, "attribute 'axis' is %lld; output Y has rank %d", (long long)axis, y->rank);
    int a = (int)axis;
    char s1[200], s2[200];
    uint64_t total = 0;
    for (int i = 0; i < op->n_in; i++) {
        const struct ek_tensor_desc *x = op->in[i];
        bool ok = x->rank == y->rank;
        for (int d = 0; ok && d < y->rank; d++)
            ok = d == a || x->dims[d] == y->dims[d];
        if (!ok)
            return ek_op_invalid(op, "input %d is %s; with output Y %s every dim but axis %d must match", i,
                                 ek_shape_str(x, s1, sizeof s1), ek_shape_str(y, s2, sizeof s2), a);
        /* each dim < 2^62 (a checked count of floats) and the sum stops past Y's: no overflow */
        total += (uint64_t)x->dims[a];
        if (total > (uint64_t)y->dims[a])
            break;
    }
    if (total != (uint64_t)y->dims[a])
        return ek_op_invalid(op, "inputs add up to %llu along axis %d, output Y %s has %lld",
                             (unsigned long long)total, a, ek_shape_str(y, s1, sizeof s1), (long long)y->dims[a]);
    struct concat_params *p = calloc(1, sizeof *p + (size_t)op->n_in * sizeof p->block[0]);
    if (!p)
        return out_of_memory(op);
    size_t inner = 1;
    for (int d = a + 1; d < y->rank; d++)
        inner *= (size_t)y->dims[d];
    p->outer = 1;
    for (int d = 0; d < a; d++)
        p->outer *= (size_t)y->dims[d];
    p->out_block = (size_t)y->dims[a] * inner * ek_dtype_size(y->dtype); /* bytes */
    p->count = y->count;
    p->n = op->n_in;
    p->elem = ek_dtype_size(y->dtype);
    for (int i = 0; i < op->n_in; i++)
        p->block[i] = (size_t)op->in[i]->dims[a] * inner * p->elem; /* bytes */
    op->params = p;
    op->scratch_per_thread = 0;
    return EK_OK;
}

struct concat_job {
    const struct concat_params *p;
    const void *const *in;
    unsigned char *y;
};

static void concat_rows(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct concat_job *job = arg;
    const struct concat_params *p = job->p;
    for (size_t o = begin; o < end; o++) {
        unsigned char *dst = job->y + o * p->out_block;
        for (int i = 0; i < p->n; i++) {
            const unsigned char *src = (const unsigned char *)job->in[i] + o * p->block[i];
            memcpy(dst, src, p->block[i]);
            dst += p->block[i];
        }
    }
}

static ek_status_t run_concat(const struct ek_op *op, const void *const *in, void *const *out,
                              struct ek_exec *exec) {
    struct concat_job job = {op->params, in, out[0]};
    run_ranges(exec, job.p->outer, job.p->count, concat_rows, &job);
    return EK_OK;
}

const struct ek_kernel ek_kernel_concat = {EK_OP_CONCAT, 1, 65535, 1, prepare_concat, run_concat,
                                           release_params};

/* ---- PAD ---- */

enum pad_mode { PAD_CONSTANT = 0, PAD_REFLECT = 1, PAD_EDGE = 2 };

struct pad_params {
    int rank; /* >= 1 (a scalar is padded as one element of rank 1) */
    enum pad_mode mode;
    float value;
    size_t xd[EK_MAX_DIMS], yd[EK_MAX_DIMS], begin[EK_MAX_DIMS], xs[EK_MAX_DIMS];
    size_t rows, count;
};

static ek_status_t prepare_pad(struct ek_op *op) {
    ek_status_t st = check_io(op, 1, false);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    int r = x->rank;
    int64_t pads[2 * EK_MAX_DIMS] = {0}, mode;
    float value;
    st = ek_attr_ints(op, "pads", (uint32_t)(2 * r), r == 0 ? pads : NULL, pads);
    if (st == EK_OK)
        st = ek_attr_int(op, "mode", PAD_CONSTANT, &mode);
    if (st == EK_OK)
        st = ek_attr_float(op, "value", 0.0f, &value);
    if (st != EK_OK)
        return st;
    if (mode < PAD_CONSTANT || mode > PAD_EDGE)
        return ek_op_invalid(op, "attribute 'mode' is %lld (0 constant, 1 reflect, 2 edge)", (long long)mode);
    char s1[200], s2[200];
    if (y->rank != r)
        return ek_op_invalid(op, "output Y %s and input X %s differ in rank", ek_shape_str(y, s1, sizeof s1),
                             ek_shape_str(x, s2, sizeof s2));
    for (int k = 0; k < r; k++) {
        int64_t pb = pads[k], pe = pads[r + k], d = x->dims[k];
        if (pb < 0 || pe < 0)
            return ek_op_invalid(op, "attribute 'pads' has a negative pad at axis %d", k);
        if (mode == PAD_REFLECT && (pb >= d || pe >= d))
            return ek_op_invalid(op, "reflect pads %lld, %lld at axis %d must be below X's dim %lld",
                                 (long long)pb, (long long)pe, k, (long long)d);
        if (pb > INT64_MAX - d || pe > INT64_MAX - d - pb || d + pb + pe != y->dims[k])
            return ek_op_invalid(op, "output Y %s: axis %d should be %lld + %lld + %lld",
                                 ek_shape_str(y, s1, sizeof s1), k, (long long)d, (long long)pb, (long long)pe);
    }
    struct pad_params *p = calloc(1, sizeof *p);
    if (!p)
        return out_of_memory(op);
    p->mode = (enum pad_mode)mode;
    p->value = value;
    p->rank = r ? r : 1;
    p->xd[0] = p->yd[0] = p->xs[0] = 1;
    size_t xs[EK_MAX_DIMS];
    contiguous_strides(x, xs);
    for (int k = 0; k < r; k++) {
        p->xd[k] = (size_t)x->dims[k];
        p->yd[k] = (size_t)y->dims[k];
        p->begin[k] = (size_t)pads[k];
        p->xs[k] = xs[k];
    }
    p->count = y->count;
    p->rows = y->count / p->yd[p->rank - 1];
    op->params = p;
    op->scratch_per_thread = 0;
    return EK_OK;
}

/* The source index along one axis of output index o, or false for constant padding. */
static bool pad_source(enum pad_mode mode, size_t o, size_t begin, size_t dim, size_t *src) {
    if (o >= begin && o - begin < dim) {
        *src = o - begin;
        return true;
    }
    if (mode == PAD_CONSTANT)
        return false;
    if (o < begin) /* before: edge -> 0; reflect -> begin - o (< dim, checked in prepare) */
        *src = mode == PAD_EDGE ? 0 : begin - o;
    else /* after: edge -> dim-1; reflect mirrors about dim-1 */
        *src = mode == PAD_EDGE ? dim - 1 : 2 * (dim - 1) - (o - begin);
    return true;
}

struct pad_job {
    const struct pad_params *p;
    const float *x;
    float *y;
};

static void pad_rows(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct pad_job *job = arg;
    const struct pad_params *p = job->p;
    const int last = p->rank - 1;
    const size_t n = p->yd[last], xn = p->xd[last], pb = p->begin[last];
    for (size_t row = begin; row < end; row++) {
        float *dst = job->y + row * n;
        size_t rest = row, off = 0;
        bool inside = true;
        for (int d = last - 1; d >= 0 && inside; d--) {
            size_t src;
            inside = pad_source(p->mode, rest % p->yd[d], p->begin[d], p->xd[d], &src);
            if (inside)
                off += src * p->xs[d];
            rest /= p->yd[d];
        }
        if (!inside) {
            for (size_t j = 0; j < n; j++)
                dst[j] = p->value;
            continue;
        }
        const float *src = job->x + off;
        for (size_t j = 0; j < pb; j++) {
            size_t s;
            dst[j] = pad_source(p->mode, j, pb, xn, &s) ? src[s] : p->value;
        }
        memcpy(dst + pb, src, xn * sizeof(float));
        for (size_t j = pb + xn; j < n; j++) {
            size_t s;
            dst[j] = pad_source(p->mode, j, pb, xn, &s) ? src[s] : p->value;
        }
    }
}

static ek_status_t run_pad(const struct ek_op *op, const void *const *in, void *const *out,
                           struct ek_exec *exec) {
    struct pad_job job = {op->params, in[0], out[0]};
    run_ranges(exec, job.p->rows, job.p->count, pad_rows, &job);
    return EK_OK;
}

const struct ek_kernel ek_kernel_pad = {EK_OP_PAD, 1, 1, 1, prepare_pad, run_pad, release_params};

/* ---- RESHAPE ---- */

static ek_status_t prepare_reshape(struct ek_op *op) {
    ek_status_t st = check_io(op, 1, true);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    if (x->count != y->count || x->nbytes != y->nbytes) {
        char s1[200], s2[200];
        return ek_op_invalid(op, "output Y %s and input X %s hold different element counts (%zu, %zu)",
                             ek_shape_str(y, s1, sizeof s1), ek_shape_str(x, s2, sizeof s2), y->count, x->count);
    }
    op->params = NULL;
    op->scratch_per_thread = 0;
    return EK_OK;
}

static ek_status_t run_reshape(const struct ek_op *op, const void *const *in, void *const *out,
                               struct ek_exec *exec) {
    (void)exec;
    /* a planner may place Y on X's bytes: then there is nothing to copy */
    if (out[0] != in[0])
        memmove(out[0], in[0], op->out[0]->nbytes);
    return EK_OK;
}

const struct ek_kernel ek_kernel_reshape = {EK_OP_RESHAPE, 1, 1, 1, prepare_reshape, run_reshape, NULL};
