/* The .ekm loader (src/model.c): a valid model built with ekm_builder.h loads and describes itself;
 * specific corruptions give specific messages; and no truncation or byte change of it crashes the
 * loader or reads outside the bytes (run under ASan with -DEDGEKIT_SANITIZE=ON): every result is
 * EK_OK or EK_ERR_MODEL_INVALID with a message. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ek_test.h"
#include "ek_helpers.h"
#include "ekm_builder.h"
#include "model.h"

/* The sample model: two networks.
 *   alpha: x -> CONV(W, bias) -> t0 -> RELU -> t1 -> RESHAPE -> y;  ADD(t1, t0) -> z
 *          two stages, x [1,4,4,3] and [1,2,2,3]
 *   beta:  ADD(a, b) -> u -> RELU -> s;  one stage */
struct sample {
    ekb_t b;
    uint8_t *data;
    size_t size;
    /* record numbers, for tests that patch them */
    uint32_t conv_op, relu_op, add_op, beta_add_op;
    uint32_t t0_rec, t1_rec, x_rec;
    uint32_t x, t0, t1, z; /* stage-0 tensor indices of alpha */
};

static float weights[8 * 3 * 3 * 3], biases[8];

static void alpha_stage(struct sample *s, int64_t hw, bool with_bias, bool first)
{
    ekb_t *b = &s->b;
    int64_t xd[] = {1, hw, hw, 3}, wd[] = {8, 3, 3, 3}, bd[] = {8}, td[] = {1, hw, hw, 8}, yd[] = {1, hw * hw * 8};
    ekb_stage(b);
    uint32_t x = ekb_input(b, "x", 0, 4, xd);
    uint32_t w = ekb_constant(b, "conv1.weight", 4, wd, weights);
    uint32_t bias = with_bias ? ekb_constant(b, "conv1.bias", 1, bd, biases) : EKB_ABSENT;
    uint32_t t0 = ekb_arena(b, "t0", 4, td);
    uint32_t t1 = ekb_arena(b, "t1", 4, td);
    uint32_t y = ekb_output(b, "y", 0, 2, yd);
    uint32_t z = ekb_output(b, "z", 1, 4, td);
    if (first) {
        s->x = x;
        s->t0 = t0;
        s->t1 = t1;
        s->z = z;
        s->x_rec = ekb_tensor_record(b, x);
        s->t0_rec = ekb_tensor_record(b, t0);
        s->t1_rec = ekb_tensor_record(b, t1);
    }
    uint32_t conv_in[3] = {x, w, bias};
    ekb_op(b, EK_OP_CONV, "conv1", 3, conv_in, 1, &t0);
    int64_t pads[4] = {1, 1, 1, 1}, ones[2] = {1, 1};
    ekb_attr_ints(b, "pads", 4, pads);
    ekb_attr_ints(b, "strides", 2, ones);
    ekb_attr_ints(b, "dilations", 2, ones);
    ekb_attr_int(b, "group", 1);
    if (first)
        s->conv_op = b->op_count - 1;
    ekb_op1(b, EK_OP_RELU, "relu1", t0, t1);
    if (first)
        s->relu_op = b->op_count - 1;
    ekb_op1(b, EK_OP_RESHAPE, "flatten", t1, y);
    ekb_op2(b, EK_OP_ADD, "add1", t1, t0, z);
    ekb_attr_float(b, "act_min", 0.0f);
    if (first)
        s->add_op = b->op_count - 1;
}

static bool build_sample(struct sample *s, bool with_bias)
{
    memset(s, 0, sizeof *s);
    for (size_t i = 0; i < sizeof weights / sizeof weights[0]; i++)
        weights[i] = (float)((int)(i % 7) - 3) * 0.25f;
    for (size_t i = 0; i < 8; i++)
        biases[i] = (float)i * 0.5f;
    ekb_t *b = &s->b;
    ekb_init(b);

    ekb_network(b, "alpha", 1, 2);
    ekb_io(b, "x", EK_DTYPE_FLOAT32, 4 * 4 * 3 * 4);
    ekb_io(b, "y", EK_DTYPE_FLOAT32, 4 * 4 * 8 * 4);
    ekb_io(b, "z", EK_DTYPE_FLOAT32, 4 * 4 * 8 * 4);
    alpha_stage(s, 4, with_bias, true);
    alpha_stage(s, 2, with_bias, false);

    ekb_network(b, "beta", 2, 1);
    ekb_io(b, "a", EK_DTYPE_FLOAT32, 24);
    ekb_io(b, "b", EK_DTYPE_FLOAT32, 12);
    ekb_io(b, "s", EK_DTYPE_FLOAT32, 24);
    ekb_stage(b);
    int64_t ad[] = {2, 3}, bd[] = {3};
    uint32_t a = ekb_input(b, "a", 0, 2, ad);
    uint32_t bb = ekb_input(b, "b", 1, 1, bd);
    uint32_t u = ekb_arena(b, "u", 2, ad);
    uint32_t out = ekb_output(b, "s", 0, 2, ad);
    ekb_op2(b, EK_OP_ADD, "sum", a, bb, u);
    s->beta_add_op = b->op_count - 1;
    ekb_attr_float(b, "act_min", -1.0f);
    ekb_attr_float(b, "act_max", 1.0f);
    ekb_op1(b, EK_OP_RELU, "relu", u, out);

    s->data = ekb_finish(b, &s->size);
    return s->data != NULL;
}

static void free_sample(struct sample *s)
{
    free(s->data);
    ekb_free(&s->b);
}

/* A fresh heap copy of exactly `size` bytes, so ASan sees any read past them. */
static uint8_t *copy_of(const uint8_t *data, size_t size)
{
    uint8_t *p = malloc(size ? size : 1);
    if (p && size)
        memcpy(p, data, size);
    return p;
}

/* Load a copy; on success free the model (which frees the copy). The error message is reset to a
 * known text first, so a failure must write its own. Returns the status. */
static ek_status_t load_copy(const uint8_t *data, size_t size)
{
    struct ek_model *m = NULL;
    (void)ek_model_load(data, 0, false, &m); /* sets "the model is empty (0 bytes)" */
    uint8_t *copy = copy_of(data, size);
    if (!copy)
        return EK_ERR_OUT_OF_MEMORY;
    ek_status_t st = ek_model_load(copy, size, false, &m);
    if (st == EK_OK) {
        ek_model_free(m);
    } else {
        free(copy);
    }
    return st;
}

/* The result of loading a corrupt copy is EK_OK or MODEL_INVALID with a message of its own. */
static int fuzz_failures;
static void check_fuzz_result(ek_status_t st, size_t size, const char *what, size_t pos)
{
    bool own_message = size == 0 || strcmp(ek_last_error(), "the model is empty (0 bytes)") != 0;
    if (st == EK_OK || (st == EK_ERR_MODEL_INVALID && ek_last_error()[0] && own_message))
        return;
    if (fuzz_failures++ < 10) {
        char text[200];
        snprintf(text, sizeof text, "%s at %zu: %s, message \"%s\"", what, pos, ek_status_name(st), ek_last_error());
        ekt_report_failure(__FILE__, __LINE__, text);
    }
}

