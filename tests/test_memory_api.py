"""The Python device and memory API, one behaviour per test: every function, method and property of
ek.Device, ek.DeviceMemory and ek.MappedView, in coherent mode (strict mode: test_coherence.py)."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import edgekit as ek
from conftest import HEAP_SIZE, MiB
from edgekit import _core

# ---- module level ----------------------------------------------------------------------------------


def test_device_count_follows_edgekit_devices() -> None:
    assert os.environ["EDGEKIT_DEVICES"] == "2"  # set by conftest.py before the runtime started
    count = ek.device_count()
    assert type(count) is int
    assert count == 2


def test_version_is_the_runtime_version() -> None:
    assert ek.__version__ == ek.runtime_version()
    parts = ek.__version__.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts)


def test_every_error_class_is_an_edgekit_error_with_its_own_code() -> None:
    classes = [getattr(ek, name) for name in ek.__all__ if name.endswith("Error") and name != "EdgeKitError"]
    assert all(issubclass(cls, ek.EdgeKitError) for cls in classes)
    # One class per status code; InvalidTypeError refines InvalidArgumentError (same code) as a TypeError.
    per_code = [cls for cls in classes if cls is not ek.InvalidTypeError]
    c_codes = {code for code in range(1, 100) if _core.status_name(code) != "EK_ERR_UNKNOWN"}
    assert {cls.code for cls in per_code} == c_codes
    assert len({cls.code for cls in per_code}) == len(per_code)
    assert all(cls.status_name == _core.status_name(cls.code) for cls in per_code)
    assert issubclass(ek.InvalidTypeError, ek.InvalidArgumentError) and issubclass(
        ek.InvalidTypeError, TypeError
    )
    assert ek.InvalidTypeError.code == ek.InvalidArgumentError.code


# ---- Device ----------------------------------------------------------------------------------------


def test_device_properties(dev: ek.Device) -> None:
    assert dev.id == 0
    assert type(dev.handle) is int and dev.handle != 0
    assert dev.closed is False
    assert dev.coherence == "coherent"
    assert repr(dev) == "<edgekit.Device 0 coherent memfd: 0/16777216 bytes used in 0 allocation(s)>"


def test_second_device_is_independent(dev: ek.Device, dev1: ek.Device) -> None:
    assert dev1.id == 1
    assert dev1.handle != dev.handle
    with dev1.malloc(1000):
        assert dev1.stats["allocations"] == 1
        assert dev.stats["allocations"] == 0  # each device has its own heap


def test_close_marks_closed_and_repr_says_so() -> None:
    device = ek.Device(1, heap_size=HEAP_SIZE)
    handle = device.handle
    device.close()
    assert device.closed is True
    assert device.handle == handle  # the value stays, the runtime knows it is freed
    assert repr(device) == "<edgekit.Device 1 (closed)>"
    with pytest.raises(ek.FreedHandleError):
        device.stats  # noqa: B018


def test_context_manager_closes_device() -> None:
    with ek.Device(1, heap_size=HEAP_SIZE) as device:
        assert isinstance(device, ek.Device)
        assert not device.closed
        device.malloc(128)  # a memory left allocated is released with the device
    assert device.closed
    # The device was really released: it can be opened again with another configuration.
    with ek.Device(1, heap_size=2 * MiB, coherence="strict") as again:
        assert again.stats["total"] == 2 * MiB
        assert again.stats["allocations"] == 0
        assert again.coherence == "strict"


def test_context_manager_closes_device_on_exception() -> None:
    with pytest.raises(RuntimeError, match="boom"), ek.Device(1, heap_size=HEAP_SIZE) as device:
        raise RuntimeError("boom")
    assert device.closed


def test_several_handles_share_one_device(dev: ek.Device) -> None:
    other = ek.Device(0)  # no configuration: takes the open device's
    try:
        assert other.handle != dev.handle
        assert other.stats["total"] == HEAP_SIZE
        with dev.malloc(100):
            assert other.stats["allocations"] == 1  # the same heap
        same = ek.Device(0, heap_size=HEAP_SIZE, coherence="coherent")  # the same explicit configuration
        same.close()
    finally:
        other.close()
    # Closing the other handles left `dev` open.
    assert dev.stats["total"] == HEAP_SIZE


def test_sync(dev: ek.Device) -> None:
    with dev.malloc(1 << 17) as mem:
        mem.write(b"\x01" * (1 << 17))
        dev.sync()
        assert mem.read(4) == b"\x01\x01\x01\x01"


@pytest.mark.parametrize("backing", ["memfd", "anonymous"])
def test_backing(backing: str) -> None:
    with ek.Device(1, heap_size=HEAP_SIZE, backing=backing) as device, device.malloc(100) as mem:
        assert device.stats["backing"] == backing
        mem.write(b"backed")
        assert mem.read(6) == b"backed"


def test_backing_auto_picks_dmabuf_or_memfd() -> None:
    expected = "dmabuf" if os.path.exists("/dev/dma_heap/system") else "memfd"
    with ek.Device(1, heap_size=HEAP_SIZE, backing="auto") as device:
        assert device.stats["backing"] == expected


@pytest.mark.skipif(os.path.exists("/dev/dma_heap/system"), reason="this host has a dma-buf heap")
def test_backing_dmabuf_without_dma_heap_is_unsupported() -> None:
    with pytest.raises(ek.UnsupportedError, match="/dev/dma_heap/system") as info:
        ek.Device(1, heap_size=HEAP_SIZE, backing="dmabuf")
    assert info.value.code == ek.UnsupportedError.code
    with ek.Device(1, heap_size=HEAP_SIZE) as device:  # nothing stayed open
        assert device.stats["backing"] == "memfd"


# ---- stats -----------------------------------------------------------------------------------------


def test_stats_of_a_fresh_device(dev: ek.Device) -> None:
    stats = dev.stats
    assert set(stats) == {
        "total",
        "used",
        "peak",
        "free",
        "largest_free",
        "allocations",
        "alignment",
        "coherence",
        "backing",
    }
    assert stats["total"] == HEAP_SIZE
    assert stats["alignment"] == 64
    assert stats["used"] == stats["peak"] == stats["allocations"] == 0
    assert stats["free"] == stats["largest_free"] == HEAP_SIZE
    assert stats["coherence"] == "coherent"
    assert stats["backing"] == "memfd"


@pytest.mark.parametrize("size", [1, 63, 64, 65, 100, 4096, 1_000_003])
def test_used_grows_by_the_size_rounded_to_64(dev: ek.Device, size: int) -> None:
    rounded = (size + 63) // 64 * 64
    with dev.malloc(size) as mem:
        assert mem.size == size  # the size asked for, not the rounded one
        stats = dev.stats
        assert stats["used"] == rounded
        assert stats["free"] == HEAP_SIZE - rounded
        assert stats["largest_free"] == HEAP_SIZE - rounded
        assert stats["allocations"] == 1
        assert stats["peak"] == rounded
    after = dev.stats
    assert after["used"] == 0 and after["allocations"] == 0
    assert after["largest_free"] == HEAP_SIZE  # coalesced back into one block
    assert after["peak"] == rounded  # peak remembers


def test_peak_and_largest_free_track_fragmentation(dev: ek.Device) -> None:
    a, b, c = dev.malloc(MiB), dev.malloc(MiB), dev.malloc(MiB)
    assert dev.stats["peak"] == 3 * MiB
    b.free()  # a hole between a and c
    stats = dev.stats
    assert stats["used"] == 2 * MiB
    assert stats["allocations"] == 2
    assert stats["peak"] == 3 * MiB
    assert stats["largest_free"] == HEAP_SIZE - 3 * MiB  # the tail, larger than the 1 MiB hole
    a.free()  # coalesces with the hole: 2 MiB at the front
    c.free()  # everything coalesces
    stats = dev.stats
    assert stats["used"] == 0 and stats["largest_free"] == HEAP_SIZE and stats["peak"] == 3 * MiB


def test_the_whole_heap_can_be_allocated(dev: ek.Device) -> None:
    with dev.malloc(HEAP_SIZE) as mem:
        stats = dev.stats
        assert stats["used"] == HEAP_SIZE and stats["free"] == 0 and stats["largest_free"] == 0
        with pytest.raises(ek.OutOfMemoryError):
            dev.malloc(1)
        mem.write(b"end", HEAP_SIZE - 3)
        assert mem.read(3, HEAP_SIZE - 3) == b"end"


def test_peak_restarts_when_the_device_is_reopened() -> None:
    with ek.Device(1, heap_size=HEAP_SIZE) as device:
        device.malloc(4096).free()
        assert device.stats["peak"] == 4096
    with ek.Device(1, heap_size=HEAP_SIZE) as device:
        assert device.stats["peak"] == 0


# ---- malloc / DeviceMemory -------------------------------------------------------------------------


def test_malloc_returns_device_memory(dev: ek.Device) -> None:
    mem = dev.malloc(100)
    try:
        assert isinstance(mem, ek.DeviceMemory)
        assert mem.size == 100
        assert mem.device is dev
        assert type(mem.handle) is int and mem.handle not in (0, dev.handle)
        assert mem.mapped is False
        assert repr(mem) == f"<edgekit.DeviceMemory 0x{mem.handle:016x}: 100 bytes on device 0>"
        with dev.malloc(100) as other:
            assert other.handle != mem.handle
    finally:
        mem.free()


def test_malloc_accepts_integer_like_sizes(dev: ek.Device) -> None:
    size = np.int64(200)  # e.g. a numpy product of a shape
    with dev.malloc(size) as mem:
        assert mem.size == 200


def test_allocations_are_64_byte_aligned(dev: ek.Device) -> None:
    mems = [dev.malloc(size) for size in (1, 3, 100, 65, 7)]
    try:
        for mem in mems:
            view = mem.map()
            assert view.address % dev.stats["alignment"] == 0
            del view
            mem.unmap()
    finally:
        for mem in mems:
            mem.free()


def test_memory_context_manager_frees(dev: ek.Device) -> None:
    with dev.malloc(256) as mem:
        assert isinstance(mem, ek.DeviceMemory)
        assert dev.stats["allocations"] == 1
    assert dev.stats["allocations"] == 0
    with pytest.raises(ek.DoubleFreeError):
        mem.free()


def test_memory_context_manager_frees_on_exception(dev: ek.Device) -> None:
    with pytest.raises(KeyError), dev.malloc(256):
        raise KeyError("x")
    assert dev.stats["allocations"] == 0


def test_free_returns_memory_to_the_heap(dev: ek.Device) -> None:
    mem = dev.malloc(5000)
    mem.free()
    assert dev.stats["used"] == 0


def test_free_of_a_mapped_memory_unmaps_it(dev: ek.Device) -> None:
    mem = dev.malloc(100)
    view = mem.map()
    assert mem.mapped
    mem.free()
    assert not mem.mapped
    assert view.address == 0
    with pytest.raises(ek.NotMappedError):
        memoryview(view)


def test_garbage_collected_memory_is_freed(dev: ek.Device) -> None:
    dev.malloc(1000)  # dropped at once
    assert dev.stats["allocations"] == 0


# ---- write / read ----------------------------------------------------------------------------------


def test_write_read_roundtrip_bytes(dev: ek.Device) -> None:
    with dev.malloc(16) as mem:
        mem.write(b"0123456789abcdef")
        data = mem.read()
        assert type(data) is bytes
        assert data == b"0123456789abcdef"


def test_write_at_offset(dev: ek.Device) -> None:
    with dev.malloc(16) as mem:
        mem.write(bytes(16))
        mem.write(b"XYZ", offset=5)
        assert mem.read() == b"\0" * 5 + b"XYZ" + b"\0" * 8
        mem.write(b"!", 15)  # the very last byte
        assert mem.read(1, 15) == b"!"


@pytest.mark.parametrize(
    "make",
    [
        bytes,
        bytearray,
        lambda b: memoryview(bytearray(b)),
        lambda b: memoryview(b)[2:],
        lambda b: np.frombuffer(b, np.uint8),
    ],
    ids=["bytes", "bytearray", "memoryview", "memoryview-slice", "numpy"],
)
def test_write_from_bytes_like_objects(dev: ek.Device, make: Any) -> None:
    payload = bytes(range(40))
    src = make(payload)
    expected = bytes(memoryview(src))
    with dev.malloc(64) as mem:
        mem.write(bytes(64))
        mem.write(src, 3)
        assert mem.read(len(expected), 3) == expected
        assert mem.read(3) == b"\0\0\0"


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64, np.complex64, np.bool_]
)
def test_write_numpy_read_into_numpy(dev: ek.Device, dtype: npt.DTypeLike) -> None:
    rng = np.random.default_rng(1)
    src = (rng.standard_normal((6, 7)) * 100).astype(dtype)
    with dev.malloc(src.nbytes + 8) as mem:
        mem.write(src, offset=8)
        out = np.empty_like(src)
        result = mem.read(offset=8, out=out)
        assert result is out
        np.testing.assert_array_equal(out, src)
        assert mem.read(src.nbytes, 8) == src.tobytes()


def test_read_defaults_to_the_rest_of_the_memory(dev: ek.Device) -> None:
    with dev.malloc(10) as mem:
        mem.write(b"abcdefghij")
        assert mem.read() == b"abcdefghij"
        assert mem.read(offset=7) == b"hij"
        assert mem.read(3) == b"abc"
        assert mem.read(2, 4) == b"ef"
        assert mem.read(nbytes=2, offset=8) == b"ij"


def test_read_into_out_defaults_to_len_out(dev: ek.Device) -> None:
    with dev.malloc(10) as mem:
        mem.write(b"abcdefghij")
        out = bytearray(4)
        assert mem.read(out=out, offset=2) is out
        assert out == b"cdef"


def test_read_nbytes_into_larger_out_fills_only_the_front(dev: ek.Device) -> None:
    with dev.malloc(10) as mem:
        mem.write(b"abcdefghij")
        out = bytearray(b"........")
        mem.read(3, 1, out)
        assert out == b"bcd....."


def test_read_into_numpy_of_another_dtype(dev: ek.Device) -> None:
    values = np.arange(16, dtype=np.float32)
    with dev.malloc(values.nbytes) as mem:
        mem.write(values)
        out = np.zeros(8, dtype=np.float64)  # 64 bytes: the same bytes, reinterpreted
        mem.read(out=out)
        np.testing.assert_array_equal(out.view(np.float32), values)


def test_large_write_and_read_release_the_gil_path(dev: ek.Device) -> None:
    # >= 64 KiB copies run without the GIL; the data must be the same either way.
    data = np.random.default_rng(2).integers(0, 256, 3 * MiB + 5, dtype=np.uint8)
    with dev.malloc(data.nbytes) as mem:
        mem.write(data)
        out = np.empty_like(data)
        mem.read(out=out)
        np.testing.assert_array_equal(out, data)
        assert mem.read() == data.tobytes()


def test_write_to_a_mapped_memory_is_seen_through_the_mapping(dev: ek.Device) -> None:
    with dev.malloc(64) as mem:
        view = mem.map()
        arr = view.ndarray(np.uint8, 64)
        mem.write(b"\x09" * 64)
        assert (arr == 9).all()  # coherent: the mapping is the device memory
        del arr, view
        mem.unmap()


# ---- copy ------------------------------------------------------------------------------------------


def test_copy_between_memories(dev: ek.Device) -> None:
    with dev.malloc(100) as src, dev.malloc(200) as dst:
        src.write(bytes(range(100)))
        dst.write(bytes(200))
        dev.copy(dst, 50, src, 10, 30)
        assert dst.read() == bytes(50) + bytes(range(10, 40)) + bytes(120)
        assert src.read() == bytes(range(100))


def test_copy_large_memory(dev: ek.Device) -> None:
    data = np.random.default_rng(3).integers(0, 256, 2 * MiB, dtype=np.uint8)
    with dev.malloc(data.nbytes) as src, dev.malloc(data.nbytes) as dst:
        src.write(data)
        dev.copy(dst, 0, src, 0, data.nbytes)
        assert dst.read() == data.tobytes()


def test_copy_overlapping_forward_is_a_memmove(dev: ek.Device) -> None:
    ref = bytearray(range(200))
    with dev.malloc(200) as mem:
        mem.write(ref)
        dev.copy(mem, 10, mem, 0, 150)  # destination after source, overlapping
        ref[10:160] = ref[0:150]
        assert mem.read() == bytes(ref)


def test_copy_overlapping_backward_is_a_memmove(dev: ek.Device) -> None:
    ref = bytearray(range(200))
    with dev.malloc(200) as mem:
        mem.write(ref)
        dev.copy(mem, 0, mem, 10, 150)  # destination before source, overlapping
        ref[0:150] = ref[10:160]
        assert mem.read() == bytes(ref)


def test_copy_large_overlapping(dev: ek.Device) -> None:
    n = 1 << 20
    data = np.random.default_rng(4).integers(0, 256, n + 4096, dtype=np.uint8)
    with dev.malloc(data.nbytes) as mem:
        mem.write(data)
        dev.copy(mem, 4096, mem, 0, n)
        expected = data.copy()
        expected[4096:] = data[:n]
        assert mem.read() == expected.tobytes()


def test_copy_onto_itself(dev: ek.Device) -> None:
    with dev.malloc(64) as mem:
        mem.write(bytes(range(64)))
        dev.copy(mem, 0, mem, 0, 64)
        assert mem.read() == bytes(range(64))


def test_copy_through_another_handle_of_the_same_device(dev: ek.Device) -> None:
    other = ek.Device(0)
    try:
        with dev.malloc(8) as a, dev.malloc(8) as b:
            a.write(b"12345678")
            other.copy(b, 0, a, 0, 8)
            assert b.read() == b"12345678"
    finally:
        other.close()


# ---- map / flush / invalidate / unmap --------------------------------------------------------------


def test_map_returns_a_mapped_view(dev: ek.Device) -> None:
    with dev.malloc(300) as mem:
        view = mem.map()
        assert isinstance(view, ek.MappedView)
        assert mem.mapped is True
        assert view.memory is mem
        assert len(view) == 300
        assert view.address != 0
        again = mem.map()  # mapping a mapped memory: the same address
        assert again.address == view.address
        del view, again
        mem.unmap()
        assert mem.mapped is False


def test_flush_and_invalidate_in_coherent_mode(dev: ek.Device) -> None:
    with dev.malloc(256) as mem:
        view = mem.map()
        arr = view.ndarray(np.uint8, 256)
        arr[:] = 3
        mem.flush()
        mem.flush(64)
        mem.flush(10, 20)
        mem.flush(offset=255, nbytes=1)
        mem.invalidate()
        mem.invalidate(128, 128)
        mem.invalidate(offset=3)
        assert (arr == 3).all()  # coherent maintenance never changes data
        assert mem.read() == b"\x03" * 256
        del arr, view
        mem.unmap()
    assert dev.coherence_report() == []


def test_flush_of_an_unmapped_memory_is_harmless(dev: ek.Device) -> None:
    with dev.malloc(100) as mem:
        mem.write(b"z" * 100)
        mem.flush()
        mem.invalidate(0, 100)
        assert mem.read() == b"z" * 100


def test_mapped_view_context_manager_unmaps(dev: ek.Device) -> None:
    with dev.malloc(64) as mem:
        with mem.map() as view:
            assert isinstance(view, ek.MappedView)
            assert mem.mapped
        assert not mem.mapped


def test_map_after_unmap_maps_again(dev: ek.Device) -> None:
    with dev.malloc(64) as mem:
        mem.write(b"\x05" * 64)
        mem.map()
        mem.unmap()
        view = mem.map()
        assert mem.mapped
        assert bytes(memoryview(view)) == b"\x05" * 64
        mem.unmap()


# ---- zero-copy views -------------------------------------------------------------------------------


def test_ndarray_is_zero_copy(dev: ek.Device) -> None:
    with dev.malloc(4096) as mem:
        mem.write(bytes(4096))
        view = mem.map()
        arr = view.ndarray(np.float32, (32, 32))
        assert arr.shape == (32, 32) and arr.dtype == np.float32
        assert arr.__array_interface__["data"][0] == view.address
        assert arr.flags.writeable and arr.flags.c_contiguous and not arr.flags.owndata
        arr[:] = np.arange(1024, dtype=np.float32).reshape(32, 32)
        # No flush, no copy: in coherent mode the device already has the bytes.
        assert mem.read() == np.arange(1024, dtype=np.float32).tobytes()
        # And the other way: a device write is at once visible in the array.
        mem.write(np.float32(-1.5).tobytes(), offset=4 * 100)
        assert arr[3, 4] == -1.5
        del arr, view
        mem.unmap()


@pytest.mark.parametrize("offset", [0, 8, 64, 1000])
def test_ndarray_at_offset(dev: ek.Device, offset: int) -> None:
    with dev.malloc(2048) as mem:
        view = mem.map()
        arr = view.ndarray(np.int16, 10, offset)
        assert arr.shape == (10,)
        assert arr.__array_interface__["data"][0] == view.address + offset
        arr[:] = np.arange(10, dtype=np.int16)
        assert mem.read(20, offset) == np.arange(10, dtype=np.int16).tobytes()
        del arr, view
        mem.unmap()


def test_ndarray_may_fill_the_mapping_exactly(dev: ek.Device) -> None:
    with dev.malloc(100) as mem:
        view = mem.map()
        arr = view.ndarray(np.uint32, (5, 5))  # 100 bytes
        arr[-1, -1] = 0xDEADBEEF
        assert mem.read(4, 96) == np.uint32(0xDEADBEEF).tobytes()
        del arr, view
        mem.unmap()


def test_two_ndarrays_of_one_view_share_memory(dev: ek.Device) -> None:
    with dev.malloc(1024) as mem:
        view = mem.map()
        a = view.ndarray(np.uint8, 1024)
        b = view.ndarray(np.float64, (8, 16))
        c = view.ndarray(np.uint8, 16, offset=512)
        assert np.shares_memory(a, b)
        assert np.shares_memory(a, c)
        b[0, 0] = 1.0
        assert a[:8].tobytes() == np.float64(1.0).tobytes()
        c[:] = 7
        assert (a[512:528] == 7).all()
        del a, b, c, view
        mem.unmap()


def test_memoryview_of_a_mapped_view(dev: ek.Device) -> None:
    with dev.malloc(128) as mem:
        view = mem.map()
        mv = memoryview(view)
        assert mv.format == "B" and mv.itemsize == 1 and mv.ndim == 1
        assert mv.shape == (128,) and mv.nbytes == 128
        assert not mv.readonly and mv.c_contiguous
        mv[0:5] = b"hello"
        assert mem.read(5) == b"hello"
        mv.release()
        del view
        mem.unmap()


def test_ndarray_outlives_the_mapped_view_object(dev: ek.Device) -> None:
    with dev.malloc(64) as mem:
        arr = mem.map().ndarray(np.uint8, 64)  # the MappedView object is dropped at once
        gc.collect()
        arr[:] = 42
        assert mem.read() == b"\x2a" * 64
        mem.write(b"\x01" * 64)
        assert (arr == 1).all()
        del arr
        mem.unmap()


# ---- views outlive unmap(), free() and close(): the runtime's releases wait for them -------------------


def failure(call: Callable[[], object], handle: int) -> tuple[type[BaseException], str]:
    """The error class and message of `call`, with `handle` (in hex) replaced by "H"."""
    with pytest.raises(ek.EdgeKitError) as info:
        call()
    return type(info.value), info.value.message.replace(f"0x{handle:016x}", "H")


def assert_released(device_id: int) -> None:
    """The device was really closed (another configuration is accepted: nothing holds it open) and a
    new handle sees a heap with nothing allocated."""
    with ek.Device(device_id) as again:
        stats = again.stats
    assert stats["used"] == 0 and stats["allocations"] == 0 and stats["free"] == stats["total"], stats
    with ek.Device(device_id, heap_size=HEAP_SIZE // 2, backing="anonymous") as other:
        assert other.stats["allocations"] == 0


def test_leaving_the_with_block_while_a_view_exists() -> None:
    """No `del` before the block ends: unmap() and the exit succeed, the view stays valid, and the
    runtime's releases happen when the view goes."""
    with ek.Device(0) as device:
        mem = device.malloc(4096)
        a = mem.map().ndarray(np.float32, (1024,))
        a[:] = 3.0
        mem.flush()
        mem.unmap()
        assert not mem.mapped
    assert device.closed
    assert repr(device) == "<edgekit.Device 0 (closed)>"
    assert (a == 3.0).all()  # the view still reads the memory...
    a[::2] = 4.0  # ...and writes it
    assert (a[:4] == [4.0, 3.0, 4.0, 3.0]).all()
    with pytest.raises(ek.FreedHandleError, match=f"device handle 0x{device.handle:016x} was freed"):
        mem.read(4)
    with pytest.raises(ek.FreedHandleError, match="use after free"):
        device.stats  # noqa: B018
    with pytest.raises(ek.DoubleFreeError, match="double free"):
        device.close()
    del a
    gc.collect()
    assert_released(0)


