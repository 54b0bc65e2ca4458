"""Queueing and following prompts: ``/prompt``, ``/queue``, ``/interrupt``, ``/history``,
``/jobs``, ``/free``, answered as ComfyUI's ``server.py`` answers them.

A posted prompt is loaded and validated by the runner before it is queued; what is wrong comes
back as ComfyUI's HTTP 400 ``{"error": ..., "node_errors": {id: {"errors": [...], "class_type":
...}}}``, so the editor paints the bad nodes red and lists the problems.
"""

from __future__ import annotations

import asyncio
import math
import uuid

from aiohttp import web

from ..nodes import host
from ..runtime.errors import (MissingModelError, Problem, RunnerError, UnknownNodeTypeError,
                              ValidationError)
from ..runtime.run import model_file_check
from ..runtime.validate import needed_nodes, validate
from ..runtime.workflow import load_workflow
from . import jsonio
from .jobs import STATUSES, Job, JobQueue, now_ms
from .jsonio import json_response

# ComfyUI's short messages per error type (execution.py); the details carry the runner's text.
SHORT_MESSAGES = {
    "required_input_missing": "Required input is missing",
    "bad_linked_input": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
    "return_type_mismatch": "Return type mismatch between linked nodes",
    "invalid_input_type": "Failed to convert an input value",
    "value_smaller_than_min": "Value smaller than min",
    "value_bigger_than_max": "Value bigger than max",
    "value_not_in_list": "Value not in list",
    "custom_validation_failed": "Custom validation failed for node",
    "exception_during_validation": "Exception when validating node",
    "dependency_cycle": "Dependency cycle detected",
}


def _error(kind: str, message: str, details: str = "", extra: dict | None = None,
           node_errors: dict | None = None) -> web.Response:
    body = {"error": {"type": kind, "message": message, "details": details, "extra_info": extra or {}},
            "node_errors": node_errors or {}}
    return json_response(body, status=400)


def _node_errors(problems: list[Problem], class_types: dict[str, str]) -> dict:
    """ComfyUI's ``node_errors``; ``class_types``: node id -> class type, as posted."""
    errors: dict[str, dict] = {}
    for problem in problems:
        if problem.node_id is None or problem.node_id not in class_types:
            continue
        entry = errors.setdefault(problem.node_id, {
            "errors": [], "dependent_outputs": [], "class_type": class_types[problem.node_id]})
        extra = {"input_name": problem.input_name} if problem.input_name else {}
        entry["errors"].append({"type": problem.kind, "message": SHORT_MESSAGES.get(problem.kind, problem.kind),
                                "details": problem.message, "extra_info": extra})
    return errors


def check_prompt(body: dict, classes) -> tuple:
    """(workflow, output node ids) for a posted body, or (None, error response)."""
    try:
        workflow = load_workflow({"prompt": body["prompt"], "extra_data": body.get("extra_data") or {}},
                                 classes)
        targets = body.get("partial_execution_targets")
        order = needed_nodes(workflow, classes, [str(t) for t in targets] if targets else None)
        validate(workflow, classes, order, model_file_check)
    except UnknownNodeTypeError as error:
        node_id, class_type, title = error.unknown[0]
        names = ", ".join(sorted({kind for _, kind, _ in error.unknown}))
        return None, _error("missing_node_type", f"Node types not found here: {names}. This editor "
                            f"runs the pack's nodes and a few core nodes; run the others in ComfyUI.",
                            str(error), {"node_id": node_id, "class_type": class_type,
                                         "node_title": title or class_type})
    except (ValidationError, MissingModelError) as error:
        problems = error.details
        class_types = {str(node_id): entry.get("class_type") for node_id, entry in body["prompt"].items()
                       if isinstance(entry, dict)}
        node_errors = _node_errors(problems, class_types)
        if not node_errors:
            kind = problems[0].kind if problems else "invalid_prompt"
            return None, _error(kind, str(error), str(error))
        return None, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                            str(error), node_errors=node_errors)
    except RunnerError as error:
        return None, _error("invalid_prompt", str(error), str(error))
    outputs = [node_id for node_id in order if getattr(classes[workflow.nodes[node_id].class_type],
                                                       "OUTPUT_NODE", False)]
    return workflow, outputs


# The fields of a POST /prompt body besides "prompt", with the JSON types ComfyUI's editor sends.
FIELD_TYPES = {"prompt_id": (str,), "client_id": (str,), "number": (int, float), "front": (bool,),
               "extra_data": (dict,), "partial_execution_targets": (list,)}
TYPE_NAMES = {str: "a string", int: "a number", float: "a number", bool: "true or false",
              dict: "an object", list: "a list"}


def _wrong_field(body: dict) -> str | None:
    """What is wrong with the optional fields of a /prompt body (None when nothing)."""
    for name, kinds in FIELD_TYPES.items():
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            return f"{name} must be {TYPE_NAMES[kinds[0]]}, not {_json_type(value)}"
    if body.get("number") is not None and not (isinstance(body["number"], float) and math.isfinite(body["number"])
                                               or isinstance(body["number"], int) and abs(body["number"]) < 2**53):
        return "number must be a finite number (integers below 2**53)"
    targets = body.get("partial_execution_targets") or []
    if not all(isinstance(target, (str, int)) and not isinstance(target, bool) for target in targets):
        return "partial_execution_targets must be a list of node ids"
    if "extra_data" in body and not all(isinstance(key, str) for key in body["extra_data"] or {}):
        return "extra_data must be an object"
    return None


