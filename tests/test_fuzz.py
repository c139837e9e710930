"""The fuzz targets (docs/hardening.md) in CI: each fuzzes for a short, fixed time from its saved
corpus and must end clean (no crash, leak, sanitizer report, timeout or uncaught exception), and every
input that once found a bug (tests/fuzz/regressions/TARGET) is run again. The long campaigns are
`invoke fuzz --target X --time N`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))

from fuzzing import TARGETS, build_c_targets, fuzz, run_inputs

CI_SECONDS = 15


@pytest.fixture(scope="session")
def c_targets() -> None:
    build_c_targets(progress=False)


def _needs(name: str, request: pytest.FixtureRequest) -> None:
    if not TARGETS[name].is_python:
        request.getfixturevalue("c_targets")


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz_target_runs_clean_on_its_saved_corpus(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    _needs(name, request)
    target = TARGETS[name]
    assert target.corpus.is_dir() and any(target.corpus.iterdir()), f"{name} has no saved corpus"
    # A fixed seed: CI replays the same mutations, so it fails on a change of the code, not on luck;
    # open-ended exploration is invoke fuzz's.
    result = fuzz(target, CI_SECONDS, tmp_path / "fuzz.log", work=tmp_path / "corpus", extra=["-seed=1"])
    print(result.line())
    assert not result.finding, f"{result.line()}\n{result.log.read_text()[-6000:]}"
    # It really ran: the saved corpus was loaded (coverage) and then fuzzed, well beyond its inputs.
    saved = len(list(target.corpus.iterdir()))
    assert result.coverage > 0 and result.execs > saved + 100, result.line()


# The C targets' regression inputs (tests/test_fuzz_python.py runs the Python targets' in-process).
REGRESSIONS = sorted(
    (name, path)
    for name, t in TARGETS.items()
    if not t.is_python and t.regressions.is_dir()
    for path in t.regressions.iterdir()
)


@pytest.mark.parametrize(("name", "path"), REGRESSIONS, ids=[f"{n}/{p.name}" for n, p in REGRESSIONS])
def test_fuzz_regression_input_is_handled(
    name: str, path: Path, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    _needs(name, request)
    result = run_inputs(TARGETS[name], [path], tmp_path / "run.log")
    assert not result.finding, f"{path}: {result.finding}\n{result.log.read_text()[-6000:]}"
