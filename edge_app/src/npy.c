/* .npy version 1.0: the magic, a little-endian u16 header length, a Python dict literal padded with
 * spaces and ending in '\n' so the data starts at a multiple of 64 bytes, then the raw data in C order. */
#include "npy.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the .npy descriptors below assume a little-endian target"
#endif

static const char *descr(ek_dtype_t dtype) {
    switch (dtype) {
    case EK_DTYPE_FLOAT32: return "<f4";
    case EK_DTYPE_FLOAT16: return "<f2";
    case EK_DTYPE_INT8: return "|i1";
    case EK_DTYPE_UINT8: return "|u1";
    case EK_DTYPE_INT32: return "<i4";
    case EK_DTYPE_INT64: return "<i8";
    }
    return NULL;
}

int app_npy_write(const char *path, ek_dtype_t dtype, const ek_shape_t *shape, const void *data, size_t nbytes,
                  char *err, size_t errlen) {
    const char *d = descr(dtype);
    if (!d) {
        snprintf(err, errlen, "%s: cannot write dtype %d as .npy", path, (int)dtype);
        return -1;
    }
    char dims[8 * 24] = "";
    size_t used = 0;
    for (int i = 0; i < shape->num_dims; i++)
        used += (size_t)snprintf(dims + used, sizeof dims - used, "%lld,%s", (long long)shape->dims[i],
                                 i + 1 < shape->num_dims ? " " : "");
    if (shape->num_dims > 1)
        dims[used - 1] = '\0'; /* "(2, 3)", but "(2,)" and "()" */
    char header[512];
    int n = snprintf(header, sizeof header, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", d, dims);
    size_t len = (size_t)n;
    size_t total = (10 + len + 1 + 63) / 64 * 64; /* magic(6) version(2) length(2), header, '\n' */
    memset(header + len, ' ', total - 10 - len - 1);
    header[total - 10 - 1] = '\n';
    size_t header_len = total - 10;
    unsigned char preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(header_len & 0xff),
                                  (unsigned char)(header_len >> 8)};
    FILE *f = fopen(path, "wb");
    if (!f) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    int ok = fwrite(preamble, 1, sizeof preamble, f) == sizeof preamble &&
             fwrite(header, 1, header_len, f) == header_len && fwrite(data, 1, nbytes, f) == nbytes;
    int saved = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        saved = errno;
    }
    if (!ok) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(saved));
        return -1;
    }
    return 0;
}

void app_file_name(const char *name, char *buf, size_t size) {
    size_t n = 0;
    for (const char *p = name; *p && n + 1 < size; p++) {
        char c = *p;
        int keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                   c == '_' || c == '-';
        if (n == 0 && c == '.')
            continue;
        buf[n++] = keep ? c : '_';
    }
    buf[n] = '\0';
    if (n == 0)
        snprintf(buf, size, "output");
}
