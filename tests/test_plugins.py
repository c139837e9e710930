"""Plugin op libraries (docs/plugins.md) on this host: the SDK's example plugin compiled into a model
between standard ops (with --plugin) and run by the runtime, by the numpy reference interpreter and by
the edge app, each equal to onnxruntime on the same graph with the custom nodes spelled in standard
ops; the compiler's ctypes mirror of edgekit/plugin.h against the header; and every bad plugin or
model a clear error: no entry symbol, another ABI version, another machine's library (an aarch64
build), an op registered twice, a model whose plugin is not loaded, an infer that rejects the node,
a run that fails, plugins on a remote runtime and with --rpc_server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgekit as ek
from edgekit.app import NAME, SERVER, binary
from edgekit.compiler import UnsupportedOpsError, compile_model, ekm
from edgekit.compiler import cli as compiler_cli
from edgekit.compiler import plugins as cplugins
from edgekit.compiler.graph import CompileError, OpType
from edgekit.compiler.reference import InterpreterError, run_reference
from edgekit.plugins import example_plugin_path

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "sdk/runtime/include/edgekit/plugin.h"
EXAMPLE_SRC = ROOT / "sdk/plugins/example/example_plugin.c"
TEST_SRC = ROOT / "tests/plugins/test_plugin.c"
INCLUDE = ROOT / "sdk/runtime/include"
RNG = np.random.default_rng(7)
W = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.5
SCALE = np.array([0.5, -1.0, 2.0, 1.5], np.float32)
BIAS = np.array([0.1, 0.2, -0.3, 0.0], np.float32)
BETA = 1.5


def _model(custom: bool) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv -> Swish(beta) -> ChannelAffine(scale, bias; axis 1) -> MaxPool -> y.
    ``custom``: Swish and ChannelAffine are the example plugin's nodes; else the same in standard ops."""
    inits = [numpy_helper.from_array(W, "w"), numpy_helper.from_array(SCALE, "scale")]
    inits.append(numpy_helper.from_array(BIAS, "bias"))
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1], name="conv")]
    if custom:
        nodes += [
            helper.make_node("Swish", ["h"], ["s"], domain="edgekit.example", beta=BETA, name="swish"),
            helper.make_node(
                "ChannelAffine", ["s", "scale", "bias"], ["a"], domain="edgekit.example", name="affine"
            ),
        ]
    else:
        inits += [
            numpy_helper.from_array(np.array(BETA, np.float32), "beta"),
            numpy_helper.from_array(SCALE.reshape(1, 4, 1, 1), "scale4"),
            numpy_helper.from_array(BIAS.reshape(1, 4, 1, 1), "bias4"),
        ]
        nodes += [
            helper.make_node("Mul", ["h", "beta"], ["hb"]),
            helper.make_node("Sigmoid", ["hb"], ["sg"]),
            helper.make_node("Mul", ["h", "sg"], ["s"]),
            helper.make_node("Mul", ["s", "scale4"], ["sc"]),
            helper.make_node("Add", ["sc", "bias4"], ["a"]),
        ]
    nodes.append(helper.make_node("MaxPool", ["a"], ["y"], kernel_shape=[2, 2], strides=[2, 2], name="pool"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("edgekit.example", 1)] if custom else [])
    model = helper.make_model(helper.make_graph(nodes, "plugged", [x], [y], inits), opset_imports=opsets)
    model.ir_version = 8  # what every onnxruntime reads
    return model


def _single_node_model(domain: str, op_type: str, shape: list[int], **attrs: Any) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node(op_type, ["x"], ["y"], domain=domain, name="custom_node", **attrs)
    graph = helper.make_graph([node], "one", [x], [y])
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    )


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort  # type: ignore[import-untyped]

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def _build(tmp: Path, name: str, source: Path, *defines: str, cc: str = "gcc") -> Path:
    out = tmp / f"lib{name}.so"
    cmd = [
        cc,
        "-shared",
        "-fPIC",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-fvisibility=hidden",
        f"-I{INCLUDE}",
    ]
    subprocess.run([*cmd, *[f"-D{d}" for d in defines], str(source), "-o", str(out), "-lm"], check=True)
    return out


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The example plugin (installed) and test_plugin.c's variants, built for this host."""
    tmp = tmp_path_factory.mktemp("plugins")
    built = {
        "example": example_plugin_path(),
        "test": _build(tmp, "ekt_test", TEST_SRC),
        "no_entry": _build(tmp, "ekt_no_entry", TEST_SRC, "NO_ENTRY"),
        "abi99": _build(tmp, "ekt_abi99", TEST_SRC, "ABI_VERSION=99"),
        "dup_example": _build(tmp, "ekt_dup_example", TEST_SRC, "DUP_EXAMPLE"),
    }
    return built


