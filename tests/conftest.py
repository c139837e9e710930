"""Shared fixtures of the Python test suite.

Every device fixture opens a *fresh* device (its configuration is fixed when the first handle opens it,
and asking for another one while it is open is ``BusyError``), closes it at teardown, and asserts that
the test freed everything it allocated, so a leak in any test fails that test.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

# The C runtime reads EDGEKIT_DEVICES exactly once per process, the first time any device call runs,
# and never again. The tests that copy between devices need device 1, so the variable must be set
# before edgekit is first used by anything in this process, i.e. here, at conftest import time, which
# pytest does before importing any test module. Everything else assumes exactly 2 devices.
os.environ["EDGEKIT_DEVICES"] = "2"
# A developer's shell setting must not change what the tests see (subprocess tests set their own).
for _name in ("EDGEKIT_COHERENCE", "EDGEKIT_HEAP_SIZE", "EDGEKIT_BACKING"):
    os.environ.pop(_name, None)

import pytest  # noqa: E402

import edgekit as ek  # noqa: E402  (must follow the environment setup)

MiB = 1 << 20
HEAP_SIZE = 16 * MiB
LINE = 64  # EK_CACHE_LINE, the allocator alignment and the strict-coherence granularity

REPO = Path(__file__).resolve().parents[1]
STATUS_H = REPO / "sdk" / "runtime" / "include" / "edgekit" / "status.h"


def parse_status_codes(header: Path = STATUS_H) -> dict[str, int]:
    """The ``ek_status_t`` enum of the C header, as {"EK_ERR_OUT_OF_RANGE": 6, ...}."""
    text = header.read_text()
    body = re.search(r"typedef enum ek_status \{(.*?)\} ek_status_t;", text, re.S)
    assert body, f"no ek_status_t enum in {header}"
    codes = {name: int(value) for name, value in re.findall(r"\b(EK_\w+)\s*=\s*(\d+)", body.group(1))}
    assert codes.get("EK_OK") == 0 and len(codes) >= 10, codes
    return codes


STATUS = parse_status_codes()


def _open(device_id: int, **config: Any) -> Iterator[ek.Device]:
    device = ek.Device(device_id, heap_size=HEAP_SIZE, **config)
    try:
        yield device
    finally:
        gc.collect()  # a failed test's traceback may still hold numpy views of a mapping
        if not device.closed:
            leftover = device.stats
            device.close()
            assert leftover["allocations"] == 0, f"the test leaked device memory: {leftover}"
            assert leftover["used"] == 0, f"the test leaked device memory: {leftover}"


# hookwrapper, not wrapper=True: the same conftest runs on the emulated board under Debian's pytest 7.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Once a failure is reported, drop the locals of its traceback's frames: a numpy view of a mapping
    held there would keep its memory and device alive in the runtime (their release waits for views),
    failing the fixtures' leak check and every later test that opens the same device with another
    configuration (BusyError), hiding the one real failure."""
    yield
    if call.excinfo is not None:
        tb: TracebackType | None = call.excinfo.tb
        while tb is not None:
            frame = tb.tb_frame
            if frame.f_code.co_filename.startswith(str(REPO / "tests")):
                try:
                    frame.f_locals.clear()  # the snapshot dict pytest's report materialised
                    frame.clear()
                except RuntimeError:  # a frame still executing: leave it
                    pass
            tb = tb.tb_next


@pytest.fixture
def dev() -> Iterator[ek.Device]:
    """Device 0, coherent, with a 16 MiB heap."""
    yield from _open(0, coherence="coherent")


@pytest.fixture
def strict_dev() -> Iterator[ek.Device]:
    """Device 0 in strict coherence (an emulated non-coherent SoC), with a 16 MiB heap."""
    yield from _open(0, coherence="strict")


@pytest.fixture
def dev1() -> Iterator[ek.Device]:
    """Device 1 (coherent, 16 MiB heap), for cross-device tests."""
    yield from _open(1, coherence="coherent")


# --- Cross-built boards: built once per session, shared by the cross-build, packaging, board tests ---

# The emulated boards (toolchains/boards/emu-*.toml). emu-debian12, the default device, runs every board
# test (the fixtures emu_build, emu_rootfs, emu_bundle, flashed_emu); emu-debian13 (glibc 2.41, Python
# 3.13, the 2024 XNNPACK) runs the tests parametrised on EMU_BOARDS through the fixtures board_build and
# flashed_board (indirect: `@pytest.mark.parametrize("flashed_board", EMU_BOARDS, indirect=True)`): its
# build, flash, the models with both kernel paths, the C suites, the XNNPACK provider's C test and the
# board's Python import. Each board is built, made and flashed once per session.
EMU_BOARDS = ("emu-debian12", "emu-debian13")
DEFAULT_BOARD = EMU_BOARDS[0]