static struct ek_model *load_ok(const struct sample *s)
{
    struct ek_model *m = NULL;
    uint8_t *copy = aligned_alloc(64, (s->size + 63) / 64 * 64); /* so constants are 64-aligned */
    if (!copy)
        return NULL;
    memcpy(copy, s->data, s->size);
    if (!CHECK_OK(ek_model_load(copy, s->size, false, &m))) {
        free(copy);
        return NULL;
    }
    return m;
}

/* ---- the valid model ---- */

static void test_load_sample(void)
{
    struct sample s;
    REQUIRE(build_sample(&s, true));
    struct ek_model *m = load_ok(&s);
    if (!m) {
        free_sample(&s);
        return;
    }
    CHECK(m->network_count == 2);
    CHECK(m->size == s.size && m->mapped == false);

    const ek_net_info_t *alpha = &m->networks[0].info, *beta = &m->networks[1].info;
    CHECK(strcmp(alpha->name, "alpha") == 0 && strcmp(beta->name, "beta") == 0);
    CHECK(alpha->input_count == 1 && alpha->output_count == 2 && alpha->stage_count == 2);
    CHECK(strcmp(alpha->inputs[0].name, "x") == 0 && alpha->inputs[0].dtype == EK_DTYPE_FLOAT32);
    CHECK(alpha->inputs[0].scale == 1.0f && alpha->inputs[0].zero_point == 0 && alpha->inputs[0].max_bytes == 192);
    CHECK(strcmp(alpha->outputs[0].name, "y") == 0 && strcmp(alpha->outputs[1].name, "z") == 0);
    CHECK(alpha->outputs[1].max_bytes == 512);
    const ek_shape_t *x1 = &alpha->stages[1].input_shapes[0];
    CHECK(x1->num_dims == 4 && x1->dims[0] == 1 && x1->dims[1] == 2 && x1->dims[2] == 2 && x1->dims[3] == 3);
    const ek_shape_t *y0 = &alpha->stages[0].output_shapes[0], *y1 = &alpha->stages[1].output_shapes[0];
    CHECK(y0->num_dims == 2 && y0->dims[1] == 128 && y1->num_dims == 2 && y1->dims[1] == 32);
    CHECK(alpha->stages[0].output_shapes[1].dims[3] == 8);
    CHECK(beta->input_count == 2 && beta->output_count == 1 && beta->stage_count == 1);
    CHECK(strcmp(beta->inputs[1].name, "b") == 0 && beta->stages[0].input_shapes[1].num_dims == 1);
    CHECK(m->networks[0].model == m && m->networks[0].stage_shapes == alpha->stages[0].input_shapes);

    const struct ek_stage *st = &m->networks[0].stages[0];
    CHECK(st->tensor_count == 7 && st->op_count == 4 && st->engine == NULL);
    CHECK(st->input_tensors[0] == &st->tensors[s.x] && st->output_tensors[1] == &st->tensors[s.z]);
    CHECK(st->arena_size == 2 * 512);
    const struct ek_tensor_desc *w = &st->tensors[1];
    CHECK(w->storage == EK_STORAGE_CONSTANT && w->count == 216 && w->nbytes == 864);
    CHECK(w->constant != NULL && (uintptr_t)w->constant % 64 == 0); /* the builder's buffer is 64-aligned */
    CHECK(w->constant != NULL && memcmp(w->constant, weights, sizeof weights) == 0);
    CHECK(st->tensors[s.t1].offset == 512 && strcmp(st->tensors[s.t1].name, "t1") == 0);

    const struct ek_op *conv = &st->ops[0];
    CHECK(conv->type == EK_OP_CONV && strcmp(conv->name, "conv1") == 0 && conv->n_in == 3 && conv->n_out == 1);
    CHECK(conv->in[0] == &st->tensors[s.x] && conv->out[0] == &st->tensors[s.t0]);
    CHECK(conv->n_attrs == 4 && strcmp(conv->attrs[0].name, "pads") == 0 && conv->attrs[0].type == EK_ATTR_INTS);
    CHECK(conv->attrs[0].count == 4 && conv->attrs[0].ints[2] == 1);
    CHECK(conv->attrs[3].type == EK_ATTR_INT && conv->attrs[3].i == 1);
    CHECK(conv->params != NULL);
    const struct ek_op *add = &st->ops[3];
    CHECK(add->n_attrs == 1 && add->attrs[0].type == EK_ATTR_FLOAT && add->attrs[0].f == 0.0f);
    size_t scratch = 0;
    for (uint32_t i = 0; i < st->op_count; i++)
        scratch = st->ops[i].scratch_per_thread > scratch ? st->ops[i].scratch_per_thread : scratch;
    CHECK(st->scratch_per_thread == scratch);
    const struct ek_stage *bst = &m->networks[1].stages[0];
    CHECK(bst->op_count == 2 && bst->ops[0].attrs[1].f == 1.0f);
    ek_model_free(m);
    free_sample(&s);
}

static void test_absent_bias(void)
{
    struct sample s;
    REQUIRE(build_sample(&s, false));
    struct ek_model *m = load_ok(&s);
    if (m) {
        const struct ek_op *conv = &m->networks[0].stages[0].ops[0];
        CHECK(conv->n_in == 3 && conv->in[2] == NULL);
        ek_model_free(m);
    }
    /* an absent input that is not optional */
    size_t operand = ekb_get32(s.data, ekb_record(&s.b, EKB_OPS, s.add_op) + 8);
    ekb_put32(s.data, ekb_record(&s.b, EKB_OPERANDS, operand + 1), EKB_ABSENT);
    CHECK_STATUS(load_copy(s.data, s.size), EK_ERR_MODEL_INVALID);
    CHECK_ERROR_MENTIONS("not optional");
    free_sample(&s);
}

