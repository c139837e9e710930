/* What the quantized kernels (quantized.c, qconv.c) share: the quantization attributes of .ekm 1.5
 * (docs/model-format.md, "Quantized ops") read and checked, and the requantization rounding. Not
 * installed. */
#ifndef EDGEKIT_PORTABLE_QUANT_H
#define EDGEKIT_PORTABLE_QUANT_H

#include <math.h>
#include <stdint.h>

#include "kernel.h"

/* A `*_scale` attribute (default 1): finite and > 0, else EK_ERR_MODEL_INVALID naming it. */
ek_status_t ek_q_scale(const struct ek_op *op, const char *name, float *out);
/* A `*_zero_point` attribute (default 0) within `dtype` (int8: -128..127, uint8: 0..255). */
ek_status_t ek_q_zero_point(const struct ek_op *op, const char *name, ek_dtype_t dtype, int32_t *out);
/* q_min, q_max (defaults -128, 127): -128 <= q_min <= q_max <= 127. */
ek_status_t ek_q_range(const struct ek_op *op, int32_t *lo, int32_t *hi);
/* A multiplier (a float32 product / quotient of scales) that must be finite and > 0 (not under- or
 * overflowed to 0 or infinity), so requantization never meets a NaN. */
ek_status_t ek_q_check_multiplier(const struct ek_op *op, const char *what, float m);

/* sat(rint(v) + zp) clamped to [lo, hi]: rint in the default rounding mode (to nearest, ties to even);
 * a NaN counts as 0 (QUANTIZE's rule; the other ops never produce one). v is clamped to +-2^20 first,
 * which changes no result (lo, hi and zp are within -128..255) and keeps the conversion defined. */
static inline int32_t ek_q_round(float v, int32_t zp, int32_t lo, int32_t hi) {
    if (v != v)
        v = 0.0f;
    v = v < -1048576.0f ? -1048576.0f : v;
    v = v > 1048576.0f ? 1048576.0f : v;
    int32_t q = (int32_t)nearbyintf(v) + zp;
    return q < lo ? lo : q > hi ? hi : q;
}

#endif /* EDGEKIT_PORTABLE_QUANT_H */
