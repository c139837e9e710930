/* The remote path in one process (docs/remote-protocol.md): a remote_server (ek_server_*) listening on
 * 127.0.0.1 in a thread, and remote devices (ek_dev_connect) that go through it, against the same calls
 * on a local device: memory and mapping, runtimes and launches, callbacks, profiles, dumps, pairing,
 * lifetimes, connection limits, a server that stops, and bad arguments.
 *
 * The remote devices open device `remote_id` of the server (the last one: EDGEKIT_DEVICES=2 makes it
 * another than the local device 0), with the same heap size as the local one. A watchdog ends the
 * program when a test hangs (a deadlock is a failure, not a stuck CI job). */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ek_test.h"
#include "ek_helpers.h"
#include "ekm_builder.h"

#define HEAP (64 * MIB)
#define BIG_BYTES (9 * MIB + 3)           /* three chunks of the protocol's 4 MiB, the last one short */
#define BIG_N ((int64_t)(9 * MIB / 4))    /* floats of network "big": 9 MiB, over one RUN's 8 MiB */
#define SLOW_MS 300                       /* EDGEKIT_TEST_SLOW_LAUNCH_MS of the "slow" runtimes */
#define OP_ADD 5
#define OP_RELU 9
#define OP_RESHAPE 27

/* ---- helpers: time, a watchdog, messages, files ---- */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static _Atomic uint64_t watchdog_deadline; /* now_ms() past which the running test has hung; 0: none */
static const char *_Atomic watchdog_test;

static void *watchdog_main(void *arg)
{
    (void)arg;
    for (;;) {
        sleep_ms(100);
        uint64_t deadline = atomic_load(&watchdog_deadline);
        if (deadline && now_ms() > deadline) {
            printf("WATCHDOG: %s is still running after its time limit: a deadlock or a hang\n",
                   atomic_load(&watchdog_test));
            printf("0 passed, 1 failed\n");
            fflush(stdout);
            _exit(3);
        }
    }
    return NULL;
}

#define RUN_WITHIN(fn, seconds)                                                                        \
    do {                                                                                               \
        atomic_store(&watchdog_test, #fn);                                                             \
        atomic_store(&watchdog_deadline, now_ms() + (uint64_t)(seconds) * 1000u);                      \
        RUN(fn);                                                                                       \
        atomic_store(&watchdog_deadline, 0);                                                           \
    } while (0)

/* The last error, kept (the next failing call replaces it). */
static void keep_error(char *out, size_t cap) { snprintf(out, cap, "%s", ek_last_error()); }

static void hex_handle(char *out, size_t cap, uint64_t id) { snprintf(out, cap, "0x%016" PRIx64, id); }

/* `text` with every `from` replaced by `to`. */
static void replace_all(char *out, size_t cap, const char *text, const char *from, const char *to)
{
    size_t at = 0, from_len = strlen(from);
    out[0] = '\0';
    while (*text && at + 1 < cap) {
        if (from_len && strncmp(text, from, from_len) == 0) {
            at += (size_t)snprintf(out + at, cap - at, "%s", to);
            text += from_len;
        } else {
            out[at++] = *text++;
            out[at] = '\0';
        }
        if (at >= cap)
            at = cap - 1;
    }
}

/* A new empty directory under $TMPDIR (or /tmp). */
static int make_temp_dir(char *out, size_t cap)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(out, cap, "%s/ek-test-remote-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    return mkdtemp(out) != NULL;
}

/* Remove a directory and the files in it (no subdirectories). */
static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char path[600];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

#define MAX_NAMES 32
struct names {
    int count;
    char name[MAX_NAMES][128];
};

static int by_name(const void *a, const void *b) { return strcmp(a, b); }

/* The files in `dir`, sorted. */
static int list_dir(const char *dir, struct names *out)
{
    out->count = 0;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && out->count < MAX_NAMES)
        if (e->d_name[0] != '.')
            snprintf(out->name[out->count++], sizeof out->name[0], "%.127s", e->d_name);
    closedir(d);
    qsort(out->name, (size_t)out->count, sizeof out->name[0], by_name);
    return 1;
}

/* A whole file (malloc'd), or NULL. */
static uint8_t *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    uint8_t *data = NULL;
    long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (data = malloc((size_t)n + 1)) != NULL &&
        fread(data, 1, (size_t)n, f) != (size_t)n) {
        free(data);
        data = NULL;
    }
    fclose(f);
    *size = n > 0 ? (size_t)n : 0;
    return data;
}

static int write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    int ok = fwrite(data, 1, size, f) == size;
    return fclose(f) == 0 && ok;
}

/* A TCP connection to 127.0.0.1:port; *local_port is this end's port (the server names the session by
 * it). -1 on failure. */
static int dial(int port, int *local_port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        close(fd);
        return -1;
    }
    *local_port = ntohs(a.sin_port);
    return fd;
}

/* A port of 127.0.0.1 nothing listens on (bound for a moment, then closed). */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* ---- servers in this process ---- */

struct server {
    ek_server_t *srv;
    pthread_t thread;
    int running;
    int port;
    char url[64];
    ek_status_t run_status;
    pthread_mutex_t lock;
    char *log; /* every line the server logged, one per line */
    size_t log_len;
};

static void server_log(void *user, const char *line)
{
    struct server *s = user;
    pthread_mutex_lock(&s->lock);
    size_t n = strlen(line);
    char *grown = realloc(s->log, s->log_len + n + 2);
    if (grown) {
        s->log = grown;
        memcpy(s->log + s->log_len, line, n);
        s->log_len += n;
        s->log[s->log_len++] = '\n';
        s->log[s->log_len] = '\0';
    }
    pthread_mutex_unlock(&s->lock);
}

static int server_logged(struct server *s, const char *needle)
{
    pthread_mutex_lock(&s->lock);
    int found = s->log && strstr(s->log, needle) != NULL;
    pthread_mutex_unlock(&s->lock);
    return found;
}

/* Wait up to `ms` for `needle` in the server's log. */
static int server_await(struct server *s, const char *needle, int ms)
{
    uint64_t end = now_ms() + (uint64_t)ms;
    while (!server_logged(s, needle)) {
        if (now_ms() > end)
            return 0;
        sleep_ms(5);
    }
    return 1;
}

static void *server_main(void *arg)
{
    struct server *s = arg;
    s->run_status = ek_server_run(s->srv);
    return NULL;
}

static int server_start(struct server *s, const ek_server_config_t *config)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    ek_server_config_t c;
    memset(&c, 0, sizeof c);
    if (config)
        c = *config;
    c.log = server_log;
    c.log_user_data = s;
    if (!CHECK_OK(ek_server_create(&s->srv, &c)))
        return 0;
    s->port = ek_server_port(s->srv);
    CHECK(s->port > 0 && s->port < 65536);
    snprintf(s->url, sizeof s->url, "tcp://127.0.0.1:%d", s->port);
    if (pthread_create(&s->thread, NULL, server_main, s) != 0) {
        ek_server_destroy(s->srv);
        s->srv = NULL;
        return 0;
    }
    s->running = 1;
    return 1;
}

/* Stop (if running), join and destroy. */
static void server_finish(struct server *s)
{
    if (s->running) {
        ek_server_stop(s->srv);
        pthread_join(s->thread, NULL);
        s->running = 0;
        CHECK(s->run_status == EK_OK);
    }
    ek_server_destroy(s->srv);
    s->srv = NULL;
    free(s->log);
    s->log = NULL;
    pthread_mutex_destroy(&s->lock);
}

static struct server main_srv; /* for most tests; max_sessions 128, so the client's limit is the one hit */
static int remote_id;          /* the server's device the remote devices open */
static int sodium_ok;
static char sodium_why[300];

static ek_remote_options_t remote_options(const char *key_file)
{
    ek_remote_options_t o;
    memset(&o, 0, sizeof o);
    o.device_config.heap_size = HEAP;
    o.key_file = key_file;
    return o;
}

/* Connect to a server's device `remote_id`, tracked (closed after the test if it stays open). */
static ek_status_t connect_to(ek_dev_t *dev, const char *url, const char *key_file)
{
    ek_remote_options_t o = remote_options(key_file);
    ek_status_t status = ek_dev_connect(dev, url, remote_id, &o);
    if (status == EK_OK)
        ekt_track(*dev);
    return status;
}

static ek_status_t rconnect(ek_dev_t *dev) { return connect_to(dev, main_srv.url, NULL); }

/* A local device 0 and a remote device, both with HEAP bytes. */
static int open_pair(ek_dev_t *local, ek_dev_t *remote)
{
    if (!CHECK_OK(ekt_open(local, 0, HEAP, EK_COHERENCE_DEFAULT)))
        return 0;
    if (!CHECK_OK(rconnect(remote))) {
        ekt_close(*local);
        return 0;
    }
    return 1;
}

/* ---- the test model (ekm_builder.h) ----
 * net_a: x -> y = relu(x + c), c a constant [8]; stages x = 1x8 and 2x8.
 * net_b: a, b -> y = reshape(a + b), 2x3 -> 6.
 * big:   x [BIG_N] -> y = relu(x + x): 9 MiB in and out. */
static const float c_data[8] = {1, -2, 3, -4, 5, -6, 7, -8};
static uint8_t *model_bytes;
static size_t model_size;

static uint8_t *build_model(size_t *size)
{
    ekb_t b;
    ekb_init(&b);
    ekb_network(&b, "net_a", 1, 1);
    ekb_io(&b, "x", EK_DTYPE_FLOAT32, 64);
    ekb_io(&b, "y", EK_DTYPE_FLOAT32, 64);
    for (int s = 0; s < 2; s++) {
        ekb_stage(&b);
        int64_t xd[2] = {s + 1, 8}, cd[1] = {8};
        uint32_t x = ekb_input(&b, "x", 0, 2, xd);
        uint32_t c = ekb_constant(&b, "c", 1, cd, c_data);
        uint32_t t = ekb_arena(&b, "t", 2, xd);
        uint32_t y = ekb_output(&b, "y", 0, 2, xd);
        ekb_op2(&b, OP_ADD, "add", x, c, t);
        ekb_op1(&b, OP_RELU, "relu", t, y);
    }
    ekb_network(&b, "net_b", 2, 1);
    ekb_io(&b, "a", EK_DTYPE_FLOAT32, 24);
    ekb_io(&b, "b", EK_DTYPE_FLOAT32, 24);
    ekb_io(&b, "y", EK_DTYPE_FLOAT32, 24);
    {
        ekb_stage(&b);
        int64_t ad[2] = {2, 3}, yd[1] = {6};
        uint32_t a = ekb_input(&b, "a", 0, 2, ad);
        uint32_t bb = ekb_input(&b, "b", 1, 2, ad);
        uint32_t sum = ekb_arena(&b, "sum", 2, ad);
        uint32_t y = ekb_output(&b, "y", 0, 1, yd);
        ekb_op2(&b, OP_ADD, "add", a, bb, sum);
        ekb_op1(&b, OP_RESHAPE, "flatten", sum, y);
    }
    ekb_network(&b, "big", 1, 1);
    ekb_io(&b, "x", EK_DTYPE_FLOAT32, (uint64_t)BIG_N * 4);
    ekb_io(&b, "y", EK_DTYPE_FLOAT32, (uint64_t)BIG_N * 4);
    {
        ekb_stage(&b);
        int64_t d[1] = {BIG_N};
        uint32_t x = ekb_input(&b, "x", 0, 1, d);
        uint32_t t = ekb_arena(&b, "twice", 1, d);
        uint32_t y = ekb_output(&b, "y", 0, 1, d);
        ekb_op2(&b, OP_ADD, "double", x, x, t);
        ekb_op1(&b, OP_RELU, "relu", t, y);
    }
    uint8_t *data = ekb_finish(&b, size);
    ekb_free(&b);
    return data;
}

/* A second model: net_c, net_a's 1x8 stage under another name. */
static uint8_t *model2_bytes;
static size_t model2_size;

static uint8_t *build_model2(size_t *size)
{
    ekb_t b;
    ekb_init(&b);
    ekb_network(&b, "net_c", 1, 1);
    ekb_io(&b, "x", EK_DTYPE_FLOAT32, 32);
    ekb_io(&b, "y", EK_DTYPE_FLOAT32, 32);
    ekb_stage(&b);
    int64_t xd[2] = {1, 8}, cd[1] = {8};
    uint32_t x = ekb_input(&b, "x", 0, 2, xd);
    uint32_t c = ekb_constant(&b, "c", 1, cd, c_data);
    uint32_t t = ekb_arena(&b, "t", 2, xd);
    uint32_t y = ekb_output(&b, "y", 0, 2, xd);
    ekb_op2(&b, OP_ADD, "add", x, c, t);
    ekb_op1(&b, OP_RELU, "relu", t, y);
    uint8_t *data = ekb_finish(&b, size);
    ekb_free(&b);
    return data;
}

static float expect_a(float x, int i)
{
    float v = x + c_data[i % 8];
    return v > 0 ? v : 0;
}

static ek_shape_t shape1(int64_t a)
{
    ek_shape_t s;
    memset(&s, 0, sizeof s);
    s.num_dims = 1;
    s.dims[0] = a;
    return s;
}

static ek_shape_t shape2(int64_t a, int64_t b)
{
    ek_shape_t s = shape1(a);
    s.num_dims = 2;
    s.dims[1] = b;
    return s;
}

/* Inputs of net_a with fractions and signs (so relu and rounding both matter). */
static void fill_a(float *x, int n, float seed)
{
    for (int i = 0; i < n; i++)
        x[i] = seed * 0.37f + (float)i * 1.3f - 9.1f + (float)(i % 3) / 7.0f;
}

/* A runtime with the test model. */
static int make_rt(ek_dev_t dev, ek_rt_t *rt)
{
    if (!CHECK_OK(ek_rt_create(rt, dev)))
        return 0;
    if (!CHECK_OK(ek_rt_load_model_data(*rt, model_bytes, model_size))) {
        ek_rt_destroy(*rt);
        return 0;
    }
    return 1;
}

/* A runtime whose every launch sleeps `ms` first on the board (the test hook of docs/remote-protocol.md:
 * the server's runtime reads it when it is created, on its session thread, while this thread waits for
 * the reply). */
static int make_slow_rt(ek_dev_t dev, ek_rt_t *rt, int ms)
{
    char text[16];
    snprintf(text, sizeof text, "%d", ms);
    setenv("EDGEKIT_TEST_HOOKS", "1", 1);
    setenv("EDGEKIT_TEST_SLOW_LAUNCH_MS", text, 1);
    ek_status_t status = ek_rt_create(rt, dev);
    unsetenv("EDGEKIT_TEST_SLOW_LAUNCH_MS");
    unsetenv("EDGEKIT_TEST_HOOKS");
    if (!CHECK_OK(status))
        return 0;
    if (!CHECK_OK(ek_rt_load_model_data(*rt, model_bytes, model_size))) {
        ek_rt_destroy(*rt);
        return 0;
    }
    return 1;
}

/* An input tensor of net_a (rows x 8) in fresh memory of `dev`. */
static ek_tensor_t input_a(ek_dev_t dev, int rows, float seed)
{
    ek_tensor_t t;
    memset(&t, 0, sizeof t);
    float x[16];
    fill_a(x, rows * 8, seed);
    CHECK_OK(ek_malloc_device(dev, &t.mem, (size_t)rows * 32));
    CHECK_OK(ek_memcpy_s2d(dev, t.mem, x));
    t.dtype = EK_DTYPE_FLOAT32;
    t.shape = shape2(rows, 8);
    return t;
}

