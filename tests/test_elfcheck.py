"""The glibc-floor check against real binaries: Debian's aarch64 cross gcc (glibc 2.36), zig targeting
glibc 2.17, and the host's g++ (x86-64, libstdc++).

Expected results come from binutils' ``readelf`` output, parsed here independently of pyelftools, and
from a few well-known facts (aarch64 glibc starts at GLIBC_2.17; glibc 2.34 moved pthread_create into
libc.so.6 under GLIBC_2.34).
"""

from __future__ import annotations

import random
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

REPO = Path(__file__).resolve().parents[1]

from toolchains.elfcheck import (  # noqa: E402
    ElfCheckError,
    Violation,
    check_floor,
    cxxabi_for_glibcxx,
    find_elfs,
    format_report,
    is_elf,
    read_elf,
)

CROSS_GCC = "aarch64-linux-gnu-gcc"
CROSS_READELF = "aarch64-linux-gnu-readelf"

# Threads (pthread_create moved into libc in glibc 2.34) and memfd_create (new in 2.27), which zig's
# 2.17 headers do not declare: the same file builds for every floor.
PROBE_C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>

static void *run(void *arg) { return arg; }

int ek_probe(void) {
    pthread_t thread;
    void *result;
    if (pthread_create(&thread, NULL, run, NULL) != 0) return -1;
    pthread_join(thread, &result);
#if __GLIBC__ > 2 || __GLIBC_MINOR__ >= 27
    int fd = memfd_create("ek-probe", 0);
#else
    int fd = -1;
#endif
    printf("%d\n", fd);
    return fd;
}
"""

MAIN_C = r"""
int ek_probe(void);
int main(void) { return ek_probe() < 0; }
"""

CXX_SRC = r"""
#include <string>
#include <thread>

std::string ek_greet(const std::string &name) {
    std::string out;
    std::thread worker([&] { out = "hello, " + name; });
    worker.join();
    return out;
}
"""

# GLIBC_PRIVATE: ld.so's internal _dl_argv, reachable by linking ld.so itself.
PRIVATE_C = r"""
extern char **_dl_argv;
char *ek_first_arg(void) { return _dl_argv[0]; }
"""


def run(*argv: str | Path, cwd: Path | None = None, timeout: float = 120) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed")
    return found


# ---------------------------------------------------------------------------------------------------
# binutils' view of a file, parsed independently


@dataclass(frozen=True)
class ReadelfView:
    machine: str
    needed: tuple[str, ...]
    soname: str | None
    runpath: tuple[str, ...]
    # (library, version) -> the dynamic symbols bound to it
    needs: dict[tuple[str, str], frozenset[str]]


READELF_MACHINES = {"AArch64": "EM_AARCH64", "Advanced Micro Devices X86-64": "EM_X86_64"}


def readelf_view(path: Path) -> ReadelfView:
    out = run(need(CROSS_READELF), "-W", "-h", "-d", "-V", "--dyn-syms", path)
    machine = re.search(r"^\s*Machine:\s+(.+?)\s*$", out, re.M)
    assert machine, out
    needed = tuple(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out))
    soname = re.search(r"\(SONAME\)\s+Library soname: \[(.+?)\]", out)
    runpath = re.search(r"\(RUNPATH\)\s+Library runpath: \[(.+?)\]", out)

    # .gnu.version_r: "File: libc.so.6  Cnt: 3" then "Name: GLIBC_2.34  Flags: none  Version: 4" lines.
    index: dict[int, tuple[str, str]] = {}
    library = ""
    verneed = out.split("Version needs section", 1)[1] if "Version needs section" in out else ""
    for line in verneed.splitlines():
        if file := re.search(r"File: (\S+)", line):
            library = file.group(1)
        elif aux := re.search(r"Name: (\S+)\s+Flags: \S+\s+Version: (\d+)", line):
            index[int(aux.group(2))] = (library, aux.group(1))
    # .dynsym: an undefined symbol bound to a needed version reads "name@VERSION (n)", n the index above
    # (two libraries may both need a GLIBC_2.17).
    symbols: dict[tuple[str, str], set[str]] = {key: set() for key in index.values()}
    dynsym = out.split("Symbol table '.dynsym'", 1)[1] if "Symbol table '.dynsym'" in out else ""
    for line in dynsym.splitlines():
        columns = line.split()
        if len(columns) >= 9 and columns[0].endswith(":") and re.fullmatch(r"\(\d+\)", columns[8]):
            name, version = columns[7].split("@", 1)
            library, expected = index[int(columns[8][1:-1])]
            assert version == expected, line
            symbols[(library, version)].add(name)
    return ReadelfView(
        machine=READELF_MACHINES.get(machine.group(1), machine.group(1)),
        needed=needed,
        soname=soname.group(1) if soname else None,
        runpath=tuple(runpath.group(1).split(":")) if runpath else (),
        needs={key: frozenset(names) for key, names in symbols.items()},
    )


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("_", 1)[1].split("."))


def glibc_needs_above(view: ReadelfView, floor: str) -> dict[str, frozenset[str]]:
    """What the check must report for this floor, from binutils' view: every numbered GLIBC_ above it."""
    limit = tuple(int(part) for part in floor.split("."))
    found: dict[str, frozenset[str]] = {}
    for (_library, version), names in view.needs.items():
        if re.fullmatch(r"GLIBC_[\d.]+", version) and version_tuple(version) > limit:
            found[version] = found.get(version, frozenset()) | names
    return found


