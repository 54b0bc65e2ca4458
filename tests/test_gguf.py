"""GGUF: the pack's torch dequantisation against the gguf package's numpy reference, reading
city96-layout files, the quantised Linear, writing with the quantize command."""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from factories import (
    dit_from_state_dict,
    official_shapes,
    random_inputs,
    write_dit_checkpoint,
)
from nextdit_nodes.dit.checkpoint import load_dit
from nextdit_nodes.dit.offload import offload_blocks, remove_offload, tensor_bytes
from nextdit_nodes.dit.params import NextDiTParams
from nextdit_nodes.files.errors import WeightsError
from nextdit_nodes.quant.blocks import FORMATS, PACKED, dequantize
from nextdit_nodes.quant.gguf_write import KEEP_PREFIXES
from nextdit_nodes.quant.linear import QuantLinear
from nextdit_nodes.commands.quantize import quantize_file
from safetensors.torch import save_file

# Byte offsets of the float16 fields of each format (random bytes there could be inf/NaN).
_F16_FIELDS = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2),
               "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def random_blocks(qtype: str, n_blocks: int, seed: int = 0) -> np.ndarray:
    """Random bytes for ``n_blocks`` blocks: every bit pattern is a valid block once the float16
    scales are finite, so this exercises every code path of a format."""
    fmt = FORMATS[qtype]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n_blocks, fmt.type_size), dtype=np.uint8)
    for offset in _F16_FIELDS.get(qtype, ()):
        scale = rng.uniform(-0.05, 0.05, size=n_blocks).astype(np.float16)
        blocks[:, offset:offset + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    if qtype == "BF16":
        values = rng.standard_normal(n_blocks).astype(np.float32)
        blocks = (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n_blocks, 2)
    return blocks


@pytest.mark.parametrize("qtype", PACKED + ("F16", "F32"))
def test_dequantisation_equals_the_gguf_package(qtype):
    fmt = FORMATS[qtype]
    if qtype in ("F16", "F32"):
        values = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float16 if qtype == "F16" else np.float32)
        raw = values.view(np.uint8)
        cols = 64
    else:
        rows, blocks_per_row = 6, 2
        raw = random_blocks(qtype, rows * blocks_per_row).reshape(rows, -1)
        cols = blocks_per_row * fmt.block_size
    reference = gguf.quants.dequantize(raw, getattr(gguf.GGMLQuantizationType, qtype))
    ours = dequantize(torch.from_numpy(raw), qtype, (raw.shape[0], cols))
    assert ours.dtype == torch.float32 and tuple(ours.shape) == reference.shape
    # Bit for bit: the same float32 products in the same order.
    assert torch.equal(ours, torch.from_numpy(np.ascontiguousarray(reference)))


def test_q4_0_scale_search_beats_the_reference_quantiser_in_the_same_format():
    """The pack's Q4_0 (least-squares scale search) against the gguf package's reference quantiser
    (largest magnitude to level -8), both decoded by the gguf package, on Gaussian rows."""
    from nextdit_nodes.quant.encode import encode

    rows = np.random.default_rng(4).standard_normal((64, 1024)).astype(np.float32)
    q4_0 = gguf.GGMLQuantizationType.Q4_0
    ours = gguf.quants.dequantize(encode(rows, "Q4_0"), q4_0)
    reference = gguf.quants.dequantize(gguf.quants.quantize(rows, q4_0), q4_0)
    error = lambda values: ((values - rows) ** 2).reshape(-1, 32).sum(axis=1)   # noqa: E731 - per block
    assert error(ours).sum() < 0.9 * error(reference).sum()                       # 8.1 % against 8.6 % relative
    assert (error(ours) <= error(reference) * 1.01).mean() > 0.98                # not worse block by block


def test_format_table_matches_the_gguf_package():
    for name, fmt in FORMATS.items():
        member = getattr(gguf.GGMLQuantizationType, name)
        assert int(member) == fmt.ggml_id
        assert gguf.GGML_QUANT_SIZES[member] == (fmt.block_size, fmt.type_size)


# ---- files: a small Next-DiT whose matrices split into 256-element blocks ------------------------

# Every Linear input width (768 and the adaLN width min(768, 1024)) is a multiple of 256.
PARAMS = NextDiTParams(dim=768, n_layers=1, n_heads=8, n_kv_heads=4, ffn_dim=768, cap_dim=256, clip_dim=256,
                       n_refiner_layers=1)
