"""Boards over SSH (edgekit_packaging.ssh): a fleet of throwaway sshd "boards" on 127.0.0.1.

Every "board" is this machine, logged into as root through its own sshd, with its own install prefix under
the test's tmp dir, so what a board received can also be checked on the local file system.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import platform
import pwd
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# packaging/ itself must not be importable as a package: it would shadow PyPI's `packaging`.

from edgekit_packaging.ssh import (  # noqa: E402
    DeviceError,
    RunResult,
    SshFleet,
    SshTarget,
    format_table,
    parse_ssh_url,
    parse_ssh_urls,
)
from sshd import Sshd, available, sshd_server  # noqa: E402

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

USER = getpass.getuser()
HOME = pwd.getpwnam(USER).pw_dir
MiB = 1 << 20
CONNECT_TIMEOUT = 5.0


def target(board: Sshd) -> SshTarget:
    return SshTarget(USER, "127.0.0.1", board.port, prefix=str(board.log.parent / "prefix"))


def fleet(
    *targets: SshTarget,
    key: Path,
    known_hosts: Path | None = None,
    strict_host_keys: bool = False,
    io_timeout: float = 60.0,
) -> SshFleet:
    """A fleet that reads no known_hosts unless told: the tests never look at the machine's ~/.ssh."""
    return SshFleet(
        list(targets),
        identity=key,
        known_hosts=known_hosts,
        strict_host_keys=strict_host_keys,
        connect_timeout=CONNECT_TIMEOUT,
        io_timeout=io_timeout,
    )


def closed_port() -> int:
    """A port nothing listens on (bound and released: nothing else on 127.0.0.1 races for it here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def boards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Sshd]]:
    """Two boards, one client key."""
    root = tmp_path_factory.mktemp("boards")
    with sshd_server(root / "b1") as b1, sshd_server(root / "b2", client_key=b1.client_key) as b2:
        yield [b1, b2]


@pytest.fixture
def victim(boards: list[Sshd], tmp_path: Path) -> Iterator[Sshd]:
    """A third board, for the tests that kill it."""
    with sshd_server(tmp_path / "victim", client_key=boards[0].client_key) as board:
        yield board


@contextmanager
def hang_up_server() -> Iterator[int]:
    """A TCP server that accepts and closes at once, as a board whose sshd turns us away does."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- board URLs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected", "name"),
    [
        ("ssh://root@192.168.1.20", SshTarget("root", "192.168.1.20"), "root@192.168.1.20:22"),
        (
            "ssh://pi@Board.local:2200/opt/x/",
            SshTarget("pi", "board.local", 2200, "/opt/x"),
            "pi@board.local:2200",
        ),
        ("ssh://root@[::1]:2222", SshTarget("root", "::1", 2222), "root@[::1]:2222"),
        ("ssh://root@[0:0::1]", SshTarget("root", "::1"), "root@[::1]:22"),
        (
            " ssh://ek_user@host-1/srv/edgekit ",
            SshTarget("ek_user", "host-1", 22, "/srv/edgekit"),
            "ek_user@host-1:22",
        ),
    ],
)
def test_parse_ssh_url(url: str, expected: SshTarget, name: str) -> None:
    parsed = parse_ssh_url(url)
    assert parsed == expected
    assert parsed.name == name
    assert parse_ssh_url(parsed.url) == parsed  # the URL round-trips


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("root@board", "scheme"),
        ("tcp://root@board:9090", "scheme"),
        ("ssh://board", "no user"),
        ("ssh://@board", "bad user"),
        ("ssh://root@board:99999", "port"),
        ("ssh://root@board:0", "port"),
        ("ssh://root@board:ssh", "port"),
        ("ssh://root@board/~/edgekit", "absolute"),
        ("ssh://root@board/opt/../etc", "absolute"),
        ("ssh://root@board/opt/edge kit", "absolute"),
        ("ssh://root:secret@board", "password"),
        ("ssh://root@board?x=1", "query"),
        ("ssh://root@[board]:22", "IPv6"),
        ("ssh://root@", "bad host"),
    ],
)
def test_parse_ssh_url_rejects(url: str, why: str) -> None:
    with pytest.raises(DeviceError) as error:
        parse_ssh_url(url)
    assert why in str(error.value)
    assert "ssh://user@host[:port][/abs/prefix]" in str(error.value)  # shows the expected form


