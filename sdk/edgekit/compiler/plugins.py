"""Plugin op libraries on the host (docs/plugins.md): ``edgekit compile --plugin lib.so``.

The compiler loads the host build of a plugin library with ctypes, through a mirror of the small C ABI
of ``sdk/runtime/include/edgekit/plugin.h`` (ABI version 1; tests/test_plugins.py checks the mirror's
layout against the header with the C compiler). It does so instead of going through libedgekit, since
the compiler never imports the runtime (docs/architecture.md): the API table a plugin gets here is
implemented in Python, the calls are synchronous and single-threaded (``parallel_for`` runs the whole
range on the calling thread).

A node of a domain other than ONNX's that a given library registers lowers to a PLUGIN op with the
node's attributes; the library's ``infer`` gives its output shapes. ``reference.run_reference`` runs
PLUGIN ops through the same library's ``run``.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from edgekit.compiler.graph import AttrType, AttrValue, CompileError, Shape

ABI_VERSION = 1
ABI_SYMBOL = "ek_plugin_abi_version"
ENTRY_SYMBOL = "ek_plugin_register"
MAX_DIMS = 8
FLOAT32 = 1
ONNX_DOMAINS = ("", "ai.onnx")
RESERVED_PREFIX = "ek."  # the PLUGIN op's own attributes: ek.domain, ek.op_type


class PluginError(CompileError):
    """A plugin library cannot be loaded, or refuses a node."""


# ---- the ctypes mirror of edgekit/plugin.h ----


class Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int32),
        ("rank", ctypes.c_int32),
        ("dims", ctypes.c_int64 * MAX_DIMS),
    ]


TensorPtr = ctypes.POINTER(Tensor)
RANGE_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int)
# infer and run share a signature: (api, call, n_in, in, n_out, out) -> int
OP_FN = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, TensorPtr, ctypes.c_int, TensorPtr
)


class OpDesc(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("domain", ctypes.c_char_p),
        ("op_type", ctypes.c_char_p),
        ("min_inputs", ctypes.c_int32),
        ("max_inputs", ctypes.c_int32),
        ("min_outputs", ctypes.c_int32),
        ("max_outputs", ctypes.c_int32),
        ("infer", OP_FN),
        ("run", OP_FN),
        ("user_data", ctypes.c_void_p),
        # read only when the plugin's struct_size covers it (plugins built before it have none)
        ("dynamic_outputs", ctypes.c_uint32),
    ]


# The descriptor as the first release of ABI version 1 knew it, and where dynamic_outputs lies.
OP_DESC_V1_SIZE = OpDesc.user_data.offset + ctypes.sizeof(ctypes.c_void_p)
OP_DESC_DYNAMIC_END = OpDesc.dynamic_outputs.offset + ctypes.sizeof(ctypes.c_uint32)


REGISTER_OP = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(OpDesc))
REGISTRY_ERROR = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)
SET_ERROR = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)
NODE_NAME = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)  # const char *, kept alive by the call
ATTR_INT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int64))
ATTR_FLOAT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_float))
ATTR_INTS = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.POINTER(ctypes.c_void_p),
    ctypes.POINTER(ctypes.c_size_t),
)
ATTR_FLOATS = ATTR_INTS
ATTR_STRING = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)
)
OP_USER_DATA = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
THREADS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
PARALLEL_FOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t, RANGE_FN, ctypes.c_void_p)


class Api(ctypes.Structure):
    _fields_ = [
        ("abi_version", ctypes.c_uint32),
        ("struct_size", ctypes.c_uint32),
        ("register_op", REGISTER_OP),
        ("registry_error", REGISTRY_ERROR),
        ("set_error", SET_ERROR),
        ("node_name", NODE_NAME),
        ("attr_int", ATTR_INT),
        ("attr_float", ATTR_FLOAT),
        ("attr_ints", ATTR_INTS),
        ("attr_floats", ATTR_FLOATS),
        ("attr_string", ATTR_STRING),
        ("op_user_data", OP_USER_DATA),
        ("threads", THREADS),
        ("parallel_for", PARALLEL_FOR),
    ]


# ---- one call of infer or run: what the API table's functions see through the opaque pointer ----

TypedAttrs = Mapping[str, tuple[AttrType, AttrValue]]


@dataclass
class _Call:
    node: str
    attrs: TypedAttrs
    user_data: int | None
    error: str = ""
    keep: list[Any] = field(default_factory=list)  # buffers handed to the plugin during the call


_calls: dict[int, _Call] = {}
_registries: dict[int, tuple[PluginLibrary, list[str]]] = {}
_next_id = [1]


def _new_id() -> int:
    _next_id[0] += 1
    return _next_id[0]


def _call_of(handle: int | None) -> _Call | None:
    return _calls.get(handle or 0)


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw is not None else ""


def _attr(
    handle: int | None, name: bytes | None, kind: AttrType
) -> tuple[int, AttrValue | None, _Call | None]:
    call = _call_of(handle)
    key = _text(name)
    if call is None or key.startswith(RESERVED_PREFIX) or key not in call.attrs:
        return 0, None, call
    have, value = call.attrs[key]
    return (1, value, call) if have == kind else (-1, None, call)


def _register_op(registry: int | None, desc_ptr: Any) -> int:
    entry = _registries.get(registry or 0)
    if entry is None:
        return -1
    lib, errors = entry
    try:
        lib.add_op(desc_ptr.contents if desc_ptr else None)
    except PluginError as exc:
        errors.append(str(exc))
        return -1
    return 0


def _registry_error(registry: int | None, message: bytes | None) -> None:
    entry = _registries.get(registry or 0)
    if entry is not None:
        entry[1].append(_text(message))


def _set_error(handle: int | None, message: bytes | None) -> None:
    call = _call_of(handle)
    if call is not None:
        call.error = _text(message) or "(no message)"


def _node_name(handle: int | None) -> int | None:
    call = _call_of(handle)
    buf = ctypes.create_string_buffer((call.node if call else "").encode())
    if call is not None:
        call.keep.append(buf)
    return ctypes.addressof(buf)


def _attr_int(handle: int | None, name: bytes | None, out: Any) -> int:
    found, value, _ = _attr(handle, name, AttrType.INT)
    if found == 1:
        out[0] = int(value)  # type: ignore[arg-type]
    return found


def _attr_float(handle: int | None, name: bytes | None, out: Any) -> int:
    found, value, _ = _attr(handle, name, AttrType.FLOAT)
    if found == 1:
        out[0] = float(value)  # type: ignore[arg-type]
    return found


def _array_attr(handle: int | None, name: bytes | None, values: Any, count: Any, kind: AttrType) -> int:
    found, value, call = _attr(handle, name, kind)
    if found == 1 and call is not None:
        assert isinstance(value, list)
        ctype = ctypes.c_int64 if kind == AttrType.INTS else ctypes.c_float
        values_any: Any = value
        array = (ctype * max(1, len(value)))(*values_any)
        call.keep.append(array)
        values[0] = ctypes.addressof(array)
        count[0] = len(value)
    return found


def _attr_ints(handle: int | None, name: bytes | None, values: Any, count: Any) -> int:
    return _array_attr(handle, name, values, count, AttrType.INTS)


def _attr_floats(handle: int | None, name: bytes | None, values: Any, count: Any) -> int:
    return _array_attr(handle, name, values, count, AttrType.FLOATS)


def _attr_string(handle: int | None, name: bytes | None, out: Any) -> int:
    found, value, call = _attr(handle, name, AttrType.STRING)
    if found == 1 and call is not None:
        buf = ctypes.create_string_buffer(str(value).encode())
        call.keep.append(buf)
        out[0] = ctypes.addressof(buf)
    return found


def _op_user_data(handle: int | None) -> int | None:
    call = _call_of(handle)
    return call.user_data if call else None


def _threads(handle: int | None) -> int:
    return 1


def _parallel_for(handle: int | None, count: int, fn: Any, arg: int | None) -> None:
    if count:
        fn(arg, 0, count, 0)


# The callbacks (kept alive by API, a module global, for as long as a plugin may call them).
API = Api(
    ABI_VERSION,
    ctypes.sizeof(Api),
    REGISTER_OP(_register_op),
    REGISTRY_ERROR(_registry_error),
    SET_ERROR(_set_error),
    NODE_NAME(_node_name),
    ATTR_INT(_attr_int),
    ATTR_FLOAT(_attr_float),
    ATTR_INTS(_attr_ints),
    ATTR_FLOATS(_attr_floats),
    ATTR_STRING(_attr_string),
    OP_USER_DATA(_op_user_data),
    THREADS(_threads),
    PARALLEL_FOR(_parallel_for),
)


# ---- libraries ----

_MACHINES = {3: "i386", 40: "arm (32-bit)", 62: "x86_64", 183: "aarch64", 243: "riscv"}
_HOST_MACHINE = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183}


def _check_elf(path: Path) -> None:
    """A shared library for this machine, checked before dlopen (whose message for another machine's
    library hides the reason)."""
    try:
        head = path.read_bytes()[:20]
    except OSError as exc:
        raise PluginError(f"cannot open plugin {path}: {exc.strerror}") from exc
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise PluginError(f"plugin {path} is not an ELF shared library")
    endian = "<" if head[5] == 1 else ">"
    e_type, machine = struct.unpack_from(f"{endian}HH", head, 16)
    host = _HOST_MACHINE.get(os.uname().machine.lower())
    if host is not None and machine != host:
        raise PluginError(
            f"plugin {path} is built for {_MACHINES.get(machine, f'machine {machine}')}, not for this "
            f"machine ({_MACHINES[host]}): the compiler needs the host build of the plugin (docs/plugins.md)"
        )
    if e_type != 3:
        raise PluginError(f"plugin {path} is not a shared library (ELF type {e_type}; build it with -shared)")


@dataclass
class PluginOp:
    library: PluginLibrary
    domain: str
    op_type: str
    min_inputs: int
    max_inputs: int
    min_outputs: int
    max_outputs: int
    infer_fn: Any
    run_fn: Any
    user_data: int | None
    dynamic_outputs: int = 0  # bit i: output i's size depends on the data (its shape is a bound)

    def is_dynamic(self, index: int) -> bool:
        return index < 32 and bool(self.dynamic_outputs >> index & 1)

    @property
    def label(self) -> str:
        return f"{self.domain}::{self.op_type}"


def _fill(tensor: Tensor, shape: Sequence[int], data: int | None = None) -> None:
    tensor.data = data
    tensor.dtype = FLOAT32
    tensor.rank = len(shape)
    for d, size in enumerate(shape):
        tensor.dims[d] = int(size)


def _shape(tensor: Tensor) -> tuple[int, int, Shape]:
    """(dtype, rank, shape) of a tensor a plugin filled; the shape is empty for a bad rank."""
    rank = int(tensor.rank)
    shape = tuple(int(tensor.dims[d]) for d in range(rank)) if 0 <= rank <= MAX_DIMS else ()
    return int(tensor.dtype), rank, shape


def _copy_fn(field_value: Any) -> Any:
    """A function pointer of its own (a structure's field is a view of the structure's memory)."""
    return OP_FN(ctypes.cast(field_value, ctypes.c_void_p).value or 0)


class PluginLibrary:
    """One plugin library loaded on the host, and the ops it registered."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.fspath(path)).resolve()
        self.name = self.path.name
        self.ops: dict[tuple[str, str], PluginOp] = {}
        _check_elf(self.path)
        try:
            self._dll = ctypes.CDLL(str(self.path), mode=os.RTLD_NOW | os.RTLD_LOCAL)
        except OSError as exc:
            raise PluginError(f"cannot load plugin {self.path}: {exc}") from exc
        try:
            abi = ctypes.c_uint32.in_dll(self._dll, ABI_SYMBOL).value
            entry = getattr(self._dll, ENTRY_SYMBOL)
        except (ValueError, AttributeError) as exc:
            missing = ENTRY_SYMBOL if "register" in str(exc) else ABI_SYMBOL
            raise PluginError(
                f"{self.path} is not an EdgeKit plugin: it exports no '{missing}' symbol (a plugin defines "
                f"{ENTRY_SYMBOL} and EK_PLUGIN_DEFINE_ABI_VERSION; see edgekit/plugin.h)"
            ) from None
        if abi != ABI_VERSION:
            raise PluginError(
                f"{self.path} was built for plugin ABI version {abi}; this EdgeKit loads version "
                f"{ABI_VERSION}: rebuild the plugin against this EdgeKit's edgekit/plugin.h"
            )
        entry.restype = ctypes.c_int
        entry.argtypes = [ctypes.POINTER(Api), ctypes.c_void_p]
        handle = _new_id()
        errors: list[str] = []
        _registries[handle] = (self, errors)
        try:
            rc = entry(ctypes.byref(API), handle)
        finally:
            del _registries[handle]
        if rc != 0 or errors:
            reason = errors[0] if errors else "it returned non-zero without a reason"
            raise PluginError(f"plugin {self.path}: {ENTRY_SYMBOL}() failed: {reason}")
        if not self.ops:
            raise PluginError(f"plugin {self.path} registers no op")

    def add_op(self, desc: OpDesc | None) -> None:
        if desc is None or desc.struct_size < OP_DESC_V1_SIZE:
            raise PluginError("register_op: the op descriptor is smaller than ABI version 1's")
        domain, op_type = _text(desc.domain), _text(desc.op_type)
        if not domain or not op_type or domain in ONNX_DOMAINS:
            raise PluginError(f"register_op: op '{domain}::{op_type}' needs a custom domain and an op type")
        if not (
            1 <= desc.min_inputs <= desc.max_inputs <= 64 and 1 <= desc.min_outputs <= desc.max_outputs <= 16
        ):
            raise PluginError(f"register_op: op '{domain}::{op_type}': bad input or output counts")
        if not desc.infer or not desc.run:
            raise PluginError(f"register_op: op '{domain}::{op_type}' has no infer or run function")
        if (domain, op_type) in self.ops:
            raise PluginError(f"op '{domain}::{op_type}' is registered twice by {self.name}")
        self.ops[(domain, op_type)] = PluginOp(
            self,
            domain,
            op_type,
            desc.min_inputs,
            desc.max_inputs,
            desc.min_outputs,
            desc.max_outputs,
            _copy_fn(desc.infer),  # the descriptor may live on the plugin's stack: copy the pointers
            _copy_fn(desc.run),
            desc.user_data,
            int(desc.dynamic_outputs) if desc.struct_size >= OP_DESC_DYNAMIC_END else 0,
        )


