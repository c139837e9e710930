"""The compiler's intermediate representation: a graph of EdgeKit ops (docs/model-format.md "Ops").

Lowering builds one ``Graph`` per stage whose tensors have the ONNX model's (logical) shapes; the
layout pass then rewrites it so spatial ops see NHWC tensors (``Tensor.layout``). Constants are
numpy arrays held by their tensors; every tensor that exists at run time is float32, except the int64
operands of TOP_K (K, Indices) and NON_MAX_SUPPRESSION (max_output_boxes_per_class, selected_indices)
and the int8 tensors of quantized ops (compiler/quantize.py: int8 activations and weights, int32
biases; uint8 only at a QUANTIZE, DEQUANTIZE or QLUT at the network's edge).
A ``dynamic`` tensor is an output whose size depends on the data: its shape is the most its op writes.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import numpy.typing as npt


class CompileError(ValueError):
    """The model cannot be compiled; the message says what and where (node name, op type)."""


class UnsupportedOpsError(CompileError):
    """Some ops have no EdgeKit kernel; ``ops`` lists every one as "OpType (node name)"."""

    def __init__(self, ops: list[str]) -> None:
        self.ops = list(ops)
        listing = "\n".join(f"  {op}" for op in self.ops)
        super().__init__(
            f"{len(self.ops)} op(s) not supported:\n{listing}\n"
            "These ops are not supported by EdgeKit's kernels: replace them in the model, export it so they "
            "fold to constants, or implement them in a plugin library (docs/plugins.md) and compile with "
            "--plugin lib.so."
        )


class OpType(enum.IntEnum):
    CONV = 1
    CONV_TRANSPOSE = 2
    FULLY_CONNECTED = 3
    MATMUL = 4
    ADD = 5
    SUB = 6
    MUL = 7
    DIV = 8
    RELU = 9
    CLIP = 10
    LEAKY_RELU = 11
    PRELU = 12
    SIGMOID = 13
    HARD_SIGMOID = 14
    HARD_SWISH = 15
    TANH = 16
    MAX_POOL = 17
    AVERAGE_POOL = 18
    GLOBAL_AVERAGE_POOL = 19
    TRANSPOSE = 20
    CONCAT = 21
    SOFTMAX = 22
    RESIZE = 23
    PAD = 24
    SLICE = 25
    REDUCE_MEAN = 26
    RESHAPE = 27
    PLUGIN = 28  # an op of a plugin library (compiler/plugins.py, docs/plugins.md)
    TOP_K = 29  # .ekm 1.3
    NON_MAX_SUPPRESSION = 30  # .ekm 1.3
    # .ekm 1.5: quantized ops (docs/model-format.md "Quantized ops"; compiler/quantize.py)
    QUANTIZE = 31
    DEQUANTIZE = 32
    QCONV = 33
    QFULLY_CONNECTED = 34
    QADD = 35
    QMUL = 36
    QAVERAGE_POOL = 37
    QGLOBAL_AVERAGE_POOL = 38
    QLUT = 39


class AttrType(enum.IntEnum):
    INT = 1
    FLOAT = 2
    INTS = 3
    FLOATS = 4
    STRING = 5


# The type of every attribute name the ops use (names are unique across the op table).
ATTR_TYPES: dict[str, AttrType] = {
    "pads": AttrType.INTS,
    "strides": AttrType.INTS,
    "dilations": AttrType.INTS,
    "adjustments": AttrType.INTS,
    "group": AttrType.INT,
    "algorithm": AttrType.STRING,
    "act_min": AttrType.FLOAT,
    "act_max": AttrType.FLOAT,
    "min": AttrType.FLOAT,
    "max": AttrType.FLOAT,
    "alpha": AttrType.FLOAT,
    "beta": AttrType.FLOAT,
    "kernel": AttrType.INTS,
    "count_include_pad": AttrType.INT,
    "perm": AttrType.INTS,
    "axis": AttrType.INT,
    "mode": AttrType.INT,
    "coordinate": AttrType.INT,
    "nearest": AttrType.INT,
    "scales": AttrType.FLOATS,
    "value": AttrType.FLOAT,
    "starts": AttrType.INTS,
    "steps": AttrType.INTS,
    "axes": AttrType.INTS,
    "keepdims": AttrType.INT,
    "largest": AttrType.INT,
    "sorted": AttrType.INT,
    "center_point_box": AttrType.INT,
    "scale": AttrType.FLOAT,
    "zero_point": AttrType.INT,
    "x_scale": AttrType.FLOAT,
    "x_zero_point": AttrType.INT,
    "b_scale": AttrType.FLOAT,
    "b_zero_point": AttrType.INT,
    "y_scale": AttrType.FLOAT,
    "y_zero_point": AttrType.INT,
    "q_min": AttrType.INT,
    "q_max": AttrType.INT,
}

# The run-time dtypes a tensor may have, and their .ekm codes.
FLOAT32 = "float32"
INT64 = "int64"
INT8 = "int8"  # quantized activations and weights (.ekm 1.5)
UINT8 = "uint8"  # only at QUANTIZE's output, DEQUANTIZE's and QLUT's operands (network inputs/outputs)
INT32 = "int32"  # quantized biases
DTYPE_SIZES = {FLOAT32: 4, INT64: 8, INT8: 1, UINT8: 1, INT32: 4}
QUANTIZED_DTYPES = frozenset({INT8, UINT8})
# Ops that keep the ONNX layout for all their operands and may have several outputs.
ONNX_LAYOUT_OPS = frozenset({OpType.PLUGIN, OpType.TOP_K, OpType.NON_MAX_SUPPRESSION})

# Ops with the fused activation clamp (act_min / act_max).
ACT_OPS = frozenset(
    {
        OpType.CONV,
        OpType.CONV_TRANSPOSE,
        OpType.FULLY_CONNECTED,
        OpType.ADD,
        OpType.SUB,
        OpType.MUL,
        OpType.DIV,
    }
)
# Ops whose first input and first output are NHWC activations.
SPATIAL_OPS = frozenset(
    {
        OpType.CONV,
        OpType.CONV_TRANSPOSE,
        OpType.MAX_POOL,
        OpType.AVERAGE_POOL,
        OpType.GLOBAL_AVERAGE_POOL,
        OpType.RESIZE,
        OpType.QCONV,
        OpType.QAVERAGE_POOL,
        OpType.QGLOBAL_AVERAGE_POOL,
    }
)
# Quantized ops whose operands after the first are constants in their own layout (weights, scales,
# bias, a table): the layout pass converts only the first input.
FIRST_INPUT_OPS = frozenset({OpType.QCONV, OpType.QFULLY_CONNECTED, OpType.QLUT})
UNARY_OPS = frozenset(
    {
        OpType.RELU,
        OpType.CLIP,
        OpType.LEAKY_RELU,
        OpType.SIGMOID,
        OpType.HARD_SIGMOID,
        OpType.HARD_SWISH,
        OpType.TANH,
    }
)
BINARY_OPS = frozenset(
    {OpType.ADD, OpType.SUB, OpType.MUL, OpType.DIV, OpType.PRELU, OpType.QADD, OpType.QMUL}
)
# Element-wise ops of one run-time input, in any layout (with QLUT's table kept as it is).
ELEMENTWISE_QUANT_OPS = frozenset({OpType.QUANTIZE, OpType.DEQUANTIZE, OpType.QLUT})

AttrValue = Union[int, float, str, list[int], list[float]]
Shape = tuple[int, ...]
FloatArray = npt.NDArray[np.float32]

MAX_RANK = 8
# More than any board's memory, and small enough that a stage's arena (a sum of tensors) and every
# .ekm size field stay far inside 64 bits.
MAX_TENSOR_BYTES = 1 << 40
# The physical layout of a tensor: "onnx" (the ONNX model's order) or "nhwc" (a 4-D NCHW tensor stored
# with its axes permuted by NHWC_PERM).
ONNX = "onnx"
NHWC = "nhwc"
NHWC_PERM = (0, 2, 3, 1)  # physical axis j holds logical axis NHWC_PERM[j]
NCHW_PERM = (0, 3, 1, 2)  # logical axis a sits at physical axis NCHW_PERM[a]


@dataclass
class Tensor:
    name: str
    shape: Shape  # physical shape (the logical one while layout is "onnx")
    data: FloatArray | None = None  # a constant's value (float32, shape == self.shape)
    layout: str = ONNX
    # The ONNX tensor whose value this tensor holds (in ``layout``); None for intermediates of a
    # multi-op lowering and for constants. Kept for dumps (the .ekm OP_SOURCES section).
    onnx_name: str | None = None
    dtype: str = FLOAT32  # FLOAT32; INT64 for TOP_K's and NON_MAX_SUPPRESSION's; INT8/UINT8/INT32 quantized
    # An output whose size depends on the data (TOP_K with a run-time K, NON_MAX_SUPPRESSION, a plugin's
    # dynamic output): ``shape`` is the most its op writes. Only a network output no op reads may be.
    dynamic: bool = False
    # An int8/uint8 tensor's quantization (scale, zero point): real = (q - zero_point) * scale. Kept
    # for network inputs and outputs, whose IOS records carry it.
    qparams: tuple[float, int] | None = None

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def nbytes(self) -> int:
        return DTYPE_SIZES[self.dtype] * math.prod(self.shape)


@dataclass
class Op:
    type: OpType
    name: str  # the ONNX node it came from
    inputs: list[str | None]  # tensor names; None: an absent optional input
    outputs: list[str]
    attrs: dict[str, AttrValue] = field(default_factory=dict)
    # The ONNX nodes this op stands for, in graph order (several after BatchNorm folding or activation
    # fusion; none for a layout change the compiler inserted).
    sources: list[str] = field(default_factory=list)
    # PLUGIN ops: the type of each attribute (their names are the ONNX node's, not the op table's).
    attr_types: dict[str, AttrType] = field(default_factory=dict)


@dataclass
class Graph:
    """One stage of one network: tensors by name, ops in execution order, network inputs and outputs."""

    tensors: dict[str, Tensor] = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # tensor names; they are the network input names
    outputs: list[str] = field(default_factory=list)  # tensor bound to each network output
    output_names: list[str] = field(default_factory=list)  # the network output names
    _counter: int = 0

    def unique(self, base: str) -> str:
        base = base or "t"
        if base not in self.tensors:
            return base
        while True:
            self._counter += 1
            name = f"{base}_{self._counter}"
            if name not in self.tensors:
                return name

    def add(
        self,
        base: str,
        shape: Shape,
        data: FloatArray | None = None,
        layout: str = ONNX,
        dtype: str = FLOAT32,
        dynamic: bool = False,
    ) -> str:
        if len(shape) > MAX_RANK:
            raise CompileError(f"tensor '{base}' has rank {len(shape)}; EdgeKit supports rank <= {MAX_RANK}")
        if any(d < 1 for d in shape):
            raise CompileError(f"tensor '{base}' has shape {list(shape)}; every dimension must be >= 1")
        nbytes = DTYPE_SIZES[dtype] * math.prod(int(d) for d in shape)
        if nbytes > MAX_TENSOR_BYTES:
            raise CompileError(
                f"tensor '{base}' has shape {list(shape)}: {nbytes} bytes, more than EdgeKit's limit of "
                f"2^40 bytes per tensor"
            )
        name = self.unique(base)
        self.tensors[name] = Tensor(
            name, tuple(int(d) for d in shape), data, layout, dtype=dtype, dynamic=dynamic
        )
        return name

    def add_const(self, base: str, value: npt.ArrayLike, dtype: str = FLOAT32) -> str:
        array = np.ascontiguousarray(np.asarray(value, dtype=np.dtype(dtype)))
        return self.add(base, tuple(array.shape), array, dtype=dtype)

    def shape(self, name: str) -> Shape:
        return self.tensors[name].shape

    def const(self, name: str | None) -> FloatArray | None:
        return None if name is None else self.tensors[name].data

    def consumers(self) -> dict[str, list[Op]]:
        users: dict[str, list[Op]] = {}
        for op in self.ops:
            for name in op.inputs:
                if name is not None:
                    users.setdefault(name, []).append(op)
        return users

    def producers(self) -> dict[str, Op]:
        return {out: op for op in self.ops for out in op.outputs}


def is_order_preserving(shape: Shape, perm: tuple[int, ...]) -> bool:
    """True when transposing ``shape`` by ``perm`` keeps the elements in memory order (only axes of
    size 1 move), so the transpose is a plain byte copy (a RESHAPE)."""
    kept = [axis for axis in perm if shape[axis] != 1]
    return kept == sorted(kept)
