/* The SGEMM that CONV, CONV_TRANSPOSE, FULLY_CONNECTED and MATMUL share (helpers.h).
 *
 * One cache-blocked driver (KC deep slices of k, MC rows of A per slice, the packed NR-wide panels of
 * B innermost) around an MR x NR register-tile microkernel, of which there are several:
 * - avx512: AVX-512F intrinsics (x86-64), compiled with __attribute__((target("avx512f"))) (clang 18
 *   and later: "avx512f,evex512");
 * - avx2:   AVX2 + FMA intrinsics (x86-64), compiled with target("avx2,fma");
 * - neon:   NEON intrinsics (aarch64, where NEON is always there);
 * - generic: GNU C vector types of four floats (gcc and clang lower them to SSE2 / NEON / ...), or
 *   plain loops with -DEK_NO_VECTOR_EXT and other compilers.
 * The x86 kernels use function attributes, never global -m flags, so the library still runs on any
 * x86-64. The kernel is chosen once per process (the best the CPU has, by CPUID / XGETBV),
 * unless EDGEKIT_GEMM_ISA names one this build and CPU have (an unknown or unavailable name gets the
 * best one). The packed layout depends on the kernel's NR; prepare-time packing and run-time products
 * use the same per-process choice. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(EK_NO_SIMD_KERNELS)
#define EK_GEMM_X86 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define EK_GEMM_X86 0
#endif
#if defined(__aarch64__) && defined(__GNUC__) && !defined(EK_NO_SIMD_KERNELS)
#define EK_GEMM_NEON 1
#include <arm_neon.h>
#else
#define EK_GEMM_NEON 0
#endif

#define MC 128 /* an MC x KC block of A stays in L2 while the panels go past it */
#define FIRST 1u /* the first k slice: C = bias (or 0) + product, else C += product */
#define LAST 2u  /* the last k slice: clamp */
#define MAX_NR 32 /* at least every kernel's NR */

/* One register tile: C[rows][cols] (row stride ldc) = (first k slice ? bias, or 0 : C) + A[rows][kc]
 * (row stride lda) * b, the kc x NR slice of a packed panel; clamped to [lo, hi] on the last k slice.
 * rows <= MR and cols <= NR: the kernels compute a whole MR x NR tile (rows past `rows` repeat the
 * last one) and store only the rows x cols corner. */
typedef void tile_fn(size_t kc, const float *a, size_t lda, const float *b, float *c, size_t ldc, size_t rows,
                     size_t cols, const float *bias, unsigned flags, float lo, float hi);

struct gemm_isa {
    const char *name;
    size_t mr, nr, kc; /* register tile, and the depth of a k slice (a kc x nr panel slice stays in L1) */
    tile_fn *tile;
};

/* The store of a tile computed into acc (rows nr apart): edge tiles, and the generic kernel. */
static void store_acc(const float *acc, size_t nr, size_t rows, size_t cols, float *c, size_t ldc,
                      const float *bias, unsigned flags, float lo, float hi) {
    for (size_t r = 0; r < rows; r++) {
        float *cr = c + r * ldc;
        const float *ar = acc + r * nr;
        for (size_t j = 0; j < cols; j++) {
            float v = ar[j] + ((flags & FIRST) ? (bias ? bias[j] : 0.0f) : cr[j]);
            if (flags & LAST) {
                v = v < lo ? lo : v;
                v = v > hi ? hi : v;
            }
            cr[j] = v;
        }
    }
}

/* ---------------------------------------------------------------- generic: 4 x 8 */

