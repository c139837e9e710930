"""The wheel for the board's Python: the edgekit package as built for the board, tagged for it.

The tag is ``cp3XY-cp3XY-manylinux_<glibc floor>_<arch>``: every ELF in it passed the build's check
against the board's glibc floor, and it links nothing but libc/libm/libpthread/libdl and its own
libedgekit (next to the module, found through rpath $ORIGIN). So ``pip install`` takes it on any board
with that Python and at least that glibc. ``wheel pack`` (the wheel package) writes RECORD.

When the build has the XNNPACK kernel provider, libedgekit_xnnpack.so goes next to libedgekit too (that
is where libedgekit looks for it). It links the board's libXNNPACK.so.0 (Debian's libxnnpack0), which the
wheel does not carry: only libedgekit dlopens the provider, and without libxnnpack0 the dlopen fails and
the portable kernels run, so the wheel still imports everywhere its tag says.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from edgekit_packaging.bundle import BuildTree, PackageError


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
    return wheel
