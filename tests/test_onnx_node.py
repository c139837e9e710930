"""ONNX's own backend node tests, run through edgekit.compiler and the runtime.

The cases are the onnx package's node tests: from ``onnx/backend/test/data/node/test_*`` (model.onnx +
test_data_set_0/{input,output}_*.pb) when the installed package ships that folder, else generated in
memory by ``onnx.backend.test.case.node.collect_testcases()`` (the same cases: the folder is generated
from it; recent onnx wheels leave it out). Every case whose op types are all in SUPPORTED_OPS becomes one
test per kernel path:

- inputs that must be compile-time constants for EdgeKit (parameter inputs: shapes, pads, axes, Conv
  weights, Clip bounds, Resize scales, see PARAM_INPUTS) are turned into initializers holding the case's
  data; the others stay network inputs, compiled at the data's shapes. One compile per case, shared by
  both kernel paths. onnx generates its cases at its newest opset; the compiler takes that opset where
  the case's ops have not changed for float32 since its newest one.
- a case the compiler refuses (CompileError, UnsupportedOpsError: an attribute, dtype or rank EdgeKit
  does not support) is SKIPPED with the compiler's message;
- otherwise the outputs must match the expected ones within rtol 1e-4 / atol 1e-5, or within the
  backend test's own rtol/atol (its runner's criterion).

At the end of the session a summary lists how many cases ran, passed, failed and were skipped, and
every skipped case with its reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import edgekit as ek

# The ONNX ops edgekit.compiler lowers (float32 only); cases using any other op are not collected.
SUPPORTED_OPS = frozenset(
    {
        "Add",
        "AveragePool",
        "BatchNormalization",
        "Clip",
        "Concat",
        "Constant",
        "Conv",
        "ConvTranspose",
        "Div",
        "Dropout",
        "Flatten",
        "Gemm",
        "GlobalAveragePool",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "LeakyRelu",
        "MatMul",
        "MaxPool",
        "Mul",
        "Pad",
        "PRelu",
        "ReduceMean",
        "Relu",
        "Reshape",
        "Resize",
        "Sigmoid",
        "Slice",
        "Softmax",
        "Squeeze",
        "Sub",
        "Tanh",
        "Transpose",
        "Unsqueeze",
        "Upsample",
    }
)
# Inputs (by position) that EdgeKit needs as compile-time constants: weights, bounds, shapes, indices.
PARAM_INPUTS: dict[str, frozenset[int]] = {
    "BatchNormalization": frozenset({1, 2, 3, 4}),
    "Clip": frozenset({1, 2}),
    "Conv": frozenset({1, 2}),
    "ConvTranspose": frozenset({1, 2}),
    "Dropout": frozenset({1, 2}),
    "Pad": frozenset({1, 2, 3}),
    "Reshape": frozenset({1}),
    "Resize": frozenset({1, 2, 3}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "ReduceMean": frozenset({1}),
    "Upsample": frozenset({1}),
}
# Cases where EdgeKit knowingly differs from onnx's expected data (and agrees with onnxruntime): xfail.
KNOWN_DEVIATIONS = {
    "test_resize_downsample_scales_linear_align_corners": "align_corners with a non-integer output length "
    "(2 x 4 scaled by 0.6): onnx's reference divides by (in x scale - 1) = 1.4, onnxruntime and EdgeKit by "
    "(out - 1) with the integer output size",
}
RTOL, ATOL = 1e-4, 1e-5
KERNELS = ("portable", "xnnpack")
NODE_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"

Array = np.ndarray[Any, Any]


@dataclass
class NodeCase:
    name: str
    model: onnx.ModelProto
    inputs: list[Array]
    outputs: list[Array]
    rtol: float = 1e-3  # the backend runner's defaults
    atol: float = 1e-7


def _to_array(value: Any) -> Array:
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


def _read_pb(path: Path) -> Array:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


def _numbered(folder: Path, prefix: str) -> list[Path]:
    return sorted(folder.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))


def _shipped_cases() -> Iterator[NodeCase]:
    for folder in sorted(NODE_DATA.glob("test_*")):
        data = folder / "test_data_set_0"
        if not (folder / "model.onnx").is_file() or not data.is_dir():
            continue
        try:
            inputs = [_read_pb(p) for p in _numbered(data, "input")]
            outputs = [_read_pb(p) for p in _numbered(data, "output")]
        except Exception:  # sequences/optionals are stored as other protos: not EdgeKit's business
            continue
        yield NodeCase(folder.name, onnx.load(str(folder / "model.onnx")), inputs, outputs)


def _generated_cases() -> Iterator[NodeCase]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # the generators' own numpy warnings (division by zero, ...)
        cases = collect_testcases()
    for case in cases:
        if case.model is None or not case.data_sets:
            continue
        inputs, outputs = case.data_sets[0]
        try:
            yield NodeCase(
                case.name,
                case.model,
                [_to_array(v) for v in inputs],
                [_to_array(v) for v in outputs],
                case.rtol,
                case.atol,
            )
        except Exception:  # a sequence or optional value
            continue


def _is_tensor(value: onnx.ValueInfoProto) -> bool:
    return bool(value.type.HasField("tensor_type"))


def _candidate(case: NodeCase) -> bool:
    graph = case.model.graph
    return (
        all(node.op_type in SUPPORTED_OPS and node.domain in ("", "ai.onnx") for node in graph.node)
        and all(_is_tensor(v) for v in [*graph.input, *graph.output])
        and len(case.inputs) == len(graph.input)
        and len(case.outputs) == len(graph.output)
        and all(isinstance(a, np.ndarray) and a.dtype != object for a in case.inputs + case.outputs)
    )


def load_cases() -> tuple[int, dict[str, NodeCase]]:
    """(how many node tests onnx has, the candidates by name)."""
    source = list(_shipped_cases()) if NODE_DATA.is_dir() else list(_generated_cases())
    return len(source), {case.name: case for case in source if _candidate(case)}


ALL_COUNT, CASES = load_cases()


@dataclass
class Compiled:
    data: bytes | None = None
    skip_reason: str | None = None
    runtime_inputs: dict[str, Array] = field(default_factory=dict)


def prepare(case: NodeCase) -> tuple[onnx.ModelProto, dict[str, Array]]:
    """The case's model with its constant-only inputs turned into initializers, and the run-time
    inputs that remain (name -> data)."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    graph = model.graph
    params = {
        node.input[i]
        for node in graph.node
        for i in PARAM_INPUTS.get(node.op_type, frozenset())
        if i < len(node.input) and node.input[i]
    }
    runtime: dict[str, Array] = {}
    kept = []
    for value, data in zip(graph.input, case.inputs):
        if value.name in params:
            graph.initializer.append(numpy_helper.from_array(data, value.name))
        else:
            runtime[value.name] = data
            kept.append(value)
    del graph.input[:]
    graph.input.extend(kept)
    return model, runtime


