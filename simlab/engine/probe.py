"""What a server does, found out with real requests (the capability probe), not assumed from its
name: whether it honours `n` and by what rule its children are seeded, whether the same seeded
request gives the same reply (alone, and while another request runs), log-probabilities (how many
alternatives, the model's own or after the sampler), prompt log-probabilities (echo, or vLLM's
prompt_logprobs), token ids in replies, what counts its tokens, its context, usage.

Every request is a few tokens long. The map is stored on a session (journal `server` records) so
that replay and compare know what the server could do when a node was made. No torch."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from simlab.engine.client import choices_of, served_tokens
from simlab.engine.params import SamplingParams
from simlab.errors import RemoteError

PROMPT = "The keeper wrote in his log that night:"
SHARED = "The keeper wrote in his diary, the morning after"  # shares the prompt's start, not all of it
LOAD = "A list of the lighthouses of the northern coast, with their keepers and the years they served:"
SEED = 4242
TOKENS = 4  # (llama-cpp-python takes ~0.4 s a token to list log-probabilities over a 262k vocabulary)
RAW_TOLERANCE = 1e-3  # log-probabilities of the same token at two temperatures: the model's own


@dataclass
class ServerMap:
    """What one server did for one model when probed; None where the probe could not tell."""

    base_url: str
    model: str
    probed_at: float = 0.0
    fingerprint: str = ""
    n: bool | None = None  # n replies from one request
    child_seed: str = ""  # "seed+index" | "same seed" | "its own" | "" (not known)
    seeded: bool | None = None  # the same seeded request twice: the same reply
    seeded_under_load: bool | None = None  # ... while another request runs
    seed_changes: bool | None = None  # another seed draws another reply (False: greedy, or seed ignored)
    logprobs: int = 0  # alternatives per token it sends (0: no log-probabilities)
    logprobs_kind: str = ""  # "raw" (the model's own) | "after the sampler" | ""
    prompt_logprobs: str = ""  # "echo" | "prompt_logprobs" | "" (none)
    token_ids: bool = False  # token ids in its replies (llama.cpp's `id`, vLLM's token_id:N)
    tokenizer: str = "none"  # what counts its tokens here (engine.tokenizers)
    context_length: int | None = None
    context_from: str = ""
    usage: bool = False  # usage.prompt_tokens with every reply
    why: dict[str, str] = field(default_factory=dict)  # feature -> what the server said

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerMap:
        known = {f.name for f in fields(cls)}
        if not isinstance(data.get("base_url"), str) or not isinstance(data.get("model"), str):
            raise ValueError("a server map needs base_url and model as strings")
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def key(self) -> tuple[str, str]:
        return self.base_url, self.model

    @property
    def scores(self) -> bool:
        """Teacher-forced scoring on the server: prompt log-probabilities of the model's own."""
        return bool(self.prompt_logprobs) and self.logprobs_kind != "after the sampler"

    @property
    def scoring(self) -> str:
        """How stored tokens are scored teacher-forced here: echo, prompt_logprobs, forced (a request
        a token, among its best alternatives), or "" (not at all)."""
        if self.scores:
            return self.prompt_logprobs
        return "forced" if self.logprobs and self.logprobs_kind != "after the sampler" else ""

    def child_seed_of(self, seed: int | None, index: int | None) -> int | None:
        """The seed a child of an n-request has alone, where the server's rule says (else None)."""
        if seed is None or index is None:
            return seed
        if self.child_seed == "seed+index":
            return seed + index
        if self.child_seed == "same seed":
            return seed
        return None

    def rows(self) -> list[tuple[str, str, str]]:
        """(status: ok | warn, feature, what it means here), for doctor and /info."""
        yes = lambda flag: "ok" if flag else "warn"  # noqa: E731
        rule = {
            "seed+index": "child k is what seed + k gives alone (replay of one child works)",
            "same seed": "every child has the request's seed: they repeat one another",
            "its own": "child k is not what seed + k gives alone; replay re-asks for all n",
        }.get(self.child_seed, "its child seeds could not be told apart")
        out = [
            (
                yes(self.n),
                "n",
                f"honoured: {rule}"
                if self.n
                else "ignored: simlab sends one request per sibling (seed, seed+1, ...)",
            ),
            (yes(self.seeded and self.seed_changes is not False), "seeded replies", self._seeded_line()),
            (
                yes(self.logprobs),
                "log-probabilities",
                f"{self.logprobs} alternatives a token, "
                + {
                    "raw": "the model's own (before the sampler)",
                    "after the sampler": "after the sampler (temperature and filters applied)",
                }.get(self.logprobs_kind, "raw or sampled could not be told")
                if self.logprobs
                else "none: /tokens shows token boundaries where a tokenizer here counts them, replay "
                "compares text" + self._why("logprobs"),
            ),
            (
                yes(self.scores),
                "prompt log-probs",
                {"echo": "echo with logprobs", "prompt_logprobs": "vLLM's prompt_logprobs"}.get(
                    self.prompt_logprobs, "none"
                )
                + (
                    ": stored tokens are scored teacher-forced on the server"
                    if self.scores
                    else (
                        ": stored tokens are scored a request a token, among its best alternatives"
                        if self.scoring == "forced"
                        else ": no teacher-forced scoring on the server"
                    )
                    + self._why("prompt_logprobs")
                ),
            ),
            (
                yes(self.token_ids),
                "token ids",
                "in its replies"
                if self.token_ids
                else "not sent: token texts only (ids counted here)"
                if self.logprobs
                else "none: it sends no tokens at all, only text",
            ),
            (
                yes(self.tokenizer != "none"),
                "tokens counted by",
                self.tokenizer if self.tokenizer != "none" else "nothing here (give --tokenizer ID|FOLDER)",
            ),
            (
                yes(self.context_from),
                "context",
                f"{self.context_length} tokens (from {self.context_from})"
                if self.context_from
                else "not said (give --context N)",
            ),
            (yes(self.usage), "usage", "token counts with every reply" if self.usage else "not sent"),
        ]
        return out

    def _seeded_line(self) -> str:
        if self.seed_changes is False:
            return (
                "another seed gave the same reply" + self._why("seed") + ": it decodes greedily or "
                "ignores temperature and seed, so siblings repeat one another"
            )
        if self.seeded is None:
            return "could not be tried" + self._why("seeded")
        if not self.seeded:
            return (
                "the same seeded request gave another reply" + self._why("seeded") + "; replay scores "
                "the stored tokens instead"
            )
        if self.seeded_under_load is False:
            return "repeat alone, not while another request runs (replay with --concurrency 1)"
        return "the same seeded request gives the same reply, also while another runs"

    def _why(self, feature: str) -> str:
        return f" ({self.why[feature]})" if feature in self.why else ""


