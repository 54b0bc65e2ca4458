"""``/object_info``: each node class described as ComfyUI's ``server.py`` ``node_info`` does for
V1 classes, so the editor builds the same widgets, sockets and menus as inside ComfyUI."""

from __future__ import annotations

import logging
from typing import Mapping

from ..runtime.image_nodes import IMAGE_NODE_MODULES

log = logging.getLogger(__name__)

# Where the editor says a node comes from (its node-library badge): the pack as a custom node
# folder, the core nodes as in ComfyUI.
PACK_MODULE = "custom_nodes.nextdit-nodes"
CORE_MODULES = {"SaveImage": "nodes", "PreviewImage": "nodes", **IMAGE_NODE_MODULES}
PRIMITIVES_MODULE = "comfy_extras.nodes_primitive"


def node_info(node_id: str, cls: type, python_module: str) -> dict:
    declared = cls.INPUT_TYPES()
    info = {
        "input": declared,
        "input_order": {section: list(inputs) for section, inputs in declared.items()},
        "is_input_list": getattr(cls, "INPUT_IS_LIST", False),
        "output": list(cls.RETURN_TYPES),
        "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES))),
        "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
        "name": node_id,
        "display_name": getattr(cls, "DISPLAY_NAME", node_id),
        "description": getattr(cls, "DESCRIPTION", ""),
        "python_module": python_module,
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        "has_intermediate_output": False,
        "search_aliases": list(getattr(cls, "SEARCH_ALIASES", [])),
    }
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = list(cls.OUTPUT_TOOLTIPS)
    return info


def object_info(classes: Mapping[str, type], pack_ids: set[str]) -> dict:
    """Every node the runner executes; a class that fails to describe itself is logged and left
    out (as ComfyUI does) instead of breaking the editor."""
    out = {}
    for node_id, cls in classes.items():
        module = PACK_MODULE if node_id in pack_ids else CORE_MODULES.get(node_id, PRIMITIVES_MODULE)
        try:
            out[node_id] = node_info(node_id, cls, module)
        except Exception:  # noqa: BLE001 - one broken class must not hide the others
            log.exception("describing node %s failed", node_id)
    return out
