"""Applying LoRAs to a Next-DiT without touching the incoming model or copying its weights.

``apply_lora(model, lora, strength)`` returns a new model object whose module tree is a shallow
structural copy of ``model``: every module is a new object, but every parameter and buffer is the
same tensor as in ``model``. On the copy, the LoRA is an entry of the model's seam (``dit/seam.py``,
named ``lora``, ``lora1``, ... in the order applied) whose module hooks, one per targeted Linear, add
``strength · Δ(x)`` to its output (Δ = scale·up(down(x)) for low-rank deltas, the Kronecker product
applied without materialising it for LoKr, a dense delta where the file holds one); small non-Linear
targets (norm-layer deltas) get a new parameter ``W + strength·ΔW`` on the copy only. So:

- the incoming model (and every other graph branch using it) keeps the base weights;
- memory overhead is about the LoRA's own size;
- applying a second LoRA to the result copies it again and stacks both;
- the state-dict keys of the result are the base model's (the LoRA tensors are non-persistent
  buffers of the hooked Linears, so ``.to(device)`` moves them with the model).

Note that the parameters are shared: moving or casting the result in place (``.to()``) moves the
shared base tensors too, exactly like moving the base model would. Code that reads weights rather
than calling the model (saving, distilling) gets the LoRA'd weights from ``merged_state_dict``.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..dit.seam import Seam
from .deltas import Dense, Kron, LowRank, ParsedLora, TargetTable
from .read import read_lora

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraReport:
    """What one LoRA application did, for the node's display and the log."""

    name: str
    format: str
    strength: float
    alpha_source: str
    lines: list[str]          # grouped per module: "layers.0-35.attention.qkv: applied"
    n_applied: int
    n_not_applied: int

    @property
    def text(self) -> str:
        head = f"LoRA {self.name}: {self.format}, strength {self.strength:g}"
        if self.strength == 0:
            head += " (strength 0: the model is returned unchanged)"
        return "\n".join([head, f"alpha: {self.alpha_source}", *self.lines])


def lora_targets(model: nn.Module) -> TargetTable:
    """The Linears (out, in) and small parameterised leaf modules of ``model``, by module path."""
    linears, params = {}, {}
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear):
            linears[path] = (module.out_features, module.in_features)
        elif path and not list(module.children()) and module._parameters:
            params[path] = {name: tuple(p.shape) for name, p in module._parameters.items() if p is not None}
    model_params = getattr(model, "params", None)
    qkv_split = None
    if model_params is not None:
        hd = model_params.head_dim
        qkv_split = (model_params.n_heads * hd, model_params.n_kv_heads * hd, model_params.n_kv_heads * hd)
    return TargetTable(linears, params, qkv_split)


def load_lora(model: nn.Module, path, strength: float = 1.0) -> tuple[nn.Module, LoraReport]:
    """Read the LoRA at ``path`` for ``model`` and apply it at ``strength`` (see ``apply_lora``).

    Raises WeightsError (naming the file) for a LoRA of another model or one where nothing applies.
    """
    parsed = read_lora(path, lora_targets(model))
    patched = apply_lora(model, parsed, strength)
    report = _report(parsed, strength)
    if report.n_not_applied:
        log.warning("%s\n(%d module(s) of the LoRA were not applied)", report.text, report.n_not_applied)
    else:
        log.info("%s", report.text)
    return patched, report


def apply_lora(model: nn.Module, lora: ParsedLora, strength: float) -> nn.Module:
    """A new model sharing ``model``'s tensors, with ``lora``'s deltas added at ``strength``.

    ``model`` itself is never modified. Strength 0 returns ``model`` unchanged.
    """
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise ValueError(f"LoRA strength must be a finite number; got {strength!r}")
    if strength == 0:
        return model
    patched = _structural_copy(model)
    entry = _entry_name(patched.seam)
    patched.seam.attach(entry, AppliedLora(lora, strength))
    shared_hooks: dict[tuple, _LoraHook] = {}
    for path, deltas in lora.deltas.items():
        module = patched.get_submodule(path)
        if isinstance(module, nn.Linear):
            hook = _hook_linear(module, deltas, strength, getattr(model, "compute_dtype", None), shared_hooks)
            patched.seam.hook(entry, module, post=hook)
        else:
            _replace_params(module, deltas, strength)
    return patched


