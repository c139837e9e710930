/* The pthreadpool API on the launch's team (threadpool.c): what the XNNPACK provider calls. */
#ifndef EDGEKIT_XNNPACK_THREADPOOL_H
#define EDGEKIT_XNNPACK_THREADPOOL_H

#include <stdbool.h>

#include "kernel.h"

/* XNNPACK calls made by this thread until ekx_threadpool_leave() run on `team`. */
void ekx_threadpool_enter(const struct ek_parallel *team);
void ekx_threadpool_leave(void);
/* True when XNNPACK's pthreadpool calls reach threadpool.c: run_op() runs one small XNNPACK op
 * (with a NULL pool) and returns whether it succeeded. */
bool ekx_threadpool_probe(bool (*run_op)(void));

#endif
