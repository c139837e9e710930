/* Winograd F(4x4, 3x3) convolution (see winograd.h).
 *
 * A run splits the tiles (4x4 output blocks of all images) into blocks of `block` tiles; each thread
 * of the team takes whole blocks and, in its scratch:
 *   1. transforms each tile's 6x6 input window into V[36][block][C] (frequency-major, so V[f] is the
 *      [tiles x C] left operand of frequency f's GEMM),
 *   2. runs the 36 GEMMs P[f] = V[f] * U[f] ([tiles x M]) with the portable SGEMM (ek_gemm),
 *   3. transforms each tile's 36 products back to its 4x4 outputs, adds bias and residual, clamps,
 *      and stores the pixels inside the output.
 * Window taps outside the input read a row of zeros, outputs outside Y go to a trash row, so edge
 * tiles (padding, partial tiles) take the same path as the others.
 *
 * The transforms work on vectors of channels (NHWC: a pixel's channels are contiguous), written once
 * as macros over a GNU vector type and instantiated for AVX-512, AVX2 (target attributes, chosen at
 * run time by CPUID (ek_x86_has), so the library still runs on any x86-64), and 4 floats (SSE2
 * on x86-64, NEON on aarch64); plain floats without the vector extension. A chunk of channels
 * shorter than the vector goes through a zero-filled staging buffer. */
#include "winograd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "internal.h"

#ifndef WINO_BLOCK_BYTES
#define WINO_BLOCK_BYTES ((size_t)768 * 1024) /* V and P of a block: about half of L2 */
#endif
#ifndef WINO_BLOCK_MIN
#define WINO_BLOCK_MIN 16 /* tiles: each frequency's weights are reused this often */
#endif
#ifndef WINO_BLOCK_MAX
#define WINO_BLOCK_MAX 96
#endif
/* GEMM rows (tiles) per block in multiples of this: the SGEMM's register tiles have up to 8 rows, so
 * no block ends in a partial one (a heuristic; the layout of ek_gemm stays its own) */
#define WINO_BLOCK_ROUND 8

typedef void (*wino_in_fn)(const float *const *src, size_t c, float *dst, size_t fstride);
typedef void (*wino_out_fn)(const float *src, size_t fstride, size_t m, float *const *dst, const float *const *z,
                            const float *bias, float lo, float hi, int clamp);

struct ek_wino {
    struct ek_wino_shape s;
    size_t tiles_h, tiles_w, tiles; /* tiles per column, per row, in all */
    size_t block;                   /* tiles per block */
    size_t u_floats;                /* packed floats per frequency */
    float *u;                       /* 36 packed [C x M] operands */
    float lo, hi;
    int clamp;
    size_t v_off, p_off, zero_off, trash_off; /* floats, into a thread's scratch */
    wino_in_fn in_tf;
    wino_out_fn out_tf;
    const char *name; /* "winograd-f4/" and the transforms' ISA, chosen at prepare */
};

/* ---- the transforms, as macros over a vector type VT of W floats ---- */
#define WLD(VT, p) (__extension__({ VT v_; memcpy(&v_, (p), sizeof v_); v_; }))
#define WST(p, v)                                                                                                      \
    do {                                                                                                               \
        __typeof__(v) t_ = (v);                                                                                        \
        memcpy((p), &t_, sizeof t_);                                                                                   \
    } while (0)

/* 1-D B^T x over six values: z0..z5 */
#define WINO_BT(x0, x1, x2, x3, x4, x5, z0, z1, z2, z3, z4, z5)                                                        \
    do {                                                                                                               \
        __typeof__(x0) a_ = x4 - 4.0f * x2, b_ = x3 - 4.0f * x1, c_ = x4 - x2, e_ = 2.0f * (x3 - x1);                 \
        z0 = 4.0f * x0 - 5.0f * x2 + x4;                                                                               \
        z1 = a_ + b_;                                                                                                  \
        z2 = a_ - b_;                                                                                                  \
        z3 = c_ + e_;                                                                                                  \
        z4 = c_ - e_;                                                                                                  \
        z5 = 4.0f * x1 - 5.0f * x3 + x5;                                                                               \
    } while (0)

