/* edgekit-app's flags, in the style of MagicMind's sample_runtime: `--flag value [value ...]` (the values
 * run to the next argument that starts with "--") or `--flag=value`; '-' and '_' are the same in names. */
#include "options.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char app_help_text[] =
    "usage: edgekit-app --model_path MODEL.ekm [flags]\n"
    "\n"
    "Runs a network of an EdgeKit model (.ekm, from `edgekit compile`) on one or more devices, with one or\n"
    "more threads per device, each with its own request (inputs and outputs in device memory), and prints\n"
    "per device and thread: iterations, latency p50/p90/p99 and throughput, then the total throughput.\n"
    "Flags take their values after them (--flag V1 V2 ...) or as --flag=V; '-' and '_' mean the same.\n"
    "\n"
    "  --model_path PATH         the .ekm file (required)\n"
    "                              edgekit-app --model_path mobilenetv2.ekm\n"
    "  --network NAME            the network to run (default: the model's first)\n"
    "                              --network detector\n"
    "  --data_path F1 F2 ...     raw binary input files, one per input in input order, each exactly the\n"
    "                            input's elements in its dtype (C order, little-endian), e.g. written by\n"
    "                            numpy's x.astype(np.float32).tofile('x.bin'); default: random data\n"
    "                            (uniform in [-1, 1) for floats, the type's range for integers; seed 0)\n"
    "                              --data_path image.bin\n"
    "  --input_dims D1 D2 ...    one shape per input, dims separated by commas; picks the network's stage\n"
    "                            (default: its first stage)\n"
    "                              --input_dims 4,3,224,224\n"
    "  --dev_ids 0 1 ...         the devices to run on, one runtime each (default: 0); EDGEKIT_DEVICES\n"
    "                            sets how many devices there are\n"
    "                              EDGEKIT_DEVICES=2 edgekit-app --model_path m.ekm --dev_ids 0 1\n"
    "  --threads N               threads per device (default 1), each with its own request, inferring\n"
    "                            concurrently (a device's runtime runs 2 launches at once; more queue)\n"
    "                              --threads 2\n"
    "  --visible_cluster C1 ...  bind thread i of every device to CPU cluster Ci (one per thread; see\n"
    "                            --list-clusters): the thread and its launches' threads run on that\n"
    "                            cluster's CPUs only\n"
    "                              --threads 2 --visible_cluster 1 2\n"
    "  --launch_threads N        threads one inference uses (the runtime's intra-op team; default: the\n"
    "                            CPUs a thread may use shared among the threads that use them: a bound\n"
    "                            thread gets its cluster's CPUs divided by the threads bound there, an\n"
    "                            unbound one this process's CPUs divided by all threads, at least 1)\n"
    "                              --launch_threads 4\n"
    "  --iterations N            timed inferences per thread (default 10)\n"
    "                              --iterations 100\n"
    "  --warmup N                untimed inferences per thread first (default 2)\n"
    "                              --warmup 0\n"
    "  --kernels K               auto (XNNPACK where it loads, else portable), portable or xnnpack\n"
    "                            (default: EDGEKIT_KERNELS, else auto)\n"
    "                              --kernels portable\n"
    "  --output_dir DIR          write the outputs of the first thread of the first device, after its last\n"
    "                            iteration, as DIR/<output name>.npy (made if missing; numpy.load reads them)\n"
    "                              --output_dir out/\n"
    "  --profile 0|1|True|False  write a profile of each thread's timed iterations (not the warm-up) to\n"
    "                            ./sample_profiler/dev<D>_thread<T>/ in the working directory (D the device\n"
    "                            id, T the thread): trace.json (open it in https://ui.perfetto.dev or\n"
    "                            chrome://tracing) and summary.csv (the ops by time); default 0. Plot one\n"
    "                            on the host: edgekit profile --plot sample_profiler/dev0_thread0\n"
    "                              --profile 1\n"
    "  --dump 0|1|True|False     dump each thread's first launch (an extra, untimed one before the warm-up)\n"
    "                            to ./sample_dump/dev<D>_thread<T>/: the inputs and every op's output as\n"
    "                            .npy, in the ONNX layout, with manifest.json; default 0. Compare one with\n"
    "                            ONNX on the host: edgekit dump -o sample_dump/dev0_thread0 --compare m.onnx\n"
    "                              --dump 1\n"
    "  --rpc_server HOST:PORT    run on a board's devices through its remote_server (docs/remote-protocol.md)\n"
    "                            while this program runs here: the model file, --data_path, --output_dir,\n"
    "                            --profile and --dump stay on this machine. The server listens on the\n"
    "                            board's loopback: forward it first (ssh -tt -L 9090:127.0.0.1:9090\n"
    "                            root@board sleep infinity), or give the emulated board's port (invoke\n"
    "                            serve --device emu)\n"
    "                              --rpc_server 127.0.0.1:9090\n"
    "  --rpc_key FILE            the key file of a paired remote_server (one listening on a network\n"
    "                            address with --key): the session proves it and is encrypted\n"
    "                              --rpc_server board:9090 --rpc_key board.key\n"
    "  --plugin_libs A.so,B.so   plugin op libraries (docs/plugins.md) to load into each device's runtime\n"
    "                            before the model, for its plugin ops; built for this machine (commas or\n"
    "                            several values; not with --rpc_server: a server never loads client code)\n"
    "                              --plugin_libs /opt/edgekit/current/python/edgekit/plugins/libedgekit_example_plugin.so\n"
    "  --mem_stg static|dynamic  where the runtime's device memory comes from (docs/memory.md): static, a\n"
    "                            workspace per thread sized by the network (ek_rt_stage_memory) and\n"
    "                            allocated before the first launch, so launches allocate nothing; dynamic,\n"
    "                            every allocation of the runtime through this program's allocator\n"
    "                            (ek_allocator_create), counted; default: the device heap. The report says\n"
    "                            what the timed iterations allocated. Not with --rpc_server\n"
    "                              --mem_stg static\n"
    "  --io device|host          where each launch's inputs and outputs are: device, the thread's device\n"
    "                            memory, written once (ek_rt_run: launch and wait); host, host buffers\n"
    "                            copied in and out by every launch (ek_rt_launch_data), as a program\n"
    "                            with its data in its own arrays does; default device. Not with\n"
    "                            --mem_stg static\n"
    "                              --io host\n"
    "  --output_caps B1 B2 ...   the bytes of device memory each output gets, one per output in output\n"
    "                            order (default: its largest size). For outputs whose size depends on the\n"
    "                            data (NonMaxSuppression's, ...; edgekit info marks them dynamic): a launch\n"
    "                            producing more than fits fails, saying how many bytes it needs; other\n"
    "                            outputs need at least their size\n"
    "                              --output_caps 4800\n"
    "  --list-clusters           print the CPU clusters (from /sys/devices/system/cpu: package, cluster\n"
    "                            and cpu_capacity, so big.LITTLE cores are apart) and exit\n"
    "  --help                    this text\n"
    "\n"
    "Example: two devices, two threads each, the threads on clusters 0 and 1, outputs kept:\n"
    "  EDGEKIT_DEVICES=2 edgekit-app --model_path model.ekm --data_path x.bin --input_dims 1,3,224,224 \\\n"
    "      --dev_ids 0 1 --threads 2 --visible_cluster 0 1 --iterations 50 --output_dir out/\n"
    "Profile and dump it too (./sample_profiler/dev0_thread0 ... dev1_thread1, ./sample_dump/...):\n"
    "  EDGEKIT_DEVICES=2 edgekit-app --model_path model.ekm --dev_ids 0 1 --threads 2 --profile 1 --dump 1\n"
    "\n"
    "Exit status: 0 done, 1 the runtime failed (its message is printed), 2 bad flags or input.\n";

