/* The hammer: 8 threads share one device and one runtime for a while, mixing every concurrent use
 * the API allows, and check every result they get, not only that nothing crashed:
 *   - ek_rt_run, ek_rt_launch_tensor (+ ek_launch_wait with timeouts of 0 and 1 ms that expire, then
 *     a wait that ends it) and ek_rt_launch_data on the shared runtime, with 1 to 3 threads per launch
 *     and sometimes a shared profile;
 *   - on_done callbacks that relaunch (a queued launch, or ek_rt_run run inline on the worker);
 *   - launches in each thread's own workspace, destroyed and made again now and then;
 *   - models loaded into the shared runtime while others launch (a second load of a name: EK_ERR_BUSY),
 *     and network info read meanwhile;
 *   - private runtimes (on the heap, their own pool allocator, or a pool or callback allocator they share)
 *     created, loaded, launched on and destroyed with their launches in flight (destroy waits for them);
 *     a destroyed runtime is EK_ERR_FREED_HANDLE, destroying it again EK_ERR_DOUBLE_FREE, destroying it
 *     from its own callback EK_ERR_BUSY;
 *   - ek_dev_sync while the others keep launching, and a profile cleared while launches record into it;
 *   - a "churn" runtime that threads launch on and load networks into while others replace and destroy
 *     it: a call either succeeds, with the right output, or gets EK_ERR_FREED_HANDLE, never anything else.
 * Outputs are compared with their expected values; at the end the device heap is back where it began.
 *
 * How long: --seconds S (or EKT_SECONDS; default 2) and --iterations N per thread (or EKT_ITERATIONS;
 * default: no limit), whichever ends first; every thread does each kind of step at least once.
 * --remote (or EKT_REMOTE=1): the same on remote devices, served by an ek_server in this process
 * (without workspaces and allocators, which are for local runtimes).
 * tests/test_c_runtime.py runs the short form (plain, under ASan and under ThreadSanitizer);
 * `invoke hammer --seconds 600` runs the long one under ThreadSanitizer. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ek_test.h"
#include "ek_helpers.h"
#include "ekm_builder.h"

enum { THREADS = 8, BIG = 65536, MAX_LOADS = 6, OP_ADD = 5, OP_RELU = 9 };

/* ---- the models ----
 * small (or any name): y = relu(x + c + shift), c[8] a constant; stages x = 1x8 and 2x8 (c broadcast).
 * big: y = relu((x + x) + x) over BIG floats: large enough that launches split it across threads. */
static float c_value(int i, int shift) { return (float)((i % 2 ? -1 : 1) * (i + 1) + shift); }

static void add_small(ekb_t *b, const char *name, int shift)
{
    float c[8];
    for (int i = 0; i < 8; i++)
        c[i] = c_value(i, shift);
    ekb_network(b, name, 1, 1);
    ekb_io(b, "x", EK_DTYPE_FLOAT32, 64);
    ekb_io(b, "y", EK_DTYPE_FLOAT32, 64);
    for (int rows = 1; rows <= 2; rows++) {
        int64_t xd[2] = {rows, 8}, cd[1] = {8};
        ekb_stage(b);
        uint32_t x = ekb_input(b, "x", 0, 2, xd);
        uint32_t k = ekb_constant(b, "c", 1, cd, c);
        uint32_t t = ekb_arena(b, "t", 2, xd);
        uint32_t y = ekb_output(b, "y", 0, 2, xd);
        ekb_op2(b, OP_ADD, "add", x, k, t);
        ekb_op1(b, OP_RELU, "relu", t, y);
    }
}

static void add_big(ekb_t *b)
{
    int64_t d[1] = {BIG};
    ekb_network(b, "big", 1, 1);
    ekb_io(b, "x", EK_DTYPE_FLOAT32, BIG * 4);
    ekb_io(b, "y", EK_DTYPE_FLOAT32, BIG * 4);
    ekb_stage(b);
    uint32_t x = ekb_input(b, "x", 0, 1, d);
    uint32_t t1 = ekb_arena(b, "t1", 1, d);
    uint32_t t2 = ekb_arena(b, "t2", 1, d);
    uint32_t y = ekb_output(b, "y", 0, 1, d);
    ekb_op2(b, OP_ADD, "double", x, x, t1);
    ekb_op2(b, OP_ADD, "triple", t1, x, t2);
    ekb_op1(b, OP_RELU, "relu", t2, y);
}

/* The main model (small + big), or one network `name` of small with `shift`. */
static uint8_t *build_model(const char *name, int shift, size_t *size)
{
    ekb_t b;
    ekb_init(&b);
    add_small(&b, name ? name : "small", shift);
    if (!name)
        add_big(&b);
    uint8_t *data = ekb_finish(&b, size);
    ekb_free(&b);
    return data;
}

static float small_x(float seed, int i) { return seed + (float)i - 7.5f; }
static float small_y(float seed, int i, int shift)
{
    float v = small_x(seed, i) + c_value(i % 8, shift);
    return v > 0 ? v : 0;
}
static float big_x(float seed, int i) { return seed - (float)(i % 1000) / 8; }
static float big_y(float x) { return 3 * x > 0 ? 3 * x : 0; }

