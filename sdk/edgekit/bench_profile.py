"""Benchmark of profiles and dumps (docs/profiling.md): the median launch (infer + wait) of each test
model without a profile, with one (its records cleared between launches), and with a dump directory,
as a table with the ratios to the plain launch. No asserts: the numbers are for reading.

    python -m edgekit.bench_profile [--quick] [--repeats N]

Needs the compiler, torch and onnxruntime (host), like edgekit.bench_models.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

import edgekit as ek
from edgekit.bench_models import INPUT_NAME, MODELS, aligned, export_onnx, time_runs


def _median_ms(run: Callable[[], object], warmup: int, repeats: int) -> float:
    return statistics.median(time_runs(run, warmup, repeats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgekit.bench_profile", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer launches")
    parser.add_argument("--repeats", type=int, default=None, help="timed launches per case")
    args = parser.parse_args(argv)
    repeats = args.repeats or (10 if args.quick else 50)
    dump_repeats = max(3, repeats // 10)
    from edgekit.compiler import compile_model

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-profile-") as tmp, ek.Context(device=0) as ctx:
        for name, spec in MODELS.items():
            shape = spec.test_shape
            onnx_file = export_onnx(name, shape, Path(tmp) / f"{name}.onnx")
            ekm = Path(tmp) / f"{name}.ekm"
            compile_model(str(onnx_file), str(ekm), stages=[{INPUT_NAME: shape}], name=name)
            req = ctx.load_model(str(ekm)).network().create_request()
            req.set_inputs([np.random.default_rng(0).standard_normal(shape).astype(np.float32)])
            prof = ek.Profile()

            dump_dir = Path(tmp) / f"{name}-dump"

            def plain(req: ek.Request = req) -> None:
                req.infer()
                req.wait()

            def profiled(req: ek.Request = req, prof: ek.Profile = prof) -> None:
                prof.clear()
                req.infer(profile=prof)
                req.wait()

            def dumped(req: ek.Request = req, dump_dir: Path = dump_dir) -> None:
                req.infer(dump=dump_dir)
                req.wait()

            off = _median_ms(plain, 3, repeats)
            on = _median_ms(profiled, 3, repeats)
            dump = _median_ms(dumped, 1, dump_repeats)
            off_again = _median_ms(plain, 3, repeats)  # the plain launch again: how much is noise
            rows.append((name, "x".join(map(str, shape)), ctx.kernels, off, off_again, on, dump))
            prof.close()
            req.close()
    header = ("model", "shape", "kernels", "off ms", "off again", "profile ms", "x off", "dump ms", "x off")
    table = [
        (
            m,
            s,
            k,
            f"{off:.3f}",
            f"{again:.3f}",
            f"{on:.3f}",
            f"{on / off:.2f}",
            f"{dump:.2f}",
            f"{dump / off:.1f}",
        )
        for m, s, k, off, again, on, dump in rows
    ]
    print(f"profiling and dumps: median of {repeats} launches (dumps: {dump_repeats}), infer + wait")
    print("\n".join(aligned(header, table, left=3)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
