"""The embedded model through core ComfyUI's sampling, with and without core's EasyCache.

Runs inside a ComfyUI install (its Python, with the pack in its custom_nodes): the pack's
loaders give the core MODEL, core's ``comfy.sample.sample`` samples it (euler, simple, 25 steps,
CFG 4 through NextDiT Official CFG with CFG on every step: the embedded example's settings), and
core's EasyCache node patches it. Prints, for the held-out prompts of ``check-embedded``, the
time of both runs side by side (their ratio is the speed-up) and the adherence checker's figures
of each.

  cd ~/scratch/ComfyUI && ~/scratch/comfy-venv/bin/python /path/to/pack/benchmarks/core_path.py --count 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]


def comfyui_nodes():
    """ComfyUI's node classes with its custom nodes (the pack among them), as the server loads them."""
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, os.getcwd())
    import comfy.options

    comfy.options.enable_args_parsing()
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    return nodes.NODE_CLASS_MAPPINGS


def pack_module(name: str):
    """A module of the pack under the package name ComfyUI gave it (the folder's path)."""
    import importlib

    package = next(key for key, module in sys.modules.items()
                   if Path(getattr(module, "__file__", None) or "/").resolve() == PACK / "__init__.py")
    return importlib.import_module(f"{package}.{name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threshold", type=float, default=0.2, help="EasyCache reuse_threshold (its default)")
    args = parser.parse_args()

    classes = comfyui_nodes()
    import comfy.sample
    import torch

    torch.set_num_threads(2)
    adherence = pack_module("training.embedded.adherence")
    shapes = pack_module("training.embedded.shapes")
    model, core = classes["NextDiTLoader"]().load("NextDiT-embedded-shapes.pth", "fp32")
    (text,) = classes["NextDiTTextEncoderLoader"]().load("embedded-shapes-gemma3.safetensors",
                                                         "embedded-shapes-jina.safetensors", "cpu", "fp32")
    vae, _ = classes["NextDiTVAELoader"]().load("embedded-shapes-vae")
    (guided,) = classes["NextDiTOfficialCFG"]().patch(core, 1.0, 0.0)
    cached = classes["EasyCache"].execute(guided, args.threshold, 0.15, 0.95, False).result[0]
    encode = classes["NextDiTTextEncode"]()
    (negative,) = encode.encode(text, "", "none", "")
    scenes = shapes.held_out_scenes(args.count)
    positives = [encode.encode(text, shapes.xml_caption(scene), "none", "")[0] for scene in scenes]

    def sample(patched, index: int, positive) -> tuple[float, object]:
        latent = torch.zeros(1, 16, 8, 8)
        noise = comfy.sample.prepare_noise(latent, index)
        start = time.perf_counter()
        samples = comfy.sample.sample(patched, noise, args.steps, 4.0, "euler", "simple", positive, negative,
                                      latent, disable_pbar=True, seed=index)
        seconds = time.perf_counter() - start
        image = vae.decode(samples)[0]
        return seconds, (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()

    for patched in (guided, cached):     # warm-up: first-call costs out of the timing
        sample(patched, 0, positives[0])
    # The two runs alternate prompt by prompt, so a change in the machine's load hits both alike.
    seconds = {"plain": 0.0, "cached": 0.0}
    scores: dict[str, list] = {"plain": [], "cached": []}
    for index, (scene, positive) in enumerate(zip(scenes, positives)):
        for name, patched in (("plain", guided), ("cached", cached)):
            spent, pixels = sample(patched, index, positive)
            seconds[name] += spent
            scores[name].append(adherence.score_image(pixels, scene))
    plain_seconds, cached_seconds = seconds["plain"], seconds["cached"]
    plain, with_cache = adherence.summarise(scores["plain"]), adherence.summarise(scores["cached"])
    print(f"core KSampler path, {args.count} held-out prompts, {args.steps} euler steps, CFG 4:")
    print(f"  sampling time without / with EasyCache (threshold {args.threshold}): {plain_seconds:.1f} s / "
          f"{cached_seconds:.1f} s, speed-up {plain_seconds / cached_seconds:.2f}x")
    print("| sampling | colour+position / object | colour+position / image | size / object | shape / object "
          "| all right / image |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, scores in (("KSampler", plain), (f"KSampler + EasyCache {args.threshold}", with_cache)):
        print(f"| {name} | {scores['colour_position_per_object']:.1f} | {scores['colour_position_per_image']:.1f} "
              f"| {scores['size_per_object']:.1f} | {scores['shape_per_object']:.1f} "
              f"| {scores['all_right_per_image']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
