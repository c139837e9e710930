/* REDUCE_MEAN over a sorted set of axes.
 *
 * prepare() groups X's dims into runs of kept and of reduced dims (unit dims dropped, neighbours of
 * the same kind merged), each with its element stride in X. Two loops cover every case:
 * - the innermost run is kept (e.g. NHWC mean over H, W): each output row of I contiguous values
 *   accumulates I-wide input rows, one per reduced index (vectorisable);
 * - the innermost run is reduced (e.g. mean over the last axis): each output value sums contiguous
 *   input runs, in double so long reductions keep their precision. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "helpers.h"
#include "portable.h"

#ifndef EK_KERNEL_PAR_MIN
#define EK_KERNEL_PAR_MIN 16384
#endif

/* An odometer over some dims of X: their sizes and X strides. */
struct walk {
    int n;
    size_t dims[EK_MAX_DIMS];
    size_t strides[EK_MAX_DIMS];
};

struct reduce_params {
    bool copy;         /* nothing to reduce: Y = X */
    bool inner_kept;   /* the innermost run of X is kept */
    struct walk kept;  /* kept runs (without the innermost one when inner_kept) */
    struct walk red;   /* reduced runs (without the innermost one when !inner_kept) */
    size_t inner;      /* length of the innermost run (contiguous in X) */
    size_t tasks;      /* output rows (inner_kept) or output values */
    size_t count;      /* X's elements */
    size_t out_count;
    double scale;      /* 1 / reduced element count */
};

static ek_status_t prepare_reduce_mean(struct ek_op *op) {
    if (op->n_in != 1 || op->n_out != 1 || !op->in || !op->out)
        return ek_op_invalid(op, "takes 1 input and 1 output, has %d and %d", op->n_in, op->n_out);
    ek_status_t st = ek_check_float_tensor(op, op->in[0], "input X", EK_RANK_ANY);
    if (st == EK_OK)
        st = ek_check_float_tensor(op, op->out[0], "output Y", EK_RANK_ANY);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    const struct ek_attr *attr = ek_attr_find(op, "axes");
    if (!attr)
        return ek_op_invalid(op, "attribute 'axes' is missing");
    if (attr->type != EK_ATTR_INTS || attr->count > (uint32_t)x->rank)
        return ek_op_invalid(op, "attribute 'axes' must be INTS of at most %d values (X's rank)", x->rank);
    int64_t axes[EK_MAX_DIMS], keepdims;
    st = ek_attr_ints(op, "axes", attr->count, NULL, axes);
    if (st == EK_OK)
        st = ek_attr_int(op, "keepdims", 1, &keepdims);
    if (st != EK_OK)
        return st;
    if (keepdims != 0 && keepdims != 1)
        return ek_op_invalid(op, "attribute 'keepdims' is %lld (0 or 1)", (long long)keepdims);
    bool reduced[EK_MAX_DIMS] = {false};
    for (uint32_t i = 0; i < attr->count; i++) {
        if (axes[i] < 0 || axes[i] >= x->rank || (i > 0 && axes[i] <= axes[i - 1]))
            return ek_op_invalid(op, "attribute 'axes' must be sorted, unique and in 0..%d (entry %u is %lld)",
                                 x->rank - 1, (unsigned)i, (long long)axes[i]);
        reduced[axes[i]] = true;
    }

    /* Y's shape: X's with the axes set to 1 or removed. */
    struct ek_tensor_desc want = {0};
    for (int d = 0; d < x->rank; d++) {
        if (!reduced[d])
            want.dims[want.rank++] = x->dims[d];
        else if (keepdims)
            want.dims[want.rank++] = 1;
    }
    bool same = y->rank == want.rank;
    for (int d = 0; same && d < want.rank; d++)
        same = y->dims[d] == want.dims[d];
    if (!same) {
        char s1[200], s2[200], s3[200];
        return ek_op_invalid(op, "output Y is %s, expected %s from X %s", ek_shape_str(y, s1, sizeof s1),
                             ek_shape_str(&want, s2, sizeof s2), ek_shape_str(x, s3, sizeof s3));
    }

    struct reduce_params *p = calloc(1, sizeof *p);
    if (!p)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "out of memory preparing op '%.120s'", op->name ? op->name : "");
    p->count = x->count;
    p->out_count = y->count;

    /* Runs of X's non-unit dims, innermost first: size, kind, stride. */
    size_t run_dim[EK_MAX_DIMS], run_stride[EK_MAX_DIMS];
    bool run_red[EK_MAX_DIMS];
    int runs = 0;
    size_t stride = 1, red_count = 1;
    for (int d = x->rank - 1; d >= 0; d--) {
        size_t dim = (size_t)x->dims[d];
        if (dim != 1) {
            if (runs > 0 && run_red[runs - 1] == reduced[d]) {
                run_dim[runs - 1] *= dim;
            } else {
                run_dim[runs] = dim;
                run_stride[runs] = stride;
                run_red[runs] = reduced[d];
                runs++;
            }
            if (reduced[d])
                red_count *= dim;
        }
        stride *= dim;
    }
    p->scale = 1.0 / (double)red_count;
    p->copy = red_count == 1;
    if (!p->copy) {
        /* runs[0] is the innermost (stride 1); the walks list the others outermost first */
        p->inner_kept = !run_red[0];
        p->inner = run_dim[0];
        for (int r = runs - 1; r >= 1; r--) {
            struct walk *w = run_red[r] ? &p->red : &p->kept;
            w->dims[w->n] = run_dim[r];
            w->strides[w->n] = run_stride[r];
            w->n++;
        }
        p->tasks = p->inner_kept ? p->out_count / p->inner : p->out_count;
    }
    op->params = p;
    op->scratch_per_thread = 0;
    return EK_OK;
}

