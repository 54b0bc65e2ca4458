"""NewBie XML prompts: parsing, validation, building, system prompts, encoder texts.

Pure stdlib: no torch, no ComfyUI.
"""

from .builder import add_caption, add_character, add_general_tags
from .encoder_texts import encoder_texts
from .errors import PromptError
from .parse import MAX_PROMPT_CHARS, parse_prompt, prompt_warnings
from .parsed import ParsedPrompt
from .system_prompts import (
    AUTO,
    CUSTOM,
    PLAIN_OFFICIAL,
    PROMPT_START,
    RECORDED_KEY,
    SYSTEM_PROMPT_CHOICES,
    SYSTEM_PROMPTS,
    XML_OFFICIAL,
    resolve_system_prompt,
)
from .tags import CHARACTER_FIELDS, GENERAL_FIELDS

__all__ = [
    "CHARACTER_FIELDS",
    "GENERAL_FIELDS",
    "add_caption",
    "add_character",
    "add_general_tags",
    "MAX_PROMPT_CHARS",
    "ParsedPrompt",
    "PromptError",
    "parse_prompt",
    "prompt_warnings",
    "AUTO",
    "CUSTOM",
    "PLAIN_OFFICIAL",
    "PROMPT_START",
    "RECORDED_KEY",
    "SYSTEM_PROMPTS",
    "SYSTEM_PROMPT_CHOICES",
    "XML_OFFICIAL",
    "encoder_texts",
    "resolve_system_prompt",
]
