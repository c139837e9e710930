"""The standalone bundle: a tarball of everything a board needs, installed by its own install.sh.

    edgekit-<version>-<arch>-<board>/
      bin/ lib/ include/ python/edgekit/ share/edgekit/build-info.json   (the build's stage/)
      examples/      runnable examples
      README.md      for the board
      install.sh     checks SHA256SUMS, the board's arch and glibc, installs into /opt/edgekit
      SHA256SUMS     of every other file

The tarball is reproducible: sorted entries, owner root, and one timestamp (SOURCE_DATE_EPOCH, else
the last commit's time).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from toolchains.crossbuild import BUILD_INFO, BuildInfo, read_build_info

PACKAGING_DIR = Path(__file__).resolve().parent.parent
ROOT = PACKAGING_DIR.parent
EXAMPLES = ROOT / "sdk" / "edgekit" / "examples"


class PackageError(RuntimeError):
    """A package that cannot be made from the build that is there."""


@dataclass(frozen=True)
class BuildTree(BuildInfo):
    """A build's stage/ folder, with what its build-info.json says."""

    stage: Path

    @property
    def name(self) -> str:
        return f"edgekit-{self.version}-{self.arch}-{self.board}"


def read_build(stage: Path) -> BuildTree:
    info = read_build_info(stage)
    if info is None:
        raise PackageError(f"{stage} is not a finished build (no {BUILD_INFO}): run invoke build first")
    return BuildTree(**asdict(info), stage=stage)


def source_date_epoch() -> int:
    """One timestamp for every file, so the same sources give the same package."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip())
    except (OSError, subprocess.CalledProcessError, ValueError):
        return 0


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lay_out(build: BuildTree, dest: Path) -> Path:
    """The bundle's folder, dest/<name>/, made fresh from the build."""
    top = dest / build.name
    if top.exists():
        shutil.rmtree(top)
    shutil.copytree(build.stage, top, symlinks=True)
    if build.python:  # the examples are Python programs for now
        examples = top / "examples"
        examples.mkdir()
        for example in sorted(EXAMPLES.glob("*.py")):
            if example.name != "__init__.py":
                shutil.copy2(example, examples / example.name)
    shutil.copy2(PACKAGING_DIR / "bundle" / "install.sh", top / "install.sh")
    (top / "install.sh").chmod(0o755)
    python_line = f", Python {build.python} ({build.python_ext_suffix})" if build.python else ", no Python"
    readme = (PACKAGING_DIR / "bundle" / "README.board.md").read_text()
    for key, value in {
        "@VERSION@": build.version,
        "@BOARD@": build.board,
        "@ARCH@": build.arch,
        "@TOOLCHAIN@": build.toolchain,
        "@GLIBC@": build.glibc_floor,
        "@PYTHON_LINE@": python_line,
        "@NAME@": build.name,
    }.items():
        readme = readme.replace(key, value)
    (top / "README.md").write_text(readme)
    sums = [
        f"{sha256_of(path)}  {path.relative_to(top).as_posix()}"
        for path in sorted(top.rglob("*"))
        if path.is_file() and not path.is_symlink()
    ]
    (top / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return top


def make_tarball(folder: Path, tarball: Path) -> Path:
    """folder as tarball (gzip), written to a temporary name first so a failure leaves no half file."""
    mtime = source_date_epoch()

    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = mtime
        return info

    tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_name(tarball.name + ".partial")
    try:
        # gzip stamps its own header with a time too.
        with (
            gzip.GzipFile(partial, "wb", mtime=mtime) as packed,
            tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as archive,
        ):
            for path in [folder, *sorted(folder.rglob("*"))]:
                arcname = path.relative_to(folder.parent).as_posix()
                archive.add(path, arcname=arcname, recursive=False, filter=normalize)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(tarball)
    return tarball


def make_bundle(build: BuildTree, dist: Path, work: Path) -> Path:
    """dist/<name>.tar.gz, laid out in work/."""
    folder = lay_out(build, work)
    return make_tarball(folder, dist / f"{build.name}.tar.gz")
