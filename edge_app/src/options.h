/* edgekit-app's command line. */
#ifndef EDGEKIT_APP_OPTIONS_H
#define EDGEKIT_APP_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>

#include <edgekit/runtime.h>

#define APP_MAX_VALUES 64 /* values of one flag: inputs, devices, threads, clusters */
#define APP_MAX_PLUGINS 16 /* --plugin_libs */

/* --mem_stg: where the runtime's device memory comes from (docs/memory.md, "Inference memory"). */
typedef enum app_mem_stg {
    APP_MEM_DEFAULT = 0, /* the device heap */
    APP_MEM_STATIC,      /* a workspace per thread, allocated before the launches */
    APP_MEM_DYNAMIC      /* through the app's allocator (counted) */
} app_mem_stg_t;

typedef struct app_options {
    const char *model_path;
    const char *data_paths[APP_MAX_VALUES];
    int data_count;
    ek_shape_t input_dims[APP_MAX_VALUES];
    int dims_count;
    int dev_ids[APP_MAX_VALUES];
    int dev_count;         /* 0: device 0 */
    int threads;           /* per device */
    int clusters[APP_MAX_VALUES];
    int cluster_count;     /* 0: no binding */
    int launch_threads;    /* 0: automatic */
    int iterations;
    int warmup;
    ek_kernels_t kernels;
    const char *kernels_name;
    const char *network;   /* NULL: the first */
    const char *output_dir;
    bool profile;          /* --profile: profiles of the timed iterations in ./sample_profiler */
    bool dump;             /* --dump: each thread's first launch dumped to ./sample_dump */
    const char *rpc_server; /* --rpc_server HOST:PORT: the devices are a board's remote_server's; NULL: local */
    const char *rpc_key;    /* --rpc_key FILE: the paired server's key */
    const char *plugin_libs[APP_MAX_PLUGINS]; /* --plugin_libs: loaded into each runtime before the model */
    int plugin_count;
    char *plugin_lists[APP_MAX_VALUES]; /* copies of the --plugin_libs values that plugin_libs point into */
    int plugin_list_count;
    app_mem_stg_t mem_stg;
    bool io_host;          /* --io host: launches on host buffers (ek_rt_launch_data); else device memory (ek_rt_run) */
    size_t output_caps[APP_MAX_VALUES]; /* --output_caps: bytes per output, in output order */
    int caps_count;
    bool list_clusters;
    bool help;
} app_options_t;

/* Parse argv into opts (defaults first). Returns 0, or -1 with a one-line message in err. */
int app_parse_options(int argc, char **argv, app_options_t *opts, char *err, size_t errlen);

/* Free what app_parse_options allocated (also after it failed). */
void app_free_options(app_options_t *opts);

/* The --help text. */
extern const char app_help_text[];

#endif
