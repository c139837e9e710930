"""Graph passes on one stage: BatchNorm (and other per-channel Mul/Add) folding into the preceding
convolution or fully-connected op, residual Add fusion into a CONV (its optional input Z), Relu/Clip
fusion into the fused activation clamp, dead-code elimination, merging RESHAPE chains, and the
network-output rule of the file format."""

from __future__ import annotations

import math

import numpy as np

from edgekit.compiler.graph import ACT_OPS, FLOAT32, Graph, Op, OpType

_WEIGHTED = (OpType.CONV, OpType.CONV_TRANSPOSE, OpType.FULLY_CONNECTED)


def _merged(first: list[str], then: list[str]) -> list[str]:
    """The ONNX nodes of two ops fused into one, in order, each once (a BatchNormalization lowers to
    a MUL and an ADD that both fold)."""
    return first + [name for name in then if name not in first]


def _single_consumer(graph: Graph, users: dict[str, list[Op]], name: str) -> Op | None:
    ops = users.get(name, [])
    if len(ops) != 1 or name in graph.outputs:
        return None
    return ops[0]


def _per_channel(value: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """``value`` as a vector over ``axis`` of ``shape`` when it broadcasts to ``shape`` varying only along
    that axis (so folding it does not change the result's shape)."""
    if value.ndim > len(shape):
        return None
    full = value.reshape((1,) * (len(shape) - value.ndim) + value.shape)
    for i, d in enumerate(full.shape):
        if d != 1 and (i != axis or d != shape[axis]):
            return None
    return np.broadcast_to(full.reshape(-1), (shape[axis],)).astype(np.float64)


def fold_into_weights(graph: Graph) -> int:
    """Fold MUL/DIV/ADD/SUB by a per-output-channel constant (a lowered BatchNormalization) into the
    weights and bias of the CONV / CONV_TRANSPOSE / FULLY_CONNECTED before it. Returns the count."""
    folded = 0
    changed = True
    while changed:
        changed = False
        users = graph.consumers()
        for op in graph.ops:
            if op.type not in _WEIGHTED or "act_min" in op.attrs or "act_max" in op.attrs:
                continue
            if len(op.inputs) > 3:  # a fused residual Z: a scale would have to apply to it too
                continue
            out = op.outputs[0]
            nxt = _single_consumer(graph, users, out)
            if nxt is None or nxt.type not in (OpType.MUL, OpType.DIV, OpType.ADD, OpType.SUB) or nxt.attrs:
                continue
            other = nxt.inputs[1] if nxt.inputs[0] == out else nxt.inputs[0]
            if other == out or (nxt.type in (OpType.DIV, OpType.SUB) and nxt.inputs[1] == out):
                continue
            value = graph.const(other)
            w = graph.const(op.inputs[1])
            if value is None or w is None:
                continue
            shape = graph.shape(out)
            vec = _per_channel(value, shape, len(shape) - 1 if op.type == OpType.FULLY_CONNECTED else 1)
            if vec is None or graph.shape(nxt.outputs[0]) != shape:
                continue
            bias_name = op.inputs[2] if len(op.inputs) > 2 else None
            bias = graph.const(bias_name)
            bias64 = np.zeros(w.shape[0]) if bias is None else bias.astype(np.float64)
            w64 = w.astype(np.float64)
            if nxt.type in (OpType.MUL, OpType.DIV):
                factor = vec if nxt.type == OpType.MUL else 1.0 / vec
                w64 = w64 * factor.reshape((-1,) + (1,) * (w.ndim - 1))
                bias64 = bias64 * factor
                new_w = graph.add_const(f"{op.name}_W_folded", w64)
                op.inputs[1] = new_w
                if bias is None:
                    bias_name = None  # still no bias: zero times anything is zero
            else:
                bias64 = bias64 + (vec if nxt.type == OpType.ADD else -vec)
                bias_name = ""
            if bias_name is not None:
                new_b = graph.add_const(f"{op.name}_bias_folded", bias64)
                op.inputs = [*op.inputs[:2], new_b]
            op.outputs[0] = nxt.outputs[0]
            op.sources = _merged(op.sources, nxt.sources)
            graph.ops.remove(nxt)
            folded += 1
            changed = True
            break
    if folded:
        eliminate_dead_code(graph)
    return folded


def _residual_candidate(graph: Graph, users: dict[str, list[Op]], producer: Op | None, add: Op) -> bool:
    """May ``add`` (an ADD of ``producer``'s output and a tensor of the same shape) fuse into
    ``producer`` as its input Z?"""
    if producer is None or producer.type != OpType.CONV or len(producer.inputs) > 3:
        return False
    if "act_min" in producer.attrs or "act_max" in producer.attrs:  # act(conv) + Z is not act(conv + Z)
        return False
    return _single_consumer(graph, users, producer.outputs[0]) is add


def fuse_residual_adds(graph: Graph) -> int:
    """CONV followed by an ADD of a tensor Z with exactly the CONV output's shape (no broadcast), when the
    ADD is the CONV output's only consumer (and that output is no network output): one CONV with the
    optional fourth input Z, Y = act(conv(X) + bias + Z), which saves the ADD's pass over memory. Runs
    before ``fuse_activations`` so a RELU / CLIP after the ADD becomes the fused op's clamp. Of an ADD of
    two CONV outputs, the later CONV fuses (the other is computed by then). Returns the count."""
    fused = 0
    changed = True
    while changed:
        changed = False
        users = graph.consumers()
        producers = graph.producers()
        position = {id(op): i for i, op in enumerate(graph.ops)}
        for add in graph.ops:
            if add.type != OpType.ADD or add.attrs or len(add.inputs) != 2 or None in add.inputs:
                continue
            a, b = add.inputs[0], add.inputs[1]
            assert a is not None and b is not None
            out_shape = graph.shape(add.outputs[0])
            if a == b or graph.shape(a) != out_shape or graph.shape(b) != out_shape:
                continue
            if any(graph.tensors[n].dtype != FLOAT32 or graph.tensors[n].dynamic for n in (a, b)):
                continue
            choices = []
            for conv_out, z in ((a, b), (b, a)):
                conv = producers.get(conv_out)
                if conv is not None and _residual_candidate(graph, users, conv, add):
                    z_op = producers.get(z)
                    z_at = -1 if z_op is None else position[id(z_op)]
                    choices.append((position[id(conv)], z_at, conv, z))
            if not choices:
                continue
            _at, z_at, conv, z = max(choices, key=lambda c: c[0])  # the later CONV
            inputs = list(conv.inputs) + [None] * (3 - len(conv.inputs))
            conv.inputs = [*inputs, z]
            conv.outputs[0] = add.outputs[0]
            conv.sources = _merged(conv.sources, add.sources)
            index = graph.ops.index(add)
            if z_at > position[id(conv)]:
                # Z is computed after the CONV: the fused op runs where the ADD did
                graph.ops.remove(conv)
                graph.ops[graph.ops.index(add)] = conv
            else:
                del graph.ops[index]
            fused += 1
            changed = True
            break
    if fused:
        eliminate_dead_code(graph)
    return fused


def fuse_activations(graph: Graph) -> int:
    """Fuse a RELU / CLIP into the act_min/act_max of the op before it when it is that op's only
    consumer. Returns the count."""
    fused = 0
    changed = True
    while changed:
        changed = False
        users = graph.consumers()
        for op in graph.ops:
            if op.type not in ACT_OPS:
                continue
            nxt = _single_consumer(graph, users, op.outputs[0])
            if nxt is None or nxt.type not in (OpType.RELU, OpType.CLIP):
                continue
            lo = 0.0 if nxt.type == OpType.RELU else float(nxt.attrs.get("min", -math.inf))  # type: ignore[arg-type]
            hi = math.inf if nxt.type == OpType.RELU else float(nxt.attrs.get("max", math.inf))  # type: ignore[arg-type]
            cur_lo = float(op.attrs.get("act_min", -math.inf))  # type: ignore[arg-type]
            cur_hi = float(op.attrs.get("act_max", math.inf))  # type: ignore[arg-type]
            lo, hi = max(lo, cur_lo), min(hi, cur_hi)
            if lo > hi:
                continue  # clamp(clamp(x)) with disjoint ranges: keep both ops, exact as written
            if lo != -math.inf:
                op.attrs["act_min"] = lo
            if hi != math.inf:
                op.attrs["act_max"] = hi
            op.outputs[0] = nxt.outputs[0]
            op.sources = _merged(op.sources, nxt.sources)
            graph.ops.remove(nxt)
            fused += 1
            changed = True
            break
    return fused


def eliminate_dead_code(graph: Graph) -> int:
    """Drop ops none of whose outputs is needed, and tensors no op or binding uses."""
    live = set(graph.outputs)
    kept: list[Op] = []
    for op in reversed(graph.ops):
        if any(name in live for name in op.outputs):
            kept.append(op)
            live.update(name for name in op.inputs if name is not None)
    removed = len(graph.ops) - len(kept)
    graph.ops = kept[::-1]
    used = live | set(graph.inputs) | {name for op in graph.ops for name in op.outputs}
    for name in [n for n in graph.tensors if n not in used]:
        del graph.tensors[name]
    return removed


def merge_reshapes(graph: Graph) -> int:
    """RESHAPE(RESHAPE(x)) -> RESHAPE(x) when the inner result has no other use."""
    merged = 0
    producers = graph.producers()
    users = graph.consumers()
    for op in graph.ops:
        if op.type != OpType.RESHAPE or op.inputs[0] is None:
            continue
        inner = producers.get(op.inputs[0])
        if inner is None or inner.type != OpType.RESHAPE:
            continue
        if _single_consumer(graph, users, op.inputs[0]) is not op:
            continue
        op.inputs[0] = inner.inputs[0]
        op.sources = _merged(inner.sources, op.sources)
        merged += 1
    if merged:
        eliminate_dead_code(graph)
    return merged


def rename(graph: Graph, old: str, new: str) -> None:
    tensor = graph.tensors.pop(old)
    tensor.name = new
    graph.tensors[new] = tensor
    for op in graph.ops:
        op.inputs = [new if n == old else n for n in op.inputs]
        op.outputs = [new if n == old else n for n in op.outputs]
    graph.inputs = [new if n == old else n for n in graph.inputs]
    graph.outputs = [new if n == old else n for n in graph.outputs]


def fix_outputs(graph: Graph) -> int:
    """Every network output must be its own tensor written by exactly one op: outputs that are a network
    input, a constant or another output get a RESHAPE copy. The output tensors then take the output
    names where they are free. Returns the copies inserted."""
    copies = 0
    seen: set[str] = set()
    for index, name in enumerate(graph.outputs):
        tensor = graph.tensors[name]
        if name in graph.inputs or tensor.is_const or name in seen:
            copy = graph.add(
                graph.output_names[index], tensor.shape, layout=tensor.layout, dtype=tensor.dtype
            )
            graph.tensors[copy].onnx_name = graph.output_names[index]
            graph.ops.append(Op(OpType.RESHAPE, graph.output_names[index], [name], [copy]))
            graph.outputs[index] = copy
            copies += 1
            name = copy
        seen.add(name)
    for index, name in enumerate(list(graph.outputs)):
        wanted = graph.output_names[index]
        if name == wanted:
            continue
        if wanted in graph.tensors:
            if wanted in graph.inputs or wanted in graph.outputs:
                continue
            rename(graph, wanted, graph.unique(f"{wanted}_{graph.tensors[wanted].layout}"))
        rename(graph, name, wanted)
    return copies


CONV_ALGORITHMS = ("auto", "winograd", "gemm")
# Where Winograd F(4x4, 3x3) pays in "auto", from python -m edgekit.bench_winograd (one layer, against
# XNNPACK, 1 / 2 threads, this 2-core AVX-512 host, with the AVX-512 SGEMM): 56x56 64->64 0.42x / 0.53x,
# 28x28 128->128 0.39x / 0.48x, 14x14 256->256 0.52x / 0.56x, 16x16 128->64 0.37x / 0.43x, 32x32 32->32
# 0.62x / 0.63x, 64x64 16->16 0.75x / 0.89x; but 7x7 512->512 1.25x / 3.1x: with 4 tiles the 36
# per-frequency weight matrices (36 x C x M floats) outweigh the saved multiplications, so wide layers
# need more tiles (a larger output side). 85-95% of a Winograd layer is its 36 SGEMMs, so re-measure
# when the portable SGEMM changes.
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MAX_CHANNELS = 256
WINOGRAD_MIN_SIDE = 8  # up to 128 channels
WINOGRAD_MIN_SIDE_WIDE = 14  # above 128 channels: 16 tiles or more


def winograd_qualifies(graph: Graph, op: Op) -> bool:
    """A CONV the runtime's Winograd kernel can run: 3x3, stride 1, dilation 1, group 1, constant W."""
    if op.type != OpType.CONV or op.attrs.get("group", 1) != 1:
        return False
    if op.attrs.get("strides", [1, 1]) != [1, 1] or op.attrs.get("dilations", [1, 1]) != [1, 1]:
        return False
    w = op.inputs[1]
    if w is None or graph.const(w) is None:
        return False
    shape = graph.shape(w)
    return len(shape) == 4 and shape[1] == 3 and shape[2] == 3


def choose_conv_algorithms(graph: Graph, mode: str = "auto") -> int:
    """Record ``algorithm`` = "winograd" on the CONV ops that qualify: all of them for mode
    "winograd", those where it pays for "auto" (input and output channels within
    [WINOGRAD_MIN_CHANNELS, WINOGRAD_MAX_CHANNELS], output sides of WINOGRAD_MIN_SIDE or more, or
    WINOGRAD_MIN_SIDE_WIDE above 128 channels), none for "gemm". Run before layout assignment (the
    output shape is still NCHW). Returns the count."""
    if mode not in CONV_ALGORITHMS:
        raise ValueError(f"unknown conv algorithm {mode!r} (expected one of {', '.join(CONV_ALGORITHMS)})")
    count = 0
    for op in graph.ops:
        op.attrs.pop("algorithm", None)
        if mode == "gemm" or not winograd_qualifies(graph, op):
            continue
        m, _kh, _kw, c = graph.shape(op.inputs[1] or "")
        _n, _m, oh, ow = graph.shape(op.outputs[0])
        if mode == "auto" and (
            min(c, m) < WINOGRAD_MIN_CHANNELS
            or max(c, m) > WINOGRAD_MAX_CHANNELS
            or min(oh, ow) < (WINOGRAD_MIN_SIDE if max(c, m) <= 128 else WINOGRAD_MIN_SIDE_WIDE)
        ):
            continue
        op.attrs["algorithm"] = "winograd"
        count += 1
    return count
