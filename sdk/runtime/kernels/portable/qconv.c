/* QCONV and QFULLY_CONNECTED (.ekm 1.5, docs/model-format.md "Quantized ops") on int8 NHWC tensors:
 *   acc = bias + sum((x - x_zero_point) x w)   (int32; padding taps are x_zero_point)
 *   y   = sat(rint(float(acc) x mult[m]) + y_zero_point), mult[m] = float32(x_scale x w_scale[m]) / y_scale
 *
 * Two ways to run, chosen at prepare:
 * - depthwise (QCONV with group == C == M): a direct loop over each output pixel's window with the
 *   channels innermost, in blocks of 16 channels of int32 accumulators (taps outside the input skipped);
 * - otherwise an int8 GEMM (qgemm below): each thread gathers a block of output pixels' receptive
 *   fields (x_zero_point for taps outside the input; the plain rows for a 1x1 convolution and for
 *   QFULLY_CONNECTED) into its scratch in the microkernel's format, and multiplies that block by the
 *   weights packed at prepare. The kernel sums x x w (not x - x_zero_point): prepare folds
 *   -x_zero_point x sum(w) into the bias, which is exact in int32 arithmetic modulo 2^32 and so exact,
 *   since prepare also refuses a bias that could make the true sum overflow.
 *
 * The GEMM microkernels, one chosen per process like the SGEMM's (gemm.c: CPUID on x86-64 with
 * function target attributes, so the library runs on any x86-64; getauxval on aarch64), or named by
 * EDGEKIT_QGEMM_ISA:
 * - avx512vnni: vpdpbusd (u8 x s8, four products a lane). The activations go in as x + 128 (unsigned)
 *   and prepare folds -128 x sum(w) into the bias too;
 * - avx2:       vpmaddwd on int16 pairs (x and w sign-extended: the products and their pairwise sums
 *   never saturate, unlike vpmaddubsw's);
 * - neondot:    sdot (s8 x s8, four products a lane), aarch64 CPUs with the dot product extension;
 * - neon:       SMULL/SMLAL2/SADALP (two int8 products summed in int16), aarch64 CPUs without it, for
 *               weights without -128 (others take generic);
 * - generic:    C loops on int16 pairs (the compiler vectorises them: SSE2, NEON).
 * Every microkernel computes the same int32 sums and the same float32 requantization (convert, one
 * multiply, round to nearest even in the default mode, add the zero point, clamp), so all of them
 * equal the formulas exactly. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "internal.h"
#include "portable.h"
#include "quant.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(EK_NO_SIMD_KERNELS)
#define EK_QGEMM_X86 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define EK_QGEMM_X86 0
#endif
#if defined(__aarch64__) && defined(__GNUC__) && !defined(EK_NO_SIMD_KERNELS) && defined(__linux__)
#define EK_QGEMM_NEON 1
#include <arm_neon.h>
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#else
#define EK_QGEMM_NEON 0
#endif

#define ATTR_MAX ((int64_t)1 << 30)
#define MAX_REDUCTION 65536 /* terms of one sum (the loader refuses more: docs/model-format.md) */
#define BLOCK_BYTES ((size_t)128 * 1024) /* a block of gathered rows stays in L2 */
#define EK_UNROLL _Pragma("GCC unroll 32")

/* ---------------------------------------------------------------- microkernels */

enum qa_format {
    QA_I16, /* int16 x, k padded to pairs */
    QA_U8X, /* uint8 x + 128, k padded to quads */
    QA_I8   /* int8 x, k padded to quads */
};

enum qconv_kind { Q_GEMM, Q_DEPTHWISE };

struct qgemm_isa;

struct qconv_params {
    enum qconv_kind kind;
    const struct qgemm_isa *isa;      /* the microkernels the weights are packed for */
    const struct qgemm_isa *proc_isa; /* the process's choice when prepared (isa, or generic for weights
                                       * the neon kernel cannot take) */
    bool fc;
    bool contiguous; /* QFULLY_CONNECTED, or a 1x1 QCONV of stride 1, no padding and group 1: the GEMM's rows
                      * are X's rows */
    size_t n, h, w, c, oh, ow, m, kh, kw, group, cg, mg, k, kp; /* kp: k padded to the isa's ks */
    size_t rows;                                               /* GEMM rows: output pixels (FC: X rows) */
    int64_t sh, sw, dh, dw, pt, pl;
    int32_t xzp, yzp, lo, hi;
    size_t block_rows;  /* rows gathered per task */
    size_t a_elem;      /* bytes per element of A */
    void *packed;       /* Q_GEMM: per group, panels of nr columns, kp x nr each; Q_DEPTHWISE: int16 W[tap][c] */
    size_t group_elems; /* packed elements per group */
    int32_t *bias;      /* per output channel (and PAD zeros): bias - (x_zero_point + offset) x sum(w) (Q_GEMM),
                         * or bias (Q_DEPTHWISE) */
    float *mult;        /* per output channel (and PAD zeros) */
    /* Q_DEPTHWISE, for the pixels whose whole window is inside the input (the isa's dw_inner): the sums of
     * x x w on the raw x, two taps' products added in int16 (which fits when no weight is -128: |x w| <=
     * 128 x 127), with bias - x_zero_point x sum(w) (exact in int32: the bias check bounds it) */
    bool inner_ok;      /* no weight is -128 */
    int8_t *w8;         /* W[tap][c] as int8 */
    int32_t *bias_inner; /* per channel (and PAD zeros) */
    size_t *tap_off;    /* per tap: its input offset from the window's origin, in elements */
};
#define PAD 64 /* bias and mult have this many zeros past m: vector loads of a last partial block stay inside */

/* The requantization of a tile's rows: bias, mult at the tile's first column. */
struct qepi {
    const int32_t *bias;
    const float *mult;
    int32_t zp, lo, hi;
};

/* y[i][j] (row stride ldy) for i < rows, j < cols = requantized A[i][0..kp) x the packed panel b (kp x NR);
 * rows of A past `rows` repeat the last (computed, not stored). */
typedef void qtile_fn(size_t kp, const void *a, size_t lda, const void *b, size_t rows, size_t cols,
                      const struct qepi *e, int8_t *y, size_t ldy);
/* Depthwise: all channels of one output pixel, from the taps [a0, a1) x [b0, b1) of its window inside the
 * input (xn: the image; ih0, iw0: the window's origin). */
typedef void qdw_fn(const struct qconv_params *p, const int8_t *xn, int64_t ih0, int64_t iw0, int64_t a0,
                    int64_t a1, int64_t b0, int64_t b1, int8_t *out);
/* Depthwise, a pixel whose window is all inside the input: x points at the window's origin. */
typedef void qdw_inner_fn(const struct qconv_params *p, const int8_t *x, int8_t *out);

struct qgemm_isa {
    const char *name;
    const char *algorithm; /* for profiles */
    enum qa_format format;
    size_t mr, nr, ks; /* register tile; k steps per packed group (2: pairs, 4: quads) */
    int32_t offset;    /* added to x in A (QA_U8X: 128) */
    qtile_fn *tile;
    qdw_fn *dw;
    qdw_inner_fn *dw_inner; /* or NULL: dw for every pixel */
};
/* The GEMM microkernel of QISA_NEON sums two int8 products in int16: weights with a -128 take the generic
 * one (prepare). */

static void requant_generic(const int32_t *acc, size_t cols, const int32_t *bias, const float *mult, int8_t *y,
                            int32_t zp, int32_t lo, int32_t hi) {
    for (size_t j = 0; j < cols; j++) {
        int32_t v = (int32_t)((uint32_t)acc[j] + (uint32_t)bias[j]); /* exact: the true sum fits */
        y[j] = (int8_t)ek_q_round((float)v * mult[j], zp, lo, hi);
    }
}

#define G_MR 4
#define G_NR 8
static void tile_generic(size_t kp, const void *a_, size_t lda, const void *b_, size_t rows, size_t cols,
                         const struct qepi *e, int8_t *y, size_t ldy) {
    const int16_t *a = a_, *b = b_;
    const int16_t *ap[G_MR];
    for (size_t i = 0; i < G_MR; i++)
        ap[i] = a + (i < rows ? i : rows - 1) * lda;
    int32_t c[G_MR][G_NR];
    memset(c, 0, sizeof c);
    for (size_t p = 0; p < kp; p += 2, b += 2 * G_NR)
        for (int i = 0; i < G_MR; i++) {
            const int32_t a0 = ap[i][p], a1 = ap[i][p + 1];
            for (int j = 0; j < G_NR; j++)
                c[i][j] += a0 * b[2 * j] + a1 * b[2 * j + 1];
        }
    for (size_t i = 0; i < rows; i++)
        requant_generic(c[i], cols, e->bias, e->mult, y + i * ldy, e->zp, e->lo, e->hi);
}

