/* Element types: sizes, names, and the bytes of a shape. The bottom of the runtime: everything may use
 * it, it uses nothing. */
#include "internal.h"

size_t ek_dtype_size(ek_dtype_t dtype) {
    switch (dtype) {
    case EK_DTYPE_FLOAT32: return 4;
    case EK_DTYPE_FLOAT16: return 2;
    case EK_DTYPE_INT8: return 1;
    case EK_DTYPE_UINT8: return 1;
    case EK_DTYPE_INT32: return 4;
    case EK_DTYPE_INT64: return 8;
    }
    return 0;
}

size_t ek_shape_bytes(ek_dtype_t dtype, const ek_shape_t *shape) {
    size_t n = ek_dtype_size(dtype);
    for (int d = 0; d < shape->num_dims; d++)
        n *= (size_t)shape->dims[d];
    return n;
}

const char *ek_dtype_name(ek_dtype_t dtype) {
    switch (dtype) {
    case EK_DTYPE_FLOAT32: return "float32";
    case EK_DTYPE_FLOAT16: return "float16";
    case EK_DTYPE_INT8: return "int8";
    case EK_DTYPE_UINT8: return "uint8";
    case EK_DTYPE_INT32: return "int32";
    case EK_DTYPE_INT64: return "int64";
    }
    return "unknown";
}
