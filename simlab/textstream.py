"""Incremental detokenization with stop strings.

Text is released as tokens arrive, except (a) an unfinished multi-byte character, shown by the
tokenizer as U+FFFD until its last byte arrives, and (b) a tail that could be the start of a
stop string, which is held until it either completes the stop string or cannot.
"""

from __future__ import annotations

from typing import Sequence

# Decoding a few prompt tokens before the new ones keeps tokenizers that treat the first token
# specially (SentencePiece's leading space) from changing the text of the continuation.
_CONTEXT_TOKENS = 4


class TextTracker:
    """Turns one branch's token ids into released text deltas, stopping at stop strings."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int], stops: Sequence[str]):
        self._tokenizer = tokenizer
        self._prefix_ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix_text = self._decode(self._prefix_ids)
        self._stops = tuple(stops)
        self._ids: list[int] = []
        self._released = 0  # characters of text already given out
        self.text = ""  # decoded text of all tokens so far (complete characters only)
        self.stop_string: str | None = None

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        """Take one token; return the text that is now safe to show."""
        self._ids.append(token_id)
        full = self._decode(self._prefix_ids + self._ids)
        if full.startswith(self._prefix_text):
            text = full[len(self._prefix_text):]
        else:
            text = self._decode(self._ids)
        complete = text.rstrip("\ufffd") if text.endswith("\ufffd") else text
        self.text = complete
        if self._stops:
            hit = self._find_stop(complete)
            if hit is not None:
                at, self.stop_string = hit
                return self._release(at)
            return self._release(len(complete) - self._pending_stop_prefix(complete))
        return self._release(len(complete))

    def finish(self) -> str:
        """Release whatever is held back (at eos or max length)."""
        if self.stop_string is not None:
            return ""
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        if upto <= self._released:
            return ""
        piece = self.text[self._released:upto]
        self._released = upto
        return piece

    def _find_stop(self, text: str) -> tuple[int, str] | None:
        # Only text not yet released can hold a new match (released text held no stop prefix).
        start = max(0, self._released - max(len(s) for s in self._stops))
        hits = [(text.find(s, start), s) for s in self._stops]
        hits = [(at, s) for at, s in hits if at >= 0]
        return min(hits) if hits else None

    def _pending_stop_prefix(self, text: str) -> int:
        """Length of the longest tail of text that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
