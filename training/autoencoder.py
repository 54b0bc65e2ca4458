"""Training the embedded model's autoencoder: FLUX architecture (diffusers ``AutoencoderKL``, 16
latent channels, 8× down), narrow enough to train on two CPU cores in minutes.

Shapes must survive the round trip (the checker judges shape from the object's mask). The loss
is the squared error through the latent MEAN, plus a weak penalty that keeps the latent bounded.
Measured on held-out reconstructions: L1 (with or without an edge term) is median-seeking and
paints background over the small objects while the decoder is still unsure (colour+position 6–14 %
per object after 600–1000 steps), where squared error keeps them (2500 steps: colour+position
99.5 %, size 100 %, shape 95.7 %, 94.8 % after the fold and decoder fine-tune). The remaining
shape errors are small objects on the gray background, the lowest-contrast case; 600 further
steps of L1 + edge loss (whole model or decoder only) did not change shape accuracy (76–77 % on
the earlier 0.45-cell small objects, as without them). Check ``reconstruction_adherence`` before
training the DiT.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

from .shapes import render, training_scene

log = logging.getLogger(__name__)

AE_CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=16,
    norm_num_groups=16, use_quant_conv=False, use_post_quant_conv=False,
)
LATENT_WEIGHT = 1e-4


def build_autoencoder():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**AE_CONFIG)


def image_batch(rng: random.Random, batch: int) -> torch.Tensor:
    """[B, 3, 64, 64] in [-1, 1] of fresh training scenes."""
    images = np.stack([render(training_scene(rng)) for _ in range(batch)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def autoencoder_loss(ae, x: torch.Tensor) -> torch.Tensor:
    latent = ae.encode(x).latent_dist.mean
    recon = ae.decode(latent).sample
    return (recon - x).pow(2).mean() + LATENT_WEIGHT * latent.pow(2).mean()


def train_autoencoder(steps: int, batch: int = 16, lr: float = 1e-3, seed: int = 0, progress=None):
    torch.manual_seed(seed)
    rng = random.Random(seed)
    ae = build_autoencoder()
    optimiser = torch.optim.AdamW(ae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps,
                                                   pct_start=0.05)
    ae.train()
    for step in range(steps):
        loss = autoencoder_loss(ae, image_batch(rng, batch))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if progress is not None:
            progress(step + 1, steps, loss.item())
    return ae.eval()


@torch.no_grad()
def latent_statistics(ae, rng: random.Random, batches: int = 8, batch: int = 32) -> tuple[float, float]:
    """Mean and std of the encoder's latent means over training scenes (for the latent format)."""
    latents = torch.cat([ae.encode(image_batch(rng, batch)).latent_dist.mean for _ in range(batches)])
    return float(latents.mean()), float(latents.std())


@torch.no_grad()
def reconstruct(ae, images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] → uint8 reconstructions through the latent mean."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = ae.decode(ae.encode(x).latent_dist.mean).sample
    return ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def fold_into_flux_format(ae, rng: random.Random, batches: int = 16, batch: int = 32) -> None:
    """Rescale the latent in place so that FLUX's constants normalise it to unit scale.

    Per channel c, with the encoder means' statistics (m_c, s_c), the new latent is
    z' = a_c·z + b_c with a_c = 1/(s_c·0.3611) and b_c = 0.1159 − m_c·a_c, so that
    (z' − 0.1159)·0.3611 = (z − m_c)/s_c. The map is folded into the encoder's last convolution
    (mean channels scaled and shifted, log-variance shifted by 2·ln a_c) and inverted in the
    decoder's first one. The decoder's zero padding now pads z' rather than z; a short decoder
    fine-tune (``finetune_decoder``) absorbs that border difference.
    """
    from ..models.latent_format import FLUX

    latents = torch.cat([ae.encode(image_batch(rng, batch)).latent_dist.mean for _ in range(batches)])
    mean, std = latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3))
    a = 1.0 / (std * FLUX.scale)
    b = FLUX.shift - mean * a
    channels = a.numel()
    conv_out = ae.encoder.conv_out
    conv_out.weight[:channels] *= a[:, None, None, None]
    conv_out.bias[:channels] = conv_out.bias[:channels] * a + b
    conv_out.bias[channels:] += 2 * torch.log(a)
    conv_in = ae.decoder.conv_in
    conv_in.bias -= (conv_in.weight * (b / a)[None, :, None, None]).sum(dim=(1, 2, 3))
    conv_in.weight /= a[None, :, None, None]


def finetune_decoder(ae, steps: int, batch: int = 16, lr: float = 2e-4, seed: int = 1, progress=None):
    """Train the decoder alone (encoder frozen) on the current latent: used after folding."""
    rng = random.Random(seed)
    ae.encoder.requires_grad_(False)
    optimiser = torch.optim.AdamW(ae.decoder.parameters(), lr=lr, weight_decay=0.0)
    ae.train()
    for step in range(steps):
        x = image_batch(rng, batch)
        with torch.no_grad():
            z = ae.encode(x).latent_dist.mean
        loss = (ae.decode(z).sample - x).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if progress is not None:
            progress(step + 1, steps, loss.item())
    ae.encoder.requires_grad_(True)
    return ae.eval()
