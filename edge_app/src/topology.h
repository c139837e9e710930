/* The board's CPU clusters, read from sysfs: what --visible_cluster binds threads to. */
#ifndef EDGEKIT_APP_TOPOLOGY_H
#define EDGEKIT_APP_TOPOLOGY_H

#include <sched.h>
#include <stddef.h>

/* A group of CPUs the process may use that share a package, a cluster and a capacity. */
typedef struct app_cluster {
    int first_cpu;    /* clusters are numbered 0.. in the order of their first CPU */
    int cpu_count;
    cpu_set_t cpus;   /* only CPUs the process may use */
    long package;     /* sysfs topology/physical_package_id, -1 when unknown */
    long sysfs_id;    /* sysfs topology/cluster_id, -1 when unknown */
    long capacity;    /* sysfs cpu_capacity (1024 = the fastest core), -1 when unknown */
    long max_khz;     /* sysfs cpufreq/cpuinfo_max_freq, -1 when unknown */
} app_cluster_t;

#define APP_MAX_CLUSTERS 64

typedef struct app_topology {
    int count;
    app_cluster_t clusters[APP_MAX_CLUSTERS];
    char root[512];   /* the sysfs cpu folder read */
    char note[256];   /* how the clusters were found, when sysfs did not say (else "") */
} app_topology_t;

/* The CPUs this process may use: its affinity mask, or EDGEKIT_APP_ALLOWED_CPUS (a cpulist such as
 * "0-3,6", for the tests). Returns 0, or -1 with a message in err. */
int app_allowed_cpus(cpu_set_t *allowed, char *err, size_t errlen);

/* Group the allowed CPUs into clusters from `root` (/sys/devices/system/cpu, or
 * EDGEKIT_APP_SYSFS_CPU for the tests when root is NULL). CPUs whose topology sysfs lacks
 * (containers, qemu-user, old kernels) share one cluster per known value, so reading never fails. */
void app_topology_read(app_topology_t *topo, const char *root, const cpu_set_t *allowed);

/* "0-3,6" for a CPU set, into buf. */
void app_format_cpus(const cpu_set_t *cpus, char *buf, size_t size);

/* Parse a cpulist ("0-3,6"); returns 0, or -1 for a malformed one. */
int app_parse_cpulist(const char *text, cpu_set_t *cpus);

#endif
