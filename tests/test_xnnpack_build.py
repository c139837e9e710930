"""The XNNPACK kernel provider (libedgekit_xnnpack.so) in every build that should have it.

- the host's installed edgekit package (pip install .) carries it next to libedgekit, linked to the
  host's libXNNPACK, exporting only the provider entry;
- its C test (tests/c/test_xnnpack_provider.c: every op it takes against a naive loop) passes on the host
  and, cross-built, on both emulated aarch64 boards (XNNPACK's NEON kernels under qemu): emu-debian12
  with the 2022 XNNPACK API, emu-debian13 with the 2024 one;
- the cross builds for the emulated boards have an aarch64 provider whose needed libraries are in the
  board rootfs, that defines every pthreadpool function the board's libXNNPACK calls, and that loads
  there; the emu-debian12 .deb recommends libxnnpack0 and its wheel carries the provider;
- board profiles without xnnpack build without it.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from conftest import EMU_BOARDS, emu_board_build, emu_board_rootfs
from toolchains.boards import BoardError, _board_from, load_board
from toolchains.crossbuild import xnnpack_cmake_args
from toolchains.elfcheck import read_elf
from toolchains.rootfs import run_on_board
from toolchains.steps import Steps

ROOT = Path(__file__).resolve().parents[1]
PROVIDER = "libedgekit_xnnpack.so"
HOST_XNNPACK = Path("/usr/include/xnnpack.h").is_file() and Path("/usr/include/pthreadpool.h").is_file()
needs_host_xnnpack = pytest.mark.skipif(
    not HOST_XNNPACK, reason="the host has no XNNPACK (apt-get install libxnnpack-dev libpthreadpool-dev)"
)


def exported_symbols(path: Path) -> set[str]:
    """The global symbols the library defines in its dynamic symbol table."""
    with path.open("rb") as stream:
        elf = ELFFile(stream)
        table = elf.get_section_by_name(".dynsym")
        assert isinstance(table, SymbolTableSection)
        return {
            sym.name
            for sym in table.iter_symbols()
            if sym["st_shndx"] != "SHN_UNDEF" and sym["st_info"]["bind"] in ("STB_GLOBAL", "STB_WEAK")
        }


def runpath(path: Path) -> str:
    with path.open("rb") as stream:
        for section in ELFFile(stream).iter_sections():
            if isinstance(section, DynamicSection):
                for tag in section.iter_tags():
                    # pyelftools names a string-valued tag's text after it (DT_RUNPATH -> .runpath).
                    if tag.entry.d_tag == "DT_RUNPATH":
                        return str(getattr(tag, "runpath"))  # noqa: B009
                    if tag.entry.d_tag == "DT_RPATH":
                        return str(getattr(tag, "rpath"))  # noqa: B009
    return ""


class _Provider(ctypes.Structure):
    # struct ek_provider's first two fields (kernel.h, ABI 1).
    _fields_ = [("abi", ctypes.c_int), ("name", ctypes.c_char_p)]


def check_exports(provider: Path) -> None:
    """The provider exports its entry point and the pthreadpool API that XNNPACK binds to
    (threadpool.c, so XNNPACK's loops run on the launch's team), nothing else."""
    exported = exported_symbols(provider)
    assert "ek_kernel_provider" in exported
    assert {"pthreadpool_get_threads_count", "pthreadpool_parallelize_2d_tile_2d"} <= exported
    assert all(name.startswith("pthreadpool_") for name in exported - {"ek_kernel_provider"}), exported
    assert not exported & {"pthreadpool_create", "pthreadpool_destroy"}, "pools stay libpthreadpool's"


# --- the host build ---


@needs_host_xnnpack
def test_installed_package_has_the_provider() -> None:
    import edgekit

    package = Path(edgekit.__file__).resolve().parent
    provider = package / PROVIDER
    assert provider.is_file(), (
        f"{provider} is missing: reinstall (flock /tmp/ek-pip.lock .venv/bin/python -m pip install "
        "--no-build-isolation --no-deps -q .)"
    )
    assert any(package.glob("libedgekit.so*")), "the provider must sit next to libedgekit"
    needed = read_elf(provider).needed
    assert "libXNNPACK.so.0" in needed and "libpthreadpool.so.0" in needed, needed
    assert not any(name.startswith("libedgekit") for name in needed), needed
    check_exports(provider)
    assert runpath(provider) == "$ORIGIN"

    lib = ctypes.CDLL(str(provider))
    entry = lib.ek_kernel_provider
    entry.restype = ctypes.POINTER(_Provider)
    table = entry().contents
    abi = re.search(r"#define EK_PROVIDER_ABI (\d+)", (ROOT / "sdk/runtime/kernels/kernel.h").read_text())
    assert abi and (table.abi, table.name) == (int(abi.group(1)), b"xnnpack")


@pytest.fixture(scope="module")
def host_ctest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/c's provider test built on the host, with the runtime from source."""
    build = tmp_path_factory.mktemp("ctests-xnnpack")
    configure = subprocess.run(
        [
            "cmake",
            "-S",
            str(ROOT / "tests" / "c"),
            "-B",
            str(build),
            "-G",
            "Ninja",
            f"-DEDGEKIT_SOURCE_DIR={ROOT}",
        ],
        capture_output=True,
        text=True,
    )
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    assert "EdgeKit XNNPACK provider: built" in configure.stdout, configure.stdout[-3000:]
    done = subprocess.run(
        ["cmake", "--build", str(build), "--target", "test_xnnpack_provider"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-4000:]
    return build


@needs_host_xnnpack
def test_provider_ops_match_naive_loops_on_the_host(host_ctest: Path) -> None:
    done = subprocess.run(
        [str(host_ctest / "test_xnnpack_provider")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 failed" in done.stdout


def test_cmake_option_on_without_xnnpack_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "usr"
    (empty / "include").mkdir(parents=True)
    done = subprocess.run(
        [
            "cmake",
            "-S",
            str(ROOT / "sdk" / "runtime"),
            "-B",
            str(tmp_path / "build"),
            "-G",
            "Ninja",
            "-DEDGEKIT_XNNPACK=ON",
            f"-DEDGEKIT_XNNPACK_ROOT={empty}",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "EDGEKIT_XNNPACK=ON but the XNNPACK provider cannot be built" in done.stderr
    assert "xnnpack.h" in done.stderr


def test_cmake_option_auto_without_xnnpack_says_why(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            "cmake",
            "-S",
            str(ROOT / "sdk" / "runtime"),
            "-B",
            str(tmp_path / "build"),
            "-G",
            "Ninja",
            f"-DEDGEKIT_XNNPACK_ROOT={tmp_path}",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "EdgeKit XNNPACK provider: not built (" in done.stdout


# --- board profiles ---


def test_board_profiles_say_which_builds_have_xnnpack() -> None:
    for name in EMU_BOARDS:
        emu = load_board(name)
        assert emu.xnnpack
        assert emu.debian is not None
        assert {"libxnnpack-dev", "libpthreadpool-dev"} <= set(emu.debian.packages)
    assert not load_board("generic-glibc2.17").xnnpack
    assert not load_board("host").xnnpack
    with pytest.raises(BoardError, match="xnnpack = true needs a \\[debian\\] rootfs"):
        _board_from("x", {"arch": "aarch64", "glibc": "2.17", "xnnpack": True})
    with pytest.raises(BoardError, match="xnnpack must be true or false"):
        _board_from("x", {"arch": "aarch64", "glibc": "2.17", "xnnpack": "yes"})


def test_boards_without_xnnpack_build_without_it() -> None:
    def no_rootfs(board: Any) -> Path:
        raise AssertionError("a board without xnnpack needs no rootfs for it")

    args = xnnpack_cmake_args(load_board("generic-glibc2.17"), no_rootfs, Steps("t"))
    assert args == ["-DEDGEKIT_XNNPACK=OFF"]


def test_a_rootfs_without_xnnpack_names_the_packages(tmp_path: Path) -> None:
    (tmp_path / "usr" / "include").mkdir(parents=True)
    from toolchains.crossbuild import BuildError

    with pytest.raises(BuildError, match="add libxnnpack-dev and libpthreadpool-dev"):
        xnnpack_cmake_args(load_board("emu-debian12"), lambda board: tmp_path, Steps("t"))


# --- the emulated board ---


def _find_in_rootfs(rootfs: Path, name: str) -> Path | None:
    for folder in ("usr/lib/aarch64-linux-gnu", "lib/aarch64-linux-gnu", "usr/lib", "lib"):
        if (rootfs / folder / name).exists():
            return rootfs / folder / name
    return None


def imported_symbols(path: Path) -> set[str]:
    """The symbols the library needs from others (undefined in its dynamic symbol table)."""
    with path.open("rb") as stream:
        table = ELFFile(stream).get_section_by_name(".dynsym")
        assert isinstance(table, SymbolTableSection)
        return {sym.name for sym in table.iter_symbols() if sym.name and sym["st_shndx"] == "SHN_UNDEF"}


@pytest.mark.parametrize("board", EMU_BOARDS)
def test_cross_build_has_an_aarch64_provider_the_board_can_load(board: str) -> None:
    emu_build, emu_rootfs = emu_board_build(board), emu_board_rootfs(board)
    provider = emu_build.stage / "lib" / PROVIDER
    assert provider.is_file(), f"the {board} build has no {PROVIDER}"
    info = read_elf(provider)
    assert info.machine == "EM_AARCH64"
    check_exports(provider)
    assert runpath(provider) == "$ORIGIN"
    assert provider in emu_build.elfs  # checked against the board's glibc floor with the rest
    # Every library it needs, and theirs, is in the board's rootfs.
    todo, seen = list(info.needed), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        found = _find_in_rootfs(emu_rootfs, name)
        assert found is not None, f"{name} (needed by the provider) is not in {emu_rootfs}"
        todo.extend(read_elf(found.resolve()).needed)
    # libXNNPACK.so.0 (Debian 12), libXNNPACK.so.0.20241108 (Debian 13)
    xnnpack = [name for name in seen if name.startswith("libXNNPACK.so.0")]
    assert len(xnnpack) == 1 and {"libpthreadpool.so.0", "libcpuinfo.so.0"} <= seen, seen
    # Every pthreadpool call of the board's XNNPACK reaches threadpool.c (the 2024 XNNPACK calls the
    # 2024 pthreadpool's *_with_thread functions; one missing would run serially on libpthreadpool's).
    libxnnpack = _find_in_rootfs(emu_rootfs, xnnpack[0])
    assert libxnnpack is not None
    calls = {name for name in imported_symbols(libxnnpack.resolve()) if name.startswith("pthreadpool_")}
    assert "pthreadpool_parallelize_2d_tile_2d" in calls
    assert calls - {"pthreadpool_create", "pthreadpool_destroy"} <= exported_symbols(provider)


@pytest.fixture(scope="module", params=EMU_BOARDS)
def board_ctest(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """tests/c's provider test cross-built for each emulated board (runtime and provider from source,
    XNNPACK from the board rootfs); with the board's rootfs."""
    emu_build, emu_rootfs = emu_board_build(request.param), emu_board_rootfs(request.param)
    build = tmp_path_factory.mktemp(f"ctests-xnnpack-{request.param}")
    configure = subprocess.run(
        [
            "cmake",
            "-S",
            str(ROOT / "tests" / "c"),
            "-B",
            str(build),
            "-G",
            "Ninja",
            f"-DCMAKE_TOOLCHAIN_FILE={emu_build.cmake_toolchain_file}",
            f"-DEDGEKIT_SOURCE_DIR={ROOT}",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DEDGEKIT_XNNPACK=ON",
            f"-DEDGEKIT_XNNPACK_ROOT={emu_rootfs / 'usr'}",
        ],
        capture_output=True,
        text=True,
    )
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    # The API generation picked from the board's xnnpack.h.
    generation = "2024 create/reshape/setup" if request.param == "emu-debian13" else "2022 create/setup"
    assert f"the {generation} API)" in configure.stdout, configure.stdout[-3000:]
    done = subprocess.run(
        ["cmake", "--build", str(build), "--target", "test_xnnpack_provider"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-4000:]
    return build, emu_rootfs


def test_provider_ops_match_naive_loops_on_the_board(board_ctest: tuple[Path, Path]) -> None:
    build, rootfs = board_ctest
    done = run_on_board(
        rootfs,
        ["/ekx/test_xnnpack_provider", "/ekx/runtime/" + PROVIDER],
        env={"LD_LIBRARY_PATH": "/ekx/runtime"},
        binds=[(build, "/ekx")],
        timeout=900,
    )
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, out[-4000:] + done.stderr.decode(errors="replace")[-2000:]
    assert "0 failed" in out


def test_packages_carry_the_provider(emu_build: Any, tmp_path: Path) -> None:
    from edgekit_packaging.package import make_packages

    made = make_packages(emu_build.stage, tmp_path / "dist", tmp_path / "work", ["deb", "wheel"], Steps("t"))
    deb = made["deb"]
    control = subprocess.run(
        ["dpkg-deb", "--field", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    assert "Recommends: libxnnpack0, libpthreadpool0, libsodium23" in control
    assert "\n\n" not in control.strip()
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True).stdout
    assert f"./opt/edgekit/lib/{PROVIDER}" in listing
    with zipfile.ZipFile(made["wheel"]) as wheel:
        assert f"edgekit/{PROVIDER}" in wheel.namelist()
