"""LoRAs of every common trainer's format: key names, alpha rules, reading into one internal form,
and applying to a Next-DiT without touching the incoming model."""
