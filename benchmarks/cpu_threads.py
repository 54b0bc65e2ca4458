"""Wall time of ``python -m nextdit_nodes demo`` (the whole command: start, load, 25 steps, decode,
save) at 1 and at 2 torch threads, runs alternating so both see the same load; optionally with a
process burning one core beside them (``--busy``). Prints each run, the medians and the load
average seen. On the CPU only.

  nice python benchmarks/cpu_threads.py --repeats 5
  nice python benchmarks/cpu_threads.py --repeats 3 --busy
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

BURN = "while True: pass"


def run_demo(threads: int, output: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NEXTDIT_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nextdit_nodes", "demo", "--output-dir", output], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per thread count")
    parser.add_argument("--busy", action="store_true", help="burn one core in another process meanwhile")
    args = parser.parse_args()
    burner = subprocess.Popen([sys.executable, "-c", BURN]) if args.busy else None
    times: dict[int, list[float]] = {1: [], 2: []}
    loads = []
    try:
        with tempfile.TemporaryDirectory() as output:
            run_demo(1, output)   # warm the file cache; not counted
            for index in range(args.repeats):
                for threads in ((1, 2) if index % 2 == 0 else (2, 1)):
                    loads.append(os.getloadavg()[0])
                    seconds = run_demo(threads, output)
                    times[threads].append(seconds)
                    print(f"run {index + 1}, {threads} thread(s): {seconds:.1f} s (load average {loads[-1]:.1f})",
                          flush=True)
    finally:
        if burner is not None:
            burner.kill()
    print(f"{'with one core burnt' if args.busy else 'as found'}, {os.cpu_count()} cores, load average "
          f"{min(loads):.1f}–{max(loads):.1f}: median 1 thread {statistics.median(times[1]):.1f} s, "
          f"2 threads {statistics.median(times[2]):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
