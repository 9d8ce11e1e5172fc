"""Shared by every tier: an isolated SIMLAB_HOME per test, `run_cli`, a `store`, the scripted FakeEngine
(tests/unit: REPL, replay and compare logic without torch), a tiny GPT-2 saved to disk (tests/model),
and the real embedded model (tests/slow).

Tiers: tests/unit imports no torch and runs in seconds; tests/model runs tiny real models; tests/slow
the embedded Gemma 3 270M (marked slow; `make test` runs them); tests/hostile fuzzing, hostile files
and failing disks.
"""

from __future__ import annotations

import io
import os
import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from simlab.engine.results import Delta, RunControl, RunStats, TokenInfo
from simlab.engine.textstream import TextStops

# The embedded model's conversion cache is shared with the user's own (it is derived data and
# takes a minute to build), so slow tests resolve it before any test redirects SIMLAB_HOME.
_REAL_HOME = os.environ.get("SIMLAB_HOME")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. ",
    "Interviewer: How long have you kept this light?\nKeeper: Thirty years, give or take.\n",
    "User: hello there\nBot: hello, how are you?\n",
    "héllo wörld, ça va? naïve café — 東京 🙂\n",
    "Q: What is 2+2?\nA: 4\n",
] * 20


def run_cli(capsys, *argv, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    """Run `simlab ARGV...` in this process: (exit code, stdout, stderr)."""
    from simlab.cli.main import main

    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def pty_env(tmp_path: Path) -> dict[str, str]:
    """The environment of `simlab` in a pseudo-terminal: no colour, no cursor-position queries, its own
    home under tmp_path, nothing from the hub."""
    return {
        **os.environ,
        "NO_COLOR": "1",
        "TERM": "xterm",
        "PROMPT_TOOLKIT_NO_CPR": "1",
        "SIMLAB_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
    }


@pytest.fixture
def store(tmp_path):
    """An empty sessions folder."""
    from simlab.session.store import SessionStore

    return SessionStore(tmp_path / "sessions")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own simlab home and never reaches the network."""
    home = tmp_path / "simlab-home"
    monkeypatch.setenv("SIMLAB_HOME", str(home))
    for var in (
        "SIMLAB_MODEL",
        "SIMLAB_DEVICE",
        "SIMLAB_DTYPE",
        "SIMLAB_OFFLINE",
        "SIMLAB_SESSIONS",
        "SIMLAB_PERSONA",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return home


def build_tiny_gpt2(folder: Path, *, seed: int = 0, n_positions: int = 128, with_eos: bool = True) -> Path:
    """A 2-layer GPT-2 with random weights and a byte-level BPE tokenizer, saved like a hub model."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(CORPUS, trainer)
    special = "<|endoftext|>" if with_eos else None  # without: a reply can only end at a stop or the limit
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=special, bos_token=special)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=bpe.get_vocab_size(),
        n_positions=n_positions,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if not with_eos:
        config.bos_token_id = config.eos_token_id = None
    model = GPT2LMHeadModel(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def two_personas(folder: Path) -> tuple[Path, Path]:
    """Two small persona files, a (User / Bot) and b (Q / A, with a greeting), in folder."""
    a = folder / "a.yaml"
    a.write_text('name: a\nframe: "A chat.\\n\\n"\nspeakers: {user: User, model: Bot}\n')
    b = folder / "b.yaml"
    b.write_text('name: b\nframe: "Q and A.\\n\\n"\nspeakers: {user: Q, model: A}\ngreeting: Ask.\n')
    return a, b


# contrastive prompt pairs (positive, negative), as repeng and steering-vectors take them
CONTRASTIVE_PAIRS = [
    ("I am overjoyed, the sun is out and I could sing", "I am miserable, the rain will not stop"),
    ("What a wonderful morning at the lighthouse", "What a dreadful morning at the lighthouse"),
    ("She laughed and hugged her brother", "She wept and pushed her brother away"),
    ("The best day of my whole life", "The worst day of my whole life"),
    ("We won the match and cheered", "We lost the match and sulked"),
    ("Everything tastes sweet today", "Everything tastes bitter today"),
    ("He smiled at the fine old ship", "He scowled at the rotten old ship"),
    ("Joy, pure joy, in every step", "Grief, pure grief, in every step"),
]


def tiny_llama_style(folder, kind: str, tokenizer_dir):
    """A 3-layer Llama or Gemma 3 (with final logit softcapping) with random weights, saved to disk."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=0,
    )
    torch.manual_seed(3)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Gemma3ForCausalLM(
            Gemma3TextConfig(
                **common,
                head_dim=8,
                final_logit_softcapping=3.0,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            )
        )
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """The tiny GPT-2 loaded through simlab's own loader (from_pretrained on a local folder)."""
    from simlab.config import Settings
    from simlab.models.load import load_model

    return load_model(str(tiny_dir), Settings(device="cpu", dtype="float32"))


@pytest.fixture(scope="session")
def tiny_engine(tiny):
    from simlab.engine.local import Engine

    return Engine(tiny)


def load_embedded(weights: str = "auto"):
    """The real embedded model (Gemma 3 270M base) with these `--weights`, from the user's cache
    (converted there once)."""
    from simlab.config import Settings
    from simlab.models.load import load_model

    with pytest.MonkeyPatch.context() as patch:
        if _REAL_HOME:
            patch.setenv("SIMLAB_HOME", _REAL_HOME)
        else:
            patch.delenv("SIMLAB_HOME", raising=False)
        return load_model(
            "embedded", Settings(device="cpu", dtype="float32", weights=weights), progress=print
        )


@pytest.fixture(scope="session")
def embedded():
    return load_embedded()


@pytest.fixture(scope="session")
def embedded_engine(embedded):
    from simlab.engine.local import Engine

    return Engine(embedded)


@pytest.fixture(scope="session")
def embedded_a8_engine():
    """The embedded model with `--weights gguf-a8` (activations rounded to 8 bits)."""
    from simlab.engine.local import Engine

    return Engine(load_embedded("gguf-a8"))


def png_with_card(card: dict, key: str = "chara") -> bytes:
    """A 1x1 PNG carrying a card in a tEXt chunk, as Tavern writes one."""
    import base64
    import json
    import struct
    import zlib

    from simlab.persona.cards import PNG_SIGNATURE

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\xff\xff")
    text = key.encode("latin-1") + b"\0" + base64.b64encode(json.dumps(card).encode("utf-8"))
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", ihdr)
        + chunk(b"tEXt", text)
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )


# -- the scripted FakeEngine ------------------------------------------------------------------


class FakeTokenizer:
    """One token per character (its code point); no chat template."""

    chat_template = None
    eos_token_id = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids, **kwargs) -> str:
        return "".join(chr(i) for i in ids)


@dataclass
class FakeInfo:
    spec: str = "fake"
    name: str = "fake-model"
    revision: str = "fake-rev-1"
    context_length: int = 4096
    device: str = "cpu"
    dtype: str = "float32"
    weights: str = "float"
    architecture: str = "fake"

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class FakeEngine:
    """The Engine Protocol with scripted replies, as simonw/llm's MockModel: `enqueue` texts, and each
    branch of each run takes the next one (when none is queued: "reply <seed>"). Tokens are characters,
    each with log-probability -0.5 and itself as the only alternative; stop strings and max tokens
    end a reply as they would on a model. Every prompt it was given is kept in `prompts`."""

    def __init__(self, context_length: int = 4096, local: bool = True):
        from simlab.engine.protocol import Capabilities

        self.info = FakeInfo(context_length=context_length)
        self.tokenizer = FakeTokenizer()
        self.capabilities = Capabilities(
            local=local, can_score=False, can_trace=False, token_ids=local, concurrency=1 if local else 2
        )
        self.queue: deque[str] = deque()
        self.prompts: list = []
        self.together: list[int] = []  # the size of each decode_together call

    def enqueue(self, texts: Iterable[str]) -> FakeEngine:
        self.queue.extend(texts)
        return self

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def start(self, prompt, params, n: int = 1, recorder=None, passes=None):
        from simlab.errors import ContextLengthError, needs_local

        if recorder is not None:
            raise needs_local("recording the residual stream")
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if len(ids) >= self.info.context_length:
            raise ContextLengthError(
                f"the prompt is {len(ids)} tokens but fake reads at most "
                f"{self.info.context_length}; shorten it"
            )
        self.prompts.append(self.tokenizer.decode(ids))  # as text, whichever way it came
        return FakeRun(self, ids, params, n)

    def generate(self, prompt, params, n: int = 1, recorder=None, passes=None):
        from simlab.engine.protocol import drain

        return drain(self.start(prompt, params, n, recorder))

    def decode_together(self, runs):
        from simlab.engine.protocol import drain

        self.together.append(len(runs))
        for run in runs:
            drain(run)

    def score(self, ids):
        from simlab.errors import needs_local

        raise needs_local("teacher-forced scoring")

    def score_tokens(self, ids, start: int):
        from simlab.errors import needs_local

        if not self.capabilities.local:
            raise needs_local("teacher-forced scoring")
        return [TokenInfo(i, chr(i), -0.5, ((i, chr(i), -0.5),)) for i in list(ids)[max(start, 1) :]]

    def provenance(self, completion):
        return None if self.capabilities.local else {"kind": "fake", "base_url": "fake://server"}


