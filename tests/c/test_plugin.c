/* Plugin op libraries (src/plugin.c, include/edgekit/plugin.h): the example plugin's ops in a model,
 * and every bad plugin or model a clear error, never a crash (run under ASan with -DEDGEKIT_SANITIZE=ON).
 * The plugins are built by tests/c/CMakeLists.txt from sdk/plugins/example and tests/plugins/test_plugin.c
 * (variants); their paths come in as EKT_PLUGIN_* definitions. */
#define _POSIX_C_SOURCE 200809L
#include <elf.h>
#include <link.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ek_test.h"
#include "ekm_builder.h"

#define OP_RELU 9
#define OP_PLUGIN 28
#define ATTR_STRING 5

static ek_dev_t dev;

static ek_rt_t new_rt(void) {
    ek_rt_t rt = {0};
    ek_rt_config_t cfg = {.kernels = EK_KERNELS_PORTABLE, .threads = 2};
    if (!CHECK_OK(ek_rt_create_ex(&rt, dev, &cfg)))
        rt.id = 0;
    return rt;
}

/* x[2,4] -> RELU -> t -> plugin op (domain, type; beta when >= 0) -> y[out0, 4]. */
static uint8_t *plugin_model(const char *domain, const char *type, float beta, int64_t out0, size_t *size) {
    ekb_t b;
    ekb_init(&b);
    ekb_network(&b, "net", 1, 1);
    ekb_io(&b, "x", EK_DTYPE_FLOAT32, 32);
    ekb_io(&b, "y", EK_DTYPE_FLOAT32, (uint64_t)out0 * 16);
    ekb_stage(&b);
    int64_t dims[] = {2, 4}, ydims[] = {out0, 4};
    uint32_t x = ekb_input(&b, "x", 0, 2, dims);
    uint32_t t = ekb_arena(&b, "t", 2, dims);
    uint32_t y = ekb_output(&b, "y", 0, 2, ydims);
    ekb_op1(&b, OP_RELU, "relu", x, t);
    ekb_op1(&b, OP_PLUGIN, "custom_node", t, y);
    if (domain)
        ekb_attr(&b, "ek.domain", ATTR_STRING, 1, ekb_str(&b, domain));
    if (type)
        ekb_attr(&b, "ek.op_type", ATTR_STRING, 1, ekb_str(&b, type));
    if (beta >= 0)
        ekb_attr_float(&b, "beta", beta);
    uint8_t *data = ekb_finish(&b, size);
    ekb_free(&b);
    return data;
}

static ek_status_t load(ek_rt_t rt, const char *domain, const char *type, float beta, int64_t out0) {
    size_t size;
    uint8_t *data = plugin_model(domain, type, beta, out0, &size);
    if (!data)
        return EK_ERR_OUT_OF_MEMORY;
    ek_status_t st = ek_rt_load_model_data(rt, data, size);
    free(data);
    return st;
}

static ek_status_t run(ek_rt_t rt, const float *x, float *y) {
    const void *in[1] = {x};
    void *out[1] = {y};
    ek_shape_t in_shape = {2, {2, 4}}, out_shape;
    size_t cap = 8 * sizeof(float);
    return ek_rt_launch_data(rt, "net", in, &in_shape, 1, out, &cap, &out_shape, 1, NULL);
}

static void test_example_swish(void) {
    ek_rt_t rt = new_rt();
    REQUIRE(rt.id);
    REQUIRE_OK(ek_rt_load_plugin(rt, EKT_PLUGIN_EXAMPLE));
    REQUIRE_OK(load(rt, "edgekit.example", "Swish", 2.0f, 2));
    float x[8] = {-3, -1, -0.5f, 0, 0.5f, 1, 2, 4}, y[8];
    REQUIRE_OK(run(rt, x, y));
    for (int i = 0; i < 8; i++) {
        float r = x[i] > 0 ? x[i] : 0; /* the RELU before */
        float want = r / (1.0f + expf(-2.0f * r));
        CHECK(fabsf(y[i] - want) < 1e-6f);
    }
    CHECK_OK(ek_rt_destroy(rt));
}

static void test_bad_arguments(void) {
    ek_rt_t rt = new_rt();
    REQUIRE(rt.id);
    CHECK_STATUS(ek_rt_load_plugin(rt, NULL), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_rt_load_plugin(rt, ""), EK_ERR_INVALID_ARG);
    ek_rt_t forged = {rt.id ^ 0x10000};
    CHECK(ek_rt_load_plugin(forged, EKT_PLUGIN_EXAMPLE) != EK_OK);
    CHECK_STATUS(ek_rt_load_plugin(rt, "/nonexistent/libnothing.so"), EK_ERR_SYSTEM);
    CHECK_ERROR_MENTIONS("libnothing.so");
    CHECK_STATUS(ek_rt_load_plugin(rt, "/proc/self/status"), EK_ERR_UNSUPPORTED);
    CHECK_ERROR_MENTIONS("not an ELF shared library");
    CHECK_OK(ek_rt_destroy(rt));
    CHECK(ek_rt_load_plugin(rt, EKT_PLUGIN_EXAMPLE) != EK_OK); /* destroyed */
}

