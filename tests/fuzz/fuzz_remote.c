/* libFuzzer targets of the remote server (src/remote_server.c), each input one whole session served by
 * ek_server_serve_fd on one end of a socket pair while a thread of this program plays the client:
 *
 *   remote_session (FUZZ_REMOTE_SESSION): the input's first byte picks the server (bit 0: the paired one,
 *     whose sessions start with PAIR and are sealed), the rest is the byte stream the client sends;
 *   remote_frames: the input is a list of frames, each [u16 type][u32 length][payload], sent with
 *     well-formed headers (magic, version, a request id each), so the fuzzer works on the requests'
 *     contents and order rather than on the framing.
 *
 * The client sends everything, then closes its sending side and reads every reply until the server
 * closes; a session must end without a crash, a leak or a hang, whatever it was sent. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "wire.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static ek_server_t *plain_server;
#ifdef FUZZ_REMOTE_SESSION
static ek_server_t *paired_server;
#endif

/* The client thread, one exchange per input. */
static struct {
    pthread_t thread;
    sem_t go, done, session_over;
    int fd;
    const uint8_t *data;
    size_t size;
} client;

static void die(const char *what) {
    fprintf(stderr, "fuzz_remote: %s: %s (%s)\n", what, ek_last_error(), strerror(errno));
    exit(1);
}

/* Read whatever the server has sent so far; false once it has closed. */
static bool drain(int fd) {
    uint8_t sink[65536];
    for (;;) {
        ssize_t k = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
        if (k > 0)
            continue;
        return k < 0 && (errno == EAGAIN || errno == EINTR);
    }
}

/* Send all of data, then shut the sending side, while reading what comes back. Replies are read every
 * millisecond rather than as each arrives: a wake-up per reply would cost more than the session. */
static void exchange(int fd, const uint8_t *data, size_t size) {
    size_t sent = 0;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    while (sent < size) {
        ssize_t k = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
        if (k > 0) {
            sent += (size_t)k;
            continue;
        }
        if (k < 0 && errno != EAGAIN && errno != EINTR)
            break; /* the server hung up: stop sending, read what it said */
        if (!drain(fd))
            return;
        struct pollfd p = {fd, POLLOUT, 0};
        poll(&p, 1, 1);
    }
    shutdown(fd, SHUT_WR);
    for (;;) {
        if (!drain(fd))
            return;
        struct timespec at;
        clock_gettime(CLOCK_REALTIME, &at);
        at.tv_nsec += 1000000;
        if (at.tv_nsec >= 1000000000) {
            at.tv_sec++;
            at.tv_nsec -= 1000000000;
        }
        if (sem_timedwait(&client.session_over, &at) == 0)
            return;
    }
}

static void *client_main(void *arg) {
    (void)arg;
    for (;;) {
        while (sem_wait(&client.go) != 0)
            continue;
        exchange(client.fd, client.data, client.size);
        close(client.fd);
        sem_post(&client.done);
    }
    return NULL;
}

static void quiet(void *user, const char *line) {
    (void)user;
    (void)line;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    /* Small devices, so that what a fuzzed request may allocate stays small; the portable kernels (the
     * XNNPACK library is not instrumented); launches on one thread (a team's threads are TSan's part). */
    setenv("EDGEKIT_HEAP_SIZE", "64M", 1);
    setenv("EDGEKIT_THREADS", "1", 1);
    setenv("EDGEKIT_KERNELS", "portable", 1);
    setenv("EDGEKIT_DEVICES", "2", 1);
    /* Held open for the whole run, so a session's DEV_OPEN takes a handle rather than making a heap. */
    ek_dev_t held[2];
    for (int id = 0; id < 2; id++)
        if (ek_dev_request(&held[id], id) != EK_OK)
            die("ek_dev_request");
    ek_server_config_t config = {.idle_timeout_ms = 10000, .launch_timeout_ms = 10000,
                                 .max_model_bytes = 1u << 20, .log = quiet};
    if (ek_server_create(&plain_server, &config) != EK_OK)
        die("ek_server_create");
#ifdef FUZZ_REMOTE_SESSION
    char key[] = "/tmp/edgekit-fuzz-key-XXXXXX";
    int kfd = mkstemp(key);
    if (kfd < 0)
        die("mkstemp");
    close(kfd);
    unlink(key);
    if (ek_remote_make_key(key) != EK_OK)
        die("ek_remote_make_key");
    config.key_file = key;
    ek_status_t status = ek_server_create(&paired_server, &config);
    unlink(key);
    if (status != EK_OK)
        die("ek_server_create (paired)");
#endif
    if (sem_init(&client.go, 0, 0) != 0 || sem_init(&client.done, 0, 0) != 0 ||
        sem_init(&client.session_over, 0, 0) != 0 ||
        pthread_create(&client.thread, NULL, client_main, NULL) != 0)
        die("the client thread");
    return 0;
}

static void serve(ek_server_t *server, const uint8_t *stream, size_t size) {
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
        die("socketpair");
    /* Room for a session's replies (up to 1 MiB, as far as net.core.wmem_max allows), so the server
     * seldom waits for the client to read. */
    int room = 1 << 20;
    setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &room, sizeof room);
    setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &room, sizeof room);
    client.fd = fds[1];
    client.data = stream;
    client.size = size;
    sem_post(&client.go);
    ek_server_serve_fd(server, fds[0], "fuzz");
    sem_post(&client.session_over);
    while (sem_wait(&client.done) != 0)
        continue;
    while (sem_trywait(&client.session_over) == 0) /* not taken when the server closed first */
        continue;
}

#ifdef FUZZ_REMOTE_SESSION
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0)
        return 0;
    serve(data[0] & 1 ? paired_server : plain_server, data + 1, size - 1);
    return 0;
}
#else
/* The frames of the input, each with a well-formed header. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *stream = malloc(size / 6 * EK_WIRE_HEADER + size + 1);
    if (!stream)
        return 0;
    size_t at = 0, n = 0;
    uint64_t request = 1;
    while (size - at >= 6) {
        uint16_t type = (uint16_t)(data[at] | data[at + 1] << 8);
        uint32_t length = (uint32_t)data[at + 2] | (uint32_t)data[at + 3] << 8 | (uint32_t)data[at + 4] << 16 |
                          (uint32_t)data[at + 5] << 24;
        at += 6;
        if (length > size - at)
            length = (uint32_t)(size - at);
        ek_wire_encode_header(stream + n, type, request++, length);
        memcpy(stream + n + EK_WIRE_HEADER, data + at, length);
        n += EK_WIRE_HEADER + length;
        at += length;
    }
    serve(plain_server, stream, n);
    free(stream);
    return 0;
}
#endif
