/* Plugin op libraries (include/edgekit/plugin.h, docs/plugins.md): loading a library into a runtime,
 * the registrations it makes, preparing a model's PLUGIN ops against them at load (the plugin's
 * infer() must agree with the shapes the model records), and running them (the PLUGIN kernel).
 *
 * A runtime's libraries are a list that only grows (prepended under the runtime's lock) until
 * ek_rt_destroy, which frees the models first and closes the libraries last: so a loaded model's ops
 * point at their registrations without references, and a model load reads the list from a snapshot
 * of its head without holding the lock. */
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "edgekit/plugin.h"
#include "engine.h"
#include "plugin_internal.h"

#define MAX_PLUGIN_INPUTS 64
#define MAX_PLUGIN_OUTPUTS 16
#define PATH_FMT "'%.200s'"

struct ek_plugin_reg {
    char *domain, *op_type;
    char label[160];    /* "domain::op_type", for profiles and messages */
    ek_plugin_op_t desc; /* strings point at domain / op_type above */
    struct ek_plugin_lib *lib;
};

struct ek_plugin_lib {
    char *path;      /* as resolved (realpath) */
    const char *name; /* the file name inside path */
    char provider[96]; /* "plugin:<name>" */
    void *handle;
    struct ek_plugin_reg *ops;
    size_t op_count, op_cap;
    struct ek_plugin_lib *next;
};

/* ---- the API table ---- */

struct ek_plugin_registry {
    struct ek_plugin_lib *lib;
    char error[256];
};

struct ek_plugin_call {
    const struct ek_op *op;
    const struct ek_plugin_reg *reg;
    struct ek_exec *exec; /* run: the launch's team; infer: NULL */
    char error[320];
};

static int api_register_op(ek_plugin_registry_t *registry, const ek_plugin_op_t *op) {
    if (!registry)
        return -1;
    struct ek_plugin_lib *lib = registry->lib;
    const size_t v1_size = offsetof(ek_plugin_op_t, user_data) + sizeof(void *);
    if (!op || op->struct_size < v1_size) {
        snprintf(registry->error, sizeof registry->error, "register_op: the op descriptor is %s",
                 op ? "smaller than ABI version 1's (set struct_size = sizeof(ek_plugin_op_t))" : "NULL");
        return -1;
    }
    const char *dom = op->domain ? op->domain : "", *type = op->op_type ? op->op_type : "";
    if (!*dom || !*type || strcmp(dom, "ai.onnx") == 0 || strlen(dom) > 64 || strlen(type) > 64) {
        snprintf(registry->error, sizeof registry->error,
                 "register_op: op '%.64s::%.64s' needs a domain other than \"\" and \"ai.onnx\" and an op type, "
                 "each 1..64 characters", dom, type);
        return -1;
    }
    if (op->min_inputs < 1 || op->max_inputs > MAX_PLUGIN_INPUTS || op->min_inputs > op->max_inputs ||
        op->min_outputs < 1 || op->max_outputs > MAX_PLUGIN_OUTPUTS || op->min_outputs > op->max_outputs) {
        snprintf(registry->error, sizeof registry->error,
                 "register_op: op '%s::%s': inputs %d..%d and outputs %d..%d must lie within 1..%d and 1..%d", dom,
                 type, (int)op->min_inputs, (int)op->max_inputs, (int)op->min_outputs, (int)op->max_outputs,
                 MAX_PLUGIN_INPUTS, MAX_PLUGIN_OUTPUTS);
        return -1;
    }
    if (!op->infer || !op->run) {
        snprintf(registry->error, sizeof registry->error, "register_op: op '%s::%s' has no %s function", dom, type,
                 op->infer ? "run" : "infer");
        return -1;
    }
    for (size_t i = 0; i < lib->op_count; i++)
        if (strcmp(lib->ops[i].domain, dom) == 0 && strcmp(lib->ops[i].op_type, type) == 0) {
            snprintf(registry->error, sizeof registry->error, "op '%s::%s' is registered twice by %s", dom, type,
                     lib->name);
            return -1;
        }
    if (lib->op_count == lib->op_cap) {
        size_t cap = lib->op_cap ? lib->op_cap * 2 : 8;
        struct ek_plugin_reg *ops = realloc(lib->ops, cap * sizeof *ops);
        if (!ops) {
            snprintf(registry->error, sizeof registry->error, "register_op: out of host memory");
            return -1;
        }
        lib->ops = ops;
        lib->op_cap = cap;
    }
    struct ek_plugin_reg *reg = &lib->ops[lib->op_count];
    memset(reg, 0, sizeof *reg);
    reg->lib = lib;
    reg->domain = strdup(dom);
    reg->op_type = strdup(type);
    if (!reg->domain || !reg->op_type) {
        free(reg->domain);
        free(reg->op_type);
        snprintf(registry->error, sizeof registry->error, "register_op: out of host memory");
        return -1;
    }
    memcpy(&reg->desc, op, v1_size); /* what the first release of ABI version 1 knew of the descriptor */
    reg->desc.dynamic_outputs = 0;
    if (op->struct_size >= offsetof(ek_plugin_op_t, dynamic_outputs) + sizeof op->dynamic_outputs)
        reg->desc.dynamic_outputs = op->dynamic_outputs;
    reg->desc.struct_size = (uint32_t)sizeof reg->desc;
    reg->desc.domain = reg->domain;
    reg->desc.op_type = reg->op_type;
    snprintf(reg->label, sizeof reg->label, "%s::%s", dom, type);
    lib->op_count++;
    return 0;
}

