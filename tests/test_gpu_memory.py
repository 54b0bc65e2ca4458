"""GPU/memory policy on the CPU: the fp16-safe path, block offloading, the `auto` dtype policy,
torch.compile wiring, and the host's model placement (headless and under ComfyUI's manager)."""

from __future__ import annotations

import torch
import pytest

from factories import dit_from_state_dict, official_state_dict, random_dit, random_inputs, tiny_params
from nextdit_nodes.dit import offload
from nextdit_nodes.dit.model import repeated_blocks
from nextdit_nodes.dit.precision import make_fp16_safe, row_scale


def _forward(model, inputs):
    with torch.no_grad():
        return model(**inputs)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


# ---- fp16-safe path ---------------------------------------------------------------------------

def _overflowing_state(p, where: str) -> dict:
    """fp16-representable weights that push one part of the forward past fp16's 65504."""
    sd = official_state_dict(p, seed=3)
    for key in sd:
        if where == "residual" and key.endswith(("attention_norm2.weight", "ffn_norm2.weight")):
            sd[key] = sd[key] * 3e4      # every branch adds ~3e4 * O(1) to the residual stream
        if where == "swiglu" and key.endswith(("feed_forward.w1.weight", "feed_forward.w3.weight")):
            sd[key] = sd[key] * 300.0    # silu(w1 x) * (w3 x) ~ 1e5
    return {k: v.half() for k, v in sd.items()}


@pytest.mark.parametrize("where", ["residual", "swiglu", "captions"])
def test_fp16_safe_forward_matches_fp32_where_naive_fp16_overflows(where):
    p = tiny_params()
    sd16 = _overflowing_state(p, where)
    inputs = random_inputs(p, [5, 9], seed=1)
    if where == "captions":   # Gemma pre-norm hidden states carry outliers beyond fp16's range
        inputs["cap_feats"][:, 0] *= 2e5
    reference = _forward(dit_from_state_dict(p, {k: v.float() for k, v in sd16.items()}), inputs)

    naive = dit_from_state_dict(p, dict(sd16))
    naive.compute_dtype = torch.float16
    assert not torch.isfinite(_forward(naive, inputs)).all(), "the test must overflow a naive fp16 forward"

    safe = make_fp16_safe(dit_from_state_dict(p, dict(sd16)))
    out = _forward(safe, inputs)
    assert torch.isfinite(out).all()
    assert _rel(out, reference) < 0.01


def test_fp16_safe_keeps_block_matrices_in_fp16_and_the_rest_fp32():
    p = tiny_params()
    model = make_fp16_safe(dit_from_state_dict(p, {k: v.half() for k, v in official_state_dict(p).items()}))
    for name, param in model.named_parameters():
        block_matrix = name.startswith(offload.BLOCK_LISTS) and param.ndim == 2
        assert param.dtype == (torch.float16 if block_matrix else torch.float32), name
    # Ordinary weights: the same result as fp32 compute on the same (fp16-rounded) weights.
    reference = dit_from_state_dict(p, {k: v.half().float() for k, v in official_state_dict(p).items()})
    inputs = random_inputs(p, [4, 4])
    assert _rel(_forward(model, inputs), _forward(reference, inputs)) < 5e-3


def test_fp16_safe_with_fp8_block_weights():
    from nextdit_nodes.dit import precision as dtypes

    p = tiny_params()
    sd = official_state_dict(p)
    model = dit_from_state_dict(p, {k: v.half() for k, v in sd.items()})
    dtypes.make_fp8_linears(model)
    for name, module in model.named_modules():
        if isinstance(module, dtypes.FP8Linear):
            module.weight.data, module.weight_scale = dtypes.quantize_fp8(sd[name + ".weight"])
    for param in model.parameters():          # reference: FP8Linear and the rest computed in fp32
        if param.dtype != dtypes.FP8:
            param.data = param.data.float()
    expected = _forward(model, random_inputs(p, [6]))
    make_fp16_safe(model)
    assert model.layers[0].attention.qkv.weight.dtype == dtypes.FP8
    out = _forward(model, random_inputs(p, [6]))
    assert _rel(out, expected) < 5e-3


