"""Node registry: each node module lists its own classes; the pack's mapping is built once here."""

from importlib import import_module

# Node modules, each defining NODE_CLASSES (a list of node classes with a DISPLAY_NAME attribute).
_NODE_MODULES = ("dit", "lora", "controlnet", "prompt", "text", "sampling", "steering", "vae")
# Words a user may type in the editor's node search for this pack (the model family's names),
# added to each node's own aliases.
PACK_ALIASES = ("newbie", "newbie-image", "lumina", "lumina 2", "next-dit", "nextdit")


def _collect():
    classes, names = {}, {}
    for module_name in _NODE_MODULES:
        module = import_module(f".{module_name}", __name__)
        for cls in module.NODE_CLASSES:
            node_id = cls.__name__
            if node_id in classes:
                raise RuntimeError(f"node id {node_id} is defined twice")
            classes[node_id] = cls
            names[node_id] = cls.DISPLAY_NAME
            cls.SEARCH_ALIASES = [*getattr(cls, "SEARCH_ALIASES", ()), *PACK_ALIASES]
    return classes, names


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = _collect()
