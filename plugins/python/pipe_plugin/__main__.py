"""``python -m pipe_plugin``: see :mod:`pipe_plugin.cli` (``python -m pipe_plugin --help``)."""

import sys

from .cli import _cli

if __name__ == "__main__":
    sys.exit(_cli())
