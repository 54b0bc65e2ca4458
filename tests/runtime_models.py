"""Tiny random-weight model files under the real file names and in the real layouts, so the
example workflows run end to end (headless, and inside ComfyUI for the host check).

Owner: runner engineer. Built from the other areas' fixture builders: ``factories`` (Next-DiT
checkpoints), ``text_fixtures`` (Gemma 3 / Jina ComfyUI single files with their tokenizers) and
``vae_reference`` (a BFL-named LDM autoencoder).
"""

from __future__ import annotations

from pathlib import Path

import torch
from factories import tiny_params, with_guidance, write_dit_checkpoint
from text_fixtures import GEMMA_SHAPES, JINA_SHAPES, gemma_reference, jina_reference, write_gemma, write_jina
from vae_reference import LdmAutoencoder, randomize

DIT = "NewBie-Image-Exp0.1-bf16.safetensors"
DISTILLED = "NewBie-Image-Exp0.1-bf16-distilled.safetensors"
GEMMA = "gemma_3_4b_it_bf16.safetensors"
JINA = "jina_clip_v2_bf16.safetensors"
VAE = "ae.safetensors"


def tiny_newbie_params():
    """A tiny Next-DiT whose caption / pooled widths match the tiny Gemma / Jina encoders."""
    return tiny_params(cap_dim=GEMMA_SHAPES["hidden_size"], clip_dim=JINA_SHAPES["hidden_size"])


def write_tiny_models(models_dir: str | Path, distilled: bool = False) -> Path:
    """Write the example workflows' model files (tiny, random) into a ComfyUI-style models folder."""
    models_dir = Path(models_dir)
    for folder in ("diffusion_models", "text_encoders", "vae"):
        (models_dir / folder).mkdir(parents=True, exist_ok=True)
    params = tiny_newbie_params()
    # ComfyUI's repackaged file stores the bare official keys.
    write_dit_checkpoint(models_dir / "diffusion_models" / DIT, params, seed=0, prefix="")
    if distilled:
        write_dit_checkpoint(models_dir / "diffusion_models" / DISTILLED, with_guidance(params),
                             seed=1, prefix="")
    write_gemma(models_dir / "text_encoders" / GEMMA, gemma_reference()[1], "comfy")
    write_jina(models_dir / "text_encoders" / JINA, jina_reference()[1], "comfy")
    # Four levels = 8x downsampling and 16 latent channels, as the FLUX autoencoder.
    vae = randomize(LdmAutoencoder(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1), seed=3)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(models_dir / "vae" / VAE))
    return models_dir


if __name__ == "__main__":  # python tests/runtime_models.py DIR: fill a models folder (host check)
    import sys

    torch.manual_seed(0)
    print(write_tiny_models(sys.argv[1], distilled=True))