_builds: dict[str, Any] = {}
_bundles: dict[str, Path] = {}
_fleets: dict[str, Any] = {}


def build_for(board_name: str, kind: str) -> Any:
    """EdgeKit cross-built for a board profile with a toolchain kind (as invoke build does)."""
    from toolchains.boards import load_board
    from toolchains.crossbuild import board_rootfs, cross_build
    from toolchains.detect import require_toolchain
    from toolchains.steps import Steps

    board = load_board(board_name)
    toolchain = require_toolchain(kind, board.arch, board.glibc)
    return cross_build(board, toolchain, steps=Steps("test build"), ensure_rootfs=board_rootfs)


def emu_board_build(name: str) -> Any:
    """An emulated board's build with Debian's gcc (build/aarch64-<name>), once per session."""
    if name not in _builds:
        _builds[name] = build_for(name, "debian")
    return _builds[name]


def emu_board_rootfs(name: str) -> Path:
    """An emulated board's rootfs (made on first use, cached in ~/.cache/edgekit)."""
    from toolchains.boards import load_board
    from toolchains.crossbuild import board_rootfs

    return board_rootfs(load_board(name))


def emu_board_bundle(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An emulated board's bundle tarball, once per session."""
    if name not in _bundles:
        from edgekit_packaging.package import make_packages
        from toolchains.steps import Steps

        dist = tmp_path_factory.mktemp(f"{name}-dist")
        made = make_packages(
            emu_board_build(name).stage, dist, dist / "work", ["bundle"], Steps("test package")
        )
        _bundles[name] = Path(made["bundle"])
    return _bundles[name]


def emu_board_flashed(name: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An emulated board with its bundle installed by flash (as invoke flash --device emu does), once
    per session."""
    if name not in _fleets:
        from edgekit_packaging import devices
        from toolchains.boards import load_board
        from toolchains.steps import Steps

        bundle = emu_board_bundle(name, tmp_path_factory)
        fleet = devices.EmulatedFleet(load_board(name), emu_board_rootfs(name))
        assert devices.flash(fleet, bundle, Steps("test flash"))
        _fleets[name] = fleet
    return _fleets[name]


@pytest.fixture(scope="session")
def emu_build() -> Any:
    """EdgeKit cross-built with Debian's gcc for the emulated board (build/aarch64-emu-debian12)."""
    return emu_board_build(DEFAULT_BOARD)


@pytest.fixture(scope="session")
def emu_rootfs() -> Path:
    """The emulated board's rootfs (made on first use, cached in ~/.cache/edgekit)."""
    return emu_board_rootfs(DEFAULT_BOARD)


@pytest.fixture(scope="session")
def emu_bundle(emu_build: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The emulated board's bundle tarball."""
    return emu_board_bundle(DEFAULT_BOARD, tmp_path_factory)


def edgekit_run_on_board(rootfs: Path, *args: str) -> str:
    """`python3 -m edgekit run ARGS` in the emulated board's Python (the flashed release); its stdout. The
    calling test fails with the output's tail when the command exits non-zero."""
    from toolchains.rootfs import run_on_board

    done = run_on_board(rootfs, ["python3", "-m", "edgekit", "run", *args], timeout=600)
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, out[-3000:] + done.stderr.decode(errors="replace")[-2000:]
    return out


@pytest.fixture(scope="session")
def flashed_emu(emu_bundle: Path, emu_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The emulated board with the bundle installed by flash (as invoke flash --device emu does)."""
    return emu_board_flashed(DEFAULT_BOARD, tmp_path_factory)


def _board_param(request: pytest.FixtureRequest) -> str:
    name = getattr(request, "param", DEFAULT_BOARD)
    assert name in EMU_BOARDS, name
    return str(name)


@pytest.fixture(scope="session")
def board_build(request: pytest.FixtureRequest) -> Any:
    """The build of the emulated board the test is parametrised on (indirect; default emu-debian12)."""
    return emu_board_build(_board_param(request))


@pytest.fixture(scope="session")
def flashed_board(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The flashed emulated board the test is parametrised on (indirect; default emu-debian12)."""
    return emu_board_flashed(_board_param(request), tmp_path_factory)
