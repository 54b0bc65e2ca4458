"""Workflow loading: UI (0.4, 1.0) and API formats into one graph, with the frontend's rules."""

from __future__ import annotations

import copy
import json

import pytest
from runtime_fakes import FAKE_CLASSES, ui_workflow

from nextdit_nodes.runtime.core_nodes import core_node_classes
from nextdit_nodes.runtime.errors import ValidationError, WorkflowError
from nextdit_nodes.runtime.graph import Link
from nextdit_nodes.runtime.validate import needed_nodes, validate
from nextdit_nodes.runtime.workflow import load_workflow

CLASSES = {**core_node_classes(), **FAKE_CLASSES}


def _sampler_inputs(data):
    return load_workflow(data, CLASSES).nodes["3"].inputs


@pytest.mark.parametrize("version", [0.4, 1])
def test_ui_widgets_map_onto_inputs_in_input_types_order(version):
    inputs = _sampler_inputs(ui_workflow(version=version))
    # "randomize" is the frontend's control value after the seed, not a widget of its own.
    assert inputs == {"seed": 7, "steps": 3, "cfg": 2.5, "solver": "midpoint", "denoise": 1.0,
                      "model": Link("1", 0), "text": Link("2", 0)}


def test_seed_without_control_value_still_maps():
    inputs = _sampler_inputs(ui_workflow(sampler_widgets=[7, 3, 2.5, "euler", 0.5]))
    assert (inputs["seed"], inputs["steps"], inputs["solver"], inputs["denoise"]) == (7, 3, "euler", 0.5)


def test_notes_groups_and_titles():
    workflow = load_workflow(ui_workflow(), CLASSES)
    assert set(workflow.nodes) == {"1", "2", "3", "4", "5"}  # the Note (6) is left out
    assert workflow.nodes["3"].title == "Sampler"
    assert workflow.nodes["1"].title == "Fake Loader"  # no title saved: the display name
    assert workflow.find("Sampler").id == "3" and workflow.find("4").id == "4"


def test_api_format_and_round_trip():
    ui = load_workflow(ui_workflow(), CLASSES)
    api = ui.to_api()
    assert api["3"]["inputs"]["model"] == ["1", 0] and api["3"]["inputs"]["seed"] == 7
    assert api["3"]["_meta"]["title"] == "Sampler"
    again = load_workflow(json.loads(json.dumps(api)), CLASSES)
    assert again.format == "api"
    assert {k: v.inputs for k, v in again.nodes.items()} == {k: v.inputs for k, v in ui.nodes.items()}
    body = load_workflow({"prompt": api, "extra_data": {"extra_pnginfo": {"workflow": ui.ui}}}, CLASSES)
    assert body.ui == ui.ui


def test_widget_converted_to_input_takes_the_link():
    data = ui_workflow(extra_nodes=[
        {"id": 7, "type": "PrimitiveInt", "mode": 0, "inputs": [],
         "outputs": [{"name": "INT", "type": "INT", "links": [5]}], "widgets_values": [42, "fixed"]}],
        extra_links=[[5, 7, 0, 3, 2, "INT"]])
    data["nodes"][2]["inputs"][2]["link"] = 5
    inputs = _sampler_inputs(data)
    assert inputs["seed"] == Link("7", 0)


def test_primitive_node_and_reroute_are_resolved():
    data = ui_workflow(extra_nodes=[
        {"id": 7, "type": "PrimitiveNode", "mode": 0, "inputs": [],
         "outputs": [{"name": "INT", "type": "INT", "links": [5], "widget": {"name": "seed"}}],
         "widgets_values": [99, "increment"]},
        {"id": 8, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 6}],
         "outputs": [{"name": "", "type": "FAKE_MODEL", "links": [7]}]}],
        extra_links=[[5, 7, 0, 3, 2, "INT"], [6, 1, 0, 8, 0, "FAKE_MODEL"], [7, 8, 0, 3, 0, "FAKE_MODEL"]])
    data["nodes"][2]["inputs"][2]["link"] = 5
    data["nodes"][2]["inputs"][0]["link"] = 7
    workflow = load_workflow(data, CLASSES)
    inputs = workflow.nodes["3"].inputs
    assert inputs["seed"] == 99 and inputs["model"] == Link("1", 0)
    assert "7" not in workflow.nodes and "8" not in workflow.nodes
    # --set on a primitive-fed input edits the primitive's widget in the UI JSON.
    workflow.set_input("3", "seed", 5)
    assert workflow.ui["nodes"][6]["widgets_values"][0] == 5