/* Depthwise channels [c0, c) of one pixel, 16 at a time in int32 (loops the compiler may vectorise). */
static void dw_channels_generic(const struct qconv_params *p, const int8_t *xn, int64_t ih0, int64_t iw0, int64_t a0,
                                int64_t a1, int64_t b0, int64_t b1, int8_t *out, size_t c0) {
    const int16_t *wt = p->packed;
    const size_t c = p->c, xrow_stride = p->w * c, wrow_stride = p->kw * c;
    for (; c0 < c; c0 += 16) {
        size_t cn = c - c0 < 16 ? c - c0 : 16;
        int32_t acc[16] = {0};
        for (int64_t a = a0; a < a1; a++) {
            const int8_t *xrow = xn + (size_t)(ih0 + a * p->dh) * xrow_stride + c0;
            const int16_t *wrow = wt + (size_t)a * wrow_stride + c0;
            for (int64_t b = b0; b < b1; b++) {
                const int8_t *xp = xrow + (size_t)(iw0 + b * p->dw) * c;
                const int16_t *wp = wrow + (size_t)b * c;
                for (size_t ch = 0; ch < cn; ch++)
                    acc[ch] += (int32_t)(xp[ch] - p->xzp) * wp[ch];
            }
        }
        requant_generic(acc, cn, p->bias + c0, p->mult + c0, out + c0, p->yzp, p->lo, p->hi);
    }
}

#if !EK_QGEMM_NEON
static void dw_generic(const struct qconv_params *p, const int8_t *xn, int64_t ih0, int64_t iw0, int64_t a0,
                       int64_t a1, int64_t b0, int64_t b1, int8_t *out) {
    dw_channels_generic(p, xn, ih0, iw0, a0, a1, b0, b1, out, 0);
}
#endif

#if EK_QGEMM_X86
#if defined(__clang__) && __clang_major__ >= 18
#define EK_TARGET_VNNI __attribute__((target("avx2,avx512f,avx512bw,avx512vnni,evex512")))
#else
#define EK_TARGET_VNNI __attribute__((target("avx2,avx512f,avx512bw,avx512vnni")))
#endif
#define EK_TARGET_AVX2 __attribute__((target("avx2")))

static inline int32_t load_i32(const void *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* 16 int32 sums (two vectors, columns in order) + bias, x mult, rounded (MXCSR: to nearest even), + zero
 * point, clamped: 16 bytes. The float is clamped to +-2^20 first, so the conversion never overflows (no
 * NaN can occur); the int16 and int8 packs saturate, then the clamp to [lo, hi]. */
EK_TARGET_AVX2 static inline __m128i requant16_avx2(__m256i a0, __m256i a1, const int32_t *bias, const float *mult,
                                                    const struct qepi *e) {
    const __m256 big = _mm256_set1_ps(1048576.0f), nbig = _mm256_set1_ps(-1048576.0f);
    const __m256i vzp = _mm256_set1_epi32(e->zp);
    __m256 f0 = _mm256_cvtepi32_ps(_mm256_add_epi32(a0, _mm256_loadu_si256((const __m256i *)(const void *)bias)));
    __m256 f1 =
        _mm256_cvtepi32_ps(_mm256_add_epi32(a1, _mm256_loadu_si256((const __m256i *)(const void *)(bias + 8))));
    f0 = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(f0, _mm256_loadu_ps(mult)), nbig), big);
    f1 = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(f1, _mm256_loadu_ps(mult + 8)), nbig), big);
    __m256i q0 = _mm256_add_epi32(_mm256_cvtps_epi32(f0), vzp), q1 = _mm256_add_epi32(_mm256_cvtps_epi32(f1), vzp);
    __m256i q16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xD8);
    __m128i q8 = _mm_packs_epi16(_mm256_castsi256_si128(q16), _mm256_extracti128_si256(q16, 1));
    q8 = _mm_max_epi8(q8, _mm_set1_epi8((char)e->lo));
    return _mm_min_epi8(q8, _mm_set1_epi8((char)e->hi));
}

static inline void store_cols(int8_t *y, const void *v16, size_t cols) { memcpy(y, v16, cols < 16 ? cols : 16); }

/* AVX2: 6 rows x 16 columns; per k pair one broadcast of (x[p], x[p+1]) against 16 (w[p], w[p+1]). */
#define A2_MR 6
#define A2_NR 16
EK_TARGET_AVX2 static void tile_avx2(size_t kp, const void *a_, size_t lda, const void *b_, size_t rows, size_t cols,
                                     const struct qepi *e, int8_t *y, size_t ldy) {
    const int16_t *a = a_, *b = b_;
    const int16_t *ap[A2_MR];
    EK_UNROLL for (size_t i = 0; i < A2_MR; i++) ap[i] = a + (i < rows ? i : rows - 1) * lda;
    __m256i c[A2_MR][2];
    const __m256i bias0 = _mm256_loadu_si256((const __m256i *)(const void *)e->bias);
    const __m256i bias1 = _mm256_loadu_si256((const __m256i *)(const void *)(e->bias + 8));
    EK_UNROLL for (int i = 0; i < A2_MR; i++) { /* the sums start at the bias */
        c[i][0] = bias0;
        c[i][1] = bias1;
    }
    for (size_t p = 0; p < kp; p += 2, b += 2 * A2_NR) {
        const __m256i b0 = _mm256_loadu_si256((const __m256i *)(const void *)b);
        const __m256i b1 = _mm256_loadu_si256((const __m256i *)(const void *)(b + 16));
        EK_UNROLL for (int i = 0; i < A2_MR; i++) {
            const __m256i x = _mm256_set1_epi32(load_i32(ap[i] + p));
            c[i][0] = _mm256_add_epi32(c[i][0], _mm256_madd_epi16(x, b0));
            c[i][1] = _mm256_add_epi32(c[i][1], _mm256_madd_epi16(x, b1));
        }
    }
    /* as tile_vnni's: x mult, clamped to [lo - zp, hi - zp], rounded, + zp; the packs keep the values */
    const __m256 m0 = _mm256_loadu_ps(e->mult), m1 = _mm256_loadu_ps(e->mult + 8);
    const __m256 flo = _mm256_set1_ps((float)(e->lo - e->zp)), fhi = _mm256_set1_ps((float)(e->hi - e->zp));
    const __m256i vzp = _mm256_set1_epi32(e->zp);
    EK_UNROLL for (int i = 0; i < A2_MR; i++) {
        if ((size_t)i >= rows)
            break;
        __m256 f0 = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(c[i][0]), m0), flo), fhi);
        __m256 f1 = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(c[i][1]), m1), flo), fhi);
        __m256i q0 = _mm256_add_epi32(_mm256_cvtps_epi32(f0), vzp), q1 = _mm256_add_epi32(_mm256_cvtps_epi32(f1), vzp);
        __m256i q16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xD8);
        __m128i q = _mm_packs_epi16(_mm256_castsi256_si128(q16), _mm256_extracti128_si256(q16, 1));
        if (cols >= 16) {
            _mm_storeu_si128((__m128i *)(void *)(y + (size_t)i * ldy), q);
        } else {
            int8_t tmp[16];
            _mm_storeu_si128((__m128i *)(void *)tmp, q);
            store_cols(y + (size_t)i * ldy, tmp, cols);
        }
    }
}

/* Depthwise, 16 channels at a time: x sign-extended to int16, minus the zero point (-255..255), times w
 * (int16): the product fits int16 (|.| <= 32640), widened to int32 and summed. */