#define G_MR 4
#define G_NR 8
#if EK_HAVE_V4F
static void tile_generic(size_t kc, const float *a, size_t lda, const float *b, float *c, size_t ldc, size_t rows,
                         size_t cols, const float *bias, unsigned flags, float lo, float hi) {
    /* Rows past `rows` repeat the last one (computed, not stored). */
    const float *a0 = a, *a1 = rows > 1 ? a0 + lda : a0, *a2 = rows > 2 ? a1 + lda : a1;
    const float *a3 = rows > 3 ? a2 + lda : a2;
    ek_v4f c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};
    for (size_t p = 0; p < kc; p++, b += G_NR) {
        const ek_v4f b0 = ek_v4f_load(b), b1 = ek_v4f_load(b + 4);
        const ek_v4f x0 = {a0[p], a0[p], a0[p], a0[p]}, x1 = {a1[p], a1[p], a1[p], a1[p]};
        const ek_v4f x2 = {a2[p], a2[p], a2[p], a2[p]}, x3 = {a3[p], a3[p], a3[p], a3[p]};
        c00 += x0 * b0;
        c01 += x0 * b1;
        c10 += x1 * b0;
        c11 += x1 * b1;
        c20 += x2 * b0;
        c21 += x2 * b1;
        c30 += x3 * b0;
        c31 += x3 * b1;
    }
    float acc[G_MR * G_NR];
    ek_v4f_store(acc + 0, c00);
    ek_v4f_store(acc + 4, c01);
    ek_v4f_store(acc + 8, c10);
    ek_v4f_store(acc + 12, c11);
    ek_v4f_store(acc + 16, c20);
    ek_v4f_store(acc + 20, c21);
    ek_v4f_store(acc + 24, c30);
    ek_v4f_store(acc + 28, c31);
    store_acc(acc, G_NR, rows, cols, c, ldc, bias, flags, lo, hi);
}
#else
static void tile_generic(size_t kc, const float *a, size_t lda, const float *b, float *c, size_t ldc, size_t rows,
                         size_t cols, const float *bias, unsigned flags, float lo, float hi) {
    float acc[G_MR][G_NR] = {{0}};
    for (size_t p = 0; p < kc; p++, b += G_NR)
        for (size_t i = 0; i < rows; i++)
            for (int j = 0; j < G_NR; j++)
                acc[i][j] += a[i * lda + p] * b[j];
    store_acc(&acc[0][0], G_NR, rows, cols, c, ldc, bias, flags, lo, hi);
}
#endif

/* ---------------------------------------------------------------- x86-64: AVX2 + FMA, AVX-512F */
/* The clamps pass v as max/min's second operand, which they return when either is NaN: a NaN result
 * stays NaN, as in the other kernels and ONNX. */

/* The SIMD kernels are written once over arrays of accumulators with constant trip counts; the
 * pragmas fully unroll them so that every accumulator lives in a register. */
#define EK_UNROLL _Pragma("GCC unroll 32")

#if EK_GEMM_X86
/* clang 18 and later also want "evex512" for 512-bit vectors (gcc 12 does not know that name). */
#if defined(__clang__) && __clang_major__ >= 18
#define EK_TARGET_AVX512 __attribute__((target("avx512f,evex512")))
#else
#define EK_TARGET_AVX512 __attribute__((target("avx512f")))
#endif