def test_free_with_a_live_view_frees_when_the_view_goes(dev: ek.Device) -> None:
    mem = dev.malloc(4096)
    a = mem.map().ndarray(np.uint8, 4096)
    a[:] = 7
    mem.free()
    assert not mem.mapped
    assert dev.stats["allocations"] == 1  # in the runtime the memory lives on under `a`
    a[:100] = 8
    assert (a[:100] == 8).all() and (a[100:] == 7).all()
    with pytest.raises(ek.DoubleFreeError, match=rf"memory handle 0x{mem.handle:016x} was already freed"):
        mem.free()
    del a
    gc.collect()
    stats = dev.stats
    assert stats["used"] == 0 and stats["allocations"] == 0 and stats["free"] == stats["total"]
    with pytest.raises(ek.DoubleFreeError):
        mem.free()


MEMORY_CALLS: dict[str, Callable[[ek.Device, ek.DeviceMemory, ek.DeviceMemory], object]] = {
    "write": lambda d, m, o: m.write(b"x"),
    "read": lambda d, m, o: m.read(1),
    "read-all": lambda d, m, o: m.read(),
    "read-out": lambda d, m, o: m.read(out=bytearray(4)),
    "flush": lambda d, m, o: m.flush(),
    "invalidate": lambda d, m, o: m.invalidate(0, 1),
    "map": lambda d, m, o: m.map(),
    "unmap": lambda d, m, o: m.unmap(),
    "free": lambda d, m, o: m.free(),
    "copy-to": lambda d, m, o: d.copy(m, 0, o, 0, 8),
    "copy-from": lambda d, m, o: d.copy(o, 0, m, 0, 8),
}


