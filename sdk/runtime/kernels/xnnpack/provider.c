/* The XNNPACK kernel provider: libedgekit_xnnpack.so, which libedgekit dlopens at run time.
 *
 * For each op it is offered, create() builds an XNNPACK operator (the weights are packed there, once)
 * when XNNPACK computes exactly what docs/model-format.md says the op computes; anything else is
 * EK_ERR_UNSUPPORTED, and the portable kernel runs the op. run() is XNNPACK's setup + run on the
 * buffers of one launch, on the launch's team of threads (threadpool.c implements the pthreadpool
 * API XNNPACK calls on it).
 *
 * This library does not link libedgekit and calls nothing of it: it reads the op's attributes and
 * tensor descriptions itself (op->params belongs to the portable kernel). It builds against the
 * XNNPACK of Debian 12 (0.0~git20220216: setup with shapes and a pthreadpool) and of Debian 13
 * (0.0~git20241108: reshape with shapes and a pthreadpool, then setup with pointers and a workspace),
 * through the calls of generation.h, which the build points at the target's generation. Both have
 * XNN_MAX_TENSOR_DIMS 6; the ops taken are the same on both.
 *
 * The int8 ops of .ekm 1.5 are quantized.c's: they share this file's op state (provider.h), setup cache
 * and team; ekx_create hands them over, setup() calls back into ekx_setup_quantized.
 *
 * A CONV with the residual input Z (.ekm 1.4) is two XNNPACK operators in one state: the convolution
 * without the clamp, then the add of Y and Z into Y, in place, with the clamp (fused in the 2022 add,
 * a third operator with the 2024 API, as for every binary op with a clamp there).
 *
 * Buffers: XNNPACK may read up to XNN_EXTRA_BYTES (16) bytes past the end of an input (never write).
 * Constants read at run time (binary-op operands) are copied here into padded buffers; arena and
 * user buffers must have that slack (the engine pads the arena; device blocks are rounded to 64). */
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generation.h"
#include "kernel.h"
#include "provider.h"
#include "threadpool.h"

#if defined(__GNUC__)
#define EKX_EXPORT __attribute__((visibility("default")))
#else
#define EKX_EXPORT
#endif

/* ---- process-wide XNNPACK state: initialised once ---- */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static enum xnn_status init_status = xnn_status_uninitialized;
static bool on_team; /* XNNPACK's pthreadpool calls reach threadpool.c (else: libpthreadpool's pools) */

/* One small XNNPACK op with a NULL pool, for ekx_threadpool_probe. */
static bool run_probe_op(void) {
    float x[256] = {0}, y[256];
    xnn_operator_t op = NULL;
    bool ok = ekx_create_unary(EKX_CLAMP, 1, -1.0f, 1.0f, &op) == xnn_status_success &&
              ekx_setup_unary(op, EKX_CLAMP, 256, 1, x, y, NULL) == xnn_status_success &&
              xnn_run_operator(op, NULL) == xnn_status_success;
    if (op)
        xnn_delete_operator(op);
    return ok;
}

static void init_xnnpack(void) {
    init_status = xnn_initialize(NULL);
    if (init_status == xnn_status_success)
        on_team = ekx_threadpool_probe(run_probe_op);
}

/* The fallback when XNNPACK's calls do not reach threadpool.c: libpthreadpool's pools, made lazily
 * and kept for the life of the process (the library is linked -z nodelete, so a dlclose cannot
 * unmap code their idle workers wait in). A pool serializes concurrent parallel calls itself, so
 * runs on different threads may share one. */
#define EKX_MAX_THREADS 64
static pthread_mutex_t pools_lock = PTHREAD_MUTEX_INITIALIZER;
static pthreadpool_t pools[EKX_MAX_THREADS + 1];

/* NULL (XNNPACK runs on the calling thread) for 1 thread, or when a pool cannot be made. */
static pthreadpool_t pool_for(int threads) {
    if (threads <= 1)
        return NULL;
    if (threads > EKX_MAX_THREADS)
        threads = EKX_MAX_THREADS;
    pthread_mutex_lock(&pools_lock);
    if (!pools[threads])
        pools[threads] = pthreadpool_create((size_t)threads);
    pthreadpool_t pool = pools[threads];
    pthread_mutex_unlock(&pools_lock);
    return pool;
}

static void state_free(struct ekx_state *s) {
    if (!s)
        return;
    if (s->op)
        xnn_delete_operator(s->op);
    if (s->residual)
        xnn_delete_operator(s->residual);
    if (s->clamp)
        xnn_delete_operator(s->clamp);
    ekx_workspace_free(&s->workspace);
    free(s->residual_z);
    free(s->constant[0]);
    free(s->constant[1]);
    free(s->slope);
    free(s);
}

ek_status_t create_failed(enum xnn_status status) {
    return status == xnn_status_out_of_memory ? EK_ERR_OUT_OF_MEMORY : EK_ERR_UNSUPPORTED;
}

/* ---- reading the op (already validated by the portable kernel's prepare) ---- */

const struct ek_attr *find_attr(const struct ek_op *op, const char *name) {
    for (int i = 0; i < op->n_attrs; i++)
        if (op->attrs[i].name && strcmp(op->attrs[i].name, name) == 0)
            return &op->attrs[i];
    return NULL;
}

