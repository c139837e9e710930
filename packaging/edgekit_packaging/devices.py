"""The devices EdgeKit is flashed to, and what flash, run and doctor do on them.

A device spec is ``emu`` (the emulated board: its Debian rootfs under qemu-aarch64) or a comma list of
``ssh://user@host[:port][/prefix]`` (real boards, driven in parallel by ssh.SshFleet). Both are a
*fleet*: ``run(command)`` and ``put(local, remote)`` on every board, each board's failure a result.
On every board ``$EDGEKIT_PREFIX`` is where EdgeKit goes (default /opt/edgekit). ``start_server`` and
``serve`` (invoke serve) run the board's remote_server, so this host can use the board's devices.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from types import FrameType, TracebackType
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
from toolchains.rootfs import RootfsError, run_on_board, start_on_board, stop_on_board
from toolchains.steps import Steps, detail, say

__all__ = [
    "DeviceError",
    "EmulatedFleet",
    "Fleet",
    "RemoteServer",
    "RunResult",
    "SshFleet",
    "check_spec",
    "doctor",
    "flash",
    "open_fleet",
    "parse_ssh_urls",
    "run",
    "serve",
    "start_server",
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


# ---------------------------------------------------------------------------------------------------------
# remote_server on a board (docs/remote-protocol.md): invoke serve

SERVER_PORT = 9090  # remote_server's default port, which ssh:// devices connect to unless told otherwise
_LISTENING = re.compile(r"remote_server listening on (\S+):(\d+)\s*$")
# What start_server asks the board first: is there a remote_server to run, and which.
_SERVER_CHECK = f"""\
prefix=${{EDGEKIT_PREFIX:-{DEFAULT_PREFIX}}}
if [ ! -e "$prefix/current" ]; then echo none; exit 0; fi
if [ ! -e "$prefix/current/bin/remote_server" ]; then echo missing; exit 0; fi
"$prefix/current/bin/remote_server" --version
"""


class _Process(Protocol):
    """A program running on a board: its output lines (stdout and stderr together), Ctrl-C, its end."""

    def lines(self) -> Iterator[str]: ...

    def interrupt(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int | None: ...

    def close(self) -> None: ...


class _EmulatedProcess:
    """A program on the emulated board, started by rootfs.start_on_board (its own process group)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process

    def lines(self) -> Iterator[str]:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            yield raw.decode(errors="replace").rstrip("\r\n")

    def interrupt(self) -> None:
        # To the whole group: proot does not pass a signal of its own on to the program it runs.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGINT)

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        stop_on_board(self._process, sig=signal.SIGKILL, timeout=5)
        if self._process.stdout is not None:
            self._process.stdout.close()


def _device_spec(fleet: Fleet) -> str:
    """The --device value naming this fleet's board, for the commands in messages."""
    if isinstance(fleet, SshFleet):
        return ",".join(target.url for target in fleet.targets)
    return "emu"


