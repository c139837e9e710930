"""The SSH route to a board's remote_server: ``ek.Device("ssh://user@board")``.

remote_server listens on the board's loopback only; the host reaches it through an SSH ``direct-tcpip``
channel (what ``ssh -L`` uses), so authentication and encryption are SSH's. The C runtime speaks the
remote protocol over one end of a socket pair; a helper process (this module, run by the same Python)
holds the SSH session and moves bytes between the other end and the channel. Closing the device (the C
side closes its end) ends the helper, the channel and the SSH session.

Why a process and not a thread: paramiko runs in Python, so a thread of this process would need the GIL
to move each request, while the C call waiting for the reply may hold it (most calls on a device do):
every such call would wait for its reply timeout. The helper has its own interpreter.

Paired servers (``remote_server --key FILE``, for listening beyond loopback) take ``key_file=`` instead;
``make_key(path)`` writes a new key, as ``remote_server --make-key`` does.

Host keys are checked as ``invoke flash`` checks them: a key listed in ``known_hosts`` must match (a
mismatch is refused); an unlisted board is accepted for this session and nothing is written, unless
``strict_host_keys=True``, which refuses it. ``~/.ssh/config`` is not read. Without ``identity`` the keys
are found as OpenSSH finds them: the ssh agent, then ``~/.ssh/id_*``. Needs ``paramiko``
(``pip install paramiko``).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from edgekit._core import make_key
from edgekit.errors import ConnectionLostError, InvalidArgumentError

__all__ = ["DEFAULT_SERVER_PORT", "SshTarget", "SshTunnel", "make_key", "parse_ssh_url"]

DEFAULT_SERVER_PORT: Final = 9090
DEFAULT_KNOWN_HOSTS: Final = Path("~/.ssh/known_hosts")
URL_FORM: Final = "ssh://user@host[:ssh-port], e.g. ssh://root@192.168.1.20 or ssh://root@[::1]:2222"
_HOST_RE: Final = re.compile(r"[A-Za-z0-9._-]+")
_USER_RE: Final = re.compile(r"[A-Za-z0-9._-][A-Za-z0-9._@-]*")
_CHUNK: Final = 1 << 20


@dataclass(frozen=True)
class SshTarget:
    user: str
    host: str
    port: int

    @property
    def name(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{self.user}@{host}:{self.port}"


def parse_ssh_url(url: str) -> SshTarget:
    """``ssh://user@host[:port][/prefix]`` (the prefix, as in flash URLs, is ignored here)."""

    def bad(why: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"bad device URL {url!r}: {why}; expected {URL_FORM}")

    try:
        parts = urlsplit(url.strip())
    except ValueError as e:
        raise bad(str(e)) from None
    if parts.scheme != "ssh":
        raise bad("the scheme must be ssh://")
    if parts.query or parts.fragment:
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
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise bad(f"[{host}] is not an IPv6 address") from None
    elif not _HOST_RE.fullmatch(host):
        raise bad(f"bad host {host!r}")
    return SshTarget(user, host, port)


