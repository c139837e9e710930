/* The ek_rt_* API: runtimes (generation-checked handles), loading models and plugins, network
 * information and the validation of launches before they go to the engine (engine.c).
 *
 * A runtime is freed only when nothing uses it: every API call on it holds a reference (`users`,
 * under the runtime table lock) and the engine counts its launches (`launches`); ek_rt_destroy
 * retires the handle first, so no new call or launch can start, then waits for both to drop to 0. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "plugin_internal.h"

#define DEFAULT_MAX_THREADS 8

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t released = PTHREAD_COND_INITIALIZER;

/* ---- a bounded string builder for messages ---- */
struct text {
    char buf[400];
    size_t len;
};

static void text_add(struct text *t, const char *fmt, ...) EK_PRINTF(2, 3);
static void text_add(struct text *t, const char *fmt, ...) {
    if (t->len >= sizeof t->buf - 1)
        return;
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(t->buf + t->len, sizeof t->buf - t->len, fmt, args);
    va_end(args);
    if (n > 0)
        t->len = t->len + (size_t)n < sizeof t->buf ? t->len + (size_t)n : sizeof t->buf - 1;
    if (t->len == sizeof t->buf - 1)
        memcpy(t->buf + sizeof t->buf - 4, "...", 4); /* truncated: say so */
}

static void text_shape(struct text *t, const ek_shape_t *shape) {
    if (shape->num_dims == 0) {
        text_add(t, "scalar");
        return;
    }
    for (int d = 0; d < shape->num_dims && d < EK_MAX_DIMS; d++)
        text_add(t, "%s%" PRId64, d ? "x" : "", shape->dims[d]);
}

static void desc_shape(const struct ek_tensor_desc *desc, ek_shape_t *shape) {
    memset(shape, 0, sizeof *shape);
    shape->num_dims = desc->rank;
    for (int d = 0; d < desc->rank; d++)
        shape->dims[d] = desc->dims[d];
}

/* ---- runtime handles and references ---- */

static ek_status_t rt_acquire(ek_rt_t handle, struct ek_runtime **out) {
    pthread_mutex_lock(&table_lock);
    void *obj;
    ek_status_t status = ek_handle_get(handle.id, EK_HANDLE_RUNTIME, &obj, NULL);
    if (status == EK_OK) {
        *out = obj;
        (*out)->users++;
    }
    pthread_mutex_unlock(&table_lock);
    return status;
}

static void rt_release(struct ek_runtime *rt) {
    pthread_mutex_lock(&table_lock);
    if (--rt->users == 0)
        pthread_cond_broadcast(&released);
    pthread_mutex_unlock(&table_lock);
}

ek_status_t ek_default_threads(int *threads) {
    const char *env = getenv("EDGEKIT_THREADS");
    if (env && *env) {
        char *end;
        errno = 0;
        long n = strtol(env, &end, 10);
        if (errno || *end || n < 1 || n > EK_MAX_LAUNCH_THREADS)
            return ek_fail(EK_ERR_INVALID_ARG, "EDGEKIT_THREADS='%.40s' is not a whole number from 1 to %d", env,
                           EK_MAX_LAUNCH_THREADS);
        *threads = (int)n;
        return EK_OK;
    }
    /* The CPUs this process may use (affinity, cgroup quota), not the machine's: under taskset or
     * in a container the online count would oversubscribe them. */
    int cpus = ek_usable_cpus(0);
    *threads = cpus > DEFAULT_MAX_THREADS ? DEFAULT_MAX_THREADS : cpus;
    return EK_OK;
}

ek_status_t ek_rt_create(ek_rt_t *rt, ek_dev_t dev) { return ek_rt_create_ex(rt, dev, NULL); }

ek_status_t ek_rt_create_ex(ek_rt_t *handle, ek_dev_t dev, const ek_rt_config_t *config) {
    if (!handle)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_create: rt is NULL");
    if (EK_IS_REMOTE(dev.id)) {
        handle->id = 0;
        if (config && (config->threads < 0 || config->threads > EK_MAX_LAUNCH_THREADS))
            return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_create: threads %d is outside 0 .. %d", config->threads,
                           EK_MAX_LAUNCH_THREADS);
        if (config && config->allocator.id)
            return ek_fail(EK_ERR_UNSUPPORTED, "ek_rt_create: a remote runtime allocates on the board, where the "
                           "host's allocator cannot run; allocators are for local runtimes (run the program on the "
                           "board to use one)");
        return ek_rc_rt_create(handle, dev, config);
    }
    ek_rt_config_t cfg = config ? *config : (ek_rt_config_t){.kernels = EK_KERNELS_DEFAULT};
    if (cfg.threads < 0 || cfg.threads > EK_MAX_LAUNCH_THREADS)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_create: threads %d is outside 0 .. %d", cfg.threads,
                       EK_MAX_LAUNCH_THREADS);
    int threads = cfg.threads;
    ek_status_t status;
    if (threads == 0 && (status = ek_default_threads(&threads)) != EK_OK)
        return status;
    ek_kernels_t kernels;
    const struct ek_provider *provider;
    const char *kernels_why;
    if ((status = ek_provider_select(cfg.kernels, &kernels, &provider, &kernels_why)) != EK_OK)
        return status;
    int id;
    if ((status = ek_dev_id(dev, &id)) != EK_OK)
        return status;
    struct ek_runtime *rt = calloc(1, sizeof *rt);
    if (!rt)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a runtime");
    if (cfg.allocator.id && (status = ek_allocator_attach(cfg.allocator, id, &rt->allocator)) != EK_OK) {
        free(rt);
        return status;
    }
    if ((status = ek_dev_request(&rt->dev, id)) != EK_OK) {
        ek_allocator_detach(rt->allocator);
        free(rt);
        return status;
    }
    rt->device_index = id;
    /* The test hook (docs/profiling.md): corrupt one op's output, to test dump comparisons. Two
     * variables, so a stray one in production does nothing; announced on stderr when active. */
    const char *corrupt = getenv("EDGEKIT_TEST_CORRUPT_OP"), *hooks = getenv("EDGEKIT_TEST_HOOKS");
    if (corrupt && *corrupt && hooks && strcmp(hooks, "1") == 0) {
        rt->test_corrupt_op = strdup(corrupt);
        fprintf(stderr, "edgekit: TEST HOOK ACTIVE: the output of op '%.200s' is corrupted in every launch "
                "(EDGEKIT_TEST_HOOKS=1 and EDGEKIT_TEST_CORRUPT_OP are set)\n", corrupt);
    }
    /* The second hook (docs/remote-protocol.md): every launch sleeps first, to test launch timeouts. */
    const char *slow = getenv("EDGEKIT_TEST_SLOW_LAUNCH_MS");
    if (slow && *slow && hooks && strcmp(hooks, "1") == 0) {
        long ms = strtol(slow, NULL, 10);
        rt->test_slow_launch_ms = ms > 0 && ms <= 3600000 ? (int)ms : 0;
        fprintf(stderr, "edgekit: TEST HOOK ACTIVE: every launch sleeps %d ms first (EDGEKIT_TEST_HOOKS=1 and "
                "EDGEKIT_TEST_SLOW_LAUNCH_MS are set)\n", rt->test_slow_launch_ms);
    }
    rt->kernels = kernels;
    rt->provider = provider;
    rt->kernels_why = kernels_why;
    rt->threads = threads;
    pthread_mutex_init(&rt->lock, NULL);
    if (!(rt->handle = ek_handle_new(EK_HANDLE_RUNTIME, rt, id))) {
        ek_allocator_detach(rt->allocator);
        ek_dev_free(rt->dev);
        pthread_mutex_destroy(&rt->lock);
        free(rt);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no room for another runtime handle");
    }
    handle->id = rt->handle;
    return EK_OK;
}

