"""An ai.edgekit EdgeKitNetwork node in a host ONNX graph: the compiler inlines the precompiled network
(compiler/subnet.py), so pre-ops -> EdgeKit node -> post-ops compiles and runs as one model, equal to
onnxruntime on the same graph with the network's ONNX nodes in place of the node; on the host, in the
reference interpreter and on the emulated board; and the bad nodes are clear compile errors."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import edgekit as ek
from edgekit.compiler import CompileError, NetworkSpec, compile_model, compile_networks, ekm
from edgekit.compiler.reference import run_reference
from edgekit.compiler.subnet import DOMAIN, OP_TYPE, make_edgekit_node

Array = np.ndarray[Any, np.dtype[np.float32]]
IR_VERSION = 8  # what the onnxruntime of requirements-dev.txt reads
ONE = [{"a": (1, 3, 8, 8)}]  # one host stage, batch 1


class Core(torch.nn.Module):
    """The precompiled part: conv, ReLU, pointwise conv, sigmoid; and a second output (its mean)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.sigmoid(self.conv2(torch.relu(self.conv1(x))))
        return y, y.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def core_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("subnet") / "core.onnx"
    torch.onnx.export(
        Core().eval(),
        (torch.randn(1, 4, 8, 8),),
        str(path),
        input_names=["x"],
        output_names=["y", "m"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}, "m": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )
    return path


@pytest.fixture(scope="module")
def core_ekm(core_onnx: Path) -> bytes:
    """The core compiled with two stages (batch 1 and 2), in a file with a second network."""
    other = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "other",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    report = compile_networks(
        [
            NetworkSpec(str(core_onnx), "core", [{"x": (1, 4, 8, 8)}, {"x": (2, 4, 8, 8)}]),
            NetworkSpec(other, "other"),
        ]
    )
    return report.data


_RNG = np.random.default_rng(7)
_W = (_RNG.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
_B = _RNG.standard_normal((1, 4, 1, 1)).astype(np.float32)


def host_model(
    middle: Sequence[onnx.NodeProto], initializers: Sequence[onnx.TensorProto] = ()
) -> onnx.ModelProto:
    """a -> Conv -> [middle: h -> s, m] -> Add bias -> MaxPool -> out, and m * 2 -> out2."""
    nodes = [
        helper.make_node("Conv", ["a", "w"], ["h"], pads=[1, 1, 1, 1], name="pre"),
        *middle,
        helper.make_node("Add", ["s", "b"], ["t"], name="add"),
        helper.make_node("MaxPool", ["t"], ["out"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Mul", ["m", "two"], ["out2"], name="twice"),
    ]
    graph = helper.make_graph(
        nodes,
        "host",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("out2", TensorProto.FLOAT, None),
        ],
        [
            onnx.numpy_helper.from_array(_W, "w"),
            onnx.numpy_helper.from_array(_B, "b"),
            onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two"),
            *initializers,
        ],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def with_node(data: bytes, network: str | None = "core") -> onnx.ModelProto:
    return host_model([make_edgekit_node(data, ["h"], ["s", "m"], network=network, name="ek")])


def standard_model(core_onnx: Path) -> onnx.ModelProto:
    """The host graph with the core's own ONNX nodes (renamed) where the EdgeKit node is."""
    core = onnx.load(str(core_onnx)).graph
    rename = {"x": "h", "y": "s", "m": "m"}
    nodes = []
    for n in core.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        copy.input[:] = [rename.get(i, f"core/{i}") if i else "" for i in n.input]
        copy.output[:] = [rename.get(o, f"core/{o}") for o in n.output]
        copy.name = f"core/{n.name}"
        nodes.append(copy)
    inits = []
    for t in core.initializer:
        u = onnx.TensorProto()
        u.CopyFrom(t)
        u.name = f"core/{t.name}"
        inits.append(u)
    return host_model(nodes, inits)


def ort(model: onnx.ModelProto, a: Array) -> list[Array]:
    import onnxruntime  # type: ignore[import-untyped]

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(y) for y in session.run(None, {"a": a})]


def inputs(batch: int) -> Array:
    return np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)


def test_make_edgekit_node_holds_the_file_and_the_network(core_ekm: bytes) -> None:
    node = make_edgekit_node(core_ekm, ["h"], ["s", "m"], network="core", name="ek")
    assert (node.domain, node.op_type, node.name) == (DOMAIN, OP_TYPE, "ek")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"model": core_ekm, "network": b"core"}
    with pytest.raises(CompileError, match=r"takes 1 input\(s\) \(x\), got 2"):
        make_edgekit_node(core_ekm, ["h", "g"], ["s"], network="core")
    with pytest.raises(CompileError, match=r"has 2 networks \(core, other\); name one"):
        make_edgekit_node(core_ekm, ["h"], ["s"])


