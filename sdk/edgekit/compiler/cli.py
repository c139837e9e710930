"""``edgekit compile``: the command-line front end of the compiler (wired into ``edgekit`` by cli.py).

edgekit compile model.onnx -o model.ekm --input-shape input=1x3x224x224
edgekit compile model.onnx -o model.ekm --input-shape input=1x3x224x224 --stage input=4x3x224x224
edgekit compile a.onnx b.onnx -o both.ekm --name det --name cls
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from edgekit.compiler.driver import NetworkSpec, compile_networks, parse_shape
from edgekit.compiler.graph import CompileError

USAGE_ERROR = 2
COMPILE_ERROR = 1


class UsageError(ValueError):
    pass


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models", nargs="+", metavar="MODEL.onnx", help="ONNX model(s); each becomes one network"
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUT.ekm", help="the .ekm file to write")
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=SHAPE",
        help="static shape of an input for the first stage, e.g. input=1x3x224x224 (repeat for more inputs)",
    )
    parser.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="NAME=SHAPE[,NAME2=SHAPE2]",
        help="add a stage (another set of static input shapes), e.g. input=4x3x224x224",
    )
    parser.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NET",
        help="network name, once per model, in order (default: OUT.ekm's stem for one model, else each "
        "ONNX file's stem; a runtime holds each network name once, and exporters name every graph alike)",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="LIB.so",
        help="a plugin op library built for this machine (docs/plugins.md): the models' nodes of a custom "
        "domain it registers become its ops (repeat for more libraries)",
    )
    parser.add_argument(
        "--conv-algorithm",
        choices=["auto", "winograd", "gemm"],
        default="auto",
        help="3x3 stride-1 convolutions: 'auto' (default) marks Winograd F(4x4,3x3) where it pays "
        "(16 to 256 input and output channels, output 8x8 or larger, 14x14 above 128 channels), "
        "'winograd' on every one that qualifies (group 1, dilation 1), 'gemm' on none (im2col or the "
        "XNNPACK provider run them)",
    )


def _assignment(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, shape = text.partition("=")
    if not sep or not name.strip():
        raise UsageError(f"bad shape assignment {text!r}: expected NAME=1x3x224x224")
    try:
        return name.strip(), parse_shape(shape)
    except ValueError as exc:
        raise UsageError(f"{name.strip()}: {exc}") from exc


def _stages(input_shapes: Sequence[str], stages: Sequence[str]) -> list[dict[str, tuple[int, ...]]]:
    result: list[dict[str, tuple[int, ...]]] = []
    if input_shapes:
        result.append(dict(_assignment(text) for text in input_shapes))
    for text in stages:
        # "a=1x3,b=2,3,4": split at the commas that start a new NAME=
        parts = [p for p in re.split(r",(?=[^,=]*=)", text) if p]
        if not parts:
            raise UsageError(f"empty --stage {text!r}")
        result.append(dict(_assignment(p) for p in parts))
    return result


def _specs(args: argparse.Namespace) -> list[NetworkSpec]:
    models: list[str] = list(args.models)
    names: list[str] = list(args.name)
    if len(names) > len(models):
        raise UsageError(f"{len(names)} --name for {len(models)} model(s)")
    stages = _stages(args.input_shape, args.stage)
    if len(models) == 1 or not stages:
        return [NetworkSpec(m, names[i] if i < len(names) else None, stages) for i, m in enumerate(models)]
    # several models: each stage's shapes go to the model that has the input of that name
    import onnx  # only needed here

    specs = []
    used: set[str] = set()
    for index, model in enumerate(models):
        try:
            proto = onnx.load(model, load_external_data=False)
        except Exception as exc:
            raise CompileError(f"{model}: not a readable ONNX model ({exc})") from exc
        initializers = {i.name for i in proto.graph.initializer}
        inputs = {i.name for i in proto.graph.input if i.name not in initializers}
        mine = [{k: v for k, v in stage.items() if k in inputs} for stage in stages]
        used.update(k for stage in mine for k in stage)
        mine = [stage for stage in mine if stage] or []
        specs.append(NetworkSpec(model, names[index] if index < len(names) else None, mine))
    unknown = sorted({k for stage in stages for k in stage} - used)
    if unknown:
        raise UsageError(f"no model has an input named {', '.join(unknown)}")
    return specs


def run_compile(args: argparse.Namespace) -> int:
    """Run ``edgekit compile``; returns the exit status (0, 1 compile error, 2 usage error)."""
    try:
        specs = _specs(args)
        report = compile_networks(
            specs, args.output, log=print, plugins=args.plugin, conv_algorithm=args.conv_algorithm
        )
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except CompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return COMPILE_ERROR
    print(report.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edgekit compile", description="Compile ONNX models to an .ekm file."
    )
    add_compile_arguments(parser)
    return run_compile(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