ek_status_t ek_rt_destroy(ek_rt_t handle) {
    if (EK_IS_REMOTE(handle.id))
        return ek_rc_rt_destroy(handle);
    pthread_mutex_lock(&table_lock);
    void *obj;
    ek_status_t status = ek_handle_lookup(handle.id, EK_HANDLE_RUNTIME, true, &obj, NULL);
    if (status != EK_OK) {
        pthread_mutex_unlock(&table_lock);
        return status;
    }
    struct ek_runtime *rt = obj;
    if (ek_engine_in_callback_of(rt)) {
        pthread_mutex_unlock(&table_lock);
        return ek_fail(EK_ERR_BUSY, "ek_rt_destroy from an on_done callback of the runtime's own launch would wait "
                       "for itself");
    }
    ek_handle_retire(handle.id, EK_HANDLE_RUNTIME);
    /* Wait for the calls in progress, then every queued or running launch (none can start now). */
    while (rt->users > 0)
        pthread_cond_wait(&released, &table_lock);
    pthread_mutex_unlock(&table_lock);
    ek_engine_wait_launches(rt);
    pthread_mutex_lock(&table_lock);
    /* Under the lock, so a concurrent ek_workspace_destroy sees them retired or the runtime busy. */
    for (struct ek_workspace_rec *ws = rt->workspaces; ws; ws = ws->next)
        ek_handle_retire(ws->handle, EK_HANDLE_WORKSPACE);
    pthread_mutex_unlock(&table_lock);

    while (rt->workspaces) {
        struct ek_workspace_rec *ws = rt->workspaces;
        rt->workspaces = ws->next;
        ek_engine_exec_free(rt, ws->exec);
        free(ws);
    }
    for (int i = 0; i < rt->network_count; i++) {
        struct ek_network *net = rt->networks[i];
        for (int s = 0; s < net->info.stage_count; s++)
            ek_engine_release_stage(rt, &net->stages[s]);
    }
    for (size_t i = 0; i < rt->model_count; i++)
        ek_model_free(rt->models[i]);
    ek_plugin_unload_all(rt); /* after the models, whose PLUGIN ops point into the libraries */
    free(rt->models);
    free(rt->networks);
    ek_allocator_detach(rt->allocator);
    ek_dev_free(rt->dev);
    pthread_mutex_destroy(&rt->lock);
    free(rt->test_corrupt_op);
    free(rt);
    return EK_OK;
}

ek_status_t ek_rt_kernels(ek_rt_t handle, const char **name) {
    if (!name)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_kernels: name is NULL");
    if (EK_IS_REMOTE(handle.id))
        return ek_rc_rt_kernels(handle, name);
    struct ek_runtime *rt;
    ek_status_t status = rt_acquire(handle, &rt);
    if (status != EK_OK)
        return status;
    *name = rt->provider ? "xnnpack" : "portable";
    rt_release(rt);
    return EK_OK;
}

ek_status_t ek_rt_kernels_reason(ek_rt_t handle, const char **reason) {
    if (!reason)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_kernels_reason: reason is NULL");
    if (EK_IS_REMOTE(handle.id)) {
        const char *name;
        ek_status_t status = ek_rc_rt_kernels(handle, &name); /* checks the handle; the board keeps its why */
        *reason = "";
        return status;
    }
    struct ek_runtime *rt;
    ek_status_t status = rt_acquire(handle, &rt);
    if (status != EK_OK)
        return status;
    *reason = rt->kernels_why ? rt->kernels_why : "";
    rt_release(rt);
    return EK_OK;
}

ek_status_t ek_rt_threads(ek_rt_t handle, int *threads) {
    if (!threads)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_threads: threads is NULL");
    if (EK_IS_REMOTE(handle.id))
        return ek_rc_rt_threads(handle, threads);
    struct ek_runtime *rt;
    ek_status_t status = rt_acquire(handle, &rt);
    if (status != EK_OK)
        return status;
    *threads = rt->threads;
    rt_release(rt);
    return EK_OK;
}

/* ---- models and networks ---- */

/* The runtime's plugin libraries as of now: a list head that stays valid (the list only grows). */
static const struct ek_plugin_lib *plugins_of(struct ek_runtime *rt) {
    pthread_mutex_lock(&rt->lock);
    const struct ek_plugin_lib *head = rt->plugins;
    pthread_mutex_unlock(&rt->lock);
    return head;
}

