"""The toolchain kinds EdgeKit cross-builds with, and finding them on this machine.

- ``linaro``: a Linaro (or Arm GNU Toolchain) binary GCC unpacked in a folder: ``TOOLCHAIN_ROOT``,
  else the usual /usr/local/gcc-linaro-* folders. Its sysroot (``<triplet>/libc``) fixes the glibc.
- ``debian``: Debian's cross compiler ``<triplet>-gcc`` (package gcc-aarch64-linux-gnu); glibc 2.36.
- ``zig``: ``python -m ziglang cc -target <arch>-linux-gnu.<glibc>`` from the ziglang PyPI package:
  hermetic, and it links against any glibc from 2.17 up, so it serves every board's floor.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from toolchains.boards import GNU_TRIPLET, version_tuple

KINDS = ("linaro", "debian", "zig")
LINARO_DEFAULT_ROOT = Path("/usr/local/gcc-linaro-6.2.1-2016.11-x86_64_aarch64-linux-gnu")
# Where Linaro and Arm GNU Toolchain tarballs are usually unpacked, tried when TOOLCHAIN_ROOT is unset.
LINARO_SEARCH = (
    LINARO_DEFAULT_ROOT,
    Path("/usr/local/gcc-linaro-6.3.1-2017.05-x86_64_aarch64-linux-gnu"),
    Path("/usr/local/gcc-linaro-7.5.0-2019.12-x86_64_aarch64-linux-gnu"),
)
ARM_GNU_GLOB = "arm-gnu-toolchain-*-x86_64-aarch64-none-linux-gnu"
# The oldest glibc zig can target on aarch64 (the first glibc with aarch64 support).
ZIG_MIN_GLIBC = "2.17"

HOW_TO_GET = {
    "linaro": (
        "unpack a Linaro GCC release for x86_64 host / aarch64-linux-gnu target (e.g. "
        "gcc-linaro-6.2.1-2016.11-x86_64_aarch64-linux-gnu.tar.xz from Linaro's releases) and set "
        "TOOLCHAIN_ROOT to its folder, or use --toolchain debian or --toolchain zig"
    ),
    "debian": "apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross (./quickstart.sh does this)",
    "zig": "pip install ziglang (it is in requirements-dev.txt: ./quickstart.sh installs it into .venv)",
}


class ToolchainError(RuntimeError):
    """A toolchain that is missing or unusable; the message says how to get one."""


class WrongArchError(ToolchainError):
    """A toolchain kind that does not target the architecture at all: getting it would not help."""


@dataclass(frozen=True)
class Toolchain:
    kind: str
    arch: str
    cc: tuple[str, ...]  # the command that compiles C: one path, or e.g. python -m ziglang cc -target ...
    cxx: tuple[str, ...]
    ar: tuple[str, ...]
    ranlib: tuple[str, ...]
    sysroot: Path | None  # passed as --sysroot (None: the compiler's built-in one)
    version: str  # for people: "gcc 12.2.0", "zig 0.15.2 (clang 20.1.2)"
    compiler: str  # conan's compiler setting: gcc or clang
    compiler_version: str  # conan's compiler.version: the major version
    glibc: str  # the glibc the binaries link against: the sysroot's, or zig's target version
    root: Path | None = None  # the folder of a Linaro toolchain

    def cpu_flags(self, march: str | None, mcpu: str | None) -> list[str]:
        """The flags that target a board's CPU, in this compiler's spelling."""
        if self.kind == "zig":
            # zig cc takes only -mcpu, with LLVM's names (cortex_a53); 'generic' is plain ARMv8-A.
            return [f"-mcpu={(mcpu or 'generic').replace('-', '_')}"] if (mcpu or march) else []
        return [*([f"-march={march}"] if march else []), *([f"-mcpu={mcpu}"] if mcpu else [])]

    @property
    def label(self) -> str:
        return f"{self.kind} ({self.version}, glibc {self.glibc})"


def _run(argv: Sequence[str]) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, timeout=120).stdout.strip()


def glibc_of(libc: Path) -> str | None:
    """The glibc release of a libc.so.6: glibc stamps 'release version X.Y' into the library."""
    try:
        match = re.search(rb"release version (\d+\.\d+)", libc.read_bytes())
    except OSError:
        return None
    return match.group(1).decode() if match else None


def _gcc_toolchain(kind: str, arch: str, prefix: str, sysroot: Path | None, root: Path | None) -> Toolchain:
    """A GCC whose tools are <prefix>gcc, <prefix>ar...; checks that it runs and finds its libc."""
    gcc = f"{prefix}gcc"
    try:
        version = _run([gcc, "-dumpfullversion", "-dumpversion"])
        sysroot_args = [f"--sysroot={sysroot}"] if sysroot else []
        libc = Path(_run([gcc, *sysroot_args, "-print-file-name=libc.so.6"]))
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolchainError(f"{kind}: {gcc} does not run: {exc}") from None
    if sysroot is not None:
        # The sysroot's own libc decides the glibc the binaries need (gcc may report its built-in path).
        triplet = Path(prefix).name.rstrip("-")
        for candidate in ("lib", "lib64", f"lib/{triplet}", f"usr/lib/{triplet}", "usr/lib"):
            if (sysroot / candidate / "libc.so.6").exists():
                libc = sysroot / candidate / "libc.so.6"
                break
    glibc = glibc_of(libc)
    if glibc is None:
        where = f"sysroot {sysroot}" if sysroot else "its default sysroot"
        raise ToolchainError(f"{kind}: {gcc} finds no libc.so.6 in {where} (is the C library installed?)")
    return Toolchain(
        kind=kind,
        arch=arch,
        cc=(gcc,),
        cxx=(f"{prefix}g++",),
        ar=(f"{prefix}ar",),
        ranlib=(f"{prefix}ranlib",),
        sysroot=sysroot,
        version=f"gcc {version}",
        compiler="gcc",
        compiler_version=version.split(".")[0],
        glibc=glibc,
        root=root,
    )


def linaro_roots() -> tuple[list[Path], bool]:
    """The folders to look in, and whether TOOLCHAIN_ROOT named them (then only that one counts)."""
    named = os.environ.get("TOOLCHAIN_ROOT")
    if named:
        return [Path(named)], True
    found = [root for root in LINARO_SEARCH if root.is_dir()]
    found += sorted(Path("/usr/local").glob(ARM_GNU_GLOB))
    return (found or [LINARO_DEFAULT_ROOT]), False


def find_linaro(arch: str) -> Toolchain:
    if arch != "aarch64":
        raise WrongArchError(f"linaro: only for aarch64 targets, not {arch}")
    roots, named = linaro_roots()
    problems = []
    for root in roots:
        if not root.is_dir():
            origin = "TOOLCHAIN_ROOT" if named else "the default TOOLCHAIN_ROOT"
            problems.append(f"{origin} {root} does not exist")
            continue
        # Linaro names its tools aarch64-linux-gnu-*, the Arm GNU Toolchain aarch64-none-linux-gnu-*.
        for triplet in ("aarch64-linux-gnu", "aarch64-none-linux-gnu"):
            gcc = root / "bin" / f"{triplet}-gcc"
            if gcc.is_file():
                sysroot = root / triplet / "libc"
                if not sysroot.is_dir():
                    problems.append(f"{root} has {gcc.name} but no sysroot {sysroot}")
                    break
                return _gcc_toolchain("linaro", arch, str(root / "bin" / f"{triplet}-"), sysroot, root)
        else:
            problems.append(f"{root} has no bin/aarch64-linux-gnu-gcc nor bin/aarch64-none-linux-gnu-gcc")
    raise ToolchainError(f"linaro: {'; '.join(problems)}")


def find_debian(arch: str) -> Toolchain:
    triplet = GNU_TRIPLET[arch]
    if shutil.which(f"{triplet}-gcc") is None:
        raise ToolchainError(f"debian: {triplet}-gcc is not on PATH")
    return _gcc_toolchain("debian", arch, f"{triplet}-", None, None)


def find_zig(arch: str, glibc: str) -> Toolchain:
    zig = (sys.executable, "-m", "ziglang")
    try:
        zig_version = _run([*zig, "version"])
        clang_line = _run([*zig, "cc", "--version"]).splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        raise ToolchainError(f"zig: the ziglang package is not installed in {sys.executable}") from None
    if version_tuple(glibc) < version_tuple(ZIG_MIN_GLIBC):
        raise ToolchainError(f"zig: glibc {glibc} is older than {ZIG_MIN_GLIBC}, the first with {arch}")
    clang = re.search(r"clang version (\d+)(\.[\d.]+)?", clang_line)
    clang_major = clang.group(1) if clang else "0"
    target = ("-target", f"{arch}-linux-gnu.{glibc}")
    return Toolchain(
        kind="zig",
        arch=arch,
        cc=(*zig, "cc", *target),
        cxx=(*zig, "c++", *target),
        ar=(*zig, "ar"),
        ranlib=(*zig, "ranlib"),
        sysroot=None,
        version=f"zig {zig_version} (clang {clang.group(0).split()[-1] if clang else '?'})",
        compiler="clang",
        compiler_version=clang_major,
        glibc=glibc,
    )


def find_toolchain(kind: str, arch: str, glibc: str) -> Toolchain:
    """The toolchain of that kind for arch; zig targets glibc, the others have their sysroot's."""
    if kind == "linaro":
        return find_linaro(arch)
    if kind == "debian":
        return find_debian(arch)
    if kind == "zig":
        return find_zig(arch, glibc)
    raise ToolchainError(f"unknown toolchain kind {kind!r} (kinds: {', '.join(KINDS)})")