EK_TARGET_AVX2 static void dw_avx2_from(const struct qconv_params *p, const int8_t *xn, int64_t ih0, int64_t iw0,
                                        int64_t a0, int64_t a1, int64_t b0, int64_t b1, int8_t *out, size_t c0) {
    const int16_t *wt = p->packed;
    const size_t c = p->c, xrow_stride = p->w * c, wrow_stride = p->kw * c;
    const __m256i vxzp = _mm256_set1_epi16((short)p->xzp);
    const struct qepi e = {NULL, NULL, p->yzp, p->lo, p->hi};
    for (; c0 + 16 <= c; c0 += 16) {
        __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
        for (int64_t a = a0; a < a1; a++) {
            const int8_t *xrow = xn + (size_t)(ih0 + a * p->dh) * xrow_stride + c0;
            const int16_t *wrow = wt + (size_t)a * wrow_stride + c0;
            for (int64_t b = b0; b < b1; b++) {
                __m256i xv = _mm256_cvtepi8_epi16(
                    _mm_loadu_si128((const __m128i *)(const void *)(xrow + (size_t)(iw0 + b * p->dw) * c)));
                __m256i prod = _mm256_mullo_epi16(
                    _mm256_sub_epi16(xv, vxzp),
                    _mm256_loadu_si256((const __m256i *)(const void *)(wrow + (size_t)b * c)));
                acc0 = _mm256_add_epi32(acc0, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(prod)));
                acc1 = _mm256_add_epi32(acc1, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(prod, 1)));
            }
        }
        _mm_storeu_si128((__m128i *)(void *)(out + c0), requant16_avx2(acc0, acc1, p->bias + c0, p->mult + c0, &e));
    }
    if (c0 < c)
        dw_channels_generic(p, xn, ih0, iw0, a0, a1, b0, b1, out, c0);
}

/* The inner pixels: raw x (int16) times w (int16), two taps' products summed in int16, widened once. */
EK_TARGET_AVX2 static void dw_inner_avx2_from(const struct qconv_params *p, const int8_t *x, int8_t *out, size_t c0) {
    const int16_t *wt = p->packed;
    const size_t c = p->c, taps = p->kh * p->kw;
    const struct qepi e = {NULL, NULL, p->yzp, p->lo, p->hi};
    for (; c0 + 16 <= c; c0 += 16) {
        __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
        size_t t = 0;
        for (; t < taps; t += 2) {
            __m256i prod = _mm256_mullo_epi16(
                _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(x + p->tap_off[t] + c0))),
                _mm256_loadu_si256((const __m256i *)(const void *)(wt + t * c + c0)));
            if (t + 1 < taps)
                prod = _mm256_add_epi16(
                    prod, _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128(
                                                 (const __m128i *)(const void *)(x + p->tap_off[t + 1] + c0))),
                                             _mm256_loadu_si256((const __m256i *)(const void *)(wt + (t + 1) * c + c0))));
            acc0 = _mm256_add_epi32(acc0, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(prod)));
            acc1 = _mm256_add_epi32(acc1, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(prod, 1)));
        }
        _mm_storeu_si128((__m128i *)(void *)(out + c0),
                         requant16_avx2(acc0, acc1, p->bias_inner + c0, p->mult + c0, &e));
    }
    if (c0 < c) /* the last channels the exact general way */
        dw_channels_generic(p, x, 0, 0, 0, (int64_t)p->kh, 0, (int64_t)p->kw, out, c0);
}

EK_TARGET_AVX2 static void dw_inner_avx2(const struct qconv_params *p, const int8_t *x, int8_t *out) {
    dw_inner_avx2_from(p, x, out, 0);
}

EK_TARGET_AVX2 static void dw_avx2(const struct qconv_params *p, const int8_t *xn, int64_t ih0, int64_t iw0,
                                   int64_t a0, int64_t a1, int64_t b0, int64_t b1, int8_t *out) {
    dw_avx2_from(p, xn, ih0, iw0, a0, a1, b0, b1, out, 0);
}

/* 16 int32 sums + bias, x mult, rounded, + zero point, clamped, stored as the first `cols` bytes at y. */
EK_TARGET_VNNI static inline void requant16_avx512(__m512i acc, const int32_t *bias, const float *mult,
                                                   const struct qepi *e, int8_t *y, size_t cols) {
    const __mmask16 m = cols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cols) - 1);
    __m512 f = _mm512_cvtepi32_ps(_mm512_add_epi32(acc, _mm512_loadu_si512((const void *)bias)));
    f = _mm512_mul_ps(f, _mm512_loadu_ps(mult));
    f = _mm512_min_ps(_mm512_max_ps(f, _mm512_set1_ps(-1048576.0f)), _mm512_set1_ps(1048576.0f));
    __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(f), _mm512_set1_epi32(e->zp));
    q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(e->lo)), _mm512_set1_epi32(e->hi));
    _mm512_mask_cvtepi32_storeu_epi8(y, m, q);
}

/* AVX-512 VNNI: 12 rows x 16 columns; per k quad one broadcast of 4 bytes x + 128 against 16 x 4
 * signed weights. */
#define V_MR 12
#define V_NR 16
EK_TARGET_VNNI static void tile_vnni(size_t kp, const void *a_, size_t lda, const void *b_, size_t rows, size_t cols,
                                     const struct qepi *e, int8_t *y, size_t ldy) {
    const uint8_t *a = a_;
    const int8_t *b = b_;
    const uint8_t *ap[V_MR];
    EK_UNROLL for (size_t i = 0; i < V_MR; i++) ap[i] = a + (i < rows ? i : rows - 1) * lda;
    __m512i c[V_MR];
    const __m512i bias = _mm512_loadu_si512((const void *)e->bias); /* the sums start at the bias */
    EK_UNROLL for (int i = 0; i < V_MR; i++) c[i] = bias;
    for (size_t p = 0; p < kp; p += 4, b += 4 * V_NR) {
        const __m512i bv = _mm512_loadu_si512((const void *)b);
        EK_UNROLL for (int i = 0; i < V_MR; i++) c[i] =
            _mm512_dpbusd_epi32(c[i], _mm512_set1_epi32(load_i32(ap[i] + p)), bv);
    }
    /* x mult, clamped to [lo - zp, hi - zp] (integers: the same as clamping after the rounding), rounded
     * (MXCSR: to nearest even), + zp: within [lo, hi], so the narrowing store keeps the value */
    const __mmask16 m = cols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cols) - 1);
    const __m512 mult = _mm512_loadu_ps(e->mult);
    const __m512 flo = _mm512_set1_ps((float)(e->lo - e->zp)), fhi = _mm512_set1_ps((float)(e->hi - e->zp));
    const __m512i vzp = _mm512_set1_epi32(e->zp);
    EK_UNROLL for (int i = 0; i < V_MR; i++) {
        if ((size_t)i >= rows)
            break;
        __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(c[i]), mult);
        f = _mm512_min_ps(_mm512_max_ps(f, flo), fhi);
        _mm512_mask_cvtepi32_storeu_epi8(y + (size_t)i * ldy, m, _mm512_add_epi32(_mm512_cvtps_epi32(f), vzp));
    }
}

/* Depthwise with AVX-512BW: 32 channels at a time as dw_avx2's 16, then dw_avx2's for the rest. */
EK_TARGET_VNNI static void dw_avx512(const struct qconv_params *p, const int8_t *xn, int64_t ih0, int64_t iw0,
                                     int64_t a0, int64_t a1, int64_t b0, int64_t b1, int8_t *out) {
    const int16_t *wt = p->packed;
    const size_t c = p->c, xrow_stride = p->w * c, wrow_stride = p->kw * c;
    const __m512i vxzp = _mm512_set1_epi16((short)p->xzp);
    const struct qepi e = {NULL, NULL, p->yzp, p->lo, p->hi};
    size_t c0 = 0;
    for (; c0 + 32 <= c; c0 += 32) {
        __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
        for (int64_t a = a0; a < a1; a++) {
            const int8_t *xrow = xn + (size_t)(ih0 + a * p->dh) * xrow_stride + c0;
            const int16_t *wrow = wt + (size_t)a * wrow_stride + c0;
            for (int64_t b = b0; b < b1; b++) {
                __m512i xv = _mm512_cvtepi8_epi16(
                    _mm256_loadu_si256((const __m256i *)(const void *)(xrow + (size_t)(iw0 + b * p->dw) * c)));
                __m512i prod = _mm512_mullo_epi16(_mm512_sub_epi16(xv, vxzp),
                                                  _mm512_loadu_si512((const void *)(wrow + (size_t)b * c)));
                acc0 = _mm512_add_epi32(acc0, _mm512_cvtepi16_epi32(_mm512_castsi512_si256(prod)));
                acc1 = _mm512_add_epi32(acc1, _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(prod, 1)));
            }
        }
        requant16_avx512(acc0, p->bias + c0, p->mult + c0, &e, out + c0, 16);
        requant16_avx512(acc1, p->bias + c0 + 16, p->mult + c0 + 16, &e, out + c0 + 16, 16);
    }
    if (c0 < c)
        dw_avx2_from(p, xn, ih0, iw0, a0, a1, b0, b1, out, c0);
}

