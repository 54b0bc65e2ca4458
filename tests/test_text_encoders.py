"""Text encoders: every file layout loads the same weights, the features are what the official code
computes (checked against transformers modules run by hand), caching, freeing, bad files.

References are independent of the code under test: transformers' own modules with the reference
weights, SentencePiece run directly for token ids, the LoRA formula and the mean written here.
"""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch
from safetensors.torch import save_file

import text_fixtures as tf
from nextdit_nodes.loaders import WeightsError
from nextdit_nodes.text import loading as lte
from nextdit_nodes.text import towers as te
from nextdit_nodes.text.encoders import TextEncoders

TEXTS = ["a girl with long blue hair", "masterpiece, best quality,  1girl,\n<n>solo</n>, smile at night", ""]


@pytest.fixture(scope="module")
def gemma_ref():
    torch.manual_seed(0)
    return tf.gemma_reference(seed=0)


@pytest.fixture(scope="module")
def jina_ref():
    return tf.jina_reference(seed=1)


@pytest.fixture(scope="module")
def gemma_files(gemma_ref, tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma")
    single = ("comfy", "newbie_converter")
    return {layout: tf.write_gemma(root / (layout + (".safetensors" if layout in single else "")),
                                   gemma_ref[1], layout) for layout in tf.GEMMA_LAYOUTS}


@pytest.fixture(scope="module")
def jina_files(jina_ref, tmp_path_factory):
    root = tmp_path_factory.mktemp("jina")
    return {layout: tf.write_jina(root / (layout + (".safetensors" if layout == "comfy" else "")),
                                  jina_ref[1], layout) for layout in tf.JINA_LAYOUTS}


@pytest.fixture(scope="module")
def gemma(gemma_files):
    return lte.load_gemma(gemma_files["comfy"])


@pytest.fixture(scope="module")
def jina(jina_files):
    return lte.load_jina(jina_files["comfy"])


def gemma_ids(text: str) -> list[int]:
    return [2] + tf.spm_ids(tf.gemma_spm(), text)          # <bos> = 2, no EOS


def jina_ids(text: str) -> list[int]:
    return [0] + tf.spm_ids(tf.jina_spm(), text) + [2]     # <s> ... </s>


def manual_gemma(model, ids: list[int]) -> torch.Tensor:
    """Embedding and every decoder layer but the last, called one by one with an explicit causal
    mask: hidden_states[-2] by definition (no final norm). [L, hidden]"""
    input_ids = torch.tensor([ids])
    positions = torch.arange(len(ids))[None]
    causal = torch.full((len(ids), len(ids)), float("-inf")).triu(1)[None, None]
    hidden = model.embed_tokens(input_ids)
    with torch.no_grad():
        for index, layer in enumerate(model.layers[:-1]):
            kind = model.config.layer_types[index]
            rope = model.rotary_emb(hidden, positions, kind)
            hidden = layer(hidden, position_embeddings=rope, attention_mask=causal, position_ids=positions)
    return hidden[0]


def manual_jina_mean(model, ids: list[int]) -> torch.Tensor:
    """The reference tower on the unpadded ids, averaged over every token by hand. [hidden]"""
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    return sum(hidden[i] for i in range(len(ids))) / len(ids)


# ---- fixed real configs -----------------------------------------------------------------------

def test_real_gemma_config_is_pinned():
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding

    # A file's own claims are ignored for the real shapes (single files carry no config).
    config = lte.gemma_config_for(dict(te.GEMMA_3_4B_SHAPES), {"sliding_window": 4096, "rms_norm_eps": 1e-5})
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (262208, 2560, 10240)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (34, 8, 4)
    assert config.head_dim == 256 and config.sliding_window == 1024
    assert config.query_pre_attn_scalar == 256 and config.rms_norm_eps == 1e-6
    assert config.hidden_activation == "gelu_pytorch_tanh"
    full = [i for i, kind in enumerate(config.layer_types) if kind == "full_attention"]
    assert full == [5, 11, 17, 23, 29]
    assert config.layer_types.count("sliding_attention") == 29
    assert config.rope_parameters["full_attention"]["rope_type"] == "linear"
    assert config.rope_parameters["full_attention"]["factor"] == 8.0
    assert config.rope_parameters["full_attention"]["rope_theta"] == 1e6
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == 1e4
    rope = Gemma3RotaryEmbedding(config)
    exponent = torch.arange(0, 256, 2).float() / 256
    torch.testing.assert_close(rope.full_attention_inv_freq, 1.0 / (1e6 ** exponent) / 8)
    torch.testing.assert_close(rope.sliding_attention_inv_freq, 1.0 / (1e4 ** exponent))


def test_real_jina_config_is_pinned(tmp_path):
    # The real file's tensor shapes (docs/newbie-image.md §5) give the real config, whatever a config says.
    real_shapes = {"embeddings.word_embeddings.weight": (250002, 1024),
                   "embeddings.token_type_embeddings.weight": (1, 1024),
                   "layers.0.mlp.fc1.weight": (4096, 1024), "layers.23.mlp.fc1.weight": (4096, 1024)}
    shapes = lte._infer_jina_shapes(tmp_path, real_shapes, {"num_attention_heads": 8})
    config = lte.jina_config_for(shapes, {"num_attention_heads": 8, "rope_theta": 10000.0})
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (250002, 1024, 24)
    assert (config.num_attention_heads, config.intermediate_size) == (16, 4096)
    assert config.rope_parameters["rope_theta"] == 20000.0
    assert config.layer_norm_eps == 1e-5 and config.hidden_act == "gelu"
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (1, 0, 2)


# ---- Gemma ------------------------------------------------------------------------------------

def test_gemma_every_layout_gives_identical_features(gemma_ref, gemma_files):
    reference, _ = gemma_ref
    expected = []
    for text in TEXTS:
        with torch.no_grad():
            out = reference(input_ids=torch.tensor([gemma_ids(text)]), output_hidden_states=True)
        expected.append(out.hidden_states[-2][0])
    for layout, path in gemma_files.items():
        encoder = lte.load_gemma(path)
        for text, want in zip(TEXTS, expected):
            got = te.encode_gemma(encoder, [text])
            assert got.features.shape == (1, len(gemma_ids(text)), 64), layout
            torch.testing.assert_close(got.features[0], want, rtol=0, atol=1e-5, msg=layout)


def test_gemma_features_are_penultimate_layer_before_norm(gemma, gemma_ref):
    reference, _ = gemma_ref
    for text in TEXTS[:2]:
        ids = gemma_ids(text)
        got = te.encode_gemma(gemma, [text]).features[0]
        torch.testing.assert_close(got, manual_gemma(reference, ids), rtol=1e-5, atol=1e-5)
        # BOS is the first token: its feature is the BOS-only sequence's feature (causal model).
        torch.testing.assert_close(got[0], manual_gemma(reference, [2])[0], rtol=1e-5, atol=1e-5)
    # not the last layer's output, not after the final norm
    with torch.no_grad():
        last = reference(input_ids=torch.tensor([gemma_ids(TEXTS[0])])).last_hidden_state[0]
    assert not torch.allclose(te.encode_gemma(gemma, [TEXTS[0]]).features[0], last, atol=1e-3)


def test_gemma_right_padding_keeps_each_text_exact(gemma):
    batch = te.encode_gemma(gemma, TEXTS)
    lengths = [len(gemma_ids(t)) for t in TEXTS]
    assert batch.mask.tolist() == [[1] * n + [0] * (max(lengths) - n) for n in lengths]
    for row, text in enumerate(TEXTS):
        alone = te.encode_gemma(gemma, [text]).features[0]
        torch.testing.assert_close(batch.features[row, :lengths[row]], alone, rtol=1e-5, atol=1e-5)


def test_gemma_truncates_at_512_and_says_how_many(gemma, jina):
    text = " ".join(["masterpiece, best quality, 1girl"] * 120)
    full = gemma_ids(text)
    assert len(full) > 512
    out = te.encode_pair(gemma, jina, text, "short")
    assert out.cap_feats.shape[1] == 512
    assert len(out.warnings) == 1 and f"{len(full) - 512} tokens were cut" in out.warnings[0]
    assert "Gemma" in out.warnings[0]
    with torch.no_grad():
        kept = manual_gemma(gemma.model, full[:512])
    torch.testing.assert_close(out.cap_feats[0], kept, rtol=1e-4, atol=1e-4)
    assert te.encode_pair(gemma, jina, "short", "short").warnings == []


def test_gemma_vision_tower_is_never_read(gemma_files, monkeypatch):
    read = []
    original = lte.open_weights

    def recording(path, *args, **kwargs):
        refs = original(path, *args, **kwargs)
        return {k: tf_ref(ref, k) for k, ref in refs.items()}

    def tf_ref(ref, key):
        def reader(*args):
            read.append(key)
            return ref.reader(*args)
        return type(ref)(ref.file, ref.shape, ref.dtype, reader)

    monkeypatch.setattr(lte, "open_weights", recording)
    for layout in ("hf_multimodal_legacy", "hf_multimodal", "newbie_converter"):
        read.clear()
        lte.load_gemma(gemma_files[layout])
        assert read and not [k for k in read if "vision" in k or "multi_modal" in k or "lm_head" in k]


def test_gemma_dtype_keeps_rope_in_float32(gemma_files):
    encoder = lte.load_gemma(gemma_files["comfy"], torch.bfloat16)
    assert {p.dtype for p in encoder.model.parameters()} == {torch.bfloat16}
    assert encoder.model.rotary_emb.full_attention_inv_freq.dtype == torch.float32
    out = te.encode_gemma(encoder, [TEXTS[0]])
    assert out.features.dtype == torch.float32 and torch.isfinite(out.features).all()


def test_gemma_without_config_follows_the_real_model_rules(gemma_ref, tmp_path):
    path = tf.write_gemma(tmp_path / "bare.safetensors", gemma_ref[1], "comfy", with_config=False)
    config = lte.load_gemma(path).model.config
    assert config.sliding_window == 1024 and config.query_pre_attn_scalar == 16  # = head_dim
    assert config.layer_types == ["sliding_attention"] * 3                        # every 6th is global
    assert config.rope_parameters["full_attention"]["factor"] == 8.0


# ---- Jina -------------------------------------------------------------------------------------

def test_jina_every_layout_gives_the_mean_of_its_tokens(jina_ref, jina_files):
    reference, _ = jina_ref
    for layout, path in jina_files.items():
        encoder = lte.load_jina(path)
        pooled = te.encode_jina(encoder, TEXTS).pooled      # batched: padding on the right
        assert pooled.shape == (len(TEXTS), 64)
        for row, text in enumerate(TEXTS):
            torch.testing.assert_close(pooled[row], manual_jina_mean(reference, jina_ids(text)),
                                       rtol=1e-5, atol=1e-5, msg=layout)


def test_jina_lora_is_merged_as_jina_defines_it(jina_ref, jina_files):
    _, state = jina_ref
    encoder = lte.load_jina(jina_files["original_lora"])
    loaded = encoder.model.state_dict()
    # By hand from the file's tensors: W' = W + B[t] A[t] * alpha/rank (A[t] B[t] for embeddings),
    # t = index of retrieval.query in lora_adaptations.
    from safetensors.torch import load_file

    raw = load_file(str(jina_files["original_lora"] / "model.safetensors"))
    prefix = "text_model.transformer.roberta."
    task = tf.LORA_TASKS.index("retrieval.query")
    for module, target in (("encoder.layers.1.mixer.Wqkv", None), ("embeddings.word_embeddings",
                                                                    "embeddings.word_embeddings.weight"),
                           ("encoder.layers.0.mlp.fc1", "layers.0.mlp.fc1.weight")):
        base = raw[prefix + module + ".parametrizations.weight.original"]
        a = raw[prefix + module + ".parametrizations.weight.0.lora_A"]
        b = raw[prefix + module + ".parametrizations.weight.0.lora_B"]
        delta = tf.hand_delta(module, a, b, task)
        assert delta.abs().max() > 0.01                    # the LoRA really changes the weight
        merged = base + delta
        if target is None:                                 # fused qkv -> q, k, v
            got = torch.cat([loaded[f"layers.1.self_attn.{p}_proj.weight"] for p in "qkv"])
        else:
            got = loaded[target]
        torch.testing.assert_close(got, merged, rtol=0, atol=1e-6)
        wrong_task = base + tf.hand_delta(module, a, b, 1 - task)
        assert not torch.allclose(got, wrong_task, atol=1e-3)


def test_jina_heads_rule_without_config(jina_ref, tmp_path):
    path = tf.write_jina(tmp_path / "j.safetensors", jina_ref[1], "comfy", with_config=False)
    assert lte.load_jina(path).model.config.num_attention_heads == 1        # 64 wide / head_dim 64


# ---- the NEXTDIT_TEXT object ------------------------------------------------------------------

def _count_calls(model: torch.nn.Module) -> list:
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_repeated_encodes_come_from_the_cache(gemma_files, jina_files):
    pair = (lte.load_gemma(gemma_files["comfy"]), lte.load_jina(jina_files["comfy"]))
    encoders = TextEncoders(lambda: pair, encoders=pair, cache_size=2)
    gemma_calls, jina_calls = _count_calls(pair[0].model), _count_calls(pair[1].model)
    first = encoders.encode("sys " + TEXTS[0], TEXTS[0])
    again = encoders.encode("sys " + TEXTS[0], TEXTS[0])
    assert (len(gemma_calls), len(jina_calls)) == (1, 1)
    assert torch.equal(first.cap_feats, again.cap_feats) and torch.equal(first.pooled, again.pooled)
    again.cap_feats.zero_()                                      # a consumer's edit stays its own
    assert torch.equal(encoders.encode("sys " + TEXTS[0], TEXTS[0]).cap_feats, first.cap_feats)
    encoders.encode("sys " + TEXTS[1], TEXTS[1])
    encoders.encode("other system " + TEXTS[1], TEXTS[1])        # the Gemma text is in the key
    assert len(gemma_calls) == 3
    encoders.encode("sys " + TEXTS[0], TEXTS[0])                 # evicted (LRU of 2): encoded again
    assert len(gemma_calls) == 4


def test_free_releases_the_models_and_reloads_on_demand(gemma_files, jina_files):
    loads = []

    def load():
        loads.append(1)
        return lte.load_gemma(gemma_files["comfy"]), lte.load_jina(jina_files["comfy"])

    encoders = TextEncoders(load)
    cached = encoders.encode(TEXTS[0], TEXTS[0])
    gemma_ref, jina_ref = weakref.ref(encoders.gemma.model), weakref.ref(encoders.jina.model)
    encoders.free()
    gc.collect()
    assert gemma_ref() is None and jina_ref() is None and not encoders.loaded
    assert torch.equal(encoders.encode(TEXTS[0], TEXTS[0]).cap_feats, cached.cap_feats)
    assert len(loads) == 1                                       # served from the cache
    fresh = encoders.encode(TEXTS[1], TEXTS[1])
    assert len(loads) == 2 and encoders.loaded and fresh.cap_feats.shape[-1] == 64


def test_load_text_encoders_picks_dtypes(gemma_files, jina_files):
    encoders = lte.load_text_encoders(gemma_files["comfy"], jina_files["comfy"], device="cpu", dtype="bf16")
    assert next(encoders.gemma.model.parameters()).dtype == torch.bfloat16
    assert next(encoders.jina.model.parameters()).dtype == torch.bfloat16
    assert lte.resolve_dtypes("auto", "cpu") == (torch.float32, torch.float32)
    with pytest.raises(ValueError, match="allowed"):
        lte.resolve_dtypes("int8", "cpu")


# ---- bad files --------------------------------------------------------------------------------

def test_other_models_are_refused_with_what_they_are(tmp_path, gemma_files, jina_files):
    from factories import tiny_params, write_dit_checkpoint

    dit = tmp_path / "dit.safetensors"
    write_dit_checkpoint(dit, tiny_params(), prefix="")
    with pytest.raises(WeightsError, match="Next-DiT"):
        lte.load_gemma(dit)
    vae = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3), "decoder.conv_in.weight": torch.zeros(8, 16, 3, 3),
               "decoder.conv_out.weight": torch.zeros(3, 8, 3, 3)}, str(vae))
    with pytest.raises(WeightsError, match="VAE"):
        lte.load_jina(vae)
    with pytest.raises(WeightsError, match="Jina"):
        lte.load_gemma(jina_files["comfy"])
    with pytest.raises(WeightsError, match="Gemma"):
        lte.load_jina(gemma_files["comfy"])


