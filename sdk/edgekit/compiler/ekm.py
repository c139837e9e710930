"""Writer and reader of the ``.ekm`` model file, exactly as docs/model-format.md describes it.

``write(ModelFile) -> bytes`` lays out the sections; ``read(bytes) -> ModelFile`` parses a file back
(for tests, the reference interpreter and ``edgekit info``). The reader checks the structure it needs
to parse safely; the runtime's loader (sdk/runtime/src/model.c) is the complete validator.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from edgekit.compiler.graph import ATTR_TYPES, AttrType, AttrValue, CompileError

MAGIC = b"EDGEKIT\0"
VERSION_MAJOR = 1
VERSION_MINOR = 5  # 1.1: the optional OP_SOURCES + SOURCE_NODES sections; 1.2: PLUGIN ops;
# 1.3: TOP_K, NON_MAX_SUPPRESSION and the DYNAMIC flag of TENSORS / IOS records;
# 1.4: CONV's optional fourth input Z (a fused residual Add) and its STRING attribute `algorithm`;
# 1.5: the quantized ops (31..39) and int8 / uint8 / int32 tensors
HEADER_SIZE = 64
ABSENT = 0xFFFFFFFF

# section kinds
STRINGS, NETWORKS, IOS, STAGES, TENSORS, OPS, OPERANDS, BINDINGS, ATTRS, ATTR_DATA, CONSTANTS = range(1, 12)
OP_SOURCES, SOURCE_NODES = 12, 13  # optional (1.1): where each op came from in the ONNX graph
SECTION_NAMES = {
    STRINGS: "STRINGS",
    NETWORKS: "NETWORKS",
    IOS: "IOS",
    STAGES: "STAGES",
    TENSORS: "TENSORS",
    OPS: "OPS",
    OPERANDS: "OPERANDS",
    BINDINGS: "BINDINGS",
    ATTRS: "ATTRS",
    ATTR_DATA: "ATTR_DATA",
    CONSTANTS: "CONSTANTS",
    OP_SOURCES: "OP_SOURCES",
    SOURCE_NODES: "SOURCE_NODES",
}
OPTIONAL_SECTIONS = (OP_SOURCES, SOURCE_NODES)
RECORD_SIZES = {
    STRINGS: 1,
    NETWORKS: 32,
    IOS: 32,
    STAGES: 48,
    TENSORS: 96,
    OPS: 24,
    OPERANDS: 4,
    BINDINGS: 4,
    ATTRS: 24,
    ATTR_DATA: 1,
    CONSTANTS: 1,
    OP_SOURCES: 24,
    SOURCE_NODES: 4,
}

# storage codes
ARENA, CONSTANT, INPUT, OUTPUT = 0, 1, 2, 3
STORAGE_NAMES = {ARENA: "ARENA", CONSTANT: "CONSTANT", INPUT: "INPUT", OUTPUT: "OUTPUT"}

# dtype codes -> numpy dtypes
DTYPES: dict[int, np.dtype[np.generic]] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.float16),
    3: np.dtype(np.int8),
    4: np.dtype(np.uint8),
    5: np.dtype(np.int32),
    6: np.dtype(np.int64),
}
FLOAT32 = 1
INT8 = 3
UINT8 = 4
INT32 = 5
INT64 = 6
DYNAMIC = 1  # the flags bit of TENSORS and IOS records (1.3)

_HEADER = struct.Struct("<8sHHIQQII24x")
_SECTION = struct.Struct("<IIQQ")
_NETWORK = struct.Struct("<IIIIIIQ")
_IO = struct.Struct("<IBB2xfiQQ")
_STAGE = struct.Struct("<IIIIIIQ16x")
_TENSOR = struct.Struct("<IBBBBIIQQ8q")
_OP = struct.Struct("<IHHIHHII")
_ATTR = struct.Struct("<IB3xIIQ")
_SOURCE = struct.Struct("<IIIB3x8B")


@dataclass
class TensorRecord:
    name: str
    shape: tuple[int, ...]
    storage: int
    dtype: int = FLOAT32
    io_index: int = 0
    offset: int = 0  # ARENA and DYNAMIC OUTPUT: in the arena; CONSTANT: in CONSTANTS (the writer assigns it)
    data: np.ndarray | None = None  # CONSTANT: the value
    dynamic: bool = False  # an OUTPUT whose size depends on the data (1.3); shape is its bound

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype].itemsize


@dataclass
class OpSource:
    """Where an op came from: the ONNX nodes it stands for (in graph order; a fused op lists every
    node of the fusion, the last one's output being the op's), the ONNX tensor its output holds (""
    when none: an intermediate of a multi-op lowering), and ``perm``, which takes the op's output to
    the ONNX layout (``onnx = engine.transpose(perm)``; None: it is in the ONNX layout already)."""

    tensor: str
    nodes: list[str]
    perm: tuple[int, ...] | None = None


@dataclass
class OpRecord:
    name: str
    type: int
    inputs: list[int | None]  # tensor indices in the stage; None: absent
    outputs: list[int]
    attrs: dict[str, AttrValue] = field(default_factory=dict)
    source: OpSource | None = None  # from OP_SOURCES; None in files without it
    # The type of attributes the op table does not know (PLUGIN ops' node attributes); read back for all.
    attr_types: dict[str, AttrType] = field(default_factory=dict)


@dataclass
class StageRecord:
    tensors: list[TensorRecord]
    ops: list[OpRecord]
    input_bindings: list[int]
    output_bindings: list[int]
    arena_size: int


@dataclass
class IORecord:
    name: str
    dtype: int = FLOAT32
    scale: float = 1.0
    zero_point: int = 0
    max_bytes: int = 0
    dynamic: bool = False  # an output whose size depends on the data (1.3)


@dataclass
class NetworkRecord:
    name: str
    inputs: list[IORecord]
    outputs: list[IORecord]
    stages: list[StageRecord]


@dataclass
class ModelFile:
    networks: list[NetworkRecord]
    version: tuple[int, int] = (VERSION_MAJOR, VERSION_MINOR)

    def network(self, name: str | None = None) -> NetworkRecord:
        if name is None:
            if len(self.networks) != 1:
                raise KeyError(f"the model has {len(self.networks)} networks; name one")
            return self.networks[0]
        for net in self.networks:
            if net.name == name:
                return net
        raise KeyError(f"no network '{name}' (have {[n.name for n in self.networks]})")


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


class _Strings:
    def __init__(self) -> None:
        self.data = bytearray(b"\0")
        self.refs: dict[str, int] = {"": 0}

    def ref(self, text: str) -> int:
        if text not in self.refs:
            encoded = text.encode("utf-8")
            if b"\0" in encoded:
                raise CompileError(f"name {text!r} contains a NUL character")
            self.refs[text] = len(self.data)
            self.data += encoded + b"\0"
        return self.refs[text]


def _attr_record(
    name: str, value: AttrValue, strings: _Strings, attr_data: bytearray, kind: AttrType | None = None
) -> bytes:
    kind = kind or ATTR_TYPES.get(name)
    if kind is None:
        raise CompileError(f"internal: attribute '{name}' has no type in the op table")
    count, raw = 1, 0
    if kind == AttrType.INT:
        raw = struct.unpack("<Q", struct.pack("<q", int(value)))[0]  # type: ignore[arg-type]
    elif kind == AttrType.FLOAT:
        raw = struct.unpack("<I", struct.pack("<f", float(value)))[0]  # type: ignore[arg-type]
    elif kind == AttrType.STRING:
        raw = strings.ref(str(value))
    else:
        assert isinstance(value, list)
        count = len(value)
        if count > 64:
            raise CompileError(f"attribute '{name}' has {count} elements; the format allows 64")
        while len(attr_data) % 8:
            attr_data.append(0)
        raw = len(attr_data)
        fmt = "q" if kind == AttrType.INTS else "f"
        attr_data += struct.pack(f"<{count}{fmt}", *value)
        while len(attr_data) % 8:  # keep the next array 8-aligned
            attr_data.append(0)
    return _ATTR.pack(strings.ref(name), int(kind), count, 0, raw)


def write(model: ModelFile, *, source_map: bool = True) -> bytes:
    """Serialize ``model``; constants with identical bytes share one blob. With ``source_map`` (the
    default) the OP_SOURCES and SOURCE_NODES sections are written (ops without a ``source`` get an
    empty one) and the file is version 1.1; without, the file is what a 1.0 compiler wrote."""
    strings = _Strings()
    sources, source_nodes = bytearray(), bytearray()
    n_source_nodes = 0
    networks, ios, stages, tensors, ops = bytearray(), bytearray(), bytearray(), bytearray(), bytearray()
    operands, bindings, attrs, attr_data, constants = (
        bytearray(),
        bytearray(),
        bytearray(),
        bytearray(),
        bytearray(),
    )
    blobs: dict[tuple[bytes, int], int] = {}
    n_ios = n_stages = n_tensors = n_ops = n_operands = n_bindings = n_attrs = 0

    for net_index, net in enumerate(model.networks):
        networks += _NETWORK.pack(
            strings.ref(net.name), len(net.inputs), len(net.outputs), len(net.stages), n_ios, n_stages, 0
        )
        for io in [*net.inputs, *net.outputs]:
            ios += _IO.pack(
                strings.ref(io.name),
                io.dtype,
                DYNAMIC if io.dynamic else 0,
                io.scale,
                io.zero_point,
                io.max_bytes,
                0,
            )
            n_ios += 1
        for stage in net.stages:
            stages += _STAGE.pack(
                net_index, n_tensors, len(stage.tensors), n_ops, len(stage.ops), n_bindings, stage.arena_size
            )
            n_stages += 1
            for t in stage.tensors:
                if t.storage == CONSTANT:
                    if t.data is None:
                        raise CompileError(f"internal: constant tensor '{t.name}' has no data")
                    blob = np.ascontiguousarray(t.data, dtype=DTYPES[t.dtype]).tobytes()
                    key = (blob, t.dtype)
                    if key not in blobs:
                        while len(constants) % 64:
                            constants.append(0)
                        blobs[key] = len(constants)
                        constants += blob
                    t.offset = blobs[key]
                dims = [*t.shape, *[0] * (8 - len(t.shape))]
                tensors += _TENSOR.pack(
                    strings.ref(t.name),
                    t.dtype,
                    t.storage,
                    len(t.shape),
                    DYNAMIC if t.dynamic else 0,
                    t.io_index,
                    0,
                    t.offset,
                    t.nbytes,
                    *dims,
                )
            n_tensors += len(stage.tensors)
            for op in stage.ops:
                first_attr = n_attrs
                for name, value in op.attrs.items():
                    attrs += _attr_record(name, value, strings, attr_data, op.attr_types.get(name))
                    n_attrs += 1
                ops += _OP.pack(
                    strings.ref(op.name),
                    op.type,
                    0,
                    n_operands,
                    len(op.inputs),
                    len(op.outputs),
                    first_attr,
                    len(op.attrs),
                )
                for index in [*op.inputs, *op.outputs]:
                    operands += struct.pack("<I", ABSENT if index is None else index)
                    n_operands += 1
                src = op.source or OpSource("", [])
                perm = list(src.perm) if src.perm is not None else []
                if len(perm) > 8 or sorted(perm) != list(range(len(perm))):
                    raise CompileError(f"internal: op '{op.name}' has a bad layout permutation {perm}")
                sources += _SOURCE.pack(
                    strings.ref(src.tensor),
                    n_source_nodes,
                    len(src.nodes),
                    1 if src.perm is not None else 0,
                    *perm,
                    *[0] * (8 - len(perm)),
                )
                for node in src.nodes:
                    source_nodes += struct.pack("<I", strings.ref(node))
                    n_source_nodes += 1
            n_ops += len(stage.ops)
            for index in [*stage.input_bindings, *stage.output_bindings]:
                bindings += struct.pack("<I", index)
                n_bindings += 1

    sections = [
        (STRINGS, bytes(strings.data)),
        (NETWORKS, bytes(networks)),
        (IOS, bytes(ios)),
        (STAGES, bytes(stages)),
        (TENSORS, bytes(tensors)),
        (OPS, bytes(ops)),
        (OPERANDS, bytes(operands)),
        (BINDINGS, bytes(bindings)),
        (ATTRS, bytes(attrs)),
        (ATTR_DATA, bytes(attr_data)),
        *([(OP_SOURCES, bytes(sources)), (SOURCE_NODES, bytes(source_nodes))] if source_map else []),
        (CONSTANTS, bytes(constants)),
    ]
    table_offset = HEADER_SIZE
    pos = table_offset + _SECTION.size * len(sections)  # where the next byte of body goes
    table = bytearray()
    body = bytearray()
    for kind, payload in sections:
        start = _align(pos, 64 if kind == CONSTANTS else 8)
        body += b"\0" * (start - pos)
        table += _SECTION.pack(kind, RECORD_SIZES[kind], start, len(payload))
        body += payload
        pos = start + len(payload)
    file_size = pos
    # 1.2 .. 1.5 only when the file needs it (a PLUGIN op; TOP_K, NON_MAX_SUPPRESSION or a DYNAMIC
    # output; a CONV with Z or an `algorithm`; a quantized op or network input/output), so other files
    # stay readable by older readers
    records = [o for net in model.networks for st in net.stages for o in st.ops]
    op_types = {o.type for o in records}
    has_dynamic = any(io.dynamic for net in model.networks for io in net.outputs)
    quantized_io = any(
        io.dtype not in (FLOAT32, INT64) for net in model.networks for io in net.inputs + net.outputs
    )
    if quantized_io or any(o.type >= 31 for o in records):
        minor = 5
    elif any(o.type == 1 and (len(o.inputs) > 3 or "algorithm" in o.attrs) for o in records):
        minor = 4
    elif has_dynamic or op_types & {29, 30}:
        minor = 3
    elif 28 in op_types:
        minor = 2
    else:
        minor = 1 if source_map else 0
    header = _HEADER.pack(MAGIC, VERSION_MAJOR, minor, HEADER_SIZE, file_size, table_offset, len(sections), 0)
    return header + bytes(table) + bytes(body)


class ModelFormatError(ValueError):
    """The bytes are not a readable .ekm file."""


def read(data: bytes) -> ModelFile:
    """Parse an .ekm file (the inverse of ``write``)."""
    view = memoryview(data)
    if len(data) < HEADER_SIZE:
        raise ModelFormatError(f"file too short for the header ({len(data)} bytes)")
    magic, major, minor, header_size, file_size, table_offset, section_count, _flags = _HEADER.unpack_from(
        view, 0
    )
    if magic != MAGIC:
        raise ModelFormatError("bad magic: not an .ekm file")
    if major != VERSION_MAJOR:
        raise ModelFormatError(f"unsupported version {major}.{minor} (this reader reads {VERSION_MAJOR}.x)")
    if header_size != HEADER_SIZE or file_size != len(data):
        raise ModelFormatError(
            f"header: header_size {header_size} / file_size {file_size} do not match the file"
        )
    if table_offset + section_count * _SECTION.size > len(data):
        raise ModelFormatError("section table outside the file")
    sections: dict[int, tuple[int, int]] = {}
    for i in range(section_count):
        kind, record_size, offset, size = _SECTION.unpack_from(view, table_offset + i * _SECTION.size)
        if kind in RECORD_SIZES:
            if record_size != RECORD_SIZES[kind] or size % record_size or offset + size > len(data):
                raise ModelFormatError(f"section {SECTION_NAMES[kind]}: bad record size, size or offset")
            sections[kind] = (offset, size)
    missing = [SECTION_NAMES[k] for k in RECORD_SIZES if k not in sections and k not in OPTIONAL_SECTIONS]
    if missing:
        raise ModelFormatError(f"missing sections: {', '.join(missing)}")

    def records(kind: int, fmt: struct.Struct) -> list[tuple[int, ...]]:
        offset, size = sections[kind]
        return [fmt.unpack_from(view, offset + i * fmt.size) for i in range(size // fmt.size)]

    str_off, str_size = sections[STRINGS]
    strings_blob = bytes(view[str_off : str_off + str_size])

    def string(ref: int) -> str:
        end = strings_blob.find(b"\0", ref)
        if ref >= len(strings_blob) or end < 0:
            raise ModelFormatError(f"string ref {ref} outside STRINGS")
        return strings_blob[ref:end].decode("utf-8")

    def u32s(kind: int) -> list[int]:
        offset, size = sections[kind]
        return list(struct.unpack_from(f"<{size // 4}I", view, offset))

    attr_off, attr_size = sections[ATTR_DATA]
    const_off, const_size = sections[CONSTANTS]
    net_recs = records(NETWORKS, _NETWORK)
    io_recs = records(IOS, _IO)
    stage_recs = records(STAGES, _STAGE)
    tensor_recs = records(TENSORS, _TENSOR)
    op_recs = records(OPS, _OP)
    attr_recs = records(ATTRS, _ATTR)
    operands = u32s(OPERANDS)
    bindings = u32s(BINDINGS)
    has_sources = OP_SOURCES in sections and SOURCE_NODES in sections
    source_recs = records(OP_SOURCES, _SOURCE) if has_sources else []
    node_refs = u32s(SOURCE_NODES) if has_sources else []
    if has_sources and len(source_recs) != len(op_recs):
        raise ModelFormatError(f"OP_SOURCES has {len(source_recs)} records for {len(op_recs)} ops")

    def op_source(index: int) -> OpSource | None:
        if not has_sources:
            return None
        tensor_ref, first, count = source_recs[index][:3]
        refs = node_refs[first : first + count]
        if len(refs) != count:
            raise ModelFormatError(f"OP_SOURCES[{index}]: nodes outside SOURCE_NODES")
        return OpSource(string(tensor_ref), [string(r) for r in refs], None)

    def attr_value(rec: tuple[int, ...]) -> tuple[str, AttrValue]:
        name_ref, kind, count, _reserved, raw = rec
        name = string(name_ref)
        if kind == AttrType.INT:
            return name, struct.unpack("<q", struct.pack("<Q", raw))[0]
        if kind == AttrType.FLOAT:
            return name, struct.unpack("<f", struct.pack("<I", raw & 0xFFFFFFFF))[0]
        if kind == AttrType.STRING:
            return name, string(raw)
        if kind in (AttrType.INTS, AttrType.FLOATS):
            width = 8 if kind == AttrType.INTS else 4
            if raw + count * width > attr_size:
                raise ModelFormatError(f"attribute '{name}' outside ATTR_DATA")
            fmt = f"<{count}{'q' if kind == AttrType.INTS else 'f'}"
            return name, list(struct.unpack_from(fmt, view, attr_off + raw))
        raise ModelFormatError(f"attribute '{name}' has unknown type {kind}")

    networks: list[NetworkRecord] = []
    for name_ref, n_in, n_out, n_stages, first_io, first_stage, _ in net_recs:
        ios = [
            IORecord(string(r[0]), r[1], r[3], r[4], r[5], bool(r[2] & DYNAMIC))
            for r in io_recs[first_io : first_io + n_in + n_out]
        ]
        if len(ios) != n_in + n_out:
            raise ModelFormatError("network IOS range outside IOS")
        stages: list[StageRecord] = []
        for s in stage_recs[first_stage : first_stage + n_stages]:
            _net, first_t, n_t, first_op, n_op, first_b, arena = s
            tensors: list[TensorRecord] = []
            for t in tensor_recs[first_t : first_t + n_t]:
                t_name, dtype, storage, rank, flags, io_index, _r, offset, nbytes = t[:9]
                if dtype not in DTYPES or rank > 8:
                    raise ModelFormatError(f"tensor '{string(t_name)}': bad dtype or rank")
                record = TensorRecord(
                    string(t_name),
                    tuple(t[9 : 9 + rank]),
                    storage,
                    dtype,
                    io_index,
                    offset,
                    dynamic=bool(flags & DYNAMIC),
                )
                if record.nbytes != nbytes:
                    raise ModelFormatError(f"tensor '{record.name}': nbytes {nbytes} != its shape's size")
                if storage == CONSTANT:
                    if offset + nbytes > const_size:
                        raise ModelFormatError(f"tensor '{record.name}' outside CONSTANTS")
                    start = const_off + offset
                    record.data = np.frombuffer(data, DTYPES[dtype], nbytes // DTYPES[dtype].itemsize, start)
                    record.data = record.data.reshape(record.shape)
                tensors.append(record)
            ops: list[OpRecord] = []
            for op_index, o in enumerate(op_recs[first_op : first_op + n_op], first_op):
                o_name, o_type, _r, first_operand, n_oin, n_oout, first_attr, n_attr = o
                idx = operands[first_operand : first_operand + n_oin + n_oout]
                if len(idx) != n_oin + n_oout:
                    raise ModelFormatError(f"op '{string(o_name)}': operands outside OPERANDS")
                ops.append(
                    OpRecord(
                        string(o_name),
                        o_type,
                        [None if i == ABSENT else i for i in idx[:n_oin]],
                        list(idx[n_oin:]),
                        dict(attr_value(a) for a in attr_recs[first_attr : first_attr + n_attr]),
                        op_source(op_index),
                        {string(a[0]): AttrType(a[1]) for a in attr_recs[first_attr : first_attr + n_attr]},
                    )
                )
                src = ops[-1].source
                if src is not None and source_recs[op_index][3]:
                    out_rank = len(tensors[ops[-1].outputs[0]].shape) if ops[-1].outputs else 0
                    src.perm = tuple(source_recs[op_index][4 : 4 + out_rank])
            bound = bindings[first_b : first_b + n_in + n_out]
            stages.append(StageRecord(tensors, ops, list(bound[:n_in]), list(bound[n_in:]), arena))
        networks.append(NetworkRecord(string(name_ref), ios[:n_in], ios[n_in:], stages))
    return ModelFile(networks, (major, minor))