def test_parse_ssh_urls() -> None:
    assert parse_ssh_urls("ssh://a@h1,ssh://b@h2:2200/opt/x") == [
        SshTarget("a", "h1"),
        SshTarget("b", "h2", 2200, "/opt/x"),
    ]
    assert parse_ssh_urls(" ssh://a@h1 , ssh://a@h1:2222 ") == [
        SshTarget("a", "h1"),
        SshTarget("a", "h1", 2222),
    ]
    with pytest.raises(DeviceError, match="given twice"):
        parse_ssh_urls("ssh://a@h1,ssh://b@h1:22/opt/y")  # one board, whatever the login
    with pytest.raises(DeviceError, match="empty"):
        parse_ssh_urls("ssh://a@h1,")


def test_fleet_rejects_bad_options(boards: list[Sshd], tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="no board"):
        SshFleet([], known_hosts=None)
    with pytest.raises(DeviceError, match="given twice"):
        SshFleet([target(boards[0]), target(boards[0])], known_hosts=None)
    with pytest.raises(DeviceError, match="does not exist"):
        SshFleet([target(boards[0])], identity=tmp_path / "no_such_key", known_hosts=None)
    with pytest.raises(DeviceError, match="needs a known_hosts file"):
        SshFleet([target(boards[0])], strict_host_keys=True, known_hosts=tmp_path / "known_hosts")


# --- commands ---------------------------------------------------------------------------------------------


def test_run_on_two_boards(boards: list[Sshd]) -> None:
    targets = [target(b) for b in boards]
    with fleet(*targets, key=boards[0].client_key) as f:
        results = f.run("uname -m; echo $HOME; echo $EDGEKIT_PREFIX")
        assert list(results) == [t.name for t in targets]  # board order, not completion order
        for t in targets:
            assert results[t.name] == RunResult(0, f"{platform.machine()}\n{HOME}\n{t.prefix}\n", "")
        # The connections stay open between operations, and watch for boards that go silent.
        assert f.run("true") == {t.name: RunResult(0, "", "") for t in targets}
        for board in f._boards:
            sock = board.transport.sock
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000
        table = format_table(results)
    assert table.splitlines()[0].split() == ["board", "status", "detail"]
    for t in targets:
        assert f"{t.name}  ok" in table
    assert table.splitlines()[-1] == "2 ok, 0 FAILED"


def test_run_records_exit_code(boards: list[Sshd]) -> None:
    with fleet(*(target(b) for b in boards), key=boards[0].client_key) as f:
        results = f.run("echo out; echo 'it broke' >&2; exit 3")
    for value in results.values():
        assert value == RunResult(3, "out\n", "it broke\n")
        assert isinstance(value, RunResult) and not value.ok
    table = format_table(results)
    assert "FAILED  exit code 3: it broke" in table
    assert table.splitlines()[-1] == "0 ok, 2 FAILED"


def test_run_timeout_is_per_board(boards: list[Sshd]) -> None:
    with fleet(*(target(b) for b in boards), key=boards[0].client_key) as f:
        started = time.monotonic()
        results = f.run("sleep 30", timeout=0.5)
        assert time.monotonic() - started < 10
        for value in results.values():
            assert isinstance(value, DeviceError)
            assert "command timed out after 0.5s" in str(value)
        # The connection survives a timed-out command.
        assert all(r == RunResult(0, "ok\n", "") for r in f.run("echo ok").values())


def test_unreachable_board_fails_alone(boards: list[Sshd]) -> None:
    dead = SshTarget(USER, "127.0.0.1", closed_port())
    targets = [target(boards[0]), dead, target(boards[1])]
    with fleet(*targets, key=boards[0].client_key) as f:
        results = f.run("echo hi")
    assert results[targets[0].name] == results[targets[2].name] == RunResult(0, "hi\n", "")
    error = results[dead.name]
    assert isinstance(error, DeviceError)
    assert str(error) == f"{dead.name}: cannot connect: Connection refused"
    table = format_table(results)
    assert f"{dead.name}  FAILED  cannot connect: Connection refused" in table
    assert table.splitlines()[-1] == "2 ok, 1 FAILED"