def test_incomplete_or_misshapen_weights_are_refused(gemma_ref, jina_ref, tmp_path):
    _, state = gemma_ref
    missing = {k: v for k, v in state.items() if k != "layers.1.mlp.up_proj.weight"}
    path = tf.write_gemma(tmp_path / "missing.safetensors", missing, "comfy")
    with pytest.raises(WeightsError, match=r"layers\.1\.mlp\.up_proj: missing"):
        lte.load_gemma(path)
    extra = {**state, "layers.0.self_attn.extra.weight": torch.zeros(2, 2)}
    with pytest.raises(WeightsError, match="unexpected"):
        lte.load_gemma(tf.write_gemma(tmp_path / "extra.safetensors", extra, "comfy"))
    wrong = {**state, "layers.2.post_feedforward_layernorm.weight": torch.zeros(63)}
    with pytest.raises(WeightsError, match=r"shape \[.*\] in the file, \[.*\] expected"):
        lte.load_gemma(tf.write_gemma(tmp_path / "wrong.safetensors", wrong, "comfy"))
    _, jstate = jina_ref
    cut = {k: v for k, v in jstate.items() if not k.startswith("layers.1.mlp.fc2")}
    with pytest.raises(WeightsError, match="missing"):
        lte.load_jina(tf.write_jina(tmp_path / "jcut.safetensors", cut, "comfy"))


