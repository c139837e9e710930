"""Cross-building for boards: the toolchain kinds, the board profiles, the glibc floor check.

The builds are real (Debian's aarch64 gcc, zig for glibc 2.17, the host gcc); expectations about
glibc versions come from binutils' readelf, independently of the check under test (pyelftools).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from conftest import build_for
from toolchains import detect
from toolchains.boards import load_board, version_tuple
from toolchains.conan import host_profile, write_wrappers
from toolchains.crossbuild import BuildError, build_dir_for

ROOT = Path(__file__).resolve().parents[1]
READELF = "aarch64-linux-gnu-readelf"


def glibc_needs(path: Path) -> dict[str, set[str]]:
    """{GLIBC_x.y: symbols} of an ELF, read by binutils."""
    out = subprocess.run([READELF, "-W", "--dyn-syms", str(path)], capture_output=True, text=True, check=True)
    needs: dict[str, set[str]] = {}
    for name, version in re.findall(r"UND (\w+)@(GLIBC_[\d.]+)", out.stdout):
        needs.setdefault(version, set()).add(name)
    return needs


def file_says(path: Path) -> str:
    return subprocess.run(["file", "-b", str(path)], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def glibc217_builds() -> tuple[BuildError, Any]:
    """generic-glibc2.17 built with Debian's gcc (must be refused), then with zig (must pass)."""
    with pytest.raises(BuildError) as refused:
        build_for("generic-glibc2.17", "debian")
    return refused.value, build_for("generic-glibc2.17", "zig")


