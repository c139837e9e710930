"""Quantized (int8) models: QDQ and QOperator ONNX models from onnxruntime.quantization, compiled to
EdgeKit's int8 ops (.ekm 1.5, docs/model-format.md "Quantized ops") and checked against onnxruntime
running the same quantized model through the numpy reference interpreter. The C runtime's kernels:
tests/test_quantized_runtime.py; the emulated boards: tests/test_board_models.py.

"Within one step": onnxruntime and EdgeKit may round a requantization differently by one unit
(docs/model-format.md), so outputs are compared against the output's quantization step.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import models  # noqa: E402
from edgekit.compiler import CompileError, compile_model, ekm  # noqa: E402
from edgekit.compiler.graph import OpType  # noqa: E402
from edgekit.compiler.reference import run_reference  # noqa: E402

FORMS = {
    "qdq-pc": {"per_channel": True, "qoperator": False},
    "qdq-pt": {"per_channel": False, "qoperator": False},
    "qop-pc": {"per_channel": True, "qoperator": True},
}
QUANTIZED_OPS = {t.name for t in OpType if OpType.QUANTIZE <= t <= OpType.QLUT}


def output_step(path: Path) -> float:
    """The quantization step of the network output: the scale of the DequantizeLinear that makes it."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    node = producer[models.OUTPUT_NAME]
    while node.op_type not in ("DequantizeLinear",):
        if node.op_type == "Softmax":  # MLP: softmax runs in float after the last DequantizeLinear
            return 1.0 / 255
        node = producer[node.input[0]]
    return float(inits[node.input[1]].reshape(-1)[0])


def ort_int8(path: Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime on the quantized model (one thread, its default optimizations)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {models.INPUT_NAME: x})[0])


def assert_within_a_step(ours: np.ndarray, path: Path, x: np.ndarray, what: str) -> None:
    """Outputs within one quantization step of onnxruntime's. Each int8 op rounds within one unit of
    onnxruntime's (which computes some ops in float between DQ and Q); through a deep network such a
    difference can reach an output as two steps: allowed for at most 0.5% of the outputs (onnxruntime's
    own optimized and unoptimized runs of the quantized ResNet-18 differ by two steps too)."""
    step = output_step(path)
    theirs = ort_int8(path, x)
    assert ours.shape == theirs.shape
    steps = np.abs(ours.astype(np.float64) - theirs) / step
    far = float(np.mean(steps > 1.001))
    assert steps.max() <= 2.001 and far <= 0.005, (
        f"{what}: {steps.max():.2f} steps from onnxruntime ({far:.3%} of the outputs over one step)"
    )


def compile_quantized(path: Path, shape: tuple[int, ...]) -> bytes:
    return compile_model(str(path), stages=[{models.INPUT_NAME: shape}]).data


def op_counts(data: bytes) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in ekm.read(data).networks[0].stages[0].ops:
        counts[OpType(op.type).name] = counts.get(OpType(op.type).name, 0) + 1
    return counts


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_quantized_models_match_onnxruntime(name: str, form: str) -> None:
    path = models.quantized_onnx_path(name, **FORMS[form])
    shape = models.input_shape_of(name)
    data = compile_quantized(path, shape)
    counts = op_counts(data)
    # the convolutions and matrix products run in int8: no float CONV / FULLY_CONNECTED is left
    assert counts.get("CONV", 0) == counts.get("FULLY_CONNECTED", 0) == 0, counts
    assert counts.get("QCONV", 0) + counts.get("QFULLY_CONNECTED", 0) > 0, counts
    assert ekm.read(data).version == (1, 5)
    for seed in (1, 2):
        x = models.random_input(shape, seed=seed)
        ours = run_reference(data, None, {models.INPUT_NAME: x})[models.OUTPUT_NAME]
        assert_within_a_step(ours, path, x, f"{name} {form} reference")


