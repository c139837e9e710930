/* The remote server (docs/remote-protocol.md): one thread per session, each a poll loop over its
 * socket and a pipe its launches' completions write to. Nothing from the wire is used as a pointer,
 * path or size before it is checked: clients name objects by ids into their session's own table, and
 * every length is checked against a limit before anything is allocated for it. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "wire.h"

#define DEFAULT_MAX_SESSIONS 64
#define DEFAULT_IDLE_MS 60000
#define DEFAULT_LAUNCH_MS 600000
#define DEFAULT_MAX_MODEL (1ull << 30)
#define MAX_ENTRIES (1u << 20) /* objects one session may hold */

enum entry_kind { ENT_MEM = 1, ENT_RT = 2, ENT_LAUNCH = 3 };

struct entry {
    uint32_t generation;
    uint8_t kind; /* 0: free */
    uint8_t freed_kind; /* what the slot held before it was freed */
    uint64_t local; /* the ek_mem_t / ek_rt_t id; launches: unused */
    struct slaunch *launch;
    uint32_t next_free;
};

/* A launch (LAUNCH) or a run (RUN) of a session, from queueing until its completion is reported. */
struct slaunch {
    struct session *session;
    uint64_t request;   /* the LAUNCH or RUN request's id: the completion answers it */
    uint64_t wire;      /* LAUNCH: its id in the session table */
    ek_launch_t launch;
    bool run;           /* RUN: reply with the outputs, then free the staged memory */
    bool reported;      /* the client was told (a timeout) before it finished */
    uint64_t deadline_ns;
    uint64_t received_ns;
    ek_status_t status;
    char message[512];
    /* RUN only: device memory of the inputs and outputs (n_in + n_out) */
    int n_in, n_out;
    ek_tensor_t *tensors;
    ek_profile_t profile; /* the client asked for a profile: {0} otherwise */
    char *dump_dir;       /* the client asked for a dump: the server's scratch directory for it */
    /* LAUNCH: the memory (local ids) it reads and writes, which a FREE must not release before it ends */
    uint64_t *uses;
    int n_uses;
    struct slaunch *next_done;  /* the session's completed list */
    struct slaunch *prev, *next; /* the session's active list */
};

struct session {
    struct ek_server *server;
    struct ek_channel ch; /* the connection: its socket, the peer's name, its keys when paired */
    uint64_t number;
    pthread_t thread;
    bool finished; /* under server->lock: the thread can be joined */
    int wake[2];   /* completions write a byte */
    ek_dev_t dev;
    bool dev_open;
    bool hello;
    struct entry *table;
    uint32_t table_count, table_cap, free_head;
    uint8_t *upload;
    uint64_t upload_total, upload_received;
    pthread_mutex_t done_lock;
    struct slaunch *done_head;
    struct slaunch *active; /* launches not yet reported or not yet finished */
    /* Memory the client freed while a launch reported as timed out still used it: released when no
     * such launch uses it any more. */
    uint64_t *deferred;
    size_t deferred_count, deferred_cap;
    int pending;            /* active launches not yet finished */
    /* DEV_SYNC requests waiting for the session's launches: one per client thread that syncs, all
     * answered when no launch is left unreported. */
    uint64_t *syncs;
    size_t sync_count, sync_cap;
    uint64_t last_frame_ns; /* or the end of the last launch: the idle timeout counts from the later */
    struct session *prev, *next;
};

struct ek_server {
    int listen_fd;
    int stop_pipe[2];
    int port;
    char address[64];
    int max_sessions, idle_ms, launch_ms;
    uint64_t max_model;
    char scratch[256]; /* where dumps are written before they go to their clients ("" until the first) */
    bool paired;       /* sessions must prove the pairing key (PAIR) and are sealed */
    uint8_t key[EK_KEY_BYTES];
    void (*log)(void *, const char *);
    void *log_user;
    pthread_mutex_t lock; /* sessions list, log */
    struct session *sessions;
    int session_count;
    uint64_t sessions_started;
    _Atomic int stopping;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void slog(struct ek_server *srv, const char *fmt, ...) EK_PRINTF(2, 3);
static void slog(struct ek_server *srv, const char *fmt, ...) {
    if (!srv->log)
        return;
    char line[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&srv->lock);
    srv->log(srv->log_user, line);
    pthread_mutex_unlock(&srv->lock);
}

/* ---- the session's object table: ids are (kind << 56 | index << 32 | generation) ---- */

static uint64_t table_add(struct session *s, enum entry_kind kind, uint64_t local, struct slaunch *launch) {
    uint32_t index;
    if (s->free_head != UINT32_MAX) {
        index = s->free_head;
        s->free_head = s->table[index].next_free;
    } else {
        if (s->table_count >= MAX_ENTRIES)
            return 0;
        if (s->table_count == s->table_cap) {
            uint32_t cap = s->table_cap ? s->table_cap * 2 : 64;
            struct entry *t = realloc(s->table, (size_t)cap * sizeof *t);
            if (!t)
                return 0;
            s->table = t;
            s->table_cap = cap;
        }
        index = s->table_count++;
        s->table[index].generation = 0;
    }
    struct entry *e = &s->table[index];
    e->generation++;
    e->kind = (uint8_t)kind;
    e->local = local;
    e->launch = launch;
    return (uint64_t)kind << 56 | (uint64_t)index << 32 | e->generation;
}

static const char *kind_word(enum entry_kind kind) {
    return kind == ENT_MEM ? "memory" : kind == ENT_RT ? "runtime" : "launch";
}

static ek_status_t table_get(struct session *s, uint64_t id, enum entry_kind kind, struct entry **out) {
    uint32_t index = (uint32_t)(id >> 32) & 0xffffffu, generation = (uint32_t)id;
    struct entry *e = index < s->table_count ? &s->table[index] : NULL;
    /* The slot's current generation names what it holds, or held last: of another kind, never issued. */
    if ((unsigned)(id >> 56) != (unsigned)kind || !e || generation == 0 || generation > e->generation ||
        (generation == e->generation && (e->kind ? e->kind : e->freed_kind) != (uint8_t)kind))
        return ek_fail(EK_ERR_INVALID_HANDLE, "remote %s id 0x%016llx was never issued in this session",
                       kind_word(kind), (unsigned long long)id);
    if (generation != e->generation || e->kind != (uint8_t)kind)
        return ek_fail(EK_ERR_FREED_HANDLE, "remote %s id 0x%016llx was freed (use after free)", kind_word(kind),
                       (unsigned long long)id);
    *out = e;
    return EK_OK;
}

static void table_remove(struct session *s, struct entry *e) {
    e->freed_kind = e->kind;
    e->kind = 0;
    e->launch = NULL;
    e->next_free = s->free_head;
    s->free_head = (uint32_t)(e - s->table);
}

static uint64_t wire_id_of_local_mem(struct session *s, uint64_t local) {
    for (uint32_t i = 0; i < s->table_count; i++)
        if (s->table[i].kind == ENT_MEM && s->table[i].local == local)
            return (uint64_t)ENT_MEM << 56 | (uint64_t)i << 32 | s->table[i].generation;
    return 0;
}

/* ---- replies ---- */

static ek_status_t send_reply(struct session *s, uint16_t type, uint64_t request, struct ek_wbuf *body) {
    if (body->failed) {
        ek_wbuf_free(body);
        ek_wbuf_init(body);
        ek_put_u32(body, EK_ERR_OUT_OF_MEMORY);
        ek_put_str(body, "the server ran out of host memory for the reply");
    }
    return ek_wire_send_frame(&s->ch, type, request, body->data, body->len);
}

/* Replace the body with an error (status + the thread's last message). */
static void error_body(struct ek_wbuf *body, ek_status_t status) {
    body->len = 0;
    body->failed = false;
    ek_put_u32(body, (uint32_t)status);
    ek_put_str(body, ek_last_error());
}

/* Send an error frame (status + message) where a session ends or is refused. A failure to send changes
 * nothing then, so the thread's last error is put back as `status` with the message it had. */
static void send_error(struct ek_channel *ch, uint16_t type, uint64_t request, ek_status_t status,
                       const char *message) {
    char saved[512];
    snprintf(saved, sizeof saved, "%s", ek_last_error());
    struct ek_wbuf out;
    ek_wbuf_init(&out);
    ek_put_u32(&out, (uint32_t)status);
    ek_put_str(&out, message);
    if (!out.failed)
        ek_wire_send_frame(ch, type, request, out.data, out.len);
    ek_wbuf_free(&out);
    ek_fail(status, "%s", saved);
}

/* ---- launches ---- */

static void launch_done(void *user, ek_status_t status) {
    struct slaunch *l = user;
    l->status = status;
    if (status != EK_OK)
        snprintf(l->message, sizeof l->message, "%s", ek_last_error());
    struct session *s = l->session;
    pthread_mutex_lock(&s->done_lock);
    l->next_done = s->done_head;
    s->done_head = l;
    pthread_mutex_unlock(&s->done_lock);
    char byte = 1;
    ssize_t ignored = write(s->wake[1], &byte, 1); /* the pipe is non-blocking: a full one wakes anyway */
    (void)ignored;
}

static void active_remove(struct session *s, struct slaunch *l) {
    if (l->prev)
        l->prev->next = l->next;
    else
        s->active = l->next;
    if (l->next)
        l->next->prev = l->prev;
}

static void remove_dump_dir(struct slaunch *l) {
    if (!l->dump_dir)
        return;
    DIR *dir = opendir(l->dump_dir);
    struct dirent *e;
    while (dir && (e = readdir(dir)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char path[600];
        snprintf(path, sizeof path, "%s/%s", l->dump_dir, e->d_name);
        unlink(path);
    }
    if (dir)
        closedir(dir);
    rmdir(l->dump_dir);
    free(l->dump_dir);
    l->dump_dir = NULL;
}

/* Free a launch record and what it held: staged memory (RUN), its profile, its dump files. */
static void free_launch(struct session *s, struct slaunch *l) {
    for (int i = 0; l->tensors && i < l->n_in + l->n_out; i++)
        if (l->tensors[i].mem.id)
            ek_free_device(s->dev, l->tensors[i].mem);
    free(l->tensors);
    free(l->uses);
    if (l->profile.id)
        ek_profile_destroy(l->profile);
    remove_dump_dir(l);
    free(l);
}

/* Whether a launch the client was told ended (a timeout) still runs on `local`: its client may free it
 * then, but the engine must not lose it mid-run. (Memory freed under a launch the client still waits
 * for fails that launch, as on a local device.) */
static bool in_use(const struct session *s, uint64_t local) {
    for (const struct slaunch *l = s->active; l; l = l->next)
        for (int i = 0; l->reported && i < l->n_uses; i++)
            if (l->uses[i] == local)
                return true;
    return false;
}

/* Release the deferred frees no active launch holds up any more (all of them when `all`). */
static void release_deferred(struct session *s, bool all) {
    size_t kept = 0;
    for (size_t i = 0; i < s->deferred_count; i++) {
        if (!all && in_use(s, s->deferred[i]))
            s->deferred[kept++] = s->deferred[i];
        else
            ek_free_device(s->dev, (ek_mem_t){s->deferred[i]});
    }
    s->deferred_count = kept;
}

/* The profile's records, for the client to add to its own (remote_client.c: add_records). */
static void put_records(struct ek_wbuf *out, ek_profile_t profile) {
    size_t count = 0;
    if (profile.id)
        ek_profile_count(profile, &count);
    ek_put_u32(out, (uint32_t)count);
    for (size_t i = 0; i < count; i++) {
        ek_profile_record_t r;
        memset(&r, 0, sizeof r);
        ek_profile_get(profile, i, &r);
        ek_put_u32(out, (uint32_t)r.kind);
        const char *texts[] = {r.name, r.network, r.op_type, r.provider, r.nodes, r.tensor, r.shapes};
        for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++)
            ek_put_str(out, texts[k]);
        ek_put_i64(out, r.op_index);
        ek_put_i64(out, r.stage);
        ek_put_i64(out, r.threads);
        ek_put_u64(out, r.flops);
        ek_put_u64(out, r.bytes);
        ek_put_u64(out, r.start_ns);
        ek_put_u64(out, r.duration_ns);
        ek_put_u64(out, r.thread);
    }
}

/* Send a launch's dump files to the client (manifest.json last, as a local dump writes it), in chunks. */
static ek_status_t send_dump(struct session *s, struct slaunch *l) {
    DIR *dir = opendir(l->dump_dir);
    if (!dir)
        return EK_OK; /* nothing was written */
    char name[256], path[600];
    ek_status_t status = EK_OK;
    uint8_t *chunk = malloc(EK_WIRE_CHUNK);
    struct dirent *e;
    for (int pass = 0; pass < 2 && chunk && status == EK_OK; pass++) {
        rewinddir(dir);
        while (status == EK_OK && (e = readdir(dir)) != NULL) {
            bool is_manifest = strcmp(e->d_name, "manifest.json") == 0;
            if (e->d_name[0] == '.' || strstr(e->d_name, ".tmp") || is_manifest != (pass == 1))
                continue;
            snprintf(name, sizeof name, "%s", e->d_name);
            snprintf(path, sizeof path, "%s/%s", l->dump_dir, e->d_name);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            struct stat st;
            if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
                if (fd >= 0)
                    close(fd);
                continue;
            }
            uint64_t total = (uint64_t)st.st_size, offset = 0;
            do {
                ssize_t n = read(fd, chunk, EK_WIRE_CHUNK);
                if (n < 0) {
                    status = ek_fail(EK_ERR_SYSTEM, "reading the dump file %s on the board: %s", name,
                                     strerror(errno));
                    break;
                }
                struct ek_wbuf b;
                ek_wbuf_init(&b);
                ek_put_str(&b, name);
                ek_put_u64(&b, total);
                ek_put_u64(&b, offset);
                ek_put_u64(&b, (uint64_t)n);
                if (!b.failed)
                    status = ek_wire_send_parts(&s->ch, EK_MSG_DUMP_FILE, l->request, b.data, b.len, chunk, (size_t)n);
                ek_wbuf_free(&b);
                offset += (uint64_t)n;
                if (n == 0)
                    break;
            } while (status == EK_OK && offset < total);
            close(fd);
        }
    }
    free(chunk);
    closedir(dir);
    return status;
}