def test_row_scale_is_a_power_of_two_that_brings_rows_into_range():
    x = torch.tensor([[1.0, -3.0], [1e6, 2.0], [-70000.0, 0.0], [0.0, 0.0]])
    s = row_scale(x)
    assert torch.equal(s, torch.exp2(torch.log2(s).round()))      # exact powers of two
    assert (s >= 1).all() and ((x / s).abs().amax(-1) <= 64).all()
    assert s[0].item() == 1.0 and s[3].item() == 1.0
    assert (x / s * 2).abs().amax(-1)[1] > 64                     # the smallest such power


# ---- block offloading --------------------------------------------------------------------------

def _rest_pointers(model):
    return {id(p): p.data_ptr() for b in repeated_blocks(model) for p in b.parameters()}


def test_offloaded_forward_streams_one_block_at_a_time_and_matches_exactly():
    p = tiny_params()
    model = random_dit(p)
    inputs = random_inputs(p, [5, 3])
    expected = _forward(model, inputs)

    offload.offload_blocks(model, "cpu")    # CPU stands in for the device: copies are still made
    blocks = repeated_blocks(model)
    at_rest = _rest_pointers(model)
    seen = []

    def probe(block_index):
        def check(module, args):   # runs inside the block, after the offloader's pre-hook
            swapped_in = [i for i, b in enumerate(blocks)
                          if any(q.data_ptr() != at_rest[id(q)] for q in b.parameters())]
            assert swapped_in == [block_index], (block_index, swapped_in)
            assert all(q.data_ptr() != at_rest[id(q)] for q in blocks[block_index].parameters())
            seen.append(block_index)
        return check

    for i, block in enumerate(blocks):
        block.attention.register_forward_pre_hook(probe(i))
    out = _forward(model, inputs)
    assert seen == list(range(len(blocks)))
    assert torch.equal(out, expected)
    assert _rest_pointers(model) == at_rest           # every block back on its CPU tensors
    state = offload.offload_state(model)
    assert not state.homes                             # no block holds device copies any more
    assert set(state.prefetched) == set()              # nothing left behind after the last block


def test_offload_budget_keeps_leading_blocks_resident_and_remove_restores():
    p = tiny_params()
    model = random_dit(p)
    inputs = random_inputs(p, [4])
    expected = _forward(model, inputs)
    blocks = repeated_blocks(model)
    sizes = [sum(t.numel() * t.element_size() for t in b.parameters()) for b in blocks]
    rest = sum(t.numel() * t.element_size() for n, t in model.named_parameters() if not n.startswith(offload.BLOCK_LISTS))

    resident = offload.offload_blocks(model, "cpu", budget=sum(sizes[:3]) + 1)
    assert resident == rest + sum(sizes[:3])
    assert offload.streamed_block_count(model) == len(blocks) - 3
    assert [bool(b._forward_pre_hooks) for b in blocks] == [False] * 3 + [True] * (len(blocks) - 3)
    assert torch.equal(_forward(model, inputs), expected)

    offload.remove_offload(model)
    assert not offload.is_offloaded(model) and not any(b._forward_pre_hooks for b in blocks)
    assert torch.equal(_forward(model, inputs), expected)


def test_offload_recovers_from_a_forward_interrupted_inside_a_block():
    p = tiny_params()
    model = random_dit(p)
    inputs = random_inputs(p, [4])
    expected = _forward(model, inputs)
    offload.offload_blocks(model, "cpu")
    at_rest = _rest_pointers(model)

    def boom(module, args):
        raise KeyboardInterrupt
    handle = model.layers[1].feed_forward.register_forward_pre_hook(boom)
    with pytest.raises(KeyboardInterrupt):
        _forward(model, inputs)
    handle.remove()
    assert torch.equal(_forward(model, inputs), expected)
    assert _rest_pointers(model) == at_rest


def _lora(p):
    from pathlib import Path

    from nextdit_nodes.lora.read import LowRank, ParsedLora

    gen = torch.Generator().manual_seed(5)
    deltas = {"layers.1.feed_forward.w2": [LowRank(torch.randn(4, p.ffn_dim, generator=gen),
                                                   torch.randn(p.dim, 4, generator=gen), 0.5)],
              "layers.0.attention.qkv": [LowRank(torch.randn(4, p.dim, generator=gen),
                                                 torch.randn(2 * p.dim, 4, generator=gen), 0.5)]}
    return ParsedLora(Path("x.safetensors"), "test", "test", deltas, {k: "applied" for k in deltas})


