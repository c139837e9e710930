"""The test models on the emulated aarch64 board: compiled on the host, run by `edgekit run` in the board's
Python through the flashed aarch64 runtime, with the XNNPACK and the portable kernels, and checked there
against onnxruntime's outputs computed on the host (--expect: error <= 1e-4 of the output's scale).

emu-debian12 runs every model with both kernel paths; emu-debian13 (the 2024 XNNPACK) every model with
the XNNPACK kernels and MobileNetV2 with the portable ones (the same C code as on emu-debian12), the
int8 models likewise."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import EMU_BOARDS, edgekit_run_on_board
from models import INPUT_NAME, MODEL_NAMES, compile_ekm, input_shape_of, onnx_path, ort_run, random_input

KERNELS = ("xnnpack", "portable")

ON_BOARD = "/opt/edgekit-models"


_copied: dict[str, Path] = {}


@pytest.fixture
def models_on_board(flashed_board: Any) -> Path:
    """Every test model's .ekm, input and onnxruntime output, copied into the board's rootfs (once per
    board: a module-scoped fixture would be made again each time pytest switches boards)."""
    name = flashed_board.board.name
    if name not in _copied:
        _copied[name] = _copy_models(flashed_board)
    return _copied[name]


def _copy_models(flashed_board: Any) -> Path:
    folder: Path = flashed_board.rootfs / ON_BOARD.lstrip("/")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in MODEL_NAMES:
        x = random_input(input_shape_of(name))
        shutil.copy2(compile_ekm(name), folder / f"{name}.ekm")
        np.save(folder / f"{name}-input.npy", x)
        np.save(folder / f"{name}-expected.npy", ort_run(onnx_path(name), {INPUT_NAME: x})[0])
    return folder


MODEL_CASES = [
    *((EMU_BOARDS[0], name, kernels) for kernels in KERNELS for name in MODEL_NAMES),
    *((EMU_BOARDS[1], name, "xnnpack") for name in MODEL_NAMES),
    (EMU_BOARDS[1], "mobilenetv2", "portable"),
]


@pytest.mark.parametrize(("flashed_board", "name", "kernels"), MODEL_CASES, indirect=["flashed_board"])
def test_model_matches_onnxruntime_on_the_board(
    models_on_board: Path, flashed_board: Any, name: str, kernels: str
) -> None:
    out = edgekit_run_on_board(
        flashed_board.rootfs,
        f"{ON_BOARD}/{name}.ekm",
        "--input",
        f"{ON_BOARD}/{name}-input.npy",
        "--expect",
        f"{ON_BOARD}/{name}-expected.npy",
        "--kernels",
        kernels,
    )
    # The board ran the kernels asked for (the XNNPACK provider loaded from the flashed lib/).
    assert f"{kernels} kernels" in out
    error = re.search(r"expect \S+: OK, error (\S+)", out)
    assert error is not None, out
    print(f"{name} on {flashed_board.board.name}, {kernels}: error {error.group(1)}")


@pytest.mark.parametrize("flashed_board", EMU_BOARDS, indirect=True)
def test_profile_shows_the_ops_on_xnnpack_on_the_board(models_on_board: Path, flashed_board: Any) -> None:
    """A profile of MobileNetV2 with the XNNPACK kernels on the board: every convolution, the global
    average pool and the classifier ran on the provider (the layout ops stay portable)."""
    from toolchains.rootfs import run_on_board

    out_dir = flashed_board.rootfs / "tmp" / "edgekit-profile"
    shutil.rmtree(out_dir, ignore_errors=True)
    argv = ["python3", "-m", "edgekit", "profile", f"{ON_BOARD}/mobilenetv2.ekm"]
    argv += ["--input", f"{ON_BOARD}/mobilenetv2-input.npy", "--kernels", "xnnpack", "--repeat", "1"]
    done = run_on_board(flashed_board.rootfs, [*argv, "--no-plot", "-o", "/tmp/edgekit-profile"], timeout=600)
    assert done.returncode == 0, done.stdout.decode(errors="replace")[-2000:] + done.stderr.decode()[-2000:]
    with (out_dir / "summary.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    providers: dict[str, set[str]] = {}
    for row in rows:
        providers.setdefault(row["op_type"], set()).add(row["provider"])
    assert providers["CONV"] == {"xnnpack"}, providers
    assert providers["GLOBAL_AVERAGE_POOL"] == {"xnnpack"} and providers["FULLY_CONNECTED"] == {"xnnpack"}


def test_fused_model_on_the_board(flashed_emu: Any) -> None:
    """A downsampling block (an Add of two convs) and an identity block, fused, run by the aarch64 runtime
    with both kernel paths on the emulated board, checked there against onnxruntime's host output."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from test_fusion import Block, export_block, fused_convs

    from edgekit.compiler import compile_model

    torch.manual_seed(5)
    net = torch.nn.Sequential(Block(5, 12, "down"), Block(12, 12, "basic"))
    shape = (1, 5, 14, 11)
    onnx_bytes = export_block(net, shape)
    report = compile_model(onnx.load_from_string(onnx_bytes))
    assert fused_convs(report.data) == 2
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    import onnxruntime as ort  # type: ignore[import-untyped]

    (expected,) = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    folder: Path = flashed_emu.rootfs / "opt/edgekit-fusion"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "block.ekm").write_bytes(report.data)
    np.save(folder / "x.npy", x)
    np.save(folder / "expected.npy", expected)
    for kernels in KERNELS:
        out = edgekit_run_on_board(
            flashed_emu.rootfs,
            "/opt/edgekit-fusion/block.ekm",
            "--input",
            "/opt/edgekit-fusion/x.npy",
            "--expect",
            "/opt/edgekit-fusion/expected.npy",
            "--kernels",
            kernels,
        )
        assert f"{kernels} kernels" in out
        error = re.search(r"expect \S+: OK, error (\S+)", out)
        assert error is not None, out
        print(f"fused blocks on the board, {kernels}: error {error.group(1)}")


