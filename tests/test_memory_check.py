"""A sampling request that cannot fit is refused before the first step, with its numbers and the
way out; what fits runs as before."""

from __future__ import annotations

import pytest
import torch
from factories import random_dit, tiny_params
from nextdit_nodes.dit.params import NextDiTParams
from nextdit_nodes.nodes.host import memory
from nextdit_nodes.nodes.sampling import NextDiTSampler
from nextdit_nodes.sampling.memory_check import decode_problem, memory_problem, sampling_memory

NEWBIE = NextDiTParams(dim=2304, n_layers=36, n_heads=24, n_kv_heads=8, ffn_dim=9216, cap_dim=2560, clip_dim=1024)
GIB = 2**30


def _hand_activations(batch: int, side: int, cap_len: int, dtype_bytes: int = 2) -> int:
    """Tokens (patches of 2x2 latent pixels, latent = side / 8, plus the caption) times the widest
    per-token tensors of a block: three feed-forward-wide and eight model-wide values."""
    tokens = batch * ((side // 8) ** 2 // 4 + cap_len)
    return tokens * (3 * 9216 + 8 * 2304) * dtype_bytes


def test_4096_square_batch_64_is_refused_naming_the_numbers_and_a_batch_that_fits():
    from nextdit_nodes.dit.placement import dit_activation_bytes

    def activations(batch):
        return dit_activation_bytes(NEWBIE, batch, (512, 512), 256, 2)

    need = sampling_memory(activations, 64, 2, (4096, 4096))
    assert need.sampler_bytes == _hand_activations(128, 4096, 256)
    assert need.images_bytes == 64 * 4096 * 4096 * 3 * 4
    problem = memory_problem(need, width=4096, height=4096, batch=64, device="cuda:0",
                             available_device=80 * GIB, available_host=128 * GIB)
    per_image = _hand_activations(2, 4096, 256)
    assert f"needs about {need.sampler_bytes / GIB:.1f} GiB" in problem and "80.0 GiB available" in problem
    assert need.sampler_bytes > 700 * GIB  # the request of the audit: hundreds of GiB, refused at once
    assert f"a batch of {80 * GIB // per_image} fits" in problem and "offload=blocks" in problem


def test_what_fits_is_not_refused_and_the_decoded_batch_is_checked_against_the_host():
    need = sampling_memory(lambda batch: batch * 10 * 2**20, 4, 2, (1024, 1024))
    assert memory_problem(need, width=1024, height=1024, batch=4, device="cpu",
                          available_device=GIB, available_host=GIB) is None
    problem = memory_problem(need, width=1024, height=1024, batch=4, device="cpu",
                             available_device=GIB, available_host=30 * 2**20)
    # 4 images of 1024 x 1024 x 3 float32 values: 48 MiB; 12 MiB each, so 2 fit in 30 MiB.
    assert "decodes to 48 MiB of images" in problem and "30 MiB of memory available" in problem
    assert "a batch of 2 fits" in problem


def test_an_untiled_decode_that_cannot_fit_points_at_tiled_decode():
    assert decode_problem(GIB, 2 * GIB, "cpu", 1024, 1024) is None
    problem = decode_problem(3 * GIB, 2 * GIB, "cuda:0", 4096, 4096)
    assert "3.0 GiB" in problem and "2.0 GiB available" in problem and "tiled" in problem


def test_the_sampler_node_refuses_before_the_first_step(monkeypatch):
    model = random_dit(tiny_params(), seed=5)
    steps = []
    monkeypatch.setattr(model, "forward", lambda *a, **k: steps.append(1) or a[0])
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: 2**20)  # a device with 1 MiB left
    g = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, 5, 40, generator=g), {"pooled_output": torch.randn(1, 32, generator=g)}]]
    with pytest.raises(MemoryError, match=r"1024x1024, batch 8 needs about 0\.2 GiB .* 1 MiB available"):
        NextDiTSampler().sample(model, positive, 1024, 1024, 8, 0, 4, "euler", 6.0, 4.0, 0.0, 1.0, 0.0,
                                negative=positive)
    assert steps == []
