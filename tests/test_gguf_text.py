"""Gemma 3 from llama.cpp GGUF files through the text-encoder loader and the real nodes.

The files are written by ``gguf_text_fixtures`` with the ``gguf`` package's writer and quantisers
in the layout of llama.cpp's converter; the references are transformers' own Gemma3TextModel on the
original weights (``text_fixtures``) and, for a quantised file, on the ``gguf`` package's
dequantisation of the same blocks.
"""

from __future__ import annotations

import pytest
import torch

import text_fixtures as tf
from gguf_text_fixtures import gguf_dequantized, write_gemma_gguf
from nextdit_nodes.files.errors import WeightsError
from nextdit_nodes.quant.embedding import QuantEmbedding
from nextdit_nodes.quant.linear import QuantLinear
from nextdit_nodes.text import towers as te
from nextdit_nodes.text.loading import load_gemma, load_jina

TEXTS = tf.SENTENCES + ["  two  spaces and\nnewline", "ünïcödé 漢字 🎉", "", "x" * 40]


@pytest.fixture(scope="module")
def reference():
    return tf.gemma_reference(0)


def _features(model, ids):
    x = torch.tensor([ids])
    with torch.no_grad():
        return te.gemma_features(model, x, torch.ones_like(x))


def _reference_with(state, config):
    model = te.build_gemma(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def test_f32_gguf_gives_the_safetensors_towers_hidden_states_exactly(reference, tmp_path):
    model, state = reference
    path = write_gemma_gguf(tmp_path / "g.gguf", state, model.config, tf.gemma_spm(), "F32")
    encoder = load_gemma(path, torch.float32)
    assert encoder.model.config.layer_types == model.config.layer_types       # one global layer of three
    for text in TEXTS:
        ids = encoder.tokenizer(text)
        assert ids == [2] + tf.spm_ids(tf.gemma_spm(), text)                    # BOS, the file's vocabulary
        assert torch.equal(_features(encoder.model, ids), _features(model, ids))


def test_f16_gguf_equals_the_tower_on_the_same_f16_weights(reference, tmp_path):
    model, state = reference
    path = write_gemma_gguf(tmp_path / "g16.gguf", state, model.config, tf.gemma_spm(), "F16")
    encoder = load_gemma(path, torch.float32)
    rounded = {k: v if k.endswith("norm.weight") else v.half().float() for k, v in state.items()}
    expected = _reference_with(rounded, model.config)
    ids = encoder.tokenizer(tf.SENTENCES[2])
    torch.testing.assert_close(_features(encoder.model, ids), _features(expected, ids), rtol=0, atol=1e-5)


def test_q8_0_gguf_stays_quantised_and_computes_the_gguf_packages_dequantisation(reference, tmp_path):
    model, state = reference
    path = write_gemma_gguf(tmp_path / "g8.gguf", state, model.config, tf.gemma_spm(), "Q8_0")
    encoder = load_gemma(path, torch.float32)
    layer = encoder.model.layers[0]
    for linear in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
        assert isinstance(linear, QuantLinear) and linear.qtype == "Q8_0" and linear.weight.dtype == torch.uint8
    assert isinstance(encoder.model.embed_tokens, QuantEmbedding)
    packed = sum(p.numel() * p.element_size() for p in encoder.model.parameters())
    float32 = sum(v.numel() * 4 for v in state.values())
    assert packed < 0.3 * float32                                               # 34 bytes per 32 weights
    expected = _reference_with(gguf_dequantized(state, "Q8_0"), model.config)
    for text in tf.SENTENCES[:3]:
        ids = encoder.tokenizer(text)
        torch.testing.assert_close(_features(encoder.model, ids), _features(expected, ids), rtol=1e-5, atol=1e-5)
    # and Q8_0 costs about 1 % against the unquantised tower
    ids = encoder.tokenizer(tf.SENTENCES[0])
    a, b = _features(encoder.model, ids), _features(model, ids)
    assert ((a - b).norm() / b.norm()).item() < 0.03


def test_without_a_layer_pattern_llama_cpps_gemma3_rule_holds(reference, tmp_path):
    model, state = reference
    path = write_gemma_gguf(tmp_path / "g.gguf", state, model.config, tf.gemma_spm(), "F32", layer_pattern=False)
    config = load_gemma(path, torch.float32).model.config
    assert config.layer_types == ["sliding_attention"] * 3                      # every 6th layer is global
    assert config.rope_parameters["sliding_attention"] == {"rope_type": "default", "rope_theta": 10_000.0}
    assert config.rope_parameters["full_attention"]["factor"] == 8.0
    assert config.query_pre_attn_scalar == config.head_dim == 16 and config.sliding_window == 1024


def test_bad_gemma_ggufs_are_refused_with_what_is_wrong(reference, tmp_path):
    model, state = reference
    no_tokenizer = write_gemma_gguf(tmp_path / "notok.gguf", state, model.config, None, "F32")
    with pytest.raises(WeightsError, match="carries no tokenizer.*tokenizer.model") as error:
        load_gemma(no_tokenizer)
    assert "notok.gguf" in str(error.value)
    llama = write_gemma_gguf(tmp_path / "llama.gguf", state, model.config, tf.gemma_spm(), "F32", architecture="llama")
    with pytest.raises(WeightsError, match="architecture 'llama'.*not a Gemma 3"):
        load_gemma(llama)
    partial = {k: v for k, v in state.items() if k != "layers.1.mlp.up_proj.weight"}
    broken = write_gemma_gguf(tmp_path / "partial.gguf", partial, model.config, tf.gemma_spm(), "F32")
    with pytest.raises(WeightsError, match="missing blk.1.ffn_up.weight"):
        load_gemma(broken)
    with pytest.raises(WeightsError, match="llama.cpp does not convert jina-clip-v2"):
        load_jina(no_tokenizer)


def test_embedded_gemma_as_gguf_gives_the_same_conditioning_through_the_nodes(tmp_path, monkeypatch):
    import shutil

    from nextdit_nodes.nodes.host import EMBEDDED_DIR
    from nextdit_nodes.nodes.text import NextDiTTextEncode, NextDiTTextEncoderLoader

    folder = tmp_path / "text_encoders"
    folder.mkdir()
    source = EMBEDDED_DIR / "text_encoders" / "embedded-shapes-gemma3.safetensors"
    shutil.copy(source, folder / source.name)
    shutil.copy(EMBEDDED_DIR / "text_encoders" / "embedded-shapes-jina.safetensors", folder)
    original = load_gemma(source)
    state = {k: v.detach() for k, v in original.model.state_dict().items()}
    write_gemma_gguf(folder / "embedded-gemma3-F32.gguf", state, original.model.config,
                     original.tokenizer.model_proto, "F32")
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(tmp_path))
    assert "embedded-gemma3-F32.gguf" in NextDiTTextEncoderLoader.INPUT_TYPES()["required"]["gemma_name"][0]
    prompt = "a red circle at the top left and a small blue square"
    results = []
    for gemma in (source.name, "embedded-gemma3-F32.gguf"):
        (encoders,) = NextDiTTextEncoderLoader().load(gemma, "embedded-shapes-jina.safetensors", "cpu", "fp32")
        results.append(NextDiTTextEncode().encode(encoders, prompt, "none", "")[0][0])
    (feats_a, extra_a), (feats_b, extra_b) = results
    assert torch.equal(feats_a, feats_b)
    assert torch.equal(extra_a["pooled_output"], extra_b["pooled_output"])
    assert extra_a["gemma_text"] == extra_b["gemma_text"] == prompt
