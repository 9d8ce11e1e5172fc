"""A scripted completions server over a small deterministic word model, in the shapes of the
servers the capability probe (simlab/engine/probe.py) must tell apart, each from its docs/source:

- "vllm": `n` with children seeded seed + index (vllm/v1/engine/parallel_sampling.py), legacy
  logprobs with top-k, raw (its default logprobs_mode), `echo` with logprobs and `prompt_logprobs`
  (a list, None first, of {token_id: {logprob, rank, decoded_token}}), `return_tokens_as_token_ids`
  (tokens as "token_id:N"), `max_model_len` in /v1/models, `/tokenize`, usage.
- "sglang": `n` from one prefill, the children drawn from one generator (not what seed + k gives
  alone), logprobs with top-k, `echo` with logprobs (its input logprobs), usage.
- "llama-server": `n` (since late 2025), per-token probabilities in the chat-style `content` format
  with token ids, `echo` refused (400), `n_ctx` in /v1/models, and the same seed giving another reply
  while another request is in flight (continuous batching changes the numbers).
- "llama-cpp-python": `n` ignored (one choice), echo with logprobs, usage; a prompt cache that keeps
  the part a new prompt shares with the last one and computes the rest anew, which changes its
  numbers: the same seeded request gives another reply after a prompt sharing only its start (seen
  on the real `python -m llama_cpp.server`, tests/slow/test_remote_servers.py).

The model: each next word's logits are a hash of the last two words; a reply at temperature T is
drawn from softmax(logits / T) with random.Random(seed); log-probabilities are the raw ones."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
import time

from tokenize_server import JsonHandler, Served

VOCAB = [
    " the", " keeper", " wrote", " light", " sea", " night", " log", " storm", " ship", " rock",
    " lamp", " wind", " and", " of", " in", " was", " a", " cold", " long", " tower", ".", ",",
]  # fmt: skip
CONTEXT = 2048


def words(text: str) -> list[str]:
    return re.findall(r"\s*[.,]|\s*[^\s.,]+", text)  # (so that " and." is " and" and ".", as the vocabulary)


def logprobs_after(context: list[str]) -> list[float]:
    key = "|".join(context[-2:]).encode()
    digests = [hashlib.sha256(key + bytes([i])).digest() for i in range(len(VOCAB))]
    logits = [int.from_bytes(d[:4], "big") / 2**32 * 6 - 3 for d in digests]
    top = max(logits)
    norm = top + math.log(sum(math.exp(v - top) for v in logits))
    return [v - norm for v in logits]


def draw(context: list[str], rng: random.Random, temperature: float) -> int:
    raw = logprobs_after(context)
    if temperature == 0:
        return max(range(len(raw)), key=raw.__getitem__)
    weights = [math.exp(v / temperature) for v in raw]
    u, total = rng.random() * sum(weights), 0.0
    for i, w in enumerate(weights):
        total += w
        if u < total:
            return i
    return len(weights) - 1


class ProbeServer(Served):
    def __init__(self, flavour: str = "vllm", delay: float = 0.0, greedy: bool = False):
        self.flavour, self.delay = flavour, delay
        self.greedy = greedy  # (as transformers serve is where generation_config has no do_sample)
        self.in_flight = 0
        self.lock = threading.Lock()
        self.bodies: list[dict] = []
        self.last: list[str] = []  # the last prompt (llama-cpp-python's cache)
        owner = self

        class Handler(JsonHandler):
            def do_GET(self):
                entry = {"id": "words", "object": "model"}
                if owner.flavour == "vllm":
                    entry["max_model_len"] = CONTEXT
                if owner.flavour == "llama-server":
                    entry["meta"] = {"n_ctx": CONTEXT}
                self.answer(200, {"object": "list", "data": [entry]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.bodies.append(body)
                if self.path == "/tokenize" and owner.flavour == "vllm":
                    ids = [VOCAB.index(w) if w in VOCAB else 0 for w in words(body.get("prompt", ""))]
                    return self.answer(200, {"tokens": ids, "count": len(ids), "max_model_len": CONTEXT})
                if self.path != "/v1/completions":
                    return self.answer(404, {"detail": "Not Found"})
                with owner.lock:
                    owner.in_flight += 1
                    crowded = owner.in_flight > 1
                try:
                    status, data = owner.complete(body, crowded)
                finally:
                    with owner.lock:
                        owner.in_flight -= 1
                if body.get("stream") and status == 200:
                    choice = data["choices"][0]
                    last = {"index": 0, "text": "", "finish_reason": choice.pop("finish_reason")}
                    end = {"choices": [last]}
                    events = [{**data, "choices": [choice], "usage": None}, {**end, "usage": data["usage"]}]
                    raw = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                    return self.answer(200, None, raw.encode())
                self.answer(status, data)

        self.serve(Handler)

    def complete(self, body: dict, crowded: bool) -> tuple[int, dict]:
        if body.get("echo") and self.flavour == "llama-server":
            refusal = {"code": 400, "message": "Only no echo is supported", "type": "invalid_request_error"}
            return 400, {"error": refusal}
        prompt, n = words(body["prompt"]), int(body.get("n") or 1)
        seed = body.get("seed")
        seed = random.randrange(2**31) if seed is None else int(seed)
        if self.flavour == "llama-cpp-python":
            n, kept = 1, next((k for k, (a, b) in enumerate(zip(self.last, prompt)) if a != b), None)
            if kept:  # part of the prompt from its cache, the rest computed anew: other numbers
                seed += 7 * kept
            self.last = prompt
        if crowded and self.flavour == "llama-server":
            seed += 99991  # (another request in the batch: other numbers, another reply)
        shared = random.Random(seed)  # sglang: the children draw from one generator
        choices = []
        for k in range(n):
            rng = shared if self.flavour == "sglang" else random.Random(seed + k)
            choices.append(self.reply(body, prompt, rng, k))
        made = sum(c.pop("_made") for c in choices)
        usage = {"prompt_tokens": len(prompt), "completion_tokens": made, "total_tokens": len(prompt) + made}
        return 200, {"object": "text_completion", "model": "words", "choices": choices, "usage": usage}

    def reply(self, body: dict, prompt: list[str], rng: random.Random, index: int) -> dict:
        temperature = 0.0 if self.greedy else float(body.get("temperature", 1.0))
        top = body.get("logprobs")
        context, made = list(prompt), []
        for _ in range(int(body.get("max_tokens") or 16)):
            made.append(draw(context, rng, temperature))
            context.append(VOCAB[made[-1]])
            time.sleep(self.delay)
        text = "".join(VOCAB[i] for i in made)
        choice = {"index": index, "text": text, "finish_reason": "length", "_made": len(made)}
        shown = [(i, len(prompt) + k) for k, i in enumerate(made)]
        if body.get("echo"):
            choice["text"] = body["prompt"] + choice["text"]
            shown = [(VOCAB.index(w) if w in VOCAB else 0, k) for k, w in enumerate(prompt)] + shown
        context = prompt + [VOCAB[i] for i in made]
        if isinstance(top, int) and not isinstance(top, bool):
            choice["logprobs"] = self.logprobs(context, shown, top, body, bool(body.get("echo")))
        else:
            choice["logprobs"] = None
        if body.get("prompt_logprobs") and self.flavour == "vllm":
            ids = [VOCAB.index(w) if w in VOCAB else 0 for w in prompt]
            choice["prompt_logprobs"] = [None] + [
                {str(i): {"logprob": logprobs_after(prompt[:k])[i], "rank": 1, "decoded_token": prompt[k]}}
                for k, i in enumerate(ids)
                if k
            ]
        return choice

    def logprobs(self, context, shown, top, body, echo) -> dict:
        entries = []
        for token, at in shown:
            dist = logprobs_after(context[:at])
            best = sorted(range(len(VOCAB)), key=lambda i: -dist[i])[:top]
            entries.append((token, at, dist, best))
        if self.flavour == "llama-server":
            return {"content": [
                {"id": t, "token": VOCAB[t], "logprob": d[t], "bytes": list(VOCAB[t].encode()),
                 "top_logprobs": [{"id": i, "token": VOCAB[i], "logprob": d[i]} for i in best]}
                for t, _, d, best in entries
            ]}  # fmt: skip
        as_ids = body.get("return_tokens_as_token_ids") and self.flavour == "vllm"
        name = (lambda i: f"token_id:{i}") if as_ids else (lambda i: VOCAB[i])
        offsets, total = [], 0
        for t, at, _, _ in entries:
            offsets.append(total)
            total += len(context[at]) if at < len(context) else len(VOCAB[t])
        return {
            "tokens": [name(t) for t, _, _, _ in entries],
            "token_logprobs": [None if echo and k == 0 else d[t] for k, (t, _, d, _) in enumerate(entries)],
            "top_logprobs": [
                None if echo and k == 0 else {name(i): d[i] for i in best}
                for k, (_, _, d, best) in enumerate(entries)
            ],
            "text_offset": offsets,
        }