def test_tokenizer_must_come_from_the_file(gemma_ref, jina_ref, tmp_path):
    path = tf.write_gemma(tmp_path / "notok.safetensors", gemma_ref[1], "comfy", with_tokenizer=False)
    with pytest.raises(WeightsError, match="no tokenizer"):
        lte.load_gemma(path)
    # A Gemma tokenizer given to Jina (BOS 2, not 0) is refused rather than encoding garbage.
    tensors = {"model." + k: v for k, v in tf.to_flash(jina_ref[1]).items()}
    tensors["spiece_model"] = torch.frombuffer(bytearray(tf.gemma_spm()), dtype=torch.uint8)
    save_file(tensors, str(tmp_path / "mixed.safetensors"), metadata={"config": json.dumps(tf.JINA_FILE_CONFIG)})
    with pytest.raises(WeightsError, match="tokenizer does not belong"):
        lte.load_jina(tmp_path / "mixed.safetensors")


def test_gpu_policy_makes_room_visits_the_gpu_and_comes_back(gemma, jina, monkeypatch):
    # Control flow only (this machine may have no GPU): moves are recorded instead of done.
    events = []
    encoders = TextEncoders(lambda: (gemma, jina), compute_device="cuda", encoders=(gemma, jina),
                            make_room=lambda size, device: events.append(("make_room", size, device.type)))
    monkeypatch.setattr(encoders, "_move", lambda device: events.append(("move", device.type)))
    encoders.encode("policy " + TEXTS[0], TEXTS[0])
    size = sum(p.numel() * p.element_size() for m in (gemma.model, jina.model) for p in m.parameters())
    assert events == [("make_room", size, "cuda"), ("move", "cuda"), ("move", "cpu")]
    events.clear()
    encoders.encode("policy " + TEXTS[0], TEXTS[0])                # cached: the GPU is not touched
    assert events == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_encoding_on_the_gpu_matches_the_cpu_and_leaves_weights_on_the_cpu(gemma_files, jina_files):
    cpu = lte.load_text_encoders(gemma_files["comfy"], jina_files["original_lora"], device="cpu", dtype="fp32")
    gpu = lte.load_text_encoders(gemma_files["comfy"], jina_files["original_lora"], device="cuda", dtype="fp32")
    want, got = cpu.encode("x " + TEXTS[1], TEXTS[1]), gpu.encode("x " + TEXTS[1], TEXTS[1])
    assert got.cap_feats.device.type == "cpu" and got.pooled.device.type == "cpu"
    torch.testing.assert_close(got.cap_feats, want.cap_feats, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.pooled, want.pooled, rtol=1e-4, atol=1e-4)
    assert {p.device.type for e in (gpu.gemma, gpu.jina) for p in e.model.parameters()} == {"cpu"}
    bf16 = lte.load_text_encoders(gemma_files["comfy"], jina_files["comfy"], device="cuda", dtype="auto")
    assert torch.isfinite(bf16.encode(TEXTS[0], TEXTS[0]).cap_feats).all()


