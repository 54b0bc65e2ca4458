"""Distilling a tiny decoder from an autoencoder: diffusers ``AutoencoderTiny``'s decoder (the TAEF1
architecture) trained to reproduce the autoencoder's own decodes of its latents.

Loss (SDXS, Song et al. 2024, arXiv:2403.16627, section 3.1): L1 between the tiny decoder's output and
the autoencoder's decode, both average-pooled ``pool``× (8 in SDXS), plus ``gan_weight`` times a
hinge GAN term from a small patch discriminator that tells the autoencoder's decodes from the tiny
decoder's at full resolution (the pooled L1 fixes colours and layout, the GAN term the detail the
pooling cannot see). Images are in [-1, 1]. ``gan_start`` delays the GAN term: the L1 alone first,
then the discriminator joins (and with ``gan_lr`` the decoder's optimizer restarts at that rate). On
the embedded autoencoder a GAN term from the start pulled the colours away, while one switched on
after the L1 had converged sharpened the shapes and kept the colours (README, tiny decoders).

The tiny decoder's input is the normalised latent, ``latent_format.from_raw(raw)``: what
``NextDiTVAE.decode`` hands a "tiny" decoder, so the file written here decodes the autoencoder's
LATENTs through the pack's VAE loader. Its metadata carries the autoencoder's latent format.

Reproducible and distributable like train-lora: each step's global batch (image indices) is drawn from
a generator seeded by (seed, step), each process takes its rows (``training/distributed.py``), so a
resumed run continues exactly and N processes with batch B compute what one process with N·B does.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..files.atomic import atomic_path
from ..vae.latent_format import METADATA_SCALE_KEY, METADATA_SHIFT_KEY, LatentFormat
from .distributed import Distributed

log = logging.getLogger(__name__)

# TAEF1's decoder (madebyollin/taef1): four stages of width 64 with 3, 3, 3 and 1 blocks.
TAEF1_WIDTH = 64
TAEF1_BLOCKS = (3, 3, 3, 1)


@dataclass(frozen=True)
class TinyDecoderConfig:
    latent_channels: int = 16
    width: int = TAEF1_WIDTH                     # every stage's channels (diffusers' DecoderTiny keeps one width)
    blocks: tuple[int, ...] = TAEF1_BLOCKS       # blocks per stage; stages - 1 upsamplings of 2×
    steps: int = 1000
    batch_size: int = 8                          # images per process
    lr: float = 1e-3
    pool: int = 8                                # average-pooling factor of the L1 term
    gan_weight: float = 0.0                      # 0: no discriminator
    gan_start: int = 0                           # steps of L1 alone before the GAN term joins
    gan_lr: float | None = None                  # from gan_start: the decoder's optimizer restarts at this rate
    seed: int = 0

    accumulation = 1   # one micro-batch per step (the progress loop asks)

    def __post_init__(self):
        if self.width < 1 or not self.blocks or any(b < 0 for b in self.blocks):
            raise ValueError(f"a tiny decoder needs a width of at least 1 and a block count (>= 0) per stage; "
                             f"got width {self.width}, blocks {self.blocks}")
        if self.pool < 1 or self.gan_weight < 0:
            raise ValueError(f"pool must be at least 1 and gan_weight at least 0; got {self.pool}, {self.gan_weight}")
        if self.gan_start < 0 or (self.gan_lr is not None and not self.gan_lr > 0):
            raise ValueError(f"gan_start must be at least 0 and gan_lr above 0; got {self.gan_start}, {self.gan_lr}")

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.blocks) - 1)


def build_tiny_decoder(config: TinyDecoderConfig) -> nn.Module:
    """An ``AutoencoderTiny`` without its encoder (randomly initialised from ``config.seed``)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(config.seed)
    model = AutoencoderTiny(latent_channels=config.latent_channels, decoder_block_out_channels=(config.width,)
                            * len(config.blocks), num_decoder_blocks=tuple(config.blocks))
    model.encoder = None
    return model


def pooled_l1(output: Tensor, target: Tensor, pool: int) -> Tensor:
    """Mean absolute difference of the two images average-pooled ``pool``× (SDXS's decoder loss)."""
    return (F.avg_pool2d(output, pool) - F.avg_pool2d(target, pool)).abs().mean()