def test_wrong_key_is_an_authentication_error(boards: list[Sshd], tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    with fleet(*(target(b) for b in boards), key=wrong) as f:
        results = f.run("true")
    for value in results.values():
        assert isinstance(value, DeviceError)
        assert value.reason == f"authentication failed (key {wrong} rejected)"


def test_server_that_hangs_up(boards: list[Sshd]) -> None:
    with hang_up_server() as port:
        rude = SshTarget(USER, "127.0.0.1", port)
        with fleet(rude, target(boards[0]), key=boards[0].client_key) as f:
            started = time.monotonic()
            results = f.run("true")
            assert time.monotonic() - started < CONNECT_TIMEOUT + 5
    assert results[target(boards[0]).name] == RunResult(0, "", "")
    error = results[rude.name]
    assert isinstance(error, DeviceError)
    assert "closed the connection before the SSH handshake" in str(error)


def test_board_dies_during_command(boards: list[Sshd], victim: Sshd) -> None:
    targets = [target(boards[0]), target(victim)]
    with fleet(*targets, key=boards[0].client_key) as f:
        assert all(isinstance(r, RunResult) and r.ok for r in f.run("true").values())
        killer = threading.Timer(0.3, victim.kill)
        killer.start()
        started = time.monotonic()
        results = f.run("sleep 1", timeout=20)
        elapsed = time.monotonic() - started
        killer.join()
        assert elapsed < 10
        assert results[targets[0].name] == RunResult(0, "", "")
        error = results[targets[1].name]
        assert isinstance(error, DeviceError)
        assert error.reason == "connection dropped while running the command"
        # The fleet carries on: the survivor still runs commands, the dead board is now unreachable.
        again = f.run("echo still here")
    assert again[targets[0].name] == RunResult(0, "still here\n", "")
    assert "cannot connect: Connection refused" in str(again[targets[1].name])


# --- uploads ----------------------------------------------------------------------------------------------


def test_put_to_two_boards_with_progress(boards: list[Sshd], tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(5 * MiB + 123))
    payload.chmod(0o755)
    targets = [target(b) for b in boards]
    seen: dict[str, list[tuple[int, int]]] = {t.name: [] for t in targets}
    lock = threading.Lock()

    def progress(board: str, done: int, total: int) -> None:
        with lock:  # called from the fleet's worker threads
            seen[board].append((done, total))

    with fleet(*targets, key=boards[0].client_key) as f:
        started = time.monotonic()
        results = f.put(payload, "lib/payload.bin", progress=progress)
        upload_s = time.monotonic() - started
        assert results == {t.name: None for t in targets}, format_table(results)
        hashes = f.run(
            'sha256sum "$EDGEKIT_PREFIX/lib/payload.bin"; stat -c %a "$EDGEKIT_PREFIX/lib/payload.bin"'
        )
    size = payload.stat().st_size
    for t in targets:
        calls = seen[t.name]
        assert calls[0] == (0, size) and calls[-1] == (size, size), calls[-3:]
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)
        assert len(calls) > 10  # reported as it goes, not only at the end
        result = hashes[t.name]
        assert isinstance(result, RunResult) and result.ok, result
        digest, _path, mode = result.stdout.split()
        assert (digest, mode) == (sha256(payload), "755")
        # No temporary file is left beside the destination.
        assert os.listdir(Path(t.prefix) / "lib") == ["payload.bin"]
    assert upload_s < 30
    assert "2 ok, 0 FAILED" in format_table(results)


def test_put_replaces_atomically_and_to_directories(boards: list[Sshd], tmp_path: Path) -> None:
    t = target(boards[0])
    with fleet(t, key=boards[0].client_key) as f:
        for content in (b"old", b"new"):
            src = tmp_path / "edge_app"
            src.write_bytes(content)
            assert f.put(src, "bin/") == {t.name: None}
        assert (Path(t.prefix) / "bin" / "edge_app").read_bytes() == b"new"
        assert f.put(src, str(tmp_path / "abs" / "copy")) == {t.name: None}  # absolute: as given
        assert (tmp_path / "abs" / "copy").read_bytes() == b"new"
        # A path that cannot be created is a per-board error, not an exception.
        (tmp_path / "file").write_bytes(b"")
        results = f.put(src, str(tmp_path / "file" / "x"))
    error = results[t.name]
    assert isinstance(error, DeviceError) and "upload to" in str(error), error
    with fleet(t, key=boards[0].client_key) as f, pytest.raises(DeviceError, match="not a file"):
        f.put(tmp_path / "missing", "x")


