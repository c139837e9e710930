"""Seed the C fuzz targets' corpora from the test models (docs/hardening.md):

- ekm: each ONNX seed of the onnx_import corpus that compiles, as .ekm (float32 and int8 models, many
  op types), up to the target's max_len;
- remote_session and remote_frames: real client sessions recorded by build/fuzz/record_sessions (memory
  calls; model upload, load, launches and runs of a few of those models; a paired session's start).

    python tests/fuzz/seeds.py [--onnx DIR] [--out DIR]

Writes into tests/fuzz/corpus/TARGET (or --out/TARGET); existing seeds of the same name are replaced.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

from fuzzing import BUILD, HERE, TARGETS, build_c_targets

from edgekit.compiler import CompileError, compile_model

# Sessions are recorded with the smallest compiled seeds: a session's bytes include its model.
SESSION_MODELS = 6


def compile_seeds(onnx_dir: Path, out: Path) -> list[Path]:
    """Compile every ONNX file under onnx_dir that compiles into out/ (named by content), smallest first."""
    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(p for p in onnx_dir.iterdir() if p.is_file()):
            ekm = Path(tmp) / "seed.ekm"
            try:
                compile_model(path, ekm)
            except CompileError as exc:  # a seed kept for the compiler's error paths
                print(f"    skipped {path.name}: {str(exc).splitlines()[0][:100]}")
                continue
            data = ekm.read_bytes()
            if len(data) > TARGETS["ekm"].max_len:
                print(f"    skipped {path.name}: {len(data)} bytes as .ekm")
                continue
            seed = out / f"{path.stem}-{hashlib.sha1(data).hexdigest()[:8]}.ekm"
            seed.write_bytes(data)
            made.append(seed)
    return sorted(made, key=lambda p: p.stat().st_size)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--onnx", type=Path, default=TARGETS["onnx_import"].corpus, help="ONNX seeds to compile"
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "corpus", help="corpus root (default tests/fuzz/corpus)"
    )
    args = parser.parse_args()
    build_c_targets()
    print(f"==> compiling the ONNX seeds of {args.onnx}", flush=True)
    models = compile_seeds(args.onnx, args.out / "ekm")
    print(f"    {len(models)} .ekm seeds in {args.out / 'ekm'}")
    print("==> recording remote sessions", flush=True)
    recorder = BUILD / "record_sessions"
    subprocess.run([str(recorder), str(args.out), *[str(p) for p in models[:SESSION_MODELS]]], check=True)
    for name in ("remote_session", "remote_frames"):
        print(f"    {len(list((args.out / name).iterdir()))} seeds in {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
