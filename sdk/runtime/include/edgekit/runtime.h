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

/* Write `nbytes` of `data`, a C-order array of `dtype` and `shape`, as the NumPy .npy (format 1.0) file
 * dir/name, whole or not at all (written to name.tmp, then renamed): for tools that save tensors,
 * like the edge app's --output_dir and the runtime's dumps. nbytes must be the shape's elements times
 * the dtype's size. */
EK_API ek_status_t ek_npy_write(const char *dir, const char *name, ek_dtype_t dtype, const ek_shape_t *shape,
                                const void *data, size_t nbytes);

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

/* ---- memory strategies (docs/memory.md, "Inference memory"): where a runtime's device memory comes from ----
 * By default a runtime allocates on its device's heap: each execution context's workspace (the
 * intermediate tensors of one launch at a time; made on first use, then reused), outputs of launches
 * without user_mem, and ek_rt_launch_data's staging copies.
 *   dynamic: an allocator (ek_rt_config_t.allocator) through which all of those go;
 *   static:  a workspace (ek_rt_workspace_create) that the caller sizes and allocates once per
 *            request; launches in it (ek_launch_options_t.workspace) allocate nothing. */

/* An allocator; checked on every call like the other handles. */
typedef struct ek_allocator {
    uint64_t id;
} ek_allocator_t;

/* A caller's allocator (MagicMind's IAllocator): device memory on the runtime's device, as (memory,
 * offset) pairs, so it may hand out parts of larger blocks. Called from any thread (the device
 * workers' included), one call at a time per allocator. The callbacks may call ek_malloc_device,
 * ek_free_device and ek_allocator_stats, but nothing that allocates or frees through this same
 * allocator (a launch of a runtime using it, ek_allocator_free of it): that would wait for itself. */
typedef struct ek_allocator_ops {
    /* `size` bytes (> 0) on device `dev` at an offset that is a multiple of `alignment` (a power of
     * two); on failure return another status than EK_OK (EK_ERR_OUT_OF_MEMORY), which the runtime
     * reports with what it asked for. It checks what it gets back (a live memory of that device,
     * large enough, aligned) before using it. */
    ek_status_t (*alloc)(void *user_data, ek_dev_t dev, size_t size, size_t alignment, ek_mem_t *mem,
                         size_t *offset);
    /* Take back what alloc returned (exactly once per block). */
    void (*free)(void *user_data, ek_dev_t dev, ek_mem_t mem, size_t offset, size_t size);
} ek_allocator_ops_t;

typedef struct ek_allocator_stats {
    uint64_t allocations;  /* successful allocations, ever */
    uint64_t frees;        /* blocks given back, ever */
    uint64_t failures;     /* allocations refused (out of memory, or a custom allocator's unusable answer) */
    size_t live_blocks;    /* allocations - frees */
    size_t bytes_in_use;   /* bytes of the live blocks, as requested */
    size_t peak_bytes;     /* the most bytes_in_use has been */
    size_t capacity;       /* a pool: its size; a custom allocator: 0 */
    int runtimes;          /* runtimes created with it and not destroyed yet */
} ek_allocator_stats_t;

/* An allocator that calls `ops` with `user_data` (which must outlive it). */
EK_API ek_status_t ek_allocator_create(ek_allocator_t *allocator, const ek_allocator_ops_t *ops, void *user_data);
/* A pool: one `capacity`-byte block of device `dev`'s heap, taken now, handed out in parts (best fit,
 * 64-byte aligned), so a runtime's allocations never reach the device heap and its peak is bounded. */
EK_API ek_status_t ek_allocator_create_pool(ek_allocator_t *allocator, ek_dev_t dev, size_t capacity);
/* EK_ERR_BUSY, naming what still uses it, while a runtime created with it exists or a block it gave
 * out is live (an output of a launch without user_mem not given back with ek_allocator_free): destroy
 * the runtimes first. A pool gives its block back to the device heap. */
