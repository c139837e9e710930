/* A loaded .ekm model in memory (model.c builds it; runtime.c and engine.c use it). Not installed.
 * Strings, attribute arrays and constants point into the file's bytes, which the model keeps. */
#ifndef EDGEKIT_MODEL_H
#define EDGEKIT_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "edgekit/runtime.h"
#include "../kernels/kernel.h"

/* Where an op came from in the ONNX graph (the optional OP_SOURCES section, docs/model-format.md):
 * what dumps and profiles name it by. */
struct ek_op_source {
    const char *tensor;       /* the ONNX tensor its output holds; "" when none */
    const char *const *nodes; /* node_count ONNX node names, in graph order (the last one's output is the op's) */
    uint32_t node_count;
    bool permuted;                /* the output is in another layout than ONNX's: */
    uint8_t perm[EK_MAX_DIMS];    /* ONNX dim i is output dim perm[i] (rank of the output) */
};

struct ek_stage {
    struct ek_tensor_desc *tensors;
    uint32_t tensor_count;
    struct ek_op *ops; /* in execution order, each prepared by its portable kernel */
    uint32_t op_count;
    const struct ek_op_source *sources; /* per op; NULL when the file has no OP_SOURCES (before 1.1) */
    const struct ek_tensor_desc **input_tensors;  /* per network input: the tensor bound to it */
    const struct ek_tensor_desc **output_tensors; /* per network output */
    size_t arena_size;
    size_t scratch_per_thread; /* the largest op->scratch_per_thread */
    struct ek_stage_engine *engine; /* engine.c's execution contexts for this stage (NULL until used) */
};

struct ek_network {
    ek_net_info_t info; /* the public view; its arrays are the ones below */
    ek_io_info_t *ios;  /* inputs then outputs */
    ek_stage_info_t *stage_infos;
    ek_shape_t *stage_shapes; /* stage_count x (inputs + outputs) */
    struct ek_stage *stages;
    struct ek_model *model;
};

struct ek_model {
    const uint8_t *data;
    size_t size;
    bool mapped; /* munmap at free, else free() */
    struct ek_network *networks;
    uint32_t network_count;
    uint64_t load_start_ns, load_ns; /* CLOCK_MONOTONIC: when loading began, how long it took (ModelInit) */
    /* what model.c allocated besides the arrays above, freed with the model */
    void *allocations;
};

/* Validate and load a model from `size` bytes at `data`. On success the model owns `data`
 * (munmap'ed at free when `mapped`, else free'd); on failure the caller still does. Errors are
 * EK_ERR_MODEL_INVALID (what is wrong, and where) or EK_ERR_OUT_OF_MEMORY. */
ek_status_t ek_model_load(const uint8_t *data, size_t size, bool mapped, struct ek_model **model);
/* Map `path` read-only and load it. */
ek_status_t ek_model_load_file(const char *path, struct ek_model **model);
/* The same, with the plugin libraries PLUGIN ops are prepared against (plugin.c; NULL: none). */
struct ek_plugin_lib;
ek_status_t ek_model_load_ex(const uint8_t *data, size_t size, bool mapped, const struct ek_plugin_lib *plugins,
                             struct ek_model **model);
ek_status_t ek_model_load_file_ex(const char *path, const struct ek_plugin_lib *plugins, struct ek_model **model);
/* Release the ops' kernel state, the model's arrays and its bytes. The engine has released the
 * stages' execution contexts first. */
void ek_model_free(struct ek_model *model);

#endif /* EDGEKIT_MODEL_H */
