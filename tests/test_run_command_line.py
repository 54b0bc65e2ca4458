"""`run` as the README shows it: titles typed loosely in --set, an image without a workflow, -q."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from nextdit_nodes.commands import cli
from nextdit_nodes.runtime import load_workflow, runner_classes
from nextdit_nodes.runtime.errors import WorkflowError

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "example_workflows" / "Embedded shapes model.json"


def test_set_finds_nodes_by_title_or_type_ignoring_case_and_by_whole_words():
    workflow = load_workflow(EMBEDDED, runner_classes())
    for ref in ("6", "NextDiTSampler", "nextdit sampler", "Sampler", "sampler", "Positive", "positive"):
        expected = "4" if ref.lower() == "positive" else "6"
        assert workflow.find(ref).id == expected, ref
    with pytest.raises(WorkflowError, match="several nodes"):
        workflow.find("loader")                 # the DiT, text encoder and VAE loaders
    with pytest.raises(WorkflowError, match="no node with id or title 'sample'"):
        workflow.find("sample")                 # whole words only


def test_an_image_without_a_workflow_is_refused_clearly(tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(photo)
    assert cli.main(["run", str(photo)]) == 3
    err = capsys.readouterr().err
    assert "carries no workflow" in err and ".png saved by ComfyUI" in err and "utf-8" not in err.lower()


def test_the_readme_example_runs_as_written_and_quiet_is_quiet(tmp_path):
    # README: `--set Sampler.seed=7` (a title from memory) and -q (no progress bar, no INFO lines).
    env = {**os.environ, "NEXTDIT_MODELS_DIR": str(tmp_path / "models"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "nextdit_nodes", "run", str(EMBEDDED), "--set", "Sampler.seed=7",
                           "--output-dir", str(tmp_path), "-q"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "INFO" not in done.stderr and "step/s" not in done.stderr and "%|" not in done.stderr, done.stderr
    (png,) = tmp_path.glob("*.png")
    prompt = json.loads(Image.open(png).text["prompt"])
    assert prompt["6"]["inputs"]["seed"] == 7


def test_serve_refuses_a_port_in_use_naming_a_free_one_and_prints_its_folders(tmp_path, capsys):
    import socket

    from nextdit_nodes.commands import serve as command

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(command.PortInUseError, match=rf"port {port} on 127.0.0.1 is in use.*--port \d+"):
            command._check_port("127.0.0.1", port)
        args = command.argparse.Namespace(models_dir=[tmp_path / "models"], listen="127.0.0.1", port=port,
                                          output_dir=tmp_path / "out", input_dir=tmp_path / "in",
                                          user_dir=tmp_path / "user")
        assert command._command(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: port {port}") and "Traceback" not in err
    folders = "\n".join(command._folders(args))
    assert str(tmp_path / "models") in folders and "loras/" in folders and str(tmp_path / "out") in folders
