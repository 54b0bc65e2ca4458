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
# Follow what the loaded encoders record (``RECORDED_KEY`` in the Gemma file's metadata); files that
# record nothing (the official ones) get what the official training gave each caption form.
AUTO = "auto"
# Choices for a node's system_prompt COMBO, default first.
SYSTEM_PROMPT_CHOICES: tuple[str, ...] = (AUTO, *SYSTEM_PROMPTS, CUSTOM)
# Metadata key of a Gemma file naming the system prompt it was trained with: a preset name of
# SYSTEM_PROMPTS ("none" for the embedded encoders) or the literal text.
RECORDED_KEY = "nextdit_system_prompt"

# Every system prompt of the official material ends with this marker (docs/newbie-image.md §5).
PROMPT_START = "<Prompt Start>"


def official_for(prompt: str) -> str:
    """The official training's choice per caption: the XML prompt for XML captions, else the plain one."""
    return XML_OFFICIAL if prompt.lstrip().startswith("<") else PLAIN_OFFICIAL


def recorded_system_prompt(recorded: str) -> str:
    """The literal text of what an encoder file records (a preset name or the text itself)."""
    return SYSTEM_PROMPTS.get(recorded, recorded)


def resolve_system_prompt(choice: str, custom_text: str = "", prompt: str = "",
                          recorded: str | None = None) -> str:
    """The literal system prompt for a preset name, ``custom_text`` for ``"custom"``; for ``"auto"``
    what the encoders record (``recorded``), or with no record the official one for ``prompt``'s form."""
    if choice == CUSTOM:
        return custom_text
    if choice == AUTO:
        return official_for(prompt) if recorded is None else recorded_system_prompt(recorded)
    try:
        return SYSTEM_PROMPTS[choice]
    except KeyError:
        allowed = ", ".join(repr(name) for name in SYSTEM_PROMPT_CHOICES)
        raise ValueError(f"unknown system prompt preset {choice!r}; allowed: {allowed}") from None
