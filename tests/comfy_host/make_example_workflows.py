"""Build the pack's example workflows in the real ComfyUI editor, save them as the editor does,
and screenshot each graph as its template-browser thumbnail (``<same stem>.jpg``).

The NewBie weights cannot be downloaded here, so their thumbnails are screenshots of the graphs,
never invented outputs; the embedded model's thumbnail is its real output (``make_thumbnail``). Outside CI; needs a running ComfyUI with the pack linked in:

  SCRATCH=~/scratch ../shared/comfy-host/comfy_run.sh --port 8199 --isolated
  ~/scratch/e2e-venv/bin/python tests/comfy_host/make_example_workflows.py \
      --url http://127.0.0.1:8199 --out example_workflows
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from frontend import build_graph, editor, fit_view, load_graph, screenshot_jpg

REPO = "https://huggingface.co/Comfy-Org/NewBie-image-Exp0.1_repackaged/resolve/main/split_files"
DIT = "NewBie-Image-Exp0.1-bf16.safetensors"
GEMMA = "gemma_3_4b_it_bf16.safetensors"
JINA = "jina_clip_v2_bf16.safetensors"
VAE = "ae.safetensors"
# The file `python -m nextdit_nodes distill` writes by default (training/distill.py's default_output_path).
DISTILLED = "NewBie-Image-Exp0.1-bf16-distilled.safetensors"

# ComfyUI's missing-model dialog offers these downloads (the property core templates carry).
MODELS = {
    DIT: {"name": DIT, "url": f"{REPO}/diffusion_models/{DIT}", "directory": "diffusion_models"},
    GEMMA: {"name": GEMMA, "url": f"{REPO}/text_encoders/{GEMMA}", "directory": "text_encoders"},
    JINA: {"name": JINA, "url": f"{REPO}/text_encoders/{JINA}", "directory": "text_encoders"},
    VAE: {"name": VAE, "url": "https://huggingface.co/Comfy-Org/z_image_turbo/resolve/main/"
                              "split_files/vae/ae.safetensors", "directory": "vae"},
}

# The official README's two-character example (docs/newbie-image.md §6).
README_XML = """<character_1>
<n>$character_1$</n>
<gender>1girl</gender>
<appearance>chibi, red_eyes, blue_hair, long_hair, hair_between_eyes, head_tilt, tareme, closed_mouth</appearance>
<clothing>school_uniform, serafuku, white_sailor_collar, white_shirt, short_sleeves, red_neckerchief, bow, blue_skirt, miniskirt, pleated_skirt, blue_hat, mini_hat, thighhighs, grey_thighhighs, black_shoes, mary_janes</clothing>
<expression>happy, smile</expression>
<action>standing, holding, holding_briefcase</action>
<position>center_left</position>
</character_1>

<character_2>
<n>$character_2$</n>
<gender>1girl</gender>
<appearance>chibi, red_eyes, pink_hair, long_hair, very_long_hair, multi-tied_hair, open_mouth</appearance>
<clothing>school_uniform, serafuku, white_sailor_collar, white_shirt, short_sleeves, red_neckerchief, bow, red_skirt, miniskirt, pleated_skirt, hair_bow, multiple_hair_bows, white_bow, ribbon_trim, ribbon-trimmed_bow, white_thighhighs, black_shoes, mary_janes, bow_legwear, bare_arms</clothing>
<expression>happy, smile</expression>
<action>standing, holding, holding_briefcase, waving</action>
<position>center_right</position>
</character_2>