bool attr_int(const struct ek_op *op, const char *name, int64_t def, int64_t *out) {
    const struct ek_attr *a = find_attr(op, name);
    if (!a) {
        *out = def;
        return true;
    }
    if (a->type != EK_ATTR_INT)
        return false;
    *out = a->i;
    return true;
}

bool attr_float(const struct ek_op *op, const char *name, float def, float *out) {
    const struct ek_attr *a = find_attr(op, name);
    if (!a) {
        *out = def;
        return true;
    }
    if (a->type != EK_ATTR_FLOAT)
        return false;
    *out = a->f;
    return true;
}

bool attr_u32s(const struct ek_op *op, const char *name, uint32_t count, int64_t def, int64_t lo, uint32_t *out) {
    const struct ek_attr *a = find_attr(op, name);
    if (!a) {
        if (def < lo || def > (int64_t)UINT32_MAX)
            return false;
        for (uint32_t i = 0; i < count; i++)
            out[i] = (uint32_t)def;
        return true;
    }
    if (a->type != EK_ATTR_INTS || a->count != count || (count && !a->ints))
        return false;
    for (uint32_t i = 0; i < count; i++) {
        if (a->ints[i] < lo || a->ints[i] > (int64_t)UINT32_MAX)
            return false;
        out[i] = (uint32_t)a->ints[i];
    }
    return true;
}

/* The fused activation bounds (act_min, act_max); false when XNNPACK cannot take them. */
static bool attr_act(const struct ek_op *op, float *lo, float *hi) {
    if (!attr_float(op, "act_min", -INFINITY, lo) || !attr_float(op, "act_max", INFINITY, hi))
        return false;
    return !isnan(*lo) && !isnan(*hi) && *lo < *hi;
}

static bool is_f32(const struct ek_tensor_desc *t) {
    return t && t->dtype == EK_DTYPE_FLOAT32;
}

bool is_constant(const struct ek_tensor_desc *t) {
    return t && t->storage == EK_STORAGE_CONSTANT && t->constant;
}

bool fits_u32(int64_t v) {
    return v >= 0 && v <= (int64_t)UINT32_MAX;
}

/* An optional constant bias of `n` elements: *bias is NULL when absent. false: declined. */
static bool optional_bias(const struct ek_op *op, int index, int64_t n, const float **bias) {
    *bias = NULL;
    if (op->n_in <= index || !op->in[index])
        return true;
    const struct ek_tensor_desc *b = op->in[index];
    if (!is_f32(b) || !is_constant(b) || (int64_t)b->count != n)
        return false;
    *bias = (const float *)b->constant;
    return true;
}

/* ---- ops ---- */

bool conv_geometry(const struct ek_op *op, struct ekx_conv *g) {
    const struct ek_tensor_desc *x = op->in[0], *w = op->n_in > 1 ? op->in[1] : NULL, *y = op->out[0];
    if (!w || x->rank != 4 || w->rank != 4 || y->rank != 4 || !is_constant(w))
        return false;
    if (!attr_u32s(op, "pads", 4, 0, 0, g->pads) || !attr_u32s(op, "strides", 2, 1, 1, g->strides) ||
        !attr_u32s(op, "dilations", 2, 1, 1, g->dilations) || !attr_int(op, "group", 1, &g->group))
        return false;
    const int64_t c = x->dims[3], m = w->dims[0], kh = w->dims[1], kw = w->dims[2], cg = w->dims[3];
    if (g->group < 1 || !fits_u32(g->group) || c != g->group * cg || m % g->group != 0 || y->dims[3] != m ||
        !fits_u32(kh) || !fits_u32(kw) || y->dims[0] != x->dims[0])
        return false;
    /* XNNPACK's output size is the op's (floor); check it so a setup can never disagree. */
    const int64_t ekh = (kh - 1) * g->dilations[0] + 1, ekw = (kw - 1) * g->dilations[1] + 1;
    const int64_t ph = x->dims[1] + g->pads[0] + g->pads[2], pw = x->dims[2] + g->pads[1] + g->pads[3];
    if (ph < ekh || pw < ekw || (ph - ekh) / g->strides[0] + 1 != y->dims[1] ||
        (pw - ekw) / g->strides[1] + 1 != y->dims[2])
        return false;
    g->c = c;
    g->m = m;
    g->kh = kh;
    g->kw = kw;
    g->cg = cg;
    return true;
}

static ek_status_t create_conv(const struct ek_op *op, struct ekx_state *s) {
    const struct ek_tensor_desc *x = op->in[0], *w = op->in[1], *y = op->out[0];
    struct ekx_conv g;
    float lo, hi;
    if (!conv_geometry(op, &g) || !attr_act(op, &lo, &hi))
        return EK_ERR_UNSUPPORTED;
    const uint32_t *pads = g.pads, *strides = g.strides, *dilations = g.dilations;
    const int64_t group = g.group, c = g.c, m = g.m, kh = g.kh, kw = g.kw, cg = g.cg;
    const float *bias;
    if (!optional_bias(op, 2, m, &bias))
        return EK_ERR_UNSUPPORTED;
    const struct ek_tensor_desc *z = op->n_in > 3 ? op->in[3] : NULL;
    if (z && (z->rank != 4 || memcmp(z->dims, y->dims, 4 * sizeof z->dims[0]) != 0))
        return EK_ERR_UNSUPPORTED;
    /* W[M,KH,KW,C/group] is XNNPACK's [groups, group_output_channels, kh, kw, group_input_channels]. */
    enum xnn_status st = ekx_create_conv2d(
        pads[0], pads[3], pads[2], pads[1], (uint32_t)kh, (uint32_t)kw, strides[0], strides[1], dilations[0],
        dilations[1], (uint32_t)group, (size_t)cg, (size_t)(m / group), (size_t)c, (size_t)m,
        (const float *)w->constant, bias, z ? -INFINITY : lo, z ? INFINITY : hi, &s->op);
    if (st != xnn_status_success)
        return create_failed(st);
    if (z) {
        if ((st = ekx_create_binary(EKX_ADD, lo, hi, &s->residual, &s->clamp)) != xnn_status_success)
            return create_failed(st);
        s->residual_count = s->clamp_count = y->count;
        if (is_constant(z)) {
            ek_status_t status = padded_copy(z, &s->residual_z);
            if (status != EK_OK)
                return status;
        }
    }
    s->kind = EKX_CONV;
    s->batch = (size_t)x->dims[0];
    s->height = (size_t)x->dims[1];
    s->width = (size_t)x->dims[2];
    return EK_OK;
}

