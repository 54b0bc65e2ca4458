"""Node NextDiTControlNetLoader: a Next-DiT ControlNet file -> CONTROL_NET.

The CONTROL_NET is applied the way ComfyUI users already do: core's Apply ControlNet
(``ControlNetApplyAdvanced``) puts it, with the control image, strength, start/end percent and a
VAE, into CONDITIONING; NextDiT Sampler and core samplers on NextDiT Loader's core_model run it.
"""

from __future__ import annotations

from . import host


class NextDiTControlNetLoader:
    DISPLAY_NAME = "NextDiT ControlNet Loader"
    CATEGORY = "NextDiT/loaders"
    DESCRIPTION = (
        "Loads a ControlNet made for NewBie-image / Lumina-2 Next-DiT models (trained with `python -m "
        "nextdit_nodes train-controlnet`, or by anyone on the same key layout) from models/controlnet. "
        "Apply it with core's Apply ControlNet node; the control image is VAE-encoded, with the VAE "
        "connected here (NextDiT VAE Loader) or at the apply node (core's Load VAE). NextDiT Sampler and "
        "KSampler on core_model both run it. ControlNets of other "
        "model families (SD, SDXL, FLUX, Z-Image) are refused, naming what they are."
    )
    RETURN_TYPES = ("CONTROL_NET",)
    RETURN_NAMES = ("control_net",)
    OUTPUT_TOOLTIPS = ("The ControlNet, for core's Apply ControlNet node.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "control_net_name": (host.list_model_files("controlnet"), {
                "tooltip": "A Next-DiT ControlNet .safetensors in models/controlnet. Headless, a path also works."}),
        }, "optional": {
            "vae": ("NEXTDIT_VAE", {
                "tooltip": "The VAE that encodes the control image (the model's own VAE), used when Apply "
                           "ControlNet has no VAE connected."}),
        }}

    if host.paths_allowed():   # headless: replaces the dropdown check so a path works too (host/files.py)
        @classmethod
        def VALIDATE_INPUTS(cls, control_net_name):
            return host.model_file_problem("controlnet", control_net_name) or True

    def load(self, control_net_name: str, vae=None):
        from ..controlnet.files import load_controlnet
        from ..controlnet.handle import ControlNetHandle
        from .host.memory import host_patchers

        path = host.resolve_model_file("controlnet", control_net_name)
        net, slot = load_controlnet(path), {}
        # Inside ComfyUI the memory manager loads the network with the model and counts it.
        return (ControlNetHandle(net, path.name, vae, host_models=lambda: host_patchers(net, slot)),)


NODE_CLASSES = [NextDiTControlNetLoader]
