"""Real boards over SSH: run commands on, and upload files to, one board or a fleet of them in parallel.

A board is named by a URL, ``ssh://user@host[:port][/abs/prefix]``, whose path is the install prefix on the
board (default ``/opt/edgekit``). ``SshFleet`` drives every board at once through Fabric's ``ThreadingGroup``
and never raises for one board's failure: each operation returns ``{board name: result or exception}``, and
``format_table`` turns that into the per-board table that ``invoke flash`` and ``invoke doctor`` print.

Host keys. By default (``strict_host_keys=False``) a board whose key is in ``known_hosts`` must present that
key (a mismatch is refused, as OpenSSH does), and a board not listed there is accepted for this session only;
nothing is ever written to ``known_hosts``. That is the right default for a bench of dev boards: every flash
of an image, and every throwaway test sshd, comes up with a new host key, and an interactive "trust this
key?" prompt cannot work from CI or from parallel threads. On a network you do not trust, set
``strict_host_keys=True``: then a board must already be in ``known_hosts`` (add it with ``ssh-keyscan``).

Sessions never read ``~/.ssh/config`` or Fabric's config files, so the URL and the options given here are the
whole story (reproducible on any machine and in CI). Without ``identity`` the keys are found as Fabric and
OpenSSH find them: the ssh agent, then ``~/.ssh/id_*``.

An ``SshFleet`` is not thread-safe: call it from one thread (it runs its own threads inside).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import posixpath
import re
import secrets
import shlex
import socket
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

import paramiko  # type: ignore[import-untyped]
from fabric import Config, Connection, ThreadingGroup  # type: ignore[import-untyped]
from fabric.exceptions import GroupException  # type: ignore[import-untyped]
from fabric.transfer import Result as TransferResult  # type: ignore[import-untyped]
from invoke.exceptions import CommandTimedOut

DEFAULT_PREFIX: Final = "/opt/edgekit"
DEFAULT_KNOWN_HOSTS: Final = Path("~/.ssh/known_hosts")
URL_FORM: Final = "ssh://user@host[:port][/abs/prefix], e.g. ssh://root@192.168.1.20 or ssh://root@[::1]:2222"

Progress = Callable[[str, int, int], None]
"""``progress(board name, bytes done, total bytes)``; called from the fleet's worker threads."""

# Host names and prefixes end up in shell commands and known_hosts lines: keep them to plain characters.
_HOST_RE: Final = re.compile(r"[A-Za-z0-9._-]+")
_USER_RE: Final = re.compile(r"[A-Za-z0-9._-][A-Za-z0-9._@-]*")
_PREFIX_RE: Final = re.compile(r"/[A-Za-z0-9._+/-]*")
_DEAD_BOARD_S: Final = 30  # a board silent (powered off, unplugged) this long counts as gone; see _watch_tcp


class DeviceError(RuntimeError):
    """A board (or a board URL) problem, with a message that says what to do about it."""

    def __init__(self, reason: str, *, board: str | None = None) -> None:
        super().__init__(f"{board}: {reason}" if board else reason)
        self.board = board
        self.reason = reason