/* The body of a finished RUN's reply: the outputs' shapes and bytes. */
static void run_outputs(struct session *s, struct slaunch *l, struct ek_wbuf *body) {
    ek_put_u32(body, EK_OK);
    ek_put_u32(body, (uint32_t)l->n_out);
    for (int i = 0; i < l->n_out; i++) {
        ek_tensor_t *t = &l->tensors[l->n_in + i];
        size_t n = ek_shape_bytes(t->dtype, &t->shape);
        ek_put_shape(body, &t->shape);
        ek_put_u64(body, n);
        uint8_t *at = ek_put_space(body, n);
        ek_status_t status = at ? ek_memcpy_d2s_partial(s->dev, at, t->mem, n) : EK_ERR_OUT_OF_MEMORY;
        if (status != EK_OK) {
            if (!at)
                ek_fail(status, "no host memory for the outputs of a run");
            error_body(body, status);
            return;
        }
    }
}

/* Tell the client a launch ended (or timed out): its dump files, then LAUNCH_DONE, or RUN's reply. */
static ek_status_t report_launch(struct session *s, struct slaunch *l, ek_status_t status, const char *message) {
    char why[512];
    snprintf(why, sizeof why, "%s", message ? message : "");
    if (l->dump_dir && status != EK_ERR_TIMEOUT) {
        ek_status_t sent = send_dump(s, l);
        if (sent != EK_OK && sent != EK_ERR_SYSTEM)
            return sent; /* the connection */
        if (sent != EK_OK && status == EK_OK) {
            status = sent;
            snprintf(why, sizeof why, "%s", ek_last_error());
        }
    }
    struct ek_wbuf body;
    ek_wbuf_init(&body);
    if (l->run && status == EK_OK) {
        run_outputs(s, l, &body);
        if (body.len >= 4 && body.data[0] == EK_OK && body.data[1] == 0 && body.data[2] == 0 && body.data[3] == 0) {
            ek_put_u64(&body, l->received_ns);
            ek_put_u64(&body, now_ns());
            put_records(&body, l->profile);
        }
    } else if (l->run) {
        ek_put_u32(&body, (uint32_t)status);
        ek_put_str(&body, why);
    } else {
        ek_put_u32(&body, (uint32_t)status);
        ek_put_str(&body, status == EK_OK ? "" : why);
        ek_put_u64(&body, l->received_ns);
        ek_put_u64(&body, now_ns());
        put_records(&body, status == EK_ERR_TIMEOUT ? (ek_profile_t){0} : l->profile);
    }
    ek_status_t sent = send_reply(s, l->run ? (EK_MSG_RUN | EK_MSG_REPLY) : EK_MSG_LAUNCH_DONE, l->request, &body);
    ek_wbuf_free(&body);
    l->reported = true;
    return sent;
}

/* Finish the launches whose completion arrived: report, then free. */
static ek_status_t drain_completions(struct session *s) {
    char sink[64];
    while (read(s->wake[0], sink, sizeof sink) > 0) {
    }
    pthread_mutex_lock(&s->done_lock);
    struct slaunch *l = s->done_head;
    s->done_head = NULL;
    pthread_mutex_unlock(&s->done_lock);
    /* A client waiting for its launches is busy, not idle, even when their completions keep its
     * keepalive quiet: its idle time starts when the last one ends. */
    if (l)
        s->last_frame_ns = now_ns();
    ek_status_t result = EK_OK;
    while (l) {
        struct slaunch *next = l->next_done;
        ek_launch_wait(l->launch, -1); /* finished: retires the handle at once */
        s->pending--;
        if (!l->reported && result == EK_OK)
            result = report_launch(s, l, l->status, l->message);
        if (!l->run) {
            struct entry *e = NULL;
            if (table_get(s, l->wire, ENT_LAUNCH, &e) == EK_OK)
                table_remove(s, e);
        }
        active_remove(s, l);
        free_launch(s, l);
        l = next;
    }
    release_deferred(s, false);
    return result;
}

