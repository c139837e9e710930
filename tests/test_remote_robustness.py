"""Robustness of the remote protocol (docs/remote-protocol.md) against the host build of remote_server.

Every test starts its own server (`remote_server --port 0`, stderr captured to a file) except the
malformed-frame cases, which share one: after each case the server must still be alive and serve a
normal ``ek.Device`` client. Frames the real client never sends are built by hand with ``struct`` on a
plain socket. Nothing here can hang: sockets have timeouts, threads are joined with timeouts, and waits
for the server's log poll against deadlines.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import edgekit as ek
from conftest import STATUS
from edgekit import app
from models import compile_ekm, input_shape_of, random_input

MiB = 1 << 20
MAGIC = 0x50524B45
HEADER = struct.Struct("<IHHQQ")
PROTOCOL = 1
MAX_PAYLOAD = 16 * MiB
CHUNK = 4 * MiB
REPLY = 0x8000
LAUNCH_DONE = 0x4001
HELLO, PING, DEV_OPEN, DEV_SYNC, DEV_STATS, COH_REPORT, COH_CLEAR = range(1, 8)
MALLOC, FREE, WRITE, READ, COPY, RT_CREATE, RT_DESTROY, UPLOAD, LOAD, LAUNCH, RUN = range(8, 19)
ID_MEMORY, ID_RUNTIME = 1, 2

OK = STATUS["EK_OK"]
E_ARG = STATUS["EK_ERR_INVALID_ARG"]
E_HANDLE = STATUS["EK_ERR_INVALID_HANDLE"]
E_FREED = STATUS["EK_ERR_FREED_HANDLE"]
E_DOUBLE = STATUS["EK_ERR_DOUBLE_FREE"]
E_OOM = STATUS["EK_ERR_OUT_OF_MEMORY"]
E_RANGE = STATUS["EK_ERR_OUT_OF_RANGE"]
E_NO_DEVICE = STATUS["EK_ERR_NO_DEVICE"]
E_BUSY = STATUS["EK_ERR_BUSY"]
E_MODEL = STATUS["EK_ERR_MODEL_INVALID"]
E_TIMEOUT = STATUS["EK_ERR_TIMEOUT"]
E_CONNECTION = STATUS["EK_ERR_CONNECTION"]
E_VERSION = STATUS["EK_ERR_VERSION"]

SLOW_HOOK = {"EDGEKIT_TEST_HOOKS": "1", "EDGEKIT_TEST_SLOW_LAUNCH_MS": "3000"}
IO_TIMEOUT = 10.0  # any single socket operation of a raw client


# ---- payload encoding (the doc's value types) -------------------------------------------------------


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def i64(v: int) -> bytes:
    return struct.pack("<q", v)


def blob(data: bytes) -> bytes:
    return u64(len(data)) + data


def text(s: str) -> bytes:
    return blob(s.encode())


def shape(*dims: int) -> bytes:
    return u32(len(dims)) + b"".join(i64(d) for d in dims)


def tensor(mem: int, dims: tuple[int, ...], offset: int = 0, dtype: int = 1) -> bytes:
    return u64(mem) + u64(offset) + u32(dtype) + shape(*dims)


def header(type_: int, request: int, length: int, version: int = PROTOCOL, magic: int = MAGIC) -> bytes:
    return HEADER.pack(magic, version, type_, request, length)


def hello_payload(lowest: int = PROTOCOL, highest: int = PROTOCOL, version: str = "9.9.9") -> bytes:
    return u32(lowest) + u32(highest) + text(version) + text("x86_64")


def dev_open_payload(device: int = 0, heap: int = 0) -> bytes:
    return i64(device) + u64(heap) + u32(0) + u32(0)


def forge(kind: int, index: int, generation: int) -> int:
    return kind << 56 | index << 32 | generation


class Body:
    """Reads a reply's fields."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def u32(self) -> int:
        return self.take("<I")

    def u64(self) -> int:
        return self.take("<Q")

    def blob(self) -> bytes:
        n = self.u64()
        data = self.data[self.pos : self.pos + n]
        assert len(data) == n, "a length past the reply"
        self.pos += n
        return data

    def text(self) -> str:
        return self.blob().decode()


@dataclass
class Frame:
    version: int
    type: int
    request: int
    payload: bytes

    @property
    def status(self) -> int:
        return struct.unpack_from("<I", self.payload)[0] if len(self.payload) >= 4 else -1

    @property
    def message(self) -> str:
        return Body(self.payload[4:]).text() if self.status != OK else ""

    def body(self) -> Body:
        assert self.status == OK, f"type 0x{self.type:04x}: status {self.status}: {self.message}"
        return Body(self.payload[4:])

    def __str__(self) -> str:
        return f"frame type 0x{self.type:04x} request {self.request} status {self.status} {self.message!r}"


class Raw:
    """A connection driven by hand, for the frames ek.Device never sends."""

    def __init__(self, port: int, rcvbuf: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.next_request = 100

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(
        self, type_: int, payload: bytes = b"", *, version: int = PROTOCOL, request: int | None = None
    ) -> int:
        if request is None:
            self.next_request += 1
            request = self.next_request
        self.sock.sendall(header(type_, request, len(payload), version) + payload)
        return request

    def recv_exact(self, n: int) -> bytes:
        """n bytes, or fewer when the peer closed (or reset) the connection first."""
        data = b""
        while len(data) < n:
            try:
                got = self.sock.recv(n - len(data))
            except ConnectionResetError:
                got = b""
            if not got:
                break
            data += got
        return data

    def recv(self) -> Frame | None:
        """The next frame, or None at the end of the stream."""
        head = self.recv_exact(HEADER.size)
        if len(head) < HEADER.size:
            assert not head, f"the server sent a partial header {head!r}"
            return None
        magic, version, type_, request, length = HEADER.unpack(head)
        assert magic == MAGIC, f"the server sent magic 0x{magic:08x}"
        assert length <= MAX_PAYLOAD, length
        payload = self.recv_exact(length)
        assert len(payload) == length, "the server closed in the middle of a frame"
        return Frame(version, type_, request, payload)

    def reply(self, request: int) -> Frame:
        """The reply to `request` (launch completions and other replies in between are skipped)."""
        while True:
            frame = self.recv()
            assert frame is not None, (
                f"the server closed the connection instead of answering request {request}"
            )
            assert frame.version == PROTOCOL
            if frame.type & REPLY and frame.request == request:
                return frame
            assert frame.type == LAUNCH_DONE or frame.type & REPLY, str(frame)
            assert frame.type != REPLY, f"the server ended the session: {frame}"

    def call(self, type_: int, payload: bytes = b"") -> Frame:
        frame = self.reply(self.send(type_, payload))
        assert frame.type == type_ | REPLY, str(frame)
        return frame

    def ok(self, type_: int, payload: bytes = b"") -> Body:
        return self.call(type_, payload).body()

    def error(self, type_: int, payload: bytes, status: int, *words: str) -> str:
        """A non-fatal error reply with `status` whose message contains `words`."""
        frame = self.call(type_, payload)
        assert frame.status == status, f"expected status {status}: {frame}"
        for word in words:
            assert word in frame.message, f"{word!r} not in {frame.message!r}"
        return frame.message

    def handshake(self) -> None:
        frame = self.call(HELLO, hello_payload())
        assert frame.status == OK, str(frame)
        assert Body(frame.payload[4:]).u32() == PROTOCOL
        self.ok(DEV_OPEN, dev_open_payload())

    def ended(self, status: int, *words: str) -> Frame:
        """The session ends with an error frame (type 0x8000, request 0) naming `words`, then EOF."""
        frame = self.recv()
        assert frame is not None, "the server closed without saying why"
        assert (frame.type, frame.request) == (REPLY, 0), f"not the protocol's error frame: {frame}"
        assert frame.status == status, str(frame)
        for word in words:
            assert word in frame.message, f"{word!r} not in {frame.message!r}"
        self.closed()
        return frame

    def closed(self) -> None:
        """Nothing more arrives: the server closed the connection."""
        frame = self.recv()
        assert frame is None, f"expected the end of the session, got {frame}"


# ---- the server --------------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        assert match, status
        return int(match.group(1))

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log, re.M))

    def ended(self) -> int:
        """Sessions that ended (their log line)."""
        return self.count(r"^.*remote_server: session \d+ \(.*\) ended: ")

    def open_sessions(self) -> set[int]:
        """The numbers of the sessions the log shows started and not ended."""
        seen = set(map(int, re.findall(r"remote_server: session (\d+) ", self.log)))
        return seen - set(map(int, re.findall(r"remote_server: session (\d+) \(.*\) ended: ", self.log)))

    def wait_idle(self, keep: int = 0, timeout: float = 10.0) -> None:
        """Until only `keep` sessions are open."""
        self.wait_for(f"{keep} open sessions", lambda: len(self.open_sessions()) == keep, timeout)

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert self.alive(), (
                f"remote_server died ({self.proc.returncode}) waiting for {what}:\n{self.log}"
            )
            assert time.monotonic() < deadline, f"no {what} after {timeout} s; the server's log:\n{self.log}"
            time.sleep(0.02)

    def assert_serves(self) -> None:
        """Alive, and a normal client works: memory round trip, stats, close."""
        assert self.alive(), f"remote_server died ({self.proc.returncode}):\n{self.log}"
        data = random.Random(7).randbytes(100_000)
        with ek.Device(self.url, connect_timeout=5, reply_timeout=20) as dev:
            mem = dev.malloc(len(data))
            mem.write(data)
            assert mem.read() == data
            assert dev.stats["allocations"] >= 1
            mem.free()
        assert self.alive()