@dataclass(frozen=True)
class RunResult:
    """What a command did on one board."""

    exit_code: int  # -1: the board sent no exit status (the command was killed by a signal)
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class SshTarget:
    """One board: where to log in, and where EdgeKit is installed on it."""

    user: str
    host: str  # an IPv6 address without brackets
    port: int = 22
    prefix: str = DEFAULT_PREFIX

    @property
    def name(self) -> str:
        """``user@host:port``, the board's name in results and messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"ssh://{self.name}{self.prefix}"

    def remote_path(self, path: str) -> str:
        """``path`` on the board: relative paths are taken from the install prefix."""
        return posixpath.normpath(posixpath.join(self.prefix, path))


def parse_ssh_url(url: str) -> SshTarget:
    """``ssh://user@host[:port][/abs/prefix]`` -> SshTarget; a DeviceError showing that form if malformed."""

    def bad(why: str) -> DeviceError:
        return DeviceError(f"bad board URL {url!r}: {why}; expected {URL_FORM}")

    text = url.strip()
    if not text:
        raise bad("empty")
    try:
        parts = urlsplit(text)
    except ValueError as e:  # e.g. unbalanced [brackets]
        raise bad(str(e)) from None
    if parts.scheme != "ssh" or not text.startswith("ssh://"):
        raise bad("the scheme must be ssh://")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise bad("no ?query or #fragment allowed")
    if "@" not in parts.netloc:
        raise bad("no user (board logins are explicit: root@..., pi@...)")
    if parts.password is not None:
        raise bad("no password in URLs: use a key (identity) or an ssh agent")
    user = parts.username or ""
    if not _USER_RE.fullmatch(user):
        raise bad(f"bad user {user!r}")
    try:
        port = 22 if parts.port is None else parts.port
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise bad("the port must be a number from 1 to 65535")
    host = parts.hostname or ""
    if "[" in parts.netloc:
        try:
            host = str(ipaddress.IPv6Address(host))  # canonical form, so duplicates are spotted
        except ValueError:
            raise bad(f"[{host}] is not an IPv6 address") from None
    elif not _HOST_RE.fullmatch(host):
        raise bad(f"bad host {host!r}")
    prefix = parts.path or DEFAULT_PREFIX
    if not _PREFIX_RE.fullmatch(prefix) or ".." in prefix.split("/"):
        raise bad(f"the install prefix {prefix!r} must be an absolute path of plain characters, without '..'")
    return SshTarget(user=user, host=host, port=port, prefix=posixpath.normpath(prefix))


def parse_ssh_urls(urls: str) -> list[SshTarget]:
    """A comma-separated list of board URLs (``--device ssh://a@h1,ssh://b@h2``); each board once."""
    targets = [parse_ssh_url(item) for item in urls.split(",")]
    _check_unique(targets)
    return targets


def _check_unique(targets: Sequence[SshTarget]) -> None:
    seen: dict[tuple[str, int], SshTarget] = {}
    for target in targets:
        # One board is one host:port, whatever the login: installing twice at once would race.
        key = (target.host, target.port)
        if key in seen:
            raise DeviceError(f"board {target.url} is given twice (also as {seen[key].url})")
        seen[key] = target


def _fingerprint(key: Any) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _RejectUnknownHostKey(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]  # paramiko is untyped
    """Strict mode: a board that is not in known_hosts is refused, with the command that would add it."""

    def __init__(self, target: SshTarget, known_hosts: Path) -> None:
        self.target = target
        self.known_hosts = known_hosts

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        scan = f"ssh-keyscan -p {self.target.port} {shlex.quote(self.target.host)} >> {self.known_hosts}"
        raise DeviceError(
            f"unknown host key {_fingerprint(key)}: not in {self.known_hosts} and strict host key checking"
            f" is on (after checking the fingerprint on the board: {scan})",
            board=self.target.name,
        )


