/* The ek_rt_* API and the engine: loading models, network info, launches with runtime and user
 * memory, waits, launch_data, validation messages, freed memories, ek_dev_sync errors, many threads,
 * several runtimes, strict coherence. Models are built in memory by a small .ekm writer below. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* syscall(SYS_gettid) */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ek_test.h"
#include "ek_helpers.h"

/* ---- a minimal .ekm writer (docs/model-format.md) ---- */
struct buf {
    uint8_t *p;
    size_t n, cap;
};

static void put(struct buf *b, const void *data, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p)
            abort(); /* test helper: the host is out of memory */
        b->cap = cap;
    }
    if (data)
        memcpy(b->p + b->n, data, n);
    else
        memset(b->p + b->n, 0, n);
    b->n += n;
}
static void put_u8(struct buf *b, uint8_t v) { put(b, &v, 1); }
static void put_u16(struct buf *b, uint16_t v) { put(b, &v, 2); }
static void put_u32(struct buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(struct buf *b, uint64_t v) { put(b, &v, 8); }
static void pad_to(struct buf *b, size_t align)
{
    while (b->n % align)
        put_u8(b, 0);
}

enum { S_STRINGS, S_NETWORKS, S_IOS, S_STAGES, S_TENSORS, S_OPS, S_OPERANDS, S_BINDINGS, S_ATTRS, S_ATTR_DATA,
       S_CONSTANTS, S_COUNT };
static const uint32_t record_sizes[S_COUNT] = {1, 32, 32, 48, 96, 24, 4, 4, 24, 1, 1};

struct ekb {
    struct buf s[S_COUNT];
};

static void ekb_init(struct ekb *b)
{
    memset(b, 0, sizeof *b);
    put_u8(&b->s[S_STRINGS], 0);
}

static uint32_t ekb_str(struct ekb *b, const char *text)
{
    uint32_t at = (uint32_t)b->s[S_STRINGS].n;
    put(&b->s[S_STRINGS], text, strlen(text) + 1);
    return at;
}

static uint32_t count_of(struct ekb *b, int section) { return (uint32_t)(b->s[section].n / record_sizes[section]); }

static void ekb_network(struct ekb *b, const char *name, uint32_t n_in, uint32_t n_out, uint32_t stages,
                        uint32_t first_io, uint32_t first_stage)
{
    struct buf *r = &b->s[S_NETWORKS];
    put_u32(r, ekb_str(b, name));
    put_u32(r, n_in);
    put_u32(r, n_out);
    put_u32(r, stages);
    put_u32(r, first_io);
    put_u32(r, first_stage);
    put_u64(r, 0);
}

static void ekb_io_ex(struct ekb *b, const char *name, uint64_t max_bytes, ek_dtype_t dtype, uint8_t flags)
{
    struct buf *r = &b->s[S_IOS];
    float scale = 1.0f;
    put_u32(r, ekb_str(b, name));
    put_u8(r, (uint8_t)dtype);
    put_u8(r, flags);
    put(r, NULL, 2);
    put(r, &scale, 4);
    put_u32(r, 0); /* zero_point; max_bytes is at byte 16 (as the loader reads it) */
    put_u64(r, max_bytes);
    put_u64(r, 0);
}

static void ekb_io(struct ekb *b, const char *name, uint64_t max_bytes)
{
    ekb_io_ex(b, name, max_bytes, EK_DTYPE_FLOAT32, 0);
}

static void ekb_stage(struct ekb *b, uint32_t network, uint32_t first_tensor, uint32_t tensor_count,
                      uint32_t first_op, uint32_t op_count, uint32_t first_binding, uint64_t arena)
{
    struct buf *r = &b->s[S_STAGES];
    put_u32(r, network);
    put_u32(r, first_tensor);
    put_u32(r, tensor_count);
    put_u32(r, first_op);
    put_u32(r, op_count);
    put_u32(r, first_binding);
    put_u64(r, arena);
    put(r, NULL, 16);
}

/* A tensor of `dtype` with `flags` (1: DYNAMIC); returns its index in TENSORS. */
static uint32_t ekb_tensor_ex(struct ekb *b, const char *name, int storage, uint32_t io_index, uint64_t offset,
                              int rank, const int64_t *dims, ek_dtype_t dtype, uint8_t flags)
{
    struct buf *r = &b->s[S_TENSORS];
    uint32_t index = count_of(b, S_TENSORS);
    uint64_t count = 1;
    for (int d = 0; d < rank; d++)
        count *= (uint64_t)dims[d];
    put_u32(r, ekb_str(b, name));
    put_u8(r, (uint8_t)dtype);
    put_u8(r, (uint8_t)storage);
    put_u8(r, (uint8_t)rank);
    put_u8(r, flags);
    put_u32(r, io_index);
    put_u32(r, 0);
    put_u64(r, offset);
    put_u64(r, count * ek_dtype_size(dtype));
    for (int d = 0; d < 8; d++)
        put_u64(r, d < rank ? (uint64_t)dims[d] : 0);
    return index;
}

/* A float32 tensor; returns its index in TENSORS. */
static uint32_t ekb_tensor(struct ekb *b, const char *name, int storage, uint32_t io_index, uint64_t offset,
                           int rank, const int64_t *dims)
{
    return ekb_tensor_ex(b, name, storage, io_index, offset, rank, dims, EK_DTYPE_FLOAT32, 0);
}

/* An INT attribute of the op written last (call right after ekb_op). */
static void ekb_attr_int(struct ekb *b, const char *name, int64_t value)
{
    struct buf *ops = &b->s[S_OPS];
    uint32_t count;
    memcpy(&count, ops->p + ops->n - 4, 4);
    count++;
    memcpy(ops->p + ops->n - 4, &count, 4);
    struct buf *r = &b->s[S_ATTRS];
    put_u32(r, ekb_str(b, name));
    put_u8(r, 1);
    put(r, NULL, 3);
    put_u32(r, 1);
    put_u32(r, 0);
    put_u64(r, (uint64_t)value);
}

/* An op; operands are stage-relative tensor indices. */
static void ekb_op(struct ekb *b, const char *name, int type, int n_in, const uint32_t *in, int n_out,
                   const uint32_t *out)
{
    struct buf *r = &b->s[S_OPS];
    put_u32(r, ekb_str(b, name));
    put_u16(r, (uint16_t)type);
    put_u16(r, 0);
    put_u32(r, count_of(b, S_OPERANDS));
    put_u16(r, (uint16_t)n_in);
    put_u16(r, (uint16_t)n_out);
    put_u32(r, count_of(b, S_ATTRS));
    put_u32(r, 0);
    for (int i = 0; i < n_in; i++)
        put_u32(&b->s[S_OPERANDS], in[i]);
    for (int i = 0; i < n_out; i++)
        put_u32(&b->s[S_OPERANDS], out[i]);
}

static uint64_t ekb_constant(struct ekb *b, const float *data, size_t count)
{
    pad_to(&b->s[S_CONSTANTS], 64);
    uint64_t at = b->s[S_CONSTANTS].n;
    put(&b->s[S_CONSTANTS], data, count * 4);
    return at;
}

static uint8_t *ekb_finish(struct ekb *b, size_t *size)
{
    struct buf file = {0};
    put(&file, NULL, 64);
    uint64_t table = file.n;
    put(&file, NULL, 24 * S_COUNT);
    uint64_t offsets[S_COUNT];
    for (int k = 0; k < S_COUNT; k++) {
        pad_to(&file, k == S_CONSTANTS ? 64 : 8);
        offsets[k] = file.n;
        put(&file, b->s[k].p, b->s[k].n);
        put(&file, NULL, 8); /* keep empty sections apart */
    }
    pad_to(&file, 8);
    for (int k = 0; k < S_COUNT; k++) {
        uint8_t *e = file.p + table + 24 * (size_t)k;
        uint32_t kind = (uint32_t)k + 1;
        uint64_t sz = b->s[k].n;
        memcpy(e, &kind, 4);
        memcpy(e + 4, &record_sizes[k], 4);
        memcpy(e + 8, &offsets[k], 8);
        memcpy(e + 16, &sz, 8);
    }
    uint16_t major = 1, minor = 0;
    uint32_t header = 64, nsec = S_COUNT;
    uint64_t fsize = file.n;
    memcpy(file.p, "EDGEKIT\0", 8);
    memcpy(file.p + 8, &major, 2);
    memcpy(file.p + 10, &minor, 2);
    memcpy(file.p + 12, &header, 4);
    memcpy(file.p + 16, &fsize, 8);
    memcpy(file.p + 24, &table, 8);
    memcpy(file.p + 32, &nsec, 4);
    for (int k = 0; k < S_COUNT; k++)
        free(b->s[k].p);
    *size = file.n;
    return file.p;
}

/* ---- the test model ----
 * net_a: x -> y = relu(x + c), c a constant [8]; stages x = 1x8 and 2x8 (c broadcast).
 * net_b: a, b -> y = reshape(a + b) from 2x3 to 6.
 * big:   x [BIG] -> y = relu((x + x) + x): large enough that kernels split it across threads. */
#define BIG 65536
#define OP_ADD 5
#define OP_RELU 9
#define OP_RESHAPE 27
#define OP_TOP_K 29
static float c_data[8] = {1, -2, 3, -4, 5, -6, 7, -8};

static uint8_t *build_model(size_t *size)
{
    struct ekb b;
    ekb_init(&b);
    uint64_t c_off = ekb_constant(&b, c_data, 8);

    /* net_a: IOS 0 (x), 1 (y); stages 0, 1 */
    ekb_network(&b, "net_a", 1, 1, 2, 0, 0);
    ekb_io(&b, "x", 64);
    ekb_io(&b, "y", 64);
    for (int s = 0; s < 2; s++) {
        int64_t xd[2] = {s + 1, 8}, cd[1] = {8};
        uint32_t first = count_of(&b, S_TENSORS), first_op = count_of(&b, S_OPS);
        uint32_t first_binding = count_of(&b, S_BINDINGS);
        ekb_tensor(&b, "x", 2, 0, 0, 2, xd);         /* 0 */
        ekb_tensor(&b, "c", 1, 0, c_off, 1, cd);      /* 1 */
        ekb_tensor(&b, "t", 0, 0, 0, 2, xd);          /* 2 */
        ekb_tensor(&b, "y", 3, 0, 0, 2, xd);          /* 3 */
        uint32_t add_in[2] = {0, 1}, add_out[1] = {2}, relu_in[1] = {2}, relu_out[1] = {3};
        ekb_op(&b, "add", OP_ADD, 2, add_in, 1, add_out);
        ekb_op(&b, "relu", OP_RELU, 1, relu_in, 1, relu_out);
        put_u32(&b.s[S_BINDINGS], 0);
        put_u32(&b.s[S_BINDINGS], 3);
        ekb_stage(&b, 0, first, 4, first_op, 2, first_binding, 64);
    }

    /* net_b: IOS 2 (a), 3 (b), 4 (y); stage 2 */
    ekb_network(&b, "net_b", 2, 1, 1, 2, 2);
    ekb_io(&b, "a", 24);
    ekb_io(&b, "b", 24);
    ekb_io(&b, "y", 24);
    {
        int64_t ad[2] = {2, 3}, yd[1] = {6};
        uint32_t first = count_of(&b, S_TENSORS), first_op = count_of(&b, S_OPS);
        uint32_t first_binding = count_of(&b, S_BINDINGS);
        ekb_tensor(&b, "a", 2, 0, 0, 2, ad);
        ekb_tensor(&b, "b", 2, 1, 0, 2, ad);
        ekb_tensor(&b, "sum", 0, 0, 0, 2, ad);
        ekb_tensor(&b, "y", 3, 0, 0, 1, yd);
        uint32_t add_in[2] = {0, 1}, add_out[1] = {2}, r_in[1] = {2}, r_out[1] = {3};
        ekb_op(&b, "add", OP_ADD, 2, add_in, 1, add_out);
        ekb_op(&b, "flatten", OP_RESHAPE, 1, r_in, 1, r_out);
        put_u32(&b.s[S_BINDINGS], 0);
        put_u32(&b.s[S_BINDINGS], 1);
        put_u32(&b.s[S_BINDINGS], 3);
        ekb_stage(&b, 1, first, 4, first_op, 2, first_binding, 64);
    }

    /* big: IOS 5 (x), 6 (y); stage 3 */
    ekb_network(&b, "big", 1, 1, 1, 5, 3);
    ekb_io(&b, "x", BIG * 4);
    ekb_io(&b, "y", BIG * 4);
    {
        int64_t d[1] = {BIG};
        uint32_t first = count_of(&b, S_TENSORS), first_op = count_of(&b, S_OPS);
        uint32_t first_binding = count_of(&b, S_BINDINGS);
        ekb_tensor(&b, "x", 2, 0, 0, 1, d);
        ekb_tensor(&b, "t1", 0, 0, 0, 1, d);
        ekb_tensor(&b, "t2", 0, 0, BIG * 4, 1, d);
        ekb_tensor(&b, "y", 3, 0, 0, 1, d);
        uint32_t i1[2] = {0, 0}, o1[1] = {1}, i2[2] = {1, 0}, o2[1] = {2}, i3[1] = {2}, o3[1] = {3};
        ekb_op(&b, "double", OP_ADD, 2, i1, 1, o1);
        ekb_op(&b, "triple", OP_ADD, 2, i2, 1, o2);
        ekb_op(&b, "relu", OP_RELU, 1, i3, 1, o3);
        put_u32(&b.s[S_BINDINGS], 0);
        put_u32(&b.s[S_BINDINGS], 3);
        ekb_stage(&b, 2, first, 4, first_op, 3, first_binding, 2 * BIG * 4);
    }

    /* topk: IOS 7 (x), 8 (k), 9 (values, DYNAMIC), 10 (indices, DYNAMIC); stage 4. K is a run-time input,
     * so the outputs' bound is x's last dim (16) and their size is what K asks for. */
    ekb_network(&b, "topk", 2, 2, 1, 7, 4);
    ekb_io(&b, "x", 16 * 4);
    ekb_io_ex(&b, "k", 8, EK_DTYPE_INT64, 0);
    ekb_io_ex(&b, "values", 16 * 4, EK_DTYPE_FLOAT32, 1);
    ekb_io_ex(&b, "indices", 16 * 8, EK_DTYPE_INT64, 1);
    {
        int64_t xd[2] = {1, 16}, kd[1] = {1};
        uint32_t first = count_of(&b, S_TENSORS), first_op = count_of(&b, S_OPS);
        uint32_t first_binding = count_of(&b, S_BINDINGS);
        ekb_tensor(&b, "x", 2, 0, 0, 2, xd);
        ekb_tensor_ex(&b, "k", 2, 1, 0, 1, kd, EK_DTYPE_INT64, 0);
        ekb_tensor_ex(&b, "values", 3, 0, 0, 2, xd, EK_DTYPE_FLOAT32, 1);
        ekb_tensor_ex(&b, "indices", 3, 1, 128, 2, xd, EK_DTYPE_INT64, 1);
        uint32_t in[2] = {0, 1}, out[2] = {2, 3};
        ekb_op(&b, "topk", OP_TOP_K, 2, in, 2, out);
        ekb_attr_int(&b, "axis", 1);
        ekb_attr_int(&b, "largest", 1);
        ekb_attr_int(&b, "sorted", 1);
        put_u32(&b.s[S_BINDINGS], 0);
        put_u32(&b.s[S_BINDINGS], 1);
        put_u32(&b.s[S_BINDINGS], 2);
        put_u32(&b.s[S_BINDINGS], 3);
        ekb_stage(&b, 3, first, 4, first_op, 1, first_binding, 256);
    }
    return ekb_finish(&b, size);
}

static uint8_t *model_bytes;
static size_t model_size;

static float expect_a(float x, int i) { float v = x + c_data[i % 8]; return v > 0 ? v : 0; }
static float expect_big(float x) { return 3 * x > 0 ? 3 * x : 0; }

static ek_shape_t shape1(int64_t a)
{
    ek_shape_t s;
    memset(&s, 0, sizeof s);
    s.num_dims = 1;
    s.dims[0] = a;
    return s;
}

/* A device and a runtime with the test model loaded. */
static int setup(ek_dev_t *dev, ek_rt_t *rt, ek_coherence_t coherence)
{
    if (!CHECK_OK(ekt_open(dev, 0, 64 * MIB, coherence)))
        return 0;
    if (!CHECK_OK(ek_rt_create(rt, *dev))) {
        ekt_close(*dev);
        return 0;
    }
    if (!CHECK_OK(ek_rt_load_model_data(*rt, model_bytes, model_size))) {
        ek_rt_destroy(*rt);
        ekt_close(*dev);
        return 0;
    }
    return 1;
}

static void teardown(ek_dev_t dev, ek_rt_t rt)
{
    CHECK_OK(ek_rt_destroy(rt));
    CHECK_OK(ekt_close(dev));
}

/* An input tensor of net_a in fresh device memory. */
static ek_tensor_t input_a(ek_dev_t dev, int rows, float seed)
{
    ek_tensor_t t;
    memset(&t, 0, sizeof t);
    float x[16];
    for (int i = 0; i < rows * 8; i++)
        x[i] = seed + (float)i - 7.5f;
    CHECK_OK(ek_malloc_device(dev, &t.mem, (size_t)rows * 32));
    CHECK_OK(ek_memcpy_s2d(dev, t.mem, x));
    t.dtype = EK_DTYPE_FLOAT32;
    t.shape = ekt_shape2(rows, 8);
    return t;
}

static int check_output_a(ek_dev_t dev, const ek_tensor_t *y, int rows, float seed)
{
    float out[16];
    if (!CHECK_OK(ek_memcpy_d2s_partial_offset(dev, out, y->mem, (size_t)rows * 32, y->offset)))
        return 0;
    for (int i = 0; i < rows * 8; i++)
        if (out[i] != expect_a(seed + (float)i - 7.5f, i)) {
            printf("    y[%d] = %g, expected %g\n", i, out[i], expect_a(seed + (float)i - 7.5f, i));
            return 0;
        }
    return 1;
}

/* ---- blocking the device workers, for deterministic queueing ---- */
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_open, gate_waiting;

static void blocking_done(void *user, ek_status_t status)
{
    (void)user;
    (void)status;
    pthread_mutex_lock(&gate_lock);
    gate_waiting++;
    pthread_cond_broadcast(&gate_cv);
    while (!gate_open)
        pthread_cond_wait(&gate_cv, &gate_lock);
    gate_waiting--;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_lock);
}

