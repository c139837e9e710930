"""Constant folding: a node whose inputs are all known at compile time is evaluated here, once, with
onnx's reference implementation on a one-node model (so every ONNX op folds the way ONNX defines it:
the Shape/Gather/Concat/Unsqueeze/Range/ConstantOfShape/... chains of exported models)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgekit.compiler.graph import CompileError


def describe(node: onnx.NodeProto) -> str:
    return f"{node.op_type} ({node.name or '<unnamed>'})"


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node given by its ``value`` tensor (None for the other forms)."""
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            return numpy_helper.to_array(attr.t)
    return None


def evaluate(
    node: onnx.NodeProto, inputs: Sequence[np.ndarray | None], opsets: Mapping[str, int]
) -> list[np.ndarray]:
    """Run one node on constant ``inputs`` (None: an absent optional input); its outputs in order."""
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        value = constant_node_value(node)
        if value is not None:
            return [value]
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