static ek_status_t create_deconv(const struct ek_op *op, struct ekx_state *s) {
    const struct ek_tensor_desc *x = op->in[0], *w = op->n_in > 1 ? op->in[1] : NULL, *y = op->out[0];
    if (!w || x->rank != 4 || w->rank != 4 || y->rank != 4 || !is_constant(w))
        return EK_ERR_UNSUPPORTED;
    uint32_t pads[4], strides[2], dilations[2], adj[2];
    int64_t group;
    float lo, hi;
    if (!attr_u32s(op, "pads", 4, 0, 0, pads) || !attr_u32s(op, "strides", 2, 1, 1, strides) ||
        !attr_u32s(op, "dilations", 2, 1, 1, dilations) || !attr_u32s(op, "adjustments", 2, 0, 0, adj) ||
        !attr_int(op, "group", 1, &group) || !attr_act(op, &lo, &hi))
        return EK_ERR_UNSUPPORTED;
    const int64_t c = x->dims[3], m = w->dims[0], kh = w->dims[1], kw = w->dims[2], cg = w->dims[3];
    if (group < 1 || !fits_u32(group) || c != group * cg || m % group != 0 || y->dims[3] != m ||
        !fits_u32(kh) || !fits_u32(kw) || y->dims[0] != x->dims[0])
        return EK_ERR_UNSUPPORTED;
    /* XNNPACK's setup refuses an adjustment that is not below the stride. */
    if (adj[0] >= strides[0] || adj[1] >= strides[1])
        return EK_ERR_UNSUPPORTED;
    const int64_t oh = (x->dims[1] - 1) * strides[0] + (kh - 1) * dilations[0] + 1 - pads[0] - pads[2] + adj[0];
    const int64_t ow = (x->dims[2] - 1) * strides[1] + (kw - 1) * dilations[1] + 1 - pads[1] - pads[3] + adj[1];
    if (oh != y->dims[1] || ow != y->dims[2])
        return EK_ERR_UNSUPPORTED;
    const float *bias;
    if (!optional_bias(op, 2, m, &bias))
        return EK_ERR_UNSUPPORTED;
    enum xnn_status st = ekx_create_deconv2d(
        pads[0], pads[3], pads[2], pads[1], (uint32_t)kh, (uint32_t)kw, strides[0], strides[1], dilations[0],
        dilations[1], (uint32_t)group, (size_t)cg, (size_t)(m / group), (size_t)c, (size_t)m,
        (const float *)w->constant, bias, lo, hi, &s->op);
    if (st != xnn_status_success)
        return create_failed(st);
    s->kind = EKX_DECONV;
    s->batch = (size_t)x->dims[0];
    s->height = (size_t)x->dims[1];
    s->width = (size_t)x->dims[2];
    s->adj_h = adj[0];
    s->adj_w = adj[1];
    return EK_OK;
}

static ek_status_t create_fc(const struct ek_op *op, struct ekx_state *s) {
    const struct ek_tensor_desc *x = op->in[0], *w = op->n_in > 1 ? op->in[1] : NULL, *y = op->out[0];
    if (!w || x->rank < 1 || w->rank != 2 || !is_constant(w))
        return EK_ERR_UNSUPPORTED;
    const int64_t k = w->dims[1], n = w->dims[0];
    if (x->dims[x->rank - 1] != k || y->rank < 1 || y->dims[y->rank - 1] != n || x->count / (size_t)k !=
        y->count / (size_t)n)
        return EK_ERR_UNSUPPORTED;
    float lo, hi;
    const float *bias;
    if (!attr_act(op, &lo, &hi) || !optional_bias(op, 2, n, &bias))
        return EK_ERR_UNSUPPORTED;
    /* W[N,K] is XNNPACK's default kernel layout [output_channels, input_channels]. */
    enum xnn_status st = ekx_create_fc((size_t)k, (size_t)n, (const float *)w->constant, bias, lo, hi, &s->op);
    if (st != xnn_status_success)
        return create_failed(st);
    s->kind = EKX_FC;
    s->batch = x->count / (size_t)k;
    return EK_OK;
}

/* MAX_POOL and AVERAGE_POOL. XNNPACK's output size is floor((H + pads - window) / stride) + 1; a
 * ceil-mode partial window is reached by padding the end more, which is exact where XNNPACK's
 * padding rule is ours: max pooling clamps an outside tap to the nearest edge row/column, which is
 * a tap of the same window only without dilation; average pooling with padding divides by the taps
 * inside the input (count_include_pad 0), without padding by the window size. */
