"""A straightforward numpy interpreter of a compiled ``.ekm`` model, op by op as docs/model-format.md
defines the ops. It is the oracle that tests the compiler without the C runtime, and the C kernels
against the spec. Clarity over speed; it also checks every op's output shape against the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from edgekit.compiler import ekm
from edgekit.compiler.graph import AttrValue, OpType
from edgekit.compiler.plugins import PluginError, PluginPaths, PluginSet, typed_attrs

Array = np.ndarray


class InterpreterError(RuntimeError):
    """The model cannot be run as given (wrong inputs, or a file that breaks an op's rule)."""


def _attr_ints(attrs: Mapping[str, AttrValue], name: str, default: list[int] | None = None) -> list[int]:
    value = attrs.get(name, default)
    if value is None:
        raise InterpreterError(f"missing attribute '{name}'")
    assert isinstance(value, list)
    return [int(v) for v in value]


def _attr_int(attrs: Mapping[str, AttrValue], name: str, default: int) -> int:
    value = attrs.get(name, default)
    assert isinstance(value, int)
    return value


def _attr_float(attrs: Mapping[str, AttrValue], name: str, default: float) -> float:
    value = attrs.get(name, default)
    assert isinstance(value, (int, float))
    return float(value)


def _act(y: Array, attrs: Mapping[str, AttrValue]) -> Array:
    lo = _attr_float(attrs, "act_min", -math.inf)
    hi = _attr_float(attrs, "act_max", math.inf)
    if lo != -math.inf or hi != math.inf:
        y = np.clip(y, np.float32(lo), np.float32(hi))
    return y


def _taps(x: Array, axis: int, start: int, count: int, step: int) -> Array:
    """x[..., start + i*step, ...] for i < count along ``axis`` (x already padded so it is inside)."""
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, start + (count - 1) * step + 1, step)
    return x[tuple(index)]


