"""The XML builder nodes, called as ComfyUI would call them (V1: INPUT_TYPES, then FUNCTION)."""

from __future__ import annotations

import inspect

import pytest

from nextdit_nodes.nodes import NODE_CLASS_MAPPINGS
from nextdit_nodes.nodes.prompt import (
    NODE_CLASSES,
    NextDiTXMLCharacter,
    NextDiTXMLGeneralTags,
    NextDiTXMLPrompt,
)
from nextdit_nodes.prompting import parse_prompt

ALICE = {
    "n": "alice", "gender": "1girl", "appearance": "long_hair, >_<", "clothing": "serafuku",
    "body_type": "petite", "expression": "smile, <3", "action": "waving", "interaction": "hand_holding",
    "position": "center_left",
}
BOB = {
    "n": "bob", "gender": "1boy", "appearance": "short_hair", "clothing": "suit", "body_type": "tall",
    "expression": ":<", "action": "standing", "interaction": "hand_holding", "position": "center_right",
}
GENERAL = {
    "count": "1girl, 1boy", "artists": "artist:someone", "style": "anime_style",
    "background": "white_background", "environment": "park", "perspective": "full_body",
    "atmosphere": "cheerful", "lighting": "sunlight", "quality": "detailed", "objects": "bench",
    "other": "alternate_costume", "resolution": "highres",
}


def call(cls, **inputs):
    """Run a node with ComfyUI's defaults for the inputs not given, as the executor does."""
    spec = cls.INPUT_TYPES()
    values = {name: options[1].get("default") for name, options in spec["required"].items()}
    values.update(inputs)
    return getattr(cls(), cls.FUNCTION)(**values)


def test_two_character_prompt_without_typing_xml():
    (first,) = call(NextDiTXMLCharacter, **ALICE)
    (second,) = call(NextDiTXMLCharacter, prompt=first, **BOB)
    (tagged,) = call(NextDiTXMLGeneralTags, prompt=second, **GENERAL)
    output = call(NextDiTXMLPrompt, prompt=tagged, caption="Alice and Bob hold hands in a park.")
    text = output["result"][0]
    assert output["ui"] == {"text": []}
    parsed = parse_prompt(text)
    assert parsed.characters == [ALICE, BOB]
    assert parsed.character_numbers == [1, 2]
    assert parsed.general == GENERAL
    assert parsed.caption == "Alice and Bob hold hands in a park."
    # README layout: one tag per line, a blank line between blocks.
    assert text.startswith("<character_1>\n<n>alice</n>\n<gender>1girl</gender>\n")
    assert "</character_1>\n\n<character_2>\n" in text
    assert "</character_2>\n\n<general_tags>\n<count>1girl, 1boy</count>\n" in text


def test_character_node_continues_the_numbering_of_a_typed_prompt():
    typed = "<character_1><n>a</n></character_1>\n<character_2><n>b</n></character_2>"
    (text,) = call(NextDiTXMLCharacter, prompt=typed, gender="1girl")
    assert parse_prompt(text).character_numbers == [1, 2, 3]
    assert text.endswith("<character_3>\n<gender>1girl</gender>\n</character_3>")


def test_empty_inputs_are_left_out():
    (text,) = call(NextDiTXMLGeneralTags, count="1girl")
    assert text == "<general_tags>\n<count>1girl</count>\n</general_tags>"


def test_character_node_with_every_tag_empty_is_an_error():
    with pytest.raises(ValueError, match="every tag is empty"):
        call(NextDiTXMLCharacter)


def test_unreadable_incoming_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match=r"NextDiTXMLCharacter: .*line 2, column 1: </n> has no matching"):
        call(NextDiTXMLCharacter, prompt="<character_1>\n</n>", n="x")


def test_known_tag_inside_a_value_is_rejected():
    with pytest.raises(ValueError, match="contains the tag <character_2>"):
        call(NextDiTXMLCharacter, appearance="red_eyes <character_2>")


def test_prompt_node_shows_warnings_and_passes_the_text_through_unchanged():
    typed = "  <character_1><n>a</n></character_1>\n<general_tags><count>2girls</count></general_tags>  "
    output = call(NextDiTXMLPrompt, prompt=typed)
    assert output["result"] == (typed,)
    assert len(output["ui"]["text"]) == 1 and "<count>2girls</count>" in output["ui"]["text"][0]


def test_prompt_node_error_and_validation():
    bad = "<character_1>\n<n>a\n</character_1>"
    with pytest.raises(ValueError, match="line 3, column 1"):
        call(NextDiTXMLPrompt, prompt=bad)
    message = NextDiTXMLPrompt.VALIDATE_INPUTS(prompt=bad)
    assert isinstance(message, str) and "still open" in message
    assert NextDiTXMLPrompt.VALIDATE_INPUTS(prompt="1girl, solo") is True
    assert NextDiTXMLPrompt.VALIDATE_INPUTS(prompt=None) is True  # connected input
    # Only the prompt is checked before the run (ComfyUI pins a message on every input the check
    # names); a caption carrying a tag is refused when the node runs, naming the field.
    assert "caption" not in inspect.signature(NextDiTXMLPrompt.VALIDATE_INPUTS).parameters
    with pytest.raises(ValueError, match="<caption> contains the tag <character_1>"):
        call(NextDiTXMLPrompt, prompt="1girl, solo", caption="a girl <character_1>")


def test_node_declarations():
    assert [cls.__name__ for cls in NODE_CLASSES] == ["NextDiTXMLCharacter", "NextDiTXMLGeneralTags", "NextDiTXMLPrompt"]
    for cls in NODE_CLASSES:
        assert NODE_CLASS_MAPPINGS[cls.__name__] is cls
        assert cls.CATEGORY.startswith("NextDiT/") and cls.DESCRIPTION and cls.DISPLAY_NAME
        assert cls.RETURN_TYPES == ("STRING",) and hasattr(cls, cls.FUNCTION)
        spec = cls.INPUT_TYPES()
        assert spec.get("hidden", {"unique_id": "UNIQUE_ID"}) == {"unique_id": "UNIQUE_ID"}   # to show warnings
        for section in (spec["required"], spec.get("optional", {})):
            for name, (kind, options) in section.items():
                assert kind == "STRING" and options.get("tooltip"), (cls.__name__, name)
    character = NextDiTXMLCharacter.INPUT_TYPES()
    assert list(character["required"]) == [
        "n", "gender", "appearance", "clothing", "body_type", "expression", "action", "interaction", "position",
    ]
    assert character["optional"]["prompt"][1]["forceInput"] is True
    assert list(NextDiTXMLGeneralTags.INPUT_TYPES()["required"]) == [
        "count", "artists", "style", "background", "environment", "perspective", "atmosphere", "lighting",
        "quality", "objects", "other", "resolution",
    ]
    assert set(NextDiTXMLPrompt.INPUT_TYPES()["optional"]) == {"caption"}
