"""NAG and prompt weights through a real ComfyUI server (outside CI).

1. Writes tiny random models (runtime_models).
2. In a ComfyUI started here (``../shared/comfy-host/comfy_run.sh``, its own port, the pack in
   custom_nodes of a copy of the ComfyUI tree), one API prompt: NextDiT Text Encode of a weighted
   prompt ``(a red circle:1.8) on a [blue] background`` and of the same words without weights, an
   empty negative, NextDiT NAG (scale 4, tau 2.5, alpha 0.5) on NextDiT Loader's model; then, at
   cfg 1 and at cfg 4, NextDiT Sampler on NAG's model and KSampler (euler, simple, 4 steps, same
   seed) on NAG's core_model → SaveLatent; and NextDiT Sampler on the plain model for the
   weighted and the unweighted prompt.
3. Checks: both samplers give the same latent within 1e-4 at both cfg; NAG changes the latent and
   the weights change it (so the comparison can fail).

  python tests/comfy_host/check_steering_in_comfyui.py --comfy-dir /work/scratch/ComfyUI-lead \
      --work /tmp/steering_check [--port 8496]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

WEIGHTED, PLAIN = "(a red circle:1.8) on a [blue] background", "a red circle on a blue background"
SEED, SIZE, STEPS = 3, 64, 4


def api_prompt() -> dict:
    def encode(text: str) -> dict:
        return {"class_type": "NextDiTTextEncode", "inputs": {"text_encoders": ["2", 0], "prompt": text,
                                                              "system_prompt": "none", "custom_system_prompt": ""}}

    def pack(node: str, model: list, cfg: float, positive: str, prefix: str) -> dict:
        return {node: {"class_type": "NextDiTSampler", "inputs": {
                    "model": model, "positive": [positive, 0], "negative": ["5", 0], "width": SIZE,
                    "height": SIZE, "batch_size": 1, "seed": SEED, "steps": STEPS, "solver": "euler",
                    "shift": 6.0, "cfg": cfg, "renorm_cfg": 0.0, "cfg_trunc": 1.0, "guidance": 0.0}},
                f"{node}s": {"class_type": "SaveLatent", "inputs": {"samples": [node, 0], "filename_prefix": prefix}}}

    def core(node: str, cfg: float, prefix: str) -> dict:
        return {node: {"class_type": "KSampler", "inputs": {
                    "model": ["6", 1], "seed": SEED, "steps": STEPS, "cfg": cfg, "sampler_name": "euler",
                    "scheduler": "simple", "positive": ["3", 0], "negative": ["5", 0], "latent_image": ["7", 0],
                    "denoise": 1.0}},
                f"{node}s": {"class_type": "SaveLatent", "inputs": {"samples": [node, 0], "filename_prefix": prefix}}}

    return {
        "1": {"class_type": "NextDiTLoader", "inputs": {"dit_name": "NewBie-Image-Exp0.1-bf16.safetensors",
                                                        "weight_dtype": "fp32"}},
        "2": {"class_type": "NextDiTTextEncoderLoader", "inputs": {
            "gemma_name": "gemma_3_4b_it_bf16.safetensors", "jina_name": "jina_clip_v2_bf16.safetensors",
            "device": "cpu", "dtype": "fp32"}},
        "3": encode(WEIGHTED), "4": encode(PLAIN), "5": encode(""),
        "6": {"class_type": "NextDiTNAG", "inputs": {"model": ["1", 0], "negative": ["5", 0], "scale": 4.0,
                                                     "tau": 2.5, "alpha": 0.5, "start_percent": 0.0,
                                                     "end_percent": 1.0}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        **pack("10", ["6", 0], 1.0, "3", "pack_nag_cfg1"), **core("11", 1.0, "core_nag_cfg1"),
        **pack("12", ["6", 0], 4.0, "3", "pack_nag_cfg4"), **core("13", 4.0, "core_nag_cfg4"),
        **pack("14", ["1", 0], 1.0, "3", "pack_weighted"), **pack("15", ["1", 0], 1.0, "4", "pack_plain"),
    }


def compare(output: Path) -> list[str]:
    from safetensors.torch import load_file

    def latent(prefix: str):
        return load_file(str(next(output.rglob(f"{prefix}_*.latent"))))["latent_tensor"].float()

    problems = []
    for cfg in (1, 4):
        pack, core = latent(f"pack_nag_cfg{cfg}"), latent(f"core_nag_cfg{cfg}")
        gap = (pack - core).abs().max().item()
        print(f"NAG + weights, cfg {cfg}: NextDiT Sampler vs KSampler on core_model max |diff| = {gap:.3g} "
              f"(values up to {pack.abs().max().item():.3g})")
        if gap > 1e-4:
            problems.append(f"cfg {cfg}: the two samplers differ by {gap:.3g}")
    nag_effect = (latent("pack_nag_cfg1") - latent("pack_weighted")).abs().max().item()
    weight_effect = (latent("pack_weighted") - latent("pack_plain")).abs().max().item()
    print(f"NAG changes the latent by up to {nag_effect:.3g}; the weights by up to {weight_effect:.3g}")
    if nag_effect < 1e-2 or weight_effect < 1e-2:
        problems.append("NAG or the weights barely change the latent: the comparison proves little")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/steering_check"))
    parser.add_argument("--comfy-dir", type=Path, required=True,
                        help="a copy of the ComfyUI tree whose custom_nodes holds (a link to) this pack")
    parser.add_argument("--port", type=int, default=8496)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from comfy_host.comfy_server import queue, running_comfyui
    from runtime_models import write_tiny_models

    models = write_tiny_models(args.work / "models")
    with running_comfyui(args.work, models, ("diffusion_models", "text_encoders", "vae"), args.port,
                         args.comfy_dir, name="steering_check") as (url, rundir, _):
        queue(url, api_prompt(), args.work / "api_steering.json")
    problems = compare(rundir / "output")
    print("OK" if not problems else "PROBLEMS:\n  " + "\n  ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
