/* The element-wise quantized ops of .ekm 1.5 (docs/model-format.md, "Quantized ops"): QUANTIZE,
 * DEQUANTIZE, QADD, QMUL (numpy broadcasting) and QLUT, and the quantization attributes every
 * quantized kernel reads (quant.h). QAVERAGE_POOL and QGLOBAL_AVERAGE_POOL are in pool.c, QCONV and
 * QFULLY_CONNECTED in qconv.c.
 *
 * An int8 operand takes 256 values, so what depends on one operand alone is tabulated at prepare:
 * DEQUANTIZE's (q - zero_point) x scale, and QADD's two terms (x - x_zero_point) x (x_scale / y_scale)
 * and (b - b_zero_point) x (b_scale / y_scale), each the float32 product the formula computes; run()
 * adds the two terms and rounds, so results equal the formulas exactly (no fused multiply-add can
 * creep in). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "internal.h"
#include "portable.h"
#include "quant.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(EK_NO_SIMD_KERNELS)
#define Q_X86 1
#include <immintrin.h>
#else
#define Q_X86 0
#endif
#if defined(__aarch64__) && defined(__GNUC__) && !defined(EK_NO_SIMD_KERNELS)
#define Q_NEON 1
#include <arm_neon.h>
#else
#define Q_NEON 0
#endif

#ifndef EK_KERNEL_PAR_MIN
#define EK_KERNEL_PAR_MIN 16384
#endif
#define CHUNK 4096 /* elements per task of the element-wise loops */

/* Four lanes at a time with GNU C vectors (SSE2, NEON): the same float32 operations as the scalar
 * formulas, and their rounding: the value clamped to [lo - zp, hi - zp] (integers, so clamping before
 * rounding changes nothing), then rounded to nearest even by adding and subtracting 1.5 x 2^23 (exact
 * below 2^22 in the default rounding mode), so the lanes equal ek_q_round. */
#if EK_HAVE_V4F
#define QV 1
typedef int32_t q_v4i __attribute__((vector_size(16)));
typedef int8_t q_v4b __attribute__((vector_size(4)));
typedef uint8_t q_v4u __attribute__((vector_size(4)));

static inline ek_v4f qv_splat(float v) { return (ek_v4f){v, v, v, v}; }

static inline ek_v4f qv_select(q_v4i mask, ek_v4f a, ek_v4f b) {
    return (ek_v4f)((mask & (q_v4i)a) | (~mask & (q_v4i)b));
}

/* rint(clamp(f, lo - zp, hi - zp)) + zp, as int32 lanes (f has no NaN). */
static inline q_v4i qv_round(ek_v4f f, int32_t zp, int32_t lo, int32_t hi) {
    const ek_v4f l = qv_splat((float)(lo - zp)), h = qv_splat((float)(hi - zp)), magic = qv_splat(12582912.0f);
    f = qv_select(f < l, l, f);
    f = qv_select(f > h, h, f);
    f = (f + magic) - magic;
    return __builtin_convertvector(f, q_v4i) + zp;
}

static inline q_v4i qv_load_i8(const int8_t *p) {
    q_v4b b;
    memcpy(&b, p, sizeof b);
    return __builtin_convertvector(b, q_v4i);
}

static inline void qv_store_i8(int8_t *p, q_v4i v) {
    q_v4b b = __builtin_convertvector(v, q_v4b);
    memcpy(p, &b, sizeof b);
}

static inline void qv_store_u8(uint8_t *p, q_v4i v) {
    q_v4u b = __builtin_convertvector(v, q_v4u);
    memcpy(p, &b, sizeof b);
}
#else
#define QV 0
#endif

/* ---------------------------------------------------------------- attributes (quant.h) */

ek_status_t ek_q_scale(const struct ek_op *op, const char *name, float *out) {
    ek_status_t st = ek_attr_float(op, name, 1.0f, out);
    if (st != EK_OK)
        return st;
    if (!(*out > 0.0f) || !isfinite(*out))
        return ek_op_invalid(op, "attribute '%s' is %g: a scale must be finite and > 0", name, (double)*out);
    return EK_OK;
}

