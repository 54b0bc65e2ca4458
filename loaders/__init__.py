"""Reading weight files: formats, key normalisation, config inference, dtypes."""

from .errors import WeightsError

__all__ = ["WeightsError", "load_dit"]


def __getattr__(name):
    # load_dit pulls in torch; keep `from nextdit_nodes.loaders import WeightsError` cheap.
    if name == "load_dit":
        from .dit import load_dit

        return load_dit
    raise AttributeError(name)