/* Report launches past their deadline as timeouts; they stay active until they really end. */
static ek_status_t check_deadlines(struct session *s, uint64_t now) {
    for (struct slaunch *l = s->active; l; l = l->next) {
        if (l->reported || now < l->deadline_ns)
            continue;
        ek_fail(EK_ERR_TIMEOUT, "the launch ran longer than the server's launch timeout of %d ms "
                "(remote_server --launch-timeout); it is still running on the board and its memory stays "
                "allocated until it ends", s->server->launch_ms);
        slog(s->server, "session %llu (%s): a launch passed the launch timeout", (unsigned long long)s->number,
             s->ch.peer);
        ek_status_t status = report_launch(s, l, EK_ERR_TIMEOUT, ek_last_error());
        if (status != EK_OK)
            return status;
    }
    return EK_OK;
}

/* Room for another DEV_SYNC request; false when out of memory (the list is kept). */
static bool grow_syncs(struct session *s) {
    size_t cap = s->sync_cap ? 2 * s->sync_cap : 4;
    uint64_t *grown = realloc(s->syncs, cap * sizeof *grown);
    if (!grown)
        return false;
    s->syncs = grown;
    s->sync_cap = cap;
    return true;
}

static ek_status_t maybe_reply_sync(struct session *s) {
    bool waiting = false;
    for (struct slaunch *l = s->active; l; l = l->next)
        waiting |= !l->reported;
    if (!s->sync_count || waiting)
        return EK_OK;
    ek_status_t status = EK_OK;
    for (size_t i = 0; i < s->sync_count && status == EK_OK; i++) {
        struct ek_wbuf body;
        ek_wbuf_init(&body);
        ek_put_u32(&body, EK_OK);
        status = send_reply(s, EK_MSG_DEV_SYNC | EK_MSG_REPLY, s->syncs[i], &body);
        ek_wbuf_free(&body);
    }
    s->sync_count = 0;
    return status;
}

static struct slaunch *new_launch(struct session *s, uint64_t request, bool run) {
    struct slaunch *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->session = s;
    l->request = request;
    l->run = run;
    l->received_ns = now_ns();
    l->deadline_ns = l->received_ns + (uint64_t)s->server->launch_ms * 1000000ull;
    return l;
}

static void activate(struct session *s, struct slaunch *l) {
    l->next = s->active;
    if (s->active)
        s->active->prev = l;
    s->active = l;
    s->pending++;
}

/* ---- request handlers: parse `in`, append the reply body after the OK status to `out` ---- */

#define NEED_DEVICE(s)                                                                                          \
    do {                                                                                                        \
        if (!(s)->dev_open)                                                                                     \
            return ek_fail(EK_ERR_INVALID_ARG, "no device is open in this session (DEV_OPEN comes first)");     \
    } while (0)

static ek_status_t get_mem(struct session *s, uint64_t id, ek_mem_t *mem) {
    struct entry *e = NULL;
    ek_status_t status = table_get(s, id, ENT_MEM, &e);
    if (status == EK_OK)
        mem->id = e->local;
    return status;
}

static ek_status_t get_rt(struct session *s, uint64_t id, ek_rt_t *rt) {
    struct entry *e = NULL;
    ek_status_t status = table_get(s, id, ENT_RT, &e);
    if (status == EK_OK)
        rt->id = e->local;
    return status;
}

static ek_status_t h_dev_open(struct session *s, struct ek_rbuf *in, struct ek_wbuf *out) {
    (void)out;
    int64_t id = ek_get_i64(in);
    ek_dev_config_t config = {0};
    config.heap_size = (size_t)ek_get_u64(in);
    config.coherence = (ek_coherence_t)ek_get_u32(in);
    config.backing = (ek_backing_t)ek_get_u32(in);
    if (in->bad)
        return EK_OK; /* reported by the caller */
    if (s->dev_open)
        return ek_fail(EK_ERR_BUSY, "this session has its device open already (one device per connection)");
    if (id < 0 || id > INT32_MAX)
        return ek_fail(EK_ERR_NO_DEVICE, "device id %lld is out of range", (long long)id);
    ek_status_t status = ek_dev_request_ex(&s->dev, (int)id, &config);
    if (status == EK_OK)
        s->dev_open = true;
    return status;
}

static ek_status_t h_dev_stats(struct session *s, struct ek_rbuf *in, struct ek_wbuf *out) {
    (void)in;
    NEED_DEVICE(s);
    ek_heap_stats_t st;
    ek_status_t status = ek_dev_heap_stats(s->dev, &st);
    if (status != EK_OK)
        return status;
    uint64_t fields[] = {st.total, st.used, st.peak, st.free, st.largest_free, st.allocations, st.alignment,
                         (uint64_t)st.coherence, (uint64_t)st.backing};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        ek_put_u64(out, fields[i]);
    return EK_OK;
}

static ek_status_t h_coh_report(struct session *s, struct ek_rbuf *in, struct ek_wbuf *out) {
    uint32_t capacity = ek_get_u32(in);
    if (in->bad)
        return EK_OK;
    NEED_DEVICE(s);
    if (capacity > EK_MAX_VIOLATIONS)
        capacity = EK_MAX_VIOLATIONS;
    ek_coh_violation_t *v = capacity ? calloc(capacity, sizeof *v) : NULL;
    if (capacity && !v)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a coherence report");
    size_t count = 0;
    ek_status_t status = ek_dev_coherence_report(s->dev, v, capacity, &count);
    if (status == EK_OK) {
        ek_put_u64(out, count);
        size_t n = count < capacity ? count : capacity;
        ek_put_u32(out, (uint32_t)n);
        for (size_t i = 0; i < n; i++) {
            ek_put_u32(out, (uint32_t)v[i].kind);
            ek_put_u64(out, wire_id_of_local_mem(s, v[i].mem));
            ek_put_u64(out, v[i].offset);
            ek_put_u64(out, v[i].size);
            ek_put_str(out, v[i].what);
        }
    }
    free(v);
    return status;
}

static ek_status_t h_malloc(struct session *s, struct ek_rbuf *in, struct ek_wbuf *out) {
    uint64_t size = ek_get_u64(in);
    if (in->bad)
        return EK_OK;
    NEED_DEVICE(s);
    if (size > SIZE_MAX)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "%llu bytes is more than the board can address",
                       (unsigned long long)size);
    ek_mem_t mem;
    ek_status_t status = ek_malloc_device(s->dev, &mem, (size_t)size);
    if (status != EK_OK)
        return status;
    uint64_t id = table_add(s, ENT_MEM, mem.id, NULL);
    if (!id) {
        ek_free_device(s->dev, mem);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "this session holds %u objects, the server's limit", MAX_ENTRIES);
    }
    ek_put_u64(out, id);
    return EK_OK;
}

static ek_status_t h_free(struct session *s, struct ek_rbuf *in, struct ek_wbuf *out) {
    (void)out;
    uint64_t id = ek_get_u64(in);
    if (in->bad)
        return EK_OK;
    NEED_DEVICE(s);
    struct entry *e = NULL;
    ek_status_t status = table_get(s, id, ENT_MEM, &e);
    if (status != EK_OK)
        return status == EK_ERR_FREED_HANDLE
                   ? ek_fail(EK_ERR_DOUBLE_FREE, "remote memory id 0x%016llx was already freed (double free)",
                             (unsigned long long)id)
                   : status;
    if (in_use(s, e->local)) {
        /* A launch past its timeout still runs on it: free it when that launch ends. */
        if (s->deferred_count == s->deferred_cap) {
            size_t cap = s->deferred_cap ? 2 * s->deferred_cap : 16;
            uint64_t *grown = realloc(s->deferred, cap * sizeof *grown);
            if (!grown)
                return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory on the board to defer a free");
            s->deferred = grown;
            s->deferred_cap = cap;
        }
        s->deferred[s->deferred_count++] = e->local;
        table_remove(s, e);
        return EK_OK;
    }
    if ((status = ek_free_device(s->dev, (ek_mem_t){e->local})) == EK_OK)
        table_remove(s, e);
    return status;
}