class _Board(Connection):  # type: ignore[misc]  # fabric is untyped
    """A Fabric Connection to one board, with EdgeKit's errors and an atomic, progress-reporting put.

    ``ThreadingGroup.put`` calls each member's ``put`` with the group call's arguments, so overriding it
    here is how a fleet upload gets per-board progress: Fabric's own ``Transfer.put`` has no callback.
    """

    def __init__(
        self,
        target: SshTarget,
        *,
        identity: Path | None,
        connect_timeout: float,
        io_timeout: float,
        strict_host_keys: bool,
        known_hosts: Path | None,
    ) -> None:
        config = Config(
            # An explicit, empty SSHConfig and lazy=True: read neither ~/.ssh/config nor Fabric's yaml files.
            ssh_config=paramiko.SSHConfig(),
            lazy=True,
            overrides={
                "run": {
                    "hide": True,  # output is returned per board, not interleaved on the terminal
                    "warn": True,  # a non-zero exit is a result, not an exception
                    "in_stream": False,  # worker threads must never read the host's stdin
                    # Fabric inlines env as `export K=V && cmd` without quoting, hence the quote here.
                    "env": {"EDGEKIT_PREFIX": shlex.quote(target.prefix)},
                },
            },
        )
        connect_kwargs: dict[str, Any] = {
            # Fabric rounds its connect_timeout down to whole seconds (0.5 -> no timeout): give paramiko
            # the float directly, for every phase of the handshake.
            "timeout": connect_timeout,
            "banner_timeout": connect_timeout,
            "auth_timeout": connect_timeout,
            "channel_timeout": connect_timeout,
        }
        if identity is not None:
            # Only this key: a test (or CI job) must not pick up the agent's or ~/.ssh's keys.
            connect_kwargs.update(key_filename=str(identity), look_for_keys=False, allow_agent=False)
        super().__init__(
            target.host,
            user=target.user,
            port=target.port,
            config=config,
            connect_kwargs=connect_kwargs,
            forward_agent=False,
            gateway=False,
        )
        # DataProxy would file unknown attributes into the config; _set makes them plain attributes.
        self._set(
            target=target,
            identity=identity,
            known_hosts=known_hosts,
            connect_timeout_s=connect_timeout,
            io_timeout=io_timeout,
            last_run_s=0.0,
        )
        if known_hosts is not None and known_hosts.exists():
            # "system" host keys are only read, never saved back (load_host_keys would write on each add).
            self.client.load_system_host_keys(str(known_hosts))
        if strict_host_keys:
            assert known_hosts is not None  # SshFleet checks this
            self.client.set_missing_host_key_policy(_RejectUnknownHostKey(target, known_hosts))
        else:
            # The base policy accepts an unknown key silently and stores it nowhere.
            self.client.set_missing_host_key_policy(paramiko.MissingHostKeyPolicy())

    def error(self, reason: str) -> DeviceError:
        return DeviceError(reason, board=self.target.name)

    def open(self) -> Any:
        """Connect if not connected; any failure becomes a DeviceError saying why."""
        if self.is_connected:
            return None
        try:
            result = super().open()
        except DeviceError:
            raise
        except Exception as e:
            self.client.close()  # paramiko leaves the transport thread of a refused handshake running
            raise self.error(self._connect_reason(e)) from e
        _watch_tcp(self.transport.sock)
        return result

    def close(self) -> None:
        """Fabric's close, which must also work on a connection that already died."""
        try:
            super().close()
        except (EOFError, OSError, paramiko.SSHException):
            # The board is gone, so the SFTP and channel goodbyes cannot be sent: just drop our side.
            self._sftp = None
            self.client.close()

    def _connect_reason(self, e: Exception) -> str:
        if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
            errors = list(e.errors.values())
            why = errors[0].strerror if errors and errors[0].strerror else str(e)
            return f"cannot connect: {why}"
        if isinstance(e, socket.gaierror):
            return f"cannot connect: cannot resolve {self.target.host}: {e.strerror}"
        if isinstance(e, (socket.timeout, TimeoutError)):
            return f"cannot connect: no answer in {self.connect_timeout_s:g}s"
        if isinstance(e, OSError) and e.strerror:
            return f"cannot connect: {e.strerror}"
        if isinstance(e, paramiko.PasswordRequiredException):
            return f"cannot use key {self.identity}: it needs a passphrase (use an ssh agent or a deploy key)"
        if isinstance(e, paramiko.BadHostKeyException):
            return (
                f"host key mismatch: the board offers {_fingerprint(e.key)} but {self.known_hosts} has"
                f" another key for it (reflashed? if so: ssh-keygen -f {self.known_hosts} -R"
                f" {shlex.quote(self._known_hosts_name())})"
            )
        if isinstance(e, paramiko.AuthenticationException):
            if self.identity is not None:
                return f"authentication failed (key {self.identity} rejected)"
            return "authentication failed (no key from the ssh agent or ~/.ssh accepted; pass an identity)"
        if isinstance(e, EOFError) or "banner" in str(e):
            return (
                "the board closed the connection before the SSH handshake (not an SSH server,"
                " or sshd turned us away: MaxStartups, a firewall or fail2ban?)"
            )
        if self.identity is not None and "private key" in str(e):
            return f"cannot load key {self.identity}: {_one_line(e)}"
        return f"cannot connect: {_one_line(e)}"

    def _known_hosts_name(self) -> str:
        return self.target.host if self.target.port == 22 else f"[{self.target.host}]:{self.target.port}"

    def run(self, command: str, **kwargs: Any) -> Any:
        """Fabric's run, timed: see ``SshFleet._run_result`` for why the duration matters."""
        started = time.monotonic()
        try:
            return super().run(command, **kwargs)
        finally:
            self._set(last_run_s=time.monotonic() - started)

    def put(
        self,
        local: Path | str,
        remote: str = "",
        *,
        progress: Progress | None = None,
        preserve_mode: bool = True,
    ) -> Any:
        """Upload ``local`` to ``remote`` (relative: under the install prefix; ending in '/': a directory).

        The bytes go to a temporary name beside the destination, which is renamed over it once complete,
        so a dropped transfer never leaves a half-written file under the final name.
        """
        local = Path(local)
        size = local.stat().st_size
        if not remote or remote.endswith("/"):
            remote += local.name
        dest = self.target.remote_path(remote)
        parent, base = posixpath.split(dest)
        part = posixpath.join(parent, f".{base}.edgekit-part-{secrets.token_hex(4)}")
        self.open()
        sftp: Any = None
        try:
            sftp = self.sftp()
            # A board that stops answering mid-transfer must fail the upload, not hang the fleet.
            sftp.get_channel().settimeout(self.io_timeout)
            _sftp_makedirs(sftp, parent)
            name = self.target.name

            def report(done: int, total: int) -> None:
                if progress is not None:
                    progress(name, done, total)

            report(0, size)
            with local.open("rb") as f:
                sftp.putfo(f, part, file_size=size, callback=report, confirm=True)
            if preserve_mode:
                sftp.chmod(part, stat.S_IMODE(local.stat().st_mode))
            # posix-rename replaces an existing file atomically; plain SFTP rename refuses to.
            sftp.posix_rename(part, dest)
        except Exception as e:
            raise self._upload_error(e, sftp, part, dest) from e
        return TransferResult(
            local=str(local), orig_local=local, remote=dest, orig_remote=remote, connection=self
        )

    def _upload_error(self, e: Exception, sftp: Any, part: str, dest: str) -> DeviceError:
        if self.dropped(e):
            self.close()  # forget the dead SFTP session; the next operation reconnects
            return self.error(f"connection dropped during upload to {dest}")
        if sftp is not None:
            try:
                sftp.remove(part)
            except Exception:  # best effort: the part file may not exist yet
                pass
        if isinstance(e, (socket.timeout, TimeoutError)):
            self.close()
            return self.error(f"upload to {dest} stalled: no reply from the board for {self.io_timeout:g}s")
        if isinstance(e, OSError) and e.strerror:
            return self.error(f"upload to {dest} failed: {e.strerror}")
        return self.error(f"upload to {dest} failed: {_one_line(e)}")

    def dropped(self, e: BaseException | None = None) -> bool:
        """Whether the SSH connection died (the error, if any, is the symptom)."""
        if isinstance(e, (EOFError, ConnectionError)):
            return True
        return not self.is_connected


