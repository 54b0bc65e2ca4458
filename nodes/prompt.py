"""XML prompt builder nodes: characters and general tags without typing XML, then assembly.

Chain ``NextDiT XML Character`` nodes (each appends ``<character_{N+1}>``), then
``NextDiT XML General Tags``, then ``NextDiT XML Prompt`` (adds an optional caption, validates,
shows warnings). The work is in ``prompting.builder`` and ``prompting.parse``.
"""

from __future__ import annotations

import logging

from ..prompting import PromptError, parse_prompt
from ..prompting.builder import add_caption, add_character, add_general_tags
from ..prompting.tags import CHARACTER_FIELDS, GENERAL_FIELDS
from . import host

log = logging.getLogger(__name__)

CATEGORY = "NextDiT/prompt"

# What each tag holds (danbooru tags, comma separated, unless said otherwise).
_TAG_TOOLTIPS = {
    "n": "Character name: a danbooru character tag (e.g. hatsune_miku) or a placeholder such as "
         "$character_1$. Empty = left out.",
    "gender": "Gender/count tag of this character, e.g. 1girl, 1boy, 1other. Empty = left out.",
    "appearance": "Body and hair tags, e.g. long_hair, blue_eyes, ahoge. Empty = left out.",
    "clothing": "Clothing tags, e.g. school_uniform, serafuku, thighhighs. Empty = left out.",
    "body_type": "Body type tags, e.g. petite, chibi. Empty = left out.",
    "expression": "Facial expression tags, e.g. smile, >_<, open_mouth. Empty = left out.",
    "action": "Action and pose tags, e.g. standing, waving, holding_umbrella. Empty = left out.",
    "interaction": "What this character does with others, e.g. hand_holding, hug. "
                   "Empty = left out.",
    "position": "Where the character stands in the image, e.g. center_left, right_side. "
                "Empty = left out.",
    "count": "Head count of the whole image, e.g. 2girls, multiple_girls or 1girl, 1boy; it should "
             "agree with the number of characters. Empty = left out.",
    "artists": "Artist tags, e.g. artist:name. Empty = left out.",
    "style": "Style tags, e.g. anime_style, digital_art, watercolor. Empty = left out.",
    "background": "Background tags, e.g. white_background, simple_background. Empty = left out.",
    "environment": "Setting tags, e.g. classroom, forest, night_sky. Empty = left out.",
    "perspective": "Camera tags, e.g. from_above, close-up, full_body. Empty = left out.",
    "atmosphere": "Mood tags, e.g. cheerful, melancholic. Empty = left out.",
    "lighting": "Lighting tags, e.g. backlighting, sunlight, rim_light. Empty = left out.",
    "quality": "Quality tags, e.g. high_resolution, detailed, masterpiece. Empty = left out.",
    "objects": "Object tags, e.g. briefcase, umbrella. Empty = left out.",
    "other": "Any other tags, e.g. alternate_costume. Empty = left out.",
    "resolution": "Resolution tags, e.g. highres, absurdres. Empty = left out.",
}
_CHAIN_TOOLTIP = (
    "Optional prompt to extend (connect the STRING output of another NextDiT XML node); the new "
    "block is appended after it with a blank line."
)


def _field_inputs(names: tuple[str, ...]) -> dict:
    return {name: ("STRING", {"default": "", "multiline": name not in ("n", "gender", "count"),
                              "tooltip": _TAG_TOOLTIPS[name]}) for name in names}


def _chain_input() -> dict:
    return {"prompt": ("STRING", {"forceInput": True, "tooltip": _CHAIN_TOOLTIP})}


def _readable(node: str, call, *args):
    """Run a builder call, turning an unreadable incoming prompt into a message for the user."""
    try:
        return call(*args)
    except PromptError as error:
        raise ValueError(
            f"{node}: the incoming prompt's XML cannot be read: {error}. Fix the tag named there "
            "(every known tag needs its closing tag, in order)"
        ) from error
    except ValueError as error:
        raise ValueError(f"{node}: {error}") from error


class NextDiTXMLCharacter:
    DISPLAY_NAME = "NextDiT XML Character"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Adds one <character_N> block to a NewBie XML prompt: one input per tag, empty inputs "
        "left out. Chain several to describe several characters; N counts up by itself."
    )
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("prompt",)
    OUTPUT_TOOLTIPS = ("The incoming prompt followed by the new <character_N> block.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _field_inputs(CHARACTER_FIELDS), "optional": _chain_input()}

    def build(self, prompt: str | None = None, **fields: str):
        if not any(value.strip() for value in fields.values()):
            raise ValueError(
                "NextDiTXMLCharacter: every tag is empty; fill in at least one (e.g. gender) or "
                "bypass the node"
            )
        return (_readable("NextDiTXMLCharacter", add_character, prompt or "", fields),)


class NextDiTXMLGeneralTags:
    DISPLAY_NAME = "NextDiT XML General Tags"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Adds the <general_tags> block (count, style, background, quality, ...) to a NewBie XML "
        "prompt; empty inputs are left out. Put it after the characters."
    )
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("prompt",)
    OUTPUT_TOOLTIPS = ("The incoming prompt followed by the <general_tags> block.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _field_inputs(GENERAL_FIELDS), "optional": _chain_input()}

    def build(self, prompt: str | None = None, **fields: str):
        return (_readable("NextDiTXMLGeneralTags", add_general_tags, prompt or "", fields),)


class NextDiTXMLPrompt:
    DISPLAY_NAME = "NextDiT XML Prompt"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Finishes a NewBie XML prompt: appends the optional <caption>, checks the XML and shows "
        "its warnings (unknown tags, empty or misnumbered characters, a <count> that disagrees). "
        "An unreadable prompt (a tag never closed, or closed out of order) is an error with its "
        "line and column."
    )
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("prompt",)
    OUTPUT_TOOLTIPS = ("The checked prompt, for NextDiT Text Encode's prompt input.",)
    FUNCTION = "assemble"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "prompt": ("STRING", {
                    "default": "", "multiline": True,
                    "tooltip": "The XML prompt: connect the XML Character / General Tags chain, "
                               "or type or paste XML (plain tags and text are fine too).",
                }),
            },
            "optional": {
                "caption": ("STRING", {
                    "default": "", "multiline": True,
                    "tooltip": "Optional natural-language description of the image, appended as "
                               "<caption>...</caption>. Empty = no caption.",
                }),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, prompt=None):
        # A typed-in prompt is checked before the queue runs (a connected one arrives as None). Only
        # the prompt is named, so that ComfyUI pins the message on it alone; a caption that clashes
        # with it is refused when the node runs.
        if not isinstance(prompt, str):
            return True
        try:
            _assemble(prompt, "")
        except ValueError as error:
            return str(error)
        return True

    def assemble(self, prompt: str, caption: str = "", unique_id=None):
        text, warnings = _assemble(prompt, caption or "")
        for warning in warnings:
            log.warning("NextDiTXMLPrompt: %s", warning)
        host.show_text("\n".join(warnings), unique_id)     # on the node, in ComfyUI and in serve
        return {"ui": {"text": warnings}, "result": (text,)}


def _assemble(prompt: str, caption: str) -> tuple[str, list[str]]:
    text = _readable("NextDiTXMLPrompt", add_caption, prompt, caption)
    return text, _readable("NextDiTXMLPrompt", parse_prompt, text).warnings


NODE_CLASSES = [NextDiTXMLCharacter, NextDiTXMLGeneralTags, NextDiTXMLPrompt]
