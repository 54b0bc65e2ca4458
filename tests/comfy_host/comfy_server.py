"""A real ComfyUI server for the host checks: started on its own port over a models folder, fed
API prompts, stopped (``../shared/comfy-host/comfy_run.sh`` and ``comfy_api_run.py``)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

SCRATCH = Path(os.environ.get("SCRATCH", Path.home() / "scratch"))
COMFY_HOST = Path(os.environ.get("COMFY_HOST", "/work/shared/comfy-host"))


@contextlib.contextmanager
def running_comfyui(work: Path, models: Path, folders: tuple[str, ...], port: int, comfy_dir: Path | None = None,
                    name: str = "check", pythonpath: str = "",
                    wait: int | None = None) -> Iterator[tuple[str, Path, Path]]:
    """ComfyUI serving ``models`` (its ``folders`` through extra_model_paths); yields (its URL, its
    run folder with input/ and output/, its log) and stops it afterwards. ``pythonpath``: extra
    import folders for ComfyUI's Python; ``wait``: seconds to wait for it to start."""
    paths = work / "extra_model_paths.yaml"
    paths.write_text(f"{name}:\n" + f"    base_path: {models}\n" + "".join(
        f"    {folder}: {folder}/\n" for folder in folders))
    log = work / f"comfy-{port}.log"
    env = {**os.environ, "SCRATCH": str(SCRATCH), **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    where = ["--comfy-dir", str(comfy_dir)] if comfy_dir is not None else []
    where += ["--wait", str(wait)] if wait is not None else []
    started = subprocess.run(["bash", str(COMFY_HOST / "comfy_run.sh"), "--port", str(port), "--isolated", *where,
                              "--log", str(log), "--", "--extra-model-paths-config", str(paths)],
                             capture_output=True, text=True, env=env)
    print(started.stdout[-2000:], started.stderr[-2000:])
    started.check_returncode()
    rundir = Path(next(line.split()[1] for line in started.stdout.splitlines() if line.startswith("RUNDIR")))
    try:
        yield f"http://127.0.0.1:{port}", rundir, log
    finally:
        subprocess.run(["bash", str(COMFY_HOST / "comfy_run.sh"), "--stop", "--port", str(port)], env=env)


def queue(url: str, prompt: dict, file: Path, timeout: int = 900) -> None:
    """Queue the API ``prompt`` (written to ``file``) and wait until it ran; fails if it failed."""
    file.write_text(json.dumps(prompt))
    subprocess.run([str(SCRATCH / "comfy-venv" / "bin" / "python"), str(COMFY_HOST / "comfy_api_run.py"),
                    "--url", url, "--prompt", str(file), "--timeout", str(timeout)], check=True)


def core_in_process(description: str) -> None:
    """For checks that run core's code in this process (no server): reads ``--comfy`` (the ComfyUI
    checkout) from the command line, puts it and tests/ on the import path and makes core read
    ``--cpu`` as its own argument, before anything imports ComfyUI."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--comfy", type=Path, required=True, help="the ComfyUI checkout")
    args = parser.parse_args()
    sys.path[:0] = [str(args.comfy), str(Path(__file__).resolve().parents[1])]
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()     # so that --cpu (sys.argv) reaches core's arguments
