"""A test server with a real tokenizer: `/v1/models`, `/v1/completions` (streamed or not) and
`/tokenize`/`/detokenize` as vLLM documents them (model, prompt, add_special_tokens -> tokens,
count, max_model_len) or as llama.cpp's server has them (content, add_special, with_pieces ->
tokens as ids or {id, piece}), or as llama-cpp-python's server has them at /extras/tokenize and
/extras/detokenize (llama_cpp/server/app.py: {model, input} -> tokens with the BOS its model adds,
{model, tokens} -> text; /v1/models without a context; usage in every completion), or none.
It refuses prompts over its context as each does:
vLLM's "maximum context length is N tokens", llama.cpp's exceed_context_size_error with n_ctx."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet handler that answers JSON, or a raw event stream."""

    def answer(self, status, data, stream=None):
        raw = json.dumps(data).encode() if stream is None else stream
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if stream is None else "text/event-stream")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


class Served:
    """A test server on 127.0.0.1 (a free port), serving in a thread while in a `with` block."""

    def serve(self, handler) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TokenizeServer(Served):
    def __init__(self, tokenizer, flavour: str = "vllm", context: int = 64, advertise: bool = True):
        self.tokenizer, self.flavour, self.context, self.advertise = tokenizer, flavour, context, advertise
        self.prompts: list[str] = []  # every completion prompt it accepted
        self.refused = 0
        self.calls: dict[str, int] = {}
        self.reply = " Fine, thanks.\n"
        owner = self

        class Handler(JsonHandler):
            def do_GET(self):
                owner.count(self.path)
                if self.path == "/v1/models":
                    entry = {"id": "tiny", "object": "model"}
                    if owner.advertise and owner.flavour == "vllm":
                        entry["max_model_len"] = owner.context
                    if owner.advertise and owner.flavour == "llamacpp":
                        entry["meta"] = {"n_ctx": owner.context, "n_ctx_train": 8192}
                    return self.answer(200, {"object": "list", "data": [entry]})
                return self.answer(404, {"error": "not found"})

            def do_POST(self):
                owner.count(self.path)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/v1/completions":
                    return owner.complete(self, body)
                if self.path in ("/tokenize", "/detokenize") and owner.flavour in ("vllm", "llamacpp"):
                    return self.answer(200, owner.tokenize(self.path, body))
                if self.path.startswith("/extras/") and owner.flavour == "llama-cpp-python":
                    return owner.extras(self, body)
                return self.answer(404, {"detail": "Not Found"})

        self.serve(Handler)

    def count(self, path: str) -> None:
        self.calls[path] = self.calls.get(path, 0) + 1

    def ids(self, text: str, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def tokenize(self, path: str, body: dict) -> dict:
        tok = self.tokenizer
        if self.flavour == "vllm":
            if path == "/detokenize":
                return {"prompt": tok.decode(body["tokens"])}
            ids = self.ids(body.get("prompt", ""), body.get("add_special_tokens", True))
            return {"tokens": ids, "count": len(ids), "max_model_len": self.context}
        if path == "/detokenize":
            return {"content": tok.decode(body.get("tokens", []))}
        if "content" not in body:
            return {"tokens": []}
        ids = self.ids(body["content"], body.get("add_special", False))
        if not body.get("with_pieces"):
            return {"tokens": ids}
        out = []
        for i in ids:
            piece = bytes(_byte_level(tok.convert_ids_to_tokens(i)))
            try:
                out.append({"id": i, "piece": piece.decode("utf-8")})
            except UnicodeDecodeError:
                out.append({"id": i, "piece": list(piece)})
        return {"tokens": out}

    def extras(self, handler, body: dict) -> None:
        """llama-cpp-python: its BOS before every text; a token that is part of a character is a
        500 on /extras/detokenize (it decodes the bytes as UTF-8, strictly)."""
        tok = self.tokenizer
        if handler.path == "/extras/detokenize":
            text = tok.decode(body["tokens"])
            if "\ufffd" in text:
                return handler.answer(500, {"detail": "'utf-8' codec can't decode bytes"})
            return handler.answer(200, {"text": text})
        ids = [tok.bos_token_id] + self.ids(body["input"], False)
        if handler.path == "/extras/tokenize/count":
            return handler.answer(200, {"count": len(ids)})
        return handler.answer(200, {"tokens": ids})

    def complete(self, handler, body: dict) -> None:
        prompt, limit = body["prompt"], self.context
        used = len(self.ids(prompt, True)) + (self.flavour == "llama-cpp-python")  # (its BOS)
        wanted = used + int(body.get("max_tokens", 16))
        if self.flavour == "llama-cpp-python":  # (it checks the prompt alone: a reply stops at the end)
            wanted = used if used >= limit else 0
        if wanted > limit and self.flavour == "llama-cpp-python" and body.get("stream"):
            self.refused += 1  # (its server: 200, then the stream ends with nothing in it)
            return handler.answer(200, None, stream=b"")
        if wanted > limit or wanted == limit and self.flavour == "llama-cpp-python":
            self.refused += 1
            if self.flavour == "llamacpp":
                error = {
                    "error": {
                        "code": 400,
                        "message": "the request exceeds the available context size, try increasing it",
                        "type": "exceed_context_size_error",
                        "n_prompt_tokens": used,
                        "n_ctx": limit,
                    }
                }
            else:
                error = {
                    "object": "error",
                    "message": f"This model's maximum context length is {limit} tokens. However, you "
                    f"requested {wanted} tokens ({used} in the messages, {wanted - used} in the "
                    "completion). Please reduce the length of the messages or completion.",
                    "type": "BadRequestError",
                    "code": 400,
                }
            return handler.answer(400, error)
        self.prompts.append(prompt)
        made = len(self.ids(self.reply, False))
        usage = {"prompt_tokens": used, "completion_tokens": made, "total_tokens": used + made}
        if self.flavour == "llamacpp":
            usage = {}  # some servers report no usage: the tokenizer here counts the prompt
        choice = {"index": 0, "text": self.reply, "finish_reason": "stop", "logprobs": None}
        if not body.get("stream"):
            return handler.answer(
                200, {"object": "text_completion", "model": "tiny", "choices": [choice], "usage": usage}
            )
        events = [
            {"choices": [{"index": 0, "text": self.reply, "finish_reason": None}], "model": "tiny"},
            {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}], "model": "tiny", "usage": usage},
        ]
        raw = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        handler.answer(200, None, stream=raw.encode())


def _byte_level(token: str) -> list[int]:
    """A byte-level BPE token's bytes (GPT-2's printable stand-ins for bytes)."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table, n = {chr(b): b for b in printable}, 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + n)] = b
            n += 1
    return [table[c] for c in token]
