"""``python -m nextdit_nodes COMMAND ...``: the command line.

Each subcommand is a module of this package with ``register(subparsers)``, which adds its parser
and sets ``func`` (called with the parsed arguments; returns an exit code or None for 0). A command
module imports nothing heavy at the top: the work it does (the runner, the editor's server,
training) is imported inside ``func``, when the command runs, so ``--help`` stays fast and
torch-free.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from importlib import import_module

from ..runtime.errors import EXIT_INTERRUPTED, EXIT_USAGE, RunnerError

# Subcommand modules, each with register(subparsers), in the order --help lists them.
_COMMAND_MODULES = ("run", "demo", "nodes", "distill", "distill_decoder", "train_lora", "train_controlnet",
                    "train_embedded", "check_embedded", "embedded_lora_data", "embedded_controlnet_data",
                    "quantize", "serve")

EXIT_CODES_HELP = """exit codes:
  0    success
  1    internal error (a bug: please report it with the traceback)
  2    bad command line
  3    the workflow cannot be used: not JSON, not a workflow, unknown node type, broken link,
       cycle, wrong number of widget values, or an input value that is not allowed
  4    a model file the workflow names is missing (the message says where we looked and where
       to get it)
  5    a node failed while running (the message names the node)
  130  interrupted (Ctrl-C)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nextdit_nodes",
        description="Run NewBie-image / Next-DiT workflows without a browser, and the pack's tools.",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        import_module(f".{name}", __package__).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command (``argv``: the arguments after the program name); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    quiet = getattr(args, "quiet", False)     # -q: warnings and errors only
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except RunnerError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    finally:
        # A trainer under torchrun holds its process group through its DDP wrapper, kept alive past the
        # command by reference cycles (an LR schedule's bound method). Collected at interpreter exit,
        # gloo's worker threads would be torn down mid-finalization and abort the process (SIGABRT,
        # "terminate called without an active exception"; pytorch/pytorch#179291), after a finished
        # job. Collecting here frees the group while the interpreter is whole.
        gc.collect()