static ek_status_t add_model(struct ek_runtime *rt, struct ek_model *model) {
    pthread_mutex_lock(&rt->lock);
    ek_status_t status = EK_OK;
    for (uint32_t i = 0; i < model->network_count && status == EK_OK; i++)
        for (int j = 0; j < rt->network_count; j++)
            if (strcmp(model->networks[i].info.name, rt->networks[j]->info.name) == 0) {
                status = ek_fail(EK_ERR_BUSY, "network '%s' is already loaded in this runtime, which holds each "
                                 "network name once: compile one of the models again with another name "
                                 "(edgekit compile --name NAME)", model->networks[i].info.name);
                break;
            }
    if (status == EK_OK && rt->model_count == rt->model_cap) {
        size_t cap = rt->model_cap ? rt->model_cap * 2 : 4;
        struct ek_model **models = realloc(rt->models, cap * sizeof *models);
        if (models) {
            rt->models = models;
            rt->model_cap = cap;
        } else {
            status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for another model");
        }
    }
    if (status == EK_OK && (size_t)rt->network_count + model->network_count > (size_t)rt->network_cap) {
        size_t need = (size_t)rt->network_count + model->network_count;
        if (need > INT32_MAX / 2) {
            status = ek_fail(EK_ERR_OUT_OF_MEMORY, "too many networks in one runtime");
        } else {
            int cap = (int)need * 2;
            struct ek_network **nets = realloc(rt->networks, (size_t)cap * sizeof *nets);
            if (nets) {
                rt->networks = nets;
                rt->network_cap = cap;
            } else {
                status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for more networks");
            }
        }
    }
    if (status == EK_OK) {
        rt->models[rt->model_count++] = model;
        for (uint32_t i = 0; i < model->network_count; i++)
            rt->networks[rt->network_count++] = &model->networks[i];
    }
    pthread_mutex_unlock(&rt->lock);
    return status;
}

ek_status_t ek_rt_load_model(ek_rt_t handle, const char *path) {
    if (!path)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_load_model: path is NULL");
    if (EK_IS_REMOTE(handle.id))
        return ek_rc_rt_load_model(handle, path);
    struct ek_runtime *rt;
    ek_status_t status = rt_acquire(handle, &rt);
    if (status != EK_OK)
        return status;
    struct ek_model *model;
    if ((status = ek_model_load_file_ex(path, plugins_of(rt), &model)) == EK_OK &&
        (status = add_model(rt, model)) != EK_OK)
        ek_model_free(model);
    rt_release(rt);
    return status;
}

ek_status_t ek_rt_load_model_data(ek_rt_t handle, const void *data, size_t size) {
    if (!data || size == 0)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_load_model_data: %s", data ? "size is 0" : "data is NULL");
    if (size > SIZE_MAX - 64)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "ek_rt_load_model_data: %zu bytes is too large", size);
    if (EK_IS_REMOTE(handle.id))
        return ek_rc_rt_load_model_data(handle, data, size);
    struct ek_runtime *rt;
    ek_status_t status = rt_acquire(handle, &rt);
    if (status != EK_OK)
        return status;
    /* 64-byte aligned, so the constants inside are too (the format aligns them in the file). */
    uint8_t *copy = aligned_alloc(64, (size + 63) / 64 * 64);
    if (!copy) {
        rt_release(rt);
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a %zu-byte copy of the model", size);
    }
    memcpy(copy, data, size);
    struct ek_model *model;
    if ((status = ek_model_load_ex(copy, size, false, plugins_of(rt), &model)) != EK_OK)
        free(copy);
    else if ((status = add_model(rt, model)) != EK_OK)
        ek_model_free(model);
    rt_release(rt);
    return status;
}

ek_status_t ek_rt_network_count(ek_rt_t handle, int *count) {
    if (!count)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_network_count: count is NULL");
    if (EK_IS_REMOTE(handle.id))
        return ek_rc_rt_network_count(handle, count);
    struct ek_runtime *rt;
    ek_status_t status = rt_acquire(handle, &rt);
    if (status != EK_OK)
        return status;
    pthread_mutex_lock(&rt->lock);
    *count = rt->network_count;
    pthread_mutex_unlock(&rt->lock);
    rt_release(rt);
    return EK_OK;
}

ek_status_t ek_rt_network_name(ek_rt_t handle, int index, const char **name) {
    if (!name)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_network_name: name is NULL");
    if (EK_IS_REMOTE(handle.id))
        return ek_rc_rt_network_name(handle, index, name);
    struct ek_runtime *rt;
    ek_status_t status = rt_acquire(handle, &rt);
    if (status != EK_OK)
        return status;
    pthread_mutex_lock(&rt->lock);
    if (index < 0 || index >= rt->network_count)
        status = ek_fail(EK_ERR_INVALID_ARG, "ek_rt_network_name: index %d is outside 0 .. %d (%d network%s loaded)",
                         index, rt->network_count - 1, rt->network_count, rt->network_count == 1 ? "" : "s");
    else
        *name = rt->networks[index]->info.name;
    pthread_mutex_unlock(&rt->lock);
    rt_release(rt);
    return status;
}

static ek_status_t find_network(struct ek_runtime *rt, const char *name, struct ek_network **out) {
    if (!name)
        return ek_fail(EK_ERR_INVALID_ARG, "network name is NULL");
    pthread_mutex_lock(&rt->lock);
    for (int i = 0; i < rt->network_count; i++)
        if (strcmp(rt->networks[i]->info.name, name) == 0) {
            *out = rt->networks[i];
            pthread_mutex_unlock(&rt->lock);
            return EK_OK;
        }
    struct text loaded = {.len = 0};
    loaded.buf[0] = '\0';
    for (int i = 0; i < rt->network_count; i++)
        text_add(&loaded, "%s%s", i ? ", " : "", rt->networks[i]->info.name);
    pthread_mutex_unlock(&rt->lock);
    return ek_fail(EK_ERR_INVALID_ARG, "no network '%.100s' in this runtime; loaded: %s", name,
                   loaded.len ? loaded.buf : "none");
}

ek_status_t ek_rt_network_info(ek_rt_t handle, const char *name, const ek_net_info_t **info) {
    if (!info)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_network_info: info is NULL");
    if (EK_IS_REMOTE(handle.id))
        return ek_rc_rt_network_info(handle, name, info);
    struct ek_runtime *rt;
    ek_status_t status = rt_acquire(handle, &rt);
    if (status != EK_OK)
        return status;
    struct ek_network *net;
    if ((status = find_network(rt, name, &net)) == EK_OK)
        *info = &net->info;
    rt_release(rt);
    return status;
}

/* ---- plugins (plugin.c does the work) ---- */

