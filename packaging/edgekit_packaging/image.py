"""An ext4 image of the bundle, to write to a board's spare partition (dd, or the vendor's flash tool).

Its root is the bundle folder: mounted at /opt/edgekit/current it is the same tree install.sh makes.
``mke2fs -d`` fills it without mounting anything (no root or loop devices needed).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from edgekit_packaging.bundle import BuildTree, PackageError

# Room for ext4's own metadata (journal, inode tables) on top of the files.
SLACK_KIB = 8 * 1024


def make_image(build: BuildTree, bundle_folder: Path, dist: Path) -> Path:
    if shutil.which("mke2fs") is None:
        raise PackageError("mke2fs is missing: apt-get install e2fsprogs")
    files = [p for p in bundle_folder.rglob("*") if p.is_file() and not p.is_symlink()]
    # Every file takes at least one 4 KiB block; then a quarter more for directories and inodes.
    content_kib = sum(max(4, (p.stat().st_size + 4095) // 4096 * 4) for p in files)
    size_kib = content_kib + content_kib // 4 + SLACK_KIB
    dist.mkdir(parents=True, exist_ok=True)
    image = dist / f"{build.name}.ext4"
    partial = image.with_name(image.name + ".partial")
    partial.unlink(missing_ok=True)
    result = subprocess.run(
        [
            "mke2fs",
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-L",
            "edgekit",
            "-E",
            "root_owner=0:0",
            "-d",
            str(bundle_folder),
            str(partial),
            f"{size_kib}k",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise PackageError(f"mke2fs failed: {result.stderr.strip()}")
    partial.replace(image)
    return image
