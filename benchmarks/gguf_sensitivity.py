"""Where a 4-bit Next-DiT's forward error comes from, and how a random model stands in for a trained one.

1. At NewBie widths (2 joint layers + 1+1 refiners, random weights, bf16): each group of block
   matrices (adaLN modulation, attention qkv, attention out, feed-forward w1/w3, w2) quantised
   alone, the rest exact, then everything; the forward's ||a-b||/||b|| against the unquantised
   model (fp32 compute, CFG pair of 300/40 caption tokens at 256 px). Each quantised tensor goes
   through the pack's encoder and dequantiser, as a GGUF written by ``quantize`` would.
   With ``--embedders``: each embedder matrix quantised alone instead (what decides the ``Q4_K_M``
   mix's ``MIX_EMBEDDERS``; run with ``--type Q6_K`` and ``--type Q8_0``).
2. The embedded trained teacher and a random model of its shape (``official_state_dict``), every
   block matrix quantised: the mean weight error and the forward error on three real prompts
   (the embedded text encoders), i.e. how much of the weights' error a forward carries.

    python benchmarks/gguf_sensitivity.py [--type Q4_0] [--layers 2] [--skip-newbie] [--reference] [--embedders]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nextdit_nodes.dit.params import NextDiTParams  # noqa: E402
from nextdit_nodes.dit.precision import is_fp8_weight  # noqa: E402
from nextdit_nodes.dit.quantized import EMBEDDER_LINEARS  # noqa: E402
from nextdit_nodes.quant.blocks import FORMATS  # noqa: E402
from nextdit_nodes.quant.blocks import dequantize  # noqa: E402
from nextdit_nodes.quant.encode import encode  # noqa: E402
from nextdit_nodes.quant.gguf_write import tensor_format  # noqa: E402
from tests.factories import dit_from_state_dict, official_state_dict, random_inputs  # noqa: E402

GROUPS = {"adaLN modulation": r"adaLN_modulation", "attention qkv": r"attention\.qkv",
          "attention out": r"attention\.out", "feed-forward w1, w3": r"feed_forward\.w[13]",
          "feed-forward w2": r"feed_forward\.w2"}


REFERENCE = False   # --reference: the gguf package's reference quantiser instead of the pack's encoder


def quantised(weight: torch.Tensor, qtype: str) -> torch.Tensor:
    if REFERENCE:
        import gguf

        blocks = gguf.quants.quantize(weight.float().numpy(), getattr(gguf.GGMLQuantizationType, qtype))
    else:
        blocks = encode(weight.float().numpy(), qtype)
    blocks = np.ascontiguousarray(blocks)
    return dequantize(torch.from_numpy(blocks).view(torch.uint8), qtype, tuple(weight.shape))


def relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def _newbie_width(layers: int):
    """A NewBie-width model's bf16-rounded random state, inputs, and its fp32 forward on them."""
    p = NextDiTParams(dim=2304, n_layers=layers, n_heads=24, n_kv_heads=8, ffn_dim=9216, cap_dim=2560,
                      clip_dim=1024, n_refiner_layers=1)
    state = {k: v.to(torch.bfloat16).float() for k, v in official_state_dict(p).items()}
    inputs = random_inputs(p, [300, 40], latent_hw=(32, 32), seed=1)
    with torch.no_grad():
        ref = dit_from_state_dict(p, dict(state))(**inputs)
    return p, state, inputs, ref


def newbie_embedders(qtype: str, layers: int) -> None:
    p, state, inputs, ref = _newbie_width(layers)
    print(f"NewBie widths, {layers} layers + 1+1 refiners; forward error with only this embedder matrix {qtype}")
    for key, weight in state.items():
        if key.startswith((*EMBEDDER_LINEARS, "x_embedder.")) and weight.ndim == 2 \
                and weight.shape[1] % FORMATS[qtype].block_size == 0:
            with torch.no_grad():
                out = dit_from_state_dict(p, {**state, key: quantised(weight, qtype)})(**inputs)
            print(f"  {key:40s} {weight.numel() / 1e6:5.2f} M weights, forward {relative(out, ref):.4f}")


