"""Board (target) profiles: what a build must fit on the board it runs on.

A profile is a TOML file in toolchains/boards/: the CPU architecture and core (march/mcpu), the glibc floor
(every built ELF is checked against it), the libstdc++ the board has (if any), the board's Python
version (None: no Python assumed, so no extension modules), and for Debian-based boards the Debian
suite and packages that make its emulated rootfs and give the board's Python headers, and whether
the build includes the XNNPACK kernel provider (``xnnpack = true``: its arm64 headers and libraries
come from that rootfs, so its packages must include libxnnpack-dev and libpthreadpool-dev).
"""

from __future__ import annotations

import os
import platform
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import tomllib

BOARDS_DIR = Path(__file__).resolve().parent / "boards"
ARCHES = ("aarch64", "x86_64")
# Debian's names for the architectures, and the GNU triplet of each.
DEBIAN_ARCH = {"aarch64": "arm64", "x86_64": "amd64"}
GNU_TRIPLET = {"aarch64": "aarch64-linux-gnu", "x86_64": "x86_64-linux-gnu"}
# The ELF machine of each architecture, as pyelftools names it.
ELF_MACHINE = {"aarch64": "EM_AARCH64", "x86_64": "EM_X86_64"}


class BoardError(ValueError):
    """A board profile that does not exist or does not parse."""


@dataclass(frozen=True)
class DebianRootfs:
    suite: str
    packages: tuple[str, ...]


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    arch: str
    march: str | None  # -march, e.g. armv8-a (None: the compiler's default)
    mcpu: str | None  # -mcpu, e.g. cortex-a53 (tune for that core; None: generic)
    glibc: str
    glibcxx: str | None
    python: str | None
    debian: DebianRootfs | None
    # Only for the host profile: the running Python's header folders (others get theirs from the rootfs).
    host_python_includes: tuple[str, ...] = ()
    # Build libedgekit_xnnpack.so against the XNNPACK of the board's [debian] rootfs.
    xnnpack: bool = False

    @property
    def triplet(self) -> str:
        return GNU_TRIPLET[self.arch]

    @property
    def python_ext_suffix(self) -> str | None:
        """The extension-module suffix the board's Python imports, e.g. .cpython-311-aarch64-linux-gnu.so."""
        if self.python is None:
            return None
        major, minor = self.python.split(".")[:2]
        return f".cpython-{major}{minor}-{self.triplet}.so"

    @property
    def python_tag(self) -> str | None:
        """The wheel's Python and ABI tag, e.g. cp311."""
        if self.python is None:
            return None
        major, minor = self.python.split(".")[:2]
        return f"cp{major}{minor}"


def version_tuple(version: str) -> tuple[int, ...]:
    """'2.17' -> (2, 17), so versions compare as numbers (2.4 < 2.17)."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise BoardError(f"not a version number: {version!r}") from None


def board_names() -> list[str]:
    return sorted(path.stem for path in BOARDS_DIR.glob("*.toml"))


def load_board(name: str) -> Board:
    path = BOARDS_DIR / f"{name}.toml"
    if not path.is_file():
        raise BoardError(
            f"no board profile {name!r}; the profiles are: {', '.join(board_names())} ({BOARDS_DIR})"
        )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BoardError(f"{path}: {exc}") from None
    try:
        return _board_from(name, data)
    except (KeyError, TypeError, ValueError) as exc:
        raise BoardError(f"{path}: bad or missing field: {exc}") from None


def _board_from(name: str, data: dict[str, object]) -> Board:
    arch = str(data["arch"])
    glibc = str(data["glibc"])
    python = data.get("python")
    includes: tuple[str, ...] = ()
    if arch == "host":
        # Native build: this machine's architecture, glibc and the Python running the build.
        arch = platform.machine()
    if glibc == "host":
        glibc = os.confstr("CS_GNU_LIBC_VERSION").split()[-1]  # type: ignore[union-attr]
    if python == "host":
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        paths = sysconfig.get_paths()
        includes = tuple(dict.fromkeys((paths["include"], paths["platinclude"])))
    if arch not in ARCHES:
        raise BoardError(f"arch {arch!r} is not supported (supported: {', '.join(ARCHES)})")
    version_tuple(glibc)
    debian_data = data.get("debian")
    debian = None
    if isinstance(debian_data, dict):
        debian = DebianRootfs(str(debian_data["suite"]), tuple(str(p) for p in debian_data["packages"]))
    glibcxx = data.get("glibcxx")
    march, mcpu = data.get("march"), data.get("mcpu")
    xnnpack = data.get("xnnpack", False)
    if not isinstance(xnnpack, bool):
        raise BoardError(f"xnnpack must be true or false, not {xnnpack!r}")
    if xnnpack and debian is None:
        raise BoardError(
            "xnnpack = true needs a [debian] rootfs to take XNNPACK's headers and libraries from"
        )
    return Board(
        name=name,
        description=str(data.get("description", "")),
        arch=arch,
        march=None if march is None else str(march),
        mcpu=None if mcpu is None else str(mcpu),
        glibc=glibc,
        glibcxx=None if glibcxx is None else str(glibcxx),
        python=None if python is None else str(python),
        debian=debian,
        host_python_includes=includes,
        xnnpack=xnnpack,
    )


def default_board(arch: str) -> str:
    """The board a build targets when none is named: the emulated board for aarch64, else the host."""
    return "emu-debian12" if arch == "aarch64" else "host"


def cache_dir() -> Path:
    """Where downloaded board rootfs are kept between builds: $EDGEKIT_CACHE, else ~/.cache/edgekit."""
    return Path(os.environ.get("EDGEKIT_CACHE") or Path.home() / ".cache" / "edgekit")


def rootfs_dir(board: Board) -> Path:
    """The board's Debian rootfs: the emulated board, and the sysroot of its Python headers."""
    return cache_dir() / "boards" / board.name / "rootfs"
