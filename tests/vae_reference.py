"""Independent reference autoencoders for tests/test_vae.py, written from the architecture facts
(docs/newbie-image.md §7), not from the pack's loader or diffusers.

- ``LdmAutoencoder``: the BFL/LDM autoencoder with BFL module names, so its ``state_dict()`` is an
  ``ae.safetensors``-layout file.
- ``taesd_decoder`` / ``taesd_encoder``: the original TAESD ``nn.Sequential`` halves, whose
  ``state_dict()`` has the original index keys (``1.weight``, ``3.conv.0.weight`` …).
- ``make_invertible``: weights that turn an ``LdmAutoencoder`` into (almost exactly) a 2×2 average
  pool encoder and a nearest-upsampling decoder, so encode → decode of a smooth image returns it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, q/k/v/proj_out as 1×1 convolutions."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        b, c, height, width = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).reshape(b, c, height * width) for conv in (self.q, self.k, self.v))
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        out = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # right and bottom only


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = ResnetBlock(channels, channels), AttnBlock(channels), ResnetBlock(channels, channels)
    return mid


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(ch_mult):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock(block_in, ch * mult))
                block_in = ch * mult
            if level != len(ch_mult) - 1:
                stage.downsample = Downsample(block_in)
            self.down.append(stage)
        self.mid = _mid(block_in)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for stage in self.down:
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int):
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in)
        stages = []
        for level in reversed(range(len(ch_mult))):  # built from the lowest resolution up
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, ch * ch_mult[level]))
                block_in = ch * ch_mult[level]
            if level != 0:
                stage.upsample = Upsample(block_in)
            stages.insert(0, stage)  # up[0] is the full-resolution level
        self.up = nn.ModuleList(stages)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 3, 3, padding=1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(len(self.up))):
            for block in self.up[level].block:
                h = block(h)
            if hasattr(self.up[level], "upsample"):
                h = self.up[level].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LdmAutoencoder(nn.Module):
    """BFL names: ``encoder.*``, ``decoder.*``; no quant convs (FLUX)."""

    def __init__(self, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=16):
        super().__init__()
        self.z_channels = z_channels
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, z_channels)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, z_channels)

    def encode_mean(self, image_pm1):
        """[-1,1] image → the mean half of the encoder's output (raw latent)."""
        return self.encoder(image_pm1)[:, :self.z_channels]

    def decode(self, raw):
        """raw latent → image in about [-1,1]."""
        return self.decoder(raw)


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights everywhere, norms and biases included (default init leaves norms at
    1/0, which would hide a swapped or dropped norm)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
            elif param.ndim == 1:  # norm scale
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=generator))
            else:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
    return module


# ---- an exactly-invertible LDM autoencoder ------------------------------------------------------

def make_invertible(model: LdmAutoencoder, big: float = 100.0, lift: float = 30.0) -> LdmAutoencoder:
    """Weights for ``LdmAutoencoder(ch=128, ch_mult=(1, 1), num_res_blocks=1)``: encode = 2×2 mean
    pool of the [-1,1] image into latent channels 0-2, decode = nearest upsampling of them.

    Every residual branch and the attention output are zeroed, so only the linear skip path and the
    final GroupNorm + SiLU remain. Each colour c travels in a group of four channels
    (x, -x, big, -big): the group mean is exactly 0 and its variance (mean(x²) + big²)/2, so the
    norm divides by almost exactly big/√2 (relative error mean(x²)/(2 big²) ≤ 5e-5), which the norm
    weight undoes; a norm bias of ``lift`` keeps SiLU in its linear range (sigmoid(29) = 1 − 3e-13)
    and the output conv subtracts it again. The log-variance half of the encoder output is 0, so a
    sampled latent would differ by unit noise: encode must return the mean.
    """
    enc, dec = model.encoder, model.decoder
    width = enc.norm_out.num_channels
    assert width == 128 and dec.norm_out.num_channels == 128, "needs ch=128, ch_mult=(1, 1)"
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        for norm in (m for m in model.modules() if isinstance(m, nn.GroupNorm)):
            norm.weight.fill_(1.0)
        identity_center = torch.zeros(3, 3)
        identity_center[1, 1] = 1.0
        # Encoder: conv_in builds the channel groups from RGB; the downsample conv mean-pools.
        _fill_groups(enc.conv_in.weight[:, :, 1, 1], enc.conv_in.bias, big)
        pool = enc.down[0].downsample.conv
        for channel in range(width):
            pool.weight[channel, channel, :2, :2] = 0.25  # the 2×2 cell the stride-2 window starts on
        _undo_norm(enc.norm_out, enc.conv_out, big, lift)
        # Decoder: conv_in builds the groups from latent channels 0-2; upsample convs are identities.
        _fill_groups(dec.conv_in.weight[:, :, 1, 1], dec.conv_in.bias, big)
        for stage in dec.up:
            if hasattr(stage, "upsample"):
                for channel in range(width):
                    stage.upsample.conv.weight[channel, channel] = identity_center
        _undo_norm(dec.norm_out, dec.conv_out, big, lift)
    return model


def _fill_groups(weight, bias, big):
    """Rows 4c..4c+3 of a [128, C_in] linear map: x_c, -x_c, +big, -big for colours c = 0, 1, 2."""
    for c in range(3):
        weight[4 * c, c], weight[4 * c + 1, c] = 1.0, -1.0
        bias[4 * c + 2], bias[4 * c + 3] = big, -big


def _undo_norm(norm, conv_out, big, lift):
    for c in range(3):
        norm.weight[4 * c] = big / math.sqrt(2)
        norm.bias[4 * c] = lift
        conv_out.weight[c, 4 * c, 1, 1] = 1.0
        conv_out.bias[c] = -lift


# ---- TAESD halves (original nn.Sequential layout) ------------------------------------------------

class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(n_in, n_out, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(n_out, n_out, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(n_out, n_out, 3, padding=1))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def taesd_decoder(latent_channels: int = 16, hidden: int = 64) -> nn.Sequential:
    """Clamp, conv, ReLU, 3×(3 Blocks, Upsample, conv), Block, conv → image in about [0,1]."""
    layers = [Clamp(), nn.Conv2d(latent_channels, hidden, 3, padding=1), nn.ReLU()]
    for _ in range(3):
        layers += [Block(hidden, hidden) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2), nn.Conv2d(hidden, hidden, 3, padding=1, bias=False)]
    layers += [Block(hidden, hidden), nn.Conv2d(hidden, 3, 3, padding=1)]
    return nn.Sequential(*layers)


def taesd_encoder(latent_channels: int = 16, hidden: int = 64) -> nn.Sequential:
    """conv, Block, 3×(stride-2 conv, 3 Blocks), conv; takes an image in [0,1]."""
    layers = [nn.Conv2d(3, hidden, 3, padding=1), Block(hidden, hidden)]
    for _ in range(3):
        layers += [nn.Conv2d(hidden, hidden, 3, padding=1, stride=2, bias=False)]
        layers += [Block(hidden, hidden) for _ in range(3)]
    layers += [nn.Conv2d(hidden, latent_channels, 3, padding=1)]
    return nn.Sequential(*layers)