/* The output of net_a in `dev`'s memory holds relu(x + c) of input_a(rows, seed). */
static int output_a_ok(ek_dev_t dev, const ek_tensor_t *y, int rows, float seed)
{
    float x[16], out[16];
    fill_a(x, rows * 8, seed);
    if (!CHECK_OK(ek_memcpy_d2s_partial_offset(dev, out, y->mem, (size_t)rows * 32, y->offset)))
        return 0;
    for (int i = 0; i < rows * 8; i++)
        if (out[i] != expect_a(x[i], i)) {
            printf("    y[%d] = %g, expected %g\n", i, out[i], expect_a(x[i], i));
            return 0;
        }
    return 1;
}

/* ---- connecting ---- */

static void test_connect_and_info(void)
{
    ek_dev_t dev, local;
    REQUIRE_OK(rconnect(&dev));
    ek_remote_info_t info;
    memset(&info, 0xAB, sizeof info);
    if (CHECK_OK(ek_dev_remote_info(dev, &info))) {
        int devices = 0;
        ek_dev_count(&devices);
        CHECK(info.remote);
        CHECK(info.protocol == EK_REMOTE_PROTOCOL);
        CHECK(strcmp(info.url, main_srv.url) == 0);
        CHECK(strcmp(info.runtime_version, ek_version()) == 0);
        CHECK(strcmp(info.arch, "unknown") != 0 && info.arch[0] != '\0');
        CHECK(info.model_format_major == 1);
        CHECK(info.devices == devices);
        CHECK(strcmp(info.kernels, "portable") == 0 || strcmp(info.kernels, "xnnpack") == 0);
        CHECK(info.threads >= 1);
    }
    int id = -1;
    CHECK_OK(ek_dev_id(dev, &id));
    CHECK(id == remote_id);
    CHECK_STATUS(ek_dev_remote_info(dev, NULL), EK_ERR_INVALID_ARG);
    /* a local device says it is not remote, and nothing else */
    REQUIRE_OK(ekt_open(&local, 0, HEAP, EK_COHERENCE_DEFAULT));
    memset(&info, 0xAB, sizeof info);
    CHECK_OK(ek_dev_remote_info(local, &info));
    CHECK(!info.remote && info.protocol == 0 && info.url[0] == '\0' && info.devices == 0);
    CHECK_OK(ekt_close(local));
    /* a remote device on a device the board does not have: the board's error, and the slot is free again */
    ek_remote_options_t o = remote_options(NULL);
    ek_dev_t nope = {0};
    CHECK_STATUS(ek_dev_connect(&nope, main_srv.url, 7, &o), EK_ERR_NO_DEVICE);
    CHECK_ERROR_MENTIONS("device id 7 is out of range");
    CHECK(nope.id == 0);
    CHECK_OK(ekt_close(dev));
    CHECK_STATUS(ek_dev_remote_info(dev, &info), EK_ERR_FREED_HANDLE);
}

/* ---- memory ---- */

struct progress {
    int calls, ordered;
    uint64_t last_done, total;
    char what[16];
};

static void on_progress(void *user, const char *what, uint64_t done, uint64_t total)
{
    struct progress *p = user;
    if (done < p->last_done && strcmp(what, p->what) == 0)
        p->ordered = 0;
    p->calls++;
    p->last_done = done;
    p->total = total;
    snprintf(p->what, sizeof p->what, "%s", what);
}

/* The same copies on a local and a remote device leave the same bytes. */
static void test_memory_copies(void)
{
    ek_dev_t local, dev;
    REQUIRE_OK(ekt_open(&local, 0, HEAP, EK_COHERENCE_DEFAULT));
    static struct progress prog;
    memset(&prog, 0, sizeof prog);
    prog.ordered = 1;
    ek_remote_options_t o = remote_options(NULL);
    o.progress = on_progress;
    o.progress_user_data = &prog;
    REQUIRE_OK(ek_dev_connect(&dev, main_srv.url, remote_id, &o));
    ekt_track(dev);
    const size_t n = BIG_BYTES;
    uint8_t *src = malloc(n), *got = malloc(n), *want = malloc(n);
    ek_mem_t lm, rm, lm2, rm2;
    REQUIRE(src && got && want);
    REQUIRE_OK(ek_malloc_device(local, &lm, n));
    REQUIRE_OK(ek_malloc_device(dev, &rm, n));
    REQUIRE_OK(ek_malloc_device(local, &lm2, 1000));
    REQUIRE_OK(ek_malloc_device(dev, &rm2, 1000));
    size_t size = 0;
    CHECK_OK(ek_mem_size(rm, &size));
    CHECK(size == n);
    CHECK(rm.id != 0 && rm.id != rm2.id);

    /* whole: 9 MiB + 3 bytes, three chunks there and back */
    ekt_fill(src, n, 1);
    CHECK_OK(ek_memcpy_s2d(local, lm, src));
    CHECK_OK(ek_memcpy_s2d(dev, rm, src));
    CHECK(prog.calls >= 3 && prog.ordered && strcmp(prog.what, "upload") == 0 && prog.total == n &&
          prog.last_done == n);
    memset(got, 0, n);
    prog.calls = 0;
    prog.last_done = 0;
    CHECK_OK(ek_memcpy_d2s(dev, got, rm));
    CHECK(ekt_mismatch(got, n, 1) == (size_t)-1);
    CHECK(prog.calls >= 3 && prog.ordered && strcmp(prog.what, "download") == 0 && prog.last_done == n);

    /* partial, and at offsets across the chunk boundaries */
    const struct {
        size_t offset, size;
    } parts[] = {{0, 1}, {0, 4 * MIB + 1}, {4 * MIB - 5, 10}, {3, 8 * MIB + 1}, {n - 7, 7}, {n - 4 * MIB - 2, 4 * MIB + 2}};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        ekt_fill(src, parts[i].size, (uint32_t)i + 10);
        if (parts[i].offset == 0) {
            CHECK_OK(ek_memcpy_s2d_partial(local, lm, src, parts[i].size));
            CHECK_OK(ek_memcpy_s2d_partial(dev, rm, src, parts[i].size));
        } else {
            CHECK_OK(ek_memcpy_s2d_partial_offset(local, lm, src, parts[i].size, parts[i].offset));
            CHECK_OK(ek_memcpy_s2d_partial_offset(dev, rm, src, parts[i].size, parts[i].offset));
        }
        memset(got, 0, parts[i].size);
        CHECK_OK(ek_memcpy_d2s_partial_offset(dev, got, rm, parts[i].size, parts[i].offset));
        CHECK(ekt_mismatch(got, parts[i].size, (uint32_t)i + 10) == (size_t)-1);
    }
    memset(got, 0, 100);
    CHECK_OK(ek_memcpy_d2s_partial(dev, got, rm, 100));
    CHECK_OK(ek_memcpy_d2s_partial(local, want, lm, 100));
    CHECK(memcmp(got, want, 100) == 0);

    /* device to device, within one memory and between two */
    CHECK_OK(ek_memcpy_d2d(local, lm, 5 * MIB - 100, lm, 17, 4 * MIB + 9));
    CHECK_OK(ek_memcpy_d2d(dev, rm, 5 * MIB - 100, rm, 17, 4 * MIB + 9));
    CHECK_OK(ek_memcpy_d2d(local, lm2, 1, lm, n - 999, 999));
    CHECK_OK(ek_memcpy_d2d(dev, rm2, 1, rm, n - 999, 999));
    CHECK_OK(ek_memcpy_d2d(local, lm, 0, lm2, 0, 1000));
    CHECK_OK(ek_memcpy_d2d(dev, rm, 0, rm2, 0, 1000));

    /* after all that, the same bytes */
    memset(got, 0x11, n);
    memset(want, 0x22, n);
    CHECK_OK(ek_memcpy_d2s(dev, got, rm));
    CHECK_OK(ek_memcpy_d2s(local, want, lm));
    CHECK(memcmp(got, want, n) == 0);

    CHECK_OK(ek_free_device(dev, rm));
    CHECK_OK(ek_free_device(dev, rm2));
    CHECK_OK(ek_free_device(local, lm));
    CHECK_OK(ek_free_device(local, lm2));
    free(src);
    free(got);
    free(want);
    CHECK_OK(ekt_close(dev));
    CHECK_OK(ekt_close(local));
}

/* A failed call's status and message on the remote device equal the local device's, with the remote
 * memory's handle where the local one names its own. */
static void check_same_error(ek_status_t local_status, const char *local_msg, uint64_t local_handle,
                             ek_status_t remote_status, uint64_t remote_handle, int line)
{
    char lh[32], rh[32], want[1024];
    hex_handle(lh, sizeof lh, local_handle);
    hex_handle(rh, sizeof rh, remote_handle);
    replace_all(want, sizeof want, local_msg, lh, rh);
    if (remote_status != local_status || strcmp(ek_last_error(), want) != 0) {
        printf("    line %d: remote %s \"%s\"\n    local  %s \"%s\"\n", line, ek_status_name(remote_status),
               ek_last_error(), ek_status_name(local_status), want);
        ekt_report_failure(__FILE__, line, "the remote device's error differs from the local device's");
    }
}

/* Run `call` with device/memory names l*, then r*; compare. */
#define SAME_ERROR(call_local, call_remote, lmem, rmem)                                                \
    do {                                                                                               \
        char local_msg_[1024];                                                                         \
        ek_status_t ls_ = (call_local);                                                                \
        keep_error(local_msg_, sizeof local_msg_);                                                     \
        CHECK(ls_ != EK_OK);                                                                           \
        ek_status_t rs_ = (call_remote);                                                               \
        check_same_error(ls_, local_msg_, (lmem).id, rs_, (rmem).id, __LINE__);                        \
    } while (0)

static void test_memory_errors(void)
{
    ek_dev_t local, dev;
    if (!open_pair(&local, &dev))
        return;
    ek_mem_t lm, rm, gone;
    REQUIRE_OK(ek_malloc_device(local, &lm, 100));
    REQUIRE_OK(ek_malloc_device(dev, &rm, 100));
    uint8_t buf[256];
    memset(buf, 7, sizeof buf);
    ek_heap_stats_t before = STATS(dev);

    /* out of range: the same status and words as on the board's own device */
    SAME_ERROR(ek_memcpy_s2d_partial_offset(local, lm, buf, 10, 95), ek_memcpy_s2d_partial_offset(dev, rm, buf, 10, 95),
               lm, rm);
    SAME_ERROR(ek_memcpy_d2s_partial_offset(local, buf, lm, 1, 100), ek_memcpy_d2s_partial_offset(dev, buf, rm, 1, 100),
               lm, rm);
    SAME_ERROR(ek_memcpy_d2s_partial_offset(local, buf, lm, 8, (size_t)1 << 40),
               ek_memcpy_d2s_partial_offset(dev, buf, rm, 8, (size_t)1 << 40), lm, rm);
    SAME_ERROR(ek_memcpy_s2d_partial(local, lm, buf, 101), ek_memcpy_s2d_partial(dev, rm, buf, 101), lm, rm);
    SAME_ERROR(ek_memcpy_d2s_partial(local, buf, lm, SIZE_MAX), ek_memcpy_d2s_partial(dev, buf, rm, SIZE_MAX), lm, rm);
    SAME_ERROR(ek_memcpy_d2d(local, lm, 50, lm, 0, 51), ek_memcpy_d2d(dev, rm, 50, rm, 0, 51), lm, rm);
    SAME_ERROR(ek_memcpy_d2d(local, lm, 0, lm, 90, 11), ek_memcpy_d2d(dev, rm, 0, rm, 90, 11), lm, rm);
    /* a zero size is an error there too, not a quiet no-op */
    SAME_ERROR(ek_memcpy_s2d_partial(local, lm, buf, 0), ek_memcpy_s2d_partial(dev, rm, buf, 0), lm, rm);
    SAME_ERROR(ek_memcpy_d2s_partial_offset(local, buf, lm, 0, 5), ek_memcpy_d2s_partial_offset(dev, buf, rm, 0, 5),
               lm, rm);
    SAME_ERROR(ek_memcpy_d2d(local, lm, 0, lm, 10, 0), ek_memcpy_d2d(dev, rm, 0, rm, 10, 0), lm, rm);
    SAME_ERROR(ek_memcpy_s2d(local, lm, NULL), ek_memcpy_s2d(dev, rm, NULL), lm, rm);
    SAME_ERROR(ek_malloc_device(local, NULL, 8), ek_malloc_device(dev, NULL, 8), lm, rm);
    SAME_ERROR(ek_malloc_device(local, &gone, 0), ek_malloc_device(dev, &gone, 0), lm, rm);
    /* the board's heap is full: its own message */
    CHECK_STATUS(ek_malloc_device(dev, &gone, 2 * HEAP), EK_ERR_OUT_OF_MEMORY);
    CHECK_ERROR_MENTIONS("no block of 134217728 bytes on device");
    CHECK_STATS_SAME(dev, before);

    /* use after free and double free */
    REQUIRE_OK(ek_malloc_device(dev, &gone, 64));
    CHECK_OK(ek_free_device(dev, gone));
    CHECK_STATUS(ek_free_device(dev, gone), EK_ERR_DOUBLE_FREE);
    CHECK_ERROR_MENTIONS("double free");
    CHECK_STATUS(ek_memcpy_s2d(dev, gone, buf), EK_ERR_FREED_HANDLE);
    CHECK_ERROR_MENTIONS("use after free");
    CHECK_STATUS(ek_memcpy_d2s_partial(dev, buf, gone, 4), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_memcpy_d2d(dev, rm, 0, gone, 0, 4), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_memcpy_d2d(dev, gone, 0, rm, 0, 4), EK_ERR_FREED_HANDLE);
    size_t size;
    CHECK_STATUS(ek_mem_size(gone, &size), EK_ERR_FREED_HANDLE);
    void *addr;
    CHECK_STATUS(ek_mem_mmap(dev, gone, &addr), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_free_device(dev, (ek_mem_t){0}), EK_ERR_INVALID_HANDLE);
    CHECK_STATUS(ek_memcpy_s2d(dev, (ek_mem_t){12345}, buf), EK_ERR_INVALID_HANDLE); /* never issued */
    CHECK_STATUS(ek_memcpy_d2d(dev, rm, 0, (ek_mem_t){0}, 0, 4), EK_ERR_INVALID_HANDLE);
    ek_mem_t local_gone;
    REQUIRE_OK(ek_malloc_device(local, &local_gone, 8));
    CHECK_OK(ek_free_device(local, local_gone));
    CHECK_STATUS(ek_memcpy_s2d(dev, local_gone, buf), EK_ERR_FREED_HANDLE); /* freed, whoever's it was */
    CHECK_STATUS(ek_memcpy_d2d(dev, rm, 0, local_gone, 0, 4), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_memcpy_s2d(local, gone, buf), EK_ERR_FREED_HANDLE);

    /* memory of one device used with the other's handle: a device mismatch, both ways */
    before = STATS(dev);
    char lh[32], rh[32];
    hex_handle(lh, sizeof lh, lm.id);
    hex_handle(rh, sizeof rh, rm.id);
    CHECK_STATUS(ek_memcpy_s2d(dev, lm, buf), EK_ERR_DEVICE_MISMATCH);
    CHECK(strstr(ek_last_error(), lh) != NULL);
    CHECK_STATUS(ek_memcpy_d2s(dev, buf, lm), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_free_device(dev, lm), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_mem_mmap(dev, lm, &addr), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_memcpy_d2d(dev, rm, 0, lm, 0, 4), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_memcpy_d2d(dev, lm, 0, rm, 0, 4), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_memcpy_s2d(local, rm, buf), EK_ERR_DEVICE_MISMATCH);
    CHECK(strstr(ek_last_error(), rh) != NULL);
    CHECK_STATUS(ek_memcpy_d2s(local, buf, rm), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_free_device(local, rm), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_mem_mmap(local, rm, &addr), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_mem_flush(local, rm), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_memcpy_d2d(local, lm, 0, rm, 0, 4), EK_ERR_DEVICE_MISMATCH);
    CHECK_STATUS(ek_memcpy_d2d(local, rm, 0, lm, 0, 4), EK_ERR_DEVICE_MISMATCH);
    /* ... and nothing changed: both memories still work */
    CHECK_STATS_SAME(dev, before);
    CHECK_OK(ek_memcpy_s2d(dev, rm, buf));
    CHECK_OK(ek_memcpy_s2d(local, lm, buf));

    /* a device handle of a memory is not a device */
    CHECK_STATUS(ek_memcpy_s2d((ek_dev_t){rm.id}, rm, buf), EK_ERR_INVALID_HANDLE);
    CHECK_OK(ek_free_device(dev, rm));
    CHECK_OK(ek_free_device(local, lm));
    CHECK_OK(ekt_close(dev));
    CHECK_OK(ekt_close(local));
}

