"""The NewBie prompt parser, builder, system prompts and encoder texts (pure stdlib, no torch)."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextdit_nodes.prompting import (
    CHARACTER_FIELDS,
    GENERAL_FIELDS,
    MAX_PROMPT_CHARS,
    SYSTEM_PROMPTS,
    ParsedPrompt,
    PromptError,
    add_caption,
    add_character,
    add_general_tags,
    encoder_texts,
    parse_prompt,
)
from nextdit_nodes.prompting.count import read_head_count

# The official README example (docs/newbie-image.md §6), verbatim with its indentation.
README_EXAMPLE = """\
  <character_1>
  <n>$character_1$</n>
  <gender>1girl</gender>
  <appearance>chibi, red_eyes, blue_hair, long_hair, hair_between_eyes, head_tilt, tareme, closed_mouth</appearance>
  <clothing>school_uniform, serafuku, white_sailor_collar, white_shirt, short_sleeves, red_neckerchief, bow, blue_skirt, miniskirt, pleated_skirt, blue_hat, mini_hat, thighhighs, grey_thighhighs, black_shoes, mary_janes</clothing>
  <expression>happy, smile</expression>
  <action>standing, holding, holding_briefcase</action>
  <position>center_left</position>
  </character_1>

  <character_2>
  <n>$character_2$</n>
  <gender>1girl</gender>
  <appearance>chibi, red_eyes, pink_hair, long_hair, very_long_hair, multi-tied_hair, open_mouth</appearance>
  <clothing>school_uniform, serafuku, white_sailor_collar, white_shirt, short_sleeves, red_neckerchief, bow, red_skirt, miniskirt, pleated_skirt, hair_bow, multiple_hair_bows, white_bow, ribbon_trim, ribbon-trimmed_bow, white_thighhighs, black_shoes, mary_janes, bow_legwear, bare_arms</clothing>
  <expression>happy, smile</expression>
  <action>standing, holding, holding_briefcase, waving</action>
  <position>center_right</position>
  </character_2>

  <general_tags>
  <count>2girls, multiple_girls</count>
  <style>anime_style, digital_art</style>
  <background>white_background, simple_background</background>
  <atmosphere>cheerful</atmosphere>
  <quality>high_resolution, detailed</quality>
  <objects>briefcase</objects>
  <other>alternate_costume</other>
  </general_tags>