def test_fp16_safe_model_takes_loras():
    from nextdit_nodes.lora.apply import apply_lora

    p = tiny_params()
    sd16 = {k: v.half() for k, v in official_state_dict(p).items()}
    inputs = random_inputs(p, [5])
    expected = _forward(apply_lora(dit_from_state_dict(p, {k: v.float() for k, v in sd16.items()}), _lora(p), 1.0),
                        inputs)
    out = _forward(apply_lora(make_fp16_safe(dit_from_state_dict(p, dict(sd16))), _lora(p), 1.0), inputs)
    assert _rel(out, expected) < 5e-3


def test_offload_works_for_lora_copies_sharing_the_weights():
    from nextdit_nodes.lora.apply import apply_lora

    p = tiny_params()
    model = random_dit(p)
    lora = _lora(p)
    inputs = random_inputs(p, [6])
    expected = _forward(apply_lora(model, lora, 1.0), inputs)
    offload.offload_blocks(model, "cpu")
    patched = apply_lora(model, lora, 1.0)
    assert torch.equal(_forward(patched, inputs), expected)
    assert not torch.equal(_forward(model, inputs), expected)   # the LoRA really mattered
    offload.offload_blocks(patched, "cpu", budget=1)             # the copy re-planned: its own hooks only
    assert all(len(b._forward_pre_hooks) == 1 for b in repeated_blocks(patched))
    assert torch.equal(_forward(patched, inputs), expected)


# ---- dtype policy ------------------------------------------------------------------------------

@pytest.mark.parametrize("device,bf16,expected", [
    ("cpu", True, torch.float32),
    ("cuda", True, torch.bfloat16),
    ("cuda", False, torch.float16),
])
def test_auto_dtype_policy(monkeypatch, device, bf16, expected):
    from nextdit_nodes.dit import precision as dtypes

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert dtypes.resolve("auto", device).compute == expected
    assert dtypes.resolve("fp8_e4m3fn", device) == dtypes.DtypePlan(expected, fp8=True)


# ---- host placement: headless, and inside a real ComfyUI ---------------------------------------

def test_use_model_headless_follows_the_offload_mode(monkeypatch):
    from nextdit_nodes.dit import placement
    from nextdit_nodes.nodes.host import devices
    from nextdit_nodes.nodes.host import memory as comfy_memory

    monkeypatch.setattr(devices, "torch_device", lambda: torch.device("cpu"))
    p = tiny_params()
    model = random_dit(p)
    inputs = random_inputs(p, [3])
    expected = _forward(model, inputs)
    assert placement.offload_mode(model) == "auto"
    comfy_memory.use_model(model)
    assert not offload.is_offloaded(model)
    placement.set_offload_mode(model, "blocks")
    comfy_memory.use_model(model)
    assert offload.is_offloaded(model)
    assert offload.streamed_block_count(model) == len(repeated_blocks(model))
    assert torch.equal(_forward(model, inputs), expected)
    placement.set_offload_mode(model, "none")
    comfy_memory.use_model(model)
    assert not offload.is_offloaded(model)
    with pytest.raises(ValueError, match="blocks"):
        placement.set_offload_mode(model, "sometimes")


def test_activation_estimate_counts_every_token():
    from nextdit_nodes.dit.placement import dit_activation_bytes

    p = tiny_params()   # patch 2: a 8x8 latent is 16 tokens
    assert dit_activation_bytes(p, 2, (8, 8), 5, 2) == 2 * (16 + 5) * (3 * p.ffn_dim + 8 * p.dim) * 2


def _comfy_checkout():
    import os
    from pathlib import Path

    comfy_dir = Path(os.environ.get("COMFYUI_DIR", Path.home() / "scratch" / "ComfyUI"))
    python = Path(os.environ.get("COMFYUI_PYTHON", Path.home() / "scratch" / "comfy-venv" / "bin" / "python"))
    if not (comfy_dir / "comfy" / "model_management.py").exists() or not python.exists():
        pytest.skip("no ComfyUI checkout/venv (set COMFYUI_DIR and COMFYUI_PYTHON)")
    return comfy_dir, python


