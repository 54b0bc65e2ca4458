"""Where users get the model files the example workflows name (also listed in the README's Model files section)."""

from __future__ import annotations

from pathlib import Path, PurePath

from .errors import MissingModelError

_NEWBIE_REPO = "https://huggingface.co/Comfy-Org/NewBie-image-Exp0.1_repackaged"

# file name -> (models folder it goes in, where to get it)
KNOWN_MODEL_FILES: dict[str, tuple[str, str]] = {
    "NewBie-Image-Exp0.1-bf16.safetensors": (
        "diffusion_models", f"{_NEWBIE_REPO}/blob/main/split_files/diffusion_models/"
                            "NewBie-Image-Exp0.1-bf16.safetensors"),
    "gemma_3_4b_it_bf16.safetensors": (
        "text_encoders", f"{_NEWBIE_REPO}/blob/main/split_files/text_encoders/"
                         "gemma_3_4b_it_bf16.safetensors"),
    "jina_clip_v2_bf16.safetensors": (
        "text_encoders", f"{_NEWBIE_REPO}/blob/main/split_files/text_encoders/"
                         "jina_clip_v2_bf16.safetensors"),
    "ae.safetensors": (
        "vae", "https://huggingface.co/Comfy-Org/z_image_turbo/blob/main/split_files/vae/"
               "ae.safetensors (the FLUX.1 autoencoder)"),
}

# Files nobody can download: the user makes them with one of the pack's commands.
MADE_LOCALLY: dict[str, tuple[str, str]] = {
    "NewBie-Image-Exp0.1-bf16-distilled.safetensors": (
        "diffusion_models", "make it from the NewBie weights with `python -m nextdit_nodes "
                            "distill` (it writes this file name by default; see the README's Model files section)"),
}

# Loader inputs that name a model file, and the models folder each one searches.
MODEL_INPUT_FOLDERS = {
    "dit_name": "diffusion_models",
    "lora_name": "loras",
    "gemma_name": "text_encoders",
    "jina_name": "text_encoders",
    "vae_name": "vae",
    "control_net_name": "controlnet",
}


def where_to_get(name: str) -> str | None:
    """A sentence saying where to get ``name`` (matched on the file name), or None if unknown."""
    base = PurePath(str(name)).name
    for table in (KNOWN_MODEL_FILES, MADE_LOCALLY):
        for known, (folder, source) in table.items():
            if base.lower() == known.lower():
                verb = "Download it from" if table is KNOWN_MODEL_FILES else "There is no download:"
                return f"{verb} {source} and put it in the {folder!r} models folder."
    return None


def resolve_model(folder: str, name: str) -> Path:
    """A command-line model name: a file in the ``folder`` models folders or a path (MissingModelError
    naming where we looked otherwise)."""
    from ..nodes import host

    try:
        return host.resolve_model_file(folder, name)
    except FileNotFoundError as error:
        raise MissingModelError(str(error)) from None
