/* EdgeKit runtime: models and inference (bmruntime-style). A runtime is bound to one device; it
 * loads .ekm models (docs/model-format.md) and launches their networks on the device's worker. */
#ifndef EDGEKIT_RUNTIME_H
#define EDGEKIT_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "edgekit/device.h"
#include "edgekit/memory.h"
#include "edgekit/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Element types; the codes are the model format's. */
typedef enum ek_dtype {
    EK_DTYPE_FLOAT32 = 1,
    EK_DTYPE_FLOAT16 = 2,
    EK_DTYPE_INT8 = 3,
    EK_DTYPE_UINT8 = 4,
    EK_DTYPE_INT32 = 5,
    EK_DTYPE_INT64 = 6
} ek_dtype_t;

/* The size of one element in bytes; 0 for an unknown dtype. */
EK_API size_t ek_dtype_size(ek_dtype_t dtype);
/* "float32", ...; "unknown" for other values. */
EK_API const char *ek_dtype_name(ek_dtype_t dtype);

#define EK_MAX_DIMS 8

typedef struct ek_shape {
    int num_dims; /* 0 .. EK_MAX_DIMS; 0 is a scalar */
    int64_t dims[EK_MAX_DIMS];
} ek_shape_t;

/* A tensor in device memory: `shape` elements of `dtype` at byte `offset` of `mem`. */
typedef struct ek_tensor {
    ek_mem_t mem;
    size_t offset;
    ek_dtype_t dtype;
    ek_shape_t shape;
} ek_tensor_t;

/* A runtime; checked on every call like the other handles. */
typedef struct ek_rt {
    uint64_t id;
} ek_rt_t;

/* Which kernels run the ops. */
typedef enum ek_kernels {
    EK_KERNELS_DEFAULT = 0,  /* EDGEKIT_KERNELS (portable | xnnpack | auto) from the environment, else auto */
    EK_KERNELS_AUTO = 1,     /* XNNPACK for the ops it has when the provider loads, portable C for the rest */
    EK_KERNELS_PORTABLE = 2, /* the portable C kernels only */
    EK_KERNELS_XNNPACK = 3   /* like AUTO, but a missing XNNPACK provider is an error (EK_ERR_UNSUPPORTED) */
} ek_kernels_t;

typedef struct ek_rt_config {
    ek_kernels_t kernels;
    /* Threads a launch uses by default. 0: EDGEKIT_THREADS, else the CPUs this process may use (its
     * affinity mask, and the cgroup CPU quota where one is set), at most 8. A launch never runs more
     * threads than the CPUs it may run on (the affinity, within its cpu_mask): extra ones only wait. */
    int threads;
} ek_rt_config_t;

/* Create a runtime on the device `dev` is a handle of. The runtime holds the device open (its own
 * handle) until ek_rt_destroy, so `dev` may be closed first. */
EK_API ek_status_t ek_rt_create(ek_rt_t *rt, ek_dev_t dev);
EK_API ek_status_t ek_rt_create_ex(ek_rt_t *rt, ek_dev_t dev, const ek_rt_config_t *config);
/* Wait for the runtime's launches, then free its models and execution memory. */
EK_API ek_status_t ek_rt_destroy(ek_rt_t rt);
/* The kernels this runtime uses: "portable" or "xnnpack" (with portable for the ops XNNPACK lacks). */
EK_API ek_status_t ek_rt_kernels(ek_rt_t rt, const char **name);
/* The threads a launch of this runtime uses by default (see ek_rt_config_t.threads). */
EK_API ek_status_t ek_rt_threads(ek_rt_t rt, int *threads);

/* Load every network of a model file (mapped, constants used in place) or of a buffer (copied).
 * A network whose name is already loaded in this runtime is EK_ERR_BUSY. */
EK_API ek_status_t ek_rt_load_model(ek_rt_t rt, const char *path);
EK_API ek_status_t ek_rt_load_model_data(ek_rt_t rt, const void *data, size_t size);

/* Networks, in load order. Names and infos stay valid until ek_rt_destroy. */
EK_API ek_status_t ek_rt_network_count(ek_rt_t rt, int *count);
EK_API ek_status_t ek_rt_network_name(ek_rt_t rt, int index, const char **name);

typedef struct ek_io_info {
    const char *name;
    ek_dtype_t dtype;
    float scale;
    int32_t zero_point;
    size_t max_bytes; /* over all stages */
} ek_io_info_t;

typedef struct ek_stage_info {
    const ek_shape_t *input_shapes;  /* input_count of them */
    const ek_shape_t *output_shapes; /* output_count of them */
} ek_stage_info_t;

typedef struct ek_net_info {
    const char *name;
    int input_count;
    const ek_io_info_t *inputs;
    int output_count;
    const ek_io_info_t *outputs;
    int stage_count;
    const ek_stage_info_t *stages;
} ek_net_info_t;

/* EK_ERR_INVALID_ARG naming the loaded networks when `name` is not one of them. */
EK_API ek_status_t ek_rt_network_info(ek_rt_t rt, const char *name, const ek_net_info_t **info);

/* A launch in flight; ek_launch_wait ends it. The zero handle is invalid. */
typedef struct ek_launch {
    uint64_t id;
} ek_launch_t;

typedef struct ek_launch_options {
    int threads;       /* 0: the runtime's default */
    uint64_t cpu_mask; /* CPUs (bit i = CPU i) the launch's threads may run on; 0: any */
    /* Called once on a worker thread when the launch has finished, with its status; may be NULL. */
    void (*on_done)(void *user_data, ek_status_t status);
    void *user_data;
} ek_launch_options_t;

/* Queue network `net_name` on the device's worker and return at once. The stage is the one whose
 * input shapes equal the inputs' shapes. Inputs are read from device memory and outputs written to
 * it, as device accesses (strict coherence: flush inputs written through a mapping first, and
 * invalidate outputs before reading them through one). With `user_mem` the caller's
 * outputs[i].mem/offset receive the outputs; without, the runtime allocates each output on the
 * device, and the caller frees it with ek_free_device. The call fills outputs[i] dtype and shape.
 * `launch` may be NULL: the launch is then waited for only by ek_dev_sync, which reports its error.
 * Inputs and outputs must stay allocated until the launch ends. `options` may be NULL. */
EK_API ek_status_t ek_rt_launch_tensor(ek_rt_t rt, const char *net_name, const ek_tensor_t *inputs,
                                       int input_count, ek_tensor_t *outputs, int output_count, bool user_mem,
                                       const ek_launch_options_t *options, ek_launch_t *launch);

/* Wait up to `timeout_ms` (< 0: forever) for a launch. EK_ERR_TIMEOUT if it is still running (the
 * handle stays valid); otherwise the handle is retired and the launch's own status is returned,
 * with its message in ek_last_error(). */
EK_API ek_status_t ek_launch_wait(ek_launch_t launch, int timeout_ms);

/* Run `net_name` synchronously on host buffers: inputs[i] holds input i with input_shapes[i];
 * outputs[i] has room for output_capacity[i] bytes; output_shapes[i] receives its shape. */
EK_API ek_status_t ek_rt_launch_data(ek_rt_t rt, const char *net_name, const void *const *inputs,
                                     const ek_shape_t *input_shapes, int input_count, void *const *outputs,
                                     const size_t *output_capacity, ek_shape_t *output_shapes, int output_count,
                                     const ek_launch_options_t *options);

#ifdef __cplusplus
}
#endif
#endif /* EDGEKIT_RUNTIME_H */
