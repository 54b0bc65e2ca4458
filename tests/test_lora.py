"""LoRA loading (issue 9): every trainer's format, stacking, strength, base model untouched.

Each format test writes a LoRA file by hand in that format's own key names and alpha convention
from known random factors, computes ΔW per target by hand here (scale · B @ A, or the Kronecker
product for LoKr, with the format's documented alpha rule), and compares the patched model's
forward with a deep copy of the base whose weights the test edits to W + strength·ΔW.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from factories import random_dit, random_inputs, tiny_params
from safetensors.torch import save_file

from nextdit_nodes.loaders import WeightsError
from nextdit_nodes.lora.apply import load_lora, merged_state_dict

TOL = 1e-5   # relative to the output's magnitude (outputs are O(1-10); fp32 rounding ~1e-6)


# ---- helpers ---------------------------------------------------------------------------------

def factors(gen: torch.Generator, out_features: int, in_features: int, rank: int):
    """Random (down A [r, in], up B [out, r]) large enough that B @ A changes the output clearly."""
    down = torch.randn(rank, in_features, generator=gen) / in_features ** 0.5
    up = torch.randn(out_features, rank, generator=gen) / rank ** 0.5
    return down, up


def merged_model(base, deltas: dict[str, torch.Tensor], strength: float = 1.0):
    """A deep copy of ``base`` with each module's weight edited by hand to W + strength·ΔW."""
    merged = copy.deepcopy(base)
    with torch.no_grad():
        for path, delta in deltas.items():
            merged.get_submodule(path).weight.add_(strength * delta)
    return merged


def add(*delta_dicts: dict[str, torch.Tensor], weights=None) -> dict[str, torch.Tensor]:
    """Sum of several {module: ΔW} dicts, each multiplied by its weight."""
    total: dict[str, torch.Tensor] = {}
    for w, deltas in zip(weights or [1.0] * len(delta_dicts), delta_dicts):
        for path, delta in deltas.items():
            total[path] = total.get(path, 0) + w * delta
    return total


def assert_matches_merged(patched, base, deltas, strength, inputs):
    reference = merged_model(base, deltas, strength)(**inputs)
    out = patched(**inputs)
    # The LoRA must matter, or the comparison would prove nothing.
    assert (reference - base(**inputs)).abs().max() > 1e-2
    assert close(out, reference)


def close(out, reference) -> bool:
    return bool((out - reference).abs().max() <= TOL * max(1.0, reference.abs().max().item()))


@pytest.fixture(scope="module")
def params():
    return tiny_params()


@pytest.fixture(scope="module")
def base(params):
    return random_dit(params, seed=3)


@pytest.fixture(scope="module")
def inputs(params):
    return random_inputs(params, [5, 3], latent_hw=(4, 6), seed=1)


@pytest.fixture(scope="module", autouse=True)
def base_untouched(base, inputs):
    """After every test of this file the shared base model still has its exact weights and output."""
    saved = {k: v.clone() for k, v in base.state_dict().items()}
    saved_out = base(**inputs)
    yield
    now = base.state_dict()
    assert list(now) == list(saved)
    assert all(torch.equal(now[k], saved[k]) for k in saved)
    assert torch.equal(base(**inputs), saved_out)
    assert not any(base.get_submodule(p)._forward_hooks for p, _ in base.named_modules())


def shape_of(model, path):
    return tuple(model.get_submodule(path).weight.shape)


BLOCK_TARGETS = ["layers.0.attention.qkv", "layers.1.attention.out", "layers.1.feed_forward.w1",
                 "layers.0.feed_forward.w2", "layers.1.feed_forward.w3", "layers.0.adaLN_modulation.1",
                 "noise_refiner.1.attention.qkv", "context_refiner.0.feed_forward.w2"]
EMBEDDER_TARGETS = ["x_embedder", "t_embedder.mlp.0", "t_embedder.mlp.2", "cap_embedder.1",
                    "clip_text_pooled_proj.1", "time_text_embed.1", "final_layer.linear",
                    "final_layer.adaLN_modulation.1"]


# ---- kohya / sd-scripts ------------------------------------------------------------------------

def write_kohya(path, model, targets, rank=4, alpha=2.0, seed=0):
    """lora_unet_<path with underscores>.lora_down/.lora_up/.alpha; ΔW = alpha/rank · up @ down."""
    gen = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for target in targets:
        down, up = factors(gen, *shape_of(model, target), rank)
        name = "lora_unet_" + target.replace(".", "_")
        tensors[f"{name}.lora_down.weight"] = down
        tensors[f"{name}.lora_up.weight"] = up
        tensors[f"{name}.alpha"] = torch.tensor(alpha)
        deltas[target] = (alpha / rank) * up @ down
    save_file(tensors, str(path))
    return deltas


