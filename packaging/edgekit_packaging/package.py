"""All the packages of one build, into dist/: bundle tarball, .deb, wheel, ext4 image."""

from __future__ import annotations

from pathlib import Path

from edgekit_packaging.bundle import PackageError, lay_out, make_tarball, read_build
from edgekit_packaging.debian import make_deb
from edgekit_packaging.image import make_image
from edgekit_packaging.wheels import make_wheel
from toolchains.steps import Steps, detail

FORMATS = ("bundle", "deb", "wheel", "image")


def parse_formats(text: str) -> list[str]:
    """'all' or a comma list of FORMATS."""
    if text in ("", "all"):
        return list(FORMATS)
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in FORMATS]
    if unknown or not chosen:
        raise PackageError(
            f"unknown package format: {', '.join(unknown) or repr(text)} "
            f"(choose from all, {', '.join(FORMATS)})"
        )
    return chosen


def make_packages(stage: Path, dist: Path, work: Path, formats: list[str], steps: Steps) -> dict[str, Path]:
    build = read_build(stage)
    made: dict[str, Path] = {}
    with steps("lay out the bundle"):
        folder = lay_out(build, work)
    if "bundle" in formats:
        with steps("bundle tarball"):
            made["bundle"] = make_tarball(folder, dist / f"{build.name}.tar.gz")
    if "deb" in formats:
        with steps(".deb"):
            made["deb"] = make_deb(build, folder, dist, work)
    if "wheel" in formats:
        if build.python:
            with steps("wheel"):
                made["wheel"] = make_wheel(build, dist, work)
        else:
            detail(f"no wheel: board {build.board} has no Python")
    if "image" in formats:
        with steps("ext4 image"):
            made["image"] = make_image(build, folder, dist)
    return made
