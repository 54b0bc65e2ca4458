"""Node NextDiTNAG: NEXTDIT_MODEL + a negative CONDITIONING -> a NEXTDIT_MODEL that samples with
Normalized Attention Guidance (``steering/nag.py``; the input model is not modified)."""

from __future__ import annotations

from .numbers import float_input


class NextDiTNAG:
    DISPLAY_NAME = "NextDiT NAG"
    CATEGORY = "NextDiT/sampling"
    DESCRIPTION = (
        "Normalized Attention Guidance (Chen et al. 2025): a negative prompt that works at cfg 1, "
        "for the guidance-distilled and few-step students as for the teacher. In every joint layer "
        "the image's attention to the prompt is pushed away from its attention to the negative "
        "prompt, with the push's size limited relative to the prompt's own. One model call per step "
        "plus a second attention for the image tokens. NextDiT Sampler honours it; the input model "
        "is unchanged."
    )
    RETURN_TYPES = ("NEXTDIT_MODEL", "MODEL")
    RETURN_NAMES = ("model", "core_model")
    OUTPUT_TOOLTIPS = ("The model with NAG (its weights shared with the input, which stays without NAG).",
                       "The same as a core ComfyUI MODEL, for KSampler and the other core samplers: NAG "
                       "guides the conditional branch; inside ComfyUI only.")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("NEXTDIT_MODEL", {"tooltip": "The Next-DiT from NextDiT Loader (or a LoRA loader)."}),
            "negative": ("CONDITIONING", {"tooltip": "What to steer away from (NextDiT Text Encode); an "
                                                     "empty prompt steers away from the unconditioned image."}),
            "scale": float_input(5.0, 1.0, 50.0, 0.1,
                                 "Extrapolation away from the negative; 1 = off. Larger is stronger."),
            "tau": float_input(2.5, 1.0, 10.0, 0.05,
                               "The guided attention's L1 norm may grow to at most tau times the "
                               "prompt's; larger allows stronger guidance."),
            "alpha": float_input(0.25, 0.0, 1.0, 0.01,
                                 "Share of the guided attention in the blend with the prompt's own; "
                                 "0 = off, 1 = guided only."),
            "start_percent": float_input(0.0, 0.0, 1.0, 0.01, "Share of the sampling where NAG starts."),
            "end_percent": float_input(1.0, 0.0, 1.0, 0.01, "Share of the sampling where NAG ends."),
        }}

    def apply(self, model, negative, scale, tau, alpha, start_percent, end_percent):
        from ..steering.nag import NAGSettings, with_nag
        from .host.memory import core_model_of, unpatched_base

        settings = NAGSettings(negative, float(scale), float(tau), float(alpha), float(start_percent),
                               float(end_percent))
        unpatched_base(model)    # the copy shares the model's weights: not while a core LoRA rests in them
        patched = with_nag(model, settings.check())
        return {"ui": {"text": [settings.describe()]}, "result": (patched, core_model_of(patched, base=model))}


NODE_CLASSES = [NextDiTNAG]
