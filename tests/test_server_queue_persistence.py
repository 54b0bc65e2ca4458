"""The queue and history survive a crash: kept in SQLite in the user folder, so after kill -9 and
a restart every waiting prompt runs once and the history still holds the earlier runs."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nextdit_nodes.server.jobs import MAX_HISTORY, Job, JobQueue

EMBEDDED = Path(__file__).resolve().parents[1] / "example_workflows" / "Embedded shapes model.json"


def _job(prompt_id: str, number: float) -> Job:
    return Job(number, prompt_id, {"1": {"class_type": "X", "inputs": {}}}, {"client_id": "c"}, "graph", ["1"], "c")


def test_a_queue_reopened_after_a_crash_has_its_waiting_and_running_jobs_and_its_history(tmp_path):
    database = tmp_path / "queue.sqlite3"
    queue = JobQueue(database, rebuild=lambda prompt, extra: "graph")
    for index, prompt_id in enumerate(("a", "b", "c", "d")):
        assert queue.put(_job(prompt_id, index))
    queue.finish(queue.take(), "success")  # "a" ran
    running = queue.take()  # "b" is running when the process dies: no finish, no close
    assert running.prompt_id == "b"
    reopened = JobQueue(database, rebuild=lambda prompt, extra: "rebuilt")
    assert [job[1] for job in reopened.snapshot()["queue_pending"]] == ["b", "c", "d"]
    assert list(reopened.history()) == ["a"] and reopened.history()["a"]["status"]["completed"]
    assert reopened.take().workflow == "rebuilt" and reopened.next_number() == 4
    assert not reopened.put(_job("a", 9))  # a prompt id the history holds is not queued again


def test_a_stored_job_that_no_longer_loads_is_recorded_as_failed(tmp_path):
    database = tmp_path / "queue.sqlite3"
    JobQueue(database).put(_job("a", 0))

    def refuse(prompt, extra):
        raise ValueError("node type X is gone")

    reopened = JobQueue(database, rebuild=refuse)
    assert reopened.snapshot()["queue_pending"] == []
    assert reopened.history()["a"]["status"]["status_str"] == "error"
    assert "node type X is gone" in json.dumps(reopened.history()["a"])


def test_an_unreadable_database_is_set_aside_and_a_new_one_started(tmp_path):
    database = tmp_path / "queue.sqlite3"
    database.write_bytes(b"this is not a SQLite database" * 100)
    queue = JobQueue(database)
    assert queue.put(_job("a", 0)) and queue.snapshot()["queue_pending"][0][1] == "a"
    (kept,) = tmp_path.glob("queue.sqlite3.unreadable-*")
    assert kept.read_bytes().startswith(b"this is not a SQLite database")


def test_history_stays_bounded_in_the_database(tmp_path, monkeypatch):
    from nextdit_nodes.server import jobs

    monkeypatch.setattr(jobs, "MAX_HISTORY", 3)
    database = tmp_path / "queue.sqlite3"
    queue = JobQueue(database)
    for index in range(5):
        queue.put(_job(f"p{index}", index))
        queue.finish(queue.take(), "success")
    assert list(JobQueue(database).history()) == ["p2", "p3", "p4"]
    assert MAX_HISTORY == 10000  # ComfyUI's MAXIMUM_HISTORY_SIZE


# ---- kill -9 of a real server --------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(port, method, path, body=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def _start(folder: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "nextdit_nodes", "serve", "--port", str(port),
                               "--output-dir", str(folder / "output"), "--input-dir", str(folder / "input"),
                               "--user-dir", str(folder / "user")], cwd=folder, env=os.environ.copy(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            _request(port, "GET", "/api/features")
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the server did not start")


def _wait_for_history(port, prompt_ids, seconds=240) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        history = _request(port, "GET", "/history")[1]
        if set(prompt_ids) <= set(history):
            return history
        time.sleep(0.3)
    raise AssertionError(f"not all prompts finished: {sorted(set(prompt_ids) - set(history))}")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="kill -9 is POSIX")
def test_kill_9_with_queued_prompts_then_restart_runs_each_once_and_keeps_the_history(tmp_path):
    from nextdit_nodes.runtime import load_workflow, runner_classes

    prompt = load_workflow(EMBEDDED, runner_classes()).to_api()
    prompt["6"]["inputs"].update(steps=1, width=32, height=32)
    port = _free_port()

    def post(seed: int) -> str:
        prompt["6"]["inputs"]["seed"] = seed
        status, body = _request(port, "POST", "/prompt", {"prompt": prompt})
        assert status == 200, body
        return body["prompt_id"]

    server = _start(tmp_path, port)
    try:
        earlier = post(1)
        _wait_for_history(port, [earlier])
        queued = [post(seed) for seed in (2, 3, 4)]
        os.kill(server.pid, signal.SIGKILL)  # at once: one running at most, the others waiting
        server.wait(timeout=30)
        server = _start(tmp_path, port)
        history = _wait_for_history(port, [earlier, *queued])
        queue = _request(port, "GET", "/queue")[1]
    finally:
        server.kill()
        server.wait(timeout=30)
    assert list(history) == [earlier, *queued]  # the earlier run kept, each queued prompt once
    assert all(item["status"]["status_str"] == "success" for item in history.values())
    assert queue == {"queue_running": [], "queue_pending": []}
    saved = sorted(p.name for p in (tmp_path / "output").iterdir())
    assert len(saved) == 4 and not any(name.endswith(".partial") for name in saved)
