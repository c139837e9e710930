"""Layout assignment: spatial ops run on NHWC tensors, everything else on the ONNX layout, and
layout-agnostic ops (element-wise, CONCAT, PAD, SLICE, REDUCE_MEAN, SOFTMAX) in whatever layout their
inputs already share, with their axes and constant operands remapped. A TRANSPOSE is inserted only
where a tensor meets an op that needs the other layout, and each tensor is converted at most once.

An inlined EdgeKit network (subnet.SubnetOp) takes its inputs and gives its outputs in the ONNX layout
and is replaced by its ops, which are in their physical layouts already (compiler/subnet.py).

Input: a graph whose tensors all have the ONNX layout (lowering's output). Output: a new graph whose
tensor shapes are physical. Network inputs and outputs keep the ONNX layout.
"""

from __future__ import annotations

import numpy as np

from edgekit.compiler import subnet
from edgekit.compiler.graph import (
    BINARY_OPS,
    ELEMENTWISE_QUANT_OPS,
    FIRST_INPUT_OPS,
    NCHW_PERM,
    NHWC,
    NHWC_PERM,
    ONNX,
    ONNX_LAYOUT_OPS,
    SPATIAL_OPS,
    UINT8,
    UNARY_OPS,
    AttrValue,
    Graph,
    Op,
    OpType,
    Shape,
    is_order_preserving,
)

_FLEX = (
    UNARY_OPS
    | BINARY_OPS
    | ELEMENTWISE_QUANT_OPS
    | {OpType.CONCAT, OpType.PAD, OpType.SLICE, OpType.REDUCE_MEAN, OpType.SOFTMAX}
)


def _nhwc_shape(shape: Shape) -> Shape:
    return tuple(shape[p] for p in NHWC_PERM)


