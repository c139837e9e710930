"""The emulated board (toolchains/rootfs.py): a real arm64 Debian rootfs, run under proot + qemu-aarch64.

The rootfs is made once (mmdebstrap, from deb.debian.org) into $EDGEKIT_CACHE/test-rootfs and reused by
later runs through its stamp; the tests that make small rootfs of their own use tmp_path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from toolchains.boards import load_board
from toolchains.crossbuild import board_rootfs, rootfs_spec
from toolchains.rootfs import (
    STAMP_NAME,
    RootfsError,
    RootfsSpec,
    board_command,
    ensure_rootfs,
    parse_alternatives,
    rootfs_stamp,
    run_on_board,
)

EMU_DEBIAN12 = rootfs_spec(load_board("emu-debian12"))
TOOLS = ("mmdebstrap", "dpkg-deb", "proot", "qemu-aarch64")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"the emulated board needs {', '.join(MISSING)}")

# A small rootfs for the tests that make their own: coreutils and its libraries only (a few MB).
SMALL = RootfsSpec(suite="bookworm", debian_arch="arm64", packages=("coreutils",))
NUMPY = "import numpy, sys; print(numpy.__version__, sys.version_info[:2])"


@pytest.fixture(scope="module")
def board() -> Path:
    """The emu-debian12 board's rootfs, made on the first run (about 30 s) and reused from the cache after."""
    return board_rootfs(load_board("emu-debian12"))


def no_tools_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH without mmdebstrap, proot or qemu: anything that would run them fails."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.glob(f".{dest.name}.*") if not p.name.endswith(".lock"))


# --- the board runs ---------------------------------------------------------------------------------------


def test_board_is_aarch64(board: Path) -> None:
    result = run_on_board(board, ["uname", "-m"], check=True)
    assert result.stdout == b"aarch64\n"


def test_board_python_imports_numpy(board: Path) -> None:
    started = time.monotonic()
    result = run_on_board(board, ["python3", "-c", NUMPY], check=True, timeout=300)
    elapsed = time.monotonic() - started
    version, python = result.stdout.decode().split(" ", 1)
    assert version.startswith("1.24."), result.stdout
    assert python.strip() == "(3, 11)"
    print(f"python3 -c 'import numpy' on the emulated board: {elapsed:.2f} s")


def test_shell_tools_exist_and_run_as_aarch64(board: Path) -> None:
    script = (
        "set -e; for t in sh tar gzip sha256sum mkdir ln uname; do command -v $t; done; "
        "mkdir -p /tmp/t && cd /tmp/t && echo payload > f && ln -sf f l && tar czf x.tgz f l && "
        "mkdir out && tar xzf x.tgz -C out && sha256sum < out/l; uname -m; rm -rf /tmp/t"
    )
    result = run_on_board(board, ["sh", "-c", script], check=True)
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 9, lines
    assert lines[7].split()[0] == hashlib.sha256(b"payload\n").hexdigest()
    assert lines[8] == "aarch64"  # a child of the shell is emulated too (proot re-execs through qemu)


def test_alternatives_are_what_makes_numpy_import(board: Path, tmp_path: Path) -> None:
    link = board / "usr/lib/aarch64-linux-gnu/libblas.so.3"
    assert link.is_symlink() and not os.readlink(link).startswith("/")
    assert link.resolve().is_relative_to(board) and link.resolve().is_file()
    stamp = rootfs_stamp(board)
    assert stamp is not None
    assert stamp["alternatives"]["libblas.so.3-aarch64-linux-gnu"].endswith("/blas/libblas.so.3")
    assert "liblapack.so.3-aarch64-linux-gnu" in stamp["alternatives"]
    assert (board / "usr/bin/awk").resolve().name == "mawk"  # and not only numpy's: any package's
    # Hide /etc/alternatives (an empty directory bound over it) and numpy fails as it did before the fix.
    empty = tmp_path / "no-alternatives"
    empty.mkdir()
    hidden = run_on_board(board, ["python3", "-c", NUMPY], binds=[(empty, "/etc/alternatives")], timeout=300)
    assert hidden.returncode != 0
    assert b"libblas.so.3: cannot open shared object file" in hidden.stderr


def test_python_headers_for_cross_compiling(board: Path) -> None:
    assert (board / "usr/include/python3.11/Python.h").is_file()
    assert (board / "usr/include/aarch64-linux-gnu/python3.11/pyconfig.h").is_file()


