/* Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions on NHWC tensors (winograd.c), the CONV kind
 * CONV_WINOGRAD of conv.c. Not installed.
 *
 * Each 4x4 block of output pixels (a tile) comes from a 6x6 window of the padded input: the window
 * is transformed, V = B^T d B (36 frequencies, vectors of channels), multiplied per frequency by the
 * weights transformed at prepare, U = G g G^T ([C x M] per frequency, packed for ek_gemm), and the
 * 36 products are transformed back, Y = A^T m A, plus bias, plus an optional residual, clamped. */
#ifndef EDGEKIT_PORTABLE_WINOGRAD_H
#define EDGEKIT_PORTABLE_WINOGRAD_H

#include <stddef.h>

#include "kernel.h"

struct ek_wino;

struct ek_wino_shape {
    size_t n, h, w, c, oh, ow, m;
    size_t pt, pl; /* top and left padding; bottom and right follow from oh, ow */
};

/* Transform and pack the weights W[M][3][3][C] (constant) for `shape`, parse nothing else. On success
 * *out owns the packed weights and *scratch_bytes is what each thread of a run needs. Failures name
 * the op (`op` is only used for messages). */
ek_status_t ek_wino_prepare(const struct ek_op *op, const struct ek_wino_shape *shape, const float *weights,
                            float lo, float hi, struct ek_wino **out, size_t *scratch_bytes);
/* Y = clamp(conv(X) + bias + z, lo, hi); bias and z may be NULL (z has Y's layout). */
void ek_wino_run(const struct ek_wino *wp, const float *x, const float *bias, const float *z, float *y,
                 struct ek_exec *exec);
void ek_wino_free(struct ek_wino *wp);
/* "winograd-f4/" and the transforms' instruction set this plan runs ("avx512", "avx2", "neon", "sse2" or
 * "scalar"), for profiles. */
const char *ek_wino_name(const struct ek_wino *wp);

#endif /* EDGEKIT_PORTABLE_WINOGRAD_H */
