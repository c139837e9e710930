"""The soak's short forms (tests/soak.py; the long form, 10^4 sessions and 10^4 loads, is `invoke soak`):
remote_server through a few thousand sessions with random disconnects, a compiled model loaded and
unloaded hundreds of times from C (also under ASan/LSan) and from Python, with memory and open fds flat.
And the soak's own checks, shown to fail on what they look for."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import soak
from soak import Sample, ServerSoak, SoakError, SoakModel

SESSIONS = 2000  # about 10 s on 2 idle cores; the RSS bound is the long form's
LOADS = 400


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SoakModel:
    return soak.soak_model(tmp_path_factory.mktemp("soak-model"))


@pytest.fixture(scope="module")
def c_soak(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return soak.build_c_soak(tmp_path_factory.mktemp("soak-c"))


def test_server_soak(model: SoakModel, tmp_path: Path) -> None:
    """Every kind of session and disconnect, 4 at once; the checks are in ServerSoak.check."""
    result = soak.run_server_soak(SESSIONS, tmp_path, model, concurrency=4, seed=15)
    print("\n" + result.table())
    assert sum(result.kinds.values()) == SESSIONS and set(result.kinds) == set(soak.KINDS)
    assert {"close", "reset", "clean", "by the server"} <= set(result.endings), result.endings


def test_load_soak_c(c_soak: Path, model: SoakModel) -> None:
    result = soak.run_c_load_soak(c_soak, model, LOADS)
    print("\n" + result.table)
    assert "heap in use B" in result.table


def test_load_soak_c_portable(c_soak: Path, model: SoakModel) -> None:
    print("\n" + soak.run_c_load_soak(c_soak, model, LOADS // 2, kernels="portable").table)


def test_load_soak_c_under_asan(model: SoakModel, tmp_path: Path) -> None:
    """The same program built with ASan + UBSan: no leak at exit (LeakSanitizer), no bad access."""
    try:
        exe = soak.build_c_soak(tmp_path, sanitize=True)
    except SoakError as exc:
        if "sanitize" in str(exc) and "cannot find" in str(exc):
            pytest.skip(f"no ASan runtime: {exc}")
        raise
    print("\n" + soak.run_c_load_soak(exe, model, 100).table)


def test_load_soak_python(model: SoakModel) -> None:
    result = soak.run_python_load_soak(model, LOADS)
    print("\n" + result.table)


# ---- the checks themselves --------------------------------------------------------------------------


def test_c_soak_fails_on_a_leak_of_8_bytes_per_load(c_soak: Path) -> None:
    """One malloc(8) per load, kept (so LeakSanitizer would not see it): the heap check fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")}
    done = subprocess.run(
        [str(c_soak), "--loads", "1000", "--quiet", "--leak", "8"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "CHECK(!HEAP_MEASURED || end.heap_bytes - warm.heap_bytes <= heap_bound) failed" in done.stdout
    assert done.stdout.rstrip().endswith("0 passed, 1 failed")


def _sessions_log(sessions: int, extra: str = "") -> str:
    stamp = "2026-01-01 00:00:00 remote_server: "
    lines = [f"{stamp}listening on 127.0.0.1 port 5 (protocol 1, EdgeKit 0.1.0, x86_64; loopback only)"]
    for n in range(1, sessions + 1):
        lines.append(f"{stamp}session {n} (127.0.0.1:4{n}): EdgeKit 0.1.0 client on x86_64")
        lines.append(f"{stamp}session {n} (127.0.0.1:4{n}) ended: 127.0.0.1:4{n} closed the connection")
    lines += [extra] if extra else []
    return "\n".join([*lines, f"{stamp}stopped"]) + "\n"


def _passing() -> ServerSoak:
    samples = [
        Sample(100 * k, k, 8000 + (k % 3) * 100, 10, 125000 + (k % 2) * 900, 1, 10**8, 12)
        for k in range(1, 21)
    ]
    stats = {"used": 0, "allocations": 0}
    return ServerSoak(
        2000, 4, samples=samples, start_fds=6, final_fds=6, final_status=(0, 3, 125000), connections=3,
        log=_sessions_log(3), board_heap=(stats, dict(stats)),
    )  # fmt: skip


def test_server_checks_pass_flat_figures() -> None:
    _passing().check()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("rss", "RSS grew by 2052 KiB over the second half"),
        ("heap", "heap in use grew by 24608 bytes over the second half, over the bound of 23584"),
        (
            "sessions_open",
            "counts [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2] sessions open",
        ),
        ("final_status", "1 at the end, 3 started of 3"),
        ("fds", "open fds changed between idle points"),
        ("final_fds", "7 open fds after every session closed, 6 before"),
        ("client_fds", "the clients' open fds changed"),
        ("board", "the board's heap holds what sessions left"),
        ("scratch", "left files in its TMPDIR"),
        ("log_line", "unexpected line in remote_server's log"),
        ("log_session", "logged 2 ended sessions of 3: missing [3]"),
    ],
)
def test_server_checks_fail_on_growth(change: str, message: str) -> None:
    result = copy.deepcopy(_passing())
    last = result.samples[-1]
    if change == "rss":
        last.rss_kib = result.samples[10].rss_kib + soak.RSS_BOUND_KIB + 4
    elif change == "heap":  # over 900 sessions: a 32-byte block for 6 sessions in 7
        last.heap = result.samples[10].heap + 24608
    elif change == "sessions_open":
        last.sessions_open = 2
    elif change == "final_status":
        result.final_status = (1, 3, 125000)
    elif change == "fds":
        result.samples[15].fds += 1
    elif change == "final_fds":
        result.final_fds += 1
    elif change == "client_fds":
        last.client_fds += 1
    elif change == "board":
        result.board_heap[1]["allocations"] = 1
    elif change == "scratch":
        result.scratch_left = ["edgekit-remote-a1b2c3/dump-x1y2z3/manifest.json"]
    elif change == "log_line":
        result.log = _sessions_log(
            3, "2026-01-01 00:00:00 remote_server: session 2 (127.0.0.1:42): poll failed"
        )
    elif change == "log_session":
        result.log = "\n".join(line for line in result.log.splitlines() if "session 3 " not in line)
    with pytest.raises(SoakError) as exc:
        result.check()
    assert message in str(exc.value), exc.value


def test_invoke_soak_help() -> None:
    """The long form's task is there and says what it runs."""
    invoke = shutil.which("invoke", path=str(Path(sys.executable).parent))
    assert invoke is not None
    done = subprocess.run(
        [invoke, "--help", "soak"], capture_output=True, text=True, timeout=60, cwd=soak.TESTS.parent
    )
    assert done.returncode == 0, done.stderr
    for flag in ("--sessions", "--loads", "--concurrency", "--seed", "--kernels"):
        assert flag in done.stdout, done.stdout
