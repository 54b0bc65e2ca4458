"""Names kept for scripts written against the pack's earlier layout: ``load_dit`` (now
``dit/checkpoint.py``) and ``WeightsError`` (``files/errors.py``)."""

from ..files.errors import WeightsError

__all__ = ["WeightsError", "load_dit"]


def __getattr__(name):
    # load_dit pulls in torch; keep `from nextdit_nodes.loaders import WeightsError` cheap.
    if name == "load_dit":
        from ..dit.checkpoint import load_dit

        return load_dit
    raise AttributeError(name)
