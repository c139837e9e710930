"""The ``edgekit`` command: compile ONNX models, inspect and run ``.ekm`` models.

``info`` and ``run`` need only numpy and the runtime, so they work on a board; ``compile`` imports the
compiler (and onnx) only when it is the command given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

EXIT_ERROR = 1
EXIT_USAGE = 2

DESCRIPTION = """\
EdgeKit: compile ONNX models to .ekm files, inspect them, and run them on the EdgeKit runtime.

commands:
  compile   ONNX -> .ekm (host only: needs the onnx package)
  info      print a model's networks, inputs, outputs and stages (loads it through the runtime, so
            it also validates the file)
  run       run a network on .npy inputs (or random ones), write the outputs as .npy, print latency
  profile   profile launches: a Chrome trace, a per-op CSV and table, a PNG plot (matplotlib, host)
  dump      write every op's output as .npy + manifest.json; --compare them with onnxruntime (host)

examples:
  edgekit compile model.onnx -o model.ekm --input-shape input=1x3x224x224
  edgekit info model.ekm
  edgekit run model.ekm --input image.npy --output-dir out/
  edgekit run model.ekm --random --repeat 50 --kernels portable --threads 2
  edgekit profile model.ekm --input image.npy --repeat 20 -o prof/
  edgekit dump model.ekm --input image.npy -o dump/ --compare model.onnx

Run 'edgekit COMMAND --help' for the options of a command.
"""

COMPILE_HELP = "compile an ONNX model to a .ekm file (host only)"
COMPILE_DESCRIPTION = """\
Compile an ONNX model to a .ekm model file: static shapes per stage, constant and BatchNorm folding,
fused activations, a static memory plan. Needs the onnx package (host only). The network is named
after the output file (model.ekm: 'model') unless --name says otherwise, so models from the same
exporter (torch names every graph 'main_graph') load side by side.

example:
  edgekit compile model.onnx -o model.ekm --input-shape input=1x3x224x224
"""

INFO_DESCRIPTION = """\
Load a .ekm model through the runtime (which validates the whole file) and print its networks:
inputs and outputs (name, dtype, shape per stage, scale, zero point; an output whose size depends on
the data shows its largest shape as <=SHAPE and "(dynamic)"), stages, and the kernels in use.
A network's name is set when compiling (edgekit compile --name; by default the .ekm file's stem);
one context holds each name once.

examples:
  edgekit info model.ekm
  edgekit info model.ekm --json
"""

RUN_DESCRIPTION = """\
Run a network of a .ekm model. Inputs come from .npy files, in input order (--input x.npy) or by
name (--input name=x.npy); their shapes choose the stage. With --random and no --input, inputs are
random, in the shapes of --stage. Outputs are written to OUTPUT_DIR/<output name>.npy. The latency
printed is the median of --repeat launches (infer + wait; the copies in and out are not counted).

examples:
  edgekit run model.ekm --input image.npy --output-dir out/
  edgekit run model.ekm --input x=a.npy --input y=b.npy --network net
  edgekit run model.ekm --random --repeat 100 --kernels xnnpack --threads 4
  edgekit run model.ekm --input x.npy --expect reference.npy   # exit 1 unless within 1e-4
"""


PROFILE_DESCRIPTION = """\
Profile launches of a network: --repeat launches (inputs from --input, else random) recorded into
one profile, written to OUTPUT_DIR as trace.json (Chrome Trace Event format: open it in
https://ui.perfetto.dev or chrome://tracing) and summary.csv (ops by total time: count, total, mean,
%, GFLOP/s), which is also printed. On a host with matplotlib it also writes OUTPUT_DIR/profile.png
(time per op type and the timeline of the first launch). --plot DIR makes that PNG from a profile
directory copied back from a board (the board has no matplotlib).

examples:
  edgekit profile model.ekm --input image.npy --repeat 20 -o prof/
  edgekit profile model.ekm --repeat 50 --kernels portable --threads 1 -o prof/
  edgekit profile --plot prof/        # on the host, for a directory copied from the board
"""

DUMP_DESCRIPTION = """\
Run a network once and write its inputs and every op's output to OUTPUT_DIR as .npy files, with
manifest.json (op index and type, the ONNX nodes and tensor each op stands for, dtype, shape in the
ONNX layout, min/max/mean/NaN count). With --compare model.onnx (host only: onnx + onnxruntime) the
same inputs run through onnxruntime with those tensors exposed, a per-layer table of the errors is
printed, and the first layer whose error exceeds --tolerance is named (exit 1). Without a model, it
compares a dump directory that already exists (e.g. copied back from a board).

