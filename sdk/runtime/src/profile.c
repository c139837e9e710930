/* Profiles (ek_profile_*): the records launches add when their options name a profile, and the
 * profile directory written from them: a Chrome Trace Event JSON and a per-op summary CSV
 * (docs/profiling.md). The app and Python both write through ek_profile_write, so the files are the
 * same whoever made them.
 *
 * A profile is a handle-checked object with a reference count: each launch that records into it holds
 * a reference, so ek_profile_destroy during a launch retires the handle at once and the memory goes
 * with the last launch. Records and their strings are appended under the profile's mutex; strings are
 * interned (copied once per distinct text), so records never point into a model that may be freed. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

static pthread_mutex_t profiles_lock = PTHREAD_MUTEX_INITIALIZER; /* handle lookup + refs */

struct interned {
    struct interned *next;
    uint64_t hash;
    char text[];
};

#define INTERN_BUCKETS 256

struct ek_profiler {
    uint64_t handle;
    int refs; /* the handle, and each launch recording into it (under profiles_lock) */
    pthread_mutex_t lock;
    ek_profile_record_t *records;
    size_t count, cap;
    uint64_t launches;                        /* launch numbers given out */
    struct interned *buckets[INTERN_BUCKETS]; /* the strings the records point to */
    const void **models;                      /* models whose ModelInit is recorded already */
    uint64_t *model_loads;                    /* their load_start_ns (a model freed and another loaded at its address) */
    size_t model_count, model_cap;
};

uint64_t ek_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t ek_thread_id(void) { return (uint64_t)syscall(SYS_gettid); }

uint64_t ek_profile_clock_ns(void) { return ek_now_ns(); }

const char *ek_profile_kind_name(ek_profile_kind_t kind) {
    switch (kind) {
    case EK_PROFILE_MODEL_INIT: return "ModelInit";
    case EK_PROFILE_REQUEST_INIT: return "RequestInit";
    case EK_PROFILE_TRANSFER_FROM_INPUT: return "TransferFromInput";
    case EK_PROFILE_WAIT: return "Wait";
    case EK_PROFILE_LAYER_EXECUTE: return "LayerExecute";
    case EK_PROFILE_TRANSFER_TO_OUTPUT: return "TransferToOutput";
    case EK_PROFILE_MODEL_EXECUTE: return "ModelExecute";
    case EK_PROFILE_TRANSPORT: return "Transport";
    }
    return "Unknown";
}

/* ---- the object ---- */

static void free_strings(struct ek_profiler *p) {
    for (int i = 0; i < INTERN_BUCKETS; i++) {
        struct interned *s = p->buckets[i];
        while (s) {
            struct interned *next = s->next;
            free(s);
            s = next;
        }
        p->buckets[i] = NULL;
    }
}

