"""Bad input to the inference API: wrong inputs, stages and names are clear errors; truncated and
corrupted model files are ModelInvalidError (or, where a changed byte is padding or weight data, a model
that loads and runs), and never a crash; a wait that times out returns False and the launch completes.

The corruption loop runs in a subprocess, so a crash (a segfault in the loader or a kernel) fails the test
with the position that caused it instead of killing the test run.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edgekit as ek
from models import INPUT_NAME, compile_ekm, input_shape_of, max_error, onnx_path, ort_run, random_input

HEADER_SIZE = 64
SECTION_ENTRY = 24
SECTION_NAMES = {
    1: "STRINGS",
    2: "NETWORKS",
    3: "IOS",
    4: "STAGES",
    5: "TENSORS",
    6: "OPS",
    7: "OPERANDS",
    8: "BINDINGS",
    9: "ATTRS",
    10: "ATTR_DATA",
    11: "CONSTANTS",
    12: "OP_SOURCES",
    13: "SOURCE_NODES",
}
CONSTANTS = 11
OP_SOURCES, SOURCE_NODES = 12, 13
CONSTANT_FLIPS = 256  # bytes flipped through the constants, an odd stride apart (every byte lane is hit)
# Fields whose corruption may legitimately be an allocation failure, not an invalid file: a larger arena
# or a larger max_bytes describes a valid model that needs more memory than the device has.
SIZE_FIELDS = {"STAGES": (24, 32), "IOS": (16, 24)}


@pytest.fixture
def ctx() -> Iterator[Any]:
    with ek.Context(device=0, kernels="portable") as context:
        yield context


@pytest.fixture(scope="module")
def mlp_ekm() -> Path:
    return compile_ekm("mlp")


def two_input_ekm(tmp_path: Path) -> Path:
    """y = relu(a + b), a and b float32[2, 3]."""
    from edgekit.compiler import compile_model

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
        "two_in",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    out = tmp_path / "two_in.ekm"
    compile_model(model, str(out), name="two_in")
    return out


def message_names(exc: pytest.ExceptionInfo[BaseException], *parts: str) -> None:
    text = str(exc.value).lower()
    for part in parts:
        assert part.lower() in text, f"{part!r} not named in: {exc.value}"


# ---- wrong inputs, stages, names ----


def test_wrong_input_count(ctx: Any, mlp_ekm: Path) -> None:
    request = ctx.load_model(str(mlp_ekm)).network().create_request()
    x = random_input(input_shape_of("mlp"))
    for inputs in ([], [x, x]):
        with pytest.raises(ek.InvalidArgumentError) as exc:
            request.set_inputs(inputs)
        message_names(exc, "input")
    request.run([x])  # the request still works


def test_wrong_shape_names_the_input_and_the_stages(ctx: Any, mlp_ekm: Path) -> None:
    request = ctx.load_model(str(mlp_ekm)).network().create_request()
    for shape in ((1, 63), (64,), (1, 1, 64), (3, 64)):
        with pytest.raises(ek.InvalidArgumentError) as exc:
            request.set_inputs([np.zeros(shape, np.float32)])
        message_names(exc, INPUT_NAME)
        assert "64" in str(exc.value), f"the stage's shape (1x64) is not named in: {exc.value}"


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.uint8])
def test_wrong_dtype(ctx: Any, mlp_ekm: Path, dtype: Any) -> None:
    request = ctx.load_model(str(mlp_ekm)).network().create_request()
    with pytest.raises(ek.InvalidArgumentError) as exc:
        request.set_inputs([np.zeros(input_shape_of("mlp"), dtype)])
    message_names(exc, INPUT_NAME, "float32")


def test_missing_and_unknown_input_names(ctx: Any, tmp_path: Path) -> None:
    net = ctx.load_model(str(two_input_ekm(tmp_path))).network("two_in")
    assert [i.name for i in net.inputs] == ["a", "b"]
    request = net.create_request()
    a = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    b = np.ones((2, 3), np.float32)
    with pytest.raises(ek.InvalidArgumentError) as exc:
        request.set_inputs({"a": a})
    message_names(exc, "b")
    with pytest.raises(ek.InvalidArgumentError) as exc:
        request.set_inputs({"a": a, "b": b, "c": b})
    message_names(exc, "c")
    with pytest.raises(ek.InvalidArgumentError) as exc:
        request.set_inputs({"a": a, "bb": b})
    message_names(exc, "bb")
    (y,) = request.run({"b": b, "a": a})
    np.testing.assert_array_equal(y, np.maximum(a + b, 0))


def test_stage_out_of_range(ctx: Any, mlp_ekm: Path) -> None:
    net = ctx.load_model(str(mlp_ekm)).network()
    assert len(net.inputs[0].shapes) == 1
    for stage in (1, 5, -2):
        with pytest.raises((ek.InvalidArgumentError, ek.OutOfRangeError)) as exc:
            net.create_request(stage=stage)
        message_names(exc, str(stage))


def test_unknown_network_name(ctx: Any, mlp_ekm: Path) -> None:
    model = ctx.load_model(str(mlp_ekm))
    with pytest.raises(ek.EdgeKitError) as exc:
        model.network("no_such_net")
    assert isinstance(exc.value, (ek.InvalidArgumentError, LookupError)), repr(exc.value)
    message_names(exc, "no_such_net", "mlp")


def test_loading_the_same_network_twice_is_busy(ctx: Any, mlp_ekm: Path) -> None:
    ctx.load_model(str(mlp_ekm))
    with pytest.raises(ek.BusyError) as exc:
        ctx.load_model(mlp_ekm.read_bytes())
    message_names(exc, "mlp")


# ---- truncated and corrupted files ----


def section_table(data: bytes) -> list[tuple[int, int, int, int]]:
    """(kind, record_size, offset, size) of each section, read as docs/model-format.md lays them out."""
    assert data[:8] == b"EDGEKIT\0"
    (table_offset,) = struct.unpack_from("<Q", data, 24)
    (count,) = struct.unpack_from("<I", data, 32)
    return [struct.unpack_from("<IIQQ", data, table_offset + i * SECTION_ENTRY) for i in range(count)]


def flip_positions(data: bytes) -> list[tuple[int, str, bool]]:
    """(byte position, what it is, may that flip be an allocation failure): every byte of the header,
    the section table and every record section, and a stride through the constants."""
    (table_offset,) = struct.unpack_from("<Q", data, 24)
    sections = section_table(data)
    positions = [(p, f"header+{p}", False) for p in range(HEADER_SIZE)]
    end = table_offset + len(sections) * SECTION_ENTRY
    positions += [(p, f"section table+{p - table_offset}", False) for p in range(table_offset, end)]
    for kind, record, offset, size in sections:
        name = SECTION_NAMES.get(kind, f"kind {kind}")
        if kind == CONSTANTS:
            stride = max(1, size // CONSTANT_FLIPS) | 1
            positions += [(p, f"CONSTANTS+{p - offset}", False) for p in range(offset, offset + size, stride)]
            continue
        lo, hi = SIZE_FIELDS.get(name, (0, 0))
        for p in range(offset, offset + size):
            index, field = divmod(p - offset, record)
            positions.append((p, f"{name}[{index}]+{field}", lo <= field < hi))
    return positions


# The corruption loop, run in a subprocess: argv = model, jobs json, kernels. Prints one JSON list of
# outcomes ("invalid", "ok", "oom" or "<where>: <exception>"), the job index on stderr before each try.
FLIP_SCRIPT = r"""
import json, sys
import numpy as np
import edgekit as ek

