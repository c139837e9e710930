/* The portable kernel of each op type (kernel.h's ek_portable_kernel). */
#include <stddef.h>

#include "portable.h"

static const struct ek_kernel *const kernels[EK_OP_TYPE_MAX + 1] = {
    [EK_OP_CONV] = &ek_kernel_conv,
    [EK_OP_CONV_TRANSPOSE] = &ek_kernel_conv_transpose,
    [EK_OP_FULLY_CONNECTED] = &ek_kernel_fully_connected,
    [EK_OP_MATMUL] = &ek_kernel_matmul,
    [EK_OP_ADD] = &ek_kernel_add,
    [EK_OP_SUB] = &ek_kernel_sub,
    [EK_OP_MUL] = &ek_kernel_mul,
    [EK_OP_DIV] = &ek_kernel_div,
    [EK_OP_RELU] = &ek_kernel_relu,
    [EK_OP_CLIP] = &ek_kernel_clip,
    [EK_OP_LEAKY_RELU] = &ek_kernel_leaky_relu,
    [EK_OP_PRELU] = &ek_kernel_prelu,
    [EK_OP_SIGMOID] = &ek_kernel_sigmoid,
    [EK_OP_HARD_SIGMOID] = &ek_kernel_hard_sigmoid,
    [EK_OP_HARD_SWISH] = &ek_kernel_hard_swish,
    [EK_OP_TANH] = &ek_kernel_tanh,
    [EK_OP_MAX_POOL] = &ek_kernel_max_pool,
    [EK_OP_AVERAGE_POOL] = &ek_kernel_average_pool,
    [EK_OP_GLOBAL_AVERAGE_POOL] = &ek_kernel_global_average_pool,
    [EK_OP_TRANSPOSE] = &ek_kernel_transpose,
    [EK_OP_CONCAT] = &ek_kernel_concat,
    [EK_OP_SOFTMAX] = &ek_kernel_softmax,
    [EK_OP_RESIZE] = &ek_kernel_resize,
    [EK_OP_PAD] = &ek_kernel_pad,
    [EK_OP_SLICE] = &ek_kernel_slice,
    [EK_OP_REDUCE_MEAN] = &ek_kernel_reduce_mean,
    [EK_OP_RESHAPE] = &ek_kernel_reshape,
    [EK_OP_PLUGIN] = &ek_kernel_plugin,
    [EK_OP_TOP_K] = &ek_kernel_top_k,
    [EK_OP_NON_MAX_SUPPRESSION] = &ek_kernel_non_max_suppression,
    [EK_OP_QUANTIZE] = &ek_kernel_quantize,
    [EK_OP_DEQUANTIZE] = &ek_kernel_dequantize,
    [EK_OP_QCONV] = &ek_kernel_qconv,
    [EK_OP_QFULLY_CONNECTED] = &ek_kernel_qfully_connected,
    [EK_OP_QADD] = &ek_kernel_qadd,
    [EK_OP_QMUL] = &ek_kernel_qmul,
    [EK_OP_QAVERAGE_POOL] = &ek_kernel_qaverage_pool,
    [EK_OP_QGLOBAL_AVERAGE_POOL] = &ek_kernel_qglobal_average_pool,
    [EK_OP_QLUT] = &ek_kernel_qlut,
};

const struct ek_kernel *ek_portable_kernel(int type) {
    if (type < 1 || type > EK_OP_TYPE_MAX)
        return NULL;
    return kernels[type];
}