def test_kohya_blocks_and_embedders(tmp_path, base, inputs):
    deltas = write_kohya(tmp_path / "kohya.safetensors", base, BLOCK_TARGETS + EMBEDDER_TARGETS)
    patched, report = load_lora(base, tmp_path / "kohya.safetensors", 0.8)
    assert_matches_merged(patched, base, deltas, 0.8, inputs)
    assert report.n_applied == len(deltas) and report.n_not_applied == 0
    assert "kohya" in report.format and ".alpha" in report.alpha_source
    # With autograd on (the output needs a gradient) the delta is added out of place: same result.
    with torch.enable_grad():
        x = inputs["x"].clone().requires_grad_(True)
        out = patched(**{**inputs, "x": x})
        out.square().sum().backward()
    assert close(out.detach(), merged_model(base, deltas, 0.8)(**inputs)) and x.grad.abs().sum() > 0


# ---- NewbieLoraTrainer PEFT ------------------------------------------------------------------

NEWBIE_TARGETS = [f"layers.{i}.{leaf}" for i in range(2) for leaf in ("attention.qkv", "attention.out",
                                                                      "feed_forward.w2")] + \
                 ["time_text_embed.1", "clip_text_pooled_proj.1"]


def write_peft(folder, model, targets, rank, alpha_for_delta, config=None, metadata=None, seed=1):
    """PEFT save_pretrained layout: adapter_model.safetensors with base_model.model.<path>.lora_A/B,
    no alpha tensor; ΔW = lora_alpha / r · B @ A with the alpha the test says applies."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for target in targets:
        down, up = factors(gen, *shape_of(model, target), rank)
        tensors[f"base_model.model.{target}.lora_A.weight"] = down
        tensors[f"base_model.model.{target}.lora_B.weight"] = up
        deltas[target] = (alpha_for_delta / rank) * up @ down
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata=metadata)
    if config is not None:
        (folder / "adapter_config.json").write_text(json.dumps(config))
    return deltas


def test_newbie_peft_alpha_from_adapter_config(tmp_path, base, inputs):
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["attention.qkv"]}
    deltas = write_peft(tmp_path / "run", base, NEWBIE_TARGETS, 8, 16.0, config=config)
    # The folder itself and the file inside it both load, with the config's alpha (scale 2).
    for path in (tmp_path / "run", tmp_path / "run" / "adapter_model.safetensors"):
        patched, report = load_lora(base, path, 1.0)
        assert_matches_merged(patched, base, deltas, 1.0, inputs)
        assert "adapter_config.json" in report.alpha_source
        assert "PEFT" in report.format


def test_newbie_peft_alpha_from_metadata(tmp_path, base, inputs):
    deltas = write_peft(tmp_path / "m", base, NEWBIE_TARGETS, 4, 2.0, metadata={"lora_alpha": "2"})
    patched, report = load_lora(base, tmp_path / "m" / "adapter_model.safetensors", 1.5)
    assert_matches_merged(patched, base, deltas, 1.5, inputs)
    assert "metadata" in report.alpha_source


def test_newbie_peft_trainer_default_alpha(tmp_path, base, inputs):
    # No config, no metadata: the trainer's lora.toml defaults r=8, lora_alpha=4 (scale 0.5).
    deltas = write_peft(tmp_path / "d", base, NEWBIE_TARGETS, 8, 4.0)
    patched, report = load_lora(base, tmp_path / "d" / "adapter_model.safetensors", 1.0)
    assert_matches_merged(patched, base, deltas, 1.0, inputs)
    assert "NewbieLoraTrainer defaults" in report.alpha_source


def test_adapter_config_of_another_rank_is_ignored(tmp_path, base, inputs):
    config = {"peft_type": "LORA", "r": 16, "lora_alpha": 64}
    deltas = write_peft(tmp_path / "x", base, NEWBIE_TARGETS[:2], 4, 4.0, config=config)  # alpha = rank
    patched, report = load_lora(base, tmp_path / "x" / "adapter_model.safetensors", 1.0)
    assert_matches_merged(patched, base, deltas, 1.0, inputs)
    assert "NewbieLoraTrainer defaults" in report.alpha_source and "r=16" in report.alpha_source
    assert "ignored" in report.alpha_source


# ---- NewbieLoraTrainer LoKr (LyCORIS) ----------------------------------------------------------

# (target, (a, c) of w1; w2 is then (out/a, in/c)) for the tiny model's shapes.
LOKR_SPLITS = {"layers.0.attention.qkv": (8, 6),       # 96x48
               "layers.1.attention.out": (4, 4),        # 48x48
               "layers.0.feed_forward.w2": (6, 8),      # 48x80
               "time_text_embed.1": (4, 8)}             # 32x64


def write_lokr(path, model, mode: str, alpha: float, rank: int = 2, seed=2, metadata=None):
    """lycoris_<path>.lokr_w1/.lokr_w2 (or _a/_b factors) + .alpha.

    LyCORIS convention: ΔW = kron(w1, w2) · alpha / rank, rank = the factor's inner size, and
    scale 1 when both w1 and w2 are full matrices (alpha is then ignored).
    """
    gen = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for target, (a, c) in LOKR_SPLITS.items():
        out_features, in_features = shape_of(model, target)
        b, d = out_features // a, in_features // c
        name = "lycoris_" + target.replace(".", "_")
        scale = alpha / rank
        if mode == "w1_a" or mode == "both":
            w1a, w1b = torch.randn(a, rank, generator=gen), torch.randn(rank, c, generator=gen)
            tensors.update({f"{name}.lokr_w1_a": w1a, f"{name}.lokr_w1_b": w1b})
            w1 = w1a @ w1b
        else:
            w1 = torch.randn(a, c, generator=gen)
            tensors[f"{name}.lokr_w1"] = w1
        if mode in ("w2_a", "both"):
            w2a = torch.randn(b, rank, generator=gen) / rank ** 0.5
            w2b = torch.randn(rank, d, generator=gen) / in_features ** 0.5
            tensors.update({f"{name}.lokr_w2_a": w2a, f"{name}.lokr_w2_b": w2b})
            w2 = w2a @ w2b
        else:
            w2 = torch.randn(b, d, generator=gen) / in_features ** 0.5
            tensors[f"{name}.lokr_w2"] = w2
            if mode == "full":
                scale = 1.0
        if alpha is not None:
            tensors[f"{name}.alpha"] = torch.tensor(alpha)
        deltas[target] = scale * torch.kron(w1, w2)
    save_file(tensors, str(path), metadata=metadata)
    return deltas


@pytest.mark.parametrize("mode, alpha", [("full", 114514.0), ("w2_a", 1.0), ("w1_a", 3.0), ("both", 2.0)])
def test_lokr(tmp_path, base, inputs, mode, alpha):
    meta = {"adapter_type": "lyco_lokr", "lora_rank": "114514", "lora_alpha": "114514"}
    deltas = write_lokr(tmp_path / "lokr.safetensors", base, mode, alpha, metadata=meta)
    patched, report = load_lora(base, tmp_path / "lokr.safetensors", 0.6)
    assert_matches_merged(patched, base, deltas, 0.6, inputs)
    assert "LyCORIS" in report.format and report.n_applied == len(LOKR_SPLITS)


def test_lokr_alpha_from_metadata_without_alpha_tensors(tmp_path, base, inputs):
    # A factorised LoKr without per-module alpha: the file's metadata lora_alpha applies.
    deltas = write_lokr(tmp_path / "lokr.safetensors", base, "w2_a", 4.0, rank=2)
    from safetensors.torch import load_file
    tensors = {k: v for k, v in load_file(str(tmp_path / "lokr.safetensors")).items() if not k.endswith(".alpha")}
    save_file(tensors, str(tmp_path / "no_alpha.safetensors"), metadata={"lora_alpha": "4", "lora_rank": "2"})
    patched, _ = load_lora(base, tmp_path / "no_alpha.safetensors", 1.0)
    assert_matches_merged(patched, base, deltas, 1.0, inputs)


# ---- diffusers / PEFT Lumina-2 names -----------------------------------------------------------

def diffusers_names(p):
    """Official module -> list of (diffusers name, row slice of the official weight), by hand
    from docs/newbie-image.md §9 (qkv rows [q: n_heads·hd, k: kv·hd, v: kv·hd])."""
    hd = p.head_dim
    q, kv = p.n_heads * hd, p.n_kv_heads * hd
    names = {}
    for block in ("layers.0", "layers.1", "noise_refiner.0", "context_refiner.1"):
        names[f"{block}.attention.qkv"] = [(f"{block}.attn.to_q", slice(0, q)),
                                           (f"{block}.attn.to_k", slice(q, q + kv)),
                                           (f"{block}.attn.to_v", slice(q + kv, q + 2 * kv))]
        names[f"{block}.attention.out"] = [(f"{block}.attn.to_out.0", slice(None))]
        for i in (1, 2, 3):
            names[f"{block}.feed_forward.w{i}"] = [(f"{block}.feed_forward.linear_{i}", slice(None))]
    names["layers.1.adaLN_modulation.1"] = [("layers.1.norm1.linear", slice(None))]
    names["cap_embedder.1"] = [("time_caption_embed.caption_embedder.1", slice(None))]
    names["t_embedder.mlp.2"] = [("time_caption_embed.timestep_embedder.linear_2", slice(None))]
    names["final_layer.linear"] = [("norm_out.linear_2", slice(None))]
    names["final_layer.adaLN_modulation.1"] = [("norm_out.linear_1", slice(None))]
    return names


def write_diffusers(path, model, p, rank=3, seed=4, only=None, prefix="transformer."):
    gen = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for target, parts in diffusers_names(p).items():
        weight_shape = shape_of(model, target)
        delta = torch.zeros(weight_shape)
        for name, rows in parts:
            if only is not None and not name.endswith(only):
                continue
            out_features = delta[rows].shape[0]
            down, up = factors(gen, out_features, weight_shape[1], rank)
            tensors[f"{prefix}{name}.lora_A.weight"] = down
            tensors[f"{prefix}{name}.lora_B.weight"] = up
            delta[rows] += up @ down          # no alpha in the file: alpha = rank, scale 1
        if delta.abs().sum() > 0:
            deltas[target] = delta
    save_file(tensors, str(path))
    return deltas


def test_diffusers_lumina2_names(tmp_path, params, base, inputs):
    deltas = write_diffusers(tmp_path / "d.safetensors", base, params)
    patched, report = load_lora(base, tmp_path / "d.safetensors", 1.2)
    assert_matches_merged(patched, base, deltas, 1.2, inputs)
    assert report.n_not_applied == 0 and "diffusers" in report.format


def test_diffusers_qkv_rows_on_gqa_config(tmp_path):
    # 6 query heads, 2 kv heads of 12: qkv rows are q 0:72, k 72:96, v 96:120.
    p = tiny_params(dim=72, n_heads=6, n_kv_heads=2)
    model = random_dit(p, seed=5)
    inputs = random_inputs(p, [4], latent_hw=(4, 4), seed=2)
    for only in ("to_k", "to_v", "to_q"):
        deltas = write_diffusers(tmp_path / f"{only}.safetensors", model, p, only=only)
        rows = {"to_q": slice(0, 72), "to_k": slice(72, 96), "to_v": slice(96, 120)}[only]
        qkv = deltas["layers.0.attention.qkv"]
        assert qkv[rows].abs().sum() > 0 and qkv.abs().sum() == qkv[rows].abs().sum()
        patched, _ = load_lora(model, tmp_path / f"{only}.safetensors", 1.0)
        assert_matches_merged(patched, model, deltas, 1.0, inputs)


def test_lokr_on_a_diffusers_qkv_slice(tmp_path, params, base, inputs):
    # LyCORIS names built from diffusers modules: `attn.to_k` is rows 48:72 of the fused qkv here.
    gen = torch.Generator().manual_seed(16)
    w1, w2 = torch.randn(4, 6, generator=gen), torch.randn(6, 8, generator=gen) / 48 ** 0.5   # kron: 24x48
    save_file({"lycoris_layers_1_attn_to_k.lokr_w1": w1, "lycoris_layers_1_attn_to_k.lokr_w2": w2,
               "lycoris_layers_1_attn_to_k.alpha": torch.tensor(1.0)}, str(tmp_path / "k.safetensors"))
    qkv = torch.zeros(shape_of(base, "layers.1.attention.qkv"))
    qkv[48:72] = torch.kron(w1, w2)      # both factors full: scale 1
    patched, report = load_lora(base, tmp_path / "k.safetensors", 1.0)
    assert report.lines == ["layers.1.attention.qkv[48:72]: applied"]
    assert_matches_merged(patched, base, {"layers.1.attention.qkv": qkv}, 1.0, inputs)


# ---- ComfyUI diffusion_model.* and bare (DiffSynth) ---------------------------------------------

def write_dotted(path, model, targets, prefix, rank=4, alpha=None, seed=6):
    gen = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for target in targets:
        down, up = factors(gen, *shape_of(model, target), rank)
        tensors[f"{prefix}{target}.lora_A.weight"] = down
        tensors[f"{prefix}{target}.lora_B.weight"] = up
        if alpha is not None:
            tensors[f"{prefix}{target}.alpha"] = torch.tensor(alpha)
        deltas[target] = ((alpha if alpha is not None else rank) / rank) * up @ down
    save_file(tensors, str(path))
    return deltas


def test_comfyui_diffusion_model_prefix_with_alpha(tmp_path, base, inputs):
    deltas = write_dotted(tmp_path / "c.safetensors", base, BLOCK_TARGETS + EMBEDDER_TARGETS,
                          "diffusion_model.", alpha=1.0)
    patched, report = load_lora(base, tmp_path / "c.safetensors", -0.7)
    assert_matches_merged(patched, base, deltas, -0.7, inputs)
    assert "ComfyUI" in report.format


def test_bare_module_paths_diffsynth(tmp_path, base, inputs):
    deltas = write_dotted(tmp_path / "b.safetensors", base, BLOCK_TARGETS, "")
    patched, _ = load_lora(base, tmp_path / "b.safetensors", 1.0)
    assert_matches_merged(patched, base, deltas, 1.0, inputs)


# ---- stacking, strength 0, the base untouched ------------------------------------------------

def test_two_loras_stack_and_first_result_is_unchanged(tmp_path, base, inputs):
    first = write_kohya(tmp_path / "a.safetensors", base, BLOCK_TARGETS, seed=10)
    second = write_dotted(tmp_path / "b.safetensors", base, BLOCK_TARGETS[:4] + EMBEDDER_TARGETS[:2],
                          "diffusion_model.", alpha=2.0, seed=11)
    with_a, _ = load_lora(base, tmp_path / "a.safetensors", 0.9)
    out_a = with_a(**inputs)
    with_ab, _ = load_lora(with_a, tmp_path / "b.safetensors", -1.3)
    both = add(first, second, weights=[0.9, -1.3])
    assert close(with_ab(**inputs), merged_model(base, both)(**inputs))
    assert torch.equal(with_a(**inputs), out_a)      # applying B did not change A's model


def test_strength_zero_is_the_base_exactly(tmp_path, base, inputs):
    write_kohya(tmp_path / "k.safetensors", base, BLOCK_TARGETS)
    patched, report = load_lora(base, tmp_path / "k.safetensors", 0.0)
    assert torch.equal(patched(**inputs), base(**inputs))
    assert "unchanged" in report.text


def test_patched_model_shares_base_tensors_and_keys(tmp_path, base):
    write_kohya(tmp_path / "k.safetensors", base, BLOCK_TARGETS)
    patched, _ = load_lora(base, tmp_path / "k.safetensors", 1.0)
    assert patched is not base
    base_sd, patched_sd = base.state_dict(), patched.state_dict()
    assert list(base_sd) == list(patched_sd)
    # No weight was copied: every parameter is the very same tensor.
    assert all(patched_sd[k].data_ptr() == base_sd[k].data_ptr() for k in base_sd)
    assert patched.compute_dtype == base.compute_dtype and patched.params == base.params
    # The only new memory is the LoRA's own factors (fp32 here, as in the file).
    from safetensors.torch import load_file
    lora_bytes = sum(t.numel() * 4 for k, t in load_file(str(tmp_path / "k.safetensors")).items()
                     if not k.endswith(".alpha"))
    extra = sum(b.numel() * b.element_size() for name, b in patched.named_buffers()
                if name.rsplit(".", 1)[-1].startswith("lora"))
    assert extra == lora_bytes


def test_merged_state_dict_holds_the_lora(tmp_path, params, base, inputs):
    first = write_kohya(tmp_path / "a.safetensors", base, BLOCK_TARGETS + EMBEDDER_TARGETS, seed=17)
    second = write_lokr(tmp_path / "b.safetensors", base, "w2_a", 2.0, seed=18)
    patched, _ = load_lora(base, tmp_path / "a.safetensors", 0.5)
    patched, _ = load_lora(patched, tmp_path / "b.safetensors", 2.0)
    expected = merged_model(base, add(first, second, weights=[0.5, 2.0])).state_dict()
    merged = merged_state_dict(patched)
    assert list(merged) == list(expected)
    assert all(torch.allclose(merged[k], expected[k], atol=1e-5) for k in expected)
    assert merged_state_dict(base).keys() == base.state_dict().keys()


def test_lora_inside_compiled_blocks(tmp_path, base, inputs):
    """compile_blocks on a LoRA'd copy: the Linear hooks are traced into the compiled block forward,
    the result is unchanged, and the base model's blocks stay uncompiled."""
    from nextdit_nodes.dit.compile import compile_blocks, is_compiled

    deltas = write_kohya(tmp_path / "k.safetensors", base, BLOCK_TARGETS, seed=22)
    patched, _ = load_lora(base, tmp_path / "k.safetensors", 1.0)
    compile_blocks(patched, backend="eager")
    assert is_compiled(patched) and not is_compiled(base)
    assert_matches_merged(patched, base, deltas, 1.0, inputs)


