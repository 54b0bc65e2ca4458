"""The embedded autoencoder's tiny decoder: ``distill-decoder``'s training on rendered training
scenes, at a width scaled down for 64-pixel images (the loader reads the width from the file).

``python -m nextdit_nodes distill-decoder FOLDER --vae embedded/vae/embedded-shapes-vae --resolution 64
--width 16 --blocks 3,3,3,1 --batch-size 32 --pool 1 --steps 4500 --gan-weight 0.01 --gan-start 1500
--gan-lr 3e-4`` on a folder of the same scenes makes the same
kind of file; here the scenes come straight from the renderer.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..decoder_data import autoencoder_targets
from ..distributed import Distributed
from ..tiny_decoder import TinyDecoderConfig, TinyDecoderTraining, save_tiny_decoder
from .shapes import render, training_scene

TINY_DECODER_FILE = "vae/embedded-shapes-tiny-decoder.safetensors"
# TAEF1's stages and blocks at a quarter of its width (16 channels instead of 64), which decodes a
# 64×64 image in about a third of the full decoder's time (wider ones take over half). Full-resolution
# L1 (pool 1): on these scenes an 8×8 pooled loss cannot see the shapes. The GAN term joins only after
# 1500 steps of L1 and runs for 3000 more, with the optimizer restarted at 3e-4: from the start it
# spoilt the colours, late and light it sharpens the shapes and keeps them (the README's comparison).
TINY_DECODER_CONFIG = TinyDecoderConfig(width=16, blocks=(3, 3, 3, 1), steps=4500, batch_size=32, lr=1e-3,
                                        pool=1, gan_weight=0.01, gan_start=1500, gan_lr=3e-4)
TINY_DECODER_SCENES = 1000


def scene_targets(vae, count: int, seed: int):
    """The autoencoder's latents and decodes of ``count`` training scenes (fixed by ``seed``)."""
    rng = random.Random(seed)
    images = np.stack([render(training_scene(rng)) for _ in range(count)])
    return autoencoder_targets(vae, images, batch=100)


def train_tiny_decoder(vae, config: TinyDecoderConfig = TINY_DECODER_CONFIG, scenes: int = TINY_DECODER_SCENES,
                       seed: int = 0, progress=None) -> TinyDecoderTraining:
    """The tiny decoder of ``vae`` (a NextDiTVAE with an encoder), trained on one process."""
    from dataclasses import replace

    data = scene_targets(vae, scenes, seed + 5)
    config = replace(config, latent_channels=vae.info.latent_channels, seed=seed)
    training = TinyDecoderTraining(data, config, Distributed(0, 1, 0, torch.device("cpu")))
    while training.step < config.steps:
        loss = training.train_step()
        if progress is not None:
            progress(training.step, config.steps, loss)
    return training


def write_tiny_decoder(vae, path: Path, config: TinyDecoderConfig = TINY_DECODER_CONFIG,
                       scenes: int = TINY_DECODER_SCENES, seed: int = 0, progress=None) -> Path:
    training = train_tiny_decoder(vae, config, scenes, seed, progress)
    metadata = {"trainer": "nextdit-nodes train-embedded (distill-decoder)", "teacher_vae": "embedded-shapes-vae",
                "steps_done": str(training.step)}
    return save_tiny_decoder(path, training.model, vae.latent_format, metadata, torch.float16)