/* AVX2: MR x (8 * NV). */
#define AVX2_TILE(NAME, MR_, NV_)                                                                                   \
    __attribute__((target("avx2,fma"))) static void NAME(size_t kc, const float *a, size_t lda, const float *b,    \
                                                         float *c, size_t ldc, size_t rows, size_t cols,           \
                                                         const float *bias, unsigned flags, float lo, float hi) {  \
        const float *ap[MR_];                                                                                       \
        EK_UNROLL for (size_t i = 0; i < MR_; i++) ap[i] = a + (i < rows ? i : rows - 1) * lda;                     \
        __m256 acc[MR_][NV_];                                                                                       \
        EK_UNROLL for (int i = 0; i < MR_; i++) EK_UNROLL for (int j = 0; j < NV_; j++) acc[i][j] =                 \
            _mm256_setzero_ps();                                                                                    \
        for (size_t p = 0; p < kc; p++, b += 8 * NV_) {                                                             \
            __m256 bv[NV_];                                                                                         \
            EK_UNROLL for (int j = 0; j < NV_; j++) bv[j] = _mm256_loadu_ps(b + 8 * j);                             \
            EK_UNROLL for (int i = 0; i < MR_; i++) {                                                               \
                const __m256 x = _mm256_broadcast_ss(ap[i] + p);                                                    \
                EK_UNROLL for (int j = 0; j < NV_; j++) acc[i][j] = _mm256_fmadd_ps(x, bv[j], acc[i][j]);           \
            }                                                                                                       \
        }                                                                                                           \
        if (rows == MR_ && cols == 8 * NV_) {                                                                       \
            const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);                                        \
            EK_UNROLL for (int j = 0; j < NV_; j++) {                                                               \
                const __m256 bj = (flags & FIRST) && bias ? _mm256_loadu_ps(bias + 8 * j) : _mm256_setzero_ps();    \
                EK_UNROLL for (int i = 0; i < MR_; i++) {                                                           \
                    float *cij = c + (size_t)i * ldc + 8 * j;                                                       \
                    __m256 v = _mm256_add_ps(acc[i][j], (flags & FIRST) ? bj : _mm256_loadu_ps(cij));               \
                    if (flags & LAST)                                                                               \
                        v = _mm256_min_ps(vhi, _mm256_max_ps(vlo, v));                                              \
                    _mm256_storeu_ps(cij, v);                                                                       \
                }                                                                                                   \
            }                                                                                                       \
        } else {                                                                                                    \
            float buf[MR_ * 8 * NV_];                                                                               \
            EK_UNROLL for (int i = 0; i < MR_; i++) EK_UNROLL for (int j = 0; j < NV_; j++)                         \
                _mm256_storeu_ps(buf + i * 8 * NV_ + 8 * j, acc[i][j]);                                             \
            store_acc(buf, 8 * NV_, rows, cols, c, ldc, bias, flags, lo, hi);                                       \
        }                                                                                                           \
    }

/* AVX-512F: MR x (16 * NV). */
#define AVX512_TILE(NAME, MR_, NV_)                                                                                 \
    EK_TARGET_AVX512 static void NAME(size_t kc, const float *a, size_t lda, const float *b, float *c, size_t ldc, \
                                      size_t rows, size_t cols, const float *bias, unsigned flags, float lo,       \
                                      float hi) {                                                                   \
        const float *ap[MR_];                                                                                       \
        EK_UNROLL for (size_t i = 0; i < MR_; i++) ap[i] = a + (i < rows ? i : rows - 1) * lda;                     \
        __m512 acc[MR_][NV_];                                                                                       \
        EK_UNROLL for (int i = 0; i < MR_; i++) EK_UNROLL for (int j = 0; j < NV_; j++) acc[i][j] =                 \
            _mm512_setzero_ps();                                                                                    \
        for (size_t p = 0; p < kc; p++, b += 16 * NV_) {                                                            \
            __m512 bv[NV_];                                                                                         \
            EK_UNROLL for (int j = 0; j < NV_; j++) bv[j] = _mm512_loadu_ps(b + 16 * j);                            \
            EK_UNROLL for (int i = 0; i < MR_; i++) {                                                               \
                const __m512 x = _mm512_set1_ps(ap[i][p]);                                                          \
                EK_UNROLL for (int j = 0; j < NV_; j++) acc[i][j] = _mm512_fmadd_ps(x, bv[j], acc[i][j]);           \
            }                                                                                                       \
        }                                                                                                           \
        /* Columns past `cols` are masked off; rows past `rows` were computed but are not stored. */               \
        const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);                                            \
        EK_UNROLL for (int j = 0; j < NV_; j++) {                                                                   \
            const size_t c0 = 16 * (size_t)j;                                                                       \
            if (c0 >= cols)                                                                                         \
                break;                                                                                              \
            const __mmask16 m = cols - c0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (cols - c0)) - 1);        \
            const __m512 bj =                                                                                       \
                (flags & FIRST) && bias ? _mm512_maskz_loadu_ps(m, bias + c0) : _mm512_setzero_ps();                \
            EK_UNROLL for (int i = 0; i < MR_; i++) {                                                               \
                if ((size_t)i >= rows)                                                                              \
                    break;                                                                                          \
                float *cij = c + (size_t)i * ldc + c0;                                                              \
                __m512 v = _mm512_add_ps(acc[i][j], (flags & FIRST) ? bj : _mm512_maskz_loadu_ps(m, cij));          \
                if (flags & LAST)                                                                                   \
                    v = _mm512_min_ps(vhi, _mm512_max_ps(vlo, v));                                                  \
                _mm512_mask_storeu_ps(cij, m, v);                                                                   \
            }                                                                                                       \
        }                                                                                                           \
    }