BLOCK_LINEARS = 3 * 5 + 2     # qkv, out, w1, w2, w3 in 3 blocks; adaLN in the 2 modulated ones


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    source = folder / "dit.safetensors"
    state = write_dit_checkpoint(source, PARAMS, prefix="model.diffusion_model.", dtype=torch.bfloat16)
    out = {"source": source, "state": state}
    for qtype in ("Q8_0", "Q4_K", "Q4_0", "Q4_K_M"):
        out[qtype] = folder / f"dit-{qtype}.gguf"
        quantize_file(source, out[qtype], qtype)
    return out


@pytest.fixture(scope="module")
def inputs():
    return random_inputs(PARAMS, [6, 3], latent_hw=(8, 8), seed=3)


def _relative(out, ref):
    return ((out - ref).norm() / ref.norm()).item()


def test_written_file_is_city96_layout_and_reads_back_bit_identical(files):
    """Names are the official keys, the architecture lumina2, small tensors F32, embedders and the
    final layer unquantised; the loaded QuantLinears hold exactly the file's blocks, which the
    gguf package decodes to the same floats as the pack."""
    reader = gguf.GGUFReader(str(files["Q4_K"]))
    arch = reader.get_field("general.architecture")
    assert bytes(arch.parts[arch.data[0]]).decode() == "lumina2"
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert set(types) == set(files["state"])                       # prefix cleaned, norm_final dropped
    for key, shape in official_shapes(PARAMS).items():
        if len(shape) == 1:
            assert types[key] == "F32", key
        elif key.startswith(KEEP_PREFIXES):
            assert types[key] == "BF16", key                        # bf16 source
        else:
            assert types[key] == "Q4_K", key
    model = load_dit(files["Q4_K"], "fp32")
    quantised = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert len(quantised) == BLOCK_LINEARS
    by_name = {t.name: t for t in reader.tensors}
    for name, module in quantised.items():
        tensor = by_name[f"{name}.weight"]
        assert torch.equal(module.weight, torch.from_numpy(np.array(tensor.data)))
        reference = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert torch.equal(module.dequantized_weight(), torch.from_numpy(np.ascontiguousarray(reference)))
    # Unquantised tensors are the source's values.
    assert torch.equal(model.x_embedder.weight, files["state"]["x_embedder.weight"].float())


@pytest.mark.parametrize("qtype,bound", [("Q8_0", 0.01), ("Q4_K", 0.08), ("Q4_0", 0.09)])
def test_forward_close_to_the_unquantised_model(files, inputs, qtype, bound):
    """Against the same bf16 weights unquantised (fp32 compute). Bounds: the per-weight error of
    each format on Gaussian weights (Q8_0 0.5 %, Q4_K/Q4_0 8-9 %), which a forward carries over."""
    reference = load_dit(files["source"], "fp32")(**inputs)
    out = load_dit(files[qtype], "fp32")(**inputs)
    assert _relative(out, reference) < bound


@pytest.mark.parametrize("qtype,bytes_per_256", [("Q8_0", 272), ("Q4_K", 144), ("Q4_0", 144)])
def test_resident_memory_is_the_blocks_bytes(files, qtype, bytes_per_256):
    """Counted independently: block matrices at the format's bytes per 256 weights (Q8_0 8 blocks
    of 34 bytes, Q4_0 8 of 18, Q4_K one of 144), everything else bf16. (The ratio to bf16 at
    NewBie size is in the README: benchmarks/gguf_quant.py measures it.)"""
    model = load_dit(files[qtype], "bf16")
    expected = 0
    for key, shape in official_shapes(PARAMS).items():
        n = math.prod(shape)
        block = key.startswith(("layers.", "noise_refiner.", "context_refiner.")) and len(shape) == 2
        expected += n * bytes_per_256 // 256 if block else 2 * n
    assert tensor_bytes(model) == expected


# Q4_K_M's embedders: Q6_K where one matrix in Q6_K costs the forward under 0.5 %, Q8_0 for the
# pooled-text projections; the final projection and x_embedder stay BF16 (bytes per 256 weights).
MIX_EMBEDDER_TYPES = {"cap_embedder.1.weight": ("Q6_K", 210), "t_embedder.mlp.0.weight": ("Q6_K", 210),
                      "t_embedder.mlp.2.weight": ("Q6_K", 210), "final_layer.adaLN_modulation.1.weight": ("Q6_K", 210),
                      "clip_text_pooled_proj.1.weight": ("Q8_0", 272), "time_text_embed.1.weight": ("Q8_0", 272)}


