"""The shipped embedded model, through its example workflow: a few held-out prompts must come out
right according to the validated adherence checker (the shipped teacher scores 100 % colour+position
per object on 200 held-out prompts at CFG 4, the workflow's setting; here 10 of 10 objects; the
threshold leaves room for other CPUs' float rounding). Skipped
only where the embedded/ folder is missing."""

import numpy as np
import pytest
from nextdit_nodes.nodes.host import EMBEDDED_DIR
from nextdit_nodes.training.embedded.adherence import score_image
from nextdit_nodes.training.embedded.pipeline import embedded_files_present
from nextdit_nodes.training.embedded.shapes import held_out_scenes, xml_caption
from PIL import Image

pytestmark = pytest.mark.skipif(not embedded_files_present(EMBEDDED_DIR),
                                reason="the embedded model has not been trained and shipped yet")


def test_example_workflow_draws_held_out_prompts(tmp_path):
    from nextdit_nodes.commands.demo import WORKFLOW
    from nextdit_nodes.runtime.executor import Executor
    from nextdit_nodes.runtime.run import model_file_check, run_workflow, runner_classes

    executor = Executor(runner_classes(tmp_path, tmp_path), model_check=model_file_check)
    scores = []
    for index, scene in enumerate(held_out_scenes(6, seed=99)):
        _, (png,) = run_workflow(WORKFLOW, tmp_path, [f"Positive.prompt={xml_caption(scene)}",
                                                      f"NextDiT Sampler.seed={index}"], executor=executor)
        scores += score_image(np.asarray(Image.open(png).convert("RGB")), scene)
    colour_position = sum(s.colour_position for s in scores) / len(scores)
    assert colour_position >= 0.8, f"colour+position right for {colour_position:.0%} of {len(scores)} objects"


def test_inpainting_adds_the_masked_object_and_keeps_the_others():
    """A held-out scene without its last object, that object's cell masked, the whole caption:
    the object appears in the cell and the others stay right (the shipped teacher: 100 % of
    added objects' colour+position on 100 scenes, README)."""
    from nextdit_nodes.training.embedded.evaluate import EmbeddedModels, inpaint_adherence

    scores = inpaint_adherence(EmbeddedModels(EMBEDDED_DIR), count=5, seed=77)
    assert scores["the masked cell before (checker check: empty)"]["colour_position_per_object"] == 0
    assert scores["object added in the masked cell"]["colour_position_per_object"] >= 80
    assert scores["objects outside the mask"]["colour_position_per_object"] == 100


LORA_WORKFLOW = "Embedded shapes model with a LoRA.json"


@pytest.mark.skipif(not (EMBEDDED_DIR / "loras").is_dir(), reason="the demo LoRA is not shipped")
def test_lora_example_draws_the_size_the_lora_taught(tmp_path):
    """The shipped LoRA taught the model "tiny" objects (README: held-out size right for 9 in 10
    objects with it, none without). Through its example workflow, on held-out prompts whose every
    object is tiny: the size comes out right with the LoRA at strength 1 and wrong at strength 0."""
    from nextdit_nodes.nodes.host import PACK_DIR
    from nextdit_nodes.runtime.executor import Executor
    from nextdit_nodes.runtime.run import model_file_check, run_workflow, runner_classes
    from nextdit_nodes.training.embedded.lora_demo import held_out_concept_scenes

    workflow = PACK_DIR / "example_workflows" / LORA_WORKFLOW
    executor = Executor(runner_classes(tmp_path, tmp_path), model_check=model_file_check)
    title = "LoRA: tiny objects (made by train-lora)"
    right = {1.0: [], 0.0: []}
    for strength in right:
        for index, scene in enumerate(held_out_concept_scenes(4, seed=99)):
            _, (png,) = run_workflow(workflow, tmp_path, [f"Positive.prompt={xml_caption(scene)}",
                                                          f"NextDiT Sampler.seed={index}",
                                                          f"{title}.strength={strength}"],
                                     executor=executor)
            right[strength] += [s.size for s in score_image(np.asarray(Image.open(png).convert("RGB")), scene)]
    with_lora, without = (sum(right[s]) / len(right[s]) for s in (1.0, 0.0))
    assert with_lora >= 0.7 and without <= 0.2, (with_lora, without)