ek_status_t ek_rt_load_plugin(ek_rt_t handle, const char *path) {
    if (!path || !*path)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_load_plugin: path is %s", path ? "empty" : "NULL");
    if (EK_IS_REMOTE(handle.id))
        return ek_fail(EK_ERR_UNSUPPORTED,
                       "ek_rt_load_plugin('%.200s'): this runtime is on a remote device, and its server never "
                       "loads client code: run the program that loads plugins on the board itself (e.g. edgekit-app "
                       "--plugin_libs there)", path);
    struct ek_runtime *rt;
    ek_status_t status = rt_acquire(handle, &rt);
    if (status != EK_OK)
        return status;
    status = ek_plugin_load(rt, path);
    rt_release(rt);
    return status;
}

/* ---- launches ---- */

static bool same_shape(const ek_shape_t *a, const ek_shape_t *b) {
    if (a->num_dims != b->num_dims)
        return false;
    for (int d = 0; d < a->num_dims; d++)
        if (a->dims[d] != b->dims[d])
            return false;
    return true;
}

/* The stage whose input shapes are `shapes` (input_count of them). */
static ek_status_t pick_stage(const struct ek_network *net, const ek_shape_t *shapes, int *stage) {
    const ek_net_info_t *info = &net->info;
    for (int i = 0; i < info->input_count; i++)
        if (shapes[i].num_dims < 0 || shapes[i].num_dims > EK_MAX_DIMS)
            return ek_fail(EK_ERR_INVALID_ARG, "input '%s' of network '%s' has %d dims; a shape has 0 .. %d",
                           info->inputs[i].name, info->name, shapes[i].num_dims, EK_MAX_DIMS);
    for (int s = 0; s < info->stage_count; s++) {
        int i = 0;
        while (i < info->input_count && same_shape(&shapes[i], &info->stages[s].input_shapes[i]))
            i++;
        if (i == info->input_count) {
            *stage = s;
            return EK_OK;
        }
    }
    struct text t = {.len = 0};
    t.buf[0] = '\0';
    for (int i = 0; i < info->input_count; i++) {
        text_add(&t, "%sinput '%s' is ", i ? ", " : "", info->inputs[i].name);
        text_shape(&t, &shapes[i]);
    }
    text_add(&t, "; network '%s' takes ", info->name);
    for (int s = 0; s < info->stage_count; s++) {
        text_add(&t, "%s", s ? " | " : "");
        for (int i = 0; i < info->input_count; i++) {
            text_add(&t, "%s", i ? ", " : "");
            text_shape(&t, &info->stages[s].input_shapes[i]);
        }
    }
    return ek_fail(EK_ERR_INVALID_ARG, "%s", t.buf);
}

static ek_status_t check_options(const ek_launch_options_t *options, int *threads, uint64_t *mask,
                                 const struct ek_runtime *rt) {
    *threads = rt->threads;
    *mask = 0;
    if (!options)
        return EK_OK;
    if (options->threads < 0 || options->threads > EK_MAX_LAUNCH_THREADS)
        return ek_fail(EK_ERR_INVALID_ARG, "launch options: threads %d is outside 0 .. %d", options->threads,
                       EK_MAX_LAUNCH_THREADS);
    if (options->threads)
        *threads = options->threads;
    if (options->cpu_mask) {
        uint64_t online = ek_online_mask();
        if (online && !(options->cpu_mask & online))
            return ek_fail(EK_ERR_INVALID_ARG, "launch options: cpu_mask 0x%" PRIx64 " has no CPU this process may "
                           "run on (those are 0x%" PRIx64 ")", options->cpu_mask, online);
        *mask = online ? options->cpu_mask & online : options->cpu_mask;
    }
    return EK_OK;
}

/* Check one tensor's memory under the (shared) device lock. */
static ek_status_t check_memory(struct ek_device *device, const struct ek_network *net, const char *kind,
                                const char *name, const ek_tensor_t *t, size_t nbytes, ek_dtype_t dtype) {
    void *obj;
    int owner;
    bool remote = EK_IS_REMOTE(t->mem.id); /* a remote device's memory (remote_client.c) */
    ek_status_t status = ek_handle_get(t->mem.id, EK_HANDLE_MEMORY | (remote ? EK_HANDLE_REMOTE : 0), &obj, &owner);
    if (status != EK_OK) {
        char why[300];
        snprintf(why, sizeof why, "%s", ek_last_error());
        return ek_fail(status, "network '%s' %s '%s': %s", net->info.name, kind, name, why);
    }
    if (remote)
        return ek_fail(EK_ERR_DEVICE_MISMATCH, "network '%s' %s '%s': memory 0x%016" PRIx64 " is on a remote device, "
                       "this runtime on local device %d", net->info.name, kind, name, t->mem.id, device->index);
    if (owner != device->index)
        return ek_fail(EK_ERR_DEVICE_MISMATCH, "network '%s' %s '%s': memory 0x%016" PRIx64 " is on device %d, this "
                       "runtime on device %d", net->info.name, kind, name, t->mem.id, owner, device->index);
    const struct ek_mem_rec *mem = obj;
    /* Kernels load elements with their type's alignment (memory itself starts 64-byte aligned). */
    size_t element = ek_dtype_size(dtype);
    if (element > 1 && t->offset % element != 0)
        return ek_fail(EK_ERR_INVALID_ARG, "network '%s' %s '%s': offset %zu is not a multiple of the %zu-byte "
                       "%s element size", net->info.name, kind, name, t->offset, element, ek_dtype_name(dtype));
    if (t->offset > mem->size || nbytes > mem->size - t->offset)
        return ek_fail(EK_ERR_OUT_OF_RANGE, "network '%s' %s '%s': %zu bytes at offset %zu go past the end of memory "
                       "0x%016" PRIx64 " (%zu bytes)", net->info.name, kind, name, nbytes, t->offset, t->mem.id,
                       mem->size);
    return EK_OK;
}

static bool overlap(const ek_tensor_t *a, size_t an, const ek_tensor_t *b, size_t bn) {
    return a->mem.id == b->mem.id && a->offset < b->offset + bn && b->offset < a->offset + an;
}

