"""The glibc-floor check: does every built ELF load on a board with an older glibc (and libstdc++)?

A shared object or program records, in ``.gnu.version_r``, each symbol version it needs from each
library (``GLIBC_2.34`` from ``libc.so.6``), and in ``.gnu.version`` which version each dynamic symbol
binds to. The dynamic loader refuses to start anything needing a version its glibc does not define,
so comparing those needs with a board's glibc floor catches, at build time, the
``version `GLIBC_2.34' not found`` the board would otherwise print at run time.

    violations = check_floor(find_elfs(stage), glibc="2.17", machine="EM_AARCH64")
    if violations:
        raise SystemExit(format_report(violations, board="generic-glibc2.17", arch="aarch64"))
"""

from __future__ import annotations

import os
import re
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from elftools.elf.dynamic import DynamicSection, DynamicTag
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection, GNUVerSymSection
from elftools.elf.sections import SymbolTableSection

__all__ = [
    "ElfCheckError",
    "ElfInfo",
    "VersionNeed",
    "Violation",
    "check_floor",
    "cxxabi_for_glibcxx",
    "find_elfs",
    "format_report",
    "is_elf",
    "read_elf",
]

ELF_MAGIC = b"\x7fELF"
_VERNEED_ENTRY_SIZE = 16  # Elf32/Elf64_Verneed and _Vernaux alike

ViolationKind = Literal["glibc", "libstdc++", "machine"]

# The sonames glibc itself ships: every version they define is a GLIBC_* one, checked against the floor.
_GLIBC_LIBRARY = re.compile(
    r"(ld-linux[\w.-]*|ld64|libc|libm|libmvec|libpthread|libdl|librt|libresolv|libutil|libanl|libnsl"
    r"|libBrokenLocale|libc_malloc_debug|libthread_db)\.so(\.\d+)*"
)
_LIBSTDCXX = re.compile(r"libstdc\+\+\.so(\.\d+)*")
_NUMBERED = re.compile(r"(GLIBC|GLIBCXX|CXXABI)_(\d+(?:\.\d+)*)")

# libstdc++ defines CXXABI_1.3.N next to GLIBCXX_3.4.M, and a board profile only records the GLIBCXX
# maximum: the first GLIBCXX_3.4 patch level that came with each CXXABI_1.3 one (libstdc++'s ABI
# history, GCC 3.4 .. 14). Past the table's end we stop at its last row, so a newer CXXABI need is
# reported rather than waved through.
_CXXABI_SINCE_GLIBCXX: tuple[tuple[int, int], ...] = (
    (0, 0),  # GCC 3.4
    (4, 1),  # GCC 4.0
    (10, 2),  # GCC 4.3
    (11, 3),  # GCC 4.4
    (14, 4),  # GCC 4.5
    (15, 5),  # GCC 4.6
    (17, 6),  # GCC 4.7
    (18, 7),  # GCC 4.8
    (20, 8),  # GCC 4.9
    (21, 9),  # GCC 5
    (22, 10),  # GCC 6
    (23, 11),  # GCC 7
    (26, 12),  # GCC 9
    (29, 13),  # GCC 11
    (31, 14),  # GCC 13
    (33, 15),  # GCC 14
)


class ElfCheckError(RuntimeError):
    """A file could not be read as an ELF (not one, truncated or malformed), or a floor is malformed."""


@dataclass(frozen=True)
class VersionNeed:
    """One ``.gnu.version_r`` entry: ``library`` must define ``version``; ``symbols`` bind to it."""

    library: str
    version: str
    symbols: tuple[str, ...]


@dataclass(frozen=True)
class ElfInfo:
    """What the floor check (and ``invoke doctor``) needs to know about one ELF file."""

    path: Path
    machine: str
    elf_class: int
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]
    soname: str | None
    version_needs: tuple[VersionNeed, ...]


@dataclass(frozen=True)
class Violation:
    """A reason ``path`` will not load on the board.

    ``version`` is the needed version (``GLIBC_2.34``), or empty when the whole file is at fault (a
    wrong machine, a libstdc++ the board lacks); ``reason`` is the board-side half of the message;
    ``kind`` says which check failed: ``"glibc"``, ``"libstdc++"`` or ``"machine"``.
    """

    path: Path
    version: str
    symbols: tuple[str, ...] = ()
    library: str = ""
    reason: str = ""
    kind: ViolationKind = "glibc"

    def __str__(self) -> str:
        return f"{self.path}: {self.describe()}"

    def describe(self) -> str:
        """The message without the path, for a report grouped by file."""
        if not self.version:
            return self.reason
        text = f"needs {self.version}"
        if self.library:
            text += f" from {self.library}"
        if self.reason:
            text += f" ({self.reason})"
        if self.symbols:
            text += " for " + ", ".join(self.symbols)
        return text


