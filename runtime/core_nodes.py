"""The few core ComfyUI nodes the example workflows use, for the headless runner.

Same ids, input names, widget order and file naming as ComfyUI's (``nodes.py`` ``SaveImage`` /
``PreviewImage``, ``comfy_extras/nodes_primitive.py``), so a workflow runs the same here and
there. PNGs carry the ``prompt`` (API JSON) and ``workflow`` (UI JSON) text chunks as ComfyUI
writes them, so dropping a saved PNG on ComfyUI restores the graph.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

from ..files.atomic import atomic_path

CONTROL_AFTER_GENERATE = "fixed"


def _fill_placeholders(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    for name, value in (("width", width), ("height", height), ("year", now.tm_year),
                        ("month", f"{now.tm_mon:02}"), ("day", f"{now.tm_mday:02}"),
                        ("hour", f"{now.tm_hour:02}"), ("minute", f"{now.tm_min:02}"),
                        ("second", f"{now.tm_sec:02}")):
        prefix = prefix.replace(f"%{name}%", str(value))
    return prefix


def next_save_path(prefix: str, output_dir: Path, width: int, height: int
                   ) -> tuple[Path, str, int, str]:
    """(folder, file stem, first free counter, subfolder), numbered like ComfyUI's outputs."""
    prefix = _fill_placeholders(prefix, width, height)
    subfolder, stem = os.path.split(os.path.normpath(prefix))
    folder = (output_dir / subfolder).resolve()
    if os.path.commonpath([folder, output_dir.resolve()]) != str(output_dir.resolve()):
        raise ValueError(f"filename_prefix {prefix!r} points outside the output folder {output_dir}")
    folder.mkdir(parents=True, exist_ok=True)
    counters = [0]
    for name in os.listdir(folder):
        head, rest = name[:len(stem) + 1], name[len(stem) + 1:]
        if head[:-1].lower() == stem.lower() and head.endswith("_"):
            digits = rest.split(".")[0].split("_")[0]
            counters.append(int(digits) if digits.isdigit() else 0)
    return folder, stem, max(counters) + 1, subfolder


def save_png(image, path: Path, prompt: dict | None, extra_pnginfo: dict | None,
             compress_level: int = 4) -> None:
    """One IMAGE [H,W,3] in [0,1] to an 8-bit PNG (values truncated, as ComfyUI does)."""
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    pixels = np.clip(255.0 * image.detach().float().cpu().numpy(), 0, 255).astype(np.uint8)
    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(key, json.dumps(value))
    with atomic_path(path) as partial:  # never half a PNG under its final name
        Image.fromarray(pixels).save(partial, format="PNG", pnginfo=info, compress_level=compress_level)


class SaveImage:
    """Saves images as PNG into the output folder, with the workflow embedded."""

    output_dir = Path("output")
    kind = "output"
    compress_level = 4

    def __init__(self):
        self.prefix_append = ""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": ("STRING", {
                    "default": "ComfyUI",
                    "tooltip": "The prefix for the file to save; may contain a subfolder and "
                               "%width%, %height%, %year%, %month%, %day%, %hour%, %minute%."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"
    DISPLAY_NAME = "Save Image"
    DESCRIPTION = "Saves the input images to the output directory."

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        height, width = images[0].shape[0], images[0].shape[1]
        folder, stem, counter, subfolder = next_save_path(
            filename_prefix + self.prefix_append, Path(self.output_dir), width, height)
        results = []
        for batch_number, image in enumerate(images):
            name = f"{stem.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            save_png(image, folder / name, prompt, extra_pnginfo, self.compress_level)
            results.append({"filename": name, "subfolder": subfolder, "type": self.kind})
            counter += 1
        return {"ui": {"images": results}, "result": (images,)}


class PreviewImage(SaveImage):
    """Writes the images to the temporary folder (ComfyUI shows them on the node)."""

    output_dir = Path("temp")
    kind = "temp"
    compress_level = 1
    DISPLAY_NAME = "Preview Image"
    DESCRIPTION = "Preview the images without saving them to the output directory."

    def __init__(self):
        self.prefix_append = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz")
                                                for _ in range(5))

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}


def _primitive(node_id: str, kind: str, display: str, options: dict) -> type:
    def execute(self, value):
        return (value,)

    return type(node_id, (), {
        "INPUT_TYPES": classmethod(lambda cls: {"required": {"value": (kind, dict(options))}}),
        "RETURN_TYPES": (kind,), "FUNCTION": "execute", "CATEGORY": "utilities/primitive",
        "DISPLAY_NAME": display, "DESCRIPTION": f"A constant {kind} value.", "execute": execute,
    })


PRIMITIVES = (
    _primitive("PrimitiveString", "STRING", "Text", {}),
    _primitive("PrimitiveStringMultiline", "STRING", "Text (Multiline)", {"multiline": True}),
    _primitive("PrimitiveInt", "INT", "Int", {"min": -sys.maxsize, "max": sys.maxsize,
                                              "control_after_generate": CONTROL_AFTER_GENERATE}),
    _primitive("PrimitiveFloat", "FLOAT", "Float", {"min": -sys.maxsize, "max": sys.maxsize,
                                                    "step": 0.1}),
    _primitive("PrimitiveBoolean", "BOOLEAN", "Boolean", {}),
)


def core_node_classes(output_dir: str | Path = "output", temp_dir: str | Path | None = None,
                      input_dir: str | Path = "input") -> dict[str, type]:
    """Core node classes with their folders bound (each call makes fresh subclasses)."""
    import tempfile

    from .image_nodes import image_node_classes

    temp = Path(temp_dir) if temp_dir is not None else Path(tempfile.gettempdir()) / "nextdit-nodes"
    save = type("SaveImage", (SaveImage,), {"output_dir": Path(output_dir)})
    preview = type("PreviewImage", (PreviewImage,), {"output_dir": temp})
    classes = {"SaveImage": save, "PreviewImage": preview}
    classes.update({cls.__name__: cls for cls in PRIMITIVES})
    classes.update(image_node_classes(input_dir))
    return classes
