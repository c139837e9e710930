"""A throwaway OpenSSH server for the SSH device tests: a "board" on 127.0.0.1 that lives for one test.

Every server gets a fresh ed25519 host key and a fresh client key pair in its own directory, accepts only
that client key, and never reads the machine's sshd_config, host keys or anyone's ~/.ssh. It listens on
127.0.0.1 only, so a test can never expose a root login to the network.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start as root without it (Debian creates it at boot)
START_TIMEOUT = 10.0


def available() -> str | None:
    """Why a throwaway sshd cannot run here, or None when it can (for ``pytest.skip``)."""
    if not SSHD.exists():
        return f"{SSHD} is not installed (apt-get install openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is not installed (apt-get install openssh-client)"
    if os.geteuid() != 0:
        # As non-root sshd can only log in its own user and cannot create the privilege separation dir.
        return "the throwaway sshd needs root"
    return None


@dataclass
class Sshd:
    """A running throwaway sshd: connect to ``127.0.0.1:port`` with ``client_key``."""

    port: int
    client_key: Path
    host_key_line: str  # "ssh-ed25519 AAAA...", for known_hosts files in host-key tests
    log: Path
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """Kill the server and every session it forked, as a board losing power would drop its links."""
        # Killing only the listener leaves the per-connection sshd processes (and so the sessions) alive.
        pids = [*descendants(self.process.pid), self.process.pid]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=5)


def descendants(root: int) -> list[int]:
    """Process ids below ``root`` (children first is not needed: all get SIGKILL)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # The command name may contain spaces and parentheses: fields restart after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def _wait_ready(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Until the port answers with an SSH banner; bounded, and fails fast if sshd exits."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                if s.recv(8).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"sshd not answering on 127.0.0.1:{port} after {START_TIMEOUT}s:\n{log.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    sessions = descendants(process.pid)
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
    # Sessions outlive the listener; a client that forgot to close would keep them (and the test) around.
    for pid in sessions:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextmanager
def sshd_server(workdir: Path, *, client_key: Path | None = None) -> Iterator[Sshd]:
    """Start a throwaway sshd on 127.0.0.1 with its keys and config under ``workdir``; stop it on exit.

    It accepts ``client_key`` (whose public half is ``<client_key>.pub``), or a fresh key made for it, so
    several servers can be one fleet logged into with one key.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    host_key = workdir / "host_ed25519"
    _keygen(host_key, "edgekit-test-host")
    if client_key is None:
        client_key = workdir / "client_ed25519"
        _keygen(client_key, "edgekit-test-client")
    authorized = workdir / "authorized_keys"
    shutil.copyfile(client_key.with_suffix(".pub"), authorized)
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    log = workdir / "sshd.log"

    # The free port is only reserved until we close the probe socket: retry if sshd loses the race.
    for _attempt in range(3):
        port = free_port()
        config = workdir / "sshd_config"
        config.write_text(
            f"""\
ListenAddress 127.0.0.1:{port}
AddressFamily inet
HostKey {host_key}
AuthorizedKeysFile {authorized}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile {workdir / "sshd.pid"}
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""
        )
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_ready(process, port, log)
        except RuntimeError:
            _stop(process)
            if "Address already in use" in log.read_text():
                continue
            raise
        break
    else:
        raise RuntimeError(f"sshd could not bind a free port:\n{log.read_text()}")

    server = Sshd(
        port=port,
        client_key=client_key,
        host_key_line=" ".join(host_key.with_suffix(".pub").read_text().split()[:2]),
        log=log,
        process=process,
    )
    try:
        yield server
    finally:
        _stop(process)