def is_elf(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts with the ELF magic; never raises (unreadable means no)."""
    try:
        with open(path, "rb") as stream:
            return stream.read(len(ELF_MAGIC)) == ELF_MAGIC
    except OSError:
        return False


def read_elf(path: str | os.PathLike[str]) -> ElfInfo:
    """Parse ``path``'s machine, dynamic section and symbol-version needs.

    Raises ``ElfCheckError`` for anything that is not a well-formed ELF file, and ``OSError`` when the
    file cannot be opened at all.
    """
    path = Path(path)
    with open(path, "rb") as stream:
        head = stream.read(len(ELF_MAGIC))
        if head != ELF_MAGIC:
            what = "an empty file" if not head else "no \\x7fELF magic"
            raise ElfCheckError(f"{path}: not an ELF file ({what})")
        stream.seek(0)
        try:
            return _parse(path, ELFFile(stream))
        except ElfCheckError:
            raise
        # pyelftools reads lazily and trusts every offset, size and index in the headers, so a truncated
        # or corrupt file fails anywhere in the walk, as any of a dozen types (its own ELFError,
        # construct's errors, struct.error, a seek to a negative offset's OSError, a zero entry size's
        # ZeroDivisionError, ...). The file opened fine, so all of them mean "malformed".
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            raise ElfCheckError(f"{path}: truncated or malformed ELF file ({detail})") from exc


def _parse(path: Path, elf: ELFFile) -> ElfInfo:
    machine = elf.header["e_machine"]
    needed: list[str] = []
    rpath: list[str] = []
    runpath: list[str] = []
    soname: str | None = None
    verneed: GNUVerNeedSection | None = None
    versym: GNUVerSymSection | None = None
    has_sections = False
    for section in elf.iter_sections():
        has_sections = True
        if isinstance(section, DynamicSection):
            for tag in section.iter_tags():
                kind = tag.entry.d_tag
                if kind == "DT_NEEDED":
                    needed.append(_tag_string(tag))
                elif kind == "DT_RPATH":
                    rpath.extend(p for p in _tag_string(tag).split(":") if p)
                elif kind == "DT_RUNPATH":
                    runpath.extend(p for p in _tag_string(tag).split(":") if p)
                elif kind == "DT_SONAME":
                    soname = _tag_string(tag)
        elif isinstance(section, GNUVerNeedSection):
            verneed = section
        elif isinstance(section, GNUVerSymSection):
            versym = section
    if not has_sections and any(seg["p_type"] == "PT_DYNAMIC" for seg in elf.iter_segments()):
        # The version needs are only reachable through section headers here; checking nothing would
        # pass a file that may well need a newer glibc.
        raise ElfCheckError(f"{path}: dynamic ELF without section headers (sstripped?): needs unreadable")
    return ElfInfo(
        path=path,
        machine=machine if isinstance(machine, str) else f"EM_{machine}",
        elf_class=elf.elfclass,
        needed=tuple(needed),
        rpath=tuple(rpath),
        runpath=tuple(runpath),
        soname=soname,
        version_needs=_version_needs(path, elf, verneed, versym),
    )


def _tag_string(tag: DynamicTag) -> str:
    # pyelftools resolves a string-valued tag into an attribute named after it (DT_NEEDED -> .needed).
    return str(getattr(tag, tag.entry.d_tag[3:].lower()))


def _version_needs(
    path: Path, elf: ELFFile, verneed: GNUVerNeedSection | None, versym: GNUVerSymSection | None
) -> tuple[VersionNeed, ...]:
    if verneed is None:
        return ()
    # pyelftools walks as many entries as the header's counts say, each at the previous one plus its
    # next offset, without bounds: a count past the section's end over a next offset of 0 walks the
    # same entry up to 2^32 times. Every entry, library (Verneed) or version (Vernaux), is 16 bytes of
    # a section inside the file, which bounds the walk.
    elf.stream.seek(0, os.SEEK_END)
    file_size = elf.stream.tell()
    if verneed["sh_offset"] + verneed["sh_size"] > file_size:
        raise ElfCheckError(f"{path}: malformed ELF file (.gnu.version_r ends past the end of the file)")
    room = verneed["sh_size"] // _VERNEED_ENTRY_SIZE
    if verneed.num_versions() > room:
        raise ElfCheckError(
            f"{path}: malformed ELF file (.gnu.version_r lists {verneed.num_versions()} libraries, "
            f"its {verneed['sh_size']} bytes hold at most {room} entries)"
        )
    # The version index (vna_other) ties a need to the .gnu.version entries, one per .dynsym symbol.
    wanted: dict[int, tuple[str, str]] = {}
    entries = 0
    for library, auxiliaries in verneed.iter_versions():
        entries += 1
        for aux in auxiliaries:
            entries += 1
            if entries > room:
                raise ElfCheckError(
                    f"{path}: malformed ELF file (.gnu.version_r lists more entries than its "
                    f"{verneed['sh_size']} bytes hold)"
                )
            wanted[aux["vna_other"]] = (library.name or "", aux.name)
    bound: dict[int, set[str]] = {index: set() for index in wanted}
    if versym is not None and isinstance(versym.symboltable, SymbolTableSection):
        # Decoded straight from the section bytes: pyelftools re-parses one entry per call otherwise.
        order = "<" if elf.little_endian else ">"
        data = versym.data()
        indices = [value for (value,) in struct.iter_unpack(order + "H", data[: len(data) // 2 * 2])]
        for index, symbol in zip(indices, versym.symboltable.iter_symbols()):
            index &= 0x7FFF  # bit 15 marks a hidden symbol, not part of the index
            if index in bound and symbol.name:
                bound[index].add(symbol.name)
    libraries = list(dict.fromkeys(library for library, _ in wanted.values()))
    needs = [
        VersionNeed(library=library, version=version, symbols=tuple(sorted(bound[index])))
        for index, (library, version) in wanted.items()
    ]
    # Libraries in the file's order, each one's versions oldest first, for a stable, readable report.
    needs.sort(key=lambda need: (libraries.index(need.library), _version_sort_key(need.version)))
    return tuple(needs)


def _version_sort_key(version: str) -> tuple[str, tuple[int, ...]]:
    match = re.fullmatch(r"(.*?)_(\d+(?:\.\d+)*)", version)
    if match is None:
        return (version, ())
    return (match.group(1), tuple(int(part) for part in match.group(2).split(".")))


def _version_tuple(text: str, prefix: str, what: str) -> tuple[int, ...]:
    """``"2.17"`` or ``"GLIBC_2.17"`` as ``(2, 17)``, for numeric comparison (2.4 < 2.17 < 2.34)."""
    if text.startswith(prefix + "_"):
        text = text[len(prefix) + 1 :]
    if not re.fullmatch(r"\d+(\.\d+)*", text):
        raise ElfCheckError(f"malformed {what} {text!r}: expected numbers like 2.17 (or {prefix}_2.17)")
    return tuple(int(part) for part in text.split("."))


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def cxxabi_for_glibcxx(glibcxx: str) -> str:
    """The newest ``CXXABI_*`` a libstdc++ whose newest ``GLIBCXX_*`` is ``glibcxx`` defines.

    ``cxxabi_for_glibcxx("3.4.30") == "CXXABI_1.3.13"`` (GCC 12).
    """
    return "CXXABI_" + _dotted(_cxxabi_max(_version_tuple(glibcxx, "GLIBCXX", "glibcxx floor")))


def _cxxabi_max(glibcxx: tuple[int, ...]) -> tuple[int, ...]:
    if glibcxx[:2] != (3, 4):
        raise ElfCheckError(f"malformed glibcxx floor {_dotted(glibcxx)!r}: libstdc++.so.6 is GLIBCXX_3.4.*")
    patch = glibcxx[2] if len(glibcxx) > 2 else 0
    cxxabi = max(abi for since, abi in _CXXABI_SINCE_GLIBCXX if since <= patch)
    return (1, 3, cxxabi) if cxxabi else (1, 3)


def check_floor(
    paths: Iterable[str | os.PathLike[str]],
    *,
    glibc: str,
    glibcxx: str | None = None,
    machine: str | None = None,
) -> list[Violation]:
    """Every reason one of ``paths`` would not load on a board with this glibc (and libstdc++).

    ``glibc`` is the board's glibc version (its floor: ``"2.17"``); ``glibcxx`` the highest
    ``GLIBCXX_3.4.*`` its libstdc++ defines, or None when the board has no libstdc++ (nothing may
    need it then); ``machine``, if given, the ``e_machine`` every file must have (``"EM_AARCH64"``).
    Needs from libraries outside glibc and libstdc++ (libgcc_s, libz, ...) are not judged here.
    Raises ``ElfCheckError`` for a malformed floor or file.
    """
    floor = _Floor(
        glibc=_version_tuple(glibc, "GLIBC", "glibc floor"),
        glibcxx=_version_tuple(glibcxx, "GLIBCXX", "glibcxx floor") if glibcxx is not None else None,
    )
    violations: list[Violation] = []
    for path in paths:
        info = read_elf(path)
        if machine is not None and info.machine != machine:
            reason = f"is built for {info.machine}, the board needs {machine}"
            violations.append(Violation(info.path, "", reason=reason, kind="machine"))
        cxx_flagged = False
        for need in info.version_needs:
            kind = _kind(need)
            if kind is None:
                continue
            cxx_flagged = cxx_flagged or kind == "libstdc++"
            reason = floor.judge(need, kind)
            if reason:
                violations.append(
                    Violation(info.path, need.version, need.symbols, need.library, reason, kind)
                )
        if floor.glibcxx is None and not cxx_flagged:
            # Linked to libstdc++ without needing any of its versions: the board still has no such file.
            for library in info.needed:
                if _LIBSTDCXX.fullmatch(library):
                    reason = f"needs {library}, the board has no libstdc++"
                    violations.append(Violation(info.path, "", (), library, reason, "libstdc++"))
    return violations


def _kind(need: VersionNeed) -> ViolationKind | None:
    """Which floor judges ``need``: glibc's, libstdc++'s, or none (another library's own versions)."""
    if _LIBSTDCXX.fullmatch(need.library) or need.version.startswith(("GLIBCXX_", "CXXABI_")):
        return "libstdc++"
    if need.version.startswith("GLIBC_") or _GLIBC_LIBRARY.fullmatch(need.library):
        return "glibc"
    return None


@dataclass(frozen=True)
class _Floor:
    glibc: tuple[int, ...]
    glibcxx: tuple[int, ...] | None

    def judge(self, need: VersionNeed, kind: ViolationKind) -> str:
        """Why the board cannot satisfy ``need``, or "" when it can."""
        numbered = _NUMBERED.fullmatch(need.version)
        family = numbered.group(1) if numbered else ""
        version = tuple(int(p) for p in numbered.group(2).split(".")) if numbered else ()
        if kind == "glibc":
            if family != "GLIBC":
                return "not a numbered glibc release, never portable"
            return f"board floor {_dotted(self.glibc)}" if version > self.glibc else ""
        if kind == "libstdc++":
            if self.glibcxx is None:
                return "the board has no libstdc++"
            if family == "GLIBCXX":
                return (
                    f"board libstdc++ has GLIBCXX_{_dotted(self.glibcxx)}" if version > self.glibcxx else ""
                )
            if family == "CXXABI":
                cxxabi = _cxxabi_max(self.glibcxx)
                return f"board libstdc++ has CXXABI_{_dotted(cxxabi)}" if version > cxxabi else ""
            return "not a numbered libstdc++ version, never portable"
        return ""


def find_elfs(root: str | os.PathLike[str]) -> list[Path]:
    """Every regular ELF file under ``root``, sorted; symlinks (lib.so -> lib.so.0) are not followed."""
    found: list[Path] = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory, name)
            try:
                regular = stat.S_ISREG(path.lstat().st_mode)
            except OSError:
                continue
            if regular and is_elf(path):
                found.append(path)
    return sorted(found)


def format_report(violations: Iterable[Violation], *, board: str | None = None, arch: str = "aarch64") -> str:
    """A human report, one block per file, ending with how to fix it (a build for board and arch); empty
    when there is nothing."""
    by_file: dict[Path, list[Violation]] = {}
    for violation in violations:
        by_file.setdefault(violation.path, []).append(violation)
    if not by_file:
        return ""
    lines: list[str] = []
    for path, found in by_file.items():
        if len(found) == 1:
            lines.append(str(found[0]))
        else:
            lines.append(f"{path}:")
            lines.extend(f"  {violation.describe()}" for violation in found)
    kinds = {violation.kind for found in by_file.values() for violation in found}
    lines.append("")
    if kinds & {"glibc", "libstdc++"}:
        lines.append(
            "To fix: build with the zig toolchain, which links against the floor's own glibc: "
            f"invoke build --arch {arch} --toolchain zig --board {board or '<board>'}; "
            "or raise the board's floor (glibc/glibcxx in its profile) if the board really is newer."
        )
    if "libstdc++" in kinds:
        lines.append(
            "The EdgeKit runtime must not need libstdc++: keep C++ out of it (or link it statically)."
        )
    if "machine" in kinds:
        lines.append(
            "A file for another machine is in the tree: it was built by a host compiler, not the cross one."
        )
    return "\n".join(lines)
