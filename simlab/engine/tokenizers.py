"""Counting a server's tokens: the server's own tokenizer (vLLM's and llama.cpp's `/tokenize`), tiktoken
for the OpenAI model names it knows, a local Hugging Face tokenizer, or none.

Each is a `Counter` with the calls the rest of simlab makes on a transformers tokenizer
(`encode(text, add_special_tokens=...)`, `decode(ids)`, no chat template), plus `pieces(text)`:
each token's id, its text and the characters it covers. No torch here; a Hugging Face tokenizer
is loaded through simlab.models only when asked for.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from simlab.errors import BadInput, RemoteError

PROBE = "Hello, world"


@dataclass(frozen=True)
class Piece:
    id: int
    text: str  # the token's own text; bytes that are not whole characters are shown as \\xNN
    start: int  # the characters of the text it covers, [start, end)
    end: int


class Counter:
    """The tokenizer interface simlab uses, over some other tokenizer. `source` says which."""

    source = "none"
    chat_template = None  # remote prompts are text: the server applies no template to /completions

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int], **_: Any) -> str:
        raise NotImplementedError

    def token_bytes(self, ids: Sequence[int]) -> list[bytes] | None:
        """Each token's bytes, where the tokenizer gives them; None: use per-token decoding."""
        return None

    def pieces(self, text: str) -> list[Piece]:
        ids = self.encode(text, add_special_tokens=False)
        raw = self.token_bytes(ids)
        if raw is None:
            raw = [self.decode([i]).encode("utf-8") for i in ids]
        return spans(text, ids, raw, self.decode)


def spans(text: str, ids: list[int], raw: list[bytes], decode: Callable[[list[int]], str]) -> list[Piece]:
    """Pieces from each token's bytes: where the bytes spell the text, offsets come from them;
    otherwise (a tokenizer that rewrites spaces, say) from decoding each prefix."""
    shown = [b.decode("utf-8", "backslashreplace") for b in raw]
    whole = text.encode("utf-8")
    if b"".join(raw) == whole:
        out, at = [], 0
        for token, piece, chunk in zip(ids, shown, raw):
            start = len(whole[:at].decode("utf-8", "ignore"))
            at += len(chunk)
            out.append(Piece(token, piece, start, len(whole[:at].decode("utf-8", "ignore"))))
        return out
    out, start = [], 0
    for k, (token, piece) in enumerate(zip(ids, shown)):
        end = min(len(decode(ids[: k + 1]).rstrip("\ufffd")), len(text))
        out.append(Piece(token, piece, start, max(start, end)))
        start = max(start, end)
    return out


# -- a server's own ----------------------------------------------------------------------------


SERVERS = {  # kind -> how the source is named
    "vllm": "the server's /tokenize (vLLM)",
    "llamacpp": "the server's /tokenize (llama.cpp)",
    "extras": "the server's /extras/tokenize (llama-cpp-python)",
}


