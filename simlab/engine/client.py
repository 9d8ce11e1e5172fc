"""JSON and server-sent events over HTTP(S), with retries, timeouts and one-line errors (stdlib only),
and what a /v1/completions answer says (choices, finish reasons, usage, log-probabilities)."""

from __future__ import annotations

import codecs
import http.client
import json
import os
import random
import re
import socket
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

from simlab.engine.results import Completion, TokenInfo
from simlab.errors import ContextRefused, RemoteError

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class Client:
    """JSON over HTTP(S) with retries, timeouts and one-line errors (stdlib only)."""

    def __init__(self, config):
        url = urllib.parse.urlsplit(config.base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise RemoteError(
                f"--base-url {config.base_url!r}: give an http(s) URL such as http://127.0.0.1:8000/v1"
            )
        self.config = config
        self.url = url
        self.prefix = url.path if url.path.endswith("/v1") else url.path + "/v1"
        self.root = self.prefix[: -len("/v1")]  # where vLLM and llama.cpp serve /tokenize
        self.where = config.base_url

    def _connection(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.url.scheme == "https" else http.client.HTTPConnection
        return kind(self.url.hostname, self.url.port, timeout=self.config.timeout)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        key = os.environ.get(self.config.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def open(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        *,
        root: bool = False,
        retries: int | None = None,
    ) -> http.client.HTTPResponse:
        """The response of a successful request (status < 400), after retrying transient failures.
        `root`: the path is under the server's root, not its /v1."""
        data = json.dumps(body).encode() if body is not None else None
        delay = 0.5
        retries = self.config.retries if retries is None else retries
        for attempt in range(retries + 1):
            last = attempt == retries
            connection = self._connection()
            try:
                where = (self.root if root else self.prefix) + path
                connection.request(method, where, body=data, headers=self._headers())
                response = connection.getresponse()
            except (ConnectionRefusedError, ConnectionResetError, socket.gaierror) as exc:
                connection.close()
                if last:
                    if isinstance(exc, socket.gaierror):
                        reason = f"unknown host {self.url.hostname!r}"
                    else:
                        reason = exc.strerror or type(exc).__name__
                    raise RemoteError(
                        f"cannot reach the server at {self.where} ({reason}, "
                        f"{attempt + 1} attempts); is it running?"
                    ) from None
            except TimeoutError:
                connection.close()
                raise RemoteError(
                    f"the server at {self.where} did not answer within {self.config.timeout:.0f} s; "
                    "is it overloaded, or is the model still loading?"
                ) from None
            except OSError as exc:
                connection.close()
                raise RemoteError(f"cannot talk to the server at {self.where}: {exc}") from None
            else:
                if response.status < 400:
                    return response
                raw = response.read(4096)
                detail = error_detail(raw)
                connection.close()
                if response.status not in RETRY_STATUS or last:
                    message = (
                        f"the server at {self.where} answered HTTP {response.status}"
                        f"{': ' + detail if detail else ''}{hint(response.status)}"
                    )
                    limit = context_limit(raw, detail)
                    if limit is not False:
                        raise ContextRefused(message, limit)
                    error = RemoteError(message)
                    error.status = response.status
                    raise error
            time.sleep(delay * (1 + random.random() / 2))
            delay *= 2
        raise AssertionError("unreachable")

    def get_json(self, path: str) -> Any:
        response = self.open("GET", path)
        return parse_json(response.read(), self.where)

    def post_json(self, path: str, body: dict, **how: Any) -> Any:
        response = self.open("POST", path, body, **how)
        try:
            raw = response.read()
        except TimeoutError:
            raise RemoteError(
                f"the server at {self.where} stopped answering for {self.config.timeout:.0f} s"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise RemoteError(f"the answer from {self.where} was cut off ({exc})") from None
        return parse_json(raw, self.where)


def hint(status: int) -> str:
    return {
        401: " (set the key in the variable --api-key-env names)",
        403: " (is the API key right?)",
        404: " (is --base-url the /v1 root, and --model a model the server serves?)",
    }.get(status, "")


def error_detail(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return " ".join(raw.decode("utf-8", "replace").split())[:200]
    error = data.get("error", data.get("detail", data)) if isinstance(data, dict) else data
    if isinstance(error, dict):
        error = error.get("message", error)
    return " ".join(str(error).split())[:200]


CONTEXT_SAID = re.compile(
    r"maximum context length is (\d+)|context (?:size|length|window)[^0-9]{0,40}(\d+)|must be <= (\d+)", re.I
)
CONTEXT_WORDS = re.compile(r"context (length|size|window)|exceed_context|too long|must be <=", re.I)


def context_limit(raw: bytes, detail: str) -> int | None | bool:
    """A refusal for a prompt over the context: the limit the server named (llama.cpp's `n_ctx`,
    vLLM's and OpenAI's 'maximum context length is N'), None if it named none; False: another error."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("type") == "exceed_context_size_error":
        n_ctx = error.get("n_ctx")
        return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None
    if not CONTEXT_WORDS.search(detail):
        return False
    said = CONTEXT_SAID.search(detail)
    return int(next(g for g in said.groups() if g)) if said else None


def parse_json(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise RemoteError(
            f"the server at {where} answered something that is not JSON "
            f"({raw[:60]!r}); is it an OpenAI-compatible server?"
        ) from None


def sse_events(response, where: str) -> Iterator[dict]:
    """The JSON events of a server-sent event stream, until [DONE]."""
    while True:
        try:
            raw = response.readline()
        except TimeoutError:
            raise RemoteError(f"the server at {where} went silent mid-reply") from None
        except (OSError, http.client.HTTPException) as exc:
            raise RemoteError(f"the stream from {where} was cut ({type(exc).__name__})") from None
        if not raw:
            return
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        try:
            event = json.loads(payload)
        except ValueError:
            raise RemoteError(
                f"the server at {where} sent a stream event that is not JSON ({payload[:60]!r})"
            ) from None
        if isinstance(event, dict):
            yield event


def choices_of(data: Any, where: str) -> list[dict]:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
        raise RemoteError(
            f"the server at {where} answered without choices; is it an OpenAI-compatible "
            "/v1/completions endpoint?"
        )
    return choices


def finish_of(choice: dict) -> str:
    reason = choice.get("finish_reason")
    if reason == "length":
        return "length"
    if reason == "stop":  # vLLM says which: a stop string, or None for the end-of-text token
        return "eos" if "stop_reason" in choice and not isinstance(choice["stop_reason"], str) else "stop"
    return "stop" if reason else "interrupted"


def note_server(completion: Completion, data: dict) -> None:
    """What the server said about itself: the model name it used, its fingerprint, token counts."""
    server = completion.server or {}
    for key in ("model", "system_fingerprint"):
        if isinstance(data.get(key), str):
            server[key] = data[key]
    if isinstance(data.get("usage"), dict):
        server["usage"] = {k: v for k, v in data["usage"].items() if isinstance(v, int)}
    completion.server = server


def served_tokens(logprobs: Any) -> list[TokenInfo]:
    """Tokens from the legacy completions logprobs object (tokens, token_logprobs, top_logprobs),
    or the chat-style one llama.cpp's server sends (content: token, logprob, top_logprobs).
    Servers give token text; ids are -1 (a server's ids are not this session's token ids)."""
    if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
        return _content_tokens(logprobs["content"])
    if not isinstance(logprobs, dict) or not isinstance(logprobs.get("tokens"), list):
        return []
    texts = logprobs["tokens"]
    values = logprobs.get("token_logprobs")
    if (
        not isinstance(values, list)
        or len(values) != len(texts)
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    ):
        return []  # partial or missing log-probabilities are not recorded at all
    tops = logprobs.get("top_logprobs")
    tops = tops if isinstance(tops, list) and len(tops) == len(texts) else [None] * len(texts)
    out = []
    for text, value, top in zip(texts, values, tops):
        pairs = (
            [(str(t), float(lp)) for t, lp in top.items() if isinstance(lp, (int, float))]
            if isinstance(top, dict)
            else []
        )
        alts = tuple((-1, t, lp) for t, lp in sorted(pairs, key=lambda kv: -kv[1]))
        out.append(TokenInfo(-1, str(text), float(value), alts))
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _content_tokens(content: list) -> list[TokenInfo]:
    """llama.cpp's (and OpenAI chat's) per-token entries; all of them or none are recorded. A token's
    text is decoded from its bytes where they are given (llama.cpp cuts a token that ends inside a
    character to its whole characters), so that the tokens still spell the reply."""
    out = []
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    for entry in content:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("token"), str)
            or not _number(entry.get("logprob"))
        ):
            return []
        alts = [
            (-1, a["token"], float(a["logprob"]))
            for a in entry.get("top_logprobs") or []
            if isinstance(a, dict) and isinstance(a.get("token"), str) and _number(a.get("logprob"))
        ]
        raw = entry.get("bytes")
        whole = isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw)
        text = decoder.decode(bytes(raw)) if whole else entry["token"]
        out.append(TokenInfo(-1, text, float(entry["logprob"]), tuple(sorted(alts, key=lambda a: -a[2]))))
    return out