/* The memories of a launch: valid, on this device, large enough; outputs overlap nothing else. */
static ek_status_t check_launch_memory(struct ek_runtime *rt, const struct ek_network *net,
                                       const struct ek_stage *stage, const ek_tensor_t *inputs, int input_count,
                                       const ek_tensor_t *outputs, int output_count, bool user_mem) {
    const ek_net_info_t *info = &net->info;
    ek_status_t status;
    struct ek_device *device;
    if ((status = ek_device_lock(rt->dev, false, &device)) != EK_OK)
        return status;
    status = EK_OK;
    for (int i = 0; i < input_count && status == EK_OK; i++)
        status = check_memory(device, net, "input", info->inputs[i].name, &inputs[i], stage->input_tensors[i]->nbytes,
                              info->inputs[i].dtype);
    for (int i = 0; user_mem && i < output_count && status == EK_OK; i++) {
        size_t n = stage->output_tensors[i]->nbytes;
        /* A DYNAMIC output's room is checked against what the launch produces (engine.c) */
        status = check_memory(device, net, "output", info->outputs[i].name, &outputs[i],
                              info->outputs[i].dynamic ? 0 : n, info->outputs[i].dtype);
        for (int j = 0; j < input_count && status == EK_OK; j++)
            if (overlap(&outputs[i], n, &inputs[j], stage->input_tensors[j]->nbytes))
                status = ek_fail(EK_ERR_INVALID_ARG, "network '%s': output '%s' overlaps input '%s' in memory "
                                 "0x%016" PRIx64, info->name, info->outputs[i].name, info->inputs[j].name,
                                 outputs[i].mem.id);
        for (int j = 0; j < i && status == EK_OK; j++)
            if (overlap(&outputs[i], n, &outputs[j], stage->output_tensors[j]->nbytes))
                status = ek_fail(EK_ERR_INVALID_ARG, "network '%s': outputs '%s' and '%s' overlap in memory "
                                 "0x%016" PRIx64, info->name, info->outputs[j].name, info->outputs[i].name,
                                 outputs[i].mem.id);
    }
    ek_device_unlock(device);
    return status;
}

/* Take workspace `handle` for a launch of `net` in stage `s`: EK_ERR_BUSY while another launch runs in it.
 * Under the runtime table lock, as ek_workspace_destroy and ek_rt_destroy retire workspaces, so the
 * workspace looked up cannot be freed before it is claimed. */
static ek_status_t claim_workspace(struct ek_runtime *rt, ek_workspace_t handle, const struct ek_network *net, int s,
                                   bool user_mem, struct ek_workspace_rec **out) {
    if (!user_mem)
        return ek_fail(EK_ERR_INVALID_ARG, "launch of network '%s' in a workspace: give the outputs' memory "
                       "(user_mem): a launch in a workspace allocates nothing (ek_rt_launch_data, which stages "
                       "through device memory, cannot run in one)", net->info.name);
    pthread_mutex_lock(&table_lock);
    void *obj = NULL;
    ek_status_t status = ek_handle_get(handle.id, EK_HANDLE_WORKSPACE, &obj, NULL);
    struct ek_workspace_rec *ws = obj;
    if (status != EK_OK) {
        char why[300];
        snprintf(why, sizeof why, "%s", ek_last_error());
        status = ek_fail(status, "launch options: workspace: %s", why);
    } else if (ws->rt != rt) {
        status = ek_fail(EK_ERR_INVALID_ARG, "launch options: workspace 0x%016" PRIx64 " belongs to another runtime",
                         handle.id);
    } else if (ws->net != net || ws->stage != &net->stages[s]) {
        status = ek_fail(EK_ERR_INVALID_ARG, "launch options: workspace 0x%016" PRIx64 " is for network '%s' stage %d; "
                         "this launch is of network '%s' stage %d (its inputs' shapes)", handle.id, ws->net->info.name,
                         (int)(ws->stage - ws->net->stages), net->info.name, s);
    } else if (atomic_exchange(&ws->busy, true)) {
        status = ek_fail(EK_ERR_BUSY, "launch options: workspace 0x%016" PRIx64 " of network '%s' is running a launch "
                         "still: wait for it first; concurrent launches each need their own workspace",
                         handle.id, net->info.name);
    } else {
        *out = ws;
    }
    pthread_mutex_unlock(&table_lock);
    return status;
}

static void release_workspace(struct ek_workspace_rec *ws) {
    if (ws)
        atomic_store(&ws->busy, false);
}

/* Validate and queue a launch on an acquired runtime; with `wait` (launch_out NULL), run it as
 * ek_launch_run does and return its status. */
