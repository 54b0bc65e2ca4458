"""Every number input of every pack node refuses NaN, infinities and values of the wrong type before
the run, with a message naming the input, once; and at run time where a value arrives linked."""

from __future__ import annotations

import math

import pytest
import torch

from nextdit_nodes.nodes import NODE_CLASS_MAPPINGS
from nextdit_nodes.runtime.errors import ValidationError
from nextdit_nodes.runtime.graph import GraphNode, Workflow
from nextdit_nodes.runtime.specs import input_specs
from nextdit_nodes.runtime.validate import validate
from nextdit_nodes.runtime.workflow import _default_value

NUMBER_INPUTS = [(node_id, spec.name, spec.type) for node_id, cls in sorted(NODE_CLASS_MAPPINGS.items())
                 for spec in input_specs(cls).values() if spec.type in ("INT", "FLOAT")]
BAD_VALUES = [float("nan"), float("inf"), float("-inf"), "nan", "abc", None, [1], True]


def test_every_pack_node_with_numbers_is_covered():
    nodes = {node_id for node_id, _, _ in NUMBER_INPUTS}
    assert {"NextDiTSampler", "NextDiTLoraLoader", "NextDiTOfficialCFG"} <= nodes
    assert len(NUMBER_INPUTS) >= 14


def _problems(node_id: str, name: str, value) -> list[str]:
    cls = NODE_CLASS_MAPPINGS[node_id]
    inputs = {spec.name: _default_value(spec) for spec in input_specs(cls).values() if spec.is_widget}
    inputs[name] = value
    workflow = Workflow({"1": GraphNode("1", node_id, inputs)}, "api")
    try:
        validate(workflow, NODE_CLASS_MAPPINGS, ["1"])
    except ValidationError as error:
        return error.problems
    return []


@pytest.mark.parametrize("node_id,name,kind", NUMBER_INPUTS, ids=[f"{n}.{i}" for n, i, _ in NUMBER_INPUTS])
def test_bad_numbers_are_refused_once_naming_the_input(node_id, name, kind):
    for value in BAD_VALUES:
        about = [p for p in _problems(node_id, name, value) if f"input {name!r}" in p or f"{name} " in p]
        assert len(about) == 1, (value, about)
        assert "Traceback" not in about[0] and "raised" not in about[0], about
        assert any(word in about[0] for word in ("finite", "number", "whole")), about


@pytest.mark.parametrize("node_id,name,kind", [x for x in NUMBER_INPUTS if x[2] == "FLOAT"],
                         ids=[f"{n}.{i}" for n, i, k in NUMBER_INPUTS if k == "FLOAT"])
def test_comfyuis_own_range_check_refuses_non_finite_floats(node_id, name, kind):
    """ComfyUI tests a FLOAT constant with `value < min` (execution.py): for every pack FLOAT input
    that comparison is true for NaN and both infinities, and false for the default."""
    options = input_specs(NODE_CLASS_MAPPINGS[node_id])[name].options
    for value in (float("nan"), float("inf"), float("-inf")):
        assert value < options["min"]
    assert not options["default"] < options["min"] and not options["default"] > options["max"]
    assert isinstance(options["min"], float) and math.isfinite(options["min"])


@pytest.mark.parametrize("setting", ["cfg", "shift", "renorm_cfg", "cfg_trunc", "guidance", "denoise"])
def test_linked_nan_is_refused_when_the_sampler_runs(setting):
    from factories import random_dit, tiny_params
    from nextdit_nodes.sampler_settings import SamplerSettings
    from nextdit_nodes.sampling.sample import sample

    model = random_dit(tiny_params(), seed=1)
    p = model.params
    positive = [[torch.randn(1, 4, p.cap_dim), {"pooled_output": torch.randn(1, p.clip_dim)}]]
    settings = dict(width=32, height=32, seed=0, steps=2, solver="euler", shift=6.0, cfg=1.0, renorm_cfg=0.0,
                    cfg_trunc=1.0, guidance=0.0, denoise=1.0)
    settings[setting] = float("nan")
    with pytest.raises(ValueError, match=f"{setting} must be a finite number"):
        values, size = SamplerSettings.take(settings)
        sample(model, positive, None, values, **size)


def test_a_nan_lora_strength_is_refused():
    from factories import random_dit, tiny_params
    from nextdit_nodes.lora.apply import apply_lora

    with pytest.raises(ValueError, match="finite"):
        apply_lora(random_dit(tiny_params()), None, float("nan"))


@pytest.mark.parametrize("setting", ["NextDiT Sampler.cfg=nan", "NextDiT Sampler.shift=inf",
                                     "NextDiT Sampler.steps=nan"])
def test_headless_run_refuses_bad_numbers_with_exit_code_3(setting, tmp_path, capsys):
    from nextdit_nodes.commands import cli
    from nextdit_nodes.commands.demo import WORKFLOW

    code = cli.main(["run", str(WORKFLOW), "--set", setting, "--output-dir", str(tmp_path), "-q"])
    name = setting.split(".")[1].split("=")[0]
    err = capsys.readouterr().err
    # --set types an INT on the command line already; a FLOAT reaches validation
    said = f"input {name!r}" if "steps" not in setting else f"{name}=nan"
    assert code == 3 and err.count(said) == 1, err
    assert not list(tmp_path.iterdir())          # nothing ran, nothing written


def test_every_node_is_found_by_the_model_familys_names():
    # ComfyUI's /object_info sends SEARCH_ALIASES as search_aliases; the editor's search matches them.
    from nextdit_nodes.nodes import NODE_CLASS_MAPPINGS

    for cls in NODE_CLASS_MAPPINGS.values():
        assert {"newbie", "lumina", "next-dit"} <= set(cls.SEARCH_ALIASES), cls.__name__
