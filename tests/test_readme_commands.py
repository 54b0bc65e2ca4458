"""Every command line the README shows, run as written through ``cli.main`` with the README's argv.

What runs for real: option parsing and checks, model name resolution, reading the data and the
prompts, loading the models, and the command's output files. What is stood in: only each
command's expensive inner loop (training iterations, the held-out evaluation's prompt count,
the demo datasets' image count, the sampler's steps). Each stand-in first asserts that it was
handed exactly the README's values (the words the README writes, read here without the CLI's
parser; the parser's defaults only for what the README leaves out), then does a tiny real amount
of the same work by calling the real loop with a small count, so the files the next README
command reads exist and are real. ``README_COMMANDS_SHOW=1 pytest -s`` prints what each saw.

Where the commands run:

- The embedded model's recipes (``NextDiT-embedded-shapes.pth``, ``check-embedded``, the demo
  datasets) run in one scratch folder, in README order, each reading what the one before wrote
  (data -> train -> check). Their absolute scratch folders (``/tmp/tiny``) are the one rewrite of
  an argument: ``/tmp/X`` becomes ``<scratch>/tmp/X`` so the test writes only under pytest's
  tmp_path (a word that does not start with ``/tmp/`` is passed on unchanged).
- Commands on the user's NewBie files run in a fresh folder each (each README section starts from
  the user's files), with tiny stand-ins under the real names in ``./models`` (the headless
  search root: ``tests/runtime_models.py`` writes them in the real layouts) and tiny user inputs
  (``prompts.txt``, ``my_dataset/`` and the like). The folder also holds the pack's
  ``example_workflows/``, as the README's commands run in the pack's folder (``pip install -e .``).
  ``~`` is expanded as the shell would, with HOME at that folder.
- ``torchrun ... -m nextdit_nodes ARGS``: ARGS run in this one process (a job of one; the
  several-process runs are test_distributed_training's).
- ``serve`` runs as written until the point where it would serve forever; there its app is started
  on a free port and ``/`` fetched once (the port check itself: test_run_command_line).
- ``pip install ... && python -m nextdit_nodes demo``: the install is the user's; ``demo`` runs.
- ``python benchmarks/gpu.py --tiny`` runs in this process; the script's GPU-size lines are skipped.

A README command this file has no runner for, or naming a user input it has no stand-in for,
fails, naming it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nextdit_nodes.commands import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_code_lines() -> list[str]:
    """The README's code lines (continuations joined, comments kept), in order."""
    lines, pending = [], ""
    in_fence = False
    for line in README.read_text(encoding="utf-8").splitlines():
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
        if text and not text.startswith("#"):
            lines.append(text)
    return lines


def readme_commands() -> list[str]:
    """The README's code lines that call the pack, in order."""
    return [line for line in readme_code_lines() if "-m nextdit_nodes" in line]


def readme_scripts() -> list[str]:
    """The README's code lines that run a script of this repository (``python benchmarks/X.py``)."""
    return [line for line in readme_code_lines() if re.match(r"^(\w+=\S+ )*python (benchmarks|tests)/\S+\.py", line)]


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


def test_the_nodes_command_runs_as_written(capsys):
    # README: "`python -m nextdit_nodes nodes` lists every node with its inputs" (in the text)
    assert "`python -m nextdit_nodes nodes` lists every node" in README.read_text(encoding="utf-8")
    assert cli.main(["nodes"]) == 0
    listed = capsys.readouterr().out
    assert "NextDiT Sampler" in listed and "NextDiT ControlNet Loader" in listed


# ---- the README's own words --------------------------------------------------------------------

def written(argv: list[str], option: str) -> str | None:
    """The word after ``option`` in the README's argv (None when the README does not write it)."""
    return argv[argv.index(option) + 1] if option in argv else None


def written_options(argv: list[str]) -> dict[str, str]:
    """{dest name: the README's word} of every ``--option VALUE`` the README writes."""
    out = {}
    for word, value in zip(argv, argv[1:] + [""]):
        if word.startswith("--") and value and not value.startswith("--"):
            out[word[2:].replace("-", "_")] = value
    return out


