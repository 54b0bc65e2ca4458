"""nextdit-nodes: run the NewBie-image (Next-DiT) model family in ComfyUI-style node graphs.

ComfyUI imports this folder by path; installed, it is the package ``nextdit_nodes``. Importing it
must stay cheap: the node modules import torch models, transformers and diffusers lazily.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