def test_rootfs_is_a_host_safe_sysroot(board: Path) -> None:
    # libc6-dev ships libm.so -> /lib/aarch64-linux-gnu/libm.so.6: from the host, that is the host's libm.
    libm = board / "usr/lib/aarch64-linux-gnu/libm.so"
    assert libm.is_symlink() and libm.resolve().is_relative_to(board)
    absolute = []
    for directory, dirnames, filenames in os.walk(board):
        if Path(directory) == board:
            dirnames[:] = [d for d in dirnames if d not in ("dev", "proc", "sys")]
        absolute += [
            os.path.join(directory, name)
            for name in (*dirnames, *filenames)
            if os.path.islink(os.path.join(directory, name))
            and os.readlink(os.path.join(directory, name)).startswith("/")
        ]
    assert absolute == []
    assert (board / "bin").is_symlink() and os.readlink(board / "bin") == "usr/bin"  # merged /usr


def test_basic_system_files(board: Path) -> None:
    assert stat.S_IMODE((board / "tmp").stat().st_mode) == 0o1777
    assert run_on_board(board, ["id", "-un"], check=True).stdout == b"root\n"
    assert run_on_board(board, ["getent", "hosts", "localhost"]).returncode == 0
    assert "VERSION_CODENAME=bookworm" in (board / "etc/os-release").read_text()
    assert (board / "etc/ld.so.cache").is_file()
    assert (board / "usr/local/lib/python3.11/dist-packages").is_dir()
    assert list((board / "usr/lib/python3/dist-packages/numpy/__pycache__").glob("*.cpython-311.pyc"))
    sources = (board / "etc/apt/sources.list").read_text()
    assert "bookworm-updates" in sources and "bookworm-security" in sources