EK_TARGET_VNNI static void dw_inner_avx512(const struct qconv_params *p, const int8_t *x, int8_t *out) {
    const int16_t *wt = p->packed;
    const size_t c = p->c, taps = p->kh * p->kw;
    const struct qepi e = {NULL, NULL, p->yzp, p->lo, p->hi};
    size_t c0 = 0;
    for (; c0 + 32 <= c; c0 += 32) {
        __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
        for (size_t t = 0; t < taps; t += 2) {
            __m512i prod = _mm512_mullo_epi16(
                _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(const void *)(x + p->tap_off[t] + c0))),
                _mm512_loadu_si512((const void *)(wt + t * c + c0)));
            if (t + 1 < taps)
                prod = _mm512_add_epi16(
                    prod, _mm512_mullo_epi16(_mm512_cvtepi8_epi16(_mm256_loadu_si256(
                                                 (const __m256i *)(const void *)(x + p->tap_off[t + 1] + c0))),
                                             _mm512_loadu_si512((const void *)(wt + (t + 1) * c + c0))));
            acc0 = _mm512_add_epi32(acc0, _mm512_cvtepi16_epi32(_mm512_castsi512_si256(prod)));
            acc1 = _mm512_add_epi32(acc1, _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(prod, 1)));
        }
        requant16_avx512(acc0, p->bias_inner + c0, p->mult + c0, &e, out + c0, 16);
        requant16_avx512(acc1, p->bias_inner + c0 + 16, p->mult + c0 + 16, &e, out + c0 + 16, 16);
    }
    if (c0 < c)
        dw_inner_avx2_from(p, x, out, c0);
}
#endif

#if EK_QGEMM_NEON
#if defined(__clang__)
#define EK_TARGET_DOT __attribute__((target("dotprod")))
#else
#define EK_TARGET_DOT __attribute__((target("arch=armv8.2-a+dotprod")))
#endif

/* 16 int32 sums (four vectors) x mult, rounded (FCVTNS: to nearest even, saturating), + zero point
 * (saturating), clamped: 16 bytes; requant16_neon adds a bias first (when not NULL). */
static inline int8x16_t requant16_neon_v(const int32x4_t *acc, const float32x4_t *mult, const struct qepi *e) {
    const int32x4_t vzp = vdupq_n_s32(e->zp);
    int32x4_t q[4];
    for (int j = 0; j < 4; j++) /* saturating: a huge product stays at the int32 end, then the narrowing */
        q[j] = vqaddq_s32(vcvtnq_s32_f32(vmulq_f32(vcvtq_f32_s32(acc[j]), mult[j])), vzp);
    int16x8_t h0 = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1])), h1 = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
    int8x16_t b = vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1));
    return vminq_s8(vmaxq_s8(b, vdupq_n_s8((int8_t)e->lo)), vdupq_n_s8((int8_t)e->hi));
}

static inline int8x16_t requant16_neon(const int32x4_t *acc, const int32_t *bias, const float *mult,
                                       const struct qepi *e) {
    int32x4_t a[4];
    float32x4_t m[4];
    for (int j = 0; j < 4; j++) {
        a[j] = bias ? vaddq_s32(acc[j], vld1q_s32(bias + 4 * j)) : acc[j];
        m[j] = vld1q_f32(mult + 4 * j);
    }
    return requant16_neon_v(a, m, e);
}

/* sdot: 4 rows x 16 columns; 16 bytes of each row (4 k quads) loaded once, then by lane. */
#define D_MR 4
#define D_NR 16
#define DOT_LANE(L)                                                                                                 \
    do {                                                                                                            \
        int8x16_t bv[4];                                                                                            \
        EK_UNROLL for (int j = 0; j < 4; j++) bv[j] = vld1q_s8(b + (L) * 64 + 16 * j);                              \
        EK_UNROLL for (int i = 0; i < D_MR; i++) EK_UNROLL for (int j = 0; j < 4; j++) c[i][j] =                    \
            vdotq_laneq_s32(c[i][j], bv[j], av[i], L);                                                              \
    } while (0)

EK_TARGET_DOT static void tile_neondot(size_t kp, const void *a_, size_t lda, const void *b_, size_t rows,
                                       size_t cols, const struct qepi *e, int8_t *y, size_t ldy) {
    const int8_t *a = a_, *b = b_;
    const int8_t *ap[D_MR];
    EK_UNROLL for (size_t i = 0; i < D_MR; i++) ap[i] = a + (i < rows ? i : rows - 1) * lda;
    int32x4_t c[D_MR][4], bias[4];
    EK_UNROLL for (int j = 0; j < 4; j++) bias[j] = vld1q_s32(e->bias + 4 * j);
    EK_UNROLL for (int i = 0; i < D_MR; i++) EK_UNROLL for (int j = 0; j < 4; j++) c[i][j] = bias[j];
    size_t p = 0;
    for (; p + 16 <= kp; p += 16, b += 16 * D_NR) {
        int8x16_t av[D_MR];
        EK_UNROLL for (int i = 0; i < D_MR; i++) av[i] = vld1q_s8(ap[i] + p);
        DOT_LANE(0);
        DOT_LANE(1);
        DOT_LANE(2);
        DOT_LANE(3);
    }
    for (; p < kp; p += 4, b += 4 * D_NR) {
        int8x16_t bv[4];
        EK_UNROLL for (int j = 0; j < 4; j++) bv[j] = vld1q_s8(b + 16 * j);
        EK_UNROLL for (int i = 0; i < D_MR; i++) {
            int32_t a4;
            memcpy(&a4, ap[i] + p, sizeof a4);
            const int8x16_t av = vreinterpretq_s8_s32(vdupq_n_s32(a4));
            EK_UNROLL for (int j = 0; j < 4; j++) c[i][j] = vdotq_s32(c[i][j], bv[j], av);
        }
    }
    float32x4_t mult[4];
    EK_UNROLL for (int j = 0; j < 4; j++) mult[j] = vld1q_f32(e->mult + 4 * j);
    EK_UNROLL for (int i = 0; i < D_MR; i++) {
        if ((size_t)i >= rows)
            break;
        int8x16_t q = requant16_neon_v(c[i], mult, e); /* the bias is in the sums */
        if (cols >= 16) {
            vst1q_s8(y + (size_t)i * ldy, q);
        } else {
            int8_t tmp[16];
            vst1q_s8(tmp, q);
            memcpy(y + (size_t)i * ldy, tmp, cols);
        }
    }
}

/* Depthwise, 16 channels at a time: x widened to int16 minus the zero point, multiply-accumulated with
 * the int16 weights into four int32 vectors (SMLAL). */
static void dw_neon(const struct qconv_params *p, const int8_t *xn, int64_t ih0, int64_t iw0, int64_t a0,
                    int64_t a1, int64_t b0, int64_t b1, int8_t *out) {
    const int16_t *wt = p->packed;
    const size_t c = p->c, xrow_stride = p->w * c, wrow_stride = p->kw * c;
    const int16x8_t vxzp = vdupq_n_s16((int16_t)p->xzp);
    const struct qepi e = {NULL, NULL, p->yzp, p->lo, p->hi};
    size_t c0 = 0;
    for (; c0 + 16 <= c; c0 += 16) {
        int32x4_t acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
        for (int64_t a = a0; a < a1; a++) {
            const int8_t *xrow = xn + (size_t)(ih0 + a * p->dh) * xrow_stride + c0;
            const int16_t *wrow = wt + (size_t)a * wrow_stride + c0;
            for (int64_t b = b0; b < b1; b++) {
                int8x16_t xv = vld1q_s8(xrow + (size_t)(iw0 + b * p->dw) * c);
                int16x8_t x0 = vsubq_s16(vmovl_s8(vget_low_s8(xv)), vxzp);
                int16x8_t x1 = vsubq_s16(vmovl_high_s8(xv), vxzp);
                const int16_t *wp = wrow + (size_t)b * c;
                int16x8_t w0 = vld1q_s16(wp), w1 = vld1q_s16(wp + 8);
                acc[0] = vmlal_s16(acc[0], vget_low_s16(x0), vget_low_s16(w0));
                acc[1] = vmlal_high_s16(acc[1], x0, w0);
                acc[2] = vmlal_s16(acc[2], vget_low_s16(x1), vget_low_s16(w1));
                acc[3] = vmlal_high_s16(acc[3], x1, w1);
            }
        }
        vst1q_s8(out + c0, requant16_neon(acc, p->bias + c0, p->mult + c0, &e));
    }
    if (c0 < c)
        dw_channels_generic(p, xn, ih0, iw0, a0, a1, b0, b1, out, c0);
}
#endif

#if EK_QGEMM_NEON
/* The inner pixels: raw x times int8 w (SMULL), two taps' products summed in int16 (SMLAL), widened
 * into the int32 sums once per pair (SADDW). */