<general_tags>
<count>2girls, multiple_girls</count>
<style>anime_style, digital_art</style>
<background>white_background, simple_background</background>
<atmosphere>cheerful</atmosphere>
<quality>high_resolution, detailed</quality>
<objects>briefcase</objects>
<other>alternate_costume</other>
</general_tags>"""

# Official NewBie settings (demo.py of NewBie-image-Exp0.1: 1024², 18 grid points = 17 midpoint steps, CFG 5,
# cfg_trunc 0.25, no renorm, shift 6; negative = "" with no system prompt).
OFFICIAL_SAMPLER = {"width": 1024, "height": 1024, "batch_size": 1, "seed": 42,
                    "control_after_generate": "fixed", "steps": 17, "solver": "midpoint",
                    "shift": 6.0, "cfg": 5.0, "renorm_cfg": 0.0, "cfg_trunc": 0.25, "guidance": 0.0,
                    "denoise": 1.0, "step_cache": 0.0}


def _loaders(dit: str, models_for_dit: bool = True) -> list[dict]:
    dit_node = {"type": "NextDiTLoader", "pos": [0, 0], "width": 330,
                "widgets": {"dit_name": dit, "weight_dtype": "auto"}}
    if models_for_dit:
        dit_node["models"] = [MODELS[dit]]
    return [
        dit_node,
        {"type": "NextDiTTextEncoderLoader", "pos": [0, 160], "width": 330,
         "widgets": {"gemma_name": GEMMA, "jina_name": JINA, "device": "auto", "dtype": "auto"},
         "models": [MODELS[GEMMA], MODELS[JINA]]},
        {"type": "NextDiTVAELoader", "pos": [0, 380], "width": 330, "widgets": {"vae_name": VAE},
         "models": [MODELS[VAE]]},
    ]


def _tail(x: int) -> list[dict]:
    return [{"type": "NextDiTVAEDecode", "pos": [x, 0], "widgets": {"tiled": "auto"}},
            {"type": "SaveImage", "pos": [x + 280, 0], "size": [420, 460],
             "widgets": {"filename_prefix": "NewBie"}}]


def text_to_image() -> dict:
    nodes = _loaders(DIT) + [
        {"type": "NextDiTTextEncode", "title": "Positive", "pos": [420, 0], "size": [460, 520],
         "widgets": {"prompt": README_XML, "system_prompt": "xml (official)", "custom_system_prompt": ""}},
        {"type": "NextDiTTextEncode", "title": "Negative (empty, as the official demo)",
         "pos": [420, 560], "size": [460, 200],
         "widgets": {"prompt": "", "system_prompt": "none", "custom_system_prompt": ""}},
        {"type": "NextDiTSampler", "pos": [920, 0], "width": 300, "widgets": OFFICIAL_SAMPLER},
        *_tail(1270),
    ]
    # indices: 0 dit, 1 text, 2 vae, 3 pos, 4 neg, 5 sampler, 6 decode, 7 save
    links = [[1, 0, 3, "text_encoders"], [1, 0, 4, "text_encoders"], [0, 0, 5, "model"],
             [3, 0, 5, "positive"], [4, 0, 5, "negative"], [2, 0, 6, "vae"], [5, 0, 6, "samples"],
             [6, 0, 7, "images"]]
    return {"nodes": nodes, "links": links}


CHARACTERS = [
    {"n": "$character_1$", "gender": "1girl",
     "appearance": "chibi, red_eyes, blue_hair, long_hair, hair_between_eyes, head_tilt, tareme, closed_mouth",
     "clothing": "school_uniform, serafuku, white_sailor_collar, white_shirt, short_sleeves, red_neckerchief, "
                 "bow, blue_skirt, miniskirt, pleated_skirt, blue_hat, mini_hat, thighhighs, grey_thighhighs, "
                 "black_shoes, mary_janes",
     "body_type": "", "expression": "happy, smile", "action": "standing, holding, holding_briefcase",
     "interaction": "", "position": "center_left"},
    {"n": "$character_2$", "gender": "1girl",
     "appearance": "chibi, red_eyes, pink_hair, long_hair, very_long_hair, multi-tied_hair, open_mouth",
     "clothing": "school_uniform, serafuku, white_sailor_collar, white_shirt, short_sleeves, red_neckerchief, "
                 "bow, red_skirt, miniskirt, pleated_skirt, hair_bow, multiple_hair_bows, white_bow, ribbon_trim, "
                 "ribbon-trimmed_bow, white_thighhighs, black_shoes, mary_janes, bow_legwear, bare_arms",
     "body_type": "", "expression": "happy, smile", "action": "standing, holding, holding_briefcase, waving",
     "interaction": "", "position": "center_right"},
]
GENERAL = {"count": "2girls, multiple_girls", "artists": "", "style": "anime_style, digital_art",
           "background": "white_background, simple_background", "environment": "", "perspective": "",
           "atmosphere": "cheerful", "lighting": "", "quality": "high_resolution, detailed",
           "objects": "briefcase", "other": "alternate_costume", "resolution": ""}


def builder_two_characters() -> dict:
    nodes = _loaders(DIT) + [
        {"type": "NextDiTXMLCharacter", "title": "Character 1", "pos": [420, -780], "size": [360, 640],
         "widgets": CHARACTERS[0]},
        {"type": "NextDiTXMLCharacter", "title": "Character 2", "pos": [820, -780], "size": [360, 640],
         "widgets": CHARACTERS[1]},
        {"type": "NextDiTXMLGeneralTags", "pos": [1220, -780], "size": [360, 700], "widgets": GENERAL},
        {"type": "NextDiTXMLPrompt", "pos": [1620, -780], "size": [360, 300],
         "widgets": {"prompt": "", "caption": ""}},
        {"type": "NextDiTTextEncode", "title": "Positive", "pos": [420, 40], "size": [400, 200],
         "widgets": {"prompt": "", "system_prompt": "xml (official)", "custom_system_prompt": ""}},
        {"type": "NextDiTTextEncode", "title": "Negative (empty, as the official demo)",
         "pos": [420, 300], "size": [400, 200],
         "widgets": {"prompt": "", "system_prompt": "none", "custom_system_prompt": ""}},
        {"type": "NextDiTSampler", "pos": [880, 40], "width": 300, "widgets": OFFICIAL_SAMPLER},
        *_tail(1230),
    ]
    # 0 dit, 1 text, 2 vae, 3 char1, 4 char2, 5 general, 6 xml prompt, 7 pos, 8 neg, 9 sampler,
    # 10 decode, 11 save
    links = [[3, 0, 4, "prompt"], [4, 0, 5, "prompt"], [5, 0, 6, "prompt"], [6, 0, 7, "prompt"],
             [1, 0, 7, "text_encoders"], [1, 0, 8, "text_encoders"], [0, 0, 9, "model"],
             [7, 0, 9, "positive"], [8, 0, 9, "negative"], [2, 0, 10, "vae"], [9, 0, 10, "samples"],
             [10, 0, 11, "images"]]
    return {"nodes": nodes, "links": links}


def guidance_distilled() -> dict:
    sampler = {**OFFICIAL_SAMPLER, "cfg": 1.0, "guidance": 4.0, "cfg_trunc": 100.0}
    nodes = _loaders(DISTILLED, models_for_dit=False) + [
        {"type": "NextDiTTextEncode", "title": "Positive", "pos": [420, 0], "size": [460, 520],
         "widgets": {"prompt": README_XML, "system_prompt": "xml (official)", "custom_system_prompt": ""}},
        {"type": "NextDiTSampler", "title": "Sampler (guidance-distilled: one forward per step)",
         "pos": [920, 0], "width": 400, "widgets": sampler},
        *_tail(1370),
    ]
    nodes[0]["title"] = "Student made by `python -m nextdit_nodes distill`"
    # 0 dit, 1 text, 2 vae, 3 pos, 4 sampler, 5 decode, 6 save
    links = [[1, 0, 3, "text_encoders"], [0, 0, 4, "model"], [3, 0, 4, "positive"],
             [2, 0, 5, "vae"], [4, 0, 5, "samples"], [5, 0, 6, "images"]]
    return {"nodes": nodes, "links": links}


SHAPES_XML = """<character_1>
<n>circle</n>
<appearance>red, large</appearance>
<position>top_left</position>
</character_1>

