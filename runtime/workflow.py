"""Load ComfyUI workflow JSON, UI format (0.4 and 1.0) or API format, into one :class:`Workflow`.

UI format: ``widgets_values`` are positional over the class's widget inputs in ``INPUT_TYPES``
order, plus the frontend's extra "control after generate" value after a widget that has that
option (the seed). Frontend-only nodes are resolved the way the frontend does when it queues a
prompt: a ``PrimitiveNode`` becomes the constant it holds, a ``Reroute`` passes its link through,
notes and groups are ignored, a muted node (mode 2) is left out together with its links, and a
bypassed node (mode 4) hands each consumer the upstream link of its first input of the same type.
Subgraphs are flattened first, as the frontend does (``subgraphs.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from .errors import Problem, UnknownNodeTypeError, ValidationError, WorkflowError
from .graph import GraphNode, Link, Workflow
from .specs import CONTROL_VALUES, UPLOAD_VALUES, widget_specs
from .subgraphs import flatten_subgraphs, has_subgraphs

NOTE_TYPES = ("Note", "MarkdownNote")
MAX_NESTING = 200  # a UI workflow with subgraphs nests about 10 levels; json itself fails near 1000
MODE_MUTED, MODE_BYPASS = 2, 4


def load_workflow(source: str | Path | Mapping, classes: Mapping[str, type]) -> Workflow:
    """Read a workflow (a .json path, a .png ComfyUI saved, or the parsed JSON) into one graph."""
    data = _read_json(source) if not isinstance(source, Mapping) else source
    if (depth := nesting_depth(data)) > MAX_NESTING:
        raise WorkflowError(f"the workflow's JSON nests {depth} levels deep; a workflow needs far "
                            f"fewer (at most {MAX_NESTING} are accepted)")
    data = json.loads(json.dumps(data)) if isinstance(source, Mapping) else data
    try:
        return _load(data, classes)
    except RecursionError:
        raise WorkflowError("the workflow's links chain too deeply to follow") from None


def nesting_depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (an explicit stack: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, (list, tuple)):
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_NESTING:
            return deepest  # enough to refuse it
        stack.extend((child, depth + 1) for child in item)
    return deepest


def _load(data: dict, classes: Mapping[str, type]) -> Workflow:
    if isinstance(data.get("nodes"), list):
        return _from_ui(data, classes)
    if isinstance(data.get("prompt"), dict):  # a POST /prompt body
        ui = ((data.get("extra_data") or {}).get("extra_pnginfo") or {}).get("workflow")
        return Workflow(_from_api(data["prompt"], classes), "api", ui)
    if data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return Workflow(_from_api(data, classes), "api")
    raise WorkflowError(
        "this JSON is not a ComfyUI workflow: expected the UI format (an object with a 'nodes' "
        "list, as ComfyUI's Save writes) or the API format (an object mapping node ids to "
        "{'class_type': ..., 'inputs': ...}, as 'Export (API)' writes)")


def _read_png(path: Path) -> str:
    """The workflow ComfyUI (or this runner) embedded in a PNG: the UI graph, else the prompt."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            chunks = dict(getattr(image, "text", {}) or {})
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # ValueError: a text chunk that inflates beyond PIL's MAX_TEXT_CHUNK (a zlib bomb);
        # DecompressionBombError: dimensions beyond PIL's MAX_IMAGE_PIXELS.
        raise WorkflowError(f"cannot read {str(path)!r} as a PNG: {error}") from None
    text = chunks.get("workflow") or chunks.get("prompt")
    if text is None:
        raise WorkflowError(f"{str(path)!r} carries no workflow: only PNGs saved by ComfyUI's "
                            f"SaveImage (or this runner) hold one")
    return text


