"""Packaging of libedgekit: the Conan 2 recipe (packaging/conan) and the plain CMake install of sdk/runtime.

Both tests build the real runtime and a tiny C consumer (packaging/conan/test_package), run the consumer and
check that it reports the version declared in sdk/runtime/CMakeLists.txt. Conan runs with a throw-away
CONAN_HOME and no remote at all: the recipe must build fully offline.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DIR = REPO_ROOT / "sdk" / "runtime"
RECIPE_DIR = REPO_ROOT / "packaging" / "conan"
TEST_PACKAGE_DIR = RECIPE_DIR / "test_package"
CONSUMER_EXE = "edgekit_test_package"
JOBS = "2"
TIMEOUT_S = 900
CONAN_MAJOR = 2


def _runtime_version() -> str:
    text = (RUNTIME_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    match = re.search(r"project\s*\(\s*EdgeKitRuntime\b[^)]*?\bVERSION\s+([0-9]+(?:\.[0-9]+)*)", text)
    assert match is not None, "sdk/runtime/CMakeLists.txt declares no project(EdgeKitRuntime VERSION ...)"
    return match.group(1)


def _conan_command() -> list[str] | None:
    """The conan CLI: next to this Python (its virtualenv), else on PATH, else the importable module."""
    beside = Path(sys.executable).parent / "conan"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    on_path = shutil.which("conan")
    if on_path is not None:
        return [on_path]
    if importlib.util.find_spec("conans") is not None:
        return [sys.executable, "-m", "conans.conan"]
    return None


def _generator_args() -> list[str]:
    return ["-G", "Ninja"] if shutil.which("ninja") else []


def _run(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """Runs cmd, returns its merged stdout/stderr; fails the test with that output if it exits non-zero."""
    try:
        proc = subprocess.run(
            list(cmd),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"timed out after {TIMEOUT_S}s: {' '.join(cmd)}\n{exc.output or ''}")
    if proc.returncode != 0:
        pytest.fail(f"exit status {proc.returncode}: {' '.join(cmd)}\n{proc.stdout}")
    return proc.stdout


@pytest.fixture(scope="module")
def runtime_version() -> str:
    return _runtime_version()


@pytest.fixture(scope="module")
def cmake() -> str:
    found = shutil.which("cmake")
    if found is None:
        pytest.skip("cmake is not on PATH")
    return found


@pytest.fixture(scope="module")
def conan() -> list[str]:
    cmd = _conan_command()
    if cmd is None:
        pytest.skip(
            "conan is not installed (not on PATH, not next to the Python running pytest, not importable): "
            "pip install 'conan>=2' to run the packaging test"
        )
    out = _run([*cmd, "--version"])
    match = re.search(r"Conan version (\d+)\.", out)
    if match is None or int(match.group(1)) < CONAN_MAJOR:
        pytest.skip(f"the recipe needs Conan 2, found: {out.strip()}")
    return cmd


def test_conan_create_offline(conan: list[str], cmake: str, runtime_version: str, tmp_path: Path) -> None:
    """`conan create` builds, packages and test_package-runs libedgekit with no remote configured."""
    home = tmp_path / "conan-home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONAN_")}
    env["CONAN_HOME"] = str(home)

    # A fresh home starts with ConanCenter configured; drop every remote so nothing can be downloaded.
    _run([*conan, "remote", "remove", "*"], env=env)
    assert _run([*conan, "remote", "list"], env=env).strip() == ""
    _run([*conan, "profile", "detect"], env=env)

    confs = [
        "-c",
        f"tools.build:jobs={JOBS}",
        # Build test_package under tmp_path and write no CMakeUserPresets.json: keep the source tree clean.
        "-c",
        f"tools.cmake.cmake_layout:test_folder={tmp_path / 'test_package-build'}",
        "-c",
        "tools.cmake.cmaketoolchain:user_presets=",
    ]
    if shutil.which("ninja"):
        confs += ["-c", "tools.cmake.cmaketoolchain:generator=Ninja"]
    out = _run(
        [*conan, "create", str(RECIPE_DIR), "--build=missing", "--no-remote", *confs],
        env=env,
        cwd=tmp_path,
    )

    assert f"edgekit/{runtime_version}" in out, out
    # test_package found the package through the CMakeDeps files made from package_info (not through the
    # runtime's own installed EdgeKitConfig.cmake) ...
    assert "Conan: Target declared 'EdgeKit::edgekit'" in out, out
    # ... and ran: it prints the runtime's version and device count and exits 0 only if both calls succeed.
    assert f"edgekit version: {runtime_version}" in out, out
    assert re.search(r"edgekit devices: \d+", out), out


def test_cmake_install_consumer(cmake: str, runtime_version: str, tmp_path: Path) -> None:
    """A plain `cmake --install` of sdk/runtime works with find_package(EdgeKit) + EdgeKit::edgekit."""
    build = tmp_path / "runtime-build"
    prefix = tmp_path / "prefix"
    consumer_build = tmp_path / "consumer-build"
    generator = _generator_args()

    _run([cmake, "-S", str(RUNTIME_DIR), "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release"])
    _run([cmake, "--build", str(build), "--parallel", JOBS])
    _run([cmake, "--install", str(build), "--prefix", str(prefix)])

    assert (prefix / "include" / "edgekit" / "edgekit.h").is_file()
    configs = sorted(prefix.glob("lib*/cmake/EdgeKit/EdgeKitConfig.cmake"))
    assert configs, f"no EdgeKitConfig.cmake installed under {prefix}"
    libdirs = sorted({lib.parent for lib in prefix.glob("lib*/libedgekit.so*")})
    assert libdirs, f"no libedgekit.so installed under {prefix}"

    _run(
        [
            cmake,
            "-S",
            str(TEST_PACKAGE_DIR),
            "-B",
            str(consumer_build),
            *generator,
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_PREFIX_PATH={prefix}",
            "-DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF",
        ]
    )
    cache = (consumer_build / "CMakeCache.txt").read_text(encoding="utf-8")
    assert f"EdgeKit_DIR:PATH={configs[0].parent}" in cache, "find_package(EdgeKit) did not use the install"
    _run([cmake, "--build", str(consumer_build), "--parallel", JOBS])

    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [*(str(d) for d in libdirs), *filter(None, [os.environ.get("LD_LIBRARY_PATH")])]
    )
    out = _run([str(consumer_build / CONSUMER_EXE)], env=env)
    assert f"edgekit version: {runtime_version}" in out, out
    assert re.search(r"edgekit devices: \d+", out), out
