"""Winograd benchmark: python -m edgekit.bench_winograd [--quick]

Times one 3x3 stride-1 convolution layer (+ ReLU) of the shapes ResNet-18 and a YOLO-style detector have,
each compiled twice (``--conv-algorithm winograd`` and ``gemm``), interleaved in one run, best of N:

- ``winograd``: the portable Winograd F(4x4,3x3) kernel (kernels=auto keeps it off XNNPACK),
- ``xnnpack``: the same layer on XNNPACK (the gemm file under kernels=auto),
- ``im2col``: the same layer on the portable im2col + SGEMM (the gemm file under kernels=portable),

and the ratios winograd/xnnpack and winograd/im2col (< 1: Winograd is faster), with 1 and 2 threads.
These are the figures the compiler's ``auto`` thresholds (edgekit.compiler.passes: WINOGRAD_MIN_CHANNELS,
WINOGRAD_MAX_CHANNELS, WINOGRAD_MIN_SIDE, WINOGRAD_MIN_SIDE_WIDE) come from; re-run it when the SGEMM
changes. Each layer's time includes the NCHW <-> NHWC transposes of the one-layer model (the same on
both sides).
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

# (output side, input channels, output channels): ResNet-18 at 224 (layer1..4), YOLO-style at 128 and 64
# (fuse), small and wide layers
LAYERS: list[tuple[int, int, int]] = [
    (56, 64, 64),
    (28, 128, 128),
    (14, 256, 256),
    (7, 512, 512),
    (16, 128, 64),
    (8, 128, 64),  # the YOLO-style model's fuse layer at 64x64, the test and board shape
    (8, 32, 32),
    (32, 32, 32),
    (64, 16, 16),
]
QUICK_LAYERS = [(16, 32, 32), (8, 16, 16)]


def export_layer(side: int, cin: int, cout: int, path: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(side * 1000 + cin + cout)
    model = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, cin, side, side),), str(path), dynamo=False, input_names=["input"]
        )


def best_of(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Each function's best time in ms, the functions interleaved (one call each per round)."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], (time.perf_counter() - t) * 1e3)
    return best


def bench_layer(
    side: int, cin: int, cout: int, threads: int, repeats: int, workdir: Path
) -> dict[str, float]:
    import edgekit as ek
    from edgekit.compiler import compile_model

    onnx_file = workdir / f"l{side}_{cin}_{cout}.onnx"
    if not onnx_file.exists():
        export_layer(side, cin, cout, onnx_file)
        for algorithm in ("winograd", "gemm"):
            compile_model(
                str(onnx_file), str(workdir / f"{onnx_file.stem}-{algorithm}.ekm"), conv_algorithm=algorithm
            )
    x = np.random.default_rng(0).standard_normal((1, cin, side, side)).astype(np.float32)
    with (
        ek.Context(device=0, kernels="auto", threads=threads) as auto,
        ek.Context(device=0, kernels="portable", threads=threads) as portable,
    ):
        runs = {
            "winograd": auto.load_model(str(workdir / f"{onnx_file.stem}-winograd.ekm")),
            "xnnpack": auto.load_model(str(workdir / f"{onnx_file.stem}-gemm.ekm")),
            "im2col": portable.load_model(str(workdir / f"{onnx_file.stem}-gemm.ekm")),
        }
        reqs = {name: model.network().create_request() for name, model in runs.items()}
        fns: dict[str, Callable[[], object]] = {
            name: functools.partial(r.run, [x]) for name, r in reqs.items()
        }
        return best_of(fns, repeats)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgekit.bench_winograd", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="two small layers, few repeats (a smoke run)")
    parser.add_argument("--threads", default="1,2", help="comma list of thread counts (default: 1,2)")
    parser.add_argument(
        "--repeats", type=int, default=0, help="interleaved rounds per layer (default: 15, --quick 3)"
    )
    args = parser.parse_args(argv)
    layers = QUICK_LAYERS if args.quick else LAYERS
    repeats = args.repeats or (3 if args.quick else 15)
    threads_list = [int(t) for t in args.threads.split(",") if t]
    print(
        f"{'layer (side, C->M)':<20}{'threads':>8}{'winograd ms':>13}{'xnnpack ms':>12}{'im2col ms':>11}"
        f"{'w/xnnpack':>11}{'w/im2col':>10}"
    )
    with tempfile.TemporaryDirectory(prefix="ek-bench-winograd-") as tmp:
        for side, cin, cout in layers:
            for threads in threads_list:
                t = bench_layer(side, cin, cout, threads, repeats, Path(tmp))
                w, x, i = t["winograd"], t["xnnpack"], t["im2col"]
                layer = f"{side}x{side} {cin}->{cout}"
                print(
                    f"{layer:<20}{threads:>8}{w:>13.3f}{x:>12.3f}{i:>11.3f}{w / x:>10.2f}x{w / i:>9.2f}x",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
