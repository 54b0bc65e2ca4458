"""Drive the real ComfyUI frontend in headless Chromium (Playwright): build graphs like a user,
save them as the editor does, screenshot them, press Run, follow the websocket.

Outside CI: needs a running ComfyUI (``../shared/comfy-host/comfy_run.sh``) and a Python with
``playwright`` using Debian's chromium (``comfy_setup.sh --with-e2e`` makes one). Only loopback
requests are let through. Used by ``make_example_workflows.py`` and ``check_in_comfyui.py``.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Builds a graph from {"nodes": [{type, title?, pos, size?, widgets: {name: value}, models?, mode?}],
# "links": [[from index, output slot, to index, input name]]} with the editor's own objects,
# and returns the workflow as the editor writes it into a queued prompt and its PNGs
# (app.graphToPrompt(): the saved graph plus extra.frontendVersion).
_BUILD_JS = """async (spec) => {
  const LG = window.LiteGraph || window.comfyAPI?.litegraph?.LiteGraph;
  app.graph.clear();
  const made = [];
  for (const n of spec.nodes) {
    const node = LG.createNode(n.type);
    if (!node) throw new Error("the editor does not know node type " + n.type);
    app.graph.add(node);
    if (n.title) node.title = n.title;
    for (const [name, value] of Object.entries(n.widgets || {})) {
      const widget = node.widgets?.find(w => w.name === name);
      if (!widget) throw new Error(n.type + " has no widget " + name);
      widget.value = value;
    }
    if (n.models) node.properties.models = n.models;
    if (n.mode !== undefined) node.mode = n.mode;  // 2 = muted, 4 = bypassed
    node.pos = n.pos;
    const size = node.computeSize();
    node.setSize(n.size || [Math.max(size[0], n.width || 0), size[1]]);
    made.push(node);
  }
  for (const [from, slot, to, input] of spec.links) {
    const target = made[to];
    const index = typeof input === "number" ? input : target.findInputSlot(input);
    if (index < 0) throw new Error(target.type + " has no input " + input);
    if (!made[from].connect(slot, target, index)) throw new Error("cannot link " + from + " -> " + input);
  }
  // A PrimitiveNode gets its widget only once linked: set its values now.
  spec.nodes.forEach((n, i) => {
    for (const [name, value] of Object.entries(n.after_links || {})) {
      const widget = made[i].widgets?.find(w => w.name === name);
      if (!widget) throw new Error(n.type + " has no widget " + name + " after linking");
      widget.value = value;
    }
  });
  for (const title of spec.groups || []) {  // groups only frame nodes; runners ignore them
    const group = new LG.LGraphGroup(title);
    app.graph.add(group);
  }
  app.graph.setDirtyCanvas(true, true);
  return (await app.graphToPrompt()).workflow;
}"""


@contextlib.contextmanager
def editor(url: str, width: int = 1600, height: int = 1000):
    """A page with the ComfyUI editor loaded; yields (page, events) where events collects
    websocket messages (dicts) and request paths."""
    from playwright.sync_api import sync_playwright

    events = {"ws": [], "requests": [], "console": []}

    def on_ws(ws):
        def on_frame(payload):
            if isinstance(payload, (bytes, bytearray)):
                events["ws"].append({"type": "binary", "event": int.from_bytes(payload[:4], "big")})
                return
            with contextlib.suppress(ValueError):
                events["ws"].append(json.loads(payload))
        ws.on("framereceived", on_frame)

    def loopback_only(route):
        host = urlparse(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            route.abort()

    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": width, "height": height})
        context.route("**/*", loopback_only)
        page = context.pages[0] if context.pages else context.new_page()
        page.on("websocket", on_ws)
        page.on("request", lambda r: events["requests"].append(f"{r.method} {urlparse(r.url).path}"))
        page.on("console", lambda m: events["console"].append(f"{m.type}: {m.text}"[:300]))
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_function("() => window.app && window.app.graph && document.querySelector('canvas')",
                               timeout=180_000)
        page.wait_for_timeout(1500)
        page.keyboard.press("Escape")  # a fresh user dir opens the template browser first
        page.wait_for_timeout(500)
        try:
            yield page, events
        finally:
            context.close()


def build_graph(page, spec: dict) -> dict:
    """Build ``spec`` in the editor; returns the workflow JSON the editor's Save writes."""
    return page.evaluate(_BUILD_JS, spec)


def editor_prompt(page) -> dict:
    """The API-format prompt the editor would queue for the current graph (its own conversion)."""
    return page.evaluate("async () => (await app.graphToPrompt()).output")


def load_graph(page, workflow: dict) -> None:
    """Open a UI-format workflow the way dropping the file on the canvas does."""
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    page.wait_for_timeout(1000)


def fit_view(page) -> None:
    """Hide the minimap, keep text readable when zoomed out (no low-detail rendering) and fit
    the whole graph in the view (what the "." shortcut does)."""
    page.evaluate("""async () => {
        await app.extensionManager?.setting?.set('Comfy.Minimap.Visible', false);
        await app.extensionManager?.setting?.set('LiteGraph.Canvas.MinFontSizeForLOD', 0);
        const c = app.extensionManager?.command;
        if (c) await c.execute('Comfy.Canvas.FitView'); }""")
    page.wait_for_timeout(800)


def screenshot_jpg(page, path: Path, size: tuple[int, int] = (960, 600)) -> None:
    """Screenshot the editor's canvas (left of it the sidebar, above it the tabs are cut off) and
    store it as a JPEG thumbnail (the template browser asks for ``<stem>.jpg``)."""
    import io

    from PIL import Image

    viewport = page.viewport_size
    png = page.screenshot(clip={"x": 80, "y": 90, "width": viewport["width"] - 120,
                                "height": viewport["height"] - 130})
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.thumbnail(size)
    image.save(path, "JPEG", quality=88)


def click_run(page) -> float:
    """Press the Run button like a user; returns the time it was pressed."""
    button = page.get_by_role("button", name="Run", exact=True)
    if button.count() == 0:
        button = page.locator("button:has-text('Run')")
    started = time.time()
    button.first.click()
    return started


def wait_for(events: dict, kinds: tuple[str, ...], timeout: float, page, since: int = 0) -> dict | None:
    """The first websocket message of one of ``kinds`` after index ``since``, or None on timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for message in events["ws"][since:]:
            if message.get("type") in kinds:
                return message
        page.wait_for_timeout(200)
    return None


def open_template(page, pack_folder: str, name: str, out: Path) -> list[str]:
    """Open an example from the template browser like a user: Templates -> the pack -> its card.
    Returns problems (empty when the graph loaded); screenshots the browser into ``out``."""
    page.evaluate("async () => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.wait_for_timeout(2500)
    entry = page.get_by_text(pack_folder, exact=True)
    if not entry.count():
        return ["the template browser does not list the pack"]
    entry.first.click()
    page.wait_for_timeout(2000)
    page.screenshot(path=str(out / "template_browser.png"))
    card = page.get_by_text(name, exact=True)
    if not card.count():
        return [f"the template browser has no {name!r} card"]
    card.first.click()
    page.wait_for_timeout(3000)
    page.keyboard.press("Escape")
    types = page.evaluate("() => app.graph.nodes.map(n => n.type)")
    print(f"template browser: opened {name!r} ->", types)
    return [] if "NextDiTLoader" in types else ["opening the template did not load its graph"]