static void test_bad_plugins(void) {
    ek_rt_t rt = new_rt();
    REQUIRE(rt.id);
    CHECK_STATUS(ek_rt_load_plugin(rt, EKT_PLUGIN_NO_ENTRY), EK_ERR_UNSUPPORTED);
    CHECK_ERROR_MENTIONS("ek_plugin_register");
    CHECK_ERROR_MENTIONS("not an EdgeKit plugin");
    CHECK_STATUS(ek_rt_load_plugin(rt, EKT_PLUGIN_NO_ABI), EK_ERR_UNSUPPORTED);
    CHECK_ERROR_MENTIONS("ek_plugin_abi_version");
    CHECK_STATUS(ek_rt_load_plugin(rt, EKT_PLUGIN_ABI99), EK_ERR_VERSION);
    CHECK_ERROR_MENTIONS("ABI version 99");
    CHECK_STATUS(ek_rt_load_plugin(rt, EKT_PLUGIN_DUP_SELF), EK_ERR_UNSUPPORTED);
    CHECK_ERROR_MENTIONS("test.plugins::Negate' is registered twice");
    CHECK_STATUS(ek_rt_load_plugin(rt, EKT_PLUGIN_REGISTER_FAILS), EK_ERR_UNSUPPORTED);
    CHECK_ERROR_MENTIONS("refuses to register");
    /* none of them left a registration behind */
    CHECK_OK(ek_rt_load_plugin(rt, EKT_PLUGIN_TEST));
    CHECK_OK(ek_rt_destroy(rt));
}

static void test_registered_twice(void) {
    ek_rt_t rt = new_rt();
    REQUIRE(rt.id);
    REQUIRE_OK(ek_rt_load_plugin(rt, EKT_PLUGIN_EXAMPLE));
    CHECK_STATUS(ek_rt_load_plugin(rt, EKT_PLUGIN_DUP_EXAMPLE), EK_ERR_BUSY);
    CHECK_ERROR_MENTIONS("edgekit.example::Swish");
    CHECK_ERROR_MENTIONS("libedgekit_example_plugin.so");
    CHECK_ERROR_MENTIONS("libekt_plugin_dup_example.so");
    CHECK_STATUS(ek_rt_load_plugin(rt, EKT_PLUGIN_EXAMPLE), EK_ERR_BUSY); /* the same library again */
    /* the first registration still works */
    REQUIRE_OK(load(rt, "edgekit.example", "Swish", -1, 2));
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, y[8];
    CHECK_OK(run(rt, x, y));
    CHECK(fabsf(y[0] - 1.0f / (1.0f + expf(-1.0f))) < 1e-6f); /* beta defaults to 1 */
    CHECK_OK(ek_rt_destroy(rt));
    /* another runtime has its own registrations */
    rt = new_rt();
    REQUIRE(rt.id);
    CHECK_OK(ek_rt_load_plugin(rt, EKT_PLUGIN_DUP_EXAMPLE));
    CHECK_OK(ek_rt_destroy(rt));
}

static void test_wrong_machine(void) {
    /* an ELF header of the other machine (aarch64 on x86_64 hosts, x86_64 elsewhere) */
    char path[] = "/tmp/ekt_foreign_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    unsigned char h[64] = {0x7f, 'E', 'L', 'F', ELFCLASS64, ELFDATA2LSB, EV_CURRENT};
#if defined(__x86_64__)
    uint16_t machine = EM_AARCH64;
#else
    uint16_t machine = EM_X86_64;
#endif
    h[16] = ET_DYN;
    h[18] = (unsigned char)(machine & 0xff);
    h[19] = (unsigned char)(machine >> 8);
    CHECK(write(fd, h, sizeof h) == (ssize_t)sizeof h);
    close(fd);
    ek_rt_t rt = new_rt();
    if (rt.id) {
        CHECK_STATUS(ek_rt_load_plugin(rt, path), EK_ERR_UNSUPPORTED);
        CHECK_ERROR_MENTIONS("not for this machine");
#if defined(__x86_64__)
        CHECK_ERROR_MENTIONS("is built for aarch64");
#else
        CHECK_ERROR_MENTIONS("is built for x86_64");
#endif
        CHECK_OK(ek_rt_destroy(rt));
    }
    unlink(path);
}

/* A partial copy of a real plugin (the fuzz target plugin_elf found that only the header was checked):
 * cut inside its last loadable segment (debug info may follow it), refused before dlopen, which would
 * map that segment past the end of the file. */