def test_bf16_model(tmp_path, params, inputs):
    model = random_dit(params, seed=7)
    deltas = write_kohya(tmp_path / "k.safetensors", model, BLOCK_TARGETS + EMBEDDER_TARGETS)
    reference = merged_model(model, deltas, 1.0)(**inputs)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    bf16.compute_dtype = torch.bfloat16
    patched, _ = load_lora(bf16, tmp_path / "k.safetensors", 1.0)
    out = patched(**inputs)
    assert out.dtype == torch.float32
    assert (out - reference).abs().max() / reference.abs().max() < 0.05
    # ... and it really is the LoRA'd model, not the bf16 base.
    assert (bf16(**inputs) - reference).abs().max() > 5 * (out - reference).abs().max()


def test_fp8_model_from_load_dit(tmp_path, params, inputs):
    from factories import write_dit_checkpoint

    from nextdit_nodes.loaders import load_dit

    write_dit_checkpoint(tmp_path / "dit.safetensors", params, seed=12)
    fp32 = load_dit(tmp_path / "dit.safetensors", dtype="fp32")
    fp8 = load_dit(tmp_path / "dit.safetensors", dtype="fp8_e4m3fn")
    deltas = write_kohya(tmp_path / "k.safetensors", fp32, BLOCK_TARGETS + EMBEDDER_TARGETS)
    reference = merged_model(fp32, deltas, 1.0)(**inputs)
    patched, report = load_lora(fp8, tmp_path / "k.safetensors", 1.0)
    assert report.n_not_applied == 0
    out = patched(**inputs)
    fp8_error = (out - reference).abs().max()
    assert fp8_error / reference.abs().max() < 0.1
    assert (fp8(**inputs) - reference).abs().max() > 5 * fp8_error