class RemoteServer:
    """A remote_server running on a board, from ``start_server``: where it listens (``port`` on the
    board's loopback), ``url`` and ``connect`` (the Python line that reaches it from this host), its
    ``output`` so far. ``stop()`` ends it as Ctrl-C would; a context manager that stops it."""

    def __init__(
        self,
        fleet: Fleet,
        process: _Process,
        version: str,
        port: int,
        echo: Callable[[str], None] | None,
        key: Path | None = None,
    ) -> None:
        self.board = fleet.names[0]
        self.key = key  # this host's copy of the pairing key, when the server is paired
        self.version = version
        self.host = "127.0.0.1"
        self.port = 0
        self._port_asked = port
        self.url = ""
        self.connect = ""
        self._fleet = fleet
        self._process = process
        self._echo = echo
        self._output: deque[str] = deque(maxlen=200)
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self._ended = threading.Event()
        self._code: int | None = None
        self._reader = threading.Thread(target=self._read, name=f"remote_server {self.board}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for line in self._process.lines():
                with self._lock:
                    self._output.append(line)
                if self._echo is not None:
                    self._echo(line)
                match = _LISTENING.search(line)
                if match and not self._listening.is_set():
                    self.host, self.port = match.group(1), int(match.group(2))
                    self.url, self.connect = _connect_to(self._fleet, self.host, self.port, self.key)
                    self._listening.set()
        finally:
            self._ended.set()

    @property
    def output(self) -> list[str]:
        """What it printed so far (its last 200 lines: stdout and stderr)."""
        with self._lock:
            return list(self._output)

    @property
    def running(self) -> bool:
        if self._code is None:
            self._code = self._process.wait(0)
        return self._code is None

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self._ended.is_set():
                break
            if time.monotonic() >= deadline:
                self.close()
                raise DeviceError(
                    f"remote_server said nothing for {timeout:g}s after it was started "
                    f"(it printed: {self._last_lines()})",
                    board=self.board,
                )
        if self._listening.is_set():
            return
        code = self.wait(10)
        self.close()
        said = "\n".join(self.output)
        if "Address already in use" in said:
            shared = (
                " (the emulated board shares this machine's network)" if self.board.startswith("emu:") else ""
            )
            raise DeviceError(
                f"port {self._port_asked} is taken on the board{shared}: another remote_server (invoke "
                "serve, or the edgekit-remote-server service) or another program listens there: choose "
                "another with --port N, or --port 0 for a free one",
                board=self.board,
            )
        raise DeviceError(
            f"remote_server did not start (exit status {code}): {self._last_lines()}", board=self.board
        )

    def _last_lines(self, count: int = 5) -> str:
        return " / ".join(self.output[-count:]) or "nothing"

    def wait(self, timeout: float | None = None) -> int | None:
        """Until it ends (its exit status), or None when it still runs after ``timeout`` seconds."""
        if self._code is None:
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._code is None:
                # In short steps, so that Ctrl-C is seen at once whatever the process type.
                step = 0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic()))
                self._code = self._process.wait(step)
                if self._code is None and deadline is not None and time.monotonic() >= deadline:
                    return None
        self._ended.wait(5)  # the reader has the last lines
        return self._code

    def stop(self, timeout: float = 10.0) -> int:
        """Stop it as Ctrl-C does (it finishes its sessions' launches and frees them, then exits 0);
        killed if it has not ended after ``timeout`` seconds. Returns its exit status (-9: killed)."""
        if self._code is None:
            self._process.interrupt()
            self.wait(timeout)
        self.close()
        return self._code if self._code is not None else -signal.SIGKILL

    def close(self) -> None:
        """Kill it if it still runs, and let go of it."""
        self._process.close()
        self._reader.join(timeout=5)

    def __enter__(self) -> RemoteServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _connect_to(fleet: Fleet, host: str, port: int, key: Path | None = None) -> tuple[str, str]:
    """The URL of a server listening on the board's ``host``:``port`` and the Python line that opens it
    (with ``key_file`` when the server is paired)."""
    pairing = f", key_file={str(key)!r}" if key is not None else ""
    if isinstance(fleet, SshFleet):
        target = fleet.targets[0]
        where = f"[{target.host}]" if ":" in target.host else target.host
        if key is not None and not _is_loopback(host):
            url = f"tcp://{where}:{port}"  # paired and on the network: straight there
            return url, f'ek.Device("{url}"{pairing})'
        url = f"ssh://{target.user}@{where}" + ("" if target.port == 22 else f":{target.port}")
        options = "" if port == SERVER_PORT else f", server_port={port}"
        ssh_key = os.environ.get("EDGEKIT_SSH_KEY")
        if ssh_key:
            options += f", identity={ssh_key!r}"
        return url, f'ek.Device("{url}"{options}{pairing})'
    # The emulated board shares this machine's network: its loopback is this machine's.
    url = f"tcp://{host if not host.startswith('0.') else '127.0.0.1'}:{port}"
    return url, f'ek.Device("{url}"{pairing})'


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "localhost")


PAIRING_DIR = Path("~/.config/edgekit/pairing")  # this host's copies of boards' pairing keys
BOARD_KEY = "etc/remote_server.key"  # under the install prefix on the board


