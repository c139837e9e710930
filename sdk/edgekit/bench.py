"""Memory-API benchmark: python -m edgekit.bench [--quick]

Measures, in one run on this machine:
  - bandwidth of host->device (write), device->host (read), device->device (copy) and flush, against
    numpy's own copy (np.copyto) of the same size;
  - the per-call cost of a small DeviceMemory.write against a Cython method call that does nothing.
Each figure is the best of several repeats (the least disturbed run), after a warm-up.
"""

from __future__ import annotations

import argparse
import platform
import time
import timeit
from collections.abc import Callable

import numpy as np

import edgekit as ek
from edgekit import _core

BANDWIDTH_TARGET = 0.8  # x numpy copy, for 64 MiB
OVERHEAD_TARGET = 3.0  # x the no-op Cython call


def best_seconds(
    run: Callable[[], object], repeats: int, prepare: Callable[[], object] | None = None
) -> float:
    """The fastest of `repeats` timed calls of `run` (after one untimed warm-up); `prepare` runs untimed
    before each."""
    if prepare:
        prepare()
    run()
    best = float("inf")
    for _ in range(repeats):
        if prepare:
            prepare()
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def bandwidth_rows(size: int, repeats: int) -> list[tuple[str, int, float, float]]:
    """(operation, size, GB/s, GB/s of numpy's copy of that size) for each operation at `size` bytes."""
    src = np.random.default_rng(size).integers(0, 255, size, dtype=np.uint8)
    dst = np.empty_like(src)
    numpy_rate = gbps(size, best_seconds(lambda: np.copyto(dst, src), repeats))
    rows = []
    with ek.Device(0) as dev, dev.malloc(size) as a, dev.malloc(size) as b:
        timed = {
            "write (s2d)": lambda: a.write(src),
            "read (d2s)": lambda: a.read(out=dst),
            "copy (d2d)": lambda: dev.copy(b, 0, a, 0, size),
        }
        for name, run in timed.items():
            rows.append((name, size, gbps(size, best_seconds(run, repeats)), numpy_rate))
        a.map()
        rows.append(("flush, coherent", size, gbps(size, best_seconds(a.flush, repeats)), numpy_rate))
        a.unmap()
    rows.append(("flush, strict (all dirty)", size, strict_flush_gbps(size, repeats), numpy_rate))
    return rows


def strict_flush_gbps(size: int, repeats: int) -> float:
    """Flush bandwidth of a strict-coherence mapping whose every cache line the CPU has written."""
    with ek.Device(0, coherence="strict") as dev, dev.malloc(size) as mem:
        views = [mem.map().ndarray(np.uint8, size)]
        fill = iter(range(1, 1 << 30))

        def dirty_all_lines() -> None:
            views[0][::64] = next(fill) % 251 + 1  # one write per cache line: every line dirty

        seconds = best_seconds(mem.flush, repeats, prepare=dirty_all_lines)
        views.clear()  # the numpy view must go before the mapping can
        mem.unmap()
    return gbps(size, seconds)


def call_overhead(number: int) -> tuple[float, float]:
    """Nanoseconds per call of a 64-byte DeviceMemory.write, and of a no-op Cython method."""
    payload = bytes(64)
    noop = _core._Noop()
    with ek.Device(0) as dev, dev.malloc(4096) as mem:
        names = {"mem": mem, "noop": noop, "payload": payload}
        # Statements, not lambdas: a lambda's own call would pad both sides and flatter the ratio.
        write_s = min(timeit.repeat("mem.write(payload, 0)", globals=names, number=number, repeat=7))
        noop_s = min(timeit.repeat("noop.write(payload, 0)", globals=names, number=number, repeat=7))
    return write_s / number * 1e9, noop_s / number * 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgekit.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats: a smoke run")
    args = parser.parse_args(argv)
    sizes = [64 << 10, 1 << 20] if args.quick else [64 << 10, 1 << 20, 64 << 20]
    repeats = 3 if args.quick else 10

    print(
        f"EdgeKit {ek.__version__} memory benchmark on {platform.machine()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}; best of {repeats}"
    )
    print(f"{'operation':<27}{'size':>8}{'GB/s':>12}{'numpy GB/s':>12}{'ratio':>11}")
    rows = [row for size in sizes for row in bandwidth_rows(size, repeats)]
    for name, size, rate, numpy_rate in rows:
        label = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
        print(f"{name:<27}{label:>8}{rate:>12.2f}{numpy_rate:>12.2f}{rate / numpy_rate:>10.2f}x")
    print("(coherent flush on a cache-coherent host is a memory fence; on aarch64 it is dc cvac per line)")

    write_ns, noop_ns = call_overhead(20_000 if args.quick else 200_000)
    print(f"\n{'call':<40}{'ns/call':>10}")
    print(f"{'DeviceMemory.write(64 bytes, 0)':<40}{write_ns:>10.1f}")
    print(f"{'no-op Cython method (same arguments)':<40}{noop_ns:>10.1f}")
    print(f"{'ratio':<40}{write_ns / noop_ns:>9.2f}x")

    largest = max(sizes)
    copies = [r for r in rows if r[1] == largest and r[0] in ("write (s2d)", "read (d2s)", "copy (d2d)")]
    worst = min(rate / numpy_rate for _, _, rate, numpy_rate in copies)
    print(
        f"\ntargets: {largest >> 20} MiB copies >= {BANDWIDTH_TARGET}x numpy: worst {worst:.2f}x "
        f"{'met' if worst >= BANDWIDTH_TARGET else 'MISSED'}; "
        f"call overhead <= {OVERHEAD_TARGET}x no-op: {write_ns / noop_ns:.2f}x "
        f"{'met' if write_ns / noop_ns <= OVERHEAD_TARGET else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