class ServerCounter(Counter):
    """vLLM's or llama.cpp's /tokenize and /detokenize, or llama-cpp-python's /extras/tokenize and
    /extras/detokenize (llama_cpp/server/app.py: {model, input} -> tokens, the model's special
    tokens added; {model, tokens} -> text), at the server's root (not under /v1)."""

    def __init__(self, client, model: str, kind: str, context: int | None = None, lead: tuple = ()):
        self.client, self.model, self.kind = client, model, kind
        self.source = SERVERS[kind]
        self.context = context  # vLLM's /tokenize says max_model_len
        self.lead = tuple(lead)  # extras: what it puts before any text (its BOS), left out when asked
        self._lock = threading.Lock()
        self._pieces: dict[int, str] = {}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._encode(text, add_special_tokens))

    @functools.lru_cache(maxsize=64)  # noqa: B019 - the counter lives as long as its engine
    def _encode(self, text: str, special: bool) -> tuple[int, ...]:
        if self.kind == "extras":
            data = self.client.post_json("/extras/tokenize", {"model": self.model, "input": text}, root=True)
            tokens = data.get("tokens") if isinstance(data, dict) else None
            if not isinstance(tokens, list):
                raise RemoteError(
                    f"the server at {self.client.where} answered /extras/tokenize without tokens"
                )
            ids = tuple(int(t) for t in tokens)
            lead = len(self.lead) if not special and ids[: len(self.lead)] == self.lead else 0
            return ids[lead:]
        if self.kind == "vllm":
            body = {"model": self.model, "prompt": text, "add_special_tokens": special}
        else:
            body = {"content": text, "add_special": special}
        data = self.client.post_json("/tokenize", body, root=True)
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list):
            raise RemoteError(f"the server at {self.client.where} answered /tokenize without a token list")
        return tuple(int(t["id"] if isinstance(t, dict) else t) for t in tokens)

    def decode(self, ids: Sequence[int], **_: Any) -> str:
        return self._decode(ids)

    def _decode(self, ids: Sequence[int], **how: Any) -> str:
        body = (
            {"model": self.model, "tokens": list(ids)} if self.kind != "llamacpp" else {"tokens": list(ids)}
        )
        path = "/extras/detokenize" if self.kind == "extras" else "/detokenize"
        data = self.client.post_json(path, body, root=True, **how)
        key = {"vllm": "prompt", "llamacpp": "content", "extras": "text"}[self.kind]
        text = data.get(key) if isinstance(data, dict) else None
        if not isinstance(text, str):
            raise RemoteError(f"the server at {self.client.where} answered /detokenize without text")
        return text

    def pieces(self, text: str) -> list[Piece]:
        if self.kind == "llamacpp":  # it gives each token's piece, as text or as its bytes
            data = self.client.post_json(
                "/tokenize", {"content": text, "add_special": False, "with_pieces": True}, root=True
            )
            tokens = [t for t in data.get("tokens", []) if isinstance(t, dict)]
            raw = [
                bytes(t["piece"]) if isinstance(t["piece"], list) else str(t["piece"]).encode("utf-8")
                for t in tokens
            ]
            return spans(text, [int(t["id"]) for t in tokens], raw, self.decode)
        ids = self.encode(text, add_special_tokens=False)
        missing = sorted({i for i in ids if i not in self._pieces})
        with ThreadPoolExecutor(4) as pool:  # one /detokenize per distinct token, remembered
            for token, piece in zip(missing, pool.map(self._piece, missing)):
                self._pieces[token] = piece
        last = [""]

        def prefix(part: list[int]) -> str:  # (a prefix ending inside a character: the one before it)
            try:
                last[0] = self._decode(part, retries=0)
            except RemoteError:
                pass
            return last[0]

        return spans(text, ids, [self._pieces[i].encode("utf-8") for i in ids], prefix)

    def _piece(self, token: int) -> str:
        """One token's text; a part of a character that a server will not decode alone is U+FFFD
        (llama-cpp-python answers 500 there)."""
        try:
            return self._decode([token], retries=0)
        except RemoteError:
            return "\ufffd"


_PROBED: dict[tuple[str, str], ServerCounter | None] = {}  # per server and model: asked once


def probe_server(client, model: str) -> ServerCounter | None:
    """The server's own tokenizer, if it has one: vLLM's /tokenize (model, prompt), else llama.cpp's
    (content), else llama-cpp-python's /extras/tokenize. Asked once per server and model in a process."""
    key = (client.where, model)
    if key not in _PROBED:
        _PROBED[key] = _probe(client, model)
    return _PROBED[key]


def _probe(client, model: str) -> ServerCounter | None:
    asks = (
        ("vllm", {"model": model, "prompt": PROBE, "add_special_tokens": False}),
        ("llamacpp", {"content": PROBE, "add_special": False}),
    )
    for kind, body in asks:
        try:
            data = client.post_json("/tokenize", body, root=True, retries=0)
        except RemoteError:
            continue
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if isinstance(tokens, list) and tokens and all(isinstance(t, int) for t in tokens):
            context = data.get("max_model_len")
            return ServerCounter(client, model, kind, context if isinstance(context, int) else None)
    try:  # llama-cpp-python's server: its own paths and shape
        data = client.post_json("/extras/tokenize", {"model": model, "input": PROBE}, root=True, retries=0)
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if isinstance(tokens, list) and tokens and all(isinstance(t, int) for t in tokens):
            lead = client.post_json("/extras/tokenize", {"model": model, "input": ""}, root=True, retries=0)
            lead = lead.get("tokens") if isinstance(lead, dict) else []
            return ServerCounter(client, model, "extras", lead=tuple(lead) if isinstance(lead, list) else ())
    except RemoteError:
        pass
    return None


# -- tiktoken ----------------------------------------------------------------------------------


class TiktokenCounter(Counter):
    def __init__(self, encoding, why: str = ""):
        self.encoding = encoding
        self.source = f"tiktoken {encoding.name}{why}"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.encoding.encode(text, disallowed_special=())  # text, never a special token

    def decode(self, ids: Sequence[int], **_: Any) -> str:
        return self.encoding.decode(list(ids))

    def token_bytes(self, ids: Sequence[int]) -> list[bytes]:
        return [self.encoding.decode_single_token_bytes(i) for i in ids]


def tiktoken_name(model: str) -> str | None:
    """The tiktoken encoding an OpenAI model name uses, or None for a name tiktoken does not know."""
    from tiktoken.model import encoding_name_for_model

    try:
        return encoding_name_for_model(model)
    except KeyError:
        return None


