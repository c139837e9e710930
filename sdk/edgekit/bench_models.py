"""Model benchmark: python -m edgekit.bench_models [--quick]

Exports small but real PyTorch models to ONNX, compiles them with edgekit.compiler, and times one
inference of each through EdgeKit (portable C kernels, XNNPACK kernels, auto = XNNPACK + the portable
Winograd convolutions) and onnxruntime, with 1 and 2 threads, all in the same run on this machine:
a warm-up, then N timed runs; median and p90 in milliseconds, and EdgeKit's median over onnxruntime's
at the same thread count (< 1: EdgeKit is faster).
Every run goes host arrays in -> host arrays out on both sides (EdgeKit: Request.run, onnxruntime:
InferenceSession.run). The max error against onnxruntime is printed too (max |a-b| / max(1, max |ref|)).
--int8 adds each model quantized to int8 ("<model>-int8": onnxruntime.quantization, QDQ, per-channel
weights, calibrated on random inputs), timed against onnxruntime running the same int8 model, and a
table of int8 over float32 per engine.

MobileNetV2-style and ResNet-18-style run at 1x3x224x224, the others at their small test sizes. Host only:
needs torch and onnxruntime. The model definitions here are also the test suite's models (tests/models.py).

Restricted CPUs: --cpus 0 runs the whole benchmark on the CPUs given (as taskset -c 0 or a container's
cpuset would), --threads default,1,4 compares the default thread count and more threads than CPUs with
one thread, and --busy 1 keeps CPU 1 busy with another process meanwhile (cores taken by other work).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SEED = 20240611

# --------------------------------------------------------------------------------------------------
# Models: random weights from a fixed seed, BatchNorm statistics randomised too (default statistics
# would make BatchNorm an identity and hide a wrong fold), eval mode.
# --------------------------------------------------------------------------------------------------


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, residual when shapes agree."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*conv_bn(cin, hidden, 1), nn.ReLU6()]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(), *conv_bn(hidden, cout, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.body(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    # (expansion, channels, blocks, first stride): MobileNetV2's table at width 1.0
    CONFIG = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [*conv_bn(3, 32, 3, 2), nn.ReLU6()]
        cin = 32
        for expand, cout, blocks, stride in self.CONFIG:
            for i in range(blocks):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers += [*conv_bn(cin, 1280, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.classifier(self.features(x))
        return y


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions, a 1x1 strided projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout, 3))
        self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        y: torch.Tensor = self.relu(self.body(x) + skip)
        return y


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [*conv_bn(3, width, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        cin = width
        for stage, cout in enumerate((width, width * 2, width * 4, width * 8)):
            for i in range(2):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.fc(self.features(x))
        return y


def conv_act(cin: int, cout: int, kernel: int, stride: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(*conv_bn(cin, cout, kernel, stride), act)


class TinyYolo(nn.Module):
    """A two-scale YOLO-style detector: a strided conv backbone, the coarse scale upsampled (Resize,
    nearest) and concatenated with the fine one, a 1x1 detection head per scale with Sigmoid, the heads
    reshaped to (N, anchors, cells, 5 + classes) and concatenated over the cells of both scales."""

    def __init__(self, classes: int = 3, anchors: int = 3) -> None:
        super().__init__()
        self.anchors, self.outputs = anchors, 5 + classes
        leaky = 0.1
        self.stem = nn.Sequential(
            conv_act(3, 16, 3, 2, nn.LeakyReLU(leaky)),
            conv_act(16, 32, 3, 2, nn.LeakyReLU(leaky)),
            conv_act(32, 64, 3, 2, nn.LeakyReLU(leaky)),
        )
        self.down = conv_act(64, 128, 3, 2, nn.LeakyReLU(leaky))
        self.lateral = conv_act(128, 64, 1, 1, nn.SiLU())
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = conv_act(128, 64, 3, 1, nn.SiLU())
        self.head_coarse = nn.Conv2d(128, anchors * self.outputs, 1)
        self.head_fine = nn.Conv2d(64, anchors * self.outputs, 1)

    def _cells(self, head: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(head).reshape(head.shape[0], self.anchors, self.outputs, -1)
        return y.permute(0, 1, 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.stem(x)
        coarse = self.down(fine)
        fused = self.fuse(torch.cat([self.up(self.lateral(coarse)), fine], dim=1))
        return torch.cat([self._cells(self.head_coarse(coarse)), self._cells(self.head_fine(fused))], dim=2)


class Mlp(nn.Module):
    def __init__(self, features: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(features, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, classes),
            nn.Softmax(dim=-1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.body(x)
        return y


class SqueezeExcite(nn.Module):
    """MobileNetV3's squeeze-excite: global pool, 1x1 reduce + ReLU, 1x1 expand + HardSigmoid, scale."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, reduced, 1),
            nn.ReLU(),
            nn.Conv2d(reduced, channels, 1),
            nn.Hardsigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = x * self.gate(x)
        return y


