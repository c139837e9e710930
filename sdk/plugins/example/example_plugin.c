/* EdgeKit's example plugin op library (docs/plugins.md): three ops of the domain "edgekit.example".
 *
 *   Swish(X; beta FLOAT = 1.0) -> Y            y = x * sigmoid(beta * x)  (SiLU for beta = 1)
 *   ChannelAffine(X, scale, bias; axis INT = 1) -> Y
 *                                              y[..., c, ...] = x[..., c, ...] * scale[c] + bias[c]
 *                                              along `axis` of X (ONNX layout: axis 1 is C of NCHW)
 *   FilterRows(X[N,D]; threshold FLOAT = 0.0, column INT = 0) -> Y[<=N,D]
 *                                              the rows of X whose value in `column` is > threshold,
 *                                              in order (a pre-NMS score filter): a dynamic output,
 *                                              whose bound is [N,D] and whose rows the data decides
 *
 * float32 only. It uses nothing but edgekit/plugin.h and libm: a plugin does not link libedgekit. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "edgekit/plugin.h"

EK_PLUGIN_DEFINE_ABI_VERSION;

static size_t count_of(const ek_plugin_tensor_t *t) {
    size_t n = 1;
    for (int d = 0; d < t->rank; d++)
        n *= (size_t)t->dims[d];
    return n;
}

static int fail(const ek_plugin_api_t *api, ek_plugin_call_t *call, const char *message) {
    api->set_error(call, message);
    return 1;
}

static void copy_shape(ek_plugin_tensor_t *out, const ek_plugin_tensor_t *in) {
    out->dtype = in->dtype;
    out->rank = in->rank;
    memcpy(out->dims, in->dims, sizeof out->dims);
}

/* ---- Swish ---- */

static int swish_beta(const ek_plugin_api_t *api, ek_plugin_call_t *call, float *beta) {
    *beta = 1.0f;
    if (api->attr_float(call, "beta", beta) < 0)
        return fail(api, call, "attribute 'beta' must be a float");
    if (!isfinite(*beta))
        return fail(api, call, "attribute 'beta' must be finite");
    return 0;
}

static int swish_infer(const ek_plugin_api_t *api, ek_plugin_call_t *call, int n_in, const ek_plugin_tensor_t *in,
                       int n_out, ek_plugin_tensor_t *out) {
    (void)n_in;
    (void)n_out;
    float beta;
    if (swish_beta(api, call, &beta))
        return 1;
    if (in[0].dtype != EK_PLUGIN_FLOAT32)
        return fail(api, call, "X must be float32");
    copy_shape(&out[0], &in[0]);
    return 0;
}

struct swish_job {
    const float *x;
    float *y;
    float beta;
};

static void swish_range(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct swish_job *job = arg;
    for (size_t i = begin; i < end; i++) {
        float x = job->x[i];
        job->y[i] = x / (1.0f + expf(-job->beta * x));
    }
}

static int swish_run(const ek_plugin_api_t *api, ek_plugin_call_t *call, int n_in, const ek_plugin_tensor_t *in,
                     int n_out, ek_plugin_tensor_t *out) {
    (void)n_in;
    (void)n_out;
    struct swish_job job = {in[0].data, out[0].data, 1.0f};
    if (swish_beta(api, call, &job.beta))
        return 1;
    size_t n = count_of(&in[0]);
    if (n < 4096) /* not worth waking the team */
        swish_range(&job, 0, n, 0);
    else
        api->parallel_for(call, n, swish_range, &job);
    return 0;
}

/* ---- ChannelAffine ---- */

static int affine_axis(const ek_plugin_api_t *api, ek_plugin_call_t *call, const ek_plugin_tensor_t *x, int *axis) {
    int64_t a = 1;
    if (api->attr_int(call, "axis", &a) < 0)
        return fail(api, call, "attribute 'axis' must be an int");
    if (a < 0)
        a += x->rank;
    if (a < 0 || a >= x->rank) {
        char message[128];
        snprintf(message, sizeof message, "axis %lld is outside X's %d axes", (long long)a, (int)x->rank);
        return fail(api, call, message);
    }
    *axis = (int)a;
    return 0;
}

static int affine_infer(const ek_plugin_api_t *api, ek_plugin_call_t *call, int n_in, const ek_plugin_tensor_t *in,
                        int n_out, ek_plugin_tensor_t *out) {
    (void)n_in;
    (void)n_out;
    int axis;
    if (affine_axis(api, call, &in[0], &axis))
        return 1;
    for (int i = 0; i < 3; i++)
        if (in[i].dtype != EK_PLUGIN_FLOAT32)
            return fail(api, call, "X, scale and bias must be float32");
    for (int i = 1; i < 3; i++)
        if (count_of(&in[i]) != (size_t)in[0].dims[axis]) {
            char message[160];
            snprintf(message, sizeof message, "%s has %zu elements; X has %lld channels along axis %d",
                     i == 1 ? "scale" : "bias", count_of(&in[i]), (long long)in[0].dims[axis], axis);
            return fail(api, call, message);
        }
    copy_shape(&out[0], &in[0]);
    return 0;
}

