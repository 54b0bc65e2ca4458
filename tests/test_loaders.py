"""Weight loading: file layouts, prefixes, strict errors, config inference, dtypes, the node.

References are independent of the loader: `factories.official_state_dict` (keys from
docs/newbie-image.md §2) is what every layout must load to, the diffusers renaming is re-written here from
docs/newbie-image.md §4, and the Lumina-2 fixture comes from diffusers' own `Lumina2Transformer2DModel`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from factories import (newbie_width_params, official_shapes, official_state_dict, random_inputs,
                       tiny_params, with_guidance, write_dit_checkpoint)
from nextdit_nodes.loaders import WeightsError, load_dit
from nextdit_nodes.dit.checkpoint import infer_params
from nextdit_nodes.dit.keys import strip_prefixes
from nextdit_nodes.dit.precision import FP8, FP8Linear, quantize_fp8, resolve
from nextdit_nodes.dtypes import auto_dtype
from nextdit_nodes.files.tensors import read_state_dict
from nextdit_nodes.files.keys import group_keys

P = tiny_params()


def _assert_same_state(model, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


# ---- every layout and prefix loads to the identical state dict --------------------------------

PREFIXES = ["", "module.", "module.module.", "_orig_mod.", "model.diffusion_model.", "diffusion_model.",
            "transformer.", "model.", "module._orig_mod.", "_orig_mod.module.", "module.model.diffusion_model.",
            "model.module._orig_mod.", "module.module.transformer."]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_prefix_loads_identical_state(tmp_path, prefix):
    path = tmp_path / "dit.safetensors"
    expected = write_dit_checkpoint(path, P, seed=1, prefix=prefix)   # includes norm_final
    _assert_same_state(load_dit(path), expected)


@pytest.mark.parametrize("nesting", [["model"], ["ema"], ["state_dict"], ["module"], ["state_dict", "model"]])
def test_nested_training_checkpoint(tmp_path, nesting):
    expected = official_state_dict(P, seed=2)
    payload = {"module." + k: v for k, v in expected.items()}
    for key in reversed(nesting):
        payload = {key: payload}
    payload["args"] = argparse.Namespace(lr=1e-4, model="NextDiT")   # training scripts save these
    payload["step"] = 1200
    torch.save(payload, tmp_path / "train.pth")
    _assert_same_state(load_dit(tmp_path / "train.pth"), expected)


def test_ema_preferred_over_model(tmp_path):
    ema, raw = official_state_dict(P, seed=3), official_state_dict(P, seed=4)
    torch.save({"model": raw, "ema": ema}, tmp_path / "both.ckpt")
    _assert_same_state(load_dit(tmp_path / "both.ckpt"), ema)


def test_sharded_and_folder_layouts(tmp_path):
    expected = official_state_dict(P, seed=5)
    keys = sorted(expected)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[::2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[1::2]}
    folder = tmp_path / "NewBie" / "transformer"
    folder.mkdir(parents=True)
    (tmp_path / "NewBie" / "model_index.json").write_text("{}")
    weight_map = {}
    for name, names in shards.items():
        save_file({"transformer." + k: expected[k] for k in names}, str(folder / name))
        weight_map.update({"transformer." + k: name for k in names})
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _assert_same_state(load_dit(index), expected)                    # the index itself
    _assert_same_state(load_dit(tmp_path / "NewBie"), expected)      # the pipeline folder


def test_all_in_one_file_yields_its_dit(tmp_path):
    expected = official_state_dict(P, seed=6, norm_final=True)
    stored = {"model.diffusion_model." + k: v for k, v in expected.items()}
    stored["text_encoders.gemma3.transformer.model.layers.0.self_attn.q_norm.weight"] = torch.ones(8)
    stored["text_encoders.jina_clip.model.encoder.layers.0.mixer.Wqkv.weight"] = torch.ones(24, 8)
    stored["vae.decoder.conv_in.weight"] = torch.ones(4, 16, 3, 3)
    stored["first_stage_model.encoder.conv_in.weight"] = torch.ones(4, 3, 3, 3)
    save_file(stored, str(tmp_path / "aio.safetensors"))
    expected.pop("norm_final.weight")
    _assert_same_state(load_dit(tmp_path / "aio.safetensors"), expected)


def test_strip_prefixes_keeps_tensor_objects():
    tensor = torch.zeros(3)
    out, dropped = strip_prefixes({"module._orig_mod.x_embedder.weight": tensor})
    assert out == {"x_embedder.weight": tensor} and out["x_embedder.weight"] is tensor and dropped == []


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])   # memory-mapped weights, and converted ones
def test_loading_and_editing_weights_never_modify_the_file(tmp_path, dtype):
    path = tmp_path / "dit.safetensors"
    write_dit_checkpoint(path, P, seed=7)
    before = path.read_bytes()
    model = load_dit(path, dtype)
    with torch.no_grad():   # e.g. a LoRA merged in place
        for param in model.parameters():
            param.add_(1.0)
    del model
    assert path.read_bytes() == before


# ---- diffusers layouts ------------------------------------------------------------------------

def _diffusers_names(official: dict[str, torch.Tensor], p) -> dict[str, torch.Tensor]:
    """Official -> diffusers keys, written from docs/newbie-image.md §4 (a second implementation)."""
    top = {"t_embedder.mlp.0": "time_caption_embed.timestep_embedder.linear_1",
           "t_embedder.mlp.2": "time_caption_embed.timestep_embedder.linear_2",
           "cap_embedder": "time_caption_embed.caption_embedder",
           "clip_text_pooled_proj": "time_caption_embed.clip_text_pooled_proj",
           "time_text_embed": "time_caption_embed.time_text_embed",
           "final_layer.adaLN_modulation.1": "norm_out.linear_1", "final_layer.linear": "norm_out.linear_2"}
    block = {"attention.out": "attn.to_out.0", "attention.q_norm": "attn.norm_q", "attention.k_norm": "attn.norm_k",
             "feed_forward.w1": "feed_forward.linear_1", "feed_forward.w2": "feed_forward.linear_2",
             "feed_forward.w3": "feed_forward.linear_3", "adaLN_modulation.1": "norm1.linear",
             "attention_norm2": "norm2"}
    out = {}
    for key, value in official.items():
        if key == "norm_final.weight":
            continue
        parts = key.split(".")
        if parts[0] in ("layers", "noise_refiner", "context_refiner"):
            head, rest = ".".join(parts[:2]), ".".join(parts[2:])
            if rest == "attention.qkv.weight":
                q, kv = p.n_heads * p.head_dim, p.n_kv_heads * p.head_dim
                for name, piece in zip("qkv", value.split([q, kv, kv])):
                    out[f"{head}.attn.to_{name}.weight"] = piece.clone()
                continue
            if rest == "attention_norm1.weight":
                rest = "norm1.weight" if parts[0] == "context_refiner" else "norm1.norm.weight"
            for old, new in block.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
            out[f"{head}.{rest}"] = value
            continue
        for old, new in top.items():
            if key.startswith(old + "."):
                key = new + key[len(old):]
        out[key] = value
    return out


def test_newbie_diffusers_layout_converts_back(tmp_path):
    expected = official_state_dict(P, seed=8)
    save_file({"model.diffusion_model." + k: v for k, v in _diffusers_names(expected, P).items()},
              str(tmp_path / "nb_diffusers.safetensors"))
    _assert_same_state(load_dit(tmp_path / "nb_diffusers.safetensors"), expected)


def _random_lumina2(seed: int):
    from diffusers import Lumina2Transformer2DModel

    torch.manual_seed(seed)
    ref = Lumina2Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, hidden_size=48, num_layers=2,
                                    num_refiner_layers=2, num_attention_heads=4, num_kv_heads=2, multiple_of=16,
                                    norm_eps=1e-5, axes_dim_rope=(4, 4, 4), axes_lens=(64, 32, 32), cap_feat_dim=40)
    with torch.no_grad():   # non-trivial norms and biases so a misplaced tensor shows
        for name, param in ref.named_parameters():
            param.copy_(0.5 + torch.rand_like(param) if param.ndim == 1 and "norm" in name
                        else torch.randn_like(param) / (param.shape[-1] ** 0.5 if param.ndim == 2 else 10))
    return ref.eval()


def test_lumina2_diffusers_model_matches_after_conversion(tmp_path):
    """Fixture made by diffusers' own Lumina2Transformer2DModel; our loaded model must give the
    same output. diffusers' transformer takes data-time (its pipeline passes 1 - t/1000) and returns
    data - noise (its pipeline negates it for the scheduler), so no conversion of t or the sign."""
    ref = _random_lumina2(seed=9)
    ref.save_pretrained(tmp_path / "lumina2" / "transformer")
    model = load_dit(tmp_path / "lumina2")
    assert model.params.clip_dim is None and model.params.n_kv_heads == 2 and model.params.dim == 48
    inputs = random_inputs(model.params, cap_lens=[7, 4], latent_hw=(8, 6), seed=10)
    with torch.no_grad():
        expected = ref(hidden_states=inputs["x"], timestep=inputs["t"], encoder_hidden_states=inputs["cap_feats"],
                       encoder_attention_mask=inputs["cap_mask"], return_dict=False)[0]
        got = model(inputs["x"], inputs["t"], inputs["cap_feats"], inputs["cap_mask"])
    assert (got - expected).abs().max() / expected.abs().max() < 1e-5


# ---- errors -----------------------------------------------------------------------------------

def _raises(path, *needles: str) -> str:
    with pytest.raises(WeightsError) as info:
        load_dit(path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    return message


def test_missing_layer(tmp_path):
    p3 = tiny_params(n_layers=3)
    sd = official_state_dict(p3)
    save_file({k: v for k, v in sd.items() if not k.startswith("layers.1.")}, str(tmp_path / "gap.safetensors"))
    _raises(tmp_path / "gap.safetensors", "layers.1.*: missing")


def test_missing_module_in_every_layer_is_grouped(tmp_path):
    sd = official_state_dict(tiny_params(n_layers=3))
    save_file({k: v for k, v in sd.items() if not k.endswith("feed_forward.w2.weight")},
              str(tmp_path / "no_w2.safetensors"))
    _raises(tmp_path / "no_w2.safetensors", "layers.0-2.feed_forward.w2: missing",
            "noise_refiner.0-1.feed_forward.w2: missing", "context_refiner.0-1.feed_forward.w2: missing")


def test_wrong_shape_and_unexpected_key(tmp_path):
    sd = official_state_dict(P)
    sd["layers.1.feed_forward.w2.weight"] = torch.zeros(P.dim, P.ffn_dim + 8)
    sd["layers.0.attention.extra.weight"] = torch.zeros(2)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    _raises(tmp_path / "bad.safetensors", f"layers.1.feed_forward.w2: shape [{P.dim}, {P.ffn_dim + 8}] in the file",
            "layers.0.attention.extra: unexpected")


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.safetensors"
    write_dit_checkpoint(path, P)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    _raises(path, "truncated")
    path.write_bytes(data[:100])                     # cut inside the header
    _raises(path, "truncated")


def test_pickle_needing_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x_embedder.weight": torch.zeros(2), "payload": Payload()}, tmp_path / "evil.pt")
    _raises(tmp_path / "evil.pt", "refused", "open")
    assert not marker.exists()
    import pickle
    with open(tmp_path / "evil_legacy.ckpt", "wb") as handle:   # plain pickle, not torch's zip format
        pickle.dump({"state_dict": Payload()}, handle)
    _raises(tmp_path / "evil_legacy.ckpt", "refused")
    assert not marker.exists()


def test_html_page_saved_as_safetensors(tmp_path):
    path = tmp_path / "NewBie.safetensors"
    path.write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>...</body></html>\n")
    _raises(path, "HTML")


def test_flux_vae_given_as_dit(tmp_path):
    ch = 8   # BFL AutoEncoder key names, tiny widths, 16 latent channels
    vae = {"encoder.conv_in.weight": (ch, 3, 3, 3), "encoder.down.0.block.0.norm1.weight": (ch,),
           "encoder.mid.attn_1.q.weight": (ch, ch, 1, 1), "encoder.conv_out.weight": (32, ch, 3, 3),
           "decoder.conv_in.weight": (ch, 16, 3, 3), "decoder.up.0.block.0.conv1.weight": (ch, ch, 3, 3),
           "decoder.conv_out.weight": (3, ch, 3, 3)}
    save_file({k: torch.zeros(s) for k, s in vae.items()}, str(tmp_path / "ae.safetensors"))
    _raises(tmp_path / "ae.safetensors", "not a Next-DiT", "FLUX VAE")


@pytest.mark.parametrize("keys,needle", [
    ({"diffusion_model.layers.0.attention.qkv.lora_A.weight": (4, 48),
      "diffusion_model.layers.0.attention.qkv.lora_B.weight": (72, 4)}, "LoRA"),
    ({"model.layers.0.self_attn.q_norm.weight": (8,), "model.layers.0.post_feedforward_layernorm.weight": (8,),
      "model.embed_tokens.weight": (10, 8)}, "Gemma 3"),
    ({"model.encoder.layers.0.mixer.Wqkv.weight": (24, 8)}, "Jina CLIP"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (4, 4, 3, 3), "model.diffusion_model.time_embed.0.weight":
      (8, 4), "conditioner.embedders.1.model.ln_final.weight": (8,)}, "SDXL"),
    ({"double_blocks.0.img_attn.qkv.weight": (6, 2)}, "FLUX transformer"),
])
def test_other_models_are_named(tmp_path, keys, needle):
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(tmp_path / "other.safetensors"))
    _raises(tmp_path / "other.safetensors", "not a Next-DiT", needle)


def test_missing_shard_and_empty_folder(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x_embedder.weight": "model-00001-of-00002.safetensors"}}))
    _raises(index, "shard", "missing")
    (tmp_path / "empty").mkdir()
    _raises(tmp_path / "empty", "no weight files")


def test_group_keys_folds_indices():
    names = [f"layers.{i}.attention.qkv.weight" for i in range(36)] + ["norm_final.weight", "x_embedder.bias"]
    assert group_keys(names) == ["layers.0-35.attention.qkv", "norm_final", "x_embedder"]
    assert group_keys([f"layers.{i}.ffn_norm1.weight" for i in (0, 1, 2, 5, 7, 8)]) == ["layers.0-2,5,7-8.ffn_norm1"]


# ---- config inference -------------------------------------------------------------------------

def _meta_state(params, **kw) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in official_shapes(params, **kw).items()}


def test_infer_params_full_newbie_from_shapes():
    """The released NewBie config (docs/newbie-image.md §2) from shapes alone; 3,486,636,096 parameters."""
    from nextdit_nodes.dit.model import NextDiT

    newbie = newbie_width_params(n_layers=36, ffn_dim=9216)
    state = _meta_state(newbie, norm_final=True)
    assert len(state) == 535 and sum(t.numel() for t in state.values()) == 3_486_636_096
    state.pop("norm_final.weight")
    inferred = infer_params(state)
    assert (inferred.dim, inferred.n_layers, inferred.n_heads, inferred.n_kv_heads, inferred.head_dim) == \
           (2304, 36, 24, 8, 96)
    assert (inferred.ffn_dim, inferred.cap_dim, inferred.clip_dim, inferred.patch_size, inferred.in_channels,
            inferred.n_refiner_layers, inferred.guidance_embed) == (9216, 2560, 1024, 2, 16, 2, False)
    assert sum(t.numel() for t in NextDiT(inferred, device="meta").parameters()) == 3_486_636_096 - 2304


@pytest.mark.parametrize("params", [tiny_params(), tiny_params(clip_dim=None), with_guidance(tiny_params()),
                                    tiny_params(patch_size=1, n_refiner_layers=1, n_kv_heads=4)])
def test_infer_params_roundtrip(params):
    assert infer_params(_meta_state(params)) == params


# ---- dtypes -----------------------------------------------------------------------------------

def test_dtype_policy(monkeypatch):
    assert auto_dtype("cpu", fp16_safe=True) == torch.float32 and resolve("auto", "cpu").compute == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert auto_dtype("cuda", fp16_safe=True) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert auto_dtype("cuda", fp16_safe=True) == torch.float16
    assert resolve("fp8_e4m3fn", "cpu").fp8 and resolve("fp8_e4m3fn", "cpu").compute == torch.float32
    with pytest.raises(ValueError, match="fp8_e4m3fn"):
        resolve("int4", "cpu")


def test_fp8_row_quantisation_error_bound():
    """e4m3 keeps 3 mantissa bits: relative rounding error <= 2^-4 in the normal range, absolute
    <= half the smallest subnormal step (2^-10 of the row scale) below it."""
    torch.manual_seed(0)
    w = torch.randn(64, 96) * torch.logspace(-3, 0, 64)[:, None]
    q, scale = quantize_fp8(w)
    assert q.dtype == FP8 and scale.shape == (64,)
    error = (w - q.float() * scale[:, None]).abs()
    assert (error <= w.abs() * 2 ** -4 + scale[:, None] * 2 ** -10 + 1e-12).all()
    assert quantize_fp8(q)[0] is q   # fp8 input is kept as it is


@pytest.mark.parametrize("dtype,tolerance", [("bf16", 0.03), ("fp16", 0.01), ("fp8_e4m3fn", 0.1)])
def test_low_precision_forward_close_to_fp32(tmp_path, dtype, tolerance):
    """Documented tolerances (dit/precision.py): max |a-b| / max |b| against the fp32 forward."""
    path = tmp_path / "dit.safetensors"
    write_dit_checkpoint(path, P, seed=11)
    reference = load_dit(path, "fp32")
    model = load_dit(path, dtype)
    inputs = random_inputs(P, cap_lens=[6, 3], seed=12)
    expected = reference(**inputs)
    got = model(**inputs)
    assert got.dtype == torch.float32
    error = ((got - expected).abs().max() / expected.abs().max()).item()
    assert 0 < error < tolerance
    if dtype == "fp8_e4m3fn":
        qkv = model.layers[0].attention.qkv
        assert isinstance(qkv, FP8Linear) and qkv.weight.dtype == FP8
        assert model.x_embedder.weight.dtype == torch.float32 and model.layers[0].ffn_norm1.weight.dtype == torch.float32
        stored = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        assert stored < 0.5 * sum(t.numel() * 4 for t in reference.state_dict().values())


def test_bf16_file_loads_as_fp32_exactly(tmp_path):
    path = tmp_path / "dit_bf16.safetensors"
    expected = write_dit_checkpoint(path, P, seed=13, dtype=torch.bfloat16)
    model = load_dit(path, "fp32")
    _assert_same_state(model, {k: v.float() for k, v in expected.items()})
    assert load_dit(path, "bf16").layers[0].attention.qkv.weight.dtype == torch.bfloat16


def test_read_state_dict_reads_plain_tensors(tmp_path):
    expected = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64),
                "c": torch.zeros(0)}
    save_file(expected, str(tmp_path / "x.safetensors"))
    got = read_state_dict(tmp_path / "x.safetensors")
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


# ---- the node and import cost -----------------------------------------------------------------

def test_node_lists_and_loads(tmp_path, monkeypatch):
    from nextdit_nodes.nodes.dit import NODE_CLASSES, NextDiTLoader

    assert NODE_CLASSES == [NextDiTLoader]
    folder = tmp_path / "diffusion_models"
    folder.mkdir()
    expected = write_dit_checkpoint(folder / "tiny_dit.safetensors", P, seed=14)
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(tmp_path))
    inputs = NextDiTLoader.INPUT_TYPES()["required"]
    assert "tiny_dit.safetensors" in inputs["dit_name"][0]
    assert inputs["weight_dtype"][0] == ["auto", "bf16", "fp16", "fp32", "fp8_e4m3fn"]
    assert all("tooltip" in options for _, options in inputs.values())
    assert NextDiTLoader.VALIDATE_INPUTS("tiny_dit.safetensors") is True
    assert "not found" in NextDiTLoader.VALIDATE_INPUTS("nope.safetensors")
    model, core_model = NextDiTLoader().load("tiny_dit.safetensors", "auto")   # auto on CPU = fp32
    assert core_model is None   # headless: no core MODEL (tests/comfy_host checks it in ComfyUI)
    _assert_same_state(model, expected)


def test_weights_error_import_is_cheap():
    code = ("import sys; from nextdit_nodes.loaders import WeightsError; import nextdit_nodes.nodes.dit; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert out.stdout.strip() == "False"


def test_ema_object_that_is_not_weights_is_skipped(tmp_path):
    expected = official_state_dict(P, seed=15)
    torch.save({"model": expected, "ema": {"decay": 0.999, "num_updates": 10}}, tmp_path / "train.pt")
    _assert_same_state(load_dit(tmp_path / "train.pt"), expected)


def test_fp8_file_loads_without_requantising(tmp_path):
    """A checkpoint already stored in fp8 (as ComfyUI's fp8 files are) keeps its fp8 values."""
    sd = official_state_dict(P, seed=16)
    stored = {k: (v.to(FP8) if k.startswith("layers.") and v.ndim == 2 else v) for k, v in sd.items()}
    save_file(stored, str(tmp_path / "dit_fp8.safetensors"))
    model = load_dit(tmp_path / "dit_fp8.safetensors", "fp8_e4m3fn")
    qkv = model.layers[1].attention.qkv
    assert torch.equal(qkv.weight.view(torch.uint8), stored["layers.1.attention.qkv.weight"].view(torch.uint8))
    assert torch.equal(qkv.weight_scale, torch.ones(qkv.out_features))
    upcast = load_dit(tmp_path / "dit_fp8.safetensors", "fp32")
    assert torch.equal(upcast.layers[1].attention.qkv.weight, stored["layers.1.attention.qkv.weight"].float())


def test_pickle_named_safetensors(tmp_path):
    torch.save(official_state_dict(P), tmp_path / "renamed.safetensors")
    _raises(tmp_path / "renamed.safetensors", "rename it to .pt")



def test_gqa_qkv_fused_back_at_newbie_widths():
    """NewBie widths: 24 query heads and 8 kv heads of 96 -> to_q 2304 rows, to_k/to_v 768 rows
    each (docs/newbie-image.md §4), fused back in q, k, v order to attention.qkv [3840, 2304]."""
    from nextdit_nodes.files.tensors import TensorRef
    from nextdit_nodes.dit.keys import to_official

    gen = torch.Generator().manual_seed(18)
    parts = {name: torch.randn(rows, 2304, generator=gen) for name, rows in (("q", 2304), ("k", 768), ("v", 768))}
    refs = {f"layers.5.attn.to_{name}.weight": TensorRef.of(t) for name, t in parts.items()}
    fused = to_official(refs)["layers.5.attention.qkv.weight"]
    assert fused.shape == (3840, 2304)
    weight = fused.load()
    assert torch.equal(weight[:2304], parts["q"]) and torch.equal(weight[2304:3072], parts["k"])
    assert torch.equal(weight[3072:], parts["v"])


def test_unknown_patch_width_is_refused(tmp_path):
    sd = official_state_dict(P)
    sd["x_embedder.weight"] = torch.zeros(P.dim, 48)   # 48 is not p*p*16
    save_file(sd, str(tmp_path / "odd.safetensors"))
    _raises(tmp_path / "odd.safetensors", "x_embedder input width 48")


def test_garbage_collection_is_back_on_after_loading(tmp_path):
    import gc

    write_dit_checkpoint(tmp_path / "dit.safetensors", P)
    load_dit(tmp_path / "dit.safetensors")
    assert gc.isenabled()
    (tmp_path / "bad.safetensors").write_text("<html></html>")
    with pytest.raises(WeightsError):
        load_dit(tmp_path / "bad.safetensors")
    assert gc.isenabled()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_same_dtype_load_copies_nothing(tmp_path):
    """Weights already in the wanted dtype are the file's (private) memory map itself: every
    parameter lies inside a mapping of the file (per /proc/self/maps), so there is no second copy."""
    path = tmp_path / "dit.safetensors"
    write_dit_checkpoint(path, P, seed=19, dtype=torch.bfloat16)
    model = load_dit(path, "bf16")
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            ranges.append((start, end))
    assert ranges
    for name, param in model.named_parameters():
        ptr = param.data_ptr()
        assert any(start <= ptr and ptr + param.nbytes <= end for start, end in ranges), name
