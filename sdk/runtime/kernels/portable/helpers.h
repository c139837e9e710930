/* The portable SGEMM (gemm.c) that CONV, CONV_TRANSPOSE, FULLY_CONNECTED and MATMUL share, and
 * small checked-arithmetic and validation helpers of the spatial kernels. Not installed.
 *
 * The right-hand operand is packed once into panels of ek_gemm_nr() columns: panel j holds, for each
 * p in [0, k), the NR values B[p][j*NR .. j*NR+NR) (zero past the last column). Constant weights are
 * packed by prepare(); others into the thread's scratch at run time. NR (and the register tile's MR)
 * depend on the microkernel chosen once per process (ek_gemm_isa()), so packing and products agree;
 * callers that split n into column blocks use multiples of ek_gemm_nr(). */
#ifndef EDGEKIT_PORTABLE_HELPERS_H
#define EDGEKIT_PORTABLE_HELPERS_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernel.h"

/* Floats of a packed k x n operand; false on overflow. */
bool ek_gemm_packed_size(size_t k, size_t n, size_t *floats);
/* Pack B given as B^T: n rows of k values, row stride ldb (weights W[N][K]). */
void ek_gemm_pack_bt(size_t n, size_t k, const float *bt, size_t ldb, float *packed);
/* Pack B given row-major: k rows of n values, row stride ldb. */
void ek_gemm_pack_b(size_t k, size_t n, const float *b, size_t ldb, float *packed);
/* C[m][n] = act(A[m][k] * B[k][n] + bias[n]), A with row stride lda, C with row stride ldc, B packed
 * for exactly these n columns; bias may be NULL; the result is clamped to [lo, hi]. */
void ek_gemm(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed, float *c, size_t ldc,
             const float *bias, float lo, float hi);
/* The microkernel in use: "avx512", "avx2", "neon" or "generic" (the best this CPU has, or the one
 * EDGEKIT_GEMM_ISA names when this build and CPU have it; chosen at the first call of any ek_gemm_*). */
const char *ek_gemm_isa(void);
size_t ek_gemm_mr(void); /* rows of its register tile: row blocks that are multiples of it run fastest */
size_t ek_gemm_nr(void); /* columns of a packed panel */
/* Tests only: use the named microkernel from now on (false when this build or CPU lacks it). Weights
 * packed before the switch are invalid after it; no other thread may be using the SGEMM meanwhile. */
bool ek_gemm_force_isa(const char *name);
/* Whether the CPU and OS support "avx2" (with FMA) or "avx512f" (x86-64; false elsewhere), by CPUID and
 * XGETBV: what the x86 kernels (SGEMM, Winograd) are chosen by. */
bool ek_x86_has(const char *feature);

/* The int8 GEMM of QCONV and QFULLY_CONNECTED (qconv.c): its microkernel, "avx512vnni", "avx2",
 * "neondot", "neon" or "generic" (the best this CPU has, or the one EDGEKIT_QGEMM_ISA names when this
 * build and CPU have it; chosen once per process, at the first prepare of such an op). */
const char *ek_qgemm_isa(void);
/* Tests only: use the named microkernel from now on (false when this build or CPU lacks it); ops
 * prepared before the switch fail their runs (EK_ERR_INTERNAL) until prepared again. */
bool ek_qgemm_force_isa(const char *name);
/* The profile label of a prepared QCONV / QFULLY_CONNECTED: "depthwise" or "qgemm/<isa>". */
const char *ek_qconv_algorithm(const struct ek_op *op);

/* The walk of a binary op with numpy broadcasting (elementwise.c, the int8 QADD/QMUL of quantized.c):
 * Y's dims `want[rank]` with dims of 1 dropped and neighbours merged where both inputs continue their
 * walk across them, outermost first, into dims[], with each input's element stride per dim in sx[]
 * (X) and sb[] (B), 0 where it broadcasts. Returns the walk's rank, >= 1 (one element: dims[0] = 1). */
int ek_broadcast_walk(const struct ek_tensor_desc *x, const struct ek_tensor_desc *b, const int64_t *want,
                      int rank, size_t *dims, size_t *sx, size_t *sb);

/* GNU C vector types (gcc, clang): four floats, which every SIMD ISA we target has (SSE2, NEON),
 * so accumulators stay in registers whatever the optimisation level (loops over small arrays left
 * that to the vectoriser, which at -O2 kept them in memory and at -O3 vectorised the wrong loop). */
#if defined(__GNUC__) && !defined(EK_NO_VECTOR_EXT) /* -DEK_NO_VECTOR_EXT tests the plain path */
#include <string.h>
#define EK_HAVE_V4F 1
typedef float ek_v4f __attribute__((vector_size(16)));

static inline ek_v4f ek_v4f_load(const float *p) {
    ek_v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void ek_v4f_store(float *p, ek_v4f v) { memcpy(p, &v, sizeof v); }
#else
#define EK_HAVE_V4F 0
#endif

/* ---- helpers ---- */
static inline bool ek_size_mul(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a)
        return false;
    *out = a * b;
    return true;
}

static inline bool ek_size_add(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a)
        return false;
    *out = a + b;
    return true;
}

/* Non-negative int64 products and sums without overflow. */
static inline bool ek_i64_mul(int64_t a, int64_t b, int64_t *out) {
    if (a < 0 || b < 0 || (a != 0 && b > INT64_MAX / a))
        return false;
    *out = a * b;
    return true;
}

static inline bool ek_i64_add(int64_t a, int64_t b, int64_t *out) {
    if (a < 0 || b < 0 || b > INT64_MAX - a)
        return false;
    *out = a + b;
    return true;
}

static inline size_t ek_round_up(size_t v, size_t to) { return (v + to - 1) / to * to; }

/* `desc` as float32 of `rank` (rank < 0: any rank >= -rank; EK_RANK_ANY: any rank), with dims whose
 * product is its element count. NULL descriptors and absent operands are errors. */
#define EK_RANK_ANY INT_MIN
ek_status_t ek_check_float_tensor(const struct ek_op *op, const struct ek_tensor_desc *desc, const char *what,
                                  int rank);
/* The same for a tensor of `dtype`. */
ek_status_t ek_check_tensor(const struct ek_op *op, const struct ek_tensor_desc *desc, const char *what, int rank,
                            ek_dtype_t dtype);
/* The data-movement ops (MAX_POOL, TRANSPOSE, RESHAPE, CONCAT, SLICE, nearest RESIZE) take float32 or,
 * since .ekm 1.5, int8 operands, all of one dtype: the dtype of input 0 when it is one of those (else
 * float32, which the checks then refuse naming both). */
static inline ek_dtype_t ek_movement_dtype(const struct ek_op *op) {
    return op->n_in > 0 && op->in && op->in[0] && op->in[0]->dtype == EK_DTYPE_INT8 ? EK_DTYPE_INT8
                                                                                     : EK_DTYPE_FLOAT32;
}
/* The fused activation attributes act_min / act_max (default -inf, +inf; min <= max). */
ek_status_t ek_parse_act(const struct ek_op *op, float *lo, float *hi);
/* The op has n_in in [min_in, max_in] and exactly one output, all present but optional ones. */
ek_status_t ek_check_arity(const struct ek_op *op, int min_in, int max_in);
/* "[1,3,224,224]" into buf (truncated to size), for messages. */
const char *ek_shape_str(const struct ek_tensor_desc *t, char *buf, size_t size);

#endif /* EDGEKIT_PORTABLE_HELPERS_H */