static void api_registry_error(ek_plugin_registry_t *registry, const char *message) {
    if (registry && message)
        snprintf(registry->error, sizeof registry->error, "%s", message);
}

static void api_set_error(ek_plugin_call_t *call, const char *message) {
    if (call)
        snprintf(call->error, sizeof call->error, "%s", message ? message : "(no message)");
}

static const char *api_node_name(ek_plugin_call_t *call) {
    return call && call->op && call->op->name ? call->op->name : "";
}

/* The node's own attribute `name` (the reserved "ek." ones are not the node's). */
static const struct ek_attr *node_attr(ek_plugin_call_t *call, const char *name) {
    if (!call || !call->op || !name || strncmp(name, "ek.", 3) == 0)
        return NULL;
    return ek_attr_find(call->op, name);
}

static int api_attr_int(ek_plugin_call_t *call, const char *name, int64_t *value) {
    const struct ek_attr *a = node_attr(call, name);
    if (!a)
        return 0;
    if (a->type != EK_ATTR_INT || !value)
        return -1;
    *value = a->i;
    return 1;
}

static int api_attr_float(ek_plugin_call_t *call, const char *name, float *value) {
    const struct ek_attr *a = node_attr(call, name);
    if (!a)
        return 0;
    if (a->type != EK_ATTR_FLOAT || !value)
        return -1;
    *value = a->f;
    return 1;
}

static int api_attr_ints(ek_plugin_call_t *call, const char *name, const int64_t **values, size_t *count) {
    const struct ek_attr *a = node_attr(call, name);
    if (!a)
        return 0;
    if (a->type != EK_ATTR_INTS || !values || !count)
        return -1;
    *values = a->ints;
    *count = a->count;
    return 1;
}

static int api_attr_floats(ek_plugin_call_t *call, const char *name, const float **values, size_t *count) {
    const struct ek_attr *a = node_attr(call, name);
    if (!a)
        return 0;
    if (a->type != EK_ATTR_FLOATS || !values || !count)
        return -1;
    *values = a->floats;
    *count = a->count;
    return 1;
}

static int api_attr_string(ek_plugin_call_t *call, const char *name, const char **value) {
    const struct ek_attr *a = node_attr(call, name);
    if (!a)
        return 0;
    if (a->type != EK_ATTR_STRING || !value)
        return -1;
    *value = a->s;
    return 1;
}

static void *api_op_user_data(ek_plugin_call_t *call) {
    return call && call->reg ? call->reg->desc.user_data : NULL;
}

static int api_threads(ek_plugin_call_t *call) { return call && call->exec ? ek_exec_threads(call->exec) : 1; }

static void api_parallel_for(ek_plugin_call_t *call, size_t count, ek_plugin_range_fn fn, void *arg) {
    if (!fn || count == 0)
        return;
    if (call && call->exec)
        ek_parallel_for(call->exec, count, fn, arg);
    else
        fn(arg, 0, count, 0);
}

static const ek_plugin_api_t api = {
    EK_PLUGIN_ABI_VERSION, (uint32_t)sizeof(ek_plugin_api_t),
    api_register_op, api_registry_error, api_set_error, api_node_name,
    api_attr_int, api_attr_float, api_attr_ints, api_attr_floats, api_attr_string, api_op_user_data,
    api_threads, api_parallel_for,
};

