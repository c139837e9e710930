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


def test_bench_board_flashes_only_a_board_whose_release_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """invoke bench --board emu: the board is flashed unless its release's SHA256SUMS are the build's."""
    import tarfile
    from types import SimpleNamespace

    folder = tmp_path / "edgekit-0.1.0-aarch64-emu-debian12"
    folder.mkdir()
    (folder / "SHA256SUMS").write_text("abc  lib/libedgekit.so\n")
    (folder / "lib").mkdir()
    (folder / "lib" / "SHA256SUMS").write_text("not the bundle's\n")
    bundle = tmp_path / "bundle.tar.gz"
    with tarfile.open(bundle, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    assert tasks._bundle_sums(bundle) == b"abc  lib/libedgekit.so\n"

    rootfs = tmp_path / "rootfs"
    installed = rootfs / "opt/edgekit/current/SHA256SUMS"
    flashed: list[Path | None] = []
    monkeypatch.setattr(tasks, "_cross_build", lambda *args: SimpleNamespace())
    monkeypatch.setattr(tasks, "_bundle", lambda result: bundle)
    monkeypatch.setattr(tasks, "board_rootfs", lambda profile: rootfs)
    monkeypatch.setattr(tasks, "_flash_built", lambda result, device, bundle=None: flashed.append(bundle))
    tasks._ensure_emu_current(None, "emu-debian12")  # type: ignore[arg-type]
    assert flashed == [bundle]  # nothing installed
    installed.parent.mkdir(parents=True)
    installed.write_text("abc  lib/libedgekit.so\n")
    tasks._ensure_emu_current(None, "emu-debian12")  # type: ignore[arg-type]
    assert flashed == [bundle]  # the same release: no flash
    installed.write_text("def  lib/libedgekit.so\n")
    tasks._ensure_emu_current(None, "emu-debian12")  # type: ignore[arg-type]
    assert flashed == [bundle, bundle]
