/* The remote protocol's frames and payload encoding (docs/remote-protocol.md), shared by the client
 * (remote_client.c) and the server (remote_server.c). Not installed. */
#ifndef EDGEKIT_WIRE_H
#define EDGEKIT_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "internal.h"

#define EK_WIRE_MAGIC 0x50524b45u /* "EKRP" little-endian */
#define EK_WIRE_HEADER 24
/* The hard maximum of a payload, checked before anything is allocated for it. */
#define EK_WIRE_MAX_PAYLOAD (16u << 20)
/* Bulk data (copies, model uploads) moves in chunks of this size, one frame each. */
#define EK_WIRE_CHUNK (4u << 20)
/* Strings on the wire (names, messages, versions). */
#define EK_WIRE_MAX_STRING 4096u

enum ek_wire_type {
    EK_MSG_HELLO = 1,
    EK_MSG_PING = 2,
    EK_MSG_DEV_OPEN = 3,
    EK_MSG_DEV_SYNC = 4,
    EK_MSG_DEV_STATS = 5,
    EK_MSG_DEV_COH_REPORT = 6,
    EK_MSG_DEV_COH_CLEAR = 7,
    EK_MSG_MALLOC = 8,
    EK_MSG_FREE = 9,
    EK_MSG_WRITE = 10,
    EK_MSG_READ = 11,
    EK_MSG_COPY = 12,
    EK_MSG_RT_CREATE = 13,
    EK_MSG_RT_DESTROY = 14,
    EK_MSG_UPLOAD = 15,
    EK_MSG_LOAD = 16,
    EK_MSG_LAUNCH = 17,
    EK_MSG_RUN = 18,
    EK_MSG_TYPE_END,
    /* before HELLO, for paired sessions: the key id and the client's nonce; the reply the server's nonce */
    EK_MSG_PAIR = 0x20,
    /* server -> client without a request: a launch finished (request id = the LAUNCH's) */
    EK_MSG_LAUNCH_DONE = 0x4001,
    /* server -> client: a chunk of a dump file of a launch or run (request id = the LAUNCH's or RUN's) */
    EK_MSG_DUMP_FILE = 0x4002,
    /* a reply carries its request's type with this bit set */
    EK_MSG_REPLY = 0x8000
};

struct ek_wire_header {
    uint16_t version;
    uint16_t type;
    uint64_t request;
    uint64_t length; /* of the payload; after ek_wire_recv_payload, of the plaintext */
    uint8_t raw[EK_WIRE_HEADER]; /* as received: a sealed payload's associated data */
};

/* One end of a connection. A paired session (secure.c) seals every payload after the handshake: the
 * payload on the wire is the ciphertext followed by a 16-byte tag. */
#define EK_KEY_BYTES 32
#define EK_KEY_ID_BYTES 16
#define EK_MAC_BYTES 16
struct ek_channel {
    int fd;
    char peer[128]; /* names the other end in messages */
    bool secure;
    uint8_t tx_key[32], rx_key[32];
    uint64_t tx_counter, rx_counter;
};

/* A growing payload being written. Writes after an allocation failure are dropped and `failed` set. */
struct ek_wbuf {
    uint8_t *data;
    size_t len, cap;
    bool failed;
};
void ek_wbuf_init(struct ek_wbuf *b);
void ek_wbuf_free(struct ek_wbuf *b);
void ek_put_u32(struct ek_wbuf *b, uint32_t v);
void ek_put_u64(struct ek_wbuf *b, uint64_t v);
void ek_put_i64(struct ek_wbuf *b, int64_t v);
void ek_put_f32(struct ek_wbuf *b, float v);
void ek_put_bytes(struct ek_wbuf *b, const void *data, size_t n);  /* u64 length, then the bytes */
void ek_put_str(struct ek_wbuf *b, const char *s);                 /* NULL is "" */
void ek_put_shape(struct ek_wbuf *b, const ek_shape_t *shape);
/* Room for `n` more bytes written by the caller at the returned address (NULL on failure). */
uint8_t *ek_put_space(struct ek_wbuf *b, size_t n);

/* A payload being read. A read past the end, or of a malformed value, sets `bad` (with `why`) and
 * yields zeros, so decoders check once at the end. */
