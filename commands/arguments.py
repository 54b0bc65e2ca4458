"""What several commands share about their arguments: the error for a bad combination of options,
the one reader of prompt files, and ``--models-dir``."""

from __future__ import annotations

import os
from pathlib import Path

from ..runtime.errors import EXIT_USAGE, RunnerError


class UsageError(RunnerError):
    """A bad combination of options, or a file an option names that cannot be used."""

    exit_code = EXIT_USAGE


def read_prompts(path: Path, what: str = "prompts") -> list[str]:
    """The prompts of a text file: one per line; blank lines and lines starting with # are skipped.
    ``what`` names the file in the errors (a missing file, a file without prompts)."""
    if not path.is_file():
        raise UsageError(f"{what} file {path} does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise UsageError(f"{path} holds no prompts (one per line; # starts a comment)")
    return prompts


def use_models_dirs(folders: list[Path] | None) -> None:
    """``--models-dir`` (repeatable): the folders the model inputs are found in, for this process."""
    if folders:
        os.environ["NEXTDIT_MODELS_DIR"] = os.pathsep.join(str(d) for d in folders)
