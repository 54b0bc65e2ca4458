"""``python -m nextdit_nodes ...``: the headless command line."""

import sys

from .runtime.cli import main

sys.exit(main())