static ek_status_t create_pool(const struct ek_op *op, struct ekx_state *s, bool max) {
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    if (x->rank != 4 || y->rank != 4 || y->dims[0] != x->dims[0] || y->dims[3] != x->dims[3])
        return EK_ERR_UNSUPPORTED;
    uint32_t kernel[2], strides[2], pads[4], dilations[2] = {1, 1};
    int64_t include_pad = 0;
    if (!find_attr(op, "kernel") || !attr_u32s(op, "kernel", 2, 1, 1, kernel) ||
        !attr_u32s(op, "strides", 2, 1, 1, strides) || !attr_u32s(op, "pads", 4, 0, 0, pads))
        return EK_ERR_UNSUPPORTED;
    if (!attr_u32s(op, "dilations", 2, 1, 1, dilations) ||
        (!max && !attr_int(op, "count_include_pad", 0, &include_pad)))
        return EK_ERR_UNSUPPORTED;
    /* XNNPACK's average pooling has no dilation. */
    if (!max && (dilations[0] != 1 || dilations[1] != 1))
        return EK_ERR_UNSUPPORTED;
    const int64_t h = x->dims[1], w = x->dims[2], oh = y->dims[1], ow = y->dims[2];
    const int64_t ekh = ((int64_t)kernel[0] - 1) * dilations[0] + 1;
    const int64_t ekw = ((int64_t)kernel[1] - 1) * dilations[1] + 1;
    /* The end padding that gives exactly OH x OW windows: more than the op's for a ceil-mode
     * partial window, less when the op's last rows of padding hold no window. */
    int64_t bottom = (oh - 1) * strides[0] + ekh - h - pads[0];
    int64_t right = (ow - 1) * strides[1] + ekw - w - pads[1];
    bottom = bottom < 0 ? 0 : bottom;
    right = right < 0 ? 0 : right;
    if (!fits_u32(bottom) || !fits_u32(right) || (h + pads[0] + bottom - ekh) / strides[0] + 1 != oh ||
        (w + pads[1] + right - ekw) / strides[1] + 1 != ow)
        return EK_ERR_UNSUPPORTED;
    /* Every window has a tap inside the input (else XNNPACK's average divides by zero). */
    if ((oh - 1) * strides[0] - pads[0] > h - 1 || (ow - 1) * strides[1] - pads[1] > w - 1 ||
        pads[0] >= ekh || pads[1] >= ekw)
        return EK_ERR_UNSUPPORTED;
    const bool padded = pads[0] || pads[1] || bottom || right;
    if (max && padded && (dilations[0] != 1 || dilations[1] != 1))
        return EK_ERR_UNSUPPORTED;
    if (!max && include_pad && padded)
        return EK_ERR_UNSUPPORTED;
    const size_t c = (size_t)x->dims[3];
    enum xnn_status st;
    if (x->dtype != y->dtype)
        return EK_ERR_UNSUPPORTED;
    if (max && x->dtype == EK_DTYPE_INT8) { /* int8 MAX_POOL (.ekm 1.5): the same windows */
        st = ekx_create_max_pool_s8(pads, (uint32_t)bottom, (uint32_t)right, kernel, strides, dilations, c, &s->op);
        if (st != xnn_status_success)
            return create_failed(st);
        s->kind = EKX_QMAX_POOL;
        s->channels = c;
        s->batch = (size_t)x->dims[0];
        s->height = (size_t)h;
        s->width = (size_t)w;
        return EK_OK;
    }
    if (max)
        st = ekx_create_max_pool2d(pads[0], (uint32_t)right, (uint32_t)bottom, pads[1], kernel[0], kernel[1],
                                   strides[0], strides[1], dilations[0], dilations[1], c, &s->op);
    else
        st = ekx_create_avg_pool2d(pads[0], (uint32_t)right, (uint32_t)bottom, pads[1], kernel[0], kernel[1],
                                   strides[0], strides[1], c, &s->op);
    if (st != xnn_status_success)
        return create_failed(st);
    s->kind = EKX_POOL2D;
    s->max_pool = max;
    s->channels = c;
    s->batch = (size_t)x->dims[0];
    s->height = (size_t)h;
    s->width = (size_t)w;
    return EK_OK;
}

static ek_status_t create_global_avg(const struct ek_op *op, struct ekx_state *s) {
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    if (x->rank != 4 || y->count != (size_t)(x->dims[0] * x->dims[3]))
        return EK_ERR_UNSUPPORTED;
    const size_t c = (size_t)x->dims[3];
    enum xnn_status st = ekx_create_global_avg((size_t)(x->dims[1] * x->dims[2]), c, &s->op);
    if (st != xnn_status_success)
        return create_failed(st);
    s->kind = EKX_GLOBAL_AVG;
    s->channels = c;
    s->batch = (size_t)x->dims[0];
    s->width = (size_t)(x->dims[1] * x->dims[2]);
    return EK_OK;
}

ek_status_t padded_copy(const struct ek_tensor_desc *t, float **copy) {
    if (t->nbytes > SIZE_MAX - XNN_EXTRA_BYTES)
        return EK_ERR_UNSUPPORTED;
    *copy = calloc(1, t->nbytes + XNN_EXTRA_BYTES);
    if (!*copy)
        return EK_ERR_OUT_OF_MEMORY;
    memcpy(*copy, t->constant, t->nbytes);
    return EK_OK;
}