enum kind { SINGLE, MULTI, SWITCH };

static const struct flag {
    const char *name;
    enum kind kind;
} flags[] = {
    {"model_path", SINGLE},    {"network", SINGLE},     {"data_path", MULTI},      {"input_dims", MULTI},
    {"dev_ids", MULTI},        {"threads", SINGLE},     {"visible_cluster", MULTI}, {"launch_threads", SINGLE},
    {"iterations", SINGLE},    {"warmup", SINGLE},      {"kernels", SINGLE},       {"output_dir", SINGLE},
    {"profile", SINGLE},       {"dump", SINGLE},        {"list_clusters", SWITCH}, {"help", SWITCH},
    {"rpc_server", SINGLE},    {"rpc_key", SINGLE},     {"plugin_libs", MULTI},    {"mem_stg", SINGLE},
    {"output_caps", MULTI},    {"io", SINGLE},
};
#define FLAG_COUNT ((int)(sizeof flags / sizeof flags[0]))

static int parse_int(const char *text, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_dims(const char *text, ek_shape_t *shape) {
    memset(shape, 0, sizeof *shape);
    const char *p = text;
    for (;;) {
        if (shape->num_dims == EK_MAX_DIMS)
            return -1;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (errno || end == p || v < 0 || *p == '-' || *p == '+' || *p == ' ')
            return -1;
        shape->dims[shape->num_dims++] = (int64_t)v;
        if (*end == '\0')
            return 0;
        if (*end != ',')
            return -1;
        p = end + 1;
    }
}

/* sample_runtime's booleans: 0, 1, true, false (any case). */
static int parse_bool(const char *text, bool *out) {
    if (strcmp(text, "1") == 0 || strcasecmp(text, "true") == 0)
        *out = true;
    else if (strcmp(text, "0") == 0 || strcasecmp(text, "false") == 0)
        *out = false;
    else
        return -1;
    return 0;
}

void app_free_options(app_options_t *opts) {
    for (int i = 0; i < opts->plugin_list_count; i++)
        free(opts->plugin_lists[i]);
    opts->plugin_list_count = 0;
    opts->plugin_count = 0;
}

int app_parse_options(int argc, char **argv, app_options_t *opts, char *err, size_t errlen) {
    memset(opts, 0, sizeof *opts);
    opts->threads = 1;
    opts->iterations = 10;
    opts->warmup = 2;
    opts->kernels = EK_KERNELS_DEFAULT;
    bool seen[FLAG_COUNT] = {false};

    int i = 1;
    while (i < argc) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0) {
            opts->help = true;
            i++;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument '%s': values follow their flag (see --help)", arg);
            return -1;
        }
        char name[64];
        const char *eq = strchr(arg + 2, '=');
        size_t len = eq ? (size_t)(eq - (arg + 2)) : strlen(arg + 2);
        if (len == 0 || len >= sizeof name) {
            snprintf(err, errlen, "unknown flag %s (see edgekit-app --help)", arg);
            return -1;
        }
        for (size_t k = 0; k < len; k++)
            name[k] = arg[2 + k] == '-' ? '_' : arg[2 + k];
        name[len] = '\0';
        int f = -1;
        for (int k = 0; k < FLAG_COUNT; k++)
            if (strcmp(flags[k].name, name) == 0)
                f = k;
        if (f < 0) {
            snprintf(err, errlen, "unknown flag --%.*s (see edgekit-app --help)", (int)len, arg + 2);
            return -1;
        }
        if (seen[f]) {
            snprintf(err, errlen, "--%s is given twice", flags[f].name);
            return -1;
        }
        seen[f] = true;
        /* The values: "=V", else the arguments up to the next flag. */
        const char *values[APP_MAX_VALUES] = {NULL};
        int count = 0;
        i++;
        if (eq) {
            values[count++] = eq + 1;
        } else {
            while (i < argc && strncmp(argv[i], "--", 2) != 0) {
                if (count == APP_MAX_VALUES) {
                    snprintf(err, errlen, "--%s takes at most %d values", flags[f].name, APP_MAX_VALUES);
                    return -1;
                }
                values[count++] = argv[i++];
            }
        }
        if (flags[f].kind == SWITCH && count > 0) {
            snprintf(err, errlen, "--%s takes no value, got '%s'", flags[f].name, values[0]);
            return -1;
        }
        if (flags[f].kind != SWITCH && count == 0) {
            snprintf(err, errlen, "--%s needs a value (see edgekit-app --help)", flags[f].name);
            return -1;
        }
        if (flags[f].kind == SINGLE && count > 1) {
            snprintf(err, errlen, "--%s takes one value, got %d (%s %s ...)", flags[f].name, count, values[0],
                     values[1]);
            return -1;
        }
        const char *v = count ? values[0] : "";
        long n = 0;
        if (strcmp(name, "model_path") == 0) {
            opts->model_path = v;
        } else if (strcmp(name, "network") == 0) {
            opts->network = v;
        } else if (strcmp(name, "rpc_server") == 0) {
            const char *colon = strrchr(v, ':');
            if (strncmp(v, "tcp://", 6) == 0)
                v += 6;
            if (!colon || colon == v || parse_int(colon + 1, 1, 65535, &n) != 0 || strchr(v, '/')) {
                snprintf(err, errlen, "--rpc_server '%s': expected HOST:PORT, e.g. 127.0.0.1:9090", v);
                return -1;
            }
            opts->rpc_server = v;
        } else if (strcmp(name, "plugin_libs") == 0) {
            for (int k = 0; k < count; k++) {
                char *list = strdup(values[k]); /* split in place below: argv stays as given */
                if (!list) {
                    snprintf(err, errlen, "out of memory");
                    return -1;
                }
                opts->plugin_lists[opts->plugin_list_count++] = list;
                for (char *save = NULL, *path = strtok_r(list, ",", &save); path; path = strtok_r(NULL, ",", &save)) {
                    if (opts->plugin_count == APP_MAX_PLUGINS) {
                        snprintf(err, errlen, "--plugin_libs: more than %d libraries", APP_MAX_PLUGINS);
                        return -1;
                    }
                    opts->plugin_libs[opts->plugin_count++] = path;
                }
            }
            if (opts->plugin_count == 0) {
                snprintf(err, errlen, "--plugin_libs needs a library path (see edgekit-app --help)");
                return -1;
            }
        } else if (strcmp(name, "output_caps") == 0) {
            for (int k = 0; k < count; k++) {
                char *end;
                errno = 0;
                unsigned long long bytes = strtoull(values[k], &end, 10);
                if (errno || end == values[k] || *end || values[k][0] == '-' || bytes > (unsigned long long)SIZE_MAX) {
                    snprintf(err, errlen, "--output_caps: '%s' is not a number of bytes", values[k]);
                    return -1;
                }
                opts->output_caps[k] = (size_t)bytes;
            }
            opts->caps_count = count;
        } else if (strcmp(name, "mem_stg") == 0) {
            if (strcmp(v, "static") == 0)
                opts->mem_stg = APP_MEM_STATIC;
            else if (strcmp(v, "dynamic") == 0)
                opts->mem_stg = APP_MEM_DYNAMIC;
            else {
                snprintf(err, errlen, "--mem_stg: '%s' is not one of static, dynamic", v);
                return -1;
            }
        } else if (strcmp(name, "io") == 0) {
            if (strcmp(v, "host") == 0 || strcmp(v, "device") == 0) {
                opts->io_host = strcmp(v, "host") == 0;
            } else {
                snprintf(err, errlen, "--io: '%s' is not one of device, host", v);
                return -1;
            }
        } else if (strcmp(name, "rpc_key") == 0) {
            opts->rpc_key = v;
        } else if (strcmp(name, "output_dir") == 0) {
            opts->output_dir = v;
        } else if (strcmp(name, "data_path") == 0) {
            for (int k = 0; k < count; k++)
                opts->data_paths[k] = values[k];
            opts->data_count = count;
        } else if (strcmp(name, "input_dims") == 0) {
            for (int k = 0; k < count; k++)
                if (parse_dims(values[k], &opts->input_dims[k]) != 0) {
                    snprintf(err, errlen,
                             "--input_dims: '%s' is not a shape: up to %d non-negative dims separated by commas, "
                             "e.g. 1,3,224,224",
                             values[k], EK_MAX_DIMS);
                    return -1;
                }
            opts->dims_count = count;
        } else if (strcmp(name, "dev_ids") == 0) {
            for (int k = 0; k < count; k++) {
                if (parse_int(values[k], 0, INT_MAX, &n) != 0) {
                    snprintf(err, errlen, "--dev_ids: '%s' is not a device id (0, 1, ...)", values[k]);
                    return -1;
                }
                for (int j = 0; j < k; j++)
                    if (opts->dev_ids[j] == (int)n) {
                        snprintf(err, errlen, "--dev_ids: device %ld is given twice", n);
                        return -1;
                    }
                opts->dev_ids[k] = (int)n;
            }
            opts->dev_count = count;
        } else if (strcmp(name, "visible_cluster") == 0) {
            for (int k = 0; k < count; k++) {
                if (parse_int(values[k], 0, INT_MAX, &n) != 0) {
                    snprintf(err, errlen, "--visible_cluster: '%s' is not a cluster id (see --list-clusters)",
                             values[k]);
                    return -1;
                }
                opts->clusters[k] = (int)n;
            }
            opts->cluster_count = count;
        } else if (strcmp(name, "threads") == 0) {
            if (parse_int(v, 1, APP_MAX_VALUES, &n) != 0) {
                snprintf(err, errlen, "--threads: '%s' is not a thread count from 1 to %d", v, APP_MAX_VALUES);
                return -1;
            }
            opts->threads = (int)n;
        } else if (strcmp(name, "launch_threads") == 0) {
            if (parse_int(v, 1, 64, &n) != 0) {
                snprintf(err, errlen, "--launch_threads: '%s' is not a thread count from 1 to 64", v);
                return -1;
            }
            opts->launch_threads = (int)n;
        } else if (strcmp(name, "iterations") == 0) {
            if (parse_int(v, 1, INT_MAX, &n) != 0) {
                snprintf(err, errlen, "--iterations: '%s' is not a count of at least 1", v);
                return -1;
            }
            opts->iterations = (int)n;
        } else if (strcmp(name, "warmup") == 0) {
            if (parse_int(v, 0, INT_MAX, &n) != 0) {
                snprintf(err, errlen, "--warmup: '%s' is not a count of at least 0", v);
                return -1;
            }
            opts->warmup = (int)n;
        } else if (strcmp(name, "kernels") == 0) {
            if (strcmp(v, "auto") == 0)
                opts->kernels = EK_KERNELS_AUTO;
            else if (strcmp(v, "portable") == 0)
                opts->kernels = EK_KERNELS_PORTABLE;
            else if (strcmp(v, "xnnpack") == 0)
                opts->kernels = EK_KERNELS_XNNPACK;
            else {
                snprintf(err, errlen, "--kernels: '%s' is not one of auto, portable, xnnpack", v);
                return -1;
            }
            opts->kernels_name = v;
        } else if (strcmp(name, "profile") == 0 || strcmp(name, "dump") == 0) {
            if (parse_bool(v, name[0] == 'p' ? &opts->profile : &opts->dump) != 0) {
                snprintf(err, errlen, "--%s: '%s' is not one of 0, 1, True, False", name, v);
                return -1;
            }
        } else if (strcmp(name, "list_clusters") == 0) {
            opts->list_clusters = true;
        } else if (strcmp(name, "help") == 0) {
            opts->help = true;
        }
    }
    return 0;
}