static void test_heap_stats(void)
{
    ek_dev_t local, dev;
    if (!open_pair(&local, &dev))
        return;
    ek_heap_stats_t l0 = STATS(local), r0 = STATS(dev);
    CHECK(r0.total == HEAP && r0.total == l0.total);
    CHECK(r0.alignment == l0.alignment && r0.coherence == l0.coherence && r0.backing == l0.backing);
    CHECK(r0.free == r0.total - r0.used);
    const size_t sizes[] = {1, 64, 65, 5 * MIB + 3};
    ek_mem_t lm[4], rm[4];
    for (int i = 0; i < 4; i++) {
        REQUIRE_OK(ek_malloc_device(local, &lm[i], sizes[i]));
        REQUIRE_OK(ek_malloc_device(dev, &rm[i], sizes[i]));
    }
    ek_heap_stats_t l1 = STATS(local), r1 = STATS(dev);
    size_t shared = remote_id == 0 ? 2 : 1; /* one device only: the local and the remote memories share it */
    CHECK(r1.used - r0.used == l1.used - l0.used);
    CHECK(r1.allocations - r0.allocations == 4 * shared && l1.allocations - l0.allocations == 4 * shared);
    CHECK(r1.used - r0.used == shared * (ekt_round(1, r0.alignment) + ekt_round(64, r0.alignment) +
                                         ekt_round(65, r0.alignment) + ekt_round(5 * MIB + 3, r0.alignment)));
    CHECK(r1.peak >= r1.used && r1.free == r1.total - r1.used);
    for (int i = 0; i < 4; i++) {
        CHECK_OK(ek_free_device(dev, rm[i]));
        CHECK_OK(ek_free_device(local, lm[i]));
    }
    ek_heap_stats_t r2 = STATS(dev);
    CHECK(r2.used == r0.used && r2.allocations == r0.allocations && r2.peak >= r1.used);
    CHECK_STATUS(ek_dev_heap_stats(dev, NULL), EK_ERR_INVALID_ARG);
    size_t count = 99;
    CHECK_OK(ek_dev_coherence_report(dev, NULL, 0, &count));
    CHECK(count == 0);
    CHECK_OK(ek_dev_coherence_clear(dev));
    CHECK_OK(ek_dev_sync(dev));
    CHECK_OK(ekt_close(dev));
    CHECK_OK(ekt_close(local));
}

/* Remote mappings are host copies: strict coherence. */
static void test_mmap(void)
{
    ek_dev_t dev;
    REQUIRE_OK(rconnect(&dev));
    const size_t n = BIG_BYTES;
    uint8_t *a = malloc(n), *got = malloc(n);
    REQUIRE(a && got);
    ek_mem_t m, small;
    REQUIRE_OK(ek_malloc_device(dev, &m, n));
    REQUIRE_OK(ek_malloc_device(dev, &small, 100));
    ekt_fill(a, n, 3);
    CHECK_OK(ek_memcpy_s2d(dev, m, a));
    /* a new mapping shows the current contents */
    uint8_t *p = NULL;
    REQUIRE_OK(ek_mem_mmap(dev, m, (void **)&p));
    REQUIRE(p != NULL);
    CHECK((uintptr_t)p % 64 == 0);
    CHECK(ekt_mismatch(p, n, 3) == (size_t)-1);
    /* writes through it stay on the host until flushed */
    memset(p, 0xA5, 1000);
    memset(p + n - 10, 0x5A, 10);
    CHECK_OK(ek_memcpy_d2s_partial(dev, got, m, 1000));
    CHECK(ekt_mismatch(got, 1000, 3) == (size_t)-1);
    CHECK_OK(ek_mem_flush_partial(dev, m, 0, 600));
    CHECK_OK(ek_memcpy_d2s_partial(dev, got, m, 1000));
    CHECK(ekt_all_bytes(got, 600, 0xA5));
    CHECK(ekt_pat(3, 600) == got[600] && ekt_pat(3, 999) == got[999]);
    CHECK_OK(ek_mem_flush(dev, m));
    CHECK_OK(ek_memcpy_d2s(dev, got, m));
    CHECK(ekt_all_bytes(got, 1000, 0xA5) && ekt_all_bytes(got + n - 10, 10, 0x5A));
    CHECK(memcmp(got + 1000, a + 1000, n - 1010) == 0);
    /* what the device gets is invisible to the mapping until invalidated */
    ekt_fill(a, n, 4);
    CHECK_OK(ek_memcpy_s2d(dev, m, a));
    CHECK(ekt_all_bytes(p, 1000, 0xA5));
    CHECK_OK(ek_mem_invalidate_partial(dev, m, 4 * MIB - 3, 6));
    CHECK(ekt_all_bytes(p, 1000, 0xA5));
    CHECK(memcmp(p + 4 * MIB - 3, a + 4 * MIB - 3, 6) == 0);
    CHECK(p[4 * MIB - 4] == ekt_pat(3, 4 * MIB - 4) && p[4 * MIB + 3] == ekt_pat(3, 4 * MIB + 3));
    CHECK_OK(ek_mem_invalidate(dev, m));
    CHECK(memcmp(p, a, n) == 0);
    /* mapped twice: the same copy, unmapped twice */
    uint8_t *q = NULL;
    CHECK_OK(ek_mem_mmap(dev, m, (void **)&q));
    CHECK(q == p);
    CHECK_OK(ek_mem_unmap(dev, m));
    CHECK_OK(ek_mem_unmap(dev, m));
    CHECK_STATUS(ek_mem_unmap(dev, m), EK_ERR_NOT_MAPPED);
    CHECK_ERROR_MENTIONS("is not mapped");
    CHECK_STATUS(ek_mem_unmap(dev, small), EK_ERR_NOT_MAPPED);
    /* As on a local device, flushing or invalidating memory that is not mapped does nothing. */
    CHECK_OK(ek_mem_flush(dev, small));
    CHECK_OK(ek_mem_invalidate(dev, m));
    /* ranges and arguments */
    REQUIRE_OK(ek_mem_mmap(dev, small, (void **)&p));
    CHECK_STATUS(ek_mem_flush_partial(dev, small, 90, 11), EK_ERR_OUT_OF_RANGE);
    CHECK_STATUS(ek_mem_invalidate_partial(dev, small, 101, 1), EK_ERR_OUT_OF_RANGE);
    CHECK_STATUS(ek_mem_flush_partial(dev, small, 0, 0), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_mem_mmap(dev, small, NULL), EK_ERR_INVALID_ARG);
    /* freeing a mapped memory ends its mapping */
    CHECK_OK(ek_free_device(dev, small));
    CHECK_STATUS(ek_mem_unmap(dev, small), EK_ERR_FREED_HANDLE);
    CHECK_OK(ek_free_device(dev, m));
    free(a);
    free(got);
    CHECK_OK(ekt_close(dev));
}

/* ---- runtimes ---- */

static int same_shape(const ek_shape_t *a, const ek_shape_t *b)
{
    if (a->num_dims != b->num_dims)
        return 0;
    for (int i = 0; i < a->num_dims; i++)
        if (a->dims[i] != b->dims[i])
            return 0;
    return 1;
}

static int same_io(const ek_io_info_t *a, const ek_io_info_t *b)
{
    return strcmp(a->name, b->name) == 0 && a->dtype == b->dtype && memcmp(&a->scale, &b->scale, sizeof a->scale) == 0 &&
           a->zero_point == b->zero_point && a->max_bytes == b->max_bytes;
}

/* Every network of `r` is described as in `l`. */
static void check_same_networks(ek_rt_t l, ek_rt_t r)
{
    int lc = -1, rc = -2;
    CHECK_OK(ek_rt_network_count(l, &lc));
    CHECK_OK(ek_rt_network_count(r, &rc));
    CHECK(lc >= 3 && rc == lc);
    for (int i = 0; i < lc && i < rc; i++) {
        const char *ln = NULL, *rn = NULL;
        if (!CHECK_OK(ek_rt_network_name(l, i, &ln)) || !CHECK_OK(ek_rt_network_name(r, i, &rn)))
            continue;
        CHECK(strcmp(ln, rn) == 0);
        const ek_net_info_t *li = NULL, *ri = NULL;
        if (!CHECK_OK(ek_rt_network_info(l, ln, &li)) || !CHECK_OK(ek_rt_network_info(r, rn, &ri)))
            continue;
        CHECK(strcmp(li->name, ri->name) == 0);
        CHECK(li->input_count == ri->input_count && li->output_count == ri->output_count &&
              li->stage_count == ri->stage_count);
        if (li->input_count != ri->input_count || li->output_count != ri->output_count ||
            li->stage_count != ri->stage_count)
            continue;
        for (int k = 0; k < li->input_count; k++)
            CHECK(same_io(&li->inputs[k], &ri->inputs[k]));
        for (int k = 0; k < li->output_count; k++)
            CHECK(same_io(&li->outputs[k], &ri->outputs[k]));
        for (int s = 0; s < li->stage_count; s++) {
            for (int k = 0; k < li->input_count; k++)
                CHECK(same_shape(&li->stages[s].input_shapes[k], &ri->stages[s].input_shapes[k]));
            for (int k = 0; k < li->output_count; k++)
                CHECK(same_shape(&li->stages[s].output_shapes[k], &ri->stages[s].output_shapes[k]));
        }
    }
}

