"""The runner's exceptions; each carries the CLI exit code it maps to (listed in ``--help``)."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: an exception nobody expected
EXIT_USAGE = 2  # bad command line (argparse's own code)
EXIT_BAD_WORKFLOW = 3  # unreadable file, bad structure, unknown node type, bad value, failed validation
EXIT_MISSING_MODEL = 4  # a model file named by the workflow is not in any models folder
EXIT_NODE_FAILED = 5  # a node raised while running
EXIT_INTERRUPTED = 130  # Ctrl-C (the shell's convention for SIGINT)


class RunnerError(Exception):
    """Base class: a message meant for the user, and the exit code the CLI returns."""

    exit_code = EXIT_INTERNAL


class WorkflowError(RunnerError):
    """The workflow file cannot be read or turned into a graph (names the node where there is one)."""

    exit_code = EXIT_BAD_WORKFLOW


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a graph: the message, and (for an editor that marks the node) the
    node, the input and the kind, named as ComfyUI names them (``execution.py`` error types)."""

    message: str
    node_id: str | None = None
    kind: str = "invalid_prompt"
    input_name: str | None = None

    def __str__(self) -> str:
        return self.message


class UnknownNodeTypeError(WorkflowError):
    """Nodes whose type the runner does not have; ``unknown`` lists (node id, type, title)."""

    def __init__(self, message: str, unknown: list[tuple[str, str, str | None]]):
        super().__init__(message)
        self.unknown = unknown


class ValidationError(RunnerError):
    """The graph is well formed but some node's inputs are wrong; ``problems`` lists them all
    (messages), ``details`` the same as :class:`Problem` entries."""

    exit_code = EXIT_BAD_WORKFLOW

    def __init__(self, problems: list[Problem | str]):
        self.details = [p if isinstance(p, Problem) else Problem(str(p)) for p in problems]
        self.problems = [str(p) for p in problems]
        lines = "\n  ".join(self.problems)
        super().__init__(f"the workflow is not valid ({len(problems)} problem"
                         f"{'s' if len(problems) != 1 else ''}):\n  {lines}")


class MissingModelError(RunnerError):
    """A model file was not found; the message says where we looked and where to get it;
    ``details`` names the nodes and inputs (when validation found it)."""

    exit_code = EXIT_MISSING_MODEL

    def __init__(self, message: str, details: list[Problem] = ()):
        super().__init__(message)
        self.details = list(details)


class NodeExecutionError(RunnerError):
    """A node raised while running; ``node_id`` / ``class_type`` say which, ``__cause__`` holds why."""

    exit_code = EXIT_NODE_FAILED

    def __init__(self, message: str, node_id: str, class_type: str):
        super().__init__(message)
        self.node_id = node_id
        self.class_type = class_type