AVX2_TILE(tile_avx2, 6, 2)
AVX512_TILE(tile_avx512, 8, 1)
#endif

/* ---------------------------------------------------------------- aarch64: NEON */

#if EK_GEMM_NEON
/* MR x (4 * NV). */
#define NEON_TILE(NAME, MR_, NV_)                                                                                   \
    static void NAME(size_t kc, const float *a, size_t lda, const float *b, float *c, size_t ldc, size_t rows,     \
                     size_t cols, const float *bias, unsigned flags, float lo, float hi) {                          \
        const float *ap[MR_];                                                                                       \
        EK_UNROLL for (size_t i = 0; i < MR_; i++) ap[i] = a + (i < rows ? i : rows - 1) * lda;                     \
        float32x4_t acc[MR_][NV_];                                                                                  \
        EK_UNROLL for (int i = 0; i < MR_; i++) EK_UNROLL for (int j = 0; j < NV_; j++) acc[i][j] =                 \
            vdupq_n_f32(0.0f);                                                                                      \
        size_t p = 0;                                                                                               \
        for (; p + 4 <= kc; p += 4) { /* four k steps: one vector load per row, then by lane */                    \
            float32x4_t x[MR_];                                                                                     \
            EK_UNROLL for (int i = 0; i < MR_; i++) x[i] = vld1q_f32(ap[i] + p);                                    \
            EK_UNROLL for (int l = 0; l < 4; l++) {                                                                 \
                float32x4_t bv[NV_];                                                                                \
                EK_UNROLL for (int j = 0; j < NV_; j++) bv[j] = vld1q_f32(b + (size_t)(l * 4 * NV_ + 4 * j));       \
                EK_UNROLL for (int i = 0; i < MR_; i++) EK_UNROLL for (int j = 0; j < NV_; j++) {                   \
                    switch (l) {                                                                                    \
                    case 0: acc[i][j] = vfmaq_laneq_f32(acc[i][j], bv[j], x[i], 0); break;                          \
                    case 1: acc[i][j] = vfmaq_laneq_f32(acc[i][j], bv[j], x[i], 1); break;                          \
                    case 2: acc[i][j] = vfmaq_laneq_f32(acc[i][j], bv[j], x[i], 2); break;                          \
                    default: acc[i][j] = vfmaq_laneq_f32(acc[i][j], bv[j], x[i], 3); break;                         \
                    }                                                                                               \
                }                                                                                                   \
            }                                                                                                       \
            b += 16 * NV_;                                                                                          \
        }                                                                                                           \
        for (; p < kc; p++, b += 4 * NV_) {                                                                         \
            float32x4_t bv[NV_];                                                                                    \
            EK_UNROLL for (int j = 0; j < NV_; j++) bv[j] = vld1q_f32(b + 4 * j);                                   \
            EK_UNROLL for (int i = 0; i < MR_; i++) {                                                               \
                const float32x4_t xi = vdupq_n_f32(ap[i][p]);                                                       \
                EK_UNROLL for (int j = 0; j < NV_; j++) acc[i][j] = vfmaq_f32(acc[i][j], bv[j], xi);                \
            }                                                                                                       \
        }                                                                                                           \
        if (rows == MR_ && cols == 4 * NV_) {                                                                       \
            const float32x4_t vlo = vdupq_n_f32(lo), vhi = vdupq_n_f32(hi);                                         \
            EK_UNROLL for (int j = 0; j < NV_; j++) {                                                               \
                const float32x4_t bj = (flags & FIRST) && bias ? vld1q_f32(bias + 4 * j) : vdupq_n_f32(0.0f);       \
                EK_UNROLL for (int i = 0; i < MR_; i++) {                                                           \
                    float *cij = c + (size_t)i * ldc + 4 * j;                                                       \
                    float32x4_t v = vaddq_f32(acc[i][j], (flags & FIRST) ? bj : vld1q_f32(cij));                    \
                    if (flags & LAST)                                                                               \
                        v = vminq_f32(vmaxq_f32(v, vlo), vhi);                                                      \
                    vst1q_f32(cij, v);                                                                              \
                }                                                                                                   \
            }                                                                                                       \
        } else {                                                                                                    \
            float buf[MR_ * 4 * NV_];                                                                               \
            EK_UNROLL for (int i = 0; i < MR_; i++) EK_UNROLL for (int j = 0; j < NV_; j++)                         \
                vst1q_f32(buf + i * 4 * NV_ + 4 * j, acc[i][j]);                                                    \
            store_acc(buf, 4 * NV_, rows, cols, c, ldc, bias, flags, lo, hi);                                       \
        }                                                                                                           \
    }

