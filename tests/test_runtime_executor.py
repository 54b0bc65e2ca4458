"""Executor and CLI on fake nodes: caching, IS_CHANGED, PNG metadata, --set, exit codes."""

from __future__ import annotations

import json

import pytest
import runtime_fakes
from PIL import Image
from runtime_fakes import CALLS, FAKE_CLASSES, ui_workflow

from nextdit_nodes.nodes import host
from nextdit_nodes.commands import cli
from nextdit_nodes.runtime import run
from nextdit_nodes.runtime.core_nodes import core_node_classes
from nextdit_nodes.runtime.errors import NodeExecutionError, ValidationError
from nextdit_nodes.runtime.executor import Executor
from nextdit_nodes.runtime.workflow import load_workflow


@pytest.fixture()
def classes(tmp_path):
    CALLS.clear()
    return {**core_node_classes(tmp_path / "out", tmp_path / "temp"), **FAKE_CLASSES}


def test_second_run_reexecutes_only_the_changed_sampler_and_downstream(classes, tmp_path):
    executor = Executor(classes)
    first = executor.run(load_workflow(ui_workflow(), classes))
    assert sorted(first.executed) == ["1", "2", "3", "4", "5"]
    assert CALLS == {"FakeLoader": 1, "FakeText": 1, "FakeSampler": 1, "FakeDecode": 1}

    unchanged = executor.run(load_workflow(ui_workflow(), classes))
    assert unchanged.executed == [] and sorted(unchanged.cached) == ["1", "2", "3", "4", "5"]

    changed = load_workflow(ui_workflow(), classes)
    changed.set_input("3", "steps", 5)
    second = executor.run(changed)
    assert sorted(second.executed) == ["3", "4", "5"] and sorted(second.cached) == ["1", "2"]
    assert CALLS == {"FakeLoader": 1, "FakeText": 1, "FakeSampler": 2, "FakeDecode": 2}
    assert second.outputs["3"][0]["steps"] == 5
    saved = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert saved == ["fake_00001_.png", "fake_00002_.png"]  # numbered like ComfyUI


def test_upstream_change_invalidates_everything_downstream(classes):
    executor = Executor(classes)
    executor.run(load_workflow(ui_workflow(), classes))
    changed = load_workflow(ui_workflow(), classes)
    changed.set_input("1", "scale", 3.0)
    result = executor.run(changed)
    assert sorted(result.executed) == ["1", "3", "4", "5"] and result.cached == ["2"]


def test_is_changed_nan_always_reruns(classes):
    data = ui_workflow()
    data["nodes"][1]["type"] = "FakeAlwaysChanged"
    executor = Executor(classes)
    executor.run(load_workflow(data, classes))
    again = executor.run(load_workflow(data, classes))
    # The prompt text node re-runs; its output is equal but a new key makes downstream re-run too.
    assert "2" in again.executed and CALLS["FakeAlwaysChanged"] == 2


def test_png_carries_prompt_and_workflow_chunks(classes, tmp_path):
    workflow = load_workflow(ui_workflow(), classes)
    result = Executor(classes).run(workflow)
    assert result.ui["5"] == {"images": [{"filename": "fake_00001_.png", "subfolder": "", "type": "output"}]}
    png = Image.open(tmp_path / "out" / "fake_00001_.png")
    prompt, saved_ui = json.loads(png.text["prompt"]), json.loads(png.text["workflow"])
    assert saved_ui == ui_workflow()  # the UI graph, ready to be dropped on ComfyUI
    assert prompt == workflow.to_api()
    assert prompt["3"]["class_type"] == "FakeSampler" and prompt["3"]["inputs"]["model"] == ["1", 0]
    # the pixels are the decoded latent, truncated to 8 bits as ComfyUI does
    image = result.outputs["4"][0][0]
    expected = (image.numpy() * 255).clip(0, 255).astype("uint8")
    assert (expected == __import__("numpy").asarray(png)).all()


def test_node_failure_names_the_node(classes):
    class Broken(FAKE_CLASSES["FakeDecode"]):
        def decode(self, samples):
            raise RuntimeError("out of paint")

    classes = {**classes, "FakeDecode": Broken}
    with pytest.raises(NodeExecutionError, match=r"node 4 \(FakeDecode\) failed: RuntimeError: out of paint"):
        Executor(classes).run(load_workflow(ui_workflow(), classes))