def as_field(value: str, like):
    """The README's word as the type of a config field's value."""
    if isinstance(like, bool):
        return value.lower() in ("1", "true", "yes")
    if isinstance(like, (int, float)):
        return type(like)(float(value)) if isinstance(like, float) else int(value)
    return value


class Expectations:
    """The README's values a stood-in loop must receive; records what each stand-in saw."""

    def __init__(self, command: str, argv: list[str]):
        self.command, self.argv = command, argv
        self.options = written_options(argv)
        self.args = cli.build_parser().parse_args(argv)   # for the options the README leaves at their default
        self.seen: list[str] = []

    def fail(self, message: str):
        pytest.fail(f"README command {self.command!r}: {message}")

    def check_config(self, config, aliases: dict[str, str] | None = None, what: str = "") -> None:
        """Every option the README writes that names a field of ``config`` (directly or through
        ``aliases``: option dest -> field) has the README's value there; ``--no-checkpointing``
        turns checkpointing off."""
        names = {f.name for f in fields(config)}
        for dest, word in self.options.items():
            field = (aliases or {}).get(dest, dest)
            if field in names:
                got = getattr(config, field)
                if got != as_field(word, got):
                    self.fail(f"{what} got {field}={got!r}, the README writes --{dest.replace('_', '-')} {word}")
        if "checkpointing" in names and (not getattr(config, "checkpointing")) != ("--no-checkpointing" in self.argv):
            self.fail(f"{what} got checkpointing={config.checkpointing}, the README writes "
                      f"{'--no-checkpointing' if '--no-checkpointing' in self.argv else 'no --no-checkpointing'}")

    def equal(self, what: str, got, expected) -> None:
        if got != expected:
            self.fail(f"{what}: got {got!r}, the README's value is {expected!r}")


# ---- the stand-ins: each asserts the README's values, then runs the real loop a little ---------

def stand_in_training_loop(monkeypatch, expect: Expectations) -> None:
    """train-lora, train-controlnet and distill-decoder train in ``lora_training.run`` until
    ``config.steps``: the stand-in checks the config and runs the real loop for one step."""
    from nextdit_nodes.training import lora_training

    real = lora_training.run

    def one_step(training, progress=True, every=0, on_every=None):
        config = training.config
        expect.check_config(config, {"init": "-"}, "the training loop")
        if written(expect.argv, "--init") is not None:   # resolved to a path in the models folders
            expect.equal("ControlNet to start from", Path(config.init).name, written(expect.argv, "--init"))
        expect.equal("training steps", config.steps, expect.args.steps)
        expect.equal("batch size", config.batch_size, expect.args.batch_size)
        expect.seen.append(f"training loop of {config.steps} steps")
        # One step; of one image where the batch is drawn each step (distill-decoder). LoRA and
        # ControlNet training fixed their batch order (README batch size) at the start.
        training.config = replace(config, steps=1, batch_size=1)
        real(training, progress=False, every=every, on_every=on_every)

    monkeypatch.setattr(lora_training, "run", one_step)