def test_clean_environment_cwd_and_input(board: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_HOST_ONLY", "leak")
    result = run_on_board(board, ["env"], env={"EDGEKIT_BOARD": "1"}, check=True)
    names = {line.split("=", 1)[0] for line in result.stdout.decode().splitlines()}
    assert names <= {"PATH", "HOME", "LANG", "PWD", "EDGEKIT_BOARD"}, names
    assert {"PATH", "HOME", "LANG", "EDGEKIT_BOARD"} <= names
    assert run_on_board(board, ["pwd"], cwd="/usr/lib", check=True).stdout == b"/usr/lib\n"
    assert run_on_board(board, ["cat"], input=b"through stdin", check=True).stdout == b"through stdin"


def test_timeout_kills_the_emulated_program(board: Path) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        run_on_board(board, ["sh", "-c", "sleep 37.25; true"], timeout=3)
    time.sleep(0.5)
    alive = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"37.25" in cmdline.read_bytes():
                alive.append(cmdline.parent.name)
        except OSError:
            pass
    assert alive == []


def test_board_command_is_proot_with_qemu(board: Path) -> None:
    command = board_command(board, ["true"], cwd="/tmp")
    assert Path(command[0]).name == "env" and command[1] == "-i"
    proot = next(i for i, word in enumerate(command) if Path(word).name == "proot")
    assert Path(command[command.index("-q") + 1]).name == "qemu-aarch64"
    assert command[command.index("-r") + 1] == str(board)
    assert command[command.index("-w") + 1] == "/tmp"
    assert command[-1] == "true" and proot > 1


def test_qemu_fallback_runs_single_programs(board: Path) -> None:
    assert run_on_board(board, ["uname", "-m"], runner="qemu", check=True).stdout == b"aarch64\n"
    result = run_on_board(board, ["python3", "-c", NUMPY], runner="qemu", check=True, timeout=300)
    assert result.stdout.decode().endswith("(3, 11)\n")
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        # The documented limit: with no binfmt_misc, a child the program execs is the host's binary.
        child = run_on_board(board, ["sh", "-c", "uname -m"], runner="qemu", check=True)
        assert child.stdout.decode().strip() != "aarch64"


# --- making and caching -----------------------------------------------------------------------------------


def test_stamp_reuses_without_tools_or_network(
    board: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_tools_path(tmp_path, monkeypatch)
    lines: list[str] = []
    started = time.monotonic()
    assert ensure_rootfs(EMU_DEBIAN12, board, log=lines.append) == board
    assert time.monotonic() - started < 1.0
    assert any("reusing" in line for line in lines)
    stamp = rootfs_stamp(board)
    assert stamp is not None and stamp["spec"] == EMU_DEBIAN12.to_json()
    assert stamp["packages"]["python3-numpy"].startswith("1:1.24.")


def test_spec_change_is_refused_and_keeps_the_rootfs(
    board: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_tools_path(tmp_path, monkeypatch)
    before = (board / STAMP_NAME).read_text()
    changed = replace(EMU_DEBIAN12, packages=(*EMU_DEBIAN12.packages, "zlib1g-dev"))
    with pytest.raises(RootfsError, match=r"another spec \(packages: .*zlib1g-dev.*rebuild=True"):
        ensure_rootfs(changed, board, log=lambda line: None)
    assert (board / STAMP_NAME).read_text() == before


def test_missing_tools_name_their_apt_package(
    board: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_tools_path(tmp_path, monkeypatch)
    dest = tmp_path / "rootfs"
    with pytest.raises(RootfsError, match=r"mmdebstrap.*apt-get install mmdebstrap"):
        ensure_rootfs(SMALL, dest, log=lambda line: None)
    assert not dest.exists()
    with pytest.raises(RootfsError, match=r"apt-get install proot qemu-user"):
        board_command(board, ["true"])
    with pytest.raises(RootfsError, match=r"apt-get install qemu-user"):
        board_command(board, ["true"], runner="qemu")


def test_a_directory_that_is_not_a_rootfs_is_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_tools_path(tmp_path, monkeypatch)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for rebuild in (False, True):
        with pytest.raises(RootfsError, match="not an EdgeKit rootfs"):
            ensure_rootfs(SMALL, mine, log=lambda line: None, rebuild=rebuild)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_bogus_package_fails_clearly_and_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    lines: list[str] = []
    bogus = RootfsSpec(
        suite="bookworm", debian_arch="arm64", packages=("coreutils", "edgekit-no-such-package")
    )
    with pytest.raises(RootfsError, match=r"(?s)mmdebstrap failed.*edgekit-no-such-package") as failure:
        ensure_rootfs(bogus, dest, log=lines.append)
    assert "Its last lines" in str(failure.value)
    assert any(line.startswith("[rootfs]   mmdebstrap: ") for line in lines)  # streamed as it ran
    assert not dest.exists() and leftovers(dest) == []


def test_rebuild_replaces_only_when_the_new_rootfs_is_complete(tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    lines: list[str] = []
    ensure_rootfs(SMALL, dest, log=lines.append)
    assert any("done in" in line for line in lines)  # each step is timed
    (dest / "root/flashed.txt").write_text("board state")
    # A failed rebuild loses nothing.
    broken = replace(SMALL, packages=("coreutils", "edgekit-no-such-package"))
    with pytest.raises(RootfsError, match="mmdebstrap failed"):
        ensure_rootfs(broken, dest, log=lambda line: None, rebuild=True)
    assert (dest / "root/flashed.txt").read_text() == "board state" and leftovers(dest) == []
    # A successful one replaces it.
    bigger = replace(SMALL, packages=("coreutils", "gzip"))
    ensure_rootfs(bigger, dest, log=lambda line: None, rebuild=True)
    assert not (dest / "root/flashed.txt").exists() and leftovers(dest) == []
    assert run_on_board(dest, ["gzip", "--version"], check=True).stdout.startswith(b"gzip 1.12")
    stamp = rootfs_stamp(dest)
    assert stamp is not None and stamp["spec"]["packages"] == ["coreutils", "gzip"]


# --- maintainer-script parsing ----------------------------------------------------------------------------


def test_parse_alternatives_of_maintainer_scripts() -> None:
    script = r"""#!/bin/sh
set -e
triplet=aarch64-linux-gnu
if [ "$1" = configure ]; then
        update-alternatives --install /usr/bin/awk awk /usr/bin/mawk 5 \
            --slave /usr/share/man/man1/awk.1.gz awk.1.gz /usr/share/man/man1/mawk.1.gz \
            --slave /usr/bin/nawk nawk /usr/bin/mawk
fi
update-alternatives --install /usr/lib/$DEB_HOST_MULTIARCH/libblas.so.3 \
    libblas.so.3-${triplet} /usr/lib/${triplet}/blas/libblas.so.3 10 || true
update-alternatives --install /usr/bin/x x /usr/lib/$unknown/x 1
update-alternatives --remove awk /usr/bin/gawk
# update-alternatives --install /usr/bin/commented c /c 1
"""
    found = parse_alternatives(script, {"DEB_HOST_MULTIARCH": "aarch64-linux-gnu"})
    assert [(a.link, a.name, a.path, a.priority) for a in found] == [
        ("/usr/bin/awk", "awk", "/usr/bin/mawk", 5),
        (
            "/usr/lib/aarch64-linux-gnu/libblas.so.3",
            "libblas.so.3-aarch64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu/blas/libblas.so.3",
            10,
        ),
    ]
    assert found[0].slaves == (
        ("/usr/share/man/man1/awk.1.gz", "awk.1.gz", "/usr/share/man/man1/mawk.1.gz"),
        ("/usr/bin/nawk", "nawk", "/usr/bin/mawk"),
    )
