"""The exact strings each text encoder reads, as the official training built them."""

from __future__ import annotations


def encoder_texts(prompt: str, system_prompt: str) -> tuple[str, str]:
    """Return ``(gemma_text, jina_text)`` for one prompt.

    Gemma reads the system prompt and the prompt concatenated with no separator (the official
    presets end in ``"<Prompt Start> "``); Jina reads the prompt alone. An empty prompt gives
    ``("", "")`` whatever the system prompt: the official unconditional branch and caption
    dropout blank the whole Gemma string. Both texts are passed through exactly as written.
    """
    if not isinstance(prompt, str) or not isinstance(system_prompt, str):
        raise TypeError(
            "encoder_texts takes two strings, got "
            f"{type(prompt).__name__} and {type(system_prompt).__name__}"
        )
    if prompt == "":
        return "", ""
    return system_prompt + prompt, prompt