static ek_status_t h_write(struct session *s, struct ek_rbuf *in, struct ek_wbuf *out) {
    (void)out;
    uint64_t id = ek_get_u64(in), offset = ek_get_u64(in);
    size_t n;
    const uint8_t *data = ek_get_bytes(in, EK_WIRE_MAX_PAYLOAD, &n);
    if (in->bad)
        return EK_OK;
    NEED_DEVICE(s);
    ek_mem_t mem;
    ek_status_t status = get_mem(s, id, &mem);
    if (status != EK_OK)
        return status;
    if (offset > SIZE_MAX)
        return ek_fail(EK_ERR_OUT_OF_RANGE, "offset %llu is past any memory", (unsigned long long)offset);
    return ek_memcpy_s2d_partial_offset(s->dev, mem, data, n, (size_t)offset);
}

static ek_status_t h_read(struct session *s, struct ek_rbuf *in, struct ek_wbuf *out) {
    uint64_t id = ek_get_u64(in), offset = ek_get_u64(in), size = ek_get_u64(in);
    if (in->bad)
        return EK_OK;
    NEED_DEVICE(s);
    ek_mem_t mem;
    ek_status_t status = get_mem(s, id, &mem);
    if (status != EK_OK)
        return status;
    if (size > EK_WIRE_CHUNK)
        return ek_fail(EK_ERR_INVALID_ARG, "a READ of %llu bytes is over the protocol's chunk of %u",
                       (unsigned long long)size, EK_WIRE_CHUNK);
    if (offset > SIZE_MAX)
        return ek_fail(EK_ERR_OUT_OF_RANGE, "offset %llu is past any memory", (unsigned long long)offset);
    ek_put_u64(out, size);
    uint8_t *at = ek_put_space(out, (size_t)size);
    if (!at)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a read of %llu bytes", (unsigned long long)size);
    return ek_memcpy_d2s_partial_offset(s->dev, at, mem, (size_t)size, (size_t)offset);
}

static ek_status_t h_copy(struct session *s, struct ek_rbuf *in, struct ek_wbuf *out) {
    (void)out;
    uint64_t dst_id = ek_get_u64(in), dst_off = ek_get_u64(in), src_id = ek_get_u64(in), src_off = ek_get_u64(in),
             size = ek_get_u64(in);
    if (in->bad)
        return EK_OK;
    NEED_DEVICE(s);
    ek_mem_t dst, src;
    ek_status_t status = get_mem(s, dst_id, &dst);
    if (status == EK_OK)
        status = get_mem(s, src_id, &src);
    if (status != EK_OK)
        return status;
    if (dst_off > SIZE_MAX || src_off > SIZE_MAX || size > SIZE_MAX)
        return ek_fail(EK_ERR_OUT_OF_RANGE, "a copy range is past any memory");
    return ek_memcpy_d2d(s->dev, dst, (size_t)dst_off, src, (size_t)src_off, (size_t)size);
}

static ek_status_t h_rt_create(struct session *s, struct ek_rbuf *in, struct ek_wbuf *out) {
    ek_rt_config_t config = {0};
    config.kernels = (ek_kernels_t)ek_get_u32(in);
    config.threads = (int)ek_get_i64(in);
    if (in->bad)
        return EK_OK;
    NEED_DEVICE(s);
    ek_rt_t rt;
    ek_status_t status = ek_rt_create_ex(&rt, s->dev, &config);
    if (status != EK_OK)
        return status;
    const char *kernels = "";
    int threads = 0;
    ek_rt_kernels(rt, &kernels);
    ek_rt_threads(rt, &threads);
    uint64_t id = table_add(s, ENT_RT, rt.id, NULL);
    if (!id) {
        ek_rt_destroy(rt);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "this session holds %u objects, the server's limit", MAX_ENTRIES);
    }
    ek_put_u64(out, id);
    ek_put_str(out, kernels);
    ek_put_u32(out, (uint32_t)threads);
    return EK_OK;
}

static ek_status_t h_rt_destroy(struct session *s, struct ek_rbuf *in, struct ek_wbuf *out) {
    (void)out;
    uint64_t id = ek_get_u64(in);
    if (in->bad)
        return EK_OK;
    struct entry *e = NULL;
    ek_status_t status = table_get(s, id, ENT_RT, &e);
    if (status != EK_OK)
        return status == EK_ERR_FREED_HANDLE
                   ? ek_fail(EK_ERR_DOUBLE_FREE, "remote runtime id 0x%016llx was already destroyed",
                             (unsigned long long)id)
                   : status;
    if ((status = ek_rt_destroy((ek_rt_t){e->local})) == EK_OK)
        table_remove(s, e);
    /* Its launches ended: their completions go out before this reply. */
    drain_completions(s);
    return status;
}

static ek_status_t h_upload(struct session *s, struct ek_rbuf *in, struct ek_wbuf *out) {
    (void)out;
    uint64_t total = ek_get_u64(in), offset = ek_get_u64(in);
    size_t n;
    const uint8_t *data = ek_get_bytes(in, EK_WIRE_MAX_PAYLOAD, &n);
    if (in->bad)
        return EK_OK;
    if (offset == 0) {
        free(s->upload);
        s->upload = NULL;
        s->upload_total = s->upload_received = 0;
        if (total == 0)
            return ek_fail(EK_ERR_MODEL_INVALID, "the model is empty (0 bytes)");
        if (total > s->server->max_model)
            return ek_fail(EK_ERR_OUT_OF_MEMORY, "the model is %llu bytes; this server takes models of at most "
                           "%llu bytes (remote_server --max-model-mb)", (unsigned long long)total,
                           (unsigned long long)s->server->max_model);
        if (!(s->upload = malloc((size_t)total)))
            return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory on the board for a model of %llu bytes",
                           (unsigned long long)total);
        s->upload_total = total;
    }
    if (!s->upload || total != s->upload_total || offset != s->upload_received || n > total - offset)
        return ek_fail(EK_ERR_INVALID_ARG, "a model upload chunk at offset %llu of %llu bytes does not continue "
                       "the upload in progress", (unsigned long long)offset, (unsigned long long)total);
    memcpy(s->upload + offset, data, n);
    s->upload_received += n;
    return EK_OK;
}

static void put_io(struct ek_wbuf *out, const ek_io_info_t *io) {
    ek_put_str(out, io->name);
    /* bit 16 of the dtype word: a dynamic output (docs/remote-protocol.md); 0 for every other tensor */
    ek_put_u32(out, (uint32_t)io->dtype | (io->dynamic ? 1u << 16 : 0));
    ek_put_f32(out, io->scale);
    ek_put_u32(out, (uint32_t)io->zero_point);
    ek_put_u64(out, io->max_bytes);
}

/* Every network of the runtime, as the client caches them (remote_client.c: read_networks). */
static ek_status_t put_networks(ek_rt_t rt, struct ek_wbuf *out) {
    int count = 0;
    ek_status_t status = ek_rt_network_count(rt, &count);
    ek_put_u32(out, (uint32_t)count);
    for (int i = 0; status == EK_OK && i < count; i++) {
        const char *name;
        const ek_net_info_t *info;
        if ((status = ek_rt_network_name(rt, i, &name)) != EK_OK ||
            (status = ek_rt_network_info(rt, name, &info)) != EK_OK)
            break;
        ek_put_str(out, info->name);
        ek_put_u32(out, (uint32_t)info->input_count);
        for (int k = 0; k < info->input_count; k++)
            put_io(out, &info->inputs[k]);
        ek_put_u32(out, (uint32_t)info->output_count);
        for (int k = 0; k < info->output_count; k++)
            put_io(out, &info->outputs[k]);
        ek_put_u32(out, (uint32_t)info->stage_count);
        for (int st = 0; st < info->stage_count; st++) {
            for (int k = 0; k < info->input_count; k++)
                ek_put_shape(out, &info->stages[st].input_shapes[k]);
            for (int k = 0; k < info->output_count; k++)
                ek_put_shape(out, &info->stages[st].output_shapes[k]);
        }
    }
    return status;
}

static ek_status_t h_load(struct session *s, struct ek_rbuf *in, struct ek_wbuf *out) {
    uint64_t id = ek_get_u64(in);
    if (in->bad)
        return EK_OK;
    ek_rt_t rt;
    ek_status_t status = get_rt(s, id, &rt);
    if (status != EK_OK)
        return status;
    if (!s->upload || s->upload_received != s->upload_total)
        return ek_fail(EK_ERR_INVALID_ARG, "LOAD without a complete model upload (%llu of %llu bytes arrived)",
                       (unsigned long long)s->upload_received, (unsigned long long)s->upload_total);
    status = ek_rt_load_model_data(rt, s->upload, (size_t)s->upload_total);
    free(s->upload);
    s->upload = NULL;
    s->upload_total = s->upload_received = 0;
    if (status != EK_OK)
        return status;
    return put_networks(rt, out);
}

static void get_tensor(struct ek_rbuf *in, uint64_t *mem, ek_tensor_t *t) {
    *mem = ek_get_u64(in);
    t->offset = (size_t)ek_get_u64(in);
    t->dtype = (ek_dtype_t)ek_get_u32(in);
    ek_get_shape(in, &t->shape);
}