struct ek_rbuf {
    const uint8_t *data;
    size_t len, pos;
    bool bad;
    const char *why;
};
void ek_rbuf_init(struct ek_rbuf *b, const void *data, size_t len);
uint32_t ek_get_u32(struct ek_rbuf *b);
uint64_t ek_get_u64(struct ek_rbuf *b);
int64_t ek_get_i64(struct ek_rbuf *b);
float ek_get_f32(struct ek_rbuf *b);
/* A u64 length and that many bytes (not copied); `max` bounds the length. */
const uint8_t *ek_get_bytes(struct ek_rbuf *b, size_t max, size_t *n);
/* A string into `out` (NUL-terminated, valid UTF-8 not required but no NUL inside); bad if longer than
 * cap - 1. */
void ek_get_str(struct ek_rbuf *b, char *out, size_t cap);
/* A shape, bad when num_dims is outside 0 .. EK_MAX_DIMS or a dim negative. */
void ek_get_shape(struct ek_rbuf *b, ek_shape_t *shape);

/* Encode a header into 24 bytes / decode one. Decoding checks magic and the payload maximum; the
 * version is left to the caller (a HELLO of another version still gets an answer). */
void ek_wire_encode_header(uint8_t out[EK_WIRE_HEADER], uint16_t type, uint64_t request, uint64_t length);
ek_status_t ek_wire_decode_header(const uint8_t in[EK_WIRE_HEADER], struct ek_wire_header *h, const char *peer);

/* Blocking socket I/O of exactly `n` bytes, unsealed. EK_ERR_CONNECTION naming the peer on EOF or error;
 * EK_ERR_TIMEOUT when a socket timeout (SO_RCVTIMEO/SO_SNDTIMEO) ran out. */
ek_status_t ek_wire_recv_all(struct ek_channel *ch, void *data, size_t n);
/* Send a header and a payload made of `a` then `b` (either may be empty): as one sendmsg, or sealed. */
ek_status_t ek_wire_send_parts(struct ek_channel *ch, uint16_t type, uint64_t request, const void *a, size_t an,
                               const void *b, size_t bn);
/* Send a header and a payload. */
ek_status_t ek_wire_send_frame(struct ek_channel *ch, uint16_t type, uint64_t request, const void *payload,
                               size_t n);
/* Receive and check a header. */
ek_status_t ek_wire_recv_header(struct ek_channel *ch, struct ek_wire_header *h);
/* Receive the payload of header `h` into `data` (h->length bytes of room), opened when sealed; then
 * h->length is the plaintext's length. */
ek_status_t ek_wire_recv_payload(struct ek_channel *ch, struct ek_wire_header *h, uint8_t *data);
/* Receive one frame: the header checked, then the payload into a malloc'd buffer (*payload, freed by the
 * caller; NULL for an empty one). */
ek_status_t ek_wire_recv_frame(struct ek_channel *ch, struct ek_wire_header *h, uint8_t **payload);

/* ---- secure.c: paired sessions (libsodium, loaded when first needed) ---- */
/* Write a new random key to `path` (created 0600; an existing file is an error). */
ek_status_t ek_key_make(const char *path);
/* Read a key file (64 hex digits; the file must not be readable by group or others). */
ek_status_t ek_key_load(const char *path, uint8_t key[EK_KEY_BYTES]);
/* A key's public id (says "wrong key" without showing the key). */
void ek_key_id(const uint8_t key[EK_KEY_BYTES], uint8_t id[EK_KEY_ID_BYTES]);
void ek_random(void *buf, size_t n);
/* Derive the session's keys from the pairing key and both nonces; the channel is sealed from now on. */
void ek_channel_secure(struct ek_channel *ch, const uint8_t key[EK_KEY_BYTES], const uint8_t client_nonce[32],
                       const uint8_t server_nonce[32], bool is_server);
void ek_channel_seal(struct ek_channel *ch, const uint8_t header[EK_WIRE_HEADER], uint8_t *data, size_t n,
                     uint8_t mac[EK_MAC_BYTES]);
ek_status_t ek_channel_open(struct ek_channel *ch, const uint8_t header[EK_WIRE_HEADER], uint8_t *data, size_t n,
                            const uint8_t mac[EK_MAC_BYTES]);
void ek_channel_wipe(struct ek_channel *ch);

/* The version strings both ends report. */
const char *ek_wire_arch(void);

#endif /* EDGEKIT_WIRE_H */
