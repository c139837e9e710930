"""The model compiler (sdk/edgekit/compiler): ONNX -> .ekm, checked without the C runtime.

Each test compiles a small ONNX model (built with onnx.helper or exported from torch), runs the .ekm
through the numpy reference interpreter (edgekit.compiler.reference) and compares the result with
onnxruntime on the same inputs.
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgekit

# When the installed edgekit predates the compiler, take it from this source tree (it is pure Python);
# the installed package stays first on the path (reinstall it to test a changed compiler from there).
try:
    import edgekit.compiler
except ImportError:
    edgekit.__path__.append(str(Path(__file__).resolve().parents[1] / "sdk" / "edgekit"))

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgekit.compiler import (  # noqa: E402
    CompileError,
    CompileReport,
    NetworkSpec,
    UnsupportedOpsError,
    cli,
    compile_model,
    compile_networks,
    ekm,
    parse_shape,
)
from edgekit.compiler.graph import OpType  # noqa: E402
from edgekit.compiler.onnx_import import MAX_OPSET  # noqa: E402
from edgekit.compiler.reference import run_reference  # noqa: E402

RNG = np.random.default_rng(1234)
ATOL = RTOL = 1e-4


def rand(*shape: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return RNG.uniform(low, high, shape).astype(np.float32)


def make_model(
    nodes: Sequence[Any],
    inputs: Mapping[str, Sequence[int | str]],
    outputs: Sequence[str],
    initializers: Mapping[str, np.ndarray] | None = None,
    opset: int = 17,
    name: str = "test",
) -> Any:
    graph = helper.make_graph(
        list(nodes),
        name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def run_ort(model: Any, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, dict(feeds))))


def check(
    model: Any,
    feeds: Mapping[str, np.ndarray],
    stages: Sequence[Mapping[str, Sequence[int]]] = (),
    atol: float = ATOL,
) -> CompileReport:
    """Compile, run through the reference interpreter, compare with onnxruntime."""
    report = compile_model(model, stages=stages)
    got = run_reference(report.data, None, feeds)
    want = run_ort(model, feeds)
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, rtol=RTOL, atol=atol, err_msg=name)
    return report


def op_types(report: CompileReport, network: int = 0, stage: int = 0) -> dict[str, int]:
    return report.networks[network].stages[stage].op_types


# ---------------------------------------------------------------- single-op lowerings (onnx.helper)
def node(op: str, inputs: Sequence[str], outputs: Sequence[str] = ("y",), **attrs: Any) -> Any:
    return helper.make_node(op, list(inputs), list(outputs), name=f"{op.lower()}_node", **attrs)


Case = tuple[Any, dict[str, np.ndarray]]


def conv_case(x: Sequence[int], w: Sequence[int], bias: bool = True, **attrs: Any) -> Case:
    inits = {"W": rand(*w)}
    inputs = ["x", "W"]
    if bias:
        inits["B"] = rand(w[0])
        inputs.append("B")
    return make_model([node("Conv", inputs, **attrs)], {"x": x}, ["y"], inits), {"x": rand(*x)}


def convt_case(x: Sequence[int], w: Sequence[int], **attrs: Any) -> Case:
    group = attrs.get("group", 1)
    inits = {"W": rand(*w), "B": rand(w[1] * group)}
    return make_model([node("ConvTranspose", ["x", "W", "B"], **attrs)], {"x": x}, ["y"], inits), {
        "x": rand(*x)
    }


def unary_case(op: str, shape: Sequence[int] = (2, 3, 4, 5), **attrs: Any) -> Case:
    return make_model([node(op, ["x"], **attrs)], {"x": shape}, ["y"]), {"x": rand(*shape, low=-4, high=4)}


def binary_case(op: str, a: Sequence[int], b: Sequence[int], const_b: bool = False) -> Case:
    bval = rand(*b, low=0.5, high=2.0)
    if const_b:
        return make_model([node(op, ["a", "b"])], {"a": a}, ["y"], {"b": bval}), {"a": rand(*a)}
    return make_model([node(op, ["a", "b"])], {"a": a, "b": b}, ["y"]), {"a": rand(*a), "b": bval}


def pool_case(op: str, x: Sequence[int] = (1, 3, 9, 10), **attrs: Any) -> Case:
    return make_model([node(op, ["x"], **attrs)], {"x": x}, ["y"]), {"x": rand(*x)}


def resize_case(
    mode: str,
    coord: str,
    scales: Sequence[float] | None = None,
    sizes: Sequence[int] | None = None,
    nearest: str = "round_prefer_floor",
    x: Sequence[int] = (1, 2, 5, 7),
) -> Case:
    inits: dict[str, np.ndarray] = {}
    inputs = ["x", ""]
    if scales is not None:
        inits["scales"] = np.array(scales, np.float32)
        inputs.append("scales")
    else:
        assert sizes is not None
        inits["sizes"] = np.array(sizes, np.int64)
        inputs += ["", "sizes"]
    attrs = {"mode": mode, "coordinate_transformation_mode": coord, "nearest_mode": nearest}
    return make_model([node("Resize", inputs, **attrs)], {"x": x}, ["y"], inits), {"x": rand(*x)}


def chain(
    nodes: Sequence[Any], shape: Sequence[int], inits: Mapping[str, np.ndarray] | None = None, opset: int = 17
) -> Case:
    return make_model(nodes, {"x": shape}, ["y"], inits, opset), {"x": rand(*shape)}


CASES: dict[str, Callable[[], Any]] = {
    "conv": lambda: conv_case((1, 3, 8, 9), (4, 3, 3, 3), pads=[1, 1, 1, 1]),
    "conv_strided_dilated": lambda: conv_case(
        (2, 3, 11, 10), (5, 3, 3, 2), strides=[2, 3], dilations=[2, 1], pads=[1, 0, 2, 1]
    ),
    "conv_groups_nobias": lambda: conv_case((1, 4, 7, 7), (6, 2, 3, 3), bias=False, group=2),
    "conv_depthwise": lambda: conv_case(
        (1, 4, 8, 8), (4, 1, 3, 3), group=4, pads=[1, 1, 1, 1], strides=[2, 2]
    ),
    "conv_same_upper": lambda: conv_case((1, 2, 7, 8), (3, 2, 4, 3), auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv_same_lower": lambda: conv_case((1, 2, 7, 8), (3, 2, 4, 3), auto_pad="SAME_LOWER", strides=[2, 1]),
    "conv_valid": lambda: conv_case((1, 2, 7, 8), (3, 2, 3, 3), auto_pad="VALID"),
    "conv_1d": lambda: conv_case((1, 3, 12), (4, 3, 3), pads=[1, 2], strides=[2]),
    "convt": lambda: convt_case((1, 4, 5, 6), (4, 3, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1]),
    "convt_output_padding": lambda: convt_case(
        (1, 4, 5, 6), (4, 3, 3, 3), strides=[2, 2], pads=[1, 0, 1, 1], output_padding=[1, 1]
    ),
    "convt_groups_dilations": lambda: convt_case((1, 4, 5, 5), (4, 2, 3, 2), group=2, dilations=[2, 1]),
    "convt_output_shape": lambda: convt_case((1, 2, 4, 4), (2, 3, 3, 3), strides=[2, 2], output_shape=[8, 8]),
    "convt_same_upper": lambda: convt_case((1, 2, 4, 5), (2, 3, 3, 3), strides=[2, 2], auto_pad="SAME_UPPER"),
    "gemm_const_b": lambda: make_model(
        [node("Gemm", ["a", "B", "C"], transB=1, alpha=0.5, beta=2.0)],
        {"a": (3, 4)},
        ["y"],
        {"B": rand(5, 4), "C": rand(5)},
    ),
    "gemm_transa_matrix_c": lambda: make_model(
        [node("Gemm", ["a", "B", "C"], transA=1)], {"a": (4, 3)}, ["y"], {"B": rand(4, 5), "C": rand(3, 5)}
    ),
    "gemm_dynamic_b": lambda: make_model(
        [node("Gemm", ["a", "b", "C"], transB=1, alpha=2.0, beta=0.5)],
        {"a": (3, 4), "b": (5, 4)},
        ["y"],
        {"C": rand(1, 5)},
    ),
    "matmul_const": lambda: make_model(
        [node("MatMul", ["a", "B"])], {"a": (2, 3, 4)}, ["y"], {"B": rand(4, 6)}
    ),
    "matmul_batched": lambda: make_model(
        [node("MatMul", ["a", "b"])], {"a": (2, 1, 3, 4), "b": (3, 4, 5)}, ["y"]
    ),
    "matmul_1d": lambda: make_model([node("MatMul", ["a", "b"])], {"a": (4,), "b": (2, 4, 3)}, ["y"]),
    "matmul_1d_b": lambda: make_model([node("MatMul", ["a", "b"])], {"a": (2, 3, 4), "b": (4,)}, ["y"]),
    "add_broadcast": lambda: binary_case("Add", (2, 3, 4, 5), (3, 1, 1)),
    "sub_dynamic": lambda: binary_case("Sub", (2, 1, 4, 5), (3, 1, 5)),
    "mul_const": lambda: binary_case("Mul", (2, 3, 4, 5), (5,), const_b=True),
    "div_const": lambda: binary_case("Div", (2, 3, 4, 5), (1, 3, 1, 1), const_b=True),
    "relu": lambda: unary_case("Relu"),
    "sigmoid": lambda: unary_case("Sigmoid"),
    "tanh": lambda: unary_case("Tanh"),
    "hardswish": lambda: unary_case("HardSwish"),
    "hardsigmoid": lambda: unary_case("HardSigmoid", alpha=0.3, beta=0.4),
    "leakyrelu": lambda: unary_case("LeakyRelu", alpha=0.2),
    "clip_inputs": lambda: chain(
        [node("Clip", ["x", "lo", "hi"])],
        (2, 3, 4),
        {"lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)},
    ),
    "clip_attrs_opset6": lambda: chain([node("Clip", ["x"], min=-0.2, max=0.3)], (2, 3), opset=7),
    "prelu": lambda: chain([node("PRelu", ["x", "slope"])], (1, 3, 4, 4), {"slope": rand(3, 1, 1)}),
    "maxpool": lambda: pool_case("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "maxpool_ceil_dilated": lambda: pool_case(
        "MaxPool", kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1, dilations=[2, 1]
    ),
    "maxpool_same": lambda: pool_case("MaxPool", kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    "avgpool_exclude_pad": lambda: pool_case(
        "AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
    ),
    "avgpool_include_pad": lambda: pool_case(
        "AveragePool", kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1], count_include_pad=1
    ),
    "avgpool_ceil": lambda: pool_case("AveragePool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "avgpool_ceil_include_pad": lambda: pool_case(
        "AveragePool",
        kernel_shape=[3, 3],
        strides=[2, 2],
        ceil_mode=1,
        pads=[1, 1, 1, 1],
        count_include_pad=1,
    ),
    "globalavgpool": lambda: pool_case("GlobalAveragePool"),
    "globalmaxpool": lambda: pool_case("GlobalMaxPool"),
    "flatten": lambda: chain([node("Flatten", ["x"], axis=2)], (2, 3, 4, 5)),
    "reshape_zero_minus1": lambda: chain(
        [node("Reshape", ["x", "s"])], (2, 3, 4), {"s": np.array([0, -1, 2])}
    ),
    "transpose": lambda: chain([node("Transpose", ["x"], perm=[0, 2, 3, 1])], (2, 3, 4, 5)),
    "concat_negative_axis": lambda: make_model(
        [node("Concat", ["a", "b", "c"], axis=-3)],
        {"a": (1, 2, 3, 4), "b": (1, 1, 3, 4)},
        ["y"],
        {"c": rand(1, 3, 3, 4)},
    ),
    "softmax_13": lambda: chain([node("Softmax", ["x"], axis=1)], (2, 3, 4)),
    "softmax_11_flatten": lambda: chain([node("Softmax", ["x"], axis=1)], (2, 3, 4), opset=11),
    "resize_nearest_scales": lambda: resize_case(
        "nearest", "asymmetric", scales=[1, 1, 2, 3], nearest="floor"
    ),
    "resize_nearest_half_pixel": lambda: resize_case("nearest", "half_pixel", scales=[1, 1, 1.5, 2.5]),
    "resize_nearest_ceil": lambda: resize_case(
        "nearest", "align_corners", sizes=[1, 2, 9, 4], nearest="ceil"
    ),
    "resize_nearest_prefer_ceil": lambda: resize_case(
        "nearest", "pytorch_half_pixel", sizes=[1, 2, 11, 3], nearest="round_prefer_ceil"
    ),
    "resize_linear_half_pixel": lambda: resize_case("linear", "half_pixel", scales=[1, 1, 2, 0.5]),
    "resize_linear_align_corners": lambda: resize_case("linear", "align_corners", sizes=[1, 2, 8, 13]),
    "resize_linear_asymmetric": lambda: resize_case("linear", "asymmetric", sizes=[1, 2, 7, 3]),
    "resize_linear_pytorch": lambda: resize_case("linear", "pytorch_half_pixel", sizes=[1, 2, 1, 9]),
    "upsample_opset9": lambda: make_model(
        [node("Upsample", ["x", "s"], mode="nearest")],
        {"x": (1, 2, 3, 4)},
        ["y"],
        {"s": np.array([1, 1, 2, 2], np.float32)},
        opset=9,
    ),
    "pad_constant": lambda: chain(
        [node("Pad", ["x", "p", "v"])],
        (1, 2, 3, 4),
        {"p": np.array([0, 1, 2, 0, 0, 0, 1, 3]), "v": np.array(1.5, np.float32)},
    ),
    "pad_reflect": lambda: chain(
        [node("Pad", ["x", "p"], mode="reflect")], (1, 2, 4, 5), {"p": np.array([0, 0, 2, 1, 0, 0, 3, 4])}
    ),
    "pad_edge_opset2": lambda: chain(
        [node("Pad", ["x"], mode="edge", pads=[0, 1, 1, 0, 2, 0])], (2, 3, 4), opset=7
    ),
    "batchnorm_alone": lambda: chain(
        [node("BatchNormalization", ["x", "g", "b", "m", "v"], epsilon=1e-3)],
        (2, 3, 4, 5),
        {"g": rand(3), "b": rand(3), "m": rand(3), "v": rand(3, low=0.5, high=2)},
    ),
    "squeeze_unsqueeze": lambda: chain(
        [node("Squeeze", ["x", "a"], ["t"]), node("Unsqueeze", ["t", "b"])],
        (2, 1, 3, 1),
        {"a": np.array([1, -1]), "b": np.array([0, 3])},
    ),
    "squeeze_opset11_attr": lambda: chain([node("Squeeze", ["x"], axes=[1])], (2, 1, 3), opset=11),
    "slice_steps_clamp": lambda: chain(
        [node("Slice", ["x", "s", "e", "a", "st"])],
        (3, 10, 8),
        {
            "s": np.array([-1, 1, 100]),
            "e": np.array([-100, 9, -100]),
            "a": np.array([0, 1, 2]),
            "st": np.array([-1, 3, -2]),
        },
    ),
    "slice_opset9": lambda: chain([node("Slice", ["x"], starts=[1], ends=[1000], axes=[1])], (2, 5), opset=9),
    "reducemean_keepdims": lambda: chain([node("ReduceMean", ["x"], axes=[1, -1])], (2, 3, 4, 5)),
    "reducemean_18_input": lambda: chain(
        [node("ReduceMean", ["x", "a"], keepdims=0)], (2, 3, 4), {"a": np.array([1])}, opset=18
    ),
    "reducemean_all": lambda: chain([node("ReduceMean", ["x"], keepdims=0)], (2, 3)),
    "shape_start_end_reshape": lambda: chain(
        [
            node("Shape", ["x"], ["s"], start=-2),
            node("Concat", ["m1", "s"], ["t"], axis=0),
            node("Reshape", ["x", "t"]),
        ],
        (2, 3, 4, 5),
        {"m1": np.array([-1])},
    ),
    "clip_max_only": lambda: chain(
        [node("Clip", ["x", "", "hi"])], (2, 3), {"hi": np.array(0.1, np.float32)}
    ),
    "identity_dropout": lambda: chain(
        [node("Identity", ["x"], ["t"]), node("Dropout", ["t"], ["u"]), node("Relu", ["u"])], (2, 3)
    ),
}


def build(case: str) -> Case:
    """The case's model and random inputs (from the model's input shapes when the case gives none)."""
    built = CASES[case]()
    if isinstance(built, tuple):
        return built
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in built.graph.input}
    return built, {name: rand(*shape) for name, shape in shapes.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lowering_matches_onnxruntime(case: str) -> None:
    model, feeds = build(case)
    check(model, feeds)


def test_every_op_code_is_exercised() -> None:
    """The cases above reach every EdgeKit op at least once (BatchNorm folding aside)."""
    seen: set[str] = set()
    for case in CASES:
        model, _feeds = build(case)
        seen.update(op_types(compile_model(model)))
    # PLUGIN: tests/test_plugins.py; TOP_K, NON_MAX_SUPPRESSION: tests/test_dynamic_outputs.py; the
    # quantized ops: tests/test_quantized.py
    quantized = {t.name for t in OpType if OpType.QUANTIZE <= t <= OpType.QLUT}
    missing = {t.name for t in OpType} - seen - {"PLUGIN", "TOP_K", "NON_MAX_SUPPRESSION"} - quantized
    assert not missing, missing


# ---------------------------------------------------------------- passes, layout, planner
def test_batchnorm_folds_into_conv_and_relu_fuses() -> None:
    inits = {
        "W": rand(4, 3, 3, 3),
        "B": rand(4),
        "g": rand(4),
        "b": rand(4),
        "m": rand(4),
        "v": rand(4, low=0.5, high=2.0),
    }
    nodes = [
        node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn"),
        helper.make_node("Clip", ["n", "lo", "hi"], ["y"], name="relu6"),
    ]
    inits["lo"], inits["hi"] = np.array(0, np.float32), np.array(6, np.float32)
    report = check(
        make_model(nodes, {"x": (1, 3, 6, 6)}, ["y"], inits), {"x": rand(1, 3, 6, 6, low=-3, high=3)}
    )
    types = op_types(report)
    assert types.get("CONV") == 1 and "MUL" not in types and "ADD" not in types and "CLIP" not in types, types
    assert report.networks[0].stages[0].fused_ops == 3  # the Mul and the Add of the BatchNorm, the Clip
    op = ekm.read(report.data).networks[0].stages[0].ops
    conv = next(o for o in op if o.type == OpType.CONV)
    assert conv.attrs["act_min"] == 0.0 and conv.attrs["act_max"] == 6.0


def test_no_fusion_when_the_conv_output_has_other_consumers() -> None:
    nodes = [
        node("Conv", ["x", "W"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Add", ["c", "r"], ["y"], name="add"),
    ]
    report = check(
        make_model(nodes, {"x": (1, 2, 5, 5)}, ["y"], {"W": rand(3, 2, 3, 3)}), {"x": rand(1, 2, 5, 5)}
    )
    assert op_types(report).get("RELU") == 1


def test_layout_keeps_chains_in_nhwc_and_converts_once() -> None:
    """conv -> bias add (constant [C,1,1]) -> sigmoid -> concat with a second conv -> conv: only the
    network input and the output are transposed."""
    inits = {"W1": rand(4, 3, 3, 3), "W2": rand(2, 3, 1, 1), "W3": rand(5, 6, 1, 1), "k": rand(4, 1, 1)}
    nodes = [
        node("Conv", ["x", "W1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a", "k"], ["b"], name="add"),
        helper.make_node("Sigmoid", ["b"], ["c"], name="sig"),
        helper.make_node("Conv", ["x", "W2"], ["d"], name="conv2"),
        helper.make_node("Concat", ["c", "d"], ["e"], axis=1, name="cat"),
        helper.make_node("Conv", ["e", "W3"], ["f"], name="conv3"),
        helper.make_node("Pad", ["f", "p"], ["g"], name="pad"),
        helper.make_node("ReduceMean", ["g"], ["y"], axes=[2, 3], keepdims=0, name="mean"),
    ]
    inits["p"] = np.array([0, 0, 1, 2, 0, 0, 2, 1])
    report = check(make_model(nodes, {"x": (1, 3, 8, 8)}, ["y"], inits), {"x": rand(1, 3, 8, 8)})
    st = report.networks[0].stages[0]
    # the input goes to NHWC once (shared by both convs); the [1,5] output needs no transpose
    assert st.inserted_transposes == 1, st.op_types
    assert st.op_types["TRANSPOSE"] == 1


def test_global_pool_flatten_needs_no_transpose() -> None:
    nodes = [
        node("Conv", ["x", "W"], ["a"]),
        helper.make_node("GlobalAveragePool", ["a"], ["b"], name="gap"),
        helper.make_node("Flatten", ["b"], ["c"], name="flat"),
        helper.make_node("Gemm", ["c", "F", "bias"], ["y"], transB=1, name="fc"),
    ]
    inits = {"W": rand(8, 3, 3, 3), "F": rand(4, 8), "bias": rand(4)}
    report = check(make_model(nodes, {"x": (2, 3, 6, 6)}, ["y"], inits), {"x": rand(2, 3, 6, 6)})
    types = op_types(report)
    assert types["TRANSPOSE"] == 1 and types["RESHAPE"] == 1, types  # input to NHWC; [N,1,1,C] -> [N,C]


def test_outputs_that_are_inputs_constants_or_duplicates_get_copies() -> None:
    nodes = [
        helper.make_node("Identity", ["x"], ["same"], name="id"),
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["r2"], name="id2"),
        helper.make_node("Identity", ["k"], ["konst"], name="id3"),
    ]
    model = make_model(nodes, {"x": (2, 3)}, ["same", "r", "r2", "konst"], {"k": rand(3)})
    report = check(model, {"x": rand(2, 3)})
    stage = ekm.read(report.data).networks[0].stages[0]
    outs = [stage.tensors[i] for i in stage.output_bindings]
    assert len({id(t) for t in outs}) == 4 and all(t.storage == ekm.OUTPUT for t in outs)
    writers = [i for op in stage.ops for i in op.outputs]
    assert all(writers.count(i) == 1 for i in stage.output_bindings)


def test_planner_shares_memory_and_respects_liveness() -> None:
    nodes = [node("Relu", ["x"], ["t0"])]
    for i in range(1, 8):
        nodes.append(helper.make_node("Sigmoid", [f"t{i - 1}"], [f"t{i}"], name=f"s{i}"))
    nodes.append(helper.make_node("Add", ["t7", "t3"], ["y"], name="add"))  # t3 lives long
    report = check(make_model(nodes, {"x": (4, 64)}, ["y"]), {"x": rand(4, 64)})
    st = report.networks[0].stages[0]
    assert st.sum_intermediate_bytes == 8 * 4 * 64 * 4
    assert 0 < st.arena_bytes < st.sum_intermediate_bytes
    stage = ekm.read(report.data).networks[0].stages[0]
    # no two tensors that are live at the same time overlap
    live: dict[int, tuple[int, int]] = {}
    for index, op in enumerate(stage.ops):
        for out in op.outputs:
            live[out] = (index, index)
        for operand in op.inputs:
            if operand is not None and operand in live:
                live[operand] = (live[operand][0], index)
    arena = {i: t for i, t in enumerate(stage.tensors) if t.storage == ekm.ARENA}
    for a, ta in arena.items():
        assert ta.offset % 64 == 0 and ta.offset + ta.nbytes <= stage.arena_size
        for b, tb in arena.items():
            if a < b and live[a][0] <= live[b][1] and live[b][0] <= live[a][1]:
                assert ta.offset + ta.nbytes <= tb.offset or tb.offset + tb.nbytes <= ta.offset


# ---------------------------------------------------------------- torch models
import torch  # noqa: E402

from models import export_module  # noqa: E402


class SmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8), nn.Hardswish())
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 1), nn.Hardsigmoid()
        )
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2)
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        self.head = nn.Linear(14, 5)

    def forward(self, x: Any) -> Any:
        y = self.stem(x)
        y = self.dw(y) + y
        y = y * self.se(y)
        z = torch.nn.functional.interpolate(
            self.pool(y), scale_factor=2.0, mode="bilinear", align_corners=False
        )
        y = torch.cat([self.up(y)[:, :, ::2, ::2], z], dim=1)
        y = torch.flatten(y.mean(dim=(2, 3)), 1)
        return torch.softmax(self.head(y), dim=-1), torch.sigmoid(y)


def export(module: Any, shape: Sequence[int], dynamic_batch: bool = False, fold: bool = False) -> bytes:
    torch.manual_seed(0)
    axes = {"x": {0: "batch"}, "p": {0: "batch"}, "f": {0: "batch"}} if dynamic_batch else None
    return export_module(module, shape, ["x"], ["p", "f"], fold=fold, dynamic_axes=axes)


@pytest.fixture(scope="module")
def small_net_onnx() -> bytes:
    torch.manual_seed(0)
    return export(SmallNet(), (1, 3, 16, 16), dynamic_batch=True)


def test_torch_model_with_batchnorm_two_stages(small_net_onnx: bytes) -> None:
    proto = onnx.load_from_string(small_net_onnx)
    assert any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    report = compile_model(proto, stages=[{"x": (1, 3, 16, 16)}, {"x": (3, 3, 16, 16)}], name="small")
    model = ekm.read(report.data)
    assert [n.name for n in model.networks] == ["small"] and len(model.networks[0].stages) == 2
    assert model.networks[0].inputs[0].max_bytes == 3 * 3 * 16 * 16 * 4
    for batch in (1, 3):
        x = rand(batch, 3, 16, 16)
        got = run_reference(model, "small", {"x": x})
        want = run_ort(small_net_onnx, {"x": x})
        for name in ("p", "f"):
            np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL)
    st = report.networks[0].stages[0]
    assert "BATCH_NORM" not in st.op_types and st.fused_ops >= 4, st
    assert st.arena_bytes < st.sum_intermediate_bytes


def test_dynamic_input_needs_a_shape(small_net_onnx: bytes) -> None:
    with pytest.raises(CompileError, match=r"input 'x' has a dynamic shape \[\?,3,16,16\].*--input-shape"):
        compile_model(onnx.load_from_string(small_net_onnx))
    with pytest.raises(CompileError, match="static dimensions"):
        compile_model(onnx.load_from_string(small_net_onnx), stages=[{"x": (1, 3, 16, 17)}])
    with pytest.raises(CompileError, match="no input"):
        compile_model(onnx.load_from_string(small_net_onnx), stages=[{"y": (1, 3, 16, 16)}])


def test_two_networks_in_one_file(small_net_onnx: bytes, tmp_path: Path) -> None:
    mlp, feeds = build("gemm_const_b")
    out = tmp_path / "two.ekm"
    report = compile_networks(
        [
            NetworkSpec(onnx.load_from_string(small_net_onnx), "cnn", [{"x": (2, 3, 16, 16)}]),
            NetworkSpec(mlp),
        ],
        out,
    )
    assert out.read_bytes() == report.data
    model = ekm.read(report.data)
    assert [n.name for n in model.networks] == ["cnn", "test"]
    np.testing.assert_allclose(
        run_reference(model, "test", feeds)["y"], run_ort(mlp, feeds)["y"], rtol=RTOL, atol=ATOL
    )
    x = rand(2, 3, 16, 16)
    np.testing.assert_allclose(
        run_reference(model, "cnn", {"x": x})["p"],
        run_ort(small_net_onnx, {"x": x})["p"],
        rtol=RTOL,
        atol=ATOL,
    )
    with pytest.raises(CompileError, match="unique"):
        compile_networks([NetworkSpec(mlp), NetworkSpec(mlp)])


def test_torch_dynamo_export() -> None:
    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: Any) -> Any:
            y = torch.nn.functional.interpolate(torch.relu(self.conv(x)), scale_factor=2.0, mode="nearest")
            return torch.sigmoid(y).permute(0, 2, 3, 1).reshape(x.shape[0], -1, 4)

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Head().eval(), (torch.randn(1, 3, 6, 6),), dynamo=True, verbose=False)
    assert program is not None
    check(program.model_proto, {program.model_proto.graph.input[0].name: rand(1, 3, 6, 6)})


def test_folded_shape_arithmetic_of_torch_exports() -> None:
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape chains (torch's view/flatten) fold away."""

    class Viewer(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            n, c, h, w = x.shape
            y = x.view(n, c, h * w).transpose(1, 2)
            return y.reshape(n, -1, 2)[:, 1:, :], x.flatten(2).unsqueeze(1).mean(dim=-1)

    data = export(Viewer(), (2, 3, 4, 5))
    report = check(onnx.load_from_string(data), {"x": rand(2, 3, 4, 5)})
    assert report.networks[0].stages[0].folded_constants > 5


# ---------------------------------------------------------------- errors
def test_a_newer_opset_compiles_when_its_ops_did_not_change() -> None:
    newest = onnx.defs.onnx_opset_version()
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    nodes = [node("MatMul", ["x", "w"], ["h"]), node("Relu", ["h"])]
    model = make_model(nodes, {"x": (2, 4)}, ["y"], {"w": w}, opset=newest)
    x = rand(2, 4)
    got = run_reference(compile_model(model).data, None, {"x": x})
    np.testing.assert_allclose(got["y"], np.maximum(x @ w, 0), rtol=RTOL, atol=ATOL)


def test_a_newer_opset_names_the_ops_that_changed() -> None:
    newest = onnx.defs.onnx_opset_version()
    if onnx.defs.get_schema("Cast", newest, "").since_version <= MAX_OPSET:
        pytest.skip(f"Cast has not changed between opsets {MAX_OPSET} and {newest}")
    nodes = [node("Cast", ["x"], ["c"], to=TensorProto.FLOAT), node("Relu", ["c"])]
    with pytest.raises(CompileError, match=rf"opset {newest} is newer .* Cast \(cast_node\)"):
        compile_model(make_model(nodes, {"x": (2, 3)}, ["y"], opset=newest))


def test_unsupported_ops_are_all_listed() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("Erf", ["a"], ["b"], name="my_erf"),
        helper.make_node("Relu", ["b"], ["c"], name="after"),
        helper.make_node("Elu", ["x"], ["d"], name="my_elu"),
        helper.make_node("Resize", ["x", "", "s"], ["e"], name="cubic", mode="cubic"),
        helper.make_node("Add", ["c", "d"], ["f"], name="join"),
        helper.make_node("Add", ["f", "e"], ["y"], name="join2"),
    ]
    model = make_model(nodes, {"x": (1, 1, 2, 2)}, ["y"], {"s": np.array([1, 1, 2, 2], np.float32)})
    with pytest.raises(UnsupportedOpsError) as info:
        compile_model(model)
    assert info.value.ops == ["Erf (my_erf)", "Elu (my_elu)", "Resize (cubic): mode cubic"]
    text = str(info.value)
    assert "Erf (my_erf)" in text and "implement them in a plugin library (docs/plugins.md)" in text


