"""``python -m nextdit_nodes``: placeholder until the runner lands (issue 7)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nextdit_nodes")
    parser.parse_args(argv)
    return 0
