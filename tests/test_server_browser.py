"""The editor in a real browser: ``python -m nextdit_nodes serve`` on a free port, ComfyUI's frontend
in headless Chromium (Debian's ``chromium`` driven by the ``playwright`` package through
``executable_path``; no browser is downloaded), used as a person uses it.

Outside CI the tests skip where chromium or playwright is missing; ``.ci/run`` installs both.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "example_workflows" / "Embedded shapes model.json"
# Frontend 1.49.6 logs this itself on every start, whatever the server (its app-mode store reads
# app.rootGraph before the graph exists; ComfyUI v0.33.0 shows the same): not a server problem.
FRONTEND_OWN_ERRORS = ("ComfyApp graph accessed before initialization",)


def _browser_or_skip() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("the playwright package (the test extra)")
    if missing:
        why = "the browser tests need " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(why + "; .ci/run installs them")
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, output folder, the headless demo's PNG): the server and the demo run side by side."""
    _browser_or_skip()
    home = tmp_path_factory.mktemp("serve")
    port = _free_port()
    env = {**os.environ, "NEXTDIT_MODELS_DIR": str(home / "models")}  # only the embedded model
    server = subprocess.Popen(
        [sys.executable, "-m", "nextdit_nodes", "serve", "--port", str(port),
         "--output-dir", str(home / "output"), "--input-dir", str(home / "input"),
         "--user-dir", str(home / "user")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    demo = subprocess.Popen([sys.executable, "-m", "nextdit_nodes", "demo", "--output-dir", str(home / "demo")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/api/object_info", timeout=5).read()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError("serve did not start:\n" + server.stdout.read().decode()) from None
                time.sleep(0.3)
        assert demo.wait(timeout=300) == 0
        (demo_png,) = (home / "demo").glob("*.png")
        yield url, home / "output", demo_png
    finally:
        server.terminate()
        server.wait(timeout=30)
        demo.kill()


@pytest.fixture()
def page(served):
    from comfy_host.frontend import editor

    url, _, _ = served
    with editor(url) as (opened, events):
        yield opened, events


def _console_errors(events: dict) -> list[str]:
    return [line for line in events["console"] if line.startswith("error")
            and not any(known in line for known in FRONTEND_OWN_ERRORS)]


def _messages(events: dict, since: int, kind: str) -> list[dict]:
    return [m for m in events["ws"][since:] if m.get("type") == kind]


def _wait(page, events: dict, since: int, test, timeout: float = 120) -> dict | None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for message in events["ws"][since:]:
            if test(message):
                return message
        page.wait_for_timeout(100)
    return None


def _ended(message: dict) -> bool:
    return message.get("type") in ("execution_success", "execution_error", "execution_interrupted")


SHOWN_PIXELS = """async () => {
  const node = app.graph.nodes.find(n => n.type === 'SaveImage');
  const image = node?.imgs?.[0];
  if (!image) return null;
  if (!image.complete) await new Promise(done => image.onload = done);
  const canvas = document.createElement('canvas');
  canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
  const context = canvas.getContext('2d');
  context.drawImage(image, 0, 0);
  return {width: canvas.width, height: canvas.height,
          rgba: Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data)};
}"""


def test_embedded_workflow_from_the_template_browser_runs_and_shows_the_demo_picture(served, page, tmp_path):
    from comfy_host.frontend import click_run, fit_view, open_template

    page, events = page
    _, output, demo_png = served
    # The pack's nodes are in the node search (double-click on the canvas, type).
    page.mouse.dblclick(700, 600)
    page.keyboard.type("NextDiT")
    page.wait_for_timeout(1000)
    found = page.locator("[role=option]").all_inner_texts()
    page.keyboard.press("Escape")
    for name in ("NextDiT Loader", "NextDiT Sampler", "NextDiT Text Encode", "NextDiT VAE Decode"):
        assert any(text.startswith(name) for text in found), (name, found)

    assert open_template(page, "Getting Started", "Embedded shapes model", tmp_path) == []
    fit_view(page)
    since = len(events["ws"])
    click_run(page)
    end = _wait(page, events, since, _ended)
    assert end is not None and end["type"] == "execution_success", end
    progress = [m["data"] for m in _messages(events, since, "progress") if m["data"]["node"] == "6"]
    assert [p["value"] for p in progress] == list(range(1, 26)) and progress[-1]["max"] == 25
    frames = [m["event"] for m in events["ws"][since:] if m.get("type") == "binary"]
    # 25 PREVIEW_IMAGE_WITH_METADATA frames (the editor announces that it reads them), then the
    # sampler's text for the node (a TEXT frame, as core sends it)
    assert frames == [4] * 25 + [3], frames

    page.evaluate("() => app.canvas.setDirty(true, true)")
    page.wait_for_function("() => app.graph.nodes.find(n => n.type === 'SaveImage')?.imgs?.length > 0",
                           timeout=30_000)
    shown = page.evaluate(SHOWN_PIXELS)
    demo = np.asarray(Image.open(demo_png).convert("RGB"))
    pixels = np.array(shown["rgba"], dtype=np.uint8).reshape(shown["height"], shown["width"], 4)
    assert np.array_equal(pixels[..., :3], demo), f"{np.count_nonzero(pixels[..., :3] != demo)} values differ"
    assert (pixels[..., 3] == 255).all()
    # The saved PNG, dropped on the page, gives the graph back (the editor reads its chunks).
    (saved,) = output.glob("*.png")
    restored = page.evaluate("""async (name) => {
      const blob = await (await fetch(`/api/view?filename=${encodeURIComponent(name)}&type=output`)).blob();
      app.graph.clear();
      await app.handleFile(new File([blob], name, {type: 'image/png'}));
      return app.graph.nodes.map(n => [String(n.id), n.type]); }""", saved.name)
    expected = [[str(n["id"]), n["type"]] for n in json.loads(EMBEDDED.read_text())["nodes"]]
    assert sorted(restored) == sorted(expected)
    assert _console_errors(events) == []


WATCH_NODES = """() => {
  window.__seen = {progress: 0, previews: 0};
  window.__watch = setInterval(() => {
    const sampler = app.graph.getNodeById(6);
    window.__seen.progress = Math.max(window.__seen.progress, sampler?.progress ?? 0);
    window.__seen.previews = Math.max(window.__seen.previews, app.nodePreviewImages?.['6']?.length ?? 0);
  }, 10);
}"""

PROGRESS_TEXT = """(id) => (app.graph.getNodeById(id).widgets ?? [])
    .filter(w => w.type === 'progressText').map(w => String(w.value)).join('\\n')"""


def test_the_running_node_shows_its_preview_progress_and_warnings(page):
    # What the editor draws, not only what was sent: the sampler's preview image and progress bar
    # (frontend 1.49.6 takes them from previews with metadata and progress_state), and the
    # warnings of a mistyped XML tag on the text encoder, in the progress text core's nodes use.
    from comfy_host.frontend import click_run, load_graph

    page, events = page
    load_graph(page, json.loads(EMBEDDED.read_text()))
    page.evaluate("""() => { app.graph.getNodeById(4).widgets.find(w => w.name === 'prompt').value =
        '<character_1><n>circle</n><apperance>red, large</apperance>'; }""")
    page.evaluate(WATCH_NODES)
    since = len(events["ws"])
    click_run(page)
    end = _wait(page, events, since, _ended)
    page.wait_for_timeout(300)
    seen = page.evaluate("() => { clearInterval(window.__watch); return window.__seen; }")
    assert end is not None and end["type"] == "execution_success", end
    assert seen["previews"] >= 1, seen            # a preview image on the running sampler
    assert 0 < seen["progress"] <= 1, seen        # its progress bar
    states = _messages(events, since, "progress_state")
    assert states and states[-1]["data"]["nodes"]["6"]["state"] == "finished"
    warning = page.evaluate(PROGRESS_TEXT, 4)
    assert "cannot be read" in warning and "encoded as written" in warning, warning
    assert "apperance" in warning or "cannot be read" in warning


def test_an_invalid_value_marks_the_node_and_shows_the_error(page):
    from comfy_host.frontend import click_run, load_graph

    page, events = page
    load_graph(page, json.loads(EMBEDDED.read_text()))
    page.evaluate("() => { app.graph.getNodeById(6).widgets.find(w => w.name === 'width').value = -16; }")
    since = len(events["ws"])
    click_run(page)
    page.wait_for_function("() => app.graph.getNodeById(6).has_errors === true", timeout=30_000)
    errors = page.evaluate("() => window.app.lastNodeErrors")
    assert list(errors) == ["6"]
    (error,) = errors["6"]["errors"]
    assert error["type"] == "value_smaller_than_min" and error["extra_info"]["input_name"] == "width"
    assert "-16 is smaller than the minimum 0" in error["details"]
    page.get_by_text("has a value below the minimum for width").first.wait_for(timeout=10_000)  # toast
    assert not _messages(events, since, "execution_start")  # nothing ran
    # The console reports the rejection itself (the HTTP 400 and the editor's PromptExecutionError,
    # as with ComfyUI), and nothing else.
    rejection = ("status of 400 (Bad Request)", "PromptExecutionError: Prompt execution failed")
    assert all(any(part in line for part in rejection) for line in _console_errors(events))


def test_cancel_stops_a_long_run_and_the_next_run_succeeds(page):
    from comfy_host.frontend import click_run, load_graph

    page, events = page
    load_graph(page, json.loads(EMBEDDED.read_text()))
    set_steps = "(steps) => { app.graph.getNodeById(6).widgets.find(w => w.name === 'steps').value = steps; }"
    page.evaluate(set_steps, 1000)
    since = len(events["ws"])
    click_run(page)
    assert _wait(page, events, since, lambda m: m.get("type") == "progress" and m["data"]["value"] >= 3
                 and m["data"]["max"] == 1000) is not None
    page.get_by_role("button", name="Cancel current run").first.click()
    end = _wait(page, events, since, _ended, timeout=60)
    assert end is not None and end["type"] == "execution_interrupted", end
    assert end["data"]["node_id"] == "6" and end["data"]["node_type"] == "NextDiTSampler"
    assert max(m["data"]["value"] for m in _messages(events, since, "progress")) < 1000

    page.evaluate(set_steps, 5)
    again = len(events["ws"])
    click_run(page)
    end = _wait(page, events, again, _ended)
    assert end is not None and end["type"] == "execution_success", end
    # The loaders and the encoders came from the runner's cache, kept across prompts.
    (cached,) = _messages(events, again, "execution_cached")
    assert {"1", "2", "3", "4", "5"} <= set(cached["data"]["nodes"])


@pytest.mark.parametrize("example", sorted((ROOT / "example_workflows").glob("*.json")), ids=lambda p: p.stem)
def test_no_node_of_an_example_covers_another_as_the_editor_draws_it(page, example):
    """The boxes the editor draws (its own ``boundingRect``: title bar included, and sizes grown
    to what each node's widgets and slots need, which can exceed the size stored in the file)."""
    from comfy_host.frontend import load_graph

    page, _ = page
    workflow = json.loads(example.read_text())
    load_graph(page, workflow)
    boxes = page.evaluate("() => app.graph.nodes.map(n => [n.id, ...n.boundingRect])")
    assert len(boxes) == len(workflow["nodes"]) and all(box[3] > 0 and box[4] > 30 for box in boxes), boxes
    for i, (a, ax, ay, aw, ah) in enumerate(boxes):
        for b, bx, by, bw, bh in boxes[i + 1:]:
            assert not (ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah), (a, b, boxes)


def test_the_template_browser_opens_on_the_packs_examples(page):
    """Opened as a user opens it (the Templates button's command), the browser shows the pack's
    examples at once, not "No templates found" (a new user's browser opens on Getting Started,
    later ones on All Templates), and each card has its thumbnail. Last in this file: the first
    page of a new user marks the editor's tutorial done, and from then on the editor opens its
    own default graph (core nodes) on every page, which the other tests' clicks would hit."""
    page, _ = page
    page.evaluate("async () => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.get_by_text("Embedded shapes model", exact=True).first.wait_for(timeout=30_000)
    text = page.evaluate("() => document.querySelector('[role=dialog]').innerText")
    assert "No templates found" not in text
    thumbnail = page.locator("[role=dialog] img[alt='Embedded shapes model']").first
    thumbnail.wait_for(timeout=30_000)
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle(),
                           timeout=30_000)
