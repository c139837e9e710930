# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""edgekit._core: the low-level layer, one method per C call of libedgekit.

Buffers travel through the buffer protocol (no numpy C-API): any C-contiguous bytes-like object
can be written from or read into, and a mapped memory exports its bytes zero-copy. Copies of at
least NOGIL_THRESHOLD bytes release the GIL. The Pythonic layer (edgekit.device) subclasses these
types, so the hot methods stay single Cython calls.

Views and deferred releases: a live buffer export (numpy array, memoryview) of a mapping keeps the
mapping, its memory and the Device object it was allocated through alive in C. unmap(), free() and
Device.close() called while exports exist succeed at once for the caller (the object reports the new
state, and later calls through it raise what the runtime says for that misuse); the C calls
(ek_mem_unmap, ek_free_device, ek_dev_free) run when the last export goes (Mapping.__releasebuffer__),
memory first, then the device. Each object keeps its C state (Device._open, Memory._addr/_freed)
apart from the releases the user asked for while views existed (Device._closed, Memory._released and
_unmap_pending): while one is set, the methods raise what the runtime says of that misuse themselves
(without views the runtime is asked, and says it). All of it runs under the GIL.
"""
from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
cimport cython
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc

from edgekit.libedgekit cimport *

import operator
import os

from edgekit.errors import (
    DoubleFreeError, FreedHandleError, InvalidArgumentError, InvalidTypeError, NotMappedError, OutOfMemoryError,
    OutOfRangeError, error_for_status,
)

# Below this many bytes a copy takes less time than releasing and re-taking the GIL.
NOGIL_THRESHOLD = 64 * 1024
cdef size_t _nogil_threshold = NOGIL_THRESHOLD

COHERENCE_MODES = {"coherent": EK_COHERENCE_COHERENT, "strict": EK_COHERENCE_STRICT}
BACKINGS = {"auto": EK_BACKING_DEFAULT, "memfd": EK_BACKING_MEMFD, "dmabuf": EK_BACKING_DMABUF,
            "anonymous": EK_BACKING_ANONYMOUS}
_COHERENCE_NAMES = {v: k for k, v in COHERENCE_MODES.items()}
_BACKING_NAMES = {v: k for k, v in BACKINGS.items()}


cdef inline int check(ek_status_t status) except -1:
    if status != EK_OK:
        raise error_for_status(<int>status, ek_last_error().decode("utf-8", "replace"))
    return 0


cdef extern from "Python.h":
    # Declared without Cython's automatic exception check, so the fast paths below need no try block.
    size_t PyLong_AsSize_t(object value)
    int PyObject_GetBuffer_nocheck "PyObject_GetBuffer"(object obj, Py_buffer *view, int flags)
    void *PyErr_Occurred()
    void PyErr_Clear()


cdef size_t SIZE_MAX = <size_t>-1


# What the runtime says of a handle the user released (handles.c), for the calls Python refuses itself
# while the C release waits for views.
cdef object freed_error(str kind, uint64_t handle):
    return FreedHandleError(f"{kind} handle 0x{handle:016x} was freed (use after free)")


cdef object double_free_error(str kind, uint64_t handle):
    return DoubleFreeError(f"{kind} handle 0x{handle:016x} was already freed (double free)")


cdef size_t as_size(object value, str name, type too_large) except? <size_t>-1:
    """A non-negative Python int (or anything with __index__) as size_t. Floats, strings and negative
    numbers are InvalidArgumentError; a value beyond size_t is `too_large`, naming the value."""
    cdef size_t result
    if type(value) is int:
        result = PyLong_AsSize_t(value)
        if result != SIZE_MAX or PyErr_Occurred() == NULL:
            return result
        PyErr_Clear()
    return as_size_slow(value, name, too_large)


cdef size_t as_size_slow(object value, str name, type too_large) except? <size_t>-1:
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidTypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if number < 0:
        raise InvalidArgumentError(f"{name} must be >= 0, got {number}")
    if number > SIZE_MAX:
        raise too_large(f"{name}={number} is larger than any size this platform can address ({SIZE_MAX})")
    return number


cdef int get_buffer(object obj, Py_buffer *view, bint writable, str role) except -1:
    cdef int flags = PyBUF_C_CONTIGUOUS | (PyBUF_WRITABLE if writable else 0)
    if PyObject_GetBuffer_nocheck(obj, view, flags) == 0:
        return 0
    PyErr_Clear()
    try:
        PyObject_GetBuffer(obj, view, flags)  # again, with Cython's check, to raise what it says
    except (BufferError, TypeError, ValueError) as exc:
        kind = "writable C-contiguous" if writable else "C-contiguous"
        error = InvalidArgumentError if isinstance(exc, (BufferError, ValueError)) else InvalidTypeError
        raise error(f"{role} must be a {kind} bytes-like object (bytes, bytearray, numpy array...): {exc}") \
            from None
    return 0  # the exporter changed its mind: the buffer is ours now


def make_key(path) -> None:
    """Write a new pairing key for remote_server --key (docs/remote-protocol.md) to `path` (mode 0600)."""
    cdef bytes p = os.fsencode(path)
    check(ek_remote_make_key(p))


def device_count() -> int:
    """Number of devices (EDGEKIT_DEVICES, default 1)."""
    cdef int count = 0
    check(ek_dev_count(&count))
    return count


def version() -> str:
    """Version of the libedgekit this module is linked to."""
    return ek_version().decode()


def status_name(int code) -> str:
    return ek_status_name(<ek_status_t>code).decode()


cdef void _remote_progress(void *user_data, const char *what, uint64_t done, uint64_t total) noexcept with gil:
    callback = (<Device>user_data)._progress
    try:
        callback(what.decode(), done, total)
    except BaseException as exc:  # noqa: B036 - nowhere to raise it from inside a C copy
        import sys
        print(f"edgekit: the progress callback raised {exc!r}", file=sys.stderr)


cdef class Device:
    """An open handle to device `id`, or to a board's device through its remote_server when `id` is a URL
    ("tcp://HOST:PORT", "ssh://user@board"). close() (or garbage collection) releases it."""
    cdef ek_dev_t _handle
    cdef readonly int id
    cdef readonly object url   # None for a local device
    cdef bint _open           # C: the handle is held (ek_dev_free not called yet)
    cdef bint _closed         # close() was called while views existed: ek_dev_free waits for them
    cdef Py_ssize_t _exports  # live buffer exports of mappings of memory allocated through this handle
    cdef object _tunnel       # ssh:// devices: the SSH channel's bridge (edgekit.remote.SshTunnel)
    cdef object _progress

    def __cinit__(self, id=0, coherence=None, heap_size=None, backing=None, *, int board_device=0,
                  int server_port=9090, identity=None, known_hosts=None, bint strict_host_keys=False,
                  connect_timeout=10.0, reply_timeout=120.0, progress=None, key_file=None):
        cdef ek_dev_config_t config
        cdef ek_remote_options_t options
        cdef int fd
        cdef ek_status_t status
        cdef bytes url_bytes, label, key_bytes
        cdef const char *text
        config.coherence = EK_COHERENCE_DEFAULT
        config.backing = EK_BACKING_DEFAULT
        config.heap_size = 0
        if coherence is not None:
            if coherence not in COHERENCE_MODES:
                raise InvalidArgumentError(f"coherence must be one of {sorted(COHERENCE_MODES)}, got {coherence!r}")
            config.coherence = COHERENCE_MODES[coherence]
        if backing is not None:
            if backing not in BACKINGS:
                raise InvalidArgumentError(f"backing must be one of {sorted(BACKINGS)}, got {backing!r}")
            config.backing = BACKINGS[backing]
        if heap_size is not None:
            config.heap_size = as_size(heap_size, "heap_size", OutOfMemoryError)
            if config.heap_size == 0:
                raise InvalidArgumentError("heap_size must be > 0 (or None for the default)")
        if not isinstance(id, str):
            if isinstance(id, bool) or not isinstance(id, int):
                raise InvalidTypeError(f"id must be a device number or a URL (tcp://..., ssh://...), got "
                                       f"{type(id).__name__} {id!r}")
            check(ek_dev_request_ex(&self._handle, id, &config))
            self.id = id
            self._open = True
            return
        # A remote device.
        if not id.startswith(("tcp://", "ssh://")):
            hint = f"; for device {id} pass the number {id}" if id.strip().isdigit() else ""
            raise InvalidArgumentError(f"device {id!r} is neither a device number nor a board URL "
                                       f"(tcp://HOST:PORT, ssh://user@board){hint}")
        if progress is not None and not callable(progress):
            raise InvalidTypeError(f"progress must be callable(what, done, total), got {progress!r}")
        for name, value in (("connect_timeout", connect_timeout), ("reply_timeout", reply_timeout)):
            if not isinstance(value, (int, float)) or not 0 < value <= 86400:
                raise InvalidArgumentError(f"{name} must be seconds in (0, 86400], got {value!r}")
        options.connect_timeout_ms = <int>(connect_timeout * 1000)
        options.reply_timeout_ms = <int>(reply_timeout * 1000)
        options.device_config = config
        options.progress = NULL
        options.progress_user_data = NULL
        options.key_file = NULL
        if key_file is not None:
            key_bytes = os.fsencode(key_file)
            options.key_file = key_bytes
        self._progress = progress
        if progress is not None:
            options.progress = _remote_progress
            options.progress_user_data = <void *>self
        if id.startswith("ssh://"):
            from edgekit.remote import SshTunnel
            self._tunnel = SshTunnel(id, server_port=server_port, identity=identity, known_hosts=known_hosts,
                                     strict_host_keys=strict_host_keys, connect_timeout=connect_timeout)
            fd = self._tunnel.fd
            label = self._tunnel.label.encode()
            text = label
            with nogil:
                status = ek_dev_connect_fd(&self._handle, fd, text, board_device, &options)
            if status != EK_OK:
                message = ek_last_error().decode("utf-8", "replace")
                self._tunnel.close()
                raise error_for_status(<int>status, message)
        else:
            url_bytes = id.encode()
            text = url_bytes
            with nogil:
                status = ek_dev_connect(&self._handle, text, board_device, &options)
            check(status)
        self.id = board_device
        self.url = id
        self._open = True

    @property
    def remote_info(self):
        """What the board's remote_server reported (protocol, runtime_version, arch, model_format, devices,
        kernels, threads), or None for a local device."""
        cdef ek_remote_info_t info
        if self._closed:
            raise self._closed_error()
        check(ek_dev_remote_info(self._handle, &info))
        if not info.remote:
            return None
        return {"url": self.url, "protocol": info.protocol, "runtime_version": info.runtime_version.decode(),
                "arch": info.arch.decode(), "model_format": f"{info.model_format_major}.{info.model_format_minor}",
                "devices": info.devices, "kernels": info.kernels.decode(), "threads": info.threads}

    def __dealloc__(self):
        if self._open:
            ek_dev_free(self._handle)

    @property
    def handle(self) -> int:
        """The C ek_dev_t value."""
        return self._handle.id

    @property
    def closed(self) -> bool:
        return self._closed or not self._open

    cdef object _closed_error(self):
        return freed_error("device", self._handle.id)

    def close(self) -> None:
        """Release this handle. While numpy views of memory allocated through it are alive, the handle
        is closed for the caller at once and released when the last view goes."""
        if self._closed:
            raise double_free_error("device", self._handle.id)
        if self._exports:
            self._closed = True  # Mapping.__releasebuffer__ calls _release
            return
        cdef ek_status_t status = ek_dev_free(self._handle)
        self._open = False
        if self._tunnel is not None:
            self._tunnel.close()
        check(status)

    cdef void _release(self) noexcept:
        """The deferred ek_dev_free, once the last view is gone."""
        if self._closed and self._open and self._exports == 0:
            self._open = False
            ek_dev_free(self._handle)  # nobody to report an error to; the handle was valid
            if self._tunnel is not None:
                self._tunnel.close()

    def sync(self) -> None:
        """Wait for all work queued on the device."""
        if self._closed:
            raise self._closed_error()
        with nogil:
            status = ek_dev_sync(self._handle)
        check(status)

    def malloc(self, size) -> Memory:
        """Allocate `size` bytes of device memory."""
        return Memory(self, size)

    def copy(self, Memory dst not None, dst_offset, Memory src not None, src_offset, nbytes) -> None:
        """Device-to-device copy of `nbytes` bytes (ranges may overlap)."""
        cdef size_t doff = as_size(dst_offset, "dst_offset", OutOfRangeError)
        cdef size_t soff = as_size(src_offset, "src_offset", OutOfRangeError)
        cdef size_t n = as_size(nbytes, "nbytes", OutOfRangeError)
        cdef ek_status_t status
        if self._closed | dst._released | src._released:  # in the runtime's order: device, dst, src
            raise self._closed_error() if self._closed else \
                freed_error("memory", (dst if dst._released else src)._mem.id)
        if n >= _nogil_threshold:
            with nogil:
                status = ek_memcpy_d2d(self._handle, dst._mem, doff, src._mem, soff, n)
        else:
            status = ek_memcpy_d2d(self._handle, dst._mem, doff, src._mem, soff, n)
        check(status)

    @property
    def stats(self) -> dict:
        """Heap statistics: total, used, peak, free, largest_free, allocations, alignment, coherence, backing."""
        cdef ek_heap_stats_t s
        if self._closed:
            raise self._closed_error()
        check(ek_dev_heap_stats(self._handle, &s))
        return {"total": s.total, "used": s.used, "peak": s.peak, "free": s.free,
                "largest_free": s.largest_free, "allocations": s.allocations, "alignment": s.alignment,
                "coherence": _COHERENCE_NAMES[s.coherence], "backing": _BACKING_NAMES.get(s.backing, "auto")}

    def coherence_report(self, bint clear=False) -> list:
        """Recorded strict-coherence violations as (kind, memory handle, offset, size, message) tuples."""
        cdef size_t count = 0, capacity, i
        if self._closed:
            raise self._closed_error()
        check(ek_dev_coherence_report(self._handle, NULL, 0, &count))
        capacity = min(count, 1024)  # the runtime keeps the first 1024
        cdef ek_coh_violation_t *items = <ek_coh_violation_t *>malloc(max(capacity, 1) * sizeof(ek_coh_violation_t))
        if items == NULL:
            raise MemoryError()
        try:
            # Other threads may record more in between: only the `capacity` entries copied are read.
            check(ek_dev_coherence_report(self._handle, items, capacity, &count))
            result = [(ek_coh_kind_name(items[i].kind).decode(), items[i].mem, items[i].offset, items[i].size,
                       items[i].what.decode("utf-8", "replace")) for i in range(min(count, capacity))]
        finally:
            free(items)
        if clear:
            check(ek_dev_coherence_clear(self._handle))
        return result


# no_gc_clear: __dealloc__ and __releasebuffer__ need `device` / `memory` even when the garbage
# collector breaks a reference cycle through these objects.
@cython.no_gc_clear
cdef class Memory:
    """A block of device memory; free() (or garbage collection) returns it to the heap."""
    cdef ek_mem_t _mem
    cdef readonly Device device
    cdef readonly size_t size
    cdef bint _freed          # C: ek_free_device done
    cdef void *_addr          # C: the mapping Python holds (ek_mem_mmap done, ek_mem_unmap not yet)
    cdef bint _released       # free() was called while views existed: ek_free_device waits for them
    cdef bint _unmap_pending  # unmap() was called while views existed: ek_mem_unmap waits for them
    cdef Py_ssize_t _exports  # live buffer exports of the mapping

    def __cinit__(self, Device device not None, size):
        cdef size_t n = as_size(size, "size", OutOfMemoryError)
        if device._closed:
            raise device._closed_error()
        check(ek_malloc_device(device._handle, &self._mem, n))
        self.device = device
        self.size = n

    def __dealloc__(self):
        if not self._freed and self.device is not None:
            ek_free_device(self.device._handle, self._mem)  # an error here means the device is gone

    @property
    def handle(self) -> int:
        """The C ek_mem_t value."""
        return self._mem.id

    @property
    def mapped(self) -> bool:
        """Mapped for the CPU as far as the caller is concerned: False once unmap() or free() was called
        (or the device handle closed), even while numpy views keep the mapping itself alive."""
        return self._user_mapped()

    cdef inline bint _user_mapped(self):
        return self._addr != NULL and self.device._open and not (
            self._unmap_pending | self._released | self.device._closed)

    cdef object _released_error(self):
        """What the runtime says of a call through this memory once it, or its device handle, was released."""
        if self.device._closed or not self.device._open:
            return self.device._closed_error()
        return freed_error("memory", self._mem.id)

    def write(self, buf, offset=0) -> None:
        """Copy all bytes of `buf` to the device at byte `offset`."""
        cdef size_t off = as_size(offset, "offset", OutOfRangeError)
        cdef Py_buffer view
        cdef ek_status_t status
        get_buffer(buf, &view, False, "buf")
        if self._released | self.device._closed:
            PyBuffer_Release(&view)
            raise self._released_error()
        if <size_t>view.len >= _nogil_threshold:
            with nogil:
                status = ek_memcpy_s2d_partial_offset(self.device._handle, self._mem, view.buf, view.len, off)
        else:
            status = ek_memcpy_s2d_partial_offset(self.device._handle, self._mem, view.buf, view.len, off)
        PyBuffer_Release(&view)
        check(status)

    def read(self, nbytes=None, offset=0, out=None):
        """Copy `nbytes` bytes from device `offset` (default: to the end, or len(out)) into `out`, a
        writable buffer, and return it; without `out`, return new bytes."""
        cdef size_t off = as_size(offset, "offset", OutOfRangeError), n
        cdef Py_buffer view
        cdef ek_status_t status
        cdef char *dst
        cdef char probe
        if out is not None:
            if nbytes is not None:  # before the buffer is taken: an error here must not leave `out` exported
                n = as_size(nbytes, "nbytes", OutOfRangeError)
            get_buffer(out, &view, True, "out")
            if nbytes is None:
                n = view.len
            if n > <size_t>view.len:
                PyBuffer_Release(&view)
                raise InvalidArgumentError(f"nbytes={n} is larger than out ({view.len} bytes)")
            dst = <char *>view.buf
            result = out
        else:
            n = self._length(off, nbytes)
        if self._released | self.device._closed:
            if out is not None:
                PyBuffer_Release(&view)
            raise self._released_error()
        if out is None:
            if n > self.size or off > self.size - n:
                # Let the runtime report the range (it checks before it copies), before allocating `n` bytes.
                check(ek_memcpy_d2s_partial_offset(self.device._handle, &probe, self._mem, n, off))
            result = PyBytes_FromStringAndSize(NULL, n)
            dst = PyBytes_AS_STRING(result)
        if n >= _nogil_threshold:
            with nogil:
                status = ek_memcpy_d2s_partial_offset(self.device._handle, dst, self._mem, n, off)
        else:
            status = ek_memcpy_d2s_partial_offset(self.device._handle, dst, self._mem, n, off)
        if out is not None:
            PyBuffer_Release(&view)
        check(status)
        return result

    cdef size_t _length(self, size_t off, object nbytes) except? <size_t>-1:
        """`nbytes`, or by default the rest of the memory from `off`; from an offset past the end, one
        byte, so the runtime reports that range as out of bounds."""
        if nbytes is not None:
            return as_size(nbytes, "nbytes", OutOfRangeError)
        return self.size - off if off < self.size else 1

    cdef ek_status_t _sync(self, object offset, object nbytes, bint to_device) except *:
        cdef size_t off = as_size(offset, "offset", OutOfRangeError)
        cdef size_t n = self._length(off, nbytes)
        if self._released | self.device._closed:
            raise self._released_error()
        if nbytes is None and off == 0:
            return ek_mem_flush(self.device._handle, self._mem) if to_device else \
                ek_mem_invalidate(self.device._handle, self._mem)
        return ek_mem_flush_partial(self.device._handle, self._mem, off, n) if to_device else \
            ek_mem_invalidate_partial(self.device._handle, self._mem, off, n)

    def flush(self, offset=0, nbytes=None) -> None:
        """Make CPU writes through the mapping in [offset, offset+nbytes) visible to the device."""
        check(self._sync(offset, nbytes, True))

    def invalidate(self, offset=0, nbytes=None) -> None:
        """Make device writes in [offset, offset+nbytes) visible through the CPU mapping."""
        check(self._sync(offset, nbytes, False))

    def _map_as(self, cls):
        """Map the memory (once) and return a new `cls` (a Mapping type) viewing it. On a memory whose
        unmap() waits for views, the pending unmap is cancelled and the live mapping reused."""
        cdef void *addr
        cdef int device_id
        if self._released | self.device._closed:
            raise self._released_error()
        check(ek_dev_id(self.device._handle, &device_id))  # a view must pin an open device handle
        if self._addr == NULL:
            check(ek_mem_mmap(self.device._handle, self._mem, &addr))
            self._addr = addr
        self._unmap_pending = False  # before cls(): a collection in there must not end the mapping
        return cls(self)

    def map(self) -> Mapping:
        """Map the memory for the CPU; the result exports its bytes through the buffer protocol."""
        return self._map_as(Mapping)

    def unmap(self) -> None:
        """End the CPU mapping. While buffer exports (numpy views) of it are alive, the memory is
        unmapped for the caller at once and in C when the last view goes."""
        if self._released | self.device._closed:
            raise self._released_error()
        if self._addr == NULL:
            check(ek_mem_unmap(self.device._handle, self._mem))  # the runtime says why
            return
        if self._unmap_pending:
            raise NotMappedError(f"ek_mem_unmap: memory 0x{self._mem.id:016x} is not mapped")
        if self._exports:
            self._unmap_pending = True  # Mapping.__releasebuffer__ calls _release
            return
        self._addr = NULL
        check(ek_mem_unmap(self.device._handle, self._mem))

    def free(self) -> None:
        """Return the memory to the device heap (unmapping it first). While numpy views of its mapping
        are alive, the memory is freed for the caller at once and in C when the last view goes."""
        if self.device._closed:
            raise self.device._closed_error()
        if self._released:
            raise double_free_error("memory", self._mem.id)
        if self._exports:
            self._released = True  # Mapping.__releasebuffer__ calls _release
            return
        status = ek_free_device(self.device._handle, self._mem)
        self._freed = self._freed or status == EK_OK
        self._addr = NULL
        self._unmap_pending = False
        check(status)

    cdef void _release(self) noexcept:
        """The deferred ek_mem_unmap and ek_free_device, once the last view is gone (the C calls the
        user's unmap() and free() would have made, so strict coherence reports them as such)."""
        if self._exports:
            return
        if self._unmap_pending:
            self._unmap_pending = False
            if self._addr != NULL:
                self._addr = NULL
                ek_mem_unmap(self.device._handle, self._mem)
        if self._released and not self._freed:
            self._addr = NULL
            self._freed = ek_free_device(self.device._handle, self._mem) == EK_OK


@cython.no_gc_clear
cdef class Mapping:
    """The CPU view of a mapped Memory: a writable, 1-D unsigned-byte buffer (zero-copy)."""
    cdef readonly Memory memory
    cdef Py_ssize_t _shape[1]
    cdef Py_ssize_t _strides[1]

    def __cinit__(self, Memory memory not None):
        self.memory = memory
        self._shape[0] = memory.size
        self._strides[0] = 1

    @property
    def address(self) -> int:
        """The CPU address of the mapping (0 once unmapped or freed, even while views keep it alive)."""
        return <size_t>self.memory._addr if self.memory._user_mapped() else 0

    def __len__(self) -> int:
        return self.memory.size

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        cdef size_t size
        if self.memory._addr == NULL or self.memory._unmap_pending | self.memory._released:
            raise NotMappedError(f"memory 0x{self.memory._mem.id:016x} is not mapped; call map() again")
        if self.memory.device._closed:
            raise self.memory.device._closed_error()
        cdef int device_id
        # The view pins self.memory.device, whose ek_dev_free waits for views to go: so that handle must
        # be open now (another handle keeping the device alive is not enough), and the memory alive.
        check(ek_dev_id(self.memory.device._handle, &device_id))
        check(ek_mem_size(self.memory._mem, &size))
        buffer.buf = self.memory._addr
        buffer.obj = self
        buffer.len = self.memory.size
        buffer.readonly = 0
        buffer.itemsize = 1
        buffer.format = <char *>"B" if flags & PyBUF_FORMAT else NULL
        buffer.ndim = 1
        buffer.shape = self._shape
        buffer.strides = self._strides
        buffer.suboffsets = NULL
        buffer.internal = NULL
        self.memory._exports += 1
        self.memory.device._exports += 1

    def __releasebuffer__(self, Py_buffer *buffer):
        # Also runs inside a garbage collection (no_gc_clear keeps `memory` and its `device` set).
        cdef Memory memory = self.memory
        cdef Device device = memory.device
        memory._exports -= 1
        device._exports -= 1
        if memory._exports == 0:
            memory._release()  # the memory first: ek_free_device needs the device handle
        if device._exports == 0:
            device._release()


cdef class _Noop:
    """For `invoke bench`: a Cython method call that does nothing, to price a call's overhead."""
    def write(self, buf, offset=0) -> None:
        pass
