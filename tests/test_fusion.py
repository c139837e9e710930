"""Conv + residual Add (+ Relu) fusion end to end: torch residual blocks of random shapes and the
ResNet-18 test model compiled with the fused CONV (its fourth input Z, .ekm 1.4) and run by the runtime
with the portable and the XNNPACK kernels, against onnxruntime. The compiler-side rules (when it fuses
and when not) are in test_compiler.py; a fused model on the emulated board in test_board_models.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
import torch
from test_models import TOLERANCE, check_close, open_context

import edgekit as ek
from edgekit.compiler import compile_model, ekm
from edgekit.compiler.graph import OpType
from models import (
    INPUT_NAME,
    compile_ekm,
    export_module,
    input_shape_of,
    max_error,
    onnx_path,
    ort_run,
    random_input,
)

KERNELS = ("portable", "xnnpack")


class Block(torch.nn.Module):
    """A residual block: conv-bn-relu, conv-bn, + shortcut (identity, or a strided 1x1 conv-bn), relu.
    ``kind``: "basic" (3x3 convs), "depthwise" (a depthwise 3x3 then a pointwise conv, MobileNet-like,
    no relu after the add) or "down" (stride 2 with a projection shortcut: an Add of two convs)."""

    def __init__(self, c: int, m: int, kind: str) -> None:
        super().__init__()
        nn = torch.nn
        stride = 2 if kind == "down" else 1
        if kind == "depthwise":
            self.body = nn.Sequential(
                nn.Conv2d(c, c, 3, 1, 1, groups=c), nn.BatchNorm2d(c), nn.ReLU6(), nn.Conv2d(c, m, 1)
            )
        else:
            self.body = nn.Sequential(
                nn.Conv2d(c, m, 3, stride, 1, bias=False),
                nn.BatchNorm2d(m),
                nn.ReLU(),
                nn.Conv2d(m, m, 3, 1, 1, bias=False),
                nn.BatchNorm2d(m),
            )
        self.short = (
            nn.Sequential(nn.Conv2d(c, m, 1, stride, bias=False), nn.BatchNorm2d(m))
            if c != m or stride != 1
            else None
        )
        self.relu = kind != "depthwise"

    def forward(self, x: Any) -> Any:
        y = self.body(x) + (x if self.short is None else self.short(x))
        return torch.relu(y) if self.relu else y


def export_block(block: Any, shape: tuple[int, ...]) -> bytes:
    """The block in eval mode with non-trivial BatchNorm statistics, as ONNX (opset 17)."""
    return export_module(block, shape, ["x"], ["y"])


def fused_convs(data: bytes) -> int:
    ops = ekm.read(data).networks[0].stages[0].ops
    assert not any(op.type == OpType.ADD for op in ops), "an Add was left unfused"
    return sum(1 for op in ops if op.type == OpType.CONV and len(op.inputs) == 4)


@pytest.mark.parametrize("algorithm", ["auto", "winograd"])
@pytest.mark.parametrize("seed", range(6))
def test_random_residual_blocks_match_onnxruntime(seed: int, algorithm: str) -> None:
    """Random channels, sizes and batch; every block kind; both kernel paths and 1 and 2 threads. With
    --conv-algorithm winograd the fused 3x3 stride-1 conv runs Winograd, which adds Z in its output
    transform (auto kernels keep it off XNNPACK)."""
    rng = np.random.default_rng(seed)
    kind = ("basic", "depthwise", "down")[seed % 3]
    c = int(rng.integers(1, 20))
    m = c if kind == "basic" and seed < 3 else int(rng.integers(1, 20))
    shape = (int(rng.integers(1, 3)), c, int(rng.integers(3, 17)), int(rng.integers(3, 17)))
    torch.manual_seed(seed)
    onnx_bytes = export_block(Block(c, m, kind), shape)
    report = compile_model(onnx.load_from_string(onnx_bytes), conv_algorithm=algorithm)
    assert fused_convs(report.data) == 1
    if algorithm == "winograd" and kind == "basic" and c == m:  # (else the 1x1 shortcut conv takes Z)
        ops = ekm.read(report.data).networks[0].stages[0].ops
        assert any(len(op.inputs) == 4 and "algorithm" in op.attrs for op in ops), "no fused Winograd conv"
    x = rng.standard_normal(shape).astype(np.float32)
    import onnxruntime as ort  # type: ignore[import-untyped]

    (expected,) = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for kernels in (*KERNELS, "auto"):
        for threads in (1, 2):
            # auto reports the provider it found (xnnpack, or portable without it)
            with (
                ek.Context(device=0, kernels="auto", threads=threads)
                if kernels == "auto"
                else open_context(kernels, threads) as ctx
            ):
                (actual,) = ctx.load_model(report.data).network().create_request().run([x])
                check_close(
                    f"{kind} block {shape} -> {m}, {algorithm} [{kernels}, {threads} threads]",
                    actual,
                    expected,
                )


@pytest.mark.parametrize("kernels", KERNELS)
def test_resnet18_is_fused_and_matches_onnxruntime(kernels: str) -> None:
    """Every basic block's tail (Conv -> Add -> Relu) is one CONV: 8 blocks, no ADD left."""
    name = "resnet18"
    path = compile_ekm(name)
    assert fused_convs(path.read_bytes()) == 8
    x = random_input(input_shape_of(name))
    (expected,) = ort_run(onnx_path(name), {INPUT_NAME: x})
    with open_context(kernels) as ctx:
        (actual,) = ctx.load_model(str(path)).network().create_request().run([x])
    assert max_error(actual, expected) <= TOLERANCE
    check_close(f"{name} [{kernels}]", actual, expected)


def test_constant_z_and_graph_input_z_match_onnxruntime() -> None:
    """Z that is a constant of the output's full shape (converted to NHWC at compile time; the XNNPACK
    provider keeps a padded copy) and Z that is a network input (an NCHW -> NHWC transpose feeds it)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(42)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    k = rng.standard_normal((1, 5, 6, 7)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "K"], ["s"], name="add_const"),
        helper.make_node("Conv", ["s", "W2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["r", "c2"], ["y"], name="add_input"),
    ]
    w2 = rng.standard_normal((5, 5, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        nodes,
        "z",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 7]),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 5, 6, 7]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(k, "K"), numpy_helper.from_array(w2, "W2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    report = compile_model(model)
    assert fused_convs(report.data) == 2
    feeds = {
        "x": rng.standard_normal((1, 3, 6, 7)).astype(np.float32),
        "r": rng.standard_normal((1, 5, 6, 7)).astype(np.float32),
    }
    import onnxruntime as ort

    (expected,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )
    for kernels in KERNELS:
        with open_context(kernels) as ctx:
            (actual,) = ctx.load_model(report.data).network().create_request().run(feeds)
            check_close(f"constant and input Z [{kernels}]", actual, expected)
