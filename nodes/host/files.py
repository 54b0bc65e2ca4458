"""Model files: the names a loader offers and where a name resolves.

Inside ComfyUI the folders come from ``folder_paths`` (``extra_model_paths.yaml`` included);
headless from ``$NEXTDIT_MODELS_DIR`` laid out like ComfyUI's ``models/`` folder. The embedded
default model's folder is searched last in both.
"""

from __future__ import annotations

import os
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[2]
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
