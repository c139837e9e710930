/* Writing arrays as .npy files (NumPy format version 1.0), readable by numpy.load. */
#ifndef EDGEKIT_APP_NPY_H
#define EDGEKIT_APP_NPY_H

#include <stddef.h>

#include <edgekit/runtime.h>

/* Write `nbytes` of `data` (dtype, shape) to `path`. Returns 0, or -1 with a message in err. */
int app_npy_write(const char *path, ek_dtype_t dtype, const ek_shape_t *shape, const void *data, size_t nbytes,
                  char *err, size_t errlen);

/* An output name as a file name, as `edgekit run` makes it: characters other than letters, digits,
 * '.', '_' and '-' become '_', leading dots go; "output" when nothing is left. */
void app_file_name(const char *name, char *buf, size_t size);

#endif
