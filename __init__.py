"""nextdit-nodes: run the NewBie-image (Next-DiT) model family in ComfyUI-style node graphs.

ComfyUI imports this folder by path; installed, it is the package ``nextdit_nodes``. Importing it
must stay cheap: the node modules import torch models, transformers and diffusers lazily.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

# The user-facing exceptions name this package as their module (files/errors.py says why); here
# they are found under that name (pickle looks them up so), imported only when asked for.
_PUBLIC_ERRORS = {"WeightsError": ".files.errors", "PromptError": ".prompting.errors",
                  "NonFiniteError": ".sampling.sample"}


def __getattr__(name: str):
    if name in _PUBLIC_ERRORS:
        from importlib import import_module

        return getattr(import_module(_PUBLIC_ERRORS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