/* ---- shared state ---- */
static uint8_t *main_model;
static size_t main_model_size;
static ek_dev_t dev;      /* device 0, shared by every thread */
static ek_dev_t dev_priv; /* the private runtimes' device: the last one (device 1 with EDGEKIT_DEVICES=2) */
static ek_rt_t main_rt;   /* the runtime every thread shares */
static ek_profile_t profile;
static _Atomic uint64_t churn_rt;     /* replaced and destroyed while others launch on it */
static _Atomic uint64_t churn_dead;   /* the last churn runtime destroyed */
static pthread_mutex_t churn_swap = PTHREAD_MUTEX_INITIALIZER; /* one replacement at a time */
static struct timespec deadline;
static long max_iterations;
/* --remote: the devices are remote ones, served by an ek_server in this process (docs/remote-protocol.md);
 * workspaces and allocators, which are for local runtimes, are left out. */
static bool remote_mode;

static atomic_long n_iterations, n_run, n_tensor, n_data, n_chain, n_private, n_workspace, n_loads, n_timeouts,
    n_runtimes, n_churn_ok, n_churn_freed, n_churn_swaps, n_profiled, n_profile_clears, n_syncs, n_churn_loads;
static _Atomic uint64_t max_sync_ns; /* the longest ek_dev_sync while the others kept launching */

static int past_deadline(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > deadline.tv_sec || (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec);
}

#define FAIL(...)                                                                                      \
    do {                                                                                               \
        char what_[400];                                                                               \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                                    \
        ekt_report_failure(__FILE__, __LINE__, what_);                                                 \
    } while (0)

/* ---- device tensors of the small network ---- */
static int write_small(ek_dev_t d, ek_tensor_t *x, int rows, float seed)
{
    float v[16];
    for (int i = 0; i < rows * 8; i++)
        v[i] = small_x(seed, i);
    x->dtype = EK_DTYPE_FLOAT32;
    x->shape = ekt_shape2(rows, 8);
    return CHECK_OK(ek_memcpy_s2d_partial_offset(d, x->mem, v, (size_t)rows * 32, x->offset));
}

static int check_small(ek_dev_t d, const ek_tensor_t *y, int rows, float seed, int shift, const char *what)
{
    float v[16];
    if (!CHECK_OK(ek_memcpy_d2s_partial_offset(d, v, y->mem, (size_t)rows * 32, y->offset)))
        return 0;
    for (int i = 0; i < rows * 8; i++)
        if (v[i] != small_y(seed, i, shift)) {
            FAIL("%s: y[%d] = %g, expected %g", what, i, v[i], small_y(seed, i, shift));
            return 0;
        }
    return 1;
}

static int check_big(const float *x, const float *y, const char *what)
{
    for (int i = 0; i < BIG; i += 61)
        if (y[i] != big_y(x[i])) {
            FAIL("%s: y[%d] = %g, expected %g", what, i, y[i], big_y(x[i]));
            return 0;
        }
    return 1;
}

/* ---- a thread ---- */
struct chain {
    ek_rt_t rt;
    bool churn;
    ek_tensor_t x, y;
    float seed;
    int left, links;
    uint64_t rng;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    ek_status_t end; /* EK_OK, or the status that ended it early */
};

struct priv_done {
    ek_rt_t rt;
    atomic_int calls;
    atomic_int bad;
};

struct worker {
    int index;
    uint64_t rng;
    float seed;
    ek_tensor_t x, y;     /* small, on `dev`: 2x8 floats of room each */
    ek_tensor_t bx;       /* big, on `dev` */
    float *hx, *hy;       /* big, host */
    ek_mem_t ws_mem;      /* its workspace's memory */
    ek_workspace_t ws;    /* for small stage 0 of main_rt */
    int loads;            /* networks it loaded into main_rt */
    struct chain chain;   /* its callback chains: the callbacks may touch it until they return */
    struct priv_done priv;
};

static uint32_t rnd(struct worker *w)
{
    w->rng = w->rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(w->rng >> 33);
}

static float next_seed(struct worker *w) { return w->seed = (float)(w->index * 100000 + (int)(rnd(w) % 50000)); }

/* ek_rt_run of small on the shared runtime, sometimes profiled, 0 to 2 threads. */
static void step_run(struct worker *w)
{
    int rows = 1 + (int)(rnd(w) % 2);
    float seed = next_seed(w);
    if (!write_small(dev, &w->x, rows, seed))
        return;
    ek_launch_options_t opt;
    memset(&opt, 0, sizeof opt);
    opt.threads = (int)(rnd(w) % 3);
    uint32_t r = rnd(w) % 64;
    if (r < 16) {
        opt.profile = profile;
        atomic_fetch_add(&n_profiled, 1);
    } else if (r == 16) { /* while other launches record into it */
        CHECK_OK(ek_profile_clear(profile));
        atomic_fetch_add(&n_profile_clears, 1);
    }
    if (CHECK_OK(ek_rt_run(main_rt, "small", &w->x, 1, &w->y, 1, &opt)))
        check_small(dev, &w->y, rows, seed, 0, "ek_rt_run");
    atomic_fetch_add(&n_run, 1);
}

/* An async launch of big with a runtime-allocated output, waited for with timeouts of 0 and 1 ms that
 * may expire (EK_ERR_TIMEOUT keeps the handle valid), then until it ends. */