def test_saved_single_files_load_back_identically(gemma_files, jina_files, jina_ref, tmp_path):
    from safetensors import safe_open

    from nextdit_nodes.text.saving import save_gemma, save_jina

    for layout in ("hf_multimodal", "comfy"):            # HF tokenizer -> metadata; SentencePiece -> tensor
        source = lte.load_gemma(gemma_files[layout])
        save_gemma(tmp_path / f"g_{layout}.safetensors", source)
        again = lte.load_gemma(tmp_path / f"g_{layout}.safetensors")
        assert again.model.config.layer_types == source.model.config.layer_types
        for text in TEXTS:
            torch.testing.assert_close(te.encode_gemma(again, [text]).features,
                                       te.encode_gemma(source, [text]).features, rtol=0, atol=1e-5)
    source = lte.load_jina(jina_files["original_lora"])
    save_jina(tmp_path / "j.safetensors", source)
    with safe_open(str(tmp_path / "j.safetensors"), "pt") as handle:       # ComfyUI's key names
        saved = {k: handle.get_tensor(k) for k in handle.keys() if k != "spiece_model"}
    expected = {"model." + k: v for k, v in tf.to_flash(jina_ref[1]).items()}
    assert saved.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(saved[key], expected[key], rtol=0, atol=1e-6)
    again = lte.load_jina(tmp_path / "j.safetensors")
    torch.testing.assert_close(te.encode_jina(again, TEXTS).pooled, te.encode_jina(source, TEXTS).pooled,
                               rtol=0, atol=1e-5)
