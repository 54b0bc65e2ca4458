"""Core ComfyUI's image and ControlNet nodes for the headless runner and ``serve``: ``LoadImage``,
``LoadImageMask``, ``ImageScale``, ``ControlNetApplyAdvanced`` and ``Canny``.

Same ids, input names, widget order and outputs as ComfyUI's (``nodes.py`` and
``comfy_extras/nodes_canny.py``), so a workflow runs the same here and inside ComfyUI, where
core's own nodes run. Images are read from the input folder only, as uploads are stored (and,
after it, the pack's own ``embedded/input``, which holds the example workflows' images): a name
that leaves them (absolute, ``..``, a symlink out) is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..nodes.host import EMBEDDED_DIR
from ..files.paths import inside

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_RESOLUTION = 16384


def _roots(folder: Path) -> list[Path]:
    return [folder, EMBEDDED_DIR / "input"]


def _input_files(folder: Path) -> list[str]:
    names = set()
    for root in _roots(folder):
        if root.is_dir():
            names.update(p.relative_to(root).as_posix() for p in root.rglob("*")
                         if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    return sorted(names)


def _input_path(folder: Path, name) -> Path:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"an image name from the input folder is needed; got {name!r}")
    name = name.removesuffix(" [input]")
    paths = [inside(root, name) for root in _roots(folder)]
    if paths[0] is None:
        raise ValueError(f"image {name!r} is not inside the input folder; upload it or put it into {folder.name}/")
    for path in paths:
        if path is not None and path.is_file():
            return path
    raise FileNotFoundError(f"image {name!r} is not in the input folder; upload it (or copy it into "
                            f"{folder.name}/) and pick it from the list")


def load_image_file(path: Path):
    """(IMAGE [B,H,W,3], MASK [B,H,W]) as core's LoadImage: every frame of the first frame's size,
    EXIF orientation applied; the mask is 1 − alpha, or zeros (64×64) without alpha."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps, ImageSequence

    images, masks, size = [], [], None
    with Image.open(path) as opened:
        for frame in ImageSequence.Iterator(opened):
            frame = ImageOps.exif_transpose(frame)
            rgb = frame.convert("RGB")
            size = size or rgb.size
            if rgb.size != size:
                continue
            images.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)[None])
            if "A" in frame.getbands():
                alpha = np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0
                masks.append(1.0 - torch.from_numpy(alpha)[None])
            else:
                masks.append(torch.zeros(1, 64, 64))
    return torch.cat(images), torch.cat(masks)


class LoadImage:
    input_dir = Path("input")
    CATEGORY = "image"
    DISPLAY_NAME = "Load Image"
    DESCRIPTION = "Loads an image from the input folder (upload one with the node's button)."
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"
    SEARCH_ALIASES = ["load image", "open image", "upload image"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (_input_files(cls.input_dir), {"image_upload": True})}}

    def load_image(self, image):
        return load_image_file(_input_path(self.input_dir, image))

    @classmethod
    def IS_CHANGED(cls, image, **_):
        try:
            return hashlib.sha256(_input_path(cls.input_dir, image).read_bytes()).hexdigest()
        except (ValueError, OSError):
            return ""

    @classmethod
    def VALIDATE_INPUTS(cls, image, **_):
        try:
            _input_path(cls.input_dir, image)
        except (ValueError, FileNotFoundError) as error:
            return str(error)
        return True


class LoadImageMask(LoadImage):
    DISPLAY_NAME = "Load Image (as Mask)"
    DESCRIPTION = "Loads one channel of an image from the input folder as a MASK."
    RETURN_TYPES = ("MASK",)
    FUNCTION = "load_image_mask"
    SEARCH_ALIASES = ["import mask", "alpha mask", "channel mask"]
    CHANNELS = ["alpha", "red", "green", "blue"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**super().INPUT_TYPES()["required"], "channel": (cls.CHANNELS,)}}

    def load_image_mask(self, image, channel):
        if channel not in self.CHANNELS:
            raise ValueError(f"channel must be one of {', '.join(self.CHANNELS)}; got {channel!r}")
        pixels, mask = self.load_image(image)
        if channel == "alpha":
            return (mask,)
        return (pixels[..., self.CHANNELS.index(channel) - 1].clone(),)


