"""EdgeKit's developer tasks, run with pyinvoke: ``invoke --list``, ``invoke --help TASK``.

Each task drives a tool that owns the logic: CMake/scikit-build-core build, pytest tests, ruff and
mypy lint, ``edgekit.bench`` measures. ``./quickstart.sh TASK`` runs a task after setting up.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from invoke.context import Context
from invoke.tasks import task

ROOT = Path(__file__).resolve().parent
PYTHON = sys.executable  # the interpreter invoke runs in: .venv's when started by quickstart.sh


def _say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m", flush=True)


@task
def build(c: Context) -> None:
    """Build libedgekit + edgekit._core for this host and install the edgekit package.

    Installs into the Python running invoke (.venv when started by quickstart.sh). Incremental:
    CMake keeps its tree in build/py-*.
    """
    _say("Building libedgekit + edgekit._core (CMake via scikit-build-core) and installing edgekit")
    with c.cd(str(ROOT)):
        c.run(f"{PYTHON} -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps .")
    c.run(f"{PYTHON} -c \"import edgekit; print('edgekit', edgekit.__version__, 'installed')\"")


@task
def lint(c: Context) -> None:
    """Check formatting and lint with ruff, and types with mypy (settings: pyproject.toml)."""
    with c.cd(str(ROOT)):
        _say("ruff check")
        c.run(f"{PYTHON} -m ruff check .")
        _say("ruff format --check")
        c.run(f"{PYTHON} -m ruff format --check .")
        _say("mypy")
        c.run(f"{PYTHON} -m mypy")


@task(
    help={
        "k": "only tests matching this pytest -k expression",
        "no_lint": "skip ruff and mypy",
    }
)
def test(c: Context, k: str = "", no_lint: bool = False) -> None:
    """Build, lint, and run the whole test suite with pytest (what CI runs).

    The suite covers the C runtime (also under ASan/UBSan), warning-free builds with gcc and the
    aarch64 cross gcc, the conan package, the Python API, the docs' examples.
    """
    build(c)
    if not no_lint:
        lint(c)
    _say("pytest")
    selection = f"-k '{k}'" if k else ""
    with c.cd(str(ROOT)):
        c.run(f"{PYTHON} -m pytest {selection}", pty=False)


@task(help={"quick": "smaller sizes and fewer repeats (a smoke run)"})
def bench(c: Context, quick: bool = False) -> None:
    """Build, then benchmark memory bandwidth and call overhead against numpy in one run.

    Runs python -m edgekit.bench: s2d/d2s/d2d/flush bandwidth against np.copyto of the same size,
    and a small DeviceMemory.write against a no-op Cython call.
    """
    build(c)
    _say("edgekit.bench")
    c.run(f"{PYTHON} -m edgekit.bench{' --quick' if quick else ''}")


@task
def demo(c: Context) -> None:
    """The main job: build EdgeKit and run the memory demo on this host.

    The demo (python -m edgekit.examples.memory_demo) shows zero-copy mapping, device copies, and the
    strict-coherence checker catching a missed flush. It exits non-zero if a result is wrong.
    """
    build(c)
    _say("edgekit memory demo")
    c.run(f"{PYTHON} -m edgekit.examples.memory_demo")


@task
def clean(c: Context) -> None:
    """Remove build/ and dist/ (the virtualenv .venv stays)."""
    for name in ("build", "dist"):
        path = ROOT / name
        if path.exists():
            _say(f"removing {path}")
            shutil.rmtree(path)