static void test_runtime_load_and_info(void)
{
    ek_dev_t local, dev;
    if (!open_pair(&local, &dev))
        return;
    ek_rt_t lrt, rrt, frt;
    if (!make_rt(local, &lrt)) {
        ekt_close(dev);
        ekt_close(local);
        return;
    }
    /* from memory */
    if (make_rt(dev, &rrt)) {
        check_same_networks(lrt, rrt);
        /* names and infos stay valid until ek_rt_destroy, through later loads */
        const ek_net_info_t *kept = NULL;
        const char *kept_name = NULL;
        CHECK_OK(ek_rt_network_info(rrt, "net_b", &kept));
        CHECK_OK(ek_rt_network_name(rrt, 2, &kept_name));
        for (int i = 0; i < 2; i++) {
            CHECK_OK(ek_rt_load_model_data(i ? rrt : lrt, model2_bytes, model2_size));
            int n = 0;
            CHECK_OK(ek_rt_network_count(i ? rrt : lrt, &n));
            CHECK(n == 4);
        }
        check_same_networks(lrt, rrt);
        if (kept && kept_name) {
            CHECK(strcmp(kept->name, "net_b") == 0 && kept->input_count == 2 && strcmp(kept->inputs[1].name, "b") == 0);
            CHECK(kept->stage_count == 1 && kept->stages[0].output_shapes[0].dims[0] == 6);
            CHECK(strcmp(kept_name, "big") == 0);
        }
        const char *lk = NULL, *rk = NULL;
        CHECK_OK(ek_rt_kernels(lrt, &lk));
        CHECK_OK(ek_rt_kernels(rrt, &rk));
        CHECK(lk && rk && strcmp(lk, rk) == 0);
        const char *rreason = NULL;
        CHECK_OK(ek_rt_kernels_reason(rrt, &rreason)); /* the board keeps its own */
        CHECK(rreason && rreason[0] == '\0');
        int lt = 0, rt_threads = 0;
        CHECK_OK(ek_rt_threads(lrt, &lt));
        CHECK_OK(ek_rt_threads(rrt, &rt_threads));
        CHECK(lt == rt_threads && lt >= 1);
        /* errors: the same as locally */
        const char *name = NULL;
        char lmsg[1024];
        CHECK_STATUS(ek_rt_network_name(lrt, 4, &name), EK_ERR_INVALID_ARG);
        keep_error(lmsg, sizeof lmsg);
        CHECK_STATUS(ek_rt_network_name(rrt, 4, &name), EK_ERR_INVALID_ARG);
        CHECK(strcmp(ek_last_error(), lmsg) == 0);
        CHECK_STATUS(ek_rt_network_name(rrt, -1, &name), EK_ERR_INVALID_ARG);
        const ek_net_info_t *info;
        CHECK_STATUS(ek_rt_network_info(lrt, "nope", &info), EK_ERR_INVALID_ARG);
        keep_error(lmsg, sizeof lmsg);
        CHECK_STATUS(ek_rt_network_info(rrt, "nope", &info), EK_ERR_INVALID_ARG);
        CHECK(strcmp(ek_last_error(), lmsg) == 0);
        /* a network already loaded: the board's error, word for word */
        CHECK_STATUS(ek_rt_load_model_data(lrt, model_bytes, model_size), EK_ERR_BUSY);
        keep_error(lmsg, sizeof lmsg);
        CHECK_STATUS(ek_rt_load_model_data(rrt, model_bytes, model_size), EK_ERR_BUSY);
        CHECK(strcmp(ek_last_error(), lmsg) == 0);
        int count = 0;
        CHECK_OK(ek_rt_network_count(rrt, &count));
        CHECK(count == 4);
        CHECK_OK(ek_rt_destroy(rrt));
        CHECK_STATUS(ek_rt_destroy(rrt), EK_ERR_DOUBLE_FREE);
        CHECK_STATUS(ek_rt_network_count(rrt, &count), EK_ERR_FREED_HANDLE);
    }
    /* from a file (read on the host, sent to the board) */
    char dir[256], path[300];
    int made = make_temp_dir(dir, sizeof dir);
    CHECK(made);
    if (made) {
        snprintf(path, sizeof path, "%s/model.ekm", dir);
        CHECK(write_file(path, model_bytes, model_size));
        char path2[300];
        snprintf(path2, sizeof path2, "%s/model2.ekm", dir);
        CHECK(write_file(path2, model2_bytes, model2_size));
        if (CHECK_OK(ek_rt_create(&frt, dev))) {
            CHECK_OK(ek_rt_load_model(frt, path));
            CHECK_OK(ek_rt_load_model(frt, path2));
            check_same_networks(lrt, frt);
            snprintf(path, sizeof path, "%s/missing.ekm", dir);
            CHECK_STATUS(ek_rt_load_model(frt, path), EK_ERR_SYSTEM);
            CHECK_ERROR_MENTIONS("missing.ekm");
            CHECK_STATUS(ek_rt_load_model(frt, dir), EK_ERR_MODEL_INVALID); /* a directory */
            CHECK_STATUS(ek_rt_load_model(frt, NULL), EK_ERR_INVALID_ARG);
            CHECK_OK(ek_rt_destroy(frt));
        }
        snprintf(path, sizeof path, "%s/model.ekm", dir);
        unlink(path);
        unlink(path2);
        rmdir(dir);
    }
    /* corrupt models: the board's loader says what is wrong, as the local loader does */
    if (CHECK_OK(ek_rt_create(&frt, dev))) {
        static uint8_t zeros[64];
        char lmsg[1024];
        ek_rt_t scratch;
        uint8_t *bad = malloc(model_size);
        REQUIRE(bad);
        const struct {
            size_t offset;
            uint8_t value;
            size_t size;
        } damage[] = {
            {16, 0xFF, 0},              /* the file size field */
            {24, 0x01, 0},              /* the section table offset */
            {64 + 8, 0x77, 0},          /* the first section's offset */
            {0, 0, model_size / 2},     /* cut in half */
        };
        for (size_t i = 0; i < sizeof damage / sizeof damage[0]; i++) {
            memcpy(bad, model_bytes, model_size);
            size_t size = damage[i].size ? damage[i].size : model_size;
            if (!damage[i].size)
                bad[damage[i].offset] ^= damage[i].value;
            REQUIRE_OK(ek_rt_create(&scratch, local));
            ek_status_t ls = ek_rt_load_model_data(scratch, bad, size);
            keep_error(lmsg, sizeof lmsg);
            CHECK_OK(ek_rt_destroy(scratch));
            CHECK(ls == EK_ERR_MODEL_INVALID);
            CHECK_STATUS(ek_rt_load_model_data(frt, bad, size), EK_ERR_MODEL_INVALID);
            if (strcmp(ek_last_error(), lmsg) != 0)
                printf("    damage %zu: remote \"%s\"\n               local \"%s\"\n", i, ek_last_error(), lmsg);
            CHECK(strcmp(ek_last_error(), lmsg) == 0);
        }
        CHECK_STATUS(ek_rt_load_model_data(frt, zeros, sizeof zeros), EK_ERR_MODEL_INVALID);
        CHECK_STATUS(ek_rt_load_model_data(frt, zeros, 0), EK_ERR_INVALID_ARG);
        CHECK_STATUS(ek_rt_load_model_data(frt, NULL, 64), EK_ERR_INVALID_ARG);
        /* a newer .ekm major: said before the upload, naming both versions */
        memcpy(bad, model_bytes, model_size);
        ekb_put16(bad, 8, 9);
        CHECK_STATUS(ek_rt_load_model_data(frt, bad, model_size), EK_ERR_VERSION);
        CHECK_ERROR_MENTIONS("the model is .ekm 9.0");
        CHECK_ERROR_MENTIONS("upgrade EdgeKit on the board");
        free(bad);
        int count = -1;
        CHECK_OK(ek_rt_network_count(frt, &count));
        CHECK(count == 0);
        /* and a good model still loads after all that */
        CHECK_OK(ek_rt_load_model_data(frt, model_bytes, model_size));
        CHECK_OK(ek_rt_network_count(frt, &count));
        CHECK(count == 3);
        CHECK_OK(ek_rt_destroy(frt));
    }
    ek_rt_config_t cfg = {.kernels = EK_KERNELS_PORTABLE, .threads = 2};
    if (CHECK_OK(ek_rt_create_ex(&frt, dev, &cfg))) {
        const char *k = NULL;
        int threads = 0;
        CHECK_OK(ek_rt_kernels(frt, &k));
        CHECK(k && strcmp(k, "portable") == 0);
        CHECK_OK(ek_rt_threads(frt, &threads));
        CHECK(threads == 2);
        /* memory strategies are local: refused with the reason, nothing sent */
        ek_stage_memory_t sm;
        ek_workspace_t ws;
        ek_mem_t m = {0};
        CHECK_STATUS(ek_rt_stage_memory(frt, "net_a", 0, &sm), EK_ERR_UNSUPPORTED);
        CHECK_ERROR_MENTIONS("workspaces are for local runtimes");
        CHECK_STATUS(ek_rt_workspace_create(frt, "net_a", 0, m, 0, 4096, &ws), EK_ERR_UNSUPPORTED);
        CHECK_OK(ek_rt_destroy(frt));
    }
    ek_allocator_t pool;
    if (CHECK_OK(ek_allocator_create_pool(&pool, local, 1 << 20))) {
        cfg.allocator = pool;
        CHECK_STATUS(ek_rt_create_ex(&frt, dev, &cfg), EK_ERR_UNSUPPORTED);
        CHECK_ERROR_MENTIONS("allocators are for local runtimes");
        cfg.allocator.id = 0;
        CHECK_OK(ek_allocator_destroy(pool));
    }
    CHECK_STATUS(ek_allocator_create_pool(&pool, dev, 1 << 20), EK_ERR_UNSUPPORTED);
    cfg.kernels = (ek_kernels_t)42;
    char kmsg[1024];
    CHECK_STATUS(ek_rt_create_ex(&frt, local, &cfg), EK_ERR_INVALID_ARG);
    keep_error(kmsg, sizeof kmsg);
    CHECK_STATUS(ek_rt_create_ex(&frt, dev, &cfg), EK_ERR_INVALID_ARG); /* the board's check */
    CHECK(strcmp(ek_last_error(), kmsg) == 0);
    CHECK_STATUS(ek_rt_create(NULL, dev), EK_ERR_INVALID_ARG);
    CHECK_OK(ek_rt_destroy(lrt));
    CHECK_OK(ekt_close(dev));
    CHECK_OK(ekt_close(local));
}

/* ek_rt_launch_data on the board returns the bytes a local run does. */
static void test_launch_data_matches_local(void)
{
    ek_dev_t local, dev;
    if (!open_pair(&local, &dev))
        return;
    ek_rt_t lrt, rrt;
    if (!make_rt(local, &lrt)) {
        ekt_close(dev);
        ekt_close(local);
        return;
    }
    if (!make_rt(dev, &rrt)) {
        ek_rt_destroy(lrt);
        ekt_close(dev);
        ekt_close(local);
        return;
    }
    char lmsg[1024];
    for (int rows = 1; rows <= 2; rows++) {
        float x[16], yl[16], yr[16];
        fill_a(x, rows * 8, (float)rows);
        memset(yl, 0x55, sizeof yl);
        memset(yr, 0xAA, sizeof yr);
        const void *ins[1] = {x};
        void *lo[1] = {yl}, *ro[1] = {yr};
        ek_shape_t s = shape2(rows, 8), ls, rs;
        size_t cap = sizeof yl;
        CHECK_OK(ek_rt_launch_data(lrt, "net_a", ins, &s, 1, lo, &cap, &ls, 1, NULL));
        CHECK_OK(ek_rt_launch_data(rrt, "net_a", ins, &s, 1, ro, &cap, &rs, 1, NULL));
        CHECK(same_shape(&ls, &rs) && same_shape(&rs, &s));
        CHECK(memcmp(yl, yr, (size_t)rows * 32) == 0);
        CHECK(yr[3] == expect_a(x[3], 3) && yr[rows * 8 - 1] == expect_a(x[rows * 8 - 1], rows * 8 - 1));
        CHECK(ekt_all_bytes((uint8_t *)yr + rows * 32, sizeof yr - (size_t)rows * 32, 0xAA)); /* nothing past */
    }
    {
        float a[6] = {1.5f, -2, 3, 4.25f, 5, -6}, b[6] = {10, 20.5f, -30, 40, 50, 60}, yl[6], yr[6];
        const void *ins[2] = {a, b};
        void *lo[1] = {yl}, *ro[1] = {yr};
        ek_shape_t s[2] = {shape2(2, 3), shape2(2, 3)}, ls, rs;
        size_t cap = sizeof yl;
        CHECK_OK(ek_rt_launch_data(lrt, "net_b", ins, s, 2, lo, &cap, &ls, 1, NULL));
        CHECK_OK(ek_rt_launch_data(rrt, "net_b", ins, s, 2, ro, &cap, &rs, 1, NULL));
        CHECK(same_shape(&ls, &rs) && rs.num_dims == 1 && rs.dims[0] == 6);
        CHECK(memcmp(yl, yr, sizeof yl) == 0 && yr[5] == 54);
    }
    /* 9 MiB there and 9 MiB back: more than one RUN carries, so through board memory in chunks */
    size_t n = (size_t)BIG_N;
    float *x = malloc(n * 4), *yl = malloc(n * 4), *yr = malloc(n * 4);
    REQUIRE(x && yl && yr);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((int64_t)(i * 2654435761u % 20001) - 10000) / 77.0f;
    memset(yr, 0, n * 4);
    ek_heap_stats_t before = STATS(dev);
    const void *ins[1] = {x};
    void *lo[1] = {yl}, *ro[1] = {yr};
    ek_shape_t s = shape1(BIG_N), ls, rs;
    size_t cap = n * 4;
    CHECK_OK(ek_rt_launch_data(lrt, "big", ins, &s, 1, lo, &cap, &ls, 1, NULL));
    CHECK_OK(ek_rt_launch_data(rrt, "big", ins, &s, 1, ro, &cap, &rs, 1, NULL));
    CHECK(same_shape(&ls, &rs) && same_shape(&rs, &s));
    CHECK(memcmp(yl, yr, n * 4) == 0);
    CHECK(yr[1] == (x[1] + x[1] > 0 ? x[1] + x[1] : 0));
    ek_heap_stats_t after = STATS(dev);
    /* the staged tensors went; the arena stays (and the local one, when both share the one device) */
    CHECK(after.allocations == before.allocations + (remote_id == 0 ? 2 : 1));
    free(x);
    free(yl);
    free(yr);

    /* the errors of a local run, word for word */
    {
        float *in = calloc(8, sizeof *in), out[24]; /* exactly the 1x8 the network takes */
        REQUIRE(in);
        const void *ins1[1] = {in};
        void *outs1[1] = {out};
        ek_shape_t bad = shape2(1, 9), os;
        size_t cap1 = sizeof out;
        CHECK_STATUS(ek_rt_launch_data(lrt, "net_a", ins1, &bad, 1, outs1, &cap1, &os, 1, NULL), EK_ERR_INVALID_ARG);
        keep_error(lmsg, sizeof lmsg);
        CHECK_STATUS(ek_rt_launch_data(rrt, "net_a", ins1, &bad, 1, outs1, &cap1, &os, 1, NULL), EK_ERR_INVALID_ARG);
        CHECK(strcmp(ek_last_error(), lmsg) == 0);
        CHECK_ERROR_MENTIONS("input 'x' is 1x9; network 'net_a' takes 1x8 | 2x8");
        /* shapes no stage has, some of which the wire cannot carry: nothing past the 32 bytes is read */
        const ek_shape_t bads[] = {shape2(3, 8), shape2(1, 4096), shape2(-1, 8), shape1(8)};
        for (size_t i = 0; i < sizeof bads / sizeof bads[0] + 2; i++) {
            bad = i < sizeof bads / sizeof bads[0] ? bads[i] : shape2(1, 8);
            if (i == sizeof bads / sizeof bads[0])
                bad.num_dims = 9;
            else if (i > sizeof bads / sizeof bads[0])
                bad.num_dims = -3;
            CHECK_STATUS(ek_rt_launch_data(lrt, "net_a", ins1, &bad, 1, outs1, &cap1, &os, 1, NULL),
                         EK_ERR_INVALID_ARG);
            keep_error(lmsg, sizeof lmsg);
            CHECK_STATUS(ek_rt_launch_data(rrt, "net_a", ins1, &bad, 1, outs1, &cap1, &os, 1, NULL),
                         EK_ERR_INVALID_ARG);
            if (strcmp(ek_last_error(), lmsg) != 0)
                printf("    shape %zu: remote \"%s\"\n             local  \"%s\"\n", i, ek_last_error(), lmsg);
            CHECK(strcmp(ek_last_error(), lmsg) == 0);
        }
        /* and the host's checks, with the local words */
        ek_shape_t good = shape2(1, 8);
        cap1 = 16;
        CHECK_STATUS(ek_rt_launch_data(rrt, "net_a", ins1, &good, 1, outs1, &cap1, &os, 1, NULL), EK_ERR_INVALID_ARG);
        CHECK_ERROR_MENTIONS("output 'y' of network 'net_a' needs 32 bytes");
        CHECK_ERROR_MENTIONS("output_capacity[0] is 16");
        cap1 = sizeof out;
        CHECK_STATUS(ek_rt_launch_data(lrt, "zzz", ins1, &good, 1, outs1, &cap1, &os, 1, NULL), EK_ERR_INVALID_ARG);
        keep_error(lmsg, sizeof lmsg);
        CHECK_STATUS(ek_rt_launch_data(rrt, "zzz", ins1, &good, 1, outs1, &cap1, &os, 1, NULL), EK_ERR_INVALID_ARG);
        CHECK(strcmp(ek_last_error(), lmsg) == 0);
        CHECK_STATUS(ek_rt_launch_data(rrt, "net_a", ins1, &good, 1, outs1, &cap1, &os, 2, NULL), EK_ERR_INVALID_ARG);
        CHECK_ERROR_MENTIONS("has 1 input and 1 output");
        CHECK_STATUS(ek_rt_launch_data(rrt, "net_a", NULL, &good, 1, outs1, &cap1, &os, 1, NULL), EK_ERR_INVALID_ARG);
        ek_launch_options_t opt;
        memset(&opt, 0, sizeof opt);
        opt.threads = 1000;
        CHECK_STATUS(ek_rt_launch_data(lrt, "net_a", ins1, &good, 1, outs1, &cap1, &os, 1, &opt), EK_ERR_INVALID_ARG);
        keep_error(lmsg, sizeof lmsg);
        CHECK_STATUS(ek_rt_launch_data(rrt, "net_a", ins1, &good, 1, outs1, &cap1, &os, 1, &opt), EK_ERR_INVALID_ARG);
        CHECK(strcmp(ek_last_error(), lmsg) == 0);
        free(in);
    }
    /* the connection lived through all that */
    {
        float x8[8], y8[8];
        fill_a(x8, 8, 3);
        const void *ins1[1] = {x8};
        void *outs1[1] = {y8};
        ek_shape_t good = shape2(1, 8), os;
        size_t cap1 = sizeof y8;
        CHECK_OK(ek_rt_launch_data(rrt, "net_a", ins1, &good, 1, outs1, &cap1, &os, 1, NULL));
        CHECK(y8[5] == expect_a(x8[5], 5));
    }
    CHECK_OK(ek_rt_destroy(rrt));
    CHECK_OK(ek_rt_destroy(lrt));
    CHECK_OK(ekt_close(dev));
    CHECK_OK(ekt_close(local));
}

