"""`invoke bench` keeps working: a quick run prints every row and the target line. Speed itself is
never asserted here (figures belong in the benchmark's output, not in a test's pass/fail)."""

from __future__ import annotations

import re
import subprocess
import sys


def test_quick_bench_prints_the_whole_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgekit.bench", "--quick"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for row in ("write (s2d)", "read (d2s)", "copy (d2d)", "flush, coherent", "flush, strict (all dirty)"):
        assert out.count(row) == 2, f"{row!r} should appear once per size:\n{out}"
    assert "DeviceMemory.write(64 bytes, 0)" in out and "no-op Cython method" in out
    assert "targets:" in out


def test_quick_remote_bench_prints_both_tables_and_moves_the_data_intact() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgekit.bench_remote", "--quick", "--mib", "8"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for row in ("req.run, local device", "req.run, remote device", "TCP ping-pong", "remote overhead"):
        assert row in out, f"{row!r} missing:\n{out}"
    assert "remote memory write + read" in out and "plain TCP echo" in out
    assert "data intact: True" in out


def test_plugin_bench_prints_a_row_per_size() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgekit.bench_plugins", "--repeats", "5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "built-in SIGMOID us" in out and "plugin Swish us" in out and "plugin - built-in us" in out
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [row[0] for row in rows] == ["16", "4096", "262144"], out


def test_memory_bench_prints_every_strategy_for_both_models() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgekit.bench_memory", "--quick", "--repeats", "5"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[:1] in (["mlp"], ["yolo"])]
    assert [(r[0], r[1]) for r in rows] == [
        (m, c) for m in ("mlp", "yolo") for c in ("heap", "pool", "python", "static")
    ], result.stdout
    for row in rows:
        assert float(row[2]) > 0 and float(row[4]) > 0 and row[3].endswith("x") and row[5].endswith("x"), row


def test_launch_bench_prints_every_path_against_onnxruntime() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgekit.bench_launch", "--repeats", "20"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for path in ("C ek_rt_run", "C ek_rt_launch_data", "Python req.run", "Python infer + wait"):
        assert f"{path} (portable)" in out, out
    ort = [line for line in out.splitlines() if line.startswith("onnxruntime session.run")]
    assert len(ort) == 1 and ort[0].split()[-1] == "1.00x", out
    for line in out.splitlines()[2:]:
        us, ratio = line.split()[-2:]
        assert float(us) > 0 and ratio.endswith("x"), line


def test_quick_model_bench_with_int8_rows() -> None:
    """--int8 adds the model quantized to int8 against onnxruntime's run of it, int8 over float32 per
    engine, and the top-1 agreement table."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekit.bench_models",
            "--quick",
            "--int8",
            "--models",
            "mlp",
            "--threads",
            "1",
            "--kernels",
            "portable",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for engine in ("onnxruntime", "edgekit-portable"):
        assert re.search(rf"^mlp-int8 +1x64 +{engine} +1 ", out, re.M), out
    assert re.search(
        r"mlp-int8 +edgekit-portable +1 threads: [\d.]+ ms vs [\d.]+ ms float32 = [\d.]+x", out
    ), out
    assert re.search(r"^  mlp +\d+\.\d% +\d+\.\d%$", out, re.M), out
