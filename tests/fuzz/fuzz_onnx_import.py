"""Fuzz target: the bytes of an .onnx file through the whole model compiler, in memory.

What ``edgekit compile model.onnx`` does (parse, import, quantization folding, lowering, passes, memory
plan, the .ekm writer), without files: ``compile_model(data)`` with no output. A ``CompileError`` is
the compiler's answer to a bad model; any other exception, a hang or a crash is a bug.

    .venv/bin/python tests/fuzz/fuzz_onnx_import.py -timeout=10 -rss_limit_mb=2048 -max_len=65536 \\
        NEWDIR tests/fuzz/corpus/onnx_import

Imported (by tests/test_fuzz_python.py) it only defines ``one_input``: no instrumentation, no fuzzing.
"""

from __future__ import annotations

import contextlib
import shlex
import sys

import atheris  # type: ignore[import-untyped]

# numpy, onnx and edgekit's runtime package load first, uninstrumented: the coverage that guides the
# fuzzer is the compiler's.
import numpy  # noqa: F401
import onnx  # noqa: F401

import edgekit  # noqa: F401

FUZZING = __name__ == "__main__"

with atheris.instrument_imports(include=["edgekit.compiler"]) if FUZZING else contextlib.nullcontext():
    from edgekit.compiler import CompileError, compile_model


def one_input(data: bytes) -> None:
    try:
        compile_model(data)
    except CompileError:
        pass


if FUZZING:
    # libFuzzer runs argv[0] through the shell for -merge, -fork and -jobs: make it this interpreter and
    # this script, so the file needs no shebang or execute bit.
    atheris.Setup([shlex.join([sys.executable, __file__]), *sys.argv[1:]], one_input)
    atheris.Fuzz()
