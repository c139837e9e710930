"""Build and run EdgeKit's fuzz targets (docs/hardening.md): ``invoke fuzz`` and tests/test_fuzz.py.

The C targets are libFuzzer binaries built by clang under ASan + UBSan (tests/fuzz/CMakeLists.txt); the
Python ones are atheris scripts. Both take libFuzzer's flags and print its statistics, which this
module reads back: executions, coverage (edges for C, edges of the instrumented Python and native code
for atheris), corpus size. Each target has a saved corpus (tests/fuzz/corpus/TARGET, committed: the
seeds and what earlier campaigns found, minimized) and a work corpus (build/fuzz/corpus/TARGET) that a
run adds its new inputs to; a crash, leak, timeout or out-of-memory input is written to
build/fuzz/crashes/TARGET/ and, once fixed, kept in tests/fuzz/regressions/TARGET/ (run by the tests).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "fuzz"
BUILD = ROOT / "build" / "fuzz"


@dataclass(frozen=True)
class Target:
    name: str
    what: str
    program: str  # the C binary's name in BUILD, or the Python script's in HERE
    max_len: int  # bytes: the largest input the fuzzer makes
    timeout_s: int  # one input running longer is a finding
    rss_limit_mb: int

    @property
    def is_python(self) -> bool:
        return self.program.endswith(".py")

    @property
    def corpus(self) -> Path:
        return HERE / "corpus" / self.name

    @property
    def regressions(self) -> Path:
        return HERE / "regressions" / self.name

    @property
    def work_corpus(self) -> Path:
        return BUILD / "corpus" / self.name

    @property
    def crashes(self) -> Path:
        return BUILD / "crashes" / self.name

    def command(self) -> list[str]:
        if self.is_python:
            return [sys.executable, str(HERE / self.program)]
        return [str(BUILD / self.program)]


TARGETS = {
    t.name: t
    for t in (
        Target(
            "ekm",
            "the .ekm loader, then one launch of each network that loaded (C)",
            "fuzz_ekm",
            131072,
            25,
            2048,
        ),
        Target(
            "remote_session",
            "a whole remote_server session from raw client bytes, unpaired or paired (C)",
            "fuzz_remote_session",
            131072,
            25,
            2048,
        ),
        Target(
            "remote_frames",
            "remote_server's request handling: well-formed frames of fuzzed types and payloads (C)",
            "fuzz_remote_frames",
            131072,
            25,
            2048,
        ),
        Target(
            "plugin_elf",
            "the ELF check of a plugin library before dlopen: header, program headers, segments (C)",
            "fuzz_plugin_elf",
            65536,
            25,
            2048,
        ),
        Target(
            "app_options",
            "edgekit-app's command line (NUL-separated words) and CPU lists (C)",
            "fuzz_app_options",
            4096,
            25,
            2048,
        ),
        Target(
            "onnx_import",
            "the model compiler on ONNX bytes: load, import, passes, lowering, writing .ekm (Python)",
            "fuzz_onnx_import.py",
            65536,
            25,
            4096,
        ),
        Target(
            "elfcheck",
            "the glibc-floor ELF check (toolchains/elfcheck.py) on ELF bytes (Python, atheris)",
            "fuzz_elfcheck.py",
            65536,
            25,
            4096,
        ),
    )
}


class FuzzError(Exception):
    """A fuzz target could not be built or run (not a finding: those are in FuzzResult.finding)."""


@dataclass
class FuzzResult:
    target: str
    execs: int
    seconds: float
    coverage: int  # libFuzzer's "cov:": edges (C) or Python/native edges (atheris) reached
    features: int  # libFuzzer's "ft:"
    corpus_units: int
    finding: str  # "" when the run ended cleanly, else what libFuzzer reported
    artifact: Path | None
    log: Path

    def line(self) -> str:
        rate = self.execs / self.seconds if self.seconds > 0 else 0.0
        status = f"FINDING: {self.finding} ({self.artifact})" if self.finding else "clean"
        return (
            f"{self.target:<15} {self.execs:>11,} execs {self.seconds:>8.0f} s {rate:>8,.0f}/s "
            f"cov {self.coverage:>6} ft {self.features:>6} corpus {self.corpus_units:>5}  {status}"
        )


def build_c_targets(progress: bool = True) -> None:
    """Configure and build the C targets with clang (a rebuild is quick when nothing changed)."""
    clang = shutil.which("clang")
    if clang is None:
        raise FuzzError(
            "the C fuzz targets need clang and its libFuzzer/sanitizer runtimes: "
            "apt install clang libclang-rt-14-dev (./quickstart.sh installs them)"
        )
    if not (BUILD / "CMakeCache.txt").is_file():
        if progress:
            print(
                f"==> configuring the fuzz targets in {BUILD} (clang, ASan + UBSan + libFuzzer)", flush=True
            )
        _run_build(["cmake", "-S", str(HERE), "-B", str(BUILD), f"-DCMAKE_C_COMPILER={clang}"])
    if progress:
        print("==> building the fuzz targets (the instrumented runtime, then each target)", flush=True)
    _run_build(["cmake", "--build", str(BUILD), "-j", str(max(1, len(os.sched_getaffinity(0))))])


def _run_build(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise FuzzError(f"{' '.join(argv)} failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")


_FINAL = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_PROGRESS = re.compile(r"#(\d+)\s+\S+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
# The first marker found names the finding: atheris prints its exception, then libFuzzer a deadly signal.
_FINDINGS = (
    ("Uncaught Python exception", "an uncaught Python exception"),
    ("ERROR: AddressSanitizer", "AddressSanitizer"),
    ("ERROR: LeakSanitizer", "a leak"),
    ("runtime error:", "UndefinedBehaviorSanitizer"),
    ("ERROR: libFuzzer: timeout", "a timeout"),
    ("ERROR: libFuzzer: out-of-memory", "out of memory"),
    ("ERROR: libFuzzer: deadly signal", "a crash (signal)"),
    ("ERROR: libFuzzer: fuzz target exited", "the target exited"),
)


def fuzz(
    target: Target, seconds: int, log: Path, work: Path | None = None, extra: Sequence[str] = ()
) -> FuzzResult:
    """Fuzz `target` for `seconds` from its saved corpus and its work corpus (`work`, default
    build/fuzz/corpus/TARGET), where new inputs go. The output goes to `log`; the statistics are read
    back from it."""
    work = work or target.work_corpus
    for path in (work, target.crashes, log.parent):
        path.mkdir(parents=True, exist_ok=True)
    flags = [
        f"-max_total_time={seconds}",
        f"-max_len={target.max_len}",
        f"-timeout={target.timeout_s}",
        f"-rss_limit_mb={target.rss_limit_mb}",
        "-print_final_stats=1",
        f"-artifact_prefix={target.crashes}/",
        *extra,
    ]
    corpora = [str(work)] + ([str(target.corpus)] if target.corpus.is_dir() else [])
    return _run(target, [*target.command(), *flags, *corpora], log, limit_s=seconds + 300)


def run_inputs(target: Target, inputs: Sequence[Path], log: Path) -> FuzzResult:
    """Run the target once on each of `inputs` (files), as libFuzzer does with file arguments."""
    log.parent.mkdir(parents=True, exist_ok=True)
    flags = [f"-timeout={target.timeout_s}", f"-rss_limit_mb={target.rss_limit_mb}", "-print_final_stats=1"]
    limit_s = 60 + len(inputs) * target.timeout_s
    return _run(target, [*target.command(), *flags, *[str(p) for p in inputs]], log, limit_s)


def _run(target: Target, argv: list[str], log: Path, limit_s: int) -> FuzzResult:
    """Run one libFuzzer process (no -fork or -jobs: its statistics are read from its own lines) and
    read its findings from its exit status, its output and new files among the target's crashes."""
    if not target.is_python and not Path(argv[0]).is_file():
        raise FuzzError(f"{argv[0]} is not built: invoke fuzz builds it (or tests/fuzz/fuzzing.py --build)")
    env = dict(os.environ)
    # Leaks are findings; UBSan stops at the first report, with a stack.
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:allocator_may_return_null=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    target.crashes.mkdir(parents=True, exist_ok=True)
    before = set(target.crashes.iterdir())
    started = time.monotonic()
    with log.open("w") as out:
        try:
            done = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=str(BUILD.parent), env=env, timeout=limit_s
            )
            status = done.returncode
        except subprocess.TimeoutExpired:
            status = -1
            out.write(
                f"\nfuzzing.py: the fuzzer ran past {limit_s} s and was killed (a hang outside one input)\n"
            )
    seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    execs = int(m.group(1)) if (m := _FINAL.search(text)) else 0
    cov = ft = units = 0
    for m in _PROGRESS.finditer(text):
        execs = max(execs, int(m.group(1)))
        cov, ft, units = int(m.group(2)), int(m.group(3)), int(m.group(4))
    new_files = sorted(set(target.crashes.iterdir()) - before)
    finding = ""
    if status != 0 or new_files:
        finding = next((what for marker, what in _FINDINGS if marker in text), f"exit status {status}")
    artifact = Path(m.group(1)) if (m := _ARTIFACT.search(text)) else (new_files[0] if new_files else None)
    return FuzzResult(target.name, execs, seconds, cov, ft, units, finding, artifact, log)