@dataclass(frozen=True)
class AppliedLora:
    """The seam entry of one applied LoRA (its module hooks do the work)."""

    lora: ParsedLora
    strength: float


def _entry_name(seam: Seam) -> str:
    taken = seam.names("lora")
    return "lora" if not taken else f"lora{len(taken)}"


def _lora_hooks(model: nn.Module) -> dict[str, list[_LoraHook]]:
    """module path -> the LoRA hooks on it, in the order applied."""
    found: dict[str, list[_LoraHook]] = {}
    for entry in model.seam.names("lora"):
        for path, _, hook in model.seam.module_hooks(entry):
            found.setdefault(path, []).append(hook)
    return found


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with every applied LoRA merged in (W + Σ strength·ΔW, new tensors).

    A patched model's own ``state_dict()`` holds the shared base weights (the LoRA lives in hooks),
    so code that reads weights instead of calling the model (saving, distilling) needs this.
    """
    merged = dict(model.state_dict())
    for path, hooks in _lora_hooks(model).items():
        module = model.get_submodule(path)
        weight = module.weight
        if weight.dtype not in _COMPUTE_DTYPES:
            raise ValueError(f"{path}: cannot merge a LoRA into {weight.dtype} weights; load the model "
                             f"in bf16, fp16 or fp32")
        total = weight.detach().float().clone()
        bias = None if module.bias is None else module.bias.detach().float().clone()
        for hook in hooks:
            delta_w, delta_b = hook.delta(module)
            total += delta_w
            if delta_b is not None:
                bias = delta_b if bias is None else bias + delta_b
        merged[f"{path}.weight"] = total.to(weight.dtype)
        if bias is not None:
            merged[f"{path}.bias"] = bias.to(module.bias.dtype if module.bias is not None else weight.dtype)
    return merged


# ---- the structural copy --------------------------------------------------------------------

def structural_copy(model: nn.Module) -> nn.Module:
    """A new model object sharing ``model``'s tensors, its seam copied (``_structural_copy``):
    what a node returns when it adds a seam entry without touching its input model."""
    return _structural_copy(model)


def _structural_copy(module: nn.Module) -> nn.Module:
    """New module objects all the way down; the same parameter and buffer tensors.

    Every container in a module's ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``, the hook
    dicts, the non-persistent buffer set ...) is copied too, and so is a Next-DiT's seam, so adding
    a buffer, a hook or a seam entry to the copy never reaches the original.
    """
    new = copy.copy(module)
    state = vars(new)
    for name, value in list(state.items()):
        if isinstance(value, (dict, set, list)):
            state[name] = copy.copy(value)
        elif isinstance(value, Seam):
            state[name] = value.copied_for(new)
    new._modules = {name: (None if child is None else _structural_copy(child))
                    for name, child in module._modules.items()}
    return new


# ---- Linear targets: a forward hook ---------------------------------------------------------

_COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _storage_dtype(linear: nn.Linear, compute: torch.dtype | None) -> torch.dtype:
    """LoRA tensors are kept in the layer's compute precision: its weight dtype, or for weights
    stored in fp8 the model's compute dtype (so nothing is cast per call)."""
    if linear.weight.dtype in _COMPUTE_DTYPES:
        return linear.weight.dtype
    return compute if compute in _COMPUTE_DTYPES else torch.float32