def _graph_of_defaults(caption: str, seed: int) -> dict:
    """The graph a user builds from the search box: every widget at the value the editor gives a new
    node (the input's default, a combo's default or first entry); only the prompt and seed typed."""
    from nextdit_nodes.nodes import NODE_CLASS_MAPPINGS
    from nextdit_nodes.runtime.specs import input_specs

    def node(class_type: str, **links) -> dict:
        inputs = {}
        for spec in input_specs(NODE_CLASS_MAPPINGS.get(class_type) or _core(class_type)).values():
            if spec.is_widget:
                inputs[spec.name] = spec.options.get("default", spec.choices[0] if spec.choices else None)
        return {"class_type": class_type, "inputs": {**inputs, **links}}

    return {
        "1": node("NextDiTLoader"),
        "2": node("NextDiTTextEncoderLoader"),
        "3": node("NextDiTTextEncode", text_encoders=["2", 0], prompt=caption),
        "4": node("NextDiTTextEncode", text_encoders=["2", 0]),
        "5": node("NextDiTVAELoader"),
        "6": node("NextDiTSampler", model=["1", 0], positive=["3", 0], negative=["4", 0], seed=seed),
        "7": node("NextDiTVAEDecode", vae=["5", 0], samples=["6", 0]),
        "8": node("SaveImage", images=["7", 0]),
    }


def _core(class_type: str):
    from nextdit_nodes.runtime.core_nodes import core_node_classes

    return core_node_classes()[class_type]


def test_a_graph_of_defaults_draws_like_the_example_workflow(tmp_path):
    # The loader defaults to the teacher, the encoders to the Gemma and Jina files, the system
    # prompt auto to what the Gemma file records (none), and the sampler's 0s to what the teacher's
    # file records (64², 25 Euler steps, CFG 4 on every step): the example workflow's settings, so
    # the pictures must be the example's, and the checker must score them as it scores those.
    from nextdit_nodes.commands.demo import WORKFLOW
    from nextdit_nodes.runtime.executor import Executor
    from nextdit_nodes.runtime.run import model_file_check, run_workflow, runner_classes

    executor = Executor(runner_classes(tmp_path, tmp_path), model_check=model_file_check)
    scores = []
    for index, scene in enumerate(held_out_scenes(3, seed=7)):
        _, (default_png,) = run_workflow(_graph_of_defaults(xml_caption(scene), index), tmp_path,
                                         executor=executor)
        _, (example_png,) = run_workflow(WORKFLOW, tmp_path, [f"Positive.prompt={xml_caption(scene)}",
                                                                   f"NextDiT Sampler.seed={index}"],
                                         executor=executor)
        drawn = np.asarray(Image.open(default_png).convert("RGB"))
        assert drawn.shape == (64, 64, 3)
        assert np.array_equal(drawn, np.asarray(Image.open(example_png).convert("RGB")))
        scores += score_image(drawn, scene)
    colour_position = sum(s.colour_position for s in scores) / len(scores)
    assert colour_position >= 0.8, f"colour+position right for {colour_position:.0%} of {len(scores)} objects"


def test_cfg_without_a_negative_is_refused_before_any_node_runs(tmp_path, monkeypatch):
    from nextdit_nodes.nodes.text import NextDiTTextEncoderLoader
    from nextdit_nodes.runtime.errors import ValidationError
    from nextdit_nodes.runtime.executor import Executor
    from nextdit_nodes.runtime.run import model_file_check, run_workflow, runner_classes

    graph = _graph_of_defaults("<character_1>\n<n>circle</n>\n</character_1>", 0)
    del graph["6"]["inputs"]["negative"]
    graph["6"]["inputs"].update(steps=10, cfg=5.0)
    load = NextDiTTextEncoderLoader.load
    monkeypatch.setattr(NextDiTTextEncoderLoader, "load", lambda *a, **k: pytest.fail("the encoders ran"))
    executor = Executor(runner_classes(tmp_path, tmp_path), model_check=model_file_check)
    with pytest.raises(ValidationError, match="cfg 5 needs a negative"):
        run_workflow(graph, tmp_path, executor=executor)
    # steps 0 (the model's own settings) is not refused: without a negative the teacher samples at
    # cfg 1 instead of its 4, and the node's text says so.
    monkeypatch.setattr(NextDiTTextEncoderLoader, "load", load)
    graph["6"]["inputs"].update(steps=0)
    result, _ = run_workflow(graph, tmp_path, executor=executor)
    assert "cfg 1 instead of 4: no negative is connected" in result.ui["6"]["text"][0]