/* Numpy broadcasting of a and b to y, folded into the fewest dims: the output's axes are grouped
 * into runs where each input is either full or broadcast, and each run becomes one dim. XNNPACK
 * takes at most XNN_MAX_TENSOR_DIMS. */
bool fold_broadcast(const struct ek_tensor_desc *a, const struct ek_tensor_desc *b, const struct ek_tensor_desc *y,
                    struct ekx_state *s) {
    size_t n = 0;
    int last = -1; /* bit 0: a is full on this run, bit 1: b is */
    for (int i = 0; i < y->rank; i++) {
        const int64_t dy = y->dims[i];
        const int ia = i - (y->rank - a->rank), ib = i - (y->rank - b->rank);
        const int64_t da = ia >= 0 ? a->dims[ia] : 1, db = ib >= 0 ? b->dims[ib] : 1;
        if ((da != dy && da != 1) || (db != dy && db != 1) || (da != dy && db != dy))
            return false;
        if (dy == 1)
            continue;
        const int kind = (da == dy ? 1 : 0) | (db == dy ? 2 : 0);
        if (kind == last) {
            s->shape_a[n - 1] *= (size_t)da;
            s->shape_b[n - 1] *= (size_t)db;
            continue;
        }
        if (n == XNN_MAX_TENSOR_DIMS)
            return false;
        s->shape_a[n] = (size_t)da;
        s->shape_b[n] = (size_t)db;
        n++;
        last = kind;
    }
    if (n == 0) { /* every dim 1: one element */
        s->shape_a[0] = s->shape_b[0] = 1;
        n = 1;
    }
    s->rank_a = s->rank_b = n;
    return true;
}

/* Many short rows (a per-channel operand of an NHWC tensor, [H*W, C] x [1, C], as squeeze-excite
 * makes): this XNNPACK's n-d binary ops make one call per innermost row, measured 1.2x to 3.6x
 * slower than the portable kernel for rows under 256 floats (SENet's [4096, 16] Mul: 75 us against
 * 23 us, 1 thread); the portable kernel runs them. */
bool broadcast_rows_too_short(const struct ekx_state *s, const struct ek_tensor_desc *y) {
    const size_t inner = s->shape_a[s->rank_a - 1] > s->shape_b[s->rank_b - 1] ? s->shape_a[s->rank_a - 1]
                                                                                : s->shape_b[s->rank_b - 1];
    return s->rank_a >= 2 && inner < 256 && y->count / inner >= 64;
}

static ek_status_t create_binary(const struct ek_op *op, struct ekx_state *s) {
    const struct ek_tensor_desc *a = op->in[0], *b = op->n_in > 1 ? op->in[1] : NULL, *y = op->out[0];
    float lo, hi;
    if (!b || !attr_act(op, &lo, &hi) || !fold_broadcast(a, b, y, s) || broadcast_rows_too_short(s, y))
        return EK_ERR_UNSUPPORTED;
    switch (op->type) {
    case EK_OP_ADD:
        s->binary = EKX_ADD;
        break;
    case EK_OP_SUB:
        s->binary = EKX_SUB;
        break;
    case EK_OP_MUL:
        s->binary = EKX_MUL;
        break;
    case EK_OP_DIV:
        s->binary = EKX_DIV;
        break;
    default:
        return EK_ERR_UNSUPPORTED;
    }
    enum xnn_status st = ekx_create_binary(s->binary, lo, hi, &s->op, &s->clamp);
    if (st != xnn_status_success)
        return create_failed(st);
    s->clamp_count = y->count;
    for (int i = 0; i < 2; i++) {
        if (is_constant(op->in[i])) {
            ek_status_t status = padded_copy(op->in[i], &s->constant[i]);
            if (status != EK_OK)
                return status;
        }
    }
    s->kind = EKX_BINARY;
    return EK_OK;
}

