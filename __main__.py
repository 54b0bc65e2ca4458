"""``python -m nextdit_nodes ...``: the headless command line, plus ``serve`` (the editor)."""

import sys

from .runtime.cli import main
from .server import command as serve_command

sys.exit(main(extra_commands=(serve_command,)))
