/* EdgeKit runtime: remote devices and the remote server (docs/remote-protocol.md).
 *
 * A remote device is an ordinary ek_dev_t whose memory, copies, runtimes, model loads and launches run
 * on a board's remote_server: every call of device.h, memory.h and runtime.h takes it, and reports the
 * board's own status and message. ek_mem_mmap of remote memory gives a host-side copy that behaves like
 * strict coherence: ek_mem_flush* sends what the CPU wrote, ek_mem_invalidate* fetches what the device
 * wrote. A remote device's handle is its own connection (and server session); closing it, or losing the
 * connection, frees everything the session made on the board. */
#ifndef EDGEKIT_REMOTE_H
#define EDGEKIT_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "edgekit/device.h"
#include "edgekit/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The protocol version this library speaks (docs/remote-protocol.md). */
#define EK_REMOTE_PROTOCOL 1
/* The default port of remote_server. */
#define EK_REMOTE_DEFAULT_PORT 9090
/* The most remote devices one process may have open at once. */
#define EK_MAX_REMOTE_DEVICES 64

typedef struct ek_remote_options {
    /* Connecting and the handshake; 0: 10000 ms. */
    int connect_timeout_ms;
    /* A reply that has not come this long after its request fails the call with EK_ERR_CONNECTION and
     * closes the connection; 0: 120000 ms. Launch waits have their own timeouts (ek_launch_wait). */
    int reply_timeout_ms;
    /* Called on the calling thread as a transfer of at least 1 MiB (copies, model uploads) goes on:
     * `what` is "upload", "download" or "model", `done` of `total` bytes. May be NULL. */
    void (*progress)(void *user_data, const char *what, uint64_t done, uint64_t total);
    void *progress_user_data;
    /* How the board opens the device, as ek_dev_request_ex there; zero fields: the board's defaults. */
    ek_dev_config_t device_config;
    /* A paired server's key file (remote_server --make-key): the session proves it holds the key and is
     * encrypted (XChaCha20-Poly1305, libsodium). NULL: an unpaired (loopback or SSH) server. */
    const char *key_file;
} ek_remote_options_t;

/* Write a new pairing key to `path` (64 hex digits, created with mode 0600; an existing file is an error).
 * Needs libsodium (libsodium.so.23, Debian's libsodium23), as paired sessions do. */
EK_API ek_status_t ek_remote_make_key(const char *path);

/* Open device `id` of the remote_server at `url`, "tcp://HOST:PORT" (PORT defaults to 9090). The
 * handshake checks that both ends speak the same protocol; a mismatch is EK_ERR_VERSION saying which side
 * to upgrade. `options` may be NULL. */
EK_API ek_status_t ek_dev_connect(ek_dev_t *handle, const char *url, int id, const ek_remote_options_t *options);
/* The same over a connected stream socket (an SSH channel's local end, a socketpair). The device takes
 * `fd` over and closes it when the device is closed, also when the call fails. `label` names the peer in
 * messages ("ssh://root@board"; NULL: "fd N"). */
EK_API ek_status_t ek_dev_connect_fd(ek_dev_t *handle, int fd, const char *label, int id,
                                     const ek_remote_options_t *options);

/* What the server said in the handshake. */
typedef struct ek_remote_info {
    bool remote;              /* false for a local device (then the rest is zero) */
    int protocol;             /* the protocol version in use */
    char url[128];            /* as connected to */
    char runtime_version[32]; /* the board's libedgekit, "MAJOR.MINOR.PATCH" */
    char arch[32];            /* the board's machine, "aarch64" */
    int model_format_major;   /* the .ekm major version the board reads */
    int model_format_minor;   /* the newest minor it knows */
    int devices;              /* ek_dev_count on the board */
    char kernels[32];         /* the kernels "auto" resolves to on the board: "xnnpack" or "portable" */
    int threads;              /* the default threads of a launch on the board */
} ek_remote_info_t;

/* Whether `handle` is remote, and what its server reported. */
EK_API ek_status_t ek_dev_remote_info(ek_dev_t handle, ek_remote_info_t *info);

/* ---- the server (remote_server is a thin program around these) ---- */

typedef struct ek_server ek_server_t;

typedef struct ek_server_config {
    /* The address to listen on; NULL: "127.0.0.1". Anything but a loopback address needs key_file. */
    const char *host;
    /* A pairing key file (ek_remote_make_key): every session must prove it holds the key and is encrypted.
     * NULL: no pairing, loopback only (reach the board through SSH; docs/remote-protocol.md). */
    const char *key_file;
    int port;                  /* 0: a free port (ek_server_port tells which) */
    int max_sessions;          /* sessions at once; more are told the server is full; 0: 64 */
    int idle_timeout_ms;       /* a client silent this long is disconnected; 0: 60000 */
    int launch_timeout_ms;     /* a launch running this long is reported to its client as a timeout; 0: 600000 */
    uint64_t max_model_bytes;  /* the largest model a client may upload; 0: 1 GiB */
    /* Called (from any thread, serialised) with one line about sessions opening and closing and errors;
     * NULL: quiet. */
    void (*log)(void *user_data, const char *line);
    void *log_user_data;
} ek_server_config_t;

/* Listen (errors: the address is in use, not loopback, ...). `config` may be NULL. */
EK_API ek_status_t ek_server_create(ek_server_t **server, const ek_server_config_t *config);
/* The port it listens on. */
EK_API int ek_server_port(const ek_server_t *server);
/* Accept and serve sessions until ek_server_stop; then close every session (freeing what they held)
 * and return. */
EK_API ek_status_t ek_server_run(ek_server_t *server);
/* What a server is doing: sessions open now (connected, or still freeing what they held), and sessions
 * started since it was created. Any thread, while it runs or not. */
typedef struct ek_server_stats {
    int sessions_open;
    uint64_t sessions_started;
} ek_server_stats_t;
EK_API ek_status_t ek_server_stats(ek_server_t *server, ek_server_stats_t *stats);
/* Make ek_server_run return. Async-signal-safe (a signal handler may call it). */
EK_API void ek_server_stop(ek_server_t *server);
/* Free a server that is not running. */
EK_API void ek_server_destroy(ek_server_t *server);

#ifdef __cplusplus
}
#endif
#endif /* EDGEKIT_REMOTE_H */