/* The X offset of position `index` of a walk (row-major over its dims), filling idx. */
static size_t walk_offset(const struct walk *w, size_t index, size_t *idx) {
    size_t off = 0;
    for (int d = w->n - 1; d >= 0; d--) {
        idx[d] = index % w->dims[d];
        index /= w->dims[d];
        off += idx[d] * w->strides[d];
    }
    return off;
}

static size_t walk_next(const struct walk *w, size_t *idx, size_t off) {
    for (int d = w->n - 1; d >= 0; d--) {
        off += w->strides[d];
        if (++idx[d] < w->dims[d])
            break;
        off -= idx[d] * w->strides[d];
        idx[d] = 0;
    }
    return off;
}

static size_t walk_count(const struct walk *w) {
    size_t n = 1;
    for (int d = 0; d < w->n; d++)
        n *= w->dims[d];
    return n;
}

struct reduce_job {
    const struct reduce_params *p;
    const float *x;
    float *y;
};

static void reduce_range(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct reduce_job *job = arg;
    const struct reduce_params *p = job->p;
    const size_t inner = p->inner, red_n = walk_count(&p->red);
    size_t kidx[EK_MAX_DIMS], ridx[EK_MAX_DIMS];
    size_t base = walk_offset(&p->kept, begin, kidx);
    for (size_t task = begin; task < end; task++) {
        if (p->inner_kept) {
            float *y = job->y + task * inner;
            const float scale = (float)p->scale;
            for (size_t i = 0; i < inner; i++)
                y[i] = 0.0f;
            size_t roff = walk_offset(&p->red, 0, ridx);
            for (size_t r = 0; r < red_n; r++) {
                const float *x = job->x + base + roff;
                for (size_t i = 0; i < inner; i++)
                    y[i] += x[i];
                roff = walk_next(&p->red, ridx, roff);
            }
            for (size_t i = 0; i < inner; i++)
                y[i] *= scale;
        } else {
            double sum = 0.0;
            size_t roff = walk_offset(&p->red, 0, ridx);
            for (size_t r = 0; r < red_n; r++) {
                const float *x = job->x + base + roff;
                for (size_t i = 0; i < inner; i++)
                    sum += x[i];
                roff = walk_next(&p->red, ridx, roff);
            }
            job->y[task] = (float)(sum * p->scale);
        }
        base = walk_next(&p->kept, kidx, base);
    }
}

static ek_status_t run_reduce_mean(const struct ek_op *op, const void *const *in, void *const *out,
                                   struct ek_exec *exec) {
    const struct reduce_params *p = op->params;
    if (p->copy) {
        if (out[0] != in[0])
            memmove(out[0], in[0], p->count * sizeof(float));
        return EK_OK;
    }
    struct reduce_job job = {p, in[0], out[0]};
    if (exec && p->tasks > 1 && p->count >= EK_KERNEL_PAR_MIN && ek_exec_threads(exec) > 1)
        ek_parallel_for(exec, p->tasks, reduce_range, &job);
    else
        reduce_range(&job, 0, p->tasks, 0);
    return EK_OK;
}

static void release_reduce(struct ek_op *op) {
    free(op->params);
    op->params = NULL;
}

const struct ek_kernel ek_kernel_reduce_mean = {EK_OP_REDUCE_MEAN, 1, 1, 1, prepare_reduce_mean,
                                                run_reduce_mean, release_reduce};