@pytest.mark.parametrize("name", list(MEMORY_CALLS))
def test_a_memory_freed_with_live_views_fails_as_the_runtime_does_after_free(
    dev: ek.Device, name: str
) -> None:
    """A call through a memory whose free() waits for views raises what the runtime raises for the
    same call after a plain free()."""
    call = MEMORY_CALLS[name]
    other = dev.malloc(64)
    freed = dev.malloc(64)
    freed.free()
    expected = failure(lambda: call(dev, freed, other), freed.handle)
    assert expected[0] in (ek.FreedHandleError, ek.DoubleFreeError), expected
    waiting = dev.malloc(64)
    view = memoryview(waiting.map())
    waiting.free()
    try:
        assert failure(lambda: call(dev, waiting, other), waiting.handle) == expected
        assert dev.stats["allocations"] == 2  # `other`, and `waiting` under the view
    finally:
        view.release()
        other.free()
    assert dev.stats["allocations"] == 0


DEVICE_CALLS: dict[str, Callable[[ek.Device, ek.DeviceMemory], object]] = {
    "stats": lambda d, m: d.stats,
    "sync": lambda d, m: d.sync(),
    "malloc": lambda d, m: d.malloc(8),
    "copy": lambda d, m: d.copy(m, 0, m, 8, 8),
    "report": lambda d, m: d.coherence_report(),
    "close": lambda d, m: d.close(),
    "write": lambda d, m: m.write(b"x"),
    "read": lambda d, m: m.read(1),
    "flush": lambda d, m: m.flush(),
    "map": lambda d, m: m.map(),
    "unmap": lambda d, m: m.unmap(),
    "free": lambda d, m: m.free(),
}


