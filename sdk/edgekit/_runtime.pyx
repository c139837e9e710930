# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""edgekit._runtime: the low-level layer of models and inference (edgekit/runtime.h).

Runtime mirrors ek_rt_*; Request is one reusable launch slot of a network: its tensors (device
memory the Pythonic layer, edgekit.inference, allocates and binds), one launch in flight at a time,
and its completion.

Completion: the runtime calls a C on_done on its worker thread. That function only records the
status and signals (a condition variable, and for requests with a Python callback a queue): the
worker never takes the GIL, so no Python state can deadlock or stall it. Waits block on the condition
variable without the GIL; callbacks run on one dispatcher thread per Runtime, started on first use.
"""
cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

from edgekit.libedgekit cimport *

import sys
import threading

import numpy as np
import traceback

from edgekit.errors import (
    BusyError, FreedHandleError, InvalidArgumentError, InvalidTypeError, ModelInvalidError, error_for_status,
)

from edgekit._core import Device as _Device


cdef extern from *:
    """
    #include <errno.h>
    #include <pthread.h>
    #include <stdint.h>
    #include <stdlib.h>
    #include <time.h>

    #include "edgekit/edgekit.h"

    /* Completion of one request's launches. on_done touches nothing else of the request. */
    typedef struct ekpy_state {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        int running;   /* queued, and on_done has not run yet */
        int notify;    /* on_done also queues (this state, seq) for the dispatcher */
        uint64_t seq;  /* the launch's number, so a queued entry names its launch, not the request's next one */
        ek_status_t status;
        struct ekpy_queue *queue;
    } ekpy_state_t;

    typedef struct ekpy_done {
        size_t token; /* the state's address */
        uint64_t seq;
    } ekpy_done_t;

    /* Finished launches whose requests have a Python callback, oldest first: a ring that launches
     * reserve a slot in (on the Python side), so on_done never allocates and never fails. */
    typedef struct ekpy_queue {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        ekpy_done_t *items;
        size_t capacity, head, count;
        size_t reserved; /* slots of launches not yet popped: count <= reserved <= capacity */
        int closed;
    } ekpy_queue_t;

    /* Timed waits use CLOCK_MONOTONIC, so a change of the wall clock does not stretch them. */
    static int ekpy_cond_init(pthread_cond_t *cond) {
        pthread_condattr_t attr;
        int rc = pthread_condattr_init(&attr);
        if (rc != 0)
            return rc;
        rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        if (rc == 0)
            rc = pthread_cond_init(cond, &attr);
        pthread_condattr_destroy(&attr);
        return rc;
    }

    static void ekpy_deadline(struct timespec *ts, int timeout_ms) {
        clock_gettime(CLOCK_MONOTONIC, ts);
        ts->tv_sec += timeout_ms / 1000;
        ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (ts->tv_nsec >= 1000000000L) {
            ts->tv_sec += 1;
            ts->tv_nsec -= 1000000000L;
        }
    }

    static ekpy_queue_t *ekpy_queue_new(void) {
        ekpy_queue_t *q = (ekpy_queue_t *)calloc(1, sizeof *q);
        if (q == NULL)
            return NULL;
        if (pthread_mutex_init(&q->lock, NULL) != 0) {
            free(q);
            return NULL;
        }
        if (ekpy_cond_init(&q->cond) != 0) {
            pthread_mutex_destroy(&q->lock);
            free(q);
            return NULL;
        }
        return q;
    }

    static void ekpy_queue_free(ekpy_queue_t *q) {
        if (q == NULL)
            return;
        pthread_cond_destroy(&q->cond);
        pthread_mutex_destroy(&q->lock);
        free(q->items);
        free(q);
    }

    /* A slot for one more notifying launch; -1 when out of memory. */
    static int ekpy_queue_reserve(ekpy_queue_t *q) {
        int rc = 0;
        pthread_mutex_lock(&q->lock);
        if (q->reserved == q->capacity) {
            size_t capacity = q->capacity ? 2 * q->capacity : 16, i;
            ekpy_done_t *items = NULL;
            if (capacity <= ((size_t)-1) / sizeof *items)
                items = (ekpy_done_t *)malloc(capacity * sizeof *items);
            if (items == NULL) {
                rc = -1;
            } else {
                for (i = 0; i < q->count; i++)
                    items[i] = q->items[(q->head + i) % q->capacity];
                free(q->items);
                q->items = items;
                q->capacity = capacity;
                q->head = 0;
            }
        }
        if (rc == 0)
            q->reserved++;
        pthread_mutex_unlock(&q->lock);
        return rc;
    }

    /* The launch that reserved a slot was refused: nothing will fill it. */
    static void ekpy_queue_unreserve(ekpy_queue_t *q) {
        pthread_mutex_lock(&q->lock);
        q->reserved--;
        pthread_mutex_unlock(&q->lock);
    }

    static void ekpy_queue_close(ekpy_queue_t *q) {
        pthread_mutex_lock(&q->lock);
        q->closed = 1;
        pthread_cond_broadcast(&q->cond);
        pthread_mutex_unlock(&q->lock);
    }

    /* The oldest finished launch into *done, waiting up to timeout_ms (< 0: forever): 1, or 0 on
     * timeout, or once the queue is closed and empty. */
    static int ekpy_queue_pop(ekpy_queue_t *q, int timeout_ms, ekpy_done_t *done) {
        struct timespec deadline;
        int rc = 0, got = 0;
        if (timeout_ms >= 0)
            ekpy_deadline(&deadline, timeout_ms);
        pthread_mutex_lock(&q->lock);
        while (q->count == 0 && !q->closed && rc != ETIMEDOUT)
            rc = timeout_ms < 0 ? pthread_cond_wait(&q->cond, &q->lock)
                                : pthread_cond_timedwait(&q->cond, &q->lock, &deadline);
        if (q->count > 0) {
            *done = q->items[q->head];
            q->head = (q->head + 1) % q->capacity;
            q->count--;
            q->reserved--;
            got = 1;
        }
        pthread_mutex_unlock(&q->lock);
        return got;
    }

    static ekpy_state_t *ekpy_state_new(ekpy_queue_t *queue) {
        ekpy_state_t *s = (ekpy_state_t *)calloc(1, sizeof *s);
        if (s == NULL)
            return NULL;
        if (pthread_mutex_init(&s->lock, NULL) != 0) {
            free(s);
            return NULL;
        }
        if (ekpy_cond_init(&s->cond) != 0) {
            pthread_mutex_destroy(&s->lock);
            free(s);
            return NULL;
        }
        s->queue = queue;
        return s;
    }

    static void ekpy_state_free(ekpy_state_t *s) {
        if (s == NULL)
            return;
        pthread_cond_destroy(&s->cond);
        pthread_mutex_destroy(&s->lock);
        free(s);
    }

    static void ekpy_state_begin(ekpy_state_t *s, int notify, uint64_t seq) {
        pthread_mutex_lock(&s->lock);
        s->running = 1;
        s->notify = notify;
        s->seq = seq;
        s->status = EK_OK;
        pthread_mutex_unlock(&s->lock);
    }

    /* The launch was refused: nothing will call on_done. */
    static void ekpy_state_abort(ekpy_state_t *s) {
        pthread_mutex_lock(&s->lock);
        s->running = 0;
        pthread_mutex_unlock(&s->lock);
    }

    /* ek_launch_options_t.on_done, on a runtime worker thread: record and signal, nothing else.
     * After the unlock the state is not touched again, so a waiter may free it. */
    static void ekpy_on_done(void *user_data, ek_status_t status) {
        ekpy_state_t *s = (ekpy_state_t *)user_data;
        pthread_mutex_lock(&s->lock);
        s->running = 0;
        s->status = status;
        if (s->notify && s->queue != NULL) {
            ekpy_queue_t *q = s->queue;
            pthread_mutex_lock(&q->lock);
            q->items[(q->head + q->count) % q->capacity].token = (size_t)s;
            q->items[(q->head + q->count) % q->capacity].seq = s->seq;
            q->count++; /* the launch reserved this slot */
            pthread_cond_signal(&q->cond);
            pthread_mutex_unlock(&q->lock);
        }
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
    }

    /* 1 once the launch has finished (on_done ran), 0 if still running after timeout_ms (< 0: forever). */
    static int ekpy_state_wait(ekpy_state_t *s, int timeout_ms) {
        struct timespec deadline;
        int rc = 0, done;
        if (timeout_ms >= 0)
            ekpy_deadline(&deadline, timeout_ms);
        pthread_mutex_lock(&s->lock);
        while (s->running && rc != ETIMEDOUT)
            rc = timeout_ms < 0 ? pthread_cond_wait(&s->cond, &s->lock)
                                : pthread_cond_timedwait(&s->cond, &s->lock, &deadline);
        done = !s->running;
        pthread_mutex_unlock(&s->lock);
        return done;
    }
    """
    ctypedef struct ekpy_queue_t:
        pass
    ctypedef struct ekpy_state_t:
        pass
    ctypedef struct ekpy_done_t:
        size_t token
        uint64_t seq
    ekpy_queue_t *ekpy_queue_new() nogil
    void ekpy_queue_free(ekpy_queue_t *q) nogil
    int ekpy_queue_reserve(ekpy_queue_t *q) nogil
    void ekpy_queue_unreserve(ekpy_queue_t *q) nogil
    void ekpy_queue_close(ekpy_queue_t *q) nogil
    int ekpy_queue_pop(ekpy_queue_t *q, int timeout_ms, ekpy_done_t *done) nogil
    ekpy_state_t *ekpy_state_new(ekpy_queue_t *queue) nogil
    void ekpy_state_free(ekpy_state_t *s) nogil
    void ekpy_state_begin(ekpy_state_t *s, int notify, uint64_t seq) nogil
    void ekpy_state_abort(ekpy_state_t *s) nogil
    void ekpy_on_done(void *user_data, ek_status_t status) noexcept nogil
    int ekpy_state_wait(ekpy_state_t *s, int timeout_ms) nogil


cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1


KERNELS = {"default": EK_KERNELS_DEFAULT, "auto": EK_KERNELS_AUTO, "portable": EK_KERNELS_PORTABLE,
           "xnnpack": EK_KERNELS_XNNPACK}
DTYPE_NAMES = {EK_DTYPE_FLOAT32: "float32", EK_DTYPE_FLOAT16: "float16", EK_DTYPE_INT8: "int8",
               EK_DTYPE_UINT8: "uint8", EK_DTYPE_INT32: "int32", EK_DTYPE_INT64: "int64"}
MAX_DIMS = EK_MAX_DIMS

# Long waits run in slices of this many ms, checking for signals (Ctrl-C) in between.
cdef int WAIT_SLICE_MS = 100


cdef inline int check(ek_status_t status) except -1:
    if status != EK_OK:
        raise error_for_status(<int>status, ek_last_error().decode("utf-8", "replace"))
    return 0


cdef inline str text(const char *s):
    return s.decode("utf-8", "replace") if s != NULL else ""


cdef tuple shape_tuple(const ek_shape_t *shape):
    cdef int i
    return tuple([shape.dims[i] for i in range(shape.num_dims)])


cdef bytes fs_path(path):
    """A str or bytes path as the bytes the C calls take (file-system encoding, as os.fsencode)."""
    if isinstance(path, str):
        return path.encode(sys.getfilesystemencoding(), "surrogateescape")
    if isinstance(path, bytes):
        return path
    raise InvalidTypeError(f"path must be str or bytes, got {type(path).__name__}")


cdef size_t shape_nbytes(const ek_tensor_t *t) noexcept:
    cdef size_t n = ek_dtype_size(t.dtype)
    cdef int d
    for d in range(t.shape.num_dims):
        n *= <size_t>t.shape.dims[d]
    return n


cdef tuple io_tuple(const ek_io_info_t *io):
    return (text(io.name), <int>io.dtype, io.scale, io.zero_point, io.max_bytes, bool(io.dynamic))


cdef int wait_state(ekpy_state_t *state, int timeout_ms) except -1:
    """Wait for on_done without the GIL, in slices so Ctrl-C interrupts; 1: done, 0: timed out."""
    cdef int done = 0, slice_ms
    while True:
        slice_ms = WAIT_SLICE_MS if timeout_ms < 0 or timeout_ms > WAIT_SLICE_MS else timeout_ms
        with nogil:
            done = ekpy_state_wait(state, slice_ms)
        if done:
            return 1
        if timeout_ms >= 0:
            timeout_ms -= slice_ms
            if timeout_ms <= 0:
                return 0
        PyErr_CheckSignals()


def kernels_code(kernels) -> int:
    """The ek_kernels_t of a kernels name (None: the default, EDGEKIT_KERNELS or auto)."""
    if kernels is None:
        return EK_KERNELS_DEFAULT
    if not isinstance(kernels, str) or kernels not in KERNELS:
        raise InvalidArgumentError(f"kernels must be one of {sorted(KERNELS)} or None, got {kernels!r}")
    return KERNELS[kernels]


cdef class _DoneQueue:
    """The C queue on_done fills for requests with a callback, and those requests (kept alive while
    their launch is in flight) by token. Shared by a Runtime and its dispatcher thread."""
    cdef ekpy_queue_t *q
    cdef readonly dict inflight

    def __cinit__(self):
        self.q = ekpy_queue_new()
        if self.q == NULL:
            raise MemoryError("cannot create the launch completion queue")
        self.inflight = {}

    def __dealloc__(self):
        ekpy_queue_free(self.q)

    def close(self) -> None:
        ekpy_queue_close(self.q)

    def next(self):
        """(token, seq) of the next finished launch; None once closed and empty."""
        cdef ekpy_done_t done
        cdef int got
        with nogil:
            got = ekpy_queue_pop(self.q, -1, &done)
        if not got:
            return None
        return (done.token, done.seq)


def _dispatch(_DoneQueue queue) -> None:
    """The dispatcher thread: run the callbacks of finished launches, one at a time, in order."""
    while True:
        key = queue.next()
        if key is None:
            return
        entry = queue.inflight.pop(key, None)
        if entry is not None:
            request, fn = entry
            try:
                (<Request>request)._finished(key[1], fn)
            except BaseException:  # the thread must go on: later callbacks wait on it
                traceback.print_exc()


cdef class Runtime:
    """A runtime (ek_rt_t) on an open edgekit Device: loaded networks, launches."""
    cdef ek_rt_t _rt
    cdef bint _open
    cdef readonly object device
    cdef _DoneQueue _queue
    cdef object _dispatcher
    cdef object _lock
    cdef readonly Allocator allocator  # kept alive while the runtime is: the C runtime calls it

    def __cinit__(self, device, kernels=None, threads=None, allocator=None):
        cdef ek_rt_config_t config
        cdef ek_dev_t dev
        if not isinstance(device, _Device):
            raise InvalidTypeError(f"device must be an edgekit.Device, got {type(device).__name__}")
        if allocator is not None and not isinstance(allocator, Allocator):
            raise InvalidTypeError(f"allocator must be an edgekit.Allocator (or PoolAllocator) or None, got "
                                   f"{type(allocator).__name__}")
        memset(&config, 0, sizeof(config))
        if allocator is not None:
            config.allocator = (<Allocator>allocator)._a
        config.kernels = <ek_kernels_t><int>kernels_code(kernels)
        config.threads = 0
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int):
                raise InvalidTypeError(f"threads must be an int or None, got {type(threads).__name__} {threads!r}")
            if threads < 1 or threads > 1024:
                raise InvalidArgumentError(f"threads must be in 1..1024 (or None for the default), got {threads}")
            config.threads = threads
        dev.id = device.handle
        if device.closed:  # closed by the caller, though views may keep the handle open in C for now
            raise FreedHandleError(f"device handle 0x{dev.id:016x} was freed (use after free)")
        check(ek_rt_create_ex(&self._rt, dev, &config))
        self.allocator = allocator
        self._open = True
        self.device = device
        self._queue = _DoneQueue()
        self._lock = threading.Lock()

    def __dealloc__(self):
        if self._open:
            with nogil:
                ek_rt_destroy(self._rt)
        if self._queue is not None:
            self._queue.close()  # the dispatcher thread, if any, drains and ends

    @property
    def handle(self) -> int:
        return self._rt.id

    @property
    def closed(self) -> bool:
        return not self._open

    def close(self) -> None:
        """Wait for the launches, free the models, end the dispatcher thread."""
        cdef ek_status_t status = EK_OK
        if self._open:
            self._open = False
            with nogil:
                status = ek_rt_destroy(self._rt)
        self._queue.close()
        dispatcher = self._dispatcher
        if dispatcher is not None and dispatcher is not threading.current_thread():
            dispatcher.join()
        check(status)

    @property
    def kernels(self) -> str:
        cdef const char *name = NULL
        check(ek_rt_kernels(self._rt, &name))
        return text(name)

    @property
    def kernels_reason(self) -> str:
        cdef const char *reason = NULL
        check(ek_rt_kernels_reason(self._rt, &reason))
        return text(reason)

    @property
    def threads(self) -> int:
        cdef int threads = 0
        check(ek_rt_threads(self._rt, &threads))
        return threads

    def network_names(self) -> list:
        cdef int count = 0, i
        cdef const char *name = NULL
        check(ek_rt_network_count(self._rt, &count))
        names = []
        for i in range(count):
            check(ek_rt_network_name(self._rt, i, &name))
            names.append(text(name))
        return names

    def load_model(self, path) -> list:
        """Load a model file (mapped); returns the names of the networks it added."""
        cdef bytes encoded = fs_path(path)
        cdef const char *c_path = encoded
        cdef ek_status_t status
        with self._lock:
            before = len(self.network_names())
            with nogil:
                status = ek_rt_load_model(self._rt, c_path)
            check(status)
            return self.network_names()[before:]

    def load_plugin(self, path) -> None:
        """Load a plugin op library (a shared library for this machine, docs/plugins.md) into this
        runtime, before the models that use its ops."""
        cdef bytes encoded = fs_path(path)
        cdef const char *c_path = encoded
        cdef ek_status_t status
        with self._lock:
            with nogil:
                status = ek_rt_load_plugin(self._rt, c_path)
            check(status)

    def load_model_data(self, data) -> list:
        """Load a model from a bytes-like object (copied); returns the names of the networks it added."""
        cdef const unsigned char[::1] view
        cdef ek_status_t status
        cdef const void *ptr
        cdef size_t size
        try:
            view = memoryview(data).cast("B")
        except (TypeError, ValueError) as exc:
            raise InvalidTypeError(f"model data must be a C-contiguous bytes-like object: {exc}") from None
        size = view.shape[0]
        if size == 0:
            # As an empty .ekm file is: no model at all.
            raise ModelInvalidError("model data is empty (0 bytes): not an .ekm model")
        ptr = &view[0]
        with self._lock:
            before = len(self.network_names())
            with nogil:
                status = ek_rt_load_model_data(self._rt, ptr, size)
            check(status)
            return self.network_names()[before:]

    def network_info(self, str name) -> tuple:
        """(name, inputs, outputs, stages): inputs/outputs as (name, dtype code, scale, zero point,
        max bytes), stages as (input shapes, output shapes)."""
        cdef const ek_net_info_t *info = NULL
        cdef bytes encoded = name.encode()
        cdef int i, j
        check(ek_rt_network_info(self._rt, encoded, &info))
        inputs = [io_tuple(&info.inputs[i]) for i in range(info.input_count)]
        outputs = [io_tuple(&info.outputs[i]) for i in range(info.output_count)]
        stages = []
        for i in range(info.stage_count):
            stages.append(([shape_tuple(&info.stages[i].input_shapes[j]) for j in range(info.input_count)],
                           [shape_tuple(&info.stages[i].output_shapes[j]) for j in range(info.output_count)]))
        return (text(info.name), inputs, outputs, stages)

    def stage_memory(self, str name, int stage) -> tuple:
        """(constant_bytes, workspace_bytes, alignment) of one stage of network `name`."""
        cdef ek_stage_memory_t m
        cdef bytes encoded = name.encode()
        check(ek_rt_stage_memory(self._rt, encoded, stage, &m))
        return (m.constant_bytes, m.workspace_bytes, m.alignment)

    def workspace_create(self, str name, int stage, memory, size_t offset, size_t size) -> int:
        """A workspace (its handle) for `stage` of `name` in [offset, offset + size) of `memory`."""
        cdef bytes encoded = name.encode()
        cdef const char *c_name = encoded
        cdef ek_mem_t mem
        cdef ek_workspace_t ws
        cdef ek_status_t status
        mem.id = memory.handle
        with nogil:
            status = ek_rt_workspace_create(self._rt, c_name, stage, mem, offset, size, &ws)
        check(status)
        return ws.id

    @staticmethod
    def workspace_destroy(uint64_t handle) -> None:
        cdef ek_workspace_t ws
        cdef ek_status_t status
        ws.id = handle
        with nogil:
            status = ek_workspace_destroy(ws)
        check(status)

    cdef int _start_dispatcher(self) except -1:
        with self._lock:
            if self._dispatcher is None:
                thread = threading.Thread(target=_dispatch, args=(self._queue,), name="edgekit-callbacks",
                                          daemon=True)
                thread.start()
                self._dispatcher = thread
        return 0


PROFILE_KINDS = ("ModelInit", "RequestInit", "TransferFromInput", "Wait", "LayerExecute", "TransferToOutput",
                 "ModelExecute", "Transport")


cdef class Profile:
    """A profile (ek_profile_t): the records of the launches given it, and the caller's own."""
    cdef ek_profile_t _profile
    cdef bint _open

    def __cinit__(self):
        check(ek_profile_create(&self._profile))
        self._open = True

    def __dealloc__(self):
        if self._open:
            ek_profile_destroy(self._profile)

    @property
    def handle(self) -> int:
        return self._profile.id

    def close(self) -> None:
        if self._open:
            self._open = False
            check(ek_profile_destroy(self._profile))

    def clear(self) -> None:
        check(ek_profile_clear(self._profile))

    def __len__(self) -> int:
        cdef size_t count = 0
        check(ek_profile_count(self._profile, &count))
        return count

    def _records(self) -> list:
        """Every record as (kind, name, start_ns, duration_ns, details dict), in the order added."""
        cdef size_t count = 0, i
        cdef ek_profile_record_t r
        check(ek_profile_count(self._profile, &count))
        out = []
        for i in range(count):
            check(ek_profile_get(self._profile, i, &r))
            details = {"thread": r.thread}
            if r.network[0]:
                details["network"] = text(r.network)
            if r.stage >= 0:
                details["stage"] = r.stage
            if r.launch:
                details["launch"] = r.launch
            if r.bytes:
                details["bytes"] = r.bytes
            if r.threads:
                details["threads"] = r.threads
            if r.kind == EK_PROFILE_LAYER_EXECUTE:
                nodes = text(r.nodes)
                details.update(op_index=r.op_index, op_type=text(r.op_type), provider=text(r.provider),
                               nodes=nodes.split("\x1f") if nodes else [], tensor=text(r.tensor),
                               shapes=text(r.shapes), flops=r.flops,
                               algorithm=text(r.algorithm) if r.algorithm else "")
            out.append((text(ek_profile_kind_name(r.kind)), text(r.name), r.start_ns, r.duration_ns, details))
        return out

    def add(self, str kind, str name, uint64_t start_ns, uint64_t duration_ns) -> None:
        """Add a record of the caller's on this thread (times from clock_ns())."""
        cdef bytes encoded = name.encode()
        cdef int code
        if kind not in PROFILE_KINDS:
            raise InvalidArgumentError(f"profile record kind must be one of {', '.join(PROFILE_KINDS)}, got {kind!r}")
        code = PROFILE_KINDS.index(kind) + 1
        check(ek_profile_add(self._profile, <ek_profile_kind_t>code, encoded, start_ns, duration_ns))

    def write(self, path) -> None:
        """Write trace.json and summary.csv into directory `path` (made if missing)."""
        cdef bytes encoded = fs_path(path)
        cdef const char *c_path = encoded
        cdef ek_status_t status
        with nogil:
            status = ek_profile_write(self._profile, c_path)
        check(status)


