"""The pack's example workflows in the editor's template browser (Templates -> Extensions ->
``nextdit-nodes``), served as ComfyUI's ``app/custom_node_manager.py`` serves a custom node
folder's ``example_workflows/``: the list at ``/workflow_templates``, the files (workflow JSON and
its ``.jpg`` thumbnail) at ``/api/workflow_templates/<folder>/<file>``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from aiohttp import web

FOLDER = "nextdit-nodes"  # the name the template browser shows; the repository's name


def add_routes(routes: web.RouteTableDef, app: web.Application, examples: Path,
               runnable: Callable[[Path], bool] = lambda path: True) -> None:
    """``runnable(path)``: whether this server can run the example; the others (those built on core
    ComfyUI nodes such as KSampler, for ComfyUI itself) are left out of the list."""
    @routes.get("/workflow_templates")
    async def list_templates(request):
        names = sorted(path.stem for path in examples.glob("*.json") if runnable(path))
        return web.json_response({FOLDER: names} if names else {})

    # Not under /api twice: ComfyUI adds this static route once, with the prefix.
    app.router.add_static(f"/api/workflow_templates/{FOLDER}", examples, follow_symlinks=False)

    # The core template packages (comfyui-workflow-templates) are not installed here: an empty
    # index instead of the 404s an empty ComfyUI gives.
    @routes.get("/templates/index.json")
    async def core_index(request):
        return web.json_response([])

    @routes.get("/templates/index_logo.json")
    async def core_logos(request):
        return web.json_response({})