examples:
  edgekit dump model.ekm --input image.npy -o dump/
  edgekit dump model.ekm --input image.npy -o dump/ --compare model.onnx --tolerance 1e-4
  edgekit dump -o dump_from_board/ --compare model.onnx
"""


class CliError(Exception):
    """A problem to report as one 'error: ...' line."""


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kernels",
        choices=("auto", "portable", "xnnpack"),
        default=None,
        help="kernels to run the ops (default: EDGEKIT_KERNELS, else auto: XNNPACK where it has the op)",
    )
    parser.add_argument(
        "--device",
        type=_device,
        default=0,
        metavar="ID|URL",
        help="device id (default 0), or a board's remote_server: tcp://HOST:PORT or ssh://user@board "
        "(runs there from here; docs/remote-protocol.md)",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="LIB.so",
        help="load a plugin op library (built for this machine; docs/plugins.md) before the model "
        "(repeat for more; not with a remote --device)",
    )


def _device(text: str) -> int | str:
    if text.startswith(("tcp://", "ssh://")):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a device id or a board URL (tcp://HOST:PORT, ssh://user@board): {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a device id is 0 or more, not {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser(with_compiler: bool) -> argparse.ArgumentParser:
    """The parser; the compile command's options only ``with_compiler`` (they need the compiler)."""
    parser = argparse.ArgumentParser(
        prog="edgekit", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="store_true", help="print the runtime's version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    compile_parser = commands.add_parser(
        "compile",
        help=COMPILE_HELP,
        description=COMPILE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=with_compiler,
    )
    if with_compiler:
        from edgekit.compiler.cli import add_compile_arguments  # host only: imports onnx

        add_compile_arguments(compile_parser)

    info = commands.add_parser(
        "info",
        help="print a model's networks, inputs, outputs and stages",
        description=INFO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("model", help="the .ekm file")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_runtime_options(info)

    run = commands.add_parser(
        "run",
        help="run a network on .npy inputs and write its outputs",
        description=RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("model", help="the .ekm file")
    run.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="[NAME=]FILE.npy",
        help="an input: in input order, or NAME=FILE for input NAME (repeat for each input)",
    )
    run.add_argument("--random", action="store_true", help="random inputs (when no --input is given)")
    run.add_argument("--stage", type=int, default=0, help="the stage of the random inputs (default 0)")
    run.add_argument("--network", "-n", default=None, help="the network (needed when the model has several)")
    run.add_argument("--output-dir", "-o", default=None, help="write each output to DIR/<name>.npy")
    run.add_argument("--threads", type=_positive_int, default=None, help="threads per launch")
    run.add_argument("--repeat", type=_positive_int, default=1, help="launches to time (default 1)")
    run.add_argument("--seed", type=int, default=0, help="seed of --random (default 0)")
    run.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="[NAME=]FILE.npy",
        help="an expected output (e.g. from onnxruntime on the host): compare, exit 1 on a mismatch",
    )
    run.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest --expect error, relative to the output's scale max(1, max|expected|) (default 1e-4)",
    )
    _add_runtime_options(run)

    prof = commands.add_parser(
        "profile",
        help="profile launches: trace.json, summary.csv, a table and a plot",
        description=PROFILE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prof.add_argument("model", nargs="?", help="the .ekm file (not with --plot)")
    _add_input_options(prof)
    prof.add_argument("--repeat", type=_positive_int, default=10, help="launches to record (default 10)")
    prof.add_argument("--threads", type=_positive_int, default=None, help="threads per launch")
    prof.add_argument(
        "--output-dir", "-o", default=None, metavar="DIR", help="the profile directory to write"
    )
    prof.add_argument("--no-plot", action="store_true", help="do not write profile.png")
    prof.add_argument(
        "--plot", default=None, metavar="DIR", help="only plot DIR (a profile directory) to DIR/profile.png"
    )
    _add_runtime_options(prof)

    dump = commands.add_parser(
        "dump",
        help="write every op's output (.npy + manifest.json); compare with onnxruntime",
        description=DUMP_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dump.add_argument("model", nargs="?", help="the .ekm file (without it: compare an existing dump)")
    _add_input_options(dump)
    dump.add_argument("--output-dir", "-o", required=True, metavar="DIR", help="the dump directory")
    dump.add_argument("--compare", default=None, metavar="MODEL.onnx", help="compare with onnxruntime (host)")
    dump.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest error of a layer, relative to max(1, max|reference|) (default 1e-4)",
    )
    _add_runtime_options(dump)
    return parser


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="[NAME=]FILE.npy",
        help="an input: in input order, or NAME=FILE (default: random inputs of --stage)",
    )
    parser.add_argument("--stage", type=int, default=0, help="the stage of random inputs (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random inputs (default 0)")
    parser.add_argument(
        "--network", "-n", default=None, help="the network (needed when the model has several)"
    )


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def _conv_algorithms(path: str) -> dict[str, list[dict[str, Any]]] | None:
    """Each network's CONV ops and the algorithm the portable kernels run them with (from the file:
    "winograd" where the compiler recorded it, else what the kernel picks: "depthwise", "pointwise"
    or "gemm", im2col); None where the file reader (edgekit.compiler, needs onnx) is missing."""
    try:
        from edgekit.compiler import ekm
    except ImportError:
        return None
    model = ekm.read(Path(path).read_bytes())
    out: dict[str, list[dict[str, Any]]] = {}
    for net in model.networks:
        convs = out.setdefault(net.name, [])
        for index, stage in enumerate(net.stages):
            for op in stage.ops:
                if op.type not in (1, 33) or op.inputs[1] is None:  # CONV, QCONV (int8)
                    continue
                m, kh, kw, cg = stage.tensors[op.inputs[1]].shape
                group = int(op.attrs.get("group", 1))  # type: ignore[arg-type]
                strides = list(op.attrs.get("strides", [1, 1]))  # type: ignore[arg-type]
                pads = list(op.attrs.get("pads", [0, 0, 0, 0]))  # type: ignore[arg-type]
                if op.attrs.get("algorithm") == "winograd":
                    algorithm = "winograd"
                elif group > 1 and group == m and cg == 1:
                    algorithm = "depthwise"
                elif op.type == 33:
                    algorithm = "int8 gemm"
                elif (kh, kw) == (1, 1) and strides == [1, 1] and not any(pads):
                    algorithm = "pointwise"
                else:
                    algorithm = "gemm"
                if op.type == 33 and algorithm == "depthwise":
                    algorithm = "int8 depthwise"
                convs.append(
                    {
                        "stage": index,
                        "op": op.name,
                        "kernel": f"{kh}x{kw}/{'x'.join(map(str, strides))}",
                        "channels": [cg * group, m],
                        "algorithm": algorithm,
                    }
                )
    return out


