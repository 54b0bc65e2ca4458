"""What several commands share about their arguments: the error for a bad combination of options,
the one reader of prompt files, ``--models-dir`` and the trainers' dataset and model options."""

from __future__ import annotations

import os
from pathlib import Path

from ..runtime.errors import EXIT_USAGE, RunnerError


class UsageError(RunnerError):
    """A bad combination of options, or a file an option names that cannot be used."""

    exit_code = EXIT_USAGE


PROMPT_LINE_BREAK = "\\n"   # the two characters that stand for a line break inside a prompt file's line


def read_prompts(path: Path, what: str = "prompts") -> list[str]:
    """The prompts of a text file: one per line; blank lines and lines starting with # are skipped;
    ``\\n`` inside a line is a line break (multi-line XML prompts, as NewBie XML captions are written).
    ``what`` names the file in the errors (a missing file, a file without prompts)."""
    if not path.is_file():
        raise UsageError(f"{what} file {path} does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p.replace(PROMPT_LINE_BREAK, "\n") for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise UsageError(f"{path} holds no prompts (one per line; # starts a comment)")
    return prompts


def use_models_dirs(folders: list[Path] | None) -> None:
    """``--models-dir`` (repeatable): the folders the model inputs are found in, for this process."""
    if folders:
        os.environ["NEXTDIT_MODELS_DIR"] = os.pathsep.join(str(d) for d in folders)


def add_dataset_and_models(parser, output_help: str) -> None:
    """The dataset folder and the four models a trainer on images needs (the DiT, Gemma, Jina and
    the VAE that encodes the images), and ``--output``."""
    parser.add_argument("data", type=Path, help="dataset folder")
    models = parser.add_argument_group("models (a name in the models folders, or a path)")
    models.add_argument("--dit", required=True, help="Next-DiT weights (models/diffusion_models)")
    models.add_argument("--gemma", required=True, help="Gemma 3 4B-it (models/text_encoders)")
    models.add_argument("--jina", required=True, help="Jina CLIP v2 (models/text_encoders)")
    models.add_argument("--vae", required=True, help="FLUX VAE with its encoder, ae.safetensors (models/vae)")
    models.add_argument("--output", type=Path, required=True, help=output_help)