def test_lycoris_full_diff_and_norm_deltas(tmp_path, base, inputs):
    """LyCORIS `full` (.diff/.diff_b, ΔW as is) and norm-layer (.w_norm/.b_norm, added) deltas."""
    gen = torch.Generator().manual_seed(13)
    diff = 0.2 * torch.randn(shape_of(base, "x_embedder"), generator=gen)
    diff_b = 0.2 * torch.randn(shape_of(base, "x_embedder")[0], generator=gen)
    w_norm = 0.3 * torch.randn(shape_of(base, "layers.0.attention_norm1"), generator=gen)
    out_diff = 0.1 * torch.randn(shape_of(base, "layers.1.attention.out"), generator=gen)
    save_file({"lycoris_x_embedder.diff": diff, "lycoris_x_embedder.diff_b": diff_b,
               "lycoris_layers_0_attention_norm1.w_norm": w_norm,
               "lycoris_layers_1_attention_out.diff": out_diff}, str(tmp_path / "full.safetensors"))
    patched, report = load_lora(base, tmp_path / "full.safetensors", 0.5)
    reference = merged_model(base, {"x_embedder": diff, "layers.0.attention_norm1": w_norm,
                                    "layers.1.attention.out": out_diff}, 0.5)
    with torch.no_grad():
        reference.x_embedder.bias.add_(0.5 * diff_b)
    assert report.n_applied == 3
    assert close(patched(**inputs), reference(**inputs))
    assert (reference(**inputs) - base(**inputs)).abs().max() > 1e-2


