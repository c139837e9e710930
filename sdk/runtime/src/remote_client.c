/* Remote devices (docs/remote-protocol.md): the client side of the protocol behind the ordinary
 * device, memory and runtime calls. Each remote device is one connection: calls send a request and
 * wait for its reply; a reader thread takes every frame off the socket (replies, launch completions),
 * so any number of threads may have requests in flight, and a callback thread runs launches' on_done
 * (a callback may itself call the device, whose reply the reader delivers).
 *
 * Locking mirrors local devices: each remote device has a reader-writer lock (calls shared; freeing
 * memory, mapping and closing exclusive) and a mutex `mu` for the pending replies, the launch list and
 * the object lists. Handles of remote objects carry the device's slot as their owner, and are retired
 * only under the exclusive lock (launches: under `mu`), so a lookup repeated under the lock is stable. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "wire.h"

#define DEFAULT_CONNECT_MS 10000
#define DEFAULT_REPLY_MS 120000
#define WINDOW 8                     /* bulk chunks in flight */
#define PROGRESS_MIN (1u << 20)      /* transfers at least this large report progress */
#define INLINE_RUN_MAX (8u << 20)    /* ek_rt_launch_data moves at most this much inline in one RUN */

struct rpending {
    uint64_t request;
    bool done;
    ek_status_t status;
    char *message;      /* error replies */
    uint8_t *payload;   /* the whole reply payload (malloc'd) */
    size_t len, body;   /* payload length; where the body starts (after the status) */
    void *sink;         /* READ: the bytes go straight here */
    size_t sink_len;
    uint64_t replied_ns; /* when the reply arrived (this host's clock), for profiles */
    bool unbounded;      /* no reply timeout: see waits_for_launches */
    struct rdump *dump; /* RUN with a dump: where its files go */
    struct rpending *next;
};

/* Where a launch's dump files go as they arrive, and the first failure writing them. */
struct rdump {
    char *dir;
    ek_status_t status;
    char error[400];
};

/* A launch's profile: the caller's, with what the board's records need to join it. */
struct rprofile {
    struct ek_profiler *profiler; /* a reference, released with the launch */
    uint64_t launch;              /* the launch's number in the profile */
    const void *key;              /* ModelInit is added once per profile and model, as locally: the runtime */
    uint64_t key_stamp;           /* and the number of the network's model */
    const char *network;          /* the network's name (the runtime's copy) */
    uint64_t sent_ns;             /* when the request went (this host's clock) */
    uint64_t request_bytes;
};

struct rlaunch {
    uint64_t handle; /* the caller's handle until ek_launch_wait retires it; 0: none */
    uint64_t request; /* the LAUNCH request's id: its completion carries it */
    struct rrt *rt;
    bool done;        /* the completion arrived (or the connection died) */
    bool callback_ran; /* on_done returned (or there is none) */
    bool queued;      /* acknowledged by the board; until then the launching thread owns it */
    bool want_handle; /* the caller asked for a handle */
    int users;        /* threads inside ek_launch_wait or the callback */
    ek_status_t status;
    char message[512];
    void (*on_done)(void *, ek_status_t);
    void *user_data;
    struct rprofile profile; /* profiler NULL: not profiled */
    struct rdump dump;       /* dir NULL: no dump */
    struct rlaunch *next, *next_cb;
};

struct rnet {
    ek_net_info_t info;
    uint64_t model; /* the load it came with (a number of this process's): ModelInit is once per model */
    char *strings; /* the names, one block */
    ek_io_info_t *ios;
    ek_stage_info_t *stages;
    ek_shape_t *shapes;
};

struct rrt {
    uint64_t handle, wire;
    char kernels[32];
    int threads;
    struct rnet **nets; /* each record its own allocation: infos stay where they were handed out */
    int net_count;
    struct rrt *prev, *next;
};

struct rmem {
    uint64_t handle, wire;
    size_t size;
    uint8_t *shadow; /* the host copy while mapped */
    int map_count;
    struct rmem *prev, *next;
};

struct rdev {
    pthread_rwlock_t lock;
    pthread_mutex_t mu;
    pthread_cond_t cond;     /* replies arrived, launches finished, the connection died */
    pthread_mutex_t send_mu; /* one frame at a time on the socket */
    bool used;               /* under slots_lock */
    int refs;                /* the device handle and each runtime (under slots_lock) */
    uint64_t handle;
    uint64_t self; /* the library's own handle, for calls a runtime makes after the caller's handle closed */
    int id;
    struct ek_channel ch; /* the connection: its socket, the peer's name, its keys when paired */
    ek_remote_info_t info;
    int reply_ms, ping_ms;
    void (*progress)(void *, const char *, uint64_t, uint64_t);
    void *progress_user;
    uint64_t next_request;
    struct rpending *pending;
    struct rlaunch *launches;
    struct rmem *mems;
    struct rrt *rts;
    bool dead;
    ek_status_t dead_status;
    char dead_msg[512];
    ek_status_t sync_error;
    char sync_msg[512];
    pthread_t reader, callbacks;
    bool reader_started, callbacks_started, callbacks_stop;
    pthread_cond_t cb_cond;
    struct rlaunch *cb_head, *cb_tail;
    struct rpending *sink_busy; /* the reader is receiving into this request's buffer */
};

static struct rdev slots[EK_MAX_REMOTE_DEVICES];
static _Atomic uint64_t models_loaded; /* loads of this process, numbering the models of remote runtimes */
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t slots_once = PTHREAD_ONCE_INIT;

static void init_slots(void) {
    /* As a local device's (device.c): calls take the lock shared, back to back from many threads, so it
     * prefers writers, or a load, a free or a runtime's destroy could wait for as long as they keep coming
     * (glibc's default prefers readers). No call takes it twice, and nothing waits for a callback while
     * holding it (ek_dev_sync lets go first). */
    pthread_rwlockattr_t rwattr;
    pthread_rwlockattr_init(&rwattr);
    pthread_rwlockattr_setkind_np(&rwattr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    for (int i = 0; i < EK_MAX_REMOTE_DEVICES; i++) {
        pthread_rwlock_init(&slots[i].lock, &rwattr);
        pthread_mutex_init(&slots[i].mu, NULL);
        pthread_mutex_init(&slots[i].send_mu, NULL);
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&slots[i].cond, &attr);
        pthread_cond_init(&slots[i].cb_cond, &attr);
        pthread_condattr_destroy(&attr);
        slots[i].ch.fd = -1;
    }
    pthread_rwlockattr_destroy(&rwattr);
}

