"""Run a workflow file headlessly: the runner's nodes, ``--set`` overrides, model-file checks and the
images it saved (what ``python -m nextdit_nodes run`` does; the command itself is ``commands/run.py``)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

from ..files.atomic import clean_leftovers
from ..nodes import NODE_CLASS_MAPPINGS, host
from .core_nodes import core_node_classes
from .errors import MissingModelError, NodeExecutionError, WorkflowError
from .executor import Executor, RunResult
from .graph import GraphNode, Workflow
from .model_sources import MODEL_INPUT_FOLDERS, where_to_get
from .progress_bar import progress_display
from .specs import input_specs
from .threads import use_thread_policy
from .workflow import load_workflow


def runner_classes(output_dir: str | Path = "output", temp_dir: str | Path | None = None,
                   input_dir: str | Path = "input") -> dict[str, type]:
    """Every node the runner knows: the pack's nodes plus the core nodes it implements (LoadImage
    reads from ``input_dir``)."""
    return {**core_node_classes(output_dir, temp_dir, input_dir), **NODE_CLASS_MAPPINGS}


# ---- --set NODE.INPUT=VALUE --------------------------------------------------------------------

def _parse_value(text: str, kind: str, where: str) -> Any:
    try:
        if kind == "INT":
            return int(text)
        if kind == "FLOAT":
            return float(text)   # a non-finite value is refused in validation, naming the input
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
    hint = where_to_get(value) or ("It is not a file the pack knows; check the name, or see the README's "
                                   "Model files section.")
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


# ---- running a workflow file -----------------------------------------------------------------

def saved_images(result: RunResult, output_dir: Path, temp_dir: Path) -> list[Path]:
    """Paths of the images the output nodes reported (ComfyUI's ``ui.images`` entries)."""
    paths = []
    for ui in result.ui.values():
        for image in ui.get("images", []):
            base = output_dir if image.get("type") == "output" else temp_dir
            paths.append(base / image.get("subfolder", "") / image["filename"])
    return paths


def _check_writable(folder: Path, option: str) -> None:
    """Report before the run a folder that cannot be created or written (it is created only when
    something is saved there)."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    why = (f"{str(existing)!r} is a file, not a folder" if not existing.is_dir()
           else f"{str(existing)!r} is not writable" if not os.access(existing, os.W_OK | os.X_OK)
           else None)
    if why is not None:
        raise WorkflowError(f"{option} {str(folder)!r} cannot be created or written: {why}; "
                            f"choose another folder")


def run_workflow(path: str | Path, output_dir: str | Path = "output", overrides: list[str] = (),
                 temp_dir: str | Path | None = None, show_progress: bool = False,
                 executor: Executor | None = None, input_dir: str | Path = "input") -> tuple[RunResult, list[Path]]:
    """Load, override, validate and run a workflow file; returns the result and saved images."""
    output_dir = Path(output_dir)
    temp_dir = Path(temp_dir) if temp_dir else Path(tempfile.gettempdir()) / "nextdit-nodes"
    classes = executor.classes if executor is not None else runner_classes(output_dir, temp_dir, input_dir)
    workflow = load_workflow(path, classes)
    apply_overrides(workflow, classes, list(overrides))
    for folder, option in ((output_dir, "--output-dir"), (temp_dir, "--temp-dir")):
        _check_writable(folder, option)
        clean_leftovers(folder)  # what a killed run left half written
    executor = executor or Executor(classes, model_check=model_file_check)
    use_thread_policy(host.torch_device())
    with progress_display(show_progress) as display:
        try:
            result = executor.run(workflow, on_node=display.on_node)
        except NodeExecutionError as error:
            raise _explain_node_failure(error, workflow) from error
    return result, saved_images(result, output_dir, temp_dir)