/* Occupy both workers of the device with launches whose callbacks block until gate_release(). */
static int gate_block(ek_dev_t dev, ek_rt_t rt, ek_tensor_t *x, ek_tensor_t *y)
{
    gate_open = 0;
    memset(x, 0, 2 * sizeof *x);
    memset(y, 0, 2 * sizeof *y);
    ek_launch_options_t opt;
    memset(&opt, 0, sizeof opt);
    opt.on_done = blocking_done;
    for (int i = 0; i < 2; i++) {
        x[i] = input_a(dev, 1, 0);
        if (!CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x[i], 1, &y[i], 1, false, &opt, NULL)))
            return 0;
    }
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    pthread_mutex_lock(&gate_lock);
    while (gate_waiting < 2 && pthread_cond_timedwait(&gate_cv, &gate_lock, &deadline) == 0) {
    }
    int ok = gate_waiting == 2;
    pthread_mutex_unlock(&gate_lock);
    CHECK(ok);
    return ok;
}

static void gate_release(ek_dev_t dev, ek_tensor_t *x, ek_tensor_t *y)
{
    pthread_mutex_lock(&gate_lock);
    gate_open = 1;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_lock);
    CHECK_OK(ek_dev_sync(dev));
    for (int i = 0; i < 2; i++) {
        if (x[i].mem.id)
            CHECK_OK(ek_free_device(dev, x[i].mem));
        if (y[i].mem.id)
            CHECK_OK(ek_free_device(dev, y[i].mem));
    }
}

/* ---- tests ---- */

static void test_dtypes(void)
{
    CHECK(ek_dtype_size(EK_DTYPE_FLOAT32) == 4);
    CHECK(ek_dtype_size(EK_DTYPE_INT64) == 8);
    CHECK(ek_dtype_size((ek_dtype_t)99) == 0);
    CHECK(strcmp(ek_dtype_name(EK_DTYPE_UINT8), "uint8") == 0);
    CHECK(strcmp(ek_dtype_name((ek_dtype_t)0), "unknown") == 0);
}