def test_runtime_int_tensors_are_rejected() -> None:
    nodes = [helper.make_node("Cast", ["x"], ["y"], name="to_int", to=TensorProto.INT64)]
    with pytest.raises(CompileError, match=r"Cast \(to_int\).*'y'.*int64.*float32"):
        compile_model(make_model(nodes, {"x": (2,)}, ["y"]))


def test_bad_inputs_raise_compile_error(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="no such ONNX file"):
        compile_model(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x01\x02 not a model")
    with pytest.raises(CompileError, match=r"junk\.onnx"):
        compile_model(junk)
    old, _ = chain([node("Relu", ["x"])], (2,), opset=17)
    old.opset_import[0].version = 3
    with pytest.raises(CompileError, match="opset 3"):
        compile_model(old)


def test_model_bytes_compile_like_the_proto() -> None:
    model, _ = build("conv")
    assert compile_model(model.SerializeToString()).data == compile_model(model).data
    with pytest.raises(CompileError, match="not a readable ONNX model"):
        compile_model(b"\x01\x02 not a model")


def _with_bytes(model: Any, old: bytes, new: bytes) -> bytes:
    """The serialized model with one byte string replaced (to write what protobuf's setters refuse)."""
    data = model.SerializeToString()
    assert data.count(old) == 1 and len(old) == len(new)
    return bytes(data.replace(old, new))


def _malformed(case: str) -> Any:
    """The malformed models the fuzzer found (tests/fuzz/regressions/onnx_import), made by hand."""
    if case == "name not utf-8":
        return _with_bytes(chain([node("Relu", ["x"])], (2, 3))[0], b"relu_node", b"relu\x9anode")
    if case == "string attribute not utf-8":
        model, _ = resize_case("nearest", "asymmetric", scales=[1, 1, 2, 2])
        return _with_bytes(model, b"asymmetric", b"asymm\xff\xffric")
    if case == "attribute of the wrong type":
        return chain([node("HardSigmoid", ["x"], alpha=[1, 2])], (2, 3))[0]
    if case == "attribute of undefined type":
        model, _ = chain([node("HardSigmoid", ["x"], alpha=0.5)], (2, 3))
        model.graph.node[0].attribute[0].type = onnx.AttributeProto.UNDEFINED
        return model
    if case == "graph input without a name":
        return make_model([node("Relu", [""])], {"": (2, 3)}, ["y"])
    if case == "a name written twice":
        nodes = [node("Relu", ["x"], ["t"]), node("Sigmoid", ["x"], ["t"]), node("Relu", ["t"])]
        return chain(nodes, (2,))[0]
    if case == "tensor past the limit":
        pads = np.array([0, 0, 1 << 40, 0, 0, 0])
        return chain([node("Pad", ["x", "p"])], (1, 2, 3), {"p": pads})[0]
    if case == "batchnorm of the wrong size":
        stats = {k: rand(3, low=0.5, high=1) for k in ("g", "b", "m", "v")}
        return chain([node("BatchNormalization", ["x", "g", "b", "m", "v"])], (2, 4, 5), stats)[0]
    if case == "conv1d with weights of rank 1":
        return make_model([node("Conv", ["x", "W"])], {"x": (1, 3, 8)}, ["y"], {"W": rand(3)})
    if case == "pad value empty":
        inits: dict[str, np.ndarray] = {"p": np.zeros(6, np.int64), "v": np.zeros(0, np.float32)}
        return chain([node("Pad", ["x", "p", "v"])], (1, 2, 3), inits)[0]
    if case == "resize scale nan":
        return resize_case("linear", "half_pixel", scales=[1, 1, math.nan, 2])[0]
    if case == "too few inputs":
        return chain([node("Add", ["x"])], (2, 3))[0]
    if case == "constant of undefined type":
        value = numpy_helper.from_array(rand(2, 3), "c")
        value.data_type = TensorProto.UNDEFINED
        return chain([node("Constant", [], ["c"], value=value), node("Add", ["x", "c"])], (2, 3))[0]
    assert case == "external data"
    model, _ = chain([node("Add", ["x", "c"])], (2, 3), {"c": rand(2, 3)})
    onnx.external_data_helper.set_external_data(model.graph.initializer[0], "weights.bin")
    model.graph.initializer[0].data_location = TensorProto.EXTERNAL
    model.graph.initializer[0].ClearField("raw_data")
    return model


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("name not utf-8", r"model\.graph\.node\[0\]\.name is not UTF-8 text \(b'relu\\x9anode'\)"),
        ("string attribute not utf-8", r"Resize \(resize_node\): attribute 'coordinate_transformation_mode' "
         r"is not UTF-8 text"),
        ("attribute of the wrong type", r"HardSigmoid \(hardsigmoid_node\): attribute 'alpha' is INTS, ONNX "
         r"defines it as FLOAT"),
        ("attribute of undefined type", r"attribute 'alpha' is UNDEFINED, ONNX defines it as FLOAT"),
        ("graph input without a name", r"graph input 0 has no name"),
        ("a name written twice", r"Sigmoid \(sigmoid_node\) writes 't', which already has a value"),
        ("tensor past the limit", r"tensor 'y' has shape \[1, 2, 1099511627779\]: 8796093022232 bytes, "
         r"more than EdgeKit's limit of 2\^40 bytes per tensor"),
        ("batchnorm of the wrong size", r"BatchNormalization \(batchnormalization_node\): scale has 3 values "
         r"for the 4 channels of X \[2, 4, 5\]"),
        ("conv1d with weights of rank 1", r"Conv \(conv_node\): weights of rank 1 for an input of rank 3"),
        ("pad value empty", r"Pad \(pad_node\): constant_value has 0 values \(expected one\)"),
        ("resize scale nan", r"Resize \(resize_node\): scales \[1.0, 1.0, nan, 2.0\]: H and W scales must "
         r"be finite and > 0"),
        ("too few inputs", r"Add \(add_node\): 1 inputs, ONNX's Add \(opset 17\) has 2"),
        ("constant of undefined type", r"Constant \(constant_node\): its value cannot be read \(The element "
         r"type in the input tensor is UNDEFINED"),
        ("external data", r"initializer 'c' keeps its data in an external file \('weights.bin'\): compile "
         r"the .onnx file by its path"),
    ],
)  # fmt: skip
def test_malformed_models_are_compile_errors(case: str, message: str) -> None:
    with pytest.raises(CompileError, match=message):
        compile_model(_malformed(case))


