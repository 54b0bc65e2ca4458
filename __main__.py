"""``python -m nextdit_nodes ...``: the command line (``commands/``)."""

import sys

from .commands.cli import main

sys.exit(main())