/* Element-wise unary ops, PRELU and SOFTMAX: XNNPACK's [batch, channels] operators. */
static ek_status_t create_nc(const struct ek_op *op, struct ekx_state *s) {
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    if (x->count != y->count)
        return EK_ERR_UNSUPPORTED;
    /* Element-wise ops see the tensor as one row: XNNPACK splits contiguous rows into blocks. */
    size_t channels = x->count;
    float a = 0.0f, b = 0.0f; /* a unary op's parameters */
    enum xnn_status st;
    switch (op->type) {
    case EK_OP_RELU:
        s->unary = EKX_CLAMP;
        a = 0.0f;
        b = INFINITY;
        break;
    case EK_OP_CLIP:
        if (!attr_float(op, "min", -INFINITY, &a) || !attr_float(op, "max", INFINITY, &b) || isnan(a) ||
            isnan(b) || !(a < b))
            return EK_ERR_UNSUPPORTED;
        s->unary = EKX_CLAMP;
        break;
    case EK_OP_LEAKY_RELU:
        /* ONNX's default, as the portable kernel's. */
        if (!attr_float(op, "alpha", 0.01f, &a) || !isfinite(a))
            return EK_ERR_UNSUPPORTED;
        s->unary = EKX_LEAKY_RELU;
        break;
    case EK_OP_SIGMOID:
        s->unary = EKX_SIGMOID;
        break;
    case EK_OP_HARD_SWISH:
        s->unary = EKX_HARD_SWISH;
        break;
    case EK_OP_PRELU: {
        /* A constant slope per channel (the last axis), or one slope for all. */
        const struct ek_tensor_desc *slope = op->n_in > 1 ? op->in[1] : NULL;
        if (!slope || !is_f32(slope) || !is_constant(slope) || x->rank < 1)
            return EK_ERR_UNSUPPORTED;
        channels = (size_t)x->dims[x->rank - 1];
        if (slope->count != 1) {
            if (slope->count != channels || slope->rank > x->rank || slope->dims[slope->rank - 1] != (int64_t)channels)
                return EK_ERR_UNSUPPORTED;
        }
        if (channels > (SIZE_MAX - XNN_EXTRA_BYTES) / sizeof(float))
            return EK_ERR_UNSUPPORTED;
        s->slope = calloc(1, channels * sizeof(float) + XNN_EXTRA_BYTES);
        if (!s->slope)
            return EK_ERR_OUT_OF_MEMORY;
        const float *v = (const float *)slope->constant;
        for (size_t i = 0; i < channels; i++)
            s->slope[i] = slope->count == 1 ? v[0] : v[i];
        if ((st = ekx_create_prelu(channels, s->slope, &s->op)) != xnn_status_success)
            return create_failed(st);
        s->kind = EKX_PRELU;
        s->channels = channels;
        s->batch = x->count / channels;
        return EK_OK;
    }
    case EK_OP_SOFTMAX: {
        int64_t axis;
        if (!attr_int(op, "axis", x->rank - 1, &axis) || axis < 0 || axis >= x->rank)
            return EK_ERR_UNSUPPORTED;
        /* XNNPACK normalises rows; the axis must be the last one that is not 1. */
        for (int i = (int)axis + 1; i < x->rank; i++)
            if (x->dims[i] != 1)
                return EK_ERR_UNSUPPORTED;
        channels = (size_t)x->dims[axis];
        if ((st = ekx_create_softmax(channels, &s->op)) != xnn_status_success)
            return create_failed(st);
        s->kind = EKX_SOFTMAX;
        s->channels = channels;
        s->batch = x->count / channels;
        return EK_OK;
    }
    default:
        return EK_ERR_UNSUPPORTED;
    }
    if ((st = ekx_create_unary(s->unary, channels, a, b, &s->op)) != xnn_status_success)
        return create_failed(st);
    s->kind = EKX_UNARY;
    s->channels = channels;
    s->batch = x->count / channels;
    return EK_OK;
}

/* Does the op's scale give XNNPACK's in/out ratio (relative 1e-6)? */
static bool scale_matches(float scale, int64_t in, int64_t out) {
    const double want = (double)out / (double)in;
    return isfinite(scale) && fabs((double)scale - want) <= 1e-6 * want;
}

/* RESIZE, linear only. XNNPACK's modes: default is half_pixel with the source coordinate clamped
 * to the image (the scale being in/out), ALIGN_CORNERS is align_corners, TENSORFLOW_LEGACY_MODE is
 * asymmetric. pytorch_half_pixel is half_pixel except for an output size of 1. */
static ek_status_t create_resize(const struct ek_op *op, struct ekx_state *s) {
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    if (x->rank != 4 || y->rank != 4 || y->dims[0] != x->dims[0] || y->dims[3] != x->dims[3])
        return EK_ERR_UNSUPPORTED;
    int64_t mode, coordinate;
    const struct ek_attr *scales = find_attr(op, "scales");
    /* Defaults as the portable kernel's: nearest, half_pixel. */
    if (!attr_int(op, "mode", 0, &mode) || !attr_int(op, "coordinate", 0, &coordinate) || mode != 1)
        return EK_ERR_UNSUPPORTED;
    const int64_t h = x->dims[1], w = x->dims[2], oh = y->dims[1], ow = y->dims[2];
    uint32_t flags = 0;
    if (coordinate == 2) {
        if (oh == 1 || ow == 1)
            return EK_ERR_UNSUPPORTED;
        flags = XNN_FLAG_ALIGN_CORNERS;
    } else if (coordinate == 0 || coordinate == 1 || coordinate == 3) {
        /* Absent scales are the size ratio, which is XNNPACK's. */
        if (scales && (scales->type != EK_ATTR_FLOATS || scales->count != 2 || !scales->floats ||
                       !scale_matches(scales->floats[0], h, oh) || !scale_matches(scales->floats[1], w, ow)))
            return EK_ERR_UNSUPPORTED;
        if (coordinate == 3 && (oh == 1 || ow == 1))
            return EK_ERR_UNSUPPORTED;
        if (coordinate == 1)
            flags = XNN_FLAG_TENSORFLOW_LEGACY_MODE;
    } else {
        return EK_ERR_UNSUPPORTED;
    }
    const size_t c = (size_t)x->dims[3];
    enum xnn_status st = ekx_create_resize_bilinear(c, (size_t)oh, (size_t)ow, flags, &s->op);
    if (st != xnn_status_success)
        return create_failed(st);
    s->kind = EKX_RESIZE;
    s->channels = c;
    s->batch = (size_t)x->dims[0];
    s->height = (size_t)h;
    s->width = (size_t)w;
    s->out_height = (size_t)oh;
    s->out_width = (size_t)ow;
    return EK_OK;
}

