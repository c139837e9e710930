/* libFuzzer target: the ELF check a plugin library passes before dlopen (ek_plugin_check_elf,
 * src/plugin.c): the input is the file's bytes (all of them, as the check reads a small library). It must accept only a shared library of this machine
 * whose program headers and segments lie inside the file, refuse anything else with a message, and
 * never read outside the input. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "plugin_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (ek_plugin_check_elf(data, size, size, "fuzz.so") != EK_OK && ek_last_error()[0] == '\0') {
        fprintf(stderr, "a refused plugin without a message\n");
        abort();
    }
    return 0;
}
