"""The compiler pipeline: ONNX networks and their stages -> one ``.ekm`` file and a report."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx

from edgekit.compiler import ekm, layout, onnx_import, passes, plan, quantize
from edgekit.compiler.graph import (
    FLOAT32,
    INT8,
    INT32,
    INT64,
    NCHW_PERM,
    NHWC,
    ONNX,
    UINT8,
    CompileError,
    Graph,
    Op,
    OpType,
    Shape,
)
from edgekit.compiler.lower import StageLowering
from edgekit.compiler.onnx_import import ModelSource, OnnxModel
from edgekit.compiler.plugins import PluginPaths, PluginSet

Log = Callable[[str], None]


@dataclass(frozen=True)
class NetworkSpec:
    """One network to compile. ``stages``: one dict per stage, input name -> static shape; inputs whose
    ONNX shape is fully static may be left out; ``()`` is one stage from the ONNX shapes."""

    model: str | os.PathLike[str] | bytes | onnx.ModelProto
    name: str | None = None
    stages: Sequence[Mapping[str, Sequence[int]]] = ()


@dataclass
class StageReport:
    input_shapes: dict[str, Shape]
    output_shapes: dict[str, Shape]
    op_count: int
    arena_bytes: int
    sum_intermediate_bytes: int
    folded_constants: int  # ONNX nodes evaluated at compile time
    fused_ops: int  # BatchNorm/Mul/Add folded into weights + residual Adds and activations fused
    inserted_transposes: int  # layout changes (TRANSPOSE ops) the compiler added
    op_types: dict[str, int] = field(default_factory=dict)


@dataclass
class NetworkReport:
    name: str
    stages: list[StageReport]


@dataclass
class CompileReport:
    data: bytes
    networks: list[NetworkReport]

    def summary(self) -> str:
        """A table of every network's stages: shapes, ops, arena against all intermediates."""
        lines = [f"{len(self.data)} bytes, {len(self.networks)} network(s)"]
        header = (
            "network",
            "stage",
            "inputs",
            "outputs",
            "ops",
            "arena",
            "intermediates",
            "saved",
            "fold/fuse/T",
        )
        rows: list[tuple[str, ...]] = []
        for net in self.networks:
            for index, st in enumerate(net.stages):
                saved = st.sum_intermediate_bytes - st.arena_bytes
                pct = f"{100 * saved / st.sum_intermediate_bytes:.0f}%" if st.sum_intermediate_bytes else "-"
                rows.append(
                    (
                        net.name,
                        str(index),
                        " ".join(f"{k}={_shape_str(v)}" for k, v in st.input_shapes.items()),
                        " ".join(f"{k}={_shape_str(v)}" for k, v in st.output_shapes.items()),
                        str(st.op_count),
                        _bytes(st.arena_bytes),
                        _bytes(st.sum_intermediate_bytes),
                        pct,
                        f"{st.folded_constants}/{st.fused_ops}/{st.inserted_transposes}",
                    )
                )
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        return "\n".join(lines)


