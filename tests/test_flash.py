"""invoke flash / run / doctor: the emulated board, and two SSH "boards" in one ThreadingGroup.

The SSH boards are throwaway sshd servers on 127.0.0.1 (key auth, their own ports), so they are this
x86_64 machine: they get an x86_64 bundle (built for the host board profile), each under its own
install prefix, the path of its ssh:// URL. An aarch64 bundle must be refused there, board by board.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import build_for
from edgekit_packaging import devices
from edgekit_packaging.package import make_packages
from sshd import Sshd, available, free_port, sshd_server
from toolchains.boards import load_board
from toolchains.steps import Steps

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def host_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = build_for("host", "debian")
    dist = tmp_path_factory.mktemp("host-dist")
    return Path(make_packages(result.stage, dist, dist / "work", ["bundle"], Steps("t"))["bundle"])


@pytest.fixture
def two_boards(tmp_path: Path) -> Iterator[tuple[Sshd, Sshd]]:
    if (why := available()) is not None:
        pytest.skip(why)
    with (
        sshd_server(tmp_path / "sshd-a") as a,
        sshd_server(tmp_path / "sshd-b", client_key=a.client_key) as b,
    ):
        yield a, b


def ssh_spec(boards: tuple[Sshd, ...], prefixes: list[Path]) -> str:
    return ",".join(f"ssh://root@127.0.0.1:{b.port}{p}" for b, p in zip(boards, prefixes, strict=True))


def test_flash_two_ssh_boards_in_one_group(
    two_boards: tuple[Sshd, Sshd], host_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEKIT_SSH_KEY", str(two_boards[0].client_key))
    prefixes = [tmp_path / "board-a" / "edgekit", tmp_path / "board-b" / "edgekit"]
    with devices.open_fleet(ssh_spec(two_boards, prefixes), "host") as fleet:
        assert len(fleet.names) == 2
        # python_link=False: these "boards" are this machine, whose Python must not be touched.
        assert devices.flash(fleet, host_bundle, Steps("t"), python_link=False)
        name = host_bundle.name.removesuffix(".tar.gz")
        for prefix in prefixes:
            assert (prefix / "current").resolve() == prefix / "releases" / name
            assert (prefix / "current" / "lib" / "libedgekit.so.0.1.0").is_file()
        # Each board runs its own install: the package imports from that board's prefix.
        code = (
            'PYTHONPATH="$EDGEKIT_PREFIX/current/python" python3 -c "import edgekit; print(edgekit.__file__)"'
        )
        results = fleet.run(code)
    for prefix, value in zip(prefixes, results.values(), strict=True):
        assert isinstance(value, devices.RunResult) and value.ok, value
        assert value.stdout.strip() == str(prefix / "current" / "python" / "edgekit" / "__init__.py")
        assert not list((prefix / ".incoming").iterdir()), "the upload was not cleaned up"


def test_a_bundle_for_another_arch_is_refused_per_board(
    two_boards: tuple[Sshd, Sshd], emu_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEKIT_SSH_KEY", str(two_boards[0].client_key))
    prefixes = [tmp_path / "a", tmp_path / "b"]
    with devices.open_fleet(ssh_spec(two_boards, prefixes), "emu-debian12") as fleet:
        assert not devices.flash(fleet, emu_bundle, Steps("t"), python_link=False)
        results = fleet.run("true")
    assert all(isinstance(v, devices.RunResult) and v.ok for v in results.values())
    for prefix in prefixes:
        assert not (prefix / "current").exists()  # nothing half-installed


def test_flash_via_invoke_reports_a_dead_board_in_the_table(tmp_path: Path) -> None:
    """A board nobody answers for: invoke flash exits 1 and names it; nothing is left half-made."""
    if (why := available()) is not None:
        pytest.skip(why)
    with sshd_server(tmp_path / "one") as alive:
        dead_port = alive.port + 1 if alive.port < 65535 else alive.port - 1
        spec = f"ssh://root@127.0.0.1:{alive.port}{tmp_path / 'alive'},ssh://root@127.0.0.1:{dead_port}/x"
        env = {**os.environ, "EDGEKIT_SSH_KEY": str(alive.client_key)}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "invoke",
                "flash",
                "--arch",
                "x86_64",
                "--device",
                spec,
                "--no-python-link",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"root@127.0.0.1:{dead_port}" in done.stdout and "FAILED" in done.stdout
    assert "1 ok, 1 FAILED" in done.stdout
    assert "error: flashing failed on a board" in done.stderr


def test_doctor_on_the_flashed_emulated_board(flashed_emu: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert devices.doctor(flashed_emu, load_board("emu-debian12"))
    report = capsys.readouterr().out
    for line in ("ok  arch            aarch64", "ok  glibc           2.36", "ok  python          3.11"):
        assert line in report, report
    assert "ok  EdgeKit         0.1.0 for emu-debian12" in report
    assert "ok  import edgekit  0.1.0" in report
    assert "ok  remote_server   EdgeKit 0.1.0, remote protocol 1 in /opt/edgekit/current/bin" in report
    assert "FIX" not in report


def test_doctor_says_what_to_fix(two_boards: tuple[Sshd, Sshd], capsys: pytest.CaptureFixture[str]) -> None:
    """An x86_64 board with nothing installed, checked as an emu-debian12 board."""
    fleet = devices.SshFleet(
        [devices.parse_ssh_urls(f"ssh://root@127.0.0.1:{two_boards[0].port}/nowhere/edgekit")[0]],
        identity=two_boards[0].client_key,
    )
    with fleet:
        assert not devices.doctor(fleet, load_board("emu-debian12"))
    report = capsys.readouterr().out
    assert "FIX arch            x86_64" in report
    assert "build with --arch x86_64" in report
    assert "FIX EdgeKit         not installed" in report
    assert "nothing in /nowhere/edgekit/current: invoke flash --device <this board>" in report
    assert "FIX remote_server   none" in report
    assert "it comes with EdgeKit: invoke flash --device <this board>" in report


def test_doctor_on_a_release_without_remote_server() -> None:
    """What the probe says of a release from before remote devices, and of a remote_server that does
    not run, and what doctor makes of it."""
    board = load_board("emu-debian12")
    facts = {"arch": "aarch64", "installed_version": "0.1.0", "prefix": "/opt/edgekit"}
    rows = {
        what: (found, fix)
        for what, found, fix in devices.diagnose({**facts, "remote_server": ""}, board, "0.1.0")
    }
    found, fix = rows["remote_server"]
    assert found == "missing"
    assert fix == (
        "the release in /opt/edgekit/current is older than remote devices: invoke flash --device <this board>"
    )
    broken = {**facts, "remote_server": "sh: 1: remote_server: Exec format error"}
    rows = {what: (found, fix) for what, found, fix in devices.diagnose(broken, board, "0.1.0")}
    assert rows["remote_server"][0] == "does not run: sh: 1: remote_server: Exec format error"
    assert "is damaged: invoke flash --device <this board>" in rows["remote_server"][1]


def test_boards_without_edgekit_are_found(flashed_emu: Any, two_boards: tuple[Sshd, Sshd]) -> None:
    """invoke run flashes the emulated board first when this says it has no EdgeKit (and names SSH
    boards that lack it)."""
    assert devices.without_edgekit(flashed_emu) == []
    empty = devices.EmulatedFleet(flashed_emu.board, flashed_emu.rootfs, prefix="/opt/edgekit-never-flashed")
    assert devices.without_edgekit(empty) == empty.names
    url = f"ssh://root@127.0.0.1:{two_boards[0].port}/nowhere/edgekit"
    with devices.SshFleet([devices.parse_ssh_urls(url)[0]], identity=two_boards[0].client_key) as fleet:
        assert devices.without_edgekit(fleet) == fleet.names
    # A board that cannot be reached is not said to lack EdgeKit: the run on it reports the failure.
    unreachable = devices.parse_ssh_urls(f"ssh://root@127.0.0.1:{free_port()}")
    with devices.SshFleet(unreachable, identity=two_boards[0].client_key) as fleet:
        assert devices.without_edgekit(fleet) == []


def test_invoke_run_on_the_emulated_board(flashed_emu: Any) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "run", "--command", "uname -m; python3 -c 'import edgekit'"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "aarch64" in done.stdout and "1 ok, 0 FAILED" in done.stdout
    failing = subprocess.run(
        [sys.executable, "-m", "invoke", "run", "--command", "exit 7"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert failing.returncode == 1 and "exit code 7" in failing.stdout


def test_unknown_device_is_a_clear_error() -> None:
    with pytest.raises(devices.DeviceError, match="unknown device 'usb0': use emu, or ssh://"):
        devices.open_fleet("usb0", "emu-debian12")
    with pytest.raises(devices.DeviceError, match="expected"):
        devices.open_fleet("ssh://nouser-host:22", "emu-debian12")
    with pytest.raises(devices.DeviceError, match="emu is not mixed with ssh boards"):
        devices.open_fleet("ssh://root@127.0.0.1:1/opt/ek,emu", "emu-debian12")


def test_invoke_flash_refuses_a_bad_device_before_building() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "flash", "--device", "usb0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "unknown device 'usb0'" in done.stderr
    assert "Building EdgeKit" not in done.stdout
