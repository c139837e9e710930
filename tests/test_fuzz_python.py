"""The Python fuzz targets of tests/fuzz/ (the model compiler's ONNX import, the ELF check): each
crasher they found is kept in tests/fuzz/regressions/<target>/, named for the bug, and must now be
handled by the target's ``one_input``, rejected with the code's own error (CompileError,
ElfCheckError); every seed of the committed corpora runs through ``one_input`` too. The C targets and
long campaigns: tests/test_fuzz.py, ``invoke fuzz``."""

from __future__ import annotations

import functools
import importlib.util
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, ModuleType

import pytest

pytest.importorskip("atheris")

from edgekit.compiler import CompileError, compile_model
from toolchains.elfcheck import ElfCheckError, check_floor

FUZZ = Path(__file__).resolve().parent / "fuzz"
TARGETS = ("onnx_import", "elfcheck")
HANG = 60  # seconds; some regressions were hangs, which must fail the test instead of the whole run


@functools.cache
def target(name: str) -> ModuleType:
    """tests/fuzz/fuzz_<name>.py imported as a module: it only defines one_input then."""
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", FUZZ / f"fuzz_{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def files(kind: str, name: str) -> list[Path]:
    return sorted((FUZZ / kind / name).iterdir())


@contextmanager
def no_hang(what: str) -> Iterator[None]:
    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError(f"{what} still runs after {HANG} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(HANG)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


REGRESSIONS = [(name, path) for name in TARGETS for path in files("regressions", name)]


@pytest.mark.parametrize(("name", "path"), REGRESSIONS, ids=[f"{n}/{p.name}" for n, p in REGRESSIONS])
def test_regression_inputs_are_rejected_with_the_codes_own_error(
    name: str, path: Path, tmp_path: Path
) -> None:
    data = path.read_bytes()
    with no_hang(str(path)):
        target(name).one_input(data)
        if name == "onnx_import":
            with pytest.raises(CompileError):
                compile_model(data)
        else:
            copy = tmp_path / path.name
            copy.write_bytes(data)
            with pytest.raises(ElfCheckError, match=str(copy)):
                check_floor([copy], glibc="2.17")


@pytest.mark.parametrize("name", TARGETS)
def test_every_seed_runs_through_the_target(name: str) -> None:
    seeds = files("corpus", name)
    assert seeds, f"tests/fuzz/corpus/{name} is empty: run tests/fuzz/make_python_seeds.py"
    for seed in seeds:
        with no_hang(str(seed)):
            target(name).one_input(seed.read_bytes())
