"""Profiles (docs/profiling.md): records of every kind, per-op records that match the model's ops, FLOPs,
the Chrome trace (parsed: strictly nested per thread, escaped names), the per-op CSV, nothing recorded
when off, an unwritable directory, and the `edgekit profile` command (table, plot, --plot)."""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edgekit as ek
from edgekit.cli import main
from edgekit.compiler import ekm
from edgekit.compiler.graph import OpType
from models import compile_ekm, input_shape_of, random_input

KINDS = {
    "ModelInit",
    "RequestInit",
    "TransferFromInput",
    "Wait",
    "LayerExecute",
    "TransferToOutput",
    "ModelExecute",
}


@pytest.fixture
def ctx() -> Iterator[Any]:
    with ek.Context(device=0) as context:
        yield context


def stage_ops(path: Path) -> list[ekm.OpRecord]:
    return ekm.read(path.read_bytes()).networks[0].stages[0].ops


def assert_nested(events: list[dict[str, Any]]) -> None:
    """Complete events on one thread never partly overlap: each lies inside or after the ones before."""
    by_thread: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        by_thread.setdefault(e["tid"], []).append(e)
    for tid, evs in by_thread.items():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[tuple[float, str]] = []
        for e in evs:
            start, end = e["ts"], e["ts"] + e["dur"]
            while stack and stack[-1][0] <= start + 1e-9:
                stack.pop()
            if stack:
                assert end <= stack[-1][0] + 1e-9, (
                    f"thread {tid}: {e['name']} ends after its parent {stack[-1][1]}"
                )
            stack.append((end, e["name"]))


def test_every_kind_nested_in_the_trace(ctx: Any, tmp_path: Path) -> None:
    path = compile_ekm("mobilenetv2")
    ops = stage_ops(path)
    req = ctx.load_model(str(path)).network().create_request()
    req.run([random_input(input_shape_of("mobilenetv2"))], profile=True)
    records = req.profile_data
    assert {r.kind for r in records} == KINDS
    layers = [r for r in records if r.kind == "LayerExecute"]
    # One record per op, in order, naming the op, its type and where it came from.
    assert [r.details["op_index"] for r in layers] == list(range(len(ops)))
    for r, op in zip(layers, ops):
        assert r.name == op.name
        assert r.details["op_type"] == OpType(op.type).name
        assert op.source is not None
        assert r.details["nodes"] == op.source.nodes and r.details["tensor"] == op.source.tensor
        assert r.details["provider"] in ("portable", "xnnpack")
        assert " -> " in r.details["shapes"] and r.details["threads"] >= 1
    (execute,) = [r for r in records if r.kind == "ModelExecute"]
    for r in layers:
        assert (
            execute.start_ns <= r.start_ns
            and r.start_ns + r.duration_ns <= execute.start_ns + execute.duration_ns
        )
    req._last_profile.write(tmp_path / "prof")
    trace = json.loads((tmp_path / "prof" / "trace.json").read_text())
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(events) == len(records)
    assert {e["cat"] for e in events} == KINDS
    assert_nested(events)
    conv = next(e for e in events if e["args"].get("op_type") == "CONV")
    assert conv["args"]["nodes"] and conv["args"]["flops"] > 0 and conv["args"]["gflops_per_s"] >= 0


def test_conv_flops(ctx: Any) -> None:
    """FLOPs of a convolution: 2 x output elements x KH x KW x input channels per group, plus one add
    per output element for a fused residual input Z (ResNet-18's blocks have 8)."""
    path = compile_ekm("resnet18")
    stage = ekm.read(path.read_bytes()).networks[0].stages[0]
    req = ctx.load_model(str(path)).network().create_request()
    req.run([random_input(input_shape_of("resnet18"))], profile=True)
    checked = fused = 0
    for r in req.profile_data:
        if r.kind != "LayerExecute" or r.details["op_type"] != "CONV":
            continue
        op = stage.ops[r.details["op_index"]]
        out = stage.tensors[op.outputs[0]].shape
        weight = stage.tensors[op.inputs[1]].shape  # [M, KH, KW, C/group]
        residual = len(op.inputs) > 3 and op.inputs[3] is not None
        fused += residual
        assert r.details["flops"] == 2 * math.prod(out) * weight[1] * weight[2] * weight[3] + (
            math.prod(out) if residual else 0
        )
        checked += 1
    assert checked >= 10 and fused == 8