static void profiler_free(struct ek_profiler *p) {
    free_strings(p);
    free(p->records);
    free((void *)p->models);
    free(p->model_loads);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

ek_status_t ek_profile_create(ek_profile_t *profile) {
    if (!profile)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_profile_create: profile is NULL");
    struct ek_profiler *p = calloc(1, sizeof *p);
    if (!p)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a profile");
    pthread_mutex_init(&p->lock, NULL);
    p->refs = 1;
    if (!(p->handle = ek_handle_new(EK_HANDLE_PROFILE, p, 0))) {
        profiler_free(p);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no room for another profile handle");
    }
    profile->id = p->handle;
    return EK_OK;
}

ek_status_t ek_profiler_acquire(ek_profile_t profile, struct ek_profiler **out) {
    pthread_mutex_lock(&profiles_lock);
    void *obj;
    ek_status_t status = ek_handle_get(profile.id, EK_HANDLE_PROFILE, &obj, NULL);
    if (status == EK_OK) {
        *out = obj;
        (*out)->refs++;
    }
    pthread_mutex_unlock(&profiles_lock);
    return status;
}

void ek_profiler_release(struct ek_profiler *p) {
    if (!p)
        return;
    pthread_mutex_lock(&profiles_lock);
    bool last = --p->refs == 0;
    pthread_mutex_unlock(&profiles_lock);
    if (last)
        profiler_free(p);
}

ek_status_t ek_profile_destroy(ek_profile_t profile) {
    pthread_mutex_lock(&profiles_lock);
    void *obj;
    ek_status_t status = ek_handle_lookup(profile.id, EK_HANDLE_PROFILE, true, &obj, NULL);
    if (status == EK_OK)
        status = ek_handle_retire(profile.id, EK_HANDLE_PROFILE);
    pthread_mutex_unlock(&profiles_lock);
    if (status == EK_OK)
        ek_profiler_release(obj); /* the handle's reference; launches may still hold theirs */
    return status;
}

/* ---- records ---- */

static uint64_t hash_text(const char *s) {
    uint64_t h = 1469598103934665603u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211u;
    return h;
}

/* The profile's copy of `s` (under p->lock); "" for NULL; NULL when out of memory. */
static const char *intern(struct ek_profiler *p, const char *s) {
    if (!s || !*s)
        return "";
    uint64_t h = hash_text(s);
    struct interned **bucket = &p->buckets[h % INTERN_BUCKETS];
    for (struct interned *e = *bucket; e; e = e->next)
        if (e->hash == h && strcmp(e->text, s) == 0)
            return e->text;
    size_t n = strlen(s) + 1;
    struct interned *e = malloc(sizeof *e + n);
    if (!e)
        return NULL;
    e->hash = h;
    memcpy(e->text, s, n);
    e->next = *bucket;
    *bucket = e;
    return e->text;
}

/* Append a copy of `r` whose strings are interned. Out of memory drops the record (a profile never
 * fails a launch): false then. */
bool ek_profiler_add(struct ek_profiler *p, const ek_profile_record_t *r) {
    pthread_mutex_lock(&p->lock);
    if (p->count == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        ek_profile_record_t *grown = realloc(p->records, cap * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&p->lock);
            return false;
        }
        p->records = grown;
        p->cap = cap;
    }
    ek_profile_record_t c = *r;
    const char **fields[] = {&c.name, &c.network, &c.op_type, &c.provider, &c.nodes, &c.tensor, &c.shapes,
                             &c.algorithm};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (!(*fields[i] = intern(p, *fields[i]))) {
            pthread_mutex_unlock(&p->lock);
            return false;
        }
    p->records[p->count++] = c;
    pthread_mutex_unlock(&p->lock);
    return true;
}

uint64_t ek_profiler_next_launch(struct ek_profiler *p) {
    pthread_mutex_lock(&p->lock);
    uint64_t n = ++p->launches;
    pthread_mutex_unlock(&p->lock);
    return n;
}

/* True the first time this profile sees the model (its ModelInit is recorded then). */
bool ek_profiler_first_sight(struct ek_profiler *p, const struct ek_model *model) {
    return ek_profiler_first_key(p, model, model->load_start_ns);
}

bool ek_profiler_first_key(struct ek_profiler *p, const void *key, uint64_t stamp) {
    pthread_mutex_lock(&p->lock);
    for (size_t i = 0; i < p->model_count; i++)
        if (p->models[i] == key && p->model_loads[i] == stamp) {
            pthread_mutex_unlock(&p->lock);
            return false;
        }
    if (p->model_count == p->model_cap) {
        size_t cap = p->model_cap ? p->model_cap * 2 : 4;
        const void **models = realloc((void *)p->models, cap * sizeof *models);
        if (models)
            p->models = models;
        uint64_t *loads = models ? realloc(p->model_loads, cap * sizeof *loads) : NULL;
        if (loads)
            p->model_loads = loads;
        if (!models || !loads) {
            pthread_mutex_unlock(&p->lock);
            return false;
        }
        p->model_cap = cap;
    }
    p->models[p->model_count] = key;
    p->model_loads[p->model_count++] = stamp;
    pthread_mutex_unlock(&p->lock);
    return true;
}

static ek_profile_record_t blank_record(ek_profile_kind_t kind, const char *name, uint64_t start, uint64_t duration) {
    ek_profile_record_t r;
    memset(&r, 0, sizeof r);
    r.kind = kind;
    r.name = name;
    r.op_index = -1;
    r.stage = -1;
    r.start_ns = start;
    r.duration_ns = duration;
    r.thread = ek_thread_id();
    return r;
}