"""

README_CHARACTER_1 = {
    "n": "$character_1$",
    "gender": "1girl",
    "appearance": "chibi, red_eyes, blue_hair, long_hair, hair_between_eyes, head_tilt, tareme, closed_mouth",
    "clothing": "school_uniform, serafuku, white_sailor_collar, white_shirt, short_sleeves, red_neckerchief, bow, blue_skirt, miniskirt, pleated_skirt, blue_hat, mini_hat, thighhighs, grey_thighhighs, black_shoes, mary_janes",
    "expression": "happy, smile",
    "action": "standing, holding, holding_briefcase",
    "position": "center_left",
}
README_CHARACTER_2 = {
    "n": "$character_2$",
    "gender": "1girl",
    "appearance": "chibi, red_eyes, pink_hair, long_hair, very_long_hair, multi-tied_hair, open_mouth",
    "clothing": "school_uniform, serafuku, white_sailor_collar, white_shirt, short_sleeves, red_neckerchief, bow, red_skirt, miniskirt, pleated_skirt, hair_bow, multiple_hair_bows, white_bow, ribbon_trim, ribbon-trimmed_bow, white_thighhighs, black_shoes, mary_janes, bow_legwear, bare_arms",
    "expression": "happy, smile",
    "action": "standing, holding, holding_briefcase, waving",
    "position": "center_right",
}
README_GENERAL = {
    "count": "2girls, multiple_girls",
    "style": "anime_style, digital_art",
    "background": "white_background, simple_background",
    "atmosphere": "cheerful",
    "quality": "high_resolution, detailed",
    "objects": "briefcase",
    "other": "alternate_costume",
}

# Verbatim from the released training script (finetune.py), typed here by hand.
OFFICIAL_XML = "You are an assistant designed to generate high-quality anime images based on xml format prompts. <Prompt Start> "
OFFICIAL_PLAIN = "You are an assistant designed to generate high-quality anime images with the highest degree of image-text alignment based on textual prompts. <Prompt Start> "


def parse_or_error(text):
    """The fuzz contract: a ParsedPrompt or a located PromptError, nothing else."""
    try:
        result = parse_prompt(text)
    except PromptError as error:
        assert error.line >= 1 and error.column >= 1
        assert isinstance(error.snippet, str)
        return error
    assert isinstance(result, ParsedPrompt)
    assert all(isinstance(w, str) for w in result.warnings)
    return result


# --- the official example and dialects -------------------------------------------------------


def test_readme_example_parses_into_two_characters_and_general_tags():
    parsed = parse_prompt(README_EXAMPLE)
    assert parsed.characters == [README_CHARACTER_1, README_CHARACTER_2]
    assert parsed.character_numbers == [1, 2]
    assert parsed.general == README_GENERAL
    assert parsed.caption is None
    assert parsed.warnings == []
    assert parsed.dialect == "xml"


def test_image_root_with_caption():
    text = (
        "<image>\n<caption>Two girls wave in a classroom.</caption>\n"
        + README_EXAMPLE + "</image>\n"
    )
    parsed = parse_prompt(text)
    assert parsed.dialect == "image"
    assert parsed.caption == "Two girls wave in a classroom."
    assert parsed.characters == [README_CHARACTER_1, README_CHARACTER_2]
    assert parsed.general == README_GENERAL
    assert parsed.warnings == []


def _template_prompt(xml: str, caption: str) -> str:
    # The ComfyUI template's positive (docs/newbie-image.md §6), with raw newlines.
    return (
        "You are an assistant designed to generate high-quality anime images with the highest "
        "degree of image-text alignment based on xml format textual prompts. <Prompt Start>\n"
        '{\n"character_1": {\n"bbox": [\n0,\n0,\n1000,\n1000\n],\n"name": "$character_1$"\n},\n'
        f'"image": {{\n"tags": "\n{xml}\n",\n"caption": "{caption}"\n}}\n}}'
    )


def test_json_wrapper_of_the_comfyui_template():
    text = _template_prompt(README_EXAMPLE, "two chibi girls waving")
    parsed = parse_prompt(text)
    assert parsed.dialect == "json"
    assert parsed.characters == [README_CHARACTER_1, README_CHARACTER_2]
    assert parsed.general == README_GENERAL
    assert parsed.caption == "two chibi girls waving"
    assert parsed.system_prompt.endswith("<Prompt Start>")
    assert any("system prompt" in w for w in parsed.warnings)


def test_json_wrapper_with_escaped_newlines():
    wrapper = {"image": {"tags": "\n" + README_EXAMPLE + "\n", "caption": "a caption"}}
    parsed = parse_prompt(json.dumps(wrapper, indent=2))  # every newline written as \n
    assert parsed.dialect == "json"
    assert parsed.characters == [README_CHARACTER_1, README_CHARACTER_2]
    assert parsed.caption == "a caption"
    assert parsed.warnings == []


def test_json_wrapper_errors_point_into_the_prompt_when_written_raw():
    xml = "<character_1>\n<n>a</n>\n<gender>1girl\n</character_1>"
    text = _template_prompt(xml, "c")
    with pytest.raises(PromptError) as caught:
        parse_prompt(text)
    # The </character_1> sits on its own line of the prompt; count it by hand.
    lines = text.split("\n")
    expected_line = lines.index("</character_1>") + 1
    assert (caught.value.line, caught.value.column) == (expected_line, 1)


def test_json_wrapper_errors_inside_escaped_tags_are_reported():
    wrapper = {"image": {"tags": "<character_1>\n<n>a</character_1>"}}
    with pytest.raises(PromptError) as caught:
        parse_prompt(json.dumps(wrapper))
    assert "image.tags" in caught.value.message
    assert (caught.value.line, caught.value.column) == (2, 5)


def test_invalid_json_wrapper_falls_back_to_the_tags_inside():
    text = '{\n"image": {"tags": "<character_1><n>a "quoted"</n></character_1>"}\n}'
    parsed = parse_prompt(text)
    assert parsed.characters == [{"n": 'a "quoted"'}]
    assert any("not valid JSON" in w for w in parsed.warnings)


def test_json_without_tags_is_text_with_a_warning():
    parsed = parse_prompt('{"a": 1}')
    assert parsed.characters == [] and any("image.tags" in w for w in parsed.warnings)


@pytest.mark.parametrize("system", [OFFICIAL_XML, OFFICIAL_PLAIN])
def test_leading_system_prompt_is_recognised_and_reported(system):
    parsed = parse_prompt(system + README_EXAMPLE)
    assert parsed.system_prompt == system.rstrip(" ")
    assert parsed.characters == [README_CHARACTER_1, README_CHARACTER_2]
    assert len(parsed.warnings) == 1 and "system_prompt input" in parsed.warnings[0]


def test_prompt_start_after_tags_is_not_a_system_prompt():
    parsed = parse_prompt("<caption>x</caption> <Prompt Start> y")
    assert parsed.system_prompt is None


@pytest.mark.parametrize("text", [
    "1girl, solo, long_hair, >_<, :<, <3, smile",
    "A girl with long hair stands under cherry blossoms; she is happy (very happy).",
    "masterpiece, best_quality, rem_\\(re:zero\\), <lora:foo:0.8>",
    "",
])
def test_plain_text_and_tag_lists_have_no_characters_and_no_warnings(text):
    parsed = parse_prompt(text)
    assert parsed.characters == [] and parsed.general == {} and parsed.caption is None
    assert parsed.warnings == []
    assert parsed.dialect == "text"
    assert parsed.loose_text == text.strip()


def test_danbooru_faces_and_unknown_tags_inside_a_field_are_text():
    parsed = parse_prompt("<character_1><expression>>_<, :<, <3, <unknown></expression></character_1>")
    assert parsed.characters == [{"expression": ">_<, :<, <3, <unknown>"}]
    assert parsed.warnings == ["unknown tag <unknown> is kept as plain text"]


# --- errors ----------------------------------------------------------------------------------


def test_error_line_and_column_on_a_hand_made_example():
    text = "<character_1>\n  <n>miku</n>\n  <gender>1girl</character_1>\n"
    with pytest.raises(PromptError) as caught:
        parse_prompt(text)
    error = caught.value
    # "</character_1>" starts on line 3 after "  <gender>1girl" (15 characters) -> column 16.
    assert (error.line, error.column) == (3, 16)
    assert "</character_1>" in error.snippet
    assert "<gender>" in error.message and "line 3, column 3" in error.message


@pytest.mark.parametrize("text, line, column, words", [
    ("<character_1>\n<n>a</n>\n", 1, 1, "never closed"),  # unclosed block
    ("<general_tags>\n<count>1girl\n</general_tags>", 3, 1, "still open"),  # unclosed field
    ("<character_1>\n<n>a</n>\n</character_2>", 3, 1, "no matching"),
    ("ab\n cd </gender>", 2, 5, "no matching"),  # closed without being opened
    ("<character_1><n>a</character_1></n>", 1, 18, "still open"),  # misnested
    ("<image><caption>x</image></caption>", 1, 18, "still open"),
])
def test_structure_errors(text, line, column, words):
    with pytest.raises(PromptError) as caught:
        parse_prompt(text)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert words in caught.value.message


def test_prompt_warnings_never_raise_for_bad_xml():
    from nextdit_nodes.prompting import prompt_warnings

    (warning,) = prompt_warnings("<character_1>\n<n>a</n>")
    assert "line 1, column 1" in warning and "never closed" in warning
    assert prompt_warnings("<character_1><n>a</n></character_1>") == []
    assert prompt_warnings("<character_1></character_1>") == ["<character_1> is empty"]


def test_prompt_error_is_picklable_and_a_value_error():
    import pickle

    error = PromptError("m", 2, 3, "snip")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.message, copy.line, copy.column, copy.snippet) == ("m", 2, 3, "snip")
    assert isinstance(error, ValueError)


def test_ten_megabyte_prompt_is_refused_with_a_clear_message():
    text = "<character_1><n>a</n></character_1>\n" * (10_000_000 // 36)
    assert len(text) > 9_000_000
    with pytest.raises(PromptError) as caught:
        parse_prompt(text)
    assert "characters" in caught.value.message and "shorten" in caught.value.message
    # The error points at the first character past the limit: count lines by hand.
    assert caught.value.line == MAX_PROMPT_CHARS // 36 + 1


def test_a_prompt_just_under_the_limit_is_parsed():
    block = "<character_1><n>a</n></character_1>\n"
    parsed = parse_prompt(block * (MAX_PROMPT_CHARS // len(block)))
    assert len(parsed.characters) == MAX_PROMPT_CHARS // len(block)
    assert any("appears" in w for w in parsed.warnings)


def test_known_tags_nested_absurdly_deep_are_refused():
    text = "<character_1>\n" + "<n>" * 100_000 + "x" + "</n>" * 100_000 + "\n</character_1>"
    with pytest.raises(PromptError) as caught:
        parse_prompt(text)
    # The 17th open tag: <character_1> plus 15 <n> come before it on line 2.
    assert (caught.value.line, caught.value.column) == (2, 15 * 3 + 1)
    assert "nested" in caught.value.message
    # Three deep (the official layout) is fine, with a warning for the field inside a field.
    parsed = parse_prompt("<image><character_1><n><gender>1girl</gender></n></character_1></image>")
    assert parsed.characters == [{"gender": "1girl", "n": "<gender>1girl</gender>"}]
    assert any("field tags hold text" in w for w in parsed.warnings)


def test_entity_bomb_is_inert_text():
    bomb = (
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
        + "".join(f' <!ENTITY lol{i} "{("&lol" + str(i - 1 if i > 1 else "") + ";") * 10}">\n' for i in range(1, 10))
        + "]>\n<caption>&lol9;</caption>"
    )
    parsed = parse_prompt(bomb)
    assert parsed.caption == "&lol9;"
    assert any("not processed" in w for w in parsed.warnings)


def test_external_entity_is_inert_text():
    text = '<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n<character_1><n>&xxe;</n></character_1>'
    parsed = parse_prompt(text)
    assert parsed.characters == [{"n": "&xxe;"}]


def test_stray_ampersands_and_entities_are_kept_as_written():
    parsed = parse_prompt("<character_1><n>tom & jerry &amp; &#60;</n></character_1>")
    assert parsed.characters == [{"n": "tom & jerry &amp; &#60;"}]
    assert parsed.warnings == []


def test_binary_junk():
    rng = random.Random(0)
    for _ in range(50):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        parse_or_error(junk.decode("latin-1"))
        parse_or_error(b"<character_1>" + junk + b"</character_1>")  # bytes: UTF-8 or PromptError
    parse_or_error("\x00<n>\x00</n>\ud800")


def test_undecodable_bytes_are_a_prompt_error():
    with pytest.raises(PromptError) as caught:
        parse_prompt(b"ab\ncd\xff")
    assert (caught.value.line, caught.value.column) == (2, 3)
    assert "UTF-8" in caught.value.message


# --- warnings --------------------------------------------------------------------------------


def _characters(*numbers: int, body: str = "<n>x</n>") -> str:
    return "\n".join(f"<character_{n}>{body}</character_{n}>" for n in numbers)


def test_unknown_tags_are_warnings_with_suggestions():
    parsed = parse_prompt("<character_1><name>miku</name><Gender>1girl</Gender><hairstyle>x</hairstyle></character_1>")
    text = " | ".join(parsed.warnings)
    assert "unknown tag <name>" in text and "did you mean <n>?" in text
    assert "unknown tag <Gender>" in text and "did you mean <gender>?" in text
    assert "unknown tag <hairstyle>" in text


def test_empty_character_warns():
    parsed = parse_prompt(_characters(1) + "<character_2>\n<n> </n>\n</character_2>")
    assert parsed.warnings == ["<character_2> is empty"]
    assert parsed.characters[1] == {"n": ""}


def test_duplicated_and_skipped_numbers_warn():
    duplicated = parse_prompt(_characters(1, 2, 2))
    assert any("<character_2> appears 2 times" in w for w in duplicated.warnings)
    skipped = parse_prompt(_characters(1, 3, 6))
    assert any("skip 2, 4-5" in w for w in skipped.warnings)
    assert not any("skip" in w for w in parse_prompt(_characters(1, 2, 3)).warnings)


@pytest.mark.parametrize("count, characters, warns", [
    ("2girls", 3, True),
    ("2girls, multiple_girls", 2, False),
    ("2girls, multiple_girls", 3, True),
    ("1girl, 1boy", 2, False),
    ("1girl, 1boy", 1, True),
    ("3boys", 3, False),
    ("multiple_girls", 1, True),
    ("multiple_girls", 4, False),
    ("1girl, solo", 1, False),
    ("solo", 2, True),
    ("1girl, multiple_girls", 1, True),
    ("scenery, cute", 2, False),  # no head count in it
])
def test_count_against_characters(count, characters, warns):
    text = _characters(*range(1, characters + 1)) + f"\n<general_tags><count>{count}</count></general_tags>"
    warnings = parse_prompt(text).warnings
    assert any("<count>" in w for w in warnings) == warns, warnings


@pytest.mark.parametrize("count, genders, warns", [
    ("2girls", ["1girl", "1boy"], True),
    ("1girl, 1boy", ["1boy", "1girl"], False),
    ("1girl, 1boy", ["1girl", "1girl"], True),
    ("2girls", ["1girl", "tall"], False),  # a gender we cannot read: no comparison
])
def test_count_against_the_characters_genders(count, genders, warns):
    text = "".join(
        f"<character_{i}><gender>{g}</gender></character_{i}>" for i, g in enumerate(genders, 1)
    ) + f"<general_tags><count>{count}</count></general_tags>"
    warnings = parse_prompt(text).warnings
    assert any("genders" in w for w in warnings) == warns, warnings


def test_head_count_reading():
    assert (read_head_count("2girls, multiple_girls").exact, read_head_count("2girls").at_least) == (2, 2)
    assert read_head_count("1girl, 2boys").exact == 3
    assert read_head_count("6+girls").exact is None and read_head_count("6+girls").at_least == 6
    assert read_head_count("no_humans").exact == 0
    assert read_head_count("1 girl").exact == 1
    assert read_head_count("scenery") is None


def test_fields_outside_their_block_warn():
    parsed = parse_prompt("<gender>1girl</gender>\n<character_1><style>oil</style><n>a</n></character_1>")
    assert parsed.stray == {"gender": "1girl"}
    assert parsed.general == {"style": "oil"}
    assert parsed.characters == [{"n": "a"}]
    text = " | ".join(parsed.warnings)
    assert "<gender> is outside any <character_N>" in text
    assert "<style> is inside <character_1>" in text


def test_nested_blocks_and_text_outside_fields_warn():
    parsed = parse_prompt("<character_1>hello<n>a</n><character_2><n>b</n></character_2></character_1>")
    assert parsed.characters == [{"n": "a"}, {"n": "b"}]
    text = " | ".join(parsed.warnings)
    assert "blocks do not nest" in text and "'hello' inside <character_1>" in text


def test_warnings_are_bounded():
    parsed = parse_prompt(" ".join(f"<tag{i}>" for i in range(5000)))
    assert len(parsed.warnings) <= 51


# --- fuzz ------------------------------------------------------------------------------------

_FRAGMENTS = [
    "<character_1>", "</character_1>", "<character_2>", "</character_2>", "<general_tags>",
    "</general_tags>", "<image>", "</image>", "<caption>", "</caption>", "<n>", "</n>",
    "<gender>", "</gender>", "<count>", "</count>", "<n/>", "</n/>", "<unknown>", "</unknown>",
    "<character_0>", "1girl", "2girls", " ", "\n", ">_<", "<3", "&", "&amp;", "<!DOCTYPE x [",
    "<!ENTITY a 'b'>", "]>", "{", "}", '"image": {"tags": "', '"', ":", ",",
    "<Prompt Start>", "You are an assistant. ", "\x00", "\ud800", "é", "<", ">", "/",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_fuzz_random_strings(text):
    parse_or_error(text)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=60))
def test_fuzz_tag_fragments(fragments):
    text = "".join(fragments)
    outcome = parse_or_error(text)
    if isinstance(outcome, PromptError):
        # The position is inside the text (or just past it, for truncation-style errors).
        lines = text.split("\n")
        assert outcome.line <= len(lines)
        assert outcome.column <= len(lines[outcome.line - 1]) + 1


_VALUE = st.text(alphabet="abc _,<>:3()\\!&\"\n", max_size=20)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.dictionaries(st.sampled_from(CHARACTER_FIELDS), _VALUE), min_size=1, max_size=4),
    st.dictionaries(st.sampled_from(GENERAL_FIELDS), _VALUE),
    _VALUE,
)
def test_fuzz_builder_round_trip(characters, general, caption):
    prompt = ""
    for fields in characters:
        prompt = add_character(prompt, fields)
    prompt = add_caption(add_general_tags(prompt, general), caption)
    parsed = parse_prompt(prompt)
    assert parsed.characters == [{k: v.strip() for k, v in f.items() if v.strip()} for f in characters]
    assert parsed.character_numbers == list(range(1, len(characters) + 1))
    assert parsed.general == {k: v.strip() for k, v in general.items() if v.strip()}
    assert parsed.caption == (caption.strip() or None)


# --- builder ---------------------------------------------------------------------------------


def test_builder_reproduces_the_readme_layout():
    prompt = add_character("", README_CHARACTER_1)
    prompt = add_character(prompt, README_CHARACTER_2)
    prompt = add_general_tags(prompt, README_GENERAL)
    # The README example without its two-space indentation, built by hand from the published text.
    expected = "\n".join(line.strip() for line in README_EXAMPLE.strip().split("\n"))
    assert prompt == expected


def test_builder_numbers_after_the_highest_character_and_skips_empty_fields():
    prompt = add_character(_characters(1, 2), {"gender": "1boy", "clothing": "  ", "n": ""})
    assert prompt.endswith("\n\n<character_3>\n<gender>1boy</gender>\n</character_3>")
    assert add_character("1girl, solo", {"n": "a"}) == "1girl, solo\n\n<character_1>\n<n>a</n>\n</character_1>"


def test_builder_rejects_known_tags_in_values_and_unknown_fields():
    with pytest.raises(ValueError, match="contains the tag </n>"):
        add_character("", {"n": "a</n>"})
    with pytest.raises(ValueError, match="no field 'hair'"):
        add_character("", {"hair": "x"})
    with pytest.raises(PromptError):
        add_character("<character_1>", {"n": "a"})
    assert add_caption("x", "   ") == "x"


# --- system prompts and encoder texts --------------------------------------------------------


def test_official_system_prompts_are_verbatim():
    assert SYSTEM_PROMPTS == {"xml (official)": OFFICIAL_XML, "plain (official)": OFFICIAL_PLAIN, "none": ""}


def test_resolve_system_prompt():
    from nextdit_nodes.prompting import SYSTEM_PROMPT_CHOICES, resolve_system_prompt

    assert SYSTEM_PROMPT_CHOICES == ("auto", "xml (official)", "plain (official)", "none", "custom")
    assert resolve_system_prompt("custom", "my own ") == "my own "
    assert resolve_system_prompt("xml (official)", "ignored") == OFFICIAL_XML
    # auto: the encoders' record (a preset name or the text), else the official prompt for the form
    assert resolve_system_prompt("auto", "", "<n>a</n>") == OFFICIAL_XML
    assert resolve_system_prompt("auto", "", "  1girl") == OFFICIAL_PLAIN
    assert resolve_system_prompt("auto", "", "<n>a</n>", recorded="none") == ""
    assert resolve_system_prompt("auto", "", "<n>a</n>", recorded="Draw: ") == "Draw: "
    with pytest.raises(ValueError, match="allowed"):
        resolve_system_prompt("xml")


@pytest.mark.parametrize("prompt, system, expected", [
    ("<n>a</n>", OFFICIAL_XML, (OFFICIAL_XML + "<n>a</n>", "<n>a</n>")),
    ("1girl, solo", OFFICIAL_PLAIN, (OFFICIAL_PLAIN + "1girl, solo", "1girl, solo")),
    ("1girl", "", ("1girl", "1girl")),
    ("x", "no separator", ("no separatorx", "x")),
    ("  spaced\r\n text \t", "S:", ("S:  spaced\r\n text \t", "  spaced\r\n text \t")),
    ("", OFFICIAL_XML, ("", "")),
    ("", "", ("", "")),
])
def test_encoder_texts(prompt, system, expected):
    assert encoder_texts(prompt, system) == expected


def test_encoder_texts_rejects_non_strings():
    with pytest.raises(TypeError):
        encoder_texts(None, "")


def test_prompting_is_pure_stdlib_without_xml_libraries():
    import ast
    import sys
    from pathlib import Path

    import nextdit_nodes.prompting as package

    banned = {"xml", "pyexpat", "lxml", "defusedxml"}
    for path in Path(package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                assert root in sys.stdlib_module_names and root not in banned, (path.name, root)