<character_2>
<n>square</n>
<appearance>blue, small</appearance>
<position>bottom_right</position>
</character_2>

<general_tags>
<count>two objects</count>
<background>white_background</background>
</general_tags>"""


def embedded_shapes() -> dict:
    """The main job: the embedded model shipped in the pack's embedded/ folder (no downloads)."""
    sampler = {**OFFICIAL_SAMPLER, "width": 64, "height": 64, "steps": 25, "solver": "euler",
               "cfg": 4.0, "cfg_trunc": 1.0}
    nodes = [
        {"type": "NextDiTLoader", "pos": [0, 0], "width": 330,
         "widgets": {"dit_name": "NextDiT-embedded-shapes.pth", "weight_dtype": "auto"}},
        {"type": "NextDiTTextEncoderLoader", "pos": [0, 160], "width": 330,
         "widgets": {"gemma_name": "embedded-shapes-gemma3.safetensors",
                     "jina_name": "embedded-shapes-jina.safetensors", "device": "auto", "dtype": "auto"}},
        {"type": "NextDiTVAELoader", "pos": [0, 380], "width": 330, "widgets": {"vae_name": "embedded-shapes-vae"}},
        {"type": "NextDiTTextEncode", "title": "Positive", "pos": [420, 0], "size": [400, 420],
         "widgets": {"prompt": SHAPES_XML, "system_prompt": "none", "custom_system_prompt": ""}},
        {"type": "NextDiTTextEncode", "title": "Negative (empty: the null condition the model was trained with)",
         "pos": [420, 460], "size": [400, 200],
         "widgets": {"prompt": "", "system_prompt": "none", "custom_system_prompt": ""}},
        {"type": "NextDiTSampler", "pos": [860, 0], "width": 300, "widgets": sampler},
        {"type": "NextDiTVAEDecode", "pos": [1200, 0], "widgets": {"tiled": "auto"}},
        {"type": "SaveImage", "pos": [1480, 0], "size": [300, 340],
         "widgets": {"filename_prefix": "NextDiT-embedded"}},
    ]
    links = [[1, 0, 3, "text_encoders"], [1, 0, 4, "text_encoders"], [0, 0, 5, "model"],
             [3, 0, 5, "positive"], [4, 0, 5, "negative"], [2, 0, 6, "vae"], [5, 0, 6, "samples"],
             [6, 0, 7, "images"]]
    return {"nodes": nodes, "links": links}