class PatchDiscriminator(nn.Module):
    """A few strided convolutions; one logit per patch (about 22 pixels across)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 3, padding=1))

    def forward(self, image: Tensor) -> Tensor:
        return self.layers(image)


@dataclass
class DecoderData:
    """What the tiny decoder learns from: the autoencoder's normalised latents [N,C,h,w] and its own
    decodes of them [N,3,H,W] as uint8 (the images the pack would show)."""

    latents: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return len(self.latents)

    def batch(self, indices: Tensor, device) -> tuple[Tensor, Tensor]:
        target = self.targets[indices].to(device=device, dtype=torch.float32) / 127.5 - 1
        return self.latents[indices].to(device), target


class TinyDecoderTraining:
    """A tiny decoder being distilled on ``data``."""

    name = "distill-decoder"

    def __init__(self, data: DecoderData, config: TinyDecoderConfig, job: Distributed):
        if data.latents.shape[1] != config.latent_channels:
            raise ValueError(f"latents have {data.latents.shape[1]} channels, the decoder {config.latent_channels}")
        self.data, self.config, self.job = data, config, job
        self.model = build_tiny_decoder(config).to(job.device).train()
        self.wrapped = job.wrap(self.model.decoder)
        self.optimizer = torch.optim.AdamW(self.model.decoder.parameters(), lr=config.lr, weight_decay=0.0)
        self.discriminator = self.wrapped_discriminator = self.d_optimizer = None
        if config.gan_weight > 0:
            self.discriminator = PatchDiscriminator().to(job.device).train()
            self.wrapped_discriminator = job.wrap(self.discriminator)
            self.d_optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=config.gan_lr or config.lr,
                                                 betas=(0.5, 0.999))
        self.step = 0
        self.last = {}

    def _indices(self, step: int) -> Tensor:
        """This process's rows of step ``step``'s global batch of dataset indices."""
        size = self.config.batch_size * self.job.world_size
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        return torch.randint(len(self.data), (size,), generator=generator)[self.job.rows(size)]

    def _restart_optimizer(self) -> None:
        """At gan_start with a gan_lr: a fresh AdamW at that rate (the L1 phase's moments dropped)."""
        self.optimizer = torch.optim.AdamW(self.model.decoder.parameters(), lr=self.config.gan_lr, weight_decay=0.0)

    def train_step(self) -> float:
        """One step (decoder, then the discriminator once the GAN term is on); returns the decoder's
        loss averaged over the processes."""
        gan = self.discriminator is not None and self.step >= self.config.gan_start
        if gan and self.step == self.config.gan_start > 0 and self.config.gan_lr is not None:
            self._restart_optimizer()
        latent, target = self.data.batch(self._indices(self.step), self.job.device)
        output = self.wrapped(latent)
        l1 = pooled_l1(output, target, self.config.pool)
        loss = l1
        if gan:
            # Unwrapped: this pass only trains the decoder (the discriminator's stray gradients are
            # cleared before its own step), so it must not join the discriminator's all-reduce.
            loss = l1 + self.config.gan_weight * -self.discriminator(output).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {self.step + 1}; lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if gan:
            # One forward over both halves (GroupNorm is per image), so DDP sees one call per step.
            real, fake = self.wrapped_discriminator(torch.cat([target, output.detach()])).chunk(2)
            d_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
            self.d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_optimizer.step()
        self.step += 1
        self.last = {"l1": float(self.job.mean(l1))}
        return float(self.job.mean(loss.detach()))

    def state_dict(self) -> dict:
        state = {"step": self.step, "config": asdict(self.config), "decoder": self.model.decoder.state_dict(),
                 "optimizer": self.optimizer.state_dict()}
        if self.discriminator is not None:
            state.update(discriminator=self.discriminator.state_dict(), d_optimizer=self.d_optimizer.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        saved = {k: v for k, v in state["config"].items() if k != "steps"}
        ours = {k: v for k, v in asdict(self.config).items() if k != "steps"}
        saved["blocks"], ours["blocks"] = list(saved["blocks"]), list(ours["blocks"])
        if saved != ours:
            changed = sorted(k for k in ours if saved.get(k) != ours[k])
            raise ValueError(f"the training state was saved with other settings ({', '.join(changed)}); resume with "
                             f"the settings it was started with (only --steps may change)")
        self.model.decoder.load_state_dict(state["decoder"])
        self.optimizer.load_state_dict(state["optimizer"])      # after gan_start: the restarted one's
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.step = int(state["step"])


def save_tiny_decoder(path: str | Path, model: nn.Module, latent_format: LatentFormat,
                      metadata: dict[str, str] | None = None, dtype: torch.dtype = torch.float16) -> Path:
    """The decoder alone, under diffusers ``AutoencoderTiny`` names (``decoder.layers.N``), with the
    autoencoder's latent format in the metadata: a file the pack's VAE loader reads as a tiny decoder."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {f"decoder.{k}": v.detach().to("cpu", dtype).contiguous() for k, v in model.decoder.state_dict().items()}
    metadata = {**(metadata or {}), METADATA_SCALE_KEY: repr(latent_format.scale),
                METADATA_SHIFT_KEY: repr(latent_format.shift)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        save_file(state, str(partial), metadata=metadata)
    return path
