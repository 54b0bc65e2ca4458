"""Sampling a Next-DiT: settings, the shifted time grid, ODE solvers, CFG and guidance-distilled
combination, previews, and ``sample.sample``."""