data = open(sys.argv[1], "rb").read()
jobs = json.load(open(sys.argv[2]))
kernels = sys.argv[3]
outcomes = []
ctx = ek.Context(device=0, kernels=kernels)
for index, (pos, xor) in enumerate(jobs):
    sys.stderr.write(f"job {index}: byte {pos} ^ 0x{xor:02x}\n")
    sys.stderr.flush()
    buf = bytearray(data)
    buf[pos] ^= xor
    try:
        model = ctx.load_model(bytes(buf))
    except ek.ModelInvalidError as exc:
        outcomes.append("invalid")
        continue
    except ek.OutOfMemoryError as exc:
        outcomes.append("oom")
        continue
    except Exception as exc:
        outcomes.append(f"load: {type(exc).__name__}: {exc}")
        ctx.close()
        ctx = ek.Context(device=0, kernels=kernels)
        continue
    try:
        for name in model.network_names:
            net = model.network(name)
            request = net.create_request()
            request.run([np.zeros(i.shape, i.dtype) for i in net.inputs])
            del net, request
        outcomes.append("ok")
    except ek.OutOfMemoryError as exc:
        outcomes.append("oom")
    except Exception as exc:
        outcomes.append(f"run: {type(exc).__name__}: {exc}")
    del model
    ctx.close()  # the network names are taken in this context: the next load needs a fresh one
    ctx = ek.Context(device=0, kernels=kernels)
