"""The sampler's settings: limits, the official defaults, and the one check of every value.

Torch-free, so the sampler node shows and validates them with the same code ``sample`` runs.
"""

from __future__ import annotations

import math

MAX_SIDE = 4096  # pixels per side: twice the largest official resolution (2048); a safety limit

# The official demo's settings (NewBie-image-Exp0.1 `demo.py`): midpoint solver, 18 grid points
# (= 17 solver steps), time shift 6, CFG 5 while data-time t < 0.25, no renormalisation.
OFFICIAL = {"solver": "midpoint", "steps": 17, "shift": 6.0, "cfg": 5.0, "cfg_trunc": 0.25, "renorm_cfg": 0.0}
# The official NewBie resolution: the size 0 stands for when a model records no training size.
OFFICIAL_SIDE = 1024


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


def with_own_settings(own, steps: int, solver: str, shift: float, cfg: float,
                      guidance: float) -> tuple[int, str, float, float, float]:
    """(steps, solver, shift, cfg, guidance) to sample with. steps 0 asks for the model's own
    settings ``own`` (``dit.own_settings.OwnSettings``, what a few-step student's file records):
    they replace steps, solver, shift and cfg, and guidance when the file fixes a scale. Any other
    step count keeps every value as given."""
    if steps != 0:
        return steps, solver, shift, cfg, guidance
    if own is None:
        raise ValueError("steps 0 means the model's own sampling settings, which only few-step students "
                         "(made by `python -m nextdit_nodes distill --steps N`) record; this model records "
                         f"none: set steps (the official NewBie settings: {OFFICIAL['steps']} "
                         f"{OFFICIAL['solver']} steps)")
    return own.steps, own.solver, own.shift, own.cfg, guidance if own.guidance is None else own.guidance


def node_defaults(own, width: int, height: int, steps: int, solver: str, shift: float, cfg: float,
                  cfg_trunc: float, guidance: float, has_negative: bool) -> tuple[dict, list[str]]:
    """What NextDiT Sampler's "model's own" values stand for, and a note per value it filled in.

    ``own``: the loaded model's ``OwnSettings`` or None. A side of 0 is the model's training side
    (``own.resolution``), else the official 1024. Steps 0 is the model's own settings (cfg_trunc
    too when recorded); a model that records none gets the official NewBie settings. Without a
    negative, settings that came from the model (not typed by the user) fall back to cfg 1, since
    CFG needs one. Returns explicit values (steps never 0) for ``sample``."""
    notes = []
    if width == 0 or height == 0:
        recorded = own.resolution if own is not None else None
        side = recorded or OFFICIAL_SIDE
        width, height = width or side, height or side
        whose = "the model's training size" if recorded else "the official size: the model records none"
        notes.append(f"{width}×{height} ({whose})")
    if steps == 0:
        if own is None:
            steps, solver, shift, cfg = (OFFICIAL[key] for key in ("steps", "solver", "shift", "cfg"))
            notes.append("the official NewBie settings (the model records none of its own)")
        else:
            steps, solver, shift, cfg, guidance = with_own_settings(own, 0, solver, shift, cfg, guidance)
            cfg_trunc = cfg_trunc if own.cfg_trunc is None else own.cfg_trunc
            notes.append("the model's own settings")
        if cfg != 1.0 and not has_negative:
            notes.append(f"cfg 1 instead of {cfg:g}: no negative is connected")
            cfg = 1.0
    values = dict(width=width, height=height, steps=steps, solver=solver, shift=shift, cfg=cfg,
                  cfg_trunc=cfg_trunc, guidance=guidance)
    return values, notes


def missing_negative_problem(steps, cfg, negative_connected: bool) -> str | None:
    """The refusal a sampler can give before anything runs: cfg typed ≠ 1 without a negative
    (steps 0 decides at run time, from the model's own settings)."""
    if negative_connected or steps in (0, None) or cfg is None or cfg == 1.0 or setting_problem("cfg", cfg):
        return None    # (a cfg that is no number is refused by its own check)
    return (f"cfg {cfg:g} needs a negative conditioning; connect one (an empty prompt is the official "
            f"default) or set cfg to 1")
