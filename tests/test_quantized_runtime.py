"""Quantized (int8) models on the C runtime's portable kernels: the five test models quantized by
onnxruntime.quantization (QDQ per-channel and per-tensor, QOperator) and the mixed network of
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
