/* A tiny test harness for the EdgeKit C tests: CHECK/CHECK_STATUS record a failure and go on,
 * REQUIRE/REQUIRE_OK record it and return from the test function. RUN(fn) runs one test and
 * ek_test_summary() prints "N passed, M failed" and gives main's exit code.
 * Failures are counted atomically, so checks may run on any thread. */
#ifndef EK_TEST_H
#define EK_TEST_H

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "edgekit/edgekit.h"

static atomic_int ekt_check_failures;
static int ekt_passed;
static int ekt_failed;
static int ekt_skipped;
static const char *ekt_skip_reason;
static void (*ekt_after_each)(void); /* optional clean-up run after every test */

static inline void ekt_report_failure(const char *file, int line, const char *what)
{
    printf("%s:%d: %s\n    last error: \"%s\"\n", file, line, what, ek_last_error());
    fflush(stdout);
    atomic_fetch_add(&ekt_check_failures, 1);
}

static inline int ekt_check_status(const char *file, int line, const char *call, ek_status_t got,
                                   ek_status_t want)
{
    char what[512];
    if (got == want)
        return 1;
    snprintf(what, sizeof what, "%s returned %s (%d), expected %s", call, ek_status_name(got), (int)got,
             ek_status_name(want));
    ekt_report_failure(file, line, what);
    return 0;
}

#define CHECK(cond)                                                                                    \
    do {                                                                                               \
        if (!(cond))                                                                                   \
            ekt_report_failure(__FILE__, __LINE__, "CHECK(" #cond ") failed");                         \
    } while (0)

#define REQUIRE(cond)                                                                                  \
    do {                                                                                               \
        if (!(cond)) {                                                                                 \
            ekt_report_failure(__FILE__, __LINE__, "REQUIRE(" #cond ") failed");                       \
            return;                                                                                    \
        }                                                                                              \
    } while (0)

/* Evaluates to 1 when the call returned `expected`, so it can guard follow-up checks. */
#define CHECK_STATUS(call, expected) ekt_check_status(__FILE__, __LINE__, #call, (call), (expected))
#define CHECK_OK(call) CHECK_STATUS(call, EK_OK)
#define REQUIRE_OK(call)                                                                               \
    do {                                                                                               \
        if (!ekt_check_status(__FILE__, __LINE__, #call, (call), EK_OK))                               \
            return;                                                                                    \
    } while (0)

/* The last error message is non-empty and contains `needle`. */
#define CHECK_ERROR_MENTIONS(needle)                                                                   \
    do {                                                                                               \
        const char *msg_ = ek_last_error();                                                            \
        if (msg_ == NULL || msg_[0] == '\0' || strstr(msg_, (needle)) == NULL)                         \
            ekt_report_failure(__FILE__, __LINE__, "ek_last_error() does not mention \"" needle "\""); \
    } while (0)

#define SKIP(reason)                                                                                   \
    do {                                                                                               \
        ekt_skip_reason = (reason);                                                                    \
        return;                                                                                        \
    } while (0)

static inline void ekt_run(const char *name, void (*fn)(void))
{
    int before = atomic_load(&ekt_check_failures);
    ekt_skip_reason = NULL;
    printf("RUN  %s\n", name);
    fflush(stdout);
    fn();
    if (ekt_after_each)
        ekt_after_each();
    int failures = atomic_load(&ekt_check_failures) - before;
    if (failures) {
        ekt_failed++;
        printf("FAIL %s (%d failed checks)\n", name, failures);
    } else if (ekt_skip_reason) {
        ekt_skipped++;
        printf("SKIP %s: %s\n", name, ekt_skip_reason);
    } else {
        ekt_passed++;
        printf("PASS %s\n", name);
    }
    fflush(stdout);
}

#define RUN(fn) ekt_run(#fn, fn)

static inline int ek_test_summary(void)
{
    if (ekt_skipped)
        printf("(%d skipped)\n", ekt_skipped);
    printf("%d passed, %d failed\n", ekt_passed, ekt_failed);
    fflush(stdout);
    return ekt_failed != 0;
}

#endif /* EK_TEST_H */
