"""Quantized (int8) models on the C runtime's portable kernels (and XNNPACK's): the five test models
quantized by onnxruntime.quantization (QDQ per-channel and per-tensor, QOperator) and the mixed network of
tests/test_quantized.py (every int8 op), compiled to .ekm 1.5 and run by EdgeKit, against the compiler's
reference interpreter (the spec's formulas) and onnxruntime's int8 run of the same model (within one
quantization step, as tests/test_quantized.py checks the reference).

The portable kernels compute the formulas of docs/model-format.md exactly, so where a network is int8
from its QUANTIZE to its DEQUANTIZE, EdgeKit's outputs equal the reference interpreter's bit for bit;
ops that stay float between DEQUANTIZE and QUANTIZE (Softmax) may differ from numpy in the last bits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from test_quantized import (
    FORMS,
    Mixed,
    assert_within_a_step,
    compile_quantized,
)

import edgekit as ek
import models
from edgekit.compiler import ekm
from edgekit.compiler.graph import OpType
from edgekit.compiler.reference import run_reference

FLOAT_OPS = {OpType.SOFTMAX, OpType.SIGMOID, OpType.TANH, OpType.REDUCE_MEAN}


def float_compute(data: bytes) -> bool:
    """Whether an op computes in float between a DEQUANTIZE and a QUANTIZE (not bit-exact with numpy)."""
    return any(OpType(op.type) in FLOAT_OPS for op in ekm.read(data).networks[0].stages[0].ops)


def run_edgekit(data: bytes, x: np.ndarray[Any, Any], threads: int) -> np.ndarray[Any, Any]:
    with ek.Context(device=0, kernels="portable", threads=threads) as ctx:
        net = ctx.load_model(data).network()
        (y,) = net.create_request().run([x])
    return np.asarray(y)


def check(data: bytes, path: Path, shape: tuple[int, ...], what: str, seeds: tuple[int, ...]) -> None:
    exact = not float_compute(data)
    for seed in seeds:
        x = models.random_input(shape, seed=seed)
        reference = run_reference(data, None, {models.INPUT_NAME: x})[models.OUTPUT_NAME]
        for threads in (1, 2):
            ours = run_edgekit(data, x, threads)
            assert ours.dtype == reference.dtype and ours.shape == reference.shape
            if exact:
                np.testing.assert_array_equal(ours, reference, err_msg=f"{what}, {threads} threads")
            else:
                np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6, err_msg=what)
            assert_within_a_step(ours, path, x, f"{what} on EdgeKit ({threads} threads)")


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_quantized_models_run_on_the_portable_kernels(name: str, form: str) -> None:
    path = models.quantized_onnx_path(name, **FORMS[form])
    shape = models.input_shape_of(name)
    check(compile_quantized(path, shape), path, shape, f"{name} {form}", (1, 2))


def test_the_mixed_network_runs_every_int8_op(tmp_path: Path) -> None:
    from edgekit.bench_models import quantize_onnx

    src = tmp_path / "mixed.onnx"
    src.write_bytes(
        models.export_module(Mixed.build(), (1, 3, 16, 16), [models.INPUT_NAME], [models.OUTPUT_NAME])
    )
    path = quantize_onnx(src, tmp_path / "mixed-qdq.onnx", (1, 3, 16, 16))
    check(compile_quantized(path, (1, 3, 16, 16)), path, (1, 3, 16, 16), "mixed", (1, 2, 3))


def test_int8_and_uint8_network_inputs_and_outputs() -> None:
    """A network with an int8 input and a uint8 output (their IOS scale and zero point in
    ``net.inputs`` / ``net.outputs``, numpy int8 / uint8 arrays in and out): x -> QLUT (int8 -> uint8,
    the zero point moved by 128) -> q, and x -> DEQUANTIZE -> y."""
    shape = (2, 3, 5)
    table = np.arange(256, dtype=np.uint8)  # q = x + 128: the same real values at zero point -3 + 128
    tensors = [
        ekm.TensorRecord("x", shape, ekm.INPUT, ekm.INT8),
        ekm.TensorRecord("table", (256,), ekm.CONSTANT, ekm.UINT8, data=table),
        ekm.TensorRecord("q", shape, ekm.OUTPUT, ekm.UINT8, io_index=0),
        ekm.TensorRecord("y", shape, ekm.OUTPUT, ekm.FLOAT32, io_index=1),
    ]
    ops = [
        ekm.OpRecord("lut", OpType.QLUT, [0, 1], [2]),
        ekm.OpRecord("dq", OpType.DEQUANTIZE, [0], [3], {"scale": 0.05, "zero_point": -3}),
    ]
    stage = ekm.StageRecord(tensors, ops, [0], [2, 3], 0)
    net = ekm.NetworkRecord(
        "q",
        [ekm.IORecord("x", ekm.INT8, 0.05, -3, 30)],
        [ekm.IORecord("q", ekm.UINT8, 0.05, 125, 30), ekm.IORecord("y", ekm.FLOAT32, max_bytes=120)],
        [stage],
    )
    data = ekm.write(ekm.ModelFile([net], (1, 5)), source_map=False)
    x = np.random.default_rng(7).integers(-128, 128, shape, dtype=np.int8)
    with ek.Context(device=0, kernels="portable", threads=2) as ctx:
        network = ctx.load_model(data).network()
        (xi,) = network.inputs
        qi, yi = network.outputs
        assert (xi.dtype, xi.scale, xi.zero_point) == (np.dtype(np.int8), float(np.float32(0.05)), -3)
        assert (qi.dtype, qi.scale, qi.zero_point) == (np.dtype(np.uint8), float(np.float32(0.05)), 125)
        assert (yi.dtype, yi.scale, yi.zero_point) == (np.dtype(np.float32), 1.0, 0)
        q, y = network.create_request().run([x])
    assert q.dtype == np.uint8 and y.dtype == np.float32
    np.testing.assert_array_equal(q, (x.astype(np.int32) + 128).astype(np.uint8))
    np.testing.assert_array_equal(y, (x.astype(np.float32) + 3) * np.float32(0.05))
    # the same real values both ways
    np.testing.assert_allclose((q.astype(np.float32) - 125) * np.float32(0.05), y, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- XNNPACK's int8 operators, and auto
def run_kernels(data: bytes, kernels: str, inputs: list[np.ndarray[Any, Any]], threads: int) -> list[Any]:
    try:
        ctx = ek.Context(device=0, kernels=kernels, threads=threads)
    except ek.UnsupportedError as exc:
        pytest.skip(f"kernels={kernels}: the XNNPACK kernel provider is not available here ({exc})")
    with ctx:
        request = ctx.load_model(data).network().create_request()
        return [request.run([x])[0] for x in inputs]


@pytest.mark.parametrize("kernels", ["xnnpack", "auto"])
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_quantized_models_on_xnnpack_and_auto(name: str, kernels: str) -> None:
    """XNNPACK's qs8/qc8 operators where the provider takes an op (each within one unit of the spec's
    formulas), the portable kernels for the rest: within a step of onnxruntime, 1 and 2 threads."""
    path = models.quantized_onnx_path(name)
    shape = models.input_shape_of(name)
    data = compile_quantized(path, shape)
    inputs = [models.random_input(shape, seed=seed) for seed in (1, 2)]
    for threads in (1, 2):
        for x, ours in zip(inputs, run_kernels(data, kernels, inputs, threads)):
            assert ours.dtype == np.float32
            assert_within_a_step(ours, path, x, f"{name} [{kernels}, {threads} threads]")


# The int8 ops XNNPACK's provider takes (kernels/xnnpack/quantized.c); QUANTIZE, QAVERAGE_POOL and QLUT
# stay portable.
XNNPACK_INT8_OPS = {"QCONV", "QFULLY_CONNECTED", "QADD", "QMUL", "QGLOBAL_AVERAGE_POOL", "DEQUANTIZE"}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_the_xnnpack_provider_runs_int8_ops(name: str, form: str) -> None:
    """kernels="xnnpack" on each quantization form (per-channel and per-tensor weight scales, QOperator):
    the profile shows int8 ops on the provider and none of those it declines, and the outputs stay within
    a step of onnxruntime's."""
    path = models.quantized_onnx_path(name, **FORMS[form])
    shape = models.input_shape_of(name)
    data = compile_quantized(path, shape)
    try:
        ctx = ek.Context(device=0, kernels="xnnpack", threads=2)
    except ek.UnsupportedError as exc:
        pytest.skip(f"the XNNPACK kernel provider is not available here ({exc})")
    with ctx:
        req = ctx.load_model(data).network().create_request()
        x = models.random_input(shape, seed=1)
        (ours,) = req.run([x], profile=True)
        assert_within_a_step(np.asarray(ours), path, x, f"{name} {form} on XNNPACK")
        ran = {
            (r.details["op_type"], r.details["provider"])
            for r in req.profile_data
            if r.kind == "LayerExecute"
        }
    on_xnnpack = {op for op, provider in ran if provider == "xnnpack"}
    # (dense QCONVs may stay portable: on x86-64 with AVX512-VNNI its int8 GEMM is faster)
    assert on_xnnpack & XNNPACK_INT8_OPS, ran
    assert not {"QUANTIZE", "QAVERAGE_POOL", "QLUT"} & on_xnnpack, ran