static void dw_inner_neon(const struct qconv_params *p, const int8_t *x, int8_t *out) {
    const size_t c = p->c, taps = p->kh * p->kw;
    const int8_t *w8 = p->w8;
    const struct qepi e = {NULL, NULL, p->yzp, p->lo, p->hi};
    size_t c0 = 0;
    for (; c0 + 16 <= c; c0 += 16) {
        int32x4_t acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
        for (size_t t = 0; t < taps; t += 2) {
            int8x16_t xa = vld1q_s8(x + p->tap_off[t] + c0), wa = vld1q_s8(w8 + t * c + c0);
            int16x8_t lo = vmull_s8(vget_low_s8(xa), vget_low_s8(wa)), hi = vmull_high_s8(xa, wa);
            if (t + 1 < taps) {
                int8x16_t xb = vld1q_s8(x + p->tap_off[t + 1] + c0), wb = vld1q_s8(w8 + (t + 1) * c + c0);
                lo = vmlal_s8(lo, vget_low_s8(xb), vget_low_s8(wb));
                hi = vmlal_high_s8(hi, xb, wb);
            }
            acc[0] = vaddw_s16(acc[0], vget_low_s16(lo));
            acc[1] = vaddw_high_s16(acc[1], lo);
            acc[2] = vaddw_s16(acc[2], vget_low_s16(hi));
            acc[3] = vaddw_high_s16(acc[3], hi);
        }
        vst1q_s8(out + c0, requant16_neon(acc, p->bias_inner + c0, p->mult + c0, &e));
    }
    if (c0 < c)
        dw_channels_generic(p, x, 0, 0, 0, (int64_t)p->kh, 0, (int64_t)p->kw, out, c0);
}
#endif

#if EK_QGEMM_NEON
/* NEON without the dot product (Cortex-A53/A72): 4 rows x 4 columns, 16 k at a time: SMULL + SMLAL2 add
 * two products of int8 in int16 (exact when no weight is -128: |x w| <= 128 x 127, so the pair fits;
 * prepare uses the generic kernel for weights that have one), SADALP adds them pairwise into int32 lanes,
 * reduced across the lanes at the end. */
#define N_MR 4
#define N_NR 4
static void tile_neon(size_t kp, const void *a_, size_t lda, const void *b_, size_t rows, size_t cols,
                      const struct qepi *e, int8_t *y, size_t ldy) {
    const int8_t *a = a_, *b = b_;
    const int8_t *ap[N_MR];
    EK_UNROLL for (size_t i = 0; i < N_MR; i++) ap[i] = a + (i < rows ? i : rows - 1) * lda;
    int32x4_t c[N_MR][N_NR];
    EK_UNROLL for (int i = 0; i < N_MR; i++) EK_UNROLL for (int j = 0; j < N_NR; j++) c[i][j] = vdupq_n_s32(0);
    for (size_t p = 0; p < kp; p += 16, b += 16 * N_NR) {
        int8x16_t bv[N_NR];
        EK_UNROLL for (int j = 0; j < N_NR; j++) bv[j] = vld1q_s8(b + 16 * j);
        EK_UNROLL for (int i = 0; i < N_MR; i++) {
            const int8x16_t av = vld1q_s8(ap[i] + p);
            EK_UNROLL for (int j = 0; j < N_NR; j++) {
                int16x8_t prod = vmull_s8(vget_low_s8(av), vget_low_s8(bv[j]));
                prod = vmlal_high_s8(prod, av, bv[j]);
                c[i][j] = vpadalq_s16(c[i][j], prod);
            }
        }
    }
    const int32x4_t bias = vld1q_s32(e->bias), vzp = vdupq_n_s32(e->zp);
    const float32x4_t mult = vld1q_f32(e->mult);
    const int8x8_t lo = vdup_n_s8((int8_t)e->lo), hi = vdup_n_s8((int8_t)e->hi);
    EK_UNROLL for (int i = 0; i < N_MR; i++) {
        if ((size_t)i >= rows)
            break;
        /* the four columns' sums across the lanes, + bias */
        int32x4_t sum = vpaddq_s32(vpaddq_s32(c[i][0], c[i][1]), vpaddq_s32(c[i][2], c[i][3]));
        sum = vaddq_s32(sum, bias);
        int32x4_t q = vqaddq_s32(vcvtnq_s32_f32(vmulq_f32(vcvtq_f32_s32(sum), mult)), vzp);
        int16x4_t h = vqmovn_s32(q);
        int8x8_t q8 = vmin_s8(vmax_s8(vqmovn_s16(vcombine_s16(h, h)), lo), hi);
        int8_t tmp[8];
        vst1_s8(tmp, q8);
        memcpy(y + (size_t)i * ldy, tmp, cols < 4 ? cols : 4);
    }
}
#endif

enum { QISA_GENERIC, QISA_AVX2, QISA_VNNI, QISA_NEONDOT, QISA_NEON, QISA_COUNT };

static const struct qgemm_isa qisas[QISA_COUNT] = {
#if EK_QGEMM_NEON /* NEON is always there on aarch64: the depthwise loop uses it without the dot product */
    [QISA_GENERIC] = {"generic", "qgemm/generic", QA_I16, G_MR, G_NR, 2, 0, tile_generic, dw_neon, dw_inner_neon},
#else
    [QISA_GENERIC] = {"generic", "qgemm/generic", QA_I16, G_MR, G_NR, 2, 0, tile_generic, dw_generic, NULL},
#endif
#if EK_QGEMM_X86
    [QISA_AVX2] = {"avx2", "qgemm/avx2", QA_I16, A2_MR, A2_NR, 2, 0, tile_avx2, dw_avx2, dw_inner_avx2},
    [QISA_VNNI] = {"avx512vnni", "qgemm/avx512vnni", QA_U8X, V_MR, V_NR, 4, 128, tile_vnni, dw_avx512, dw_inner_avx512},
#endif
#if EK_QGEMM_NEON
    [QISA_NEONDOT] = {"neondot", "qgemm/neondot", QA_I8, D_MR, D_NR, 4, 0, tile_neondot, dw_neon, dw_inner_neon},
    [QISA_NEON] = {"neon", "qgemm/neon", QA_I8, N_MR, N_NR, 16, 0, tile_neon, dw_neon, dw_inner_neon},
#endif
};

#if EK_QGEMM_X86
static bool x86_vnni(void) {
    unsigned a, b, c, d;
    if (!ek_x86_has("avx512f") || __get_cpuid_max(0, NULL) < 7)
        return false;
    __cpuid_count(7, 0, a, b, c, d);
    return (b & (1u << 30)) && (c & (1u << 11)); /* AVX512BW, AVX512_VNNI */
}
#endif

static bool qisa_available(int id) {
    if (id < 0 || id >= QISA_COUNT || !qisas[id].tile)
        return false;
#if EK_QGEMM_X86
    if (id == QISA_AVX2)
        return ek_x86_has("avx2");
    if (id == QISA_VNNI)
        return x86_vnni();
#endif
#if EK_QGEMM_NEON
    if (id == QISA_NEONDOT)
        return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#endif
    return true;
}

static int qisa_by_name(const char *name) {
    for (int id = 0; name && id < QISA_COUNT; id++)
        if (qisas[id].tile && strcmp(name, qisas[id].name) == 0)
            return id;
    return -1;
}

static atomic_int qchosen = -1;

static const struct qgemm_isa *qisa_current(void) {
    int id = atomic_load_explicit(&qchosen, memory_order_relaxed);
    if (id < 0) {
        id = qisa_by_name(getenv("EDGEKIT_QGEMM_ISA"));
        if (!qisa_available(id)) {
            static const int order[] = {QISA_VNNI, QISA_AVX2, QISA_NEONDOT, QISA_NEON};
            id = QISA_GENERIC;
            for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
                if (qisa_available(order[i])) {
                    id = order[i];
                    break;
                }
        }
        atomic_store_explicit(&qchosen, id, memory_order_relaxed);
    }
    return &qisas[id];
}

const char *ek_qgemm_isa(void) { return qisa_current()->name; }

bool ek_qgemm_force_isa(const char *name) {
    int id = qisa_by_name(name);
    if (!qisa_available(id))
        return false;
    atomic_store_explicit(&qchosen, id, memory_order_relaxed);
    return true;
}

/* ---------------------------------------------------------------- prepare */

static void qconv_release(struct ek_op *op) {
    struct qconv_params *p = op->params;
    if (p) {
        free(p->packed);
        free(p->w8);
        free(p->bias_inner);
        free(p->tap_off);
        free(p->bias);
        free(p->mult);
        free(p);
    }
    op->params = NULL;
}