/* ---- loading a library ---- */

static const char *machine_name(unsigned machine) {
    switch (machine) {
    case EM_X86_64: return "x86_64";
    case EM_AARCH64: return "aarch64";
    case EM_386: return "i386";
    case EM_ARM: return "arm (32-bit)";
    case EM_RISCV: return "riscv";
    default: return "another machine";
    }
}

#if defined(__x86_64__)
#define HOST_MACHINE EM_X86_64
#elif defined(__aarch64__)
#define HOST_MACHINE EM_AARCH64
#elif defined(__i386__)
#define HOST_MACHINE EM_386
#elif defined(__arm__)
#define HOST_MACHINE EM_ARM
#endif

/* The most program headers a plugin may have (real libraries have about ten). */
#define MAX_PLUGIN_PHDRS 4096

/* Is the file a shared library for this machine that the dynamic loader can map? Checked before dlopen,
 * whose message for a library of another machine ("wrong ELF class" or "cannot open shared object
 * file") hides the reason, and which trusts the program headers it maps by: a truncated copy of a
 * library must be refused here, not read past its end. */
ek_status_t ek_plugin_check_elf(const unsigned char *h, size_t size, uint64_t file_size, const char *path) {
    if (size < 20 || memcmp(h, ELFMAG, SELFMAG) != 0)
        return ek_fail(EK_ERR_UNSUPPORTED, "plugin " PATH_FMT " is not an ELF shared library", path);
    bool little = h[EI_DATA] == ELFDATA2LSB;
    unsigned type = little ? (unsigned)(h[16] | h[17] << 8) : (unsigned)(h[16] << 8 | h[17]);
    unsigned machine = little ? (unsigned)(h[18] | h[19] << 8) : (unsigned)(h[18] << 8 | h[19]);
#ifdef HOST_MACHINE
    if (machine != HOST_MACHINE)
        return ek_fail(EK_ERR_UNSUPPORTED,
                       "plugin " PATH_FMT " is built for %s (ELF machine %u), not for this machine (%s): build the "
                       "plugin for %s (docs/plugins.md: host and cross builds)",
                       path, machine_name(machine), machine, machine_name(HOST_MACHINE), machine_name(HOST_MACHINE));
#else
    (void)machine;
#endif
    int want_class = sizeof(void *) == 8 ? ELFCLASS64 : ELFCLASS32;
    if (h[EI_CLASS] != want_class)
        return ek_fail(EK_ERR_UNSUPPORTED, "plugin " PATH_FMT " is a %d-bit ELF; this process is %d-bit", path,
                       h[EI_CLASS] == ELFCLASS64 ? 64 : 32, (int)sizeof(void *) * 8);
    if (type != ET_DYN)
        return ek_fail(EK_ERR_UNSUPPORTED, "plugin " PATH_FMT " is not a shared library (ELF type %u; build it with "
                       "-shared)", path, type);
    const unsigned one = 1;
    int host_data = *(const unsigned char *)&one ? ELFDATA2LSB : ELFDATA2MSB;
    if (h[EI_DATA] != host_data)
        return ek_fail(EK_ERR_UNSUPPORTED, "plugin " PATH_FMT " is %s-endian; this machine is not", path,
                       little ? "little" : "big");
    /* From here the header is this machine's own layout. */
    ElfW(Ehdr) eh;
    if (size < sizeof eh)
        return ek_fail(EK_ERR_UNSUPPORTED, "plugin " PATH_FMT " is truncated: %zu bytes, shorter than an ELF header",
                       path, size);
    memcpy(&eh, h, sizeof eh);
    if (eh.e_phentsize != sizeof(ElfW(Phdr)) || eh.e_phnum == 0 || eh.e_phnum > MAX_PLUGIN_PHDRS)
        return ek_fail(EK_ERR_UNSUPPORTED, "plugin " PATH_FMT " is damaged: %u program headers of %u bytes",
                       path, (unsigned)eh.e_phnum, (unsigned)eh.e_phentsize);
    if (eh.e_phoff > file_size || (file_size - eh.e_phoff) / sizeof(ElfW(Phdr)) < eh.e_phnum)
        return ek_fail(EK_ERR_UNSUPPORTED, "plugin " PATH_FMT " is truncated or damaged: its program headers "
                       "(at byte %llu) end past its %llu bytes", path, (unsigned long long)eh.e_phoff,
                       (unsigned long long)file_size);
    if (eh.e_phoff > size || (size - eh.e_phoff) / sizeof(ElfW(Phdr)) < eh.e_phnum)
        return ek_fail(EK_ERR_UNSUPPORTED, "plugin " PATH_FMT " is damaged: its program headers are at byte %llu, "
                       "not near its start where a shared library has them", path, (unsigned long long)eh.e_phoff);
    int loads = 0, dynamics = 0;
    for (unsigned i = 0; i < eh.e_phnum; i++) {
        ElfW(Phdr) ph;
        memcpy(&ph, h + eh.e_phoff + (size_t)i * sizeof ph, sizeof ph);
        if (ph.p_type != PT_LOAD && ph.p_type != PT_DYNAMIC)
            continue;
        if (ph.p_offset > file_size || ph.p_filesz > file_size - ph.p_offset)
            return ek_fail(EK_ERR_UNSUPPORTED, "plugin " PATH_FMT " is truncated or damaged: its segment %u ends at "
                           "byte %llu of %llu (a partial copy?)", path, i,
                           (unsigned long long)ph.p_offset + (unsigned long long)ph.p_filesz,
                           (unsigned long long)file_size);
        if (ph.p_type == PT_LOAD && ph.p_filesz > ph.p_memsz)
            return ek_fail(EK_ERR_UNSUPPORTED, "plugin " PATH_FMT " is damaged: segment %u has more bytes in the "
                           "file than in memory", path, i);
        loads += ph.p_type == PT_LOAD;
        dynamics += ph.p_type == PT_DYNAMIC;
    }
    if (loads == 0 || dynamics != 1)
        return ek_fail(EK_ERR_UNSUPPORTED, "plugin " PATH_FMT " is not a loadable shared library (%d loadable "
                       "segments, %d dynamic sections)", path, loads, dynamics);
    return EK_OK;
}

