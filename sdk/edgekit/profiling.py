"""Reading what profiles and dumps wrote (docs/profiling.md): the per-op table of a profile directory,
its plot (host only: matplotlib), and the comparison of a dump with onnxruntime (host only: onnx,
onnxruntime). The runtime writes the files (trace.json, summary.csv, the .npy files and
manifest.json) in C, so the edge app's and Python's are the same; this module only reads them.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TRACE = "trace.json"
SUMMARY = "summary.csv"
PLOT = "profile.png"
MANIFEST = "manifest.json"


class ProfilingError(Exception):
    """A profile or dump directory that cannot be read, or a host-only tool that is missing."""


def read_summary(directory: str | Path) -> list[dict[str, str]]:
    """The rows of DIR/summary.csv (ops by total time, as ek_profile_write wrote them)."""
    path = Path(directory) / SUMMARY
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except OSError as exc:
        raise ProfilingError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_trace(directory: str | Path) -> list[dict[str, Any]]:
    """The complete ("ph": "X") events of DIR/trace.json."""
    path = Path(directory) / TRACE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProfilingError(f"cannot read {path}: {exc}") from None
    return [e for e in data.get("traceEvents", []) if e.get("ph") == "X"]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def format_summary(rows: Sequence[dict[str, str]], limit: int | None = 20) -> str:
    """The per-op table, sorted by time as in the CSV: rank, op, type, provider, algorithm, count, total,
    mean, %, GFLOP/s."""
    header = ("#", "op", "type", "provider", "algorithm", "count", "total ms", "mean ms", "%", "GFLOP/s")
    shown = rows if limit is None else rows[:limit]
    table = [
        (
            r["rank"],
            _cut(r["name"], 48),
            r["op_type"],
            r["provider"],
            r.get("algorithm") or "-",
            r["count"],
            f"{float(r['total_ms']):.3f}",
            f"{float(r['mean_ms']):.4f}",
            f"{float(r['percent']):.1f}",
            f"{float(r['gflops_per_s']):.2f}" if int(r["flops"]) else "-",
        )
        for r in shown
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i in (1, 2, 3, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
        )
        for row in [header, *table]
    ]
    if limit is not None and len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more op(s) in {SUMMARY}")
    return "\n".join(line.rstrip() for line in lines)


def matplotlib_missing() -> str | None:
    """None when matplotlib can be imported, else why not (plots are host-only)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        return (
            f"matplotlib is not installed ({exc}): plots are made on the host; copy the profile directory "
            "there and run 'edgekit profile --plot DIR'"
        )
    return None


def plot(directory: str | Path, output: str | Path | None = None) -> Path:
    """DIR/profile.png (or `output`): time per op type (bars) and the timeline of the first launch."""
    why = matplotlib_missing()
    if why:
        raise ProfilingError(why)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    rows = read_summary(directory)
    events = read_trace(directory)
    per_type: dict[str, float] = {}
    for r in rows:
        per_type[r["op_type"]] = per_type.get(r["op_type"], 0.0) + float(r["total_ms"])
    types = sorted(per_type, key=lambda t: per_type[t])
    fig, (bars, timeline) = plt.subplots(2, 1, figsize=(11, 8), gridspec_kw={"height_ratios": [1, 1.4]})
    bars.barh(types, [per_type[t] for t in types], color="tab:blue")
    bars.set_xlabel("total time (ms)")
    bars.set_title(f"time per op type ({directory.name})")
    launches = [e for e in events if e["args"].get("kind") == "ModelExecute"]
    first = min(launches, key=lambda e: e["ts"]) if launches else None
    lanes = ["ModelInit", "TransferFromInput", "Wait", "RequestInit", "LayerExecute", "TransferToOutput"]
    colors = dict(zip(lanes, ["tab:gray", "tab:green", "tab:orange", "tab:purple", "tab:blue", "tab:red"]))
    if first is not None:
        launch = first["args"].get("launch")
        shown = [
            e for e in events if e["args"].get("launch") in (launch, None) and e["args"]["kind"] in colors
        ]
        shown = [e for e in shown if e["args"]["kind"] != "ModelInit"] or shown
        origin = min(e["ts"] for e in shown) if shown else 0.0
        for e in shown:
            lane = lanes.index(e["args"]["kind"])
            timeline.barh(
                lane, e["dur"] / 1000, left=(e["ts"] - origin) / 1000, color=colors[e["args"]["kind"]]
            )
        timeline.set_yticks(range(len(lanes)), lanes)
        timeline.set_xlabel(f"time (ms) from the first record of launch {launch}")
        timeline.set_title("timeline of the first launch")
    fig.tight_layout()
    out = Path(output) if output is not None else directory / PLOT
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ---- dumps ----


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfilingError(f"{path} does not exist: not a complete dump directory") from None
    except (OSError, ValueError) as exc:
        raise ProfilingError(f"cannot read {path}: {exc}") from None
    if manifest.get("format") != "edgekit-dump":
        raise ProfilingError(f"{path} is not an EdgeKit dump manifest")
    return manifest


