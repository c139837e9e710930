"""Runs on the emulated board (its python3), under the instruction-count plugin: one engine loads one
model and infers 1 + N times on one input, 1 thread; the first and the last outputs are saved for the
host to check.

    python3 bench_board_guest.py ENGINE MODEL INPUT.npy OUTPUT N

ENGINE: edgekit-portable, edgekit-xnnpack, edgekit-auto (MODEL: .ekm, its network named as the file) or
onnxruntime (MODEL: .onnx). Started by edgekit_packaging.bench_board. The plugin marks the count
(edgekit_packaging.icount.MARK) after load + 1 run and after the N more: the difference over N is the
instructions per inference, start-up (Python, imports, loading, the first run) left out. Keep it to the
board's Python 3.11 and Debian's numpy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

MARK = 0x4943504D41524B  # edgekit_packaging.icount.MARK (this file runs on the board, without it)


def mark() -> None:
    """Make the instruction-count plugin note the count so far (a harmless lseek on no file)."""
    try:
        os.lseek(-1, MARK, 0)
    except OSError:
        pass


def main(argv: list[str]) -> int:
    engine, model, input_path, output, extra_text = argv
    extra = int(extra_text)
    x = np.load(input_path)
    if engine.startswith("edgekit-"):
        import edgekit as ek

        with ek.Context(device=0, kernels=engine.removeprefix("edgekit-"), threads=1) as ctx:
            request = ctx.load_model(model).network(Path(model).stem).create_request()
            first = last = request.run([x])[0]
            mark()
            for _ in range(extra):
                last = request.run([x])[0]
            mark()
    elif engine == "onnxruntime":
        import onnxruntime as ort  # type: ignore[import-untyped]

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        first = last = session.run(None, {name: x})[0]
        mark()
        for _ in range(extra):
            last = session.run(None, {name: x})[0]
        mark()
    else:
        print(f"unknown engine {engine!r}", file=sys.stderr)
        return 2
    np.save(f"{output}.first.npy", np.asarray(first))
    np.save(f"{output}.last.npy", np.asarray(last))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
