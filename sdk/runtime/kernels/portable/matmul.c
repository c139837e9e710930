/* FULLY_CONNECTED and MATMUL, on the SGEMM they share with CONV (gemm.c, helpers.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "internal.h"
#include "portable.h"

/* ---------------------------------------------------------------- FULLY_CONNECTED / MATMUL */

/* A product of `batches` matrices: Y[b] = A[a(b)] (m x k) * B[b(b)] (k x n) (+ bias, act), where the
 * batch index maps to A and B matrices through broadcast strides (0 on broadcast dims). */
struct mm_params {
    size_t batches, m, n, k;
    int batch_rank; /* of Y; the dims and strides below */
    size_t ydims[EK_MAX_DIMS];
    size_t astride[EK_MAX_DIMS], bstride[EK_MAX_DIMS]; /* in matrices */
    bool b_transposed;     /* FULLY_CONNECTED: B is given as W[n][k] */
    bool has_bias;
    size_t b_matrices;     /* distinct B matrices */
    float *packed;         /* constant B packed at prepare (b_matrices of packed_floats), or NULL */
    size_t packed_floats;  /* of one packed B */
    size_t ncb;            /* column block (multiple of ek_gemm_nr()) packed into scratch at run */
    float lo, hi;
};

static void mm_release(struct ek_op *op) {
    struct mm_params *p = op->params;
    if (p) {
        free(p->packed);
        free(p);
    }
    op->params = NULL;
}

/* Pack the constant B, or size the scratch that run() packs B into. */
static ek_status_t mm_finish(struct ek_op *op, struct mm_params *p, const struct ek_tensor_desc *bdesc) {
    size_t one;
    if (!ek_gemm_packed_size(p->k, p->n, &one))
        return ek_op_invalid(op, "weights too large");
    p->packed_floats = one;
    const size_t nr = ek_gemm_nr();
    p->ncb = ek_round_up(p->n, nr);
    op->scratch_per_thread = 0;
    if (bdesc->storage == EK_STORAGE_CONSTANT && bdesc->constant) {
        size_t total, bytes;
        if (!ek_size_mul(one, p->b_matrices, &total) || !ek_size_mul(total, sizeof(float), &bytes))
            return ek_op_invalid(op, "weights too large");
        p->packed = malloc(bytes ? bytes : 1);
        if (!p->packed)
            return ek_fail(EK_ERR_OUT_OF_MEMORY, "op '%.120s': no memory for packed weights (%zu bytes)",
                           op->name ? op->name : "", bytes);
        const float *src = bdesc->constant;
        for (size_t i = 0; i < p->b_matrices; i++) {
            if (p->b_transposed)
                ek_gemm_pack_bt(p->n, p->k, src + i * p->n * p->k, p->k, p->packed + i * one);
            else
                ek_gemm_pack_b(p->k, p->n, src + i * p->k * p->n, p->n, p->packed + i * one);
        }
        return EK_OK;
    }
    /* Packed at run, a column block at a time: about 1 MiB of scratch, at least one panel. */
    size_t per_col;
    if (!ek_size_mul(p->k, sizeof(float), &per_col))
        return ek_op_invalid(op, "weights too large");
    size_t cols = ((size_t)1 << 20) / per_col / nr * nr;
    if (cols < nr)
        cols = nr;
    if (cols < p->ncb)
        p->ncb = cols;
    if (!ek_size_mul(p->ncb, per_col, &op->scratch_per_thread))
        return ek_op_invalid(op, "weights too large");
    return EK_OK;
}

