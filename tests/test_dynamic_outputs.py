"""Outputs whose size depends on the data (DYNAMIC, .ekm 1.3): a YOLO-style detector ending in
NonMaxSuppression, TopK with a constant K and with K given at run time, and the example plugin's
FilterRows, each compiled by EdgeKit and compared with onnxruntime (or numpy) through the reference
interpreter and the runtime; the compile errors of a dynamic output another node reads; and the
detector on the emulated board."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgekit as ek
import edgekit.app
from conftest import edgekit_run_on_board
from edgekit.compiler import CompileError, compile_model, ekm
from edgekit.compiler.reference import InterpreterError, run_reference
from models import INPUT_NAME, onnx_path, ort_run, random_input

Arrays = dict[str, np.ndarray[Any, Any]]

# TinyYolo (edgekit/bench_models.py) at 64x64: 3 anchors x (4x4 + 8x8) cells, 5 + 3 values per cell.
ANCHORS, CELLS, VALUES, CLASSES = 3, 80, 8, 3
BOXES = ANCHORS * CELLS
MAX_PER_CLASS = 20
YOLO_SHAPE = (1, 3, 64, 64)


def _const(name: str, value: Any, dtype: Any = np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def detector_onnx(path: Path) -> Path:
    """The test YOLO export with a decode appended (boxes[B,N,4] as center/size in pixels, scores[B,C,N]
    = objectness x class) and NonMaxSuppression, whose selected_indices is the first graph output. The
    score threshold is an input, so one model selects many boxes or none."""
    model = onnx.load(str(onnx_path("yolo")))
    graph = model.graph
    head = graph.output[0].name
    del graph.output[:]
    graph.initializer.extend(
        [
            _const("dec_shape", [-1, BOXES, VALUES]),
            _const("s0", [0]),
            _const("s4", [4]),
            _const("s5", [5]),
            _const("s8", [8]),
            _const("ax2", [2]),
            _const("pixels", [64.0], np.float32),
            _const("max_per_class", [MAX_PER_CLASS]),
            _const("iou", [0.45], np.float32),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Reshape", [head, "dec_shape"], ["dec"], name="decode_reshape"),
            helper.make_node("Slice", ["dec", "s0", "s4", "ax2"], ["cxcywh"], name="decode_boxes"),
            helper.make_node("Mul", ["cxcywh", "pixels"], ["boxes"], name="decode_pixels"),
            helper.make_node("Slice", ["dec", "s4", "s5", "ax2"], ["objectness"], name="decode_obj"),
            helper.make_node("Slice", ["dec", "s5", "s8", "ax2"], ["classes"], name="decode_cls"),
            helper.make_node("Mul", ["objectness", "classes"], ["confidence"], name="decode_conf"),
            helper.make_node("Transpose", ["confidence"], ["scores"], perm=[0, 2, 1], name="decode_scores"),
            helper.make_node(
                "NonMaxSuppression",
                ["boxes", "scores", "max_per_class", "iou", "score_threshold"],
                ["selected_indices"],
                center_point_box=1,
                name="nms",
            ),
        ]
    )
    graph.input.append(helper.make_tensor_value_info("score_threshold", TensorProto.FLOAT, [1]))
    graph.output.extend(
        [
            helper.make_tensor_value_info("selected_indices", TensorProto.INT64, ["selected", 3]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", BOXES, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", CLASSES, BOXES]),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def nms_only_onnx(path: Path) -> Path:
    """NonMaxSuppression alone, as in the detector: onnxruntime's NMS on EdgeKit's own boxes and scores."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "NonMaxSuppression",
                ["boxes", "scores", "max_per_class", "iou", "score_threshold"],
                ["selected_indices"],
                center_point_box=1,
            )
        ],
        "nms",
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("score_threshold", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("selected_indices", TensorProto.INT64, None)],
        [_const("max_per_class", [MAX_PER_CLASS]), _const("iou", [0.45], np.float32)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def run_runtime(data: bytes, feeds: Mapping[str, np.ndarray[Any, Any]], plugin: Path | None = None) -> Arrays:
    with ek.Context() as ctx:
        if plugin is not None:
            ctx.load_plugin(plugin)
        net = ctx.load_model(data).network()
        with net.create_request() as req:
            outs = req.run(dict(feeds))
        return dict(zip(net.output_names, outs))


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    folder = tmp_path_factory.mktemp("detector")
    path = detector_onnx(folder / "detector.onnx")
    stages = [{INPUT_NAME: YOLO_SHAPE}, {INPUT_NAME: (2, *YOLO_SHAPE[1:])}]
    return path, compile_model(str(path), stages=stages, name="detector").data


def test_detector_file_marks_selected_indices_dynamic(detector: tuple[Path, bytes]) -> None:
    model = ekm.read(detector[1])
    # DYNAMIC is 1.3; the detector's 3x3 stride-1 fuse conv (128->64 at 8x8) is marked Winograd too
    # (the CONV algorithm attribute, 1.4)
    algorithms = [op.attrs.get("algorithm") for st in model.network().stages for op in st.ops if op.type == 1]
    assert algorithms.count("winograd") == len(model.network().stages)
    assert model.version == (1, 4)
    net = model.network()
    out = {io.name: io for io in net.outputs}
    assert out["selected_indices"].dynamic and not out["boxes"].dynamic and not out["scores"].dynamic
    assert out["selected_indices"].dtype == ekm.INT64
    # the bound is B x C x min(N, max_output_boxes_per_class) rows of 3 int64, per stage
    bounds = [st.tensors[st.output_bindings[0]].shape for st in net.stages]
    assert bounds == [(CLASSES * MAX_PER_CLASS, 3), (2 * CLASSES * MAX_PER_CLASS, 3)]
    assert out["selected_indices"].max_bytes == 2 * CLASSES * MAX_PER_CLASS * 3 * 8
    for st in net.stages:
        t = st.tensors[st.output_bindings[0]]
        assert (
            t.dynamic
            and t.storage == ekm.OUTPUT
            and t.offset % 64 == 0
            and t.offset + t.nbytes <= st.arena_size
        )


@pytest.mark.parametrize(
    ("batch", "threshold", "seed"),
    [(1, 0.0, 1), (1, 0.05, 2), (1, 0.2, 3), (2, 0.1, 4), (1, 1.0, 5), (2, 1.0, 6)],
)
def test_detector_nms_matches_onnxruntime(
    detector: tuple[Path, bytes], tmp_path: Path, batch: int, threshold: float, seed: int
) -> None:
    path, data = detector
    feeds = {
        INPUT_NAME: random_input((batch, *YOLO_SHAPE[1:]), seed) * 2,
        "score_threshold": np.array([threshold], np.float32),
    }
    want = ort_run(path, feeds)[0]
    if threshold >= 1.0:
        assert want.shape == (0, 3)  # scores are sigmoid products: none is above 1
    else:
        assert len(want) > 0
    reference = run_reference(data, None, feeds)
    runtime = run_runtime(data, feeds)
    for got in (reference, runtime):
        assert got["selected_indices"].dtype == np.int64
        np.testing.assert_array_equal(got["selected_indices"], want)
    # the NMS kernel alone, exactly onnxruntime's on the same boxes and scores
    nms = ort_run(
        nms_only_onnx(tmp_path / "nms.onnx"),
        {"boxes": runtime["boxes"], "scores": runtime["scores"], "score_threshold": feeds["score_threshold"]},
    )[0]
    np.testing.assert_array_equal(runtime["selected_indices"], nms)


def topk_onnx(path: Path, k: int | None, axis: int, largest: int, shape: tuple[int, ...]) -> Path:
    """Relu -> TopK; K a constant (k) or the int64 network input 'k' (None)."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
    inits = []
    if k is None:
        inputs.append(helper.make_tensor_value_info("k", TensorProto.INT64, [1]))
    else:
        inits.append(_const("k", [k]))
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node(
                "TopK", ["r", "k"], ["values", "indices"], axis=axis, largest=largest, name="topk"
            ),
        ],
        "topk",
        inputs,
        [
            helper.make_tensor_value_info("values", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("indices", TensorProto.INT64, None),
        ],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def _ties(shape: tuple[int, ...], seed: int) -> np.ndarray[Any, Any]:
    """Values with ties (and zeros from the Relu): ties go to the lower index."""
    return (np.round(np.random.default_rng(seed).standard_normal(shape) * 2) / 2).astype(np.float32)


@pytest.mark.parametrize(("k", "axis", "largest"), [(4, 1, 1), (3, 0, 0), (10, -1, 1)])
def test_topk_constant_k_is_static_and_matches_onnxruntime(
    tmp_path: Path, k: int, axis: int, largest: int
) -> None:
    shape = (6, 10)
    path = topk_onnx(tmp_path / "topk.onnx", k, axis, largest, shape)
    data = compile_model(str(path)).data
    model = ekm.read(data)
    assert model.version == (1, 3)  # TOP_K is a 1.3 op
    assert not any(io.dynamic for io in model.network().outputs)
    for seed in range(3):
        feeds = {"x": _ties(shape, seed)}
        want = ort_run(path, feeds)
        for got in (run_reference(data, None, feeds), run_runtime(data, feeds)):
            np.testing.assert_array_equal(got["values"], want[0])
            np.testing.assert_array_equal(got["indices"], want[1])


def test_topk_run_time_k_is_dynamic_and_matches_onnxruntime(tmp_path: Path) -> None:
    shape = (5, 8)
    path = topk_onnx(tmp_path / "topk.onnx", None, 1, 1, shape)
    data = compile_model(str(path)).data
    with ek.Context() as ctx:
        net = ctx.load_model(data).network()
        assert [o.dynamic for o in net.outputs] == [True, True]
        assert net.inputs[1].dtype == np.int64
        with net.create_request() as req:
            for k in (0, 1, 5, 8):
                feeds = {"x": _ties(shape, k), "k": np.array([k], np.int64)}
                want = ort_run(path, feeds)
                values, indices = req.run(feeds)
                assert values.shape == (5, k) and indices.shape == (5, k)
                np.testing.assert_array_equal(values, want[0])
                np.testing.assert_array_equal(indices, want[1])
                ref = run_reference(data, None, feeds)
                np.testing.assert_array_equal(ref["values"], want[0])
                np.testing.assert_array_equal(ref["indices"], want[1])
            feeds = {"x": _ties(shape, 0), "k": np.array([9], np.int64)}
            with pytest.raises(ek.InvalidArgumentError, match=r"K is 9, outside 0 \.\. 8"):
                req.run(feeds)
            with pytest.raises(ek.InvalidArgumentError, match=r"K is -1"):
                req.run({"x": feeds["x"], "k": np.array([-1], np.int64)})
            # the request goes on after a failed launch
            values, _ = req.run({"x": feeds["x"], "k": np.array([2], np.int64)})
            assert values.shape == (5, 2)
    with pytest.raises(InterpreterError, match=r"K is 9"):
        run_reference(data, None, {"x": _ties(shape, 0), "k": np.array([9], np.int64)})


def test_nms_output_read_by_another_node_is_a_compile_error(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("NonMaxSuppression", ["boxes", "scores", "m"], ["sel"], name="nms"),
            helper.make_node("Cast", ["sel"], ["self"], to=TensorProto.FLOAT, name="to_float"),
        ],
        "g",
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 6, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2, 6]),
        ],
        [helper.make_tensor_value_info("self", TensorProto.FLOAT, None)],
        [_const("m", [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(CompileError) as info:
        compile_model(model)
    message = str(info.value)
    for part in ("NonMaxSuppression (nms)", "'sel'", "Cast (to_float)", "only as network outputs"):
        assert part in message, message


def test_topk_dynamic_output_read_by_another_node_is_a_compile_error(tmp_path: Path) -> None:
    path = topk_onnx(tmp_path / "topk.onnx", None, 1, 1, (2, 5))
    model = onnx.load(str(path))
    model.graph.node.append(helper.make_node("Relu", ["values"], ["after"], name="after_topk"))
    model.graph.output.append(helper.make_tensor_value_info("after", TensorProto.FLOAT, None))
    with pytest.raises(CompileError, match=r"TopK \(topk\).*'values'.*Relu \(after_topk\).*network outputs"):
        compile_model(model)
    # a constant K: the outputs are static, and may feed other nodes
    static = onnx.load(str(topk_onnx(tmp_path / "static.onnx", 2, 1, 1, (2, 5))))
    static.graph.node.append(helper.make_node("Relu", ["values"], ["after"], name="after_topk"))
    static.graph.output.append(helper.make_tensor_value_info("after", TensorProto.FLOAT, None))
    compile_model(static)


def test_files_without_dynamic_outputs_stay_version_1_1(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    data = compile_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])).data
    assert ekm.read(data).version == (1, 1)


def test_info_marks_dynamic_outputs(detector: tuple[Path, bytes], tmp_path: Path) -> None:
    model = tmp_path / "detector.ekm"
    model.write_bytes(detector[1])
    done = subprocess.run(
        [sys.executable, "-m", "edgekit", "info", str(model)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if "selected_indices" in x and "int64" in x)
    assert f"<={CLASSES * MAX_PER_CLASS}x3 | <={2 * CLASSES * MAX_PER_CLASS}x3 (dynamic)" in line, line
    assert "(dynamic)" not in next(x for x in done.stdout.splitlines() if x.strip().startswith("boxes"))


# ---- the example plugin's FilterRows: a plugin op with a dynamic output ----


def filter_rows_model(threshold: float, column: int, consumer: bool = False) -> onnx.ModelProto:
    nodes = [
        helper.make_node(
            "FilterRows",
            ["x"],
            ["rows"],
            domain="edgekit.example",
            threshold=threshold,
            column=column,
            name="filter",
        )
    ]
    outputs = [helper.make_tensor_value_info("rows", TensorProto.FLOAT, None)]
    if consumer:
        nodes.append(helper.make_node("Relu", ["rows"], ["after"], name="after_filter"))
        outputs = [helper.make_tensor_value_info("after", TensorProto.FLOAT, None)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 6])], outputs
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("edgekit.example", 1)],
        ir_version=8,
    )


@pytest.fixture(scope="module")
def example_plugin() -> Path:
    from edgekit.plugins import example_plugin_path

    return example_plugin_path()


def test_plugin_filter_rows_matches_numpy(example_plugin: Path) -> None:
    threshold, column = 0.5, 2
    data = compile_model(filter_rows_model(threshold, column), plugins=[example_plugin]).data
    info = ekm.read(data).network().outputs[0]
    assert info.dynamic and info.max_bytes == 32 * 6 * 4
    rng = np.random.default_rng(7)
    cases = [rng.standard_normal((32, 6)).astype(np.float32) for _ in range(3)]
    cases.append(np.full((32, 6), -1.0, np.float32))  # no row passes
    cases.append(np.full((32, 6), 9.0, np.float32))  # every row passes: the bound
    nan = cases[0].copy()
    nan[::3, column] = np.nan  # NaN never passes
    cases.append(nan)
    for x in cases:
        want = x[x[:, column] > threshold]
        ref = run_reference(data, None, {"x": x}, plugins=[example_plugin])["rows"]
        got = run_runtime(data, {"x": x}, plugin=example_plugin)["rows"]
        assert ref.shape == got.shape == want.shape
        np.testing.assert_array_equal(ref, want)
        np.testing.assert_array_equal(got, want)


def test_plugin_dynamic_output_read_by_another_node_is_a_compile_error(example_plugin: Path) -> None:
    with pytest.raises(CompileError, match=r"FilterRows \(filter\).*'rows'.*Relu \(after_filter\)"):
        compile_model(filter_rows_model(0.5, 2, consumer=True), plugins=[example_plugin])


# ---- on the emulated board ----

ON_BOARD = "/opt/edgekit-dynamic"


def test_detector_on_the_board_matches_onnxruntime(detector: tuple[Path, bytes], flashed_emu: Any) -> None:
    """The detector through the flashed aarch64 runtime (`edgekit run` in the board's Python, XNNPACK
    and portable kernels), selected_indices compared with onnxruntime's on the host."""
    path, data = detector
    folder: Path = flashed_emu.rootfs / ON_BOARD.lstrip("/")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "detector.ekm").write_bytes(data)
    cases = {"many": 0.05, "none": 1.0}
    for tag, threshold in cases.items():
        np.save(folder / f"x-{tag}.npy", random_input(YOLO_SHAPE, 11) * 2)
        np.save(folder / f"t-{tag}.npy", np.array([threshold], np.float32))
    for kernels in ("xnnpack", "portable"):
        for tag, threshold in cases.items():
            out_dir = f"{ON_BOARD}/out-{kernels}-{tag}"
            out = edgekit_run_on_board(
                flashed_emu.rootfs,
                f"{ON_BOARD}/detector.ekm",
                "--input",
                f"{INPUT_NAME}={ON_BOARD}/x-{tag}.npy",
                "--input",
                f"score_threshold={ON_BOARD}/t-{tag}.npy",
                "--output-dir",
                out_dir,
                "--kernels",
                kernels,
            )
            assert f"{kernels} kernels" in out
            feeds = {
                INPUT_NAME: np.load(folder / f"x-{tag}.npy"),
                "score_threshold": np.array([threshold], np.float32),
            }
            want = ort_run(path, feeds)[0]
            got = np.load(flashed_emu.rootfs / out_dir.lstrip("/") / "selected_indices.npy")
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, want)
            assert (len(want) == 0) == (tag == "none")


