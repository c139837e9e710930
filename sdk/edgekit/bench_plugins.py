"""Benchmark of plugin op calls (docs/plugins.md): the median launch (infer + wait) of a one-op model
whose op is the example plugin's Swish (edgekit.example, beta 1) against the same model with the
built-in SIGMOID in its place (one op, the same element count, one pass over the data each), at a few
sizes; the difference at the smallest size is the plugin call's overhead per launch. Portable kernels,
one thread (the launch's team is not woken for small tensors). No asserts: the numbers are for reading.

    python -m edgekit.bench_plugins [--quick] [--repeats N]

Needs the compiler (onnx), like the other model benchmarks.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import edgekit as ek
from edgekit.bench_models import aligned, time_runs
from edgekit.plugins import EXAMPLE_DOMAIN, example_plugin_path

SIZES = (16, 4096, 262144)


def _model(op: str, size: int) -> Any:
    from onnx import TensorProto, helper

    node = (
        helper.make_node("Swish", ["x"], ["y"], domain=EXAMPLE_DOMAIN, beta=1.0)
        if op == "plugin"
        else helper.make_node("Sigmoid", ["x"], ["y"])
    )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, size])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(EXAMPLE_DOMAIN, 1)]
    return helper.make_model(helper.make_graph([node], op, [x], [y]), opset_imports=opsets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgekit.bench_plugins", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer launches")
    parser.add_argument("--repeats", type=int, default=None, help="timed launches per case")
    args = parser.parse_args(argv)
    repeats = args.repeats or (100 if args.quick else 1000)
    from edgekit.compiler import compile_model

    plugin = example_plugin_path()
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="edgekit-bench-plugins-") as tmp,
        ek.Context(device=0, kernels="portable", threads=1) as ctx,
    ):
        ctx.load_plugin(plugin)
        for size in SIZES:
            times = {}
            for op in ("builtin", "plugin"):
                path = Path(tmp) / f"{op}{size}.ekm"
                compile_model(_model(op, size), path, name=f"{op}{size}", plugins=[plugin])
                req = ctx.load_model(path).network().create_request()
                req.set_inputs([np.random.default_rng(0).standard_normal((1, size)).astype(np.float32)])

                def launch(req: ek.Request = req) -> None:
                    req.infer()
                    req.wait()

                times[op] = statistics.median(time_runs(launch, 20, repeats)) * 1000.0  # µs
                req.close()
            rows.append((size, times["builtin"], times["plugin"]))
    header = ("elements", "built-in SIGMOID us", "plugin Swish us", "plugin - built-in us")
    table = [(f"{n}", f"{b:.2f}", f"{p:.2f}", f"{p - b:+.2f}") for n, b, p in rows]
    print(
        f"plugin op calls: median of {repeats} launches (infer + wait) of a one-op model, portable, 1 thread"
    )
    print("\n".join(aligned(header, table)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
