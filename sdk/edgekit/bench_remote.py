"""Benchmark of remote devices (docs/remote-protocol.md), on this machine's loopback: remote_server (the
package's copy) in another process, against plain TCP sockets measured in the same run.

- Round trip: the median ``req.run`` of a one-op model (a 1x16 Relu) on a local device and on the
  remote one, and a plain TCP ping-pong of a 64-byte message (the transport's floor).
- Transfer: 64 MiB written to remote memory and read back, against a plain TCP echo of 64 MiB (the
  client sends it all, the echo server reads it all and sends it back, as the remote write then read
  does), as throughput and the ratio (the target is >= 0.8x).

No asserts: the numbers are for reading.

    python -m edgekit.bench_remote [--quick] [--mib N]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import edgekit as ek
from edgekit.app import SERVER, binary


@contextmanager
def remote_server() -> Iterator[str]:
    """remote_server on a free loopback port; yields its URL."""
    path = binary(SERVER)
    if path is None:
        raise SystemExit(f"this edgekit package has no {SERVER}: reinstall it (pip install .)")
    proc = subprocess.Popen([str(path), "--port", "0", "--quiet"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise SystemExit(f"{SERVER} did not start: {line!r}")
        yield "tcp://" + line.rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _recv_exactly(sock: socket.socket, view: memoryview) -> None:
    while view:
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("peer closed")
        view = view[n:]


@contextmanager
def tcp_echo(size: int) -> Iterator[socket.socket]:
    """A plain TCP echo server on loopback that reads `size` bytes, then sends them back, per message;
    yields a connected client socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    buffer = bytearray(size)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            try:
                while True:
                    _recv_exactly(conn, memoryview(buffer))
                    conn.sendall(buffer)
            except ConnectionError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = socket.create_connection(listener.getsockname())
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        yield client
    finally:
        client.close()
        thread.join(timeout=10)
        listener.close()


def _median_s(run: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tiny_model(folder: Path) -> Path:
    """A one-op model: Relu over a 1x16 float32 input."""
    import onnx
    from onnx import TensorProto, helper

    from edgekit.compiler import compile_model

    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["output"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 16])],
    )
    source = folder / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), source)
    target = folder / "tiny.ekm"
    compile_model(source, target, log=lambda _: None)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgekit.bench_remote", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--mib", type=int, default=64, help="the transfer's size in MiB (default 64)")
    args = parser.parse_args(argv)
    repeats = 50 if args.quick else 500
    big_repeats = 3 if args.quick else 7
    size = args.mib << 20
    payload = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    back = np.empty_like(payload)

    with tempfile.TemporaryDirectory(prefix="edgekit-bench-remote-") as tmp, remote_server() as url:
        model = tiny_model(Path(tmp))
        x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
        rows: list[tuple[str, float]] = []
        with ek.Context(device=0) as ctx:
            req = ctx.load_model(str(model)).network().create_request()
            rows.append(("req.run, local device", _median_s(lambda: req.run([x]), repeats)))
        with ek.Context(device=url) as ctx:
            req = ctx.load_model(str(model)).network().create_request()
            rows.append(("req.run, remote device (loopback)", _median_s(lambda: req.run([x]), repeats)))
        small = bytearray(64)
        with tcp_echo(len(small)) as sock:

            def ping() -> None:
                sock.sendall(small)
                _recv_exactly(sock, memoryview(small))

            rows.append(("TCP ping-pong, 64 bytes", _median_s(ping, repeats)))

        print(f"round trip of a one-op model (median of {repeats}):")
        for what, seconds in rows:
            print(f"  {what:<40} {seconds * 1e6:9.1f} us")
        overhead = rows[1][1] - rows[0][1]
        ratio = overhead / rows[2][1]
        print(
            f"  {'remote overhead (remote - local)':<40} {overhead * 1e6:9.1f} us "
            f"({ratio:.1f}x the TCP ping-pong)"
        )

        with ek.Device(url) as dev, dev.malloc(size) as mem:

            def remote() -> None:
                mem.write(payload)
                mem.read(out=back)

            t_remote = _median_s(remote, big_repeats, warmup=1)
            ok = bool(np.array_equal(back, payload))
        with tcp_echo(size) as sock:
            buffer = memoryview(back)

            def echo() -> None:
                sock.sendall(payload)
                _recv_exactly(sock, buffer)

            t_echo = _median_s(echo, big_repeats, warmup=1)
        rate = 2 * size / (1 << 30)
        print(f"\ntransfer of {args.mib} MiB there and back (median of {big_repeats}):")
        print(
            f"  {'remote memory write + read':<40} {t_remote * 1e3:9.1f} ms  {rate / t_remote:6.2f} GiB/s"
            f"  (data intact: {ok})"
        )
        print(f"  {'plain TCP echo':<40} {t_echo * 1e3:9.1f} ms  {rate / t_echo:6.2f} GiB/s")
        print(f"  {'ratio remote / TCP echo (throughput)':<40} {t_echo / t_remote:9.2f}x  (target >= 0.8x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