def _watch_tcp(sock: object) -> None:
    """Make the kernel drop the connection of a board that went silent, so that nothing waits forever.

    A board that loses power sends no FIN or RST: without this, a command run without a timeout would
    wait for it forever (ThreadingGroup joins its threads without a timeout). Keepalive probes catch an
    idle link (they also keep NAT state alive); TCP_USER_TIMEOUT catches data that is never acknowledged.
    A board that is alive but busy still answers both from its kernel, so long silent commands are fine.
    """
    if not isinstance(sock, socket.socket):  # a proxy command or a gateway channel: not ours to tune
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = {
        "TCP_KEEPIDLE": _DEAD_BOARD_S // 3,
        "TCP_KEEPINTVL": _DEAD_BOARD_S // 6,
        "TCP_KEEPCNT": 4,
        "TCP_USER_TIMEOUT": _DEAD_BOARD_S * 1000,  # milliseconds
    }
    for name, value in options.items():
        if hasattr(socket, name):  # Linux has them all; other hosts get what they offer
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _sftp_makedirs(sftp: Any, path: str) -> None:
    """``mkdir -p`` over SFTP."""
    try:
        if stat.S_ISDIR(sftp.stat(path).st_mode):
            return
        raise NotADirectoryError(20, "Not a directory", path)
    except FileNotFoundError:
        pass
    parent = posixpath.dirname(path)
    if parent != path:
        _sftp_makedirs(sftp, parent)
    sftp.mkdir(path)


