"""Cost of encoding one prompt with the text encoders, and what the cache and the GPU visit change.

Gemma 3 4B and Jina CLIP v2 at their real widths (Gemma: hidden 2560, 8/4 heads of 256, FFN
10240; Jina: hidden 1024, 16 heads, FFN 4096) with a few layers and a small vocabulary (the
embedding lookup costs nothing), random weights, a prompt of ``--tokens`` tokens. Timed
interleaved in one run (medians), so ratios hold on a noisy machine:
- a cache miss (both encoders run) vs a cache hit of ``TextEncoders.encode``;
- on a GPU: encoders resident on the GPU vs the pack's default policy (weights wait on the CPU,
  visit the GPU for the encode and go back), i.e. what keeping the DiT's memory free costs.
Per-layer times are scaled to the real depths (34 / 24 layers) for a whole-model estimate.

    python benchmarks/text_encoders.py [--layers 2] [--tokens 300] [--repeats 5] [--device cpu] [--dtype fp32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nextdit_nodes.text import towers as te
from nextdit_nodes.text.encoders import TextEncoders

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def random_encoder(kind: str, layers: int, dtype: torch.dtype) -> te.Encoder:
    gen = torch.Generator().manual_seed(0)
    if kind == "gemma":
        shapes = {**te.GEMMA_3_4B_SHAPES, "num_hidden_layers": layers, "vocab_size": 4096}
        model, bos, eos = te.build_gemma(te.gemma_config(shapes)), [2], []
    else:
        shapes = {**te.JINA_CLIP_V2_SHAPES, "num_hidden_layers": layers, "vocab_size": 4096}
        model, bos, eos = te.build_jina(te.jina_config(shapes)), [0], [2]
    with torch.no_grad():
        for tensor in model.state_dict().values():   # parameters were left uninitialised
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.02)
    model.to(dtype)

    def tokenizer(text: str) -> list[int]:
        return bos + [3 + sum(map(ord, word)) % 4000 for word in text.split()] + eos

    return te.Encoder(model, tokenizer, kind)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(call, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    pair = (random_encoder("gemma", args.layers, dtype), random_encoder("jina", args.layers, dtype))
    words = " ".join(f"w{i}" for i in range(args.tokens - 1))

    visiting = TextEncoders(lambda: pair, compute_device=device, encoders=pair, cache_size=2)
    counter = iter(range(10**9))

    def miss():   # a new text every call, so the encoders really run
        visiting.encode(f"{next(counter)} {words}", words)

    def hit():
        visiting.encode("cached " + words, words)

    hit()
    miss()  # warm-up (kernels, allocator)
    results = {"cache miss (encode)": [], "cache hit": []}
    resident = device.type != "cpu"
    if resident:
        results["resident on GPU (encode)"] = []
    for _ in range(args.repeats):
        results["cache miss (encode)"].append(median_seconds(miss, 1, device))
        results["cache hit"].append(median_seconds(hit, 1, device))
        if resident:
            for encoder in pair:
                encoder.model.to(device)
            results["resident on GPU (encode)"].append(median_seconds(
                lambda: te.encode_pair(pair[0], pair[1], f"{next(counter)} {words}", words), 1, device))
            for encoder in pair:
                encoder.model.to("cpu")
    medians = {name: statistics.median(values) for name, values in results.items()}
    base = medians["cache miss (encode)"]
    print(f"device {device}, {args.dtype}, {args.layers} layers each, prompt {args.tokens} tokens")
    for name, seconds in medians.items():
        print(f"  {name:28s} {seconds * 1e3:9.2f} ms   ratio to a miss {seconds / base:8.4f}")
    scale = {"gemma": 34 / args.layers, "jina": 24 / args.layers}
    if resident:
        per_prompt = medians["resident on GPU (encode)"] * max(scale.values())
        print(f"  whole-model estimate, resident: ~{per_prompt * 1e3:.0f} ms per prompt (both scaled by "
              f"34/{args.layers}: an upper bound)")
    else:
        print(f"  whole-model estimate: ~{base * max(scale.values()):.2f} s per prompt (both scaled by "
              f"34/{args.layers}: an upper bound)")


if __name__ == "__main__":
    main()