def test_previews_of_the_embedded_model_look_like_its_pictures():
    # The embedded files record a latent → RGB projection fitted on their autoencoder; FLUX's factors
    # (for another autoencoder) give colours unrelated to the picture.
    import torch

    from nextdit_nodes.dit.checkpoint import load_dit
    from nextdit_nodes.dit.own_settings import preview_factors
    from nextdit_nodes.nodes.host import EMBEDDED_DIR
    from nextdit_nodes.sampling.preview import latent_to_rgb
    from nextdit_nodes.text.conditioning import conditioning
    from nextdit_nodes.text.loading import load_text_encoders
    from nextdit_nodes.sampler_settings import SamplerSettings
    from nextdit_nodes.sampling.sample import sample
    from nextdit_nodes.vae.latent_format import FLUX
    from nextdit_nodes.vae.loading import load_vae

    model = load_dit(EMBEDDED_DIR / "diffusion_models" / "NextDiT-embedded-shapes.pth")
    text = load_text_encoders(EMBEDDED_DIR / "text_encoders" / "embedded-shapes-gemma3.safetensors",
                              EMBEDDED_DIR / "text_encoders" / "embedded-shapes-jina.safetensors")
    vae = load_vae(EMBEDDED_DIR / "vae" / "embedded-shapes-vae", dtype="fp32")
    errors = {"fitted": [], "flux": []}
    for index, scene in enumerate(held_out_scenes(4, seed=3)):
        caption = xml_caption(scene)
        positive, negative = (conditioning(text.encode(t, t), t, t) for t in (caption, ""))
        settings = SamplerSettings(steps=25, solver="euler", cfg=4.0, cfg_trunc=1.0)
        latent = sample(model, positive, negative, settings, width=64, height=64, seed=index)["samples"]
        picture = vae.decode(latent)[0].permute(2, 0, 1)[None]                   # (1, 3, 64, 64) in [0, 1]
        small = torch.nn.functional.avg_pool2d(picture, 8)[0].permute(1, 2, 0) * 255
        for name, projection in (("fitted", preview_factors(model)), ("flux", None)):
            preview = latent_to_rgb(FLUX.from_raw(latent)[0], projection).float()
            errors[name].append(float((preview - small).abs().mean()))
    fitted, flux = (sum(values) / len(values) for values in errors.values())
    print(f"preview error vs the picture (0-255): fitted {fitted:.1f}, FLUX factors {flux:.1f}")
    assert fitted < 40 and fitted < flux / 2, errors


def test_check_embedded_says_what_the_lora_was_trained_for():
    from nextdit_nodes.nodes.host import EMBEDDED_DIR
    from nextdit_nodes.commands.check_embedded import describe_lora

    text = describe_lora(EMBEDDED_DIR / "loras" / "NextDiT-embedded-shapes-tiny.safetensors")
    assert "base NextDiT-embedded-shapes.pth" in text and "2500 steps of 32 over 3000 images at 64 px" in text


def test_check_embedded_lora_runs_end_to_end(capsys):
    """`check-embedded --lora` as the README runs it (one prompt a row, 2 steps, so seconds)."""
    from nextdit_nodes.commands import cli

    lora = EMBEDDED_DIR / "loras" / "NextDiT-embedded-shapes-tiny.safetensors"
    assert cli.main(["check-embedded", "--lora", str(lora), "--count", "1", "--steps", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert any("LoRA strength 1" in row for row in rows) and any("without the LoRA" in row for row in rows), rows


def test_check_embedded_tiny_decoder_runs_end_to_end(tmp_path, capsys):
    """`check-embedded --tiny-decoder` on an untrained tiny decoder of the embedded autoencoder's
    shape (one prompt a row, 2 steps): both decoders' rows and the time per image are printed."""
    from nextdit_nodes.commands import cli
    from nextdit_nodes.training.embedded.tiny_decoder import TINY_DECODER_CONFIG
    from nextdit_nodes.training.tiny_decoder import build_tiny_decoder, save_tiny_decoder
    from nextdit_nodes.vae.loading import load_vae

    vae = load_vae(EMBEDDED_DIR / "vae" / "embedded-shapes-vae", dtype="fp32")
    path = save_tiny_decoder(tmp_path / "tiny.safetensors", build_tiny_decoder(TINY_DECODER_CONFIG), vae.latent_format)
    assert cli.main(["check-embedded", "--tiny-decoder", str(path), "--count", "1", "--steps", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert any("tiny decoder" in row for row in rows) and any("full decoder" in row for row in rows), rows
