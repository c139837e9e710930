"""Benchmark of the launch overhead floor (issue: performance): one small model of one op (a 1x16
Relu), so the time is the runtime's fixed cost per launch, measured in one run for:

- C: ``edgekit-app`` on the model, its p50: ``--io device`` (``ek_rt_run`` per iteration: launch and
  wait in one call, the inputs and outputs already in device memory) and ``--io host``
  (``ek_rt_launch_data`` per iteration: host buffers copied in and out by the call);
- Python: ``req.run(x)`` (copy in, launch, wait, copy out) and ``req.infer(); req.wait()`` (the launch
  alone), medians;
- onnxruntime: ``session.run(None, {"x": x})`` on the same ONNX model, one thread, median;

each with its ratio to onnxruntime's. No asserts: the numbers are for reading (the targets are C at
or below 2 us, and Python below onnxruntime).

    python -m edgekit.bench_launch [--quick] [--repeats N]

Needs onnx and onnxruntime.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np

import edgekit as ek
from edgekit.app import binary
from edgekit.bench_models import aligned, ort_session, time_runs

SHAPE = (1, 16)


def _model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(SHAPE))],
    )
    # IR 8: what the onnxruntime releases on PyPI read (a newer onnx writes a newer IR by default)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def _app_p50_us(ekm: Path, kernels: str, io: str, iterations: int) -> float | None:
    """edgekit-app's p50 latency (ms in its report) of `iterations` launches with ``--io io``, in µs;
    None without the app."""
    app = binary()
    if app is None:
        return None
    done = subprocess.run(
        [str(app), "--model_path", str(ekm), "--iterations", str(iterations), "--warmup", "200",
         "--launch_threads", "1", "--kernels", kernels, "--io", io],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    row = re.search(r"^0\s+0\s+\S+\s+\S+\s+\d+\s+\d+\s+([\d.]+)\s", done.stdout, re.M)
    return float(row[1]) * 1000.0 if row else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgekit.bench_launch", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer launches")
    parser.add_argument("--repeats", type=int, default=None, help="timed launches per case")
    args = parser.parse_args(argv)
    repeats = args.repeats or (300 if args.quick else 5000)
    from edgekit.compiler import compile_model

    rows: list[tuple[str, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-launch-") as tmp:
        onnx_file = _model(Path(tmp) / "relu16.onnx")
        ekm = Path(tmp) / "relu16.ekm"
        compile_model(str(onnx_file), str(ekm), name="relu16")
        x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
        session = ort_session(onnx_file, 1)
        ort_us = statistics.median(time_runs(lambda: session.run(None, {"x": x}), 200, repeats)) * 1000.0
        for kernels in ("portable", "xnnpack"):
            with ek.Context(kernels=kernels, threads=1) as ctx:
                if ctx.kernels != kernels:
                    continue  # no XNNPACK provider here
                req = ctx.load_model(ekm).network().create_request()

                def run(req: ek.Request = req) -> None:
                    req.run({"x": x})

                def launch(req: ek.Request = req) -> None:
                    req.infer()
                    req.wait()

                run_us = statistics.median(time_runs(run, 200, repeats)) * 1000.0

                launch_us = statistics.median(time_runs(launch, 200, repeats)) * 1000.0
                req.close()
            rows.append((f"C ek_rt_run ({kernels})", _app_p50_us(ekm, kernels, "device", repeats)))
            rows.append((f"C ek_rt_launch_data ({kernels})", _app_p50_us(ekm, kernels, "host", repeats)))
            rows.append((f"Python req.run ({kernels})", run_us))
            rows.append((f"Python infer + wait ({kernels})", launch_us))
        rows.append(("onnxruntime session.run", ort_us))
    header = ("path", "median us", "vs onnxruntime")
    table = [
        (name, f"{us:.2f}" if us is not None else "-", f"{us / ort_us:.2f}x" if us is not None else "-")
        for name, us in rows
    ]
    print(f"launch overhead floor: a 1x16 Relu, 1 thread, median of {repeats} launches")
    print("\n".join(aligned(header, table, left=1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