static ek_status_t attr_range(const struct ek_op *op, const char *name, const int64_t *v, int count, int64_t lo) {
    for (int i = 0; i < count; i++)
        if (v[i] < lo || v[i] > ATTR_MAX)
            return ek_op_invalid(op, "attribute '%s'[%d] = %lld is out of range [%lld, %lld]", name, i,
                                 (long long)v[i], (long long)lo, (long long)ATTR_MAX);
    return EK_OK;
}

/* Pack W[m][k] (group g's rows) into panels for `isa`: per panel of nr columns, per group of ks k
 * steps, nr x ks values (int16 or int8; zero past k and past the last column). */
static void pack_weights(const struct qgemm_isa *isa, size_t mg, size_t k, size_t kp, const int8_t *w, void *dst) {
    const size_t nr = isa->nr, ks = isa->ks;
    const bool wide = isa->format == QA_I16;
    for (size_t j0 = 0; j0 < mg; j0 += nr) {
        size_t base = j0 * kp; /* panel start, in elements */
        for (size_t p0 = 0; p0 < kp; p0 += ks)
            for (size_t jj = 0; jj < nr; jj++)
                for (size_t t = 0; t < ks; t++) {
                    size_t j = j0 + jj, kk = p0 + t;
                    int8_t v = j < mg && kk < k ? w[j * k + kk] : 0;
                    size_t at = base + p0 * nr + jj * ks + t;
                    if (wide)
                        ((int16_t *)dst)[at] = v;
                    else
                        ((int8_t *)dst)[at] = v;
                }
    }
}

static ek_status_t qconv_prepare_common(struct ek_op *op, bool fc) {
    ek_status_t st = ek_check_arity(op, 3, 4);
    if (st != EK_OK)
        return st;
    const struct ek_tensor_desc *x = op->in[0], *w = op->in[1], *ws = op->in[2];
    const struct ek_tensor_desc *b = op->n_in > 3 ? op->in[3] : NULL, *y = op->out[0];
    if ((st = ek_check_tensor(op, x, "X", fc ? -1 : 4, EK_DTYPE_INT8)) != EK_OK ||
        (st = ek_check_tensor(op, w, "W", fc ? 2 : 4, EK_DTYPE_INT8)) != EK_OK ||
        (st = ek_check_tensor(op, ws, "w_scale", 1, EK_DTYPE_FLOAT32)) != EK_OK ||
        (st = ek_check_tensor(op, y, "Y", fc ? -1 : 4, EK_DTYPE_INT8)) != EK_OK)
        return st;
    if (b && (st = ek_check_tensor(op, b, "bias", 1, EK_DTYPE_INT32)) != EK_OK)
        return st;
    const struct ek_tensor_desc *consts[3] = {w, ws, b};
    static const char *const cnames[3] = {"W (input 1)", "w_scale (input 2)", "bias (input 3)"};
    for (int i = 0; i < 3; i++)
        if (consts[i] && (consts[i]->storage != EK_STORAGE_CONSTANT || !consts[i]->constant))
            return ek_op_invalid(op, "%s '%.100s' must be a CONSTANT tensor", cnames[i],
                                 consts[i]->name ? consts[i]->name : "");

    int64_t pads[4] = {0, 0, 0, 0}, strides[2] = {1, 1}, dil[2] = {1, 1}, group = 1;
    int64_t m = w->dims[0], c, oh = 1, ow = 1;
    char s1[200], s2[200];
    if (fc) {
        c = x->dims[x->rank - 1];
        if (w->dims[1] != c)
            return ek_op_invalid(op, "W is [%lld, %lld] for X %s: its second dim must be X's last",
                                 (long long)w->dims[0], (long long)w->dims[1], ek_shape_str(x, s1, sizeof s1));
        bool ok = y->rank == x->rank && y->dims[y->rank - 1] == m;
        for (int i = 0; ok && i < x->rank - 1; i++)
            ok = y->dims[i] == x->dims[i];
        if (!ok)
            return ek_op_invalid(op, "Y is %s; X %s times W^T [%lld, %lld] gives another shape",
                                 ek_shape_str(y, s1, sizeof s1), ek_shape_str(x, s2, sizeof s2), (long long)c,
                                 (long long)m);
    } else {
        static const int64_t zeros[4] = {0, 0, 0, 0}, ones[2] = {1, 1};
        if ((st = ek_attr_ints(op, "pads", 4, zeros, pads)) != EK_OK ||
            (st = ek_attr_ints(op, "strides", 2, ones, strides)) != EK_OK ||
            (st = ek_attr_ints(op, "dilations", 2, ones, dil)) != EK_OK ||
            (st = ek_attr_int(op, "group", 1, &group)) != EK_OK)
            return st;
        if ((st = attr_range(op, "pads", pads, 4, 0)) != EK_OK ||
            (st = attr_range(op, "strides", strides, 2, 1)) != EK_OK ||
            (st = attr_range(op, "dilations", dil, 2, 1)) != EK_OK)
            return st;
        c = x->dims[3];
        if (group < 1 || group > c || c % group != 0 || m % group != 0)
            return ek_op_invalid(op, "group %lld must divide the input channels %lld and the output channels %lld",
                                 (long long)group, (long long)c, (long long)m);
        if (w->dims[3] != c / group)
            return ek_op_invalid(op, "W is %s but C/group is %lld", ek_shape_str(w, s1, sizeof s1),
                                 (long long)(c / group));
        int64_t len[2];
        for (int a = 0; a < 2; a++) {
            int64_t ext = (w->dims[1 + a] - 1) * dil[a] + 1; /* dims < 2^62 / 4, dilations <= 2^30: may overflow */
            if (w->dims[1 + a] - 1 > INT64_MAX / 4 / dil[a])
                return ek_op_invalid(op, "kernel extent overflows");
            int64_t padded = x->dims[1 + a] + pads[a] + pads[a + 2];
            if (padded < ext)
                return ek_op_invalid(op, "padded input %s %lld is smaller than the kernel extent %lld",
                                     a ? "width" : "height", (long long)padded, (long long)ext);
            len[a] = (padded - ext) / strides[a] + 1;
        }
        oh = len[0];
        ow = len[1];
        if (y->dims[0] != x->dims[0] || y->dims[1] != oh || y->dims[2] != ow || y->dims[3] != m)
            return ek_op_invalid(op, "Y is %s, expected [%lld, %lld, %lld, %lld]", ek_shape_str(y, s1, sizeof s1),
                                 (long long)x->dims[0], (long long)oh, (long long)ow, (long long)m);
    }
    if (ws->count != 1 && ws->count != (size_t)m)
        return ek_op_invalid(op, "w_scale has %zu values; it must have 1 or one per output channel (%lld)", ws->count,
                             (long long)m);
    if (b && b->dims[0] != m)
        return ek_op_invalid(op, "bias has %lld values for %lld output channels", (long long)b->dims[0],
                             (long long)m);
    const size_t k = (size_t)w->count / (size_t)m; /* KH x KW x C/group, or K */
    if (k > MAX_REDUCTION)
        return ek_op_invalid(op, "a sum of %zu terms (%s) is over the %d the int32 accumulator allows", k,
                             fc ? "K" : "KH x KW x C/group", MAX_REDUCTION);
    float xs = 1.0f, ys = 1.0f;
    int32_t xzp = 0, yzp = 0, lo = -128, hi = 127;
    if ((st = ek_q_scale(op, "x_scale", &xs)) != EK_OK || (st = ek_q_scale(op, "y_scale", &ys)) != EK_OK ||
        (st = ek_q_zero_point(op, "x_zero_point", EK_DTYPE_INT8, &xzp)) != EK_OK ||
        (st = ek_q_zero_point(op, "y_zero_point", EK_DTYPE_INT8, &yzp)) != EK_OK ||
        (st = ek_q_range(op, &lo, &hi)) != EK_OK)
        return st;
    const float *wsv = ws->constant;
    for (size_t i = 0; i < ws->count; i++)
        if (!(wsv[i] > 0.0f) || !isfinite(wsv[i]))
            return ek_op_invalid(op, "w_scale[%zu] is %g: a scale must be finite and > 0", i, (double)wsv[i]);
    const int8_t *wv = w->constant;
    const int32_t *bv = b ? b->constant : NULL;
    /* the int32 sum never overflows: |bias| + max|x - x_zero_point| x sum|w| fits */
    const int64_t maxdev = 127 - xzp > xzp + 128 ? 127 - xzp : xzp + 128;
    for (int64_t j = 0; j < m; j++) {
        int64_t s = 0;
        for (size_t i = 0; i < k; i++)
            s += wv[(size_t)j * k + i] < 0 ? -wv[(size_t)j * k + i] : wv[(size_t)j * k + i];
        int64_t bj = bv ? bv[j] : 0;
        if ((bj < 0 ? -bj : bj) + maxdev * s > INT32_MAX)
            return ek_op_invalid(op, "bias[%lld] = %lld with these weights could overflow the int32 sum",
                                 (long long)j, (long long)bj);
    }

    struct qconv_params *p = calloc(1, sizeof *p);
    if (!p)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no memory for op parameters");
    op->params = p;
    op->scratch_per_thread = 0;
    p->fc = fc;
    p->m = (size_t)m;
    p->c = (size_t)c;
    p->k = k;
    p->xzp = xzp;
    p->yzp = yzp;
    p->lo = lo;
    p->hi = hi;
    if (fc) {
        p->rows = x->count / (size_t)c;
        p->kh = p->kw = 1;
        p->group = 1;
        p->cg = p->c;
        p->mg = p->m;
    } else {
        p->n = (size_t)x->dims[0];
        p->h = (size_t)x->dims[1];
        p->w = (size_t)x->dims[2];
        p->oh = (size_t)oh;
        p->ow = (size_t)ow;
        p->kh = (size_t)w->dims[1];
        p->kw = (size_t)w->dims[2];
        p->group = (size_t)group;
        p->cg = p->c / p->group;
        p->mg = p->m / p->group;
        p->sh = strides[0];
        p->sw = strides[1];
        p->dh = dil[0];
        p->dw = dil[1];
        p->pt = pads[0];
        p->pl = pads[1];
        p->rows = p->n * p->oh * p->ow;
    }
    p->mult = calloc(p->m + PAD, sizeof *p->mult);
    p->bias = calloc(p->m + PAD, sizeof *p->bias);
    p->isa = p->proc_isa = qisa_current();
    if (!p->mult || !p->bias)
        goto oom;
    for (size_t j = 0; j < p->m; j++) {
        p->mult[j] = xs * wsv[ws->count == 1 ? 0 : j] / ys;
        if ((st = ek_q_check_multiplier(op, "x_scale x w_scale / y_scale", p->mult[j])) != EK_OK)
            goto fail;
    }
    if (!fc && p->group == p->c && p->m == p->c) {
        p->kind = Q_DEPTHWISE;
        size_t taps = p->kh * p->kw;
        int16_t *dw = malloc(taps * p->c * sizeof *dw);
        if (!dw)
            goto oom;
        for (size_t t = 0; t < taps; t++)
            for (size_t ch = 0; ch < p->c; ch++)
                dw[t * p->c + ch] = wv[ch * taps + t];
        p->packed = dw;
        for (size_t j = 0; j < p->m; j++)
            p->bias[j] = bv ? bv[j] : 0;
        p->inner_ok = p->isa->dw_inner != NULL;
        for (size_t i = 0; i < taps * p->c && p->inner_ok; i++)
            p->inner_ok = wv[i] != -128;
        if (p->inner_ok) {
            p->w8 = malloc(taps * p->c);
            p->bias_inner = calloc(p->c + PAD, sizeof *p->bias_inner);
            p->tap_off = malloc(taps * sizeof *p->tap_off);
            if (!p->w8 || !p->bias_inner || !p->tap_off)
                goto oom;
            for (size_t t = 0; t < taps; t++) {
                p->tap_off[t] = ((t / p->kw) * (size_t)p->dh * p->w + (t % p->kw) * (size_t)p->dw) * p->c;
                for (size_t ch = 0; ch < p->c; ch++)
                    p->w8[t * p->c + ch] = wv[ch * taps + t];
            }
            for (size_t ch = 0; ch < p->c; ch++) {
                int64_t sum = 0;
                for (size_t t = 0; t < taps; t++)
                    sum += wv[ch * taps + t];
                p->bias_inner[ch] = (int32_t)((int64_t)p->bias[ch] - (int64_t)xzp * sum);
            }
        }
        return EK_OK;
    }
    p->kind = Q_GEMM;
#if EK_QGEMM_NEON
    if (p->isa == &qisas[QISA_NEON])
        for (size_t i = 0; i < w->count; i++)
            if (wv[i] == -128) {
                p->isa = &qisas[QISA_GENERIC];
                break;
            }
#endif
    const struct qgemm_isa *isa = p->isa;
    p->contiguous = fc || (p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1 && p->group == 1 && pads[0] == 0 &&
                           pads[1] == 0 && pads[2] == 0 && pads[3] == 0);
    p->kp = ek_round_up(k, isa->ks);
    p->a_elem = isa->format == QA_I16 ? 2 : 1;
    size_t panels = (p->mg + isa->nr - 1) / isa->nr;
    p->group_elems = panels * isa->nr * p->kp;
    p->packed = malloc(p->group_elems * p->group * (isa->format == QA_I16 ? 2 : 1));
    if (!p->packed)
        goto oom;
    for (size_t g = 0; g < p->group; g++)
        pack_weights(isa, p->mg, k, p->kp, wv + g * p->mg * k,
                     (char *)p->packed + g * p->group_elems * (isa->format == QA_I16 ? 2 : 1));
    for (size_t j = 0; j < p->m; j++) {
        int64_t s = 0;
        for (size_t i = 0; i < k; i++)
            s += wv[j * k + i];
        int64_t v = (int64_t)(bv ? bv[j] : 0) - ((int64_t)xzp + isa->offset) * s;
        p->bias[j] = (int32_t)(uint32_t)(uint64_t)v; /* modulo 2^32 */
    }
    size_t row_bytes = p->kp * p->a_elem, rows = BLOCK_BYTES / row_bytes / isa->mr * isa->mr;
    if (rows < isa->mr * 4)
        rows = isa->mr * 4;
    if (rows > 256)
        rows = 256 / isa->mr * isa->mr;
    p->block_rows = rows;
    op->scratch_per_thread = rows * row_bytes; /* the gathered block */
    return EK_OK;
oom:
    st = ek_fail(EK_ERR_OUT_OF_MEMORY, "op '%.120s': no memory for packed weights", op->name ? op->name : "");
fail:
    qconv_release(op);
    op->scratch_per_thread = 0;
    return st;
}

