"""``SamplerSettings``: the one shape of a Next-DiT sampler's settings, with the official defaults,
the checks of every value, what a few-step student's file records, and the text that describes them.

Torch-free and below every room that uses it (the DiT loader reads a student's recorded settings,
the sampler runs them, the nodes show and validate them with the same code).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

MAX_SIDE = 4096  # pixels per side: twice the largest official resolution (2048); a safety limit
DEFAULT_SHIFT = 6.0   # NewBie's time shift (the official demo's, and core ComfyUI's for Lumina-2)


def _side(name: str, value) -> str | None:
    if value < 16 or value % 16 or value > MAX_SIDE:
        return (f"{name} {value} must be a multiple of 16 between 16 and {MAX_SIDE} "
                f"(8× VAE downsampling × 2×2 patches)")
    return None


def _at_least_one(name: str, value) -> str | None:
    return None if value >= 1 else f"{name} must be at least 1; got {value}"


def _not_negative(name: str, value) -> str | None:
    return None if value >= 0 else f"{name} must not be negative; got {value}"


def _steps(name: str, value) -> str | None:
    return None if value >= 0 else f"steps must be at least 1, or 0 for the model's own settings; got {value}"


_CHECKS = {
    "width": _side,
    "height": _side,
    "steps": _steps,
    "batch_size": _at_least_one,
    "shift": lambda name, value: None if value > 0 else f"shift must be positive (NewBie uses 6); got {value}",
    "cfg": _not_negative,
    "renorm_cfg": _not_negative,
    "cfg_trunc": _not_negative,
    "guidance": _not_negative,
    "denoise": lambda name, value: None if 0.0 <= value <= 1.0 else f"denoise must be in [0, 1]; got {value}",
    "step_cache": _not_negative,
}


def setting_problem(name: str, value) -> str | None:
    """What is wrong with one sampler setting, or None (also for names without a rule). NaN and
    infinities are refused first: a NaN compares false with every limit and would pass them."""
    check = _CHECKS.get(name)
    if check is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number; got {value!r}"
    if not math.isfinite(value):
        return f"{name} must be a finite number; got {value}"
    return check(name, value)


def check_settings(**settings) -> None:
    """ValueError naming the first bad setting; None values (not known yet) are skipped."""
    for name, value in settings.items():
        problem = None if value is None else setting_problem(name, value)
        if problem:
            raise ValueError(problem)


# Metadata keys of a few-step student's file (values are strings, as safetensors requires).
_STEPS, _SOLVER, _SHIFT, _CFG, _GUIDANCE = ("nextdit_steps", "nextdit_solver", "nextdit_shift", "nextdit_cfg",
                                            "nextdit_guidance")


@dataclass(frozen=True)
class SamplerSettings:
    """How to sample. The defaults are the official NewBie demo's (NewBie-image-Exp0.1 `demo.py`):
    17 midpoint steps (18 grid points), time shift 6, CFG 5 while data-time t < 0.25, no renorm.

    steps 0 asks for the model's own settings (``resolved``). cfg 1 is one forward per step
    without the negative. guidance > 0 feeds a guidance-distilled model's embedder; in a student's
    recorded settings None means the scale is the user's choice. cfg_trunc ≥ 1: CFG on every step.
    denoise < 1 starts from an input latent. step_cache > 0 skips evaluations (``dit/step_cache.py``).
    """

    steps: int = 17
    solver: str = "midpoint"
    shift: float = DEFAULT_SHIFT
    cfg: float = 5.0
    guidance: float | None = 0.0
    renorm_cfg: float = 0.0
    cfg_trunc: float = 0.25
    denoise: float = 1.0
    step_cache: float = 0.0

    @classmethod
    def take(cls, values: dict) -> tuple[SamplerSettings, dict]:
        """The settings named in ``values`` (the others at their defaults), and the values left."""
        names = cls.__dataclass_fields__
        return (cls(**{k: v for k, v in values.items() if k in names}),
                {k: v for k, v in values.items() if k not in names})

    def problems(self) -> list[str]:
        values = asdict(self)
        if values["guidance"] is None:
            del values["guidance"]
        found = [setting_problem(name, value) for name, value in values.items()]
        return [problem for problem in found if problem]

    def check(self) -> SamplerSettings:
        """Self, or ValueError naming the first bad value."""
        problems = self.problems()
        if problems:
            raise ValueError(problems[0])
        return self

    def resolved(self, own: SamplerSettings | None) -> SamplerSettings:
        """The settings to run. steps 0 asks for the model's own settings ``own`` (what a few-step
        student's file records): they replace steps, solver, shift and cfg, and guidance when the
        file fixes a scale. Any other step count keeps every value as given."""
        if self.steps != 0:
            return self
        if own is None:
            raise ValueError("steps 0 means the model's own sampling settings, which only few-step students "
                             "(made by `python -m nextdit_nodes distill --steps N`) record; this model records "
                             f"none: set steps (the official NewBie settings: {OFFICIAL.steps} "
                             f"{OFFICIAL.solver} steps)")
        guidance = self.guidance if own.guidance is None else own.guidance
        return replace(self, steps=own.steps, solver=own.solver, shift=own.shift, cfg=own.cfg, guidance=guidance)

    def describe(self) -> str:
        """One line for the node's text: steps, solver, shift, cfg and the guidance scale when set."""
        steps = f"{self.steps} {self.solver} step{'' if self.steps == 1 else 's'}"
        guidance = f", guidance {self.guidance:g}" if self.guidance else ""
        return f"{steps}, shift {self.shift:g}, cfg {self.cfg:g}{guidance}"

    # ---- what a few-step student's file records ------------------------------------------------

    def to_metadata(self) -> dict[str, str]:
        out = {_STEPS: str(self.steps), _SOLVER: self.solver, _SHIFT: repr(float(self.shift)),
               _CFG: repr(float(self.cfg))}
        if self.guidance is not None:
            out[_GUIDANCE] = repr(float(self.guidance))
        return out

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> SamplerSettings | None:
        """The settings a file records, None when it records no step count (every official
        checkpoint); ValueError naming the key for a value that is not a number in range (a
        damaged or hand-edited header)."""
        if _STEPS not in metadata:
            return None

        def number(key: str, default: str | None, whole: bool = False) -> float | None:
            text = metadata.get(key, default)
            if text is None:
                return None
            try:
                value = int(text) if whole else float(text)
            except ValueError:
                value = math.nan
            lowest_ok = value >= 0 if key == _CFG else value > 0     # cfg 0 is legal, the rest must be positive
            if not (math.isfinite(value) and lowest_ok):
                raise ValueError(f"metadata {key} = {text!r} is not a {'whole ' if whole else ''}number in range; "
                                 f"the file's header is damaged or was edited by hand (remove the key, or "
                                 f"distill the student again)")
            return value

        return cls(steps=int(number(_STEPS, None, whole=True)), solver=metadata.get(_SOLVER, "euler"),
                   shift=number(_SHIFT, repr(DEFAULT_SHIFT)), cfg=number(_CFG, "1.0"),
                   guidance=number(_GUIDANCE, None))


OFFICIAL = SamplerSettings()
