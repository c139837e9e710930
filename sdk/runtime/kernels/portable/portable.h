/* The portable C kernels, one ek_kernel per op type (kernel.h); registry.c maps types to them. */
#ifndef EDGEKIT_PORTABLE_H
#define EDGEKIT_PORTABLE_H

#include "kernel.h"

/* conv.c */
extern const struct ek_kernel ek_kernel_conv;
extern const struct ek_kernel ek_kernel_conv_transpose;
/* matmul.c */
extern const struct ek_kernel ek_kernel_fully_connected;
extern const struct ek_kernel ek_kernel_matmul;
/* pool.c */
extern const struct ek_kernel ek_kernel_max_pool;
extern const struct ek_kernel ek_kernel_average_pool;
extern const struct ek_kernel ek_kernel_global_average_pool;
/* resize.c */
extern const struct ek_kernel ek_kernel_resize;
/* elementwise.c */
extern const struct ek_kernel ek_kernel_add;
extern const struct ek_kernel ek_kernel_sub;
extern const struct ek_kernel ek_kernel_mul;
extern const struct ek_kernel ek_kernel_div;
extern const struct ek_kernel ek_kernel_relu;
extern const struct ek_kernel ek_kernel_clip;
extern const struct ek_kernel ek_kernel_leaky_relu;
extern const struct ek_kernel ek_kernel_prelu;
extern const struct ek_kernel ek_kernel_sigmoid;
extern const struct ek_kernel ek_kernel_hard_sigmoid;
extern const struct ek_kernel ek_kernel_hard_swish;
extern const struct ek_kernel ek_kernel_tanh;
/* shape.c */
extern const struct ek_kernel ek_kernel_transpose;
extern const struct ek_kernel ek_kernel_concat;
extern const struct ek_kernel ek_kernel_pad;
extern const struct ek_kernel ek_kernel_slice;
extern const struct ek_kernel ek_kernel_reshape;
/* softmax.c */
extern const struct ek_kernel ek_kernel_softmax;
/* reduce.c */
extern const struct ek_kernel ek_kernel_reduce_mean;
/* quantized.c, qconv.c, pool.c: the quantized ops of .ekm 1.5 */
extern const struct ek_kernel ek_kernel_quantize;
extern const struct ek_kernel ek_kernel_dequantize;
extern const struct ek_kernel ek_kernel_qconv;
extern const struct ek_kernel ek_kernel_qfully_connected;
extern const struct ek_kernel ek_kernel_qadd;
extern const struct ek_kernel ek_kernel_qmul;
extern const struct ek_kernel ek_kernel_qaverage_pool;
extern const struct ek_kernel ek_kernel_qglobal_average_pool;
extern const struct ek_kernel ek_kernel_qlut;
/* select.c */
extern const struct ek_kernel ek_kernel_top_k;
extern const struct ek_kernel ek_kernel_non_max_suppression;

#endif /* EDGEKIT_PORTABLE_H */
