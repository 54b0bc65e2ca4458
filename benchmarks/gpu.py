"""Full-size NewBie sampling on a GPU: seconds per image, peak VRAM, FLOP/s, and core ComfyUI side by side.

What it runs (random weights, the real NewBie shapes: 3.49 B parameters, dim 2304, 36 layers,
24/8 heads, ffn 9216, cap 2560, clip 1024, plus a guidance embedder), in bf16:
- ours, CFG: `sampling.sample.sample` with euler, `--steps` steps, cfg 4.5 (cond and uncond packed into
  one forward per step), a 300-token positive and a 40-token negative caption;
- ours, guidance-distilled: the same with cfg 1 and guidance 4.5 (one single-prompt forward per step);
- ours, blocks streamed from the CPU (dit/offload.py): a few steps, s/step and peak VRAM;
- optionally (`--compile`) ours with `compile_blocks`;
- with COMFYUI_DIR set: core ComfyUI's `comfy.ldm.lumina.model.NextDiT` (the NewBie config its
  model detection builds) holding the same weights, sampled by a bare euler loop the way core runs
  NewBie CFG: two forwards per step (cond and uncond cannot be batched: different caption lengths),
  core's convention σ = 1 − t and output −v. A one-forward parity check comes first.
FLOPs per forward are computed from the config and token counts (matrix products and attention);
achieved FLOP/s is set against the GPU's dense bf16 peak (`--peak-tflops` or a small table).

    python benchmarks/gpu.py                      # on a GPU; COMFYUI_DIR=/path/to/ComfyUI to add core
    python benchmarks/gpu.py --tiny               # a tiny config on the CPU: checks it all runs
Goals on an H100 (issue 10): <= 5 s/image CFG, <= 2.5 s distilled, >= 1.3x core, DiT VRAM <= 9 GB.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import torch

PACK_DIR = Path(__file__).resolve().parent.parent
NEWBIE = dict(dim=2304, n_layers=36, n_heads=24, n_kv_heads=8, ffn_dim=9216, cap_dim=2560, clip_dim=1024,
              guidance_embed=True)
TINY = dict(dim=96, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=256, cap_dim=64, clip_dim=32, guidance_embed=True)
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by a substring of the device name.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("B200", 2250.0),
               ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0),
               ("4090", 165.0), ("3090", 71.0))


def _pack():
    """The pack as `nextdit_nodes` (installed, else loaded from this checkout by path)."""
    try:
        import nextdit_nodes  # noqa: F401
    except ImportError:
        spec = importlib.util.spec_from_file_location("nextdit_nodes", PACK_DIR / "__init__.py",
                                                      submodule_search_locations=[str(PACK_DIR)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["nextdit_nodes"] = module
        spec.loader.exec_module(module)
    import nextdit_nodes
    return nextdit_nodes


# ---- model and inputs ----------------------------------------------------------------------------

def random_model(params, device, dtype, seed: int = 0):
    """A NextDiT with random weights made directly on `device` in `dtype` (no CPU copy)."""
    from nextdit_nodes.dit.model import NextDiT

    with torch.device("meta"):
        model = NextDiT(params).to(dtype)
    model = model.to_empty(device=device)
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, p.shape[1] ** -0.5, generator=gen)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.02, generator=gen)
            else:
                p.uniform_(0.5, 1.5, generator=gen)
    model.compute_dtype = dtype
    return model.eval().requires_grad_(False)


def conditioning(params, length: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, length, params.cap_dim, generator=gen)
    extras = {"pooled_output": torch.randn(1, params.clip_dim, generator=gen),
              "attention_mask": torch.ones(1, length, dtype=torch.long)}
    return [[feats, extras]]


def forward_flops(p, cap_len: int, image_tokens: int) -> float:
    """FLOPs of one single-sample forward: every matrix product (2 per multiply-add) and attention
    (QK^T and PV: 4·L²·dim per sequence)."""
    kv = p.n_kv_heads * p.head_dim
    per_token = 2 * (p.dim * (p.dim + 2 * kv) + p.dim * p.dim + 3 * p.dim * p.ffn_dim)
    joint = cap_len + image_tokens
    blocks = (p.n_refiner_layers * (cap_len * per_token + 4 * cap_len ** 2 * p.dim)
              + p.n_refiner_layers * (image_tokens * per_token + 4 * image_tokens ** 2 * p.dim)
              + p.n_layers * (joint * per_token + 4 * joint ** 2 * p.dim))
    patch = p.patch_size ** 2 * p.in_channels
    edges = 2 * (cap_len * p.cap_dim * p.dim + 2 * image_tokens * patch * p.dim
                 + (p.n_layers + p.n_refiner_layers) * p.adaln_dim * 4 * p.dim)
    return float(blocks + edges)


def peak_tflops(device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf for key, tf in PEAK_TFLOPS if key in name), None)


# ---- timing ----------------------------------------------------------------------------------------

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> tuple[float, float]:
    """(median seconds, peak bytes allocated during the runs; 0 on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return statistics.median(times), peak


def ours_sampler(model, pos, neg, size: int, steps: int, cfg: float, guidance: float):
    from nextdit_nodes.sampler_settings import SamplerSettings
    from nextdit_nodes.sampling.sample import sample

    settings = SamplerSettings(steps=steps, solver="euler", cfg=cfg, cfg_trunc=1.0, guidance=guidance)

    def run():
        return sample(model, pos, neg if cfg != 1.0 else None, settings, width=size, height=size, seed=0)
    return run


# ---- core ComfyUI ------------------------------------------------------------------------------------

def core_model(comfy_dir: str, params, state_dict: dict, device, dtype):
    """core's lumina NextDiT with NewBie's config (as comfy/model_detection.py builds it)."""
    sys.path.insert(0, comfy_dir)   # a separate checkout: only this script imports from it
    import comfy.cli_args
    if device.type == "cpu":
        comfy.cli_args.args.cpu = True
    import comfy.ops
    from comfy.ldm.lumina.model import NextDiT as CoreNextDiT

    third = params.head_dim // 3
    model = CoreNextDiT(patch_size=params.patch_size, in_channels=params.in_channels, dim=params.dim,
                        n_layers=params.n_layers, n_refiner_layers=params.n_refiner_layers,
                        n_heads=params.n_heads, n_kv_heads=params.n_kv_heads,
                        multiple_of=256 if params.ffn_dim % 256 == 0 else 1,
                        ffn_dim_multiplier=params.ffn_dim / params.dim, norm_eps=params.norm_eps, qk_norm=True,
                        cap_feat_dim=params.cap_dim, axes_dims=[third] * 3, axes_lens=[300, 512, 512],
                        rope_theta=params.rope_theta, clip_text_dim=params.clip_dim, image_model="lumina2",
                        device=device, dtype=dtype, operations=comfy.ops.disable_weight_init)
    core_keys = set(model.state_dict())
    ours = {k: v for k, v in state_dict.items() if k in core_keys}
    missing = core_keys - set(ours)
    if missing:
        raise RuntimeError(f"core NextDiT has keys our weights lack: {sorted(missing)[:5]}")
    model.load_state_dict(ours, strict=True)
    return model.eval().requires_grad_(False)


def core_sampler(model, params, pos, neg, size: int, steps: int, cfg: float, device, dtype):
    """Euler with CFG as core runs NewBie: two forwards per step, σ = 1 − t, output −v."""
    from nextdit_nodes.sampler_settings import DEFAULT_SHIFT
    from nextdit_nodes.sampling.schedule import time_grid
    from nextdit_nodes.sampling.sample import initial_noise

    def args(cond):
        feats, extras = cond[0]
        return dict(context=feats.to(device, dtype), num_tokens=feats.shape[1],
                    clip_text_pooled=extras["pooled_output"].to(device, dtype), transformer_options={})

    pos_args, neg_args = args(pos), args(neg)
    times = time_grid(steps, DEFAULT_SHIFT)

    def run():
        x = initial_noise((1, params.in_channels, size // 8, size // 8), 0).to(device)
        with torch.no_grad():
            for t0, t1 in zip(times[:-1], times[1:]):
                sigma = torch.full((1,), 1.0 - t0, device=device, dtype=dtype)
                xd = x.to(dtype)
                v_cond = -model(xd, sigma, **pos_args).float()
                v_uncond = -model(xd, sigma, **neg_args).float()
                x = x + (t1 - t0) * (v_uncond + cfg * (v_cond - v_uncond))
        return x.cpu()
    return run


def parity(ours, core, params, pos, size: int, device, dtype) -> float:
    """max |ours(x, t) − (−core(x, 1 − t))| / max |ours| on one forward."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, params.in_channels, size // 8, size // 8, generator=gen).to(device)
    t = torch.full((1,), 0.3, device=device)
    feats, extras = pos[0]
    with torch.no_grad():
        a = ours(x, t, feats.to(device), torch.ones(1, feats.shape[1], dtype=torch.bool, device=device),
                 extras["pooled_output"].to(device))
        b = -core(x.to(dtype), (1 - t).to(dtype), feats.to(device, dtype), feats.shape[1],
                  clip_text_pooled=extras["pooled_output"].to(device, dtype), transformer_options={}).float()
    return float((a - b).abs().max() / a.abs().max())


def profile(run, device, top: int = 12) -> None:
    """Kernel time of one run grouped into matmul / attention / other, and the top kernels."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        run()
        _sync(device)
    on_gpu = device.type == "cuda"
    attr = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    # On a GPU the kernels themselves; on the CPU the aten ops.
    events = [e for e in prof.key_averages()
              if getattr(e, attr) > 0 and (e.device_type.name == "CUDA" if on_gpu else e.key.startswith("aten::"))]
    total = sum(getattr(e, attr) for e in events) or 1.0
    groups = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for e in events:
        key = e.key.lower()
        group = ("attention" if any(k in key for k in ("flash", "attention", "fmha", "sdpa", "cudnn"))
                 else "matmul" if any(k in key for k in ("gemm", "matmul", "mm", "linear", "cutlass", "sm90_xmma"))
                 else "other")
        groups[group] += getattr(e, attr)
    print("profile (one CFG image): " + ", ".join(f"{g} {100 * v / total:.1f}%" for g, v in groups.items()))
    for e in sorted(events, key=lambda e: -getattr(e, attr))[:top]:
        print(f"  {100 * getattr(e, attr) / total:5.1f}%  {e.count:6d} calls  {e.key[:90]}")


# ---- main -------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny config (CPU check that everything runs)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                    help="default bf16 on a GPU, fp32 on the CPU")
    ap.add_argument("--size", type=int, default=None, help="image side (default 1024; --tiny 128)")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pos-tokens", type=int, default=300)
    ap.add_argument("--neg-tokens", type=int, default=40)
    ap.add_argument("--offload-steps", type=int, default=4, help="steps timed with block offloading (0: skip)")
    ap.add_argument("--card-gb", type=float, default=8.0, help="card size for the partial-offload plan")
    ap.add_argument("--compile", action="store_true", help="also time compile_blocks (compiles first)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak")
    ap.add_argument("--profile", action="store_true", help="print where the time of a CFG image goes")
    args = ap.parse_args()

    _pack()
    from nextdit_nodes.dit.compile import compile_blocks, uncompile_blocks
    from nextdit_nodes.dit.params import NextDiTParams
    from nextdit_nodes.dit.offload import offload_blocks, remove_offload, streamed_block_count

    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    params = NextDiTParams(**(TINY if args.tiny else NEWBIE))
    size = args.size or (128 if args.tiny else 1024)
    steps = args.steps if not args.tiny or args.steps != 28 else 4
    tokens = (size // 8 // params.patch_size) ** 2
    pos, neg = conditioning(params, args.pos_tokens, 1), conditioning(params, args.neg_tokens, 2)

    model = random_model(params, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    weights_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, {dtype}, {n_params / 1e9:.2f} B params ({weights_gb:.2f} GB), {size}x{size} "
          f"({tokens} image tokens), {steps} euler steps, captions {args.pos_tokens}/{args.neg_tokens} tokens")
    if device.type == "cuda":
        print(f"SDPA backends enabled: flash {torch.backends.cuda.flash_sdp_enabled()}, "
              f"cuDNN {torch.backends.cuda.cudnn_sdp_enabled()}, mem-efficient "
              f"{torch.backends.cuda.mem_efficient_sdp_enabled()}")

    f_cfg = steps * (forward_flops(params, args.pos_tokens, tokens) + forward_flops(params, args.neg_tokens, tokens))
    f_dist = steps * forward_flops(params, args.pos_tokens, tokens)
    peak = peak_tflops(device, args.peak_tflops)
    rows = []

    def report(label, seconds, flops, vram):
        achieved = flops / seconds / 1e12
        share = f"{100 * achieved / peak:5.1f}%" if peak else "   n/a"
        rows.append((label, seconds))
        memory = f"peak VRAM {vram / 2 ** 30:6.2f} GiB" if device.type == "cuda" else ""
        print(f"{label:<34} {seconds:8.3f} s/image  {seconds / steps * 1000:8.1f} ms/step  "
              f"{achieved:7.2f} TFLOP/s ({share} of peak)  {memory}")

    run_cfg = ours_sampler(model, pos, neg, size, steps, 4.5, 0.0)
    run_dist = ours_sampler(model, pos, neg, size, steps, 1.0, 4.5)
    run_cfg(), run_dist()   # warm-up (kernels, allocator, layout cache)
    t_cfg, vram_cfg = timed(run_cfg, device, args.repeats)
    report("ours CFG (1 packed forward/step)", t_cfg, f_cfg, vram_cfg)
    t_dist, vram_dist = timed(run_dist, device, args.repeats)
    report("ours guidance-distilled", t_dist, f_dist, vram_dist)

    if args.profile:
        profile(run_cfg, device)

    if args.compile:
        compile_blocks(model)
        run_cfg()
        t_comp, vram_comp = timed(run_cfg, device, args.repeats)
        report("ours CFG, compile_blocks", t_comp, f_cfg, vram_comp)
        uncompile_blocks(model)

    if args.offload_steps:
        few = ours_sampler(model, pos, neg, size, args.offload_steps, 4.5, 0.0)
        t_res, _ = timed(few, device, 1)
        # All blocks streamed, then the plan for a card with --card-gb of memory: the leading blocks
        # that fit next to the activations of the run above stay resident, the rest stream.
        budget = int(args.card_gb * 2 ** 30 - (vram_cfg - weights_gb * 1e9) - 2 ** 30)
        for label, block_budget in (("all blocks streamed", 0), (f"{args.card_gb:g} GB card plan", budget)):
            offload_blocks(model, device, budget=max(0, block_budget))
            few()
            t_off, vram_off = timed(few, device, 1)
            streamed = streamed_block_count(model)
            remove_offload(model, device)
            print(f"{'ours CFG, ' + label:<34} {t_off / args.offload_steps * 1000:8.1f} ms/step vs "
                  f"{t_res / args.offload_steps * 1000:.1f} resident ({t_off / t_res:.2f}x time), "
                  f"{streamed} blocks streamed, peak VRAM {vram_off / 2 ** 30:.2f} GiB")

    comfy_dir = os.environ.get("COMFYUI_DIR")
    if comfy_dir:
        core = core_model(comfy_dir, params, model.state_dict(), device, dtype)
        print(f"parity ours vs -core(x, 1-t): max rel diff {parity(model, core, params, pos, size, device, dtype):.2e}")
        run_core = core_sampler(core, params, pos, neg, size, steps, 4.5, device, dtype)
        run_core()
        t_core, vram_core = timed(run_core, device, 1)
        report("core ComfyUI CFG (2 forwards/step)", t_core, f_cfg, vram_core)
        # The ratio from interleaved runs (ours, core, ours, core, ...): both see the same machine state.
        ours_t, core_t = [], []
        for _ in range(max(args.repeats, 2)):
            ours_t.append(timed(run_cfg, device, 1)[0])
            core_t.append(timed(run_core, device, 1)[0])
        ours_s, core_s = statistics.median(ours_t), statistics.median(core_t)
        print(f"speed-up ours/core, CFG, interleaved medians: {core_s / ours_s:.2f}x "
              f"(ours {ours_s:.3f} s, core {core_s:.3f} s per image)")
    else:
        print("core ComfyUI: skipped (set COMFYUI_DIR to a ComfyUI checkout)")


if __name__ == "__main__":
    main()
