/* Links libedgekit, prints its version and device count; exits non-zero if a call fails. */
#include <stdio.h>

#include <edgekit/edgekit.h>

int main(void) {
    const char *version = ek_version();
    if (version == NULL) {
        fprintf(stderr, "ek_version() returned NULL\n");
        return 1;
    }
    printf("edgekit version: %s\n", version);
    fflush(stdout); /* keep the order of stdout and stderr lines when both go to one pipe */

    int count = -1;
    ek_status_t status = ek_dev_count(&count);
    if (status != EK_OK) {
        fprintf(stderr, "ek_dev_count failed: status %d: %s\n", (int)status, ek_last_error());
        return 1;
    }
    printf("edgekit devices: %d\n", count);
    return 0;
}