static ek_status_t fc_prepare(struct ek_op *op) {
    ek_status_t st = ek_check_arity(op, 2, 3);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *x = op->in[0], *w = op->in[1], *b = op->n_in > 2 ? op->in[2] : NULL;
    const struct ek_tensor_desc *y = op->out[0];
    if ((st = ek_check_float_tensor(op, x, "X", -1)) != EK_OK || (st = ek_check_float_tensor(op, w, "W", 2)) != EK_OK ||
        (st = ek_check_float_tensor(op, y, "Y", x->rank)) != EK_OK)
        return st;
    if (b && (st = ek_check_float_tensor(op, b, "bias", 1)) != EK_OK)
        return st;
    int r = x->rank;
    if (w->dims[1] != x->dims[r - 1])
        return ek_op_invalid(op, "W is [%lld, %lld] but X's last dimension is %lld", (long long)w->dims[0],
                             (long long)w->dims[1], (long long)x->dims[r - 1]);
    if (b && b->dims[0] != w->dims[0])
        return ek_op_invalid(op, "bias has %lld values, W has %lld rows", (long long)b->dims[0],
                             (long long)w->dims[0]);
    for (int i = 0; i < r; i++) {
        int64_t want = i == r - 1 ? w->dims[0] : x->dims[i];
        if (y->dims[i] != want)
            return ek_op_invalid(op, "Y dimension %d is %lld, expected %lld", i, (long long)y->dims[i],
                                 (long long)want);
    }
    struct mm_params *p = calloc(1, sizeof *p);
    if (!p)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no memory for op parameters");
    op->params = p;
    p->k = (size_t)w->dims[1];
    p->n = (size_t)w->dims[0];
    p->m = x->count / p->k;
    p->batches = 1;
    p->b_matrices = 1;
    p->b_transposed = true;
    p->has_bias = b != NULL;
    if ((st = ek_parse_act(op, &p->lo, &p->hi)) != EK_OK || (st = mm_finish(op, p, w)) != EK_OK) {
        mm_release(op);
        return st;
    }
    return EK_OK;
}

static ek_status_t matmul_prepare(struct ek_op *op) {
    ek_status_t st = ek_check_arity(op, 2, 2);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *a = op->in[0], *b = op->in[1], *y = op->out[0];
    if ((st = ek_check_float_tensor(op, a, "A", -2)) != EK_OK || (st = ek_check_float_tensor(op, b, "B", -2)) != EK_OK)
        return st;
    int ra = a->rank, rb = b->rank, ry = ra > rb ? ra : rb;
    if ((st = ek_check_float_tensor(op, y, "Y", ry)) != EK_OK)
        return st;
    if (a->dims[ra - 1] != b->dims[rb - 2])
        return ek_op_invalid(op, "A is [..., %lld, %lld] but B is [..., %lld, %lld]", (long long)a->dims[ra - 2],
                             (long long)a->dims[ra - 1], (long long)b->dims[rb - 2], (long long)b->dims[rb - 1]);
    if (y->dims[ry - 2] != a->dims[ra - 2] || y->dims[ry - 1] != b->dims[rb - 1])
        return ek_op_invalid(op, "Y is [..., %lld, %lld], expected [..., %lld, %lld]", (long long)y->dims[ry - 2],
                             (long long)y->dims[ry - 1], (long long)a->dims[ra - 2], (long long)b->dims[rb - 1]);
    struct mm_params *p = calloc(1, sizeof *p);
    if (!p)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no memory for op parameters");
    op->params = p;
    p->m = (size_t)a->dims[ra - 2];
    p->k = (size_t)a->dims[ra - 1];
    p->n = (size_t)b->dims[rb - 1];
    p->batch_rank = ry - 2;
    /* Broadcast the batch dims from the right, numpy style; strides count whole matrices. */
    size_t as = 1, bs = 1;
    p->batches = 1;
    for (int i = ry - 3; i >= 0; i--) {
        int ia = i - (ry - ra), ib = i - (ry - rb);
        int64_t da = ia >= 0 ? a->dims[ia] : 1, db = ib >= 0 ? b->dims[ib] : 1;
        if (da != db && da != 1 && db != 1) {
            mm_release(op);
            return ek_op_invalid(op, "batch dimensions %lld and %lld do not broadcast", (long long)da,
                                 (long long)db);
        }
        int64_t dy = da > db ? da : db;
        if (y->dims[i] != dy) {
            mm_release(op);
            return ek_op_invalid(op, "Y dimension %d is %lld, expected %lld", i, (long long)y->dims[i],
                                 (long long)dy);
        }
        p->ydims[i] = (size_t)dy;
        p->astride[i] = da == 1 ? 0 : as;
        p->bstride[i] = db == 1 ? 0 : bs;
        as *= (size_t)da; /* products of validated dims: bounded by the tensors' counts */
        bs *= (size_t)db;
        p->batches *= (size_t)dy; /* bounded by Y's count */
    }
    p->b_matrices = bs;
    if (bs == 1) {
        /* One B for every batch: the A batches are consecutive rows of one product. */
        p->m *= p->batches;
        p->batches = 1;
        p->batch_rank = 0;
    }
    p->lo = -INFINITY;
    p->hi = INFINITY;
    if ((st = mm_finish(op, p, b)) != EK_OK) {
        mm_release(op);
        return st;
    }
    return EK_OK;
}

