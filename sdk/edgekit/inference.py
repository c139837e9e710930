"""The Pythonic inference API, on top of the Cython layer in edgekit._runtime.

    ctx = ek.Context(device=0)                 # a runtime on a device; a context manager
    model = ctx.load_model("model.ekm")        # a path (mapped) or bytes (copied)
    net = model.network()                      # the only network, or model.network("name")
    req = net.create_request()                 # inputs/outputs in device memory, allocated once
    outputs = req.run({"input": x})            # or set_inputs / infer / wait / get_outputs

A Request runs one launch at a time; make several requests to keep the device busy. See
docs/python-api.md.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Union, cast

import numpy as np
import numpy.typing as npt

from edgekit import _runtime
from edgekit.device import Device, DeviceMemory, MappedView
from edgekit.errors import (
    BusyError,
    FreedHandleError,
    InvalidArgumentError,
    InvalidTypeError,
)

Shape = tuple[int, ...]
Array = npt.NDArray[Any]
# What set_inputs takes: arrays in input order, or by input name (a lone array for a one-input network).
Inputs = Union[Sequence[Any], Mapping[str, Any], Array]

# The model format's dtype codes (docs/model-format.md, "dtypes").
DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.float16),
    3: np.dtype(np.int8),
    4: np.dtype(np.uint8),
    5: np.dtype(np.int32),
    6: np.dtype(np.int64),
}
DTYPE_CODES: dict[np.dtype[Any], int] = {dtype: code for code, dtype in DTYPES.items()}
KERNELS = ("auto", "portable", "xnnpack")

# The "edgekit" loggers are silent unless the application configures logging, except warnings, which
# Python's last-resort handler prints to stderr.
_log = logging.getLogger(__name__)
# The provider loads (or fails to) once per process, so its reason is logged once per process too.
_fallback_logged = False
_fallback_lock = threading.Lock()

_INT_MAX = 2**31 - 1


def _fmt_shape(shape: Shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


@dataclass(frozen=True)
class TensorInfo:
    """An input or output of a network. ``shape`` is its shape in the first stage, ``shapes`` one per
    stage. ``scale``/``zero_point`` describe quantized tensors (1.0/0 for float ones); ``max_bytes`` is
    the most bytes it takes in any stage. ``dynamic``: an output whose size depends on the data
    (NonMaxSuppression's, ...): its ``shapes`` are the largest, and a launch reports what it produced."""

    name: str
    dtype: np.dtype[Any]
    shape: Shape
    shapes: tuple[Shape, ...]
    scale: float
    zero_point: int
    max_bytes: int
    dynamic: bool = False

    def nbytes(self, stage: int = 0) -> int:
        """Bytes the tensor takes in ``stage``."""
        return math.prod(self.shapes[stage]) * self.dtype.itemsize


@dataclass(frozen=True)
class Stage:
    """One set of static shapes a network was compiled for: ``inputs``/``outputs`` map names to shapes."""

    index: int
    inputs: dict[str, Shape]
    outputs: dict[str, Shape]

    def __str__(self) -> str:
        shapes = ", ".join(f"{name}={_fmt_shape(shape)}" for name, shape in self.inputs.items())
        return f"stage {self.index}: {shapes}"


PROFILE_KINDS = _runtime.PROFILE_KINDS


@dataclass(frozen=True)
class ProfileRecord:
    """One timed record of a profile (docs/profiling.md). ``kind`` is one of ModelInit, RequestInit,
    TransferFromInput, Wait, LayerExecute, TransferToOutput, ModelExecute, Transport (remote devices);
    ``name`` the op (LayerExecute), "request"/"reply" (Transport) or the network; ``start_ns`` and
    ``duration_ns`` CLOCK_MONOTONIC nanoseconds (``time.monotonic_ns()``); ``details`` the rest: thread,
    network, stage, launch, threads, bytes, and for LayerExecute op_index, op_type, provider, nodes (the
    ONNX nodes), tensor (the ONNX tensor), shapes, flops, algorithm (the portable kernel's choice:
    "winograd-f4/avx512", "gemm", "depthwise"; "" when a provider ran the op or it has no choice)."""

    kind: str
    name: str
    start_ns: int
    duration_ns: int
    details: dict[str, Any]

    @property
    def duration_ms(self) -> float:
        return self.duration_ns / 1e6


class Profile(_runtime.Profile):
    """A profile: give it to ``req.infer(profile=...)`` (or ``req.run``) and it collects the records of
    those launches; ``write(dir)`` writes trace.json (Chrome Trace Event format: Perfetto,
    chrome://tracing) and summary.csv (ops by time), the same files the C runtime and the edge app
    write. A context manager (``close()`` frees it)."""

    def __enter__(self) -> Profile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<edgekit.Profile, {len(self)} record(s)>"

    @property
    def records(self) -> list[ProfileRecord]:
        """Every record, in the order they were added."""
        return [ProfileRecord(*r) for r in self._records()]

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write ``path``/trace.json and ``path``/summary.csv (the directory is made if missing)."""
        super().write(os.fspath(path))


@dataclass(frozen=True)
class StageMemory:
    """What one stage of a network needs (``Network.memory``), for the static memory strategy."""

    constant_bytes: int  # its weights: read in place from the loaded model, shared; nothing to provide
    workspace_bytes: int  # device memory one launch at a time needs (its intermediate tensors)
    alignment: int  # a workspace's offset must be a multiple of this


class Allocator(_runtime.Allocator):
    """Your own device allocator, like MagicMind's ``IAllocator``: subclass it and implement
    ``alloc`` and ``free``; ``Context(allocator=...)`` then takes every device allocation of the
    context's runtime through it (execution workspaces, made at a network's first launches).

    Slow by nature: the runtime calls it on its worker threads, which must take the GIL for each
    call, so a busy Python program delays launches that need memory. Prefer ``PoolAllocator`` (in C)
    unless the memory must come from your code; either way, launches of a warmed-up context reuse
    their workspaces and do not allocate. An exception in ``alloc`` is printed and fails the launch
    with ``OutOfMemoryError``."""

    def __init__(self) -> None:
        self._init_custom()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.stats['live_blocks']} live block(s)"
        return f"<{type(self).__name__} {state}>"

    def alloc(self, size: int, alignment: int) -> tuple[DeviceMemory, int]:
        """``size`` bytes of device memory: (a memory of the context's device, the byte offset in it,
        a multiple of ``alignment``). The runtime checks the answer before using it."""
        raise NotImplementedError(f"{type(self).__name__} must implement alloc(size, alignment)")

    def free(self, memory: DeviceMemory, offset: int, size: int) -> None:
        """Take back what ``alloc`` returned."""
        raise NotImplementedError(f"{type(self).__name__} must implement free(memory, offset, size)")


class PoolAllocator(_runtime.Allocator):
    """An allocator in C over one ``capacity``-byte block of ``device``'s heap, taken now and handed out
    in parts (best fit, 64-byte aligned): a context made with it never reaches the device heap, and
    its device memory is bounded by ``capacity``. ``stats`` counts its allocations."""

    def __init__(self, device: Device, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise InvalidArgumentError(f"capacity must be a whole number of bytes >= 1, got {capacity!r}")
        self._init_pool(device, capacity)
        self.device = device

    def __repr__(self) -> str:
        if self.closed:
            return "<edgekit.PoolAllocator (closed)>"
        st = self.stats
        used, blocks = st["bytes_in_use"], st["live_blocks"]
        return f"<edgekit.PoolAllocator {used}/{st['capacity']} bytes in {blocks} block(s)>"


class Context:
    """A runtime on a device: it loads models and runs their networks.

    ``device`` is a device id or a board's URL (``"tcp://HOST:PORT"``, ``"ssh://user@board"``: device 0 of
    its remote_server, see docs/remote-protocol.md); the context then opens and owns an ``ek.Device``,
    with ``coherence`` ``"coherent"``/``"strict"``/None. Or it is an open ``ek.Device`` (shared; not
    closed by the context), for other device numbers or connection options.
    ``kernels`` is ``"auto"`` (XNNPACK where it has the op, portable C for the rest; portable alone, and
    ``kernels_reason`` says why, when the XNNPACK provider is missing or cannot run here), ``"portable"``,
    ``"xnnpack"`` (an error naming the cause if the provider is missing or cannot run here) or None
    (``EDGEKIT_KERNELS``, else auto).
    ``threads`` is the threads a launch uses (None: ``EDGEKIT_THREADS``, else the CPUs this process may
    use: its affinity mask and cgroup CPU quota, at most 8). A launch never runs more threads than the
    CPUs it may run on.
    ``allocator`` (an ``ek.PoolAllocator`` or your ``ek.Allocator``; local devices only) takes every
    device allocation of the context's runtime; None: the device heap (docs/memory.md, "Inference memory").
    """

    def __init__(
        self,
        device: int | str | Device = 0,
        kernels: str | None = None,
        threads: int | None = None,
        coherence: str | None = None,
        allocator: Allocator | PoolAllocator | None = None,
    ) -> None:
        if kernels is not None and kernels not in KERNELS:
            raise InvalidArgumentError(
                f"kernels must be one of {', '.join(KERNELS)} or None, got {kernels!r}"
            )
        if isinstance(device, Device):
            if device.closed:
                raise InvalidArgumentError(f"device {device.id} is closed")
            if coherence is not None and coherence != device.coherence:
                raise InvalidArgumentError(
                    f"coherence={coherence!r} differs from the given device's ({device.coherence!r}); "
                    "set it when opening the device, or pass a device id"
                )
            self._device, self._owns_device = device, False
        elif isinstance(device, (int, str)) and not isinstance(device, bool):
            self._device, self._owns_device = Device(device, coherence=coherence), True
        else:
            raise InvalidTypeError(
                "device must be a device id, a board URL (tcp://..., ssh://...) or an edgekit.Device, "
                f"got {type(device).__name__}"
            )
        try:
            self._runtime = _runtime.Runtime(self._device, kernels, threads, allocator)
        except BaseException:
            if self._owns_device:
                self._device.close()
            raise
        self._lock = threading.Lock()
        self._models: list[Model] = []
        self._requests: weakref.WeakSet[Request] = weakref.WeakSet()
        self._log_fallback()

    def _log_fallback(self) -> None:
        global _fallback_logged
        reason = self._runtime.kernels_reason
        if not reason:
            return
        with _fallback_lock:
            if _fallback_logged:
                return
            _fallback_logged = True
        _log.warning("kernels 'auto' run the portable kernels: the XNNPACK provider is not used: %s", reason)

    def __enter__(self) -> Context:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<edgekit.Context (closed)>"
        return (
            f"<edgekit.Context on device {self._device.id}, {self.kernels} kernels, "
            f"networks: {', '.join(self.network_names) or 'none'}>"
        )

    @property
    def device(self) -> Device:
        """The device the context runs on."""
        return self._device

    @property
    def closed(self) -> bool:
        return bool(self._runtime.closed)

    @property
    def kernels(self) -> str:
        """The kernels in use: ``"xnnpack"`` (with portable C for the ops it lacks) or ``"portable"``."""
        self._check_open()
        return str(self._runtime.kernels)

    @property
    def kernels_reason(self) -> str:
        """Why ``kernels="auto"`` (or None resolving to it) runs ``"portable"``: the XNNPACK provider did
        not load (the dlopen error) or cannot run here (e.g. ``xnn_initialize`` failed, with its status);
        also logged once per process, as a warning of the ``edgekit.inference`` logger, when the first
        such context is made. ``""`` when the context runs the kernels it was asked for, and for remote
        devices."""
        self._check_open()
        return str(self._runtime.kernels_reason)

    @property
    def allocator(self) -> Allocator | PoolAllocator | None:
        """The allocator the context was made with, or None (the device heap)."""
        return cast(Union[Allocator, PoolAllocator, None], self._runtime.allocator)

    @property
    def threads(self) -> int:
        """The threads a launch uses unless ``infer(threads=)`` says otherwise (see the class doc)."""
        self._check_open()
        return int(self._runtime.threads)

    @property
    def network_names(self) -> list[str]:
        """Every network loaded into this context, in load order."""
        self._check_open()
        return list(self._runtime.network_names())

    @property
    def models(self) -> list[Model]:
        return list(self._models)

    def close(self) -> None:
        """Close the requests (waiting for their launches), free the models, close an owned device.
        Numpy views of a request's tensors stay valid: their memory (and an owned device) is released
        when the last of them goes."""
        if self.closed:
            return
        for request in list(self._requests):
            request.close()
        self._runtime.close()
        if self._owns_device and not self._device.closed:
            self._device.close()

    def _check_open(self) -> None:
        if self._runtime.closed:
            raise FreedHandleError("the context is closed")

    def load_model(self, source: str | os.PathLike[str] | bytes | bytearray | memoryview | Array) -> Model:
        """Load every network of a ``.ekm`` model: from a path (mapped; the constants are used in place)
        or from a bytes-like object (copied). Network names must be unique within a context."""
        self._check_open()
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            names = self._runtime.load_model(path)
            label = path
        elif isinstance(source, (bytes, bytearray, memoryview, np.ndarray)):
            names = self._runtime.load_model_data(source)
            label = f"<{memoryview(cast(Any, source)).nbytes} bytes>"
        else:
            raise InvalidTypeError(
                f"load_model takes a path or a bytes-like object, got {type(source).__name__}"
            )
        model = Model(self, list(names), label)
        with self._lock:
            self._models.append(model)
        return model

    def load_plugin(self, path: str | os.PathLike[str]) -> None:
        """Load a plugin op library (docs/plugins.md) into this context, before the models that use its
        ops: a shared library built for this machine (``edgekit.plugins.example_plugin_path()`` is the
        SDK's example). A remote context refuses (its server never loads client code): run on the
        board instead. Errors: UnsupportedError (not a plugin, another machine's library, remote),
        VersionMismatchError (another plugin ABI), BusyError (an op registered twice),
        SystemCallError (cannot open)."""
        self._check_open()
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidTypeError(f"load_plugin takes a path, got {type(path).__name__}")
        self._runtime.load_plugin(os.fspath(path))

    def network(self, name: str) -> Network:
        """A loaded network of any model of this context, by name."""
        self._check_open()
        return Network(self, name)


class Model:
    """The networks one ``load_model`` call added to a context."""

    def __init__(self, context: Context, network_names: list[str], source: str) -> None:
        self.context = context
        self.source = source
        self._names = network_names

    def __repr__(self) -> str:
        return f"<edgekit.Model {self.source}: networks {', '.join(self._names)}>"

    @property
    def network_names(self) -> list[str]:
        return list(self._names)

    def network(self, name: str | None = None) -> Network:
        """The network ``name``; without a name, the model's only network."""
        if name is None:
            if len(self._names) != 1:
                raise InvalidArgumentError(
                    f"the model has {len(self._names)} networks ({', '.join(self._names)}): name one"
                )
            name = self._names[0]
        elif not isinstance(name, str):
            raise InvalidTypeError(f"the network name must be a str, got {type(name).__name__}")
        elif name not in self._names:
            raise InvalidArgumentError(
                f"the model has no network {name!r}; its networks are: {', '.join(self._names)}"
            )
        return self.context.network(name)


class Network:
    """A loaded network: its inputs, outputs and stages; ``create_request()`` runs it."""

    def __init__(self, context: Context, name: str) -> None:
        net_name, inputs, outputs, stages = context._runtime.network_info(name)
        self.context = context
        self.name: str = net_name
        in_shapes = [tuple(stage[0]) for stage in stages]
        out_shapes = [tuple(stage[1]) for stage in stages]
        self.inputs: list[TensorInfo] = [
            self._info(io, tuple(shapes[i] for shapes in in_shapes)) for i, io in enumerate(inputs)
        ]
        self.outputs: list[TensorInfo] = [
            self._info(io, tuple(shapes[i] for shapes in out_shapes)) for i, io in enumerate(outputs)
        ]
        self.stages: list[Stage] = [
            Stage(
                s,
                {t.name: t.shapes[s] for t in self.inputs},
                {t.name: t.shapes[s] for t in self.outputs},
            )
            for s in range(len(stages))
        ]

    @staticmethod
    def _info(io: tuple[str, int, float, int, int, bool], shapes: tuple[Shape, ...]) -> TensorInfo:
        name, code, scale, zero_point, max_bytes, dynamic = io
        if code not in DTYPES:
            raise InvalidArgumentError(
                f"tensor {name!r} has dtype code {code}, which this package does not know"
            )
        return TensorInfo(
            name,
            DTYPES[code],
            shapes[0],
            shapes,
            float(scale),
            int(zero_point),
            int(max_bytes),
            dynamic=bool(dynamic),
        )

    def __repr__(self) -> str:
        ins = ", ".join(f"{t.name}: {t.dtype}[{_fmt_shape(t.shape)}]" for t in self.inputs)
        outs = ", ".join(f"{t.name}: {t.dtype}[{_fmt_shape(t.shape)}]" for t in self.outputs)
        return f"<edgekit.Network {self.name!r} ({ins}) -> ({outs}), {len(self.stages)} stage(s)>"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def describe_stages(self) -> str:
        """The stages' input shapes, for messages: "stage 0: x=1x3x8x8; stage 1: x=2x3x8x8"."""
        return "; ".join(str(stage) for stage in self.stages)

    def memory(self, stage: int = 0) -> StageMemory:
        """What ``stage`` needs: its constant bytes and the workspace bytes one launch needs at a time."""
        if isinstance(stage, bool) or not isinstance(stage, int):
            raise InvalidTypeError(f"stage must be an int index, got {type(stage).__name__}")
        constant, workspace, alignment = self.context._runtime.stage_memory(self.name, stage)
        return StageMemory(int(constant), int(workspace), int(alignment))

    @property
    def workspace_bytes(self) -> int:
        """The workspace one request needs for any of the stages (the largest): the size of the block to
        give ``create_request(workspace=...)``."""
        return max(self.memory(s).workspace_bytes for s in range(len(self.stages)))

    def create_request(
        self,
        stage: int | None = None,
        *,
        workspace: DeviceMemory | tuple[DeviceMemory, int] | None = None,
        output_caps: Mapping[str, int] | None = None,
    ) -> Request:
        """A request for this network, starting in ``stage`` (an index; None: the first stage).

        ``workspace``: device memory of yours (a ``DeviceMemory``, or ``(memory, offset)``) holding at
        least ``workspace_bytes`` for the static memory strategy: the request's launches then run in it
        and allocate no device memory. Each request needs its own (they run concurrently); keep the
        memory until the request is closed.

        ``output_caps``: bytes to allocate for dynamic outputs (``TensorInfo.dynamic``), by name; default
        their largest size (``max_bytes``). A launch producing more than fits fails with
        ``OutOfRangeError`` naming the bytes needed."""
        return Request(self, stage, workspace=workspace, output_caps=output_caps)


class Request(_runtime.Request):
    """One inference slot of a network: input and output tensors in device memory (allocated once, at
    the most bytes each takes over all stages), and one launch at a time.

    ``set_inputs`` copies inputs in (switching stage to match their shapes), ``infer`` starts a launch
    and returns at once, ``wait`` waits for it, ``get_outputs`` copies the outputs out; ``run`` does all
    four. ``input_tensors``/``output_tensors`` are zero-copy numpy views of the tensors' memory; writes
    to the input views are flushed to the device by ``infer``, and the output views are invalidated by
    ``wait``, as a non-coherent SoC needs.
    """

    network: Network

    def __init__(
        self,
        network: Network,
        stage: int | None = None,
        *,
        workspace: DeviceMemory | tuple[DeviceMemory, int] | None = None,
        output_caps: Mapping[str, int] | None = None,
    ) -> None:
        context = network.context
        caps = self._check_caps(network, output_caps)
        context._check_open()
        self._setup(context._runtime, network.name, len(network.inputs), len(network.outputs))
        self.network = network
        self._infos = network.inputs + network.outputs
        self._stage: int = -1
        self._fast: tuple[tuple[str, ...], tuple[tuple[Any, tuple[int, ...]], ...]] | None = None
        self._closed = False
        self._views: list[MappedView | None] = [None] * len(self._infos)
        self._mems: list[DeviceMemory] = []
        self._own_profile: Profile | None = None  # infer(profile=True)'s, made on first use
        self._last_profile: Profile | None = None  # the profile of the last profiled launch
        self._input_copy: tuple[int, int] | None = None  # set_inputs' copy since the last launch
        self._output_profile: Profile | None = None  # get_outputs records its copy here
        self._workspaces: list[int] = []  # per stage, over the caller's workspace memory
        self._workspace_memory: DeviceMemory | None = None
        try:
            for index, info in enumerate(self._infos):
                size = max([info.max_bytes, 1] + [info.nbytes(s) for s in range(len(network.stages))])
                if index >= len(network.inputs) and info.name in caps:
                    size = max(caps[info.name], 1)
                mem = context.device.malloc(size)
                self._mems.append(mem)
                self._bind(index, mem)
            if workspace is not None:
                self._make_workspaces(workspace)
            self._select_stage(self._stage_index(stage))
        except BaseException:
            self._drop_workspaces()
            for mem in self._mems:
                mem.free()
            self._mems = []
            self._closed = True
            raise
        context._requests.add(self)

    def __enter__(self) -> Request:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self.running else "idle"
        return f"<edgekit.Request of network {self.network.name!r}, stage {self._stage}, {state}>"

    # ---- state ------------------------------------------------------------------------------------

    @property
    def stage(self) -> int:
        """The stage of the next launch: set by ``set_inputs`` (from the inputs' shapes) or ``set_stage``."""
        return self._stage

    @property
    def closed(self) -> bool:
        return self._closed

    def set_stage(self, stage: int) -> None:
        """Run the next launches in ``stage``; for writing inputs through ``input_tensors``."""
        self._check_idle("changing the stage")
        self._select_stage(self._stage_index(stage))

    @staticmethod
    def _check_caps(network: Network, output_caps: Mapping[str, int] | None) -> dict[str, int]:
        if output_caps is None:
            return {}
        if not isinstance(output_caps, Mapping):
            raise InvalidTypeError(
                f"output_caps must map output names to bytes, got {type(output_caps).__name__}"
            )
        outputs = {t.name: t for t in network.outputs}
        caps: dict[str, int] = {}
        for name, cap in output_caps.items():
            info = outputs.get(name)
            if info is None:
                raise InvalidArgumentError(
                    f"output_caps: network {network.name!r} has no output {name!r}; its outputs: "
                    f"{', '.join(outputs)}"
                )
            if not info.dynamic:
                raise InvalidArgumentError(
                    f"output_caps: output {name!r} is not dynamic: it always takes {info.max_bytes} bytes"
                )
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
                raise InvalidArgumentError(
                    f"output_caps[{name!r}] must be a whole number of bytes >= 0, got {cap!r}"
                )
            caps[name] = cap
        return caps

    def _make_workspaces(self, workspace: DeviceMemory | tuple[DeviceMemory, int]) -> None:
        """One workspace per stage over the same memory: a request runs one launch at a time."""
        if isinstance(workspace, tuple):
            if len(workspace) != 2:
                raise InvalidTypeError("workspace must be a DeviceMemory or (DeviceMemory, offset)")
            memory, offset = workspace
        else:
            memory, offset = workspace, 0
        if not isinstance(memory, DeviceMemory):
            raise InvalidTypeError(
                f"workspace must be a DeviceMemory or (DeviceMemory, offset), got {type(memory).__name__}"
            )
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidArgumentError(f"the workspace offset must be a whole number >= 0, got {offset!r}")
        runtime = self.network.context._runtime
        size = memory.size - offset if offset <= memory.size else 0
        for s in range(len(self.network.stages)):
            self._workspaces.append(runtime.workspace_create(self.network.name, s, memory, offset, size))
        self._workspace_memory = memory

    def _drop_workspaces(self) -> None:
        self._use_workspace(0)
        for handle in self._workspaces:
            _runtime.Runtime.workspace_destroy(handle)
        self._workspaces = []
        self._workspace_memory = None

    @property
    def workspace(self) -> DeviceMemory | None:
        """The caller's workspace memory the launches run in (static strategy), or None."""
        return self._workspace_memory

    def close(self) -> None:
        """Wait for a running launch (its error is dropped) and free the tensors' device memory. Numpy
        views of the tensors stay valid: the memory they view is released when the last of them goes."""
        if self._closed:
            return
        if self.running:
            try:
                self._wait(-1)
            except Exception:  # closing: the launch's own error is of no use now
                pass
        if self._workspaces and not self.network.context.closed:
            self._drop_workspaces()  # a closed context destroyed them with its runtime
        self._views = [None] * len(self._infos)
        for mem in self._mems:
            if mem.mapped:
                mem.unmap()  # deferred while views of it are alive, like the free below
        for mem in self._mems:
            mem.free()
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise FreedHandleError(f"the request of network {self.network.name!r} is closed")
        if self.network.context.closed:
            raise FreedHandleError(f"the context of the request of network {self.network.name!r} is closed")

    def _check_idle(self, action: str) -> None:
        self._check_open()
        if self.running:
            raise BusyError(
                f"the request of network {self.network.name!r} is running: wait() before {action}"
            )

    def _stage_index(self, stage: int | None) -> int:
        count = len(self.network.stages)
        if stage is None:
            return 0
        if isinstance(stage, bool) or not isinstance(stage, (int, np.integer)):
            raise InvalidTypeError(f"stage must be an int index, got {type(stage).__name__}")
        if not 0 <= stage < count:
            raise InvalidArgumentError(
                f"network {self.network.name!r} has {count} stage(s) (0..{count - 1}), got stage {stage}: "
                f"{self.network.describe_stages()}"
            )
        return int(stage)

    def _select_stage(self, stage: int) -> None:
        if stage == self._stage:
            return
        for index, info in enumerate(self._infos):
            self._set_tensor(index, DTYPE_CODES[info.dtype], info.shapes[stage])
        if self._workspaces:
            self._use_workspace(self._workspaces[stage])
        self._stage = stage
        # run()'s fast path: what inputs it takes as they are, and the outputs' shapes (known before the
        # launch unless an output is dynamic)
        self._fast = (
            None
            if any(t.dynamic for t in self.network.outputs)
            else (
                tuple(t.name for t in self.network.inputs),
                tuple((np.dtype(t.dtype), tuple(t.shapes[stage])) for t in self._infos),
            )
        )

    # ---- inputs -----------------------------------------------------------------------------------

    def _ordered(self, inputs: Inputs) -> list[Any]:
        """The inputs in network order, checking the count or the names."""
        infos = self.network.inputs
        names = ", ".join(t.name for t in infos)
        if isinstance(inputs, Mapping):
            unknown = [key for key in inputs if key not in self.network.input_names]
            if unknown:
                raise InvalidArgumentError(
                    f"unknown input {unknown[0]!r} of network {self.network.name!r}; its inputs are: {names}"
                )
            missing = [t.name for t in infos if t.name not in inputs]
            if missing:
                raise InvalidArgumentError(
                    f"missing input {missing[0]!r} of network {self.network.name!r} (it takes: {names})"
                )
            return [inputs[t.name] for t in infos]
        if isinstance(inputs, np.ndarray):
            if len(infos) != 1:
                raise InvalidTypeError(
                    f"network {self.network.name!r} takes {len(infos)} inputs ({names}): pass a list or a "
                    "dict of arrays, not one array"
                )
            return [inputs]
        if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence):
            raise InvalidTypeError(
                f"inputs must be a list of arrays in input order or a dict by input name, got "
                f"{type(inputs).__name__}"
            )
        if len(inputs) != len(infos):
            raise InvalidArgumentError(
                f"network {self.network.name!r} takes {len(infos)} input(s) ({names}), got {len(inputs)}"
            )
        return list(inputs)

    def _as_array(self, value: Any, info: TensorInfo) -> Array:
        """An input value as an array of the input's dtype: arrays must have it; raw bytes are taken as
        the tensor's bytes; lists and scalars are converted."""
        if isinstance(value, np.ndarray):
            array = value
        elif isinstance(value, (bytes, bytearray, memoryview)) and memoryview(value).itemsize == 1:
            raw = memoryview(value).cast("B")
            if len(raw) % info.dtype.itemsize:
                raise InvalidArgumentError(
                    f"input {info.name!r}: {len(raw)} bytes are not a whole number of {info.dtype} elements"
                )
            flat: Array = np.frombuffer(raw, dtype=info.dtype)
            order = [self._stage, *range(len(info.shapes))]
            for stage in order:
                if math.prod(info.shapes[stage]) == flat.size:
                    return flat.reshape(info.shapes[stage])
            sizes = ", ".join(f"{info.nbytes(s)} (stage {s})" for s in range(len(info.shapes)))
            raise InvalidArgumentError(
                f"input {info.name!r}: {len(raw)} bytes do not match the size of any stage: {sizes}"
            )
        elif isinstance(value, (list, tuple, int, float)):
            try:
                array = np.asarray(value, dtype=info.dtype)
            except (TypeError, ValueError) as exc:
                raise InvalidArgumentError(
                    f"input {info.name!r} cannot be made a {info.dtype} array: {exc}"
                ) from None
        else:
            try:
                array = np.asarray(memoryview(value))
            except TypeError:
                raise InvalidTypeError(
                    f"input {info.name!r} must be a numpy array or a buffer, got {type(value).__name__}"
                ) from None
        if array.dtype != info.dtype:
            raise InvalidArgumentError(
                f"input {info.name!r} of network {self.network.name!r} must be {info.dtype}, "
                f"got an array of {array.dtype}"
            )
        return array

    def _stage_for(self, shapes: list[Shape]) -> int:
        """The stage taking these input shapes (the current one first)."""
        stages = self.network.stages
        for index in (self._stage, *range(len(stages))):
            if all(shape == stages[index].inputs[t.name] for shape, t in zip(shapes, self.network.inputs)):
                return int(index)
        for shape, info in zip(shapes, self.network.inputs):
            if shape not in info.shapes:
                raise InvalidArgumentError(
                    f"input {info.name!r} of network {self.network.name!r} has shape {_fmt_shape(shape)}; "
                    f"the network's stages take: {self.network.describe_stages()}"
                )
        given = ", ".join(f"{t.name}={_fmt_shape(s)}" for s, t in zip(shapes, self.network.inputs))
        raise InvalidArgumentError(
            f"the input shapes {given} are not one stage of network {self.network.name!r}; its stages take: "
            f"{self.network.describe_stages()}"
        )

    def set_inputs(self, inputs: Inputs) -> None:
        """Copy the inputs (a list in input order, or a dict by name) into the request's device memory.
        Inputs whose shapes are another stage's switch the request to that stage."""
        self._check_idle("setting inputs")
        arrays = [self._as_array(v, t) for v, t in zip(self._ordered(inputs), self.network.inputs)]
        self._select_stage(self._stage_for([tuple(a.shape) for a in arrays]))
        start = _runtime.clock_ns()
        for index, array in enumerate(arrays):
            view = self._views[index]
            if view is not None:
                # Mapped: write through the mapping (infer() flushes it), so the CPU view stays current.
                np.copyto(view.ndarray(array.dtype, array.shape), array)
            else:
                self._mems[index].write(np.ascontiguousarray(array))
        self._input_copy = (start, _runtime.clock_ns() - start)  # a TransferFromInput if profiled

    # ---- launches ---------------------------------------------------------------------------------

    def infer(
        self,
        threads: int | None = None,
        cpus: Iterable[int] | None = None,
        *,
        profile: bool | Profile = False,
        dump: str | os.PathLike[str] | None = None,
    ) -> None:
        """Start running the network on the current inputs and return at once; ``wait()`` for it.

        ``threads``: threads this launch uses (default: the context's); ``cpus``: the CPU ids its threads
        may run on (default: any), e.g. ``cpus=[2, 3]`` for the big cores of a big.LITTLE SoC.
        ``profile=True`` records this launch (``req.profile_data`` then lists its records, with the copies
        of ``set_inputs`` before and ``get_outputs`` after it); a ``Profile`` collects the records of every
        launch given it. ``dump=DIR`` writes the inputs and every op's output of this launch to DIR as
        .npy files and manifest.json (docs/profiling.md)."""
        self._check_open()
        prof: Profile | None
        if profile is True:
            if self._own_profile is None:
                self._own_profile = Profile()
            prof = self._own_profile
            prof.clear()
        elif profile is False or profile is None:
            prof = None
        elif isinstance(profile, Profile):
            prof = profile
        else:
            raise InvalidTypeError(
                f"profile must be True, False or an edgekit.Profile, got {type(profile).__name__}"
            )
        if dump is not None and not isinstance(dump, (str, os.PathLike)):
            raise InvalidTypeError(f"dump must be a directory path or None, got {type(dump).__name__}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InvalidArgumentError(f"threads must be a whole number >= 1 (or None), got {threads!r}")
        mask = 0
        for cpu in cpus if cpus is not None else ():
            if isinstance(cpu, bool) or not isinstance(cpu, int) or not 0 <= cpu < 64:
                raise InvalidArgumentError(f"cpus must be CPU ids from 0 to 63, got {cpu!r}")
            mask |= 1 << cpu
        if cpus is not None and not mask:
            raise InvalidArgumentError("cpus is empty: name at least one CPU, or pass None for any")
        dump_dir = os.fsencode(dump) if dump is not None else None
        if prof is not None and self._input_copy is not None:
            prof.add("TransferFromInput", "set_inputs", *self._input_copy)
        self._launch(threads or 0, mask, prof, dump_dir)
        self._input_copy = None
        self._output_profile = prof
        if prof is not None:
            self._last_profile = prof

    @property
    def profile_data(self) -> list[ProfileRecord]:
        """The records of the last profiled launch's profile (``infer(profile=True)``: that launch's,
        with ``set_inputs``'/``get_outputs``' copies; a ``Profile`` of yours: all of its records)."""
        return self._last_profile.records if self._last_profile is not None else []

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: as long as it takes) for the launch. False: still running.
        True: finished (also when no launch is running); raises the launch's error if it failed."""
        if timeout is None:
            ms = -1
        else:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer, np.floating)):
                raise InvalidTypeError(
                    f"timeout must be a number of seconds or None, got {type(timeout).__name__}"
                )
            if not timeout >= 0:
                raise InvalidArgumentError(f"timeout must be >= 0 seconds (or None), got {timeout}")
            ms = min(math.ceil(float(timeout) * 1000), _INT_MAX)
        return bool(self._wait(ms))

    def set_callback(self, fn: Callable[[Request], Any] | None) -> None:
        """Call ``fn(request)`` when each later launch finishes, on the context's callback thread (one
        at a time, in order). In it, ``request.wait()`` returns at once (or raises the launch's error).
        An exception ``fn`` raises is printed to stderr. None removes the callback. A launch calls the
        callback that was set when it started, whatever is set by the time it finishes."""
        super().set_callback(fn)

    def run(
        self, inputs: Inputs, *, profile: bool | Profile = False, dump: str | os.PathLike[str] | None = None
    ) -> list[Array]:
        """``set_inputs`` + ``infer`` + ``wait`` + ``get_outputs``; ``profile``/``dump`` as for ``infer``.

        Inputs that are C-contiguous numpy arrays of the network's dtypes in the current stage's shapes
        take a fast path: copied in, run on the calling thread (no hand-off to a worker thread) and
        copied out in one call, with the GIL released while it runs."""
        if profile is False and dump is None and not self._closed:
            outputs = self._run_fast(inputs, self._fast)
            if outputs is not None:
                self._input_copy = None  # an earlier set_inputs' copy is not this launch's
                return outputs
        self.set_inputs(inputs)
        self.infer(profile=profile, dump=dump)
        self.wait()
        return self.get_outputs()

    # ---- outputs ----------------------------------------------------------------------------------

    def get_outputs(self) -> list[Array]:
        """Copies of the outputs of the last launch (waiting for it first if it is running)."""
        self._check_open()
        if self.running:
            self.wait()
        n_in = len(self.network.inputs)
        results: list[Array] = []
        start = _runtime.clock_ns()
        for k, info in enumerate(self.network.outputs):
            index = n_in + k
            shape = self._output_shape(k) if info.dynamic else info.shapes[self._stage]
            view = self._views[index]
            if view is not None:
                results.append(np.array(view.ndarray(info.dtype, shape)))
            else:
                out = np.empty(shape, dtype=info.dtype)
                if out.nbytes:  # a dynamic output may produce nothing (NMS keeping no box)
                    self._mems[index].read(out.nbytes, out=out)
                results.append(out)
        if self._output_profile is not None:  # the first copy after a profiled launch
            self._output_profile.add("TransferToOutput", "get_outputs", start, _runtime.clock_ns() - start)
            self._output_profile = None
        return results

    # ---- zero-copy tensors ------------------------------------------------------------------------

    def _view(self, index: int) -> Array:
        view = self._views[index]
        if view is None:
            self._check_idle("mapping its tensors")
            view = self._mems[index].map()
            self._set_mapped(index, True)
            self._views[index] = view
        info = self._infos[index]
        n_in = len(self.network.inputs)
        shape = self._output_shape(index - n_in) if info.dynamic else info.shapes[self._stage]
        return view.ndarray(info.dtype, shape)

    @property
    def input_tensors(self) -> list[Array]:
        """Writable numpy views of the inputs' device memory, in the current stage's shapes. Write them,
        then ``infer()`` (which flushes them to the device)."""
        self._check_open()
        return [self._view(i) for i in range(len(self.network.inputs))]

    @property
    def output_tensors(self) -> list[Array]:
        """Numpy views of the outputs' device memory, in the current stage's shapes; they show the
        results once ``wait()`` has returned True (it invalidates them)."""
        self._check_open()
        n_in = len(self.network.inputs)
        return [self._view(n_in + k) for k in range(len(self.network.outputs))]
