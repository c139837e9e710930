"""EdgeKit's developer tasks, run with pyinvoke: ``invoke --list``, ``invoke --help TASK``.

Each task drives code that owns the logic: toolchains/ (toolchains, board profiles, cross-build, the
emulated board), packaging/edgekit_packaging (packages, devices, flashing), CMake/scikit-build-core,
pytest, ruff/mypy, edgekit.bench. ``./quickstart.sh TASK`` runs a task after setting up.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

ROOT = Path(__file__).resolve().parent
PYTHON = sys.executable  # the interpreter invoke runs in: .venv's when started by quickstart.sh
# packaging/ holds the edgekit_packaging package (a folder named 'packaging' must not shadow PyPI's).
sys.path.insert(0, str(ROOT / "packaging"))

from edgekit_packaging import devices  # noqa: E402
from edgekit_packaging.bundle import PackageError  # noqa: E402
from edgekit_packaging.package import make_packages, parse_formats  # noqa: E402
from edgekit_packaging.ssh import DEFAULT_PREFIX  # noqa: E402
from toolchains import boards, detect  # noqa: E402
from toolchains.crossbuild import BuildError, BuildResult, board_rootfs, cross_build  # noqa: E402
from toolchains.rootfs import RootfsError  # noqa: E402
from toolchains.steps import Steps, detail, say  # noqa: E402

# The errors a task reports as one clear message (exit 1), not a traceback.
USER_ERRORS = (
    boards.BoardError,
    detect.ToolchainError,
    BuildError,
    PackageError,
    devices.DeviceError,
    RootfsError,
)


@contextmanager
def _clear_errors() -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as exc:
        raise Exit(f"error: {exc}", code=1) from None


def _board_for(arch: str, board: str) -> boards.Board:
    if arch not in boards.ARCHES:
        raise Exit(f"error: --arch must be one of {', '.join(boards.ARCHES)}, not {arch!r}", code=2)
    profile = boards.load_board(board or boards.default_board(arch))
    if profile.arch != arch:
        raise boards.BoardError(
            f"board {profile.name} is {profile.arch}, not {arch}: pick a board with --board"
        )
    return profile


def _toolchain_for(profile: boards.Board, kind: str) -> detect.Toolchain:
    if kind:
        return detect.require_toolchain(kind, profile.arch, profile.glibc)
    chosen, skipped = detect.choose_toolchain(profile.arch, profile.glibc)
    for reason in skipped:
        detail(f"not {reason}")
    return chosen


def _cross_build(arch: str, board: str, toolchain: str, jobs: int) -> BuildResult:
    profile = _board_for(arch, board)
    chosen = _toolchain_for(profile, toolchain)
    say(f"Building EdgeKit for {profile.name} ({arch}, glibc >= {profile.glibc}) with {chosen.label}")
    steps = Steps(f"build {arch}-{profile.name}")
    try:
        result = cross_build(profile, chosen, steps=steps, ensure_rootfs=board_rootfs, jobs=jobs)
    finally:
        print(steps.summary(), flush=True)
    say(f"Built into {result.stage}")
    return result


# What the host package is built from: a change to any of these makes the next task rebuild it.
# edge_app/ too: the host package carries edgekit-app.
HOST_SOURCES = ("sdk", "edge_app", "CMakeLists.txt", "pyproject.toml")
# The fingerprint of the sources the package in this Python was last built from (build/: 'invoke clean'
# forgets it along with the build tree).
HOST_STAMP = ROOT / "build" / "host-package.stamp"


def _host_fingerprint() -> str:
    """A hash of every host source file (path and content) and of the Python it is installed into."""
    digest = hashlib.sha256(sys.prefix.encode() + b"\0")
    for top in HOST_SOURCES:
        base = ROOT / top
        files = [base] if base.is_file() else sorted(base.rglob("*"))
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _install_for_host(c: Context) -> None:
    """Build libedgekit, its XNNPACK provider and the Cython modules, and install them into this Python."""
    fingerprint = _host_fingerprint()
    say("Building libedgekit, its XNNPACK provider and the Cython modules (scikit-build-core) into .venv")
    with c.cd(str(ROOT)):
        c.run(f"{PYTHON} -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps .")
    c.run(f"{PYTHON} -c \"import edgekit; print('edgekit', edgekit.__version__, 'installed')\"")
    HOST_STAMP.parent.mkdir(exist_ok=True)
    HOST_STAMP.write_text(fingerprint + "\n")


def _ensure_host_package(c: Context) -> None:
    """Build and install EdgeKit into this Python unless it is installed from the sources as they are."""
    installed = importlib.util.find_spec("edgekit") is not None
    if installed and HOST_STAMP.is_file() and HOST_STAMP.read_text().strip() == _host_fingerprint():
        say("edgekit in this Python is up to date with sdk/ and edge_app/ (no rebuild)")
        return
    _install_for_host(c)
    importlib.invalidate_caches()  # a task that imports edgekit next finds the new install


BUILD_HELP = {
    "arch": "cross-build for this architecture: aarch64 or x86_64 (default: install into this Python)",
    "toolchain": "linaro, debian or zig (default: the first found whose glibc fits the board)",
    "board": "board profile from toolchains/boards (default: emu-debian12 for aarch64, host for x86_64)",
    "jobs": "parallel compile jobs (default: all cores)",
}


@task(help=BUILD_HELP)
def build(c: Context, arch: str = "", toolchain: str = "", board: str = "", jobs: int = 0) -> None:
    """Build EdgeKit: for this Python (no --arch), or cross-build for a board into build/<arch>-<board>/.

    A cross-build makes libedgekit, the edge programs and the Cython modules for the board's Python,
    then checks every ELF against the board's glibc floor. See invoke toolchains for what is found.
    """
    if not arch:
        if toolchain or board:
            raise Exit("error: --toolchain and --board need --arch (aarch64 or x86_64)", code=2)
        _install_for_host(c)
        return
    with _clear_errors():
        _cross_build(arch, board, toolchain, jobs)


@task(help={"arch": "target architecture (default aarch64)", "board": "board whose glibc zig targets"})
def toolchains(c: Context, arch: str = "aarch64", board: str = "") -> None:
    """List the toolchain kinds and board profiles, what was found of each, and why a kind is unusable."""
    with _clear_errors():
        profile = _board_for(arch, board)
        say(f"Toolchains for {arch} (zig targets glibc {profile.glibc}, from board {profile.name})")
        for kind, found, why in detect.describe_all(arch, profile.glibc):
            if found is None:
                print(f"  {kind:<7} unusable: {why}")
                continue
            print(f"  {kind:<7} {found.version}, links against glibc {found.glibc}")
            print(f"          compiler: {' '.join(found.cc)}")
            print(f"          sysroot:  {found.sysroot or '(the compiler default)'}")
        say("Board profiles (toolchains/boards)")
        for name in boards.board_names():
            b = boards.load_board(name)
            python = f"Python {b.python}" if b.python else "no Python"
            print(f"  {name:<18} {b.arch:<8} glibc >= {b.glibc:<5} {python:<12} {b.description}")


PACKAGE_HELP = {
    **{key: BUILD_HELP[key] for key in ("toolchain", "board", "jobs")},
    "arch": "aarch64 (default) or x86_64",
    "formats": "all (default) or a comma list of bundle, deb, wheel, image",
}


@task(help=PACKAGE_HELP)
def package(
    c: Context,
    arch: str = "aarch64",
    board: str = "",
    toolchain: str = "",
    formats: str = "all",
    jobs: int = 0,
) -> None:
    """Cross-build (incrementally), then make the packages in dist/: bundle, .deb, wheel, ext4 image."""
    with _clear_errors():
        chosen = parse_formats(formats)
        result = _cross_build(arch, board, toolchain, jobs)
        steps = Steps("package")
        try:
            made = make_packages(result.stage, ROOT / "dist", result.build_dir / "package", chosen, steps)
        finally:
            print(steps.summary(), flush=True)
        for kind, path in made.items():
            say(f"{kind:<6} {path.relative_to(ROOT)} ({path.stat().st_size / 1024:.0f} KiB)")


@task(
    help={
        "board": "board profile (default emu-debian12)",
        "force": "make it again (what was flashed is lost)",
    }
)
def device_create(c: Context, board: str = "emu-debian12", force: bool = False) -> None:
    """Make the emulated board: an arm64 Debian rootfs (mmdebstrap), cached in ~/.cache/edgekit."""
    with _clear_errors():
        profile = boards.load_board(board)
        steps = Steps(f"device.create {profile.name}")
        with steps("rootfs"):
            old = boards.rootfs_dir(profile)
            if force and old.exists():
                detail(f"removing {old}")
                shutil.rmtree(old)
            rootfs = board_rootfs(profile)
        with steps("check: uname -m and python3 on the board"):
            devices.check_emulated(profile, rootfs)
        print(steps.summary(), flush=True)
        say(f"The emulated board {profile.name} is ready: {rootfs}")


DEVICE_HELP = "emu (the emulated board) or ssh://user@host[:port][/prefix][,ssh://...] (default emu)"


FLASH_HELP = {
    "device": DEVICE_HELP,
    **{key: PACKAGE_HELP[key] for key in ("arch", "board", "toolchain", "jobs")},
    "no_python_link": "do not add EdgeKit to the board's python3 (no edgekit.pth)",
}


@task(help=FLASH_HELP)
def flash(
    c: Context,
    device: str = "emu",
    arch: str = "aarch64",
    board: str = "",
    toolchain: str = "",
    jobs: int = 0,
    no_python_link: bool = False,
) -> None:
    """Build and package (incrementally), then install the bundle on the device(s): emulated or over SSH.

    Each board gets $PREFIX/releases/<bundle> and $PREFIX/current pointing at it (PREFIX: the ssh
    URL's path, default /opt/edgekit); a board where it fails keeps its previous release.
    """
    with _clear_errors():
        devices.check_spec(device)  # before the build, not after it
        result = _cross_build(arch, board, toolchain, jobs)
        _flash_built(result, device, python_link=not no_python_link)


def _bundle(result: BuildResult) -> Path:
    """The bundle tarball of a build (made again only where the build changed)."""
    made = make_packages(
        result.stage, ROOT / "dist", result.build_dir / "package", ["bundle"], Steps("package")
    )
    return made["bundle"]


def _flash_built(
    result: BuildResult, device: str, *, python_link: bool = True, bundle: Path | None = None
) -> None:
    """Install the build's bundle (made now unless given) on the device(s)."""
    steps = Steps("flash")
    try:
        if bundle is None:
            with steps("bundle"):
                bundle = _bundle(result)
        with devices.open_fleet(device, result.info.board) as fleet:
            flashed = devices.flash(fleet, bundle, steps, python_link=python_link)
    finally:
        print(steps.summary(), flush=True)
    if not flashed:
        raise Exit("error: flashing failed on a board (see the table above)", code=1)


def _bundle_sums(bundle: Path) -> bytes:
    """The SHA256SUMS of a bundle tarball (every file of the release but install.sh)."""
    with tarfile.open(bundle) as tar:
        for member in tar.getmembers():
            if member.isfile() and PurePosixPath(member.name).parts[1:] == ("SHA256SUMS",):
                extracted = tar.extractfile(member)
                if extracted is not None:
                    return extracted.read()
    raise PackageError(f"{bundle} has no SHA256SUMS")


def _ensure_emu_current(c: Context, board: str) -> None:
    """Cross-build (incrementally) and flash the emulated board unless the release installed there is
    this build already (the same SHA256SUMS: every file the same)."""
    result = _cross_build("aarch64", board, "", 0)
    profile = _board_for("aarch64", board)
    installed = board_rootfs(profile) / DEFAULT_PREFIX.lstrip("/") / "current" / "SHA256SUMS"
    bundle = _bundle(result)
    if installed.is_file() and installed.read_bytes() == _bundle_sums(bundle):
        say("EdgeKit on the emulated board is the current build (no flash)")
        return
    say("flashing the current EdgeKit build to the emulated board")
    _flash_built(result, "emu", bundle=bundle)


BOARD_HELP = "the board profile the device runs (default emu-debian12)"


@task(
    name="run",
    help={"device": DEVICE_HELP, "command": "shell command to run on the board", "board": BOARD_HELP},
)
def run_on_device(
    c: Context, device: str = "emu", command: str = "python3 -m edgekit.examples.memory_demo", board: str = ""
) -> None:
    """Run a command on the device(s) (default: the memory demo), with the installed EdgeKit on PATH.

    The emulated board is flashed first when it has no EdgeKit yet; an SSH board without it is named
    (the command still runs: it may not need EdgeKit).
    """
    with _clear_errors():
        with devices.open_fleet(device, board or boards.default_board("aarch64")) as fleet:
            for name in devices.without_edgekit(fleet):
                if device == "emu":
                    say("EdgeKit is not installed on the emulated board yet: building and flashing it first")
                    flash(c, device="emu", board=board)
                else:
                    say(f"warning: EdgeKit is not installed on {name}: invoke flash --device {device}")
            if not devices.run(fleet, command):
                raise Exit("error: the command failed on a board", code=1)


SERVE_HELP = {
    "device": "emu (the emulated board, default) or one ssh://user@host[:port][/prefix]",
    "port": "the port remote_server listens on, on the board's loopback (default 9090; 0 picks a free one)",
    "board": BOARD_HELP,
    "idle_timeout": "seconds before a silent client is dropped (default: its 60)",
    "launch_timeout": "seconds before a running launch is reported as timed out (default: its 600)",
    "pair": "pair it: a key from this host (~/.config/edgekit/pairing/) goes to the board, sessions must "
    "hold it and are encrypted",
    "host": "the address to listen on (default 127.0.0.1; a network address such as 0.0.0.0 needs --pair)",
}


@task(help=SERVE_HELP)
def serve(
    c: Context,
    device: str = "emu",
    port: int = devices.SERVER_PORT,
    board: str = "",
    idle_timeout: int = 0,
    launch_timeout: int = 0,
    pair: bool = False,
    host: str = "",
) -> None:
    """Run remote_server on a board in the foreground, so Python on this host can use its devices.

    It prints the line to connect with once it listens: ek.Device("tcp://127.0.0.1:PORT") for the
    emulated board (it shares this machine's network), ek.Device("ssh://user@board") for an SSH board
    (remote_server listens on the board's loopback only: the host reaches it through SSH). Its log lines
    follow; Ctrl-C stops it (and the program on the board). The emulated board is flashed first when it
    has no EdgeKit yet; a board whose release has no remote_server must be flashed (it says so), as must
    one whose port is taken (use --port). With --pair it is paired: a key made on this host (kept in
    ~/.config/edgekit/pairing/, owner-only) is put on the board, and sessions must hold it and are
    encrypted; then --host may name a network address (e.g. 0.0.0.0) to listen on. See
    docs/remote-protocol.md.
    """
    for name, value in (("--idle-timeout", idle_timeout), ("--launch-timeout", launch_timeout)):
        if value < 0:
            raise Exit(f"error: {name} must be seconds > 0 (or 0 for remote_server's default)", code=2)
    with _clear_errors():
        devices.check_spec(device)
        with devices.open_fleet(device, board or boards.default_board("aarch64")) as fleet:
            if device.strip() == "emu" and devices.without_edgekit(fleet):
                say("EdgeKit is not installed on the emulated board yet: building and flashing it first")
                flash(c, device="emu", board=board)
            code = devices.serve(
                fleet,
                port=port,
                idle_timeout=idle_timeout or None,
                launch_timeout=launch_timeout or None,
                host=host or None,
                pair=pair,
            )
    if code != 0:
        raise Exit(f"error: remote_server exited with status {code}", code=1)


@task(help={"device": DEVICE_HELP, "board": BOARD_HELP})
def doctor(c: Context, device: str = "emu", board: str = "") -> None:
    """Check a board: arch, glibc, libstdc++, Python and numpy, installed EdgeKit; say what to fix."""
    with _clear_errors():
        profile = boards.load_board(board or boards.default_board("aarch64"))
        with devices.open_fleet(device, profile.name) as fleet:
            if not devices.doctor(fleet, profile):
                raise Exit("error: a board needs fixing or could not be probed (see above)", code=1)


@task
def lint(c: Context) -> None:
    """Check formatting and lint with ruff, and types with mypy (settings: pyproject.toml)."""
    with c.cd(str(ROOT)):
        say("ruff check")
        c.run(f"{PYTHON} -m ruff check .")
        say("ruff format --check")
        c.run(f"{PYTHON} -m ruff format --check .")
        say("mypy")
        c.run(f"{PYTHON} -m mypy")


@task(
    help={
        "k": "only tests matching this pytest -k expression",
        "no_lint": "skip ruff and mypy",
    }
)
def test(c: Context, k: str = "", no_lint: bool = False) -> None:
    """Build (when sdk/ or edge_app/ changed), lint, and run the whole test suite with pytest (CI runs it).

    The suite covers the C runtime (also under ASan/UBSan, and its threaded tests with the hammer's short
    form under TSan), warning-free builds with gcc, the aarch64 cross gcc and zig, the cross-build,
    packages and flashing to the emulated boards and over SSH, the conan package, the Python API, the
    compiler, the test models against onnxruntime (host and boards, both kernel paths), ONNX's node
    tests, corrupt models, the docs' examples. emu-debian12 runs every board test, emu-debian13 a subset
    (tests/conftest.py EMU_BOARDS).
    """
    _ensure_host_package(c)
    if not no_lint:
        lint(c)
    say("pytest")
    selection = f"-k '{k}'" if k else ""
    with c.cd(str(ROOT)):
        c.run(f"{PYTHON} -m pytest {selection}", pty=False)


FUZZ_HELP = {
    "target": "ekm, remote_session, remote_frames, plugin_elf, app_options, onnx_import, elfcheck, or all "
    "(default)",
    "time": "seconds to fuzz each target (default 60)",
    "save": "then minimize the inputs found into the saved corpus, tests/fuzz/corpus/TARGET (to commit)",
}


@task(help=FUZZ_HELP)
def fuzz(c: Context, target: str = "all", time: int = 60, save: bool = False) -> None:
    """Coverage-guided fuzzing of every parser of untrusted bytes (docs/hardening.md).

    libFuzzer under ASan + UBSan for the C targets, atheris for the Python ones, each from its saved
    corpus; prints executions, coverage and findings.

    The C targets (built with clang into build/fuzz): ekm (the .ekm loader, then a launch of what
    loaded), remote_session (a whole remote_server session from raw bytes, unpaired or paired),
    remote_frames (well-formed frames of fuzzed requests), plugin_elf (the check of a plugin library's
    ELF headers before dlopen) and app_options (edgekit-app's command line and CPU lists). The Python
    ones: onnx_import (the model compiler on ONNX bytes) and elfcheck (the glibc-floor ELF check). A
    finding (crash, leak, timeout, uncaught exception) stops that target with its input in
    build/fuzz/crashes/TARGET; once fixed, keep the input in tests/fuzz/regressions/TARGET, which the
    tests run.
    """
    _ensure_host_package(c)
    flags = f" --target {target} --time {time}" + (" --save" if save else "")
    with c.cd(str(ROOT)):
        result = c.run(f"{PYTHON} tests/fuzz/fuzzing.py{flags}", warn=True)
    if result is None or result.exited != 0:
        raise Exit("error: a fuzz target found a problem or could not run (see above)", code=1)


HAMMER_HELP = {
    "seconds": "how long the 8 threads run (default 600; CI runs 2 in the test suite)",
    "iterations": "stop each thread after this many steps instead, if sooner (default 0: no limit)",
    "kernels": "portable, xnnpack or auto (EDGEKIT_KERNELS; default: auto, XNNPACK where it is built)",
    "remote": "on remote devices: an ek_server in the process serves them over loopback TCP",
}


@task(help=HAMMER_HELP)
def hammer(
    c: Context, seconds: int = 600, iterations: int = 0, kernels: str = "", remote: bool = False
) -> None:
    """The long form of the C hammer (tests/c/test_hammer.c) under ThreadSanitizer.

    Builds tests/c with -DEDGEKIT_TSAN=ON and clang in build/tsan, then runs test_hammer: 8 threads
    sharing one device and runtime (launches of every kind, waits with timeouts, callbacks that
    relaunch, workspaces, models loaded, runtimes destroyed while in use). Fails on a wrong result, a
    TSan report (data race, lock-order inversion) or a leak; prints what it did. The test suite runs the
    same binary for 2 s (tests/test_c_runtime.py). docs/hardening.md has the details.
    """
    if kernels not in ("", "portable", "xnnpack", "auto"):
        raise Exit(f"error: --kernels {kernels}: use portable, xnnpack or auto", code=2)
    if shutil.which("clang") is None:
        raise Exit("error: no clang on PATH (Debian: apt-get install clang libclang-rt-14-dev)", code=1)
    build_dir = ROOT / "build" / "tsan"
    generator = "-G Ninja" if shutil.which("ninja") and not (build_dir / "Makefile").exists() else ""
    say(f"build tests/c with ThreadSanitizer in {build_dir}")
    c.run(
        f"cmake -S {ROOT / 'tests' / 'c'} -B {build_dir} {generator} -DEDGEKIT_SOURCE_DIR={ROOT} "
        "-DCMAKE_BUILD_TYPE=Debug -DEDGEKIT_TSAN=ON -DCMAKE_C_COMPILER=clang",
        hide="stdout",
    )
    c.run(f"cmake --build {build_dir} --target test_hammer --parallel 2", hide="stdout")
    env = {"EDGEKIT_DEVICES": "2", "TSAN_OPTIONS": "halt_on_error=1 second_deadlock_stack=1"}
    if kernels:
        env["EDGEKIT_KERNELS"] = kernels
    # Without ASLR: clang 14's TSan runtime cannot map its shadow under newer kernels' wider randomisation.
    no_aslr = f"setarch {os.uname().machine} -R " if shutil.which("setarch") else ""
    flags = f"--seconds {seconds}" + (f" --iterations {iterations}" if iterations else "")
    flags += " --remote" if remote else ""
    say(f"test_hammer {flags}")
    c.run(f"{no_aslr}{build_dir / 'test_hammer'} {flags}", env=env, pty=False)


BENCH_HELP = {
    "quick": "smaller sizes and fewer repeats (a smoke run)",
    "board": "emu: instead, the aarch64 instruction table on the emulated board (instructions per inference "
    "of the five test models, EdgeKit portable/xnnpack/auto and onnxruntime's aarch64 wheel, counted by a "
    "qemu plugin; python -m edgekit_packaging.bench_board); it cross-builds and flashes the board first "
    "when its EdgeKit is not the current build",
}


@task(help=BENCH_HELP)
def bench(c: Context, quick: bool = False, board: str = "") -> None:
    """Build (when sdk/ or edge_app/ changed), then run the memory benchmark and the model benchmark.

    With --board emu, only the emulated board's aarch64 instruction table instead: the five test
    models at their test shapes, on the board's Python under qemu-aarch64 with an instruction-count
    TCG plugin (built with the host C compiler into $EDGEKIT_CACHE/icount), 1 thread, EdgeKit's
    portable, XNNPACK and auto kernels and onnxruntime (the host's version, its aarch64 wheel from
    PyPI unpacked into the board), millions of instructions per inference, the ratio to onnxruntime
    and each output's max error against onnxruntime on the host. --quick counts 1 inference, not 3.

    python -m edgekit.bench: s2d/d2s/d2d/flush bandwidth against np.copyto of the same size, and a
    small DeviceMemory.write against a no-op Cython call. python -m edgekit.bench_models: MobileNetV2-
    and ResNet-18-style at 1x3x224x224 (and smaller models) through EdgeKit's portable and XNNPACK
    kernels and onnxruntime, 1 and 2 threads, in the same run (needs torch and onnxruntime), each also
    quantized to int8 (against onnxruntime's run of the same int8 model, and int8 over float32). Then the
    two large models with fewer CPUs than threads: on one allowed CPU (as under taskset -c 0) with the
    default threads and 4 threads against 1, and with 2 threads while another process keeps one of
    the two CPUs busy. python -m edgekit.bench_profile: the test models' launches without a profile,
    with one and with a dump directory, and the ratios. python -m edgekit.bench_remote: a remote
    device on loopback (remote_server in another process): the round trip of a one-op model against
    a local run and a TCP ping-pong, and 64 MiB there and back against a plain TCP echo.
    python -m edgekit.bench_plugins: a one-op model with the example plugin's Swish against the built-in
    SIGMOID, per launch (the plugin call's overhead). python -m edgekit.bench_memory: the first launch of a
    fresh context (it allocates) and steady launches with a PoolAllocator, a Python allocator and a static
    workspace, against the device heap (the allocators' overhead). python -m edgekit.bench_launch: the
    launch overhead floor, a 1x16 Relu through edgekit-app (C), req.run and infer + wait (Python) against
    onnxruntime's session.run. python -m edgekit.bench_winograd: ResNet-18 / YOLO-style 3x3 layers with
    Winograd F(4x4,3x3) against XNNPACK and the portable im2col (the compiler's thresholds).
    """
    if board:
        if board != "emu":
            raise Exit(f"error: --board {board!r}: only emu (the emulated board) is supported", code=2)
        _bench_board(c, quick)
        return
    _ensure_host_package(c)
    flag = " --quick" if quick else ""
    say("edgekit.bench")
    c.run(f"{PYTHON} -m edgekit.bench{flag}")
    say("edgekit.bench_models: float32 and int8 models against onnxruntime")
    c.run(f"{PYTHON} -m edgekit.bench_models{flag} --int8")
    say("edgekit.bench_winograd: 3x3 layers, Winograd F(4x4,3x3) against XNNPACK and im2col")
    c.run(f"{PYTHON} -m edgekit.bench_winograd{flag}")
    say("edgekit.bench_profile: launches without and with a profile, and with a dump")
    c.run(f"{PYTHON} -m edgekit.bench_profile{flag}")
    say("edgekit.bench_plugins: a plugin op's launch against the built-in op's")
    c.run(f"{PYTHON} -m edgekit.bench_plugins{flag}")
    say("edgekit.bench_memory: launches with a pool, a Python allocator and a static workspace vs the heap")
    c.run(f"{PYTHON} -m edgekit.bench_memory{flag}")
    say("edgekit.bench_launch: the launch overhead floor (a one-op model) in C and Python vs onnxruntime")
    c.run(f"{PYTHON} -m edgekit.bench_launch{flag}")
    say("edgekit.bench_remote: a remote device on loopback against plain TCP")
    c.run(f"{PYTHON} -m edgekit.bench_remote{flag}")
    allowed = sorted(os.sched_getaffinity(0))
    large = "--models mobilenetv2,resnet18"
    say(f"edgekit.bench_models on one allowed CPU ({allowed[0]}): default threads and 4 threads vs 1")
    c.run(f"{PYTHON} -m edgekit.bench_models{flag} {large} --cpus {allowed[0]} --threads 1,default,4")
    if len(allowed) >= 2:
        cpus = f"{allowed[0]},{allowed[1]}"
        say(f"edgekit.bench_models on CPUs {cpus} with CPU {allowed[1]} kept busy by another process")
        c.run(
            f"{PYTHON} -m edgekit.bench_models{flag} {large} --cpus {cpus} --busy {allowed[1]} --threads 1,2"
        )


SOAK_HELP = {
    "sessions": "remote_server sessions (default 10000; 0 skips the server soak)",
    "loads": "model loads, from C and again from Python (default 10000; 0 skips them)",
    "concurrency": "sessions at once (default 4)",
    "seed": "seed of the random plan of session kinds and disconnect points (default 1)",
    "kernels": "kernels of the load soak's runtimes: auto, portable or xnnpack (default auto)",
    "work": "keep the model, remote_server's log and the C program in this directory (default: a temporary)",
}


@task(help=SOAK_HELP)
def soak(
    c: Context,
    sessions: int = 10000,
    loads: int = 10000,
    concurrency: int = 4,
    seed: int = 1,
    kernels: str = "auto",
    work: str = "",
) -> None:
    """Build (when sdk/ or edge_app/ changed), then the long soak (tests/soak.py; the suite runs short forms).

    Server: this package's remote_server on a loopback port, through SESSIONS sessions, CONCURRENCY at
    once, of random kinds: clean ones through ek.Device and ek.Context, and raw-socket ones dropped (closed
    or reset) before or after HELLO, mid-frame header, mid-payload, mid model upload, with a LAUNCH or RUN
    in flight, with memory and runtimes never freed, or ended by a protocol error. Whenever it is idle it
    is sampled (its SIGUSR1 status: sessions open, malloc's heap in use; RSS; open fds): one session
    open (a holder's), fds back exactly, heap within 16 KiB + 8 B per session and RSS within 2 MiB over
    the second half; its log must account for every session, the board's heap and dump directory must be
    empty, and a new client must still get correct inferences. Loads: a compiled two-convolution model
    loaded into a fresh runtime, launched once (output checked against onnxruntime's) and destroyed,
    LOADS times from C (tests/c/test_soak.c: malloc's heap in use, fds and RSS) and LOADS times through
    `with ek.Context(...)`. Prints progress and a table per part; exits 1 when something grew or failed.
    """
    _ensure_host_package(c)
    argv = (
        f"--sessions {sessions} --loads {loads} --concurrency {concurrency} --seed {seed} --kernels {kernels}"
    )
    if work:
        argv += f" --work {work}"
    with c.cd(str(ROOT)):
        c.run(f"{PYTHON} tests/soak.py {argv}", pty=False)


def _bench_board(c: Context, quick: bool) -> None:
    """invoke bench --board emu: the host package (the compiler), the board's EdgeKit, the plugin, then
    python -m edgekit_packaging.bench_board (which sets up onnxruntime on the board itself)."""
    from edgekit_packaging import icount

    _ensure_host_package(c)
    board = boards.default_board("aarch64")
    with _clear_errors():
        _ensure_emu_current(c, board)
        try:
            say(f"instruction-count plugin: {icount.build_plugin()}")
        except icount.IcountError as exc:
            raise Exit(f"error: {exc}", code=1) from None
    say("edgekit_packaging.bench_board: aarch64 instructions per inference on the emulated board")
    path = os.pathsep.join([str(ROOT), str(ROOT / "packaging")])
    runs = " --runs 1" if quick else ""
    c.run(f"{PYTHON} -m edgekit_packaging.bench_board --board {board}{runs}", env={"PYTHONPATH": path})


# The main job's model: compiled on the host, run on the board, checked against onnxruntime's outputs.
DEMO_MODEL = "mobilenetv2"
DEMO_SHAPE = (1, 3, 224, 224)


def _demo_model(work: Path) -> list[Path]:
    """Export the demo model to ONNX, compile it to .ekm, and make an input with onnxruntime's outputs
    for it: the files the board gets."""
    import numpy as np
    import onnxruntime  # type: ignore[import-untyped]

    from edgekit.bench_models import INPUT_NAME, export_onnx
    from edgekit.compiler import compile_model

    work.mkdir(parents=True, exist_ok=True)
    source = export_onnx(DEMO_MODEL, DEMO_SHAPE, work / f"{DEMO_MODEL}.onnx")
    detail(f"exported {source}")
    model = work / f"{DEMO_MODEL}.ekm"
    report = compile_model(source, model, stages=[{INPUT_NAME: DEMO_SHAPE}], name=DEMO_MODEL, log=detail)
    print(report.summary(), flush=True)
    x = np.random.default_rng(0).standard_normal(DEMO_SHAPE).astype(np.float32)
    session = onnxruntime.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    np.save(work / "input.npy", x)
    np.save(work / "expected.npy", session.run(None, {INPUT_NAME: x})[0])
    return [model, work / "input.npy", work / "expected.npy"]


@task
def demo(c: Context) -> None:
    """The main job: compile a model, cross-build, package, flash the emulated board, run the model there.

    EdgeKit is built for this Python first when sdk/ or edge_app/ changed (the compiler runs on the host).
    The model (a MobileNetV2-style net at 1x3x224x224, made with PyTorch) is compiled on the host; on
    the board, edgekit run infers with the XNNPACK and with the portable kernels in the board's own
    Python 3.11 under qemu-aarch64 and checks the outputs against onnxruntime's on the host (exit 1 on a
    mismatch). Each step is timed.
    """
    steps = Steps("demo")
    board = boards.default_board("aarch64")
    try:
        with steps("build EdgeKit for the host (the compiler)"):
            _ensure_host_package(c)
        with steps("compile the model on the host"):
            files = _demo_model(ROOT / "build" / "demo")
        with steps("cross-build + package"):
            package(c, arch="aarch64")
        with steps("flash the emulated board"):
            flash(c, device="emu", arch="aarch64")
        with _clear_errors(), steps("copy the model to the board"), devices.open_fleet("emu", board) as fleet:
            for path in files:
                failed = [str(e) for e in fleet.put(path, f"models/{path.name}").values() if e]
                if failed:
                    raise Exit(f"error: copying {path.name} to the board failed: {failed[0]}", code=1)
        model, x, expected = (f"$EDGEKIT_PREFIX/models/{path.name}" for path in files)
        for kernels in ("xnnpack", "portable"):
            with steps(f"run the model on the board ({kernels} kernels)"):
                run_on_device(
                    c,
                    device="emu",
                    command=f"python3 -m edgekit run {model} --input {x} --expect {expected} "
                    f"--kernels {kernels} --repeat 3",
                    board=board,
                )
    finally:
        print(steps.summary(), flush=True)


@task
def clean(c: Context) -> None:
    """Remove build/ and dist/ (the virtualenv .venv and the board cache ~/.cache/edgekit stay)."""
    for name in ("build", "dist"):
        path = ROOT / name
        if path.exists():
            say(f"removing {path}")
            shutil.rmtree(path)


device = Collection("device")
device.add_task(device_create, name="create")
ns = Collection(
    build,
    toolchains,
    package,
    flash,
    run_on_device,
    serve,
    doctor,
    lint,
    test,
    hammer,
    bench,
    soak,
    fuzz,
    demo,
    clean,
    device,
)