static struct timespec deadline_in(int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* ---- the connection: death, the reader, requests ---- */

static void finish_launch_locked(struct rdev *d, struct rlaunch *l, ek_status_t status, const char *message);

/* Mark the connection dead (mu held): every pending request and running launch fails with `status`. */
static void die_locked(struct rdev *d, ek_status_t status, const char *message) {
    if (d->dead)
        return;
    d->dead = true;
    d->dead_status = status;
    snprintf(d->dead_msg, sizeof d->dead_msg, "%s", message);
    for (struct rpending *p = d->pending; p; p = p->next)
        if (!p->done) {
            p->done = true;
            p->status = status;
            p->message = strdup(message);
        }
    /* Finishing a launch nobody waits for frees it: step on first. */
    for (struct rlaunch *l = d->launches, *next; l; l = next) {
        next = l->next;
        if (!l->done) {
            char text[600];
            snprintf(text, sizeof text, "%s (the launch's outcome on the board is unknown)", message);
            finish_launch_locked(d, l, status, text);
        }
    }
    pthread_cond_broadcast(&d->cond);
    pthread_cond_broadcast(&d->cb_cond);
}

static struct rpending *find_pending(struct rdev *d, uint64_t request) {
    for (struct rpending *p = d->pending; p; p = p->next)
        if (p->request == request && !p->done)
            return p;
    return NULL;
}

static struct rlaunch *find_launch(struct rdev *d, uint64_t request) {
    for (struct rlaunch *l = d->launches; l; l = l->next)
        if (l->request == request)
            return l;
    return NULL;
}

static void queue_callback_locked(struct rdev *d, struct rlaunch *l) {
    l->next_cb = NULL;
    if (d->cb_tail)
        d->cb_tail->next_cb = l;
    else
        d->cb_head = l;
    d->cb_tail = l;
    pthread_cond_signal(&d->cb_cond);
}

static void free_rlaunch(struct rlaunch *l) {
    ek_profiler_release(l->profile.profiler);
    free(l->dump.dir);
    free(l);
}

/* Free a launch nobody can reach any more: finished, its callback run, its handle retired (or never
 * wanted) and no thread using it (mu held). */
static void maybe_forget_locked(struct rdev *d, struct rlaunch *l) {
    if (!l->queued || !l->done || !l->callback_ran || l->handle || l->users > 0)
        return;
    for (struct rlaunch **at = &d->launches; *at; at = &(*at)->next)
        if (*at == l) {
            *at = l->next;
            break;
        }
    free_rlaunch(l);
}

/* A queued launch finished: its error for ek_dev_sync (without a handle), its callback (mu held). */
static void after_completion_locked(struct rdev *d, struct rlaunch *l) {
    if (l->status != EK_OK && !l->want_handle && d->sync_error == EK_OK) {
        d->sync_error = l->status;
        snprintf(d->sync_msg, sizeof d->sync_msg, "%s", l->message);
    }
    if (l->on_done)
        queue_callback_locked(d, l);
    else
        l->callback_ran = true;
    maybe_forget_locked(d, l);
}

static void finish_launch_locked(struct rdev *d, struct rlaunch *l, ek_status_t status, const char *message) {
    if (l->done)
        return;
    l->done = true;
    l->status = status;
    snprintf(l->message, sizeof l->message, "%.500s", message ? message : "");
    /* Until the board acknowledged it, the launching thread owns it and does the rest. */
    if (l->queued)
        after_completion_locked(d, l);
    pthread_cond_broadcast(&d->cond);
}

/* ---- profiles and dumps of remote launches ---- */

/* A chunk of a dump file: written to DIR/NAME.part, renamed to NAME when complete. The name comes from the
 * wire, so it must be a plain file name. Failures are kept for the launch's outcome. */
static void write_dump_chunk(struct rdump *dump, struct ek_rbuf *r) {
    char name[256];
    ek_get_str(r, name, sizeof name);
    uint64_t total = ek_get_u64(r), offset = ek_get_u64(r);
    size_t n;
    const uint8_t *data = ek_get_bytes(r, EK_WIRE_CHUNK, &n);
    if (r->bad || dump->status != EK_OK)
        return;
    bool plain = name[0] && name[0] != '.';
    for (const char *c = name; *c && plain; c++)
        plain = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '.' ||
                *c == '_' || *c == '-';
    if (!plain || offset > total || n > total - offset) {
        dump->status = EK_ERR_CONNECTION;
        snprintf(dump->error, sizeof dump->error, "the board sent a dump file with a bad name or range ('%.100s')",
                 name);
        return;
    }
    char path[4400], part[4410];
    snprintf(path, sizeof path, "%s/%s", dump->dir, name);
    snprintf(part, sizeof part, "%s.part", path);
    int fd = open(part, O_WRONLY | O_CREAT | O_CLOEXEC | (offset == 0 ? O_TRUNC : 0), 0644);
    bool ok = fd >= 0;
    for (size_t done = 0; ok && done < n;) {
        ssize_t k = pwrite(fd, data + done, n - done, (off_t)(offset + done));
        ok = k > 0 || (k < 0 && errno == EINTR);
        if (k > 0)
            done += (size_t)k;
    }
    int err = errno;
    if (fd >= 0 && close(fd) != 0 && ok) {
        ok = false;
        err = errno;
    }
    if (ok && offset + n == total && rename(part, path) != 0) {
        ok = false;
        err = errno;
    }
    if (!ok) {
        unlink(part);
        dump->status = EK_ERR_SYSTEM;
        snprintf(dump->error, sizeof dump->error, "cannot write the dump file '%.300s': %s", path, strerror(err));
    }
}

/* The board's records of a launch, added to the caller's profile on this host's clock, with the transport
 * around them: the round trip less the time the board held the launch, half each way. */
static bool add_records(struct rprofile *rp, struct ek_rbuf *r, uint64_t replied_ns, uint64_t reply_bytes,
                        const char *network) {
    uint64_t received = ek_get_u64(r), replied = ek_get_u64(r);
    uint32_t count = ek_get_u32(r);
    if (r->bad || count > (1u << 24))
        return false;
    uint64_t held = replied >= received ? replied - received : 0;
    uint64_t trip = replied_ns > rp->sent_ns ? replied_ns - rp->sent_ns : 0;
    uint64_t transport = trip > held ? trip - held : 0;
    /* board time + shift = host time */
    int64_t shift = (int64_t)(rp->sent_ns + transport / 2) - (int64_t)received;
    bool first = ek_profiler_first_key(rp->profiler, rp->key, rp->key_stamp);
    for (uint32_t i = 0; i < count && !r->bad; i++) {
        ek_profile_record_t rec;
        memset(&rec, 0, sizeof rec);
        char texts[7][EK_WIRE_MAX_STRING];
        rec.kind = (ek_profile_kind_t)ek_get_u32(r);
        for (int k = 0; k < 7; k++)
            ek_get_str(r, texts[k], sizeof texts[k]);
        rec.name = texts[0];
        rec.network = texts[1];
        rec.op_type = texts[2];
        rec.provider = texts[3];
        rec.nodes = texts[4];
        rec.tensor = texts[5];
        rec.shapes = texts[6];
        rec.op_index = (int)ek_get_i64(r);
        rec.stage = (int)ek_get_i64(r);
        rec.threads = (int)ek_get_i64(r);
        rec.flops = ek_get_u64(r);
        rec.bytes = ek_get_u64(r);
        rec.start_ns = (uint64_t)((int64_t)ek_get_u64(r) + shift);
        rec.duration_ns = ek_get_u64(r);
        rec.thread = ek_get_u64(r);
        if (r->bad)
            break;
        if (rec.kind == EK_PROFILE_MODEL_INIT && !first)
            continue; /* the board's session loads it once; the profile says so once */
        rec.launch = rec.launch || rec.kind != EK_PROFILE_MODEL_INIT ? rp->launch : 0;
        ek_profiler_add(rp->profiler, &rec);
    }
    if (r->bad)
        return false;
    ek_profile_record_t t;
    memset(&t, 0, sizeof t);
    t.kind = EK_PROFILE_TRANSPORT;
    t.name = "request";
    t.network = network;
    t.op_type = t.provider = t.nodes = t.tensor = t.shapes = "";
    t.op_index = t.stage = -1;
    t.launch = rp->launch;
    t.bytes = rp->request_bytes;
    t.start_ns = rp->sent_ns;
    t.duration_ns = transport / 2;
    t.thread = ek_thread_id();
    ek_profiler_add(rp->profiler, &t);
    t.name = "reply";
    t.bytes = reply_bytes;
    t.start_ns = replied_ns - (transport - transport / 2);
    t.duration_ns = transport - transport / 2;
    ek_profiler_add(rp->profiler, &t);
    return true;
}

/* A dump chunk or a launch's completion (the payload read). Dump chunks are written without holding mu (a
 * launch or run with a dump is kept until its completion, which comes after its chunks on this thread). */
static bool take_event(struct rdev *d, const struct ek_wire_header *h, uint8_t *payload, struct ek_rbuf *r) {
    pthread_mutex_lock(&d->mu);
    struct rlaunch *l = find_launch(d, h->request);
    struct rpending *p = l ? NULL : find_pending(d, h->request);
    struct rdump *dump = l && l->dump.dir ? &l->dump : p && p->dump ? p->dump : NULL;
    pthread_mutex_unlock(&d->mu);
    if (h->type == EK_MSG_DUMP_FILE) {
        if (dump && p) {
            /* A run's dump lives in its caller's frame: keep the caller (see finish) until written. */
            pthread_mutex_lock(&d->mu);
            bool waiting = find_pending(d, h->request) == p;
            if (waiting)
                d->sink_busy = p;
            pthread_mutex_unlock(&d->mu);
            if (waiting)
                write_dump_chunk(dump, r);
            pthread_mutex_lock(&d->mu);
            d->sink_busy = NULL;
            pthread_cond_broadcast(&d->cond);
            pthread_mutex_unlock(&d->mu);
        } else if (dump) {
            write_dump_chunk(dump, r);
        }
        free(payload);
        return true;
    }
    uint32_t status = ek_get_u32(r);
    char message[1024];
    ek_get_str(r, message, sizeof message);
    uint64_t now = ek_now_ns();
    bool ok = !r->bad;
    pthread_mutex_lock(&d->mu);
    if (ok && l && l->profile.profiler)
        ok = add_records(&l->profile, r, now, h->length, l->profile.network);
    if (ok && l) {
        if (status == EK_OK && l->dump.dir && l->dump.status != EK_OK) {
            status = (uint32_t)l->dump.status;
            snprintf(message, sizeof message, "%s", l->dump.error);
        }
        finish_launch_locked(d, l, (ek_status_t)status, message);
    }
    pthread_mutex_unlock(&d->mu);
    free(payload);
    if (!ok)
        ek_fail(EK_ERR_CONNECTION, "%s sent a malformed LAUNCH_DONE: %s", d->ch.peer, r->why ? r->why : "?");
    return ok;
}

/* A frame of the server's, header decoded, payload not yet read. Returns false when the connection
 * must be dropped (d->dead set). */
static bool take_frame(struct rdev *d, struct ek_wire_header *h) {
    uint16_t type = h->type;
    if (h->version != EK_REMOTE_PROTOCOL && type != (EK_MSG_HELLO | EK_MSG_REPLY)) {
        ek_fail(EK_ERR_VERSION, "%s sent a frame of protocol version %u in a session of version %d", d->ch.peer,
                h->version, EK_REMOTE_PROTOCOL);
        return false;
    }
    pthread_mutex_lock(&d->mu);
    struct rpending *p = (type & EK_MSG_REPLY) ? find_pending(d, h->request) : NULL;
    void *sink = p ? p->sink : NULL;
    size_t sink_len = p ? p->sink_len : 0;
    pthread_mutex_unlock(&d->mu);
    /* Unsealed READ replies go straight to the caller's buffer (a sealed one must be opened whole). */
    if (sink && !d->ch.secure && type == (EK_MSG_READ | EK_MSG_REPLY) && h->length == 12 + (uint64_t)sink_len) {
        uint8_t head[12];
        if (ek_wire_recv_all(&d->ch, head, sizeof head) != EK_OK)
            return false;
        struct ek_rbuf r;
        ek_rbuf_init(&r, head, sizeof head);
        uint32_t status = ek_get_u32(&r);
        uint64_t n = ek_get_u64(&r);
        if (status != EK_OK || n != sink_len) {
            ek_fail(EK_ERR_CONNECTION, "%s sent a READ reply that does not match its request", d->ch.peer);
            return false;
        }
        pthread_mutex_lock(&d->mu);
        bool wanted = find_pending(d, h->request) == p;
        if (wanted)
            d->sink_busy = p;
        pthread_mutex_unlock(&d->mu);
        /* A caller that gave up (a reply timeout) has left: drain the bytes instead. */
        ek_status_t got = EK_OK;
        if (wanted) {
            got = ek_wire_recv_all(&d->ch, sink, sink_len);
        } else {
            uint8_t drain[4096];
            for (size_t left = sink_len; left > 0 && got == EK_OK;) {
                size_t k = left < sizeof drain ? left : sizeof drain;
                got = ek_wire_recv_all(&d->ch, drain, k);
                left -= k;
            }
        }
        pthread_mutex_lock(&d->mu);
        d->sink_busy = NULL;
        pthread_cond_broadcast(&d->cond);
        pthread_mutex_unlock(&d->mu);
        if (got != EK_OK)
            return false;
        pthread_mutex_lock(&d->mu);
        if ((p = find_pending(d, h->request)) != NULL) {
            p->done = true;
            p->status = EK_OK;
        }
        pthread_cond_broadcast(&d->cond);
        pthread_mutex_unlock(&d->mu);
        return true;
    }
    uint8_t *payload = NULL;
    if (h->length) {
        if (!(payload = malloc((size_t)h->length))) {
            ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a reply of %llu bytes from %s",
                    (unsigned long long)h->length, d->ch.peer);
            return false;
        }
        if (ek_wire_recv_payload(&d->ch, h, payload) != EK_OK) {
            free(payload);
            return false;
        }
    }
    struct ek_rbuf r;
    ek_rbuf_init(&r, payload, (size_t)h->length);
    if (type == EK_MSG_DUMP_FILE || type == EK_MSG_LAUNCH_DONE)
        return take_event(d, h, payload, &r);
    uint32_t status = ek_get_u32(&r);
    char message[1024] = "";
    if (status != EK_OK)
        ek_get_str(&r, message, sizeof message);
    if (r.bad || status >= 1000) {
        free(payload);
        ek_fail(EK_ERR_CONNECTION, "%s sent a malformed frame (type 0x%04x): %s", d->ch.peer, type,
                r.why ? r.why : "an unknown status");
        return false;
    }
    bool keep = true;
    pthread_mutex_lock(&d->mu);
    if (type == EK_MSG_REPLY && h->request == 0) {
        /* The server closed the session over an error of its own: report it to everyone waiting. */
        ek_fail((ek_status_t)status, "%s", message);
        keep = false;
    } else if ((type & EK_MSG_REPLY) && (p = find_pending(d, h->request)) != NULL) {
        if (p->sink && status == EK_OK) {
            /* A READ that did not go straight to its buffer (a sealed session): copy it there. */
            size_t n;
            const uint8_t *bytes = ek_get_bytes(&r, p->sink_len, &n);
            if (r.bad || n != p->sink_len) {
                status = EK_ERR_CONNECTION;
                snprintf(message, sizeof message, "%s sent a READ reply that does not match its request",
                         d->ch.peer);
            } else {
                memcpy(p->sink, bytes, n);
            }
        }
        p->done = true;
        p->status = (ek_status_t)status;
        p->replied_ns = ek_now_ns();
        if (status != EK_OK)
            p->message = strdup(message);
        p->payload = payload;
        p->len = (size_t)h->length;
        p->body = r.pos;
        payload = NULL;
        pthread_cond_broadcast(&d->cond);
    } else if (type == (EK_MSG_RUN | EK_MSG_REPLY) || type == (EK_MSG_PING | EK_MSG_REPLY)) {
        /* A keepalive's answer, or a run whose caller gave up waiting. */
    } else if (!(type & EK_MSG_REPLY)) {
        ek_fail(EK_ERR_CONNECTION, "%s sent an unknown frame type 0x%04x", d->ch.peer, type);
        keep = false;
    }
    pthread_mutex_unlock(&d->mu);
    free(payload);
    return keep;
}

