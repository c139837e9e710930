"""EdgeKit on the emulated aarch64 boards: the cross-built Cython module in the board's own Python, the
foundation's memory-API tests there, and C test programs linked to the flashed aarch64 libedgekit.

emu-debian12 runs all of it; emu-debian13 runs the import, the memory-API tests and the C suites in
coherent mode (strict mode and the cache-instruction trace are the same code on both boards)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import EMU_BOARDS, emu_board_build
from toolchains.rootfs import run_on_board

ROOT = Path(__file__).resolve().parents[1]
C_TESTS = (
    "test_device",
    "test_memory",
    "test_allocator",
    "test_coherence",
    "test_concurrency",
    "test_model",
    "test_runtime",
    "test_kernels_generic",
    "test_kernels_spatial",
    "test_kernels_quantized",
)


def on_board(rootfs: Path, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = run_on_board(rootfs, argv, timeout=900, **kwargs)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    )


@pytest.mark.parametrize("flashed_board", EMU_BOARDS, indirect=True)
def test_cython_module_imports_in_the_boards_python(flashed_board: Any) -> None:
    code = (
        "import platform, sys, edgekit, edgekit._core as core; "
        "print(platform.machine(), sys.version_info[:2], edgekit.__version__, core.__file__)"
    )
    done = on_board(flashed_board.rootfs, ["python3", "-c", code])
    assert done.returncode == 0, done.stderr
    major, minor = flashed_board.board.python.split(".")
    assert done.stdout.startswith(f"aarch64 ({major}, {minor}) 0.1.0 ")
    # The flashed package, through the edgekit.pth that install.sh wrote.
    suffix = flashed_board.board.python_ext_suffix  # .cpython-311-aarch64-linux-gnu.so on emu-debian12
    assert f"/opt/edgekit/current/python/edgekit/_core{suffix}" in done.stdout


MEMORY_SUITES = [
    # every memory-API, coherence and bad-input test (about 2.5 min under qemu)
    ("emu-debian12", ("tests/test_memory_api.py", "tests/test_coherence.py", "tests/test_bad_input.py"), 200),
    # the memory-API tests only (under a minute: the same Python and C code; this board's own part is
    # its Python 3.13, numpy 2 and pytest 8)
    ("emu-debian13", ("tests/test_memory_api.py",), 100),
]


@pytest.mark.parametrize(("flashed_board", "tests", "minimum"), MEMORY_SUITES, indirect=["flashed_board"])
def test_memory_api_suite_passes_on_the_board(
    flashed_board: Any, tests: tuple[str, ...], minimum: int
) -> None:
    """The foundation's memory-API, coherence and bad-input tests, run by the board's pytest."""
    done = on_board(
        flashed_board.rootfs,
        ["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd="/src",
        binds=[(ROOT, "/src")],
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) >= minimum, done.stdout[-2000:]
    assert "failed" not in done.stdout and "error" not in done.stdout.lower().split("passed")[-1]


_c_tests: dict[str, Path] = {}


@pytest.fixture
def c_tests_on_board(flashed_board: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/c cross-built with the board's toolchain file against the built libedgekit, copied onto the
    board in /opt/edgekit-ctests; once per board (pytest interleaves the boards' parametrised tests, so a
    module-scoped fixture would be made again at each switch)."""
    name = flashed_board.board.name
    if name not in _c_tests:
        _c_tests[name] = _build_c_tests(flashed_board, tmp_path_factory)
    return _c_tests[name]


