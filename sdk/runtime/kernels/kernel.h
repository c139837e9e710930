/* The interface between the engine and the kernels: how an op of a loaded model looks to a kernel,
 * the portable kernel table, and the optional kernel providers (XNNPACK). Not installed.
 *
 * Lifecycle, as XNNPACK's create / setup / run: the loader builds each ek_op from the model file and
 * calls its kernel's prepare() once, which validates the attributes and the shapes (a model that
 * fails is EK_ERR_MODEL_INVALID) and parses the attributes into op->params. run() then executes the
 * op on buffers as often as launches ask, from several threads at once: it must not write to the op.
 * The op semantics are in docs/model-format.md ("Ops"). */
#ifndef EDGEKIT_KERNEL_H
#define EDGEKIT_KERNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "edgekit/runtime.h"

enum ek_op_type {
    EK_OP_CONV = 1,
    EK_OP_CONV_TRANSPOSE = 2,
    EK_OP_FULLY_CONNECTED = 3,
    EK_OP_MATMUL = 4,
    EK_OP_ADD = 5,
    EK_OP_SUB = 6,
    EK_OP_MUL = 7,
    EK_OP_DIV = 8,
    EK_OP_RELU = 9,
    EK_OP_CLIP = 10,
    EK_OP_LEAKY_RELU = 11,
    EK_OP_PRELU = 12,
    EK_OP_SIGMOID = 13,
    EK_OP_HARD_SIGMOID = 14,
    EK_OP_HARD_SWISH = 15,
    EK_OP_TANH = 16,
    EK_OP_MAX_POOL = 17,
    EK_OP_AVERAGE_POOL = 18,
    EK_OP_GLOBAL_AVERAGE_POOL = 19,
    EK_OP_TRANSPOSE = 20,
    EK_OP_CONCAT = 21,
    EK_OP_SOFTMAX = 22,
    EK_OP_RESIZE = 23,
    EK_OP_PAD = 24,
    EK_OP_SLICE = 25,
    EK_OP_REDUCE_MEAN = 26,
    EK_OP_RESHAPE = 27,
    EK_OP_PLUGIN = 28, /* an op of a plugin library (src/plugin.c, include/edgekit/plugin.h) */
    EK_OP_TOP_K = 29,
    EK_OP_NON_MAX_SUPPRESSION = 30,
    /* the quantized ops of .ekm 1.5 (docs/model-format.md, "Quantized ops"; kernels/portable/quantized.c,
     * qconv.c) */
    EK_OP_QUANTIZE = 31,
    EK_OP_DEQUANTIZE = 32,
    EK_OP_QCONV = 33,
    EK_OP_QFULLY_CONNECTED = 34,
    EK_OP_QADD = 35,
    EK_OP_QMUL = 36,
    EK_OP_QAVERAGE_POOL = 37,
    EK_OP_QGLOBAL_AVERAGE_POOL = 38,
    EK_OP_QLUT = 39
};
#define EK_OP_TYPE_MAX 39

enum ek_storage { EK_STORAGE_ARENA = 0, EK_STORAGE_CONSTANT = 1, EK_STORAGE_INPUT = 2, EK_STORAGE_OUTPUT = 3 };

/* A tensor of a stage, validated by the loader: rank <= EK_MAX_DIMS, dims >= 1, count and nbytes
 * consistent and without overflow. */
struct ek_tensor_desc {
    const char *name;
    ek_dtype_t dtype;
    int rank;
    int64_t dims[EK_MAX_DIMS];
    size_t count;  /* elements (1 for rank 0) */
    size_t nbytes; /* count * ek_dtype_size(dtype) */
    enum ek_storage storage;
    uint32_t io_index;    /* INPUT/OUTPUT: the network input/output */
    size_t offset;        /* ARENA, and a DYNAMIC OUTPUT: in the arena */
    bool dynamic;         /* DYNAMIC: dims are the most its op writes; the op reports what it wrote */
    const void *constant; /* CONSTANT: the data, 64-byte aligned, inside the loaded file */
};

enum ek_attr_type { EK_ATTR_INT = 1, EK_ATTR_FLOAT = 2, EK_ATTR_INTS = 3, EK_ATTR_FLOATS = 4, EK_ATTR_STRING = 5 };

struct ek_attr {
    const char *name;
    enum ek_attr_type type;
    uint32_t count;        /* 1 for INT, FLOAT, STRING */
    int64_t i;             /* INT */
    float f;               /* FLOAT */
    const int64_t *ints;   /* INTS: count of them (8-byte aligned) */
    const float *floats;   /* FLOATS */
    const char *s;         /* STRING */
};

struct ek_op {
    enum ek_op_type type;
    const char *name; /* the ONNX node it came from, for messages */
    int n_in, n_out;
    const struct ek_tensor_desc *const *in;  /* n_in of them; NULL: an absent optional input */
    const struct ek_tensor_desc *const *out; /* n_out of them */
    int n_attrs;
    const struct ek_attr *attrs;
    void *params;                /* set by prepare(), freed by release() */
    size_t scratch_per_thread;   /* set by prepare(): bytes of scratch each thread of a run may use */
};

/* ---- attribute helpers (kernels/attrs.c). On a wrong type or count they fail with
 * EK_ERR_MODEL_INVALID naming the op and the attribute. Absent attributes take the default. ---- */
