"""NAG and prompt weights through core ComfyUI's sampler on the pack's core MODEL, against NextDiT
Sampler (outside CI: needs a ComfyUI checkout and its venv; runs core's sampling in-process on
the CPU, no server).

For a tiny random Next-DiT: NextDiT NAG's core_model output through core's ``comfy.sample.sample``
(euler, simple, 4 steps: on a flow model with shift 6 that is the pack's grid) must give the latent
NextDiT Sampler gives for NextDiT NAG's model output, within 1e-4, at cfg 1 and at cfg 4 (where
core batches cond and uncond and NAG must guide only the cond half); the same for a prompt with
token weights; and NAG must change the latent (so the check can fail). Core's own NAGuidance
node on the same MODEL must change the latent at nag_scale 5 and leave it at nag_scale 1.

  /work/scratch/comfy-venv/bin/python tests/comfy_host/check_steering_core.py --comfy /work/scratch/ComfyUI
(with the pack importable as ``nextdit_nodes``, e.g. PYTHONPATH pointing at a folder holding it)
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
STEPS, SEED, SIZE = 4, 5, 32


def main() -> int:
    sys.path.insert(0, str(TESTS))
    from comfy_host.comfy_server import core_in_process

    core_in_process(__doc__.splitlines()[0])
    import torch
    import comfy.sample
    from factories import random_dit, tiny_params
    from nextdit_nodes.nodes.steering import NextDiTNAG
    from nextdit_nodes.sampler_settings import SamplerSettings
    from nextdit_nodes.sampling.sample import sample

    model = random_dit(tiny_params(), seed=11)
    p = model.params
    g = torch.Generator().manual_seed(2)

    def prompt(length, **extras):
        return [[torch.randn(1, length, p.cap_dim, generator=g),
                 {"pooled_output": torch.randn(1, p.clip_dim, generator=g), **extras}]]

    positive, negative, nag_negative = prompt(6), prompt(4), prompt(3)
    weights = torch.ones(1, 6)
    weights[0, 1], weights[0, 4] = 0.0, 1.8
    weighted = [[positive[0][0], {**positive[0][1], "token_weights": weights}]]
    nag_model, nag_core = NextDiTNAG().apply(model, nag_negative, 4.0, 2.0, 0.5, 0.0, 1.0)["result"]
    plain_core = NextDiTNAG().apply(model, nag_negative, 1.0, 2.0, 0.5, 0.0, 1.0)["result"][1]

    def pack(which, cfg, cond):
        settings = SamplerSettings(steps=STEPS, solver="euler", cfg=cfg, cfg_trunc=1.0, renorm_cfg=0.0)
        return sample(which, cond, negative if cfg != 1 else None, settings, width=SIZE, height=SIZE,
                      seed=SEED)["samples"]

    def core(patcher, cfg, cond):
        latent = torch.zeros(1, 16, SIZE // 8, SIZE // 8)
        noise = comfy.sample.prepare_noise(latent, SEED)
        return comfy.sample.sample(patcher, noise, STEPS, cfg, "euler", "simple", cond, negative, latent,
                                   seed=SEED, disable_pbar=True).float().cpu()

    failures = 0
    for name, which, patcher, cfg, cond in (
            ("NAG, cfg 1", nag_model, nag_core, 1.0, positive),
            ("NAG, cfg 4", nag_model, nag_core, 4.0, positive),
            ("weights, cfg 1", model, plain_core, 1.0, weighted),
            ("weights + NAG, cfg 4", nag_model, nag_core, 4.0, weighted)):
        ours, theirs = pack(which, cfg, cond), core(patcher, cfg, cond)
        baseline = pack(model, cfg, positive)
        gap, effect = (ours - theirs).abs().max().item(), (ours - baseline).abs().max().item()
        ok = gap <= 1e-4 and effect > 1e-3
        failures += not ok
        print(f"{'ok ' if ok else 'BAD'} {name}: max |pack - core| = {gap:.2e}, effect vs plain {effect:.3f}")
    # Core's own NAGuidance (comfy_extras/nodes_nag.py): its attn1_output_patch reaches the joint
    # attention (CoreOutputPatches): it changes the latent, and at nag_scale 1 (it then writes the
    # conditional rows into both halves, and cfg 1 keeps the conditional branch) it changes nothing.
    from comfy_extras.nodes_nag import NAGuidance

    base_core = NextDiTNAG().apply(model, nag_negative, 1.0, 2.0, 0.5, 0.0, 1.0)["result"][1]
    plain = core(base_core, 1.0, positive)
    for scale, expect_change in ((5.0, True), (1.0, False)):
        patched = NAGuidance.execute(base_core, nag_scale=scale, nag_alpha=0.5, nag_tau=1.5).result[0]
        gap = (core(patched, 1.0, positive) - plain).abs().max().item()
        ok = gap > 1e-3 if expect_change else gap <= 1e-5
        failures += not ok
        print(f"{'ok ' if ok else 'BAD'} core NAGuidance nag_scale {scale:g}, cfg 1: max |with - without| = {gap:.2e}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