ek_status_t ek_q_zero_point(const struct ek_op *op, const char *name, ek_dtype_t dtype, int32_t *out) {
    int64_t v;
    ek_status_t st = ek_attr_int(op, name, 0, &v);
    if (st != EK_OK)
        return st;
    int64_t lo = dtype == EK_DTYPE_UINT8 ? 0 : -128, hi = dtype == EK_DTYPE_UINT8 ? 255 : 127;
    if (v < lo || v > hi)
        return ek_op_invalid(op, "attribute '%s' is %lld, outside %s's %lld..%lld", name, (long long)v,
                             ek_dtype_name(dtype), (long long)lo, (long long)hi);
    *out = (int32_t)v;
    return EK_OK;
}

ek_status_t ek_q_range(const struct ek_op *op, int32_t *lo, int32_t *hi) {
    int64_t a, b;
    ek_status_t st = ek_attr_int(op, "q_min", -128, &a);
    if (st == EK_OK)
        st = ek_attr_int(op, "q_max", 127, &b);
    if (st != EK_OK)
        return st;
    if (a < -128 || b > 127 || a > b)
        return ek_op_invalid(op, "q_min %lld and q_max %lld must satisfy -128 <= q_min <= q_max <= 127", (long long)a,
                             (long long)b);
    *lo = (int32_t)a;
    *hi = (int32_t)b;
    return EK_OK;
}

ek_status_t ek_q_check_multiplier(const struct ek_op *op, const char *what, float m) {
    if (!(m > 0.0f) || !isfinite(m))
        return ek_op_invalid(op, "%s is %g in float32: the scales' ratio must be finite and > 0", what, (double)m);
    return EK_OK;
}

/* ---------------------------------------------------------------- shared */

static void release_params(struct ek_op *op) {
    free(op->params);
    op->params = NULL;
}

static ek_status_t out_of_memory(const struct ek_op *op) {
    return ek_fail(EK_ERR_OUT_OF_MEMORY, "out of memory preparing op '%.120s'", op->name ? op->name : "");
}

static void run_ranges(struct ek_exec *exec, size_t count, size_t work, ek_range_fn fn, void *arg) {
    if (count == 0)
        return;
    if (exec && count > 1 && work >= EK_KERNEL_PAR_MIN && ek_exec_threads(exec) > 1)
        ek_parallel_for(exec, count, fn, arg);
    else
        fn(arg, 0, count, 0);
}

/* One input X of `xt` (or either int8/uint8 when xt is 0) and one output Y of `yt` (likewise) with X's
 * shape. */
static ek_status_t check_unary(const struct ek_op *op, int n_in, ek_dtype_t xt, ek_dtype_t yt) {
    ek_status_t st = ek_check_arity(op, n_in, n_in);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *x = op->in[0], *y = op->out[0];
    ek_dtype_t xd = xt ? xt : (x->dtype == EK_DTYPE_UINT8 ? EK_DTYPE_UINT8 : EK_DTYPE_INT8);
    ek_dtype_t yd = yt ? yt : (y->dtype == EK_DTYPE_UINT8 ? EK_DTYPE_UINT8 : EK_DTYPE_INT8);
    if ((st = ek_check_tensor(op, x, "X", EK_RANK_ANY, xd)) != EK_OK ||
        (st = ek_check_tensor(op, y, "Y", EK_RANK_ANY, yd)) != EK_OK)
        return st;
    if (x->rank != y->rank || memcmp(x->dims, y->dims, (size_t)x->rank * sizeof x->dims[0]) != 0) {
        char s1[200], s2[200];
        return ek_op_invalid(op, "Y is %s, it must have X's shape %s", ek_shape_str(y, s1, sizeof s1),
                             ek_shape_str(x, s2, sizeof s2));
    }
    return EK_OK;
}

/* ---------------------------------------------------------------- QUANTIZE, DEQUANTIZE, QLUT */

struct unary_params {
    size_t count;
    float scale;
    int32_t zp, lo, hi; /* QUANTIZE: the output dtype's range */
    bool x_uint8;
    bool avx2;            /* QUANTIZE 8 lanes at a time (x86-64 with AVX2) */
    float table_f[256]; /* DEQUANTIZE: the value of each q (index q + 128 for int8, q for uint8) */
    const uint8_t *table; /* QLUT: the constant table */
};

struct unary_job {
    const struct unary_params *p;
    const void *x;
    void *y;
};