ArrayF = np.ndarray


class PluginSet:
    """The plugin libraries of one compilation (``--plugin``, each once), and their ops."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]] = ()) -> None:
        self.libraries: list[PluginLibrary] = []
        self.ops: dict[tuple[str, str], PluginOp] = {}
        for path in paths:
            lib = PluginLibrary(path)
            for key, op in lib.ops.items():
                old = self.ops.get(key)
                if old is not None:
                    raise PluginError(
                        f"plugin {lib.path} registers op '{op.label}', which {old.library.path} registers "
                        "already: give each (domain, op type) once"
                    )
                self.ops[key] = op
            self.libraries.append(lib)

    def __bool__(self) -> bool:
        return bool(self.libraries)

    def find(self, domain: str, op_type: str) -> PluginOp | None:
        return self.ops.get((domain, op_type))

    @staticmethod
    def _call(
        op: PluginOp, fn: Any, node: str, attrs: TypedAttrs, ins: Any, outs: Any, n_in: int, n_out: int
    ) -> str:
        handle = _new_id()
        call = _Call(node, attrs, op.user_data)
        _calls[handle] = call
        try:
            rc = fn(ctypes.byref(API), handle, n_in, ins, n_out, outs)
        finally:
            del _calls[handle]
        if rc != 0:
            return call.error or "it returned non-zero without a message"
        return ""

    def infer(
        self, op: PluginOp, node: str, attrs: TypedAttrs, shapes: Sequence[Shape], n_out: int
    ) -> list[Shape]:
        """The output shapes the plugin computes for inputs of ``shapes`` (float32)."""
        if not op.min_inputs <= len(shapes) <= op.max_inputs or not op.min_outputs <= n_out <= op.max_outputs:
            raise PluginError(
                f"{op.label} ({node}) has {len(shapes)} inputs and {n_out} outputs; plugin {op.library.name} "
                f"takes {op.min_inputs}..{op.max_inputs} and {op.min_outputs}..{op.max_outputs}"
            )
        ins = (Tensor * len(shapes))()
        for tensor, shape in zip(ins, shapes):
            _fill(tensor, shape)
        outs = (Tensor * n_out)()
        error = self._call(op, op.infer_fn, node, attrs, ins, outs, len(shapes), n_out)
        if error:
            raise PluginError(f"plugin {op.library.name} rejects {op.label} ({node}): {error}")
        result: list[Shape] = []
        for index, tensor in enumerate(outs):
            dtype, rank, shape = _shape(tensor)
            if dtype != FLOAT32 or not 0 <= rank <= MAX_DIMS or any(d < 1 for d in shape):
                raise PluginError(
                    f"plugin {op.library.name} infers output {index} of {op.label} ({node}) as dtype "
                    f"{dtype}, rank {rank}, dims {list(shape)}: models hold float32 tensors of dims >= 1"
                )
            result.append(shape)
        return result

    def run(
        self,
        op: PluginOp,
        node: str,
        attrs: TypedAttrs,
        inputs: Sequence[ArrayF],
        out_shapes: Sequence[Shape],
    ) -> list[ArrayF]:
        """Run the op's ``run`` on numpy float32 arrays (the numpy reference interpreter). A dynamic output
        comes back in the shape the plugin reported (each dim at most ``out_shapes``')."""
        arrays = [np.ascontiguousarray(x, dtype=np.float32) for x in inputs]
        outputs = [np.zeros(shape, np.float32) for shape in out_shapes]
        ins = (Tensor * len(arrays))()
        for tensor, array in zip(ins, arrays):
            _fill(tensor, array.shape, array.ctypes.data)
        outs = (Tensor * len(outputs))()
        for tensor, array in zip(outs, outputs):
            _fill(tensor, array.shape, array.ctypes.data)
        error = self._call(op, op.run_fn, node, attrs, ins, outs, len(arrays), len(outputs))
        if error:
            raise PluginError(f"plugin {op.library.path} ({op.label}) failed: {error}")
        results = []
        for index, (tensor, array) in enumerate(zip(outs, outputs)):
            dtype, rank, shape = _shape(tensor)
            if op.is_dynamic(index) and dtype == FLOAT32 and rank == array.ndim:
                if all(0 <= d <= b for d, b in zip(shape, array.shape)):
                    count = int(np.prod(shape, dtype=np.int64))
                    results.append(array.reshape(-1)[:count].reshape(shape).copy())
                    continue
            if shape != array.shape:
                within = " (or within it, for a dynamic output)" if op.is_dynamic(index) else ""
                raise PluginError(
                    f"plugin {op.library.path} ({op.label}) reported output {index} as "
                    f"{list(shape)}, not its recorded shape{within}"
                )
            results.append(array)
        return results


def typed_attrs(
    attrs: Mapping[str, AttrValue], types: Mapping[str, AttrType]
) -> dict[str, tuple[AttrType, AttrValue]]:
    """A PLUGIN op's own attributes (not the reserved ek.* ones) with their types."""
    return {k: (types[k], v) for k, v in attrs.items() if not k.startswith(RESERVED_PREFIX) and k in types}


PluginPaths = Sequence[Union[str, "os.PathLike[str]"]]

__all__ = ["ABI_VERSION", "Api", "OpDesc", "PluginError", "PluginLibrary", "PluginOp", "PluginSet", "Tensor"]
