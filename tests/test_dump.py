"""Dumps of intermediate results (docs/profiling.md): every test model's dump agrees with onnxruntime's
intermediates after the layout conversion; the manifest's fields; models compiled without the op-to-ONNX
map; an unwritable directory; and `edgekit dump --compare` naming exactly the layer a test-only kernel
override corrupted (and doing nothing without the test switch)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgekit as ek
from edgekit.compiler import ekm
from edgekit.compiler.graph import OpType
from edgekit.profiling import compare_dump, read_manifest
from models import MODEL_NAMES, compile_ekm, input_shape_of, onnx_path, random_input


@pytest.fixture
def ctx() -> Iterator[Any]:
    with ek.Context(device=0) as context:
        yield context


def dump(ctx: Any, path: Path | bytes, out: Path, name: str) -> dict[str, Any]:
    model = ctx.load_model(path if isinstance(path, bytes) else str(path))
    req = model.network().create_request()
    req.run([random_input(input_shape_of(name))], dump=out)
    req.close()
    return read_manifest(out)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_dump_matches_onnxruntime_intermediates(ctx: Any, name: str, tmp_path: Path) -> None:
    manifest = dump(ctx, compile_ekm(name), tmp_path, name)
    comparison = compare_dump(tmp_path, onnx_path(name), tolerance=1e-4)
    compared = [layer for layer in comparison.layers if layer.status != "n/a"]
    assert comparison.first_bad is None, comparison.table()
    # Nearly every op's output is an ONNX tensor (layout changes of the input are the exception).
    assert len(compared) >= len(manifest["ops"]) - 2, comparison.table()


def test_manifest_fields(ctx: Any, tmp_path: Path) -> None:
    path = compile_ekm("mobilenetv2")
    stage = ekm.read(path.read_bytes()).networks[0].stages[0]
    x = random_input(input_shape_of("mobilenetv2"))
    req = ctx.load_model(str(path)).network().create_request()
    req.run([x], dump=tmp_path)
    manifest = read_manifest(tmp_path)
    assert manifest["network"] == "mobilenetv2" and manifest["stage"] == 0
    assert manifest["source_map"] is True and manifest["layout"] == "onnx"
    (inp,) = manifest["inputs"]
    np.testing.assert_array_equal(np.load(tmp_path / inp["file"]), x)
    assert [op["index"] for op in manifest["ops"]] == list(range(len(stage.ops)))
    for entry, op in zip(manifest["ops"], stage.ops):
        assert op.source is not None
        assert entry["op"] == OpType(op.type).name and entry["name"] == op.name
        assert entry["nodes"] == op.source.nodes and entry["tensor"] == op.source.tensor
        data = np.load(tmp_path / entry["file"])
        engine = stage.tensors[op.outputs[0]].shape
        assert list(data.shape) == entry["shape"] and entry["engine_shape"] == list(engine)
        if op.source.perm is not None:  # NHWC in the engine, NCHW in the file
            assert entry["shape"] == [engine[p] for p in op.source.perm]
        assert entry["dtype"] == "float32" and entry["nan_count"] == int(np.isnan(data).sum())
        assert entry["min"] == pytest.approx(float(data.min()), rel=1e-6)
        assert entry["max"] == pytest.approx(float(data.max()), rel=1e-6)
        assert entry["mean"] == pytest.approx(float(data.mean(dtype=np.float64)), rel=1e-5, abs=1e-6)
    # A fused op stands under the last node of the fusion: BatchNorm and Clip folded into a Conv.
    fused = next(e for e in manifest["ops"] if len(e["nodes"]) == 3)
    assert fused["op"] == "CONV" and fused["tensor"].startswith(fused["nodes"][-1])


def test_dump_of_a_model_without_the_map(ctx: Any, tmp_path: Path) -> None:
    """A file from a 1.0 compiler: op names and the engine layout, said so in the manifest; --compare
    refuses it with the reason."""
    old = ekm.write(ekm.read(compile_ekm("yolo").read_bytes()), source_map=False)
    manifest = dump(ctx, old, tmp_path, "yolo")
    assert manifest["source_map"] is False and manifest["layout"] == "engine"
    assert "compiled before .ekm 1.1" in manifest["note"]
    conv = next(op for op in manifest["ops"] if op["op"] == "CONV")
    assert conv["layout"] == "engine" and conv["nodes"] == [conv["name"]]
    assert conv["shape"] == conv["engine_shape"]  # NHWC, as the engine holds it
    with pytest.raises(Exception, match="no op-to-ONNX map"):
        compare_dump(tmp_path, onnx_path("yolo"))


def test_unwritable_dump_directory(ctx: Any, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    req = ctx.load_model(str(compile_ekm("mlp"))).network().create_request()
    req.set_inputs([random_input(input_shape_of("mlp"))])
    with pytest.raises(ek.SystemCallError) as exc:
        req.infer(dump=tmp_path / "file" / "dump")
    assert "dump directory" in str(exc.value)
    assert not req.running
    req.run([random_input(input_shape_of("mlp"))])  # the request still works


def test_a_new_dump_replaces_the_manifest_last(ctx: Any, tmp_path: Path) -> None:
    """The manifest of an earlier dump is removed before a new one starts, so a directory holds a
    manifest only for a dump that completed; no .tmp file is left."""
    req = ctx.load_model(str(compile_ekm("mlp"))).network().create_request()
    x = random_input(input_shape_of("mlp"))
    req.run([x], dump=tmp_path)
    (tmp_path / "manifest.json").write_text("stale")
    req.set_inputs([x])
    req.infer(dump=tmp_path)
    req.wait()
    assert read_manifest(tmp_path)["ops"]
    assert not list(tmp_path.glob("*.tmp"))


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_compare_names_the_corrupted_layer(tmp_path: Path) -> None:
    name = "resnet18"
    path = compile_ekm(name)
    stage = ekm.read(path.read_bytes()).networks[0].stages[0]
    convs = [i for i, op in enumerate(stage.ops) if op.type == OpType.CONV]
    target = convs[len(convs) // 2]
    victim = stage.ops[target].name
    np.save(tmp_path / "x.npy", random_input(input_shape_of(name)))
    args = [
        "dump",
        str(path),
        "--input",
        str(tmp_path / "x.npy"),
        "-o",
        str(tmp_path / "d"),
        "--compare",
        str(onnx_path(name)),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_TEST")}
    env["EDGEKIT_TEST_CORRUPT_OP"] = victim
    # Without the test switch the variable does nothing.
    done = run_cli(args, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TEST HOOK" not in done.stderr and "within tolerance" in done.stdout
    env["EDGEKIT_TEST_HOOKS"] = "1"
    done = run_cli(args, env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "TEST HOOK ACTIVE" in done.stderr
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("first layer over the tolerance")]
    assert f"op {target} CONV {victim!r}" in line, line
    # Comparing the dump directory again, without the model, names the same layer.
    done = run_cli(["dump", "-o", str(tmp_path / "d"), "--compare", str(onnx_path(name))], env)
    assert done.returncode == 1 and f"op {target} CONV" in done.stdout


def test_npy_write_of_the_c_api(tmp_path: Path) -> None:
    """ek_npy_write (what the edge app's --output_dir and the dumps use) writes files numpy loads, and
    refuses a size that does not match the shape, an unknown dtype and an unwritable folder."""
    import ctypes

    import edgekit

    lib = ctypes.CDLL(str(next(Path(edgekit.__file__).parent.glob("libedgekit.so*"))))

    class Shape(ctypes.Structure):
        _fields_ = [("num_dims", ctypes.c_int), ("dims", ctypes.c_int64 * 8)]

    write = lib.ek_npy_write
    write.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(Shape), ctypes.c_void_p]
    write.argtypes += [ctypes.c_size_t]
    codes = {np.dtype(np.float32): 1, np.dtype(np.int64): 6, np.dtype(np.uint8): 4}

    def save(
        name: str, array: np.ndarray[Any, Any], nbytes: int | None = None, code: int | None = None
    ) -> int:
        shape = Shape(array.ndim, (ctypes.c_int64 * 8)(*array.shape))
        data = np.ascontiguousarray(array)
        return int(
            write(
                str(tmp_path).encode(),
                name.encode(),
                codes[array.dtype] if code is None else code,
                ctypes.byref(shape),
                data.ctypes.data,
                data.nbytes if nbytes is None else nbytes,
            )
        )

    cases: dict[str, np.ndarray[Any, Any]] = {
        "scalar.npy": np.array(2.5, np.float32),
        "vector.npy": np.arange(5, dtype=np.int64),
        "matrix.npy": np.arange(6, dtype=np.float32).reshape(2, 3),
        "bytes.npy": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    }
    for name, array in cases.items():
        assert save(name, array) == 0, name
        loaded = np.load(tmp_path / name)
        assert loaded.dtype == array.dtype and loaded.shape == array.shape
        np.testing.assert_array_equal(loaded, array)
    invalid_arg = 1
    assert save("short.npy", cases["matrix.npy"], nbytes=20) == invalid_arg
    assert save("dtype.npy", cases["matrix.npy"], code=99) == invalid_arg
    assert not (tmp_path / "short.npy").exists() and not (tmp_path / "dtype.npy").exists()
    (tmp_path / "file").write_text("not a folder")
    write_dir = str(tmp_path / "file").encode()
    shape = Shape(1, (ctypes.c_int64 * 8)(1))
    one = np.zeros(1, np.float32)
    assert write(write_dir, b"x.npy", 1, ctypes.byref(shape), one.ctypes.data, 4) == 11  # EK_ERR_SYSTEM