def test_bypassed_node_passes_its_same_type_input_through():
    # Node 9 (bypassed) sits between the loader and the sampler: the sampler gets the loader.
    data = ui_workflow(extra_nodes=[
        {"id": 9, "type": "FakeLoaderPatch", "mode": 4,
         "inputs": [{"name": "scale", "type": "FLOAT", "link": None},
                    {"name": "model", "type": "FAKE_MODEL", "link": 6}],
         "outputs": [{"name": "FAKE_MODEL", "type": "FAKE_MODEL", "links": [7]}]}],
        extra_links=[[6, 1, 0, 9, 1, "FAKE_MODEL"], [7, 9, 0, 3, 0, "FAKE_MODEL"]])
    data["nodes"][2]["inputs"][0]["link"] = 7
    workflow = load_workflow(data, CLASSES)  # its type is unknown, but bypassed nodes never run
    assert workflow.nodes["3"].inputs["model"] == Link("1", 0)


def test_muted_node_is_left_out_with_its_links():
    data = ui_workflow()
    data["nodes"][0]["mode"] = 2
    workflow = load_workflow(data, CLASSES)
    assert "1" not in workflow.nodes and "model" not in workflow.nodes["3"].inputs
    with pytest.raises(ValidationError, match=r'node 3 "Sampler" \(FakeSampler\).*\'model\' is missing'):
        validate(workflow, CLASSES, needed_nodes(workflow, CLASSES))


def test_missing_widgets_values_use_defaults():
    data = ui_workflow()
    del data["nodes"][2]["widgets_values"]
    inputs = _sampler_inputs(data)
    assert (inputs["seed"], inputs["steps"], inputs["cfg"], inputs["solver"]) == (0, 4, 3.0, "euler")


# ---- bad workflows: each error names the node ------------------------------------------------

def test_missing_link_target(tmp_path):
    data = ui_workflow()
    data["links"][0][1] = 77  # the loader link now comes from node 77, which does not exist
    with pytest.raises(WorkflowError, match=r'node 3 "Sampler" \(FakeSampler\).*node 77, which is not in'):
        load_workflow(data, CLASSES)
    data = ui_workflow()
    data["links"] = data["links"][1:]  # link 1 is referenced but not defined
    with pytest.raises(WorkflowError, match=r'node 3 "Sampler".*link 1'):
        load_workflow(data, CLASSES)


def test_api_link_to_missing_node():
    api = load_workflow(ui_workflow(), CLASSES).to_api()
    api["4"]["inputs"]["samples"] = ["42", 0]
    workflow = load_workflow(api, CLASSES)
    with pytest.raises(ValidationError, match=r"node 4 \(FakeDecode\): input 'samples' is linked to node 42"):
        validate(workflow, CLASSES, list(workflow.nodes))


def test_cycle():
    api = load_workflow(ui_workflow(), CLASSES).to_api()
    api["3"]["inputs"]["text"] = ["4", 0]  # decode -> sampler -> decode
    workflow = load_workflow(api, CLASSES)
    with pytest.raises(ValidationError, match=r"dependency cycle: node [34] .* -> node [34] .* -> node [34]"):
        needed_nodes(workflow, CLASSES)


def test_unknown_node_type():
    data = ui_workflow()
    data["nodes"][3]["type"] = "KSamplerAdvancedPlus"
    with pytest.raises(WorkflowError, match=r"node 4: unknown node type 'KSamplerAdvancedPlus'"):
        load_workflow(data, CLASSES)