EK_API ek_status_t ek_allocator_destroy(ek_allocator_t allocator);
EK_API ek_status_t ek_allocator_stats(ek_allocator_t allocator, ek_allocator_stats_t *stats);
/* Give back an output a launch without user_mem allocated through `allocator` (outputs[i].mem and
 * .offset). A block it did not give out, or gave back already, is an error and changes nothing. */
EK_API ek_status_t ek_allocator_free(ek_allocator_t allocator, ek_mem_t mem, size_t offset);

typedef struct ek_rt_config {
    ek_kernels_t kernels;
    /* Threads a launch uses by default. 0: EDGEKIT_THREADS, else the CPUs this process may use (its
     * affinity mask, and the cgroup CPU quota where one is set), at most 8. A launch never runs more
     * threads than the CPUs it may run on (the affinity, within its cpu_mask): extra ones only wait. */
    int threads;
    /* Every device allocation of the runtime goes through this allocator; {0}: the device heap. The
     * allocator cannot be destroyed before the runtime. Local devices only. */
    ek_allocator_t allocator;
} ek_rt_config_t;

/* Create a runtime on the device `dev` is a handle of. The runtime holds the device open (its own
 * handle) until ek_rt_destroy, so `dev` may be closed first. */
EK_API ek_status_t ek_rt_create(ek_rt_t *rt, ek_dev_t dev);
EK_API ek_status_t ek_rt_create_ex(ek_rt_t *rt, ek_dev_t dev, const ek_rt_config_t *config);
/* Wait for the runtime's launches, then free its models and execution memory. */
EK_API ek_status_t ek_rt_destroy(ek_rt_t rt);
/* The kernels this runtime uses: "portable" or "xnnpack" (with portable for the ops XNNPACK lacks). */
EK_API ek_status_t ek_rt_kernels(ek_rt_t rt, const char **name);
/* Why a runtime made with EK_KERNELS_AUTO (or DEFAULT resolving to it) runs the portable kernels: the
 * XNNPACK provider did not load (the dlopen error) or cannot run here (e.g. xnn_initialize failed, and
 * its status). "" when the runtime runs the kernels it was asked for, and for remote runtimes. The
 * string lives as long as the process. */
EK_API ek_status_t ek_rt_kernels_reason(ek_rt_t rt, const char **reason);
/* The threads a launch of this runtime uses by default (see ek_rt_config_t.threads). */
EK_API ek_status_t ek_rt_threads(ek_rt_t rt, int *threads);

/* Load a plugin op library (docs/plugins.md, edgekit/plugin.h) into this runtime, before the models
 * that use its ops. The file must be a shared library for this machine (checked before dlopen, which
 * is RTLD_LOCAL) exporting the plugin ABI version this EdgeKit loads and ek_plugin_register; an op
 * (domain, op type) already registered in this runtime is EK_ERR_BUSY naming both libraries. Errors:
 * EK_ERR_SYSTEM (cannot open), EK_ERR_UNSUPPORTED (not a plugin, another machine, a remote runtime:
 * its server never loads client code), EK_ERR_VERSION (another plugin ABI). Libraries stay loaded
 * until ek_rt_destroy. A model with an op no loaded plugin registers fails to load
 * (EK_ERR_UNSUPPORTED naming it). */
EK_API ek_status_t ek_rt_load_plugin(ek_rt_t rt, const char *path);

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
    /* An output whose size depends on the data (NonMaxSuppression's, a TopK's with a run-time K, a
     * plugin's that says so): the stages' output shapes are its largest; a launch writes what it
     * produced and reports that shape (see ek_rt_launch_tensor). */
    bool dynamic;
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

/* What one stage of a network needs (the static memory strategy). */
typedef struct ek_stage_memory {
    size_t constant_bytes;  /* its weights: read in place from the loaded model (the file's mapping),
                               shared by every launch and workspace; no device memory to provide */
    size_t workspace_bytes; /* the device memory one launch at a time needs: its intermediate tensors */
    size_t alignment;       /* a workspace's offset must be a multiple of this (64) */
} ek_stage_memory_t;
EK_API ek_status_t ek_rt_stage_memory(ek_rt_t rt, const char *net_name, int stage, ek_stage_memory_t *memory);