def test_dit_takes_part_in_comfyui_memory_management():
    """In a real ComfyUI (--cpu): registered once, partly unloaded by core's free_memory (blocks
    streamed, output unchanged), reloaded, fully unloaded, low-VRAM load (tests/comfy_memory_probe.py)."""
    import subprocess
    from pathlib import Path

    comfy_dir, python = _comfy_checkout()
    tests = Path(__file__).resolve().parent
    result = subprocess.run([str(python), str(tests / "comfy_memory_probe.py"), str(comfy_dir), str(tests.parent)],
                            capture_output=True, text=True, timeout=300, cwd=tests)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stdout + result.stderr[-3000:]


# ---- torch.compile of the repeated blocks ------------------------------------------------------

def test_compile_blocks_is_wired_shared_and_harmless():
    import torch._dynamo
    from nextdit_nodes.dit.compile import compile_blocks, is_compiled, uncompile_blocks

    p = tiny_params()
    model = random_dit(p)
    inputs = random_inputs(p, [5, 7])
    expected = _forward(model, inputs)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compile_blocks(model, backend="eager")       # dynamo tracing without codegen: seconds on a CPU
    assert is_compiled(model) and set(model.state_dict()) == set(random_dit(p).state_dict())
    assert torch.equal(_forward(model, inputs), expected)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert 0 < graphs < len(repeated_blocks(model))   # one graph per block kind, not per block
    offload.offload_blocks(model, "cpu")         # hooks stay outside the compiled forward
    assert torch.equal(_forward(model, inputs), expected)
    uncompile_blocks(model)
    assert not is_compiled(model) and type(model.layers[0]).__name__ == "JointTransformerBlock"


# ---- no host synchronisation per step ------------------------------------------------------------

def test_layout_is_reused_for_the_same_mask_and_rebuilt_when_it_changes(monkeypatch):
    from nextdit_nodes.dit import model as nextdit

    p = tiny_params()
    model = random_dit(p)
    inputs = random_inputs(p, [5, 2], pad_to=7)
    first = _forward(model, inputs)
    calls = []
    real_pack = nextdit.pack_captions
    monkeypatch.setattr(nextdit, "pack_captions", lambda *a: calls.append(1) or real_pack(*a))
    x2 = dict(inputs, x=inputs["x"] * 0.5, t=inputs["t"] * 0.5)     # a later step: same mask tensor
    second = _forward(model, x2)
    assert calls == []                                             # served from the cache
    assert torch.equal(second, _forward(random_dit(p), x2))        # and exactly the fresh result
    calls.clear()
    inputs["cap_mask"][1, 2] = True                                 # edited in place: rebuilt
    third = _forward(model, inputs)
    assert calls == [1]
    assert torch.equal(third, _forward(random_dit(p), inputs)) and not torch.equal(third, first)
    calls.clear()
    _forward(model, dict(inputs, cap_mask=inputs["cap_mask"].clone()))  # another tensor: rebuilt
    assert calls == [1]


def test_load_dit_fp16_and_auto_on_a_gpu_without_bf16_take_the_safe_path(tmp_path, monkeypatch):
    from factories import write_dit_checkpoint
    from nextdit_nodes.loaders import load_dit
    from nextdit_nodes.dit.precision import is_fp16_safe

    p = tiny_params()
    path = tmp_path / "dit.safetensors"
    write_dit_checkpoint(path, p, dtype=torch.bfloat16)
    reference = load_dit(path, dtype="fp32")
    inputs = random_inputs(p, [5, 3])
    expected = _forward(reference, inputs)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    for model in (load_dit(path, dtype="fp16"), load_dit(path, dtype="auto", device="cpu", compute_device="cuda")):
        assert is_fp16_safe(model) and model.compute_dtype == torch.float32
        assert model.cap_embedder[1].weight.dtype == torch.float32          # small parts in fp32
        assert model.layers[0].feed_forward.w2.weight.dtype == torch.float16
        assert model.device == torch.device("cpu")                           # stored where asked
        assert _rel(_forward(model, inputs), expected) < 5e-3
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    bf16 = load_dit(path, dtype="auto", device="cpu", compute_device="cuda")
    assert bf16.compute_dtype == torch.bfloat16 and not is_fp16_safe(bf16)


