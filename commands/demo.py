"""``python -m nextdit_nodes demo``: the main job. Runs the embedded-model workflow through the
headless runner and saves its picture.

The embedded model's weights ship in the pack's ``embedded/`` folder (made by ``train-embedded``).
Where that folder is missing (a stripped copy of the pack), the demo writes the same files with
random weights to a temporary folder (and says so), so the whole pipeline still runs.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from ..nodes.host import EMBEDDED_DIR, PACK_DIR

WORKFLOW = PACK_DIR / "example_workflows" / "Embedded shapes model.json"
log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the embedded-model workflow (works on any machine)",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("output"), help="where the PNG goes")
    parser.add_argument("--seed", type=int, default=None, help="sampler seed (default: the workflow's)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..training.embedded.pipeline import embedded_files_present, write_untrained
    from ..runtime.run import run_workflow

    overrides = [] if args.seed is None else [f"NextDiT Sampler.seed={args.seed}"]
    with tempfile.TemporaryDirectory() as scratch:
        if not embedded_files_present(EMBEDDED_DIR):
            log.warning("the embedded model's files are missing from %s (restore them from the pack, or "
                        "python -m nextdit_nodes train-embedded): running its workflow on random weights "
                        "of the same architecture; the picture is noise, the pipeline is real", EMBEDDED_DIR)
            write_untrained(Path(scratch))
            os.environ["NEXTDIT_MODELS_DIR"] = scratch
        start = time.perf_counter()
        result, images = run_workflow(WORKFLOW, args.output_dir, overrides, show_progress=True)
    print(f"{len(images)} image(s): {', '.join(map(str, images))} | {time.perf_counter() - start:.1f} s")
    return 0