def merge_into_saved(target: Target, log: Path) -> int:
    """Minimize the saved corpus and the work corpus into the saved corpus (libFuzzer -merge=1: the
    fewest inputs that keep every feature). Returns the saved corpus's new number of files."""
    merged = BUILD / "merge" / target.name
    shutil.rmtree(merged, ignore_errors=True)
    merged.mkdir(parents=True)
    sources = [str(p) for p in (target.corpus, target.work_corpus) if p.is_dir()]
    argv = [*target.command(), "-merge=1", f"-max_len={target.max_len}", f"-timeout={target.timeout_s}"]
    with log.open("w") as out:
        done = subprocess.run(
            [*argv, str(merged), *sources],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(BUILD.parent),
            check=False,
        )
    if done.returncode != 0 or not any(merged.iterdir()):
        raise FuzzError(f"merging the {target.name} corpus failed (see {log}); the saved corpus is unchanged")
    shutil.rmtree(target.corpus, ignore_errors=True)
    shutil.copytree(merged, target.corpus)
    return len(list(target.corpus.iterdir()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="all", help=f"one of {', '.join(TARGETS)}, or all (default)")
    parser.add_argument("--time", type=int, default=60, help="seconds per target (default 60)")
    parser.add_argument("--build", action="store_true", help="only build the C targets")
    parser.add_argument(
        "--save",
        action="store_true",
        help="after fuzzing, minimize what was found into tests/fuzz/corpus/TARGET",
    )
    args = parser.parse_args(argv)
    names = list(TARGETS) if args.target == "all" else [args.target]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"--target {unknown[0]!r}: the targets are {', '.join(TARGETS)} (or all)")
    if args.time < 1:
        parser.error("--time must be at least 1 second")
    try:
        if args.build or any(not TARGETS[n].is_python for n in names):
            build_c_targets()
        if args.build:
            return 0
        results = []
        for name in names:
            target = TARGETS[name]
            print(f"==> fuzzing {name} for {args.time} s: {target.what}", flush=True)
            log = BUILD / "logs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
            result = fuzz(target, args.time, log)
            print(f"    {result.line()}\n    log: {log}", flush=True)
            results.append(result)
            if args.save and not result.finding:
                count = merge_into_saved(target, log.with_suffix(".merge.log"))
                print(f"    saved corpus: {count} inputs in {target.corpus}", flush=True)
    except FuzzError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(["", "summary:", *(r.line() for r in results)]))
    return 1 if any(r.finding for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