NEON_TILE(tile_neon, 6, 2)
#endif

/* ---------------------------------------------------------------- choice */

enum { ISA_GENERIC, ISA_AVX2, ISA_AVX512, ISA_NEON, ISA_COUNT };

static const struct gemm_isa isas[ISA_COUNT] = {
    [ISA_GENERIC] = {"generic", G_MR, G_NR, 256, tile_generic},
#if EK_GEMM_X86
    [ISA_AVX2] = {"avx2", 6, 16, 256, tile_avx2},
    [ISA_AVX512] = {"avx512", 8, 16, 256, tile_avx512},
#endif
#if EK_GEMM_NEON
    [ISA_NEON] = {"neon", 6, 8, 256, tile_neon},
#endif
};

#if EK_GEMM_X86
/* What the CPU and the OS (which must save the vector registers: XCR0) support, by CPUID and XGETBV
 * rather than __builtin_cpu_supports, whose __cpu_model does not link into a zig-built shared library. */
static bool x86_has(int id) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)) || !(c & (1u << 28)))
        return false; /* no OSXSAVE or no AVX */
    bool fma = (c & (1u << 12)) != 0;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    (void)xhi;
    if (__get_cpuid_max(0, NULL) < 7)
        return false;
    __cpuid_count(7, 0, a, b, c, d);
    if (id == ISA_AVX2)
        return fma && (b & (1u << 5)) && (xlo & 0x6u) == 0x6u; /* XMM and YMM state */
    if (id == ISA_AVX512)
        return (b & (1u << 16)) && (xlo & 0xe6u) == 0xe6u; /* and opmask, ZMM0-15 upper, ZMM16-31 */
    return false;
}
#endif

bool ek_x86_has(const char *feature) {
#if EK_GEMM_X86
    if (strcmp(feature, "avx2") == 0)
        return x86_has(ISA_AVX2);
    if (strcmp(feature, "avx512f") == 0)
        return x86_has(ISA_AVX512);
#endif
    (void)feature;
    return false;
}

static bool isa_available(int id) {
    if (id < 0 || id >= ISA_COUNT || !isas[id].tile)
        return false;
#if EK_GEMM_X86
    if (id == ISA_AVX2 || id == ISA_AVX512)
        return x86_has(id);
#endif
    return true;
}

static int isa_by_name(const char *name) {
    for (int id = 0; name && id < ISA_COUNT; id++)
        if (isas[id].tile && strcmp(name, isas[id].name) == 0)
            return id;
    return -1;
}

static int isa_best(void) {
    static const int order[] = {ISA_AVX512, ISA_AVX2, ISA_NEON};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (isa_available(order[i]))
            return order[i];
    return ISA_GENERIC;
}

/* -1 until the first use picks one; every thread computes the same choice, so a race is harmless. */
static atomic_int chosen = -1;

static const struct gemm_isa *isa_current(void) {
    int id = atomic_load_explicit(&chosen, memory_order_relaxed);
    if (id < 0) {
        id = isa_by_name(getenv("EDGEKIT_GEMM_ISA"));
        if (!isa_available(id))
            id = isa_best();
        atomic_store_explicit(&chosen, id, memory_order_relaxed);
    }
    return &isas[id];
}

const char *ek_gemm_isa(void) { return isa_current()->name; }
size_t ek_gemm_mr(void) { return isa_current()->mr; }
size_t ek_gemm_nr(void) { return isa_current()->nr; }

