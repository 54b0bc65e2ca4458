"""Node NextDiTLoraLoader: NEXTDIT_MODEL + a LoRA file -> a patched NEXTDIT_MODEL (input untouched)."""

from __future__ import annotations

from . import host
from .numbers import float_input


class NextDiTLoraLoader:
    DISPLAY_NAME = "NextDiT LoRA Loader"
    CATEGORY = "NextDiT/loaders"
    DESCRIPTION = (
        "Applies a LoRA to a Next-DiT model, whatever trained it: kohya/sd-scripts (lora_unet_*), "
        "NewbieLoraTrainer LoRA (PEFT, alpha from its adapter_config.json) and LoKr (LyCORIS), "
        "diffusers Lumina-2 names (to_q/to_k/to_v fused onto qkv), ComfyUI diffusion_model.* and "
        "bare module paths. The incoming model is not modified and its weights are not copied; chain "
        "several loaders to stack LoRAs. The report lists which modules were patched and which were not."
    )
    RETURN_TYPES = ("NEXTDIT_MODEL", "MODEL")
    RETURN_NAMES = ("model", "core_model")
    OUTPUT_TOOLTIPS = ("The model with the LoRA added (the input model is unchanged).",
                       "The same as a core ComfyUI MODEL: the input's core MODEL with this LoRA (core's "
                       "object patch, applied while it samples); inside ComfyUI only.")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("NEXTDIT_MODEL", {
                "tooltip": "The Next-DiT from NextDiTLoader (or from another NextDiTLoraLoader to stack LoRAs)."}),
            "lora_name": (host.list_model_files("loras"), {
                "tooltip": "LoRA file (or PEFT adapter folder) in models/loras. Headless, a path also works."}),
            "strength": float_input(1.0, -10.0, 10.0, 0.01,
                                    "Multiplier of the LoRA's change: 1 as trained, 0 leaves the model as it "
                                    "is, negative values push away from what the LoRA learned."),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    if host.paths_allowed():   # headless: replaces the dropdown check so a path works too (host/files.py)
        @classmethod
        def VALIDATE_INPUTS(cls, lora_name):
            return host.model_file_problem("loras", lora_name) or True

    def apply(self, model, lora_name: str, strength: float = 1.0, unique_id=None):
        from ..lora.apply import load_lora
        from .host.memory import core_model_of, unpatched_base

        path = host.resolve_model_file("loras", lora_name)
        unpatched_base(model)    # the copy shares the model's weights: not while a core LoRA rests in them
        patched, report = load_lora(model, path, strength)
        host.show_text(report.text, unique_id)     # which keys applied, on the node in ComfyUI and in serve
        return {"ui": {"text": [report.text]}, "result": (patched, core_model_of(patched, base=model))}


NODE_CLASSES = [NextDiTLoraLoader]