def test_progress_hook_sees_every_step(classes):
    seen = []
    previous = host.set_progress_hook(lambda done, total, preview, note: seen.append((done, total)))
    try:
        Executor(classes).run(load_workflow(ui_workflow(), classes))
    finally:
        host.set_progress_hook(previous)
    assert seen == [(1, 3), (2, 3), (3, 3)]


# ---- the command line --------------------------------------------------------------------------

@pytest.fixture()
def fake_cli(monkeypatch, tmp_path):
    CALLS.clear()
    monkeypatch.setattr(run, "runner_classes", lambda output_dir="output", temp_dir=None, input_dir="input": {
        **core_node_classes(output_dir, temp_dir), **FAKE_CLASSES})
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(ui_workflow()))
    return path


def test_cli_run_set_and_summary(fake_cli, tmp_path, capsys):
    out = tmp_path / "images"
    code = cli.main(["run", str(fake_cli), "--output-dir", str(out), "--set", "Sampler.seed=11",
                     "--set", "3.solver=euler", "--set", "Prompt.text=a dog", "-q"])
    assert code == 0
    summary = capsys.readouterr().out
    assert str(out / "fake_00001_.png") in summary and "peak RAM" in summary and " s |" in summary
    png = Image.open(out / "fake_00001_.png")
    prompt, ui = json.loads(png.text["prompt"]), json.loads(png.text["workflow"])
    assert prompt["3"]["inputs"]["seed"] == 11 and prompt["2"]["inputs"]["text"] == "a dog"
    # the UI JSON in the PNG carries the values that ran, so ComfyUI restores them
    sampler = next(n for n in ui["nodes"] if n["id"] == 3)
    assert sampler["widgets_values"] == [11, "randomize", 3, 2.5, "euler", 1.0]


@pytest.mark.parametrize("arguments, code, message", [
    (["--set", "Sampler.steps=many"], 3, "'many' is not a valid INT value"),
    (["--set", "Sampler.nope=1"], 3, "has no input 'nope'"),
    (["--set", "Nobody.seed=1"], 3, "no node with id or title 'Nobody'"),
    (["--set", "Sampler.steps=500"], 3, ""),  # steps is VALIDATE_INPUTS' business: passes
    (["--set", "Sampler.cfg=99"], 3, "'cfg': 99.0 is bigger than the maximum 30.0"),
])
def test_cli_bad_values(fake_cli, tmp_path, capsys, arguments, code, message):
    result = cli.main(["run", str(fake_cli), "--output-dir", str(tmp_path / "o"), "-q", *arguments])
    if not message:
        assert result == 0
        return
    assert result == code
    assert message in capsys.readouterr().err


def test_cli_exit_codes_for_bad_files(fake_cli, tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text("not json")
    assert cli.main(["run", str(broken)]) == 3
    assert "is not valid JSON" in capsys.readouterr().err
    data = ui_workflow()
    data["nodes"][3]["type"] = "Mystery"
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps(data))
    assert cli.main(["run", str(unknown)]) == 3
    assert "node 4: unknown node type 'Mystery'" in capsys.readouterr().err


def test_cli_node_failure_exit_code(fake_cli, monkeypatch, tmp_path, capsys):
    def boom(self, samples):
        raise ValueError("bad latent")

    monkeypatch.setattr(runtime_fakes.FakeDecode, "decode", boom)
    assert cli.main(["run", str(fake_cli), "--output-dir", str(tmp_path / "o"), "-q"]) == 5
    assert "node 4 (FakeDecode) failed: ValueError: bad latent" in capsys.readouterr().err


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = capsys.readouterr().out
    for code in ("0 ", "3 ", "4 ", "5 ", "130"):
        assert f"\n  {code}" in text


def test_nodes_command_lists_inputs(fake_cli, capsys):
    assert cli.main(["nodes"]) == 0
    text = capsys.readouterr().out
    assert "FakeSampler" in text and "solver" in text and "SaveImage" in text
    assert cli.main(["nodes", "--json"]) == 0
    listed = {entry["id"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert listed["FakeSampler"]["inputs"]["solver"]["choices"] == ["euler", "midpoint"]


class FakeDiTLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"dit_name": (host.list_model_files("diffusion_models"), {})}}

    RETURN_TYPES = ("FAKE_MODEL",)
    FUNCTION = "load"

    def load(self, dit_name):
        path = host.resolve_model_file("diffusion_models", dit_name)
        return ({"scale": float(path.stat().st_size)},)


