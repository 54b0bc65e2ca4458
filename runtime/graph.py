"""The runner's one graph form, shared by both workflow formats ComfyUI writes.

A node's inputs map each input name to a constant or to a :class:`Link` (an upstream node id and
its output slot), exactly the information of ComfyUI's API ("prompt") format. A graph loaded from
the UI format also keeps the UI JSON (written into PNGs as the ``workflow`` chunk) and where each
widget value lives in it, so ``--set`` changes both and a saved PNG restores what actually ran.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .errors import WorkflowError


@dataclass(frozen=True)
class Link:
    """Output ``slot`` of node ``node_id``."""

    node_id: str
    slot: int


@dataclass
class GraphNode:
    id: str
    class_type: str
    inputs: dict[str, Any]  # name -> constant or Link
    title: str | None = None
    # UI format only: input name -> (UI node id, index in that node's widgets_values).
    widget_sources: dict[str, tuple[str, int]] = field(default_factory=dict)

    def describe(self) -> str:
        """``node 7 "Sampler" (NextDiTSampler)``: how every message names a node."""
        title = f' "{self.title}"' if self.title and self.title != self.class_type else ""
        return f"node {self.id}{title} ({self.class_type})"


@dataclass
class Workflow:
    nodes: dict[str, GraphNode]
    format: str  # "ui" or "api"
    ui: dict | None = None  # the UI JSON, for the PNG "workflow" chunk

    def to_api(self) -> dict:
        """The API-format prompt ComfyUI would queue for this graph (the PNG "prompt" chunk)."""
        prompt = {}
        for node in self.nodes.values():
            inputs = {name: [value.node_id, value.slot] if isinstance(value, Link)
                      else _api_constant(value) for name, value in node.inputs.items()}
            prompt[node.id] = {"inputs": inputs, "class_type": node.class_type,
                               "_meta": {"title": node.title or node.class_type}}
        return prompt

    def find(self, ref: str) -> GraphNode:
        """The node whose id or title is ``ref``; an error lists the candidates otherwise."""
        if ref in self.nodes:
            return self.nodes[ref]
        matches = [node for node in self.nodes.values() if ref in (node.title, node.class_type)]
        titled = [node for node in matches if node.title == ref]
        matches = titled or matches or self._loosely_named(ref)
        if len(matches) == 1:
            return matches[0]
        if not matches:
            known = ", ".join(f"{n.id} ({n.title or n.class_type})" for n in self.nodes.values())
            raise WorkflowError(f"no node with id or title {ref!r}; the nodes are: {known}")
        which = ", ".join(node.describe() for node in matches)
        raise WorkflowError(f"{ref!r} names several nodes ({which}); use the node id instead")

    def _loosely_named(self, ref: str) -> list[GraphNode]:
        """Nodes whose title or type matches ``ref`` ignoring case, else those with ``ref`` as whole
        words of it ("sampler" finds "NextDiT Sampler"), so a title typed from memory works."""
        wanted = ref.casefold().split()

        def names(node: GraphNode) -> list[str]:
            return [name.casefold() for name in (node.title, node.class_type) if name]

        exact = [node for node in self.nodes.values() if ref.casefold() in names(node)]
        if exact or not wanted:
            return exact
        return [node for node in self.nodes.values()
                if any(_has_words(name.split(), wanted) for name in names(node))]

    def set_input(self, node_id: str, name: str, value: Any) -> None:
        """Set a constant input, in the graph and in the UI JSON the PNGs will carry."""
        node = self.nodes[node_id]
        node.inputs[name] = value
        source = node.widget_sources.get(name)
        if source is None or self.ui is None:
            return
        ui_id, index = source
        for ui_node in self.ui.get("nodes", []):
            if str(ui_node.get("id")) == ui_id and isinstance(ui_node.get("widgets_values"), list):
                ui_node["widgets_values"][index] = value

    def copy(self) -> Workflow:
        return copy.deepcopy(self)


def _api_constant(value: Any) -> Any:
    # A list constant would read as a link in the API format; ComfyUI wraps it the same way.
    return {"__value__": value} if isinstance(value, list) else value


def _has_words(words: list[str], wanted: list[str]) -> bool:
    """Whether ``wanted`` occurs in ``words`` as consecutive whole words."""
    return any(words[i:i + len(wanted)] == wanted for i in range(len(words) - len(wanted) + 1))
