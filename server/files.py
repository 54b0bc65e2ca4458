"""``/view`` (images the graph saved, uploads) and ``/upload/image``, kept inside their folders.

Names come from whoever reaches the port, so: no absolute names, no ``..``, no symlink leading
out (``paths.inside``); uploads are limited in size (the application's ``client_max_size``, a
clear 413 beyond it) and must decode as an image, otherwise nothing is written.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import mimetypes
import warnings
from pathlib import Path

from aiohttp import web

from ..files.atomic import write_bytes
from ..files.paths import inside

# Decoded size an upload may have (8192 x 8192): the pixels, not the file size, set the memory a
# decode takes, and a small PNG can hold a huge image.
MAX_UPLOAD_PIXELS = 8192 * 8192
ANNOTATIONS = {" [output]": "output", " [input]": "input", " [temp]": "temp"}


def _split_annotation(filename: str, kind: str | None) -> tuple[str, str | None]:
    """``"name.png [output]"`` -> ("name.png", "output"), as ComfyUI's ``annotated_filepath``."""
    for suffix, folder in ANNOTATIONS.items():
        if filename.endswith(suffix):
            return filename[:-len(suffix)], folder
    return filename, kind


def _checked_image(data: bytes) -> str | None:
    """Why ``data`` is not an image Pillow can decode (None when it is). Runs in a worker thread:
    decoding a large image takes seconds."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_UPLOAD_PIXELS:
                    return (f"{width}x{height} is {width * height / 1e6:.0f} megapixels; this server "
                            f"takes up to {MAX_UPLOAD_PIXELS / 1e6:.0f}")
                image.verify()
            with Image.open(io.BytesIO(data)) as image:
                image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        return f"{type(error).__name__}: {error}"
    return None


def _render(path: Path, query) -> web.Response | None:
    """The ``preview=webp;90`` / ``channel=rgb|a`` variants ComfyUI's ``/view`` offers."""
    from PIL import Image

    channel = query.get("channel", "rgba")
    if "preview" not in query and channel not in ("rgb", "a"):
        return None
    buffer = io.BytesIO()
    with Image.open(path) as image:
        if image.width * image.height > MAX_UPLOAD_PIXELS:
            return web.Response(status=413, text="the image is too large to convert; ask for it as it is")
        if "preview" in query:
            kind, *rest = query["preview"].split(";")
            kind = kind if kind in ("webp", "jpeg") and "a" not in channel else "webp"
            quality = min(int(rest[-1]), 100) if rest and rest[-1].isdigit() else 90
            (image.convert("RGB") if kind == "jpeg" or channel == "rgb" else image).save(
                buffer, format=kind, quality=quality)
            content_type = f"image/{kind}"
        elif channel == "rgb":
            image.convert("RGB").save(buffer, format="PNG")
            content_type = "image/png"
        else:
            alpha = image.getchannel("A") if image.mode == "RGBA" else Image.new("L", image.size, 255)
            out = Image.new("RGBA", image.size)
            out.putalpha(alpha)
            out.save(buffer, format="PNG")
            content_type = "image/png"
    return web.Response(body=buffer.getvalue(), content_type=content_type)


def add_routes(routes: web.RouteTableDef, folders: dict[str, Path], max_upload: int) -> None:
    """``folders``: "output", "input", "temp" -> their paths."""

    @routes.get("/view")
    async def view(request):
        query = request.rel_url.query
        filename, kind = _split_annotation(query.get("filename", ""), query.get("type"))
        if not filename:
            return web.Response(status=400, text="filename is required")
        folder = folders.get(kind or "output")
        if folder is None:
            return web.Response(status=400, text=f"type must be one of {', '.join(folders)}")
        path = inside(folder, query.get("subfolder", ""), filename)
        if path is None:
            return web.Response(status=400, text="the file name leaves its folder")
        if not path.is_file():
            return web.Response(status=404, text="no such file")
        try:
            rendered = await asyncio.get_running_loop().run_in_executor(None, _render, path, query)
        except (OSError, SyntaxError, ValueError) as error:
            return web.Response(status=415, text=f"the file cannot be converted: {type(error).__name__}")
        if rendered is not None:
            return rendered
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = {"X-Content-Type-Options": "nosniff", "Content-Disposition": f'filename="{path.name}"'}
        if not content_type.startswith(("image/", "video/", "audio/")) or content_type == "image/svg+xml":
            content_type, headers["Content-Disposition"] = "application/octet-stream", "attachment"
        headers["Content-Type"] = content_type
        return web.FileResponse(path, headers=headers)

    @routes.post("/upload/image")
    async def upload_image(request):
        try:
            post = await request.post()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413, text=f"the upload is larger than {max_upload // 2**20} MB")
        image = post.get("image")
        if image is None or not getattr(image, "filename", None):
            return web.Response(status=400, text="an 'image' file is required")
        kind = post.get("type") or "input"
        if kind not in folders:
            return web.Response(status=400, text=f"type must be one of {', '.join(folders)}")
        subfolder = post.get("subfolder") or ""
        # A plain file name (folders go in "subfolder"), and the two together stay inside.
        plain = not any(c in image.filename for c in "/\\") and image.filename not in (".", "..")
        target = inside(folders[kind], subfolder, image.filename) if plain else None
        if target is None:
            return web.Response(status=400, text="the file name leaves the upload folder")
        data = image.file.read()
        problem = await asyncio.get_running_loop().run_in_executor(None, _checked_image, data)
        if problem is not None:
            return web.Response(status=415, text=f"not an image this server can read ({problem})")
        try:
            target = _free_name(target, data, post.get("overwrite") in ("true", "1"))
            if not target.exists():
                write_bytes(target, data)
        except OSError as error:  # a file where the subfolder should be, a folder of that name, a full disk
            return web.Response(status=409, text=f"the upload cannot be written there: {error.strerror or error}")
        return web.json_response({"name": target.name, "subfolder": subfolder, "type": kind})


def _free_name(target: Path, data: bytes, overwrite: bool) -> Path:
    """ComfyUI's naming: overwrite, or the same bytes already there, or "name (1).png"..."""
    if overwrite:
        if target.exists():
            target.unlink()
        return target
    stem, suffix, counter = target.stem, target.suffix, 1
    while target.exists():
        if hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest():
            return target
        target = target.with_name(f"{stem} ({counter}){suffix}")
        counter += 1
    return target
