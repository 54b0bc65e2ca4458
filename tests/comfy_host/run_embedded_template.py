"""The main job inside real ComfyUI (outside CI): open the embedded-model
example from the template browser in the real frontend, press Run, and wait for
``execution_success``; the image ComfyUI wrote is scored with the adherence checker.
``--template`` opens another embedded example: "Embedded shapes model with core KSampler" (the
same prompt through core's sampler) or "Embedded shapes model with a LoRA".

The embedded weights ship in the pack's ``embedded/`` folder, so ComfyUI needs no model files:

  SCRATCH=~/scratch ../shared/comfy-host/comfy_run.sh --port 8199 --isolated
  ~/scratch/e2e-venv/bin/python tests/comfy_host/run_embedded_template.py --out /tmp/embedded_check
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from frontend import click_run, editor, fit_view, open_template, wait_for

PACK_FOLDER = "nextdit-nodes"
TEMPLATE = "Embedded shapes model"


# The objects each example's prompt asks for: (shape, colour, size, row, column), and what must be right.
ASKED = {
    TEMPLATE: ([("circle", "red", "large", 0, 0), ("square", "blue", "small", 2, 2)], "colour_position"),
    "Embedded shapes model with core KSampler": ([("circle", "red", "large", 0, 0), ("square", "blue", "small", 2, 2)],
                                                 "colour_position"),
    "Embedded shapes model with a LoRA": ([("circle", "red", "tiny", 0, 0), ("square", "blue", "large", 1, 1),
                                           ("square", "purple", "tiny", 2, 2)], "size"),
}


def run(page, events, url: str, out: Path, template: str = TEMPLATE) -> list[str]:
    fit_view(page)
    start = len(events["ws"])
    pressed = click_run(page)
    done = wait_for(events, ("execution_success", "execution_error", "execution_interrupted"), 600, page, start)
    print(f"Run pressed: {done and done['type']} after {time.time() - pressed:.1f} s")
    if not done or done["type"] != "execution_success":
        return [f"run did not succeed: {json.dumps(done)[:2000]}"]
    page.wait_for_timeout(2000)
    page.screenshot(path=str(out / "after_run.png"))
    executed = [m["data"] for m in events["ws"][start:] if m.get("type") == "executed"]
    image = executed[-1]["output"]["images"][0]
    with urllib.request.urlopen(f"{url}/api/view?{urllib.parse.urlencode(image)}") as response:
        png = response.read()
    (out / "comfyui_output.png").write_bytes(png)
    print(f"ComfyUI wrote {image} ({len(png)} bytes); shown in the SaveImage node (after_run.png)")
    return score(png, template)


def score(png: bytes, template: str = TEMPLATE) -> list[str]:
    """The objects the example's prompt asks for must be there (colour and cell; for the LoRA example,
    their sizes, tiny included)."""
    try:
        import numpy as np
        from PIL import Image

        from nextdit_nodes.training.embedded.adherence import score_image
        from nextdit_nodes.training.embedded.shapes import Scene, ShapeObject
    except ImportError as error:  # this browser venv need not have the pack installed
        print(f"not scored here ({error}); score comfyui_output.png with the pack's checker")
        return []

    objects, figure = ASKED[template]
    scene = Scene(tuple(ShapeObject(*obj) for obj in objects), "white")
    scores = score_image(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), scene)
    print("checker on ComfyUI's image:", scores)
    right = all(getattr(s, figure) for s in scores)
    return [] if right else [f"the image does not show the prompt's objects ({figure})"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8199")
    parser.add_argument("--out", type=Path, default=Path("embedded_check"))
    parser.add_argument("--template", default=TEMPLATE, choices=list(ASKED))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with editor(args.url) as (page, events):
        problems = open_template(page, PACK_FOLDER, args.template, args.out)
        if not problems:
            problems = run(page, events, args.url, args.out, args.template)
    print("PROBLEMS:", *problems, sep="\n  ") if problems else print("the embedded example ran in ComfyUI")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