/* A workspace: an execution context of one network stage set up once over the caller's device
 * memory. Checked on every call like the other handles. */
typedef struct ek_workspace {
    uint64_t id;
} ek_workspace_t;

/* Make a workspace for stage `stage` of `net_name` in [offset, offset + size) of `mem` (on the
 * runtime's device; size >= its workspace_bytes; offset a multiple of its alignment). Launches that name it
 * (ek_launch_options_t.workspace, with user_mem outputs) run in it and allocate no device memory. It
 * runs one launch at a time: a launch while one is still running in it is EK_ERR_BUSY, so concurrent
 * requests each need their own workspace (and memory; workspaces of different stages that are
 * never launched at once may share it). `mem` must stay allocated while the workspace exists.
 * Local runtimes only. */
EK_API ek_status_t ek_rt_workspace_create(ek_rt_t rt, const char *net_name, int stage, ek_mem_t mem, size_t offset,
                                          size_t size, ek_workspace_t *workspace);
/* EK_ERR_BUSY while a launch runs in it. ek_rt_destroy destroys the runtime's workspaces. */
EK_API ek_status_t ek_workspace_destroy(ek_workspace_t workspace);

/* A launch in flight; ek_launch_wait ends it. The zero handle is invalid. */
typedef struct ek_launch {
    uint64_t id;
} ek_launch_t;

/* ---- profiles (docs/profiling.md) ----
 * A profile collects timed records of the launches whose options name it, and of anything the caller
 * adds. Record kinds, nested as in the trace (each a "ph":"X" event):
 *   ModelInit          loading the model (added once per model, with the profile's first launch of it)
 *   TransferFromInput  copies of inputs to the device (ek_rt_launch_data's; callers add their own)
 *   Wait               a launch queued, until a device worker takes it (the caller's thread)
 *   ModelExecute       the launch on a worker (ek_rt_run: the caller's thread), with RequestInit and
 *                      every LayerExecute
 *   RequestInit        taking and setting up an execution context (arena, scratch, threads)
 *   LayerExecute       one op: its type, ONNX nodes, kernel provider, shapes, FLOPs, thread
 *   TransferToOutput   copies of outputs from the device (ek_rt_launch_data's; callers add their own)
 *   Transport          remote devices: the request's way to the board ("request") and the completion's way
 *                      back ("reply"): the round trip less the time the board held the launch, half each way;
 *                      the board's records (Wait is the queue, ModelExecute the device) are moved onto this
 *                      host's clock between them
 * Profiling costs one NULL check per op when a launch has no profile. A profile may be shared by
 * concurrent launches; records are appended in completion order. */
typedef struct ek_profile {
    uint64_t id;
} ek_profile_t;

typedef enum ek_profile_kind {
    EK_PROFILE_MODEL_INIT = 1,
    EK_PROFILE_REQUEST_INIT = 2,
    EK_PROFILE_TRANSFER_FROM_INPUT = 3,
    EK_PROFILE_WAIT = 4,
    EK_PROFILE_LAYER_EXECUTE = 5,
    EK_PROFILE_TRANSFER_TO_OUTPUT = 6,
    EK_PROFILE_MODEL_EXECUTE = 7,
    EK_PROFILE_TRANSPORT = 8
} ek_profile_kind_t;

/* One record. Strings are the profile's own (never NULL, "" when not applicable) and stay valid until
 * ek_profile_clear or ek_profile_destroy. Times are CLOCK_MONOTONIC nanoseconds. */
