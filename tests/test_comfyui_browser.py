"""The pack in a real ComfyUI, in a real browser: what the editor draws on the pack's nodes.

A ComfyUI tree and its Python (``$COMFYUI_DIR``, default /work/scratch/ComfyUI, and
``$COMFYUI_VENV``, default /work/scratch/comfy-venv) are started on a free port, loopback only,
with fresh output / input / user folders and the pack added as a custom node through an
``extra_model_paths.yaml`` of the test's own (``custom_nodes``: a folder holding a link to this
checkout), so the tree itself is not changed. ComfyUI's frontend runs in headless Debian
chromium (``tests/comfy_host/frontend.py``). Skipped where the tree, its Python, chromium or
playwright are missing.

Asserted on what the editor draws, in ComfyUI as in ``serve`` (tests/test_server_browser.py):
during a run of the embedded LoRA example the running sampler shows a preview image and its
progress bar; the text encoder given a mistyped XML tag shows its warning on the node; the LoRA
loader shows its report.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "example_workflows" / "Embedded shapes model with a LoRA.json"
COMFY_DIR = Path(os.environ.get("COMFYUI_DIR", "/work/scratch/ComfyUI"))
COMFY_PYTHON = Path(os.environ.get("COMFYUI_VENV", "/work/scratch/comfy-venv")) / "bin" / "python"
CHROMIUM = "/usr/bin/chromium"
# Modules the pack needs (requirements.txt) that a bare ComfyUI may lack; where ComfyUI's Python
# has no copy, this Python's is lent to it through PYTHONPATH.
PACK_MODULES = ("diffusers", "gguf", "peft")


def _skip_unless_available() -> None:
    missing = [str(path) for path in (COMFY_DIR / "main.py", COMFY_PYTHON, Path(CHROMIUM)) if not path.exists()]
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package")
    if missing:
        pytest.skip("a real ComfyUI test needs " + ", ".join(missing))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lent_modules(folder: Path) -> str:
    """A PYTHONPATH folder with links to this Python's copies of the pack's modules that
    ComfyUI's Python cannot import."""
    folder.mkdir()
    for name in PACK_MODULES:
        found = subprocess.run([str(COMFY_PYTHON), "-c", f"import {name}"], capture_output=True).returncode == 0
        spec = importlib.util.find_spec(name)
        if not found and spec is not None and spec.submodule_search_locations:
            (folder / name).symlink_to(list(spec.submodule_search_locations)[0])
    return str(folder)


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    """The URL of a running ComfyUI with the pack (only the embedded model's files)."""
    _skip_unless_available()
    home = tmp_path_factory.mktemp("comfyui")
    (home / "custom_nodes").mkdir()
    (home / "custom_nodes" / "nextdit-nodes").symlink_to(ROOT)
    (home / "extra_model_paths.yaml").write_text(
        f"nextdit_test:\n  base_path: {home}\n  custom_nodes: custom_nodes\n")
    for folder in ("output", "input", "temp", "user"):
        (home / folder).mkdir()
    port = _free_port()
    log = open(home / "comfyui.log", "wb")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": _lent_modules(home / "lent")}
    server = subprocess.Popen(
        [str(COMFY_PYTHON), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--disable-auto-launch", "--disable-api-nodes", "--preview-method", "auto",
         "--output-directory", str(home / "output"), "--input-directory", str(home / "input"),
         "--temp-directory", str(home / "temp"), "--user-directory", str(home / "user"),
         "--database-url", "sqlite:///:memory:", "--extra-model-paths-config", str(home / "extra_model_paths.yaml")],
        cwd=COMFY_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                info = json.loads(urllib.request.urlopen(url + "/object_info/NextDiTSampler", timeout=5).read())
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError("ComfyUI did not start:\n" + (home / "comfyui.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        assert "NextDiTSampler" in info, (home / "comfyui.log").read_text()[-3000:]
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


# Polls what the editor holds for the sampler (node 6) while it runs: its progress (the bar drawn
# on it) and its preview images (drawn on it).
WATCH_SAMPLER = """() => {
  window.__seen = {progress: 0, previews: 0};
  window.__watch = setInterval(() => {
    const sampler = app.graph.getNodeById(6);
    window.__seen.progress = Math.max(window.__seen.progress, sampler?.progress ?? 0);
    window.__seen.previews = Math.max(window.__seen.previews, app.nodePreviewImages?.['6']?.length ?? 0);
  }, 10);
}"""

PROGRESS_TEXT = """(id) => (app.graph.getNodeById(id).widgets ?? [])
    .filter(w => w.type === 'progressText').map(w => String(w.value)).join('\\n')"""


def test_the_running_node_shows_its_preview_and_progress_and_nodes_show_their_warnings(comfyui, tmp_path):
    from comfy_host.frontend import click_run, editor, load_graph

    with editor(comfyui) as (page, events):
        load_graph(page, json.loads(EXAMPLE.read_text()))
        page.evaluate("""() => { app.graph.getNodeById(4).widgets.find(w => w.name === 'prompt').value =
            '<character_1><n>circle</n><apperance>red, large</apperance>'; }""")
        page.evaluate(WATCH_SAMPLER)
        since = len(events["ws"])
        click_run(page)
        deadline = time.time() + 300
        end = None
        while end is None and time.time() < deadline:
            end = next((m for m in events["ws"][since:] if m.get("type") in (
                "execution_success", "execution_error", "execution_interrupted")), None)
            page.wait_for_timeout(100)
        page.wait_for_timeout(300)
        seen = page.evaluate("() => { clearInterval(window.__watch); return window.__seen; }")
        page.screenshot(path=str(tmp_path / "after_run.png"))
        assert end is not None and end["type"] == "execution_success", end
        assert seen["previews"] >= 1, seen            # a preview image on the running sampler
        assert 0 < seen["progress"] <= 1, seen        # its progress bar
        warning = page.evaluate(PROGRESS_TEXT, 4)
        assert "cannot be read" in warning and "encoded as written" in warning, warning
        report = page.evaluate(PROGRESS_TEXT, 9)
        assert "NextDiT-embedded-shapes-tiny.safetensors" in report and "applied" in report, report
