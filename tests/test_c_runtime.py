"""The C test suite of the runtime (tests/c), built with CMake against sdk/runtime and run here.

Every binary runs with EDGEKIT_DEVICES=2, once with the default coherence and once with
EDGEKIT_COHERENCE=strict (plus EDGEKIT_HEAP_SIZE=4M, which the default-configuration test checks).
A second build with -DEDGEKIT_SANITIZE=ON runs the same binaries under ASan + UBSan, and a third, with
-DEDGEKIT_TSAN=ON and clang, runs the threaded ones under ThreadSanitizer: the hammer's short form
(test_hammer.c, 2 s; `invoke hammer` is the long one) and the suites that share devices and runtimes
between threads. Any TSan report fails the test.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
C_TESTS_DIR = REPO_ROOT / "tests" / "c"
BINARIES = (
    "test_device",
    "test_memory",
    "test_allocator",
    "test_coherence",
    "test_concurrency",
    "test_model",
    "test_runtime",
    "test_kernels_generic",
    "test_kernels_generic_rt",
    "test_kernels_spatial",
    "test_kernels_quantized",
    "test_remote",
    "test_soak",
    "test_hammer",
)
JOBS = "2"
BUILD_TIMEOUT_S = 600
RUN_TIMEOUT_S = 120
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")

ENVIRONMENTS: dict[str, dict[str, str]] = {
    "default": {"EDGEKIT_DEVICES": "2"},
    "strict": {"EDGEKIT_DEVICES": "2", "EDGEKIT_COHERENCE": "strict", "EDGEKIT_HEAP_SIZE": "4M"},
}
# intercept_tls_get_addr=0: gcc 12's LeakSanitizer takes some dynamic TLS blocks (the dlopened XNNPACK
# provider's, touched by team threads) for glibc 2.19's layout and now and then crashes scanning them at
# exit (google/sanitizers#1322), the more often the more threads; no heap pointer lives in that TLS.
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:intercept_tls_get_addr=0",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}


def _run(
    cmd: list[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: int = BUILD_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# Under TSan: the binaries whose tests share devices, runtimes and launches between threads. The kernel
# tests are left out: their threads only split loops, and the runtime suites run those kernels too.
TSAN_BINARIES = (
    "test_hammer",
    "test_concurrency",
    "test_runtime",
    "test_remote",
    "test_allocator",
    "test_plugin",
)
TSAN_ENV = {"TSAN_OPTIONS": "halt_on_error=1 second_deadlock_stack=1"}


def _build(build_dir: Path, *options: str, targets: tuple[str, ...] = ()) -> Path:
    """Configure and build tests/c into build_dir; fail the requesting test with the tool output."""
    if shutil.which("cmake") is None:
        pytest.fail("cmake is not on PATH")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = _run(
        [
            "cmake",
            "-S",
            str(C_TESTS_DIR),
            "-B",
            str(build_dir),
            *generator,
            f"-DEDGEKIT_SOURCE_DIR={REPO_ROOT}",
            "-DCMAKE_BUILD_TYPE=Debug",
            *options,
        ]
    )
    if configure.returncode != 0:
        pytest.fail(f"cmake configure failed:\n{configure.stdout}\n{configure.stderr}")
    target_args = ["--target", *targets] if targets else []
    build = _run(["cmake", "--build", str(build_dir), "--parallel", JOBS, *target_args])
    if build.returncode != 0:
        pytest.fail(f"cmake build failed:\n{build.stdout}\n{build.stderr}")
    return build_dir


def _clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The current environment without EDGEKIT_* and EKT_* settings (they change what the tests do and
    expect), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEKIT_", "EKT_"))}
    env.update(extra)
    return env


def _run_binary(build_dir: Path, name: str, env: Mapping[str, str], prefix: tuple[str, ...] = ()) -> str:
    """Run one C test binary; fail unless it exits 0 with "N passed, 0 failed". Returns its stderr."""
    exe = build_dir / name
    assert exe.is_file(), f"{exe} was not built"
    proc = _run([*prefix, str(exe)], cwd=build_dir, env=_clean_env(env), timeout=RUN_TIMEOUT_S)
    output = f"--- {name} (exit code {proc.returncode}) stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}"
    assert proc.returncode == 0, output
    lines = proc.stdout.strip().splitlines()
    summary = SUMMARY.match(lines[-1]) if lines else None
    assert summary is not None, f"no 'N passed, M failed' summary line\n{output}"
    assert int(summary.group(2)) == 0 and int(summary.group(1)) > 0, output
    return proc.stderr


def _sanitizer_unavailable(tmp: Path) -> str | None:
    """Why the C compiler cannot link a sanitized program, or None when it can."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return "no C compiler found (CC, cc, gcc)"
    source = tmp / "hello.c"
    source.write_text('#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n', encoding="utf-8")
    proc = _run([compiler, "-fsanitize=address,undefined", str(source), "-o", str(tmp / "hello")])
    if proc.returncode != 0:
        return f"{compiler} cannot link with -fsanitize=address,undefined: {proc.stderr.strip()[:500]}"
    return None


