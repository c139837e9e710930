"""Both coherence modes. In strict mode (an emulated non-coherent SoC) every kind of missed flush or
invalidate gets the stale data real hardware would give and is reported with its memory and its range
widened to whole 64-byte cache lines; the correct version of the same program is not reported."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import edgekit as ek
from conftest import LINE

N = 4 * LINE  # four cache lines


def found(dev: ek.Device) -> list[tuple[str, int, int, int]]:
    """The report as (kind, memory handle, offset, nbytes), leaving it recorded."""
    return [(v.kind, v.memory, v.offset, v.nbytes) for v in dev.coherence_report()]


class Mapped:
    """A strict-mode memory of four lines holding zeros on the device, mapped, with a uint8 view `arr`."""

    def __init__(self, dev: ek.Device) -> None:
        self.mem = dev.malloc(N)
        self.mem.write(bytes(N))
        self.arr: Any = self.mem.map().ndarray(np.uint8, N)

    def unmap(self) -> None:
        """End the mapping (the caller must have dropped its own references to `arr`)."""
        self.arr = None
        gc.collect()
        self.mem.unmap()

    def release(self) -> None:
        self.arr = None
        gc.collect()
        if self.mem.mapped:
            self.mem.unmap()
        self.mem.free()


@pytest.fixture
def mapped(strict_dev: ek.Device) -> Iterator[Mapped]:
    m = Mapped(strict_dev)
    yield m
    m.release()


# ---- coherent mode -----------------------------------------------------------------------------------


def test_coherent_cpu_writes_are_visible_to_the_device_without_flush(dev: ek.Device) -> None:
    with dev.malloc(N) as src, dev.malloc(N) as dst:
        src.write(bytes(N))
        view = src.map()
        arr = view.ndarray(np.uint8, N)
        arr[:] = np.arange(N, dtype=np.uint8)
        assert src.read() == bytes(range(N))  # device read, no flush
        dev.copy(dst, 0, src, 0, N)  # device-side copy, no flush
        assert dst.read() == bytes(range(N))
        del arr, view
        src.unmap()  # unmap without flush: nothing lost
        assert src.read() == bytes(range(N))
    assert dev.coherence_report() == []


def test_coherent_device_writes_are_visible_to_the_cpu_without_invalidate(dev: ek.Device) -> None:
    with dev.malloc(N) as mem:
        mem.write(bytes(N))
        view = mem.map()
        arr = view.ndarray(np.uint8, N)
        mem.write(b"\x07" * 10, 100)
        assert (arr[100:110] == 7).all() and arr[99] == 0 and arr[110] == 0
        arr[0] = 1  # and a CPU write to a line the device also wrote: no conflict in coherent mode
        mem.write(b"\x02", 1)
        mem.flush()
        assert mem.read(2) == b"\x01\x02"
        del arr, view
        mem.unmap()
    assert dev.coherence_report() == []


def test_coherent_device_never_reports(dev: ek.Device) -> None:
    # Every mistake of the strict tests below, on a coherent device: nothing is stale, nothing recorded.
    with dev.malloc(N) as mem:
        mem.write(bytes(N))
        arr = mem.map().ndarray(np.uint8, N)
        arr[:] = 3
        assert mem.read() == b"\x03" * N
        mem.write(b"\x04" * N)
        assert (arr == 4).all()
        arr[5] = 5
        del arr
        mem.unmap()
        assert mem.read(6)[5] == 5
    assert dev.coherence == "coherent"
    assert dev.coherence_report() == []
    assert dev.coherence_report(clear=True) == []


# ---- strict mode: each violation kind, and its correct version ----------------------------------------


def test_strict_mode_is_selected(strict_dev: ek.Device) -> None:
    assert strict_dev.coherence == "strict"
    assert strict_dev.stats["coherence"] == "strict"
    assert strict_dev.coherence_report() == []


def test_strict_map_starts_with_the_device_bytes(strict_dev: ek.Device) -> None:
    with strict_dev.malloc(N) as mem:
        mem.write(bytes(range(N)))
        with mem.map() as view:
            assert bytes(memoryview(view)) == bytes(range(N))
    assert strict_dev.coherence_report() == []


def test_unflushed_read(strict_dev: ek.Device, mapped: Mapped) -> None:
    mem, arr = mapped.mem, mapped.arr
    arr[70:75] = 1  # CPU writes in line 1, never flushed
    # The device reads its own bytes: the old zeros, as on a real non-coherent SoC.
    assert mem.read() == bytes(N)
    [v] = strict_dev.coherence_report()
    assert isinstance(v, ek.CoherenceViolation)
    assert (v.kind, v.memory, v.offset, v.nbytes) == ("unflushed_read", mem.handle, LINE, LINE)
    assert "flush" in v.message and "[64, 128)" in v.message
    strict_dev.coherence_report(clear=True)
    mem.flush()  # now the device sees it
    assert mem.read(5, 70) == b"\x01" * 5
    assert strict_dev.coherence_report() == []


def test_unflushed_read_correct_program(strict_dev: ek.Device, mapped: Mapped) -> None:
    mem, arr = mapped.mem, mapped.arr
    arr[70:75] = 1
    mem.flush()
    assert mem.read(80) == bytes(70) + b"\x01" * 5 + bytes(5)
    del arr
    mapped.unmap()
    assert strict_dev.coherence_report() == []


def test_stale_mapping(strict_dev: ek.Device, mapped: Mapped) -> None:
    mem, arr = mapped.mem, mapped.arr
    mem.write(b"\x07" * 10, 130)  # the device writes line 2
    assert (arr[130:140] == 0).all()  # the CPU, not having invalidated, still sees the old bytes
    assert strict_dev.coherence_report() == []  # not a violation yet: the CPU may still invalidate
    del arr
    mapped.unmap()  # the mapping ends without an invalidate: whatever the CPU read there was stale
    [v] = strict_dev.coherence_report()
    assert (v.kind, v.memory, v.offset, v.nbytes) == ("stale_mapping", mem.handle, 2 * LINE, LINE)
    assert "invalidate" in v.message and "ek_mem_unmap" in v.message


def test_stale_mapping_correct_program(strict_dev: ek.Device, mapped: Mapped) -> None:
    mem, arr = mapped.mem, mapped.arr
    mem.write(b"\x07" * 10, 130)
    mem.invalidate()
    assert (arr[130:140] == 7).all()
    assert arr[129] == 0 and arr[140] == 0
    del arr
    mapped.unmap()
    assert strict_dev.coherence_report() == []


def test_write_conflict(strict_dev: ek.Device, mapped: Mapped) -> None:
    mem, arr = mapped.mem, mapped.arr
    arr[0] = 1  # the CPU dirties line 0 ...
    mem.write(b"\x02", 10)  # ... and the device writes the same line
    mem.flush()  # the CPU's whole line is written back over the device's byte
    assert mem.read(11) == b"\x01" + bytes(10)  # the device's 2 at byte 10 is lost
    [v] = strict_dev.coherence_report()
    assert (v.kind, v.memory, v.offset, v.nbytes) == ("write_conflict", mem.handle, 0, LINE)
    assert "ek_mem_flush" in v.message


def test_write_conflict_through_invalidate(strict_dev: ek.Device, mapped: Mapped) -> None:
    mem, arr = mapped.mem, mapped.arr
    arr[200] = 1
    mem.write(b"\x02" * 4, 196)
    mem.invalidate(192, 64)  # dc civac also writes the dirty line back first
    assert arr[196] == 0 and arr[200] == 1
    [v] = strict_dev.coherence_report()
    assert (v.kind, v.memory, v.offset, v.nbytes) == ("write_conflict", mem.handle, 3 * LINE, LINE)
    assert "ek_mem_invalidate" in v.message


def test_write_conflict_correct_program(strict_dev: ek.Device, mapped: Mapped) -> None:
    mem, arr = mapped.mem, mapped.arr
    arr[0] = 1
    mem.flush()  # the CPU's write reaches the device before the device writes the line
    mem.write(b"\x02", 10)
    mem.invalidate()  # and the CPU refreshes before reading
    assert arr[0] == 1 and arr[10] == 2
    assert mem.read(11) == b"\x01" + bytes(9) + b"\x02"
    assert strict_dev.coherence_report() == []


def test_unflushed_unmap(strict_dev: ek.Device) -> None:
    with strict_dev.malloc(N) as mem:
        mem.write(bytes(N))
        view = mem.map()
        arr = view.ndarray(np.uint8, N)
        arr[200] = 9
        del arr, view
        mem.unmap()
        assert mem.read() == bytes(N)  # the device never saw the 9
        [v] = strict_dev.coherence_report()
        assert (v.kind, v.memory, v.offset, v.nbytes) == ("unflushed_unmap", mem.handle, 3 * LINE, LINE)
        assert "ek_mem_unmap" in v.message and "flush" in v.message


def test_unflushed_unmap_by_free(strict_dev: ek.Device) -> None:
    mem = strict_dev.malloc(N)
    mem.write(bytes(N))
    arr = mem.map().ndarray(np.uint8, N)
    arr[0:3] = 9
    del arr
    handle = mem.handle
    mem.free()  # free of a mapped memory unmaps it, with the same check
    [v] = strict_dev.coherence_report()
    assert (v.kind, v.memory, v.offset, v.nbytes) == ("unflushed_unmap", handle, 0, LINE)
    assert "ek_free_device" in v.message


def test_unflushed_unmap_correct_program(strict_dev: ek.Device) -> None:
    with strict_dev.malloc(N) as mem:
        mem.write(bytes(N))
        with mem.map() as view:
            arr = view.ndarray(np.uint8, N)
            arr[200] = 9
            mem.flush()
            del arr
        assert mem.read(1, 200) == b"\x09"
    assert strict_dev.coherence_report() == []


def test_unflushed_unmap_waiting_for_a_view(strict_dev: ek.Device) -> None:
    """unmap() with a live view ends the mapping in the runtime when the view goes: the unflushed CPU
    writes are reported then, by ek_mem_unmap, as without the view."""
    with strict_dev.malloc(N) as mem:
        mem.write(bytes(N))
        arr = mem.map().ndarray(np.uint8, N)
        arr[200] = 9
        mem.unmap()
        assert strict_dev.coherence_report() == []  # the mapping has not ended yet
        assert arr[200] == 9
        del arr
        gc.collect()
        [v] = strict_dev.coherence_report()
        assert (v.kind, v.memory, v.offset, v.nbytes) == ("unflushed_unmap", mem.handle, 3 * LINE, LINE)
        assert "ek_mem_unmap" in v.message and "flush" in v.message
        assert mem.read() == bytes(N)  # the device never saw the 9


@pytest.mark.parametrize("unmap_first", [True, False], ids=["unmap-free-close", "free-close"])
def test_unflushed_unmap_waiting_for_a_view_past_free_and_close(
    strict_dev: ek.Device, unmap_first: bool
) -> None:
    """unmap(), free() and the handle's close() all wait for the view; the report (read through
    `strict_dev`, which keeps the device open) names the call that ended the mapping."""
    handle = ek.Device(0)  # a second handle of the strict device
    mem = handle.malloc(N)
    mem.write(bytes(N))
    arr = mem.map().ndarray(np.uint8, N)
    arr[0:3] = 9
    memory = mem.handle
    if unmap_first:
        mem.unmap()
    mem.free()
    handle.close()
    assert strict_dev.stats["allocations"] == 1 and strict_dev.coherence_report() == []
    del arr
    gc.collect()
    [v] = strict_dev.coherence_report(clear=True)
    assert (v.kind, v.memory, v.offset, v.nbytes) == ("unflushed_unmap", memory, 0, LINE)
    assert ("ek_mem_unmap" if unmap_first else "ek_free_device") in v.message
    assert strict_dev.stats["allocations"] == 0


def test_a_program_without_mistakes_records_nothing(strict_dev: ek.Device) -> None:
    data = np.arange(N, dtype=np.uint8)
    with strict_dev.malloc(N) as a, strict_dev.malloc(N) as b:
        a.write(bytes(N))
        b.write(bytes(N))
        va, vb = a.map(), b.map()
        xa, xb = va.ndarray(np.uint8, N), vb.ndarray(np.uint8, N)
        xa[:] = data  # CPU produces
        a.flush()
        strict_dev.copy(b, 0, a, 0, N)  # device consumes and produces
        b.invalidate()
        np.testing.assert_array_equal(xb, data)  # CPU consumes
        xb[:] = data[::-1]  # CPU produces again
        b.flush()
        assert b.read() == data[::-1].tobytes()
        del xa, xb, va, vb
        a.unmap()
        b.unmap()
    assert strict_dev.coherence_report() == []


# ---- ranges ------------------------------------------------------------------------------------------


def test_partial_flush_writes_back_only_its_lines(strict_dev: ek.Device, mapped: Mapped) -> None:
    mem, arr = mapped.mem, mapped.arr
    arr[:] = 1  # all four lines dirty
    mem.flush(70, 1)  # one byte in line 1: the whole line, nothing else
    assert mem.read() == bytes(LINE) + b"\x01" * LINE + bytes(2 * LINE)
    assert found(strict_dev) == [
        ("unflushed_read", mem.handle, 0, LINE),
        ("unflushed_read", mem.handle, 2 * LINE, 2 * LINE),  # consecutive lines are one range
    ]
    strict_dev.coherence_report(clear=True)
    mem.flush(LINE - 1, 2 * LINE + 2)  # bytes 63..192: lines 0, 1, 2 and 3
    assert mem.read() == b"\x01" * N
    assert strict_dev.coherence_report() == []


def test_partial_invalidate_refreshes_only_its_lines(strict_dev: ek.Device, mapped: Mapped) -> None:
    mem, arr = mapped.mem, mapped.arr
    mem.write(b"\x05" * N)  # the device writes all four lines
    mem.invalidate(130, 2)  # only line 2 is refreshed
    assert (arr[2 * LINE : 3 * LINE] == 5).all()
    assert (arr[: 2 * LINE] == 0).all() and (arr[3 * LINE :] == 0).all()
    del arr
    mapped.unmap()
    assert found(strict_dev) == [
        ("stale_mapping", mem.handle, 0, 2 * LINE),
        ("stale_mapping", mem.handle, 3 * LINE, LINE),
    ]


def test_range_is_clipped_to_the_memory_end(strict_dev: ek.Device) -> None:
    with strict_dev.malloc(100) as mem:  # lines [0, 64) and [64, 100)
        mem.write(bytes(100))
        with mem.map() as view:
            arr = view.ndarray(np.uint8, 100)
            arr[99] = 1
            assert mem.read(1, 99) == b"\x00"
            assert found(strict_dev) == [("unflushed_read", mem.handle, 64, 36)]
            mem.flush(99, 1)
            assert mem.read(1, 99) == b"\x01"
            del arr
    assert len(strict_dev.coherence_report()) == 1


def test_device_read_of_clean_lines_is_not_reported(strict_dev: ek.Device, mapped: Mapped) -> None:
    mem, arr = mapped.mem, mapped.arr
    arr[0] = 1  # line 0 dirty
    assert mem.read(LINE, LINE) == bytes(LINE)  # reading line 1 only: fine
    assert mem.read(3 * LINE, LINE) == bytes(3 * LINE)  # lines 1..3: fine
    assert strict_dev.coherence_report() == []
    mem.flush()


# ---- the report --------------------------------------------------------------------------------------


def test_report_is_oldest_first_and_clear_empties_it(strict_dev: ek.Device) -> None:
    with strict_dev.malloc(N) as a, strict_dev.malloc(N) as b:
        a.write(bytes(N))
        b.write(bytes(N))
        xa = a.map().ndarray(np.uint8, N)
        xb = b.map().ndarray(np.uint8, N)
        xa[0] = 1
        xb[LINE] = 1
        a.read(1)
        b.read(1, LINE)
        a.read(1)
        expected = [
            ("unflushed_read", a.handle, 0, LINE),
            ("unflushed_read", b.handle, LINE, LINE),
            ("unflushed_read", a.handle, 0, LINE),
        ]
        assert found(strict_dev) == expected
        assert found(strict_dev) == expected  # reading the report keeps it
        cleared = strict_dev.coherence_report(clear=True)
        assert [(v.kind, v.memory, v.offset, v.nbytes) for v in cleared] == expected
        assert strict_dev.coherence_report() == []
        a.flush()
        b.flush()
        del xa, xb
        a.unmap()
        b.unmap()
    assert strict_dev.coherence_report() == []


def test_report_messages_name_the_call(strict_dev: ek.Device, mapped: Mapped) -> None:
    mem, arr = mapped.mem, mapped.arr
    arr[0] = 1
    mem.read(1)
    [v] = strict_dev.coherence_report(clear=True)
    assert v.message.startswith("ek_memcpy_d2s")
    assert "[0, 64)" in v.message
    mem.flush()


# ---- copies in strict mode ---------------------------------------------------------------------------


def test_copy_from_an_unflushed_source(strict_dev: ek.Device, mapped: Mapped) -> None:
    mem, arr = mapped.mem, mapped.arr
    with strict_dev.malloc(N) as dst:
        dst.write(b"\xff" * N)
        arr[LINE : 2 * LINE] = 4  # CPU writes line 1, no flush
        strict_dev.copy(dst, 0, mem, LINE + 10, 20)
        assert dst.read(20) == bytes(20)  # the device copied the stale zeros
        assert dst.read(1, 20) == b"\xff"
        assert found(strict_dev) == [("unflushed_read", mem.handle, LINE, LINE)]
        assert "ek_memcpy_d2d" in strict_dev.coherence_report()[0].message
        strict_dev.coherence_report(clear=True)
        mem.flush()
        strict_dev.copy(dst, 0, mem, LINE + 10, 20)
        assert dst.read(20) == b"\x04" * 20
        assert strict_dev.coherence_report() == []


def test_copy_into_a_mapped_destination(strict_dev: ek.Device, mapped: Mapped) -> None:
    mem, arr = mapped.mem, mapped.arr
    with strict_dev.malloc(N) as src:
        src.write(b"\x06" * N)
        strict_dev.copy(mem, 3 * LINE, src, 0, LINE)  # the device writes line 3 of the mapped memory
        assert (arr[3 * LINE :] == 0).all()  # stale until invalidated
        mem.invalidate(3 * LINE, LINE)
        assert (arr[3 * LINE :] == 6).all()
        assert strict_dev.coherence_report() == []


def test_copy_within_a_mapped_memory(strict_dev: ek.Device, mapped: Mapped) -> None:
    mem, arr = mapped.mem, mapped.arr
    arr[:LINE] = 8
    mem.flush(0, LINE)
    strict_dev.copy(mem, 2 * LINE, mem, 0, LINE)  # device read of flushed line 0, write of line 2
    assert strict_dev.coherence_report() == []
    assert (arr[2 * LINE : 3 * LINE] == 0).all()
    mem.invalidate()
    assert (arr[2 * LINE : 3 * LINE] == 8).all()
    assert strict_dev.coherence_report() == []


# ---- EDGEKIT_COHERENCE -------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import numpy as np
    import edgekit as ek
    with ek.Device(0, heap_size=1 << 20) as dev, dev.malloc(128) as mem:
        mem.write(bytes(128))
        view = mem.map()
        arr = view.ndarray(np.uint8, 128)
        arr[0] = 1
        seen = mem.read(1)
        mem.flush()
        del arr, view
        mem.unmap()
        print(dev.coherence, seen.hex(), [v.kind for v in dev.coherence_report()])
    """
)


