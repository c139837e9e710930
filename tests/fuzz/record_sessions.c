/* Seeds for the remote fuzz targets: real client sessions (libedgekit's remote client talking to
 * ek_server_serve_fd through a recording relay), written as the targets read them:
 *   OUT/remote_session/<name>: one byte (1: the paired server) and the bytes the client sent;
 *   OUT/remote_frames/<name>:  each frame the client sent as [u16 type][u32 length][payload].
 * Usage: record_sessions OUT MODEL.ekm... (tests/fuzz/seeds.py runs it with compiled seed models). */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "wire.h"

struct recording {
    uint8_t *data;
    size_t size, cap;
};

struct relay {
    int client_fd, server_fd;
    struct recording sent;
};

static void fail(const char *what) {
    fprintf(stderr, "record_sessions: %s: %s\n", what, ek_last_error());
    exit(1);
}

static void keep(struct recording *r, const uint8_t *data, size_t n) {
    if (r->size + n > r->cap) {
        r->cap = (r->size + n) * 2;
        r->data = realloc(r->data, r->cap);
        if (!r->data)
            fail("out of memory");
    }
    memcpy(r->data + r->size, data, n);
    r->size += n;
}

/* Copy both ways until either side closes, keeping what the client sent. */
static void *relay_main(void *arg) {
    struct relay *r = arg;
    uint8_t buf[65536];
    for (;;) {
        struct pollfd p[2] = {{r->client_fd, POLLIN, 0}, {r->server_fd, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[0].revents) {
            ssize_t k = recv(r->client_fd, buf, sizeof buf, 0);
            if (k <= 0)
                break;
            keep(&r->sent, buf, (size_t)k);
            if (send(r->server_fd, buf, (size_t)k, MSG_NOSIGNAL) != k)
                break;
        }
        if (p[1].revents) {
            ssize_t k = recv(r->server_fd, buf, sizeof buf, 0);
            if (k <= 0)
                break;
            if (send(r->client_fd, buf, (size_t)k, MSG_NOSIGNAL) != k)
                break;
        }
    }
    shutdown(r->server_fd, SHUT_RDWR);
    shutdown(r->client_fd, SHUT_RDWR);
    return NULL;
}

struct serving {
    ek_server_t *server;
    int fd;
};

static void *serve_main(void *arg) {
    struct serving *s = arg;
    ek_server_serve_fd(s->server, s->fd, "recorder");
    return NULL;
}

static void write_file(const char *dir, const char *sub, const char *name, const uint8_t *prefix, size_t pn,
                       const uint8_t *data, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/%s/%s", dir, sub, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(prefix, 1, pn, f) != pn || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "record_sessions: cannot write %s\n", path);
        exit(1);
    }
}

/* The stream as the frames target's records. */
static void write_frames(const char *dir, const char *name, const struct recording *r) {
    struct recording out = {0};
    size_t at = 0;
    while (r->size - at >= EK_WIRE_HEADER) {
        struct ek_wire_header h;
        if (ek_wire_decode_header(r->data + at, &h, "recorder") != EK_OK || h.length > r->size - at - EK_WIRE_HEADER)
            break;
        uint8_t head[6] = {(uint8_t)h.type, (uint8_t)(h.type >> 8), (uint8_t)h.length, (uint8_t)(h.length >> 8),
                           (uint8_t)(h.length >> 16), (uint8_t)(h.length >> 24)};
        keep(&out, head, sizeof head);
        keep(&out, r->data + at + EK_WIRE_HEADER, (size_t)h.length);
        at += EK_WIRE_HEADER + (size_t)h.length;
    }
    write_file(dir, "remote_frames", name, NULL, 0, out.data, out.size);
    free(out.data);
}

typedef void (*scenario_fn)(ek_dev_t dev, const uint8_t *model, size_t model_size);

static void memory_scenario(ek_dev_t dev, const uint8_t *model, size_t model_size) {
    (void)model;
    (void)model_size;
    ek_mem_t a = {0}, b = {0};
    uint8_t host[256];
    for (int i = 0; i < 256; i++)
        host[i] = (uint8_t)i;
    if (ek_malloc_device(dev, &a, 256) != EK_OK || ek_malloc_device(dev, &b, 256) != EK_OK)
        fail("malloc");
    ek_memcpy_s2d(dev, a, host);
    ek_memcpy_s2d_partial_offset(dev, a, host, 16, 32);
    ek_memcpy_d2d(dev, b, 8, a, 0, 64);
    ek_memcpy_d2s(dev, host, b);
    ek_memcpy_d2s_partial_offset(dev, host, b, 16, 100);
    ek_heap_stats_t stats;
    ek_dev_heap_stats(dev, &stats);
    ek_coh_violation_t violations[4];
    size_t count;
    ek_dev_coherence_report(dev, violations, 4, &count);
    ek_dev_coherence_clear(dev);
    ek_memcpy_s2d_partial_offset(dev, a, host, 64, 250); /* out of range: an error reply */
    ek_free_device(dev, b);
    ek_free_device(dev, b); /* a double free: an error reply */
    ek_dev_sync(dev);
    ek_free_device(dev, a);
}

