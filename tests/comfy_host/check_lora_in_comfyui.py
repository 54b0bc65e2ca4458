"""A LoRA made by ``train-lora`` in real ComfyUI, through core's own nodes (issue 22; outside CI).

1. Writes a Next-DiT at NewBie's widths (dim 2304, 24/8 heads, feed-forward 9216: what core's model
   detection builds for a NewBie file) with one joint block, tiny text encoders and VAE, a small
   dataset, and trains a LoRA on it with ``python -m nextdit_nodes train-lora``.
2. The pack's side, headless: NextDiT Loader → NextDiT LoRA Loader → one Euler step (seed, shift 6,
   CFG 1) of a 32×32 latent, with and without the LoRA.
3. Core's side, in a ComfyUI started here with ``../shared/comfy-host/comfy_run.sh`` on its own
   port: UNETLoader → LoraLoaderModelOnly → KSampler (euler, simple, 1 step, CFG 1, same seed) →
   SaveLatent, with CONDITIONING from the pack's text nodes (ComfyUI's custom_nodes copy of the
   pack; the text side is not what this checks) and the same models folder (extra_model_paths).
4. Checks: no "lora key not loaded" in the server log, core's latent equals the pack's within 1e-4
   with the LoRA (and differs clearly without it, so the LoRA matters).

  python tests/comfy_host/check_lora_in_comfyui.py --work /tmp/lora_check [--port 8399]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
DIT, LORA = "newbie-width-1-block.safetensors", "newbie-width-check.safetensors"
PROMPT, SEED, SIZE = "a girl with long blue hair", 7, 32


def prepare(work: Path) -> Path:
    """The models folder (DiT, text encoders, VAE, LoRA) and the pack's latents."""
    import numpy as np
    import torch
    from factories import newbie_width_params, write_dit_checkpoint
    from PIL import Image
    from runtime_models import GEMMA, JINA, VAE, write_tiny_models
    from text_fixtures import GEMMA_SHAPES, JINA_SHAPES

    models = write_tiny_models(work / "models")
    params = newbie_width_params(n_layers=1, ffn_dim=9216, cap_dim=GEMMA_SHAPES["hidden_size"],
                                 clip_dim=JINA_SHAPES["hidden_size"])
    write_dit_checkpoint(models / "diffusion_models" / DIT, params, seed=0, prefix="", norm_final=False)
    data = work / "data"
    data.mkdir(exist_ok=True)
    for index in range(4):
        pixels = np.random.default_rng(index).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / f"{index}.png")
        (data / f"{index}.txt").write_text(f"{PROMPT}, picture {index}")
    (models / "loras").mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "nextdit_nodes", "train-lora", str(data),
                    "--dit", str(models / "diffusion_models" / DIT), "--gemma", str(models / "text_encoders" / GEMMA),
                    "--jina", str(models / "text_encoders" / JINA), "--vae", str(models / "vae" / VAE),
                    "--output", str(models / "loras" / LORA), "--resolution", str(SIZE), "--steps", "2",
                    "--rank", "8", "--lr", "1e-2", "--batch-size", "2", "--save-dtype", "fp32", "--device", "cpu",
                    "--overwrite", "--no-progress"], check=True)

    from nextdit_nodes.nodes.dit import NextDiTLoader
    from nextdit_nodes.nodes.lora import NextDiTLoraLoader
    from nextdit_nodes.nodes.sampling import NextDiTSampler
    from nextdit_nodes.nodes.text import NextDiTTextEncode, NextDiTTextEncoderLoader

    (model,) = NextDiTLoader().load(str(models / "diffusion_models" / DIT), "fp32")
    patched = NextDiTLoraLoader().apply(model, str(models / "loras" / LORA), 1.0)["result"][0]
    (text,) = NextDiTTextEncoderLoader().load(str(models / "text_encoders" / GEMMA),
                                            str(models / "text_encoders" / JINA), "cpu", "fp32")
    (positive,) = NextDiTTextEncode().encode(text, PROMPT, "none", "")
    sampler = NextDiTSampler()
    for name, which in (("pack_lora", patched), ("pack_base", model)):
        result = sampler.sample(which, positive, SIZE, SIZE, 1, SEED, 1, "euler", 6.0, 1.0, 0.0, 1.0, 0.0)
        latent = result["result"][0] if isinstance(result, dict) else result[0]
        torch.save(latent["samples"], work / f"{name}.pt")
    return models


def api_prompt(with_lora: bool) -> dict:
    model = ["2", 0] if with_lora else ["1", 0]
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": DIT, "weight_dtype": "default"}},
        "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": LORA,
                                                              "strength_model": 1.0}},
        "3": {"class_type": "NextDiTTextEncoderLoader", "inputs": {
            "gemma_name": "gemma_3_4b_it_bf16.safetensors", "jina_name": "jina_clip_v2_bf16.safetensors",
            "device": "cpu", "dtype": "fp32"}},
        "4": {"class_type": "NextDiTTextEncode", "inputs": {"text_encoders": ["3", 0], "prompt": PROMPT,
                                                           "system_prompt": "none", "custom_system_prompt": ""}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": model, "seed": SEED, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["4", 0], "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0],
                                                     "filename_prefix": "core_lora" if with_lora else "core_base"}},
    }


def run_core(work: Path, models: Path, port: int) -> tuple[Path, Path]:
    """Start ComfyUI, queue both prompts, stop it; returns (its output folder, its log)."""
    from comfy_host.comfy_server import queue, running_comfyui

    with running_comfyui(work, models, ("diffusion_models", "text_encoders", "vae", "loras"), port,
                         name="lora_check") as (url, rundir, log):
        for with_lora in (True, False):
            queue(url, api_prompt(with_lora), work / f"api_{'lora' if with_lora else 'base'}.json")
    return rundir / "output", log


def compare(work: Path, output: Path, log: Path) -> list[str]:
    import torch
    from safetensors.torch import load_file

    problems = []
    missing = [line for line in log.read_text(errors="replace").splitlines() if "lora key not loaded" in line]
    print(f"'lora key not loaded' lines in the server log: {len(missing)}")
    problems += missing[:5]
    for name in ("lora", "base"):
        core = load_file(str(next(output.rglob(f"core_{name}_*.latent"))))["latent_tensor"].float()
        pack = torch.load(work / f"pack_{name}.pt")
        difference = (core - pack).abs().max().item()
        print(f"{name}: max |core - pack| = {difference:.3g} (values up to {pack.abs().max().item():.3g})")
        if difference > 1e-4:
            problems.append(f"{name}: core and pack differ by {difference:.3g}")
    lora_effect = (torch.load(work / "pack_lora.pt") - torch.load(work / "pack_base.pt")).abs().max().item()
    print(f"the LoRA changes the latent by up to {lora_effect:.3g}")
    if lora_effect < 1e-2:
        problems.append("the LoRA barely changes the output: the comparison proves little")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lora_check"))
    parser.add_argument("--port", type=int, default=8399)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    models = prepare(args.work)
    output, log = run_core(args.work, models, args.port)
    problems = compare(args.work, output, log)
    print("OK" if not problems else "PROBLEMS:\n  " + "\n  ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
