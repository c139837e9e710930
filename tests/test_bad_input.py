"""Bad input, one test each: the exception class, its ``code`` (checked against the C enum parsed from
status.h), a message naming the specific problem, and a heap left exactly as it was (``dev.stats``
unchanged)."""

from __future__ import annotations

import functools
import gc
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import edgekit as ek
from conftest import HEAP_SIZE, STATUS

SIZE = 100  # the size of the `mem` fixture


@pytest.fixture
def mem(dev: ek.Device) -> Iterator[ek.DeviceMemory]:
    """100 bytes on device 0, holding 0, 1, ..., 99."""
    m = dev.malloc(SIZE)
    m.write(bytes(range(SIZE)))
    yield m
    m.free()


@pytest.fixture
def freed(dev: ek.Device) -> ek.DeviceMemory:
    """A memory that was allocated and freed."""
    m = dev.malloc(SIZE)
    m.free()
    return m


def mentions(message: str, *parts: object) -> None:
    """Assert that `message` contains each part (numbers as whole numbers, not as digits of others)."""
    for part in parts:
        if isinstance(part, int):
            assert re.search(rf"(?<![0-9a-fx]){part}(?![0-9])", message), f"{part} not named in: {message!r}"
        else:
            assert str(part).lower() in message.lower(), f"{part!r} not named in: {message!r}"


def hexh(handle: int) -> str:
    return f"0x{handle:016x}"


def check_fails(
    devices: Any | list[Any],
    exc: type[BaseException],
    status: str,
    call: Callable[[], object],
    *named: object,
) -> str:
    """Run `call`, expecting `exc` with C status `status`; the message must name each of `named`; the
    stats of every device in `devices` must be unchanged. Returns the message."""
    devs = devices if isinstance(devices, list) else [devices]
    before = [d.stats for d in devs]
    reports = [d.coherence_report() for d in devs]
    with pytest.raises(exc) as info:
        call()
    err = info.value
    assert type(err) is exc, f"expected exactly {exc.__name__}, got {type(err).__name__}"
    assert isinstance(err, ek.EdgeKitError)
    assert err.code == STATUS[status], f"code {err.code}, the C header says {status} = {STATUS[status]}"
    assert err.status_name == status
    assert status in str(err)
    mentions(err.message, *named)
    assert [d.stats for d in devs] == before, "a failed call changed the heap"
    assert [d.coherence_report() for d in devs] == reports
    return str(err.message)


# ---- the exception classes agree with the C header ---------------------------------------------------


def test_status_codes_match_the_c_header() -> None:
    classes = {
        cls.status_name: cls
        for cls in vars(ek).values()
        if isinstance(cls, type) and issubclass(cls, ek.EdgeKitError)
    }
    errors = {name: code for name, code in STATUS.items() if name != "EK_OK"}
    assert set(errors) <= set(classes), f"no Python class for {set(errors) - set(classes)}"
    for name, code in errors.items():
        assert classes[name].code == code, name


# ---- sizes -------------------------------------------------------------------------------------------


def test_malloc_zero(dev: ek.Device) -> None:
    check_fails(dev, ek.InvalidArgumentError, "EK_ERR_INVALID_ARG", lambda: dev.malloc(0), "size is 0")


def test_malloc_negative(dev: ek.Device) -> None:
    check_fails(dev, ek.InvalidArgumentError, "EK_ERR_INVALID_ARG", lambda: dev.malloc(-1), "size", -1)


def test_malloc_beyond_size_t(dev: ek.Device) -> None:
    check_fails(
        dev, ek.OutOfMemoryError, "EK_ERR_OUT_OF_MEMORY", lambda: dev.malloc(2**64 + 5), "size", 2**64 + 5
    )


def test_malloc_one_byte_more_than_the_heap(dev: ek.Device) -> None:
    check_fails(
        dev,
        ek.OutOfMemoryError,
        "EK_ERR_OUT_OF_MEMORY",
        lambda: dev.malloc(HEAP_SIZE + 1),
        HEAP_SIZE + 1,
        "device 0",
        "largest free block",
    )