def probe(engine) -> ServerMap:
    """Probe the server behind a RemoteEngine (about nine requests of a few tokens each)."""
    info = engine.info
    found = ServerMap(
        base_url=engine.config.base_url,
        model=info.name,
        probed_at=time.time(),
        tokenizer=info.tokenizer,
        context_length=info.context_length if info.context_from else None,
        context_from=info.context_from,
    )
    asker = _Asker(engine, found)
    first = asker.ask("seeded")
    if first is None:
        raise RemoteError(
            f"the server at {engine.config.base_url} did not answer a plain completion: "
            f"{found.why.get('seeded', '')}"
        )
    found.fingerprint = str(first.get("system_fingerprint") or "")
    usage = first.get("usage")
    found.usage = isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int)
    choice = choices_of(first, engine.client.where)[0]
    tokens = served_tokens(choice.get("logprobs"))
    found.logprobs = min((len(t.top) for t in tokens), default=0)
    if not tokens:
        found.why["logprobs"] = "asked for 5, it sent none"
    found.seeded = _repeats(asker, first)
    found.seeded_under_load = _under_load(asker, first) if found.seeded else None
    _children(asker, found, first)
    if tokens:
        _raw_or_sampled(asker, found)
        found.token_ids = _ids(choice) or _ids_asked(asker)
    _prompt_logprobs(asker, found)
    return found


class _Asker:
    """Small seeded requests; a refusal is noted under the feature it was for, not raised."""

    def __init__(self, engine, found: ServerMap):
        self.engine, self.found = engine, found

    def ask(self, feature: str, prompt: str = PROMPT, n: int = 1, seed: int = SEED, **extra: Any):
        params = SamplingParams(
            temperature=extra.pop("temperature", 1.0), top_p=1.0, max_new_tokens=TOKENS, seed=seed
        )
        body = {**self.engine.body(prompt, params, n, seed, stream=False), **extra}
        try:
            data = self.engine.client.post_json("/completions", body, retries=0)
            choices_of(data, self.engine.client.where)
            return data
        except RemoteError as exc:
            self.found.why.setdefault(feature, str(exc).split(": ", 1)[-1][:160])
            return None


def _texts(data: dict) -> list[str]:
    return [str(c.get("text") or "") for c in sorted(data["choices"], key=lambda c: c.get("index", 0))]


def _same(one: dict, two: dict) -> bool:
    """The same reply: the same text and, where sent, the same log-probabilities."""
    first, second = one["choices"][0], two["choices"][0]
    lp = [[t.logprob for t in served_tokens(c.get("logprobs"))] for c in (first, second)]
    return _texts(one)[:1] == _texts(two)[:1] and lp[0] == lp[1]


def _repeats(asker: _Asker, first: dict) -> bool | None:
    """The same request back to back, and again after a prompt that shares its start (a prompt
    cache that keeps the shared part and computes the rest anew may change the numbers)."""
    again = asker.ask("seeded")
    if again is None or not _same(first, again):
        return None if again is None else False
    asker.ask("shared", SHARED, logprobs=None, max_tokens=2)
    after = asker.ask("seeded")
    if after is None:
        return None
    if not _same(first, after):
        asker.found.why["seeded"] = (
            "back to back it repeats, after another prompt sharing its start it does not: a prompt "
            "cache changes the numbers"
        )
        return False
    return True