def test_networks_with_dynamic_outputs_are_not_inlined(example_plugin: Path) -> None:
    """An EdgeKitNetwork node of a compiled network with a dynamic output is refused (its size is known
    only at run time): the plugin's float32 one here; NMS/TopK networks hold int64 tensors, refused too."""
    from edgekit.compiler.subnet import make_edgekit_node

    data = compile_model(filter_rows_model(0.5, 2), plugins=[example_plugin], name="filter").data
    graph = helper.make_graph(
        [make_edgekit_node(data, ["x"], ["rows"], name="inner")],
        "host",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 6])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.edgekit", 1)], ir_version=8
    )
    with pytest.raises(CompileError, match=r"'rows', whose size depends on the data.*cannot be inlined"):
        compile_model(model, plugins=[example_plugin])


def test_output_caps_in_python_and_the_edge_app(detector: tuple[Path, bytes], tmp_path: Path) -> None:
    """A dynamic output's memory below its bound: enough for what a launch produces works (0 rows in 0
    bytes); too little fails naming the bytes needed, in Python (create_request(output_caps=)) and in the
    edge app (--output_caps), which writes what the last launch produced with --output_dir."""
    path, data = detector
    x = random_input(YOLO_SHAPE, 2) * 2
    many = {INPUT_NAME: x, "score_threshold": np.array([0.05], np.float32)}
    none = {INPUT_NAME: x, "score_threshold": np.array([1.0], np.float32)}
    rows = len(ort_run(path, many)[0])
    assert rows > 1
    with ek.Context(kernels="portable") as ctx:
        net = ctx.load_model(data).network()
        with net.create_request(output_caps={"selected_indices": 24}) as req:  # one row
            assert req.run(none)[net.output_names.index("selected_indices")].shape == (0, 3)
            with pytest.raises(ek.OutOfRangeError, match=rf"give it at least {rows * 24} bytes"):
                req.run(many)
        with pytest.raises(ek.InvalidArgumentError, match="'boxes' is not dynamic"):
            net.create_request(output_caps={"boxes": 8})
        with pytest.raises(ek.InvalidArgumentError, match="has no output 'nope'"):
            net.create_request(output_caps={"nope": 8})

    app = edgekit.app.binary()
    assert app is not None
    model = tmp_path / "detector.ekm"
    model.write_bytes(data)
    x.tofile(tmp_path / "x.bin")
    many["score_threshold"].tofile(tmp_path / "thr.bin")
    with ek.Context(kernels="portable") as ctx:
        outputs = ctx.load_model(data).network().output_names
    caps = {"selected_indices": 24}
    base = [
        str(app), "--model_path", str(model),
        "--data_path", str(tmp_path / "x.bin"), str(tmp_path / "thr.bin"),
        "--iterations", "2", "--warmup", "0", "--kernels", "portable",
    ]  # fmt: skip
    small = [str(caps.get(name, 1 << 20)) for name in outputs]
    done = subprocess.run([*base, "--output_caps", *small], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"give it at least {rows * 24} bytes" in done.stderr, done.stderr
    out = tmp_path / "out"
    done = subprocess.run([*base, "--output_dir", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    got = np.load(out / "selected_indices.npy")
    np.testing.assert_array_equal(got, ort_run(path, many)[0])


def test_dump_writes_what_a_dynamic_output_produced(detector: tuple[Path, bytes], tmp_path: Path) -> None:
    """A dump's file of the NMS op holds the rows it produced (as onnxruntime's), not its bound."""
    import json

    path, data = detector
    x = random_input(YOLO_SHAPE, 2) * 2
    for threshold in (0.05, 1.0):
        feeds = {INPUT_NAME: x, "score_threshold": np.array([threshold], np.float32)}
        with ek.Context(kernels="portable") as ctx:
            req = ctx.load_model(data).network().create_request()
            req.set_inputs(feeds)
            req.infer(dump=tmp_path / f"dump{threshold}")
            req.wait()
        manifest = json.loads((tmp_path / f"dump{threshold}" / "manifest.json").read_text())
        nms = [op for op in manifest["ops"] if op["op"] == "NON_MAX_SUPPRESSION"]
        assert len(nms) == 1
        got = np.load(tmp_path / f"dump{threshold}" / nms[0]["file"])
        np.testing.assert_array_equal(got, ort_run(path, feeds)[0])
        assert nms[0]["shape"] == list(got.shape)