static ek_status_t ekx_create(const struct ek_op *op, void **state) {
    if (!op || !state)
        return EK_ERR_INVALID_ARG;
    *state = NULL;
    pthread_once(&init_once, init_xnnpack);
    if (init_status != xnn_status_success)
        return EK_ERR_UNSUPPORTED; /* e.g. a CPU XNNPACK does not support */
    if (op->n_in < 1 || op->n_out != 1 || !op->in[0] || !op->out[0])
        return EK_ERR_UNSUPPORTED;
    /* Every tensor of a float op is float32; the int8 ops of .ekm 1.5 are quantized.c's. */
    const bool quantized = ekx_is_quantized(op);
    if (!quantized) {
        for (int i = 0; i < op->n_in; i++)
            if (op->in[i] && !is_f32(op->in[i]))
                return EK_ERR_UNSUPPORTED;
        if (!is_f32(op->out[0]))
            return EK_ERR_UNSUPPORTED;
    }

    struct ekx_state *s = calloc(1, sizeof *s);
    if (!s)
        return EK_ERR_OUT_OF_MEMORY;
    ek_status_t status;
    switch (op->type) {
    case EK_OP_CONV:
        status = create_conv(op, s);
        break;
    case EK_OP_CONV_TRANSPOSE:
        status = create_deconv(op, s);
        break;
    case EK_OP_FULLY_CONNECTED:
        status = create_fc(op, s);
        break;
    case EK_OP_MAX_POOL:
        status = create_pool(op, s, true);
        break;
    case EK_OP_AVERAGE_POOL:
        status = create_pool(op, s, false);
        break;
    case EK_OP_GLOBAL_AVERAGE_POOL:
        status = create_global_avg(op, s);
        break;
    case EK_OP_ADD:
    case EK_OP_SUB:
    case EK_OP_MUL:
    case EK_OP_DIV:
        status = create_binary(op, s);
        break;
    case EK_OP_RELU:
    case EK_OP_CLIP:
    case EK_OP_LEAKY_RELU:
    case EK_OP_PRELU:
    case EK_OP_SIGMOID:
    case EK_OP_HARD_SWISH:
    case EK_OP_SOFTMAX:
        status = create_nc(op, s);
        break;
    case EK_OP_RESIZE:
        status = create_resize(op, s);
        break;
    default: /* the int8 ops (MAX_POOL's is create_pool's); MATMUL, TANH (not in the 2022 XNNPACK),
              * HARD_SIGMOID, shape ops: portable */
        status = quantized ? ekx_create_quantized(op, s) : EK_ERR_UNSUPPORTED;
        break;
    }
    if (status != EK_OK) {
        state_free(s);
        return status;
    }
    *state = s;
    return EK_OK;
}

static enum xnn_status setup(struct ekx_state *s, const void *const *in, const float *x, float *y, const void *second,
                             pthreadpool_t pool);

/* Run the op's operators, setting them up first unless the buffers and team are the last setup's. */
static enum xnn_status setup_and_run(struct ekx_state *s, const void *const *in, void *const *out,
                                     pthreadpool_t pool, int threads) {
    const float *x = in[0];
    float *y = out[0];
    /* the other buffer an op reads: a binary op's B, a CONV's Z */
    const void *second = s->kind == EKX_BINARY || s->kind == EKX_QBINARY ? in[1]
                         : s->residual ? (s->residual_z ? s->residual_z : in[3])
                                       : NULL;
    if (!(s->set_y && s->set_x == x && s->set_b == second && s->set_y == y && s->set_threads == threads)) {
        enum xnn_status st = setup(s, in, x, y, second, pool);
        if (st != xnn_status_success) {
            s->set_y = NULL;
            return st;
        }
        s->set_x = x;
        s->set_b = second;
        s->set_y = y;
        s->set_threads = threads;
    }
    enum xnn_status st = xnn_run_operator(s->op, pool);
    if (st == xnn_status_success && s->residual) /* Y = clamp(Y + Z), after the convolution wrote Y */
        st = xnn_run_operator(s->residual, pool);
    if (st == xnn_status_success && s->clamp) /* the clamp a 2024 binary op has as its own operator */
        st = xnn_run_operator(s->clamp, pool);
    return st;
}

