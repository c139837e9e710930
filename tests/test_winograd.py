"""Winograd F(4x4, 3x3) convolutions (kernels/portable/winograd.c): torch Conv2d stacks of random shapes
compiled with --conv-algorithm winograd against onnxruntime (portable and auto kernels), the compiler's
per-layer choice, the file version, the runtime's refusals, and the choice shown by `edgekit info` and
the profile. The board test (NEON path) is in tests/test_board_models.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import edgekit as ek
from edgekit.compiler import compile_model, ekm
from models import max_error, ort_run

TOLERANCE = 1e-4


def conv_stack(seed: int) -> nn.Module:
    """Two or three 3x3 stride-1 convolutions of random channels (1..47), padding 0..2 (asymmetric
    through a ZeroPad2d), bias or not, and activation."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    c = int(rng.integers(1, 48))
    layers: list[nn.Module] = []
    for _ in range(int(rng.integers(2, 4))):
        m = int(rng.integers(1, 48))
        pads = [int(v) for v in rng.integers(0, 3, size=4)]  # left, right, top, bottom
        bias = bool(rng.integers(0, 2))
        if len(set(pads)) > 1:
            layers += [nn.ZeroPad2d((pads[0], pads[1], pads[2], pads[3])), nn.Conv2d(c, m, 3, bias=bias)]
        else:
            layers.append(nn.Conv2d(c, m, 3, padding=pads[0], bias=bias))
        layers.append([nn.ReLU(), nn.ReLU6(), nn.Identity()][int(rng.integers(0, 3))])
        c = m
    return nn.Sequential(*layers).eval()


def export(model: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(shape),), str(path), dynamo=False, input_names=["input"])


def stack_case(seed: int, tmp_path: Path) -> tuple[Path, np.ndarray[Any, Any]]:
    model = conv_stack(seed)
    first = next(m for m in model.children() if isinstance(m, nn.Conv2d))
    rng = np.random.default_rng(seed + 1000)
    # 7..20: three unpadded 3x3 convs leave at least one pixel
    shape = (int(rng.integers(1, 4)), first.in_channels, int(rng.integers(7, 21)), int(rng.integers(7, 21)))
    onnx_file = tmp_path / f"stack{seed}.onnx"
    export(model, shape, onnx_file)
    return onnx_file, rng.standard_normal(shape).astype(np.float32)


def conv_algorithms(path: Path) -> list[str | None]:
    model = ekm.read(path.read_bytes())
    ops = model.networks[0].stages[0].ops
    return [op.attrs.get("algorithm") for op in ops if op.type == 1]  # type: ignore[misc]


@pytest.mark.parametrize("seed", range(6))
def test_winograd_stacks_match_onnxruntime(seed: int, tmp_path: Path) -> None:
    onnx_file, x = stack_case(seed, tmp_path)
    out = tmp_path / "w.ekm"
    compile_model(str(onnx_file), str(out), name="w", conv_algorithm="winograd")
    algorithms = conv_algorithms(out)
    assert algorithms and all(a == "winograd" for a in algorithms), algorithms
    (expected,) = ort_run(onnx_file, {"input": x})
    for kernels in ("portable", "auto"):
        for threads in (1, 2):
            with ek.Context(device=0, kernels=kernels, threads=threads) as ctx:
                (actual,) = ctx.load_model(str(out)).network().create_request().run([x])
            error = max_error(actual, expected)
            print(f"seed {seed} {x.shape} [{kernels}, {threads} threads]: max error {error:.2e}")
            assert error <= TOLERANCE, f"{kernels}, {threads} threads: max error {error:.2e}"


def layer_model(tmp_path: Path) -> Path:
    """Convs with and without Winograd's conditions: 3x3/1 64->64 at 16x16 (pays), 3x3/1 8->8 (few
    channels), 3x3/2 (strided), 3x3/1 dilated, 3x3/1 grouped, 3x3/1 256->256 (deep), 1x1."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(8, 64, 3, padding=1)
            self.b = nn.Conv2d(64, 64, 3, padding=1)
            self.c = nn.Conv2d(64, 8, 1)
            self.d = nn.Conv2d(8, 8, 3, padding=1)
            self.e = nn.Conv2d(8, 64, 3, stride=2, padding=1)
            self.f = nn.Conv2d(64, 64, 3, padding=2, dilation=2)
            self.g = nn.Conv2d(64, 64, 3, padding=1, groups=2)
            self.h = nn.Conv2d(64, 256, 1)
            self.i = nn.Conv2d(256, 256, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in (self.a, self.b, self.c, self.d, self.e, self.f, self.g, self.h, self.i):
                x = layer(x)
            return x

    path = tmp_path / "layers.onnx"
    export(Net().eval(), (1, 8, 16, 16), path)
    return path


def test_the_compiler_records_winograd_where_it_qualifies_and_pays(tmp_path: Path) -> None:
    onnx_file = layer_model(tmp_path)
    #            a 8->64     b 64->64    c 1x1 d 8->8   e /2  f dil g grp i 256
    expected = {
        "auto": [None, "winograd", None, None, None, None, None, None, None],
        "winograd": ["winograd", "winograd", None, "winograd", None, None, None, None, "winograd"],
        "gemm": [None] * 9,
    }
    versions = {}
    for mode, want in expected.items():
        out = tmp_path / f"{mode}.ekm"
        compile_model(str(onnx_file), str(out), name=mode, conv_algorithm=mode)
        assert conv_algorithms(out) == want, mode
        versions[mode] = ekm.read(out.read_bytes()).version
    assert versions["auto"] == versions["winograd"] == (1, 4)
    assert versions["gemm"] < (1, 4)  # no algorithm attribute: the file stays readable by 1.x readers
    with pytest.raises(Exception, match="conv algorithm"):
        compile_model(str(onnx_file), None, conv_algorithm="fft")
    # every mode computes the same
    x = np.random.default_rng(3).standard_normal((1, 8, 16, 16)).astype(np.float32)
    (expected_y,) = ort_run(onnx_file, {"input": x})
    with ek.Context(device=0, kernels="portable") as ctx:
        for mode in expected:
            (y,) = ctx.load_model(str(tmp_path / f"{mode}.ekm")).network().create_request().run([x])
            assert max_error(y, expected_y) <= TOLERANCE, mode


def rewrite_algorithm(src: Path, dst: Path, value: str, which: int) -> str:
    """Copy src with CONV op number `which` given algorithm `value`; returns that op's name."""
    model = ekm.read(src.read_bytes())
    convs = [op for op in model.networks[0].stages[0].ops if op.type == 1]
    convs[which].attrs["algorithm"] = value
    dst.write_bytes(ekm.write(model))
    return convs[which].name