def stand_in_distillation(monkeypatch, expect: Expectations) -> None:
    """distill's three loops (guidance, few-step, compact), each with its config's iteration count:
    checked, then run for one iteration of one small batch on 32×32 trajectories."""
    from nextdit_nodes.training import compact, distill, step_distill

    small = dict(iterations=1, batch_size=1, width=32, height=32)
    real_distill, real_steps = distill.distill, step_distill.step_distill
    real_importance, real_compact = compact.layer_importance, compact.compact_distill
    args = expect.args

    def guidance(teacher, positives, negative, config, *rest, **kw):
        expect.check_config(config, {"steps": "-"}, "the guidance distillation")
        expect.equal("guidance iterations", config.iterations, args.iterations)
        expect.seen.append(f"guidance distillation of {config.iterations} iterations")
        return real_distill(teacher, positives, negative, replace(config, **small, trajectory_steps=2), *rest, **kw)

    def steps(model, positives, config, *rest, **kw):
        expect.check_config(config, {"step_method": "method", "step_iterations": "iterations",
                                     "iterations": "-"}, "the step distillation")
        expect.equal("student steps", config.steps, int(written(expect.argv, "--steps")))
        if written(expect.argv, "--step-guidance") is not None:
            scale = float(written(expect.argv, "--step-guidance"))
            expect.equal("trained guidance scale", (config.guidance_min, config.guidance_max), (scale, scale))
        expect.equal("iterations per round", config.iterations, args.step_iterations)
        expect.seen.append(f"step distillation to {config.steps} steps")
        return real_steps(model, positives, replace(config, **small), *rest, **kw)

    def importance(parent, positives, negative, config, iterations=16):
        expect.equal("kept layer count", len(config.keep), int(written(expect.argv, "--layers")))
        expect.seen.append("layer importance")
        return real_importance(parent, positives, negative, replace(config, **small, trajectory_steps=2), 1)

    def compact_loop(parent, positives, negative, config, *rest, **kw):
        expect.check_config(config, {"layers": "-"}, "the compact distillation")
        expect.equal("kept layer count", len(config.keep), int(written(expect.argv, "--layers")))
        expect.equal("compact iterations", config.iterations, args.iterations)
        expect.seen.append(f"compact distillation to {len(config.keep)} layers")
        return real_compact(parent, positives, negative, replace(config, **small, trajectory_steps=2), *rest, **kw)

    monkeypatch.setattr(distill, "distill", guidance)
    monkeypatch.setattr(step_distill, "step_distill", steps)
    monkeypatch.setattr(compact, "layer_importance", importance)
    monkeypatch.setattr(compact, "compact_distill", compact_loop)


def stand_in_sampler(monkeypatch, expect: Expectations, seed: int | None = None, steps: int | None = None,
                     size: int | None = 32) -> None:
    """The sampler the workflows and the evaluations run: checked (the README's --set seed, the
    evaluation's --steps), then 2 steps at ``size``×``size`` (None: the size asked for; the
    embedded checker scores 64×64 images). evaluate.py holds its own name for it."""
    from nextdit_nodes.sampling import sample as module
    from nextdit_nodes.training.embedded import evaluate

    real, expected_seed = module.sample, seed

    def two_steps(model, positive, negative, settings, *, width, height, seed: int, **kw):
        if expected_seed is not None:
            expect.equal("sampler seed", seed, expected_seed)
        if steps is not None:
            expect.equal("sampler steps", settings.steps, steps)
        expect.seen.append(f"sampler at {width}x{height}, {settings.steps} steps")
        width, height = (width, height) if size is None else (size, size)
        return real(model, positive, negative, replace(settings, steps=2), width=width, height=height, seed=seed,
                    **kw)

    monkeypatch.setattr(module, "sample", two_steps)
    monkeypatch.setattr(evaluate, "sample", two_steps)


def stand_in_demo_data(monkeypatch, expect: Expectations) -> None:
    """The embedded demo datasets render ``count`` scenes: checked, then 8 rendered."""
    from nextdit_nodes.training.embedded import controlnet_demo, lora_demo

    def wrap(module):
        real = module.write_dataset

        def few(folder, count, seed=0, *rest, **named):
            expect.equal("images", count, int(written(expect.argv, "--count") or expect.args.count))
            expect.equal("seed", seed, int(written(expect.argv, "--seed") or expect.args.seed))
            if rest and written(expect.argv, "--shares"):
                expect.equal("caption shares", tuple(rest[0]),
                             tuple(float(x) for x in written(expect.argv, "--shares").split(",")))
            if "share" in named and written(expect.argv, "--share"):
                expect.equal("concept share", named["share"], float(written(expect.argv, "--share")))
            expect.seen.append(f"{count} images")
            return real(folder, 8, seed, *rest, **named)

        monkeypatch.setattr(module, "write_dataset", few)

    wrap(lora_demo)
    wrap(controlnet_demo)


