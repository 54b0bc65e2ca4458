"""Which file a loader input may name: headless any path; on a server (ComfyUI, `serve`) only the
listed entries of the model folders, with messages that show no server path."""

from __future__ import annotations

import sys
import types

import pytest

from nextdit_nodes.nodes.host import files


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A models folder with one DiT file, and a private file next to it (outside the folder)."""
    root = tmp_path / "models"
    (root / "diffusion_models" / "sub").mkdir(parents=True)
    (root / "diffusion_models" / "dit.safetensors").write_bytes(b"x")
    (root / "diffusion_models" / "sub" / "other.safetensors").write_bytes(b"x")
    secret = tmp_path / "private" / "secret.safetensors"
    secret.parent.mkdir()
    secret.write_bytes(b"do not read")
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(root))
    monkeypatch.chdir(root / "diffusion_models")
    return root, secret


@pytest.fixture
def confined():
    files.confine_to_model_folders(True)
    try:
        yield
    finally:
        files.confine_to_model_folders(False)


def test_headless_takes_listed_names_and_paths(models):
    root, secret = models
    assert files.paths_allowed()
    assert files.resolve_model_file("diffusion_models", "dit.safetensors") == root / "diffusion_models" / "dit.safetensors"
    assert files.resolve_model_file("diffusion_models", "sub/other.safetensors").read_bytes() == b"x"
    assert files.resolve_model_file("diffusion_models", str(secret)) == secret
    assert files.resolve_model_file("diffusion_models", "../../private/secret.safetensors").resolve() == secret


def test_server_takes_only_listed_entries_and_says_no_path(models, confined):
    root, secret = models
    assert not files.paths_allowed()
    assert files.resolve_model_file("diffusion_models", "sub/other.safetensors") == \
        root / "diffusion_models" / "sub" / "other.safetensors"
    escapes = [str(secret), "../../private/secret.safetensors", "sub/../../../private/secret.safetensors",
               "/etc/passwd", "~/.ssh/id_rsa", "dit.safetensors/../dit.safetensors"]
    for name in escapes:
        problem = files.model_file_problem("diffusion_models", name)
        assert problem is not None and "not one of the files" in problem, name
        # Beyond the value the client sent, the message names neither the models folder nor the
        # private file's folder.
        said = problem.replace(repr(name), "")
        assert str(root) not in said and str(secret.parent) not in said, problem


@pytest.mark.parametrize("value", [None, 5, 1.5, "", "   ", ["dit.safetensors"]])
def test_values_that_are_not_file_names_get_a_message(models, value):
    problem = files.model_file_problem("diffusion_models", value)
    assert problem.startswith("a file name from the 'diffusion_models' model folders is needed here"), problem


def test_inside_comfyui_the_folders_come_from_folder_paths_and_paths_are_refused(models, monkeypatch):
    root, secret = models
    fake = types.ModuleType("folder_paths")
    fake.get_filename_list = lambda folder: []
    fake.get_folder_paths = lambda folder: [str(root / folder)]
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    assert not files.paths_allowed()
    assert files.resolve_model_file("diffusion_models", "dit.safetensors").read_bytes() == b"x"
    assert "not one of the files" in files.model_file_problem("diffusion_models", str(secret))


def test_a_load_error_on_a_server_names_the_file_by_its_model_folder(models, confined, tmp_path):
    """A damaged file's message names it as "folder/name" (what the user sees in the dropdown),
    a file outside the model folders by its bare name; never the server's path. Headless the
    full path stays (the user's own machine)."""
    from nextdit_nodes.dit.checkpoint import load_dit
    from nextdit_nodes.files.errors import WeightsError

    root, secret = models
    broken = files.resolve_model_file("diffusion_models", "sub/other.safetensors")
    with pytest.raises(WeightsError) as caught:
        load_dit(broken)
    assert str(caught.value).startswith("diffusion_models/sub/other.safetensors: ")
    assert str(tmp_path) not in str(caught.value)
    assert str(WeightsError(secret, "bad")) == "secret.safetensors: bad"
    files.confine_to_model_folders(False)
    assert str(WeightsError(secret, "bad")) == f"{secret}: bad"


def test_user_facing_exceptions_have_a_module_name_that_is_no_path():
    """ComfyUI titles an error "<module>.<name>"; inside ComfyUI the pack's modules are named after
    its folder on the server, so the exceptions a node raises say they come from nextdit_nodes."""
    from nextdit_nodes.files.errors import WeightsError
    from nextdit_nodes.prompting.errors import PromptError
    from nextdit_nodes.sampling.sample import NonFiniteError
    from nextdit_nodes.server.worker import type_name

    for cls in (WeightsError, PromptError, NonFiniteError):
        assert type_name(cls) == f"nextdit_nodes.{cls.__name__}"
    assert type_name(ValueError) == "ValueError"
