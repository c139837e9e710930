"""Lowering one stage of an ONNX graph to EdgeKit ops, with static shapes propagated op by op.

Every ONNX node is either folded (all its inputs are known at compile time: evaluated once, see
fold.py; ``Shape`` of a static tensor is known too), aliased (Identity, Dropout, no-op reshapes), or
lowered to EdgeKit ops whose output shapes this module computes. Tensors keep the ONNX (logical)
layout here; layout.py later moves spatial ops to NHWC. Unsupported nodes are collected, not raised
one by one, so the user sees every one of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np
import onnx
from onnx import helper

from edgekit.compiler import fold, onnx_import, quantize, subnet
from edgekit.compiler import plugins as plugins_mod
from edgekit.compiler.graph import (
    FLOAT32,
    INT8,
    INT32,
    INT64,
    MAX_RANK,
    QUANTIZED_DTYPES,
    UINT8,
    AttrType,
    AttrValue,
    CompileError,
    Graph,
    Op,
    OpType,
    Shape,
    UnsupportedOpsError,
)
from edgekit.compiler.onnx_import import OnnxModel


@dataclass
class Const:
    value: np.ndarray


@dataclass
class Dyn:
    name: str  # a run-time tensor of the stage graph (float32; int8 when quantized, int64 for TopK/NMS)


class Unknown:
    """The output of a node that could not be lowered (its consumers are skipped)."""


Value = Union[Const, Dyn, Unknown]


class Unsupported(Exception):
    """This node (or this use of it) has no EdgeKit lowering; the message says why."""


@dataclass
class LoweringStats:
    folded_nodes: int = 0


def _float32(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype == np.float32:
        return array
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    raise CompileError(f"{what} is {array.dtype}; EdgeKit runs float32 tensors only")


def _broadcast(a: Shape, b: Shape, where: str) -> Shape:
    try:
        return tuple(int(d) for d in np.broadcast_shapes(a, b))
    except ValueError as exc:
        raise CompileError(f"{where}: shapes {list(a)} and {list(b)} do not broadcast") from exc


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _spatial_pads(
    attrs: Mapping[str, Any], size: Sequence[int], kernel: Sequence[int], strides: Sequence[int]
) -> list[int]:
    """[top, left, bottom, right] from pads / auto_pad (kernel is the dilated extent)."""
    auto = _str(attrs.get("auto_pad", "NOTSET"))
    if auto in ("NOTSET", ""):
        pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
        if len(pads) != 4:
            raise Unsupported(f"pads {pads} (2-D ops take 4 pads)")
        if any(p < 0 for p in pads):
            raise Unsupported(f"negative pads {pads}")
        return pads
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad {auto}")
    begins, ends = [], []
    for n, k, s in zip(size, kernel, strides):
        out = -(-n // s)
        total = max(0, (out - 1) * s + k - n)
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return [*begins, *ends]


class StageLowering:
    """Lower ``model`` with its inputs fixed to ``shapes``."""

    def __init__(
        self, model: OnnxModel, shapes: Mapping[str, Shape], plugins: plugins_mod.PluginSet | None = None
    ) -> None:
        self.model = model
        self.plugins = plugins or plugins_mod.PluginSet()
        self.graph = Graph()
        self.env: dict[str, Value] = {}
        self.unsupported: list[str] = []
        self.stats = LoweringStats()
        self.node: onnx.NodeProto = onnx.NodeProto()
        for name, value in model.constants.items():
            self.env[name] = Const(value)
        for info in model.inputs:
            if info.dtype not in (np.float32, np.int64, np.int8, np.uint8):
                raise CompileError(
                    f"input '{info.name}' is {info.dtype}; EdgeKit networks take float32 inputs (int8 and "
                    "uint8 ones that DequantizeLinear reads, and int64 ones for TopK's K and "
                    "NonMaxSuppression's max_output_boxes_per_class)"
                )
            self.graph.add(info.name, shapes[info.name], dtype=str(info.dtype))
            self.graph.tensors[info.name].onnx_name = info.name
            self.graph.inputs.append(info.name)
            self.env[info.name] = Dyn(info.name)

    # ---- helpers ----
    @property
    def where(self) -> str:
        return fold.describe(self.node)

    def shape(self, value: Value) -> Shape:
        if isinstance(value, Const):
            return tuple(int(d) for d in value.value.shape)
        if isinstance(value, Dyn):
            return self.graph.shape(value.name)
        raise Unsupported("input of unknown shape")

    def tensor(self, value: Value | None, what: str = "input", dtype: str = FLOAT32) -> str:
        """The graph tensor of a value; a constant becomes a CONSTANT tensor of ``dtype`` (float32 unless
        a quantized op takes its int8 / int32 values as they are)."""
        if isinstance(value, Dyn):
            return value.name
        if isinstance(value, Const):
            base = f"{self.node.name or self.node.op_type}_{what}"
            if dtype != FLOAT32:
                if value.value.dtype != np.dtype(dtype):
                    raise CompileError(f"{self.where}: {what} is {value.value.dtype}, expected {dtype}")
                return self.graph.add_const(base, value.value, dtype)
            return self.graph.add_const(base, _float32(value.value, f"{self.where}: {what}"))
        raise Unsupported(f"{what} is missing")

    def const(self, value: Value | None, what: str) -> np.ndarray:
        if isinstance(value, Const):
            return value.value
        raise Unsupported(f"{what} must be a constant (it is computed at run time)")

    def ints(self, value: Value | None, what: str) -> list[int]:
        array = self.const(value, what)
        if array.dtype.kind not in "iubf":
            raise CompileError(f"{self.where}: {what} is {array.dtype}, expected integers (ONNX: int64)")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array))):
            raise CompileError(f"{self.where}: {what} holds values that are not whole numbers (ONNX: int64)")
        values = [int(v) for v in array.reshape(-1)]
        if any(not -(2**63) <= v < 2**63 for v in values):
            raise CompileError(f"{self.where}: {what} holds values outside int64")
        return values

    def emit(
        self,
        op_type: OpType,
        inputs: Sequence[str | None],
        shape: Shape,
        attrs: dict[str, AttrValue] | None = None,
        base: str | None = None,
        dtype: str | None = None,
    ) -> Dyn:
        """Add an op with one output of ``shape``. ``dtype`` None: float32, or int8 for a data-movement
        op on int8 tensors (every run-time input int8); a quantized op's lowering gives its dtype."""
        if len(shape) > MAX_RANK:
            raise Unsupported(f"result of rank {len(shape)} (EdgeKit supports rank <= {MAX_RANK})")
        if any(d < 1 for d in shape):
            raise Unsupported(f"empty result shape {list(shape)}")
        if dtype is None:
            dtype = self.moved_dtype(op_type, inputs, attrs or {})
        name = self.graph.add(base or (self.node.output[0] if self.node.output else "t"), shape, dtype=dtype)
        node_name = self.node.name or self.node.op_type
        self.graph.ops.append(
            Op(op_type, node_name, list(inputs), [name], dict(attrs or {}), sources=[node_name])
        )
        return Dyn(name)

    def moved_dtype(
        self, op_type: OpType, inputs: Sequence[str | None], attrs: Mapping[str, AttrValue]
    ) -> str:
        """The output dtype of a non-quantized op: int8 for the data-movement ops that take int8
        tensors (docs/model-format.md), when their inputs are int8; else float32, checked."""
        first = self.graph.tensors[inputs[0]] if inputs and inputs[0] is not None else None
        if first is not None and first.dtype == INT8 and op_type in INT8_MOVE_OPS:
            others = [n for n in inputs if n is not None and self.graph.tensors[n].dtype != INT8]
            if others or (op_type == OpType.RESIZE and attrs.get("mode", 0) != 0):
                raise Unsupported(
                    "a mix of int8 and float inputs, or a linear Resize of an int8 tensor (quantized "
                    "data-movement ops take int8 inputs only; linear Resize runs in float: put it between "
                    "DequantizeLinear and QuantizeLinear)"
                )
            return INT8
        self.check_float(inputs)
        return FLOAT32

    def check_float(self, inputs: Sequence[str | None]) -> None:
        """EdgeKit's ops compute in float32: an int64 run-time tensor may only feed the int64 operands of
        TOP_K and NON_MAX_SUPPRESSION."""
        for name in inputs:
            if name is not None and self.graph.tensors[name].dtype != FLOAT32:
                tensor = self.graph.tensors[name]
                raise Unsupported(
                    f"input '{tensor.onnx_name or name}' is {tensor.dtype} at run time; EdgeKit's ops "
                    "compute in float32 (int8 tensors only in quantized ops and data movement, int64 "
                    "tensors only as TopK's K and NonMaxSuppression's max_output_boxes_per_class, and as "
                    "their index outputs, which must be network outputs)"
                )

    def dynamic_output(self, node: onnx.NodeProto, index: int) -> bool:
        """Output ``index`` of ``node`` has a size that depends on the data: it must be a network output
        no node reads (a CompileError naming the reader otherwise). False when no one uses it (it is
        then an arena scratch of its bound)."""
        name = node.output[index] if index < len(node.output) else ""
        if not name:
            return False
        for other in self.model.nodes:
            if name in other.input:
                raise CompileError(
                    f"{self.where}: output '{name}' has a size that depends on the data, and "
                    f"{fold.describe(other)} reads it: EdgeKit supports data-dependent sizes only as "
                    f"network outputs (make '{name}' a graph output that no node reads, and do what "
                    "follows on the host)"
                )
        return name in self.model.outputs

    def reshape(self, x: Value, shape: Sequence[int]) -> Value:
        shape = tuple(int(d) for d in shape)
        if isinstance(x, Const):
            return Const(x.value.reshape(shape))
        if self.shape(x) == shape:
            return x
        if int(np.prod(shape, dtype=np.int64)) != int(np.prod(self.shape(x), dtype=np.int64)):
            raise CompileError(f"{self.where}: cannot reshape {list(self.shape(x))} to {list(shape)}")
        return self.emit(OpType.RESHAPE, [self.tensor(x)], shape)

    # ---- driver ----
    def run(self) -> Graph:
        for node in onnx_import.topological(self.model):
            self.node = node
            ins: list[Value | None] = [self.env[n] if n else None for n in node.input]
            if any(isinstance(v, Unknown) for v in ins):
                self._set_outputs(node, [Unknown() for _ in node.output])
                if subnet.is_edgekit_node(node) or node.domain == quantize.DOMAIN:
                    pass  # an EdgeKit network or int8 op after an unsupported node: that node is reported
                elif node.domain not in ("", "ai.onnx") and not self.plugins.find(node.domain, node.op_type):
                    self.unsupported.append(f"{fold.describe(node)}: {self._no_plugin(node)}")
                elif node.op_type not in LOWERINGS or node.domain not in ("", "ai.onnx"):
                    self.unsupported.append(fold.describe(node))
                continue
            outputs = self._node(node, ins)
            self._set_outputs(node, outputs)
        if self.unsupported:
            raise UnsupportedOpsError(self.unsupported)
        for name in self.model.outputs:
            value = self.env.get(name)
            if value is None:
                raise CompileError(f"graph output '{name}' is not produced by any node")
            if isinstance(value, Const):
                tensor = self.graph.add_const(name, _float32(value.value, f"output '{name}'"))
            else:
                assert isinstance(value, Dyn)
                tensor = self.onnx_dtype_output(name, value.name)
            self.graph.outputs.append(tensor)
            self.graph.output_names.append(name)
        return self.graph

    def onnx_dtype_output(self, name: str, tensor: str) -> str:
        """A network output that the ONNX model declares uint8 but that runs as canonical int8 (compiler/
        quantize.py) gets a QLUT back to uint8 (the same bytes + 128), so the caller sees the model's type."""
        t = self.graph.tensors[tensor]
        if t.dtype != INT8 or self.model.value_dtypes.get(name) != np.uint8:
            return tensor
        table = self.graph.add_const(f"{name}_to_uint8", np.arange(256, dtype=np.uint8), UINT8)
        out = self.graph.add(f"{name}_uint8", t.shape, dtype=UINT8)
        if t.qparams is not None:
            self.graph.tensors[out].qparams = (t.qparams[0], t.qparams[1] + 128)
        self.graph.ops.append(Op(OpType.QLUT, name, [tensor, table], [out], sources=[name]))
        return out

    def _set_outputs(self, node: onnx.NodeProto, values: Sequence[Value]) -> None:
        for name, value in zip(node.output, values):
            if name:
                self.env[name] = value
                if isinstance(value, Dyn):
                    tensor = self.graph.tensors[value.name]
                    if tensor.onnx_name is None:  # an alias (Identity) keeps its producer's name
                        tensor.onnx_name = name

    def _node(self, node: onnx.NodeProto, ins: list[Value | None]) -> list[Value]:
        if subnet.is_edgekit_node(node):  # a compiled EdgeKit network: inlined (compiler/subnet.py)
            return subnet.lower_node(self, node, ins)
        if node.domain == quantize.DOMAIN:  # an int8 op of compiler/quantize.py
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            try:
                return Q_LOWERINGS[node.op_type](self, node, ins, attrs)
            except Unsupported as exc:
                self.unsupported.append(f"{fold.describe(node)}: {exc}")
                return [Unknown() for _ in node.output]
        if node.domain not in ("", "ai.onnx"):  # a custom domain: a plugin op (never folded)
            try:
                return self._plugin_node(node, ins)
            except Unsupported as exc:
                self.unsupported.append(f"{fold.describe(node)}: {exc}")
                return [Unknown() for _ in node.output]
        known = [v for v in ins if v is not None]
        if all(isinstance(v, Const) for v in known) and node.op_type not in NEVER_FOLD:
            self.stats.folded_nodes += 1
            values = [v.value if isinstance(v, Const) else None for v in ins]
            return [Const(r) for r in fold.evaluate(node, values, self.model.opsets)]
        if node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx"):
            self.stats.folded_nodes += 1
            full = np.array(self.shape(known[0]), dtype=np.int64)
            if node.op_type == "Size":
                return [Const(np.array(int(np.prod(full)), dtype=np.int64))]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            # opset 15 start/end clamp like Python slices do
            return [Const(full[int(attrs.get("start", 0)) : attrs.get("end")])]
        lowering = LOWERINGS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        try:
            if lowering is None:
                raise Unsupported("")
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            results = lowering(self, node, ins, attrs)
        except Unsupported as exc:
            reason = str(exc)
            self.unsupported.append(fold.describe(node) + (f": {reason}" if reason else ""))
            return [Unknown() for _ in node.output]
        return results

    def _no_plugin(self, node: onnx.NodeProto) -> str:
        given = ", ".join(lib.name for lib in self.plugins.libraries) or "none"
        return (
            f"domain '{node.domain}' is not ONNX's and no plugin given registers '{node.domain}::"
            f"{node.op_type}' (plugins given: {given}): pass the plugin library that implements it, "
            "edgekit compile --plugin lib.so (compile_model(..., plugins=[...]))"
        )

    def _plugin_node(self, node: onnx.NodeProto, ins: list[Value | None]) -> list[Value]:
        """A node of a custom domain: a PLUGIN op of the --plugin library that registers it, with the
        node's attributes; its output shapes are the library's infer() (docs/plugins.md)."""
        op = self.plugins.find(node.domain, node.op_type)
        if op is None:
            raise Unsupported(self._no_plugin(node))
        attrs: dict[str, AttrValue] = {"ek.domain": node.domain, "ek.op_type": node.op_type}
        types: dict[str, AttrType] = {"ek.domain": AttrType.STRING, "ek.op_type": AttrType.STRING}
        for a in node.attribute:
            if a.name.startswith(plugins_mod.RESERVED_PREFIX):
                raise Unsupported(f"attribute '{a.name}': names starting with 'ek.' are reserved")
            value = helper.get_attribute_value(a)
            if a.type == onnx.AttributeProto.INT:
                attrs[a.name], types[a.name] = int(value), AttrType.INT
            elif a.type == onnx.AttributeProto.FLOAT:
                attrs[a.name], types[a.name] = float(value), AttrType.FLOAT
            elif a.type == onnx.AttributeProto.STRING:
                try:
                    attrs[a.name], types[a.name] = value.decode(), AttrType.STRING
                except UnicodeDecodeError:
                    raise Unsupported(f"attribute '{a.name}' is not UTF-8 text ({value!r})") from None
            elif a.type == onnx.AttributeProto.INTS:
                attrs[a.name], types[a.name] = [int(v) for v in value], AttrType.INTS
            elif a.type == onnx.AttributeProto.FLOATS:
                attrs[a.name], types[a.name] = [float(v) for v in value], AttrType.FLOATS
            else:
                raise Unsupported(
                    f"attribute '{a.name}' is of ONNX type {onnx.AttributeProto.AttributeType.Name(a.type)}; "
                    "plugin ops take INT, FLOAT, STRING, INTS and FLOATS"
                )
            if isinstance(attrs[a.name], list) and len(attrs[a.name]) > 64:  # type: ignore[arg-type]
                raise Unsupported(f"attribute '{a.name}' has more than 64 elements (the .ekm limit)")
        if any(v is None for v in ins):
            raise Unsupported("an input is absent (plugin ops take no absent inputs)")
        inputs = [self.tensor(v, f"input{i}") for i, v in enumerate(ins)]
        self.check_float(inputs)
        node_name = self.node.name or self.node.op_type
        try:
            shapes = self.plugins.infer(
                op,
                node_name,
                plugins_mod.typed_attrs(attrs, types),
                [self.graph.shape(n) for n in inputs],
                len(node.output),
            )
        except plugins_mod.PluginError as exc:
            raise CompileError(f"{self.where}: {exc}") from None
        outputs = []
        for index, shape in enumerate(shapes):
            if len(shape) > MAX_RANK:
                raise CompileError(f"{self.where}: output {index} of rank {len(shape)} (at most {MAX_RANK})")
            # a dynamic output (the plugin's dynamic_outputs): infer gave its bound
            dynamic = op.is_dynamic(index) and self.dynamic_output(node, index)
            outputs.append(
                self.graph.add(node.output[index] or f"{node_name}_out{index}", shape, dynamic=dynamic)
            )
        self.graph.ops.append(
            Op(OpType.PLUGIN, node_name, list(inputs), outputs, attrs, sources=[node_name], attr_types=types)
        )
        return [Dyn(name) for name in outputs]