static void step_tensor_wait(struct worker *w)
{
    float seed = next_seed(w);
    for (int i = 0; i < BIG; i++)
        w->hx[i] = big_x(seed, i);
    if (!CHECK_OK(ek_memcpy_s2d(dev, w->bx.mem, w->hx)))
        return;
    ek_launch_options_t opt;
    memset(&opt, 0, sizeof opt);
    opt.threads = 1 + (int)(rnd(w) % 3);
    ek_tensor_t y;
    memset(&y, 0, sizeof y);
    ek_launch_t l;
    if (!CHECK_OK(ek_rt_launch_tensor(main_rt, "big", &w->bx, 1, &y, 1, false, &opt, &l)))
        return;
    atomic_fetch_add(&n_tensor, 1);
    ek_status_t st = ek_launch_wait(l, 0);
    if (st == EK_ERR_TIMEOUT && rnd(w) % 4 == 0) {
        /* ek_dev_sync waits for every launch of the device, the other threads' too, so this one has ended */
        atomic_fetch_add(&n_timeouts, 1);
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        CHECK_OK(ek_dev_sync(dev));
        clock_gettime(CLOCK_MONOTONIC, &b);
        uint64_t ns = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000u + (uint64_t)b.tv_nsec - (uint64_t)a.tv_nsec;
        uint64_t seen = atomic_load(&max_sync_ns);
        while (ns > seen && !atomic_compare_exchange_weak(&max_sync_ns, &seen, ns)) {
        }
        atomic_fetch_add(&n_syncs, 1);
        st = ek_launch_wait(l, 0);
        CHECK_STATUS(st, EK_OK);
    }
    for (int tries = 0; st == EK_ERR_TIMEOUT && tries < 60000; tries++) { /* 1 ms each: a minute at most */
        atomic_fetch_add(&n_timeouts, 1);
        st = ek_launch_wait(l, 1);
    }
    if (st == EK_ERR_TIMEOUT) {
        FAIL("a launch of big did not end within a minute");
        st = ek_launch_wait(l, -1);
    }
    if (CHECK_STATUS(st, EK_OK)) {
        CHECK_STATUS(ek_launch_wait(l, 0), EK_ERR_FREED_HANDLE); /* retired by the wait that ended it */
        if (CHECK_OK(ek_memcpy_d2s(dev, w->hy, y.mem)))
            check_big(w->hx, w->hy, "ek_rt_launch_tensor + ek_launch_wait");
    }
    if (y.mem.id)
        CHECK_OK(ek_free_device(dev, y.mem));
}

/* ek_rt_launch_data of big, 1 to 3 threads. */
static void step_data(struct worker *w)
{
    float seed = next_seed(w);
    for (int i = 0; i < BIG; i++)
        w->hx[i] = big_x(seed, i);
    ek_launch_options_t opt;
    memset(&opt, 0, sizeof opt);
    opt.threads = 1 + (int)(rnd(w) % 3);
    const void *ins[1] = {w->hx};
    void *outs[1] = {w->hy};
    ek_shape_t s, os;
    memset(&s, 0, sizeof s);
    s.num_dims = 1;
    s.dims[0] = BIG;
    size_t cap = BIG * 4;
    if (CHECK_OK(ek_rt_launch_data(main_rt, "big", ins, &s, 1, outs, &cap, &os, 1, &opt)))
        check_big(w->hx, w->hy, "ek_rt_launch_data");
    atomic_fetch_add(&n_data, 1);
}

/* A chain of launches, each relaunched by the previous one's on_done: queued (ek_rt_launch_tensor,
 * handle-less) or run inline on the worker (ek_rt_run from the callback). On the churn runtime a link
 * may find it destroyed, which ends the chain with EK_ERR_FREED_HANDLE. */
