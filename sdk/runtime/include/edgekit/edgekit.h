/* EdgeKit runtime: the one header to include.
 *
 * Compatibility: before 1.0 the public structs (ek_rt_config_t, ek_launch_options_t, ek_io_info_t, ...)
 * grow fields between releases and carry no size, so build a program against the headers of the
 * libedgekit it runs with (the edge app, the Python modules and remote_server are built with theirs).
 * Zero-initialise them ({0} or designated initialisers) so new fields take their defaults. The plugin
 * ABI (edgekit/plugin.h) is the versioned exception. */
#ifndef EDGEKIT_EDGEKIT_H
#define EDGEKIT_EDGEKIT_H

#include "edgekit/status.h"
#include "edgekit/device.h"
#include "edgekit/memory.h"
#include "edgekit/runtime.h"
#include "edgekit/remote.h"

#endif /* EDGEKIT_EDGEKIT_H */