static ek_status_t prepare_quantize(struct ek_op *op) {
    ek_status_t st = check_unary(op, 1, EK_DTYPE_FLOAT32, 0);
    if (st != EK_OK)
        return st;
    const bool u8 = op->out[0]->dtype == EK_DTYPE_UINT8;
    float scale = 1.0f;
    int32_t zp = 0;
    if ((st = ek_q_scale(op, "scale", &scale)) != EK_OK ||
        (st = ek_q_zero_point(op, "zero_point", op->out[0]->dtype, &zp)) != EK_OK)
        return st;
    struct unary_params *p = calloc(1, sizeof *p);
    if (!p)
        return out_of_memory(op);
    p->count = op->out[0]->count;
    p->scale = scale;
    p->zp = zp;
    p->lo = u8 ? 0 : -128;
    p->hi = u8 ? 255 : 127;
#if Q_X86
    p->avx2 = ek_x86_has("avx2");
#endif
    op->params = p;
    op->scratch_per_thread = 0;
    return EK_OK;
}

#if Q_X86
/* x / scale (a division, as the formula), NaN -> 0, clamped to [lo - zp, hi - zp], rounded (MXCSR: to
 * nearest even), + zp, 8 lanes at a time; returns the elements done. */
__attribute__((target("avx2"))) static size_t quantize_avx2(const struct unary_params *p, const float *x, void *y,
                                                            size_t n) {
    const __m256 scale = _mm256_set1_ps(p->scale);
    const __m256 flo = _mm256_set1_ps((float)(p->lo - p->zp)), fhi = _mm256_set1_ps((float)(p->hi - p->zp));
    const __m256i zp = _mm256_set1_epi32(p->zp);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 f = _mm256_div_ps(_mm256_loadu_ps(x + i), scale);
        f = _mm256_and_ps(f, _mm256_cmp_ps(f, f, _CMP_ORD_Q)); /* NaN -> 0 */
        f = _mm256_min_ps(_mm256_max_ps(f, flo), fhi);
        __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(f), zp); /* within the dtype: the packs keep it */
        __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        __m128i q8 = p->lo == 0 ? _mm_packus_epi16(q16, q16) : _mm_packs_epi16(q16, q16);
        _mm_storel_epi64((__m128i *)(void *)((uint8_t *)y + i), q8);
    }
    return i;
}
#endif

static void quantize_range(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct unary_job *job = arg;
    const struct unary_params *p = job->p;
    const float *x = job->x;
    size_t i0 = begin * CHUNK, i1 = end * CHUNK < p->count ? end * CHUNK : p->count;
#if Q_X86
    if (p->avx2)
        i0 += quantize_avx2(p, x + i0, (uint8_t *)job->y + i0, i1 - i0);
#endif
#if QV
    const ek_v4f vs = qv_splat(p->scale);
    for (; i0 + 4 <= i1; i0 += 4) {
        ek_v4f f = ek_v4f_load(x + i0) / vs;
        f = (ek_v4f)((q_v4i)f & (f == f)); /* NaN -> 0 */
        q_v4i q = qv_round(f, p->zp, p->lo, p->hi);
        if (p->lo == 0)
            qv_store_u8((uint8_t *)job->y + i0, q);
        else
            qv_store_i8((int8_t *)job->y + i0, q);
    }
#endif
    if (p->lo == 0) {
        uint8_t *y = job->y;
        for (size_t i = i0; i < i1; i++)
            y[i] = (uint8_t)ek_q_round(x[i] / p->scale, p->zp, p->lo, p->hi);
    } else {
        int8_t *y = job->y;
        for (size_t i = i0; i < i1; i++)
            y[i] = (int8_t)ek_q_round(x[i] / p->scale, p->zp, p->lo, p->hi);
    }
}

static ek_status_t prepare_dequantize(struct ek_op *op) {
    ek_status_t st = check_unary(op, 1, 0, EK_DTYPE_FLOAT32);
    if (st != EK_OK)
        return st;
    float scale = 1.0f;
    int32_t zp = 0;
    if ((st = ek_q_scale(op, "scale", &scale)) != EK_OK ||
        (st = ek_q_zero_point(op, "zero_point", op->in[0]->dtype, &zp)) != EK_OK)
        return st;
    struct unary_params *p = calloc(1, sizeof *p);
    if (!p)
        return out_of_memory(op);
    p->count = op->out[0]->count;
    p->x_uint8 = op->in[0]->dtype == EK_DTYPE_UINT8;
    for (int i = 0; i < 256; i++) {
        int32_t q = p->x_uint8 ? i : i - 128;
        p->table_f[i] = (float)(q - zp) * scale;
    }
    op->params = p;
    op->scratch_per_thread = 0;
    return EK_OK;
}

