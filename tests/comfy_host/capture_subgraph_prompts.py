"""Capture the reference prompts of tests/test_runtime_subgraphs.py from the real frontend.

    python tests/comfy_host/capture_subgraph_prompts.py http://127.0.0.1:8299

Needs a running ComfyUI with the pack linked into custom_nodes (``../shared/comfy-host/comfy_run.sh``)
and ``comfyui-workflow-templates-json`` installed here. In the editor it opens the official NewBie
template, and builds a subgraph version of the embedded-model workflow (a primitive into the
sampler's steps, a reroute into a subgraph input, nested subgraphs) with the editor's own
``convertToSubgraph``; ``app.graphToPrompt()`` gives what the editor queues. Writes
``tests/data/subgraph_pack_workflow.json``, ``subgraph_pack_prompt.json`` and
``newbie_template_prompt.json``.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

from frontend import editor, load_graph

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"

_BUILD_JS = """async () => {
  const LG = window.LiteGraph || window.comfyAPI?.litegraph?.LiteGraph;
  const g = app.graph;
  const byId = id => g.getNodeById(id);
  const prim = LG.createNode("PrimitiveInt"); g.add(prim); prim.pos = [0, 600];
  prim.widgets.find(w => w.name === "value").value = 25;
  const sampler = byId(6);
  prim.connect(0, sampler, sampler.findInputSlot("steps"));
  const reroute = LG.createNode("Reroute"); g.add(reroute); reroute.pos = [300, 700];
  byId(3).connect(0, reroute, 0);
  reroute.connect(0, byId(7), byId(7).findInputSlot("vae"));
  const prompt = g.convertToSubgraph(new Set([byId(2), byId(4), byId(5)]));
  prompt.node.title = "Prompt";
  const encoders = prompt.subgraph.nodes.filter(n => n.type === "NextDiTTextEncode");
  prompt.subgraph.convertToSubgraph(new Set(encoders)).node.title = "Encode pair";
  g.convertToSubgraph(new Set([byId(6), byId(7)])).node.title = "Sample and decode";
  return await app.graphToPrompt();
}"""


def main(url: str) -> None:
    import comfyui_workflow_templates_json as templates

    template = resources.files(templates) / "templates" / "image_newbieimage_exp0_1-t2i.json"
    embedded = ROOT / "example_workflows" / "Embedded shapes model.json"
    with editor(url) as (page, _):
        load_graph(page, json.loads(template.read_text(encoding="utf-8")))
        newbie = page.evaluate("async () => await app.graphToPrompt()")
        load_graph(page, json.loads(embedded.read_text()))
        pack = page.evaluate(_BUILD_JS)
    for name, value in (("subgraph_pack_workflow.json", pack["workflow"]),
                        ("subgraph_pack_prompt.json", pack["output"]),
                        ("newbie_template_prompt.json", newbie["output"])):
        (DATA / name).write_text(json.dumps(value, indent=1))
        print("wrote", DATA / name)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8299")
