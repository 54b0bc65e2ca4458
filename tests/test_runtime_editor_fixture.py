"""The UI loader against the real editor's own conversion: a graph built in ComfyUI's frontend
with a PrimitiveNode on the seed, a Reroute, a bypassed LoRA loader, a muted node, a note and a
group (``tests/comfy_host/check_in_comfyui.py`` saved the workflow and the API prompt the editor
derived from it with ``app.graphToPrompt()``). The runner must derive the same prompt."""

from __future__ import annotations

import json
from pathlib import Path

from nextdit_nodes.runtime.run import runner_classes
from nextdit_nodes.runtime.workflow import load_workflow

DATA = Path(__file__).resolve().parent / "data"


def test_ui_loader_derives_the_editors_prompt():
    ui = json.loads((DATA / "editor_features_workflow.json").read_text())
    assert {"PrimitiveNode", "Reroute", "Note"} <= {n["type"] for n in ui["nodes"]}
    assert {n.get("mode") for n in ui["nodes"]} >= {2, 4} and ui["groups"]
    editor = json.loads((DATA / "editor_features_prompt.json").read_text())
    ours = load_workflow(ui, runner_classes()).to_api()
    assert set(ours) == set(editor)
    for node_id, node in editor.items():
        assert ours[node_id]["class_type"] == node["class_type"]
        assert ours[node_id]["inputs"] == node["inputs"], node_id
        assert ours[node_id]["_meta"] == node["_meta"], node_id
    # What those editor-only parts became: the primitive's value, the loader through the
    # reroute and the bypassed LoRA, and no link from the muted node.
    sampler = next(n for n in ours.values() if n["class_type"] == "NextDiTSampler")
    loader_id = next(k for k, n in ours.items() if n["class_type"] == "NextDiTLoader")
    assert sampler["inputs"]["seed"] == 777 and sampler["inputs"]["model"] == [loader_id, 0]
    character = next(n for n in ours.values() if n["class_type"] == "NextDiTXMLCharacter")
    assert "prompt" not in character["inputs"]
