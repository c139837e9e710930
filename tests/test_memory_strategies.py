"""Inference memory strategies from Python (docs/memory.md, "Inference memory"): static workspaces
(``net.memory``, ``create_request(workspace=...)``: launches allocate nothing) and allocators
(``ek.PoolAllocator``, a Python ``ek.Allocator``, ``Context(allocator=...)``), on real test models
compared with onnxruntime. The C API's own checks are in tests/c/test_runtime.c."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest

import edgekit as ek
from models import INPUT_NAME, compile_ekm, max_error, onnx_path, ort_run, random_input


def worst(actual: list[np.ndarray[Any, Any]], expected: list[np.ndarray[Any, Any]]) -> float:
    assert len(actual) == len(expected)
    return max(max_error(a, b) for a, b in zip(actual, expected))


MODEL = "yolo"  # several outputs' worth of arena, Resize and Concat


@pytest.fixture(scope="module")
def yolo() -> tuple[str, list[np.ndarray[Any, Any]], np.ndarray[Any, Any]]:
    shape = (1, 3, 64, 64)
    path = compile_ekm(MODEL, [{INPUT_NAME: shape}, {INPUT_NAME: (2, 3, 64, 64)}])
    x = random_input(shape)
    return str(path), ort_run(onnx_path(MODEL, shape), {INPUT_NAME: x}), x


def heap(dev: ek.Device) -> tuple[int, int, int]:
    stats = dev.stats
    return int(stats["allocations"]), int(stats["used"]), int(stats["peak"])


def test_stage_memory_reports_constants_and_workspace(dev: ek.Device, yolo: Any) -> None:
    path, _, _ = yolo
    with ek.Context(dev, kernels="portable") as ctx:
        net = ctx.load_model(path).network()
        m0, m1 = net.memory(0), net.memory(1)
        assert m0.constant_bytes > 1000 and m0.constant_bytes == m1.constant_bytes
        assert 0 < m0.workspace_bytes < m1.workspace_bytes  # batch 2 has twice the intermediates
        assert m0.alignment == 64
        assert net.workspace_bytes == m1.workspace_bytes
        with pytest.raises(ek.InvalidArgumentError, match=r"stages 0 \.\. 1, not 2"):
            net.memory(2)


@pytest.mark.parametrize("kernels", ["portable", "xnnpack"])
def test_static_workspace_launches_allocate_nothing(dev: ek.Device, yolo: Any, kernels: str) -> None:
    path, expected, x = yolo
    if kernels == "xnnpack":
        with ek.Context(dev) as probe:
            if probe.kernels != "xnnpack":
                pytest.skip("the XNNPACK provider is not available here")
    with ek.Context(dev, kernels=kernels) as ctx:
        net = ctx.load_model(path).network()
        block = dev.malloc(net.workspace_bytes + 64)
        with net.create_request(workspace=(block, 64)) as req:
            assert req.workspace is block
            first = req.run({INPUT_NAME: x})
            assert worst(first, expected) < 1e-4
            before = heap(dev)
            for _ in range(1000):
                req.infer()
                req.wait()
            assert heap(dev) == before  # not one device allocation, not one byte more at peak
            assert worst(req.get_outputs(), expected) < 1e-4
            # the other stage runs in the same block
            x2 = np.concatenate([x, x])
            out2 = req.run({INPUT_NAME: x2})
            assert req.stage == 1 and worst([o[:1] for o in out2], expected) < 1e-4
            assert heap(dev) == before
        block.free()


def test_workspaces_of_concurrent_requests_are_their_own(dev: ek.Device, yolo: Any) -> None:
    path, expected, x = yolo
    with ek.Context(dev, kernels="portable") as ctx:
        net = ctx.load_model(path).network()
        blocks = [dev.malloc(net.workspace_bytes) for _ in range(3)]
        reqs = [net.create_request(workspace=b) for b in blocks]
        for r in reqs:
            r.set_inputs({INPUT_NAME: x})
            r.infer()
        for r in reqs:
            r.wait()
            assert worst(r.get_outputs(), expected) < 1e-4
        for r in reqs:
            r.close()
        for b in blocks:
            b.free()


def test_workspace_errors(dev: ek.Device, dev1: ek.Device, yolo: Any) -> None:
    path, _, _ = yolo
    with ek.Context(dev, kernels="portable") as ctx:
        net = ctx.load_model(path).network()
        small = dev.malloc(net.memory(0).workspace_bytes)  # enough for stage 0, not for stage 1
        with pytest.raises(ek.InvalidArgumentError, match=r"stage 1 needs a \d+-byte workspace"):
            net.create_request(workspace=small)
        with pytest.raises(ek.InvalidArgumentError, match="offset 8 is not a multiple of 64"):
            net.create_request(workspace=(dev.malloc(net.workspace_bytes + 64), 8))
        other = dev1.malloc(net.workspace_bytes)
        with pytest.raises(ek.DeviceMismatchError, match="is on device 1"):
            net.create_request(workspace=other)
        with pytest.raises(ek.InvalidTypeError, match="DeviceMemory"):
            net.create_request(workspace=b"no")  # type: ignore[arg-type]
        other.free()
        small.free()
        # a failed request leaves nothing behind: the heap is as it was
        before = heap(dev)
        with pytest.raises(ek.InvalidArgumentError):
            net.create_request(workspace=dev.malloc(64))
        gc.collect()
        assert heap(dev)[0] <= before[0] + 1  # only the too-small block of the call itself


class HeapAllocator(ek.Allocator):
    """A Python allocator over the device heap, handing out 64-byte-aligned parts of larger blocks."""

    def __init__(self, device: ek.Device) -> None:
        super().__init__()
        self.device = device
        self.calls: list[tuple[str, int]] = []
        self.fail = False

    def alloc(self, size: int, alignment: int) -> tuple[ek.DeviceMemory, int]:
        if self.fail:
            raise MemoryError("this allocator is told to fail")
        self.calls.append(("alloc", size))
        return self.device.malloc(size + alignment), alignment

    def free(self, memory: ek.DeviceMemory, offset: int, size: int) -> None:
        self.calls.append(("free", size))
        memory.free()


def test_python_allocator_gets_every_runtime_allocation(dev: ek.Device, yolo: Any) -> None:
    path, expected, x = yolo
    alloc = HeapAllocator(dev)
    with ek.Context(dev, kernels="portable", allocator=alloc) as ctx:
        assert ctx.allocator is alloc
        net = ctx.load_model(path).network()
        req = net.create_request()
        assert worst(req.run({INPUT_NAME: x}), expected) < 1e-4
        stats = alloc.stats
        assert stats["runtimes"] == 1 and stats["allocations"] == 1 and stats["live_blocks"] == 1
        assert stats["bytes_in_use"] == net.memory(0).workspace_bytes
        for _ in range(20):
            req.run({INPUT_NAME: x})
        assert alloc.stats["allocations"] == 1  # the context is reused
        with pytest.raises(ek.BusyError, match="still used by 1 runtime"):
            alloc.close()
    stats = alloc.stats
    assert stats["runtimes"] == 0 and stats["live_blocks"] == 0 and stats["frees"] == 1
    assert [c[0] for c in alloc.calls] == ["alloc", "free"]
    alloc.close()
    assert alloc.closed


def test_python_allocator_failure_is_a_clear_launch_error(
    dev: ek.Device, yolo: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path, expected, x = yolo
    alloc = HeapAllocator(dev)
    alloc.fail = True
    with ek.Context(dev, kernels="portable", allocator=alloc) as ctx:
        req = ctx.load_model(path).network().create_request()
        with pytest.raises(ek.OutOfMemoryError, match="the allocator refused"):
            req.run({INPUT_NAME: x})
        assert "this allocator is told to fail" in capsys.readouterr().err
        alloc.fail = False
        assert worst(req.run({INPUT_NAME: x}), expected) < 1e-4  # and it recovers
    assert alloc.stats["failures"] == 1


def test_pool_allocator_bounds_the_runtime(dev: ek.Device, yolo: Any) -> None:
    path, expected, x = yolo
    with ek.Context(dev, kernels="portable") as probe:
        need = probe.load_model(path).network().memory(0).workspace_bytes
    with ek.PoolAllocator(dev, need + 4096) as pool:
        assert "PoolAllocator 0/" in repr(pool)
        before = heap(dev)[0]
        with ek.Context(dev, kernels="portable", allocator=pool) as ctx:
            net = ctx.load_model(path).network()
            req = net.create_request()
            after_request = heap(dev)[0]  # the request's own input/output tensors
            assert worst(req.run({INPUT_NAME: x}), expected) < 1e-4
            assert heap(dev)[0] == after_request  # the workspace came from the pool
            assert pool.stats["bytes_in_use"] == need
        assert heap(dev)[0] == before
    assert pool.closed
    # a pool too small for the workspace: the launch fails, saying how much the pool has
    small = ek.PoolAllocator(dev, need - 64)
    with small, ek.Context(dev, kernels="portable", allocator=small) as ctx:
        req = ctx.load_model(path).network().create_request()
        message = rf"the pool allocator \({need - 64} bytes.*no room for {need}"
        with pytest.raises(ek.OutOfMemoryError, match=message):
            req.run({INPUT_NAME: x})
        assert small.stats["failures"] == 1


def test_allocator_type_and_remote_checks(dev: ek.Device) -> None:
    with pytest.raises(ek.InvalidTypeError, match=r"edgekit\.Allocator"):
        ek.Context(dev, allocator=object())  # type: ignore[arg-type]
    with pytest.raises(ek.InvalidArgumentError, match="capacity"):
        ek.PoolAllocator(dev, 0)

    class Lazy(ek.Allocator):
        pass

    lazy = Lazy()
    with ek.Context(dev, kernels="portable", allocator=lazy) as ctx:
        assert ctx.allocator is lazy
    lazy.close()