class FakeRun(RunControl):
    """One run of the FakeEngine: each branch's script, a character per step, stops matched as text."""

    def __init__(self, engine: FakeEngine, ids: list[int], params, n: int):
        super().__init__(params, n)
        self.engine, self.prompt_ids = engine, ids
        self.stats = RunStats(prompt_tokens=len(ids))
        texts = [engine.queue.popleft() if engine.queue else None for _ in range(n)]
        self.scripts = [t if t is not None else f"reply {c.seed}" for t, c in zip(texts, self.completions)]

    def __iter__(self):
        told, total = getattr(self, "on_prefill", None), len(self.prompt_ids)
        for at in [*range(0, total, 512), total] if told else ():  # (as the engine's passes tell it)
            told(at, total)
        for completion, script in zip(self.completions, self.scripts):
            stops = TextStops(self.params.stop)
            for char in script[: self.params.max_new_tokens]:
                if self._stop_requested:
                    return
                token = TokenInfo(ord(char), char, -0.5, ((ord(char), char, -0.5),))
                completion.tokens.append(token)
                self.stats.generated_tokens += 1
                shown = stops.add(char)
                completion.text += shown
                yield Delta(completion.index, shown, token)
                if stops.stop_string is not None:
                    completion.finish_reason, completion.stop_string = "stop", stops.stop_string
                    break
            else:
                completion.text += stops.finish()
                completion.finish_reason = "length" if len(script) >= self.params.max_new_tokens else "eos"


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


# -- the Loom editor driven through prompt-toolkit's pipe input ---------------------------------
def drive(loom, steps, size=None) -> str:
    """Run the Loom editor (repl.loom.Loom) in this thread at 80x24 (or size); a helper thread types
    `steps` (text, or a callable to wait on)."""
    import threading
    import time

    from prompt_toolkit.data_structures import Size
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output.vt100 import Vt100_Output

    size = size or Size(rows=24, columns=80)
    screen = io.StringIO()
    with create_pipe_input() as keys:
        from simlab.repl.loom_app import LoomApp

        app = LoomApp(loom, input=keys, output=Vt100_Output(screen, lambda: size, term="xterm"))

        def typist() -> None:
            ended = loom.finished  # jobs ended before the last key was sent
            for step in steps:
                if step is IDLE:  # the job the keys before started has ended (however fast it was)
                    step = lambda e=ended: loom.finished > e and loom.busy is None  # noqa: E731
                if callable(step):
                    deadline = time.monotonic() + 20
                    while not step() and time.monotonic() < deadline:
                        time.sleep(0.02)
                    assert step(), f"waited in vain for {step}"
                else:
                    ended = loom.finished
                    keys.send_text(step)
                    time.sleep(0.15)  # one key press at a time, as a person types

        helper = threading.Thread(target=typist, daemon=True)
        helper.start()
        app.run()
        helper.join(5)
    loom.wait()
    loom.close()  # (as run_loom: the chat speaks through its own view again)
    return screen.getvalue()


IDLE = object()  # a step of `drive`: wait until the job the keys before it started has ended


def free_local_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(process, url: str, what: str, seconds: float = 120) -> None:
    """Until `url` answers (a server started as `process`), or fail the test saying `what` did not."""
    import time
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    process.kill()
    pytest.fail(f"{what} did not come up in {seconds:.0f} s")