static void test_load_and_info(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    int count = 0;
    CHECK_OK(ek_rt_network_count(rt, &count));
    CHECK(count == 4);
    const char *name = NULL;
    CHECK_OK(ek_rt_network_name(rt, 1, &name));
    CHECK(name && strcmp(name, "net_b") == 0);
    CHECK_STATUS(ek_rt_network_name(rt, 4, &name), EK_ERR_INVALID_ARG);
    const ek_net_info_t *info = NULL;
    if (CHECK_OK(ek_rt_network_info(rt, "net_a", &info))) {
        CHECK(strcmp(info->name, "net_a") == 0);
        CHECK(info->input_count == 1 && info->output_count == 1 && info->stage_count == 2);
        CHECK(strcmp(info->inputs[0].name, "x") == 0 && info->inputs[0].dtype == EK_DTYPE_FLOAT32);
        CHECK(info->outputs[0].max_bytes == 64);
        CHECK(info->stages[1].input_shapes[0].num_dims == 2 && info->stages[1].input_shapes[0].dims[0] == 2);
    }
    CHECK_STATUS(ek_rt_network_info(rt, "nope", &info), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("no network 'nope' in this runtime; loaded: net_a, net_b, big, topk");
    /* the same names again */
    CHECK_STATUS(ek_rt_load_model_data(rt, model_bytes, model_size), EK_ERR_BUSY);
    CHECK_ERROR_MENTIONS("net_a");
    CHECK_OK(ek_rt_network_count(rt, &count));
    CHECK(count == 4);
    const char *kernels = NULL;
    CHECK_OK(ek_rt_kernels(rt, &kernels));
    CHECK(kernels && (strcmp(kernels, "portable") == 0 || strcmp(kernels, "xnnpack") == 0));
    /* XNNPACK in use: nothing to explain; portable under auto: the provider's dlopen or init error */
    const char *reason = NULL;
    CHECK_OK(ek_rt_kernels_reason(rt, &reason));
    CHECK(reason && (strcmp(kernels, "portable") == 0 || reason[0] == '\0'));
    const char *env = getenv("EDGEKIT_KERNELS");
    if (kernels && strcmp(kernels, "portable") == 0 && (!env || !*env || strcmp(env, "auto") == 0))
        CHECK(reason && strstr(reason, "libedgekit_xnnpack.so"));
    /* a corrupt buffer is the loader's error */
    uint8_t bad[64];
    memset(bad, 0, sizeof bad);
    CHECK_STATUS(ek_rt_load_model_data(rt, bad, sizeof bad), EK_ERR_MODEL_INVALID);
    CHECK_STATUS(ek_rt_load_model(rt, "/nonexistent/model.ekm"), EK_ERR_SYSTEM);
    teardown(dev, rt);
    CHECK_STATUS(ek_rt_destroy(rt), EK_ERR_DOUBLE_FREE);
    CHECK_STATUS(ek_rt_network_count(rt, &count), EK_ERR_FREED_HANDLE);
}

static void test_config(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 16 * MIB, EK_COHERENCE_DEFAULT));
    ek_rt_t rt;
    ek_rt_config_t cfg = {.kernels = EK_KERNELS_PORTABLE, .threads = 2};
    if (CHECK_OK(ek_rt_create_ex(&rt, dev, &cfg))) {
        const char *k = NULL;
        CHECK_OK(ek_rt_kernels(rt, &k));
        CHECK(k && strcmp(k, "portable") == 0);
        const char *reason = NULL;
        CHECK_OK(ek_rt_kernels_reason(rt, &reason)); /* asked for portable: nothing to explain */
        CHECK(reason && reason[0] == '\0');
        CHECK_STATUS(ek_rt_kernels_reason(rt, NULL), EK_ERR_INVALID_ARG);
        int threads = 0;
        CHECK_OK(ek_rt_threads(rt, &threads));
        CHECK(threads == 2);
        CHECK_STATUS(ek_rt_threads(rt, NULL), EK_ERR_INVALID_ARG);
        CHECK_OK(ek_rt_destroy(rt));
        CHECK_STATUS(ek_rt_threads(rt, &threads), EK_ERR_FREED_HANDLE);
        CHECK_STATUS(ek_rt_kernels_reason(rt, &reason), EK_ERR_FREED_HANDLE);
    }
    cfg.kernels = (ek_kernels_t)42;
    CHECK_STATUS(ek_rt_create_ex(&rt, dev, &cfg), EK_ERR_INVALID_ARG);
    cfg.kernels = EK_KERNELS_DEFAULT;
    cfg.threads = -1;
    CHECK_STATUS(ek_rt_create_ex(&rt, dev, &cfg), EK_ERR_INVALID_ARG);
    ek_dev_t bogus = {12345};
    CHECK_STATUS(ek_rt_create(&rt, bogus), EK_ERR_INVALID_HANDLE);
    /* the runtime keeps the device open after the caller's handle closes */
    REQUIRE_OK(ek_rt_create(&rt, dev));
    CHECK_OK(ekt_close(dev));
    CHECK_OK(ek_rt_load_model_data(rt, model_bytes, model_size));
    float x[8] = {0, 1, 2, 3, 4, 5, 6, 7}, y[8];
    void *outs[1] = {y};
    const void *ins[1] = {x};
    ek_shape_t in_shape = ekt_shape2(1, 8), out_shape;
    size_t cap = sizeof y;
    CHECK_OK(ek_rt_launch_data(rt, "net_a", ins, &in_shape, 1, outs, &cap, &out_shape, 1, NULL));
    CHECK(y[1] == expect_a(1, 1) && y[7] == expect_a(7, 7));
    CHECK_OK(ek_rt_destroy(rt));
}

static void test_launch_runtime_memory(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    for (int rows = 1; rows <= 2; rows++) {
        ek_tensor_t x = input_a(dev, rows, (float)rows), y;
        memset(&y, 0, sizeof y);
        ek_launch_t l = {0};
        if (CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x, 1, &y, 1, false, NULL, &l))) {
            CHECK(y.dtype == EK_DTYPE_FLOAT32 && y.shape.num_dims == 2 && y.shape.dims[0] == rows);
            CHECK_OK(ek_launch_wait(l, -1));
            CHECK(check_output_a(dev, &y, rows, (float)rows));
            CHECK_STATUS(ek_launch_wait(l, -1), EK_ERR_FREED_HANDLE); /* waited already */
            size_t size = 0;
            CHECK_OK(ek_mem_size(y.mem, &size));
            CHECK(size == (size_t)rows * 32);
            CHECK_OK(ek_free_device(dev, y.mem));
        }
        CHECK_OK(ek_free_device(dev, x.mem));
    }
    /* two inputs, a reshape */
    float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {10, 20, 30, 40, 50, 60}, out[6];
    ek_tensor_t in[2], y;
    memset(in, 0, sizeof in);
    for (int i = 0; i < 2; i++) {
        CHECK_OK(ek_malloc_device(dev, &in[i].mem, 24));
        CHECK_OK(ek_memcpy_s2d(dev, in[i].mem, i ? b : a));
        in[i].dtype = EK_DTYPE_FLOAT32;
        in[i].shape = ekt_shape2(2, 3);
    }
    ek_launch_t l;
    if (CHECK_OK(ek_rt_launch_tensor(rt, "net_b", in, 2, &y, 1, false, NULL, &l))) {
        CHECK(y.shape.num_dims == 1 && y.shape.dims[0] == 6);
        CHECK_OK(ek_launch_wait(l, 1000));
        CHECK_OK(ek_memcpy_d2s(dev, out, y.mem));
        for (int i = 0; i < 6; i++)
            CHECK(out[i] == a[i] + b[i]);
        CHECK_OK(ek_free_device(dev, y.mem));
    }
    for (int i = 0; i < 2; i++)
        CHECK_OK(ek_free_device(dev, in[i].mem));
    teardown(dev, rt);
}