# Never evaluated at compile time, even with constant inputs: random ops, and NonMaxSuppression, whose
# result size is the data's (it stays an op with a DYNAMIC output; TopK of constants folds).
NEVER_FOLD = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "NonMaxSuppression",
    }
)

Lowering = Callable[[StageLowering, onnx.NodeProto, list[Optional[Value]], dict[str, Any]], list[Value]]
LOWERINGS: dict[str, Lowering] = {}
Q_LOWERINGS: dict[str, Lowering] = {}  # the int8 nodes of compiler/quantize.py (its DOMAIN)

# Ops that also take int8 tensors (data movement: the same bytes in another order or selection).
INT8_MOVE_OPS = frozenset(
    {OpType.MAX_POOL, OpType.TRANSPOSE, OpType.RESHAPE, OpType.CONCAT, OpType.SLICE, OpType.RESIZE}
)


def lowering(*op_types: str) -> Callable[[Lowering], Lowering]:
    def register(fn: Lowering) -> Lowering:
        for op_type in op_types:
            LOWERINGS[op_type] = fn
        return fn

    return register


def _input(ins: list[Value | None], index: int) -> Value | None:
    return ins[index] if index < len(ins) else None


def _req(ins: list[Value | None], index: int, what: str) -> Value:
    value = _input(ins, index)
    if value is None:
        raise Unsupported(f"missing {what}")
    return value