def test_debian_build_for_the_emulated_board(emu_build: Any) -> None:
    stage = emu_build.stage
    lib = stage / "lib" / "libedgekit.so.0.1.0"
    module = stage / "python" / "edgekit" / "_core.cpython-311-aarch64-linux-gnu.so"
    for elf in (lib, module):
        assert "ARM aarch64" in file_says(elf), elf
    header = subprocess.run([READELF, "-h", str(module)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"Machine:\s+AArch64", header)
    newest = max(version_tuple(v.removeprefix("GLIBC_")) for v in glibc_needs(lib))
    assert newest <= (2, 36)
    assert emu_build.info.python_ext_suffix == ".cpython-311-aarch64-linux-gnu.so"
    assert (stage / "python" / "edgekit" / "device.py").is_file()  # the pure-Python part too
    runpath = subprocess.run([READELF, "-d", str(module)], capture_output=True, text=True, check=True).stdout
    assert "[$ORIGIN:$ORIGIN/../../lib]" in runpath
    # The edge app: an aarch64 program in bin/ that finds lib/ from there.
    app = stage / "bin" / "edgekit-app"
    assert "ARM aarch64" in file_says(app) and app.stat().st_mode & 0o111
    dynamic = subprocess.run([READELF, "-d", str(app)], capture_output=True, text=True, check=True).stdout
    assert "[$ORIGIN/../lib]" in dynamic and "libstdc++" not in dynamic


def test_debian_build_is_refused_for_a_glibc_2_17_board(glibc217_builds: tuple[BuildError, Any]) -> None:
    refused, _ = glibc217_builds
    message = str(refused)
    rejected = build_dir_for("aarch64", load_board("generic-glibc2.17")) / "stage-rejected"
    lib = rejected / "lib" / "libedgekit.so.0.1.0"
    too_new = {v: s for v, s in glibc_needs(lib).items() if version_tuple(v.removeprefix("GLIBC_")) > (2, 17)}
    assert too_new, "Debian's gcc links against glibc 2.36: some symbols must need more than 2.17"
    for version, symbols in too_new.items():
        assert version in message
        for symbol in symbols:
            assert symbol in message, f"{symbol}@{version} not named in:\n{message}"
    assert "libedgekit.so.0.1.0" in message and "--toolchain zig" in message
    assert not (rejected.parent / "stage").exists() or "stage-rejected" in message


def test_zig_build_meets_glibc_2_17(glibc217_builds: tuple[BuildError, Any]) -> None:
    _, result = glibc217_builds
    for elf in (result.stage / "lib" / "libedgekit.so.0.1.0", result.stage / "bin" / "edgekit-app"):
        assert "ARM aarch64" in file_says(elf)
        needs = glibc_needs(elf)
        assert needs, f"readelf found no GLIBC needs at all in {elf.name}"
        assert max(version_tuple(v.removeprefix("GLIBC_")) for v in needs) <= (2, 17), elf.name
    assert result.info.python is None and not (result.stage / "python").exists()  # no Python on that board
    assert result.info.toolchain.startswith("zig")


def test_x86_64_builds_for_the_host_the_same_way() -> None:
    result = build_for("host", "debian")
    module = result.stage / "python" / "edgekit" / f"_core{sysconfig.get_config_var('EXT_SUFFIX')}"
    assert "x86-64" in file_says(module)
    assert "x86-64" in file_says(result.stage / "lib" / "libedgekit.so.0.1.0")
    # The host's Python imports the module built for it.
    code = "import edgekit, sys; print(edgekit.__version__, edgekit.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(result.stage / "python")},
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(result.stage) in out
    # The edge app runs from the stage: bin/ finds lib/ through its rpath, no LD_LIBRARY_PATH.
    app = subprocess.run(
        [str(result.stage / "bin" / "edgekit-app"), "--list-clusters"], capture_output=True, text=True
    )
    assert app.returncode == 0 and app.stdout.startswith("CPU clusters"), app.stderr


def linaro_shaped(folder: Path, triplet: str = "aarch64-linux-gnu") -> Path:
    """A folder laid out like a Linaro (or Arm GNU Toolchain) tarball, whose tools run Debian's cross
    compiler, and whose sysroot <triplet>/libc has Debian's aarch64 glibc."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("gcc", "g++", "ar", "ranlib", "strip", "readelf"):
        wrapper = bin_dir / f"{triplet}-{tool}"
        wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/aarch64-linux-gnu-{tool} "$@"\n')
        wrapper.chmod(0o755)
    libc = folder / triplet / "libc"
    (libc / "usr" / "aarch64-linux-gnu").mkdir(parents=True)
    (libc / "usr" / "include").symlink_to("/usr/aarch64-linux-gnu/include")
    (libc / "usr" / "lib").symlink_to("/usr/aarch64-linux-gnu/lib")
    (libc / "lib").symlink_to("/usr/aarch64-linux-gnu/lib")
    # Debian's libc.so linker script names /usr/aarch64-linux-gnu/lib/...; ld looks for it in the sysroot.
    (libc / "usr" / "aarch64-linux-gnu" / "lib").symlink_to("/usr/aarch64-linux-gnu/lib")
    return folder


@pytest.mark.parametrize(
    ("name", "triplet"),
    [
        ("gcc-linaro-6.2.1-2016.11-x86_64_aarch64-linux-gnu", "aarch64-linux-gnu"),
        ("arm-gnu-toolchain-12.3.rel1-x86_64-aarch64-none-linux-gnu", "aarch64-none-linux-gnu"),
    ],
)
def test_linaro_detection_on_a_linaro_shaped_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, triplet: str
) -> None:
    root = linaro_shaped(tmp_path / name, triplet)
    monkeypatch.setenv("TOOLCHAIN_ROOT", str(root))
    found = detect.require_toolchain("linaro", "aarch64", "2.17")
    assert found.kind == "linaro" and found.root == root
    assert found.cc == (str(root / "bin" / f"{triplet}-gcc"),)
    assert found.sysroot == root / triplet / "libc"
    assert found.glibc == detect.glibc_of(Path("/usr/aarch64-linux-gnu/lib/libc.so.6"))
    # The conan host profile hands conan the sysroot and the compilers.
    profile = host_profile(found, load_board("emu-debian12"), write_wrappers(found, tmp_path / "tools"))
    assert "arch=armv8" in profile and f"tools.build:sysroot={found.sysroot}" in profile
    assert f'"c": "{found.cc[0]}"' in profile
    # And it compiles for aarch64 against that sysroot.
    source = tmp_path / "hello.c"
    source.write_text('#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n')
    out = tmp_path / "hello"
    subprocess.run([*found.cc, f"--sysroot={found.sysroot}", str(source), "-o", str(out)], check=True)
    assert "ARM aarch64" in file_says(out)


def test_missing_toolchain_root_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-such-linaro"
    monkeypatch.setenv("TOOLCHAIN_ROOT", str(missing))
    with pytest.raises(detect.ToolchainError) as error:
        detect.require_toolchain("linaro", "aarch64", "2.17")
    message = str(error.value)
    assert f"TOOLCHAIN_ROOT {missing} does not exist" in message
    assert "to get it" in message and "TOOLCHAIN_ROOT" in message and "--toolchain zig" in message


def test_linaro_for_x86_64_says_why_without_a_useless_hint() -> None:
    """Linaro does not target x86_64 at all: 'to get it' would send the user after the wrong thing."""
    with pytest.raises(detect.WrongArchError, match="only for aarch64") as error:
        detect.require_toolchain("linaro", "x86_64", "2.17")
    assert "to get it" not in str(error.value)
    rows = {kind: why for kind, found, why in detect.describe_all("x86_64", "2.17")}
    assert "only for aarch64" in rows["linaro"] and "to get it" not in rows["linaro"]


def test_a_folder_without_a_compiler_is_not_a_linaro_toolchain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("TOOLCHAIN_ROOT", str(tmp_path))
    with pytest.raises(detect.ToolchainError, match="has no bin/aarch64-linux-gnu-gcc"):
        detect.require_toolchain("linaro", "aarch64", "2.17")


def test_missing_debian_cross_compiler_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(detect.ToolchainError) as error:
        detect.require_toolchain("debian", "aarch64", "2.36")
    assert "aarch64-linux-gnu-gcc is not on PATH" in str(error.value)
    assert "apt-get install gcc-aarch64-linux-gnu" in str(error.value)


def test_default_choice_fits_the_board_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOOLCHAIN_ROOT", raising=False)
    for board, kind in (("emu-debian12", "debian"), ("emu-debian13", "debian"), ("generic-glibc2.17", "zig")):
        profile = load_board(board)
        chosen, skipped = detect.choose_toolchain(profile.arch, profile.glibc)
        assert version_tuple(chosen.glibc) <= version_tuple(profile.glibc)
        if not any(Path(p).is_dir() for p in detect.LINARO_SEARCH):  # no real Linaro here
            assert chosen.kind == kind, skipped
    _, skipped = detect.choose_toolchain("aarch64", "2.17")
    assert any("debian" in reason and "newer than the board's 2.17" in reason for reason in skipped)


def invoke(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def test_cli_errors_are_one_clear_line() -> None:
    unknown = invoke("build", "--arch", "aarch64", "--toolchain", "clang9")
    assert unknown.returncode == 1
    assert "error: unknown toolchain kind 'clang9' (kinds: linaro, debian, zig)" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    bad_arch = invoke("build", "--arch", "mips")
    assert bad_arch.returncode == 2 and "--arch must be one of aarch64, x86_64" in bad_arch.stderr
    wrong_board = invoke("build", "--arch", "x86_64", "--board", "emu-debian12")
    assert wrong_board.returncode == 1 and "board emu-debian12 is aarch64, not x86_64" in wrong_board.stderr
    no_board = invoke("build", "--arch", "aarch64", "--board", "nope")
    assert no_board.returncode == 1 and "no board profile 'nope'" in no_board.stderr


def test_invoke_toolchains_lists_every_kind_and_board(tmp_path: Path) -> None:
    listing = invoke("toolchains", env={"TOOLCHAIN_ROOT": str(tmp_path / "none")})
    assert listing.returncode == 0, listing.stderr
    text = listing.stdout
    assert re.search(r"linaro\s+unusable: .*does not exist", text)
    assert re.search(r"debian\s+gcc \d+\.\d+\.\d+, links against glibc 2\.\d+", text)
    assert re.search(r"zig\s+zig \d+\.\d+\.\d+ \(clang \d+", text)
    for board in ("emu-debian12", "emu-debian13", "generic-glibc2.17", "host"):
        assert board in text


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-objdump") is None, reason="needs binutils-aarch64")
def test_the_board_library_has_the_cache_maintenance_instructions(emu_build: Any) -> None:
    lib = emu_build.stage / "lib" / "libedgekit.so.0.1.0"
    objdump = ["aarch64-linux-gnu-objdump", "-d", str(lib)]
    text = subprocess.run(objdump, capture_output=True, text=True, check=True).stdout
    assert re.search(r"\bdc\s+cvac\b", text) and re.search(r"\bdc\s+civac\b", text)
