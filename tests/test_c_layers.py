"""libedgekit's source files call each other in layers, with no circle: which file calls which is read
from the compiled objects (nm: the symbols each one defines and the ones it uses), so a call through
any header counts. The engine sits above devices and memory, and the ek_rt_* API above the engine."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "sdk" / "runtime"
# libedgekit: src/ and the portable kernels (the XNNPACK provider is a library of its own)
SOURCES = sorted((RUNTIME / "src").glob("*.c")) + sorted((RUNTIME / "kernels").glob("*.c"))
SOURCES += sorted((RUNTIME / "kernels" / "portable").glob("*.c"))


def _name(source: Path) -> str:
    return str(source.relative_to(RUNTIME).with_suffix(""))


@pytest.fixture(scope="module")
def calls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, set[str]]]:
    """{file: {file it calls: the symbols}} over libedgekit's sources."""
    if shutil.which("gcc") is None or shutil.which("nm") is None:
        pytest.skip("gcc and nm are needed (./quickstart.sh test installs them)")
    out = tmp_path_factory.mktemp("objects")

    def compile_one(source: Path) -> tuple[str, Path]:
        obj = out / (_name(source).replace("/", "_") + ".o")
        subprocess.run(
            ["gcc", "-std=c11", "-O0", "-D_GNU_SOURCE", "-fPIC", "-I", str(RUNTIME / "include"),
             "-I", str(RUNTIME / "src"), "-I", str(RUNTIME / "kernels"), "-c", str(source), "-o", str(obj)],
            check=True, capture_output=True,
        )  # fmt: skip
        return _name(source), obj

    with ThreadPoolExecutor(max_workers=2) as pool:
        objects = dict(pool.map(compile_one, SOURCES))
    defined: dict[str, str] = {}
    used: dict[str, set[str]] = {}
    for name, obj in objects.items():
        used[name] = set()
        for line in subprocess.run(
            ["nm", str(obj)], capture_output=True, text=True, check=True
        ).stdout.splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[1] in "TDBR":
                defined[fields[2]] = name
            elif len(fields) == 2 and fields[0] == "U":
                used[name].add(fields[1])
    graph: dict[str, dict[str, set[str]]] = {name: defaultdict(set) for name in objects}
    for name, symbols in used.items():
        for symbol in symbols:
            owner = defined.get(symbol)
            if owner and owner != name:
                graph[name][owner].add(symbol)
    return graph


def _circles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """The strongly connected components of more than one file (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_source_file_calls_back_into_one_that_calls_it(calls: dict[str, dict[str, set[str]]]) -> None:
    circles = _circles(calls)
    detail = [
        f"{a} -> {b}: {', '.join(sorted(calls[a][b]))}"
        for circle in circles
        for a in circle
        for b in calls[a]
        if b in circle
    ]
    assert not circles, "source files that call each other in a circle:\n" + "\n".join(detail)


@pytest.mark.parametrize(
    ("lower", "upper"),
    [("src/device", "src/engine"), ("src/memory", "src/engine"), ("src/engine", "src/runtime"),
     ("src/device", "src/runtime"), ("src/memory", "src/runtime"), ("kernels/portable/conv", "src/engine"),
     ("src/plugin", "src/runtime")],
)  # fmt: skip
def test_lower_layers_do_not_call_upper_ones(
    calls: dict[str, dict[str, set[str]]], lower: str, upper: str
) -> None:
    assert lower in calls and upper in calls, (lower, upper)
    assert upper not in calls[lower], f"{lower} calls {upper}: {sorted(calls[lower][upper])}"


def test_the_engine_uses_devices_and_memory(calls: dict[str, dict[str, set[str]]]) -> None:
    """The graph is real: the engine's calls downward are seen (so the assertions above can fail)."""
    assert "ek_device_lock" in calls["src/engine"]["src/device"]
    assert "ek_parallel_for" in calls["kernels/portable/conv"]["src/team"]
