"""Model files: the names a loader offers and where a name resolves.

Inside ComfyUI the folders come from ``folder_paths`` (``extra_model_paths.yaml`` included);
headless from ``$NEXTDIT_MODELS_DIR`` laid out like ComfyUI's ``models/`` folder. The embedded
default model's folder is searched last in both.

A server (ComfyUI, or the pack's own ``serve``) takes prompts from whoever reaches its port, so
there a file input must be one of the listed entries, as core's loaders demand: absolute paths,
``..`` and anything else outside the model folders are refused, and the message names no server
path. Inside ComfyUI the loaders leave that check to core's own dropdown validation ("Value not in
list"); only headless, on the user's own machine (the runner, scripts), do they define
``VALIDATE_INPUTS`` so that a path works too.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...files.errors import show_paths_with

PACK_DIR = Path(__file__).resolve().parents[2]
# Weights that ship with the pack, laid out like ComfyUI's models folder.
EMBEDDED_DIR = PACK_DIR / "embedded"
MODEL_EXTENSIONS = (".safetensors", ".sft", ".pt", ".pth", ".ckpt", ".bin")
# Folders whose loaders also read GGUF files (ComfyUI lists them with its own extensions only,
# so the pack adds them to its dropdowns).
GGUF_FOLDERS = ("diffusion_models", "text_encoders")
# Folders whose entries may also be directories (HF / diffusers layouts).
FOLDER_LAYOUT_OK = ("diffusion_models", "text_encoders", "vae", "loras")
# Embedded folders whose files core ComfyUI's own loaders can read, so its loaders list them too:
# the LoRA (diffusion_model.<module>.lora_A/lora_B keys, which core maps onto the pack's core
# MODEL). Core cannot read the others: its Lumina-2 detection needs NewBie's width (the embedded
# Next-DiT is tiny; the .pth is a pickled training checkpoint), its autoencoder has GroupNorm 32
# (the embedded one 16), and its NewBie text encoders have Gemma 3 4B / Jina CLIP v2 sizes.
CORE_LOADABLE_EMBEDDED = ("loras",)


_confined = False


def confine_to_model_folders(confined: bool = True) -> None:
    """A server calls this at start: from then on file inputs must name listed entries."""
    global _confined
    _confined = confined


def paths_allowed() -> bool:
    """Whether a file input may be a path: headless only, never inside ComfyUI or a server."""
    return not _confined and _comfy_folder_paths() is None


def inside_comfyui() -> bool:
    """Whether the pack runs inside ComfyUI (not headless, not in ``serve``)."""
    return _comfy_folder_paths() is not None


def _comfy_folder_paths():
    try:
        import folder_paths  # ComfyUI's module; absent headless
    except ImportError:
        return None
    return folder_paths if hasattr(folder_paths, "get_filename_list") else None


def share_embedded_with_core() -> None:
    """Inside ComfyUI, add the embedded folders core can load (``CORE_LOADABLE_EMBEDDED``) to
    ``folder_paths``, after the user's own, so core's loaders list the embedded files."""
    fp = _comfy_folder_paths()
    if fp is None or not hasattr(fp, "add_model_folder_path"):
        return
    for folder in CORE_LOADABLE_EMBEDDED:
        if (EMBEDDED_DIR / folder).is_dir():
            fp.add_model_folder_path(folder, str(EMBEDDED_DIR / folder), is_default=False)


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
    embedded = EMBEDDED_DIR / folder
    return [d for d in dirs if d != embedded] + [embedded]   # the embedded folder last, once


def _is_model_entry(path: Path, folder: str = "") -> bool:
    if path.is_file():
        return path.suffix.lower() in MODEL_EXTENSIONS or (folder in GGUF_FOLDERS and path.suffix.lower() == ".gguf")
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
            inside_model_folder = any(_is_model_entry(base / parent, folder)
                                      for parent in relative.parents if parent != Path("."))
            if _is_model_entry(path, folder) and not inside_model_folder:
                names.add(relative.as_posix())
    return sorted(names)


def file_choice(names: list[str], like: str = "", avoid: tuple[str, ...] = ()) -> dict:
    """A loader COMBO's ``default`` option: the first name containing ``like`` and none of ``avoid``
    (case-insensitive), else the first name containing ``like``, else the list's first. The editor
    puts the default in a node added from the search box, so the pick must be a file that works
    there (a Jina file for ``jina_name``, a teacher before its distilled students)."""
    def has(name: str, word: str) -> bool:
        return word.lower() in name.lower()

    fitting = [name for name in names if has(name, like)]
    preferred = [name for name in fitting if not any(has(name, word) for word in avoid)]
    pick = (preferred or fitting or names or [None])[0]
    return {} if pick is None else {"default": pick}


def resolve_model_file(folder: str, name: str) -> Path:
    """Full path of ``name``: a listed entry of ``folder``, or (headless only) a path.

    ValueError for a value that is not a file name at all; FileNotFoundError otherwise, saying
    where we looked (headless) or only that the name is not listed (on a server).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a file name from the {folder!r} model folders is needed here; got {name!r}")
    if not paths_allowed():
        return _listed_entry(folder, name)
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


def _listed_entry(folder: str, name: str) -> Path:
    if name in list_model_files(folder):
        for base in _folder_dirs(folder):
            if (base / name).exists():
                return base / name
    raise FileNotFoundError(f"{name!r} is not one of the files in the {folder!r} model folders; pick "
                            f"one from the list (put new files into the {folder!r} folder; a server "
                            f"accepts no paths)")


# The model folders the pack's loaders read, for naming a file in a message.
PACK_FOLDERS = ("diffusion_models", "text_encoders", "vae", "loras", "controlnet")


def shown_path(path) -> str:
    """How a message names a file: headless the path itself; on a server (ComfyUI or ``serve``)
    its place in the model folders ("vae/ae.safetensors"), else its bare name, so no server path
    reaches whoever sent the prompt."""
    if paths_allowed():
        return str(path)
    path = Path(path)
    for folder in PACK_FOLDERS:
        try:
            bases = _folder_dirs(folder)
        except (KeyError, OSError):   # a folder name this ComfyUI does not know
            continue
        for base in bases:
            try:
                return f"{folder}/{path.resolve().relative_to(base.resolve()).as_posix()}"
            except (ValueError, OSError):
                continue
    return path.name


show_paths_with(shown_path)


def model_file_problem(folder: str, name) -> str | None:
    """What a loader's VALIDATE_INPUTS reports for a file input, or None when it resolves."""
    try:
        resolve_model_file(folder, name)
    except (FileNotFoundError, ValueError) as error:
        return str(error)
    return None