@pytest.mark.parametrize("name", list(DEVICE_CALLS))
def test_a_device_closed_with_live_views_fails_as_the_runtime_does_after_close(name: str) -> None:
    """A call through a device handle whose close() waits for views (or through its memory) raises
    what the runtime raises for the same call after a plain close(). `keeper` holds device 1 open, so
    the memories of both closed handles stay allocated until it closes."""
    call = DEVICE_CALLS[name]
    keeper = ek.Device(1, heap_size=HEAP_SIZE)
    try:
        closed = ek.Device(1)
        closed_mem = closed.malloc(64)
        closed.close()
        expected = failure(lambda: call(closed, closed_mem), closed.handle)
        assert expected[0] in (ek.FreedHandleError, ek.DoubleFreeError), expected
        waiting = ek.Device(1)
        waiting_mem = waiting.malloc(64)
        view = memoryview(waiting.malloc(64).map())
        waiting.close()
        assert waiting.closed and not waiting_mem.mapped
        assert failure(lambda: call(waiting, waiting_mem), waiting.handle) == expected
        view.release()  # closes `waiting` in the runtime
        assert failure(lambda: call(waiting, waiting_mem), waiting.handle) == expected
    finally:
        keeper.close()
    assert_released(1)


def test_unmap_with_a_live_view_waits_and_map_reuses_the_mapping(dev: ek.Device) -> None:
    with dev.malloc(64) as plain, dev.malloc(64) as mem:
        plain.map()
        plain.unmap()
        view = mem.map()
        address = view.address
        arr = view.ndarray(np.uint8, 64)
        mem.unmap()
        assert not mem.mapped and view.address == 0
        arr[0] = 1  # the mapping is still there (in coherent mode, the device memory itself)
        assert mem.read(1) == b"\x01"
        mem.write(b"\x02")  # the memory works as any unmapped memory does
        mem.flush()
        mem.invalidate()
        assert arr[0] == 2
        # A second unmap() is the runtime's NotMappedError, as for a plain memory unmapped twice.
        assert failure(mem.unmap, mem.handle) == failure(plain.unmap, plain.handle)
        with pytest.raises(ek.NotMappedError, match="not mapped"):
            memoryview(view)  # no new views of an unmapped memory
        again = mem.map()  # cancels the pending unmap: the same mapping again
        assert mem.mapped and again.address == view.address == address
        assert np.shares_memory(arr, again.ndarray(np.uint8, 64))
        mem.unmap()  # waits for `arr` again
        del arr
        gc.collect()
        # Unmapped in the runtime too: its own unmap says so.
        assert failure(mem.unmap, mem.handle) == failure(plain.unmap, plain.handle)
        mem.map()
        mem.unmap()  # no views: at once
        assert not mem.mapped


