"""Run a validated graph: dependencies first, reusing outputs whose inputs did not change.

Caching follows ComfyUI's classic cache: a node's key is its class, its ``IS_CHANGED`` value
(``NaN`` = never equal), its constant inputs and, for links, the upstream node's key and slot,
so a change anywhere upstream changes every key downstream. Keys survive between ``run`` calls
of one :class:`Executor`; entries not used by the latest run are dropped, as ComfyUI does. As in
ComfyUI, every key (``IS_CHANGED`` included) is computed before the first node runs, so a host
learns up front which nodes come from the cache, and the host's interrupt is checked before each
node (nodes that take long check it themselves, the sampler every step).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..nodes import host
from .errors import NodeExecutionError
from .graph import GraphNode, Link, Workflow
from .specs import hidden_inputs, input_specs
from .validate import ModelCheck, needed_nodes, validate

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    outputs: dict[str, tuple]  # node id -> its outputs
    ui: dict[str, dict]  # node id -> the "ui" part it returned (images saved, ...)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)


@dataclass
class _Entry:
    outputs: tuple
    ui: dict | None


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, float) and math.isnan(value):
        return object()  # NaN: never equal to anything, so the node always runs
    try:
        hash(value)
    except TypeError:
        return object()  # an unhashable constant cannot be compared: treat as changed
    return value


def _hidden_values(node: GraphNode, cls: type, prompt: dict, extra_pnginfo: dict | None) -> dict:
    values = {"PROMPT": prompt, "EXTRA_PNGINFO": extra_pnginfo, "UNIQUE_ID": node.id}
    return {name: values.get(kind) for name, kind in hidden_inputs(cls).items()}


def _await(value: Any) -> Any:
    """Node functions may be coroutines (newer ComfyUI allows ``async def``)."""
    if inspect.iscoroutine(value):
        return asyncio.run(value)
    return value


class Executor:
    """Executes workflows with ``classes`` (node id -> V1 class); keeps its cache between runs."""

    def __init__(self, classes: Mapping[str, type], model_check: ModelCheck | None = None):
        self.classes = classes
        self.model_check = model_check
        self._cache: dict[Any, _Entry] = {}
        self._instances: dict[tuple[str, str], object] = {}
        # A cache key names its upstream nodes' keys by a number, so keys stay flat however long
        # the chain (nested tuples thousands deep would exhaust the stack when hashed).
        self._key_numbers: dict[Any, int] = {}
        self._numbers = itertools.count()

    def run(self, workflow: Workflow, on_node: Callable[[GraphNode], None] | None = None,
            on_cached: Callable[[list[str]], None] | None = None,
            on_output: Callable[[GraphNode, dict], None] | None = None,
            targets: list[str] | None = None) -> RunResult:
        """Validate then execute every node the output nodes need; returns outputs and UI data.

        Hooks for a host: ``on_cached(ids)`` once, with the nodes the cache will serve;
        ``on_node(node)`` before a node runs; ``on_output(node, ui)`` for each node (run or
        cached) that returned UI data, such as the images it saved. ``targets``: run only these
        output nodes (and what they need).
        """
        order = needed_nodes(workflow, self.classes, targets)
        validate(workflow, self.classes, order, self.model_check)
        prompt = workflow.to_api()
        extra_pnginfo = {"workflow": workflow.ui} if workflow.ui is not None else None
        keys: dict[str, Any] = {}
        for node_id in order:
            keys[node_id] = self._key(workflow.nodes[node_id], keys, prompt, extra_pnginfo)
        result = RunResult({}, {})
        result.cached = [node_id for node_id in order if keys[node_id] in self._cache]
        if on_cached is not None:
            on_cached(list(result.cached))
        used = {}
        for node_id in order:
            node = workflow.nodes[node_id]
            entry = self._cache.get(keys[node_id])
            if entry is None:
                host.check_interrupt()
                if on_node is not None:
                    on_node(node)
                entry = self._execute(node, result.outputs, prompt, extra_pnginfo)
                result.executed.append(node_id)
                self._cache[keys[node_id]] = entry  # kept even if a later node fails
            elif node_id not in result.cached:  # the same work as a node earlier in this run
                result.cached.append(node_id)
            used[keys[node_id]] = entry
            result.outputs[node_id] = entry.outputs
            if entry.ui is not None:
                result.ui[node_id] = entry.ui
                if on_output is not None:
                    on_output(node, entry.ui)
        self._cache = used  # as ComfyUI's classic cache: only what the latest run used
        if len(self._key_numbers) > 100 * max(len(used), 1000):  # a long-lived server: forget old keys
            self._key_numbers = {key: number for key, number in self._key_numbers.items() if key in used}
        return result

    # ---- cache keys ----------------------------------------------------------------------------

    def _key(self, node: GraphNode, keys: dict[str, Any], prompt: dict,
             extra_pnginfo: dict | None) -> tuple:
        cls = self.classes[node.class_type]
        parts: list[Any] = [node.class_type, self._is_changed(node, cls, prompt, extra_pnginfo)]
        if getattr(cls, "NOT_IDEMPOTENT", False) or "UNIQUE_ID" in hidden_inputs(cls).values():
            parts.append(("node", node.id))
        for name in sorted(node.inputs):
            value = node.inputs[name]
            if isinstance(value, Link):
                parts.append((name, ("link", self._key_number(keys[value.node_id]), value.slot)))
            else:
                parts.append((name, _hashable(value)))
        return tuple(parts)

    def _key_number(self, key: tuple) -> int:
        number = self._key_numbers.get(key)
        if number is None:
            number = self._key_numbers[key] = next(self._numbers)
        return number

    def _is_changed(self, node: GraphNode, cls: type, prompt: dict, extra_pnginfo: dict | None
                    ) -> Any:
        function = getattr(cls, "IS_CHANGED", None)
        if function is None:
            return False
        # As ComfyUI: every input, linked ones as None (only constants are known), plus hidden.
        arguments = {name: (None if isinstance(value, Link) else value)
                     for name, value in node.inputs.items()}
        arguments.update(_hidden_values(node, cls, prompt, extra_pnginfo))
        try:
            return _hashable(_await(function(**arguments)))
        except Exception as error:  # noqa: BLE001 - ComfyUI logs and re-runs the node
            log.warning("%s: IS_CHANGED raised %s; running the node", node.describe(), error)
            return object()

    # ---- one node ------------------------------------------------------------------------------

    def _instance(self, node: GraphNode) -> object:
        key = (node.id, node.class_type)
        if key not in self._instances:
            self._instances[key] = self.classes[node.class_type]()
        return self._instances[key]

    def _execute(self, node: GraphNode, outputs: dict[str, tuple], prompt: dict,
                 extra_pnginfo: dict | None) -> _Entry:
        cls = self.classes[node.class_type]
        specs = input_specs(cls)
        kwargs = {}
        for name, value in node.inputs.items():
            if name not in specs:
                continue  # ComfyUI ignores inputs the class does not declare
            kwargs[name] = outputs[value.node_id][value.slot] if isinstance(value, Link) else value
        kwargs.update(_hidden_values(node, cls, prompt, extra_pnginfo))
        try:
            returned = _await(getattr(self._instance(node), cls.FUNCTION)(**kwargs))
        except host.Interrupted:
            raise
        except Exception as error:
            raise NodeExecutionError(f"{node.describe()} failed: {type(error).__name__}: {error}",
                                     node.id, node.class_type) from error
        return self._unpack(node, cls, returned)

    @staticmethod
    def _unpack(node: GraphNode, cls: type, returned: Any) -> _Entry:
        ui = None
        if isinstance(returned, dict):
            ui = returned.get("ui")
            returned = returned.get("result", ())
        if not isinstance(returned, (tuple, list)):
            raise NodeExecutionError(f"{node.describe()} returned {type(returned).__name__}; a node "
                                     f"must return a tuple (or a dict with 'result')",
                                     node.id, node.class_type)
        expected = len(cls.RETURN_TYPES)
        if len(returned) != expected and not (expected == 0 and ui is not None):
            raise NodeExecutionError(f"{node.describe()} returned {len(returned)} values, but "
                                     f"RETURN_TYPES declares {expected}", node.id, node.class_type)
        return _Entry(tuple(returned), ui)
