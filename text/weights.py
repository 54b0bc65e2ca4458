"""Per-token prompt weights: the weighted character ranges of a prompt (``prompting/weights.py``)
mapped onto the Gemma tokens of the text the encoder reads.

Token boundaries come from the tokenizer itself: the tokens of ``text[:i]`` are counted for each
range's start (trailing spaces left out, since SentencePiece joins a space to the next word) and
end, so a range covers the tokens that the text up to its end adds to the text before it. A token
that straddles a range's edge counts as inside (a word is weighted whole).
"""

from __future__ import annotations

from typing import Callable

# Jina's pooled text leaves out the ranges weighted below this. 0: it keeps every word, since the
# attention bias alone removed a weight-0 object (README, "NAG and prompt weights on the embedded model").
JINA_LEAVE_OUT_BELOW = 0.0


def token_weights(tokenize: Callable[[str], list[int]], text: str, spans, offset: int = 0,
                  max_tokens: int | None = None) -> list[float] | None:
    """One weight per token of ``tokenize(text)`` (first ``max_tokens``), or None when no range
    has a weight other than 1. ``spans``: (start, end, weight) over ``text[offset:]`` (the prompt
    after a system prompt of ``offset`` characters)."""
    spans = [(start + offset, end + offset, weight) for start, end, weight in spans if weight != 1.0]
    if not spans:
        return None
    total = len(tokenize(text))
    weights = [1.0] * total
    for start, end, weight in spans:
        first = len(tokenize(text[:start].rstrip())) if text[:start].strip() else _leading(tokenize)
        last = len(tokenize(text[:end]))
        for index in range(min(first, total), min(last, total)):
            weights[index] = weight
    return weights[:max_tokens] if max_tokens is not None else weights


def _leading(tokenize: Callable[[str], list[int]]) -> int:
    """Tokens an empty text still has (a BOS token)."""
    return len(tokenize(""))


def weighted_encoding(text_encoders, prompt: str, system_prompt: str, leave_out_below: float | None = None):
    """Encode ``prompt`` with its prompt weights: CONDITIONING (``conditioning``) whose Gemma text
    is the system prompt + the prompt without the weight syntax, with ``token_weights`` when a
    range weighs other than 1; Jina reads that text too, less the ranges weighted below
    ``leave_out_below`` (default ``JINA_LEAVE_OUT_BELOW``). A prompt whose brackets do not match
    is encoded as written, with a warning naming the place."""
    from ..prompting import PromptError, encoder_texts, prompt_warnings
    from ..prompting.weights import parse_weights
    from .conditioning import conditioning
    from .towers import GEMMA_MAX_TOKENS

    try:
        weighted = parse_weights(prompt)
    except PromptError as error:
        weighted, notes = None, [f"prompt weights not applied ({error}); the prompt is encoded as written"]
    else:
        notes = []
    text = prompt if weighted is None else weighted.text
    gemma_text, jina_text = encoder_texts(text, system_prompt)
    weights = None
    if weighted is not None and weighted.weighted and text:
        jina_text = weighted.without(JINA_LEAVE_OUT_BELOW if leave_out_below is None else leave_out_below)
        weights = token_weights(text_encoders.gemma.tokenizer, gemma_text, weighted.spans,
                                offset=len(gemma_text) - len(text), max_tokens=GEMMA_MAX_TOKENS)
    warnings = notes + (prompt_warnings(text) if text else [])
    encoding = text_encoders.encode(gemma_text, jina_text)
    return conditioning(encoding, gemma_text, jina_text, warnings, weights), warnings + encoding.warnings