def test_close_with_a_live_view_waits_for_the_view() -> None:
    device = ek.Device(1, heap_size=HEAP_SIZE)
    mem = device.malloc(64)
    mv = memoryview(mem.map())
    device.close()
    assert device.closed and not mem.mapped
    mv[0] = 9
    assert mv[0] == 9
    with ek.Device(1) as probe:  # open in the runtime still, with the memory
        assert probe.stats["allocations"] == 1
    mv.release()
    assert_released(1)


def test_unmap_free_and_close_all_wait_for_one_view() -> None:
    with ek.Device(1, heap_size=HEAP_SIZE) as device, device.malloc(4096) as mem:
        a = mem.map().ndarray(np.float32, (1024,))
        a[:] = 3.0
        mem.unmap()
    with ek.Device(1) as probe:
        assert probe.stats["allocations"] == 1
    a += 1.0
    assert (a == 4.0).all()
    del a
    gc.collect()
    assert_released(1)


def test_export_after_unmap_is_not_mapped(dev: ek.Device) -> None:
    with dev.malloc(64) as mem:
        view = mem.map()
        mem.unmap()
        assert view.address == 0
        with pytest.raises(ek.NotMappedError, match="not mapped") as info:
            view.ndarray(np.uint8, 64)
        assert info.value.code == ek.NotMappedError.code
        with pytest.raises(ek.NotMappedError):
            memoryview(view)