static void test_launch_user_memory(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    ek_tensor_t x = input_a(dev, 2, 3), y;
    memset(&y, 0, sizeof y);
    REQUIRE_OK(ek_malloc_device(dev, &y.mem, 256));
    y.offset = 100;
    ek_launch_t l;
    if (CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x, 1, &y, 1, true, NULL, &l))) {
        CHECK(y.offset == 100 && y.shape.dims[0] == 2 && y.dtype == EK_DTYPE_FLOAT32);
        CHECK_OK(ek_launch_wait(l, -1));
        CHECK(check_output_a(dev, &y, 2, 3));
    }
    /* too small: 64 bytes at offset 200 of 256 */
    y.offset = 200;
    CHECK_STATUS(ek_rt_launch_tensor(rt, "net_a", &x, 1, &y, 1, true, NULL, &l), EK_ERR_OUT_OF_RANGE);
    CHECK_ERROR_MENTIONS("output 'y'");
    /* misaligned for float32: the kernels would load floats from an odd address */
    y.offset = 101;
    CHECK_STATUS(ek_rt_launch_tensor(rt, "net_a", &x, 1, &y, 1, true, NULL, &l), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("offset 101 is not a multiple of the 4-byte float32 element size");
    ek_tensor_t odd = x;
    odd.offset = 2;
    CHECK_STATUS(ek_rt_launch_tensor(rt, "net_a", &odd, 1, &y, 1, false, NULL, &l), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("input 'x'");
    /* an output over its own input */
    ek_tensor_t alias = x;
    CHECK_STATUS(ek_rt_launch_tensor(rt, "net_a", &x, 1, &alias, 1, true, NULL, &l), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("overlaps input 'x'");
    CHECK_OK(ek_free_device(dev, y.mem));
    CHECK_OK(ek_free_device(dev, x.mem));
    teardown(dev, rt);
}

/* The thread the ModelExecute record of the profile's only launch names; 0 if none. */
static uint64_t executed_on(ek_profile_t p)
{
    size_t n = 0;
    ek_profile_record_t r;
    CHECK_OK(ek_profile_count(p, &n));
    for (size_t i = 0; i < n; i++)
        if (ek_profile_get(p, i, &r) == EK_OK && r.kind == EK_PROFILE_MODEL_EXECUTE)
            return r.thread;
    return 0;
}

static atomic_int run_callbacks;
static void count_callback(void *user, ek_status_t status)
{
    (void)user;
    if (status == EK_OK)
        atomic_fetch_add(&run_callbacks, 1);
}

struct queued_run {
    ek_rt_t rt;
    ek_tensor_t x, y;
    ek_profile_t profile;
    uint64_t tid;
    atomic_int finished;
    ek_status_t status;
};

static void *run_thread(void *arg)
{
    struct queued_run *q = arg;
    ek_launch_options_t opt;
    memset(&opt, 0, sizeof opt);
    opt.profile = q->profile;
    q->tid = (uint64_t)syscall(SYS_gettid);
    q->status = ek_rt_run(q->rt, "net_a", &q->x, 1, &q->y, 1, &opt);
    atomic_store(&q->finished, 1);
    return NULL;
}

/* ek_rt_run: launch and wait in one call, on the calling thread when a worker slot is free; with
 * on_done, or with both slots taken, on a worker, waited for. */
static void test_run(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    ek_profile_t p;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    REQUIRE_OK(ek_profile_create(&p));
    ek_tensor_t x = input_a(dev, 2, 3), y;
    memset(&y, 0, sizeof y);
    REQUIRE_OK(ek_malloc_device(dev, &y.mem, 256));
    ek_launch_options_t opt;
    memset(&opt, 0, sizeof opt);
    opt.profile = p;
    if (CHECK_OK(ek_rt_run(rt, "net_a", &x, 1, &y, 1, &opt))) {
        CHECK(y.shape.num_dims == 2 && y.shape.dims[0] == 2 && y.dtype == EK_DTYPE_FLOAT32);
        CHECK(check_output_a(dev, &y, 2, 3));
        CHECK(executed_on(p) == (uint64_t)syscall(SYS_gettid));
    }
    /* on_done is promised a worker thread: it runs there, before ek_rt_run returns */
    CHECK_OK(ek_profile_clear(p));
    opt.on_done = count_callback;
    atomic_store(&run_callbacks, 0);
    if (CHECK_OK(ek_rt_run(rt, "net_a", &x, 1, &y, 1, &opt))) {
        CHECK(atomic_load(&run_callbacks) == 1);
        uint64_t tid = executed_on(p);
        CHECK(tid != 0 && tid != (uint64_t)syscall(SYS_gettid));
    }
    opt.on_done = NULL;
    /* the same validation as a launch; its errors go to the caller, not to ek_dev_sync */
    ek_tensor_t small = y;
    small.offset = 200;
    CHECK_STATUS(ek_rt_run(rt, "net_a", &x, 1, &small, 1, NULL), EK_ERR_OUT_OF_RANGE);
    CHECK_ERROR_MENTIONS("output 'y'");
    CHECK_STATUS(ek_rt_run(rt, "no_such_net", &x, 1, &y, 1, NULL), EK_ERR_INVALID_ARG);
    CHECK_OK(ek_dev_sync(dev));

    /* both worker slots taken: it is queued, runs when one frees, on a worker */
    ek_tensor_t bx[2], by[2];
    if (gate_block(dev, rt, bx, by)) {
        struct queued_run q;
        memset(&q, 0, sizeof q);
        q.rt = rt;
        q.x = x;
        q.y = y;
        q.profile = p;
        CHECK_OK(ek_profile_clear(p));
        pthread_t thread;
        int started = pthread_create(&thread, NULL, run_thread, &q) == 0;
        CHECK(started);
        if (started) {
            struct timespec pause = {0, 50 * 1000000L};
            nanosleep(&pause, NULL);
            CHECK(!atomic_load(&q.finished));
            gate_release(dev, bx, by);
            pthread_join(thread, NULL);
            CHECK_OK(q.status);
            CHECK(check_output_a(dev, &q.y, 2, 3));
            uint64_t tid = executed_on(p);
            CHECK(tid != 0 && tid != q.tid);
        } else {
            gate_release(dev, bx, by);
        }
    } else {
        gate_release(dev, bx, by);
    }
    CHECK_OK(ek_free_device(dev, y.mem));
    CHECK_OK(ek_free_device(dev, x.mem));
    CHECK_OK(ek_profile_destroy(p));
    teardown(dev, rt);
}

static void test_validation_messages(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    ek_heap_stats_t before = STATS(dev);
    ek_tensor_t x = input_a(dev, 1, 0), y[2];
    ek_launch_t l;
    before = STATS(dev);
    CHECK_STATUS(ek_rt_launch_tensor(rt, "zzz", &x, 1, y, 1, false, NULL, &l), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("no network 'zzz' in this runtime; loaded: net_a, net_b, big, topk");
    CHECK_STATUS(ek_rt_launch_tensor(rt, "net_a", &x, 1, y, 2, false, NULL, &l), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("has 1 input and 1 output");
    ek_tensor_t bad = x;
    bad.dtype = EK_DTYPE_INT8;
    CHECK_STATUS(ek_rt_launch_tensor(rt, "net_a", &bad, 1, y, 1, false, NULL, &l), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("input 'x' of network 'net_a' is float32; the launch gives int8");
    bad = x;
    bad.shape = ekt_shape2(1, 9);
    CHECK_STATUS(ek_rt_launch_tensor(rt, "net_a", &bad, 1, y, 1, false, NULL, &l), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("input 'x' is 1x9; network 'net_a' takes 1x8 | 2x8");
    bad = x;
    bad.shape = ekt_shape2(2, 8); /* a stage, but the memory is 32 bytes */
    CHECK_STATUS(ek_rt_launch_tensor(rt, "net_a", &bad, 1, y, 1, false, NULL, &l), EK_ERR_OUT_OF_RANGE);
    CHECK_ERROR_MENTIONS("input 'x'");
    bad = x;
    bad.mem.id = 77;
    CHECK_STATUS(ek_rt_launch_tensor(rt, "net_a", &bad, 1, y, 1, false, NULL, &l), EK_ERR_INVALID_HANDLE);
    ek_launch_options_t opt;
    memset(&opt, 0, sizeof opt);
    opt.threads = 1000;
    CHECK_STATUS(ek_rt_launch_tensor(rt, "net_a", &x, 1, y, 1, false, &opt, &l), EK_ERR_INVALID_ARG);
    opt.threads = 0;
    opt.cpu_mask = (uint64_t)1 << 63;
    ek_status_t st = ek_rt_launch_tensor(rt, "net_a", &x, 1, y, 1, false, &opt, &l);
    if (st == EK_OK) { /* a machine with 64 CPUs */
        CHECK_OK(ek_launch_wait(l, -1));
        CHECK_OK(ek_free_device(dev, y[0].mem));
    } else {
        CHECK(st == EK_ERR_INVALID_ARG);
        CHECK_ERROR_MENTIONS("cpu_mask");
    }
    CHECK_STATUS(ek_launch_wait((ek_launch_t){0}, 0), EK_ERR_INVALID_HANDLE);
    CHECK_STATS_SAME(dev, before); /* failed launches allocated nothing */
    /* launch_data: output capacity */
    float in[8] = {0}, out[8];
    const void *ins[1] = {in};
    void *outs[1] = {out};
    ek_shape_t s = ekt_shape2(1, 8), os;
    size_t cap = 16;
    CHECK_STATUS(ek_rt_launch_data(rt, "net_a", ins, &s, 1, outs, &cap, &os, 1, NULL), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("output 'y' of network 'net_a' needs 32 bytes (1x8 float32); output_capacity[0] is 16");
    s = ekt_shape2(3, 8);
    cap = 32;
    CHECK_STATUS(ek_rt_launch_data(rt, "net_a", ins, &s, 1, outs, &cap, &os, 1, NULL), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("input 'x' is 3x8");
    CHECK_OK(ek_free_device(dev, x.mem));
    teardown(dev, rt);
}

static void test_launch_data(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    ek_heap_stats_t before = STATS(dev);
    float x[16], y[16];
    for (int i = 0; i < 16; i++)
        x[i] = (float)i - 8;
    const void *ins[1] = {x};
    void *outs[1] = {y};
    ek_shape_t s = ekt_shape2(2, 8), os;
    size_t cap = sizeof y;
    CHECK_OK(ek_rt_launch_data(rt, "net_a", ins, &s, 1, outs, &cap, &os, 1, NULL));
    CHECK(os.num_dims == 2 && os.dims[0] == 2 && os.dims[1] == 8);
    for (int i = 0; i < 16; i++)
        CHECK(y[i] == expect_a(x[i], i));
    ek_heap_stats_t after = STATS(dev);
    /* only the arena stays (the execution context is reused) */
    CHECK(after.allocations == before.allocations + 1);
    CHECK_OK(ek_rt_launch_data(rt, "net_a", ins, &s, 1, outs, &cap, &os, 1, NULL));
    CHECK(STATS(dev).allocations == after.allocations);
    teardown(dev, rt);
}

static void test_wait_timeout_and_callbacks(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    ek_tensor_t bx[2], by[2];
    if (gate_block(dev, rt, bx, by)) {
        ek_tensor_t x = input_a(dev, 1, 5), y;
        ek_launch_t l;
        if (CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x, 1, &y, 1, false, NULL, &l))) {
            CHECK_STATUS(ek_launch_wait(l, 0), EK_ERR_TIMEOUT);
            CHECK_STATUS(ek_launch_wait(l, 50), EK_ERR_TIMEOUT);
            CHECK_ERROR_MENTIONS("still running");
            gate_release(dev, bx, by);
            CHECK_OK(ek_launch_wait(l, 5000));
            CHECK(check_output_a(dev, &y, 1, 5));
            CHECK_OK(ek_free_device(dev, y.mem));
        } else {
            gate_release(dev, bx, by);
        }
        CHECK_OK(ek_free_device(dev, x.mem));
    } else {
        gate_release(dev, bx, by);
    }
    teardown(dev, rt);
}

struct own_wait {
    ek_launch_t launch;
    atomic_int calls;
    ek_status_t seen, waited;
};

static void wait_in_callback(void *user, ek_status_t status)
{
    struct own_wait *w = user;
    w->seen = status;
    while (w->launch.id == 0) { /* the launcher has not stored the handle yet */
    }
    w->waited = ek_launch_wait(w->launch, -1);
    atomic_fetch_add(&w->calls, 1);
}

static void test_callback_waits_for_its_launch(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    ek_tensor_t bx[2], by[2];
    if (!gate_block(dev, rt, bx, by)) { /* keep the launch queued until its handle is stored */
        gate_release(dev, bx, by);
        teardown(dev, rt);
        return;
    }
    static struct own_wait w;
    memset(&w, 0, sizeof w);
    w.seen = w.waited = EK_ERR_INTERNAL;
    ek_launch_options_t opt;
    memset(&opt, 0, sizeof opt);
    opt.on_done = wait_in_callback;
    opt.user_data = &w;
    ek_tensor_t x = input_a(dev, 1, 0), y;
    ek_launch_t l;
    ek_status_t st = ek_rt_launch_tensor(rt, "net_a", &x, 1, &y, 1, false, &opt, &l);
    if (CHECK_OK(st))
        w.launch = l;
    gate_release(dev, bx, by);
    if (st == EK_OK) {
        CHECK(atomic_load(&w.calls) == 1);
        CHECK(w.seen == EK_OK && w.waited == EK_OK);
        CHECK_STATUS(ek_launch_wait(l, 0), EK_ERR_FREED_HANDLE);
        CHECK_OK(ek_free_device(dev, y.mem));
    }
    CHECK_OK(ek_free_device(dev, x.mem));
    teardown(dev, rt);
}

/* Regression (found by the TSan hammer): ek_rt_launch_tensor filled the caller's outputs and launch
 * handle after queueing the launch, so an on_done that ran before the call returned could read a
 * runtime-allocated output's memory handle as 0 (and TSan saw the race). Each callback here reads the
 * output and its own launch handle from the caller's variables, at once. */
struct sees_outputs {
    ek_dev_t dev;
    ek_tensor_t y;
    ek_launch_t launch;
    float seed;
    atomic_int ok;
};

static void read_outputs_in_callback(void *user, ek_status_t status)
{
    struct sees_outputs *s = user;
    int ok = status == EK_OK && s->launch.id != 0 && s->y.mem.id != 0 && check_output_a(s->dev, &s->y, 1, s->seed) &&
             ek_launch_wait(s->launch, 0) == EK_OK; /* its own launch, from its callback: its status at once */
    atomic_store(&s->ok, ok ? 1 : -1);
}

static void test_callback_sees_outputs_and_handle(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    enum { N = 20 };
    static struct sees_outputs s[N];
    ek_tensor_t x[N];
    for (int i = 0; i < N; i++) {
        memset(&s[i], 0, sizeof s[i]);
        s[i].dev = dev;
        s[i].seed = (float)i;
        x[i] = input_a(dev, 1, s[i].seed);
    }
    /* One launch at a time on idle workers, and no call into the runtime until its callback is over, so
     * nothing but the launch itself orders the caller's writes before the callback's reads. */
    int launched = 0;
    for (; launched < N; launched++) {
        struct sees_outputs *o = &s[launched];
        ek_launch_options_t opt;
        memset(&opt, 0, sizeof opt);
        opt.on_done = read_outputs_in_callback;
        opt.user_data = o;
        if (!CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x[launched], 1, &o->y, 1, false, &opt, &o->launch)))
            break;
        struct timespec t0, now;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        do
            clock_gettime(CLOCK_MONOTONIC, &now);
        while (atomic_load(&o->ok) == 0 && now.tv_sec - t0.tv_sec < 30);
    }
    CHECK_OK(ek_dev_sync(dev));
    for (int i = 0; i < launched; i++) {
        if (atomic_load(&s[i].ok) != 1)
            printf("    launch %d: its callback saw %s\n", i, s[i].y.mem.id ? "a wrong output" : "no output memory");
        CHECK(atomic_load(&s[i].ok) == 1);
        CHECK_STATUS(ek_launch_wait(s[i].launch, 0), EK_ERR_FREED_HANDLE); /* the callback's wait retired it */
        CHECK_OK(ek_free_device(dev, s[i].y.mem));
    }
    for (int i = 0; i < N; i++)
        CHECK_OK(ek_free_device(dev, x[i].mem));
    teardown(dev, rt);
}

struct nested {
    ek_rt_t rt;
    ek_dev_t dev;
    ek_status_t data_status, sync_status;
    float y[8];
};

static void launch_data_in_callback(void *user, ek_status_t status)
{
    struct nested *n = user;
    (void)status;
    float x[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    const void *ins[1] = {x};
    void *outs[1] = {n->y};
    ek_shape_t s = ekt_shape2(1, 8), os;
    size_t cap = sizeof n->y;
    n->data_status = ek_rt_launch_data(n->rt, "net_a", ins, &s, 1, outs, &cap, &os, 1, NULL);
    n->sync_status = ek_dev_sync(n->dev); /* would wait for itself */
}

static void test_sync_calls_from_callbacks(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    static struct nested n;
    memset(&n, 0, sizeof n);
    n.rt = rt;
    n.dev = dev;
    n.data_status = n.sync_status = EK_ERR_INTERNAL;
    ek_launch_options_t opt;
    memset(&opt, 0, sizeof opt);
    opt.on_done = launch_data_in_callback;
    opt.user_data = &n;
    ek_tensor_t x = input_a(dev, 1, 0), y;
    ek_launch_t l;
    if (CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x, 1, &y, 1, false, &opt, &l))) {
        CHECK_OK(ek_launch_wait(l, -1));
        CHECK(n.data_status == EK_OK);
        CHECK(n.sync_status == EK_ERR_BUSY);
        for (int i = 0; i < 8; i++)
            CHECK(n.y[i] == expect_a((float)i, i));
        CHECK_OK(ek_free_device(dev, y.mem));
    }
    CHECK_OK(ek_free_device(dev, x.mem));
    teardown(dev, rt);
}

static void test_freed_input_and_dev_sync(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    /* freed before the call */
    ek_tensor_t x = input_a(dev, 1, 0), y;
    ek_launch_t l;
    CHECK_OK(ek_free_device(dev, x.mem));
    CHECK_STATUS(ek_rt_launch_tensor(rt, "net_a", &x, 1, &y, 1, false, NULL, &l), EK_ERR_FREED_HANDLE);
    CHECK_ERROR_MENTIONS("input 'x'");

    /* freed while queued: the launch fails, and a handle-less one is reported by ek_dev_sync */
    ek_tensor_t bx[2], by[2];
    CHECK_OK(ek_dev_sync(dev));
    if (gate_block(dev, rt, bx, by)) {
        ek_tensor_t x1 = input_a(dev, 1, 0), y1, x2 = input_a(dev, 1, 0), y2;
        int ok1 = CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x1, 1, &y1, 1, false, NULL, &l));
        int ok2 = CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x2, 1, &y2, 1, false, NULL, NULL));
        CHECK_OK(ek_free_device(dev, x1.mem));
        CHECK_OK(ek_free_device(dev, x2.mem));
        pthread_mutex_lock(&gate_lock);
        gate_open = 1;
        pthread_cond_broadcast(&gate_cv);
        pthread_mutex_unlock(&gate_lock);
        if (ok1) {
            CHECK_STATUS(ek_launch_wait(l, -1), EK_ERR_FREED_HANDLE);
            CHECK_ERROR_MENTIONS("input 'x'");
            CHECK_OK(ek_free_device(dev, y1.mem));
        }
        if (ok2) {
            CHECK_STATUS(ek_dev_sync(dev), EK_ERR_FREED_HANDLE);
            CHECK_ERROR_MENTIONS("was freed before the launch ran");
            CHECK_OK(ek_dev_sync(dev)); /* reported once */
            CHECK_OK(ek_free_device(dev, y2.mem));
        }
    }
    gate_release(dev, bx, by);
    teardown(dev, rt);
}