def test_peft_alpha_pattern_and_rslora(tmp_path, base, inputs):
    targets = ["layers.0.attention.qkv", "layers.1.attention.out"]
    config = {"r": 4, "lora_alpha": 4, "alpha_pattern": {"attention.out": 8}}
    qkv = write_peft(tmp_path / "p", base, targets[:1], 4, 4.0, config=config, seed=20)
    out = write_peft(tmp_path / "q", base, targets[1:], 4, 8.0, seed=21)
    tensors = {}
    for folder in ("p", "q"):
        from safetensors.torch import load_file
        tensors.update(load_file(str(tmp_path / folder / "adapter_model.safetensors")))
    (tmp_path / "both").mkdir()
    save_file(tensors, str(tmp_path / "both" / "adapter_model.safetensors"))
    (tmp_path / "both" / "adapter_config.json").write_text(json.dumps(config))
    patched, _ = load_lora(base, tmp_path / "both", 1.0)
    assert_matches_merged(patched, base, add(qkv, out), 1.0, inputs)
    # use_rslora: scale = alpha / sqrt(r) = 4 / 2.
    (tmp_path / "both" / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 4, "use_rslora": True}))
    patched, _ = load_lora(base, tmp_path / "both", 1.0)
    assert_matches_merged(patched, base, add(qkv, out, weights=[2.0, 1.0]), 1.0, inputs)