def stand_in_evaluation(monkeypatch, expect: Expectations) -> None:
    """check-embedded scores ``--count`` held-out scenes per row, each sampled in ``--steps``
    steps: checked, then 2 scored, each sampled in 2 steps."""
    from nextdit_nodes.training.embedded import lora_demo, shapes

    real_base, real_concept = shapes.held_out_scenes, lora_demo.held_out_concept_scenes
    count = int(written(expect.argv, "--count") or expect.args.count)

    def base(n, *rest, **kw):
        expect.equal("held-out prompts", n, count)
        expect.seen.append(f"{n} held-out prompts")
        return real_base(2, *rest, **kw)

    def concept(n, *rest, **kw):
        expect.equal("held-out prompts of the new concept", n, count)
        return real_concept(2, *rest, **kw)

    monkeypatch.setattr(shapes, "held_out_scenes", base)
    monkeypatch.setattr(lora_demo, "held_out_concept_scenes", concept)
    stand_in_sampler(monkeypatch, expect, steps=int(written(expect.argv, "--steps") or expect.args.steps), size=None)


# ---- the user's inputs (NewBie commands) --------------------------------------------------------

# The NewBie DiT stand-in: one head of 12 (RoPE axes 4/4/4), so that one training step at the
# README's default 1024² (4096 image tokens) takes about 1 s on one thread instead of the 7 s of
# the 4-head tiny model; its caption and pooled widths stay those of the tiny Gemma and Jina.
LIGHT_DIT = dict(dim=12, n_heads=1, n_kv_heads=1, ffn_dim=24)


@pytest.fixture(scope="module")
def newbie_models(tmp_path_factory):
    """The NewBie files under their real names (tiny, random, real layouts), written once; each
    command gets a copy. Deeper DiTs for the options that need more joint layers than 2: 20 for
    ``--layers 18`` (the real NewBie has 36), 4 for ``--blocks 4``."""
    from factories import write_dit_checkpoint
    from runtime_models import DIT, tiny_newbie_params, write_tiny_models

    folder = write_tiny_models(tmp_path_factory.mktemp("newbie") / "models")
    light = replace(tiny_newbie_params(), **LIGHT_DIT)
    write_dit_checkpoint(folder / "diffusion_models" / DIT, light, seed=0, prefix="")
    deeper = {}
    for option, layers in (("--layers", 20), ("--blocks", 4)):
        deeper[option] = tmp_path_factory.mktemp(f"newbie-{layers}") / DIT
        write_dit_checkpoint(deeper[option], replace(light, n_layers=layers), seed=0, prefix="")
    return folder, deeper