def _op_counts(path: str) -> dict[str, dict[str, int]] | None:
    """Each network's ops by type, in its first stage (None without the file reader)."""
    try:
        from edgekit.compiler import ekm
        from edgekit.compiler.graph import OpType
    except ImportError:
        return None
    counts: dict[str, dict[str, int]] = {}
    for net in ekm.read(Path(path).read_bytes()).networks:
        mine = counts.setdefault(net.name, {})
        for op in net.stages[0].ops:
            name = OpType(op.type).name if op.type in OpType._value2member_map_ else str(op.type)
            mine[name] = mine.get(name, 0) + 1
    return counts


def _describe(ctx: Any, model: Any, path: str) -> dict[str, Any]:
    convs = _conv_algorithms(path)
    ops = _op_counts(path)
    networks = []
    for name in model.network_names:
        net = model.network(name)

        def tensors(infos: Any) -> list[dict[str, Any]]:
            return [
                {
                    "name": t.name,
                    "dtype": str(t.dtype),
                    "shapes": [list(s) for s in t.shapes],
                    "scale": t.scale,
                    "zero_point": t.zero_point,
                    "max_bytes": t.max_bytes,
                    "dynamic": bool(t.dynamic),
                }
                for t in infos
            ]

        networks.append(
            {
                "name": net.name,
                "inputs": tensors(net.inputs),
                "outputs": tensors(net.outputs),
                "stages": [
                    {
                        "inputs": {k: list(v) for k, v in s.inputs.items()},
                        "outputs": {k: list(v) for k, v in s.outputs.items()},
                    }
                    for s in net.stages
                ],
            }
        )
        if convs is not None:
            networks[-1]["convolutions"] = convs.get(name, [])
        if ops is not None:
            networks[-1]["ops"] = ops.get(name, {})
    return {
        "model": path,
        "bytes": os.path.getsize(path),
        "kernels": ctx.kernels,
        "kernels_reason": ctx.kernels_reason,
        "networks": networks,
    }


