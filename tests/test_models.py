"""End to end: real (small) PyTorch models -> ONNX -> edgekit.compiler -> .ekm -> the runtime through the
Python API, with both kernel paths, against onnxruntime on the same inputs.

The tolerance is max |a - b| / max(1, max |ref|) <= 1e-4: absolute for outputs of magnitude <= 1
(probabilities, sigmoid boxes), relative to the largest output otherwise. Each test prints the error it
achieved (pytest -s, or -rA, shows it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

import edgekit as ek
from models import (
    INPUT_NAME,
    MODEL_NAMES,
    OUTPUT_NAME,
    compile_ekm,
    input_shape_of,
    max_error,
    onnx_path,
    ort_run,
    random_input,
)

TOLERANCE = 1e-4
KERNELS = ("portable", "xnnpack")


@contextmanager
def open_context(kernels: str, threads: int | None = None) -> Iterator[Any]:
    """An ek.Context on device 0 with `kernels`; skips the test when XNNPACK was asked for and its
    provider is not available in this build."""
    try:
        ctx = ek.Context(device=0, kernels=kernels, threads=threads)
    except ek.UnsupportedError as exc:
        pytest.skip(f"kernels={kernels}: the XNNPACK kernel provider is not available here ({exc})")
    with ctx:
        assert ctx.kernels == kernels, f"asked for {kernels} kernels, the context uses {ctx.kernels}"
        yield ctx


def check_close(label: str, actual: np.ndarray[Any, Any], expected: np.ndarray[Any, Any]) -> float:
    assert actual.dtype == np.float32, f"{label}: output dtype {actual.dtype}"
    assert actual.shape == expected.shape, (
        f"{label}: output shape {actual.shape}, onnxruntime's {expected.shape}"
    )
    assert np.all(np.isfinite(actual)), f"{label}: non-finite outputs"
    error = max_error(actual, expected)
    print(f"{label}: max error {error:.2e} (max |ref| {float(np.max(np.abs(expected))):.3g})")
    assert error <= TOLERANCE, f"{label}: max error {error:.2e} > {TOLERANCE:.0e}"
    return error


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_matches_onnxruntime(name: str, kernels: str) -> None:
    shape = input_shape_of(name)
    path = compile_ekm(name)
    x = random_input(shape)
    (expected,) = ort_run(onnx_path(name), {INPUT_NAME: x})
    with open_context(kernels) as ctx:
        model = ctx.load_model(str(path))
        assert model.network_names == [name]
        net = model.network()
        assert [i.name for i in net.inputs] == [INPUT_NAME]
        assert [o.name for o in net.outputs] == [OUTPUT_NAME]
        assert tuple(net.inputs[0].shape) == shape
        assert tuple(net.outputs[0].shape) == expected.shape
        request = net.create_request()
        (actual,) = request.run([x])
        check_close(f"{name} [{kernels}]", actual, expected)
        # A second run of the same request on other data: nothing of the first run leaks into it.
        x2 = random_input(shape, seed=7)
        (expected2,) = ort_run(onnx_path(name), {INPUT_NAME: x2})
        (actual2,) = request.run({INPUT_NAME: x2})
        check_close(f"{name} [{kernels}] second run", actual2, expected2)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("name", ["yolo", "resnet18"])
def test_two_stages(name: str, kernels: str) -> None:
    """One network compiled for batch 1 and batch 2 (yolo's reshapes are folded per stage)."""
    one = input_shape_of(name)
    two = (2, *one[1:])
    path = compile_ekm(name, stages=[{INPUT_NAME: one}, {INPUT_NAME: two}], network_name=f"{name}_b12")
    with open_context(kernels) as ctx:
        net = ctx.load_model(path.read_bytes()).network(f"{name}_b12")
        assert [tuple(s) for s in net.inputs[0].shapes] == [one, two]
        for stage, shape in enumerate((one, two)):
            x = random_input(shape, seed=stage)
            (expected,) = ort_run(onnx_path(name), {INPUT_NAME: x})
            (actual,) = net.create_request(stage=stage).run([x])
            check_close(f"{name} stage {stage} {shape} [{kernels}]", actual, expected)
        # A request made for stage 0 switches to stage 1 when given batch-2 inputs.
        x = random_input(two, seed=11)
        (expected,) = ort_run(onnx_path(name), {INPUT_NAME: x})
        (actual,) = net.create_request().run([x])
        check_close(f"{name} stage-0 request given batch 2 [{kernels}]", actual, expected)


@pytest.mark.parametrize("kernels", KERNELS)
def test_two_networks_in_one_file(kernels: str, tmp_path: Any) -> None:
    from edgekit.compiler import NetworkSpec, compile_networks

    specs = [
        NetworkSpec(str(onnx_path("mlp")), name="classifier", stages=[{INPUT_NAME: input_shape_of("mlp")}]),
        NetworkSpec(str(onnx_path("senet")), name="se", stages=[{INPUT_NAME: input_shape_of("senet")}]),
    ]
    out = tmp_path / "two.ekm"
    compile_networks(specs, str(out))
    with open_context(kernels) as ctx:
        model = ctx.load_model(str(out))
        assert sorted(model.network_names) == ["classifier", "se"]
        with pytest.raises(ek.EdgeKitError):
            model.network()  # two networks: the name is required
        for net_name, model_name in (("se", "senet"), ("classifier", "mlp")):
            x = random_input(input_shape_of(model_name))
            (expected,) = ort_run(onnx_path(model_name), {INPUT_NAME: x})
            (actual,) = model.network(net_name).create_request().run([x])
            check_close(f"{net_name} of two [{kernels}]", actual, expected)


def test_two_torch_exports_with_default_names_load_into_one_context(tmp_path: Any) -> None:
    """torch names every exported graph 'main_graph'; compiled without --name, each network is named
    after its .ekm file, so both load into one context and run."""
    import subprocess
    import sys

    import onnx

    sources = {"a": onnx_path("mlp"), "b": onnx_path("senet")}
    graph_names = {onnx.load(str(path), load_external_data=False).graph.name for path in sources.values()}
    assert len(graph_names) == 1, f"the exports should share a graph name, have {graph_names}"
    models = {"a": "mlp", "b": "senet"}
    for stem, source in sources.items():
        shape = "x".join(map(str, input_shape_of(models[stem])))
        out = str(tmp_path / f"{stem}.ekm")
        compiled = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgekit",
                "compile",
                str(source),
                "-o",
                out,
                "--input-shape",
                f"input={shape}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert compiled.returncode == 0, compiled.stderr
    info = subprocess.run(
        [sys.executable, "-m", "edgekit", "info", str(tmp_path / "a.ekm")], capture_output=True, text=True
    )
    assert "network 'a'" in info.stdout and "--name" in info.stdout, info.stdout
    with ek.Context(device=0) as ctx:
        ctx.load_model(tmp_path / "a.ekm")
        ctx.load_model(tmp_path / "b.ekm")
        assert ctx.network_names == ["a", "b"]
        for stem, model_name in models.items():
            x = random_input(input_shape_of(model_name))
            (expected,) = ort_run(sources[stem], {INPUT_NAME: x})
            (actual,) = ctx.network(stem).create_request().run([x])
            check_close(f"{model_name} as network {stem!r}", actual, expected)
        # The same name twice is still refused, and the error says how to rename.
        with pytest.raises(ek.BusyError, match=r"network 'a' is already loaded.*edgekit compile --name"):
            ctx.load_model(tmp_path / "a.ekm")


@pytest.mark.parametrize("threads", [1, 2])
def test_portable_and_xnnpack_agree_across_threads(threads: int) -> None:
    """The same network on both kernel paths and 1 or 2 threads gives the same result (within the
    tolerance: XNNPACK sums in another order)."""
    name = "mobilenetv2"
    path = compile_ekm(name)
    x = random_input(input_shape_of(name), seed=3)
    results: dict[str, np.ndarray[Any, Any]] = {}
    for kernels in KERNELS:
        try:
            with open_context(kernels, threads=threads) as ctx:
                (results[kernels],) = ctx.load_model(str(path)).network().create_request().run([x])
        except pytest.skip.Exception:
            continue
    (expected,) = ort_run(onnx_path(name), {INPUT_NAME: x})
    for kernels, actual in results.items():
        check_close(f"{name} [{kernels}, {threads} threads]", actual, expected)


def test_model_bench_quick_smoke() -> None:
    """python -m edgekit.bench_models (invoke bench) keeps working: a tiny run prints the whole table.
    Speed is never asserted (figures belong in the benchmark's output)."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "edgekit.bench_models", "--quick", "--models", "mlp,senet", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    for model in ("mlp", "senet"):
        for threads in ("1", "2"):
            engines = {row[2] for row in rows if row[:1] == [model] and row[3] == threads}
            assert {"onnxruntime", "edgekit-portable"} <= engines, result.stdout
