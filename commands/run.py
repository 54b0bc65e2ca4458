"""``python -m nextdit_nodes run WORKFLOW.json``: run a workflow headlessly and save its images."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .arguments import use_models_dirs
from .cli import EXIT_CODES_HELP


def _peak_memory() -> str:
    try:
        import resource  # POSIX only
    except ImportError:  # Windows
        text = "peak RAM not measured on this platform"
    else:
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":  # bytes there, KiB on Linux
            rss_kib //= 1024
        text = f"peak RAM {rss_kib / 2**20:.2f} GiB"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        text += f", peak VRAM {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    return text


def _command(args: argparse.Namespace) -> int:
    from ..runtime.run import run_workflow

    use_models_dirs(args.models_dir)
    start = time.perf_counter()
    result, images = run_workflow(args.workflow, args.output_dir, args.set, args.temp_dir,
                                  show_progress=not args.quiet, input_dir=args.input_dir)
    seconds = time.perf_counter() - start
    where = ", ".join(str(p) for p in images) if images else "no images saved"
    print(f"{len(images)} image(s): {where} | {seconds:.1f} s | {len(result.executed)} node(s) run, "
          f"{len(result.cached)} cached | {_peak_memory()}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run a workflow JSON (UI or API format) and save its images",
        description="Run a ComfyUI workflow (the UI-format .json ComfyUI saves, or an API-format "
                    "export) with the pack's nodes and SaveImage / PreviewImage / primitives.",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflow", type=Path,
                        help="the workflow .json file, or a .png saved by ComfyUI / this runner")
    parser.add_argument("--models-dir", action="append", type=Path, metavar="DIR",
                        help="models folder laid out like ComfyUI's (diffusion_models/, "
                             "text_encoders/, vae/, loras/); repeatable; default: "
                             "$NEXTDIT_MODELS_DIR, else ./models")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                        help="change an input before running; NODE is the node's id or title "
                             "(e.g. --set Sampler.seed=7 --set 5.steps=20); repeatable")
    parser.add_argument("--output-dir", type=Path, default=Path("output"), metavar="DIR",
                        help="where SaveImage writes (default ./output)")
    parser.add_argument("--temp-dir", type=Path, default=None, metavar="DIR",
                        help="where PreviewImage writes (default: the system temp folder)")
    parser.add_argument("--input-dir", type=Path, default=Path("input"), metavar="DIR",
                        help="where LoadImage reads images (default ./input); names may not leave it")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no INFO lines "
                                                                   "(warnings, errors and the summary only)")
    parser.set_defaults(func=_command)