def max_version(view: ReadelfView, prefix: str) -> str:
    versions = [v for _lib, v in view.needs if re.fullmatch(prefix + r"_[\d.]+", v)]
    assert versions, f"no {prefix}_* needs in {view}"
    return max(versions, key=version_tuple).split("_", 1)[1]


def defined_versions(library: Path, prefix: str) -> list[str]:
    """The numbered versions a shared library defines (its .gnu.version_d), per binutils."""
    out = run(need(CROSS_READELF), "-W", "-V", library)
    defined = out.split("Version definition section", 1)[1].split("Version needs section", 1)[0]
    return re.findall(rf"Name: ({prefix}_[\d.]+)\b", defined)


# ---------------------------------------------------------------------------------------------------
# real binaries, built once per session


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    (src / "probe.c").write_text(PROBE_C)
    (src / "main.c").write_text(MAIN_C)
    (src / "greet.cpp").write_text(CXX_SRC)
    (src / "private.c").write_text(PRIVATE_C)
    return src


@pytest.fixture(scope="module")
def gcc_build(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's cross gcc links against glibc 2.36: a versioned library, its symlinks, a program."""
    gcc = need(CROSS_GCC)
    out = tmp_path_factory.mktemp("gcc")
    (out / "lib").mkdir()
    (out / "bin").mkdir()
    lib = out / "lib" / "libprobe.so.1.0.0"
    run(gcc, "-O2", "-fPIC", "-shared", "-Wl,-soname,libprobe.so.1", "-o", lib, sources / "probe.c")
    (out / "lib" / "libprobe.so.1").symlink_to(lib.name)
    (out / "lib" / "libprobe.so").symlink_to("libprobe.so.1")
    run(
        gcc, "-O2", "-o", out / "bin" / "probe", sources / "main.c",
        f"-L{out / 'lib'}", "-lprobe", "-Wl,-rpath,$ORIGIN/../lib",
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def gcc_lib(gcc_build: Path) -> Path:
    return gcc_build / "lib" / "libprobe.so.1.0.0"


@pytest.fixture(scope="module")
def gcc_exe(gcc_build: Path) -> Path:
    return gcc_build / "bin" / "probe"


@pytest.fixture(scope="module")
def zig_lib(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """zig links against stubs of exactly the glibc it is asked for (its first run fills its cache)."""
    pytest.importorskip("ziglang")
    lib = tmp_path_factory.mktemp("zig") / "libprobe.so"
    zig_cc = (sys.executable, "-m", "ziglang", "cc", "-target", "aarch64-linux-gnu.2.17")
    # -O2: zig's default Debug build links its UBSan runtime, which needs a pile of unrelated symbols.
    run(*zig_cc, "-O2", "-fPIC", "-shared", "-o", lib, sources / "probe.c", timeout=600)
    return lib


@pytest.fixture(scope="module")
def cxx_lib(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    gxx = need("g++")
    lib = tmp_path_factory.mktemp("cxx") / "libgreet.so"
    run(gxx, "-O2", "-fPIC", "-shared", "-pthread", "-o", lib, sources / "greet.cpp")
    return lib


@pytest.fixture(scope="module")
def private_lib(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = need(CROSS_GCC)
    ld_so = Path(run(gcc, "-print-file-name=ld-linux-aarch64.so.1").strip())
    lib = tmp_path_factory.mktemp("private") / "libprivate.so"
    run(gcc, "-O2", "-fPIC", "-shared", "-o", lib, sources / "private.c", ld_so)
    return lib


# ---------------------------------------------------------------------------------------------------
# read_elf against binutils


@pytest.mark.parametrize("which", ["gcc_lib", "gcc_exe", "zig_lib", "cxx_lib", "private_lib"])
def test_read_elf_agrees_with_readelf(which: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(which)
    info = read_elf(path)
    view = readelf_view(path)
    assert info.path == path
    assert info.machine == view.machine
    assert info.elf_class == 64
    assert info.needed == view.needed
    assert info.soname == view.soname
    assert info.runpath == view.runpath
    assert {(n.library, n.version): frozenset(n.symbols) for n in info.version_needs} == view.needs
    for version_need in info.version_needs:
        assert list(version_need.symbols) == sorted(set(version_need.symbols))


def test_read_elf_dynamic_section_details(gcc_lib: Path, gcc_exe: Path) -> None:
    assert read_elf(gcc_lib).soname == "libprobe.so.1"
    exe = read_elf(gcc_exe)
    assert exe.soname is None
    assert "libprobe.so.1" in exe.needed and "libc.so.6" in exe.needed
    assert exe.runpath + exe.rpath == ("$ORIGIN/../lib",)  # which tag depends on ld's --enable-new-dtags


# ---------------------------------------------------------------------------------------------------
# check_floor: glibc


def test_gcc_build_breaks_the_2_17_floor(gcc_lib: Path) -> None:
    violations = check_floor([gcc_lib], glibc="2.17", machine="EM_AARCH64")
    expected = glibc_needs_above(readelf_view(gcc_lib), "2.17")
    assert expected, "glibc 2.36's pthread_create is GLIBC_2.34: the probe must need something past 2.17"
    assert {v.version: frozenset(v.symbols) for v in violations} == expected
    assert all(v.path == gcc_lib and v.kind == "glibc" and v.library == "libc.so.6" for v in violations)
    # The well-known facts, independently of readelf.
    by_version = {v.version: v for v in violations}
    assert {"pthread_create", "pthread_join"} <= set(by_version["GLIBC_2.34"].symbols)
    assert "memfd_create" in by_version["GLIBC_2.27"].symbols
    assert "GLIBC_2.17" not in by_version  # aarch64's base version is the floor itself
    message = str(by_version["GLIBC_2.34"])
    assert message.startswith(f"{gcc_lib}: needs GLIBC_2.34")
    assert "board floor 2.17" in message and "pthread_create" in message


def test_floor_versions_compare_numerically(gcc_lib: Path) -> None:
    view = readelf_view(gcc_lib)
    # As strings "2.4" > "2.36" > "2.17"; as versions 2.4 < 2.17 < 2.36.
    assert {v.version for v in check_floor([gcc_lib], glibc="2.4")} == set(glibc_needs_above(view, "2.4"))
    assert "GLIBC_2.17" in set(glibc_needs_above(view, "2.4"))
    assert check_floor([gcc_lib], glibc="2.36") == []
    assert check_floor([gcc_lib], glibc="GLIBC_2.36") == []
    assert {v.version for v in check_floor([gcc_lib], glibc="2.33")} == {"GLIBC_2.34"}
    with pytest.raises(ElfCheckError, match="glibc floor"):
        check_floor([gcc_lib], glibc="two.17")


def test_newest_need_sets_the_floor(gcc_lib: Path, gcc_exe: Path) -> None:
    newest = max(max_version(readelf_view(p), "GLIBC") for p in (gcc_lib, gcc_exe))
    assert check_floor([gcc_lib, gcc_exe], glibc=newest, machine="EM_AARCH64") == []
    major, minor = map(int, newest.split("."))
    below = check_floor([gcc_lib, gcc_exe], glibc=f"{major}.{minor - 1}")
    assert below and {v.version for v in below} == {f"GLIBC_{newest}"}


def test_zig_build_meets_the_2_17_floor(zig_lib: Path) -> None:
    assert check_floor([zig_lib], glibc="2.17", machine="EM_AARCH64") == []
    # Not vacuously: zig's 2.17 stubs still version everything, with the pre-2.34 libpthread layout.
    info = read_elf(zig_lib)
    by_library = {n.library: n for n in info.version_needs}
    assert by_library["libpthread.so.0"].version == "GLIBC_2.17"
    assert "pthread_create" in by_library["libpthread.so.0"].symbols
    assert {v.version for v in check_floor([zig_lib], glibc="2.16")} == {"GLIBC_2.17"}


def test_glibc_private_is_never_portable(private_lib: Path) -> None:
    violations = check_floor([private_lib], glibc="2.99")
    assert [(v.version, v.library, v.symbols) for v in violations] == [
        ("GLIBC_PRIVATE", "ld-linux-aarch64.so.1", ("_dl_argv",))
    ]
    assert "never portable" in str(violations[0])


# ---------------------------------------------------------------------------------------------------
# check_floor: libstdc++ and machine


def test_libstdcxx_needs_are_violations_when_the_board_has_none(cxx_lib: Path) -> None:
    view = readelf_view(cxx_lib)
    host_glibc = max_version(view, "GLIBC")
    violations = check_floor([cxx_lib], glibc=host_glibc)
    expected = {v for (lib, v) in view.needs if lib.startswith("libstdc++")}
    assert any(v.startswith("GLIBCXX_") for v in expected), view.needs
    assert {v.version for v in violations} == expected
    assert all(v.kind == "libstdc++" and "no libstdc++" in str(v) for v in violations)
    symbols = {s for v in violations for s in v.symbols}
    assert any("basic_string" in s or "thread" in s for s in symbols), symbols


def test_libstdcxx_needs_pass_a_new_enough_board(cxx_lib: Path) -> None:
    view = readelf_view(cxx_lib)
    host_glibc = max_version(view, "GLIBC")
    newest = max_version(view, "GLIBCXX")
    host_libstdcxx = Path(run(need("g++"), "-print-file-name=libstdc++.so.6").strip()).resolve()
    board_max = max(defined_versions(host_libstdcxx, "GLIBCXX"), key=version_tuple).split("_", 1)[1]
    assert check_floor([cxx_lib], glibc=host_glibc, glibcxx=board_max) == []
    # One patch level below the newest GLIBCXX the library needs: exactly that version is missing.
    patch = version_tuple("GLIBCXX_" + newest)
    older = ".".join(map(str, (*patch[:2], patch[2] - 1))) if len(patch) > 2 else None
    if older is not None:
        violations = check_floor([cxx_lib], glibc=host_glibc, glibcxx=older)
        assert f"GLIBCXX_{newest}" in {v.version for v in violations}
        assert all(v.kind == "libstdc++" for v in violations)


def test_libstdcxx_linked_without_versions_is_still_a_violation(sources: Path, tmp_path: Path) -> None:
    """DT_NEEDED libstdc++.so.6 with no GLIBCXX need (C code overlinked with -lstdc++)."""
    lib = tmp_path / "liboverlinked.so"
    gcc = need(CROSS_GCC)
    libstdcxx = Path(run(gcc, "-print-file-name=libstdc++.so.6").strip())
    if not libstdcxx.is_absolute():
        pytest.skip("no aarch64 libstdc++.so.6")
    run(gcc, "-fPIC", "-shared", "-o", lib, sources / "probe.c", "-Wl,--no-as-needed", libstdcxx)
    info = read_elf(lib)
    assert "libstdc++.so.6" in info.needed
    assert not [n for n in info.version_needs if n.library.startswith("libstdc++")]
    violations = check_floor([lib], glibc="2.99")
    assert [(v.version, v.library, v.kind) for v in violations] == [("", "libstdc++.so.6", "libstdc++")]
    assert "the board has no libstdc++" in str(violations[0])
    assert check_floor([lib], glibc="2.99", glibcxx="3.4.30") == []


@pytest.mark.parametrize("compiler", ["g++", CROSS_GCC])
def test_cxxabi_table_matches_a_real_libstdcxx(compiler: str) -> None:
    """The GLIBCXX -> CXXABI table, checked against what a real libstdc++.so.6 defines."""
    library = Path(run(need(compiler), "-print-file-name=libstdc++.so.6").strip())
    if not library.is_absolute():
        pytest.skip(f"{compiler} has no libstdc++.so.6")
    glibcxx = max(defined_versions(library.resolve(), "GLIBCXX"), key=version_tuple)
    cxxabi = max(defined_versions(library.resolve(), "CXXABI"), key=version_tuple)
    assert cxxabi_for_glibcxx(glibcxx) == cxxabi


@pytest.mark.parametrize(
    ("glibcxx", "cxxabi"),
    # libstdc++ manual, "ABI Policy and Guidelines", symbol versioning history.
    [
        ("3.4", "CXXABI_1.3"),  # GCC 3.4
        ("GLIBCXX_3.4.9", "CXXABI_1.3.1"),  # GCC 4.2
        ("3.4.19", "CXXABI_1.3.7"),  # GCC 4.8.3
        ("3.4.21", "CXXABI_1.3.9"),  # GCC 5
        ("3.4.25", "CXXABI_1.3.11"),  # GCC 8
        ("3.4.26", "CXXABI_1.3.12"),  # GCC 9.1
        ("3.4.28", "CXXABI_1.3.12"),  # GCC 9.3 and 10
        ("3.4.32", "CXXABI_1.3.14"),  # GCC 13.2
    ],
)
def test_cxxabi_table_matches_the_libstdcxx_manual(glibcxx: str, cxxabi: str) -> None:
    assert cxxabi_for_glibcxx(glibcxx) == cxxabi


@pytest.mark.parametrize("bad", ["", "3.x", "GLIBC_3.4.30", "6.0.30"])
def test_malformed_glibcxx_floor(bad: str) -> None:
    with pytest.raises(ElfCheckError, match="glibcxx floor"):
        cxxabi_for_glibcxx(bad)


def test_wrong_machine_is_a_violation(cxx_lib: Path, gcc_lib: Path) -> None:
    violations = check_floor([cxx_lib, gcc_lib], glibc="2.99", glibcxx="3.4.99", machine="EM_AARCH64")
    wrong = [v for v in violations if v.kind == "machine"]
    assert [v.path for v in wrong] == [cxx_lib]
    assert "EM_X86_64" in str(wrong[0]) and "EM_AARCH64" in str(wrong[0])
    assert check_floor([gcc_lib], glibc="2.99", machine="EM_AARCH64") == []


# ---------------------------------------------------------------------------------------------------
# malformed input


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("empty", lambda real: b"", "empty file"),
        ("text", lambda real: b"#!/bin/sh\necho hi\n", "not an ELF"),
        ("truncated", lambda real: real[:100], "truncated or malformed"),
        ("headers-only", lambda real: real[:64], "truncated or malformed"),
        ("magic-noise", lambda real: b"\x7fELF" + random.Random(7).randbytes(4096), "truncated or malformed"),
    ],
)
def test_malformed_files_raise_elfcheckerror(
    name: str, make: Callable[[bytes], bytes], message: str, gcc_lib: Path, tmp_path: Path
) -> None:
    path = write(tmp_path, name, make(gcc_lib.read_bytes()))
    with pytest.raises(ElfCheckError, match=message) as caught:
        read_elf(path)
    assert str(path) in str(caught.value)
    with pytest.raises(ElfCheckError):
        check_floor([path], glibc="2.17")


def test_corrupted_copies_never_leak_other_exceptions(gcc_lib: Path, tmp_path: Path) -> None:
    """Seeded random corruption of the headers and tables: parsed, or ElfCheckError, nothing else."""
    real = gcc_lib.read_bytes()
    rng = random.Random(2024)
    path = tmp_path / "corrupt.so"
    outcomes = {"parsed": 0, "rejected": 0}
    for _ in range(300):
        data = bytearray(real)
        for _ in range(rng.randint(1, 12)):
            data[rng.randrange(min(len(data), 0x1000))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            read_elf(path)
            outcomes["parsed"] += 1
        except ElfCheckError:
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 0, outcomes  # the corruption did hit something


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("sh_info", r"\.gnu\.version_r lists 4294967295 libraries, its \d+ bytes hold at most \d+ entries"),
        ("vn_cnt", r"\.gnu\.version_r lists more entries than its \d+ bytes hold"),
    ],
)
def test_version_need_counts_past_the_section_are_malformed(
    field: str, message: str, gcc_lib: Path, tmp_path: Path
) -> None:
    """pyelftools walks .gnu.version_r by the counts it is given, each entry at the previous one plus its
    next offset: a count past the section's end over a next offset of 0 walked one entry up to 2^32
    times (a hang; tests/fuzz/regressions/elfcheck). The section's size now bounds the walk."""
    data = bytearray(gcc_lib.read_bytes())
    with gcc_lib.open("rb") as stream:
        elf = ELFFile(stream)
        index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == ".gnu.version_r")
        header = elf["e_shoff"] + index * elf["e_shentsize"]
        first_entry = elf.get_section(index)["sh_offset"]
    if field == "sh_info":  # Elf64_Shdr.sh_info: how many libraries (Verneed entries) the section lists
        struct.pack_into("<I", data, header + 44, 0xFFFFFFFF)
    else:  # the first library's Verneed.vn_cnt: how many versions (Vernaux entries) it lists
        struct.pack_into("<H", data, first_entry + 2, 0xFFFF)
    path = write(tmp_path, "counts.so", bytes(data))
    with pytest.raises(ElfCheckError, match=message):
        read_elf(path)


def test_is_elf(gcc_lib: Path, tmp_path: Path) -> None:
    assert is_elf(gcc_lib)
    assert is_elf(write(tmp_path, "truncated", gcc_lib.read_bytes()[:100]))  # magic only, no parsing
    assert not is_elf(write(tmp_path, "empty", b""))
    assert not is_elf(write(tmp_path, "text", b"\x7fEL"))
    assert not is_elf(tmp_path / "missing")
    assert not is_elf(tmp_path)


def test_missing_file_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_elf(tmp_path / "missing.so")


# ---------------------------------------------------------------------------------------------------
# find_elfs and the report


def test_find_elfs_skips_symlinks_and_non_elfs(gcc_build: Path, tmp_path: Path) -> None:
    root = tmp_path / "stage"
    shutil.copytree(gcc_build, root, symlinks=True)
    (root / "lib" / "libprobe.a").write_bytes(b"!<arch>\n")
    (root / "README").write_text("not a binary\n")
    (root / "bin" / "script.sh").write_text("#!/bin/sh\n")
    (root / "linked-dir").symlink_to(root / "lib", target_is_directory=True)
    assert (root / "lib" / "libprobe.so").is_symlink() and is_elf(root / "lib" / "libprobe.so")
    assert find_elfs(root) == [root / "bin" / "probe", root / "lib" / "libprobe.so.1.0.0"]
    assert find_elfs(tmp_path / "nothing-here") == []


def test_format_report_groups_by_file_and_says_how_to_fix(gcc_build: Path, cxx_lib: Path) -> None:
    files = [*find_elfs(gcc_build), cxx_lib]
    violations = check_floor(files, glibc="2.17", machine="EM_AARCH64")
    report = format_report(violations, board="generic-glibc2.17")
    lib = gcc_build / "lib" / "libprobe.so.1.0.0"
    for path in {v.path for v in violations}:
        assert report.count(f"{path}:") == 1, report  # one block per file
    assert re.search(rf"^{re.escape(str(lib))}:\n  needs GLIBC_2.27 .*memfd_create", report, re.M), report
    assert re.search(r"^  needs GLIBC_2.34 .*\(board floor 2\.17\) for .*pthread_create", report, re.M)
    assert "invoke build --arch aarch64 --toolchain zig --board generic-glibc2.17" in report
    on_host = format_report(violations, board="host", arch="x86_64")
    assert "invoke build --arch x86_64 --toolchain zig --board host" in on_host
    assert "libstdc++" in report and "EM_X86_64" in report
    assert format_report([]) == ""
    single = format_report(
        [Violation(lib, "GLIBC_2.34", ("pthread_create",), "libc.so.6", "board floor 2.17")]
    )
    assert (
        single.splitlines()[0]
        == f"{lib}: needs GLIBC_2.34 from libc.so.6 (board floor 2.17) for pthread_create"
    )
    assert "--board <board>" in single