class SshProcess:
    """A command running on one board in the foreground (``SshFleet.start``), with a pseudo-terminal as
    ``ssh -t`` gives it: its output (stdout and stderr together, as a terminal shows them) line by line,
    ``interrupt()`` is Ctrl-C typed into that terminal (SIGINT to the command), and closing the session
    hangs the terminal up (SIGHUP), so the command never outlives the connection, even if the host dies."""

    def __init__(self, board: _Board, command: str) -> None:
        board.open()
        try:
            channel = board.client.get_transport().open_session(timeout=board.connect_timeout_s)
            channel.get_pty(term="dumb", width=500, height=24)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as e:
            board.client.close()
            raise board.error(f"cannot start a command: {_one_line(e)}") from e
        self.board = board.target.name
        self._channel = channel

    def lines(self) -> Iterator[str]:
        """Its output, line by line, until it ends or the connection drops."""
        pending = b""
        while True:
            try:
                data = self._channel.recv(1 << 16)
            except (OSError, EOFError, paramiko.SSHException):
                data = b""
            if not data:
                break
            *complete, pending = (pending + data).split(b"\n")
            for line in complete:
                # The terminal echoes a Ctrl-C sent by interrupt() as "^C".
                yield line.rstrip(b"\r").removeprefix(b"^C").decode(errors="replace")
        if pending:
            yield pending.rstrip(b"\r").decode(errors="replace")

    def interrupt(self) -> None:
        """Ctrl-C: the board's terminal sends SIGINT to the command."""
        try:
            self._channel.send(b"\x03")
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the connection is gone, and with it the command (hung up)

    def wait(self, timeout: float | None = None) -> int | None:
        """Its exit status (-1: the board sent none: killed by a signal, or the connection dropped), or
        None when it still runs after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._channel.exit_status_ready():
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
        status: int = self._channel.recv_exit_status()
        return status

    def close(self) -> None:
        """End the session: the board hangs up the command's terminal if it still runs."""
        try:
            self._channel.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass


