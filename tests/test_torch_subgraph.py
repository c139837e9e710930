"""edgekit.torch.RuntimeSubgraph: a compiled EdgeKit network as one layer of a PyTorch model, equal to the
pure-torch model it was compiled from; captured by torch.jit.trace and torch.export as one op, saved and
reloaded (also in a fresh process that only imports edgekit.torch); exported to ONNX as an EdgeKit node
that edgekit compile inlines; and clear errors for the bad inputs."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

import edgekit.torch as ekt
from edgekit.compiler import NetworkSpec, compile_model, compile_networks
from edgekit.compiler.subnet import DOMAIN, OP_TYPE

TOL = 1e-4


class Core(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.conv2(torch.relu(self.conv1(x)))
        return y


class Full(torch.nn.Module):
    """pre (torch) -> body -> post (torch); body is Core or a RuntimeSubgraph of it."""

    def __init__(self, body: torch.nn.Module, pre: torch.nn.Module, post: torch.nn.Module) -> None:
        super().__init__()
        self.pre, self.body, self.post = pre, body, post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.post(self.body(self.pre(x)))
        return y


@pytest.fixture(scope="module", autouse=True)
def _close_runtimes() -> Iterator[None]:
    yield
    ekt.clear_cache()  # the cached contexts hold device 0; later test modules open it with their options


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The pure-torch model, its core compiled (stages batch 1 and 2, plus a second network in the file),
    and the hybrid model with the core replaced by a RuntimeSubgraph."""
    torch.manual_seed(3)
    core = Core().eval()
    pre = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    post = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6 * 8 * 8, 5)).eval()
    folder = tmp_path_factory.mktemp("torchsub")
    onnx_path = folder / "core.onnx"
    torch.onnx.export(
        core,
        (torch.randn(1, 4, 8, 8),),
        str(onnx_path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )
    tiny = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])],
            "tiny",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    data = compile_networks(
        [
            NetworkSpec(str(onnx_path), "core", [{"x": (1, 4, 8, 8)}, {"x": (2, 4, 8, 8)}]),
            NetworkSpec(tiny, "tiny"),
        ]
    ).data
    hybrid = Full(ekt.RuntimeSubgraph(data, network="core"), pre, post).eval()
    return {"torch": Full(core, pre, post).eval(), "hybrid": hybrid, "ekm": data, "folder": folder}


def batch(n: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(n).standard_normal((n, 3, 8, 8)).astype(np.float32))


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("n", [1, 2])
def test_hybrid_model_matches_torch(models: dict[str, Any], n: int) -> None:
    """Each batch size runs the core's stage of that shape; the output is a new CPU float tensor."""
    with torch.no_grad():
        want = models["torch"](batch(n))
        got = models["hybrid"](batch(n))
    close(got, want)
    assert got.dtype == torch.float32 and got.device.type == "cpu"


def test_layer_reports_its_network(models: dict[str, Any]) -> None:
    sub = models["hybrid"].body
    assert (sub.network, sub.input_names, sub.output_names) == ("core", ["x"], ["y"])
    assert bytes(sub.ekm.numpy()) == models["ekm"]
    assert "network='core'" in repr(sub)


def test_only_network_is_taken_without_a_name(models: dict[str, Any]) -> None:
    single = compile_model(_core_onnx(models), stages=[{"x": (1, 4, 8, 8)}], name="solo").data
    assert ekt.RuntimeSubgraph(single).network == "solo"
    with pytest.raises(ValueError, match=r"the model has 2 networks \(core, tiny\); name one with network="):
        ekt.RuntimeSubgraph(models["ekm"])


def _core_onnx(models: dict[str, Any]) -> str:
    return str(models["folder"] / "core.onnx")


def test_non_contiguous_input_is_copied_correctly(models: dict[str, Any]) -> None:
    sub = models["hybrid"].body
    x = torch.randn(2, 4, 8, 8)
    strided = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    assert not strided.is_contiguous()
    close(sub(strided), sub(x))
    close(sub(x), models["torch"].body(x))