def test_q4_k_m_keeps_attention_and_adaln_in_q6_k(files, inputs):
    """The mix: qkv, out and adaLN of every block in Q6_K, the feed-forward in Q4_K, the embedders
    as in MIX_EMBEDDER_TYPES and kept packed too; memory counted from those bytes per 256 weights
    (Q6_K 210, Q8_0 272, Q4_K 144); the forward closer than all-Q4_K."""
    reader = gguf.GGUFReader(str(files["Q4_K_M"]))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    model = load_dit(files["Q4_K_M"], "bf16")
    expected = 0
    for key, shape in official_shapes(PARAMS).items():
        n = math.prod(shape)
        if key.startswith(("layers.", "noise_refiner.", "context_refiner.")) and len(shape) == 2:
            sensitive = key.rsplit(".", 2)[-2] in ("qkv", "out") or ".adaLN_modulation." in key
            assert types[key] == ("Q6_K" if sensitive else "Q4_K"), key
            expected += n * (210 if sensitive else 144) // 256
        elif key in MIX_EMBEDDER_TYPES:
            qtype, bytes_per_256 = MIX_EMBEDDER_TYPES[key]
            assert types[key] == qtype, key
            assert isinstance(model.get_submodule(key.removesuffix(".weight")), QuantLinear), key
            expected += n * bytes_per_256 // 256
        else:
            assert types[key] in ("F32", "BF16"), key
            expected += 2 * n
    assert tensor_bytes(model) == expected
    reference = load_dit(files["source"], "fp32")(**inputs)
    mixed = _relative(load_dit(files["Q4_K_M"], "fp32")(**inputs), reference)
    plain = _relative(load_dit(files["Q4_K"], "fp32")(**inputs), reference)
    assert mixed < 0.8 * plain


def test_q6_k_scale_search_beats_the_largest_magnitude_scale():
    """Q6_K's sub-block scales from the least-squares search against the plain rule (each 16-value
    sub-block's largest magnitude to level -32, written here), both decoded by the gguf package."""
    from nextdit_nodes.quant.encode import encode

    rows = np.random.default_rng(5).standard_normal((64, 1024)).astype(np.float32)
    sub = rows.reshape(-1, 16)
    pick = np.take_along_axis(sub, np.abs(sub).argmax(axis=1)[:, None], axis=1)
    plain = np.clip(np.rint(sub / (pick / -32)), -32, 31) * (pick / -32)     # float scales: no rounding loss
    ours = gguf.quants.dequantize(encode(rows, "Q6_K"), gguf.GGMLQuantizationType.Q6_K)
    error = lambda values: ((values.reshape(-1, 16) - sub) ** 2).sum()   # noqa: E731
    assert error(ours) < 0.9 * error(plain)                                # 1.73 % against 1.88 % relative


def test_fp16_safe_path_dequantises_to_fp16(files, inputs):
    reference = load_dit(files["Q8_0"], "fp32")(**inputs)
    model = load_dit(files["Q8_0"], "fp16")
    linear = model.layers[0].feed_forward.w2
    assert isinstance(linear, QuantLinear) and linear.weight.dtype == torch.uint8
    assert _relative(model(**inputs), reference) < 0.01


def test_block_streaming_moves_the_blocks(files, inputs):
    model = load_dit(files["Q4_K"], "fp32")
    reference = model(**inputs)
    offload_blocks(model, "cpu")
    try:
        assert torch.equal(model(**inputs), reference)
    finally:
        remove_offload(model)


