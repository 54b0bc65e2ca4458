"""The device the pack computes on, and asking the host for memory before a big move."""

from __future__ import annotations


def torch_device():
    """The device for the DiT: ComfyUI's choice inside ComfyUI, else CUDA if present, else CPU."""
    import torch

    try:
        import comfy.model_management as mm
        return mm.get_torch_device()
    except ImportError:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def free_memory(bytes_needed: int, device) -> None:
    """Ask ComfyUI to unload its own models until ``bytes_needed`` bytes are free on ``device``
    (before the pack moves large weights there); a no-op headless and for the CPU."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    import torch

    if torch.device(device).type != "cpu":
        mm.free_memory(bytes_needed, torch.device(device))
