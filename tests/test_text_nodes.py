"""Nodes NextDiTTextEncoderLoader and NextDiTTextEncode, called as ComfyUI calls them."""

from __future__ import annotations

import pytest
import torch

import text_fixtures as tf
from nextdit_nodes.nodes import NODE_CLASS_MAPPINGS
from nextdit_nodes.nodes.text import SYSTEM_PROMPT_CHOICES, NextDiTTextEncode, NextDiTTextEncoderLoader
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nextdit_nodes.prompting import PLAIN_OFFICIAL, RECORDED_KEY, XML_OFFICIAL
from nextdit_nodes.prompting import SYSTEM_PROMPT_CHOICES as PROMPTING_CHOICES

XML = "<character_1>\n<n>hatsune miku</n>\n<gender>1girl</gender>\n</character_1>"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    (root / "text_encoders").mkdir()
    tf.write_gemma(root / "text_encoders" / "gemma_tiny.safetensors", tf.gemma_reference(0)[1], "comfy")
    tf.write_jina(root / "text_encoders" / "jina_tiny", tf.jina_reference(1)[1], "original_lora")
    return root


@pytest.fixture
def encoders(models_dir, monkeypatch):
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(models_dir))
    (loaded,) = NextDiTTextEncoderLoader().load("gemma_tiny.safetensors", "jina_tiny", "cpu", "fp32")
    return loaded


def test_nodes_are_registered_with_tooltips(models_dir, monkeypatch):
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(models_dir))
    assert NODE_CLASS_MAPPINGS["NextDiTTextEncoderLoader"] is NextDiTTextEncoderLoader
    assert NODE_CLASS_MAPPINGS["NextDiTTextEncode"] is NextDiTTextEncode
    loader_inputs = NextDiTTextEncoderLoader.INPUT_TYPES()["required"]
    assert list(loader_inputs) == ["gemma_name", "jina_name", "device", "dtype"]
    assert {"gemma_tiny.safetensors", "jina_tiny"} <= set(loader_inputs["gemma_name"][0])
    assert loader_inputs["device"][0] == ["auto", "cpu"]
    assert loader_inputs["dtype"][0] == ["auto", "bf16", "fp16", "fp32"]
    encode_inputs = NextDiTTextEncode.INPUT_TYPES()["required"]
    assert list(encode_inputs) == ["text_encoders", "prompt", "system_prompt", "custom_system_prompt"]
    assert tuple(encode_inputs["system_prompt"][0]) == PROMPTING_CHOICES == SYSTEM_PROMPT_CHOICES
    for node in (NextDiTTextEncoderLoader, NextDiTTextEncode):
        assert node.CATEGORY.startswith("NextDiT/") and node.DESCRIPTION
        for name, (_, options) in node.INPUT_TYPES()["required"].items():
            assert options.get("tooltip"), f"{node.__name__}.{name} has no tooltip"
    assert NextDiTTextEncoderLoader.VALIDATE_INPUTS("gemma_tiny.safetensors", "jina_tiny") is True
    assert "not found" in NextDiTTextEncoderLoader.VALIDATE_INPUTS("nope.safetensors", "jina_tiny")


def test_encode_returns_conditioning_with_both_texts(encoders):
    (cond,) = NextDiTTextEncode().encode(encoders, XML, "xml (official)", "")
    assert len(cond) == 1
    cap_feats, extra = cond[0]
    gemma_len = 1 + len(tf.spm_ids(tf.gemma_spm(), XML_OFFICIAL + XML))
    assert cap_feats.shape == (1, gemma_len, 64) and cap_feats.dtype == torch.float32
    assert extra["pooled_output"].shape == (1, 64) and extra["pooled_output"].dtype == torch.float32
    assert extra["attention_mask"].tolist() == [[1] * gemma_len]
    assert extra["gemma_text"] == XML_OFFICIAL + XML and extra["jina_text"] == XML
    assert extra["prompt_warnings"] == []
    # The same numbers as the encoders called directly on those texts.
    direct = encoders.encode(XML_OFFICIAL + XML, XML)
    assert torch.equal(cap_feats, direct.cap_feats) and torch.equal(extra["pooled_output"], direct.pooled)


def test_system_prompt_choices(encoders):
    node = NextDiTTextEncode()
    texts = {choice: node.encode(encoders, "1girl, solo", choice, "Be brief. ")[0][0][1]["gemma_text"]
             for choice in SYSTEM_PROMPT_CHOICES}
    assert texts == {"xml (official)": XML_OFFICIAL + "1girl, solo", "plain (official)": PLAIN_OFFICIAL + "1girl, solo",
                     "none": "1girl, solo", "custom": "Be brief. 1girl, solo",
                     # this Gemma file records no system prompt: the official one for a plain prompt
                     "auto": PLAIN_OFFICIAL + "1girl, solo"}
    with pytest.raises(ValueError, match="allowed"):
        node.encode(encoders, "1girl", "fancy", "")