/* 1-D A^T m over six values: y0..y3 */
#define WINO_AT(m0, m1, m2, m3, m4, m5, y0, y1, y2, y3)                                                                \
    do {                                                                                                               \
        __typeof__(m0) s12_ = m1 + m2, d12_ = m1 - m2, s34_ = m3 + m4, d34_ = m3 - m4;                                 \
        y0 = m0 + s12_ + s34_;                                                                                         \
        y1 = d12_ + 2.0f * d34_;                                                                                       \
        y2 = s12_ + 4.0f * s34_;                                                                                       \
        y3 = d12_ + 8.0f * d34_ + m5;                                                                                  \
    } while (0)

/* One tile, channels [co, co + W): src[36] the window's pixels, dst + f * fstride frequency f. */
#define WINO_IN_TILE(VT, src, co, dst, fstride)                                                                        \
    do {                                                                                                               \
        VT t_[6][6];                                                                                                   \
        for (int r_ = 0; r_ < 6; r_++) {                                                                               \
            const float *const *s_ = (src) + r_ * 6;                                                                   \
            VT x0 = WLD(VT, s_[0] + (co)), x1 = WLD(VT, s_[1] + (co)), x2 = WLD(VT, s_[2] + (co));                     \
            VT x3 = WLD(VT, s_[3] + (co)), x4 = WLD(VT, s_[4] + (co)), x5 = WLD(VT, s_[5] + (co));                     \
            WINO_BT(x0, x1, x2, x3, x4, x5, t_[r_][0], t_[r_][1], t_[r_][2], t_[r_][3], t_[r_][4], t_[r_][5]);         \
        }                                                                                                              \
        for (int j_ = 0; j_ < 6; j_++) {                                                                               \
            VT z0, z1, z2, z3, z4, z5;                                                                                 \
            WINO_BT(t_[0][j_], t_[1][j_], t_[2][j_], t_[3][j_], t_[4][j_], t_[5][j_], z0, z1, z2, z3, z4, z5);         \
            float *d_ = (dst) + (co) + (size_t)j_ * (fstride);                                                         \
            WST(d_, z0);                                                                                               \
            WST(d_ + 6 * (fstride), z1);                                                                               \
            WST(d_ + 12 * (fstride), z2);                                                                              \
            WST(d_ + 18 * (fstride), z3);                                                                              \
            WST(d_ + 24 * (fstride), z4);                                                                              \
            WST(d_ + 30 * (fstride), z5);                                                                              \
        }                                                                                                              \
    } while (0)

/* One tile, output channels [co, co + W): src + f * fstride the products of frequency f, dst[16] and
 * z[16] (or z NULL) the 4x4 output pixels. CLAMP(v) clamps a VT to [lov, hiv]. */
#define WINO_OUT_TILE(VT, CLAMP, src, fstride, co, dst, z, bias, lov, hiv, clamp)                                      \
    do {                                                                                                               \
        VT u_[6][4];                                                                                                   \
        const float *const *zz_ = (z);                                                                                 \
        for (int i_ = 0; i_ < 6; i_++) {                                                                               \
            const float *s_ = (src) + (co) + (size_t)i_ * 6 * (fstride);                                               \
            VT m0 = WLD(VT, s_), m1 = WLD(VT, s_ + (fstride)), m2 = WLD(VT, s_ + 2 * (fstride));                       \
            VT m3 = WLD(VT, s_ + 3 * (fstride)), m4 = WLD(VT, s_ + 4 * (fstride)), m5 = WLD(VT, s_ + 5 * (fstride));   \
            WINO_AT(m0, m1, m2, m3, m4, m5, u_[i_][0], u_[i_][1], u_[i_][2], u_[i_][3]);                               \
        }                                                                                                              \
        VT bv_ = WLD(VT, (bias) + (co));                                                                               \
        for (int j_ = 0; j_ < 4; j_++) {                                                                               \
            VT y_[4];                                                                                                  \
            WINO_AT(u_[0][j_], u_[1][j_], u_[2][j_], u_[3][j_], u_[4][j_], u_[5][j_], y_[0], y_[1], y_[2], y_[3]);     \
            for (int r_ = 0; r_ < 4; r_++) {                                                                           \
                VT v_ = y_[r_] + bv_;                                                                                  \
                if (zz_)                                                                                               \
                    v_ += WLD(VT, zz_[r_ * 4 + j_] + (co));                                                            \
                if (clamp)                                                                                             \
                    v_ = CLAMP(v_, lov, hiv);                                                                          \
                WST((dst)[r_ * 4 + j_] + (co), v_);                                                                    \
            }                                                                                                          \
        }                                                                                                              \
    } while (0)