static void test_launch_tensor(void)
{
    ek_dev_t local, dev;
    if (!open_pair(&local, &dev))
        return;
    ek_rt_t lrt, rrt;
    if (!make_rt(local, &lrt)) {
        ekt_close(dev);
        ekt_close(local);
        return;
    }
    if (!make_rt(dev, &rrt)) {
        ek_rt_destroy(lrt);
        ekt_close(dev);
        ekt_close(local);
        return;
    }
    /* outputs the runtime allocates on the board (what the caller leaves in them is not read) */
    for (int rows = 1; rows <= 2; rows++) {
        ek_tensor_t x = input_a(dev, rows, 2.5f), y, lx = input_a(local, rows, 2.5f), ly;
        memset(&y, rows == 1 ? 0xFF : 0x7F, sizeof y);
        memset(&ly, rows == 1 ? 0xFF : 0x7F, sizeof ly);
        ek_launch_t l = {0}, ll = {0};
        if (CHECK_OK(ek_rt_launch_tensor(rrt, "net_a", &x, 1, &y, 1, false, NULL, &l)) &&
            CHECK_OK(ek_rt_launch_tensor(lrt, "net_a", &lx, 1, &ly, 1, false, NULL, &ll))) {
            CHECK(l.id != 0);
            CHECK(y.mem.id != 0 && y.dtype == ly.dtype && same_shape(&y.shape, &ly.shape) && y.offset == ly.offset);
            CHECK_OK(ek_launch_wait(l, -1));
            CHECK_OK(ek_launch_wait(ll, -1));
            CHECK(output_a_ok(dev, &y, rows, 2.5f));
            float a[16], b[16];
            CHECK_OK(ek_memcpy_d2s_partial(dev, a, y.mem, (size_t)rows * 32));
            CHECK_OK(ek_memcpy_d2s_partial(local, b, ly.mem, (size_t)rows * 32));
            CHECK(memcmp(a, b, (size_t)rows * 32) == 0);
            CHECK_STATUS(ek_launch_wait(l, -1), EK_ERR_FREED_HANDLE);
            size_t size = 0;
            CHECK_OK(ek_mem_size(y.mem, &size));
            CHECK(size == (size_t)rows * 32);
            CHECK_OK(ek_free_device(dev, y.mem));
            CHECK_OK(ek_free_device(local, ly.mem));
        }
        CHECK_OK(ek_free_device(dev, x.mem));
        CHECK_OK(ek_free_device(local, lx.mem));
    }
    /* user memory, at an offset; two inputs */
    {
        ek_tensor_t in[2], y;
        memset(in, 0, sizeof in);
        memset(&y, 0, sizeof y);
        float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {10, 20, 30, 40, 50, 60}, out[6];
        for (int i = 0; i < 2; i++) {
            CHECK_OK(ek_malloc_device(dev, &in[i].mem, 24));
            CHECK_OK(ek_memcpy_s2d(dev, in[i].mem, i ? b : a));
            in[i].dtype = EK_DTYPE_FLOAT32;
            in[i].shape = shape2(2, 3);
        }
        REQUIRE_OK(ek_malloc_device(dev, &y.mem, 256));
        y.offset = 100;
        ek_launch_t l;
        if (CHECK_OK(ek_rt_launch_tensor(rrt, "net_b", in, 2, &y, 1, true, NULL, &l))) {
            CHECK(y.offset == 100 && y.shape.num_dims == 1 && y.shape.dims[0] == 6 && y.dtype == EK_DTYPE_FLOAT32);
            CHECK_OK(ek_launch_wait(l, 5000));
            CHECK_OK(ek_memcpy_d2s_partial_offset(dev, out, y.mem, sizeof out, 100));
            for (int i = 0; i < 6; i++)
                CHECK(out[i] == a[i] + b[i]);
        }
        /* ek_rt_run on a remote runtime: a launch and its wait, one call */
        float zero[6] = {0};
        CHECK_OK(ek_memcpy_s2d_partial_offset(dev, y.mem, zero, sizeof zero, 100));
        if (CHECK_OK(ek_rt_run(rrt, "net_b", in, 2, &y, 1, NULL))) {
            CHECK(y.shape.num_dims == 1 && y.shape.dims[0] == 6);
            CHECK_OK(ek_memcpy_d2s_partial_offset(dev, out, y.mem, sizeof out, 100));
            for (int i = 0; i < 6; i++)
                CHECK(out[i] == a[i] + b[i]);
        }
        /* the board checks user memory as locally */
        y.offset = 240;
        CHECK_STATUS(ek_rt_run(rrt, "net_b", in, 2, &y, 1, NULL), EK_ERR_OUT_OF_RANGE);
        CHECK_STATUS(ek_rt_launch_tensor(rrt, "net_b", in, 2, &y, 1, true, NULL, &l), EK_ERR_OUT_OF_RANGE);
        CHECK_ERROR_MENTIONS("output 'y'");
        ek_tensor_t alias = in[0];
        CHECK_STATUS(ek_rt_launch_tensor(rrt, "net_b", in, 2, &alias, 1, true, NULL, &l), EK_ERR_INVALID_ARG);
        CHECK_ERROR_MENTIONS("overlaps input 'a'");
        /* memory of another device, both ways */
        ek_tensor_t lx = input_a(local, 1, 0), rx = input_a(dev, 1, 0), out1;
        CHECK_STATUS(ek_rt_launch_tensor(rrt, "net_a", &lx, 1, &out1, 1, false, NULL, &l), EK_ERR_DEVICE_MISMATCH);
        CHECK_ERROR_MENTIONS("is a local device's");
        CHECK_STATUS(ek_rt_launch_tensor(lrt, "net_a", &rx, 1, &out1, 1, false, NULL, &l), EK_ERR_DEVICE_MISMATCH);
        CHECK_ERROR_MENTIONS("input 'x'");
        ek_tensor_t gone = input_a(dev, 1, 0);
        CHECK_OK(ek_free_device(dev, gone.mem));
        CHECK_STATUS(ek_rt_launch_tensor(rrt, "net_a", &gone, 1, &out1, 1, false, NULL, &l), EK_ERR_FREED_HANDLE);
        gone.mem.id = 0;
        CHECK_STATUS(ek_rt_launch_tensor(rrt, "net_a", &gone, 1, &out1, 1, false, NULL, &l), EK_ERR_INVALID_HANDLE);
        CHECK_STATUS(ek_rt_launch_tensor(rrt, "zzz", &rx, 1, &out1, 1, false, NULL, &l), EK_ERR_INVALID_ARG);
        CHECK_STATUS(ek_rt_launch_tensor(rrt, NULL, &rx, 1, &out1, 1, false, NULL, &l), EK_ERR_INVALID_ARG);
        /* input shapes no stage has: the board's words, or the local words where the wire cannot carry them */
        char lmsg[1024];
        const ek_shape_t bads[] = {shape2(1, 9), shape2(1, -8), shape1(8)};
        ek_tensor_t lbad = lx, rbad = rx;
        for (size_t i = 0; i < sizeof bads / sizeof bads[0] + 2; i++) {
            lbad.shape = rbad.shape = i < sizeof bads / sizeof bads[0] ? bads[i] : shape2(1, 8);
            if (i == sizeof bads / sizeof bads[0])
                lbad.shape.num_dims = rbad.shape.num_dims = 12;
            else if (i > sizeof bads / sizeof bads[0])
                lbad.shape.num_dims = rbad.shape.num_dims = INT32_MIN;
            CHECK_STATUS(ek_rt_launch_tensor(lrt, "net_a", &lbad, 1, &out1, 1, false, NULL, &l), EK_ERR_INVALID_ARG);
            keep_error(lmsg, sizeof lmsg);
            CHECK_STATUS(ek_rt_launch_tensor(rrt, "net_a", &rbad, 1, &out1, 1, false, NULL, &l), EK_ERR_INVALID_ARG);
            if (strcmp(ek_last_error(), lmsg) != 0)
                printf("    shape %zu: remote \"%s\"\n             local  \"%s\"\n", i, ek_last_error(), lmsg);
            CHECK(strcmp(ek_last_error(), lmsg) == 0);
        }
        CHECK_STATUS(ek_rt_launch_tensor(lrt, "net_a", &lx, 1, &out1, 2, false, NULL, &l), EK_ERR_INVALID_ARG);
        keep_error(lmsg, sizeof lmsg);
        CHECK_STATUS(ek_rt_launch_tensor(rrt, "net_a", &rx, 1, &out1, 2, false, NULL, &l), EK_ERR_INVALID_ARG);
        CHECK(strcmp(ek_last_error(), lmsg) == 0);
        ek_tensor_t wrong = rx;
        wrong.dtype = EK_DTYPE_INT8;
        CHECK_STATUS(ek_rt_launch_tensor(rrt, "net_a", &wrong, 1, &out1, 1, false, NULL, &l), EK_ERR_INVALID_ARG);
        CHECK_ERROR_MENTIONS("input 'x' of network 'net_a' is float32; the launch gives int8");
        CHECK_STATUS(ek_launch_wait((ek_launch_t){0}, 0), EK_ERR_INVALID_HANDLE);
        /* and the session is still there */
        if (CHECK_OK(ek_rt_launch_tensor(rrt, "net_a", &rx, 1, &out1, 1, false, NULL, &l))) {
            CHECK_OK(ek_launch_wait(l, -1));
            CHECK(output_a_ok(dev, &out1, 1, 0));
            CHECK_OK(ek_free_device(dev, out1.mem));
        }
        CHECK_OK(ek_free_device(local, lx.mem));
        CHECK_OK(ek_free_device(dev, rx.mem));
        for (int i = 0; i < 2; i++)
            CHECK_OK(ek_free_device(dev, in[i].mem));
        CHECK_OK(ek_free_device(dev, y.mem));
    }
    CHECK_OK(ek_rt_destroy(rrt));
    CHECK_OK(ek_rt_destroy(lrt));
    CHECK_OK(ekt_close(dev));
    CHECK_OK(ekt_close(local));
}

static void test_wait_timeout(void)
{
    ek_dev_t dev;
    REQUIRE_OK(rconnect(&dev));
    ek_rt_t rt;
    if (!make_slow_rt(dev, &rt, SLOW_MS)) {
        ekt_close(dev);
        return;
    }
    ek_tensor_t x = input_a(dev, 2, 4), y;
    ek_launch_t l;
    uint64_t t0 = now_ms();
    if (CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x, 1, &y, 1, false, NULL, &l))) {
        CHECK_STATUS(ek_launch_wait(l, 0), EK_ERR_TIMEOUT); /* queued, not run */
        uint64_t t1 = now_ms();
        CHECK_STATUS(ek_launch_wait(l, 50), EK_ERR_TIMEOUT);
        CHECK(now_ms() - t1 >= 49);
        CHECK_ERROR_MENTIONS("still running after 50 ms");
        CHECK_OK(ek_launch_wait(l, 20000));
        CHECK(now_ms() - t0 >= SLOW_MS);
        CHECK(output_a_ok(dev, &y, 2, 4));
        CHECK_STATUS(ek_launch_wait(l, 0), EK_ERR_FREED_HANDLE);
        CHECK_OK(ek_free_device(dev, y.mem));
    }
    CHECK_OK(ek_free_device(dev, x.mem));
    CHECK_OK(ek_rt_destroy(rt));
    CHECK_OK(ekt_close(dev));
}

/* ---- callbacks ---- */

struct cb_state {
    ek_dev_t dev;
    ek_rt_t rt;
    _Atomic uint64_t y;       /* the memory the callback reads */
    size_t y_bytes;
    _Atomic uint64_t launch;  /* the callback waits on its own launch */
    atomic_int calls;
    ek_status_t seen, read, wait_own, data, sync, destroy, close;
    float got[16], data_out[8];
};

/* Calls the remote device from the callback thread: a read, a whole RUN, and calls that must refuse. */
static void busy_callback(void *user, ek_status_t status)
{
    struct cb_state *c = user;
    c->seen = status;
    c->read = ek_memcpy_d2s_partial(c->dev, c->got, (ek_mem_t){atomic_load(&c->y)}, 32);
    float x[8];
    fill_a(x, 8, 1);
    const void *ins[1] = {x};
    void *outs[1] = {c->data_out};
    ek_shape_t s = shape2(1, 8), os;
    size_t cap = sizeof c->data_out;
    c->data = ek_rt_launch_data(c->rt, "net_a", ins, &s, 1, outs, &cap, &os, 1, NULL);
    uint64_t id;
    while ((id = atomic_load(&c->launch)) == 0) /* the launcher stores the handle first */
        sleep_ms(1);
    c->wait_own = ek_launch_wait((ek_launch_t){id}, -1);
    c->sync = ek_dev_sync(c->dev);
    c->destroy = ek_rt_destroy(c->rt);
    c->close = ek_dev_free(c->dev);
    atomic_fetch_add(&c->calls, 1);
}

/* Reads the output from the callback thread: used while the runtime is being destroyed. */
static void read_callback(void *user, ek_status_t status)
{
    struct cb_state *c = user;
    c->seen = status;
    uint64_t y;
    while ((y = atomic_load(&c->y)) == 0) /* the launcher stores the output first */
        sleep_ms(1);
    c->read = ek_memcpy_d2s_partial(c->dev, c->got, (ek_mem_t){y}, c->y_bytes);
    atomic_fetch_add(&c->calls, 1);
}