static void test_truncated_copy(void) {
    FILE *f = fopen(EKT_PLUGIN_EXAMPLE, "rb");
    REQUIRE(f);
    static unsigned char data[1 << 24];
    size_t n = fread(data, 1, sizeof data, f);
    fclose(f);
    REQUIRE(n > sizeof(ElfW(Ehdr)) && n < sizeof data);
    ElfW(Ehdr) eh;
    memcpy(&eh, data, sizeof eh);
    size_t end = 0;
    for (unsigned i = 0; i < eh.e_phnum; i++) {
        ElfW(Phdr) ph;
        REQUIRE(eh.e_phoff + (i + 1) * sizeof ph <= n);
        memcpy(&ph, data + eh.e_phoff + i * sizeof ph, sizeof ph);
        if (ph.p_type == PT_LOAD && ph.p_offset + ph.p_filesz > end)
            end = ph.p_offset + ph.p_filesz;
    }
    REQUIRE(end > 64 && end <= n);
    size_t cut = end - 16;
    char path[] = "/tmp/ekt_truncated_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    CHECK(write(fd, data, cut) == (ssize_t)cut);
    close(fd);
    ek_rt_t rt = new_rt();
    if (rt.id) {
        CHECK_STATUS(ek_rt_load_plugin(rt, path), EK_ERR_UNSUPPORTED);
        CHECK_ERROR_MENTIONS("truncated");
        CHECK_OK(ek_rt_load_plugin(rt, EKT_PLUGIN_EXAMPLE)); /* the whole file still loads */
        CHECK_OK(ek_rt_destroy(rt));
    }
    unlink(path);
}

static void test_model_errors(void) {
    ek_rt_t rt = new_rt();
    REQUIRE(rt.id);
    /* no plugin loaded */
    CHECK_STATUS(load(rt, "test.plugins", "Negate", -1, 2), EK_ERR_UNSUPPORTED);
    CHECK_ERROR_MENTIONS("test.plugins::Negate");
    CHECK_ERROR_MENTIONS("ek_rt_load_plugin");
    CHECK_ERROR_MENTIONS("--plugin_libs");
    REQUIRE_OK(ek_rt_load_plugin(rt, EKT_PLUGIN_TEST));
    CHECK_STATUS(load(rt, "test.plugins", "Unknown", -1, 2), EK_ERR_UNSUPPORTED);
    CHECK_ERROR_MENTIONS("test.plugins::Unknown");
    CHECK_STATUS(load(rt, NULL, "Negate", -1, 2), EK_ERR_MODEL_INVALID);
    CHECK_ERROR_MENTIONS("ek.domain");
    CHECK_STATUS(load(rt, "test.plugins", "Picky", -1, 2), EK_ERR_MODEL_INVALID);
    CHECK_ERROR_MENTIONS("X must have rank 4, not 2");
    CHECK_ERROR_MENTIONS("libekt_plugin_test.so");
    CHECK_STATUS(load(rt, "test.plugins", "Double", -1, 2), EK_ERR_MODEL_INVALID);
    CHECK_ERROR_MENTIONS("infers output 0");
    CHECK_ERROR_MENTIONS("float32[4x4]");
    CHECK_OK(ek_rt_destroy(rt));
}

static void test_run_errors(void) {
    ek_rt_t rt = new_rt();
    REQUIRE(rt.id);
    REQUIRE_OK(ek_rt_load_plugin(rt, EKT_PLUGIN_TEST));
    REQUIRE_OK(load(rt, "test.plugins", "Negate", -1, 2));
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, y[8];
    CHECK_OK(run(rt, x, y));
    CHECK(y[0] == -1.0f && y[7] == -8.0f);
    x[5] = 5000;
    CHECK_STATUS(run(rt, x, y), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("custom_node");
    CHECK_ERROR_MENTIONS("element 5 is 5000, above 1000");
    CHECK_ERROR_MENTIONS("libekt_plugin_test.so");
    x[5] = 6;
    CHECK_OK(run(rt, x, y)); /* the runtime goes on */
    CHECK_OK(ek_rt_destroy(rt));

    rt = new_rt();
    REQUIRE(rt.id);
    REQUIRE_OK(ek_rt_load_plugin(rt, EKT_PLUGIN_TEST));
    REQUIRE_OK(load(rt, "test.plugins", "Grow", -1, 2));
    CHECK_STATUS(run(rt, x, y), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("not its recorded shape");
    CHECK_OK(ek_rt_destroy(rt));
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (ek_dev_request(&dev, 0) != EK_OK) {
        printf("cannot open device 0: %s\n", ek_last_error());
        return 1;
    }
    RUN(test_example_swish);
    RUN(test_bad_arguments);
    RUN(test_bad_plugins);
    RUN(test_registered_twice);
    RUN(test_wrong_machine);
    RUN(test_truncated_copy);
    RUN(test_model_errors);
    RUN(test_run_errors);
    ek_dev_free(dev);
    return ek_test_summary();
}