static void test_minor_version_and_unknown_section(void)
{
    struct sample s;
    REQUIRE(build_sample(&s, true));
    ekb_put16(s.data, 10, 7); /* a newer minor is read */
    CHECK_OK(load_copy(s.data, s.size));

    /* a copy with the section table moved to the end and a 12th entry of an unknown kind */
    size_t size = s.size + 12 * 24;
    uint8_t *p = aligned_alloc(64, (size + 63) / 64 * 64);
    REQUIRE(p);
    memcpy(p, s.data, s.size);
    memcpy(p + s.size, s.data + s.b.layout.table_offset, 11 * 24);
    size_t e = s.size + 11 * 24;
    memset(p + e, 0, 24);
    ekb_put32(p, e, 99);   /* kind */
    ekb_put32(p, e + 4, 0); /* record_size 0 and an odd offset: not checked for unknown kinds */
    ekb_put64(p, e + 8, 3);
    ekb_put64(p, e + 16, 5);
    ekb_put64(p, 16, size);
    ekb_put64(p, 24, s.size);
    ekb_put32(p, 32, 12);
    CHECK_OK(load_copy(p, size));
    ekb_put64(p, e + 16, size); /* but it must lie inside the file */
    CHECK_STATUS(load_copy(p, size), EK_ERR_MODEL_INVALID);
    CHECK_ERROR_MENTIONS("past the end of the file");
    free(p);
    free_sample(&s);
}

/* ---- CONV's residual input Z (.ekm 1.4) ---- */

/* One network: CONV(x, W, bias absent, Z = input r) -> y. z_dtype / z_channels make Z wrong. */
static uint8_t *residual_model(int z_dtype, int64_t z_channels, size_t *size)
{
    ekb_t b;
    ekb_init(&b);
    int64_t xd[] = {1, 4, 4, 3}, wd[] = {8, 3, 3, 3}, yd[] = {1, 4, 4, 8}, zd[] = {1, 4, 4, z_channels};
    ekb_network(&b, "res", 2, 1);
    ekb_io(&b, "x", EK_DTYPE_FLOAT32, sizeof(float) * 4 * 4 * 3);
    ekb_io(&b, "r", z_dtype, ekb_dtype_bytes(z_dtype) * 4 * 4 * (uint64_t)z_channels);
    ekb_io(&b, "y", EK_DTYPE_FLOAT32, sizeof(float) * 4 * 4 * 8);
    ekb_stage(&b);
    uint32_t x = ekb_input(&b, "x", 0, 4, xd);
    uint32_t z = ekb_tensor(&b, "r", z_dtype, EKB_INPUT, 1, 0, 4, zd);
    uint32_t w = ekb_constant(&b, "conv.weight", 4, wd, weights);
    uint32_t y = ekb_output(&b, "y", 0, 4, yd);
    uint32_t conv_in[4] = {x, w, EKB_ABSENT, z};
    ekb_op(&b, EK_OP_CONV, "conv_res", 4, conv_in, 1, &y);
    int64_t pads[4] = {1, 1, 1, 1};
    ekb_attr_ints(&b, "pads", 4, pads);
    ekb_attr_float(&b, "act_min", 0.0f);
    uint8_t *data = ekb_finish(&b, size);
    ekb_free(&b);
    return data;
}

static void test_conv_residual_input(void)
{
    size_t size;
    uint8_t *data = residual_model(EK_DTYPE_FLOAT32, 8, &size);
    REQUIRE(data);
    struct ek_model *m = NULL;
    uint8_t *copy = aligned_alloc(64, (size + 63) / 64 * 64);
    REQUIRE(copy);
    memcpy(copy, data, size);
    if (CHECK_OK(ek_model_load(copy, size, false, &m))) {
        const struct ek_op *conv = &m->networks[0].stages[0].ops[0];
        CHECK(conv->n_in == 4 && conv->in[2] == NULL && conv->in[3] && strcmp(conv->in[3]->name, "r") == 0);
        ek_model_free(m);
    } else {
        free(copy);
    }
    free(data);

    data = residual_model(EK_DTYPE_FLOAT32, 1, &size); /* Z broadcast over the channels: refused */
    REQUIRE(data);
    CHECK_STATUS(load_copy(data, size), EK_ERR_MODEL_INVALID);
    CHECK_ERROR_MENTIONS("conv_res");
    CHECK_ERROR_MENTIONS("Z is [1,4,4,1]");
    printf("     %-28s -> %s\n", "Z of another shape", ek_last_error());
    free(data);

    data = residual_model(EK_DTYPE_INT64, 8, &size);
    REQUIRE(data);
    CHECK_STATUS(load_copy(data, size), EK_ERR_MODEL_INVALID);
    CHECK_ERROR_MENTIONS("conv_res");
    CHECK_ERROR_MENTIONS("must be float32");
    printf("     %-28s -> %s\n", "int64 Z", ek_last_error());
    free(data);
}


/* ---- quantized models (.ekm 1.5) ---- */

enum qvariant { Q_OK, Q_MIXED_MOVEMENT, Q_WSCALE_INT32, Q_X_UINT8, Q_IOS_SCALE, Q_IOS_ZERO_POINT, Q_LUT_TABLE_DTYPE,
                Q_BIAS_FLOAT, Q_DEQUANTIZE_INT32 };

static int8_t q_weights[8 * 3 * 3 * 4];
static float q_wscale[8];
static int32_t q_bias[8];

/* x (int8 [1,5,5,4], scale 0.05, zero point -3) -> QCONV 3x3 pads 1 -> t (int8 [1,5,5,8])
 * -> MAX_POOL 3x3 stride 2 pads 1 -> u (int8 [1,3,3,8]) -> DEQUANTIZE -> y (float32);
 * u -> RESHAPE (or a QLUT) -> q (int8 output, scale 0.1, zero point 2). */
