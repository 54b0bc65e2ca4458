"""The pack's ControlNet in real ComfyUI, applied with core's own Apply ControlNet (outside CI).

1. Writes tiny random models (runtime_models), a random 2-block ControlNet with non-zero
   projections into models/controlnet, a random full-size FLUX-layout VAE that core's VAELoader
   reads (the control image is encoded with core's VAE), and a control image.
2. In a ComfyUI started here (``../shared/comfy-host/comfy_run.sh``, its own port, the pack in
   custom_nodes of a copy of the ComfyUI tree): LoadImage → ControlNetApplyAdvanced (strength 0.8,
   start 25 %, end 75 %, core's VAE) → NextDiT Sampler on NextDiT Loader's model AND KSampler on its
   core_model (euler, simple, 4 steps, CFG 1, same seed) → SaveLatent; and NextDiT Sampler without
   the ControlNet.
3. Checks: both samplers give the same latent within 1e-4, and the ControlNet changes it.

  python tests/comfy_host/check_controlnet_in_comfyui.py --comfy-dir /work/scratch/ComfyUI-controlnet \
      --work /tmp/controlnet_check [--port 8497]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
CONTROLNET, CORE_VAE, IMAGE = "check-controlnet.safetensors", "flux-random.safetensors", "control.png"
PROMPT, SEED, SIZE, STEPS = "a red circle", 11, 64, 4


def prepare(work: Path) -> Path:
    import numpy as np
    import torch
    from PIL import Image
    from runtime_models import tiny_newbie_params, write_tiny_models
    from safetensors.torch import save_file
    from vae_reference import LdmAutoencoder, randomize

    from nextdit_nodes.controlnet.files import save_controlnet
    from nextdit_nodes.controlnet.model import ControlNetParams, NextDiTControlNet

    models = write_tiny_models(work / "models")
    net = NextDiTControlNet(ControlNetParams.like(tiny_newbie_params(), 2))
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for projection in net.control_projections:
            projection.weight.copy_(torch.randn(projection.weight.shape, generator=generator) * 0.2)
    save_controlnet(models / "controlnet" / CONTROLNET, net, control="check")
    vae = randomize(LdmAutoencoder(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2), seed=5)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(models / "vae" / CORE_VAE))
    pixels = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    pixels[16:48, 20:28] = 255
    Image.fromarray(pixels).save(work / IMAGE)
    return models


def api_prompt() -> dict:
    sampler = {"width": SIZE, "height": SIZE, "batch_size": 1, "seed": SEED, "steps": STEPS, "solver": "euler",
               "shift": 6.0, "cfg": 1.0, "renorm_cfg": 0.0, "cfg_trunc": 1.0, "guidance": 0.0}
    return {
        "1": {"class_type": "NextDiTLoader", "inputs": {"dit_name": "NewBie-Image-Exp0.1-bf16.safetensors", "weight_dtype": "fp32"}},
        "2": {"class_type": "NextDiTTextEncoderLoader", "inputs": {
            "gemma_name": "gemma_3_4b_it_bf16.safetensors", "jina_name": "jina_clip_v2_bf16.safetensors",
            "device": "cpu", "dtype": "fp32"}},
        "3": {"class_type": "NextDiTTextEncode", "inputs": {"text_encoders": ["2", 0], "prompt": PROMPT,
                                                           "system_prompt": "none", "custom_system_prompt": ""}},
        "4": {"class_type": "VAELoader", "inputs": {"vae_name": CORE_VAE}},
        "5": {"class_type": "NextDiTControlNetLoader", "inputs": {"control_net_name": CONTROLNET}},
        "6": {"class_type": "LoadImage", "inputs": {"image": IMAGE}},
        "7": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["3", 0], "negative": ["3", 0], "control_net": ["5", 0], "image": ["6", 0],
            "strength": 0.8, "start_percent": 0.25, "end_percent": 0.75, "vae": ["4", 0]}},
        "8": {"class_type": "NextDiTSampler", "inputs": {"model": ["1", 0], "positive": ["7", 0],
                                                        "negative": ["7", 1], **sampler}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "pack_cn"}},
        "10": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "11": {"class_type": "KSampler", "inputs": {
            "model": ["1", 1], "seed": SEED, "steps": STEPS, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["7", 0], "negative": ["7", 1], "latent_image": ["10", 0],
            "denoise": 1.0}},
        "12": {"class_type": "SaveLatent", "inputs": {"samples": ["11", 0], "filename_prefix": "core_cn"}},
        "13": {"class_type": "NextDiTSampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], **sampler}},
        "14": {"class_type": "SaveLatent", "inputs": {"samples": ["13", 0], "filename_prefix": "pack_plain"}},
    }


def run_core(work: Path, models: Path, comfy_dir: Path, port: int) -> tuple[Path, Path]:
    from comfy_host.comfy_server import queue, running_comfyui

    with running_comfyui(work, models, ("diffusion_models", "text_encoders", "vae", "controlnet"), port,
                         comfy_dir, name="controlnet_check") as (url, rundir, log):
        shutil.copy(work / IMAGE, rundir / "input" / IMAGE)
        queue(url, api_prompt(), work / "api_controlnet.json")
    return rundir / "output", log


def compare(output: Path) -> list[str]:
    from safetensors.torch import load_file

    def latent(prefix: str):
        return load_file(str(next(output.rglob(f"{prefix}_*.latent"))))["latent_tensor"].float()

    pack, core, plain = latent("pack_cn"), latent("core_cn"), latent("pack_plain")
    difference = (pack - core).abs().max().item()
    effect = (pack - plain).abs().max().item()
    print(f"NextDiT Sampler vs KSampler on core_model, both with core's Apply ControlNet: max |diff| = "
          f"{difference:.3g} (values up to {pack.abs().max().item():.3g})")
    print(f"the ControlNet changes the latent by up to {effect:.3g}")
    problems = []
    if difference > 1e-4:
        problems.append(f"the two samplers differ by {difference:.3g}")
    if effect < 1e-2:
        problems.append("the ControlNet barely changes the output: the comparison proves little")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/controlnet_check"))
    parser.add_argument("--comfy-dir", type=Path, required=True,
                        help="a copy of the ComfyUI tree whose custom_nodes holds (a link to) this pack")
    parser.add_argument("--port", type=int, default=8497)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    models = prepare(args.work)
    output, _ = run_core(args.work, models, args.comfy_dir, args.port)
    problems = compare(output)
    print("OK" if not problems else "PROBLEMS:\n  " + "\n  ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