def _image(path: Path, size: tuple[int, int], seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _captioned(folder: Path, controls: bool = False) -> None:
    """One captioned image of the smallest size train-lora keeps at its default resolution
    (shorter side 512; each image costs a VAE encoding at 1024×1024); with ``controls`` with its
    NAME.control.png."""
    folder.mkdir()
    _image(folder / "img0.png", (512, 512), 0)
    (folder / "img0.xml").write_text("<character_1>\n<n>circle</n>\n</character_1>", encoding="utf-8")
    if controls:
        _image(folder / "img0.control.png", (512, 512), 10)


def _plain_images(folder: Path) -> None:
    folder.mkdir()
    for index in range(2):
        _image(folder / f"photo{index}.png", (256, 256), 20 + index)


# The user's inputs the NewBie commands name, made on first use and shared by the commands that
# name them (as the user's one folder is: the feature cache train-lora writes into my_dataset/ is
# reused by the torchrun command after it, as it would be for the user).
USER_INPUTS = {
    "prompts.txt": lambda path: path.write_text("# one prompt a line\na red circle\n\na blue square\n",
                                                encoding="utf-8"),
    "my_dataset/": _captioned,
    "my_pairs/": lambda path: _captioned(path, controls=True),
    "my_images/": _plain_images,
}


@pytest.fixture(scope="module")
def user_inputs(tmp_path_factory):
    made: dict[str, Path] = {}
    shared = tmp_path_factory.mktemp("user-inputs")

    def get(name: str) -> Path:
        if name not in made:
            made[name] = shared / name.rstrip("/")
            USER_INPUTS[name](made[name])
        return made[name]

    return get


def newbie_folder(command: str, folder: Path, argv: list[str], newbie_models, user_inputs) -> Path:
    """``folder`` with ./models (the stand-ins), the user inputs this command names, and the
    pack's example_workflows/ (the README's commands run in the pack's folder: ``pip install -e .``)."""
    from runtime_models import DIT

    models, deeper = newbie_models
    shutil.copytree(models, folder / "models")
    for option, dit in deeper.items():
        if option in argv:
            shutil.copy(dit, folder / "models" / "diffusion_models" / DIT)
    for word in argv:
        if word in USER_INPUTS:
            (folder / word.rstrip("/")).symlink_to(user_inputs(word))
        elif re.search(r"(/|\.txt|\.jsonl|\.csv)$", word) and not (ROOT / word).exists():
            pytest.fail(f"README command {command!r} names the user's {word!r}, for which "
                        f"tests/test_readme_commands.py has no stand-in: add one to USER_INPUTS")
    (folder / "example_workflows").symlink_to(ROOT / "example_workflows")
    return folder


# ---- running one README command ----------------------------------------------------------------

EMBEDDED_CHAIN: dict[str, int] = {}   # README command -> 0 once it ran, -1 while it runs or when it failed


def is_embedded(argv: list[str]) -> bool:
    """A command of the embedded model's recipes (its files, its demo datasets, its checks)."""
    return argv[0].startswith("embedded-") or argv[0] == "check-embedded" or "NextDiT-embedded-shapes.pth" in argv


def scratch_rewrite(argv: list[str], scratch: Path) -> list[str]:
    """``/tmp/X`` -> ``<scratch>/tmp/X`` (the README's scratch folders, kept inside tmp_path)."""
    return [str(scratch / word[1:]) if word.startswith("/tmp/") else word for word in argv]


def shell_words(argv: list[str], home: Path) -> list[str]:
    """What the shell hands the program: ``~`` at the start of a word is HOME."""
    return [str(home) + word[1:] if word == "~" or word.startswith("~/") else word for word in argv]


def run_as_written(command: str, argv: list[str], expect: Expectations, capsys) -> str:
    try:
        code = cli.main(argv)
    except Exception as error:   # a crash (exit 1 for the user): the traceback, naming the command
        error.add_note(f"while running the README command {command!r}")
        raise
    out, err = capsys.readouterr()
    if os.environ.get("README_COMMANDS_SHOW"):   # what each stand-in saw: README_COMMANDS_SHOW=1 pytest -s
        with capsys.disabled():
            print(f"\n{command}\n  -> {expect.seen}")
    if code != 0:
        pytest.fail(f"README command {command!r} exited {code}:\n{err[-3000:]}\n{out[-1000:]}")
    return out


@pytest.mark.parametrize("command", readme_scripts(), ids=lambda c: c.split("#")[0].strip())
def test_every_readme_script_runs_as_written(command, monkeypatch, capsys):
    import runpy
    import sys

    import torch

    words = shlex.split(command, comments=True)
    if "--tiny" not in words:
        pytest.skip("a benchmark of the full NewBie size on a GPU (with COMFYUI_DIR: beside core ComfyUI); the "
                    "README's --tiny line of the same script runs here")
    # in this process (no second torch import); the script's own settings are put back after it
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", torch.backends.cuda.matmul.allow_tf32)
    monkeypatch.chdir(ROOT)
    argv = words[words.index("python") + 1:]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(argv[0], run_name="__main__")
    out = capsys.readouterr().out
    assert out.count("s/image") >= 2, f"README command {command!r} printed no timings:\n{out}"


def test_pip_install_then_demo_installs_this_repository():
    # the install is the user's; what follows it runs in test_every_readme_command_runs_as_written
    installs = [c for c in COMMANDS if c.startswith("pip install")]
    assert installs and (ROOT / "pyproject.toml").is_file()
    for command in installs:
        assert " -e . " in command.split("&&")[0] + " ", f"README command {command!r} does not install this folder"


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(pack_arguments(c)[:2]) for c in COMMANDS])
def test_every_readme_command_runs_as_written(command, tmp_path, tmp_path_factory, newbie_models, user_inputs,
                                              monkeypatch, capsys):
    argv = pack_arguments(command)
    for word in argv:   # a file of this repository it names must exist as named
        if re.match(r"^(example_workflows|embedded|benchmarks|tests)/", word):
            assert (ROOT / word).exists(), f"README command {command!r} names {word}, which is not in the repository"
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", "models")   # the default search root, ./models; restored after
    if is_embedded(argv):
        run_embedded(command, tmp_path_factory, monkeypatch, capsys)
        return
    runner = RUNNERS.get(argv[0])
    if runner is None:
        pytest.fail(f"README command {command!r}: tests/test_readme_commands.py has no runner for "
                    f"{argv[0]!r}; add one that runs it as written (RUNNERS)")
    folder = newbie_folder(command, tmp_path, argv, newbie_models, user_inputs)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("HOME", str(folder))
    argv = shell_words(argv, folder)
    expect = Expectations(command, argv)
    runner(command, argv, expect, folder, monkeypatch, capsys)


