"""aarch64 instructions per inference on the emulated board: python -m edgekit_packaging.bench_board

For each test model of edgekit.bench_models (exported and compiled on this host at its test shape, so
the table takes minutes under qemu, not hours), and its int8 version ("<model>-int8", quantized by
onnxruntime.quantization; onnxruntime runs the same int8 model), each engine (EdgeKit's portable,
XNNPACK and auto kernels, and onnxruntime's aarch64 wheel from PyPI) runs in the board's own Python 3.11
under qemu-aarch64 with a TCG plugin that counts the guest instructions executed
(edgekit_packaging.icount), 1 thread. Each engine loads the model and infers 1 + N times in one board
process; the plugin notes the count after load + 1 inference and after the N more (bench_board_guest.py
marks them), and the difference over N is the instructions per inference, start-up (Python, imports,
loading, the first run) left out. Marks, not two processes (load + 1 and load + 1 + N) subtracted:
start-up alone varies by up to ~1 M instructions between identical runs (onnxruntime's more than
EdgeKit's, and the first run after unpacking writes .pyc files), more than a whole MLP inference. qemu's
timings mean nothing for a real board; these counts are exact and repeatable. Every output (the first
and the last) is checked against onnxruntime's on this host (max err: max|a-b| / max(1, max|ref|)), so a
wrong run cannot look fast.

It lives here, not in sdk/edgekit with the host benchmarks, because it needs both sides: torch and onnx
to make the models (edgekit.bench_models) and the emulated board (toolchains, edgekit_packaging), and
the sdk does not depend on the packaging layer. The board must have EdgeKit installed (invoke bench
--board emu flashes it first when the release there is not the current build); onnxruntime's wheel is
downloaded once into $EDGEKIT_CACHE/wheels and unpacked into the rootfs under /opt/edgekit-bench,
outside Debian's site-packages.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit_packaging.icount import QEMU_CPU, IcountError, count_on_board, fake_cpuinfo
from toolchains.boards import Board, cache_dir, load_board
from toolchains.crossbuild import board_rootfs

ENGINES = ("edgekit-portable", "edgekit-xnnpack", "edgekit-auto", "onnxruntime")
GUEST = Path(__file__).with_name("bench_board_guest.py")
BOARD_WORK = "/run/edgekit-bench"  # the host work folder (models, inputs, outputs, guest script)
ORT_ON_BOARD = "/opt/edgekit-bench"  # onnxruntime's unpacked wheel, per version, in the rootfs


def host_onnxruntime_version() -> str:
    from importlib.metadata import version

    return version("onnxruntime")


def _wheel_platforms(board: Board) -> list[str]:
    """The manylinux tags the board's glibc runs (newest first), for pip download --platform."""
    arch = board.arch
    minor = int(board.glibc.split(".")[1])
    return [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)] + [f"manylinux2014_{arch}"]


def onnxruntime_wheel(board: Board, version: str, log: Any = print) -> Path:
    """onnxruntime `version`'s wheel for the board's Python and arch, from PyPI (kept in the cache)."""
    assert board.python is not None
    folder = cache_dir() / "wheels"
    tag = "cp" + "".join(board.python.split(".")[:2])
    pattern = f"onnxruntime-{version}-{tag}-{tag}-*{board.arch}.whl"
    found = sorted(folder.glob(pattern))
    if found:
        return found[-1]
    folder.mkdir(parents=True, exist_ok=True)
    log(f"downloading onnxruntime {version} for {board.arch} Python {board.python} from PyPI")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    command += [f"onnxruntime=={version}", "--only-binary=:all:", "--no-deps", "-d", str(folder)]
    command += ["--python-version", board.python, "--implementation", "cp", "--abi", tag]
    for platform in _wheel_platforms(board):
        command += ["--platform", platform]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = sorted(folder.glob(pattern))
    if done.returncode != 0 or not found:
        said = (done.stdout + done.stderr).strip()[-1500:]
        raise IcountError(
            f"cannot download onnxruntime {version} for {board.arch} / Python {board.python} "
            f"(the host's version: the board must run the same): {said}"
        )
    return found[-1]


