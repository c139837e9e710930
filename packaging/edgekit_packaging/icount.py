"""Guest instruction counts on the emulated board: a qemu TCG plugin (icount_plugin.c), built on demand.

``count_on_board(rootfs, argv)`` runs a program on the emulated board (proot + qemu-aarch64, as every
board command) with the plugin loaded into each qemu, and returns the aarch64 instructions the program
and everything it started executed. qemu timings say nothing about a real board; instruction counts
are exact and repeatable, so they compare engines on aarch64 (python -m edgekit_packaging.bench_board).

The plugin is compiled with the host C compiler (cc, else gcc) into $EDGEKIT_CACHE/icount/, named by a
hash of its source, so a changed source is rebuilt and an unchanged one never is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from toolchains.boards import cache_dir
from toolchains.rootfs import RootfsError, run_on_board

__all__ = [
    "BOARD_DIR",
    "MARK",
    "Counts",
    "IcountError",
    "build_plugin",
    "count_on_board",
    "fake_cpuinfo",
    "parse_counts",
]

SOURCE = Path(__file__).with_name("icount_plugin.c")
BOARD_DIR = "/run/edgekit-icount"  # where the plugin and the counts file are bound on the board
_PLUGIN_ON_BOARD = f"{BOARD_DIR}/icount.so"
_COUNTS_ON_BOARD = f"{BOARD_DIR}/out/counts"
# A guest's lseek(-1, MARK, 0) makes the plugin note the count so far (a mark); from Python:
# ``os.lseek(-1, MARK, 0)``, which raises OSError (EBADF) and does nothing else.
MARK = 0x4943504D41524B

# An ARM /proc/cpuinfo (a 4-core Cortex-A76-class CPU, as on a Raspberry Pi 5 or RK3588 board), bound
# over the board's /proc/cpuinfo. Under qemu-user the guest otherwise reads the host's x86 cpuinfo;
# onnxruntime's aarch64 CPU detection (cpuinfo) finds no ARM processor entry there and crashes at
# import (SIGSEGV). The counted programs run on an emulated Cortex-A76 too (QEMU_CPU), so the features
# the guest finds in the kernel's HWCAP agree with this file: qemu's default CPU ("max") also has SVE,
# which boards of this class lack and onnxruntime's MLAS picks from HWCAP (wider vectors: fewer
# instructions than any Cortex-A76 would run).
QEMU_CPU = "cortex-a76"
CPUINFO_CORE = """\
processor\t: {n}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

"""


class IcountError(RuntimeError):
    """The plugin cannot be built or loaded, or the counted program failed."""


def _compiler() -> str:
    for name in ("cc", "gcc"):
        found = shutil.which(name)
        if found:
            return found
    raise IcountError(
        "no host C compiler (cc or gcc) on PATH to build the qemu instruction-count plugin "
        "(apt-get install gcc)"
    )


def build_plugin(cache: Path | None = None) -> Path:
    """The plugin's .so in the cache, compiled now if its source changed since (or was never built)."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    folder = (cache or cache_dir()) / "icount"
    plugin = folder / f"icount-{digest}.so"
    if plugin.is_file():
        return plugin
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{plugin.name}.{os.getpid()}.partial"
    command = [_compiler(), "-std=c11", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra", "-fPIC", "-shared"]
    command += ["-fvisibility=hidden", "-pthread", "-o", str(partial), str(SOURCE)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise IcountError(
            f"building the qemu instruction-count plugin failed ({' '.join(command)}):\n"
            f"{(done.stdout + done.stderr).strip()}"
        )
    partial.replace(plugin)
    for old in folder.glob("icount-*.so"):  # earlier sources' builds
        if old != plugin:
            old.unlink(missing_ok=True)
    return plugin


def fake_cpuinfo(path: Path, cores: int = 4) -> Path:
    """Write the ARM /proc/cpuinfo (see CPUINFO_CORE) to `path`."""
    path.write_text("".join(CPUINFO_CORE.format(n=n) for n in range(cores)))
    return path


@dataclass(frozen=True)
class Counts:
    """What the plugin wrote: ``total`` instructions of the program and all it started, and ``marks``,
    each the count so far of the process that made it (in the order they were made)."""

    total: int
    marks: tuple[int, ...]


def parse_counts(text: str) -> Counts:
    """The plugin's lines: '<pid> <instructions>' (one per process, and per exec) summed into the
    total, '<pid> mark <instructions so far>' into the marks."""
    total = 0
    marks: list[int] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and all(word.isdigit() for word in words):
            total += int(words[1])
        elif len(words) == 3 and words[1] == "mark" and words[0].isdigit() and words[2].isdigit():
            marks.append(int(words[2]))
        else:
            raise IcountError(f"unexpected line in the plugin's counts: {line!r}")
    return Counts(total, tuple(marks))


def count_on_board(
    rootfs: Path,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    binds: Sequence[tuple[str | Path, str]] = (),
    plugin_args: Sequence[str] = (),
    timeout: float | None = 600,
    cwd: str = "/",
) -> tuple[Counts, str]:
    """Run `argv` on the board under the plugin: (its counts, its stdout).

    IcountError when it exits non-zero (with its output's tail), when qemu refuses the plugin, or when
    no count was written. `plugin_args` replace the plugin's arguments (for testing its refusal).
    """
    plugin = build_plugin()
    with tempfile.TemporaryDirectory(prefix="edgekit-icount-") as tmp:
        out = Path(tmp)
        args = list(plugin_args) if plugin_args else [f"outfile={_COUNTS_ON_BOARD}"]
        qemu_args = ["-cpu", QEMU_CPU, "-plugin", ",".join([_PLUGIN_ON_BOARD, *args])]
        all_binds = [(plugin, _PLUGIN_ON_BOARD), (out, f"{BOARD_DIR}/out"), *binds]
        try:
            done = run_on_board(
                rootfs,
                argv,
                env=env,
                binds=all_binds,
                runner="proot",
                qemu_args=qemu_args,
                timeout=timeout,
                cwd=cwd,
            )
        except subprocess.TimeoutExpired:
            raise IcountError(f"{' '.join(argv)}: timed out after {timeout}s on the board") from None
        except (OSError, RootfsError) as exc:
            raise IcountError(f"cannot run {' '.join(argv)} on the emulated board: {exc}") from None
        stdout = done.stdout.decode(errors="replace")
        stderr = done.stderr.decode(errors="replace")
        if "Could not load plugin" in stderr or "icount plugin:" in stderr:
            said = "\n".join(line for line in stderr.splitlines() if "plugin" in line)
            raise IcountError(f"qemu could not load the instruction-count plugin {plugin}:\n{said}")
        if "unknown option" in stderr and "plugin" in stderr:
            raise IcountError(
                f"this qemu-aarch64 cannot load TCG plugins (built without them): {stderr.strip()[-500:]}"
            )
        if done.returncode != 0:
            raise IcountError(
                f"{' '.join(argv)} failed on the board (exit {done.returncode}):\n"
                f"{stdout[-2000:]}{stderr[-3000:]}"
            )
        counts = out / "counts"
        if not counts.is_file():
            raise IcountError(f"the plugin wrote no count for {' '.join(argv)} (qemu: {stderr[-1000:]})")
        return parse_counts(counts.read_text()), stdout