/* Bind the buffers into the op's operators (XNNPACK's setup; with the 2024 API, reshape + setup). */
static enum xnn_status setup(struct ekx_state *s, const void *const *in, const float *x, float *y, const void *second,
                             pthreadpool_t pool) {
    enum xnn_status st;
    switch (s->kind) {
    case EKX_CONV:
        st = ekx_setup_conv2d(s->op, &s->workspace, s->batch, s->height, s->width, x, y, pool);
        if (st == xnn_status_success && s->residual)
            st = ekx_setup_binary(s->residual, EKX_ADD, 1, &s->residual_count, 1, &s->residual_count, y, second, y,
                                  pool);
        break;
    case EKX_DECONV:
        st = ekx_setup_deconv2d(s->op, s->batch, s->height, s->width, s->adj_h, s->adj_w, x, y, pool);
        break;
    case EKX_FC:
        st = ekx_setup_fc(s->op, s->batch, x, y, pool);
        break;
    case EKX_POOL2D:
        st = s->max_pool ? ekx_setup_max_pool2d(s->op, s->batch, s->height, s->width, s->channels, x, y, pool)
                         : ekx_setup_avg_pool2d(s->op, &s->workspace, s->batch, s->height, s->width, s->channels, x,
                                                y, pool);
        break;
    case EKX_GLOBAL_AVG:
        st = ekx_setup_global_avg(s->op, &s->workspace, s->batch, s->width, s->channels, x, y, pool);
        break;
    case EKX_BINARY: {
        const float *a = s->constant[0] ? s->constant[0] : x;
        const float *b = s->constant[1] ? s->constant[1] : (const float *)in[1];
        st = ekx_setup_binary(s->op, s->binary, s->rank_a, s->shape_a, s->rank_b, s->shape_b, a, b, y, pool);
        break;
    }
    case EKX_UNARY:
        st = ekx_setup_unary(s->op, s->unary, s->batch, s->channels, x, y, pool);
        break;
    case EKX_PRELU:
        st = ekx_setup_prelu(s->op, s->batch, s->channels, s->slope, x, y, pool);
        break;
    case EKX_SOFTMAX:
        st = ekx_setup_softmax(s->op, s->batch, s->channels, x, y, pool);
        break;
    case EKX_RESIZE:
        st = ekx_setup_resize_bilinear(s->op, &s->workspace, s->batch, s->height, s->width, s->channels,
                                       s->out_height, s->out_width, x, y, pool);
        break;
    default: /* the int8 ops */
        st = ekx_setup_quantized(s, in, x, y, pool);
        break;
    }
    if (st == xnn_status_success && s->clamp) /* Y = clamp(Y), in place */
        st = ekx_setup_unary(s->clamp, EKX_CLAMP, 1, s->clamp_count, y, y, pool);
    return st;
}

static ek_status_t ekx_run(void *state, const void *const *in, void *const *out, const struct ek_parallel *team) {
    struct ekx_state *s = state;
    const bool binary = s && (s->kind == EKX_BINARY || s->kind == EKX_QBINARY);
    if (!s || !in || !out || !out[0] || (!in[0] && !(binary && s->constant[0])))
        return EK_ERR_INVALID_ARG;
    if (binary && !s->constant[1] && !in[1]) /* binary ops have two inputs */
        return EK_ERR_INVALID_ARG;
    if (s->residual && !s->residual_z && !in[3]) /* a CONV's Z */
        return EK_ERR_INVALID_ARG;
    enum xnn_status st;
    if (on_team) {
        /* XNNPACK sizes its work from the team (pthreadpool_get_threads_count) at setup (2024:
         * reshape): both in. */
        ekx_threadpool_enter(team);
        st = setup_and_run(s, in, out, NULL, team ? team->threads : 1);
        ekx_threadpool_leave();
    } else {
        int threads = team ? team->threads : 1;
        st = setup_and_run(s, in, out, pool_for(threads), threads);
    }
    if (st == xnn_status_success)
        return EK_OK;
    return st == xnn_status_out_of_memory ? EK_ERR_OUT_OF_MEMORY : EK_ERR_INTERNAL;
}

static void ekx_destroy(void *state) {
    state_free(state);
}

static const char *xnn_status_name(enum xnn_status status) {
    switch (status) {
    case xnn_status_success: return "xnn_status_success";
    case xnn_status_uninitialized: return "xnn_status_uninitialized";
    case xnn_status_invalid_parameter: return "xnn_status_invalid_parameter";
    case xnn_status_invalid_state: return "xnn_status_invalid_state";
    case xnn_status_unsupported_parameter: return "xnn_status_unsupported_parameter";
    case xnn_status_unsupported_hardware: return "xnn_status_unsupported_hardware";
    case xnn_status_out_of_memory: return "xnn_status_out_of_memory";
    default: return "an unknown xnn_status";
    }
}

/* xnn_initialize, once per process, at load: the runtime uses this provider only when it succeeds. */
static ek_status_t ekx_init(char *why, size_t why_size) {
    pthread_once(&init_once, init_xnnpack);
    if (init_status == xnn_status_success)
        return EK_OK;
    /* XNNPACK first initialises cpuinfo, which on Linux reads the CPU lists of /sys (and /proc/cpuinfo);
     * the 2022 XNNPACK reports a cpuinfo failure as xnn_status_out_of_memory. The file is opened, not
     * access()ed: under qemu-user, access() of a missing /sys path can succeed. */
    FILE *cpus = fopen("/sys/devices/system/cpu/possible", "r");
    bool have_sys = cpus != NULL;
    if (cpus)
        fclose(cpus);
    const char *cause =
        !have_sys ? "its cpuinfo cannot read /sys/devices/system/cpu/possible (no /sys in this root, e.g. a "
                    "chroot or container: mount sysfs there, or use the portable kernels)"
        : init_status == xnn_status_out_of_memory
            ? "its cpuinfo could not describe this CPU (see cpuinfo's message on stderr), or memory ran out"
            : "this CPU lacks what XNNPACK needs";
    snprintf(why, why_size, "xnn_initialize failed with %s (%d): %s", xnn_status_name(init_status),
             (int)init_status, cause);
    return EK_ERR_UNSUPPORTED;
}

static const struct ek_provider provider = {
    .abi = EK_PROVIDER_ABI,
    .name = "xnnpack",
    .create = ekx_create,
    .run = ekx_run,
    .destroy = ekx_destroy,
    .init = ekx_init,
};

/* The one symbol this library exports (EK_PROVIDER_ENTRY). */
EKX_EXPORT const struct ek_provider *ek_kernel_provider(void);
EKX_EXPORT const struct ek_provider *ek_kernel_provider(void) {
    return &provider;
}