# ---- the NewBie commands -----------------------------------------------------------------------

def _demo(command, argv, expect, folder, monkeypatch, capsys):
    stand_in_sampler(monkeypatch, expect)
    run_as_written(command, argv, expect, capsys)
    assert len(list((folder / "output").glob("*.png"))) == 1, command
    assert expect.seen, f"README command {command!r}: the sampler never ran"


def _run(command, argv, expect, folder, monkeypatch, capsys):
    # the README's --set NODE.seed=N, read from its words
    seed = int(next(v for w, v in zip(argv, argv[1:]) if w == "--set" and ".seed=" in v).split("=")[1])
    stand_in_sampler(monkeypatch, expect, seed)
    models = Path(written(argv, "--models-dir"))
    if not (models / "diffusion_models").is_dir():   # the README's models folder: the stand-ins there
        models.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(folder / "models", models)
    run_as_written(command, argv, expect, capsys)
    (png,) = (folder / written(argv, "--output-dir")).glob("*.png")
    prompt = json.loads(Image.open(png).text["prompt"])
    assert any(node["inputs"].get("seed") == seed for node in prompt.values()), command


def _serve(command, argv, expect, folder, monkeypatch, capsys):
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from nextdit_nodes.commands import serve as command_module
    from nextdit_nodes.nodes import host
    from nextdit_nodes.server import app

    checked = []
    monkeypatch.setattr(command_module, "_check_port", lambda listen, port: checked.append((listen, port)))

    def serve_once(config, port=8188):
        # the README's defaults: this machine only, port 8188, ./output, ./input, ./user
        expect.equal("address and port", (config.listen, port), ("127.0.0.1", 8188))
        expect.equal("folders", (config.output_dir, config.input_dir, config.user_dir),
                     (Path("output"), Path("input"), Path("user")))

        async def fetch_the_editor():
            async with TestClient(TestServer(app.create_app(config))) as client:
                response = await client.get("/")
                return response.status, await response.text()

        status, page = asyncio.run(fetch_the_editor())
        expect.equal("GET / status", status, 200)
        assert "<html" in page.lower(), command
        expect.seen.append("served /")

    monkeypatch.setattr(app, "serve", serve_once)
    try:
        run_as_written(command, argv, expect, capsys)
    finally:
        host.confine_to_model_folders(False)   # the server confines file inputs; the commands after it do not
    assert checked == [("127.0.0.1", 8188)] and expect.seen == ["served /"], command


def _quantize(command, argv, expect, folder, monkeypatch, capsys):
    from nextdit_nodes.dit.checkpoint import load_dit

    run_as_written(command, argv, expect, capsys)   # quantising a tiny model is cheap: all of it runs
    qtype = written(argv, "--type")
    (out,) = (folder / "models" / "diffusion_models").glob(f"*-{qtype}.gguf")
    assert load_dit(out, dtype="fp32").params.n_layers == 2, command