@pytest.fixture(scope="module")
def aarch64_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin built for aarch64 (another machine than this host)."""
    cc = shutil.which("aarch64-linux-gnu-gcc")
    if cc is None:
        pytest.skip("no aarch64-linux-gnu-gcc (apt-get install gcc-aarch64-linux-gnu)")
    return _build(tmp_path_factory.mktemp("arm"), "edgekit_example_plugin", EXAMPLE_SRC, cc=cc)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "plugged.ekm"
    compile_model(
        _model(True), out, stages=[{"x": (1, 3, 8, 8)}, {"x": (2, 3, 8, 8)}], plugins=[example_plugin_path()]
    )
    return out


def test_the_example_plugin_is_installed_with_the_package() -> None:
    path = example_plugin_path()
    assert path.parent == Path(ek.__file__).resolve().parent / "plugins"
    assert path.read_bytes()[:4] == b"\x7fELF"


def test_compiled_plugin_ops_keep_the_onnx_layout_and_their_attributes(compiled: Path) -> None:
    model = ekm.read(compiled.read_bytes())
    assert model.version == (1, 2)
    stage = model.network().stages[0]
    plugin_ops = [op for op in stage.ops if op.type == OpType.PLUGIN]
    assert [(op.attrs["ek.domain"], op.attrs["ek.op_type"]) for op in plugin_ops] == [
        ("edgekit.example", "Swish"),
        ("edgekit.example", "ChannelAffine"),
    ]
    assert plugin_ops[0].attrs["beta"] == pytest.approx(BETA)
    # The plugins see NCHW tensors even though Conv and MaxPool around them run in NHWC.
    for op in plugin_ops:
        assert stage.tensors[op.inputs[0] or 0].shape == (1, 4, 8, 8)
        assert stage.tensors[op.outputs[0]].shape == (1, 4, 8, 8)
    assert any(op.type == OpType.TRANSPOSE for op in stage.ops)


@pytest.mark.parametrize("kernels", ["portable", "xnnpack"])
@pytest.mark.parametrize("batch", [1, 2])
def test_model_with_plugin_ops_matches_onnxruntime(compiled: Path, kernels: str, batch: int) -> None:
    x = RNG.standard_normal((batch, 3, 8, 8)).astype(np.float32)
    expected = _ort(_model(False), x)
    with ek.Context(device=0, kernels=kernels, threads=2) as ctx:
        ctx.load_plugin(example_plugin_path())
        net = ctx.load_model(compiled).network()
        (y,) = net.create_request().run({"x": x})
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    reference = run_reference(compiled.read_bytes(), None, {"x": x}, plugins=[example_plugin_path()])
    np.testing.assert_allclose(reference["y"], expected, rtol=1e-5, atol=1e-5)


def test_profiles_and_dumps_name_plugin_ops(compiled: Path, tmp_path: Path) -> None:
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    with ek.Context(device=0, kernels="portable") as ctx:
        ctx.load_plugin(example_plugin_path())
        net = ctx.load_model(compiled).network()
        profile = ek.Profile()
        net.create_request().run({"x": x}, profile=profile, dump=tmp_path / "dump")
        layers = [r for r in profile.records if r.kind == "LayerExecute"]
    plugin_rows = {
        r.details["op_type"]: r.details["provider"] for r in layers if "::" in r.details["op_type"]
    }
    assert plugin_rows == {
        "edgekit.example::Swish": "plugin:libedgekit_example_plugin.so",
        "edgekit.example::ChannelAffine": "plugin:libedgekit_example_plugin.so",
    }
    manifest = (tmp_path / "dump" / "manifest.json").read_text()
    assert '"op": "edgekit.example::Swish"' in manifest


def test_compiler_cli_takes_plugins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx.save(_model(True), tmp_path / "m.onnx")
    argv = [str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.ekm"), "--input-shape", "x=1x3x8x8"]
    assert compiler_cli.main([*argv, "--plugin", str(example_plugin_path())]) == 0
    assert "edgekit.example::Swish" in capsys.readouterr().out
    # without the plugin: one clear error naming the domain, the ops and the flag
    assert compiler_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "domain 'edgekit.example'" in err and "edgekit.example::Swish" in err
    assert "edgekit.example::ChannelAffine" in err and "--plugin lib.so" in err


def test_unknown_custom_domain_without_plugin_is_a_clear_compile_error() -> None:
    with pytest.raises(UnsupportedOpsError) as info:
        compile_model(_single_node_model("com.acme", "Frobnicate", [1, 4]), None)
    message = str(info.value)
    assert "com.acme::Frobnicate" in message and "--plugin" in message and "plugins given: none" in message


def test_compiler_gets_output_shapes_and_refusals_from_the_plugin(libs: dict[str, Path]) -> None:
    with pytest.raises(
        CompileError, match=r"rejects test\.plugins::Picky \(custom_node\): X must have rank 4, not 2"
    ):
        compile_model(_single_node_model("test.plugins", "Picky", [2, 4]), None, plugins=[libs["test"]])
    report = compile_model(_single_node_model("test.plugins", "Double", [2, 4]), None, plugins=[libs["test"]])
    assert report.networks[0].stages[0].output_shapes == {"y": (4, 4)}


def test_the_ctypes_mirror_matches_plugin_h(tmp_path: Path) -> None:
    """The compiler's ctypes structures have the header's field order, sizes and offsets."""
    header = HEADER.read_text()
    assert f"#define EK_PLUGIN_ABI_VERSION {cplugins.ABI_VERSION}" in header
    structs = {
        "ek_plugin_tensor": cplugins.Tensor,
        "ek_plugin_op": cplugins.OpDesc,
        "ek_plugin_api": cplugins.Api,
    }
    lines = []
    for c_name, mirror in structs.items():
        body = re.search(rf"struct {c_name} {{(.*?)\n}}", header, re.S)
        assert body is not None, c_name
        fields = [name for name, _ in mirror._fields_]  # type: ignore[misc]
        declared = re.findall(
            r"(\w+)(?:\[\w+\])?;|\(\*(\w+)\)\(", re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)
        )
        names = [a or b for a, b in declared]
        # "int32_t min_inputs, max_inputs;" declares two fields
        for pair in re.findall(r"int32_t (\w+), (\w+);", body.group(1)):
            names.insert(names.index(pair[1]), pair[0])
        assert names == fields, c_name
        lines.append(f'printf("{c_name} %zu\\n", sizeof(struct {c_name}));')
        for name in fields:
            lines.append(f'printf("{c_name}.{name} %zu\\n", offsetof(struct {c_name}, {name}));')
    program = tmp_path / "layout.c"
    program.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <edgekit/plugin.h>\nint main(void) {\n"
        + "\n".join(lines)
        + "\nreturn 0;\n}\n"
    )
    subprocess.run(["gcc", f"-I{INCLUDE}", str(program), "-o", str(tmp_path / "layout")], check=True)
    out = subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True, check=True).stdout
    got = dict(line.rsplit(" ", 1) for line in out.splitlines())
    import ctypes

    for c_name, mirror in structs.items():
        assert int(got[c_name]) == ctypes.sizeof(mirror), c_name
        for name, _ in mirror._fields_:  # type: ignore[misc]
            assert int(got[f"{c_name}.{name}"]) == getattr(mirror, name).offset, f"{c_name}.{name}"


def test_bad_plugins_are_clear_errors(libs: dict[str, Path], tmp_path: Path) -> None:
    with ek.Context(device=0) as ctx:
        with pytest.raises(ek.UnsupportedError, match="exports no 'ek_plugin_register' symbol"):
            ctx.load_plugin(libs["no_entry"])
        with pytest.raises(
            ek.VersionMismatchError, match=r"plugin ABI version 99; this EdgeKit .* loads version 1"
        ):
            ctx.load_plugin(libs["abi99"])
        with pytest.raises(ek.SystemCallError, match="No such file"):
            ctx.load_plugin(tmp_path / "missing.so")
        (tmp_path / "text.so").write_text("not a library")
        with pytest.raises(ek.UnsupportedError, match="not an ELF shared library"):
            ctx.load_plugin(tmp_path / "text.so")
        with pytest.raises(ek.InvalidTypeError):
            ctx.load_plugin(42)  # type: ignore[arg-type]
        ctx.load_plugin(libs["example"])
        with pytest.raises(ek.BusyError) as info:
            ctx.load_plugin(libs["dup_example"])
        message = str(info.value)
        assert "edgekit.example::Swish" in message
        assert str(libs["dup_example"].resolve()) in message and str(libs["example"]) in message
    # the compiler refuses the same way
    for key, pattern in [("no_entry", "exports no 'ek_plugin_register'"), ("abi99", "ABI version 99")]:
        with pytest.raises(cplugins.PluginError, match=pattern):
            cplugins.PluginSet([libs[key]])
    with pytest.raises(cplugins.PluginError, match=r"registers op 'edgekit.example::Swish', which .*"):
        cplugins.PluginSet([libs["example"], libs["dup_example"]])


def test_another_machines_plugin_is_refused_before_dlopen(aarch64_plugin: Path) -> None:
    with ek.Context(device=0) as ctx, pytest.raises(ek.UnsupportedError) as info:
        ctx.load_plugin(aarch64_plugin)
    assert "is built for aarch64" in str(info.value) and "not for this machine (x86_64)" in str(info.value)
    with pytest.raises(cplugins.PluginError, match="built for aarch64, not for this machine"):
        cplugins.PluginSet([aarch64_plugin])


def test_model_needing_an_unloaded_plugin_names_it(compiled: Path) -> None:
    with ek.Context(device=0) as ctx, pytest.raises(ek.UnsupportedError) as info:
        ctx.load_model(compiled)
    message = str(info.value)
    assert "edgekit.example::Swish" in message and "ctx.load_plugin(path)" in message
    with pytest.raises(
        InterpreterError, match=r"plugin op 'edgekit.example::Swish': give the plugin library"
    ):
        run_reference(compiled.read_bytes(), None, {"x": np.zeros((1, 3, 8, 8), np.float32)})


def test_plugin_run_failure_fails_the_launch_with_its_message(libs: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "negate.ekm"
    compile_model(_single_node_model("test.plugins", "Negate", [2, 4]), path, plugins=[libs["test"]])
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with ek.Context(device=0) as ctx:
        ctx.load_plugin(libs["test"])
        req = ctx.load_model(path).network().create_request()
        np.testing.assert_array_equal(req.run({"x": x})[0], -x)
        x[1, 1] = 5000
        with pytest.raises(ek.InvalidArgumentError) as info:
            req.run({"x": x})
        message = str(info.value)
        assert "op 'custom_node' (test.plugins::Negate)" in message
        assert "input element 5 is 5000, above 1000" in message and "libekt_test.so" in message
        x[1, 1] = 1
        np.testing.assert_array_equal(req.run({"x": x})[0], -x)  # the context goes on
    x[0, 2] = 7000
    with pytest.raises(InterpreterError, match="input element 2 is 7000, above 1000"):
        run_reference(path.read_bytes(), None, {"x": x}, plugins=[libs["test"]])


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    path = binary(SERVER)
    assert path is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")}
    proc = subprocess.Popen(
        [str(path), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("remote_server listening on 127.0.0.1:"), line
    yield "tcp://" + line.rsplit(" ", 1)[1].strip()
    proc.terminate()
    assert proc.wait(timeout=10) == 0


def test_a_remote_runtime_refuses_plugins(server: str) -> None:
    with ek.Context(device=server) as ctx, pytest.raises(ek.UnsupportedError) as info:
        ctx.load_plugin(example_plugin_path())
    assert "never loads client code" in str(info.value)


def _app(*args: Any, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    path = binary(NAME)
    assert path is not None
    return subprocess.run([str(path), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_edge_app_plugin_libs(compiled: Path, libs: dict[str, Path], tmp_path: Path) -> None:
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    x.tofile(tmp_path / "x.bin")
    common = ["--model_path", compiled, "--data_path", tmp_path / "x.bin", "--iterations", 2, "--warmup", 0]
    done = _app(
        *common, "--plugin_libs", f"{libs['test']},{example_plugin_path()}", "--output_dir", tmp_path / "out"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    np.testing.assert_allclose(
        np.load(tmp_path / "out" / "y.npy"), _ort(_model(False), x), rtol=1e-5, atol=1e-5
    )
    # no plugin: exit 2 naming the op and the flag
    done = _app(*common)
    assert done.returncode == 2 and "edgekit.example::Swish" in done.stderr and "--plugin_libs" in done.stderr
    # a bad library, and plugins with --rpc_server: exit 2 before anything runs
    done = _app(*common, "--plugin_libs", libs["abi99"])
    assert done.returncode == 2 and "ABI version 99" in done.stderr
    done = _app(*common, "--plugin_libs", example_plugin_path(), "--rpc_server", "127.0.0.1:9")
    assert done.returncode == 2 and "never loads client code" in done.stderr
    assert "--plugin_libs A.so,B.so" in _app("--help").stdout


def test_edgekit_run_takes_plugins(compiled: Path, tmp_path: Path) -> None:
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", _ort(_model(False), x))
    argv = [sys.executable, "-m", "edgekit", "run", str(compiled), "--input", str(tmp_path / "x.npy")]
    argv += ["--expect", str(tmp_path / "expected.npy"), "--plugin", str(example_plugin_path())]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout


def test_the_plugin_guide_runs_as_written(tmp_path: Path) -> None:
    """docs/plugins.md: the host build, the Python example and the command-line block."""
    text = (ROOT / "docs/plugins.md").read_text()
    sh_blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    (python_block,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    build = tmp_path / "repo"  # the host build block, run in a copy so the repository's build/ is left alone
    shutil.copytree(ROOT / "sdk", build / "sdk", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run(["bash", "-ec", sh_blocks[0]], cwd=build, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([sys.executable, "-c", python_block], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "max error" in done.stdout
    done = subprocess.run(
        ["bash", "-ec", sh_blocks[1]], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "edgekit.example::Swish" in done.stdout  # the compiler's log of the plugin
    assert "plugged" in done.stdout
    assert "invoke run --device emu" in sh_blocks[2]  # the board block: tests/test_board_plugins.py runs it
