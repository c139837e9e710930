/* TOP_K and NON_MAX_SUPPRESSION: ops that select elements, so their outputs may have a size that
 * depends on the data (DYNAMIC outputs, docs/model-format.md). Both follow ONNX as onnxruntime runs it.
 *
 * TOP_K sorts each row along `axis` (the row gathered into (value, index) pairs) and keeps the first K;
 * ties go to the lower index. The output is always in order (sorted=0 leaves the order to the
 * implementation in ONNX; this one sorts). NaN compares greater than +inf: TOP_K of the largest
 * returns NaNs first, of the smallest last. With DYNAMIC outputs, K comes at run time and must lie in
 * 0 .. the recorded axis dim.
 *
 * NON_MAX_SUPPRESSION runs each (batch, class) as one task: the candidates with score >
 * score_threshold sorted by score descending (ties: the lower box index first), then greedily kept
 * unless their IoU with a kept box is > iou_threshold, until max_output_boxes_per_class are kept.
 * A NaN score is never selected (with or without a score_threshold); a box with NaN coordinates
 * neither suppresses nor is suppressed (its IoU is NaN, not > the threshold), as in onnxruntime.
 * An iou_threshold outside [0, 1] (or NaN) fails the run, as in onnxruntime; a max_output_boxes_per_class
 * <= 0 selects no boxes. Each task writes its rows to its own slot of the output (at most
 * min(N, max_output_boxes_per_class) rows), which a serial pass then packs in (batch, class) order.
 *
 * Both allocate their working memory per run (a row or N candidates per thread, and the tasks' counts). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "internal.h"
#include "portable.h"

#ifndef EK_KERNEL_PAR_MIN
#define EK_KERNEL_PAR_MIN 16384
#endif

struct pair {
    float v;
    int64_t i;
};

/* Descending, NaN first, ties by index. */
static int cmp_desc(const void *pa, const void *pb) {
    const struct pair *a = pa, *b = pb;
    bool an = isnan(a->v), bn = isnan(b->v);
    if (an != bn)
        return an ? -1 : 1;
    if (!an && a->v != b->v)
        return a->v > b->v ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

/* Ascending, NaN last, ties by index. */
static int cmp_asc(const void *pa, const void *pb) {
    const struct pair *a = pa, *b = pb;
    bool an = isnan(a->v), bn = isnan(b->v);
    if (an != bn)
        return an ? 1 : -1;
    if (!an && a->v != b->v)
        return a->v < b->v ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

static bool is_k_tensor(const struct ek_tensor_desc *t) {
    return t && t->dtype == EK_DTYPE_INT64 && t->count == 1 && t->nbytes == sizeof(int64_t);
}

static bool is_scalar_f32(const struct ek_tensor_desc *t) {
    return t && t->dtype == EK_DTYPE_FLOAT32 && t->count == 1 && t->nbytes == sizeof(float);
}

static int64_t read_i64(const void *p) {
    int64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static float read_f32(const void *p) {
    float v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* ---- TOP_K ---- */

struct topk_params {
    size_t outer, n, inner;
    int64_t bound; /* the outputs' axis dim: K (static) or the most K may be (DYNAMIC) */
    int axis;
    bool largest, dynamic; /* dynamic: K comes at run time (either output is DYNAMIC; an unused one is not) */
};

static ek_status_t prepare_top_k(struct ek_op *op) {
    if (op->n_in != 2 || op->n_out != 2 || !op->in || !op->out || !op->in[0] || !op->in[1] || !op->out[0] ||
        !op->out[1])
        return ek_op_invalid(op, "takes inputs X, K and outputs Values, Indices; has %d inputs and %d outputs",
                             op->n_in, op->n_out);
    const struct ek_tensor_desc *x = op->in[0], *k = op->in[1], *v = op->out[0], *ix = op->out[1];
    ek_status_t st = ek_check_float_tensor(op, x, "input X", -1);
    if (st != EK_OK)
        return st;
    if (!is_k_tensor(k))
        return ek_op_invalid(op, "input K must be int64 of 1 element (dtype %d, %zu elements)", (int)k->dtype,
                             k->count);
    int64_t axis, largest, sorted;
    st = ek_attr_int(op, "axis", x->rank - 1, &axis);
    if (st == EK_OK)
        st = ek_attr_int(op, "largest", 1, &largest);
    if (st == EK_OK)
        st = ek_attr_int(op, "sorted", 1, &sorted);
    if (st != EK_OK)
        return st;
    if (axis < 0 || axis >= x->rank)
        return ek_op_invalid(op, "attribute 'axis' is %lld; X has rank %d", (long long)axis, x->rank);
    if (largest != 0 && largest != 1)
        return ek_op_invalid(op, "attribute 'largest' is %lld (0 or 1)", (long long)largest);
    if (sorted != 0 && sorted != 1)
        return ek_op_invalid(op, "attribute 'sorted' is %lld (0 or 1)", (long long)sorted);
    if (v->dtype != EK_DTYPE_FLOAT32 || ix->dtype != EK_DTYPE_INT64)
        return ek_op_invalid(op, "outputs Values and Indices must be float32 and int64");
    char xs[96], vs[96], is[96];
    for (int i = 0; i < 2; i++) {
        const struct ek_tensor_desc *o = op->out[i];
        bool same = o->rank == x->rank;
        for (int d = 0; same && d < x->rank; d++)
            same = d == axis ? o->dims[d] >= 1 && o->dims[d] <= x->dims[d] : o->dims[d] == x->dims[d];
        if (!same)
            return ek_op_invalid(op, "outputs Values %s and Indices %s must be X's shape %s with axis %lld's dim at "
                                 "most X's", ek_shape_str(v, vs, sizeof vs), ek_shape_str(ix, is, sizeof is),
                                 ek_shape_str(x, xs, sizeof xs), (long long)axis);
    }
    if (v->dims[axis] != ix->dims[axis])
        return ek_op_invalid(op, "outputs Values %s and Indices %s differ", ek_shape_str(v, vs, sizeof vs),
                             ek_shape_str(ix, is, sizeof is));
    bool dynamic = v->dynamic || ix->dynamic;
    if (!dynamic && k->storage == EK_STORAGE_CONSTANT && k->constant && read_i64(k->constant) != v->dims[axis])
        return ek_op_invalid(op, "K is %lld but the outputs' axis dim is %lld", (long long)read_i64(k->constant),
                             (long long)v->dims[axis]);
    if (!dynamic && k->storage != EK_STORAGE_CONSTANT)
        return ek_op_invalid(op, "input K is given at run time ('%s'), so outputs Values and Indices must be "
                             "DYNAMIC", k->name ? k->name : "?");
    struct topk_params *p = calloc(1, sizeof *p);
    if (!p)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "out of memory preparing op '%.120s'", op->name ? op->name : "");
    p->outer = p->inner = 1;
    for (int d = 0; d < axis; d++)
        p->outer *= (size_t)x->dims[d];
    for (int d = (int)axis + 1; d < x->rank; d++)
        p->inner *= (size_t)x->dims[d];
    p->n = (size_t)x->dims[axis];
    p->bound = v->dims[axis];
    p->axis = (int)axis;
    p->largest = largest == 1;
    p->dynamic = dynamic;
    op->params = p;
    op->scratch_per_thread = 0;
    return EK_OK;
}

struct topk_job {
    const struct topk_params *p;
    const float *x;
    float *values;
    int64_t *indices;
    size_t k;
    struct pair *work; /* n pairs per thread */
};

static void topk_range(void *arg, size_t begin, size_t end, int thread) {
    const struct topk_job *job = arg;
    const struct topk_params *p = job->p;
    struct pair *row = job->work + (size_t)thread * p->n;
    for (size_t task = begin; task < end; task++) {
        size_t o = task / p->inner, j = task % p->inner;
        const float *x = job->x + o * p->n * p->inner + j;
        for (size_t i = 0; i < p->n; i++) {
            row[i].v = x[i * p->inner];
            row[i].i = (int64_t)i;
        }
        qsort(row, p->n, sizeof *row, p->largest ? cmp_desc : cmp_asc);
        size_t base = o * job->k * p->inner + j;
        for (size_t i = 0; i < job->k; i++) {
            job->values[base + i * p->inner] = row[i].v;
            job->indices[base + i * p->inner] = row[i].i;
        }
    }
}

static ek_status_t run_top_k(const struct ek_op *op, const void *const *in, void *const *out, struct ek_exec *exec) {
    const struct topk_params *p = op->params;
    int64_t k = read_i64(in[1]);
    if (k < 0 || k > p->bound)
        return ek_fail(EK_ERR_INVALID_ARG, "K is %lld, outside 0 .. %lld (%s)", (long long)k, (long long)p->bound,
                       p->dynamic ? "the size of X's axis, the outputs' recorded bound" : "the compiled K");
    if (!p->dynamic && k != p->bound)
        return ek_fail(EK_ERR_INVALID_ARG, "K is %lld, the model was compiled for %lld", (long long)k,
                       (long long)p->bound);
    size_t tasks = p->outer * p->inner;
    if (k > 0 && tasks > 0) {
        int threads = ek_exec_threads(exec);
        bool par = exec && tasks > 1 && tasks * p->n >= EK_KERNEL_PAR_MIN && threads > 1;
        size_t nthreads = par ? (size_t)threads : 1;
        struct pair *work = malloc(nthreads * p->n * sizeof *work);
        if (!work)
            return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for its working rows");
        struct topk_job job = {p, in[0], out[0], out[1], (size_t)k, work};
        if (par)
            ek_parallel_for(exec, tasks, topk_range, &job);
        else
            topk_range(&job, 0, tasks, 0);
        free(work);
    }
    if (p->dynamic) {
        int64_t dims[EK_MAX_DIMS];
        memcpy(dims, op->out[0]->dims, sizeof dims);
        dims[p->axis] = k;
        for (int i = 0; i < 2; i++) { /* an output no one reads is not DYNAMIC: written the same, unreported */
            ek_status_t st = op->out[i]->dynamic ? ek_exec_set_dims(exec, op->out[i], dims) : EK_OK;
            if (st != EK_OK)
                return st;
        }
    }
    return EK_OK;
}

static void release_select(struct ek_op *op) {
    free(op->params);
    op->params = NULL;
}

const struct ek_kernel ek_kernel_top_k = {EK_OP_TOP_K, 2, 2, 2, prepare_top_k, run_top_k, release_select};

/* ---- NON_MAX_SUPPRESSION ---- */

struct nms_params {
    size_t batches, classes, boxes;
    int64_t rows;     /* the output's recorded rows */
    bool center;      /* center_point_box 1 */
};

static ek_status_t prepare_nms(struct ek_op *op) {
    if (op->n_in < 2 || op->n_in > 5 || op->n_out != 1 || !op->in || !op->out || !op->in[0] || !op->in[1] ||
        !op->out[0])
        return ek_op_invalid(op, "takes inputs boxes, scores and up to 3 optional ones, and 1 output; has %d inputs "
                             "and %d outputs", op->n_in, op->n_out);
    const struct ek_tensor_desc *boxes = op->in[0], *scores = op->in[1], *y = op->out[0];
    ek_status_t st = ek_check_float_tensor(op, boxes, "input boxes", 3);
    if (st == EK_OK)
        st = ek_check_float_tensor(op, scores, "input scores", 3);
    if (st != EK_OK)
        return st;
    char bs[96], ss[96];
    if (boxes->dims[2] != 4 || scores->dims[0] != boxes->dims[0] || scores->dims[2] != boxes->dims[1])
        return ek_op_invalid(op, "boxes %s and scores %s must be [B,N,4] and [B,C,N]",
                             ek_shape_str(boxes, bs, sizeof bs), ek_shape_str(scores, ss, sizeof ss));
    if (op->n_in > 2 && op->in[2] && !is_k_tensor(op->in[2]))
        return ek_op_invalid(op, "input max_output_boxes_per_class must be int64 of 1 element");
    if (op->n_in > 3 && op->in[3] && !is_scalar_f32(op->in[3]))
        return ek_op_invalid(op, "input iou_threshold must be float32 of 1 element");
    if (op->n_in > 4 && op->in[4] && !is_scalar_f32(op->in[4]))
        return ek_op_invalid(op, "input score_threshold must be float32 of 1 element");
    int64_t center;
    st = ek_attr_int(op, "center_point_box", 0, &center);
    if (st != EK_OK)
        return st;
    if (center != 0 && center != 1)
        return ek_op_invalid(op, "attribute 'center_point_box' is %lld (0 or 1)", (long long)center);
    if (y->dtype != EK_DTYPE_INT64 || y->rank != 2 || y->dims[1] != 3 || !y->dynamic)
        return ek_op_invalid(op, "output selected_indices must be a DYNAMIC int64 [S,3] tensor");
    int64_t b = boxes->dims[0], c = scores->dims[1], n = boxes->dims[1], per = n, need;
    const struct ek_tensor_desc *m = op->n_in > 2 ? op->in[2] : NULL;
    if (!m)
        per = 0;
    else if (m->storage == EK_STORAGE_CONSTANT && m->constant) {
        int64_t v = read_i64(m->constant);
        per = v < 0 ? 0 : v < n ? v : n;
    }
    if (!ek_i64_mul(b, c, &need) || !ek_i64_mul(need, per, &need))
        return ek_op_invalid(op, "B x C x boxes per class overflows");
    if (y->dims[0] < need)
        return ek_op_invalid(op, "output selected_indices has %lld rows, fewer than the %lld it may need (B %lld x "
                             "C %lld x %lld per class)", (long long)y->dims[0], (long long)need, (long long)b,
                             (long long)c, (long long)per);
    struct nms_params *p = calloc(1, sizeof *p);
    if (!p)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "out of memory preparing op '%.120s'", op->name ? op->name : "");
    p->batches = (size_t)b;
    p->classes = (size_t)c;
    p->boxes = (size_t)n;
    p->rows = y->dims[0];
    p->center = center == 1;
    op->params = p;
    op->scratch_per_thread = 0;
    return EK_OK;
}

static void min_max(float a, float b, float *lo, float *hi) {
    if (a >= b) {
        *lo = b;
        *hi = a;
    } else {
        *lo = a;
        *hi = b;
    }
}

/* The box's x and y extents. */
static void box_extent(const float *box, bool center, float *x0, float *x1, float *y0, float *y1) {
    if (center) {
        float hw = box[2] / 2, hh = box[3] / 2;
        *x0 = box[0] - hw;
        *x1 = box[0] + hw;
        *y0 = box[1] - hh;
        *y1 = box[1] + hh;
    } else { /* y1, x1, y2, x2, corners in either order */
        min_max(box[1], box[3], x0, x1);
        min_max(box[0], box[2], y0, y1);
    }
}

/* Whether `cand` is suppressed by the kept box `kept` (IoU > threshold). */
static bool suppressed(const float *kept, const float *cand, bool center, float threshold) {
    float ax0, ax1, ay0, ay1, bx0, bx1, by0, by1;
    box_extent(kept, center, &ax0, &ax1, &ay0, &ay1);
    box_extent(cand, center, &bx0, &bx1, &by0, &by1);
    float ix0 = ax0 > bx0 ? ax0 : bx0, ix1 = ax1 < bx1 ? ax1 : bx1;
    if (ix1 <= ix0)
        return false;
    float iy0 = ay0 > by0 ? ay0 : by0, iy1 = ay1 < by1 ? ay1 : by1;
    if (iy1 <= iy0)
        return false;
    float inter = (ix1 - ix0) * (iy1 - iy0);
    if (inter <= 0.0f)
        return false;
    float area_a = (ax1 - ax0) * (ay1 - ay0), area_b = (bx1 - bx0) * (by1 - by0);
    float uni = area_a + area_b - inter;
    if (area_a <= 0.0f || area_b <= 0.0f || uni <= 0.0f)
        return false;
    return inter / uni > threshold;
}

struct nms_job {
    const struct nms_params *p;
    const float *boxes, *scores;
    int64_t *rows;   /* the output: task t's rows start at row t * per */
    size_t per;      /* the most rows a task keeps */
    size_t *counts;  /* per task */
    struct pair *work; /* boxes candidates per thread, then boxes kept indices */
    bool has_score;
    float score_threshold, iou_threshold;
};

static void nms_range(void *arg, size_t begin, size_t end, int thread) {
    const struct nms_job *job = arg;
    const struct nms_params *p = job->p;
    struct pair *cand = job->work + (size_t)thread * p->boxes;
    for (size_t task = begin; task < end; task++) {
        size_t b = task / p->classes, c = task % p->classes;
        const float *scores = job->scores + task * p->boxes, *boxes = job->boxes + b * p->boxes * 4;
        size_t n = 0;
        for (size_t i = 0; i < p->boxes; i++) {
            float s = scores[i];
            if (isnan(s) || (job->has_score && !(s > job->score_threshold)))
                continue;
            cand[n].v = s;
            cand[n].i = (int64_t)i;
            n++;
        }
        qsort(cand, n, sizeof *cand, cmp_desc);
        int64_t *out = job->rows + task * job->per * 3;
        size_t kept = 0;
        for (size_t i = 0; i < n && kept < job->per; i++) {
            const float *box = boxes + (size_t)cand[i].i * 4;
            bool keep = true;
            for (size_t k = 0; k < kept && keep; k++)
                keep = !suppressed(boxes + (size_t)out[3 * k + 2] * 4, box, p->center, job->iou_threshold);
            if (keep) {
                out[3 * kept] = (int64_t)b;
                out[3 * kept + 1] = (int64_t)c;
                out[3 * kept + 2] = cand[i].i;
                kept++;
            }
        }
        job->counts[task] = kept;
    }
}

static ek_status_t run_nms(const struct ek_op *op, const void *const *in, void *const *out, struct ek_exec *exec) {
    const struct nms_params *p = op->params;
    int64_t max_out = op->n_in > 2 && op->in[2] ? read_i64(in[2]) : 0;
    float iou = op->n_in > 3 && op->in[3] ? read_f32(in[3]) : 0.0f;
    struct nms_job job;
    memset(&job, 0, sizeof job);
    job.has_score = op->n_in > 4 && op->in[4];
    job.score_threshold = job.has_score ? read_f32(in[4]) : 0.0f;
    job.iou_threshold = iou;
    if (!(iou >= 0.0f && iou <= 1.0f))
        return ek_fail(EK_ERR_INVALID_ARG, "iou_threshold is %g, outside [0, 1]", (double)iou);
    size_t per = max_out <= 0 ? 0 : (uint64_t)max_out < p->boxes ? (size_t)max_out : p->boxes;
    size_t tasks = p->batches * p->classes, produced = 0;
    if (per > 0 && tasks > 0) {
        /* prepare checked the rows for a CONSTANT count; a run-time one was bounded by N there */
        if ((uint64_t)p->rows / tasks < per)
            return ek_fail(EK_ERR_INVALID_ARG, "max_output_boxes_per_class %lld needs up to %zu rows, the output's "
                           "bound is %lld", (long long)max_out,
                           tasks * per, (long long)p->rows);
        int threads = ek_exec_threads(exec);
        bool par = exec && tasks > 1 && tasks * p->boxes * 16 >= EK_KERNEL_PAR_MIN && threads > 1;
        size_t nthreads = par ? (size_t)threads : 1;
        job.work = malloc(nthreads * p->boxes * sizeof *job.work);
        job.counts = malloc(tasks * sizeof *job.counts);
        if (!job.work || !job.counts) {
            free(job.work);
            free(job.counts);
            return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for its candidates");
        }
        job.p = p;
        job.boxes = in[0];
        job.scores = in[1];
        job.rows = out[0];
        job.per = per;
        if (par)
            ek_parallel_for(exec, tasks, nms_range, &job);
        else
            nms_range(&job, 0, tasks, 0);
        int64_t *rows = out[0];
        for (size_t t = 0; t < tasks; t++) { /* pack the slots; each moves down, never up */
            if (job.counts[t] && produced != t * per)
                memmove(rows + produced * 3, rows + t * per * 3, job.counts[t] * 3 * sizeof *rows);
            produced += job.counts[t];
        }
        free(job.work);
        free(job.counts);
    }
    int64_t dims[EK_MAX_DIMS] = {(int64_t)produced, 3};
    return ek_exec_set_dims(exec, op->out[0], dims);
}

const struct ek_kernel ek_kernel_non_max_suppression = {EK_OP_NON_MAX_SUPPRESSION, 2, 5, 1, prepare_nms, run_nms,
                                                        release_select};