def _shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _bytes(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def parse_shape(text: str) -> tuple[int, ...]:
    """ "1x3x224x224" or "1,3,224,224" -> (1, 3, 224, 224); every dimension >= 1."""
    cleaned = text.strip()
    if not cleaned or not re.fullmatch(r"\d+([x,]\d+)*", cleaned):
        raise ValueError(f"bad shape {text!r}: expected dimensions like 1x3x224x224 (or 1,3,224,224)")
    dims = tuple(int(d) for d in re.split(r"[x,]", cleaned))
    if any(d < 1 for d in dims):
        raise ValueError(f"bad shape {text!r}: every dimension must be >= 1")
    return dims


def _stage_shapes(model: OnnxModel, stage: Mapping[str, Sequence[int]], index: int) -> dict[str, Shape]:
    names = [i.name for i in model.inputs]
    unknown = [n for n in stage if n not in names]
    if unknown:
        raise CompileError(f"stage {index}: network '{model.name}' has no input {unknown} (inputs: {names})")
    shapes: dict[str, Shape] = {}
    for info in model.inputs:
        if info.name in stage:
            shape = tuple(int(d) for d in stage[info.name])
            if any(d < 1 for d in shape):
                raise CompileError(
                    f"stage {index}: input '{info.name}' shape {list(shape)} has a dimension < 1"
                )
            if info.has_shape:
                if len(shape) != len(info.dims):
                    raise CompileError(
                        f"stage {index}: input '{info.name}' has rank {len(info.dims)} in the model, "
                        f"the stage gives {list(shape)}"
                    )
                for d, want in zip(info.dims, shape):
                    if d is not None and d != want:
                        raise CompileError(
                            f"stage {index}: input '{info.name}' is {_dims_str(info.dims)} in the model; "
                            f"{list(shape)} does not fit its static dimensions"
                        )
            shapes[info.name] = shape
        elif not info.has_shape or any(d is None for d in info.dims):
            raise CompileError(
                f"input '{info.name}' has a dynamic shape "
                f"{_dims_str(info.dims) if info.has_shape else '(unknown)'}; "
                f"give its static shape (e.g. --input-shape {info.name}=1x3x224x224)"
            )
        else:
            shapes[info.name] = tuple(int(d) for d in info.dims if d is not None)
    return shapes


def _dims_str(dims: Sequence[int | None]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


@dataclass
class _CompiledStage:
    graph: Graph
    plan: plan.MemoryPlan
    report: StageReport


def compile_stage(
    model: OnnxModel,
    shapes: Mapping[str, Shape],
    plugins: PluginSet | None = None,
    conv_algorithm: str = "auto",
) -> _CompiledStage:
    lowering = StageLowering(model, shapes, plugins)
    graph = lowering.run()
    passes.eliminate_dead_code(graph)
    fused = passes.fold_into_weights(graph)
    fused += passes.fuse_residual_adds(graph)
    fused += passes.fuse_activations(graph)
    passes.eliminate_dead_code(graph)
    passes.choose_conv_algorithms(graph, conv_algorithm)
    graph, transposes = layout.assign_layouts(graph)
    passes.merge_reshapes(graph)
    passes.fix_outputs(graph)
    passes.eliminate_dead_code(graph)
    _check_dynamic(graph)
    memory = plan.plan_memory(graph)
    types: dict[str, int] = {}
    for op in graph.ops:
        types[op.type.name] = types.get(op.type.name, 0) + 1
    report = StageReport(
        input_shapes={n: graph.shape(n) for n in graph.inputs},
        output_shapes={n: graph.shape(t) for n, t in zip(graph.output_names, graph.outputs)},
        op_count=len(graph.ops),
        arena_bytes=memory.arena_size,
        sum_intermediate_bytes=memory.sum_intermediate_bytes,
        folded_constants=lowering.stats.folded_nodes,
        fused_ops=fused,
        inserted_transposes=transposes,
        op_types=types,
    )
    return _CompiledStage(graph, memory, report)


def _check_dynamic(graph: Graph) -> None:
    """A DYNAMIC tensor (a size that depends on the data) must be a network output, once, that no op
    reads (lowering names the ONNX node for the usual cases; this catches what passes made of them)."""
    users = graph.consumers()
    for name, tensor in graph.tensors.items():
        if not tensor.dynamic:
            continue
        readers = users.get(name, [])
        if readers:
            raise CompileError(
                f"op '{readers[0].name}' reads '{tensor.onnx_name or name}', whose size depends on the data: "
                "EdgeKit supports data-dependent sizes only as network outputs"
            )
        if graph.outputs.count(name) != 1:
            raise CompileError(
                f"'{tensor.onnx_name or name}' has a size that depends on the data and must be exactly one "
                "network output (it is listed "
                f"{graph.outputs.count(name)} times)"
            )


def _op_source(graph: Graph, op: Op) -> ekm.OpSource:
    """The op's OP_SOURCES record: its ONNX nodes, the ONNX tensor its output holds, and the
    permutation back to the ONNX layout for an NHWC output."""
    out = graph.tensors[op.outputs[0]]
    perm = NCHW_PERM if out.layout == NHWC and len(out.shape) == 4 else None
    return ekm.OpSource(out.onnx_name or "", list(op.sources), perm)


_DTYPE_CODES = {FLOAT32: ekm.FLOAT32, INT64: ekm.INT64, INT8: ekm.INT8, UINT8: ekm.UINT8, INT32: ekm.INT32}


def _stage_record(compiled: _CompiledStage) -> ekm.StageRecord:
    graph = compiled.graph
    order: list[str] = []
    seen: set[str] = set()

    def use(name: str | None) -> None:
        if name is not None and name not in seen:
            seen.add(name)
            order.append(name)

    for name in graph.inputs:
        use(name)
    for op in graph.ops:
        for operand in [*op.inputs, *op.outputs]:
            use(operand)
    for name in graph.outputs:
        use(name)
    index = {name: i for i, name in enumerate(order)}
    tensors: list[ekm.TensorRecord] = []
    for name in order:
        t = graph.tensors[name]
        if t.layout != ONNX and (name in graph.inputs or name in graph.outputs):
            raise CompileError(f"internal: network tensor '{name}' is not in the ONNX layout")
        dtype = _DTYPE_CODES[t.dtype]
        if name in graph.inputs:
            record = ekm.TensorRecord(name, t.shape, ekm.INPUT, dtype, io_index=graph.inputs.index(name))
        elif name in graph.outputs:
            record = ekm.TensorRecord(
                name,
                t.shape,
                ekm.OUTPUT,
                dtype,
                io_index=graph.outputs.index(name),
                # a DYNAMIC output is written in the arena, then copied out (docs/model-format.md)
                offset=compiled.plan.offsets[name] if t.dynamic else 0,
                dynamic=t.dynamic,
            )
        elif t.data is not None:
            record = ekm.TensorRecord(name, t.shape, ekm.CONSTANT, dtype, data=t.data)
        else:
            record = ekm.TensorRecord(name, t.shape, ekm.ARENA, dtype, offset=compiled.plan.offsets[name])
        tensors.append(record)
    ops = [
        ekm.OpRecord(
            op.name,
            int(op.type),
            [None if n is None else index[n] for n in op.inputs],
            [index[n] for n in op.outputs],
            dict(op.attrs),
            _op_source(graph, op),
            dict(op.attr_types),
        )
        for op in graph.ops
    ]
    return ekm.StageRecord(
        tensors,
        ops,
        [index[n] for n in graph.inputs],
        [index[n] for n in graph.outputs],
        compiled.plan.arena_size,
    )


def default_name(source: ModelSource, graph_name: str, output: str | os.PathLike[str] | None) -> str:
    """A network's name when none is given: the output file's stem for a file of one network, else the
    ONNX file's stem, else the graph name. Exporters give every graph the same name (torch:
    'main_graph', also 'torch_jit', 'tf2onnx'), and a runtime holds each network name once, so the
    graph name would make two exported models collide."""
    if output is not None:
        return Path(os.fspath(output)).stem
    if isinstance(source, (str, os.PathLike)):
        return Path(os.fspath(source)).stem
    return graph_name or "network"


def compile_networks(
    networks: Sequence[NetworkSpec],
    output: str | os.PathLike[str] | None = None,
    *,
    log: Log | None = None,
    plugins: PluginPaths = (),
    conv_algorithm: str = "auto",
) -> CompileReport:
    """Compile every network (each with its stages) into one .ekm; write it to ``output`` if given.
    Networks without a name get ``default_name``'s: the output's stem for one network, else the ONNX
    file's stem. ``plugins``: host builds of plugin op libraries (docs/plugins.md) whose ops the
    networks' custom-domain nodes become. ``conv_algorithm``: "auto" records Winograd on the 3x3
    stride-1 convolutions where it pays, "winograd" on all that qualify, "gemm" on none."""
    say: Log = log or (lambda _message: None)
    if conv_algorithm not in passes.CONV_ALGORITHMS:
        raise CompileError(
            f"unknown conv algorithm '{conv_algorithm}' (expected {', '.join(passes.CONV_ALGORITHMS)})"
        )
    if not networks:
        raise CompileError("no networks to compile")
    plugin_set = PluginSet(plugins)
    for lib in plugin_set.libraries:
        say(f"plugin {lib.path}: " + ", ".join(f"{d}::{t}" for d, t in lib.ops))
    records: list[ekm.NetworkRecord] = []
    reports: list[NetworkReport] = []
    for spec in networks:
        model, qstats = quantize.fold_qdq(onnx_import.load(spec.model))
        name = spec.name or default_name(spec.model, model.name, output if len(networks) == 1 else None)
        if qstats.fused or qstats.expanded:
            say(
                f"{name}: quantized: {qstats.fused} int8 ops from QDQ groups"
                + (f" ({qstats.expanded} QOperator nodes rewritten)" if qstats.expanded else "")
            )
        if any(r.name == name for r in records):
            raise CompileError(
                f"two networks are named '{name}'; give each a unique name (--name, once per model)"
            )
        stage_specs: Sequence[Mapping[str, Sequence[int]]] = spec.stages or [{}]
        compiled: list[_CompiledStage] = []
        for index, stage in enumerate(stage_specs):
            shapes = _stage_shapes(model, stage, index)
            say(f"{name}: stage {index}: " + " ".join(f"{k}={_shape_str(v)}" for k, v in shapes.items()))
            try:
                result = compile_stage(model, shapes, plugin_set, conv_algorithm)
            except CompileError as exc:
                if len(stage_specs) > 1 or len(networks) > 1:
                    exc.args = (f"network '{name}', stage {index}: {exc.args[0]}", *exc.args[1:])
                raise
            compiled.append(result)
            st = result.report
            say(
                f"{name}: stage {index}: {st.op_count} ops, arena {_bytes(st.arena_bytes)} "
                f"(intermediates {_bytes(st.sum_intermediate_bytes)})"
            )
        for index, result in enumerate(compiled):
            if result.graph.output_names != compiled[0].graph.output_names:
                raise CompileError(f"network '{name}': stage {index} has other outputs than stage 0")
        first = compiled[0].graph
        for index, result in enumerate(compiled):
            for i, out_name in enumerate(first.output_names):
                here, there = result.graph.tensors[result.graph.outputs[i]], first.tensors[first.outputs[i]]
                if (here.dtype, here.dynamic) != (there.dtype, there.dynamic):
                    raise CompileError(
                        f"network '{name}': output '{out_name}' is {here.dtype}"
                        f"{' (dynamic)' if here.dynamic else ''} in stage {index} but {there.dtype}"
                        f"{' (dynamic)' if there.dynamic else ''} in stage 0"
                    )
        inputs = [
            ekm.IORecord(
                n,
                _DTYPE_CODES[first.tensors[n].dtype],
                *(first.tensors[n].qparams or (1.0, 0)),
                max_bytes=max(c.graph.tensors[n].nbytes for c in compiled),
            )
            for n in first.inputs
        ]
        outputs = [
            ekm.IORecord(
                out_name,
                _DTYPE_CODES[first.tensors[first.outputs[i]].dtype],
                *(first.tensors[first.outputs[i]].qparams or (1.0, 0)),
                max_bytes=max(c.graph.tensors[c.graph.outputs[i]].nbytes for c in compiled),
                dynamic=first.tensors[first.outputs[i]].dynamic,
            )
            for i, out_name in enumerate(first.output_names)
        ]
        if len(inputs) > 64 or len(outputs) > 64:
            raise CompileError(f"network '{name}' has more than 64 inputs or outputs")
        if len(set(first.output_names) | set(first.inputs)) != len(first.output_names) + len(first.inputs):
            raise CompileError(f"network '{name}': input and output names must be unique")
        records.append(ekm.NetworkRecord(name, inputs, outputs, [_stage_record(c) for c in compiled]))
        reports.append(NetworkReport(name, [c.report for c in compiled]))
    data = ekm.write(ekm.ModelFile(records))
    if output is not None:
        path = Path(os.fspath(output))
        try:
            path.write_bytes(data)
        except OSError as exc:
            raise CompileError(f"cannot write {path}: {exc.strerror}") from exc
        say(f"wrote {path} ({len(data)} bytes)")
    return CompileReport(data, reports)


def compile_model(
    model: ModelSource,
    output: str | os.PathLike[str] | None = None,
    *,
    stages: Sequence[Mapping[str, Sequence[int]]] = (),
    name: str | None = None,
    log: Log | None = None,
    plugins: PluginPaths = (),
    conv_algorithm: str = "auto",
) -> CompileReport:
    """Compile one ONNX network (a path, the bytes of an .onnx file, or a ModelProto) to .ekm. The
    network is named ``name``, by default the stem of ``output`` (see ``default_name``). ``plugins``:
    plugin libraries for the custom-domain nodes (docs/plugins.md). ``conv_algorithm``: see
    ``compile_networks``."""
    return compile_networks(
        [NetworkSpec(model, name, stages)], output, log=log, plugins=plugins, conv_algorithm=conv_algorithm
    )


__all__ = [
    "CompileReport",
    "NetworkReport",
    "NetworkSpec",
    "OpType",
    "StageReport",
    "compile_model",
    "compile_networks",
    "default_name",
    "parse_shape",
]