class _Layout:
    def __init__(self, src: Graph) -> None:
        self.src = src
        self.dst = Graph(inputs=list(src.inputs), output_names=list(src.output_names))
        self.versions: dict[str, dict[str, str]] = {}  # logical tensor -> layout -> physical tensor
        self.primary: dict[str, str] = {}  # logical tensor -> the layout it was produced in
        self.transposes = 0
        for name in src.inputs:
            self.dst.tensors[name] = src.tensors[name]
            self.versions[name] = {ONNX: name}
            self.primary[name] = ONNX

    def layout_of(self, name: str) -> str | None:
        """The layout a run-time tensor is in (None for constants, which fit any layout)."""
        if self.src.tensors[name].is_const:
            return None
        return self.primary[name]

    def get(self, name: str, layout: str) -> str:
        """The physical tensor holding logical ``name`` in ``layout`` (converted once, then cached)."""
        tensor = self.src.tensors[name]
        versions = self.versions.setdefault(name, {})
        if layout in versions:
            return versions[layout]
        if tensor.data is not None:
            data = tensor.data
            if layout == NHWC:
                data = np.ascontiguousarray(
                    data.reshape((1,) * (4 - data.ndim) + data.shape).transpose(NHWC_PERM)
                )
            versions[layout] = self.dst.add_const(
                name if layout == ONNX else f"{name}_nhwc", data, tensor.dtype
            )
            return versions[layout]
        source_layout = self.primary[name]
        source = versions[source_layout]
        src_shape = self.dst.shape(source)
        perm = NHWC_PERM if layout == NHWC else NCHW_PERM
        shape = tuple(src_shape[p] for p in perm)
        out = self.dst.add(f"{name}_{layout}", shape, layout=layout, dtype=tensor.dtype)
        self.dst.tensors[out].onnx_name = tensor.onnx_name
        if is_order_preserving(src_shape, perm):
            self.dst.ops.append(Op(OpType.RESHAPE, f"{name}_to_{layout}", [source], [out]))
        else:
            self.dst.ops.append(
                Op(OpType.TRANSPOSE, f"{name}_to_{layout}", [source], [out], {"perm": list(perm)})
            )
            self.transposes += 1
        versions[layout] = out
        return out

    def output(self, name: str, layout: str) -> str:
        logical = self.src.tensors[name].shape
        shape = _nhwc_shape(logical) if layout == NHWC else logical
        src = self.src.tensors[name]
        phys = self.dst.add(name, shape, layout=layout, dtype=src.dtype, dynamic=src.dynamic)
        self.dst.tensors[phys].onnx_name = src.onnx_name
        self.versions[name] = {layout: phys}
        self.primary[name] = layout
        return phys

    def run(self) -> Graph:
        for op in self.src.ops:
            self.op(op)
        self.dst.outputs = [self.get(name, ONNX) for name in self.src.outputs]
        return self.dst

    def op(self, op: Op) -> None:
        if isinstance(op, subnet.SubnetOp):  # an EdgeKitNetwork node: its ops, already in their layouts
            bound = [self.get(n, ONNX) for n in op.inputs if n is not None]
            subnet.inline(self.dst, op, bound, [self.output(n, ONNX) for n in op.outputs])
            return
        if op.type in ONNX_LAYOUT_OPS:
            # A plugin sees the ONNX layout (docs/plugins.md), and so do TOP_K and NON_MAX_SUPPRESSION:
            # their operands are converted back to it.
            inputs = [self.get(n, ONNX) if n is not None else None for n in op.inputs]
            outputs = [self.output(name, ONNX) for name in op.outputs]
            self.dst.ops.append(
                Op(op.type, op.name, inputs, outputs, dict(op.attrs), op.sources, dict(op.attr_types))
            )
            return
        if op.type in SPATIAL_OPS:
            first = op.inputs[0]
            inputs = [self.get(first, NHWC) if first is not None else None]
            # a QCONV's other operands (weights, scales, bias) are constants in their own layout
            rest = len(op.inputs) if op.type in FIRST_INPUT_OPS else 3
            inputs += [self.get(n, ONNX) if n is not None else None for n in op.inputs[1:rest]]
            # a CONV's residual input Z has the output's shape: NHWC like it
            inputs += [self.get(n, NHWC) if n is not None else None for n in op.inputs[rest:]]
            self.dst.ops.append(
                Op(op.type, op.name, inputs, [self.output(op.outputs[0], NHWC)], dict(op.attrs), op.sources)
            )
            return
        # a uint8 result (QUANTIZE / QLUT making a network output) stays in the ONNX layout: the runtime's
        # TRANSPOSE takes float32 and int8 only
        uint8_out = self.src.tensors[op.outputs[0]].dtype == UINT8
        if op.type in _FLEX and not uint8_out and self._flex_nhwc(op):
            inputs = [self.get(n, NHWC) if n is not None else None for n in op.inputs]
            if op.type in FIRST_INPUT_OPS:  # QLUT's table stays as it is
                inputs[1:] = [self.get(n, ONNX) if n is not None else None for n in op.inputs[1:]]
            attrs = self._remap(op)
            out_layout = NHWC
            if op.type == OpType.REDUCE_MEAN and not op.attrs.get("keepdims", 1):
                out_layout = ONNX  # _flex_nhwc checked the kept axes stay in logical order
            self.dst.ops.append(
                Op(op.type, op.name, inputs, [self.output(op.outputs[0], out_layout)], attrs, op.sources)
            )
            return
        if op.type == OpType.TRANSPOSE and op.inputs[0] and self.layout_of(op.inputs[0]) == NHWC:
            if ONNX not in self.versions[op.inputs[0]]:
                # fold the layout change into this transpose: logical axis a is physical NCHW_PERM[a]
                perm = [NCHW_PERM[int(p)] for p in op.attrs["perm"]]  # type: ignore[union-attr]
                x = self.get(op.inputs[0], NHWC)
                self.dst.ops.append(
                    Op(op.type, op.name, [x], [self.output(op.outputs[0], ONNX)], {"perm": perm}, op.sources)
                )
                return
        if op.type == OpType.RESHAPE and op.inputs[0] and self.layout_of(op.inputs[0]) == NHWC:
            x = self.get(op.inputs[0], NHWC)
            if (
                is_order_preserving(self.src.shape(op.inputs[0]), NHWC_PERM)
                and ONNX not in self.versions[op.inputs[0]]
            ):
                # the NHWC bytes are already in ONNX order (e.g. [N,1,1,C]): reshape them directly
                self.dst.ops.append(
                    Op(op.type, op.name, [x], [self.output(op.outputs[0], ONNX)], sources=op.sources)
                )
                return
        inputs = [self.get(n, ONNX) if n is not None else None for n in op.inputs]
        self.dst.ops.append(
            Op(op.type, op.name, inputs, [self.output(op.outputs[0], ONNX)], dict(op.attrs), op.sources)
        )

    def _flex_nhwc(self, op: Op) -> bool:
        """Run this layout-agnostic op in NHWC? Only when all its run-time inputs are NHWC."""
        operands = op.inputs[:1] if op.type in FIRST_INPUT_OPS else op.inputs
        layouts = [self.layout_of(n) for n in operands if n is not None]
        dynamic = [x for x in layouts if x is not None]
        if not dynamic or any(x != NHWC for x in dynamic):
            return False
        if len(self.src.shape(op.outputs[0])) != 4 and op.type != OpType.REDUCE_MEAN:
            return False
        for name in operands:
            if name is not None and self.src.tensors[name].is_const and len(self.src.shape(name)) > 4:
                return False
        if op.type == OpType.REDUCE_MEAN and not op.attrs.get("keepdims", 1):
            axes = set(op.attrs["axes"])  # type: ignore[arg-type]
            kept = [p for p in NHWC_PERM if p not in axes]
            return kept == sorted(kept)
        return True

    def _remap(self, op: Op) -> dict[str, AttrValue]:
        attrs = dict(op.attrs)
        if op.type in (OpType.CONCAT, OpType.SOFTMAX):
            attrs["axis"] = NCHW_PERM[int(attrs["axis"])]  # type: ignore[arg-type]
        elif op.type == OpType.PAD:
            pads = [int(p) for p in attrs["pads"]]  # type: ignore[union-attr]
            attrs["pads"] = [pads[p] for p in NHWC_PERM] + [pads[4 + p] for p in NHWC_PERM]
        elif op.type == OpType.SLICE:
            for key in ("starts", "steps"):
                values = [int(v) for v in attrs[key]]  # type: ignore[union-attr]
                attrs[key] = [values[p] for p in NHWC_PERM]
        elif op.type == OpType.REDUCE_MEAN:
            attrs["axes"] = sorted(NCHW_PERM[int(a)] for a in attrs["axes"])  # type: ignore[union-attr]
        return attrs


def assign_layouts(graph: Graph) -> tuple[Graph, int]:
    """The physical graph and the number of TRANSPOSE ops inserted."""
    layout = _Layout(graph)
    return layout.run(), layout.transposes
