/* CPU clusters from /sys/devices/system/cpu/cpuN/{topology/physical_package_id, topology/cluster_id,
 * cpu_capacity, cpufreq/cpuinfo_max_freq}. Two CPUs are in one cluster when all three of package,
 * cluster id and capacity agree, so a big.LITTLE SoC splits by capacity even where the kernel reports
 * no cluster ids (arm64 before Linux 5.16 put every core in one package, DynamIQ SoCs such as RK3588
 * may put big and LITTLE cores in one cluster). A value sysfs lacks is "unknown" and matches only
 * "unknown", so without any topology files (containers, qemu-user seeing a host's sysfs) the allowed
 * CPUs are one cluster. */
#include "topology.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long read_long(const char *root, int cpu, const char *file) {
    char path[768];
    snprintf(path, sizeof path, "%s/cpu%d/%s", root, cpu, file);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[64];
    long value = -1;
    if (fgets(line, sizeof line, f)) {
        char *end;
        errno = 0;
        long v = strtol(line, &end, 10);
        if (errno == 0 && end != line && (*end == '\n' || *end == '\0'))
            value = v;
    }
    fclose(f);
    /* Kernels without the information report -1 or the u16 -1 (65535) for cluster_id. */
    if (value < 0 || value == 65535)
        return -1;
    return value;
}

int app_parse_cpulist(const char *text, cpu_set_t *cpus) {
    CPU_ZERO(cpus);
    const char *p = text;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0' || *p == '\n')
        return -1;
    for (;;) {
        char *end;
        errno = 0;
        long lo = strtol(p, &end, 10), hi = lo;
        if (errno || end == p || lo < 0)
            return -1;
        p = end;
        if (*p == '-') {
            p++;
            hi = strtol(p, &end, 10);
            if (errno || end == p || hi < lo)
                return -1;
            p = end;
        }
        if (hi >= CPU_SETSIZE)
            return -1;
        for (long c = lo; c <= hi; c++)
            CPU_SET((int)c, cpus);
        if (*p == ',') {
            p++;
            continue;
        }
        return (*p == '\0' || *p == '\n') ? 0 : -1;
    }
}

void app_format_cpus(const cpu_set_t *cpus, char *buf, size_t size) {
    size_t used = 0;
    buf[0] = '\0';
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (!CPU_ISSET(c, cpus))
            continue;
        int last = c;
        while (last + 1 < CPU_SETSIZE && CPU_ISSET(last + 1, cpus))
            last++;
        int n = last == c ? snprintf(buf + used, size - used, "%s%d", used ? "," : "", c)
                          : snprintf(buf + used, size - used, "%s%d-%d", used ? "," : "", c, last);
        if (n < 0 || (size_t)n >= size - used)
            return; /* truncated: what fits */
        used += (size_t)n;
        c = last;
    }
}

int app_allowed_cpus(cpu_set_t *allowed, char *err, size_t errlen) {
    const char *fake = getenv("EDGEKIT_APP_ALLOWED_CPUS");
    if (fake && *fake) {
        if (app_parse_cpulist(fake, allowed) != 0) {
            snprintf(err, errlen, "EDGEKIT_APP_ALLOWED_CPUS=%s is not a CPU list such as 0-3,6", fake);
            return -1;
        }
        return 0;
    }
    CPU_ZERO(allowed);
    if (sched_getaffinity(0, sizeof *allowed, allowed) != 0) {
        snprintf(err, errlen, "cannot read this process's CPU affinity: %s", strerror(errno));
        return -1;
    }
    return 0;
}

void app_topology_read(app_topology_t *topo, const char *root, const cpu_set_t *allowed) {
    memset(topo, 0, sizeof *topo);
    if (!root) {
        root = getenv("EDGEKIT_APP_SYSFS_CPU");
        if (!root || !*root)
            root = "/sys/devices/system/cpu";
    }
    snprintf(topo->root, sizeof topo->root, "%s", root);
    int known = 0, total = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, allowed))
            continue;
        total++;
        long package = read_long(root, cpu, "topology/physical_package_id");
        long cluster = read_long(root, cpu, "topology/cluster_id");
        long capacity = read_long(root, cpu, "cpu_capacity");
        if (package >= 0 || cluster >= 0 || capacity >= 0)
            known++;
        app_cluster_t *c = NULL;
        for (int i = 0; i < topo->count; i++) {
            app_cluster_t *k = &topo->clusters[i];
            if (k->package == package && k->sysfs_id == cluster && k->capacity == capacity) {
                c = k;
                break;
            }
        }
        if (!c) {
            /* More distinct clusters than any SoC has: the rest join the last one. */
            if (topo->count == APP_MAX_CLUSTERS) {
                c = &topo->clusters[APP_MAX_CLUSTERS - 1];
            } else {
                c = &topo->clusters[topo->count++];
                c->first_cpu = cpu;
                CPU_ZERO(&c->cpus);
                c->package = package;
                c->sysfs_id = cluster;
                c->capacity = capacity;
                c->max_khz = read_long(root, cpu, "cpufreq/cpuinfo_max_freq");
            }
        }
        CPU_SET(cpu, &c->cpus);
        c->cpu_count++;
    }
    if (total > 0 && known == 0)
        snprintf(topo->note, sizeof topo->note,
                 "%s has no CPU topology for the CPUs this process may use: they are one cluster", root);
    else if (known < total)
        snprintf(topo->note, sizeof topo->note,
                 "%s lacks the topology of %d of the %d CPUs: those are grouped by what is known", root,
                 total - known, total);
}