static void test_threads_and_mask(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    float *x = malloc(BIG * 4), *y = malloc(BIG * 4);
    REQUIRE(x && y);
    for (int i = 0; i < BIG; i++)
        x[i] = (float)((i * 7919) % 201 - 100) / 8;
    const void *ins[1] = {x};
    void *outs[1] = {y};
    ek_shape_t s = shape1(BIG), os;
    size_t cap = BIG * 4;
    int thread_counts[] = {1, 3, 8, 2};
    for (int k = 0; k < 4; k++) {
        ek_launch_options_t opt;
        memset(&opt, 0, sizeof opt);
        opt.threads = thread_counts[k];
        opt.cpu_mask = k == 3 ? 1 : 0; /* CPU 0 */
        memset(y, 0xFF, BIG * 4);
        if (CHECK_OK(ek_rt_launch_data(rt, "big", ins, &s, 1, outs, &cap, &os, 1, &opt))) {
            int bad = 0;
            for (int i = 0; i < BIG && !bad; i++)
                if (y[i] != expect_big(x[i])) {
                    printf("    threads %d: y[%d] = %g, expected %g\n", thread_counts[k], i, y[i], expect_big(x[i]));
                    bad = 1;
                }
            CHECK(!bad);
        }
    }
    free(x);
    free(y);
    teardown(dev, rt);
}

/* Many threads share runtimes: each launch's output must be its own input's result. */
struct hammer {
    ek_dev_t dev;
    ek_rt_t rt;
    int index;
    int iterations;
    atomic_int *failures;
};

static void *hammer_main(void *p)
{
    struct hammer *h = p;
    float *x = malloc(BIG * 4), *y = malloc(BIG * 4);
    if (!x || !y) {
        atomic_fetch_add(h->failures, 1);
        free(x);
        free(y);
        return NULL;
    }
    memset(x, 0, BIG * 4);
    for (int it = 0; it < h->iterations; it++) {
        float seed = (float)(h->index * 1000 + it);
        if (it % 2 == 0) { /* small, through device tensors */
            ek_tensor_t t = input_a(h->dev, 1 + it % 4 / 2, seed), out;
            ek_launch_t l;
            int rows = (int)t.shape.dims[0];
            if (ek_rt_launch_tensor(h->rt, "net_a", &t, 1, &out, 1, false, NULL, &l) != EK_OK ||
                ek_launch_wait(l, -1) != EK_OK || !check_output_a(h->dev, &out, rows, seed)) {
                printf("    thread %d iteration %d: %s\n", h->index, it, ek_last_error());
                atomic_fetch_add(h->failures, 1);
            } else {
                ek_free_device(h->dev, out.mem);
            }
            ek_free_device(h->dev, t.mem);
        } else { /* big, through host buffers, several threads per launch */
            for (int i = 0; i < BIG; i += 97)
                x[i] = seed - (float)i / 1000;
            ek_launch_options_t opt;
            memset(&opt, 0, sizeof opt);
            opt.threads = 1 + it % 3;
            const void *ins[1] = {x};
            void *outs[1] = {y};
            ek_shape_t s = shape1(BIG), os;
            size_t cap = BIG * 4;
            if (ek_rt_launch_data(h->rt, "big", ins, &s, 1, outs, &cap, &os, 1, &opt) != EK_OK) {
                printf("    thread %d iteration %d: %s\n", h->index, it, ek_last_error());
                atomic_fetch_add(h->failures, 1);
                continue;
            }
            for (int i = 0; i < BIG; i += 97)
                if (y[i] != expect_big(x[i])) {
                    printf("    thread %d iteration %d: y[%d] = %g, expected %g\n", h->index, it, i, y[i],
                           expect_big(x[i]));
                    atomic_fetch_add(h->failures, 1);
                    break;
                }
        }
    }
    free(x);
    free(y);
    return NULL;
}

static void run_hammer(int runtimes)
{
    enum { THREADS = 8 };
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 64 * MIB, EK_COHERENCE_DEFAULT));
    ek_heap_stats_t before = STATS(dev);
    ek_rt_t rts[THREADS];
    int made = 0;
    for (; made < runtimes; made++) {
        if (!CHECK_OK(ek_rt_create(&rts[made], dev)))
            break;
        if (!CHECK_OK(ek_rt_load_model_data(rts[made], model_bytes, model_size))) {
            made++;
            break;
        }
    }
    atomic_int failures = 0;
    struct hammer h[THREADS];
    pthread_t threads[THREADS];
    if (made == runtimes) {
        for (int i = 0; i < THREADS; i++) {
            h[i] = (struct hammer){dev, rts[i % runtimes], i, 24, &failures};
            CHECK(pthread_create(&threads[i], NULL, hammer_main, &h[i]) == 0);
        }
        for (int i = 0; i < THREADS; i++)
            pthread_join(threads[i], NULL);
    }
    CHECK(atomic_load(&failures) == 0);
    for (int i = 0; i < made; i++)
        CHECK_OK(ek_rt_destroy(rts[i]));
    ek_heap_stats_t after = STATS(dev);
    CHECK(after.allocations == before.allocations && after.used == before.used); /* arenas freed */
    CHECK_OK(ekt_close(dev));
}