def test_winograd_model_matches_onnxruntime_on_the_board(
    flashed_emu: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A conv stack compiled with --conv-algorithm winograd on the board: the portable kernels run the
    aarch64 (NEON) transforms, auto too (it keeps Winograd ops off XNNPACK)."""
    from test_winograd import stack_case

    from edgekit.compiler import compile_model

    folder: Path = flashed_emu.rootfs / ON_BOARD.lstrip("/") / "winograd"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    onnx_file, x = stack_case(0, tmp_path_factory.mktemp("winograd"))
    compile_model(str(onnx_file), str(folder / "w.ekm"), name="w", conv_algorithm="winograd")
    np.save(folder / "input.npy", x)
    np.save(folder / "expected.npy", ort_run(onnx_file, {"input": x})[0])
    for kernels in ("portable", "auto"):
        out = edgekit_run_on_board(
            flashed_emu.rootfs,
            f"{ON_BOARD}/winograd/w.ekm",
            "--input",
            f"{ON_BOARD}/winograd/input.npy",
            "--expect",
            f"{ON_BOARD}/winograd/expected.npy",
            "--kernels",
            kernels,
        )
        error = re.search(r"expect \S+: OK, error (\S+)", out)
        assert error is not None, out
        print(f"winograd stack on the board, {kernels}: error {error.group(1)}")


_quantized: dict[str, Path] = {}


@pytest.fixture
def quantized_on_board(flashed_board: Any) -> Path:
    """Every test model quantized to int8 (QDQ, per-channel weights), compiled, with an input, in the
    board's rootfs (once per board)."""
    name = flashed_board.board.name
    if name not in _quantized:
        _quantized[name] = _copy_quantized(flashed_board)
    return _quantized[name]


def _copy_quantized(flashed_board: Any) -> Path:
    from test_quantized import compile_quantized

    from models import quantized_onnx_path

    folder: Path = flashed_board.rootfs / ON_BOARD.lstrip("/") / "int8"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in MODEL_NAMES:
        data = compile_quantized(quantized_onnx_path(name), input_shape_of(name))
        (folder / f"{name}.ekm").write_bytes(data)
        np.save(folder / f"{name}-input.npy", random_input(input_shape_of(name)))
    return folder


# emu-debian12: every int8 model with both kernel paths; emu-debian13: every int8 model on its 2024
# XNNPACK's int8 operators, MobileNetV2 on the portable ones too (as the float32 cases above).
QUANTIZED_CASES = [
    *((EMU_BOARDS[0], name, kernels) for kernels in KERNELS for name in MODEL_NAMES),
    *((EMU_BOARDS[1], name, "xnnpack") for name in MODEL_NAMES),
    (EMU_BOARDS[1], "mobilenetv2", "portable"),
]


@pytest.mark.parametrize(("flashed_board", "name", "kernels"), QUANTIZED_CASES, indirect=["flashed_board"])
def test_quantized_model_matches_onnxruntime_on_the_board(
    quantized_on_board: Path, flashed_board: Any, name: str, kernels: str
) -> None:
    """The int8 kernels on aarch64: the portable ones give the reference interpreter's values exactly
    (the spec's formulas), XNNPACK's are within a step of onnxruntime on the host, as on the host."""
    from test_quantized import assert_within_a_step

    from edgekit.compiler.reference import run_reference
    from models import OUTPUT_NAME, quantized_onnx_path

    out_dir = quantized_on_board / f"{name}-{kernels}"
    shutil.rmtree(out_dir, ignore_errors=True)
    out = edgekit_run_on_board(
        flashed_board.rootfs,
        f"{ON_BOARD}/int8/{name}.ekm",
        "--input",
        f"{ON_BOARD}/int8/{name}-input.npy",
        "--output-dir",
        f"{ON_BOARD}/int8/{name}-{kernels}",
        "--kernels",
        kernels,
    )
    assert f"{kernels} kernels" in out
    ours = np.load(out_dir / f"{OUTPUT_NAME}.npy")
    x = np.load(quantized_on_board / f"{name}-input.npy")
    ref = run_reference((quantized_on_board / f"{name}.ekm").read_bytes(), None, {INPUT_NAME: x})[OUTPUT_NAME]
    if kernels == "portable":
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    assert_within_a_step(
        ours, quantized_onnx_path(name), x, f"{name} on {flashed_board.board.name} [{kernels}]"
    )
