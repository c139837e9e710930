"""The Pythonic device and memory API, on top of the Cython layer in edgekit._core.

The classes subclass the Cython types, so the hot calls (``write``, ``read``, ``flush``) are single
Cython calls; this module adds context managers, numpy views and readable reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import TracebackType
from typing import Any, SupportsIndex

import numpy as np
import numpy.typing as npt

from edgekit import _core
from edgekit.errors import InvalidArgumentError, OutOfRangeError


def device_count() -> int:
    """Number of devices in this process (``EDGEKIT_DEVICES``, default 1)."""
    return _core.device_count()


@dataclass(frozen=True)
class CoherenceViolation:
    """One finding of the strict-coherence checker (see docs/memory.md)."""

    kind: str  # "unflushed_read", "stale_mapping", "write_conflict" or "unflushed_unmap"
    memory: int  # the handle of the memory (DeviceMemory.handle)
    offset: int
    nbytes: int
    message: str


class Device(_core.Device):
    """An open device: ``Device(0)`` on this machine, ``Device("tcp://HOST:PORT")`` or
    ``Device("ssh://user@board")`` on a board's remote_server (docs/remote-protocol.md; keywords
    ``board_device``, ``server_port``, ``identity``, ``known_hosts``, ``strict_host_keys``,
    ``connect_timeout``, ``reply_timeout``, ``progress(what, done, total)`` and ``key_file`` (a paired
    server's key) apply to those).
    ``coherence`` is ``"coherent"`` (default) or ``"strict"``; ``heap_size`` in bytes and ``backing``
    (``"auto"``, ``"memfd"``, ``"dmabuf"``, ``"anonymous"``) apply when the device is first opened.
    Use it as a context manager, or call ``close()``: numpy views of its memory that are still alive
    then keep the device open in the runtime until they are deleted."""

    def __enter__(self) -> Device:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f" on {self.url}" if self.url else ""
        if self.closed:
            return f"<edgekit.Device {self.id}{where} (closed)>"
        stats = self.stats
        return (
            f"<edgekit.Device {self.id}{where} {stats['coherence']} {stats['backing']}: "
            f"{stats['used']}/{stats['total']} bytes used in {stats['allocations']} allocation(s)>"
        )

    @property
    def coherence(self) -> str:
        return str(self.stats["coherence"])

    def malloc(self, size: SupportsIndex) -> DeviceMemory:
        """Allocate ``size`` bytes of device memory (64-byte aligned)."""
        return DeviceMemory(self, size)

    def coherence_report(self, clear: bool = False) -> list[CoherenceViolation]:  # type: ignore[override]
        """What the strict-coherence checker recorded on this device, oldest first."""
        return [
            CoherenceViolation(kind.removeprefix("EK_COH_").lower(), mem, offset, nbytes, message)
            for kind, mem, offset, nbytes, message in super().coherence_report(clear)
        ]


class DeviceMemory(_core.Memory):
    """A block of device memory: ``write``/``read`` copy, ``map()`` gives a zero-copy CPU view.
    ``unmap()`` and ``free()`` (and the context manager exit) never wait for numpy views: the memory
    is unmapped or freed for the caller at once, and in the runtime when the last view is deleted."""

    def __enter__(self) -> DeviceMemory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.free()

    def __repr__(self) -> str:
        return f"<edgekit.DeviceMemory 0x{self.handle:016x}: {self.size} bytes on device {self.device.id}>"

    def map(self) -> MappedView:
        """Map the memory for the CPU. Unmapped by ``unmap()``, ``free()`` or the context manager exit;
        until then (or while numpy views keep an unmapped mapping alive) this returns another view of
        the same mapping."""
        return self._map_as(MappedView)


class MappedView(_core.Mapping):
    """The CPU view of a mapped DeviceMemory. Its bytes are the device memory itself in coherent mode
    and the CPU-cache shadow in strict mode. As a context manager it unmaps on exit."""

    def ndarray(
        self, dtype: npt.DTypeLike, shape: int | tuple[int, ...], offset: int = 0
    ) -> npt.NDArray[Any]:
        """A numpy array over the mapping (zero-copy): ``shape`` items of ``dtype`` from byte ``offset``."""
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        if any(d < 0 for d in dims) or offset < 0:
            raise InvalidArgumentError(f"shape {dims} and offset {offset} must not be negative")
        dt = np.dtype(dtype)
        count = math.prod(dims)
        if offset + count * dt.itemsize > len(self):
            raise OutOfRangeError(
                f"{count} x {dt} ({count * dt.itemsize} bytes) from offset {offset} does not fit the "
                f"{len(self)}-byte mapping"
            )
        flat: npt.NDArray[Any] = np.frombuffer(memoryview(self), dtype=dt, count=count, offset=offset)
        return flat.reshape(dims)

    def __enter__(self) -> MappedView:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.memory.unmap()