def _json_type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true or false",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def add_routes(routes: web.RouteTableDef, queue: JobQueue, classes, hub) -> None:

    @routes.get("/prompt")
    async def get_prompt(request):
        return json_response(queue.queue_info())

    @routes.post("/prompt")
    async def post_prompt(request):
        try:
            body = await jsonio.read(request)
        except jsonio.BadJSON as error:
            return _error("invalid_prompt", f"The request body is not acceptable JSON: {error}")
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), dict):
            return _error("no_prompt", "No prompt provided", "No prompt provided")
        if (wrong := _wrong_field(body)) is not None:
            return _error("invalid_prompt", wrong, wrong)
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        try:
            prompt_id = str(uuid.UUID(prompt_id))
        except ValueError:
            return _error("invalid_prompt_id", "prompt_id must be a valid UUID")
        if queue.known(prompt_id):
            return _error("duplicate_prompt_id", f"prompt_id {prompt_id} is already queued or in "
                          f"the history; leave prompt_id out to get a fresh one")
        workflow, checked = await asyncio.get_running_loop().run_in_executor(None, check_prompt, body, classes)
        if workflow is None:
            return checked
        number = float(body["number"]) if body.get("number") is not None else queue.next_number(bool(body.get("front")))
        extra_data = dict(body.get("extra_data") or {}, create_time=now_ms())
        client_id = body.get("client_id")
        if client_id:
            extra_data["client_id"] = client_id
        if not queue.put(Job(number, prompt_id, body["prompt"], extra_data, workflow, checked, client_id or None)):
            return _error("duplicate_prompt_id", f"prompt_id {prompt_id} is already queued")
        hub.broadcast_status()
        return json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    @routes.get("/queue")
    async def get_queue(request):
        return json_response(queue.snapshot())

    @routes.post("/queue")
    async def post_queue(request):
        body = await _json(request)
        if isinstance(body, web.Response):
            return body
        _clear_or_delete(body, queue.clear, queue.delete)
        hub.broadcast_status()
        return web.Response(status=200)

    @routes.post("/interrupt")
    async def post_interrupt(request):
        body = await _json(request)
        if isinstance(body, web.Response):
            return body
        wanted = body.get("prompt_id")
        if wanted is not None and not isinstance(wanted, str):
            return web.Response(status=400, text="prompt_id must be a string")
        if wanted is None or wanted == queue.running_id():
            host.request_interrupt()
        return web.Response(status=200)

    @routes.post("/free")
    async def post_free(request):
        return web.Response(status=200)  # models are freed with the runner's cache, not on demand

    @routes.get("/history")
    async def get_history(request):
        query = request.rel_url.query
        try:
            max_items = int(query["max_items"]) if query.get("max_items") else None
            offset = int(query["offset"]) if query.get("offset") else -1
        except ValueError:
            return web.Response(status=400, text="max_items and offset must be integers")
        if max_items is not None and max_items < 0:
            return web.Response(status=400, text="max_items must not be negative")
        return json_response(queue.history(max_items, offset))

    @routes.get("/history/{prompt_id}")
    async def get_history_item(request):
        return json_response(queue.history(prompt_id=request.match_info["prompt_id"]))

    @routes.post("/history")
    async def post_history(request):
        body = await _json(request)
        if isinstance(body, web.Response):
            return body
        _clear_or_delete(body, queue.forget, queue.forget)
        return web.Response(status=200)

    @routes.get("/jobs")
    async def get_jobs(request):
        query = request.rel_url.query
        wanted = tuple(s.strip() for s in query.get("status", ",".join(STATUSES)).split(",") if s.strip())
        if any(status not in STATUSES for status in wanted):
            return json_response({"error": f"status must be among {', '.join(STATUSES)}"}, status=400)
        try:
            limit = int(query["limit"]) if "limit" in query else None
            offset = max(0, int(query.get("offset", 0)))
        except ValueError:
            return json_response({"error": "limit and offset must be integers"}, status=400)
        if limit is not None and limit < 0:
            return json_response({"error": "limit must not be negative"}, status=400)
        jobs = queue.jobs(wanted)
        page = jobs[offset:offset + limit] if limit else jobs[offset:]
        return json_response({"jobs": page, "pagination": {
            "offset": offset, "limit": limit, "total": len(jobs), "has_more": offset + len(page) < len(jobs)}})

    @routes.get("/jobs/{job_id}")
    async def get_job(request):
        found = [job for job in queue.jobs() if job["id"] == request.match_info["job_id"]]
        return json_response(found[0]) if found else json_response({"error": "Job not found"}, status=404)


def _clear_or_delete(body: dict, clear, delete) -> None:
    """ComfyUI's ``{"clear": true}`` / ``{"delete": [prompt ids]}`` bodies of /queue and /history."""
    if body.get("clear"):
        clear()
    if body.get("delete"):
        delete([prompt_id for prompt_id in body["delete"] if isinstance(prompt_id, str)])


async def _json(request: web.Request) -> dict | web.Response:
    """A JSON object body ({} when empty), or the 400 answer saying what is wrong with it."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = jsonio.loads(raw)
    except jsonio.BadJSON as error:
        return web.Response(status=400, text=str(error))
    if not isinstance(body, dict):
        return web.Response(status=400, text="the body must be a JSON object")
    if "delete" in body and not isinstance(body["delete"], (list, type(None))):
        return web.Response(status=400, text="delete must be a list of prompt ids")
    return body
