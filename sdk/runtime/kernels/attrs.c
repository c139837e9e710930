/* Op attributes as kernels read them, and the one error format for a malformed op. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "kernel.h"

static const char *const op_names[EK_OP_TYPE_MAX + 1] = {
    [EK_OP_CONV] = "CONV",
    [EK_OP_CONV_TRANSPOSE] = "CONV_TRANSPOSE",
    [EK_OP_FULLY_CONNECTED] = "FULLY_CONNECTED",
    [EK_OP_MATMUL] = "MATMUL",
    [EK_OP_ADD] = "ADD",
    [EK_OP_SUB] = "SUB",
    [EK_OP_MUL] = "MUL",
    [EK_OP_DIV] = "DIV",
    [EK_OP_RELU] = "RELU",
    [EK_OP_CLIP] = "CLIP",
    [EK_OP_LEAKY_RELU] = "LEAKY_RELU",
    [EK_OP_PRELU] = "PRELU",
    [EK_OP_SIGMOID] = "SIGMOID",
    [EK_OP_HARD_SIGMOID] = "HARD_SIGMOID",
    [EK_OP_HARD_SWISH] = "HARD_SWISH",
    [EK_OP_TANH] = "TANH",
    [EK_OP_MAX_POOL] = "MAX_POOL",
    [EK_OP_AVERAGE_POOL] = "AVERAGE_POOL",
    [EK_OP_GLOBAL_AVERAGE_POOL] = "GLOBAL_AVERAGE_POOL",
    [EK_OP_TRANSPOSE] = "TRANSPOSE",
    [EK_OP_CONCAT] = "CONCAT",
    [EK_OP_SOFTMAX] = "SOFTMAX",
    [EK_OP_RESIZE] = "RESIZE",
    [EK_OP_PAD] = "PAD",
    [EK_OP_SLICE] = "SLICE",
    [EK_OP_REDUCE_MEAN] = "REDUCE_MEAN",
    [EK_OP_RESHAPE] = "RESHAPE",
    [EK_OP_PLUGIN] = "PLUGIN",
    [EK_OP_TOP_K] = "TOP_K",
    [EK_OP_NON_MAX_SUPPRESSION] = "NON_MAX_SUPPRESSION",
    [EK_OP_QUANTIZE] = "QUANTIZE",
    [EK_OP_DEQUANTIZE] = "DEQUANTIZE",
    [EK_OP_QCONV] = "QCONV",
    [EK_OP_QFULLY_CONNECTED] = "QFULLY_CONNECTED",
    [EK_OP_QADD] = "QADD",
    [EK_OP_QMUL] = "QMUL",
    [EK_OP_QAVERAGE_POOL] = "QAVERAGE_POOL",
    [EK_OP_QGLOBAL_AVERAGE_POOL] = "QGLOBAL_AVERAGE_POOL",
    [EK_OP_QLUT] = "QLUT",
};

const char *ek_op_type_name(int type) {
    if (type < 1 || type > EK_OP_TYPE_MAX || !op_names[type])
        return "UNKNOWN";
    return op_names[type];
}

ek_status_t ek_op_invalid(const struct ek_op *op, const char *fmt, ...) {
    char detail[384];
    va_list args;
    va_start(args, fmt);
    vsnprintf(detail, sizeof detail, fmt, args);
    va_end(args);
    return ek_fail(EK_ERR_MODEL_INVALID, "op '%.120s' (%s): %s", op->name ? op->name : "",
                   ek_op_type_name((int)op->type), detail);
}

const struct ek_attr *ek_attr_find(const struct ek_op *op, const char *name) {
    for (int i = 0; i < op->n_attrs; i++)
        if (strcmp(op->attrs[i].name, name) == 0)
            return &op->attrs[i];
    return NULL;
}

ek_status_t ek_attr_int(const struct ek_op *op, const char *name, int64_t def, int64_t *out) {
    const struct ek_attr *attr = ek_attr_find(op, name);
    if (!attr) {
        *out = def;
        return EK_OK;
    }
    if (attr->type != EK_ATTR_INT)
        return ek_op_invalid(op, "attribute '%s' must be an INT", name);
    *out = attr->i;
    return EK_OK;
}

ek_status_t ek_attr_float(const struct ek_op *op, const char *name, float def, float *out) {
    const struct ek_attr *attr = ek_attr_find(op, name);
    if (!attr) {
        *out = def;
        return EK_OK;
    }
    if (attr->type != EK_ATTR_FLOAT)
        return ek_op_invalid(op, "attribute '%s' must be a FLOAT", name);
    if (isnan(attr->f))
        return ek_op_invalid(op, "attribute '%s' is NaN", name);
    *out = attr->f;
    return EK_OK;
}

ek_status_t ek_attr_ints(const struct ek_op *op, const char *name, uint32_t count, const int64_t *def,
                         int64_t *out) {
    const struct ek_attr *attr = ek_attr_find(op, name);
    if (!attr) {
        if (!def)
            return ek_op_invalid(op, "attribute '%s' is missing", name);
        memcpy(out, def, count * sizeof *out);
        return EK_OK;
    }
    if (attr->type != EK_ATTR_INTS || attr->count != count)
        return ek_op_invalid(op, "attribute '%s' must be INTS of %u values", name, (unsigned)count);
    memcpy(out, attr->ints, count * sizeof *out);
    return EK_OK;
}
