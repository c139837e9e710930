/* How many CPUs this process may really use: the calling thread's affinity mask (taskset, a cgroup
 * cpuset, a container's --cpuset-cpus) and, where one is set, the cgroup CPU quota (cgroup v2
 * cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us; a container's --cpus), which caps the CPU time
 * of the whole process whatever its affinity says. The online CPU count says neither, and a team of
 * threads larger than the CPUs it can run on only waits for itself. */
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static pthread_once_t quota_once = PTHREAD_ONCE_INIT;
static int quota_cpus; /* the quota in whole CPUs, rounded up; 0: no quota */

/* CPUs of one quota/period pair, rounded up; 0 for no limit or nonsense. */
static int quota_to_cpus(long long quota, long long period) {
    if (quota <= 0 || period <= 0)
        return 0;
    long long cpus = (quota + period - 1) / period;
    return cpus > INT_MAX ? INT_MAX : (int)cpus;
}

/* Read "max 100000" or "50000 100000" (v2 cpu.max). */
static int read_cpu_max(const char *dir) {
    char path[PATH_MAX + 16], quota[32];
    long long period = 0;
    snprintf(path, sizeof path, "%s/cpu.max", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int fields = fscanf(f, "%31s %lld", quota, &period);
    fclose(f);
    if (fields != 2 || strcmp(quota, "max") == 0)
        return 0;
    return quota_to_cpus(strtoll(quota, NULL, 10), period);
}

static long long read_number(const char *dir, const char *name) {
    char path[PATH_MAX + 32];
    long long value = -1;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    if (fscanf(f, "%lld", &value) != 1)
        value = -1;
    fclose(f);
    return value;
}

static int read_cfs(const char *dir) {
    return quota_to_cpus(read_number(dir, "cpu.cfs_quota_us"), read_number(dir, "cpu.cfs_period_us"));
}

/* The smallest limit from `leaf` (a cgroup folder) up to `mount`, the hierarchy's mount point:
 * a parent's quota binds its children too. */
static int tightest(const char *mount, const char *leaf, int (*read)(const char *dir)) {
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s", leaf) >= (int)sizeof dir)
        return 0;
    size_t floor = strlen(mount);
    int best = 0;
    for (;;) {
        int cpus = read(dir);
        if (cpus > 0 && (best == 0 || cpus < best))
            best = cpus;
        char *slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < floor)
            break;
        *slash = '\0';
    }
    return best;
}

/* The folder of this process's cgroup `path` (from /proc/self/cgroup) under a hierarchy mounted at
 * `mount` whose mount root is `root` (from /proc/self/mountinfo). In a container the cgroup path
 * may lie outside the mounted root: then the mount point itself is the process's cgroup. */
static void cgroup_dir(char *out, size_t size, const char *mount, const char *root, const char *path) {
    size_t n = strlen(root);
    if (strcmp(root, "/") == 0)
        snprintf(out, size, "%s%s", mount, strcmp(path, "/") == 0 ? "" : path);
    else if (strncmp(path, root, n) == 0 && (path[n] == '/' || path[n] == '\0'))
        snprintf(out, size, "%s%s", mount, path + n);
    else
        snprintf(out, size, "%s", mount);
}

/* This process's cgroup path for v2 (`controller` NULL) or for the v1 hierarchy with `controller`. */
static bool own_cgroup(const char *controller, char *path, size_t size) {
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f)
        return false;
    char line[4096];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *controllers = strchr(line, ':');
        char *cgpath = controllers ? strchr(controllers + 1, ':') : NULL;
        if (!cgpath)
            continue;
        *cgpath++ = '\0';
        controllers++;
        if (!controller) {
            found = strcmp(line, "0") == 0 && *controllers == '\0';
        } else {
            for (char *save = NULL, *c = strtok_r(controllers, ",", &save); c; c = strtok_r(NULL, ",", &save))
                found = found || strcmp(c, controller) == 0;
        }
        if (found)
            snprintf(path, size, "%s", cgpath);
    }
    fclose(f);
    return found;
}

