"""Nodes NextDiTTextEncoderLoader (Gemma 3 + Jina CLIP v2 -> NEXTDIT_TEXT) and NextDiTTextEncode
(prompt -> CONDITIONING). The work is in ``text/loading.py`` and ``text/conditioning.py``.

Memory: the encoders' weights stay on the CPU; with device ``auto`` on a GPU they move to the GPU
for each encode and straight back, so the DiT has the card between prompts. Repeated prompts are
served from a cache on the NEXTDIT_TEXT object without running the encoders.
"""

from __future__ import annotations

import logging

from ..dtypes import DTYPES
from ..prompting import AUTO, SYSTEM_PROMPT_CHOICES, resolve_system_prompt
from . import host

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu")


class NextDiTTextEncoderLoader:
    DISPLAY_NAME = "NextDiT Text Encoder Loader"
    CATEGORY = "NextDiT/loaders"
    DESCRIPTION = (
        "Loads NewBie's two text encoders from models/text_encoders: Gemma 3 4B-it (its text model; "
        "the vision tower is skipped) and Jina CLIP v2's text tower. Accepts the ComfyUI single files "
        "(gemma_3_4b_it_bf16.safetensors, jina_clip_v2_bf16.safetensors), the HF folders "
        "(google/gemma-3-4b-it, jinaai/jina-clip-v2; the latter's retrieval.query LoRA is merged in) "
        "and text-only Gemma layouts; Gemma also as a llama.cpp GGUF (kept quantised). Tokenizers are "
        "read from the same files. Weights are kept on "
        "the CPU and visit the GPU only while a prompt is encoded."
    )
    RETURN_TYPES = ("NEXTDIT_TEXT",)
    RETURN_NAMES = ("text_encoders",)
    OUTPUT_TOOLTIPS = ("Both text encoders, for NextDiTTextEncode.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        files = host.list_model_files("text_encoders")
        return {"required": {
            "gemma_name": (files, {**host.file_choice(files, "gemma"),
                "tooltip": "Gemma 3 4B-it: gemma_3_4b_it_bf16.safetensors, the google/gemma-3-4b-it "
                           "folder or a llama.cpp gemma-3-4b-it GGUF, in models/text_encoders. Headless, a "
                           "path also works."}),
            "jina_name": (files, {**host.file_choice(files, "jina"),
                "tooltip": "Jina CLIP v2: jina_clip_v2_bf16.safetensors or the jinaai/jina-clip-v2 "
                           "folder, in models/text_encoders. Headless, a path also works."}),
            "device": (list(DEVICES), {
                "default": "auto",
                "tooltip": "Where encoding runs. auto: the GPU if there is one (weights wait on the "
                           "CPU and move to the GPU only while encoding); cpu: never touch the GPU."}),
            "dtype": (list(DTYPES), {
                "default": "auto",
                "tooltip": "Precision of the encoders. auto: bf16 on a GPU that supports it (Gemma "
                           "fp32 and Jina fp16 on older GPUs), fp32 on the CPU. fp16 can overflow "
                           "in Gemma 3."}),
        }}

    if host.paths_allowed():   # headless: replaces the dropdown check so a path works too (host/files.py)
        @classmethod
        def VALIDATE_INPUTS(cls, gemma_name, jina_name):
            return (host.model_file_problem("text_encoders", gemma_name)
                    or host.model_file_problem("text_encoders", jina_name) or True)

    def load(self, gemma_name: str, jina_name: str, device: str = "auto", dtype: str = "auto"):
        from ..text.loading import load_text_encoders

        if device not in DEVICES:
            raise ValueError(f"device {device!r} is not one of {', '.join(DEVICES)}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        compute = host.torch_device() if device == "auto" else "cpu"
        return (load_text_encoders(host.resolve_model_file("text_encoders", gemma_name),
                                   host.resolve_model_file("text_encoders", jina_name),
                                   device=compute, dtype=dtype, make_room=host.free_memory),)


class NextDiTTextEncode:
    DISPLAY_NAME = "NextDiT Text Encode"
    CATEGORY = "NextDiT/conditioning"
    DESCRIPTION = (
        "Encodes a NewBie prompt (XML or plain text) as the official code does: Gemma reads the "
        "system prompt + prompt (penultimate hidden states, at most 512 tokens), Jina reads the "
        "prompt alone (mean-pooled). An empty prompt gives the unconditional encoding. Prompt "
        "weights (text:1.3), (text), [text] (\\( for a bracket; name_(series) stays text) set how "
        "much the image attends to those tokens in NextDiT Sampler; weight 0 takes them out of "
        "view. Prompt problems and truncation are warnings carried in the conditioning and logged, "
        "never errors."
    )
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("cap_feats from Gemma with the Jina pooled vector, for NextDiTSampler.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoders": ("NEXTDIT_TEXT", {"tooltip": "From NextDiTTextEncoderLoader."}),
            "prompt": ("STRING", {
                "multiline": True, "default": "",
                "tooltip": "The prompt: NewBie XML (e.g. from NextDiT XML Prompt) or plain text, passed "
                           "to the encoders exactly as written. Empty = unconditional (negative)."}),
            "system_prompt": (list(SYSTEM_PROMPT_CHOICES), {
                "default": SYSTEM_PROMPT_CHOICES[0],
                "tooltip": "Text put before the prompt for Gemma only. auto: what the loaded Gemma "
                           "file records it was trained with (the embedded encoders: none); a file "
                           "that records nothing (the official ones) gets the official prompt for the "
                           "prompt's form (XML or plain). xml (official) / plain (official): the "
                           "training script's prompts for XML and plain captions; none: nothing; "
                           "custom: the text below."}),
            "custom_system_prompt": ("STRING", {
                "multiline": True, "default": "",
                "tooltip": "Used when system_prompt is custom, verbatim (the official prompts end in "
                           "'<Prompt Start> ' with a space)."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def encode(self, text_encoders, prompt: str, system_prompt: str = AUTO, custom_system_prompt: str = "",
               unique_id=None):
        from ..text.weights import weighted_encoding

        if not hasattr(text_encoders, "encode"):
            raise TypeError("text_encoders must come from NextDiTTextEncoderLoader "
                            f"(got {type(text_encoders).__name__})")
        recorded = getattr(text_encoders, "system_prompt", None)
        system = resolve_system_prompt(system_prompt, custom_system_prompt, prompt, recorded)
        cond, warnings = weighted_encoding(text_encoders, prompt, system)
        for warning in warnings:
            log.warning("NextDiTTextEncode: %s", warning)
        host.show_text("\n".join(warnings), unique_id)   # on the node, in ComfyUI and serve
        return (cond,)


NODE_CLASSES = [NextDiTTextEncoderLoader, NextDiTTextEncode]