static void get_options(struct ek_rbuf *in, ek_launch_options_t *options, uint32_t *flags) {
    memset(options, 0, sizeof *options);
    options->threads = (int)ek_get_i64(in);
    options->cpu_mask = ek_get_u64(in);
    *flags = ek_get_u32(in);
}

#define FLAG_PROFILE 1u
#define FLAG_DUMP 2u

/* The profile and the scratch dump directory a launch's flags ask for. */
static ek_status_t prepare_extras(struct session *s, struct slaunch *l, uint32_t flags, ek_launch_options_t *options) {
    if (flags & ~(FLAG_PROFILE | FLAG_DUMP))
        return ek_fail(EK_ERR_UNSUPPORTED, "launch flags 0x%x: this server knows profile (1) and dump (2)", flags);
    if ((flags & FLAG_PROFILE) && ek_profile_create(&l->profile) != EK_OK)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory on the board for a profile");
    options->profile = l->profile;
    if (flags & FLAG_DUMP) {
        struct ek_server *srv = s->server;
        pthread_mutex_lock(&srv->lock);
        if (!srv->scratch[0]) {
            const char *tmp = getenv("TMPDIR");
            char dir[256];
            snprintf(dir, sizeof dir, "%s/edgekit-remote-XXXXXX", tmp && *tmp && strlen(tmp) < 200 ? tmp : "/tmp");
            if (mkdtemp(dir))
                snprintf(srv->scratch, sizeof srv->scratch, "%s", dir);
        }
        char dir[300];
        snprintf(dir, sizeof dir, "%s/dump-XXXXXX", srv->scratch);
        bool made = srv->scratch[0] && mkdtemp(dir) != NULL;
        pthread_mutex_unlock(&srv->lock);
        if (!made || !(l->dump_dir = strdup(dir)))
            return ek_fail(EK_ERR_SYSTEM, "the board's remote_server cannot make a scratch directory for a dump in "
                           "%s: %s", srv->scratch[0] ? srv->scratch : "$TMPDIR", strerror(errno));
        options->dump_dir = l->dump_dir;
    }
    return EK_OK;
}

#define MAX_IO 4096u /* inputs or outputs of one launch */

static ek_status_t h_launch(struct session *s, uint64_t request, struct ek_rbuf *in, struct ek_wbuf *out) {
    uint64_t rt_id = ek_get_u64(in);
    char net[EK_WIRE_MAX_STRING];
    ek_get_str(in, net, sizeof net);
    uint32_t n_in = ek_get_u32(in), n_out = ek_get_u32(in);
    if (in->bad)
        return EK_OK;
    if (n_in > MAX_IO || n_out > MAX_IO)
        return ek_fail(EK_ERR_INVALID_ARG, "%u inputs and %u outputs: the protocol allows %u each", n_in, n_out,
                       MAX_IO);
    ek_rt_t rt;
    ek_status_t status = get_rt(s, rt_id, &rt);
    ek_tensor_t *tensors = calloc((size_t)n_in + n_out + 1, sizeof *tensors);
    if (!tensors)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a launch");
    for (uint32_t i = 0; i < n_in + n_out && !in->bad; i++) {
        uint64_t mem;
        get_tensor(in, &mem, &tensors[i]);
        /* Runtime-allocated outputs come with id 0. */
        if (status == EK_OK && !in->bad && (i < n_in || mem))
            status = get_mem(s, mem, &tensors[i].mem);
    }
    ek_tensor_t *outs = tensors + n_in;
    bool user_mem = ek_get_u32(in) != 0;
    ek_launch_options_t options;
    uint32_t flags;
    get_options(in, &options, &flags);
    const ek_net_info_t *info = NULL;
    if (status == EK_OK && !in->bad && ek_rt_network_info(rt, net, &info) == EK_OK)
        for (int i = 0; i < info->output_count && status == EK_OK; i++)
            if (info->outputs[i].dynamic) /* its shape is known at the end only, which LAUNCH_DONE does not carry */
                status = ek_fail(EK_ERR_UNSUPPORTED, "network '%s': output '%s' has a data-dependent size; through a "
                                 "remote device run it with ek_rt_launch_data (C), which returns the shapes it "
                                 "produced, or run on the board", info->name, info->outputs[i].name);
    if (in->bad || status != EK_OK) {
        free(tensors);
        return status;
    }
    struct slaunch *l = new_launch(s, request, false);
    uint64_t wire = l ? table_add(s, ENT_LAUNCH, 0, l) : 0;
    if (!wire) {
        free(l);
        free(tensors);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no room for another launch in this session");
    }
    l->wire = wire;
    if ((status = prepare_extras(s, l, flags, &options)) != EK_OK) {
        struct entry *e = NULL;
        if (table_get(s, wire, ENT_LAUNCH, &e) == EK_OK)
            table_remove(s, e);
        free_launch(s, l);
        free(tensors);
        return status;
    }
    options.on_done = launch_done;
    options.user_data = l;
    status = ek_rt_launch_tensor(rt, net, tensors, (int)n_in, outs, (int)n_out, user_mem, &options, &l->launch);
    if (status != EK_OK) {
        struct entry *e = NULL;
        if (table_get(s, wire, ENT_LAUNCH, &e) == EK_OK)
            table_remove(s, e);
        free_launch(s, l);
        free(tensors);
        return status;
    }
    activate(s, l);
    if ((l->uses = calloc((size_t)n_in + n_out + 1, sizeof *l->uses)) != NULL) {
        for (uint32_t i = 0; i < n_in + n_out; i++)
            l->uses[l->n_uses++] = tensors[i].mem.id;
    } else {
        /* No room to remember them: let this launch finish before anything else runs. */
        ek_launch_wait(l->launch, -1);
    }
    ek_put_u64(out, wire);
    ek_put_u32(out, n_out);
    for (uint32_t i = 0; i < n_out; i++) {
        uint64_t id = user_mem ? 0 : table_add(s, ENT_MEM, outs[i].mem.id, NULL);
        /* Out of table room: the output stays owned by the device and is freed with the session. */
        ek_put_u64(out, id);
        ek_put_u64(out, outs[i].offset);
        ek_put_u32(out, (uint32_t)outs[i].dtype);
        ek_put_shape(out, &outs[i].shape);
    }
    free(tensors);
    return EK_OK;
}

/* RUN: inputs in the request, outputs in the reply; staged through device memory the server owns. */
static ek_status_t h_run(struct session *s, uint64_t request, struct ek_rbuf *in, bool *replied_later) {
    uint64_t rt_id = ek_get_u64(in);
    char net[EK_WIRE_MAX_STRING];
    ek_get_str(in, net, sizeof net);
    uint32_t n_in = ek_get_u32(in);
    if (in->bad || n_in > MAX_IO)
        return in->bad ? EK_OK : ek_fail(EK_ERR_INVALID_ARG, "%u inputs is over the protocol's %u", n_in, MAX_IO);
    ek_rt_t rt;
    ek_status_t status = get_rt(s, rt_id, &rt);
    if (status != EK_OK)
        return status;
    const ek_net_info_t *info;
    if ((status = ek_rt_network_info(rt, net, &info)) != EK_OK)
        return status;
    if ((int)n_in != info->input_count)
        return ek_fail(EK_ERR_INVALID_ARG, "network '%s' has %d inputs; the run gives %u", net, info->input_count,
                       n_in);
    struct slaunch *l = new_launch(s, request, true);
    if (!l || !(l->tensors = calloc((size_t)n_in + (size_t)info->output_count, sizeof *l->tensors))) {
        if (l)
            free_launch(s, l);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a run");
    }
    l->n_in = (int)n_in;
    l->n_out = info->output_count;
    for (uint32_t i = 0; i < n_in && status == EK_OK; i++) {
        ek_tensor_t *t = &l->tensors[i];
        ek_get_shape(in, &t->shape);
        size_t n;
        const uint8_t *data = ek_get_bytes(in, EK_WIRE_MAX_PAYLOAD, &n);
        if (in->bad)
            break;
        t->dtype = info->inputs[i].dtype;
        if (n == 0)
            status = ek_fail(EK_ERR_INVALID_ARG, "input '%s' is empty", info->inputs[i].name);
        else if ((status = ek_malloc_device(s->dev, &t->mem, n)) == EK_OK)
            status = ek_memcpy_s2d(s->dev, t->mem, data);
    }
    ek_launch_options_t options;
    uint32_t flags;
    get_options(in, &options, &flags);
    if (!in->bad && status == EK_OK)
        status = prepare_extras(s, l, flags, &options);
    /* Bytes after the fields end the session (the caller says so): nothing is launched for them. */
    if (in->bad || status != EK_OK || in->pos != in->len) {
        free_launch(s, l);
        return status;
    }
    options.on_done = launch_done;
    options.user_data = l;
    status = ek_rt_launch_tensor(rt, net, l->tensors, l->n_in, l->tensors + n_in, l->n_out, false, &options,
                                 &l->launch);
    if (status != EK_OK) {
        free_launch(s, l);
        return status;
    }
    activate(s, l);
    *replied_later = true;
    return EK_OK;
}