def _conv(
    x: Array,
    w: Array,
    bias: Array | None,
    attrs: Mapping[str, AttrValue],
    out_shape: tuple[int, ...],
    result: type = np.float32,
) -> Array:
    top, left, bottom, right = _attr_ints(attrs, "pads", [0, 0, 0, 0])
    sh, sw = _attr_ints(attrs, "strides", [1, 1])
    dh, dw = _attr_ints(attrs, "dilations", [1, 1])
    group = _attr_int(attrs, "group", 1)
    n, _h, _w, c = x.shape
    m, kh, kw, cg = w.shape
    _n, oh, ow, _m = out_shape
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    xg = xp.reshape(n, xp.shape[1], xp.shape[2], group, c // group)
    wg = w.reshape(group, m // group, kh, kw, cg)
    y = np.zeros((n, oh, ow, group, m // group), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = _taps(_taps(xg, 1, i * dh, oh, sh), 2, j * dw, ow, sw)
            y += np.einsum("nhwgc,gmc->nhwgm", patch, wg[:, :, i, j, :], dtype=np.float64)
    y = y.reshape(n, oh, ow, m)
    if bias is not None:
        y += bias
    return y.astype(result)


def _conv_transpose(
    x: Array, w: Array, bias: Array | None, attrs: Mapping[str, AttrValue], out_shape: tuple[int, ...]
) -> Array:
    top, left, _bottom, _right = _attr_ints(attrs, "pads", [0, 0, 0, 0])
    sh, sw = _attr_ints(attrs, "strides", [1, 1])
    dh, dw = _attr_ints(attrs, "dilations", [1, 1])
    group = _attr_int(attrs, "group", 1)
    n, h, wd, _c = x.shape
    m, kh, kw, cg = w.shape
    _n, oh, ow, _m = out_shape
    full_h = max((h - 1) * sh + (kh - 1) * dh + 1, top + oh)
    full_w = max((wd - 1) * sw + (kw - 1) * dw + 1, left + ow)
    full = np.zeros((n, full_h, full_w, group, m // group), np.float64)
    xg = x.reshape(n, h, wd, group, cg)
    wg = w.reshape(group, m // group, kh, kw, cg)
    for i in range(kh):
        for j in range(kw):
            contrib = np.einsum("nhwgc,gmc->nhwgm", xg, wg[:, :, i, j, :], dtype=np.float64)
            full[:, i * dh : i * dh + (h - 1) * sh + 1 : sh, j * dw : j * dw + (wd - 1) * sw + 1 : sw] += (
                contrib
            )
    y = full[:, top : top + oh, left : left + ow].reshape(n, oh, ow, m)
    if bias is not None:
        y = y + bias
    return y.astype(np.float32)


def _pool(x: Array, op_type: int, attrs: Mapping[str, AttrValue], out_shape: tuple[int, ...]) -> Array:
    if op_type == OpType.MAX_POOL:
        kh, kw = _attr_ints(attrs, "kernel")
        sh, sw = _attr_ints(attrs, "strides", [1, 1])
        top, left, _bottom, _right = _attr_ints(attrs, "pads", [0, 0, 0, 0])
        dh, dw = _attr_ints(attrs, "dilations", [1, 1])
        _n, h, w, _c = x.shape
        _n, oh, ow, _c = out_shape
        # pad enough at the end for every window's last tap (ceil-mode windows may pass pad_end)
        end_h = max(0, (oh - 1) * sh - top + (kh - 1) * dh + 1 - h)
        end_w = max(0, (ow - 1) * sw - left + (kw - 1) * dw + 1 - w)
        padding = ((0, 0), (top, end_h), (left, end_w), (0, 0))
        xp = np.pad(x.astype(np.float32), padding, constant_values=-np.inf)
        y = np.full(out_shape, -np.inf, np.float32)
        for i in range(kh):
            for j in range(kw):
                y = np.maximum(y, _taps(_taps(xp, 1, i * dh, oh, sh), 2, j * dw, ow, sw))
        if np.isinf(y).any() and not np.isinf(x).any():
            raise InterpreterError("MAX_POOL has a window with no tap inside the input")
        return y
    total, divisor = _pool_sum_count(x, attrs, out_shape)
    result: Array = (total / divisor).astype(np.float32)
    return result


def _pool_sum_count(
    x: Array, attrs: Mapping[str, AttrValue], out_shape: tuple[int, ...]
) -> tuple[Array, Array]:
    """AVERAGE_POOL's sums over the taps inside the input (float64) and its divisors ([1, OH, OW, 1])."""
    kh, kw = _attr_ints(attrs, "kernel")
    sh, sw = _attr_ints(attrs, "strides", [1, 1])
    top, left, bottom, right = _attr_ints(attrs, "pads", [0, 0, 0, 0])
    _n, h, w, _c = x.shape
    _n, oh, ow, _c = out_shape
    end_h = max(0, (oh - 1) * sh - top + kh - h)
    end_w = max(0, (ow - 1) * sw - left + kw - w)
    xp = np.pad(x, ((0, 0), (top, end_h), (left, end_w), (0, 0))).astype(np.float64)
    total = np.zeros(out_shape, np.float64)
    for i in range(kh):
        for j in range(kw):
            total += _taps(_taps(xp, 1, i, oh, sh), 2, j, ow, sw)
    include = _attr_int(attrs, "count_include_pad", 0)

    def counts(size: int, begin: int, end: int, k: int, s: int, o: int, pad_end: int) -> Array:
        lo, hi = (-begin, size + pad_end) if include else (0, size)
        starts = np.arange(o) * s - begin
        return np.clip(starts + k, lo, hi) - np.clip(starts, lo, hi)

    ch = counts(h, top, end_h, kh, sh, oh, bottom)
    cw = counts(w, left, end_w, kw, sw, ow, right)
    divisor = ch[:, None] * cw[None, :]
    if (divisor <= 0).any():
        raise InterpreterError("AVERAGE_POOL has a window with no tap inside the input")
    return total, divisor[None, :, :, None]


def _source_coords(out_size: int, in_size: int, scale: float, coordinate: int) -> Array:
    x = np.arange(out_size, dtype=np.float64)
    if coordinate == 0:  # half_pixel
        return (x + 0.5) / scale - 0.5
    if coordinate == 1:  # asymmetric
        return x / scale
    if coordinate == 2:  # align_corners
        return x * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros_like(x)
    if coordinate == 3:  # pytorch_half_pixel
        return (x + 0.5) / scale - 0.5 if out_size > 1 else np.zeros_like(x)
    raise InterpreterError(f"RESIZE: unknown coordinate mode {coordinate}")


def _nearest_index(coords: Array, in_size: int, nearest: int) -> Array:
    if nearest == 0:  # round_prefer_floor
        index = np.ceil(coords - 0.5)
    elif nearest == 1:  # round_prefer_ceil
        index = np.floor(coords + 0.5)
    elif nearest == 2:
        index = np.floor(coords)
    elif nearest == 3:
        index = np.ceil(coords)
    else:
        raise InterpreterError(f"RESIZE: unknown nearest mode {nearest}")
    return np.clip(index, 0, in_size - 1).astype(np.int64)


def _resize(x: Array, attrs: Mapping[str, AttrValue], out_shape: tuple[int, ...]) -> Array:
    mode = _attr_int(attrs, "mode", 0)
    coordinate = _attr_int(attrs, "coordinate", 0)
    nearest = _attr_int(attrs, "nearest", 0)
    scales = attrs.get("scales")
    assert isinstance(scales, list) and len(scales) == 2
    _n, h, w, _c = x.shape
    _n, oh, ow, _c = out_shape
    # the scales are f32 in the file; compute coordinates with those values as ONNX does
    ch = _source_coords(oh, h, float(np.float32(scales[0])), coordinate)
    cw = _source_coords(ow, w, float(np.float32(scales[1])), coordinate)
    if mode == 0:
        return np.ascontiguousarray(
            x[:, _nearest_index(ch, h, nearest)][:, :, _nearest_index(cw, w, nearest)]
        )

    def linear(coords: Array, size: int) -> tuple[Array, Array, Array]:
        coords = np.clip(coords, 0, size - 1)
        lo = np.floor(coords).astype(np.int64)
        hi = np.minimum(lo + 1, size - 1)
        return lo, hi, coords - lo

    h0, h1, fh = linear(ch, h)
    w0, w1, fw = linear(cw, w)
    xd = x.astype(np.float64)
    top = xd[:, h0][:, :, w0] * (1 - fw)[None, None, :, None] + xd[:, h0][:, :, w1] * fw[None, None, :, None]
    bot = xd[:, h1][:, :, w0] * (1 - fw)[None, None, :, None] + xd[:, h1][:, :, w1] * fw[None, None, :, None]
    result: Array = (top * (1 - fh)[None, :, None, None] + bot * fh[None, :, None, None]).astype(np.float32)
    return result


def _check_spatial_shape(
    op: ekm.OpRecord, x: tuple[int, ...], w: tuple[int, ...] | None, out: tuple[int, ...]
) -> None:
    """The output-size formulas of the spatial ops (the file's shapes must follow them)."""
    t, a = op.type, op.attrs
    if len(x) != 4 or len(out) != 4:
        raise InterpreterError(f"op '{op.name}': spatial ops take 4-D NHWC tensors")
    pads = _attr_ints(a, "pads", [0, 0, 0, 0])
    strides = _attr_ints(a, "strides", [1, 1])
    dil = _attr_ints(a, "dilations", [1, 1])
    expect: list[tuple[int, int]] = []  # per spatial axis: (lowest, highest) allowed size
    for axis in range(2):
        size, begin, end, s, d = x[1 + axis], pads[axis], pads[2 + axis], strides[axis], dil[axis]
        if t == OpType.CONV:
            assert w is not None
            k = (w[1 + axis] - 1) * d + 1
            o = (size + begin + end - k) // s + 1
            expect.append((o, o))
        elif t == OpType.CONV_TRANSPOSE:
            assert w is not None
            adj = _attr_ints(a, "adjustments", [0, 0])[axis]
            o = (size - 1) * s + (w[1 + axis] - 1) * d + 1 - begin - end + adj
            expect.append((o, o))
        elif t in (OpType.MAX_POOL, OpType.AVERAGE_POOL):
            k = _attr_ints(a, "kernel")[axis]
            d = d if t == OpType.MAX_POOL else 1
            span = size + begin + end - ((k - 1) * d + 1)
            expect.append((span // s + 1, -(-span // s) + 1))
        elif t == OpType.GLOBAL_AVERAGE_POOL:
            expect.append((1, 1))
        elif t == OpType.RESIZE:
            scales = a.get("scales")
            assert isinstance(scales, list)
            o = math.floor(size * float(np.float32(scales[axis])))
            expect.append((o, o))
    for axis, (lo, hi) in enumerate(expect):
        if not lo <= out[1 + axis] <= hi:
            raise InterpreterError(
                f"op '{op.name}' ({OpType(t).name}): output size {out[1 + axis]} on axis {1 + axis} "
                f"is not the formula's {lo if lo == hi else (lo, hi)}"
            )


_SPATIAL = (
    OpType.CONV,
    OpType.CONV_TRANSPOSE,
    OpType.MAX_POOL,
    OpType.AVERAGE_POOL,
    OpType.GLOBAL_AVERAGE_POOL,
    OpType.RESIZE,
)


def _run_plugin(
    op: ekm.OpRecord, ins: list[Array | None], out_shapes: list[tuple[int, ...]], plugins: PluginSet
) -> list[Array]:
    domain, op_type = str(op.attrs.get("ek.domain", "")), str(op.attrs.get("ek.op_type", ""))
    found = plugins.find(domain, op_type)
    if found is None:
        raise InterpreterError(
            f"op '{op.name}' is plugin op '{domain}::{op_type}': give the plugin library that registers it "
            "(run_reference(..., plugins=[path]))"
        )
    try:
        return plugins.run(
            found, op.name, typed_attrs(op.attrs, op.attr_types), [_req(x) for x in ins], out_shapes
        )
    except PluginError as exc:
        raise InterpreterError(str(exc)) from None


# ---- quantized ops (.ekm 1.5): the formulas of docs/model-format.md "Quantized ops", in float32 ----
_QUANTIZED = frozenset(range(OpType.QUANTIZE, OpType.QLUT + 1))


def _requantize(real: Array, zero_point: int, lo: int, hi: int) -> Array:
    """sat(rint(real) + zero_point) into [lo, hi]; ``real`` is float32."""
    clipped: Array = np.clip(np.rint(real) + np.float32(zero_point), lo, hi)
    return clipped


def _q_clamp(attrs: Mapping[str, AttrValue]) -> tuple[int, int]:
    return _attr_int(attrs, "q_min", -128), _attr_int(attrs, "q_max", 127)


def _run_quantized(
    op: ekm.OpRecord, ins: list[Array | None], out: tuple[int, ...], out_dtype: np.dtype
) -> Array:
    t, a = op.type, op.attrs
    x = _req(ins[0])
    f32 = np.float32
    xs, xz = f32(_attr_float(a, "x_scale", 1.0)), _attr_int(a, "x_zero_point", 0)
    ys, yz = f32(_attr_float(a, "y_scale", 1.0)), _attr_int(a, "y_zero_point", 0)
    if t == OpType.QUANTIZE:
        scale, zp = f32(_attr_float(a, "scale", 1.0)), _attr_int(a, "zero_point", 0)
        info = np.iinfo(out_dtype)
        with np.errstate(invalid="ignore"):
            y = _requantize(x.astype(f32) / scale, zp, info.min, info.max)
        y = np.where(np.isnan(x), zp, y)
    elif t == OpType.DEQUANTIZE:
        scale, zp = f32(_attr_float(a, "scale", 1.0)), _attr_int(a, "zero_point", 0)
        return ((x.astype(np.int32) - zp).astype(f32) * scale).astype(f32)
    elif t in (OpType.QCONV, OpType.QFULLY_CONNECTED):
        w, w_scale, bias = _req(ins[1]), _req(ins[2]).astype(f32), ins[3] if len(ins) > 3 else None
        xi = x.astype(np.float64) - xz  # exact: int8 differences, sums below 2^53
        if t == OpType.QCONV:
            acc = _conv(xi, w.astype(np.float64), None, a, out, result=np.float64)
        else:
            acc = np.matmul(xi, w.T.astype(np.float64))
        if bias is not None:
            acc = acc + bias.astype(np.float64)
        mult = (xs * w_scale).astype(f32) / ys
        y = _requantize(acc.astype(np.int64).astype(f32) * mult.astype(f32), yz, *_q_clamp(a))
    elif t in (OpType.QADD, OpType.QMUL):
        b = _req(ins[1])
        bs, bz = f32(_attr_float(a, "b_scale", 1.0)), _attr_int(a, "b_zero_point", 0)
        xd = (x.astype(np.int32) - xz).astype(f32)
        bd = (b.astype(np.int32) - bz).astype(f32)
        if t == OpType.QADD:
            real = xd * (xs / ys) + bd * (bs / ys)
        else:
            real = ((x.astype(np.int32) - xz) * (b.astype(np.int32) - bz)).astype(f32) * ((xs * bs) / ys)
        y = np.broadcast_to(_requantize(real.astype(f32), yz, *_q_clamp(a)), out)
    elif t == OpType.QGLOBAL_AVERAGE_POOL:
        sums = (x.astype(np.int64) - xz).sum(axis=(1, 2), keepdims=True)
        pixels = f32(x.shape[1] * x.shape[2])
        y = _requantize(sums.astype(f32) * (xs / (ys * pixels)), yz, -128, 127)
    elif t == OpType.QAVERAGE_POOL:
        # the sum over the taps inside the input, and the divisor AVERAGE_POOL uses
        total, count = _pool_sum_count((x.astype(np.int64) - xz).astype(np.float64), a, out)
        y = _requantize(total.astype(f32) * (xs / (ys * count.astype(f32))), yz, -128, 127)
    elif t == OpType.QLUT:
        table = _req(ins[1])
        index = x.astype(np.int32) + (128 if x.dtype == np.int8 else 0)
        return table[index]
    else:
        raise InterpreterError(f"unknown op type {t} ('{op.name}')")
    return np.asarray(y).astype(out_dtype)


def _run_op(op: ekm.OpRecord, ins: list[Array | None], out_shapes: list[tuple[int, ...]]) -> list[Array]:
    t = op.type
    if t in _SPATIAL:
        w = ins[1] if len(ins) > 1 and ins[1] is not None else None
        _check_spatial_shape(op, _req(ins[0]).shape, None if w is None else w.shape, out_shapes[0])
    a = op.attrs
    x = ins[0]
    assert x is not None
    out = out_shapes[0]
    y: Array
    if t == OpType.CONV:
        y = _conv(x, _req(ins[1]), ins[2] if len(ins) > 2 else None, a, out)
        z = ins[3] if len(ins) > 3 else None
        if z is not None:  # the fused residual input (.ekm 1.4): act(conv + bias + Z)
            if z.shape != y.shape:
                raise InterpreterError(
                    f"op '{op.name}': Z is {list(z.shape)}, it must have Y's shape {list(y.shape)}"
                )
            y = y + z
        y = _act(y, a)
    elif t == OpType.CONV_TRANSPOSE:
        y = _act(_conv_transpose(x, _req(ins[1]), ins[2] if len(ins) > 2 else None, a, out), a)
    elif t == OpType.FULLY_CONNECTED:
        y = np.matmul(x.astype(np.float64), _req(ins[1]).T.astype(np.float64))
        if len(ins) > 2 and ins[2] is not None:
            y = y + ins[2]
        y = _act(y.astype(np.float32), a)
    elif t == OpType.MATMUL:
        y = np.matmul(x.astype(np.float64), _req(ins[1]).astype(np.float64)).astype(np.float32)
    elif t in (OpType.ADD, OpType.SUB, OpType.MUL, OpType.DIV):
        b = _req(ins[1])
        fn = {OpType.ADD: np.add, OpType.SUB: np.subtract, OpType.MUL: np.multiply, OpType.DIV: np.divide}[
            OpType(t)
        ]
        y = _act(np.broadcast_to(fn(x, b), out).astype(np.float32), a)
    elif t == OpType.RELU:
        y = np.maximum(x, np.float32(0))
    elif t == OpType.CLIP:
        y = np.clip(
            x, np.float32(_attr_float(a, "min", -math.inf)), np.float32(_attr_float(a, "max", math.inf))
        )
    elif t == OpType.LEAKY_RELU:
        y = np.where(x < 0, x * np.float32(_attr_float(a, "alpha", 0.01)), x)
    elif t == OpType.PRELU:
        y = np.where(x < 0, x * _req(ins[1]), x)
    elif t == OpType.SIGMOID:
        y = (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)
    elif t == OpType.HARD_SIGMOID:
        alpha, beta = _attr_float(a, "alpha", 0.2), _attr_float(a, "beta", 0.5)
        y = np.clip(x * np.float32(alpha) + np.float32(beta), 0, 1)
    elif t == OpType.HARD_SWISH:
        y = x * np.clip(x / np.float32(6) + np.float32(0.5), 0, 1)
    elif t == OpType.TANH:
        y = np.tanh(x)
    elif t in (OpType.MAX_POOL, OpType.AVERAGE_POOL):
        y = _pool(x, t, a, out)
    elif t == OpType.GLOBAL_AVERAGE_POOL:
        y = x.astype(np.float64).mean(axis=(1, 2), keepdims=True).astype(np.float32)
    elif t == OpType.TRANSPOSE:
        y = np.transpose(x, _attr_ints(a, "perm"))
    elif t == OpType.CONCAT:
        y = np.concatenate([_req(i) for i in ins], axis=_attr_int(a, "axis", 0))
    elif t == OpType.SOFTMAX:
        axis = _attr_int(a, "axis", 0)
        e = np.exp(x.astype(np.float64) - x.max(axis=axis, keepdims=True))
        y = (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)
    elif t == OpType.RESIZE:
        y = _resize(x, a, out)
    elif t == OpType.PAD:
        pads = _attr_ints(a, "pads")
        rank = x.ndim
        widths = [(pads[i], pads[i + rank]) for i in range(rank)]
        mode = _attr_int(a, "mode", 0)
        if mode == 0:
            y = np.pad(x, widths, constant_values=np.float32(_attr_float(a, "value", 0.0)))
        else:
            y = np.pad(x, widths, mode="reflect" if mode == 1 else "edge")
    elif t == OpType.SLICE:
        starts, steps = _attr_ints(a, "starts"), _attr_ints(a, "steps")
        index = tuple(np.arange(n) * step + start for n, start, step in zip(out, starts, steps))
        for axis, idx in enumerate(index):
            if len(idx) and (idx.min() < 0 or idx.max() >= x.shape[axis]):
                raise InterpreterError(f"SLICE '{op.name}': index outside the input on axis {axis}")
        y = x[np.ix_(*index)] if x.ndim else x
    elif t == OpType.REDUCE_MEAN:
        axes = tuple(_attr_ints(a, "axes"))
        keep = bool(_attr_int(a, "keepdims", 1))
        y = x.astype(np.float64).mean(axis=axes, keepdims=keep).astype(np.float32)
    elif t == OpType.RESHAPE:
        y = x.reshape(out)
    else:
        raise InterpreterError(f"unknown op type {t} ('{op.name}')")
    # data movement keeps int8 (docs/model-format.md); every other op computes float32
    return [np.array(y, dtype=np.int8 if x.dtype == np.int8 else np.float32, order="C")]


def _top_k(x: Array, k: int, attrs: Mapping[str, AttrValue]) -> list[Array]:
    """ONNX TopK as docs/model-format.md defines TOP_K: in order, ties to the lower index, NaN above +inf."""
    axis = _attr_int(attrs, "axis", x.ndim - 1)
    largest = _attr_int(attrs, "largest", 1)
    moved = np.moveaxis(x, axis, -1)
    nan = np.isnan(moved)
    value = np.where(nan, np.float32(0), moved)
    index = np.broadcast_to(np.arange(moved.shape[-1]), moved.shape)
    keys = (index, -value, ~nan) if largest else (index, value, nan)
    order = np.lexsort(keys, axis=-1)[..., :k]
    values = np.take_along_axis(moved, order, axis=-1)
    return [
        np.ascontiguousarray(np.moveaxis(values, -1, axis), dtype=np.float32),
        np.ascontiguousarray(np.moveaxis(order, -1, axis), dtype=np.int64),
    ]


def _extent(box: Array, center: bool) -> tuple[np.float32, np.float32, np.float32, np.float32]:
    """x0, x1, y0, y1 in float32 arithmetic, as the kernel computes them."""
    b = [np.float32(v) for v in box]
    two = np.float32(2)
    if center:
        return b[0] - b[2] / two, b[0] + b[2] / two, b[1] - b[3] / two, b[1] + b[3] / two
    x0, x1 = (b[3], b[1]) if b[1] >= b[3] else (b[1], b[3])
    y0, y1 = (b[2], b[0]) if b[0] >= b[2] else (b[0], b[2])
    return x0, x1, y0, y1


def _suppressed(kept: Array, cand: Array, center: bool, threshold: np.float32) -> bool:
    ax0, ax1, ay0, ay1 = _extent(kept, center)
    bx0, bx1, by0, by1 = _extent(cand, center)
    ix0, ix1 = max(ax0, bx0), min(ax1, bx1)
    if ix1 <= ix0:
        return False
    iy0, iy1 = max(ay0, by0), min(ay1, by1)
    if iy1 <= iy0:
        return False
    inter = (ix1 - ix0) * (iy1 - iy0)
    area_a, area_b = (ax1 - ax0) * (ay1 - ay0), (bx1 - bx0) * (by1 - by0)
    union = area_a + area_b - inter
    if inter <= 0 or area_a <= 0 or area_b <= 0 or union <= 0:
        return False
    return bool(inter / union > threshold)


def _non_max_suppression(ins: list[Array | None], attrs: Mapping[str, AttrValue]) -> Array:
    """ONNX NonMaxSuppression as docs/model-format.md defines NON_MAX_SUPPRESSION (onnxruntime's)."""
    boxes, scores = _req(ins[0]), _req(ins[1])
    opt = [ins[i] if len(ins) > i else None for i in (2, 3, 4)]
    max_out = int(opt[0].reshape(-1)[0]) if opt[0] is not None else 0
    iou = np.float32(opt[1].reshape(-1)[0]) if opt[1] is not None else np.float32(0)
    if not 0 <= iou <= 1:
        raise InterpreterError(f"iou_threshold is {iou}, outside [0, 1]")
    score_thr = np.float32(opt[2].reshape(-1)[0]) if opt[2] is not None else None
    center = _attr_int(attrs, "center_point_box", 0) == 1
    rows: list[tuple[int, int, int]] = []
    for b in range(boxes.shape[0]):
        for c in range(scores.shape[1]):
            sc = scores[b, c]
            cands = [
                i
                for i in range(sc.shape[0])
                if not np.isnan(sc[i]) and (score_thr is None or sc[i] > score_thr)
            ]
            cands.sort(key=lambda i: (-float(sc[i]), i))
            kept: list[int] = []
            for i in cands:
                if len(kept) >= max_out:
                    break
                if not any(_suppressed(boxes[b, k], boxes[b, i], center, iou) for k in kept):
                    kept.append(i)
            rows += [(b, c, i) for i in kept]
    return np.array(rows, dtype=np.int64).reshape(len(rows), 3)


def _run_select(op: ekm.OpRecord, ins: list[Array | None]) -> list[Array]:
    if op.type == OpType.TOP_K:
        k = int(_req(ins[1]).reshape(-1)[0])
        x = _req(ins[0])
        bound = x.shape[_attr_int(op.attrs, "axis", x.ndim - 1)]
        if not 0 <= k <= bound:
            raise InterpreterError(f"op '{op.name}' (TOP_K): K is {k}, outside 0 .. {bound}")
        return _top_k(x, k, op.attrs)
    return [_non_max_suppression(ins, op.attrs)]


def _req(value: Array | None) -> Array:
    if value is None:
        raise InterpreterError("a required input is absent")
    return value


def select_stage(network: ekm.NetworkRecord, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The index of the stage whose input shapes are ``shapes``."""
    for index, stage in enumerate(network.stages):
        if all(
            stage.tensors[t].shape == shapes[io.name] for io, t in zip(network.inputs, stage.input_bindings)
        ):
            return index
    have = [
        {io.name: stage.tensors[t].shape for io, t in zip(network.inputs, stage.input_bindings)}
        for stage in network.stages
    ]
    raise InterpreterError(f"no stage of network '{network.name}' takes {dict(shapes)}; stages: {have}")


def run_reference(
    model_file: ekm.ModelFile | bytes,
    network: str | None,
    inputs: Mapping[str, np.ndarray],
    plugins: PluginPaths | PluginSet = (),
) -> dict[str, np.ndarray]:
    """Run ``network`` (None: the only one) of a compiled model on ``inputs`` (by input name); returns
    the outputs by name (a DYNAMIC output with the shape it has this run). The stage is the one whose
    input shapes match. PLUGIN ops run through
    ``plugins`` (host builds of their libraries); without one a PLUGIN op is an InterpreterError."""
    plugin_set = plugins if isinstance(plugins, PluginSet) else PluginSet(plugins)
    model = model_file if isinstance(model_file, ekm.ModelFile) else ekm.read(bytes(model_file))
    net = model.network(network)
    names = [io.name for io in net.inputs]
    if sorted(inputs) != sorted(names):
        raise InterpreterError(f"network '{net.name}' takes inputs {names}, got {sorted(inputs)}")
    arrays = {io.name: np.asarray(inputs[io.name], dtype=ekm.DTYPES[io.dtype]) for io in net.inputs}
    stage = net.stages[select_stage(net, {n: tuple(a.shape) for n, a in arrays.items()})]
    values: list[Array | None] = [None] * len(stage.tensors)
    for index, t in enumerate(stage.tensors):
        if t.storage == ekm.CONSTANT:
            values[index] = t.data
    for io, index in zip(net.inputs, stage.input_bindings):
        values[index] = arrays[io.name]
    for op in stage.ops:
        ins: list[Array | None] = []
        for operand in op.inputs:
            if operand is None:
                ins.append(None)
                continue
            if values[operand] is None:
                raise InterpreterError(
                    f"op '{op.name}' reads tensor '{stage.tensors[operand].name}' before it is written"
                )
            ins.append(values[operand])
        shapes = [stage.tensors[i].shape for i in op.outputs]
        if op.type == OpType.PLUGIN:
            results = _run_plugin(op, ins, shapes, plugin_set)
        elif op.type in (OpType.TOP_K, OpType.NON_MAX_SUPPRESSION):
            results = _run_select(op, ins)
        elif op.type in _QUANTIZED:
            out_dtype = ekm.DTYPES[stage.tensors[op.outputs[0]].dtype]
            results = [np.ascontiguousarray(_run_quantized(op, ins, shapes[0], out_dtype))]
        else:
            results = _run_op(op, ins, shapes)
        for index, result in zip(op.outputs, results):
            bound = stage.tensors[index].shape
            if op.type in (OpType.TOP_K, OpType.NON_MAX_SUPPRESSION) or stage.tensors[index].dynamic:
                # its size depends on the data: at most the bound the file records
                fits = result.ndim == len(bound) and all(d <= b for d, b in zip(result.shape, bound))
                if fits:  # (an unused output of a run-time K is arena scratch of its bound)
                    values[index] = result
                    continue
            if result.shape != bound:
                raise InterpreterError(
                    f"op '{op.name}' ({OpType(op.type).name}) computes shape {list(result.shape)} "
                    f"but the file says {list(stage.tensors[index].shape)} for '{stage.tensors[index].name}'"
                )
            values[index] = result
    outputs: dict[str, np.ndarray] = {}
    for io, index in zip(net.outputs, stage.output_bindings):
        value = values[index]
        if value is None:
            raise InterpreterError(f"output '{io.name}' is never written")
        outputs[io.name] = value
    return outputs
