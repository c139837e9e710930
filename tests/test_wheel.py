"""The board wheel on a board that has only Debian's python3 and numpy, as a new user's (issue 14): it
must carry the XNNPACK provider's libraries (auditwheel repair) and run XNNPACK kernels there; and where
XNNPACK cannot initialise (no /sys, so its cpuinfo fails), kernels="xnnpack" must fail saying why,
"auto" must run and report portable and why, and the profile must show portable for every op.

The board is a cached rootfs of the emulated board's suite with python3, python3-numpy and python3-pip
only (toolchains.crossbuild.python_only_rootfs); the wheel is pip-installed on it into a bound
temporary folder, so the cached rootfs stays as made. The /sys case runs the same rootfs under proot
without the host's /sys bound."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from edgekit_packaging.bundle import PackageError, read_build
from edgekit_packaging.package import make_packages
from edgekit_packaging.wheels import check_wheel
from models import INPUT_NAME, compile_ekm, input_shape_of, onnx_path, ort_run, random_input
from toolchains.boards import load_board
from toolchains.crossbuild import python_only_rootfs
from toolchains.rootfs import KERNEL_FS, run_on_board
from toolchains.steps import Steps

MODEL = "mlp"
SITE = "/usr/local/lib/python3.11/dist-packages"  # where pip installs for root on Debian's python3
XNNPACK_LIBS = ("libXNNPACK", "libpthreadpool", "libcpuinfo")

# Runs on the board: each kernels choice's context, or its error; the output and each op's provider.
SCRIPT = """
import json, sys
import numpy as np
import edgekit as ek

x = np.load("/work/x.npy")
result = {}
for kernels in ("auto", "xnnpack", "auto"):
    key = kernels if kernels not in result else kernels + "-again"
    try:
        ctx = ek.Context(kernels=kernels, threads=2)
    except ek.EdgeKitError as error:
        result[key] = {"error": f"{type(error).__name__}: {error}"}
        continue
    with ctx:
        req = ctx.load_model("/work/model.ekm").network().create_request()
        (y,) = req.run({"INPUT": x}, profile=True)
        ops = {r.name: r.details["provider"] for r in req.profile_data if r.kind == "LayerExecute"}
        result[key] = {"kernels": ctx.kernels, "reason": ctx.kernels_reason, "ops": ops, "y": y.tolist()}