/* Full chunks of W channels in place, the rest through staging buffers of W floats per value. */
#define WINO_DEFINE(SUFFIX, TARGET, VT, VI, W, CLAMP)                                                                  \
    TARGET static void wino_in_##SUFFIX(const float *const *src, size_t c, float *dst, size_t fstride) {               \
        size_t k = 0;                                                                                                  \
        for (; k + (W) <= c; k += (W))                                                                                 \
            WINO_IN_TILE(VT, src, k, dst, fstride);                                                                    \
        if (k < c) {                                                                                                   \
            size_t rem = c - k;                                                                                        \
            float sin[36 * (W)], sout[36 * (W)];                                                                       \
            const float *sp[36];                                                                                       \
            memset(sin, 0, sizeof sin);                                                                                \
            for (int q = 0; q < 36; q++) {                                                                             \
                memcpy(sin + q * (W), src[q] + k, rem * sizeof(float));                                                \
                sp[q] = sin + q * (W);                                                                                 \
            }                                                                                                          \
            WINO_IN_TILE(VT, sp, 0, sout, (size_t)(W));                                                                \
            for (int f = 0; f < 36; f++)                                                                               \
                memcpy(dst + (size_t)f * fstride + k, sout + f * (W), rem * sizeof(float));                            \
        }                                                                                                              \
    }                                                                                                                  \
    TARGET static void wino_out_##SUFFIX(const float *src, size_t fstride, size_t m, float *const *dst,                \
                                         const float *const *z, const float *bias, float lo, float hi, int clamp) {    \
        VT lov, hiv;                                                                                                   \
        for (int i = 0; i < (W); i++) {                                                                                \
            ((float *)&lov)[i] = lo;                                                                                   \
            ((float *)&hiv)[i] = hi;                                                                                   \
        }                                                                                                              \
        size_t k = 0;                                                                                                  \
        for (; k + (W) <= m; k += (W))                                                                                 \
            WINO_OUT_TILE(VT, CLAMP, src, fstride, k, dst, z, bias, lov, hiv, clamp);                                  \
        if (k < m) {                                                                                                   \
            size_t rem = m - k;                                                                                        \
            float sin[36 * (W)], sz[16 * (W)], sout[16 * (W)], sb[W];                                                  \
            float *dp[16];                                                                                             \
            const float *zp[16];                                                                                       \
            memset(sin, 0, sizeof sin);                                                                                \
            memset(sz, 0, sizeof sz);                                                                                  \
            memset(sb, 0, sizeof sb);                                                                                  \
            for (int f = 0; f < 36; f++)                                                                               \
                memcpy(sin + f * (W), src + (size_t)f * fstride + k, rem * sizeof(float));                             \
            memcpy(sb, bias + k, rem * sizeof(float));                                                                 \
            for (int q = 0; q < 16; q++) {                                                                             \
                if (z)                                                                                                 \
                    memcpy(sz + q * (W), z[q] + k, rem * sizeof(float));                                               \
                zp[q] = sz + q * (W);                                                                                  \
                dp[q] = sout + q * (W);                                                                                \
            }                                                                                                          \
            WINO_OUT_TILE(VT, CLAMP, sin, (size_t)(W), 0, dp, z ? zp : NULL, sb, lov, hiv, clamp);                     \
            for (int q = 0; q < 16; q++)                                                                               \
                memcpy(dst[q] + k, sout + q * (W), rem * sizeof(float));                                               \
        }                                                                                                              \
    }