static void test_threads_share_one_runtime(void) { run_hammer(1); }
static void test_threads_share_several_runtimes(void) { run_hammer(3); }

static void test_destroy_waits_for_launches(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    ek_heap_stats_t before = STATS(dev);
    enum { N = 6 };
    ek_tensor_t x[N], y[N];
    for (int i = 0; i < N; i++) {
        x[i] = input_a(dev, 2, (float)i);
        CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x[i], 1, &y[i], 1, false, NULL, NULL));
    }
    CHECK_OK(ek_rt_destroy(rt)); /* waits for all six */
    for (int i = 0; i < N; i++) {
        CHECK(check_output_a(dev, &y[i], 2, (float)i));
        CHECK_OK(ek_free_device(dev, y[i].mem));
        CHECK_OK(ek_free_device(dev, x[i].mem));
    }
    ek_heap_stats_t after = STATS(dev);
    CHECK(after.allocations == before.allocations && after.used == before.used); /* the arena too */
    CHECK_OK(ek_dev_sync(dev));
    CHECK_OK(ekt_close(dev));
}

static void test_strict_coherence(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_STRICT))
        return;
    ek_heap_stats_t st = STATS(dev);
    if (st.coherence != EK_COHERENCE_STRICT) {
        teardown(dev, rt);
        SKIP("device 0 is not in strict mode");
    }
    CHECK_OK(ek_dev_coherence_clear(dev));
    ek_tensor_t x, y;
    memset(&x, 0, sizeof x);
    REQUIRE_OK(ek_malloc_device(dev, &x.mem, 32));
    x.dtype = EK_DTYPE_FLOAT32;
    x.shape = ekt_shape2(1, 8);
    float zeros[8] = {0};
    CHECK_OK(ek_memcpy_s2d(dev, x.mem, zeros));
    float *map = NULL;
    REQUIRE_OK(ek_mem_mmap(dev, x.mem, (void **)&map));
    for (int i = 0; i < 8; i++)
        map[i] = (float)i - 7.5f + 2;
    /* not flushed: the device sees zeros and the checker reports it */
    ek_launch_t l;
    if (CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x, 1, &y, 1, false, NULL, &l))) {
        CHECK_OK(ek_launch_wait(l, -1));
        float out[8];
        CHECK_OK(ek_memcpy_d2s(dev, out, y.mem));
        CHECK(out[0] == expect_a(0, 0)); /* stale zeros were read */
        ek_coh_violation_t v[4];
        size_t count = 0;
        CHECK_OK(ek_dev_coherence_report(dev, v, 4, &count));
        CHECK(count >= 1 && v[0].kind == EK_COH_UNFLUSHED_READ && v[0].mem == x.mem.id);
        CHECK(count >= 1 && strstr(v[0].what, "net_a") != NULL);
        CHECK_OK(ek_free_device(dev, y.mem));
    }
    /* flushed: correct, nothing new reported */
    CHECK_OK(ek_mem_flush(dev, x.mem));
    CHECK_OK(ek_dev_coherence_clear(dev));
    ek_tensor_t out_t;
    memset(&out_t, 0, sizeof out_t);
    CHECK_OK(ek_malloc_device(dev, &out_t.mem, 32));
    float *omap = NULL;
    CHECK_OK(ek_mem_mmap(dev, out_t.mem, (void **)&omap));
    if (CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x, 1, &out_t, 1, true, NULL, &l))) {
        CHECK_OK(ek_launch_wait(l, -1));
        CHECK_OK(ek_mem_invalidate(dev, out_t.mem));
        CHECK(check_output_a(dev, &out_t, 1, 2));
        CHECK(omap && omap[7] == expect_a(2 + 7 - 7.5f, 7));
        size_t count = 99;
        CHECK_OK(ek_dev_coherence_report(dev, NULL, 0, &count));
        CHECK(count == 0);
    }
    CHECK_OK(ek_mem_unmap(dev, out_t.mem));
    CHECK_OK(ek_free_device(dev, out_t.mem));
    CHECK_OK(ek_mem_unmap(dev, x.mem));
    CHECK_OK(ek_free_device(dev, x.mem));
    teardown(dev, rt);
}

/* ---- memory strategies: static workspaces and allocators ---- */

/* Input and output of "big" in fresh device memory. */
static void big_tensors(ek_dev_t dev, ek_tensor_t *x, ek_tensor_t *y, float seed)
{
    static float data[BIG];
    memset(x, 0, sizeof *x);
    memset(y, 0, sizeof *y);
    for (int i = 0; i < BIG; i++)
        data[i] = seed + (float)(i % 97) - 48;
    CHECK_OK(ek_malloc_device(dev, &x->mem, BIG * 4));
    CHECK_OK(ek_memcpy_s2d(dev, x->mem, data));
    CHECK_OK(ek_malloc_device(dev, &y->mem, BIG * 4));
    x->dtype = y->dtype = EK_DTYPE_FLOAT32;
    x->shape = y->shape = shape1(BIG);
}

static int check_big(ek_dev_t dev, const ek_tensor_t *y, float seed)
{
    static float out[BIG];
    if (!CHECK_OK(ek_memcpy_d2s_partial_offset(dev, out, y->mem, BIG * 4, y->offset)))
        return 0;
    for (int i = 0; i < BIG; i++)
        if (out[i] != expect_big(seed + (float)(i % 97) - 48))
            return 0;
    return 1;
}

