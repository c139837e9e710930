"""Paired remote_server sessions (docs/remote-protocol.md, "Listening beyond loopback"): a server off
loopback needs a pairing key; a session must prove it holds the key, and every frame after the pairing
is sealed (XChaCha20-Poly1305 through libsodium), so a changed byte in transit ends the session."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import edgekit as ek
from edgekit.app import SERVER, binary
from edgekit.remote import make_key
from models import INPUT_NAME, compile_ekm, input_shape_of, random_input

SODIUM = Path("/usr/lib/x86_64-linux-gnu/libsodium.so.23")


def _server_path() -> str:
    path = binary(SERVER)
    assert path is not None, "the edgekit package has no remote_server"
    return str(path)


@contextmanager
def server(*flags: str) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    proc = subprocess.Popen(
        [_server_path(), "--port", "0", *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, (line, proc.stderr.read() if proc.stderr else "")
        yield int(line.rsplit(":", 1)[1]), proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "board.key"
    make_key(path)
    return path


def test_make_key_writes_an_owner_only_key_and_never_overwrites(key: Path) -> None:
    text = key.read_text()
    assert len(text.strip()) == 64 and int(text, 16) >= 0
    assert key.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ek.SystemCallError, match="File exists"):
        make_key(key)
    second = key.parent / "other.key"
    make_key(second)
    assert second.read_text() != text  # random, not derived from anything


def test_an_unpaired_server_refuses_a_network_address_and_says_how_to_pair() -> None:
    argv = [_server_path(), "--host", "0.0.0.0", "--port", "0"]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 1
    assert "refusing to listen on '0.0.0.0'" in done.stderr
    assert "ssh://" in done.stderr and "--make-key" in done.stderr and "--key" in done.stderr


def test_a_paired_server_off_loopback_runs_a_model_for_a_client_holding_the_key(key: Path) -> None:
    name = "mlp"
    x = random_input(input_shape_of(name))
    with ek.Context(device=0) as ctx:
        (local,) = ctx.load_model(compile_ekm(name)).network().create_request().run({INPUT_NAME: x})
    with server("--host", "0.0.0.0", "--key", str(key)) as (port, proc):
        with ek.Device(f"tcp://127.0.0.1:{port}", key_file=key) as dev, ek.Context(device=dev) as ctx:
            (remote,) = ctx.load_model(compile_ekm(name)).network().create_request().run({INPUT_NAME: x})
            payload = np.arange(3 << 20, dtype=np.uint8)  # a few MiB: several sealed chunks each way
            with dev.malloc(payload.nbytes) as mem:
                mem.write(payload)
                assert np.array_equal(np.frombuffer(mem.read(), np.uint8), payload)
        proc.terminate()
        assert proc.stderr is not None
        log = proc.stderr.read()
    assert np.array_equal(remote, local)
    assert "paired" in log


def test_clients_without_the_key_or_with_another_are_refused(key: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    make_key(other)
    with server("--host", "0.0.0.0", "--key", str(key)) as (port, _):
        url = f"tcp://127.0.0.1:{port}"
        with pytest.raises(ek.ConnectionLostError, match="requires a pairing key"):
            ek.Device(url)
        with pytest.raises(ek.ConnectionLostError, match="authentication failed"):
            ek.Device(url, key_file=other)
        other.chmod(0o644)
        with pytest.raises(ek.SystemCallError, match="chmod 600"):
            ek.Device(url, key_file=other)
        with ek.Device(url, key_file=key) as dev:  # the server is unharmed
            assert dev.remote_info is not None


def test_a_key_for_an_unpaired_server_is_refused(key: Path) -> None:
    with server() as (port, _), pytest.raises(ek.ConnectionLostError, match="no pairing key"):
        ek.Device(f"tcp://127.0.0.1:{port}", key_file=key)


@contextmanager
def tampering_proxy(target: int, flip_after: int) -> Iterator[int]:
    """A TCP proxy to 127.0.0.1:target that flips one bit of the client's stream at byte `flip_after`."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pump(src: socket.socket, dst: socket.socket, flip: int | None) -> None:
        seen = 0
        try:
            while data := src.recv(65536):
                if flip is not None and seen <= flip < seen + len(data):
                    changed = bytearray(data)
                    changed[flip - seen] ^= 0x01
                    data = bytes(changed)
                seen += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def accept() -> None:
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", target))
        threading.Thread(target=pump, args=(client, upstream, flip_after), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, None), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_a_changed_byte_in_a_sealed_frame_ends_the_session(key: Path) -> None:
    with server("--host", "0.0.0.0", "--key", str(key)) as (port, proc):
        # PAIR is 24 + 4 + 8 + 16 + 8 + 32 = 92 bytes in the clear; HELLO, sealed, follows: flip inside it.
        with tampering_proxy(port, flip_after=92 + 24 + 3) as proxy:
            with pytest.raises(ek.ConnectionLostError) as caught:
                ek.Device(f"tcp://127.0.0.1:{proxy}", key_file=key, connect_timeout=5)
        assert "closed the connection" in str(caught.value) or "failed" in str(caught.value)
        with ek.Device(f"tcp://127.0.0.1:{port}", key_file=key) as dev:  # other sessions go on
            assert dev.remote_info is not None
        proc.terminate()
        assert proc.stderr is not None
        assert "failed authentication" in proc.stderr.read()


pytestmark = pytest.mark.skipif(
    not SODIUM.exists() and not os.path.exists("/usr/lib/aarch64-linux-gnu/libsodium.so.23"),
    reason="libsodium23 is not installed (apt install libsodium23; quickstart.sh does)",
)