/* clamp by masks: (v < lo) ? lo : v, then (v > hi) ? hi : v, NaN kept */
#define WINO_VCLAMP(VT, VI, v, lov, hiv)                                                                               \
    (__extension__({                                                                                                   \
        VT c_ = (v);                                                                                                   \
        VI lt_ = c_ < (lov);                                                                                           \
        c_ = (VT)(((VI)c_ & ~lt_) | ((VI)(lov) & lt_));                                                                \
        VI gt_ = c_ > (hiv);                                                                                           \
        (VT)(((VI)c_ & ~gt_) | ((VI)(hiv) & gt_));                                                                     \
    }))

#if EK_HAVE_V4F
typedef int32_t wino_v4i __attribute__((vector_size(16)));
#define WINO_CLAMP4(v, l, h) WINO_VCLAMP(ek_v4f, wino_v4i, v, l, h)
WINO_DEFINE(v4, , ek_v4f, wino_v4i, 4, WINO_CLAMP4)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(EK_WINO_NO_DISPATCH) /* -D: test the 4-wide path */
#define WINO_X86 1
typedef float wino_v8f __attribute__((vector_size(32)));
typedef int32_t wino_v8i __attribute__((vector_size(32)));
typedef float wino_v16f __attribute__((vector_size(64)));
typedef int32_t wino_v16i __attribute__((vector_size(64)));
#define WINO_CLAMP8(v, l, h) WINO_VCLAMP(wino_v8f, wino_v8i, v, l, h)
#define WINO_CLAMP16(v, l, h) WINO_VCLAMP(wino_v16f, wino_v16i, v, l, h)
WINO_DEFINE(avx2, __attribute__((target("avx2,fma"))), wino_v8f, wino_v8i, 8, WINO_CLAMP8)
#if !defined(EK_WINO_NO_AVX512) /* -D: test the AVX2 path on an AVX-512 machine */
WINO_DEFINE(avx512, __attribute__((target("avx512f"))), wino_v16f, wino_v16i, 16, WINO_CLAMP16)
#endif
#endif
#else
static inline float wino_clamp1(float v, float lo, float hi) {
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}
#define WINO_CLAMP1(v, l, h) wino_clamp1(v, l, h)
WINO_DEFINE(scalar, , float, int, 1, WINO_CLAMP1)
#endif

/* The transforms the running CPU gets, and their label for profiles ("winograd-f4/avx512", ...). */
static void pick_isa(wino_in_fn *in, wino_out_fn *out, const char **name) {
#if EK_HAVE_V4F
#if defined(WINO_X86)
    /* gemm.c's CPUID check: __builtin_cpu_supports's __cpu_model does not link into a zig-built library */
#if !defined(EK_WINO_NO_AVX512) /* -D: test the AVX2 path on an AVX-512 machine */
    if (ek_x86_has("avx512f")) {
        *in = wino_in_avx512;
        *out = wino_out_avx512;
        *name = "winograd-f4/avx512";
        return;
    }
#endif
    if (ek_x86_has("avx2")) {
        *in = wino_in_avx2;
        *out = wino_out_avx2;
        *name = "winograd-f4/avx2";
        return;
    }
#endif
    *in = wino_in_v4;
    *out = wino_out_v4;
#if defined(__aarch64__) || defined(__ARM_NEON)
    *name = "winograd-f4/neon";
#elif defined(__x86_64__) || defined(__SSE2__)
    *name = "winograd-f4/sse2";
#else
    *name = "winograd-f4/vector4";
#endif
#else
    *in = wino_in_scalar;
    *out = wino_out_scalar;
    *name = "winograd-f4/scalar";
#endif
}

const char *ek_wino_name(const struct ek_wino *wp) { return wp->name; }

