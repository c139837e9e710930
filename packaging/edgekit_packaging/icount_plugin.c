/*
 * icount: a qemu TCG plugin that counts the guest instructions a program executes, for the emulated
 * board's instruction-count benchmark (edgekit_packaging.icount builds and loads it).
 *
 *   qemu-aarch64 -plugin icount.so,outfile=/path/to/counts program ...
 *
 * At exit it appends one line "<pid> <instructions>" to outfile (O_APPEND, one write: several
 * processes may share the file, e.g. a program and the children it starts), so the file's sum is the
 * whole process tree's count: a forked child starts from zero (its parent's count so far is the
 * parent's), and an execve writes the count so far first (the new program's qemu starts a new count;
 * under proot each exec'd guest program runs in a fresh qemu). Any other argument, or none, makes
 * qemu refuse the plugin with a message saying why.
 *
 * Marks: a guest that calls lseek(-1, ICOUNT_MARK, 0) (a harmless EBADF; from Python
 * os.lseek(-1, 0x4943504D41524B, 0)) makes the plugin append "<pid> mark <count so far>" at once, so a
 * program can count a region of its own (e.g. N inferences, without its start-up): the difference of
 * two marks.
 *
 * Counting: every translated block gets an execution callback whose user data is its instruction
 * count. Guest threads are separate vCPUs in user mode and run in parallel (MTTCG), so each vCPU adds
 * into its own cache-line slot; a vCPU index is only ever held by one live thread, and a vCPU beyond
 * the slots adds atomically into a shared overflow counter. The total is summed at exit.
 *
 * Debian's qemu 7.2 ships no qemu-plugin.h: the few functions and types used here are declared below,
 * as documented for plugin API version 1 (qemu 4.2 to 8.2; see docs/devel/tcg-plugins.rst).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* ---- the plugin API of qemu 7.2 (version 1), declared here --------------------------------------- */

#define ICOUNT_EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;

typedef struct qemu_info_t {
    const char *target_name;
    struct {
        int min;
        int cur;
    } version;
    bool system_emulation;
    union {
        struct {
            int smp_vcpus;
            int max_vcpus;
        } system;
    };
} qemu_info_t;

struct qemu_plugin_tb;

enum qemu_plugin_cb_flags {
    QEMU_PLUGIN_CB_NO_REGS,
    QEMU_PLUGIN_CB_R_REGS,
    QEMU_PLUGIN_CB_RW_REGS,
};

typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                                              uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4,
                                              uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);
void qemu_plugin_outs(const char *string);

/* The API version this plugin was written against: qemu refuses a plugin outside its [min, cur]. */
ICOUNT_EXPORT int qemu_plugin_version = 1;

ICOUNT_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv);

/* ---- counting ------------------------------------------------------------------------------------- */

#define SLOTS 512 /* vCPUs (guest threads alive at once) with a slot of their own */

struct slot {
    uint64_t count;
    char pad[64 - sizeof(uint64_t)];
};

static struct slot slots[SLOTS];
static uint64_t overflow; /* vCPUs at index >= SLOTS, added atomically */
static char outfile[4096];

static void on_block(unsigned int vcpu_index, void *userdata)
{
    uint64_t n = (uint64_t)(uintptr_t)userdata;
    if (vcpu_index < SLOTS) {
        /* Relaxed load + store, not a locked add: only the thread holding this vCPU index writes it. */
        uint64_t *count = &slots[vcpu_index].count;
        __atomic_store_n(count, __atomic_load_n(count, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
    } else {
        __atomic_fetch_add(&overflow, n, __ATOMIC_RELAXED);
    }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)n);
}

/* The count so far, all vCPUs. */
static uint64_t peek_total(void)
{
    uint64_t total = __atomic_load_n(&overflow, __ATOMIC_SEQ_CST);
    for (size_t i = 0; i < SLOTS; i++) {
        total += __atomic_load_n(&slots[i].count, __ATOMIC_SEQ_CST);
    }
    return total;
}

/* The count so far, and zero it (a fork's child, after an exec's flush). */
static uint64_t take_total(void)
{
    uint64_t total = __atomic_exchange_n(&overflow, 0, __ATOMIC_SEQ_CST);
    for (size_t i = 0; i < SLOTS; i++) {
        total += __atomic_exchange_n(&slots[i].count, 0, __ATOMIC_SEQ_CST);
    }
    return total;
}

static void write_line(const char *what, uint64_t total)
{
    char line[80];
    int len = snprintf(line, sizeof line, "%ld %s%" PRIu64 "\n", (long)getpid(), what, total);
    int fd = open(outfile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, line, (size_t)len) != (ssize_t)len) {
        char message[4200];
        snprintf(message, sizeof message, "icount: cannot write the count to %s: %s\n", outfile,
                 strerror(errno));
        qemu_plugin_outs(message);
    }
    if (fd >= 0) {
        close(fd);
    }
}

static void write_total(void)
{
    write_line("", take_total());
}

static void on_exit_(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    write_total();
}

#define AARCH64_SYS_LSEEK 62
#define AARCH64_SYS_EXECVE 221
#define ICOUNT_MARK 0x4943504D41524BULL /* "ICPMARK" */

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    (void)id, (void)vcpu_index, (void)a4, (void)a5, (void)a6, (void)a7, (void)a8;
    if (num == AARCH64_SYS_EXECVE) {
        write_total(); /* a failed exec goes on counting from zero: the sum stays right */
    } else if (num == AARCH64_SYS_LSEEK && (int32_t)a1 == -1 && a2 == ICOUNT_MARK && a3 == 0) {
        write_line("mark ", peek_total());
    }
}

static void forked_child(void)
{
    (void)take_total();
}

static int refuse(const char *why, const char *what)
{
    char message[4200];
    snprintf(message, sizeof message,
             "icount plugin: %s%s (usage: -plugin icount.so,outfile=PATH: the count is appended to "
             "PATH as a line '<pid> <instructions>' per process)\n",
             why, what);
    /* qemu_plugin_outs goes to qemu's log, which is off by default: say it on stderr too. */
    qemu_plugin_outs(message);
    fputs(message, stderr);
    return -1;
}

int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    if (info->target_name == NULL || strcmp(info->target_name, "aarch64") != 0) {
        /* execve's number is aarch64's */
        return refuse("only the aarch64 target is supported, not ", info->target_name ? info->target_name : "?");
    }
    outfile[0] = '\0';
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "outfile=", 8) == 0) {
            const char *path = arg + 8;
            if (path[0] == '\0') {
                return refuse("empty outfile= path", "");
            }
            if (strlen(path) >= sizeof outfile) {
                return refuse("outfile= path too long: ", path);
            }
            strcpy(outfile, path);
        } else {
            return refuse("unknown argument ", arg);
        }
    }
    if (outfile[0] == '\0') {
        return refuse("no outfile= argument", "");
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, on_exit_, NULL);
    if (pthread_atfork(NULL, NULL, forked_child) != 0) {
        return refuse("pthread_atfork failed", "");
    }
    return 0;
}
