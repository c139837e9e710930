/* EdgeKit runtime: status codes and the thread-local error message. */
#ifndef EDGEKIT_STATUS_H
#define EDGEKIT_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define EK_API __attribute__((visibility("default")))
#else
#define EK_API
#endif

/* Every fallible call returns one of these. On anything but EK_OK the calling thread's
 * ek_last_error() says what was wrong, naming the argument, the handle or the range. */
typedef enum ek_status {
    EK_OK = 0,
    EK_ERR_INVALID_ARG = 1,    /* a NULL pointer, a zero size, an unknown enum value */
    EK_ERR_INVALID_HANDLE = 2, /* a handle that was never issued, or of the wrong kind */
    EK_ERR_FREED_HANDLE = 3,   /* a handle whose object was freed: use after free */
    EK_ERR_DOUBLE_FREE = 4,    /* freeing a handle that was already freed */
    EK_ERR_OUT_OF_MEMORY = 5,  /* the device heap (or the host) has no block that large */
    EK_ERR_OUT_OF_RANGE = 6,   /* offset/length past the end of a memory */
    EK_ERR_DEVICE_MISMATCH = 7,/* a memory used with a handle of another device */
    EK_ERR_NO_DEVICE = 8,      /* device id outside 0 .. ek_dev_count()-1 */
    EK_ERR_NOT_MAPPED = 9,     /* unmap of a memory that is not mapped */
    EK_ERR_BUSY = 10,          /* the object is in a state that forbids the call */
    EK_ERR_SYSTEM = 11,        /* an operating-system call failed (errno text in the message) */
    EK_ERR_UNSUPPORTED = 12,   /* not available in this build or on this system */
    EK_ERR_TIMEOUT = 13,       /* a wait ran out of time */
    EK_ERR_MODEL_INVALID = 14, /* a model file or buffer failed validation */
    EK_ERR_INTERNAL = 15,      /* a broken invariant inside the runtime: please report it */
    EK_ERR_CONNECTION = 16,    /* a remote device's connection failed, was lost or broke the protocol */
    EK_ERR_VERSION = 17        /* the two ends of a remote connection speak different protocol versions */
} ek_status_t;

#define EK_STATUS_COUNT 18

/* The enum name of a status ("EK_ERR_OUT_OF_RANGE"); "EK_ERR_UNKNOWN" for other values. */
EK_API const char *ek_status_name(ek_status_t status);
/* A short English description of a status. */
EK_API const char *ek_status_str(ek_status_t status);
/* The message of the last failed call on this thread ("" if none failed yet). The text stays
 * valid until the next failing call on the same thread. */
EK_API const char *ek_last_error(void);
/* The runtime's version, "MAJOR.MINOR.PATCH". */
EK_API const char *ek_version(void);

#ifdef __cplusplus
}
#endif
#endif /* EDGEKIT_STATUS_H */
