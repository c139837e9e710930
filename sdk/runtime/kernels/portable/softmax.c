/* SOFTMAX along one axis, numerically stable: exp(x - max) / sum. X is seen as [outer, n, inner] with
 * n the axis. With inner == 1 (the last axis) each row is contiguous; otherwise the kernel works on
 * tiles of TILE inner positions at once, so every pass reads rows of contiguous floats and keeps the
 * running max and sum in small stack arrays (no scratch, no VLAs). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"
#include "helpers.h"
#include "portable.h"

#ifndef EK_KERNEL_PAR_MIN
#define EK_KERNEL_PAR_MIN 16384
#endif

#define TILE 64

struct softmax_params {
    size_t outer, n, inner, count;
    size_t tiles; /* per outer index: ceil(inner / TILE), or 1 when inner == 1 */
};

static ek_status_t prepare_softmax(struct ek_op *op) {
    if (op->n_in != 1 || op->n_out != 1 || !op->in || !op->out)
        return ek_op_invalid(op, "takes 1 input and 1 output, has %d and %d", op->n_in, op->n_out);
    ek_status_t st = ek_check_float_tensor(op, op->in[0], "input X", EK_RANK_ANY);
    if (st == EK_OK)
        st = ek_check_float_tensor(op, op->out[0], "output Y", EK_RANK_ANY);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    bool same = x->rank == y->rank;
    for (int i = 0; same && i < x->rank; i++)
        same = x->dims[i] == y->dims[i];
    if (!same)
        return ek_op_invalid(op, "output Y's shape differs from input X's");
    int64_t axis;
    st = ek_attr_int(op, "axis", x->rank - 1, &axis);
    if (st != EK_OK)
        return st;
    if (axis < 0 || axis >= x->rank)
        return ek_op_invalid(op, "attribute 'axis' is %lld; X has rank %d", (long long)axis, x->rank);
    struct softmax_params *p = calloc(1, sizeof *p);
    if (!p)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "out of memory preparing op '%.120s'", op->name ? op->name : "");
    p->outer = p->inner = 1;
    for (int i = 0; i < axis; i++)
        p->outer *= (size_t)x->dims[i];
    for (int i = (int)axis + 1; i < x->rank; i++)
        p->inner *= (size_t)x->dims[i];
    p->n = (size_t)x->dims[axis];
    p->count = x->count;
    p->tiles = p->inner == 1 ? 1 : (p->inner + TILE - 1) / TILE;
    op->params = p;
    op->scratch_per_thread = 0;
    return EK_OK;
}

struct softmax_job {
    const struct softmax_params *p;
    const float *x;
    float *y;
};

static void softmax_row(const float *x, float *y, size_t n) {
    float m = x[0];
    for (size_t k = 1; k < n; k++)
        m = x[k] > m ? x[k] : m;
    float sum = 0.0f;
    for (size_t k = 0; k < n; k++) {
        y[k] = expf(x[k] - m);
        sum += y[k];
    }
    const float inv = 1.0f / sum;
    for (size_t k = 0; k < n; k++)
        y[k] *= inv;
}

/* w (<= TILE) inner positions; element (k, j) is at k * stride + j. */
static void softmax_tile(const float *x, float *y, size_t n, size_t stride, size_t w) {
    float m[TILE], s[TILE];
    for (size_t j = 0; j < w; j++) {
        m[j] = x[j];
        s[j] = 0.0f;
    }
    for (size_t k = 1; k < n; k++) {
        const float *row = x + k * stride;
        for (size_t j = 0; j < w; j++)
            m[j] = row[j] > m[j] ? row[j] : m[j];
    }
    for (size_t k = 0; k < n; k++) {
        const float *row = x + k * stride;
        float *out = y + k * stride;
        for (size_t j = 0; j < w; j++) {
            out[j] = expf(row[j] - m[j]);
            s[j] += out[j];
        }
    }
    for (size_t j = 0; j < w; j++)
        s[j] = 1.0f / s[j];
    for (size_t k = 0; k < n; k++) {
        float *out = y + k * stride;
        for (size_t j = 0; j < w; j++)
            out[j] *= s[j];
    }
}

static void softmax_range(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct softmax_job *job = arg;
    const struct softmax_params *p = job->p;
    for (size_t task = begin; task < end; task++) {
        size_t o = task / p->tiles, j0 = task % p->tiles * TILE;
        size_t off = o * p->n * p->inner + j0;
        if (p->inner == 1) {
            softmax_row(job->x + off, job->y + off, p->n);
        } else {
            size_t w = p->inner - j0 < TILE ? p->inner - j0 : TILE;
            softmax_tile(job->x + off, job->y + off, p->n, p->inner, w);
        }
    }
}

static ek_status_t run_softmax(const struct ek_op *op, const void *const *in, void *const *out,
                               struct ek_exec *exec) {
    struct softmax_job job = {op->params, in[0], out[0]};
    size_t tasks = job.p->outer * job.p->tiles;
    if (exec && tasks > 1 && job.p->count >= EK_KERNEL_PAR_MIN && ek_exec_threads(exec) > 1)
        ek_parallel_for(exec, tasks, softmax_range, &job);
    else
        softmax_range(&job, 0, tasks, 0);
    return EK_OK;
}

static void release_softmax(struct ek_op *op) {
    free(op->params);
    op->params = NULL;
}

const struct ek_kernel ek_kernel_softmax = {EK_OP_SOFTMAX, 1, 1, 1, prepare_softmax, run_softmax,
                                            release_softmax};
