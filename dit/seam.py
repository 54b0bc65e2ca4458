"""The seam: the one way code outside ``dit/model.py`` changes what a Next-DiT computes.

Every NextDiT owns a ``Seam`` (``model.seam``): an ordered registry of named entries. An entry is
any object; ``attach(name, entry)`` adds it, ``detach(name)`` removes it together with everything
it registered, ``entries()`` lists what is attached and in what order. The forward asks the seam
at these named points and calls the entries that define the matching method, in attach order:

    point             called as                                      what it may do
    captions          captions(cap, ctx) -> cap                      change the refined caption tokens
    joint_layers      joint_layers(run, joint, ctx) -> joint         wrap the whole stack of joint layers
                                                                     (``run(joint, start, stop)`` runs them)
    layer_input       layer_input(index, joint, ctx) -> joint        change joint layer ``index``'s input
    attention         attention(index, q, k, v, segments, ctx, run)  replace joint layer ``index``'s
                                                                     attention (``run(q, k, v, segments)``
                                                                     is the next one: the plain attention
                                                                     or an entry attached earlier)
    layer_output      layer_output(index, joint, ctx) -> joint       change joint layer ``index``'s output
    before_final      before_final(img, ctx) -> img                  change the image tokens before the
                                                                     final layer

``ctx`` is the ``ForwardContext`` of the call (the token layout, the adaLN vector, the data time).
``joint`` holds the packed tokens of every sample, (T, dim), laid out by ``ctx.layout``. With
nothing attached at a point the forward runs exactly the plain operations.

Entries that must act inside a submodule (a LoRA's deltas on Linears, block streaming's weight
copies) register PyTorch module hooks through ``hook(name, module, pre=..., post=...)``: the seam
records them by module path, so ``detach`` removes them, also from a structural copy of the model
(``lora/apply.py``) that inherited them. Entries with no point method hold state the rest of the
pack keeps with the model (the host's memory manager, a student's recorded settings); they are
listed like the others.

Load-time changes of the module classes stay where they are made, since they change how weights
are stored rather than what is computed: precision (``dit/precision.py``) and ``torch.compile``
(``dit/compile.py``).

Torch-free apart from the type hints: the registry is plain Python.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

POINTS = ("captions", "joint_layers", "layer_input", "attention", "layer_output", "before_final")


@dataclass
class ForwardContext:
    """What one forward call gives the entries: the packed token layout (``dit/ops.TokenLayout``),
    the adaLN vector c (B, adaln_dim), the data time t (B,), the latent's (h, w), and a dict the
    entries may use to share values within the call."""

    layout: Any
    c: Any
    t: Any
    latent_hw: tuple[int, int]
    scratch: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Hook:
    path: str          # module path inside the model ('' for the model itself)
    kind: str          # "pre" or "post"
    fn: Callable


@dataclass
class _Entry:
    name: str
    value: Any
    hooks: list[_Hook] = field(default_factory=list)


class Seam:
    """The registry of one model (module docstring)."""

    def __init__(self, model):
        self._model_ref = weakref.ref(model)
        self._entries: dict[str, _Entry] = {}
        self._by_point: dict[str, tuple] = {}

    # ---- the registry ---------------------------------------------------------------------

    def attach(self, name: str, entry: Any, *, replace: bool = False) -> Any:
        """Add ``entry`` under ``name`` (after every entry attached before); returns it.
        A name already attached is an error unless ``replace`` (then the old one is detached)."""
        if name in self._entries:
            if not replace:
                raise RuntimeError(f"the model already carries {name!r} (detach it first); attached: "
                                   f"{', '.join(self._entries)}")
            self.detach(name)
        self._entries[name] = _Entry(name, entry)
        self._by_point.clear()
        return entry

    def detach(self, name: str) -> Any:
        """Remove ``name`` and the module hooks it registered; returns its entry (None if absent)."""
        record = self._entries.pop(name, None)
        if record is None:
            return None
        model = self._model_ref()
        for hook in record.hooks:
            module = model.get_submodule(hook.path)
            hooks = module._forward_pre_hooks if hook.kind == "pre" else module._forward_hooks
            for key in [key for key, fn in hooks.items() if fn is hook.fn]:
                del hooks[key]
        self._by_point.clear()
        return record.value

    def get(self, name: str, default: Any = None) -> Any:
        record = self._entries.get(name)
        return default if record is None else record.value

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self, prefix: str = "") -> list[str]:
        return [name for name in self._entries if name.startswith(prefix)]

    def entries(self) -> list[tuple[str, tuple[str, ...], int]]:
        """(name, the points it acts at, how many module hooks it holds), in attach order."""
        return [(r.name, tuple(p for p in POINTS if callable(getattr(r.value, p, None))), len(r.hooks))
                for r in self._entries.values()]

    def describe(self) -> str:
        lines = []
        for name, points, hooks in self.entries():
            what = [*points, *([f"{hooks} module hook{'s' * (hooks != 1)}"] if hooks else [])]
            lines.append(f"{name}: {', '.join(what) or 'state'}")
        return "\n".join(lines) or "nothing attached"

    def view(self) -> Mapping[str, Any]:
        """A read-only mapping name -> entry."""
        return MappingProxyType({name: r.value for name, r in self._entries.items()})

    def hook(self, name: str, module, *, pre: Callable | None = None, post: Callable | None = None) -> None:
        """Register PyTorch forward hooks on ``module`` (a submodule of the model) for entry ``name``,
        so that detaching ``name`` removes them."""
        record = self._entries[name]
        path = self._path_of(module)
        if pre is not None:
            module.register_forward_pre_hook(pre)
            record.hooks.append(_Hook(path, "pre", pre))
        if post is not None:
            module.register_forward_hook(post)
            record.hooks.append(_Hook(path, "post", post))

    def module_hooks(self, name: str) -> Iterator[tuple[str, str, Callable]]:
        """(module path, "pre"/"post", hook) of entry ``name``."""
        for hook in self._entries[name].hooks:
            yield hook.path, hook.kind, hook.fn

    def copied_for(self, model) -> Seam:
        """The registry of a structural copy of the model: the same entries and hook records
        (the copy's modules carry copies of the hook tables, so its detach finds them)."""
        new = Seam(model)
        new._entries = {name: _Entry(name, r.value, list(r.hooks)) for name, r in self._entries.items()}
        return new

    # ---- what the forward asks ------------------------------------------------------------

    def at(self, point: str) -> tuple:
        """The entries acting at ``point``, in attach order."""
        found = self._by_point.get(point)
        if found is None:
            found = self._by_point[point] = tuple(r.value for r in self._entries.values()
                                                  if callable(getattr(r.value, point, None)))
        return found

    def _path_of(self, module) -> str:
        for path, candidate in self._model_ref().named_modules():
            if candidate is module:
                return path
        raise ValueError("hook(): the module is not part of this model")