static void model_scenario(ek_dev_t dev, const uint8_t *model, size_t model_size) {
    ek_rt_t rt;
    if (ek_rt_create(&rt, dev) != EK_OK)
        fail("ek_rt_create");
    if (ek_rt_load_model_data(rt, model, model_size) != EK_OK) {
        ek_rt_destroy(rt);
        return; /* a seed model the board cannot run: still a session worth keeping */
    }
    const char *name;
    const ek_net_info_t *net;
    if (ek_rt_network_name(rt, 0, &name) == EK_OK && ek_rt_network_info(rt, name, &net) == EK_OK &&
        net->input_count <= 8 && net->output_count <= 8) {
        void *in[8] = {0}, *out[8] = {0};
        size_t cap[8] = {0};
        ek_shape_t out_shapes[8];
        ek_tensor_t tin[8], tout[8];
        memset(tin, 0, sizeof tin);
        memset(tout, 0, sizeof tout);
        for (int i = 0; i < net->input_count; i++) {
            size_t n = net->inputs[i].max_bytes;
            in[i] = calloc(1, n ? n : 1);
            ek_malloc_device(dev, &tin[i].mem, n ? n : 1);
            tin[i].dtype = net->inputs[i].dtype;
            tin[i].shape = net->stages[0].input_shapes[i];
        }
        for (int i = 0; i < net->output_count; i++) {
            cap[i] = net->outputs[i].max_bytes;
            out[i] = calloc(1, cap[i] ? cap[i] : 1);
        }
        ek_rt_launch_data(rt, name, (const void *const *)in, net->stages[0].input_shapes, net->input_count, out,
                          cap, out_shapes, net->output_count, NULL);
        ek_launch_t launch;
        if (ek_rt_launch_tensor(rt, name, tin, net->input_count, tout, net->output_count, false, NULL, &launch) ==
            EK_OK) {
            ek_launch_wait(launch, 0);
            ek_launch_wait(launch, -1);
            for (int i = 0; i < net->output_count; i++)
                ek_free_device(dev, tout[i].mem);
        }
        ek_profile_t profile;
        if (ek_profile_create(&profile) == EK_OK) {
            ek_launch_options_t options = {.profile = profile};
            ek_rt_launch_data(rt, name, (const void *const *)in, net->stages[0].input_shapes, net->input_count,
                              out, cap, out_shapes, net->output_count, &options);
            ek_profile_destroy(profile);
        }
        ek_rt_launch_data(rt, "no such network", (const void *const *)in, net->stages[0].input_shapes,
                          net->input_count, out, cap, out_shapes, net->output_count, NULL);
        for (int i = 0; i < 8; i++) {
            free(in[i]);
            free(out[i]);
            if (i < net->input_count)
                ek_free_device(dev, tin[i].mem);
        }
    }
    ek_rt_destroy(rt);
}

static void record(const char *out_dir, const char *name, bool paired, const char *key_file, scenario_fn scenario,
                   const uint8_t *model, size_t model_size) {
    ek_server_config_t config = {.key_file = paired ? key_file : NULL};
    ek_server_t *server;
    if (ek_server_create(&server, &config) != EK_OK)
        fail("ek_server_create");
    int to_client[2], to_server[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, to_client) != 0 ||
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, to_server) != 0)
        fail("socketpair");
    struct relay relay = {.client_fd = to_client[1], .server_fd = to_server[1]};
    struct serving serving = {server, to_server[0]};
    pthread_t relay_thread, serve_thread;
    pthread_create(&serve_thread, NULL, serve_main, &serving);
    pthread_create(&relay_thread, NULL, relay_main, &relay);
    ek_remote_options_t options = {.key_file = paired ? key_file : NULL};
    ek_dev_t dev;
    if (ek_dev_connect_fd(&dev, to_client[0], "recorder", 0, &options) != EK_OK)
        fail("ek_dev_connect_fd");
    scenario(dev, model, model_size);
    ek_dev_free(dev);
    pthread_join(relay_thread, NULL);
    pthread_join(serve_thread, NULL);
    close(to_client[1]);
    close(to_server[1]);
    ek_server_destroy(server);
    uint8_t which = paired ? 1 : 0;
    write_file(out_dir, "remote_session", name, &which, 1, relay.sent.data, relay.sent.size);
    if (!paired)
        write_frames(out_dir, name, &relay.sent);
    free(relay.sent.data);
}

static uint8_t *read_all(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "record_sessions: cannot open %s\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *data = malloc(n > 0 ? (size_t)n : 1);
    if (!data || fread(data, 1, (size_t)n, f) != (size_t)n)
        fail("reading a model");
    fclose(f);
    *size = (size_t)n;
    return data;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: record_sessions OUT_DIR [MODEL.ekm...]\n");
        return 2;
    }
    const char *out = argv[1];
    mkdir(out, 0755);
    char key[] = "/tmp/edgekit-record-key-XXXXXX";
    int kfd = mkstemp(key);
    close(kfd);
    unlink(key);
    if (ek_remote_make_key(key) != EK_OK)
        fail("ek_remote_make_key");
    record(out, "memory", false, key, memory_scenario, NULL, 0);
    record(out, "memory-paired", true, key, memory_scenario, NULL, 0);
    for (int i = 2; i < argc; i++) {
        size_t size;
        uint8_t *model = read_all(argv[i], &size);
        const char *base = strrchr(argv[i], '/');
        base = base ? base + 1 : argv[i];
        char name[256];
        snprintf(name, sizeof name, "model-%.200s", base);
        record(out, name, false, key, model_scenario, model, size);
        free(model);
    }
    unlink(key);
    return 0;
}