static void test_callbacks(void)
{
    ek_dev_t dev;
    REQUIRE_OK(rconnect(&dev));
    ek_rt_t rt;
    if (!make_slow_rt(dev, &rt, SLOW_MS / 2)) {
        ekt_close(dev);
        return;
    }
    static struct cb_state c;
    memset(&c, 0, sizeof c);
    c.dev = dev;
    c.rt = rt;
    c.seen = c.read = c.wait_own = c.data = c.sync = c.destroy = c.close = EK_ERR_INTERNAL;
    ek_tensor_t x = input_a(dev, 1, 6), y;
    memset(&y, 0, sizeof y);
    REQUIRE_OK(ek_malloc_device(dev, &y.mem, 32));
    atomic_store(&c.y, y.mem.id);
    ek_launch_options_t opt;
    memset(&opt, 0, sizeof opt);
    opt.on_done = busy_callback;
    opt.user_data = &c;
    ek_launch_t l;
    if (CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x, 1, &y, 1, true, &opt, &l))) {
        atomic_store(&c.launch, l.id);
        /* the callback waits for its own launch (and so retires its handle) */
        CHECK_STATUS(ek_launch_wait(l, -1), EK_ERR_FREED_HANDLE);
        CHECK_OK(ek_dev_sync(dev)); /* waits for the callbacks too */
        CHECK(atomic_load(&c.calls) == 1);
        CHECK(c.seen == EK_OK && c.read == EK_OK && c.data == EK_OK && c.wait_own == EK_OK);
        CHECK(c.sync == EK_ERR_BUSY && c.destroy == EK_ERR_BUSY && c.close == EK_ERR_BUSY);
        float x8[8];
        fill_a(x8, 8, 6);
        for (int i = 0; i < 8; i++)
            CHECK(c.got[i] == expect_a(x8[i], i));
        fill_a(x8, 8, 1);
        for (int i = 0; i < 8; i++)
            CHECK(c.data_out[i] == expect_a(x8[i], i));
    }
    /* on_done without a handle: ek_dev_sync waits for the callback too */
    memset(&c, 0, sizeof c);
    c.dev = dev;
    c.y_bytes = 64;
    c.read = EK_ERR_INTERNAL;
    opt.on_done = read_callback;
    ek_tensor_t x2 = input_a(dev, 2, 7), y2;
    if (CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x2, 1, &y2, 1, false, &opt, NULL))) {
        atomic_store(&c.y, y2.mem.id);
        CHECK_OK(ek_dev_sync(dev));
        CHECK(atomic_load(&c.calls) == 1 && c.read == EK_OK);
        float x16[16];
        fill_a(x16, 16, 7);
        for (int i = 0; i < 16; i++)
            CHECK(c.got[i] == expect_a(x16[i], i));
        CHECK_OK(ek_free_device(dev, y2.mem));
    }
    /* destroying the runtime while a callback that calls the device is still to come: it waits for the
     * callback, and the callback's call goes through */
    memset(&c, 0, sizeof c);
    c.dev = dev;
    atomic_store(&c.y, y.mem.id);
    c.y_bytes = 32;
    c.read = EK_ERR_INTERNAL;
    x2.shape = shape2(1, 8);
    if (CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x2, 1, &y, 1, true, &opt, NULL))) {
        CHECK_OK(ek_rt_destroy(rt)); /* before the callback (the launch sleeps first): a deadlock once */
        CHECK(atomic_load(&c.calls) == 1 && c.seen == EK_OK && c.read == EK_OK);
        float x16[16];
        fill_a(x16, 16, 7);
        for (int i = 0; i < 8; i++)
            CHECK(c.got[i] == expect_a(x16[i], i));
    } else {
        CHECK_OK(ek_rt_destroy(rt));
    }
    CHECK_OK(ek_free_device(dev, x.mem));
    CHECK_OK(ek_free_device(dev, x2.mem));
    CHECK_OK(ek_free_device(dev, y.mem));
    CHECK_OK(ekt_close(dev));
}

/* Regression (found by the hammer's remote mode): ek_dev_sync waited for the device's callbacks while it
 * held the device's lock, shared; a callback that then called something taking that lock exclusively
 * (ek_free_device, ek_rt_load_model_data, even an ek_rt_destroy it is refused) waited for the sync, which
 * waited for it: a deadlock (the watchdog ends the test). */
struct exclusive_in_callback {
    ek_dev_t dev;
    ek_rt_t rt, other;
    ek_mem_t scratch;
    atomic_int calls;
    ek_status_t freed, loaded, destroy;
};

static void exclusive_callback(void *user, ek_status_t status)
{
    struct exclusive_in_callback *c = user;
    (void)status;
    sleep_ms(200); /* the launcher is in ek_dev_sync by now, waiting for this callback */
    c->freed = ek_free_device(c->dev, c->scratch);
    c->loaded = ek_rt_load_model_data(c->rt, model2_bytes, model2_size);
    c->destroy = ek_rt_destroy(c->other); /* refused from a callback, but not stuck */
    atomic_fetch_add(&c->calls, 1);
}

static void test_sync_while_a_callback_locks_the_device(void)
{
    ek_dev_t dev;
    REQUIRE_OK(rconnect(&dev));
    ek_rt_t rt, other;
    if (!make_rt(dev, &rt)) {
        ekt_close(dev);
        return;
    }
    if (!make_rt(dev, &other)) {
        ek_rt_destroy(rt);
        ekt_close(dev);
        return;
    }
    static struct exclusive_in_callback c;
    memset(&c, 0, sizeof c);
    c.dev = dev;
    c.rt = rt;
    c.other = other;
    c.freed = c.loaded = c.destroy = EK_ERR_INTERNAL;
    REQUIRE_OK(ek_malloc_device(dev, &c.scratch, 64));
    ek_tensor_t x = input_a(dev, 1, 3), y;
    memset(&y, 0, sizeof y);
    ek_launch_options_t opt;
    memset(&opt, 0, sizeof opt);
    opt.on_done = exclusive_callback;
    opt.user_data = &c;
    if (CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x, 1, &y, 1, false, &opt, NULL))) {
        CHECK_OK(ek_dev_sync(dev)); /* waits for the callback, which takes the device's lock */
        CHECK(atomic_load(&c.calls) == 1);
        CHECK(c.freed == EK_OK && c.loaded == EK_OK && c.destroy == EK_ERR_BUSY);
        CHECK(output_a_ok(dev, &y, 1, 3));
        CHECK_OK(ek_free_device(dev, y.mem));
    }
    const ek_net_info_t *info;
    CHECK_OK(ek_rt_network_info(rt, "net_c", &info)); /* the callback's load went through */
    CHECK_OK(ek_free_device(dev, x.mem));
    CHECK_OK(ek_rt_destroy(other));
    CHECK_OK(ek_rt_destroy(rt));
    CHECK_OK(ekt_close(dev));
}

/* Regression (found by the hammer's remote mode): the remote device's lock preferred readers, so calls
 * that take it exclusively (a load, ek_free_device, destroying a runtime) waited for as long as other
 * threads kept making calls. Here 6 threads call back to back while this one loads and frees: each must
 * get through while they go on. */
static atomic_int readers_stop;
static atomic_long reader_calls;

static void *reader_main(void *arg)
{
    ek_dev_t dev = *(const ek_dev_t *)arg;
    ek_heap_stats_t st;
    while (!atomic_load(&readers_stop))
        if (ek_dev_heap_stats(dev, &st) == EK_OK)
            atomic_fetch_add(&reader_calls, 1);
    return NULL;
}

static void test_exclusive_calls_among_busy_readers(void)
{
    enum { READERS = 6 };
    ek_dev_t dev;
    REQUIRE_OK(rconnect(&dev));
    ek_rt_t rt;
    if (!make_rt(dev, &rt)) {
        ekt_close(dev);
        return;
    }
    atomic_store(&readers_stop, 0);
    atomic_store(&reader_calls, 0);
    pthread_t readers[READERS];
    int started = 0;
    for (; started < READERS; started++)
        if (pthread_create(&readers[started], NULL, reader_main, &dev) != 0)
            break;
    CHECK(started == READERS);
    while (atomic_load(&reader_calls) < 100) /* they are all going */
        sleep_ms(1);
    /* Each of these waits for the readers' calls in progress, never for them to stop (the watchdog). */
    CHECK_OK(ek_rt_load_model_data(rt, model2_bytes, model2_size));
    for (int i = 0; i < 20; i++) {
        ek_mem_t m;
        if (CHECK_OK(ek_malloc_device(dev, &m, 64)))
            CHECK_OK(ek_free_device(dev, m));
    }
    long during = atomic_load(&reader_calls);
    atomic_store(&readers_stop, 1);
    for (int i = 0; i < started; i++)
        pthread_join(readers[i], NULL);
    CHECK(during >= 100);
    CHECK_OK(ek_rt_destroy(rt));
    CHECK_OK(ekt_close(dev));
}

/* Regression (found by the hammer's remote mode): the server kept one DEV_SYNC request per session, so
 * when two threads synced one remote device while a launch ran, the first one's reply was never sent and
 * it waited for ever (holding the device's lock: every exclusive call after it hung too). */
struct concurrent_sync {
    ek_dev_t dev;
    ek_status_t status;
};

static void *concurrent_sync_main(void *arg)
{
    struct concurrent_sync *c = arg;
    c->status = ek_dev_sync(c->dev);
    return NULL;
}

static void test_concurrent_syncs(void)
{
    enum { SYNCS = 3 };
    ek_dev_t dev;
    REQUIRE_OK(rconnect(&dev));
    ek_rt_t rt;
    if (!make_slow_rt(dev, &rt, SLOW_MS)) {
        ekt_close(dev);
        return;
    }
    ek_tensor_t x = input_a(dev, 1, 2), y;
    memset(&y, 0, sizeof y);
    if (CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x, 1, &y, 1, false, NULL, NULL))) {
        /* all of them reach the server while the launch still runs (it sleeps SLOW_MS first) */
        struct concurrent_sync c[SYNCS];
        pthread_t t[SYNCS];
        int started = 0;
        for (; started < SYNCS; started++) {
            c[started] = (struct concurrent_sync){dev, EK_ERR_INTERNAL};
            if (pthread_create(&t[started], NULL, concurrent_sync_main, &c[started]) != 0)
                break;
        }
        CHECK(started == SYNCS);
        for (int i = 0; i < started; i++) {
            pthread_join(t[i], NULL);
            CHECK_OK(c[i].status);
        }
        CHECK(output_a_ok(dev, &y, 1, 2)); /* the syncs waited for it */
        CHECK_OK(ek_free_device(dev, y.mem));
    }
    CHECK_OK(ek_free_device(dev, x.mem));
    CHECK_OK(ek_rt_destroy(rt));
    CHECK_OK(ekt_close(dev));
}

/* A launch without a handle fails on the board: ek_dev_sync reports it, once. */
static void test_sync_reports_launch_errors(void)
{
    ek_dev_t dev;
    REQUIRE_OK(rconnect(&dev));
    ek_rt_t rt;
    if (!make_slow_rt(dev, &rt, SLOW_MS)) {
        ekt_close(dev);
        return;
    }
    CHECK_OK(ek_dev_sync(dev));
    ek_tensor_t x = input_a(dev, 1, 0), y, x2 = input_a(dev, 1, 1), y2;
    ek_launch_t l2;
    int ok = CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x, 1, &y, 1, false, NULL, NULL));
    int ok2 = CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x2, 1, &y2, 1, false, NULL, &l2));
    /* freed while the launches wait on the board */
    CHECK_OK(ek_free_device(dev, x.mem));
    CHECK_OK(ek_free_device(dev, x2.mem));
    if (ok2) {
        CHECK_STATUS(ek_launch_wait(l2, -1), EK_ERR_FREED_HANDLE); /* its handle says so */
        CHECK_ERROR_MENTIONS("was freed before the launch ran");
        CHECK_OK(ek_free_device(dev, y2.mem));
    }
    if (ok) {
        CHECK_STATUS(ek_dev_sync(dev), EK_ERR_FREED_HANDLE);
        CHECK_ERROR_MENTIONS("network 'net_a': the memory of input 'x'");
        CHECK_ERROR_MENTIONS("was freed before the launch ran");
        CHECK_OK(ek_dev_sync(dev)); /* reported once */
        CHECK_OK(ek_free_device(dev, y.mem));
    }
    CHECK_OK(ek_rt_destroy(rt));
    CHECK_OK(ekt_close(dev));
}

/* ---- profiles ---- */

struct kinds {
    int n[EK_PROFILE_TRANSPORT + 1];
};

static struct kinds count_kinds(ek_profile_t p)
{
    struct kinds k;
    memset(&k, 0, sizeof k);
    size_t count = 0;
    ek_profile_count(p, &count);
    for (size_t i = 0; i < count; i++) {
        ek_profile_record_t r;
        if (ek_profile_get(p, i, &r) == EK_OK && r.kind >= 1 && r.kind <= EK_PROFILE_TRANSPORT)
            k.n[r.kind]++;
    }
    return k;
}