static ek_status_t qconv_prepare(struct ek_op *op) { return qconv_prepare_common(op, false); }
static ek_status_t qfc_prepare(struct ek_op *op) { return qconv_prepare_common(op, true); }

/* ---------------------------------------------------------------- run */

struct qconv_run {
    const struct qconv_params *p;
    const int8_t *x;
    int8_t *y;
    struct ek_exec *exec;
    size_t block;
    size_t col_parts; /* each block of rows is split into this many ranges of column panels (1: none) */
};

/* One gathered row: `count` int8 values from src (or the zero point when src is NULL) in the A format. */
static inline void put_values(const struct qconv_params *p, const int8_t *src, size_t count, void *dst) {
    switch (p->isa->format) {
    case QA_I16: {
        int16_t *d = dst;
        if (src)
            for (size_t i = 0; i < count; i++)
                d[i] = src[i];
        else
            for (size_t i = 0; i < count; i++)
                d[i] = (int16_t)p->xzp;
        break;
    }
    case QA_U8X: {
        uint8_t *d = dst;
        if (src) { /* x + 128: the top bit flipped, 8 bytes at a time */
            size_t i = 0;
            for (; i + 8 <= count; i += 8) {
                uint64_t v;
                memcpy(&v, src + i, 8);
                v ^= 0x8080808080808080u;
                memcpy(d + i, &v, 8);
            }
            for (; i < count; i++)
                d[i] = (uint8_t)((uint8_t)src[i] ^ 0x80u);
        } else
            memset(d, (int)(((uint8_t)(int8_t)p->xzp) ^ 0x80u), count);
        break;
    }
    case QA_I8:
        if (src)
            memcpy(dst, src, count);
        else
            memset(dst, (int)(uint8_t)(int8_t)p->xzp, count);
        break;
    }
}