def _distill(command, argv, expect, folder, monkeypatch, capsys):
    from nextdit_nodes.dit.checkpoint import load_dit

    stand_in_distillation(monkeypatch, expect)
    run_as_written(command, argv, expect, capsys)
    made = folder / "models" / "diffusion_models"
    teacher = Path(argv[1]).stem
    if "--layers" in argv:
        out = made / f"{teacher}-{written(argv, '--layers')}layers.safetensors"
        assert load_dit(out, dtype="fp32").params.n_layers == int(written(argv, "--layers")), command
    elif "--steps" in argv:
        out = made / f"{teacher}-distilled-{written(argv, '--steps')}step.safetensors"
        assert load_dit(out, dtype="fp32").params.guidance_embed, command
    else:
        assert load_dit(made / f"{teacher}-distilled.safetensors", dtype="fp32").params.guidance_embed, command
    assert expect.seen, f"README command {command!r}: no distillation loop ran"


def _train(command, argv, expect, folder, monkeypatch, capsys):
    stand_in_training_loop(monkeypatch, expect)
    run_as_written(command, argv, expect, capsys)
    assert expect.seen, f"README command {command!r}: the training loop never ran"
    output = folder / written(argv, "--output")
    from safetensors import safe_open

    with safe_open(str(output), "pt") as f:
        assert len(list(f.keys())) > 0 and f.metadata()["steps_done"] == "1", command


RUNNERS = {"demo": _demo, "run": _run, "serve": _serve, "quantize": _quantize, "distill": _distill,
                  "train-lora": _train, "train-controlnet": _train, "distill-decoder": _train}


# ---- the embedded model's recipes, chained -----------------------------------------------------

def run_embedded(command: str, tmp_path_factory, monkeypatch, capsys) -> None:
    """Run the embedded README commands up to and including ``command``, in README order, in one
    scratch folder: each reads what the ones before it wrote (all ran already in a full run)."""
    scratch = _scratch(tmp_path_factory)
    monkeypatch.chdir(scratch)
    for earlier in COMMANDS[:COMMANDS.index(command) + 1]:
        argv = pack_arguments(earlier)
        if not is_embedded(argv) or EMBEDDED_CHAIN.get(earlier) == 0:
            continue
        if earlier in EMBEDDED_CHAIN:
            pytest.fail(f"README command {command!r} reads what {earlier!r} writes, which failed (see its test)")
        with monkeypatch.context() as patches:
            argv = scratch_rewrite(argv, scratch)
            expect = Expectations(earlier, argv)
            stand_in_demo_data(patches, expect)
            stand_in_training_loop(patches, expect)
            if argv[0] == "check-embedded":
                stand_in_evaluation(patches, expect)
            EMBEDDED_CHAIN[earlier] = -1
            out = run_as_written(earlier, argv, expect, capsys)
            EMBEDDED_CHAIN[earlier] = 0
            check_embedded_output(earlier, argv, expect, out, scratch)


_SCRATCH: list[Path] = []


def _scratch(tmp_path_factory) -> Path:
    if not _SCRATCH:
        _SCRATCH.append(tmp_path_factory.mktemp("embedded"))
    return _SCRATCH[0]


def check_embedded_output(command: str, argv: list[str], expect: Expectations, out: str, scratch: Path) -> None:
    if not expect.seen:
        expect.fail("its expensive loop never ran (the stand-in was not reached)")
    if argv[0].startswith("embedded-"):
        folder = Path(argv[1])
        lines = (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 8 and all((folder / json.loads(line)["image"]).is_file() for line in lines), command
    elif argv[0].startswith("train-"):
        from safetensors import safe_open

        with safe_open(str(scratch / written(argv, "--output")), "pt") as f:
            assert f.metadata()["steps_done"] == "1", command
    else:   # check-embedded prints its table: a row per setting, the figures percentages
        rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
        assert len(rows) >= 4, f"README command {command!r} printed no table:\n{out}"