def test_cli_missing_model_file_says_where_we_looked_and_where_to_get_it(fake_cli, monkeypatch,
                                                                          tmp_path, capsys):
    monkeypatch.setitem(FAKE_CLASSES, "FakeDiTLoader", FakeDiTLoader)
    data = ui_workflow()
    data["nodes"][0].update(type="FakeDiTLoader", widgets_values=["NewBie-Image-Exp0.1-bf16.safetensors"])
    path = tmp_path / "dit.json"
    path.write_text(json.dumps(data))
    models = tmp_path / "models"
    (models / "diffusion_models").mkdir(parents=True)
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(models))  # restored after the test; --models-dir sets it
    code = cli.main(["run", str(path), "--models-dir", str(models), "-q", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 4
    assert "node 1 (FakeDiTLoader): input 'dit_name'" in err
    assert str(models / "diffusion_models") in err  # which folders were searched
    assert "huggingface.co/Comfy-Org/NewBie-image-Exp0.1_repackaged" in err  # where to get it
    # The same file given as a path that exists is accepted although it is not in the dropdown.
    weights = tmp_path / "elsewhere.safetensors"
    weights.write_bytes(b"1234")
    data["nodes"][0]["widgets_values"] = [str(weights)]
    path.write_text(json.dumps(data))
    assert cli.main(["run", str(path), "--models-dir", str(models), "-q",
                     "--output-dir", str(tmp_path / "o")]) == 0


def test_set_finds_titles_with_dots(fake_cli, tmp_path):
    data = ui_workflow()
    data["nodes"][2]["title"] = "Sampler v1.2"
    path = tmp_path / "dots.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "o"
    assert cli.main(["run", str(path), "--output-dir", str(out), "-q", "--set", "Sampler v1.2.steps=2"]) == 0
    with Image.open(out / "fake_00001_.png") as png:
        assert json.loads(png.text["prompt"])["3"]["inputs"]["steps"] == 2


def test_outputs_before_a_failure_stay_cached(classes):
    executor = Executor(classes)
    broken = load_workflow(ui_workflow(), classes)
    broken.set_input("3", "cfg", 99.0)  # above the max 30: validation stops the run
    with pytest.raises(ValidationError, match="bigger than the maximum"):
        executor.run(broken)
    assert CALLS == {}  # nothing ran before validation passed

    class Flaky(FAKE_CLASSES["FakeDecode"]):
        fail = True

        def decode(self, samples):
            if Flaky.fail:
                raise RuntimeError("flaky")
            return super().decode(samples)

    classes = {**classes, "FakeDecode": Flaky}
    executor = Executor(classes)
    with pytest.raises(NodeExecutionError):
        executor.run(load_workflow(ui_workflow(), classes))
    Flaky.fail = False
    again = executor.run(load_workflow(ui_workflow(), classes))
    assert sorted(again.cached) == ["1", "2", "3"] and sorted(again.executed) == ["4", "5"]


def test_cli_progress_bar_over_the_sampling_steps(fake_cli, tmp_path, capsys):
    assert cli.main(["run", str(fake_cli), "--output-dir", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "Sampler" in err and "3/3" in err  # the sampler node's title and its three steps


def test_cli_ctrl_c_exit_code(fake_cli, monkeypatch, tmp_path, capsys):
    def interrupted(self, samples):
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime_fakes.FakeDecode, "decode", interrupted)
    assert cli.main(["run", str(fake_cli), "--output-dir", str(tmp_path / "o"), "-q"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_preview_image_goes_to_the_temp_folder(fake_cli, tmp_path, capsys):
    data = ui_workflow()
    data["nodes"][4].update(type="PreviewImage", widgets_values=[])
    path = tmp_path / "preview.json"
    path.write_text(json.dumps(data))
    temp = tmp_path / "temp"
    assert cli.main(["run", str(path), "--output-dir", str(tmp_path / "o"), "--temp-dir", str(temp), "-q"]) == 0
    previews = list(temp.glob("ComfyUI_temp_*_00001_.png"))
    assert len(previews) == 1 and str(previews[0]) in capsys.readouterr().out
    assert not (tmp_path / "o").exists()