def _core_path(dit: dict, files: tuple[str, str, str], positive: dict, negative: dict, ksampler: dict,
               official_cfg: dict, width: int, height: int, prefix: str) -> dict:
    """The pack's loaders and text encoders, then core's sampling: the loader's core MODEL through
    NextDiT Official CFG into KSampler, decoded by the pack's VAE node. files: Gemma, Jina, VAE."""
    gemma, jina, vae_name = files
    text = {"type": "NextDiTTextEncoderLoader", "pos": [0, 160], "width": 330, "widgets": {
        "gemma_name": gemma, "jina_name": jina, "device": "auto", "dtype": "auto"}}
    vae = {"type": "NextDiTVAELoader", "pos": [0, 380], "width": 330, "widgets": {"vae_name": vae_name}}
    if gemma in MODELS:   # downloadable files: ComfyUI's missing-models dialog offers them
        text["models"], vae["models"] = [MODELS[gemma], MODELS[jina]], [MODELS[vae_name]]
    nodes = [
        {**dit, "pos": [0, 0], "width": 330}, text, vae,
        {"type": "NextDiTTextEncode", "title": "Positive", "pos": [420, 0], "size": [400, 420], "widgets": positive},
        {"type": "NextDiTTextEncode", "title": "Negative", "pos": [420, 460], "size": [400, 200], "widgets": negative},
        {"type": "NextDiTOfficialCFG", "pos": [420, -200], "width": 330, "widgets": official_cfg},
        {"type": "EmptySD3LatentImage", "pos": [860, 420], "width": 300,
         "widgets": {"width": width, "height": height, "batch_size": 1}},
        {"type": "KSampler", "pos": [860, 0], "width": 300, "widgets": ksampler},
        {"type": "NextDiTVAEDecode", "pos": [1200, 0], "widgets": {"tiled": "auto"}},
        {"type": "SaveImage", "pos": [1480, 0], "size": [300, 340], "widgets": {"filename_prefix": prefix}},
    ]
    # 0 dit, 1 text, 2 vae, 3 pos, 4 neg, 5 official cfg, 6 empty latent, 7 ksampler, 8 decode, 9 save
    links = [[0, 1, 5, "model"], [1, 0, 3, "text_encoders"], [1, 0, 4, "text_encoders"], [5, 0, 7, "model"],
             [3, 0, 7, "positive"], [4, 0, 7, "negative"], [6, 0, 7, "latent_image"], [2, 0, 8, "vae"],
             [7, 0, 8, "samples"], [8, 0, 9, "images"]]
    return {"nodes": nodes, "links": links}


def newbie_core_sampler() -> dict:
    """NewBie through core's KSampler with the official CFG: euler / simple at 20 steps (a count
    that divides 1000, so core's simple schedule is the official shifted grid), CFG 5, truncation
    0.25."""
    dit = {"type": "NextDiTLoader", "widgets": {"dit_name": DIT, "weight_dtype": "auto"}, "models": [MODELS[DIT]]}
    ksampler = {"seed": 42, "control_after_generate": "fixed", "steps": 20, "cfg": 5.0, "sampler_name": "euler",
                "scheduler": "simple", "denoise": 1.0}
    return _core_path(dit, (GEMMA, JINA, VAE),
                      {"prompt": README_XML, "system_prompt": "xml (official)", "custom_system_prompt": ""},
                      {"prompt": "", "system_prompt": "none", "custom_system_prompt": ""}, ksampler,
                      {"cfg_trunc": 0.25, "renorm_cfg": 0.0}, 1024, 1024, "NewBie")