# ---------------------------------------------------------------- hand-made QDQ graphs
def qdq_model(
    nodes: list[Any],
    inits: Mapping[str, np.ndarray],
    shape: tuple[int, ...],
    opset: int = 17,
) -> Any:
    graph = helper.make_graph(
        nodes,
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def conv_qdq(
    w_scale: np.ndarray,
    w_zp: np.ndarray | None = None,
    axis: int = 0,
    x_scale: float = 0.05,
    x_zp: np.ndarray | None = None,
) -> Any:
    """x -> Q -> DQ -> Conv(DQ(w)) -> Q -> DQ -> y, weights [4, 3, 3, 3]."""
    rng = np.random.default_rng(5)
    inits: dict[str, np.ndarray] = {
        "xs": np.array(x_scale, np.float32),
        "xz": np.array(0, np.int8) if x_zp is None else x_zp,
        "w": rng.integers(-100, 100, (4, 3, 3, 3)).astype(np.int8),
        "ws": w_scale.astype(np.float32),
        "ys": np.array(0.1, np.float32),
        "yz": np.array(3, np.int8),
    }
    if w_zp is not None:
        inits["wz"] = w_zp
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="qx"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xf"], name="dqx"),
        helper.make_node(
            "DequantizeLinear",
            ["w", "ws"] + (["wz"] if w_zp is not None else []),
            ["wf"],
            name="dqw",
            axis=axis,
        ),
        helper.make_node("Conv", ["xf", "wf"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["cq"], name="qc"),
        helper.make_node("DequantizeLinear", ["cq", "ys", "yz"], ["y"], name="dqc"),
    ]
    return qdq_model(nodes, inits, (1, 3, 6, 6))


def check_against_ort(
    model: Any, shape: tuple[int, ...], tolerance_steps: float = 1.0, step: float = 0.1
) -> bytes:
    data = compile_model(model).data
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    ours = run_reference(data, None, {"x": x})["y"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"x": x})[0]
    assert np.max(np.abs(ours - theirs)) <= step * tolerance_steps * 1.001
    return data


def test_per_tensor_and_per_channel_conv_fold_into_qconv() -> None:
    for scales in (np.array(0.02), np.array([0.01, 0.02, 0.03, 0.04])):
        data = check_against_ort(conv_qdq(scales), (1, 3, 6, 6))
        assert op_counts(data) == {"QUANTIZE": 1, "TRANSPOSE": 2, "QCONV": 1, "DEQUANTIZE": 1}


def test_asymmetric_weights_keep_the_conv_in_float() -> None:
    """uint8/int8 weights with a non-zero zero point have no int8 kernel: the conv runs in float on the
    dequantized weights, between DEQUANTIZE and QUANTIZE, and still matches onnxruntime."""
    model = conv_qdq(np.array(0.02), w_zp=np.array(5, np.int8))
    data = check_against_ort(model, (1, 3, 6, 6))
    counts = op_counts(data)
    assert counts.get("CONV") == 1 and "QCONV" not in counts, counts


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda: conv_qdq(np.array(0.0)), r"DequantizeLinear \(dqw\): scale 0.0 is not valid"),
        (lambda: conv_qdq(np.array(-1.0)), r"scale -1.0 is not valid: every scale must be finite and > 0"),
        (lambda: conv_qdq(np.array(np.nan)), r"scale nan is not valid"),
        (lambda: conv_qdq(np.array(0.02), x_scale=0.0), r"QuantizeLinear \(qx\): scale 0.0 is not valid"),
        (
            lambda: conv_qdq(np.array([0.01, 0.02, 0.03])),
            r"dqw.*per-channel scale of 3 values along axis 0, but the input \[4, 3, 3, 3\] has 4 there "
            r"\(mismatched per-channel axis\)",
        ),
        (
            lambda: conv_qdq(np.array([0.01, 0.02, 0.03, 0.04]), axis=1),
            r"per-channel scale of 4 values along axis 1, but the input \[4, 3, 3, 3\] has 3 there",
        ),
        (
            lambda: conv_qdq(np.array([0.01, 0.02, 0.03, 0.04]), axis=7),
            r"axis 7 is outside the rank-4 input",
        ),
        (
            lambda: conv_qdq(np.array(0.02), x_zp=np.array(300, np.int32)),
            r"QuantizeLinear \(qx\): zero point 300 is out of range: int32 data \(a bias\) must have "
            r"zero point 0",
        ),
        (
            lambda: conv_qdq(np.array(0.02), x_zp=np.array(7, np.int16)),
            r"zero point of type int16: EdgeKit runs 8-bit quantization \(int8, uint8\) only",
        ),
    ],
)
def test_bad_quantization_parameters_are_compile_errors(model: Any, message: str) -> None:
    with pytest.raises(CompileError, match=message):
        compile_model(model())


