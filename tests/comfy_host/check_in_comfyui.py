"""The pack inside real ComfyUI with the real frontend (issue 7, point 4; outside CI).

Checks, against a running ComfyUI that has the pack linked as ``custom_nodes/nextdit-nodes`` and
the tiny random-weight files of ``tests/runtime_models.py`` in its models folder:
  1. the pack imported without errors or warnings (from the server log);
  2. every pack node is in /object_info with a description and a tooltip on every input;
  3. the examples are listed in /api/workflow_templates and their thumbnails are served;
  4. a graph built in the editor from the pack's nodes runs with the Run button to
     execution_success, with progress messages for the sampler; the saved workflow and the image
     ComfyUI wrote are kept as test fixtures (tests/data/);
  5. a longer run is interrupted from the editor and stops early (execution_interrupted);
  6. the template browser lists the pack and opens an example; a PNG written by the headless
     runner, dropped on the editor, restores its graph (with --headless-png).

  python tests/runtime_models.py ~/scratch/ComfyUI/models
  SCRATCH=~/scratch ../shared/comfy-host/comfy_run.sh --port 8199 --isolated
  python -m nextdit_nodes run tests/data/frontend_tiny_workflow.json \
      --models-dir ~/scratch/ComfyUI/models --output-dir /tmp/headless
  ~/scratch/e2e-venv/bin/python tests/comfy_host/check_in_comfyui.py --log ~/scratch/comfy-8199.log \
      --headless-png /tmp/headless/hostcheck_00001_.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from frontend import build_graph, click_run, editor, editor_prompt, fit_view, open_template, wait_for

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data"
PACK_FOLDER = "nextdit-nodes"
SEED = 1234


def get(url: str):
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def check_import(log: Path) -> list[str]:
    """No import failure, and no warning or traceback anywhere up to the import summary (the
    pack's own log lines do not carry its name, so the whole start-up is checked)."""
    lines = log.read_text(errors="replace").splitlines()
    end = next((i for i, line in enumerate(lines) if "Import times for custom nodes" in line), len(lines))
    ours = [line for line in lines if PACK_FOLDER in line]
    bad = [line for line in lines[:end + 10] if any(word in line for word in (
        "IMPORT FAILED", "Cannot import", "WARNING", "Traceback", "[WARN"))]
    print("import lines:", *ours, sep="\n  ")
    return bad + ([] if ours else ["the pack is not in the import summary"])


def check_object_info(url: str) -> list[str]:
    info = json.loads(get(f"{url}/object_info")[2])
    problems, ours = [], {k: v for k, v in info.items() if k.startswith("NextDiT")}
    for node_id, entry in ours.items():
        if not entry.get("description"):
            problems.append(f"{node_id}: no description")
        for section in ("required", "optional"):
            for name, spec in (entry["input"].get(section) or {}).items():
                if len(spec) < 2 or not spec[1].get("tooltip"):
                    problems.append(f"{node_id}.{name}: no tooltip")
        if entry.get("python_module") != f"custom_nodes.{PACK_FOLDER}":
            problems.append(f"{node_id}: python_module {entry.get('python_module')}")
    print(f"/object_info: {len(info)} nodes, ours: {sorted(ours)}")
    return problems


def check_templates(url: str) -> list[str]:
    listed = json.loads(get(f"{url}/api/workflow_templates")[2]).get(PACK_FOLDER, [])
    print(f"/api/workflow_templates[{PACK_FOLDER}]: {listed}")
    problems = [] if len(listed) >= 3 else [f"only {listed} listed"]
    for stem in listed:
        quoted = urllib.request.quote(stem)
        status, kind, body = get(f"{url}/api/workflow_templates/{PACK_FOLDER}/{quoted}.jpg")
        print(f"  {stem}.jpg: HTTP {status} {kind} {len(body)} bytes")
        if status != 200 or not body.startswith(b"\xff\xd8"):
            problems.append(f"{stem}.jpg not served as a JPEG")
    return problems


def tiny_graph(steps: int, size: int) -> dict:
    """Text to image with the pack's nodes only (and SaveImage), small enough for a CPU."""
    return {"nodes": [
        {"type": "NextDiTLoader", "pos": [0, 0], "width": 330,
         "widgets": {"dit_name": "NewBie-Image-Exp0.1-bf16.safetensors", "weight_dtype": "fp32"}},
        {"type": "NextDiTTextEncoderLoader", "pos": [0, 160], "width": 330,
         "widgets": {"gemma_name": "gemma_3_4b_it_bf16.safetensors",
                     "jina_name": "jina_clip_v2_bf16.safetensors", "device": "cpu", "dtype": "fp32"}},
        {"type": "NextDiTVAELoader", "pos": [0, 380], "width": 330, "widgets": {"vae_name": "ae.safetensors"}},
        {"type": "NextDiTXMLCharacter", "pos": [400, -620], "size": [340, 380],
         "widgets": {"n": "$character_1$", "gender": "1girl", "appearance": "blue_hair, red_eyes",
                     "clothing": "serafuku", "body_type": "", "expression": "smile",
                     "action": "waving", "interaction": "", "position": "center"}},
        {"type": "NextDiTTextEncode", "title": "Positive", "pos": [400, 0], "size": [380, 220],
         "widgets": {"prompt": "", "system_prompt": "xml (official)", "custom_system_prompt": ""}},
        {"type": "NextDiTTextEncode", "title": "Negative", "pos": [400, 260], "size": [380, 200],
         "widgets": {"prompt": "", "system_prompt": "none", "custom_system_prompt": ""}},
        {"type": "NextDiTSampler", "pos": [820, 0], "width": 300,
         "widgets": {"width": size, "height": size, "batch_size": 1, "seed": SEED,
                     "control_after_generate": "fixed", "steps": steps, "solver": "euler",
                     "shift": 6.0, "cfg": 4.0, "renorm_cfg": 0.0, "cfg_trunc": 100.0,
                     "guidance": 0.0, "denoise": 1.0}},
        {"type": "NextDiTVAEDecode", "pos": [1160, 0], "widgets": {"tiled": "off"}},
        {"type": "SaveImage", "pos": [1440, 0], "size": [300, 340], "widgets": {"filename_prefix": "hostcheck"}},
    ], "links": [[3, 0, 4, "prompt"], [1, 0, 4, "text_encoders"], [1, 0, 5, "text_encoders"],
                 [0, 0, 6, "model"], [4, 0, 6, "positive"], [5, 0, 6, "negative"],
                 [2, 0, 7, "vae"], [6, 0, 7, "samples"], [7, 0, 8, "images"]]}


def free_cache(url: str) -> None:
    """Empty the server's output cache (POST /free), so the run below really executes."""
    request = urllib.request.Request(f"{url}/free", data=json.dumps(
        {"unload_models": True, "free_memory": True}).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=60).read()
    time.sleep(2)  # the worker resets its caches between prompts


def run_and_keep_fixture(page, events, url: str, out: Path) -> list[str]:
    free_cache(url)
    workflow = build_graph(page, tiny_graph(steps=4, size=64))
    fit_view(page)
    page.screenshot(path=str(out / "host_graph.png"))
    start = len(events["ws"])
    pressed = click_run(page)
    done = wait_for(events, ("execution_success", "execution_error", "execution_interrupted"), 600,
                    page, start)
    print(f"Run pressed: {done and done['type']} after {time.time() - pressed:.1f} s")
    if not done or done["type"] != "execution_success":
        return [f"run did not succeed: {json.dumps(done)[:2000]}"]
    page.wait_for_timeout(3000)
    page.screenshot(path=str(out / "host_after_run.png"))
    messages = events["ws"][start:]
    progress = [m["data"] for m in messages if m.get("type") == "progress"]
    print("progress messages:", [(p["node"], p["value"], p["max"]) for p in progress])
    executed = [m["data"] for m in messages if m.get("type") == "executed"]
    image = executed[-1]["output"]["images"][0]
    query = urllib.parse.urlencode(image)
    _, _, png = get(f"{url}/api/view?{query}")
    import io

    from PIL import Image

    # Keep the workflow exactly as the editor sent it with the prompt (ComfyUI put it in the PNG).
    sent = json.loads(Image.open(io.BytesIO(png)).text["workflow"])
    (out / "built_workflow.json").write_text(json.dumps(workflow, indent=1))
    built = {(n["id"], n["type"], json.dumps(n.get("widgets_values"))) for n in workflow["nodes"]}
    assert {(n["id"], n["type"], json.dumps(n.get("widgets_values"))) for n in sent["nodes"]} == built, \
        "the editor sent the graph it built"
    DATA.mkdir(exist_ok=True)
    (DATA / "frontend_tiny_workflow.json").write_text(json.dumps(sent, indent=1) + "\n")
    (DATA / "frontend_tiny_comfyui_output.png").write_bytes(png)
    print(f"kept tests/data/frontend_tiny_workflow.json and the ComfyUI image {image} ({len(png)} bytes)")
    sampler_steps = [p for p in progress if p["max"] == 4]
    return [] if len(sampler_steps) >= 4 else ["no per-step progress for the sampler"]


def interrupt_a_long_run(page, events, out: Path) -> list[str]:
    build_graph(page, tiny_graph(steps=400, size=256))
    start = len(events["ws"])
    click_run(page)
    first = None
    deadline = time.time() + 300
    while first is None and time.time() < deadline:  # wait for the sampler's first steps
        first = next((m for m in events["ws"][start:] if m.get("type") == "progress"
                      and m["data"]["max"] == 400 and m["data"]["value"] >= 2), None)
        page.wait_for_timeout(200)
    page.screenshot(path=str(out / "host_progress.png"))  # the node's progress bar mid-run
    cancel = page.locator("button[aria-label*='Cancel' i], button[aria-label*='Interrupt' i]")
    how = "the editor's cancel button"
    if cancel.count():
        cancel.first.click()
    else:
        how = "app.api.interrupt()"
        page.evaluate("() => app.api.interrupt()")
    done = wait_for(events, ("execution_success", "execution_error", "execution_interrupted"), 300,
                    page, start)
    steps = [m["data"]["value"] for m in events["ws"][start:]
             if m.get("type") == "progress" and m["data"]["max"] == 400]
    print(f"interrupt via {how}: {done and done['type']}, last sampler step {max(steps or [0])} of 400")
    if not done or done["type"] != "execution_interrupted":
        return [f"not interrupted: {json.dumps(done)[:500]}"]
    return [] if max(steps) < 400 else ["sampling ran to the end"]


def editor_features_graph() -> dict:
    """The tiny graph plus what only the editor knows: a PrimitiveNode on the seed, a Reroute, a
    bypassed LoRA loader, a muted builder node, a note and a group."""
    spec = tiny_graph(steps=2, size=32)
    spec["nodes"] += [
        {"type": "PrimitiveNode", "title": "Seed", "pos": [820, -200], "after_links": {"seed": 777, "control_after_generate": "fixed"}},
        {"type": "Reroute", "pos": [360, -60]},
        {"type": "NextDiTLoraLoader", "pos": [500, -260], "mode": 4,
         "widgets": {"lora_name": "style.safetensors", "strength": 0.5}},
        {"type": "NextDiTXMLCharacter", "title": "Muted character", "pos": [0, -700], "mode": 2,
         "widgets": {"n": "x", "gender": "1boy"}},
        {"type": "Note", "pos": [0, 500], "widgets": {"text": "notes are ignored"}},
    ]
    spec["links"] = [link for link in spec["links"] if link[:2] != [0, 0]] + [
        [9, 0, 6, "seed"], [0, 0, 10, 0], [10, 0, 11, "model"], [11, 0, 6, "model"],
        [12, 0, 3, "prompt"]]
    spec["groups"] = ["Loaders"]
    return spec


def keep_editor_conversion_fixture(page) -> list[str]:
    """Save the editor-made workflow and the API prompt the editor itself derives from it; the
    runner's UI loader must derive the same (tests/test_runtime_editor_fixture.py)."""
    workflow = build_graph(page, editor_features_graph())
    prompt = editor_prompt(page)
    (DATA / "editor_features_workflow.json").write_text(json.dumps(workflow, indent=1) + "\n")
    (DATA / "editor_features_prompt.json").write_text(json.dumps(prompt, indent=1) + "\n")
    print(f"editor features: {len(workflow['nodes'])} UI nodes -> {len(prompt)} prompt nodes: "
          f"{sorted((k, v['class_type']) for k, v in prompt.items())}")
    return []


def check_template_browser(page, out: Path) -> list[str]:
    return open_template(page, PACK_FOLDER, "NewBie XML text to image", out)


def check_png_restores_graph(page, png_path: Path) -> list[str]:
    """Drop a PNG written by the headless runner on the editor: the graph must come back."""
    import base64

    from PIL import Image

    expected = json.loads(Image.open(png_path).text["workflow"])
    restored = page.evaluate("""async (b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        await app.handleFile(new File([bytes], "headless.png", {type: "image/png"}));
        await new Promise(r => setTimeout(r, 1500));
        return app.graph.serialize().nodes.map(n => [n.id, n.type, n.widgets_values]);
    }""", base64.b64encode(png_path.read_bytes()).decode())
    wanted = {n["id"]: (n["type"], n.get("widgets_values") or []) for n in expected["nodes"]}
    print(f"dropped {png_path.name}: {len(restored)} nodes restored")
    # A widget the node gained after the PNG was written comes back at its default, at the end.
    same = len(restored) == len(wanted) and all(
        node_id in wanted and wanted[node_id][0] == kind
        and (values or [])[:len(wanted[node_id][1])] == wanted[node_id][1]
        for node_id, kind, values in restored)
    return [] if same else [f"the dropped PNG restored {restored} instead of {wanted}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8199")
    parser.add_argument("--log", type=Path, required=True, help="the ComfyUI server log")
    parser.add_argument("--out", type=Path, default=Path("host_check"), help="screenshots")
    parser.add_argument("--headless-png", type=Path, default=None,
                        help="a PNG saved by `python -m nextdit_nodes run`, to drop on the editor")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    problems = check_import(args.log) + check_object_info(args.url) + check_templates(args.url)
    with editor(args.url) as (page, events):
        problems += check_template_browser(page, args.out)
        problems += keep_editor_conversion_fixture(page)
        problems += run_and_keep_fixture(page, events, args.url, args.out)
        problems += interrupt_a_long_run(page, events, args.out)
        if args.headless_png:
            problems += check_png_restores_graph(page, args.headless_png)
    print("PROBLEMS:", *problems, sep="\n  ") if problems else print("all host checks passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