void ek_profiler_span(struct ek_profiler *p, ek_profile_kind_t kind, const char *network, int stage, uint64_t launch,
                      uint64_t start, uint64_t end, uint64_t thread, uint64_t bytes) {
    ek_profile_record_t r = blank_record(kind, network, start, end > start ? end - start : 0);
    r.network = network;
    r.stage = stage;
    r.launch = launch;
    r.thread = thread;
    r.bytes = bytes;
    ek_profiler_add(p, &r);
}

ek_status_t ek_profile_add(ek_profile_t profile, ek_profile_kind_t kind, const char *name, uint64_t start_ns,
                           uint64_t duration_ns) {
    if (kind < EK_PROFILE_MODEL_INIT || kind > EK_PROFILE_TRANSPORT)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_profile_add: kind %d is not an ek_profile_kind_t", (int)kind);
    struct ek_profiler *p;
    ek_status_t status = ek_profiler_acquire(profile, &p);
    if (status != EK_OK)
        return status;
    ek_profile_record_t r = blank_record(kind, name, start_ns, duration_ns);
    status = ek_profiler_add(p, &r) ? EK_OK : ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a profile record");
    ek_profiler_release(p);
    return status;
}

ek_status_t ek_profile_clear(ek_profile_t profile) {
    struct ek_profiler *p;
    ek_status_t status = ek_profiler_acquire(profile, &p);
    if (status != EK_OK)
        return status;
    pthread_mutex_lock(&p->lock);
    free_strings(p);
    p->count = 0;
    p->model_count = 0;
    pthread_mutex_unlock(&p->lock);
    ek_profiler_release(p);
    return EK_OK;
}

ek_status_t ek_profile_count(ek_profile_t profile, size_t *count) {
    if (!count)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_profile_count: count is NULL");
    struct ek_profiler *p;
    ek_status_t status = ek_profiler_acquire(profile, &p);
    if (status != EK_OK)
        return status;
    pthread_mutex_lock(&p->lock);
    *count = p->count;
    pthread_mutex_unlock(&p->lock);
    ek_profiler_release(p);
    return EK_OK;
}

ek_status_t ek_profile_get(ek_profile_t profile, size_t index, ek_profile_record_t *record) {
    if (!record)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_profile_get: record is NULL");
    struct ek_profiler *p;
    ek_status_t status = ek_profiler_acquire(profile, &p);
    if (status != EK_OK)
        return status;
    pthread_mutex_lock(&p->lock);
    if (index >= p->count)
        status = ek_fail(EK_ERR_OUT_OF_RANGE, "ek_profile_get: record %zu of a profile of %zu", index, p->count);
    else
        *record = p->records[index];
    pthread_mutex_unlock(&p->lock);
    ek_profiler_release(p);
    return status;
}

/* ---- FLOPs of an op (a multiply-add counts 2; data movement 0) ---- */

static uint64_t dims_product(const struct ek_tensor_desc *t, int from, int to) {
    uint64_t n = 1;
    for (int d = from; d < to && d < t->rank; d++)
        n *= (uint64_t)t->dims[d];
    return n;
}