static void dequantize_range(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct unary_job *job = arg;
    const struct unary_params *p = job->p;
    float *y = job->y;
    size_t i0 = begin * CHUNK, i1 = end * CHUNK < p->count ? end * CHUNK : p->count;
    if (p->x_uint8) {
        const uint8_t *x = job->x;
        for (size_t i = i0; i < i1; i++)
            y[i] = p->table_f[x[i]];
    } else {
        const int8_t *x = job->x;
        for (size_t i = i0; i < i1; i++)
            y[i] = p->table_f[x[i] + 128];
    }
}

static ek_status_t prepare_qlut(struct ek_op *op) {
    ek_status_t st = check_unary(op, 2, 0, 0);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *t = op->in[1], *y = op->out[0];
    if ((st = ek_check_tensor(op, t, "table", 1, y->dtype)) != EK_OK)
        return st;
    if (t->count != 256)
        return ek_op_invalid(op, "table has %zu entries, it must have 256", t->count);
    if (t->storage != EK_STORAGE_CONSTANT || !t->constant)
        return ek_op_invalid(op, "table (input 1, '%.100s') must be a CONSTANT tensor", t->name ? t->name : "");
    struct unary_params *p = calloc(1, sizeof *p);
    if (!p)
        return out_of_memory(op);
    p->count = y->count;
    p->x_uint8 = op->in[0]->dtype == EK_DTYPE_UINT8;
    p->table = t->constant;
    op->params = p;
    op->scratch_per_thread = 0;
    return EK_OK;
}

static void qlut_range(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct unary_job *job = arg;
    const struct unary_params *p = job->p;
    const uint8_t *x = job->x, *table = p->table;
    uint8_t *y = job->y;
    const uint8_t flip = p->x_uint8 ? 0 : 0x80; /* int8 q -> q + 128 is the byte's top bit flipped */
    size_t i0 = begin * CHUNK, i1 = end * CHUNK < p->count ? end * CHUNK : p->count;
    for (size_t i = i0; i < i1; i++)
        y[i] = table[x[i] ^ flip];
}

static ek_status_t run_unary(const struct ek_op *op, const void *const *in, void *const *out, struct ek_exec *exec) {
    const struct unary_params *p = op->params;
    if (!p)
        return ek_op_invalid(op, "not prepared");
    struct unary_job job = {p, in[0], out[0]};
    ek_range_fn fn = op->type == EK_OP_QUANTIZE ? quantize_range
                     : op->type == EK_OP_DEQUANTIZE ? dequantize_range
                                                    : qlut_range;
    run_ranges(exec, (p->count + CHUNK - 1) / CHUNK, p->count, fn, &job);
    return EK_OK;
}

const struct ek_kernel ek_kernel_quantize = {EK_OP_QUANTIZE, 1, 1, 1, prepare_quantize, run_unary, release_params};
const struct ek_kernel ek_kernel_dequantize = {EK_OP_DEQUANTIZE, 1, 1, 1, prepare_dequantize, run_unary,
                                               release_params};
const struct ek_kernel ek_kernel_qlut = {EK_OP_QLUT, 2, 2, 1, prepare_qlut, run_unary, release_params};

/* ---------------------------------------------------------------- QADD, QMUL */

struct qbin_params {
    bool mul;
    int rank;                 /* >= 1 after dropping the output's unit dims */
    size_t dims[EK_MAX_DIMS]; /* output dims */
    size_t sx[EK_MAX_DIMS];   /* element stride of X (resp. B) per output dim; 0 where it broadcasts */
    size_t sb[EK_MAX_DIMS];
    size_t count, rows; /* rows: count / the innermost dim */
    int32_t yzp, lo, hi;
    int32_t xzp, bzp;
    float mult;        /* QMUL: x_scale x b_scale / y_scale */
    float mx, mb;      /* QADD: x_scale / y_scale, b_scale / y_scale */
    bool avx2;         /* x86-64 with AVX2: QADD's contiguous spans 8 lanes at a time */
    float tx[256], tb[256]; /* QADD: (q - zp) x (scale / y_scale) for q + 128 */
};