@pytest.mark.parametrize(
    ("text", "shape"), [("1x3x224x224", (1, 3, 224, 224)), ("1,3,8", (1, 3, 8)), (" 7 ", (7,))]
)
def test_parse_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["", "1x", "x3", "1x-3", "1x0x3", "1.5x2", "ax2", "1;2"])
def test_parse_shape_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad shape"):
        parse_shape(text)


# ---------------------------------------------------------------- file format
def test_writer_reader_round_trip() -> None:
    model, _feeds = build("conv")
    data = compile_model(model, stages=[{}, {}]).data
    parsed = ekm.read(data)
    assert ekm.write(parsed) == data
    assert data[:8] == b"EDGEKIT\0" and int.from_bytes(data[16:24], "little") == len(data)
    # the two stages share one copy of each constant
    stages = parsed.networks[0].stages
    consts = [[t.offset for t in s.tensors if t.storage == ekm.CONSTANT] for s in stages]
    assert consts[0] == consts[1]
    table = int.from_bytes(data[24:32], "little")
    count = int.from_bytes(data[32:36], "little")
    for i in range(count):
        entry = data[table + 24 * i : table + 24 * (i + 1)]
        kind, _size, offset = int.from_bytes(entry[:4], "little"), 0, int.from_bytes(entry[8:16], "little")
        assert offset % (64 if kind == ekm.CONSTANTS else 8) == 0
    strings = next(
        int.from_bytes(data[table + 24 * i + 8 : table + 24 * i + 16], "little")
        for i in range(count)
        if int.from_bytes(data[table + 24 * i : table + 24 * i + 4], "little") == ekm.STRINGS
    )
    assert data[strings] == 0
    with pytest.raises(ekm.ModelFormatError):
        ekm.read(data[:-1])
    with pytest.raises(ekm.ModelFormatError):
        ekm.read(b"NOTEKM\0\0" + data[8:])


