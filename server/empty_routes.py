"""Routes the editor calls that the pack has no use for, answered as an empty ComfyUI answers them
(no custom node web extensions, translations, blueprints, node replacements), plus the system
information the About panel shows. Server paths are never listed."""

from __future__ import annotations

import glob
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from aiohttp import web

from ..nodes import host
from ..runtime.model_sources import MODEL_INPUT_FOLDERS

# The ComfyUI release whose HTTP protocol this server speaks: the one that pins the frontend
# version the pack pins (ComfyUI v0.33.0 pins comfyui-frontend-package 1.49.6).
PROTOCOL_VERSION = "0.33.0"
MODEL_FOLDERS = sorted(set(MODEL_INPUT_FOLDERS.values()))


def _memory() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 0, 0


def _system_stats() -> dict:
    """Answered at once: the editor asks at start-up and waits for it (torch, when the runner has
    not imported it yet, is not imported here just for this)."""
    total, free = _memory()
    torch = sys.modules.get("torch")
    device_type, device_name, total_vram, free_vram = "cpu", "cpu", total, free
    if torch is not None and torch.cuda.is_available():
        device = host.torch_device()
        device_type, device_name = device.type, str(device)
        free_vram, total_vram = torch.cuda.mem_get_info(device)
    return {
        "system": {"os": sys.platform, "ram_total": total, "ram_free": free,
                   "comfyui_version": PROTOCOL_VERSION,
                   "required_frontend_version": metadata.version("comfyui-frontend-package"),
                   "python_version": sys.version, "pytorch_version": metadata.version("torch"),
                   "embedded_python": False,
                   # No API nodes here: the flag with which ComfyUI says so, and the editor then
                   # calls no outside host (release notes).
                   "argv": ["nextdit_nodes", "serve", "--disable-api-nodes"],
                   "platform": platform.platform()},
        "devices": [{"name": device_name, "type": device_type, "index": 0 if device_type == "cuda" else None,
                     "vram_total": total_vram, "vram_free": free_vram,
                     "torch_vram_total": total_vram, "torch_vram_free": free_vram}],
    }


def add_routes(routes: web.RouteTableDef, web_root: Path, features: dict) -> None:
    @routes.get("/features")
    async def get_features(request):
        return web.json_response(features)

    @routes.get("/system_stats")
    async def get_system_stats(request):
        return web.json_response(_system_stats())

    @routes.get("/extensions")
    async def get_extensions(request):
        # The frontend's own core extensions, as ComfyUI lists them; the pack ships none.
        files = glob.glob(os.path.join(glob.escape(str(web_root)), "extensions", "**", "*.js"), recursive=True)
        return web.json_response(["/" + Path(f).relative_to(web_root).as_posix() for f in files])

    @routes.get("/i18n")
    async def get_i18n(request):
        return web.json_response({})

    @routes.get("/global_subgraphs")
    async def get_global_subgraphs(request):
        return web.json_response({})

    @routes.get("/global_subgraphs/{id}")
    async def get_global_subgraph(request):
        return web.Response(status=404)

    @routes.get("/node_replacements")
    async def get_node_replacements(request):
        return web.json_response({})

    @routes.get("/embeddings")
    async def get_embeddings(request):
        return web.json_response([])

    @routes.get("/models")
    async def get_model_types(request):
        return web.json_response(MODEL_FOLDERS)

    @routes.get("/models/{folder}")
    async def get_models(request):
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response(host.list_model_files(folder))

    @routes.get("/experiment/models")
    async def get_model_folders(request):
        return web.json_response([{"name": folder, "folders": []} for folder in MODEL_FOLDERS])

    @routes.get("/experiment/models/{folder}")
    async def get_model_folder(request):
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response([{"name": name, "pathIndex": 0} for name in host.list_model_files(folder)])

    @routes.get("/view_metadata/{folder}")
    async def get_view_metadata(request):
        return web.Response(status=404)

    @routes.get("/user.css")
    async def get_user_css(request):
        # index.html links it; the user's own styles come from /userdata/user.css.
        return web.Response(text="", content_type="text/css")


def add_internal_routes(app: web.Application) -> None:
    """``/internal/...`` (no /api twin in ComfyUI): the folder list without server paths."""
    async def folder_paths(request):
        return web.json_response({folder: [] for folder in MODEL_FOLDERS})

    app.router.add_get("/internal/folder_paths", folder_paths)