class SENet(nn.Module):
    """A MobileNetV3-flavoured stack: HardSwish convolutions around a squeeze-excite block."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_act(3, 16, 3, 1, nn.Hardswish()),
            SqueezeExcite(16, 8),
            conv_act(16, 32, 3, 2, nn.Hardswish()),
            SqueezeExcite(32, 8),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.body(x)
        return y


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    test_shape: tuple[int, ...]  # the input shape the test suite uses (small: the suite runs on 2 cores)
    bench_shape: tuple[int, ...]  # the input shape the benchmark uses
    fold_constants: bool  # False keeps BatchNormalization nodes in the ONNX graph (EdgeKit folds them)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("mobilenetv2", MobileNetV2, (1, 3, 64, 64), (1, 3, 224, 224), fold_constants=False),
        ModelSpec("resnet18", ResNet18, (1, 3, 64, 64), (1, 3, 224, 224), fold_constants=False),
        ModelSpec("yolo", TinyYolo, (1, 3, 64, 64), (1, 3, 128, 128), fold_constants=True),
        ModelSpec("mlp", Mlp, (1, 64), (1, 64), fold_constants=True),
        ModelSpec("senet", SENet, (1, 3, 32, 32), (1, 3, 64, 64), fold_constants=True),
    )
}
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def build_model(name: str) -> nn.Module:
    """Model `name` with its weights drawn from a fixed seed (the same weights every call), in eval mode."""
    torch.manual_seed(SEED)
    model = MODELS[name].build()
    generator = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(channels, generator=generator) * 0.2 - 0.1)
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(torch.rand(channels, generator=generator) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    return model.eval()


def export_onnx(name: str, shape: Sequence[int], path: str | os.PathLike[str]) -> Path:
    """Export model `name` to ONNX (opset 17, TorchScript exporter) at `path`, batch dimension dynamic."""
    import warnings

    spec = MODELS[name]
    model = build_model(name)
    example = torch.zeros(tuple(shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            do_constant_folding=spec.fold_constants,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return Path(path)


def quantize_onnx(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    shape: Sequence[int],
    *,
    per_channel: bool = True,
    qoperator: bool = False,
    calibration: int = 8,
) -> Path:
    """The float ONNX model `src` quantized to int8 at `dst` the way users quantize theirs: with
    onnxruntime.quantization, statically, calibrated on `calibration` random inputs of `shape`, after
    its pre-processing (BatchNorm folded into Conv, shapes inferred). QDQ form with int8 activations
    and weights, or (`qoperator`) QLinearConv & co. with uint8 activations, onnxruntime's default there."""
    import logging

    from onnxruntime.quantization import (  # type: ignore[import-untyped]
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process  # type: ignore[import-untyped]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            rng = np.random.default_rng(SEED + 1)
            self.feeds = iter(
                [
                    {INPUT_NAME: rng.standard_normal(tuple(shape)).astype(np.float32)}
                    for _ in range(calibration)
                ]
            )

        def get_next(self) -> dict[str, np.ndarray[Any, Any]] | None:
            return next(self.feeds, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's per-weight notices
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre),
                str(dst),
                Reader(),
                quant_format=QuantFormat.QOperator if qoperator else QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8 if qoperator else QuantType.QInt8,
                weight_type=QuantType.QInt8,
            )
    finally:
        root.setLevel(level)
    return Path(dst)


