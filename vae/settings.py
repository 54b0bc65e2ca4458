"""The VAE nodes' settings (torch-free, so nodes can show them)."""

TILED_CHOICES = ("auto", "on", "off")
# Latent pixels: 512×512-pixel FLUX tiles (about 1 GiB of fp32 activations each) overlapping by
# 128 pixels, of which the outer 32 on each side are dropped (see vae/tiled.py).
DEFAULT_TILE = 64
DEFAULT_OVERLAP = 16
