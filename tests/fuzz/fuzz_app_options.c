/* libFuzzer target: edgekit-app's command line (edge_app/src/options.c) and its CPU-list parser
 * (topology.c, --clusters' sysfs lists). The input is argv, its words separated by NUL bytes; the same
 * bytes are also parsed as a CPU list. A bad command line must be refused with a message, never read
 * out of bounds or overflow a number. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "options.h"
#include "topology.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    char **argv = malloc((size + 2) * sizeof *argv);
    if (!text || !argv) {
        free(text);
        free(argv);
        return 0;
    }
    memcpy(text, data, size);
    text[size] = '\0';
    int argc = 0;
    argv[argc++] = (char *)"edgekit-app";
    for (size_t at = 0; at < size; at += strlen(text + at) + 1)
        argv[argc++] = text + at;
    argv[argc] = NULL;
    app_options_t opts;
    char err[1024] = "";
    if (app_parse_options(argc, argv, &opts, err, sizeof err) != 0 && err[0] == '\0') {
        fprintf(stderr, "a refused command line without a message\n");
        abort();
    }
    app_free_options(&opts);
    cpu_set_t cpus;
    app_parse_cpulist(text, &cpus);
    free(argv);
    free(text);
    return 0;
}
