"""Constant folding: a node whose inputs are all known at compile time is evaluated here, once, with
onnx's reference implementation on a one-node model (so every ONNX op folds the way ONNX defines it:
the Shape/Gather/Concat/Unsqueeze/Range/ConstantOfShape/... chains of exported models)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator

from edgekit.compiler import onnx_import
from edgekit.compiler.graph import CompileError


def describe(node: onnx.NodeProto) -> str:
    return f"{node.op_type} ({node.name or '<unnamed>'})"


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node given by its ``value`` tensor (None for the other forms)."""
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            return onnx_import.read_tensor(attr.t, f"{describe(node)}: its value")
    return None


def evaluate(
    node: onnx.NodeProto, inputs: Sequence[np.ndarray | None], opsets: Mapping[str, int]
) -> list[np.ndarray]:
    """Run one node on constant ``inputs`` (None: an absent optional input); its outputs in order."""
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        value = constant_node_value(node)
        if value is not None:
            return [value]
    if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in ("", "ai.onnx"):
        return [_quantize_linear(node, inputs)]  # onnx's reference has them from opset 19 only
    in_names = [f"in{i}" if value is not None else "" for i, value in enumerate(inputs)]
    out_names = [f"out{i}" if name else "" for i, name in enumerate(node.output)]
    copy = helper.make_node(node.op_type, in_names, out_names, domain=node.domain)
    copy.attribute.extend(node.attribute)
    graph_inputs = []
    feeds: dict[str, np.ndarray] = {}
    for name, value in zip(in_names, inputs):
        if value is None:
            continue
        array = np.asarray(value)
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        graph_inputs.append(helper.make_tensor_value_info(name, elem, list(array.shape)))
        feeds[name] = array
    graph_outputs = [
        helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in out_names if n
    ]
    graph = helper.make_graph([copy], "fold", graph_inputs, graph_outputs)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("" if d == "ai.onnx" else d, v) for d, v in opsets.items()]
    )
    try:
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception as exc:  # the reference implementation raises anything
        raise CompileError(f"{describe(node)}: folding its constant inputs failed: {exc}") from exc
    values = iter(results)
    return [np.asarray(next(values)) if name else np.zeros(0, np.float32) for name in out_names]


def _quantize_linear(node: onnx.NodeProto, inputs: Sequence[np.ndarray | None]) -> np.ndarray:
    """ONNX QuantizeLinear / DequantizeLinear on constants, per tensor or per axis (float32 math)."""
    x, scale = inputs[0], inputs[1] if len(inputs) > 1 else None
    zp = inputs[2] if len(inputs) > 2 else None
    if x is None or scale is None:
        raise CompileError(f"{describe(node)}: x and scale are required")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if int(attrs.get("block_size", 0)):
        raise CompileError(f"{describe(node)}: blocked quantization (block_size) is not supported")
    x = np.asarray(x)
    scale = np.asarray(scale, np.float32)
    shape = [1] * x.ndim
    if scale.ndim == 1 and scale.size > 1:
        axis = int(attrs.get("axis", 1)) % max(x.ndim, 1)
        shape[axis] = scale.size
    scale = scale.reshape(shape) if scale.size > 1 else scale.reshape(())
    zero = np.zeros((), np.int64) if zp is None else np.asarray(zp).astype(np.int64).reshape(scale.shape)
    if node.op_type == "DequantizeLinear":
        result: np.ndarray = ((x.astype(np.int64) - zero).astype(np.float32) * scale).astype(np.float32)
        return result
    out = int(attrs.get("output_dtype", 0))
    dtype = (
        np.dtype(zp.dtype)
        if zp is not None
        else np.dtype(helper.tensor_dtype_to_np_dtype(out) if out else np.uint8)
    )
    info = np.iinfo(dtype)
    with np.errstate(invalid="ignore"):
        q = np.rint(x.astype(np.float32) / scale) + zero.astype(np.float32)
    q = np.where(np.isnan(q), zero, q)
    return np.clip(q, info.min, info.max).astype(dtype)
