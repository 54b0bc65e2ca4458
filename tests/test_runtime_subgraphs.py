"""Subgraph workflows flattened as ComfyUI's frontend flattens them when it queues a prompt.

References: the API prompts the real frontend (1.49.6, ``app.graphToPrompt()``) produced for the
same UI workflows (``tests/comfy_host/capture_subgraph_prompts.py`` made them), and hand-built
cases whose expected prompt follows from the frontend's rules stated in ``runtime/subgraphs.py``.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from runtime_fakes import FAKE_CLASSES, ui_workflow

from nextdit_nodes.runtime.core_nodes import core_node_classes
from nextdit_nodes.runtime.errors import WorkflowError
from nextdit_nodes.runtime.graph import Link
from nextdit_nodes.runtime.run import run_workflow, runner_classes
from nextdit_nodes.runtime.subgraphs import flatten_subgraphs
from nextdit_nodes.runtime.workflow import _UIGraph, load_workflow

DATA = Path(__file__).resolve().parent / "data"
ROOT = DATA.parent.parent
CLASSES = {**core_node_classes(), **FAKE_CLASSES}


def _reference(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def test_pack_subgraph_workflow_gives_the_frontends_prompt():
    """Nested subgraphs, an outer primitive into an inner widget, a reroute into a subgraph input,
    and a promoted widget left unlinked: the prompt equals the one the real editor queued."""
    workflow = load_workflow(DATA / "subgraph_pack_workflow.json", runner_classes())
    reference = _reference("subgraph_pack_prompt.json")
    assert workflow.to_api().keys() == reference.keys()
    for node_id, entry in workflow.to_api().items():
        assert entry["class_type"] == reference[node_id]["class_type"], node_id
        assert entry["inputs"] == reference[node_id]["inputs"], node_id


def test_pack_subgraph_workflow_draws_the_same_picture_as_the_flat_one(tmp_path):
    flat = ROOT / "example_workflows" / "Embedded shapes model.json"
    _, (plain,) = run_workflow(flat, tmp_path / "flat", ["6.steps=3"])
    _, (nested,) = run_workflow(DATA / "subgraph_pack_workflow.json", tmp_path / "nested", ["9.value=3"])
    assert np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(nested)))
    # The PNG keeps the subgraphs, so dropping it on the editor restores the graph as it was.
    saved = json.loads(Image.open(nested).text["workflow"])
    assert len(saved["definitions"]["subgraphs"]) == 3


def _newbie_template() -> dict:
    package = pytest.importorskip("comfyui_workflow_templates_json",
                                  reason="the test extra installs comfyui-workflow-templates-json")
    path = resources.files(package) / "templates" / "image_newbieimage_exp0_1-t2i.json"
    return json.loads(path.read_text(encoding="utf-8"))


def test_newbie_template_links_and_ids_match_the_frontends_prompt():
    """The official NewBie template (a subgraph whose inner ids collide with outer ones, so the
    frontend renumbers them): same node ids, classes and links as the real editor's prompt."""
    data = _newbie_template()
    reference = _reference("newbie_template_prompt.json")
    flat = flatten_subgraphs(data)
    graph = _UIGraph(flat)
    kept = {str(n["id"]): n for n in flat["nodes"] if n["type"] not in ("MarkdownNote", "Note")}
    assert {i: n["type"] for i, n in kept.items()} == {i: e["class_type"] for i, e in reference.items()}
    for node_id, node in kept.items():
        links = {}
        for entry in node.get("inputs") or []:
            if entry.get("link") is not None:
                source = graph.resolve(entry["link"], entry.get("type"), node_id)
                links[(entry.get("widget") or {}).get("name") or entry["name"]] = [source.node_id, source.slot]
        expected = {name: value for name, value in reference[node_id]["inputs"].items()
                    if isinstance(value, list)}
        assert links == expected, node_id


def test_newbie_template_is_refused_naming_exactly_the_core_nodes_the_runner_lacks():
    data = _newbie_template()
    classes = runner_classes()
    reference = _reference("newbie_template_prompt.json")
    missing = {e["class_type"] for e in reference.values()} - set(classes)
    with pytest.raises(WorkflowError) as caught:
        load_workflow(data, classes)
    message = str(caught.value)
    named = {line.split("unknown node type ")[1].strip("'") for line in message.splitlines()
             if "unknown node type" in line}
    assert named == missing
    assert "subgraph" not in message.lower()
    # Every inner node is named by the id the editor shows for it.
    assert "node 41:53" in message and "node 41:30" in message