const struct ek_attr *ek_attr_find(const struct ek_op *op, const char *name);
ek_status_t ek_attr_int(const struct ek_op *op, const char *name, int64_t def, int64_t *out);
ek_status_t ek_attr_float(const struct ek_op *op, const char *name, float def, float *out);
/* Exactly `count` ints; absent: `def` (count of them) when def is not NULL, else an error. */
ek_status_t ek_attr_ints(const struct ek_op *op, const char *name, uint32_t count, const int64_t *def,
                         int64_t *out);
/* Fail with EK_ERR_MODEL_INVALID: "op 'NAME' (TYPE): <message>". */
ek_status_t ek_op_invalid(const struct ek_op *op, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* "CONV", ...; "UNKNOWN" for other values. */
const char *ek_op_type_name(int type);

/* ---- execution: the team of threads one run of a stage uses (engine) ---- */
struct ek_exec;
/* Call fn(arg, begin, end, thread) over [0, count) split into contiguous ranges (a few per thread,
 * taken by the team's threads as they come, so a thread may get several, one after the other);
 * `thread` is 0 .. ek_exec_threads(exec)-1 and unique among concurrent calls, so it indexes
 * per-thread scratch. Returns when every range is done. */
typedef void (*ek_range_fn)(void *arg, size_t begin, size_t end, int thread);
void ek_parallel_for(struct ek_exec *exec, size_t count, ek_range_fn fn, void *arg);
int ek_exec_threads(const struct ek_exec *exec);
/* The op's scratch of thread `thread` (op->scratch_per_thread bytes, 64-byte aligned). */
void *ek_exec_scratch(struct ek_exec *exec, int thread);
/* For a DYNAMIC output `t` of the running op: the dims it wrote (t->rank of them, each 0 .. the
 * recorded dim; its data is C-order in the first elements of its buffer). Until called, a DYNAMIC
 * tensor has its recorded (largest) dims. EK_ERR_INVALID_ARG for a tensor that is not DYNAMIC or dims
 * past the recorded ones. */
ek_status_t ek_exec_set_dims(struct ek_exec *exec, const struct ek_tensor_desc *t, const int64_t *dims);

/* ---- portable kernels (kernels/portable) ---- */
struct ek_kernel {
    enum ek_op_type type;
    int min_inputs, max_inputs; /* the loader checks counts before prepare */
    int outputs;
    ek_status_t (*prepare)(struct ek_op *op);
    ek_status_t (*run)(const struct ek_op *op, const void *const *in, void *const *out, struct ek_exec *exec);
    void (*release)(struct ek_op *op); /* may be NULL */
};
/* PLUGIN ops: prepared by the loader against the runtime's plugins (src/plugin.c), run through it. */
extern const struct ek_kernel ek_kernel_plugin;
/* The op asks for a portable algorithm that beats the providers' (a CONV with algorithm "winograd"):
 * under EK_KERNELS_AUTO the engine gives it to the portable kernel, not to a provider. */
bool ek_op_prefers_portable(const struct ek_op *op);
/* The algorithm the portable kernel chose at prepare for a prepared op, for profiles:
 * "winograd-f4/<isa>", "gemm", "depthwise" for CONV, "gemm" for CONV_TRANSPOSE, "qgemm/<isa>" or
 * "depthwise" for QCONV and QFULLY_CONNECTED, "" for other ops. */
const char *ek_op_algorithm(const struct ek_op *op);
/* The portable kernel of an op type; NULL for an unknown type. */
const struct ek_kernel *ek_portable_kernel(int type);

/* ---- kernel providers: a shared library the runtime dlopens (libedgekit_xnnpack.so) ---- */
#define EK_PROVIDER_ABI 3

/* The launch's team as a provider sees it (a provider does not link libedgekit): its own parallel
 * loops run on the team's threads through parallel_for(exec, ...), like the portable kernels'. */
struct ek_parallel {
    int threads; /* the team's size */
    void (*parallel_for)(struct ek_exec *exec, size_t count, ek_range_fn fn, void *arg);
    struct ek_exec *exec;
};

struct ek_provider {
    int abi; /* EK_PROVIDER_ABI */
    const char *name;
    /* The provider's state for one prepared op (called per execution context, so states are never
     * shared between concurrent runs). EK_ERR_UNSUPPORTED: the portable kernel runs this op. */
    ek_status_t (*create)(const struct ek_op *op, void **state);
    /* Run on these buffers, on `team`. */
    ek_status_t (*run)(void *state, const void *const *in, void *const *out, const struct ek_parallel *team);
    void (*destroy)(void *state);
    /* Called once, when the library is loaded: EK_OK when the provider can run ops on this machine, else
     * a status and, in `why`, what failed and the likely cause (e.g. XNNPACK's xnn_initialize). A
     * provider that fails here is not used: EK_KERNELS_XNNPACK fails with `why`, AUTO runs portable. */
    ek_status_t (*init)(char *why, size_t why_size);
};
/* What the provider library exports, under this name. */
typedef const struct ek_provider *(*ek_provider_entry_fn)(void);
#define EK_PROVIDER_ENTRY "ek_kernel_provider"

#endif /* EDGEKIT_KERNEL_H */
