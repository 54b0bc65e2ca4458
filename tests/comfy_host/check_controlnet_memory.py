"""The pack's ControlNet in core ComfyUI's memory manager (outside CI: needs a ComfyUI checkout and
its venv; runs core's sampling in-process on the CPU, no server).

A tiny random Next-DiT and a random 2-block ControlNet made by NextDiT ControlNet Loader (a file in
a temporary controlnet folder registered with ``folder_paths``), applied with core's own
``ControlNetApplyAdvanced``. Checks:

1. core's ``comfy.sampler_helpers.get_additional_models`` lists the ControlNet's patcher (what core
   loads with the model before sampling), once per chain;
2. after core's sampler on ``core_model`` ran, ``comfy.model_management.current_loaded_models``
   holds it, and the size it reports is the network's;
3. after NextDiT Sampler ran on a fresh handle, the same (the pack's sampler loads it too);
4. ``unload_all_models`` unloads it (the manager can take the memory back), and sampling again
   still gives the same latent.

  /work/scratch/comfy-venv/bin/python tests/comfy_host/check_controlnet_memory.py --comfy /work/scratch/ComfyUI
(with the pack importable as ``nextdit_nodes``, e.g. PYTHONPATH pointing at a folder holding it)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
STEPS, SEED, SIZE = 4, 5, 32


def main() -> int:
    sys.path.insert(0, str(TESTS))
    from comfy_host.comfy_server import core_in_process

    core_in_process(__doc__.splitlines()[0])
    import comfy.model_management as mm
    import comfy.sample
    import comfy.sampler_helpers
    import folder_paths
    import torch
    from factories import random_dit, tiny_params
    from nodes import ControlNetApplyAdvanced

    from nextdit_nodes.controlnet.files import save_controlnet
    from nextdit_nodes.controlnet.model import ControlNetParams, NextDiTControlNet
    from nextdit_nodes.dit.offload import tensor_bytes
    from nextdit_nodes.nodes.controlnet import NextDiTControlNetLoader
    from nextdit_nodes.nodes.host.core_model import core_model
    from nextdit_nodes.sampler_settings import SamplerSettings
    from nextdit_nodes.sampling.sample import sample

    model = random_dit(tiny_params(), seed=11)
    p = model.params
    g = torch.Generator().manual_seed(2)
    net = NextDiTControlNet(ControlNetParams.like(p, 2))
    with torch.no_grad():
        for projection in net.control_projections:
            projection.weight.copy_(torch.randn(projection.weight.shape, generator=g) * 0.2)
    folder = Path(tempfile.mkdtemp())
    save_controlnet(folder / "check.safetensors", net, control="check")
    folder_paths.add_model_folder_path("controlnet", str(folder))

    class LatentVAE:   # core's apply node hands the image to vae.encode; a latent-sized image stands in
        downscale_ratio = 8
        latent_channels = p.in_channels

        def spacial_compression_encode(self):
            return 8

        def encode(self, pixels):
            return torch.nn.functional.avg_pool2d(pixels.movedim(-1, 1)[:, :1].expand(-1, p.in_channels, -1, -1), 8)

    prompt = [[torch.randn(1, 6, p.cap_dim, generator=g), {"pooled_output": torch.randn(1, p.clip_dim, generator=g)}]]
    image = torch.rand(1, SIZE, SIZE, 3, generator=g)

    def controlled():
        handle = NextDiTControlNetLoader().load("check.safetensors")[0]
        return ControlNetApplyAdvanced().apply_controlnet(prompt, prompt, handle, image, 1.0, 0.0, 1.0,
                                                          vae=LatentVAE())[0], handle

    def loaded(patcher) -> bool:
        return any(entry.model is patcher for entry in mm.current_loaded_models)

    def core(cond):
        latent = torch.zeros(1, p.in_channels, SIZE // 8, SIZE // 8)
        noise = comfy.sample.prepare_noise(latent, SEED)
        return comfy.sample.sample(core_model(model), noise, STEPS, 1.0, "euler", "simple", cond, cond, latent,
                                   seed=SEED, disable_pbar=True).float().cpu()

    failures = 0

    def report(ok: bool, text: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'ok ' if ok else 'BAD'} {text}")

    cond, handle = controlled()
    own = handle.get_models_only_self()
    additional = comfy.sampler_helpers.get_additional_models(
        {"positive": [extras for _, extras in cond], "negative": [extras for _, extras in cond]}, torch.float32)[0]
    report(len(own) == 1 and additional.count(own[0]) == 1,
           f"core's get_additional_models lists the ControlNet's patcher once ({len(additional)} models)")
    first = core(cond)
    report(loaded(own[0]), "after core KSampler's sampling the ControlNet is in current_loaded_models")
    report(own[0].model_size() == tensor_bytes(handle.net),
           f"its size is the network's ({own[0].model_size()} bytes)")
    mm.unload_all_models()
    report(not loaded(own[0]), "unload_all_models unloads it")
    again = core(cond)
    report(torch.equal(first, again), "sampling again after the unload gives the same latent")

    mm.unload_all_models()
    cond2, handle2 = controlled()
    settings = SamplerSettings(steps=STEPS, solver="euler", cfg=1.0, cfg_trunc=1.0, renorm_cfg=0.0)
    from nextdit_nodes.nodes.host.memory import use_dit_for_sampling
    use_dit_for_sampling(model, cond2, None, SIZE, SIZE, 1, 1.0)
    pack = sample(model, cond2, None, settings, width=SIZE, height=SIZE, seed=SEED)["samples"]
    report(loaded(handle2.get_models_only_self()[0]), "NextDiT Sampler's loading puts the ControlNet in the manager too")
    gap = (pack.float() - first).abs().max().item()
    report(gap <= 1e-4, f"NextDiT Sampler vs core KSampler with the ControlNet: max |diff| = {gap:.2e}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