def _print_info(info: dict[str, Any]) -> None:
    print(f"model:   {info['model']} ({info['bytes']} bytes)")
    reason = info.get("kernels_reason")
    print(f"kernels: {info['kernels']}" + (f" (XNNPACK is not used: {reason})" if reason else ""))
    for net in info["networks"]:
        print(
            f"network {net['name']!r}: {len(net['inputs'])} input(s), {len(net['outputs'])} output(s), "
            f"{len(net['stages'])} stage(s)"
        )
        for title, tensors in (("inputs", net["inputs"]), ("outputs", net["outputs"])):
            print(f"  {title}:")
            width = max(len(t["name"]) for t in tensors)
            for t in tensors:
                if t.get("dynamic"):  # its shapes are bounds: the size depends on the data
                    shapes = " | ".join(f"<={_fmt_shape(s)}" for s in t["shapes"])
                    print(f"    {t['name']:<{width}}  {t['dtype']:<8} {shapes} (dynamic)")
                    continue
                shapes = " | ".join(_fmt_shape(s) for s in t["shapes"])
                quant = f"  scale {t['scale']:g} zero_point {t['zero_point']}"
                print(f"    {t['name']:<{width}}  {t['dtype']:<8} {shapes}{quant}")
        print("  stages:")
        for index, stage in enumerate(net["stages"]):
            ins = ", ".join(f"{k}={_fmt_shape(v)}" for k, v in stage["inputs"].items())
            dynamic = {t["name"] for t in net["outputs"] if t.get("dynamic")}
            outs = ", ".join(
                f"{k}={'<=' if k in dynamic else ''}{_fmt_shape(v)}" for k, v in stage["outputs"].items()
            )
            print(f"    {index}: {ins} -> {outs}")
        if net.get("ops"):
            listing = ", ".join(
                f"{n} {t}" for t, n in sorted(net["ops"].items(), key=lambda kv: (-kv[1], kv[0]))
            )
            print(f"  ops (stage 0): {listing}")
        convs = net.get("convolutions")
        if convs:
            winograd = sum(c["algorithm"] == "winograd" for c in convs)
            others = (
                "XNNPACK where it takes the op, else the portable algorithm shown"
                if info["kernels"] == "xnnpack"
                else "the portable algorithm shown"
            )
            print(f"  convolutions: {len(convs)}, {winograd} Winograd F(4x4,3x3) (the others: {others})")
            width = max(len(c["op"]) for c in convs)
            for c in convs:
                chans = "->".join(map(str, c["channels"]))
                print(f"    {c['stage']}: {c['op']:<{width}}  {c['kernel']:<7} {chans:<9}  {c['algorithm']}")
    print("(network names are set by edgekit compile --name; by default the .ekm file's stem)")


def _open(args: argparse.Namespace) -> Any:
    import edgekit as ek

    if not Path(args.model).is_file():
        raise CliError(f"no such model file: {args.model}")
    threads = getattr(args, "threads", None)
    ctx = ek.Context(device=args.device, kernels=args.kernels, threads=threads)
    try:
        for plugin in getattr(args, "plugin", None) or []:
            ctx.load_plugin(plugin)
    except BaseException:
        ctx.close()
        raise
    return ctx


def cmd_info(args: argparse.Namespace) -> int:
    with _open(args) as ctx:
        model = ctx.load_model(args.model)
        info = _describe(ctx, model, args.model)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


def _load_npy(path: str, what: str) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {what} from {path}: {exc}") from None