static ek_status_t prepare_qbinary(struct ek_op *op) {
    ek_status_t st = ek_check_arity(op, 2, 2);
    if (st == EK_OK)
        st = ek_check_tensor(op, op->in[0], "X", EK_RANK_ANY, EK_DTYPE_INT8);
    if (st == EK_OK)
        st = ek_check_tensor(op, op->in[1], "B", EK_RANK_ANY, EK_DTYPE_INT8);
    if (st == EK_OK)
        st = ek_check_tensor(op, op->out[0], "Y", EK_RANK_ANY, EK_DTYPE_INT8);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *x = op->in[0], *b = op->in[1], *y = op->out[0];
    char s1[200], s2[200], s3[200];
    int rank = x->rank > b->rank ? x->rank : b->rank;
    int64_t want[EK_MAX_DIMS];
    for (int i = 0; i < rank; i++) {
        int64_t dx = i < x->rank ? x->dims[x->rank - 1 - i] : 1;
        int64_t db = i < b->rank ? b->dims[b->rank - 1 - i] : 1;
        if (dx != db && dx != 1 && db != 1)
            return ek_op_invalid(op, "X %s and B %s do not broadcast", ek_shape_str(x, s1, sizeof s1),
                                 ek_shape_str(b, s2, sizeof s2));
        want[rank - 1 - i] = dx > db ? dx : db;
    }
    bool same = y->rank == rank;
    for (int i = 0; same && i < rank; i++)
        same = y->dims[i] == want[i];
    if (!same)
        return ek_op_invalid(op, "Y is %s; X %s and B %s broadcast to another shape", ek_shape_str(y, s1, sizeof s1),
                             ek_shape_str(x, s2, sizeof s2), ek_shape_str(b, s3, sizeof s3));
    float xs = 1.0f, bs = 1.0f, ys = 1.0f;
    int32_t xzp = 0, bzp = 0, yzp = 0, lo = -128, hi = 127;
    if ((st = ek_q_scale(op, "x_scale", &xs)) != EK_OK || (st = ek_q_scale(op, "b_scale", &bs)) != EK_OK ||
        (st = ek_q_scale(op, "y_scale", &ys)) != EK_OK ||
        (st = ek_q_zero_point(op, "x_zero_point", EK_DTYPE_INT8, &xzp)) != EK_OK ||
        (st = ek_q_zero_point(op, "b_zero_point", EK_DTYPE_INT8, &bzp)) != EK_OK ||
        (st = ek_q_zero_point(op, "y_zero_point", EK_DTYPE_INT8, &yzp)) != EK_OK ||
        (st = ek_q_range(op, &lo, &hi)) != EK_OK)
        return st;
    const bool mul = op->type == EK_OP_QMUL;
    float mx = xs / ys, mb = bs / ys, mm = xs * bs / ys;
    if (mul) {
        if ((st = ek_q_check_multiplier(op, "x_scale x b_scale / y_scale", mm)) != EK_OK)
            return st;
    } else if ((st = ek_q_check_multiplier(op, "x_scale / y_scale", mx)) != EK_OK ||
               (st = ek_q_check_multiplier(op, "b_scale / y_scale", mb)) != EK_OK) {
        return st;
    }
    struct qbin_params *p = calloc(1, sizeof *p);
    if (!p)
        return out_of_memory(op);
    p->mul = mul;
    p->count = y->count;
    p->yzp = yzp;
    p->lo = lo;
    p->hi = hi;
    p->xzp = xzp;
    p->bzp = bzp;
    p->mult = mm;
    p->mx = mx;
    p->mb = mb;
#if Q_X86
    p->avx2 = ek_x86_has("avx2");
#endif
    for (int q = -128; q < 128; q++) {
        p->tx[q + 128] = (float)(q - xzp) * mx;
        p->tb[q + 128] = (float)(q - bzp) * mb;
    }
    p->rank = ek_broadcast_walk(x, b, want, rank, p->dims, p->sx, p->sb);
    p->rows = p->count / p->dims[p->rank - 1];
    op->params = p;
    op->scratch_per_thread = 0;
    return EK_OK;
}

struct qbin_job {
    const struct qbin_params *p;
    const int8_t *x, *b;
    int8_t *y;
};