static void chain_finish(struct chain *c, ek_status_t end)
{
    pthread_mutex_lock(&c->lock);
    c->end = end;
    c->done = true;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

static void chain_done(void *user, ek_status_t status);

static ek_status_t chain_launch(struct chain *c)
{
    ek_launch_options_t opt;
    memset(&opt, 0, sizeof opt);
    opt.on_done = chain_done;
    opt.user_data = c;
    return ek_rt_launch_tensor(c->rt, "small", &c->x, 1, &c->y, 1, true, &opt, NULL);
}

static void chain_done(void *user, ek_status_t status)
{
    struct chain *c = user;
    for (;;) {
        atomic_fetch_add(&n_chain, 1);
        if (!CHECK_STATUS(status, EK_OK) || !check_small(dev, &c->y, 1, c->seed, 0, "a launch of a callback chain")) {
            chain_finish(c, EK_ERR_INTERNAL);
            return;
        }
        if (c->left-- == 0) {
            chain_finish(c, EK_OK);
            return;
        }
        c->links++;
        c->rng = c->rng * 6364136223846793005ull + 1442695040888963407ull;
        c->seed = (float)(c->rng >> 44);
        if (!write_small(dev, &c->x, 1, c->seed)) {
            chain_finish(c, EK_ERR_INTERNAL);
            return;
        }
        ek_status_t st;
        if (c->rng >> 63) { /* inline: runs here, on this worker */
            st = ek_rt_run(c->rt, "small", &c->x, 1, &c->y, 1, NULL);
            if (st == EK_OK) {
                status = st;
                continue; /* check it and go on from here */
            }
        } else if ((st = chain_launch(c)) == EK_OK) {
            return; /* its callback goes on */
        }
        if (!(c->churn && st == EK_ERR_FREED_HANDLE))
            CHECK_STATUS(st, EK_OK);
        chain_finish(c, st);
        return;
    }
}

static void step_chain(struct worker *w)
{
    struct chain *c = &w->chain;
    pthread_mutex_lock(&c->lock);
    c->done = false;
    pthread_mutex_unlock(&c->lock);
    c->churn = rnd(w) % 3 == 0;
    c->rt = c->churn ? (ek_rt_t){atomic_load(&churn_rt)} : main_rt;
    c->x = w->x;
    c->y = w->y;
    c->left = 2 + (int)(rnd(w) % 5);
    c->links = 0;
    c->rng = w->rng;
    c->seed = next_seed(w);
    c->end = EK_OK;
    if (!write_small(dev, &c->x, 1, c->seed))
        return;
    ek_status_t st = chain_launch(c);
    if (st != EK_OK) {
        if (!(c->churn && st == EK_ERR_FREED_HANDLE))
            CHECK_STATUS(st, EK_OK);
        return;
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 120;
    pthread_mutex_lock(&c->lock);
    while (!c->done && pthread_cond_timedwait(&c->cond, &c->lock, &until) == 0) {
    }
    bool done = c->done;
    ek_status_t end = c->end;
    pthread_mutex_unlock(&c->lock);
    if (!done) {
        FAIL("thread %d: a callback chain did not end within 120 s (a deadlock?)", w->index);
        abort(); /* its callbacks still use the thread's memory */
    }
    CHECK(end == EK_OK || (c->churn && end == EK_ERR_FREED_HANDLE));
}

/* ek_rt_run in the thread's own workspace; now and then the workspace is destroyed and made again. */
static void step_workspace(struct worker *w)
{
    if (remote_mode) {
        step_run(w);
        return;
    }
    if (rnd(w) % 8 == 0) {
        CHECK_OK(ek_workspace_destroy(w->ws));
        CHECK_STATUS(ek_workspace_destroy(w->ws), EK_ERR_DOUBLE_FREE);
        ek_stage_memory_t m;
        if (!CHECK_OK(ek_rt_stage_memory(main_rt, "small", 0, &m)) ||
            !CHECK_OK(ek_rt_workspace_create(main_rt, "small", 0, w->ws_mem, 0, m.workspace_bytes, &w->ws)))
            return;
    }
    float seed = next_seed(w);
    if (!write_small(dev, &w->x, 1, seed))
        return;
    ek_launch_options_t opt;
    memset(&opt, 0, sizeof opt);
    opt.workspace = w->ws;
    if (CHECK_OK(ek_rt_run(main_rt, "small", &w->x, 1, &w->y, 1, &opt)))
        check_small(dev, &w->y, 1, seed, 0, "ek_rt_run in a workspace");
    atomic_fetch_add(&n_workspace, 1);
}

/* Load a network of its own into the shared runtime (up to MAX_LOADS), then run one of them; read the
 * runtime's network list meanwhile. */
static void step_load(struct worker *w)
{
    char name[32];
    if (w->loads < MAX_LOADS) {
        snprintf(name, sizeof name, "t%d_%d", w->index, w->loads);
        size_t size;
        uint8_t *data = build_model(name, w->index * 10 + w->loads, &size);
        REQUIRE(data);
        if (CHECK_OK(ek_rt_load_model_data(main_rt, data, size))) {
            w->loads++;
            CHECK_STATUS(ek_rt_load_model_data(main_rt, data, size), EK_ERR_BUSY); /* the name is taken */
            atomic_fetch_add(&n_loads, 1);
        }
        free(data);
    }
    int count = 0;
    if (CHECK_OK(ek_rt_network_count(main_rt, &count)))
        for (int i = 0; i < count; i++) {
            const char *n = NULL;
            const ek_net_info_t *info = NULL;
            if (CHECK_OK(ek_rt_network_name(main_rt, i, &n)) && CHECK_OK(ek_rt_network_info(main_rt, n, &info)))
                CHECK(strcmp(info->name, n) == 0 && info->input_count == 1 && info->output_count == 1);
        }
    if (w->loads == 0)
        return;
    int k = (int)(rnd(w) % (uint32_t)w->loads);
    snprintf(name, sizeof name, "t%d_%d", w->index, k);
    float seed = next_seed(w), x[8], y[8];
    for (int i = 0; i < 8; i++)
        x[i] = small_x(seed, i);
    const void *ins[1] = {x};
    void *outs[1] = {y};
    ek_shape_t s = ekt_shape2(1, 8), os;
    size_t cap = sizeof y;
    if (CHECK_OK(ek_rt_launch_data(main_rt, name, ins, &s, 1, outs, &cap, &os, 1, NULL)))
        for (int i = 0; i < 8; i++)
            if (y[i] != small_y(seed, i, w->index * 10 + k)) {
                FAIL("network %s: y[%d] = %g, expected %g", name, i, y[i], small_y(seed, i, w->index * 10 + k));
                break;
            }
    atomic_fetch_add(&n_data, 1);
}

/* A private runtime on dev_priv: launches queued on it, then it is destroyed while they may still run;
 * their results and the errors a destroyed runtime gives. */
static void priv_callback(void *user, ek_status_t status)
{
    struct priv_done *p = user;
    if (status != EK_OK)
        atomic_fetch_add(&p->bad, 1);
    /* Its own runtime cannot be destroyed from here: that would wait for this very launch (or it is
     * being destroyed already, by the thread that made it). */
    ek_status_t st = ek_rt_destroy(p->rt);
    if (st != EK_ERR_BUSY && st != EK_ERR_DOUBLE_FREE)
        atomic_fetch_add(&p->bad, 1);
    atomic_fetch_add(&p->calls, 1);
}

/* The shared allocators some private runtimes use: a pool, and callbacks on the device heap that check
 * the runtime calls them one at a time. */
static ek_allocator_t shared_pool, shared_custom;
static atomic_int custom_inside, custom_overlaps;

static ek_status_t custom_alloc(void *user, ek_dev_t d, size_t size, size_t alignment, ek_mem_t *mem, size_t *offset)
{
    (void)user;
    (void)alignment; /* device memory starts 64-byte aligned, the most the runtime asks */
    if (atomic_exchange(&custom_inside, 1))
        atomic_fetch_add(&custom_overlaps, 1);
    *offset = 0;
    ek_status_t st = ek_malloc_device(d, mem, size);
    atomic_store(&custom_inside, 0);
    return st;
}

static void custom_free(void *user, ek_dev_t d, ek_mem_t mem, size_t offset, size_t size)
{
    (void)user;
    (void)offset;
    (void)size;
    if (atomic_exchange(&custom_inside, 1))
        atomic_fetch_add(&custom_overlaps, 1);
    CHECK_OK(ek_free_device(d, mem));
    atomic_store(&custom_inside, 0);
}

static void step_private(struct worker *w)
{
    enum { N = 3 };
    ek_allocator_t own = {0}, alloc = {0}; /* runtime-allocated outputs come from `alloc`, else the heap */
    ek_rt_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.threads = 1 + (int)(rnd(w) % 2);
    switch (remote_mode ? 0 : rnd(w) % 4) {
    case 1:
        if (CHECK_OK(ek_allocator_create_pool(&own, dev_priv, 1 * MIB)))
            alloc = own;
        break;
    case 2:
        alloc = shared_pool;
        break;
    case 3:
        alloc = shared_custom;
        break;
    default:
        break;
    }
    cfg.allocator = alloc;
    ek_rt_t rt;
    if (!CHECK_OK(ek_rt_create_ex(&rt, dev_priv, &cfg))) {
        if (own.id)
            CHECK_OK(ek_allocator_destroy(own));
        return;
    }
    atomic_fetch_add(&n_runtimes, 1);
    ek_tensor_t x[N], y[N];
    ek_launch_t l = {0};
    float seed[N];
    int launched = 0;
    struct priv_done *done = &w->priv;
    done->rt = rt;
    atomic_store(&done->calls, 0);
    atomic_store(&done->bad, 0);
    memset(x, 0, sizeof x);
    memset(y, 0, sizeof y);
    if (CHECK_OK(ek_rt_load_model_data(rt, main_model, main_model_size))) {
        for (; launched < N; launched++) {
            seed[launched] = next_seed(w);
            if (!CHECK_OK(ek_malloc_device(dev_priv, &x[launched].mem, 64)) ||
                !write_small(dev_priv, &x[launched], 2, seed[launched]))
                break;
            ek_launch_options_t opt;
            memset(&opt, 0, sizeof opt);
            opt.on_done = launched ? priv_callback : NULL;
            opt.user_data = done;
            if (!CHECK_OK(ek_rt_launch_tensor(rt, "small", &x[launched], 1, &y[launched], 1, false, &opt,
                                              launched ? NULL : &l))) {
                CHECK_OK(ek_free_device(dev_priv, x[launched].mem));
                break;
            }
            atomic_fetch_add(&n_private, 1);
        }
    }
    CHECK_OK(ek_rt_destroy(rt)); /* waits for the launches */
    CHECK(atomic_load(&done->calls) == (launched > 1 ? launched - 1 : 0));
    CHECK(atomic_load(&done->bad) == 0);
    if (l.id)
        CHECK_OK(ek_launch_wait(l, 0)); /* ended before the destroy returned; its handle outlives the runtime */
    ek_tensor_t px = w->x, py = w->y;
    CHECK_STATUS(ek_rt_run(rt, "small", &px, 1, &py, 1, NULL), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_rt_load_model_data(rt, main_model, main_model_size), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_rt_network_count(rt, &(int){0}), EK_ERR_FREED_HANDLE);
    CHECK_STATUS(ek_rt_destroy(rt), EK_ERR_DOUBLE_FREE);
    if (own.id && launched) {
        ek_allocator_stats_t st;
        if (CHECK_OK(ek_allocator_stats(own, &st)))
            CHECK(st.runtimes == 0 && st.live_blocks == (size_t)launched); /* the outputs */
        CHECK_STATUS(ek_allocator_destroy(own), EK_ERR_BUSY);
    }
    for (int i = 0; i < launched; i++) {
        check_small(dev_priv, &y[i], 2, seed[i], 0, "a launch of a destroyed runtime");
        if (alloc.id)
            CHECK_OK(ek_allocator_free(alloc, y[i].mem, y[i].offset));
        else
            CHECK_OK(ek_free_device(dev_priv, y[i].mem));
        CHECK_OK(ek_free_device(dev_priv, x[i].mem));
    }
    if (own.id)
        CHECK_OK(ek_allocator_destroy(own));
}

/* The churn runtime: launch on it (the right output or EK_ERR_FREED_HANDLE), or replace it. */
static ek_status_t make_churn(ek_rt_t *rt)
{
    ek_status_t st = ek_rt_create(rt, dev);
    if (st != EK_OK)
        return st;
    if ((st = ek_rt_load_model_data(*rt, main_model, main_model_size)) != EK_OK) {
        ek_rt_destroy(*rt);
        return st;
    }
    atomic_fetch_add(&n_runtimes, 1);
    return EK_OK;
}

/* The outcome of a call on the churn runtime; with `w`, its output y checked. */
static void churn_result(ek_status_t st, const struct worker *w, float seed, int rows)
{
    if (st == EK_OK) {
        if (w)
            check_small(dev, &w->y, rows, seed, 0, "a launch on the churn runtime");
        atomic_fetch_add(&n_churn_ok, 1);
    } else if (st == EK_ERR_FREED_HANDLE) {
        atomic_fetch_add(&n_churn_freed, 1);
    } else {
        CHECK_STATUS(st, EK_OK);
    }
}

static void step_churn(struct worker *w)
{
    uint32_t what = rnd(w) % 8;
    if (what == 0) { /* replace it; the old one may be in use by other threads right now */
        ek_rt_t fresh;
        if (!CHECK_OK(make_churn(&fresh)))
            return;
        pthread_mutex_lock(&churn_swap);
        ek_rt_t old = {atomic_exchange(&churn_rt, fresh.id)};
        CHECK_OK(ek_rt_destroy(old)); /* waits for the calls and launches in progress on it */
        atomic_store(&churn_dead, old.id);
        pthread_mutex_unlock(&churn_swap);
        atomic_fetch_add(&n_churn_swaps, 1);
        return;
    }
    if (what == 1) { /* a runtime known destroyed */
        ek_rt_t dead = {atomic_load(&churn_dead)};
        if (dead.id) {
            CHECK_STATUS(ek_rt_destroy(dead), EK_ERR_DOUBLE_FREE);
            CHECK_STATUS(ek_rt_run(dead, "small", &w->x, 1, &w->y, 1, NULL), EK_ERR_FREED_HANDLE);
        }
        return;
    }
    ek_rt_t rt = {atomic_load(&churn_rt)};
    if (what == 2) { /* a network loaded into it, and run, while others launch on it or destroy it */
        long k = atomic_fetch_add(&n_churn_loads, 1);
        char name[32];
        snprintf(name, sizeof name, "c%ld", k);
        int shift = (int)(k % 50);
        size_t size;
        uint8_t *data = build_model(name, shift, &size);
        REQUIRE(data);
        ek_status_t st = ek_rt_load_model_data(rt, data, size);
        free(data);
        if (st != EK_OK) {
            churn_result(st, NULL, 0, 0);
            return;
        }
        float seed = next_seed(w), x[8], y[8];
        for (int i = 0; i < 8; i++)
            x[i] = small_x(seed, i);
        const void *ins[1] = {x};
        void *outs[1] = {y};
        ek_shape_t s = ekt_shape2(1, 8), os;
        size_t cap = sizeof y;
        st = ek_rt_launch_data(rt, name, ins, &s, 1, outs, &cap, &os, 1, NULL);
        for (int i = 0; st == EK_OK && i < 8; i++)
            if (y[i] != small_y(seed, i, shift)) {
                FAIL("network %s: y[%d] = %g, expected %g", name, i, y[i], small_y(seed, i, shift));
                break;
            }
        churn_result(st, NULL, 0, 0);
        return;
    }
    int rows = 1 + (int)(what % 2);
    float seed = next_seed(w);
    if (!write_small(dev, &w->x, rows, seed))
        return;
    if (what < 5) {
        churn_result(ek_rt_run(rt, "small", &w->x, 1, &w->y, 1, NULL), w, seed, rows);
        return;
    }
    /* queued, then waited for: the runtime may be destroyed in between, which waits for the launch */
    ek_launch_t l;
    ek_status_t st = ek_rt_launch_tensor(rt, "small", &w->x, 1, &w->y, 1, true, NULL, &l);
    if (st == EK_OK) {
        while ((st = ek_launch_wait(l, 1)) == EK_ERR_TIMEOUT)
            atomic_fetch_add(&n_timeouts, 1);
        CHECK_STATUS(st, EK_OK);
    }
    churn_result(st, w, seed, rows);
}

static void (*const steps[])(struct worker *) = {step_run, step_tensor_wait, step_data, step_chain,
                                                 step_workspace, step_load, step_private, step_churn};
enum { STEPS = sizeof steps / sizeof steps[0] };

static const char *const step_names[STEPS] = {"run", "tensor+wait", "data", "chain", "workspace", "load",
                                               "private", "churn"};
static atomic_long step_count[STEPS], step_ns[STEPS];

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    long it = 0;
    /* every kind of step once, then at random until the time or the iterations are up */
    for (; it < STEPS || (!past_deadline() && (max_iterations <= 0 || it < max_iterations)); it++) {
        int k = it < STEPS ? (int)((it + w->index) % STEPS) : (int)(rnd(w) % STEPS);
        uint64_t t0 = now_ns();
        steps[k](w);
        atomic_fetch_add(&step_count[k], 1);
        atomic_fetch_add(&step_ns[k], (long)(now_ns() - t0));
    }
    atomic_fetch_add(&n_iterations, it);
    return NULL;
}

static int setup_worker(struct worker *w, int index)
{
    memset(w, 0, sizeof *w);
    w->index = index;
    w->rng = 0x9E3779B97F4A7C15ull * (uint64_t)(index + 1);
    w->hx = malloc(BIG * 4);
    w->hy = malloc(BIG * 4);
    if (!w->hx || !w->hy)
        return 0;
    pthread_mutex_init(&w->chain.lock, NULL);
    pthread_cond_init(&w->chain.cond, NULL);
    w->bx.dtype = EK_DTYPE_FLOAT32;
    w->bx.shape.num_dims = 1;
    w->bx.shape.dims[0] = BIG;
    ek_stage_memory_t m;
    return CHECK_OK(ek_malloc_device(dev, &w->x.mem, 64)) && CHECK_OK(ek_malloc_device(dev, &w->y.mem, 64)) &&
           CHECK_OK(ek_malloc_device(dev, &w->bx.mem, BIG * 4)) &&
           (remote_mode || (CHECK_OK(ek_rt_stage_memory(main_rt, "small", 0, &m)) &&
           CHECK_OK(ek_malloc_device(dev, &w->ws_mem, m.workspace_bytes)) &&
           CHECK_OK(ek_rt_workspace_create(main_rt, "small", 0, w->ws_mem, 0, m.workspace_bytes, &w->ws))));
}

static void teardown_worker(struct worker *w)
{
    if (w->ws.id)
        CHECK_OK(ek_workspace_destroy(w->ws));
    ek_mem_t mems[4] = {w->x.mem, w->y.mem, w->bx.mem, w->ws_mem};
    for (int i = 0; i < 4; i++)
        if (mems[i].id)
            CHECK_OK(ek_free_device(dev, mems[i]));
    free(w->hx);
    free(w->hy);
    pthread_mutex_destroy(&w->chain.lock);
    pthread_cond_destroy(&w->chain.cond);
}

static double seconds_setting(int argc, char **argv)
{
    const char *s = getenv("EKT_SECONDS");
    const char *n = getenv("EKT_ITERATIONS");
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0)
            s = argv[i + 1];
        else if (strcmp(argv[i], "--iterations") == 0)
            n = argv[i + 1];
    }
    max_iterations = n && *n ? atol(n) : 0;
    const char *r = getenv("EKT_REMOTE");
    remote_mode = r && strcmp(r, "1") == 0;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--remote") == 0)
            remote_mode = true;
    return s && *s ? atof(s) : 2.0;
}