def test_loader_node_offload_option_streams_blocks_in_the_sampler_with_the_same_result(tmp_path, monkeypatch):
    from factories import write_dit_checkpoint
    from nextdit_nodes.nodes.dit import NextDiTLoader
    from nextdit_nodes.nodes.host import devices
    from nextdit_nodes.nodes.sampling import NextDiTSampler

    monkeypatch.setattr(devices, "torch_device", lambda: torch.device("cpu"))
    p = tiny_params()
    path = tmp_path / "dit.safetensors"
    write_dit_checkpoint(path, p)
    optional = NextDiTLoader.INPUT_TYPES()["optional"]["offload"]
    assert optional[0] == ["auto", "blocks", "none"] and optional[1]["default"] == "auto"
    assert list(NextDiTLoader.INPUT_TYPES()["required"]) == ["dit_name", "weight_dtype"]   # saved workflows

    gen = torch.Generator().manual_seed(0)
    cond = [[torch.randn(1, 6, p.cap_dim, generator=gen), {"pooled_output": torch.randn(1, p.clip_dim, generator=gen)}]]
    neg = [[torch.randn(1, 2, p.cap_dim, generator=gen), {"pooled_output": torch.randn(1, p.clip_dim, generator=gen)}]]
    settings = dict(positive=cond, negative=neg, width=32, height=32, batch_size=1, seed=3, steps=2, solver="euler",
                    shift=6.0, cfg=4.0, renorm_cfg=0.0, cfg_trunc=1.0, guidance=0.0)
    outputs = {}
    for mode in ("none", "blocks"):
        model, core_model = NextDiTLoader().load(str(path), "fp32", mode)
        assert core_model is None   # headless: no core MODEL
        (outputs[mode],) = NextDiTSampler().sample(model, **settings)["result"]
        assert offload.is_offloaded(model) == (mode == "blocks")
    assert torch.equal(outputs["blocks"]["samples"], outputs["none"]["samples"])
    with pytest.raises(ValueError, match="offload"):
        NextDiTLoader().load(str(path), "fp32", "sometimes")


