"""The runtime and the edge app compile warning-free (-Wall -Wextra -Werror, C11) with the host gcc and
with Debian's aarch64 cross compiler, at -O0, -O2 and -O3: -O3 is the wheel's Release level, and
-Wmaybe-uninitialized depends on how far gcc inlines. (zig cc builds both with -Werror in the glibc 2.17
cross-build, tests/test_crossbuild.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "sdk" / "runtime"
SOURCES = sorted((RUNTIME / "src").glob("*.c")) + sorted((ROOT / "edge_app" / "src").glob("*.c"))
SOURCES += sorted((ROOT / "sdk" / "plugins").rglob("*.c"))  # the example plugin op library
COMPILERS = ["gcc", "aarch64-linux-gnu-gcc"]


def test_runtime_sources_found() -> None:
    assert len(SOURCES) >= 8, SOURCES
    assert ROOT / "edge_app" / "src" / "main.c" in SOURCES


@pytest.mark.parametrize("opt", ["-O0", "-O2", "-O3"])
@pytest.mark.parametrize("compiler", COMPILERS)
def test_runtime_compiles_warning_free(compiler: str, opt: str, tmp_path: Path) -> None:
    if shutil.which(compiler) is None:
        # quickstart.sh installs both; on CI a missing compiler is a broken setup, not a reason to skip.
        if os.environ.get("CI"):
            pytest.fail(f"{compiler} is not installed (quickstart.sh should have installed it)")
        pytest.skip(f"{compiler} is not installed (./quickstart.sh test installs it)")
    for source in SOURCES:
        result = subprocess.run(
            [compiler, "-std=c11", opt, "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-fPIC",
             "-I", str(RUNTIME / "include"), "-c", str(source), "-o", str(tmp_path / (source.stem + ".o"))],
            capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, f"{compiler} {opt} {source.name}:\n{result.stderr}"
        assert result.stderr == "", f"{compiler} {opt} {source.name} printed:\n{result.stderr}"
