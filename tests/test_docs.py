"""The documentation's examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(), flags=re.DOTALL)


def test_readme_python_examples_run(tmp_path: Path) -> None:
    blocks = python_blocks(ROOT / "README.md")
    assert len(blocks) >= 2, "README.md should show the model and the memory API in Python"
    for code in blocks:
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert result.returncode == 0, f"README example failed:\n{code}\n{result.stderr}"
        if "dev.stats" in code:
            assert "'coherence': 'coherent'" in result.stdout, result.stdout
        if "compile_model" in code:
            assert "arena" in result.stdout and "(8, 2)" in result.stdout, result.stdout


def test_memory_doc_examples_run(tmp_path: Path) -> None:
    blocks = python_blocks(ROOT / "docs" / "memory.md")
    assert blocks, "docs/memory.md should show the inference memory strategies in Python"
    for code in blocks:
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert result.returncode == 0, f"docs/memory.md example failed:\n{code}\n{result.stderr}"
        assert "StageMemory(constant_bytes=864, " in result.stdout, result.stdout
        assert "'capacity': 1048576, 'runtimes': 1}" in result.stdout, result.stdout


def test_host_graphs_examples_run(tmp_path: Path) -> None:
    """docs/host-graphs.md: RuntimeSubgraph in a torch model, the EdgeKit node in an ONNX graph, and
    torch.onnx.export of a model with a RuntimeSubgraph; each block in its own process."""
    blocks = python_blocks(ROOT / "docs" / "host-graphs.md")
    assert len(blocks) == 3
    outputs = []
    for code in blocks:
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        assert result.returncode == 0, f"host-graphs.md example failed:\n{code}\n{result.stderr}"
        outputs.append(result.stdout)
    assert "torch.Size([4, 8, 1, 1])" in outputs[0] and "run_network" in outputs[0], outputs[0]
    assert "['EdgeKitNetwork', 'Gemm']" in outputs[2], outputs[2]


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "exec ./quickstart.sh test\n" in ci
    assert "./quickstart.sh test" in readme and "./quickstart.sh demo" in readme


def test_every_invoke_task_is_explained() -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "invoke", "--list"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    summaries: dict[str, str] = {}
    for line in listing.splitlines()[1:]:
        if re.match(r"^  \S", line):  # a task: "  name   summary..."
            name, _, summary = line.strip().partition(" ")
            summaries[name] = summary.strip()
        elif line.strip():  # the summary, wrapped
            summaries[name] += " " + line.strip()
    assert {"build", "test", "bench", "demo", "lint", "clean"} <= set(summaries), listing
    for name, summary in summaries.items():
        assert summary.rstrip().endswith("."), f"task {name}: summary cut short or missing: {summary!r}"


def test_quantization_doc_example_runs(tmp_path: Path) -> None:
    """docs/quantization.md: quantize a torch model with onnxruntime.quantization, compile, run, compare;
    then its shell block on the files the example wrote."""
    text = (ROOT / "docs" / "quantization.md").read_text()
    (code,) = python_blocks(ROOT / "docs" / "quantization.md")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, f"docs/quantization.md example failed:\n{result.stderr}"
    assert "float32 (1, 10) max |EdgeKit - onnxruntime|:" in result.stdout, result.stdout
    error = float(result.stdout.rsplit(":", 1)[1])
    assert error < 0.1, result.stdout
    (shell,) = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    edgekit = Path(sys.executable).with_name("edgekit")
    for line in shell.strip().splitlines():
        command = line.split("#")[0].split()
        assert command[0] == "edgekit"
        run = subprocess.run(
            [str(edgekit), *command[1:]], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert run.returncode == 0, f"{line}:\n{run.stdout}\n{run.stderr}"
        if command[1] == "info":
            assert "QCONV" in run.stdout, run.stdout
