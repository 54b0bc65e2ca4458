"""A workflow made in the real ComfyUI editor (``tests/comfy_host/check_in_comfyui.py`` built it
with the pack's nodes, pressed Run, and kept the saved workflow and ComfyUI's output image) runs
headlessly to the same image for the same seed, on the same tiny random-weight files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from nextdit_nodes.runtime.run import run_workflow

DATA = Path(__file__).resolve().parent / "data"
WORKFLOW = DATA / "frontend_tiny_workflow.json"
COMFYUI_IMAGE = DATA / "frontend_tiny_comfyui_output.png"


def test_frontend_workflow_gives_comfyuis_image(tmp_path, monkeypatch):
    from runtime_models import write_tiny_models

    models = write_tiny_models(tmp_path / "models")
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(models))
    saved = json.loads(WORKFLOW.read_text())
    assert saved["extra"].get("frontendVersion"), "saved by the real editor"
    _, images = run_workflow(WORKFLOW, tmp_path / "out")
    assert len(images) == 1
    with Image.open(images[0]) as ours, Image.open(COMFYUI_IMAGE) as theirs:
        ours_pixels, theirs_pixels = np.asarray(ours).astype(int), np.asarray(theirs).astype(int)
        # ComfyUI wrote the same graph into its PNG: the headless one carries the same workflow.
        assert json.loads(ours.text["workflow"]) == saved
        assert json.loads(theirs.text["workflow"])["nodes"] == saved["nodes"]
    assert ours_pixels.shape == theirs_pixels.shape == (64, 64, 3)
    assert ours_pixels.std() > 5  # a real decoded picture, not a flat one
    # Same seed, same weights, same code: identical up to float summation order (thread count).
    assert np.abs(ours_pixels - theirs_pixels).max() <= 1, (
        "the headless image differs from ComfyUI's; if the model code changed on purpose, "
        "re-capture the fixture with tests/comfy_host/check_in_comfyui.py")
