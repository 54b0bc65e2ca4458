"""Steering beyond CFG: Normalized Attention Guidance (``nag.py``), acting on the Next-DiT's joint
attention through the forward's seam."""
