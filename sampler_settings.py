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
OFFICIAL_SIDE = 1024  # the official NewBie resolution: what a size of 0 means when a model records none


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


# Metadata keys of a file that records its settings (values are strings, as safetensors requires).
# cfg_trunc: CFG's truncation the settings were measured with; resolution: the side of the square
# images the model was trained on (the sampler's size 0 means this side).
_STEPS, _SOLVER, _SHIFT, _CFG, _GUIDANCE = ("nextdit_steps", "nextdit_solver", "nextdit_shift", "nextdit_cfg",
                                            "nextdit_guidance")
_CFG_TRUNC, _RESOLUTION = "nextdit_cfg_trunc", "nextdit_resolution"


@dataclass(frozen=True)
class SamplerSettings:
    """How to sample. The defaults are the official NewBie demo's (NewBie-image-Exp0.1 `demo.py`):
    17 midpoint steps (18 grid points), time shift 6, CFG 5 while data-time t < 0.25, no renorm.

    steps 0 asks for the model's own settings (``resolved``). cfg 1 is one forward per step
    without the negative. guidance > 0 feeds a guidance-distilled model's embedder; in a student's
    recorded settings None means the scale is the user's choice. cfg_trunc ≥ 1: CFG on every step.
    denoise < 1 starts from an input latent, on core KSampler's scale (``sampling.schedule.denoise_start``).
    step_cache > 0 skips evaluations (``dit/step_cache.py``). In recorded settings cfg_trunc None
    means not recorded (the sampler's value stays), and resolution is the side of the square
    images the model was trained on (None: not recorded).
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
    resolution: int | None = None

    @classmethod
    def take(cls, values: dict) -> tuple[SamplerSettings, dict]:
        """The settings named in ``values`` (the others at their defaults), and the values left."""
        names = cls.__dataclass_fields__
        return (cls(**{k: v for k, v in values.items() if k in names}),
                {k: v for k, v in values.items() if k not in names})

    def problems(self) -> list[str]:
        values = asdict(self)
        for optional in ("guidance", "resolution"):
            if values[optional] is None:
                del values[optional]
        found = [setting_problem(name, value) for name, value in values.items()]
        if self.cfg_trunc is None:
            found.append("cfg_trunc must be a number; got None")
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
        cfg_trunc = self.cfg_trunc if own.cfg_trunc is None else own.cfg_trunc
        return replace(self, steps=own.steps, solver=own.solver, shift=own.shift, cfg=own.cfg, guidance=guidance,
                       cfg_trunc=cfg_trunc)

    def describe(self) -> str:
        """One line for the node's text: steps, solver, shift, cfg and the guidance scale when set."""
        steps = f"{self.steps} {self.solver} step{'' if self.steps == 1 else 's'}"
        guidance = f", guidance {self.guidance:g}" if self.guidance else ""
        return f"{steps}, shift {self.shift:g}, cfg {self.cfg:g}{guidance}"

    # ---- what a few-step student's file records ------------------------------------------------

    def to_metadata(self) -> dict[str, str]:
        out = {_STEPS: str(self.steps), _SOLVER: self.solver, _SHIFT: repr(float(self.shift)),
               _CFG: repr(float(self.cfg))}
        if self.guidance:   # 0 / None: no fixed guidance scale to record
            out[_GUIDANCE] = repr(float(self.guidance))
        if self.cfg_trunc is not None:
            out[_CFG_TRUNC] = repr(float(self.cfg_trunc))
        if self.resolution is not None:
            out[_RESOLUTION] = str(self.resolution)
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
            lowest_ok = value >= 0 if key in (_CFG, _CFG_TRUNC) else value > 0   # 0 is legal for these two
            if not (math.isfinite(value) and lowest_ok):
                raise ValueError(f"metadata {key} = {text!r} is not a {'whole ' if whole else ''}number in range; "
                                 f"the file's header is damaged or was edited by hand (remove the key, or "
                                 f"distill the student again)")
            return value

        resolution = number(_RESOLUTION, None, whole=True)
        return cls(steps=int(number(_STEPS, None, whole=True)), solver=metadata.get(_SOLVER, "euler"),
                   shift=number(_SHIFT, repr(DEFAULT_SHIFT)), cfg=number(_CFG, "1.0"),
                   guidance=number(_GUIDANCE, None), cfg_trunc=number(_CFG_TRUNC, None),
                   resolution=None if resolution is None else int(resolution))


OFFICIAL = SamplerSettings()


def node_defaults(own: SamplerSettings | None, settings: SamplerSettings, width: int, height: int,
                  has_negative: bool) -> tuple[SamplerSettings, int, int, list[str]]:
    """What NextDiT Sampler's "model's own" values stand for, and a note per value it filled in.

    ``own``: the loaded model's recorded settings or None. A side of 0 is the model's training side
    (``own.resolution``), else the official 1024. Steps 0 is the model's own settings (cfg_trunc
    too when recorded); a model that records none gets the official NewBie settings. Without a
    negative, settings that came from the model (not typed by the user) fall back to cfg 1, since
    CFG needs one. Returns explicit settings (steps never 0) and the size for ``sample``."""
    notes = []
    if width == 0 or height == 0:
        recorded = own.resolution if own is not None else None
        side = recorded or OFFICIAL_SIDE
        width, height = width or side, height or side
        whose = "the model's training size" if recorded else "the official size: the model records none"
        notes.append(f"{width}×{height} ({whose})")
    if settings.steps == 0:
        if own is None:
            settings = replace(settings, steps=OFFICIAL.steps, solver=OFFICIAL.solver, shift=OFFICIAL.shift,
                               cfg=OFFICIAL.cfg)
            notes.append("the official NewBie settings (the model records none of its own)")
        else:
            settings = settings.resolved(own)
            notes.append("the model's own settings")
        if settings.cfg != 1.0 and not has_negative:
            notes.append(f"cfg 1 instead of {settings.cfg:g}: no negative is connected")
            settings = replace(settings, cfg=1.0)
    return settings, width, height, notes


def missing_negative_problem(steps, cfg, negative_connected: bool) -> str | None:
    """The refusal a sampler can give before anything runs: cfg typed ≠ 1 without a negative
    (steps 0 decides at run time, from the model's own settings)."""
    if negative_connected or steps in (0, None) or cfg is None or cfg == 1.0 or setting_problem("cfg", cfg):
        return None    # (a cfg that is no number is refused by its own check)
    return (f"cfg {cfg:g} needs a negative conditioning; connect one (an empty prompt is the official "
            f"default) or set cfg to 1")