def _build_c_tests(flashed_board: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    emu_build = emu_board_build(flashed_board.board.name)
    build = tmp_path_factory.mktemp(f"ctests-aarch64-{flashed_board.board.name}")
    subprocess.run(
        [
            "cmake",
            "-S",
            str(ROOT / "tests" / "c"),
            "-B",
            str(build),
            "-G",
            "Ninja",
            f"-DCMAKE_TOOLCHAIN_FILE={emu_build.cmake_toolchain_file}",
            f"-DEDGEKIT_PREBUILT_DIR={emu_build.stage / 'lib' / 'cmake' / 'EdgeKit'}",
            "-DCMAKE_BUILD_TYPE=Release",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True)
    rootfs: Path = flashed_board.rootfs
    on_board_dir = rootfs / "opt" / "edgekit-ctests"
    on_board_dir.mkdir(exist_ok=True)
    for name in C_TESTS:
        shutil.copy2(build / name, on_board_dir / name)
    return on_board_dir


# qemu-user itself sometimes fails a many-threaded program: about one run in ten of test_runtime here
# (12 to 14 threads over its life) ended in a guest SIGSEGV, a glibc heap abort or a hang at exit after
# "23 passed", while the same suite passed hundreds of runs under ASan/UBSan and TSan on the host. A
# suite that exits non-zero or hangs without a failed check of its own is run once more, and the
# first attempt is printed; a failed check (a FAIL line) fails at once, and so does a second fault.
SUITE_TIMEOUT_S = 300  # a whole suite takes under 60 s under qemu: past this it hangs


def run_c_suite(rootfs: Path, name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [f"/opt/edgekit-ctests/{name}"]
    for attempt in (1, 2):
        try:
            done = run_on_board(rootfs, argv, timeout=SUITE_TIMEOUT_S, env=env)
            result = subprocess.CompletedProcess(
                done.args,
                done.returncode,
                done.stdout.decode(errors="replace"),
                done.stderr.decode(errors="replace"),
            )
        except subprocess.TimeoutExpired as exc:
            out = (
                exc.stdout.decode(errors="replace")
                if isinstance(exc.stdout, bytes)
                else str(exc.stdout or "")
            )
            result = subprocess.CompletedProcess(
                argv, -1, out, f"timed out after {SUITE_TIMEOUT_S} s (emulator hang)"
            )
        if result.returncode == 0 or attempt == 2 or "FAIL " in result.stdout:
            return result
        output = result.stdout + result.stderr
        print(f"{name}: the emulated run failed without a failed check (run again):\n{output[-1500:]}")
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("flashed_board", "coherence"),
    [("emu-debian12", "coherent"), ("emu-debian12", "strict"), ("emu-debian13", "coherent")],
    indirect=["flashed_board"],
)
@pytest.mark.parametrize("name", C_TESTS)
def test_c_tests_run_on_the_board(
    c_tests_on_board: Path, flashed_board: Any, name: str, coherence: str
) -> None:
    env = {  # the flashed library, not the build tree the RUNPATH names
        "LD_LIBRARY_PATH": "/opt/edgekit/current/lib",
        "EDGEKIT_DEVICES": "2",
        "EDGEKIT_COHERENCE": coherence,
    }
    done = run_c_suite(flashed_board.rootfs, name, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    header = subprocess.run(
        ["aarch64-linux-gnu-readelf", "-h", str(c_tests_on_board / name)], capture_output=True, text=True
    )
    assert "AArch64" in header.stdout


@pytest.mark.parametrize("flashed_board", EMU_BOARDS[:1], indirect=True)
def test_flush_and_invalidate_execute_dc_cvac_and_dc_civac(
    c_tests_on_board: Path, flashed_board: Any
) -> None:
    """qemu logs every aarch64 instruction it translates: the flushes of the coherence test ran the real
    dc cvac / dc civac of the flashed libedgekit (the emulator executes them as the no-ops a coherent
    core's are; what matters is that this is the code path a board runs). On emu-debian12."""
    rootfs = flashed_board.rootfs
    log = rootfs / "tmp" / "qemu-in_asm.log"
    log.unlink(missing_ok=True)
    done = subprocess.run(
        [
            "qemu-aarch64",
            "-L",
            str(rootfs),
            "-E",
            "LD_LIBRARY_PATH=/opt/edgekit/current/lib",
            "-E",
            "EDGEKIT_COHERENCE=strict",
            "-d",
            "in_asm",
            "-D",
            str(log),
            str(c_tests_on_board / "test_coherence"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    asm = log.read_text(errors="replace")
    log.unlink()
    assert re.search(r"\bdc\s+cvac\b", asm), "no dc cvac was executed"
    assert re.search(r"\bdc\s+civac\b", asm), "no dc civac was executed"
    assert re.search(r"\bdsb\s+sy\b", asm)