static ek_status_t launch(struct ek_runtime *rt, const char *net_name, const ek_tensor_t *inputs, int input_count,
                          ek_tensor_t *outputs, int output_count, bool user_mem, const ek_launch_options_t *options,
                          ek_launch_t *launch_out, bool wait) {
    int threads;
    uint64_t mask;
    struct ek_network *net;
    ek_status_t status = check_options(options, &threads, &mask, rt);
    if (status != EK_OK || (status = find_network(rt, net_name, &net)) != EK_OK)
        return status;
    const ek_net_info_t *info = &net->info;
    if (input_count != info->input_count || output_count != info->output_count)
        return ek_fail(EK_ERR_INVALID_ARG, "network '%s' has %d input%s and %d output%s; the launch gives %d and %d",
                       info->name, info->input_count, info->input_count == 1 ? "" : "s", info->output_count,
                       info->output_count == 1 ? "" : "s", input_count, output_count);
    if (!inputs || !outputs)
        return ek_fail(EK_ERR_INVALID_ARG, "launch of network '%s': %s is NULL", info->name,
                       inputs ? "outputs" : "inputs");
    ek_shape_t *shapes = malloc((size_t)input_count * sizeof *shapes);
    if (!shapes)
        return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a launch");
    for (int i = 0; i < input_count; i++) {
        if (inputs[i].dtype != info->inputs[i].dtype) {
            free(shapes);
            return ek_fail(EK_ERR_INVALID_ARG, "input '%s' of network '%s' is %s; the launch gives %s (%d)",
                           info->inputs[i].name, info->name, ek_dtype_name(info->inputs[i].dtype),
                           ek_dtype_name(inputs[i].dtype), (int)inputs[i].dtype);
        }
        shapes[i] = inputs[i].shape;
    }
    int s;
    status = pick_stage(net, shapes, &s);
    free(shapes);
    if (status != EK_OK)
        return status;
    struct ek_stage *stage = &net->stages[s];
    struct ek_workspace_rec *ws = NULL;
    if (options && options->workspace.id && (status = claim_workspace(rt, options->workspace, net, s, user_mem,
                                                                      &ws)) != EK_OK)
        return status;
    /* From here on every failure gives the workspace back (ek_launch_discard does once it is the record's). */
    if ((status = check_launch_memory(rt, net, stage, inputs, input_count, outputs, output_count, user_mem)) != EK_OK) {
        release_workspace(ws);
        return status;
    }
    /* A dump directory that cannot be written fails here, before anything runs. */
    if (options && options->dump_dir && (status = ek_make_dir(options->dump_dir, "dump")) != EK_OK) {
        release_workspace(ws);
        return status;
    }

    struct ek_launch_rec *rec;
    if ((status = ek_launch_new(rt, input_count, output_count, launch_out != NULL, &rec)) != EK_OK) {
        release_workspace(ws);
        return status;
    }
    rec->workspace = ws;
    rec->net = net;
    for (int i = 0; i < output_count && !rec->caller_outputs; i++)
        if (info->outputs[i].dynamic)
            rec->caller_outputs = outputs;
    rec->stage = stage;
    rec->threads = threads;
    rec->cpu_mask = mask;
    if (options) {
        rec->on_done = options->on_done;
        rec->user_data = options->user_data;
        if (options->profile.id) {
            if ((status = ek_profiler_acquire(options->profile, &rec->profile)) != EK_OK) {
                char why[300];
                snprintf(why, sizeof why, "%s", ek_last_error());
                ek_launch_discard(rec);
                return ek_fail(status, "launch options: profile: %s", why);
            }
            rec->profile_launch = ek_profiler_next_launch(rec->profile);
            rec->caller_thread = ek_thread_id();
        }
        if (options->dump_dir && !(rec->dump_dir = strdup(options->dump_dir))) {
            ek_launch_discard(rec);
            return ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a launch");
        }
    }
    memcpy(rec->tensors, inputs, (size_t)input_count * sizeof *inputs);
    int allocated = 0;
    for (int i = 0; i < output_count; i++) {
        ek_tensor_t *t = &rec->tensors[input_count + i];
        const struct ek_tensor_desc *desc = stage->output_tensors[i];
        if (user_mem) {
            t->mem = outputs[i].mem;
            t->offset = outputs[i].offset;
        } else {
            if ((status = ek_rt_alloc(rt, desc->nbytes, true, &t->mem, &t->offset)) != EK_OK) {
                char why[300];
                snprintf(why, sizeof why, "%s", ek_last_error());
                status = ek_fail(status, "network '%s': no device memory for output '%s': %s", info->name,
                                 info->outputs[i].name, why);
                break;
            }
            allocated++;
        }
        t->dtype = desc->dtype;
        desc_shape(desc, &t->shape);
    }
    if (status != EK_OK) {
        for (int i = 0; i < allocated; i++)
            ek_rt_free(rt, rec->tensors[input_count + i].mem, rec->tensors[input_count + i].offset);
        ek_launch_discard(rec);
        return status;
    }
    /* The caller's outputs and launch handle are filled before the launch is queued: it may end, and
     * its on_done read them (or the launch set a DYNAMIC output's shape there), before submit returns. */
    memcpy(outputs, rec->tensors + input_count, (size_t)output_count * sizeof *outputs);
    if (launch_out)
        launch_out->id = rec->handle;
    if (rec->profile)
        rec->submit_ns = ek_now_ns();
    if (wait) /* user_mem (ek_rt_run, ek_rt_launch_data): nothing allocated here */
        return ek_launch_run(rec);
    if ((status = ek_launch_submit(rec)) != EK_OK) { /* the record is discarded */
        for (int i = 0; i < allocated; i++) {
            ek_rt_free(rt, outputs[i].mem, outputs[i].offset);
            outputs[i].mem.id = 0; /* no freed handle left in the caller's array */
        }
        if (launch_out)
            launch_out->id = 0;
        return status;
    }
    return EK_OK;
}

ek_status_t ek_rt_launch_tensor(ek_rt_t handle, const char *net_name, const ek_tensor_t *inputs, int input_count,
                                ek_tensor_t *outputs, int output_count, bool user_mem,
                                const ek_launch_options_t *options, ek_launch_t *launch_out) {
    if (EK_IS_REMOTE(handle.id))
        return ek_rc_rt_launch_tensor(handle, net_name, inputs, input_count, outputs, output_count, user_mem,
                                      options, launch_out);
    struct ek_runtime *rt;
    ek_status_t status = rt_acquire(handle, &rt);
    if (status != EK_OK)
        return status;
    status = launch(rt, net_name, inputs, input_count, outputs, output_count, user_mem, options, launch_out, false);
    rt_release(rt);
    return status;
}

ek_status_t ek_rt_run(ek_rt_t handle, const char *net_name, const ek_tensor_t *inputs, int input_count,
                      ek_tensor_t *outputs, int output_count, const ek_launch_options_t *options) {
    if (EK_IS_REMOTE(handle.id)) {
        ek_launch_t l;
        ek_status_t status = ek_rc_rt_launch_tensor(handle, net_name, inputs, input_count, outputs, output_count,
                                                    true, options, &l);
        return status == EK_OK ? ek_rc_launch_wait(l, -1) : status;
    }
    struct ek_runtime *rt;
    ek_status_t status = rt_acquire(handle, &rt);
    if (status != EK_OK)
        return status;
    status = launch(rt, net_name, inputs, input_count, outputs, output_count, true, options, NULL, true);
    rt_release(rt);
    return status;
}

