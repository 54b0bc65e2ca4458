"""Check a graph before anything runs, with ComfyUI's rules (``execution.py`` ``validate_inputs``).

Required inputs present, links pointing at existing nodes and outputs of a matching type, no
cycles, constants converted to their declared type and inside min/max, COMBO values among the
choices, then the class's own ``VALIDATE_INPUTS`` (which receives only the inputs its signature
names, linked ones as ``None``, and takes over the default checks of those inputs).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping

from .errors import MissingModelError, Problem, ValidationError
from .graph import GraphNode, Link, Workflow
from .specs import InputSpec, input_specs

# Called for a COMBO value that is not among the choices: True = a model file input whose file
# exists (a path, or a file added since), a string = a model file input whose file is missing
# (the message), False = not a model file input.
ModelCheck = Callable[[GraphNode, str, Any], "bool | str"]


def needed_nodes(workflow: Workflow, classes: Mapping[str, type], targets: list[str] | None = None
                 ) -> list[str]:
    """Output nodes (or only ``targets``, the editor's "run selected outputs") and everything
    they depend on, dependencies first; raises on cycles."""
    outputs = [node_id for node_id, node in workflow.nodes.items()
               if getattr(classes[node.class_type], "OUTPUT_NODE", False)
               and (targets is None or node_id in targets)]
    if not outputs:
        raise ValidationError([Problem("the workflow has no output node (for example SaveImage or "
                                       "PreviewImage), so there is nothing to run", kind="prompt_no_outputs")])
    order: list[str] = []
    state: dict[str, str] = {}  # "visiting" | "done"
    # Depth-first with an explicit stack (a chain of thousands of nodes must not hit Python's
    # recursion limit): each entry is a node and the iterator over its upstream nodes.
    for output in outputs:
        if state.get(output) == "done":
            continue
        state[output] = "visiting"
        stack = [(output, _upstream(workflow, output))]
        while stack:
            node_id, upstream = stack[-1]
            for parent in upstream:
                if state.get(parent) == "done":
                    continue
                if state.get(parent) == "visiting":
                    path = [entry[0] for entry in stack]
                    cycle = path[path.index(parent):] + [parent]
                    shown = " -> ".join(workflow.nodes[n].describe() for n in cycle)
                    raise ValidationError([Problem(f"dependency cycle: {shown}; remove one of these links",
                                                   parent, "dependency_cycle")])
                state[parent] = "visiting"
                stack.append((parent, _upstream(workflow, parent)))
                break
            else:
                stack.pop()
                state[node_id] = "done"
                order.append(node_id)
    return order


def _upstream(workflow: Workflow, node_id: str):
    return iter([value.node_id for value in workflow.nodes[node_id].inputs.values()
                 if isinstance(value, Link) and value.node_id in workflow.nodes])


def _types_match(received: Any, expected: str) -> bool:
    if received == expected or "*" in (received, expected):
        return True
    if not isinstance(received, str):
        return False
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def _number(spec: InputSpec, value: Any) -> int | float:
    """An INT or FLOAT constant checked for its type and finiteness (ValueError says what it is not)."""
    whole = spec.type == "INT"
    kind = "a whole number" if whole else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"is not {kind}")
    if whole and isinstance(value, int):
        return value
    try:
        number = float(value) if not (whole and isinstance(value, str)) else int(value.strip())
    except ValueError:
        raise ValueError(f"is not {kind}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError("is not a finite number")
    if whole and isinstance(number, float):
        if not number.is_integer():
            raise ValueError("is not a whole number")
        return int(number)
    return number


def _convert(spec: InputSpec, value: Any) -> Any:
    if spec.type in ("INT", "FLOAT"):
        return _number(spec, value)
    if spec.type == "STRING":
        return str(value)
    if spec.type == "BOOLEAN":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return bool(value)
    return value


def _check_constant(node: GraphNode, spec: InputSpec, model_check: ModelCheck | None,
                    missing: list[Problem], ranges: bool = True) -> list[Problem]:
    """Type (numbers also finite), then, with ``ranges``, min/max and the COMBO choices."""
    where = f"{node.describe()}: input {spec.name!r}"
    value = node.inputs[spec.name]

    def problem(message: str, kind: str) -> list[Problem]:
        return [Problem(f"{where}: {message}", node.id, kind, spec.name)]

    try:
        value = node.inputs[spec.name] = _convert(spec, value)
    except ValueError as error:
        return problem(f"{value!r} {error}", "invalid_input_type")
    if not ranges:
        return []
    low, high = spec.options.get("min"), spec.options.get("max")
    if low is not None and value < low:
        return problem(f"{value} is smaller than the minimum {low}", "value_smaller_than_min")
    if high is not None and value > high:
        return problem(f"{value} is bigger than the maximum {high}", "value_bigger_than_max")
    if spec.type == "COMBO" and value not in (spec.choices or ()):
        verdict = model_check(node, spec.name, value) if model_check is not None else False
        if isinstance(verdict, str):
            missing.append(Problem(verdict, node.id, "value_not_in_list", spec.name))
            return []
        if verdict:
            return []
        shown = ", ".join(repr(c) for c in spec.choices[:20]) if spec.choices else "(none)"
        more = f" and {len(spec.choices) - 20} more" if spec.choices and len(spec.choices) > 20 else ""
        return problem(f"{value!r} is not one of the choices: {shown}{more}", "value_not_in_list")
    return []


def _unlisted_choice(spec: InputSpec, value: Any) -> bool:
    return spec.type == "COMBO" and value not in (spec.choices or ())


def _custom_validation(workflow: Workflow, classes: Mapping[str, type], node: GraphNode,
                       cls: type) -> list[Problem]:
    function = getattr(cls, "VALIDATE_INPUTS", None)
    if function is None:
        return []
    argspec = inspect.getfullargspec(function)
    wanted = set(argspec.args) | set(argspec.kwonlyargs)
    everything = argspec.varkw is not None
    # As ComfyUI: constants by value, linked inputs as None (not computed yet).
    arguments = {name: (None if isinstance(value, Link) else value)
                 for name, value in node.inputs.items() if everything or name in wanted}
    if "input_types" in wanted:  # the types arriving on linked inputs
        arguments["input_types"] = {}
        for name, value in node.inputs.items():
            upstream = workflow.nodes.get(value.node_id) if isinstance(value, Link) else None
            returns = classes[upstream.class_type].RETURN_TYPES if upstream else ()
            if upstream and 0 <= value.slot < len(returns):
                arguments["input_types"][name] = returns[value.slot]
    try:
        verdict = function(**arguments)
    except Exception as error:  # noqa: BLE001 - reported as a validation problem of this node
        return [Problem(f"{node.describe()}: VALIDATE_INPUTS raised {type(error).__name__}: {error}",
                        node.id, "exception_during_validation")]
    if verdict is True:
        return []
    detail = "" if verdict is False else f": {verdict}"
    # Which inputs an editor should point at: those the message names, else every one checked.
    checked = [name for name in arguments if name != "input_types"]
    named = [name for name in checked if name in str(verdict)]
    return [Problem(f"{node.describe()}: invalid inputs{detail}", node.id, "custom_validation_failed",
                    ", ".join(named or checked) or None)]


def validate(workflow: Workflow, classes: Mapping[str, type], node_ids: list[str],
             model_check: ModelCheck | None = None) -> None:
    """Check ``node_ids``; raise :class:`ValidationError` listing every problem found."""
    problems: list[Problem] = []
    missing_models: list[Problem] = []
    for node_id in node_ids:
        node = workflow.nodes[node_id]
        cls = classes[node.class_type]
        custom = getattr(cls, "VALIDATE_INPUTS", None)
        argspec = inspect.getfullargspec(custom) if custom is not None else None
        custom_names = set(argspec.args) if argspec else set()
        custom_all = bool(argspec and argspec.varkw)
        missing_before, problems_before = len(missing_models), len(problems)
        for spec in input_specs(cls).values():
            if spec.name not in node.inputs:
                if spec.required:
                    problems.append(Problem(f"{node.describe()}: required input {spec.name!r} is "
                                            f"missing (connect it, or give it a value)", node.id,
                                            "required_input_missing", spec.name))
                continue
            value = node.inputs[spec.name]
            if isinstance(value, Link):
                problems += _check_link(workflow, classes, node, spec, value,
                                        check_type="input_types" not in custom_names)
            elif spec.name not in custom_names and not custom_all:
                problems += _check_constant(node, spec, model_check, missing_models)
            elif spec.type != "COMBO":   # the class checks the range itself; the type is still the runner's
                problems += _check_constant(node, spec, model_check, missing_models, ranges=False)
            elif _unlisted_choice(spec, value) and model_check is not None:
                # The class checks this input itself, but a missing model file deserves the
                # runner's message (where we looked, where to get it) and exit code.
                verdict = model_check(node, spec.name, value)
                if isinstance(verdict, str):
                    missing_models.append(Problem(verdict, node.id, "value_not_in_list", spec.name))
        # A value its type check refused is not handed on (one message per bad input: the class
        # would only say again that it is no number).
        refused = {p.input_name for p in problems[problems_before:] if p.kind == "invalid_input_type"}
        if len(missing_models) == missing_before and not refused & custom_names:
            problems += _custom_validation(workflow, classes, node, cls)
    if problems:
        raise ValidationError(problems + missing_models)
    if missing_models:
        raise MissingModelError("\n".join(map(str, missing_models)), missing_models)


def _check_link(workflow: Workflow, classes: Mapping[str, type], node: GraphNode,
                spec: InputSpec, link: Link, check_type: bool = True) -> list[Problem]:
    """A link must reach an existing output; its type must match unless the class checks types
    itself (a VALIDATE_INPUTS that takes ``input_types``, as in ComfyUI)."""
    where = f"{node.describe()}: input {spec.name!r}"

    def problem(message: str, kind: str) -> list[Problem]:
        return [Problem(f"{where} {message}", node.id, kind, spec.name)]

    upstream = workflow.nodes.get(link.node_id)
    if upstream is None:
        return problem(f"is linked to node {link.node_id}, which is not in the workflow", "bad_linked_input")
    returns = classes[upstream.class_type].RETURN_TYPES
    if not 0 <= link.slot < len(returns):
        return problem(f"is linked to output {link.slot} of {upstream.describe()}, which has only "
                       f"{len(returns)} output(s)", "bad_linked_input")
    received = returns[link.slot]
    if check_type and not _types_match(received, spec.type):
        return problem(f"expects {spec.type} but is linked to a {received} output of "
                       f"{upstream.describe()}", "return_type_mismatch")
    return []