def max_error(actual: np.ndarray[Any, Any], expected: np.ndarray[Any, Any]) -> float:
    """max |a - b| relative to the output's scale: max |a - b| / max(1, max |b|)."""
    if actual.shape != expected.shape:
        raise ValueError(f"shape {actual.shape} differs from the reference's {expected.shape}")
    if expected.size == 0:
        return 0.0
    diff = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
    return diff / max(1.0, float(np.max(np.abs(expected))))


# --------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------


@dataclass
class Row:
    model: str
    shape: tuple[int, ...]
    engine: str
    threads: int | None  # None: the engine's default
    times_ms: list[float]
    error: float | None  # against onnxruntime; None for onnxruntime itself

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p90(self) -> float:
        ordered = sorted(self.times_ms)
        return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def time_runs(run: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def ort_session(onnx_path: Path, threads: int | None) -> Any:
    import onnxruntime as ort  # type: ignore[import-untyped]

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def bench_model(
    name: str,
    shape: tuple[int, ...],
    workdir: Path,
    threads_list: Sequence[int | None],
    kernels_list: Sequence[str],
    warmup: int,
    repeats: int,
    log: Callable[[str], None],
    int8: bool = False,
) -> list[Row]:
    """Rows of model `name` (and, with `int8`, of its int8 version "<name>-int8", quantized by
    quantize_onnx, against onnxruntime running that same quantized model)."""
    from edgekit.compiler import compile_model

    onnx_path = export_onnx(name, shape, workdir / f"{name}.onnx")
    variants = [(name, onnx_path)]
    if int8:
        log(f"  {name}: quantizing to int8 (onnxruntime.quantization, calibrated on random inputs)")
        variants.append((f"{name}-int8", quantize_onnx(onnx_path, workdir / f"{name}-int8.onnx", shape)))
    rows: list[Row] = []
    for label, path in variants:
        ekm_path = workdir / f"{label}.ekm"
        compile_model(str(path), str(ekm_path), stages=[{INPUT_NAME: shape}], name=name)
        rows += _bench_engines(
            label, name, shape, path, ekm_path, threads_list, kernels_list, warmup, repeats, log
        )
    return rows


def _bench_engines(
    label: str,
    name: str,
    shape: tuple[int, ...],
    onnx_path: Path,
    ekm_path: Path,
    threads_list: Sequence[int | None],
    kernels_list: Sequence[str],
    warmup: int,
    repeats: int,
    log: Callable[[str], None],
) -> list[Row]:
    import edgekit as ek

    x = np.random.default_rng(SEED).standard_normal(shape).astype(np.float32)
    rows: list[Row] = []
    for threads in threads_list:
        session = ort_session(onnx_path, threads)
        expected = session.run(None, {INPUT_NAME: x})[0]
        log(f"  {label} {'x'.join(map(str, shape))}: onnxruntime, {threads_text(threads)} thread(s)")
        ort_times = time_runs(functools.partial(session.run, None, {INPUT_NAME: x}), warmup, repeats)
        rows.append(Row(label, shape, "onnxruntime", threads, ort_times, None))
        for kernels in kernels_list:
            log(f"  {label}: edgekit-{kernels}, {threads_text(threads)} thread(s)")
            try:
                ctx = ek.Context(device=0, kernels=kernels, threads=threads)
            except ek.UnsupportedError as exc:
                log(f"    skipped: {exc}")
                continue
            with ctx:
                request = ctx.load_model(str(ekm_path)).network(name).create_request()
                actual = request.run([x])[0]
                times = time_runs(functools.partial(request.run, [x]), warmup, repeats)
                rows.append(
                    Row(label, shape, f"edgekit-{kernels}", threads, times, max_error(actual, expected))
                )
    return rows


def print_int8_ratios(rows: Sequence[Row], out: Callable[[str], None] = print) -> None:
    """Each engine's int8 model against its own float32 run of the same model (< 1: int8 is faster)."""
    median = {(r.model, r.engine, r.threads): r.median for r in rows}
    lines = []
    for r in rows:
        if not r.model.endswith("-int8"):
            continue
        base = median.get((r.model[: -len("-int8")], r.engine, r.threads))
        if base:
            lines.append(
                f"  {r.model:<19}{r.engine:<19}{threads_text(r.threads):>7} threads: "
                f"{r.median:.3f} ms vs {base:.3f} ms float32 = {r.median / base:.2f}x"
            )
    if lines:
        out("int8 against float32 (the same engine and threads):")
        for line in lines:
            out(line)


CLASSIFIERS = ("mobilenetv2", "resnet18", "mlp", "senet")  # one row of class scores per input


def top1_agreement(
    names: Sequence[str], count: int, workdir: Path, log: Callable[[str], None]
) -> list[tuple[str, float, float]]:
    """For each classifier: how often the int8 model's top-1 class equals the float32 model's on
    `count` random inputs (one batch, at the test shape), for EdgeKit's int8 run and onnxruntime's
    run of the same int8 model: [(name, EdgeKit agreement, onnxruntime agreement)]."""
    import edgekit as ek
    from edgekit.compiler import compile_model

    results = []
    for name in names:
        if name not in CLASSIFIERS:
            continue
        shape = MODELS[name].test_shape
        batch = (count, *shape[1:])
        log(f"  {name}: top-1 agreement of int8 and float32 on {count} random inputs")
        onnx_path = export_onnx(name, shape, workdir / f"{name}-top1.onnx")
        int8_path = quantize_onnx(onnx_path, workdir / f"{name}-top1-int8.onnx", shape)
        x = np.random.default_rng(SEED + 2).standard_normal(batch).astype(np.float32)
        float_top = np.argmax(ort_session(onnx_path, None).run(None, {INPUT_NAME: x})[0], axis=-1)
        ort_top = np.argmax(ort_session(int8_path, None).run(None, {INPUT_NAME: x})[0], axis=-1)
        data = compile_model(str(int8_path), stages=[{INPUT_NAME: batch}]).data
        with ek.Context(device=0) as ctx:
            ours = ctx.load_model(data).network().create_request().run([x])[0]
        ek_top = np.argmax(ours, axis=-1)
        results.append((name, float(np.mean(ek_top == float_top)), float(np.mean(ort_top == float_top))))
    return results


def threads_text(threads: int | None) -> str:
    return "default" if threads is None else str(threads)


def aligned(header: Sequence[str], table: Sequence[Sequence[str]], left: int = 0) -> list[str]:
    """The header and the rows as lines of columns padded to their widest cell: the first `left`
    columns aligned left (names), the rest right (numbers)."""
    rows = [list(header), *map(list, table)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in rows
    ]


def print_table(rows: Sequence[Row], out: Callable[[str], None] = print) -> None:
    ort_median = {(r.model, r.threads): r.median for r in rows if r.engine == "onnxruntime"}
    out(
        f"{'model':<18}{'input':<14}{'engine':<19}{'threads':>7}{'median ms':>11}{'p90 ms':>10}"
        f"{'vs ORT':>9}{'max err':>10}"
    )
    for r in rows:
        ratio = r.median / ort_median[(r.model, r.threads)] if (r.model, r.threads) in ort_median else None
        ratio_text = f"{ratio:.2f}x" if ratio is not None else "-"
        error_text = f"{r.error:.1e}" if r.error is not None else "-"
        out(
            f"{r.model:<18}{'x'.join(map(str, r.shape)):<14}{r.engine:<19}{threads_text(r.threads):>7}"
            f"{r.median:>11.3f}{r.p90:>10.3f}{ratio_text:>9}{error_text:>10}"
        )


def print_thread_ratios(rows: Sequence[Row], out: Callable[[str], None] = print) -> None:
    """Each engine's other thread counts against its own 1-thread median."""
    one = {(r.model, r.engine): r.median for r in rows if r.threads == 1}
    others = [r for r in rows if r.threads != 1 and (r.model, r.engine) in one]
    if not others:
        return
    out("against the same engine with 1 thread:")
    for r in others:
        ratio = r.median / one[(r.model, r.engine)]
        out(f"  {r.model:<18}{r.engine:<19}{threads_text(r.threads):>7} threads: {ratio:.2f}x")


@contextmanager
def busy_cpu(cpu: int | None) -> Iterator[None]:
    """Another process spinning on `cpu` for the duration (None: nothing)."""
    if cpu is None:
        yield
        return
    code = f"import os\nos.sched_setaffinity(0, [{cpu}])\nwhile True: pass"
    spinner = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgekit.bench_models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)} (default: all)"
    )
    parser.add_argument(
        "--threads",
        default="1,2",
        help="comma list of thread counts; 'default' is each engine's own (default: 1,2)",
    )
    parser.add_argument(
        "--cpus", default="", help="run on these CPUs only, a comma list of ids, as taskset -c does"
    )
    parser.add_argument(
        "--busy", type=int, default=None, metavar="CPU", help="keep CPU busy with another process meanwhile"
    )
    parser.add_argument(
        "--kernels",
        default="portable,xnnpack,auto",
        help="comma list of EdgeKit kernels (default: portable,xnnpack,auto). The models are compiled "
        "with --conv-algorithm auto: 'portable' and 'auto' run the marked 3x3 convolutions with "
        "Winograd (auto: XNNPACK for the other ops), 'xnnpack' gives XNNPACK every op it supports",
    )
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per row (default: 20, --quick 3)")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also each model quantized to int8 (QDQ, per-channel weights, by onnxruntime.quantization): "
        "'<model>-int8' rows against onnxruntime running the same int8 model, and int8 over float32",
    )
    args = parser.parse_args(argv)

    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(MODELS)}")
    try:
        threads_list = [None if t == "default" else int(t) for t in args.threads.split(",") if t]
        cpus = {int(c) for c in args.cpus.split(",") if c}
    except ValueError:
        parser.error(f"--threads {args.threads!r} / --cpus {args.cpus!r}: expected comma lists like 1,2")
    if not threads_list or min(t or 1 for t in threads_list) < 1:
        parser.error("--threads: thread counts are >= 1")
    if cpus:
        try:
            os.sched_setaffinity(0, cpus)  # before any engine starts its threads: they inherit it
        except (OSError, ValueError) as exc:
            parser.error(f"--cpus {args.cpus}: {exc}")
    kernels_list = [k for k in args.kernels.split(",") if k]
    bad = [k for k in kernels_list if k not in ("portable", "xnnpack", "auto")]
    if bad:
        parser.error(f"--kernels: unknown {', '.join(bad)} (portable, xnnpack, auto)")
    repeats = args.repeats or (3 if args.quick else 20)
    warmup = 1 if args.quick else 3

    from importlib.metadata import version

    import edgekit as ek

    torch.set_num_threads(1)  # torch only exports here; keep it from competing with the timed engines
    busy = f", CPU {args.busy} kept busy by another process" if args.busy is not None else ""
    print(
        f"EdgeKit {ek.__version__} model benchmark on {platform.machine()} ({os.cpu_count()} CPUs, "
        f"{len(os.sched_getaffinity(0))} allowed{busy}), "
        f"Python {platform.python_version()}, onnxruntime {version('onnxruntime')}, "
        f"torch {torch.__version__}; "
        f"{warmup} warm-up + {repeats} timed runs per row",
        flush=True,
    )

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp, busy_cpu(args.busy):
        for name in names:
            shape = MODELS[name].bench_shape
            rows += bench_model(
                name, shape, Path(tmp), threads_list, kernels_list, warmup, repeats, log, int8=args.int8
            )
        agreement = top1_agreement(names, 300, Path(tmp), log) if args.int8 else []
    print_table(rows)
    print_thread_ratios(rows)
    print_int8_ratios(rows)
    if agreement:
        out_lines = aligned(
            ["model", "EdgeKit int8", "onnxruntime int8"],
            [[n, f"{a:.1%}", f"{b:.1%}"] for n, a, b in agreement],
            left=1,
        )
        print("top-1 agreement with the float32 model (300 random inputs, test shapes):")
        for line in out_lines:
            print("  " + line)
    print(
        "(vs ORT: median over onnxruntime's median at the same threads; max err: max|a-b| / max(1, max|ref|))"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
