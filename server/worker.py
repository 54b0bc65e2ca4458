"""The one execution thread: takes jobs from the queue and runs them with the runner's
:class:`Executor` (kept for the server's life, so its cache serves every prompt), reporting to the
editor with ComfyUI's websocket messages (``execution.py`` ``PromptExecutor``, ``main.py``
``hijack_progress``)."""

from __future__ import annotations

import logging
import threading
import traceback

from ..nodes import host
from ..runtime.errors import NodeExecutionError
from ..runtime.executor import Executor
from ..runtime.graph import GraphNode
from ..runtime.threads import use_thread_policy
from .jobs import Job, JobQueue, now_ms
from .messages import Hub, preview_frame, preview_frame_with_metadata, text_frame

log = logging.getLogger(__name__)


def type_name(cls: type) -> str:
    """An exception's type as ComfyUI's error panel titles it (``execution.full_type_name``): the
    bare name for builtins, else module and name."""
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class Worker:
    def __init__(self, queue: JobQueue, executor: Executor, hub: Hub):
        self.queue = queue
        self.executor = executor
        self.hub = hub
        self._job: Job | None = None
        self._node: GraphNode | None = None
        self._executed: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="nextdit-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.queue.close()
        host.request_interrupt()
        self._thread.join(timeout=30)
        host.request_interrupt(False)

    def _loop(self) -> None:
        host.set_progress_hook(self._progress)
        host.set_text_hook(self._text)
        while (job := self.queue.take()) is not None:
            self._run(job)

    # ---- one job --------------------------------------------------------------------------------

    def _send(self, event: str, data: dict, record: bool = False) -> None:
        data = {**data, "prompt_id": self._job.prompt_id}
        if record:
            data["timestamp"] = now_ms()
            self._job.messages.append([event, data])
        self.hub.send(event, data, self._job.client_id)

    def _run(self, job: Job) -> None:
        self._job, self._node, self._executed, self._states = job, None, [], {}
        # The editor's preview setting (Comfy.Execution.PreviewMethod, sent as ComfyUI reads it).
        host.set_previews_wanted(job.extra_data.get("preview_method") != "none")
        host.request_interrupt(False)  # a Cancel pressed while idle does not stop the next run
        use_thread_policy(host.torch_device())   # the machine's load now, for this prompt
        self.hub.broadcast_status()
        self._send("execution_start", {}, record=True)
        status = "error"
        try:
            self.executor.run(job.workflow, on_node=self._on_node, on_cached=self._on_cached,
                              on_output=self._on_output, targets=job.outputs_to_execute)
        except host.Interrupted:
            self._send("execution_interrupted", {**self._where(), "executed": self._executed}, record=True)
        except NodeExecutionError as error:
            cause = error.__cause__ or error
            self._send("execution_error", {
                **self._where(), "executed": self._executed, "exception_message": str(error),
                "exception_type": type_name(type(cause)),
                "traceback": traceback.format_exception(cause), "current_inputs": {},
                "current_outputs": {}}, record=True)
        except Exception as error:  # noqa: BLE001 - reported to the editor; the server goes on
            log.exception("prompt %s failed", job.prompt_id)
            self._send("execution_error", {
                **self._where(), "executed": self._executed, "exception_message": str(error),
                "exception_type": type(error).__name__, "traceback": traceback.format_exception(error),
                "current_inputs": {}, "current_outputs": {}}, record=True)
        else:
            status = "success"
            self._node_state("finished")
            self._send("execution_success", {}, record=True)
        finally:
            self.queue.finish(job, status)
            self.hub.broadcast_status()
            self._send("executing", {"node": None})
            self._job = self._node = None

    def _where(self) -> dict:
        node = self._node
        return {"node_id": node.id if node else None, "node_type": node.class_type if node else None}

    # ---- executor hooks -------------------------------------------------------------------------

    def _on_cached(self, node_ids: list[str]) -> None:
        self._send("execution_cached", {"nodes": node_ids}, record=True)

    def _on_node(self, node: GraphNode) -> None:
        if self._node is not None:
            self._executed.append(self._node.id)
            self._node_state("finished", send=False)
        self._node = node
        self._send("executing", {"node": node.id, "display_node": node.id})
        self._node_state("running", 0, 1)

    def _node_state(self, state: str, value: float | None = None, maximum: float | None = None,
                    send: bool = True) -> None:
        """ComfyUI's ``progress_state`` (comfy_execution/progress.py): every node of the prompt that
        started so far, with its state and progress; the editor draws the running node's bar from it."""
        if self._node is None:
            return
        node_id = self._node.id
        entry = self._states.setdefault(node_id, {
            "value": 0, "max": 1, "node_id": node_id, "prompt_id": self._job.prompt_id,
            "display_node_id": node_id, "parent_node_id": None, "real_node_id": node_id})
        entry["state"] = state
        if value is not None:
            entry["value"], entry["max"] = value, maximum
        elif state == "finished":
            entry["value"] = entry["max"]
        if send:
            self._send("progress_state", {"nodes": {key: dict(item) for key, item in self._states.items()}})

    def _on_output(self, node: GraphNode, ui: dict) -> None:
        self._job.outputs[node.id] = ui
        self._send("executed", {"node": node.id, "display_node": node.id, "output": ui})

    def _text(self, text: str) -> None:
        """A node's warnings or report (host.show_text): on the running node, as its progress text."""
        if self._job is not None and self._node is not None:
            self.hub.send_bytes(text_frame(self._node.id, text), self._job.client_id)

    def _progress(self, done: int, total: int, preview=None, note=None) -> None:
        if self._job is None:
            return
        self._node_state("running", done, total)
        if preview is not None and host.previews_wanted():
            _, image, max_size = preview  # ("JPEG", PIL image, largest side)
            client = self._job.client_id
            if self._node is not None and self.hub.supports(client, "supports_preview_metadata"):
                node_id = self._node.id
                frame = preview_frame_with_metadata(image, max_size, {
                    "node_id": node_id, "prompt_id": self._job.prompt_id, "display_node_id": node_id,
                    "parent_node_id": None, "real_node_id": node_id})
            else:
                frame = preview_frame(image, max_size)
            self.hub.send_bytes(frame, client)
        if note and self._node is not None:
            self.hub.send_bytes(text_frame(self._node.id, note), self._job.client_id)
        self._send("progress", {"value": done, "max": total,
                                "node": self._node.id if self._node else None})
