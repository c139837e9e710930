/* Frames and payload encoding of the remote protocol (docs/remote-protocol.md). Everything is
 * little-endian; every length read from the wire is checked against a limit before it is used. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "wire.h"

void ek_wbuf_init(struct ek_wbuf *b) { memset(b, 0, sizeof *b); }

void ek_wbuf_free(struct ek_wbuf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

uint8_t *ek_put_space(struct ek_wbuf *b, size_t n) {
    if (b->failed)
        return NULL;
    if (n > SIZE_MAX / 2 - b->len) {
        b->failed = true;
        return NULL;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *data = realloc(b->data, cap);
        if (!data) {
            b->failed = true;
            return NULL;
        }
        b->data = data;
        b->cap = cap;
    }
    uint8_t *at = b->data + b->len;
    b->len += n;
    return at;
}

static void put_le(struct ek_wbuf *b, uint64_t v, int n) {
    uint8_t *p = ek_put_space(b, (size_t)n);
    for (int i = 0; p && i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

void ek_put_u32(struct ek_wbuf *b, uint32_t v) { put_le(b, v, 4); }
void ek_put_u64(struct ek_wbuf *b, uint64_t v) { put_le(b, v, 8); }
void ek_put_i64(struct ek_wbuf *b, int64_t v) { put_le(b, (uint64_t)v, 8); }

void ek_put_f32(struct ek_wbuf *b, float v) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    put_le(b, bits, 4);
}

void ek_put_bytes(struct ek_wbuf *b, const void *data, size_t n) {
    ek_put_u64(b, n);
    uint8_t *p = ek_put_space(b, n);
    if (p && n)
        memcpy(p, data, n);
}

void ek_put_str(struct ek_wbuf *b, const char *s) {
    if (!s)
        s = "";
    ek_put_bytes(b, s, strnlen(s, EK_WIRE_MAX_STRING - 1));
}

void ek_put_shape(struct ek_wbuf *b, const ek_shape_t *shape) {
    ek_put_u32(b, (uint32_t)shape->num_dims);
    for (int i = 0; i < shape->num_dims && i < EK_MAX_DIMS; i++)
        ek_put_i64(b, shape->dims[i]);
}

void ek_rbuf_init(struct ek_rbuf *b, const void *data, size_t len) {
    b->data = data;
    b->len = data ? len : 0;
    b->pos = 0;
    b->bad = false;
    b->why = NULL;
}

static void mark_bad(struct ek_rbuf *b, const char *why) {
    if (!b->bad) {
        b->bad = true;
        b->why = why;
    }
}

static uint64_t get_le(struct ek_rbuf *b, int n) {
    if (b->bad || b->len - b->pos < (size_t)n) {
        mark_bad(b, "the payload ends early");
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)b->data[b->pos + (size_t)i] << (8 * i);
    b->pos += (size_t)n;
    return v;
}

uint32_t ek_get_u32(struct ek_rbuf *b) { return (uint32_t)get_le(b, 4); }
uint64_t ek_get_u64(struct ek_rbuf *b) { return get_le(b, 8); }
int64_t ek_get_i64(struct ek_rbuf *b) { return (int64_t)get_le(b, 8); }

float ek_get_f32(struct ek_rbuf *b) {
    uint32_t bits = (uint32_t)get_le(b, 4);
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

const uint8_t *ek_get_bytes(struct ek_rbuf *b, size_t max, size_t *n) {
    uint64_t len = get_le(b, 8);
    *n = 0;
    if (b->bad)
        return NULL;
    if (len > max || len > b->len - b->pos) {
        mark_bad(b, len > max ? "a length field is over its limit" : "a length field runs past the payload");
        return NULL;
    }
    const uint8_t *at = b->data + b->pos;
    b->pos += (size_t)len;
    *n = (size_t)len;
    return at;
}

void ek_get_str(struct ek_rbuf *b, char *out, size_t cap) {
    size_t n;
    const uint8_t *s = ek_get_bytes(b, cap - 1, &n);
    out[0] = '\0';
    if (!s)
        return;
    if (memchr(s, '\0', n)) {
        mark_bad(b, "a string holds a NUL byte");
        return;
    }
    memcpy(out, s, n);
    out[n] = '\0';
}

void ek_get_shape(struct ek_rbuf *b, ek_shape_t *shape) {
    memset(shape, 0, sizeof *shape);
    uint32_t n = ek_get_u32(b);
    if (n > EK_MAX_DIMS) {
        mark_bad(b, "a shape has more than EK_MAX_DIMS dimensions");
        return;
    }
    shape->num_dims = (int)n;
    for (uint32_t i = 0; i < n; i++) {
        shape->dims[i] = ek_get_i64(b);
        if (shape->dims[i] < 0)
            mark_bad(b, "a shape has a negative dimension");
    }
}

static void wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void wr32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void wr64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t rd(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

void ek_wire_encode_header(uint8_t out[EK_WIRE_HEADER], uint16_t type, uint64_t request, uint64_t length) {
    wr32(out, EK_WIRE_MAGIC);
    wr16(out + 4, EK_REMOTE_PROTOCOL);
    wr16(out + 6, type);
    wr64(out + 8, request);
    wr64(out + 16, length);
}

ek_status_t ek_wire_decode_header(const uint8_t in[EK_WIRE_HEADER], struct ek_wire_header *h, const char *peer) {
    uint32_t magic = (uint32_t)rd(in, 4);
    h->version = (uint16_t)rd(in + 4, 2);
    h->type = (uint16_t)rd(in + 6, 2);
    h->request = rd(in + 8, 8);
    h->length = rd(in + 16, 8);
    if (magic != EK_WIRE_MAGIC) {
        /* A client names its peer by the URL it dialled: say which ssh:// URL reaches a board through it. */
        if (memcmp(in, "SSH-", 4) == 0 && strncmp(peer, "tcp://", 6) == 0)
            return ek_fail(EK_ERR_CONNECTION, "%s is an SSH server, not an EdgeKit remote_server: use "
                           "ssh://USER@%s", peer, peer + 6);
        if (memcmp(in, "SSH-", 4) == 0)
            return ek_fail(EK_ERR_CONNECTION, "%s speaks SSH, not the EdgeKit remote protocol", peer);
        if (memcmp(in, "HTTP", 4) == 0)
            return ek_fail(EK_ERR_CONNECTION, "%s is an HTTP server, not an EdgeKit remote_server", peer);
        return ek_fail(EK_ERR_CONNECTION, "%s sent a frame with magic 0x%08x, not EdgeKit's 0x%08x (\"EKRP\"): "
                       "not an EdgeKit remote protocol peer, or the stream is corrupt", peer, magic, EK_WIRE_MAGIC);
    }
    if (h->length > EK_WIRE_MAX_PAYLOAD)
        return ek_fail(EK_ERR_CONNECTION, "%s sent a frame of %llu payload bytes; the protocol's maximum is %u",
                       peer, (unsigned long long)h->length, EK_WIRE_MAX_PAYLOAD);
    return EK_OK;
}