/* ---- the handshake ---- */

static ek_status_t h_hello(struct session *s, const struct ek_wire_header *h, struct ek_rbuf *in,
                           struct ek_wbuf *out) {
    uint32_t min = ek_get_u32(in), max = ek_get_u32(in);
    char version[64], arch[64];
    ek_get_str(in, version, sizeof version);
    ek_get_str(in, arch, sizeof arch);
    if (in->bad)
        return ek_fail(EK_ERR_VERSION, "the client's HELLO (frame version %u) is not one this server (EdgeKit %s, "
                       "protocol %d) can read: install the same EdgeKit release on the host and the board",
                       h->version, ek_version(), EK_REMOTE_PROTOCOL);
    if (min > EK_REMOTE_PROTOCOL)
        return ek_fail(EK_ERR_VERSION, "the board's remote_server (EdgeKit %s) speaks remote protocol %d; this "
                       "client (EdgeKit %s) needs protocol %u or newer: upgrade EdgeKit on the board to %s "
                       "(invoke package, then invoke flash) or use a host EdgeKit of the board's release",
                       ek_version(), EK_REMOTE_PROTOCOL, version, min, version);
    if (max < EK_REMOTE_PROTOCOL)
        return ek_fail(EK_ERR_VERSION, "the board's remote_server (EdgeKit %s) speaks remote protocol %d; this "
                       "client (EdgeKit %s) speaks only up to %u: upgrade EdgeKit on the host to %s "
                       "(pip install edgekit==%s)", ek_version(), EK_REMOTE_PROTOCOL, version, max, ek_version(),
                       ek_version());
    int devices = 0, threads = 0;
    ek_kernels_t kernels = EK_KERNELS_PORTABLE;
    const struct ek_provider *provider;
    ek_dev_count(&devices);
    ek_default_threads(&threads);
    if (ek_provider_select(EK_KERNELS_DEFAULT, &kernels, &provider, NULL) != EK_OK)
        kernels = EK_KERNELS_PORTABLE;
    ek_put_u32(out, EK_REMOTE_PROTOCOL);
    ek_put_str(out, ek_version());
    ek_put_str(out, ek_wire_arch());
    ek_put_u32(out, EK_MODEL_FORMAT_MAJOR);
    ek_put_u32(out, EK_MODEL_FORMAT_MINOR);
    ek_put_u32(out, (uint32_t)devices);
    ek_put_str(out, kernels == EK_KERNELS_PORTABLE ? "portable" : "xnnpack");
    ek_put_u32(out, (uint32_t)threads);
    ek_put_u32(out, (uint32_t)s->server->idle_ms);
    s->hello = true;
    slog(s->server, "session %llu (%s): EdgeKit %s client on %s", (unsigned long long)s->number, s->ch.peer, version,
         arch);
    return EK_OK;
}

/* PAIR, the first frame of a session with a paired server: the client's key id and nonce, answered with
 * the server's nonce in the clear; from then on both directions are sealed with keys derived from the
 * pairing key and both nonces. Returns false when the session must end. */
static bool pair(struct session *s, const struct ek_wire_header *h, struct ek_rbuf *in) {
    struct ek_server *srv = s->server;
    ek_status_t status = EK_OK;
    uint8_t server_nonce[32], id[EK_KEY_ID_BYTES];
    if (!srv->paired) {
        status = ek_fail(EK_ERR_CONNECTION, "this remote_server has no pairing key (it listens on loopback only): "
                         "connect without a key");
    } else if (s->ch.secure) {
        status = ek_fail(EK_ERR_CONNECTION, "a second PAIR in one session");
    } else if (h->type != EK_MSG_PAIR) {
        status = ek_fail(EK_ERR_CONNECTION, "this remote_server requires a pairing key, and the client gave none: "
                         "copy the server's key file to the host and connect with it (Python: key_file=..., C: "
                         "ek_remote_options_t.key_file, edgekit-app --rpc_key FILE)");
    } else {
        uint32_t version = ek_get_u32(in);
        size_t id_len, nonce_len;
        const uint8_t *client_id = ek_get_bytes(in, EK_KEY_ID_BYTES, &id_len);
        const uint8_t *client_nonce = ek_get_bytes(in, 32, &nonce_len);
        ek_key_id(srv->key, id);
        if (in->bad || version != 1 || id_len != EK_KEY_ID_BYTES || nonce_len != 32 || in->pos != in->len)
            status = ek_fail(EK_ERR_CONNECTION, "a malformed PAIR frame (pairing version %u; this server speaks 1)",
                             version);
        else if (memcmp(client_id, id, sizeof id) != 0)
            status = ek_fail(EK_ERR_CONNECTION, "authentication failed: the client's pairing key is not this "
                             "remote_server's: copy the server's key file to the host again");
        if (status == EK_OK) {
            ek_random(server_nonce, sizeof server_nonce);
            struct ek_wbuf out;
            ek_wbuf_init(&out);
            ek_put_u32(&out, EK_OK);
            ek_put_bytes(&out, server_nonce, sizeof server_nonce);
            status = out.failed ? ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a reply")
                                : ek_wire_send_frame(&s->ch, EK_MSG_PAIR | EK_MSG_REPLY, h->request, out.data,
                                                     out.len);
            ek_wbuf_free(&out);
            if (status == EK_OK) {
                ek_channel_secure(&s->ch, srv->key, client_nonce, server_nonce, true);
                slog(srv, "session %llu (%s): paired", (unsigned long long)s->number, s->ch.peer);
                return true;
            }
            return false;
        }
    }
    send_error(&s->ch, (uint16_t)(h->type | EK_MSG_REPLY), h->request, status, ek_last_error());
    slog(srv, "session %llu (%s): refused: %s", (unsigned long long)s->number, s->ch.peer, ek_last_error());
    return false;
}

/* Handle one request. Returns false when the session must end (a protocol error or a lost peer). */
static bool handle(struct session *s, const struct ek_wire_header *h, const uint8_t *payload) {
    struct ek_rbuf in;
    ek_rbuf_init(&in, payload, (size_t)h->length);
    struct ek_wbuf out;
    ek_wbuf_init(&out);
    ek_put_u32(&out, EK_OK);
    ek_status_t status = EK_OK;
    bool fatal = false, later = false;
    if (h->type == EK_MSG_PAIR || (s->server->paired && !s->ch.secure)) {
        ek_wbuf_free(&out);
        return pair(s, h, &in);
    }
    bool first_hello = h->type == EK_MSG_HELLO && !s->hello;
    if (h->type != EK_MSG_HELLO && h->version != EK_REMOTE_PROTOCOL) {
        status = ek_fail(EK_ERR_VERSION, "a frame of protocol version %u after the handshake agreed on %d",
                         h->version, EK_REMOTE_PROTOCOL);
        fatal = true;
    } else if (!s->hello && h->type != EK_MSG_HELLO) {
        status = ek_fail(EK_ERR_CONNECTION, "the first frame must be HELLO (type %d), not type %u: is this an "
                         "EdgeKit client?", EK_MSG_HELLO, h->type);
        fatal = true;
    } else {
        switch (h->type) {
        case EK_MSG_HELLO:
            if (s->hello) {
                status = ek_fail(EK_ERR_CONNECTION, "a second HELLO in one session");
                fatal = true;
            } else if ((status = h_hello(s, h, &in, &out)) != EK_OK) {
                fatal = true;
            }
            break;
        case EK_MSG_PING: break;
        case EK_MSG_DEV_OPEN: status = h_dev_open(s, &in, &out); break;
        case EK_MSG_DEV_SYNC:
            if (!s->dev_open) {
                status = ek_fail(EK_ERR_INVALID_ARG, "no device is open in this session (DEV_OPEN comes first)");
            } else if (s->sync_count == s->sync_cap && !grow_syncs(s)) {
                status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory on the board for another DEV_SYNC");
            } else {
                s->syncs[s->sync_count++] = h->request;
                later = true;
            }
            break;
        case EK_MSG_DEV_STATS: status = h_dev_stats(s, &in, &out); break;
        case EK_MSG_DEV_COH_REPORT: status = h_coh_report(s, &in, &out); break;
        case EK_MSG_DEV_COH_CLEAR:
            status = s->dev_open ? ek_dev_coherence_clear(s->dev)
                                 : ek_fail(EK_ERR_INVALID_ARG, "no device is open in this session");
            break;
        case EK_MSG_MALLOC: status = h_malloc(s, &in, &out); break;
        case EK_MSG_FREE: status = h_free(s, &in, &out); break;
        case EK_MSG_WRITE: status = h_write(s, &in, &out); break;
        case EK_MSG_READ: status = h_read(s, &in, &out); break;
        case EK_MSG_COPY: status = h_copy(s, &in, &out); break;
        case EK_MSG_RT_CREATE: status = h_rt_create(s, &in, &out); break;
        case EK_MSG_RT_DESTROY: status = h_rt_destroy(s, &in, &out); break;
        case EK_MSG_UPLOAD: status = h_upload(s, &in, &out); break;
        case EK_MSG_LOAD: status = h_load(s, &in, &out); break;
        case EK_MSG_LAUNCH: status = h_launch(s, h->request, &in, &out); break;
        case EK_MSG_RUN: status = h_run(s, h->request, &in, &later); break;
        default:
            status = ek_fail(EK_ERR_CONNECTION, "unknown message type %u (this server speaks protocol %d, types 1 "
                             "to %d)", h->type, EK_REMOTE_PROTOCOL, EK_MSG_TYPE_END - 1);
            fatal = true;
        }
        /* h_hello words its own parse errors: a HELLO it cannot read is another version's. */
        if (in.bad && !first_hello) {
            status = ek_fail(EK_ERR_CONNECTION, "a malformed request (type %u): %s", h->type, in.why);
            fatal = true;
            later = false;
        } else if (status == EK_OK && in.pos != in.len) { /* replied to later (RUN, DEV_SYNC) or not */
            status = ek_fail(EK_ERR_CONNECTION, "a request (type %u) with %zu bytes after its fields", h->type,
                             in.len - in.pos);
            fatal = true;
            later = false;
        }
    }
    bool alive = !fatal;
    if (status != EK_OK)
        error_body(&out, status);
    /* A protocol error ends the session with the protocol's error frame (type 0x8000, request 0), which
     * every waiting caller of the client sees; the first HELLO is answered with HELLO's reply, whatever
     * the client's version. */
    uint16_t type = (uint16_t)(h->type | EK_MSG_REPLY);
    uint64_t request = h->request;
    if (fatal && !first_hello) {
        type = EK_MSG_REPLY;
        request = 0;
    }
    if (!later || status != EK_OK)
        alive = send_reply(s, type, request, &out) == EK_OK && alive;
    if (fatal)
        slog(s->server, "session %llu (%s): closed: %s", (unsigned long long)s->number, s->ch.peer, ek_last_error());
    ek_wbuf_free(&out);
    return alive;
}