uint64_t ek_op_flops(const struct ek_op *op) {
    const struct ek_tensor_desc *x = op->n_in > 0 ? op->in[0] : NULL, *y = op->n_out > 0 ? op->out[0] : NULL;
    if (!x || !y)
        return 0;
    const struct ek_tensor_desc *w = op->n_in > 1 ? op->in[1] : NULL;
    uint64_t out = y->count;
    switch (op->type) {
    case EK_OP_QCONV: /* int8 multiply-adds count 2 too */
        return w && w->rank == 4 ? 2 * out * dims_product(w, 1, 4) : 0;
    case EK_OP_QFULLY_CONNECTED:
        return x->rank >= 1 ? 2 * out * (uint64_t)x->dims[x->rank - 1] : 0;
    case EK_OP_QUANTIZE: case EK_OP_DEQUANTIZE: case EK_OP_QADD: case EK_OP_QMUL:
        return out;
    case EK_OP_QAVERAGE_POOL: {
        const struct ek_attr *k = ek_attr_find(op, "kernel");
        return k && k->type == EK_ATTR_INTS && k->count == 2 ? out * (uint64_t)(k->ints[0] * k->ints[1]) : out;
    }
    case EK_OP_QGLOBAL_AVERAGE_POOL:
        return x->count;
    case EK_OP_QLUT: /* a table lookup */
        return 0;
    case EK_OP_CONV: /* W[M,KH,KW,C/group]: each output element sums KH*KW*C/group products (+ Z: one add) */
        return w && w->rank == 4 ? 2 * out * dims_product(w, 1, 4) + (op->n_in > 3 && op->in[3] ? out : 0) : 0;
    case EK_OP_CONV_TRANSPOSE: /* each input pixel scatters into M x KH x KW outputs from C/group channels */
        return w && w->rank == 4 && x->rank == 4 ? 2 * dims_product(x, 0, 3) * dims_product(w, 0, 4) : 0;
    case EK_OP_FULLY_CONNECTED:
        return x->rank >= 1 ? 2 * out * (uint64_t)x->dims[x->rank - 1] : 0;
    case EK_OP_MATMUL:
        return x->rank >= 2 ? 2 * out * (uint64_t)x->dims[x->rank - 1] : 0;
    case EK_OP_ADD: case EK_OP_SUB: case EK_OP_MUL: case EK_OP_DIV: case EK_OP_RELU: case EK_OP_CLIP:
    case EK_OP_LEAKY_RELU: case EK_OP_PRELU: case EK_OP_SIGMOID: case EK_OP_HARD_SIGMOID: case EK_OP_HARD_SWISH:
    case EK_OP_TANH: case EK_OP_RESIZE:
        return out;
    case EK_OP_SOFTMAX: /* exp, sum, divide */
        return 3 * out;
    case EK_OP_MAX_POOL: case EK_OP_AVERAGE_POOL: {
        const struct ek_attr *k = ek_attr_find(op, "kernel");
        return k && k->type == EK_ATTR_INTS && k->count == 2 ? out * (uint64_t)(k->ints[0] * k->ints[1]) : out;
    }
    case EK_OP_GLOBAL_AVERAGE_POOL: case EK_OP_REDUCE_MEAN:
        return x->count;
    case EK_OP_TRANSPOSE: case EK_OP_CONCAT: case EK_OP_PAD: case EK_OP_SLICE: case EK_OP_RESHAPE:
    case EK_OP_PLUGIN: /* unknown to the runtime */
    case EK_OP_TOP_K: case EK_OP_NON_MAX_SUPPRESSION: /* comparisons, not floating-point arithmetic */
        return 0;
    }
    return 0;
}

/* ---- writing a profile directory ---- */

