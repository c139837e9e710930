"""Plugin op libraries shipped with EdgeKit (docs/plugins.md). The build installs the example plugin,
``libedgekit_example_plugin.so`` (ops ``edgekit.example::Swish`` and ``edgekit.example::ChannelAffine``),
into this folder, for this machine (``pip install .``) or for the board (``invoke build --arch aarch64``).
"""

from __future__ import annotations

from pathlib import Path

EXAMPLE_PLUGIN = "libedgekit_example_plugin.so"
EXAMPLE_DOMAIN = "edgekit.example"


def example_plugin_path() -> Path:
    """The example plugin library of this installation; FileNotFoundError when it was not built."""
    path = Path(__file__).resolve().parent / EXAMPLE_PLUGIN
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the example plugin is built with EdgeKit (pip install . or invoke build)"
        )
    return path


__all__ = ["EXAMPLE_DOMAIN", "EXAMPLE_PLUGIN", "example_plugin_path"]