class _LoraHook:
    """Forward hook adding one LoRA's deltas to a Linear's output.

    It holds no per-layer data: the tensors (strength and scale already folded in) are
    non-persistent buffers of the Linear named ``<prefix>_*``, cast to the activation dtype at call
    time (a no-op when they already match). Layers with the same kind of patch share one hook
    object, so blocks compiled by ``dit/compile.py`` (one graph per block class) see the same
    hooks in every block and need no per-block recompilation.
    """

    def __init__(self, prefix: str, low_rank: bool, krons: tuple[tuple | None, ...],
                 denses: tuple[tuple[bool, bool, tuple | None], ...]):
        self.prefix = prefix
        self.low_rank = low_rank
        self.krons = krons      # per Kron: rows (or None)
        self.denses = denses    # per Dense: (has weight, has bias, rows)

    @property
    def config(self) -> tuple:
        return (self.prefix, self.low_rank, self.krons, self.denses)

    def __call__(self, module: nn.Linear, args: tuple, output: Tensor) -> Tensor:
        x = args[0]
        buffers = module._buffers
        p = self.prefix
        if self.low_rank:
            down, up = buffers[f"{p}_down"].to(x.dtype), buffers[f"{p}_up"].to(x.dtype)
            output = _add_low_rank(output, F.linear(x, down), up)
        for i, rows in enumerate(self.krons):
            w1, w2 = buffers[f"{p}_kron{i}_w1"].to(x.dtype), buffers[f"{p}_kron{i}_w2"].to(x.dtype)
            output = _add_rows(output, _kron_forward(x, w1, w2), rows)
        for i, (has_weight, has_bias, rows) in enumerate(self.denses):
            weight = buffers[f"{p}_dense{i}_w"].to(x.dtype) if has_weight else None
            bias = buffers[f"{p}_dense{i}_b"].to(x.dtype) if has_bias else None
            if weight is not None:
                output = _add_rows(output, F.linear(x, weight, bias), rows)
            elif bias is not None:
                output = _add_rows(output, bias.expand(*x.shape[:-1], -1), rows)
        return output

    def delta(self, module: nn.Linear) -> tuple[Tensor, Tensor | None]:
        """This hook's (ΔW [out, in], Δbias [out] or None) in fp32, strength included."""
        buffers, p, out_features = module._buffers, self.prefix, module.out_features
        delta_w = torch.zeros(module.weight.shape, dtype=torch.float32, device=module.weight.device)
        delta_b = None
        if self.low_rank:
            delta_w += buffers[f"{p}_up"].float() @ buffers[f"{p}_down"].float()
        for i, rows in enumerate(self.krons):
            kron = torch.kron(buffers[f"{p}_kron{i}_w1"].float(), buffers[f"{p}_kron{i}_w2"].float())
            delta_w += _pad_rows(kron, rows, out_features)
        for i, (has_weight, has_bias, rows) in enumerate(self.denses):
            if has_weight:
                delta_w += _pad_rows(buffers[f"{p}_dense{i}_w"].float(), rows, out_features)
            if has_bias:
                b = _pad_rows(buffers[f"{p}_dense{i}_b"].float()[:, None], rows, out_features)[:, 0]
                delta_b = b if delta_b is None else delta_b + b
        return delta_w, delta_b


def _add_low_rank(output: Tensor, hidden: Tensor, up: Tensor) -> Tensor:
    """output + hidden @ up^T; in place (one fused addmm, no temporary the size of the output)
    when nothing needs the unpatched output for a gradient."""
    in_place_ok = (output.dtype == hidden.dtype and output.is_contiguous()
                   and not (torch.is_grad_enabled() and output.requires_grad))
    if in_place_ok:
        output.view(-1, output.shape[-1]).addmm_(hidden.reshape(-1, hidden.shape[-1]), up.T)
        return output
    return output + F.linear(hidden, up).to(output.dtype)


