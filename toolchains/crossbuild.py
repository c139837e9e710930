"""Build EdgeKit for a board: libedgekit, the edge programs and the Python package, checked for the board.

    build/<arch>-<board>/
      conan/      the generated host/build profiles and conan's CMake toolchain
      tools/      wrapper scripts for toolchains that are commands (zig)
      cmake/      the CMake build tree
      stage/      the result: lib/ bin/ include/ python/edgekit/ share/edgekit/build-info.json
                  (lib/ also holds libedgekit_xnnpack.so for boards with xnnpack = true)

Every ELF in stage/ is then checked against the board: its machine, and its GLIBC_*/GLIBCXX_*
needs against the board's floors. A violation fails the build and names the file and symbols.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from toolchains import conan, elfcheck
from toolchains.boards import DEBIAN_ARCH, ELF_MACHINE, Board, rootfs_dir
from toolchains.detect import Toolchain
from toolchains.rootfs import RootfsSpec, ensure_rootfs
from toolchains.steps import Steps, detail

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "packaging" / "conan" / "conanfile.py"


class BuildError(RuntimeError):
    """A build that failed, or whose output does not fit the board."""


@dataclass(frozen=True)
class BuildInfo:
    """What was built, for whom and with what: stage/share/edgekit/build-info.json."""

    version: str
    arch: str
    board: str
    glibc_floor: str
    toolchain: str
    toolchain_glibc: str
    python: str | None
    python_ext_suffix: str | None
    cpu_flags: tuple[str, ...]


# Where a build's stage/ says what it is (install.sh and invoke doctor read it on the board too).
BUILD_INFO = Path("share") / "edgekit" / "build-info.json"


def read_build_info(stage: Path) -> BuildInfo | None:
    """The BuildInfo a finished build wrote into stage/, or None if there is none."""
    path = stage / BUILD_INFO
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return BuildInfo(**{**data, "cpu_flags": tuple(data["cpu_flags"])})


@dataclass(frozen=True)
class BuildResult:
    build_dir: Path
    stage: Path
    cmake_toolchain_file: Path  # conan's, to build more for the same board (the C tests)
    info: BuildInfo
    elfs: tuple[Path, ...]


def runtime_version() -> str:
    text = (ROOT / "sdk" / "runtime" / "CMakeLists.txt").read_text()
    marker = "project(EdgeKitRuntime VERSION "
    return text[text.index(marker) + len(marker) :].split()[0].rstrip(")")


def build_dir_for(arch: str, board: Board) -> Path:
    return ROOT / "build" / f"{arch}-{board.name}"


def board_python_includes(board: Board, ensure_rootfs: Callable[[Board], Path], build_dir: Path) -> list[str]:
    """The folders that give the board's Python.h and pyconfig.h, and nothing else of the board's headers.

    Debian's pyconfig.h includes <TRIPLET/pythonX.Y/pyconfig.h>; the board's whole /usr/include must
    not be searched for that (its libc headers would shadow the toolchain's, e.g. a glibc 2.17 floor),
    so build_dir gets a folder holding only that per-architecture folder.
    """
    if board.host_python_includes:
        return list(board.host_python_includes)
    if board.debian is None or board.python is None:
        raise BuildError(
            f"board {board.name} has Python {board.python} but no [debian] rootfs to take its headers from"
        )
    rootfs = ensure_rootfs(board)
    version = ".".join(board.python.split(".")[:2])
    headers = rootfs / "usr" / "include" / f"python{version}"
    if not (headers / "Python.h").is_file():
        raise BuildError(
            f"{headers}/Python.h is missing: the rootfs {rootfs} needs libpython{version}-dev (add it "
            f"to the board's [debian] packages; then: invoke device.create --board {board.name} --force)"
        )
    folders = [str(headers)]
    multiarch = rootfs / "usr" / "include" / board.triplet / f"python{version}"
    if multiarch.is_dir():
        only = build_dir / "python-include"
        link = only / board.triplet / f"python{version}"
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(multiarch)
        folders.append(str(only))
    return folders


def xnnpack_cmake_args(board: Board, ensure_rootfs: Callable[[Board], Path], steps: Steps) -> list[str]:
    """CMake options for the XNNPACK kernel provider: built (ON, so a missing XNNPACK fails the build)
    against the board rootfs's XNNPACK when the board profile says xnnpack = true, else OFF."""
    if not board.xnnpack:
        detail(f"board {board.name} has no XNNPACK: the portable kernels only")
        return ["-DEDGEKIT_XNNPACK=OFF"]
    with steps("board rootfs: XNNPACK headers + libraries"):
        usr = ensure_rootfs(board) / "usr"
        missing = [
            str(path)
            for path in (usr / "include" / "xnnpack.h", usr / "include" / "pthreadpool.h")
            if not path.is_file()
        ]
        for name in ("libXNNPACK.so", "libpthreadpool.so"):
            if not (usr / "lib" / board.triplet / name).exists():
                missing.append(str(usr / "lib" / board.triplet / name))
        if missing:
            raise BuildError(
                f"board {board.name} builds the XNNPACK provider, but its rootfs lacks {', '.join(missing)}: "
                "add libxnnpack-dev and libpthreadpool-dev to the board's [debian] packages "
                f"(then: invoke device.create --board {board.name} --force)"
            )
        detail(f"XNNPACK from {usr}")
    return ["-DEDGEKIT_XNNPACK=ON", f"-DEDGEKIT_XNNPACK_ROOT={usr}"]


def cross_build(
    board: Board,
    toolchain: Toolchain,
    *,
    steps: Steps,
    ensure_rootfs: Callable[[Board], Path],
    jobs: int = 0,
) -> BuildResult:
    """Configure (conan + CMake), build, install into stage/, then check every ELF against the board."""
    build_dir = build_dir_for(board.arch, board)
    stage = build_dir / "stage"
    with steps("conan profiles + toolchain"):
        tools = conan.write_wrappers(toolchain, build_dir / "tools")
        conan_dir = build_dir / "conan"
        conan_dir.mkdir(parents=True, exist_ok=True)
        host = conan_dir / "host.profile"
        profile = conan.host_profile(toolchain, board, tools)
        if host.is_file() and host.read_text() != profile and (build_dir / "cmake").exists():
            # Another toolchain built here before: CMake cannot switch compilers in a build tree.
            detail("the toolchain changed: starting from a fresh CMake tree")
            shutil.rmtree(build_dir / "cmake")
        host.write_text(profile)
        build = conan_dir / "build.profile"
        build.write_text(conan.build_profile())
        detail(f"host profile: {host}")
        generators = conan.conan_install(RECIPE, host, build, conan_dir, ROOT / "build" / "conan-home")
        toolchain_file = generators / "conan_toolchain.cmake"

    python_args: list[str] = []
    if board.python is not None:
        with steps(f"board rootfs + Python {board.python} headers"):
            includes = board_python_includes(board, ensure_rootfs, build_dir)
            detail(f"headers: {' '.join(includes)}")
            python_args = [
                "-DEDGEKIT_BUILD_PYTHON=ON",
                f"-DEDGEKIT_PYTHON_INCLUDE_DIRS={';'.join(includes)}",
                f"-DEDGEKIT_PYTHON_EXT_SUFFIX={board.python_ext_suffix}",
                f"-DEDGEKIT_HOST_PYTHON={sys.executable}",
            ]
    else:
        detail(f"board {board.name} has no Python: building the C runtime and programs only")

    xnnpack_args = xnnpack_cmake_args(board, ensure_rootfs, steps)

    cmake_dir = build_dir / "cmake"
    with steps("cmake configure"):
        _run(
            [
                "cmake",
                "-S",
                str(ROOT),
                "-B",
                str(cmake_dir),
                "-G",
                "Ninja",
                f"-DCMAKE_TOOLCHAIN_FILE={toolchain_file}",
                "-DCMAKE_BUILD_TYPE=Release",
                "-DEDGEKIT_WERROR=ON",
                "-DCMAKE_INSTALL_LIBDIR=lib",
                "-DEDGEKIT_INSTALL_LIBDIR=lib",
                "-DEDGEKIT_BUILD_PYTHON=OFF",
                *python_args,
                *xnnpack_args,
            ]
        )
    with steps("compile"):
        _run(["cmake", "--build", str(cmake_dir), *(["--parallel", str(jobs)] if jobs else [])], echo=True)
    with steps("install into stage/"):
        if stage.exists():
            shutil.rmtree(stage)
        _run(["cmake", "--install", str(cmake_dir), "--prefix", str(stage)])
        info = BuildInfo(
            version=runtime_version(),
            arch=board.arch,
            board=board.name,
            glibc_floor=board.glibc,
            toolchain=toolchain.label,
            toolchain_glibc=toolchain.glibc,
            python=board.python,
            python_ext_suffix=board.python_ext_suffix,
            cpu_flags=tuple(toolchain.cpu_flags(board.march, board.mcpu)),
        )
        info_file = stage / BUILD_INFO
        info_file.parent.mkdir(parents=True, exist_ok=True)
        info_file.write_text(json.dumps(asdict(info), indent=2) + "\n")
    with steps(f"check every ELF against {board.name} (glibc {board.glibc})"):
        elfs = elfcheck.find_elfs(stage)
        violations = elfcheck.check_floor(
            elfs, glibc=board.glibc, glibcxx=board.glibcxx, machine=ELF_MACHINE[board.arch]
        )
        if violations:
            # Keep the binaries to inspect, but never where packaging would pick them up.
            rejected = build_dir / "stage-rejected"
            if rejected.exists():
                shutil.rmtree(rejected)
            stage.rename(rejected)
            raise BuildError(
                f"the build does not fit board {board.name} (binaries kept in {rejected}):\n"
                f"{elfcheck.format_report(violations, board=board.name, arch=board.arch)}"
            )
        for elf in elfs:
            detail(f"ok: {elf.relative_to(stage)}")
    return BuildResult(build_dir, stage, toolchain_file, info, tuple(elfs))


def board_rootfs(board: Board, log: Callable[[str], None] = detail, *, rebuild: bool = False) -> Path:
    """The board's Debian rootfs, made (mmdebstrap) on first use and cached (see toolchains.rootfs).

    rebuild: make it again even if the cached one was made from another package list.
    """
    return ensure_rootfs(rootfs_spec(board), rootfs_dir(board), log=log, rebuild=rebuild)


def rootfs_spec(board: Board) -> RootfsSpec:
    """What the board's rootfs is made of: its profile's [debian] suite and packages."""
    if board.debian is None:
        raise BuildError(f"board {board.name} has no [debian] section: there is no rootfs to make for it")
    return RootfsSpec(
        suite=board.debian.suite, debian_arch=DEBIAN_ARCH[board.arch], packages=board.debian.packages
    )


# What a new user's board has: Debian's Python and numpy, and nothing of XNNPACK (no libxnnpack0,
# libpthreadpool0, libcpuinfo0). The basics are what extract mode needs to run anything (see the board
# profiles); python3-pip installs a wheel as a user would.
PYTHON_ONLY_PACKAGES = (
    "base-files",
    "base-passwd",
    "libc-bin",
    "dash",
    "coreutils",
    "python3",
    "python3-numpy",
    "python3-pip",
)


def python_only_rootfs(board: Board, log: Callable[[str], None] = detail) -> Path:
    """A rootfs of the board's Debian suite with only python3, numpy and pip (made on first use and cached
    next to the board's, like it): where the board wheel must run on what it carries (tests/test_wheel.py)."""
    if board.debian is None:
        raise BuildError(f"board {board.name} has no [debian] section: there is no rootfs to make for it")
    spec = RootfsSpec(
        suite=board.debian.suite, debian_arch=DEBIAN_ARCH[board.arch], packages=PYTHON_ONLY_PACKAGES
    )
    return ensure_rootfs(spec, rootfs_dir(board).parent / "python-only-rootfs", log=log)


def _run(argv: list[str], *, echo: bool = False) -> None:
    """Runs a build command; its output is shown line by line when echo, and kept for the error."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if echo:
            detail(line.rstrip())
    if process.wait() != 0:
        raise BuildError(
            f"{' '.join(argv[:3])} ... failed (exit {process.returncode}):\n{''.join(lines).rstrip()}"
        )
