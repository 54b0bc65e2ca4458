"""Loading a Next-DiT (NewBie / Lumina-2) from any supported file: `load_dit`, `infer_params`.

Order of work, so that a wrong file fails before any heavy reading:
1. headers only: open the file(s), normalise keys (`keys.official_refs`: prefixes, all-in-one
   part, diffusers layout, `norm_final` dropped), infer the params from shapes, build the model on
   the meta device and compare every key and shape strictly;
2. data: read each tensor straight into its storage dtype and hand it to the model with
   `load_state_dict(assign=True)`, so no second copy of the weights ever exists (a tensor already
   in the wanted dtype is a paged-in private memory map of the file: no copy at all; see
   files/tensors.py).
"""

from __future__ import annotations

import gc
import logging
import math
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

import torch

from ..files import keys as key_lists
from ..files.errors import WeightsError
from ..files.tensors import TensorRef, open_weights, read_metadata
from ..sampler_settings import SamplerSettings
from . import own_settings, precision, quantized
from .keys import official_refs
from .model import NextDiT
from .params import BLOCK_KEY, NextDiTParams

log = logging.getLogger(__name__)

# What shapes cannot tell about the patch embedding: Next-DiT of this family works on the
# 16-channel FLUX VAE latent, so x_embedder's input width p*p*16 gives the patch size p.
LATENT_CHANNELS = 16
_MAX_ERROR_LINES = 14
# Tensors read concurrently: paging in / converting overlaps with building the model, and the
# page faults of a large file spread over two cores. More threads only add transient buffers.
_READ_THREADS = 2


def load_dit(path, dtype: str = "fp32", device: torch.device | str = "cpu",
             compute_device: torch.device | str | None = None):
    """A NextDiT (eval mode, no grad) from ``path``: a .safetensors file, a sharded index, a
    HF/diffusers folder (its ``transformer/`` sub-folder), a .pt/.pth/.ckpt checkpoint, or a
    GGUF file (block weights kept quantised, see dit/quantized.py).

    dtype: auto, bf16, fp16, fp32 or fp8_e4m3fn (see dit/precision.py). compute_device: where the
    model will run, for choosing `auto` (default ``device``; differs when the weights are kept on
    the CPU for a GPU: block offloading, ComfyUI's offload device). A plan computing in fp16 gets
    the fp16-safe path. The sampling settings a few-step student's file records are attached
    (``dit.own_settings``). Raises WeightsError, naming the file, for anything that is not a
    complete Next-DiT.
    """
    with _gc_paused():
        return _load_dit(Path(path), dtype, torch.device(device), compute_device)


