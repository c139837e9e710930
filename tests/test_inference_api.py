"""The Python inference API (ek.Context / Model / Network / Request) and the ``edgekit`` command.

The models are written with the compiler's .ekm writer (edgekit.compiler.ekm), so these tests need
no onnx: ``addrelu`` (two inputs, relu(x + y), stages 2x3 and 4x3) and ``slow`` (64 chained 256x256
matrix products, long enough to be caught running). One test compiles an ONNX model end to end.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import edgekit as ek

ekm = pytest.importorskip("edgekit.compiler.ekm", reason="the .ekm writer (edgekit.compiler) is not there")
from edgekit.compiler.graph import OpType  # noqa: E402

F32 = np.float32
SLOW_N = 256
SLOW_LAYERS = 64

# ---- models ----------------------------------------------------------------------------------------


def addrelu_network(name: str = "addrelu") -> Any:
    """z = relu(x + y) (an ADD with a fused clamp at 0), stages x, y: 2x3 and 4x3."""
    stages = []
    for rows in (2, 4):
        shape = (rows, 3)
        tensors = [
            ekm.TensorRecord("x", shape, ekm.INPUT, io_index=0),
            ekm.TensorRecord("y", shape, ekm.INPUT, io_index=1),
            ekm.TensorRecord("z", shape, ekm.OUTPUT, io_index=0),
        ]
        ops = [ekm.OpRecord("add", int(OpType.ADD), [0, 1], [2], {"act_min": 0.0})]
        stages.append(ekm.StageRecord(tensors, ops, [0, 1], [2], 0))
    ios = [ekm.IORecord(n, max_bytes=4 * 3 * 4) for n in ("x", "y", "z")]
    return ekm.NetworkRecord(name, ios[:2], ios[2:], stages)


def slow_weights() -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(0)
    weights: npt.NDArray[np.float32] = (rng.standard_normal((SLOW_N, SLOW_N)) / np.sqrt(SLOW_N)).astype(F32)
    return weights


def slow_network(name: str = "slow") -> Any:
    """y = x @ W @ W ... (SLOW_LAYERS matrix products), x: 1 x N x N, ping-ponging in the arena."""
    nbytes = SLOW_N * SLOW_N * 4
    tensors = [
        ekm.TensorRecord("x", (1, SLOW_N, SLOW_N), ekm.INPUT),
        ekm.TensorRecord("w", (SLOW_N, SLOW_N), ekm.CONSTANT, data=slow_weights()),
    ]
    ops, prev = [], 0
    for i in range(SLOW_LAYERS):
        last = i == SLOW_LAYERS - 1
        storage, offset = (ekm.OUTPUT, 0) if last else (ekm.ARENA, (i % 2) * nbytes)
        tensors.append(ekm.TensorRecord(f"h{i}", (1, SLOW_N, SLOW_N), storage, offset=offset))
        ops.append(ekm.OpRecord(f"mm{i}", int(OpType.MATMUL), [prev, 1], [len(tensors) - 1]))
        prev = len(tensors) - 1
    stage = ekm.StageRecord(tensors, ops, [0], [prev], 2 * nbytes)
    return ekm.NetworkRecord(
        name, [ekm.IORecord("x", max_bytes=nbytes)], [ekm.IORecord("y", max_bytes=nbytes)], [stage]
    )


def slow_reference(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    w = slow_weights()
    for _ in range(SLOW_LAYERS):
        x = x @ w
    return x


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    files = {
        "addrelu": ekm.ModelFile([addrelu_network()]),
        "multi": ekm.ModelFile([addrelu_network("a2"), slow_network()]),
    }
    paths = {}
    for name, model in files.items():
        paths[name] = folder / f"{name}.ekm"
        paths[name].write_bytes(ekm.write(model))
    return paths


@pytest.fixture
def ctx(dev: ek.Device) -> Iterator[ek.Context]:
    with ek.Context(device=dev) as context:
        yield context


@pytest.fixture
def net(ctx: ek.Context, models: dict[str, Path]) -> ek.Network:
    return ctx.load_model(models["addrelu"]).network()


@pytest.fixture
def slow(ctx: ek.Context, models: dict[str, Path]) -> ek.Network:
    return ctx.load_model(models["multi"]).network("slow")


def relu_add(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> npt.NDArray[Any]:
    result: npt.NDArray[Any] = np.maximum(x + y, 0)
    return result


def xy(rows: int = 2, seed: int = 0) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, 3)).astype(F32), rng.standard_normal((rows, 3)).astype(F32)


# ---- Context -----------------------------------------------------------------------------------------


def test_context_owns_its_device_and_reports_kernels() -> None:
    with ek.Context(device=0, coherence="coherent", kernels="portable", threads=1) as context:
        assert isinstance(context.device, ek.Device)
        assert context.kernels == "portable"
        assert context.network_names == []
        assert "portable" in repr(context)
        device = context.device
    assert context.closed and device.closed
    assert "closed" in repr(context)
    with pytest.raises(ek.FreedHandleError, match="closed"):
        context.kernels  # noqa: B018


def test_context_auto_kernels_are_xnnpack_or_portable(dev: ek.Device) -> None:
    with ek.Context(device=dev, kernels="auto") as context:
        assert context.kernels in ("xnnpack", "portable")
        assert context.device is dev
    assert not dev.closed  # a device passed in is the caller's


def test_auto_without_the_provider_says_why_once(models: dict[str, Path], tmp_path: Path) -> None:
    # The installed package without libedgekit_xnnpack.so, as a build without XNNPACK (or a wheel whose
    # provider cannot load): "auto" runs portable, says why (the dlopen error) and logs it once.
    package = Path(ek.__file__).parent
    if not (package / "libedgekit_xnnpack.so").is_file():
        pytest.skip("this build has no XNNPACK provider")
    shutil.copytree(package, tmp_path / "edgekit", ignore=shutil.ignore_patterns("libedgekit_xnnpack.so"))
    code = (
        "import edgekit as ek\n"
        "for kernels in ('auto', 'auto', 'portable'):\n"
        "    with ek.Context(kernels=kernels) as ctx:\n"
        "        print(kernels, ctx.kernels, repr(ctx.kernels_reason))\n"
        "try:\n"
        "    ek.Context(kernels='xnnpack')\n"
        "except ek.UnsupportedError as error:\n"
        "    print('xnnpack', error)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEKIT_KERNELS", "LD_LIBRARY_PATH")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    auto, again, portable, xnnpack = done.stdout.splitlines()
    assert auto == again and auto.startswith("auto portable '") and "libedgekit_xnnpack.so" in auto
    assert portable == "portable portable ''"  # asked for portable: nothing to explain
    assert xnnpack.startswith("xnnpack XNNPACK kernels were asked for, but the provider cannot be used")
    assert done.stderr.count("kernels 'auto' run the portable kernels") == 1, done.stderr
    assert "libedgekit_xnnpack.so" in done.stderr
    # The edge app of that copy (rpath $ORIGIN/..: the same libedgekit) says it on stderr.
    app = tmp_path / "edgekit" / "bin" / "edgekit-app"
    if app.is_file():
        ran = subprocess.run(
            [str(app), "--model_path", str(models["addrelu"]), "--iterations", "1", "--warmup", "0",
             "--kernels", "auto"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "portable kernels" in ran.stdout
        assert re.search(r"XNNPACK is not used: .*libedgekit_xnnpack\.so", ran.stderr), ran.stderr


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"kernels": "fast"}, ek.InvalidArgumentError, "kernels must be one of"),
        ({"device": "0"}, ek.InvalidArgumentError, "for device 0 pass the number 0"),
        ({"device": 0.5}, ek.InvalidTypeError, "device must be"),
        ({"threads": 0}, ek.InvalidArgumentError, "threads"),
        ({"threads": 1.5}, ek.InvalidTypeError, "threads"),
        ({"device": 0, "coherence": "weird"}, ek.InvalidArgumentError, "coherence"),
    ],
)
def test_context_argument_errors(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        ek.Context(**kwargs)


def test_context_coherence_must_match_a_given_device(dev: ek.Device) -> None:
    with pytest.raises(ek.InvalidArgumentError, match="coherence='strict' differs"):
        ek.Context(device=dev, coherence="strict")


# ---- models and networks -----------------------------------------------------------------------------


def test_load_model_from_a_path_a_pathlike_and_bytes(dev: ek.Device, models: dict[str, Path]) -> None:
    for source in (str(models["addrelu"]), models["addrelu"], models["addrelu"].read_bytes()):
        with ek.Context(device=dev) as context:
            model = context.load_model(source)
            assert model.network_names == ["addrelu"]
            assert context.network_names == ["addrelu"]
            assert model.network().name == "addrelu"
            assert "addrelu" in repr(model)


def test_model_with_several_networks(ctx: ek.Context, models: dict[str, Path]) -> None:
    first = ctx.load_model(models["addrelu"])
    model = ctx.load_model(bytearray(models["multi"].read_bytes()))
    assert model.network_names == ["a2", "slow"]
    assert ctx.network_names == ["addrelu", "a2", "slow"]
    assert first.network_names == ["addrelu"]
    with pytest.raises(ek.InvalidArgumentError, match=r"2 networks \(a2, slow\): name one"):
        model.network()
    with pytest.raises(ek.InvalidArgumentError, match="no network 'addrelu'; its networks are: a2, slow"):
        model.network("addrelu")  # loaded, but by the other model
    with pytest.raises(ek.InvalidTypeError):
        model.network(1)  # type: ignore[arg-type]
    assert ctx.network("addrelu").name == "addrelu"
    with pytest.raises(ek.InvalidArgumentError, match="nope"):
        ctx.network("nope")


def test_loading_a_network_name_twice_is_busy(ctx: ek.Context, models: dict[str, Path]) -> None:
    ctx.load_model(models["addrelu"])
    with pytest.raises(ek.BusyError):
        ctx.load_model(models["addrelu"])


def test_bad_model_sources(ctx: ek.Context, models: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(models["addrelu"].read_bytes())
    data[0] ^= 0xFF
    with pytest.raises(ek.ModelInvalidError):
        ctx.load_model(bytes(data))
    with pytest.raises(ek.ModelInvalidError):
        ctx.load_model(bytes(data[: len(data) // 2]))
    with pytest.raises(ek.EdgeKitError, match=r"missing\.ekm"):
        ctx.load_model(tmp_path / "missing.ekm")
    with pytest.raises(ek.InvalidTypeError, match="path or a bytes-like"):
        ctx.load_model(42)  # type: ignore[arg-type]
    with pytest.raises(ek.ModelInvalidError, match="empty"):
        ctx.load_model(b"")
    assert ctx.network_names == []


def test_network_describes_inputs_outputs_and_stages(net: ek.Network) -> None:
    assert net.name == "addrelu"
    assert net.input_names == ["x", "y"] and net.output_names == ["z"]
    x = net.inputs[0]
    assert isinstance(x, ek.TensorInfo)
    assert x.dtype == np.dtype(np.float32)
    assert x.shape == (2, 3) and x.shapes == ((2, 3), (4, 3))
    assert x.scale == 1.0 and x.zero_point == 0 and x.max_bytes == 48
    assert x.nbytes(1) == 48
    assert net.outputs[0].shapes == ((2, 3), (4, 3))
    assert len(net.stages) == 2
    assert net.stages[1].index == 1
    assert net.stages[1].inputs == {"x": (4, 3), "y": (4, 3)}
    assert net.stages[1].outputs == {"z": (4, 3)}
    assert "stage 1: x=4x3, y=4x3" in net.describe_stages()
    assert "2 stage(s)" in repr(net)


# ---- requests: running -------------------------------------------------------------------------------


def test_run_with_a_list_a_dict_and_one_array(net: ek.Network) -> None:
    x, y = xy()
    with net.create_request() as req:
        assert req.stage == 0 and not req.running
        (z,) = req.run([x, y])
        np.testing.assert_allclose(z, relu_add(x, y), rtol=1e-6)
        assert z.dtype == F32 and z.shape == (2, 3)
        (z2,) = req.run({"y": y, "x": x})
        np.testing.assert_array_equal(z, z2)
        assert req.launches == 2
        assert "idle" in repr(req)


def test_run_gives_the_same_on_its_fast_path_and_its_full_path(net: ek.Network) -> None:
    """req.run takes C-contiguous arrays of the stage's dtypes and shapes in one C call; every other
    input (non-contiguous, another dtype, lists, another stage's shapes, mapped tensors) goes the full
    way. Both give the same outputs, fresh arrays each run, and the same errors."""
    x, y = xy(4, seed=3)
    want = relu_add(x, y)
    with net.create_request() as req:
        cases: list[Any] = [
            [x, y],  # fast
            (x, y),  # fast
            {"x": x, "y": y},  # fast
            [np.asfortranarray(x), y],  # not C-contiguous: copied
            [x.tolist(), y.tolist()],  # converted
            [x[:2], y[:2]],  # another stage (2 rows) first, then back
            [x, y],
        ]
        for inputs in cases:
            (z,) = req.run(inputs)
            rows = np.asarray(inputs[0] if not isinstance(inputs, dict) else inputs["x"]).shape[0]
            np.testing.assert_allclose(z, want[:rows], rtol=1e-6)
        (z1,) = req.run([x, y])
        z1[:] = -1.0  # the caller's copy: the next run returns a new array
        (z2,) = req.run([x, y])
        np.testing.assert_allclose(z2, want, rtol=1e-6)
        assert req.launches == len(cases) + 2
        req.input_tensors[0][...] = x  # mapped: the full path, which flushes the mapping
        (z3,) = req.run([x, y])
        np.testing.assert_allclose(z3, want, rtol=1e-6)
        req.infer()
        with pytest.raises(ek.BusyError, match="running"):
            req.run([x, y])
        req.wait()
        with pytest.raises(ek.InvalidArgumentError, match="unknown input 'z'"):
            req.run({"x": x, "z": y})
        with pytest.raises(ek.InvalidArgumentError, match="must be float32, got an array of float64"):
            req.run([x.astype(np.float64), y])
    with pytest.raises(ek.FreedHandleError, match="closed"):
        req.run([x, y])


def test_a_single_array_is_the_input_of_a_one_input_network(slow: ek.Network) -> None:
    x = np.random.default_rng(1).standard_normal((1, SLOW_N, SLOW_N)).astype(F32)
    with slow.create_request() as req:
        (y,) = req.run(x)
    np.testing.assert_allclose(y, slow_reference(x), rtol=1e-3, atol=1e-3)


def test_input_shapes_choose_the_stage(net: ek.Network) -> None:
    with net.create_request() as req:
        for rows, stage in ((4, 1), (2, 0), (4, 1)):
            x, y = xy(rows, seed=rows)
            (z,) = req.run([x, y])
            assert req.stage == stage
            assert z.shape == (rows, 3)
            np.testing.assert_allclose(z, relu_add(x, y), rtol=1e-6)


def test_create_request_in_a_stage(net: ek.Network) -> None:
    with net.create_request(stage=1) as req:
        assert req.stage == 1
        assert [t.shape for t in req.input_tensors] == [(4, 3), (4, 3)]
        req.set_stage(0)
        assert req.output_tensors[0].shape == (2, 3)
    with pytest.raises(ek.InvalidArgumentError, match=r"2 stage\(s\) \(0..1\), got stage 2"):
        net.create_request(stage=2)
    with pytest.raises(ek.InvalidTypeError):
        net.create_request(stage="0")  # type: ignore[arg-type]


def test_inputs_from_raw_buffers_and_lists(net: ek.Network) -> None:
    x, y = xy(4)
    with net.create_request() as req:
        (z,) = req.run([x.tobytes(), memoryview(y.tobytes())])  # raw bytes: the 4x3 stage by size
        assert req.stage == 1
        np.testing.assert_allclose(z, relu_add(x, y), rtol=1e-6)
        (z,) = req.run([[[1, -2, 3]] * 2, [[0.5, 0.5, -5]] * 2])  # lists: converted to float32
        np.testing.assert_allclose(z, [[1.5, 0, 0]] * 2)


def test_request_get_outputs_waits_for_a_running_launch(slow: ek.Network) -> None:
    x = np.ones((1, SLOW_N, SLOW_N), F32)
    with slow.create_request() as req:
        req.set_inputs([x])
        req.infer()
        (y,) = req.get_outputs()
        assert not req.running
    np.testing.assert_allclose(y, slow_reference(x), rtol=1e-3, atol=1e-3)


# ---- requests: argument errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "error", "message"),
    [
        ([np.zeros((2, 3), F32)], ek.InvalidArgumentError, "takes 2 input(s) (x, y), got 1"),
        ({"x": np.zeros((2, 3), F32)}, ek.InvalidArgumentError, "missing input 'y'"),
        (
            {"x": np.zeros((2, 3), F32), "y": np.zeros((2, 3), F32), "w": 1},
            ek.InvalidArgumentError,
            "unknown input 'w' of network 'addrelu'; its inputs are: x, y",
        ),
        (
            [np.zeros((3, 3), F32), np.zeros((3, 3), F32)],
            ek.InvalidArgumentError,
            "input 'x' of network 'addrelu' has shape 3x3; the network's stages take: stage 0: x=2x3, y=2x3; "
            "stage 1: x=4x3, y=4x3",
        ),
        (
            [np.zeros((2, 3), F32), np.zeros((4, 3), F32)],
            ek.InvalidArgumentError,
            "input shapes x=2x3, y=4x3 are not one stage",
        ),
        (
            [np.zeros((2, 3), np.float64), np.zeros((2, 3), F32)],
            ek.InvalidArgumentError,
            "input 'x' of network 'addrelu' must be float32, got an array of float64",
        ),
        ([b"12345", np.zeros((2, 3), F32)], ek.InvalidArgumentError, "not a whole number of float32"),
        ([b"\0" * 12, np.zeros((2, 3), F32)], ek.InvalidArgumentError, "do not match the size of any stage"),
        (np.zeros((2, 3), F32), ek.InvalidTypeError, "takes 2 inputs"),
        ("xy", ek.InvalidTypeError, "list of arrays"),
        ([object(), np.zeros((2, 3), F32)], ek.InvalidTypeError, "input 'x' must be a numpy array"),
    ],
)
def test_set_inputs_errors_name_the_problem(
    net: ek.Network, inputs: Any, error: type[Exception], message: str
) -> None:
    with net.create_request() as req:
        with pytest.raises(error, match=re.escape(message)):
            req.set_inputs(inputs)
        assert req.stage == 0  # nothing changed


def test_wait_timeout_arguments(net: ek.Network) -> None:
    with net.create_request() as req:
        assert req.wait() is True  # nothing running: done
        assert req.wait(0) is True
        with pytest.raises(ek.InvalidArgumentError, match=">= 0"):
            req.wait(-1)
        with pytest.raises(ek.InvalidArgumentError):
            req.wait(float("nan"))
        with pytest.raises(ek.InvalidTypeError):
            req.wait("1")  # type: ignore[arg-type]


# ---- asynchronous launches ---------------------------------------------------------------------------


def test_infer_is_asynchronous_and_wait_times_out(slow: ek.Network) -> None:
    x = np.ones((1, SLOW_N, SLOW_N), F32)
    with slow.create_request() as req:
        req.set_inputs([x])
        req.infer()
        assert req.running
        assert req.wait(0) is False  # 64 x 256^3 multiply-adds take far longer than no time
        assert req.running
        assert "running" in repr(req)
        with pytest.raises(ek.BusyError, match="still running"):
            req.infer()
        with pytest.raises(ek.BusyError, match="running: wait"):
            req.set_inputs([x])
        assert req.wait(60) is True
        assert not req.running
        assert req.wait(0) is True
        np.testing.assert_allclose(req.get_outputs()[0], slow_reference(x), rtol=1e-3, atol=1e-3)


def test_several_requests_run_at_once(slow: ek.Network, net: ek.Network) -> None:
    inputs = [np.full((1, SLOW_N, SLOW_N), i, F32) for i in range(3)]
    requests = [slow.create_request() for _ in inputs]
    try:
        for req, x in zip(requests, inputs):
            req.set_inputs([x])
            req.infer()
        small = net.create_request()
        x, y = xy()
        np.testing.assert_allclose(small.run([x, y])[0], relu_add(x, y), rtol=1e-6)
        small.close()
        for req, x in zip(requests, inputs):
            assert req.wait()
            np.testing.assert_allclose(req.get_outputs()[0], slow_reference(x), rtol=1e-3, atol=1e-3)
    finally:
        for req in requests:
            req.close()


def test_wait_releases_the_gil(slow: ek.Network) -> None:
    ticks = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    with slow.create_request() as req:
        req.set_inputs([np.ones((1, SLOW_N, SLOW_N), F32)])
        thread = threading.Thread(target=spin)
        thread.start()
        try:
            req.infer()
            before = ticks
            req.wait()
            assert ticks > before  # the other thread ran while this one waited
        finally:
            stop.set()
            thread.join()


def test_callback_runs_after_each_launch(net: ek.Network) -> None:
    done = threading.Event()
    seen: list[tuple[Any, str, list[npt.NDArray[Any]]]] = []

    def on_done(request: ek.Request) -> None:
        assert request.wait(0) is True  # finished: wait returns at once
        seen.append((request, threading.current_thread().name, request.get_outputs()))
        done.set()

    x, y = xy()
    with net.create_request() as req:
        req.set_callback(on_done)
        assert req.callback is on_done
        req.set_inputs([x, y])
        for _ in range(3):
            done.clear()
            req.infer()
            assert done.wait(30)
            req.wait()
        assert len(seen) == 3
        assert all(r is req for r, _, _ in seen)
        assert seen[0][1] != threading.current_thread().name
        np.testing.assert_allclose(seen[-1][2][0], relu_add(x, y), rtol=1e-6)
        req.set_callback(None)
        req.run([x, y])
        assert len(seen) == 3
        with pytest.raises(ek.InvalidTypeError, match="callable"):
            req.set_callback(42)  # type: ignore[arg-type]


def test_every_launch_gets_its_own_callback(net: ek.Network) -> None:
    """Also when wait() retires a launch, and the next one starts, before its callback has run."""
    seen: list[int] = []
    last = threading.Event()
    requests = [net.create_request() for _ in range(4)]
    try:
        for req in requests:
            req.set_inputs(list(xy()))
            req.set_callback(lambda request: seen.append(id(request)))
        for _ in range(50):
            for req in requests:
                req.infer()
            for req in requests:
                assert req.wait()
        # A new callback applies to later launches only, even while earlier ones still wait to be
        # dispatched (they keep the callback set when they started).
        requests[0].set_callback(lambda request: last.set())
        requests[0].infer()
        assert last.wait(30)  # callbacks run in order: every earlier one has run
        assert len(seen) == 200
        assert sorted(seen.count(id(req)) for req in requests) == [50] * 4
    finally:
        for req in requests:
            req.close()


def test_a_launch_calls_the_callback_set_when_it_started(net: ek.Network) -> None:
    """set_callback after a launch finished but before its callback was dispatched changes nothing for
    that launch: the dispatcher is held in another request's callback meanwhile."""
    release, held = threading.Event(), threading.Event()
    calls: list[str] = []
    blocker, req = net.create_request(), net.create_request()

    def hold(request: ek.Request) -> None:
        held.set()
        release.wait(30)

    def third(request: ek.Request) -> None:
        calls.append("third")
        held.clear()

    try:
        blocker.set_callback(hold)
        blocker.set_inputs(list(xy()))
        blocker.infer()
        assert held.wait(30)  # the dispatcher is busy in blocker's callback
        req.set_inputs(list(xy()))
        req.set_callback(lambda request: calls.append("first"))
        req.infer()
        assert req.wait()
        req.set_callback(lambda request: calls.append("second"))
        release.set()
        blocker.wait()
        req.set_callback(third)
        req.infer()
        assert req.wait()
        deadline = time.monotonic() + 30
        while held.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls == ["first", "third"]
    finally:
        release.set()
        blocker.close()
        req.close()


def test_callback_exceptions_are_printed_not_raised(
    net: ek.Network, capfd: pytest.CaptureFixture[str]
) -> None:
    calls = threading.Semaphore(0)

    def broken(request: ek.Request) -> None:
        calls.release()
        raise RuntimeError("boom in the callback")

    with net.create_request() as req:
        req.set_callback(broken)
        req.set_inputs(list(xy()))
        for _ in range(2):  # the callback thread survives the first exception
            req.infer()
            assert calls.acquire(timeout=30)
            req.wait()
        # Callbacks run one at a time, in order: once this one ran, both tracebacks are printed.
        last = threading.Event()
        req.set_callback(lambda request: last.set())
        req.infer()
        assert last.wait(30)
    err = capfd.readouterr().err
    assert err.count("RuntimeError: boom in the callback") == 2
    assert "exception in the callback" in err


def test_callback_requests_stay_alive_until_their_launch_ends(slow: ek.Network) -> None:
    done = threading.Event()
    results: list[npt.NDArray[Any]] = []

    def on_done(request: ek.Request) -> None:
        results.append(request.get_outputs()[0])
        request.close()
        done.set()

    req = slow.create_request()
    req.set_callback(on_done)
    req.set_inputs([np.ones((1, SLOW_N, SLOW_N), F32)])
    req.infer()
    del req  # the context's callback thread holds it until the launch has ended
    gc.collect()
    assert done.wait(60)
    assert results[0].shape == (1, SLOW_N, SLOW_N)


# ---- zero-copy tensors -------------------------------------------------------------------------------


def test_zero_copy_inputs_and_outputs(net: ek.Network) -> None:
    x, y = xy()
    with net.create_request() as req:
        tx, ty = req.input_tensors
        (tz,) = req.output_tensors
        assert tx.shape == (2, 3) and tx.dtype == F32 and tx.flags.writeable
        assert np.shares_memory(req.input_tensors[0], tx)  # the same mapped device memory every time
        tx[...] = x
        ty[...] = y
        req.infer()
        assert req.wait()
        np.testing.assert_allclose(tz, relu_add(x, y), rtol=1e-6)  # the view shows the result
        np.testing.assert_allclose(req.get_outputs()[0], tz)
        # set_inputs on mapped inputs writes through the mapping: the views stay current.
        x2, y2 = xy(seed=5)
        req.set_inputs([x2, y2])
        np.testing.assert_array_equal(tx, x2)
        req.infer()
        req.wait()
        np.testing.assert_allclose(tz, relu_add(x2, y2), rtol=1e-6)
        del tx, ty, tz


def test_views_outlive_a_closed_request(dev: ek.Device, net: ek.Network) -> None:
    """close() with live views of the tensors succeeds; the views stay valid, and the memory they
    view is freed when they go."""
    req = net.create_request()
    x, y = xy()
    req.run([x, y])
    tx = req.input_tensors[0]
    view = req.output_tensors[0]
    allocations = dev.stats["allocations"]  # the three tensors, and the runtime's
    req.close()
    assert req.closed and "closed" in repr(req)
    assert dev.stats["allocations"] == allocations - 1  # y's memory at once; x's and z's wait for the views
    np.testing.assert_allclose(view, relu_add(x, y), rtol=1e-6)
    np.testing.assert_array_equal(tx, x)
    tx[...] = 0.0
    view[...] = 1.0
    assert (tx == 0.0).all() and (view == 1.0).all()
    del tx, view
    gc.collect()
    assert dev.stats["allocations"] == allocations - 3
    req.close()  # again: nothing to do
    with pytest.raises(ek.FreedHandleError, match="closed"):
        req.infer()
    with pytest.raises(ek.FreedHandleError, match="closed"):
        req.input_tensors  # noqa: B018


def test_views_outlive_a_context_that_owns_its_device(models: dict[str, Path]) -> None:
    """Leaving the context's block with live views of a request's tensors: the request, the context
    and its device close for the caller; the memory and the device are released when the views go."""
    x, y = xy()
    with ek.Context(device=0) as context:
        req = context.load_model(models["addrelu"]).network().create_request()
        tx, ty = req.input_tensors
        (tz,) = req.output_tensors
        tx[...] = x
        ty[...] = y
        req.infer()
        assert req.wait()
    assert context.closed and req.closed and context.device.closed
    np.testing.assert_allclose(tz, relu_add(x, y), rtol=1e-6)
    tz[...] = -1.0  # still writable
    assert (tz == -1.0).all()
    with pytest.raises(ek.FreedHandleError):
        context.device.stats  # noqa: B018
    with ek.Device(0) as probe:  # device 0 is still open in the runtime, holding the three tensors
        assert probe.stats["allocations"] == 3
    del tx, ty, tz
    gc.collect()
    with ek.Device(0, heap_size=1 << 20) as again:  # another configuration: the device was closed
        stats = again.stats
    assert stats["allocations"] == 0 and stats["used"] == 0 and stats["free"] == stats["total"]


def test_no_runtime_on_a_device_closed_with_live_views() -> None:
    """A closed handle is refused even while views keep it open in the runtime."""
    from edgekit import _runtime

    device = ek.Device(1, heap_size=1 << 20)
    mv = memoryview(device.malloc(64).map())
    device.close()
    try:
        with pytest.raises(ek.FreedHandleError, match=f"device handle 0x{device.handle:016x} was freed"):
            _runtime.Runtime(device)
        with pytest.raises(ek.InvalidArgumentError, match="closed"):
            ek.Context(device=device)
    finally:
        mv.release()


def test_zero_copy_in_strict_coherence(strict_dev: ek.Device, models: dict[str, Path]) -> None:
    """An emulated non-coherent SoC: infer() flushes the input views, wait() invalidates the output
    views; the checker records nothing, and the results are right."""
    with ek.Context(device=strict_dev) as context:
        net = context.load_model(models["addrelu"]).network()
        with net.create_request() as req:
            for rows in (2, 4, 2):
                x, y = xy(rows, seed=rows)
                req.set_stage(0 if rows == 2 else 1)
                tx, ty = req.input_tensors
                tx[...] = x
                ty[...] = y
                req.infer()
                assert req.wait()
                (tz,) = req.output_tensors
                np.testing.assert_allclose(tz, relu_add(x, y), rtol=1e-6)
                np.testing.assert_allclose(req.get_outputs()[0], tz)
                del tx, ty, tz
            # copies in and out (set_inputs / get_outputs) on the mapped tensors
            x, y = xy(4, seed=9)
            np.testing.assert_allclose(req.run([x, y])[0], relu_add(x, y), rtol=1e-6)
        with net.create_request() as req:  # never mapped: device copies only
            x, y = xy(2, seed=3)
            np.testing.assert_allclose(req.run([x, y])[0], relu_add(x, y), rtol=1e-6)
    assert strict_dev.coherence_report() == []


def test_context_close_closes_its_requests(dev: ek.Device, models: dict[str, Path]) -> None:
    context = ek.Context(device=dev)
    net = context.load_model(models["multi"]).network("slow")
    req = net.create_request()
    req.set_inputs([np.ones((1, SLOW_N, SLOW_N), F32)])
    req.infer()
    context.close()  # waits for the launch
    assert req.closed and context.closed
    with pytest.raises(ek.FreedHandleError):
        net.create_request()
    context.close()


# ---- ONNX, end to end --------------------------------------------------------------------------------


def onnx_model(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(2).standard_normal((4, 3, 3, 3)).astype(F32), "w")
    b = numpy_helper.from_array(np.linspace(-1, 1, 4).astype(F32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, str(path))


def test_compiled_onnx_model_matches_onnxruntime(ctx: ek.Context, tmp_path: Path) -> None:
    compiler = pytest.importorskip("edgekit.compiler")
    if not hasattr(compiler, "compile_model"):
        pytest.skip("edgekit.compiler.compile_model is not there yet")
    ort = pytest.importorskip("onnxruntime")
    onnx_model(tmp_path / "conv.onnx")
    compiler.compile_model(
        str(tmp_path / "conv.onnx"),
        str(tmp_path / "conv.ekm"),
        stages=[{"x": (1, 3, 8, 8)}, {"x": (2, 3, 8, 8)}],
    )
    net = ctx.load_model(tmp_path / "conv.ekm").network()
    assert [t.shapes for t in net.inputs] == [((1, 3, 8, 8), (2, 3, 8, 8))]
    session = ort.InferenceSession(str(tmp_path / "conv.onnx"), providers=["CPUExecutionProvider"])
    with net.create_request() as req:
        for n in (1, 2):
            x = np.random.default_rng(n).standard_normal((n, 3, 8, 8)).astype(F32)
            (y,) = req.run({"x": x})
            np.testing.assert_allclose(y, session.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)


# ---- the edgekit command -----------------------------------------------------------------------------


def edgekit_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    package_root = str(Path(ek.__file__).resolve().parents[1])  # the edgekit these tests import
    env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def test_a_launch_chooses_its_threads_and_cpus(models: dict[str, Path]) -> None:
    with ek.Context(kernels="portable") as ctx:
        req = ctx.load_model(models["addrelu"]).network().create_request()
        x, y = xy(4)
        req.set_inputs([x, y])
        cpus = sorted(os.sched_getaffinity(0))
        req.infer(threads=2, cpus=cpus[:1])
        assert req.wait(timeout=10)
        np.testing.assert_allclose(req.get_outputs()[0], relu_add(x, y), rtol=1e-6)
        bad_launches: list[dict[str, Any]] = [{"threads": 0}, {"cpus": []}, {"cpus": [64]}, {"cpus": [-1]}]
        for bad in bad_launches:
            with pytest.raises(ek.InvalidArgumentError):
                req.infer(**bad)
        offline = next((c for c in range(64) if c not in cpus), None)
        if offline is not None:  # the runtime refuses a mask with no CPU this process may use
            with pytest.raises(ek.InvalidArgumentError):
                req.infer(cpus=[offline])
                req.wait()


def test_cli_help_explains_every_command() -> None:
    done = edgekit_cli("--help")
    assert done.returncode == 0, done.stderr
    for word in ("compile", "info", "run", "examples:", "edgekit run model.ekm --input"):
        assert word in done.stdout
    for command in ("info", "run"):
        sub = edgekit_cli(command, "--help")
        assert sub.returncode == 0 and "examples:" in sub.stdout, sub.stderr
    version = edgekit_cli("--version")
    assert version.stdout.strip() == f"edgekit {ek.__version__}"


def test_cli_info(models: dict[str, Path]) -> None:
    done = edgekit_cli("info", models["multi"], "--kernels", "portable")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "kernels: portable" in out
    assert "network 'a2': 2 input(s), 1 output(s), 2 stage(s)" in out
    assert "2x3 | 4x3" in out and "scale 1 zero_point 0" in out
    assert "1: x=4x3, y=4x3 -> z=4x3" in out
    assert "network 'slow'" in out
    as_json = edgekit_cli("info", models["addrelu"], "--json")
    info = json.loads(as_json.stdout)
    assert info["networks"][0]["inputs"][0] == {
        "name": "x",
        "dtype": "float32",
        "shapes": [[2, 3], [4, 3]],
        "scale": 1.0,
        "zero_point": 0,
        "max_bytes": 48,
        "dynamic": False,
    }


def test_cli_run_with_npy_inputs(models: dict[str, Path], tmp_path: Path) -> None:
    x, y = xy(4)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "out"
    done = edgekit_cli(
        "run", models["addrelu"], "--input", f"y={tmp_path / 'y.npy'}", "-i", tmp_path / "x.npy",
        "--output-dir", out, "--repeat", "3", "--threads", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "stage 1" in done.stdout
    assert "output z: float32 4x3" in done.stdout
    assert "latency: median" in done.stdout and "over 3 launch(es)" in done.stdout
    np.testing.assert_allclose(np.load(out / "z.npy"), relu_add(x, y), rtol=1e-6)


def test_cli_run_checks_outputs_against_expect(models: dict[str, Path], tmp_path: Path) -> None:
    x, y = xy(4)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    good = np.maximum(x + y, 0)
    np.save(tmp_path / "good.npy", good)
    args: list[str | Path] = [
        "run",
        models["addrelu"],
        "-i",
        tmp_path / "x.npy",
        "-i",
        tmp_path / "y.npy",
        "--expect",
    ]
    done = edgekit_cli(*args, f"z={tmp_path / 'good.npy'}")
    assert done.returncode == 0, done.stderr
    assert "expect z: OK, error 0" in done.stdout
    off = good.copy()
    off[0, 0] += 0.5  # far past the default tolerance 1e-4 of the output's scale
    np.save(tmp_path / "off.npy", off)
    done = edgekit_cli(*args, tmp_path / "off.npy")
    assert done.returncode == 1
    assert "expect z: MISMATCH" in done.stdout and "differ from --expect" in done.stderr
    done = edgekit_cli(*args, tmp_path / "off.npy", "--tolerance", "1")
    assert done.returncode == 0, done.stdout
    np.save(tmp_path / "wrong-shape.npy", good[:2])
    done = edgekit_cli(*args, tmp_path / "wrong-shape.npy")
    assert done.returncode == 1 and "MISMATCH, shape 4x3 instead of 2x3" in done.stdout


def test_cli_run_random_inputs(models: dict[str, Path]) -> None:
    done = edgekit_cli("run", models["multi"], "--network", "a2", "--random", "--stage", "1")
    assert done.returncode == 0, done.stderr
    assert "input  x: float32 4x3" in done.stdout and "output z: float32 4x3" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "{models}/nope.ekm", "--random"], "no such model file"),
        (["run", "{addrelu}"], "give --input for each input of network 'addrelu' (x, y), or --random"),
        (["run", "{multi}", "--random"], "the model has 2 networks (a2, slow): name one"),
        (["run", "{addrelu}", "--network", "b", "--random"], "no network 'b'"),
        (["run", "{addrelu}", "-i", "{x}", "-i", "{x}", "-i", "{x}"], "takes 2 input(s) (x, y), got 3"),
        (["run", "{addrelu}", "-i", "{x}"], "missing input 'y'"),
        (["run", "{addrelu}", "-i", "w={x}", "-i", "{x}"], "unknown input 'w'"),
        (["run", "{addrelu}", "-i", "{bad}", "-i", "{bad}"], "has shape 5; the network's stages take"),
        (["run", "{addrelu}", "-i", "{models}/none.npy", "-i", "{x}"], "cannot read input 'x'"),
        (["info", "{garbage}"], "EK_ERR_MODEL_INVALID"),
    ],
)
def test_cli_errors_are_one_line(
    models: dict[str, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 3), F32))
    np.save(tmp_path / "bad.npy", np.zeros(5, F32))
    (tmp_path / "garbage.ekm").write_bytes(b"EDGEKIT\0" + b"\1" * 100)
    names = {
        "models": str(models["addrelu"].parent),
        "addrelu": str(models["addrelu"]),
        "multi": str(models["multi"]),
        "x": str(tmp_path / "x.npy"),
        "bad": str(tmp_path / "bad.npy"),
        "garbage": str(tmp_path / "garbage.ekm"),
    }
    done = edgekit_cli(*[a.format(**names) for a in args])
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert message in lines[0]
    assert "Traceback" not in done.stderr


