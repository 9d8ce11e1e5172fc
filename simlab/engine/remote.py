"""A remote backend: an OpenAI-compatible server's legacy /v1/completions (vLLM, llama.cpp's server,
text-generation-inference, `transformers serve`), in the shape of a local Engine.

The rendered simulator prompt goes as is (not chat messages), so base models and exact framing
work. The backend looks at what came back instead of assuming (engine.probe asks on purpose): fewer
choices than `n` means a request per sibling (seed + i, as a local run does); no `logprobs`, none
recorded. Stop strings are also matched here, on the streamed text. No torch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from simlab.engine.client import (
    Client,
    choices_of,
    error_detail,
    finish_of,
    note_server,
    served_tokens,
    sse_events,
)
from simlab.engine.params import BY_FIELD, SamplingParams
from simlab.engine.protocol import Capabilities, drain
from simlab.engine.results import Completion, Delta, RunControl, RunStats, TokenInfo
from simlab.engine.textstream import TextStops
from simlab.engine.tokenizers import choose
from simlab.errors import ContextRefused, RemoteError, SimlabError, needs_local

SERVER_EXTRAS = [BY_FIELD[name] for name in ("top_k", "min_p", "repetition_penalty")]
UNKNOWN_CONTEXT = 10**9  # a server that does not say: prompts are not windowed here, the server decides
OPENAI_CONTEXTS = {"davinci-002": 16384, "babbage-002": 16384, "gpt-3.5-turbo-instruct": 4096}


@dataclass(frozen=True)
class RemoteConfig:
    base_url: str
    model: str | None = None  # None: the server's only model
    api_key_env: str = "SIMLAB_API_KEY"  # the key is read from this variable, never stored
    timeout: float = 120.0  # seconds to connect, and between two pieces of an answer
    retries: int = 3  # transient failures (refused connection, 429, 5xx) before the first byte
    concurrency: int = 4  # requests in flight at once for siblings a server does not batch
    tokenizer: str = "auto"  # engine.tokenizers.choose: auto, server, tiktoken[:NAME], none, or an HF one
    context: int | None = None  # the server's context in tokens, when it does not say (--context)
    offline: bool = False  # tiktoken's and Hugging Face's files: from their caches only


@dataclass
class RemoteInfo:
    """What ModelInfo says of a local model, as far as a server tells it."""

    spec: str
    name: str
    revision: str
    context_length: int
    device: str
    dtype: str = "server"
    weights: str = "server"
    architecture: str = "remote"
    source: str = ""
    tokenizer: str = "none"  # what counts its tokens here (engine.tokenizers), and where
    context_from: str = ""  # where context_length came from; "" when the server did not say

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class RemoteEngine:
    """The Engine Protocol over /v1/completions. No model here; a tokenizer when one is found
    (engine.tokenizers): then prompts are counted and windowed here, before the server refuses."""

    tokenizer = None

    def __init__(self, config: RemoteConfig, load_hf=None):
        self.config = config
        self.capabilities = Capabilities(
            local=False, can_score=False, can_trace=False, token_ids=False, concurrency=config.concurrency
        )
        self.client = Client(config)
        models = self._models()
        name = config.model or self._only_model(models)
        served = {m.get("id") for m in models if isinstance(m, dict)}
        if served and name not in served:
            raise RemoteError(
                f"the server at {config.base_url} does not serve {name!r}; it serves: "
                f"{', '.join(sorted(str(s) for s in served))}"
            )
        entry = next((m for m in models if isinstance(m, dict) and m.get("id") == name), {})
        self.tokenizer, self.tokenizer_tried = choose(
            config.tokenizer, model=name, client=self.client, offline=config.offline, load_hf=load_hf
        )
        context, said = self._context(entry, name)
        self.info = RemoteInfo(
            spec=name,
            name=name,
            revision=str(entry.get("root") or ""),
            context_length=context,
            device=config.base_url,
            source=config.base_url,
            tokenizer=self.tokenizer.source if self.tokenizer is not None else "none",
            context_from=said,
        )
        self.honoured: dict[str, bool] = {}  # what this server was seen to honour: n, logprobs

    def _context(self, entry: dict, name: str) -> tuple[int, str]:
        """The server's context in tokens and who said so: /v1/models (vLLM's max_model_len,
        llama.cpp's meta.n_ctx), vLLM's /tokenize, OpenAI's published figure; --context when the
        server says nothing, or when it is smaller (a limit of the user's own)."""
        meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
        said = [
            (entry.get("max_model_len"), "/v1/models"),
            (meta.get("n_ctx"), "/v1/models"),
            (entry.get("context_length") or entry.get("context_window"), "/v1/models"),
            (getattr(self.tokenizer, "context", None), "/tokenize"),
            (OPENAI_CONTEXTS.get(name), "OpenAI's model page"),
        ]
        server = next(
            ((v, w) for v, w in said if isinstance(v, int) and not isinstance(v, bool) and v > 0), None
        )
        given = self.config.context
        if given and (server is None or given < server[0]):
            return given, "--context" + (
                f", below the server's {server[0]} from {server[1]}" if server else ""
            )
        if server is not None:
            extra = f"; --context {given} is more than it has" if given else ""
            return server[0], server[1] + extra
        return UNKNOWN_CONTEXT, ""

    def learn_context(self, refused: ContextRefused) -> None:
        """The server refused a prompt and named its context: window by it from now on. When that
        changes nothing (no tokenizer here, no limit named, or one already known), the refusal
        again, saying what would help."""
        limit = refused.limit
        if self.tokenizer is None or not limit or limit >= self.info.context_length:
            wanted = [] if self.tokenizer is not None else ["a tokenizer (--tokenizer ID|FOLDER)"]
            if not self.info.context_from and not limit:
                wanted.append("its context (--context N)")
            hint = f"; give {' and '.join(wanted)} so that the conversation slides to fit" if wanted else ""
            raise ContextRefused(f"{refused}{hint}", limit) from None
        self.info.context_length, self.info.context_from = limit, "the server's refusal"

    def _models(self) -> list:
        data = self.client.get_json("/models")
        models = data.get("data") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise RemoteError(
                f"the server at {self.config.base_url} answered /v1/models without a 'data' list; "
                "is it an OpenAI-compatible server?"
            )
        return models

    def _only_model(self, models: list) -> str:
        ids = [m.get("id") for m in models if isinstance(m, dict) and isinstance(m.get("id"), str)]
        if len(ids) == 1:
            return ids[0]
        raise RemoteError(
            f"give --model: the server at {self.config.base_url} serves "
            f"{', '.join(ids) if ids else 'no model it names'}"
        )

    # -- the Engine interface --------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """The prompt's tokens as the server counts them (its special tokens included)."""
        if self.tokenizer is None:
            raise needs_local("counting tokens (or a tokenizer: --tokenizer)")
        return self.tokenizer.encode(text, add_special_tokens=True)

    def score(self, ids: Sequence[int]) -> list[float]:
        raise needs_local("teacher-forced scoring (cross log-probability)")

    def score_tokens(self, ids: Sequence[int], start: int) -> list[TokenInfo]:
        raise needs_local("teacher-forced scoring (/tokens on typed text, /fork)")

    def start(
        self, prompt: str | Sequence[int], params: SamplingParams, n: int = 1, recorder=None, passes=None
    ) -> RemoteRun:
        """`passes` is the local engine's; a server feeds the prompt its own way."""
        if recorder is not None:
            raise needs_local("recording the residual stream")
        if not isinstance(prompt, str):
            raise needs_local("a prompt in token ids (chat mode through the model's chat template)")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return RemoteRun(self, prompt, params, n)

    def generate(
        self, prompt: str, params: SamplingParams, n: int = 1, recorder=None, passes=None
    ) -> list[Completion]:
        return drain(self.start(prompt, params, n, recorder))

    def next_token_probs(self, prompt, steering=None):
        raise needs_local("a next-token distribution")

    def decode_together(self, runs: Sequence[RemoteRun]) -> None:
        """One request after another (compare keeps several in flight itself, concurrency)."""
        for run in runs:
            drain(run)

    def provenance(self, completion: Completion) -> dict[str, Any]:
        """Where a reply came from: the server, what it reported, what it honoured (never the API key),
        and the token texts it gave (a server gives no ids), for /tokens."""
        backend = {
            "kind": "openai",
            "base_url": self.config.base_url,
            **(completion.server or {}),
            "honoured": dict(self.honoured),
        }
        if completion.tokens:
            backend["tokens"] = [t.text for t in completion.tokens]
        return backend

    # -- requests --------------------------------------------------------------------------
    def body(self, prompt: str, params: SamplingParams, n: int, seed: int | None, stream: bool) -> dict:
        body: dict[str, Any] = {
            "model": self.info.name,
            "prompt": prompt,
            "max_tokens": params.max_new_tokens,
            "n": n,
            "stream": stream,
            "logprobs": 5,
        }
        if params.greedy:
            body["temperature"] = 0.0
        else:
            body.update(temperature=params.temperature, top_p=params.top_p)
        for knob in SERVER_EXTRAS:  # only when on: vLLM and llama.cpp read them, others may refuse them
            if getattr(params, knob.field) != knob.off and not (
                params.greedy and knob.field != "repetition_penalty"
            ):
                body[knob.field] = getattr(params, knob.field)
        if seed is not None:
            body["seed"] = seed
        if params.stop:
            body["stop"] = list(params.stop)
        return body


class RemoteRun(RunControl):
    """One request (streamed when n == 1), or several when the server ignores n; iterate for Deltas.

    A stream cut mid-reply leaves the partial text with finish reason 'interrupted' and the reason
    in `problem`; a failure before any text is a RemoteError."""

    def __init__(self, engine: RemoteEngine, prompt: str, params: SamplingParams, n: int):
        self.engine = engine
        super().__init__(params, n)
        self.prompt = prompt
        self._seed = None if params.greedy else self.base_seed
        self.stats = RunStats()
        self.prompt_ids: list[int] = []  # the server tokenizes; its count is in stats.prompt_tokens
        self.problem: str | None = None
        self._response = None

    def __iter__(self) -> Iterator[Delta]:
        started = time.perf_counter()
        try:
            if len(self.completions) == 1:
                yield from self._stream()
            else:
                self._batch()
        except KeyboardInterrupt:
            self.interrupt()
        finally:
            if self._response is not None:
                self._response.close()
            self.stats.decode_seconds = time.perf_counter() - started
            usage = (self.completions[0].server or {}).get("usage") or {}
            self.stats.prompt_tokens = usage.get("prompt_tokens") or self._count(self.prompt, True)
            for c in self.completions:  # a reply without the server's tokens: counted here
                if c.text and not c.tokens and self.engine.tokenizer is not None:
                    c.server = {**(c.server or {}), "reply_tokens": self._count(c.text, False)}

    def _count(self, text: str, special: bool) -> int:
        """Tokens by the tokenizer here (0 without one, or when the server's /tokenize fails now)."""
        try:
            tokenizer = self.engine.tokenizer
            return len(tokenizer.encode(text, add_special_tokens=special)) if tokenizer is not None else 0
        except SimlabError:
            return 0

    # -- one streamed reply ------------------------------------------------------------------
    def _stream(self) -> Iterator[Delta]:
        engine, completion = self.engine, self.completions[0]
        stops = TextStops(self.params.stop)
        started = time.perf_counter()
        self._response = engine.client.open(
            "POST", "/completions", engine.body(self.prompt, self.params, 1, self._seed, stream=True)
        )
        reason = None
        try:
            for event in sse_events(self._response, engine.client.where):
                if self._stop_requested:
                    break
                if "error" in event:
                    detail = error_detail(json.dumps(event["error"]).encode())
                    raise RemoteError(f"the server reported an error mid-reply: {detail}")
                note_server(completion, event)
                for choice in event.get("choices") or []:
                    if not isinstance(choice, dict):
                        continue
                    piece = choice.get("text") or ""
                    tokens = served_tokens(choice.get("logprobs"))
                    if tokens:
                        engine.honoured["logprobs"] = True
                        completion.tokens.extend(tokens)
                    if piece and not self.stats.first_token_seconds:
                        self.stats.first_token_seconds = time.perf_counter() - started
                    shown = stops.add(piece)
                    self.stats.generated_tokens += max(1, len(tokens)) if piece else 0
                    if shown:
                        completion.text += shown
                        yield Delta(0, shown, tokens[-1] if tokens else None)
                    if choice.get("finish_reason"):
                        reason = finish_of(choice)
                if stops.stop_string is not None:
                    break
        except RemoteError as exc:
            if not completion.text and not stops.text:
                raise
            self.problem = str(exc)
            reason = "interrupted"
        if self._stop_requested:
            reason = "interrupted"
        rest = stops.finish() if stops.stop_string is None else ""
        if rest:
            completion.text += rest
            yield Delta(0, rest, None)
        if stops.stop_string is not None:
            completion.stop_string, reason = stops.stop_string, "stop"
        if reason is None and not completion.text and not self._stop_requested:
            try:  # (llama-cpp-python's, over its context): unstreamed, its refusal names its context
                one = self.params.with_overrides(max_new_tokens=1)
                engine.client.post_json(
                    "/completions", engine.body(self.prompt, one, 1, None, False), retries=0
                )
            except ContextRefused:
                raise  # (a chat learns the context from it and slides its window)
            except RemoteError:
                pass
            counted = self._count(self.prompt, True)
            raise RemoteError(
                f"the server at {engine.client.where} closed its stream without a reply"
                + (f" to a prompt of {counted} tokens" if counted else "")
                + "; a prompt over its context gets no answer from llama-cpp-python's server: shorten it "
                "(with --context N a chat slides its window to fit)"
            )
        if reason is None:  # the stream ended without saying how: cut short
            self.problem = self.problem or f"the stream from {engine.client.where} ended before the reply did"
            reason = "interrupted"
        completion.finish_reason = completion.finish_reason or reason

    # -- n replies ---------------------------------------------------------------------------
    def _batch(self) -> None:
        """n in one request; if the server answers fewer choices, one request per missing sibling."""
        engine, n = self.engine, len(self.completions)
        started = time.perf_counter()
        data = engine.client.post_json(
            "/completions", engine.body(self.prompt, self.params, n, self._seed, False)
        )
        choices = choices_of(data, engine.client.where)
        engine.honoured["n"] = len(choices) >= n
        self.stats.first_token_seconds = time.perf_counter() - started
        if len(choices) >= n:
            for completion, choice in zip(self.completions, sorted(choices, key=lambda c: c.get("index", 0))):
                completion.seed = self._seed  # one request: its seed, and the choice index
                self._fill(completion, choice, data, choice_index=choice.get("index"))
            return
        self._fill(self.completions[0], choices[0], data)
        with ThreadPoolExecutor(max(1, min(engine.config.concurrency, n - 1))) as pool:
            answers = list(pool.map(self._one, self.completions[1:]))
        for completion, (choice, data) in zip(self.completions[1:], answers):
            self._fill(completion, choice, data)

    def _one(self, completion: Completion) -> tuple[dict, dict]:
        engine = self.engine
        data = engine.client.post_json(
            "/completions", engine.body(self.prompt, self.params, 1, completion.seed, False)
        )
        return choices_of(data, engine.client.where)[0], data

    def _fill(
        self, completion: Completion, choice: dict, data: dict, choice_index: int | None = None
    ) -> None:
        stops = TextStops(self.params.stop)
        completion.text = stops.add(str(choice.get("text") or "")) + stops.finish()
        completion.tokens = served_tokens(choice.get("logprobs"))
        if completion.tokens:
            self.engine.honoured["logprobs"] = True
        completion.finish_reason = "stop" if stops.stop_string else finish_of(choice)
        completion.stop_string = stops.stop_string
        note_server(completion, data)
        if choice_index is not None:
            completion.server["choice"] = choice_index
        self.stats.generated_tokens += len(completion.tokens) or len(completion.text.split())
