"""A tqdm bar over each node's steps, fed by the host's progress hook (``nodes/host/progress.py``)."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from ..nodes import host
from .graph import GraphNode


class ProgressDisplay:
    """One bar per node that reports progress; a new bar when the total changes or restarts."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bar = None
        self._label = ""
        self._last = -1

    def on_node(self, node: GraphNode) -> None:
        """The executor is about to run ``node``: close the previous bar, name the next one."""
        self.close()
        self._label = node.title or node.class_type

    def update(self, done: int, total: int, preview=None, note: str | None = None) -> None:
        if not self.enabled:
            return
        if self._bar is None or self._bar.total != total or done < self._last:
            self.close()
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=self._label, unit="step", file=sys.stderr,
                             dynamic_ncols=True, leave=True)
        if note:
            self._bar.set_postfix_str(note, refresh=False)
        self._bar.update(done - self._bar.n)
        self._last = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._last = None, -1


@contextlib.contextmanager
def progress_display(enabled: bool = True) -> Iterator[ProgressDisplay]:
    """Install the display as the host's progress hook for the duration of a run."""
    display = ProgressDisplay(enabled)
    previous = host.set_progress_hook(display.update)
    try:
        yield display
    finally:
        display.close()
        host.set_progress_hook(previous)
