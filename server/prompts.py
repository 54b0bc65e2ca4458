"""Queueing and following prompts: ``/prompt``, ``/queue``, ``/interrupt``, ``/history``,
``/jobs``, ``/free``, answered as ComfyUI's ``server.py`` answers them.

A posted prompt is loaded and validated by the runner before it is queued; what is wrong comes
back as ComfyUI's HTTP 400 ``{"error": ..., "node_errors": {id: {"errors": [...], "class_type":
...}}}``, so the editor paints the bad nodes red and lists the problems.
"""

from __future__ import annotations

import asyncio
import json
import uuid

from aiohttp import web

from ..nodes import host
from ..runtime.errors import (MissingModelError, Problem, RunnerError, UnknownNodeTypeError,
                              ValidationError)
from ..runtime.run import model_file_check
from ..runtime.validate import needed_nodes, validate
from ..runtime.workflow import load_workflow
from .jobs import STATUSES, Job, JobQueue, now_ms

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
    return web.json_response(body, status=400)


def _node_errors(problems: list[Problem], workflow) -> dict:
    errors: dict[str, dict] = {}
    for problem in problems:
        if problem.node_id is None or problem.node_id not in workflow.nodes:
            continue
        entry = errors.setdefault(problem.node_id, {
            "errors": [], "dependent_outputs": [],
            "class_type": workflow.nodes[problem.node_id].class_type})
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
        node_errors = _node_errors(problems, workflow)
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


def add_routes(routes: web.RouteTableDef, queue: JobQueue, classes, hub) -> None:
    counter = {"number": 0}

    @routes.get("/prompt")
    async def get_prompt(request):
        return web.json_response(queue.queue_info())

    @routes.post("/prompt")
    async def post_prompt(request):
        try:
            body = await request.json()
        except ValueError:
            return _error("invalid_prompt", "The request body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), dict):
            return _error("no_prompt", "No prompt provided", "No prompt provided")
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        try:
            prompt_id = str(uuid.UUID(str(prompt_id)))
        except ValueError:
            return _error("invalid_prompt_id", "prompt_id must be a valid UUID")
        workflow, checked = await asyncio.get_running_loop().run_in_executor(None, check_prompt, body, classes)
        if workflow is None:
            return checked
        number = float(body["number"]) if "number" in body else counter["number"]
        if "number" not in body:
            number = -number if body.get("front") else number
            counter["number"] += 1
        extra_data = dict(body.get("extra_data") or {}, create_time=now_ms())
        client_id = body.get("client_id")
        if client_id:
            extra_data["client_id"] = client_id
        queue.put(Job(number, prompt_id, body["prompt"], extra_data, workflow, checked, client_id))
        hub.broadcast_status()
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    @routes.get("/queue")
    async def get_queue(request):
        return web.json_response(queue.snapshot())

    @routes.post("/queue")
    async def post_queue(request):
        _clear_or_delete(await _json(request), queue.clear, queue.delete)
        hub.broadcast_status()
        return web.Response(status=200)

    @routes.post("/interrupt")
    async def post_interrupt(request):
        body = await _json(request)
        wanted = body.get("prompt_id")
        if wanted is None or wanted == queue.running_id():
            host.request_interrupt()
        return web.Response(status=200)

    @routes.post("/free")
    async def post_free(request):
        return web.Response(status=200)  # models are freed with the runner's cache, not on demand

    @routes.get("/history")
    async def get_history(request):
        query = request.rel_url.query
        max_items = int(query["max_items"]) if query.get("max_items") else None
        offset = int(query["offset"]) if query.get("offset") else -1
        return web.json_response(queue.history(max_items, offset))

    @routes.get("/history/{prompt_id}")
    async def get_history_item(request):
        return web.json_response(queue.history(prompt_id=request.match_info["prompt_id"]))

    @routes.post("/history")
    async def post_history(request):
        _clear_or_delete(await _json(request), queue.forget, queue.forget)
        return web.Response(status=200)

    @routes.get("/jobs")
    async def get_jobs(request):
        query = request.rel_url.query
        wanted = tuple(s.strip() for s in query.get("status", ",".join(STATUSES)).split(",") if s.strip())
        if any(status not in STATUSES for status in wanted):
            return web.json_response({"error": f"status must be among {', '.join(STATUSES)}"}, status=400)
        try:
            limit = int(query["limit"]) if "limit" in query else None
            offset = max(0, int(query.get("offset", 0)))
        except ValueError:
            return web.json_response({"error": "limit and offset must be integers"}, status=400)
        jobs = queue.jobs(wanted)
        page = jobs[offset:offset + limit] if limit else jobs[offset:]
        return web.json_response({"jobs": page, "pagination": {
            "offset": offset, "limit": limit, "total": len(jobs), "has_more": offset + len(page) < len(jobs)}})

    @routes.get("/jobs/{job_id}")
    async def get_job(request):
        found = [job for job in queue.jobs() if job["id"] == request.match_info["job_id"]]
        return web.json_response(found[0]) if found else web.json_response({"error": "Job not found"}, status=404)


def _clear_or_delete(body: dict, clear, delete) -> None:
    """ComfyUI's ``{"clear": true}`` / ``{"delete": [prompt ids]}`` bodies of /queue and /history."""
    if body.get("clear"):
        clear()
    if body.get("delete"):
        delete(body["delete"])


async def _json(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (ValueError, json.JSONDecodeError):
        return {}
    return body if isinstance(body, dict) else {}