def test_lora_on_quantised_layers_adds_to_the_dequantised_weight(files, inputs, tmp_path):
    """A kohya LoRA on block Linears of a Q4_K model gives what merging ΔW by hand into the
    dequantised weights gives."""
    from nextdit_nodes.lora.apply import load_lora

    model = load_dit(files["Q4_K"], "fp32")
    dense_state = {k: v for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            dense_state[f"{name}.weight"] = module.dequantized_weight()
    gen = torch.Generator().manual_seed(5)
    tensors, deltas = {}, {}
    for target in ("layers.0.attention.qkv", "layers.0.feed_forward.w2", "noise_refiner.0.adaLN_modulation.1"):
        out_f, in_f = model.get_submodule(target).out_features, model.get_submodule(target).in_features
        down, up = torch.randn(4, in_f, generator=gen) / in_f ** 0.5, torch.randn(out_f, 4, generator=gen)
        name = "lora_unet_" + target.replace(".", "_")
        tensors.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                        f"{name}.alpha": torch.tensor(4.0)})
        deltas[target] = up @ down
    save_file(tensors, str(tmp_path / "lora.safetensors"))
    patched, report = load_lora(model, tmp_path / "lora.safetensors", 0.7)
    assert report.n_applied == 3
    for target, delta in deltas.items():
        dense_state[f"{target}.weight"] = dense_state[f"{target}.weight"] + 0.7 * delta
    reference = dit_from_state_dict(PARAMS, dense_state)(**inputs)
    base = model(**inputs)
    out = patched(**inputs)
    assert (reference - base).abs().max() > 1e-2          # the LoRA matters
    assert torch.allclose(out, reference, atol=1e-4, rtol=1e-4)


def test_step_cache_runs_on_a_quantised_model(files, inputs):
    from nextdit_nodes.dit.step_cache import apply_step_cache, remove_step_cache

    model = load_dit(files["Q8_0"], "fp32")
    reference = model(**inputs)
    apply_step_cache(model, 0.0)       # threshold 0: every step runs the layers
    try:
        assert torch.equal(model(**inputs), reference)
    finally:
        remove_step_cache(model)


# ---- refused files -------------------------------------------------------------------------------

def _write(path: Path, tensors: dict[str, np.ndarray], arch: str | None = "lumina2", fields=None):
    writer = gguf.GGUFWriter(str(path), arch=arch or "lumina2")
    if arch is None:    # stable-diffusion.cpp style: no general.architecture
        writer.kv_data[0].pop("general.architecture")
    for name, value in (fields or {}).items():
        writer.add_array(name, value)
    for name, value in tensors.items():   # an array, or (raw blocks, ggml type)
        raw, raw_type = value if isinstance(value, tuple) else (value, None)
        writer.add_tensor(name, raw, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_wrong_shape_is_refused_naming_the_tensor(files, tmp_path):
    reader = gguf.GGUFReader(str(files["Q8_0"]))
    tensors = {}
    for t in reader.tensors:
        tensors[t.name] = (np.array(t.data), t.tensor_type)
        if t.name == "layers.0.feed_forward.w1.weight":      # a Q8_0 matrix of 512 rows, not 768
            tensors[t.name] = (np.array(t.data[:512]), t.tensor_type)
    path = _write(tmp_path / "bad.gguf", tensors)
    with pytest.raises(WeightsError, match=r"(?s)bad\.gguf: .*layers\.0\.feed_forward\.w1: shape \[512, 768\] "
                                           r"in the file, \[768, 768\] expected"):
        load_dit(path)


def test_truncated_file_is_refused(files, tmp_path):
    data = files["Q4_0"].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(WeightsError, match=r"cut\.gguf: truncated: tensor .* ends at byte"):
        load_dit(cut)
    cut.write_bytes(data[:40])
    with pytest.raises(WeightsError, match=r"cut\.gguf: truncated or damaged GGUF header"):
        load_dit(cut)


def test_unknown_quant_type_is_refused(files, tmp_path):
    data = bytearray(files["Q8_0"].read_bytes())
    reader = gguf.GGUFReader(str(files["Q8_0"]))
    field = reader.tensors[-1].field           # tensor info: name, n_dims, dims, type, offset
    type_offset = int(field.offset) + sum(part.nbytes for part in field.parts[:4])
    for type_id, what in ((99, r"quantisation type 99, which no GGUF reader knows"),
                          (int(gguf.GGMLQuantizationType.IQ2_XXS), r"stored as IQ2_XXS, which this pack does not read")):
        data[type_offset:type_offset + 4] = type_id.to_bytes(4, "little")
        bad = tmp_path / "odd.gguf"
        bad.write_bytes(bytes(data))
        with pytest.raises(WeightsError, match=rf"odd\.gguf: tensor '{reader.tensors[-1].name}'.*{what}"):
            load_dit(bad)


def test_other_architectures_are_refused(tmp_path):
    unet = {"input_blocks.0.0.weight": np.zeros((320, 4, 3, 3), np.float32),
            "label_emb.0.0.weight": np.zeros((1280, 2816), np.float16)}
    with pytest.raises(WeightsError, match=r"sdxl\.gguf: a GGUF of architecture 'sdxl': a diffusion model"):
        load_dit(_write(tmp_path / "sdxl.gguf", unet, arch="sdxl"))
    llama = {"token_embd.weight": np.zeros((64, 32), np.float16), "blk.0.attn_q.weight": np.zeros((32, 32), np.float16)}
    with pytest.raises(WeightsError, match=r"llama\.gguf: a GGUF of architecture 'llama': a llama\.cpp language model"):
        load_dit(_write(tmp_path / "llama.gguf", llama, arch="llama"))
    # Without general.architecture the tensor names decide, as for any file.
    with pytest.raises(WeightsError, match=r"unet\.gguf: not a Next-DiT"):
        load_dit(_write(tmp_path / "unet.gguf", unet, arch=None))


def test_original_shape_metadata_is_honoured(tmp_path):
    """city96's converter records reshaped tensors' shapes as comfy.gguf.orig_shape.<name>."""
    from nextdit_nodes.files.gguf import open_gguf

    values = np.arange(512, dtype=np.float32).reshape(2, 256)
    path = _write(tmp_path / "reshaped.gguf", {"w": values}, fields={"comfy.gguf.orig_shape.w": [4, 8, 16]})
    ref = open_gguf(path)["w"]
    assert ref.shape == (4, 8, 16)
    assert torch.equal(ref.load(), torch.from_numpy(values).reshape(4, 8, 16))
    bad = _write(tmp_path / "bad.gguf", {"w": values}, fields={"comfy.gguf.orig_shape.w": [3, 8]})
    with pytest.raises(WeightsError, match=r"bad\.gguf: tensor 'w': its recorded original shape \[3, 8\]"):
        open_gguf(bad)


# ---- the command line and the loader node --------------------------------------------------------

def test_quantize_command_line(files, tmp_path):
    from nextdit_nodes.commands.cli import main

    out = tmp_path / "q.gguf"
    assert main(["quantize", str(files["source"]), "--type", "Q5_0", "--output", str(out)]) == 0
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types == {"Q5_0", "BF16", "F32"}
    assert main(["quantize", str(files["source"]), "--type", "Q5_0", "--output", str(out)]) == 2   # exists
    keep = tmp_path / "keep.gguf"
    assert main(["quantize", str(files["source"]), "--type", "Q8_0", "--output", str(keep), "--keep-refiners"]) == 0
    by_name = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(keep)).tensors}
    assert by_name["noise_refiner.0.feed_forward.w1.weight"] == "BF16"
    assert by_name["layers.0.feed_forward.w1.weight"] == "Q8_0"


