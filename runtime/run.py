"""``python -m nextdit_nodes run WORKFLOW.json``: run a workflow headlessly and save its images."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from ..nodes import NODE_CLASS_MAPPINGS, host
from .core_nodes import core_node_classes
from .errors import MissingModelError, NodeExecutionError, WorkflowError
from .executor import Executor, RunResult
from .graph import GraphNode, Workflow
from .model_sources import MODEL_INPUT_FOLDERS, where_to_get
from .progress_bar import progress_display
from .specs import input_specs
from .workflow import load_workflow


def runner_classes(output_dir: str | Path = "output", temp_dir: str | Path | None = None
                   ) -> dict[str, type]:
    """Every node the runner knows: the pack's nodes plus the core nodes it implements."""
    return {**core_node_classes(output_dir, temp_dir), **NODE_CLASS_MAPPINGS}


# ---- --set NODE.INPUT=VALUE --------------------------------------------------------------------

def _parse_value(text: str, kind: str, where: str) -> Any:
    try:
        if kind == "INT":
            return int(text)
        if kind == "FLOAT":
            return float(text)
    except ValueError:
        raise WorkflowError(f"--set {where}: {text!r} is not a valid {kind} value") from None
    if kind == "BOOLEAN":
        lowered = text.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise WorkflowError(f"--set {where}: {text!r} is not true or false")
        return lowered in ("true", "1", "yes", "on")
    return text


def _split_target(workflow: Workflow, target: str) -> tuple[GraphNode, str]:
    """``NODE.INPUT`` where NODE (an id or a title) may itself contain dots."""
    cuts = [i for i, c in enumerate(target) if c == "."][::-1]
    first_error = None
    for cut in cuts:
        try:
            return workflow.find(target[:cut]), target[cut + 1:]
        except WorkflowError as error:
            first_error = first_error or error
    raise first_error


def apply_overrides(workflow: Workflow, classes: Mapping[str, type], overrides: list[str]) -> None:
    """Apply ``NODE.INPUT=VALUE`` settings; NODE is a node id or title, VALUE typed by the input."""
    for override in overrides:
        target, equals, text = override.partition("=")
        if not equals or "." not in target.strip("."):
            raise WorkflowError(f"--set {override!r}: expected NODE.INPUT=VALUE, e.g. "
                                f"--set Sampler.seed=42 or --set 7.steps=20")
        node, name = _split_target(workflow, target)
        specs = input_specs(classes[node.class_type])
        if name not in specs:
            raise WorkflowError(f"--set {override!r}: {node.describe()} has no input {name!r}; its "
                                f"inputs are {', '.join(specs)}")
        workflow.set_input(node.id, name, _parse_value(text, specs[name].type, override))


# ---- missing model files -----------------------------------------------------------------------

def model_file_check(node: GraphNode, name: str, value: Any) -> bool | str:
    """Validation hook: a model-file value not in the dropdown may be a path or a new file."""
    folder = MODEL_INPUT_FOLDERS.get(name)
    if folder is None or not isinstance(value, str):
        return False
    try:
        host.resolve_model_file(folder, value)
    except FileNotFoundError as error:
        return _missing_message(node, name, value, str(error))
    return True


def _missing_message(node: GraphNode, name: str, value: str, searched: str) -> str:
    hint = where_to_get(value) or "It is not a file the pack knows; check the name, or see the README's Model files section."
    return f"{node.describe()}: input {name!r}: {searched}\n{hint}"


def _explain_node_failure(error: NodeExecutionError, workflow: Workflow) -> Exception:
    """A node that failed because a file was missing becomes a MissingModelError."""
    cause = error.__cause__
    if not isinstance(cause, FileNotFoundError):
        return error
    node = workflow.nodes[error.node_id]
    quoted = re.search(r"model file '([^']+)'", str(cause))
    value = quoted.group(1) if quoted else next(
        (v for k, v in node.inputs.items() if k in MODEL_INPUT_FOLDERS and isinstance(v, str)), "")
    hint = where_to_get(value) if value else None
    message = f"{node.describe()} failed: {cause}" + (f"\n{hint}" if hint else "")
    return MissingModelError(message)


# ---- the command -------------------------------------------------------------------------------

def _peak_memory() -> str:
    try:
        import resource  # noqa: PLC0415 - POSIX only
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


def saved_images(result: RunResult, output_dir: Path, temp_dir: Path) -> list[Path]:
    """Paths of the images the output nodes reported (ComfyUI's ``ui.images`` entries)."""
    paths = []
    for ui in result.ui.values():
        for image in ui.get("images", []):
            base = output_dir if image.get("type") == "output" else temp_dir
            paths.append(base / image.get("subfolder", "") / image["filename"])
    return paths


def run_workflow(path: str | Path, output_dir: str | Path = "output", overrides: list[str] = (),
                 temp_dir: str | Path | None = None, show_progress: bool = False,
                 executor: Executor | None = None) -> tuple[RunResult, list[Path]]:
    """Load, override, validate and run a workflow file; returns the result and saved images."""
    import tempfile  # noqa: PLC0415

    output_dir = Path(output_dir)
    temp_dir = Path(temp_dir) if temp_dir else Path(tempfile.gettempdir()) / "nextdit-nodes"
    classes = executor.classes if executor is not None else runner_classes(output_dir, temp_dir)
    workflow = load_workflow(path, classes)
    apply_overrides(workflow, classes, list(overrides))
    executor = executor or Executor(classes, model_check=model_file_check)
    with progress_display(show_progress) as display:
        try:
            result = executor.run(workflow, on_node=display.on_node)
        except NodeExecutionError as error:
            raise _explain_node_failure(error, workflow) from error
    return result, saved_images(result, output_dir, temp_dir)


def _command(args: argparse.Namespace) -> int:
    if args.models_dir:
        os.environ["NEXTDIT_MODELS_DIR"] = os.pathsep.join(str(d) for d in args.models_dir)
    start = time.perf_counter()
    result, images = run_workflow(args.workflow, args.output_dir, args.set, args.temp_dir,
                                  show_progress=not args.quiet)
    seconds = time.perf_counter() - start
    where = ", ".join(str(p) for p in images) if images else "no images saved"
    print(f"{len(images)} image(s): {where} | {seconds:.1f} s | {len(result.executed)} node(s) run, "
          f"{len(result.cached)} cached | {_peak_memory()}")
    return 0


def register(subparsers) -> None:
    from .cli import EXIT_CODES_HELP  # noqa: PLC0415

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
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no INFO lines "
                                                                   "(warnings, errors and the summary only)")
    parser.set_defaults(func=_command)
