/* A plugin for the tests of plugin loading and failures (tests/c/test_plugin.c, tests/test_plugins.py),
 * built in variants by -D:
 *   (none)          ops "test.plugins::Negate" (run fails on an input element > 1000, with a message),
 *                   "test.plugins::Picky" (infer rejects inputs of rank != 4), "test.plugins::Grow" (run
 *                   reports an output shape other than the recorded one), and "test.plugins::Double"
 *                   (infer claims a shape twice the input's)
 *   NO_ENTRY        no ek_plugin_register
 *   NO_ABI          no ek_plugin_abi_version
 *   ABI_VERSION=N   ek_plugin_abi_version = N
 *   DUP_SELF        registers test.plugins::Negate twice
 *   DUP_EXAMPLE     registers edgekit.example::Swish (the example plugin's op)
 *   REGISTER_FAILS  ek_plugin_register fails with a reason */
#include <stdio.h>
#include <string.h>

#include "edgekit/plugin.h"

#ifdef ABI_VERSION
EK_PLUGIN_EXPORT const uint32_t ek_plugin_abi_version = ABI_VERSION;
#elif !defined(NO_ABI)
EK_PLUGIN_DEFINE_ABI_VERSION;
#endif

static size_t count_of(const ek_plugin_tensor_t *t) {
    size_t n = 1;
    for (int d = 0; d < t->rank; d++)
        n *= (size_t)t->dims[d];
    return n;
}

static int same_infer(const ek_plugin_api_t *api, ek_plugin_call_t *call, int n_in, const ek_plugin_tensor_t *in,
                      int n_out, ek_plugin_tensor_t *out) {
    (void)api, (void)call, (void)n_in, (void)n_out;
    out[0] = in[0];
    return 0;
}

static int negate_run(const ek_plugin_api_t *api, ek_plugin_call_t *call, int n_in, const ek_plugin_tensor_t *in,
                      int n_out, ek_plugin_tensor_t *out) {
    (void)n_in, (void)n_out;
    const float *x = in[0].data;
    float *y = out[0].data;
    for (size_t i = 0; i < count_of(&in[0]); i++) {
        if (x[i] > 1000.0f) {
            char message[128];
            snprintf(message, sizeof message, "input element %zu is %g, above 1000", i, (double)x[i]);
            api->set_error(call, message);
            return 1;
        }
        y[i] = -x[i];
    }
    return 0;
}

static int picky_infer(const ek_plugin_api_t *api, ek_plugin_call_t *call, int n_in, const ek_plugin_tensor_t *in,
                       int n_out, ek_plugin_tensor_t *out) {
    if (in[0].rank != 4) {
        char message[96];
        snprintf(message, sizeof message, "X must have rank 4, not %d", (int)in[0].rank);
        api->set_error(call, message);
        return 1;
    }
    return same_infer(api, call, n_in, in, n_out, out);
}

static int double_infer(const ek_plugin_api_t *api, ek_plugin_call_t *call, int n_in, const ek_plugin_tensor_t *in,
                        int n_out, ek_plugin_tensor_t *out) {
    same_infer(api, call, n_in, in, n_out, out);
    out[0].dims[0] *= 2;
    return 0;
}

static int grow_run(const ek_plugin_api_t *api, ek_plugin_call_t *call, int n_in, const ek_plugin_tensor_t *in,
                    int n_out, ek_plugin_tensor_t *out) {
    (void)api, (void)call, (void)n_in, (void)n_out;
    memcpy(out[0].data, in[0].data, count_of(&in[0]) * sizeof(float));
    out[0].dims[0] += 1;
    return 0;
}

#ifdef NO_ENTRY /* exported under a wrong name */
#define ek_plugin_register ek_plugin_registr
#endif
EK_PLUGIN_EXPORT int ek_plugin_register(const ek_plugin_api_t *api, ek_plugin_registry_t *registry) {
#ifdef REGISTER_FAILS
    api->registry_error(registry, "the test plugin refuses to register");
    return 1;
#endif
    const char *domain = "test.plugins";
    ek_plugin_op_t ops[] = {
        {sizeof(ek_plugin_op_t), domain, "Negate", 1, 1, 1, 1, same_infer, negate_run, NULL, 0},
        {sizeof(ek_plugin_op_t), domain, "Picky", 1, 1, 1, 1, picky_infer, negate_run, NULL, 0},
        {sizeof(ek_plugin_op_t), domain, "Grow", 1, 1, 1, 1, same_infer, grow_run, NULL, 0},
        {sizeof(ek_plugin_op_t), domain, "Double", 1, 1, 1, 1, double_infer, negate_run, NULL, 0},
#ifdef DUP_SELF
        {sizeof(ek_plugin_op_t), domain, "Negate", 1, 1, 1, 1, same_infer, negate_run, NULL, 0},
#endif
#ifdef DUP_EXAMPLE
        {sizeof(ek_plugin_op_t), "edgekit.example", "Swish", 1, 1, 1, 1, same_infer, negate_run, NULL, 0},
#endif
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (api->register_op(registry, &ops[i]) != 0)
            return 1;
    return 0;
}