def _inputs(args: argparse.Namespace, net: Any) -> dict[str, Any]:
    names = net.input_names
    if not args.input:
        if not args.random:
            raise CliError(
                f"give --input for each input of network {net.name!r} ({', '.join(names)}), or --random"
            )
        if not 0 <= args.stage < len(net.stages):
            raise CliError(
                f"network {net.name!r} has {len(net.stages)} stage(s); --stage {args.stage} is not one"
            )
        rng = np.random.default_rng(args.seed)
        result: dict[str, Any] = {}
        for t in net.inputs:
            shape = t.shapes[args.stage]
            if t.dtype.kind == "f":
                result[t.name] = rng.standard_normal(shape).astype(t.dtype)
            else:
                limits = np.iinfo(t.dtype)
                result[t.name] = rng.integers(
                    limits.min, limits.max, size=shape, endpoint=True, dtype=t.dtype
                )
        return result
    return {
        name: _load_npy(path, f"input {name!r}")
        for name, path in _assign_files(args.input, names, "input", net.name).items()
    }


def _assign_files(items: Sequence[str], names: Sequence[str], kind: str, net_name: str) -> dict[str, str]:
    """`[NAME=]FILE` arguments -> {name: file} for every input (or output) `names`, in order."""
    named: dict[str, str] = {}
    positional: list[str] = []
    for item in items:
        name, sep, path = item.partition("=")
        if sep and name in names:
            if name in named:
                raise CliError(f"{kind} {name!r} is given twice")
            named[name] = path
        elif sep and not Path(item).exists():
            raise CliError(
                f"unknown {kind} {name!r} of network {net_name!r}; its {kind}s are: {', '.join(names)}"
            )
        else:
            positional.append(item)
    rest = [n for n in names if n not in named]
    if len(positional) > len(rest):
        verb = "takes" if kind == "input" else "has"
        raise CliError(
            f"network {net_name!r} {verb} {len(names)} {kind}(s) ({', '.join(names)}), got {len(items)}"
        )
    named.update(zip(rest, positional))
    missing = [n for n in names if n not in named]
    if missing:
        raise CliError(f"missing {kind} {missing[0]!r} of network {net_name!r} (it has: {', '.join(names)})")
    return named


def _check_expected(args: argparse.Namespace, net: Any, outputs: Sequence[Any]) -> bool:
    """Compare outputs with --expect files: max |out - ref| / max(1, max |ref|) <= --tolerance."""
    files = _assign_files(args.expect, net.output_names, "output", net.name)
    ok = True
    for t, array in zip(net.outputs, outputs):
        ref = _load_npy(files[t.name], f"expected output {t.name!r}")
        if ref.shape != array.shape:
            print(
                f"  expect {t.name}: MISMATCH, shape {_fmt_shape(array.shape)} "
                f"instead of {_fmt_shape(ref.shape)}"
            )
            ok = False
            continue
        diff = np.abs(array.astype(np.float64) - ref.astype(np.float64))
        scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
        error = float(diff.max(initial=0.0)) / scale
        good = bool(np.isfinite(error)) and error <= args.tolerance
        ok = ok and good
        print(
            f"  expect {t.name}: {'OK' if good else 'MISMATCH'}, "
            f"error {error:.3g} (tolerance {args.tolerance:g})"
        )
    return ok


