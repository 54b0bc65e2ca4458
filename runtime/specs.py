"""Reading a V1 node class's ``INPUT_TYPES``: which inputs exist, which are widgets, their options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
# Values the frontend stores after a widget with control_after_generate (its "control" widget).
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
# The value the frontend stores for the upload button it adds after an ``image_upload`` widget.
UPLOAD_VALUES = ("image",)


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # "INT", "IMAGE", ... ; "COMBO" for a list of choices
    options: dict[str, Any]
    required: bool
    choices: tuple | None = None  # COMBO choices

    @property
    def is_widget(self) -> bool:
        """True where the frontend shows a widget (and so stores a ``widgets_values`` entry)."""
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def has_control_widget(self) -> bool:
        """The frontend adds a "control after generate" value right after this widget's value."""
        return self.is_widget and self.type in ("INT", "COMBO") and bool(
            self.options.get("control_after_generate"))


    @property
    def has_upload_widget(self) -> bool:
        """The frontend adds an upload button (stored as "image") after this widget's value (LoadImage)."""
        return self.is_widget and bool(self.options.get("image_upload"))


def _spec(name: str, entry: Any, required: bool) -> InputSpec:
    if isinstance(entry, str):  # tolerated shorthand: "IMAGE" instead of ("IMAGE",)
        entry = (entry,)
    kind = entry[0] if entry else "*"
    options = dict(entry[1]) if len(entry) > 1 and isinstance(entry[1], dict) else {}
    if isinstance(kind, (list, tuple)):
        return InputSpec(name, "COMBO", options, required, tuple(kind))
    if kind == "COMBO":
        return InputSpec(name, "COMBO", options, required, tuple(options.get("options", ())))
    return InputSpec(name, str(kind), options, required)


def input_specs(cls: type) -> dict[str, InputSpec]:
    """Required then optional inputs, in ``INPUT_TYPES`` order (the order of ``widgets_values``)."""
    declared = cls.INPUT_TYPES()
    specs: dict[str, InputSpec] = {}
    for section, required in (("required", True), ("optional", False)):
        for name, entry in (declared.get(section) or {}).items():
            specs[name] = _spec(name, entry, required)
    return specs


def hidden_inputs(cls: type) -> dict[str, str]:
    """Hidden inputs: name -> kind ("PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", ...)."""
    hidden = cls.INPUT_TYPES().get("hidden") or {}
    return {name: kind if isinstance(kind, str) else kind[0] for name, kind in hidden.items()}


def widget_specs(cls: type) -> list[InputSpec]:
    return [spec for spec in input_specs(cls).values() if spec.is_widget]