def _no_extra_outputs(node: onnx.NodeProto, what: str) -> None:
    if any(node.output[1:]):
        raise Unsupported(f"its {what} output is used")


# ---- aliases ----
@lowering("Identity", "Dropout")
def _identity(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    if node.op_type == "Dropout":
        _no_extra_outputs(node, "mask")
        training = _input(ins, 2)
        if training is not None and bool(s.const(training, "training_mode").reshape(-1)[0]):
            raise Unsupported("training_mode is true")
    return [_req(ins, 0, "input")]


@lowering("Cast", "CastLike")
def _cast(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    if node.op_type == "Cast":
        target = np.dtype(helper.tensor_dtype_to_np_dtype(int(attrs.get("to", 0))))
    else:
        like = _req(ins, 1, "target_type")
        target = np.dtype(np.float32) if isinstance(like, Dyn) else s.const(like, "target_type").dtype
    if target != np.float32:
        raise CompileError(
            f"{s.where}: tensor '{node.output[0]}' would be {target} at run time; EdgeKit runs float32 only"
        )
    return [_req(ins, 0, "input")]


# ---- element-wise ----
_BINARY = {"Add": OpType.ADD, "Sub": OpType.SUB, "Mul": OpType.MUL, "Div": OpType.DIV}


@lowering("Add", "Sub", "Mul", "Div")
def _binary(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    a, b = _req(ins, 0, "A"), _req(ins, 1, "B")
    shape = _broadcast(s.shape(a), s.shape(b), s.where)
    return [s.emit(_BINARY[node.op_type], [s.tensor(a, "A"), s.tensor(b, "B")], shape)]


_UNARY = {
    "Relu": OpType.RELU,
    "Sigmoid": OpType.SIGMOID,
    "Tanh": OpType.TANH,
    "HardSwish": OpType.HARD_SWISH,
}


@lowering(*_UNARY)
def _unary(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "X")
    return [s.emit(_UNARY[node.op_type], [s.tensor(x)], s.shape(x))]


@lowering("LeakyRelu")
def _leaky(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "X")
    return [s.emit(OpType.LEAKY_RELU, [s.tensor(x)], s.shape(x), {"alpha": float(attrs.get("alpha", 0.01))})]


@lowering("HardSigmoid")
def _hard_sigmoid(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "X")
    params: dict[str, AttrValue] = {
        "alpha": float(attrs.get("alpha", 0.2)),
        "beta": float(attrs.get("beta", 0.5)),
    }
    return [s.emit(OpType.HARD_SIGMOID, [s.tensor(x)], s.shape(x), params)]


@lowering("Clip")
def _clip(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "X")
    lo, hi = float(attrs.get("min", -math.inf)), float(attrs.get("max", math.inf))
    if _input(ins, 1) is not None:
        lo = float(s.const(ins[1], "min").reshape(-1)[0])
    if _input(ins, 2) is not None:
        hi = float(s.const(ins[2], "max").reshape(-1)[0])
    # both bounds always written (an absent one as -inf / +inf): the op table gives them no default
    return [s.emit(OpType.CLIP, [s.tensor(x)], s.shape(x), {"min": lo, "max": hi})]


@lowering("PRelu")
def _prelu(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x, slope = _req(ins, 0, "X"), _req(ins, 1, "slope")
    shape = s.shape(x)
    if _broadcast(shape, s.shape(slope), s.where) != shape:
        raise Unsupported(f"slope {list(s.shape(slope))} broadcasts beyond X {list(shape)}")
    return [s.emit(OpType.PRELU, [s.tensor(x), s.tensor(slope, "slope")], shape)]


# ---- matrix products ----
@lowering("MatMul")
def _matmul(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    a, b = _req(ins, 0, "A"), _req(ins, 1, "B")
    sa, sb = s.shape(a), s.shape(b)
    if not sa or not sb:
        raise CompileError(f"{s.where}: MatMul of a scalar")
    if sa[-1] != sb[-2 if len(sb) > 1 else 0]:
        raise CompileError(f"{s.where}: MatMul of {list(sa)} and {list(sb)}: inner dimensions differ")
    if isinstance(b, Const) and len(sb) == 2 and isinstance(a, Dyn):
        weights = s.graph.add_const(f"{node.name or 'matmul'}_W", _float32(b.value, f"{s.where}: B").T)
        return [s.emit(OpType.FULLY_CONNECTED, [a.name, weights], (*sa[:-1], sb[1]))]
    a2 = s.reshape(a, (1, *sa)) if len(sa) == 1 else a
    b2 = s.reshape(b, (*sb, 1)) if len(sb) == 1 else b
    ta, tb = s.shape(a2), s.shape(b2)
    batch = _broadcast(ta[:-2], tb[:-2], s.where)
    y = s.emit(OpType.MATMUL, [s.tensor(a2, "A"), s.tensor(b2, "B")], (*batch, ta[-2], tb[-1]))
    final = (*batch, *([sa[-2]] if len(sa) > 1 else []), *([sb[-1]] if len(sb) > 1 else []))
    return [s.reshape(y, final)]


@lowering("Gemm")
def _gemm(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    a, b, c = _req(ins, 0, "A"), _req(ins, 1, "B"), _input(ins, 2)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    trans_a, trans_b = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    sa, sb = s.shape(a), s.shape(b)
    if len(sa) != 2 or len(sb) != 2:
        raise CompileError(f"{s.where}: Gemm takes 2-D A and B, got {list(sa)} and {list(sb)}")
    if trans_a:
        if isinstance(a, Const):
            a = Const(a.value.T)
        else:
            a = s.emit(OpType.TRANSPOSE, [s.tensor(a, "A")], (sa[1], sa[0]), {"perm": [1, 0]})
    m, k = s.shape(a)
    n = sb[0] if trans_b else sb[1]
    if (sb[1] if trans_b else sb[0]) != k:
        raise CompileError(f"{s.where}: Gemm inner dimensions differ ({list(sa)}, {list(sb)})")
    y: Value
    bias_done = c is None or beta == 0.0
    if isinstance(b, Const):
        w = _float32(b.value, f"{s.where}: B")
        w = (w if trans_b else w.T) * np.float32(alpha)
        inputs: list[str | None] = [s.tensor(a, "A"), s.graph.add_const(f"{node.name or 'gemm'}_W", w)]
        if (
            c is not None
            and isinstance(c, Const)
            and c.value.size in (1, n)
            and c.value.ndim <= 2
            and not bias_done
        ):
            if c.value.size == 1 or c.value.shape[-1] == n:
                bias = np.broadcast_to(_float32(c.value, "C").reshape(-1) * np.float32(beta), (n,))
                inputs.append(s.graph.add_const(f"{node.name or 'gemm'}_bias", bias))
                bias_done = True
        y = s.emit(OpType.FULLY_CONNECTED, inputs, (m, n))
    else:
        bt = s.tensor(b, "B")
        if trans_b:
            bt = s.emit(OpType.TRANSPOSE, [bt], (sb[1], sb[0]), {"perm": [1, 0]}).name
        y = s.emit(OpType.MATMUL, [s.tensor(a, "A"), bt], (m, n))
        if alpha != 1.0:
            y = s.emit(OpType.MUL, [y.name, s.graph.add_const("alpha", np.float32(alpha))], (m, n))
    if not bias_done:
        assert c is not None
        if isinstance(c, Const):
            cv: Value = Const(_float32(c.value, "C") * np.float32(beta))
        else:
            cv = c
            if beta != 1.0:
                cv = s.emit(
                    OpType.MUL, [s.tensor(c, "C"), s.graph.add_const("beta", np.float32(beta))], s.shape(c)
                )
        shape = _broadcast((m, n), s.shape(cv), s.where)
        assert isinstance(y, Dyn)
        y = s.emit(OpType.ADD, [y.name, s.tensor(cv, "C")], shape)
    return [y]


# ---- convolutions ----
def _conv_params(attrs: Mapping[str, Any], kernel: Sequence[int]) -> tuple[list[int], list[int]]:
    strides = [int(v) for v in attrs.get("strides", [1, 1])]
    dilations = [int(v) for v in attrs.get("dilations", [1, 1])]
    if len(strides) != 2 or len(dilations) != 2 or min(strides) < 1 or min(dilations) < 1:
        raise Unsupported(f"strides {strides} / dilations {dilations}")
    return strides, dilations


def _to_2d(s: StageLowering, x: Value, what: str) -> tuple[Value, bool]:
    """Run 1-D spatial ops ([N, C, L]) as 2-D ones ([N, C, 1, L])."""
    shape = s.shape(x)
    if len(shape) == 4:
        return x, False
    if len(shape) == 3:
        return s.reshape(x, (shape[0], shape[1], 1, shape[2])), True
    raise Unsupported(f"{what} is {len(shape)}-D (only 1-D and 2-D spatial ops are supported)")


def _attrs_to_2d(attrs: dict[str, Any]) -> dict[str, Any]:
    """The attributes of a 1-D op for the same op on [N, C, 1, L]."""
    out = dict(attrs)
    for key, one in (("strides", 1), ("dilations", 1), ("kernel_shape", 1), ("output_padding", 0)):
        if key in out:
            out[key] = [one, *out[key]]
    if "pads" in out:
        if len(out["pads"]) != 2:
            raise Unsupported(f"pads {list(out['pads'])} of a 1-D op: expected 2 values (begin, end)")
        out["pads"] = [0, out["pads"][0], 0, out["pads"][1]]
    if "output_shape" in out:
        out["output_shape"] = [1, *out["output_shape"][-1:]]
    return out


def _conv_operands(
    s: StageLowering, ins: list[Value | None], attrs: dict[str, Any], float_weights: bool = True
) -> tuple[Value, bool, dict[str, Any], np.ndarray, tuple[int, int, int, int], int]:
    """What Conv, ConvTranspose and the int8 QConv share: X lifted to 2-D (and whether it was 1-D), the
    attributes to match, the weights of rank 4 (float32, or as they are for QConv), X's (N, C, H, W)
    and the group."""
    x, one_d = _to_2d(s, _req(ins, 0, "X"), "X")
    w = s.const(_req(ins, 1, "W"), "W (weights)")
    if float_weights:
        w = _float32(w, f"{s.where}: W")
    if w.ndim != (3 if one_d else 4):
        raise Unsupported(f"weights of rank {w.ndim} for an input of rank {3 if one_d else 4}")
    if one_d:
        attrs, w = _attrs_to_2d(attrs), w[:, :, None, :]
    n, c, h, wd = s.shape(x)
    return x, one_d, attrs, w, (n, c, h, wd), int(attrs.get("group", 1))


def _conv_inputs(
    s: StageLowering, x: Value, weights: np.ndarray, bias: Value | None, prefix: str
) -> list[str | None]:
    """The operands of CONV / CONV_TRANSPOSE: X, the weights in EdgeKit's layout, the bias if any."""
    inputs: list[str | None] = [s.tensor(x), s.graph.add_const(f"{prefix}_W", weights)]
    if bias is not None:
        inputs.append(s.graph.add_const(f"{prefix}_bias", _float32(s.const(bias, "B").reshape(-1), "B")))
    return inputs


def _conv_geometry(
    s: StageLowering, attrs: Mapping[str, Any], w_shape: Sequence[int], chw: Sequence[int], group: int
) -> tuple[dict[str, AttrValue], int, int]:
    """CONV's / QCONV's pads, strides, dilations and group attributes, and its output H and W, for
    weights [M, C/group, KH, KW] over an input of C x H x W (a CompileError where they disagree)."""
    m, cg, kh, kw = w_shape
    c, h, wd = chw
    if group < 1 or c != cg * group or m % group:
        raise CompileError(
            f"{s.where}: {c} input channels, weights {list(w_shape)} and group {group} disagree"
        )
    strides, dil = _conv_params(attrs, (kh, kw))
    ek = [(kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1]
    pads = _spatial_pads(attrs, (h, wd), ek, strides)
    oh = (h + pads[0] + pads[2] - ek[0]) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - ek[1]) // strides[1] + 1
    if oh < 1 or ow < 1:
        raise CompileError(f"{s.where}: the kernel is larger than the padded input")
    return {"pads": pads, "strides": strides, "dilations": dil, "group": group}, oh, ow


@lowering("Conv")
def _conv(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x, one_d, attrs, w, (n, c, h, wd), group = _conv_operands(s, ins, attrs)
    m = w.shape[0]
    params, oh, ow = _conv_geometry(s, attrs, w.shape, (c, h, wd), group)
    w_ek = np.ascontiguousarray(w.transpose(0, 2, 3, 1))
    inputs = _conv_inputs(s, x, w_ek, _input(ins, 2), node.name or "conv")
    y = s.emit(OpType.CONV, inputs, (n, m, oh, ow), params)
    return [s.reshape(y, (n, m, ow)) if one_d else y]


@lowering("ConvTranspose")
def _conv_transpose(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x, one_d, attrs, w, (n, c, h, wd), group = _conv_operands(s, ins, attrs)
    cw, mg, kh, kw = w.shape
    if group < 1 or cw != c or c % group:
        raise CompileError(
            f"{s.where}: {c} input channels, weights {list(w.shape)} and group {group} disagree"
        )
    m = mg * group
    strides, dil = _conv_params(attrs, (kh, kw))
    adj = [int(v) for v in attrs.get("output_padding", [0, 0])]
    ek = [(kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1]
    auto = _str(attrs.get("auto_pad", "NOTSET"))
    out_shape = [int(v) for v in attrs.get("output_shape", [])][-2:]
    if len(adj) != 2 or len(out_shape) not in (0, 2):
        raise Unsupported(f"output_padding {adj} / output_shape {out_shape}: one value per spatial axis")
    if out_shape or auto in ("SAME_UPPER", "SAME_LOWER"):
        if not out_shape:
            out_shape = [h * strides[0], wd * strides[1]]
        begins, ends = [], []
        for i, size in enumerate((h, wd)):
            total = strides[i] * (size - 1) + adj[i] + ek[i] - out_shape[i]
            if total < 0:
                raise Unsupported(f"output_shape {out_shape} needs negative padding")
            small, big = total // 2, total - total // 2
            upper = auto == "SAME_UPPER"
            begins.append(small if upper else big)
            ends.append(big if upper else small)
        pads = [*begins, *ends]
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    else:
        pads = _spatial_pads(attrs, (h, wd), ek, strides)
    oh = (h - 1) * strides[0] + ek[0] - pads[0] - pads[2] + adj[0]
    ow = (wd - 1) * strides[1] + ek[1] - pads[1] - pads[3] + adj[1]
    if oh < 1 or ow < 1:
        raise CompileError(f"{s.where}: empty output")
    cg = c // group
    w_ek = w.reshape(group, cg, mg, kh, kw).transpose(0, 2, 3, 4, 1).reshape(m, kh, kw, cg)
    inputs = _conv_inputs(s, x, w_ek, _input(ins, 2), node.name or "deconv")
    params: dict[str, AttrValue] = {
        "pads": pads,
        "strides": strides,
        "dilations": dil,
        "adjustments": adj,
        "group": group,
    }
    y = s.emit(OpType.CONV_TRANSPOSE, inputs, (n, m, oh, ow), params)
    return [s.reshape(y, (n, m, ow)) if one_d else y]


# ---- pools ----
def _pool_output(
    s: StageLowering,
    hw: Sequence[int],
    ek: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    ceil: bool,
) -> list[int]:
    """A pool's output H, W (``ek``: the dilated window)."""
    out = []
    for i, size in enumerate(hw):
        span = size + pads[i] + pads[i + 2] - ek[i]
        if span < 0:
            raise CompileError(f"{s.where}: the window is larger than the padded input")
        o = (-(-span // strides[i]) if ceil else span // strides[i]) + 1
        if ceil and (o - 1) * strides[i] >= size + pads[i]:
            o -= 1  # a window may not start in the end padding
        out.append(o)
    return out


@lowering("MaxPool", "AveragePool")
def _pool(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    _no_extra_outputs(node, "Indices")
    x, one_d = _to_2d(s, _req(ins, 0, "X"), "X")
    if one_d:
        attrs = _attrs_to_2d(attrs)
    n, c, h, w = s.shape(x)
    kernel = [int(v) for v in attrs.get("kernel_shape", [])]
    if len(kernel) != 2:
        raise Unsupported(f"kernel_shape {kernel}")
    strides, dil = _conv_params(attrs, kernel)
    is_max = node.op_type == "MaxPool"
    if not is_max and dil != [1, 1]:
        raise Unsupported("AveragePool with dilations")
    ek = [(kernel[0] - 1) * dil[0] + 1, (kernel[1] - 1) * dil[1] + 1]
    pads = _spatial_pads(attrs, (h, w), ek, strides)
    out = _pool_output(s, (h, w), ek, strides, pads, bool(attrs.get("ceil_mode", 0)))
    params: dict[str, AttrValue] = {"kernel": kernel, "strides": strides, "pads": pads}
    if is_max:
        params["dilations"] = dil
    else:
        params["count_include_pad"] = int(attrs.get("count_include_pad", 0))
    y = s.emit(OpType.MAX_POOL if is_max else OpType.AVERAGE_POOL, [s.tensor(x)], (n, c, *out), params)
    return [s.reshape(y, (n, c, out[1])) if one_d else y]


@lowering("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "X")
    shape = s.shape(x)
    if len(shape) < 3:
        raise CompileError(f"{s.where}: input of rank {len(shape)}")
    out = (*shape[:2], *[1] * (len(shape) - 2))
    if len(shape) == 4 and node.op_type == "GlobalAveragePool":
        return [s.emit(OpType.GLOBAL_AVERAGE_POOL, [s.tensor(x)], out)]
    if len(shape) == 4:
        params: dict[str, AttrValue] = {"kernel": list(shape[2:]), "strides": [1, 1], "pads": [0, 0, 0, 0]}
        params["dilations"] = [1, 1]
        return [s.emit(OpType.MAX_POOL, [s.tensor(x)], out, params)]
    if node.op_type == "GlobalMaxPool":
        raise Unsupported(f"GlobalMaxPool on a {len(shape)}-D input")
    axes = list(range(2, len(shape)))
    return [s.emit(OpType.REDUCE_MEAN, [s.tensor(x)], out, {"axes": axes, "keepdims": 1})]


# ---- shape ops ----
@lowering("Flatten")
def _flatten(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "input")
    shape = s.shape(x)
    axis = int(attrs.get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    return [s.reshape(x, (outer, int(np.prod(shape[axis:], dtype=np.int64))))]


@lowering("Reshape")
def _reshape(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "data")
    shape = s.shape(x)
    if s.model.opset < 5:
        target = [int(v) for v in attrs.get("shape", [])]
    else:
        target = s.ints(_req(ins, 1, "shape"), "shape")
    allowzero = int(attrs.get("allowzero", 0))
    out = [shape[i] if (d == 0 and not allowzero and i < len(shape)) else d for i, d in enumerate(target)]
    if out.count(-1) > 1:
        raise CompileError(f"{s.where}: shape {target} has more than one -1")
    total = math.prod(shape)
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or total % known:
            raise CompileError(f"{s.where}: cannot reshape {list(shape)} to {target}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total or min(out, default=0) < 0:
        raise CompileError(f"{s.where}: cannot reshape {list(shape)} to {target}")
    return [s.reshape(x, out)]


def _axes(s: StageLowering, ins: list[Value | None], attrs: Mapping[str, Any], rank: int) -> list[int] | None:
    if "axes" in attrs:
        raw = [int(a) for a in attrs["axes"]]
    elif _input(ins, 1) is not None:
        raw = s.ints(ins[1], "axes")
    else:
        return None
    axes = [a + rank if a < 0 else a for a in raw]
    if any(not 0 <= a < rank for a in axes) or len(set(axes)) != len(axes):
        raise CompileError(f"{s.where}: axes {raw} out of range for rank {rank}")
    return sorted(axes)


@lowering("Squeeze")
def _squeeze(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "data")
    shape = s.shape(x)
    axes = _axes(s, ins, attrs, len(shape))
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    if any(shape[a] != 1 for a in axes):
        raise CompileError(f"{s.where}: cannot squeeze axes {axes} of {list(shape)}")
    return [s.reshape(x, [d for i, d in enumerate(shape) if i not in axes])]


@lowering("Unsqueeze")
def _unsqueeze(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "data")
    shape = list(s.shape(x))
    count = len(attrs["axes"]) if "axes" in attrs else len(s.ints(_req(ins, 1, "axes"), "axes"))
    axes = _axes(s, ins, attrs, len(shape) + count)
    assert axes is not None
    for a in axes:
        shape.insert(a, 1)
    return [s.reshape(x, shape)]


@lowering("Transpose")
def _transpose(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "data")
    shape = s.shape(x)
    perm = [int(p) for p in attrs.get("perm", list(range(len(shape)))[::-1])]
    if sorted(perm) != list(range(len(shape))):
        raise CompileError(f"{s.where}: perm {perm} does not fit rank {len(shape)}")
    if perm == sorted(perm):
        return [x]
    return [s.emit(OpType.TRANSPOSE, [s.tensor(x)], tuple(shape[p] for p in perm), {"perm": perm})]


@lowering("Concat")
def _concat(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    values = [v for v in ins if v is not None]
    shapes = [s.shape(v) for v in values]
    rank = len(shapes[0])
    axis = int(attrs.get("axis", 0))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        raise CompileError(f"{s.where}: axis {attrs.get('axis')} out of range for rank {rank}")
    if any(len(sh) != rank for sh in shapes):
        listed = [list(x) for x in shapes]
        raise CompileError(f"{s.where}: cannot concatenate shapes of different ranks {listed}")
    keep = [(v, sh) for v, sh in zip(values, shapes) if sh[axis] > 0]  # ONNX allows empty inputs
    for _v, sh in keep:
        if any(sh[i] != shapes[0][i] for i in range(rank) if i != axis):
            raise CompileError(
                f"{s.where}: cannot concatenate shapes {[list(x) for x in shapes]} on axis {axis}"
            )
    if len(keep) == 1:
        return [keep[0][0]]
    out = list(keep[0][1])
    out[axis] = sum(sh[axis] for _v, sh in keep)
    return [
        s.emit(
            OpType.CONCAT,
            [s.tensor(v, f"in{i}") for i, (v, _sh) in enumerate(keep)],
            tuple(out),
            {"axis": axis},
        )
    ]


@lowering("Softmax")
def _softmax(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "input")
    shape = s.shape(x)
    rank = len(shape)
    if rank == 0:
        raise CompileError(f"{s.where}: Softmax of a scalar")
    axis = int(attrs.get("axis", -1 if s.model.opset >= 13 else 1))
    axis = axis + rank if axis < 0 else axis
    if s.model.opset >= 13 or axis == rank - 1:
        return [s.emit(OpType.SOFTMAX, [s.tensor(x)], shape, {"axis": axis})]
    # before opset 13: softmax over the trailing dims flattened into one
    flat = (int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)))
    y = s.emit(OpType.SOFTMAX, [s.tensor(s.reshape(x, flat))], flat, {"axis": 1})
    return [s.reshape(y, shape)]


_COORDINATES = {"half_pixel": 0, "asymmetric": 1, "align_corners": 2, "pytorch_half_pixel": 3}
_NEAREST = {"round_prefer_floor": 0, "round_prefer_ceil": 1, "floor": 2, "ceil": 3}


def _resize_scale(size: int, out: int) -> float:
    """out/size as f32, nudged up when needed so floor(size * scale) == out (the file's rule)."""
    scale = np.float32(out / size)
    while math.floor(size * float(scale)) < out:
        scale = np.nextafter(scale, np.float32(np.inf))
    return float(scale)


@lowering("Resize", "Upsample")
def _resize(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "X")
    shape = s.shape(x)
    if len(shape) != 4:
        raise Unsupported(f"{len(shape)}-D input (only 4-D NCHW resizes on H, W)")
    mode = _str(attrs.get("mode", "nearest"))
    legacy = node.op_type == "Upsample" or s.model.opset < 11
    if legacy:
        if "scales" in attrs:
            scales: list[float] | None = [float(v) for v in attrs["scales"]]
        else:
            scales = [float(v) for v in s.const(_req(ins, 1, "scales"), "scales").reshape(-1)]
        sizes: list[int] | None = None
        coordinate, nearest = "asymmetric", "floor"
    else:
        for attr, ok in (("antialias", 0), ("exclude_outside", 0)):
            if int(attrs.get(attr, 0)) != ok:
                raise Unsupported(f"{attr}={attrs[attr]}")
        if _str(attrs.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
            raise Unsupported(f"keep_aspect_ratio_policy {_str(attrs['keep_aspect_ratio_policy'])}")
        coordinate = _str(attrs.get("coordinate_transformation_mode", "half_pixel"))
        nearest = _str(attrs.get("nearest_mode", "round_prefer_floor"))
        scales_v, sizes_v = _input(ins, 2), _input(ins, 3)
        scales_arr = (
            s.const(scales_v, "scales").astype(np.float64).reshape(-1) if scales_v is not None else None
        )
        sizes_arr = s.const(sizes_v, "sizes").astype(np.int64).reshape(-1) if sizes_v is not None else None
        scales = [float(v) for v in scales_arr] if scales_arr is not None and scales_arr.size else None
        sizes = [int(v) for v in sizes_arr] if sizes_arr is not None and sizes_arr.size else None
        axes = [int(a) for a in attrs.get("axes", [])]
        if axes:
            axes = [a + 4 if a < 0 else a for a in axes]
            given = len(scales) if scales is not None else len(sizes) if sizes is not None else len(axes)
            if not all(0 <= a < 4 for a in axes) or len(set(axes)) != len(axes) or given != len(axes):
                raise CompileError(
                    f"{s.where}: axes {attrs['axes']} do not name {given} distinct axes of the rank-4 input"
                )
            full_s, full_z = [1.0] * 4, [int(d) for d in shape]
            for i, a in enumerate(axes):
                if scales is not None:
                    full_s[a] = scales[i]
                if sizes is not None:
                    full_z[a] = sizes[i]
            scales = full_s if scales is not None else None
            sizes = full_z if sizes is not None else None
    if mode in ("linear", "bilinear"):
        mode_code = 1
    elif mode == "nearest":
        mode_code = 0
    else:
        raise Unsupported(f"mode {mode}")
    if coordinate not in _COORDINATES:
        raise Unsupported(f"coordinate_transformation_mode {coordinate}")
    if nearest not in _NEAREST:
        raise Unsupported(f"nearest_mode {nearest}")
    if sizes is not None:
        if len(sizes) != 4 or sizes[0] != shape[0] or sizes[1] != shape[1]:
            raise Unsupported(f"sizes {sizes} (only H and W may change)")
        out = [int(sizes[2]), int(sizes[3])]
        hw = [_resize_scale(shape[2], out[0]), _resize_scale(shape[3], out[1])]
    elif scales is not None:
        if len(scales) != 4 or scales[0] != 1.0 or scales[1] != 1.0:
            raise Unsupported(f"scales {scales} (only H and W may change)")
        hw = [float(np.float32(scales[2])), float(np.float32(scales[3]))]
        if not all(math.isfinite(v) and v > 0 for v in hw):
            raise CompileError(f"{s.where}: scales {scales}: H and W scales must be finite and > 0")
        out = [math.floor(shape[2] * hw[0]), math.floor(shape[3] * hw[1])]
    else:
        raise CompileError(f"{s.where}: neither scales nor sizes given")
    if min(out) < 1:
        raise CompileError(f"{s.where}: empty output")
    if out == list(shape[2:]) and coordinate != "tf_crop_and_resize":
        if mode_code == 0 or coordinate in (
            "half_pixel",
            "pytorch_half_pixel",
            "asymmetric",
            "align_corners",
        ):
            return [x]  # same size: every mode maps each pixel to itself
    params: dict[str, AttrValue] = {
        "mode": mode_code,
        "coordinate": _COORDINATES[coordinate],
        "nearest": _NEAREST[nearest],
        "scales": hw,
    }
    return [s.emit(OpType.RESIZE, [s.tensor(x)], (shape[0], shape[1], *out), params)]


@lowering("Pad")
def _pad(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "data")
    shape = s.shape(x)
    rank = len(shape)
    mode = _str(attrs.get("mode", "constant"))
    if s.model.opset < 11:
        pads = [int(p) for p in attrs.get("pads", [])]
        value = float(attrs.get("value", 0.0))
    else:
        pads = s.ints(_req(ins, 1, "pads"), "pads")
        cv = _input(ins, 2)
        value = 0.0
        if cv is not None:
            values = s.const(cv, "constant_value").reshape(-1)
            if values.size != 1:
                raise CompileError(f"{s.where}: constant_value has {values.size} values (expected one)")
            value = float(values[0])
        axes_v = _input(ins, 3)
        if axes_v is not None:
            axes = [a + rank if a < 0 else a for a in s.ints(axes_v, "axes")]
            full = [0] * (2 * rank)
            for i, a in enumerate(axes):
                full[a], full[a + rank] = pads[i], pads[i + len(axes)]
            pads = full
    if len(pads) != 2 * rank:
        raise CompileError(f"{s.where}: {len(pads)} pads for rank {rank}")
    if any(p < 0 for p in pads):
        raise Unsupported(f"negative pads {pads}")
    modes = {"constant": 0, "reflect": 1, "edge": 2}
    if mode not in modes:
        raise Unsupported(f"mode {mode}")
    if mode == "reflect" and any(pads[i] >= shape[i] or pads[i + rank] >= shape[i] for i in range(rank)):
        raise Unsupported(f"reflect pads {pads} not smaller than the input {list(shape)}")
    if not any(pads):
        return [x]
    out = tuple(shape[i] + pads[i] + pads[i + rank] for i in range(rank))
    params: dict[str, AttrValue] = {"pads": pads, "mode": modes[mode], "value": value}
    return [s.emit(OpType.PAD, [s.tensor(x)], out, params)]


@lowering("BatchNormalization")
def _batchnorm(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    _no_extra_outputs(node, "running statistics")
    if int(attrs.get("training_mode", 0)):
        raise Unsupported("training_mode=1")
    x = _req(ins, 0, "X")
    shape = s.shape(x)
    if len(shape) < 2:
        raise CompileError(f"{s.where}: input of rank {len(shape)}")
    gamma, beta, mean, var = (
        s.const(_req(ins, i, what), what).astype(np.float64).reshape(-1)
        for i, what in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var"))
    )
    for what, values in (("scale", gamma), ("B", beta), ("mean", mean), ("var", var)):
        if values.size != shape[1]:
            raise CompileError(
                f"{s.where}: {what} has {values.size} values for the {shape[1]} channels of X {list(shape)}"
            )
    eps = float(attrs.get("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    bshape = (shape[1], *[1] * (len(shape) - 2))
    y = s.emit(
        OpType.MUL,
        [s.tensor(x), s.graph.add_const(f"{node.name or 'bn'}_scale", scale.reshape(bshape))],
        shape,
    )
    return [
        s.emit(
            OpType.ADD,
            [y.name, s.graph.add_const(f"{node.name or 'bn'}_shift", shift.reshape(bshape))],
            shape,
        )
    ]


@lowering("Slice")
def _slice(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "data")
    shape = s.shape(x)
    rank = len(shape)
    if s.model.opset < 10:
        starts = [int(v) for v in attrs.get("starts", [])]
        ends = [int(v) for v in attrs.get("ends", [])]
        axes = [int(v) for v in attrs.get("axes", range(len(starts)))]
        steps = [1] * len(starts)
    else:
        starts = s.ints(_req(ins, 1, "starts"), "starts")
        ends = s.ints(_req(ins, 2, "ends"), "ends")
        axes = s.ints(ins[3], "axes") if _input(ins, 3) is not None else list(range(len(starts)))
        steps = s.ints(ins[4], "steps") if _input(ins, 4) is not None else [1] * len(starts)
    full_start, full_step, out = [0] * rank, [1] * rank, list(shape)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis + rank if axis < 0 else axis
        if not 0 <= axis < rank or step == 0:
            raise CompileError(f"{s.where}: bad axis {axis} or step {step}")
        dim = shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
            count = max(0, -(-(end - start) // step))
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
            count = max(0, -(-(start - end) // -step))
        if count == 0:
            raise Unsupported(f"empty slice on axis {axis}")
        full_start[axis], full_step[axis], out[axis] = start, step, count
    if tuple(out) == shape and all(st == 1 for st in full_step):
        return [x]
    return [s.emit(OpType.SLICE, [s.tensor(x)], tuple(out), {"starts": full_start, "steps": full_step})]


@lowering("ReduceMean")
def _reduce_mean(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "data")
    shape = s.shape(x)
    keep = int(attrs.get("keepdims", 1))
    axes = _axes(s, ins, attrs, len(shape))
    if not axes:
        if int(attrs.get("noop_with_empty_axes", 0)):
            return [x]
        axes = list(range(len(shape)))
    out = (
        tuple(1 if i in axes else d for i, d in enumerate(shape))
        if keep
        else tuple(d for i, d in enumerate(shape) if i not in axes)
    )
    return [s.emit(OpType.REDUCE_MEAN, [s.tensor(x)], out, {"axes": axes, "keepdims": keep})]


# ---- selection ops with data-dependent output sizes (.ekm 1.3) ----
def _scalar_operand(s: StageLowering, value: Value | None, what: str, dtype: str) -> str | None:
    """An optional 1-element operand of ``dtype`` (a constant, or a run-time tensor of that dtype)."""
    if value is None:
        return None
    if isinstance(value, Const):
        array = np.asarray(value.value)
        if array.size != 1:
            raise CompileError(f"{s.where}: {what} has {array.size} elements (it must have 1)")
        if dtype == INT64 and array.dtype.kind not in "iu":
            raise CompileError(f"{s.where}: {what} is {array.dtype} (it must be int64)")
        return s.graph.add_const(f"{s.node.name or s.node.op_type}_{what}", array.reshape(1), dtype)
    if not isinstance(value, Dyn):
        raise Unsupported(f"{what} is missing")
    tensor = s.graph.tensors[value.name]
    if tensor.dtype != dtype or int(np.prod(tensor.shape)) != 1:
        raise Unsupported(
            f"{what} is a run-time {tensor.dtype} tensor of shape {list(tensor.shape)}; it must be "
            f"{dtype} of 1 element"
        )
    return value.name


def _emit_multi(
    s: StageLowering,
    op_type: OpType,
    inputs: Sequence[str | None],
    outputs: Sequence[tuple[Shape, str, bool]],
    attrs: dict[str, AttrValue],
) -> list[Value]:
    """An op of several outputs, each (shape, dtype, dynamic), named after the node's outputs."""
    node_name = s.node.name or s.node.op_type
    names = []
    for index, (shape, dtype, dynamic) in enumerate(outputs):
        base = s.node.output[index] if index < len(s.node.output) and s.node.output[index] else node_name
        names.append(s.graph.add(base, shape, dtype=dtype, dynamic=dynamic))
    s.graph.ops.append(Op(op_type, node_name, list(inputs), names, attrs, sources=[node_name]))
    return [Dyn(name) for name in names]


@lowering("TopK")
def _top_k(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "input X")
    shape = s.shape(x)
    if not shape:
        raise Unsupported("X is a scalar")
    axis = int(attrs.get("axis", -1))
    if not -len(shape) <= axis < len(shape):
        raise CompileError(f"{s.where}: axis {axis} is outside X's rank {len(shape)}")
    axis %= len(shape)
    largest, ordered = int(attrs.get("largest", 1)), int(attrs.get("sorted", 1))
    if largest not in (0, 1) or ordered not in (0, 1):
        raise CompileError(f"{s.where}: largest {largest} / sorted {ordered} must be 0 or 1")
    k_value = Const(np.array([int(attrs["k"])], np.int64)) if "k" in attrs else _req(ins, 1, "K")  # opset 1
    dim = shape[axis]
    if isinstance(k_value, Const):
        k = int(np.asarray(k_value.value).reshape(-1)[0])
        if not 0 <= k <= dim:
            raise CompileError(f"{s.where}: K is {k}, outside 0 .. {dim} (the size of X's axis {axis})")
        dynamic = k == 0  # an empty result: a DYNAMIC output that reports 0
        bound = dim if dynamic else k
    else:
        dynamic, bound = True, dim
    k_name = _scalar_operand(s, k_value, "K", INT64)
    out_shape = tuple(bound if i == axis else d for i, d in enumerate(shape))
    flags = [s.dynamic_output(node, i) if dynamic else False for i in range(2)]
    return _emit_multi(
        s,
        OpType.TOP_K,
        [s.tensor(x, "X"), k_name],
        [(out_shape, FLOAT32, flags[0]), (out_shape, INT64, flags[1])],
        {"axis": axis, "largest": largest, "sorted": ordered},
    )


@lowering("NonMaxSuppression")
def _non_max_suppression(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    boxes, scores = _req(ins, 0, "boxes"), _req(ins, 1, "scores")
    bshape, sshape = s.shape(boxes), s.shape(scores)
    if (
        len(bshape) != 3
        or bshape[2] != 4
        or len(sshape) != 3
        or sshape[0] != bshape[0]
        or sshape[2] != bshape[1]
    ):
        raise CompileError(
            f"{s.where}: boxes {list(bshape)} and scores {list(sshape)} must be [B,N,4] and [B,C,N]"
        )
    center = int(attrs.get("center_point_box", 0))
    if center not in (0, 1):
        raise CompileError(f"{s.where}: center_point_box is {center} (0 or 1)")
    batches, classes, n = bshape[0], sshape[1], bshape[1]
    max_out = _input(ins, 2)
    per = n
    if max_out is None:
        per = 0
    elif isinstance(max_out, Const):
        per = max(0, min(n, int(np.asarray(max_out.value).reshape(-1)[0])))
    operands = [
        s.tensor(boxes, "boxes"),
        s.tensor(scores, "scores"),
        _scalar_operand(s, max_out, "max_output_boxes_per_class", INT64),
        _scalar_operand(s, _input(ins, 3), "iou_threshold", FLOAT32),
        _scalar_operand(s, _input(ins, 4), "score_threshold", FLOAT32),
    ]
    while operands[-1] is None:
        operands.pop()
    s.check_float(operands[:2])
    rows = max(1, batches * classes * per)  # a bound of 0 rows is stored as 1 (dims are >= 1)
    return _emit_multi(
        s,
        OpType.NON_MAX_SUPPRESSION,
        operands,
        [((rows, 3), INT64, s.dynamic_output(node, 0))],
        {"center_point_box": center},
    )


# ---- quantized models (compiler/quantize.py folds QDQ groups into the nodes lowered here) ----
def _qparams(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], data_dtype: str
) -> tuple[float, int]:
    """A QuantizeLinear / DequantizeLinear's per-tensor (scale, zero point) for a run-time tensor of
    ``data_dtype``: a uint8 zero point is shifted to canonical int8 when the tensor runs as int8."""
    scale = s.const(_req(ins, 1, "scale"), "scale")
    if scale.size != 1:
        raise Unsupported(
            "per-axis quantization of a run-time tensor (EdgeKit quantizes activations per tensor; "
            "per-channel scales are for constant weights)"
        )
    zp_v = _input(ins, 2)
    zp = s.const(zp_v, "zero_point") if zp_v is not None else None
    if zp is not None and zp.dtype not in (np.int8, np.uint8):
        raise Unsupported(f"{zp.dtype} quantization (EdgeKit runs 8-bit quantization: int8, uint8)")
    if zp is None and node.op_type == "QuantizeLinear":
        out = int(node_attr_int(node, "output_dtype"))
        zp_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(out)) if out else np.dtype(np.uint8)
        if zp_dtype not in (np.int8, np.uint8):
            raise Unsupported(f"{zp_dtype} quantization (EdgeKit runs 8-bit quantization: int8, uint8)")
    else:
        zp_dtype = zp.dtype if zp is not None else np.dtype(data_dtype)
    z = int(zp.reshape(-1)[0]) if zp is not None else 0
    if zp_dtype == np.uint8 and data_dtype == INT8:
        z -= 128
    return float(np.float32(scale.reshape(-1)[0])), z


def node_attr_int(node: onnx.NodeProto, name: str, default: int = 0) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(helper.get_attribute_value(a))
    return default


@lowering("QuantizeLinear")
def _quantize_linear(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "x")
    if not isinstance(x, Dyn) or s.graph.tensors[x.name].dtype != FLOAT32:
        raise Unsupported("x is not a float32 run-time tensor")
    # canonical int8, except a network output, which keeps the model's type
    is_output = node.output[0] in s.model.outputs
    zp_v = _input(ins, 2)
    declared = s.const(zp_v, "zero_point").dtype if zp_v is not None else None
    out_dtype = (
        UINT8
        if is_output and declared in (None, np.uint8) and not node_attr_int(node, "output_dtype")
        else INT8
    )
    if is_output and node_attr_int(node, "output_dtype") == onnx.TensorProto.UINT8:
        out_dtype = UINT8
    scale, zp = _qparams(s, node, ins, out_dtype)
    y = s.emit(OpType.QUANTIZE, [x.name], s.shape(x), {"scale": scale, "zero_point": zp}, dtype=out_dtype)
    s.graph.tensors[y.name].qparams = (scale, zp)
    return [y]


@lowering("DequantizeLinear")
def _dequantize_linear(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "x")
    if not isinstance(x, Dyn) or s.graph.tensors[x.name].dtype not in QUANTIZED_DTYPES:
        raise Unsupported("x is not an int8 or uint8 run-time tensor")
    tensor = s.graph.tensors[x.name]
    scale, zp = _qparams(s, node, ins, tensor.dtype)
    if x.name in s.graph.inputs and tensor.qparams is None:
        tensor.qparams = (scale, zp)  # the network input's IOS record carries it
    return [
        s.emit(OpType.DEQUANTIZE, [x.name], s.shape(x), {"scale": scale, "zero_point": zp}, dtype=FLOAT32)
    ]


def _q_attrs(attrs: Mapping[str, Any], names: Sequence[str]) -> dict[str, AttrValue]:
    out: dict[str, AttrValue] = {}
    for name in names:
        value = attrs[name]
        out[name] = float(value) if name.endswith("scale") else int(value)
    return out


_Y_ATTRS = ("x_scale", "x_zero_point", "y_scale", "y_zero_point")
_CLAMP = ("q_min", "q_max")


def _q_weights(s: StageLowering, ins: list[Value | None], prefix: str, channels: int) -> list[str | None]:
    """W, w_scale and the optional bias of QCONV / QFULLY_CONNECTED as constants."""
    w_scale = s.const(_req(ins, 2, "w_scale"), "w_scale").astype(np.float32).reshape(-1)
    if w_scale.size not in (1, channels):
        raise CompileError(f"{s.where}: {w_scale.size} weight scales for {channels} output channels")
    inputs: list[str | None] = [s.graph.add_const(f"{prefix}_w_scale", w_scale)]
    bias = _input(ins, 3)
    if bias is not None:
        inputs.append(s.graph.add_const(f"{prefix}_bias", s.const(bias, "bias").astype(np.int32), INT32))
    return inputs


def _qconv(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x, one_d, attrs, w, (n, c, h, wd), group = _conv_operands(s, ins, attrs, float_weights=False)
    m = w.shape[0]
    params, oh, ow = _conv_geometry(s, attrs, w.shape, (c, h, wd), group)
    prefix = node.name or "qconv"
    w_ek = s.graph.add_const(f"{prefix}_W", np.ascontiguousarray(w.transpose(0, 2, 3, 1)), INT8)
    inputs = [s.tensor(x), w_ek, *_q_weights(s, ins, prefix, m)]
    params.update(_q_attrs(attrs, (*_Y_ATTRS, *_CLAMP)))
    y = s.emit(OpType.QCONV, inputs, (n, m, oh, ow), params, dtype=INT8)
    return [s.reshape(y, (n, m, ow)) if one_d else y]


def _qfully_connected(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "X")
    w = s.const(_req(ins, 1, "W"), "W")
    shape = s.shape(x)
    if w.ndim != 2 or not shape or shape[-1] != w.shape[1]:
        raise CompileError(f"{s.where}: X {list(shape)} and weights {list(w.shape)} do not fit")
    prefix = node.name or "qfc"
    inputs = [s.tensor(x), s.graph.add_const(f"{prefix}_W", w, INT8), *_q_weights(s, ins, prefix, w.shape[0])]
    params = _q_attrs(attrs, (*_Y_ATTRS, *_CLAMP))
    return [s.emit(OpType.QFULLY_CONNECTED, inputs, (*shape[:-1], w.shape[0]), params, dtype=INT8)]


def _qbinary(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    a, b = _req(ins, 0, "A"), _req(ins, 1, "B")
    shape = _broadcast(s.shape(a), s.shape(b), s.where)
    params = _q_attrs(
        attrs, ("x_scale", "x_zero_point", "b_scale", "b_zero_point", "y_scale", "y_zero_point", *_CLAMP)
    )
    op = OpType.QADD if node.op_type == "QAdd" else OpType.QMUL
    return [s.emit(op, [s.tensor(a, "A", INT8), s.tensor(b, "B", INT8)], shape, params, dtype=INT8)]


def _qpool(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x, one_d = _to_2d(s, _req(ins, 0, "X"), "X")
    if one_d:
        attrs = _attrs_to_2d(attrs)
    n, c, h, w = s.shape(x)
    q = _q_attrs(attrs, _Y_ATTRS)
    if node.op_type == "QGlobalAveragePool":
        y = s.emit(OpType.QGLOBAL_AVERAGE_POOL, [s.tensor(x)], (n, c, 1, 1), q, dtype=INT8)
        return [s.reshape(y, (n, c, 1)) if one_d else y]
    kernel = [int(v) for v in attrs.get("kernel_shape", [])]
    if len(kernel) != 2:
        raise Unsupported(f"kernel_shape {kernel}")
    strides, dil = _conv_params(attrs, kernel)
    if dil != [1, 1]:
        raise Unsupported("AveragePool with dilations")
    pads = _spatial_pads(attrs, (h, w), kernel, strides)
    out = _pool_output(s, (h, w), kernel, strides, pads, bool(attrs.get("ceil_mode", 0)))
    params: dict[str, AttrValue] = {"kernel": kernel, "strides": strides, "pads": pads}
    params["count_include_pad"] = int(attrs.get("count_include_pad", 0))
    params.update(q)
    y = s.emit(OpType.QAVERAGE_POOL, [s.tensor(x)], (n, c, *out), params, dtype=INT8)
    return [s.reshape(y, (n, c, out[1])) if one_d else y]


def _qlut(
    s: StageLowering, node: onnx.NodeProto, ins: list[Value | None], attrs: dict[str, Any]
) -> list[Value]:
    x = _req(ins, 0, "X")
    table = s.const(_req(ins, 1, "table"), "table")
    dtype = str(table.dtype)
    return [
        s.emit(
            OpType.QLUT,
            [s.tensor(x), s.graph.add_const(f"{node.name}_table", table, dtype)],
            s.shape(x),
            dtype=dtype,
        )
    ]


Q_LOWERINGS.update(
    {
        "QConv": _qconv,
        "QFullyConnected": _qfully_connected,
        "QAdd": _qbinary,
        "QMul": _qbinary,
        "QAveragePool": _qpool,
        "QGlobalAveragePool": _qpool,
        "QLut": _qlut,
    }
)