def newbie_groups(qtype: str, layers: int) -> None:
    p, state, inputs, ref = _newbie_width(layers)
    quant = {k: quantised(w, qtype) for k, w in state.items()
             if tensor_format(k, tuple(w.shape), torch.bfloat16, qtype) == qtype}

    def run(keys) -> float:
        with torch.no_grad():
            return relative(dit_from_state_dict(p, {**state, **{k: quant[k] for k in keys}})(**inputs), ref)

    print(f"NewBie widths, {layers} layers + 1+1 refiners, {qtype}; forward error with only this group quantised")
    for name, pattern in GROUPS.items():
        keys = [k for k in quant if re.search(pattern, k)]
        params = sum(state[k].numel() for k in keys)
        werr = np.mean([relative(quant[k], state[k]) for k in keys])
        print(f"  {name:20s} {params / 1e6:6.1f} M weights, weight error {werr:.4f}, forward {run(keys):.4f}")
    print(f"  {'all':20s} forward {run(quant):.4f}")
    print("by block: forward error with only this block quantised")
    for block in ("noise_refiner.", "context_refiner.", *(f"layers.{i}." for i in range(layers))):
        print(f"  {block:20s} {run([k for k in quant if k.startswith(block)]):.4f}")


def trained_against_random(qtype: str) -> None:
    from nextdit_nodes.dit.checkpoint import load_dit
    from nextdit_nodes.nodes.host import EMBEDDED_DIR
    from nextdit_nodes.text.loading import load_text_encoders

    teacher = load_dit(EMBEDDED_DIR / "diffusion_models" / "NextDiT-embedded-shapes.pth", "fp32")
    p = teacher.params
    encoders = load_text_encoders(EMBEDDED_DIR / "text_encoders" / "embedded-shapes-gemma3.safetensors",
                                  EMBEDDED_DIR / "text_encoders" / "embedded-shapes-jina.safetensors", "cpu", "fp32")
    prompts = ["a red circle at the top left and a small blue square", "a big green triangle in the middle", ""]
    encoded = [encoders.encode(text, text) for text in prompts]
    length = max(e.cap_feats.shape[1] for e in encoded)
    feats, mask = torch.zeros(len(prompts), length, p.cap_dim), torch.zeros(len(prompts), length, dtype=torch.bool)
    for i, e in enumerate(encoded):
        feats[i, :e.cap_feats.shape[1]], mask[i, :e.cap_feats.shape[1]] = e.cap_feats[0], True
    noise = torch.randn(len(prompts), p.in_channels, 32, 32, generator=torch.Generator().manual_seed(1))
    inputs = dict(x=noise, t=torch.tensor([0.2, 0.5, 0.8]), cap_feats=feats, cap_mask=mask,
                  clip_pooled=torch.cat([e.pooled for e in encoded]))
    print(f"\nthe embedded teacher's shape (width {p.dim}, {p.n_layers} layers + {p.n_refiner_layers}+"
          f"{p.n_refiner_layers} refiners), every block matrix {qtype}, three real prompts:")
    for name, state in (("trained (the embedded teacher)", {k: v.float() for k, v in teacher.state_dict().items()}),
                        ("random (official_state_dict)", official_state_dict(p))):
        quant = {k: quantised(w, qtype) for k, w in state.items()
                 if is_fp8_weight(k) and w.ndim == 2 and w.shape[1] % 32 == 0}
        with torch.no_grad():
            ref = dit_from_state_dict(p, dict(state))(**inputs)
            out = dit_from_state_dict(p, {**state, **quant})(**inputs)
        werr = np.mean([relative(quant[k], state[k]) for k in quant])
        print(f"  {name:32s} weight error {werr:.4f}, forward {relative(out, ref):.4f} "
              f"({relative(out, ref) / werr:.2f}x the weights')")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--type", default="Q4_0")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--skip-newbie", action="store_true")
    ap.add_argument("--reference", action="store_true",
                    help="encode with the gguf package's reference quantiser (not for the K types)")
    ap.add_argument("--embedders", action="store_true", help="each embedder matrix alone instead of the block groups")
    args = ap.parse_args()
    global REFERENCE
    REFERENCE = args.reference
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.embedders:
        return newbie_embedders(args.type, args.layers)
    if not args.skip_newbie:
        newbie_groups(args.type, args.layers)
    trained_against_random(args.type)


if __name__ == "__main__":
    main()
