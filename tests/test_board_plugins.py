"""Plugin op libraries on the emulated aarch64 board (docs/plugins.md): the example plugin, cross-built
for aarch64 by the board build and flashed with the bundle, runs the model compiled on the host with
the host build of the same plugin, through the board's Python (edgekit run --plugin) and the edge app
(--plugin_libs), equal to onnxruntime on the host; the host's x86_64 build of the plugin is refused
on the board with the reason."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_plugins import _model, _ort

from edgekit.compiler import compile_model
from edgekit.plugins import EXAMPLE_PLUGIN, example_plugin_path
from toolchains.rootfs import run_on_board

ON_BOARD = "/opt/edgekit-plugin-test"
BOARD_PLUGIN = f"/opt/edgekit/current/python/edgekit/plugins/{EXAMPLE_PLUGIN}"
APP = "/opt/edgekit/current/bin/edgekit-app"


@pytest.fixture(scope="module")
def on_board(flashed_emu: Any) -> Path:
    folder: Path = flashed_emu.rootfs / ON_BOARD.lstrip("/")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    compile_model(
        _model(True), folder / "plugged.ekm", stages=[{"x": (1, 3, 8, 8)}], plugins=[example_plugin_path()]
    )
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(folder / "x.npy", x)
    x.tofile(folder / "x.bin")
    np.save(folder / "expected.npy", _ort(_model(False), x))
    shutil.copy2(example_plugin_path(), folder / "x86_64-plugin.so")
    return folder


def _board(flashed_emu: Any, command: str) -> tuple[int, str]:
    done = run_on_board(flashed_emu.rootfs, ["/bin/sh", "-c", command], timeout=600)
    return done.returncode, done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


def test_the_board_build_carries_the_aarch64_plugin(flashed_emu: Any) -> None:
    plugin = flashed_emu.rootfs / BOARD_PLUGIN.lstrip("/")
    head = plugin.resolve().read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64


@pytest.mark.parametrize("kernels", ["xnnpack", "portable"])
def test_plugin_model_matches_onnxruntime_on_the_board(
    on_board: Path, flashed_emu: Any, kernels: str
) -> None:
    rc, out = _board(
        flashed_emu,
        f"python3 -m edgekit run {ON_BOARD}/plugged.ekm --input {ON_BOARD}/x.npy "
        f"--expect {ON_BOARD}/expected.npy --kernels {kernels} --plugin {BOARD_PLUGIN}",
    )
    assert rc == 0, out[-3000:]
    assert "OK" in out


def test_edge_app_plugin_libs_on_the_board(on_board: Path, flashed_emu: Any) -> None:
    out_dir = on_board / "out"
    shutil.rmtree(out_dir, ignore_errors=True)
    rc, out = _board(
        flashed_emu,
        f"{APP} --model_path {ON_BOARD}/plugged.ekm --data_path {ON_BOARD}/x.bin --iterations 2 --warmup 0 "
        f"--plugin_libs {BOARD_PLUGIN} --output_dir {ON_BOARD}/out",
    )
    assert rc == 0, out[-3000:]
    np.testing.assert_allclose(
        np.load(out_dir / "y.npy"), np.load(on_board / "expected.npy"), rtol=1e-4, atol=1e-4
    )
    # without the plugin: exit 2 naming the op; the host's x86_64 build: exit 2 with the reason
    rc, out = _board(flashed_emu, f"{APP} --model_path {ON_BOARD}/plugged.ekm --iterations 1")
    assert rc == 2 and "edgekit.example::Swish" in out and "--plugin_libs" in out, out
    rc, out = _board(
        flashed_emu,
        f"{APP} --model_path {ON_BOARD}/plugged.ekm --iterations 1 --plugin_libs {ON_BOARD}/x86_64-plugin.so",
    )
    assert rc == 2, out
    assert "is built for x86_64" in out and "not for this machine (aarch64)" in out, out