def embedded_core_sampler() -> dict:
    """The embedded example through core's KSampler: the same settings as the pack's sampler in
    "Embedded shapes model" (25 euler steps, CFG 4 on every step), so the same picture."""
    dit = {"type": "NextDiTLoader", "widgets": {"dit_name": "NextDiT-embedded-shapes.pth", "weight_dtype": "auto"}}
    ksampler = {"seed": 42, "control_after_generate": "fixed", "steps": 25, "cfg": 4.0, "sampler_name": "euler",
                "scheduler": "simple", "denoise": 1.0}
    return _core_path(dit, ("embedded-shapes-gemma3.safetensors", "embedded-shapes-jina.safetensors",
                            "embedded-shapes-vae"),
                      {"prompt": SHAPES_XML, "system_prompt": "none", "custom_system_prompt": ""},
                      {"prompt": "", "system_prompt": "none", "custom_system_prompt": ""}, ksampler,
                      {"cfg_trunc": 1.0, "renorm_cfg": 0.0}, 64, 64, "NextDiT-embedded-core")



TINY_XML = """<character_1>
<n>circle</n>
<appearance>red, tiny</appearance>
<position>top_left</position>
</character_1>

<character_2>
<n>square</n>
<appearance>blue, large</appearance>
<position>middle_center</position>
</character_2>

<character_3>
<n>square</n>
<appearance>purple, tiny</appearance>
<position>bottom_right</position>
</character_3>

<general_tags>
<count>three objects</count>
<background>white_background</background>
</general_tags>"""


def embedded_shapes_lora() -> dict:
    """The embedded model with the LoRA that taught it a size it never saw ("tiny"; README)."""
    spec = embedded_shapes()
    nodes, links = spec["nodes"], spec["links"]
    nodes[3]["widgets"] = {**nodes[3]["widgets"], "prompt": TINY_XML}
    nodes[3]["size"] = [400, 520]
    nodes[4]["pos"] = [420, 560]
    nodes.append({"type": "NextDiTLoraLoader", "title": "LoRA: tiny objects (made by train-lora)",
                  "pos": [0, 520], "width": 330,
                  "widgets": {"lora_name": "NextDiT-embedded-shapes-tiny.safetensors", "strength": 1.0}})
    links = [link for link in links if link[2:] != [5, "model"]]   # the sampler takes the LoRA'd model
    links += [[0, 0, 8, "model"], [8, 0, 5, "model"]]
    return {"nodes": nodes, "links": links}


def embedded_shapes_few_step() -> dict:
    """The embedded 4-step student: steps 0 samples with the settings its file records (4 Euler
    steps, shift 6, cfg 1, guidance 4)."""
    spec = embedded_shapes()
    nodes = spec["nodes"]
    nodes[0]["widgets"] = {**nodes[0]["widgets"], "dit_name": "NextDiT-embedded-shapes-distilled-4step.safetensors"}
    nodes[5]["title"] = "NextDiT Sampler (steps 0: the student's own 4 Euler steps)"
    nodes[5]["widgets"] = {**nodes[5]["widgets"], "steps": 0, "cfg": 1.0, "guidance": 4.0}
    nodes[7]["widgets"] = {"filename_prefix": "NextDiT-embedded-4step"}
    return spec


# Positions withheld: where the objects go and their shapes come from the outline drawing.
OUTLINE_XML = """<character_1>
<n>circle</n>
<appearance>red, large</appearance>
</character_1>

<character_2>
<n>triangle</n>
<appearance>blue, small</appearance>
</character_2>

<character_3>
<n>square</n>
<appearance>yellow, large</appearance>
</character_3>

<general_tags>
<count>three objects</count>
<background>white_background</background>
</general_tags>"""
OUTLINE_IMAGE = "embedded-shapes-outline.png"   # shipped in embedded/input (the runner reads it there)


