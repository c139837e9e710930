"""Remote devices on this machine (docs/remote-protocol.md): the package's remote_server on loopback, and
every way in through it: Python (ek.Context / ek.Device with a tcp:// URL), the edge app's --rpc_server
and the edgekit command's --device URL. Each result is compared with the same run on a local device:
the server runs the same runtime and kernels, so the outputs are bit-identical. Profiles and dumps of
remote launches come back to this machine's directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import edgekit as ek
from edgekit.app import NAME, SERVER, binary
from models import INPUT_NAME, MODEL_NAMES, compile_ekm, input_shape_of, random_input


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """remote_server on a free loopback port; yields its URL (and checks it is still alive at the end)."""
    path = binary(SERVER)
    assert path is not None, "the edgekit package has no remote_server"
    proc = subprocess.Popen(
        [str(path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("remote_server listening on 127.0.0.1:"), line
    yield "tcp://" + line.rsplit(" ", 1)[1].strip()
    assert proc.poll() is None, "remote_server died during the tests"
    proc.terminate()
    assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("kernels", ["xnnpack", "portable"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_through_python_equals_the_local_run(server: str, name: str, kernels: str) -> None:
    x = random_input(input_shape_of(name))
    results = []
    for device in (0, server):
        with ek.Context(device=device, kernels=kernels, threads=1) as ctx:
            assert ctx.kernels == kernels
            net = ctx.load_model(compile_ekm(name)).network()
            req = net.create_request()
            results.append(req.run({INPUT_NAME: x}))
            # Twice through the same request: the second launch reuses the board's execution context.
            results.append(req.run({INPUT_NAME: x}))
    local, local_again, remote, remote_again = results
    for a, b, c, d in zip(local, local_again, remote, remote_again):
        assert a.dtype == c.dtype and a.shape == c.shape
        assert np.array_equal(a, c) and np.array_equal(b, d), f"max diff {np.abs(a - c).max()}"


def test_remote_device_reports_the_board_and_its_networks(server: str) -> None:
    with ek.Device(server) as dev, ek.Context(device=dev) as ctx:
        info = dev.remote_info
        assert info is not None and info["url"] == server and info["protocol"] == 1
        assert info["runtime_version"] == ek.__version__ and info["arch"] in ("x86_64", "aarch64")
        assert info["model_format"].startswith("1.") and info["devices"] >= 1
        model = ctx.load_model(compile_ekm("yolo"))
        with ek.Context(device=0) as local:
            want = local.load_model(compile_ekm("yolo")).network()
            got = model.network()
            assert got.name == want.name and got.inputs == want.inputs and got.outputs == want.outputs
        assert "on tcp://127.0.0.1:" in repr(dev)
    with ek.Device(0) as local_dev:
        assert local_dev.remote_info is None and local_dev.url is None


def test_profile_and_dump_of_remote_launches_land_here(server: str, tmp_path: Path) -> None:
    x = random_input(input_shape_of("mlp"))
    dumps = {}
    for where, device in (("local", 0), ("remote", server)):
        with ek.Context(device=device, kernels="portable", threads=1) as ctx:
            req = ctx.load_model(compile_ekm("mlp")).network().create_request()
            profile = ek.Profile()
            for _ in range(3):
                req.run({INPUT_NAME: x}, profile=profile)
            req.run({INPUT_NAME: x}, dump=tmp_path / where)
            dumps[where] = tmp_path / where
            kinds = Counter(r.kind for r in profile.records)
            records = profile.records
            profile.write(tmp_path / f"prof-{where}")
        layers = len([r for r in records if r.kind == "LayerExecute"]) // 3
        assert kinds["ModelExecute"] == 3 and kinds["Wait"] == 3 and kinds["ModelInit"] <= 1
        assert kinds["LayerExecute"] == 3 * layers and layers > 0
        if where == "local":
            assert kinds["Transport"] == 0
            continue
        # Two Transport records per launch around the board's work, on this machine's clock.
        assert kinds["Transport"] == 6
        for launch in (1, 2, 3):
            mine = sorted((r for r in records if r.details.get("launch") == launch), key=lambda r: r.start_ns)
            assert mine[0].kind in ("Transport", "TransferFromInput"), mine
            request = next(r for r in mine if r.kind == "Transport" and r.name == "request")
            reply = next(r for r in mine if r.kind == "Transport" and r.name == "reply")
            execute = next(r for r in mine if r.kind == "ModelExecute")
            assert request.start_ns <= execute.start_ns
            assert execute.start_ns + execute.duration_ns <= reply.start_ns + reply.duration_ns
            assert request.details["bytes"] > 0 and reply.details["bytes"] > 0
        assert (tmp_path / "prof-remote" / "trace.json").is_file()
        assert "Transport" in (tmp_path / "prof-remote" / "trace.json").read_text()
    local, remote = (sorted(p.name for p in d.iterdir()) for d in (dumps["local"], dumps["remote"]))
    assert local == remote and "manifest.json" in remote
    assert not [n for n in remote if n.endswith((".part", ".tmp"))]
    for name in local:
        if name.endswith(".npy"):
            assert np.array_equal(np.load(dumps["local"] / name), np.load(dumps["remote"] / name)), name
    manifest = json.loads((dumps["remote"] / "manifest.json").read_text())
    assert manifest["network"] == "mlp"


def test_edge_app_with_rpc_server_equals_the_local_app(server: str, tmp_path: Path) -> None:
    app = binary(NAME)
    assert app is not None
    model = compile_ekm("senet")
    x = random_input(input_shape_of("senet"))
    data = tmp_path / "x.bin"
    x.tofile(data)
    outs = {}
    for where, extra in (("local", []), ("remote", ["--rpc_server", server.removeprefix("tcp://")])):
        run_dir = tmp_path / where
        run_dir.mkdir()
        argv = [str(app), "--model_path", str(model), "--data_path", str(data), "--iterations", "2",
                "--kernels", "portable", "--launch_threads", "1", "--output_dir", "out", "--profile", "1",
                "--dump", "1", *extra]  # fmt: skip
        done = subprocess.run(
            argv, capture_output=True, text=True, cwd=run_dir, env=_clean_env(), timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        if where == "remote":
            assert f"running on {server}" in done.stdout
        outs[where] = run_dir
    for name in ("output.npy",):
        assert np.array_equal(np.load(outs["local"] / "out" / name), np.load(outs["remote"] / "out" / name))
    remote = outs["remote"]
    assert (remote / "sample_profiler" / "dev0_thread0" / "trace.json").is_file()
    assert "Transport" in (remote / "sample_profiler" / "dev0_thread0" / "trace.json").read_text()
    assert (remote / "sample_dump" / "dev0_thread0" / "manifest.json").is_file()
    assert sorted(p.name for p in (remote / "sample_dump" / "dev0_thread0").iterdir()) == sorted(
        p.name for p in (outs["local"] / "sample_dump" / "dev0_thread0").iterdir()
    )


def test_edgekit_command_runs_on_a_remote_device(server: str, tmp_path: Path) -> None:
    model = compile_ekm("mlp")
    x = tmp_path / "x.npy"
    np.save(x, random_input(input_shape_of("mlp")))
    outs: list[Path] = []
    for device in ("0", server):
        out = tmp_path / f"out{len(outs)}"
        done = subprocess.run(
            [sys.executable, "-m", "edgekit", "run", str(model), "--input", str(x), "--output-dir", str(out),
             "--device", device, "--kernels", "portable"],
            capture_output=True, text=True, timeout=300, env=_clean_env(),
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        outs.append(out)
    names = sorted(p.name for p in outs[0].glob("*.npy"))
    assert names
    for name in names:
        assert np.array_equal(np.load(outs[0] / name), np.load(outs[1] / name))
    bad = subprocess.run(
        [sys.executable, "-m", "edgekit", "info", str(model), "--device", "tcp://127.0.0.1:1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and "is remote_server running there?" in bad.stderr


def test_progress_is_reported_for_large_transfers(server: str) -> None:
    seen: list[tuple[str, int, int]] = []
    size = 9 << 20
    with ek.Device(server, progress=lambda what, done, total: seen.append((what, done, total))) as dev:
        with dev.malloc(size) as mem:
            mem.write(np.ones(size, np.uint8))
            mem.read()
    uploads = [s for s in seen if s[0] == "upload"]
    downloads = [s for s in seen if s[0] == "download"]
    assert uploads and downloads
    assert uploads[-1][1:] == (size, size) and downloads[-1][1:] == (size, size)
    assert [d for _, d, _ in uploads] == sorted(d for _, d, _ in uploads) and len(uploads) >= 3
