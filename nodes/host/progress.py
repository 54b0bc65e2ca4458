"""Per-step progress and interrupts: ComfyUI's ProgressBar and interrupt flag inside ComfyUI; a
hook and the pack's own flag headless (the runner's server sets it when the user presses Cancel)."""

from __future__ import annotations

import threading
from typing import Callable

ProgressHook = Callable[[int, int, object, "str | None"], None]  # (done, total, preview or None, note or None)
_progress_hook: ProgressHook | None = None
TextHook = Callable[[str], None]   # a text for the running node
_text_hook: TextHook | None = None


def set_progress_hook(hook: ProgressHook | None) -> ProgressHook | None:
    """Headless runner's progress display; returns the previous hook so callers can restore it."""
    global _progress_hook
    previous, _progress_hook = _progress_hook, hook
    return previous


_previews_wanted = True


def set_previews_wanted(wanted: bool) -> None:
    """Headless hosts: the user's preview setting (``serve``: the editor's preview method)."""
    global _previews_wanted
    _previews_wanted = wanted


def previews_wanted() -> bool:
    """Whether samplers should make latent previews: inside ComfyUI its preview method
    (``--preview-method`` or the editor's setting; ``none`` = no previews), headless the host's."""
    try:
        from comfy.cli_args import LatentPreviewMethod, args
    except ImportError:
        return _previews_wanted
    return args.preview_method != LatentPreviewMethod.NoPreviews


def set_text_hook(hook: TextHook | None) -> TextHook | None:
    """Headless hosts: where a node's text goes (``serve``: on the node); returns the previous hook."""
    global _text_hook
    previous, _text_hook = _text_hook, hook
    return previous


def show_text(text: str, node_id: str | None) -> None:
    """Show ``text`` on the node (warnings, reports): inside ComfyUI through the progress-text
    channel core's nodes use (``PromptServer.send_progress_text``), which the frontend draws on
    the node without any extension; headless through the text hook (``serve`` sends the same
    frame). A node's ``ui.text`` alone reaches only the console of a pack without JavaScript."""
    if not text:
        return
    try:
        from server import PromptServer  # ComfyUI's server module
    except ImportError:
        PromptServer = None
    instance = getattr(PromptServer, "instance", None)
    if instance is not None and hasattr(instance, "send_progress_text"):
        if node_id is not None:
            instance.send_progress_text(text, node_id)
    elif _text_hook is not None:
        _text_hook(text)


class Progress:
    """Per-step progress; inside ComfyUI an update also raises if the user pressed Cancel."""

    def __init__(self, total: int, node_id: str | None = None):
        self.total = total
        self.node_id = node_id
        self._bar = None
        try:
            import comfy.utils  # only inside ComfyUI
            self._bar = comfy.utils.ProgressBar(total, node_id=node_id)
        except ImportError:
            pass

    def update(self, done: int, preview=None, note: str | None = None) -> None:
        """``note``: a few words shown with the progress: inside ComfyUI on the node, as core's
        nodes show text (``PromptServer.send_progress_text``); headless in the progress line."""
        if self._bar is not None:
            self._bar.update_absolute(done, self.total, preview)
            if note and self.node_id is not None:
                from server import PromptServer  # ComfyUI's server module

                PromptServer.instance.send_progress_text(note, self.node_id)
        elif _progress_hook is not None:
            _progress_hook(done, self.total, preview, note)


class Interrupted(Exception):
    """Headless: the host asked the running graph to stop (``request_interrupt``)."""


_interrupt = threading.Event()


def request_interrupt(requested: bool = True) -> None:
    """Headless hosts: ask the running graph to stop at its next check (False clears a request)."""
    if requested:
        _interrupt.set()
    else:
        _interrupt.clear()


def check_interrupt() -> None:
    """Raise if the user cancelled: ComfyUI's interrupt exception inside ComfyUI, else
    :class:`Interrupted` once per ``request_interrupt`` (the request is used up, as in ComfyUI)."""
    try:
        import comfy.model_management as mm
    except ImportError:
        if _interrupt.is_set():
            _interrupt.clear()
            raise Interrupted("interrupted by the user") from None
        return
    mm.throw_exception_if_processing_interrupted()
