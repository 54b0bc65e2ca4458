"""How many threads torch computes with on the CPU, chosen at each run from the machine's load.

torch starts with one thread per core. On a small CPU that other programs also use, that costs
more than it gains: the threads of one operation wait for each other while one of them is
descheduled (README, "CPU threads", has the measurement). So a headless run (``run``, ``demo``,
each prompt in ``serve``) computing on the CPU uses the cores that the 1-minute load average
leaves free, at least one and at most torch's default. Setting ``NEXTDIT_THREADS`` (a count) or
``OMP_NUM_THREADS`` chooses instead; inside ComfyUI nothing here runs (ComfyUI owns the threads).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ENV = "NEXTDIT_THREADS"
_DEFAULT: int | None = None   # torch's own count, read before the first change


def choose_threads(cores: int, load: float, default: int) -> int:
    """Threads for ``cores`` cores under a load average of ``load`` (other programs' runnable
    processes): the cores left free, rounded, between 1 and ``default``."""
    return max(1, min(default, round(cores - load)))


def use_thread_policy(device) -> int | None:
    """Set torch's thread count for a run on ``device``; returns it (None: left as it was, for
    a GPU or when the user chose with ``OMP_NUM_THREADS``)."""
    import torch

    global _DEFAULT
    if getattr(device, "type", str(device)) != "cpu":
        return None
    chosen = os.environ.get(ENV)
    if chosen:
        try:
            threads = int(chosen)
        except ValueError:
            raise ValueError(f"{ENV}={chosen!r} is not a thread count; set it to a whole number such as 1") from None
        if threads < 1:
            raise ValueError(f"{ENV}={chosen!r}: a thread count is at least 1")
        torch.set_num_threads(threads)
        return threads
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    if _DEFAULT is None:
        _DEFAULT = torch.get_num_threads()
    try:
        load = os.getloadavg()[0]
    except OSError:   # no load average on this system: torch's default
        return None
    threads = choose_threads(os.cpu_count() or _DEFAULT, load, _DEFAULT)
    if threads != torch.get_num_threads():
        log.info("computing with %d CPU thread(s) (load average %.1f on %d cores; set %s to choose)",
                 threads, load, os.cpu_count() or 0, ENV)
    torch.set_num_threads(threads)
    return threads