def test_wrong_widget_count():
    with pytest.raises(WorkflowError, match=r'node 3 "Sampler" \(FakeSampler\): widgets_values has 4 values'):
        load_workflow(ui_workflow(sampler_widgets=[7, "fixed", 3, 2.5]), CLASSES)
    with pytest.raises(WorkflowError, match=r"widgets_values has 7 values"):
        load_workflow(ui_workflow(sampler_widgets=[7, "fixed", 3, 2.5, "euler", 1.0, 9]), CLASSES)


def test_non_json_and_non_workflow_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": [1, 2,,]}')
    with pytest.raises(WorkflowError, match=r"not valid JSON \(line 1, column 17"):
        load_workflow(bad, CLASSES)
    other = tmp_path / "other.json"
    other.write_text('{"hello": "world"}')
    with pytest.raises(WorkflowError, match="not a ComfyUI workflow"):
        load_workflow(other, CLASSES)
    with pytest.raises(WorkflowError, match="does not exist"):
        load_workflow(tmp_path / "nope.json", CLASSES)


def test_bad_values_are_named():
    api = load_workflow(ui_workflow(), CLASSES).to_api()
    bad = copy.deepcopy(api)
    bad["3"]["inputs"].update(steps=500, solver="rk4", cfg="lots")
    workflow = load_workflow(bad, CLASSES)
    with pytest.raises(ValidationError) as info:
        validate(workflow, CLASSES, list(workflow.nodes))
    text = str(info.value)
    # steps is named in VALIDATE_INPUTS, so its default range check is skipped (as in ComfyUI)
    assert "'steps'" not in text
    assert "input 'solver': 'rk4' is not one of the choices: 'euler', 'midpoint'" in text
    assert "input 'cfg': 'lots' is not a number" in text
    bad["3"]["inputs"].update(steps=13, solver="euler", cfg=1.0)
    with pytest.raises(ValidationError, match="13 steps are unlucky"):
        validate(load_workflow(bad, CLASSES), CLASSES, list(bad))
    bad["3"]["inputs"].update(steps=3, seed=-1)
    with pytest.raises(ValidationError, match="'seed': -1 is smaller than the minimum 0"):
        validate(load_workflow(bad, CLASSES), CLASSES, list(bad))


def test_type_mismatch_is_named():
    api = load_workflow(ui_workflow(), CLASSES).to_api()
    api["4"]["inputs"]["samples"] = ["1", 0]
    workflow = load_workflow(api, CLASSES)
    with pytest.raises(ValidationError, match=r"node 4 \(FakeDecode\): input 'samples' expects LATENT but is "
                                              r"linked to a FAKE_MODEL output"):
        validate(workflow, CLASSES, list(workflow.nodes))


def test_workflow_from_a_saved_png(tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    data = ui_workflow()
    info = PngInfo()
    info.add_text("prompt", json.dumps(load_workflow(data, CLASSES).to_api()))
    info.add_text("workflow", json.dumps(data))
    Image.new("RGB", (4, 4)).save(tmp_path / "saved.png", pnginfo=info)
    workflow = load_workflow(tmp_path / "saved.png", CLASSES)
    assert workflow.format == "ui" and workflow.nodes["3"].inputs["seed"] == 7
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(WorkflowError, match="carries no workflow"):
        load_workflow(tmp_path / "plain.png", CLASSES)


def test_validate_inputs_gets_linked_types():
    seen = {}

    class Typed(FAKE_CLASSES["FakeDecode"]):
        @classmethod
        def VALIDATE_INPUTS(cls, input_types, samples=None):
            seen.update(input_types=input_types, samples=samples)
            return True

    classes = {**CLASSES, "FakeDecode": Typed}
    workflow = load_workflow(ui_workflow(), classes)
    validate(workflow, classes, needed_nodes(workflow, classes))
    assert seen == {"input_types": {"samples": "LATENT"}, "samples": None}
