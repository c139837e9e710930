"""Benchmark of the inference memory strategies (docs/memory.md, "Inference memory"): for two test
models (mlp: launch overhead dominates; yolo at 64x64: a few hundred KiB of intermediates), the
median first launch of a fresh context (which makes its execution context, so it allocates) and the
median steady launch (infer + wait) with the device heap, a PoolAllocator, a Python Allocator over
the heap, and a static workspace, each against the heap in the same run (the better of two rounds
over the strategies). No asserts: the numbers are for reading.

    python -m edgekit.bench_memory [--quick] [--repeats N]

Needs torch and onnx (the models are the test models, exported like the model benchmark's).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import edgekit as ek
from edgekit.bench_models import INPUT_NAME, MODELS, aligned, export_onnx, time_runs

CASES = ("heap", "pool", "python", "static")


class _HeapAllocator(ek.Allocator):
    """A Python allocator over the device heap: what a user's own allocator costs at least."""

    def __init__(self, device: ek.Device) -> None:
        super().__init__()
        self.device = device

    def alloc(self, size: int, alignment: int) -> tuple[ek.DeviceMemory, int]:
        return self.device.malloc(size), 0

    def free(self, memory: ek.DeviceMemory, offset: int, size: int) -> None:
        memory.free()


def _allocator(case: str, dev: ek.Device, capacity: int) -> Any:
    if case == "pool":
        return ek.PoolAllocator(dev, capacity)
    if case == "python":
        return _HeapAllocator(dev)
    return None


def _measure(case: str, dev: ek.Device, path: Path, x: Any, trials: int, repeats: int) -> tuple[float, float]:
    """(median first launch of a fresh context, median steady launch), in µs."""
    firsts = []
    steady = 0.0
    for trial in range(trials):
        allocator = _allocator(case, dev, 64 << 20)
        with ek.Context(dev, kernels="portable", threads=1, allocator=allocator) as ctx:
            net = ctx.load_model(path).network()
            block = dev.malloc(net.workspace_bytes) if case == "static" else None
            req = net.create_request(workspace=block)
            req.set_inputs({INPUT_NAME: x})
            start = time.perf_counter()
            req.infer()
            req.wait()
            firsts.append((time.perf_counter() - start) * 1e6)
            if trial == trials - 1:

                def launch(req: ek.Request = req) -> None:
                    req.infer()
                    req.wait()

                steady = statistics.median(time_runs(launch, 20, repeats)) * 1000.0
            req.close()
            if block is not None:
                block.free()
        if allocator is not None:
            allocator.close()
    return statistics.median(firsts), steady


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgekit.bench_memory", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer contexts and launches")
    parser.add_argument("--repeats", type=int, default=None, help="timed steady launches per case")
    args = parser.parse_args(argv)
    repeats = args.repeats or (200 if args.quick else 2000)
    trials = 5 if args.quick else 20
    import numpy as np

    from edgekit.compiler import compile_model

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-memory-") as tmp, ek.Device(0) as dev:
        for name, shape in (("mlp", MODELS["mlp"].test_shape), ("yolo", (1, 3, 64, 64))):
            onnx_file = export_onnx(name, shape, Path(tmp) / f"{name}.onnx")
            path = Path(tmp) / f"{name}.ekm"
            compile_model(str(onnx_file), str(path), stages=[{INPUT_NAME: shape}], name=name)
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            _measure("heap", dev, path, x, 2, 10)  # warm-up: the process's first contexts and threads
            # Two rounds over the cases, the better of each kept: the machine's noise and warm-up affect
            # whichever case runs first, not the strategy.
            results: dict[str, tuple[float, float]] = {}
            for _ in range(2):
                for case in CASES:
                    first, steady = _measure(case, dev, path, x, trials, repeats)
                    old = results.get(case, (first, steady))
                    results[case] = (min(old[0], first), min(old[1], steady))
            base_first, base_steady = results["heap"]
            for case in CASES:
                first, steady = results[case]
                rows.append((name, case, first, first / base_first, steady, steady / base_steady))
    header = ("model", "memory", "first launch us", "vs heap", "steady launch us", "vs heap")
    table = [(m, c, f"{f:.1f}", f"{fr:.2f}x", f"{s:.2f}", f"{sr:.2f}x") for m, c, f, fr, s, sr in rows]
    print(
        f"inference memory strategies: median first launch of {trials} fresh contexts (makes the execution "
        f"context: allocates) and median of {repeats} steady launches (infer + wait); portable, 1 thread"
    )
    print("\n".join(aligned(header, table, left=2)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
