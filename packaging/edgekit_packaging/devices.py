"""The devices EdgeKit is flashed to, and what flash, run and doctor do on them.

A device spec is ``emu`` (the emulated board: its Debian rootfs under qemu-aarch64) or a comma list of
``ssh://user@host[:port][/prefix]`` (real boards, driven in parallel by ssh.SshFleet). Both are a
*fleet*: ``run(command)`` and ``put(local, remote)`` on every board, each board's failure a result.
On every board ``$EDGEKIT_PREFIX`` is where EdgeKit goes (default /opt/edgekit).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Protocol

from edgekit_packaging.ssh import (
    DEFAULT_PREFIX,
    DeviceError,
    Progress,
    RunResult,
    SshFleet,
    format_table,
    parse_ssh_urls,
)
from toolchains.boards import Board, load_board, version_tuple
from toolchains.crossbuild import board_rootfs, runtime_version
from toolchains.rootfs import RootfsError, run_on_board
from toolchains.steps import Steps, detail, say

__all__ = [
    "DeviceError",
    "EmulatedFleet",
    "Fleet",
    "RunResult",
    "SshFleet",
    "check_spec",
    "doctor",
    "flash",
    "open_fleet",
    "parse_ssh_urls",
    "run",
    "without_edgekit",
]


class Fleet(Protocol):
    @property
    def names(self) -> list[str]: ...

    def run(self, command: str, *, timeout: float | None = None) -> dict[str, RunResult | Exception]: ...

    def put(
        self, local: Path, remote: str, *, progress: Progress | None = None
    ) -> dict[str, Exception | None]: ...

    def __enter__(self) -> Fleet: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class EmulatedFleet:
    """The emulated board as a fleet of one: files go into its rootfs, commands run under qemu-aarch64."""

    def __init__(self, board: Board, rootfs: Path, prefix: str = DEFAULT_PREFIX) -> None:
        self.board = board
        self.rootfs = rootfs
        self.prefix = prefix

    @property
    def names(self) -> list[str]:
        return [f"emu:{self.board.name}"]

    def _host_path(self, remote: str) -> Path:
        """Where a board path is on the host; a relative one is taken from the prefix, as for SSH boards."""
        board_path = PurePosixPath(self.prefix, remote)
        if ".." in board_path.parts:
            raise DeviceError(f"{remote}: no '..' in board paths")
        return self.rootfs / str(board_path).lstrip("/")

    def run(self, command: str, *, timeout: float | None = None) -> dict[str, RunResult | Exception]:
        name = self.names[0]
        try:
            done = run_on_board(
                self.rootfs, ["/bin/sh", "-c", command], env={"EDGEKIT_PREFIX": self.prefix}, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return {name: DeviceError(f"command timed out after {timeout:g}s", board=name)}
        except (OSError, RootfsError) as exc:
            return {name: DeviceError(f"cannot run on the emulated board: {exc}", board=name)}
        return {
            name: RunResult(
                done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
            )
        }

    def put(
        self, local: Path, remote: str, *, progress: Progress | None = None
    ) -> dict[str, Exception | None]:
        name = self.names[0]
        dest = self._host_path(remote)
        partial = dest.with_name(f".{dest.name}.partial")
        total = local.stat().st_size
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with local.open("rb") as source, partial.open("wb") as target:
                done = 0
                for block in iter(lambda: source.read(1 << 20), b""):
                    target.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(name, done, total)
            partial.replace(dest)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            return {name: DeviceError(f"copy into the rootfs failed: {exc}", board=name)}
        return {name: None}

    def __enter__(self) -> EmulatedFleet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


UNKNOWN_DEVICE = "use emu, or ssh://user@host[:port][/prefix][,ssh://...] (emu is not mixed with ssh boards)"


def check_spec(spec: str) -> None:
    """Refuse a device spec that open_fleet would refuse, before any work is done for it."""
    spec = spec.strip()
    if spec == "emu":
        return
    if spec.startswith("ssh://"):
        if "emu" in (part.strip() for part in spec.split(",")):
            raise DeviceError(f"device {spec!r}: {UNKNOWN_DEVICE}")
        parse_ssh_urls(spec)
        return
    raise DeviceError(f"unknown device {spec!r}: {UNKNOWN_DEVICE}")


def open_fleet(spec: str, board: str) -> Fleet:
    """``emu`` -> the emulated board of profile ``board`` (made if missing); ``ssh://...`` -> SSH boards.

    SSH logs in with $EDGEKIT_SSH_KEY when set (else the ssh agent or ~/.ssh/id_*); EDGEKIT_SSH_STRICT=1
    accepts only boards already in ~/.ssh/known_hosts.
    """
    check_spec(spec)
    spec = spec.strip()
    if spec == "emu":
        profile = load_board(board)
        if profile.debian is None:
            raise DeviceError(f"board {profile.name} has no [debian] rootfs: it cannot be emulated")
        return EmulatedFleet(profile, board_rootfs(profile))
    if spec.startswith("ssh://"):
        key = os.environ.get("EDGEKIT_SSH_KEY")
        return SshFleet(
            parse_ssh_urls(spec),
            identity=Path(key) if key else None,
            strict_host_keys=os.environ.get("EDGEKIT_SSH_STRICT") == "1",
        )
    raise AssertionError("unreachable: check_spec accepted the spec")


class _ProgressPrinter:
    """Per-board upload progress as lines at each quarter (readable in CI logs, safe from threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shown: dict[str, int] = {}

    def __call__(self, board: str, done: int, total: int) -> None:
        quarter = 4 if total == 0 else done * 4 // total
        with self._lock:
            if quarter > self._shown.get(board, -1):
                self._shown[board] = quarter
                detail(f"{board}: {done / 2**20:.1f} of {total / 2**20:.1f} MiB ({quarter * 25}%)")


def _report(results: Mapping[str, RunResult | BaseException | None]) -> bool:
    print(format_table(results), flush=True)
    return all(value is None or (isinstance(value, RunResult) and value.ok) for value in results.values())


def flash(fleet: Fleet, bundle: Path, steps: Steps, *, python_link: bool = True) -> bool:
    """Copy the bundle tarball to every board and run its install.sh there (into $EDGEKIT_PREFIX).

    The tarball goes under the prefix, not /tmp: boards may share a /tmp, and often have a small
    tmpfs there. python_link: let install.sh add the package to the board's python3 (edgekit.pth).
    """
    name = bundle.name.removesuffix(".tar.gz")
    remote = f".incoming/{bundle.name}"  # relative: under each board's prefix
    size = f"{bundle.stat().st_size / 2**20:.1f} MiB"
    with steps(f"copy {bundle.name} ({size}) to {len(fleet.names)} board(s)"):
        copied = fleet.put(bundle, remote, progress=_ProgressPrinter())
    if not _report(copied):
        return False
    install = "\n".join(
        [
            "set -e",
            f'prefix="${{EDGEKIT_PREFIX:-{DEFAULT_PREFIX}}}"',
            f'tarball="$prefix"/{shlex.quote(remote)}',
            'work=$(mktemp -d "$prefix/.incoming/unpack.XXXXXX")',
            """trap 'rm -rf "$work" "$tarball"' EXIT""",
            'tar -xzf "$tarball" -C "$work"',
            f'sh "$work"/{shlex.quote(name)}/install.sh --prefix "$prefix"'
            + ("" if python_link else " --no-python-link"),
        ]
    )
    with steps("install.sh on the board(s)"):
        installed = fleet.run(install, timeout=600)
    for board, value in installed.items():
        if isinstance(value, RunResult):
            for line in (value.stdout + value.stderr).strip().splitlines():
                detail(f"{board}: {line}")
    return _report(installed)


def run(fleet: Fleet, command: str, *, timeout: float | None = None) -> bool:
    """Run a shell command on every board with the installed EdgeKit's bin/ on PATH; show each output."""
    wrapped = f'PATH="${{EDGEKIT_PREFIX:-{DEFAULT_PREFIX}}}/current/bin:$PATH"; export PATH; {command}'
    results = fleet.run(wrapped, timeout=timeout)
    for board, value in results.items():
        say(f"{board}: {command}")
        if isinstance(value, RunResult):
            print(value.stdout, end="", flush=True)
            print(value.stderr, end="", flush=True)
    return _report(results)


def without_edgekit(fleet: Fleet) -> list[str]:
    """The boards that answered that they have no EdgeKit release ($EDGEKIT_PREFIX/current); a board
    that cannot be reached is not counted (what runs on it next reports that)."""
    results = fleet.run(f'test -e "${{EDGEKIT_PREFIX:-{DEFAULT_PREFIX}}}/current"', timeout=120)
    return [
        board for board, value in results.items() if isinstance(value, RunResult) and value.exit_code == 1
    ]


PROBE = Path(__file__).resolve().parent.parent / "devices" / "probe.sh"


def _parse_probe(text: str) -> dict[str, str]:
    facts = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


class _Checks:
    """doctor's findings: (what, what was found, what to do, '' when it is fine)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def add(self, what: str, found: str, fix: str = "") -> None:
        self.rows.append((what, found, fix))


def diagnose(facts: Mapping[str, str], board: Board, host_version: str) -> list[tuple[str, str, str]]:
    """What doctor checks on a board against the board profile it should be, and how to fix each."""
    checks = _Checks()
    arch = facts.get("arch", "")
    if arch == board.arch:
        checks.add("arch", arch)
    else:
        checks.add(
            "arch",
            arch or "?",
            f"the {board.name} profile is {board.arch}: build with --arch {arch} and a board profile for it",
        )

    glibc = facts.get("glibc", "")
    if not glibc:
        checks.add(
            "glibc", "?", "getconf GNU_LIBC_VERSION says nothing: EdgeKit needs a glibc system (not musl)"
        )
    elif version_tuple(glibc) < version_tuple(board.glibc):
        checks.add(
            "glibc",
            glibc,
            f"older than the {board.name} floor {board.glibc}: build with --toolchain zig for a board "
            f"profile whose glibc is <= {glibc} (e.g. --board generic-glibc2.17)",
        )
    else:
        checks.add("glibc", glibc)
    # Reported only: the runtime needs no libstdc++.
    checks.add("libstdc++", facts.get("libstdcxx") or "none")

    python = facts.get("python", "")
    suffix = facts.get("python_ext_suffix", "")
    if board.python is None:
        checks.add("python", python or "none")
    elif not python:
        checks.add(
            "python", "none", f"{board.name} expects Python {board.python}: apt-get install python3-numpy"
        )
    else:
        if python == board.python and suffix == board.python_ext_suffix:
            checks.add("python", f"{python} ({suffix})")
        else:
            checks.add(
                "python",
                f"{python} ({suffix})",
                f"EdgeKit's modules for {board.name} are {board.python_ext_suffix}: "
                f'build for a board profile with python = "{python}"',
            )
        numpy = facts.get("numpy", "")
        checks.add(
            "numpy", numpy or "none", "" if numpy else "apt-get install python3-numpy (or pip install numpy)"
        )

    prefix = facts.get("prefix", DEFAULT_PREFIX)
    installed = facts.get("installed_version", "")
    if not installed:
        checks.add(
            "EdgeKit", "not installed", f"nothing in {prefix}/current: invoke flash --device <this board>"
        )
    else:
        found = f"{installed} for {facts.get('installed_board', '?')} in {prefix}/current"
        if installed != host_version:
            checks.add("EdgeKit", found, f"the host has {host_version}: invoke flash --device <this board>")
        else:
            checks.add("EdgeKit", found)
        if board.python is not None and python == board.python:
            imported = facts.get("edgekit_python", "")
            if imported == installed:
                checks.add("import edgekit", imported)
            else:
                checks.add(
                    "import edgekit",
                    imported or "fails",
                    f"python3 does not import it: flash again (that adds {prefix}/current/python to python3)",
                )
    checks.add("remote_server", "not in this release yet")
    return checks.rows


def doctor(fleet: Fleet, board: Board) -> bool:
    """Probe every board and print what is fine and exactly what to fix; False if anything needs fixing."""
    host_version = runtime_version()
    results = fleet.run(PROBE.read_text(), timeout=120)
    healthy = True
    for name, value in results.items():
        say(f"doctor: {name} (expected: board profile {board.name}, EdgeKit {host_version})")
        if not isinstance(value, RunResult) or not value.ok:
            healthy = False
            why = value.stderr.strip() if isinstance(value, RunResult) else str(value)
            print(f"  cannot probe the board: {why}")
            continue
        for what, found, fix in diagnose(_parse_probe(value.stdout), board, host_version):
            print(f"  {'ok ' if not fix else 'FIX'} {what:<15} {found}")
            if fix:
                healthy = False
                print(f"      -> {fix}")
    return healthy


def check_emulated(board: Board, rootfs: Path) -> None:
    """The emulated board runs aarch64 code and its Python imports numpy (after device.create)."""
    fleet = EmulatedFleet(board, rootfs)
    probe = fleet.run(
        "uname -m; python3 -c 'import numpy, sys; print(sys.version.split()[0], numpy.__version__)'"
    )
    value = next(iter(probe.values()))
    if not isinstance(value, RunResult) or not value.ok:
        raise DeviceError(f"the emulated board does not run: {value}")
    arch, python, numpy = [*value.stdout.split(), "?", "?", "?"][:3]
    detail(f"arch {arch}, Python {python}, numpy {numpy}")
