"""The embedded model's pipeline pieces: latent fold, length buckets, untrained files through the
real loaders and the demo workflow."""

import copy
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from nextdit_nodes.vae.latent_format import FLUX
from nextdit_nodes.training.embedded import autoencoder as ae_training
from nextdit_nodes.training.embedded.dit_training import _LengthBuckets


def test_fold_gives_flux_normalised_latents_and_keeps_the_decoder_exact_away_from_padding():
    torch.manual_seed(0)
    ae = ae_training.build_autoencoder().eval()
    before = copy.deepcopy(ae)
    ae_training.fold_into_flux_format(ae, random.Random(0), batches=2, batch=8)
    x = ae_training.image_batch(random.Random(1), 8)
    with torch.no_grad():
        z, z_folded = before.encode(x).latent_dist.mean, ae.encode(x).latent_dist.mean
        normalised = FLUX.from_raw(z_folded)
        # The map is affine per channel: normalised = (z - m_c) / s_c.
        per_channel = normalised.transpose(0, 1).flatten(1)
        assert per_channel.std(dim=1).mean().item() == pytest.approx(1.0, abs=0.2)
        expected = (z - z.mean(dim=(0, 2, 3), keepdim=True)) / z.std(dim=(0, 2, 3), keepdim=True)
        assert torch.corrcoef(torch.stack([normalised.flatten(), expected.flatten()]))[0, 1] > 0.99
        # Decoder's first convolution sees the same features except at the zero-padded border.
        inner = (before.decoder.conv_in(z) - ae.decoder.conv_in(z_folded))[..., 1:-1, 1:-1]
        assert inner.abs().max().item() < 1e-4


def test_autoencoder_error_weighs_the_outline_band_of_an_object():
    # A 4×4 white square (rows and columns 4..7) on a black 12×12 image. Pixels whose 3×3
    # neighbourhood holds both colours (rows/columns 3..8, bar the 2×2 centre) are the outline;
    # one pixel of dilation makes the band rows/columns 2..9, where the weight is 1 + EDGE_WEIGHT.
    x = torch.full((1, 3, 12, 12), -1.0)
    x[..., 4:8, 4:8] = 1.0
    band = torch.zeros(12, 12, dtype=torch.bool)
    band[2:10, 2:10] = True
    weights = ae_training.edge_weights(x)[0, 0]
    assert torch.equal(weights[band], torch.full((64,), 1 + ae_training.EDGE_WEIGHT))
    assert torch.equal(weights[~band], torch.ones(80))
    # Normalised by the mean weight: an error of 1 everywhere costs 1, as a plain MSE.
    assert ae_training.reconstruction_error(x + 1, x).item() == pytest.approx(1.0)
    # One pixel wrong by 1, in the band or outside it: (1 + EDGE_WEIGHT) against 1, over the same sum.
    mean_weight = (64 * (1 + ae_training.EDGE_WEIGHT) + 80) / 144
    for (row, column), weight in (((3, 3), 1 + ae_training.EDGE_WEIGHT), ((0, 11), 1.0)):
        recon = x.clone()
        recon[0, 0, row, column] += 1
        expected = weight / (3 * 144) / mean_weight
        assert ae_training.reconstruction_error(recon, x).item() == pytest.approx(expected)
    # A flat image has no outline: the plain mean squared error.
    flat = torch.zeros(1, 3, 8, 8)
    assert ae_training.reconstruction_error(flat + 0.5, flat).item() == pytest.approx(0.25)


def test_length_buckets_give_single_length_batches_covering_every_length():
    lengths = torch.tensor([3, 5, 5, 7, 3, 3])
    buckets = _LengthBuckets(lengths, random.Random(0))
    seen = set()
    for _ in range(200):
        batch = buckets.batch(4)
        assert len({int(lengths[i]) for i in batch}) == 1
        seen.update(batch)
    assert seen == set(range(6))


def test_demo_workflow_runs_on_the_untrained_embedded_files(tmp_path, monkeypatch):
    from nextdit_nodes.commands.demo import WORKFLOW
    from nextdit_nodes.runtime.run import run_workflow
    from nextdit_nodes.training.embedded.pipeline import embedded_files_present, write_untrained

    write_untrained(tmp_path / "models")
    assert embedded_files_present(tmp_path / "models")
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(tmp_path / "models"))
    _, images = run_workflow(WORKFLOW, tmp_path / "out", ["NextDiT Sampler.steps=2"])
    (png,) = images
    picture = Image.open(png)
    assert picture.size == (64, 64)
    workflow = json.loads(picture.text["workflow"])
    assert any(node["type"] == "NextDiTSampler" for node in workflow["nodes"])
    assert np.asarray(picture).std() > 0


