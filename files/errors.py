"""WeightsError: the one exception of every weight loader; how messages name a file.

The pack's user-facing exceptions say ``__module__ = "nextdit_nodes"``: ComfyUI's error panel
titles an error with the class's module and name (``execution.full_type_name``), and inside
ComfyUI the pack's modules are named after the folder it was loaded from, a server path.
"""

from __future__ import annotations

from collections.abc import Callable

PUBLIC_MODULE = "nextdit_nodes"

_display: Callable[[object], str] = str


def show_paths_with(display: Callable[[object], str]) -> None:
    """The host sets how messages name a file (on a server: by its place in the model folders,
    so that no server path reaches whoever sent the prompt)."""
    global _display
    _display = display


def shown_path(path) -> str:
    """``path`` as a message shows it."""
    return _display(path)


class WeightsError(Exception):
    """A weight file that cannot be loaded as asked: the message names the file and the problem."""

    __module__ = PUBLIC_MODULE

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{shown_path(path)}: {problem}")