static double hammer_seconds;

/* --remote: the server, in a thread of this process. */
static ek_server_t *server;
static pthread_t server_thread;
static ek_status_t server_status;

static void *server_main(void *arg)
{
    (void)arg;
    server_status = ek_server_run(server);
    return NULL;
}

/* Device `id` with `heap` bytes: local, or through the server. */
static ek_status_t open_device(ek_dev_t *d, int id, size_t heap)
{
    if (!remote_mode)
        return ekt_open(d, id, heap, EK_COHERENCE_DEFAULT);
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", ek_server_port(server));
    ek_remote_options_t o;
    memset(&o, 0, sizeof o);
    o.device_config.heap_size = heap;
    ek_status_t st = ek_dev_connect(d, url, id, &o);
    if (st == EK_OK)
        ekt_track(*d);
    return st;
}

static void test_hammer(void)
{
    int devices = 0;
    REQUIRE_OK(ek_dev_count(&devices));
    if (remote_mode) {
        REQUIRE_OK(ek_server_create(&server, NULL));
        REQUIRE(pthread_create(&server_thread, NULL, server_main, NULL) == 0);
    }
    REQUIRE_OK(open_device(&dev, 0, 128 * MIB));
    if (devices > 1)
        REQUIRE_OK(open_device(&dev_priv, devices - 1, 64 * MIB));
    else
        dev_priv = dev;
    ek_heap_stats_t before = STATS(dev), before_priv = STATS(dev_priv);
    REQUIRE((main_model = build_model(NULL, 0, &main_model_size)) != NULL);
    REQUIRE_OK(ek_rt_create(&main_rt, dev));
    REQUIRE_OK(ek_rt_load_model_data(main_rt, main_model, main_model_size));
    REQUIRE_OK(ek_profile_create(&profile));
    if (!remote_mode) {
        REQUIRE_OK(ek_allocator_create_pool(&shared_pool, dev_priv, 8 * MIB));
        const ek_allocator_ops_t ops = {custom_alloc, custom_free};
        REQUIRE_OK(ek_allocator_create(&shared_custom, &ops, NULL));
    }
    ek_rt_t churn;
    REQUIRE_OK(make_churn(&churn));
    atomic_store(&churn_rt, churn.id);
    const char *kernels = "?";
    CHECK_OK(ek_rt_kernels(main_rt, &kernels));

    static struct worker workers[THREADS];
    pthread_t tid[THREADS];
    int ready = 1;
    for (int i = 0; i < THREADS; i++)
        ready = setup_worker(&workers[i], i) && ready;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    deadline = t0;
    deadline.tv_sec += (time_t)hammer_seconds;
    deadline.tv_nsec += (long)((hammer_seconds - (double)(time_t)hammer_seconds) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    if (ready) {
        for (int i = 0; i < THREADS; i++)
            REQUIRE(pthread_create(&tid[i], NULL, worker_main, &workers[i]) == 0);
        for (int i = 0; i < THREADS; i++)
            pthread_join(tid[i], NULL);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    for (int i = 0; i < THREADS; i++)
        teardown_worker(&workers[i]);

    long launches = atomic_load(&n_run) + atomic_load(&n_tensor) + atomic_load(&n_data) + atomic_load(&n_chain) +
                    atomic_load(&n_workspace) + atomic_load(&n_churn_ok) + atomic_load(&n_private);
    printf("    hammer: %d threads, %ld iterations, %ld launches in %.1f s (%s kernels%s)\n", THREADS,
           atomic_load(&n_iterations), launches, took, kernels,
           remote_mode ? ", remote devices" : "");
    printf("    ek_rt_run %ld (%ld profiled), launch_tensor+wait %ld (%ld timeouts), launch_data %ld, "
           "callback chains %ld, workspace runs %ld, private runtimes' %ld, models loaded %ld, runtimes made %ld, "
           "churn runs ok %ld / freed %ld / swaps %ld / loads %ld\n", atomic_load(&n_run), atomic_load(&n_profiled),
           atomic_load(&n_tensor), atomic_load(&n_timeouts), atomic_load(&n_data), atomic_load(&n_chain),
           atomic_load(&n_workspace), atomic_load(&n_private),
           atomic_load(&n_loads), atomic_load(&n_runtimes), atomic_load(&n_churn_ok), atomic_load(&n_churn_freed),
           atomic_load(&n_churn_swaps), atomic_load(&n_churn_loads));
    printf("    mean step times:");
    for (int k = 0; k < STEPS; k++) {
        long count = atomic_load(&step_count[k]);
        printf(" %s %.2f ms%s", step_names[k], (double)atomic_load(&step_ns[k]) / 1e6 / (double)(count ? count : 1),
               k + 1 < STEPS ? "," : "\n");
    }
    printf("    profile clears %ld, ek_dev_sync %ld (the longest %.1f ms)\n", atomic_load(&n_profile_clears),
           atomic_load(&n_syncs), (double)atomic_load(&max_sync_ns) / 1e6);
    CHECK(ready);
    CHECK(atomic_load(&n_iterations) >= THREADS * STEPS);

    size_t records = 0;
    CHECK_OK(ek_profile_count(profile, &records));
    if (atomic_load(&n_profile_clears) == 0)
        CHECK((records > 0) == (atomic_load(&n_profiled) > 0));
    CHECK_OK(ek_profile_destroy(profile));
    CHECK_OK(ek_rt_destroy((ek_rt_t){atomic_load(&churn_rt)}));
    CHECK_OK(ek_rt_destroy(main_rt));
    ek_allocator_stats_t pool_st, custom_st;
    if (!remote_mode && CHECK_OK(ek_allocator_stats(shared_pool, &pool_st)) &&
        CHECK_OK(ek_allocator_stats(shared_custom, &custom_st))) {
        printf("    shared allocators: pool %llu allocations (peak %zu bytes), callbacks %llu\n",
               (unsigned long long)pool_st.allocations, pool_st.peak_bytes, (unsigned long long)custom_st.allocations);
        CHECK(pool_st.live_blocks == 0 && pool_st.runtimes == 0 && pool_st.failures == 0);
        CHECK(custom_st.live_blocks == 0 && custom_st.runtimes == 0 && custom_st.failures == 0);
    }
    CHECK(atomic_load(&custom_overlaps) == 0); /* the runtime called the callbacks one at a time */
    if (!remote_mode) {
        CHECK_OK(ek_allocator_destroy(shared_pool));
        CHECK_OK(ek_allocator_destroy(shared_custom));
    }
    CHECK_OK(ek_dev_sync(dev)); /* no handle-less launch failed */
    CHECK_OK(ek_dev_sync(dev_priv));
    ek_heap_stats_t after = STATS(dev), after_priv = STATS(dev_priv);
    CHECK(after.allocations == before.allocations && after.used == before.used); /* nothing leaked */
    CHECK(after_priv.allocations == before_priv.allocations && after_priv.used == before_priv.used);
    if (dev_priv.id != dev.id)
        CHECK_OK(ekt_close(dev_priv));
    CHECK_OK(ekt_close(dev));
    free(main_model);
    if (remote_mode) {
        ek_server_stop(server);
        pthread_join(server_thread, NULL);
        CHECK_OK(server_status);
        ek_server_destroy(server);
    }
}

int main(int argc, char **argv)
{
    ekt_init();
    hammer_seconds = seconds_setting(argc, argv);
    RUN(test_hammer);
    return ek_test_summary();
}
