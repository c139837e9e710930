"""Remote devices on boards (docs/remote-protocol.md): remote_server started as invoke serve starts it
(edgekit_packaging.devices.start_server), the test models run through it from this host's Python.

- The emulated aarch64 board: its flashed remote_server under qemu (it shares this machine's network, so
  it listens on this machine's 127.0.0.1), reached as ek.Device("tcp://127.0.0.1:PORT"). Every output
  must equal, bit for bit, the same model run by the board's own Python on the same board, with the same
  kernels and threads (both XNNPACK and portable), and be within 1e-4 of onnxruntime's.
- A throwaway sshd "board" (this machine, tests/sshd.py): its remote_server (the host build in the
  package) started over SSH, reached as ek.Device("ssh://root@127.0.0.1:PORT", ...) through an SSH
  channel; every output must equal a local run on this machine bit for bit. A wrong host key is refused;
  a board with no server says so.
- invoke serve --device emu, end to end: the line it prints connects, Ctrl-C stops it cleanly.

One server per board for the whole module (the emulated board is slow to start things on).
"""

from __future__ import annotations

import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgekit as ek
import edgekit.app
from edgekit_packaging import devices
from models import INPUT_NAME, MODEL_NAMES, compile_ekm, input_shape_of, onnx_path, ort_run, random_input
from sshd import Sshd, available, descendants, free_port, sshd_server
from toolchains.rootfs import run_on_board

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ("xnnpack", "portable")
THREADS = 2  # the same on both sides of every comparison
TOLERANCE = 1e-4  # against onnxruntime, relative to max(1, max|expected|), as edgekit run --expect
ON_BOARD = "/opt/edgekit-remote-models"  # the models, inputs and the board's own outputs

# The board's own run of every model, in its Python with the flashed EdgeKit: the reference the remote
# runs must equal. Each model is run twice; the second run is timed.
BOARD_SCRIPT = """
import json, sys, time
import numpy as np
import edgekit as ek
folder, threads = sys.argv[1], int(sys.argv[4])
names, kernels = sys.argv[2].split(","), sys.argv[3].split(",")
times = {}
for k in kernels:
    with ek.Context(device=0, kernels=k, threads=threads) as ctx:
        assert ctx.kernels == k, (ctx.kernels, k)
        for name in names:
            net = ctx.load_model(f"{folder}/{name}.ekm").network()
            x = np.load(f"{folder}/{name}-input.npy")
            with net.create_request() as req:
                req.run([x])
                start = time.perf_counter()
                outputs = req.run([x])
                times[f"{name}/{k}"] = time.perf_counter() - start
            for i, y in enumerate(outputs):
                np.save(f"{folder}/{name}-{k}-{i}.npy", y)
with open(f"{folder}/times.json", "w") as f:
    json.dump(times, f)
"""


def relative_error(got: np.ndarray[Any, Any], expected: np.ndarray[Any, Any]) -> float:
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    return float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max(initial=0.0)) / scale


def run_twice(
    ctx: ek.Context, name: str, x: np.ndarray[Any, Any]
) -> tuple[list[np.ndarray[Any, Any]], float]:
    """Model ``name`` on ``ctx``: the outputs of its second run, and how long that run took (seconds)."""
    net = ctx.load_model(compile_ekm(name)).network()
    with net.create_request() as req:
        req.run([x])
        start = time.perf_counter()
        outputs = req.run([x])
        return outputs, time.perf_counter() - start


