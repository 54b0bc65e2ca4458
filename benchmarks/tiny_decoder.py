"""Tiny decoder against full decoder: seconds per decoded image, measured side by side in one run.

    python benchmarks/tiny_decoder.py                       # embedded 64², FLUX widths at 256²
    python benchmarks/tiny_decoder.py --sizes 512 1024 --device cuda

Two pairs, each through the pack's loader and ``NextDiTVAE.decode`` (one image per decoder call):
- the embedded autoencoder (embedded/vae/embedded-shapes-vae) and its tiny decoder (``--tiny``,
  default the embedded one; without it an untrained decoder of the embedded stage's shape, which
  times the same);
- FLUX.1 widths (128/256/512/512 channels, 16 latent channels, random weights) and TAEF1's
  (AutoencoderTiny, width 64, blocks 3/3/3/1, random weights) at each ``--sizes`` square.
The two decoders of a pair alternate call by call, so both see the same machine load; the median
of ``--repeats`` calls is reported. Absolute seconds mean something only on an idle machine or a GPU;
the ratio is the figure. Results: the README's tiny decoder section.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from timing import timed
from vae import FLUX_CONFIG

EMBEDDED = Path(__file__).resolve().parents[1] / "embedded" / "vae"


def side_by_side(full, tiny, latent: torch.Tensor, repeats: int, device) -> tuple[float, float]:
    """Median seconds per decode of ``latent`` by each, alternating."""
    times = {"full": [], "tiny": []}
    for vae in (full, tiny):   # warm-up
        vae.decode(latent)
    for _ in range(repeats):
        for name, vae in (("full", full), ("tiny", tiny)):
            times[name].append(timed(lambda v=vae: v.decode(latent), device))
    return statistics.median(times["full"]), statistics.median(times["tiny"])


def _report(name: str, full: float, tiny: float) -> None:
    print(f"| {name} | {full * 1e3:.1f} ms | {tiny * 1e3:.1f} ms | {tiny / full:.2f}× |", flush=True)


def _untrained_tiny(folder: Path, width: int, blocks: tuple[int, ...], latent_format) -> Path:
    from nextdit_nodes.training.tiny_decoder import TinyDecoderConfig, build_tiny_decoder, save_tiny_decoder

    model = build_tiny_decoder(TinyDecoderConfig(width=width, blocks=blocks))
    return save_tiny_decoder(folder / f"tiny-{width}.safetensors", model, latent_format, dtype=torch.float32)


def flux_decoders(folder: Path, device) -> tuple:
    """FLUX.1's decoder widths and TAEF1's (random weights), written to ``folder`` and loaded through the
    pack's loader: two ``NextDiTVAE`` whose ``decode`` takes a (1, 16, h, w) FLUX latent."""
    from diffusers import AutoencoderKL

    from nextdit_nodes.vae.latent_format import FLUX
    from nextdit_nodes.vae.loading import load_vae

    torch.manual_seed(0)
    AutoencoderKL(**FLUX_CONFIG).save_pretrained(str(folder / "flux"))
    flux = load_vae(folder / "flux", device=device, dtype="fp32")
    taef1 = load_vae(_untrained_tiny(folder, 64, (3, 3, 3, 1), FLUX), device=device, dtype="fp32")
    return flux, taef1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256], help="FLUX-width image sides")
    parser.add_argument("--tiny", type=Path, default=EMBEDDED / "embedded-shapes-tiny-decoder.safetensors")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from nextdit_nodes.training.embedded.tiny_decoder import TINY_DECODER_CONFIG
    from nextdit_nodes.vae.loading import load_vae

    device = torch.device(args.device)
    print("| decoder pair | full | tiny | tiny / full |\n| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        full = load_vae(EMBEDDED / "embedded-shapes-vae", device=device, dtype="fp32")
        tiny_path = args.tiny if args.tiny.is_file() else _untrained_tiny(
            scratch, TINY_DECODER_CONFIG.width, TINY_DECODER_CONFIG.blocks, full.latent_format)
        tiny = load_vae(tiny_path, device=device, dtype="fp32")
        latent = torch.randn(1, 16, 8, 8)
        _report(f"embedded autoencoder vs {tiny_path.name}, 64²", *side_by_side(full, tiny, latent, args.repeats,
                                                                                device))
        flux, taef1 = flux_decoders(scratch, device)
        for size in args.sizes:
            latent = torch.randn(1, 16, size // 8, size // 8)
            _report(f"FLUX.1 widths vs TAEF1, {size}²", *side_by_side(flux, taef1, latent, args.repeats, device))


if __name__ == "__main__":
    main()