/* ---- sessions ---- */

static void session_cleanup(struct session *s) {
    /* Launches first (they use the memory and runtimes), then runtimes, then memory, then the device. */
    for (struct slaunch *l = s->active; l; l = l->next)
        ek_launch_wait(l->launch, -1);
    while (s->active) {
        struct slaunch *l = s->active;
        active_remove(s, l);
        free_launch(s, l);
    }
    release_deferred(s, true);
    free(s->deferred);
    free(s->syncs);
    for (uint32_t i = 0; i < s->table_count; i++)
        if (s->table[i].kind == ENT_RT)
            ek_rt_destroy((ek_rt_t){s->table[i].local});
    for (uint32_t i = 0; i < s->table_count; i++)
        if (s->table[i].kind == ENT_MEM)
            ek_free_device(s->dev, (ek_mem_t){s->table[i].local});
    if (s->dev_open)
        ek_dev_free(s->dev);
    free(s->table);
    free(s->upload);
    close(s->wake[0]);
    close(s->wake[1]);
    pthread_mutex_destroy(&s->done_lock);
}

static void *session_main(void *arg) {
    struct session *s = arg;
    struct ek_server *srv = s->server;
    /* A client that stops reading (or stalls mid-frame) for the idle timeout is dropped, so a send
     * can never block this thread for longer. */
    struct timeval tv = {.tv_sec = srv->idle_ms / 1000, .tv_usec = (srv->idle_ms % 1000) * 1000};
    setsockopt(s->ch.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(s->ch.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    s->last_frame_ns = now_ns();
    const char *why = "the client disconnected";
    for (;;) {
        uint64_t now = now_ns(), idle_end = s->last_frame_ns + (uint64_t)srv->idle_ms * 1000000ull;
        if (check_deadlines(s, now) != EK_OK || maybe_reply_sync(s) != EK_OK) {
            why = ek_last_error();
            break;
        }
        if (now >= idle_end && s->pending == 0) {
            why = "idle timeout";
            break;
        }
        uint64_t wake_at = idle_end;
        for (struct slaunch *l = s->active; l; l = l->next)
            if (!l->reported && l->deadline_ns < wake_at)
                wake_at = l->deadline_ns;
        int timeout = wake_at > now ? (int)((wake_at - now) / 1000000ull) + 1 : 1;
        struct pollfd fds[3] = {{s->ch.fd, POLLIN, 0}, {s->wake[0], POLLIN, 0}, {srv->stop_pipe[0], POLLIN, 0}};
        int n = poll(fds, 3, timeout);
        if (n < 0 && errno != EINTR) {
            why = "poll failed";
            break;
        }
        if (srv->stopping) {
            why = "the server is stopping";
            break;
        }
        if (n > 0 && (fds[1].revents & POLLIN) && drain_completions(s) != EK_OK) {
            why = ek_last_error();
            break;
        }
        if (n > 0 && (fds[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            struct ek_wire_header h;
            uint8_t *payload;
            ek_status_t status = ek_wire_recv_frame(&s->ch, &h, &payload);
            if (status != EK_OK) {
                if (status != EK_ERR_CONNECTION || strstr(ek_last_error(), "closed the connection") == NULL) {
                    /* A broken frame: say why before closing, so the peer is not left guessing. */
                    send_error(&s->ch, EK_MSG_REPLY, 0, status, ek_last_error());
                }
                why = ek_last_error();
                break;
            }
            s->last_frame_ns = now_ns();
            bool alive = handle(s, &h, payload);
            free(payload);
            s->last_frame_ns = now_ns(); /* a long request (a model load) is not silence */
            if (!alive) {
                why = ek_last_error();
                break;
            }
        }
    }
    char reason[512];
    snprintf(reason, sizeof reason, "%s", why);
    shutdown(s->ch.fd, SHUT_RDWR);
    session_cleanup(s);
    close(s->ch.fd);
    ek_channel_wipe(&s->ch);
    /* Finished (no longer counted open by ek_server_stats) before the log says so; the listener joins
     * the thread before freeing `s`, so the line below may still read it. */
    pthread_mutex_lock(&srv->lock);
    s->finished = true;
    pthread_mutex_unlock(&srv->lock);
    slog(srv, "session %llu (%s) ended: %s", (unsigned long long)s->number, s->ch.peer, reason);
    return NULL;
}

/* Join and free finished sessions (server->lock held by the caller: no). */
static void reap_sessions(struct ek_server *srv, bool all) {
    for (;;) {
        struct session *done = NULL;
        pthread_mutex_lock(&srv->lock);
        for (struct session *s = srv->sessions; s; s = s->next)
            if (all || s->finished) {
                done = s;
                break;
            }
        if (done) {
            if (done->prev)
                done->prev->next = done->next;
            else
                srv->sessions = done->next;
            if (done->next)
                done->next->prev = done->prev;
            srv->session_count--;
        }
        pthread_mutex_unlock(&srv->lock);
        if (!done)
            return;
        pthread_join(done->thread, NULL);
        free(done);
    }
}

static void refuse(int fd, const char *peer, ek_status_t status, const char *message) {
    struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct ek_channel ch = {.fd = fd};
    snprintf(ch.peer, sizeof ch.peer, "%s", peer);
    send_error(&ch, EK_MSG_HELLO | EK_MSG_REPLY, 0, status, message);
    close(fd);
}

/* A session on a connected socket, not yet listed or running; NULL (and the peer told why) on failure. */
static struct session *session_new(struct ek_server *srv, int fd, const char *peer) {
    struct session *s = calloc(1, sizeof *s);
    if (!s) {
        refuse(fd, peer, EK_ERR_OUT_OF_MEMORY, "the server has no host memory for another session");
        return NULL;
    }
    s->server = srv;
    s->ch.fd = fd;
    s->free_head = UINT32_MAX;
    snprintf(s->ch.peer, sizeof s->ch.peer, "%s", peer);
    if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        free(s);
        refuse(fd, peer, EK_ERR_SYSTEM, "the server could not make a pipe for a session");
        return NULL;
    }
    pthread_mutex_init(&s->done_lock, NULL);
    return s;
}

static void start_session(struct ek_server *srv, int fd, const char *peer) {
    struct session *s = session_new(srv, fd, peer);
    if (!s)
        return;
    pthread_mutex_lock(&srv->lock);
    s->number = ++srv->sessions_started;
    s->next = srv->sessions;
    if (srv->sessions)
        srv->sessions->prev = s;
    srv->sessions = s;
    srv->session_count++;
    pthread_mutex_unlock(&srv->lock);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1024 * 1024); /* model loads (and XNNPACK setup) run on it */
    int rc = pthread_create(&s->thread, &attr, session_main, s);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        pthread_mutex_lock(&srv->lock);
        if (s->next)
            s->next->prev = NULL;
        srv->sessions = s->next;
        srv->session_count--;
        pthread_mutex_unlock(&srv->lock);
        close(s->wake[0]);
        close(s->wake[1]);
        pthread_mutex_destroy(&s->done_lock);
        free(s);
        refuse(fd, peer, EK_ERR_SYSTEM, "the server could not start a thread for another session");
    }
}

ek_status_t ek_server_serve_fd(ek_server_t *srv, int fd, const char *peer) {
    if (!srv || fd < 0)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_server_serve_fd: no server or no socket");
    struct session *s = session_new(srv, fd, peer ? peer : "fd");
    if (!s)
        return ek_fail(EK_ERR_SYSTEM, "no host memory or pipe for a session (the socket is closed)");
    pthread_mutex_lock(&srv->lock);
    s->number = ++srv->sessions_started;
    pthread_mutex_unlock(&srv->lock);
    session_main(s); /* closes fd */
    free(s);
    return EK_OK;
}

/* ---- the listener ---- */

static bool is_loopback(const struct sockaddr *addr) {
    if (addr->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)(const void *)addr)->sin_addr.s_addr) >> 24) == 127;
    if (addr->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)(const void *)addr)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a);
    }
    return false;
}