struct mm_run {
    const struct mm_params *p;
    const float *a, *b, *bias;
    float *y;
    struct ek_exec *exec;
    size_t mb, ncb, rblocks, cblocks;
};

static void mm_range(void *arg, size_t begin, size_t end, int thread) {
    const struct mm_run *r = arg;
    const struct mm_params *p = r->p;
    float *scratch = p->packed ? NULL : ek_exec_scratch(r->exec, thread);
    size_t packed_b = SIZE_MAX, packed_cb = SIZE_MAX;
    for (size_t it = begin; it < end; it++) {
        size_t rb = it % r->rblocks, rest = it / r->rblocks;
        size_t cb = rest % r->cblocks, batch = rest / r->cblocks;
        size_t ai = 0, bi = 0, idx = batch;
        for (int d = p->batch_rank - 1; d >= 0; d--) {
            size_t v = idx % p->ydims[d];
            idx /= p->ydims[d];
            ai += v * p->astride[d];
            bi += v * p->bstride[d];
        }
        size_t c0 = cb * r->ncb, cn = p->n - c0 < r->ncb ? p->n - c0 : r->ncb;
        const float *packed;
        if (p->packed) {
            packed = p->packed + bi * p->packed_floats + c0 * p->k;
        } else {
            if (bi != packed_b || cb != packed_cb) {
                if (p->b_transposed)
                    ek_gemm_pack_bt(cn, p->k, r->b + c0 * p->k, p->k, scratch);
                else
                    ek_gemm_pack_b(p->k, cn, r->b + bi * p->k * p->n + c0, p->n, scratch);
                packed_b = bi;
                packed_cb = cb;
            }
            packed = scratch;
        }
        size_t r0 = rb * r->mb, rn = p->m - r0 < r->mb ? p->m - r0 : r->mb;
        ek_gemm(rn, cn, p->k, r->a + ai * p->m * p->k + r0 * p->k, p->k, packed,
                r->y + batch * p->m * p->n + r0 * p->n + c0, p->n, r->bias ? r->bias + c0 : NULL, p->lo, p->hi);
    }
}

static ek_status_t mm_run(const struct ek_op *op, const void *const *in, void *const *out, struct ek_exec *exec) {
    const struct mm_params *p = op->params;
    if (!p)
        return ek_op_invalid(op, "not prepared");
    if (op->scratch_per_thread && !ek_exec_scratch(exec, 0))
        return ek_fail(EK_ERR_INTERNAL, "op '%.120s' (%s): no scratch memory given", op->name ? op->name : "",
                       ek_op_type_name((int)op->type));
    struct mm_run r = {p, in[0], in[1], NULL, out[0], exec, 0, 0, 0, 0};
    if (p->has_bias && op->n_in > 2)
        r.bias = in[2];
    size_t threads = (size_t)(ek_exec_threads(exec) > 0 ? ek_exec_threads(exec) : 1);
    /* Row blocks: an even share per thread, rounded to the register tile, at most about 256 rows. */
    const size_t mr = ek_gemm_mr(), nr = ek_gemm_nr();
    r.mb = ek_round_up((p->m + threads - 1) / threads, mr);
    if (r.mb > 256)
        r.mb = 256 / mr * mr;
    r.rblocks = (p->m + r.mb - 1) / r.mb;
    /* Too few blocks for the threads (a matrix-vector product): split the columns too. */
    r.ncb = p->ncb;
    r.cblocks = (p->n + r.ncb - 1) / r.ncb;
    while (p->batches * r.rblocks * r.cblocks < threads && r.ncb > nr) {
        r.ncb = ek_round_up(r.ncb / 2, nr);
        r.cblocks = (p->n + r.ncb - 1) / r.ncb;
    }
    ek_parallel_for(exec, p->batches * r.rblocks * r.cblocks, mm_range, &r);
    return EK_OK;
}

const struct ek_kernel ek_kernel_fully_connected = {EK_OP_FULLY_CONNECTED, 2, 3, 1, fc_prepare, mm_run, mm_release};
const struct ek_kernel ek_kernel_matmul = {EK_OP_MATMUL, 2, 2, 1, matmul_prepare, mm_run, mm_release};