struct affine_job {
    const float *x, *scale, *bias;
    float *y;
    size_t channels, inner; /* X is [outer, channels, inner] */
};

static void affine_range(void *arg, size_t begin, size_t end, int thread) {
    (void)thread;
    const struct affine_job *job = arg;
    for (size_t row = begin; row < end; row++) { /* row = outer * channels + c */
        size_t c = row % job->channels;
        const float *x = job->x + row * job->inner;
        float *y = job->y + row * job->inner;
        float s = job->scale[c], b = job->bias[c];
        for (size_t i = 0; i < job->inner; i++)
            y[i] = x[i] * s + b;
    }
}

static int affine_run(const ek_plugin_api_t *api, ek_plugin_call_t *call, int n_in, const ek_plugin_tensor_t *in,
                      int n_out, ek_plugin_tensor_t *out) {
    (void)n_in;
    (void)n_out;
    int axis;
    if (affine_axis(api, call, &in[0], &axis))
        return 1;
    struct affine_job job = {in[0].data, in[1].data, in[2].data, out[0].data, (size_t)in[0].dims[axis], 1};
    size_t outer = 1;
    for (int d = 0; d < axis; d++)
        outer *= (size_t)in[0].dims[d];
    for (int d = axis + 1; d < in[0].rank; d++)
        job.inner *= (size_t)in[0].dims[d];
    api->parallel_for(call, outer * job.channels, affine_range, &job);
    return 0;
}

/* ---- FilterRows (a dynamic output) ---- */

static int filter_attrs(const ek_plugin_api_t *api, ek_plugin_call_t *call, const ek_plugin_tensor_t *x,
                        float *threshold, int64_t *column) {
    *threshold = 0.0f;
    *column = 0;
    if (api->attr_float(call, "threshold", threshold) < 0 || api->attr_int(call, "column", column) < 0)
        return fail(api, call, "attributes 'threshold' (a float) and 'column' (an int) have the wrong type");
    if (x->dtype != EK_PLUGIN_FLOAT32 || x->rank != 2)
        return fail(api, call, "X must be a float32 [N,D] matrix");
    if (*column < 0 || *column >= x->dims[1]) {
        char message[96];
        snprintf(message, sizeof message, "attribute 'column' is %lld; X has %lld columns", (long long)*column,
                 (long long)x->dims[1]);
        return fail(api, call, message);
    }
    return 0;
}

static int filter_infer(const ek_plugin_api_t *api, ek_plugin_call_t *call, int n_in, const ek_plugin_tensor_t *in,
                        int n_out, ek_plugin_tensor_t *out) {
    (void)n_in;
    (void)n_out;
    float threshold;
    int64_t column;
    if (filter_attrs(api, call, &in[0], &threshold, &column))
        return 1;
    copy_shape(&out[0], &in[0]); /* the bound: every row passes */
    return 0;
}

static int filter_run(const ek_plugin_api_t *api, ek_plugin_call_t *call, int n_in, const ek_plugin_tensor_t *in,
                      int n_out, ek_plugin_tensor_t *out) {
    (void)n_in;
    (void)n_out;
    float threshold;
    int64_t column;
    if (filter_attrs(api, call, &in[0], &threshold, &column))
        return 1;
    const float *x = in[0].data;
    float *y = out[0].data;
    size_t n = (size_t)in[0].dims[0], d = (size_t)in[0].dims[1], kept = 0;
    for (size_t r = 0; r < n; r++)
        if (x[r * d + (size_t)column] > threshold) /* NaN never passes */
            memcpy(y + kept++ * d, x + r * d, d * sizeof *y);
    out[0].dims[0] = (int64_t)kept; /* what it wrote: kept rows of D, C-order at the start */
    return 0;
}

EK_PLUGIN_EXPORT int ek_plugin_register(const ek_plugin_api_t *api, ek_plugin_registry_t *registry) {
    const ek_plugin_op_t ops[] = {
        {sizeof(ek_plugin_op_t), "edgekit.example", "Swish", 1, 1, 1, 1, swish_infer, swish_run, NULL, 0},
        {sizeof(ek_plugin_op_t), "edgekit.example", "ChannelAffine", 3, 3, 1, 1, affine_infer, affine_run, NULL, 0},
        /* dynamic_outputs bit 0: output 0's rows depend on the data */
        {sizeof(ek_plugin_op_t), "edgekit.example", "FilterRows", 1, 1, 1, 1, filter_infer, filter_run, NULL, 1u},
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (api->register_op(registry, &ops[i]) != 0)
            return 1;
    return 0;
}
