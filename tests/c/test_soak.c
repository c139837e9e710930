/* The load/unload soak (issue 15): a model loaded and unloaded many times, each time in a fresh runtime on
 * a fresh device handle: ek_dev_request, ek_rt_create_ex, ek_rt_load_model (the file, mapped) or
 * ek_rt_load_model_data (a buffer, copied), one launch (ek_rt_launch_tensor with runtime-allocated outputs,
 * or ek_rt_launch_data) whose output is checked, ek_rt_destroy. After a warm-up, the process's heap in use
 * (mallinfo2), its open file descriptors and the device heap must come back to where they were, and its
 * RSS must stay flat.
 *
 *   test_soak [--loads N] [--warmup N] [--kernels auto|portable|xnnpack]
 *             [--model FILE.ekm --input X.bin --expect Y.bin] [--quiet] [--leak BYTES]
 *
 * Without --model it soaks a model made here (ekm_builder.h: y = relu(x + c)); with it, a compiled model
 * with one float32 input and one float32 output, X.bin and Y.bin the raw float32 input and the expected
 * output (tests/soak.py makes them). --leak BYTES leaks that much per load, to show the soak fails then
 * (tests/test_soak.py). It prints progress, a table, and the suite's "N passed, M failed"
 * line. Short by default (the C suite runs it, also under ASan/LSan); `invoke soak` runs 10^4 loads. */
#define _GNU_SOURCE
#include <dirent.h>
#include <malloc.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ek_test.h"
#include "ek_helpers.h"
#include "ekm_builder.h"

#define OP_ADD 5
#define OP_RELU 9
#define BUILT_N 64

/* Growth allowed after the warm-up. Every iteration frees everything it made, so the heap in use comes
 * back to the same bytes; what may differ is the allocator's own bookkeeping (glibc's per-thread caches
 * of the team threads a runtime starts, arenas those threads are given): a few KiB, once. A leak of one
 * 32-byte block per load is 32 KiB over 1000 loads, so the bound is a per-load average of 8 bytes plus
 * a fixed 16 KiB of that bookkeeping (the default 200 loads see leaks of 100 bytes per load and more). RSS
 * moves in pages and with the allocator's trimming: 2 MiB, plus 64 bytes per load. */
#define HEAP_SLACK_BYTES (16u * 1024u)
#define HEAP_PER_LOAD_BYTES 8u
#define RSS_SLACK_KIB 2048u
#define RSS_PER_LOAD_BYTES 64u

/* ASan's allocator is not malloc's, and its quarantine holds freed memory (RSS grows): under ASan only
 * the fds and the device heap are checked here, and LeakSanitizer checks leaks at exit. */
#if defined(__SANITIZE_ADDRESS__)
#define ASAN 1
#define HEAP_MEASURED 0
#elif defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
#define HEAP_MEASURED 1
#else
#define HEAP_MEASURED 0
#endif
#ifndef ASAN
#define ASAN 0
#endif

static struct {
    long loads, warmup;
    ek_kernels_t kernels;
    const char *model_path, *input_path, *expect_path;
    bool quiet;
    long leak; /* --leak BYTES: a test of the soak itself, which must then fail */
} opt = {200, -1, EK_KERNELS_AUTO, NULL, NULL, NULL, false, 0};
static char kernels_used[32] = "?";

static uint8_t *model;
static size_t model_size;
static char model_file[512]; /* the model as a file, for ek_rt_load_model */
static bool model_file_is_temp;
static float *input, *expect;
static size_t input_count, output_count;

/* ---- what the process holds ---- */

typedef struct sample {
    long rss_kib;
    long fds;
    long heap_bytes; /* -1: not measured */
} sample_t;

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib;
}

static long open_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    long n = 0;
    struct dirent *e;
    while (dir && (e = readdir(dir)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    if (dir)
        closedir(dir);
    return dir ? n - 1 : -1; /* not the directory's own fd */
}

static long heap_bytes(void)
{
#if HEAP_MEASURED
    struct mallinfo2 mi = mallinfo2();
    return (long)(mi.uordblks + mi.hblkhd);
#else
    return -1;
#endif
}

static sample_t sample_now(void)
{
    sample_t s = {rss_kib(), open_fds(), heap_bytes()};
    return s;
}

static double seconds_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

/* ---- the model ---- */

static uint8_t *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    uint8_t *data = NULL;
    long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (n > 0 && fseek(f, 0, SEEK_SET) == 0 && (data = malloc((size_t)n)) != NULL &&
        fread(data, 1, (size_t)n, f) != (size_t)n) {
        free(data);
        data = NULL;
    }
    fclose(f);
    *size = n > 0 ? (size_t)n : 0;
    return data;
}