static void test_stage_memory(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    ek_stage_memory_t m;
    CHECK_OK(ek_rt_stage_memory(rt, "big", 0, &m));
    /* the arena of two BIG tensors, plus the slack kernels may read past it */
    CHECK(m.workspace_bytes >= 2 * BIG * 4 && m.workspace_bytes <= 2 * BIG * 4 + 256);
    CHECK(m.constant_bytes == 0 && m.alignment == 64);
    CHECK_OK(ek_rt_stage_memory(rt, "net_a", 1, &m));
    CHECK(m.constant_bytes == 8 * 4); /* c */
    CHECK_STATUS(ek_rt_stage_memory(rt, "net_a", 2, &m), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("stages 0 .. 1, not 2");
    CHECK_STATUS(ek_rt_stage_memory(rt, "nope", 0, &m), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_rt_stage_memory(rt, "big", 0, NULL), EK_ERR_INVALID_ARG);
    teardown(dev, rt);
}

static void test_workspace_launches_allocate_nothing(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    ek_stage_memory_t m;
    REQUIRE_OK(ek_rt_stage_memory(rt, "big", 0, &m));
    ek_mem_t block;
    REQUIRE_OK(ek_malloc_device(dev, &block, m.workspace_bytes + 128));
    ek_workspace_t ws;
    REQUIRE_OK(ek_rt_workspace_create(rt, "big", 0, block, 128, m.workspace_bytes, &ws));
    ek_tensor_t x, y;
    big_tensors(dev, &x, &y, 1);
    ek_launch_options_t opt;
    memset(&opt, 0, sizeof opt);
    opt.workspace = ws;
    ek_heap_stats_t before = STATS(dev);
    int ok = 1;
    for (int i = 0; i < 1000 && ok; i++) {
        ek_launch_t l;
        ok = CHECK_OK(ek_rt_launch_tensor(rt, "big", &x, 1, &y, 1, true, &opt, &l)) && CHECK_OK(ek_launch_wait(l, -1));
    }
    ek_heap_stats_t after = STATS(dev);
    CHECK(after.allocations == before.allocations && after.used == before.used && after.peak == before.peak);
    CHECK(check_big(dev, &y, 1));

    /* The launch's own checks. */
    ek_launch_t l;
    ek_tensor_t rt_out;
    CHECK_STATUS(ek_rt_launch_tensor(rt, "big", &x, 1, &rt_out, 1, false, &opt, &l), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("give the outputs' memory");
    ek_tensor_t xa = input_a(dev, 1, 0), ya;
    CHECK_STATUS(ek_rt_launch_tensor(rt, "net_a", &xa, 1, &ya, 1, true, &opt, &l), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("is for network 'big' stage 0");
    ek_launch_options_t forged = opt;
    forged.workspace.id = rt.id; /* a handle of another kind */
    CHECK_STATUS(ek_rt_launch_tensor(rt, "big", &x, 1, &y, 1, true, &forged, &l), EK_ERR_INVALID_HANDLE);
    CHECK_ERROR_MENTIONS("workspace");

    /* One launch at a time: queue one behind blocked workers, then another in the same workspace. */
    ek_tensor_t gx[2], gy[2];
    if (gate_block(dev, rt, gx, gy)) {
        ek_launch_t first;
        CHECK_OK(ek_rt_launch_tensor(rt, "big", &x, 1, &y, 1, true, &opt, &first));
        CHECK_STATUS(ek_rt_launch_tensor(rt, "big", &x, 1, &y, 1, true, &opt, &l), EK_ERR_BUSY);
        CHECK_ERROR_MENTIONS("concurrent launches each need their own workspace");
        CHECK_STATUS(ek_workspace_destroy(ws), EK_ERR_BUSY);
        gate_release(dev, gx, gy);
        CHECK_OK(ek_launch_wait(first, -1));
    }
    /* A second workspace over other memory runs concurrently with the first. */
    ek_mem_t block2;
    ek_workspace_t ws2;
    REQUIRE_OK(ek_malloc_device(dev, &block2, m.workspace_bytes));
    CHECK_OK(ek_rt_workspace_create(rt, "big", 0, block2, 0, m.workspace_bytes, &ws2));
    ek_tensor_t x2, y2;
    big_tensors(dev, &x2, &y2, 5);
    ek_launch_options_t opt2 = opt;
    opt2.workspace = ws2;
    ek_launch_t l1, l2;
    CHECK_OK(ek_rt_launch_tensor(rt, "big", &x, 1, &y, 1, true, &opt, &l1));
    CHECK_OK(ek_rt_launch_tensor(rt, "big", &x2, 1, &y2, 1, true, &opt2, &l2));
    CHECK_OK(ek_launch_wait(l1, -1));
    CHECK_OK(ek_launch_wait(l2, -1));
    CHECK(check_big(dev, &y, 1) && check_big(dev, &y2, 5));

    /* Freeing the memory under a workspace: the next launch says so, nothing crashes. */
    CHECK_OK(ek_free_device(dev, block2));
    CHECK_OK(ek_rt_launch_tensor(rt, "big", &x2, 1, &y2, 1, true, &opt2, &l2));
    CHECK_STATUS(ek_launch_wait(l2, -1), EK_ERR_FREED_HANDLE);
    CHECK_ERROR_MENTIONS("destroy the workspace before freeing its memory");
    CHECK_OK(ek_workspace_destroy(ws2));
    CHECK_STATUS(ek_workspace_destroy(ws2), EK_ERR_DOUBLE_FREE);
    CHECK_STATUS(ek_rt_launch_tensor(rt, "big", &x2, 1, &y2, 1, true, &opt2, &l2), EK_ERR_FREED_HANDLE);

    /* Creation checks. */
    ek_workspace_t bad;
    CHECK_STATUS(ek_rt_workspace_create(rt, "big", 0, block, 0, m.workspace_bytes - 64, &bad), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("needs a");
    CHECK_STATUS(ek_rt_workspace_create(rt, "big", 0, block, 32, m.workspace_bytes, &bad), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("offset 32 is not a multiple of 64");
    CHECK_STATUS(ek_rt_workspace_create(rt, "big", 0, block, 192, m.workspace_bytes, &bad), EK_ERR_OUT_OF_RANGE);
    CHECK_STATUS(ek_rt_workspace_create(rt, "big", 1, block, 0, m.workspace_bytes, &bad), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_rt_workspace_create(rt, "big", 0, block2, 0, m.workspace_bytes, &bad), EK_ERR_FREED_HANDLE);
    ek_dev_t dev1;
    ek_mem_t other;
    if (CHECK_OK(ekt_open(&dev1, 1, 4 * MIB, EK_COHERENCE_DEFAULT))) {
        if (CHECK_OK(ek_malloc_device(dev1, &other, m.workspace_bytes))) {
            CHECK_STATUS(ek_rt_workspace_create(rt, "big", 0, other, 0, m.workspace_bytes, &bad),
                         EK_ERR_DEVICE_MISMATCH);
            CHECK_OK(ek_free_device(dev1, other));
        }
        CHECK_OK(ekt_close(dev1));
    }

    /* The runtime destroys the workspaces left; their handles are then stale. */
    CHECK_OK(ek_rt_destroy(rt));
    CHECK_STATUS(ek_workspace_destroy(ws), EK_ERR_DOUBLE_FREE);
    CHECK_OK(ek_free_device(dev, block));
    CHECK_OK(ek_free_device(dev, x.mem));
    CHECK_OK(ek_free_device(dev, y.mem));
    CHECK_OK(ek_free_device(dev, x2.mem));
    CHECK_OK(ek_free_device(dev, y2.mem));
    CHECK_OK(ek_free_device(dev, xa.mem));
    CHECK_OK(ekt_close(dev));
}

#define DESTROY_ROUNDS 200

struct destroyer {
    ek_workspace_t *ws; /* the round's workspace, made by the test's thread */
    ek_status_t got[DESTROY_ROUNDS];
    pthread_barrier_t *go, *done;
};

/* One thread of the pair, for every round: wait for the workspace, destroy it, report. The same two
 * threads serve every round (qemu-user, which runs the board tests, mishandles heavy thread churn). */
static void *destroy_main(void *p)
{
    struct destroyer *d = p;
    for (int round = 0; round < DESTROY_ROUNDS; round++) {
        pthread_barrier_wait(d->go);
        d->got[round] = ek_workspace_destroy(*d->ws);
        pthread_barrier_wait(d->done);
    }
    return NULL;
}

/* Two threads destroying one workspace: one succeeds, the other is told it was freed; nothing crashes. */
static void test_workspace_destroyed_twice_at_once(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    ek_stage_memory_t m;
    ek_mem_t block;
    REQUIRE_OK(ek_rt_stage_memory(rt, "net_a", 0, &m));
    REQUIRE_OK(ek_malloc_device(dev, &block, m.workspace_bytes));
    pthread_barrier_t go, done;
    pthread_barrier_init(&go, NULL, 3);
    pthread_barrier_init(&done, NULL, 3);
    ek_workspace_t ws = {0};
    static struct destroyer d[2];
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) {
        d[i].ws = &ws;
        d[i].go = &go;
        d[i].done = &done;
        pthread_create(&threads[i], NULL, destroy_main, &d[i]);
    }
    for (int round = 0; round < DESTROY_ROUNDS; round++) {
        if (!CHECK_OK(ek_rt_workspace_create(rt, "net_a", 0, block, 0, m.workspace_bytes, &ws)))
            ws.id = 0; /* the threads still take their turn: both then fail */
        pthread_barrier_wait(&go);
        pthread_barrier_wait(&done);
        ek_status_t a = d[0].got[round], b = d[1].got[round];
        ek_status_t other = a == EK_OK ? b : a;
        CHECK(((a == EK_OK) + (b == EK_OK)) == 1 && (other == EK_ERR_DOUBLE_FREE || other == EK_ERR_FREED_HANDLE));
    }
    for (int i = 0; i < 2; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&go);
    pthread_barrier_destroy(&done);
    CHECK_OK(ek_free_device(dev, block));
    teardown(dev, rt);
}

/* A custom allocator over the device heap that counts its calls, and can be told to misbehave. */
struct counting {
    int allocs, frees;
    int misbehave; /* 1: refuse; 2: answer a misaligned offset; 3: answer a forged memory */
};

static ek_status_t counting_alloc(void *user, ek_dev_t dev, size_t size, size_t alignment, ek_mem_t *mem,
                                  size_t *offset)
{
    struct counting *c = user;
    if (c->misbehave == 1)
        return EK_ERR_OUT_OF_MEMORY;
    ek_status_t status = ek_malloc_device(dev, mem, size + alignment);
    if (status != EK_OK)
        return status;
    *offset = c->misbehave == 2 ? 8 : alignment; /* a part of a larger block, as a sub-allocator gives */
    if (c->misbehave == 3)
        mem->id ^= 0x10000;
    c->allocs++;
    return EK_OK;
}

static void counting_free(void *user, ek_dev_t dev, ek_mem_t mem, size_t offset, size_t size)
{
    struct counting *c = user;
    (void)offset;
    (void)size;
    if (c->misbehave == 3)
        mem.id ^= 0x10000;
    if (ek_free_device(dev, mem) == EK_OK)
        c->frees++;
}

static void test_custom_allocator(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 64 * MIB, EK_COHERENCE_DEFAULT));
    struct counting c = {0, 0, 0};
    ek_allocator_ops_t ops = {counting_alloc, counting_free};
    ek_allocator_t a;
    REQUIRE_OK(ek_allocator_create(&a, &ops, &c));
    ek_rt_config_t cfg = {.kernels = EK_KERNELS_PORTABLE, .allocator = a};
    ek_rt_t rt;
    REQUIRE_OK(ek_rt_create_ex(&rt, dev, &cfg));
    REQUIRE_OK(ek_rt_load_model_data(rt, model_bytes, model_size));
    ek_allocator_stats_t st;
    CHECK_OK(ek_allocator_stats(a, &st));
    CHECK(st.runtimes == 1 && st.allocations == 0 && st.capacity == 0);

    /* A launch's context and its runtime-allocated output come from the allocator. */
    ek_tensor_t x, y;
    big_tensors(dev, &x, &y, 2);
    ek_tensor_t out;
    ek_launch_t l;
    REQUIRE_OK(ek_rt_launch_tensor(rt, "big", &x, 1, &out, 1, false, NULL, &l));
    CHECK_OK(ek_launch_wait(l, -1));
    CHECK(out.offset == 64);
    CHECK(check_big(dev, &out, 2));
    CHECK_OK(ek_allocator_stats(a, &st));
    CHECK(st.allocations == 2 && st.live_blocks == 2 && c.allocs == 2);
    CHECK(st.bytes_in_use >= 3 * BIG * 4 && st.peak_bytes == st.bytes_in_use);
    /* ek_rt_launch_data stages its inputs and outputs through it too, and gives them back */
    float xd[16], yd[16];
    for (int i = 0; i < 16; i++)
        xd[i] = (float)i;
    const void *ins[1] = {xd};
    void *outs[1] = {yd};
    ek_shape_t s = ekt_shape2(2, 8), os;
    size_t cap = sizeof yd;
    CHECK_OK(ek_rt_launch_data(rt, "net_a", ins, &s, 1, outs, &cap, &os, 1, NULL));
    CHECK(yd[3] == expect_a(3, 3));
    CHECK_OK(ek_allocator_stats(a, &st));
    CHECK(st.allocations == 5 && st.frees == 2 && st.live_blocks == 3); /* + net_a's context */

    /* The allocator outlives its runtime, and the blocks it gave out. */
    CHECK_STATUS(ek_allocator_destroy(a), EK_ERR_BUSY);
    CHECK_ERROR_MENTIONS("still used by 1 runtime");
    CHECK_OK(ek_rt_destroy(rt));
    CHECK_STATUS(ek_allocator_destroy(a), EK_ERR_BUSY);
    CHECK_ERROR_MENTIONS("ek_allocator_free");
    CHECK_OK(ek_allocator_free(a, out.mem, out.offset));
    CHECK_STATUS(ek_allocator_free(a, out.mem, out.offset), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("given back already");
    CHECK_OK(ek_allocator_stats(a, &st));
    CHECK(st.live_blocks == 0 && st.bytes_in_use == 0 && st.runtimes == 0 && c.frees == c.allocs);

    /* Misbehaving allocators: each a clear launch error. */
    const char *expect[4] = {"", "the allocator refused", "offset 8 is not a multiple of 64", "not a live memory"};
    for (int mode = 1; mode <= 3; mode++) {
        c.misbehave = mode;
        REQUIRE_OK(ek_rt_create_ex(&rt, dev, &cfg));
        REQUIRE_OK(ek_rt_load_model_data(rt, model_bytes, model_size));
        ek_status_t got = ek_rt_launch_tensor(rt, "big", &x, 1, &y, 1, true, NULL, &l);
        if (got == EK_OK)
            got = ek_launch_wait(l, -1);
        CHECK(got != EK_OK);
        if (!strstr(ek_last_error(), expect[mode]))
            ekt_report_failure(__FILE__, __LINE__, expect[mode]);
        CHECK_OK(ek_rt_destroy(rt));
    }
    c.misbehave = 0;
    CHECK_OK(ek_allocator_stats(a, &st));
    CHECK(st.failures == 3 && st.live_blocks == 0);
    CHECK(STATS(dev).allocations == 2); /* x and y: the misaligned answer was given back */
    CHECK_OK(ek_allocator_destroy(a));
    CHECK_STATUS(ek_allocator_destroy(a), EK_ERR_DOUBLE_FREE);
    CHECK_STATUS(ek_rt_create_ex(&rt, dev, &cfg), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_allocator_create(&a, NULL, NULL), EK_ERR_INVALID_ARG);
    CHECK_OK(ek_free_device(dev, x.mem));
    CHECK_OK(ek_free_device(dev, y.mem));
    CHECK_OK(ekt_close(dev));
}

static void test_pool_allocator(void)
{
    ek_dev_t dev;
    REQUIRE_OK(ekt_open(&dev, 0, 64 * MIB, EK_COHERENCE_DEFAULT));
    ek_allocator_t pool, small;
    REQUIRE_OK(ek_allocator_create_pool(&pool, dev, 4 * MIB));
    REQUIRE_OK(ek_allocator_create_pool(&small, dev, 4096));
    ek_heap_stats_t before = STATS(dev);
    ek_rt_config_t cfg = {.allocator = pool};
    ek_rt_t rt;
    REQUIRE_OK(ek_rt_create_ex(&rt, dev, &cfg));
    REQUIRE_OK(ek_rt_load_model_data(rt, model_bytes, model_size));
    ek_tensor_t x, y;
    big_tensors(dev, &x, &y, 3);
    before = STATS(dev);
    for (int i = 0; i < 50; i++) {
        ek_launch_t l;
        CHECK_OK(ek_rt_launch_tensor(rt, "big", &x, 1, &y, 1, true, NULL, &l));
        CHECK_OK(ek_launch_wait(l, -1));
    }
    CHECK(check_big(dev, &y, 3));
    CHECK(STATS(dev).allocations == before.allocations); /* the device heap is never asked */
    ek_allocator_stats_t st;
    CHECK_OK(ek_allocator_stats(pool, &st));
    CHECK(st.capacity == 4 * MIB && st.allocations >= 1 && st.live_blocks >= 1 && st.runtimes == 1);
    CHECK_OK(ek_rt_destroy(rt));
    CHECK_OK(ek_allocator_stats(pool, &st));
    CHECK(st.live_blocks == 0 && st.bytes_in_use == 0 && st.peak_bytes >= 2 * BIG * 4);

    /* Too small a pool: the launch fails, saying how full it is. */
    cfg.allocator = small;
    REQUIRE_OK(ek_rt_create_ex(&rt, dev, &cfg));
    REQUIRE_OK(ek_rt_load_model_data(rt, model_bytes, model_size));
    ek_launch_t l;
    ek_status_t got = ek_rt_launch_tensor(rt, "big", &x, 1, &y, 1, true, NULL, &l);
    if (got == EK_OK)
        got = ek_launch_wait(l, -1);
    CHECK(got == EK_ERR_OUT_OF_MEMORY);
    CHECK_ERROR_MENTIONS("the pool allocator (4096 bytes");
    CHECK_OK(ek_rt_destroy(rt));

    /* The pool's block is the allocator's: ek_free_device refuses it (outputs go back with ek_allocator_free). */
    cfg.allocator = pool;
    REQUIRE_OK(ek_rt_create_ex(&rt, dev, &cfg));
    REQUIRE_OK(ek_rt_load_model_data(rt, model_bytes, model_size));
    ek_tensor_t out;
    REQUIRE_OK(ek_rt_launch_tensor(rt, "big", &x, 1, &out, 1, false, NULL, &l));
    CHECK_OK(ek_launch_wait(l, -1));
    CHECK(check_big(dev, &out, 3));
    CHECK_STATUS(ek_free_device(dev, out.mem), EK_ERR_BUSY);
    CHECK_ERROR_MENTIONS("ek_allocator_free");
    CHECK_OK(ek_rt_destroy(rt));
    CHECK_OK(ek_allocator_free(pool, out.mem, out.offset));

    /* A pool of another device. */
    ek_dev_t dev1;
    ek_allocator_t pool1;
    if (CHECK_OK(ekt_open(&dev1, 1, 4 * MIB, EK_COHERENCE_DEFAULT))) {
        if (CHECK_OK(ek_allocator_create_pool(&pool1, dev1, MIB))) {
            cfg.allocator = pool1;
            CHECK_STATUS(ek_rt_create_ex(&rt, dev, &cfg), EK_ERR_DEVICE_MISMATCH);
            CHECK_ERROR_MENTIONS("pool on device 1");
            CHECK_OK(ek_allocator_destroy(pool1));
        }
        CHECK_OK(ekt_close(dev1));
    }
    CHECK_STATUS(ek_allocator_create_pool(&pool1, dev, 0), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_allocator_create_pool(&pool1, dev, 1024 * MIB), EK_ERR_OUT_OF_MEMORY);
    CHECK_OK(ek_allocator_destroy(pool));
    CHECK_OK(ek_allocator_destroy(small));
    CHECK(STATS(dev).allocations == 2); /* the pools' blocks went back: x and y remain */
    CHECK_OK(ek_free_device(dev, x.mem));
    CHECK_OK(ek_free_device(dev, y.mem));
    CHECK_OK(ekt_close(dev));
}

/* ---- dynamic outputs ---- */

static void test_dynamic_outputs(void)
{
    ek_dev_t dev;
    ek_rt_t rt;
    if (!setup(&dev, &rt, EK_COHERENCE_DEFAULT))
        return;
    const ek_net_info_t *info;
    REQUIRE_OK(ek_rt_network_info(rt, "topk", &info));
    CHECK(!info->inputs[1].dynamic && info->outputs[0].dynamic && info->outputs[1].dynamic);
    float x[16];
    for (int i = 0; i < 16; i++)
        x[i] = (float)((i * 7) % 16) - 3.5f; /* a permutation: no ties */
    ek_tensor_t in[2], out[2];
    memset(in, 0, sizeof in);
    memset(out, 0, sizeof out);
    REQUIRE_OK(ek_malloc_device(dev, &in[0].mem, sizeof x));
    REQUIRE_OK(ek_malloc_device(dev, &in[1].mem, 8));
    CHECK_OK(ek_memcpy_s2d(dev, in[0].mem, x));
    in[0].dtype = EK_DTYPE_FLOAT32;
    in[0].shape = ekt_shape2(1, 16);
    in[1].dtype = EK_DTYPE_INT64;
    in[1].shape = shape1(1);
    /* values: room for 3 floats; indices: room for 3, then a guard block right after it on the heap */
    REQUIRE_OK(ek_malloc_device(dev, &out[0].mem, 12));
    REQUIRE_OK(ek_malloc_device(dev, &out[1].mem, 24));
    ek_mem_t guard;
    REQUIRE_OK(ek_malloc_device(dev, &guard, 4096));
    uint8_t pattern[4096], seen[4096];
    memset(pattern, 0xA5, sizeof pattern);
    CHECK_OK(ek_memcpy_s2d(dev, guard, pattern));
    for (int64_t k = 0; k <= 4; k++) {
        CHECK_OK(ek_memcpy_s2d(dev, in[1].mem, &k));
        ek_launch_t l;
        REQUIRE_OK(ek_rt_launch_tensor(rt, "topk", in, 2, out, 2, true, NULL, &l));
        ek_status_t got = ek_launch_wait(l, -1);
        if (k <= 3) {
            /* the produced shapes, in the caller's array, and the values in order */
            if (!CHECK_OK(got))
                continue;
            CHECK(out[0].shape.num_dims == 2 && out[0].shape.dims[0] == 1 && out[0].shape.dims[1] == k);
            CHECK(out[1].shape.num_dims == 2 && out[1].shape.dims[1] == k);
            float v[3] = {0};
            int64_t idx[3] = {0};
            if (k) {
                CHECK_OK(ek_memcpy_d2s_partial(dev, v, out[0].mem, (size_t)k * 4));
                CHECK_OK(ek_memcpy_d2s_partial(dev, idx, out[1].mem, (size_t)k * 8));
            }
            for (int j = 0; j < k; j++)
                CHECK(v[j] == 11.5f - (float)j && x[idx[j]] == v[j]);
        } else {
            /* 4 values do not fit in 12 bytes: an error naming the bytes needed, nothing written */
            CHECK(got == EK_ERR_OUT_OF_RANGE);
            CHECK_ERROR_MENTIONS("give it at least 16 bytes");
        }
    }
    CHECK_OK(ek_memcpy_d2s(dev, seen, guard));
    CHECK(memcmp(seen, pattern, sizeof seen) == 0);
    /* K past the bound, or negative: the kernel's error */
    for (int64_t k = -1; k <= 17; k += 18) {
        CHECK_OK(ek_memcpy_s2d(dev, in[1].mem, &k));
        ek_launch_t l;
        REQUIRE_OK(ek_rt_launch_tensor(rt, "topk", in, 2, out, 2, true, NULL, &l));
        CHECK(ek_launch_wait(l, -1) != EK_OK);
    }
    /* launch_data: capacities below the bound, checked against what was produced */
    int64_t k = 2;
    const void *ins[2] = {x, &k};
    float vals[16];
    int64_t idxs[16];
    void *outs[2] = {vals, idxs};
    ek_shape_t in_shapes[2] = {ekt_shape2(1, 16), shape1(1)}, out_shapes[2];
    size_t caps[2] = {8, 16};
    CHECK_OK(ek_rt_launch_data(rt, "topk", ins, in_shapes, 2, outs, caps, out_shapes, 2, NULL));
    CHECK(out_shapes[0].dims[1] == 2 && vals[0] == 11.5f && vals[1] == 10.5f);
    k = 3;
    CHECK_STATUS(ek_rt_launch_data(rt, "topk", ins, in_shapes, 2, outs, caps, out_shapes, 2, NULL), EK_ERR_OUT_OF_RANGE);
    CHECK_ERROR_MENTIONS("at least 12 bytes");
    for (int i = 0; i < 2; i++) {
        CHECK_OK(ek_free_device(dev, in[i].mem));
        CHECK_OK(ek_free_device(dev, out[i].mem));
    }
    CHECK_OK(ek_free_device(dev, guard));
    teardown(dev, rt);
}

int main(void)
{
    ekt_init();
    model_bytes = build_model(&model_size);
    RUN(test_dtypes);
    RUN(test_load_and_info);
    RUN(test_config);
    RUN(test_launch_runtime_memory);
    RUN(test_launch_user_memory);
    RUN(test_run);
    RUN(test_validation_messages);
    RUN(test_launch_data);
    RUN(test_wait_timeout_and_callbacks);
    RUN(test_callback_waits_for_its_launch);
    RUN(test_callback_sees_outputs_and_handle);
    RUN(test_sync_calls_from_callbacks);
    RUN(test_freed_input_and_dev_sync);
    RUN(test_threads_and_mask);
    RUN(test_threads_share_one_runtime);
    RUN(test_threads_share_several_runtimes);
    RUN(test_destroy_waits_for_launches);
    RUN(test_strict_coherence);
    RUN(test_stage_memory);
    RUN(test_workspace_launches_allocate_nothing);
    RUN(test_workspace_destroyed_twice_at_once);
    RUN(test_custom_allocator);
    RUN(test_pool_allocator);
    RUN(test_dynamic_outputs);
    free(model_bytes);
    return ek_test_summary();
}