def test_the_runtime_refuses_a_bad_algorithm(tmp_path: Path) -> None:
    onnx_file = layer_model(tmp_path)
    base = tmp_path / "gemm.ekm"
    compile_model(str(onnx_file), str(base), name="gemm", conv_algorithm="gemm")
    cases = [
        ("fft", 1, "unknown algorithm 'fft'"),
        ("winograd", 4, "stride"),  # conv e: stride 2
        ("winograd", 5, "dilation"),  # conv f: dilation 2
        ("winograd", 6, "group"),  # conv g: 2 groups
    ]
    for value, which, words in cases:
        bad = tmp_path / f"bad{which}.ekm"
        name = rewrite_algorithm(base, bad, value, which)
        for kernels in ("portable", "auto"):
            with ek.Context(device=0, kernels=kernels) as ctx:
                with pytest.raises(ek.ModelInvalidError) as info:
                    ctx.load_model(str(bad))
            message = str(info.value)
            assert name in message and words in message, message


def edgekit_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(ek.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_info_and_profile_show_the_algorithm(tmp_path: Path) -> None:
    onnx_file = layer_model(tmp_path)
    out = tmp_path / "auto.ekm"
    compile_model(str(onnx_file), str(out), name="auto")
    done = edgekit_cli("info", out)
    assert done.returncode == 0, done.stderr
    assert "convolutions: 9, 1 Winograd F(4x4,3x3)" in done.stdout, done.stdout
    lines = [line for line in done.stdout.splitlines() if "3x3/1x1 64->64" in line]
    assert [line.split()[-1] for line in lines] == ["winograd", "gemm", "gemm"], lines  # b; f, g
    info = json.loads(edgekit_cli("info", out, "--json").stdout)
    convs = info["networks"][0]["convolutions"]
    assert [c["algorithm"] for c in convs].count("winograd") == 1
    assert {c["algorithm"] for c in convs} == {"winograd", "gemm", "pointwise"}

    x = np.zeros((1, 8, 16, 16), np.float32)
    for kernels in ("portable", "auto"):
        with ek.Context(device=0, kernels=kernels) as ctx, ek.Profile() as profile:
            req = ctx.load_model(str(out)).network().create_request()
            req.run([x], profile=profile)
            layers = [
                r for r in profile.records if r.kind == "LayerExecute" and r.details["op_type"] == "CONV"
            ]
            wino = [r for r in layers if r.details["algorithm"].startswith("winograd-f4/")]
            assert len(wino) == 1 and wino[0].details["provider"] == "portable", [r.details for r in layers]
            others = {r.details["algorithm"] for r in layers if r not in wino}
            # the rest: the portable im2col / pointwise GEMM, or XNNPACK's (no portable algorithm)
            assert others == ({"gemm"} if kernels == "portable" else {""}) or kernels == "auto", others
            profile.write(tmp_path / kernels)
            summary = (tmp_path / kernels / "summary.csv").read_text()
            assert summary.splitlines()[0].endswith(",algorithm") and "winograd-f4/" in summary
            trace = json.loads((tmp_path / kernels / "trace.json").read_text())
            events = trace["traceEvents"] if isinstance(trace, dict) else trace
            assert any(str(e.get("args", {}).get("algorithm", "")).startswith("winograd-f4/") for e in events)


def test_winograd_bench_quick_smoke() -> None:
    """python -m edgekit.bench_winograd keeps working: a quick run prints a row per layer and thread count
    (speed is never asserted)."""
    done = subprocess.run(
        [sys.executable, "-m", "edgekit.bench_winograd", "--quick", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [(r[0], r[2]) for r in rows] == [("16x16", "1"), ("16x16", "2"), ("8x8", "1"), ("8x8", "2")], (
        done.stdout
    )
    assert all(r[-1].endswith("x") and r[-2].endswith("x") for r in rows), done.stdout