ek_status_t ek_rt_launch_data(ek_rt_t handle, const char *net_name, const void *const *inputs,
                              const ek_shape_t *input_shapes, int input_count, void *const *outputs,
                              const size_t *output_capacity, ek_shape_t *output_shapes, int output_count,
                              const ek_launch_options_t *options) {
    if (!inputs || !input_shapes || !outputs || !output_capacity || !output_shapes)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_launch_data: %s is NULL",
                       !inputs ? "inputs" : !input_shapes ? "input_shapes" : !outputs ? "outputs"
                       : !output_capacity ? "output_capacity" : "output_shapes");
    if (EK_IS_REMOTE(handle.id))
        return ek_rc_rt_launch_data(handle, net_name, inputs, input_shapes, input_count, outputs, output_capacity,
                                    output_shapes, output_count, options);
    struct ek_runtime *rt;
    ek_status_t status = rt_acquire(handle, &rt);
    if (status != EK_OK)
        return status;
    struct ek_network *net;
    struct ek_profiler *profile = NULL;
    int s = 0;
    if ((status = find_network(rt, net_name, &net)) != EK_OK)
        goto done;
    const ek_net_info_t *info = &net->info;
    if (input_count != info->input_count || output_count != info->output_count) {
        status = ek_fail(EK_ERR_INVALID_ARG, "network '%s' has %d input%s and %d output%s; the launch gives %d and %d",
                         info->name, info->input_count, info->input_count == 1 ? "" : "s", info->output_count,
                         info->output_count == 1 ? "" : "s", input_count, output_count);
        goto done;
    }
    if ((status = pick_stage(net, input_shapes, &s)) != EK_OK)
        goto done;
    struct ek_stage *stage = &net->stages[s];
    for (int i = 0; i < input_count; i++)
        if (!inputs[i]) {
            status = ek_fail(EK_ERR_INVALID_ARG, "ek_rt_launch_data: inputs[%d] ('%s') is NULL", i, info->inputs[i].name);
            goto done;
        }
    for (int i = 0; i < output_count; i++) {
        const struct ek_tensor_desc *desc = stage->output_tensors[i];
        if (!outputs[i]) {
            status = ek_fail(EK_ERR_INVALID_ARG, "ek_rt_launch_data: outputs[%d] ('%s') is NULL", i,
                             info->outputs[i].name);
            goto done;
        }
        if (output_capacity[i] < desc->nbytes && !info->outputs[i].dynamic) {
            struct text t = {.len = 0};
            ek_shape_t shape;
            desc_shape(desc, &shape);
            t.buf[0] = '\0';
            text_shape(&t, &shape);
            status = ek_fail(EK_ERR_INVALID_ARG, "output '%s' of network '%s' needs %zu bytes (%s %s); "
                             "output_capacity[%d] is %zu", info->outputs[i].name, info->name, desc->nbytes, t.buf,
                             ek_dtype_name(desc->dtype), i, output_capacity[i]);
            goto done;
        }
    }

    if (options && options->workspace.id) {
        status = ek_fail(EK_ERR_INVALID_ARG, "ek_rt_launch_data of network '%s' in a workspace: it stages the data "
                         "through device memory it allocates, so it cannot run in one; use ek_rt_run or "
                         "ek_rt_launch_tensor with your memory", info->name);
        goto done;
    }
    /* Device copies of the inputs, a launch on them, then the outputs back. */
    if (options && options->profile.id && (status = ek_profiler_acquire(options->profile, &profile)) != EK_OK) {
        char why[300];
        snprintf(why, sizeof why, "%s", ek_last_error());
        status = ek_fail(status, "launch options: profile: %s", why);
        goto done;
    }
    uint64_t t0 = profile ? ek_now_ns() : 0, moved = 0;
    size_t n = (size_t)input_count + (size_t)output_count;
    ek_tensor_t *tensors = calloc(n, sizeof *tensors);
    if (!tensors) {
        status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a launch");
        goto done;
    }
    ek_tensor_t *outs = tensors + input_count;
    int staged = 0, staged_out = 0;
    for (; staged < input_count && status == EK_OK; staged++) {
        const struct ek_tensor_desc *desc = stage->input_tensors[staged];
        ek_tensor_t *t = &tensors[staged];
        t->dtype = info->inputs[staged].dtype;
        t->shape = input_shapes[staged];
        if ((status = ek_rt_alloc(rt, desc->nbytes, false, &t->mem, &t->offset)) != EK_OK)
            break;
        if ((status = ek_memcpy_s2d_partial_offset(rt->dev, t->mem, inputs[staged], desc->nbytes, t->offset)) != EK_OK) {
            staged++; /* allocated: free it below */
            break;
        }
        moved += desc->nbytes;
    }
    for (; staged_out < output_count && status == EK_OK; staged_out++) {
        ek_tensor_t *t = &outs[staged_out];
        if ((status = ek_rt_alloc(rt, stage->output_tensors[staged_out]->nbytes, false, &t->mem, &t->offset)) != EK_OK)
            break;
    }
    if (profile)
        ek_profiler_span(profile, EK_PROFILE_TRANSFER_FROM_INPUT, info->name, s, 0, t0, ek_now_ns(), ek_thread_id(),
                         moved);
    bool launched = false;
    if (status == EK_OK) {
        launched = true;
        status = launch(rt, net_name, tensors, input_count, outs, output_count, true, options, NULL, true);
    }
    t0 = profile ? ek_now_ns() : 0;
    moved = 0;
    for (int i = 0; launched && i < output_count; i++) {
        size_t bytes = stage->output_tensors[i]->nbytes;
        if (status == EK_OK && info->outputs[i].dynamic) { /* what this launch produced */
            bytes = ek_shape_bytes(stage->output_tensors[i]->dtype, &outs[i].shape);
            if (bytes > output_capacity[i])
                status = ek_fail(EK_ERR_OUT_OF_RANGE, "output '%s' of network '%s' is %zu bytes this launch; "
                                 "output_capacity[%d] is %zu: give it at least %zu bytes (its bound is %zu)",
                                 info->outputs[i].name, info->name, bytes, i, output_capacity[i], bytes,
                                 stage->output_tensors[i]->nbytes);
        }
        if (status == EK_OK && bytes)
            status = ek_memcpy_d2s_partial_offset(rt->dev, outputs[i], outs[i].mem, bytes, outs[i].offset);
        if (status == EK_OK) {
            output_shapes[i] = outs[i].shape;
            moved += bytes;
        }
    }
    if (profile && launched && status == EK_OK)
        ek_profiler_span(profile, EK_PROFILE_TRANSFER_TO_OUTPUT, info->name, s, 0, t0, ek_now_ns(), ek_thread_id(),
                         moved);
    /* Free without losing the first error's message. */
    char why[512];
    snprintf(why, sizeof why, "%s", ek_last_error());
    for (int i = 0; i < staged_out; i++)
        ek_rt_free(rt, outs[i].mem, outs[i].offset);
    for (int i = 0; i < staged; i++)
        if (tensors[i].mem.id)
            ek_rt_free(rt, tensors[i].mem, tensors[i].offset);
    free(tensors);
    if (status != EK_OK)
        ek_fail(status, "%s", why);
done:
    ek_profiler_release(profile);
    rt_release(rt);
    return status;
}

/* ---- the static memory strategy: stage sizes and workspaces ---- */

