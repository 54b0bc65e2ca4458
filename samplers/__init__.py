"""Flow-matching schedules, ODE solvers, CFG and guidance-distilled combination.

Public API: ``sample(...)`` (see ``samplers/sample.py``). Importing this package imports torch; the
node module imports it inside its function.
"""

from .sample import NonFiniteError, sample

__all__ = ["sample", "NonFiniteError"]