static void find_quota(void) {
    FILE *f = fopen("/proc/self/mountinfo", "r");
    if (!f)
        return;
    char line[4096], v2_path[PATH_MAX], v1_path[PATH_MAX];
    bool have_v2 = own_cgroup(NULL, v2_path, sizeof v2_path);
    bool have_v1 = own_cgroup("cpu", v1_path, sizeof v1_path);
    int best = 0;
    while (fgets(line, sizeof line, f)) {
        /* id parent major:minor root mount-point options [optional...] - fstype source super-options */
        char root[PATH_MAX], mount[PATH_MAX], fstype[64], super[1024];
        char *dash = strstr(line, " - ");
        if (!dash || sscanf(line, "%*s %*s %*s %4095s %4095s", root, mount) != 2 ||
            sscanf(dash + 3, "%63s %*s %1023s", fstype, super) != 2)
            continue;
        char dir[PATH_MAX];
        int cpus = 0;
        if (have_v2 && strcmp(fstype, "cgroup2") == 0) {
            cgroup_dir(dir, sizeof dir, mount, root, v2_path);
            cpus = tightest(mount, dir, read_cpu_max);
        } else if (have_v1 && strcmp(fstype, "cgroup") == 0) {
            bool cpu = false;
            for (char *save = NULL, *o = strtok_r(super, ",\n", &save); o; o = strtok_r(NULL, ",\n", &save))
                cpu = cpu || strcmp(o, "cpu") == 0;
            if (!cpu)
                continue;
            cgroup_dir(dir, sizeof dir, mount, root, v1_path);
            cpus = tightest(mount, dir, read_cfs);
        }
        if (cpus > 0 && (best == 0 || cpus < best))
            best = cpus;
    }
    fclose(f);
    quota_cpus = best;
}

/* The cgroup CPU quota of this process in whole CPUs, rounded up (read once); 0 when none is set. */
static int cpu_quota(void) {
    pthread_once(&quota_once, find_quota);
    return quota_cpus;
}

int ek_usable_cpus(uint64_t mask) {
    cpu_set_t set;
    int count;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        count = 0;
        if (mask) {
            for (int i = 0; i < 64 && i < CPU_SETSIZE; i++)
                count += (mask >> i & 1) && CPU_ISSET(i, &set);
        } else {
            count = CPU_COUNT(&set);
        }
    } else { /* more CPUs than a cpu_set_t holds */
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        count = online > INT_MAX ? INT_MAX : (int)online;
    }
    if (count < 1)
        count = 1;
    int quota = cpu_quota();
    return quota > 0 && quota < count ? quota : count;
}

static pthread_once_t process_once = PTHREAD_ONCE_INIT;
static cpu_set_t process_cpus; /* the process's affinity when first asked: what threads are unpinned to */
static bool process_cpus_known;
static uint64_t online_mask;

static void find_process_cpus(void) {
    CPU_ZERO(&process_cpus);
    if (sched_getaffinity(0, sizeof process_cpus, &process_cpus) == 0) {
        process_cpus_known = true;
        for (int i = 0; i < 64 && i < CPU_SETSIZE; i++)
            if (CPU_ISSET(i, &process_cpus))
                online_mask |= (uint64_t)1 << i;
    }
}

uint64_t ek_online_mask(void) {
    pthread_once(&process_once, find_process_cpus);
    return online_mask;
}

void ek_cpu_set_of(uint64_t mask, cpu_set_t *set) {
    pthread_once(&process_once, find_process_cpus);
    if (!mask && process_cpus_known) {
        *set = process_cpus;
        return;
    }
    CPU_ZERO(set);
    for (int i = 0; i < 64 && i < CPU_SETSIZE; i++)
        if (mask >> i & 1)
            CPU_SET(i, set);
}
