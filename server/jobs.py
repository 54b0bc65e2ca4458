"""The prompt queue and its history, in the shapes ComfyUI's ``/queue``, ``/history`` and
``/api/jobs`` answer (``execution.py`` ``PromptQueue``, ``comfy_execution/jobs.py``).

Both are also kept in a SQLite database in the user folder (``queue.sqlite3``, write-ahead log),
written before a request is answered: after a crash or kill -9 the next start runs the prompts
that were waiting (and the one that was running, which never finished), and the history is
still there. ComfyUI keeps both in memory only.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..runtime.graph import Workflow
from .jsonio import dumps

log = logging.getLogger(__name__)

MAX_HISTORY = 10000  # ComfyUI's MAXIMUM_HISTORY_SIZE
STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Job:
    number: float
    prompt_id: str
    prompt: dict  # the API prompt as posted
    extra_data: dict
    workflow: Workflow | None  # None only while a stored job is being restored
    outputs_to_execute: list[str]
    client_id: str | None = None
    outputs: dict[str, dict] = field(default_factory=dict)  # node id -> its UI data
    messages: list[list] = field(default_factory=list)  # [event, data] as sent

    def entry(self) -> list:
        """ComfyUI's queue item: [number, prompt_id, prompt, extra_data, outputs_to_execute]."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute]


SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (prompt_id TEXT PRIMARY KEY, number REAL NOT NULL, job TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (seq INTEGER PRIMARY KEY AUTOINCREMENT, prompt_id TEXT UNIQUE NOT NULL,
                                    item TEXT NOT NULL);
"""


class JobQueue:
    """Pending jobs by number, the running one, and the history; safe across threads.

    ``database``: the SQLite file that keeps them across restarts (None: memory only).
    ``rebuild(job) -> Workflow``: turns a stored job's prompt back into the graph to run; what it
    raises is recorded as that job's failure."""

    def __init__(self, database: str | Path | None = None, rebuild: Callable[[dict, dict], Workflow] | None = None):
        self._lock = threading.Condition()
        self._pending: list[Job] = []
        self._running: Job | None = None
        self._history: dict[str, dict] = {}
        self._closed = False
        self._next_number = 0
        self._db = None
        if database is not None:
            try:
                self._db = self._open(Path(database))
                self._restore(rebuild)
            except (sqlite3.DatabaseError, ValueError, KeyError, TypeError) as error:
                self._set_aside(Path(database), error)
                self._db = self._open(Path(database))

    # ---- the database ---------------------------------------------------------------------------

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)  # guarded by the lock
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # with WAL: survives a killed process, not power loss
        db.executescript(SCHEMA)
        return db

    def _set_aside(self, path: Path, error: Exception) -> None:
        """A database that cannot be read is renamed (kept for whoever wants to look) and a new
        one started; the server does not refuse to start over it."""
        if self._db is not None:
            self._db.close()
            self._db = None
        self._pending.clear()
        self._history.clear()
        kept = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{path}{suffix}")
            if source.exists():
                source.replace(Path(f"{kept}{suffix}"))
        log.error("the queue database %s cannot be read (%s); it is kept as %s and a new one started",
                  path, error, kept)

    def _write(self, *statements: tuple[str, tuple]) -> None:
        """Run ``statements`` as one transaction (the caller holds the lock)."""
        if self._db is None:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for sql, parameters in statements:
                self._db.execute(sql, parameters)
            self._db.execute("COMMIT")
        except sqlite3.Error:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            log.exception("the queue database could not be updated; the queue goes on in memory")

    def _restore(self, rebuild) -> None:
        for prompt_id, item in self._db.execute("SELECT prompt_id, item FROM history ORDER BY seq"):
            self._history[prompt_id] = json.loads(item)
        numbers = [item["prompt"][0] for item in self._history.values()]
        pending = self._db.execute("SELECT prompt_id, number, job FROM pending ORDER BY number").fetchall()
        for prompt_id, number, stored in pending:
            stored = json.loads(stored)
            numbers.append(number)
            job = Job(number, prompt_id, stored["prompt"], stored["extra_data"], None,
                      stored["outputs_to_execute"], stored.get("client_id"))
            try:
                job.workflow = rebuild(stored["prompt"], stored["extra_data"])
            except Exception as error:  # noqa: BLE001 - recorded as the job's failure
                job.messages.append(["execution_error", {"prompt_id": prompt_id, "timestamp": now_ms(),
                                                         "exception_message": f"after a restart: {error}",
                                                         "exception_type": type(error).__name__}])
                self.finish(job, "error")
                continue
            self._pending.append(job)
        if self._pending:
            log.info("%d prompt(s) left waiting by the last run are queued again", len(self._pending))
        self._next_number = int(max(numbers, default=-1)) + 1

    def next_number(self, front: bool = False) -> float:
        """ComfyUI's numbering: one more than the last, negative to go to the front."""
        with self._lock:
            number = self._next_number
            self._next_number += 1
            return -number if front else number

    # ---- the queue ------------------------------------------------------------------------------

    def known(self, prompt_id: str) -> bool:
        """Whether ``prompt_id`` is queued, running or in the history."""
        with self._lock:
            return (prompt_id in self._history or any(job.prompt_id == prompt_id for job in self._pending)
                    or (self._running is not None and self._running.prompt_id == prompt_id))

    def put(self, job: Job) -> bool:
        """Queue ``job``; False (nothing queued) when its prompt id is already known."""
        with self._lock:
            if (job.prompt_id in self._history or any(j.prompt_id == job.prompt_id for j in self._pending)
                    or (self._running is not None and self._running.prompt_id == job.prompt_id)):
                return False
            self._write(("INSERT INTO pending (prompt_id, number, job) VALUES (?, ?, ?)",
                         (job.prompt_id, job.number, dumps({
                             "prompt": job.prompt, "extra_data": job.extra_data, "client_id": job.client_id,
                             "outputs_to_execute": job.outputs_to_execute}))))
            self._pending.append(job)
            self._pending.sort(key=lambda j: j.number)
            self._lock.notify()
            return True

    def take(self) -> Job | None:
        """The next job (blocks); None once the queue is closed."""
        with self._lock:
            while not self._pending and not self._closed:
                self._lock.wait()
            if self._closed:
                return None
            self._running = self._pending.pop(0)
            return self._running

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def remaining(self) -> int:
        with self._lock:
            return len(self._pending) + (self._running is not None)

    def queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": self.remaining()}}

    def running_id(self) -> str | None:
        with self._lock:
            return self._running.prompt_id if self._running else None

    def snapshot(self) -> dict:
        with self._lock:
            return {"queue_running": [self._running.entry()] if self._running else [],
                    "queue_pending": [job.entry() for job in self._pending]}

    def delete(self, prompt_ids) -> bool:
        with self._lock:
            wanted = set(prompt_ids)
            before = len(self._pending)
            self._pending = [job for job in self._pending if job.prompt_id not in wanted]
            self._write(*[("DELETE FROM pending WHERE prompt_id = ?", (prompt_id,)) for prompt_id in wanted
                          if self._running is None or prompt_id != self._running.prompt_id])
            return len(self._pending) != before

    def clear(self) -> None:
        with self._lock:
            self._write(*[("DELETE FROM pending WHERE prompt_id = ?", (job.prompt_id,)) for job in self._pending])
            self._pending.clear()

    # ---- history --------------------------------------------------------------------------------

    def finish(self, job: Job, status_str: str) -> None:
        with self._lock:
            dropped = []
            while len(self._history) >= MAX_HISTORY:
                dropped.append(next(iter(self._history)))
                self._history.pop(dropped[-1])
            item = self._history[job.prompt_id] = {
                "prompt": job.entry(), "outputs": job.outputs,
                "status": {"status_str": status_str, "completed": status_str == "success",
                           "messages": job.messages},
                "meta": {node: {"node_id": node, "display_node": node, "parent_node": None,
                                "real_node_id": node} for node in job.outputs},
            }
            self._write(("DELETE FROM pending WHERE prompt_id = ?", (job.prompt_id,)),
                        ("INSERT OR REPLACE INTO history (prompt_id, item) VALUES (?, ?)",
                         (job.prompt_id, dumps(item))),
                        *[("DELETE FROM history WHERE prompt_id = ?", (old,)) for old in dropped])
            self._running = None

    def history(self, max_items: int | None = None, offset: int = -1, prompt_id: str | None = None
                ) -> dict:
        with self._lock:
            if prompt_id is not None:
                return {prompt_id: self._history[prompt_id]} if prompt_id in self._history else {}
            items = list(self._history.items())
        if offset < 0 and max_items is not None:
            offset = max(0, len(items) - max_items)
        items = items[max(offset, 0):]
        return dict(items[:max_items] if max_items is not None else items)

    def forget(self, prompt_ids=None) -> None:
        with self._lock:
            if prompt_ids is None:
                self._history.clear()
                self._write(("DELETE FROM history", ()))
            for prompt_id in prompt_ids or ():
                self._history.pop(prompt_id, None)
            self._write(*[("DELETE FROM history WHERE prompt_id = ?", (prompt_id,)) for prompt_id in prompt_ids or ()])

    def close_database(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # ---- /api/jobs ------------------------------------------------------------------------------

    def jobs(self, statuses=STATUSES) -> list[dict]:
        """Every job as ComfyUI's jobs API lists it, newest first."""
        with self._lock:
            listed = ([_queued(self._running, "in_progress")] if self._running else []) + \
                     [_queued(job, "pending") for job in self._pending] + \
                     [_finished(prompt_id, item) for prompt_id, item in self._history.items()]
        listed = [job for job in listed if job["status"] in statuses]
        return sorted(listed, key=lambda job: job.get("create_time") or 0, reverse=True)


def _workflow_id(extra_data: dict) -> str | None:
    return ((extra_data.get("extra_pnginfo") or {}).get("workflow") or {}).get("id")


def _queued(job: Job, status: str) -> dict:
    return _pruned({"id": job.prompt_id, "status": status, "priority": job.number,
                    "create_time": job.extra_data.get("create_time"), "outputs_count": 0,
                    "previewable_outputs_count": 0, "workflow_id": _workflow_id(job.extra_data)})


def _finished(prompt_id: str, item: dict) -> dict:
    number, _, _, extra_data, _ = item["prompt"]
    times, error, interrupted = {}, None, False
    for event, data in item["status"]["messages"]:
        if event == "execution_start":
            times["execution_start_time"] = data.get("timestamp")
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            times["execution_end_time"] = data.get("timestamp")
            error = data if event == "execution_error" else None
            interrupted = event == "execution_interrupted"
    images = [dict(image, nodeId=node, mediaType="images")
              for node, ui in item["outputs"].items() for image in ui.get("images", [])]
    status = ("completed" if item["status"]["status_str"] == "success"
              else "cancelled" if interrupted else "failed")
    return _pruned({"id": prompt_id, "status": status, "priority": number,
                    "create_time": extra_data.get("create_time"), **times, "execution_error": error,
                    "outputs_count": len(images), "previewable_outputs_count": len(images),
                    "preview_output": images[-1] if images else None,
                    "workflow_id": _workflow_id(extra_data)})


def _pruned(job: dict[str, Any]) -> dict:
    return {key: value for key, value in job.items() if value is not None}
