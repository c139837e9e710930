"""``python -m edgekit``: the ``edgekit`` command (edgekit.cli)."""

import sys

from edgekit.cli import main

sys.exit(main())
