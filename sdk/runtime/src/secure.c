/* Paired sessions of the remote protocol (docs/remote-protocol.md, "Listening beyond loopback"): a
 * pre-shared 32-byte key, per-session keys derived from it and both sides' random nonces, and every
 * frame's payload sealed with XChaCha20-Poly1305 (the header as associated data). The cryptography is
 * libsodium's, loaded at run time (libsodium.so.23, Debian's libsodium23), so libedgekit itself keeps
 * no dependencies and only paired sessions need it. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wire.h"

#define SODIUM_LIBRARY "libsodium.so.23"

static struct {
    int (*init)(void);
    void (*randombytes_buf)(void *buf, size_t size);
    int (*generichash)(unsigned char *out, size_t outlen, const unsigned char *in, unsigned long long inlen,
                       const unsigned char *key, size_t keylen);
    int (*seal)(unsigned char *c, unsigned char *mac, unsigned long long *maclen, const unsigned char *m,
                unsigned long long mlen, const unsigned char *ad, unsigned long long adlen, const unsigned char *nsec,
                const unsigned char *npub, const unsigned char *k);
    int (*open)(unsigned char *m, unsigned char *nsec, const unsigned char *c, unsigned long long clen,
                const unsigned char *mac, const unsigned char *ad, unsigned long long adlen,
                const unsigned char *npub, const unsigned char *k);
    void (*memzero)(void *p, size_t n);
} na;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_error[300];

static void load_sodium(void) {
    void *lib = dlopen(SODIUM_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *e = dlerror();
        snprintf(load_error, sizeof load_error, "%s", e ? e : SODIUM_LIBRARY " not found");
        return;
    }
    struct {
        const char *name;
        void **slot;
    } symbols[] = {
        {"sodium_init", (void **)&na.init},
        {"randombytes_buf", (void **)&na.randombytes_buf},
        {"crypto_generichash", (void **)&na.generichash},
        {"crypto_aead_xchacha20poly1305_ietf_encrypt_detached", (void **)&na.seal},
        {"crypto_aead_xchacha20poly1305_ietf_decrypt_detached", (void **)&na.open},
        {"sodium_memzero", (void **)&na.memzero},
    };
    for (size_t i = 0; i < sizeof symbols / sizeof symbols[0]; i++) {
        void *sym = dlsym(lib, symbols[i].name);
        if (!sym) {
            snprintf(load_error, sizeof load_error, "%s has no %s", SODIUM_LIBRARY, symbols[i].name);
            memset(&na, 0, sizeof na);
            dlclose(lib);
            return;
        }
        memcpy(symbols[i].slot, &sym, sizeof sym);
    }
    if (na.init() < 0) {
        snprintf(load_error, sizeof load_error, "sodium_init failed");
        memset(&na, 0, sizeof na);
    }
}

static ek_status_t need_sodium(void) {
    pthread_once(&load_once, load_sodium);
    if (!na.init)
        return ek_fail(EK_ERR_UNSUPPORTED, "paired remote sessions need libsodium (apt install libsodium23): %s",
                       load_error);
    return EK_OK;
}

ek_status_t ek_key_make(const char *path) {
    ek_status_t status = need_sodium();
    if (status != EK_OK)
        return status;
    uint8_t key[EK_KEY_BYTES];
    na.randombytes_buf(key, sizeof key);
    char text[2 * EK_KEY_BYTES + 2];
    for (size_t i = 0; i < sizeof key; i++)
        snprintf(text + 2 * i, 3, "%02x", key[i]);
    text[2 * EK_KEY_BYTES] = '\n';
    text[2 * EK_KEY_BYTES + 1] = '\0';
    na.memzero(key, sizeof key);
    /* Never over an existing key: a paired host would lose access without a word. */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        status = ek_fail(EK_ERR_SYSTEM, "cannot create the key file '%.300s': %s", path, strerror(errno));
    } else {
        bool ok = write(fd, text, 2 * EK_KEY_BYTES + 1) == 2 * EK_KEY_BYTES + 1;
        ok = close(fd) == 0 && ok;
        if (!ok) {
            unlink(path);
            status = ek_fail(EK_ERR_SYSTEM, "cannot write the key file '%.300s'", path);
        }
    }
    na.memzero(text, sizeof text);
    return status;
}

