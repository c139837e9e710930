/* Dumps of intermediate results (ek_launch_options_t.dump_dir; docs/profiling.md): during one launch,
 * the network's inputs and every op's output are written as .npy files, converted back to the ONNX
 * layout when the model says how (its OP_SOURCES section), with their statistics in manifest.json.
 *
 * The manifest is written last and an earlier one is removed first, so a directory holds a manifest
 * only for a dump that completed; every file goes through a .tmp and a rename. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "plugin_internal.h"

struct ek_dump {
    char *dir;
    const struct ek_network *net;
    const struct ek_stage *stage;
    int stage_index;
    struct sbuf inputs, ops; /* manifest entries so far */
    size_t n_inputs, n_ops;
    unsigned char *scratch; /* for the layout conversion */
    size_t scratch_count;   /* bytes */
};

void ek_dump_free(struct ek_dump *d) {
    if (!d)
        return;
    free(d->dir);
    ek_sb_free(&d->inputs);
    ek_sb_free(&d->ops);
    free(d->scratch);
    free(d);
}

ek_status_t ek_dump_begin(const char *dir, const struct ek_network *net, const struct ek_stage *stage,
                          struct ek_dump **out) {
    ek_status_t status = ek_make_dir(dir, "dump");
    if (status != EK_OK)
        return status;
    struct ek_dump *d = calloc(1, sizeof *d);
    if (!d || !(d->dir = strdup(dir))) {
        free(d);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a dump");
    }
    d->net = net;
    d->stage = stage;
    d->stage_index = (int)(stage - net->stages);
    char path[4200];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    if (unlink(path) != 0 && errno != ENOENT) {
        int err = errno;
        ek_dump_free(d);
        return ek_fail(EK_ERR_SYSTEM, "cannot remove the earlier dump's '%.300s': %s", path, strerror(err));
    }
    *out = d;
    return EK_OK;
}

/* A file name from a tensor name: [A-Za-z0-9._-] kept, the rest '_', at most 80 characters. */
static void file_name(char *out, size_t size, const char *prefix, unsigned index, const char *name) {
    int n = snprintf(out, size, "%s%04u_", prefix, index);
    size_t at = n > 0 ? (size_t)n : 0, limit = at + 80 < size - 5 ? at + 80 : size - 5;
    for (const char *c = name; *c && at < limit; c++) {
        char ch = *c;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                  ch == '-' || ch == '_';
        out[at++] = ok ? ch : '_';
    }
    memcpy(out + at, ".npy", 5);
}

static const char *npy_descr(ek_dtype_t dtype) {
    switch (dtype) {
    case EK_DTYPE_FLOAT32: return "<f4";
    case EK_DTYPE_FLOAT16: return "<f2";
    case EK_DTYPE_INT8: return "|i1";
    case EK_DTYPE_UINT8: return "|u1";
    case EK_DTYPE_INT32: return "<i4";
    case EK_DTYPE_INT64: return "<i8";
    }
    return "|u1";
}

/* The NumPy .npy 1.0 header of a C-order array (10 + header length a multiple of 64). */
static size_t npy_header(char *out, size_t size, ek_dtype_t dtype, int rank, const int64_t *dims) {
    char shape[200];
    size_t at = 0;
    shape[at++] = '(';
    for (int d = 0; d < rank; d++)
        at += (size_t)snprintf(shape + at, sizeof shape - at, "%" PRId64 "%s", dims[d], rank == 1 || d < rank - 1 ? ", " : "");
    if (rank == 1)
        at -= 1; /* "(5,)" */
    shape[at++] = ')';
    shape[at] = '\0';
    char dict[300];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }", npy_descr(dtype),
                     shape);
    size_t total = (10 + (size_t)n + 1 + 63) / 64 * 64, hlen = total - 10;
    if (total > size)
        return 0;
    memcpy(out, "\x93NUMPY\x01\x00", 8);
    out[8] = (char)(hlen & 0xff);
    out[9] = (char)(hlen >> 8);
    memcpy(out + 10, dict, (size_t)n);
    memset(out + 10 + n, ' ', hlen - (size_t)n - 1);
    out[total - 1] = '\n';
    return total;
}

static ek_status_t write_npy(const char *dir, const char *name, ek_dtype_t dtype, int rank, const int64_t *dims,
                             const void *data, size_t nbytes) {
    char header[512];
    size_t hn = npy_header(header, sizeof header, dtype, rank, dims);
    if (!hn)
        return ek_fail(EK_ERR_INTERNAL, "the .npy header of '%.200s' does not fit", name);
    return ek_write_file2(dir, name, header, hn, data, nbytes);
}

