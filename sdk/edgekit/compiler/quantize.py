"""Quantized ONNX models: QDQ pairs folded into EdgeKit's int8 ops (docs/model-format.md "Quantized ops").

A QDQ model (onnxruntime.quantization's default) computes each op in float between
DequantizeLinear (DQ) and QuantizeLinear (Q) nodes: ``DQ(x), DQ(w) -> Conv -> Q``. This pass, run on
the ONNX graph before lowering, replaces such groups by nodes of an internal domain that lowering turns
into QCONV, QFULLY_CONNECTED, QADD, QMUL, QAVERAGE_POOL, QGLOBAL_AVERAGE_POOL and QLUT, and runs
data-movement ops (MaxPool, Reshape, Transpose, Concat, nearest Resize, ...) on the int8 tensors
themselves. QOperator models (QLinearConv, QLinearMatMul and onnxruntime's com.microsoft QLinear*
ops) are first rewritten to the same QDQ form, so both take one path. What has no int8 kernel keeps
running in float: its DQ and Q nodes lower to DEQUANTIZE and QUANTIZE ops.

Run-time int8 tensors are canonical: a uint8 tensor with zero point z is stored as int8 with zero
point z - 128 (the same real values), so the kernels take one activation type. Weights must be
symmetric (zero point 0 after that shift), as XNNPACK's and onnxruntime's int8 weights are; others
keep their op in float.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from edgekit.compiler import fold, onnx_import
from edgekit.compiler.graph import CompileError
from edgekit.compiler.onnx_import import OnnxModel

DOMAIN = "ai.edgekit.quantized"  # the internal nodes this pass makes (lower.py lowers them)
MS_DOMAIN = "com.microsoft"

# Ops that move or select int8 values without arithmetic: run on int8 when their input and output
# quantization agree.
MOVE_OPS = frozenset(
    {
        "MaxPool",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Transpose",
        "Identity",
        "Slice",
        "Resize",
        "Concat",
    }
)
# Element-wise ops of one tensor (other inputs constant scalars or attributes): tabulated as a QLUT.
UNARY_LUT_OPS = frozenset(
    {
        "Relu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu",
        "Softplus", "Softsign", "Neg", "Abs", "Exp", "Erf", "Gelu", "Mish", "ThresholdedRelu", "Identity",
    }
)  # fmt: skip
SCALAR_LUT_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"})


@dataclass(frozen=True)
class QParams:
    """A per-tensor quantization in canonical int8 form: real = (q - zero_point) * scale."""

    scale: float  # a float32 value, finite and > 0
    zero_point: int  # -128..127


@dataclass
class QuantStats:
    fused: int = 0  # float ops folded with their Q/DQ nodes into int8 ops
    int8_moves: int = 0  # data-movement ops run on int8 tensors
    expanded: int = 0  # QOperator nodes rewritten to QDQ form


def _describe(node: onnx.NodeProto) -> str:
    return fold.describe(node)


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _quantize(real: np.ndarray, q: QParams) -> np.ndarray:
    """ONNX QuantizeLinear into canonical int8, in float32 (rint: ties to even)."""
    scaled = np.asarray(real, np.float32) / np.float32(q.scale)
    with np.errstate(invalid="ignore"):
        out = np.rint(scaled) + np.float32(q.zero_point)
    out = np.where(np.isnan(out), np.float32(q.zero_point), out)
    return np.clip(out, -128, 127).astype(np.int8)


def _dequantize(values: np.ndarray, q: QParams) -> np.ndarray:
    return ((values.astype(np.int32) - q.zero_point).astype(np.float32) * np.float32(q.scale)).astype(
        np.float32
    )


_LEVELS = np.arange(-128, 128, dtype=np.int32)


class _Pass:
    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self.stats = QuantStats()
        self.consts: dict[str, np.ndarray] = dict(model.constants)
        for node in model.nodes:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
                value = fold.constant_node_value(node)
                if value is not None:
                    self.consts[node.output[0]] = value
        self.new_consts: dict[str, np.ndarray] = {}
        self.names: set[str] = set(self.consts) | {i.name for i in model.inputs}
        for node in model.nodes:
            self.names.update(node.output)
        self.outputs = set(model.outputs)
        self.qinfo: dict[str, QParams] = {}  # run-time canonical int8 tensors
        self.producer: dict[str, onnx.NodeProto] = {}
        self.users: dict[str, list[onnx.NodeProto]] = {}

    # ---- names, constants ----
    def unique(self, base: str) -> str:
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def add_const(self, base: str, value: np.ndarray) -> str:
        name = self.unique(base)
        self.consts[name] = value
        self.new_consts[name] = value
        return name

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def index(self, nodes: Sequence[onnx.NodeProto]) -> None:
        self.producer = {out: n for n in nodes for out in n.output if out}
        self.users = {}
        for n in nodes:
            for name in n.input:
                if name:
                    self.users.setdefault(name, []).append(n)

    # ---- Q / DQ parameters ----
    def params_of(
        self, node: onnx.NodeProto, data_dtype: np.dtype[np.generic] | None = None
    ) -> QParams | None:
        """The per-tensor canonical parameters of a Q or DQ node (constant scale and zero point), or None
        when they are per-axis, run-time or not 8-bit. Raises on invalid ones (check() ran first)."""
        scale = self.const(node.input[1]) if len(node.input) > 1 else None
        if scale is None or scale.size != 1:
            return None
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zp = self.const(zp_name)
        if zp_name and zp is None:
            return None
        dtype = self.q_dtype(node, zp, data_dtype)
        if dtype is None:
            return None
        z = int(zp.reshape(-1)[0]) if zp is not None else 0
        return QParams(float(np.float32(scale.reshape(-1)[0])), z - 128 if dtype == np.uint8 else z)

    def q_dtype(
        self, node: onnx.NodeProto, zp: np.ndarray | None, data_dtype: np.dtype[np.generic] | None
    ) -> np.dtype[np.generic] | None:
        """The 8-bit type of the quantized side of a Q/DQ node: int8, uint8, or None (another type)."""
        if zp is not None:
            dtype = zp.dtype
        elif node.op_type == "DequantizeLinear" and data_dtype is not None:
            dtype = data_dtype
        elif node.op_type == "QuantizeLinear":
            out = int(_attrs(node).get("output_dtype", 0) or 0)  # type: ignore[call-overload]
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(out)) if out else np.dtype(np.uint8)
        else:
            return None
        return dtype if dtype in (np.int8, np.uint8) else None

    def check(self, node: onnx.NodeProto) -> None:
        """Refuse quantization parameters no quantized model may have: a scale that is not finite and
        > 0, a zero point whose type or value does not fit, a per-axis scale that does not match its axis."""
        where = _describe(node)
        scale = self.const(node.input[1]) if len(node.input) > 1 else None
        if scale is None:
            return  # a run-time scale: lowering says it is not supported
        values = scale.astype(np.float64).reshape(-1)
        if scale.size == 0 or not np.all(np.isfinite(values)) or np.any(values <= 0):
            bad = values[~np.isfinite(values) | (values <= 0)]
            shown = float(bad[0]) if bad.size else "empty"
            raise CompileError(f"{where}: scale {shown} is not valid: every scale must be finite and > 0")
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zp = self.const(zp_name)
        if zp is not None:
            if zp.shape != scale.shape and not (zp.size == 1 and scale.size == 1):
                raise CompileError(
                    f"{where}: the zero point's shape {list(zp.shape)} differs from the scale's "
                    f"{list(scale.shape)}"
                )
            if zp.dtype == np.int32:
                if np.any(zp != 0):
                    raise CompileError(
                        f"{where}: zero point {int(zp.reshape(-1)[np.flatnonzero(zp)[0]])} is out of range: "
                        "int32 data (a bias) must have zero point 0"
                    )
            elif zp.dtype not in (np.int8, np.uint8):
                raise CompileError(
                    f"{where}: zero point of type {zp.dtype}: EdgeKit runs 8-bit quantization "
                    "(int8, uint8) only"
                )
        if scale.ndim > 1:
            raise CompileError(
                f"{where}: scale of shape {list(scale.shape)} (a scalar or a 1-D per-axis scale)"
            )
        if scale.ndim == 1 and scale.size > 1:
            data = self.const(node.input[0])
            axis = int(_attrs(node).get("axis", 1))  # type: ignore[call-overload]
            if data is not None:
                if not -data.ndim <= axis < data.ndim:
                    raise CompileError(f"{where}: axis {axis} is outside the rank-{data.ndim} input")
                if data.shape[axis] != scale.size:
                    raise CompileError(
                        f"{where}: per-channel scale of {scale.size} values along axis {axis}, but the input "
                        f"{list(data.shape)} has {data.shape[axis]} there (mismatched per-channel axis)"
                    )

    # ---- pattern helpers ----
    def single_user(self, name: str) -> onnx.NodeProto | None:
        users = self.users.get(name, [])
        if len(users) != 1 or name in self.outputs:
            return None
        return users[0]

    def dq_source(self, name: str) -> tuple[str, QParams] | None:
        """``name`` = DQ(x) of a run-time int8 tensor x, per tensor: (x, its parameters)."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            return None
        x = node.input[0]
        if x not in self.qinfo:
            return None
        params = self.params_of(node, np.dtype(np.int8))
        if params is None:
            return None
        return x, params

    def dq_weights(self, name: str) -> tuple[np.ndarray, np.ndarray, int] | None:
        """``name`` = DQ(constant) with symmetric weights: (int8 values, float32 scales, axis)."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            return None
        data = self.const(node.input[0])
        scale = self.const(node.input[1]) if len(node.input) > 1 else None
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zp = self.const(zp_name)
        if data is None or scale is None or (zp_name and zp is None):
            return None
        if data.dtype == np.uint8:
            if zp is None or np.any(zp.astype(np.int32) != 128):
                return None
            q = (data.astype(np.int16) - 128).astype(np.int8)
        elif data.dtype == np.int8:
            if zp is not None and np.any(zp != 0):
                return None
            q = data
        else:
            return None
        axis = int(_attrs(node).get("axis", 1)) % max(data.ndim, 1)  # type: ignore[call-overload]
        scales = np.asarray(scale, np.float32).reshape(-1)
        return q, scales, axis if scales.size > 1 else -1

    def const_float(self, name: str) -> np.ndarray | None:
        """A float constant, or the dequantized value of DQ(constant)."""
        value = self.const(name)
        if value is not None:
            return value.astype(np.float32) if value.dtype.kind == "f" else None
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        ins = [self.const(n) if n else None for n in node.input]
        if any(v is None for v, n in zip(ins, node.input) if n):
            return None
        return np.asarray(fold.evaluate(node, ins, self.model.opsets)[0], np.float32)

    def q_sink(self, name: str) -> tuple[list[onnx.NodeProto], onnx.NodeProto, QParams, int, int] | None:
        """``name``'s only use is Q (after at most one Relu/Clip): (the nodes consumed, the Q node, its
        parameters, q_min, q_max)."""
        user = self.single_user(name)
        if user is None:
            return None
        consumed: list[onnx.NodeProto] = []
        lo, hi = -math.inf, math.inf
        if user.op_type in ("Relu", "Clip") and user.domain in ("", "ai.onnx"):
            if user.op_type == "Relu":
                lo = 0.0
            else:
                attrs = _attrs(user)
                lo_v = (
                    self.const(user.input[1]) if len(user.input) > 1 and user.input[1] else attrs.get("min")
                )
                hi_v = (
                    self.const(user.input[2]) if len(user.input) > 2 and user.input[2] else attrs.get("max")
                )
                if (len(user.input) > 1 and user.input[1] and lo_v is None) or (
                    len(user.input) > 2 and user.input[2] and hi_v is None
                ):
                    return None
                lo = -math.inf if lo_v is None else float(np.asarray(lo_v).reshape(-1)[0])
                hi = math.inf if hi_v is None else float(np.asarray(hi_v).reshape(-1)[0])
            consumed.append(user)
            after = self.single_user(user.output[0])
            if after is None:
                return None
            user = after
        if (
            user.op_type != "QuantizeLinear"
            or user.domain not in ("", "ai.onnx")
            or user.output[0] in self.outputs
        ):
            return None
        params = self.params_of(user)
        if params is None:
            return None
        q_min = -128 if lo == -math.inf else int(_quantize(np.array([lo]), params)[0])
        q_max = 127 if hi == math.inf else int(_quantize(np.array([hi]), params)[0])
        return [*consumed, user], user, params, q_min, q_max

    def node(
        self, op_type: str, inputs: list[str], output: str, name: str, **attrs: object
    ) -> onnx.NodeProto:
        node = helper.make_node(op_type, inputs, [output], name=name, domain=DOMAIN)
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
        return node

    def lut(self, x: str, table: np.ndarray, output: str, name: str) -> onnx.NodeProto:
        return self.node("QLut", [x, self.add_const(f"{name}_table", table.astype(np.int8))], output, name)

    def requant_table(self, src: QParams, dst: QParams) -> np.ndarray:
        return _quantize(_dequantize(_LEVELS, src), dst)

    # ---- the rewrite ----
    def run(self) -> OnnxModel:
        nodes = self.explicit_zero_points(self.expand(onnx_import.topological(self.model)))
        for node in nodes:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in ("", "ai.onnx"):
                self.check(node)
        self.index(nodes)
        for info in self.model.inputs:
            if info.dtype == np.int8:
                users = [u for u in self.users.get(info.name, []) if u.op_type == "DequantizeLinear"]
                params = self.params_of(users[0], np.dtype(np.int8)) if users else None
                if params is not None:
                    self.qinfo[info.name] = params
        out: list[onnx.NodeProto] = []
        skip: set[int] = set()
        for node in nodes:
            if id(node) in skip:
                continue
            replaced = self.rewrite(node)
            if replaced is None:
                out.append(node)
                self.propagate(node)
                continue
            new_nodes, consumed = replaced
            skip.update(id(n) for n in consumed)
            out.extend(new_nodes)
        constants = dict(self.model.constants)
        constants.update(self.new_consts)
        return OnnxModel(
            proto=self.model.proto,
            name=self.model.name,
            opset=self.model.opset,
            opsets=self.model.opsets,
            nodes=out,
            constants=constants,
            inputs=self.model.inputs,
            outputs=self.model.outputs,
            value_dtypes=self.model.value_dtypes,
        )

    def explicit_zero_points(self, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
        """Q/DQ nodes without a zero point get an explicit one of their 8-bit type: a Q's is uint8 unless
        output_dtype says otherwise, a DQ's is its input's type. Run-time tensors are canonical int8 from
        here on, so a DQ without a zero point would otherwise read a uint8 tensor as int8 (off by 128)."""
        dtypes: dict[str, np.dtype[np.generic]] = {i.name: np.dtype(i.dtype) for i in self.model.inputs}
        out: list[onnx.NodeProto] = []
        for node in nodes:
            qdq = node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in ("", "ai.onnx")
            if qdq and len(node.input) > 1 and (len(node.input) < 3 or not node.input[2]):
                scale = self.const(node.input[1])
                if node.op_type == "QuantizeLinear":
                    dtype = self.q_dtype(node, None, None)
                else:
                    data = self.const(node.input[0])
                    dtype = data.dtype if data is not None else dtypes.get(node.input[0])
                if scale is not None and dtype in (np.int8, np.uint8):
                    copy = onnx.NodeProto()
                    copy.CopyFrom(node)
                    del copy.input[2:]
                    zp = np.zeros(scale.shape, dtype)
                    copy.input.append(self.add_const(f"{node.name or node.output[0]}_zero_point", zp))
                    node = copy
            if qdq and node.op_type == "QuantizeLinear" and len(node.input) > 2:
                q_zp = self.const(node.input[2])
                if q_zp is not None:
                    dtypes[node.output[0]] = q_zp.dtype
            elif node.op_type in MOVE_OPS and node.input and node.input[0] in dtypes and node.output:
                dtypes[node.output[0]] = dtypes[node.input[0]]
            out.append(node)
        return out

    def propagate(self, node: onnx.NodeProto) -> None:
        """Track which run-time tensors are canonical int8 and their parameters."""
        if node.domain not in ("", "ai.onnx"):
            return
        if node.op_type == "QuantizeLinear":
            x = node.input[0]
            if x not in self.consts and node.output[0] not in self.outputs:
                params = self.params_of(node)
                if params is not None:
                    self.qinfo[node.output[0]] = params
        elif node.op_type in MOVE_OPS and node.input and node.input[0] in self.qinfo:
            params = self.qinfo[node.input[0]]
            if node.op_type == "Concat" and any(self.qinfo.get(n) != params for n in node.input):
                return
            if node.op_type == "Resize" and _attrs(node).get("mode", b"nearest") not in (
                b"nearest",
                "nearest",
            ):
                return
            self.qinfo[node.output[0]] = params

    def rewrite(self, node: onnx.NodeProto) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]] | None:
        if node.domain not in ("", "ai.onnx"):
            return None
        op = node.op_type
        if not node.output or not node.output[0]:
            return None
        name = node.name or f"{op}_{node.output[0]}"
        if op == "QuantizeLinear":
            return self.requantize(node, name)
        sink = self.q_sink(node.output[0])
        if sink is None:
            return None
        consumed, q_node, y, q_min, q_max = sink
        out = q_node.output[0]
        yattrs = {"y_scale": y.scale, "y_zero_point": y.zero_point}
        result: list[onnx.NodeProto] | None = None
        if op == "Conv":
            result = self.conv(node, name, out, yattrs, q_min, q_max)
        elif op in ("Gemm", "MatMul"):
            result = self.fully_connected(node, name, out, yattrs, q_min, q_max)
        elif op in ("Add", "Mul"):
            result = self.binary(node, name, out, yattrs, q_min, q_max)
        elif op in ("AveragePool", "GlobalAveragePool") and not consumed[:-1]:
            src = self.dq_source(node.input[0])
            if src is not None and len(node.output) == 1:
                x, xq = src
                kind = "QAveragePool" if op == "AveragePool" else "QGlobalAveragePool"
                new = helper.make_node(kind, [x], [out], name=name, domain=DOMAIN)
                new.attribute.extend(node.attribute)
                new.attribute.extend(
                    helper.make_attribute(k, v)
                    for k, v in {"x_scale": xq.scale, "x_zero_point": xq.zero_point, **yattrs}.items()
                )
                result = [new]
        if result is None and not consumed[:-1]:
            if op in MOVE_OPS:
                result = self.move(node, name, out, y)
            elif op in UNARY_LUT_OPS or op in SCALAR_LUT_OPS:
                result = self.elementwise_lut(node, name, out, y)
        if result is None:
            return None
        self.stats.fused += 1
        self.qinfo[out] = y
        return result, [node, *consumed]

    def requantize(
        self, node: onnx.NodeProto, name: str
    ) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]] | None:
        """Q(DQ(x)): an alias when the parameters agree, else a QLUT from one to the other."""
        src = self.dq_source(node.input[0])
        if src is None or node.output[0] in self.outputs:
            return None
        y = self.params_of(node)
        if y is None:
            return None
        x, xq = src
        self.qinfo[node.output[0]] = y
        if xq == y:
            alias = helper.make_node("Identity", [x], [node.output[0]], name=name)
            return [alias], [node]
        return [self.lut(x, self.requant_table(xq, y), node.output[0], name)], [node]

    def conv(
        self, node: onnx.NodeProto, name: str, out: str, yattrs: Mapping[str, object], q_min: int, q_max: int
    ) -> list[onnx.NodeProto] | None:
        src = self.dq_source(node.input[0])
        weights = self.dq_weights(node.input[1]) if len(node.input) > 1 else None
        if src is None or weights is None:
            return None
        x, xq = src
        w, w_scale, axis = weights
        if axis not in (-1, 0):
            return None  # per-channel along another axis than the output channels: stays float
        bias = self.bias(node.input[2] if len(node.input) > 2 else "", xq, w_scale, w.shape[0], node)
        if bias is False:
            return None
        inputs = [x, self.add_const(f"{name}_Wq", w), self.add_const(f"{name}_w_scale", w_scale)]
        if bias is not None:
            inputs.append(self.add_const(f"{name}_bias_q", bias))  # type: ignore[arg-type]
        new = helper.make_node("QConv", inputs, [out], name=name, domain=DOMAIN)
        new.attribute.extend(node.attribute)
        new.attribute.extend(self.q_attrs(xq, yattrs, q_min, q_max))
        return [new]

    def bias(
        self, name: str, xq: QParams, w_scale: np.ndarray, channels: int, node: onnx.NodeProto
    ) -> np.ndarray | bool | None:
        """The int32 bias at scale x_scale * w_scale[m] (None: no bias; False: not constant)."""
        if not name:
            return None
        value = self.const_float(name)
        if value is None:
            return False
        value = value.reshape(-1)
        if value.size == 1 and channels > 1:
            value = np.repeat(value, channels)
        if value.size != channels:
            return False
        scale = (np.float32(xq.scale) * w_scale.astype(np.float32)).astype(np.float32)
        q = np.rint(value.astype(np.float64) / scale.astype(np.float64))
        if np.any(np.abs(q) > 2**31 - 1):
            raise CompileError(
                f"{_describe(node)}: the bias does not fit int32 at scale x_scale * w_scale "
                f"(largest {float(np.max(np.abs(q))):.3g})"
            )
        return q.astype(np.int32)

    def q_attrs(
        self, xq: QParams, yattrs: Mapping[str, object], q_min: int, q_max: int
    ) -> list[onnx.AttributeProto]:
        values = {
            "x_scale": xq.scale,
            "x_zero_point": xq.zero_point,
            **yattrs,
            "q_min": q_min,
            "q_max": q_max,
        }
        return [helper.make_attribute(k, v) for k, v in values.items()]

    def fully_connected(
        self, node: onnx.NodeProto, name: str, out: str, yattrs: Mapping[str, object], q_min: int, q_max: int
    ) -> list[onnx.NodeProto] | None:
        src = self.dq_source(node.input[0])
        weights = self.dq_weights(node.input[1]) if len(node.input) > 1 else None
        if src is None or weights is None:
            return None
        x, xq = src
        w, w_scale, axis = weights
        if w.ndim != 2:
            return None
        bias_name = ""
        if node.op_type == "Gemm":
            attrs = _attrs(node)
            if attrs.get("transA", 0) or float(attrs.get("alpha", 1.0)) != 1.0:  # type: ignore[arg-type]
                return None
            if len(node.input) > 2 and node.input[2]:
                if float(attrs.get("beta", 1.0)) != 1.0:  # type: ignore[arg-type]
                    return None
                bias_name = node.input[2]
            trans_b = bool(attrs.get("transB", 0))
        else:
            trans_b = False
        if not trans_b:  # W [K, N] -> [N, K]; a per-channel scale is along N (axis 1)
            w, axis = np.ascontiguousarray(w.T), {-1: -1, 1: 0, 0: 1}[axis]
        if axis not in (-1, 0):
            return None
        bias = self.bias(bias_name, xq, w_scale, w.shape[0], node)
        if bias is False:
            return None
        inputs = [x, self.add_const(f"{name}_Wq", w), self.add_const(f"{name}_w_scale", w_scale)]
        if bias is not None:
            inputs.append(self.add_const(f"{name}_bias_q", bias))  # type: ignore[arg-type]
        new = helper.make_node("QFullyConnected", inputs, [out], name=name, domain=DOMAIN)
        new.attribute.extend(self.q_attrs(xq, yattrs, q_min, q_max))
        return [new]

    def operand(self, name: str) -> tuple[str, QParams] | None:
        """An int8 operand of QADD/QMUL: DQ of a run-time tensor, or DQ of a per-tensor int8 constant."""
        src = self.dq_source(name)
        if src is not None:
            return src
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        data = self.const(node.input[0])
        params = self.params_of(node, data.dtype if data is not None else None)
        if data is None or params is None or data.dtype not in (np.int8, np.uint8):
            return None
        values = (data.astype(np.int16) - 128).astype(np.int8) if data.dtype == np.uint8 else data
        return self.add_const(f"{name}_q", values), params

    def binary(
        self, node: onnx.NodeProto, name: str, out: str, yattrs: Mapping[str, object], q_min: int, q_max: int
    ) -> list[onnx.NodeProto] | None:
        a = self.operand(node.input[0])
        b = self.operand(node.input[1])
        if a is None or b is None or (a[0] in self.consts and b[0] in self.consts):
            return None
        kind = "QAdd" if node.op_type == "Add" else "QMul"
        values = {
            "x_scale": a[1].scale,
            "x_zero_point": a[1].zero_point,
            "b_scale": b[1].scale,
            "b_zero_point": b[1].zero_point,
            **yattrs,
            "q_min": q_min,
            "q_max": q_max,
        }
        return [self.node(kind, [a[0], b[0]], out, name, **values)]

    def move(self, node: onnx.NodeProto, name: str, out: str, y: QParams) -> list[onnx.NodeProto] | None:
        """DQ -> a data-movement op -> Q: the op on the int8 tensor (+ a QLUT if Q's parameters differ)."""
        op = node.op_type
        if op == "Resize" and _attrs(node).get("mode", b"nearest") not in (b"nearest", "nearest"):
            return None
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            return None
        count = len(node.input) if op == "Concat" else 1
        sources = [self.dq_source(n) for n in node.input[:count]]
        if any(s is None for s in sources):
            return None
        first = sources[0]
        assert first is not None
        # a Concat's inputs are requantized to the output's parameters (one rounding, as Q does)
        xq = y if op == "Concat" else first[1]
        new_inputs: list[str] = []
        extra: list[onnx.NodeProto] = []
        for k, src in enumerate(sources):
            assert src is not None
            if src[1] == xq:
                new_inputs.append(src[0])
            else:
                t = self.unique(f"{name}_in{k}_requant")
                extra.append(self.lut(src[0], self.requant_table(src[1], xq), t, f"{name}_in{k}_requant"))
                new_inputs.append(t)
        new_inputs += list(node.input[count:])
        moved_out = out if xq == y else self.unique(f"{name}_int8")
        new = helper.make_node(op, new_inputs, [moved_out], name=name, domain=node.domain)
        new.attribute.extend(node.attribute)
        self.stats.int8_moves += 1
        self.qinfo[moved_out] = xq
        result = [*extra, new]
        if moved_out != out:
            result.append(self.lut(moved_out, self.requant_table(xq, y), out, f"{name}_requant"))
        return result

    def elementwise_lut(
        self, node: onnx.NodeProto, name: str, out: str, y: QParams
    ) -> list[onnx.NodeProto] | None:
        """An element-wise function of one int8 tensor, tabulated over its 256 values."""
        src = self.dq_source(node.input[0]) if node.input else None
        if src is None or len(node.output) != 1:
            return None
        x, xq = src
        others: list[np.ndarray | None] = []
        for k, other in enumerate(node.input[1:], start=1):
            if not other:
                others.append(None)
                continue
            value = self.const_float(other)
            if value is None or (node.op_type in SCALAR_LUT_OPS and (value.size != 1 or value.ndim > 1)):
                return None
            if node.op_type in SCALAR_LUT_OPS and k != 1:
                return None
            others.append(value)
        if node.op_type in SCALAR_LUT_OPS and not others:
            return None
        levels = _dequantize(_LEVELS, xq)
        if node.op_type in SCALAR_LUT_OPS and others[0] is not None:
            others[0] = others[0].reshape(())
        try:
            real = fold.evaluate(node, [levels, *others], self.model.opsets)[0]
        except CompileError:
            return None
        real = np.asarray(real, np.float32).reshape(-1)
        if real.size != 256:
            return None
        return [self.lut(x, _quantize(real, y), out, name)]

    # ---- QOperator -> QDQ ----
    def expand(self, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
        out: list[onnx.NodeProto] = []
        for node in nodes:
            spec = _QOPERATOR.get((node.domain or "ai.onnx", node.op_type))
            if spec is None:
                out.append(node)
                continue
            expanded = self.expand_one(node, spec)
            if expanded is None:
                out.append(node)  # left for lowering to report
            else:
                for made in expanded:  # the QOperator node's attributes, now an ONNX op's
                    try:
                        onnx_import.check_node(made, self.model.opset)
                    except CompileError as exc:
                        raise CompileError(f"{_describe(node)}, as {exc}") from None
                self.stats.expanded += 1
                out.extend(expanded)
        return out

    def expand_one(self, node: onnx.NodeProto, spec: _QOp) -> list[onnx.NodeProto] | None:
        name = node.name or f"{node.op_type}_{node.output[0]}"
        ins = list(node.input) + [""] * 12
        made: list[onnx.NodeProto] = []
        float_inputs: list[str] = []
        for k, (data, scale, zp, axis) in enumerate(spec.quantized(len(node.input))):
            if not ins[data]:
                float_inputs.append("")
                continue
            t = self.unique(f"{name}_dq{k}")
            dq_in = [ins[data], ins[scale]] + ([ins[zp]] if ins[zp] else [])
            if spec.float_op == "Gemm" and k == 1:  # QGemm's B: per column, or per row when transposed
                axis = 0 if _attrs(node).get("transB", 0) else 1
            dq = helper.make_node("DequantizeLinear", dq_in, [t], name=f"{name}_dq{k}")
            if axis is not None:
                dq.attribute.append(helper.make_attribute("axis", axis))
            made.append(dq)
            float_inputs.append(t)
        if spec.bias is not None and ins[spec.bias]:
            x_scale = self.const(ins[spec.quantized(len(node.input))[0][1]])
            w_scale = self.const(ins[spec.quantized(len(node.input))[1][1]])
            if x_scale is None or w_scale is None:
                return None
            bias_scale = (np.float32(x_scale.reshape(-1)[0]) * w_scale.astype(np.float32).reshape(-1)).astype(
                np.float32
            )
            t = self.unique(f"{name}_bias")
            dq_in = [ins[spec.bias], self.add_const(f"{name}_bias_scale", bias_scale)]
            made.append(helper.make_node("DequantizeLinear", dq_in, [t], name=f"{name}_dq_bias", axis=0))
            float_inputs.append(t)
        attrs = {a.name: a for a in node.attribute if a.name not in spec.drop_attrs}
        if _attrs(node).get("channels_last", 0):
            return None
        if spec.float_op == "Gemm" and spec.output is not None and not ins[spec.output[0]]:
            return None  # QGemm with a float output: left as it is (unsupported)
        if spec.output is None:
            float_out = node.output[0]
        else:
            float_out = self.unique(f"{name}_float")
        node_attrs = _attrs(node)
        if spec.float_op == "Softmax" and int(node_attrs.get("opset", 13)) < 13:  # type: ignore[call-overload]
            # the Softmax of opset < 13: over the input flattened to 2-D at ``axis`` (QLinearSoftmax's
            # default -1)
            axis = int(node_attrs.get("axis", -1))  # type: ignore[call-overload]
            flat, soft, shape = (self.unique(f"{name}_{k}") for k in ("flat", "softmax", "shape"))
            made += [
                helper.make_node("Flatten", [float_inputs[0]], [flat], name=flat, axis=axis),
                helper.make_node("Softmax", [flat], [soft], name=name, axis=1),
                helper.make_node("Shape", [float_inputs[0]], [shape], name=shape),
                helper.make_node("Reshape", [soft, shape], [float_out], name=f"{name}_reshape"),
            ]
        else:
            op = helper.make_node(spec.float_op, float_inputs, [float_out], name=name)
            op.attribute.extend(attrs.values())
            made.append(op)
        if spec.output is not None:
            scale, zp = spec.output
            q_in = [float_out, ins[scale]] + ([ins[zp]] if ins[zp] else [])
            made.append(helper.make_node("QuantizeLinear", q_in, [node.output[0]], name=f"{name}_q"))
        return made


@dataclass(frozen=True)
class _QOp:
    """A QOperator op as DQ(inputs) -> float op -> Q: input positions of (data, scale, zero point) per
    quantized input, the bias position, the output's (scale, zero point) positions."""

    float_op: str
    inputs: tuple[tuple[int, int, int], ...]
    output: tuple[int, int] | None
    bias: int | None = None
    variadic_from: int | None = None  # QLinearConcat: (x, scale, zp) triples from here
    weight_axis: int | None = None  # the per-channel axis of the second input's scale
    drop_attrs: frozenset[str] = field(default_factory=frozenset)

    def quantized(self, count: int) -> list[tuple[int, int, int, int | None]]:
        if self.variadic_from is not None:
            return [(k, k + 1, k + 2, None) for k in range(self.variadic_from, count, 3)]
        return [(d, s, z, self.weight_axis if i == 1 else None) for i, (d, s, z) in enumerate(self.inputs)]


_QOPERATOR: dict[tuple[str, str], _QOp] = {
    ("ai.onnx", "QLinearConv"): _QOp("Conv", ((0, 1, 2), (3, 4, 5)), (6, 7), bias=8, weight_axis=0),
    ("ai.onnx", "QLinearMatMul"): _QOp("MatMul", ((0, 1, 2), (3, 4, 5)), (6, 7), weight_axis=-1),
    (MS_DOMAIN, "QLinearAdd"): _QOp("Add", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    (MS_DOMAIN, "QLinearMul"): _QOp("Mul", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    (MS_DOMAIN, "QLinearGlobalAveragePool"): _QOp(
        "GlobalAveragePool", ((0, 1, 2),), (3, 4), drop_attrs=frozenset({"channels_last"})
    ),
    (MS_DOMAIN, "QLinearAveragePool"): _QOp(
        "AveragePool", ((0, 1, 2),), (3, 4), drop_attrs=frozenset({"channels_last"})
    ),
    (MS_DOMAIN, "QLinearSigmoid"): _QOp("Sigmoid", ((0, 1, 2),), (3, 4)),
    (MS_DOMAIN, "QLinearLeakyRelu"): _QOp("LeakyRelu", ((0, 1, 2),), (3, 4)),
    (MS_DOMAIN, "QLinearSoftmax"): _QOp("Softmax", ((0, 1, 2),), (3, 4), drop_attrs=frozenset({"opset"})),
    (MS_DOMAIN, "QLinearConcat"): _QOp("Concat", (), (0, 1), variadic_from=2),
    (MS_DOMAIN, "QGemm"): _QOp("Gemm", ((0, 1, 2), (3, 4, 5)), (7, 8), bias=6),
}


def fold_qdq(model: OnnxModel) -> tuple[OnnxModel, QuantStats]:
    """The model with its quantized groups folded into int8 ops (unchanged when it has no Q/DQ nodes)."""
    quantized = any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear")
        or (n.domain or "ai.onnx", n.op_type) in _QOPERATOR
        for n in model.nodes
    )
    if not quantized:
        return model, QuantStats()
    rewriter = _Pass(model)
    return rewriter.run(), rewriter.stats
