"""The aiohttp application: the frontend's static files, the routes of every module (each also
under ``/api``, as ComfyUI serves them), the websocket, and the worker thread's life."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from aiohttp import web

from ..files.atomic import clean_leftovers
from ..nodes import NODE_CLASS_MAPPINGS, host
from ..runtime.executor import Executor
from ..runtime.run import model_file_check, runner_classes
from ..runtime.workflow import load_workflow
from . import empty_routes, files, prompts, templates, userdata
from .guard import allowed_host_names, guard_middleware
from .jobs import JobQueue
from .messages import Hub
from .object_info import object_info
from .worker import Worker

MAX_UPLOAD = 20 * 2**20


@dataclass
class ServerConfig:
    output_dir: Path = Path("output")
    input_dir: Path = Path("input")
    user_dir: Path = Path("user")
    temp_dir: Path | None = None  # default: a fresh temporary folder, removed at exit
    max_upload: int = MAX_UPLOAD
    examples: Path = field(default_factory=lambda: host.PACK_DIR / "example_workflows")
    listen: str = "127.0.0.1"  # the bound address: a name here is a Host the server answers to
    allow_hosts: tuple[str, ...] = ()  # more names a request's Host may carry (--allow-host)


HUB = web.AppKey("hub", Hub)


def frontend_root() -> Path:
    import comfyui_frontend_package  # a dependency; imported when serving only

    return Path(str(resources.files(comfyui_frontend_package) / "static"))


@web.middleware
async def content_policy(request: web.Request, handler):
    """The page may load and connect only to this server (ComfyUI's header under
    ``--disable-api-nodes``): the editor needs no other host here."""
    response = await handler(request)
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self'; "
        "connect-src 'self' data:; frame-src 'self'; object-src 'self';")
    return response


def create_app(config: ServerConfig) -> web.Application:
    host.confine_to_model_folders()  # file inputs: listed entries of the model folders only
    scratch = tempfile.TemporaryDirectory(prefix="nextdit-serve-") if config.temp_dir is None else None
    folders = {"output": config.output_dir, "input": config.input_dir,
               "temp": Path(scratch.name) if scratch else config.temp_dir}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for folder in (*folders.values(), config.user_dir):  # what a killed server left half written
        clean_leftovers(folder)
    classes = runner_classes(folders["output"], folders["temp"], folders["input"])
    queue = JobQueue(config.user_dir / "queue.sqlite3",
                     lambda prompt, extra_data: load_workflow({"prompt": prompt, "extra_data": extra_data}, classes))
    hub = Hub(queue.queue_info, config.max_upload)
    worker = Worker(queue, Executor(classes, model_check=model_file_check), hub)
    web_root = frontend_root()

    guard = guard_middleware(allowed_host_names(config.listen, config.allow_hosts))
    app = web.Application(client_max_size=config.max_upload, middlewares=[guard, content_policy])
    app[HUB] = hub
    routes = web.RouteTableDef()

    @routes.get("/ws")
    async def websocket(request):
        return await hub.handle(request)

    @routes.get("/object_info")
    async def get_object_info(request):
        return web.json_response(object_info(classes, set(NODE_CLASS_MAPPINGS)))

    @routes.get("/object_info/{node_class}")
    async def get_node_info(request):
        wanted = request.match_info["node_class"]
        return web.json_response(object_info({wanted: classes[wanted]}, set(NODE_CLASS_MAPPINGS))
                                 if wanted in classes else {})

    prompts.add_routes(routes, queue, classes, hub)
    files.add_routes(routes, folders, config.max_upload)
    userdata.add_routes(routes, config.user_dir)
    templates.add_routes(routes, app, config.examples, runnable=lambda path: _runnable(path, classes))
    empty_routes.add_routes(routes, web_root, hub.features)
    empty_routes.add_internal_routes(app)

    @routes.get("/")
    async def index(request):
        return web.FileResponse(web_root / "index.html", headers={
            "Cache-Control": "no-store, must-revalidate", "Pragma": "no-cache", "Expires": "0"})

    # Every route also under /api, as ComfyUI registers them (the frontend uses both).
    app.router.add_routes([web.route(r.method, "/api" + r.path, r.handler) for r in routes
                           if isinstance(r, web.RouteDef)])
    app.router.add_routes(routes)
    app.router.add_static("/", web_root, follow_symlinks=False)

    async def start(app: web.Application) -> None:
        await hub.start(app)
        worker.start()

    async def stop(app: web.Application) -> None:
        worker.stop()
        queue.close_database()
        await hub.stop(app)
        if scratch is not None:
            scratch.cleanup()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def _runnable(path: Path, classes) -> bool:
    """An example workflow whose every node this server has (the core-KSampler ones need ComfyUI)."""
    from ..runtime import load_workflow
    from ..runtime.errors import WorkflowError

    try:
        load_workflow(path, classes)
    except WorkflowError:
        return False
    return True


def serve(config: ServerConfig, port: int = 8188) -> None:
    """Run until Ctrl-C (or SIGTERM)."""
    web.run_app(create_app(config), host=config.listen, port=port, print=None, access_log=None,
                shutdown_timeout=5)
