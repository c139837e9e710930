"""Fuzz target: the bytes of a built file through the glibc-floor check, as ``invoke build`` runs it.

``check_floor`` reads the file (``read_elf``: machine, dynamic section, symbol-version needs) and judges
it against a board; ``format_report`` words the result. An ``ElfCheckError`` is the check's answer to a
file that is not a well-formed ELF; any other exception, a hang or a crash is a bug.

    .venv/bin/python tests/fuzz/fuzz_elfcheck.py -timeout=10 -rss_limit_mb=2048 -max_len=65536 \\
        NEWDIR tests/fuzz/corpus/elfcheck

The check takes paths: each input is written to one memfd, read as /proc/self/fd/N, so no file is left
behind whatever happens. Imported (by tests/test_fuzz_python.py) it only defines ``one_input``: no
instrumentation, no fuzzing.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path

import atheris  # type: ignore[import-untyped]

# toolchains/ is a folder of the repository, not an installed package (pytest puts the root on the path).
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

FUZZING = __name__ == "__main__"

# pyelftools is instrumented too: the check hands it the whole file, and its coverage guides the fuzzer.
with atheris.instrument_imports(include=["elftools", "toolchains"]) if FUZZING else contextlib.nullcontext():
    from toolchains.elfcheck import ElfCheckError, check_floor, format_report

_FD = os.memfd_create("edgekit-fuzz-elfcheck")
_PATH = f"/proc/self/fd/{_FD}"


def one_input(data: bytes) -> None:
    os.ftruncate(_FD, 0)
    os.pwrite(_FD, data, 0)
    try:
        # A board with libstdc++: both floors judge the needs, and the machine is checked too.
        violations = check_floor([_PATH], glibc="2.17", glibcxx="3.4.22", machine="EM_AARCH64")
    except ElfCheckError:
        return
    format_report(violations, board="generic-glibc2.17")


if FUZZING:
    # libFuzzer runs argv[0] through the shell for -merge, -fork and -jobs: make it this interpreter and
    # this script, so the file needs no shebang or execute bit.
    atheris.Setup([shlex.join([sys.executable, __file__]), *sys.argv[1:]], one_input)
    atheris.Fuzz()