def test_ops_without_int8_kernels_run_in_float_between_dequantize_and_quantize() -> None:
    """Softmax has no int8 kernel: DQ -> Softmax -> Q stays float, with DEQUANTIZE and QUANTIZE ops."""
    inits: dict[str, np.ndarray] = {
        "s": np.array(0.05, np.float32),
        "z": np.array(-3, np.int8),
        "os": np.array(1 / 256, np.float32),
        "oz": np.array(-128, np.int8),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"]),
        helper.make_node("Softmax", ["xf"], ["p"], axis=-1),
        helper.make_node("QuantizeLinear", ["p", "os", "oz"], ["pq"]),
        helper.make_node("DequantizeLinear", ["pq", "os", "oz"], ["y"]),
    ]
    data = check_against_ort(qdq_model(nodes, inits, (2, 10)), (2, 10), step=1 / 256)
    assert op_counts(data) == {"QUANTIZE": 2, "DEQUANTIZE": 2, "SOFTMAX": 1}


def test_quantize_and_dequantize_without_zero_point_are_uint8_with_zero_point_0() -> None:
    """A QuantizeLinear without a zero point makes uint8 (zero point 0), and the DequantizeLinear
    without one reads it so: the canonical int8 tensor must not be read with zero point 0."""
    inits = {"s": np.array(0.02, np.float32), "os": np.array(1 / 255, np.float32)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s"], ["xf"]),
        helper.make_node("Sigmoid", ["xf"], ["p"]),
        helper.make_node("QuantizeLinear", ["p", "os"], ["pq"]),
        helper.make_node("DequantizeLinear", ["pq", "os"], ["y"]),
    ]
    data = check_against_ort(qdq_model(nodes, inits, (2, 10)), (2, 10), step=1 / 255)
    assert op_counts(data) == {"QUANTIZE": 1, "QLUT": 1, "DEQUANTIZE": 1}


