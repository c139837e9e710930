"""The test suite's models: small but real PyTorch networks (defined in edgekit.bench_models, which the
model benchmark shares), exported to ONNX once per test session and cached in a temporary directory,
plus the helpers the end-to-end tests share: compile, run through onnxruntime, compare.

Models (see edgekit.bench_models for the layers):
  mobilenetv2  inverted residuals, depthwise conv, ReLU6 (Clip), BatchNormalization kept in the ONNX graph
  resnet18     basic blocks, BatchNormalization kept, MaxPool, global average pool, Gemm
  yolo         strided conv backbone, Resize (nearest) upsampling, Concat of two scales, Sigmoid heads,
               Reshape/Transpose of the heads (Shape/Gather arithmetic the compiler folds per stage)
  mlp          Gemm + Relu layers, Softmax
  senet        squeeze-excite with HardSwish and HardSigmoid
Every export has a dynamic batch dimension, so one ONNX file compiles to any batch.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bench_models import INPUT_NAME, MODELS, OUTPUT_NAME, SEED, export_onnx, max_error, quantize_onnx

__all__ = [
    "INPUT_NAME",
    "MODEL_NAMES",
    "OUTPUT_NAME",
    "compile_ekm",
    "export_module",
    "input_shape_of",
    "max_error",
    "onnx_path",
    "ort_run",
    "quantized_onnx_path",
    "random_input",
]

MODEL_NAMES = tuple(MODELS)

_lock = threading.Lock()
_cache_dir: Path | None = None
_exported: dict[tuple[str, tuple[int, ...]], Path] = {}


def cache_dir() -> Path:
    """This session's model directory (made on first use, removed when the process exits)."""
    global _cache_dir
    if _cache_dir is None:
        _cache_dir = Path(tempfile.mkdtemp(prefix="edgekit-test-models-"))
        atexit.register(shutil.rmtree, _cache_dir, True)
    return _cache_dir


def input_shape_of(name: str) -> tuple[int, ...]:
    """The (small) input shape the tests use for model `name`."""
    return MODELS[name].test_shape


def onnx_path(name: str, shape: Sequence[int] | None = None) -> Path:
    """Model `name` exported to ONNX with example input `shape` (default: its test shape); the batch
    dimension is dynamic either way. Exported once per session."""
    key = (name, tuple(shape) if shape is not None else input_shape_of(name))
    with _lock:
        if key not in _exported:
            path = cache_dir() / f"{name}-{'x'.join(map(str, key[1]))}.onnx"
            _exported[key] = export_onnx(name, key[1], path)
        return _exported[key]


def quantized_onnx_path(name: str, *, per_channel: bool = True, qoperator: bool = False) -> Path:
    """Model `name` quantized to int8 by onnxruntime.quantization (edgekit.bench_models.quantize_onnx),
    QDQ or QOperator form, per-channel or per-tensor weights; made once per session."""
    src = onnx_path(name)
    tag = f"{'qop' if qoperator else 'qdq'}-{'pc' if per_channel else 'pt'}"
    key = (f"{name}-{tag}", input_shape_of(name))
    with _lock:
        if key not in _exported:
            path = cache_dir() / f"{name}-{tag}.onnx"
            _exported[key] = quantize_onnx(
                src, path, input_shape_of(name), per_channel=per_channel, qoperator=qoperator
            )
        return _exported[key]


def compile_ekm(
    name: str, stages: Sequence[Mapping[str, Sequence[int]]] | None = None, network_name: str | None = None
) -> Path:
    """Model `name` compiled to .ekm (one stage at its test shape unless `stages` says otherwise), from
    the ONNX export at the first stage's input shape (only the batch dimension is dynamic)."""
    from edgekit.compiler import compile_model

    stages = list(stages) if stages is not None else [{INPUT_NAME: input_shape_of(name)}]
    tag = "-".join("x".join(map(str, s[INPUT_NAME])) for s in stages)
    out = cache_dir() / f"{network_name or name}-{tag}.ekm"
    if not out.exists():
        source = onnx_path(name, stages[0][INPUT_NAME])  # exported at the first stage's shape
        compile_model(str(source), str(out), stages=stages, name=network_name or name)
    return out


def random_input(shape: Sequence[int], seed: int = SEED) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32)


def ort_run(path: Path, inputs: Mapping[str, np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
    """The ONNX model's outputs from onnxruntime (one thread, CPU): the reference."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [np.asarray(y) for y in session.run(None, dict(inputs))]


def export_module(
    module: Any,
    shape: Sequence[int],
    input_names: Sequence[str],
    output_names: Sequence[str],
    *,
    fold: bool = True,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> bytes:
    """A torch module in eval mode, its BatchNorm layers given non-trivial statistics (so folding them
    matters; from torch's current seed), as ONNX bytes (opset 17, the TorchScript exporter)."""
    import torch

    module.eval()
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation: it is the fast one
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            module,
            (torch.randn(*shape),),
            str(path),
            dynamo=False,
            opset_version=17,
            do_constant_folding=fold,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()} if dynamic_axes else None,
        )
        return path.read_bytes()