def embedded_shapes_controlnet() -> dict:
    """The embedded model with the outline ControlNet (README): the caption gives colours and
    shapes but no positions; LoadImage's outline drawing gives where each object goes."""
    spec = embedded_shapes()
    nodes, links = spec["nodes"], spec["links"]
    nodes[3]["widgets"] = {**nodes[3]["widgets"], "prompt": OUTLINE_XML}
    nodes[3]["title"] = "Positive (no positions: the drawing places the objects)"
    nodes[5]["pos"], nodes[6]["pos"], nodes[7]["pos"] = [1260, 0], [1600, 0], [1880, 0]
    nodes.append({"type": "NextDiTControlNetLoader", "title": "ControlNet: outline drawings (made by train-controlnet)",
                  "pos": [0, 520], "width": 330,
                  "widgets": {"control_net_name": "NextDiT-embedded-shapes-outline.safetensors"}})      # 8
    nodes.append({"type": "LoadImage", "title": "Outline drawing", "pos": [420, 720], "size": [300, 360],
                  "widgets": {"image": OUTLINE_IMAGE}})                                                  # 9
    nodes.append({"type": "ControlNetApplyAdvanced", "pos": [860, 0], "width": 330,
                  "widgets": {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}})             # 10
    links = [link for link in links if link[2:] not in ([5, "positive"], [5, "negative"])]
    links += [[3, 0, 10, "positive"], [4, 0, 10, "negative"], [8, 0, 10, "control_net"], [9, 0, 10, "image"],
              [10, 0, 5, "positive"], [10, 1, 5, "negative"], [2, 0, 8, "vae"]]
    nodes[7]["widgets"] = {"filename_prefix": "NextDiT-embedded-controlnet"}
    return {"nodes": nodes, "links": links}


# Their thumbnails are their real outputs, written by the headless runner (see README).
OUTPUT_THUMBNAILS = {"Embedded shapes model", "Embedded shapes model with core KSampler",
                     "Embedded shapes model with a LoRA", "Embedded shapes model, 4-step student",
                     "Embedded shapes model with a ControlNet"}
# Built only once train-embedded's weights ship in the pack (until then the demo runs its workflow
# on random weights).
EMBEDDED_SHIPPED = (Path(__file__).resolve().parents[2] / "embedded" / "diffusion_models"
                    / "NextDiT-embedded-shapes.pth").exists()

EXAMPLES = {
    "Embedded shapes model": embedded_shapes,
    "Embedded shapes model with a LoRA": embedded_shapes_lora,
    "Embedded shapes model with a ControlNet": embedded_shapes_controlnet,
    "Embedded shapes model, 4-step student": embedded_shapes_few_step,
    "NewBie XML text to image": text_to_image,
    "NewBie XML two characters with builder nodes": builder_two_characters,
    "NewBie guidance-distilled text to image": guidance_distilled,
    "NewBie with core KSampler and official CFG": newbie_core_sampler,
    "Embedded shapes model with core KSampler": embedded_core_sampler,
}


def make_thumbnail(png: Path, jpg: Path, side: int = 256) -> None:
    """A picture a workflow made, enlarged without smoothing (its pixels stay visible)."""
    from PIL import Image

    Image.open(png).convert("RGB").resize((side, side), Image.NEAREST).save(jpg, "JPEG", quality=92)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8199")
    parser.add_argument("--out", type=Path, default=Path("example_workflows"))
    parser.add_argument("--only", default=None, help="build only the example with this name")
    parser.add_argument("--thumbnail-from", type=Path, default=None,
                        help="the PNG the example wrote (`python -m nextdit_nodes demo`, or `run` on the "
                             "example): becomes its thumbnail (no editor needed)")
    parser.add_argument("--thumbnail-for", default="Embedded shapes model",
                        help="the example whose thumbnail --thumbnail-from makes")
    args = parser.parse_args()
    if args.thumbnail_from:
        make_thumbnail(args.thumbnail_from, args.out / f"{args.thumbnail_for}.jpg")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    with editor(args.url) as (page, _events):
        for name, make in EXAMPLES.items():
            if args.only and name != args.only:
                continue
            if name in OUTPUT_THUMBNAILS and not EMBEDDED_SHIPPED:
                print(f"skipped {name}: the embedded weights are not in embedded/ yet")
                continue
            workflow = build_graph(page, make())
            path = args.out / f"{name}.json"
            path.write_text(json.dumps(workflow, indent=2, ensure_ascii=False) + "\n")
            load_graph(page, json.loads(path.read_text()))  # what a user gets on opening it
            page.keyboard.press("Escape")  # a missing-models dialog, where the files are absent
            fit_view(page)
            if name not in OUTPUT_THUMBNAILS:
                screenshot_jpg(page, path.with_suffix(".jpg"))
            print(f"wrote {path} and its thumbnail")


if __name__ == "__main__":
    main()
