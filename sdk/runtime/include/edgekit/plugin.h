/* EdgeKit plugin op libraries: the C ABI between libedgekit (and the host compiler) and a shared
 * library that adds ops (docs/plugins.md).
 *
 * A plugin is a shared library that exports two symbols:
 *   - `ek_plugin_abi_version`, a `const uint32_t` equal to EK_PLUGIN_ABI_VERSION when it was built
 *     (EK_PLUGIN_DEFINE_ABI_VERSION defines it), checked before anything of the plugin is called;
 *   - `ek_plugin_register` (ek_plugin_register_fn), called once per load with the host's API table;
 *     it registers each op with api->register_op and returns 0 (non-zero: the load fails).
 *
 * The host is libedgekit (ek_rt_load_plugin: per runtime) or the compiler (edgekit compile --plugin:
 * output shapes at compile time, and the numpy reference interpreter). A plugin does not link
 * libedgekit: everything it needs comes through the API table, whose functions are the only way to
 * read attributes, report errors and use the launch's threads, so the table can grow (new functions
 * at its end, `struct_size` tells which exist) without breaking plugins built against version 1.
 *
 * An op is identified by (domain, op_type), the ONNX node's domain and op type. Its tensors are in
 * the ONNX layout (the compiler keeps plugin ops' operands in ONNX order, NCHW for images), C-order
 * and contiguous. Its functions may run on several threads at once (concurrent launches), so they must
 * not keep per-call state in globals. Header-only: C99 and C++ compatible. */
#ifndef EDGEKIT_PLUGIN_H
#define EDGEKIT_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EK_PLUGIN_ABI_VERSION 1
/* The two symbols a plugin exports. */
#define EK_PLUGIN_ABI_SYMBOL "ek_plugin_abi_version"
#define EK_PLUGIN_ENTRY_SYMBOL "ek_plugin_register"
#define EK_PLUGIN_MAX_DIMS 8

#if defined(__GNUC__)
#define EK_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define EK_PLUGIN_EXPORT
#endif

/* In exactly one source file of the plugin. */
#define EK_PLUGIN_DEFINE_ABI_VERSION \
    EK_PLUGIN_EXPORT const uint32_t ek_plugin_abi_version = EK_PLUGIN_ABI_VERSION

/* dtype codes: the model format's (edgekit/runtime.h ek_dtype_t). Models hold float32 tensors today. */
#define EK_PLUGIN_FLOAT32 1
#define EK_PLUGIN_FLOAT16 2
#define EK_PLUGIN_INT8 3
#define EK_PLUGIN_UINT8 4
#define EK_PLUGIN_INT32 5
#define EK_PLUGIN_INT64 6

/* A tensor as a plugin sees it. In infer(), `data` is NULL; in run(), it is the host address of the
 * tensor's bytes in the device memory (already mapped: read the inputs, write the outputs in full). */
typedef struct ek_plugin_tensor {
    void *data;
    int32_t dtype; /* EK_PLUGIN_FLOAT32, ... */
    int32_t rank;  /* 0 .. EK_PLUGIN_MAX_DIMS; 0 is a scalar */
    int64_t dims[EK_PLUGIN_MAX_DIMS];
} ek_plugin_tensor_t;

/* One call of an op's function (infer or run): the node's attributes, its error message, the
 * launch's threads. Opaque; valid during the call only. */
typedef struct ek_plugin_call ek_plugin_call_t;
/* What ek_plugin_register registers into. Opaque. */
typedef struct ek_plugin_registry ek_plugin_registry_t;
typedef struct ek_plugin_api ek_plugin_api_t;

/* The function of a parallel loop: [begin, end) of the range, `thread` 0 .. threads-1, unique among
 * the concurrent calls of one loop (an index into per-thread scratch). */
typedef void (*ek_plugin_range_fn)(void *arg, size_t begin, size_t end, int thread);

/* infer: from the inputs' dtypes and shapes (data NULL) and the attributes, fill each output's dtype,
 * rank and dims (the host zeroes them first). Return 0, or non-zero after api->set_error, when the
 * node cannot be (wrong count, shape, dtype or attribute). Called by the compiler to record the
 * output shapes and by the runtime at model load, which checks they equal the recorded ones. */
typedef int (*ek_plugin_infer_fn)(const ek_plugin_api_t *api, ek_plugin_call_t *call, int n_in,
                                  const ek_plugin_tensor_t *in, int n_out, ek_plugin_tensor_t *out);