ek_status_t ek_npy_write(const char *dir, const char *name, ek_dtype_t dtype, const ek_shape_t *shape,
                         const void *data, size_t nbytes) {
    if (!dir || !name || !shape || (!data && nbytes))
        return ek_fail(EK_ERR_INVALID_ARG, "ek_npy_write: dir, name, shape and data must not be NULL");
    size_t item = ek_dtype_size(dtype);
    if (!item)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_npy_write: dtype %d has no .npy form", (int)dtype);
    if (shape->num_dims < 0 || shape->num_dims > EK_MAX_DIMS)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_npy_write: %d dims (0 .. %d)", shape->num_dims, EK_MAX_DIMS);
    size_t count = 1;
    for (int i = 0; i < shape->num_dims; i++) {
        if (shape->dims[i] < 0 || (shape->dims[i] && count > SIZE_MAX / item / (size_t)shape->dims[i]))
            return ek_fail(EK_ERR_INVALID_ARG, "ek_npy_write: dim %d of '%.200s' is %" PRId64, i, name,
                           shape->dims[i]);
        count *= (size_t)shape->dims[i];
    }
    if (count * item != nbytes)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_npy_write: '%.200s' is %zu bytes, its shape and dtype take %zu",
                       name, nbytes, count * item);
    return write_npy(dir, name, dtype, shape->num_dims, shape->dims, data, nbytes);
}

static void json_dims(struct sbuf *b, int rank, const int64_t *dims) {
    EK_SB_LIT(b, "[");
    for (int d = 0; d < rank; d++)
        ek_sb_add(b, "%s%" PRId64, d ? ", " : "", dims[d]);
    EK_SB_LIT(b, "]");
}

static void json_number(struct sbuf *b, double v) {
    if (isfinite(v))
        ek_sb_add(b, "%.9g", v);
    else
        EK_SB_LIT(b, "null"); /* JSON has no NaN or infinity */
}

/* Write `data` (a tensor of `desc`), permuted by `perm` (ONNX dim i = engine dim perm[i]) when given,
 * to `name`, and append its manifest fields (shape, statistics) to `b`. */
static ek_status_t write_tensor(struct ek_dump *d, const char *name, const struct ek_tensor_desc *desc,
                                const void *data, const uint8_t *perm, struct sbuf *b) {
    int rank = desc->rank;
    int64_t dims[EK_MAX_DIMS];
    const void *bytes = data;
    const size_t es = ek_dtype_size(desc->dtype);
    if (perm && es) { /* any dtype: float32, and the int8 tensors of quantized models */
        if (d->scratch_count < desc->nbytes) {
            unsigned char *grown = realloc(d->scratch, desc->nbytes ? desc->nbytes : 1);
            if (!grown)
                return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory to convert '%.200s' to the ONNX layout", name);
            d->scratch = grown;
            d->scratch_count = desc->nbytes;
        }
        size_t strides[EK_MAX_DIMS], src_stride[EK_MAX_DIMS], index[EK_MAX_DIMS] = {0};
        size_t s = 1;
        for (int k = rank - 1; k >= 0; k--) {
            strides[k] = s;
            s *= (size_t)desc->dims[k];
        }
        for (int i = 0; i < rank; i++) {
            dims[i] = desc->dims[perm[i]];
            src_stride[i] = strides[perm[i]];
        }
        const unsigned char *src = data;
        size_t off = 0;
        for (size_t e = 0; e < desc->count; e++) {
            memcpy(d->scratch + e * es, src + off * es, es);
            for (int i = rank - 1; i >= 0; i--) { /* odometer over the ONNX shape */
                off += src_stride[i];
                if (++index[i] < (size_t)dims[i])
                    break;
                off -= src_stride[i] * (size_t)dims[i];
                index[i] = 0;
            }
        }
        bytes = d->scratch;
    } else {
        for (int i = 0; i < rank; i++)
            dims[i] = desc->dims[i];
    }
    ek_status_t status = write_npy(d->dir, name, desc->dtype, rank, dims, bytes, desc->nbytes);
    if (status != EK_OK)
        return status;

    EK_SB_LIT(b, ", \"file\": ");
    ek_sb_json_string(b, name);
    ek_sb_add(b, ", \"dtype\": \"%s\", \"shape\": ", ek_dtype_name(desc->dtype));
    json_dims(b, rank, dims);
    EK_SB_LIT(b, ", \"engine_shape\": ");
    json_dims(b, rank, desc->dims);
    if (desc->dtype == EK_DTYPE_FLOAT32) {
        const float *v = bytes;
        double lo = INFINITY, hi = -INFINITY, sum = 0;
        size_t nans = 0, finite = 0;
        for (size_t e = 0; e < desc->count; e++) {
            float x = v[e];
            if (isnan(x)) {
                nans++;
                continue;
            }
            lo = x < lo ? x : lo;
            hi = x > hi ? x : hi;
            sum += x;
            finite++;
        }
        EK_SB_LIT(b, ", \"min\": ");
        json_number(b, finite ? lo : NAN);
        EK_SB_LIT(b, ", \"max\": ");
        json_number(b, finite ? hi : NAN);
        EK_SB_LIT(b, ", \"mean\": ");
        json_number(b, finite ? sum / (double)finite : NAN);
        ek_sb_add(b, ", \"nan_count\": %zu", nans);
    }
    return EK_OK;
}