/* Gather rows [r0, r0 + count) of group g into col (count rows of kp elements). */
static void gather(const struct qconv_params *p, const int8_t *x, size_t r0, size_t count, size_t g, char *col) {
    const size_t e = p->a_elem, cg = p->cg, row_bytes = p->kp * e;
    if (p->contiguous && p->k == p->kp) { /* the rows are X's, back to back: one pass */
        put_values(p, x + r0 * p->c, count * p->k, col);
        return;
    }
    if (p->contiguous) {
        for (size_t i = 0; i < count; i++) {
            char *dst = col + i * row_bytes;
            put_values(p, x + (r0 + i) * p->c, p->k, dst);
            memset(dst + p->k * e, 0, (p->kp - p->k) * e);
        }
        return;
    }
    const int64_t h = (int64_t)p->h, w = (int64_t)p->w;
    size_t ow = r0 % p->ow, oh = (r0 / p->ow) % p->oh, n = r0 / p->ow / p->oh;
    for (size_t i = 0; i < count; i++) {
        char *dst = col + i * row_bytes;
        const int8_t *xn = x + n * p->h * p->w * p->c + g * cg;
        const int64_t iw0 = (int64_t)ow * p->sw - p->pl;
        /* group 1, dilation 1 and the window inside the width: a kernel row is kw x C contiguous bytes */
        const bool whole_rows = p->group == 1 && p->dw == 1 && iw0 >= 0 && iw0 + (int64_t)p->kw <= w;
        for (size_t a = 0; a < p->kh; a++) {
            int64_t ih = (int64_t)oh * p->sh - p->pt + (int64_t)a * p->dh;
            bool row_ok = ih >= 0 && ih < h;
            if (row_ok && whole_rows) {
                put_values(p, xn + ((size_t)ih * p->w + (size_t)iw0) * p->c, p->kw * cg, dst);
                dst += p->kw * cg * e;
                continue;
            }
            for (size_t b = 0; b < p->kw; b++, dst += cg * e) {
                int64_t iw = (int64_t)ow * p->sw - p->pl + (int64_t)b * p->dw;
                bool ok = row_ok && iw >= 0 && iw < w;
                put_values(p, ok ? xn + ((size_t)ih * p->w + (size_t)iw) * p->c : NULL, cg, dst);
            }
        }
        memset(dst, 0, (p->kp - p->k) * e);
        if (++ow == p->ow) {
            ow = 0;
            if (++oh == p->oh) {
                oh = 0;
                n++;
            }
        }
    }
}

static void qgemm_range(void *arg, size_t begin, size_t end, int thread) {
    const struct qconv_run *r = arg;
    const struct qconv_params *p = r->p;
    const struct qgemm_isa *isa = p->isa;
    char *col = ek_exec_scratch(r->exec, thread);
    const size_t we = isa->format == QA_I16 ? 2 : 1, lda = p->kp, mr = isa->mr, nr = isa->nr;
    const size_t panels = (p->mg + nr - 1) / nr;
    for (size_t task = begin; task < end; task++) {
        size_t blk = task / r->col_parts, part = task % r->col_parts;
        size_t r0 = blk * r->block, count = p->rows - r0 < r->block ? p->rows - r0 : r->block;
        /* this task's panels: part of the column panels (every group's same range) */
        size_t j_begin = panels * part / r->col_parts * nr, j_end = panels * (part + 1) / r->col_parts * nr;
        if (j_end > p->mg)
            j_end = p->mg;
        for (size_t g = 0; g < p->group; g++) {
            const char *a = col;
            if (isa->format == QA_I8 && p->contiguous && p->k == p->kp)
                a = (const char *)(r->x + r0 * p->c); /* int8 rows as they are */
            else
                gather(p, r->x, r0, count, g, col);
            const char *wg = (const char *)p->packed + g * p->group_elems * we;
            for (size_t j0 = j_begin; j0 < j_end; j0 += nr) {
                const char *panel = wg + j0 * p->kp * we;
                size_t cols = p->mg - j0 < nr ? p->mg - j0 : nr, oc = g * p->mg + j0;
                const struct qepi e = {p->bias + oc, p->mult + oc, p->yzp, p->lo, p->hi};
                for (size_t i = 0; i < count; i += mr) {
                    size_t rows = count - i < mr ? count - i : mr;
                    isa->tile(p->kp, a + i * lda * p->a_elem, lda, panel, rows, cols, &e,
                              r->y + (r0 + i) * p->m + oc, p->m);
                }
            }
        }
    }
}

/* The taps [*i0, *i1) of a window starting at `start` (k taps `d` apart) that fall inside [0, len). */
static void window_taps(int64_t start, int64_t d, int64_t k, int64_t len, int64_t *i0, int64_t *i1) {
    int64_t a = start >= 0 ? 0 : (-start + d - 1) / d;
    int64_t b = len - 1 - start < 0 ? 0 : (len - 1 - start) / d + 1;
    if (b > k)
        b = k;
    if (b < a)
        b = a;
    *i0 = a;
    *i1 = b;
}

/* Depthwise: each output pixel's channels from the taps of its window inside the input (the isa's dw). */
static void depthwise_range(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct qconv_run *r = arg;
    const struct qconv_params *p = r->p;
    qdw_fn *dw = p->isa->dw;
    const size_t c = p->c, xrow_stride = p->w * c;
    for (size_t row = begin; row < end; row++) {
        size_t n = row / p->oh, oh = row % p->oh;
        int64_t ih0 = (int64_t)oh * p->sh - p->pt, a0, a1;
        window_taps(ih0, p->dh, (int64_t)p->kh, (int64_t)p->h, &a0, &a1);
        const int8_t *xn = r->x + n * p->h * xrow_stride;
        const bool rows_inside = p->inner_ok && a0 == 0 && a1 == (int64_t)p->kh;
        for (size_t ow = 0; ow < p->ow; ow++) {
            int64_t iw0 = (int64_t)ow * p->sw - p->pl, b0, b1;
            window_taps(iw0, p->dw, (int64_t)p->kw, (int64_t)p->w, &b0, &b1);
            int8_t *out = r->y + (row * p->ow + ow) * c;
            if (rows_inside && b0 == 0 && b1 == (int64_t)p->kw)
                p->isa->dw_inner(p, xn + ((size_t)ih0 * p->w + (size_t)iw0) * c, out);
            else
                dw(p, xn, ih0, iw0, a0, a1, b0, b1, out);
        }
    }
}

static ek_status_t qconv_run(const struct ek_op *op, const void *const *in, void *const *out, struct ek_exec *exec) {
    const struct qconv_params *p = op->params;
    if (!p)
        return ek_op_invalid(op, "not prepared");
    struct qconv_run r = {p, in[0], out[0], exec, 0, 1};
    if (p->kind == Q_DEPTHWISE) {
        ek_parallel_for(exec, p->n * p->oh, depthwise_range, &r);
        return EK_OK;
    }
    if (p->proc_isa != qisa_current())
        return ek_fail(EK_ERR_INTERNAL, "op '%.120s': its weights were packed for the %s int8 kernel, %s is in use",
                       op->name ? op->name : "", p->proc_isa->name, qisa_current()->name);
    if (!ek_exec_scratch(exec, 0))
        return ek_fail(EK_ERR_INTERNAL, "op '%.120s' (%s): no scratch memory given", op->name ? op->name : "",
                       ek_op_type_name((int)op->type));
    size_t threads = (size_t)(ek_exec_threads(exec) > 0 ? ek_exec_threads(exec) : 1);
    size_t mr = p->isa->mr;
    r.block = ek_round_up((p->rows + threads - 1) / threads, mr);
    if (r.block > p->block_rows)
        r.block = p->block_rows;
    size_t blocks = (p->rows + r.block - 1) / r.block, panels = (p->mg + p->isa->nr - 1) / p->isa->nr;
    /* Few rows (the late layers' 7 x 7 pixels, an FC's batch): blocks of mr rows do not share out evenly,
     * so the threads also split the column panels (each gathers the rows it needs). */
    r.col_parts = 1;
    if (threads > 1 && blocks < 4 * threads && panels > 1) {
        r.col_parts = threads < panels ? threads : panels;
        r.block = p->rows < p->block_rows ? p->rows : p->block_rows;
        blocks = (p->rows + r.block - 1) / r.block;
    }
    ek_parallel_for(exec, blocks * r.col_parts, qgemm_range, &r);
    return EK_OK;
}

const char *ek_qconv_algorithm(const struct ek_op *op) {
    const struct qconv_params *p = op->params;
    if ((op->type != EK_OP_QCONV && op->type != EK_OP_QFULLY_CONNECTED) || !p)
        return "";
    return p->kind == Q_DEPTHWISE ? "depthwise" : p->isa->algorithm;
}

const struct ek_kernel ek_kernel_qconv = {EK_OP_QCONV, 3, 4, 1, qconv_prepare, qconv_run, qconv_release};
const struct ek_kernel ek_kernel_qfully_connected = {EK_OP_QFULLY_CONNECTED, 3, 4, 1, qfc_prepare, qconv_run,
                                                     qconv_release};