def test_profile_off_records_nothing(ctx: Any) -> None:
    path = compile_ekm("mlp")
    req = ctx.load_model(str(path)).network().create_request()
    x = random_input(input_shape_of("mlp"))
    with ek.Profile() as prof:
        req.run([x])
        assert req.profile_data == []
        req.run([x], profile=prof)
        n = len(prof)
        req.run([x])  # not given the profile: nothing added to it
        assert len(prof) == n


def test_profile_object_collects_launches(ctx: Any, tmp_path: Path) -> None:
    path = compile_ekm("mlp")
    n_ops = len(stage_ops(path))
    req = ctx.load_model(str(path)).network().create_request()
    req.set_inputs([random_input(input_shape_of("mlp"))])
    with ek.Profile() as prof:
        for _ in range(3):
            req.infer(profile=prof)
            req.wait()
        records = prof.records
        prof.write(tmp_path)
    assert [r.details["launch"] for r in records if r.kind == "ModelExecute"] == [1, 2, 3]
    assert sum(r.kind == "ModelInit" for r in records) == 1
    with (tmp_path / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_ops and all(r["count"] == "3" for r in rows)
    totals = [float(r["total_ms"]) for r in rows]
    assert totals == sorted(totals, reverse=True)
    assert sum(float(r["percent"]) for r in rows) == pytest.approx(100, abs=0.1)


def test_names_are_escaped_in_the_trace(ctx: Any, tmp_path: Path) -> None:
    from edgekit.compiler import compile_model

    odd = 'relu "1"\\ \n\tnode'
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name=odd)],
        "odd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    compile_model(model, str(tmp_path / "odd.ekm"))
    req = ctx.load_model(str(tmp_path / "odd.ekm")).network().create_request()
    with ek.Profile() as prof:
        req.run([np.ones((2, 3), np.float32)], profile=prof)
        prof.write(tmp_path / "prof")
    trace = json.loads((tmp_path / "prof" / "trace.json").read_text())
    (layer,) = [e for e in trace["traceEvents"] if e.get("cat") == "LayerExecute"]
    assert layer["name"] == odd and layer["args"]["nodes"] == [odd]


def test_unwritable_profile_directory(ctx: Any, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with ek.Profile() as prof, pytest.raises(ek.SystemCallError) as exc:
        prof.write(tmp_path / "file" / "prof")
    assert "profile directory" in str(exc.value)
    with pytest.raises(ek.FreedHandleError):
        prof.write(tmp_path / "prof")  # closed


def test_profile_command_table_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = compile_ekm("senet")
    np.save(tmp_path / "x.npy", random_input(input_shape_of("senet")))
    out = tmp_path / "prof"
    assert (
        main(["profile", str(path), "--input", str(tmp_path / "x.npy"), "--repeat", "3", "-o", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert "GFLOP/s" in text and "3 launch(es)" in text and "profile.png" in text
    assert (out / "trace.json").is_file() and (out / "summary.csv").is_file()
    assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (out / "profile.png").unlink()
    assert main(["profile", "--plot", str(out)]) == 0
    assert (out / "profile.png").is_file()


def test_plot_without_matplotlib_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    path = compile_ekm("mlp")
    out = tmp_path / "prof"
    assert main(["profile", str(path), "--repeat", "1", "-o", str(out)]) == 0
    assert "no plot: matplotlib is not installed" in capsys.readouterr().out
    assert main(["profile", "--plot", str(out)]) == 1
    err = capsys.readouterr().err
    assert "matplotlib is not installed" in err and "host" in err
