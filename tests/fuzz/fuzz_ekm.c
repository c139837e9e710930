/* libFuzzer target: the .ekm loader (src/model.c, every op's prepare), then one launch of each network
 * that loaded, on inputs of its first stage's shapes. A load that fails must say why (a status and a
 * message); nothing may crash, leak or read out of bounds (ASan + UBSan). Portable kernels: the XNNPACK
 * library is not instrumented. Run through `invoke fuzz --target ekm` (docs/hardening.md). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgekit/edgekit.h"

/* Inputs and outputs above this are not run: a fuzzed shape may ask for a huge (valid) tensor. */
#define MAX_LAUNCH_BYTES (8u << 20)

static ek_dev_t dev;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    ek_dev_config_t config = {.heap_size = 64u << 20};
    if (ek_dev_request_ex(&dev, 0, &config) != EK_OK) {
        fprintf(stderr, "fuzz_ekm: cannot open device 0: %s\n", ek_last_error());
        exit(1);
    }
    return 0;
}

/* A failed call must leave a message naming what was wrong. */
static void check_said_why(ek_status_t status) {
    if (status != EK_OK && ek_last_error()[0] == '\0') {
        fprintf(stderr, "status %d (%s) without a message\n", status, ek_status_name(status));
        abort();
    }
}

static size_t shape_bytes(ek_dtype_t dtype, const ek_shape_t *shape) {
    size_t n = ek_dtype_size(dtype);
    for (int d = 0; d < shape->num_dims; d++) {
        if (shape->dims[d] < 0 || (shape->dims[d] > 0 && n > SIZE_MAX / (size_t)shape->dims[d]))
            return SIZE_MAX;
        n *= (size_t)shape->dims[d];
    }
    return n;
}

static void launch_once(ek_rt_t rt, const ek_net_info_t *net) {
    if (net->stage_count < 1 || net->input_count > 16 || net->output_count > 16)
        return;
    const ek_stage_info_t *stage = &net->stages[0];
    void *inputs[16] = {0}, *outputs[16] = {0};
    size_t capacity[16] = {0};
    ek_shape_t out_shapes[16];
    size_t total = 0;
    bool fits = true;
    for (int i = 0; i < net->input_count && fits; i++) {
        size_t n = shape_bytes(net->inputs[i].dtype, &stage->input_shapes[i]);
        fits = n <= MAX_LAUNCH_BYTES - total;
        total += fits ? n : 0;
    }
    for (int i = 0; i < net->output_count && fits; i++) {
        fits = net->outputs[i].max_bytes <= MAX_LAUNCH_BYTES - total;
        total += fits ? net->outputs[i].max_bytes : 0;
    }
    if (!fits)
        return;
    for (int i = 0; i < net->input_count; i++) {
        size_t n = shape_bytes(net->inputs[i].dtype, &stage->input_shapes[i]);
        inputs[i] = malloc(n ? n : 1);
        if (inputs[i]) /* every 4th byte 0x3f or 0xbf: float32 +-0.5, int8 63 and -65, the rest 0 */
            for (size_t b = 0; b < n; b++)
                ((uint8_t *)inputs[i])[b] = (uint8_t)((b & 3) == 3 ? ((b >> 2) & 1 ? 0xbf : 0x3f) : 0);
    }
    for (int i = 0; i < net->output_count; i++) {
        capacity[i] = net->outputs[i].max_bytes;
        outputs[i] = malloc(capacity[i] ? capacity[i] : 1);
    }
    bool allocated = true;
    for (int i = 0; i < net->input_count; i++)
        allocated = allocated && inputs[i];
    for (int i = 0; i < net->output_count; i++)
        allocated = allocated && outputs[i];
    if (allocated)
        check_said_why(ek_rt_launch_data(rt, net->name, (const void *const *)inputs, stage->input_shapes,
                                         net->input_count, outputs, capacity, out_shapes, net->output_count, NULL));
    for (int i = 0; i < 16; i++) {
        free(inputs[i]);
        free(outputs[i]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ek_rt_t rt;
    ek_rt_config_t config = {.kernels = EK_KERNELS_PORTABLE, .threads = 1};
    if (ek_rt_create_ex(&rt, dev, &config) != EK_OK) {
        fprintf(stderr, "fuzz_ekm: cannot create a runtime: %s\n", ek_last_error());
        abort();
    }
    ek_status_t status = ek_rt_load_model_data(rt, data, size);
    check_said_why(status);
    int count = 0;
    if (status == EK_OK && ek_rt_network_count(rt, &count) == EK_OK) {
        for (int n = 0; n < count; n++) {
            const char *name;
            const ek_net_info_t *net;
            if (ek_rt_network_name(rt, n, &name) == EK_OK && ek_rt_network_info(rt, name, &net) == EK_OK)
                launch_once(rt, net);
        }
    }
    if (ek_rt_destroy(rt) != EK_OK) {
        fprintf(stderr, "fuzz_ekm: ek_rt_destroy failed: %s\n", ek_last_error());
        abort();
    }
    return 0;
}
