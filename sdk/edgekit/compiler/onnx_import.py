"""Loading an ONNX model: the file or proto, its opset, its constants (initializers and Constant nodes)
and its inputs and outputs with their declared shapes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnx
import onnx.external_data_helper
from onnx import numpy_helper

from edgekit.compiler.graph import CompileError

MIN_OPSET = 7
MAX_OPSET = 23

# A path to an .onnx file, the bytes of one, or the parsed proto.
ModelSource = Union[str, "os.PathLike[str]", bytes, onnx.ModelProto]


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


def _check_text(message: Any, where: str) -> None:  # any protobuf message of the model
    """Every string field of the model is text. Protobuf hands Python a string field that is not valid
    UTF-8 as bytes, which name lookups and the .ekm writer would trip over much later."""
    for descriptor, value in message.ListFields():
        if descriptor.type not in (descriptor.TYPE_MESSAGE, descriptor.TYPE_STRING):
            continue  # numbers: a tensor's float_data may hold millions
        items = list(value) if descriptor.is_repeated else [value]
        for index, item in enumerate(items):
            place = f"{where}.{descriptor.name}" + (f"[{index}]" if descriptor.is_repeated else "")
            if descriptor.type == descriptor.TYPE_MESSAGE:
                _check_text(item, place)
            elif descriptor.type == descriptor.TYPE_STRING and not isinstance(item, str):
                raise CompileError(f"{place} is not UTF-8 text ({item!r})")


def check_node(node: onnx.NodeProto, opset: int) -> None:
    """An ONNX op's node has as many inputs and outputs as its definition allows, its string
    attributes are UTF-8 text, and every attribute that ONNX defines has the type ONNX gives it, as
    lowering and folding rely on (an unknown op is left to lowering, which reports it as unsupported;
    other domains' attributes are checked where they are read)."""
    if node.domain not in ("", "ai.onnx"):
        return
    for attr in node.attribute:
        for text in [attr.s, *attr.strings]:
            try:
                text.decode("utf-8")
            except UnicodeDecodeError:
                raise CompileError(
                    f"{node.op_type} ({node.name or '<unnamed>'}): attribute '{attr.name}' is not UTF-8 "
                    f"text ({text!r})"
                ) from None
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return
    for kind, count, low, high in (
        ("inputs", len(node.input), schema.min_input, schema.max_input),
        ("outputs", len(node.output), schema.min_output, schema.max_output),
    ):
        if not low <= count <= high:
            allowed = f"{low}" if low == high else f"{low} to {high}" if high < 1 << 30 else f"{low} or more"
            raise CompileError(
                f"{node.op_type} ({node.name or '<unnamed>'}): {count} {kind}, ONNX's {node.op_type} "
                f"(opset {opset}) has {allowed}"
            )
    types = onnx.AttributeProto.AttributeType
    for attr in node.attribute:
        defined = schema.attributes.get(attr.name)
        given = types.Name(attr.type) if attr.type in types.values() else str(attr.type)
        wanted = str(defined.type).rsplit(".", 1)[-1] if defined is not None else given  # "AttrType.FLOAT"
        if given != wanted:
            raise CompileError(
                f"{node.op_type} ({node.name or '<unnamed>'}): attribute '{attr.name}' is {given}, "
                f"ONNX defines it as {wanted}"
            )


def _check_names(graph: onnx.GraphProto, constants: Mapping[str, np.ndarray]) -> None:
    """Graph inputs and outputs are named, and every tensor name is given a value once (ONNX graphs are
    in SSA form): an input, an initializer or one node output."""
    for kind, infos in (("input", graph.input), ("output", graph.output)):
        for index, info in enumerate(infos):
            if not info.name:
                raise CompileError(f"graph {kind} {index} has no name")
    defined = set(constants)
    for info in graph.input:
        if info.name in constants:
            continue
        if info.name in defined:
            raise CompileError(f"graph input '{info.name}' is listed twice")
        defined.add(info.name)
    for node in graph.node:
        for name in node.output:
            if name in defined:
                raise CompileError(
                    f"{node.op_type} ({node.name or '<unnamed>'}) writes '{name}', which already has a value "
                    "(an input, an initializer or another node's output): ONNX assigns each name once"
                )
            if name:
                defined.add(name)


def read_tensor(tensor: onnx.TensorProto, where: str) -> np.ndarray:
    """A TensorProto's value (an initializer's, a Constant node's). Loading a model from its file has
    already read external data into the tensors; a tensor still stored outside (a model given as bytes
    or a proto) is refused rather than read from a path relative to the current directory."""
    if onnx.external_data_helper.uses_external_data(tensor):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
        raise CompileError(
            f"{where} keeps its data in an external file ({location!r}): compile the .onnx file by its path"
        )
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:  # a dtype numpy cannot hold, data of the wrong size, ...
        raise CompileError(f"{where} cannot be read ({exc})") from exc


def load(source: ModelSource) -> OnnxModel:
    if isinstance(source, onnx.ModelProto):
        proto, stem = source, ""
    elif isinstance(source, bytes):
        try:
            proto = onnx.load_from_string(source)
        except Exception as exc:  # protobuf's DecodeError
            raise CompileError(f"not a readable ONNX model ({exc})") from exc
        stem = ""
    else:
        path = Path(os.fspath(source))
        if not path.is_file():
            raise CompileError(f"{path}: no such ONNX file")
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and friends
            raise CompileError(f"{path}: not a readable ONNX model ({exc})") from exc
        stem = path.stem
    _check_text(proto, "model")
    graph = proto.graph
    opsets = {entry.domain or "ai.onnx": int(entry.version) for entry in proto.opset_import}
    opset = opsets.get("ai.onnx", 0)
    if opset < MIN_OPSET:
        raise CompileError(
            f"ONNX opset {opset} is not supported (EdgeKit compiles opsets {MIN_OPSET} and up)"
        )
    if opset > MAX_OPSET:
        opset = _newer_opset_as_known(graph, opset)
    for node in graph.node:
        check_node(node, opset)
    constants: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        constants[init.name] = read_tensor(init, f"initializer '{init.name}'")
    if graph.sparse_initializer:
        raise CompileError("sparse initializers are not supported")
    _check_names(graph, constants)
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