typedef struct ek_profile_record {
    ek_profile_kind_t kind;
    const char *name;     /* LayerExecute: the op's name; others: the network's (or the caller's name) */
    const char *network;  /* the network, "" for caller-added records */
    const char *op_type;  /* LayerExecute: "CONV", ... */
    const char *provider; /* LayerExecute: "portable" or "xnnpack" */
    /* LayerExecute: the ONNX nodes the op stands for, separated by the ASCII unit separator 0x1F (which
     * ONNX names do not use); "" for models compiled before .ekm 1.1 */
    const char *nodes;
    const char *tensor;   /* LayerExecute: the ONNX tensor its output holds ("" when none or unknown) */
    const char *shapes;   /* LayerExecute: "1x8x8x3, 16x3x3x3, 16 -> 1x8x8x16" (engine layout) */
    int op_index;         /* LayerExecute: the op's index in its stage; else -1 */
    int stage;            /* the stage of the launch; -1 when not a launch's */
    int threads;          /* LayerExecute, ModelExecute: the launch's team of threads */
    uint64_t launch;      /* the launch's number in this profile (1, 2, ...); 0 when not a launch's */
    uint64_t flops;       /* LayerExecute: floating-point operations (a multiply-add counts 2) */
    uint64_t bytes;       /* transfers: bytes copied */
    uint64_t start_ns;
    uint64_t duration_ns;
    uint64_t thread; /* the OS thread id (gettid) it ran on */
    /* LayerExecute: the portable kernel's algorithm for the op ("winograd-f4/avx512", "gemm",
     * "depthwise"; docs/profiling.md), "" when a provider ran it or the kernel has no choice (and for
     * a remote device's records, which do not carry it) */
    const char *algorithm;
} ek_profile_record_t;

EK_API ek_status_t ek_profile_create(ek_profile_t *profile);
/* Launches still recording into it finish normally; the records go with the last of them. */
EK_API ek_status_t ek_profile_destroy(ek_profile_t profile);
/* Drop every record (and the strings records pointed to). */
EK_API ek_status_t ek_profile_clear(ek_profile_t profile);
EK_API ek_status_t ek_profile_count(ek_profile_t profile, size_t *count);
/* Record `index` (0 .. count-1), in the order they were added. */
EK_API ek_status_t ek_profile_get(ek_profile_t profile, size_t index, ek_profile_record_t *record);
/* Add a caller's record on the calling thread (e.g. its own input copies, TransferFromInput), timed
 * with ek_profile_clock_ns. */
EK_API ek_status_t ek_profile_add(ek_profile_t profile, ek_profile_kind_t kind, const char *name, uint64_t start_ns,
                                  uint64_t duration_ns);
/* The clock of the records: CLOCK_MONOTONIC in nanoseconds. */
EK_API uint64_t ek_profile_clock_ns(void);
/* "ModelInit", "RequestInit", "TransferFromInput", "Wait", "LayerExecute", "TransferToOutput",
 * "ModelExecute", "Transport"; "Unknown" for other values. */
EK_API const char *ek_profile_kind_name(ek_profile_kind_t kind);
/* Write the profile directory `dir` (created, with its parents, if missing): trace.json, a Chrome Trace
 * Event file (open it in https://ui.perfetto.dev or chrome://tracing), and summary.csv, the ops by total
 * time (count, total, mean, %, FLOPs, GFLOP/s). Each file is written whole or not at all; an
 * unwritable directory is EK_ERR_SYSTEM naming it. */
EK_API ek_status_t ek_profile_write(ek_profile_t profile, const char *dir);

typedef struct ek_launch_options {
    int threads;       /* 0: the runtime's default */
    uint64_t cpu_mask; /* CPUs (bit i = CPU i) the launch's threads may run on; 0: any */
    /* Called once on a worker thread when the launch has finished, with its status; may be NULL. */
    void (*on_done)(void *user_data, ek_status_t status);
    void *user_data;
    /* Record this launch into a profile; {0}: no profiling (costs a NULL check per op). */
    ek_profile_t profile;
    /* Write the inputs and every op's output of this launch to this directory (created if missing):
     * .npy files and manifest.json, written last (docs/profiling.md); NULL: no dump. An unwritable
     * directory fails the launch before it is queued (EK_ERR_SYSTEM); a write failing during the
     * launch fails the launch, and no manifest is written. Concurrent launches need distinct dirs. */
    const char *dump_dir;
    /* Run in this workspace of the runtime (ek_rt_workspace_create: same network and stage; the
     * launch must give its outputs' memory); {0}: a context from the runtime's pool. */
    ek_workspace_t workspace;
} ek_launch_options_t;

