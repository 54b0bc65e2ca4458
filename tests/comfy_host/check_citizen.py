"""The pack as a ComfyUI citizen, checked in a real ComfyUI through /prompt (outside CI): its
Next-DiT as a core MODEL, its sampler's handling of CONDITIONING and LATENT features, and its
refusal of bad numbers and of file inputs outside the model folders.

Against a running ComfyUI whose custom_nodes has the pack (``../shared/comfy-host/comfy_run.sh``)
and whose models folder this script fills (``--models``) with random-weight files: a Next-DiT at
NewBie width with one joint layer (core's model detection needs dim 2304), the tiny example
files of ``tests/runtime_models.py``, and a LoRA. Each check queues an API prompt and compares the
latents the graphs saved (core ``SaveLatent``, read back through ``/view``):

  1. core KSampler (euler, simple, cfg 1) on the pack's MODEL equals core KSampler on core's own
     model loaded from the same file with UNETLoader;
  2. KSampler at cfg 4 + NextDiT Official CFG equals NextDiT Sampler (renorm 1, cfg_trunc 0.5);
  3. EasyCache and TorchCompileModel on the pack's MODEL run to success;
  4. core's LoraLoaderModelOnly applies a LoRA to the pack's MODEL with every key loaded, and
     NextDiT LoRA Loader's core_model through KSampler equals NextDiT Sampler with its model;
  5. inpainting through the core path (SetLatentNoiseMask) keeps the unmasked latent;
  6. every file input refuses absolute paths and ``..`` (HTTP 400, the node in node_errors, no
     server path in the answer);
  7. NextDiT Sampler with ConditioningSetTimestepRange (A for the first half, B for the second)
     equals core KSampler on core's own model with the same conditioning;
  8. NextDiT Sampler's inpainting (SetLatentNoiseMask) equals core KSampler's on the pack's MODEL;
  9. ConditioningSetArea and ConditioningSetMask end in an execution error naming the node;
 10. NaN and infinity in every number input of the pack's nodes, and strings in place of
     numbers, are refused with HTTP 400, each error attached to the input once;
 11. the embedded guidance-distilled student through core: KSampler at cfg 1 with core's
     FluxGuidance 4 on the prompt equals NextDiT Sampler at cfg 1, guidance 4 (the guidance
     reaches the student's guidance embedder), and differs from guidance 1.
 12. the embedded 4-step student through core: KSampler (euler, simple, 4 steps, cfg 1) with no
     FluxGuidance equals NextDiT Sampler at steps 0 (the file's own settings: its guidance 4
     reaches the core MODEL as the default), and FluxGuidance 1 overrides it.
 14. warnings and reports reach the node as progress text (the binary TEXT event): NextDiT XML
     Prompt's checks, NextDiT Text Encode's "cannot be read ... encoded as written" and NextDiT
     LoRA Loader's applied-keys report, each for its own node id.
 15. NextDiT VAE Loader's core_vae in core's VAE nodes, for the embedded autoencoder (its own
     widths and GroupNorm groups) and the FLUX-layout ae.safetensors: core VAEDecode equals NextDiT
     VAE Decode and core VAEEncode equals NextDiT VAE Encode within 1e-4 (images saved as 16-bit
     PNG, latents with SaveLatent); VAEDecodeTiled and VAEEncodeForInpaint run on it; for a TAEF1
     decoder file (decode only) core VAEDecode equals NextDiT VAE Decode.
 16. core's LoRA loader lists the embedded LoRA, and LoraLoaderModelOnly with it on the embedded
     teacher's core MODEL through KSampler equals NextDiT LoRA Loader + NextDiT Sampler.
 17. a pack node's error in ComfyUI's error payload (the websocket's execution_error and /history):
     the exception type is "nextdit_nodes.WeightsError", not a server path, and the message names
     the file as "diffusion_models/<name>" with no server path.
 18. core's Apply ControlNet (ControlNetApplyAdvanced) with core_vae as its VAE and the embedded
     outline ControlNet: NextDiT Sampler equals core KSampler on core_model within 1e-4, and the
     ControlNet changes the latent.
 13. image-to-image at the latent size of a 100×76 image (12×9, odd: padded to the patch size
     inside the model as core's Lumina model does): NextDiT Sampler at denoise 0.1, 0.3 and 0.6
     (cfg 1) equals core KSampler on the pack's MODEL with the same denoise.

  python tests/comfy_host/check_citizen.py --models ~/scratch/ComfyUI/models --write-models
  SCRATCH=~/scratch ../shared/comfy-host/comfy_run.sh --port 8199 --isolated
  python tests/comfy_host/check_citizen.py --url http://127.0.0.1:8199 --log ~/scratch/comfy-8199.log
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

WIDE_DIT = "nextdit_newbie_width_1layer.safetensors"
LORA = "nextdit_check_lora.safetensors"
DAMAGED = "zz_damaged_dit.safetensors"
TAEF1 = "taef1_decoder.pth"    # a random TAEF1 decoder in the original (madebyollin) layout
STEPS = 4     # divides 1000: core's simple schedule is then the pack's shifted grid
SEED = 77


def write_models(models: Path) -> None:
    from factories import newbie_width_params, write_dit_checkpoint
    from runtime_models import write_tiny_models
    from text_fixtures import GEMMA_SHAPES, JINA_SHAPES

    write_tiny_models(models)
    params = newbie_width_params(n_layers=1, ffn_dim=9216, cap_dim=GEMMA_SHAPES["hidden_size"],
                                 clip_dim=JINA_SHAPES["hidden_size"])
    write_dit_checkpoint(models / "diffusion_models" / WIDE_DIT, params, seed=5, prefix="")
    # A kohya-style LoRA on every attention and MLP Linear of the wide model's joint layer.
    generator = torch.Generator().manual_seed(9)
    lora = {}
    shapes = {"attention_qkv": (3840, 2304), "attention_out": (2304, 2304), "feed_forward_w1": (9216, 2304),
              "feed_forward_w2": (2304, 9216), "feed_forward_w3": (9216, 2304)}
    for name, (out_features, in_features) in shapes.items():
        key = f"lora_unet_layers_0_{name}"
        lora[f"{key}.lora_down.weight"] = torch.randn(4, in_features, generator=generator) * 0.05
        lora[f"{key}.lora_up.weight"] = torch.randn(out_features, 4, generator=generator) * 0.05
        lora[f"{key}.alpha"] = torch.tensor(4.0)
    (models / "loras").mkdir(exist_ok=True)
    from safetensors.torch import save_file

    save_file(lora, str(models / "loras" / LORA))
    (models / "diffusion_models" / DAMAGED).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"")  # truncated
    from vae_reference import randomize, taesd_decoder

    decoder = randomize(taesd_decoder(), seed=6)
    torch.save({k: v.contiguous() for k, v in decoder.state_dict().items()}, models / "vae" / TAEF1)
    print(f"wrote the check's model files into {models}")


# ---- talking to ComfyUI --------------------------------------------------------------------------

def post(url: str, prompt: dict) -> tuple[int, dict]:
    body = json.dumps({"prompt": prompt, "client_id": uuid.uuid4().hex}).encode()
    request = urllib.request.Request(f"{url}/prompt", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def upload_image(url: str, path: Path) -> None:
    """Put ``path`` into the server's input folder through core's /upload/image (the multipart form
    the serve tests write)."""
    from test_server_http import _form

    form = _form(path.read_bytes(), path.name, overwrite="true")
    request = urllib.request.Request(f"{url}/upload/image", form["data"], form["headers"])
    with urllib.request.urlopen(request) as answer:
        assert answer.status == 200, answer.status


def run(url: str, prompt: dict, timeout: float = 900) -> dict:
    """Queue ``prompt``, wait for it, and return its /history entry (raises on failure)."""
    status, answer = post(url, prompt)
    if status != 200:
        raise RuntimeError(f"prompt refused ({status}): {json.dumps(answer)[:2000]}")
    prompt_id = answer["prompt_id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        with urllib.request.urlopen(f"{url}/history/{prompt_id}") as response:
            history = json.load(response)
        entry = history.get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            if entry["status"].get("status_str") != "success":
                messages = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
                raise RuntimeError(f"prompt failed: {json.dumps(messages)[:3000]}")
            return entry
        time.sleep(0.5)
    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")


def saved_latent(url: str, entry: dict, node: str) -> torch.Tensor:
    (latent,) = entry["outputs"][node]["latents"]
    query = urllib.parse.urlencode({"filename": latent["filename"], "subfolder": latent["subfolder"],
                                    "type": latent["type"]})
    with urllib.request.urlopen(f"{url}/view?{query}") as response:
        return load_safetensors(response.read())["latent_tensor"].float()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ---- graphs ------------------------------------------------------------------------------------

def text_nodes(prompt: dict) -> None:
    prompt["te"] = {"class_type": "NextDiTTextEncoderLoader",
                    "inputs": {"gemma_name": "gemma_3_4b_it_bf16.safetensors",
                               "jina_name": "jina_clip_v2_bf16.safetensors", "device": "cpu", "dtype": "fp32"}}
    prompt["pos"] = {"class_type": "NextDiTTextEncode", "inputs": {
        "text_encoders": ["te", 0], "prompt": "<character_1>\n<n>red circle</n>\n</character_1>",
        "system_prompt": "xml (official)", "custom_system_prompt": ""}}
    prompt["neg"] = {"class_type": "NextDiTTextEncode", "inputs": {
        "text_encoders": ["te", 0], "prompt": "", "system_prompt": "xml (official)", "custom_system_prompt": ""}}


def ksampler(model: list, cfg: float, latent: list, name: str, denoise: float = 1.0, steps: int = STEPS) -> dict:
    return {
        f"{name}_ks": {"class_type": "KSampler", "inputs": {
            "model": model, "seed": SEED, "steps": steps, "cfg": cfg, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": latent,
            "denoise": denoise}},
        f"{name}_save": {"class_type": "SaveLatent", "inputs": {"samples": [f"{name}_ks", 0],
                                                                "filename_prefix": f"latents/{name}"}},
    }


def pack_sampler(model: list, cfg: float, name: str) -> dict:
    return {
        f"{name}_ns": {"class_type": "NextDiTSampler", "inputs": {
            "model": model, "positive": ["pos", 0], "negative": ["neg", 0], "width": 64, "height": 64,
            "batch_size": 1, "seed": SEED, "steps": STEPS, "solver": "euler", "shift": 6.0, "cfg": cfg,
            "renorm_cfg": 1.0, "cfg_trunc": 0.5, "guidance": 0.0}},
        f"{name}_save": {"class_type": "SaveLatent", "inputs": {"samples": [f"{name}_ns", 0],
                                                                "filename_prefix": f"latents/{name}"}},
    }


def check_equalities(url: str) -> None:
    prompt: dict = {}
    text_nodes(prompt)
    prompt["empty"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["core_unet"] = {"class_type": "UNETLoader", "inputs": {"unet_name": WIDE_DIT, "weight_dtype": "default"}}
    prompt["pack"] = {"class_type": "NextDiTLoader", "inputs": {"dit_name": WIDE_DIT, "weight_dtype": "fp32"}}
    prompt["ocfg"] = {"class_type": "NextDiTOfficialCFG", "inputs": {"model": ["pack", 1], "cfg_trunc": 0.5,
                                                                     "renorm_cfg": 1.0}}
    prompt.update(ksampler(["core_unet", 0], 1.0, ["empty", 0], "core_cfg1"))
    prompt.update(ksampler(["pack", 1], 1.0, ["empty", 0], "pack_cfg1"))
    prompt.update(ksampler(["ocfg", 0], 4.0, ["empty", 0], "pack_cfg4"))
    prompt.update(pack_sampler(["pack", 0], 4.0, "sampler_cfg4"))
    entry = run(url, prompt)
    core, ours = saved_latent(url, entry, "core_cfg1_save"), saved_latent(url, entry, "pack_cfg1_save")
    print(f"1. KSampler cfg 1, core's model vs the pack's MODEL: relative max difference {relative(ours, core):.2e}")
    assert relative(ours, core) <= 1e-4
    guided, sampler = saved_latent(url, entry, "pack_cfg4_save"), saved_latent(url, entry, "sampler_cfg4_save")
    print(f"2. KSampler cfg 4 + NextDiT Official CFG vs NextDiT Sampler: relative max difference "
          f"{relative(guided, sampler):.2e}")
    assert relative(guided, sampler) <= 1e-4


def check_patches(url: str) -> None:
    prompt: dict = {}
    text_nodes(prompt)
    prompt["empty"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["pack"] = {"class_type": "NextDiTLoader", "inputs": {
        "dit_name": "NewBie-Image-Exp0.1-bf16.safetensors", "weight_dtype": "fp32"}}
    prompt["easycache"] = {"class_type": "EasyCache", "inputs": {
        "model": ["pack", 1], "reuse_threshold": 0.2, "start_percent": 0.15, "end_percent": 0.95, "verbose": True}}
    prompt["compiled"] = {"class_type": "TorchCompileModel", "inputs": {"model": ["pack", 1], "backend": "inductor"}}
    prompt.update(ksampler(["easycache", 0], 1.0, ["empty", 0], "easycache"))
    prompt.update(ksampler(["compiled", 0], 1.0, ["empty", 0], "compiled"))
    prompt.update(ksampler(["pack", 1], 1.0, ["empty", 0], "plain"))
    start = time.time()
    entry = run(url, prompt, timeout=1800)
    plain = saved_latent(url, entry, "plain_save")
    print(f"3. EasyCache and TorchCompileModel on the pack's MODEL: execution_success ({time.time() - start:.0f} s); "
          f"compiled vs plain {relative(saved_latent(url, entry, 'compiled_save'), plain):.2e}, easycache vs "
          f"plain {relative(saved_latent(url, entry, 'easycache_save'), plain):.2e}")


def check_loras(url: str, log: Path | None) -> None:
    prompt: dict = {}
    text_nodes(prompt)
    prompt["empty"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["pack"] = {"class_type": "NextDiTLoader", "inputs": {"dit_name": WIDE_DIT, "weight_dtype": "fp32"}}
    prompt["core_lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["pack", 1], "lora_name": LORA, "strength_model": 0.8}}
    prompt["pack_lora"] = {"class_type": "NextDiTLoraLoader", "inputs": {
        "model": ["pack", 0], "lora_name": LORA, "strength": 0.8}}
    prompt.update(ksampler(["core_lora", 0], 1.0, ["empty", 0], "core_lora"))
    prompt.update(ksampler(["pack_lora", 1], 1.0, ["empty", 0], "pack_lora_core"))
    prompt.update(ksampler(["pack", 1], 1.0, ["empty", 0], "no_lora"))
    sampler = pack_sampler(["pack_lora", 0], 1.0, "pack_lora_sampler")
    sampler["pack_lora_sampler_ns"]["inputs"].update(renorm_cfg=0.0, cfg_trunc=1.0)
    prompt.update(sampler)
    mark = log.stat().st_size if log else 0
    entry = run(url, prompt)
    core_lora, pack_core = saved_latent(url, entry, "core_lora_save"), saved_latent(url, entry, "pack_lora_core_save")
    pack_sampler_lora, base = saved_latent(url, entry, "pack_lora_sampler_save"), saved_latent(url, entry, "no_lora_save")
    print(f"4. LoRA: core LoraLoaderModelOnly vs NextDiT LoRA Loader (core path) {relative(core_lora, pack_core):.2e}; "
          f"NextDiT LoRA Loader core path vs its NextDiT Sampler {relative(pack_core, pack_sampler_lora):.2e}; "
          f"the LoRA changes the latent by {relative(core_lora, base):.2e}")
    assert relative(core_lora, pack_core) <= 1e-4 and relative(pack_core, pack_sampler_lora) <= 1e-4
    assert relative(core_lora, base) > 1e-3
    if log:
        with open(log, "rb") as handle:
            handle.seek(mark)
            text = handle.read().decode(errors="replace")
        assert "lora key not loaded" not in text, "core left LoRA keys unloaded"
        print("   the server log has no 'lora key not loaded'")
    # A new strength on the same loaded weights, then the model without a LoRA: core patches and
    # unpatches the shared Next-DiT, so the LoRA-free latent must come back unchanged.
    prompt["core_lora"]["inputs"]["strength_model"] = 0.4
    prompt["pack_lora"]["inputs"]["strength"] = 0.4
    entry = run(url, prompt)
    core_half, pack_half = saved_latent(url, entry, "core_lora_save"), saved_latent(url, entry, "pack_lora_core_save")
    base_again = saved_latent(url, entry, "no_lora_save")
    print(f"   strength 0.4: core vs pack {relative(core_half, pack_half):.2e}, differs from 0.8 by "
          f"{relative(core_half, core_lora):.2e}; the LoRA-free latent afterwards vs before {relative(base_again, base):.2e}")
    assert relative(core_half, pack_half) <= 1e-4 and relative(core_half, core_lora) > 1e-3
    assert relative(base_again, base) <= 1e-6


def masked_source_graph(width: int, height: int, x: int, y: int) -> dict:
    """The text nodes, the wide Next-DiT ("pack"), a latent core KSampler made from it ("source_ks",
    saved as "source_save") and that latent with a noise mask over the given pixel rectangle ("masked")."""
    prompt: dict = {}
    text_nodes(prompt)
    prompt["pack"] = {"class_type": "NextDiTLoader", "inputs": {"dit_name": WIDE_DIT, "weight_dtype": "fp32"}}
    prompt["empty"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt.update(ksampler(["pack", 1], 1.0, ["empty", 0], "source"))
    prompt["mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}
    prompt["hole"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": width, "height": height}}
    prompt["composite"] = {"class_type": "MaskComposite", "inputs": {
        "destination": ["mask", 0], "source": ["hole", 0], "x": x, "y": y, "operation": "add"}}
    prompt["masked"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["source_ks", 0],
                                                                         "mask": ["composite", 0]}}
    return prompt


def check_inpainting(url: str) -> None:
    prompt = masked_source_graph(width=32, height=32, x=0, y=0)
    prompt.update(ksampler(["pack", 1], 1.0, ["masked", 0], "inpaint"))
    entry = run(url, prompt)
    source, inpainted = saved_latent(url, entry, "source_save"), saved_latent(url, entry, "inpaint_save")
    keep = torch.ones_like(source, dtype=torch.bool)
    keep[..., :4, :4] = False
    print(f"5. core inpainting on the pack's MODEL: outside the mask max |difference| "
          f"{float((inpainted - source)[keep].abs().max()):.2e}, inside {float((inpainted - source)[~keep].abs().max()):.2e}")
    assert float((inpainted - source)[keep].abs().max()) < 1e-4


def check_file_inputs(url: str) -> None:
    loaders = {
        "NextDiTLoader": ({"weight_dtype": "fp32"}, ["dit_name"]),
        "NextDiTLoraLoader": ({"strength": 1.0}, ["lora_name"]),
        "NextDiTTextEncoderLoader": ({"device": "cpu", "dtype": "fp32"}, ["gemma_name", "jina_name"]),
        "NextDiTVAELoader": ({}, ["vae_name"]),
    }
    defaults = {"dit_name": WIDE_DIT, "lora_name": LORA, "gemma_name": "gemma_3_4b_it_bf16.safetensors",
                "jina_name": "jina_clip_v2_bf16.safetensors", "vae_name": "ae.safetensors"}
    refused = 0
    for class_type, (constants, names) in loaders.items():
        for name in names:
            for value in ("/etc/passwd", "../../../../etc/passwd", "../custom_nodes/nextdit-nodes/__init__.py"):
                inputs = {**constants, **{n: defaults[n] for n in names}, name: value}
                prompt = {"load": {"class_type": class_type, "inputs": inputs}}
                if class_type == "NextDiTLoraLoader":
                    prompt["dit"] = {"class_type": "NextDiTLoader", "inputs": {"dit_name": WIDE_DIT, "weight_dtype": "fp32"}}
                    inputs["model"] = ["dit", 0]
                prompt["out"] = {"class_type": "PreviewAny", "inputs": {"source": ["load", 0]}}
                status, answer = post(url, prompt)
                text = json.dumps(answer)
                ok = status == 400 and "load" in answer.get("node_errors", {}) and "/root" not in text \
                    and "root:" not in text
                refused += ok
                if not ok:
                    print(f"   NOT refused: {class_type}.{name}={value!r}: {status} {text[:300]}")
    print(f"6. file inputs: {refused} of 15 path values refused with HTTP 400 and the loader in node_errors")
    assert refused == 15


def check_timestep_ranges(url: str) -> None:
    prompt: dict = {}
    text_nodes(prompt)
    prompt["other"] = {"class_type": "NextDiTTextEncode", "inputs": {
        "text_encoders": ["te", 0], "prompt": "<character_1>\n<n>blue square</n>\n</character_1>",
        "system_prompt": "xml (official)", "custom_system_prompt": ""}}
    prompt["first"] = {"class_type": "ConditioningSetTimestepRange", "inputs": {
        "conditioning": ["pos", 0], "start": 0.0, "end": 0.5}}
    prompt["second"] = {"class_type": "ConditioningSetTimestepRange", "inputs": {
        "conditioning": ["other", 0], "start": 0.5, "end": 1.0}}
    prompt["both"] = {"class_type": "ConditioningCombine", "inputs": {
        "conditioning_1": ["first", 0], "conditioning_2": ["second", 0]}}
    prompt["plain"] = {"class_type": "ConditioningCombine", "inputs": {
        "conditioning_1": ["pos", 0], "conditioning_2": ["other", 0]}}
    prompt["empty"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["core_unet"] = {"class_type": "UNETLoader", "inputs": {"unet_name": WIDE_DIT, "weight_dtype": "default"}}
    prompt["pack"] = {"class_type": "NextDiTLoader", "inputs": {"dit_name": WIDE_DIT, "weight_dtype": "fp32"}}
    steps = 5     # the 50 % boundary falls between grid points
    for name, model, sampler in (("core", ["core_unet", 0], "KSampler"), ("ours", ["pack", 0], "NextDiTSampler"),
                                 ("combined", ["pack", 0], "NextDiTSampler")):
        conditioning = ["plain" if name == "combined" else "both", 0]
        if sampler == "KSampler":
            inputs = {"model": model, "seed": SEED, "steps": steps, "cfg": 1.0, "sampler_name": "euler",
                      "scheduler": "simple", "positive": conditioning, "negative": ["neg", 0],
                      "latent_image": ["empty", 0], "denoise": 1.0}
        else:
            inputs = {"model": model, "positive": conditioning, "width": 64, "height": 64, "batch_size": 1,
                      "seed": SEED, "steps": steps, "solver": "euler", "shift": 6.0, "cfg": 1.0, "renorm_cfg": 0.0,
                      "cfg_trunc": 1.0, "guidance": 0.0}
        prompt[f"{name}_s"] = {"class_type": sampler, "inputs": inputs}
        prompt[f"{name}_save"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"{name}_s", 0],
                                                                        "filename_prefix": f"latents/{name}"}}
    entry = run(url, prompt)
    core, ours, combined = (saved_latent(url, entry, f"{n}_save") for n in ("core", "ours", "combined"))
    print(f"7. timestep ranges: NextDiT Sampler vs core KSampler on core's model {relative(ours, core):.2e}; "
          f"vs the plain combination {relative(ours, combined):.2e}")
    assert relative(ours, core) <= 1e-4 and relative(ours, combined) > 1e-3


def check_sampler_inpainting(url: str) -> None:
    prompt = masked_source_graph(width=32, height=24, x=16, y=8)
    prompt.update(ksampler(["pack", 1], 1.0, ["masked", 0], "core_inpaint"))
    prompt["ours"] = {"class_type": "NextDiTSampler", "inputs": {
        "model": ["pack", 0], "positive": ["pos", 0], "width": 64, "height": 64, "batch_size": 1, "seed": SEED,
        "steps": STEPS, "solver": "euler", "shift": 6.0, "cfg": 1.0, "renorm_cfg": 0.0, "cfg_trunc": 1.0,
        "guidance": 0.0, "latent": ["masked", 0], "denoise": 1.0}}
    prompt["ours_save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["ours", 0],
                                                                 "filename_prefix": "latents/ours_inpaint"}}
    entry = run(url, prompt)
    core, ours = saved_latent(url, entry, "core_inpaint_save"), saved_latent(url, entry, "ours_save")
    source = saved_latent(url, entry, "source_save")
    print(f"8. inpainting: NextDiT Sampler vs core KSampler on the pack's MODEL {relative(ours, core):.2e}; "
          f"changed inside the mask by {float((ours - source).abs().max()):.2e}")
    assert relative(ours, core) <= 1e-4


def check_img2img(url: str) -> None:
    # Steps per denoise so that int(steps / denoise) divides 1000 (core's sigma table then holds
    # the pack's grid points exactly): 0.1 → 4 of 40, 0.3 → 6 of 20, 0.6 → 6 of 10.
    prompt: dict = {}
    text_nodes(prompt)
    prompt["pack"] = {"class_type": "NextDiTLoader", "inputs": {"dit_name": WIDE_DIT, "weight_dtype": "fp32"}}
    # The latent a 100×76 image encodes to (cropped to 96×72 as core's VAEEncode crops): 12×9, made
    # here by KSampler itself (so the check needs no VAE), odd in height.
    prompt["empty"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 96, "height": 72, "batch_size": 1}}
    prompt.update(ksampler(["pack", 1], 1.0, ["empty", 0], "source"))
    # The odd side through core's own model (its pad-and-crop) and through the pack's.
    prompt["core_unet"] = {"class_type": "UNETLoader", "inputs": {"unet_name": WIDE_DIT, "weight_dtype": "default"}}
    prompt.update(ksampler(["core_unet", 0], 1.0, ["empty", 0], "core_source"))
    cases = {"d01": (0.1, 4), "d03": (0.3, 6), "d06": (0.6, 6)}
    for name, (denoise, steps) in cases.items():
        prompt.update(ksampler(["pack", 1], 1.0, ["source_ks", 0], f"core_{name}", denoise=denoise, steps=steps))
        prompt[f"ours_{name}"] = {"class_type": "NextDiTSampler", "inputs": {
            "model": ["pack", 0], "positive": ["pos", 0], "width": 64, "height": 64, "batch_size": 1,
            "seed": SEED, "steps": steps, "solver": "euler", "shift": 6.0, "cfg": 1.0, "renorm_cfg": 0.0,
            "cfg_trunc": 1.0, "guidance": 0.0, "latent": ["source_ks", 0], "denoise": denoise}}
        prompt[f"ours_{name}_save"] = {"class_type": "SaveLatent", "inputs": {
            "samples": [f"ours_{name}", 0], "filename_prefix": f"latents/ours_{name}"}}
    entry = run(url, prompt)
    core, ours = saved_latent(url, entry, "core_source_save"), saved_latent(url, entry, "source_save")
    print(f"13. a 12x9 latent from noise, KSampler on core's own model vs on the pack's MODEL: "
          f"{relative(ours, core):.2e}")
    assert relative(ours, core) <= 1e-4
    for name, (denoise, steps) in cases.items():
        core, ours = saved_latent(url, entry, f"core_{name}_save"), saved_latent(url, entry, f"ours_{name}_save")
        assert tuple(ours.shape[2:]) == (9, 12), ours.shape
        print(f"13. img2img of a 100x76 image, denoise {denoise} ({steps} steps): NextDiT Sampler vs core "
              f"KSampler on the pack's MODEL {relative(ours, core):.2e}")
        assert relative(ours, core) <= 1e-4


def png16(data: bytes) -> torch.Tensor:
    """An RGB 16-bit PNG (SaveImageAdvanced's) as [H, W, 3] in [0, 1]: Pillow reads such files as
    8-bit, so the rows are inflated and unfiltered here (PNG specification, section 9)."""
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, header = 8, b"", None
    while at < len(data):
        (length,), kind = struct.unpack(">I", data[at:at + 4]), data[at + 4:at + 8]
        body = data[at + 8:at + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        at += 12 + length
    width, height, depth, colour = header[:4]
    assert (depth, colour) == (16, 2), header
    raw, stride, bpp = zlib.decompress(idat), width * 6, 6
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        previous = line
    values = struct.unpack(f">{width * height * 3}H", b"".join(rows))
    return torch.tensor(values, dtype=torch.float32).reshape(height, width, 3) / 65535


def saved_png16(url: str, entry: dict, node: str) -> torch.Tensor:
    (image,) = entry["outputs"][node]["images"]
    query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image["subfolder"],
                                    "type": image["type"]})
    with urllib.request.urlopen(f"{url}/view?{query}") as response:
        return png16(response.read())


def check_core_vae(url: str) -> None:
    prompt = embedded_student_graph("NextDiT-embedded-shapes.pth", "square", "blue", "centre")
    prompt["ns"] = {"class_type": "NextDiTSampler", "inputs": {
        "model": ["student", 0], "positive": ["pos", 0], "width": 64, "height": 64, "batch_size": 1,
        "seed": SEED, "steps": 6, "solver": "euler", "shift": 6.0, "cfg": 1.0, "renorm_cfg": 0.0,
        "cfg_trunc": 1.0, "guidance": 0.0}}
    vaes = {"emb": "embedded-shapes-vae", "ae": "ae.safetensors"}
    # TAEF1 decodes only: core VAEDecode on its core_vae against NextDiT VAE Decode
    prompt["taef1_vae"] = {"class_type": "NextDiTVAELoader", "inputs": {"vae_name": TAEF1}}
    for node, class_type, inputs in (("ours", "NextDiTVAEDecode", {"tiled": "off"}), ("core", "VAEDecode", {})):
        prompt[f"taef1_{node}_dec"] = {"class_type": class_type, "inputs": {
            "vae": ["taef1_vae", 0 if node == "ours" else 1], "samples": ["ns", 0], **inputs}}
        prompt[f"taef1_{node}_dec_save"] = {"class_type": "SaveImageAdvanced", "inputs": {
            "images": [f"taef1_{node}_dec", 0], "filename_prefix": f"vae/taef1_{node}_dec", "format": "png",
            "format.bit_depth": "16-bit", "format.input_color_space": "sRGB"}}
    for name, vae_name in vaes.items():
        vae = f"{name}_vae"
        prompt[vae] = {"class_type": "NextDiTVAELoader", "inputs": {"vae_name": vae_name}}
        nodes = {
            "ours_dec": ("NextDiTVAEDecode", {"vae": [vae, 0], "samples": ["ns", 0], "tiled": "off"}),
            "core_dec": ("VAEDecode", {"vae": [vae, 1], "samples": ["ns", 0]}),
            "tiled_dec": ("VAEDecodeTiled", {"vae": [vae, 1], "samples": ["ns", 0], "tile_size": 512,
                                             "overlap": 64, "temporal_size": 64, "temporal_overlap": 8}),
            "ours_enc": ("NextDiTVAEEncode", {"vae": [vae, 0], "pixels": [f"{name}_ours_dec", 0]}),
            "core_enc": ("VAEEncode", {"vae": [vae, 1], "pixels": [f"{name}_ours_dec", 0]}),
            "hole": ("SolidMask", {"value": 1.0, "width": 64, "height": 64}),
            "inpaint_enc": ("VAEEncodeForInpaint", {"vae": [vae, 1], "pixels": [f"{name}_ours_dec", 0],
                                                     "mask": [f"{name}_hole", 0], "grow_mask_by": 6}),
        }
        for node, (class_type, inputs) in nodes.items():
            prompt[f"{name}_{node}"] = {"class_type": class_type, "inputs": inputs}
        for node in ("ours_dec", "core_dec", "tiled_dec"):
            prompt[f"{name}_{node}_save"] = {"class_type": "SaveImageAdvanced", "inputs": {
                "images": [f"{name}_{node}", 0], "filename_prefix": f"vae/{name}_{node}", "format": "png",
                "format.bit_depth": "16-bit", "format.input_color_space": "sRGB"}}
        for node in ("ours_enc", "core_enc", "inpaint_enc"):
            prompt[f"{name}_{node}_save"] = {"class_type": "SaveLatent", "inputs": {
                "samples": [f"{name}_{node}", 0], "filename_prefix": f"latents/{name}_{node}"}}
    entry = run(url, prompt)
    for name, vae_name in vaes.items():
        ours, core = saved_png16(url, entry, f"{name}_ours_dec_save"), saved_png16(url, entry, f"{name}_core_dec_save")
        tiled = saved_png16(url, entry, f"{name}_tiled_dec_save")
        ours_latent = saved_latent(url, entry, f"{name}_ours_enc_save")
        core_latent = saved_latent(url, entry, f"{name}_core_enc_save")
        inpaint = saved_latent(url, entry, f"{name}_inpaint_enc_save")
        decode_gap, tiled_gap = float((ours - core).abs().max()), float((ours - tiled).abs().max())
        print(f"15. {vae_name}: core VAEDecode on core_vae vs NextDiT VAE Decode: max |difference| "
              f"{decode_gap:.2e} (image range {float(ours.min()):.2f}..{float(ours.max()):.2f}, 16-bit PNG); "
              f"VAEDecodeTiled {tiled_gap:.2e}; core VAEEncode vs NextDiT VAE Encode: relative max "
              f"difference {relative(core_latent, ours_latent):.2e}; VAEEncodeForInpaint {tuple(inpaint.shape)}")
        assert float(ours.max() - ours.min()) > 0.1, "a flat image would not tell the decoders apart"
        assert decode_gap <= 1e-4 and tiled_gap <= 1e-4
        assert ours_latent.shape == core_latent.shape == inpaint.shape == (1, 16, 8, 8)
        assert relative(core_latent, ours_latent) <= 1e-4
    ours, core = saved_png16(url, entry, "taef1_ours_dec_save"), saved_png16(url, entry, "taef1_core_dec_save")
    gap = float((ours - core).abs().max())
    print(f"15. {TAEF1} (TAEF1, decode only): core VAEDecode on core_vae vs NextDiT VAE Decode: max |difference| "
          f"{gap:.2e} (image range {float(ours.min()):.2f}..{float(ours.max()):.2f}, 16-bit PNG)")
    assert float(ours.max() - ours.min()) > 0.1, "a flat image would not tell the decoders apart"
    assert gap <= 1e-4


def check_core_vae_controlnet(url: str) -> None:
    """18. core's Apply ControlNet with NextDiT VAE Loader's core_vae as its VAE (the control image
    encoded by the pack's autoencoder through core's VAE interface), the embedded outline
    ControlNet: NextDiT Sampler equals core KSampler on core_model, and the ControlNet acts."""
    upload_image(url, TESTS.parent / "embedded" / "input" / "embedded-shapes-outline.png")
    prompt = embedded_student_graph("NextDiT-embedded-shapes.pth", "triangle", "green", "centre")
    prompt.update({
        "vae": {"class_type": "NextDiTVAELoader", "inputs": {"vae_name": "embedded-shapes-vae"}},
        "cn": {"class_type": "NextDiTControlNetLoader", "inputs": {
            "control_net_name": "NextDiT-embedded-shapes-outline.safetensors"}},
        "image": {"class_type": "LoadImage", "inputs": {"image": "embedded-shapes-outline.png"}},
        "apply": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": ["image", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "vae": ["vae", 1]}},
    })
    sampler = {"width": 64, "height": 64, "batch_size": 1, "seed": SEED, "steps": STEPS, "solver": "euler",
               "shift": 6.0, "cfg": 4.0, "renorm_cfg": 0.0, "cfg_trunc": 1.0, "guidance": 0.0}
    prompt["pack"] = {"class_type": "NextDiTSampler", "inputs": {
        "model": ["student", 0], "positive": ["apply", 0], "negative": ["apply", 1], **sampler}}
    prompt["plain"] = {"class_type": "NextDiTSampler", "inputs": {
        "model": ["student", 0], "positive": ["pos", 0], "negative": ["neg", 0], **sampler}}
    prompt["core"] = {"class_type": "KSampler", "inputs": {
        "model": ["student", 1], "seed": SEED, "steps": STEPS, "cfg": 4.0, "sampler_name": "euler",
        "scheduler": "simple", "positive": ["apply", 0], "negative": ["apply", 1], "latent_image": ["empty", 0],
        "denoise": 1.0}}
    for node in ("pack", "plain", "core"):
        prompt[f"{node}_save"] = {"class_type": "SaveLatent", "inputs": {
            "samples": [node, 0], "filename_prefix": f"latents/cn_{node}"}}
    entry = run(url, prompt)
    pack, plain, core = (saved_latent(url, entry, f"{node}_save") for node in ("pack", "plain", "core"))
    gap, effect = float((pack - core).abs().max()), float((pack - plain).abs().max())
    print(f"18. Apply ControlNet with core_vae (embedded autoencoder, outline ControlNet): NextDiT Sampler vs "
          f"KSampler on core_model max |difference| {gap:.2e}; the ControlNet moves the latent by {effect:.3g}")
    assert gap <= 1e-4 and effect > 1e-2


def check_embedded_lora(url: str) -> None:
    lora = "NextDiT-embedded-shapes-tiny.safetensors"
    listed = json.loads(urllib.request.urlopen(f"{url}/object_info/LoraLoaderModelOnly").read())
    choices = listed["LoraLoaderModelOnly"]["input"]["required"]["lora_name"]
    choices = choices[0] if isinstance(choices[0], list) else choices[1]["options"]
    assert lora in choices, choices
    prompt = embedded_student_graph("NextDiT-embedded-shapes.pth", "triangle", "green", "centre")
    prompt["core_lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["student", 1], "lora_name": lora, "strength_model": 1.0}}
    prompt["pack_lora"] = {"class_type": "NextDiTLoraLoader", "inputs": {
        "model": ["student", 0], "lora_name": lora, "strength": 1.0}}
    prompt["core_ks"] = {"class_type": "KSampler", "inputs": {
        "model": ["core_lora", 0], "seed": SEED, "steps": STEPS, "cfg": 1.0, "sampler_name": "euler",
        "scheduler": "simple", "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
        "denoise": 1.0}}
    prompt["ns"] = {"class_type": "NextDiTSampler", "inputs": {
        "model": ["pack_lora", 0], "positive": ["pos", 0], "width": 64, "height": 64, "batch_size": 1,
        "seed": SEED, "steps": STEPS, "solver": "euler", "shift": 6.0, "cfg": 1.0, "renorm_cfg": 0.0,
        "cfg_trunc": 1.0, "guidance": 0.0}}
    prompt["base_ks"] = {**prompt["core_ks"], "inputs": {**prompt["core_ks"]["inputs"], "model": ["student", 1]}}
    for node in ("core_ks", "ns", "base_ks"):
        prompt[f"{node}_save"] = {"class_type": "SaveLatent", "inputs": {"samples": [node, 0],
                                                                        "filename_prefix": f"latents/emb_{node}"}}
    entry = run(url, prompt)
    core, ours, base = (saved_latent(url, entry, f"{node}_save") for node in ("core_ks", "ns", "base_ks"))
    print(f"16. core LoraLoaderModelOnly lists {lora}; with it KSampler vs NextDiT LoRA Loader + NextDiT Sampler "
          f"{relative(core, ours):.2e}; the LoRA changes the latent by {relative(core, base):.2e}")
    assert relative(core, ours) <= 1e-4 < relative(core, base)


def check_error_payload(url: str) -> None:
    import asyncio

    import aiohttp

    client_id = uuid.uuid4().hex
    prompt = {"bad": {"class_type": "NextDiTLoader", "inputs": {"dit_name": DAMAGED, "weight_dtype": "fp32"}},
              "show": {"class_type": "PreviewAny", "inputs": {"source": ["bad", 0]}}}

    async def listen() -> tuple[str, dict]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
                async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as answer:
                    assert answer.status == 200, await answer.text()
                    prompt_id = (await answer.json())["prompt_id"]
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        data = json.loads(message.data)
                        if data["type"] in ("execution_success", "execution_error"):
                            return prompt_id, data
        raise RuntimeError("the websocket closed before the run ended")

    prompt_id, event = asyncio.run(listen())
    assert event["type"] == "execution_error", event
    with urllib.request.urlopen(f"{url}/history/{prompt_id}") as response:
        messages = json.load(response)[prompt_id]["status"]["messages"]
    (stored,) = [m[1] for m in messages if m[0] == "execution_error"]
    for payload in (event["data"], stored):
        kind, text = payload["exception_type"], payload["exception_message"]
        print(f"17. error panel: {kind}: {text.strip()[:120]}")
        assert kind == "nextdit_nodes.WeightsError", kind
        assert text.startswith(f"diffusion_models/{DAMAGED}: "), text
        assert "/" not in text.split(":")[0].removeprefix("diffusion_models/"), text


def check_node_texts(url: str) -> None:
    import asyncio
    import struct

    import aiohttp

    client_id = uuid.uuid4().hex
    prompt: dict = {}
    text_nodes(prompt)
    prompt["xml"] = {"class_type": "NextDiTXMLPrompt", "inputs": {
        "prompt": "<character_1><n>miku</n><hair>teal</hair></character_1>", "caption": ""}}
    prompt["bad"] = {"class_type": "NextDiTTextEncode", "inputs": {
        "text_encoders": ["te", 0], "prompt": "<character_1><n>circle</n><apperance>red</apperance>",
        "system_prompt": "none", "custom_system_prompt": ""}}
    prompt["pack"] = {"class_type": "NextDiTLoader", "inputs": {"dit_name": WIDE_DIT, "weight_dtype": "fp32"}}
    prompt["lora"] = {"class_type": "NextDiTLoraLoader", "inputs": {"model": ["pack", 0], "lora_name": LORA,
                                                                    "strength": 1.0}}
    for name, source in (("o1", ["xml", 0]), ("o2", ["bad", 0]), ("o3", ["lora", 0])):
        prompt[name] = {"class_type": "PreviewAny", "inputs": {"source": source}}

    async def listen() -> dict[str, str]:
        texts: dict[str, str] = {}
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
                body = {"prompt": prompt, "client_id": client_id}
                async with session.post(f"{url}/prompt", json=body) as answer:
                    assert answer.status == 200, await answer.text()
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY and struct.unpack(">I", message.data[:4])[0] == 3:
                        (length,) = struct.unpack(">I", message.data[4:8])
                        texts[message.data[8:8 + length].decode()] = message.data[8 + length:].decode()
                    elif message.type == aiohttp.WSMsgType.TEXT:
                        data = json.loads(message.data)
                        if data["type"] in ("execution_success", "execution_error"):
                            assert data["type"] == "execution_success", data
                            return texts
        return texts

    texts = asyncio.run(listen())
    print(f"14. progress text per node: { {node: text[:60] for node, text in texts.items()} }")
    assert "hair" in texts["xml"] and "cannot be read" in texts["bad"] and "applied" in texts["lora"], texts


def check_refusals(url: str) -> None:
    refused = []
    for node, inputs in (("ConditioningSetArea", {"width": 64, "height": 64, "x": 0, "y": 0, "strength": 1.0}),
                         ("ConditioningSetMask", {"mask": ["hole", 0], "strength": 1.0, "set_cond_area": "default"})):
        prompt: dict = {}
        text_nodes(prompt)
        prompt["hole"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 32}}
        prompt["feature"] = {"class_type": node, "inputs": {"conditioning": ["pos", 0], **inputs}}
        prompt["pack"] = {"class_type": "NextDiTLoader", "inputs": {"dit_name": WIDE_DIT, "weight_dtype": "fp32"}}
        prompt.update(pack_sampler(["pack", 0], 1.0, "refused"))
        prompt["refused_ns"]["inputs"]["positive"] = ["feature", 0]
        try:
            run(url, prompt)
        except RuntimeError as error:
            assert node in str(error) and "core_model" in str(error), str(error)[:500]
            refused.append(node)
    print(f"9. refused with a message naming the node: {', '.join(refused)}")
    assert len(refused) == 2


def check_numbers(url: str) -> None:
    sampler: dict = {}
    text_nodes(sampler)
    sampler["pack"] = {"class_type": "NextDiTLoader", "inputs": {"dit_name": WIDE_DIT, "weight_dtype": "fp32"}}
    sampler.update(pack_sampler(["pack", 0], 4.0, "num"))
    lora = {"pack": sampler["pack"], "lora": {"class_type": "NextDiTLoraLoader", "inputs": {
        "model": ["pack", 0], "lora_name": LORA, "strength": 1.0}},
        "out": {"class_type": "PreviewAny", "inputs": {"source": ["lora", 0]}}}
    ocfg = {"pack": sampler["pack"], "ocfg": {"class_type": "NextDiTOfficialCFG", "inputs": {
        "model": ["pack", 1], "cfg_trunc": 0.5, "renorm_cfg": 1.0}},
        "out": {"class_type": "PreviewAny", "inputs": {"source": ["ocfg", 0]}}}
    targets = [(sampler, "num_ns", name) for name in ("width", "height", "batch_size", "seed", "steps", "shift",
                                                      "cfg", "renorm_cfg", "cfg_trunc", "guidance")]
    targets += [(lora, "lora", "strength"), (ocfg, "ocfg", "cfg_trunc"), (ocfg, "ocfg", "renorm_cfg")]
    refused = total = 0
    for graph, node, name in targets:
        for value in (float("nan"), float("inf"), "nan", "abc"):
            prompt = json.loads(json.dumps(graph))
            prompt[node]["inputs"][name] = value
            status, answer = post(url, prompt)
            errors = answer.get("node_errors", {}).get(node, {}).get("errors", [])
            about = [e for e in errors if e.get("extra_info", {}).get("input_name") == name]
            total += 1
            if status == 400 and len(about) == 1 and len(errors) == 1:
                refused += 1
            else:
                print(f"   {node}.{name}={value!r}: {status}, {len(about)} errors on the input: {json.dumps(errors)[:400]}")
    print(f"10. numbers: {refused} of {total} bad values refused with HTTP 400, one error, on their input")
    assert refused == total


def embedded_student_graph(dit_name: str, shape: str, colour: str, cell: str) -> dict:
    """Loader ("student": NEXTDIT_MODEL, core MODEL), the embedded text encoders, a one-object
    prompt ("pos"), the empty negative ("neg") and a 64×64 empty latent ("empty")."""
    return {
        "student": {"class_type": "NextDiTLoader", "inputs": {"dit_name": dit_name, "weight_dtype": "fp32"}},
        "te": {"class_type": "NextDiTTextEncoderLoader", "inputs": {
            "gemma_name": "embedded-shapes-gemma3.safetensors", "jina_name": "embedded-shapes-jina.safetensors",
            "device": "cpu", "dtype": "fp32"}},
        "pos": {"class_type": "NextDiTTextEncode", "inputs": {
            "text_encoders": ["te", 0], "system_prompt": "none", "custom_system_prompt": "",
            "prompt": f"<character_1>\n<n>{shape}</n>\n<appearance>{colour}, large</appearance>\n"
                      f"<position>{cell}</position>\n</character_1>"}},
        "neg": {"class_type": "NextDiTTextEncode", "inputs": {
            "text_encoders": ["te", 0], "prompt": "", "system_prompt": "none", "custom_system_prompt": ""}},
        "empty": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


def check_student(url: str) -> None:
    prompt = embedded_student_graph("NextDiT-embedded-shapes-distilled.safetensors", "circle", "red", "top_left")
    for guidance in (4.0, 1.0):
        name = f"g{guidance:g}"
        prompt[f"{name}_flux"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["pos", 0],
                                                                          "guidance": guidance}}
        prompt[f"{name}_ks"] = {"class_type": "KSampler", "inputs": {
            "model": ["student", 1], "seed": SEED, "steps": STEPS, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": [f"{name}_flux", 0], "negative": ["neg", 0],
            "latent_image": ["empty", 0], "denoise": 1.0}}
        prompt[f"{name}_save"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"{name}_ks", 0],
                                                                        "filename_prefix": f"latents/{name}"}}
    prompt["ns"] = {"class_type": "NextDiTSampler", "inputs": {
        "model": ["student", 0], "positive": ["pos", 0], "width": 64, "height": 64, "batch_size": 1,
        "seed": SEED, "steps": STEPS, "solver": "euler", "shift": 6.0, "cfg": 1.0, "renorm_cfg": 0.0,
        "cfg_trunc": 1.0, "guidance": 4.0}}
    prompt["ns_save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["ns", 0],
                                                               "filename_prefix": "latents/student_ns"}}
    entry = run(url, prompt)
    core4, core1 = saved_latent(url, entry, "g4_save"), saved_latent(url, entry, "g1_save")
    sampler = saved_latent(url, entry, "ns_save")
    print(f"11. student, KSampler cfg 1 + FluxGuidance 4 vs NextDiT Sampler guidance 4: relative max difference "
          f"{relative(core4, sampler):.2e} (guidance 1 instead: {relative(core1, sampler):.2e})")
    assert relative(core4, sampler) <= 1e-4 < relative(core1, sampler)


def check_few_step(url: str) -> None:
    prompt = embedded_student_graph("NextDiT-embedded-shapes-distilled-4step.safetensors", "square", "blue",
                                    "middle_center")
    prompt["g1"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["pos", 0], "guidance": 1.0}}
    for name, positive in (("own", "pos"), ("g1", "g1")):
        prompt[f"{name}_ks"] = {"class_type": "KSampler", "inputs": {
            "model": ["student", 1], "seed": SEED, "steps": 4, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": [positive, 0], "negative": ["neg", 0],
            "latent_image": ["empty", 0], "denoise": 1.0}}
        prompt[f"{name}_save"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"{name}_ks", 0],
                                                                        "filename_prefix": f"latents/fs_{name}"}}
    prompt["ns"] = {"class_type": "NextDiTSampler", "inputs": {
        "model": ["student", 0], "positive": ["pos", 0], "width": 64, "height": 64, "batch_size": 1,
        "seed": SEED, "steps": 0, "solver": "midpoint", "shift": 3.0, "cfg": 5.0, "renorm_cfg": 0.0,
        "cfg_trunc": 1.0, "guidance": 0.0}}    # steps 0: every other widget is replaced by the file's
    prompt["ns_save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["ns", 0],
                                                               "filename_prefix": "latents/fs_ns"}}
    entry = run(url, prompt)
    own, g1 = saved_latent(url, entry, "own_save"), saved_latent(url, entry, "g1_save")
    sampler = saved_latent(url, entry, "ns_save")
    print(f"12. 4-step student, KSampler euler/simple/4/cfg 1 without FluxGuidance vs NextDiT Sampler steps 0: "
          f"relative max difference {relative(own, sampler):.2e} (FluxGuidance 1: {relative(g1, sampler):.2e})")
    assert relative(own, sampler) <= 1e-4 < relative(g1, sampler)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8199")
    parser.add_argument("--models", type=Path, help="ComfyUI models folder to fill (with --write-models)")
    parser.add_argument("--write-models", action="store_true")
    parser.add_argument("--log", type=Path, help="the server log, to look for unloaded LoRA keys")
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    if args.write_models:
        write_models(args.models)
        return 0
    checks = {"equal": check_equalities, "patches": check_patches, "lora": lambda url: check_loras(url, args.log),
              "inpaint": check_inpainting, "files": check_file_inputs, "ranges": check_timestep_ranges,
              "sampler_inpaint": check_sampler_inpainting, "refusals": check_refusals, "numbers": check_numbers,
              "student": check_student, "few_step": check_few_step, "img2img": check_img2img,
              "node_texts": check_node_texts, "core_vae": check_core_vae,
              "embedded_lora": check_embedded_lora, "error_payload": check_error_payload,
              "core_vae_controlnet": check_core_vae_controlnet}
    for name, check in checks.items():
        if args.only is None or name in args.only:
            check(args.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