def test_bad_inputs_are_clear_errors(models: dict[str, Any]) -> None:
    sub = models["hybrid"].body
    with pytest.raises(ValueError, match=r"no stage takes the input shapes x=3x4x8x8; its stages take: "):
        sub(torch.randn(3, 4, 8, 8))
    with pytest.raises(ValueError, match=r"stage 0: x=1x4x8x8; stage 1: x=2x4x8x8"):
        sub(torch.randn(1, 4, 9, 8))
    with pytest.raises(ValueError, match=r"input 'x' must be torch.float32, got torch.float64"):
        sub(torch.randn(1, 4, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"input 'x' is on meta; EdgeKit takes CPU tensors"):
        sub(torch.randn(1, 4, 8, 8, device="meta"))
    with pytest.raises(ValueError, match=r"takes 1 input\(s\) \(x\), got 2"):
        sub(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8))


def test_bad_models_are_clear_errors(models: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"no network 'nope'; its networks are: core, tiny"):
        ekt.RuntimeSubgraph(models["ekm"], network="nope")
    corrupt = bytearray(models["ekm"])
    corrupt[:8] = b"NOTEKM\0\0"
    with pytest.raises(ValueError, match=r"the ekm bytes are not a model EdgeKit can load: .*magic"):
        ekt.RuntimeSubgraph(bytes(corrupt))
    with pytest.raises(ValueError, match=r"the ekm bytes are not a model EdgeKit can load"):
        ekt.RuntimeSubgraph(models["ekm"][:-64])
    with pytest.raises(TypeError, match=r"takes the .ekm bytes or a path, got int"):
        ekt.RuntimeSubgraph(3)  # type: ignore[arg-type]


def test_backward_through_the_network_raises(models: dict[str, Any]) -> None:
    """Not differentiable: the forward pass runs (the torch layers keep their graph), backward raises."""
    y = models["hybrid"](batch(1))
    assert y.requires_grad  # the post layer's parameters
    with pytest.raises(RuntimeError, match=r"EdgeKit networks are not differentiable"):
        y.sum().backward()


def test_jit_trace_captures_one_op_and_reloads(models: dict[str, Any]) -> None:
    traced = torch.jit.trace(models["hybrid"], batch(2))  # type: ignore[no-untyped-call]
    graph = str(traced.inlined_graph)
    assert graph.count("edgekit::run_network") == 1
    assert "aten::_convolution" in graph  # the pre layer stays torch
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        close(loaded(batch(2)), models["torch"](batch(2)))
        close(loaded(batch(1)), models["torch"](batch(1)))  # the traced op picks the stage per call