ctx.close()
print(json.dumps(outcomes))
"""


def run_flips(path: Path, jobs: list[tuple[int, int]], kernels: str, tmp_path: Path) -> list[str]:
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    result = subprocess.run(
        [sys.executable, "-c", FLIP_SCRIPT, str(path), str(jobs_file), kernels],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        last = result.stderr.strip().splitlines()[-12:]
        pytest.fail(f"the corruption loop died (exit {result.returncode}); last lines:\n" + "\n".join(last))
    outcomes: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(outcomes) == len(jobs)
    return outcomes


@pytest.mark.parametrize("kernels", ["portable", "xnnpack"])
@pytest.mark.parametrize("name", ["senet", "yolo"])
def test_flipped_bytes_are_invalid_or_harmless(name: str, kernels: str, tmp_path: Path) -> None:
    try:
        ek.Context(device=0, kernels=kernels).close()
    except ek.UnsupportedError as exc:
        pytest.skip(f"kernels={kernels}: the XNNPACK kernel provider is not available here ({exc})")
    path = compile_ekm(name)
    data = path.read_bytes()
    positions = flip_positions(data)
    # 0x01: off-by-one counts, offsets and codes; 0x80: huge (or negative) values and sign bits. Weight
    # bytes only need one: any value there is a valid model.
    jobs: list[tuple[int, int]] = []
    labels: list[tuple[str, bool]] = []
    for pos, label, size_field in positions:
        for xor in (0x80,) if label.startswith("CONSTANTS") else (0x01, 0x80):
            jobs.append((pos, xor))
            labels.append((label, size_field))
    outcomes = run_flips(path, jobs, kernels, tmp_path)
    bad = [
        f"{label} ^ 0x{xor:02x}: {outcome}"
        for (pos, xor), (label, size_field), outcome in zip(jobs, labels, outcomes)
        if outcome not in ("invalid", "ok") and not (outcome == "oom" and size_field)
    ]
    counts = {kind: sum(o == kind for o in outcomes) for kind in ("invalid", "ok", "oom")}
    print(f"{name} [{kernels}]: {len(data)} bytes, {len(jobs)} flips: {counts}, {len(bad)} wrong")
    assert not bad, (
        f"{len(bad)} corruptions gave neither ModelInvalidError nor a working model:\n" + "\n".join(bad[:40])
    )
    # Sanity: the loader really checks: every flip of the magic and of the major version is invalid.
    for (pos, _xor), outcome in zip(jobs, outcomes):
        if pos < 10:
            assert outcome == "invalid", f"header byte {pos} flipped: {outcome}"


def truncation_lengths(data: bytes) -> list[int]:
    (table_offset,) = struct.unpack_from("<Q", data, 24)
    lengths = {
        0,
        1,
        7,
        8,
        12,
        63,
        HEADER_SIZE,
        table_offset + 10,
        len(data) // 2,
        len(data) - 64,
        len(data) - 1,
    }
    lengths.update(offset + size // 2 for _, _, offset, size in section_table(data))
    return sorted(n for n in lengths if 0 <= n < len(data))


def test_truncated_model_is_invalid(ctx: Any, tmp_path: Path) -> None:
    data = compile_ekm("senet").read_bytes()
    for length in truncation_lengths(data):
        with pytest.raises(ek.ModelInvalidError):
            ctx.load_model(data[:length])
        cut = tmp_path / f"cut{length}.ekm"
        cut.write_bytes(data[:length])
        with pytest.raises(ek.ModelInvalidError):
            ctx.load_model(str(cut))  # the mmap path
    with pytest.raises(ek.ModelInvalidError) as exc:
        ctx.load_model(data + b"\0")  # one byte too many: file_size disagrees
    message_names(exc, "size")
    # After all that, the intact file still loads in the same context.
    net = ctx.load_model(data).network()
    x = random_input(input_shape_of("senet"))
    (y,) = net.create_request().run([x])
    (expected,) = ort_run(onnx_path("senet"), {INPUT_NAME: x})
    assert max_error(y, expected) <= 1e-4


def section_of(data: bytes, kind: int) -> tuple[int, int]:
    """(offset, size) of the section of `kind`."""
    for k, _record, offset, size in section_table(data):
        if k == kind:
            return offset, size
    raise AssertionError(f"no section of kind {kind}")


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


def test_op_sources_section_is_validated(ctx: Any) -> None:
    """Each field of the optional OP_SOURCES / SOURCE_NODES sections (.ekm 1.1) is checked, with a
    message naming the section."""
    data = compile_ekm("senet").read_bytes()
    assert struct.unpack_from("<H", data, 10)[0] == 1  # version_minor
    src, src_size = section_of(data, OP_SOURCES)
    nodes, nodes_size = section_of(data, SOURCE_NODES)
    (strings_size,) = [size for kind, _r, _o, size in section_table(data) if kind == 1]
    first_permuted = next(i for i in range(src_size // 24) if data[src + 24 * i + 12] == 1)
    rec = src + 24 * first_permuted
    cases = {
        "tensor string ref": patched(data, rec, "<I", strings_size + 5),
        "node range": patched(data, rec + 8, "<I", nodes_size // 4 + 1),
        "layout": patched(data, rec + 12, "<B", 2),
        "perm repeats an axis": patched(data, rec + 17, "<B", data[rec + 16]),
        "perm past the rank": patched(data, rec + 16 + 7, "<B", 1),
        "node string ref": patched(data, nodes, "<I", strings_size),
    }
    for what, bad in cases.items():
        with pytest.raises(ek.ModelInvalidError) as exc:
            ctx.load_model(bad)
        assert "OP_SOURCES" in str(exc.value) or "SOURCE_NODES" in str(exc.value), f"{what}: {exc.value}"
    # One of the pair without the other: the kind of one entry becomes unknown (skipped).
    (table_offset,) = struct.unpack_from("<Q", data, 24)
    index = [k for k, _r, _o, _s in section_table(data)].index(SOURCE_NODES)
    with pytest.raises(ek.ModelInvalidError) as exc:
        ctx.load_model(patched(data, table_offset + index * SECTION_ENTRY, "<I", 99))
    message_names(exc, "OP_SOURCES without SOURCE_NODES")


def test_files_without_op_sources_still_load(ctx: Any) -> None:
    """A file as a 1.0 compiler wrote it (no OP_SOURCES) loads and runs like the 1.1 file."""
    from edgekit.compiler import ekm

    data = compile_ekm("senet").read_bytes()
    old = ekm.write(ekm.read(data), source_map=False)
    assert struct.unpack_from("<H", old, 10)[0] == 0
    assert {k for k, *_ in section_table(old)} == set(range(1, 12))
    assert ekm.read(old).networks[0].stages[0].ops[0].source is None
    x = random_input(input_shape_of("senet"))
    (y_old,) = ctx.load_model(old).network().create_request().run([x])
    ctx.close()
    with ek.Context(device=0, kernels="portable") as fresh:
        (y_new,) = fresh.load_model(data).network().create_request().run([x])
    np.testing.assert_array_equal(y_old, y_new)


def test_missing_model_file(ctx: Any, tmp_path: Path) -> None:
    with pytest.raises(ek.EdgeKitError) as exc:
        ctx.load_model(str(tmp_path / "nope.ekm"))
    message_names(exc, "nope.ekm")


# ---- waiting ----


def test_wait_times_out_then_completes() -> None:
    """ResNet-18 at 224x224 on the portable kernels, one thread: long enough that wait(0) finds it
    running."""
    shape = (1, 3, 224, 224)
    path = compile_ekm("resnet18", stages=[{INPUT_NAME: shape}], network_name="resnet18_224")
    x = random_input(shape)
    with ek.Context(device=0, kernels="portable", threads=1) as context:
        request = context.load_model(str(path)).network().create_request()
        request.set_inputs([x])
        request.infer()
        assert request.wait(timeout=0) is False
        assert request.wait(timeout=0.001) is False
        assert request.wait() is True
        (y,) = request.get_outputs()
    (expected,) = ort_run(onnx_path("resnet18", shape), {INPUT_NAME: x})
    assert max_error(y, expected) <= 1e-4