static uint8_t *quantized_model(enum qvariant v, size_t *size)
{
    for (size_t i = 0; i < sizeof q_weights; i++)
        q_weights[i] = (int8_t)((int)(i * 37 % 255) - 127);
    for (int j = 0; j < 8; j++) {
        q_wscale[j] = 0.002f + 0.0005f * (float)j;
        q_bias[j] = 100 * j - 300;
    }
    ekb_t b;
    ekb_init(&b);
    int64_t xd[] = {1, 5, 5, 4}, wd[] = {8, 3, 3, 4}, md[] = {8}, td[] = {1, 5, 5, 8}, ud[] = {1, 3, 3, 8};
    int64_t lutd[] = {256};
    int xt = v == Q_X_UINT8 ? EK_DTYPE_UINT8 : EK_DTYPE_INT8;
    ekb_network(&b, "q", 1, 2);
    ekb_io_q(&b, "x", xt, 100, v == Q_IOS_SCALE ? 0.0f : 0.05f, v == Q_IOS_ZERO_POINT ? 200 : v == Q_X_UINT8 ? 3 : -3);
    ekb_io(&b, "y", EK_DTYPE_FLOAT32, 4 * 72);
    ekb_io_q(&b, "q", EK_DTYPE_INT8, 72, 0.1f, 2);
    ekb_stage(&b);
    uint32_t x = ekb_tensor(&b, "x", xt, EKB_INPUT, 0, 0, 4, xd);
    uint32_t w = ekb_constant_typed(&b, "w", EK_DTYPE_INT8, 4, wd, q_weights);
    uint32_t ws = v == Q_WSCALE_INT32 ? ekb_constant_typed(&b, "w_scale", EK_DTYPE_INT32, 1, md, q_wscale)
                                      : ekb_constant_typed(&b, "w_scale", EK_DTYPE_FLOAT32, 1, md, q_wscale);
    uint32_t bias = ekb_constant_typed(&b, "bias", v == Q_BIAS_FLOAT ? EK_DTYPE_FLOAT32 : EK_DTYPE_INT32, 1, md,
                                       q_bias);
    uint32_t t = ekb_arena_typed(&b, "t", EK_DTYPE_INT8, 4, td);
    uint32_t u = ekb_arena_typed(&b, "u", v == Q_MIXED_MOVEMENT ? EK_DTYPE_FLOAT32 : EK_DTYPE_INT8, 4, ud);
    uint32_t y = ekb_output(&b, "y", 0, 4, ud);
    uint32_t q = ekb_tensor(&b, "q", EK_DTYPE_INT8, EKB_OUTPUT, 1, 0, 4, ud);
    uint32_t conv_in[4] = {x, w, ws, bias};
    ekb_op(&b, EK_OP_QCONV, "qconv", 4, conv_in, 1, &t);
    int64_t pads[4] = {1, 1, 1, 1}, k3[2] = {3, 3}, s2[2] = {2, 2};
    ekb_attr_ints(&b, "pads", 4, pads);
    ekb_attr_float(&b, "x_scale", 0.05f);
    ekb_attr_int(&b, "x_zero_point", -3);
    ekb_attr_float(&b, "y_scale", 0.1f);
    ekb_attr_int(&b, "y_zero_point", 2);
    ekb_attr_int(&b, "q_min", 2); /* a fused Relu */
    ekb_attr_int(&b, "q_max", 127);
    ekb_op1(&b, EK_OP_MAX_POOL, "pool", t, u);
    ekb_attr_ints(&b, "kernel", 2, k3);
    ekb_attr_ints(&b, "strides", 2, s2);
    ekb_attr_ints(&b, "pads", 4, pads);
    if (v == Q_DEQUANTIZE_INT32) {
        uint32_t u32 = ekb_arena_typed(&b, "u32", EK_DTYPE_INT32, 4, ud);
        ekb_op1(&b, EK_OP_RESHAPE, "bad", u, u32); /* refused before: int32 is no movement dtype */
    }
    ekb_op1(&b, EK_OP_DEQUANTIZE, "dequant", u, y);
    ekb_attr_float(&b, "scale", 0.1f);
    ekb_attr_int(&b, "zero_point", 2);
    if (v == Q_LUT_TABLE_DTYPE) {
        static uint8_t table[256];
        uint32_t tab = ekb_constant_typed(&b, "table", EK_DTYPE_UINT8, 1, lutd, table);
        ekb_op2(&b, EK_OP_QLUT, "lut", u, tab, q);
    } else {
        ekb_op1(&b, EK_OP_RESHAPE, "copy", u, q);
    }
    uint8_t *data = ekb_finish(&b, size);
    ekb_free(&b);
    return data;
}

