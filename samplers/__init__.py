"""Flow-matching schedules, ODE solvers, CFG and guidance-distilled combination."""
