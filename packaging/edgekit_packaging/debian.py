"""The board's .deb: the bundle's files under /opt/edgekit, for boards that run Debian or Ubuntu.

/opt/edgekit/{bin,lib,include,python,share,examples,README.md}
                                                  (lib/libedgekit_xnnpack.so: Recommends libxnnpack0)
/usr/lib/python3/dist-packages/edgekit.pth        (when the board has Python: 'import edgekit')
/lib/systemd/system/edgekit-remote-server.service (when remote_server is built; installed disabled:
                                                   the package has no maintainer scripts)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from edgekit_packaging.bundle import PACKAGING_DIR, BuildTree, PackageError, source_date_epoch

DEB_ARCH = {"aarch64": "arm64", "x86_64": "amd64"}
PREFIX = "opt/edgekit"
UNIT = "edgekit-remote-server.service"


# The XNNPACK kernel provider, when the build has it: libedgekit dlopens it and falls back to its
# portable kernels when it does not load, so the XNNPACK libraries it links are recommended, not required.
PROVIDER = "libedgekit_xnnpack.so"
PROVIDER_RECOMMENDS = ("libxnnpack0", "libpthreadpool0")


def has_provider(build: BuildTree) -> bool:
    return (build.stage / "lib" / PROVIDER).is_file()


# libedgekit dlopens libsodium for paired remote sessions (remote_server --key) only.
PAIRING_RECOMMENDS = ("libsodium23",)


def recommends(build: BuildTree) -> str:
    """The control file's Recommends line."""
    names = [*(PROVIDER_RECOMMENDS if has_provider(build) else ()), *PAIRING_RECOMMENDS]
    return f"Recommends: {', '.join(names)}\n"


def depends(build: BuildTree) -> str:
    deps = [f"libc6 (>= {build.glibc_floor})"]
    if build.python:
        major, minor = (int(part) for part in build.python.split(".")[:2])
        # The extension module is built for one Python minor version.
        deps += [f"python3 (>= {major}.{minor})", f"python3 (<< {major}.{minor + 1})", "python3-numpy"]
    return ", ".join(deps)


def make_deb(build: BuildTree, bundle_folder: Path, dist: Path, work: Path) -> Path:
    """dist/edgekit_<version>_<arch>.deb from the laid-out bundle folder (see bundle.lay_out)."""
    if shutil.which("dpkg-deb") is None:
        raise PackageError("dpkg-deb is missing: apt-get install dpkg")
    root = work / "deb-root"
    if root.exists():
        shutil.rmtree(root)
    prefix = root / PREFIX
    # dpkg installs and checks the files itself: the bundle's own installer and sums stay out.
    shutil.copytree(
        bundle_folder, prefix, symlinks=True, ignore=shutil.ignore_patterns("install.sh", "SHA256SUMS")
    )
    if build.python:
        pth = root / "usr/lib/python3/dist-packages/edgekit.pth"
        pth.parent.mkdir(parents=True)
        pth.write_text(f"/{PREFIX}/python\n")
    if (prefix / "bin" / "remote_server").is_file():
        unit = root / "lib/systemd/system" / UNIT
        unit.parent.mkdir(parents=True)
        shutil.copy2(PACKAGING_DIR / "deb" / UNIT, unit)

    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    installed_kib = sum(p.stat().st_size for p in files) // 1024 + 1
    control_dir = root / "DEBIAN"
    control_dir.mkdir()
    control = (PACKAGING_DIR / "deb" / "control.in").read_text()
    for key, value in {
        "@VERSION@": build.version,
        "@DEB_ARCH@": DEB_ARCH[build.arch],
        "@INSTALLED_SIZE@": str(installed_kib),
        "@DEPENDS@": depends(build),
        "@RECOMMENDS_LINE@\n": recommends(build),
        "@BOARD@": build.board,
        "@TOOLCHAIN@": build.toolchain,
        "@GLIBC@": build.glibc_floor,
    }.items():
        control = control.replace(key, value)
    (control_dir / "control").write_text(control)
    (control_dir / "md5sums").write_text(
        "".join(
            f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}\n" for p in files
        )
    )

    dist.mkdir(parents=True, exist_ok=True)
    deb = dist / f"edgekit_{build.version}_{DEB_ARCH[build.arch]}.deb"
    partial = deb.with_name(deb.name + ".partial")
    result = subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(partial)],
        capture_output=True,
        text=True,
        # dpkg-deb clamps file times to this, so the same build gives the same package.
        env={**os.environ, "SOURCE_DATE_EPOCH": str(source_date_epoch())},
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise PackageError(f"dpkg-deb failed: {result.stderr.strip()}")
    partial.replace(deb)
    return deb
