"""The SSH route to a board's remote_server: ``ek.Device("ssh://user@board")``.

remote_server listens on the board's loopback only; the host reaches it through an SSH ``direct-tcpip``
channel (what ``ssh -L`` uses), so authentication and encryption are SSH's. The C runtime speaks the
remote protocol over one end of a socket pair; a thread here moves bytes between the other end and the
channel. Closing the device (the C side closes its end) ends the thread, the channel and the SSH session.

Paired servers (``remote_server --key FILE``, for listening beyond loopback) take ``key_file=`` instead;
``make_key(path)`` writes a new key, as ``remote_server --make-key`` does.

Host keys are checked as ``invoke flash`` checks them: a key listed in ``known_hosts`` must match (a
mismatch is refused); an unlisted board is accepted for this session and nothing is written, unless
``strict_host_keys=True``, which refuses it. ``~/.ssh/config`` is not read. Without ``identity`` the keys
are found as OpenSSH finds them: the ssh agent, then ``~/.ssh/id_*``. Needs ``paramiko``
(``pip install paramiko``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import select
import socket
import threading
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
    socket pair. ``fd`` is the end for the C runtime (it takes it over); ``close()`` ends everything."""

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
        try:
            import paramiko  # type: ignore[import-untyped]  # paramiko is untyped
        except ImportError:
            raise ConnectionLostError(
                f"{url}: ssh:// devices need paramiko, which is not installed (pip install paramiko)"
            ) from None
        if not 1 <= server_port <= 65535:
            raise InvalidArgumentError(f"server_port must be 1 .. 65535, got {server_port}")
        self.target = parse_ssh_url(url)
        self.label = f"{self.target.name} (remote_server port {server_port})"
        hosts = Path(known_hosts if known_hosts is not None else DEFAULT_KNOWN_HOSTS).expanduser()
        client = paramiko.SSHClient()
        if hosts.exists():
            client.load_system_host_keys(str(hosts))  # read only: nothing is ever written back
        elif strict_host_keys:
            raise ConnectionLostError(f"{self.target.name}: strict_host_keys=True but {hosts} does not exist")
        target = self.target

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
            kwargs.update(key_filename=str(identity), look_for_keys=False, allow_agent=False)
        try:
            client.connect(self.target.host, port=self.target.port, username=self.target.user, **kwargs)
        except ConnectionLostError:
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            raise ConnectionLostError(
                f"{self.target.name}: host key mismatch: {hosts} has another key for this board (reflashed? "
                f"then: ssh-keygen -f {hosts} -R {self.target.host})"
            ) from e
        except paramiko.AuthenticationException as e:
            client.close()
            which = f"key {identity}" if identity is not None else "no key from the ssh agent or ~/.ssh"
            raise ConnectionLostError(
                f"{self.target.name}: SSH authentication failed ({which} accepted)"
            ) from e
        except (OSError, paramiko.SSHException, EOFError) as e:
            client.close()
            raise ConnectionLostError(f"{self.target.name}: cannot connect over SSH: {e}") from e
        try:
            channel = client.get_transport().open_channel(
                "direct-tcpip", ("127.0.0.1", server_port), ("127.0.0.1", 0), timeout=connect_timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as e:
            client.close()
            raise ConnectionLostError(
                f"{self.target.name}: SSH works, but the board refused a channel to 127.0.0.1:{server_port} "
                f"({e}): is remote_server running there? (invoke serve --device {self.target.name}, or "
                "systemctl start edgekit-remote-server)"
            ) from e
        # SSH keepalives notice a board that vanished while a call waits on it (the C side's TCP
        # keepalive sees only this end of the socket pair).
        client.get_transport().set_keepalive(15)
        self._client = client
        self._channel = channel
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = ours
        self.fd = theirs.detach()
        self._thread = threading.Thread(
            target=self._pump, name=f"edgekit-ssh {self.target.name}", daemon=True
        )
        self._thread.start()

    def _pump(self) -> None:
        """Move bytes both ways until either side closes."""
        sock, channel = self._sock, self._channel
        try:
            while True:
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
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        for close in (self._sock.close, self._channel.close, self._client.close):
            try:
                close()
            except (OSError, EOFError):
                pass

    def close(self) -> None:
        """End the bridge and the SSH session (the C side closes its own end)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._shutdown()
