"""EdgeKit networks as a layer of a PyTorch model (docs/host-graphs.md).

    import edgekit.torch  # registers the torch op edgekit::run_network (also needed before loading)

    class Model(torch.nn.Module):
        def __init__(self, ekm: bytes) -> None:
            super().__init__()
            self.pre = torch.nn.Conv2d(3, 8, 3)
            self.body = edgekit.torch.RuntimeSubgraph(ekm)  # a compiled network: one op in the graph
            self.post = torch.nn.Flatten()

``RuntimeSubgraph`` runs a compiled ``.ekm`` network through the EdgeKit runtime on CPU float tensors.
Every call copies its inputs into the runtime's device memory and the outputs back into new CPU tensors
(there is no zero-copy path between torch and device memory). The op is a torch custom op
(``torch.ops.edgekit.run_network``) with a fake implementation, so ``torch.jit.trace`` and
``torch.export`` capture the network as one op; the ``.ekm`` bytes are a buffer of the module
(``ekm``), so ``torch.jit.save``/``torch.export.save`` keep them and a reloaded model runs once
``edgekit.torch`` is imported in that process (the import registers the op). The legacy
``torch.onnx.export(..., dynamo=False)`` writes the op as an ``ai.edgekit`` ``EdgeKitNetwork`` node,
which ``edgekit compile`` inlines. The op is not differentiable: ``backward`` through it raises.

This module imports torch (absolutely: it never shadows the real ``torch`` inside the package);
``import edgekit`` alone does not.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import torch
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError("edgekit.torch needs PyTorch, which is not installed: pip install torch") from _exc

import numpy as np

from edgekit.inference import Context, Network, Request

__all__ = ["DOMAIN", "OP_TYPE", "RuntimeSubgraph", "clear_cache", "make_edgekit_node", "run_network"]

# The ONNX node an EdgeKit network becomes (edgekit.compiler.subnet reads it; keep the two equal).
DOMAIN = "ai.edgekit"
OP_TYPE = "EdgeKitNetwork"

Shape = tuple[int, ...]


@dataclass(frozen=True)
class _NetInfo:
    """What the fake (shape-only) implementation needs: per stage the input and output shapes."""

    name: str
    inputs: list[str]
    outputs: list[str]
    stages: list[tuple[list[Shape], list[Shape]]]

    def describe(self) -> str:
        return "; ".join(
            f"stage {i}: " + ", ".join(f"{n}={_fmt(s)}" for n, s in zip(self.inputs, ins))
            for i, (ins, _outs) in enumerate(self.stages)
        )


class _Loaded:
    """A network loaded in this process: its context and a pool of idle requests (a request runs one
    launch at a time; concurrent calls each take their own)."""

    def __init__(self, context: Context, network: Network) -> None:
        self.context = context
        self.network = network
        self._idle: list[Request] = []
        self._lock = threading.Lock()

    def run(self, arrays: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        with self._lock:
            request = self._idle.pop() if self._idle else None
        if request is None:
            request = self.network.create_request()
        try:
            return request.run(arrays)
        finally:
            with self._lock:
                self._idle.append(request)


_lock = threading.Lock()
_contexts: dict[str, Context] = {}  # sha256 of the .ekm bytes -> the context holding its networks
_loaded: dict[tuple[str, str], _Loaded] = {}  # (sha256, network) -> loaded network
_infos: dict[tuple[str, str], _NetInfo] = {}  # (sha256, network) -> shapes; kept across clear_cache()
_models: dict[str, bytes] = {}  # sha256 -> the .ekm bytes (for the ONNX export)


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape) if len(shape) else "scalar"


def _info_of(network: Network) -> _NetInfo:
    return _NetInfo(
        network.name,
        network.input_names,
        network.output_names,
        [
            (
                [tuple(stage.inputs[n]) for n in network.input_names],
                [tuple(stage.outputs[n]) for n in network.output_names],
            )
            for stage in network.stages
        ],
    )


def _load(data: bytes | np.ndarray[Any, Any], key: str, network: str | None) -> _Loaded:
    """The loaded network (loading the model into its own context on first use)."""
    with _lock:
        if network is not None and (key, network) in _loaded:
            return _loaded[(key, network)]
        context = _contexts.get(key)
        if context is None:
            context = Context()
            try:
                context.load_model(data)
            except ValueError as exc:
                context.close()
                raise ValueError(
                    f"RuntimeSubgraph: the ekm bytes are not a model EdgeKit can load: {exc}"
                ) from exc
            _contexts[key] = context
        names = context.network_names
        if network is None:
            if len(names) != 1:
                raise ValueError(
                    f"RuntimeSubgraph: the model has {len(names)} networks ({', '.join(names)}); "
                    "name one with network="
                )
            network = names[0]
        if network not in names:
            raise ValueError(
                f"RuntimeSubgraph: the model has no network {network!r}; its networks are: {', '.join(names)}"
            )
        if (key, network) not in _loaded:
            net = context.network(network)
            for t in [*net.inputs, *net.outputs]:
                if t.dtype != np.float32:
                    raise ValueError(
                        f"RuntimeSubgraph: network {network!r} has {t.dtype} tensor {t.name!r}; "
                        "only float32 networks run as a torch layer"
                    )
            _loaded[(key, network)] = _Loaded(context, net)
            _infos[(key, network)] = _info_of(net)
        return _loaded[(key, network)]


def clear_cache() -> None:
    """Close every runtime context ``RuntimeSubgraph`` opened in this process (they reload on the next
    call). The contexts hold device 0 open; close them before opening that device with other options."""
    with _lock:
        contexts = list(_contexts.values())
        _contexts.clear()
        _loaded.clear()
    for context in contexts:
        context.close()


atexit.register(clear_cache)


def _stage_of(info: _NetInfo, inputs: Sequence[torch.Tensor]) -> int:
    """Check the inputs (count, device, dtype) and return the stage their shapes select; the errors name
    what the network expects."""
    where = f"EdgeKit network {info.name!r}"
    if len(inputs) != len(info.inputs):
        raise ValueError(
            f"{where} takes {len(info.inputs)} input(s) ({', '.join(info.inputs)}), got {len(inputs)}"
        )
    for name, t in zip(info.inputs, inputs):
        if t.device.type != "cpu":
            raise ValueError(
                f"{where}: input {name!r} is on {t.device}; EdgeKit takes CPU tensors (move it with .cpu(); "
                "the input is copied into the runtime's device memory on each call)"
            )
        if t.dtype != torch.float32:
            raise ValueError(f"{where}: input {name!r} must be torch.float32, got {t.dtype}")
    shapes = [tuple(int(d) for d in t.shape) for t in inputs]
    for index, (stage_inputs, _outs) in enumerate(info.stages):
        if shapes == stage_inputs:
            return index
    given = ", ".join(f"{n}={_fmt(s)}" for n, s in zip(info.inputs, shapes))
    raise ValueError(f"{where}: no stage takes the input shapes {given}; its stages take: {info.describe()}")


def _key_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@torch.library.custom_op("edgekit::run_network", mutates_args=())
def run_network(
    model: torch.Tensor, inputs: list[torch.Tensor], key: str, network: str
) -> list[torch.Tensor]:
    """Run ``network`` of the .ekm in ``model`` (uint8) on ``inputs``; ``key`` is the bytes' sha256 (the
    cache key: the model is loaded once per process). Inputs are copied into device memory, the outputs
    copied back into new CPU tensors."""
    loaded = _loaded.get((key, network))
    if loaded is None:  # first call in this process (e.g. a reloaded model): check the bytes are the key's
        if model.device.type != "cpu" or model.dtype != torch.uint8 or model.dim() != 1:
            raise ValueError("edgekit::run_network: the model must be a 1-D CPU uint8 tensor of .ekm bytes")
        data = model.contiguous().numpy().tobytes()
        if _key_of(data) != key:
            raise ValueError(
                f"edgekit::run_network: the ekm buffer's sha256 is not {key}: the module's bytes were changed"
            )
        loaded = _load(data, key, network)
        with _lock:
            _models.setdefault(key, data)
    info = _infos[(key, network)]
    _stage_of(info, inputs)
    # .contiguous() copies a strided view into a dense tensor; the runtime copies it into device memory.
    arrays = [t.detach().contiguous().numpy() for t in inputs]
    return [torch.from_numpy(y) for y in loaded.run(arrays)]  # get_outputs' fresh copies


@run_network.register_fake
def _run_network_fake(
    model: torch.Tensor, inputs: list[torch.Tensor], key: str, network: str
) -> list[torch.Tensor]:
    info = _infos.get((key, network))
    if info is None:
        raise RuntimeError(
            f"edgekit::run_network: network {network!r} of model {key[:12]}... is not loaded in this "
            "process; run the model once (or construct its RuntimeSubgraph) before tracing it"
        )
    stage = _stage_of(info, inputs)
    return [inputs[0].new_empty(shape, dtype=torch.float32) for shape in info.stages[stage][1]]


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    pass


def _backward(ctx: Any, grads: Any) -> Any:
    raise RuntimeError(
        "EdgeKit networks are not differentiable: edgekit::run_network (a RuntimeSubgraph) has no "
        "backward. Train the PyTorch model, then compile it; or detach() the input of the EdgeKit layer."
    )


run_network.register_autograd(_backward, setup_context=_setup_context)


class RuntimeSubgraph(torch.nn.Module):
    """A compiled EdgeKit network as one layer: ``forward(*inputs)`` takes CPU float32 tensors in the
    network's input order and returns its output (a tuple for several outputs).

    ``ekm``: the ``.ekm`` bytes (or a path to the file); ``network``: which network of the file (None: its
    only one). The stage is chosen by the input shapes, as ``Request.set_inputs`` does. Each call copies
    the inputs into the runtime's device memory and the outputs back into new CPU tensors. The model is
    loaded once per process (cached by the bytes' sha256 and the network name), on device 0, with the
    runtime's default kernels and threads (``EDGEKIT_KERNELS``, ``EDGEKIT_THREADS``).

    Not differentiable: a backward pass through it raises. A model saved with ``torch.jit.save`` or
    ``torch.export.save`` keeps the bytes (buffer ``ekm``); load it after ``import edgekit.torch``.
    """

    ekm: torch.Tensor

    def __init__(
        self, ekm: bytes | bytearray | memoryview | str | os.PathLike[str], network: str | None = None
    ) -> None:
        super().__init__()
        if isinstance(ekm, (str, os.PathLike)):
            data = Path(ekm).read_bytes()
        elif isinstance(ekm, (bytes, bytearray, memoryview)):
            data = bytes(ekm)
        else:
            raise TypeError(f"RuntimeSubgraph takes the .ekm bytes or a path, got {type(ekm).__name__}")
        if network is not None and not isinstance(network, str):
            raise TypeError(f"network must be a str or None, got {type(network).__name__}")
        self.key = _key_of(data)
        loaded = _load(data, self.key, network)
        with _lock:
            _models.setdefault(self.key, data)
        self.network: str = loaded.network.name
        self.input_names: list[str] = loaded.network.input_names
        self.output_names: list[str] = loaded.network.output_names
        self.register_buffer("ekm", torch.frombuffer(bytearray(data), dtype=torch.uint8))

    def extra_repr(self) -> str:
        return (
            f"network={self.network!r}, inputs={self.input_names}, outputs={self.output_names}, "
            f"{self.ekm.numel()} bytes"
        )

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = run_network(self.ekm, list(inputs), self.key, self.network)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def make_edgekit_node(
    ekm: bytes | bytearray | memoryview | str | os.PathLike[str],
    inputs: Sequence[str],
    outputs: Sequence[str],
    network: str | None = None,
    name: str = "",
) -> Any:
    """An ONNX node (``onnx.NodeProto``, domain ``ai.edgekit``) that runs a compiled network inside a
    host graph; ``edgekit compile`` inlines it. Needs onnx (host only). See
    ``edgekit.compiler.subnet.make_edgekit_node``."""
    from edgekit.compiler.subnet import make_edgekit_node as make

    return make(ekm, inputs, outputs, network=network, name=name)


def _onnx_symbolic(g: Any, model: Any, inputs: Any, key: Any, network: Any) -> Any:
    """The legacy (TorchScript) ONNX exporter's translation: an ai.edgekit::EdgeKitNetwork node holding
    the .ekm bytes, in place of the op."""
    from torch.onnx import symbolic_helper

    key_s = symbolic_helper._maybe_get_const(key, "s")
    net_s = symbolic_helper._maybe_get_const(network, "s")
    data = _models.get(key_s)
    info = _infos.get((key_s, net_s))
    if data is None or info is None:
        raise RuntimeError(f"edgekit::run_network: model {key_s[:12]}... is not loaded in this process")
    values = symbolic_helper._unpack_list(inputs)
    outs = g.op(f"{DOMAIN}::{OP_TYPE}", *values, model_s=data, network_s=net_s, outputs=len(info.outputs))
    outs = list(outs) if len(info.outputs) > 1 else [outs]
    return g.op("prim::ListConstruct", *outs)


try:
    torch.onnx.register_custom_op_symbolic("edgekit::run_network", _onnx_symbolic, 7)  # type: ignore[attr-defined]
except Exception:  # pragma: no cover - a torch without the legacy exporter: only ONNX export is lost
    pass