print("RESULT " + json.dumps(result))
""".replace("INPUT", INPUT_NAME)


@dataclass(frozen=True)
class Board:
    rootfs: Path
    work: Path  # /work on the board: the wheel, the model, its input, the script
    site: Path  # the board's SITE, where the wheel was installed

    def run(
        self, argv: Sequence[str], kernel_fs: Sequence[str] = KERNEL_FS, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        binds = [(self.work, "/work"), (self.site, SITE)]
        return run_on_board(
            self.rootfs, argv, binds=binds, kernel_fs=kernel_fs, env=env, cwd="/work", timeout=600
        )


@pytest.fixture(scope="module")
def board_wheel(emu_build: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("wheel-dist")
    return make_packages(emu_build.stage, dist, dist / "work", ["wheel"], Steps("test package"))["wheel"]


@pytest.fixture(scope="module")
def bare_board(board_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Board:
    rootfs = python_only_rootfs(load_board("emu-debian12"))
    work, site = tmp_path_factory.mktemp("board-work"), tmp_path_factory.mktemp("board-site")
    (work / board_wheel.name).write_bytes(board_wheel.read_bytes())
    (work / "model.ekm").write_bytes(compile_ekm(MODEL).read_bytes())
    np.save(work / "x.npy", random_input(input_shape_of(MODEL)))
    (work / "probe.py").write_text(SCRIPT)
    board = Board(rootfs, work, site)
    # As a new user would: pip, on the board, from the file (pip checks the tag against the board).
    done = board.run(["python3", "-m", "pip", "install", "--no-deps", "--no-index", "--break-system-packages",
                      f"/work/{board_wheel.name}"])  # fmt: skip
    assert done.returncode == 0, done.stdout.decode()[-2000:] + done.stderr.decode()[-2000:]
    assert (site / "edgekit" / "libedgekit_xnnpack.so").is_file()
    return board


def probe(board: Board, kernel_fs: Sequence[str] = KERNEL_FS) -> tuple[dict[str, Any], str]:
    done = board.run(["python3", "/work/probe.py"], kernel_fs=kernel_fs)
    out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    assert done.returncode == 0, out[-3000:] + err[-3000:]
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT ")), err


def expected(board: Board) -> np.ndarray[Any, Any]:
    return ort_run(onnx_path(MODEL), {INPUT_NAME: np.load(board.work / "x.npy")})[0]


def dynamic_tags(data: bytes, path: Path) -> dict[str, list[str]]:
    tags: dict[str, list[str]] = {}
    path.write_bytes(data)
    with path.open("rb") as stream:
        for section in ELFFile(stream).iter_sections():
            if isinstance(section, DynamicSection):
                for tag in section.iter_tags():
                    for key in ("needed", "rpath", "runpath", "soname"):
                        if hasattr(tag, key):
                            tags.setdefault(key, []).append(getattr(tag, key))
    return tags


def test_board_wheel_carries_the_xnnpack_libraries(emu_build: Any, board_wheel: Path, tmp_path: Path) -> None:
    assert board_wheel.name == "edgekit-0.1.0-cp311-cp311-manylinux_2_36_aarch64.whl"
    with zipfile.ZipFile(board_wheel) as wheel:
        names = wheel.namelist()
        vendored = {
            n.split("/")[1]: n for n in names if n.startswith("edgekit.libs/") and not n.endswith("/")
        }
        # Each library once, under a mangled name (libXNNPACK-<hash>.so.0): never taken for a system copy.
        assert sorted(re.sub(r"-[0-9a-f]{8}\.so\.0$", "", name) for name in vendored) == sorted(XNNPACK_LIBS)
        provider = dynamic_tags(wheel.read("edgekit/libedgekit_xnnpack.so"), tmp_path / "provider.so")
        xnnpack = next(v for k, v in vendored.items() if k.startswith("libXNNPACK-"))
        xnnpack_tags = dynamic_tags(wheel.read(xnnpack), tmp_path / "xnnpack.so")
    # The provider (dlopened by libedgekit, so auditwheel must have handled it too) needs the vendored
    # copies by their new names and finds them through its rpath; so does libXNNPACK its own needs.
    assert {n for n in provider["needed"] if n.startswith(XNNPACK_LIBS)} == {
        k for k in vendored if k.startswith(("libXNNPACK-", "libpthreadpool-"))
    }
    assert "$ORIGIN/../edgekit.libs" in ":".join(provider.get("rpath", []) + provider.get("runpath", []))
    assert {n for n in xnnpack_tags["needed"] if n.startswith(XNNPACK_LIBS)} == {
        k for k in vendored if k.startswith(("libpthreadpool-", "libcpuinfo-"))
    }
    # auditwheel's own verdict: consistent with a manylinux tag no newer than the wheel's, nothing external.
    shown = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", "--json", str(board_wheel)],
        capture_output=True,
        text=True,
    )
    verdict = json.loads(shown.stdout)
    glibc = re.fullmatch(r"manylinux_2_(\d+)_aarch64", verdict["overall_tag"])
    assert glibc and int(glibc[1]) <= 36, verdict["overall_tag"]
    assert verdict["external_libs"] == {}
    # Packaging's own check refuses a wheel that needs libraries it does not carry.
    stripped = tmp_path / board_wheel.name
    with zipfile.ZipFile(board_wheel) as source, zipfile.ZipFile(stripped, "w") as dest:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not line.startswith("edgekit.libs/")).encode()
            if not item.filename.startswith("edgekit.libs/"):
                dest.writestr(item, data)
    with pytest.raises(
        PackageError, match=r"consistent with linux_aarch64 and needing libXNNPACK-\w+\.so\.0"
    ):
        check_wheel(stripped, read_build(emu_build.stage))


def test_wheel_runs_xnnpack_on_a_board_with_only_python_and_numpy(bare_board: Board) -> None:
    libs = bare_board.rootfs / "usr" / "lib" / "aarch64-linux-gnu"
    assert not [p.name for p in libs.iterdir() if p.name.startswith(XNNPACK_LIBS)]
    result, err = probe(bare_board)
    want = expected(bare_board)
    for key in ("auto", "xnnpack", "auto-again"):
        run = result[key]
        assert run["kernels"] == "xnnpack" and run["reason"] == "", (key, run)
        assert "xnnpack" in run["ops"].values(), run["ops"]
        np.testing.assert_allclose(np.array(run["y"], np.float32), want, atol=1e-4)
    assert "portable kernels" not in err
    # XNNPACK's pthreadpool calls still reach the provider's threadpool.c (the launch's team), not the
    # vendored libpthreadpool's pools: the dynamic linker's bindings, as XNNPACK initialises.
    bindings = bare_board.run(
        ["python3", "-c", "import edgekit; edgekit.Context(kernels='xnnpack').close()"],
        env={"LD_DEBUG": "bindings"},
    )
    assert bindings.returncode == 0, bindings.stderr.decode(errors="replace")[-3000:]
    bound = re.findall(
        r"binding file \S*/libXNNPACK-\w+\.so\.0 \[0\] to (\S+) \[0\]: "
        r"normal symbol `pthreadpool_parallelize_1d'",
        bindings.stderr.decode(errors="replace"),
    )
    assert bound and all(path.endswith("/edgekit/libedgekit_xnnpack.so") for path in bound), bound


def test_xnnpack_that_cannot_initialise_is_reported_not_silent(bare_board: Board) -> None:
    # No /sys: XNNPACK's cpuinfo cannot read the CPU lists and xnn_initialize fails, as in a bare chroot.
    result, err = probe(bare_board, kernel_fs=("/dev", "/proc"))
    assert "failed to parse both lists of possible and present processors" in err
    # kernels="xnnpack" fails with xnn_initialize's status and the likely cause.
    error = result["xnnpack"]["error"]
    assert error.startswith(
        "UnsupportedError: XNNPACK kernels were asked for, but the provider cannot be used"
    )
    assert re.search(r"xnn_initialize failed with xnn_status_\w+ \(\d+\)", error), error
    assert "/sys/devices/system/cpu/possible" in error
    # "auto" runs and says portable, and why; every op ran on the portable kernels, correctly.
    want = expected(bare_board)
    for key in ("auto", "auto-again"):
        run = result[key]
        assert run["kernels"] == "portable", run
        assert (
            "xnn_initialize failed" in run["reason"] and "/sys/devices/system/cpu/possible" in run["reason"]
        )
        assert set(run["ops"].values()) == {"portable"}, run["ops"]
        np.testing.assert_allclose(np.array(run["y"], np.float32), want, atol=1e-4)
    # Logged once per process (two "auto" contexts were made), with the reason.
    assert err.count("kernels 'auto' run the portable kernels") == 1, err
    assert re.search(r"kernels 'auto' run the portable kernels: .*xnn_initialize failed", err)
    # edgekit info says which kernels really run, and why.
    info = bare_board.run(["python3", "-m", "edgekit", "info", "model.ekm"], kernel_fs=("/dev", "/proc"))
    out = info.stdout.decode(errors="replace")
    assert info.returncode == 0, out + info.stderr.decode(errors="replace")
    assert re.search(r"^kernels: portable \(XNNPACK is not used: .*xnn_initialize failed", out, re.M), out
