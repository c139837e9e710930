"""A profile and a dump made on the emulated aarch64 board (the flashed runtime, the board's Python, no
matplotlib or onnxruntime there), copied back, then plotted and compared on the host
(docs/profiling.md, "On a board"). Small shapes: qemu is slow."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import profiling
from edgekit.cli import main
from models import compile_ekm, input_shape_of, onnx_path, random_input
from toolchains.rootfs import run_on_board

ON_BOARD = "/opt/edgekit-profile-test"
NAME = "yolo"


def test_profile_and_dump_on_the_board_then_plot_and_compare_on_the_host(
    flashed_emu: Any, tmp_path: Path
) -> None:
    folder: Path = flashed_emu.rootfs / ON_BOARD.lstrip("/")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copy2(compile_ekm(NAME), folder / "model.ekm")
    np.save(folder / "x.npy", random_input(input_shape_of(NAME)))
    said = {}
    for argv in (
        ["profile", "model.ekm", "--input", "x.npy", "--repeat", "2", "-o", "prof"],
        ["dump", "model.ekm", "--input", "x.npy", "-o", "dump"],
    ):
        done = run_on_board(
            flashed_emu.rootfs, ["python3", "-m", "edgekit", *argv], cwd=ON_BOARD, timeout=600
        )
        said[argv[0]] = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
        assert done.returncode == 0, said[argv[0]][-5000:]
    # The board has no matplotlib: the profile says so, and leaves the plot to the host.
    assert "matplotlib" in said["profile"] and not (folder / "prof" / "profile.png").exists(), said["profile"]
    # Copied back to the host: plot the profile, compare the dump with onnxruntime.
    prof, dump = tmp_path / "prof", tmp_path / "dump"
    shutil.copytree(folder / "prof", prof)
    shutil.copytree(folder / "dump", dump)
    shutil.rmtree(folder, ignore_errors=True)
    rows = profiling.read_summary(prof)
    assert rows and all(r["count"] == "2" for r in rows)
    assert main(["profile", "--plot", str(prof)]) == 0
    assert (prof / "profile.png").is_file()
    comparison = profiling.compare_dump(dump, onnx_path(NAME), tolerance=1e-4)
    assert comparison.first_bad is None, comparison.table()
    assert sum(layer.status == "ok" for layer in comparison.layers) >= len(comparison.layers) - 2