def require_toolchain(kind: str, arch: str, glibc: str) -> Toolchain:
    """find_toolchain, with an error that says how to get the toolchain when it is missing."""
    try:
        return find_toolchain(kind, arch, glibc)
    except WrongArchError:
        raise
    except ToolchainError as exc:
        how = HOW_TO_GET.get(kind)
        raise ToolchainError(f"{exc}\n  to get it: {how}" if how else str(exc)) from None


def choose_toolchain(arch: str, glibc: str) -> tuple[Toolchain, list[str]]:
    """The first kind (linaro, debian, zig) that exists and links against a glibc <= the board's floor.

    Returns it with the reasons the earlier kinds were passed over, so the choice can be explained.
    """
    skipped = []
    for kind in KINDS:
        try:
            toolchain = find_toolchain(kind, arch, glibc)
        except ToolchainError as exc:
            skipped.append(str(exc))
            continue
        if version_tuple(toolchain.glibc) > version_tuple(glibc):
            skipped.append(f"{kind}: links against glibc {toolchain.glibc}, newer than the board's {glibc}")
            continue
        return toolchain, skipped
    raise ToolchainError(
        f"no usable toolchain for {arch} with glibc <= {glibc}:\n  "
        + "\n  ".join(skipped)
        + f"\n  to get zig (any glibc): {HOW_TO_GET['zig']}"
    )


def describe_all(arch: str, glibc: str) -> list[tuple[str, Toolchain | None, str]]:
    """Every kind for arch: (kind, the toolchain or None, why it is unusable or '')."""
    rows: list[tuple[str, Toolchain | None, str]] = []
    for kind in KINDS:
        try:
            rows.append((kind, find_toolchain(kind, arch, glibc), ""))
        except WrongArchError as exc:
            rows.append((kind, None, str(exc)))
        except ToolchainError as exc:
            rows.append((kind, None, f"{exc}; to get it: {HOW_TO_GET[kind]}"))
    return rows