class NotCached(Exception):
    pass


def tiktoken_encoding(name: str, offline: bool, timeout: float = 60.0):
    """tiktoken's encoding `name`, from its cache (TIKTOKEN_CACHE_DIR); fetched once when online.
    Raises BadInput with what to do when its file is not cached and cannot be fetched."""
    import tiktoken
    import tiktoken.load

    where = (
        os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or "its temporary folder"
    )
    fetch = tiktoken.load.read_file
    result: dict[str, Any] = {}

    def cached_only(blob: str) -> bytes:
        if "://" in blob:
            raise NotCached(blob)
        return fetch(blob)

    def load() -> None:
        try:
            result["encoding"] = tiktoken.get_encoding(name)
        except Exception as exc:  # noqa: BLE001 - tiktoken's fetch raises what requests raises
            result["error"] = exc

    with _TIKTOKEN_LOCK:
        if offline:
            tiktoken.load.read_file = cached_only
        try:
            worker = threading.Thread(target=load, daemon=True)
            worker.start()
            worker.join(timeout)
        finally:
            tiktoken.load.read_file = fetch
    if "encoding" in result:
        return result["encoding"]
    exc = result.get("error")
    reason = (
        "simlab is offline (--offline, HF_HUB_OFFLINE), so it was not fetched"
        if isinstance(exc, NotCached)
        else "it could not be fetched" + (f" ({type(exc).__name__})" if exc else f" within {timeout:.0f} s")
    )
    raise BadInput(
        f"tiktoken's {name} file is not in its cache ({where}) and {reason}: run "
        f"`python -c \"import tiktoken; tiktoken.get_encoding('{name}')\"` once with network and "
        "TIKTOKEN_CACHE_DIR set to a folder you keep, or use a Hugging Face tokenizer (an id or folder)"
    )


_TIKTOKEN_LOCK = threading.Lock()


# -- a local Hugging Face tokenizer ------------------------------------------------------------


class HFCounter(Counter):
    def __init__(self, tokenizer, spec: str, source: str | None = None):
        self.tokenizer, self.spec = tokenizer, spec
        self.source = source or f"the Hugging Face tokenizer {spec}"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: Sequence[int], **_: Any) -> str:
        return self.tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)

    def pieces(self, text: str) -> list[Piece]:
        if not getattr(self.tokenizer, "is_fast", False):
            return super().pieces(text)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        offsets = list(encoded["offset_mapping"])
        own = getattr(self.tokenizer, "token_bytes", None)  # (simlab's own: a byte piece's byte)
        raw = own(ids) if own is not None else [self.decode([i]).encode("utf-8") for i in ids]
        whole = spans(text, ids, raw, self.decode)
        if b"".join(raw) == text.encode("utf-8") or "".join(p.text for p in whole) == text:
            return whole  # the pieces spell the text: their own offsets
        return [Piece(i, text[a:b], a, b) for i, (a, b) in zip(ids, offsets)]


# -- which one ---------------------------------------------------------------------------------


def choose(
    choice: str,
    *,
    model: str,
    client=None,
    offline: bool = False,
    load_hf: Callable[[str], Any] | None = None,
) -> tuple[Counter | None, list[str]]:
    """The tokenizer for a server's model, and what was tried on the way (for /info and doctor).

    `choice`: 'auto' (the server's own, then tiktoken for a name it knows, then none), 'server',
    'tiktoken' or 'tiktoken:ENCODING', 'none', or a Hugging Face tokenizer's id or folder."""
    tried: list[str] = []
    if choice == "none":
        return None, ["none: --tokenizer none"]
    if choice in ("auto", "server") and client is not None:
        server = probe_server(client, model)
        if server is not None:
            return server, tried
        tried.append(f"the server has no /tokenize at {client.where.removesuffix('/v1')}")
        if choice == "server":
            raise BadInput(
                f"the server at {client.where} has no /tokenize (vLLM and llama.cpp's server have "
                "one); count with tiktoken or a Hugging Face tokenizer instead"
            )
    if choice == "auto" or choice.startswith("tiktoken"):
        name = choice.partition(":")[2] or tiktoken_name(model)
        if name:
            return TiktokenCounter(tiktoken_encoding(name, offline), f" (for {model})"), tried
        tried.append(f"tiktoken does not know the model name {model!r}")
        if choice != "auto":
            raise BadInput(
                f"--tokenizer tiktoken: tiktoken does not know {model!r}; name the encoding, "
                "e.g. --tokenizer tiktoken:cl100k_base"
            )
        return None, tried
    if load_hf is None:
        raise BadInput(f"--tokenizer {choice}: no way to load a Hugging Face tokenizer here")
    return HFCounter(load_hf(choice), choice), tried
