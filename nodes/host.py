"""The one adapter between the nodes and their host.

Inside ComfyUI, model lists come from ``folder_paths``, progress goes through
``comfy.utils.ProgressBar`` (which also raises on interrupt) and the device from
``comfy.model_management``. Headless (the pack's runner, pytest), the same calls fall back to
``$NEXTDIT_MODELS_DIR`` laid out like ComfyUI's ``models/`` folder, a progress hook the runner
installs, and CUDA-if-present. Only this module and ``runtime/`` import ComfyUI modules.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

PACK_DIR = Path(__file__).resolve().parent.parent
# Weights that ship with the pack, laid out like ComfyUI's models folder.
EMBEDDED_DIR = PACK_DIR / "embedded"
MODEL_EXTENSIONS = (".safetensors", ".sft", ".pt", ".pth", ".ckpt", ".bin")
# Folders whose entries may also be directories (HF / diffusers layouts).
FOLDER_LAYOUT_OK = ("diffusion_models", "text_encoders", "vae", "loras")


def _comfy_folder_paths():
    try:
        import folder_paths  # ComfyUI's module; absent headless
    except ImportError:
        return None
    return folder_paths if hasattr(folder_paths, "get_filename_list") else None


def headless_models_dirs() -> list[Path]:
    """Headless search roots: ``$NEXTDIT_MODELS_DIR`` (os.pathsep-separated), else ./models."""
    env = os.environ.get("NEXTDIT_MODELS_DIR")
    roots = env.split(os.pathsep) if env else ["models"]
    return [Path(root).expanduser() for root in roots if root]


def _folder_dirs(folder: str) -> list[Path]:
    fp = _comfy_folder_paths()
    if fp is not None:
        dirs = [Path(p) for p in fp.get_folder_paths(folder)]
    else:
        dirs = [root / folder for root in headless_models_dirs()]
        if folder == "diffusion_models":  # ComfyUI's legacy alias
            dirs += [root / "unet" for root in headless_models_dirs()]
        if folder == "text_encoders":
            dirs += [root / "clip" for root in headless_models_dirs()]
    return dirs + [EMBEDDED_DIR / folder]


def _is_model_entry(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in MODEL_EXTENSIONS
    return path.is_dir() and any(
        (path / marker).exists()
        for marker in ("config.json", "model_index.json", "model.safetensors.index.json",
                       "diffusion_pytorch_model.safetensors", "adapter_config.json")
    )


def list_model_files(folder: str) -> list[str]:
    """Names offered in a loader's dropdown: files (and model folders) under ``folder``."""
    names: set[str] = set()
    for base in _folder_dirs(folder):
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            relative = path.relative_to(base)
            inside_model_folder = any(_is_model_entry(base / parent)
                                      for parent in relative.parents if parent != Path("."))
            if _is_model_entry(path) and not inside_model_folder:
                names.add(relative.as_posix())
    return sorted(names)


def resolve_model_file(folder: str, name: str) -> Path:
    """Full path of ``name`` (a listed name or a path); FileNotFoundError says where we looked."""
    candidate = Path(name).expanduser()
    if candidate.is_absolute() and candidate.exists():
        return candidate
    searched = _folder_dirs(folder)
    for base in searched:
        if (base / name).exists():
            return base / name
    if candidate.exists():
        return candidate.resolve()
    where = "\n  ".join(str(d) for d in searched)
    raise FileNotFoundError(
        f"model file {name!r} not found in the {folder!r} folders. Searched:\n  {where}\n"
        f"Put the file in one of them (headless: set NEXTDIT_MODELS_DIR to your models folder), "
        f"or give a full path."
    )


# ---- progress and interrupts ------------------------------------------------------------------

ProgressHook = Callable[[int, int, object], None]  # (done, total, preview or None)
_progress_hook: ProgressHook | None = None


def set_progress_hook(hook: ProgressHook | None) -> ProgressHook | None:
    """Headless runner's progress display; returns the previous hook so callers can restore it."""
    global _progress_hook
    previous, _progress_hook = _progress_hook, hook
    return previous


class Progress:
    """Per-step progress; inside ComfyUI an update also raises if the user pressed Cancel."""

    def __init__(self, total: int, node_id: str | None = None):
        self.total = total
        self._bar = None
        try:
            import comfy.utils  # noqa: PLC0415 - only inside ComfyUI
            self._bar = comfy.utils.ProgressBar(total, node_id=node_id)
        except ImportError:
            pass

    def update(self, done: int, preview=None) -> None:
        if self._bar is not None:
            self._bar.update_absolute(done, self.total, preview)
        elif _progress_hook is not None:
            _progress_hook(done, self.total, preview)


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user cancelled; a no-op headless."""
    try:
        import comfy.model_management as mm  # noqa: PLC0415
    except ImportError:
        return
    mm.throw_exception_if_processing_interrupted()


def torch_device():
    """The device for the DiT: ComfyUI's choice inside ComfyUI, else CUDA if present, else CPU."""
    import torch  # noqa: PLC0415

    try:
        import comfy.model_management as mm  # noqa: PLC0415
        return mm.get_torch_device()
    except ImportError:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def free_memory(bytes_needed: int, device) -> None:
    """Ask ComfyUI to unload its own models until ``bytes_needed`` bytes are free on ``device``
    (before the pack moves large weights there); a no-op headless and for the CPU."""
    try:
        import comfy.model_management as mm  # noqa: PLC0415
    except ImportError:
        return
    import torch  # noqa: PLC0415

    if torch.device(device).type != "cpu":
        mm.free_memory(bytes_needed, torch.device(device))