def _file_name(name: str) -> str:
    """An output name as a file name: path separators and odd characters become '_'."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return safe or "output"


def cmd_run(args: argparse.Namespace) -> int:
    with _open(args) as ctx:
        model = ctx.load_model(args.model)
        net = model.network(args.network)
        inputs = _inputs(args, net)
        with net.create_request() as req:
            req.set_inputs(inputs)
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                req.infer()
                req.wait()
                times.append(time.perf_counter() - start)
            outputs = req.get_outputs()
            stage = req.stage
        kernels = ctx.kernels
    print(f"network {net.name!r}, stage {stage}, {kernels} kernels")
    for t, array in zip(net.inputs, (inputs[n] for n in net.input_names)):
        print(f"  input  {t.name}: {array.dtype} {_fmt_shape(array.shape)}")
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    for t, array in zip(net.outputs, outputs):
        line = f"  output {t.name}: {array.dtype} {_fmt_shape(array.shape)}"
        if out_dir is not None:
            path = out_dir / f"{_file_name(t.name)}.npy"
            np.save(path, array)
            line += f" -> {path}"
        print(line)
    ms = [t * 1000 for t in times]
    print(
        f"latency: median {statistics.median(ms):.3f} ms over {len(ms)} launch(es)"
        + (f" (min {min(ms):.3f}, max {max(ms):.3f})" if len(ms) > 1 else "")
    )
    if args.expect and not _check_expected(args, net, outputs):
        print("error: the outputs differ from --expect", file=sys.stderr)
        return 1
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from edgekit import profiling

    if args.plot is not None:
        if args.model is not None:
            raise CliError("--plot DIR plots an existing profile directory: give no model with it")
        out = profiling.plot(args.plot)
        print(f"wrote {out}")
        return 0
    if args.model is None or args.output_dir is None:
        raise CliError("give a model and -o DIR (or --plot DIR)")
    import edgekit as ek

    args.random = True  # no --input: random inputs
    with _open(args) as ctx, ek.Profile() as prof:
        net = ctx.load_model(args.model).network(args.network)
        inputs = _inputs(args, net)
        with net.create_request() as req:
            req.set_inputs(inputs)
            for _ in range(args.repeat):
                req.infer(profile=prof)
                req.wait()
            req.get_outputs()
            stage = req.stage
        kernels = ctx.kernels
        records = prof.records
        prof.write(args.output_dir)
    rows = profiling.read_summary(args.output_dir)
    totals = [r.duration_ns / 1e6 for r in records if r.kind == "ModelExecute"]
    print(f"network {net.name!r}, stage {stage}, {kernels} kernels, {len(totals)} launch(es)")
    print(profiling.format_summary(rows))
    if totals:
        print(
            f"ModelExecute: median {statistics.median(totals):.3f} ms "
            f"(min {min(totals):.3f}, max {max(totals):.3f})"
        )
    out = Path(args.output_dir)
    print(
        f"wrote {out / profiling.TRACE} (open in https://ui.perfetto.dev or chrome://tracing), "
        f"{out / profiling.SUMMARY}"
    )
    if not args.no_plot:
        why = profiling.matplotlib_missing()
        if why:
            print(f"no plot: {why}")
        else:
            print(f"wrote {profiling.plot(out)}")
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    from edgekit import profiling

    out = Path(args.output_dir)
    if args.model is None:
        if args.compare is None:
            raise CliError("give a model to dump, or --compare MODEL.onnx to compare an existing dump")
    else:
        args.random = True
        with _open(args) as ctx:
            net = ctx.load_model(args.model).network(args.network)
            inputs = _inputs(args, net)
            with net.create_request() as req:
                req.run(inputs, dump=out)
        manifest = profiling.read_manifest(out)
        print(
            f"network {net.name!r}: {len(manifest['ops'])} op output(s) and {len(manifest['inputs'])} "
            f"input(s) written to {out} ({profiling.MANIFEST}; layout: {manifest['layout']})"
        )
        if not manifest["source_map"]:
            print(f"note: {manifest['note']}")
    if args.compare is None:
        return 0
    comparison = profiling.compare_dump(out, args.compare, args.tolerance)
    print(comparison.table())
    bad = comparison.first_bad
    checked = sum(layer.status != "n/a" for layer in comparison.layers)
    if bad is None:
        print(f"all {checked} compared layer(s) within tolerance {args.tolerance:g}")
        return 0
    what = (
        "has another shape than ONNX's"
        if bad.status == "shape"
        else (f"relative error {bad.relative:.3g} > tolerance {args.tolerance:g}")
    )
    print(
        f"first layer over the tolerance: op {bad.index} {bad.op} {bad.name!r} "
        f"(ONNX tensor {bad.tensor!r}): {what}"
    )
    return 1


def cmd_compile(args: argparse.Namespace) -> int:
    from edgekit.compiler.cli import run_compile

    result = run_compile(args)
    return int(result) if isinstance(result, int) else 0


def _first_command(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """The console script ``edgekit``; returns the exit status (0 ok, 1 error, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    compiling = _first_command(argv) == "compile"
    try:
        parser = build_parser(with_compiler=compiling)
    except ImportError as exc:
        print(
            f"error: 'edgekit compile' needs the EdgeKit compiler and the onnx package (host only): {exc}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if args.version:
        from edgekit import __version__

        print(f"edgekit {__version__}")
        return 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from edgekit.errors import EdgeKitError
    from edgekit.profiling import ProfilingError

    handlers = {
        "compile": cmd_compile,
        "info": cmd_info,
        "run": cmd_run,
        "profile": cmd_profile,
        "dump": cmd_dump,
    }
    try:
        return handlers[args.command](args)
    except BrokenPipeError:  # e.g. piped into head: the reader is gone, and so is the point of saying so
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (CliError, EdgeKitError, OSError, ProfilingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as exc:  # e.g. the compiler's CompileError
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
