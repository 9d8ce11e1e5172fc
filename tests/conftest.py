"""Fixtures: an isolated SIMLAB_HOME per test, a tiny GPT-2 saved to disk, the real embedded model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own simlab home and never reaches the network."""
    home = tmp_path / "simlab-home"
    monkeypatch.setenv("SIMLAB_HOME", str(home))
    for var in ("SIMLAB_MODEL", "SIMLAB_DEVICE", "SIMLAB_DTYPE", "SIMLAB_OFFLINE", "SIMLAB_SESSIONS",
                "SIMLAB_PERSONA"):
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
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS, trainer)
    special = "<|endoftext|>" if with_eos else None  # without: a reply can only end at a stop or the limit
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=special, bos_token=special)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=bpe.get_vocab_size(), n_positions=n_positions, n_embd=32, n_layer=2,
                        n_head=2, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    if not with_eos:
        config.bos_token_id = config.eos_token_id = None
    model = GPT2LMHeadModel(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_llama_style(folder, kind: str, tokenizer_dir):
    """A 3-layer Llama or Gemma 3 (with final logit softcapping) with random weights, saved to disk."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0)
    torch.manual_seed(3)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=8, final_logit_softcapping=3.0,
                                                   sliding_window=8, layer_types=["sliding_attention",
                                                                                  "full_attention",
                                                                                  "sliding_attention"]))
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
    from simlab.models import load_model

    return load_model(str(tiny_dir), Settings(device="cpu", dtype="float32"))


@pytest.fixture(scope="session")
def tiny_engine(tiny):
    from simlab.engine import Engine

    return Engine(tiny)


@pytest.fixture(scope="session")
def embedded():
    """The real embedded model (Gemma 3 270M base), converted once into the user's cache."""
    from simlab.config import Settings
    from simlab.models import load_model

    with pytest.MonkeyPatch.context() as patch:
        if _REAL_HOME:
            patch.setenv("SIMLAB_HOME", _REAL_HOME)
        else:
            patch.delenv("SIMLAB_HOME", raising=False)
        return load_model("embedded", Settings(device="cpu", dtype="float32"), progress=print)


@pytest.fixture(scope="session")
def embedded_engine(embedded):
    from simlab.engine import Engine

    return Engine(embedded)
