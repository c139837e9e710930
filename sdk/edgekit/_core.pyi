# Type stub of the Cython module edgekit._core (see _core.pyx).
#
# Live buffer exports of a Mapping (numpy arrays, memoryviews) keep the mapping, its Memory and the
# Device it was allocated through alive in the runtime: Memory.unmap(), Memory.free() and
# Device.close() never refuse because of them. They take effect for the caller at once (`mapped`,
# `closed` report it; later calls are the runtime's errors for that misuse) and in C when the last
# export is released.
import os
from collections.abc import Callable
from typing import Any, SupportsIndex, TypeAlias, TypeVar

import numpy as np
from typing_extensions import Buffer

# What write()/read(out=) take: anything exporting a C-contiguous buffer.
BufferLike: TypeAlias = Buffer | np.ndarray[Any, Any]

NOGIL_THRESHOLD: int
COHERENCE_MODES: dict[str, int]
BACKINGS: dict[str, int]

_M = TypeVar("_M", bound=Mapping)

def device_count() -> int: ...
def version() -> str: ...
def status_name(code: int) -> str: ...
def make_key(path: str | os.PathLike[str]) -> None: ...

class Device:
    id: int
    url: str | None
    def __init__(
        self,
        id: int | str = 0,
        coherence: str | None = None,
        heap_size: SupportsIndex | None = None,
        backing: str | None = None,
        *,
        board_device: int = 0,
        server_port: int = 9090,
        identity: str | os.PathLike[str] | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        strict_host_keys: bool = False,
        connect_timeout: float = 10.0,
        reply_timeout: float = 120.0,
        progress: Callable[[str, int, int], object] | None = None,
        key_file: str | os.PathLike[str] | None = None,
    ) -> None: ...
    @property
    def remote_info(self) -> dict[str, Any] | None: ...
    @property
    def handle(self) -> int: ...
    @property
    def closed(self) -> bool:
        """True once close() was called, even while views keep the handle open in the runtime."""
    def close(self) -> None:
        """Close the handle; ek_dev_free waits for live views of its memory. Again: DoubleFreeError."""
    def sync(self) -> None: ...
    def malloc(self, size: SupportsIndex) -> Memory: ...
    def copy(
        self,
        dst: Memory,
        dst_offset: SupportsIndex,
        src: Memory,
        src_offset: SupportsIndex,
        nbytes: SupportsIndex,
    ) -> None: ...
    @property
    def stats(self) -> dict[str, Any]: ...
    def coherence_report(self, clear: bool = False) -> list[tuple[str, int, int, int, str]]: ...

class Memory:
    device: Device
    size: int
    def __init__(self, device: Device, size: SupportsIndex) -> None: ...
    @property
    def handle(self) -> int: ...
    @property
    def mapped(self) -> bool:
        """False once unmap() or free() was called, even while views keep the mapping alive."""
    def write(self, buf: BufferLike, offset: SupportsIndex = 0) -> None: ...
    def read(
        self, nbytes: SupportsIndex | None = None, offset: SupportsIndex = 0, out: BufferLike | None = None
    ) -> Any: ...
    def flush(self, offset: SupportsIndex = 0, nbytes: SupportsIndex | None = None) -> None: ...
    def invalidate(self, offset: SupportsIndex = 0, nbytes: SupportsIndex | None = None) -> None: ...
    def _map_as(self, cls: type[_M]) -> _M: ...
    def map(self) -> Mapping:
        """A view of the mapping; reuses (and keeps) a mapping whose unmap still waits for views."""
    def unmap(self) -> None:
        """End the mapping; ek_mem_unmap waits for live views. Again: NotMappedError."""
    def free(self) -> None:
        """Free the memory; ek_free_device waits for live views. Again: DoubleFreeError."""

class Mapping:
    memory: Memory
    def __init__(self, memory: Memory) -> None: ...
    @property
    def address(self) -> int:
        """The mapping's CPU address; 0 once the memory was unmapped or freed."""
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

class _Noop:
    def write(self, buf: BufferLike, offset: SupportsIndex = 0) -> None: ...
