"""``python -m nextdit_nodes nodes``: the nodes the runner knows, with their inputs and outputs."""

from __future__ import annotations

import argparse
import json

from ..runtime.specs import InputSpec, input_specs


def _describe_input(spec: InputSpec) -> str:
    parts = [spec.type]
    if spec.type == "COMBO":
        choices = list(spec.choices or ())
        shown = " | ".join(str(c) for c in choices[:8]) + (" | ..." if len(choices) > 8 else "")
        parts.append(f"[{shown or 'no files found'}]")
    for key in ("default", "min", "max", "step"):
        if key in spec.options:
            parts.append(f"{key} {spec.options[key]!r}")
    if not spec.required:
        parts.append("(optional)")
    return ", ".join(parts)


def node_summary(node_id: str, cls: type) -> dict:
    """A JSON-friendly description of one node class."""
    return {
        "id": node_id,
        "display_name": getattr(cls, "DISPLAY_NAME", node_id),
        "category": getattr(cls, "CATEGORY", ""),
        "description": getattr(cls, "DESCRIPTION", ""),
        "inputs": {spec.name: {"type": spec.type, "required": spec.required,
                               "choices": list(spec.choices) if spec.choices is not None else None,
                               **{k: v for k, v in spec.options.items() if k != "options"}}
                   for spec in input_specs(cls).values()},
        "outputs": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
        "output_types": list(cls.RETURN_TYPES),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }


def _command(args: argparse.Namespace) -> int:
    from ..runtime.run import runner_classes

    classes = runner_classes()
    names = sorted(classes, key=lambda n: (not n.startswith("NextDiT"), n))
    if args.json:
        print(json.dumps([node_summary(n, classes[n]) for n in names], indent=1, default=str))
        return 0
    for name in names:
        cls = classes[name]
        print(f"{name}  ({getattr(cls, 'DISPLAY_NAME', name)}; {getattr(cls, 'CATEGORY', '')})")
        description = " ".join(getattr(cls, "DESCRIPTION", "").split())
        if description:
            print(f"    {description[:150]}{'...' if len(description) > 150 else ''}")
        specs = input_specs(cls)
        width = max((len(s) for s in specs), default=0)
        for spec in specs.values():
            print(f"    {spec.name:<{width}}  {_describe_input(spec)}")
        outputs = ", ".join(cls.RETURN_TYPES) or "(none: output node)"
        print(f"    -> {outputs}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("nodes", help="list the nodes with their inputs and outputs",
                                   description="List every node the runner can execute.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_command)