static void *reader_main(void *arg) {
    struct rdev *d = arg;
    char why[512] = "";
    int one = 1;
    for (;;) {
        /* ACK what arrives at once (Linux leaves quick-ACK mode by itself, so re-arm it): a relay with
         * Nagle's algorithm on, like sshd behind ssh -L, holds a second frame (a launch's completion
         * after its reply) until the first is ACKed, and a delayed ACK costs 40 ms. */
        setsockopt(d->ch.fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
        struct pollfd pfd = {d->ch.fd, POLLIN, 0};
        int n = poll(&pfd, 1, d->ping_ms);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(why, sizeof why, "poll: %s", strerror(errno));
            break;
        }
        if (n == 0) {
            /* Keep the session alive while the caller is idle; the reply is ignored. */
            pthread_mutex_lock(&d->send_mu);
            pthread_mutex_lock(&d->mu);
            uint64_t request = ++d->next_request;
            pthread_mutex_unlock(&d->mu);
            ek_status_t sent = ek_wire_send_frame(&d->ch, EK_MSG_PING, request, NULL, 0);
            pthread_mutex_unlock(&d->send_mu);
            if (sent != EK_OK) {
                snprintf(why, sizeof why, "%s", ek_last_error());
                break;
            }
            continue;
        }
        struct ek_wire_header h;
        if (ek_wire_recv_header(&d->ch, &h) != EK_OK || !take_frame(d, &h)) {
            snprintf(why, sizeof why, "%s", ek_last_error());
            break;
        }
    }
    pthread_mutex_lock(&d->mu);
    if (!d->dead) {
        char message[700];
        if (strstr(why, "closed the connection"))
            snprintf(message, sizeof message, "the connection to %s was lost: the board's remote_server stopped, "
                     "ended the session (idle timeout?) or the network dropped", d->ch.peer);
        else
            snprintf(message, sizeof message, "the connection to %s failed: %s", d->ch.peer, why);
        die_locked(d, EK_ERR_CONNECTION, message);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

static void *callbacks_main(void *arg) {
    struct rdev *d = arg;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (!d->cb_head && !d->callbacks_stop)
            pthread_cond_wait(&d->cb_cond, &d->mu);
        if (!d->cb_head)
            break;
        struct rlaunch *l = d->cb_head;
        d->cb_head = l->next_cb;
        if (!d->cb_head)
            d->cb_tail = NULL;
        l->users++; /* the callback may wait on its own launch */
        pthread_mutex_unlock(&d->mu);
        if (l->status != EK_OK)
            ek_fail(l->status, "%s", l->message);
        l->on_done(l->user_data, l->status);
        pthread_mutex_lock(&d->mu);
        l->users--;
        l->callback_ran = true;
        pthread_cond_broadcast(&d->cond);
        maybe_forget_locked(d, l);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* Requests answered when launches end (RUN, DEV_SYNC, RT_DESTROY) wait without the reply timeout: the
 * server's launch timeout bounds them, and the keepalive notices a dead connection. */
static bool waits_for_launches(uint16_t type) {
    return type == EK_MSG_RUN || type == EK_MSG_DEV_SYNC || type == EK_MSG_RT_DESTROY;
}

/* Send a request (fields, then `n` bytes of `data`); *out waits for its reply with finish(). A send
 * failure kills the connection, and finish() then reports it. */
static ek_status_t submit_parts(struct rdev *d, uint16_t type, const struct ek_wbuf *fields, const void *data, size_t n,
                                void *sink, size_t sink_len, struct rdump *dump, struct rpending **out) {
    *out = NULL;
    if (fields->failed)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a request");
    struct rpending *p = calloc(1, sizeof *p);
    if (!p)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a request");
    p->sink = sink;
    p->sink_len = sink_len;
    p->dump = dump;
    p->unbounded = waits_for_launches(type);
    pthread_mutex_lock(&d->send_mu);
    pthread_mutex_lock(&d->mu);
    if (d->dead) {
        ek_status_t status = ek_fail(d->dead_status, "%s", d->dead_msg);
        pthread_mutex_unlock(&d->mu);
        pthread_mutex_unlock(&d->send_mu);
        free(p);
        return status;
    }
    p->request = ++d->next_request;
    p->next = d->pending;
    d->pending = p;
    pthread_mutex_unlock(&d->mu);
    if (ek_wire_send_parts(&d->ch, type, p->request, fields->data, fields->len, data, n) != EK_OK) {
        char why[600];
        snprintf(why, sizeof why, "the connection to %s failed: %s", d->ch.peer, ek_last_error());
        pthread_mutex_lock(&d->mu);
        die_locked(d, EK_ERR_CONNECTION, why);
        pthread_mutex_unlock(&d->mu);
    }
    pthread_mutex_unlock(&d->send_mu);
    *out = p;
    return EK_OK;
}

static void unlink_pending_locked(struct rdev *d, struct rpending *p) {
    for (struct rpending **at = &d->pending; *at; at = &(*at)->next)
        if (*at == p) {
            *at = p->next;
            break;
        }
}

/* Wait for a request's reply. On EK_OK, *reply reads its body (valid until ek_rpending_free). */
static ek_status_t finish(struct rdev *d, struct rpending *p, struct ek_rbuf *reply) {
    struct timespec deadline = deadline_in(d->reply_ms);
    pthread_mutex_lock(&d->mu);
    while (!p->done) {
        if (p->unbounded) {
            pthread_cond_wait(&d->cond, &d->mu);
        } else if (pthread_cond_timedwait(&d->cond, &d->mu, &deadline) == ETIMEDOUT && !p->done) {
            char why[300];
            snprintf(why, sizeof why, "%s did not answer within %d ms (ek_remote_options_t.reply_timeout_ms); "
                     "the connection is closed", d->ch.peer, d->reply_ms);
            die_locked(d, EK_ERR_CONNECTION, why);
            shutdown(d->ch.fd, SHUT_RDWR);
        }
    }
    /* The reader may still be receiving into the caller's buffer: the buffer must outlive that. */
    while (d->sink_busy == p)
        pthread_cond_wait(&d->cond, &d->mu);
    unlink_pending_locked(d, p);
    pthread_mutex_unlock(&d->mu);
    ek_status_t status = p->status;
    if (status != EK_OK)
        ek_fail(status, "%s", p->message ? p->message : "");
    if (reply)
        ek_rbuf_init(reply, p->payload ? p->payload + p->body : NULL, p->payload ? p->len - p->body : 0);
    return status;
}

static void pending_free(struct rpending *p) {
    if (!p)
        return;
    free(p->payload);
    free(p->message);
    free(p);
}

/* One request and its reply; *reply (may be NULL) reads the body until pending_free(*held). */
static ek_status_t request(struct rdev *d, uint16_t type, const struct ek_wbuf *fields, struct rpending **held,
                           struct ek_rbuf *reply) {
    struct rpending *p;
    ek_status_t status = submit_parts(d, type, fields, NULL, 0, NULL, 0, NULL, &p);
    if (status == EK_OK)
        status = finish(d, p, reply);
    if (held)
        *held = p;
    else
        pending_free(p);
    return status;
}

/* One request, one reply, no body wanted. */
static ek_status_t call(struct rdev *d, uint16_t type, const struct ek_wbuf *fields) {
    return request(d, type, fields, NULL, NULL);
}

static ek_status_t bad_reply(struct rdev *d, const struct ek_rbuf *r, const char *what) {
    pthread_mutex_lock(&d->mu);
    char why[300];
    snprintf(why, sizeof why, "%s sent a malformed %s reply: %s", d->ch.peer, what, r->why ? r->why : "?");
    die_locked(d, EK_ERR_CONNECTION, why);
    pthread_mutex_unlock(&d->mu);
    shutdown(d->ch.fd, SHUT_RDWR);
    return ek_fail(EK_ERR_CONNECTION, "%s", why);
}

/* ---- slots and handles ---- */

static void free_nets(struct rnet *nets, int count) {
    for (int i = 0; i < count; i++) {
        free(nets[i].strings);
        free(nets[i].ios);
        free(nets[i].stages);
        free(nets[i].shapes);
    }
}

static void free_runtime(struct rrt *rt) {
    for (int i = 0; i < rt->net_count; i++) {
        free_nets(rt->nets[i], 1);
        free(rt->nets[i]);
    }
    free(rt->nets);
    free(rt);
}

#define R_DEVICE (EK_HANDLE_DEVICE | EK_HANDLE_REMOTE)
#define R_MEMORY (EK_HANDLE_MEMORY | EK_HANDLE_REMOTE)
#define R_RUNTIME (EK_HANDLE_RUNTIME | EK_HANDLE_REMOTE)
#define R_LAUNCH (EK_HANDLE_LAUNCH | EK_HANDLE_REMOTE)

/* The device a remote handle belongs to, locked (shared or exclusive), with the handle's object. */
static ek_status_t lock_object(uint64_t handle, enum ek_handle_kind kind, bool exclusive, bool freeing,
                               struct rdev **out, void **obj) {
    int owner;
    ek_status_t status = ek_handle_lookup(handle, kind, freeing, NULL, &owner);
    if (status != EK_OK)
        return status;
    struct rdev *d = &slots[owner];
    if (exclusive)
        pthread_rwlock_wrlock(&d->lock);
    else
        pthread_rwlock_rdlock(&d->lock);
    if ((status = ek_handle_lookup(handle, kind, freeing, obj, NULL)) != EK_OK) {
        pthread_rwlock_unlock(&d->lock);
        return status;
    }
    *out = d;
    return EK_OK;
}

static ek_status_t lock_device(ek_dev_t dev, bool exclusive, struct rdev **out) {
    return lock_object(dev.id, R_DEVICE, exclusive, false, out, NULL);
}

static void unlock(struct rdev *d) { pthread_rwlock_unlock(&d->lock); }

static ek_status_t lock_memory(ek_dev_t dev, ek_mem_t mem, bool exclusive, bool freeing, struct rdev **out,
                               struct rmem **rec) {
    struct rdev *d;
    ek_status_t status = lock_device(dev, exclusive, &d);
    if (status != EK_OK)
        return status;
    void *obj;
    int owner;
    if (!EK_IS_REMOTE(mem.id)) {
        /* A local device's memory, or no memory at all (0, never issued, freed): the handle says which. */
        if ((status = ek_handle_lookup(mem.id, EK_HANDLE_MEMORY, freeing, NULL, NULL)) == EK_OK)
            status = ek_fail(EK_ERR_DEVICE_MISMATCH, "memory 0x%016" PRIx64 " is a local device's; device "
                             "0x%016" PRIx64 " is remote (%s)", mem.id, dev.id, d->ch.peer);
    } else if ((status = ek_handle_lookup(mem.id, R_MEMORY, freeing, &obj, &owner)) == EK_OK && &slots[owner] != d)
        status = ek_fail(EK_ERR_DEVICE_MISMATCH, "memory 0x%016" PRIx64 " belongs to another remote device than "
                         "0x%016" PRIx64, mem.id, dev.id);
    if (status != EK_OK) {
        unlock(d);
        return status;
    }
    *out = d;
    *rec = obj;
    return EK_OK;
}

/* Close the connection and free everything of a device whose last reference went (not locked). */
static void teardown(struct rdev *d) {
    /* First stop the threads, without the device lock: a last callback may still call in (and fail). */
    pthread_mutex_lock(&d->mu);
    die_locked(d, EK_ERR_CONNECTION, "the remote device was closed");
    d->callbacks_stop = true;
    pthread_cond_broadcast(&d->cb_cond);
    pthread_mutex_unlock(&d->mu);
    shutdown(d->ch.fd, SHUT_RDWR);
    if (d->reader_started)
        pthread_join(d->reader, NULL);
    if (d->callbacks_started)
        pthread_join(d->callbacks, NULL);
    pthread_rwlock_wrlock(&d->lock);
    pthread_mutex_lock(&d->mu);
    /* Threads still inside ek_launch_wait leave now that everything is done. */
    for (;;) {
        bool busy = false;
        for (struct rlaunch *l = d->launches; l; l = l->next)
            busy |= l->users > 0;
        if (!busy)
            break;
        pthread_cond_wait(&d->cond, &d->mu);
    }
    while (d->launches) {
        struct rlaunch *l = d->launches;
        d->launches = l->next;
        if (l->handle)
            ek_handle_retire(l->handle, R_LAUNCH);
        free_rlaunch(l);
    }
    pthread_mutex_unlock(&d->mu);
    ek_handle_retire(d->self, R_DEVICE);
    while (d->mems) {
        struct rmem *m = d->mems;
        d->mems = m->next;
        ek_handle_retire(m->handle, R_MEMORY);
        free(m->shadow);
        free(m);
    }
    while (d->rts) {
        struct rrt *rt = d->rts;
        d->rts = rt->next;
        ek_handle_retire(rt->handle, R_RUNTIME);
        free_runtime(rt);
    }
    while (d->pending) {
        struct rpending *p = d->pending;
        d->pending = p->next;
        pending_free(p);
    }
    close(d->ch.fd);
    d->ch.fd = -1;
    ek_channel_wipe(&d->ch);
    pthread_rwlock_unlock(&d->lock);
    pthread_mutex_lock(&slots_lock);
    d->used = false;
    pthread_mutex_unlock(&slots_lock);
}

static void release_ref(struct rdev *d) {
    pthread_mutex_lock(&slots_lock);
    bool last = --d->refs == 0;
    pthread_mutex_unlock(&slots_lock);
    if (last)
        teardown(d);
}

/* ---- connecting ---- */

static ek_status_t parse_url(const char *url, char *host, size_t host_cap, char *port, size_t port_cap) {
    if (strncmp(url, "tcp://", 6) != 0) {
        if (strncmp(url, "ssh://", 6) == 0)
            return ek_fail(EK_ERR_INVALID_ARG, "'%s': the C API connects to tcp:// URLs only; for SSH forward a "
                           "port (ssh -tt -L 9090:127.0.0.1:9090 %s sleep infinity, then tcp://127.0.0.1:9090) or use the Python "
                           "API, which opens the SSH channel itself", url, url + 6);
        return ek_fail(EK_ERR_INVALID_ARG, "'%s' is not a remote device URL: expected tcp://HOST[:PORT]", url);
    }
    const char *at = url + 6, *end;
    if (*at == '[') {
        end = strchr(at, ']');
        if (!end)
            return ek_fail(EK_ERR_INVALID_ARG, "'%s': an IPv6 address needs its closing ']'", url);
        snprintf(host, host_cap, "%.*s", (int)(end - at - 1), at + 1);
        end++;
    } else {
        end = at + strcspn(at, ":/");
        snprintf(host, host_cap, "%.*s", (int)(end - at), at);
    }
    if (!*host)
        return ek_fail(EK_ERR_INVALID_ARG, "'%s' names no host: expected tcp://HOST[:PORT]", url);
    snprintf(port, port_cap, "%d", EK_REMOTE_DEFAULT_PORT);
    if (*end == ':') {
        char *stop;
        errno = 0;
        long p = strtol(end + 1, &stop, 10);
        if (errno || stop == end + 1 || p < 1 || p > 65535 || (*stop && strcmp(stop, "/") != 0))
            return ek_fail(EK_ERR_INVALID_ARG, "'%s': the port must be a number from 1 to 65535", url);
        snprintf(port, port_cap, "%ld", p);
    } else if (*end && strcmp(end, "/") != 0) {
        return ek_fail(EK_ERR_INVALID_ARG, "'%s' is not a remote device URL: expected tcp://HOST[:PORT]", url);
    }
    return EK_OK;
}

static ek_status_t dial(const char *url, int timeout_ms, int *out) {
    char host[256], port[16];
    ek_status_t status = parse_url(url, host, sizeof host, port, sizeof port);
    if (status != EK_OK)
        return status;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *found;
    int rc = getaddrinfo(host, port, &hints, &found);
    if (rc != 0)
        return ek_fail(EK_ERR_CONNECTION, "cannot resolve '%s' (%s): %s", host, url, gai_strerror(rc));
    int err = ECONNREFUSED;
    for (struct addrinfo *a = found; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
            err = errno;
            close(fd);
            continue;
        }
        struct pollfd pfd = {fd, POLLOUT, 0};
        int n;
        do
            n = poll(&pfd, 1, timeout_ms);
        while (n < 0 && errno == EINTR);
        int so_error = 0;
        socklen_t len = sizeof so_error;
        if (n == 0)
            so_error = ETIMEDOUT;
        else if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len) != 0)
            so_error = errno;
        if (so_error) {
            err = so_error;
            close(fd);
            continue;
        }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        freeaddrinfo(found);
        *out = fd;
        return EK_OK;
    }
    freeaddrinfo(found);
    return ek_fail(EK_ERR_CONNECTION, "cannot connect to %s: %s%s", url, strerror(err),
                   err == ECONNREFUSED ? " (is remote_server running there? start it with invoke serve, or "
                                         "systemctl start edgekit-remote-server on the board)" : "");
}

