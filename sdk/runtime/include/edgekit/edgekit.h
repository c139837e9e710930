/* EdgeKit runtime: the one header to include. */
#ifndef EDGEKIT_EDGEKIT_H
#define EDGEKIT_EDGEKIT_H

#include "edgekit/status.h"
#include "edgekit/device.h"
#include "edgekit/memory.h"
#include "edgekit/runtime.h"
#include "edgekit/remote.h"

#endif /* EDGEKIT_EDGEKIT_H */
