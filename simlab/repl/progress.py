"""One progress line for every wait that has no streamed text: K siblings, a persona's replay, a
session's replay, `generate -n`, a compare sweep. On a terminal it is rich's live progress line
(what, k/n, a bar, tokens/s, time left), gone when the wait ends; elsewhere (a pipe, a log) a plain
line each time a step completes, at most one per tenth of the total."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

from simlab.engine.results import RunStats
from simlab.turns import Replies


class Waiting:
    """`with Waiting("/n 4", total=4, unit="replies") as wait: ... wait.token() ... wait.advance()`"""

    def __init__(self, what: str, total: int, unit: str = "replies", stream: TextIO | None = None):
        self.what = what
        self.total = max(total, 1)
        self.unit = unit
        self.stream = stream or sys.stderr
        self.done = 0
        self.tokens = 0
        self.started = time.monotonic()
        self._shown_tenth = -1
        self._live = None
        self._task = None

    @property
    def rate(self) -> float:
        """Steps per second so far."""
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.tokens / elapsed if elapsed > 0 else 0.0

    def __enter__(self) -> Waiting:
        if is_terminal(self.stream):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._live = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TextColumn("{task.fields[speed]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
            self._task = self._live.add_task(self.what, total=self.total, speed="")
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()

    def token(self, count: int = 1) -> None:
        """Tokens arrived (shown as tokens/s)."""
        self.tokens += count
        if self._live is not None:
            self._live.update(self._task, speed=f"· {self.tokens_per_second:.1f} tok/s")

    def follow(self, delta, completions, limit: int | None = None) -> None:
        """A run's delta arrived: count its token, and the branches that have ended by now. With
        `limit` (the most tokens a branch makes), the bar and the time left also move with the
        tokens of the branches still going: siblings decoded as one batch end together."""
        self.token(1 if delta is not None and delta.token is not None else 0)
        self.advance(sum(c.finish_reason is not None for c in completions) - self.done)
        if limit and self._live is not None:
            part = sum(1.0 if c.finish_reason else min(len(c.tokens) / limit, 1.0) for c in completions)
            self._live.update(self._task, completed=min(part, self.total))

    def advance(self, count: int = 1, what: str | None = None) -> None:
        """Steps completed (what: a new description, e.g. the reply being worked on)."""
        if count <= 0 and what is None:
            return
        self.done = min(self.total, self.done + count)
        if what is not None:
            self.what = what
        if self._live is not None:
            self._live.update(self._task, completed=self.done, description=self.what)
            return
        tenth = self.done * 10 // self.total
        if tenth != self._shown_tenth or self.done == self.total:
            self._shown_tenth = tenth
            speed = f" · {self.tokens_per_second:.1f} tok/s" if self.tokens else ""
            self.stream.write(f"simlab: {self.what}: {self.done}/{self.total} {self.unit}{speed}\n")
            self.stream.flush()


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass
class LastReply:
    stats: RunStats
    tokens_per_second: float
    first_token_ms: float
    context_used: int = 0  # tokens the model held at the end: the prompt it read and the longest reply

    @classmethod
    def of(cls, replies: Replies) -> LastReply:
        """A finished run's figures; a server's replies without tokens as the tokenizer here counted them."""
        stats = replies.run.stats
        longest = max(
            (
                len(c.tokens) or int((c.server or {}).get("reply_tokens") or 0)
                for c in replies.run.completions
            ),
            default=0,
        )
        return cls(
            stats, stats.tokens_per_second, stats.first_token_seconds * 1000, stats.prompt_tokens + longest
        )