class SshFleet:
    """Several boards driven at once through Fabric's ``ThreadingGroup``; one board's failure is a result.

    ``identity``: the private key file to log in with (default: the ssh agent, then ``~/.ssh/id_*``).
    ``connect_timeout``: seconds for each phase of connecting (TCP, SSH banner, authentication).
    ``io_timeout``: seconds an upload may wait for the board to acknowledge data before it fails.
    ``strict_host_keys`` and ``known_hosts`` (read, never written; None: none): see the module docstring.
    """

    def __init__(
        self,
        targets: Sequence[SshTarget],
        *,
        identity: Path | None = None,
        connect_timeout: float = 10.0,
        io_timeout: float = 60.0,
        strict_host_keys: bool = False,
        known_hosts: Path | None = DEFAULT_KNOWN_HOSTS,
    ) -> None:
        if not targets:
            raise DeviceError("no board given")
        _check_unique(targets)
        if identity is not None and not identity.is_file():
            raise DeviceError(f"identity (private key) {identity} does not exist")
        if known_hosts is not None:
            known_hosts = known_hosts.expanduser()
        if strict_host_keys and (known_hosts is None or not known_hosts.is_file()):
            raise DeviceError(f"strict host key checking needs a known_hosts file: {known_hosts} is missing")
        self.targets = list(targets)
        self._boards = [
            _Board(
                target,
                identity=identity,
                connect_timeout=connect_timeout,
                io_timeout=io_timeout,
                strict_host_keys=strict_host_keys,
                known_hosts=known_hosts,
            )
            for target in self.targets
        ]
        self._group = ThreadingGroup.from_connections(self._boards)

    def _fan_out(self, method: str, *args: Any, **kwargs: Any) -> dict[_Board, Any]:
        """Call ``method`` on every board in parallel; {board: return value or exception}."""
        call = getattr(self._group, method)
        try:
            results: Mapping[Any, Any] = call(*args, **kwargs)
        except GroupException as e:
            # Some boards failed: the GroupResult inside still maps every board to its value or exception.
            results = e.result
        # GroupResult keys compare by (host, user, port), which _check_unique made unique.
        return {board: results[board] for board in self._boards}

    def run(self, command: str, *, timeout: float | None = None) -> dict[str, RunResult | Exception]:
        """Run ``command`` (a shell line; ``$EDGEKIT_PREFIX`` is the board's prefix) on every board.

        ``timeout``: seconds before the command is abandoned (its channel closed). Returns, in board
        order, a RunResult per board that ran it (any exit code) or the exception that stopped it.
        """
        results: dict[str, RunResult | Exception] = {}
        for board, value in self._fan_out("run", command, timeout=timeout).items():
            results[board.target.name] = self._run_result(board, value, timeout)
        return results

    @staticmethod
    def _run_result(board: _Board, value: Any, timeout: float | None) -> RunResult | Exception:
        if isinstance(value, DeviceError):
            return value
        if isinstance(value, CommandTimedOut):
            return board.error(f"command timed out after {timeout:g}s")
        if isinstance(value, BaseException):
            if board.dropped(value):
                board.close()
                return board.error("connection dropped while running the command")
            error = board.error(f"running the command failed: {_one_line(value)}")
            error.__cause__ = value
            return error
        if value.exited == -1:
            # No exit status: the connection went away, the command timed out (invoke checks for that
            # while its timer thread may still be closing the channel, and then returns this result
            # instead of raising CommandTimedOut), or the command died of a signal.
            if board.dropped():
                board.close()
                return board.error("connection dropped while running the command")
            if timeout is not None and board.last_run_s >= timeout:
                return board.error(f"command timed out after {timeout:g}s")
        return RunResult(exit_code=value.exited, stdout=value.stdout, stderr=value.stderr)

    def put(
        self, local: Path, remote: str, *, progress: Progress | None = None
    ) -> dict[str, Exception | None]:
        """Upload ``local`` to ``remote`` on every board in parallel (see ``_Board.put`` for paths).

        ``progress(board, done, total)`` is called from the worker threads, from (0, total) up to
        (total, total) on success. Returns {board: None (uploaded) or the exception}.
        """
        local = Path(local)
        if not local.is_file():
            raise DeviceError(f"cannot upload {local}: not a file")
        results: dict[str, Exception | None] = {}
        for board, value in self._fan_out("put", local, remote, progress=progress).items():
            if isinstance(value, Exception):
                results[board.target.name] = value
            elif isinstance(value, BaseException):  # e.g. KeyboardInterrupt in a worker: not a board's fault
                raise value
            else:
                results[board.target.name] = None
        return results

    def start(self, command: str) -> SshProcess:
        """Start ``command`` (a shell line) on the fleet's one board and return while it runs (see
        SshProcess): for servers, e.g. remote_server under invoke serve."""
        if len(self._boards) != 1:
            raise DeviceError(f"a foreground command runs on one board, not {len(self._boards)}")
        return SshProcess(self._boards[0], command)

    @property
    def names(self) -> list[str]:
        """The boards' names, in order: the keys of every result."""
        return [target.name for target in self.targets]

    def close(self) -> None:
        self._group.close()

    def __enter__(self) -> SshFleet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _detail(value: RunResult | BaseException | None) -> tuple[bool, str]:
    if value is None:
        return True, "done"
    if isinstance(value, RunResult):
        if value.exit_code == -1:
            return False, "no exit status (killed by a signal?)"
        detail = f"exit code {value.exit_code}"
        last = value.stderr.strip().splitlines()
        if not value.ok and last:
            detail += f": {' '.join(last[-1].split())}"
        return value.ok, detail
    if isinstance(value, DeviceError):
        return False, " ".join(value.reason.split())
    return False, _one_line(value)


def format_table(results: Mapping[str, RunResult | BaseException | None]) -> str:
    """The per-board result table, plain text for terminals and CI logs: a header, one line per board
    (name, ``ok``/``FAILED``, exit code or error on one line), and a count, e.g.

    | board                status  detail
    | root@10.0.0.7:22     ok      exit code 0
    | root@10.0.0.8:22     FAILED  cannot connect: Connection refused
    | 1 ok, 1 FAILED
    """
    rows = [("board", "status", "detail")]
    failed = 0
    for name, value in results.items():
        ok, detail = _detail(value)
        failed += not ok
        rows.append((name, "ok" if ok else "FAILED", detail))
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{b:<{width[0]}}  {s:<{width[1]}}  {d}".rstrip() for b, s, d in rows]
    lines.append(f"{len(results) - failed} ok, {failed} FAILED")
    return "\n".join(lines)