def test_lagged_previews_show_every_step_once_in_order_one_step_late():
    import numpy as np
    from nextdit_nodes.sampling.preview import LaggedPreviews
    from nextdit_nodes.sampling.preview import latent_to_rgb

    gen = torch.Generator().manual_seed(0)
    latents = [torch.randn(2, 16, 6, 5, generator=gen) for _ in range(3)]
    shown = []
    lagged = LaggedPreviews(lambda step, image: shown.append((step, np.asarray(image))), lag=True)
    for step, x0 in enumerate(latents):
        lagged(step, x0)
        assert [s for s, _ in shown] == list(range(step))     # the previous step, not this one
    lagged.finish()
    assert [s for s, _ in shown] == [0, 1, 2]
    for (_, image), x0 in zip(shown, latents):
        assert np.array_equal(image, latent_to_rgb(x0[0]).numpy())
    immediate = []
    LaggedPreviews(lambda step, image: immediate.append(step))(0, latents[0])   # CPU default: at once
    assert immediate == [0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offload_on_cuda_is_exact_and_holds_at_most_two_blocks():
    p = tiny_params(dim=240, n_heads=4, n_kv_heads=2, ffn_dim=960, n_layers=6)
    model = random_dit(p).cuda()
    inputs = {k: (v.cuda() if v is not None else None) for k, v in random_inputs(p, [7, 3], (16, 16)).items()}
    weights = offload.tensor_bytes(model)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    expected = _forward(model, inputs)
    activations = torch.cuda.max_memory_allocated() - base
    offload.offload_blocks(model, "cuda")
    block = max(offload.tensor_bytes(b) for b in repeated_blocks(model))
    at_rest = torch.cuda.memory_allocated() - (base - weights)
    assert at_rest <= weights - sum(offload.tensor_bytes(b) for b in repeated_blocks(model)) + 4096
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    for _ in range(2):      # the second forward reuses the allocator's blocks; both must be exact
        assert torch.equal(_forward(model, inputs), expected)
    assert torch.cuda.max_memory_allocated() - start <= activations + 2 * block + 2 ** 20
    assert next(model.layers[0].parameters()).is_pinned()


def test_offload_with_fp8_block_weights(tmp_path):
    from factories import write_dit_checkpoint
    from nextdit_nodes.dit import precision as dtypes
    from nextdit_nodes.loaders import load_dit

    p = tiny_params()
    path = tmp_path / "dit.safetensors"
    write_dit_checkpoint(path, p)
    model = load_dit(path, dtype="fp8_e4m3fn")
    assert model.layers[0].feed_forward.w1.weight.dtype == dtypes.FP8
    inputs = random_inputs(p, [4, 6])
    expected = _forward(model, inputs)
    offload.offload_blocks(model, "cpu")
    assert torch.equal(_forward(model, inputs), expected)


def test_workflows_saved_before_the_offload_widget_still_load(tmp_path):
    from nextdit_nodes.runtime.run import runner_classes
    from nextdit_nodes.runtime.workflow import load_workflow

    def ui(values):
        return {"version": 0.4, "links": [], "nodes": [{"id": 1, "type": "NextDiTLoader", "mode": 0,
                                                         "inputs": [], "outputs": [], "widgets_values": values}]}

    classes = runner_classes(tmp_path)
    old = load_workflow(ui(["dit.safetensors", "bf16"]), classes).to_api()["1"]["inputs"]
    assert old == {"dit_name": "dit.safetensors", "weight_dtype": "bf16"}   # the node's default applies
    new = load_workflow(ui(["dit.safetensors", "bf16", "blocks"]), classes).to_api()["1"]["inputs"]
    assert new["offload"] == "blocks"


# ---- attention: what SDPA receives decides whether flash / cuDNN can run ----------------------

@pytest.mark.parametrize("path", ["bf16", "fp16-safe"])
def test_sdpa_gets_unmasked_half_precision_heads_with_unit_stride(monkeypatch, path):
    import torch.nn.functional as F

    p = tiny_params()
    sd = official_state_dict(p)
    if path == "bf16":
        model = dit_from_state_dict(p, {k: v.bfloat16() for k, v in sd.items()})
        model.compute_dtype, expected_dtype = torch.bfloat16, torch.bfloat16
    else:
        model, expected_dtype = make_fp16_safe(dit_from_state_dict(p, {k: v.half() for k, v in sd.items()})), torch.float16
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((q, k, v, args, kwargs))
        return real(q, k, v, *args, **kwargs)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    _forward(model, random_inputs(p, [5, 3]))
    assert len(calls) >= len(repeated_blocks(model))
    for q, k, v, args, kwargs in calls:
        assert not args and kwargs.get("attn_mask") is None and not kwargs.get("is_causal", False)
        assert q.ndim == 4 and q.shape[1] == p.n_heads and q.shape[-1] == p.head_dim      # (B, H, L, D)
        assert all(t.dtype == expected_dtype and t.stride(-1) == 1 for t in (q, k, v))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampler_steps_after_the_first_never_synchronise_with_the_host():
    import warnings

    from nextdit_nodes.sampler_settings import SamplerSettings
    from nextdit_nodes.sampling.sample import sample

    p = tiny_params()
    model = random_dit(p).cuda()
    gen = torch.Generator().manual_seed(0)
    cond = [[torch.randn(1, 6, p.cap_dim, generator=gen), {"pooled_output": torch.randn(1, p.clip_dim, generator=gen)}]]
    neg = [[torch.randn(1, 2, p.cap_dim, generator=gen), {"pooled_output": torch.randn(1, p.clip_dim, generator=gen)}]]
    steps = 4

    def callback(step, total, x0):
        # From step 0's callback to the last step's, every synchronising CUDA call warns.
        torch.cuda.set_sync_debug_mode("warn" if step == 0 else "default" if step == total - 1 else "warn")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sample(model, cond, neg, SamplerSettings(steps=steps, solver="euler", cfg=4.0, renorm_cfg=1.0,
                                                     cfg_trunc=1.0), width=64, height=64, seed=1, callback=callback)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert not syncs, syncs