def _read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        if path.suffix.lower() == ".png":
            text = _read_png(path)
        elif path.suffix.lower() in (".jpg", ".jpeg", ".webp", ".gif", ".bmp"):
            raise WorkflowError(f"{str(path)!r} is a {path.suffix.lstrip('.').upper()} image, which carries no "
                                f"workflow: give the workflow's .json, or a .png saved by ComfyUI's SaveImage "
                                f"(or this runner), which holds its graph")
        else:
            text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkflowError(f"workflow file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise WorkflowError(f"cannot read workflow file {str(path)!r}: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise WorkflowError(
            f"{str(path)!r} is not valid JSON (line {error.lineno}, column {error.colno}: "
            f"{error.msg}); a workflow is the .json file ComfyUI saves") from None
    except RecursionError:
        raise WorkflowError(f"{str(path)!r} nests its JSON too deeply to be a workflow") from None
    if not isinstance(data, dict):
        raise WorkflowError(f"{str(path)!r} holds a JSON {type(data).__name__}, not a workflow object")
    return data


def _unknown_type_error(unknown: list[tuple[str, str, str | None]], classes: Mapping
                        ) -> UnknownNodeTypeError:
    lines = []
    for node_id, class_type, title in unknown:
        name = f' "{title}"' if title and title != class_type else ""
        hint = (" (a group node: convert it back to nodes in ComfyUI first)"
                if class_type.startswith(("workflow>", "workflow/")) else "")
        lines.append(f"node {node_id}{name}: unknown node type {class_type!r}{hint}")
    return UnknownNodeTypeError(
        "\n".join(lines) + "\nThis runner runs the pack's nodes (python -m nextdit_nodes nodes "
        "lists them) and the core nodes " + ", ".join(sorted(n for n in classes if not
                                                             n.startswith("NextDiT")))
        + "; run other nodes inside ComfyUI.", unknown)


# ---- API format --------------------------------------------------------------------------------

def _is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int)
            and not isinstance(value[1], bool))


def _from_api(prompt: dict, classes: Mapping[str, type]) -> dict[str, GraphNode]:
    nodes, unknown, bad_links = {}, [], []
    for node_id, entry in prompt.items():
        node_id = str(node_id)
        if not isinstance(entry, dict) or not isinstance(entry.get("class_type"), str):
            raise WorkflowError(f"node {node_id}: an API-format node needs a 'class_type' string")
        title = (entry.get("_meta") or {}).get("title")
        if entry["class_type"] not in classes:
            unknown.append((node_id, entry["class_type"], title))
            continue
        raw_inputs = entry.get("inputs") or {}
        if not isinstance(raw_inputs, dict):
            raise WorkflowError(f"node {node_id}: 'inputs' must be an object mapping input names "
                                f"to values or links, not a {type(raw_inputs).__name__}")
        inputs = {}
        for name, value in raw_inputs.items():
            if _is_link(value):
                inputs[name] = Link(str(value[0]), int(value[1]))
            elif isinstance(value, list):  # in the API format every list is a link (ComfyUI's rule)
                bad_links.append(Problem(
                    f"node {node_id}: input {name!r} is {json.dumps(value)[:80]}, which is neither a "
                    f"value nor a link [node_id, output_index]; wrap a list value as "
                    f'{{"__value__": [...]}}', node_id, "bad_linked_input", name))
            elif isinstance(value, dict) and "__value__" in value:
                inputs[name] = value["__value__"]
            else:
                inputs[name] = value
        nodes[node_id] = GraphNode(node_id, entry["class_type"], inputs, title)
    if unknown:
        raise _unknown_type_error(unknown, classes)
    if bad_links:
        raise ValidationError(bad_links)
    return nodes


# ---- UI format ---------------------------------------------------------------------------------

def _ui_links(data: dict) -> dict[int, tuple[str, int, str]]:
    """link id -> (origin node id, origin slot, type); 0.4 writes arrays, 1.0 objects."""
    links = {}
    for entry in data.get("links") or []:
        if isinstance(entry, dict):
            link_id, origin, slot, kind = (entry.get("id"), entry.get("origin_id"),
                                           entry.get("origin_slot"), entry.get("type"))
        elif isinstance(entry, list) and len(entry) >= 5:
            link_id, origin, slot = entry[0], entry[1], entry[2]
            kind = entry[5] if len(entry) > 5 else None
        else:
            raise WorkflowError(f"malformed link entry {entry!r} in the workflow's 'links'")
        links[link_id] = (str(origin), int(slot), kind)
    return links


class _UIGraph:
    """The UI JSON's nodes and links, with the frontend's rules for resolving a link."""

    def __init__(self, data: dict):
        self.nodes: dict[str, dict] = {}
        for raw in data["nodes"]:
            if not isinstance(raw, dict) or "id" not in raw or "type" not in raw:
                raise WorkflowError(f"malformed node entry in the workflow: {str(raw)[:200]}")
            self.nodes[str(raw["id"])] = raw
        self.links = _ui_links(data)

    def resolve(self, link_id: int, want_type: Any, consumer: str, seen: frozenset = frozenset()):
        """A Link, ("const", value, (ui id, index)) for a PrimitiveNode, or None (no input)."""
        if link_id in seen:
            raise WorkflowError(f"{consumer}: its input link {link_id} loops through reroutes")
        if link_id not in self.links:
            raise WorkflowError(f"{consumer}: an input uses link {link_id}, which the workflow's "
                                f"'links' list does not contain (the file is damaged)")
        origin_id, slot, _ = self.links[link_id]
        origin = self.nodes.get(origin_id)
        if origin is None:
            raise WorkflowError(f"{consumer}: an input is linked to node {origin_id}, which is not "
                                f"in the workflow (the file is damaged)")
        seen = seen | {link_id}
        if origin["type"] == "Reroute":
            inputs = origin.get("inputs") or []
            upstream = inputs[0].get("link") if inputs else None
            return None if upstream is None else self.resolve(upstream, want_type, consumer, seen)
        if origin["type"] == "PrimitiveNode":
            values = origin.get("widgets_values") or []
            return ("const", values[0], (origin_id, 0)) if values else None
        mode = origin.get("mode", 0)
        if mode == MODE_MUTED:
            return None
        if mode == MODE_BYPASS:
            inputs = origin.get("inputs") or []
            for index in [slot, *range(len(inputs))]:
                if index < len(inputs) and inputs[index].get("type") == want_type:
                    upstream = inputs[index].get("link")
                    return None if upstream is None else self.resolve(upstream, want_type,
                                                                      consumer, seen)
            return None
        return Link(origin_id, slot)