def test_sampling_with_a_lora_equals_sampling_the_merged_model(tmp_path, params, base):
    from nextdit_nodes.sampler_settings import SamplerSettings
    from nextdit_nodes.sampling.sample import sample

    deltas = write_kohya(tmp_path / "k.safetensors", base, BLOCK_TARGETS + EMBEDDER_TARGETS, seed=19)
    patched, _ = load_lora(base, tmp_path / "k.safetensors", 1.0)
    gen = torch.Generator().manual_seed(20)
    positive = [[torch.randn(1, 6, params.cap_dim, generator=gen),
                 {"pooled_output": torch.randn(1, params.clip_dim, generator=gen)}]]
    negative = [[torch.randn(1, 3, params.cap_dim, generator=gen),
                 {"pooled_output": torch.randn(1, params.clip_dim, generator=gen)}]]
    settings = dict(width=64, height=48, seed=7, steps=3, solver="euler", shift=3.0, cfg=4.0,
                    renorm_cfg=1.0, cfg_trunc=1.0)
    settings, size = SamplerSettings.take(settings)
    with_lora = sample(patched, positive, negative, settings, **size)["samples"]
    merged = sample(merged_model(base, deltas), positive, negative, settings, **size)["samples"]
    plain = sample(base, positive, negative, settings, **size)["samples"]
    assert close(with_lora, merged)
    assert (merged - plain).abs().max() > 1e-2