# ---------------------------------------------------------------- CLI
def _cli(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.add_compile_arguments(parser)
    return cli.run_compile(parser.parse_args(list(argv)))


def test_cli_compiles_with_stages(
    small_net_onnx: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "net.onnx"
    src.write_bytes(small_net_onnx)
    mlp, _ = build("gemm_const_b")
    mlp_path = tmp_path / "mlp.onnx"
    onnx.save(mlp, str(mlp_path))
    out = tmp_path / "out.ekm"
    status = _cli(
        [
            str(src),
            str(mlp_path),
            "-o",
            str(out),
            "--input-shape",
            "x=1x3x16x16",
            "--stage",
            "x=2,3,16,16",
            "--name",
            "cnn",
            "--name",
            "mlp",
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    model = ekm.read(out.read_bytes())
    assert [n.name for n in model.networks] == ["cnn", "mlp"]
    assert [s.tensors[s.input_bindings[0]].shape for s in model.networks[0].stages] == [
        (1, 3, 16, 16),
        (2, 3, 16, 16),
    ]
    assert "arena" in captured.out and "intermediates" in captured.out and "cnn" in captured.out


def test_cli_errors(small_net_onnx: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "net.onnx"
    src.write_bytes(small_net_onnx)
    out = str(tmp_path / "o.ekm")
    assert _cli([str(src), "-o", out, "--input-shape", "x=1x3xx16"]) == 2
    assert "error: x: bad shape" in capsys.readouterr().err
    assert _cli([str(src), "-o", out, "--input-shape", "nope"]) == 2
    assert _cli([str(src), "-o", out]) == 1
    err = capsys.readouterr().err
    assert err.count("error: ") == 2 and "dynamic shape" in err
    assert _cli([str(src), str(src), "-o", out, "--input-shape", "q=1x2"]) == 2
    assert "no model has an input named q" in capsys.readouterr().err
    assert _cli([str(src), "-o", out, "--name", "a", "--name", "b"]) == 2
    assert not Path(out).exists()


def test_stage_argument_splits_names_and_shapes() -> None:
    assert cli._stages(["a=1x2"], ["a=1,2,3,b=4x5", "x=7"]) == [
        {"a": (1, 2)},
        {"a": (1, 2, 3), "b": (4, 5)},
        {"x": (7,)},
    ]


def test_report_summary_lists_stages(small_net_onnx: bytes) -> None:
    report = compile_model(
        onnx.load_from_string(small_net_onnx), stages=[{"x": (1, 3, 16, 16)}, {"x": (2, 3, 16, 16)}]
    )
    lines = report.summary().splitlines()
    assert len(lines) == 4 and "x=2x3x16x16" in lines[3]
    assert math.isclose(len(report.data), len(report.data))


def test_default_network_names(tmp_path: Path) -> None:
    """Without a name: the output's stem for one network, each ONNX file's stem for several, the graph
    name for a ModelProto compiled to bytes; an explicit name always wins."""
    proto = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": [1, 4]}, ["y"], name="main_graph")
    for stem in ("det", "cls"):
        onnx.save(proto, str(tmp_path / f"{stem}.onnx"))

    def names(report: CompileReport) -> list[str]:
        return [n.name for n in ekm.read(report.data).networks]

    assert names(compile_model(proto, tmp_path / "yolo_v8.ekm")) == ["yolo_v8"]
    assert names(compile_model(str(tmp_path / "det.onnx"))) == ["det"]
    assert names(compile_model(proto)) == ["main_graph"]
    assert names(compile_model(proto, tmp_path / "x.ekm", name="given")) == ["given"]
    both = [NetworkSpec(str(tmp_path / f"{stem}.onnx")) for stem in ("det", "cls")]
    assert names(compile_networks(both, tmp_path / "both.ekm")) == ["det", "cls"]
    with pytest.raises(CompileError, match=r"two networks are named 'main_graph'.*--name"):
        compile_networks([NetworkSpec(proto), NetworkSpec(proto)])


# ---------------------------------------------------------------- Conv + residual Add fusion
def _conv_nodes(prefix: str, x: str, out: str, **attrs: Any) -> Any:
    return helper.make_node("Conv", [x, f"{prefix}W", f"{prefix}B"], [out], name=prefix, **attrs)


def _stage_ops(report: CompileReport) -> list[ekm.OpRecord]:
    return ekm.read(report.data).networks[0].stages[0].ops


def test_conv_add_relu_fuses_into_one_conv_with_z() -> None:
    """Conv -> Add(·, x) -> Relu (ResNet's basic block tail) is one CONV whose fourth input is Z, in
    a .ekm 1.4 file; the result matches onnxruntime."""
    inits = {"aW": rand(4, 4, 3, 3), "aB": rand(4)}
    nodes = [
        _conv_nodes("a", "x", "c", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "x"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["y"], name="relu"),
    ]
    report = check(make_model(nodes, {"x": (2, 4, 6, 5)}, ["y"], inits), {"x": rand(2, 4, 6, 5)})
    assert op_types(report) == {"CONV": 1, "TRANSPOSE": 2}, op_types(report)
    assert report.networks[0].stages[0].fused_ops == 2  # the Add and the Relu
    model = ekm.read(report.data)
    assert model.version == (1, 4)
    (conv,) = [op for op in model.networks[0].stages[0].ops if op.type == OpType.CONV]
    assert len(conv.inputs) == 4 and conv.inputs[3] is not None
    assert conv.attrs["act_min"] == 0.0


def test_conv_add_fuses_without_bias_and_when_z_comes_later() -> None:
    """Z computed after the CONV in the ONNX order (the fused op moves to the Add's place), and a CONV
    without bias (an absent third input before Z)."""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 0, 1, 0]),
        helper.make_node("Sigmoid", ["r"], ["s"], name="sig"),
        helper.make_node("Slice", ["s", "st", "en", "ax"], ["z"], name="slice"),
        helper.make_node("Add", ["z", "c"], ["y"], name="add"),
    ]
    inits = {
        "W": rand(3, 3, 3, 1),
        "st": np.array([1], np.int64),
        "en": np.array([7], np.int64),
        "ax": np.array([2], np.int64),
    }
    model = make_model(nodes, {"x": (1, 3, 6, 4), "r": (1, 3, 8, 4)}, ["y"], inits)
    report = check(model, {"x": rand(1, 3, 6, 4), "r": rand(1, 3, 8, 4)})
    assert "ADD" not in op_types(report), op_types(report)
    (conv,) = [op for op in _stage_ops(report) if op.type == OpType.CONV]
    assert len(conv.inputs) == 4 and conv.inputs[2] is None and conv.inputs[3] is not None


def test_add_of_two_convs_fuses_exactly_one() -> None:
    """A downsampling block's tail: Add(conv3x3 stride 2, conv1x1 stride 2 shortcut) + Relu."""
    inits = {"aW": rand(6, 4, 3, 3), "aB": rand(6), "bW": rand(6, 4, 1, 1), "bB": rand(6)}
    nodes = [
        _conv_nodes("a", "x", "c1", pads=[1, 1, 1, 1], strides=[2, 2]),
        _conv_nodes("b", "x", "c2", strides=[2, 2]),
        helper.make_node("Add", ["c1", "c2"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["y"], name="relu"),
    ]
    report = check(make_model(nodes, {"x": (1, 4, 9, 8)}, ["y"], inits), {"x": rand(1, 4, 9, 8)})
    types = op_types(report)
    assert types.get("CONV") == 2 and "ADD" not in types and "RELU" not in types, types
    convs = [op for op in _stage_ops(report) if op.type == OpType.CONV]
    assert [len(op.inputs) for op in convs] == [3, 4]  # the later CONV fused, reading the other's output
    assert convs[1].inputs[3] == convs[0].outputs[0]


@pytest.mark.parametrize(
    "case", ["broadcast", "two_consumers", "graph_output", "act_before_add", "same_input"]
)
def test_conv_add_does_not_fuse(case: str) -> None:
    """No fusion where it would change the result or lose a tensor: a broadcast Add, a conv output
    another op reads or the network outputs, a Relu between the Conv and the Add, Add(c, c)."""
    inits = {"aW": rand(4, 4, 3, 3), "aB": rand(4)}
    inputs: dict[str, Sequence[int | str]] = {"x": (1, 4, 5, 5)}
    outputs = ["y"]
    conv = _conv_nodes("a", "x", "c", pads=[1, 1, 1, 1])
    if case == "broadcast":
        inputs["r"] = (1, 4, 1, 1)  # a run-time per-channel operand: not folded into the bias either
        nodes = [conv, helper.make_node("Add", ["c", "r"], ["y"], name="add")]
    elif case == "two_consumers":
        nodes = [
            conv,
            helper.make_node("Add", ["c", "x"], ["s"], name="add"),
            helper.make_node("Mul", ["c", "s"], ["y"], name="mul"),
        ]
    elif case == "graph_output":
        nodes = [conv, helper.make_node("Add", ["c", "x"], ["y"], name="add")]
        outputs = ["y", "c"]
    elif case == "act_before_add":
        nodes = [
            conv,
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("Add", ["r", "x"], ["y"], name="add"),
        ]
    else:
        nodes = [conv, helper.make_node("Add", ["c", "c"], ["y"], name="add")]
    feeds = {name: rand(*(int(d) for d in shape)) for name, shape in inputs.items()}
    report = check(make_model(nodes, inputs, outputs, inits), feeds)
    assert op_types(report).get("ADD") == 1, op_types(report)
    assert all(len(op.inputs) <= 3 for op in _stage_ops(report) if op.type == OpType.CONV)
    assert ekm.read(report.data).version < (1, 4)


def test_fused_z_is_live_through_the_op_and_never_shares_y() -> None:
    """The planner keeps Z apart from Y (the XNNPACK path writes Y before it reads Z)."""
    inits = {"aW": rand(8, 8, 3, 3), "aB": rand(8), "bW": rand(8, 8, 3, 3), "bB": rand(8)}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu0"),
        _conv_nodes("a", "r", "c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        _conv_nodes("b", "r1", "c2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r"], ["s"], name="add"),
        helper.make_node("Sigmoid", ["s"], ["y"], name="sig"),
    ]
    report = check(make_model(nodes, {"x": (1, 8, 6, 6)}, ["y"], inits), {"x": rand(1, 8, 6, 6)})
    stage = ekm.read(report.data).networks[0].stages[0]
    (fused,) = [op for op in stage.ops if op.type == OpType.CONV and len(op.inputs) == 4]
    z, y = stage.tensors[fused.inputs[3]], stage.tensors[fused.outputs[0]]  # type: ignore[index]
    assert z.storage == ekm.ARENA and y.storage == ekm.ARENA
    assert z.offset + z.nbytes <= y.offset or y.offset + y.nbytes <= z.offset
