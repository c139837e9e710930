"""Conan 2 profiles for a toolchain + board, and running conan with no remote.

The host profile says what the binaries are for (``arch=armv8``, the compilers through
``tools.build:compiler_executables``, the sysroot, the board's CPU flags); conan's CMakeToolchain
generator turns it into conan_toolchain.cmake, which drives the CMake build. The profiles are
written into the build folder, so ``conan install -pr:h build/<target>/conan/host.profile`` can be
rerun by hand. ConanCenter is unreachable from our build hosts: conan runs with ``--no-remote`` and
its own CONAN_HOME inside build/, so the user's conan setup is left alone.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import stat
import subprocess
import sys
from pathlib import Path

from toolchains.boards import Board
from toolchains.detect import Toolchain

CONAN_ARCH = {"aarch64": "armv8", "x86_64": "x86_64"}


def write_wrappers(toolchain: Toolchain, folder: Path) -> dict[str, str]:
    """One executable per tool (cc, c++, ar, ranlib): CMake takes a compiler path, not a command line.

    A tool that already is a single executable is used as it is; others (zig's ``python -m ziglang
    cc -target ...``) get a small shell script that runs the command.
    """
    tools = {"cc": toolchain.cc, "c++": toolchain.cxx, "ar": toolchain.ar, "ranlib": toolchain.ranlib}
    paths = {}
    folder.mkdir(parents=True, exist_ok=True)
    for name, argv in tools.items():
        if len(argv) == 1:
            paths[name] = argv[0]
            continue
        script = folder / name
        script.write_text(f'#!/bin/sh\nexec {shlex.join(argv)} "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        paths[name] = str(script)
    return paths


def host_profile(toolchain: Toolchain, board: Board, tools: dict[str, str]) -> str:
    compilers = {"c": tools["cc"], "cpp": tools["c++"]}
    # The archiver is not a compiler for conan: hand it to CMake directly (CMake would otherwise take
    # the build machine's ar for a zig build).
    cmake_vars = {"CMAKE_AR": tools["ar"], "CMAKE_RANLIB": tools["ranlib"]}
    lines = [
        f"# EdgeKit host profile: {board.name} ({board.arch}, glibc >= {board.glibc}), {toolchain.label}",
        "[settings]",
        "os=Linux",
        f"arch={CONAN_ARCH[board.arch]}",
        f"compiler={toolchain.compiler}",
        f"compiler.version={toolchain.compiler_version}",
        "compiler.libcxx=libstdc++11",
        "build_type=Release",
        "[conf]",
        f"tools.build:compiler_executables={json.dumps(compilers)}",
        f"tools.cmake.cmaketoolchain:extra_variables={json.dumps(cmake_vars)}",
        "tools.cmake.cmaketoolchain:generator=Ninja",
    ]
    cpu_flags = toolchain.cpu_flags(board.march, board.mcpu)
    if cpu_flags:
        lines.append(f"tools.build:cflags={json.dumps(cpu_flags)}")
    if toolchain.sysroot is not None:
        lines.append(f"tools.build:sysroot={toolchain.sysroot}")
    return "\n".join(lines) + "\n"


def build_profile() -> str:
    """The machine conan runs on. Nothing is built for it (the recipe has no tool requirements)."""
    return "\n".join(
        [
            "[settings]",
            "os=Linux",
            f"arch={CONAN_ARCH.get(platform.machine(), platform.machine())}",
            "compiler=gcc",
            "compiler.version=12",
            "compiler.libcxx=libstdc++11",
            "build_type=Release",
            "",
        ]
    )


def conan_install(recipe: Path, host: Path, build: Path, out: Path, conan_home: Path) -> Path:
    """conan install with no remote; returns the folder holding conan_toolchain.cmake."""
    command = [
        str(Path(sys.executable).parent / "conan"),
        "install",
        str(recipe),
        f"--profile:host={host}",
        f"--profile:build={build}",
        f"--output-folder={out}",
        "--no-remote",
        "--build=missing",
    ]
    conan_home.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        command, env={**os.environ, "CONAN_HOME": str(conan_home)}, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"conan install failed:\n{result.stdout}{result.stderr}".rstrip())
    found = sorted(out.rglob("conan_toolchain.cmake"))
    if not found:
        raise RuntimeError(f"conan install wrote no conan_toolchain.cmake under {out}")
    return found[0].parent