void ek_sb_put(struct sbuf *b, const char *s, size_t n) {
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *grown = realloc(b->p, cap);
        if (!grown) {
            b->failed = true;
            return;
        }
        b->p = grown;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void ek_sb_add(struct sbuf *b, const char *fmt, ...) {
    char small[256];
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(small, sizeof small, fmt, args);
    va_end(args);
    if (n < 0)
        return;
    if ((size_t)n < sizeof small) {
        ek_sb_put(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->failed = true;
        return;
    }
    va_start(args, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, args);
    va_end(args);
    ek_sb_put(b, big, (size_t)n);
    free(big);
}

/* A JSON string literal of `s` (UTF-8 passes through; controls, quotes and backslashes escaped). */
void ek_sb_json_string(struct sbuf *b, const char *s) {
    EK_SB_LIT(b, "\"");
    for (const unsigned char *c = (const unsigned char *)(s ? s : ""); *c; c++) {
        switch (*c) {
        case '"': EK_SB_LIT(b, "\\\""); break;
        case '\\': EK_SB_LIT(b, "\\\\"); break;
        case '\n': EK_SB_LIT(b, "\\n"); break;
        case '\r': EK_SB_LIT(b, "\\r"); break;
        case '\t': EK_SB_LIT(b, "\\t"); break;
        default:
            if (*c < 0x20)
                ek_sb_add(b, "\\u%04x", (unsigned)*c);
            else
                ek_sb_put(b, (const char *)c, 1);
        }
    }
    EK_SB_LIT(b, "\"");
}

/* A CSV field: quoted when it holds a comma, quote or line break. */
static void sb_csv(struct sbuf *b, const char *s) {
    s = s ? s : "";
    if (!strpbrk(s, ",\"\n\r")) {
        ek_sb_put(b, s, strlen(s));
        return;
    }
    EK_SB_LIT(b, "\"");
    for (; *s; s++)
        ek_sb_put(b, *s == '"' ? "\"\"" : s, *s == '"' ? 2 : 1);
    EK_SB_LIT(b, "\"");
}

void ek_sb_free(struct sbuf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* A "%.3f" of microseconds from nanoseconds, exact (no floating point). */
static void sb_us(struct sbuf *b, uint64_t ns) { ek_sb_add(b, "%" PRIu64 ".%03u", ns / 1000, (unsigned)(ns % 1000)); }

ek_status_t ek_make_dir(const char *dir, const char *what) {
    char path[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof path)
        return ek_fail(EK_ERR_INVALID_ARG, "%s directory '%.200s' is %s", what, dir, n ? "too long" : "empty");
    memcpy(path, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != '\0')
            continue;
        char c = path[i];
        path[i] = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return ek_fail(EK_ERR_SYSTEM, "cannot create the %s directory '%.300s': %s", what, path, strerror(errno));
        path[i] = c;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return ek_fail(EK_ERR_SYSTEM, "the %s directory '%.300s' is not a directory", what, dir);
    /* Try it (not access(), which neither sees a read-only file system for root nor works under every
     * emulator: proot passes glibc's faccessat2 through untranslated). */
    static atomic_uint probes;
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/.edgekit-write-probe-%ld-%u", dir, (long)getpid(),
             atomic_fetch_add(&probes, 1u));
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return ek_fail(EK_ERR_SYSTEM, "cannot write to the %s directory '%.300s': %s", what, dir, strerror(errno));
    close(fd);
    unlink(probe);
    return EK_OK;
}

ek_status_t ek_write_file(const char *dir, const char *name, const void *data, size_t n) {
    return ek_write_file2(dir, name, data, n, NULL, 0);
}

ek_status_t ek_write_file2(const char *dir, const char *name, const void *data, size_t n, const void *data2,
                           size_t n2) {
    char path[4200], tmp[4210];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return ek_fail(EK_ERR_SYSTEM, "cannot write '%.300s': %s", tmp, strerror(errno));
    bool ok = fwrite(data, 1, n, f) == n && (!n2 || fwrite(data2, 1, n2, f) == n2);
    int err = errno;
    if (fclose(f) != 0 && ok) {
        ok = false;
        err = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        err = errno;
    }
    if (!ok) {
        unlink(tmp);
        return ek_fail(EK_ERR_SYSTEM, "cannot write '%.300s': %s", path, strerror(err));
    }
    return EK_OK;
}

struct op_total {
    const ek_profile_record_t *first;
    uint64_t count, total_ns;
};

static int compare_start(const void *a, const void *b) {
    const ek_profile_record_t *x = *(const ek_profile_record_t *const *)a, *y = *(const ek_profile_record_t *const *)b;
    if (x->start_ns != y->start_ns)
        return x->start_ns < y->start_ns ? -1 : 1;
    /* equal starts: the longer (enclosing) one first, so a parent precedes its children */
    if (x->duration_ns != y->duration_ns)
        return x->duration_ns > y->duration_ns ? -1 : 1;
    return x->kind == EK_PROFILE_MODEL_EXECUTE ? -1 : y->kind == EK_PROFILE_MODEL_EXECUTE;
}

static int compare_totals(const void *a, const void *b) {
    const struct op_total *x = a, *y = b;
    if (x->total_ns != y->total_ns)
        return x->total_ns > y->total_ns ? -1 : 1;
    return x->first->op_index - y->first->op_index;
}

static bool same_op(const ek_profile_record_t *a, const ek_profile_record_t *b) {
    return a->op_index == b->op_index && a->stage == b->stage && strcmp(a->network, b->network) == 0;
}

static void trace_json(struct sbuf *b, const ek_profile_record_t *const *sorted, size_t n) {
    uint64_t origin = n ? sorted[0]->start_ns : 0;
    int pid = (int)getpid();
    ek_sb_add(b, "{\"displayTimeUnit\": \"ms\",\n \"otherData\": {\"producer\": \"EdgeKit %s\", \"clock\": "
              "\"CLOCK_MONOTONIC\", \"origin_ns\": %" PRIu64 "},\n \"traceEvents\": [\n",
              ek_version(), origin);
    ek_sb_add(b, "  {\"name\": \"process_name\", \"ph\": \"M\", \"pid\": %d, \"tid\": 0, \"args\": {\"name\": "
              "\"EdgeKit\"}}", pid);
    /* name each thread once: the worker threads run ModelExecute; the others are callers */
    for (size_t i = 0; i < n; i++) {
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = sorted[j]->thread == sorted[i]->thread;
        if (seen)
            continue;
        bool worker = false;
        for (size_t j = i; j < n && !worker; j++)
            worker = sorted[j]->thread == sorted[i]->thread && sorted[j]->kind == EK_PROFILE_MODEL_EXECUTE;
        ek_sb_add(b, ",\n  {\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": %d, \"tid\": %" PRIu64
                  ", \"args\": {\"name\": \"%s %" PRIu64 "\"}}",
                  pid, sorted[i]->thread, worker ? "EdgeKit worker" : "caller", sorted[i]->thread);
    }
    for (size_t i = 0; i < n; i++) {
        const ek_profile_record_t *r = sorted[i];
        const char *kind = ek_profile_kind_name(r->kind);
        EK_SB_LIT(b, ",\n  {\"name\": ");
        ek_sb_json_string(b, r->kind == EK_PROFILE_LAYER_EXECUTE ? r->name : kind);
        ek_sb_add(b, ", \"cat\": \"%s\", \"ph\": \"X\", \"ts\": ", kind);
        sb_us(b, r->start_ns - origin);
        EK_SB_LIT(b, ", \"dur\": ");
        sb_us(b, r->duration_ns);
        ek_sb_add(b, ", \"pid\": %d, \"tid\": %" PRIu64 ", \"args\": {\"kind\": \"%s\"", pid, r->thread, kind);
        if (r->kind != EK_PROFILE_LAYER_EXECUTE && r->name[0]) {
            EK_SB_LIT(b, ", \"name\": ");
            ek_sb_json_string(b, r->name);
        }
        if (r->network[0]) {
            EK_SB_LIT(b, ", \"network\": ");
            ek_sb_json_string(b, r->network);
        }
        if (r->stage >= 0)
            ek_sb_add(b, ", \"stage\": %d", r->stage);
        if (r->launch)
            ek_sb_add(b, ", \"launch\": %" PRIu64, r->launch);
        if (r->bytes)
            ek_sb_add(b, ", \"bytes\": %" PRIu64, r->bytes);
        if (r->threads)
            ek_sb_add(b, ", \"threads\": %d", r->threads);
        if (r->kind == EK_PROFILE_LAYER_EXECUTE) {
            ek_sb_add(b, ", \"op_index\": %d, \"op_type\": \"%s\", \"provider\": \"%s\", \"flops\": %" PRIu64, r->op_index,
                      r->op_type, r->provider, r->flops);
            if (r->duration_ns)
                ek_sb_add(b, ", \"gflops_per_s\": %.3f", (double)r->flops / (double)r->duration_ns);
            EK_SB_LIT(b, ", \"tensor\": ");
            ek_sb_json_string(b, r->tensor);
            EK_SB_LIT(b, ", \"shapes\": ");
            ek_sb_json_string(b, r->shapes);
            EK_SB_LIT(b, ", \"algorithm\": ");
            ek_sb_json_string(b, r->algorithm ? r->algorithm : "");
            EK_SB_LIT(b, ", \"nodes\": [");
            const char *s = r->nodes;
            for (int k = 0; *s; k++) {
                const char *end = strchr(s, '\x1f');
                size_t len = end ? (size_t)(end - s) : strlen(s);
                char *one = malloc(len + 1);
                if (!one) {
                    b->failed = true;
                    break;
                }
                memcpy(one, s, len);
                one[len] = '\0';
                if (k)
                    EK_SB_LIT(b, ", ");
                ek_sb_json_string(b, one);
                free(one);
                s += len + (end ? 1 : 0);
            }
            EK_SB_LIT(b, "]");
        }
        EK_SB_LIT(b, "}}");
    }
    EK_SB_LIT(b, "\n]}\n");
}

static void summary_csv(struct sbuf *b, const ek_profile_record_t *records, size_t n) {
    struct op_total *totals = calloc(n ? n : 1, sizeof *totals);
    if (!totals) {
        b->failed = true;
        return;
    }
    size_t groups = 0;
    uint64_t all = 0;
    for (size_t i = 0; i < n; i++) {
        const ek_profile_record_t *r = &records[i];
        if (r->kind != EK_PROFILE_LAYER_EXECUTE)
            continue;
        size_t g = 0;
        while (g < groups && !same_op(totals[g].first, r))
            g++;
        if (g == groups)
            totals[groups++].first = r;
        totals[g].count++;
        totals[g].total_ns += r->duration_ns;
        all += r->duration_ns;
    }
    qsort(totals, groups, sizeof *totals, compare_totals);
    ek_sb_add(b, "rank,network,stage,op_index,name,op_type,provider,count,total_ms,mean_ms,percent,flops,"
              "gflops_per_s,tensor,nodes,shapes,algorithm\n");
    for (size_t g = 0; g < groups; g++) {
        const ek_profile_record_t *r = totals[g].first;
        ek_sb_add(b, "%zu,", g + 1);
        sb_csv(b, r->network);
        ek_sb_add(b, ",%d,%d,", r->stage, r->op_index);
        sb_csv(b, r->name);
        ek_sb_add(b, ",%s,%s,%" PRIu64 ",%.6f,%.6f,%.2f,%" PRIu64 ",%.3f,", r->op_type, r->provider, totals[g].count,
                  (double)totals[g].total_ns / 1e6, (double)totals[g].total_ns / 1e6 / (double)totals[g].count,
                  all ? 100.0 * (double)totals[g].total_ns / (double)all : 0.0, r->flops,
                  totals[g].total_ns ? (double)r->flops * (double)totals[g].count / (double)totals[g].total_ns : 0.0);
        sb_csv(b, r->tensor);
        EK_SB_LIT(b, ",");
        /* nodes separated by 0x1F in records; ';' between them in the CSV */
        char *nodes = malloc(strlen(r->nodes) + 1);
        if (nodes) {
            strcpy(nodes, r->nodes);
            for (char *c = nodes; *c; c++)
                if (*c == '\x1f')
                    *c = ';';
            sb_csv(b, nodes);
            free(nodes);
        } else {
            b->failed = true;
        }
        EK_SB_LIT(b, ",");
        sb_csv(b, r->shapes);
        EK_SB_LIT(b, ",");
        sb_csv(b, r->algorithm ? r->algorithm : "");
        EK_SB_LIT(b, "\n");
    }
    free(totals);
}

ek_status_t ek_profile_write(ek_profile_t profile, const char *dir) {
    if (!dir)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_profile_write: dir is NULL");
    struct ek_profiler *p;
    ek_status_t status = ek_profiler_acquire(profile, &p);
    if (status != EK_OK)
        return status;
    if ((status = ek_make_dir(dir, "profile")) != EK_OK) {
        ek_profiler_release(p);
        return status;
    }
    struct sbuf trace = {0}, csv = {0};
    pthread_mutex_lock(&p->lock);
    size_t n = p->count;
    const ek_profile_record_t **sorted = malloc((n ? n : 1) * sizeof *sorted);
    if (sorted) {
        for (size_t i = 0; i < n; i++)
            sorted[i] = &p->records[i];
        qsort((void *)sorted, n, sizeof *sorted, compare_start);
        trace_json(&trace, sorted, n);
        summary_csv(&csv, p->records, n);
        free((void *)sorted);
    }
    pthread_mutex_unlock(&p->lock);
    if (!sorted || trace.failed || csv.failed)
        status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory to format the profile");
    if (status == EK_OK)
        status = ek_write_file(dir, "trace.json", trace.p, trace.len);
    if (status == EK_OK)
        status = ek_write_file(dir, "summary.csv", csv.p, csv.len);
    ek_sb_free(&trace);
    ek_sb_free(&csv);
    ek_profiler_release(p);
    return status;
}
