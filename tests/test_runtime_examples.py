"""The shipped example workflows: every node, input and widget value checked against the real
node classes, and the examples run end to end through the CLI on tiny random-weight files saved
under the real file names (``runtime_models.write_tiny_models``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nextdit_nodes.commands import cli
from nextdit_nodes.runtime.errors import WorkflowError
from nextdit_nodes.runtime.executor import Executor
from nextdit_nodes.runtime.graph import Link
from nextdit_nodes.runtime.model_sources import KNOWN_MODEL_FILES, MADE_LOCALLY, MODEL_INPUT_FOLDERS
from nextdit_nodes.runtime.run import model_file_check, run_workflow, runner_classes
from nextdit_nodes.runtime.specs import input_specs
from nextdit_nodes.runtime.validate import needed_nodes, validate
from nextdit_nodes.runtime.workflow import NOTE_TYPES, load_workflow

ROOT = Path(__file__).resolve().parent.parent
ALL_EXAMPLES = sorted((ROOT / "example_workflows").glob("*.json"))
# Examples sampled by core's KSampler on the pack's core MODEL: ComfyUI only (the runner has no KSampler).
CORE_PATH_EXAMPLES = ("NewBie with core KSampler and official CFG", "Embedded shapes model with core KSampler")
EXAMPLES = [path for path in ALL_EXAMPLES if path.stem not in CORE_PATH_EXAMPLES]
CLASSES = runner_classes()
TEXT_TO_IMAGE = ROOT / "example_workflows" / "NewBie XML text to image.json"


NEWBIE_EXAMPLES = ("NewBie XML text to image", "NewBie XML two characters with builder nodes",
                   "NewBie guidance-distilled text to image")


def test_the_three_examples_exist_with_thumbnails():
    names = {path.stem for path in ALL_EXAMPLES}
    assert set(NEWBIE_EXAMPLES) <= names and set(CORE_PATH_EXAMPLES) <= names
    for path in ALL_EXAMPLES:
        thumbnail = path.with_suffix(".jpg")
        assert thumbnail.exists(), f"{path.name} has no thumbnail {thumbnail.name}"
        with Image.open(thumbnail) as image:
            assert image.format == "JPEG" and min(image.size) >= 200


@pytest.fixture()
def placeholder_models(tmp_path, monkeypatch):
    """Empty files under the known names: enough for validation, which only checks they exist."""
    for name, (folder, _) in {**KNOWN_MODEL_FILES, **MADE_LOCALLY}.items():
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).touch()
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_nodes_inputs_and_widget_values(path, placeholder_models):
    data = json.loads(path.read_text())
    assert data.get("version") in (0.4, 1) and isinstance(data["nodes"], list)
    workflow = load_workflow(path, CLASSES)
    for raw in data["nodes"]:
        if raw["type"] in NOTE_TYPES:
            continue
        cls = CLASSES[raw["type"]]  # every node type exists
        node = workflow.nodes[str(raw["id"])]
        specs = input_specs(cls)
        assert set(node.inputs) <= set(specs), f"{raw['type']}: inputs the class does not declare"
        for entry in raw.get("inputs", []):  # every socket the editor saved is a real input
            assert entry["name"] in specs, f"{raw['type']} has no input {entry['name']}"
        # The editor also saved the widgets by name: each value must land on that input.
        named = raw.get("widgets_values_named")
        if path.stem in NEWBIE_EXAMPLES:
            assert named, "saved by the real editor, which writes widgets_values_named"
        for name, value in (named or {}).items():
            if name in ("control_after_generate", "upload"):   # the frontend's own widgets, not inputs
                continue
            assert name in specs and specs[name].is_widget
            if not isinstance(node.inputs[name], Link):
                assert node.inputs[name] == value, f"{raw['type']}.{name}"
    # The whole graph validates against the real INPUT_TYPES and VALIDATE_INPUTS.
    validate(workflow, CLASSES, needed_nodes(workflow, CLASSES), model_check=model_file_check)


@pytest.mark.parametrize("name", CORE_PATH_EXAMPLES)
def test_core_path_examples_are_refused_headless_naming_the_core_nodes(name):
    """The runner refuses them, naming exactly the core nodes it does not implement; every pack
    node in them is still checked against the real node classes."""
    path = ROOT / "example_workflows" / f"{name}.json"
    data = json.loads(path.read_text())
    assert data["extra"].get("frontendVersion"), "saved by the real editor"
    with pytest.raises(WorkflowError) as refused:
        load_workflow(path, CLASSES)
    unknown = set(re.findall(r"unknown node type '([^']+)'", str(refused.value)))
    assert unknown == {raw["type"] for raw in data["nodes"] if raw["type"] not in CLASSES} == \
        {"KSampler", "EmptySD3LatentImage"}
    for raw in data["nodes"]:
        if raw["type"].startswith("NextDiT"):
            named = raw["widgets_values_named"]
            specs = input_specs(CLASSES[raw["type"]])
            assert all(key in specs and specs[key].is_widget for key in named), raw["type"]


def test_models_the_examples_use_are_documented():
    used = set()
    for path in EXAMPLES:
        for node in load_workflow(path, CLASSES).nodes.values():
            used |= {v for k, v in node.inputs.items() if k in MODEL_INPUT_FOLDERS}
    documented = set(KNOWN_MODEL_FILES) | set(MADE_LOCALLY)
    shipped = {path.name for path in (ROOT / "embedded").rglob("*")} if (ROOT / "embedded").exists() else set()
    assert documented <= used and used - documented <= shipped  # anything else ships with the pack
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Model files", 1)[1].split("\n## ", 1)[0]
    for name in documented:
        assert f"`{name}`" in section, f"README's Model files section does not list {name}"


def test_distilled_example_names_the_file_distill_writes():
    from nextdit_nodes.training.distill import default_output_path

    written = default_output_path("NewBie-Image-Exp0.1-bf16.safetensors").name
    assert set(MADE_LOCALLY) == {written}


# ---- end to end on tiny random weights --------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from runtime_models import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("models"))


SMALL = ["--set", "NextDiT Sampler.width=32", "--set", "NextDiT Sampler.height=48",
         "--set", "NextDiT Sampler.steps=2"]


def test_text_to_image_example_through_the_cli(tiny_models, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(tiny_models))
    out = tmp_path / "out"
    code = cli.main(["run", str(TEXT_TO_IMAGE), "--models-dir", str(tiny_models),
                     "--output-dir", str(out), "-q", *SMALL])
    assert code == 0, capsys.readouterr().err
    assert str(out / "NewBie_00001_.png") in capsys.readouterr().out
    with Image.open(out / "NewBie_00001_.png") as png:
        assert png.size == (32, 48)
        pixels = np.asarray(png)
        prompt, workflow = json.loads(png.text["prompt"]), json.loads(png.text["workflow"])
    assert pixels.std() > 0  # a decoded latent, not a blank
    sampler = next(n for n in prompt.values() if n["class_type"] == "NextDiTSampler")
    assert (sampler["inputs"]["width"], sampler["inputs"]["steps"], sampler["inputs"]["seed"]) == (32, 2, 42)
    assert sampler["inputs"]["model"][1] == 0 and isinstance(sampler["inputs"]["model"][0], str)
    assert [n["type"] for n in workflow["nodes"]] == [n["type"] for n in json.loads(TEXT_TO_IMAGE.read_text())["nodes"]]

    # The PNG's "prompt" chunk is an API-format workflow: run it again headlessly, same image.
    api = tmp_path / "api.json"
    api.write_text(json.dumps(prompt))
    again = tmp_path / "again"
    assert cli.main(["run", str(api), "--output-dir", str(again), "-q"]) == 0
    with Image.open(again / "NewBie_00001_.png") as png:
        assert np.array_equal(np.asarray(png), pixels)


def test_changed_sampler_input_reruns_only_the_sampler_and_downstream(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(tiny_models))
    classes = runner_classes(tmp_path, tmp_path / "temp")
    executor = Executor(classes, model_check=model_file_check)
    overrides = [s for s in SMALL if s != "--set"]
    first, _ = run_workflow(TEXT_TO_IMAGE, tmp_path, overrides, executor=executor)
    second, images = run_workflow(TEXT_TO_IMAGE, tmp_path, overrides + ["NextDiT Sampler.seed=7"],
                                  executor=executor)
    workflow = load_workflow(TEXT_TO_IMAGE, classes)
    by_type = {node.class_type: node.id for node in workflow.nodes.values()
               if node.class_type != "NextDiTTextEncode"}
    rerun = {by_type["NextDiTSampler"], by_type["NextDiTVAEDecode"], by_type["SaveImage"]}
    assert len(first.executed) == len(workflow.nodes)
    assert set(second.executed) == rerun
    assert set(second.cached) == set(workflow.nodes) - rerun
    assert [p.name for p in images] == ["NewBie_00002_.png"]


def test_distilled_example_on_a_student_made_by_distill(tiny_models, tmp_path, monkeypatch):
    """The `distill` command writes the student under the name the example loads; it runs."""
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(tiny_models))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a girl with long blue hair\ntwo characters standing in a garden\n")
    encoders = tiny_models / "text_encoders"
    assert cli.main(["distill", "NewBie-Image-Exp0.1-bf16.safetensors", "--prompts", str(prompts),
                     "--gemma", str(encoders / "gemma_3_4b_it_bf16.safetensors"),
                     "--jina", str(encoders / "jina_clip_v2_bf16.safetensors"), "--iterations", "2",
                     "--batch-size", "1", "--width", "32", "--height", "32", "--trajectory-steps", "2",
                     "--rank", "2", "--no-progress", "--overwrite"]) == 0
    assert (tiny_models / "diffusion_models" / next(iter(MADE_LOCALLY))).exists()
    path = ROOT / "example_workflows" / "NewBie guidance-distilled text to image.json"
    sampler = next(n for n in load_workflow(path, CLASSES).nodes.values() if n.class_type == "NextDiTSampler")
    small = [f"{sampler.id}.width=32", f"{sampler.id}.height=32", f"{sampler.id}.steps=2"]
    _, images = run_workflow(path, tmp_path, small)
    assert [p.name for p in images] == ["NewBie_00001_.png"] and images[0].exists()


def test_missing_model_files_of_an_example(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "models"
    empty.mkdir()
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(empty))
    code = cli.main(["run", str(TEXT_TO_IMAGE), "--models-dir", str(empty), "-q",
                     "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 4
    # every missing file named once, with its node, the folders searched, and where to get it
    for name in ("NewBie-Image-Exp0.1-bf16.safetensors", "gemma_3_4b_it_bf16.safetensors", "ae.safetensors"):
        assert f"model file {name!r} not found" in err
    assert str(empty / "diffusion_models") in err and str(empty / "vae") in err
    assert "NextDiT Loader" in err and "Comfy-Org/z_image_turbo" in err
    assert not list(tmp_path.glob("*.png"))


def test_builder_example_builds_the_typed_examples_prompt():
    """Example 2 (builder nodes) describes the same picture as example 1 (typed README XML)."""
    from nextdit_nodes.prompting import parse_prompt

    typed_workflow = load_workflow(TEXT_TO_IMAGE, CLASSES)
    typed = next(n.inputs["prompt"] for n in typed_workflow.nodes.values()
                 if n.class_type == "NextDiTTextEncode" and n.inputs["prompt"])
    builder = load_workflow(ROOT / "example_workflows" / "NewBie XML two characters with builder nodes.json",
                            CLASSES)
    builder.nodes = {k: n for k, n in builder.nodes.items() if n.class_type.startswith("NextDiTXML")}
    final = next(n.id for n in builder.nodes.values() if n.class_type == "NextDiTXMLPrompt")
    # Only the prompt chain runs: its last node stands in for the output node.
    classes = {**CLASSES, "NextDiTXMLPrompt": type("Out", (CLASSES["NextDiTXMLPrompt"],), {"OUTPUT_NODE": True})}
    built = Executor(classes).run(builder).outputs[final][0]
    parsed_built, parsed_typed = parse_prompt(built), parse_prompt(typed)
    assert len(parsed_built.characters) == 2 and parsed_built.warnings == []
    assert parsed_built == parsed_typed


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=lambda p: p.stem)
def test_no_node_of_an_example_covers_another(path):
    # Each node's box as the editor draws it: its title bar (30 px) above pos, then its size.
    nodes = json.loads(path.read_text())["nodes"]
    boxes = {n["id"]: (n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in nodes}
    ids = sorted(boxes)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[a], boxes[b]
            assert not (ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1), (path.stem, a, b)