static ek_status_t io_error(int err, const char *peer, const char *what) {
    if (err == EAGAIN || err == EWOULDBLOCK)
        return ek_fail(EK_ERR_TIMEOUT, "%s: %s timed out", peer, what);
    return ek_fail(EK_ERR_CONNECTION, "%s: %s failed: %s (connection lost)", peer, what, strerror(err));
}

/* ek_wire_recv_all, also saying how many bytes arrived before a failure. */
static ek_status_t recv_counted(struct ek_channel *ch, void *data, size_t n, size_t *got) {
    uint8_t *p = data;
    *got = 0;
    while (*got < n) {
        ssize_t k = recv(ch->fd, p + *got, n - *got, 0);
        if (k == 0)
            return ek_fail(EK_ERR_CONNECTION, "%s closed the connection", ch->peer);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return io_error(errno, ch->peer, "receiving");
        }
        *got += (size_t)k;
    }
    return EK_OK;
}

ek_status_t ek_wire_recv_all(struct ek_channel *ch, void *data, size_t n) {
    size_t got;
    return recv_counted(ch, data, n, &got);
}

static ek_status_t send_iov(struct ek_channel *ch, struct iovec *iov, int count) {
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)count};
    size_t left = 0;
    for (int i = 0; i < count; i++)
        left += iov[i].iov_len;
    while (left > 0) {
        ssize_t k = sendmsg(ch->fd, &msg, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return io_error(errno, ch->peer, "sending");
        }
        left -= (size_t)k;
        /* Advance the iovecs past what went out. */
        size_t sent = (size_t)k;
        while (sent > 0 && msg.msg_iovlen > 0) {
            size_t take = sent < msg.msg_iov[0].iov_len ? sent : msg.msg_iov[0].iov_len;
            msg.msg_iov[0].iov_base = (uint8_t *)msg.msg_iov[0].iov_base + take;
            msg.msg_iov[0].iov_len -= take;
            sent -= take;
            if (msg.msg_iov[0].iov_len == 0) {
                msg.msg_iov++;
                msg.msg_iovlen--;
            }
        }
    }
    return EK_OK;
}

