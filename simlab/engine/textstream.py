"""Incremental detokenization with stop strings.

Text is released as tokens arrive, except (a) an unfinished multi-byte character, shown by the
tokenizer as U+FFFD until its last byte arrives, and (b) a tail that could be the start of a
stop string, which is held until it either completes the stop string or cannot.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import regex

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
            text = full[len(self._prefix_text) :]
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
        """Release whatever is held back (at eos or max length), but a last line that is only the
        start of a stop string: the speaker's label the reply was cut in ("\nInterviewer")."""
        if self.stop_string is not None:
            return ""
        return self._release(len(self.text) - dangling_label(self.text, self._stops))

    def _release(self, upto: int) -> str:
        if upto <= self._released:
            return ""
        piece = self.text[self._released : upto]
        self._released = upto
        return piece

    def _find_stop(self, text: str) -> tuple[int, str] | None:
        return find_stop(text, self._stops, self._released)

    def _pending_stop_prefix(self, text: str) -> int:
        return pending_stop_prefix(text, self._stops)


class TextStops:
    """Stop strings on text that arrives in pieces (a server's stream): release what cannot be the
    start of a stop string, and cut at the first one. A server may not honour `stop` itself."""

    def __init__(self, stops: Sequence[str]):
        self._stops = tuple(s for s in stops if s)
        self.text = ""
        self._released = 0
        self.stop_string: str | None = None

    def add(self, piece: str) -> str:
        if self.stop_string is not None:
            return ""
        self.text += piece
        if not self._stops:
            return self._release(len(self.text))
        hit = find_stop(self.text, self._stops, self._released)
        if hit is not None:
            at, self.stop_string = hit
            self.text = self.text[:at]
            return self._release(at)
        return self._release(len(self.text) - pending_stop_prefix(self.text, self._stops))

    def finish(self) -> str:
        """What is held back, as `TextTracker.finish` releases it (after a stop: nothing more)."""
        if self.stop_string is None:
            self.text = self.text[: len(self.text) - dangling_label(self.text, self._stops)]
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        piece = self.text[self._released : upto] if upto > self._released else ""
        self._released = max(self._released, upto)
        return piece


def find_stop(text: str, stops: Sequence[str], released: int) -> tuple[int, str] | None:
    """(index, the text that stopped it) of the first stop string, or speaker-label variant, in text;
    only text not yet released can hold a new match (released text held no stop prefix)."""
    start = max(0, released - max(len(s) for s in stops))
    hits = [(text.find(s, start), s) for s in stops]
    hits = [(at, s) for at, s in hits if at >= 0]
    for pattern in label_variants(tuple(stops)):
        found = pattern.search(text, max(0, released - _LINE))
        if found:
            hits.append((found.start(), found.group()))
    return min(hits) if hits else None


def dangling_label(text: str, stops: Sequence[str]) -> int:
    """Length of a last line that is only the start of a stop string or speaker-label variant (a
    reply cut off in the next speaker's label, "\nInterviewer"): left in, the next turn's prompt
    would hold a label line with nothing after it. 0 when the tail is not such a line."""
    held = pending_stop_prefix(text, stops) if stops else 0
    return held if held and text[len(text) - held] == "\n" else 0


def pending_stop_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of text that is a proper prefix of some stop string (or could
    still become a speaker-label variant)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    variants = label_variants(tuple(stops))
    if variants:
        at = text.find("\n", max(0, len(text) - _LINE))
        while 0 <= at and len(text) - at > longest:
            if any(p.match(text, at, partial=True) for p in variants):
                return len(text) - at
            at = text.find("\n", at + 1)
    return longest


_LINE = 64  # the longest line start a speaker-label variant spans
_STOP_LABEL = re.compile(r"\n([^\W\d_][^\n]{0,39}?)([:.]?)")


@functools.lru_cache(maxsize=64)
def label_variants(stops: tuple[str, ...]) -> tuple[regex.Pattern, ...]:
    """What else ends a reply besides a stop string that is a speaker's label on a new line
    ("\nDr. Okafor:", "\nKEEPER."): the name alone on its line ("\nKEEPER\n"); any case of an
    all-caps name ("\nKeeper."); and for a name of several words, one or two other words before its
    last word ("\nMaya Okafor:", "\nOkafor:" for "\nDr. Okafor:"). The reply ends where that line
    starts."""
    patterns = []
    for stop in stops:
        label = _STOP_LABEL.fullmatch(stop)
        if not label:
            continue
        name, mark = label.groups()
        alternatives = [regex.escape(name) + r"[ \t]*\n"]
        caps = name.isupper()
        if caps:
            alternatives.append(regex.escape(name + mark))
        last = name.split()[-1]
        if mark and len(name.split()) > 1 and last.isalpha() and len(last) >= 3:
            alternatives.append(r"(?:[^\W\d_][\w.'-]* ){0,2}" + regex.escape(last + mark))
        flags = regex.IGNORECASE if caps else 0
        patterns.append(regex.compile(r"\n(?:" + "|".join(alternatives) + ")", flags))
    return tuple(patterns)
