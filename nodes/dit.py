"""Node NextDiTLoader: a Next-DiT weight file -> NEXTDIT_MODEL (what `dit.checkpoint.load_dit` returns)."""

from __future__ import annotations

from ..dit.settings import OFFLOAD_MODES
from ..dtypes import WEIGHT_DTYPES
from . import host


class NextDiTLoader:
    DISPLAY_NAME = "NextDiT Loader"
    CATEGORY = "NextDiT/loaders"
    DESCRIPTION = (
        "Loads a NewBie-image / Lumina-2 Next-DiT diffusion model from diffusion_models: a "
        ".safetensors file, sharded safetensors, a diffusers/HF folder, a .pt/.pth/.ckpt training "
        "checkpoint (DDP/compile prefixes and all-in-one files handled) or a GGUF file (Q8_0, Q5_K, "
        "Q4_K, ... as ComfyUI-GGUF's converter or `quantize` write them; kept quantised in memory). "
        "The configuration is read "
        "from the tensor shapes; a file of another model is refused with a message saying what it is."
    )
    RETURN_TYPES = ("NEXTDIT_MODEL", "MODEL")
    RETURN_NAMES = ("model", "core_model")
    OUTPUT_TOOLTIPS = ("The Next-DiT, ready for NextDiTSampler (or NextDiTLoraLoader).",
                       "The same Next-DiT as a core ComfyUI MODEL (same weights, no copy), for KSampler, "
                       "model patches, caches and LoRA loaders; inside ComfyUI only.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        files = host.list_model_files("diffusion_models")
        return {"required": {
            # The teacher before its students: a student needs its own settings or a guidance scale.
            "dit_name": (files, {**host.file_choice(files, avoid=("distill", "student", "step")),
                "tooltip": "Next-DiT weights in models/diffusion_models (e.g. NewBie-image-Exp0.1 "
                           "bf16 .safetensors, or a .gguf). Headless, a path also works."}),
            "weight_dtype": (list(WEIGHT_DTYPES), {
                "default": "auto",
                "tooltip": "Precision of the weights in memory. auto: bf16 on a GPU that supports it, "
                           "fp16 on older GPUs, fp32 on the CPU. fp8_e4m3fn halves memory again (about "
                           "3.5 GB for NewBie): block weights stored in fp8, computed in bf16 on a GPU, "
                           "at a small quality cost. A GGUF file keeps its own quantisation; this "
                           "sets the precision of its unquantised tensors and of the computation."}),
        }, "optional": {
            "offload": (list(OFFLOAD_MODES), {
                "default": "auto",
                "tooltip": "GPU memory use. auto: the whole DiT on the GPU when it fits, else its blocks "
                           "are streamed from CPU memory one at a time (inside ComfyUI the memory manager "
                           "decides, and other models can push ours out). blocks: always stream (about "
                           "0.3 GB of GPU memory for the weights, for 6-8 GB cards; slower, limited by "
                           "PCIe). none: always the whole DiT on the GPU."}),
        }}

    if host.paths_allowed():   # headless: replaces the dropdown check so a path works too (host/files.py)
        @classmethod
        def VALIDATE_INPUTS(cls, dit_name):
            return host.model_file_problem("diffusion_models", dit_name) or True

    def load(self, dit_name: str, weight_dtype: str = "auto", offload: str = "auto"):
        from ..dit.checkpoint import load_dit
        from .host.memory import core_model_of, load_for_device

        if weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
        if offload not in OFFLOAD_MODES:
            raise ValueError(f"offload {offload!r} is not one of {', '.join(OFFLOAD_MODES)}")
        path = host.resolve_model_file("diffusion_models", dit_name)
        model = load_for_device(lambda storage, compute: load_dit(path, dtype=weight_dtype, device=storage,
                                                                compute_device=compute), offload)
        return (model, core_model_of(model))


NODE_CLASSES = [NextDiTLoader]
