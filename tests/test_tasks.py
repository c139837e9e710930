"""invoke's tasks rebuild the host package exactly when its sources change (tasks.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import tasks


def test_the_host_fingerprint_follows_every_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A change to any file the host package is built from (sdk/, edge_app/, the root CMakeLists.txt,
    pyproject.toml) changes the fingerprint; bytecode caches and other folders do not."""
    files = {
        "sdk/runtime/src/engine.c": "int x;",
        "sdk/edgekit/__init__.py": "",
        "edge_app/src/main.c": "int main(void) { return 0; }",
        "CMakeLists.txt": "project(x)",
        "pyproject.toml": "[project]",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(tasks, "ROOT", tmp_path)
    before = tasks._host_fingerprint()
    assert tasks._host_fingerprint() == before
    for ignored in ("sdk/edgekit/__pycache__/x.pyc", "docs/new.md", "build/anything"):
        (tmp_path / ignored).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / ignored).write_text("changes nothing")
    assert tasks._host_fingerprint() == before
    for name in files:
        original = (tmp_path / name).read_text()
        (tmp_path / name).write_text(original + " ")
        assert tasks._host_fingerprint() != before, f"a change to {name} must rebuild"
        (tmp_path / name).write_text(original)
    (tmp_path / "edge_app/src/new.c").write_text("")
    assert tasks._host_fingerprint() != before, "a new source file must rebuild"