def server_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_TEST_")}
    env.update(extra or {})
    return env


def start_server(log_path: Path, *flags: str, env: dict[str, str] | None = None) -> Server:
    """remote_server on a free loopback port; returns once it listens."""
    log = log_path.open("w")
    proc = subprocess.Popen(
        [str(app.binary("remote_server")), "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env=server_env(env),
        text=True,
    )
    log.close()
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else ""
    match = re.fullmatch(r"remote_server listening on 127\.0\.0\.1:(\d+)\n", line)
    if not match:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"remote_server did not start: {line!r}\n{log_path.read_text()}")
    return Server(proc, int(match.group(1)), log_path)


def stop_server(server: Server) -> None:
    """SIGTERM, which ends the sessions and exits 0 (a server a test killed is left as it is)."""
    assert server.proc.stdout is not None
    server.proc.stdout.close()
    if not server.alive():
        return
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(10)
        raise AssertionError(f"remote_server ignored SIGTERM for 10 s:\n{server.log}") from None
    assert code == 0 and server.log.rstrip().endswith("remote_server: stopped"), (code, server.log)


@pytest.fixture
def remote_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """start(*flags, env={...}) -> a running Server, stopped at teardown."""
    started: list[Server] = []

    def start(*flags: str, env: dict[str, str] | None = None) -> Server:
        server = start_server(tmp_path / f"remote_server-{len(started)}.log", *flags, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_server(server)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("remote") / "remote_server.log")
    yield server
    alive = server.alive()
    stop_server(server)
    assert alive, f"remote_server died:\n{server.log}"


@pytest.fixture(scope="module")
def mlp() -> Path:
    return compile_ekm("mlp")


def rss_jump_kib(server: Server, action: Callable[[], None]) -> int:
    before = server.rss_kib()
    action()
    return server.rss_kib() - before


# ---- 1. malformed, truncated and oversized frames ----------------------------------------------------


def case_payload_2_63(port: int) -> None:
    with Raw(port) as raw:
        raw.sock.sendall(header(HELLO, 1, 2**63))
        raw.ended(E_CONNECTION, "9223372036854775808", "16777216")