def board_onnxruntime(board: Board, rootfs: Path, log: Any = print) -> str:
    """The board folder holding onnxruntime (for PYTHONPATH), unpacked from its wheel once.

    Only the wheel: what `import onnxruntime` and InferenceSession.run need beyond it is numpy (Debian's,
    on the board) and packaging (Debian's too). flatbuffers and protobuf, also listed as its
    requirements, are used only by its tools (quantization, transformers), never imported here.
    """
    version = host_onnxruntime_version()
    board_dir = f"{ORT_ON_BOARD}/onnxruntime-{version}"
    target = rootfs / board_dir.lstrip("/")
    stamp = target / ".unpacked"
    if stamp.is_file():
        return board_dir
    wheel = onnxruntime_wheel(board, version, log)
    log(f"unpacking {wheel.name} into the board's {board_dir}")
    partial = target.with_name(f".{target.name}.partial")
    if partial.exists():
        subprocess.run(["rm", "-rf", str(partial)], check=True)
    partial.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(partial)
    for member in partial.rglob("*.so*"):
        member.chmod(0o755)
    (partial / ".unpacked").write_text(wheel.name + "\n")
    if target.exists():
        subprocess.run(["rm", "-rf", str(target)], check=True)
    partial.replace(target)
    return board_dir


@dataclass
class Row:
    model: str
    shape: tuple[int, ...]
    engine: str
    per_run: float | None  # instructions per inference; None: the engine failed
    startup: int  # instructions of start-up + load + 1 run
    error: float | None  # against the host's onnxruntime
    note: str = ""