def test_cli_usage_errors_exit_2(models: dict[str, Path]) -> None:
    for args in ([], ["frobnicate"], ["run", str(models["addrelu"]), "--repeat", "0"], ["info"]):
        done = edgekit_cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_cli_compile_then_run(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    try:
        import edgekit.compiler.cli  # noqa: F401
    except ImportError:
        pytest.skip("edgekit.compiler.cli is not there yet")
    onnx_model(tmp_path / "conv.onnx")
    done = edgekit_cli(
        "compile", tmp_path / "conv.onnx", "-o", tmp_path / "conv.ekm", "--input-shape", "x=1x3x8x8"
    )
    assert done.returncode == 0, done.stderr
    run = edgekit_cli("run", tmp_path / "conv.ekm", "--random", "--output-dir", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    assert np.load(tmp_path / "out" / "y.npy").shape == (1, 4, 8, 8)


def test_cli_output_into_a_closed_pipe_is_quiet(models: dict[str, Path]) -> None:
    """edgekit info ... | head -1: the reader leaves early; no 'Broken pipe' error, no traceback. Here
    the reader (true) is gone before edgekit writes anything."""
    import subprocess
    import sys

    done = subprocess.run(
        f"{sys.executable} -m edgekit info --json {models['addrelu']} | true; echo ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stderr == "", done.stderr
    assert done.stdout.strip() == "1"