static void qbin_span(const struct qbin_params *p, const int8_t *x, size_t ix, const int8_t *b, size_t ib, int8_t *y,
                      size_t n);

/* A single contiguous run (same shapes, or one operand a scalar): CHUNK elements per task. */
static void qbin_chunks(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct qbin_job *job = arg;
    const struct qbin_params *p = job->p;
    size_t i0 = begin * CHUNK, i1 = end * CHUNK < p->count ? end * CHUNK : p->count;
    qbin_span(p, job->x + i0 * p->sx[0], p->sx[0], job->b + i0 * p->sb[0], p->sb[0], job->y + i0, i1 - i0);
}

static void qbin_rows(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct qbin_job *job = arg;
    const struct qbin_params *p = job->p;
    const int last = p->rank - 1;
    const size_t n = p->dims[last], ix = p->sx[last], ib = p->sb[last];
    for (size_t row = begin; row < end; row++) {
        size_t rest = row, ox = 0, ob = 0;
        for (int d = last - 1; d >= 0; d--) {
            size_t i = rest % p->dims[d];
            rest /= p->dims[d];
            ox += i * p->sx[d];
            ob += i * p->sb[d];
        }
        const int8_t *x = job->x + ox, *b = job->b + ob;
        int8_t *y = job->y + row * n;
        qbin_span(p, x, ix, b, ib, y, n);
    }
}

#if Q_X86
/* QADD on 8 lanes: (q - zp) converted and multiplied by the ratios (two products, one sum: no fused
 * multiply-add in this target), clamped to [lo - zp, hi - zp], rounded by the MXCSR (to nearest even),
 * + zp: the formula's float32 operations. ix, ib: 0 (a scalar) or 1. Returns the elements done. */
__attribute__((target("avx2"))) static size_t qadd_avx2(const struct qbin_params *p, const int8_t *x, size_t ix,
                                                        const int8_t *b, size_t ib, int8_t *y, size_t n) {
    const __m256i xzp = _mm256_set1_epi32(p->xzp), bzp = _mm256_set1_epi32(p->bzp), yzp = _mm256_set1_epi32(p->yzp);
    const __m256 mx = _mm256_set1_ps(p->mx), mb = _mm256_set1_ps(p->mb);
    const __m256 flo = _mm256_set1_ps((float)(p->lo - p->yzp)), fhi = _mm256_set1_ps((float)(p->hi - p->yzp));
    const __m256i xs = _mm256_set1_epi32(x[0]), bs = _mm256_set1_epi32(b[0]);
    size_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256i xi = ix ? _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(x + j))) : xs;
        __m256i bi = ib ? _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(b + j))) : bs;
        __m256 tx = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(xi, xzp)), mx);
        __m256 tb = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(bi, bzp)), mb);
        __m256 f = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(tx, tb), flo), fhi);
        __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(f), yzp); /* within [lo, hi]: the packs keep it */
        __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        _mm_storel_epi64((__m128i *)(void *)(y + j), _mm_packs_epi16(q16, q16));
    }
    return j;
}
#endif

#if Q_NEON
/* QADD on 8 lanes with NEON: the same operations (FCVTNS rounds to nearest even). */
static size_t qadd_neon(const struct qbin_params *p, const int8_t *x, size_t ix, const int8_t *b, size_t ib, int8_t *y,
                        size_t n) {
    const int16x8_t xzp = vdupq_n_s16((int16_t)p->xzp), bzp = vdupq_n_s16((int16_t)p->bzp);
    const int32x4_t yzp = vdupq_n_s32(p->yzp);
    const float32x4_t mx = vdupq_n_f32(p->mx), mb = vdupq_n_f32(p->mb);
    const float32x4_t flo = vdupq_n_f32((float)(p->lo - p->yzp)), fhi = vdupq_n_f32((float)(p->hi - p->yzp));
    size_t j = 0;
    for (; j + 8 <= n; j += 8) {
        int16x8_t xi = vsubq_s16(vmovl_s8(ix ? vld1_s8(x + j) : vdup_n_s8(x[0])), xzp);
        int16x8_t bi = vsubq_s16(vmovl_s8(ib ? vld1_s8(b + j) : vdup_n_s8(b[0])), bzp);
        int32x4_t q[2];
        for (int h = 0; h < 2; h++) {
            int32x4_t xw = h ? vmovl_high_s16(xi) : vmovl_s16(vget_low_s16(xi));
            int32x4_t bw = h ? vmovl_high_s16(bi) : vmovl_s16(vget_low_s16(bi));
            float32x4_t tx = vmulq_f32(vcvtq_f32_s32(xw), mx), tb = vmulq_f32(vcvtq_f32_s32(bw), mb);
            float32x4_t f = vminq_f32(vmaxq_f32(vaddq_f32(tx, tb), flo), fhi);
            q[h] = vaddq_s32(vcvtnq_s32_f32(f), yzp);
        }
        vst1_s8(y + j, vqmovn_s16(vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]))));
    }
    return j;
}
#endif