@contextmanager
def _gc_paused():
    """No garbage collection while loading: building ~700 modules otherwise triggers a full
    collection over every object the process holds (0.15 s of a 0.2 s build in a fresh process
    with torch imported); loading creates no reference cycles worth collecting."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load_dit(path: Path, dtype: str, device: torch.device, compute_device):
    plan = precision.resolve(dtype, device if compute_device is None else compute_device)
    gguf = quantized.is_gguf(path)
    if gguf:
        quantized.check_architecture(path)
        if plan.fp8:   # the file's own block formats replace fp8 storage
            log.info("%s: a GGUF file keeps its own quantisation; weight_dtype fp8_e4m3fn computes in auto", path.name)
            plan = precision.resolve("auto", device if compute_device is None else compute_device)
    raw = open_weights(path, subfolder="transformer")
    metadata = read_metadata(path)
    try:
        settings = SamplerSettings.from_metadata(metadata)
        preview = own_settings.preview_from_metadata(metadata)
    except ValueError as error:
        raise WeightsError(path, str(error)) from None
    state = official_refs(path, raw)
    params = infer_params(state, path)
    packed = quantized.packed_keys(state)
    weights = quantized.describe(state) if gguf else dtype
    with ThreadPoolExecutor(max_workers=_READ_THREADS, thread_name_prefix="nextdit-load") as pool:
        # Reading starts now and overlaps building and checking the model. Reading is read-only,
        # so a file refused by the check below has cost some I/O and nothing else.
        pending = {key: pool.submit(_read, ref, precision.storage_dtype(plan, key), device, key in packed)
                   for key, ref in state.items()}
        try:
            model = NextDiT(params, device="meta")
            if plan.fp8:
                precision.make_fp8_linears(model)
            expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith(".weight_scale")}
            check_keys(path, expected, state, raw)
            quantized.keep_packed(model, packed)
        except BaseException:
            for future in pending.values():
                future.cancel()
            raise
        del state
        tensors: dict[str, torch.Tensor] = {}
        for key in expected:
            value = pending.pop(key).result()
            if isinstance(value, tuple):   # fp8 weight and its row scales
                tensors[key], tensors[key + "_scale"] = value
            else:
                tensors[key] = value
    model.load_state_dict(tensors, strict=True, assign=True)
    del tensors
    on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:  # a tensor the model creates itself would need computing here; none exist today
        raise RuntimeError(f"NextDiT tensors left unloaded on the meta device: {on_meta[:5]}")
    precision.apply_plan(model, plan)
    own_settings.attach(model, settings)
    own_settings.attach_preview(model, preview)
    if settings is not None:
        log.info("%s was made for %s (NextDiT Sampler's steps 0 uses them)", path.name, settings.describe())
    log.info("loaded %s: %s, weights %s (compute %s) on %s", path.name, _describe_params(params),
             weights, plan.compute, device)
    return model.eval().requires_grad_(False)


def _read(ref: TensorRef, storage: torch.dtype, device: torch.device, keep_packed: bool = False):
    """One tensor in its storage dtype on `device`; fp8 weights as (weight, row scales); a GGUF
    block weight kept quantised as its raw blocks."""
    if keep_packed:
        return ref.packed.read(device)
    if storage == precision.FP8:
        weight, scale = precision.quantize_fp8(ref.load(own=True))
        return weight.to(device), scale.to(device)
    return ref.load(storage, device)


def _count(state: Mapping, stem: str) -> int:
    """Number of `stem.N.` blocks: highest index + 1, so a missing middle block shows as missing."""
    found = [int(m.group(1)) for k in state if (m := re.match(rf"{stem}\.(\d+)\.", k))]
    return max(found) + 1 if found else 0


def _first_shape(state: Mapping, pattern: str) -> tuple[int, ...] | None:
    regex = re.compile(pattern)
    return next((tuple(v.shape) for k, v in sorted(state.items()) if regex.fullmatch(k)), None)


def infer_params(state: Mapping, path="<state dict>") -> NextDiTParams:
    """NextDiTParams from the shapes of an official-key state dict (tensors or TensorRefs).

    dim: x_embedder rows; head_dim: q_norm width; n_heads = dim / head_dim; kv heads from the qkv
    rows ((n_heads + 2 kv) * head_dim); ffn_dim: w1 rows; cap_dim: cap_embedder width; clip_dim:
    clip_text_pooled_proj width (None for Lumina-2); patch size from x_embedder's input width
    p*p*16; layer and refiner counts from the highest block index; guidance embedder if present.
    """
    def need(shape, what):
        if shape is None:
            raise WeightsError(path, f"cannot tell the model's {what}: no key for it. "
                                     + _key_summary(state))
        return shape

    dim = need(_first_shape(state, r"x_embedder\.weight") or _first_shape(state, r"cap_embedder\.1\.weight"),
               "width (x_embedder.weight)")[0]
    block = BLOCK_KEY + r"\."
    head_dim = need(_first_shape(state, block + r"attention\.q_norm\.weight"), "head size (attention.q_norm)")[0]
    qkv_rows = need(_first_shape(state, block + r"attention\.qkv\.weight"), "head counts (attention.qkv)")[0]
    ffn_dim = need(_first_shape(state, block + r"feed_forward\.w1\.weight"), "feed-forward width (w1)")[0]
    cap_dim = need(_first_shape(state, r"cap_embedder\.0\.weight"), "caption width (cap_embedder.0)")[0]
    clip = _first_shape(state, r"clip_text_pooled_proj\.0\.weight")
    patch_in = (_first_shape(state, r"x_embedder\.weight") or
                need(_first_shape(state, r"final_layer\.linear\.weight"), "patch size (x_embedder)")[::-1])[1]

    n_heads, rest = divmod(dim, head_dim)
    kv_total = qkv_rows // head_dim - n_heads
    patch = math.isqrt(patch_in // LATENT_CHANNELS)
    problems = []
    if rest or qkv_rows % head_dim or kv_total <= 0 or kv_total % 2:
        problems.append(f"width {dim}, q/k-norm {head_dim} and qkv rows {qkv_rows} give no whole head counts")
    if patch * patch * LATENT_CHANNELS != patch_in:
        problems.append(f"x_embedder input width {patch_in} is not p*p*{LATENT_CHANNELS} (a 16-channel latent)")
    if problems:
        raise WeightsError(path, "not a Next-DiT shape this loader knows: " + "; ".join(problems))
    try:
        return NextDiTParams(
            dim=dim, n_layers=_count(state, "layers"), n_heads=n_heads, n_kv_heads=kv_total // 2,
            ffn_dim=ffn_dim, cap_dim=cap_dim, clip_dim=clip[0] if clip else None,
            in_channels=LATENT_CHANNELS, patch_size=patch,
            n_refiner_layers=max(_count(state, "noise_refiner"), _count(state, "context_refiner")),
            guidance_embed=any(k.startswith("guidance_embedder.") for k in state),
        )
    except ValueError as error:
        raise WeightsError(path, f"not a Next-DiT shape this loader knows: {error}") from error


def _describe_params(p) -> str:
    kind = "NewBie" if p.clip_dim else "Lumina-2"
    extra = ", guidance-distilled" if p.guidance_embed else ""
    return (f"{kind}-style Next-DiT dim {p.dim}, {p.n_layers} layers, {p.n_heads}/{p.n_kv_heads} heads, "
            f"ffn {p.ffn_dim}, cap {p.cap_dim}, patch {p.patch_size}{extra}")


def _key_summary(state: Mapping) -> str:
    return "Keys found: " + "; ".join(key_lists.group_keys(state, limit=6))


def _collapse_blocks(missing: set[str], expected: Mapping[str, tuple]) -> list[str]:
    """Keys, with every block that is missing entirely reported as the block itself."""
    by_block = defaultdict(set)
    for key in expected:
        if m := re.match(rf"({BLOCK_KEY})\.", key):
            by_block[m.group(1)].add(key)
    out = set(missing)
    for block, members in by_block.items():
        if members <= missing:
            out -= members
            out.add(f"{block}.*")
    return sorted(out)


def check_keys(path, expected: Mapping[str, tuple], state: Mapping[str, TensorRef],
               raw: Mapping[str, TensorRef]) -> None:
    """Strict comparison of the file's keys and shapes against the model's; WeightsError listing
    problems grouped by module (`layers.0-35.attention.qkv: missing`)."""
    lines = key_lists.mismatch_lines(expected, {k: tuple(v.shape) for k, v in state.items()}, _MAX_ERROR_LINES,
                                missing_names=lambda missing: _collapse_blocks(missing, expected))
    if not lines:
        return
    what = key_lists.describe_contents({k: v.shape for k, v in raw.items()})
    raise WeightsError(path, "does not hold a complete Next-DiT: it looks like " + what
                             + ", but its keys do not match the model built from its shapes:\n  "
                             + "\n  ".join(lines)
                             + "\nThe file is incomplete, damaged, or another model; download it again "
                               "or pick the right file.")
