"""Loading an ONNX model: the file or proto, its opset, its constants (initializers and Constant nodes)
and its inputs and outputs with their declared shapes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.compiler.graph import CompileError

MIN_OPSET = 7
MAX_OPSET = 23

ModelSource = Union[str, "os.PathLike[str]", onnx.ModelProto]


@dataclass
class ValueInfo:
    name: str
    dtype: np.dtype[np.generic]
    dims: list[int | None]  # None: a dynamic dimension (dim_param or unknown)
    has_shape: bool = True


@dataclass
class OnnxModel:
    proto: onnx.ModelProto
    name: str  # the graph name, else the file stem
    opset: int  # of the default domain
    opsets: dict[str, int]
    nodes: list[onnx.NodeProto]
    constants: dict[str, np.ndarray]  # initializers
    inputs: list[ValueInfo]  # real inputs (initializers that are also inputs are constants)
    outputs: list[str]
    value_dtypes: dict[str, np.dtype[np.generic]] = field(default_factory=dict)


def _dtype(elem_type: int, where: str) -> np.dtype[np.generic]:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError) as exc:
        raise CompileError(f"{where} has an ONNX element type ({elem_type}) numpy cannot hold") from exc


def _value_info(info: onnx.ValueInfoProto) -> ValueInfo:
    ttype = info.type.tensor_type
    if not info.type.HasField("tensor_type"):
        raise CompileError(f"graph input '{info.name}' is not a tensor (sequences/maps are not supported)")
    dims: list[int | None] = []
    for d in ttype.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None)
    return ValueInfo(
        info.name, _dtype(ttype.elem_type, f"input '{info.name}'"), dims, ttype.HasField("shape")
    )


def _float_signature(schema: onnx.defs.OpSchema) -> tuple[object, ...]:
    """What a float32 user of an op sees of its definition: attributes with their defaults, inputs,
    outputs, and whether float32 is among each type constraint's types."""
    attrs = sorted(
        (a.name, str(a.type), a.default_value.SerializeToString()) for a in schema.attributes.values()
    )
    ins = [(i.name, str(i.option)) for i in schema.inputs]
    outs = [(o.name, str(o.option)) for o in schema.outputs]
    floats = sorted(
        (t.type_param_str, "tensor(float)" in t.allowed_type_strs) for t in schema.type_constraints
    )
    return attrs, ins, outs, floats


def _newer_opset_as_known(graph: onnx.GraphProto, opset: int) -> int:
    """A model of an opset newer than MAX_OPSET means the same as at MAX_OPSET when none of its ops
    changed for float32 since (newer opsets mostly add element types): compile it as MAX_OPSET then,
    else name the ops whose definitions changed."""
    changed = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            same = _float_signature(onnx.defs.get_schema(node.op_type, MAX_OPSET, "")) == _float_signature(
                onnx.defs.get_schema(node.op_type, opset, "")
            )
        except onnx.defs.SchemaError:
            same = False
        if not same:
            changed.append(f"{node.op_type} ({node.name or 'unnamed'})")
    if changed:
        raise CompileError(
            f"ONNX opset {opset} is newer than EdgeKit knows ({MAX_OPSET}), and these ops changed since "
            f"opset {MAX_OPSET}: {', '.join(sorted(set(changed)))}; export the model with opset "
            f"<= {MAX_OPSET}"
        )
    return MAX_OPSET


def load(source: ModelSource) -> OnnxModel:
    if isinstance(source, onnx.ModelProto):
        proto, stem = source, ""
    else:
        path = Path(os.fspath(source))
        if not path.is_file():
            raise CompileError(f"{path}: no such ONNX file")
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and friends
            raise CompileError(f"{path}: not a readable ONNX model ({exc})") from exc
        stem = path.stem
    graph = proto.graph
    opsets = {entry.domain or "ai.onnx": int(entry.version) for entry in proto.opset_import}
    opset = opsets.get("ai.onnx", 0)
    if opset < MIN_OPSET:
        raise CompileError(
            f"ONNX opset {opset} is not supported (EdgeKit compiles opsets {MIN_OPSET} and up)"
        )
    if opset > MAX_OPSET:
        opset = _newer_opset_as_known(graph, opset)
    constants: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        try:
            constants[init.name] = numpy_helper.to_array(init)
        except Exception as exc:
            raise CompileError(f"initializer '{init.name}' cannot be read ({exc})") from exc
    if graph.sparse_initializer:
        raise CompileError("sparse initializers are not supported")
    inputs = [_value_info(i) for i in graph.input if i.name not in constants]
    if not inputs:
        raise CompileError("the model has no inputs (everything is constant)")
    dtypes: dict[str, np.dtype[np.generic]] = {}
    for info in [*graph.value_info, *graph.output]:
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            try:
                dtypes[info.name] = _dtype(info.type.tensor_type.elem_type, info.name)
            except CompileError:
                pass
    return OnnxModel(
        proto=proto,
        name=graph.name or stem or "network",
        opset=opset,
        opsets=opsets,
        nodes=list(graph.node),
        constants=constants,
        inputs=inputs,
        outputs=[o.name for o in graph.output],
        value_dtypes=dtypes,
    )


def topological(model: OnnxModel) -> list[onnx.NodeProto]:
    """The nodes in an order where every input is produced first (ONNX files are usually sorted)."""
    ready = set(model.constants) | {i.name for i in model.inputs} | {""}
    pending = list(model.nodes)
    order: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(n in ready for n in node.input):
                order.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            node = rest[0]
            missing = [n for n in node.input if n not in ready]
            what = f"{node.op_type} ({node.name or '<unnamed>'})"
            raise CompileError(f"{what} reads {missing}, which no node produces (or a cycle)")
        pending = rest
    return order