static void test_quantized_model(void)
{
    size_t size;
    uint8_t *data = quantized_model(Q_OK, &size);
    REQUIRE(data);
    struct ek_model *m = NULL;
    uint8_t *copy = aligned_alloc(64, (size + 63) / 64 * 64);
    REQUIRE(copy);
    memcpy(copy, data, size);
    if (CHECK_OK(ek_model_load(copy, size, false, &m))) {
        const struct ek_network *net = &m->networks[0];
        CHECK(net->ios[0].dtype == EK_DTYPE_INT8 && net->ios[0].scale == 0.05f && net->ios[0].zero_point == -3);
        CHECK(net->ios[2].dtype == EK_DTYPE_INT8 && net->ios[2].scale == 0.1f && net->ios[2].zero_point == 2);
        const struct ek_op *qc = &net->stages[0].ops[0];
        CHECK(qc->type == EK_OP_QCONV && strcmp(ek_op_type_name((int)qc->type), "QCONV") == 0);
        CHECK(strncmp(ek_op_algorithm(qc), "qgemm/", 6) == 0);
        ek_model_free(m);
    } else {
        free(copy);
    }

    /* run it through the API: the int8 input and outputs go through as bytes */
    ek_dev_t dev;
    ek_rt_t rt;
    if (CHECK_OK(ekt_open(&dev, 0, 16u << 20, EK_COHERENCE_DEFAULT))) {
        if (CHECK_OK(ek_rt_create(&rt, dev))) {
            if (CHECK_OK(ek_rt_load_model_data(rt, data, size))) {
                int8_t x[100], q[72], t[200], u[72], qref[72];
                float y[72];
                for (int i = 0; i < 100; i++)
                    x[i] = (int8_t)((i * 53) % 256 - 128);
                /* the reference: the spec's formulas */
                for (int i = 0; i < 5; i++)
                    for (int j = 0; j < 5; j++)
                        for (int mo = 0; mo < 8; mo++) {
                            int64_t acc = q_bias[mo];
                            for (int a = 0; a < 3; a++)
                                for (int bb = 0; bb < 3; bb++) {
                                    int ih = i - 1 + a, iw = j - 1 + bb;
                                    if (ih < 0 || ih > 4 || iw < 0 || iw > 4)
                                        continue;
                                    for (int c = 0; c < 4; c++)
                                        acc += (int64_t)(x[(ih * 5 + iw) * 4 + c] + 3) *
                                               q_weights[((mo * 3 + a) * 3 + bb) * 4 + c];
                                }
                            float mult = 0.05f * q_wscale[mo] / 0.1f;
                            float r = nearbyintf((float)(int32_t)acc * mult) + 2;
                            t[(i * 5 + j) * 8 + mo] = (int8_t)(r < 2 ? 2 : r > 127 ? 127 : r);
                        }
                for (int i = 0; i < 3; i++)
                    for (int j = 0; j < 3; j++)
                        for (int c = 0; c < 8; c++) {
                            int best = -128;
                            for (int a = -1; a <= 1; a++)
                                for (int bb = -1; bb <= 1; bb++) {
                                    int ih = 2 * i + a, iw = 2 * j + bb;
                                    if (ih >= 0 && ih < 5 && iw >= 0 && iw < 5 && t[(ih * 5 + iw) * 8 + c] > best)
                                        best = t[(ih * 5 + iw) * 8 + c];
                                }
                            u[(i * 3 + j) * 8 + c] = (int8_t)best;
                            qref[(i * 3 + j) * 8 + c] = (int8_t)best;
                        }
                const void *ins[1] = {x};
                void *outs[2] = {y, q};
                ek_shape_t is, os[2];
                memset(&is, 0, sizeof is);
                is.num_dims = 4;
                is.dims[0] = 1;
                is.dims[1] = is.dims[2] = 5;
                is.dims[3] = 4;
                size_t caps[2] = {sizeof y, sizeof q};
                if (CHECK_OK(ek_rt_launch_data(rt, "q", ins, &is, 1, outs, caps, os, 2, NULL))) {
                    CHECK(memcmp(q, qref, sizeof q) == 0);
                    size_t bad = 0;
                    for (int i = 0; i < 72; i++)
                        bad += y[i] != (float)(u[i] - 2) * 0.1f;
                    CHECK(bad == 0);
                    CHECK(os[1].num_dims == 4 && os[1].dims[3] == 8);
                }
            }
            CHECK_OK(ek_rt_destroy(rt));
        }
        CHECK_OK(ekt_close(dev));
    }
    free(data);

    static const struct {
        enum qvariant v;
        const char *needle, *needle2;
    } bad[] = {
        {Q_MIXED_MOVEMENT, "'pool' (MAX_POOL", "is TENSORS[5] 'u' of dtype float32 (it must be int8, as input 0 is)"},
        {Q_WSCALE_INT32, "'qconv' (QCONV", "input 2 is TENSORS[2] 'w_scale' of dtype int32 (it must be float32)"},
        {Q_X_UINT8, "'qconv' (QCONV", "of dtype uint8 (it must be int8)"},
        {Q_IOS_SCALE, "IOS[0] 'x' (int8): scale 0", "finite and > 0"},
        {Q_IOS_ZERO_POINT, "IOS[0] 'x' (int8): zero_point 200", "-128..127"},
        {Q_LUT_TABLE_DTYPE, "'lut' (QLUT", "its table (input 1, 'table') is uint8"},
        {Q_BIAS_FLOAT, "'qconv' (QCONV", "'bias' of dtype float32 (it must be int32)"},
        {Q_DEQUANTIZE_INT32, "'bad' (RESHAPE", "of dtype int32 (it must be int8, as input 0 is)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        data = quantized_model(bad[i].v, &size);
        REQUIRE(data);
        if (CHECK_STATUS(load_copy(data, size), EK_ERR_MODEL_INVALID)) {
            const char *msg = ek_last_error();
            printf("     %s\n", msg);
            if (!strstr(msg, bad[i].needle) || !strstr(msg, bad[i].needle2))
                ekt_report_failure(__FILE__, __LINE__, "the message does not name the op, operand and dtypes");
        }
        free(data);
    }
}

/* ---- specific corruptions, specific messages ---- */

typedef void (*patch_fn)(struct sample *s);

static void expect_invalid(const char *what, patch_fn patch, const char *needle)
{
    struct sample s;
    if (!build_sample(&s, true)) {
        ekt_report_failure(__FILE__, __LINE__, "build_sample failed");
        return;
    }
    patch(&s);
    ek_status_t st = load_copy(s.data, s.size);
    const char *msg = ek_last_error();
    if (st != EK_ERR_MODEL_INVALID || !strstr(msg, needle)) {
        char text[700];
        snprintf(text, sizeof text, "%s: got %s \"%s\", expected EK_ERR_MODEL_INVALID mentioning \"%s\"", what,
                 ek_status_name(st), msg, needle);
        ekt_report_failure(__FILE__, __LINE__, text);
    } else {
        printf("     %-28s -> %s\n", what, msg);
    }
    free_sample(&s);
}

static void p_magic(struct sample *s) { s->data[0] = 'X'; }
static void p_major(struct sample *s) { ekb_put16(s->data, 8, 2); }
static void p_header_size(struct sample *s) { ekb_put32(s->data, 12, 128); }
static void p_file_size(struct sample *s) { ekb_put64(s->data, 16, s->size + 8); }
static void p_flags(struct sample *s) { ekb_put32(s->data, 36, 1); }
static void p_table_past_end(struct sample *s) { ekb_put32(s->data, 32, 1000); }
static void p_missing_section(struct sample *s)
{
    ekb_put32(s->data, ekb_table_entry(&s->b, EKB_ATTRS), 77);
}
static void p_duplicate_section(struct sample *s)
{
    ekb_put32(s->data, ekb_table_entry(&s->b, EKB_ATTRS), EKB_OPS);
}
static void p_record_size(struct sample *s) { ekb_put32(s->data, ekb_table_entry(&s->b, EKB_TENSORS) + 4, 64); }
static void p_constants_misaligned(struct sample *s)
{
    size_t e = ekb_table_entry(&s->b, EKB_CONSTANTS);
    ekb_put64(s->data, e + 8, ekb_get64(s->data, e + 8) + 8);
    ekb_put64(s->data, e + 16, ekb_get64(s->data, e + 16) - 8);
}
static void p_sections_overlap(struct sample *s)
{
    size_t e = ekb_table_entry(&s->b, EKB_IOS);
    ekb_put64(s->data, e + 8, s->b.layout.offset[EKB_NETWORKS]);
}
static void p_string_unterminated(struct sample *s)
{
    /* the last byte of STRINGS is the NUL of the last string */
    s->data[s->b.layout.offset[EKB_STRINGS] + s->b.layout.size[EKB_STRINGS] - 1] = 'x';
}
static void p_string_ref_past(struct sample *s)
{
    ekb_put32(s->data, ekb_record(&s->b, EKB_TENSORS, s->t1_rec), 1u << 20);
}
static void p_network_empty_name(struct sample *s) { ekb_put32(s->data, ekb_record(&s->b, EKB_NETWORKS, 1), 0); }
static void p_network_dup_name(struct sample *s)
{
    size_t n0 = ekb_record(&s->b, EKB_NETWORKS, 0), n1 = ekb_record(&s->b, EKB_NETWORKS, 1);
    ekb_put32(s->data, n1, ekb_get32(s->data, n0));
}
static void p_io_dup_name(struct sample *s)
{
    ekb_put32(s->data, ekb_record(&s->b, EKB_IOS, 2), ekb_get32(s->data, ekb_record(&s->b, EKB_IOS, 1)));
}
static void p_too_many_inputs(struct sample *s) { ekb_put32(s->data, ekb_record(&s->b, EKB_NETWORKS, 0) + 4, 65); }
static void p_stage_backref(struct sample *s) { ekb_put32(s->data, ekb_record(&s->b, EKB_STAGES, 1), 1); }
static void p_stage_tensors_overlap(struct sample *s)
{
    /* stage 1 of alpha starts inside stage 0's tensors */
    size_t st1 = ekb_record(&s->b, EKB_STAGES, 1);
    ekb_put32(s->data, st1 + 4, ekb_get32(s->data, st1 + 4) - 1);
}
static void p_tensor_outside_arena(struct sample *s)
{
    ekb_put64(s->data, ekb_record(&s->b, EKB_TENSORS, s->t1_rec) + 16, 1024);
}
static void p_tensor_misaligned(struct sample *s)
{
    ekb_put64(s->data, ekb_record(&s->b, EKB_TENSORS, s->t1_rec) + 16, 32);
}
static void p_tensor_nbytes(struct sample *s)
{
    ekb_put64(s->data, ekb_record(&s->b, EKB_TENSORS, s->t1_rec) + 24, 100);
}
static void p_tensor_rank(struct sample *s) { s->data[ekb_record(&s->b, EKB_TENSORS, s->t1_rec) + 6] = 9; }
static void p_tensor_dim_zero(struct sample *s)
{
    ekb_put64(s->data, ekb_record(&s->b, EKB_TENSORS, s->t1_rec) + 32 + 8, 0);
}
static void p_tensor_dim_overflow(struct sample *s)
{
    size_t r = ekb_record(&s->b, EKB_TENSORS, s->t1_rec);
    ekb_put64(s->data, r + 32, (uint64_t)1 << 40);
    ekb_put64(s->data, r + 40, (uint64_t)1 << 40);
}
static void p_tensor_dtype(struct sample *s) { s->data[ekb_record(&s->b, EKB_TENSORS, s->t1_rec) + 4] = 42; }
static void p_constant_past(struct sample *s)
{
    ekb_put64(s->data, ekb_record(&s->b, EKB_TENSORS, s->x_rec + 1) + 16, 1u << 16);
}
static void p_input_dtype(struct sample *s)
{
    size_t r = ekb_record(&s->b, EKB_TENSORS, s->x_rec);
    s->data[r + 4] = EK_DTYPE_INT32; /* same size, so nbytes still holds */
}
static void p_input_max_bytes(struct sample *s) { ekb_put64(s->data, ekb_record(&s->b, EKB_IOS, 0) + 16, 100); }
static void p_binding_storage(struct sample *s)
{
    /* bind input x of stage 0 to t0 */
    size_t st0 = ekb_record(&s->b, EKB_STAGES, 0);
    ekb_put32(s->data, ekb_record(&s->b, EKB_BINDINGS, ekb_get32(s->data, st0 + 20)), s->t0);
}
static void p_binding_range(struct sample *s)
{
    size_t st0 = ekb_record(&s->b, EKB_STAGES, 0);
    ekb_put32(s->data, ekb_record(&s->b, EKB_BINDINGS, ekb_get32(s->data, st0 + 20)), 1000);
}
static void p_op_reads_unwritten(struct sample *s)
{
    /* conv1 reads t1, which relu1 writes later */
    size_t operand = ekb_get32(s->data, ekb_record(&s->b, EKB_OPS, s->conv_op) + 8);
    ekb_put32(s->data, ekb_record(&s->b, EKB_OPERANDS, operand), s->t1);
}
static void p_op_writes_twice(struct sample *s)
{
    /* relu1 writes t0, which conv1 wrote */
    size_t operand = ekb_get32(s->data, ekb_record(&s->b, EKB_OPS, s->relu_op) + 8);
    ekb_put32(s->data, ekb_record(&s->b, EKB_OPERANDS, operand + 1), s->t0);
}
static void p_op_writes_input(struct sample *s)
{
    size_t operand = ekb_get32(s->data, ekb_record(&s->b, EKB_OPS, s->relu_op) + 8);
    ekb_put32(s->data, ekb_record(&s->b, EKB_OPERANDS, operand + 1), s->x);
}
static void p_op_operand_range(struct sample *s)
{
    size_t operand = ekb_get32(s->data, ekb_record(&s->b, EKB_OPS, s->relu_op) + 8);
    ekb_put32(s->data, ekb_record(&s->b, EKB_OPERANDS, operand), 7);
}
static void p_unknown_op(struct sample *s) { ekb_put16(s->data, ekb_record(&s->b, EKB_OPS, s->relu_op) + 4, 99); }
static void p_op_input_count(struct sample *s) { ekb_put16(s->data, ekb_record(&s->b, EKB_OPS, s->relu_op) + 12, 2); }
static void p_op_output_count(struct sample *s) { ekb_put16(s->data, ekb_record(&s->b, EKB_OPS, s->relu_op) + 14, 0); }
static void p_op_attrs_range(struct sample *s)
{
    ekb_put32(s->data, ekb_record(&s->b, EKB_OPS, s->conv_op) + 20, 100000);
}
static void p_attr_type(struct sample *s)
{
    size_t first = ekb_get32(s->data, ekb_record(&s->b, EKB_OPS, s->conv_op) + 16);
    s->data[ekb_record(&s->b, EKB_ATTRS, first) + 4] = 9;
}
static void p_attr_count(struct sample *s)
{
    size_t first = ekb_get32(s->data, ekb_record(&s->b, EKB_OPS, s->conv_op) + 16);
    ekb_put32(s->data, ekb_record(&s->b, EKB_ATTRS, first + 3) + 8, 2); /* group: INT of 2 values */
}
static void p_attr_data_misaligned(struct sample *s)
{
    size_t first = ekb_get32(s->data, ekb_record(&s->b, EKB_OPS, s->conv_op) + 16);
    size_t r = ekb_record(&s->b, EKB_ATTRS, first);
    ekb_put64(s->data, r + 16, ekb_get64(s->data, r + 16) + 4);
}
static void p_attr_data_past(struct sample *s)
{
    size_t first = ekb_get32(s->data, ekb_record(&s->b, EKB_OPS, s->conv_op) + 16);
    ekb_put32(s->data, ekb_record(&s->b, EKB_ATTRS, first) + 8, 60); /* pads: 60 values */
}
static void p_attr_dup_name(struct sample *s)
{
    size_t first = ekb_get32(s->data, ekb_record(&s->b, EKB_OPS, s->conv_op) + 16);
    size_t r0 = ekb_record(&s->b, EKB_ATTRS, first), r1 = ekb_record(&s->b, EKB_ATTRS, first + 1);
    ekb_put32(s->data, r1, ekb_get32(s->data, r0));
}
static void p_prepare_fails(struct sample *s)
{
    /* conv1 strides 2: its output shape is no longer t0's; the kernel's prepare says so */
    size_t first = ekb_get32(s->data, ekb_record(&s->b, EKB_OPS, s->conv_op) + 16);
    size_t data = ekb_get64(s->data, ekb_record(&s->b, EKB_ATTRS, first + 1) + 16);
    ekb_put64(s->data, s->b.layout.offset[EKB_ATTR_DATA] + data, 2);
}
static void p_plan_overlap(struct sample *s)
{
    /* t1 placed on t0, which add1 still reads after relu1 writes t1 */
    ekb_put64(s->data, ekb_record(&s->b, EKB_TENSORS, s->t1_rec) + 16, 0);
}
static void p_output_unwritten(struct sample *s)
{
    /* beta has 2 ops; make it 1: RELU no longer writes s */
    ekb_put32(s->data, ekb_record(&s->b, EKB_STAGES, 2) + 16, 1);
}

static void test_specific_errors(void)
{
    expect_invalid("bad magic", p_magic, "magic");
    expect_invalid("bad major version", p_major, "version_major 2");
    expect_invalid("header_size", p_header_size, "header_size 128");
    expect_invalid("file_size mismatch", p_file_size, "file_size");
    expect_invalid("flags", p_flags, "flags");
    expect_invalid("table past the end", p_table_past_end, "section table");
    expect_invalid("missing section", p_missing_section, "no ATTRS section");
    expect_invalid("duplicate section", p_duplicate_section, "a second OPS section");
    expect_invalid("record size", p_record_size, "record_size 64");
    expect_invalid("CONSTANTS misaligned", p_constants_misaligned, "not 64-aligned");
    expect_invalid("sections overlap", p_sections_overlap, "overlap");
    expect_invalid("string not terminated", p_string_unterminated, "NUL-terminated");
    expect_invalid("string ref past STRINGS", p_string_ref_past, "TENSORS[");
    expect_invalid("network name empty", p_network_empty_name, "NETWORKS[1]: name is empty");
    expect_invalid("network names equal", p_network_dup_name, "two networks are named 'alpha'");
    expect_invalid("IO names equal", p_io_dup_name, "two inputs/outputs are named 'y'");
    expect_invalid("65 inputs", p_too_many_inputs, "input_count 65");
    expect_invalid("stage of another network", p_stage_backref, "STAGES[1]");
    expect_invalid("stage tensor ranges overlap", p_stage_tensors_overlap, "overlap");
    expect_invalid("tensor outside arena", p_tensor_outside_arena, "past the arena (1024 bytes) of stage 0");
    expect_invalid("tensor misaligned", p_tensor_misaligned, "not 64-aligned");
    expect_invalid("tensor nbytes", p_tensor_nbytes, "nbytes 100");
    expect_invalid("tensor rank", p_tensor_rank, "rank 9");
    expect_invalid("tensor dim 0", p_tensor_dim_zero, "dims[1] is 0");
    expect_invalid("tensor count overflow", p_tensor_dim_overflow, "overflow");
    expect_invalid("tensor dtype", p_tensor_dtype, "dtype 42");
    expect_invalid("constant past CONSTANTS", p_constant_past, "past CONSTANTS");
    expect_invalid("input dtype != IO dtype", p_input_dtype, "differs from input 'x'");
    expect_invalid("input above max_bytes", p_input_max_bytes, "exceed max_bytes 100");
    expect_invalid("binding to an arena tensor", p_binding_storage, "is ARENA 0, not INPUT 0");
    expect_invalid("binding out of range", p_binding_range, "tensor 1000");
    expect_invalid("op reads unwritten tensor", p_op_reads_unwritten, "before any op writes it");
    expect_invalid("tensor written twice", p_op_writes_twice, "already wrote");
    expect_invalid("op writes an input", p_op_writes_input, "an INPUT tensor");
    expect_invalid("operand out of the stage", p_op_operand_range, "not one of the stage's 7 tensors");
    expect_invalid("unknown op code", p_unknown_op, "unknown op code 99");
    expect_invalid("op input count", p_op_input_count, "input_count 2");
    expect_invalid("op output count", p_op_output_count, "output_count 0");
    expect_invalid("op attrs past ATTRS", p_op_attrs_range, "past ATTRS");
    expect_invalid("attr type", p_attr_type, "type 9");
    expect_invalid("attr count", p_attr_count, "count 2");
    expect_invalid("ATTR_DATA misaligned", p_attr_data_misaligned, "8-aligned");
    expect_invalid("ATTR_DATA past the end", p_attr_data_past, "ATTR_DATA");
    expect_invalid("attr names equal", p_attr_dup_name, "two attributes are named 'pads'");
    expect_invalid("kernel prepare fails", p_prepare_fails, "conv1");
    expect_invalid("memory plan overlap", p_plan_overlap, "overlaps");
    expect_invalid("output never written", p_output_unwritten, "no op writes it");
}

static void test_same_stage_shapes(void)
{
    /* alpha with two stages of the same input shape */
    struct sample s;
    memset(&s, 0, sizeof s);
    ekb_t *b = &s.b;
    ekb_init(b);
    ekb_network(b, "twins", 1, 2);
    ekb_io(b, "x", EK_DTYPE_FLOAT32, 192);
    ekb_io(b, "y", EK_DTYPE_FLOAT32, 512);
    ekb_io(b, "z", EK_DTYPE_FLOAT32, 512);
    alpha_stage(&s, 4, true, true);
    alpha_stage(&s, 4, true, false);
    s.data = ekb_finish(b, &s.size);
    REQUIRE(s.data);
    CHECK_STATUS(load_copy(s.data, s.size), EK_ERR_MODEL_INVALID);
    CHECK_ERROR_MENTIONS("the same input shapes");
    free_sample(&s);
}

static void test_bad_arguments(void)
{
    struct ek_model dummy;
    struct ek_model *m = &dummy;
    CHECK_STATUS(ek_model_load(NULL, 64, false, &m), EK_ERR_INVALID_ARG);
    CHECK(m == NULL);
    uint8_t bytes[16] = {0};
    CHECK_STATUS(ek_model_load(bytes, 16, false, NULL), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_model_load(bytes, 0, false, &m), EK_ERR_MODEL_INVALID);
    CHECK_ERROR_MENTIONS("empty");
    CHECK_STATUS(ek_model_load(bytes, 16, false, &m), EK_ERR_MODEL_INVALID);
    CHECK_ERROR_MENTIONS("shorter than the 64-byte header");
    ek_model_free(NULL);
}

/* ---- files ---- */

static void test_load_file(void)
{
    struct sample s;
    REQUIRE(build_sample(&s, true));
    char path[] = "/tmp/ekt_model_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    CHECK(write(fd, s.data, s.size) == (ssize_t)s.size);
    close(fd);
    struct ek_model *m = NULL;
    if (CHECK_OK(ek_model_load_file(path, &m))) {
        CHECK(m->mapped && m->size == s.size && m->network_count == 2);
        const struct ek_tensor_desc *w = &m->networks[0].stages[0].tensors[1];
        CHECK(w->constant != NULL && (uintptr_t)w->constant % 64 == 0);
        ek_model_free(m);
    }
    /* a corrupt file names itself and the problem */
    FILE *f = fopen(path, "r+b");
    REQUIRE(f);
    fseek(f, 8, SEEK_SET);
    fputc(9, f);
    fclose(f);
    CHECK_STATUS(ek_model_load_file(path, &m), EK_ERR_MODEL_INVALID);
    CHECK(strstr(ek_last_error(), path) != NULL);
    CHECK_ERROR_MENTIONS("version_major 9");
    /* empty */
    f = fopen(path, "wb");
    REQUIRE(f);
    fclose(f);
    CHECK_STATUS(ek_model_load_file(path, &m), EK_ERR_MODEL_INVALID);
    CHECK_ERROR_MENTIONS("empty");
    unlink(path);
    CHECK_STATUS(ek_model_load_file(path, &m), EK_ERR_SYSTEM);
    CHECK(strstr(ek_last_error(), strerror(ENOENT)) != NULL);
    CHECK(strstr(ek_last_error(), path) != NULL);
    CHECK_STATUS(ek_model_load_file("/tmp", &m), EK_ERR_SYSTEM);
    CHECK_ERROR_MENTIONS("/tmp");
    CHECK_STATUS(ek_model_load_file(NULL, &m), EK_ERR_INVALID_ARG);
    free_sample(&s);
}

/* ---- no input crashes the loader ---- */

static void test_truncations(void)
{
    struct sample s;
    REQUIRE(build_sample(&s, true));
    fuzz_failures = 0;
    uint8_t *p = malloc(s.size);
    REQUIRE(p);
    for (size_t len = 0; len < s.size; len++) {
        check_fuzz_result(load_copy(s.data, len), len, "truncated", len);
        /* and with file_size saying so, to get past the header check */
        if (len >= 24) {
            memcpy(p, s.data, len);
            ekb_put64(p, 16, len);
            ek_status_t st = load_copy(p, len);
            check_fuzz_result(st, len, "truncated with file_size", len);
            CHECK(st != EK_OK);
        }
    }
    free(p);
    free_sample(&s);
}

static void test_byte_mutations(void)
{
    struct sample s;
    REQUIRE(build_sample(&s, true));
    fuzz_failures = 0;
    uint8_t *p = malloc(s.size);
    REQUIRE(p);
    static const char *const names[] = {"xor 0xFF", "0xFF", "0x00", "+1", "-1", "xor 0x80"};
    size_t ok = 0, total = 0;
    for (size_t pos = 0; pos < s.size; pos++) {
        for (int kind = 0; kind < 6; kind++) {
            memcpy(p, s.data, s.size);
            uint8_t v = p[pos];
            switch (kind) {
            case 0: v ^= 0xFF; break;
            case 1: v = 0xFF; break;
            case 2: v = 0; break;
            case 3: v = (uint8_t)(v + 1); break;
            case 4: v = (uint8_t)(v - 1); break;
            default: v ^= 0x80; break;
            }
            if (v == s.data[pos])
                continue;
            p[pos] = v;
            ek_status_t st = load_copy(p, s.size);
            check_fuzz_result(st, s.size, names[kind], pos);
            ok += st == EK_OK;
            total++;
        }
    }
    printf("     %zu byte changes of a %zu-byte model: %zu still load\n", total, s.size, ok);
    free(p);
    free_sample(&s);
}

/* Every byte of the quantized model changed (its attributes, scales, weights and dtypes included): each
 * load is EK_OK or EK_ERR_MODEL_INVALID with a message; the ones that load are launched (whatever they
 * compute; ASan and UBSan watch the kernels on the odd values). */
static void test_quantized_byte_mutations(void)
{
    size_t size;
    uint8_t *data = quantized_model(Q_OK, &size);
    REQUIRE(data);
    uint8_t *p = malloc(size);
    REQUIRE(p);
    ek_dev_t dev;
    REQUIRE(ekt_open(&dev, 0, 16u << 20, EK_COHERENCE_DEFAULT) == EK_OK);
    int8_t x[100], q[72];
    float y[72];
    for (int i = 0; i < 100; i++)
        x[i] = (int8_t)(i * 77);
    fuzz_failures = 0;
    size_t ok = 0, total = 0, ran = 0;
    static const uint8_t flips[] = {0xFF, 0x80, 0x01};
    for (size_t pos = 0; pos < size; pos++) {
        for (size_t kind = 0; kind < sizeof flips; kind++) {
            memcpy(p, data, size);
            p[pos] ^= flips[kind];
            struct ek_model *m = NULL;
            uint8_t *copy = aligned_alloc(64, (size + 63) / 64 * 64);
            REQUIRE(copy);
            memcpy(copy, p, size);
            ek_status_t st = ek_model_load(copy, size, false, &m);
            if (st == EK_OK)
                ek_model_free(m);
            else
                free(copy);
            check_fuzz_result(st, size, "quantized xor", pos);
            ek_rt_t rt;
            if (st == EK_OK && ek_rt_create(&rt, dev) == EK_OK) { /* run it: whatever it computes, safely */
                if (ek_rt_load_model_data(rt, p, size) == EK_OK) {
                    const void *ins[1] = {x};
                    void *outs[2] = {y, q};
                    ek_shape_t is, os[2];
                    memset(&is, 0, sizeof is);
                    is.num_dims = 4;
                    is.dims[0] = 1;
                    is.dims[1] = is.dims[2] = 5;
                    is.dims[3] = 4;
                    size_t caps[2] = {sizeof y, sizeof q};
                    ran += ek_rt_launch_data(rt, "q", ins, &is, 1, outs, caps, os, 2, NULL) == EK_OK;
                }
                ek_rt_destroy(rt);
            }
            ok += st == EK_OK;
            total++;
        }
    }
    printf("     %zu byte changes of the %zu-byte quantized model: %zu still load, %zu of them ran\n", total, size, ok,
           ran);
    CHECK(ran > 0);
    ekt_close(dev);
    free(p);
    free(data);
}

/* Several random changes at once, with a fixed seed (xorshift), so deeper checks are reached by
 * files that are wrong in more than one place. */
static void test_random_mutations(void)
{
    struct sample s;
    REQUIRE(build_sample(&s, true));
    fuzz_failures = 0;
    uint8_t *p = malloc(s.size);
    REQUIRE(p);
    uint64_t x = 0x9E3779B97F4A7C15u;
    size_t records_end = s.b.layout.offset[EKB_CONSTANTS];
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(p, s.data, s.size);
        int changes = 1 + iter % 4;
        for (int c = 0; c < changes; c++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            size_t pos = (size_t)(x % records_end); /* the header, table and records */
            p[pos] = (uint8_t)(x >> 32);
        }
        check_fuzz_result(load_copy(p, s.size), s.size, "random changes", (size_t)iter);
    }
    free(p);
    free_sample(&s);
}

int main(void)
{
    RUN(test_load_sample);
    RUN(test_absent_bias);
    RUN(test_conv_residual_input);
    RUN(test_quantized_model);
    RUN(test_minor_version_and_unknown_section);
    RUN(test_specific_errors);
    RUN(test_same_stage_shapes);
    RUN(test_bad_arguments);
    RUN(test_load_file);
    RUN(test_truncations);
    RUN(test_byte_mutations);
    RUN(test_quantized_byte_mutations);
    RUN(test_random_mutations);
    return ek_test_summary();
}