def test_loader_lists_gguf_files(files, tmp_path, monkeypatch):
    from nextdit_nodes.nodes.dit import NextDiTLoader
    from nextdit_nodes.nodes.host.files import list_model_files

    models = tmp_path / "models"
    (models / "unet").mkdir(parents=True)
    (models / "vae").mkdir()
    (models / "unet" / "dit-Q8_0.gguf").write_bytes(files["Q8_0"].read_bytes())
    (models / "vae" / "x.gguf").write_bytes(b"GGUF")
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(models))
    assert "dit-Q8_0.gguf" in list_model_files("diffusion_models")
    assert "x.gguf" not in list_model_files("vae")         # only the DiT and text encoder folders
    model, _ = NextDiTLoader().load("dit-Q8_0.gguf", "fp32", "none")
    assert isinstance(model.layers[0].attention.qkv, QuantLinear)


def test_incomplete_gguf_text_encoders_are_refused_with_what_to_use(tmp_path):
    # (complete Gemma 3 GGUFs are read: tests/test_gguf_text.py)
    from nextdit_nodes.text.loading import load_gemma, load_jina

    llama = {"token_embd.weight": np.zeros((64, 32), np.float16)}
    path = _write(tmp_path / "gemma-3-4b-it-Q4_K_M.gguf", llama, arch="gemma3")
    with pytest.raises(WeightsError, match=r"gemma-3-4b-it-Q4_K_M\.gguf: incomplete GGUF metadata: "
                                           r"gemma3\.attention\.head_count is missing; convert"):
        load_gemma(path)
    with pytest.raises(WeightsError, match=r"jina_clip_v2_bf16\.safetensors"):
        load_jina(path)