def _run_fresh(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_jit_saved_model_runs_in_a_fresh_process(models: dict[str, Any], tmp_path: Path) -> None:
    traced = torch.jit.trace(models["hybrid"], batch(1))  # type: ignore[no-untyped-call]
    torch.jit.save(traced, str(tmp_path / "hybrid.pt"))
    np.save(tmp_path / "x.npy", batch(2).numpy())
    done = _run_fresh(
        """
        import numpy as np, torch
        import edgekit.torch  # registers edgekit::run_network
        model = torch.jit.load("hybrid.pt")
        with torch.no_grad():
            np.save("y.npy", model(torch.from_numpy(np.load("x.npy"))).numpy())
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with torch.no_grad():
        close(torch.from_numpy(np.load(tmp_path / "y.npy")), models["torch"](batch(2)))
    # without the import the op is unknown, and torch names it
    done = _run_fresh("import torch; torch.jit.load('hybrid.pt')", tmp_path)
    assert done.returncode != 0 and "edgekit::run_network" in done.stderr, done.stderr[-3000:]


def test_torch_export_captures_one_op_and_round_trips(models: dict[str, Any], tmp_path: Path) -> None:
    exported = torch.export.export(models["hybrid"], (batch(2),))
    calls = [n for n in exported.graph.nodes if n.target is torch.ops.edgekit.run_network.default]
    assert len(calls) == 1
    with torch.no_grad():
        close(exported.module()(batch(2)), models["torch"](batch(2)))
    torch.export.save(exported, str(tmp_path / "hybrid.pt2"))
    np.save(tmp_path / "x.npy", batch(2).numpy())
    done = _run_fresh(
        """
        import numpy as np, torch
        import edgekit.torch
        program = torch.export.load("hybrid.pt2")
        with torch.no_grad():
            np.save("y.npy", program.module()(torch.from_numpy(np.load("x.npy"))).numpy())
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with torch.no_grad():
        close(torch.from_numpy(np.load(tmp_path / "y.npy")), models["torch"](batch(2)))


def test_changed_ekm_buffer_is_refused_after_reload(models: dict[str, Any], tmp_path: Path) -> None:
    traced = torch.jit.trace(models["hybrid"], batch(1))  # type: ignore[no-untyped-call]
    torch.jit.save(traced, str(tmp_path / "hybrid.pt"))
    done = _run_fresh(
        """
        import torch
        import edgekit.torch
        model = torch.jit.load("hybrid.pt")
        model.body.ekm[100] ^= 1
        model(torch.zeros(1, 3, 8, 8))
        """,
        tmp_path,
    )
    assert done.returncode != 0 and "the module's bytes were changed" in done.stderr, done.stderr[-3000:]


def test_onnx_export_emits_an_edgekit_node_that_compiles(models: dict[str, Any], tmp_path: Path) -> None:
    """torch.onnx.export (the TorchScript exporter) writes the layer as one ai.edgekit node; edgekit
    compile inlines it, so the whole PyTorch model compiles to one network equal to torch."""
    path = tmp_path / "hybrid.onnx"
    torch.onnx.export(
        models["hybrid"],
        (batch(2),),
        str(path),
        input_names=["a"],
        output_names=["z"],
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(path))
    nodes = [n for n in proto.graph.node if n.domain == DOMAIN]
    assert [n.op_type for n in nodes] == [OP_TYPE]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["model"] == models["ekm"] and attrs["network"] == b"core"
    report = compile_model(proto, name="hybrid", stages=[{"a": (2, 3, 8, 8)}])
    import edgekit as ek

    with ek.Context() as ctx:
        req = ctx.load_model(report.data).network().create_request()
        (z,) = req.run({"a": batch(2).numpy()})
        req.close()
    with torch.no_grad():
        close(torch.from_numpy(z), models["torch"](batch(2)))


def test_edgekit_does_not_import_torch(tmp_path: Path) -> None:
    done = _run_fresh(
        "import sys, edgekit; assert 'torch' not in sys.modules, 'edgekit imported torch'", tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    done = _run_fresh("import sys; sys.modules['torch'] = None; import edgekit.torch", tmp_path)
    assert done.returncode != 0 and "ImportError" in done.stderr and "pip install torch" in done.stderr


def test_exported_torch_model_runs_on_the_board(
    flashed_emu: Any, models: dict[str, Any], tmp_path: Path
) -> None:
    """The board has no torch: the hybrid model goes there the ONNX way (export, compile, one .ekm) and
    matches the pure-torch model there."""
    import shutil

    from conftest import edgekit_run_on_board

    board_dir = "/opt/edgekit-torchsub"
    folder: Path = flashed_emu.rootfs / board_dir.lstrip("/")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    path = tmp_path / "hybrid.onnx"
    torch.onnx.export(
        models["hybrid"], (batch(2),), str(path), input_names=["a"], output_names=["z"], dynamo=False
    )
    compile_model(str(path), folder / "hybrid.ekm", stages=[{"a": (2, 3, 8, 8)}])
    np.save(folder / "a.npy", batch(2).numpy())
    with torch.no_grad():
        np.save(folder / "expected.npy", models["torch"](batch(2)).numpy())
    out = edgekit_run_on_board(
        flashed_emu.rootfs,
        f"{board_dir}/hybrid.ekm",
        "--input",
        f"{board_dir}/a.npy",
        "--expect",
        f"{board_dir}/expected.npy",
    )
    assert "expect z: OK" in out, out