static void test_profile(void)
{
    ek_dev_t local, dev;
    if (!open_pair(&local, &dev))
        return;
    ek_rt_t lrt, rrt;
    if (!make_rt(local, &lrt)) {
        ekt_close(dev);
        ekt_close(local);
        return;
    }
    if (!make_rt(dev, &rrt)) {
        ek_rt_destroy(lrt);
        ekt_close(dev);
        ekt_close(local);
        return;
    }
    ek_profile_t lp, rp;
    REQUIRE_OK(ek_profile_create(&lp));
    REQUIRE_OK(ek_profile_create(&rp));
    ek_launch_options_t lo, ro;
    memset(&lo, 0, sizeof lo);
    memset(&ro, 0, sizeof ro);
    lo.profile = lp;
    ro.profile = rp;
    /* two launches through LAUNCH, one through RUN */
    for (int i = 0; i < 2; i++) {
        ek_tensor_t x = input_a(dev, 1, (float)i), y, lx = input_a(local, 1, (float)i), ly;
        ek_launch_t l, ll;
        if (CHECK_OK(ek_rt_launch_tensor(rrt, "net_a", &x, 1, &y, 1, false, &ro, &l))) {
            CHECK_OK(ek_launch_wait(l, -1));
            CHECK_OK(ek_free_device(dev, y.mem));
        }
        if (CHECK_OK(ek_rt_launch_tensor(lrt, "net_a", &lx, 1, &ly, 1, false, &lo, &ll))) {
            CHECK_OK(ek_launch_wait(ll, -1));
            CHECK_OK(ek_free_device(local, ly.mem));
        }
        CHECK_OK(ek_free_device(dev, x.mem));
        CHECK_OK(ek_free_device(local, lx.mem));
    }
    /* a network of a second model: its own ModelInit */
    CHECK_OK(ek_rt_load_model_data(lrt, model2_bytes, model2_size));
    CHECK_OK(ek_rt_load_model_data(rrt, model2_bytes, model2_size));
    {
        float x8[8], yr[8], yl[8];
        fill_a(x8, 8, 0);
        const void *ins[1] = {x8};
        void *ro_[1] = {yr}, *lo_[1] = {yl};
        ek_shape_t s = shape2(1, 8), os;
        size_t cap = sizeof yr;
        CHECK_OK(ek_rt_launch_data(rrt, "net_c", ins, &s, 1, ro_, &cap, &os, 1, &ro));
        CHECK_OK(ek_rt_launch_data(lrt, "net_c", ins, &s, 1, lo_, &cap, &os, 1, &lo));
        CHECK(memcmp(yr, yl, sizeof yr) == 0);
    }
    uint64_t t_before = ek_profile_clock_ns();
    {
        float a[6] = {1, 2, 3, 4, 5, 6}, yr[6], yl[6];
        const void *ins[2] = {a, a};
        void *ro_[1] = {yr}, *lo_[1] = {yl};
        ek_shape_t s[2] = {shape2(2, 3), shape2(2, 3)}, os;
        size_t cap = sizeof yr;
        CHECK_OK(ek_rt_launch_data(rrt, "net_b", ins, s, 2, ro_, &cap, &os, 1, &ro));
        CHECK_OK(ek_rt_launch_data(lrt, "net_b", ins, s, 2, lo_, &cap, &os, 1, &lo));
    }
    uint64_t t_after = ek_profile_clock_ns();
    /* the board's records and the local ones alike, plus the transport: two records per launch */
    struct kinds lk = count_kinds(lp), rk = count_kinds(rp);
    for (int k = 1; k <= EK_PROFILE_TRANSPORT; k++)
        if (k != EK_PROFILE_TRANSPORT && k != EK_PROFILE_TRANSFER_FROM_INPUT && k != EK_PROFILE_TRANSFER_TO_OUTPUT &&
            lk.n[k] != rk.n[k]) {
            printf("    %s: %d remote, %d local\n", ek_profile_kind_name((ek_profile_kind_t)k), rk.n[k], lk.n[k]);
            CHECK(lk.n[k] == rk.n[k]);
        }
    CHECK(lk.n[EK_PROFILE_TRANSPORT] == 0 && rk.n[EK_PROFILE_TRANSPORT] == 8);
    CHECK(rk.n[EK_PROFILE_WAIT] == 4 && rk.n[EK_PROFILE_MODEL_EXECUTE] == 4 && rk.n[EK_PROFILE_LAYER_EXECUTE] == 8);
    CHECK(rk.n[EK_PROFILE_MODEL_INIT] == 2); /* once per model (not per network), as locally */

    /* per launch: the transport around the board's records, on this host's clock */
    size_t count = 0;
    CHECK_OK(ek_profile_count(rp, &count));
    for (uint64_t launch = 1; launch <= 4; launch++) {
        ek_profile_record_t req, rep, r;
        memset(&req, 0, sizeof req);
        memset(&rep, 0, sizeof rep);
        int have_req = 0, have_rep = 0, board = 0, layers = 0;
        uint64_t board_first = UINT64_MAX, board_last = 0;
        const char *board_net = "";
        for (size_t i = 0; i < count; i++) {
            if (!CHECK_OK(ek_profile_get(rp, i, &r)) || r.launch != launch)
                continue;
            if (r.kind == EK_PROFILE_TRANSPORT && strcmp(r.name, "request") == 0) {
                req = r;
                have_req++;
            } else if (r.kind == EK_PROFILE_TRANSPORT && strcmp(r.name, "reply") == 0) {
                rep = r;
                have_rep++;
            } else {
                board++;
                layers += r.kind == EK_PROFILE_LAYER_EXECUTE;
                if (r.start_ns < board_first)
                    board_first = r.start_ns;
                if (r.start_ns + r.duration_ns > board_last)
                    board_last = r.start_ns + r.duration_ns;
                CHECK(strcmp(r.network, launch < 3 ? "net_a" : launch == 3 ? "net_c" : "net_b") == 0);
                board_net = r.network;
            }
        }
        CHECK(have_req == 1 && have_rep == 1 && board >= 4 && layers == 2);
        if (have_req != 1 || have_rep != 1 || board == 0)
            continue;
        CHECK(strcmp(req.network, rep.network) == 0 && strcmp(req.network, board_net) == 0);
        CHECK(req.bytes > 0 && rep.bytes > 0);
        /* the request goes first, the board's work (Wait, RequestInit, ModelExecute, LayerExecute) after it,
         * the reply comes back last */
        CHECK(req.start_ns + req.duration_ns <= board_first);
        CHECK(board_last <= rep.start_ns);
        CHECK(rep.start_ns + rep.duration_ns >= board_last);
        if (launch == 4)
            CHECK(req.start_ns >= t_before && rep.start_ns + rep.duration_ns <= t_after);
        for (size_t i = 0; i < count; i++)
            if (ek_profile_get(rp, i, &r) == EK_OK && r.launch == launch)
                CHECK(r.start_ns + r.duration_ns <= rep.start_ns + rep.duration_ns);
    }
    /* the same layers, by name and type, as the local run */
    size_t lcount = 0;
    CHECK_OK(ek_profile_count(lp, &lcount));
    for (size_t i = 0, j = 0; i < count; i++) {
        ek_profile_record_t r, q;
        if (ek_profile_get(rp, i, &r) != EK_OK || r.kind != EK_PROFILE_LAYER_EXECUTE)
            continue;
        while (j < lcount && ek_profile_get(lp, j, &q) == EK_OK && q.kind != EK_PROFILE_LAYER_EXECUTE)
            j++;
        CHECK(j < lcount);
        if (j >= lcount)
            break;
        CHECK(strcmp(r.name, q.name) == 0 && strcmp(r.op_type, q.op_type) == 0 && strcmp(r.shapes, q.shapes) == 0 &&
              r.flops == q.flops && r.op_index == q.op_index);
        j++;
    }
    char dir[256];
    int made = make_temp_dir(dir, sizeof dir);
    CHECK(made);
    if (made) {
        CHECK_OK(ek_profile_write(rp, dir));
        struct names names;
        CHECK(list_dir(dir, &names) && names.count == 2);
        remove_dir(dir);
    }
    CHECK_OK(ek_profile_destroy(lp));
    CHECK_OK(ek_profile_destroy(rp));
    CHECK_OK(ek_rt_destroy(rrt));
    CHECK_OK(ek_rt_destroy(lrt));
    CHECK_OK(ekt_close(dev));
    CHECK_OK(ekt_close(local));
}

/* ---- dumps ---- */

/* The two dump directories hold the same files with the same bytes. */
static void check_same_dump(const char *a, const char *b)
{
    struct names na, nb;
    CHECK(list_dir(a, &na) && list_dir(b, &nb));
    CHECK(na.count == nb.count && na.count >= 4);
    int manifest = 0;
    for (int i = 0; i < na.count && i < nb.count; i++) {
        CHECK(strcmp(na.name[i], nb.name[i]) == 0);
        CHECK(strstr(na.name[i], ".part") == NULL && strstr(na.name[i], ".tmp") == NULL);
        manifest += strcmp(na.name[i], "manifest.json") == 0;
        char pa[600], pb[600];
        snprintf(pa, sizeof pa, "%s/%s", a, na.name[i]);
        snprintf(pb, sizeof pb, "%s/%s", b, nb.name[i]);
        size_t sa = 0, sb = 0;
        uint8_t *da = read_file(pa, &sa), *db = read_file(pb, &sb);
        CHECK(da && db && sa == sb && sa > 0 && memcmp(da, db, sa) == 0);
        free(da);
        free(db);
    }
    CHECK(manifest == 1);
}

static void test_dump(void)
{
    ek_dev_t local, dev;
    if (!open_pair(&local, &dev))
        return;
    ek_rt_t lrt, rrt;
    if (!make_rt(local, &lrt)) {
        ekt_close(dev);
        ekt_close(local);
        return;
    }
    if (!make_rt(dev, &rrt)) {
        ek_rt_destroy(lrt);
        ekt_close(dev);
        ekt_close(local);
        return;
    }
    char base[256], ld[300], rd[300], ld2[300], rd2[300];
    REQUIRE(make_temp_dir(base, sizeof base));
    snprintf(ld, sizeof ld, "%s/local", base);
    snprintf(rd, sizeof rd, "%s/remote", base); /* made by the launch */
    snprintf(ld2, sizeof ld2, "%s/local2", base);
    snprintf(rd2, sizeof rd2, "%s/remote2", base);
    ek_launch_options_t lo, ro;
    memset(&lo, 0, sizeof lo);
    memset(&ro, 0, sizeof ro);
    lo.dump_dir = ld;
    ro.dump_dir = rd;
    /* LAUNCH: the files come before the completion */
    ek_tensor_t x = input_a(dev, 2, 3), y, lx = input_a(local, 2, 3), ly;
    ek_launch_t l, ll;
    if (CHECK_OK(ek_rt_launch_tensor(rrt, "net_a", &x, 1, &y, 1, false, &ro, &l))) {
        CHECK_OK(ek_launch_wait(l, -1));
        CHECK_OK(ek_free_device(dev, y.mem));
    }
    if (CHECK_OK(ek_rt_launch_tensor(lrt, "net_a", &lx, 1, &ly, 1, false, &lo, &ll))) {
        CHECK_OK(ek_launch_wait(ll, -1));
        CHECK_OK(ek_free_device(local, ly.mem));
    }
    check_same_dump(ld, rd);
    CHECK_OK(ek_free_device(dev, x.mem));
    CHECK_OK(ek_free_device(local, lx.mem));
    /* RUN (ek_rt_launch_data) */
    lo.dump_dir = ld2;
    ro.dump_dir = rd2;
    float a[6] = {1, -2, 3, -4, 5, -6}, yr[6], yl[6];
    const void *ins[2] = {a, a};
    void *ro_[1] = {yr}, *lo_[1] = {yl};
    ek_shape_t s[2] = {shape2(2, 3), shape2(2, 3)}, os;
    size_t cap = sizeof yr;
    CHECK_OK(ek_rt_launch_data(rrt, "net_b", ins, s, 2, ro_, &cap, &os, 1, &ro));
    CHECK_OK(ek_rt_launch_data(lrt, "net_b", ins, s, 2, lo_, &cap, &os, 1, &lo));
    check_same_dump(ld2, rd2);
    /* an unwritable dump directory fails before anything goes to the board */
    char file[320];
    snprintf(file, sizeof file, "%s/a-file", base);
    CHECK(write_file(file, "x", 1));
    ro.dump_dir = file;
    CHECK_STATUS(ek_rt_launch_data(rrt, "net_b", ins, s, 2, ro_, &cap, &os, 1, &ro), EK_ERR_SYSTEM);
    CHECK_ERROR_MENTIONS("a-file");
    unlink(file);
    remove_dir(ld);
    remove_dir(rd);
    remove_dir(ld2);
    remove_dir(rd2);
    rmdir(base);
    CHECK_OK(ek_rt_destroy(rrt));
    CHECK_OK(ek_rt_destroy(lrt));
    CHECK_OK(ekt_close(dev));
    CHECK_OK(ekt_close(local));
}

/* ---- pairing ---- */

static void test_pairing(void)
{
    if (!sodium_ok)
        SKIP(sodium_why);
    char dir[256], key[300], other[300], open_key[300];
    REQUIRE(make_temp_dir(dir, sizeof dir));
    snprintf(key, sizeof key, "%s/board.key", dir);
    snprintf(other, sizeof other, "%s/other.key", dir);
    snprintf(open_key, sizeof open_key, "%s/open.key", dir);
    CHECK_OK(ek_remote_make_key(key));
    CHECK_OK(ek_remote_make_key(other));
    struct stat st;
    CHECK(stat(key, &st) == 0 && (st.st_mode & 0777) == 0600 && st.st_size == 65);
    CHECK_STATUS(ek_remote_make_key(key), EK_ERR_SYSTEM); /* never over an existing key */
    CHECK_STATUS(ek_remote_make_key(NULL), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_remote_make_key(""), EK_ERR_INVALID_ARG);
    /* a key others may read is refused */
    size_t size = 0;
    uint8_t *text = read_file(key, &size);
    CHECK(text && write_file(open_key, text, size) && chmod(open_key, 0644) == 0);
    free(text);

    struct server paired;
    ek_server_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.key_file = key;
    if (server_start(&paired, &cfg)) {
        ek_dev_t dev;
        if (CHECK_OK(connect_to(&dev, paired.url, key))) {
            /* a sealed session: bulk data both ways, and a run */
            const size_t n = BIG_BYTES;
            uint8_t *src = malloc(n), *got = malloc(n);
            ek_mem_t m;
            CHECK(src && got);
            if (src && got && CHECK_OK(ek_malloc_device(dev, &m, n))) {
                ekt_fill(src, n, 9);
                CHECK_OK(ek_memcpy_s2d(dev, m, src));
                memset(got, 0, n);
                CHECK_OK(ek_memcpy_d2s(dev, got, m));
                CHECK(memcmp(src, got, n) == 0);
                CHECK_OK(ek_memcpy_d2s_partial_offset(dev, got, m, 5, 4 * MIB - 2));
                CHECK(memcmp(got, src + 4 * MIB - 2, 5) == 0);
                CHECK_OK(ek_free_device(dev, m));
            }
            free(src);
            free(got);
            ek_rt_t rt;
            if (make_rt(dev, &rt)) {
                float x[8], y[8];
                fill_a(x, 8, 2);
                const void *ins[1] = {x};
                void *outs[1] = {y};
                ek_shape_t s = shape2(1, 8), os;
                size_t cap = sizeof y;
                CHECK_OK(ek_rt_launch_data(rt, "net_a", ins, &s, 1, outs, &cap, &os, 1, NULL));
                for (int i = 0; i < 8; i++)
                    CHECK(y[i] == expect_a(x[i], i));
                CHECK_OK(ek_rt_destroy(rt));
            }
            CHECK_OK(ekt_close(dev));
        }
        CHECK(server_logged(&paired, "paired"));
        ek_dev_t nope = {0};
        CHECK_STATUS(connect_to(&nope, paired.url, NULL), EK_ERR_CONNECTION);
        CHECK_ERROR_MENTIONS("requires a pairing key");
        CHECK_STATUS(connect_to(&nope, paired.url, other), EK_ERR_CONNECTION);
        CHECK_ERROR_MENTIONS("authentication failed");
        CHECK_STATUS(connect_to(&nope, paired.url, open_key), EK_ERR_SYSTEM);
        CHECK_ERROR_MENTIONS("chmod 600");
        snprintf(other, sizeof other, "%s/missing.key", dir);
        CHECK_STATUS(connect_to(&nope, paired.url, other), EK_ERR_SYSTEM);
        CHECK_ERROR_MENTIONS("missing.key");
        CHECK(nope.id == 0);
        /* and the server serves paired clients after all those */
        if (CHECK_OK(connect_to(&nope, paired.url, key)))
            CHECK_OK(ekt_close(nope));
        server_finish(&paired);
    }
    /* a key for a server that has none */
    ek_dev_t nope;
    CHECK_STATUS(connect_to(&nope, main_srv.url, key), EK_ERR_CONNECTION);
    CHECK_ERROR_MENTIONS("has no pairing key");
    /* beyond loopback only with a key */
    ek_server_t *srv = NULL;
    memset(&cfg, 0, sizeof cfg);
    cfg.host = "0.0.0.0";
    CHECK_STATUS(ek_server_create(&srv, &cfg), EK_ERR_UNSUPPORTED);
    CHECK_ERROR_MENTIONS("not a loopback address");
    CHECK(srv == NULL);
    cfg.key_file = open_key;
    CHECK_STATUS(ek_server_create(&srv, &cfg), EK_ERR_SYSTEM);
    unlink(key);
    unlink(open_key);
    snprintf(other, sizeof other, "%s/other.key", dir);
    unlink(other);
    rmdir(dir);
}

/* ---- lifetimes ---- */

/* A runtime keeps the connection after its device handle closes, until it is destroyed. */
static void test_runtime_outlives_device(void)
{
    int local_port = 0;
    int fd = dial(main_srv.port, &local_port);
    REQUIRE(fd >= 0);
    char label[64], ended[80];
    snprintf(label, sizeof label, "test %d", local_port);
    snprintf(ended, sizeof ended, "(127.0.0.1:%d) ended", local_port);
    ek_remote_options_t o = remote_options(NULL);
    ek_dev_t dev;
    REQUIRE_OK(ek_dev_connect_fd(&dev, fd, label, remote_id, &o));
    ekt_track(dev);
    ek_remote_info_t info;
    CHECK_OK(ek_dev_remote_info(dev, &info));
    CHECK(strcmp(info.url, label) == 0);
    ek_rt_t rt;
    if (!make_rt(dev, &rt))
        return;
    CHECK_OK(ekt_close(dev));
    CHECK_STATUS(ek_dev_free(dev), EK_ERR_DOUBLE_FREE);
    ek_mem_t m;
    CHECK_STATUS(ek_malloc_device(dev, &m, 16), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_dev_sync(dev), EK_ERR_FREED_HANDLE);
    /* the runtime works on: a small run, and a large one staged through board memory */
    float x[8], y[8];
    fill_a(x, 8, 5);
    const void *ins[1] = {x};
    void *outs[1] = {y};
    ek_shape_t s = shape2(1, 8), os;
    size_t cap = sizeof y;
    CHECK_OK(ek_rt_launch_data(rt, "net_a", ins, &s, 1, outs, &cap, &os, 1, NULL));
    CHECK(y[2] == expect_a(x[2], 2));
    size_t n = (size_t)BIG_N;
    float *bx = calloc(n, 4), *by = malloc(n * 4);
    CHECK(bx && by);
    if (bx && by) {
        bx[7] = 1.5f;
        const void *bins[1] = {bx};
        void *bouts[1] = {by};
        ek_shape_t bs = shape1(BIG_N);
        size_t bcap = n * 4;
        CHECK_OK(ek_rt_launch_data(rt, "big", bins, &bs, 1, bouts, &bcap, &os, 1, NULL));
        CHECK(by[7] == 3.0f && by[8] == 0.0f);
    }
    free(bx);
    free(by);
    sleep_ms(50);
    CHECK(!server_logged(&main_srv, ended)); /* the session is still open */
    CHECK_OK(ek_rt_destroy(rt));
    CHECK(server_await(&main_srv, ended, 5000)); /* and now it closed */
}

