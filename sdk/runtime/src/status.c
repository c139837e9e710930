/* Status names and the thread-local last-error message. */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

#ifndef EK_VERSION_STRING
#define EK_VERSION_STRING "0.0.0"
#endif

static const struct {
    const char *name;
    const char *text;
} status_table[EK_STATUS_COUNT] = {
    {"EK_OK", "success"},
    {"EK_ERR_INVALID_ARG", "invalid argument"},
    {"EK_ERR_INVALID_HANDLE", "invalid handle"},
    {"EK_ERR_FREED_HANDLE", "handle used after it was freed"},
    {"EK_ERR_DOUBLE_FREE", "handle freed twice"},
    {"EK_ERR_OUT_OF_MEMORY", "out of memory"},
    {"EK_ERR_OUT_OF_RANGE", "offset or length out of range"},
    {"EK_ERR_DEVICE_MISMATCH", "memory belongs to another device"},
    {"EK_ERR_NO_DEVICE", "no such device"},
    {"EK_ERR_NOT_MAPPED", "memory is not mapped"},
    {"EK_ERR_BUSY", "object is busy"},
    {"EK_ERR_SYSTEM", "operating-system call failed"},
    {"EK_ERR_UNSUPPORTED", "not supported"},
    {"EK_ERR_TIMEOUT", "timed out"},
    {"EK_ERR_MODEL_INVALID", "invalid model"},
    {"EK_ERR_INTERNAL", "internal error"},
    {"EK_ERR_CONNECTION", "remote connection failed"},
    {"EK_ERR_VERSION", "remote protocol version mismatch"},
};

static _Thread_local char last_error[512];

const char *ek_status_name(ek_status_t status) {
    unsigned index = (unsigned)status;
    return index < EK_STATUS_COUNT ? status_table[index].name : "EK_ERR_UNKNOWN";
}

const char *ek_status_str(ek_status_t status) {
    unsigned index = (unsigned)status;
    return index < EK_STATUS_COUNT ? status_table[index].text : "unknown status code";
}

const char *ek_last_error(void) { return last_error; }

const char *ek_version(void) { return EK_VERSION_STRING; }

ek_status_t ek_fail(ek_status_t status, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, args);
    va_end(args);
    return status;
}
