"""``edgekit-app`` from a Python install: runs the C edge app built into the package.

``pip install .`` puts the program at ``edgekit/bin/edgekit-app`` inside the package (rpath ``$ORIGIN/..``,
the ``libedgekit.so`` next to the modules), wherever the install scheme puts site-packages; the
``edgekit-app`` console script execs it, so it is on the environment's PATH. A bundle installed on a
board has it in ``bin/`` next to ``python/``, which is found too (``python3 -m edgekit.app``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

NAME = "edgekit-app"


def binary() -> Path | None:
    """The edge app's executable that came with this package, or None."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "bin" / NAME, package.parent.parent / "bin" / NAME):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def main() -> None:
    path = binary()
    if path is None:
        print(
            f"error: this edgekit package has no {NAME} (expected {Path(__file__).parent / 'bin' / NAME}): "
            "reinstall it with pip install . from the EdgeKit sources",
            file=sys.stderr,
        )
        sys.exit(1)
    os.execv(path, [str(path), *sys.argv[1:]])


if __name__ == "__main__":
    main()
