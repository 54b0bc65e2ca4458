"""The headless workflow runner (the command line that drives it is ``commands/``).

Scripts run workflows with it::

    from nextdit_nodes.runtime import Executor, load_workflow, run_workflow, runner_classes

``run_workflow(path, output_dir, overrides)`` does what ``python -m nextdit_nodes run`` does; an
``Executor`` kept between runs reuses the outputs of nodes whose inputs did not change.
"""

from .executor import Executor, RunResult
from .run import run_workflow, runner_classes
from .workflow import load_workflow

__all__ = ["Executor", "RunResult", "load_workflow", "run_workflow", "runner_classes"]
