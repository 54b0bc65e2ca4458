"""Next-DiT forward against an independent reference of the official forward (docs/newbie-image.md §2-3).

The reference below is written from that description as the official code computes it: a
PADDED batch with key masks, dense float64 math, complex-number RoPE via `view_as_complex`,
explicit softmax attention with `repeat_interleave` for GQA, and patchify/unpatchify written as
explicit index loops. It reads the raw state dict; it never calls our modules.
"""

from __future__ import annotations

import math

import pytest
import torch

from factories import (dit_from_state_dict, newbie_width_params, official_state_dict, random_dit, random_inputs,
                       tiny_params, with_guidance)
from nextdit_nodes.dit.model import NextDiT
from nextdit_nodes.dit.ops import TokenLayout, apply_rope, timestep_embedding


# ----------------------------------------------------------------------------------------------
# Independent reference (float64)
# ----------------------------------------------------------------------------------------------

class _Ref:
    def __init__(self, sd: dict[str, torch.Tensor], p):
        self.w = {k: v.double() for k, v in sd.items()}
        self.p = p

    def linear(self, x, name):
        y = x @ self.w[name + ".weight"].T
        return y + self.w[name + ".bias"] if name + ".bias" in self.w else y

    def rmsnorm(self, x, name):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * self.w[name + ".weight"]

    def sinusoid(self, t):
        half = 128
        freqs = torch.tensor([math.exp(-math.log(10000.0) * i / half) for i in range(half)], dtype=torch.float64)
        args = t.double()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def mlp_embed(self, v, name):
        h = self.linear(self.sinusoid(v), name + ".mlp.0")
        return self.linear(h * torch.sigmoid(h), name + ".mlp.2")

    def freqs_cis(self, pos):
        """pos (..., 3) int -> complex (..., head_dim/2), axes concatenated."""
        parts = []
        for axis, d in enumerate(self.p.axes_dims):
            inv = torch.tensor([1.0 / self.p.rope_theta ** (2 * k / d) for k in range(d // 2)], dtype=torch.float64)
            ang = pos[..., axis, None].double() * inv
            parts.append(torch.polar(torch.ones_like(ang), ang))
        return torch.cat(parts, dim=-1)

    def attention(self, x, key_mask, fc, name):
        p = self.p
        b, n, _ = x.shape
        qkv = self.linear(x, name + ".qkv")
        q = qkv[..., : p.n_heads * p.head_dim].reshape(b, n, p.n_heads, p.head_dim)
        k = qkv[..., p.n_heads * p.head_dim: (p.n_heads + p.n_kv_heads) * p.head_dim]
        v = qkv[..., (p.n_heads + p.n_kv_heads) * p.head_dim:]
        k = k.reshape(b, n, p.n_kv_heads, p.head_dim)
        v = v.reshape(b, n, p.n_kv_heads, p.head_dim)
        q, k = self.rmsnorm(q, name + ".q_norm"), self.rmsnorm(k, name + ".k_norm")

        def rope(z):
            zc = torch.view_as_complex(z.reshape(b, n, z.shape[2], -1, 2).contiguous())
            return torch.view_as_real(zc * fc[:, :, None, :]).reshape(z.shape)

        q, k = rope(q), rope(k)
        rep = p.n_heads // p.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(p.head_dim)
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1), v)
        return self.linear(out.reshape(b, n, -1), name + ".out")

    def block(self, x, key_mask, fc, name, c=None):
        def ffn(z):
            a = self.linear(z, name + ".feed_forward.w1")
            return self.linear(a * torch.sigmoid(a) * self.linear(z, name + ".feed_forward.w3"),
                               name + ".feed_forward.w2")

        if c is None:
            x = x + self.rmsnorm(self.attention(self.rmsnorm(x, name + ".attention_norm1"), key_mask, fc,
                                                name + ".attention"), name + ".attention_norm2")
            return x + self.rmsnorm(ffn(self.rmsnorm(x, name + ".ffn_norm1")), name + ".ffn_norm2")
        mod = self.linear(c * torch.sigmoid(c), name + ".adaLN_modulation.1")
        d = self.p.dim
        scale_msa, gate_msa, scale_mlp, gate_mlp = (mod[:, i * d:(i + 1) * d, None].transpose(1, 2)
                                                    for i in range(4))
        h = self.attention(self.rmsnorm(x, name + ".attention_norm1") * (1 + scale_msa), key_mask, fc,
                           name + ".attention")
        x = x + torch.tanh(gate_msa) * self.rmsnorm(h, name + ".attention_norm2")
        h = ffn(self.rmsnorm(x, name + ".ffn_norm1") * (1 + scale_mlp))
        return x + torch.tanh(gate_mlp) * self.rmsnorm(h, name + ".ffn_norm2")

    def forward(self, x, t, cap_feats, cap_mask, clip_pooled=None, guidance=None):
        p, ps = self.p, self.p.patch_size
        x, cap_feats = x.double(), cap_feats.double()
        b, ch, hh, ww = x.shape
        rows, cols = hh // ps, ww // ps
        n_img = rows * cols
        t_emb = self.mlp_embed(t, "t_embedder")
        if guidance is not None:
            t_emb = t_emb + self.mlp_embed(guidance, "guidance_embedder")
        if clip_pooled is not None:
            clip = self.linear(self.rmsnorm(clip_pooled.double(), "clip_text_pooled_proj.0"),
                               "clip_text_pooled_proj.1")
            z = torch.cat([t_emb, clip], dim=-1)
            c = self.linear(z * torch.sigmoid(z), "time_text_embed.1")
        else:
            c = t_emb

        lens = [int(m.sum()) for m in cap_mask]
        lmax, seq = cap_feats.shape[1], max(lens) + n_img
        pos = torch.zeros(b, seq, 3, dtype=torch.long)
        for i, lc in enumerate(lens):
            for j in range(lc):
                pos[i, j] = torch.tensor([j, 0, 0])
            for r in range(rows):
                for q in range(cols):
                    pos[i, lc + r * cols + q] = torch.tensor([lc, r, q])
        fc = self.freqs_cis(pos)

        cap = self.linear(self.rmsnorm(cap_feats, "cap_embedder.0"), "cap_embedder.1")
        cap_fc = torch.stack([torch.cat([fc[i, :lc], torch.ones(lmax - lc, fc.shape[-1], dtype=fc.dtype)])
                              for i, lc in enumerate(lens)])
        for i in range(p.n_refiner_layers):
            cap = self.block(cap, cap_mask.bool(), cap_fc, f"context_refiner.{i}")

        patches = torch.zeros(b, n_img, ps * ps * ch, dtype=torch.float64)
        for r in range(rows):
            for q in range(cols):
                for a in range(ps):
                    for e in range(ps):
                        for k in range(ch):
                            patches[:, r * cols + q, (a * ps + e) * ch + k] = x[:, k, r * ps + a, q * ps + e]
        img = self.linear(patches, "x_embedder")
        img_fc = torch.stack([fc[i, lc:lc + n_img] for i, lc in enumerate(lens)])
        for i in range(p.n_refiner_layers):
            img = self.block(img, torch.ones(b, n_img, dtype=torch.bool), img_fc, f"noise_refiner.{i}", c)

        full = torch.zeros(b, seq, p.dim, dtype=torch.float64)
        mask = torch.zeros(b, seq, dtype=torch.bool)
        for i, lc in enumerate(lens):
            full[i, :lc], full[i, lc:lc + n_img], mask[i, :lc + n_img] = cap[i, :lc], img[i], True
        for i in range(p.n_layers):
            full = self.block(full, mask, fc, f"layers.{i}", c)

        scale = self.linear(c * torch.sigmoid(c), "final_layer.adaLN_modulation.1")
        mu, var = full.mean(-1, keepdim=True), full.var(-1, unbiased=False, keepdim=True)
        out = self.linear((full - mu) / torch.sqrt(var + 1e-6) * (1 + scale[:, None]), "final_layer.linear")

        v = torch.zeros(b, ch, hh, ww, dtype=torch.float64)
        for i, lc in enumerate(lens):
            for r in range(rows):
                for q in range(cols):
                    for a in range(ps):
                        for e in range(ps):
                            for k in range(ch):
                                v[i, k, r * ps + a, q * ps + e] = out[i, lc + r * cols + q, (a * ps + e) * ch + k]
        return v


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _parity(params, cap_lens, latent_hw, seed=0, guidance=None):
    sd = official_state_dict(params, seed)
    model = dit_from_state_dict(params, sd)
    inputs = random_inputs(params, cap_lens, latent_hw, seed=seed + 1)
    ref = _Ref(sd, params).forward(**inputs, guidance=guidance)
    out = model(**inputs, guidance=guidance)
    assert out.dtype == torch.float32 and out.shape == inputs["x"].shape
    return _rel(out, ref), out, ref


# ----------------------------------------------------------------------------------------------
# Parity
# ----------------------------------------------------------------------------------------------

def test_parity_tiny_two_caption_lengths():
    err, out, _ = _parity(tiny_params(), [5, 11], (6, 10))
    assert out.abs().max() > 0.1                      # a real signal, not a degenerate zero output
    assert err <= 1e-5, err


def test_parity_newbie_width_two_caption_lengths():
    err, _, _ = _parity(newbie_width_params(), [6, 13], (8, 6))
    assert err <= 1e-5, err


def test_lumina2_shaped_weights_match_reference_without_clip():
    params = tiny_params(clip_dim=None)
    assert not any(k.startswith(("clip_text_pooled_proj", "time_text_embed")) for k in NextDiT(params).state_dict())
    err, _, _ = _parity(params, [7, 3], (4, 8))
    assert err <= 1e-5, err


def test_guidance_embedder_matches_reference_and_changes_output():
    params = with_guidance(tiny_params())
    g = torch.tensor([4.0, 7.5])
    err, with_g, _ = _parity(params, [4, 9], (6, 6), guidance=g)
    assert err <= 1e-5, err
    without_g = random_dit(params)(**random_inputs(params, [4, 9], (6, 6), seed=1))
    assert _rel(with_g, without_g) > 1e-3


def test_guidance_embedder_is_zero_initialised_and_then_a_no_op():
    params = with_guidance(tiny_params())
    fresh = NextDiT(params)
    assert torch.count_nonzero(fresh.guidance_embedder.mlp[2].weight) == 0
    assert torch.count_nonzero(fresh.guidance_embedder.mlp[2].bias) == 0
    sd = official_state_dict(params)
    sd["guidance_embedder.mlp.2.weight"].zero_()
    sd["guidance_embedder.mlp.2.bias"].zero_()
    fresh.load_state_dict(sd)
    plain = random_dit(tiny_params())                 # same seed: identical weights except the embedder
    inputs = random_inputs(params, [4, 9], (4, 4))
    torch.testing.assert_close(fresh(**inputs, guidance=torch.tensor([3.0, 9.0])), plain(**inputs),
                               rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Packing: batched == unbatched, padding never matters
# ----------------------------------------------------------------------------------------------

def _single(inputs, i):
    n = int(inputs["cap_mask"][i].sum())
    out = {k: (v[i:i + 1] if v is not None else None) for k, v in inputs.items()}
    out["cap_feats"], out["cap_mask"] = out["cap_feats"][:, :n], out["cap_mask"][:, :n]
    return out


def test_each_sample_of_a_batch_equals_its_own_unbatched_forward():
    params = tiny_params()
    model = random_dit(params, seed=3)
    inputs = random_inputs(params, [3, 12, 7], (6, 4), seed=4, pad_to=15)
    batched = model(**inputs)
    for i in range(3):
        assert _rel(batched[i:i + 1], model(**_single(inputs, i))) <= 1e-5


def test_equal_caption_lengths_take_the_batched_attention_path_and_agree():
    params = tiny_params()
    model = random_dit(params, seed=5)
    inputs = random_inputs(params, [6, 6], (4, 4), seed=6)
    batched = model(**inputs)
    for i in range(2):
        assert _rel(batched[i:i + 1], model(**_single(inputs, i))) <= 1e-5


def test_left_padded_caption_mask_is_rejected():
    params = tiny_params()
    inputs = random_inputs(params, [3, 5], (4, 4))
    inputs["cap_mask"] = inputs["cap_mask"].flip(1)
    with pytest.raises(ValueError, match="padding only at the end"):
        random_dit(params)(**inputs)


@pytest.mark.parametrize("bad, match", [
    (dict(x=torch.zeros(2, 4, 4, 4)), r"x must be \(B, 16"),
    (dict(t=torch.zeros(3)), r"t must be \(B,\)"),
    (dict(cap_feats=torch.zeros(2, 5, 7)), "cap_dim=40"),
])
def test_bad_input_shapes_raise_clear_errors(bad, match):
    params = tiny_params()
    inputs = {**random_inputs(params, [3, 5], (4, 4)), **bad}
    with pytest.raises(ValueError, match=match):
        random_dit(params)(**inputs)


def test_a_latent_of_odd_size_is_padded_around_and_cropped_back_as_core_does():
    # Core's Lumina model pads the bottom and right to the patch size with wrapped-around rows and
    # columns (common_dit.pad_to_patch_size, circular) and crops its output back.
    params = tiny_params()
    model = random_dit(params)
    inputs = random_inputs(params, [3, 5], (5, 3))
    x = inputs.pop("x")
    wrapped = torch.cat([x, x[:, :, :1]], dim=2)
    wrapped = torch.cat([wrapped, wrapped[:, :, :, :1]], dim=3)        # (6, 4): the by-hand padding
    out = model(x, **inputs)
    assert out.shape == x.shape
    assert torch.equal(out, model(wrapped, **inputs)[:, :, :5, :3])


# ----------------------------------------------------------------------------------------------
# Formulas against hand-computed values
# ----------------------------------------------------------------------------------------------

def test_rope_positions_and_angles_match_hand_computed_values():
    # axes (4, 4, 4), theta 10000: per axis frequencies 1 and 10000^(-2/4) = 0.01.
    layout = TokenLayout.build([3, 1], rows=2, cols=3, axes_dims=(4, 4, 4), theta=10000.0,
                               device=torch.device("cpu"))
    angles = torch.atan2(layout.sin, layout.cos)
    # sample 0, caption token 2 -> position (2, 0, 0): joint row 2
    torch.testing.assert_close(angles[2], torch.tensor([2.0, 0.02, 0, 0, 0, 0]))
    # sample 0, patch (1, 2) -> position (3, 1, 2): joint row 3 + 1*3 + 2 = 8
    torch.testing.assert_close(angles[8], torch.tensor([3.0, 0.03, 1.0, 0.01, 2.0, 0.02]))
    # sample 1 starts at row 3 + 6 = 9; its patch (0, 1) -> position (1, 0, 1): row 9 + 1 + 1 = 11
    torch.testing.assert_close(angles[11], torch.tensor([1.0, 0.01, 0, 0, 1.0, 0.01]))
    assert layout.cap_index.tolist() == [0, 1, 2, 9]
    assert layout.img_index.tolist() == list(range(3, 9)) + list(range(10, 16))


def test_rope_rotates_adjacent_pairs():
    x = torch.tensor([[[1.0, 0.0, 0.0, 2.0]]])                   # (T=1, H=1, D=4): pairs (1,0), (0,2)
    a, b = 0.3, 1.1
    out = apply_rope(x, torch.cos(torch.tensor([[a, b]])), torch.sin(torch.tensor([[a, b]])))
    expected = [math.cos(a), math.sin(a), -2 * math.sin(b), 2 * math.cos(b)]
    torch.testing.assert_close(out[0, 0], torch.tensor(expected))


def test_time_sinusoid_is_cos_then_sin_of_unscaled_time():
    emb = timestep_embedding(torch.tensor([0.5]), 8)               # freqs 10000^(-i/4) = 1, .1, .01, .001
    args = [0.5, 0.05, 0.005, 0.0005]
    expected = [math.cos(v) for v in args] + [math.sin(v) for v in args]
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.tensor(expected))


# ----------------------------------------------------------------------------------------------
# Construction and dtypes
# ----------------------------------------------------------------------------------------------

def test_module_keys_are_exactly_the_official_keys_and_meta_construction_loads_with_assign():
    params = with_guidance(tiny_params())
    sd = official_state_dict(params)
    with torch.device("meta"):
        model = NextDiT(params)
    assert set(model.state_dict()) == set(sd)
    model.load_state_dict(sd, assign=True)
    assert model.device == torch.device("cpu")
    assert all(isinstance(m, torch.nn.Linear) for n, m in model.named_modules() if n.endswith((".qkv", ".w1")))


def test_bf16_compute_returns_float32_close_to_fp32():
    params = tiny_params()
    inputs = random_inputs(params, [5, 8], (4, 4))
    ref = random_dit(params)(**inputs)
    model = random_dit(params).to(torch.bfloat16)
    model.compute_dtype = torch.bfloat16
    out = model(**{k: (v.half() if v is not None and v.is_floating_point() else v) for k, v in inputs.items()})
    assert out.dtype == torch.float32
    assert _rel(out, ref) < 0.05


# ----------------------------------------------------------------------------------------------
# Third-party reference: diffusers' Lumina2Transformer2DModel (Lumina-2 shape, no clip path)
# ----------------------------------------------------------------------------------------------

def _diffusers_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename diffusers Lumina2 keys to the official layout (docs/newbie-image.md §4, read backwards)."""
    renames = [
        ("time_caption_embed.timestep_embedder.linear_1", "t_embedder.mlp.0"),
        ("time_caption_embed.timestep_embedder.linear_2", "t_embedder.mlp.2"),
        ("time_caption_embed.caption_embedder", "cap_embedder"),
        ("attn.to_out.0", "attention.out"), ("attn.norm_q", "attention.q_norm"), ("attn.norm_k", "attention.k_norm"),
        ("feed_forward.linear_1", "feed_forward.w1"), ("feed_forward.linear_2", "feed_forward.w2"),
        ("feed_forward.linear_3", "feed_forward.w3"),
        ("norm1.linear", "adaLN_modulation.1"), ("norm1.norm", "attention_norm1"), ("norm1", "attention_norm1"),
        ("norm2", "attention_norm2"),
        ("norm_out.linear_1", "final_layer.adaLN_modulation.1"), ("norm_out.linear_2", "final_layer.linear"),
    ]
    out = {}
    for key, value in sd.items():
        if ".attn.to_q." in key:
            prefix = key.split(".attn.to_q.")[0]
            out[f"{prefix}.attention.qkv.weight"] = torch.cat(
                [value, sd[f"{prefix}.attn.to_k.weight"], sd[f"{prefix}.attn.to_v.weight"]])
            continue
        if ".attn.to_k." in key or ".attn.to_v." in key:
            continue
        dotted = "." + key
        for old, new in renames:
            if f".{old}." in dotted:
                dotted = dotted.replace(f".{old}.", f".{new}.")
                break
        out[dotted[1:]] = value
    return out


def test_lumina2_matches_diffusers_lumina2_transformer():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, hidden_size=48, num_layers=2, num_refiner_layers=2,
        num_attention_heads=4, num_kv_heads=2, multiple_of=16, norm_eps=1e-5, axes_dim_rope=(4, 4, 4),
        axes_lens=(64, 32, 32), cap_feat_dim=40).eval()
    gen = torch.Generator().manual_seed(1)
    randomised = {}
    for key, value in ref.state_dict().items():        # every weight non-trivial (no zero-init gates)
        if value.ndim == 1 and "norm" in key and "linear" not in key:
            randomised[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif value.ndim == 2:
            randomised[key] = torch.randn(value.shape, generator=gen) / value.shape[1] ** 0.5
        else:
            randomised[key] = 0.1 * torch.randn(value.shape, generator=gen)
    ref.load_state_dict(randomised)
    official = _diffusers_to_official(randomised)
    ffn_dim = official["layers.0.feed_forward.w1.weight"].shape[0]
    params = tiny_params(clip_dim=None, ffn_dim=ffn_dim)
    model = dit_from_state_dict(params, official)

    inputs = random_inputs(params, [5, 11], (6, 10), seed=2)
    with torch.no_grad():
        expected = ref(inputs["x"], inputs["t"], inputs["cap_feats"], inputs["cap_mask"], return_dict=False)[0]
    assert _rel(model(**inputs), expected) <= 1e-5


def test_integer_caption_mask_as_comfyui_stores_it_gives_the_same_result():
    params = tiny_params()
    model = random_dit(params)
    inputs = random_inputs(params, [3, 6], (4, 4))
    as_int = {**inputs, "cap_mask": inputs["cap_mask"].long()}
    torch.testing.assert_close(model(**as_int), model(**inputs), rtol=0, atol=0)


def test_inputs_created_under_inference_mode_run_and_match():
    params = tiny_params()
    model = random_dit(params)
    inputs = random_inputs(params, [3, 6], (4, 4))
    expected = model(**inputs)
    with torch.inference_mode():
        fresh = {k: (v.clone() if v is not None else None) for k, v in inputs.items()}
        torch.testing.assert_close(model(**fresh), expected, rtol=0, atol=0)
        torch.testing.assert_close(model(**fresh), expected, rtol=0, atol=0)
