"""The pack's example workflows in the editor's template browser.

ComfyUI lists a custom node folder's ``example_workflows/`` under Templates -> Extensions
(``/workflow_templates``), next to its core templates (``/templates/index.json``, from the
comfyui-workflow-templates package). The editor opens its template browser on a category of
the core index: "Getting Started" for a new user (the frontend's ``basics-getting-started``),
"All Templates" afterwards. ``serve`` has no core templates, so there the pack's examples are the
core index, as one "Getting Started" category, served where the editor fetches core templates
(``/templates/<name>.json`` and the thumbnail ``/templates/<name>-1.jpg``): the browser opens on
them. They are not listed under Extensions as well, which would show each twice under "All".
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from aiohttp import web

FOLDER = "nextdit-nodes"  # the pack's folder name in ComfyUI; the repository's name
CATEGORY = "Getting Started"  # the core category a new user's template browser opens on


def add_routes(routes: web.RouteTableDef, app: web.Application, examples: Path,
               runnable: Callable[[Path], bool] = lambda path: True) -> None:
    """``runnable(path)``: whether this server can run the example; the others (those built on core
    ComfyUI nodes such as KSampler, for ComfyUI itself) are left out of the list."""
    def listed() -> dict[str, Path]:
        return {path.stem: path for path in sorted(examples.glob("*.json")) if runnable(path)}

    @routes.get("/templates/index.json")
    async def core_index(request):
        names = list(listed())
        if not names:
            return web.json_response([])
        return web.json_response([{
            "moduleName": "default", "title": CATEGORY, "type": "image", "isEssential": True,
            "templates": [{"name": name, "title": name, "description": f"{FOLDER} example workflow",
                           "mediaType": "image", "mediaSubtype": "jpg"} for name in names]}])

    @routes.get("/templates/index_logo.json")
    async def core_logos(request):
        return web.json_response({})

    @routes.get("/templates/{file}")
    async def core_file(request):
        """A listed example (``<name>.json``) or its thumbnail (``<name>-1.jpg``)."""
        file = request.match_info["file"]
        examples_listed = listed()
        if file.endswith(".json") and file[:-5] in examples_listed:
            return web.FileResponse(examples_listed[file[:-5]])
        if file.endswith("-1.jpg") and file[:-6] in examples_listed:
            thumbnail = examples_listed[file[:-6]].with_suffix(".jpg")
            if thumbnail.is_file():
                return web.FileResponse(thumbnail)
        raise web.HTTPNotFound()

    @routes.get("/workflow_templates")
    async def list_templates(request):
        return web.json_response({})   # listed as the core index above
