"""The editor's settings and saved files (workflows, subgraph blueprints, ``user.css``) in the user
folder, as ComfyUI's single-user ``app/user_manager.py`` and ``app/app_settings.py`` keep them:
``<user dir>/default/comfy.settings.json`` and ``<user dir>/default/<path>``."""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path
from urllib.parse import unquote

from aiohttp import web

from ..files.atomic import write_bytes
from . import jsonio
from ..files.paths import inside

log = logging.getLogger(__name__)
SETTINGS = "comfy.settings.json"
# Files the editor asks for on every start; an empty ComfyUI answers 404 (a console error on a
# fresh user folder), here their empty form.
EMPTY_DEFAULTS = {"user.css": ("", "text/css"), "comfy.templates.json": ("[]", "application/json")}


def _file_info(path: Path, root: Path) -> dict:
    stat = path.stat()
    return {"path": path.relative_to(root).as_posix(), "size": stat.st_size,
            "modified": int(stat.st_mtime * 1000), "created": int(stat.st_ctime * 1000)}


def add_routes(routes: web.RouteTableDef, user_dir: Path) -> None:
    root = user_dir / "default"
    for folder in ("workflows", "subgraphs"):  # so the editor's first listings are empty, not 404
        (root / folder).mkdir(parents=True, exist_ok=True)

    def settings() -> dict:
        try:
            values = json.loads((root / SETTINGS).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.error("the settings file %s cannot be read (%s); using defaults", root / SETTINGS, error)
            return {}
        return values if isinstance(values, dict) else {}

    def save_settings(values: dict) -> None:
        write_bytes(root / SETTINGS, json.dumps(values, indent=4).encode())

    def user_path(request: web.Request, param: str = "file") -> Path | None:
        return inside(root, unquote(request.match_info.get(param, "")))

    @routes.get("/users")
    async def get_users(request):
        return web.json_response({"storage": "server", "migrated": True})

    @routes.get("/settings")
    async def get_settings(request):
        return web.json_response(settings())

    @routes.get("/settings/{id}")
    async def get_setting(request):
        return web.json_response(settings().get(request.match_info["id"]))

    @routes.post("/settings")
    async def post_settings(request):
        try:
            values = await jsonio.read(request)
        except jsonio.BadJSON as error:
            return web.Response(status=400, text=str(error))
        if not isinstance(values, dict):
            return web.Response(status=400, text="the settings must be a JSON object")
        save_settings({**settings(), **values})
        return web.Response(status=200)

    @routes.post("/settings/{id}")
    async def post_setting(request):
        try:
            value = await jsonio.read(request)
        except jsonio.BadJSON as error:
            return web.Response(status=400, text=str(error))
        save_settings({**settings(), request.match_info["id"]: value})
        return web.Response(status=200)

    @routes.get("/userdata")
    async def list_userdata(request):
        query = request.rel_url.query
        if not query.get("dir"):
            return web.Response(status=400, text="Directory not provided")
        folder = inside(root, query["dir"])
        if folder is None:
            return web.Response(status=403, text="Invalid directory")
        if not folder.is_dir():
            return web.Response(status=404, text="Directory not found")
        pattern = os.path.join(glob.escape(str(folder)), "**", "*") if query.get("recurse") == "true" \
            else os.path.join(glob.escape(str(folder)), "*")
        files = [Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        if query.get("full_info") == "true":
            return web.json_response([_file_info(path, folder) for path in files])
        relative = [path.relative_to(folder).as_posix() for path in files]
        if query.get("split") == "true":
            return web.json_response([[r, *r.split("/")] for r in relative])
        return web.json_response(relative)

    @routes.get("/userdata/{file}")
    async def get_userdata(request):
        path = user_path(request)
        if path is None:
            return web.Response(status=403, text="the path leaves the user folder")
        if not path.is_file():
            default = EMPTY_DEFAULTS.get(path.relative_to(root.resolve()).as_posix())
            if default is None:
                return web.Response(status=404, text="no such file")
            return web.Response(text=default[0], content_type=default[1])
        inline = path.name == "user.css" and path.parent == root.resolve()
        return web.FileResponse(path, headers={
            "Content-Type": "text/css" if inline else "application/octet-stream",
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": "inline" if inline else "attachment"})

    def refused_overwrite(request: web.Request, path: Path) -> web.Response | None:
        if request.query.get("overwrite", "true") == "false" and path.exists():
            return web.Response(status=409, text="File already exists")
        return None

    def saved(request: web.Request, path: Path) -> web.Response:
        """What ComfyUI answers after a save or a move: the path, or its full information."""
        if request.query.get("full_info", "false").lower() == "true":
            return web.json_response(_file_info(path, root.resolve()))
        return web.json_response(path.relative_to(root.resolve()).as_posix())

    @routes.post("/userdata/{file}")
    async def post_userdata(request):
        path = user_path(request)
        if path is None or path == root.resolve():
            return web.Response(status=403, text="the path leaves the user folder")
        if (refusal := refused_overwrite(request, path)) is not None:
            return refusal
        if path.is_dir():
            return web.Response(status=409, text="a folder has that name")
        try:
            write_bytes(path, await request.read())
        except OSError as error:  # a file where a folder of the path should be, a full disk
            return web.Response(status=409, text=f"the file cannot be written there: {error.strerror or error}")
        return saved(request, path)

    @routes.delete("/userdata/{file}")
    async def delete_userdata(request):
        path = user_path(request)
        if path is None or not path.is_file():
            return web.Response(status=403 if path is None else 404, text="no such file")
        path.unlink()
        return web.Response(status=204)

    @routes.post("/userdata/{file}/move/{dest}")
    async def move_userdata(request):
        source, dest = user_path(request), user_path(request, "dest")
        if source is None or dest is None:
            return web.Response(status=403, text="the path leaves the user folder")
        if not source.is_file():
            return web.Response(status=404, text="no such file")
        if (refusal := refused_overwrite(request, dest)) is not None:
            return refusal
        if dest.is_dir():
            return web.Response(status=409, text="a folder has that name")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, dest)
        except OSError as error:
            return web.Response(status=409, text=f"the file cannot be moved there: {error.strerror or error}")
        return saved(request, dest)
