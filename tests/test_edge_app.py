"""edgekit-app, the standalone edge app: on the host (the program pip install . puts in the edgekit
package) and on the emulated aarch64 board (the cross-built one from the flashed bundle). Its outputs
(--output_dir) must equal `edgekit run`'s for the same input; its profiles (--profile) and dumps (--dump)
must read on the host (`edgekit profile --plot`, the dump compared with onnxruntime); bad input is one
`error:` line and exit 2; the CPU clusters come from a fake big.LITTLE sysfs tree (EDGEKIT_APP_SYSFS_CPU)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgekit.app
from edgekit import profiling
from edgekit.cli import main as edgekit_main
from edgekit.compiler import ekm
from edgekit.compiler.graph import OpType
from models import INPUT_NAME, MODEL_NAMES, compile_ekm, input_shape_of, onnx_path, random_input
from toolchains.rootfs import run_on_board

# The app's own flags, each of which --help must teach.
FLAGS = (
    "--model_path",
    "--network",
    "--data_path",
    "--input_dims",
    "--dev_ids",
    "--threads",
    "--visible_cluster",
    "--launch_threads",
    "--iterations",
    "--warmup",
    "--kernels",
    "--output_dir",
    "--profile",
    "--dump",
    "--rpc_server",
    "--rpc_key",
    "--plugin_libs",
    "--mem_stg",
    "--output_caps",
    "--io",
    "--list-clusters",
    "--help",
)
REPORT_ROW = re.compile(
    r"^(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", re.M
)
TOTAL = re.compile(r"^total: (\d+) inferences in ([\d.]+) s: ([\d.]+) inferences/s$", re.M)


@dataclass
class Row:
    device: int
    thread: int
    cluster: str
    cpus: str
    launch_threads: int
    iterations: int
    p50: float
    p90: float
    p99: float
    throughput: float


def report_rows(stdout: str) -> list[Row]:
    return [
        Row(int(m[1]), int(m[2]), m[3], m[4], int(m[5]), int(m[6]), *(float(m[i]) for i in range(7, 11)))
        for m in REPORT_ROW.finditer(stdout)
    ]


def app_path() -> Path:
    path = edgekit.app.binary()
    assert path is not None, "the installed edgekit package has no bin/edgekit-app: run invoke build"
    return path


def run_app(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")}
    full_env.update(env or {})
    return subprocess.run(
        [str(app_path()), *map(str, args)], capture_output=True, text=True, env=full_env, timeout=300, cwd=cwd
    )


def edgekit_run(model: Path, x: Path, out: Path, kernels: str) -> None:
    """The reference: `python -m edgekit run` on the same input."""
    done = subprocess.run(
        [sys.executable, "-m", "edgekit", "run", str(model), "--input", str(x), "--output-dir", str(out),
         "--kernels", kernels],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def assert_same_outputs(app_out: Path, ref_out: Path) -> None:
    names = sorted(p.name for p in ref_out.glob("*.npy"))
    assert names and sorted(p.name for p in app_out.glob("*.npy")) == names
    for name in names:
        got, want = np.load(app_out / name), np.load(ref_out / name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        # The same kernels on the same data; only the launch's thread count may differ (1e-6 of scale).
        scale = max(1.0, float(np.abs(want).max()))
        assert float(np.abs(got - want).max()) <= 1e-6 * scale, name


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test model's .ekm, with its input as .npy (for edgekit run) and as raw .bin (the app)."""
    folder = tmp_path_factory.mktemp("app-models")
    for name in MODEL_NAMES:
        shutil.copy2(compile_ekm(name), folder / f"{name}.ekm")
        x = random_input(input_shape_of(name))
        np.save(folder / f"{name}.npy", x)
        x.tofile(folder / f"{name}.bin")
    staged = compile_ekm("mlp", stages=[{INPUT_NAME: (1, 64)}, {INPUT_NAME: (4, 64)}], network_name="mlp2")
    shutil.copy2(staged, folder / "mlp2.ekm")
    x4 = random_input((4, 64), seed=7)
    np.save(folder / "mlp2-b4.npy", x4)
    x4.tofile(folder / "mlp2-b4.bin")
    return folder


def clusters_here() -> int:
    done = run_app("--list-clusters")
    assert done.returncode == 0, done.stderr
    return len(re.findall(r"^\d+\s", done.stdout, re.M))


# --- host ---------------------------------------------------------------------------------------------


def test_help_teaches_every_flag_with_an_example() -> None:
    done = run_app("--help")
    assert done.returncode == 0 and done.stderr == ""
    for flag in FLAGS:
        assert flag in done.stdout, flag
    # Every value-taking flag's description is followed by an example line using it.
    for flag in FLAGS[:-2]:
        assert re.search(rf"^ {{30}}.*{flag}[ =]", done.stdout, re.M), f"no example for {flag}"
    # The console script pip installs runs the same program.
    script = subprocess.run([sys.executable, "-m", "edgekit.app", "--help"], capture_output=True, text=True)
    assert script.returncode == 0 and script.stdout == done.stdout