def test_a_uint8_network_output_after_a_spatial_op_stays_in_the_onnx_layout() -> None:
    """MaxPool -> QuantizeLinear (uint8) as the network output: the QUANTIZE runs in the ONNX layout,
    as the runtime's TRANSPOSE takes no uint8 tensor."""
    inits: dict[str, np.ndarray] = {"s": np.array(0.05, np.float32), "z": np.array(128, np.uint8)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"]),
        helper.make_node("MaxPool", ["xf"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("QuantizeLinear", ["p", "s", "z"], ["y"]),
    ]
    model = qdq_model(nodes, inits, (1, 2, 4, 4))
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.UINT8
    data = compile_model(model).data
    x = np.random.default_rng(3).standard_normal((1, 2, 4, 4)).astype(np.float32)
    ours = run_reference(data, None, {"x": x})["y"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"x": x})[0]
    assert ours.dtype == np.uint8 and np.array_equal(ours, theirs)
    model_file = ekm.read(data)
    stage = model_file.networks[0].stages[0]
    for op in stage.ops:
        source = op.inputs[0]
        if OpType(op.type) == OpType.TRANSPOSE and source is not None:
            assert stage.tensors[source].dtype != ekm.UINT8


@pytest.mark.parametrize("attrs", [{"opset": 12}, {"opset": 12, "axis": 1}, {"opset": 13, "axis": 1}])
def test_qlinear_softmax_keeps_the_softmax_of_its_opset(attrs: dict[str, int]) -> None:
    """com.microsoft QLinearSoftmax with opset < 13 is the Softmax over the input flattened at axis."""
    xq = np.random.default_rng(11).integers(0, 255, (1, 3, 2, 4)).astype(np.uint8)
    inits = {"xs": np.float32(0.05), "xz": np.uint8(128), "ys": np.float32(1 / 256), "yz": np.uint8(0)}
    nodes = [
        helper.make_node("QLinearSoftmax", ["xq", "xs", "xz", "ys", "yz"], ["yq"], domain="com.microsoft"),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    nodes[0].attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    graph = helper.make_graph(
        nodes,
        "q",
        [helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 3, 2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    ours = run_reference(compile_model(model).data, None, {"xq": xq})["y"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.max(np.abs(ours - session.run(None, {"xq": xq})[0])) <= 1 / 256 * 1.001


# ---------------------------------------------------------------- every int8 op, from torch
class Mixed:
    """A torch network with the ops the test models lack: average and max pooling, a depthwise conv,
    nearest upsampling, Concat of inputs of different scales, HardSwish, LeakyReLU, a residual Add, an
    SE gate (Mul), Softmax (float between DEQUANTIZE and QUANTIZE)."""

    @staticmethod
    def build() -> Any:
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.c1 = nn.Conv2d(3, 8, 3, padding=1)
                self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
                self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
                self.mp = nn.MaxPool2d(2)
                self.c2 = nn.Conv2d(16, 8, 1)
                self.fc = nn.Linear(8, 5)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                a = nn.functional.hardswish(self.c1(x))
                b = nn.functional.leaky_relu(self.dw(a), 0.2) + a
                small = self.pool(b)
                up = nn.functional.interpolate(self.mp(self.mp(b)) * 3.0, scale_factor=2, mode="nearest")
                c = self.c2(torch.cat([small, up], dim=1))
                gate = torch.sigmoid(c.mean(dim=(2, 3), keepdim=True))
                y = (c * gate).mean(dim=(2, 3))
                return torch.softmax(self.fc(y), dim=-1)

        return Net()


@pytest.fixture(scope="module")
def mixed_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgekit.bench_models import quantize_onnx

    folder = tmp_path_factory.mktemp("mixed")
    src = folder / "mixed.onnx"
    src.write_bytes(
        models.export_module(Mixed.build(), (1, 3, 16, 16), [models.INPUT_NAME], [models.OUTPUT_NAME])
    )
    return quantize_onnx(src, folder / "mixed-qdq.onnx", (1, 3, 16, 16))


def test_every_quantized_op_is_exercised(mixed_path: Path) -> None:
    """With the five models, the mixed network reaches every int8 op; it matches onnxruntime too."""
    seen: set[str] = set()
    for name in models.MODEL_NAMES:
        seen.update(
            op_counts(compile_quantized(models.quantized_onnx_path(name), models.input_shape_of(name)))
        )
    data = compile_quantized(mixed_path, (1, 3, 16, 16))
    seen.update(op_counts(data))
    assert QUANTIZED_OPS <= seen, QUANTIZED_OPS - seen
    assert {"MAX_POOL", "RESIZE", "CONCAT"} <= set(op_counts(data))
    for seed in (1, 2, 3):
        x = models.random_input((1, 3, 16, 16), seed=seed)
        ours = run_reference(data, None, {models.INPUT_NAME: x})[models.OUTPUT_NAME]
        assert_within_a_step(ours, mixed_path, x, "mixed reference")
