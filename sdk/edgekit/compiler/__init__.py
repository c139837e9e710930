"""The EdgeKit model compiler (host only): ONNX -> ``.ekm`` (docs/model-format.md).

    from edgekit.compiler import compile_model
    report = compile_model("model.onnx", "model.ekm", stages=[{"input": (1, 3, 224, 224)}])
    print(report.summary())

Pipeline: onnx_import (load, constants) -> lower (static shapes, constant folding via fold, ONNX ops to
EdgeKit ops) -> passes (BatchNorm folding, activation fusion, dead code) -> layout (NHWC for spatial
ops; an ai.edgekit EdgeKitNetwork node is inlined there, see subnet) -> plan (static memory plan) ->
ekm (the file). reference.run_reference interprets a compiled
file with numpy. This package never imports the runtime (edgekit._core).
"""

from edgekit.compiler.driver import (
    CompileReport,
    NetworkReport,
    NetworkSpec,
    StageReport,
    compile_model,
    compile_networks,
    parse_shape,
)
from edgekit.compiler.graph import CompileError, UnsupportedOpsError

__all__ = [
    "CompileError",
    "CompileReport",
    "NetworkReport",
    "NetworkSpec",
    "StageReport",
    "UnsupportedOpsError",
    "compile_model",
    "compile_networks",
    "parse_shape",
]
