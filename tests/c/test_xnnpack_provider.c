/* The XNNPACK kernel provider (libedgekit_xnnpack.so), loaded as the runtime loads it (dlopen +
 * EK_PROVIDER_ENTRY), on ops built by hand: each op it takes is compared with a naive loop of the
 * op's semantics (docs/model-format.md), with 1 and several threads; ops whose semantics XNNPACK
 * does not match must be EK_ERR_UNSUPPORTED. Built only when the provider is (tests/c/CMakeLists.txt
 * passes its path as EKX_PROVIDER_PATH). */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ek_test.h"
#include "kernel.h"
#include "portable/portable.h"

#define PAD_BYTES 64 /* every buffer has XNN_EXTRA_BYTES (16) of readable slack, and more */

/* The portable kernels' ek_exec (they are compiled in, -DEK_KERNEL_TEST_SHIM): serial ranges, and
 * per-thread scratch. */
struct ek_exec {
    int threads;
    void *scratch[1];
};

void ek_parallel_for(struct ek_exec *exec, size_t count, ek_range_fn fn, void *arg)
{
    (void)exec;
    if (count)
        fn(arg, 0, count, 0);
}

int ek_exec_threads(const struct ek_exec *exec)
{
    (void)exec;
    return 1;
}

void *ek_exec_scratch(struct ek_exec *exec, int thread)
{
    return thread == 0 ? exec->scratch[0] : NULL;
}

static const struct ek_provider *prov;

/* A team for the provider's loops, standing in for the engine's: each range on its own thread. It
 * also counts the parallel loops, to show XNNPACK's work reaches the team (threadpool.c). */
struct range_call {
    ek_range_fn fn;
    void *arg;
    size_t begin, end;
    int thread;
};

static void *range_main(void *p) {
    struct range_call *c = p;
    c->fn(c->arg, c->begin, c->end, c->thread);
    return NULL;
}

static int team_loops;

static void test_parallel_for(struct ek_exec *exec, size_t count, ek_range_fn fn, void *arg) {
    enum { MAX = 8 };
    int threads = (int)(intptr_t)exec; /* this test's team passes its size here */
    pthread_t tid[MAX];
    struct range_call calls[MAX];
    team_loops++;
    for (int t = 0; t < threads && t < MAX; t++) {
        calls[t] = (struct range_call){fn, arg, count * (size_t)t / (size_t)threads,
                                       count * (size_t)(t + 1) / (size_t)threads, t};
        if (t > 0)
            pthread_create(&tid[t], NULL, range_main, &calls[t]);
    }
    range_main(&calls[0]);
    for (int t = 1; t < threads && t < MAX; t++)
        pthread_join(tid[t], NULL);
}

static struct ek_parallel team_of(int threads) {
    return (struct ek_parallel){threads, test_parallel_for, (struct ek_exec *)(intptr_t)threads};
}

/* ---- building ops ---- */

struct tensor {
    struct ek_tensor_desc desc;
    float *data;
};

