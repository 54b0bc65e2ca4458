"""A GGUF Next-DiT in real ComfyUI (issue 32; outside CI): listed, loaded, and core's KSampler on
its core MODEL equals NextDiT Sampler.

1. Writes tiny text encoders and VAE and a small random Next-DiT whose block matrices split into
   256-element blocks, and quantises it with ``python -m nextdit_nodes quantize`` to Q8_0, Q4_0 and
   Q4_K_M (the mix: its blocks in Q6_K/Q4_K and its embedders quantised too).
2. Starts a ComfyUI (``../shared/comfy-host/comfy_run.sh``, own port, ``--comfy-dir`` a copy
   whose custom_nodes holds the pack) with that models folder (extra_model_paths).
3. Checks: NextDiT Loader's ``dit_name`` list (GET /object_info) offers the .gguf files; for each,
   one prompt loads it with NextDiT Loader and samples it twice (core KSampler on its
   ``core_model``: euler, simple, 4 steps, cfg 1; NextDiT Sampler: euler, shift 6, 4 steps, cfg 1,
   same seed); the two latents agree within 1e-4 (max |a-b| / max |b|); the Q8_0 and Q4_0 latents
   differ (the files are really read).

  python tests/comfy_host/check_gguf.py --work /tmp/gguf_check --comfy-dir ~/scratch/ComfyUI-gguf [--port 8499]

ComfyUI's venv needs the ``gguf`` package (the pack's requirements.txt lists it); ``--pythonpath``
adds a folder holding it without installing into that venv.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

TYPES = ("Q8_0", "Q4_0", "Q4_K_M")
STEPS, SEED, SIZE = 4, 11, 64


def gguf_name(qtype: str) -> str:
    return f"nextdit-check-{qtype}.gguf"


def prepare(work: Path) -> Path:
    """The models folder: tiny text encoders and VAE, the Next-DiT as GGUF files."""
    from factories import write_dit_checkpoint
    from nextdit_nodes.dit.params import NextDiTParams
    from runtime_models import write_tiny_models
    from text_fixtures import GEMMA_SHAPES, JINA_SHAPES

    models = write_tiny_models(work / "models")
    # dim 768, ffn 768 and the adaLN width min(768, 1024): every block matrix's rows split into the
    # K types' blocks of 256 (and so into 32s).
    params = NextDiTParams(dim=768, n_layers=2, n_heads=8, n_kv_heads=4, ffn_dim=768,
                           cap_dim=GEMMA_SHAPES["hidden_size"], clip_dim=JINA_SHAPES["hidden_size"],
                           n_refiner_layers=1)
    source = work / "nextdit-check.safetensors"
    write_dit_checkpoint(source, params, seed=0, prefix="", norm_final=False)
    for qtype in TYPES:
        subprocess.run([sys.executable, "-m", "nextdit_nodes", "quantize", str(source), "--type", qtype,
                        "--output", str(models / "diffusion_models" / gguf_name(qtype)), "--overwrite"],
                       check=True)
    return models


def api_prompt(qtype: str) -> dict:
    from check_citizen import text_nodes

    prompt: dict = {}
    text_nodes(prompt)
    prompt.update({
        "load": {"class_type": "NextDiTLoader", "inputs": {"dit_name": gguf_name(qtype), "weight_dtype": "fp32",
                                                          "offload": "none"}},
        "empty": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["load", 1], "seed": SEED, "steps": STEPS, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
            "denoise": 1.0}},
        "ks_save": {"class_type": "SaveLatent", "inputs": {"samples": ["ks", 0],
                                                           "filename_prefix": f"latents/core_{qtype}"}},
        "ns": {"class_type": "NextDiTSampler", "inputs": {
            "model": ["load", 0], "positive": ["pos", 0], "negative": ["neg", 0], "width": SIZE, "height": SIZE,
            "batch_size": 1, "seed": SEED, "steps": STEPS, "solver": "euler", "shift": 6.0, "cfg": 1.0,
            "renorm_cfg": 0.0, "cfg_trunc": 1.0, "guidance": 0.0}},
        "ns_save": {"class_type": "SaveLatent", "inputs": {"samples": ["ns", 0],
                                                           "filename_prefix": f"latents/pack_{qtype}"}},
    })
    return prompt


def check(url: str) -> list[str]:
    from check_citizen import relative, run, saved_latent

    problems = []
    with urllib.request.urlopen(f"{url}/object_info/{urllib.parse.quote('NextDiTLoader')}") as answer:
        listed = json.load(answer)["NextDiTLoader"]["input"]["required"]["dit_name"][0]
    print(f"NextDiT Loader offers: {listed}")
    problems += [f"{gguf_name(q)} not listed" for q in TYPES if gguf_name(q) not in listed]
    latents = {}
    for qtype in TYPES:
        entry = run(url, api_prompt(qtype))
        core, pack = saved_latent(url, entry, "ks_save"), saved_latent(url, entry, "ns_save")
        latents[qtype] = pack
        difference = relative(core, pack)
        print(f"{qtype}: core KSampler on core_model vs NextDiT Sampler: max|a-b|/max|b| = {difference:.2e}")
        if difference > 1e-4:
            problems.append(f"{qtype}: core and pack differ by {difference:.2e}")
    apart = relative(latents["Q4_0"], latents["Q8_0"])
    print(f"Q4_0 vs Q8_0 latents: {apart:.2e}")
    if apart < 1e-4:
        problems.append("the Q8_0 and Q4_0 files give the same latent: the comparison proves little")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/gguf_check"))
    parser.add_argument("--comfy-dir", type=Path, required=True,
                        help="a ComfyUI whose custom_nodes holds this pack")
    parser.add_argument("--port", type=int, default=8499)
    parser.add_argument("--pythonpath", default="", help="extra PYTHONPATH for ComfyUI (a folder with gguf)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    models = prepare(args.work)
    from comfy_host.comfy_server import running_comfyui

    with running_comfyui(args.work, models, ("diffusion_models", "text_encoders", "vae"), args.port,
                         args.comfy_dir, name="gguf_check", pythonpath=args.pythonpath, wait=600) as (url, _, _):
        problems = check(url)
    print("OK" if not problems else "PROBLEMS:\n  " + "\n  ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