def test_auto_system_prompt_follows_the_gemma_files_record(models_dir, encoders, tmp_path, monkeypatch):
    node = NextDiTTextEncode()
    # No record (the official files): what the official training gave each caption form.
    assert node.encode(encoders, XML, "auto", "")[0][0][1]["gemma_text"] == XML_OFFICIAL + XML
    assert node.encode(encoders, "", "auto", "")[0][0][1]["gemma_text"] == ""     # the unconditional stays blank
    # A file that records "none" (as the embedded encoders do) or a literal text gets exactly that.
    for recorded, expected in (("none", XML), ("Draw: ", "Draw: " + XML)):
        header = dict(safe_open(models_dir / "text_encoders" / "gemma_tiny.safetensors", "pt").metadata())
        tensors = load_file(models_dir / "text_encoders" / "gemma_tiny.safetensors")
        save_file(tensors, str(tmp_path / "gemma_rec.safetensors"), metadata={**header, RECORDED_KEY: recorded})
        (loaded,) = NextDiTTextEncoderLoader().load(str(tmp_path / "gemma_rec.safetensors"), "jina_tiny", "cpu", "fp32")
        assert node.encode(loaded, XML, "auto", "")[0][0][1]["gemma_text"] == expected
        assert node.encode(loaded, XML, "xml (official)", "")[0][0][1]["gemma_text"] == XML_OFFICIAL + XML


def test_the_embedded_gemma_file_records_no_system_prompt():
    from nextdit_nodes.nodes.host import EMBEDDED_DIR
    from nextdit_nodes.text.loading import recorded_system_prompt

    assert recorded_system_prompt(EMBEDDED_DIR / "text_encoders" / "embedded-shapes-gemma3.safetensors") == "none"


def test_empty_prompt_is_the_unconditional_encoding(encoders):
    cap_feats, extra = NextDiTTextEncode().encode(encoders, "", "xml (official)", "")[0][0]
    assert (extra["gemma_text"], extra["jina_text"]) == ("", "")
    assert cap_feats.shape == (1, 1, 64)                      # Gemma sees BOS only
    assert torch.equal(cap_feats, encoders.encode("", "").cap_feats)


def test_warnings_are_carried_not_raised(encoders):
    broken = "<character_1><n>miku</n>"                       # known tag never closed
    extra = NextDiTTextEncode().encode(encoders, broken, "none", "")[0][0][1]
    assert any("character_1" in w for w in extra["prompt_warnings"])
    long_prompt = " ".join(["masterpiece, best quality, 1girl"] * 120)
    extra = NextDiTTextEncode().encode(encoders, long_prompt, "none", "")[0][0][1]
    cut = 1 + len(tf.spm_ids(tf.gemma_spm(), long_prompt)) - 512
    assert [w for w in extra["prompt_warnings"] if f"{cut} tokens were cut" in w]


def test_second_encode_of_a_prompt_runs_no_encoder(encoders):
    calls = []
    encoders.gemma.model.register_forward_pre_hook(lambda *_: calls.append("gemma"))
    encoders.jina.model.register_forward_pre_hook(lambda *_: calls.append("jina"))
    node = NextDiTTextEncode()
    first = node.encode(encoders, "a cat wearing a hat", "plain (official)", "")[0]
    second = node.encode(encoders, "a cat wearing a hat", "plain (official)", "")[0]
    assert calls == ["gemma", "jina"]
    assert torch.equal(first[0][0], second[0][0])


def test_loader_refuses_a_non_text_file(models_dir, monkeypatch, tmp_path):
    from factories import tiny_params, write_dit_checkpoint

    from nextdit_nodes.loaders import WeightsError

    dit = tmp_path / "dit.safetensors"
    write_dit_checkpoint(dit, tiny_params(), prefix="")
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(models_dir))
    with pytest.raises(WeightsError, match="Next-DiT"):
        NextDiTTextEncoderLoader().load(str(dit), "jina_tiny", "cpu", "auto")


def test_warnings_go_to_the_node_through_the_hosts_text_channel(encoders):
    # Inside ComfyUI this is PromptServer.send_progress_text (drawn on the node without any
    # extension); headless the text hook, which `serve` turns into the same TEXT frame.
    from nextdit_nodes.nodes import host
    from nextdit_nodes.nodes.prompt import NextDiTXMLPrompt

    shown = []
    previous = host.set_text_hook(shown.append)
    try:
        NextDiTTextEncode().encode(encoders, "<character_1><n>miku</n>", "none", "", unique_id="4")
        NextDiTXMLPrompt().assemble("<character_1><n>miku</n><hair>teal</hair></character_1>", unique_id="5")
        NextDiTTextEncode().encode(encoders, "1girl, solo", "none", "", unique_id="6")      # nothing to say
    finally:
        host.set_text_hook(previous)
    assert len(shown) == 2
    assert "cannot be read" in shown[0] and "encoded as written" in shown[0]
    assert "hair" in shown[1]
