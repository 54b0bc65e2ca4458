"""Training the embedded model's autoencoder: FLUX architecture (diffusers ``AutoencoderKL``, 16
latent channels, 8× down), narrow enough to train on two CPU cores in minutes.

Shapes must survive the round trip (the checker judges shape from the object's mask). The loss
is the squared error through the latent MEAN, with the pixels along the objects' outlines
weighted 1 + EDGE_WEIGHT (``edge_weights``), plus a weak penalty that keeps the latent bounded.
Outlines are a few percent of the pixels, so under a plain squared error a blurred corner costs
almost nothing, least of all for small objects on the gray background (low contrast), and the
decoder rounded small squares and triangles (the README has the measurements). L1 is
median-seeking and paints background over small objects while the decoder is still unsure;
squared error keeps them. Check ``reconstruction_adherence`` before training the DiT.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
import torch.nn.functional as F

from ...vae.latent_format import FLUX
from .shapes import render, training_scene

log = logging.getLogger(__name__)

AE_CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=16,
    norm_num_groups=16, use_quant_conv=False, use_post_quant_conv=False,
)
LATENT_WEIGHT = 1e-4
EDGE_WEIGHT = 4.0       # extra weight of outline pixels in the reconstruction error
EDGE_CONTRAST = 0.1     # |pixel − its 3×3 mean|, summed over RGB in [-1, 1] units: an outline

def build_autoencoder():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**AE_CONFIG)

def image_batch(rng: random.Random, batch: int) -> torch.Tensor:
    """[B, 3, 64, 64] in [-1, 1] of fresh training scenes."""
    images = np.stack([render(training_scene(rng)) for _ in range(batch)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1

def edge_weights(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W]: 1 + EDGE_WEIGHT within one pixel of an outline (a pixel that differs from its
    3×3 neighbourhood's mean), 1 elsewhere. Plain backgrounds and object interiors weigh 1."""
    local_mean = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    outline = ((x - local_mean).abs().sum(dim=1, keepdim=True) > EDGE_CONTRAST).float()
    return 1 + EDGE_WEIGHT * F.max_pool2d(outline, 3, stride=1, padding=1)

def reconstruction_error(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squared error with outlines weighted (``edge_weights``), normalised by the mean weight so its
    scale stays that of a plain mean squared error."""
    weights = edge_weights(x)
    return ((recon - x).pow(2) * weights).mean() / weights.mean()

def autoencoder_loss(ae, x: torch.Tensor) -> torch.Tensor:
    latent = ae.encode(x).latent_dist.mean
    recon = ae.decode(latent).sample
    return reconstruction_error(recon, x) + LATENT_WEIGHT * latent.pow(2).mean()

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
        loss = reconstruction_error(ae.decode(z).sample, x)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if progress is not None:
            progress(step + 1, steps, loss.item())
    ae.encoder.requires_grad_(True)
    return ae.eval()
