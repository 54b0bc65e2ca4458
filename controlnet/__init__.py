"""The pack's control network for the Next-DiT (model, file layout, applying it); see model.py."""