_compiled: dict[str, Compiled] = {}


def compiled(name: str) -> Compiled:
    """The case compiled once (shared by both kernel paths), or the compiler's reason to refuse it."""
    if name not in _compiled:
        from edgekit.compiler import CompileError, compile_model

        model, runtime = prepare(CASES[name])
        stages = [{k: tuple(v.shape) for k, v in runtime.items()}] if runtime else []
        try:
            report = compile_model(model, None, stages=stages, name="node")
            _compiled[name] = Compiled(data=report.data, runtime_inputs=runtime)
        except CompileError as exc:
            _compiled[name] = Compiled(skip_reason=f"{type(exc).__name__}: {exc}")
    return _compiled[name]


# ---- the summary printed at the end of the session ----

OUTCOMES: dict[tuple[str, str], str] = {}  # (case, kernels) -> "passed" | "failed" | "skipped: ..."


class NodeSummary:
    """A pytest plugin registered by the module's fixture: its terminal-summary hook prints the tally."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not OUTCOMES:
            return
        write = terminalreporter.write_line
        terminalreporter.section("ONNX backend node tests through EdgeKit")
        cases = sorted({case for case, _ in OUTCOMES})
        write(
            f"{len(CASES)} of onnx's {ALL_COUNT} node tests use only supported ops; "
            f"{len(cases)} selected in this run"
        )
        for kernels in KERNELS:
            got = [v for (c, k), v in OUTCOMES.items() if k == kernels]
            if not got:
                continue
            passed = sum(v == "passed" for v in got)
            failed = sum(v == "failed" for v in got)
            skipped = sum(v.startswith("skipped") for v in got)
            xfailed = sum(v == "xfailed" for v in got)
            write(
                f"  kernels={kernels}: ran {passed + failed}, passed {passed}, failed {failed}, "
                f"skipped {skipped}, known deviations (xfail) {xfailed}"
            )
        reasons = {c: _compiled[c].skip_reason for c in cases if c in _compiled and _compiled[c].skip_reason}
        if reasons:
            write(f"skipped at compile time ({len(reasons)}):")
            for case, reason in sorted(reasons.items()):
                lines = str(reason).splitlines()[:2]  # the error and its first detail, not the boilerplate
                write(f"  {case}: {' '.join(' '.join(lines).split())[:200]}")
        failed_cases = sorted({f"{c} [{k}]" for (c, k), v in OUTCOMES.items() if v == "failed"})
        if failed_cases:
            write(f"failed ({len(failed_cases)}): {', '.join(failed_cases)}")


@pytest.fixture(scope="module", autouse=True)
def node_summary(request: pytest.FixtureRequest) -> Iterator[None]:
    manager = request.config.pluginmanager
    if not manager.has_plugin("edgekit-onnx-node-summary"):
        manager.register(NodeSummary(), "edgekit-onnx-node-summary")
    yield


def _close(actual: Array, expected: Array, rtol: float, atol: float) -> bool:
    return bool(np.allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True))


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_node(name: str, kernels: str, request: pytest.FixtureRequest) -> None:
    case = CASES[name]
    if name in KNOWN_DEVIATIONS:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_DEVIATIONS[name], strict=False))
    outcome = "failed"
    try:
        result = compiled(name)
        if result.skip_reason is not None:
            outcome = f"skipped: {result.skip_reason}"
            pytest.skip(result.skip_reason)
        assert result.data is not None
        try:
            ctx = ek.Context(device=0, kernels=kernels)
        except ek.UnsupportedError as exc:
            outcome = "skipped: no XNNPACK provider"
            pytest.skip(f"kernels={kernels}: the XNNPACK kernel provider is not available here ({exc})")
        with ctx:
            net = ctx.load_model(result.data).network("node")
            actual = net.create_request().run(result.runtime_inputs)
        assert len(actual) == len(case.outputs), f"{len(actual)} outputs, expected {len(case.outputs)}"
        for index, (got, want) in enumerate(zip(actual, case.outputs)):
            label = f"{name} [{kernels}] output {index} ({case.model.graph.output[index].name})"
            assert got.shape == want.shape, f"{label}: shape {got.shape}, expected {want.shape}"
            if not (_close(got, want, RTOL, ATOL) or _close(got, want, case.rtol, case.atol)):
                diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
                raise AssertionError(
                    f"{label}: max |diff| {float(np.nanmax(diff)):.3g} exceeds rtol {RTOL}/atol {ATOL} "
                    f"and the backend test's rtol {case.rtol}/atol {case.atol}\n"
                    f"got {got.ravel()[:8]}...\nexpected {want.ravel()[:8]}..."
                )
        outcome = "passed"
    except AssertionError:
        if name in KNOWN_DEVIATIONS:
            outcome = "xfailed"
        raise
    finally:
        OUTCOMES[(name, kernels)] = outcome
