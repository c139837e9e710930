"""invoke package's four artifacts, checked with the tools a user would check them with."""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import parse_wheel_filename

from conftest import emu_board_build, emu_board_rootfs
from edgekit_packaging.bundle import PackageError, read_build
from edgekit_packaging.package import make_packages, parse_formats
from toolchains.rootfs import run_on_board, start_on_board, stop_on_board
from toolchains.steps import Steps


@pytest.fixture(scope="module")
def packages(emu_build: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    dist = tmp_path_factory.mktemp("dist")
    return make_packages(emu_build.stage, dist, dist / "work", parse_formats("all"), Steps("test package"))


def test_all_four_artifacts_are_made(packages: dict[str, Path]) -> None:
    assert set(packages) == {"bundle", "deb", "wheel", "image"}
    assert packages["bundle"].name == "edgekit-0.1.0-aarch64-emu-debian12.tar.gz"
    assert packages["deb"].name == "edgekit_0.1.0_arm64.deb"
    assert not list(packages["bundle"].parent.glob("*.partial"))


def test_bundle_layout_and_checksums(packages: dict[str, Path], tmp_path: Path) -> None:
    with tarfile.open(packages["bundle"]) as archive:
        names = archive.getnames()
        assert all(member.uid == 0 and member.gid == 0 for member in archive.getmembers())
        archive.extractall(tmp_path, filter="tar")
    top = tmp_path / "edgekit-0.1.0-aarch64-emu-debian12"
    assert {n.split("/")[0] for n in names} == {top.name}
    for path in (
        "lib/libedgekit.so.0.1.0",
        "bin/edgekit-app",
        "python/edgekit/_core.cpython-311-aarch64-linux-gnu.so",
        "python/edgekit/device.py",
        "include/edgekit/memory.h",
        "lib/cmake/EdgeKit/EdgeKitConfig.cmake",
        "examples/memory_demo.py",
        "README.md",
        "SHA256SUMS",
        "share/edgekit/build-info.json",
    ):
        assert (top / path).is_file(), path
    assert (top / "install.sh").stat().st_mode & 0o111
    assert (top / "bin" / "edgekit-app").stat().st_mode & 0o777 == 0o755
    assert (top / "lib" / "libedgekit.so.0").is_symlink()
    listed = {}
    for line in (top / "SHA256SUMS").read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    files = {p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file() and not p.is_symlink()}
    assert set(listed) == files - {"SHA256SUMS"}
    for name, digest in listed.items():
        assert hashlib.sha256((top / name).read_bytes()).hexdigest() == digest, name
    assert "Python 3.11" in (top / "README.md").read_text()


def test_bundle_is_reproducible(emu_build: Any, packages: dict[str, Path], tmp_path: Path) -> None:
    again = make_packages(emu_build.stage, tmp_path, tmp_path / "work", ["bundle"], Steps("again"))
    assert again["bundle"].read_bytes() == packages["bundle"].read_bytes()


def test_wheel_is_tagged_for_the_board(packages: dict[str, Path], tmp_path: Path) -> None:
    wheel = packages["wheel"]
    name, version, _, tags = parse_wheel_filename(wheel.name)
    assert (str(name), str(version)) == ("edgekit", "0.1.0")
    assert {str(tag) for tag in tags} == {"cp311-cp311-manylinux_2_36_aarch64"}
    # pip, asked for that board, takes it (and would refuse it for another platform).
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary=:all:"]
    board = ["--platform", "manylinux_2_36_aarch64", "--python-version", "3.11", "--target", str(target)]
    subprocess.run([*pip, *board, str(wheel)], check=True, capture_output=True)
    assert (target / "edgekit" / "_core.cpython-311-aarch64-linux-gnu.so").is_file()
    assert (target / "edgekit" / "libedgekit.so.0").is_file()
    older = [
        "--platform",
        "manylinux_2_35_aarch64",
        "--python-version",
        "3.11",
        "--target",
        str(tmp_path / "x"),
    ]
    refused = subprocess.run([*pip, *older, str(wheel)], capture_output=True, text=True)
    assert refused.returncode != 0 and "is not a supported wheel on this platform" in refused.stderr
    # wheel's own reader sees the same tags in the WHEEL file, and the RECORD is valid.
    unpacked = subprocess.run(
        [sys.executable, "-m", "wheel", "unpack", "--dest", str(tmp_path / "u"), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert unpacked.returncode == 0, unpacked.stderr
    wheel_file = next((tmp_path / "u").glob("*/edgekit-0.1.0.dist-info/WHEEL")).read_text()
    assert "Tag: cp311-cp311-manylinux_2_36_aarch64" in wheel_file


def test_wheel_contents_import_on_the_board(
    packages: dict[str, Path], emu_rootfs: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "wheel", "unpack", "--dest", str(tmp_path), str(packages["wheel"])], check=True
    )
    (tmp_path / "edgekit-0.1.0").rename(site)
    code = (
        "import sys; sys.path.insert(0, '/wheel'); import edgekit; d = edgekit.Device(0); "
        "print(edgekit.__file__, d.stats['total'] > 0); d.close()"
    )
    done = run_on_board(emu_rootfs, ["python3", "-I", "-c", code], binds=[(site, "/wheel")])
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["/wheel/edgekit/__init__.py", "True"]


def test_the_debian13_wheel_follows_its_board(tmp_path: Path) -> None:
    """emu-debian13's wheel is tagged for its Python 3.13 and glibc 2.41 (auditwheel show agrees: its
    vendored Debian 13 libXNNPACK needs glibc 2.38), and runs in its Python with the XNNPACK kernels."""
    build = emu_board_build("emu-debian13")
    made = make_packages(build.stage, tmp_path / "dist", tmp_path / "work", ["wheel"], Steps("t"))
    _, _, _, tags = parse_wheel_filename(made["wheel"].name)
    assert {str(tag) for tag in tags} == {"cp313-cp313-manylinux_2_41_aarch64"}
    subprocess.run(
        [sys.executable, "-m", "wheel", "unpack", "--dest", str(tmp_path), str(made["wheel"])], check=True
    )
    site = tmp_path / "edgekit-0.1.0"
    assert (site / "edgekit" / "_core.cpython-313-aarch64-linux-gnu.so").is_file()
    code = (
        "import sys; sys.path.insert(0, '/wheel'); import edgekit as ek; "
        "ctx = ek.Context(device=0, kernels='xnnpack'); print(ek.__file__, ctx.kernels); ctx.close()"
    )
    done = run_on_board(
        emu_board_rootfs("emu-debian13"), ["python3", "-I", "-c", code], binds=[(site, "/wheel")]
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["/wheel/edgekit/__init__.py", "xnnpack"]


def test_deb_installs_into_the_emulated_rootfs(packages: dict[str, Path], emu_rootfs: Path) -> None:
    deb = packages["deb"]
    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "Architecture: arm64" in info and "Package: edgekit" in info
    assert "python3 (>= 3.11), python3 (<< 3.12)" in info and "libc6 (>= 2.36)" in info
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "root/root" in listing and "./opt/edgekit/lib/libedgekit.so.0.1.0" in listing
    assert "./usr/lib/python3/dist-packages/edgekit.pth" in listing
    assert re.search(r"^-rwxr-xr-x root/root .* \./opt/edgekit/bin/edgekit-app$", listing, re.M), listing
    assert re.search(r"^-rwxr-xr-x root/root .* \./opt/edgekit/bin/remote_server$", listing, re.M), listing
    # remote_server's systemd unit (installed disabled: the package has no maintainer scripts).
    assert "./lib/systemd/system/edgekit-remote-server.service" in listing

    # Install it into the board's rootfs with dpkg --root, then remove it again.
    dpkg_dir = emu_rootfs / "var" / "lib" / "dpkg"
    for sub in ("info", "updates", "triggers"):
        (dpkg_dir / sub).mkdir(parents=True, exist_ok=True)
    (dpkg_dir / "status").touch()
    dpkg = [
        "dpkg",
        f"--root={emu_rootfs}",
        "--force-script-chrootless",
        "--force-architecture",
        "--force-depends",
    ]
    try:
        subprocess.run([*dpkg, "-i", str(deb)], check=True, capture_output=True)
        installed = emu_rootfs / "opt" / "edgekit" / "lib" / "libedgekit.so.0.1.0"
        assert installed.is_file()
        files = subprocess.run([*dpkg, "-L", "edgekit"], capture_output=True, text=True, check=True).stdout
        assert "/opt/edgekit/python/edgekit/_core.cpython-311-aarch64-linux-gnu.so" in files
        # The deb's own tree imports on the board.
        code = (
            "import sys; sys.path.insert(0, '/opt/edgekit/python'); import edgekit; print(edgekit.__file__)"
        )
        done = run_on_board(emu_rootfs, ["python3", "-I", "-c", code])
        assert done.stdout.decode().strip() == "/opt/edgekit/python/edgekit/__init__.py", done.stderr.decode()
        # ...and its edge app runs there, finding /opt/edgekit/lib through its rpath.
        app = run_on_board(emu_rootfs, ["/opt/edgekit/bin/edgekit-app", "--help"])
        assert app.returncode == 0 and b"--model_path" in app.stdout, app.stderr.decode()
        # The unit's ExecStart is the installed remote_server, and it starts with the unit's flags (the
        # port made 0 here: 9090 may be taken on this machine, whose network the emulated board shares).
        unit = (emu_rootfs / "lib/systemd/system/edgekit-remote-server.service").read_text()
        (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit, re.M)
        argv = shlex.split(exec_start)
        assert argv[:3] == ["/opt/edgekit/bin/remote_server", "--port", "9090"], argv
        argv[2] = "0"
        server = start_on_board(emu_rootfs, argv, stderr=subprocess.STDOUT)
        try:
            assert server.stdout is not None
            line = server.stdout.readline().decode()
            assert re.fullmatch(r"remote_server listening on 127\.0\.0\.1:\d+\n", line), line
        finally:
            assert stop_on_board(server) == 0
    finally:
        subprocess.run([*dpkg, "--purge", "edgekit"], check=True, capture_output=True)
    assert not (emu_rootfs / "opt" / "edgekit" / "lib" / "libedgekit.so.0.1.0").exists()
    assert not (emu_rootfs / "usr" / "lib" / "python3" / "dist-packages" / "edgekit.pth").exists()


def test_image_checks_clean_and_holds_the_files(emu_build: Any, packages: dict[str, Path]) -> None:
    image = packages["image"]
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    listing = subprocess.run(
        ["debugfs", "-R", "ls -p /lib", str(image)], capture_output=True, text=True
    ).stdout
    assert "libedgekit.so.0.1.0" in listing
    # debugfs ls -p: /inode/mode/uid/gid/name/size/
    apps = subprocess.run(["debugfs", "-R", "ls -p /bin", str(image)], capture_output=True, text=True).stdout
    assert re.search(r"/100755/0/0/edgekit-app/\d+/", apps), apps
    inside = subprocess.run(
        ["debugfs", "-R", "cat /share/edgekit/build-info.json", str(image)], capture_output=True, text=True
    ).stdout
    assert inside == (emu_build.stage / "share" / "edgekit" / "build-info.json").read_text()
    label = subprocess.run(["e2label", str(image)], capture_output=True, text=True).stdout.strip()
    assert label == "edgekit"


def test_bad_formats_and_missing_builds_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(
        PackageError, match=r"unknown package format: rpm \(choose from all, bundle, deb, wheel, image\)"
    ):
        parse_formats("bundle,rpm")
    with pytest.raises(PackageError, match="not a finished build"):
        read_build(tmp_path)