bool ek_gemm_force_isa(const char *name) {
    int id = isa_by_name(name);
    if (!isa_available(id))
        return false;
    atomic_store_explicit(&chosen, id, memory_order_relaxed);
    return true;
}

/* ---------------------------------------------------------------- packing and the driver */

bool ek_gemm_packed_size(size_t k, size_t n, size_t *floats) {
    size_t nr = ek_gemm_nr();
    if (n > SIZE_MAX - nr)
        return false;
    return ek_size_mul(k, ek_round_up(n, nr), floats);
}

static void pack_bt(size_t nr, size_t n, size_t k, const float *bt, size_t ldb, float *packed) {
    for (size_t j0 = 0; j0 < n; j0 += nr) {
        size_t cols = n - j0 < nr ? n - j0 : nr;
        float *dst = packed + j0 * k;
        for (size_t p = 0; p < k; p++) {
            size_t jj = 0;
            for (; jj < cols; jj++)
                dst[p * nr + jj] = bt[(j0 + jj) * ldb + p];
            for (; jj < nr; jj++)
                dst[p * nr + jj] = 0.0f;
        }
    }
}

static void pack_b(size_t nr, size_t k, size_t n, const float *b, size_t ldb, float *packed) {
    for (size_t j0 = 0; j0 < n; j0 += nr) {
        size_t cols = n - j0 < nr ? n - j0 : nr;
        float *dst = packed + j0 * k;
        for (size_t p = 0; p < k; p++) {
            const float *src = b + p * ldb + j0;
            size_t jj = 0;
            for (; jj < cols; jj++)
                dst[p * nr + jj] = src[jj];
            for (; jj < nr; jj++)
                dst[p * nr + jj] = 0.0f;
        }
    }
}

void ek_gemm_pack_bt(size_t n, size_t k, const float *bt, size_t ldb, float *packed) {
    pack_bt(ek_gemm_nr(), n, k, bt, ldb, packed);
}

void ek_gemm_pack_b(size_t k, size_t n, const float *b, size_t ldb, float *packed) {
    pack_b(ek_gemm_nr(), k, n, b, ldb, packed);
}

static void gemm(const struct gemm_isa *isa, size_t m, size_t n, size_t k, const float *a, size_t lda,
                 const float *packed, float *c, size_t ldc, const float *bias, float lo, float hi) {
    if (m == 0 || n == 0)
        return;
    const size_t mr = isa->mr, nr = isa->nr, kcmax = isa->kc;
    if (k == 0) { /* no products: the bias alone */
        static const float zero[MAX_NR];
        for (size_t j0 = 0; j0 < n; j0 += nr)
            for (size_t i = 0; i < m; i++)
                store_acc(zero, nr, 1, n - j0 < nr ? n - j0 : nr, c + i * ldc + j0, ldc, bias ? bias + j0 : NULL,
                          FIRST | LAST, lo, hi);
        return;
    }
    size_t panels = (n + nr - 1) / nr;
    for (size_t p0 = 0; p0 < k; p0 += kcmax) {
        size_t kc = k - p0 < kcmax ? k - p0 : kcmax;
        unsigned flags = (p0 == 0 ? FIRST : 0u) | (p0 + kc == k ? LAST : 0u);
        for (size_t i0 = 0; i0 < m; i0 += MC) {
            size_t i1 = m - i0 < MC ? m : i0 + MC;
            for (size_t jp = 0; jp < panels; jp++) {
                const float *bp = packed + (jp * k + p0) * nr;
                size_t cols = n - jp * nr < nr ? n - jp * nr : nr;
                float *cp = c + jp * nr;
                const float *bias_p = bias ? bias + jp * nr : NULL;
                for (size_t i = i0; i < i1; i += mr) {
                    size_t rows = i1 - i < mr ? i1 - i : mr;
                    isa->tile(kc, a + i * lda + p0, lda, bp, cp + i * ldc, ldc, rows, cols, bias_p, flags, lo, hi);
                }
            }
        }
    }
}

void ek_gemm(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed, float *c, size_t ldc,
             const float *bias, float lo, float hi) {
    gemm(isa_current(), m, n, k, a, lda, packed, c, ldc, bias, lo, hi);
}