def test_train_embedded_writes_every_file_in_the_real_layouts_and_resumes_stage_by_stage(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from nextdit_nodes.loaders import load_dit
    from nextdit_nodes.training.embedded import pipeline as embedded

    plan = embedded.TrainingPlan(ae_steps=2, ae_finetune_steps=1, dataset_size=32, dit_steps=2, dit_batch=8,
                                 distill_iterations=1, few_step_iterations=1, tiny_decoder_steps=2,
                                 tiny_decoder_scenes=4, compact_iterations=1)
    monkeypatch.setattr(embedded, "reconstruction_adherence", lambda ae: {})  # 200 scenes: not needed here
    embedded.train_embedded(tmp_path, plan)
    assert embedded.embedded_files_present(tmp_path)
    checkpoint = torch.load(tmp_path / embedded.DIT_FILE, weights_only=False)
    assert all(key.startswith("module.") for key in checkpoint["model"])
    teacher = load_dit(tmp_path / embedded.DIT_FILE, dtype="fp32")
    student = load_dit(tmp_path / embedded.STUDENT_FILE, dtype="fp32")
    assert not teacher.params.guidance_embed and student.params.guidance_embed
    from nextdit_nodes.dit.own_settings import own_settings
    few_step = load_dit(tmp_path / embedded.FEW_STEP_FILE, dtype="fp32")
    assert own_settings(few_step).steps == 4 and few_step.params.guidance_embed
    assert {t.dtype for t in load_file(tmp_path / embedded.FEW_STEP_FILE).values()} == {torch.float16}
    from nextdit_nodes.vae.loading import load_vae
    tiny = load_vae(tmp_path / embedded.TINY_DECODER_FILE, dtype="fp32")
    assert (tiny.kind, tiny.info.can_encode, tiny.info.downscale) == ("tiny", False, 8)
    assert tiny.decode(torch.randn(1, 16, 8, 8)).shape == (1, 64, 64, 3)
    compact = load_dit(tmp_path / embedded.COMPACT_FILE, dtype="fp32")
    assert compact.params.n_layers == teacher.params.n_layers // 2 and not compact.params.guidance_embed
    assert {t.dtype for t in load_file(tmp_path / embedded.COMPACT_FILE).values()} == {torch.float16}
    assert own_settings(compact) == own_settings(teacher)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage was retrained")

    monkeypatch.setattr(embedded.ae_training, "train_autoencoder", must_not_run)
    monkeypatch.setattr(embedded, "train_dit", must_not_run)
    monkeypatch.setattr(embedded, "distill_student", must_not_run)
    monkeypatch.setattr(embedded, "few_step_student", must_not_run)
    monkeypatch.setattr(embedded, "tiny_decoder_stage", must_not_run)
    monkeypatch.setattr(embedded, "compact_student", must_not_run)
    embedded.train_embedded(tmp_path, plan, resume=True)

    # Deleting one stage's file retrains exactly that stage.
    (tmp_path / embedded.DIT_FILE).unlink()
    retrained = []
    monkeypatch.setattr(embedded, "train_dit",
                        lambda latents, captions, empty, gemma, *a, **k: retrained.append(1) or (teacher, gemma))
    embedded.train_embedded(tmp_path, plan, resume=True)
    assert retrained == [1] and (tmp_path / embedded.DIT_FILE).exists()


def test_train_dit_trains_gemma_with_the_next_dit_and_leaves_the_given_one_alone():
    from transformers import Gemma3TextModel

    from nextdit_nodes.text import towers as te
    from nextdit_nodes.training.embedded.dit_training import EMBEDDED_PARAMS, CaptionFeatures, TrainingCaptions, train_dit
    from nextdit_nodes.training.embedded.text_side import GEMMA_BEHAVIOUR, GEMMA_SHAPES

    torch.manual_seed(0)
    gemma = Gemma3TextModel(te.gemma_config(GEMMA_SHAPES, GEMMA_BEHAVIOUR)).eval().requires_grad_(False)
    torch.nn.init.normal_(gemma.embed_tokens.weight, std=0.3)
    before = {k: v.clone() for k, v in gemma.state_dict().items()}
    ids = torch.randint(4, GEMMA_SHAPES["vocab_size"], (16, 6))
    captions = TrainingCaptions(ids, torch.full((16,), 6), torch.randn(16, EMBEDDED_PARAMS.clip_dim))
    empty = TrainingCaptions(torch.tensor([[2]]), torch.tensor([1]), torch.zeros(1, EMBEDDED_PARAMS.clip_dim))
    dit, trained = train_dit(torch.randn(16, 16, 8, 8), captions, empty, gemma, steps=3, batch=8, ema_decay=0.0)

    assert [k for k, v in gemma.state_dict().items() if not torch.equal(v, before[k])] == []
    used = trained.embed_tokens.weight[ids.unique()] - before["embed_tokens.weight"][ids.unique()]
    assert used.abs().amax(dim=1).min() > 0                   # every token the captions use moved
    # What the Next-DiT was trained on is what inference reads from that Gemma.
    features = CaptionFeatures(trained)(ids[:2])
    encoded = trained(input_ids=ids[:2], output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(features, encoded.float())


def test_initialised_context_refiner_keeps_each_caption_token_its_own():
    # The ungated context refiner adds unit-scale outputs that, with attention still uniform, are
    # alike for every token: at the default norm weights they drown the tokens' identities.
    from nextdit_nodes.dit.model import NextDiT
    from nextdit_nodes.dit.ops import TokenLayout
    from nextdit_nodes.training.embedded.dit_training import EMBEDDED_PARAMS, initialise

    torch.manual_seed(0)
    model = NextDiT(EMBEDDED_PARAMS)
    initialise(model)
    layout = TokenLayout.build([12], 2, 2, EMBEDDED_PARAMS.axes_dims, EMBEDDED_PARAMS.rope_theta, "cpu")
    with torch.no_grad():
        embedded = model.cap_embedder(torch.randn(12, EMBEDDED_PARAMS.cap_dim))
        refined = embedded
        for block in model.context_refiner:
            refined = block(refined, layout.captions, *layout.rope(layout.cap_index))
    assert embedded.pow(2).mean().sqrt().item() == pytest.approx(1.0, abs=0.2)   # tokens enter at unit scale
    own = torch.nn.functional.cosine_similarity(refined, embedded, dim=-1)
    unit = torch.nn.functional.normalize(refined, dim=-1)
    others = (unit @ unit.T)[~torch.eye(12, dtype=torch.bool)]
    assert own.min() > 0.9 and others.abs().mean() < 0.15