def run_child(coherence_env: str | None, script: str = CHILD) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")}
    if coherence_env is not None:
        env["EDGEKIT_COHERENCE"] = coherence_env
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)


def test_edgekit_coherence_strict_selects_strict_mode() -> None:
    proc = run_child("strict")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "strict 00 ['unflushed_read']"


@pytest.mark.parametrize("value", [None, "", "coherent"])
def test_without_edgekit_coherence_the_device_is_coherent(value: str | None) -> None:
    proc = run_child(value)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "coherent 01 []"


def test_explicit_coherence_overrides_the_environment() -> None:
    script = CHILD.replace(
        "ek.Device(0, heap_size=1 << 20)", "ek.Device(0, heap_size=1 << 20, coherence='coherent')"
    )
    proc = run_child("strict", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "coherent 01 []"


def test_invalid_edgekit_coherence_is_an_error() -> None:
    script = textwrap.dedent(
        """
        import edgekit as ek
        try:
            ek.Device(0)
        except ek.InvalidArgumentError as e:
            print(e.code, e)
        """
    )
    proc = run_child("sometimes", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("1 ")
    assert "EDGEKIT_COHERENCE" in proc.stdout and "sometimes" in proc.stdout


def test_environment_did_not_leak_into_this_process() -> None:
    assert "EDGEKIT_COHERENCE" not in os.environ
    with ek.Device(1, heap_size=1 << 20) as device:
        assert device.coherence == "coherent"
