"""Node NextDiTSampler: NEXTDIT_MODEL + CONDITIONING → LATENT (FLUX VAE raw space).

The work is ``sampling.sample``; this node adds progress, interrupts, latent previews and a line of
text saying which settings ran (steps 0: the model's own) and what the step cache skipped.
Defaults are the official NewBie demo's settings (``sampler_settings.OFFICIAL``).
"""

from __future__ import annotations

import math

from ..sampler_settings import (MAX_SIDE, OFFICIAL, SamplerSettings, check_settings, missing_negative_problem,
                                node_defaults)
from ..sampling.solvers import SOLVERS
from . import host
from .numbers import float_input

PREVIEW_SIZE = 512


class NextDiTSampler:
    DISPLAY_NAME = "NextDiT Sampler"
    CATEGORY = "NextDiT/sampling"
    DESCRIPTION = (
        "Samples images with a Next-DiT (NewBie-image / Lumina-2) the way the official code does: "
        "rectified-flow ODE on the shifted time grid, NewBie's CFG with optional renormalisation "
        "and truncation (cond and uncond in one packed forward), or a guidance-distilled model's "
        "guidance scale in a single forward. Outputs a LATENT in the FLUX VAE's space, so core "
        "VAEDecode works too. Connect a latent and lower denoise for image-to-image."
    )
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Sampled latents (B, 16, H/8, W/8) in the FLUX VAE's raw space.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        # The editor rounds a typed side to the step; a side sent by hand that is not a multiple of
        # 16 is refused when the node runs (sampler_settings): a VALIDATE_INPUTS naming both sides
        # would have ComfyUI pin its message on both inputs.
        side = {"default": 0, "min": 0, "max": MAX_SIDE, "step": 16}
        return {
            "required": {
                "model": ("NEXTDIT_MODEL", {"tooltip": "The Next-DiT from NextDiT Loader (or a LoRA loader)."}),
                "positive": ("CONDITIONING", {
                    "tooltip": "The prompt: NextDiT Text Encode's output, or core ComfyUI's NewBie "
                               "text encoder."}),
                "width": ("INT", {**side, "tooltip": f"Image width in pixels, a multiple of 16 up to "
                                                     f"{MAX_SIDE}; 0 = the size the model was trained at "
                                                     f"when its file records it (the embedded model: 64), "
                                                     f"else 1024. Ignored when a latent is connected."}),
                "height": ("INT", {**side, "tooltip": f"Image height in pixels, a multiple of 16 up to "
                                                      f"{MAX_SIDE}; 0 = the model's training size, as for "
                                                      f"width. Ignored when a latent is connected."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                       "tooltip": "Images per run (each with its own noise)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Noise seed. The same seed and size give the same starting noise "
                                            "as core ComfyUI's KSampler, on any device."}),
                "steps": ("INT", {"default": 0, "min": 0, "max": 1000,
                                  "tooltip": "Solver steps (intervals of the time grid). The official scripts' "
                                             "num_sampling_steps counts grid points = steps + 1: their default "
                                             "18 is 17 here. midpoint and heun evaluate the model twice per step. "
                                             "0 = the model's own settings: a few-step student (made by `python "
                                             "-m nextdit_nodes distill --steps N`) and the embedded models "
                                             "record the steps, solver, shift, cfg and guidance they were made "
                                             "for, and they replace the values set here; a model that records "
                                             "none gets the official settings (17 midpoint steps, shift 6, "
                                             "cfg 5). The node's text says what ran."}),
                "solver": (list(SOLVERS), {"default": OFFICIAL.solver,
                                           "tooltip": "ODE solver. midpoint: the official default (2 evaluations "
                                                      "per step). euler and dpmpp_2m: 1 per step. heun: 2."}),
                "shift": float_input(OFFICIAL.shift, 0.01, 100.0, 0.1,
                                    "Time shift s of the grid, t ← t/(t + s − s·t); NewBie uses 6. "
                                    "Larger spends more steps at high noise."),
                "cfg": float_input(OFFICIAL.cfg, 0.0, 30.0, 0.1,
                                  "Classifier-free guidance scale; 1 = off (negative unused, half the "
                                  "cost). Official demo: 5."),
                "renorm_cfg": float_input(OFFICIAL.renorm_cfg, 0.0, 10.0, 0.05,
                                         "0 = off. Otherwise the guided velocity is scaled down to at "
                                         "most renorm_cfg × the conditional one's norm, per image "
                                         "(official CFG renorm; 1 is the model code's default)."),
                "cfg_trunc": float_input(OFFICIAL.cfg_trunc, 0.0, 100.0, 0.01,
                                        "CFG only while the data-time t (0 = noise, 1 = image) is below "
                                        "this, then the prompt alone. Official demo: 0.25. 1 or more = "
                                        "CFG on every step."),
                "guidance": float_input(0.0, 0.0, 30.0, 0.1,
                                       "0 = off. For guidance-distilled weights (made by `python -m "
                                       "nextdit_nodes distill`): the guidance scale fed to their "
                                       "embedder, one forward per step; use with cfg 1."),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt, needed when cfg is not 1 (the "
                                                         "official default is an empty prompt)."}),
                "latent": ("LATENT", {"tooltip": "Optional starting latent for image-to-image (e.g. from "
                                                 "NextDiT VAE Encode); its size replaces width/height."}),
                "denoise": float_input(1.0, 0.0, 1.0, 0.01,
                                      "With a latent: how much noise to start from, on core KSampler's "
                                      "scale (the same value starts at the same noise level: with shift 6, "
                                      "0.1 starts at noise 0.4, 0.3 at 0.72). 1 = ignore the latent's "
                                      "content, 0 = return it unchanged."),
                "step_cache": float_input(0.0, 0.0, 10.0, 0.01,
                                         "0 = off. Otherwise an evaluation whose first-block input changed "
                                         "less than this (relative L1) since the last full one reuses the "
                                         "other blocks' result instead of computing them: faster, slightly "
                                         "different images. 0.05 is a good start; the node's text and the log "
                                         "say how many evaluations were skipped."),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    # Headless and in `serve` only: inside ComfyUI an error of a VALIDATE_INPUTS is pinned on every
    # input it names (steps, cfg and input_types), so there the refusal stays in sample().
    @classmethod
    def _validate_inputs(cls, steps, cfg, input_types=None):
        # Runs before any node of the graph (the text encoders included), so cfg without a negative
        # is refused at once. input_types (the types arriving on linked inputs) says whether the
        # negative is connected; asking for it makes the host leave the link types to this check,
        # and naming steps and cfg leaves their ranges here too. Linked steps / cfg arrive as None
        # and are checked when the node runs.
        spec = {**cls.INPUT_TYPES()["required"], **cls.INPUT_TYPES()["optional"]}
        for name, received in (input_types or {}).items():
            expected = spec[name][0] if name in spec else None
            if isinstance(expected, str) and received not in (expected, "*"):
                return f"{name} expects {expected} but is linked to a {received} output"
        for name, value in (("steps", steps), ("cfg", cfg)):
            if value is None:
                continue    # linked: checked when the node runs
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return f"{name} must be a finite number; got {value!r}"   # ComfyUI's float() lets NaN through
            limits = spec[name][1]
            if value > limits["max"]:
                return f"{name}: {value} is bigger than the maximum {limits['max']}"    # core's words
            if value < limits["min"]:
                return f"{name}: {value} is smaller than the minimum {limits['min']}"
        return missing_negative_problem(steps, cfg, "negative" in (input_types or {})) or True

    if not host.inside_comfyui():
        VALIDATE_INPUTS = _validate_inputs

    def sample(self, model, positive, width, height, batch_size, seed, steps, solver, shift, cfg,
               renorm_cfg, cfg_trunc, guidance, negative=None, latent=None, denoise=1.0, step_cache=0.0,
               unique_id=None):
        import torch

        from ..dit.own_settings import own_settings, preview_factors
        from ..sampling.preview import LaggedPreviews
        from ..sampling.sample import SamplingReport, sample
        from .host.memory import use_dit_for_sampling

        # 0s stand for the model's own values (sampler_settings.node_defaults); the note says which.
        size_given = latent is not None and isinstance(latent.get("samples"), torch.Tensor)
        if size_given:   # sampled at the latent's size (any: the model pads to its patch size)
            width, height = latent["samples"].shape[3] * 8, latent["samples"].shape[2] * 8
        requested = SamplerSettings(steps=steps, solver=solver, shift=shift, cfg=cfg, guidance=guidance,
                                    renorm_cfg=renorm_cfg, cfg_trunc=cfg_trunc, denoise=denoise,
                                    step_cache=step_cache)
        check_settings(steps=steps)
        settings, width, height, notes = node_defaults(own_settings(model), requested, width, height,
                                                       negative is not None)
        defaults_note = "; ".join(notes) or None
        if not size_given:
            check_settings(width=width, height=height)   # before any memory is moved for them
        total, cfg = settings.steps, settings.cfg
        # Inside ComfyUI the memory manager makes room (and may stream blocks); headless a no-op
        # unless the model's offload mode asks for streaming.
        use_dit_for_sampling(model, positive, negative, width, height, batch_size, cfg)

        progress = host.Progress(total, unique_id)
        report = SamplingReport()

        def show(step: int, image) -> None:
            # With the progress: the cache's skips so far, and at the last step the node's text
            # (what ran, what the cache skipped), which ComfyUI shows on the node.
            cache = report.cache
            note = None if cache is None else f"cache skipped {cache.skipped}/{cache.evaluations}"
            progress.update(step + 1, None if image is None else ("JPEG", image, PREVIEW_SIZE),
                            text() if step + 1 == total else
                            "; ".join(filter(None, (defaults_note, note))) or None)

        def text() -> str:
            return report.describe() if defaults_note is None else f"{report.describe()} ({defaults_note})"

        # On a GPU each preview is shown one step late, so the loop never waits for the device.
        # The model's own latent → RGB projection when its file records one (the embedded model's
        # autoencoder is not FLUX's), else FLUX's.
        previews = LaggedPreviews(show, projection=preview_factors(model))

        wanted = host.previews_wanted()    # ComfyUI's preview method "none": progress without pictures

        def on_step(step: int, _steps: int, x0) -> None:
            host.check_interrupt()
            if wanted:
                previews(step, x0)
            else:
                show(step, None)

        out = sample(model, positive, negative, settings, width=width, height=height, seed=seed,
                     batch_size=batch_size, latent=latent, callback=on_step, cancel=host.check_interrupt,
                     report=report)
        previews.finish()
        return {"ui": {"text": [text()]}, "result": (out,)}


class NextDiTOfficialCFG:
    DISPLAY_NAME = "NextDiT Official CFG"
    CATEGORY = "NextDiT/sampling"
    DESCRIPTION = (
        "Makes core samplers (KSampler, SamplerCustomAdvanced) guide a Next-DiT MODEL the way the "
        "official NewBie code and NextDiT Sampler do: CFG on the velocity, optionally renormalised to "
        "the conditional velocity's norm, and only while the data-time is below cfg_trunc (afterwards "
        "the prompt alone, and the negative is no longer computed). Set the scale with the sampler's "
        "cfg. Core's RenormCFG differs: it renormalises the denoised image and compares against sigma."
    )
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the official CFG (a clone: the input is unchanged).",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A Next-DiT core MODEL: NextDiT Loader's core_model output."}),
            "cfg_trunc": float_input(OFFICIAL.cfg_trunc, 0.0, 100.0, 0.01,
                                    "CFG only while the data-time t = 1 − sigma is below this, then "
                                    "the prompt alone. Official demo: 0.25. 1 or more = every step."),
            "renorm_cfg": float_input(OFFICIAL.renorm_cfg, 0.0, 10.0, 0.05,
                                     "0 = off. Otherwise the guided velocity is scaled down to at most "
                                     "renorm_cfg × the conditional one's norm, per image."),
        }}

    def patch(self, model, cfg_trunc: float, renorm_cfg: float):
        from .host.core_model import official_cfg  # inside ComfyUI only: core MODELs exist only there

        check_settings(cfg_trunc=cfg_trunc, renorm_cfg=renorm_cfg)   # linked values come unchecked
        return (official_cfg(model, float(cfg_trunc), float(renorm_cfg)),)


NODE_CLASSES = [NextDiTSampler, NextDiTOfficialCFG]