ek_status_t ek_dump_input(struct ek_dump *d, int index, const void *data) {
    const struct ek_tensor_desc *desc = d->stage->input_tensors[index];
    const char *io = d->net->info.inputs[index].name;
    char name[128];
    file_name(name, sizeof name, "input_", (unsigned)index, io);
    struct sbuf *b = &d->inputs;
    ek_sb_add(b, "%s\n    {\"index\": %d, \"name\": ", d->n_inputs ? "," : "", index);
    ek_sb_json_string(b, io);
    ek_status_t status = write_tensor(d, name, desc, data, NULL, b);
    EK_SB_LIT(b, "}");
    d->n_inputs++;
    return status;
}

ek_status_t ek_dump_op(struct ek_dump *d, uint32_t k, const void *data, const int64_t *dims) {
    const struct ek_op *op = &d->stage->ops[k];
    const struct ek_op_source *src = d->stage->sources ? &d->stage->sources[k] : NULL;
    const char *tensor = src && src->tensor[0] ? src->tensor : op->out[0]->name;
    char name[128];
    file_name(name, sizeof name, "", k, tensor);
    struct sbuf *b = &d->ops;
    ek_sb_add(b, "%s\n    {\"index\": %u, \"op\": \"%s\", \"name\": ", d->n_ops ? "," : "", (unsigned)k,
              ek_op_display_type(op));
    ek_sb_json_string(b, op->name);
    EK_SB_LIT(b, ", \"nodes\": [");
    if (src) {
        for (uint32_t i = 0; i < src->node_count; i++) {
            if (i)
                EK_SB_LIT(b, ", ");
            ek_sb_json_string(b, src->nodes[i]);
        }
    } else {
        ek_sb_json_string(b, op->name);
    }
    EK_SB_LIT(b, "], \"tensor\": ");
    ek_sb_json_string(b, src ? src->tensor : op->out[0]->name);
    ek_sb_add(b, ", \"layout\": \"%s\"", src ? "onnx" : "engine");
    /* a DYNAMIC output: what the op produced, not its bound */
    struct ek_tensor_desc produced = *op->out[0];
    if (dims) {
        produced.count = 1;
        for (int i = 0; i < produced.rank; i++) {
            produced.dims[i] = dims[i];
            produced.count *= (size_t)dims[i]; /* each within the recorded bound: no overflow */
        }
        produced.nbytes = produced.count * ek_dtype_size(produced.dtype);
    }
    ek_status_t status = write_tensor(d, name, &produced, data, src && src->permuted ? src->perm : NULL, b);
    EK_SB_LIT(b, "}");
    d->n_ops++;
    return status;
}

ek_status_t ek_dump_finish(struct ek_dump *d) {
    struct sbuf m = {0};
    bool mapped = d->stage->sources != NULL;
    ek_sb_add(&m, "{\n  \"format\": \"edgekit-dump\",\n  \"version\": 1,\n  \"producer\": \"EdgeKit %s\",\n  \"network\": ",
              ek_version());
    ek_sb_json_string(&m, d->net->info.name);
    ek_sb_add(&m, ",\n  \"stage\": %d,\n  \"source_map\": %s,\n  \"layout\": \"%s\",\n  \"note\": ", d->stage_index,
              mapped ? "true" : "false", mapped ? "onnx" : "engine");
    ek_sb_json_string(&m, mapped ? "shapes are in the ONNX layout; 'tensor' is the ONNX tensor each op's output holds "
                                   "(\"\" when none: an intermediate of a multi-op lowering)"
                                 : "the model has no op-to-ONNX map (it was compiled before .ekm 1.1): names are the "
                                   "EdgeKit op and tensor names and shapes are in the engine's layout (NHWC for "
                                   "spatial ops); compile it again for ONNX names and layouts");
    EK_SB_LIT(&m, ",\n  \"inputs\": [");
    ek_sb_put(&m, d->inputs.p ? d->inputs.p : "", d->inputs.len);
    EK_SB_LIT(&m, "\n  ],\n  \"ops\": [");
    ek_sb_put(&m, d->ops.p ? d->ops.p : "", d->ops.len);
    EK_SB_LIT(&m, "\n  ]\n}\n");
    ek_status_t status = EK_OK;
    if (m.failed || d->inputs.failed || d->ops.failed)
        status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for the dump's manifest");
    else
        status = ek_write_file(d->dir, "manifest.json", m.p, m.len);
    ek_sb_free(&m);
    ek_dump_free(d);
    return status;
}
