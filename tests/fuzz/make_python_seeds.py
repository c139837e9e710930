"""Regenerate the seed corpora of the Python fuzz targets (tests/fuzz/fuzz_onnx_import.py and
tests/fuzz/fuzz_elfcheck.py) from the kinds of inputs the test suite uses:

- corpus/onnx_import: every single-op model of tests/test_compiler.py (onnx.helper), the hand-made QDQ
  convolutions of tests/test_quantized.py, and a small torch network (BatchNorm kept and folded), also
  quantized to int8 by onnxruntime.quantization in QDQ and QOperator form;
- corpus/elfcheck: small programs and shared libraries from tests/test_elfcheck.py's sources, for x86-64
  (gcc, g++: GLIBCXX_ needs) and aarch64 (aarch64-linux-gnu-gcc: GLIBC_2.27/2.34 needs; one linked to
  ld.so: GLIBC_PRIVATE), stripped.

Each corpus is then minimized by the target itself (libFuzzer's -merge=1), replacing what was there.

    .venv/bin/python tests/fuzz/make_python_seeds.py [onnx_import] [elfcheck]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
sys.path[:0] = [str(TESTS), str(TESTS.parent)]  # the test modules, and toolchains/ for test_elfcheck


def onnx_seeds(out: Path) -> None:
    import numpy as np
    import onnx
    import torch
    from test_compiler import CASES, SmallNet, build, make_model, node
    from test_quantized import conv_qdq

    from edgekit.bench_models import INPUT_NAME, MODELS, OUTPUT_NAME, build_model, quantize_onnx
    from edgekit.compiler import compile_model
    from edgekit.compiler.subnet import make_edgekit_node
    from models import export_module

    for name in sorted(CASES):
        (out / f"{name}.onnx").write_bytes(build(name)[0].SerializeToString())
    # An EdgeKitNetwork node (compiler/subnet.py): a compiled .ekm inside a host graph, Relu around it.
    core = compile_model(build("conv")[0], name="core").data
    host = make_model(
        [node("Relu", ["x"], ["h"]), make_edgekit_node(core, ["h"], ["c"]), node("Relu", ["c"])],
        {"x": (1, 3, 8, 9)},
        ["y"],
    )
    host.opset_import.append(onnx.helper.make_opsetid("ai.edgekit", 1))
    (out / "edgekit_network_node.onnx").write_bytes(host.SerializeToString())
    (out / "qdq_conv_per_tensor.onnx").write_bytes(conv_qdq(np.array(0.02)).SerializeToString())
    per_channel = conv_qdq(np.array([0.01, 0.02, 0.03, 0.04]), w_zp=np.zeros(4, np.int8))
    (out / "qdq_conv_per_channel.onnx").write_bytes(per_channel.SerializeToString())
    shape = (1, 3, 16, 16)
    for fold in (False, True):
        torch.manual_seed(0)
        exported = export_module(SmallNet(), shape, [INPUT_NAME], ["p", "f"], fold=fold)
        (out / f"torch_smallnet_fold{int(fold)}.onnx").write_bytes(exported)
    # onnxruntime's quantizer cannot take SmallNet's grouped ConvTranspose: the benchmark's SENet (6k
    # weights: conv, squeeze-excite, HardSwish, linear) instead.
    senet = out / "torch_senet.onnx"
    senet_shape = MODELS["senet"].test_shape
    senet.write_bytes(export_module(build_model("senet"), senet_shape, [INPUT_NAME], [OUTPUT_NAME]))
    for form, qoperator in (("qdq", False), ("qoperator", True)):
        target = out / f"torch_senet_{form}.onnx"
        quantize_onnx(senet, target, senet_shape, qoperator=qoperator, calibration=2)


def elf_seeds(out: Path) -> None:
    from test_elfcheck import CXX_SRC, MAIN_C, PRIVATE_C, PROBE_C

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        for name, text in (
            ("probe.c", PROBE_C),
            ("main.c", MAIN_C),
            ("greet.cpp", CXX_SRC),
            ("private.c", PRIVATE_C),
        ):
            (src / name).write_text(text)

        def build(name: str, compiler: str, *args: str | Path) -> None:
            target = out / name
            subprocess.run([compiler, "-O2", "-o", target, *args], check=True)
            strip = "aarch64-linux-gnu-strip" if compiler.startswith("aarch64") else "strip"
            subprocess.run([strip, target], check=True)

        # Segments aligned to 4 KiB pages (aarch64's default is 64 KiB) and no separate code pages keep
        # the seeds small.
        small = "-Wl,-z,max-page-size=4096,-z,noseparate-code"
        for arch, gcc in (("x86_64", "gcc"), ("aarch64", "aarch64-linux-gnu-gcc")):
            lib = out / f"libprobe-{arch}.so"
            build(lib.name, gcc, small, "-fPIC", "-shared", "-Wl,-soname,libprobe.so.1", src / "probe.c")
            build(f"probe-{arch}", gcc, small, src / "main.c", lib, "-Wl,-rpath,$ORIGIN")
        build("libgreet-x86_64.so", "g++", small, "-fPIC", "-shared", "-pthread", src / "greet.cpp")
        cross = "aarch64-linux-gnu-gcc"
        ld_so = subprocess.run(
            [cross, "-print-file-name=ld-linux-aarch64.so.1"], check=True, capture_output=True, text=True
        ).stdout.strip()
        build("libprivate-aarch64.so", cross, small, "-fPIC", "-shared", src / "private.c", ld_so)


TARGETS: dict[str, Callable[[Path], None]] = {"onnx_import": onnx_seeds, "elfcheck": elf_seeds}


def main(argv: list[str]) -> int:
    for target in argv or list(TARGETS):
        corpus = HERE / "corpus" / target
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp)
            TARGETS[target](raw)
            shutil.rmtree(corpus, ignore_errors=True)
            corpus.mkdir(parents=True)
            subprocess.run(
                [sys.executable, HERE / f"fuzz_{target}.py", "-merge=1", corpus, raw],
                check=True,
                capture_output=True,
            )
        files = list(corpus.iterdir())
        size = sum(f.stat().st_size for f in files)
        print(f"{corpus.relative_to(TESTS.parent)}: {len(files)} seeds, {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
