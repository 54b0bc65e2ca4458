"""Every command line the README shows, as written: the command exists, every option it uses exists
and takes the value given (the CLI's own parser reads it), files of this repository it names exist,
and the cheap ones run (``nodes``; ``demo`` and ``run`` run elsewhere: test_demo, test_run_command_line).
Model files and datasets in the examples are the user's, so they are not looked for."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from nextdit_nodes.commands import cli

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The README's code lines that call the pack (continuations joined), in order."""
    commands, pending = [], ""
    in_fence = False
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            in_fence = not in_fence
            continue
        if not (in_fence or line.startswith("    ")):
            pending = ""
            continue
        text = (pending + " " + line.strip()) if pending else line.strip()
        if text.endswith("\\"):
            pending = text[:-1]
            continue
        pending = ""
        if "-m nextdit_nodes" in text and not text.startswith("#"):
            commands.append(text)
    return commands


def pack_arguments(command: str) -> list[str]:
    """The arguments after ``-m nextdit_nodes`` (the last call when a line chains several)."""
    call = command.split("&&")[-1]
    words = shlex.split(call, comments=True)
    return words[words.index("nextdit_nodes") + 1:]


COMMANDS = readme_commands()


def test_the_readme_shows_the_commands_a_user_needs():
    used = {pack_arguments(c)[0] for c in COMMANDS}
    # the set-up command, the editor, the runner, and each tool with a README section
    assert {"demo", "serve", "run", "distill", "train-lora", "train-controlnet", "quantize", "check-embedded",
            "distill-decoder"} <= used, used


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_parses_as_written(command, capsys):
    argv = pack_arguments(command)
    parser = cli.build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"README command does not parse: {command}\n{capsys.readouterr().err}")
    assert getattr(args, "func", None) is not None, command
    for word in argv:
        # a file of this repository (an example workflow, a shipped input) must exist as named
        if re.match(r"^(example_workflows|embedded|benchmarks|tests)/", word):
            assert (ROOT / word).exists(), f"README names {word}, which is not in the repository"


def test_the_nodes_command_runs_as_written(capsys):
    # README: "`python -m nextdit_nodes nodes` lists every node with its inputs" (in the text)
    assert "`python -m nextdit_nodes nodes` lists every node" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert cli.main(["nodes"]) == 0
    listed = capsys.readouterr().out
    assert "NextDiT Sampler" in listed and "NextDiT ControlNet Loader" in listed
