"""System prompts for the Gemma encoder (Gemma only; Jina never sees them).

The two official presets are verbatim from the released training script (``finetune.py`` of
NewBieAI-Lab/NewBie-image-Exp0.1):
XML-caption items and plain-text items used different prompts, each ending in
``"<Prompt Start> "`` with its trailing space, concatenated to the caption with no separator.
"""

from __future__ import annotations

XML_OFFICIAL = (
    "You are an assistant designed to generate high-quality anime images based on xml format"
    " prompts. <Prompt Start> "
)
PLAIN_OFFICIAL = (
    "You are an assistant designed to generate high-quality anime images with the highest degree"
    " of image-text alignment based on textual prompts. <Prompt Start> "
)

# Preset name -> literal text. "custom" is not here: the encode node takes its text from an input.
SYSTEM_PROMPTS: dict[str, str] = {
    "xml (official)": XML_OFFICIAL,
    "plain (official)": PLAIN_OFFICIAL,
    "none": "",
}
CUSTOM = "custom"
# Choices for a node's system_prompt COMBO, default first.
SYSTEM_PROMPT_CHOICES: tuple[str, ...] = (*SYSTEM_PROMPTS, CUSTOM)

# Every system prompt of the official material ends with this marker (docs/newbie-image.md §5).
PROMPT_START = "<Prompt Start>"


def resolve_system_prompt(choice: str, custom_text: str = "") -> str:
    """The literal system prompt for a preset name, or ``custom_text`` for ``"custom"``."""
    if choice == CUSTOM:
        return custom_text
    try:
        return SYSTEM_PROMPTS[choice]
    except KeyError:
        allowed = ", ".join(repr(name) for name in SYSTEM_PROMPT_CHOICES)
        raise ValueError(f"unknown system prompt preset {choice!r}; allowed: {allowed}") from None