/* run: compute the outputs. out[i] arrives with the recorded dtype and shape, which is also the most
 * room its buffer has. A plugin leaves the shape as it is, except for a dynamic output (bit i of the
 * op's dynamic_outputs): it may set out[i].dims to what it wrote (the same rank, each dim 0 .. the
 * recorded one; the data C-order in the first elements of the buffer). Any other changed shape fails
 * the launch. Return 0, or non-zero after api->set_error: the launch fails with the message, naming the
 * op and the library. */
typedef int (*ek_plugin_run_fn)(const ek_plugin_api_t *api, ek_plugin_call_t *call, int n_in,
                                const ek_plugin_tensor_t *in, int n_out, ek_plugin_tensor_t *out);

/* One op, given to api->register_op (copied: it may live on the stack; the strings must stay valid
 * while the library is loaded, as string literals do). */
typedef struct ek_plugin_op {
    uint32_t struct_size;  /* sizeof(ek_plugin_op_t) */
    const char *domain;    /* the ONNX domain, not "" or "ai.onnx" (e.g. "com.example") */
    const char *op_type;   /* the ONNX op type (e.g. "Swish") */
    int32_t min_inputs, max_inputs;   /* 1 .. 64 */
    int32_t min_outputs, max_outputs; /* 1 .. 16 */
    ek_plugin_infer_fn infer;
    ek_plugin_run_fn run;
    void *user_data; /* given back by api->op_user_data */
    /* Added in ABI version 1 after the fields above (read only when struct_size covers it; a plugin
     * built before sees 0). Bit i: output i's size depends on the data (e.g. the rows that pass a
     * filter); infer gives its bound, run the dims it wrote. Such an output must be a network output
     * that no node reads (the compiler checks); docs/plugins.md "Dynamic outputs". */
    uint32_t dynamic_outputs;
} ek_plugin_op_t;

/* Attribute lookups return 1 when the attribute is present with that type, 0 when it is absent (the
 * output is left alone, so set the default first), and -1 when it has another type. Arrays and
 * strings stay valid during the call. */
struct ek_plugin_api {
    uint32_t abi_version; /* EK_PLUGIN_ABI_VERSION of the host */
    uint32_t struct_size; /* sizeof the host's table: a function past it does not exist */
    /* Registration (inside ek_plugin_register only): 0, or non-zero with the reason set on the
     * registry (a bad descriptor, an op the library registered twice). */
    int (*register_op)(ek_plugin_registry_t *registry, const ek_plugin_op_t *op);
    /* Why ek_plugin_register fails, when it returns non-zero on its own account. */
    void (*registry_error)(ek_plugin_registry_t *registry, const char *message);
    /* The call's error message (copied; a few hundred bytes are kept). */
    void (*set_error)(ek_plugin_call_t *call, const char *message);
    /* The node: its name (the ONNX node's), and the attributes it was compiled with. */
    const char *(*node_name)(ek_plugin_call_t *call);
    int (*attr_int)(ek_plugin_call_t *call, const char *name, int64_t *value);
    int (*attr_float)(ek_plugin_call_t *call, const char *name, float *value);
    int (*attr_ints)(ek_plugin_call_t *call, const char *name, const int64_t **values, size_t *count);
    int (*attr_floats)(ek_plugin_call_t *call, const char *name, const float **values, size_t *count);
    int (*attr_string)(ek_plugin_call_t *call, const char *name, const char **value);
    void *(*op_user_data)(ek_plugin_call_t *call);
    /* run only: the launch's team of threads. parallel_for calls fn over [0, count) split in ranges
     * the team's threads take (the calling thread among them) and returns when all are done; in
     * infer, or on a host without threads, it runs fn(arg, 0, count, 0) on the calling thread. */
    int (*threads)(ek_plugin_call_t *call);
    void (*parallel_for)(ek_plugin_call_t *call, size_t count, ek_plugin_range_fn fn, void *arg);
};

/* The entry point, exported as EK_PLUGIN_ENTRY_SYMBOL. */
typedef int (*ek_plugin_register_fn)(const ek_plugin_api_t *api, ek_plugin_registry_t *registry);

#ifdef __cplusplus
}
#endif
#endif /* EDGEKIT_PLUGIN_H */
