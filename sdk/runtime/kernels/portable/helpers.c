/* Checks and small utilities the portable kernels share (declared in helpers.h). */
#include <math.h>
#include <stdio.h>

#include "helpers.h"
#include "internal.h"

ek_status_t ek_check_arity(const struct ek_op *op, int min_in, int max_in) {
    if (op->n_in < min_in || op->n_in > max_in || !op->in)
        return ek_op_invalid(op, "takes %d to %d inputs, has %d", min_in, max_in, op->n_in);
    if (op->n_out != 1 || !op->out || !op->out[0])
        return ek_op_invalid(op, "takes 1 output, has %d", op->n_out);
    for (int i = 0; i < min_in; i++)
        if (!op->in[i])
            return ek_op_invalid(op, "input %d is required", i);
    return EK_OK;
}

ek_status_t ek_check_float_tensor(const struct ek_op *op, const struct ek_tensor_desc *desc, const char *what,
                                  int rank) {
    return ek_check_tensor(op, desc, what, rank, EK_DTYPE_FLOAT32);
}

ek_status_t ek_check_tensor(const struct ek_op *op, const struct ek_tensor_desc *desc, const char *what, int rank,
                            ek_dtype_t dtype) {
    if (!desc)
        return ek_op_invalid(op, "%s is missing", what);
    if (desc->dtype != dtype)
        return ek_op_invalid(op, "%s must be %s, is %s", what, ek_dtype_name(dtype), ek_dtype_name(desc->dtype));
    if (desc->rank < 0 || desc->rank > EK_MAX_DIMS ||
        (rank != EK_RANK_ANY && ((rank >= 0 && desc->rank != rank) || (rank < 0 && desc->rank < -rank))))
        return ek_op_invalid(op, "%s has rank %d, expected %s%d", what, desc->rank, rank < 0 ? ">= " : "",
                             rank < 0 ? -rank : rank);
    size_t count = 1;
    for (int i = 0; i < desc->rank; i++) {
        if (desc->dims[i] < 1 || (uint64_t)desc->dims[i] > SIZE_MAX ||
            !ek_size_mul(count, (size_t)desc->dims[i], &count))
            return ek_op_invalid(op, "%s has a bad dimension %d (%lld)", what, i, (long long)desc->dims[i]);
    }
    size_t nbytes;
    if (count != desc->count || !ek_size_mul(count, ek_dtype_size(dtype), &nbytes) || nbytes != desc->nbytes)
        return ek_op_invalid(op, "%s has %zu elements (%zu bytes) but its dims give %zu elements", what,
                             desc->count, desc->nbytes, count);
    return EK_OK;
}

const char *ek_shape_str(const struct ek_tensor_desc *t, char *buf, size_t size) {
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < t->rank && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, i ? ",%lld" : "%lld", (long long)t->dims[i]);
    if (used < size)
        snprintf(buf + used, size - used, "]");
    return buf;
}

ek_status_t ek_parse_act(const struct ek_op *op, float *lo, float *hi) {
    ek_status_t st = ek_attr_float(op, "act_min", -INFINITY, lo);
    if (st == EK_OK)
        st = ek_attr_float(op, "act_max", INFINITY, hi);
    if (st == EK_OK && *lo > *hi)
        return ek_op_invalid(op, "act_min %g is greater than act_max %g", (double)*lo, (double)*hi);
    return st;
}

int ek_broadcast_walk(const struct ek_tensor_desc *x, const struct ek_tensor_desc *b, const int64_t *want,
                      int rank, size_t *dims, size_t *sx, size_t *sb) {
    /* each input's stride along the output dims (right-aligned), innermost first, dims of 1 dropped */
    size_t stride_x = 1, stride_b = 1;
    size_t d[EK_MAX_DIMS], ix[EK_MAX_DIMS], ib[EK_MAX_DIMS];
    int n = 0;
    for (int i = 0; i < rank; i++) {
        size_t dy = (size_t)want[rank - 1 - i];
        size_t dx = i < x->rank ? (size_t)x->dims[x->rank - 1 - i] : 1;
        size_t db = i < b->rank ? (size_t)b->dims[b->rank - 1 - i] : 1;
        if (dy != 1) {
            d[n] = dy;
            ix[n] = dx == 1 ? 0 : stride_x;
            ib[n] = db == 1 ? 0 : stride_b;
            n++;
        }
        stride_x *= dx;
        stride_b *= db;
    }
    int m = 0; /* outermost first; an outer dim merges into the inner one where both inputs continue */
    for (int k = n - 1; k >= 0; k--) {
        if (m > 0 && sx[m - 1] == ix[k] * d[k] && sb[m - 1] == ib[k] * d[k]) {
            dims[m - 1] *= d[k];
            sx[m - 1] = ix[k];
            sb[m - 1] = ib[k];
        } else {
            dims[m] = d[k];
            sx[m] = ix[k];
            sb[m] = ib[k];
            m++;
        }
    }
    if (m == 0) { /* every dim is 1: one element */
        dims[0] = 1;
        sx[0] = sb[0] = 0;
        m = 1;
    }
    return m;
}