def test_malloc_more_than_the_largest_free_block(dev: ek.Device) -> None:
    with dev.malloc(HEAP_SIZE // 2):
        largest = dev.stats["largest_free"]
        check_fails(
            dev,
            ek.OutOfMemoryError,
            "EK_ERR_OUT_OF_MEMORY",
            lambda: dev.malloc(largest + 1),
            largest + 1,
            largest,
        )
        with dev.malloc(largest):  # exactly the largest block still works
            assert dev.stats["free"] == 0


def test_out_of_memory_is_also_a_memory_error(dev: ek.Device) -> None:
    with pytest.raises(MemoryError):
        dev.malloc(HEAP_SIZE * 2)


@pytest.mark.parametrize("what", ["malloc", "read-offset", "write-offset", "flush-offset"])
def test_huge_values_are_named_as_given(dev: ek.Device, what: str) -> None:
    huge = 2**70
    with dev.malloc(SIZE) as m:
        calls: dict[str, Callable[[], object]] = {
            "malloc": lambda: dev.malloc(huge),
            "read-offset": lambda: m.read(1, huge),
            "write-offset": lambda: m.write(b"x", huge),
            "flush-offset": lambda: m.flush(huge, 1),
        }
        with pytest.raises(ek.EdgeKitError) as info:
            calls[what]()
        mentions(info.value.message, huge)


# ---- offsets and lengths past the end ----------------------------------------------------------------


def test_write_at_offset_size(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(
        dev, ek.OutOfRangeError, "EK_ERR_OUT_OF_RANGE", lambda: mem.write(b"x", SIZE), SIZE, hexh(mem.handle)
    )
    assert mem.read() == bytes(range(SIZE))


def test_write_crossing_the_end(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(
        dev,
        ek.OutOfRangeError,
        "EK_ERR_OUT_OF_RANGE",
        lambda: mem.write(b"xyz", SIZE - 2),
        SIZE - 2,
        SIZE,
        hexh(mem.handle),
    )
    assert mem.read() == bytes(range(SIZE))  # not even the bytes that would fit were written


def test_write_larger_than_the_memory(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(
        dev, ek.OutOfRangeError, "EK_ERR_OUT_OF_RANGE", lambda: mem.write(bytes(SIZE + 1)), SIZE + 1, SIZE
    )
    assert mem.read() == bytes(range(SIZE))


def test_write_at_a_huge_offset(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(
        dev, ek.OutOfRangeError, "EK_ERR_OUT_OF_RANGE", lambda: mem.write(b"x", 2**70), "offset", 2**70
    )


def test_write_at_a_negative_offset(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(dev, ek.InvalidArgumentError, "EK_ERR_INVALID_ARG", lambda: mem.write(b"x", -1), "offset", -1)


def test_write_of_nothing(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(dev, ek.InvalidArgumentError, "EK_ERR_INVALID_ARG", lambda: mem.write(b""), "size is 0")


def test_read_nbytes_too_big(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(
        dev,
        ek.OutOfRangeError,
        "EK_ERR_OUT_OF_RANGE",
        lambda: mem.read(SIZE + 1),
        SIZE + 1,
        SIZE,
        hexh(mem.handle),
    )


def test_read_crossing_the_end(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(
        dev, ek.OutOfRangeError, "EK_ERR_OUT_OF_RANGE", lambda: mem.read(10, SIZE - 5), SIZE - 5, SIZE
    )


def test_read_at_a_huge_offset(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(dev, ek.OutOfRangeError, "EK_ERR_OUT_OF_RANGE", lambda: mem.read(1, 2**70), "offset", 2**70)


def test_read_of_a_huge_length(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    # Must fail cleanly, without first trying to allocate a 2**62-byte bytes object.
    check_fails(
        dev, ek.OutOfRangeError, "EK_ERR_OUT_OF_RANGE", lambda: mem.read(2**62), hexh(mem.handle), SIZE
    )


@pytest.mark.parametrize("offset", [SIZE, SIZE + 1, 2**40])
def test_read_from_an_offset_past_the_end(dev: ek.Device, mem: ek.DeviceMemory, offset: int) -> None:
    # Without nbytes, "the rest of the memory" from an offset at or past the end is out of range.
    check_fails(
        dev,
        ek.OutOfRangeError,
        "EK_ERR_OUT_OF_RANGE",
        lambda: mem.read(offset=offset),
        offset,
        SIZE,
        hexh(mem.handle),
    )


def test_read_of_zero_bytes(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(dev, ek.InvalidArgumentError, "EK_ERR_INVALID_ARG", lambda: mem.read(0), "size is 0")


def test_read_negative_nbytes(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(dev, ek.InvalidArgumentError, "EK_ERR_INVALID_ARG", lambda: mem.read(-1), "nbytes", -1)


def test_read_more_than_out_holds(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    out = bytearray(4)
    check_fails(
        dev,
        ek.InvalidArgumentError,
        "EK_ERR_INVALID_ARG",
        lambda: mem.read(5, out=out),
        "nbytes=5",
        "4 bytes",
    )
    assert out == bytes(4)


@pytest.mark.parametrize("nbytes", ["4", -1, 2**64])
def test_a_bad_nbytes_leaves_out_released(dev: ek.Device, mem: ek.DeviceMemory, nbytes: Any) -> None:
    """The error comes before `out` is exported: a bytearray can still grow, a view's mapping unmap."""
    out = bytearray(4)
    with pytest.raises(ek.EdgeKitError, match="nbytes"):
        mem.read(nbytes, out=out)
    out.append(0)  # BufferError while an export of `out` is alive
    with dev.malloc(8) as other:
        view = other.map().ndarray(np.uint8, 8)
        with pytest.raises(ek.EdgeKitError, match="nbytes"):
            mem.read(nbytes, out=view)
        del view
        other.unmap()
        assert not other.mapped


def test_read_into_an_out_larger_than_the_rest(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    out = bytearray(20)
    check_fails(dev, ek.OutOfRangeError, "EK_ERR_OUT_OF_RANGE", lambda: mem.read(offset=90, out=out), 90, 20)
    assert out == bytes(20)


def test_flush_range_past_the_end(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(
        dev,
        ek.OutOfRangeError,
        "EK_ERR_OUT_OF_RANGE",
        lambda: mem.flush(90, 20),
        90,
        20,
        hexh(mem.handle),
        "flush",
    )


def test_flush_offset_past_the_end(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(
        dev, ek.OutOfRangeError, "EK_ERR_OUT_OF_RANGE", lambda: mem.flush(SIZE), SIZE, hexh(mem.handle)
    )


def test_flush_huge_length(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(dev, ek.OutOfRangeError, "EK_ERR_OUT_OF_RANGE", lambda: mem.flush(0, 2**70), "nbytes", 2**70)


def test_flush_zero_bytes(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(dev, ek.InvalidArgumentError, "EK_ERR_INVALID_ARG", lambda: mem.flush(10, 0), "size is 0")


def test_invalidate_range_past_the_end(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(
        dev,
        ek.OutOfRangeError,
        "EK_ERR_OUT_OF_RANGE",
        lambda: mem.invalidate(50, 51),
        50,
        51,
        hexh(mem.handle),
        "invalidate",
    )


def test_invalidate_offset_past_the_end(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(
        dev, ek.OutOfRangeError, "EK_ERR_OUT_OF_RANGE", lambda: mem.invalidate(200), 200, hexh(mem.handle)
    )


def test_invalidate_negative_offset(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(dev, ek.InvalidArgumentError, "EK_ERR_INVALID_ARG", lambda: mem.invalidate(-1), "offset", -1)


def test_flush_of_a_mapped_memory_past_the_end(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    with mem.map() as view:
        arr = view.ndarray(np.uint8, SIZE)
        check_fails(
            dev, ek.OutOfRangeError, "EK_ERR_OUT_OF_RANGE", lambda: mem.flush(64, 64), 64, hexh(mem.handle)
        )
        check_fails(
            dev,
            ek.OutOfRangeError,
            "EK_ERR_OUT_OF_RANGE",
            lambda: mem.invalidate(99, 2),
            99,
            hexh(mem.handle),
        )
        del arr


@pytest.mark.parametrize(
    ("dtype", "shape", "offset"),
    [
        (np.float32, 26, 0),
        (np.uint8, 1, SIZE),
        (np.float64, (3, 4), 8),
        (np.int16, 1, 2**70),
    ],
)
def test_ndarray_outside_the_mapping(
    dev: ek.Device, mem: ek.DeviceMemory, dtype: Any, shape: Any, offset: int
) -> None:
    view = mem.map()
    check_fails(
        dev,
        ek.OutOfRangeError,
        "EK_ERR_OUT_OF_RANGE",
        lambda: view.ndarray(dtype, shape, offset),
        f"{SIZE}-byte",
        offset,
    )
    mem.unmap()


def test_ndarray_at_a_negative_offset(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    view = mem.map()
    check_fails(
        dev,
        ek.InvalidArgumentError,
        "EK_ERR_INVALID_ARG",
        lambda: view.ndarray(np.uint8, 1, -1),
        "offset",
        -1,
    )
    mem.unmap()


@pytest.mark.parametrize("shape", [-1, (-1, 5), (2, -2)])
def test_ndarray_negative_dimension(dev: ek.Device, mem: ek.DeviceMemory, shape: Any) -> None:
    view = mem.map()
    outcome: object
    try:
        outcome = view.ndarray(np.float32, shape)
    except (ek.InvalidArgumentError, ek.OutOfRangeError) as exc:
        outcome = exc.code
    except ValueError as exc:  # numpy's own complaint, not EdgeKit's
        outcome = repr(exc)
    refused = isinstance(outcome, int)
    del outcome
    gc.collect()
    mem.unmap()
    assert refused


# ---- copies ------------------------------------------------------------------------------------------


def test_copy_from_another_device(dev: ek.Device, dev1: ek.Device) -> None:
    with dev.malloc(64) as a, dev1.malloc(64) as b:
        a.write(bytes(64))
        b.write(b"\x01" * 64)
        check_fails(
            [dev, dev1],
            ek.DeviceMismatchError,
            "EK_ERR_DEVICE_MISMATCH",
            lambda: dev.copy(a, 0, b, 0, 8),
            hexh(b.handle),
            "device 1",
            "device 0",
        )
        assert a.read() == bytes(64)


def test_copy_to_another_device(dev: ek.Device, dev1: ek.Device) -> None:
    with dev.malloc(64) as a, dev1.malloc(64) as b:
        check_fails(
            [dev, dev1],
            ek.DeviceMismatchError,
            "EK_ERR_DEVICE_MISMATCH",
            lambda: dev.copy(b, 0, a, 0, 8),
            hexh(b.handle),
            "device 1",
            "device 0",
        )


def test_copy_with_the_handle_of_a_third_device(dev: ek.Device, dev1: ek.Device) -> None:
    with dev.malloc(64) as a, dev.malloc(64) as b:
        check_fails(
            [dev, dev1],
            ek.DeviceMismatchError,
            "EK_ERR_DEVICE_MISMATCH",
            lambda: dev1.copy(a, 0, b, 0, 8),
            "device 0",
            "device 1",
        )


def test_write_through_another_device_memory_is_a_value_error(dev: ek.Device, dev1: ek.Device) -> None:
    with dev.malloc(64) as a, dev1.malloc(64) as b, pytest.raises(ValueError):
        dev.copy(a, 0, b, 0, 1)


def test_copy_source_past_the_end(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    with dev.malloc(SIZE) as dst:
        check_fails(
            dev,
            ek.OutOfRangeError,
            "EK_ERR_OUT_OF_RANGE",
            lambda: dev.copy(dst, 0, mem, 95, 10),
            "source",
            95,
            10,
        )


def test_copy_destination_past_the_end(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    with dev.malloc(SIZE) as dst:
        dst.write(bytes(SIZE))
        check_fails(
            dev,
            ek.OutOfRangeError,
            "EK_ERR_OUT_OF_RANGE",
            lambda: dev.copy(dst, 91, mem, 0, 10),
            "destination",
            91,
            10,
        )
        assert dst.read() == bytes(SIZE)


def test_copy_huge_length(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(
        dev,
        ek.OutOfRangeError,
        "EK_ERR_OUT_OF_RANGE",
        lambda: dev.copy(mem, 0, mem, 0, 2**64),
        "nbytes",
        2**64,
    )


def test_copy_zero_bytes(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(
        dev, ek.InvalidArgumentError, "EK_ERR_INVALID_ARG", lambda: dev.copy(mem, 0, mem, 10, 0), "size is 0"
    )


def test_copy_negative_offset(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(
        dev,
        ek.InvalidArgumentError,
        "EK_ERR_INVALID_ARG",
        lambda: dev.copy(mem, 0, mem, -8, 8),
        "src_offset",
        -8,
    )


def test_copy_of_something_that_is_not_device_memory(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    before = dev.stats
    with pytest.raises(TypeError, match="dst"):
        dev.copy(b"host bytes", 0, mem, 0, 8)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="src"):
        dev.copy(mem, 0, None, 0, 8)  # type: ignore[arg-type]
    assert dev.stats == before


# ---- free and use after free -------------------------------------------------------------------------


def test_double_free(dev: ek.Device, freed: ek.DeviceMemory) -> None:
    check_fails(dev, ek.DoubleFreeError, "EK_ERR_DOUBLE_FREE", freed.free, hexh(freed.handle), "double free")


def test_double_free_after_the_handle_slot_was_reused(dev: ek.Device, freed: ek.DeviceMemory) -> None:
    with dev.malloc(SIZE) as fresh:  # likely takes the freed handle's slot, with a new generation
        check_fails(dev, ek.DoubleFreeError, "EK_ERR_DOUBLE_FREE", freed.free, hexh(freed.handle))
        fresh.write(b"still mine")
        assert fresh.read(10) == b"still mine"


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.write(b"x"),
        lambda m: m.read(1),
        lambda m: m.read(),
        lambda m: m.read(out=bytearray(4)),
        lambda m: m.map(),
        lambda m: m.flush(),
        lambda m: m.flush(0, 1),
        lambda m: m.invalidate(),
        lambda m: m.invalidate(0, 1),
        lambda m: m.unmap(),
    ],
    ids=[
        "write",
        "read1",
        "read",
        "read-out",
        "map",
        "flush",
        "flush-partial",
        "invalidate",
        "invalidate-partial",
        "unmap",
    ],
)
def test_use_after_free(dev: ek.Device, freed: ek.DeviceMemory, call: Callable[[Any], object]) -> None:
    check_fails(
        dev,
        ek.FreedHandleError,
        "EK_ERR_FREED_HANDLE",
        lambda: call(freed),
        hexh(freed.handle),
        "use after free",
    )


def test_copy_from_freed_memory(dev: ek.Device, freed: ek.DeviceMemory) -> None:
    with dev.malloc(SIZE) as dst:
        check_fails(
            dev,
            ek.FreedHandleError,
            "EK_ERR_FREED_HANDLE",
            lambda: dev.copy(dst, 0, freed, 0, 8),
            hexh(freed.handle),
        )


def test_copy_to_freed_memory(dev: ek.Device, freed: ek.DeviceMemory) -> None:
    with dev.malloc(SIZE) as src:
        check_fails(
            dev,
            ek.FreedHandleError,
            "EK_ERR_FREED_HANDLE",
            lambda: dev.copy(freed, 0, src, 0, 8),
            hexh(freed.handle),
        )


def test_view_of_freed_memory(dev: ek.Device) -> None:
    m = dev.malloc(SIZE)
    view = m.map()
    m.free()
    check_fails(
        dev, ek.NotMappedError, "EK_ERR_NOT_MAPPED", lambda: view.ndarray(np.uint8, 4), hexh(m.handle)
    )


# ---- mapping -----------------------------------------------------------------------------------------


def test_unmap_of_a_never_mapped_memory(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    check_fails(dev, ek.NotMappedError, "EK_ERR_NOT_MAPPED", mem.unmap, hexh(mem.handle), "not mapped")


def test_unmap_twice(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    mem.map()
    mem.unmap()
    check_fails(dev, ek.NotMappedError, "EK_ERR_NOT_MAPPED", mem.unmap, hexh(mem.handle), "not mapped")


def test_export_of_an_unmapped_view(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    view = mem.map()
    mem.unmap()
    check_fails(
        dev, ek.NotMappedError, "EK_ERR_NOT_MAPPED", lambda: memoryview(view), hexh(mem.handle), "not mapped"
    )


# ---- devices -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device_id", [-1, 2, 10**6])
def test_device_id_out_of_range(dev: ek.Device, device_id: int) -> None:
    check_fails(
        dev,
        ek.NoDeviceError,
        "EK_ERR_NO_DEVICE",
        lambda: ek.Device(device_id),
        device_id,
        "out of range",
        "2 devices",
    )


def test_device_id_out_of_range_is_a_lookup_error() -> None:
    with pytest.raises(LookupError):
        ek.Device(7)


def test_device_reopened_with_another_configuration(dev: ek.Device) -> None:
    configs: list[dict[str, Any]] = [
        {"coherence": "strict"},
        {"heap_size": 2 * HEAP_SIZE},
        {"backing": "anonymous"},
    ]
    for config in configs:
        check_fails(
            dev,
            ek.BusyError,
            "EK_ERR_BUSY",
            functools.partial(ek.Device, 0, **config),
            "device 0",
            "already open",
        )
    assert dev.coherence == "coherent"


@pytest.mark.parametrize("coherence", ["bogus", "STRICT", "", 2])
def test_invalid_coherence(coherence: Any) -> None:
    with pytest.raises(ek.InvalidArgumentError) as info:
        ek.Device(1, coherence=coherence)
    assert info.value.code == STATUS["EK_ERR_INVALID_ARG"]
    mentions(info.value.message, "coherence", repr(coherence), "'coherent'", "'strict'")
    assert_device_1_was_left_closed()


@pytest.mark.parametrize("backing", ["dma-buf", "MEMFD", "", 1])
def test_invalid_backing(backing: Any) -> None:
    with pytest.raises(ek.InvalidArgumentError) as info:
        ek.Device(1, backing=backing)
    assert info.value.code == STATUS["EK_ERR_INVALID_ARG"]
    mentions(info.value.message, "backing", repr(backing), "'memfd'", "'anonymous'")
    assert_device_1_was_left_closed()


@pytest.mark.parametrize(
    ("heap_size", "named"), [(0, "> 0"), (-1, "-1"), ("16M", "str"), (2**63, "too large")]
)
def test_invalid_heap_size(heap_size: Any, named: str) -> None:
    with pytest.raises(ek.InvalidArgumentError) as info:
        ek.Device(1, heap_size=heap_size)
    assert info.value.code == STATUS["EK_ERR_INVALID_ARG"]
    mentions(info.value.message, "heap", named)
    assert_device_1_was_left_closed()


def assert_device_1_was_left_closed() -> None:
    """A failed Device() opened nothing: another configuration is accepted, not BusyError."""
    with ek.Device(1, heap_size=HEAP_SIZE // 2, backing="anonymous") as device:
        assert device.stats["total"] == HEAP_SIZE // 2
        assert device.stats["allocations"] == 0


@pytest.fixture
def closed_handle(dev: ek.Device) -> ek.Device:
    """A second handle of device 0, closed; device 0 itself stays open through `dev`."""
    other = ek.Device(0)
    other.close()
    return other


@pytest.mark.parametrize(
    "call",
    [
        lambda d: d.stats,
        lambda d: d.sync(),
        lambda d: d.malloc(10),
        lambda d: d.coherence_report(),
        lambda d: d.coherence_report(clear=True),
        lambda d: d.coherence,
    ],
    ids=["stats", "sync", "malloc", "report", "report-clear", "coherence"],
)
def test_closed_device_handle(
    dev: ek.Device, closed_handle: ek.Device, call: Callable[[Any], object]
) -> None:
    check_fails(
        dev,
        ek.FreedHandleError,
        "EK_ERR_FREED_HANDLE",
        lambda: call(closed_handle),
        hexh(closed_handle.handle),
        "freed",
    )


def test_copy_through_a_closed_device_handle(dev: ek.Device, closed_handle: ek.Device) -> None:
    with dev.malloc(8) as a, dev.malloc(8) as b:
        check_fails(
            dev,
            ek.FreedHandleError,
            "EK_ERR_FREED_HANDLE",
            lambda: closed_handle.copy(a, 0, b, 0, 8),
            hexh(closed_handle.handle),
        )


def test_close_twice(dev: ek.Device, closed_handle: ek.Device) -> None:
    check_fails(
        dev,
        ek.DoubleFreeError,
        "EK_ERR_DOUBLE_FREE",
        closed_handle.close,
        hexh(closed_handle.handle),
        "double free",
    )


def test_free_through_a_closed_handle_while_the_device_stays_open() -> None:
    keeper = ek.Device(1, heap_size=HEAP_SIZE)
    try:
        closing = ek.Device(1)
        m = closing.malloc(SIZE)  # m.device is `closing`
        closing.close()
        assert keeper.stats["allocations"] == 1  # the device is open through `keeper`, so m is alive
        check_fails(keeper, ek.FreedHandleError, "EK_ERR_FREED_HANDLE", m.free, hexh(closing.handle))
    finally:
        keeper.close()  # releases whatever is left


# ---- memory of a closed device -----------------------------------------------------------------------


@pytest.fixture
def orphan() -> Iterator[ek.DeviceMemory]:
    """A memory of device 1 whose device was then closed (which released the memory)."""
    device = ek.Device(1, heap_size=HEAP_SIZE)
    m = device.malloc(SIZE)
    device.close()
    yield m
    with ek.Device(1, heap_size=HEAP_SIZE) as again:  # closing released everything
        assert again.stats["allocations"] == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.write(b"x"),
        lambda m: m.read(1),
        lambda m: m.map(),
        lambda m: m.flush(),
        lambda m: m.invalidate(0, 1),
        lambda m: m.unmap(),
    ],
    ids=["write", "read", "map", "flush", "invalidate", "unmap"],
)
def test_memory_of_a_closed_device(orphan: ek.DeviceMemory, call: Callable[[Any], object]) -> None:
    with pytest.raises(ek.FreedHandleError) as info:
        call(orphan)
    assert info.value.code == STATUS["EK_ERR_FREED_HANDLE"]
    mentions(info.value.message, hexh(orphan.device.handle), "freed")


def test_free_of_memory_of_a_closed_device(orphan: ek.DeviceMemory) -> None:
    with pytest.raises(ek.FreedHandleError) as info:
        orphan.free()
    assert info.value.code == STATUS["EK_ERR_FREED_HANDLE"]


def test_memory_of_a_closed_device_is_not_usable_on_a_reopened_device(orphan: ek.DeviceMemory) -> None:
    with ek.Device(1, heap_size=HEAP_SIZE) as again, again.malloc(SIZE) as fresh:
        check_fails(
            again,
            ek.FreedHandleError,
            "EK_ERR_FREED_HANDLE",
            lambda: again.copy(fresh, 0, orphan, 0, 8),
            hexh(orphan.handle),
        )


# ---- buffers and types -------------------------------------------------------------------------------


def test_write_non_contiguous_numpy(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    a = np.arange(40, dtype=np.uint8).reshape(4, 10)
    check_fails(
        dev,
        ek.InvalidArgumentError,
        "EK_ERR_INVALID_ARG",
        lambda: mem.write(a[:, ::2]),
        "C-contiguous",
        "buf",
    )
    assert mem.read() == bytes(range(SIZE))


def test_write_fortran_order_numpy(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    a = np.asfortranarray(np.arange(12, dtype=np.uint8).reshape(3, 4))
    check_fails(dev, ek.InvalidArgumentError, "EK_ERR_INVALID_ARG", lambda: mem.write(a), "C-contiguous")


def test_read_into_non_contiguous_numpy(dev: ek.Device, mem: ek.DeviceMemory) -> None:
    out = np.zeros((4, 10), dtype=np.uint8)
    check_fails(
        dev,
        ek.InvalidArgumentError,
        "EK_ERR_INVALID_ARG",
        lambda: mem.read(out=out[:, ::2]),
        "C-contiguous",
        "out",
    )
    assert not out.any()


@pytest.mark.parametrize(
    "make",
    [lambda: bytes(10), lambda: memoryview(bytes(10)), lambda: readonly_array(10)],
    ids=["bytes", "memoryview-of-bytes", "numpy-readonly"],
)
def test_read_into_read_only_out(dev: ek.Device, mem: ek.DeviceMemory, make: Callable[[], Any]) -> None:
    out = make()
    check_fails(
        dev, ek.InvalidArgumentError, "EK_ERR_INVALID_ARG", lambda: mem.read(out=out), "writable", "out"
    )
    assert bytes(memoryview(out)) == bytes(10)


def readonly_array(n: int) -> Any:
    a = np.zeros(n, dtype=np.uint8)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize(
    "buf", [123, "text", None, [1, 2, 3], 1.5], ids=["int", "str", "None", "list", "float"]
)
def test_write_of_a_non_buffer(dev: ek.Device, mem: ek.DeviceMemory, buf: Any) -> None:
    check_fails(dev, ek.InvalidTypeError, "EK_ERR_INVALID_ARG", lambda: mem.write(buf), "buf", "bytes-like")


@pytest.mark.parametrize("out", [123, "text", [0] * 10], ids=["int", "str", "list"])
def test_read_into_a_non_buffer(dev: ek.Device, mem: ek.DeviceMemory, out: Any) -> None:
    check_fails(
        dev, ek.InvalidTypeError, "EK_ERR_INVALID_ARG", lambda: mem.read(out=out), "out", "bytes-like"
    )


def test_malloc_of_a_string(dev: ek.Device) -> None:
    check_fails(
        dev,
        ek.InvalidTypeError,
        "EK_ERR_INVALID_ARG",
        lambda: dev.malloc("10"),  # type: ignore[arg-type]
        "size",
        "int",
        "str",
    )


@pytest.mark.parametrize(
    "size",
    [1.5, 10.0, None],
    ids=["1.5", "10.0", "None"],
)
def test_malloc_of_a_non_integer(dev: ek.Device, size: Any) -> None:
    check_fails(dev, ek.InvalidTypeError, "EK_ERR_INVALID_ARG", lambda: dev.malloc(size), "size", "int")


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda m: m.write(b"x", offset="1"), "offset"),
        (lambda m: m.read("1"), "nbytes"),
        (lambda m: m.read(1, 0.5), "offset"),
        (lambda m: m.flush("0"), "offset"),
        (lambda m: m.invalidate(0, "1"), "nbytes"),
    ],
    ids=["write-offset", "read-nbytes", "read-offset", "flush-offset", "invalidate-nbytes"],
)
def test_non_integer_offsets_and_lengths(
    dev: ek.Device, mem: ek.DeviceMemory, call: Callable[[Any], object], name: str
) -> None:
    check_fails(dev, ek.InvalidTypeError, "EK_ERR_INVALID_ARG", lambda: call(mem), name, "int")


def test_no_view_through_a_closed_device_handle() -> None:
    # Two handles on device 1: the memory's own handle closes while the other keeps the device open.
    keeper, other = ek.Device(1, heap_size=1 << 20), ek.Device(1)
    mem = other.malloc(4096)
    mem.map()
    other.close()  # allowed: no views yet
    with pytest.raises(ek.FreedHandleError) as info:
        mem.map().ndarray(np.uint8, 4096)  # a view would outlive `other`, whose close() can't wait for it
    assert "device handle" in info.value.message
    with pytest.raises(ek.FreedHandleError):
        memoryview(mem.map())
    del mem
    gc.collect()
    # Its handle is gone, so the block is released with the device, when the last handle closes.
    assert keeper.stats["allocations"] == 1
    keeper.close()
    with ek.Device(1) as reopened:
        assert reopened.stats["allocations"] == 0