/* y = relu(x + c), x and c [1, BUILT_N] */
static bool build_model(void)
{
    float c[BUILT_N];
    for (int i = 0; i < BUILT_N; i++)
        c[i] = (float)((i % 7) - 3) * 0.5f;
    ekb_t b;
    ekb_init(&b);
    ekb_network(&b, "soak", 1, 1);
    ekb_io(&b, "x", EK_DTYPE_FLOAT32, BUILT_N * 4);
    ekb_io(&b, "y", EK_DTYPE_FLOAT32, BUILT_N * 4);
    ekb_stage(&b);
    int64_t xd[2] = {1, BUILT_N}, cd[1] = {BUILT_N};
    uint32_t x = ekb_input(&b, "x", 0, 2, xd);
    uint32_t k = ekb_constant(&b, "c", 1, cd, c);
    uint32_t t = ekb_arena(&b, "t", 2, xd);
    uint32_t y = ekb_output(&b, "y", 0, 2, xd);
    ekb_op2(&b, OP_ADD, "add", x, k, t);
    ekb_op1(&b, OP_RELU, "relu", t, y);
    model = ekb_finish(&b, &model_size);
    ekb_free(&b);
    input_count = output_count = BUILT_N;
    input = malloc(BUILT_N * sizeof *input);
    expect = malloc(BUILT_N * sizeof *expect);
    if (!model || !input || !expect)
        return false;
    for (int i = 0; i < BUILT_N; i++) {
        input[i] = (float)(i % 11) * 0.25f - 1.0f;
        expect[i] = input[i] + c[i] > 0 ? input[i] + c[i] : 0;
    }
    snprintf(model_file, sizeof model_file, "%s/edgekit-soak-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    int fd = mkstemp(model_file);
    if (fd < 0)
        return false;
    model_file_is_temp = true;
    bool written = write(fd, model, model_size) == (ssize_t)model_size;
    close(fd);
    return written;
}

static bool read_model(void)
{
    size_t in_bytes, out_bytes;
    model = read_file(opt.model_path, &model_size);
    input = (float *)read_file(opt.input_path, &in_bytes);
    expect = (float *)read_file(opt.expect_path, &out_bytes);
    snprintf(model_file, sizeof model_file, "%s", opt.model_path);
    input_count = in_bytes / sizeof(float);
    output_count = out_bytes / sizeof(float);
    return model && input && expect && input_count && output_count;
}

/* ---- one load ---- */

/* The output equals the expected one (to float32 rounding: the expected output may come from another
 * program, e.g. onnxruntime). */
static bool output_ok(const float *y, long iteration)
{
    for (size_t i = 0; i < output_count; i++) {
        float tolerance = 1e-5f + 1e-4f * fabsf(expect[i]);
        if (!(fabsf(y[i] - expect[i]) <= tolerance)) {
            printf("load %ld: output[%zu] is %.9g, expected %.9g\n", iteration, i, (double)y[i], (double)expect[i]);
            return false;
        }
    }
    return true;
}

/* Open a device handle, make a runtime on it, close the handle (the runtime holds the device), load,
 * launch once (the tensors on `dev`), destroy the runtime. The launch alternates between the two ways to run (and the load
 * between the file and the buffer), so both paths soak. */
static bool load_once(long i, float *y, ek_dev_t dev)
{
    ek_dev_t own;
    ek_rt_t rt;
    ek_rt_config_t config;
    memset(&config, 0, sizeof config);
    config.kernels = opt.kernels;
    if (!CHECK_OK(ek_dev_request(&own, 0)))
        return false;
    ek_status_t created = ek_rt_create_ex(&rt, own, &config);
    CHECK_OK(ek_dev_free(own)); /* the runtime holds the device */
    if (!CHECK_OK(created))
        return false;
    bool ok = false;
    const char *name = NULL;
    const ek_net_info_t *info = NULL;
    ek_status_t loaded = i % 2 ? ek_rt_load_model_data(rt, model, model_size) : ek_rt_load_model(rt, model_file);
    const char *kernels = NULL;
    if (i == 0 && ek_rt_kernels(rt, &kernels) == EK_OK)
        snprintf(kernels_used, sizeof kernels_used, "%s", kernels);
    if (CHECK_OK(loaded) && CHECK_OK(ek_rt_network_name(rt, 0, &name)) &&
        CHECK_OK(ek_rt_network_info(rt, name, &info))) {
        const ek_shape_t *in_shape = &info->stages[0].input_shapes[0];
        if (i % 2 == 0) {
            ek_tensor_t x = {0}, out = {0};
            x.dtype = EK_DTYPE_FLOAT32;
            x.shape = *in_shape;
            ek_launch_t launch;
            if (CHECK_OK(ek_malloc_device(dev, &x.mem, input_count * sizeof *input))) {
                if (CHECK_OK(ek_memcpy_s2d(dev, x.mem, input)) &&
                    CHECK_OK(ek_rt_launch_tensor(rt, name, &x, 1, &out, 1, false, NULL, &launch))) {
                    ok = CHECK_OK(ek_launch_wait(launch, -1)) &&
                         CHECK_OK(ek_memcpy_d2s_partial(dev, y, out.mem, output_count * sizeof *y));
                    CHECK_OK(ek_free_device(dev, out.mem));
                }
                CHECK_OK(ek_free_device(dev, x.mem));
            }
        } else {
            const void *inputs[1] = {input};
            void *outputs[1] = {y};
            size_t capacity[1] = {output_count * sizeof *y};
            ek_shape_t out_shape;
            ok = CHECK_OK(ek_rt_launch_data(rt, name, inputs, in_shape, 1, outputs, capacity, &out_shape, 1, NULL));
        }
    }
    CHECK_OK(ek_rt_destroy(rt));
    return ok && output_ok(y, i);
}

static void test_load_unload_soak(void)
{
    float *y = calloc(output_count, sizeof *y);
    ek_dev_t holder; /* keeps the device open, so its heap stats show what a load left allocated */
    REQUIRE(y != NULL);
    REQUIRE_OK(ek_dev_request(&holder, 0));
    ek_heap_stats_t base = STATS(holder);
    long warmup = opt.warmup >= 0 ? opt.warmup : (opt.loads / 10 > 50 ? opt.loads / 10 : 50);
    if (warmup >= opt.loads)
        warmup = opt.loads / 2;
    sample_t start = sample_now(), warm = start, end = start, max = start;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long failed = 0, every = opt.loads >= 10 ? opt.loads / 10 : 1;
    void **leaked = opt.leak ? calloc((size_t)opt.loads, sizeof *leaked) : NULL;
    for (long i = 0; i < opt.loads && failed < 5; i++) {
        failed += !load_once(i, y, holder);
        if (leaked)
            leaked[i] = malloc((size_t)opt.leak);
        ek_heap_stats_t now = STATS(holder);
        if (now.used != base.used || now.allocations != base.allocations) {
            printf("load %ld left device memory allocated: %zu bytes in %zu allocations (before: %zu in %zu)\n", i,
                   now.used, now.allocations, base.used, base.allocations);
            failed++;
        }
        sample_t s = end = sample_now();
        max.rss_kib = s.rss_kib > max.rss_kib ? s.rss_kib : max.rss_kib;
        max.fds = s.fds > max.fds ? s.fds : max.fds;
        max.heap_bytes = s.heap_bytes > max.heap_bytes ? s.heap_bytes : max.heap_bytes;
        if (i + 1 == warmup)
            warm = s;
        if (!opt.quiet && ((i + 1) % every == 0 || i + 1 == opt.loads))
            printf("loads %ld/%ld: %.1f s, rss %ld KiB, heap in use %ld bytes, open fds %ld\n", i + 1, opt.loads,
                   seconds_since(&t0), s.rss_kib, s.heap_bytes, s.fds);
    }
    double elapsed = seconds_since(&t0);
    CHECK(failed == 0);
    CHECK_OK(ek_dev_free(holder));
    free(y);
    for (long i = 0; leaked && i < opt.loads; i++)
        free(leaked[i]);
    free(leaked);
    long after = opt.loads - warmup;
    long heap_bound = (long)HEAP_SLACK_BYTES + (long)HEAP_PER_LOAD_BYTES * after;
    long rss_bound = (long)RSS_SLACK_KIB + (long)RSS_PER_LOAD_BYTES * after / 1024;
    printf("load/unload soak: %ld loads in %.1f s (%.2f ms each), %s kernels, warm-up %ld\n", opt.loads, elapsed,
           opt.loads ? 1e3 * elapsed / (double)opt.loads : 0.0, kernels_used, warmup);
    printf("  %-16s %12s %12s %12s %12s %12s %12s\n", "", "start", "warm", "end", "max", "growth", "bound");
    printf("  %-16s %12ld %12ld %12ld %12ld %+12ld %12ld\n", "rss KiB", start.rss_kib, warm.rss_kib, end.rss_kib,
           max.rss_kib, end.rss_kib - warm.rss_kib, rss_bound);
    printf("  %-16s %12ld %12ld %12ld %12ld %+12ld %12d\n", "open fds", start.fds, warm.fds, end.fds, max.fds,
           end.fds - warm.fds, 0);
    if (HEAP_MEASURED)
        printf("  %-16s %12ld %12ld %12ld %12ld %+12ld %12ld\n", "heap in use B", start.heap_bytes, warm.heap_bytes,
               end.heap_bytes, max.heap_bytes, end.heap_bytes - warm.heap_bytes, heap_bound);
    else
        printf("  heap in use: not measured in this build%s\n",
               ASAN ? " (ASan: its quarantine keeps freed memory, so RSS is not checked either; LeakSanitizer "
                      "checks leaks at exit)" : "");
    CHECK(end.fds == warm.fds);
    CHECK(ASAN || end.rss_kib - warm.rss_kib <= rss_bound);
    CHECK(!HEAP_MEASURED || end.heap_bytes - warm.heap_bytes <= heap_bound);
}

static int usage(const char *why)
{
    fprintf(stderr, "test_soak: %s\nusage: test_soak [--loads N] [--warmup N] [--kernels auto|portable|xnnpack] "
            "[--model FILE.ekm --input X.bin --expect Y.bin] [--quiet] [--leak BYTES]\n", why);
    return 2;
}

int main(int argc, char **argv)
{
    ekt_init();
#if HEAP_MEASURED
    /* A fixed threshold for mmapped blocks: glibc's rises after the first large block is freed, and the
     * next ones then come from the heap, whose top stays up: RSS would jump by megabytes once, at a load
     * that depends on the allocation sizes. (remote_server runs the server soak with the same setting.) */
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
#endif
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(flag, "--quiet") == 0) {
            opt.quiet = true;
            continue;
        }
        if (!value)
            return usage("a flag without its value");
        i++;
        char *end;
        if (strcmp(flag, "--loads") == 0 || strcmp(flag, "--warmup") == 0 || strcmp(flag, "--leak") == 0) {
            long v = strtol(value, &end, 10);
            if (*end || v < 1)
                return usage("--loads, --warmup and --leak need a positive number");
            *(strcmp(flag, "--loads") == 0 ? &opt.loads : strcmp(flag, "--leak") == 0 ? &opt.leak : &opt.warmup) = v;
        } else if (strcmp(flag, "--kernels") == 0) {
            if (strcmp(value, "auto") == 0)
                opt.kernels = EK_KERNELS_AUTO;
            else if (strcmp(value, "portable") == 0)
                opt.kernels = EK_KERNELS_PORTABLE;
            else if (strcmp(value, "xnnpack") == 0)
                opt.kernels = EK_KERNELS_XNNPACK;
            else
                return usage("--kernels is auto, portable or xnnpack");
        } else if (strcmp(flag, "--model") == 0) {
            opt.model_path = value;
        } else if (strcmp(flag, "--input") == 0) {
            opt.input_path = value;
        } else if (strcmp(flag, "--expect") == 0) {
            opt.expect_path = value;
        } else {
            return usage("an unknown flag");
        }
    }
    if (!opt.model_path != !opt.input_path || !opt.model_path != !opt.expect_path)
        return usage("--model, --input and --expect go together");
    if (!(opt.model_path ? read_model() : build_model())) {
        printf("cannot read or build the model\n0 passed, 1 failed\n");
        return 1;
    }
    RUN(test_load_unload_soak);
    if (model_file_is_temp)
        unlink(model_file);
    free(model);
    free(input);
    free(expect);
    return ek_test_summary();
}