def refused(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


# --- The emulated aarch64 board -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote_server_on_emu(flashed_emu: Any) -> Iterator[devices.RemoteServer]:
    """remote_server on the emulated aarch64 board, started as invoke serve starts it (the flashed
    /opt/edgekit/current/bin/remote_server under the board's qemu/proot launcher) with --port 0: it
    listens on this machine's 127.0.0.1:``server.port`` (the emulated board shares the host's network).
    Reach it as ek.Device(server.url) (``tcp://127.0.0.1:PORT``), or, from the edge app,
    ``edgekit-app --rpc_server 127.0.0.1:{server.port}``. One server for the module; it must stop
    cleanly (exit 0 after SIGINT, as Ctrl-C) at the end."""
    server = devices.start_server(flashed_emu, port=0)
    yield server
    assert server.stop() == 0, "\n".join(server.output)
    assert refused(server.port)


@pytest.fixture(scope="module")
def board_runs(flashed_emu: Any) -> Path:
    """Every test model's .ekm and input in the board's rootfs, and the board's own outputs for them (its
    Python, device 0, each kernel path, THREADS threads): {name}-{kernels}-{i}.npy, times.json."""
    folder: Path = flashed_emu.rootfs / ON_BOARD.lstrip("/")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in MODEL_NAMES:
        shutil.copy2(compile_ekm(name), folder / f"{name}.ekm")
        np.save(folder / f"{name}-input.npy", random_input(input_shape_of(name)))
    argv = ["python3", "-c", BOARD_SCRIPT, ON_BOARD, ",".join(MODEL_NAMES), ",".join(KERNELS), str(THREADS)]
    done = run_on_board(flashed_emu.rootfs, argv, timeout=900)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return folder


def test_the_emulated_boards_server_reports_the_board(remote_server_on_emu: devices.RemoteServer) -> None:
    assert remote_server_on_emu.url == f"tcp://127.0.0.1:{remote_server_on_emu.port}"
    assert remote_server_on_emu.connect == f'ek.Device("{remote_server_on_emu.url}")'
    assert remote_server_on_emu.version == f"remote_server (EdgeKit {ek.__version__}, remote protocol 1)"
    with ek.Device(remote_server_on_emu.url) as dev:
        info = dev.remote_info
    assert info is not None
    assert info["arch"] == "aarch64"
    assert info["runtime_version"] == ek.__version__
    assert info["protocol"] == 1 and info["devices"] >= 1
    assert info["kernels"] == "xnnpack"  # the flashed provider loads on the board


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_on_the_emulated_board_through_its_server(
    remote_server_on_emu: devices.RemoteServer, board_runs: Path, name: str, kernels: str
) -> None:
    """The same bits as the board's own run of the model, and onnxruntime's outputs within 1e-4."""
    x = np.load(board_runs / f"{name}-input.npy")
    with ek.Context(device=remote_server_on_emu.url, kernels=kernels, threads=THREADS) as ctx:
        assert ctx.kernels == kernels
        outputs, remote_s = run_twice(ctx, name, x)
    expected = ort_run(onnx_path(name), {INPUT_NAME: x})
    assert len(outputs) == len(expected)
    for i, (got, reference) in enumerate(zip(outputs, expected, strict=True)):
        local = np.load(board_runs / f"{name}-{kernels}-{i}.npy")
        assert got.dtype == local.dtype and got.shape == local.shape
        np.testing.assert_array_equal(got, local, err_msg=f"{name} output {i}: remote != the board's own run")
        assert relative_error(got, reference) <= TOLERANCE
    local_s = json.loads((board_runs / "times.json").read_text())[f"{name}/{kernels}"]
    print(
        f"{name} {kernels}: remote {remote_s * 1e3:.1f} ms, on the board {local_s * 1e3:.1f} ms, "
        f"error vs onnxruntime {relative_error(outputs[0], expected[0]):.2g}"
    )


@pytest.mark.parametrize("kernels", KERNELS)
def test_the_edge_app_on_this_host_runs_the_models_on_the_emulated_board(
    remote_server_on_emu: devices.RemoteServer, board_runs: Path, kernels: str, tmp_path: Path
) -> None:
    """edgekit-app --rpc_server (this host's build) on the board's server: every model's outputs are the
    board's own run's, bit for bit, and the run says it ran on the aarch64 board."""
    from edgekit.cli import _file_name

    app = edgekit.app.binary()
    assert app is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")}
    for name in MODEL_NAMES:
        x = np.load(board_runs / f"{name}-input.npy")
        data, out = tmp_path / f"{name}.bin", tmp_path / f"{name}-out"
        x.tofile(data)
        argv = [str(app), "--rpc_server", f"127.0.0.1:{remote_server_on_emu.port}", "--model_path",
                str(compile_ekm(name)), "--data_path", str(data), "--kernels", kernels, "--launch_threads",
                str(THREADS), "--iterations", "1", "--warmup", "0", "--output_dir", str(out)]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "an aarch64 board" in done.stdout and f"{kernels} kernels" in done.stdout, done.stdout
        with ek.Context(device=0) as ctx:
            outputs = ctx.load_model(compile_ekm(name)).network().outputs
        for i, info in enumerate(outputs):
            got = np.load(out / f"{_file_name(info.name)}.npy")
            local = np.load(board_runs / f"{name}-{kernels}-{i}.npy")
            np.testing.assert_array_equal(got, local, err_msg=f"{name} output {i}: the app's remote run")


def test_a_taken_port_and_an_old_release_are_explained(
    remote_server_on_emu: devices.RemoteServer, flashed_emu: Any
) -> None:
    with pytest.raises(devices.DeviceError) as taken:
        devices.start_server(flashed_emu, port=remote_server_on_emu.port)
    assert f"port {remote_server_on_emu.port} is taken on the board" in str(taken.value)
    assert "--port 0 for a free one" in str(taken.value)
    # A release from before remote devices: current/ without bin/remote_server.
    old = flashed_emu.rootfs / "opt/edgekit-old-release"
    shutil.rmtree(old, ignore_errors=True)
    (old / "current" / "bin").mkdir(parents=True)
    older = devices.EmulatedFleet(flashed_emu.board, flashed_emu.rootfs, prefix="/opt/edgekit-old-release")
    with pytest.raises(devices.DeviceError, match=r"no bin/remote_server .*invoke flash --device emu"):
        devices.start_server(older)
    shutil.rmtree(old)


def test_a_paired_server_on_the_emulated_board_uses_the_boards_libsodium(
    flashed_emu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve --pair: a key made here, put on the board owner-only; the board's remote_server (aarch64,
    loading libsodium from the board's rootfs) serves only sessions holding it, encrypted."""
    monkeypatch.setattr(devices, "PAIRING_DIR", tmp_path / "pairing")
    with pytest.raises(devices.DeviceError, match="must be paired"):
        devices.start_server(flashed_emu, port=0, host="0.0.0.0")
    server = devices.start_server(flashed_emu, port=0, pair=True)
    try:
        assert server.key is not None and server.key.parent == tmp_path / "pairing"
        assert server.key.stat().st_mode & 0o777 == 0o600
        on_board = flashed_emu.rootfs / flashed_emu.prefix.lstrip("/") / devices.BOARD_KEY
        assert on_board.read_text() == server.key.read_text() and on_board.stat().st_mode & 0o777 == 0o600
        assert f"key_file={str(server.key)!r}" in server.connect
        x = random_input(input_shape_of("mlp"))
        with (
            ek.Device(server.url, key_file=server.key) as dev,
            ek.Context(device=dev, kernels="portable") as ctx,
        ):
            assert dev.remote_info is not None and dev.remote_info["arch"] == "aarch64"
            (remote,) = ctx.load_model(compile_ekm("mlp")).network().create_request().run({INPUT_NAME: x})
        (expected,) = ort_run(onnx_path("mlp"), {INPUT_NAME: x})
        assert np.abs(remote - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))
        with pytest.raises(ek.ConnectionLostError, match="requires a pairing key"):
            ek.Device(server.url)
    finally:
        assert server.stop() == 0, "\n".join(server.output)
    assert any("paired" in line for line in server.output), server.output


# --- invoke serve --device emu, end to end ------------------------------------------------------------


def test_invoke_serve_help_explains_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "--help", "serve"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    for text in (
        "--device",
        "--port",
        "--board",
        "--idle-timeout",
        "--launch-timeout",
        "--pair",
        "--host",
        "Ctrl-C",
        "0 picks a free",
    ):
        assert text in done.stdout, done.stdout


def test_invoke_serve_on_the_emulated_board(flashed_emu: Any, board_runs: Path) -> None:
    """It prints the line that connects; a model runs through it; Ctrl-C (SIGINT) stops it and the
    board's remote_server, exit status 0."""
    process = subprocess.Popen(
        [sys.executable, "-m", "invoke", "serve", "--device", "emu", "--port", "0", "--idle-timeout", "30"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the test's SIGINT goes to invoke alone, as a terminal's would not
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        connect = None
        while connect is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            assert line is not None, "".join(seen)
            seen.append(line)
            connect = re.search(
                r'connect from Python on this host: ek\.Device\("(tcp://127\.0\.0\.1:(\d+))"\)', line
            )
        assert connect is not None, "".join(seen)
        url, port = connect.group(1), int(connect.group(2))
        x = np.load(board_runs / "mlp-input.npy")
        with ek.Context(device=url, kernels="portable", threads=THREADS) as ctx:
            outputs, _ = run_twice(ctx, "mlp", x)
        np.testing.assert_array_equal(outputs[0], np.load(board_runs / "mlp-portable-0.npy"))
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        while (line := lines.get(timeout=10)) is not None:
            seen.append(line)
        output = "".join(seen)
        assert "remote_server: stopped" in output, output  # the board's server stopped itself, cleanly
        assert "remote_server stopped (exit status 0)" in output, output
        assert refused(port)
    finally:
        if process.poll() is None:
            for pid in [*descendants(process.pid), process.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait()


# --- A throwaway sshd "board": this machine, through SSH ----------------------------------------------


@dataclass
class SshBoard:
    sshd: Sshd
    server: devices.RemoteServer
    known_hosts: Path  # with the board's real host key
    url: str  # ssh://root@127.0.0.1:SSH_PORT
    work: Path

    def device(self, **options: Any) -> ek.Device:
        options.setdefault("known_hosts", self.known_hosts)
        options.setdefault("server_port", self.server.port)
        return ek.Device(self.url, identity=self.sshd.client_key, strict_host_keys=True, **options)


def fake_release(prefix: Path, *, server: Path | None) -> None:
    """``prefix``/current as flash makes it, with ``server`` as bin/remote_server (or none)."""
    release = prefix / "releases" / "test"
    (release / "bin").mkdir(parents=True)
    if server is not None:
        (release / "bin" / "remote_server").symlink_to(server)
    (prefix / "current").symlink_to("releases/test")


@pytest.fixture(scope="module")
def ssh_board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshBoard]:
    """This machine as an SSH board with its own prefix, whose release's remote_server is the host build
    in the package; remote_server started on it over SSH (as invoke serve --device ssh://... does)."""
    if (why := available()) is not None:
        pytest.skip(why)
    server_binary = edgekit.app.binary("remote_server")
    assert server_binary is not None, "the installed edgekit package has no bin/remote_server: invoke build"
    work = tmp_path_factory.mktemp("ssh-board")
    fake_release(work / "edgekit", server=server_binary)
    with sshd_server(work / "sshd") as sshd:
        known_hosts = work / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key_line}\n")
        spec = f"ssh://root@127.0.0.1:{sshd.port}{work / 'edgekit'}"
        with devices.SshFleet(
            devices.parse_ssh_urls(spec), identity=sshd.client_key, known_hosts=None
        ) as fleet:
            server = devices.start_server(fleet, port=0)
            try:
                yield SshBoard(sshd, server, known_hosts, f"ssh://root@127.0.0.1:{sshd.port}", work)
            finally:
                code = server.stop()
            assert code == 0, "\n".join(server.output)
            assert refused(server.port)


def test_the_ssh_boards_server_says_how_to_connect(ssh_board: SshBoard) -> None:
    assert ssh_board.server.url == ssh_board.url
    assert ssh_board.server.connect == f'ek.Device("{ssh_board.url}", server_port={ssh_board.server.port})'
    with ssh_board.device() as dev:
        info = dev.remote_info
        # Calls that hold the GIL while C waits for the board's reply (the SSH bridge must not need it).
        assert dev.stats["allocations"] == 0
        with dev.malloc(64) as memory:
            memory.write(b"through ssh".ljust(64, b"."))
            assert memory.read(11) == b"through ssh"
    assert info is not None and info["arch"] == platform.machine()
    assert info["runtime_version"] == ek.__version__


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_through_ssh_equal_local_runs(ssh_board: SshBoard, name: str, kernels: str) -> None:
    x = random_input(input_shape_of(name))
    with ssh_board.device() as dev, ek.Context(device=dev, kernels=kernels, threads=THREADS) as ctx:
        assert ctx.kernels == kernels
        remote, remote_s = run_twice(ctx, name, x)
    with ek.Context(device=0, kernels=kernels, threads=THREADS) as ctx:
        local, local_s = run_twice(ctx, name, x)
    assert len(remote) == len(local)
    for i, (got, want) in enumerate(zip(remote, local, strict=True)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=f"{name} output {i}: through SSH != local")
    print(f"{name} {kernels}: through SSH {remote_s * 1e3:.2f} ms, local {local_s * 1e3:.2f} ms")


def test_the_edge_app_through_an_ssh_forward_equals_the_local_app(
    ssh_board: SshBoard, tmp_path: Path
) -> None:
    """What the docs tell C users: forward the board's port with ssh -tt -L, then edgekit-app
    --rpc_server to the local end. Every model's outputs equal the local app's, and a launch costs no
    40 ms delayed-ACK stall (each timed iteration well under it)."""
    if shutil.which("ssh") is None:
        pytest.skip("no ssh client (apt-get install openssh-client)")
    app = edgekit.app.binary()
    assert app is not None
    local_port = free_port()
    forward = subprocess.Popen(
        ["ssh", "-tt", "-i", str(ssh_board.sshd.client_key),
         "-o", f"UserKnownHostsFile={ssh_board.known_hosts}", "-o", "StrictHostKeyChecking=yes",
         "-o", "BatchMode=yes", "-p", str(ssh_board.sshd.port),
         "-L", f"{local_port}:127.0.0.1:{ssh_board.server.port}", "root@127.0.0.1", "sleep", "600"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")}
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", local_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        for name in MODEL_NAMES:
            data = tmp_path / f"{name}.bin"
            random_input(input_shape_of(name)).tofile(data)
            outs = []
            for where, extra in (("local", []), ("ssh", ["--rpc_server", f"127.0.0.1:{local_port}"])):
                out = tmp_path / f"{name}-{where}"
                argv = [str(app), "--model_path", str(compile_ekm(name)), "--data_path", str(data),
                        "--kernels", "portable", "--launch_threads", str(THREADS), "--iterations", "5",
                        "--output_dir", str(out), *extra]  # fmt: skip
                done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
                assert done.returncode == 0, done.stdout + done.stderr
                outs.append(out)
                if where == "ssh" and name == "mlp":
                    row = re.search(r"^0\s+0\s+\S+\s+\S+\s+\d+\s+\d+\s+([\d.]+)", done.stdout, re.M)
                    assert row is not None, done.stdout
                    p50 = float(row.group(1))  # the report row's p50 (ms)
                    assert p50 < 30, f"mlp through the forward: p50 {p50} ms (a delayed-ACK stall is 40 ms)"
            names = sorted(p.name for p in outs[0].glob("*.npy"))
            assert names and names == sorted(p.name for p in outs[1].glob("*.npy"))
            for file in names:
                np.testing.assert_array_equal(np.load(outs[1] / file), np.load(outs[0] / file), err_msg=name)
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def test_a_wrong_host_key_is_refused(ssh_board: SshBoard) -> None:
    impostor = ssh_board.work / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    wrong = ssh_board.work / "known_hosts.wrong"
    key = " ".join(impostor.with_suffix(".pub").read_text().split()[:2])
    wrong.write_text(f"[127.0.0.1]:{ssh_board.sshd.port} {key}\n")
    with pytest.raises(ek.ConnectionLostError, match="host key mismatch"):
        ssh_board.device(known_hosts=wrong)
    # Strict: a board that is not listed at all is refused too.
    empty = ssh_board.work / "known_hosts.empty"
    empty.write_text("")
    with pytest.raises(ek.ConnectionLostError, match="unknown host key"):
        ssh_board.device(known_hosts=empty)


def test_a_board_without_a_running_server_says_so(ssh_board: SshBoard) -> None:
    with pytest.raises(ek.ConnectionLostError, match=r"is remote_server running there\?"):
        ssh_board.device(server_port=free_port())


def test_serve_explains_boards_it_cannot_serve(ssh_board: SshBoard) -> None:
    """No EdgeKit at all; a port that is taken (the module's server has it)."""
    key = ssh_board.sshd.client_key
    bare = f"ssh://root@127.0.0.1:{ssh_board.sshd.port}{ssh_board.work / 'nothing-here'}"
    with devices.SshFleet(devices.parse_ssh_urls(bare), identity=key, known_hosts=None) as fleet:
        with pytest.raises(
            devices.DeviceError, match=r"EdgeKit is not installed .*invoke flash --device ssh://"
        ):
            devices.start_server(fleet)
    spec = f"ssh://root@127.0.0.1:{ssh_board.sshd.port}{ssh_board.work / 'edgekit'}"
    with devices.SshFleet(devices.parse_ssh_urls(spec), identity=key, known_hosts=None) as fleet:
        with pytest.raises(devices.DeviceError, match=f"port {ssh_board.server.port} is taken on the board"):
            devices.start_server(fleet, port=ssh_board.server.port)