/* The most of a plugin file the check reads: its ELF header and program headers, which come first. */
#define PLUGIN_HEAD_BYTES (256u << 10)

static ek_status_t check_elf(const char *path) {
    /* O_NONBLOCK: a FIFO named as a plugin must not block the open; it is refused below. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return ek_fail(EK_ERR_SYSTEM, "cannot open plugin " PATH_FMT ": %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ek_fail(EK_ERR_UNSUPPORTED, "plugin " PATH_FMT " is not a regular file", path);
    }
    /* Read, not mapped: a file cut short while it is checked must not fault this process. */
    uint64_t file_size = (uint64_t)st.st_size;
    size_t want = file_size < PLUGIN_HEAD_BYTES ? (size_t)file_size : PLUGIN_HEAD_BYTES;
    unsigned char *head = malloc(want ? want : 1);
    if (!head) {
        close(fd);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory to check plugin " PATH_FMT, path);
    }
    size_t got = 0;
    while (got < want) {
        ssize_t k = pread(fd, head + got, want - got, (off_t)got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    close(fd);
    ek_status_t status = ek_plugin_check_elf(head, got, got < want ? got : file_size, path);
    free(head);
    return status;
}

static void lib_free(struct ek_plugin_lib *lib) {
    if (!lib)
        return;
    for (size_t i = 0; i < lib->op_count; i++) {
        free(lib->ops[i].domain);
        free(lib->ops[i].op_type);
    }
    free(lib->ops);
    if (lib->handle)
        dlclose(lib->handle);
    free(lib->path);
    free(lib);
}

/* Open, check and register a library; on success *out is a list node not linked yet. */
static ek_status_t lib_open(const char *path, struct ek_plugin_lib **out) {
    char resolved[PATH_MAX];
    if (!realpath(path, resolved))
        return ek_fail(EK_ERR_SYSTEM, "cannot open plugin " PATH_FMT ": %s", path, strerror(errno));
    ek_status_t status = check_elf(resolved);
    if (status != EK_OK)
        return status;
    struct ek_plugin_lib *lib = calloc(1, sizeof *lib);
    if (!lib || !(lib->path = strdup(resolved))) {
        free(lib);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory to load a plugin");
    }
    const char *slash = strrchr(lib->path, '/');
    lib->name = slash ? slash + 1 : lib->path;
    snprintf(lib->provider, sizeof lib->provider, "plugin:%s", lib->name);
    dlerror();
    lib->handle = dlopen(lib->path, RTLD_NOW | RTLD_LOCAL);
    if (!lib->handle) {
        const char *why = dlerror();
        status = ek_fail(EK_ERR_UNSUPPORTED, "cannot load plugin " PATH_FMT ": %.250s", path, why ? why : "dlopen failed");
        lib_free(lib);
        return status;
    }
    const uint32_t *abi = dlsym(lib->handle, EK_PLUGIN_ABI_SYMBOL);
    ek_plugin_register_fn entry;
    void *sym = dlsym(lib->handle, EK_PLUGIN_ENTRY_SYMBOL);
    memcpy(&entry, &sym, sizeof entry); /* ISO C has no object-to-function pointer conversion */
    if (!abi || !entry) {
        status = ek_fail(EK_ERR_UNSUPPORTED,
                         "%s is not an EdgeKit plugin: it exports no '%s' symbol (a plugin defines %s and "
                         "EK_PLUGIN_DEFINE_ABI_VERSION; see edgekit/plugin.h)",
                         lib->path, !abi ? EK_PLUGIN_ABI_SYMBOL : EK_PLUGIN_ENTRY_SYMBOL, EK_PLUGIN_ENTRY_SYMBOL);
        lib_free(lib);
        return status;
    }
    if (*abi != EK_PLUGIN_ABI_VERSION) {
        status = ek_fail(EK_ERR_VERSION,
                         "%s was built for plugin ABI version %u; this EdgeKit (%s) loads version %d: rebuild the "
                         "plugin against this EdgeKit's edgekit/plugin.h",
                         lib->path, (unsigned)*abi, ek_version(), EK_PLUGIN_ABI_VERSION);
        lib_free(lib);
        return status;
    }
    struct ek_plugin_registry registry;
    memset(&registry, 0, sizeof registry);
    registry.lib = lib;
    int rc = entry(&api, &registry);
    if (rc != 0 || registry.error[0]) {
        status = ek_fail(EK_ERR_UNSUPPORTED, "plugin %s: %s() failed: %s", lib->path, EK_PLUGIN_ENTRY_SYMBOL,
                         registry.error[0] ? registry.error : "it returned non-zero without a reason");
        lib_free(lib);
        return status;
    }
    if (lib->op_count == 0) {
        status = ek_fail(EK_ERR_UNSUPPORTED, "plugin %s registers no op", lib->path);
        lib_free(lib);
        return status;
    }
    *out = lib;
    return EK_OK;
}

static const struct ek_plugin_reg *find_op(const struct ek_plugin_lib *head, const char *domain, const char *type) {
    for (const struct ek_plugin_lib *lib = head; lib; lib = lib->next)
        for (size_t i = 0; i < lib->op_count; i++)
            if (strcmp(lib->ops[i].domain, domain) == 0 && strcmp(lib->ops[i].op_type, type) == 0)
                return &lib->ops[i];
    return NULL;
}

ek_status_t ek_plugin_load(struct ek_runtime *rt, const char *path) {
    struct ek_plugin_lib *lib;
    ek_status_t status = lib_open(path, &lib);
    if (status != EK_OK)
        return status;
    pthread_mutex_lock(&rt->lock);
    for (size_t i = 0; i < lib->op_count && status == EK_OK; i++) {
        const struct ek_plugin_reg *old = find_op(rt->plugins, lib->ops[i].domain, lib->ops[i].op_type);
        if (old)
            status = ek_fail(EK_ERR_BUSY,
                             "plugin %s registers op '%s', which %s (loaded before into this runtime) registers "
                             "already: a runtime takes each (domain, op type) once",
                             lib->path, lib->ops[i].label, old->lib->path);
    }
    if (status == EK_OK) {
        lib->next = rt->plugins;
        rt->plugins = lib;
    }
    pthread_mutex_unlock(&rt->lock);
    if (status != EK_OK)
        lib_free(lib);
    return status;
}

void ek_plugin_unload_all(struct ek_runtime *rt) {
    struct ek_plugin_lib *lib = rt->plugins;
    rt->plugins = NULL;
    while (lib) {
        struct ek_plugin_lib *next = lib->next;
        lib_free(lib);
        lib = next;
    }
}

/* ---- PLUGIN ops: prepared at model load, run by the kernel ---- */

static void to_plugin_tensor(const struct ek_tensor_desc *t, void *data, ek_plugin_tensor_t *p) {
    memset(p, 0, sizeof *p);
    p->data = data;
    p->dtype = (int32_t)t->dtype;
    p->rank = t->rank;
    for (int d = 0; d < t->rank && d < EK_PLUGIN_MAX_DIMS; d++)
        p->dims[d] = t->dims[d];
}

static void shape_text(char *buf, size_t size, int32_t dtype, int rank, const int64_t *dims) {
    size_t at = (size_t)snprintf(buf, size, "%s[", ek_dtype_name((ek_dtype_t)dtype));
    for (int d = 0; d < rank && d < EK_PLUGIN_MAX_DIMS && at < size; d++)
        at += (size_t)snprintf(buf + at, size - at, "%s%lld", d ? "x" : "", (long long)dims[d]);
    if (at < size)
        snprintf(buf + at, size - at, "]");
}

static bool same_shape(const ek_plugin_tensor_t *p, const struct ek_tensor_desc *t) {
    if (p->dtype != (int32_t)t->dtype || p->rank != t->rank)
        return false;
    for (int d = 0; d < t->rank; d++)
        if (p->dims[d] != t->dims[d])
            return false;
    return true;
}

/* The same dtype and rank as `t`, each dim 0 .. t's: what a dynamic output may report. */
static bool fits_shape(const ek_plugin_tensor_t *p, const struct ek_tensor_desc *t) {
    if (p->dtype != (int32_t)t->dtype || p->rank != t->rank)
        return false;
    for (int d = 0; d < t->rank; d++)
        if (p->dims[d] < 0 || p->dims[d] > t->dims[d])
            return false;
    return true;
}

static const char *string_attr(const struct ek_op *op, const char *name) {
    const struct ek_attr *a = ek_attr_find(op, name);
    return a && a->type == EK_ATTR_STRING ? a->s : NULL;
}

ek_status_t ek_plugin_prepare(struct ek_op *op, const struct ek_plugin_lib *plugins) {
    const char *domain = string_attr(op, "ek.domain"), *type = string_attr(op, "ek.op_type");
    if (!domain || !type || !*domain || !*type)
        return ek_op_invalid(op, "a PLUGIN op needs the STRING attributes 'ek.domain' and 'ek.op_type'");
    const struct ek_plugin_reg *reg = find_op(plugins, domain, type);
    if (!reg)
        return ek_fail(EK_ERR_UNSUPPORTED,
                       "op '%.120s' is plugin op '%.64s::%.64s', which no plugin loaded into this runtime registers: "
                       "load the plugin library that implements it first (ek_rt_load_plugin, ctx.load_plugin(path), "
                       "edgekit-app --plugin_libs)",
                       op->name ? op->name : "", domain, type);
    if (op->n_in < reg->desc.min_inputs || op->n_in > reg->desc.max_inputs || op->n_out < reg->desc.min_outputs ||
        op->n_out > reg->desc.max_outputs)
        return ek_op_invalid(op, "%s has %d inputs and %d outputs; plugin %s takes %d..%d and %d..%d", reg->label,
                             op->n_in, op->n_out, reg->lib->name, (int)reg->desc.min_inputs,
                             (int)reg->desc.max_inputs, (int)reg->desc.min_outputs, (int)reg->desc.max_outputs);
    ek_plugin_tensor_t in[MAX_PLUGIN_INPUTS], out[MAX_PLUGIN_OUTPUTS];
    for (int i = 0; i < op->n_in; i++) {
        if (!op->in[i])
            return ek_op_invalid(op, "input %d is absent (plugin ops take no absent inputs)", i);
        to_plugin_tensor(op->in[i], NULL, &in[i]);
    }
    memset(out, 0, sizeof out);
    struct ek_plugin_call call;
    memset(&call, 0, sizeof call);
    call.op = op;
    call.reg = reg;
    if (reg->desc.infer(&api, &call, op->n_in, in, op->n_out, out) != 0)
        return ek_op_invalid(op, "plugin %s rejects %s here: %s", reg->lib->name, reg->label,
                             call.error[0] ? call.error : "(infer failed without a message)");
    for (int i = 0; i < op->n_out; i++) {
        if (!same_shape(&out[i], op->out[i])) {
            char got[160], want[160];
            if (out[i].rank < 0 || out[i].rank > EK_PLUGIN_MAX_DIMS)
                snprintf(got, sizeof got, "rank %d", (int)out[i].rank);
            else
                shape_text(got, sizeof got, out[i].dtype, out[i].rank, out[i].dims);
            shape_text(want, sizeof want, (int32_t)op->out[i]->dtype, op->out[i]->rank, op->out[i]->dims);
            return ek_op_invalid(op, "plugin %s infers output %d of %s as %s, the model records %s (compiled with "
                                 "another version of the plugin?)",
                                 reg->lib->name, i, reg->label, got, want);
        }
    }
    op->params = (void *)reg;
    op->scratch_per_thread = 0;
    return EK_OK;
}

const char *ek_plugin_op_label(const struct ek_op *op) {
    const struct ek_plugin_reg *reg = op->params;
    return reg ? reg->label : "PLUGIN";
}

const char *ek_plugin_provider(const struct ek_op *op) {
    const struct ek_plugin_reg *reg = op->params;
    return reg ? reg->lib->provider : "plugin";
}

const char *ek_op_display_type(const struct ek_op *op) {
    return op->type == EK_OP_PLUGIN ? ek_plugin_op_label(op) : ek_op_type_name((int)op->type);
}

static ek_status_t plugin_kernel_prepare(struct ek_op *op) {
    return ek_op_invalid(op, "plugin ops are prepared against a runtime's plugins (internal)");
}

static ek_status_t plugin_kernel_run(const struct ek_op *op, const void *const *in, void *const *out,
                                     struct ek_exec *exec) {
    const struct ek_plugin_reg *reg = op->params;
    if (!reg)
        return ek_fail(EK_ERR_INTERNAL, "plugin op '%s' was not prepared", op->name ? op->name : "");
    ek_plugin_tensor_t pin[MAX_PLUGIN_INPUTS], pout[MAX_PLUGIN_OUTPUTS];
    for (int i = 0; i < op->n_in; i++)
        to_plugin_tensor(op->in[i], (void *)in[i], &pin[i]);
    for (int i = 0; i < op->n_out; i++)
        to_plugin_tensor(op->out[i], out[i], &pout[i]);
    struct ek_plugin_call call;
    call.op = op;
    call.reg = reg;
    call.exec = exec;
    call.error[0] = '\0';
    if (reg->desc.run(&api, &call, op->n_in, pin, op->n_out, pout) != 0)
        return ek_fail(EK_ERR_INVALID_ARG, "plugin %s (%s) failed: %s", reg->lib->path, reg->label,
                       call.error[0] ? call.error : "its run returned non-zero without a message");
    for (int i = 0; i < op->n_out; i++) {
        /* A dynamic output (the model's DYNAMIC tensor, or an unused one the plugin says is dynamic,
         * kept as arena scratch) may come back smaller: the same rank, each dim 0 .. the recorded. */
        bool dynamic = op->out[i]->dynamic || (i < 32 && (reg->desc.dynamic_outputs >> i & 1u));
        if (dynamic && fits_shape(&pout[i], op->out[i])) {
            if (op->out[i]->dynamic) {
                ek_status_t st = ek_exec_set_dims(exec, op->out[i], pout[i].dims);
                if (st != EK_OK)
                    return st;
            }
            continue;
        }
        if (!same_shape(&pout[i], op->out[i])) {
            char got[160], want[160];
            if (pout[i].rank < 0 || pout[i].rank > EK_PLUGIN_MAX_DIMS)
                snprintf(got, sizeof got, "rank %d", (int)pout[i].rank);
            else
                shape_text(got, sizeof got, pout[i].dtype, pout[i].rank, pout[i].dims);
            shape_text(want, sizeof want, (int32_t)op->out[i]->dtype, op->out[i]->rank, op->out[i]->dims);
            return ek_fail(EK_ERR_INVALID_ARG,
                           dynamic ? "plugin %s (%s) reported dynamic output %d as %s, past its recorded bound %s "
                                     "(the same rank and dtype, each dim 0 .. the recorded one)"
                                   : "plugin %s (%s) reported output %d as %s, not its recorded shape %s (only "
                                     "outputs it registers in dynamic_outputs may change their shape)",
                           reg->lib->path, reg->label, i, got, want);
        }
    }
    return EK_OK;
}

const struct ek_kernel ek_kernel_plugin = {
    EK_OP_PLUGIN, 1, MAX_PLUGIN_INPUTS, 1, plugin_kernel_prepare, plugin_kernel_run, NULL,
};