def case_payload_16mib_plus_1(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        raw.sock.sendall(header(WRITE, 5, MAX_PAYLOAD + 1))
        raw.ended(E_CONNECTION, str(MAX_PAYLOAD + 1), "maximum is 16777216")


def case_payload_of_exactly_16mib(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        mem = raw.ok(MALLOC, u64(MAX_PAYLOAD)).u64()
        data = random.Random(3).randbytes(MAX_PAYLOAD - 24)
        payload = u64(mem) + u64(0) + blob(data)
        assert len(payload) == MAX_PAYLOAD
        raw.ok(WRITE, payload)
        tail = raw.ok(READ, u64(mem) + u64(len(data) - 4096) + u64(4096)).blob()
        assert tail == data[-4096:]
        raw.ok(FREE, u64(mem))


def case_random_bytes(port: int) -> None:
    junk = random.Random(1).randbytes(4096)
    with Raw(port) as raw:
        raw.sock.sendall(junk)
        raw.ended(E_CONNECTION, f"magic 0x{struct.unpack_from('<I', junk)[0]:08x}", "not an EdgeKit")


def case_random_bytes_after_handshake(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        raw.sock.sendall(random.Random(2).randbytes(1000))
        raw.ended(E_CONNECTION, "magic")


def case_wrong_magic(port: int) -> None:
    with Raw(port) as raw:
        payload = hello_payload()
        raw.sock.sendall(header(HELLO, 1, len(payload), magic=0x12345678) + payload)
        raw.ended(E_CONNECTION, "magic 0x12345678")


def case_header_cut_short(port: int) -> None:
    with Raw(port) as raw:
        raw.sock.sendall(header(HELLO, 1, 40)[:10])
        raw.sock.shutdown(socket.SHUT_WR)
        raw.closed()


def case_header_cut_short_after_handshake(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        raw.ok(MALLOC, u64(4096))
        raw.sock.sendall(header(MALLOC, 9, 8)[:23])
        raw.sock.shutdown(socket.SHUT_WR)
        raw.closed()


def case_payload_shorter_than_length(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        mem = raw.ok(MALLOC, u64(MiB)).u64()
        raw.sock.sendall(header(WRITE, 9, 24 + MiB) + u64(mem) + u64(0) + u64(MiB) + bytes(1000))
        raw.sock.shutdown(socket.SHUT_WR)
        raw.closed()


def case_malloc_with_3_bytes(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        raw.send(MALLOC, b"abc")
        raw.ended(E_CONNECTION, "malformed request (type 8)", "ends early")


def case_fields_left_over(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        raw.send(MALLOC, u64(64) + b"\0")
        raw.ended(E_CONNECTION, "after its fields")


def case_run_with_fields_left_over(port: int) -> None:
    """RUN and DEV_SYNC are answered later, and once skipped the check (a RUN ran with bytes left over)."""
    mlp = compile_ekm("mlp").read_bytes()
    with Raw(port) as raw:
        raw.handshake()
        rt = raw.ok(RT_CREATE, u32(0) + i64(1)).u64()
        raw.ok(UPLOAD, u64(len(mlp)) + u64(0) + blob(mlp))
        raw.ok(LOAD, u64(rt))
        run = u64(rt) + text("mlp") + u32(1) + shape(1, 64) + blob(bytes(256)) + i64(1) + u64(0) + u32(0)
        assert raw.ok(RUN, run).u32() == 1
        raw.send(RUN, run + b"\0\0\0")
        raw.ended(E_CONNECTION, "a request (type 18) with 3 bytes after its fields")


def case_dev_sync_with_a_payload(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        raw.send(DEV_SYNC, u32(0))
        raw.ended(E_CONNECTION, "a request (type 4) with 4 bytes after its fields")


def case_empty_payloads(port: int) -> None:
    """Every request type with an empty payload: an error, never a crash."""
    with_fields = (DEV_OPEN, COH_REPORT, MALLOC, FREE, WRITE, READ, COPY, RT_CREATE, RT_DESTROY, UPLOAD, LOAD)
    for type_ in (*with_fields, LAUNCH, RUN):
        with Raw(port) as raw:
            raw.call(HELLO, hello_payload())
            if type_ != DEV_OPEN:
                raw.ok(DEV_OPEN, dev_open_payload())
            raw.send(type_)
            raw.ended(E_CONNECTION, f"type {type_}")


def case_string_past_payload(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        raw.send(LAUNCH, u64(0) + u64(100) + b"mlp")
        raw.ended(E_CONNECTION, "runs past the payload")


def case_string_over_limit(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        raw.send(LAUNCH, u64(0) + text("n" * 5000) + u32(0) + u32(0) + u32(0) + i64(0) + u64(0) + u32(0))
        raw.ended(E_CONNECTION, "over its limit")


def case_string_length_2_63(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        raw.send(RUN, u64(0) + u64(2**63) + b"mlp")
        raw.ended(E_CONNECTION, "over its limit")


def case_string_with_nul(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        raw.send(LAUNCH, u64(0) + text("ml\0p") + u32(0) + u32(0) + u32(0) + i64(0) + u64(0) + u32(0))
        raw.ended(E_CONNECTION, "NUL")


def launch_payload(
    rt: int,
    inputs: list[bytes],
    outputs: list[bytes],
    net: str = "mlp",
    user_mem: bool = False,
    threads: int = 0,
) -> bytes:
    counts = u32(len(inputs)) + u32(len(outputs))
    options = u32(user_mem) + i64(threads) + u64(0) + u32(0)  # flags: no profile, no dump
    return u64(rt) + text(net) + counts + b"".join(inputs) + b"".join(outputs) + options


def case_shape_with_9_dims(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        raw.send(LAUNCH, launch_payload(0, [tensor(0, (1,) * 9)], []))
        raw.ended(E_CONNECTION, "more than EK_MAX_DIMS")


def case_shape_with_2_32_dims(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        raw.send(LAUNCH, launch_payload(0, [u64(0) + u64(0) + u32(1) + u32(2**32 - 1)], []))
        raw.ended(E_CONNECTION, "more than EK_MAX_DIMS")


def case_shape_with_negative_dim(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        raw.send(LAUNCH, launch_payload(0, [tensor(0, (1, -64))], []))
        raw.ended(E_CONNECTION, "negative dimension")


def case_request_before_hello(port: int) -> None:
    for type_ in (MALLOC, PING, DEV_OPEN):
        with Raw(port) as raw:
            raw.send(type_, u64(64) if type_ == MALLOC else b"")
            raw.ended(E_CONNECTION, "first frame must be HELLO", f"not type {type_}")


def case_second_hello(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        raw.send(HELLO, hello_payload())
        raw.ended(E_CONNECTION, "second HELLO")


def case_unknown_types(port: int) -> None:
    for type_ in (0, 19, 99, 0x3FFF, LAUNCH_DONE, REPLY, REPLY | MALLOC, 0xFFFF):
        with Raw(port) as raw:
            raw.handshake()
            raw.send(type_, u64(1))
            raw.ended(E_CONNECTION, f"unknown message type {type_}")


def case_other_frame_version_after_hello(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        raw.send(MALLOC, u64(64), version=2)
        raw.ended(E_VERSION, "protocol version 2")


def case_hello_of_another_header_version(port: int) -> None:
    """A server reads a HELLO of any header version (the stable part of the protocol)."""
    with Raw(port) as raw:
        frame = raw.reply(raw.send(HELLO, hello_payload(1, 5), version=5))
        assert (frame.type, frame.version) == (HELLO | REPLY, PROTOCOL)
        assert frame.body().u32() == PROTOCOL
        raw.ok(DEV_OPEN, dev_open_payload())
        raw.ok(PING)


def case_hello_malformed(port: int) -> None:
    with Raw(port) as raw:
        raw.send(HELLO, b"\1\0\0")
        frame = raw.recv()
        assert frame is not None and frame.type == HELLO | REPLY and frame.status == E_VERSION, str(frame)
        assert "install the same EdgeKit release" in frame.message
        raw.closed()


def case_device_errors(port: int) -> None:
    """DEV_OPEN's mistakes are errors the session survives; so are requests without a device."""
    with Raw(port) as raw:
        raw.call(HELLO, hello_payload())
        raw.error(MALLOC, u64(64), E_ARG, "DEV_OPEN comes first")
        raw.error(DEV_STATS, b"", E_ARG, "no device is open")
        raw.error(DEV_SYNC, b"", E_ARG, "no device is open")
        raw.error(DEV_OPEN, dev_open_payload(-1), E_NO_DEVICE, "-1")
        raw.error(DEV_OPEN, dev_open_payload(2**40), E_NO_DEVICE)
        raw.error(DEV_OPEN, dev_open_payload(7), E_NO_DEVICE, "device id 7")
        raw.error(DEV_OPEN, i64(0) + u64(0) + u32(77) + u32(0), E_ARG)
        raw.error(DEV_OPEN, i64(0) + u64(0) + u32(0) + u32(77), E_ARG, "backing")
        raw.ok(DEV_OPEN, dev_open_payload())
        raw.error(DEV_OPEN, dev_open_payload(), E_BUSY, "one device per connection")
        raw.ok(PING)
        raw.ok(DEV_SYNC)


def case_forged_and_stale_ids(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        mem = raw.ok(MALLOC, u64(4096)).u64()
        assert mem >> 56 == ID_MEMORY, hex(mem)
        index, generation = (mem >> 32) & 0xFFFFFF, mem & 0xFFFFFFFF
        never = [
            0,
            2**64 - 1,
            mem + 1,  # a generation not issued yet
            forge(ID_MEMORY, index + 1000, 1),
            forge(ID_MEMORY, index, 0),
            forge(7, index, generation),
            forge(ID_RUNTIME, index, generation),  # the memory's slot, named as a runtime
        ]
        for bad in never:
            raw.error(READ, u64(bad) + u64(0) + u64(16), E_HANDLE, "never issued")
            raw.error(WRITE, u64(bad) + u64(0) + blob(b"x"), E_HANDLE, "never issued")
            raw.error(COPY, u64(mem) + u64(0) + u64(bad) + u64(0) + u64(16), E_HANDLE, "never issued")
            raw.error(FREE, u64(bad), E_HANDLE, "never issued")
            raw.error(LOAD, u64(bad), E_HANDLE, "never issued")
            raw.error(RT_DESTROY, u64(bad), E_HANDLE, "never issued")
            raw.error(
                RUN, u64(bad) + text("mlp") + u32(0) + i64(0) + u64(0) + u32(0), E_HANDLE, "never issued"
            )
            raw.error(LAUNCH, launch_payload(bad, [], []), E_HANDLE, "never issued")
            raw.error(LAUNCH, launch_payload(bad, [tensor(bad, (1, 64))], [tensor(0, (1, 10))]), E_HANDLE)
        # Stale: freed ids are recognised as freed, also after the slot is reused.
        raw.ok(FREE, u64(mem))
        raw.error(READ, u64(mem) + u64(0) + u64(16), E_FREED, "use after free")
        raw.error(WRITE, u64(mem) + u64(0) + blob(b"x"), E_FREED, "use after free")
        raw.error(FREE, u64(mem), E_DOUBLE, "double free")
        again = raw.ok(MALLOC, u64(4096)).u64()
        assert again != mem
        raw.error(COPY, u64(again) + u64(0) + u64(mem) + u64(0) + u64(16), E_FREED, "use after free")
        raw.error(FREE, u64(mem), E_DOUBLE)
        rt = raw.ok(RT_CREATE, u32(0) + i64(0)).u64()
        raw.ok(RT_DESTROY, u64(rt))
        raw.error(RT_DESTROY, u64(rt), E_DOUBLE, "already destroyed")
        raw.error(LOAD, u64(rt), E_FREED, "was freed")
        raw.error(READ, u64(rt) + u64(0) + u64(16), E_HANDLE)  # a runtime id is no memory id
        raw.ok(FREE, u64(again))
        raw.ok(PING)


def case_sizes_and_offsets_past_limits(port: int) -> None:
    with Raw(port) as raw:
        raw.handshake()
        raw.error(MALLOC, u64(2**63), E_OOM)
        raw.error(MALLOC, u64(2**64 - 1), E_OOM)
        mem = raw.ok(MALLOC, u64(4096)).u64()
        other = raw.ok(MALLOC, u64(4096)).u64()
        raw.error(READ, u64(mem) + u64(0) + u64(2**63), E_ARG, "4194304")
        raw.error(READ, u64(mem) + u64(0) + u64(CHUNK + 1), E_ARG)
        raw.error(READ, u64(mem) + u64(2**63) + u64(16), E_RANGE)
        raw.error(READ, u64(mem) + u64(2**64 - 8) + u64(16), E_RANGE)
        raw.error(READ, u64(mem) + u64(4090) + u64(16), E_RANGE)
        raw.error(WRITE, u64(mem) + u64(2**64 - 8) + blob(bytes(16)), E_RANGE)
        raw.error(WRITE, u64(mem) + u64(4095) + blob(bytes(2)), E_RANGE)
        raw.error(WRITE, u64(mem) + u64(0) + blob(bytes(4097)), E_RANGE)
        raw.error(COPY, u64(mem) + u64(2**64 - 10) + u64(other) + u64(0) + u64(20), E_RANGE)
        raw.error(COPY, u64(mem) + u64(0) + u64(other) + u64(2**64 - 10) + u64(20), E_RANGE)
        raw.error(COPY, u64(mem) + u64(0) + u64(other) + u64(0) + u64(2**63), E_RANGE)
        raw.ok(COPY, u64(mem) + u64(0) + u64(other) + u64(0) + u64(4096))
        body = raw.ok(COH_REPORT, u32(2**32 - 1))
        assert body.u64() == 0 and body.u32() == 0
        raw.error(UPLOAD, u64(2**63) + u64(0) + blob(b"EDGEKIT\0"), E_OOM, "--max-model-mb")
        raw.error(UPLOAD, u64(0) + u64(0) + blob(b""), E_MODEL, "empty")
        raw.error(UPLOAD, u64(100) + u64(50) + blob(bytes(10)), E_ARG, "does not continue")
        raw.ok(UPLOAD, u64(100) + u64(0) + blob(bytes(60)))
        raw.error(UPLOAD, u64(100) + u64(60) + blob(bytes(41)), E_ARG, "does not continue")
        raw.error(UPLOAD, u64(101) + u64(60) + blob(bytes(40)), E_ARG, "does not continue")
        rt = raw.ok(RT_CREATE, u32(0) + i64(0)).u64()
        raw.error(LOAD, u64(rt), E_ARG, "60 of 100 bytes")
        raw.ok(UPLOAD, u64(100) + u64(60) + blob(bytes(40)))
        raw.error(LOAD, u64(rt), E_MODEL)
        raw.error(LOAD, u64(rt), E_ARG, "without a complete model upload")
        big = u64(rt) + text("mlp") + u32(4097) + u32(0)
        raw.error(LAUNCH, big + u32(0) + i64(0) + u64(0) + u32(0), E_ARG, "4096")
        raw.error(RUN, u64(rt) + text("mlp") + u32(4097) + i64(0) + u64(0) + u32(0), E_ARG, "4096")
        raw.error(RUN, u64(rt) + text("nope") + u32(0) + i64(0) + u64(0) + u32(0), E_ARG, "nope")
        raw.error(RT_CREATE, u32(99) + i64(0), E_ARG)
        raw.error(RT_CREATE, u32(0) + i64(-5), E_ARG)
        raw.ok(RT_DESTROY, u64(rt))
        raw.ok(FREE, u64(mem))
        raw.ok(FREE, u64(other))
        raw.ok(PING)


CASES: dict[str, Callable[[int], None]] = {
    name[len("case_") :]: fn for name, fn in globals().items() if name.startswith("case_") and callable(fn)
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_frames(shared_server: Server, case: str) -> None:
    """Each abuse gets an error (the protocol's error frame and the end of the session where the doc says
    so), never a crash or a hang, and the server goes on serving normal clients."""
    CASES[case](shared_server.port)
    shared_server.assert_serves()


def test_oversized_frames_allocate_nothing(remote_server: Callable[..., Server]) -> None:
    """Payload lengths of 2**63 and 16 MiB + 1 are refused from the header alone: the error frame naming
    the maximum comes at once (the server waits for no payload), the session ends, and the server's
    memory does not jump."""
    server = remote_server()
    server.assert_serves()  # its threads and heap warmed up
    for length in (2**63, MAX_PAYLOAD + 1, 2**64 - 1):

        def send(length: int = length) -> None:
            with Raw(server.port) as raw:
                raw.handshake()
                raw.sock.sendall(header(WRITE, 9, length))
                raw.ended(E_CONNECTION, str(length), "maximum is 16777216")

        jump = rss_jump_kib(server, send)
        assert jump < 2048, f"remote_server's RSS grew by {jump} KiB on a header claiming {length} bytes"
    server.wait_for("4 ended sessions", lambda: server.ended() == 4)
    server.assert_serves()


FUZZ_TYPES: list[int] = [PING, DEV_SYNC, DEV_STATS, COH_REPORT, COH_CLEAR, MALLOC, FREE, WRITE, READ, COPY]
FUZZ_TYPES += [
    RT_CREATE,
    RT_DESTROY,
    UPLOAD,
    LOAD,
    LAUNCH,
    LAUNCH,
    LAUNCH,
    RUN,
    RUN,
    99,
]  # launches: weighted


def fuzz_session(port: int, mlp_bytes: bytes) -> tuple[Raw, dict[str, int]]:
    """A session with a 4 KiB memory and a runtime with mlp loaded: real ids to aim at."""
    raw = Raw(port)
    raw.handshake()
    ids = {"mem": raw.ok(MALLOC, u64(4096)).u64(), "rt": raw.ok(RT_CREATE, u32(0) + i64(1)).u64()}
    raw.ok(UPLOAD, u64(len(mlp_bytes)) + u64(0) + blob(mlp_bytes))
    body = raw.ok(LOAD, u64(ids["rt"]))
    assert body.u32() == 1 and body.text() == "mlp"
    return raw, ids


def fuzz_frame(rng: random.Random, ids: dict[str, int]) -> tuple[int, bytes]:
    """A request of a random type whose fields are drawn from values near the edges, sometimes cut
    short, lengthened or with a byte flipped."""
    mem, rt = ids["mem"], ids["rt"]
    number = rng.choice([0, 1, 3, 64, 255, 256, 4096, 4097, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1])
    some_id = rng.choice(
        [mem, rt, mem + 1, rt ^ (3 << 56), 0, forge(ID_MEMORY, 1, 1), forge(3, 0, 1), number]
    )

    def value() -> bytes:
        kind = rng.randrange(7)
        if kind == 0:
            return u64(some_id if rng.random() < 0.5 else number)
        if kind == 1:
            return u32(number & 0xFFFFFFFF)
        if kind == 2:
            return text(rng.choice(["mlp", "", "x" * 300, "mlp\0"]))
        if kind == 3:
            dims = [rng.choice([0, 1, 10, 64, -1, 2**40]) for _ in range(rng.choice([0, 1, 2, 8, 9]))]
            return shape(*dims)
        if kind == 4:
            return tensor(
                rng.choice([mem, 0, some_id]),
                (1, rng.choice([64, 10, 0, 65])),
                rng.choice([0, 64, 4095]),
                rng.choice([1, 0, 2, 99]),
            )
        if kind == 5:
            return blob(rng.randbytes(rng.choice([0, 1, 256])))
        return i64(rng.choice([-1, 0, 1, 2, 2**62]))

    type_ = rng.choice(FUZZ_TYPES)
    templates: dict[int, list[Callable[[], bytes]]] = {
        MALLOC: [lambda: u64(rng.choice([1, 64, 4096, MiB]))],
        WRITE: [lambda: u64(mem) + u64(rng.choice([0, 64, 4000])) + blob(bytes(rng.choice([1, 96, 200])))],
        READ: [lambda: u64(mem) + u64(rng.choice([0, 64, 4000])) + u64(rng.choice([1, 96, 200]))],
        COPY: [lambda: u64(mem) + u64(0) + u64(mem) + u64(rng.choice([0, 8])) + u64(rng.choice([8, 4096]))],
        LAUNCH: [
            lambda: launch_payload(rt, [tensor(mem, (1, 64))], [tensor(0, (1, 10))]),
            lambda: launch_payload(rt, [tensor(mem, (1, 64))], [tensor(mem, (1, 10), 2048)], user_mem=True),
        ],
        RUN: [
            lambda: (
                u64(rt) + text("mlp") + u32(1) + shape(1, 64) + blob(bytes(256)) + i64(1) + u64(0) + u32(0)
            )
        ],
        FREE: [lambda: u64(mem)],
        RT_DESTROY: [lambda: u64(rt)],
        PING: [lambda: b""],
        DEV_SYNC: [lambda: b""],
        DEV_STATS: [lambda: b""],
    }
    if type_ in templates and rng.random() < 0.7:
        payload = rng.choice(templates[type_])()
    else:
        payload = b"".join(value() for _ in range(rng.randrange(6)))
    mutation = rng.randrange(8)
    if mutation == 0 and payload:
        payload = payload[: rng.randrange(len(payload))]
    elif mutation == 1:
        payload += rng.randbytes(rng.choice([1, 8]))
    elif mutation == 2 and payload:
        flip = bytearray(payload)
        flip[rng.randrange(len(flip))] ^= 1 << rng.randrange(8)
        payload = bytes(flip)
    return type_, payload


def test_fuzzed_requests(shared_server: Server, mlp: Path) -> None:
    """Random requests (edge values, real ids, cut short, lengthened, bit-flipped) get an answer or end
    their session cleanly; the server never dies, hangs or stops serving."""
    rng = random.Random(20240611)
    mlp_bytes = mlp.read_bytes()
    holder = ek.Device(shared_server.url)  # keeps the board's device open: what a session leaks stays
    before = holder.stats
    raw, ids = fuzz_session(shared_server.port, mlp_bytes)
    deadline = time.monotonic() + 20
    sent = answered = ended = 0
    try:
        while sent < 3000 and time.monotonic() < deadline:
            type_, payload = fuzz_frame(rng, ids)
            request = raw.send(type_, payload)
            sent += 1
            frame: Frame | None
            while True:
                frame = raw.recv()
                if (
                    frame is None
                    or frame.type == REPLY
                    or (frame.request == request and frame.type != LAUNCH_DONE)
                ):
                    break
            if frame is not None and frame.type != REPLY:
                answered += 1
                assert frame.type == type_ | REPLY, f"{frame} for type {type_} {payload.hex()}"
                if frame.status == OK and type_ in (FREE, RT_DESTROY):  # a new session, new objects
                    raw.sock.close()
                    raw, ids = fuzz_session(shared_server.port, mlp_bytes)
                continue
            # The session ended (a protocol error): it says why first, unless it died with the server.
            assert frame is not None, f"no error frame for type {type_} {payload.hex()}:\n{shared_server.log}"
            assert frame.request == 0 and frame.status in (E_CONNECTION, E_VERSION), str(frame)
            assert raw.recv() is None
            ended += 1
            raw.sock.close()
            assert shared_server.alive(), f"type {type_} payload {payload.hex()} killed the server"
            raw, ids = fuzz_session(shared_server.port, mlp_bytes)
    finally:
        raw.sock.close()
    print(f"fuzz: {sent} requests, {answered} answered, {ended} ended their session")
    assert answered > 500 and ended > 100
    shared_server.wait_idle(keep=1)
    after = holder.stats
    assert (after["used"], after["allocations"]) == (before["used"], before["allocations"]), (before, after)
    holder.close()
    shared_server.assert_serves()


# ---- 2. versions, and peers that are not remote_servers ------------------------------------------------


def test_hello_from_a_newer_client(shared_server: Server) -> None:
    with Raw(shared_server.port) as raw:
        frame = raw.reply(raw.send(HELLO, hello_payload(2, 3, "0.3.0")))
        assert (frame.type, frame.status) == (HELLO | REPLY, E_VERSION), str(frame)
        message = frame.message
        for part in (
            f"EdgeKit {ek.__version__}",
            "EdgeKit 0.3.0",
            "protocol 1",
            "protocol 2",
            "upgrade EdgeKit on the board to 0.3.0",
        ):
            assert part in message, f"{part!r} not in {message!r}"
        raw.closed()


def test_hello_from_an_older_client(shared_server: Server) -> None:
    with Raw(shared_server.port) as raw:
        frame = raw.reply(raw.send(HELLO, hello_payload(0, 0, "0.0.1")))
        assert (frame.type, frame.status) == (HELLO | REPLY, E_VERSION), str(frame)
        message = frame.message
        for part in (
            f"EdgeKit {ek.__version__}",
            "EdgeKit 0.0.1",
            "protocol 1",
            "only up to 0",
            f"upgrade EdgeKit on the host to {ek.__version__}",
            f"pip install edgekit=={ek.__version__}",
        ):
            assert part in message, f"{part!r} not in {message!r}"
        raw.closed()
    shared_server.assert_serves()


SSH_ADVICE = re.escape("is an SSH server, not an EdgeKit remote_server: use ssh://USER@127.0.0.1:")


class FakePeer:
    """A TCP listener that answers each connection with `greeting`, then stays silent until it closes
    (after `linger` seconds, or at close())."""

    def __init__(self, greeting: bytes, linger: float = 30.0) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(IO_TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.greeting, self.linger = greeting, linger
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.sendall(self.greeting)
            self.done.wait(self.linger)

    def close(self) -> None:
        self.done.set()
        self.thread.join(IO_TIMEOUT)
        self.listener.close()


@pytest.mark.parametrize(
    ("greeting", "linger", "expected"),
    [
        (b"SSH-2.0-OpenSSH\r\n", 30.0, SSH_ADVICE),
        (b"SSH-2.0-OpenSSH\r\n", 0.0, SSH_ADVICE),
        (b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", 30.0, SSH_ADVICE),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", 30.0, "is an HTTP server, not an EdgeKit remote_server"),
        (b"", 30.0, r"receiving timed out \(no answer: is that port a remote_server\?\)"),
        (b"", 0.0, "(closed the connection|Connection reset by peer)"),
        (b"\x00" * 24, 30.0, "magic 0x00000000, not EdgeKit's 0x50524b45"),
        (header(PING | REPLY, 1, 4) + u32(0), 30.0, "not HELLO's reply: not an EdgeKit remote_server"),
    ],
    ids=["ssh-short-banner", "ssh-banner-closes", "ssh", "http", "silent", "closes", "zeros", "wrong-reply"],
)
def test_connecting_to_something_else(greeting: bytes, linger: float, expected: str) -> None:
    """The client says what it found instead of a remote_server (`expected`, a regular expression), within
    its connect timeout."""
    peer = FakePeer(greeting, linger)
    try:
        start = time.monotonic()
        with pytest.raises(ek.ConnectionLostError) as exc:
            ek.Device(f"tcp://127.0.0.1:{peer.port}", connect_timeout=0.5)
        elapsed = time.monotonic() - start
    finally:
        peer.close()
    assert re.search(expected, str(exc.value)), str(exc.value)
    assert f"tcp://127.0.0.1:{peer.port}" in str(exc.value)
    assert elapsed < 3, f"{elapsed:.1f} s to fail with a 0.5 s connect timeout"


def test_connecting_to_a_closed_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(ek.ConnectionLostError, match="is remote_server running there"):
        ek.Device(f"tcp://127.0.0.1:{port}", connect_timeout=2)


# ---- 3./4. a client killed mid-transfer, a server killed mid-launch ----------------------------------

KILLED_CLIENT = """
import sys, time
import edgekit as ek

first = True

def progress(what, done, total):
    global first
    print("progress", what, done, total, flush=True)
    if first:  # hold the transfer with chunks in flight, until the test kills this process
        first = False
        time.sleep(30)

dev = ek.Device(sys.argv[1], progress=progress)
mem = dev.malloc(256 << 20)
print("allocated", flush=True)
mem.write(bytes(256 << 20))
print("written", flush=True)
"""


def test_client_killed_mid_transfer(remote_server: Callable[..., Server]) -> None:
    """A client SIGKILLed in the middle of a 256 MiB write: its session ends, its memory is freed, and
    the server goes on serving."""
    server = remote_server()
    holder = ek.Device(server.url)  # keeps the board's device open, so its heap shows what stays allocated
    base = holder.stats
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, server.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while not any(line.startswith("progress") for line in lines):
            assert time.monotonic() < deadline, f"the client made no progress: {lines}"
            ready, _, _ = select.select([child.stdout], [], [], 1)
            if ready:
                line = child.stdout.readline()
                assert line, f"the client ended early ({child.wait(5)}): {lines}"
                lines.append(line)
        assert lines[0] == "allocated\n"
        assert holder.stats["used"] >= base["used"] + (256 << 20)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        assert child.stdout is not None and child.stderr is not None
        child.stdout.close()
        child.stderr.close()
    server.wait_for("the killed client's session to end", lambda: server.ended() == 1)
    ended = re.search(r"session \d+ \(.*\) ended: (.*)", server.log)
    assert ended, server.log
    assert re.search(r"closed the connection|reset by peer|Broken pipe", ended.group(1)), ended.group(1)
    after = holder.stats
    assert (after["used"], after["allocations"]) == (base["used"], base["allocations"]), (base, after)
    holder.close()
    server.assert_serves()


def test_server_killed_mid_launch(remote_server: Callable[..., Server], mlp: Path) -> None:
    """SIGKILL of the server while a launch sleeps on it: the waiting client gets ConnectionLostError
    saying so at once (not a hang, not another error); later calls say the same; closing works."""
    server = remote_server(env=SLOW_HOOK)
    ctx = ek.Context(device=server.url)
    req = ctx.load_model(mlp).network().create_request()
    req.set_inputs([random_input(input_shape_of("mlp"))])
    req.infer()
    time.sleep(0.3)  # the launch is asleep on the board (3 s)
    assert not req.wait(timeout=0)
    server.proc.send_signal(signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(ek.ConnectionLostError) as exc:
        req.wait(timeout=10)
    elapsed = time.monotonic() - start
    assert elapsed < 3, f"{elapsed:.1f} s to notice the lost connection"
    message = str(exc.value)
    assert f"the connection to {server.url} was lost" in message, message
    assert "the launch's outcome on the board is unknown" in message, message
    with pytest.raises(ek.ConnectionLostError, match="was lost"):
        ctx.device.stats  # noqa: B018
    with pytest.raises(ek.ConnectionLostError, match="was lost"):
        ctx.device.malloc(64)
    ctx.close()  # frees what the lost session held, without raising: there is nothing left to free


def test_server_killed_mid_transfer(remote_server: Callable[..., Server]) -> None:
    """A 256 MiB write whose server dies under it fails with ConnectionLostError, promptly."""
    server = remote_server()
    progressed, killed = threading.Event(), threading.Event()

    def progress(what: str, done: int, total: int) -> None:
        progressed.set()
        killed.wait(10)  # chunks stay in flight until the server is gone

    dev = ek.Device(server.url, progress=progress)
    mem = dev.malloc(256 << 20)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            mem.write(bytes(256 << 20))
        except BaseException as e:  # reported by the test
            errors.append(e)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        assert progressed.wait(20), "the write made no progress"
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
    finally:
        killed.set()
    start = time.monotonic()
    thread.join(10)
    assert not thread.is_alive(), "the write hangs after the server died"
    assert time.monotonic() - start < 3
    assert len(errors) == 1 and isinstance(errors[0], ek.ConnectionLostError), errors
    assert f"the connection to {server.url}" in str(errors[0]), errors[0]
    mem.free()
    dev.close()


# ---- 5. launch timeout -------------------------------------------------------------------------------


def test_launch_timeout(remote_server: Callable[..., Server], mlp: Path) -> None:
    """A launch past --launch-timeout is WaitTimeoutError naming that timeout (when the timeout passes,
    not when the launch ends); the session stays usable, and closes once the launch has really ended."""
    server = remote_server("--launch-timeout", "1", env=SLOW_HOOK)
    with ek.Context(device=server.url) as ctx:
        req = ctx.load_model(mlp).network().create_request()
        req.set_inputs([random_input(input_shape_of("mlp"))])
        start = time.monotonic()
        req.infer()
        with pytest.raises(ek.WaitTimeoutError) as exc:
            req.wait(timeout=10)
        elapsed = time.monotonic() - start
        assert 0.9 < elapsed < 2.5, f"the timeout came after {elapsed:.1f} s (launch timeout 1 s, launch 3 s)"
        message = str(exc.value)
        assert "launch timeout of 1000 ms" in message and "--launch-timeout" in message, message
        assert "still running on the board" in message, message
        assert "a launch passed the launch timeout" in server.log
        # The session goes on: memory, stats and sync work while the launch still sleeps on the board.
        dev = ctx.device
        mem = dev.malloc(4096)
        mem.write(b"\x5a" * 4096)
        assert mem.read(16) == b"\x5a" * 16
        mem.free()
        assert dev.stats["allocations"] >= 2  # the request's tensors
        dev.sync()
        assert time.monotonic() - start < 2.9, "the session was blocked by the running launch"
    server.wait_idle()
    assert "ended: 127.0.0.1" in server.log
    server.assert_serves()


def test_memory_of_a_timed_out_launch_is_kept_until_it_ends(
    remote_server: Callable[..., Server], mlp: Path
) -> None:
    """After its timeout the client may free a launch's memory, but the launch still runs on the board:
    the server keeps that memory until the launch really ends, then frees it (no use after free)."""
    server = remote_server("--launch-timeout", "1", env=SLOW_HOOK)
    holder = ek.Device(server.url)  # another session on the same board device: its stats show the heap
    base = holder.stats["allocations"]
    with ek.Context(device=server.url) as ctx:
        net = ctx.load_model(mlp).network()
        req = net.create_request()
        tensors = len(net.inputs) + len(net.outputs)  # one device allocation each
        req.set_inputs([random_input(input_shape_of("mlp"))])
        start = time.monotonic()
        req.infer()
        with pytest.raises(ek.WaitTimeoutError):
            req.wait(timeout=10)
        held = holder.stats["allocations"]
        req.close()  # frees its tensors: the board must keep the ones the launch uses
        assert holder.stats["allocations"] == held
        assert time.monotonic() - start < 2.5, "the launch ended before the test could look"
        # When the launch ends they go; its execution context (arena) was made after the test hook's
        # sleep, so it may be one allocation more than before.
        deadline = time.monotonic() + 10
        while holder.stats["allocations"] > held - tensors + 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert holder.stats["allocations"] <= held - tensors + 1, "the deferred frees were not released"
        assert time.monotonic() - start > 2.5  # released when the 3 s launch ended, not before
    deadline = time.monotonic() + 10
    while holder.stats["allocations"] != base and time.monotonic() < deadline:
        time.sleep(0.1)
    assert holder.stats["allocations"] == base
    holder.close()
    server.assert_serves()


# ---- 6. 1000 sessions in a row ------------------------------------------------------------------------


def test_a_thousand_sessions_leak_nothing(remote_server: Callable[..., Server], mlp: Path) -> None:
    """1000 sessions one after another: memory round trips, some with a model loaded and run, some that
    leave memory allocated or break the protocol. The server's RSS and open fds stay flat, and the board's
    heap holds nothing of theirs afterwards."""
    server = remote_server()
    holder = ek.Device(server.url)  # the board's device stays open: its heap shows any leak
    base = holder.stats
    data = random.Random(5).randbytes(64 * 1024)
    x = random_input(input_shape_of("mlp"))
    mlp_bytes = mlp.read_bytes()

    def session(i: int) -> None:
        if i % 20 == 0:
            with ek.Context(device=server.url) as ctx:
                (y,) = ctx.load_model(mlp_bytes).network().create_request().run([x])
                assert y.shape == (1, 10)
        elif i % 10 == 5:  # leaves its memory to the server to free
            with Raw(server.port) as raw:
                raw.handshake()
                left = raw.ok(MALLOC, u64(len(data))).u64()
                raw.ok(WRITE, u64(left) + u64(0) + blob(data))
        elif i % 25 == 7:  # a protocol error
            with Raw(server.port) as raw:
                raw.handshake()
                raw.send(MALLOC, b"abc")
                raw.ended(E_CONNECTION, "malformed")
        else:
            with ek.Device(server.url) as dev:
                mem = dev.malloc(len(data))
                mem.write(data)
                assert mem.read(64, offset=4096) == data[4096 : 4096 + 64]
                mem.free()

    def measure() -> tuple[int, int]:
        server.wait_idle(keep=1)  # every session but the holder's has ended and closed its fds
        return server.rss_kib(), server.fd_count()

    start = time.monotonic()
    for i in range(50):
        session(i)
    rss_warm, fds_warm = measure()
    for i in range(50, 1000):
        session(i)
    rss_end, fds_end = measure()
    elapsed = time.monotonic() - start
    assert server.ended() == 1000
    after = holder.stats
    holder.close()
    print(
        f"\n1000 sessions in {elapsed:.1f} s: remote_server RSS {rss_warm} KiB after 50, {rss_end} KiB after "
        f"1000 ({rss_end - rss_warm:+d} KiB); open fds {fds_warm} -> {fds_end}"
    )
    assert (after["used"], after["allocations"]) == (base["used"], base["allocations"]), (base, after)
    assert rss_end - rss_warm < 4096, f"RSS grew by {rss_end - rss_warm} KiB over 950 sessions"
    assert fds_end == fds_warm
    server.assert_serves()


# ---- 7. concurrent clients -----------------------------------------------------------------------------


def test_sixteen_concurrent_clients(remote_server: Callable[..., Server], mlp: Path) -> None:
    """16 threads, each with its own connection and runtime, run mlp or resnet18 at once, 8 times each;
    every output is bit-identical to a local run with the same kernels and threads (both sides run the
    same library and kernels on this machine, and a network's result does not depend on how its work
    was split between threads)."""
    server = remote_server()
    models = {"mlp": mlp, "resnet18": compile_ekm("resnet18")}
    inputs = {name: [random_input(input_shape_of(name), seed=k) for k in range(4)] for name in models}
    with ek.Device(server.url) as probe:
        info = probe.remote_info
        assert info is not None
        kernels, threads = info["kernels"], info["threads"]
    expected = {}
    with ek.Context(device=0, kernels=kernels, threads=threads) as local:
        for name, path in models.items():
            req = local.load_model(path).network().create_request()
            expected[name] = [req.run([x])[0] for x in inputs[name]]
    errors: list[str] = []
    barrier = threading.Barrier(16, timeout=30)

    def client(t: int) -> None:
        name = ("mlp", "resnet18")[t % 2]
        try:
            with contextlib.ExitStack() as stack:
                # Half open the device themselves, half let the context do it.
                device = stack.enter_context(ek.Device(server.url)) if t % 4 < 2 else server.url
                ctx = stack.enter_context(ek.Context(device=device, kernels=kernels, threads=threads))
                assert ctx.kernels == kernels
                req = ctx.load_model(models[name]).network().create_request()
                barrier.wait()
                for i in range(8):
                    k = (t + i) % len(inputs[name])
                    (y,) = req.run([inputs[name][k]])
                    if not np.array_equal(y, expected[name][k]):
                        error = np.abs(y - expected[name][k]).max()
                        errors.append(f"client {t} ({name}) run {i}: max error {error}")
        except BaseException as e:  # reported by the test
            errors.append(f"client {t} ({name}): {e!r}")

    clients = [threading.Thread(target=client, args=(t,)) for t in range(16)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(60)
    assert not any(thread.is_alive() for thread in clients), "a client hangs"
    assert not errors, errors
    server.wait_idle()
    assert server.ended() == 17
    server.assert_serves()


# ---- 8. a client that never reads its replies ------------------------------------------------------------


def test_client_that_never_reads(remote_server: Callable[..., Server]) -> None:
    """A client asks for 64 MiB in READs and never reads the replies: the server's send times out after
    --idle-timeout, it drops that session and frees its memory; other clients are served throughout."""
    server = remote_server("--idle-timeout", "2")
    holder = ek.Device(server.url)  # idle, but alive: it pings every third of the idle timeout
    base = holder.stats
    stuck = Raw(server.port, rcvbuf=4096)
    try:
        stuck.handshake()
        mem = stuck.ok(MALLOC, u64(64 * MiB)).u64()
        stuck.sock.settimeout(0.2)
        for k in range(16):
            try:
                stuck.send(READ, u64(mem) + u64(k * CHUNK) + u64(CHUNK))
            except TimeoutError:
                break
        stuck.sock.settimeout(IO_TIMEOUT)
        start = time.monotonic()
        # Meanwhile, others are served: the holder and new sessions.
        assert holder.stats["used"] >= base["used"] + 64 * MiB
        server.assert_serves()
        mem2 = holder.malloc(MiB)
        mem2.write(bytes(range(256)) * 4096)
        assert mem2.read(256) == bytes(range(256))
        mem2.free()
        assert time.monotonic() - start < 1.5, "the stuck session held up the others"
        # Each send times out after 2 s without progress; the kernel lets a few KiB more through now and
        # then, so it takes a few of them.
        server.wait_for("the stuck session to be dropped", lambda: "timed out" in server.log, timeout=20)
        dropped = r"session 2 \(.*\) ended: 127\.0\.0\.1:\d+: sending timed out$"
        assert re.search(dropped, server.log, re.M), server.log
        print(f"\nthe stuck session was dropped {time.monotonic() - start:.1f} s after its first READ")
    finally:
        stuck.sock.close()
    after = holder.stats
    assert (after["used"], after["allocations"]) == (base["used"], base["allocations"]), (base, after)
    server.assert_serves()
    holder.stats  # noqa: B018 - the holder stayed connected throughout
    holder.close()


def test_idle_timeout(remote_server: Callable[..., Server], mlp: Path) -> None:
    """With --idle-timeout 1, a silent client and one stalled in the middle of a frame are dropped after
    about a second and what they held is freed; an idle ek.Device stays (it pings), and so does a busy
    one whose launch completions arrive in a stream (they keep its keepalive quiet)."""
    server = remote_server(
        "--idle-timeout", "1", env={"EDGEKIT_TEST_HOOKS": "1", "EDGEKIT_TEST_SLOW_LAUNCH_MS": "250"}
    )
    holder = ek.Device(server.url)
    base = holder.stats
    with Raw(server.port) as silent, Raw(server.port) as stalled:
        for raw in (silent, stalled):
            raw.handshake()
            raw.ok(MALLOC, u64(MiB))
        stalled.sock.sendall(header(WRITE, 9, 1000) + bytes(10))
        start = time.monotonic()
        silent.closed()
        stalled.ended(E_TIMEOUT, "receiving timed out")
        elapsed = time.monotonic() - start
    assert elapsed < 3, f"silent clients were dropped after {elapsed:.1f} s (--idle-timeout 1)"
    assert re.search(r"ended: idle timeout$", server.log, re.M), server.log
    time.sleep(max(0.0, 2.5 - elapsed))  # the holder has been idle for 2.5 idle timeouts
    after = holder.stats
    assert (after["used"], after["allocations"]) == (base["used"], base["allocations"]), (base, after)
    with ek.Context(device=holder) as ctx:
        net = ctx.load_model(mlp).network()
        requests = [net.create_request() for _ in range(16)]  # 2 s: the device runs 2 launches at once
        for req in requests:
            req.set_inputs([random_input(input_shape_of("mlp"))])
        start = time.monotonic()
        for req in requests:
            req.infer()
        for req in requests:
            assert req.wait(timeout=20)
        assert time.monotonic() - start > 1.5, "the launches should outlast the idle timeout"
        assert ctx.device.stats["allocations"] >= 32  # still connected
    assert len(server.open_sessions()) == 1
    holder.close()
    server.assert_serves()


def test_sigterm_ends_sessions_and_launches(remote_server: Callable[..., Server], mlp: Path) -> None:
    """SIGTERM with a client connected and its launch asleep: the client learns at once that the
    connection is gone; the server waits for the launch, frees the session and exits 0."""
    server = remote_server(env=SLOW_HOOK)
    ctx = ek.Context(device=server.url)
    req = ctx.load_model(mlp).network().create_request()
    req.set_inputs([random_input(input_shape_of("mlp"))])
    req.infer()
    time.sleep(0.3)  # the launch is asleep on the board (3 s)
    server.proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    with pytest.raises(ek.ConnectionLostError, match="was lost"):
        req.wait(timeout=10)
    assert time.monotonic() - start < 1.5
    assert server.proc.wait(10) == 0
    assert 2 < time.monotonic() - start + 0.3 < 6, "the server did not wait for the launch"
    assert "ended: the server is stopping" in server.log and server.log.rstrip().endswith("stopped")
    ctx.close()


# ---- 9. limits and refusals -----------------------------------------------------------------------------


def test_max_sessions(remote_server: Callable[..., Server]) -> None:
    server = remote_server("--max-sessions", "2")
    first, second = ek.Device(server.url), ek.Device(server.url)
    with pytest.raises(ek.BusyError) as exc:
        ek.Device(server.url, connect_timeout=5)
    assert "remote_server is full" in str(exc.value) and "--max-sessions" in str(exc.value), exc.value
    assert "refused 127.0.0.1" in server.log
    first.close()
    server.wait_idle(keep=1)
    third = ek.Device(server.url)  # a session ended: room for another
    assert third.stats["total"] > 0
    third.close()
    second.close()
    server.assert_serves()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1"])
def test_refuses_non_loopback_hosts(host: str) -> None:
    result = subprocess.run(
        [str(app.binary("remote_server")), "--host", host, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 1, result
    assert result.stdout == ""
    message = result.stderr
    assert f"refusing to listen on '{host}': it is not a loopback address" in message, message
    assert "nothing would authenticate or encrypt" in message and "ssh://" in message, message
    assert "--make-key" in message and "--key" in message, message


def test_port_in_use(remote_server: Callable[..., Server]) -> None:
    server = remote_server()
    result = subprocess.run(
        [str(app.binary("remote_server")), "--port", str(server.port)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 1, result
    assert f"port {server.port}" in result.stderr and "in use" in result.stderr, result.stderr
    server.assert_serves()


# ---- 10. the board's own errors, mapping semantics --------------------------------------------------------


def source_nodes_corrupted(data: bytes) -> bytes:
    """mlp's .ekm with the first SOURCE_NODES string reference past the STRINGS section."""
    (table_offset,) = struct.unpack_from("<Q", data, 24)
    (count,) = struct.unpack_from("<I", data, 32)
    entries = (struct.unpack_from("<IIQQ", data, table_offset + 24 * i) for i in range(count))
    sections = {kind: (offset, size) for kind, _record, offset, size in entries}
    strings_size = sections[1][1]
    bad = bytearray(data)
    struct.pack_into("<I", bad, sections[13][0], strings_size)
    return bytes(bad)


def test_remote_errors_are_the_boards(remote_server: Callable[..., Server], mlp: Path) -> None:
    """Failures come back with the board's status and message, as the same call fails locally."""
    server = remote_server()
    heap = 64 * MiB
    with ek.Device(server.url, heap_size=heap) as dev, ek.Device(1, heap_size=heap) as local:
        for where in (dev, local):
            with pytest.raises(ek.OutOfMemoryError) as exc:
                where.malloc(heap + MiB)
            if where is dev:
                remote_message = exc.value.message
            else:
                assert remote_message == exc.value.message.replace("device 1", "device 0")
        assert "no block of" in remote_message, remote_message
        mem = dev.malloc(64)
        mem.free()
        with pytest.raises(ek.FreedHandleError):
            mem.read(8)
        with pytest.raises(ek.DoubleFreeError):
            mem.free()
    bad = source_nodes_corrupted(mlp.read_bytes())
    with ek.Context(device=server.url) as ctx, pytest.raises(ek.ModelInvalidError) as remote:
        ctx.load_model(bad)
    with ek.Context(device=1) as ctx, pytest.raises(ek.ModelInvalidError) as local_exc:
        ctx.load_model(bad)
    assert "SOURCE_NODES" in remote.value.message, remote.value
    assert remote.value.message == local_exc.value.message
    with ek.Context(device=server.url) as ctx:
        req = ctx.load_model(mlp).network().create_request()
        with pytest.raises(ek.InvalidArgumentError, match="input"):
            req.set_inputs([np.zeros((1, 65), np.float32)])
        req.close()
    # The same mistakes, as the board words them.
    mlp_bytes = mlp.read_bytes()
    with Raw(server.port) as raw:
        raw.handshake()
        rt = raw.ok(RT_CREATE, u32(0) + i64(0)).u64()
        raw.ok(UPLOAD, u64(len(mlp_bytes)) + u64(0) + blob(mlp_bytes))
        raw.ok(LOAD, u64(rt))

        def run(dims: tuple[int, ...], data: bytes) -> bytes:
            return u64(rt) + text("mlp") + u32(1) + shape(*dims) + blob(data) + i64(0) + u64(0) + u32(0)

        raw.error(RUN, run((1, 65), bytes(260)), E_ARG, "'input'", "1x65", "1x64")
        raw.error(RUN, run((1, 64), bytes(4)), E_RANGE, "'input'")
        assert raw.ok(RUN, run((1, 64), bytes(256))).u32() == 1
        raw.ok(UPLOAD, u64(len(bad)) + u64(0) + blob(bad))
        raw.error(LOAD, u64(rt), E_MODEL, "SOURCE_NODES")
    server.assert_serves()


def test_mapping_semantics(remote_server: Callable[..., Server]) -> None:
    """A remote mapping is a host copy: it shows the memory as it was when mapped; writes through it
    reach the board at flush (only the flushed range), and invalidate fetches what the board changed."""
    server = remote_server()
    with ek.Device(server.url) as dev:
        mem, other = dev.malloc(4096), dev.malloc(4096)
        mem.write(b"A" * 4096)
        view = mem.map()
        arr = view.ndarray(np.uint8, 4096)
        assert bytes(arr) == b"A" * 4096
        arr[:128] = ord("B")
        assert mem.read(128) == b"A" * 128, "a write through the view reached the board before flush"
        mem.flush(offset=64, nbytes=64)
        assert mem.read(128) == b"A" * 64 + b"B" * 64
        mem.flush()
        assert mem.read(128) == b"B" * 128
        other.write(b"C" * 4096)
        dev.copy(mem, 1024, other, 0, 1024)  # the board writes, the host copy does not see it yet
        assert bytes(arr[1024:1032]) == b"A" * 8
        mem.invalidate(offset=1024, nbytes=512)
        assert bytes(arr[1024:2048]) == b"C" * 512 + b"A" * 512
        mem.invalidate()
        assert bytes(arr[:2048]) == b"B" * 128 + b"A" * 896 + b"C" * 1024
        arr[:8] = ord("Z")  # never flushed: lost at unmap
        del arr, view
        mem.unmap()
        assert mem.read(8) == b"B" * 8
        mem.free()
        other.free()
    server.assert_serves()


# ---- 11. the server's status line ---------------------------------------------------------------------


def test_sigusr1_logs_the_status(remote_server: Callable[..., Server], tmp_path: Path) -> None:
    """SIGUSR1 makes remote_server log one line: the sessions it counts open and started, malloc's bytes
    in use and its open files (also with --quiet); the soak (tests/soak.py) reads it."""
    status = re.compile(
        r"remote_server: status: (\d+) sessions? open, (\d+) started; heap in use (\d+) bytes; "
        r"(\d+) open files$",
        re.M,
    )

    def status_of(server: Server) -> tuple[int, ...]:
        before = len(status.findall(server.log))
        server.proc.send_signal(signal.SIGUSR1)
        server.wait_for("a status line", lambda: len(status.findall(server.log)) > before)
        return tuple(map(int, status.findall(server.log)[-1]))

    server = remote_server()
    open_, started, heap, files = status_of(server)
    assert (open_, started) == (0, 0) and heap > 0 and files >= 4, server.log
    with ek.Device(server.url) as first, Raw(server.port) as raw:
        raw.handshake()
        first.malloc(1 << 20)
        assert status_of(server)[:2] == (2, 2), server.log
        assert status_of(server)[3] >= files + 2  # a socket and a wake pipe per session
    server.wait_idle()
    assert status_of(server)[:2] == (0, 2) and "status: 0 sessions open, 2 started;" in server.log
    server.assert_serves()
    quiet = start_server(tmp_path / "quiet.log", "--quiet")  # stopped here: it does not log "stopped"
    try:
        assert status_of(quiet)[:2] == (0, 0) and quiet.log.count("\n") == 1, quiet.log
    finally:
        quiet.proc.send_signal(signal.SIGTERM)
        assert quiet.proc.wait(10) == 0
        assert quiet.proc.stdout is not None
        quiet.proc.stdout.close()