# ---- reports and refusals ----------------------------------------------------------------------

def test_report_groups_modules(tmp_path, inputs):
    # A NewBie LoRA for 4 layers on a 2-layer Lumina-2 shaped model (no clip path).
    lumina = random_dit(tiny_params(clip_dim=None), seed=8)
    newbie4 = random_dit(tiny_params(n_layers=4), seed=8)
    targets = [f"layers.{i}.attention.qkv" for i in range(4)] + ["cap_embedder.1", "clip_text_pooled_proj.1"]
    write_kohya(tmp_path / "k.safetensors", newbie4, targets)
    _, report = load_lora(lumina, tmp_path / "k.safetensors", 1.0)
    assert report.lines == ["cap_embedder.1: applied",
                            "layers.0-1.attention.qkv: applied",
                            "clip_text_pooled_proj.1: no such module in this model (NewBie's CLIP path; "
                            "this model has none: Lumina-2 shaped)",
                            "layers.2-3.attention.qkv: no such module in this model (this model has layers.0-1)"]
    assert (report.n_applied, report.n_not_applied) == (3, 3)


def test_shape_mismatch_is_reported(tmp_path, base):
    wide = random_dit(tiny_params(ffn_dim=96), seed=9)
    write_kohya(tmp_path / "w.safetensors", wide, ["layers.0.feed_forward.w1", "layers.1.attention.out"])
    _, report = load_lora(base, tmp_path / "w.safetensors", 1.0)
    assert report.lines == ["layers.1.attention.out: applied",
                            "layers.0.feed_forward.w1: shape mismatch: LoRA 96x48 vs model 80x48"]
    # Nothing fits at all: an error that names the file.
    write_kohya(tmp_path / "w2.safetensors", wide, ["layers.0.feed_forward.w1"])
    with pytest.raises(WeightsError, match="w2.safetensors.*no LoRA key applies"):
        load_lora(base, tmp_path / "w2.safetensors", 1.0)


def test_sdxl_lora_refused(tmp_path, base):
    tensors = {}
    for name in ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn1_to_q",
                 "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k",
                 "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"):
        tensors[f"{name}.lora_down.weight"] = torch.zeros(4, 64)
        tensors[f"{name}.lora_up.weight"] = torch.zeros(64, 4)
        tensors[f"{name}.alpha"] = torch.tensor(4.0)
    save_file(tensors, str(tmp_path / "sdxl_style.safetensors"))
    with pytest.raises(WeightsError, match="sdxl_style.safetensors.*SDXL"):
        load_lora(base, tmp_path / "sdxl_style.safetensors", 1.0)


@pytest.mark.parametrize("names", [
    ["double_blocks.0.img_attn.qkv", "single_blocks.3.linear1"],
    ["transformer.single_transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.0.attn.to_k"],
    ["lora_unet_double_blocks_0_img_attn_qkv"],
])
def test_flux_lora_refused(tmp_path, base, names):
    tensors = {}
    for name in names:
        tensors[f"{name}.lora_A.weight"] = torch.zeros(4, 48)
        tensors[f"{name}.lora_B.weight"] = torch.zeros(48, 4)
    save_file(tensors, str(tmp_path / "flux_style.safetensors"))
    with pytest.raises(WeightsError, match="flux_style.safetensors.*FLUX"):
        load_lora(base, tmp_path / "flux_style.safetensors", 1.0)