def _resize(samples, width: int, height: int, method: str, crop: str):
    """(B, C, H, W) to (height, width) as core's ``common_upscale`` (centre crop to the aspect first)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    if crop == "center":
        old_h, old_w = samples.shape[-2:]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2) if old_aspect > new_aspect else 0
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2) if old_aspect < new_aspect else 0
        samples = samples[..., y:old_h - y, x:old_w - x]
    if method != "lanczos":
        return F.interpolate(samples, size=(height, width), mode=method)
    out = []
    for image in samples:   # as core: through 8-bit PIL images
        pil = Image.fromarray(np.clip(255.0 * image.movedim(0, -1).cpu().numpy(), 0, 255).astype(np.uint8))
        resized = np.asarray(pil.resize((width, height), resample=Image.Resampling.LANCZOS), dtype=np.float32)
        out.append(torch.from_numpy(resized / 255.0).movedim(-1, 0))
    return torch.stack(out).to(samples.device, samples.dtype)


class ImageScale:
    UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    CROP_METHODS = ["disabled", "center"]
    CATEGORY = "image/upscaling"
    DISPLAY_NAME = "Upscale Image"
    DESCRIPTION = "Resizes images to width × height (0 keeps the aspect from the other side)."
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    SEARCH_ALIASES = ["resize", "resize image", "scale image"]

    @classmethod
    def INPUT_TYPES(cls):
        size = {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}
        return {"required": {"image": ("IMAGE",), "upscale_method": (cls.UPSCALE_METHODS,),
                             "width": ("INT", dict(size)), "height": ("INT", dict(size)),
                             "crop": (cls.CROP_METHODS,)}}

    def upscale(self, image, upscale_method, width, height, crop):
        if upscale_method not in self.UPSCALE_METHODS or crop not in self.CROP_METHODS:
            raise ValueError(f"upscale_method must be one of {self.UPSCALE_METHODS} and crop one of "
                             f"{self.CROP_METHODS}; got {upscale_method!r}, {crop!r}")
        if width == 0 and height == 0:
            return (image,)
        samples = image.movedim(-1, 1)
        if width == 0:
            width = max(1, round(samples.shape[3] * height / samples.shape[2]))
        elif height == 0:
            height = max(1, round(samples.shape[2] * width / samples.shape[3]))
        return (_resize(samples, int(width), int(height), upscale_method, crop).movedim(1, -1),)


class ControlNetApplyAdvanced:
    CATEGORY = "conditioning/controlnet"
    DISPLAY_NAME = "Apply ControlNet"
    DESCRIPTION = ("Adds a ControlNet with its control image to positive and negative CONDITIONING "
                   "(the sampler runs it between start and end percent of the sampling).")
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "apply_controlnet"
    SEARCH_ALIASES = ["controlnet", "apply controlnet", "use controlnet", "control net"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "control_net": ("CONTROL_NET",),
            "image": ("IMAGE",),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
        }, "optional": {"vae": ("VAE",)}}

    def apply_controlnet(self, positive, negative, control_net, image, strength, start_percent, end_percent,
                         vae=None, extra_concat=()):
        # As core: strength 0 leaves the conditioning as it is; entries sharing a previous control
        # share the new one (so positive and negative run it once).
        if strength == 0:
            return (positive, negative)
        hint = image.movedim(-1, 1)
        made: dict[int, object] = {}
        out = []
        for conditioning in (positive, negative):
            entries = []
            for feats, extras in conditioning:
                extras = dict(extras)
                previous = extras.get("control")
                if id(previous) not in made:
                    made[id(previous)] = control_net.copy().set_cond_hint(
                        hint, strength, (start_percent, end_percent), vae=vae, extra_concat=list(extra_concat))
                    made[id(previous)].set_previous_controlnet(previous)
                extras["control"] = made[id(previous)]
                extras["control_apply_to_uncond"] = False
                entries.append([feats, extras])
            out.append(entries)
        return (out[0], out[1])


class Canny:
    CATEGORY = "image/filters"
    DISPLAY_NAME = "Detect Edges (Canny)"
    DESCRIPTION = "Canny edge detection (white edges on black), as core's Canny node."
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "detect_edge"
    SEARCH_ALIASES = ["edge detection", "outline", "contour detection", "line art"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE",),
            "low_threshold": ("FLOAT", {"default": 0.4, "min": 0.01, "max": 0.99, "step": 0.01}),
            "high_threshold": ("FLOAT", {"default": 0.8, "min": 0.01, "max": 0.99, "step": 0.01}),
        }}

    def detect_edge(self, image, low_threshold, high_threshold):
        from ..controlnet.canny import canny

        edges = canny(image.movedim(-1, 1), float(low_threshold), float(high_threshold))
        return (edges.repeat(1, 3, 1, 1).movedim(1, -1),)


IMAGE_NODES = (LoadImage, LoadImageMask, ImageScale, ControlNetApplyAdvanced, Canny)
# The module each comes from in ComfyUI (the editor's node-library badge).
IMAGE_NODE_MODULES = {"LoadImage": "nodes", "LoadImageMask": "nodes", "ImageScale": "nodes",
                      "ControlNetApplyAdvanced": "nodes", "Canny": "comfy_extras.nodes_canny"}


def image_node_classes(input_dir: str | Path = "input") -> dict[str, type]:
    """The classes with the input folder bound (fresh subclasses per call)."""
    folder = Path(input_dir)
    return {cls.__name__: type(cls.__name__, (cls,), {"input_dir": folder}) if issubclass(cls, LoadImage) else cls
            for cls in IMAGE_NODES}