@dataclass
class LayerError:
    index: int
    op: str
    name: str
    tensor: str
    status: str  # "ok", "MISMATCH", "shape", "n/a"
    max_abs: float = math.nan
    relative: float = math.nan  # max_abs / max(1, max |reference|), as edgekit run --expect


@dataclass
class Comparison:
    layers: list[LayerError]
    tolerance: float

    @property
    def first_bad(self) -> LayerError | None:
        return next((layer for layer in self.layers if layer.status in ("MISMATCH", "shape")), None)

    def table(self) -> str:
        header = ("#", "op", "ONNX tensor", "max abs", "relative", "")
        rows = [
            (
                str(layer.index),
                layer.op,
                _cut(layer.tensor or f"({layer.name})", 56),
                "-" if math.isnan(layer.max_abs) else f"{layer.max_abs:.3g}",
                "-" if math.isnan(layer.relative) else f"{layer.relative:.3g}",
                layer.status,
            )
            for layer in self.layers
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        return "\n".join(
            "  ".join(
                c.ljust(w) if i in (1, 2, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
            ).rstrip()
            for r in [header, *rows]
        )


def compare_dump(directory: str | Path, onnx_model: str | Path, tolerance: float = 1e-4) -> Comparison:
    """Run the dump's inputs through onnxruntime with every ONNX tensor the dump's ops hold exposed as an
    extra graph output, and compare layer by layer (host only: onnx and onnxruntime)."""
    try:
        import onnx
        import onnxruntime as ort  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ProfilingError(f"dump --compare needs onnx and onnxruntime (host only): {exc}") from None
    directory = Path(directory)
    manifest = read_manifest(directory)
    if not manifest.get("source_map"):
        raise ProfilingError(
            "the dump has no op-to-ONNX map (its model was compiled before .ekm 1.1): compile the model "
            "again to compare it with ONNX"
        )
    model = onnx.load(str(onnx_model))
    produced = {name for node in model.graph.node for name in node.output if name}
    existing = {o.name for o in model.graph.output}
    wanted = []
    for op in manifest["ops"]:
        tensor = op["tensor"]
        if tensor and tensor in produced and tensor not in existing and tensor not in wanted:
            wanted.append(tensor)
    model.graph.output.extend([onnx.ValueInfoProto(name=name) for name in wanted])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {entry["name"]: np.load(directory / entry["file"]) for entry in manifest["inputs"]}
    names = [o.name for o in session.get_outputs()]
    reference = dict(zip(names, session.run(names, feeds)))
    layers: list[LayerError] = []
    for op in manifest["ops"]:
        tensor = op["tensor"]
        layer = LayerError(op["index"], op["op"], op["name"], tensor, "n/a")
        layers.append(layer)
        if tensor not in reference:
            continue  # an intermediate of a multi-op lowering, or a network input
        ours = np.load(directory / op["file"]).astype(np.float64)
        ref = np.asarray(reference[tensor]).astype(np.float64)
        if ours.shape != ref.shape:
            layer.status = "shape"
            continue
        layer.max_abs = float(np.abs(ours - ref).max(initial=0.0))
        layer.relative = layer.max_abs / max(1.0, float(np.abs(ref).max(initial=0.0)))
        good = math.isfinite(layer.relative) and layer.relative <= tolerance
        layer.status = "ok" if good else "MISMATCH"
    return Comparison(layers, tolerance)