/* Queue network `net_name` on the device's worker and return at once. The stage is the one whose
 * input shapes equal the inputs' shapes. Inputs are read from device memory and outputs written to
 * it, as device accesses (strict coherence: flush inputs written through a mapping first, and
 * invalidate outputs before reading them through one). With `user_mem` the caller's
 * outputs[i].mem/offset receive the outputs; without, the runtime allocates each output on the
 * device, and the caller frees it with ek_free_device (a runtime with an allocator: gives it back with
 * ek_allocator_free). The call fills outputs[i] dtype and shape, and *launch, before it queues the
 * launch, so its on_done may read them there (it may run before the call returns).
 * `launch` may be NULL: the launch is then waited for only by ek_dev_sync, which reports its error.
 * Inputs and outputs must stay allocated until the launch ends. `options` may be NULL.
 * Dynamic outputs (ek_io_info_t.dynamic): the call fills their largest shape; when the launch ends it
 * sets outputs[i].shape to what it produced, so keep the `outputs` array until then. With user_mem an
 * output's room is its memory from its offset to the end, which may be less than the largest shape
 * takes: a launch producing more than fits fails with EK_ERR_OUT_OF_RANGE naming the bytes needed, and
 * writes nothing there. */
EK_API ek_status_t ek_rt_launch_tensor(ek_rt_t rt, const char *net_name, const ek_tensor_t *inputs,
                                       int input_count, ek_tensor_t *outputs, int output_count, bool user_mem,
                                       const ek_launch_options_t *options, ek_launch_t *launch);

/* Launch and wait in one call: ek_rt_launch_tensor with user_mem, then ek_launch_wait, returning the
 * launch's status. The fast way for a caller that waits anyway: without on_done it runs on the calling
 * thread (as the team's thread 0) when one of the device's worker slots is free, so no hand-off to a
 * worker thread; otherwise (or with on_done, which then runs on a worker) it is queued and waited
 * for. It counts as one of the device's concurrent launches, so ek_dev_sync waits for it. */
EK_API ek_status_t ek_rt_run(ek_rt_t rt, const char *net_name, const ek_tensor_t *inputs, int input_count,
                             ek_tensor_t *outputs, int output_count, const ek_launch_options_t *options);

/* Wait up to `timeout_ms` (< 0: forever) for a launch. EK_ERR_TIMEOUT if it is still running (the
 * handle stays valid); otherwise the handle is retired and the launch's own status is returned,
 * with its message in ek_last_error(). */
EK_API ek_status_t ek_launch_wait(ek_launch_t launch, int timeout_ms);

/* Run `net_name` synchronously on host buffers, staged through device memory (on the calling thread,
 * as ek_rt_run does): inputs[i] holds input i with input_shapes[i]; outputs[i] has room for
 * output_capacity[i] bytes; output_shapes[i] receives its shape. A dynamic output's capacity may be
 * below its largest size: what the launch produced must fit (else EK_ERR_OUT_OF_RANGE naming the
 * bytes needed, nothing written). Not in a workspace (options->workspace): EK_ERR_INVALID_ARG. */
EK_API ek_status_t ek_rt_launch_data(ek_rt_t rt, const char *net_name, const void *const *inputs,
                                     const ek_shape_t *input_shapes, int input_count, void *const *outputs,
                                     const size_t *output_capacity, ek_shape_t *output_shapes, int output_count,
                                     const ek_launch_options_t *options);

#ifdef __cplusplus
}
#endif
#endif /* EDGEKIT_RUNTIME_H */