/* A paired server: prove the key (by its id) and agree on session keys; the channel is sealed after. */
static ek_status_t pair_with(struct rdev *d, const char *key_file, int timeout_ms) {
    uint8_t key[EK_KEY_BYTES], id[EK_KEY_ID_BYTES], client_nonce[32];
    ek_status_t status = ek_key_load(key_file, key);
    if (status != EK_OK)
        return status;
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(d->ch.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(d->ch.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    ek_key_id(key, id);
    ek_random(client_nonce, sizeof client_nonce);
    struct ek_wbuf b;
    ek_wbuf_init(&b);
    ek_put_u32(&b, 1);
    ek_put_bytes(&b, id, sizeof id);
    ek_put_bytes(&b, client_nonce, sizeof client_nonce);
    status = ek_wire_send_frame(&d->ch, EK_MSG_PAIR, 1, b.data, b.len);
    ek_wbuf_free(&b);
    struct ek_wire_header h;
    uint8_t *payload = NULL;
    if (status == EK_OK)
        status = ek_wire_recv_frame(&d->ch, &h, &payload);
    if (status == EK_OK) {
        struct ek_rbuf r;
        ek_rbuf_init(&r, payload, (size_t)h.length);
        uint32_t code = ek_get_u32(&r);
        char message[1024] = "";
        size_t n = 0;
        const uint8_t *server_nonce = NULL;
        if (code != EK_OK)
            ek_get_str(&r, message, sizeof message);
        else
            server_nonce = ek_get_bytes(&r, 32, &n);
        if (code != EK_OK)
            status = ek_fail(code < EK_STATUS_COUNT ? (ek_status_t)code : EK_ERR_CONNECTION, "%s: %s", d->ch.peer,
                             message);
        else if (r.bad || n != 32 || h.type != (EK_MSG_PAIR | EK_MSG_REPLY))
            status = ek_fail(EK_ERR_CONNECTION, "%s answered the pairing with a malformed frame (type 0x%04x)",
                             d->ch.peer, h.type);
        else
            ek_channel_secure(&d->ch, key, client_nonce, server_nonce, false);
    } else {
        char why[512];
        snprintf(why, sizeof why, "%s", ek_last_error());
        status = ek_fail(EK_ERR_CONNECTION, "pairing with %s failed: %s", d->ch.peer, why);
    }
    free(payload);
    memset(key, 0, sizeof key);
    return status;
}

/* The handshake and opening the device, before the reader thread starts. */
static ek_status_t hello(struct rdev *d, int timeout_ms) {
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(d->ch.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(d->ch.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct ek_wbuf b;
    ek_wbuf_init(&b);
    ek_put_u32(&b, EK_REMOTE_PROTOCOL);
    ek_put_u32(&b, EK_REMOTE_PROTOCOL);
    ek_put_str(&b, ek_version());
    ek_put_str(&b, ek_wire_arch());
    ek_status_t status = b.failed ? ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a handshake")
                                  : ek_wire_send_frame(&d->ch, EK_MSG_HELLO, 1, b.data, b.len);
    ek_wbuf_free(&b);
    struct ek_wire_header h;
    uint8_t *payload = NULL;
    if (status == EK_OK && (status = ek_wire_recv_frame(&d->ch, &h, &payload)) != EK_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", ek_last_error());
        return ek_fail(EK_ERR_CONNECTION, "the handshake with %s failed: %s%s", d->ch.peer, why,
                       status == EK_ERR_TIMEOUT ? " (no answer: is that port a remote_server?)" : "");
    }
    if (status != EK_OK)
        return status;
    struct ek_rbuf r;
    ek_rbuf_init(&r, payload, (size_t)h.length);
    uint32_t code = ek_get_u32(&r);
    char message[1024] = "";
    if (h.type != (EK_MSG_HELLO | EK_MSG_REPLY) && h.type != EK_MSG_REPLY) {
        free(payload);
        return ek_fail(EK_ERR_CONNECTION, "%s answered the handshake with frame type 0x%04x, not HELLO's reply: "
                       "not an EdgeKit remote_server", d->ch.peer, h.type);
    }
    if (code != EK_OK) {
        ek_get_str(&r, message, sizeof message);
        free(payload);
        return ek_fail(code < EK_STATUS_COUNT ? (ek_status_t)code : EK_ERR_CONNECTION, "%s", message);
    }
    if (h.version != EK_REMOTE_PROTOCOL) {
        free(payload);
        return ek_fail(EK_ERR_VERSION, "%s answered in remote protocol %u; this EdgeKit (%s) speaks %d: install "
                       "the same EdgeKit release on the host and the board", d->ch.peer, h.version, ek_version(),
                       EK_REMOTE_PROTOCOL);
    }
    ek_remote_info_t *info = &d->info;
    info->remote = true;
    info->protocol = (int)ek_get_u32(&r);
    ek_get_str(&r, info->runtime_version, sizeof info->runtime_version);
    ek_get_str(&r, info->arch, sizeof info->arch);
    info->model_format_major = (int)ek_get_u32(&r);
    info->model_format_minor = (int)ek_get_u32(&r);
    info->devices = (int)ek_get_u32(&r);
    ek_get_str(&r, info->kernels, sizeof info->kernels);
    info->threads = (int)ek_get_u32(&r);
    uint32_t idle_ms = ek_get_u32(&r);
    bool bad = r.bad;
    free(payload);
    if (bad)
        return ek_fail(EK_ERR_CONNECTION, "%s sent a malformed handshake reply", d->ch.peer);
    /* Ping well inside the server's idle timeout: every third of it (at most 10 per second). */
    d->ping_ms = idle_ms >= 300 ? (int)(idle_ms / 3) : 100;
    snprintf(info->url, sizeof info->url, "%s", d->ch.peer);
    return EK_OK;
}

static ek_status_t open_device(struct rdev *d, int id, const ek_dev_config_t *config) {
    struct ek_wbuf b;
    ek_wbuf_init(&b);
    ek_put_i64(&b, id);
    ek_put_u64(&b, config->heap_size);
    ek_put_u32(&b, (uint32_t)config->coherence);
    ek_put_u32(&b, (uint32_t)config->backing);
    ek_status_t status = ek_wire_send_frame(&d->ch, EK_MSG_DEV_OPEN, 2, b.data, b.len);
    ek_wbuf_free(&b);
    struct ek_wire_header h;
    uint8_t *payload = NULL;
    if (status == EK_OK)
        status = ek_wire_recv_frame(&d->ch, &h, &payload);
    if (status != EK_OK)
        return status;
    struct ek_rbuf r;
    ek_rbuf_init(&r, payload, (size_t)h.length);
    uint32_t code = ek_get_u32(&r);
    char message[1024] = "";
    if (code != EK_OK)
        ek_get_str(&r, message, sizeof message);
    free(payload);
    if (r.bad || h.type != (EK_MSG_DEV_OPEN | EK_MSG_REPLY))
        return ek_fail(EK_ERR_CONNECTION, "%s sent a malformed DEV_OPEN reply", d->ch.peer);
    if (code != EK_OK)
        return ek_fail(code < EK_STATUS_COUNT ? (ek_status_t)code : EK_ERR_CONNECTION, "%s (on %s)", message,
                       d->ch.peer);
    struct timeval none = {0, 0};
    setsockopt(d->ch.fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
    return EK_OK;
}

ek_status_t ek_dev_connect_fd(ek_dev_t *handle, int fd, const char *label, int id, const ek_remote_options_t *options) {
    pthread_once(&slots_once, init_slots);
    if (!handle) {
        if (fd >= 0)
            close(fd);
        return ek_fail(EK_ERR_INVALID_ARG, "ek_dev_connect: handle is NULL");
    }
    handle->id = 0;
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        return ek_fail(EK_ERR_INVALID_ARG, "ek_dev_connect_fd: %d is not a connected socket", fd);
    }
    ek_remote_options_t o = {0};
    if (options)
        o = *options;
    if (o.connect_timeout_ms < 0 || o.reply_timeout_ms < 0) {
        close(fd);
        return ek_fail(EK_ERR_INVALID_ARG, "ek_remote_options_t: timeouts must not be negative");
    }
    pthread_mutex_lock(&slots_lock);
    struct rdev *d = NULL;
    for (int i = 0; i < EK_MAX_REMOTE_DEVICES && !d; i++)
        if (!slots[i].used)
            d = &slots[i];
    if (d) {
        d->used = true;
        d->refs = 1;
    }
    pthread_mutex_unlock(&slots_lock);
    if (!d) {
        close(fd);
        return ek_fail(EK_ERR_BUSY, "this process has %d remote devices open, the most it may (EK_MAX_REMOTE_DEVICES)",
                       EK_MAX_REMOTE_DEVICES);
    }
    /* The slot is ours alone until its handle exists. */
    d->ch.fd = fd;
    d->id = id;
    memset(&d->info, 0, sizeof d->info);
    if (label && *label)
        snprintf(d->ch.peer, sizeof d->ch.peer, "%s", label);
    else
        snprintf(d->ch.peer, sizeof d->ch.peer, "fd %d", fd);
    d->reply_ms = o.reply_timeout_ms ? o.reply_timeout_ms : DEFAULT_REPLY_MS;
    d->progress = o.progress;
    d->progress_user = o.progress_user_data;
    d->next_request = 2;
    d->pending = NULL;
    d->launches = NULL;
    d->mems = NULL;
    d->rts = NULL;
    d->dead = false;
    d->sync_error = EK_OK;
    d->reader_started = d->callbacks_started = d->callbacks_stop = false;
    d->cb_head = d->cb_tail = NULL;
    int one = 1, idle = 15, interval = 5, probes = 4;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* these fail harmlessly on a Unix socket */
    /* A board that vanishes (power, cable) is noticed in about 35 s even while a call waits on it:
     * its kernel answers keepalive probes whatever its server is busy with, so a long model load is
     * not mistaken for a dead board. */
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
    int timeout = o.connect_timeout_ms ? o.connect_timeout_ms : DEFAULT_CONNECT_MS;
    d->ch.secure = false;
    ek_status_t status = o.key_file && *o.key_file ? pair_with(d, o.key_file, timeout) : EK_OK;
    if (status == EK_OK)
        status = hello(d, timeout);
    if (status == EK_OK)
        status = open_device(d, id, &o.device_config);
    d->handle = d->self = 0;
    if (status == EK_OK && (!(d->handle = ek_handle_new(R_DEVICE, d, (int)(d - slots))) ||
                            !(d->self = ek_handle_new(R_DEVICE, d, (int)(d - slots)))))
        status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no room for another device handle");
    if (status == EK_OK) {
        int rc = pthread_create(&d->reader, NULL, reader_main, d);
        if (rc == 0)
            d->reader_started = true;
        else
            status = ek_fail(EK_ERR_SYSTEM, "cannot start the reader thread of a remote device: %s", strerror(rc));
    }
    if (status != EK_OK && d->handle)
        ek_handle_retire(d->handle, R_DEVICE);
    if (status != EK_OK && d->self)
        ek_handle_retire(d->self, R_DEVICE);
    if (status != EK_OK) {
        close(fd);
        d->ch.fd = -1;
        ek_channel_wipe(&d->ch);
        pthread_mutex_lock(&slots_lock);
        d->used = false;
        pthread_mutex_unlock(&slots_lock);
        return status;
    }
    handle->id = d->handle;
    return EK_OK;
}

ek_status_t ek_dev_connect(ek_dev_t *handle, const char *url, int id, const ek_remote_options_t *options) {
    if (!handle || !url)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_dev_connect: %s is NULL", !handle ? "handle" : "url");
    handle->id = 0;
    int timeout = options && options->connect_timeout_ms > 0 ? options->connect_timeout_ms : DEFAULT_CONNECT_MS;
    int fd;
    ek_status_t status = dial(url, timeout, &fd);
    if (status != EK_OK)
        return status;
    return ek_dev_connect_fd(handle, fd, url, id, options);
}

ek_status_t ek_dev_remote_info(ek_dev_t handle, ek_remote_info_t *info) {
    if (!info)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_dev_remote_info: info is NULL");
    memset(info, 0, sizeof *info);
    if (!EK_IS_REMOTE(handle.id))
        return ek_handle_get(handle.id, EK_HANDLE_DEVICE, NULL, NULL);
    struct rdev *d;
    ek_status_t status = lock_device(handle, false, &d);
    if (status != EK_OK)
        return status;
    *info = d->info;
    unlock(d);
    return EK_OK;
}

/* ---- device calls ---- */

ek_status_t ek_rc_dev_free(ek_dev_t handle) {
    pthread_once(&slots_once, init_slots);
    struct rdev *d;
    ek_status_t status = lock_object(handle.id, R_DEVICE, true, true, &d, NULL);
    if (status != EK_OK)
        return status;
    if (d->callbacks_started && pthread_equal(pthread_self(), d->callbacks)) {
        unlock(d);
        return ek_fail(EK_ERR_BUSY, "a remote device cannot be closed from one of its launches' on_done callbacks");
    }
    status = ek_handle_retire(handle.id, R_DEVICE);
    unlock(d);
    if (status == EK_OK)
        release_ref(d);
    return status;
}

ek_status_t ek_rc_dev_id(ek_dev_t handle, int *id) {
    struct rdev *d;
    ek_status_t status = lock_device(handle, false, &d);
    if (status == EK_OK) {
        *id = d->id;
        unlock(d);
    }
    return status;
}

ek_status_t ek_rc_dev_sync(ek_dev_t handle) {
    struct rdev *d;
    ek_status_t status = lock_device(handle, false, &d);
    if (status != EK_OK)
        return status;
    if (d->callbacks_started && pthread_equal(pthread_self(), d->callbacks)) {
        unlock(d);
        return ek_fail(EK_ERR_BUSY, "ek_dev_sync in a launch's on_done callback would wait for itself");
    }
    struct ek_wbuf b;
    ek_wbuf_init(&b);
    status = call(d, EK_MSG_DEV_SYNC, &b);
    ek_wbuf_free(&b);
    /* The server answers after every launch's completion, so they have all arrived. Wait for their
     * callbacks too, as a local sync does, without the device lock: a callback may take it exclusively
     * (ek_free_device, a load), and would wait for us as we wait for it. A reference keeps the device. */
    pthread_mutex_lock(&slots_lock);
    d->refs++;
    pthread_mutex_unlock(&slots_lock);
    unlock(d);
    pthread_mutex_lock(&d->mu);
    for (;;) {
        bool busy = d->cb_head != NULL;
        for (struct rlaunch *l = d->launches; l; l = l->next)
            busy |= l->done && !l->callback_ran;
        if (!busy || d->dead)
            break;
        pthread_cond_wait(&d->cond, &d->mu);
    }
    if (status == EK_OK && d->sync_error != EK_OK) {
        status = ek_fail(d->sync_error, "%s", d->sync_msg);
        d->sync_error = EK_OK;
    }
    pthread_mutex_unlock(&d->mu);
    release_ref(d);
    return status;
}

ek_status_t ek_rc_dev_heap_stats(ek_dev_t handle, ek_heap_stats_t *stats) {
    struct rdev *d;
    ek_status_t status = lock_device(handle, false, &d);
    if (status != EK_OK)
        return status;
    struct ek_wbuf b;
    ek_wbuf_init(&b);
    struct rpending *p = NULL;
    struct ek_rbuf r;
    status = request(d, EK_MSG_DEV_STATS, &b, &p, &r);
    ek_wbuf_free(&b);
    if (status == EK_OK) {
        stats->total = (size_t)ek_get_u64(&r);
        stats->used = (size_t)ek_get_u64(&r);
        stats->peak = (size_t)ek_get_u64(&r);
        stats->free = (size_t)ek_get_u64(&r);
        stats->largest_free = (size_t)ek_get_u64(&r);
        stats->allocations = (size_t)ek_get_u64(&r);
        stats->alignment = (size_t)ek_get_u64(&r);
        stats->coherence = (ek_coherence_t)ek_get_u64(&r);
        stats->backing = (ek_backing_t)ek_get_u64(&r);
        if (r.bad)
            status = bad_reply(d, &r, "DEV_STATS");
    }
    pending_free(p);
    unlock(d);
    return status;
}

/* The local handle of the memory a server id names (mu held); 0 when it is not this client's. */
static uint64_t local_mem_of_wire(struct rdev *d, uint64_t wire) {
    for (struct rmem *m = d->mems; m; m = m->next)
        if (m->wire == wire)
            return m->handle;
    return 0;
}

ek_status_t ek_rc_dev_coherence_report(ek_dev_t handle, ek_coh_violation_t *out, size_t capacity, size_t *count) {
    struct rdev *d;
    ek_status_t status = lock_device(handle, false, &d);
    if (status != EK_OK)
        return status;
    struct ek_wbuf b;
    ek_wbuf_init(&b);
    ek_put_u32(&b, capacity > EK_MAX_VIOLATIONS ? EK_MAX_VIOLATIONS : (uint32_t)capacity);
    struct rpending *p = NULL;
    struct ek_rbuf r;
    status = request(d, EK_MSG_DEV_COH_REPORT, &b, &p, &r);
    ek_wbuf_free(&b);
    if (status == EK_OK) {
        *count = (size_t)ek_get_u64(&r);
        uint32_t n = ek_get_u32(&r);
        pthread_mutex_lock(&d->mu);
        for (uint32_t i = 0; i < n && !r.bad; i++) {
            ek_coh_violation_t v;
            memset(&v, 0, sizeof v);
            v.kind = (ek_coh_kind_t)ek_get_u32(&r);
            v.mem = local_mem_of_wire(d, ek_get_u64(&r));
            v.offset = (size_t)ek_get_u64(&r);
            v.size = (size_t)ek_get_u64(&r);
            ek_get_str(&r, v.what, sizeof v.what);
            if (i < capacity)
                out[i] = v;
        }
        pthread_mutex_unlock(&d->mu);
        if (r.bad)
            status = bad_reply(d, &r, "DEV_COH_REPORT");
    }
    pending_free(p);
    unlock(d);
    return status;
}

ek_status_t ek_rc_dev_coherence_clear(ek_dev_t handle) {
    struct rdev *d;
    ek_status_t status = lock_device(handle, false, &d);
    if (status != EK_OK)
        return status;
    struct ek_wbuf b;
    ek_wbuf_init(&b);
    status = call(d, EK_MSG_DEV_COH_CLEAR, &b);
    ek_wbuf_free(&b);
    unlock(d);
    return status;
}

/* ---- memory ---- */

/* A new local record and handle for server memory `wire` (the device locked). */
static ek_status_t adopt_memory(struct rdev *d, uint64_t wire, size_t size, ek_mem_t *mem) {
    struct rmem *m = calloc(1, sizeof *m);
    if (!m)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a memory record");
    m->wire = wire;
    m->size = size;
    if (!(m->handle = ek_handle_new(R_MEMORY, m, (int)(d - slots)))) {
        free(m);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no room for another memory handle");
    }
    pthread_mutex_lock(&d->mu);
    m->next = d->mems;
    if (d->mems)
        d->mems->prev = m;
    d->mems = m;
    pthread_mutex_unlock(&d->mu);
    mem->id = m->handle;
    return EK_OK;
}

static void send_free(struct rdev *d, uint64_t wire) {
    struct ek_wbuf b;
    ek_wbuf_init(&b);
    ek_put_u64(&b, wire);
    call(d, EK_MSG_FREE, &b);
    ek_wbuf_free(&b);
}

ek_status_t ek_rc_malloc(ek_dev_t dev, ek_mem_t *mem, size_t size) {
    struct rdev *d;
    ek_status_t status = lock_device(dev, false, &d);
    if (status != EK_OK)
        return status;
    struct ek_wbuf b;
    ek_wbuf_init(&b);
    ek_put_u64(&b, size);
    struct rpending *p = NULL;
    struct ek_rbuf r;
    status = request(d, EK_MSG_MALLOC, &b, &p, &r);
    ek_wbuf_free(&b);
    if (status == EK_OK) {
        uint64_t wire = ek_get_u64(&r);
        if (r.bad)
            status = bad_reply(d, &r, "MALLOC");
        else if ((status = adopt_memory(d, wire, size, mem)) != EK_OK)
            send_free(d, wire);
    }
    pending_free(p);
    unlock(d);
    return status;
}

static void drop_memory(struct rdev *d, struct rmem *m) {
    pthread_mutex_lock(&d->mu);
    if (m->prev)
        m->prev->next = m->next;
    else
        d->mems = m->next;
    if (m->next)
        m->next->prev = m->prev;
    pthread_mutex_unlock(&d->mu);
    ek_handle_retire(m->handle, R_MEMORY);
    free(m->shadow);
    free(m);
}

ek_status_t ek_rc_free(ek_dev_t dev, ek_mem_t mem) {
    struct rdev *d;
    struct rmem *m;
    ek_status_t status = lock_memory(dev, mem, true, true, &d, &m);
    if (status != EK_OK)
        return status;
    struct ek_wbuf b;
    ek_wbuf_init(&b);
    ek_put_u64(&b, m->wire);
    status = call(d, EK_MSG_FREE, &b);
    ek_wbuf_free(&b);
    /* Gone on the board, or the board is gone (its session freed everything): either way the handle is
     * done, and freed, as ek_rt_destroy of a runtime whose connection was lost. */
    if (status == EK_ERR_CONNECTION)
        status = EK_OK;
    if (status == EK_OK)
        drop_memory(d, m);
    unlock(d);
    return status;
}

ek_status_t ek_rc_mem_size(ek_mem_t mem, size_t *size) {
    struct rdev *d;
    void *obj;
    ek_status_t status = lock_object(mem.id, R_MEMORY, false, false, &d, &obj);
    if (status == EK_OK) {
        *size = ((struct rmem *)obj)->size;
        unlock(d);
    }
    return status;
}

/* The words of a local device's check (memory.c), so a remote call fails as a local one does. */
static ek_status_t check_range(const struct rmem *m, size_t offset, size_t size, const char *call_name) {
    if (size == 0)
        return ek_fail(EK_ERR_INVALID_ARG, "%s: size is 0; give at least one byte", call_name);
    if (offset > m->size || size > m->size - offset)
        return ek_fail(EK_ERR_OUT_OF_RANGE, "%s: %zu byte%s at offset %zu go%s past the end of memory 0x%016" PRIx64
                       " (%zu bytes)", call_name, size, size == 1 ? "" : "s", offset, size == 1 ? "es" : "",
                       m->handle, m->size);
    return EK_OK;
}

enum bulk_kind { BULK_WRITE, BULK_READ, BULK_UPLOAD };

/* Move [offset, offset + size) of server object `wire` in chunks, up to WINDOW of them in flight:
 * WRITE and UPLOAD send from `host`, READ receives into it. Progress is reported as chunks complete. */
static ek_status_t bulk(struct rdev *d, enum bulk_kind kind, uint64_t wire, uint8_t *host, size_t offset,
                        size_t size) {
    static const char *const names[] = {"upload", "download", "model"};
    struct rpending *window[WINDOW] = {0};
    size_t done = 0, sent = 0;
    unsigned head = 0, inflight = 0;
    ek_status_t status = EK_OK;
    while ((sent < size || inflight > 0) && status == EK_OK) {
        if (sent < size && inflight < WINDOW) {
            size_t n = size - sent < EK_WIRE_CHUNK ? size - sent : EK_WIRE_CHUNK;
            struct ek_wbuf b;
            ek_wbuf_init(&b);
            ek_put_u64(&b, kind == BULK_UPLOAD ? size : wire);
            ek_put_u64(&b, offset + sent);
            ek_put_u64(&b, n);
            struct rpending *p;
            if (kind == BULK_READ)
                status = submit_parts(d, EK_MSG_READ, &b, NULL, 0, host + sent, n, NULL, &p);
            else
                status = submit_parts(d, kind == BULK_WRITE ? EK_MSG_WRITE : EK_MSG_UPLOAD, &b, host + sent, n, NULL,
                                      0, NULL, &p);
            ek_wbuf_free(&b);
            if (status != EK_OK)
                break;
            window[(head + inflight) % WINDOW] = p;
            inflight++;
            sent += n;
            continue;
        }
        struct rpending *p = window[head];
        head = (head + 1) % WINDOW;
        inflight--;
        status = finish(d, p, NULL);
        pending_free(p);
        done += size - done < EK_WIRE_CHUNK ? size - done : EK_WIRE_CHUNK;
        if (status == EK_OK && d->progress && size >= PROGRESS_MIN)
            d->progress(d->progress_user, names[kind], done, size);
    }
    /* After a failure, collect what is still in flight (its replies, or the connection's death). */
    char why[512];
    snprintf(why, sizeof why, "%s", ek_last_error());
    while (inflight > 0) {
        struct rpending *p = window[head];
        head = (head + 1) % WINDOW;
        inflight--;
        finish(d, p, NULL);
        pending_free(p);
    }
    if (status != EK_OK)
        ek_fail(status, "%s", why);
    return status;
}

ek_status_t ek_rc_copy_host(ek_dev_t dev, ek_mem_t mem, void *host, size_t size, size_t offset, bool whole,
                            bool to_device, const char *call_name) {
    struct rdev *d;
    struct rmem *m;
    ek_status_t status = lock_memory(dev, mem, false, false, &d, &m);
    if (status != EK_OK)
        return status;
    if (whole)
        size = m->size;
    if ((status = check_range(m, offset, size, call_name)) == EK_OK)
        status = bulk(d, to_device ? BULK_WRITE : BULK_READ, m->wire, host, offset, size);
    unlock(d);
    return status;
}

ek_status_t ek_rc_memcpy_d2d(ek_dev_t dev, ek_mem_t dst, size_t dst_offset, ek_mem_t src, size_t src_offset,
                             size_t size) {
    struct rdev *d;
    struct rmem *a;
    ek_status_t status = lock_memory(dev, dst, false, false, &d, &a);
    if (status != EK_OK)
        return status;
    void *obj = NULL;
    int owner;
    bool mine = false;
    if (!EK_IS_REMOTE(src.id))
        status = ek_handle_get(src.id, EK_HANDLE_MEMORY, NULL, NULL); /* a local device's, or no memory at all */
    else if ((status = ek_handle_get(src.id, R_MEMORY, &obj, &owner)) == EK_OK)
        mine = &slots[owner] == d;
    if (status == EK_OK && !mine)
        status = ek_fail(EK_ERR_DEVICE_MISMATCH, "ek_memcpy_d2d: src 0x%016" PRIx64 " is not memory of the remote "
                         "device 0x%016" PRIx64, src.id, dev.id);
    if (status != EK_OK) {
        unlock(d);
        return status;
    }
    struct rmem *b_mem = obj;
    if ((status = check_range(b_mem, src_offset, size, "ek_memcpy_d2d (source)")) == EK_OK &&
        (status = check_range(a, dst_offset, size, "ek_memcpy_d2d (destination)")) == EK_OK) {
        struct ek_wbuf b;
        ek_wbuf_init(&b);
        ek_put_u64(&b, a->wire);
        ek_put_u64(&b, dst_offset);
        ek_put_u64(&b, b_mem->wire);
        ek_put_u64(&b, src_offset);
        ek_put_u64(&b, size);
        status = call(d, EK_MSG_COPY, &b);
        ek_wbuf_free(&b);
    }
    unlock(d);
    return status;
}

/* Mapping: a host copy. Like strict coherence, flush sends and invalidate fetches. */
ek_status_t ek_rc_mmap(ek_dev_t dev, ek_mem_t mem, void **addr) {
    struct rdev *d;
    struct rmem *m;
    ek_status_t status = lock_memory(dev, mem, true, false, &d, &m);
    if (status != EK_OK)
        return status;
    if (m->map_count == INT32_MAX) {
        unlock(d);
        return ek_fail(EK_ERR_BUSY, "memory 0x%016" PRIx64 " is mapped INT_MAX times", mem.id);
    }
    if (!m->shadow) {
        size_t bytes = (m->size + 63) / 64 * 64;
        if (!(m->shadow = aligned_alloc(64, bytes))) {
            unlock(d);
            return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a %zu-byte mapping of remote memory", m->size);
        }
        /* A new mapping shows the memory as it is. */
        if ((status = bulk(d, BULK_READ, m->wire, m->shadow, 0, m->size)) != EK_OK) {
            free(m->shadow);
            m->shadow = NULL;
            unlock(d);
            return status;
        }
    }
    m->map_count++;
    *addr = m->shadow;
    unlock(d);
    return EK_OK;
}

ek_status_t ek_rc_unmap(ek_dev_t dev, ek_mem_t mem) {
    struct rdev *d;
    struct rmem *m;
    ek_status_t status = lock_memory(dev, mem, true, false, &d, &m);
    if (status != EK_OK)
        return status;
    if (m->map_count == 0)
        status = ek_fail(EK_ERR_NOT_MAPPED, "ek_mem_unmap: memory 0x%016" PRIx64 " is not mapped", mem.id);
    else if (--m->map_count == 0) {
        free(m->shadow);
        m->shadow = NULL;
    }
    unlock(d);
    return status;
}

ek_status_t ek_rc_sync_range(ek_dev_t dev, ek_mem_t mem, size_t offset, size_t size, bool whole, bool to_device,
                             const char *call_name) {
    struct rdev *d;
    struct rmem *m;
    ek_status_t status = lock_memory(dev, mem, false, false, &d, &m);
    if (status != EK_OK)
        return status;
    if (whole) {
        offset = 0;
        size = m->size;
    }
    /* Unmapped, there is no host copy to send or refresh: a no-op, as on a local device. */
    if ((status = check_range(m, offset, size, call_name)) == EK_OK && m->shadow)
        status = bulk(d, to_device ? BULK_WRITE : BULK_READ, m->wire, m->shadow + offset, offset, size);
    unlock(d);
    return status;
}

/* ---- runtimes ---- */

static ek_status_t lock_runtime(ek_rt_t handle, bool exclusive, struct rdev **d, struct rrt **rt) {
    void *obj;
    ek_status_t status = lock_object(handle.id, R_RUNTIME, exclusive, false, d, &obj);
    if (status == EK_OK)
        *rt = obj;
    return status;
}

ek_status_t ek_rc_rt_create(ek_rt_t *handle, ek_dev_t dev, const ek_rt_config_t *config) {
    struct rdev *d;
    ek_status_t status = lock_device(dev, true, &d);
    if (status != EK_OK)
        return status;
    struct ek_wbuf b;
    ek_wbuf_init(&b);
    ek_put_u32(&b, config ? (uint32_t)config->kernels : 0);
    ek_put_i64(&b, config ? config->threads : 0);
    struct rpending *p = NULL;
    struct ek_rbuf r;
    status = request(d, EK_MSG_RT_CREATE, &b, &p, &r);
    ek_wbuf_free(&b);
    struct rrt *rt = NULL;
    if (status == EK_OK) {
        uint64_t wire = ek_get_u64(&r);
        char kernels[32];
        ek_get_str(&r, kernels, sizeof kernels);
        int threads = (int)ek_get_u32(&r);
        if (r.bad) {
            status = bad_reply(d, &r, "RT_CREATE");
        } else if (!(rt = calloc(1, sizeof *rt)) || !(rt->handle = ek_handle_new(R_RUNTIME, rt, (int)(d - slots)))) {
            free(rt);
            rt = NULL;
            status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a runtime");
            struct ek_wbuf k;
            ek_wbuf_init(&k);
            ek_put_u64(&k, wire);
            call(d, EK_MSG_RT_DESTROY, &k);
            ek_wbuf_free(&k);
        } else {
            rt->wire = wire;
            snprintf(rt->kernels, sizeof rt->kernels, "%s", kernels);
            rt->threads = threads;
            pthread_mutex_lock(&d->mu);
            rt->next = d->rts;
            if (d->rts)
                d->rts->prev = rt;
            d->rts = rt;
            pthread_mutex_unlock(&d->mu);
        }
    }
    pending_free(p);
    if (status == EK_OK) {
        pthread_mutex_lock(&slots_lock);
        d->refs++; /* the runtime holds the connection open, as a local one holds its device */
        pthread_mutex_unlock(&slots_lock);
        handle->id = rt->handle;
    }
    unlock(d);
    return status;
}

ek_status_t ek_rc_rt_destroy(ek_rt_t handle) {
    void *obj;
    struct rdev *d;
    ek_status_t status = lock_object(handle.id, R_RUNTIME, true, true, &d, &obj);
    if (status != EK_OK)
        return status;
    struct rrt *rt = obj;
    if (d->callbacks_started && pthread_equal(pthread_self(), d->callbacks)) {
        unlock(d);
        return ek_fail(EK_ERR_BUSY, "a remote runtime cannot be destroyed from one of its launches' callbacks");
    }
    /* Retired first, as locally, so nothing new starts on it; its reference keeps the device. Then its
     * launches, waited for without the device lock: their on_done callbacks may call the device. */
    ek_handle_retire(rt->handle, R_RUNTIME);
    unlock(d);
    pthread_mutex_lock(&d->mu);
    for (;;) {
        bool busy = false;
        for (struct rlaunch *l = d->launches; l; l = l->next)
            busy |= l->rt == rt && l->queued && (!l->done || !l->callback_ran);
        if (!busy || d->dead)
            break;
        pthread_cond_wait(&d->cond, &d->mu);
    }
    pthread_mutex_unlock(&d->mu);
    pthread_rwlock_wrlock(&d->lock);
    struct ek_wbuf b;
    ek_wbuf_init(&b);
    ek_put_u64(&b, rt->wire);
    status = call(d, EK_MSG_RT_DESTROY, &b);
    ek_wbuf_free(&b);
    if (status == EK_ERR_CONNECTION)
        status = EK_OK; /* the board's session is gone, and the runtime with it */
    /* The handle is gone either way: so is the record (a runtime the board kept goes with the session). */
    pthread_mutex_lock(&d->mu);
    if (rt->prev)
        rt->prev->next = rt->next;
    else
        d->rts = rt->next;
    if (rt->next)
        rt->next->prev = rt->prev;
    for (struct rlaunch *l = d->launches; l; l = l->next)
        if (l->rt == rt)
            l->rt = NULL;
    pthread_mutex_unlock(&d->mu);
    free_runtime(rt);
    unlock(d);
    release_ref(d);
    return status;
}

ek_status_t ek_rc_rt_kernels(ek_rt_t handle, const char **name) {
    struct rdev *d;
    struct rrt *rt;
    ek_status_t status = lock_runtime(handle, false, &d, &rt);
    if (status == EK_OK) {
        *name = rt->kernels; /* stays until the runtime is destroyed */
        unlock(d);
    }
    return status;
}

ek_status_t ek_rc_rt_threads(ek_rt_t handle, int *threads) {
    struct rdev *d;
    struct rrt *rt;
    ek_status_t status = lock_runtime(handle, false, &d, &rt);
    if (status == EK_OK) {
        *threads = rt->threads;
        unlock(d);
    }
    return status;
}

/* Read the networks of a LOAD reply; append those past the ones already known. */
static ek_status_t read_networks(struct rdev *d, struct rrt *rt, struct ek_rbuf *r) {
    uint32_t count = ek_get_u32(r);
    if (r->bad || count > 65536 || count < (uint32_t)rt->net_count)
        return bad_reply(d, r, "LOAD");
    struct rnet *nets = calloc(count, sizeof *nets);
    if (!nets && count)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for network descriptions");
    ek_status_t status = EK_OK;
    for (uint32_t i = 0; i < count && status == EK_OK && !r->bad; i++) {
        struct rnet *n = &nets[i];
        /* Names go in one block: the network's, then each input's and output's. */
        size_t cap = 0;
        char name[EK_WIRE_MAX_STRING];
        ek_get_str(r, name, sizeof name);
        uint32_t n_in = ek_get_u32(r);
        if (r->bad || n_in > 4096)
            break;
        char (*names)[EK_WIRE_MAX_STRING] = NULL;
        ek_io_info_t *ios = calloc((size_t)n_in + 4096, sizeof *ios);
        names = calloc((size_t)n_in + 4096, sizeof *names);
        if (!ios || !names) {
            free(ios);
            free(names);
            status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for network descriptions");
            break;
        }
        for (uint32_t k = 0; k < n_in && !r->bad; k++) {
            ek_get_str(r, names[k], sizeof names[k]);
            ios[k].dtype = (ek_dtype_t)ek_get_u32(r);
            ios[k].scale = ek_get_f32(r);
            ios[k].zero_point = (int32_t)ek_get_u32(r);
            ios[k].max_bytes = (size_t)ek_get_u64(r);
        }
        uint32_t n_out = ek_get_u32(r);
        if (n_out > 4096)
            n_out = 0, r->bad = true;
        for (uint32_t k = 0; k < n_out && !r->bad; k++) {
            ek_get_str(r, names[n_in + k], sizeof names[n_in + k]);
            uint32_t word = ek_get_u32(r); /* dtype; bit 16: a dynamic output */
            ios[n_in + k].dtype = (ek_dtype_t)(word & 0xFFFFu);
            ios[n_in + k].dynamic = (word >> 16 & 1u) != 0;
            ios[n_in + k].scale = ek_get_f32(r);
            ios[n_in + k].zero_point = (int32_t)ek_get_u32(r);
            ios[n_in + k].max_bytes = (size_t)ek_get_u64(r);
        }
        uint32_t stages = ek_get_u32(r);
        if (stages > 4096)
            stages = 0, r->bad = true;
        size_t shapes = (size_t)stages * (n_in + n_out);
        n->shapes = calloc(shapes ? shapes : 1, sizeof *n->shapes);
        n->stages = calloc(stages ? stages : 1, sizeof *n->stages);
        for (size_t k = 0; n->shapes && k < shapes && !r->bad; k++)
            ek_get_shape(r, &n->shapes[k]);
        cap = strlen(name) + 1;
        for (uint32_t k = 0; k < n_in + n_out; k++)
            cap += strlen(names[k]) + 1;
        n->strings = malloc(cap);
        if (!n->shapes || !n->stages || !n->strings) {
            free(ios);
            free(names);
            status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for network descriptions");
            break;
        }
        char *at = n->strings;
        n->info.name = at;
        at = stpcpy(at, name) + 1;
        for (uint32_t k = 0; k < n_in + n_out; k++) {
            ios[k].name = at;
            at = stpcpy(at, names[k]) + 1;
        }
        free(names);
        n->ios = ios;
        n->info.input_count = (int)n_in;
        n->info.inputs = ios;
        n->info.output_count = (int)n_out;
        n->info.outputs = ios + n_in;
        n->info.stage_count = (int)stages;
        n->info.stages = n->stages;
        for (uint32_t st = 0; st < stages; st++) {
            n->stages[st].input_shapes = n->shapes + (size_t)st * (n_in + n_out);
            n->stages[st].output_shapes = n->shapes + (size_t)st * (n_in + n_out) + n_in;
        }
    }
    if (r->bad && status == EK_OK)
        status = bad_reply(d, r, "LOAD");
    if (status != EK_OK) {
        free_nets(nets, (int)count);
        free(nets);
        return status;
    }
    /* Keep the records already handed out (callers hold pointers to their infos until ek_rt_destroy), add
     * the new ones, each in an allocation of its own that later loads never move. */
    struct rnet **all = count ? realloc(rt->nets, count * sizeof *all) : rt->nets;
    uint32_t made = (uint32_t)rt->net_count;
    if (all) {
        rt->nets = all;
        uint64_t model = atomic_fetch_add(&models_loaded, 1) + 1;
        for (; made < count && (all[made] = malloc(sizeof **all)) != NULL; made++) {
            *all[made] = nets[made];
            all[made]->model = model;
        }
    }
    if (made < count) {
        for (uint32_t i = (uint32_t)rt->net_count; i < made; i++)
            free(all[i]);
        free_nets(nets, (int)count);
        free(nets);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for network descriptions");
    }
    free_nets(nets, rt->net_count); /* the known ones, described again */
    free(nets);
    rt->net_count = (int)count;
    return EK_OK;
}

ek_status_t ek_rc_rt_load_model_data(ek_rt_t handle, const void *data, size_t size) {
    struct rdev *d;
    struct rrt *rt;
    ek_status_t status = lock_runtime(handle, true, &d, &rt);
    if (status != EK_OK)
        return status;
    /* Say early what the board cannot read, rather than after the upload. */
    const uint8_t *bytes = data;
    if (size >= 12 && memcmp(bytes, "EDGEKIT", 8) == 0) {
        int major = bytes[8] | bytes[9] << 8, minor = bytes[10] | bytes[11] << 8;
        if (major != d->info.model_format_major) {
            unlock(d);
            return ek_fail(EK_ERR_VERSION, "the model is .ekm %d.%d; the board's EdgeKit %s (%s) reads .ekm %d.x: %s",
                           major, minor, d->info.runtime_version, d->ch.peer, d->info.model_format_major,
                           major > d->info.model_format_major
                               ? "upgrade EdgeKit on the board (invoke package, then invoke flash)"
                               : "compile the model with the board's EdgeKit release");
        }
    }
    if (size == 0) {
        unlock(d);
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_load_model_data: size is 0");
    }
    if ((status = bulk(d, BULK_UPLOAD, 0, (uint8_t *)bytes, 0, size)) != EK_OK) {
        unlock(d);
        return status;
    }
    struct ek_wbuf b;
    ek_wbuf_init(&b);
    ek_put_u64(&b, rt->wire);
    struct rpending *p = NULL;
    struct ek_rbuf r;
    status = request(d, EK_MSG_LOAD, &b, &p, &r);
    ek_wbuf_free(&b);
    if (status == EK_OK)
        status = read_networks(d, rt, &r);
    pending_free(p);
    unlock(d);
    return status;
}

ek_status_t ek_rc_rt_load_model(ek_rt_t handle, const char *path) {
    /* The file is read here, on the host, and uploaded: the server never opens client paths. */
    FILE *f = fopen(path, "rb");
    if (!f)
        return ek_fail(EK_ERR_SYSTEM, "cannot open model '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return ek_fail(EK_ERR_MODEL_INVALID, "'%s' is not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    uint8_t *data = malloc(size ? size : 1);
    if (!data) {
        fclose(f);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory to read model '%s' (%zu bytes)", path, size);
    }
    size_t got = fread(data, 1, size, f);
    fclose(f);
    if (got != size) {
        free(data);
        return ek_fail(EK_ERR_SYSTEM, "cannot read model '%s'", path);
    }
    ek_status_t status = size ? ek_rc_rt_load_model_data(handle, data, size)
                              : ek_fail(EK_ERR_MODEL_INVALID, "model '%s' is empty (0 bytes)", path);
    free(data);
    return status;
}

ek_status_t ek_rc_rt_network_count(ek_rt_t handle, int *count) {
    struct rdev *d;
    struct rrt *rt;
    ek_status_t status = lock_runtime(handle, false, &d, &rt);
    if (status == EK_OK) {
        *count = rt->net_count;
        unlock(d);
    }
    return status;
}

ek_status_t ek_rc_rt_network_name(ek_rt_t handle, int index, const char **name) {
    struct rdev *d;
    struct rrt *rt;
    ek_status_t status = lock_runtime(handle, false, &d, &rt);
    if (status != EK_OK)
        return status;
    if (index < 0 || index >= rt->net_count)
        status = ek_fail(EK_ERR_INVALID_ARG, "ek_rt_network_name: index %d is outside 0 .. %d (%d network%s loaded)",
                         index, rt->net_count - 1, rt->net_count, rt->net_count == 1 ? "" : "s");
    else
        *name = rt->nets[index]->info.name;
    unlock(d);
    return status;
}

static const struct rnet *find_net(const struct rrt *rt, const char *name) {
    for (int i = 0; name && i < rt->net_count; i++)
        if (strcmp(rt->nets[i]->info.name, name) == 0)
            return rt->nets[i];
    return NULL;
}

/* Append to a message of at most cap - 1 characters (the rest is dropped). */
static void add_text(char *text, size_t cap, size_t *len, const char *fmt, ...) EK_PRINTF(4, 5);
static void add_text(char *text, size_t cap, size_t *len, const char *fmt, ...) {
    if (*len >= cap - 1)
        return;
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(text + *len, cap - *len, fmt, args);
    va_end(args);
    if (n > 0)
        *len = *len + (size_t)n < cap ? *len + (size_t)n : cap - 1;
}

static void add_shape(char *text, size_t cap, size_t *len, const ek_shape_t *shape) {
    if (shape->num_dims == 0)
        add_text(text, cap, len, "scalar");
    for (int d = 0; d < shape->num_dims && d < EK_MAX_DIMS; d++)
        add_text(text, cap, len, "%s%" PRId64, d ? "x" : "", shape->dims[d]);
}

/* The words of a local runtime (runtime.c, find_network). */
static ek_status_t no_network(const struct rrt *rt, const char *name) {
    if (!name)
        return ek_fail(EK_ERR_INVALID_ARG, "network name is NULL");
    char list[400] = "";
    size_t len = 0;
    for (int i = 0; i < rt->net_count; i++)
        add_text(list, sizeof list, &len, "%s%s", i ? ", " : "", rt->nets[i]->info.name);
    if (len == sizeof list - 1)
        memcpy(list + sizeof list - 4, "...", 4);
    return ek_fail(EK_ERR_INVALID_ARG, "no network '%.100s' in this runtime; loaded: %s", name,
                   rt->net_count ? list : "none");
}

ek_status_t ek_rc_rt_network_info(ek_rt_t handle, const char *name, const ek_net_info_t **info) {
    struct rdev *d;
    struct rrt *rt;
    ek_status_t status = lock_runtime(handle, false, &d, &rt);
    if (status != EK_OK)
        return status;
    const struct rnet *n = find_net(rt, name);
    if (n)
        *info = &n->info;
    else
        status = no_network(rt, name);
    unlock(d);
    return status;
}

/* ---- launches ---- */

static const ek_shape_t *nth_shape(const ek_shape_t *first, size_t stride, int i) {
    return (const ek_shape_t *)(const void *)((const char *)first + (size_t)i * stride);
}

/* The stage of `info` whose input shapes are the launch's (input i's at `first` + i * stride), or -1. */
static int match_stage(const ek_net_info_t *info, const ek_shape_t *first, size_t stride) {
    for (int s = 0; s < info->stage_count; s++) {
        bool same = true;
        for (int i = 0; i < info->input_count && same; i++) {
            const ek_shape_t *a = &info->stages[s].input_shapes[i], *b = nth_shape(first, stride, i);
            same = a->num_dims == b->num_dims &&
                   memcmp(a->dims, b->dims, (size_t)(a->num_dims > 0 ? a->num_dims : 0) * sizeof a->dims[0]) == 0;
        }
        if (same)
            return s;
    }
    return -1;
}

/* The launch's input shapes match no stage: a local launch's words (runtime.c, pick_stage). Said on the
 * host when the shapes cannot go on the wire (a dimension count outside 0 .. EK_MAX_DIMS, a negative
 * dimension: a malformed request would end the session) or would make ek_rt_launch_data read input bytes
 * that no stage describes. */
static ek_status_t no_stage(const ek_net_info_t *info, const ek_shape_t *first, size_t stride) {
    for (int i = 0; i < info->input_count; i++) {
        const ek_shape_t *shape = nth_shape(first, stride, i);
        if (shape->num_dims < 0 || shape->num_dims > EK_MAX_DIMS)
            return ek_fail(EK_ERR_INVALID_ARG, "input '%s' of network '%s' has %d dims; a shape has 0 .. %d",
                           info->inputs[i].name, info->name, shape->num_dims, EK_MAX_DIMS);
    }
    char text[400];
    size_t len = 0;
    text[0] = '\0';
    for (int i = 0; i < info->input_count; i++) {
        add_text(text, sizeof text, &len, "%sinput '%s' is ", i ? ", " : "", info->inputs[i].name);
        add_shape(text, sizeof text, &len, nth_shape(first, stride, i));
    }
    add_text(text, sizeof text, &len, "; network '%s' takes ", info->name);
    for (int s = 0; s < info->stage_count; s++) {
        add_text(text, sizeof text, &len, "%s", s ? " | " : "");
        for (int i = 0; i < info->input_count; i++) {
            add_text(text, sizeof text, &len, "%s", i ? ", " : "");
            add_shape(text, sizeof text, &len, &info->stages[s].input_shapes[i]);
        }
    }
    if (len == sizeof text - 1)
        memcpy(text + sizeof text - 4, "...", 4);
    return ek_fail(EK_ERR_INVALID_ARG, "%s", text);
}

/* Whether the wire can carry `shape` (the server takes anything else for a broken client). */
static bool wire_shape(const ek_shape_t *shape) {
    if (shape->num_dims < 0 || shape->num_dims > EK_MAX_DIMS)
        return false;
    for (int d = 0; d < shape->num_dims; d++)
        if (shape->dims[d] < 0)
            return false;
    return true;
}

static void put_tensor(struct ek_wbuf *b, uint64_t mem_wire, const ek_tensor_t *t) {
    ek_put_u64(b, mem_wire);
    ek_put_u64(b, t->offset);
    ek_put_u32(b, (uint32_t)t->dtype);
    ek_put_shape(b, &t->shape);
}

/* The server id of a remote memory of device `d` (the device locked); 0 with an error otherwise. */
static uint64_t wire_of(struct rdev *d, ek_mem_t mem, const char *what, int index, ek_status_t *status) {
    void *obj;
    int owner;
    if (!EK_IS_REMOTE(mem.id)) {
        /* A local device's memory, or no memory at all (0, never issued, freed): the handle says which. */
        if ((*status = ek_handle_get(mem.id, EK_HANDLE_MEMORY, NULL, NULL)) == EK_OK)
            *status = ek_fail(EK_ERR_DEVICE_MISMATCH, "%s[%d]: memory 0x%016" PRIx64 " is a local device's; the "
                              "runtime is on remote device %s", what, index, mem.id, d->ch.peer);
        else {
            char why[300];
            snprintf(why, sizeof why, "%s", ek_last_error());
            *status = ek_fail(*status, "%s[%d]: %s", what, index, why);
        }
        return 0;
    }
    if ((*status = ek_handle_get(mem.id, R_MEMORY, &obj, &owner)) != EK_OK)
        return 0;
    if (&slots[owner] != d) {
        *status = ek_fail(EK_ERR_DEVICE_MISMATCH, "%s[%d]: memory 0x%016" PRIx64 " belongs to another remote device "
                          "than the runtime's (%s)", what, index, mem.id, d->ch.peer);
        return 0;
    }
    return ((struct rmem *)obj)->wire;
}

#define FLAG_PROFILE 1u
#define FLAG_DUMP 2u

/* The caller's profile (a reference) and dump directory (made and tried now, as a local launch does), and
 * the request flags asking the board for them. */
static ek_status_t launch_extras(const ek_launch_options_t *options, const struct rnet *net, const struct rrt *rt,
                                 struct rprofile *profile, struct rdump *dump, uint32_t *flags) {
    memset(profile, 0, sizeof *profile);
    memset(dump, 0, sizeof *dump);
    *flags = 0;
    if (!options)
        return EK_OK;
    if (options->workspace.id)
        return ek_fail(EK_ERR_UNSUPPORTED, "launch options: workspace: a remote runtime manages its memory on the "
                       "board; workspaces are for local runtimes");
    ek_status_t status;
    if (options->dump_dir) {
        if ((status = ek_make_dir(options->dump_dir, "dump")) != EK_OK)
            return status;
        if (!(dump->dir = strdup(options->dump_dir)))
            return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a launch");
        *flags |= FLAG_DUMP;
    }
    if (options->profile.id) {
        if ((status = ek_profiler_acquire(options->profile, &profile->profiler)) != EK_OK) {
            char why[300];
            snprintf(why, sizeof why, "%s", ek_last_error());
            free(dump->dir);
            dump->dir = NULL;
            return ek_fail(status, "launch options: profile: %s", why);
        }
        profile->launch = ek_profiler_next_launch(profile->profiler);
        profile->key = rt;
        profile->key_stamp = net->model;
        profile->network = net->info.name;
        *flags |= FLAG_PROFILE;
    }
    return EK_OK;
}

ek_status_t ek_rc_rt_launch_tensor(ek_rt_t handle, const char *net_name, const ek_tensor_t *inputs, int input_count,
                                   ek_tensor_t *outputs, int output_count, bool user_mem,
                                   const ek_launch_options_t *options, ek_launch_t *launch_out) {
    if ((input_count > 0 && !inputs) || (output_count > 0 && !outputs) || input_count < 0 || output_count < 0 ||
        !net_name)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_launch_tensor: %s", !net_name ? "net_name is NULL"
                       : input_count < 0 || output_count < 0 ? "a negative count" : "inputs or outputs is NULL");
    struct rdev *d;
    struct rrt *rt;
    ek_status_t status = lock_runtime(handle, false, &d, &rt);
    if (status != EK_OK)
        return status;
    const struct rnet *net = find_net(rt, net_name);
    const ek_net_info_t *info = net ? &net->info : NULL;
    if (!net)
        status = no_network(rt, net_name);
    else if (input_count != info->input_count || output_count != info->output_count)
        status = ek_fail(EK_ERR_INVALID_ARG, "network '%s' has %d input%s and %d output%s; the launch gives %d and %d",
                         info->name, info->input_count, info->input_count == 1 ? "" : "s", info->output_count,
                         info->output_count == 1 ? "" : "s", input_count, output_count);
    for (int i = 0; i < input_count && status == EK_OK; i++)
        if (!wire_shape(&inputs[i].shape))
            status = no_stage(info, &inputs[0].shape, sizeof inputs[0]);
    struct rprofile profile;
    struct rdump dump;
    uint32_t flags = 0;
    if (status != EK_OK || (status = launch_extras(options, net, rt, &profile, &dump, &flags)) != EK_OK) {
        unlock(d);
        return status;
    }
    struct ek_wbuf b;
    ek_wbuf_init(&b);
    ek_put_u64(&b, rt->wire);
    ek_put_str(&b, net_name);
    ek_put_u32(&b, (uint32_t)input_count);
    ek_put_u32(&b, (uint32_t)output_count);
    for (int i = 0; i < input_count && status == EK_OK; i++) {
        uint64_t wire = wire_of(d, inputs[i].mem, "inputs", i, &status);
        put_tensor(&b, wire, &inputs[i]);
    }
    /* Outputs are the call's to fill: of the caller's, only user memory and its offset go. */
    for (int i = 0; i < output_count && status == EK_OK; i++) {
        ek_tensor_t out;
        memset(&out, 0, sizeof out);
        uint64_t wire = 0;
        if (user_mem) {
            wire = wire_of(d, outputs[i].mem, "outputs", i, &status);
            out.offset = outputs[i].offset;
        }
        put_tensor(&b, wire, &out);
    }
    ek_put_u32(&b, user_mem ? 1 : 0);
    ek_put_i64(&b, options ? options->threads : 0);
    ek_put_u64(&b, options ? options->cpu_mask : 0);
    ek_put_u32(&b, flags);
    struct rlaunch *l = status == EK_OK ? calloc(1, sizeof *l) : NULL;
    if (status == EK_OK && !l)
        status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a launch");
    if (status != EK_OK) {
        ek_profiler_release(profile.profiler);
        free(dump.dir);
        ek_wbuf_free(&b);
        unlock(d);
        return status;
    }
    l->profile = profile;
    l->profile.request_bytes = b.len + EK_WIRE_HEADER;
    l->dump = dump;
    l->rt = rt;
    l->on_done = options ? options->on_done : NULL;
    l->user_data = options ? options->user_data : NULL;
    l->want_handle = launch_out != NULL;
    if (l->on_done) {
        pthread_mutex_lock(&d->mu);
        if (!d->callbacks_started && pthread_create(&d->callbacks, NULL, callbacks_main, d) == 0)
            d->callbacks_started = true;
        bool started = d->callbacks_started;
        pthread_mutex_unlock(&d->mu);
        if (!started) {
            free_rlaunch(l);
            ek_wbuf_free(&b);
            unlock(d);
            return ek_fail(EK_ERR_SYSTEM, "cannot start the callback thread of a remote device");
        }
    }
    /* Listed before the request goes out, so a completion that follows the reply at once finds it. */
    struct rpending *p = NULL;
    if (b.failed)
        status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a launch request");
    else if (!(p = calloc(1, sizeof *p)))
        status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a request");
    if (status == EK_OK) {
        pthread_mutex_lock(&d->send_mu);
        pthread_mutex_lock(&d->mu);
        if (d->dead) {
            status = ek_fail(d->dead_status, "%s", d->dead_msg);
        } else {
            p->request = l->request = ++d->next_request;
            p->next = d->pending;
            d->pending = p;
            l->next = d->launches;
            d->launches = l;
            l->profile.sent_ns = ek_now_ns();
        }
        pthread_mutex_unlock(&d->mu);
        if (status == EK_OK &&
            ek_wire_send_parts(&d->ch, EK_MSG_LAUNCH, p->request, b.data, b.len, NULL, 0) != EK_OK) {
            char why[600];
            snprintf(why, sizeof why, "the connection to %s failed: %s", d->ch.peer, ek_last_error());
            pthread_mutex_lock(&d->mu);
            die_locked(d, EK_ERR_CONNECTION, why);
            pthread_mutex_unlock(&d->mu);
        }
        pthread_mutex_unlock(&d->send_mu);
    }
    ek_wbuf_free(&b);
    struct ek_rbuf r;
    bool listed = status == EK_OK;
    if (listed)
        status = finish(d, p, &r);
    if (status == EK_OK) {
        ek_get_u64(&r); /* the board's id of the launch (its completion is matched by request id) */
        uint32_t n_out = ek_get_u32(&r);
        if (n_out != (uint32_t)output_count)
            status = bad_reply(d, &r, "LAUNCH");
        for (int i = 0; i < output_count && status == EK_OK; i++) {
            uint64_t mem_wire = ek_get_u64(&r);
            uint64_t offset = ek_get_u64(&r);
            ek_dtype_t dtype = (ek_dtype_t)ek_get_u32(&r);
            ek_shape_t shape;
            ek_get_shape(&r, &shape);
            if (r.bad) {
                status = bad_reply(d, &r, "LAUNCH");
                break;
            }
            outputs[i].dtype = dtype;
            outputs[i].shape = shape;
            if (!user_mem) {
                size_t bytes = ek_shape_bytes(dtype, &shape);
                outputs[i].offset = (size_t)offset;
                status = adopt_memory(d, mem_wire, bytes, &outputs[i].mem);
            }
        }
    }
    pending_free(p);
    pthread_mutex_lock(&d->mu);
    if (status != EK_OK) {
        /* Not queued on the board, or the connection broke: the caller gets the error, not a callback. */
        if (listed)
            for (struct rlaunch **at = &d->launches; *at; at = &(*at)->next)
                if (*at == l) {
                    *at = l->next;
                    break;
                }
        free_rlaunch(l);
    } else {
        l->queued = true;
        if (launch_out) {
            if ((l->handle = ek_handle_new(R_LAUNCH, l, (int)(d - slots))) != 0)
                launch_out->id = l->handle;
            else /* queued regardless: its error then goes to ek_dev_sync */
                status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no room for another launch handle (the launch runs; "
                                 "ek_dev_sync reports its outcome)");
            l->want_handle = l->handle != 0;
        }
        if (l->done)
            after_completion_locked(d, l);
    }
    pthread_mutex_unlock(&d->mu);
    unlock(d);
    return status;
}

ek_status_t ek_rc_launch_wait(ek_launch_t launch, int timeout_ms) {
    pthread_once(&slots_once, init_slots);
    int owner;
    ek_status_t status = ek_handle_get(launch.id, R_LAUNCH, NULL, &owner);
    if (status != EK_OK)
        return status;
    struct rdev *d = &slots[owner];
    pthread_mutex_lock(&d->mu);
    void *obj;
    /* Launch handles are retired only under mu, so the record stays while we hold it. */
    if ((status = ek_handle_get(launch.id, R_LAUNCH, &obj, NULL)) != EK_OK) {
        pthread_mutex_unlock(&d->mu);
        return status;
    }
    struct rlaunch *l = obj;
    bool self = d->callbacks_started && pthread_equal(pthread_self(), d->callbacks);
    struct timespec deadline = deadline_in(timeout_ms > 0 ? timeout_ms : 0);
    l->users++;
    while (!l->done && timeout_ms != 0) {
        if (timeout_ms < 0)
            pthread_cond_wait(&d->cond, &d->mu);
        else if (pthread_cond_timedwait(&d->cond, &d->mu, &deadline) == ETIMEDOUT)
            break;
    }
    /* As locally, a launch has finished when its callback has returned, unless we are that callback. */
    while (l->done && !l->callback_ran && !self)
        pthread_cond_wait(&d->cond, &d->mu);
    l->users--;
    if (!l->done) {
        pthread_cond_broadcast(&d->cond);
        pthread_mutex_unlock(&d->mu);
        return ek_fail(EK_ERR_TIMEOUT, "launch on %s still running after %d ms", d->ch.peer, timeout_ms);
    }
    status = l->status;
    char message[512];
    snprintf(message, sizeof message, "%s", l->message);
    /* Another waiter may have retired it meanwhile. */
    if (l->handle == launch.id && ek_handle_retire(l->handle, R_LAUNCH) == EK_OK) {
        l->handle = 0;
        maybe_forget_locked(d, l);
    } else {
        status = ek_fail(EK_ERR_FREED_HANDLE, "launch 0x%016" PRIx64 " was already waited for", launch.id);
        message[0] = '\0';
        maybe_forget_locked(d, l);
    }
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->mu);
    if (status != EK_OK && message[0])
        return ek_fail(status, "%s", message);
    return status;
}

ek_status_t ek_rc_rt_launch_data(ek_rt_t handle, const char *net_name, const void *const *inputs,
                                 const ek_shape_t *input_shapes, int input_count, void *const *outputs,
                                 const size_t *output_capacity, ek_shape_t *output_shapes, int output_count,
                                 const ek_launch_options_t *options) {
    if (!inputs || !input_shapes || !outputs || !output_capacity || !output_shapes || !net_name)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_launch_data: %s is NULL",
                       !inputs ? "inputs" : !input_shapes ? "input_shapes" : !outputs ? "outputs"
                       : !output_capacity ? "output_capacity" : !output_shapes ? "output_shapes" : "net_name");
    struct rdev *d;
    struct rrt *rt;
    ek_status_t status = lock_runtime(handle, false, &d, &rt);
    if (status != EK_OK)
        return status;
    const struct rnet *net = find_net(rt, net_name);
    if (!net) {
        status = no_network(rt, net_name);
        unlock(d);
        return status;
    }
    const ek_net_info_t *info = &net->info;
    if (input_count != info->input_count || output_count != info->output_count) {
        status = ek_fail(EK_ERR_INVALID_ARG, "network '%s' has %d input%s and %d output%s; the launch gives %d and %d",
                         info->name, info->input_count, info->input_count == 1 ? "" : "s", info->output_count,
                         info->output_count == 1 ? "" : "s", input_count, output_count);
        unlock(d);
        return status;
    }
    /* The stage whose input shapes match, for the byte counts (the board checks again). */
    int stage = match_stage(info, input_shapes, sizeof input_shapes[0]);
    if (stage < 0) {
        status = no_stage(info, input_shapes, sizeof input_shapes[0]);
        unlock(d);
        return status;
    }
    size_t in_bytes = 0, out_bytes = 0;
    size_t *in_sizes = calloc((size_t)input_count + 1, sizeof *in_sizes);
    if (!in_sizes) {
        unlock(d);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a launch");
    }
    for (int i = 0; i < input_count; i++) {
        size_t n = ek_shape_bytes(info->inputs[i].dtype, &input_shapes[i]);
        in_sizes[i] = n;
        in_bytes += n;
        if (!inputs[i]) {
            free(in_sizes);
            unlock(d);
            return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_launch_data: inputs[%d] ('%s') is NULL", i, info->inputs[i].name);
        }
    }
    for (int i = 0; i < output_count; i++) {
        size_t n = ek_shape_bytes(info->outputs[i].dtype, &info->stages[stage].output_shapes[i]);
        out_bytes += n;
        if (!outputs[i] || (output_capacity[i] < n && !info->outputs[i].dynamic)) {
            free(in_sizes);
            unlock(d);
            return outputs[i] ? ek_fail(EK_ERR_INVALID_ARG, "output '%s' of network '%s' needs %zu bytes; "
                                        "output_capacity[%d] is %zu", info->outputs[i].name, info->name, n, i,
                                        output_capacity[i])
                              : ek_fail(EK_ERR_INVALID_ARG, "ek_rt_launch_data: outputs[%d] ('%s') is NULL", i,
                                        info->outputs[i].name);
        }
    }
    if (in_bytes > INLINE_RUN_MAX || out_bytes > INLINE_RUN_MAX) {
        /* Large tensors: through device memory, in chunks with progress. */
        free(in_sizes);
        unlock(d);
        return ek_rc_launch_data_staged(handle, net_name, inputs, input_shapes, input_count, outputs, output_capacity,
                                        output_shapes, output_count, options);
    }
    struct ek_wbuf b;
    ek_wbuf_init(&b);
    ek_put_u64(&b, rt->wire);
    ek_put_str(&b, net_name);
    ek_put_u32(&b, (uint32_t)input_count);
    for (int i = 0; i < input_count; i++) {
        ek_put_shape(&b, &input_shapes[i]);
        ek_put_bytes(&b, inputs[i], in_sizes[i]);
    }
    free(in_sizes);
    struct rprofile profile;
    struct rdump dump;
    uint32_t flags = 0;
    if ((status = launch_extras(options, net, rt, &profile, &dump, &flags)) != EK_OK) {
        ek_wbuf_free(&b);
        unlock(d);
        return status;
    }
    ek_put_i64(&b, options ? options->threads : 0);
    ek_put_u64(&b, options ? options->cpu_mask : 0);
    ek_put_u32(&b, flags);
    profile.request_bytes = b.len + EK_WIRE_HEADER;
    profile.sent_ns = ek_now_ns();
    struct rpending *p = NULL;
    struct ek_rbuf r;
    status = submit_parts(d, EK_MSG_RUN, &b, NULL, 0, NULL, 0, dump.dir ? &dump : NULL, &p);
    if (status == EK_OK)
        status = finish(d, p, &r);
    ek_wbuf_free(&b);
    if (status == EK_OK && dump.dir && dump.status != EK_OK)
        status = ek_fail(dump.status, "%s", dump.error);
    if (status == EK_OK) {
        uint32_t n_out = ek_get_u32(&r);
        if (n_out != (uint32_t)output_count)
            status = bad_reply(d, &r, "RUN");
        for (int i = 0; i < output_count && status == EK_OK; i++) {
            ek_shape_t shape;
            ek_get_shape(&r, &shape);
            size_t n;
            const uint8_t *bytes = ek_get_bytes(&r, EK_WIRE_MAX_PAYLOAD, &n);
            if (r.bad)
                status = bad_reply(d, &r, "RUN");
            else if (n > output_capacity[i])
                status = ek_fail(info->outputs[i].dynamic ? EK_ERR_OUT_OF_RANGE : EK_ERR_INVALID_ARG,
                                 "output '%s' came back with %zu bytes; output_capacity[%d] is %zu: give it at least "
                                 "%zu bytes", info->outputs[i].name, n, i, output_capacity[i], n);
            else {
                memcpy(outputs[i], bytes, n);
                output_shapes[i] = shape;
            }
        }
        if (status == EK_OK && profile.profiler && !add_records(&profile, &r, p->replied_ns, p->len, info->name))
            status = bad_reply(d, &r, "RUN");
    }
    pending_free(p);
    ek_profiler_release(profile.profiler);
    free(dump.dir);
    unlock(d);
    return status;
}

/* ek_rt_launch_data for large tensors: device memory, chunked copies, a launch. */
ek_status_t ek_rc_launch_data_staged(ek_rt_t handle, const char *net_name, const void *const *inputs,
                                     const ek_shape_t *input_shapes, int input_count, void *const *outputs,
                                     const size_t *output_capacity, ek_shape_t *output_shapes, int output_count,
                                     const ek_launch_options_t *options) {
    struct rdev *d;
    struct rrt *rt;
    ek_status_t status = lock_runtime(handle, false, &d, &rt);
    if (status != EK_OK)
        return status;
    /* The library's own device handle: the caller's may be closed (the runtime keeps the device). */
    ek_dev_t dev = {d->self};
    const struct rnet *net = find_net(rt, net_name);
    ek_tensor_t *t = NULL;
    if (!net)
        status = no_network(rt, net_name);
    else if (!(t = calloc((size_t)input_count + (size_t)output_count + 1, sizeof *t)))
        status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a launch");
    for (int i = 0; t && i < input_count; i++)
        t[i].dtype = net->info.inputs[i].dtype; /* the record may move with a later load: taken now */
    unlock(d);
    if (status != EK_OK)
        return status;
    int staged = 0;
    for (; staged < input_count && status == EK_OK; staged++) {
        size_t n = ek_shape_bytes(t[staged].dtype, &input_shapes[staged]);
        t[staged].shape = input_shapes[staged];
        if ((status = ek_rc_malloc(dev, &t[staged].mem, n)) == EK_OK)
            status = ek_rc_copy_host(dev, t[staged].mem, (void *)inputs[staged], n, 0, false, true, "ek_rt_launch_data");
        else
            break;
    }
    ek_launch_t l = {0};
    ek_launch_options_t o = {0};
    if (options) {
        o = *options;
        o.on_done = NULL; /* this call waits itself */
        o.user_data = NULL;
    }
    bool launched = false;
    if (status == EK_OK &&
        (status = ek_rc_rt_launch_tensor(handle, net_name, t, input_count, t + input_count, output_count, false, &o,
                                         &l)) == EK_OK) {
        launched = true;
        status = ek_rc_launch_wait(l, -1);
    }
    for (int i = 0; launched && i < output_count; i++) {
        ek_tensor_t *o_t = &t[input_count + i];
        size_t n = ek_shape_bytes(o_t->dtype, &o_t->shape);
        if (status == EK_OK && n > output_capacity[i])
            status = ek_fail(EK_ERR_INVALID_ARG, "output %d needs %zu bytes; output_capacity[%d] is %zu", i, n, i,
                             output_capacity[i]);
        if (status == EK_OK &&
            (status = ek_rc_copy_host(dev, o_t->mem, outputs[i], n, o_t->offset, false, false, "ek_rt_launch_data")) ==
                EK_OK)
            output_shapes[i] = o_t->shape;
    }
    char why[512];
    snprintf(why, sizeof why, "%s", ek_last_error());
    for (int i = 0; i < input_count + output_count; i++)
        if (t[i].mem.id)
            ek_rc_free(dev, t[i].mem);
    free(t);
    if (status != EK_OK)
        ek_fail(status, "%s", why);
    return status;
}