def clock_ns() -> int:
    """The profile clock (CLOCK_MONOTONIC, ns): the same as time.monotonic_ns() on Linux."""
    return ek_profile_clock_ns()


# no_gc_clear: __dealloc__ needs the runtime and the bound memories even when the garbage collector
# breaks a cycle through the request.
@cython.no_gc_clear
cdef class Request:
    """One launch slot of network `net_name`: tensors bound to device memory, one launch at a time."""
    cdef readonly Runtime runtime
    cdef bytes _net_name
    cdef int _n_in, _n_out
    cdef ek_tensor_t *_tensors       # inputs then outputs
    cdef size_t *_nbytes             # bytes of each tensor's current shape
    cdef unsigned char *_mapped      # 1: flush (input) / invalidate (output) around launches
    cdef ek_dev_t _dev
    cdef ekpy_state_t *_state
    cdef ek_launch_t _handle
    cdef bint _launched              # a launch not retired yet
    cdef uint64_t _seq               # the number of the last launch
    cdef object _error               # the last launch's exception, raised by every wait() until the next
    cdef object _callback
    cdef list _memories              # kept until the launch using them has ended
    cdef ek_workspace_t _workspace   # launches run in it; {0}: the runtime's pool of contexts
    cdef readonly int launches

    def _setup(self, Runtime runtime not None, str net_name, int input_count, int output_count) -> None:
        """Once, from the Pythonic subclass's __init__ (so its constructor takes what it likes)."""
        cdef int n
        if self._tensors != NULL:
            raise BusyError("the request is set up already")
        if input_count < 1 or output_count < 1 or input_count > 4096 or output_count > 4096:
            raise InvalidArgumentError(f"a network has 1..4096 inputs and outputs, got {input_count} and "
                                       f"{output_count}")
        n = input_count + output_count
        self._state = ekpy_state_new(runtime._queue.q)
        self._tensors = <ek_tensor_t *>calloc(n, sizeof(ek_tensor_t))
        self._nbytes = <size_t *>calloc(n, sizeof(size_t))
        self._mapped = <unsigned char *>calloc(n, 1)
        if self._tensors == NULL or self._nbytes == NULL or self._mapped == NULL or self._state == NULL:
            raise MemoryError()
        self.runtime = runtime
        self._net_name = net_name.encode()
        self._n_in = input_count
        self._n_out = output_count
        self._dev.id = runtime.device.handle
        self._memories = [None] * n

    def __dealloc__(self):
        if self._launched and self._state != NULL:
            # The launch reads and writes the bound memories: end it before they can go.
            with nogil:
                ekpy_state_wait(self._state, -1)
                ek_launch_wait(self._handle, -1)
        ekpy_state_free(self._state)
        free(self._tensors)
        free(self._nbytes)
        free(self._mapped)

    cdef int _index(self, int index) except -1:
        if self._tensors == NULL:
            raise BusyError("the request is not set up (_setup)")
        if index < 0 or index >= self._n_in + self._n_out:
            raise InvalidArgumentError(f"tensor index {index} is outside 0..{self._n_in + self._n_out - 1}")
        if self._launched:
            raise BusyError("the request is running: wait() for it before changing its tensors")
        return 0

    def _bind(self, int index, memory, offset=0) -> None:
        """Tensor `index` (inputs first) lives at byte `offset` of `memory` (an edgekit Memory)."""
        self._index(index)
        self._tensors[index].mem.id = memory.handle
        self._tensors[index].offset = offset
        self._memories[index] = memory

    def _set_tensor(self, int index, int dtype, tuple shape) -> None:
        """The dtype and shape tensor `index` has in the next launches."""
        cdef size_t nbytes, d
        cdef int i
        self._index(index)
        if len(shape) > EK_MAX_DIMS:
            raise InvalidArgumentError(f"shape {shape} has more than {EK_MAX_DIMS} dimensions")
        nbytes = ek_dtype_size(<ek_dtype_t>dtype)
        if nbytes == 0:
            raise InvalidArgumentError(f"unknown dtype code {dtype}")
        for i in range(len(shape)):
            if shape[i] < 0:
                raise InvalidArgumentError(f"shape {shape} has a negative dimension")
            d = shape[i]
            if d != 0 and nbytes > (<size_t>-1) // d:
                raise InvalidArgumentError(f"shape {shape} is larger than this platform can address")
            nbytes *= d
            self._tensors[index].shape.dims[i] = shape[i]
        self._tensors[index].shape.num_dims = len(shape)
        self._tensors[index].dtype = <ek_dtype_t>dtype
        self._nbytes[index] = nbytes

    def _use_workspace(self, uint64_t handle) -> None:
        """Run the next launches in workspace `handle` (0: a context from the runtime's pool)."""
        if self._launched:
            raise BusyError("the request is running: wait() for it before changing its workspace")
        self._workspace.id = handle

    def _set_mapped(self, int index, bint mapped) -> None:
        """Whether tensor `index` is mapped for the CPU: launches then flush it (an input) before, and
        invalidate it (an output) after."""
        self._index(index)
        self._mapped[index] = mapped

    @property
    def running(self) -> bool:
        """A launch was started and not waited for yet (it may have finished already)."""
        return bool(self._launched)

    @property
    def callback(self):
        return self._callback

    def set_callback(self, fn) -> None:
        """Call fn(request) on the runtime's callback thread after each launch; None: no callback."""
        if fn is not None and not callable(fn):
            raise InvalidTypeError(f"the callback must be callable or None, got {type(fn).__name__}")
        self._callback = fn

    def _launch(self, int threads=0, uint64_t cpu_mask=0, Profile profile=None, dump_dir=None) -> None:
        """Flush the mapped inputs and queue the network on the device; returns at once. With `profile`
        the launch records into it; with `dump_dir` (bytes) it writes its intermediate results there."""
        cdef bytes dump_path = dump_dir
        cdef ek_launch_options_t options
        cdef ek_status_t status = EK_OK
        cdef int i
        cdef bint notify = self._callback is not None
        cdef size_t token = <size_t>self._state
        if self._tensors == NULL:
            raise BusyError("the request is not set up (_setup)")
        if self._launched:
            raise BusyError("the request is still running: wait() for it before the next infer()")
        if self.runtime.closed:
            raise BusyError("the runtime (context) of this request is closed")
        with nogil:
            for i in range(self._n_in):
                if self._mapped[i] and self._nbytes[i]:
                    status = ek_mem_flush_partial(self._dev, self._tensors[i].mem, self._tensors[i].offset,
                                                  self._nbytes[i])
                    if status != EK_OK:
                        break
        check(status)
        memset(&options, 0, sizeof(options))
        options.threads = threads
        options.cpu_mask = cpu_mask
        options.on_done = ekpy_on_done
        options.user_data = self._state
        if profile is not None:
            options.profile = profile._profile
        if dump_path is not None:
            options.dump_dir = dump_path
        options.workspace = self._workspace
        seq = self._seq + 1
        if notify:
            self.runtime._start_dispatcher()
            if ekpy_queue_reserve(self.runtime._queue.q) != 0:
                raise MemoryError("cannot grow the launch completion queue")
            # The callback in effect now is this launch's, even if set_callback changes it before the
            # dispatcher gets to the launch.
            self.runtime._queue.inflight[(token, seq)] = (self, self._callback)
        ekpy_state_begin(self._state, notify, seq)
        cdef ek_rt_t rt = self.runtime._rt
        cdef const char *net_name = self._net_name
        cdef ek_launch_t handle
        with nogil:
            status = ek_rt_launch_tensor(rt, net_name, self._tensors, self._n_in, self._tensors + self._n_in,
                                         self._n_out, True, &options, &handle)
        if status != EK_OK:
            ekpy_state_abort(self._state)
            if notify:
                self.runtime._queue.inflight.pop((token, seq), None)
                ekpy_queue_unreserve(self.runtime._queue.q)
            check(status)
        self._seq = seq
        self._handle = handle
        self._launched = True
        self._error = None
        self.launches += 1

    def _run_fast(self, inputs, fast):
        """``run``'s fast path: copy in, launch and wait on this thread (ek_rt_run), copy out, with no
        step in Python. `fast` is (input names, (dtype, shape) of each input and output of the current
        stage), or None. Returns the outputs, or None when the fast path does not apply (closed, running,
        a callback, mapped tensors, inputs that need converting or another stage): the caller then
        takes the full path, which also raises the right errors."""
        cdef Py_buffer view
        cdef ek_launch_options_t options
        cdef ek_status_t status = EK_OK
        cdef int i, n_in = self._n_in, n_out = self._n_out
        cdef size_t nbytes
        if (fast is None or self._tensors == NULL or self._launched or self._callback is not None
                or self.runtime.closed):
            return None
        names, specs = fast
        if type(inputs) is dict:
            if len(inputs) != n_in:
                return None
            arrays = []
            for name in names:
                value = inputs.get(name)
                if value is None:
                    return None
                arrays.append(value)
        elif type(inputs) is list or type(inputs) is tuple:
            if len(inputs) != n_in:
                return None
            arrays = inputs
        else:
            return None
        for i in range(n_in + n_out):
            if self._mapped[i]:
                return None
        for i in range(n_in):
            a = arrays[i]
            dtype, shape = specs[i]
            if type(a) is not np.ndarray or a.dtype is not dtype or a.shape != shape or not a.flags.c_contiguous:
                return None
        for i in range(n_in):
            PyObject_GetBuffer(arrays[i], &view, PyBUF_SIMPLE)
            with nogil:
                status = ek_memcpy_s2d_partial_offset(self._dev, self._tensors[i].mem, view.buf, <size_t>view.len,
                                                      self._tensors[i].offset)
            PyBuffer_Release(&view)
            check(status)
        memset(&options, 0, sizeof(options))
        options.workspace = self._workspace
        cdef ek_rt_t rt = self.runtime._rt
        cdef const char *net_name = self._net_name
        with nogil:
            status = ek_rt_run(rt, net_name, self._tensors, n_in, self._tensors + n_in, n_out, &options)
        self.launches += 1
        self._error = None
        check(status)
        results = []
        for i in range(n_out):
            dtype, shape = specs[n_in + i]
            out = np.empty(shape, dtype)
            nbytes = self._nbytes[n_in + i]
            if nbytes:
                PyObject_GetBuffer(out, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
                with nogil:
                    status = ek_memcpy_d2s_partial_offset(self._dev, view.buf, self._tensors[n_in + i].mem, nbytes,
                                                          self._tensors[n_in + i].offset)
                PyBuffer_Release(&view)
                check(status)
            results.append(out)
        return results

    def _wait(self, int timeout_ms=-1) -> bool:
        """Wait up to timeout_ms (< 0: forever) for the launch: False if it is still running; True
        when it has ended (then raises its error, if it failed)."""
        if self._launched:
            if not wait_state(self._state, timeout_ms):
                return False
            self._retire()
        if self._error is not None:
            raise self._error
        return True

    cdef int _retire(self) except -1:
        """After on_done: retire the launch handle (its message), invalidate the mapped outputs.
        Runs with the GIL, so the dispatcher and a waiting thread retire a launch exactly once."""
        cdef ek_status_t status
        cdef int i
        if not self._launched:
            return 0
        status = ek_launch_wait(self._handle, -1)  # on_done has run: this returns at once
        self._launched = False
        if status != EK_OK:
            self._error = error_for_status(<int>status, ek_last_error().decode("utf-8", "replace"))
            return 0
        for i in range(self._n_in, self._n_in + self._n_out):
            # the shape the launch reported: a dynamic output's may be smaller than _nbytes, and its memory too
            nbytes = shape_nbytes(&self._tensors[i])
            if self._mapped[i] and nbytes:
                status = ek_mem_invalidate_partial(self._dev, self._tensors[i].mem, self._tensors[i].offset,
                                                   nbytes)
                if status != EK_OK:
                    self._error = error_for_status(<int>status, ek_last_error().decode("utf-8", "replace"))
                    return 0
        return 0

    def _finished(self, uint64_t seq, fn) -> None:
        """On the dispatcher thread, after launch `seq`: retire it (unless a wait() did, and the
        request is running a newer launch already), then run `fn`, the callback set when the launch
        started; its exceptions are printed."""
        if seq == self._seq:
            self._retire()
        if fn is None or getattr(self, "closed", False):  # closed meanwhile: nothing left to look at
            return
        try:
            fn(self)
        except BaseException:
            print(f"edgekit: exception in the callback {fn!r} of {self!r}:", file=sys.stderr)
            traceback.print_exc()

    def _output_shape(self, int index) -> tuple:
        """The shape the last launch reported for output `index`."""
        if index < 0 or index >= self._n_out:
            raise InvalidArgumentError(f"output index {index} is outside 0..{self._n_out - 1}")
        return shape_tuple(&self._tensors[self._n_in + index].shape)


# ---- allocators (the dynamic memory strategy, docs/memory.md) ----

cdef ek_status_t _py_alloc(void *user, ek_dev_t dev, size_t size, size_t alignment, ek_mem_t *mem,
                           size_t *offset) noexcept with gil:
    """ek_allocator_ops_t.alloc of a Python allocator: its alloc(size, alignment) -> (memory, offset)."""
    cdef Allocator self = <Allocator>user
    try:
        memory, off = self.alloc(size, alignment)
        handle = memory.handle
        if isinstance(off, bool) or not isinstance(off, int) or off < 0:
            raise InvalidTypeError(f"alloc() must return (DeviceMemory, offset >= 0), got offset {off!r}")
        mem[0].id = handle
        offset[0] = off
        self._live[(handle, off)] = memory  # the runtime's checks may give it back at once
        return EK_OK
    except BaseException:
        print(f"edgekit: {type(self).__name__}.alloc failed to allocate {size} bytes:", file=sys.stderr)
        traceback.print_exc()
        return <ek_status_t>EK_ERR_OUT_OF_MEMORY


cdef void _py_free(void *user, ek_dev_t dev, ek_mem_t mem, size_t offset, size_t size) noexcept with gil:
    cdef Allocator self = <Allocator>user
    memory = self._live.pop((mem.id, offset), None)
    try:
        self.free(memory, offset, size)
    except BaseException:
        print(f"edgekit: exception in {type(self).__name__}.free:", file=sys.stderr)
        traceback.print_exc()


cdef class Allocator:
    """An allocator (ek_allocator_t) runtimes allocate their device memory through. Made by the
    Pythonic subclasses: a pool over one device block (_init_pool), or Python methods (_init_custom)."""
    cdef ek_allocator_t _a
    cdef dict _live  # (memory handle, offset) -> the memory alloc() returned, until free()

    def __cinit__(self, *args, **kwargs):
        self._live = {}

    def _init_pool(self, device, size_t capacity) -> None:
        cdef ek_dev_t dev
        if self._a.id:
            raise BusyError("the allocator is set up already")
        if not isinstance(device, _Device):
            raise InvalidTypeError(f"device must be an edgekit.Device, got {type(device).__name__}")
        dev.id = device.handle
        check(ek_allocator_create_pool(&self._a, dev, capacity))

    def _init_custom(self) -> None:
        cdef ek_allocator_ops_t ops
        if self._a.id:
            raise BusyError("the allocator is set up already")
        ops.alloc = _py_alloc
        ops.free = _py_free
        check(ek_allocator_create(&self._a, &ops, <void *>self))

    def __dealloc__(self):
        # No runtime refers to it now (each holds a reference); a block left over would be an output
        # of a launch without user_mem, which Python never makes.
        if self._a.id:
            ek_allocator_destroy(self._a)

    @property
    def handle(self) -> int:
        return self._a.id

    @property
    def closed(self) -> bool:
        return self._a.id == 0

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Closed unless a runtime still uses it: then the last context using it closes first, and the
        # allocator goes when nothing refers to it any more.
        if self._a.id and self.stats["runtimes"] == 0:
            self.close()

    def close(self) -> None:
        """Destroy it; BusyError while a runtime made with it is open."""
        cdef ek_status_t status
        if self._a.id == 0:
            return
        with nogil:
            status = ek_allocator_destroy(self._a)
        check(status)
        self._a.id = 0

    @property
    def stats(self) -> dict:
        """allocations, frees, failures, live_blocks, bytes_in_use, peak_bytes, capacity (a pool's; 0
        for others), runtimes (using it now)."""
        cdef ek_allocator_stats_t st
        cdef ek_status_t status
        if self._a.id == 0:
            raise FreedHandleError("the allocator is closed")
        with nogil:
            status = ek_allocator_stats(self._a, &st)
        check(status)
        return {"allocations": st.allocations, "frees": st.frees, "failures": st.failures,
                "live_blocks": st.live_blocks, "bytes_in_use": st.bytes_in_use, "peak_bytes": st.peak_bytes,
                "capacity": st.capacity, "runtimes": st.runtimes}