def prepare(names: list[str], work: Path, log: Any, int8: bool) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Export and compile each model at its test shape in `work` (with `int8`, also "<name>-int8", the
    model quantized by edgekit.bench_models.quantize_onnx), with an input and the host onnxruntime's
    output for it: {model: (shape, expected output)}."""
    import numpy as np

    from edgekit.bench_models import INPUT_NAME, MODELS, SEED, export_onnx, ort_session, quantize_onnx
    from edgekit.compiler import compile_model

    made: dict[str, tuple[tuple[int, ...], Any]] = {}
    for name in names:
        shape = MODELS[name].test_shape
        log(f"  {name} {'x'.join(map(str, shape))}: export + compile on the host")
        onnx_path = export_onnx(name, shape, work / f"{name}.onnx")
        variants = [(name, onnx_path)]
        if int8:
            variants.append((f"{name}-int8", quantize_onnx(onnx_path, work / f"{name}-int8.onnx", shape)))
        x = np.random.default_rng(SEED).standard_normal(shape).astype(np.float32)
        for label, path in variants:
            compile_model(str(path), str(work / f"{label}.ekm"), stages=[{INPUT_NAME: shape}], name=label)
            np.save(work / f"{label}.input.npy", x)
            made[label] = (shape, ort_session(path, 1).run(None, {INPUT_NAME: x})[0])
    return made


def measure(
    rootfs: Path,
    work: Path,
    name: str,
    engine: str,
    extra: int,
    ort_dir: str,
    expected: Any,
) -> tuple[float, int, float]:
    """(instructions per inference, instructions of start-up + load + 1 run, max error) of one model
    and engine (the max error of its first and its last output)."""
    import numpy as np

    from edgekit.bench_models import max_error

    model = f"{BOARD_WORK}/{name}.onnx" if engine == "onnxruntime" else f"{BOARD_WORK}/{name}.ekm"
    # A fixed hash seed: Python's start-up (the load + 1 column) then repeats to a few thousand.
    env = {"PYTHONHASHSEED": "0"}
    if engine == "onnxruntime":
        env["PYTHONPATH"] = ort_dir
    binds = [(work, BOARD_WORK), (work / "cpuinfo", "/proc/cpuinfo")]
    output = f"{name}.{engine}"
    argv = ["python3", f"{BOARD_WORK}/{GUEST.name}", engine, model, f"{BOARD_WORK}/{name}.input.npy"]
    counts, _ = count_on_board(rootfs, [*argv, f"{BOARD_WORK}/{output}", str(extra)], env=env, binds=binds)
    if len(counts.marks) != 2:
        raise IcountError(f"expected 2 marks from the board's run, got {len(counts.marks)}")
    error = max(max_error(np.load(work / f"{output}.{which}.npy"), expected) for which in ("first", "last"))
    return (counts.marks[1] - counts.marks[0]) / extra, counts.marks[0], error


def print_table(rows: list[Row], extra: int, out: Any = print) -> None:
    from edgekit.bench_models import aligned

    ort = {r.model: r.per_run for r in rows if r.engine == "onnxruntime" and r.per_run}
    table = []
    for r in rows:
        base = ort.get(r.model)
        ratio = f"{r.per_run / base:.2f}x" if r.per_run is not None and base else "-"
        table.append(
            [
                r.model,
                "x".join(map(str, r.shape)),
                r.engine,
                f"{r.per_run / 1e6:.3f}" if r.per_run is not None else "failed",
                f"{r.startup / 1e6:.1f}" if r.startup else "-",
                ratio,
                f"{r.error:.1e}" if r.error is not None else "-",
            ]
        )
    header = ["model", "input", "engine", "M insns/inference", "M insns start+1", "vs ORT", "max err"]
    for line in aligned(header, table, left=3):
        out(line)
    out(
        f"(1 thread; M insns/inference: millions of aarch64 instructions per inference, the count over "
        f"{extra} inferences after load + 1 / {extra}; start+1: Python start-up, imports, load and the "
        "first inference; vs ORT: over onnxruntime's on the board; max err: max|a-b| / max(1, max|ref|) "
        "against onnxruntime on this host)"
    )
    for r in rows:
        if r.note:
            out(f"{r.model} {r.engine}: {r.note}")


def main(argv: list[str] | None = None) -> int:
    from edgekit.bench_models import MODELS

    parser = argparse.ArgumentParser(
        prog="python -m edgekit_packaging.bench_board",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)} (default: all)"
    )
    parser.add_argument(
        "--engines", default=",".join(ENGINES), help=f"comma list of {', '.join(ENGINES)} (default: all)"
    )
    parser.add_argument("--runs", type=int, default=3, help="N: the inferences counted (default 3)")
    parser.add_argument("--board", default="emu-debian12", help="the emulated board's profile")
    parser.add_argument(
        "--no-int8",
        action="store_true",
        help="leave out the int8 models ('<model>-int8': each model quantized by onnxruntime.quantization, "
        "against onnxruntime running the same int8 model)",
    )
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    engines = [e for e in args.engines.split(",") if e]
    if not names or any(n not in MODELS for n in names):
        parser.error(f"--models: choose from {', '.join(MODELS)}")
    if not engines or any(e not in ENGINES for e in engines):
        parser.error(f"--engines: choose from {', '.join(ENGINES)}")
    if args.runs < 1:
        parser.error("--runs must be >= 1")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        board = load_board(args.board)
        rootfs = board_rootfs(board)
        ort_dir = board_onnxruntime(board, rootfs, log) if "onnxruntime" in engines else ""
        print(
            f"aarch64 instructions per inference on the emulated board ({board.name}, qemu-aarch64 -cpu "
            f"{QEMU_CPU} + instruction-count plugin), onnxruntime {host_onnxruntime_version()} (PyPI aarch64 "
            f"wheel); "
            f"models at their test shapes; 1 thread",
            flush=True,
        )
        rows: list[Row] = []
        with tempfile.TemporaryDirectory(prefix="edgekit-bench-board-") as tmp:
            work = Path(tmp)
            (work / GUEST.name).write_bytes(GUEST.read_bytes())
            fake_cpuinfo(work / "cpuinfo")
            prepared = prepare(names, work, log, int8=not args.no_int8)
            for name in prepared:
                shape, expected = prepared[name]
                for engine in engines:
                    log(f"  {name}: {engine} (load + 1 run, then {args.runs} counted)")
                    try:
                        per_run, startup, error = measure(
                            rootfs, work, name, engine, args.runs, ort_dir, expected
                        )
                        rows.append(Row(name, shape, engine, per_run, startup, error))
                    except IcountError as exc:
                        first = str(exc).strip().splitlines()
                        rows.append(Row(name, shape, engine, None, 0, None, " | ".join(first[-3:])))
                        log(f"    failed: {exc}")
        print_table(rows, args.runs)
    except IcountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 1 if any(r.per_run is None for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