def _tsan_unavailable(tmp: Path) -> str | None:
    """Why clang cannot link a ThreadSanitizer program here, or None when it can."""
    clang = shutil.which("clang")
    if clang is None:
        return "no clang on PATH (Debian: clang, libclang-rt-14-dev; quickstart.sh installs them)"
    source = tmp / "hello.c"
    source.write_text("int main(void) { return 0; }\n", encoding="utf-8")
    proc = _run([clang, "-fsanitize=thread", str(source), "-o", str(tmp / "hello")])
    if proc.returncode != 0:
        return f"clang cannot link with -fsanitize=thread: {proc.stderr.strip()[:500]}"
    return None


def _no_aslr() -> tuple[str, ...]:
    """setarch -R where it works: clang 14's TSan runtime aborts ("unexpected memory mapping") under the
    wider mmap randomisation of newer kernels; without ASLR it always finds its shadow ranges."""
    setarch = shutil.which("setarch")
    if setarch is None:
        return ()
    prefix = (setarch, platform.machine(), "-R")
    return prefix if _run([*prefix, "true"]).returncode == 0 else ()


@pytest.fixture(scope="session")
def c_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("ctests"))


@pytest.fixture(scope="session")
def c_build_sanitized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _sanitizer_unavailable(tmp_path_factory.mktemp("sanitizer-probe"))
    if reason is not None:
        pytest.skip(reason)
    return _build(tmp_path_factory.mktemp("ctests-sanitized"), "-DEDGEKIT_SANITIZE=ON")


@pytest.mark.parametrize("mode", sorted(ENVIRONMENTS))
@pytest.mark.parametrize("name", BINARIES)
def test_c_suite(c_build: Path, name: str, mode: str) -> None:
    _run_binary(c_build, name, ENVIRONMENTS[mode])


def test_c_device_single_default(c_build: Path) -> None:
    """Without EDGEKIT_DEVICES there is exactly one device."""
    _run_binary(c_build, "test_device", {})


@pytest.mark.parametrize("name", BINARIES)
def test_c_suite_sanitized(c_build_sanitized: Path, name: str) -> None:
    _run_binary(c_build_sanitized, name, {**ENVIRONMENTS["default"], **SANITIZER_ENV})


def test_c_coherence_sanitized_strict(c_build_sanitized: Path) -> None:
    _run_binary(c_build_sanitized, "test_coherence", {**ENVIRONMENTS["strict"], **SANITIZER_ENV})


@pytest.fixture(scope="session")
def c_build_tsan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _tsan_unavailable(tmp_path_factory.mktemp("tsan-probe"))
    if reason is not None:
        pytest.skip(reason)
    return _build(
        tmp_path_factory.mktemp("ctests-tsan"),
        "-DEDGEKIT_TSAN=ON",
        "-DCMAKE_C_COMPILER=clang",
        targets=TSAN_BINARIES,
    )


@pytest.mark.parametrize("name", TSAN_BINARIES)
def test_c_suite_tsan(c_build_tsan: Path, name: str) -> None:
    """The threaded C tests under ThreadSanitizer, with the default kernels (XNNPACK where the provider
    is built: its uninstrumented libXNNPACK computes inside tasks of our instrumented thread pool)."""
    stderr = _run_binary(c_build_tsan, name, {**ENVIRONMENTS["default"], **TSAN_ENV}, prefix=_no_aslr())
    assert "ThreadSanitizer" not in stderr, stderr


def test_c_hammer_tsan_portable(c_build_tsan: Path) -> None:
    """The hammer once more on the portable kernels alone, all of whose code TSan sees."""
    env = {**ENVIRONMENTS["default"], **TSAN_ENV, "EDGEKIT_KERNELS": "portable"}
    stderr = _run_binary(c_build_tsan, "test_hammer", env, prefix=_no_aslr())
    assert "ThreadSanitizer" not in stderr, stderr


def test_c_hammer_tsan_remote(c_build_tsan: Path) -> None:
    """The hammer on remote devices (an ek_server in the process): the client's reader and callback
    threads and the server's sessions under the same load."""
    env = {**ENVIRONMENTS["default"], **TSAN_ENV, "EKT_REMOTE": "1"}
    stderr = _run_binary(c_build_tsan, "test_hammer", env, prefix=_no_aslr())
    assert "ThreadSanitizer" not in stderr, stderr