class SshTunnel:
    """An SSH session to a board with one ``direct-tcpip`` channel to its remote_server, bridged to a
    socket pair by a helper process. ``fd`` is the end for the C runtime (it takes it over and closes it);
    ``close()`` then waits for the helper to end the channel and the session."""

    def __init__(
        self,
        url: str,
        *,
        server_port: int = DEFAULT_SERVER_PORT,
        identity: str | os.PathLike[str] | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        strict_host_keys: bool = False,
        connect_timeout: float = 10.0,
    ) -> None:
        if importlib.util.find_spec("paramiko") is None:
            raise ConnectionLostError(
                f"{url}: ssh:// devices need paramiko, which is not installed (pip install paramiko)"
            )
        if not 1 <= server_port <= 65535:
            raise InvalidArgumentError(f"server_port must be 1 .. 65535, got {server_port}")
        self.target = parse_ssh_url(url)
        self.label = f"{self.target.name} (remote_server port {server_port})"
        hosts = Path(known_hosts if known_hosts is not None else DEFAULT_KNOWN_HOSTS).expanduser()
        if strict_host_keys and not hosts.exists():
            raise ConnectionLostError(f"{self.target.name}: strict_host_keys=True but {hosts} does not exist")
        request = {
            "url": url,
            "server_port": server_port,
            "identity": None if identity is None else os.fspath(identity),
            "known_hosts": str(hosts),
            "strict_host_keys": strict_host_keys,
            "connect_timeout": connect_timeout,
        }
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        package_parent = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
        try:
            # Its own session: a Ctrl-C meant for this program must not cut the link under it.
            self._process = subprocess.Popen(
                [sys.executable, "-c", "import edgekit.remote as r; r._helper_main()", str(theirs.fileno())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            ours.close()
            raise ConnectionLostError(f"{self.target.name}: cannot start the SSH helper: {e}") from e
        finally:
            theirs.close()
        # Every phase of connecting has connect_timeout; the helper's own start is the rest.
        error = self._answer(request, 4 * connect_timeout + 30)
        if error is not None:
            ours.close()
            self.close()
            raise ConnectionLostError(error)
        self.fd = ours.detach()

    def _answer(self, request: dict[str, Any], timeout: float) -> str | None:
        """Send the helper its request; None once it has the channel open, else why it has not."""
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(request).encode() + b"\n")
            process.stdin.close()
            ready, _, _ = select.select([process.stdout], [], [], timeout)
            line = process.stdout.readline() if ready else b""
        except OSError:
            line = b""
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            process.kill()
            what = f"no answer in {timeout:g}s" if process.poll() is None else f"exit status {process.wait()}"
            return f"{self.target.name}: the SSH helper process failed ({what})"
        return None if answer.get("ok") else str(answer.get("error"))

    def close(self) -> None:
        """After the C side closed its end: wait for the helper to close the channel and the SSH session
        (it is killed if it has not ended in a few seconds)."""
        process = self._process
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _connect(
    url: str,
    server_port: int,
    identity: str | None,
    known_hosts: str,
    strict_host_keys: bool,
    connect_timeout: float,
) -> tuple[Any, Any]:
    """In the helper: the SSH session and its channel to the board's 127.0.0.1:server_port."""
    import paramiko  # type: ignore[import-untyped]  # paramiko is untyped

    target = parse_ssh_url(url)
    hosts = Path(known_hosts)
    client = paramiko.SSHClient()
    if hosts.exists():
        client.load_system_host_keys(str(hosts))  # read only: nothing is ever written back

    class _Strict(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            raise ConnectionLostError(
                f"{target.name}: unknown host key ({key.get_name()}), not in {hosts}, and "
                f"strict_host_keys is on (after checking it on the board: ssh-keyscan -p {target.port} "
                f"{target.host} >> {hosts})"
            )

    client.set_missing_host_key_policy(_Strict() if strict_host_keys else paramiko.MissingHostKeyPolicy())
    kwargs: dict[str, Any] = {
        "timeout": connect_timeout,
        "banner_timeout": connect_timeout,
        "auth_timeout": connect_timeout,
        "channel_timeout": connect_timeout,
    }
    if identity is not None:
        kwargs.update(key_filename=identity, look_for_keys=False, allow_agent=False)
    try:
        client.connect(target.host, port=target.port, username=target.user, **kwargs)
    except ConnectionLostError:
        client.close()
        raise
    except paramiko.BadHostKeyException as e:
        client.close()
        raise ConnectionLostError(
            f"{target.name}: host key mismatch: {hosts} has another key for this board (reflashed? "
            f"then: ssh-keygen -f {hosts} -R {target.host})"
        ) from e
    except paramiko.AuthenticationException as e:
        client.close()
        which = f"key {identity}" if identity is not None else "no key from the ssh agent or ~/.ssh"
        raise ConnectionLostError(f"{target.name}: SSH authentication failed ({which} accepted)") from e
    except (OSError, paramiko.SSHException, EOFError) as e:
        client.close()
        raise ConnectionLostError(f"{target.name}: cannot connect over SSH: {e}") from e
    try:
        channel = client.get_transport().open_channel(
            "direct-tcpip", ("127.0.0.1", server_port), ("127.0.0.1", 0), timeout=connect_timeout
        )
    except (paramiko.SSHException, OSError, EOFError) as e:
        client.close()
        raise ConnectionLostError(
            f"{target.name}: SSH works, but the board refused a channel to 127.0.0.1:{server_port} "
            f"({e}): is remote_server running there? (invoke serve --device {target.name}, or "
            "systemctl start edgekit-remote-server)"
        ) from e
    # SSH keepalives notice a board that vanished while a call waits on it (the C side's TCP keepalive
    # sees only its end of the socket pair).
    client.get_transport().set_keepalive(15)
    # Small frames both ways, each awaited: no Nagle on this side (see _pump for the other side).
    client.get_transport().sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, channel


def _pump(sock: socket.socket, channel: Any) -> None:
    """In the helper: move bytes both ways until either side closes.

    sshd keeps Nagle's algorithm on for sessions without a terminal, so when the board sends two frames
    in a row (a launch's reply, then its completion) the second waits for this side's ACK of the first,
    which Linux delays up to 40 ms: every launch took 44 ms more. Quick ACKs, re-armed on every wake-up
    (the kernel leaves quick-ACK mode by itself), remove the wait."""
    quickack = getattr(socket, "TCP_QUICKACK", None)  # Linux
    tcp = channel.get_transport().sock
    try:
        while True:
            if quickack is not None:
                tcp.setsockopt(socket.IPPROTO_TCP, quickack, 1)
            readable, _, _ = select.select([sock, channel], [], [])
            if sock in readable:
                data = sock.recv(_CHUNK)
                if not data:
                    break
                channel.sendall(data)
            if channel in readable:
                data = channel.recv(_CHUNK)
                if not data:
                    break
                sock.sendall(data)
    except (OSError, EOFError):
        pass


def _helper_main() -> None:
    """The helper process: ``python -c ... FD``, its request (SshTunnel's arguments) as a JSON line on
    stdin; answers {"ok": true} or {"error": message} on stdout, then bridges FD and the channel."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    request = json.loads(sys.stdin.readline())
    try:
        client, channel = _connect(**request)
    except Exception as e:  # every failure becomes the parent's ConnectionLostError, with this message
        message = (
            e.message if isinstance(e, ConnectionLostError) else f"{request.get('url')}: SSH failed: {e!r}"
        )
        print(json.dumps({"error": message}), flush=True)
        return
    print(json.dumps({"ok": True}), flush=True)
    try:
        _pump(sock, channel)
    finally:
        for close in (sock.close, channel.close, client.close):
            try:
                close()
            except (OSError, EOFError):
                pass