static void tensor_init(struct tensor *t, int rank, const int64_t *dims, bool constant, unsigned seed)
{
    memset(t, 0, sizeof *t);
    t->desc.name = "t";
    t->desc.dtype = EK_DTYPE_FLOAT32;
    t->desc.rank = rank;
    t->desc.count = 1;
    for (int i = 0; i < rank; i++) {
        t->desc.dims[i] = dims[i];
        t->desc.count *= (size_t)dims[i];
    }
    t->desc.nbytes = t->desc.count * sizeof(float);
    t->desc.storage = constant ? EK_STORAGE_CONSTANT : EK_STORAGE_ARENA;
    t->data = calloc(1, t->desc.nbytes + PAD_BYTES);
    /* Small pseudo-random values in [-1, 1). */
    unsigned x = seed * 2654435761u + 12345u;
    for (size_t i = 0; i < t->desc.count; i++) {
        x = x * 1103515245u + 12345u;
        t->data[i] = (float)((x >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
    if (constant)
        t->desc.constant = t->data;
}

static void tensor_free(struct tensor *t)
{
    free(t->data);
    t->data = NULL;
}

static struct ek_attr attr_ints(const char *name, uint32_t count, const int64_t *v)
{
    struct ek_attr a = {0};
    a.name = name;
    a.type = EK_ATTR_INTS;
    a.count = count;
    a.ints = v;
    return a;
}

static struct ek_attr attr_int(const char *name, int64_t v)
{
    struct ek_attr a = {0};
    a.name = name;
    a.type = EK_ATTR_INT;
    a.count = 1;
    a.i = v;
    return a;
}

static struct ek_attr attr_float(const char *name, float v)
{
    struct ek_attr a = {0};
    a.name = name;
    a.type = EK_ATTR_FLOAT;
    a.count = 1;
    a.f = v;
    return a;
}

static struct ek_attr attr_floats(const char *name, uint32_t count, const float *v)
{
    struct ek_attr a = {0};
    a.name = name;
    a.type = EK_ATTR_FLOATS;
    a.count = count;
    a.floats = v;
    return a;
}

struct opdef {
    struct ek_op op;
    const struct ek_tensor_desc *in[4];
    const struct ek_tensor_desc *out[1];
    const void *in_data[4];
    void *out_data[1];
};

static void opdef_init(struct opdef *d, enum ek_op_type type, int n_in, struct tensor **ins, struct tensor *out,
                       int n_attrs, const struct ek_attr *attrs)
{
    memset(d, 0, sizeof *d);
    for (int i = 0; i < n_in; i++) {
        d->in[i] = ins[i] ? &ins[i]->desc : NULL;
        d->in_data[i] = ins[i] ? ins[i]->data : NULL;
    }
    d->out[0] = &out->desc;
    d->out_data[0] = out->data;
    d->op.type = type;
    d->op.name = "test_op";
    d->op.n_in = n_in;
    d->op.n_out = 1;
    d->op.in = d->in;
    d->op.out = d->out;
    d->op.n_attrs = n_attrs;
    d->op.attrs = attrs;
}

/* Create; run with 1 thread, 3 threads, 3 again on the same buffers (the provider skips its setup
 * then), and 3 with the input and output moved to other buffers (it must set up again); compare each
 * with `ref` (count floats); destroy. */
static void check_against(struct opdef *d, const float *ref, size_t count, const char *what)
{
    void *state = NULL;
    ek_status_t status = prov->create(&d->op, &state);
    if (status != EK_OK) {
        printf("    %s: create returned %s\n", what, ek_status_name(status));
        CHECK(status == EK_OK);
        return;
    }
    size_t in0_bytes = d->in[0] && d->in_data[0] ? d->in[0]->nbytes : 0;
    float *moved_y = malloc(count * sizeof(float) + 64);
    void *moved_x = in0_bytes ? malloc(in0_bytes + 64) : NULL;
    if (moved_x)
        memcpy(moved_x, d->in_data[0], in0_bytes);
    static const int threads_of[4] = {1, 3, 3, 3};
    for (int pass = 0; pass < 4; pass++) {
        const void *ins[4];
        memcpy(ins, d->in_data, sizeof ins);
        void *outs[1] = {d->out_data[0]};
        if (pass == 3) {
            if (moved_x)
                ins[0] = moved_x;
            outs[0] = moved_y;
        }
        float *y = outs[0];
        int threads = threads_of[pass];
        memset(y, 0xff, count * sizeof(float)); /* NaN: every element must be written */
        const struct ek_parallel team = team_of(threads);
        CHECK_OK(prov->run(state, ins, outs, &team));
        size_t bad = 0;
        for (size_t i = 0; i < count; i++) {
            if (!(fabsf(y[i] - ref[i]) <= 1e-4f * (1.0f + fabsf(ref[i])))) {
                if (bad++ < 3)
                    printf("    %s (pass %d, %d threads): [%zu] = %.7g, expected %.7g\n", what, pass, threads, i,
                           y[i], ref[i]);
            }
        }
        if (bad)
            printf("    %s (pass %d, %d threads): %zu of %zu differ\n", what, pass, threads, bad, count);
        CHECK(bad == 0);
    }
    free(moved_x);
    free(moved_y);
    prov->destroy(state);
}

static void check_unsupported(struct opdef *d, const char *what)
{
    void *state = NULL;
    ek_status_t status = prov->create(&d->op, &state);
    if (status != EK_ERR_UNSUPPORTED)
        printf("    %s: create returned %s, expected EK_ERR_UNSUPPORTED\n", what, ek_status_name(status));
    CHECK(status == EK_ERR_UNSUPPORTED);
    CHECK(state == NULL);
    if (status == EK_OK)
        prov->destroy(state);
}

static float clampf(float v, float lo, float hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* ---- CONV ---- */

struct conv_case {
    int64_t n, h, w, c, m, kh, kw, group;
    int64_t pads[4], strides[2], dilations[2];
    bool bias;
    float lo, hi;
};

/* residual: 0 none, 1 the input Z (.ekm 1.4) in the arena, 2 a constant Z: Y = clamp(conv + bias + Z). */
static void run_conv_case(const struct conv_case *k, int residual, const char *what)
{
    const int64_t cg = k->c / k->group, mg = k->m / k->group;
    const int64_t ekh = (k->kh - 1) * k->dilations[0] + 1, ekw = (k->kw - 1) * k->dilations[1] + 1;
    const int64_t oh = (k->h + k->pads[0] + k->pads[2] - ekh) / k->strides[0] + 1;
    const int64_t ow = (k->w + k->pads[1] + k->pads[3] - ekw) / k->strides[1] + 1;
    struct tensor x, w, b, y;
    tensor_init(&x, 4, (int64_t[]){k->n, k->h, k->w, k->c}, false, 1);
    tensor_init(&w, 4, (int64_t[]){k->m, k->kh, k->kw, cg}, true, 2);
    tensor_init(&b, 1, (int64_t[]){k->m}, true, 3);
    tensor_init(&y, 4, (int64_t[]){k->n, oh, ow, k->m}, false, 0);
    struct tensor z;
    tensor_init(&z, 4, (int64_t[]){k->n, oh, ow, k->m}, residual == 2, 4);
    float *ref = calloc(y.desc.count, sizeof(float));
    for (int64_t n = 0; n < k->n; n++)
        for (int64_t oy = 0; oy < oh; oy++)
            for (int64_t ox = 0; ox < ow; ox++)
                for (int64_t m = 0; m < k->m; m++) {
                    const int64_t g = m / mg;
                    double acc = k->bias ? b.data[m] : 0.0;
                    for (int64_t ky = 0; ky < k->kh; ky++)
                        for (int64_t kx = 0; kx < k->kw; kx++) {
                            const int64_t iy = oy * k->strides[0] - k->pads[0] + ky * k->dilations[0];
                            const int64_t ix = ox * k->strides[1] - k->pads[1] + kx * k->dilations[1];
                            if (iy < 0 || iy >= k->h || ix < 0 || ix >= k->w)
                                continue;
                            for (int64_t ci = 0; ci < cg; ci++)
                                acc += (double)x.data[((n * k->h + iy) * k->w + ix) * k->c + g * cg + ci] *
                                       w.data[((m * k->kh + ky) * k->kw + kx) * cg + ci];
                        }
                    const size_t at = (size_t)(((n * oh + oy) * ow + ox) * k->m + m);
                    ref[at] = clampf((float)(acc + (residual ? z.data[at] : 0.0)), k->lo, k->hi);
                }
    struct ek_attr attrs[6] = {attr_ints("pads", 4, k->pads),       attr_ints("strides", 2, k->strides),
                               attr_ints("dilations", 2, k->dilations), attr_int("group", k->group),
                               attr_float("act_min", k->lo),         attr_float("act_max", k->hi)};
    struct opdef d;
    opdef_init(&d, EK_OP_CONV, residual ? 4 : 3, (struct tensor *[]){&x, &w, k->bias ? &b : NULL, &z}, &y, 6,
               attrs);
    check_against(&d, ref, y.desc.count, what);
    if (residual) { /* a Z of another shape (the portable kernel refuses it first; this provider declines) */
        z.desc.dims[3] = 1;
        check_unsupported(&d, "conv with a Z of another shape");
        z.desc.dims[3] = k->m;
    }

    /* Weights that are not constants: XNNPACK packs them at create, so it declines. */
    w.desc.storage = EK_STORAGE_ARENA;
    w.desc.constant = NULL;
    check_unsupported(&d, "conv with non-constant weights");
    free(ref);
    tensor_free(&x);
    tensor_free(&w);
    tensor_free(&b);
    tensor_free(&y);
    tensor_free(&z);
}

static void test_conv(void)
{
    const struct conv_case plain = {2, 7, 6, 4, 6, 3, 3, 1, {1, 0, 2, 1}, {2, 1}, {1, 2}, true, -0.5f, 0.7f};
    run_conv_case(&plain, 0, "conv 3x3, asymmetric pads, stride 2x1, dilation 1x2, clamp");
    run_conv_case(&plain, 1, "conv 3x3, asymmetric pads, stride 2x1, dilation 1x2, clamp + Z");
    run_conv_case(&plain, 2, "conv 3x3, clamp + a constant Z");
    const struct conv_case pointwise = {1, 5, 5, 8, 3, 1, 1, 1, {0, 0, 0, 0}, {1, 1}, {1, 1}, false, -INFINITY,
                                        INFINITY};
    run_conv_case(&pointwise, 0, "conv 1x1, no bias");
    run_conv_case(&pointwise, 1, "conv 1x1, no bias + Z");
    const struct conv_case grouped = {1, 6, 5, 4, 6, 3, 2, 2, {1, 1, 1, 0}, {1, 2}, {1, 1}, true, 0.0f, INFINITY};
    run_conv_case(&grouped, 0, "grouped conv (2 groups), relu");
    run_conv_case(&grouped, 1, "grouped conv (2 groups), relu + Z");
    const struct conv_case depthwise = {2, 8, 7, 5, 5, 3, 3, 5, {1, 1, 1, 1}, {1, 1}, {1, 1}, true, -INFINITY,
                                        INFINITY};
    run_conv_case(&depthwise, 0, "depthwise conv 3x3");
    run_conv_case(&depthwise, 1, "depthwise conv 3x3 + Z");
    const struct conv_case multiplier = {1, 9, 9, 3, 6, 3, 3, 3, {0, 1, 2, 1}, {2, 2}, {1, 1}, true, 0.0f, 6.0f};
    run_conv_case(&multiplier, 0, "depthwise conv, multiplier 2, stride 2, relu6");
    run_conv_case(&multiplier, 1, "depthwise conv, multiplier 2, stride 2, relu6 + Z");
}

/* ---- CONV_TRANSPOSE ---- */

static void run_deconv_case(int64_t h, int64_t wd, int64_t c, int64_t m, int64_t group, int64_t kh, int64_t kw,
                            const int64_t *pads, const int64_t *strides, const int64_t *dil, const int64_t *adj,
                            const char *what)
{
    const int64_t cg = c / group, mg = m / group, n_batch = 2;
    const int64_t oh = (h - 1) * strides[0] + (kh - 1) * dil[0] + 1 - pads[0] - pads[2] + adj[0];
    const int64_t ow = (wd - 1) * strides[1] + (kw - 1) * dil[1] + 1 - pads[1] - pads[3] + adj[1];
    struct tensor x, w, b, y;
    tensor_init(&x, 4, (int64_t[]){n_batch, h, wd, c}, false, 4);
    tensor_init(&w, 4, (int64_t[]){m, kh, kw, cg}, true, 5);
    tensor_init(&b, 1, (int64_t[]){m}, true, 6);
    tensor_init(&y, 4, (int64_t[]){n_batch, oh, ow, m}, false, 0);
    double *acc = calloc(y.desc.count, sizeof(double));
    float *ref = calloc(y.desc.count, sizeof(float));
    /* Scatter: input pixel (iy, ix) of group g adds W[m][ky][kx][ci] x X to output (iy*s + ky*d - pad). */
    for (int64_t n = 0; n < n_batch; n++)
        for (int64_t iy = 0; iy < h; iy++)
            for (int64_t ix = 0; ix < wd; ix++)
                for (int64_t ky = 0; ky < kh; ky++)
                    for (int64_t kx = 0; kx < kw; kx++) {
                        const int64_t oy = iy * strides[0] + ky * dil[0] - pads[0];
                        const int64_t ox = ix * strides[1] + kx * dil[1] - pads[1];
                        if (oy < 0 || oy >= oh || ox < 0 || ox >= ow)
                            continue;
                        for (int64_t mo = 0; mo < m; mo++) {
                            const int64_t g = mo / mg;
                            for (int64_t ci = 0; ci < cg; ci++)
                                acc[((n * oh + oy) * ow + ox) * m + mo] +=
                                    (double)x.data[((n * h + iy) * wd + ix) * c + g * cg + ci] *
                                    w.data[((mo * kh + ky) * kw + kx) * cg + ci];
                        }
                    }
    for (size_t i = 0; i < y.desc.count; i++)
        ref[i] = (float)(acc[i] + b.data[i % (size_t)m]);
    struct ek_attr attrs[5] = {attr_ints("pads", 4, pads), attr_ints("strides", 2, strides),
                               attr_ints("dilations", 2, dil), attr_ints("adjustments", 2, adj),
                               attr_int("group", group)};
    struct opdef d;
    opdef_init(&d, EK_OP_CONV_TRANSPOSE, 3, (struct tensor *[]){&x, &w, &b}, &y, 5, attrs);
    check_against(&d, ref, y.desc.count, what);
    free(acc);
    free(ref);
    tensor_free(&x);
    tensor_free(&w);
    tensor_free(&b);
    tensor_free(&y);
}

static void test_conv_transpose(void)
{
    run_deconv_case(4, 5, 3, 4, 1, 3, 3, (int64_t[]){1, 0, 1, 1}, (int64_t[]){2, 2}, (int64_t[]){1, 1},
                    (int64_t[]){1, 0}, "conv_transpose 3x3 stride 2, adjustment");
    run_deconv_case(3, 3, 4, 6, 2, 2, 3, (int64_t[]){0, 1, 0, 0}, (int64_t[]){1, 2}, (int64_t[]){2, 1},
                    (int64_t[]){0, 1}, "grouped conv_transpose, dilation");
}

/* ---- FULLY_CONNECTED ---- */

static void test_fully_connected(void)
{
    const int64_t k = 7, n = 4;
    struct tensor x, w, b, y;
    tensor_init(&x, 3, (int64_t[]){3, 5, k}, false, 7);
    tensor_init(&w, 2, (int64_t[]){n, k}, true, 8);
    tensor_init(&b, 1, (int64_t[]){n}, true, 9);
    tensor_init(&y, 3, (int64_t[]){3, 5, n}, false, 0);
    float ref[15 * 4];
    for (int64_t r = 0; r < 15; r++)
        for (int64_t j = 0; j < n; j++) {
            double acc = b.data[j];
            for (int64_t i = 0; i < k; i++)
                acc += (double)x.data[r * k + i] * w.data[j * k + i];
            ref[r * n + j] = clampf((float)acc, -1.0f, 1.0f);
        }
    struct ek_attr attrs[2] = {attr_float("act_min", -1.0f), attr_float("act_max", 1.0f)};
    struct opdef d;
    opdef_init(&d, EK_OP_FULLY_CONNECTED, 3, (struct tensor *[]){&x, &w, &b}, &y, 2, attrs);
    check_against(&d, ref, y.desc.count, "fully_connected [3,5,7] x [4,7]^T + bias, clamp");
    tensor_free(&x);
    tensor_free(&w);
    tensor_free(&b);
    tensor_free(&y);
}

/* ---- pooling ---- */

/* ek semantics: window taps at o*s - pad_begin + k*d; outside taps skipped; average divides by the
 * inside taps, or with count_include_pad by the taps inside [-pad_begin, H + pad_end). */
static void run_pool_case(bool max, int64_t h, int64_t wd, const int64_t *kernel, const int64_t *strides,
                          const int64_t *pads, const int64_t *dil, int64_t include_pad, int64_t oh, int64_t ow,
                          bool supported, const char *what)
{
    const int64_t n_batch = 2, c = 5;
    struct tensor x, y;
    tensor_init(&x, 4, (int64_t[]){n_batch, h, wd, c}, false, 10);
    tensor_init(&y, 4, (int64_t[]){n_batch, oh, ow, c}, false, 0);
    float *ref = calloc(y.desc.count, sizeof(float));
    for (int64_t n = 0; n < n_batch; n++)
        for (int64_t oy = 0; oy < oh; oy++)
            for (int64_t ox = 0; ox < ow; ox++)
                for (int64_t ch = 0; ch < c; ch++) {
                    double acc = max ? -INFINITY : 0.0;
                    int inside = 0, padded = 0;
                    for (int64_t ky = 0; ky < kernel[0]; ky++)
                        for (int64_t kx = 0; kx < kernel[1]; kx++) {
                            const int64_t iy = oy * strides[0] - pads[0] + ky * dil[0];
                            const int64_t ix = ox * strides[1] - pads[1] + kx * dil[1];
                            if (iy >= -pads[0] && iy < h + pads[2] && ix >= -pads[1] && ix < wd + pads[3])
                                padded++;
                            if (iy < 0 || iy >= h || ix < 0 || ix >= wd)
                                continue;
                            const float v = x.data[((n * h + iy) * wd + ix) * c + ch];
                            inside++;
                            acc = max ? (v > acc ? v : acc) : acc + v;
                        }
                    ref[((n * oh + oy) * ow + ox) * c + ch] =
                        max ? (float)acc : (float)(acc / (include_pad ? padded : inside));
                }
    struct ek_attr attrs[4] = {attr_ints("kernel", 2, kernel), attr_ints("strides", 2, strides),
                               attr_ints("pads", 4, pads),
                               max ? attr_ints("dilations", 2, dil) : attr_int("count_include_pad", include_pad)};
    struct opdef d;
    opdef_init(&d, max ? EK_OP_MAX_POOL : EK_OP_AVERAGE_POOL, 1, (struct tensor *[]){&x}, &y, 4, attrs);
    if (supported)
        check_against(&d, ref, y.desc.count, what);
    else
        check_unsupported(&d, what);
    free(ref);
    tensor_free(&x);
    tensor_free(&y);
}

static void test_max_pool(void)
{
    const int64_t k3[2] = {3, 3}, s2[2] = {2, 2}, s1[2] = {1, 1}, d1[2] = {1, 1}, d2[2] = {2, 2};
    run_pool_case(true, 9, 8, k3, s2, (int64_t[]){1, 1, 1, 1}, d1, 0, 5, 4, true, "max_pool 3x3 s2 pad 1");
    /* Ceil mode: H=6, k3 s2 no pads -> floor 2, ceil 3 (the last window is partial). */
    run_pool_case(true, 6, 7, k3, s2, (int64_t[]){0, 0, 0, 0}, d1, 0, 3, 3, true, "max_pool ceil mode");
    run_pool_case(true, 7, 7, (int64_t[]){2, 2}, s2, (int64_t[]){0, 0, 0, 0}, d1, 0, 3, 3, true,
                  "max_pool 2x2 s2 floor (last row unused)");
    run_pool_case(true, 9, 9, k3, s1, (int64_t[]){0, 0, 0, 0}, d2, 0, 5, 5, true, "max_pool dilation 2, no pad");
    run_pool_case(true, 9, 9, k3, s1, (int64_t[]){2, 2, 2, 2}, d2, 0, 9, 9, false,
                  "max_pool dilation 2 with pads (XNNPACK clamps taps: declined)");
}

static void test_average_pool(void)
{
    const int64_t k3[2] = {3, 3}, s2[2] = {2, 2}, s1[2] = {1, 1}, d1[2] = {1, 1};
    run_pool_case(false, 9, 8, k3, s2, (int64_t[]){1, 1, 1, 1}, d1, 0, 5, 4, true,
                  "average_pool 3x3 s2 pad 1, count_include_pad 0");
    run_pool_case(false, 6, 7, k3, s2, (int64_t[]){1, 0, 0, 1}, d1, 0, 4, 4, true,
                  "average_pool ceil mode, count_include_pad 0");
    run_pool_case(false, 8, 8, k3, s1, (int64_t[]){0, 0, 0, 0}, d1, 1, 6, 6, true,
                  "average_pool no pads, count_include_pad 1");
    run_pool_case(false, 8, 8, k3, s1, (int64_t[]){1, 1, 1, 1}, d1, 1, 8, 8, false,
                  "average_pool pads + count_include_pad 1 (declined)");
    /* Dilated average pooling (ONNX opset 19): XNNPACK has none. */
    struct tensor x, y;
    tensor_init(&x, 4, (int64_t[]){1, 9, 9, 2}, false, 1);
    tensor_init(&y, 4, (int64_t[]){1, 5, 5, 2}, false, 0);
    const int64_t d2[2] = {2, 2}, zeros[4] = {0, 0, 0, 0};
    const struct ek_attr attrs[4] = {attr_ints("kernel", 2, k3), attr_ints("strides", 2, s1),
                                     attr_ints("pads", 4, zeros), attr_ints("dilations", 2, d2)};
    struct opdef d;
    opdef_init(&d, EK_OP_AVERAGE_POOL, 1, (struct tensor *[]){&x}, &y, 4, attrs);
    check_unsupported(&d, "average_pool with dilation 2");
    tensor_free(&x);
    tensor_free(&y);
}

static void test_global_average_pool(void)
{
    struct tensor x, y;
    tensor_init(&x, 4, (int64_t[]){2, 5, 6, 7}, false, 11);
    tensor_init(&y, 4, (int64_t[]){2, 1, 1, 7}, false, 0);
    float ref[14];
    for (int n = 0; n < 2; n++)
        for (int ch = 0; ch < 7; ch++) {
            double acc = 0;
            for (int p = 0; p < 30; p++)
                acc += x.data[(n * 30 + p) * 7 + ch];
            ref[n * 7 + ch] = (float)(acc / 30);
        }
    struct opdef d;
    opdef_init(&d, EK_OP_GLOBAL_AVERAGE_POOL, 1, (struct tensor *[]){&x}, &y, 0, NULL);
    check_against(&d, ref, y.desc.count, "global_average_pool");
    tensor_free(&x);
    tensor_free(&y);
}

/* ---- binary ops ---- */

static float binary_ref(enum ek_op_type type, float a, float b)
{
    switch (type) {
    case EK_OP_ADD:
        return a + b;
    case EK_OP_SUB:
        return a - b;
    case EK_OP_MUL:
        return a * b;
    default:
        return a / b;
    }
}

static void run_binary_case(enum ek_op_type type, int ra, const int64_t *da, bool ca, int rb, const int64_t *db,
                            bool cb, int ry, const int64_t *dy, float lo, float hi, const char *what)
{
    struct tensor a, b, y;
    tensor_init(&a, ra, da, ca, 12);
    tensor_init(&b, rb, db, cb, 13);
    tensor_init(&y, ry, dy, false, 0);
    if (type == EK_OP_DIV)
        for (size_t i = 0; i < b.desc.count; i++)
            b.data[i] = b.data[i] < 0 ? b.data[i] - 0.5f : b.data[i] + 0.5f; /* away from 0 */
    float *ref = calloc(y.desc.count, sizeof(float));
    for (size_t i = 0; i < y.desc.count; i++) {
        size_t rest = i, ia = 0, ib = 0, sa = 1, sb = 1;
        for (int axis = ry - 1; axis >= 0; axis--) {
            const size_t coord = rest % (size_t)dy[axis];
            rest /= (size_t)dy[axis];
            const int xa = axis - (ry - ra), xb = axis - (ry - rb);
            if (xa >= 0) {
                ia += (da[xa] == 1 ? 0 : coord) * sa;
                sa *= (size_t)da[xa];
            }
            if (xb >= 0) {
                ib += (db[xb] == 1 ? 0 : coord) * sb;
                sb *= (size_t)db[xb];
            }
        }
        ref[i] = clampf(binary_ref(type, a.data[ia], b.data[ib]), lo, hi);
    }
    struct ek_attr attrs[2] = {attr_float("act_min", lo), attr_float("act_max", hi)};
    struct opdef d;
    opdef_init(&d, type, 2, (struct tensor *[]){&a, &b}, &y, 2, attrs);
    check_against(&d, ref, y.desc.count, what);
    free(ref);
    tensor_free(&a);
    tensor_free(&b);
    tensor_free(&y);
}

static void test_binary(void)
{
    /* Broadcasts keep inner runs of 256 or more: shorter ones are left to the portable kernel (below). */
    const int64_t s4[4] = {2, 3, 4, 256}, s3[3] = {3, 1, 256}, s1[1] = {256};
    run_binary_case(EK_OP_ADD, 4, s4, false, 3, s3, false, 4, s4, -INFINITY, INFINITY, "add, broadcast [3,1,256]");
    run_binary_case(EK_OP_SUB, 1, s1, true, 4, s4, false, 4, s4, -0.5f, 0.5f, "sub, constant [256] - X, clamp");
    run_binary_case(EK_OP_MUL, 4, s4, false, 0, NULL, true, 4, s4, 0.0f, INFINITY, "mul by a scalar, relu");
    run_binary_case(EK_OP_DIV, 4, s4, false, 4, s4, false, 4, s4, -INFINITY, INFINITY, "div, same shapes");
    /* Rank 8 with alternating broadcasts: folded to XNNPACK's 6 dims or fewer where it can be. */
    const int64_t a8[8] = {2, 1, 3, 1, 2, 1, 2, 256}, b8[8] = {1, 2, 1, 2, 1, 2, 2, 256};
    const int64_t y8[8] = {2, 2, 3, 2, 2, 2, 2, 256};
    struct tensor a, b, y;
    tensor_init(&a, 8, a8, false, 1);
    tensor_init(&b, 8, b8, false, 2);
    tensor_init(&y, 8, y8, false, 0);
    struct opdef d;
    opdef_init(&d, EK_OP_ADD, 2, (struct tensor *[]){&a, &b}, &y, 0, NULL);
    check_unsupported(&d, "add of rank 8 with 7 broadcast runs (XNNPACK takes 6 dims)");
    tensor_free(&a);
    tensor_free(&b);
    tensor_free(&y);
    const int64_t a8b[8] = {2, 1, 1, 1, 2, 3, 2, 256}, b8b[8] = {1, 2, 3, 2, 2, 3, 2, 256};
    const int64_t y8b[8] = {2, 2, 3, 2, 2, 3, 2, 256};
    run_binary_case(EK_OP_MUL, 8, a8b, false, 8, b8b, false, 8, y8b, -INFINITY, INFINITY, "mul of rank 8, folded");

    /* A per-channel operand of an NHWC tensor: many short rows are left to the portable kernel, rows of
     * 256 floats and more (or few rows) stay with XNNPACK. */
    const int64_t se_x[4] = {1, 64, 64, 16}, se_g[4] = {1, 1, 1, 16};
    tensor_init(&a, 4, se_x, false, 1);
    tensor_init(&b, 4, se_g, false, 2);
    tensor_init(&y, 4, se_x, false, 0);
    opdef_init(&d, EK_OP_MUL, 2, (struct tensor *[]){&a, &b}, &y, 0, NULL);
    check_unsupported(&d, "mul [1,64,64,16] x [1,1,1,16] (4096 rows of 16)");
    tensor_free(&a);
    tensor_free(&b);
    tensor_free(&y);
    const int64_t wide_x[4] = {1, 8, 8, 256}, wide_g[4] = {1, 1, 1, 256};
    run_binary_case(EK_OP_MUL, 4, wide_x, false, 4, wide_g, false, 4, wide_x, -INFINITY, INFINITY,
                    "mul [1,8,8,256] x [1,1,1,256] (rows of 256)");
}

/* ---- unary, PRELU, SOFTMAX ---- */

static void run_unary_case(enum ek_op_type type, int n_attrs, const struct ek_attr *attrs, float (*fn)(float),
                           const char *what)
{
    const int64_t dims[3] = {3, 7, 11};
    struct tensor x, y;
    tensor_init(&x, 3, dims, false, 14);
    for (size_t i = 0; i < x.desc.count; i++)
        x.data[i] *= 8.0f; /* [-8, 8): past hard_swish's and clip's bends */
    tensor_init(&y, 3, dims, false, 0);
    float *ref = calloc(y.desc.count, sizeof(float));
    for (size_t i = 0; i < y.desc.count; i++)
        ref[i] = fn(x.data[i]);
    struct opdef d;
    opdef_init(&d, type, 1, (struct tensor *[]){&x}, &y, n_attrs, attrs);
    check_against(&d, ref, y.desc.count, what);
    free(ref);
    tensor_free(&x);
    tensor_free(&y);
}

static float ref_relu(float v) { return v > 0 ? v : 0; }
static float ref_clip(float v) { return clampf(v, -1.5f, 2.5f); }
static float ref_leaky(float v) { return v < 0 ? 0.2f * v : v; }
static float ref_leaky_default(float v) { return v < 0 ? 0.01f * v : v; }
static float ref_sigmoid(float v) { return (float)(1.0 / (1.0 + exp(-(double)v))); }
static float ref_hard_swish(float v) { return v * clampf(v / 6.0f + 0.5f, 0.0f, 1.0f); }

static void test_unary(void)
{
    run_unary_case(EK_OP_RELU, 0, NULL, ref_relu, "relu");
    const struct ek_attr clip[2] = {attr_float("min", -1.5f), attr_float("max", 2.5f)};
    run_unary_case(EK_OP_CLIP, 2, clip, ref_clip, "clip");
    const struct ek_attr leaky[1] = {attr_float("alpha", 0.2f)};
    run_unary_case(EK_OP_LEAKY_RELU, 1, leaky, ref_leaky, "leaky_relu");
    run_unary_case(EK_OP_LEAKY_RELU, 0, NULL, ref_leaky_default, "leaky_relu, default alpha 0.01");
    run_unary_case(EK_OP_SIGMOID, 0, NULL, ref_sigmoid, "sigmoid");
    run_unary_case(EK_OP_HARD_SWISH, 0, NULL, ref_hard_swish, "hard_swish");

    /* Not in this XNNPACK, or not matching: the portable kernel keeps them. */
    const int64_t dims[2] = {4, 4};
    struct tensor x, y;
    tensor_init(&x, 2, dims, false, 1);
    tensor_init(&y, 2, dims, false, 0);
    struct opdef d;
    opdef_init(&d, EK_OP_TANH, 1, (struct tensor *[]){&x}, &y, 0, NULL);
    check_unsupported(&d, "tanh");
    opdef_init(&d, EK_OP_HARD_SIGMOID, 1, (struct tensor *[]){&x}, &y, 0, NULL);
    check_unsupported(&d, "hard_sigmoid");
    const struct ek_attr same[2] = {attr_float("min", 1.0f), attr_float("max", 1.0f)};
    opdef_init(&d, EK_OP_CLIP, 1, (struct tensor *[]){&x}, &y, 2, same);
    check_unsupported(&d, "clip with min == max");
    opdef_init(&d, EK_OP_TRANSPOSE, 1, (struct tensor *[]){&x}, &y, 0, NULL);
    check_unsupported(&d, "transpose");
    tensor_free(&x);
    tensor_free(&y);
}

static void test_prelu(void)
{
    const int64_t dims[4] = {2, 3, 4, 6}, sdims[3] = {1, 1, 6};
    struct tensor x, s, y;
    tensor_init(&x, 4, dims, false, 15);
    tensor_init(&s, 3, sdims, true, 16);
    tensor_init(&y, 4, dims, false, 0);
    float *ref = calloc(y.desc.count, sizeof(float));
    for (size_t i = 0; i < y.desc.count; i++)
        ref[i] = x.data[i] < 0 ? x.data[i] * s.data[i % 6] : x.data[i];
    struct opdef d;
    opdef_init(&d, EK_OP_PRELU, 2, (struct tensor *[]){&x, &s}, &y, 0, NULL);
    check_against(&d, ref, y.desc.count, "prelu, slope per channel");
    free(ref);
    tensor_free(&s);
    /* A slope along another axis: declined. */
    tensor_init(&s, 4, (int64_t[]){1, 3, 1, 1}, true, 16);
    opdef_init(&d, EK_OP_PRELU, 2, (struct tensor *[]){&x, &s}, &y, 0, NULL);
    check_unsupported(&d, "prelu, slope along H");
    tensor_free(&s);
    tensor_free(&x);
    tensor_free(&y);
}

static void test_softmax(void)
{
    const int64_t dims[3] = {4, 9, 1};
    struct tensor x, y;
    tensor_init(&x, 3, dims, false, 17);
    tensor_init(&y, 3, dims, false, 0);
    float ref[36];
    for (int r = 0; r < 4; r++) {
        double sum = 0;
        for (int i = 0; i < 9; i++)
            sum += exp((double)x.data[r * 9 + i]);
        for (int i = 0; i < 9; i++)
            ref[r * 9 + i] = (float)(exp((double)x.data[r * 9 + i]) / sum);
    }
    const struct ek_attr axis1[1] = {attr_int("axis", 1)};
    struct opdef d;
    opdef_init(&d, EK_OP_SOFTMAX, 1, (struct tensor *[]){&x}, &y, 1, axis1);
    check_against(&d, ref, y.desc.count, "softmax over axis 1 of [4,9,1]");
    const struct ek_attr axis0[1] = {attr_int("axis", 0)};
    opdef_init(&d, EK_OP_SOFTMAX, 1, (struct tensor *[]){&x}, &y, 1, axis0);
    check_unsupported(&d, "softmax over axis 0");
    tensor_free(&x);
    tensor_free(&y);
}

/* ---- RESIZE (linear) ---- */

static double source_coord(int64_t coordinate, int64_t o, float scale, int64_t in, int64_t out)
{
    switch (coordinate) {
    case 0:
        return (o + 0.5) / scale - 0.5;
    case 1:
        return o / (double)scale;
    case 2:
        return out == 1 ? 0.0 : o * (double)(in - 1) / (double)(out - 1);
    default:
        return out == 1 ? 0.0 : (o + 0.5) / scale - 0.5;
    }
}

static void run_resize_case(int64_t coordinate, int64_t h, int64_t w, int64_t oh, int64_t ow, const float *scales,
                            int64_t mode, bool supported, const char *what)
{
    const int64_t c = 3;
    struct tensor x, y;
    tensor_init(&x, 4, (int64_t[]){1, h, w, c}, false, 18);
    tensor_init(&y, 4, (int64_t[]){1, oh, ow, c}, false, 0);
    float *ref = calloc(y.desc.count, sizeof(float));
    for (int64_t oy = 0; oy < oh; oy++)
        for (int64_t ox = 0; ox < ow; ox++) {
            double sy = source_coord(coordinate, oy, scales[0], h, oh);
            double sx = source_coord(coordinate, ox, scales[1], w, ow);
            sy = sy < 0 ? 0 : sy > h - 1 ? (double)(h - 1) : sy;
            sx = sx < 0 ? 0 : sx > w - 1 ? (double)(w - 1) : sx;
            const int64_t y0 = (int64_t)sy, x0 = (int64_t)sx;
            const int64_t y1 = y0 + 1 < h ? y0 + 1 : h - 1, x1 = x0 + 1 < w ? x0 + 1 : w - 1;
            const double fy = sy - (double)y0, fx = sx - (double)x0;
            for (int64_t ch = 0; ch < c; ch++) {
                const double v00 = x.data[(y0 * w + x0) * c + ch], v01 = x.data[(y0 * w + x1) * c + ch];
                const double v10 = x.data[(y1 * w + x0) * c + ch], v11 = x.data[(y1 * w + x1) * c + ch];
                const double top = v00 + (v01 - v00) * fx, bottom = v10 + (v11 - v10) * fx;
                ref[(oy * ow + ox) * c + ch] = (float)(top + (bottom - top) * fy);
            }
        }
    const struct ek_attr attrs[4] = {attr_int("mode", mode), attr_int("coordinate", coordinate),
                                     attr_int("nearest", 0), attr_floats("scales", 2, scales)};
    struct opdef d;
    opdef_init(&d, EK_OP_RESIZE, 1, (struct tensor *[]){&x}, &y, 4, attrs);
    if (supported)
        check_against(&d, ref, y.desc.count, what);
    else
        check_unsupported(&d, what);
    free(ref);
    tensor_free(&x);
    tensor_free(&y);
}

static void test_resize(void)
{
    const float x2[2] = {2.0f, 2.0f}, mixed[2] = {2.0f, 0.5f}, odd[2] = {1.5f, 1.5f};
    run_resize_case(0, 5, 6, 10, 12, x2, 1, true, "resize linear half_pixel x2");
    run_resize_case(0, 5, 6, 10, 3, mixed, 1, true, "resize linear half_pixel x2 / x0.5");
    run_resize_case(1, 5, 6, 10, 12, x2, 1, true, "resize linear asymmetric x2");
    run_resize_case(2, 5, 6, 9, 7, x2, 1, true, "resize linear align_corners");
    run_resize_case(3, 5, 6, 10, 12, x2, 1, true, "resize linear pytorch_half_pixel x2");
    run_resize_case(0, 5, 5, 7, 7, odd, 1, false, "resize with scale 1.5 (7/5 != 1.5): declined");
    run_resize_case(0, 5, 6, 10, 12, x2, 0, false, "resize nearest: declined");
}

/* ---- int8 ops (.ekm 1.5, docs/model-format.md "Quantized ops") ----
 * Each against a scalar loop of the spec's formulas (float32 requantization, rint ties to even), within
 * one unit of the output's int8 value (the spec's tolerance for XNNPACK's requantization); the elements
 * off by one are counted and printed per op. */


static unsigned qrng = 12345u;

static unsigned qrand(void)
{
    qrng = qrng * 1103515245u + 12345u;
    return qrng >> 8;
}

/* An integer in [lo, hi]. */
static int64_t qrange(int64_t lo, int64_t hi)
{
    return lo + (int64_t)(qrand() % (unsigned)(hi - lo + 1));
}

/* A float in [lo, hi) on a log scale. */
static float qlog(float lo, float hi)
{
    return lo * powf(hi / lo, (float)(qrand() & 0xffff) / 65536.0f);
}

/* A tensor of `dtype` (bytes in t->data), random in the dtype's range (int32: [-bias_range, bias_range]). */
static void qtensor_init(struct tensor *t, int rank, const int64_t *dims, ek_dtype_t dtype, bool constant,
                         int64_t bias_range)
{
    memset(t, 0, sizeof *t);
    t->desc.name = "q";
    t->desc.dtype = dtype;
    t->desc.rank = rank;
    t->desc.count = 1;
    for (int i = 0; i < rank; i++) {
        t->desc.dims[i] = dims[i];
        t->desc.count *= (size_t)dims[i];
    }
    const size_t size = dtype == EK_DTYPE_INT32 || dtype == EK_DTYPE_FLOAT32 ? 4 : 1;
    t->desc.nbytes = t->desc.count * size;
    t->desc.storage = constant ? EK_STORAGE_CONSTANT : EK_STORAGE_ARENA;
    t->data = calloc(1, t->desc.nbytes + PAD_BYTES);
    for (size_t i = 0; i < t->desc.count; i++) {
        if (dtype == EK_DTYPE_INT8)
            ((int8_t *)t->data)[i] = (int8_t)qrange(-128, 127);
        else if (dtype == EK_DTYPE_UINT8)
            ((uint8_t *)t->data)[i] = (uint8_t)qrange(0, 255);
        else if (dtype == EK_DTYPE_INT32)
            ((int32_t *)t->data)[i] = (int32_t)qrange(-bias_range, bias_range);
        else
            t->data[i] = (float)qrange(-100000, 100000) / 1000.0f;
    }
    if (constant)
        t->desc.constant = t->data;
}

#define I8(t) ((int8_t *)(t).data)

/* sat(rint(v) + zero_point) to [lo, hi], in the spec's float32. */
static int32_t requant(float v, int32_t zero_point, int32_t lo, int32_t hi)
{
    const float r = rintf(v);
    if (!(r > -1000.0f))
        return lo;
    if (!(r < 1000.0f))
        return hi;
    const int32_t q = (int32_t)r + zero_point;
    return q < lo ? lo : q > hi ? hi : q;
}

/* The portable kernel of the op (.ekm 1.5's, compiled in) on the op's buffers into `out`. */
static ek_status_t run_portable(struct opdef *d, void *out)
{
    const struct ek_kernel *k = NULL;
    switch ((int)d->op.type) {
    case EK_OP_DEQUANTIZE: k = &ek_kernel_dequantize; break;
    case EK_OP_QCONV: k = &ek_kernel_qconv; break;
    case EK_OP_QFULLY_CONNECTED: k = &ek_kernel_qfully_connected; break;
    case EK_OP_QADD: k = &ek_kernel_qadd; break;
    case EK_OP_QMUL: k = &ek_kernel_qmul; break;
    case EK_OP_QGLOBAL_AVERAGE_POOL: k = &ek_kernel_qglobal_average_pool; break;
    case EK_OP_MAX_POOL: k = &ek_kernel_max_pool; break;
    default: return EK_ERR_INTERNAL;
    }
    ek_status_t st = k->prepare(&d->op);
    if (st != EK_OK)
        return st;
    struct ek_exec ex = {1, {NULL}};
    if (d->op.scratch_per_thread)
        ex.scratch[0] = aligned_alloc(64, (d->op.scratch_per_thread + 63) / 64 * 64);
    void *outs[1] = {out};
    st = k->run(&d->op, d->in_data, outs, &ex);
    free(ex.scratch[0]);
    if (k->release)
        k->release(&d->op);
    d->op.params = NULL;
    return st;
}

/* Provider vs portable kernel, over every int8 op checked: elements that differ (by one at most). */
static size_t vs_portable_total, vs_portable_off;

/* Totals of the int8 checks, printed at the end. */
static size_t q_total, q_off_by_one;

/* As check_against, for an int8/uint8 output (within one unit of ref; the off-by-one elements counted), or
 * a float32 one (DEQUANTIZE: exact). Returns the elements off by one in the first pass. */
static size_t check_q_against(struct opdef *d, const int32_t *ref, const float *fref, const char *what)
{
    void *state = NULL;
    ek_status_t status = prov->create(&d->op, &state);
    if (status != EK_OK) {
        printf("    %s: create returned %s\n", what, ek_status_name(status));
        CHECK(status == EK_OK);
        return 0;
    }
    const struct ek_tensor_desc *yd = d->out[0];
    const size_t count = yd->count, ybytes = yd->nbytes;
    size_t in0_bytes = d->in[0] && d->in_data[0] ? d->in[0]->nbytes : 0;
    void *moved_y = malloc(ybytes + 64);
    void *moved_x = in0_bytes ? malloc(in0_bytes + 64) : NULL;
    if (moved_x)
        memcpy(moved_x, d->in_data[0], in0_bytes);
    static const int threads_of[4] = {1, 3, 3, 3};
    size_t first_off = 0;
    for (int pass = 0; pass < 4; pass++) {
        const void *ins[4];
        memcpy(ins, d->in_data, sizeof ins);
        void *outs[1] = {d->out_data[0]};
        if (pass == 3) {
            if (moved_x)
                ins[0] = moved_x;
            outs[0] = moved_y;
        }
        int threads = threads_of[pass];
        memset(outs[0], 0x5a, ybytes); /* every element must be written (0x5a is rarely the answer) */
        const struct ek_parallel team = team_of(threads);
        CHECK_OK(prov->run(state, ins, outs, &team));
        size_t bad = 0, off = 0;
        for (size_t i = 0; i < count; i++) {
            if (yd->dtype == EK_DTYPE_FLOAT32) {
                const float got = ((const float *)outs[0])[i];
                if (!(got == fref[i]) && bad++ < 3)
                    printf("    %s (pass %d): [%zu] = %.9g, expected %.9g\n", what, pass, i, got, fref[i]);
                continue;
            }
            const int32_t got = yd->dtype == EK_DTYPE_UINT8 ? ((const uint8_t *)outs[0])[i]
                                                           : ((const int8_t *)outs[0])[i];
            const int32_t diff = got > ref[i] ? got - ref[i] : ref[i] - got;
            if (diff == 1)
                off++;
            else if (diff > 1 && bad++ < 3)
                printf("    %s (pass %d, %d threads): [%zu] = %d, expected %d\n", what, pass, threads, i, got,
                       ref[i]);
        }
        if (bad)
            printf("    %s (pass %d, %d threads): %zu of %zu differ by more than one\n", what, pass, threads, bad,
                   count);
        CHECK(bad == 0);
        if (pass == 0) {
            first_off = off;
            /* The portable kernel: the spec's formulas exactly; the provider within one unit of it. */
            void *port = malloc(ybytes + 64);
            memset(port, 0x5a, ybytes);
            const ek_status_t pst = run_portable(d, port);
            CHECK_OK(pst);
            size_t port_bad = 0, differ = 0, far = 0;
            for (size_t i = 0; pst == EK_OK && i < count; i++) {
                int32_t p, got;
                if (yd->dtype == EK_DTYPE_FLOAT32) {
                    port_bad += !(((const float *)port)[i] == fref[i]);
                    differ += !(((const float *)port)[i] == ((const float *)outs[0])[i]);
                    continue;
                }
                if (yd->dtype == EK_DTYPE_UINT8) {
                    p = ((const uint8_t *)port)[i];
                    got = ((const uint8_t *)outs[0])[i];
                } else {
                    p = ((const int8_t *)port)[i];
                    got = ((const int8_t *)outs[0])[i];
                }
                port_bad += p != ref[i];
                differ += p != got;
                far += p - got > 1 || got - p > 1;
            }
            if (port_bad)
                printf("    %s: the portable kernel differs from the spec's formulas in %zu of %zu\n", what, port_bad,
                       count);
            if (far || (yd->dtype == EK_DTYPE_FLOAT32 && differ))
                printf("    %s: XNNPACK differs from the portable kernel in %zu of %zu\n", what, differ, count);
            CHECK(port_bad == 0);
            CHECK(far == 0 && (yd->dtype != EK_DTYPE_FLOAT32 || differ == 0));
            vs_portable_total += count;
            vs_portable_off += differ;
            free(port);
        }
    }
    q_total += count;
    q_off_by_one += first_off;
    free(moved_x);
    free(moved_y);
    prov->destroy(state);
    return first_off;
}

static struct ek_attr qattrs[16];
static int n_qattrs;

static void qattr(struct ek_attr a)
{
    qattrs[n_qattrs++] = a;
}

/* The status of the provider's create for a QCONV (per-channel scales) of X[1,h,w,c] under a k x k
 * kernel (padding k/2) with `group` groups to M channels, or (k == 0) a QFULLY_CONNECTED of [h, c] x
 * [m, c]^T; the state destroyed again. */
static ek_status_t qcreate(int64_t h, int64_t w, int64_t c, int64_t m, int64_t k, int64_t group)
{
    const int64_t p = k / 2, pads[4] = {p, p, p, p}, ones[2] = {1, 1};
    struct tensor x, wt, ws, y;
    if (k) {
        qtensor_init(&x, 4, (int64_t[]){1, h, w, c}, EK_DTYPE_INT8, false, 0);
        qtensor_init(&wt, 4, (int64_t[]){m, k, k, c / group}, EK_DTYPE_INT8, true, 0);
        qtensor_init(&y, 4, (int64_t[]){1, h, w, m}, EK_DTYPE_INT8, false, 0);
    } else {
        qtensor_init(&x, 2, (int64_t[]){h, c}, EK_DTYPE_INT8, false, 0);
        qtensor_init(&wt, 2, (int64_t[]){m, c}, EK_DTYPE_INT8, true, 0);
        qtensor_init(&y, 2, (int64_t[]){h, m}, EK_DTYPE_INT8, false, 0);
    }
    qtensor_init(&ws, 1, (int64_t[]){m}, EK_DTYPE_FLOAT32, true, 0);
    for (int64_t i = 0; i < m; i++)
        ws.data[i] = 0.01f;
    const struct ek_attr attrs[5] = {attr_ints("pads", 4, pads), attr_ints("strides", 2, ones),
                                     attr_ints("dilations", 2, ones), attr_int("group", group),
                                     attr_float("y_scale", 0.5f)};
    struct opdef d;
    opdef_init(&d, k ? EK_OP_QCONV : EK_OP_QFULLY_CONNECTED, 3, (struct tensor *[]){&x, &wt, &ws}, &y, k ? 5 : 1,
               k ? attrs : attrs + 4);
    void *state = NULL;
    const ek_status_t status = prov->create(&d.op, &state);
    if (status == EK_OK)
        prov->destroy(state);
    tensor_free(&x);
    tensor_free(&wt);
    tensor_free(&ws);
    tensor_free(&y);
    return status;
}

/* Built against the 2024 XNNPACK (EDGEKIT_XNNPACK_RESHAPE, the provider's definitions): its VNNI
 * micro-kernels beat the portable ones, so it keeps every op. */
#if defined(EDGEKIT_XNNPACK_RESHAPE) && EDGEKIT_XNNPACK_RESHAPE
#define XNN_2024 1
#else
#define XNN_2024 0
#endif

/* On an x86-64 CPU with AVX512-VNNI the portable int8 GEMM (VNNI) beats the 2022 XNNPACK's qc8 GEMMs: dense
 * QCONVs and QFULLY_CONNECTED ops of 8 rows or more go to it (unless EDGEKIT_QGEMM_ISA names another
 * of its micro-kernels); depthwise ones and one-row fully connected ones stay on XNNPACK. Elsewhere
 * XNNPACK takes them all. (The other tests run with EDGEKIT_QGEMM_ISA=avx2, so XNNPACK's ops run.) */
static void test_q_portable_where_faster(void)
{
    bool vnni = false;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    vnni = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
#endif
    printf("    this CPU has AVX512-VNNI: %s\n", vnni ? "yes" : "no");
    setenv("EDGEKIT_QGEMM_ISA", "avx512vnni", 1);
    const ek_status_t dense = vnni && !XNN_2024 ? EK_ERR_UNSUPPORTED : EK_OK;
    CHECK_STATUS(qcreate(14, 14, 64, 96, 1, 1), dense);       /* 1x1 */
    CHECK_STATUS(qcreate(14, 14, 32, 32, 3, 1), dense);       /* 3x3 */
    CHECK_STATUS(qcreate(14, 14, 32, 32, 3, 32), EK_OK);      /* depthwise */
    CHECK_STATUS(qcreate(1, 1, 64, 96, 1, 1), EK_OK);         /* one output pixel */
    CHECK_STATUS(qcreate(8, 1, 1280, 1000, 0, 1), dense);     /* fully connected, 8 rows */
    CHECK_STATUS(qcreate(1, 1, 1280, 1000, 0, 1), EK_OK);     /* one row */
    setenv("EDGEKIT_QGEMM_ISA", "avx2", 1); /* the portable kernels without VNNI: XNNPACK takes them */
    CHECK_STATUS(qcreate(14, 14, 64, 96, 1, 1), EK_OK);
    CHECK_STATUS(qcreate(8, 1, 1280, 1000, 0, 1), EK_OK);
}

/* ---- QCONV ---- */

struct qconv_case {
    int64_t n, h, w, c, m, kh, kw, group;
    int64_t pads[4], strides[2], dilations[2];
    bool bias, per_channel;
    int64_t q_min, q_max;
};

/* Random scales and zero points: y_scale near the accumulator's spread so outputs span the int8 range. */
static void run_qconv(const struct qconv_case *k, const char *what, size_t *off, size_t *total)
{
    const int64_t cg = k->c / k->group, mg = k->m / k->group;
    const int64_t ekh = (k->kh - 1) * k->dilations[0] + 1, ekw = (k->kw - 1) * k->dilations[1] + 1;
    const int64_t oh = (k->h + k->pads[0] + k->pads[2] - ekh) / k->strides[0] + 1;
    const int64_t ow = (k->w + k->pads[1] + k->pads[3] - ekw) / k->strides[1] + 1;
    struct tensor x, w, ws, b, y;
    qtensor_init(&x, 4, (int64_t[]){k->n, k->h, k->w, k->c}, EK_DTYPE_INT8, false, 0);
    qtensor_init(&w, 4, (int64_t[]){k->m, k->kh, k->kw, cg}, EK_DTYPE_INT8, true, 0);
    const int64_t ws_count = k->per_channel ? k->m : 1;
    qtensor_init(&ws, 1, (int64_t[]){ws_count}, EK_DTYPE_FLOAT32, true, 0);
    qtensor_init(&b, 1, (int64_t[]){k->m}, EK_DTYPE_INT32, true, 20000);
    qtensor_init(&y, 4, (int64_t[]){k->n, oh, ow, k->m}, EK_DTYPE_INT8, false, 0);
    const float x_scale = qlog(0.002f, 0.1f);
    for (int64_t i = 0; i < ws_count; i++)
        ws.data[i] = qlog(0.001f, 0.05f);
    const float spread = sqrtf((float)(k->kh * k->kw * cg)) * 60.0f * 60.0f;
    const float y_scale = x_scale * ws.data[0] * spread / qlog(60.0f, 200.0f);
    const int64_t x_zp = qrange(-20, 20), y_zp = qrange(-30, 30);
    int32_t *ref = calloc(y.desc.count, sizeof *ref);
    for (int64_t n = 0; n < k->n; n++)
        for (int64_t oy = 0; oy < oh; oy++)
            for (int64_t ox = 0; ox < ow; ox++)
                for (int64_t m = 0; m < k->m; m++) {
                    const int64_t g = m / mg;
                    int32_t acc = k->bias ? ((int32_t *)b.data)[m] : 0;
                    for (int64_t ky = 0; ky < k->kh; ky++)
                        for (int64_t kx = 0; kx < k->kw; kx++) {
                            const int64_t iy = oy * k->strides[0] - k->pads[0] + ky * k->dilations[0];
                            const int64_t ix = ox * k->strides[1] - k->pads[1] + kx * k->dilations[1];
                            if (iy < 0 || iy >= k->h || ix < 0 || ix >= k->w)
                                continue; /* a padding tap is x_zero_point: contributes 0 */
                            for (int64_t ci = 0; ci < cg; ci++)
                                acc += ((int32_t)I8(x)[((n * k->h + iy) * k->w + ix) * k->c + g * cg + ci] -
                                        (int32_t)x_zp) *
                                       I8(w)[((m * k->kh + ky) * k->kw + kx) * cg + ci];
                        }
                    const float prod = x_scale * ws.data[k->per_channel ? m : 0];
                    const float mult = prod / y_scale;
                    ref[((n * oh + oy) * ow + ox) * k->m + m] =
                        requant((float)acc * mult, (int32_t)y_zp, (int32_t)k->q_min, (int32_t)k->q_max);
                }
    n_qattrs = 0;
    qattr(attr_ints("pads", 4, k->pads));
    qattr(attr_ints("strides", 2, k->strides));
    qattr(attr_ints("dilations", 2, k->dilations));
    qattr(attr_int("group", k->group));
    qattr(attr_float("x_scale", x_scale));
    qattr(attr_int("x_zero_point", x_zp));
    qattr(attr_float("y_scale", y_scale));
    qattr(attr_int("y_zero_point", y_zp));
    qattr(attr_int("q_min", k->q_min));
    qattr(attr_int("q_max", k->q_max));
    struct opdef d;
    opdef_init(&d, EK_OP_QCONV, 4, (struct tensor *[]){&x, &w, &ws, k->bias ? &b : NULL}, &y,
               n_qattrs, qattrs);
    *off += check_q_against(&d, ref, NULL, what);
    *total += y.desc.count;
    free(ref);
    tensor_free(&x);
    tensor_free(&w);
    tensor_free(&ws);
    tensor_free(&b);
    tensor_free(&y);
}

static void test_qconv(void)
{
    size_t off = 0, total = 0;
    /* MobileNet's kinds: 1x1, 3x3 (strided), depthwise 3x3, grouped; then random ones. */
    const struct qconv_case fixed[] = {
        {1, 7, 6, 16, 24, 1, 1, 1, {0, 0, 0, 0}, {1, 1}, {1, 1}, true, true, -128, 127},
        {2, 9, 8, 3, 8, 3, 3, 1, {1, 1, 1, 1}, {2, 2}, {1, 1}, true, true, -128, 127},
        {1, 10, 9, 24, 24, 3, 3, 24, {1, 1, 1, 1}, {1, 1}, {1, 1}, true, true, -10, 127},
        {1, 10, 9, 24, 24, 3, 3, 24, {0, 1, 1, 0}, {2, 2}, {1, 1}, true, false, -128, 127},
        {1, 6, 7, 8, 12, 3, 2, 4, {1, 0, 2, 1}, {1, 2}, {2, 1}, false, true, -128, 100},
        {1, 8, 8, 4, 8, 3, 3, 4, {1, 1, 1, 1}, {1, 1}, {1, 1}, true, true, -128, 127}, /* multiplier 2 */
    };
    const char *names[] = {"qconv 1x1", "qconv 3x3 stride 2", "qconv depthwise 3x3, relu (q_min -10)",
                           "qconv depthwise 3x3 stride 2, one w_scale", "qconv grouped, dilated, no bias",
                           "qconv depthwise multiplier 2"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        run_qconv(&fixed[i], names[i], &off, &total);
    for (int i = 0; i < 24; i++) {
        struct qconv_case k = {0};
        const int kind = (int)qrange(0, 2); /* 0 dense, 1 depthwise, 2 grouped */
        k.n = qrange(1, 2);
        k.h = qrange(3, 12);
        k.w = qrange(3, 12);
        k.kh = qrange(1, 3);
        k.kw = qrange(1, 3);
        k.group = kind == 0 ? 1 : kind == 1 ? qrange(1, 20) : qrange(2, 3);
        k.c = k.group * (kind == 1 ? 1 : qrange(1, 9));
        k.m = k.group * (kind == 1 ? qrange(1, 2) : qrange(1, 9));
        for (int j = 0; j < 4; j++)
            k.pads[j] = qrange(0, k.kh - 1 < k.kw - 1 ? k.kh - 1 : k.kw - 1);
        k.strides[0] = qrange(1, 2);
        k.strides[1] = qrange(1, 2);
        k.dilations[0] = qrange(1, 2);
        k.dilations[1] = 1;
        if ((k.kh - 1) * k.dilations[0] + 1 > k.h + k.pads[0] + k.pads[2])
            k.dilations[0] = 1;
        k.bias = qrange(0, 3) != 0;
        k.per_channel = qrange(0, 3) != 0;
        k.q_min = qrange(0, 1) ? -128 : qrange(-128, 0);
        k.q_max = qrange(0, 1) ? 127 : qrange(k.q_min + 1, 127);
        char what[160];
        snprintf(what, sizeof what,
                 "qconv random #%d: N%lld %lldx%lldx%lld -> %lld, k %lldx%lld, group %lld, stride %lldx%lld, "
                 "dilation %lld, %s",
                 i, (long long)k.n, (long long)k.h, (long long)k.w, (long long)k.c, (long long)k.m, (long long)k.kh,
                 (long long)k.kw, (long long)k.group, (long long)k.strides[0], (long long)k.strides[1],
                 (long long)k.dilations[0], k.per_channel ? "per-channel" : "one w_scale");
        run_qconv(&k, what, &off, &total);
    }
    printf("    qconv: %zu of %zu outputs off by one unit, none by more\n", off, total);
}

/* Declined QCONVs: the portable kernel runs them. */
static void test_qconv_declined(void)
{
    struct tensor x, w, ws, y;
    qtensor_init(&x, 4, (int64_t[]){1, 5, 5, 4}, EK_DTYPE_INT8, false, 0);
    qtensor_init(&w, 4, (int64_t[]){4, 1, 1, 4}, EK_DTYPE_INT8, true, 0);
    qtensor_init(&ws, 1, (int64_t[]){1}, EK_DTYPE_FLOAT32, true, 0);
    qtensor_init(&y, 4, (int64_t[]){1, 5, 5, 4}, EK_DTYPE_INT8, false, 0);
    ws.data[0] = 0.01f;
    struct opdef d;
    const struct ek_attr same[2] = {attr_int("q_min", 5), attr_int("q_max", 5)};
    opdef_init(&d, EK_OP_QCONV, 3, (struct tensor *[]){&x, &w, &ws}, &y, 2, same);
    check_unsupported(&d, "qconv with q_min == q_max (XNNPACK wants output_min < output_max)");
    /* x_scale x w_scale / y_scale = 1000: over XNNPACK's requantization range (< 256). */
    const struct ek_attr big[2] = {attr_float("x_scale", 1.0f), attr_float("y_scale", 1e-5f)};
    opdef_init(&d, EK_OP_QCONV, 3, (struct tensor *[]){&x, &w, &ws}, &y, 2, big);
    check_unsupported(&d, "qconv with a requantization scale of 1000");
    /* Weights that are not constants (XNNPACK packs them at create). */
    w.desc.storage = EK_STORAGE_ARENA;
    w.desc.constant = NULL;
    opdef_init(&d, EK_OP_QCONV, 3, (struct tensor *[]){&x, &w, &ws}, &y, 0, NULL);
    check_unsupported(&d, "qconv with non-constant weights");
    tensor_free(&x);
    tensor_free(&w);
    tensor_free(&ws);
    tensor_free(&y);
}

/* ---- QFULLY_CONNECTED ---- */

static void run_qfc(int64_t rows, int64_t k, int64_t n, bool per_channel, bool bias, int64_t q_min, const char *what,
                    size_t *off, size_t *total)
{
    struct tensor x, w, ws, b, y;
    qtensor_init(&x, 2, (int64_t[]){rows, k}, EK_DTYPE_INT8, false, 0);
    qtensor_init(&w, 2, (int64_t[]){n, k}, EK_DTYPE_INT8, true, 0);
    const int64_t ws_count = per_channel ? n : 1;
    qtensor_init(&ws, 1, (int64_t[]){ws_count}, EK_DTYPE_FLOAT32, true, 0);
    qtensor_init(&b, 1, (int64_t[]){n}, EK_DTYPE_INT32, true, 30000);
    qtensor_init(&y, 2, (int64_t[]){rows, n}, EK_DTYPE_INT8, false, 0);
    const float x_scale = qlog(0.002f, 0.1f);
    for (int64_t i = 0; i < ws_count; i++)
        ws.data[i] = qlog(0.001f, 0.05f);
    const float y_scale = x_scale * ws.data[0] * sqrtf((float)k) * 3600.0f / qlog(60.0f, 200.0f);
    const int64_t x_zp = qrange(-20, 20), y_zp = qrange(-30, 30);
    int32_t *ref = calloc(y.desc.count, sizeof *ref);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < n; j++) {
            int32_t acc = bias ? ((int32_t *)b.data)[j] : 0;
            for (int64_t i = 0; i < k; i++)
                acc += ((int32_t)I8(x)[r * k + i] - (int32_t)x_zp) * I8(w)[j * k + i];
            const float prod = x_scale * ws.data[per_channel ? j : 0];
            const float mult = prod / y_scale;
            ref[r * n + j] = requant((float)acc * mult, (int32_t)y_zp, (int32_t)q_min, 127);
        }
    n_qattrs = 0;
    qattr(attr_float("x_scale", x_scale));
    qattr(attr_int("x_zero_point", x_zp));
    qattr(attr_float("y_scale", y_scale));
    qattr(attr_int("y_zero_point", y_zp));
    qattr(attr_int("q_min", q_min));
    struct opdef d;
    opdef_init(&d, EK_OP_QFULLY_CONNECTED, 4, (struct tensor *[]){&x, &w, &ws, bias ? &b : NULL}, &y,
               n_qattrs, qattrs);
    *off += check_q_against(&d, ref, NULL, what);
    *total += y.desc.count;
    free(ref);
    tensor_free(&x);
    tensor_free(&w);
    tensor_free(&ws);
    tensor_free(&b);
    tensor_free(&y);
}

static void test_qfully_connected(void)
{
    size_t off = 0, total = 0;
    run_qfc(1, 1280, 1000, true, true, -128, "qfully_connected 1280 -> 1000, per-channel (a 1x1 qc8 convolution)",
            &off, &total);
    run_qfc(1, 1280, 1000, false, true, -128, "qfully_connected 1280 -> 1000, one w_scale (qs8)", &off, &total);
    for (int i = 0; i < 12; i++) {
        const int64_t rows = qrange(1, 40), k = qrange(1, 300), n = qrange(1, 70);
        const bool per_channel = qrange(0, 1), bias = qrange(0, 3) != 0;
        char what[128];
        snprintf(what, sizeof what, "qfully_connected random #%d: [%lld, %lld] x [%lld, %lld]^T, %s", i,
                 (long long)rows, (long long)k, (long long)n, (long long)k,
                 per_channel ? "per-channel" : "one w_scale");
        run_qfc(rows, k, n, per_channel, bias, qrange(0, 1) ? -128 : 0, what, &off, &total);
    }
    printf("    qfully_connected: %zu of %zu outputs off by one unit, none by more\n", off, total);
}

/* ---- QADD, QMUL ---- */

static void run_qbinary(int type, int ra, const int64_t *da, bool ca, int rb, const int64_t *db, bool cb, int ry,
                        const int64_t *dy, bool supported, const char *what, size_t *off, size_t *total)
{
    struct tensor a, b, y;
    qtensor_init(&a, ra, da, EK_DTYPE_INT8, ca, 0);
    qtensor_init(&b, rb, db, EK_DTYPE_INT8, cb, 0);
    qtensor_init(&y, ry, dy, EK_DTYPE_INT8, false, 0);
    const float a_scale = qlog(0.005f, 0.1f), b_scale = qlog(0.005f, 0.1f);
    const float y_scale = type == EK_OP_QADD ? (a_scale + b_scale) * qlog(0.6f, 1.5f)
                                          : a_scale * b_scale * qlog(20.0f, 100.0f);
    const int64_t a_zp = qrange(-30, 30), b_zp = qrange(-30, 30), y_zp = qrange(-30, 30);
    const int64_t q_min = qrange(0, 1) ? -128 : qrange(-128, 0), q_max = 127;
    int32_t *ref = calloc(y.desc.count, sizeof *ref);
    for (size_t i = 0; i < y.desc.count; i++) {
        size_t rest = i, ia = 0, ib = 0, sa = 1, sb = 1;
        for (int axis = ry - 1; axis >= 0; axis--) {
            const size_t coord = rest % (size_t)dy[axis];
            rest /= (size_t)dy[axis];
            const int xa = axis - (ry - ra), xb = axis - (ry - rb);
            if (xa >= 0) {
                ia += (da[xa] == 1 ? 0 : coord) * sa;
                sa *= (size_t)da[xa];
            }
            if (xb >= 0) {
                ib += (db[xb] == 1 ? 0 : coord) * sb;
                sb *= (size_t)db[xb];
            }
        }
        const int32_t qa = I8(a)[ia] - (int32_t)a_zp, qb = I8(b)[ib] - (int32_t)b_zp;
        float v;
        if (type == EK_OP_QADD) {
            const float ra_ = a_scale / y_scale, rb_ = b_scale / y_scale;
            v = (float)qa * ra_ + (float)qb * rb_;
        } else {
            const float prod = a_scale * b_scale;
            const float mult = prod / y_scale;
            v = (float)(qa * qb) * mult;
        }
        ref[i] = requant(v, (int32_t)y_zp, (int32_t)q_min, (int32_t)q_max);
    }
    n_qattrs = 0;
    qattr(attr_float("x_scale", a_scale));
    qattr(attr_int("x_zero_point", a_zp));
    qattr(attr_float("b_scale", b_scale));
    qattr(attr_int("b_zero_point", b_zp));
    qattr(attr_float("y_scale", y_scale));
    qattr(attr_int("y_zero_point", y_zp));
    qattr(attr_int("q_min", q_min));
    qattr(attr_int("q_max", q_max));
    struct opdef d;
    opdef_init(&d, (enum ek_op_type)type, 2, (struct tensor *[]){&a, &b}, &y, n_qattrs, qattrs);
    if (supported) {
        *off += check_q_against(&d, ref, NULL, what);
        *total += y.desc.count;
    } else {
        check_unsupported(&d, what);
    }
    free(ref);
    tensor_free(&a);
    tensor_free(&b);
    tensor_free(&y);
}

static void test_qbinary(void)
{
    for (int type = EK_OP_QADD; type <= EK_OP_QMUL; type++) {
        const char *name = type == EK_OP_QADD ? "qadd" : "qmul";
        size_t off = 0, total = 0;
        char what[128];
        const int64_t s4[4] = {1, 14, 14, 32}, s3[3] = {3, 1, 256}, y3[3] = {3, 5, 256}, one[1] = {1};
        snprintf(what, sizeof what, "%s, same shapes [1,14,14,32] (a residual add)", name);
        run_qbinary(type, 4, s4, false, 4, s4, false, 4, s4, true, what, &off, &total);
        snprintf(what, sizeof what, "%s, broadcast [3,1,256] with [3,5,256]", name);
        run_qbinary(type, 3, s3, false, 3, y3, false, 3, y3, true, what, &off, &total);
        snprintf(what, sizeof what, "%s, X with a constant scalar", name);
        run_qbinary(type, 4, s4, false, 1, one, true, 4, s4, true, what, &off, &total);
        snprintf(what, sizeof what, "%s, a constant X", name);
        run_qbinary(type, 3, y3, true, 3, y3, false, 3, y3, true, what, &off, &total);
        for (int i = 0; i < 10; i++) {
            int64_t dy[4], da[4], db[4];
            for (int j = 0; j < 4; j++) {
                dy[j] = qrange(1, 6);
                da[j] = qrange(0, 2) ? dy[j] : 1;
                db[j] = qrange(0, 2) ? dy[j] : 1;
                if (da[j] != dy[j] && db[j] != dy[j]) /* numpy: Y's dim is an input's */
                    da[j] = dy[j];
            }
            dy[3] = da[3] = db[3] = qrange(256, 300); /* long rows: short ones are declined */
            snprintf(what, sizeof what, "%s random #%d [%lld,%lld,%lld,%lld] with [%lld,%lld,%lld,%lld]", name, i,
                     (long long)da[0], (long long)da[1], (long long)da[2], (long long)da[3], (long long)db[0],
                     (long long)db[1], (long long)db[2], (long long)db[3]);
            run_qbinary(type, 4, da, false, 4, db, false, 4, dy, true, what, &off, &total);
        }
        /* Many short broadcast rows: declined, as for the float ops. */
        const int64_t se_x[4] = {1, 64, 64, 16}, se_g[4] = {1, 1, 1, 16};
        snprintf(what, sizeof what, "%s [1,64,64,16] x [1,1,1,16] (4096 rows of 16)", name);
        run_qbinary(type, 4, se_x, false, 4, se_g, false, 4, se_x, false, what, &off, &total);
        printf("    %s: %zu of %zu outputs off by one unit, none by more\n", name, off, total);
    }
}

/* ---- QGLOBAL_AVERAGE_POOL ---- */

static void test_qglobal_average_pool(void)
{
    size_t off = 0, total = 0;
    for (int i = 0; i < 12; i++) {
        const int64_t n = qrange(1, 2), h = i == 0 ? 7 : qrange(1, 12), w = i == 0 ? 7 : qrange(1, 12),
                      c = i == 0 ? 1280 : qrange(1, 100);
        struct tensor x, y;
        qtensor_init(&x, 4, (int64_t[]){n, h, w, c}, EK_DTYPE_INT8, false, 0);
        qtensor_init(&y, 4, (int64_t[]){n, 1, 1, c}, EK_DTYPE_INT8, false, 0);
        const float x_scale = qlog(0.01f, 0.1f), y_scale = x_scale * qlog(0.3f, 1.5f);
        const int64_t x_zp = qrange(-30, 30), y_zp = qrange(-30, 30);
        int32_t *ref = calloc(y.desc.count, sizeof *ref);
        for (int64_t b = 0; b < n; b++)
            for (int64_t ch = 0; ch < c; ch++) {
                int32_t sum = 0;
                for (int64_t p = 0; p < h * w; p++)
                    sum += I8(x)[(b * h * w + p) * c + ch] - (int32_t)x_zp;
                const float denom = y_scale * (float)(h * w);
                const float mult = x_scale / denom;
                ref[b * c + ch] = requant((float)sum * mult, (int32_t)y_zp, -128, 127);
            }
        n_qattrs = 0;
        qattr(attr_float("x_scale", x_scale));
        qattr(attr_int("x_zero_point", x_zp));
        qattr(attr_float("y_scale", y_scale));
        qattr(attr_int("y_zero_point", y_zp));
        char what[96];
        snprintf(what, sizeof what, "qglobal_average_pool [%lld,%lld,%lld,%lld]", (long long)n, (long long)h,
                 (long long)w, (long long)c);
        struct opdef d;
        opdef_init(&d, EK_OP_QGLOBAL_AVERAGE_POOL, 1, (struct tensor *[]){&x}, &y, n_qattrs, qattrs);
        off += check_q_against(&d, ref, NULL, what);
        total += y.desc.count;
        free(ref);
        tensor_free(&x);
        tensor_free(&y);
    }
    printf("    qglobal_average_pool: %zu of %zu outputs off by one unit, none by more\n", off, total);
}

/* ---- MAX_POOL of int8, QAVERAGE_POOL, QLUT ---- */

static void run_qmax_pool(int64_t h, int64_t wd, const int64_t *kernel, const int64_t *strides, const int64_t *pads,
                          const int64_t *dil, int64_t oh, int64_t ow, bool supported, const char *what)
{
    const int64_t n_batch = 2, c = 19;
    struct tensor x, y;
    qtensor_init(&x, 4, (int64_t[]){n_batch, h, wd, c}, EK_DTYPE_INT8, false, 0);
    qtensor_init(&y, 4, (int64_t[]){n_batch, oh, ow, c}, EK_DTYPE_INT8, false, 0);
    int32_t *ref = calloc(y.desc.count, sizeof *ref);
    for (int64_t n = 0; n < n_batch; n++)
        for (int64_t oy = 0; oy < oh; oy++)
            for (int64_t ox = 0; ox < ow; ox++)
                for (int64_t ch = 0; ch < c; ch++) {
                    int32_t m = -1000;
                    for (int64_t ky = 0; ky < kernel[0]; ky++)
                        for (int64_t kx = 0; kx < kernel[1]; kx++) {
                            const int64_t iy = oy * strides[0] - pads[0] + ky * dil[0];
                            const int64_t ix = ox * strides[1] - pads[1] + kx * dil[1];
                            if (iy < 0 || iy >= h || ix < 0 || ix >= wd)
                                continue;
                            const int32_t v = I8(x)[((n * h + iy) * wd + ix) * c + ch];
                            m = v > m ? v : m;
                        }
                    ref[((n * oh + oy) * ow + ox) * c + ch] = m;
                }
    struct ek_attr attrs[4] = {attr_ints("kernel", 2, kernel), attr_ints("strides", 2, strides),
                               attr_ints("pads", 4, pads), attr_ints("dilations", 2, dil)};
    struct opdef d;
    opdef_init(&d, EK_OP_MAX_POOL, 1, (struct tensor *[]){&x}, &y, 4, attrs);
    if (supported) {
        const size_t off = check_q_against(&d, ref, NULL, what);
        CHECK(off == 0); /* a maximum is exact */
    } else {
        check_unsupported(&d, what);
    }
    free(ref);
    tensor_free(&x);
    tensor_free(&y);
}

static void test_qpools_declined_and_max(void)
{
    const int64_t k3[2] = {3, 3}, s2[2] = {2, 2}, s1[2] = {1, 1}, d1[2] = {1, 1}, d2[2] = {2, 2};
    run_qmax_pool(9, 8, k3, s2, (int64_t[]){1, 1, 1, 1}, d1, 5, 4, true, "int8 max_pool 3x3 s2 pad 1");
    run_qmax_pool(6, 7, k3, s2, (int64_t[]){0, 0, 0, 0}, d1, 3, 3, true, "int8 max_pool ceil mode");
    run_qmax_pool(9, 9, k3, s1, (int64_t[]){0, 0, 0, 0}, d2, 5, 5, true, "int8 max_pool dilation 2, no pad");
    run_qmax_pool(9, 9, k3, s1, (int64_t[]){2, 2, 2, 2}, d2, 9, 9, false,
                  "int8 max_pool dilation 2 with pads (declined as for float)");

    /* QAVERAGE_POOL (this XNNPACK's is qu8 only) and QLUT: the portable kernel. */
    struct tensor x, y, table;
    qtensor_init(&x, 4, (int64_t[]){1, 6, 6, 4}, EK_DTYPE_INT8, false, 0);
    qtensor_init(&y, 4, (int64_t[]){1, 4, 4, 4}, EK_DTYPE_INT8, false, 0);
    const int64_t zeros[4] = {0, 0, 0, 0};
    const struct ek_attr attrs[3] = {attr_ints("kernel", 2, k3), attr_ints("strides", 2, s1),
                                     attr_ints("pads", 4, zeros)};
    struct opdef d;
    opdef_init(&d, EK_OP_QAVERAGE_POOL, 1, (struct tensor *[]){&x}, &y, 3, attrs);
    check_unsupported(&d, "qaverage_pool");
    tensor_free(&y);
    qtensor_init(&y, 4, (int64_t[]){1, 6, 6, 4}, EK_DTYPE_INT8, false, 0);
    qtensor_init(&table, 1, (int64_t[]){256}, EK_DTYPE_INT8, true, 0);
    opdef_init(&d, EK_OP_QLUT, 2, (struct tensor *[]){&x, &table}, &y, 0, NULL);
    check_unsupported(&d, "qlut");
    /* An int8 op the float provider has no int8 operator for: AVERAGE_POOL of int8 is not an op (declined). */
    opdef_init(&d, EK_OP_RELU, 1, (struct tensor *[]){&x}, &y, 0, NULL);
    check_unsupported(&d, "relu of int8 tensors");
    tensor_free(&x);
    tensor_free(&y);
    tensor_free(&table);
}

/* ---- QUANTIZE, DEQUANTIZE ---- */

/* DEQUANTIZE runs on XNNPACK (exact); QUANTIZE is declined: XNNPACK's convert_nc_f32_qs8 makes NaN its
 * output_max (127 here), the spec the zero point. */
static void test_qconvert(void)
{
    for (int u8 = 0; u8 < 2; u8++) {
        const ek_dtype_t qt = u8 ? EK_DTYPE_UINT8 : EK_DTYPE_INT8;
        for (int i = 0; i < 6; i++) {
            const int64_t dims[3] = {qrange(1, 3), qrange(1, 50), qrange(1, 70)};
            const float scale = qlog(0.01f, 1.0f);
            const int64_t zp = u8 ? qrange(0, 255) : qrange(-128, 127);
            n_qattrs = 0;
            qattr(attr_float("scale", scale));
            qattr(attr_int("zero_point", zp));
            struct tensor q, f;
            qtensor_init(&q, 3, dims, qt, false, 0);
            qtensor_init(&f, 3, dims, EK_DTYPE_FLOAT32, false, 0);
            /* DEQUANTIZE: y = (x - zero_point) x scale, exact in float32. */
            float *fref = calloc(q.desc.count, sizeof *fref);
            for (size_t j = 0; j < q.desc.count; j++)
                fref[j] = (float)((u8 ? ((uint8_t *)q.data)[j] : ((int8_t *)q.data)[j]) - (int32_t)zp) * scale;
            char what[96];
            snprintf(what, sizeof what, "dequantize from %s, %zu elements", u8 ? "uint8" : "int8", q.desc.count);
            struct opdef d;
            opdef_init(&d, EK_OP_DEQUANTIZE, 1, (struct tensor *[]){&q}, &f, n_qattrs, qattrs);
            check_q_against(&d, NULL, fref, what);
            free(fref);
            opdef_init(&d, EK_OP_QUANTIZE, 1, (struct tensor *[]){&f}, &q, n_qattrs, qattrs);
            check_unsupported(&d, u8 ? "quantize to uint8" : "quantize to int8");
            tensor_free(&f);
            tensor_free(&q);
        }
    }
}

static void test_q_totals(void)
{
    printf("    int8 ops: %zu of %zu outputs off by one unit (within the spec), none by more\n", q_off_by_one, q_total);
    printf("    int8 ops: %zu of %zu outputs differ from the portable kernels' (by one unit), none by more\n",
           vs_portable_off, vs_portable_total);
    CHECK(vs_portable_total > 0);
    CHECK(q_total > 0);
}

/* ---- many threads, one provider: states are per caller, pools shared ---- */

static void test_many_thread_counts(void)
{
    const struct conv_case k = {1, 16, 16, 8, 16, 3, 3, 1, {1, 1, 1, 1}, {1, 1}, {1, 1}, true, -INFINITY, INFINITY};
    for (int i = 0; i < 3; i++)
        run_conv_case(&k, i == 2, "conv 16x16x8 -> 16 (again)");
}

/* After the ops above ran with 3 threads: XNNPACK's parallel loops ran on the team handed to run()
 * (threadpool.c), not on a pool of libpthreadpool's own threads. */
static void test_xnnpack_loops_run_on_the_team(void)
{
    CHECK(team_loops > 0);
}

/* argv[1], if given, is the provider to load instead of the build tree's (e.g. on a board). */
int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : EKX_PROVIDER_PATH;
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        printf("dlopen %s: %s\n", path, dlerror());
        return 1;
    }
    ek_provider_entry_fn entry = (ek_provider_entry_fn)(uintptr_t)dlsym(lib, EK_PROVIDER_ENTRY);
    if (!entry) {
        printf("%s has no %s\n", path, EK_PROVIDER_ENTRY);
        return 1;
    }
    prov = entry();
    if (!prov || prov->abi != EK_PROVIDER_ABI || strcmp(prov->name, "xnnpack") != 0) {
        printf("bad provider table\n");
        return 1;
    }
    RUN(test_conv);
    RUN(test_conv_transpose);
    RUN(test_fully_connected);
    RUN(test_max_pool);
    RUN(test_average_pool);
    RUN(test_global_average_pool);
    RUN(test_binary);
    RUN(test_unary);
    RUN(test_prelu);
    RUN(test_softmax);
    RUN(test_resize);
    /* The portable int8 GEMM's micro-kernel the provider assumes: not VNNI, so it takes every op it
     * can and they are tested; test_q_portable_where_faster checks the other case. */
    setenv("EDGEKIT_QGEMM_ISA", "avx2", 1);
    RUN(test_q_portable_where_faster);
    RUN(test_qconv);
    RUN(test_qconv_declined);
    RUN(test_qfully_connected);
    RUN(test_qbinary);
    RUN(test_qglobal_average_pool);
    RUN(test_qpools_declined_and_max);
    RUN(test_qconvert);
    RUN(test_q_totals);
    RUN(test_many_thread_counts);
    RUN(test_xnnpack_loops_run_on_the_team);
    return ek_test_summary();
}