ek_status_t ek_wire_send_parts(struct ek_channel *ch, uint16_t type, uint64_t request, const void *a, size_t an,
                               const void *b, size_t bn) {
    size_t extra = ch->secure ? EK_MAC_BYTES : 0;
    if (an > EK_WIRE_MAX_PAYLOAD - extra || bn > EK_WIRE_MAX_PAYLOAD - extra - an)
        return ek_fail(EK_ERR_INTERNAL, "a frame of %zu bytes is over the protocol's maximum", an + bn);
    uint8_t header[EK_WIRE_HEADER];
    ek_wire_encode_header(header, type, request, an + bn + extra);
    if (!ch->secure) {
        struct iovec iov[3] = {{header, sizeof header}, {(void *)a, an}, {(void *)b, bn}};
        return send_iov(ch, iov, 3);
    }
    /* Sealed: the payload in one buffer, encrypted in place, then its tag. */
    uint8_t mac[EK_MAC_BYTES];
    uint8_t *plain = malloc(an + bn + 1);
    if (!plain)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory to seal a frame of %zu bytes", an + bn);
    if (an)
        memcpy(plain, a, an);
    if (bn)
        memcpy(plain + an, b, bn);
    ek_channel_seal(ch, header, plain, an + bn, mac);
    struct iovec iov[3] = {{header, sizeof header}, {plain, an + bn}, {mac, sizeof mac}};
    ek_status_t status = send_iov(ch, iov, 3);
    free(plain);
    return status;
}

ek_status_t ek_wire_send_frame(struct ek_channel *ch, uint16_t type, uint64_t request, const void *payload,
                               size_t n) {
    return ek_wire_send_parts(ch, type, request, payload, n, NULL, 0);
}

ek_status_t ek_wire_recv_header(struct ek_channel *ch, struct ek_wire_header *h) {
    size_t got;
    memset(h->raw, 0, sizeof h->raw);
    ek_status_t status = recv_counted(ch, h->raw, sizeof h->raw, &got);
    /* An SSH or HTTP server's greeting can be shorter than a header: name it, rather than the silence or
     * the close that follows it. */
    if (status != EK_OK && got >= 4 && (memcmp(h->raw, "SSH-", 4) == 0 || memcmp(h->raw, "HTTP", 4) == 0))
        return ek_wire_decode_header(h->raw, h, ch->peer);
    if (status != EK_OK)
        return status;
    if ((status = ek_wire_decode_header(h->raw, h, ch->peer)) != EK_OK)
        return status;
    if (ch->secure && h->length < EK_MAC_BYTES)
        return ek_fail(EK_ERR_CONNECTION, "%s sent a sealed frame too short for its tag", ch->peer);
    return EK_OK;
}

ek_status_t ek_wire_recv_payload(struct ek_channel *ch, struct ek_wire_header *h, uint8_t *data) {
    ek_status_t status = ek_wire_recv_all(ch, data, (size_t)h->length);
    if (status != EK_OK || !ch->secure)
        return status;
    size_t n = (size_t)h->length - EK_MAC_BYTES;
    if ((status = ek_channel_open(ch, h->raw, data, n, data + n)) != EK_OK)
        return status;
    h->length = n;
    return EK_OK;
}

ek_status_t ek_wire_recv_frame(struct ek_channel *ch, struct ek_wire_header *h, uint8_t **payload) {
    *payload = NULL;
    ek_status_t status = ek_wire_recv_header(ch, h);
    if (status != EK_OK)
        return status;
    if (h->length == 0)
        return EK_OK;
    uint8_t *data = malloc((size_t)h->length);
    if (!data)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a frame of %llu bytes from %s",
                       (unsigned long long)h->length, ch->peer);
    if ((status = ek_wire_recv_payload(ch, h, data)) != EK_OK) {
        free(data);
        return status;
    }
    *payload = data;
    return EK_OK;
}

const char *ek_wire_arch(void) {
#if defined(__aarch64__)
    return "aarch64";
#elif defined(__x86_64__)
    return "x86_64";
#elif defined(__arm__)
    return "arm";
#elif defined(__riscv) && __riscv_xlen == 64
    return "riscv64";
#else
    return "unknown";
#endif
}