def test_flux_lora_with_a_fitting_stray_key_is_still_refused(tmp_path, base):
    # FLUX's diffusers names include `transformer.x_embedder`; sized to fit here, it must not
    # make the rest of a FLUX LoRA count as a Next-DiT one.
    tensors = {"transformer.x_embedder.lora_A.weight": torch.zeros(4, 64),
               "transformer.x_embedder.lora_B.weight": torch.zeros(48, 4)}
    for i in range(3):
        tensors[f"transformer.single_transformer_blocks.{i}.attn.to_q.lora_A.weight"] = torch.zeros(4, 48)
        tensors[f"transformer.single_transformer_blocks.{i}.attn.to_q.lora_B.weight"] = torch.zeros(48, 4)
    save_file(tensors, str(tmp_path / "flux_diffusers.safetensors"))
    with pytest.raises(WeightsError, match="flux_diffusers.safetensors.*FLUX"):
        load_lora(base, tmp_path / "flux_diffusers.safetensors", 1.0)


def test_text_encoder_keys_are_reported_not_applied(tmp_path, base, inputs):
    deltas = write_kohya(tmp_path / "k.safetensors", base, ["layers.0.attention.qkv"])
    from safetensors.torch import load_file
    tensors = load_file(str(tmp_path / "k.safetensors"))
    tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(4, 8)
    tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(8, 4)
    save_file(tensors, str(tmp_path / "te.safetensors"))
    patched, report = load_lora(base, tmp_path / "te.safetensors", 1.0)
    assert_matches_merged(patched, base, deltas, 1.0, inputs)
    assert any("text-encoder" in line for line in report.lines)


# ---- the node --------------------------------------------------------------------------------

def test_node_lists_resolves_and_applies(tmp_path, monkeypatch, base, inputs):
    from nextdit_nodes.nodes import NODE_CLASS_MAPPINGS

    (tmp_path / "loras").mkdir()
    deltas = write_kohya(tmp_path / "loras" / "style.safetensors", base, BLOCK_TARGETS)
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(tmp_path))
    node_class = NODE_CLASS_MAPPINGS["NextDiTLoraLoader"]
    inputs_spec = node_class.INPUT_TYPES()["required"]
    assert "style.safetensors" in inputs_spec["lora_name"][0]
    assert inputs_spec["strength"][1]["min"] == -10 and inputs_spec["strength"][1]["max"] == 10
    assert node_class.VALIDATE_INPUTS("style.safetensors") is True
    assert node_class.VALIDATE_INPUTS("missing.safetensors") is not True
    from nextdit_nodes.nodes import host

    shown = []
    previous = host.set_text_hook(shown.append)     # the node's text channel (serve: on the node)
    try:
        returned = getattr(node_class(), node_class.FUNCTION)(model=base, lora_name="style.safetensors",
                                                              strength=0.5, unique_id="3")
    finally:
        host.set_text_hook(previous)
    patched, core_model = returned["result"]
    assert core_model is None   # headless: no core MODEL
    assert "layers.0.attention.qkv: applied" in returned["ui"]["text"][0]
    assert shown == returned["ui"]["text"]
    assert_matches_merged(patched, base, deltas, 0.5, inputs)


# ---- a guidance-distilled student (training/distill.py) -------------------------------------

def test_distilled_student_loads_runs_and_takes_a_lora(tmp_path, params):
    from nextdit_nodes.loaders import load_dit
    from nextdit_nodes.training.distill import DistillConfig, distill, save_student

    teacher = random_dit(params, seed=14)
    gen = torch.Generator().manual_seed(15)

    def conditioning(length):
        return [[torch.randn(1, length, params.cap_dim, generator=gen),
                 {"pooled_output": torch.randn(1, params.clip_dim, generator=gen)}]]

    config = DistillConfig(mode="lora", rank=4, iterations=3, batch_size=1, lr=1e-2, width=64, height=64,
                           trajectory_steps=2)
    student = distill(teacher, [conditioning(5)], conditioning(2), config, progress=False)
    path = save_student(student, tmp_path / "student.safetensors")

    loaded = load_dit(path)
    assert loaded.params.guidance_embed
    inputs = {**random_inputs(params, [4], latent_hw=(4, 4), seed=3), "guidance": torch.tensor([4.0])}
    with torch.no_grad():
        expected = student.model(**inputs)
    assert close(loaded(**inputs), expected)
    # The trained adapters were merged in: the student differs from its teacher.
    assert (expected - teacher(**{k: v for k, v in inputs.items() if k != "guidance"})).abs().max() > 1e-4

    targets = BLOCK_TARGETS + ["guidance_embedder.mlp.0", "guidance_embedder.mlp.2"]
    deltas = write_kohya(tmp_path / "k.safetensors", loaded, targets)
    patched, report = load_lora(loaded, tmp_path / "k.safetensors", 0.5)
    assert report.n_not_applied == 0
    assert_matches_merged(patched, loaded, deltas, 0.5, inputs)