def pairing_key(fleet: Fleet) -> tuple[Path, str]:
    """The pairing key of the fleet's one board: made on this host on first use (kept in PAIRING_DIR,
    owner-only, by the board's name), and put on the board (prefix/etc/remote_server.key, mode 0600).
    Returns (this host's copy, the board's path)."""
    from edgekit.remote import make_key

    board = fleet.names[0]
    folder = PAIRING_DIR.expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    local = folder / (re.sub(r"[^A-Za-z0-9._-]+", "_", board) + ".key")
    if not local.exists():
        make_key(local)
        say(f"made a pairing key for {board}: {local} (give hosts a copy of it; keep it private)")
    prefix = (
        fleet.targets[0].prefix if isinstance(fleet, SshFleet) else getattr(fleet, "prefix", "/opt/edgekit")
    )
    remote = f"{prefix}/{BOARD_KEY}"
    result = fleet.put(local, remote)[board]
    if result is not None:
        raise result
    done = fleet.run(f"chmod 600 {shlex.quote(remote)}", timeout=60)[board]
    if not isinstance(done, RunResult):
        raise done
    if not done.ok:
        raise DeviceError(f"cannot make {remote} owner-only: {done.stderr.strip()}", board=board)
    return local, remote


def start_server(
    fleet: Fleet,
    *,
    port: int = SERVER_PORT,
    idle_timeout: int | None = None,
    launch_timeout: int | None = None,
    echo: Callable[[str], None] | None = None,
    start_timeout: float = 60.0,
    host: str | None = None,
    pair: bool = False,
) -> RemoteServer:
    """Start the installed remote_server on the fleet's one board and return once it listens.

    The emulated board's runs under its emulator (in the background, its own process group); an SSH
    board's runs in an SSH session with a terminal, so it stops when the session ends. ``port`` 0 lets
    it pick a free port (``RemoteServer.port``). ``idle_timeout``/``launch_timeout`` (seconds) are its
    flags of those names (None: its defaults). ``echo`` gets each line it prints (from another thread).
    ``pair``: give it a pairing key (``pairing_key``), so sessions must hold the key and are encrypted;
    ``host``: listen on that address (anything but loopback needs ``pair``).
    DeviceError, saying what to do, when the board has no EdgeKit or a release without remote_server,
    when the port is taken, or when it does not start.
    """
    if len(fleet.names) != 1:
        raise DeviceError(f"remote_server is started on one board at a time, not on {len(fleet.names)}")
    if not 0 <= port <= 65535:
        raise DeviceError(f"the port must be 0 (a free one) to 65535, not {port}")
    board = fleet.names[0]
    spec = _device_spec(fleet)
    if isinstance(fleet, SshFleet):
        prefix = fleet.targets[0].prefix
    elif isinstance(fleet, EmulatedFleet):
        prefix = fleet.prefix
    else:
        raise DeviceError(f"cannot start programs in the background on {board}")
    check = fleet.run(_SERVER_CHECK, timeout=120)[board]
    if not isinstance(check, RunResult):
        raise check
    answer = check.stdout.strip()
    if answer == "none":
        raise DeviceError(
            f"EdgeKit is not installed (no {prefix}/current): invoke flash --device {spec}", board=board
        )
    if answer == "missing":
        raise DeviceError(
            f"the EdgeKit release in {prefix}/current has no bin/remote_server (it is older than remote "
            f"devices): flash this one: invoke flash --device {spec}",
            board=board,
        )
    if not check.ok or not answer.startswith("remote_server"):
        why = " ".join((check.stderr.strip() or answer or f"exit status {check.exit_code}").split())
        raise DeviceError(
            f"{prefix}/current/bin/remote_server does not run ({why}): "
            f"flash again: invoke flash --device {spec}",
            board=board,
        )
    if host and not pair and not _is_loopback(host):
        raise DeviceError(
            f"--host {host} is not a loopback address: a server there must be paired (add --pair), or "
            "keep it on loopback and reach it through SSH",
            board=board,
        )
    key, board_key = pairing_key(fleet) if pair else (None, None)
    argv = [f"{prefix}/current/bin/remote_server", "--port", str(port)]
    for flag, value in (
        ("--idle-timeout", idle_timeout),
        ("--launch-timeout", launch_timeout),
        ("--host", host),
        ("--key", board_key),
    ):
        if value is not None:
            argv += [flag, str(value)]
    process: _Process
    if isinstance(fleet, SshFleet):
        process = fleet.start(shlex.join(["exec", *argv]))
    else:
        try:
            started = start_on_board(
                fleet.rootfs,
                argv,
                env={"EDGEKIT_PREFIX": fleet.prefix},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except (OSError, RootfsError) as exc:
            raise DeviceError(f"cannot run on the emulated board: {exc}", board=board) from exc
        process = _EmulatedProcess(started)
    server = RemoteServer(fleet, process, answer.splitlines()[0], port, echo, key)
    try:
        server._wait_listening(start_timeout)
    except BaseException:
        server.close()
        raise
    return server


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal) stop the server as Ctrl-C does, while this is entered;
    so does SIGINT, even where it was ignored (a shell's background job)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(
    fleet: Fleet,
    *,
    port: int = SERVER_PORT,
    idle_timeout: int | None = None,
    launch_timeout: int | None = None,
    host: str | None = None,
    pair: bool = False,
) -> int:
    """invoke serve: run remote_server on the fleet's one board in the foreground, its output shown, until
    Ctrl-C (or SIGTERM, SIGHUP) stops it, or it ends; say how to connect once it listens. Returns its
    exit status (0 after a clean stop)."""
    server = start_server(
        fleet,
        port=port,
        idle_timeout=idle_timeout,
        launch_timeout=launch_timeout,
        echo=lambda line: print(f"  {line}", flush=True),
        host=host,
        pair=pair,
    )
    try:
        say(f"{server.version} serves {server.board} on the board's {server.host}:{server.port}")
        say(f"connect from Python on this host: {server.connect}")
        if server.key is not None:
            where = (
                server.url.removeprefix("tcp://")
                if server.url.startswith("tcp://")
                else f"HOST:{server.port}"
            )
            detail(
                f"(paired: every host needs a copy of {server.key}; from C: ek_remote_options_t.key_file; "
                f"the edge app: edgekit-app --rpc_server {where} --rpc_key {server.key})"
            )
        elif isinstance(fleet, SshFleet):
            target = fleet.targets[0]
            login = f"{target.user}@{target.host}" + ("" if target.port == 22 else f" -p {target.port}")
            detail(
                f"(through SSH; from C or the edge app: ssh -tt -L {server.port}:127.0.0.1:{server.port} "
                f"{login} sleep infinity, then "
                f'ek_dev_connect(&dev, "tcp://127.0.0.1:{server.port}", 0, NULL) or '
                f"edgekit-app --rpc_server 127.0.0.1:{server.port})"
            )
        else:
            detail(
                f'(from C: ek_dev_connect(&dev, "{server.url}", 0, NULL); the edge app: '
                f"edgekit-app --rpc_server {server.host}:{server.port})"
            )
        say("Ctrl-C stops it")
        try:
            with _stop_signals_interrupt():
                code = server.wait()
        except KeyboardInterrupt:
            say("stopping remote_server (it ends its sessions first)")
            code = server.stop()
            say(f"remote_server stopped (exit status {code})")
            return code
        say(f"remote_server ended by itself (exit status {code})")
        return -1 if code is None else code
    finally:
        server.close()


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
    server = facts.get("remote_server", "")
    if not installed:
        checks.add("remote_server", "none", "it comes with EdgeKit: invoke flash --device <this board>")
    elif server.startswith("remote_server"):
        found = server.removeprefix("remote_server").strip(" ()")
        checks.add("remote_server", f"{found} in {prefix}/current/bin")
    elif not server:
        checks.add(
            "remote_server",
            "missing",
            f"the release in {prefix}/current is older than remote devices: "
            "invoke flash --device <this board>",
        )
    else:
        checks.add(
            "remote_server",
            f"does not run: {server}",
            f"{prefix}/current/bin/remote_server is damaged: invoke flash --device <this board>",
        )
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