@pytest.mark.parametrize("batch", [1, 2])
def test_host_graph_around_a_network_matches_onnxruntime(
    core_ekm: bytes, core_onnx: Path, batch: int
) -> None:
    """Both host stages pick the core's stage of their batch; the runtime and the reference interpreter
    equal onnxruntime on the standard graph."""
    report = compile_model(
        with_node(core_ekm), name="host", stages=[{"a": (1, 3, 8, 8)}, {"a": (2, 3, 8, 8)}]
    )
    stage = report.networks[0].stages[batch - 1]
    assert stage.output_shapes == {"out": (batch, 4, 4, 4), "out2": (batch, 4)}
    assert stage.op_types["CONV"] == 3  # the host's and the core's two (ReLU fused into the core's)
    a = inputs(batch)
    expected = ort(standard_model(core_onnx), a)
    reference = run_reference(report.data, "host", {"a": a})
    with ek.Context() as ctx:
        req = ctx.load_model(report.data).network("host").create_request()
        got = req.run({"a": a})
        req.close()
    for want, ref, out in zip(expected, [reference["out"], reference["out2"]], got):
        assert out.shape == want.shape
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ref, want, rtol=1e-4, atol=1e-4)
    # the inlined ops keep their names under the node's, and the file is one model of plain ops
    model = ekm.read(report.data)
    names = [op.name for op in model.network("host").stages[batch - 1].ops]
    assert any(n.startswith("ek/") for n in names) and "pre" in names


def test_the_network_output_may_be_the_host_output(core_ekm: bytes) -> None:
    """A graph that is only the node: its inputs and outputs are the network's."""
    graph = helper.make_graph(
        [make_edgekit_node(core_ekm, ["x"], ["y"], network="core", name="only")],
        "wrap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]
    )
    x = inputs(2)[:, :1].repeat(4, axis=1)
    got = run_reference(compile_model(model, name="wrap").data, None, {"x": x})["y"]
    want = run_reference(core_ekm, "core", {"x": x})["y"]
    np.testing.assert_array_equal(got, want)


def test_corrupt_model_bytes_are_a_compile_error(core_ekm: bytes) -> None:
    broken = bytearray(core_ekm)
    broken[:8] = b"NOTEKM\0\0"
    bad_magic = r"EdgeKitNetwork \(ek\): its model is not a readable \.ekm file: bad magic"
    with pytest.raises(CompileError, match=bad_magic):
        compile_model(_patched(core_ekm, bytes(broken)), name="h", stages=ONE)
    with pytest.raises(CompileError, match=r"not a readable \.ekm file: file too short"):
        compile_model(_patched(core_ekm, core_ekm[:40]), name="h", stages=ONE)
    with pytest.raises(CompileError, match=r"not a readable \.ekm file: header"):
        compile_model(_patched(core_ekm, core_ekm[:-8]), name="h", stages=ONE)


def test_unsupported_major_version_is_a_compile_error(core_ekm: bytes) -> None:
    future = bytearray(core_ekm)
    struct.pack_into("<H", future, 8, 2)
    with pytest.raises(CompileError, match=r"unsupported version 2\.1 \(this reader reads 1\.x\)"):
        compile_model(_patched(core_ekm, bytes(future)), name="h", stages=ONE)


def test_unknown_network_name_is_a_compile_error(core_ekm: bytes) -> None:
    model = with_node(core_ekm)
    for attr in model.graph.node[1].attribute:
        if attr.name == "network":
            attr.s = b"nope"
    with pytest.raises(CompileError, match=r"no network 'nope'; its networks are: core, other"):
        compile_model(model, name="h", stages=ONE)


def test_shapes_that_match_no_stage_are_a_compile_error(core_ekm: bytes) -> None:
    with pytest.raises(CompileError) as info:
        compile_model(with_node(core_ekm), name="h", stages=[{"a": (3, 3, 8, 8)}])
    message = str(info.value)
    assert "no stage of network 'core' takes the input shapes x=3x4x8x8" in message
    assert "stage 0: x=1x4x8x8; stage 1: x=2x4x8x8" in message


def test_missing_model_attribute_is_a_compile_error(core_ekm: bytes) -> None:
    model = with_node(core_ekm)
    node = model.graph.node[1]
    kept = [a for a in node.attribute if a.name != "model"]
    del node.attribute[:]
    node.attribute.extend(kept)
    with pytest.raises(CompileError, match=r"no 'model' attribute"):
        compile_model(model, name="h", stages=ONE)


def _patched(good: bytes, data: bytes) -> onnx.ModelProto:
    """The host model whose node holds ``data`` (bytes the helper would refuse)."""
    model = with_node(good)
    for attr in model.graph.node[1].attribute:
        if attr.name == "model":
            attr.s = data
    return model


# --- the emulated board ----------------------------------------------------------------------------

ON_BOARD = "/opt/edgekit-subnet"


def test_host_graph_with_a_network_runs_on_the_board(
    flashed_emu: Any, core_ekm: bytes, core_onnx: Path
) -> None:
    from conftest import edgekit_run_on_board

    folder: Path = flashed_emu.rootfs / ON_BOARD.lstrip("/")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    a = inputs(2)
    compile_model(with_node(core_ekm), folder / "host.ekm", stages=[{"a": (2, 3, 8, 8)}])
    np.save(folder / "a.npy", a)
    expected = ort(standard_model(core_onnx), a)
    np.save(folder / "expected.npy", expected[0])
    np.save(folder / "expected2.npy", expected[1])
    out = edgekit_run_on_board(
        flashed_emu.rootfs,
        f"{ON_BOARD}/host.ekm",
        "--input",
        f"{ON_BOARD}/a.npy",
        "--expect",
        f"out={ON_BOARD}/expected.npy",
        "--expect",
        f"out2={ON_BOARD}/expected2.npy",
    )
    assert "expect out: OK" in out and "expect out2: OK" in out, out