def _from_ui(data: dict, classes: Mapping[str, type]) -> Workflow:
    # The PNG "workflow" chunk keeps the subgraphs; the graph that runs is the flattened one.
    graph = _UIGraph(flatten_subgraphs(data) if has_subgraphs(data) else data)
    nodes, unknown = {}, []
    for node_id, raw in graph.nodes.items():
        class_type = raw["type"]
        if class_type in ("Reroute", "PrimitiveNode", *NOTE_TYPES):
            continue
        if raw.get("mode", 0) in (MODE_MUTED, MODE_BYPASS):
            continue
        cls = classes.get(class_type)
        if cls is None:
            unknown.append((node_id, class_type, raw.get("title")))
            continue
        title = raw.get("title") or getattr(cls, "DISPLAY_NAME", None) or class_type
        node = GraphNode(node_id, class_type, {}, title)
        _map_widgets(node, raw, cls)
        for entry in raw.get("inputs") or []:
            if entry.get("link") is None:
                continue
            name = (entry.get("widget") or {}).get("name") or entry.get("name")
            resolved = graph.resolve(entry["link"], entry.get("type"), node.describe())
            if isinstance(resolved, Link):
                node.inputs[name] = resolved
                node.widget_sources.pop(name, None)
            elif isinstance(resolved, tuple):
                node.inputs[name] = resolved[1]
                node.widget_sources[name] = resolved[2]
        nodes[node_id] = node
    if unknown:
        raise _unknown_type_error(unknown, classes)
    return Workflow(nodes, "ui", data)


def _default_value(spec) -> Any:
    if "default" in spec.options:
        return spec.options["default"]
    if spec.type == "COMBO":
        return spec.choices[0] if spec.choices else ""
    return {"INT": max(0, spec.options.get("min", 0)), "FLOAT": 0.0, "STRING": "",
            "BOOLEAN": False}.get(spec.type)


def _map_widgets(node: GraphNode, raw: dict, cls: type) -> None:
    """Put the node's ``widgets_values`` on its widget inputs, in ``INPUT_TYPES`` order."""
    specs = widget_specs(cls)
    values = raw.get("widgets_values")
    if values is None or values == []:
        # Hand-written files may list only links; the frontend would show default widgets.
        node.inputs.update({spec.name: _default_value(spec) for spec in specs})
        return
    if isinstance(values, dict):  # some frontends store widgets by name
        for spec in specs:
            node.inputs[spec.name] = values.get(spec.name, _default_value(spec))
        return
    position = 0
    for spec in specs:
        if position >= len(values):
            if not spec.required:   # an optional widget added to the node after the workflow was
                continue            # saved: left out, so the node function uses its default
            raise _widget_count_error(node, specs, values)
        node.inputs[spec.name] = values[position]
        node.widget_sources[spec.name] = (node.id, position)
        position += 1
        if spec.has_control_widget and position < len(values) and values[position] in CONTROL_VALUES:
            position += 1
        if spec.has_upload_widget and position < len(values) and values[position] in UPLOAD_VALUES:
            position += 1
    if position != len(values):
        raise _widget_count_error(node, specs, values)


def _widget_count_error(node: GraphNode, specs: list, values: list) -> WorkflowError:
    names = []
    for spec in specs:
        names.append(spec.name)
        if spec.has_control_widget:
            names.append(f"(control after generate for {spec.name})")
    return WorkflowError(
        f"{node.describe()}: widgets_values has {len(values)} values {values!r}, but this node's "
        f"widgets are {len(names)}: {', '.join(names)}. The workflow was probably saved with "
        f"another version of the node; open it in ComfyUI, check the node, and save it again.")