def test_board_dies_during_upload(boards: list[Sshd], victim: Sshd, tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(8 * MiB))
    survivor, doomed = target(boards[0]), target(victim)

    def progress(board: str, done: int, total: int) -> None:
        # Pull the plug a quarter of the way in: the victim's sshd and its sessions die at once.
        if board == doomed.name and done >= total // 4 and victim.process.poll() is None:
            victim.kill()

    with fleet(survivor, doomed, key=boards[0].client_key, io_timeout=10) as f:
        started = time.monotonic()
        results = f.put(payload, "big.bin", progress=progress)
        assert time.monotonic() - started < 20
    assert results[survivor.name] is None
    assert sha256(Path(survivor.prefix) / "big.bin") == sha256(payload)
    error = results[doomed.name]
    assert isinstance(error, DeviceError)
    assert error.reason.startswith("connection dropped during upload"), error
    # What arrived stays under the temporary name, never under the final one.
    leftovers = os.listdir(doomed.prefix)
    assert "big.bin" not in leftovers
    assert all(name.startswith(".big.bin.edgekit-part-") for name in leftovers), leftovers
    assert "connection dropped during upload" in format_table(results)


# --- host keys --------------------------------------------------------------------------------------------


def known_hosts_line(board: Sshd, key_of: Sshd | None = None) -> str:
    return f"[127.0.0.1]:{board.port} {(key_of or board).host_key_line}\n"


def test_strict_host_keys(boards: list[Sshd], tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_line(boards[0]))
    before = known.read_bytes()
    listed, unlisted = target(boards[0]), target(boards[1])
    with fleet(listed, unlisted, key=boards[0].client_key, strict_host_keys=True, known_hosts=known) as f:
        results = f.run("true")
    assert results[listed.name] == RunResult(0, "", "")
    error = results[unlisted.name]
    assert isinstance(error, DeviceError)
    assert error.reason.startswith("unknown host key ssh-ed25519 SHA256:")
    assert f"not in {known} and strict host key checking is on" in error.reason
    assert f"ssh-keyscan -p {boards[1].port} 127.0.0.1" in error.reason
    assert known.read_bytes() == before  # never written


def test_default_policy_refuses_a_changed_host_key(boards: list[Sshd], tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    # boards[0] is listed with boards[1]'s key (as after a reflash); boards[1] is not listed at all.
    known.write_text(known_hosts_line(boards[0], key_of=boards[1]))
    before = known.read_bytes()
    changed, unlisted = target(boards[0]), target(boards[1])
    with fleet(changed, unlisted, key=boards[0].client_key, known_hosts=known) as f:
        results = f.run("true")
    assert results[unlisted.name] == RunResult(0, "", "")  # unknown: accepted for this session
    error = results[changed.name]
    assert isinstance(error, DeviceError)
    assert error.reason.startswith("host key mismatch: the board offers ssh-ed25519 SHA256:")
    assert f"ssh-keygen -f {known} -R '[127.0.0.1]:{boards[0].port}'" in error.reason
    assert known.read_bytes() == before  # the unknown key was not added


# --- the table --------------------------------------------------------------------------------------------


def test_format_table_one_line_per_board() -> None:
    results: dict[str, RunResult | BaseException | None] = {
        "root@10.0.0.7:22": RunResult(0, "x\n", ""),
        "root@10.0.0.8:22": DeviceError("cannot connect: Connection refused", board="root@10.0.0.8:22"),
        "pi@[fe80::1]:2222": RunResult(2, "", "first\nlast   line\n"),
        "me@h:22": OSError("multi\nline\nmessage"),
        "you@h:22": None,
        "them@h:22": RunResult(-1, "", ""),
    }
    assert format_table(results).splitlines() == [
        "board              status  detail",
        "root@10.0.0.7:22   ok      exit code 0",
        "root@10.0.0.8:22   FAILED  cannot connect: Connection refused",
        "pi@[fe80::1]:2222  FAILED  exit code 2: last line",
        "me@h:22            FAILED  OSError: multi line message",
        "you@h:22           ok      done",
        "them@h:22          FAILED  no exit status (killed by a signal?)",
        "2 ok, 4 FAILED",
    ]