def _under_load(asker: _Asker, first: dict) -> bool | None:
    """The same request while a longer one runs beside it."""
    other = threading.Thread(
        target=asker.ask,
        args=("load", LOAD),
        kwargs={"seed": SEED + 7, "max_tokens": 4 * TOKENS, "logprobs": None},
    )
    other.start()
    time.sleep(0.05)
    during = asker.ask("seeded_under_load", logprobs=None)
    other.join()
    return None if during is None else _texts(during)[:1] == _texts(first)[:1]


def _children(asker: _Asker, found: ServerMap, first: dict) -> None:
    """n, the child-seed rule, and whether another seed draws another reply at all."""
    alone = asker.ask("seed", seed=SEED + 1, logprobs=None)
    if alone is not None and _texts(alone)[0] == _texts(first)[0]:
        found.seed_changes = False
        found.why["seed"] = "seeds 4242 and 4243 at temperature 1 gave the same reply"
    elif alone is not None:
        found.seed_changes = True
    pair = asker.ask("n", n=2, logprobs=None)
    if pair is None:
        return
    texts = _texts(pair)
    found.n = len(texts) >= 2
    if not found.n or not found.seeded:
        return
    if alone is not None and texts[1] == _texts(alone)[0] and texts[0] == _texts(first)[0]:
        found.child_seed = "seed+index"
    elif texts[0] == texts[1]:
        found.child_seed = "same seed"
    else:
        found.child_seed = "its own"


def _raw_or_sampled(asker: _Asker, found: ServerMap) -> None:
    """The first token's alternatives at temperature 0.3 and 1, one request after the other (the
    same prompt cache): the same numbers are the model's own."""
    asked = [asker.ask("logprobs", temperature=t, max_tokens=1) for t in (0.3, 1.0)]
    if None in asked:
        return
    cold, hot = (served_tokens(choices_of(a, "")[0].get("logprobs")) for a in asked)
    if not cold or not hot:
        return
    warm = {text: lp for _, text, lp in hot[0].top}
    shared = [(warm[text], lp) for _, text, lp in cold[0].top if text in warm]
    if shared:
        drift = max(abs(a - b) for a, b in shared)
        found.logprobs_kind = "raw" if drift <= RAW_TOLERANCE else "after the sampler"


def _ids(choice: dict) -> bool:
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
        return all(isinstance(e, dict) and isinstance(e.get("id"), int) for e in logprobs["content"])
    tokens = logprobs.get("tokens") if isinstance(logprobs, dict) else None
    return bool(tokens) and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens)


def _ids_asked(asker: _Asker) -> bool:
    """vLLM sends token_id:N as each token's text when asked (return_tokens_as_token_ids)."""
    data = asker.ask("token_ids", return_tokens_as_token_ids=True)
    return data is not None and _ids(data["choices"][0])


def _prompt_logprobs(asker: _Asker, found: ServerMap) -> None:
    """Echo with logprobs (the legacy API's teacher forcing), else vLLM's prompt_logprobs."""
    echoed = asker.ask("prompt_logprobs", echo=True, max_tokens=1, logprobs=1)
    if echoed is not None and echo_scores(echoed["choices"][0], PROMPT):
        found.prompt_logprobs = "echo"
        return
    if echoed is not None:
        found.why.setdefault("prompt_logprobs", "echo was ignored")
    asked = asker.ask("prompt_logprobs", prompt_logprobs=1, max_tokens=1)
    listed = asked["choices"][0].get("prompt_logprobs") if asked is not None else None
    if isinstance(listed, list) and len(listed) > 1:
        found.prompt_logprobs = "prompt_logprobs"
        found.why.pop("prompt_logprobs", None)


def echo_scores(choice: dict, prompt: str) -> list[tuple[int, str, float | None]]:
    """An echoed prompt's tokens as (offset, text, log-probability; None for the first), or []
    when the answer is not an echo of the prompt with its log-probabilities."""
    logprobs = choice.get("logprobs")
    if not str(choice.get("text") or "").startswith(prompt) or not isinstance(logprobs, dict):
        return []
    texts, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    offsets = logprobs.get("text_offset")
    if not (isinstance(texts, list) and isinstance(values, list) and isinstance(offsets, list)):
        return []
    if not len(texts) == len(values) == len(offsets) or len(texts) < 2:
        return []
    out = []
    for text, value, offset in zip(texts, values, offsets):
        if not isinstance(offset, int) or (value is not None and not isinstance(value, (int, float))):
            return []
        out.append((offset, str(text), None if value is None else float(value)))
    return out if sum(1 for o, _, _ in out if o < len(prompt)) >= 2 else []