/* U[f][m][c] = (G g G^T)[f] for g = W[m][.][.][c], in double. */
static const double wino_g[6][3] = {{1.0 / 4, 0, 0},
                                    {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                    {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                    {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                    {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                    {0, 0, 1}};

static void transform_weights(const float *w, size_t m, size_t c, float *ut /* [36][m][c] */) {
    for (size_t o = 0; o < m; o++)
        for (size_t ch = 0; ch < c; ch++) {
            double g[3][3], t[6][3];
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++)
                    g[a][b] = w[((o * 3 + (size_t)a) * 3 + (size_t)b) * c + ch];
            for (int i = 0; i < 6; i++)
                for (int b = 0; b < 3; b++)
                    t[i][b] = wino_g[i][0] * g[0][b] + wino_g[i][1] * g[1][b] + wino_g[i][2] * g[2][b];
            for (int i = 0; i < 6; i++)
                for (int j = 0; j < 6; j++) {
                    double v = t[i][0] * wino_g[j][0] + t[i][1] * wino_g[j][1] + t[i][2] * wino_g[j][2];
                    ut[((size_t)(i * 6 + j) * m + o) * c + ch] = (float)v;
                }
        }
}

void ek_wino_free(struct ek_wino *wp) {
    if (wp) {
        free(wp->u);
        free(wp);
    }
}

ek_status_t ek_wino_prepare(const struct ek_op *op, const struct ek_wino_shape *shape, const float *weights,
                            float lo, float hi, struct ek_wino **out, size_t *scratch_bytes) {
    const char *name = op->name ? op->name : "";
    struct ek_wino *wp = calloc(1, sizeof *wp);
    if (!wp)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "op '%.120s': no memory for Winograd parameters", name);
    wp->s = *shape;
    wp->lo = lo;
    wp->hi = hi;
    wp->clamp = !(isinf(lo) && lo < 0 && isinf(hi) && hi > 0);
    pick_isa(&wp->in_tf, &wp->out_tf, &wp->name);
    wp->tiles_h = (shape->oh + 3) / 4;
    wp->tiles_w = (shape->ow + 3) / 4;
    size_t c = shape->c, m = shape->m, per_image, total_u, ut_floats, ut_bytes, bytes;
    ek_status_t st;
    if (!ek_size_mul(wp->tiles_h, wp->tiles_w, &per_image) || !ek_size_mul(per_image, shape->n, &wp->tiles) ||
        !ek_gemm_packed_size(c, m, &wp->u_floats) || !ek_size_mul(wp->u_floats, 36, &total_u) ||
        !ek_size_mul(c, m, &ut_floats) || !ek_size_mul(ut_floats, 36, &ut_floats) ||
        !ek_size_mul(ut_floats, sizeof(float), &ut_bytes) || !ek_size_mul(total_u, sizeof(float), &bytes)) {
        st = ek_op_invalid(op, "Winograd weights too large");
        goto fail;
    }
    wp->u = malloc(bytes ? bytes : 1);
    float *ut = malloc(ut_bytes ? ut_bytes : 1); /* U unpacked, [36][M][C] */
    if (!wp->u || !ut) {
        free(ut);
        st = ek_fail(EK_ERR_OUT_OF_MEMORY, "op '%.120s': no memory for Winograd weights (%zu bytes)", name, bytes);
        goto fail;
    }
    transform_weights(weights, m, c, ut);
    for (size_t f = 0; f < 36; f++)
        ek_gemm_pack_bt(m, c, ut + f * m * c, c, wp->u + f * wp->u_floats);
    free(ut);

    /* tiles per block: V and P of a block about WINO_BLOCK_BYTES, within [MIN, MAX] */
    size_t per_tile = 36 * (c + m) * sizeof(float), block = WINO_BLOCK_BYTES / per_tile;
    if (block < WINO_BLOCK_MIN)
        block = WINO_BLOCK_MIN;
    if (block > WINO_BLOCK_MAX)
        block = WINO_BLOCK_MAX;
    block = block / WINO_BLOCK_ROUND * WINO_BLOCK_ROUND;
    if (block > wp->tiles)
        block = wp->tiles;
    wp->block = block;
    size_t v, p, floats, cm = c > m ? c : m;
    if (!ek_size_mul(36 * block, c, &v) || !ek_size_mul(36 * block, m, &p)) {
        st = ek_op_invalid(op, "Winograd scratch too large");
        goto fail;
    }
    wp->v_off = 0;
    wp->p_off = ek_round_up(v, 16);
    wp->zero_off = wp->p_off + ek_round_up(p, 16);
    wp->trash_off = wp->zero_off + ek_round_up(cm, 16);
    floats = wp->trash_off + ek_round_up(m, 16);
    if (floats < v || !ek_size_mul(floats, sizeof(float), scratch_bytes)) {
        st = ek_op_invalid(op, "Winograd scratch too large");
        goto fail;
    }
    *out = wp;
    return EK_OK;
fail:
    ek_wino_free(wp);
    return st;
}

struct wino_run {
    const struct ek_wino *wp;
    const float *x, *bias, *z;
    float *y;
    struct ek_exec *exec;
    size_t block;
};

static void wino_range(void *arg, size_t begin, size_t end, int thread) {
    const struct wino_run *r = arg;
    const struct ek_wino *wp = r->wp;
    const struct ek_wino_shape *s = &wp->s;
    const size_t c = s->c, m = s->m, block = r->block;
    float *scratch = ek_exec_scratch(r->exec, thread);
    float *v = scratch + wp->v_off, *prod = scratch + wp->p_off, *zero = scratch + wp->zero_off;
    float *trash = scratch + wp->trash_off;
    memset(zero, 0, (c > m ? c : m) * sizeof(float));
    const float *bias = r->bias ? r->bias : zero;
    const size_t vstride = block * c, pstride = block * m;
    for (size_t blk = begin; blk < end; blk++) {
        size_t t0 = blk * block, count = wp->tiles - t0 < block ? wp->tiles - t0 : block;
        for (size_t t = 0; t < count; t++) {
            size_t tile = t0 + t, tx = tile % wp->tiles_w, ty = (tile / wp->tiles_w) % wp->tiles_h;
            size_t img = tile / wp->tiles_w / wp->tiles_h;
            const float *src[36];
            const float *xn = r->x + img * s->h * s->w * c;
            for (size_t i = 0; i < 6; i++) {
                /* unsigned wrap makes rows above the input huge, so one compare covers both sides */
                size_t iy = ty * 4 + i - s->pt;
                for (size_t j = 0; j < 6; j++) {
                    size_t ix = tx * 4 + j - s->pl;
                    src[i * 6 + j] = iy < s->h && ix < s->w ? xn + (iy * s->w + ix) * c : zero;
                }
            }
            wp->in_tf(src, c, v + t * c, vstride);
        }
        for (size_t f = 0; f < 36; f++)
            ek_gemm(count, m, c, v + f * vstride, c, wp->u + f * wp->u_floats, prod + f * pstride, m, NULL, -INFINITY,
                    INFINITY);
        for (size_t t = 0; t < count; t++) {
            size_t tile = t0 + t, tx = tile % wp->tiles_w, ty = (tile / wp->tiles_w) % wp->tiles_h;
            size_t img = tile / wp->tiles_w / wp->tiles_h;
            float *dst[16];
            const float *zp[16];
            for (size_t i = 0; i < 4; i++) {
                size_t oy = ty * 4 + i;
                for (size_t j = 0; j < 4; j++) {
                    size_t ox = tx * 4 + j, off = ((img * s->oh + oy) * s->ow + ox) * m;
                    bool in = oy < s->oh && ox < s->ow;
                    dst[i * 4 + j] = in ? r->y + off : trash;
                    zp[i * 4 + j] = in && r->z ? r->z + off : zero;
                }
            }
            wp->out_tf(prod + t * m, pstride, m, dst, r->z ? zp : NULL, bias, wp->lo, wp->hi, wp->clamp);
        }
    }
}

void ek_wino_run(const struct ek_wino *wp, const float *x, const float *bias, const float *z, float *y,
                 struct ek_exec *exec) {
    if (!wp->tiles)
        return;
    struct wino_run r = {wp, x, bias, z, y, exec, wp->block};
    /* a multiple of the team's threads of equal blocks (at most wp->block tiles, at least 4 unless
     * the tiles are fewer), so the threads finish together */
    size_t threads = (size_t)(ek_exec_threads(exec) > 0 ? ek_exec_threads(exec) : 1);
    if (threads > 1) {
        size_t blocks = (wp->tiles + wp->block - 1) / wp->block;
        blocks = (blocks + threads - 1) / threads * threads;
        size_t block = ek_round_up((wp->tiles + blocks - 1) / blocks, WINO_BLOCK_ROUND);
        if (block < 4)
            block = wp->block < 4 ? wp->block : 4;
        r.block = block < wp->block ? block : wp->block;
    }
    ek_parallel_for(exec, (wp->tiles + r.block - 1) / r.block, wino_range, &r);
}