/* One contiguous output span: X and B walked with strides ix, ib (each 0 or 1 after the merging, or
 * larger), vector lanes where both are 0 or 1. */
static void qbin_span(const struct qbin_params *p, const int8_t *x, size_t ix, const int8_t *b, size_t ib, int8_t *y,
                      size_t n) {
    size_t j0 = 0;
#if Q_X86
    if (!p->mul && p->avx2 && ix <= 1 && ib <= 1)
        j0 = qadd_avx2(p, x, ix, b, ib, y, n);
#elif Q_NEON
    if (!p->mul && ix <= 1 && ib <= 1)
        j0 = qadd_neon(p, x, ix, b, ib, y, n);
#endif
#if QV
    if (ix <= 1 && ib <= 1) {
        const q_v4i xzp = {p->xzp, p->xzp, p->xzp, p->xzp}, bzp = {p->bzp, p->bzp, p->bzp, p->bzp};
        const q_v4i xs = {x[0], x[0], x[0], x[0]}, bs = {b[0], b[0], b[0], b[0]};
        if (p->mul) {
            const ek_v4f m = qv_splat(p->mult);
            for (; j0 + 4 <= n; j0 += 4) {
                q_v4i xi = ix ? qv_load_i8(x + j0) : xs, bi = ib ? qv_load_i8(b + j0) : bs;
                ek_v4f f = __builtin_convertvector((xi - xzp) * (bi - bzp), ek_v4f) * m;
                qv_store_i8(y + j0, qv_round(f, p->yzp, p->lo, p->hi));
            }
        } else {
            const ek_v4f mx = qv_splat(p->mx), mb = qv_splat(p->mb);
            for (; j0 + 4 <= n; j0 += 4) {
                q_v4i xi = ix ? qv_load_i8(x + j0) : xs, bi = ib ? qv_load_i8(b + j0) : bs;
                ek_v4f tx = __builtin_convertvector(xi - xzp, ek_v4f) * mx; /* two statements: no FMA */
                ek_v4f tb = __builtin_convertvector(bi - bzp, ek_v4f) * mb;
                qv_store_i8(y + j0, qv_round(tx + tb, p->yzp, p->lo, p->hi));
            }
        }
    }
#endif
    {
        if (p->mul) {
            for (size_t j = j0; j < n; j++) {
                int32_t prod = ((int32_t)x[j * ix] - p->xzp) * ((int32_t)b[j * ib] - p->bzp);
                y[j] = (int8_t)ek_q_round((float)prod * p->mult, p->yzp, p->lo, p->hi);
            }
        } else {
            for (size_t j = j0; j < n; j++)
                y[j] = (int8_t)ek_q_round(p->tx[x[j * ix] + 128] + p->tb[b[j * ib] + 128], p->yzp, p->lo, p->hi);
        }
    }
}

static ek_status_t run_qbinary(const struct ek_op *op, const void *const *in, void *const *out,
                               struct ek_exec *exec) {
    const struct qbin_params *p = op->params;
    if (!p)
        return ek_op_invalid(op, "not prepared");
    struct qbin_job job = {p, in[0], in[1], out[0]};
    if (p->rank == 1)
        run_ranges(exec, (p->count + CHUNK - 1) / CHUNK, p->count, qbin_chunks, &job);
    else
        run_ranges(exec, p->rows, p->count, qbin_rows, &job);
    return EK_OK;
}

const struct ek_kernel ek_kernel_qadd = {EK_OP_QADD, 2, 2, 1, prepare_qbinary, run_qbinary, release_params};
const struct ek_kernel ek_kernel_qmul = {EK_OP_QMUL, 2, 2, 1, prepare_qbinary, run_qbinary, release_params};