def test_the_docs_flag_table_is_the_programs_flags() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "edge-app.md").read_text()
    flags_section = page.split("\n## Flags\n")[1].split("\n## ")[0]
    documented = re.findall(r"^\| `(--[\w-]+)", flags_section, re.M)
    assert sorted(documented) == sorted(FLAGS)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_on_two_devices_two_threads_matches_edgekit_run(
    model_files: Path, name: str, tmp_path: Path
) -> None:
    shape = ",".join(map(str, input_shape_of(name)))
    last = clusters_here() - 1
    done = run_app(
        "--model_path", model_files / f"{name}.ekm", "--data_path", model_files / f"{name}.bin",
        "--input_dims", shape, "--dev_ids", "0", "1", "--threads", "2", "--visible_cluster", "0", str(last),
        "--iterations", "3", "--warmup", "1", "--kernels", "auto", "--output_dir", tmp_path / "app",
        env={"EDGEKIT_DEVICES": "2"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    edgekit_run(model_files / f"{name}.ekm", model_files / f"{name}.npy", tmp_path / "ref", "auto")
    assert_same_outputs(tmp_path / "app", tmp_path / "ref")

    rows = report_rows(done.stdout)
    assert [(r.device, r.thread) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [r.cluster for r in rows] == ["0", str(last)] * 2
    for row in rows:
        assert row.iterations == 3 and 0 < row.p50 <= row.p90 <= row.p99 and row.throughput > 0
    total = TOTAL.search(done.stdout)
    assert total is not None and int(total[1]) == 12 and float(total[3]) > 0, done.stdout


MEMORY_LINE = re.compile(r"^memory \(device (\d)\): (static|dynamic), (.*)$", re.M)


@pytest.mark.parametrize("strategy", ["static", "dynamic"])
def test_mem_stg_runs_the_same_and_reports_what_the_timed_launches_allocated(
    model_files: Path, tmp_path: Path, strategy: str
) -> None:
    """--mem_stg static (a workspace per thread) and dynamic (the app's allocator) give the default run's
    outputs, on two devices with two threads each, and say what the timed iterations allocated: nothing
    with static workspaces."""
    args: list[str | Path] = [
        "--model_path", model_files / "yolo.ekm", "--data_path", model_files / "yolo.bin",
        "--dev_ids", "0", "1", "--threads", "2", "--iterations", "5", "--kernels", "portable",
    ]  # fmt: skip
    env = {"EDGEKIT_DEVICES": "2"}
    ref = run_app(*args, "--output_dir", tmp_path / "ref", env=env)
    assert ref.returncode == 0 and not MEMORY_LINE.search(ref.stdout), ref.stdout + ref.stderr
    done = run_app(*args, "--mem_stg", strategy, "--output_dir", tmp_path / "app", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_outputs(tmp_path / "app", tmp_path / "ref")
    lines = MEMORY_LINE.findall(done.stdout)
    assert [(d, s) for d, s, _ in lines] == [("0", strategy), ("1", strategy)], done.stdout
    static = r"one \d+-byte workspace per thread; the timed iterations allocated no device memory"
    # dynamic: a context per launch running at once, made when first needed (in the warm-up, or later if
    # the two threads' launches first overlap in the timed iterations)
    dynamic = r".*: (\d+) allocation\(s\), 0 free\(s\), peak (\d+) bytes; (\d+) during the timed iterations"
    for _, _, text in lines:
        if strategy == "static":
            assert re.fullmatch(static, text), text
        else:
            m = re.fullmatch(dynamic, text)
            assert m and 1 <= int(m[1]) <= 2 and int(m[2]) > 0 and int(m[3]) <= 2, text


def test_io_host_runs_the_same_on_host_buffers(model_files: Path, tmp_path: Path) -> None:
    """--io host (ek_rt_launch_data on host buffers every iteration) gives --io device's outputs (ek_rt_run
    on device memory), on two threads, with the XNNPACK and portable
    kernels."""
    for kernels in ("portable", "auto"):
        args: list[str | Path] = [
            "--model_path", model_files / "yolo.ekm", "--data_path", model_files / "yolo.bin",
            "--threads", "2", "--iterations", "3", "--kernels", kernels,
        ]  # fmt: skip
        ref = run_app(*args, "--io", "device", "--output_dir", tmp_path / f"device-{kernels}")
        assert ref.returncode == 0, ref.stdout + ref.stderr
        done = run_app(*args, "--io", "host", "--output_dir", tmp_path / f"host-{kernels}")
        assert done.returncode == 0, done.stdout + done.stderr
        rows = REPORT_ROW.findall(done.stdout)
        assert [int(r[5]) for r in rows] == [3, 3], done.stdout
        assert_same_outputs(tmp_path / f"host-{kernels}", tmp_path / f"device-{kernels}")


def test_input_dims_pick_the_stage(model_files: Path, tmp_path: Path) -> None:
    done = run_app(
        "--model_path", model_files / "mlp2.ekm", "--data_path", model_files / "mlp2-b4.bin",
        "--input_dims", "4,64", "--iterations", "1", "--output_dir", tmp_path / "app",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "running stage 1 " in done.stdout
    assert np.load(tmp_path / "app" / "output.npy").shape == (4, 10)
    edgekit_run(model_files / "mlp2.ekm", model_files / "mlp2-b4.npy", tmp_path / "ref", "portable")
    done = run_app(
        "--model_path", model_files / "mlp2.ekm", "--data_path", model_files / "mlp2-b4.bin",
        "--input_dims", "4,64", "--iterations", "1", "--kernels", "portable", "--output_dir", tmp_path / "p",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_same_outputs(tmp_path / "p", tmp_path / "ref")


def test_random_inputs_are_repeatable_and_launch_threads_are_reported(
    model_files: Path, tmp_path: Path
) -> None:
    outs = []
    for run in ("a", "b"):
        done = run_app(
            "--model_path", model_files / "senet.ekm", "--iterations", "2", "--warmup", "0",
            "--threads", "2", "--launch_threads", "1", "--output_dir", tmp_path / run,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "input  input: float32 1,3,32,32, random" in done.stdout
        rows = report_rows(done.stdout)
        assert [(r.cluster, r.cpus, r.launch_threads) for r in rows] == [("-", "any", 1)] * 2
        outs.append(np.load(tmp_path / run / "output.npy"))
    assert np.isfinite(outs[0]).all() and np.array_equal(outs[0], outs[1])


def test_a_runtime_failure_is_exit_1_with_the_runtimes_message(model_files: Path) -> None:
    # A 64 KiB heap holds the inputs and outputs but not yolo's arena: the launch fails.
    done = run_app("--model_path", model_files / "yolo.ekm", env={"EDGEKIT_HEAP_SIZE": "64K"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1
    assert re.match(r"error: device 0 thread 0: inference \(warmup\): .*no device memory", done.stderr)


def bad_inputs(folder: Path) -> Iterator[tuple[str, list[str | Path], dict[str, str], str]]:
    """(case, args, environment, the error line's pattern) for every bad input the issue lists."""
    ekm = folder / "mlp.ekm"
    truncated = folder / "truncated.ekm"
    truncated.write_bytes(ekm.read_bytes()[:1000])
    garbage = folder / "garbage.ekm"
    garbage.write_bytes(b"not a model at all" * 10)
    blocker = folder / "a-file"
    blocker.write_text("")
    yield (
        "missing model",
        ["--model_path", folder / "nope.ekm"],
        {},
        r"--model_path .*nope\.ekm: No such file",
    )
    yield "truncated model", ["--model_path", truncated], {}, r"--model_path: .*truncated\.ekm"
    yield "not a model", ["--model_path", garbage], {}, r"--model_path: .*garbage\.ekm"
    yield "no model", ["--iterations", "1"], {}, r"--model_path is required"
    yield (
        "data file of the wrong size",
        ["--model_path", ekm, "--data_path", folder / "senet.bin"],
        {},
        r"--data_path .*senet\.bin: 12288 bytes, but input 'input' \(float32 1,64, stage 0\) takes 256",
    )
    yield (
        "wrong number of dims",
        ["--model_path", ekm, "--input_dims", "1,64,1"],
        {},
        r"--input_dims 1,64,1: input 'input' has 2 dims, not 3; the stages: stage 0: input=1,64",
    )
    yield (
        "a shape matching no stage",
        ["--model_path", folder / "mlp2.ekm", "--input_dims", "2,64"],
        {},
        r"no stage of network 'mlp2' takes these shapes; its stages: "
        r"stage 0: input=1,64; stage 1: input=4,64",
    )
    yield (
        "device id out of range",
        ["--model_path", ekm, "--dev_ids", "0", "2"],
        {"EDGEKIT_DEVICES": "2"},
        r"--dev_ids 2: there is no such device: there are 2 \(0\.\.1; EDGEKIT_DEVICES",
    )
    yield (
        "cluster count not equal to threads",
        ["--model_path", ekm, "--threads", "2", "--visible_cluster", "0"],
        {},
        r"--visible_cluster gave 1 cluster\(s\) for 2 thread\(s\) per device",
    )
    yield (
        "a cluster that does not exist",
        ["--model_path", ekm, "--visible_cluster", "99"],
        {},
        r"--visible_cluster 99: there is no such cluster: .*--list-clusters",
    )
    yield "unknown flag", ["--model_path", ekm, "--frobnicate", "x.so"], {}, r"unknown flag --frobnicate"
    yield (
        "plugin library missing",
        ["--model_path", ekm, "--plugin_libs", "x.so"],
        {},
        r"--plugin_libs x.so: No such file or directory",
    )
    yield (
        "plugin_libs with rpc_server",
        ["--model_path", ekm, "--plugin_libs", "x.so", "--rpc_server", "127.0.0.1:9"],
        {},
        r"--plugin_libs with --rpc_server: a remote_server never loads client code",
    )
    yield (
        "output_caps count",
        ["--model_path", ekm, "--output_caps", "1", "2"],
        {},
        r"--output_caps gave 2 size",
    )
    yield (
        "output_caps small",
        ["--model_path", ekm, "--output_caps", "4"],
        {},
        r"always takes \d+ bytes, more than",
    )
    yield (
        "output_caps text",
        ["--model_path", ekm, "--output_caps", "lots"],
        {},
        r"'lots' is not a number of bytes",
    )
    yield (
        "mem_stg value",
        ["--model_path", ekm, "--mem_stg", "pooled"],
        {},
        r"--mem_stg: 'pooled' is not one of",
    )
    yield (
        "io value",
        ["--model_path", ekm, "--io", "shared"],
        {},
        r"--io: 'shared' is not one of device, host",
    )
    yield (
        "io host with mem_stg static",
        ["--model_path", ekm, "--io", "host", "--mem_stg", "static"],
        {},
        r"--io host with --mem_stg static: .*use --io device",
    )
    yield (
        "mem_stg with rpc_server",
        ["--model_path", ekm, "--mem_stg", "static", "--rpc_server", "127.0.0.1:9"],
        {},
        r"--mem_stg with --rpc_server: a remote_server manages the board's memory itself",
    )
    yield (
        "rpc_server",
        ["--model_path", ekm, "--rpc_server", "1"],
        {},
        r"--rpc_server '1': expected HOST:PORT",
    )
    yield (
        "rpc_key alone",
        ["--model_path", ekm, "--rpc_key", "k"],
        {},
        r"--rpc_key is the key of a --rpc_server",
    )
    yield (
        "rpc_server with clusters",
        ["--model_path", ekm, "--rpc_server", "127.0.0.1:9", "--visible_cluster", "0"],
        {},
        r"--visible_cluster binds threads to this machine's CPU clusters",
    )
    for flag, value in (("--profile", "2"), ("--dump", "yes"), ("--profile", "on"), ("--dump", "")):
        yield (
            f"{flag} {value!r}",
            ["--model_path", ekm, f"{flag}={value}"],
            {},
            rf"{flag}: '{value}' is not one of 0, 1, True, False",
        )
    yield (
        "unwritable output dir",
        ["--model_path", ekm, "--output_dir", blocker / "out"],
        {},
        r"--output_dir .*a-file/out: cannot make .*: Not a directory",
    )
    yield "missing value", ["--model_path", ekm, "--threads"], {}, r"--threads needs a value"
    yield (
        "bad thread count",
        ["--model_path", ekm, "--threads", "0"],
        {},
        r"--threads: '0' is not a thread count",
    )
    yield "bad kernels", ["--model_path", ekm, "--kernels", "gpu"], {}, r"--kernels: 'gpu' is not one of"
    yield "bad shape", ["--model_path", ekm, "--input_dims", "1,x"], {}, r"--input_dims: '1,x' is not a shape"
    yield "stray argument", ["--model_path", ekm, "extra"], {}, r"--model_path takes one value"
    yield "unknown network", ["--model_path", ekm, "--network", "nonet"], {}, r"--network nonet: .*nonet"


def test_every_bad_input_is_one_error_line_and_exit_2(model_files: Path) -> None:
    for case, args, env, pattern in bad_inputs(model_files):
        done = run_app(*args, env=env)
        assert done.returncode == 2, f"{case}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), f"{case}: {done.stderr!r}"
        assert re.search(pattern, done.stderr), f"{case}: {done.stderr!r} does not match {pattern!r}"


# --- --profile and --dump ---------------------------------------------------------------------------------

PROFILED = "yolo"  # the model the profile and dump tests run: small (1x3x64x64), every kind of layer
THREAD_DIRS = ["dev0_thread0", "dev0_thread1", "dev1_thread0", "dev1_thread1"]


def check_profile(folder: Path, ops: list[ekm.OpRecord], iterations: int) -> None:
    """One thread's profile directory: `iterations` launches (the timed ones only), each with a
    LayerExecute event for every op; summary.csv one row per op with that count; `edgekit profile
    --plot` makes its PNG."""
    events = profiling.read_trace(folder)
    launches = [e for e in events if e["cat"] == "ModelExecute"]
    assert len(launches) == iterations, folder
    for launch in launches:
        layers = [
            e
            for e in events
            if e["cat"] == "LayerExecute" and e["args"]["launch"] == launch["args"]["launch"]
        ]
        assert sorted(e["args"]["op_index"] for e in layers) == list(range(len(ops))), folder
        for e in layers:
            op = ops[e["args"]["op_index"]]
            assert e["name"] == op.name and e["args"]["op_type"] == OpType(op.type).name
            assert launch["ts"] <= e["ts"] and e["ts"] + e["dur"] <= launch["ts"] + launch["dur"] + 1e-3
    rows = profiling.read_summary(folder)
    assert sorted(int(r["op_index"]) for r in rows) == list(range(len(ops)))
    assert all(int(r["count"]) == iterations and float(r["total_ms"]) > 0 for r in rows), rows
    assert edgekit_main(["profile", "--plot", str(folder)]) == 0
    png = folder / "profile.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_dump(folder: Path, ops: list[ekm.OpRecord], x: np.ndarray[Any, Any]) -> None:
    """One thread's dump directory: the network's ops in the manifest, its input the --data_path data,
    and no layer off onnxruntime's."""
    manifest = profiling.read_manifest(folder)
    assert manifest["network"] == PROFILED and manifest["layout"] == "onnx"
    assert [(op["index"], op["op"], op["name"]) for op in manifest["ops"]] == [
        (i, OpType(op.type).name, op.name) for i, op in enumerate(ops)
    ]
    (inp,) = manifest["inputs"]
    np.testing.assert_array_equal(np.load(folder / inp["file"]), x)
    comparison = profiling.compare_dump(folder, onnx_path(PROFILED), tolerance=1e-4)
    assert comparison.first_bad is None, comparison.table()
    assert sum(layer.status == "ok" for layer in comparison.layers) >= len(ops) - 2, comparison.table()


def listed_dirs(stdout: str, root: str) -> list[str]:
    return re.findall(rf"^  {root}/(dev\d+_thread\d+)$", stdout, re.M)


def test_profile_and_dump_two_devices_two_threads(model_files: Path, tmp_path: Path) -> None:
    """--profile 1 --dump 1: a profile of the timed iterations and a dump of the first launch per device
    and thread, under the working directory; both read on the host."""
    ops = ekm.read((model_files / f"{PROFILED}.ekm").read_bytes()).networks[0].stages[0].ops
    x = np.load(model_files / f"{PROFILED}.npy")
    done = run_app(
        "--model_path", model_files / f"{PROFILED}.ekm", "--data_path", model_files / f"{PROFILED}.bin",
        "--dev_ids", "0", "1", "--threads", "2", "--iterations", "3", "--warmup", "1",
        "--profile", "1", "--dump", "1",
        env={"EDGEKIT_DEVICES": "2"}, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert listed_dirs(done.stdout, "sample_profiler") == THREAD_DIRS
    assert listed_dirs(done.stdout, "sample_dump") == THREAD_DIRS
    assert f"in {tmp_path}:" in done.stdout
    assert sorted(p.name for p in (tmp_path / "sample_profiler").iterdir()) == THREAD_DIRS
    assert sorted(p.name for p in (tmp_path / "sample_dump").iterdir()) == THREAD_DIRS
    for name in THREAD_DIRS:
        check_profile(tmp_path / "sample_profiler" / name, ops, iterations=3)
        check_dump(tmp_path / "sample_dump" / name, ops, x)


def test_profile_and_dump_values(model_files: Path, tmp_path: Path) -> None:
    """0/1/True/False in any case: false writes nothing, true writes the directories."""
    ekm_path = model_files / "mlp.ekm"
    for value in ("0", "False", "false", "FALSE"):
        done = run_app(
            "--model_path", ekm_path, "--iterations", "1", f"--profile={value}", "--dump", value, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        assert list(tmp_path.iterdir()) == [] and "sample_" not in done.stdout
    for value in ("1", "True", "true", "TRUE"):
        folder = tmp_path / value
        folder.mkdir()
        done = run_app(
            "--model_path", ekm_path, "--iterations", "1", "--profile", value, f"--dump={value}", cwd=folder
        )
        assert done.returncode == 0, done.stderr
        assert (folder / "sample_profiler" / "dev0_thread0" / "trace.json").is_file()
        assert (folder / "sample_dump" / "dev0_thread0" / "manifest.json").is_file()


def test_unwritable_profile_or_dump_directory_is_exit_2_before_running(
    model_files: Path, tmp_path: Path
) -> None:
    """Checked before anything runs, by making the directories (tests run as root: permission bits do not
    stop root, so the cases are ones that fail for root too)."""
    ekm_path = model_files / "mlp.ekm"
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "sample_profiler").write_text("a file where the profile directory goes")
    (blocked / "sample_dump").mkdir()
    (blocked / "sample_dump" / "dev1_thread0").write_text("a file where device 1's dump goes")
    at = re.escape(str(blocked))
    cases = [
        (blocked, ["--profile", "1"],
         rf"--profile: sample_profiler/dev0_thread0 in {at}: cannot make sample_profiler/dev0_thread0: "
         r"Not a directory"),
        (blocked, ["--dump", "1", "--dev_ids", "0", "1"],
         rf"--dump: sample_dump/dev1_thread0 in {at}: it exists and is not a directory"),
        # /proc takes no new directories, not even from root.
        (Path("/proc"), ["--dump", "True"],
         r"--dump: sample_dump/dev0_thread0 in /proc: cannot make sample_dump: "),
    ]  # fmt: skip
    for cwd, args, pattern in cases:
        done = run_app("--model_path", ekm_path, *args, env={"EDGEKIT_DEVICES": "2"}, cwd=cwd)
        assert done.returncode == 2, f"{args}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        assert done.stdout == "", done.stdout  # nothing ran
        assert done.stderr.count("\n") == 1 and re.match(f"error: {pattern}", done.stderr), done.stderr
    # Device 0's dump directory was made before device 1's failed; nothing was written into it.
    assert list((blocked / "sample_dump" / "dev0_thread0").iterdir()) == []


def test_a_write_failing_later_is_exit_1_with_the_runtimes_message(model_files: Path, tmp_path: Path) -> None:
    """Directories that can be written, holding a directory where a file must go: the runtime's own
    write fails (the dump at its launch, the profile at the end), exit 1 with its message."""
    ekm_path = model_files / "mlp.ekm"
    (tmp_path / "sample_dump" / "dev0_thread0" / "manifest.json").mkdir(parents=True)
    (tmp_path / "sample_profiler" / "dev0_thread0" / "trace.json").mkdir(parents=True)
    done = run_app("--model_path", ekm_path, "--dump", "1", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1
    assert re.match(
        r"error: device 0 thread 0: inference \(dump\): .*manifest\.json'?: Is a directory", done.stderr
    )
    done = run_app("--model_path", ekm_path, "--profile", "1", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1
    assert re.match(
        r"error: device 0 thread 0: writing the profile: .*trace\.json'?: Is a directory", done.stderr
    )


# --- CPU clusters from a fake sysfs tree ----------------------------------------------------------------

# RK3588: four Cortex-A55 (capacity 530, 1.8 GHz) and two pairs of Cortex-A76 (1024, 2.4 GHz).
RK3588 = [(0, c, 530, 1800000) for c in range(4)] + [(1, 4, 1024, 2400000), (1, 5, 1024, 2400000)]
RK3588 += [(2, 6, 1024, 2400000), (2, 7, 1024, 2400000)]


def fake_sysfs(root: Path, cpus: list[tuple[int, int, int, int]], *, cluster_ids: bool = True) -> Path:
    """A sysfs cpu folder: cpuN/topology/{physical_package_id,cluster_id}, cpu_capacity, cpufreq."""
    for cluster, cpu, capacity, khz in cpus:
        folder = root / f"cpu{cpu}"
        (folder / "topology").mkdir(parents=True)
        (folder / "cpufreq").mkdir()
        (folder / "topology" / "physical_package_id").write_text("0\n")
        if cluster_ids:
            (folder / "topology" / "cluster_id").write_text(f"{cluster}\n")
        (folder / "cpu_capacity").write_text(f"{capacity}\n")
        (folder / "cpufreq" / "cpuinfo_max_freq").write_text(f"{khz}\n")
    return root


def sysfs_env(root: Path, allowed: str) -> dict[str, str]:
    """The test-only environment: a fake sysfs cpu folder and the CPUs the process may use."""
    return {"EDGEKIT_APP_SYSFS_CPU": str(root), "EDGEKIT_APP_ALLOWED_CPUS": allowed}


def list_clusters(root: Path, allowed: str) -> list[tuple[str, ...]]:
    done = run_app("--list-clusters", env=sysfs_env(root, allowed))
    assert done.returncode == 0, done.stderr
    assert f"(from {root})" in done.stdout
    return [tuple(line.split()) for line in done.stdout.splitlines() if re.match(r"\d+\s", line)]


def test_clusters_of_a_big_little_soc(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path / "cpu", RK3588)
    assert list_clusters(root, "0-7") == [
        ("0", "0-3", "4", "530", "1800", "0/0"),
        ("1", "4-5", "2", "1024", "2400", "0/1"),
        ("2", "6-7", "2", "1024", "2400", "0/2"),
    ]
    done = run_app("--list-clusters", env=sysfs_env(root, "0-7"))
    assert "big.LITTLE: the capacities differ (530 .. 1024" in done.stdout


def test_without_cluster_ids_big_and_little_cores_split_by_capacity(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path / "cpu", RK3588, cluster_ids=False)
    assert list_clusters(root, "0-7") == [
        ("0", "0-3", "4", "530", "1800", "0/-"),
        ("1", "4-7", "4", "1024", "2400", "0/-"),
    ]


def test_only_the_cpus_the_process_may_use_count(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path / "cpu", RK3588)
    assert list_clusters(root, "0-1,6") == [
        ("0", "0-1", "2", "530", "1800", "0/0"),
        ("1", "6", "1", "1024", "2400", "0/2"),
    ]
    env = sysfs_env(root, "0-1,6")
    done = run_app("--model_path", "x.ekm", "--visible_cluster", "2", env=env)
    assert done.returncode == 2
    assert "--visible_cluster 2: there is no such cluster: this process's CPUs form 2 (0..1;" in done.stderr
    done = run_app("--list-clusters", env={**env, "EDGEKIT_APP_ALLOWED_CPUS": "3-x"})
    assert done.returncode == 2 and "EDGEKIT_APP_ALLOWED_CPUS=3-x is not a CPU list" in done.stderr


def test_a_sysfs_without_topology_is_one_cluster(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = run_app("--list-clusters", env=sysfs_env(tmp_path / "empty", "0-3"))
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if re.match(r"\d+\s", line)]
    assert rows == [["0", "0-3", "4", "-", "-", "-/-"]]
    assert "has no CPU topology for the CPUs this process may use: they are one cluster" in done.stdout


# --- the emulated aarch64 board -------------------------------------------------------------------------

BOARD_PREFIX = "/opt/edgekit-app-test"  # this test's own install: other tests and sessions flash /opt/edgekit
BOARD_MODELS = f"{BOARD_PREFIX}/models"


@pytest.fixture(scope="module")
def app_board(emu_bundle: Path, emu_rootfs: Path, model_files: Path) -> Any:
    """The bundle flashed into BOARD_PREFIX on the emulated board (no edgekit.pth: the board's python3
    keeps importing whatever /opt/edgekit has), with the test models copied there."""
    from edgekit_packaging import devices
    from toolchains.boards import load_board
    from toolchains.steps import Steps

    fleet = devices.EmulatedFleet(load_board("emu-debian12"), emu_rootfs, prefix=BOARD_PREFIX)
    assert devices.flash(fleet, emu_bundle, Steps("test flash"), python_link=False)
    models = emu_rootfs / BOARD_MODELS.lstrip("/")
    shutil.rmtree(models, ignore_errors=True)
    shutil.copytree(model_files, models)
    return fleet


def on_board(rootfs: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    done = run_on_board(
        rootfs,
        ["/bin/sh", "-c", script],
        env={
            "PATH": f"{BOARD_PREFIX}/current/bin:/usr/bin:/bin",
            "PYTHONPATH": f"{BOARD_PREFIX}/current/python",
            **env,
        },
        timeout=900,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    )


def test_on_the_board_every_model_matches_edgekit_run(app_board: Any, emu_rootfs: Path) -> None:
    """Each model on two devices with two threads each, bound to clusters, against the board's own
    `edgekit run` (the flashed Python package) on the same input. Two board commands in all: qemu is slow."""
    out = emu_rootfs / BOARD_MODELS.lstrip("/") / "out"
    shutil.rmtree(out, ignore_errors=True)
    app_lines, ref_lines = [], []
    for name in MODEL_NAMES:
        shape = ",".join(map(str, input_shape_of(name)))
        app_lines.append(
            f"edgekit-app --model_path {BOARD_MODELS}/{name}.ekm --data_path {BOARD_MODELS}/{name}.bin "
            f"--input_dims {shape} --dev_ids 0 1 --threads 2 --visible_cluster 0 0 --iterations 1 --warmup 0 "
            f"--kernels xnnpack --output_dir {BOARD_MODELS}/out/app-{name} || exit 1"
        )
        ref_lines.append(
            f"python3 -m edgekit run {BOARD_MODELS}/{name}.ekm --input {BOARD_MODELS}/{name}.npy "
            f"--kernels xnnpack --output-dir {BOARD_MODELS}/out/ref-{name} || exit 1"
        )
    done = on_board(emu_rootfs, "\n".join(app_lines), EDGEKIT_DEVICES="2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert done.stdout.count("xnnpack kernels") == len(MODEL_NAMES)
    rows = report_rows(done.stdout)
    assert len(rows) == 4 * len(MODEL_NAMES) and all(r.iterations == 1 and r.cluster == "0" for r in rows)
    assert len(TOTAL.findall(done.stdout)) == len(MODEL_NAMES)
    ref = on_board(emu_rootfs, "\n".join(ref_lines))
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-2000:]
    # PYTHONPATH put this test's release before the edgekit.pth that /opt/edgekit may have written.
    for name in MODEL_NAMES:
        assert_same_outputs(out / f"app-{name}", out / f"ref-{name}")


def test_on_the_board_mem_stg_static_and_dynamic(app_board: Any, emu_rootfs: Path) -> None:
    """Both memory strategies on the board (two threads), equal to the default run's outputs there."""
    out = emu_rootfs / BOARD_MODELS.lstrip("/") / "out-mem"
    shutil.rmtree(out, ignore_errors=True)
    base = (
        f"edgekit-app --model_path {BOARD_MODELS}/yolo.ekm --data_path {BOARD_MODELS}/yolo.bin --threads 2 "
        "--iterations 3 --warmup 1"
    )
    script = "\n".join(
        f"{base} {flag} --output_dir {BOARD_MODELS}/out-mem/{name} || exit 1"
        for name, flag in [("default", ""), ("static", "--mem_stg static"), ("dynamic", "--mem_stg dynamic")]
    )
    done = on_board(emu_rootfs, script)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    lines = MEMORY_LINE.findall(done.stdout)
    assert [s for _, s, _ in lines] == ["static", "dynamic"], done.stdout
    assert lines[0][2].endswith("the timed iterations allocated no device memory"), lines[0]
    assert_same_outputs(out / "static", out / "default")
    assert_same_outputs(out / "dynamic", out / "default")


def test_on_the_board_bad_input_is_exit_2_and_clusters_list(app_board: Any, emu_rootfs: Path) -> None:
    blocked = f"{BOARD_MODELS}/blocked"  # holds a file named sample_profiler
    cases = {
        "missing model": f"--model_path {BOARD_MODELS}/nope.ekm",
        "wrong size": f"--model_path {BOARD_MODELS}/mlp.ekm --data_path {BOARD_MODELS}/senet.bin",
        "no stage": f"--model_path {BOARD_MODELS}/mlp2.ekm --input_dims 3,64",
        "device": f"--model_path {BOARD_MODELS}/mlp.ekm --dev_ids 1",
        "clusters": f"--model_path {BOARD_MODELS}/mlp.ekm --threads 2 --visible_cluster 0",
        "unknown flag": f"--model_path {BOARD_MODELS}/mlp.ekm --frobnicate x.so",
        "dump value": f"--model_path {BOARD_MODELS}/mlp.ekm --dump yes",
        "unwritable profile": f"--model_path {BOARD_MODELS}/mlp.ekm --profile 1",
    }
    script = [f"rm -rf {blocked}; mkdir -p {blocked}; : > {blocked}/sample_profiler; cd {blocked}"]
    script += [f'echo "== {case}"; edgekit-app {args} 2>&1; echo "rc=$?"' for case, args in cases.items()]
    script.append('echo "== list"; edgekit-app --list-clusters; echo "rc=$?"')
    done = on_board(emu_rootfs, "\n".join(script))
    sections = dict(part.split("\n", 1) for part in done.stdout.split("== ")[1:])
    for case in cases:
        lines = sections[case].strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1] == "rc=2", (case, lines)
    assert "stage 0: input=1,64; stage 1: input=4,64" in sections["no stage"]
    assert (
        f"--profile: sample_profiler/dev0_thread0 in {blocked}: cannot make" in sections["unwritable profile"]
    )
    listing = sections["list"]
    assert listing.strip().endswith("rc=0") and re.search(r"^0\s+\S+\s+\d+", listing, re.M), listing


def test_on_the_board_profile_and_dump_then_plot_and_compare_on_the_host(
    app_board: Any, emu_rootfs: Path, model_files: Path, tmp_path: Path
) -> None:
    """--profile 1 --dump 1 on the board (two devices, two threads, one timed iteration), the directories
    copied back from the board's rootfs, then `edgekit profile --plot` and the dump against onnxruntime on
    the host, which has matplotlib and onnxruntime (the board has neither)."""
    run_dir = f"{BOARD_MODELS}/profiled"
    on_host = emu_rootfs / run_dir.lstrip("/")
    shutil.rmtree(on_host, ignore_errors=True)
    done = on_board(
        emu_rootfs,
        f"mkdir -p {run_dir} && cd {run_dir} && edgekit-app --model_path ../{PROFILED}.ekm "
        f"--data_path ../{PROFILED}.bin --dev_ids 0 1 --threads 2 --iterations 1 --warmup 0 "
        "--profile 1 --dump 1",
        EDGEKIT_DEVICES="2",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"in {run_dir}:" in done.stdout, done.stdout
    assert listed_dirs(done.stdout, "sample_profiler") == THREAD_DIRS
    assert listed_dirs(done.stdout, "sample_dump") == THREAD_DIRS
    # Copied back (the board's files are under its rootfs here; from a real board: invoke run, scp).
    shutil.copytree(on_host, tmp_path / "back")
    shutil.rmtree(on_host, ignore_errors=True)
    ops = ekm.read((model_files / f"{PROFILED}.ekm").read_bytes()).networks[0].stages[0].ops
    x = np.load(model_files / f"{PROFILED}.npy")
    for name in THREAD_DIRS:
        check_profile(tmp_path / "back" / "sample_profiler" / name, ops, iterations=1)
        check_dump(tmp_path / "back" / "sample_dump" / name, ops, x)