static ek_status_t find_stage(struct ek_runtime *rt, const char *net_name, int stage, struct ek_network **net,
                              const char *call) {
    ek_status_t status = find_network(rt, net_name, net);
    if (status != EK_OK)
        return status;
    if (stage < 0 || stage >= (*net)->info.stage_count)
        return ek_fail(EK_ERR_INVALID_ARG, "%s: network '%s' has stage%s 0 .. %d, not %d", call, (*net)->info.name,
                       (*net)->info.stage_count == 1 ? "" : "s", (*net)->info.stage_count - 1, stage);
    return EK_OK;
}

ek_status_t ek_rt_stage_memory(ek_rt_t handle, const char *net_name, int stage, ek_stage_memory_t *memory) {
    if (!memory)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_stage_memory: memory is NULL");
    if (EK_IS_REMOTE(handle.id))
        return ek_fail(EK_ERR_UNSUPPORTED, "ek_rt_stage_memory: a remote runtime manages its memory on the board; "
                       "workspaces are for local runtimes");
    struct ek_runtime *rt;
    ek_status_t status = rt_acquire(handle, &rt);
    if (status != EK_OK)
        return status;
    struct ek_network *net;
    if ((status = find_stage(rt, net_name, stage, &net, "ek_rt_stage_memory")) == EK_OK) {
        const struct ek_stage *st = &net->stages[stage];
        memset(memory, 0, sizeof *memory);
        for (uint32_t t = 0; t < st->tensor_count; t++)
            if (st->tensors[t].storage == EK_STORAGE_CONSTANT)
                memory->constant_bytes += st->tensors[t].nbytes; /* each within the file: no overflow */
        memory->alignment = EK_CACHE_LINE;
        status = ek_engine_workspace_bytes(net, st, &memory->workspace_bytes);
    }
    rt_release(rt);
    return status;
}

ek_status_t ek_rt_workspace_create(ek_rt_t handle, const char *net_name, int stage, ek_mem_t mem, size_t offset,
                                   size_t size, ek_workspace_t *workspace) {
    if (!workspace)
        return ek_fail(EK_ERR_INVALID_ARG, "ek_rt_workspace_create: workspace is NULL");
    workspace->id = 0;
    if (EK_IS_REMOTE(handle.id))
        return ek_fail(EK_ERR_UNSUPPORTED, "ek_rt_workspace_create: a remote runtime manages its memory on the "
                       "board; workspaces are for local runtimes");
    struct ek_runtime *rt;
    ek_status_t status = rt_acquire(handle, &rt);
    if (status != EK_OK)
        return status;
    struct ek_network *net;
    size_t need = 0;
    if ((status = find_stage(rt, net_name, stage, &net, "ek_rt_workspace_create")) != EK_OK ||
        (status = ek_engine_workspace_bytes(net, &net->stages[stage], &need)) != EK_OK)
        goto done;
    if (size < need) {
        status = ek_fail(EK_ERR_INVALID_ARG, "ek_rt_workspace_create: network '%s' stage %d needs a %zu-byte "
                         "workspace (ek_rt_stage_memory); %zu bytes given", net->info.name, stage, need, size);
        goto done;
    }
    /* The memory: live, on this device, holding [offset, offset + size) at an aligned offset. */
    if ((status = ek_mem_check_block(rt->dev, mem, offset, size)) != EK_OK) {
        char why[300];
        snprintf(why, sizeof why, "%s", ek_last_error());
        status = ek_fail(status, "ek_rt_workspace_create: %s", why);
        goto done;
    }

    struct ek_workspace_rec *ws = calloc(1, sizeof *ws);
    if (!ws) {
        status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no host memory for a workspace");
        goto done;
    }
    ws->rt = rt;
    ws->net = net;
    ws->stage = &net->stages[stage];
    atomic_init(&ws->busy, false);
    if ((status = ek_engine_exec_create_in(rt, net, ws->stage, mem, offset, &ws->exec)) != EK_OK) {
        free(ws);
        goto done;
    }
    if (!(ws->handle = ek_handle_new(EK_HANDLE_WORKSPACE, ws, rt->device_index))) {
        ek_engine_exec_free(rt, ws->exec);
        free(ws);
        status = ek_fail(EK_ERR_OUT_OF_MEMORY, "no room for another workspace handle");
        goto done;
    }
    pthread_mutex_lock(&rt->lock);
    ws->next = rt->workspaces;
    rt->workspaces = ws;
    pthread_mutex_unlock(&rt->lock);
    workspace->id = ws->handle;
done:
    rt_release(rt);
    return status;
}

ek_status_t ek_workspace_destroy(ek_workspace_t handle) {
    /* Lookup, busy check and retire in one section of the runtime table lock, which launches claim
     * workspaces and ek_rt_destroy retires them under: two destroys of one handle, or a destroy racing
     * a launch, see one consistent state. */
    pthread_mutex_lock(&table_lock);
    void *obj;
    ek_status_t status = ek_handle_lookup(handle.id, EK_HANDLE_WORKSPACE, true, &obj, NULL);
    if (status != EK_OK) {
        pthread_mutex_unlock(&table_lock);
        return status;
    }
    struct ek_workspace_rec *ws = obj;
    struct ek_runtime *rt = ws->rt;
    if (ek_handle_get(rt->handle, EK_HANDLE_RUNTIME, NULL, NULL) != EK_OK) {
        pthread_mutex_unlock(&table_lock);
        return ek_fail(EK_ERR_BUSY, "ek_workspace_destroy: its runtime is being destroyed, which destroys the "
                       "workspace too");
    }
    if (atomic_load(&ws->busy)) {
        pthread_mutex_unlock(&table_lock);
        return ek_fail(EK_ERR_BUSY, "ek_workspace_destroy: a launch of network '%s' runs in workspace 0x%016" PRIx64
                       "; wait for it first", ws->net->info.name, handle.id);
    }
    if ((status = ek_handle_retire(handle.id, EK_HANDLE_WORKSPACE)) != EK_OK) {
        pthread_mutex_unlock(&table_lock);
        return status;
    }
    rt->users++; /* the runtime (and its list) stays until the workspace is unlinked */
    pthread_mutex_unlock(&table_lock);

    pthread_mutex_lock(&rt->lock);
    struct ek_workspace_rec **p = &rt->workspaces;
    while (*p && *p != ws)
        p = &(*p)->next;
    if (*p)
        *p = ws->next;
    pthread_mutex_unlock(&rt->lock);
    ek_engine_exec_free(rt, ws->exec);
    free(ws);
    rt_release(rt);
    return EK_OK;
}
