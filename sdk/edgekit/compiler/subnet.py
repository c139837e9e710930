"""Compiled EdgeKit networks inside an ONNX graph: the ``ai.edgekit`` ``EdgeKitNetwork`` node.

The node holds a whole ``.ekm`` file (attribute ``model``: its bytes as a STRING, or a uint8 TENSOR),
and ``network`` (STRING; optional when the file has one network). Its inputs and outputs are the
network's, in order, in the ONNX layout. The compiler inlines it: lowering (``lower_node``) reads the
file with ``ekm.read``, picks the stage whose input shapes are the node's input shapes and leaves one
opaque ``SubnetOp`` in the stage graph, which the host passes (folding, fusion) do not look into; the
layout pass (``inline``) then replaces it with the stage's ops, tensors and constants, which are already
lowered, fused and in their physical layouts; the host's memory plan then covers them like any other
op. The runtime sees ordinary ops.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper

from edgekit.compiler import ekm, fold, onnx_import
from edgekit.compiler.graph import ATTR_TYPES, NHWC, ONNX, AttrType, CompileError, Graph, Op, OpType, Shape

if TYPE_CHECKING:
    from edgekit.compiler.lower import StageLowering, Value

DOMAIN = "ai.edgekit"
OP_TYPE = "EdgeKitNetwork"

__all__ = ["DOMAIN", "OP_TYPE", "SubnetOp", "inline", "is_edgekit_node", "lower_node", "make_edgekit_node"]


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def _stages_text(net: ekm.NetworkRecord) -> str:
    return "; ".join(
        f"stage {i}: "
        + ", ".join(f"{io.name}={_fmt(st.tensors[t].shape)}" for io, t in zip(net.inputs, st.input_bindings))
        for i, st in enumerate(net.stages)
    )


def read_model(data: bytes, where: str) -> ekm.ModelFile:
    """The .ekm file, or a CompileError saying why it cannot be read."""
    try:
        return ekm.read(data)
    except (ekm.ModelFormatError, ValueError, IndexError, UnicodeDecodeError, struct.error) as exc:
        raise CompileError(f"{where}: its model is not a readable .ekm file: {exc}") from exc


def pick_network(model: ekm.ModelFile, name: str | None, where: str) -> ekm.NetworkRecord:
    names = [n.name for n in model.networks]
    if name is None or name == "":
        if len(names) != 1:
            raise CompileError(
                f"{where}: its model has {len(names)} networks ({', '.join(names)}); name one (attribute "
                "'network')"
            )
        return model.networks[0]
    for net in model.networks:
        if net.name == name:
            return net
    raise CompileError(f"{where}: its model has no network '{name}'; its networks are: {', '.join(names)}")


def _check_bindings(net: ekm.NetworkRecord, where: str) -> None:
    """Every stage binds each network input and output to one of its own tensors (the stage is chosen
    by them)."""
    for index, stage in enumerate(net.stages):
        if (len(stage.input_bindings), len(stage.output_bindings)) != (len(net.inputs), len(net.outputs)):
            raise CompileError(
                f"{where}: network '{net.name}', stage {index}: {len(stage.input_bindings)} input and "
                f"{len(stage.output_bindings)} output bindings for the network's {len(net.inputs)} inputs "
                f"and {len(net.outputs)} outputs"
            )
        for binding in [*stage.input_bindings, *stage.output_bindings]:
            if not 0 <= binding < len(stage.tensors):
                raise CompileError(
                    f"{where}: network '{net.name}', stage {index}: a binding outside the stage"
                )
        # Each input is its own INPUT tensor and each output its own OUTPUT tensor, as the runtime loads them.
        kinds = [(b, ekm.INPUT) for b in stage.input_bindings]
        kinds += [(b, ekm.OUTPUT) for b in stage.output_bindings]
        if len({b for b, _ in kinds}) != len(kinds) or any(stage.tensors[b].storage != k for b, k in kinds):
            raise CompileError(
                f"{where}: network '{net.name}', stage {index}: its inputs and outputs must be bound to "
                "distinct input and output tensors"
            )


def _attr_is(kind: AttrType, value: object) -> bool:
    """Whether an attribute value read from a file is of the type the op table gives its name."""
    if kind in (AttrType.INTS, AttrType.FLOATS):
        element = int if kind == AttrType.INTS else float
        return isinstance(value, list) and all(isinstance(v, element) for v in value)
    return isinstance(value, {AttrType.INT: int, AttrType.FLOAT: float, AttrType.STRING: str}[kind])


def _check_stage(net: ekm.NetworkRecord, index: int, where: str) -> None:
    """What inlining relies on, beyond what ekm.read checks: float32 tensors, known op types and attributes,
    operands inside the stage. (The runtime's loader checks the inlined result again.)"""
    stage = net.stages[index]
    count = len(stage.tensors)
    for t in stage.tensors:
        if t.dtype != ekm.FLOAT32:
            raise CompileError(
                f"{where}: network '{net.name}' has a {ekm.DTYPES[t.dtype]} tensor '{t.name}'; only float32 "
                "networks can be inlined"
            )
        if t.dynamic:
            raise CompileError(
                f"{where}: network '{net.name}' has output '{t.name}', whose size depends on the data; "
                "networks with dynamic outputs cannot be inlined (their sizes are known only at run time)"
            )
    for rec in stage.ops:
        try:
            OpType(rec.type)
        except ValueError:
            raise CompileError(
                f"{where}: network '{net.name}' has op '{rec.name}' of type {rec.type}, which this compiler "
                "does not know (compiled by a newer EdgeKit?)"
            ) from None
        unknown = [a for a in rec.attrs if a not in ATTR_TYPES]
        if unknown:
            raise CompileError(
                f"{where}: network '{net.name}': op '{rec.name}' has unknown attributes {unknown}"
            )
        mistyped = [a for a, v in rec.attrs.items() if not _attr_is(ATTR_TYPES[a], v)]
        if mistyped:
            raise CompileError(
                f"{where}: network '{net.name}': op '{rec.name}' has attributes of the wrong type {mistyped}"
            )
        for operand in [*rec.inputs, *rec.outputs]:
            if operand is not None and not 0 <= operand < count:
                raise CompileError(
                    f"{where}: network '{net.name}': op '{rec.name}' has an operand outside its stage"
                )
    # Inlined, each tensor is written before it is read, as the runtime's loader checks of a file.
    constants = {i for i, t in enumerate(stage.tensors) if t.storage == ekm.CONSTANT}
    written = set(stage.input_bindings) | constants
    for rec in stage.ops:
        unwritten = [stage.tensors[i].name for i in rec.inputs if i is not None and i not in written]
        if unwritten:
            raise CompileError(
                f"{where}: network '{net.name}': op '{rec.name}' reads {unwritten} before any op writes it"
            )
        written.update(rec.outputs)
    unwritten = [stage.tensors[i].name for i in stage.output_bindings if i not in written]
    if unwritten:
        raise CompileError(f"{where}: network '{net.name}': no op writes its output(s) {unwritten}")


def _model_bytes(node: onnx.NodeProto, where: str) -> bytes:
    for attr in node.attribute:
        if attr.name != "model":
            continue
        if attr.type == onnx.AttributeProto.STRING:
            return bytes(attr.s)
        if attr.type == onnx.AttributeProto.TENSOR:
            array = onnx_import.read_tensor(attr.t, f"{where}: attribute 'model'")
            if array.dtype != np.uint8 or array.ndim != 1:
                raise CompileError(
                    f"{where}: attribute 'model' must be a 1-D uint8 tensor, got {array.dtype}"
                )
            return array.tobytes()
        raise CompileError(f"{where}: attribute 'model' must be a STRING (the .ekm bytes) or a uint8 TENSOR")
    raise CompileError(f"{where}: no 'model' attribute (the .ekm bytes)")


def _network_name(node: onnx.NodeProto) -> str | None:
    for attr in node.attribute:
        if attr.name == "network":
            value = helper.get_attribute_value(attr)
            try:
                return value.decode() if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError:
                raise CompileError(f"{fold.describe(node)}: attribute 'network' is not UTF-8 text") from None
    return None


def make_edgekit_node(
    ekm_data: bytes | bytearray | memoryview | str | os.PathLike[str],
    inputs: Sequence[str],
    outputs: Sequence[str],
    network: str | None = None,
    name: str = "",
) -> onnx.NodeProto:
    """An ``ai.edgekit`` ``EdgeKitNetwork`` node that runs ``network`` (None: the file's only network) of
    a compiled ``.ekm`` (bytes or a path) on ``inputs``, producing ``outputs`` (ONNX tensor names, in the
    network's input and output order). The model using it must import the opset ``ai.edgekit`` 1
    (``helper.make_opsetid("ai.edgekit", 1)``)."""
    if isinstance(ekm_data, (str, os.PathLike)):
        data = Path(ekm_data).read_bytes()
    else:
        data = bytes(ekm_data)
    where = f"{OP_TYPE} node '{name}'" if name else f"{OP_TYPE} node"
    net = pick_network(read_model(data, where), network, where)
    if len(inputs) != len(net.inputs):
        raise CompileError(
            f"{where}: network '{net.name}' takes {len(net.inputs)} input(s) "
            f"({', '.join(io.name for io in net.inputs)}), got {len(inputs)}"
        )
    if not 1 <= len(outputs) <= len(net.outputs):
        raise CompileError(
            f"{where}: network '{net.name}' has {len(net.outputs)} output(s) "
            f"({', '.join(io.name for io in net.outputs)}), got {len(outputs)} names"
        )
    return helper.make_node(
        OP_TYPE, list(inputs), list(outputs), name=name or None, domain=DOMAIN, model=data, network=net.name
    )


def is_edgekit_node(node: onnx.NodeProto) -> bool:
    return node.domain == DOMAIN


@dataclass
class SubnetOp(Op):
    """The stage of a compiled network at an EdgeKitNetwork node: opaque to the passes before the layout
    pass, which inlines it. ``type`` is a placeholder (RESHAPE, which no pass before layout rewrites)."""

    network: ekm.NetworkRecord | None = None
    stage: int = 0


def lower_node(s: StageLowering, node: onnx.NodeProto, ins: list[Value | None]) -> list[Value]:
    """Lower an ai.edgekit node (see the module doc); raises CompileError for what it cannot take."""
    from edgekit.compiler.lower import Const, Dyn

    where = fold.describe(node)
    if node.op_type != OP_TYPE:
        raise CompileError(f"{where}: the {DOMAIN} domain has one op, {OP_TYPE}")
    net = pick_network(read_model(_model_bytes(node, where), where), _network_name(node), where)
    names = ", ".join(io.name for io in net.inputs)
    if len(ins) != len(net.inputs) or any(v is None for v in ins):
        raise CompileError(
            f"{where}: network '{net.name}' takes {len(net.inputs)} input(s) ({names}), got {len(ins)}"
        )
    if len(node.output) > len(net.outputs):
        raise CompileError(
            f"{where}: network '{net.name}' has {len(net.outputs)} output(s); the node names "
            f"{len(node.output)}"
        )
    values = [v for v in ins if v is not None]
    for io, value in zip(net.inputs, values):
        if isinstance(value, Const) and value.value.dtype != np.float32:
            raise CompileError(
                f"{where}: input '{io.name}' is {value.value.dtype}; the network takes float32"
            )
    shapes: list[Shape] = [s.shape(v) for v in values]
    _check_bindings(net, where)
    chosen = None
    for index, stage in enumerate(net.stages):
        if all(stage.tensors[t].shape == shape for t, shape in zip(stage.input_bindings, shapes)):
            chosen = index
            break
    if chosen is None:
        given = ", ".join(f"{io.name}={_fmt(shape)}" for io, shape in zip(net.inputs, shapes))
        raise CompileError(
            f"{where}: no stage of network '{net.name}' takes the input shapes {given}; its stages take: "
            f"{_stages_text(net)}"
        )
    _check_stage(net, chosen, where)
    stage = net.stages[chosen]
    inputs: list[str | None] = [s.tensor(v, f"input{i}") for i, v in enumerate(values)]
    node_name = node.name or node.op_type
    outputs = []
    for k, binding in enumerate(stage.output_bindings):
        base = (
            node.output[k]
            if k < len(node.output) and node.output[k]
            else f"{node_name}_{net.outputs[k].name}"
        )
        outputs.append(s.graph.add(base, stage.tensors[binding].shape))
    s.graph.ops.append(
        SubnetOp(OpType.RESHAPE, node_name, inputs, outputs, sources=[node_name], network=net, stage=chosen)
    )
    return [Dyn(name) for name in outputs[: len(node.output)]]


def inline(dst: Graph, op: SubnetOp, inputs: Sequence[str], outputs: Sequence[str]) -> None:
    """Append the stage's ops to ``dst``, reading ``inputs`` and writing ``outputs`` (physical tensors of
    ``dst`` in the ONNX layout, bound to the network's inputs and outputs). The network's other tensors
    and its ops, attributes and sources are copied with names prefixed by the node's name."""
    assert op.network is not None
    stage = op.network.stages[op.stage]
    prefix = op.name
    names: dict[int, str] = {}
    for tensor, name in zip(stage.input_bindings, inputs):
        names[tensor] = name
    for tensor, name in zip(stage.output_bindings, outputs):
        names[tensor] = name
    sources: dict[int, ekm.OpSource] = {}
    for rec in stage.ops:
        if rec.source is not None:
            for out in rec.outputs:
                sources[out] = rec.source
    for index, t in enumerate(stage.tensors):
        if index in names:
            continue
        if t.storage == ekm.CONSTANT:
            assert t.data is not None
            names[index] = dst.add_const(f"{prefix}/{t.name}", np.array(t.data, dtype=np.float32))
            continue
        src = sources.get(index)
        layout = NHWC if src is not None and src.perm is not None and len(t.shape) == 4 else ONNX
        names[index] = dst.add(f"{prefix}/{t.name}", t.shape, layout=layout)
        if src is not None and src.tensor:
            dst.tensors[names[index]].onnx_name = f"{prefix}/{src.tensor}"
    for rec in stage.ops:
        nodes = (
            [f"{prefix}/{n}" for n in rec.source.nodes]
            if rec.source is not None
            else [f"{prefix}/{rec.name}"]
        )
        attrs: dict[str, Any] = dict(rec.attrs)
        dst.ops.append(
            Op(
                OpType(rec.type),
                f"{prefix}/{rec.name}",
                [None if i is None else names[i] for i in rec.inputs],
                [names[i] for i in rec.outputs],
                attrs,
                nodes,
            )
        )