ek_status_t ek_server_create(ek_server_t **out, const ek_server_config_t *config) {
    if (!out)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_server_create: server is NULL");
    *out = NULL;
    ek_server_config_t c = {0};
    if (config)
        c = *config;
    const char *host = c.host && *c.host ? c.host : "127.0.0.1";
    if (c.port < 0 || c.port > 65535)
        return ek_fail(EK_ERR_INVALID_ARG, "port %d is not 0 .. 65535", c.port);
    if (c.max_sessions < 0 || c.idle_timeout_ms < 0 || c.launch_timeout_ms < 0)
        return ek_fail(EK_ERR_INVALID_ARG, "max_sessions, idle_timeout_ms and launch_timeout_ms must not be "
                       "negative");
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *found = NULL;
    char port_text[16];
    snprintf(port_text, sizeof port_text, "%d", c.port);
    int rc = getaddrinfo(host, port_text, &hints, &found);
    if (rc != 0)
        return ek_fail(EK_ERR_INVALID_ARG, "cannot listen on '%s': %s", host, gai_strerror(rc));
    uint8_t key[EK_KEY_BYTES];
    bool paired = c.key_file && *c.key_file;
    if (paired) {
        ek_status_t loaded = ek_key_load(c.key_file, key);
        if (loaded != EK_OK) {
            freeaddrinfo(found);
            return loaded;
        }
    }
    for (struct addrinfo *a = found; a && !paired; a = a->ai_next)
        if (!is_loopback(a->ai_addr)) {
            freeaddrinfo(found);
            return ek_fail(EK_ERR_UNSUPPORTED, "refusing to listen on '%s': it is not a loopback address, and "
                           "without a pairing key nothing would authenticate or encrypt the sessions. Either keep "
                           "it on 127.0.0.1 and reach it through SSH (ek.Device(\"ssh://root@board\"), or ssh -tt -L "
                           "%d:127.0.0.1:%d root@board sleep infinity), or pair: remote_server --make-key board.key, then "
                           "remote_server --host %s --key board.key, and give clients a copy of board.key "
                           "(docs/remote-protocol.md)", host, c.port ? c.port : EK_REMOTE_DEFAULT_PORT,
                           c.port ? c.port : EK_REMOTE_DEFAULT_PORT, host);
        }
    struct ek_server *srv = calloc(1, sizeof *srv);
    if (!srv) {
        freeaddrinfo(found);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a server");
    }
    srv->listen_fd = -1;
    ek_status_t status = EK_OK;
    int err = 0;
    for (struct addrinfo *a = found; a && srv->listen_fd < 0; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 64) != 0) {
            err = errno;
            close(fd);
            continue;
        }
        srv->listen_fd = fd;
    }
    freeaddrinfo(found);
    if (srv->listen_fd < 0) {
        status = ek_fail(EK_ERR_SYSTEM, "cannot listen on %s port %d: %s%s", host, c.port, strerror(err),
                         err == EADDRINUSE ? " (another remote_server, or another program, has that port: pick "
                                             "another with --port)" : "");
        free(srv);
        return status;
    }
    struct sockaddr_storage bound;
    socklen_t len = sizeof bound;
    getsockname(srv->listen_fd, (struct sockaddr *)&bound, &len);
    srv->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                  : ((struct sockaddr_in *)&bound)->sin_port);
    snprintf(srv->address, sizeof srv->address, "%s", host);
    if (pipe2(srv->stop_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        close(srv->listen_fd);
        free(srv);
        return ek_fail(EK_ERR_SYSTEM, "cannot make the server's stop pipe: %s", strerror(errno));
    }
    srv->max_sessions = c.max_sessions ? c.max_sessions : DEFAULT_MAX_SESSIONS;
    srv->idle_ms = c.idle_timeout_ms ? c.idle_timeout_ms : DEFAULT_IDLE_MS;
    srv->launch_ms = c.launch_timeout_ms ? c.launch_timeout_ms : DEFAULT_LAUNCH_MS;
    srv->max_model = c.max_model_bytes ? c.max_model_bytes : DEFAULT_MAX_MODEL;
    srv->log = c.log;
    srv->log_user = c.log_user_data;
    srv->paired = paired;
    if (paired)
        memcpy(srv->key, key, sizeof key);
    pthread_mutex_init(&srv->lock, NULL);
    *out = srv;
    return EK_OK;
}

int ek_server_port(const ek_server_t *server) { return server ? server->port : -1; }

ek_status_t ek_server_run(ek_server_t *srv) {
    if (!srv)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_server_run: server is NULL");
    slog(srv, "listening on %s port %d (protocol %d, EdgeKit %s, %s; %s)", srv->address, srv->port,
         EK_REMOTE_PROTOCOL, ek_version(), ek_wire_arch(),
         srv->paired ? "paired: sessions must hold the key and are encrypted" : "loopback only, no pairing key");
    while (!srv->stopping) {
        struct pollfd fds[2] = {{srv->listen_fd, POLLIN, 0}, {srv->stop_pipe[0], POLLIN, 0}};
        int n = poll(fds, 2, 1000);
        reap_sessions(srv, false);
        if (n < 0 && errno != EINTR)
            break;
        if (srv->stopping || n <= 0 || !(fds[0].revents & POLLIN))
            continue;
        struct sockaddr_storage addr;
        socklen_t len = sizeof addr;
        int fd = accept4(srv->listen_fd, (struct sockaddr *)&addr, &len, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        char peer[80] = "?";
        char host[64] = "?", port[16] = "?";
        if (getnameinfo((struct sockaddr *)&addr, len, host, sizeof host, port, sizeof port,
                        NI_NUMERICHOST | NI_NUMERICSERV) == 0)
            snprintf(peer, sizeof peer, "%s:%s", host, port);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_mutex_lock(&srv->lock);
        int count = srv->session_count;
        pthread_mutex_unlock(&srv->lock);
        if (count >= srv->max_sessions) {
            char message[200];
            snprintf(message, sizeof message, "the board's remote_server is full: %d sessions are open, its "
                     "--max-sessions; try again when one ends", count);
            slog(srv, "refused %s: full (%d sessions)", peer, count);
            refuse(fd, peer, EK_ERR_BUSY, message);
            continue;
        }
        start_session(srv, fd, peer);
    }
    /* Stopping: wake every session (their poll sees the stop pipe), then join them. */
    pthread_mutex_lock(&srv->lock);
    for (struct session *s = srv->sessions; s; s = s->next)
        shutdown(s->ch.fd, SHUT_RDWR);
    pthread_mutex_unlock(&srv->lock);
    reap_sessions(srv, true);
    slog(srv, "stopped");
    return EK_OK;
}

ek_status_t ek_server_stats(ek_server_t *srv, ek_server_stats_t *stats) {
    if (!srv || !stats)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_server_stats: server or stats is NULL");
    memset(stats, 0, sizeof *stats);
    pthread_mutex_lock(&srv->lock);
    for (struct session *s = srv->sessions; s; s = s->next)
        stats->sessions_open += !s->finished;
    stats->sessions_started = srv->sessions_started;
    pthread_mutex_unlock(&srv->lock);
    return EK_OK;
}

void ek_server_stop(ek_server_t *srv) {
    if (!srv)
        return;
    srv->stopping = 1;
    char byte = 1;
    ssize_t ignored = write(srv->stop_pipe[1], &byte, 1);
    (void)ignored;
}

void ek_server_destroy(ek_server_t *srv) {
    if (!srv)
        return;
    if (srv->scratch[0])
        rmdir(srv->scratch); /* empty: each dump's directory went with its launch */
    memset(srv->key, 0, sizeof srv->key);
    close(srv->listen_fd);
    close(srv->stop_pipe[0]);
    close(srv->stop_pipe[1]);
    pthread_mutex_destroy(&srv->lock);
    free(srv);
}