def _kron_forward(x: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
    """x @ kron(w1, w2)^T without building the product: w1 [a, c], w2 [b, d], x [..., c·d] -> [..., a·b]."""
    c, d = w1.shape[1], w2.shape[1]
    grid = x.reshape(*x.shape[:-1], c, d)                 # (..., c, d)
    y = torch.matmul(torch.matmul(w1, grid), w2.T)       # (..., a, b)
    return y.reshape(*x.shape[:-1], w1.shape[0] * w2.shape[0])


def _add_rows(output: Tensor, delta: Tensor, rows: tuple[int, int] | None) -> Tensor:
    delta = delta.to(output.dtype)
    if rows is None:
        return output + delta
    return output + F.pad(delta, (rows[0], output.shape[-1] - rows[1]))


def _pad_rows(matrix: Tensor, rows: tuple[int, int] | None, out_features: int) -> Tensor:
    """A [rows, k] block placed at ``rows`` of an [out_features, k] matrix of zeros."""
    if rows is None:
        return matrix
    return F.pad(matrix, (0, 0, rows[0], out_features - rows[1]))


def _hook_linear(linear: nn.Linear, deltas: list, strength: float, compute: torch.dtype | None,
                 shared_hooks: dict[tuple, _LoraHook]) -> _LoraHook:
    """Keep this LoRA's deltas on ``linear`` (a copy owned by the patched model) and return the hook
    that applies them (the caller registers it through the seam).

    shared_hooks: hooks already made for this LoRA, by configuration (reused, see _LoraHook).
    """
    index = sum(isinstance(h, _LoraHook) for h in linear._forward_hooks.values())
    prefix = f"lora{index}"
    device, dtype = linear.weight.device, _storage_dtype(linear, compute)

    def keep(name: str, tensor: Tensor) -> None:
        linear.register_buffer(f"{prefix}_{name}", tensor.to(device=device, dtype=dtype), persistent=False)

    low_ranks = [d for d in deltas if isinstance(d, LowRank)]
    if low_ranks:
        # All low-rank parts of this LoRA as one pair: downs stacked, ups side by side (zero rows
        # outside a q/k/v slice), strength·scale folded into the ups.
        keep("down", torch.cat([d.down.float() for d in low_ranks]))
        keep("up", torch.cat([_pad_rows(d.up.float() * (d.scale * strength), d.rows, linear.out_features)
                              for d in low_ranks], dim=1))
    krons = [d for d in deltas if isinstance(d, Kron)]
    for i, kron in enumerate(krons):
        keep(f"kron{i}_w1", kron.w1.float() * (kron.scale * strength))
        keep(f"kron{i}_w2", kron.w2.float())
    denses = [d for d in deltas if isinstance(d, Dense)]
    for i, dense in enumerate(denses):
        if dense.weight is not None:
            keep(f"dense{i}_w", dense.weight.float() * (dense.scale * strength))
        if dense.bias is not None:
            keep(f"dense{i}_b", dense.bias.float() * (dense.scale * strength))
    hook = _LoraHook(prefix, bool(low_ranks), tuple(k.rows for k in krons),
                     tuple((d.weight is not None, d.bias is not None, d.rows) for d in denses))
    return shared_hooks.setdefault(hook.config, hook)


# ---- other targets (norm layers): new parameters on the copy --------------------------------

def _replace_params(module: nn.Module, deltas: list, strength: float) -> None:
    """``W + strength·ΔW`` as new parameters of ``module`` (a copy); only this small layer is materialised."""
    for delta in deltas:
        for name, tensor in (("weight", delta.weight), ("bias", delta.bias)):
            if tensor is None:
                continue
            base = module._parameters[name]
            merged = base.detach().float() + tensor.to(base.device).float() * (delta.scale * strength)
            module._parameters[name] = nn.Parameter(merged.to(base.dtype), requires_grad=False)


def _report(parsed: ParsedLora, strength: float) -> LoraReport:
    return LoraReport(Path(parsed.path).name, parsed.format, strength, parsed.alpha_source,
                      parsed.report_lines(), len(parsed.applied), len(parsed.not_applied))