# ---- lifetimes under the garbage collector -------------------------------------------------------------


def test_a_memory_in_a_reference_cycle_is_freed_by_the_collector(dev: ek.Device) -> None:
    mem = dev.malloc(4096)
    mem.me = mem  # type: ignore[attr-defined]  # a cycle through the instance dict
    del mem
    gc.collect()
    assert dev.stats["allocations"] == 0


def test_collecting_a_cycle_that_holds_a_view_does_not_crash(dev: ek.Device) -> None:
    def make_garbage() -> None:
        mem = dev.malloc(4096)
        held: list[object] = [memoryview(mem.map())]
        held.append(held)  # an ordinary garbage cycle that happens to hold a buffer export

    make_garbage()
    gc.collect()  # used to crash in __releasebuffer__ after the collector cleared `memory`
    assert dev.stats["allocations"] == 0


def test_a_view_keeps_collected_memory_and_device_objects_alive() -> None:
    def view_only() -> npt.NDArray[np.uint8]:
        device = ek.Device(1, heap_size=HEAP_SIZE)
        mem = device.malloc(4096)
        device.me = device  # type: ignore[attr-defined]  # reference cycles through the instance dicts
        mem.me = mem  # type: ignore[attr-defined]
        arr: npt.NDArray[np.uint8] = mem.map().ndarray(np.uint8, 4096)
        return arr

    a = view_only()
    gc.collect()
    a[:] = 5
    assert (a == 5).all()
    del a
    gc.collect()
    assert_released(1)


def test_collecting_a_cycle_of_released_objects_and_their_views() -> None:
    def make_garbage() -> None:
        device = ek.Device(1, heap_size=HEAP_SIZE)
        mem = device.malloc(4096)
        view = mem.map()
        # memoryviews, not numpy arrays: the collector cannot see through an array to its base, so a
        # cycle through an array is never collected (numpy's limitation, whatever the array views).
        held: list[object] = [device, mem, view, memoryview(view), memoryview(view)[8:16]]
        held.append(held)
        mem.held = held  # type: ignore[attr-defined]
        device.held = held  # type: ignore[attr-defined]
        mem.unmap()
        mem.free()
        device.close()  # all three wait for the views in `held`

    make_garbage()
    gc.collect()
    assert_released(1)