# ---- hand-built cases --------------------------------------------------------------------------

def _wrapped(mode: int = 0, promoted: dict | None = None, seed_linked: bool = False) -> dict:
    """ui_workflow with the sampler (3) moved into a subgraph instance (node 7) whose inputs are
    model, text and seed; inner ids 3 (sampler) and 1 (collides with the outer loader)."""
    data = ui_workflow()
    sampler = next(n for n in data["nodes"] if n["id"] == 3)
    data["nodes"].remove(sampler)
    inner_sampler = copy.deepcopy(sampler)
    inner_sampler["inputs"] = [{"name": "model", "type": "FAKE_MODEL", "link": 11},
                               {"name": "text", "type": "STRING", "link": 12},
                               {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 13}]
    inner_text = {"id": 1, "type": "FakeText", "mode": 0, "inputs": [], "widgets_values": ["inner"]}
    definition = {
        "id": "sub-1", "name": "Sampling",
        "inputs": [{"name": "model", "type": "FAKE_MODEL"}, {"name": "text", "type": "STRING"},
                   {"name": "seed", "type": "INT"}],
        "outputs": [{"name": "LATENT", "type": "LATENT"}],
        "nodes": [inner_sampler, inner_text],
        "links": [{"id": 11, "origin_id": -10, "origin_slot": 0, "target_id": 3, "target_slot": 0, "type": "FAKE_MODEL"},
                  {"id": 12, "origin_id": -10, "origin_slot": 1, "target_id": 3, "target_slot": 1, "type": "STRING"},
                  {"id": 13, "origin_id": -10, "origin_slot": 2, "target_id": 3, "target_slot": 2, "type": "INT"},
                  {"id": 14, "origin_id": 3, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "LATENT"}],
    }
    instance = {"id": 7, "type": "sub-1", "mode": mode,
                "inputs": [{"name": "model", "type": "FAKE_MODEL", "link": 1},
                           {"name": "text", "type": "STRING", "link": 2}],
                "outputs": [{"name": "LATENT", "type": "LATENT", "links": [3]}]}
    if promoted is not None:
        instance["widgets_values_named"] = promoted
    if seed_linked:
        data["nodes"].append({"id": 8, "type": "PrimitiveNode", "mode": 0, "widgets_values": [99]})
        instance["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 5})
        data["links"].append([5, 8, 0, 7, 2, "INT"])
    data["nodes"].append(instance)
    data["links"] = [[link[0], 7 if link[1] == 3 else link[1], link[2], 7 if link[3] == 3 else link[3], link[4],
                      link[5]] for link in data["links"]]
    data["definitions"] = {"subgraphs": [definition]}
    return data


def test_inner_inputs_resolve_across_the_boundary_and_colliding_ids_are_renumbered():
    workflow = load_workflow(_wrapped(), CLASSES)
    # Inner node 1 collides with the outer loader: renumbered to last_node_id + 1 = 7, which the
    # instance uses, so 8 (the frontend skips ids in use).
    assert set(workflow.nodes) == {"1", "2", "4", "5", "7:3", "7:8"}
    sampler = workflow.nodes["7:3"].inputs
    assert sampler["model"] == Link("1", 0) and sampler["text"] == Link("2", 0)
    assert sampler["seed"] == 7  # nothing linked outside, no promoted value: the inner widget's
    assert workflow.nodes["4"].inputs["samples"] == Link("7:3", 0)


def test_promoted_widget_value_and_outer_link_into_an_inner_widget():
    assert load_workflow(_wrapped(promoted={"seed": 123}), CLASSES).nodes["7:3"].inputs["seed"] == 123
    assert load_workflow(_wrapped(seed_linked=True), CLASSES).nodes["7:3"].inputs["seed"] == 99


def test_muted_instance_gives_nothing_downstream():
    workflow = load_workflow(_wrapped(mode=2), CLASSES)
    assert "samples" not in workflow.nodes["4"].inputs


def test_a_subgraph_that_contains_itself_is_refused():
    data = _wrapped()
    definition = data["definitions"]["subgraphs"][0]
    definition["nodes"].append({"id": 20, "type": "sub-1", "mode": 0, "inputs": []})
    with pytest.raises(WorkflowError, match="contains itself"):
        load_workflow(data, CLASSES)
