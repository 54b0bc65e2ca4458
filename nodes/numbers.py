"""FLOAT inputs whose range check inside ComfyUI also refuses NaN and infinities, per input.

ComfyUI checks a FLOAT widget's constant with ``value < min`` and ``value > max``
(``execution.py`` ``validate_inputs``). NaN compares false with everything, so a NaN sent by an
API client (JSON allows it, as does the string "nan") passes that check and reaches the node.
The minimum is therefore a ``FiniteMin``: a float (the editor receives a plain number) whose
reflected comparison Python tries first when it stands on the right of ``<``, so ``value < min``
is also true for NaN and ±inf. Core's own check then refuses them with an error that names the
input ("Value nan smaller than min of 0.0"), once. The pack's runner checks finiteness itself,
before the range, with a clearer message.
"""

from __future__ import annotations

import math


class FiniteMin(float):
    """A FLOAT input's minimum that NaN and infinities fall below."""

    def __gt__(self, other):   # evaluates `other < self`
        if isinstance(other, float) and not math.isfinite(other):
            return True
        return float.__gt__(self, other)


def float_input(default: float, minimum: float, maximum: float, step: float, tooltip: str) -> tuple:
    """A FLOAT input spec whose range check also refuses NaN and infinities."""
    return ("FLOAT", {"default": default, "min": FiniteMin(minimum), "max": maximum, "step": step,
                      "tooltip": tooltip})