ek_status_t ek_key_load(const char *path, uint8_t key[EK_KEY_BYTES]) {
    ek_status_t status = need_sodium();
    if (status != EK_OK)
        return status;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ek_fail(EK_ERR_SYSTEM, "cannot open the key file '%.300s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (st.st_mode & 077)) {
        close(fd);
        return ek_fail(EK_ERR_SYSTEM, "the key file '%.300s' must be a regular file readable by its owner only "
                       "(chmod 600 '%.300s')", path, path);
    }
    char text[2 * EK_KEY_BYTES + 8];
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' '))
        n--;
    bool ok = n == 2 * EK_KEY_BYTES;
    for (size_t i = 0; ok && i < EK_KEY_BYTES; i++) {
        unsigned v;
        ok = sscanf(text + 2 * i, "%2x", &v) == 1 && strchr("0123456789abcdefABCDEF", text[2 * i]) &&
             strchr("0123456789abcdefABCDEF", text[2 * i + 1]);
        key[i] = (uint8_t)v;
    }
    na.memzero(text, sizeof text);
    if (!ok)
        return ek_fail(EK_ERR_INVALID_ARG, "the key file '%.300s' does not hold a key (64 hex digits, as "
                       "remote_server --make-key writes)", path);
    return EK_OK;
}

void ek_key_id(const uint8_t key[EK_KEY_BYTES], uint8_t id[EK_KEY_ID_BYTES]) {
    static const char label[] = "EdgeKit remote key id v1";
    na.generichash(id, EK_KEY_ID_BYTES, (const unsigned char *)label, sizeof label - 1, key, EK_KEY_BYTES);
}

void ek_random(void *buf, size_t n) { na.randombytes_buf(buf, n); }

void ek_channel_secure(struct ek_channel *ch, const uint8_t key[EK_KEY_BYTES], const uint8_t client_nonce[32],
                       const uint8_t server_nonce[32], bool is_server) {
    static const char label[] = "EdgeKit remote session v1";
    uint8_t in[sizeof label - 1 + 64], out[64];
    memcpy(in, label, sizeof label - 1);
    memcpy(in + sizeof label - 1, client_nonce, 32);
    memcpy(in + sizeof label - 1 + 32, server_nonce, 32);
    na.generichash(out, sizeof out, in, sizeof in, key, EK_KEY_BYTES);
    /* The first half seals client -> server, the second server -> client. */
    memcpy(is_server ? ch->rx_key : ch->tx_key, out, 32);
    memcpy(is_server ? ch->tx_key : ch->rx_key, out + 32, 32);
    na.memzero(out, sizeof out);
    ch->tx_counter = ch->rx_counter = 0;
    ch->secure = true;
}

static void counter_nonce(uint8_t nonce[24], uint64_t counter) {
    memset(nonce, 0, 24);
    for (int i = 0; i < 8; i++)
        nonce[i] = (uint8_t)(counter >> (8 * i));
}

void ek_channel_seal(struct ek_channel *ch, const uint8_t header[EK_WIRE_HEADER], uint8_t *data, size_t n,
                     uint8_t mac[EK_MAC_BYTES]) {
    uint8_t nonce[24];
    counter_nonce(nonce, ch->tx_counter++);
    unsigned long long maclen;
    na.seal(data, mac, &maclen, data, n, header, EK_WIRE_HEADER, NULL, nonce, ch->tx_key);
}

ek_status_t ek_channel_open(struct ek_channel *ch, const uint8_t header[EK_WIRE_HEADER], uint8_t *data, size_t n,
                            const uint8_t mac[EK_MAC_BYTES]) {
    uint8_t nonce[24];
    counter_nonce(nonce, ch->rx_counter++);
    if (na.open(data, NULL, data, n, mac, header, EK_WIRE_HEADER, nonce, ch->rx_key) != 0)
        return ek_fail(EK_ERR_CONNECTION, "%s: a frame failed authentication (forged, replayed, reordered or "
                       "corrupted in transit)", ch->peer);
    return EK_OK;
}

void ek_channel_wipe(struct ek_channel *ch) {
    if (ch->secure && na.memzero) {
        na.memzero(ch->tx_key, sizeof ch->tx_key);
        na.memzero(ch->rx_key, sizeof ch->rx_key);
    }
    ch->secure = false;
}

ek_status_t ek_remote_make_key(const char *path) {
    if (!path || !*path)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_remote_make_key: path is %s", path ? "empty" : "NULL");
    return ek_key_make(path);
}
