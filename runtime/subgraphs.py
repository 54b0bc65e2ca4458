"""Subgraphs flattened the way ComfyUI's frontend does when it queues a prompt.

A UI workflow may hold subgraph definitions (``definitions.subgraphs``); a node whose ``type`` is a
definition's id is an instance of it. The frontend (``ExecutableNodeDTO`` and ``graphToPrompt`` in
Comfy-Org/ComfyUI_frontend) queues every inner node under the id ``"<instance id>:<inner id>"``
(nested instances add one segment each) and resolves links across the boundaries:

- an inner input linked from the subgraph's input node (id -10) takes whatever feeds the
  instance's input of the same name outside; when nothing is linked there, the value of the
  instance's promoted widget (``widgets_values_named``), else the inner node keeps its own widget;
- an outer input linked from an instance's output takes the inner link into the subgraph's output
  node (id -20) of that slot;
- a muted instance gives nothing, a bypassed one passes its first input of the same type through.

Before that the frontend renumbers inner nodes whose ids collide with the root graph's (or with an
earlier definition's) from the workflow's ``last_node_id`` up (``deduplicateSubgraphNodeIds``), so
ids here match the ones the editor shows and sends. The result is a flat UI graph (string node ids,
0.4 link arrays) that the rest of the loader reads like any other; frontend-only nodes inside
(reroutes, primitives, notes, muted and bypassed nodes) are resolved there as usual.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import WorkflowError

INPUT_NODE, OUTPUT_NODE = -10, -20
MODE_MUTED, MODE_BYPASS = 2, 4


def definitions_of(data: dict) -> dict[str, dict]:
    return {sub["id"]: sub for sub in (data.get("definitions") or {}).get("subgraphs") or []
            if isinstance(sub, dict) and "id" in sub}


def has_subgraphs(data: dict) -> bool:
    definitions = definitions_of(data)
    return any(node.get("type") in definitions for node in data.get("nodes") or []
               if isinstance(node, dict))


def _link_record(entry: Any) -> tuple:
    """(id, origin id, origin slot, target id, target slot, type) from an array or object link."""
    if isinstance(entry, dict):
        return (entry.get("id"), entry.get("origin_id"), entry.get("origin_slot"),
                entry.get("target_id"), entry.get("target_slot"), entry.get("type"))
    if isinstance(entry, list) and len(entry) >= 5:
        return (*entry[:5], entry[5] if len(entry) > 5 else None)
    raise WorkflowError(f"malformed link entry {entry!r} in the workflow")


def _deduplicated(data: dict, definitions: dict[str, dict]) -> dict[str, dict]:
    """Copies of the definitions with colliding inner node ids renumbered, as the frontend does."""
    used = {node.get("id") for node in data.get("nodes") or []}
    last = max([data.get("last_node_id") or 0, (data.get("state") or {}).get("lastNodeId") or 0,
                *[i for i in used if isinstance(i, int)]])
    result = {}
    for sub_id, definition in definitions.items():
        definition = copy.deepcopy(definition)
        remap = {}
        for node in definition.get("nodes") or []:
            node_id = node.get("id")
            if not isinstance(node_id, int):
                continue
            if node_id in used:
                while last + 1 in used:
                    last += 1
                last += 1
                remap[node_id] = node["id"] = last
            else:
                last = max(last, node_id)
            used.add(node["id"])
        for link in definition.get("links") or []:
            if isinstance(link, dict):
                link["origin_id"] = remap.get(link.get("origin_id"), link.get("origin_id"))
                link["target_id"] = remap.get(link.get("target_id"), link.get("target_id"))
        result[sub_id] = definition
    return result


class _Flattener:
    def __init__(self, definitions: dict[str, dict]):
        self.definitions = definitions
        self.nodes: list[dict] = []
        # flat link id -> (origin, origin slot, type); origin is a flat node id, or
        # ("input", instance id, slot) for a link from a subgraph's input node.
        self.links: dict[str, tuple] = {}
        self.instances: dict[str, tuple[dict, dict]] = {}  # instance id -> (definition, its node)
        self.outer_inputs: dict[tuple[str, str], str] = {}  # (instance, input name) -> flat link
        self.inner_outputs: dict[tuple[str, int], str] = {}  # (instance, output slot) -> flat link

    def add(self, nodes: list, links: list, prefix: str, owner: str | None, path: tuple) -> None:
        for entry in links:
            link_id, origin, origin_slot, target, target_slot, kind = _link_record(entry)
            flat_id = f"{prefix}{link_id}"
            if origin == INPUT_NODE:
                if owner is None:
                    raise WorkflowError(f"link {link_id} starts at a subgraph input node outside "
                                        f"any subgraph (the file is damaged)")
                self.links[flat_id] = (("input", owner, origin_slot), origin_slot, kind)
            else:
                self.links[flat_id] = (f"{prefix}{origin}", origin_slot, kind)
            if target == OUTPUT_NODE and owner is not None:
                self.inner_outputs[(owner, target_slot)] = flat_id
        for raw in nodes:
            if not isinstance(raw, dict) or "id" not in raw or "type" not in raw:
                raise WorkflowError(f"malformed node entry in the workflow: {str(raw)[:200]}")
            node_id = f"{prefix}{raw['id']}"
            inputs = [dict(entry, link=None if entry.get("link") is None else f"{prefix}{entry['link']}")
                      for entry in raw.get("inputs") or []]
            definition = self.definitions.get(raw["type"])
            if definition is None:
                self.nodes.append(dict(raw, id=node_id, inputs=inputs))
                continue
            if raw["type"] in path:
                raise WorkflowError(f"node {node_id}: subgraph {definition.get('name') or raw['type']!r} "
                                    f"contains itself")
            self.instances[node_id] = (definition, dict(raw, inputs=inputs))
            for entry in inputs:
                if entry["link"] is not None:
                    self.outer_inputs[(node_id, entry.get("name"))] = entry["link"]
            self.add(definition.get("nodes") or [], definition.get("links") or [], f"{node_id}:",
                     node_id, (*path, raw["type"]))

    def resolve(self, link_id: str, seen: frozenset = frozenset()) -> tuple | None:
        """The link's source after crossing subgraph boundaries: (node id, slot), ("const",
        value, owner, name) for a promoted widget's value, or None (nothing connected)."""
        if link_id in seen:
            raise WorkflowError(f"link {link_id} loops through subgraph boundaries")
        seen = seen | {link_id}
        if link_id not in self.links:
            raise WorkflowError(f"a node uses link {link_id}, which its graph's 'links' list does "
                                f"not contain (the file is damaged)")
        origin, slot, _ = self.links[link_id]
        if isinstance(origin, tuple):  # from the subgraph's input node: continue outside
            _, owner, index = origin
            definition, instance = self.instances[owner]
            names = [entry.get("name") for entry in definition.get("inputs") or []]
            if not 0 <= index < len(names):
                raise WorkflowError(f"node {owner}: subgraph input {index} does not exist")
            outer = self.outer_inputs.get((owner, names[index]))
            if outer is not None:
                return self.resolve(outer, seen)
            promoted = instance.get("widgets_values_named") or {}
            return ("const", promoted[names[index]]) if names[index] in promoted else None
        if origin in self.instances:  # an instance's output: continue inside
            definition, instance = self.instances[origin]
            mode = instance.get("mode", 0)
            if mode == MODE_MUTED:
                return None
            if mode == MODE_BYPASS:
                return self._bypass(origin, instance, definition, slot, seen)
            inner = self.inner_outputs.get((origin, slot))
            return None if inner is None else self.resolve(inner, seen)
        return origin, slot

    def _bypass(self, node_id: str, instance: dict, definition: dict, slot: int, seen) -> tuple | None:
        outputs = definition.get("outputs") or []
        want = outputs[slot].get("type") if 0 <= slot < len(outputs) else None
        inputs = instance.get("inputs") or []
        for index in [slot, *range(len(inputs))]:
            if index < len(inputs) and inputs[index].get("type") == want and inputs[index]["link"]:
                return self.resolve(inputs[index]["link"], seen)
        return None


def flatten_subgraphs(data: dict) -> dict:
    """A copy of the UI workflow ``data`` with every subgraph instance replaced by its inner
    nodes (ids ``"<instance>:<inner>"``), links resolved across the boundaries."""
    flattener = _Flattener(_deduplicated(data, definitions_of(data)))
    flattener.add(data.get("nodes") or [], data.get("links") or [], "", None, ())
    nodes, links = [], []
    for node in flattener.nodes:
        for index, entry in enumerate(node["inputs"]):
            if entry["link"] is None:
                continue
            source = flattener.resolve(entry["link"])
            kind = flattener.links[entry["link"]][2]
            if source is None:
                entry["link"] = None
                continue
            link_id = f"flat{len(links)}"
            if source[0] == "const":  # a promoted widget's value: a primitive holding it
                holder = f"{node['id']}<{entry.get('name')}>"
                nodes.append({"id": holder, "type": "PrimitiveNode", "mode": 0,
                              "widgets_values": [source[1]]})
                source = (holder, 0)
            links.append([link_id, source[0], source[1], node["id"], index, kind])
            entry["link"] = link_id
        nodes.append(node)
    return {**{k: v for k, v in data.items() if k != "definitions"}, "nodes": nodes, "links": links}
