"""The CPU thread policy of headless runs (runtime/threads.py): the cores the load leaves free."""

from __future__ import annotations

import pytest
import torch

from nextdit_nodes.runtime import threads


@pytest.mark.parametrize(("cores", "load", "default", "expected"), [
    (2, 0.0, 2, 2),     # idle: every core
    (2, 0.4, 2, 2),     # a little background noise: still both
    (2, 1.0, 2, 1),     # one core busy elsewhere: one thread
    (2, 16.0, 2, 1),    # heavily shared: one thread, never zero
    (8, 3.0, 8, 5),
    (8, 0.0, 4, 4),     # never above torch's own default
])
def test_threads_are_the_free_cores(cores, load, default, expected):
    assert threads.choose_threads(cores, load, default) == expected


@pytest.fixture
def restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.ENV, raising=False)
    yield monkeypatch
    torch.set_num_threads(before)


def test_policy_follows_the_load_and_the_users_choice(restore_threads):
    monkeypatch = restore_threads
    default = torch.get_num_threads()
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (50.0, 0.0, 0.0))
    assert threads.use_thread_policy(torch.device("cpu")) == 1 and torch.get_num_threads() == 1
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    expected = min(default, threads.os.cpu_count())
    assert threads.use_thread_policy(torch.device("cpu")) == expected == torch.get_num_threads()
    assert threads.use_thread_policy(torch.device("cuda")) is None      # a GPU run: untouched
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.use_thread_policy(torch.device("cpu")) == 3 == torch.get_num_threads()
    monkeypatch.setenv(threads.ENV, "zero")
    with pytest.raises(ValueError, match="NEXTDIT_THREADS"):
        threads.use_thread_policy(torch.device("cpu"))
    monkeypatch.delenv(threads.ENV)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)
    assert threads.use_thread_policy(torch.device("cpu")) is None and torch.get_num_threads() == 2
