"""``edgekit-app`` and ``edgekit-remote-server`` from a Python install: the C programs of the package.

``pip install .`` puts the programs in ``edgekit/bin/`` inside the package (rpath ``$ORIGIN/..``, the
``libedgekit.so`` next to the modules), wherever the install scheme puts site-packages; the console scripts
exec them, so they are on the environment's PATH. A bundle installed on a board has them in ``bin/`` next
to ``python/``, which is found too (``python3 -m edgekit.app``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

NAME = "edgekit-app"
SERVER = "remote_server"


def binary(name: str = NAME) -> Path | None:
    """The executable ``name`` (the edge app by default) that came with this package, or None."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "bin" / name, package.parent.parent / "bin" / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _exec(name: str) -> None:
    path = binary(name)
    if path is None:
        print(
            f"error: this edgekit package has no {name} (expected {Path(__file__).parent / 'bin' / name}): "
            "reinstall it with pip install . from the EdgeKit sources",
            file=sys.stderr,
        )
        sys.exit(1)
    os.execv(path, [str(path), *sys.argv[1:]])


def main() -> None:
    """``edgekit-app``: the standalone edge app (docs/edge-app.md)."""
    _exec(NAME)


def server_main() -> None:
    """``edgekit-remote-server``: remote_server on this machine (docs/remote-protocol.md)."""
    _exec(SERVER)


if __name__ == "__main__":
    main()