/* EK_MAX_REMOTE_DEVICES connections at once, and no more; closing some makes room. */
static void test_many_devices(void)
{
    enum { N = 70 };
    static ek_dev_t devs[N];
    int open = 0;
    for (int i = 0; i < N; i++) {
        ek_remote_options_t o = remote_options(NULL);
        devs[i].id = 0;
        ek_status_t s = ek_dev_connect(&devs[i], main_srv.url, remote_id, &o);
        if (i < EK_MAX_REMOTE_DEVICES) {
            open += CHECK_OK(s);
        } else {
            CHECK_STATUS(s, EK_ERR_BUSY);
            CHECK_ERROR_MENTIONS("EK_MAX_REMOTE_DEVICES");
            CHECK_ERROR_MENTIONS("64 remote devices open");
            CHECK(devs[i].id == 0);
        }
    }
    if (open == EK_MAX_REMOTE_DEVICES) {
        /* every one of them works */
        ek_heap_stats_t st;
        for (int i = 0; i < EK_MAX_REMOTE_DEVICES; i += 9)
            CHECK_OK(ek_dev_heap_stats(devs[i], &st));
        /* close five; five more connect; the next does not */
        for (int i = 0; i < 5; i++)
            CHECK_OK(ek_dev_free(devs[i * 7]));
        for (int i = 0; i < 5; i++)
            CHECK_OK(ek_dev_connect(&devs[i * 7], main_srv.url, remote_id, NULL));
        ek_dev_t extra = {0};
        CHECK_STATUS(ek_dev_connect(&extra, main_srv.url, remote_id, NULL), EK_ERR_BUSY);
        ek_mem_t m;
        CHECK_OK(ek_malloc_device(devs[7], &m, 100));
        CHECK_OK(ek_free_device(devs[7], m));
    }
    for (int i = 0; i < EK_MAX_REMOTE_DEVICES; i++)
        if (devs[i].id)
            CHECK_OK(ek_dev_free(devs[i]));
    /* all slots free again */
    ek_dev_t again;
    if (CHECK_OK(rconnect(&again)))
        CHECK_OK(ekt_close(again));
}

/* Stopping the server ends its sessions: clients see EK_ERR_CONNECTION at once, never a hang. */
static void test_server_stop(void)
{
    struct server s;
    ek_server_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.launch_timeout_ms = SLOW_MS / 2;
    if (!server_start(&s, &cfg))
        return;
    ek_dev_t idle, busy;
    if (!CHECK_OK(connect_to(&idle, s.url, NULL)) || !CHECK_OK(connect_to(&busy, s.url, NULL))) {
        server_finish(&s);
        return;
    }
    ek_rt_t rt;
    if (!make_slow_rt(busy, &rt, SLOW_MS)) {
        server_finish(&s);
        return;
    }
    /* a launch longer than the server's --launch-timeout is reported as a timeout */
    ek_tensor_t x = input_a(busy, 1, 0), y, y2;
    ek_launch_t l, l2;
    if (CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x, 1, &y, 1, false, NULL, &l))) {
        CHECK_STATUS(ek_launch_wait(l, -1), EK_ERR_TIMEOUT);
        CHECK_ERROR_MENTIONS("--launch-timeout");
    }
    /* two more in flight as the server stops, one without a handle (ek_dev_sync's to report) */
    int in_flight = CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x, 1, &y2, 1, false, NULL, &l2));
    ek_tensor_t y3;
    CHECK_OK(ek_rt_launch_tensor(rt, "net_a", &x, 1, &y3, 1, false, NULL, NULL));
    uint64_t t0 = now_ms();
    ek_server_stop(s.srv);
    pthread_join(s.thread, NULL);
    s.running = 0;
    CHECK(s.run_status == EK_OK);
    CHECK(now_ms() - t0 < 5000);
    CHECK(server_logged(&s, "stopped"));
    if (in_flight) {
        CHECK_STATUS(ek_launch_wait(l2, 10000), EK_ERR_CONNECTION);
        CHECK_ERROR_MENTIONS("outcome on the board is unknown");
    }
    ek_heap_stats_t st;
    CHECK_STATUS(ek_dev_heap_stats(idle, &st), EK_ERR_CONNECTION);
    CHECK_ERROR_MENTIONS("remote_server");
    ek_mem_t m;
    CHECK_STATUS(ek_malloc_device(idle, &m, 64), EK_ERR_CONNECTION);
    CHECK_STATUS(ek_memcpy_d2s_partial(busy, &st, x.mem, 4), EK_ERR_CONNECTION);
    CHECK_STATUS(ek_dev_sync(busy), EK_ERR_CONNECTION);
    CHECK_ERROR_MENTIONS("remote_server");
    float in[8] = {0}, out[8];
    const void *ins[1] = {in};
    void *outs[1] = {out};
    ek_shape_t shape = shape2(1, 8), os;
    size_t cap = sizeof out;
    CHECK_STATUS(ek_rt_launch_data(rt, "net_a", ins, &shape, 1, outs, &cap, &os, 1, NULL), EK_ERR_CONNECTION);
    /* what the host holds can still be let go (the board freed it with the session) */
    CHECK_OK(ek_free_device(busy, x.mem));
    CHECK_STATUS(ek_free_device(busy, x.mem), EK_ERR_DOUBLE_FREE);
    CHECK_OK(ek_rt_destroy(rt));
    CHECK_OK(ekt_close(idle));
    CHECK_OK(ekt_close(busy));
    char url[64];
    snprintf(url, sizeof url, "%s", s.url);
    server_finish(&s);
    ek_dev_t gone;
    CHECK_STATUS(connect_to(&gone, url, NULL), EK_ERR_CONNECTION);
    CHECK_ERROR_MENTIONS("remote_server");
}

/* ---- bad arguments ---- */

/* Whether the pipe whose write end is `write_fd` has lost its read end (closed by the call under test).
 * Asked of the write end, which the test owns: the read end's number may already be another thread's
 * new file, so fcntl on it would not tell. */
static int read_end_closed(int write_fd)
{
    struct pollfd pf = {write_fd, POLLOUT, 0};
    return poll(&pf, 1, 0) == 1 && (pf.revents & POLLERR) != 0;
}

static void test_bad_arguments(void)
{
    ek_dev_t dev = {77};
    ek_remote_options_t o = remote_options(NULL);
    CHECK_STATUS(ek_dev_connect(NULL, main_srv.url, 0, &o), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_dev_connect(&dev, NULL, 0, &o), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_dev_connect(&dev, "http://x", 0, &o), EK_ERR_INVALID_ARG);
    CHECK(dev.id == 0);
    CHECK_ERROR_MENTIONS("is not a remote device URL: expected tcp://HOST[:PORT]");
    CHECK_STATUS(ek_dev_connect(&dev, "tcp://", 0, &o), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("names no host");
    CHECK_STATUS(ek_dev_connect(&dev, "tcp://host:99999", 0, &o), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("the port must be a number from 1 to 65535");
    CHECK_STATUS(ek_dev_connect(&dev, "tcp://host:0", 0, &o), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_dev_connect(&dev, "tcp://host:80x", 0, &o), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_dev_connect(&dev, "tcp://[::1", 0, &o), EK_ERR_INVALID_ARG);
    CHECK_STATUS(ek_dev_connect(&dev, "ssh://root@x", 0, &o), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("the C API connects to tcp:// URLs only");
    CHECK_ERROR_MENTIONS("-L 9090:127.0.0.1:9090 root@x");
    CHECK_ERROR_MENTIONS("then tcp://127.0.0.1:9090");
    CHECK(dev.id == 0);
    o.connect_timeout_ms = -1;
    CHECK_STATUS(ek_dev_connect(&dev, main_srv.url, 0, &o), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("must not be negative");
    o.connect_timeout_ms = 0;
    /* nothing listens there */
    int port = closed_port();
    REQUIRE(port > 0);
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
    CHECK_STATUS(ek_dev_connect(&dev, url, 0, &o), EK_ERR_CONNECTION);
    CHECK_ERROR_MENTIONS("is remote_server running there?");

    /* ek_dev_connect_fd: not a socket (the call closes it all the same) */
    int p[2];
    REQUIRE(pipe(p) == 0);
    CHECK_STATUS(ek_dev_connect_fd(&dev, p[0], NULL, 0, &o), EK_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("is not a connected socket");
    CHECK(read_end_closed(p[1]));
    close(p[1]);
    CHECK_STATUS(ek_dev_connect_fd(&dev, -1, NULL, 0, &o), EK_ERR_INVALID_ARG);
    REQUIRE(pipe(p) == 0);
    CHECK_STATUS(ek_dev_connect_fd(NULL, p[0], NULL, 0, &o), EK_ERR_INVALID_ARG);
    CHECK(read_end_closed(p[1]));
    close(p[1]);
    /* a peer that does not answer; one that hangs up; one that speaks SSH */
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    o.connect_timeout_ms = 200;
    uint64_t t0 = now_ms();
    CHECK_STATUS(ek_dev_connect_fd(&dev, sv[0], "silent peer", 0, &o), EK_ERR_CONNECTION);
    CHECK_ERROR_MENTIONS("silent peer");
    CHECK_ERROR_MENTIONS("is that port a remote_server?");
    CHECK(now_ms() - t0 < 5000);
    close(sv[1]);
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    close(sv[1]);
    CHECK_STATUS(ek_dev_connect_fd(&dev, sv[0], NULL, 0, &o), EK_ERR_CONNECTION);
    CHECK_ERROR_MENTIONS("fd ");
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    const char ssh[] = "SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n";
    CHECK(write(sv[1], ssh, sizeof ssh - 1) == (ssize_t)(sizeof ssh - 1));
    CHECK_STATUS(ek_dev_connect_fd(&dev, sv[0], "board:22", 0, &o), EK_ERR_CONNECTION);
    CHECK_ERROR_MENTIONS("speaks SSH, not the EdgeKit remote protocol");
    close(sv[1]);
    CHECK(dev.id == 0);

    /* the server's own arguments */
    static char not_a_server;
    ek_server_t *srv = (ek_server_t *)(void *)&not_a_server;
    ek_server_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    CHECK_STATUS(ek_server_create(NULL, &cfg), EK_ERR_INVALID_ARG);
    cfg.port = 70000;
    CHECK_STATUS(ek_server_create(&srv, &cfg), EK_ERR_INVALID_ARG);
    CHECK(srv == NULL);
    cfg.port = main_srv.port;
    CHECK_STATUS(ek_server_create(&srv, &cfg), EK_ERR_SYSTEM);
    CHECK_ERROR_MENTIONS("another remote_server");
    cfg.port = 0;
    cfg.idle_timeout_ms = -5;
    CHECK_STATUS(ek_server_create(&srv, &cfg), EK_ERR_INVALID_ARG);
    CHECK(ek_server_port(NULL) == -1);
    CHECK_STATUS(ek_server_run(NULL), EK_ERR_INVALID_ARG);
    ek_server_stop(NULL);
    ek_server_destroy(NULL);
    /* remote handles of a closed device */
    ek_dev_t closed;
    REQUIRE_OK(rconnect(&closed));
    ek_mem_t m;
    REQUIRE_OK(ek_malloc_device(closed, &m, 10));
    CHECK_OK(ekt_close(closed));
    CHECK_STATUS(ek_mem_size(m, &(size_t){0}), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_free_device(closed, m), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_dev_free(closed), EK_ERR_DOUBLE_FREE);
}

int main(void)
{
    ekt_init();
    int devices = 1;
    ek_dev_count(&devices);
    remote_id = devices - 1;
    void *sodium = dlopen("libsodium.so.23", RTLD_NOW | RTLD_LOCAL);
    sodium_ok = sodium != NULL;
    if (!sodium_ok)
        snprintf(sodium_why, sizeof sodium_why, "libsodium.so.23 cannot be loaded (%s): paired sessions need it "
                 "(apt install libsodium23)", dlerror());
    model_bytes = build_model(&model_size);
    model2_bytes = build_model2(&model2_size);
    if (!model_bytes || !model2_bytes) {
        printf("cannot build the test model\n0 passed, 1 failed\n");
        return 1;
    }
    pthread_t watchdog;
    pthread_create(&watchdog, NULL, watchdog_main, NULL);
    pthread_detach(watchdog);
    ek_server_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.max_sessions = 2 * EK_MAX_REMOTE_DEVICES; /* so this process's limit is the one the tests reach */
    if (!server_start(&main_srv, &cfg)) {
        printf("cannot start the remote server\n0 passed, 1 failed\n");
        return 1;
    }
    RUN_WITHIN(test_connect_and_info, 20);
    RUN_WITHIN(test_memory_copies, 30);
    RUN_WITHIN(test_memory_errors, 20);
    RUN_WITHIN(test_heap_stats, 20);
    RUN_WITHIN(test_mmap, 20);
    RUN_WITHIN(test_runtime_load_and_info, 20);
    RUN_WITHIN(test_launch_data_matches_local, 30);
    RUN_WITHIN(test_launch_tensor, 20);
    RUN_WITHIN(test_wait_timeout, 20);
    RUN_WITHIN(test_callbacks, 20);
    RUN_WITHIN(test_sync_while_a_callback_locks_the_device, 20);
    RUN_WITHIN(test_exclusive_calls_among_busy_readers, 20);
    RUN_WITHIN(test_concurrent_syncs, 20);
    RUN_WITHIN(test_sync_reports_launch_errors, 20);
    RUN_WITHIN(test_profile, 20);
    RUN_WITHIN(test_dump, 20);
    RUN_WITHIN(test_pairing, 30);
    RUN_WITHIN(test_runtime_outlives_device, 30);
    RUN_WITHIN(test_many_devices, 60);
    RUN_WITHIN(test_server_stop, 30);
    RUN_WITHIN(test_bad_arguments, 30);
    atomic_store(&watchdog_test, "stopping the server");
    atomic_store(&watchdog_deadline, now_ms() + 30000u);
    server_finish(&main_srv);
    atomic_store(&watchdog_deadline, 0);
    free(model_bytes);
    free(model2_bytes);
    if (sodium)
        dlclose(sodium);
    return ek_test_summary();
}
