"""The real embedded model (Gemma 3 270M base): slow, and run in CI by `make test`."""

import random

import pytest
import torch

from simlab.config import Settings
from simlab.engine.params import SamplingParams
from simlab.models.load import load_model

pytestmark = pytest.mark.slow


def test_it_loads_from_the_cache(embedded, monkeypatch):
    from conftest import _REAL_HOME

    if _REAL_HOME:
        monkeypatch.setenv("SIMLAB_HOME", _REAL_HOME)
    else:
        monkeypatch.delenv("SIMLAB_HOME")
    again = load_model("embedded", Settings(device="cpu"))
    assert again.info.from_cache
    assert again.info.architecture == "Gemma3ForCausalLM" and again.info.layers == 18
    assert again.info.revision == embedded.info.revision and len(again.info.revision) == 64
    assert again.info.vocab_size == 262144 and again.info.context_length == 32768
    from simlab.engine.local import Engine
    from simlab.models import native
    from simlab.models.device import cpu_prefers_bfloat16

    # dtype auto: float32 activations into simlab's kernel (weights auto = the GGUF's own codes);
    # without it, bfloat16 where this CPU measured it faster. Siblings still equal branches alone.
    float_activations = native.library() is not None or not cpu_prefers_bfloat16()
    assert again.info.weights == "gguf"
    assert again.info.dtype == ("float32" if float_activations else "bfloat16")
    engine = Engine(again, reuse_prefix=False)
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=12, seed=21)
    batch = engine.generate("Interviewer: Where were you born?\nGuest:", params, n=2)
    [alone] = engine.generate("Interviewer: Where were you born?\nGuest:", params.with_overrides(seed=22))
    assert alone.token_ids == batch[1].token_ids
    if again.info.dtype != "float32":  # the cast model is kept beside the float32 cache, and used next time
        third = load_model("embedded", Settings(device="cpu"))
        assert third.info.source.endswith(again.info.dtype) and third.info.revision == again.info.revision
        for (name, a), b in zip(third.model.state_dict().items(), again.model.state_dict().values()):
            assert torch.equal(a, b), name


def test_coherent_text_scores_far_above_the_same_words_shuffled(embedded_engine):
    sentence = "The cat sat on the mat and looked out of the window at the rain falling on the garden."
    words = sentence.split()
    coherent = sum(embedded_engine.score(embedded_engine.encode(sentence)))
    shuffled_scores = []
    for seed in range(3):
        shuffled = words[:]
        random.Random(seed).shuffle(shuffled)
        shuffled_scores.append(sum(embedded_engine.score(embedded_engine.encode(" ".join(shuffled)))))
    assert coherent > max(shuffled_scores) + 20  # nats: e^20 times more likely at least


def test_greedy_arithmetic_answer_mentions_4(embedded_engine):
    [c] = embedded_engine.generate(
        "Q: What is 2+2?\nA:", SamplingParams(temperature=0, max_new_tokens=8, stop=("\n",))
    )
    assert "4" in c.text


def test_greedy_matches_transformers_generate_on_the_real_model(embedded_engine, monkeypatch):
    """simlab's engine (on simlab's own Gemma 3, built from the cached codes) against transformers'
    generate on transformers' model (the full load, on the same codes)."""
    from conftest import _REAL_HOME

    from simlab.models import load as loading

    if _REAL_HOME:
        monkeypatch.setenv("SIMLAB_HOME", _REAL_HOME)
    else:
        monkeypatch.delenv("SIMLAB_HOME")
    monkeypatch.setattr(loading, "_from_codes", lambda *a: None)
    full = load_model("embedded", Settings(device="cpu"))
    assert type(full.model).__module__.startswith("transformers.")
    ids = embedded_engine.encode("The history of the lighthouse begins")
    reference = full.model.generate(
        torch.tensor([ids]),
        do_sample=False,
        max_new_tokens=20,
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
    )
    [c] = embedded_engine.generate(ids, SamplingParams(temperature=0, max_new_tokens=20))
    assert c.token_ids == reference[0, len(ids) :].tolist()[: len(c.token_ids)]


def test_sampled_siblings_equal_their_seeds_alone_on_the_real_model(embedded_engine):
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=12, seed=500)
    prompt = "Interviewer: What did you see that night?\nWitness:"
    together = embedded_engine.generate(prompt, params, n=3)
    [alone] = embedded_engine.generate(prompt, params.with_overrides(seed=502))
    assert together[2].token_ids == alone.token_ids
    assert all(c.text.strip() for c in together)


def test_the_own_tokenizer_of_the_cache_is_autotokenizer_exactly(embedded):
    """simlab tokenizes for the embedded model with its own tables (models.bpe: about 100 MB less
    than tokenizers holds); it must be the tokenizer AutoTokenizer builds, token for token and
    offset for offset, both ways: on random characters, on random runs of the vocabulary's own
    pieces (every merge path), on long runs of one character, and on a long document."""
    import random

    from transformers import AutoTokenizer

    from simlab.models import bpe

    ours = embedded.tokenizer
    reference = AutoTokenizer.from_pretrained(embedded.info.source)
    assert isinstance(ours, bpe.Tokenizer)  # simlab's own was taken
    rng = random.Random(0)
    alphabet = "abc XYZ\n\t.,;:!?'\"<>{}[]()éü日本🐙0123456789_-\u2581"
    texts = ["Hello world", "  spaces\n\nnewlines\t tabs  ", "<bos> <eos> <unk> <start_of_turn>user", "", " "]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(1000)]
    size = len(reference)
    texts += [reference.decode([rng.randrange(size) for _ in range(rng.randint(1, 40))]) for _ in range(1500)]
    texts += [c * n for c in (" ", "a", "\n", "=", "\u2581", "🐙", "ab") for n in (1, 2, 3, 7, 16, 33, 257)]
    texts.append(reference.decode([rng.randrange(size) for _ in range(20000)]))  # ~90,000 characters
    for text in texts:
        want = reference(text, return_offsets_mapping=True)
        got = ours(text, return_offsets_mapping=True)
        assert got["input_ids"] == want["input_ids"], text[:200]
        assert got["offset_mapping"] == [tuple(o) for o in want["offset_mapping"]], text[:200]
        assert ours.encode(text, add_special_tokens=False) == reference.encode(text, add_special_tokens=False)
        ids = want["input_ids"]
        assert ours.decode(ids) == reference.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True)
    for _ in range(2000):  # any ids: byte pieces that are not UTF-8, special tokens, ids past the end
        kinds = (size + 2, 494, 12)  # any id, the <0x00>..<0xFF> pieces (238-493), the specials
        ids = [rng.randrange(rng.choice(kinds)) for _ in range(9)]
        assert ours.decode(ids) == reference.decode(ids), ids
    for attr in (
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "unk_token_id",
        "all_special_ids",
        "chat_template",
    ):
        assert getattr(ours, attr) == getattr(reference, attr), attr
    assert len(ours) == len(reference)


def test_auto_decodes_from_the_ggufs_own_quantization_and_stays_with_the_float_model(
    embedded, embedded_engine
):
    """`--weights auto` on the CPU takes the GGUF's own codes (no second rounding) into simlab's
    kernel: the model moves from the dequantized float32 one by what rounding the activations to
    8 bits per 32 costs (as llama.cpp does)."""
    from pathlib import Path

    from simlab.engine.local import Engine
    from simlab.models.lean import FusedPart
    from simlab.models.native import NativeEmbedding, NativeGroup, NativeLinear

    assert embedded.info.weights == "gguf" and embedded.info.dtype == "float32"
    groups = [m for m in embedded.model.modules() if isinstance(m, NativeGroup)]
    grouped = {id(layer) for group in groups for layer in group.parts}
    layers = [m for m in embedded.model.modules() if isinstance(m, NativeLinear) and id(m) not in grouped]
    bits = sorted(m.bits for m in layers) + sorted(group.parts[0].bits for group in groups)
    # one product each: gate/up (Q5_0), q/k/v where v is Q5_0 too (9 layers; a Q8_0 v beside Q5_0 q
    # and k: three layers of their own layouts, one C call in the decode step), o (Q4_K), down (9
    # Q4_K, 9 Q6_K), the head (Q8_0)
    assert len(groups) == 18 + 9 and len(layers) == 9 * 3 + 18 * 2 + 1 and bits.count(4) == 18 + 9
    assert sorted(m.bits for m in layers).count(5) == 9 * 2 and bits.count(6) == 9
    assert len(grouped) == 18 * 2 + 9 * 3
    assert sum(isinstance(m, FusedPart) for m in embedded.model.modules()) == 18 * 2 + 9 * 3
    embedding = embedded.model.get_input_embeddings()
    assert isinstance(embedding, NativeEmbedding) and embedding.table is embedded.model.lm_head
    float32 = Engine(load_model("embedded", Settings(device="cpu", dtype="float32", weights="float")))
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    ids = float32.encode(text)[:600]
    a, b = float32.score(ids), embedded_engine.score(ids)
    assert sum(abs(x - y) for x, y in zip(a, b)) / len(a) < 0.005  # measured 0.0002; one level: 0.062


def test_a_model_built_from_its_cached_codes_is_the_full_loads_bit_for_bit(embedded, monkeypatch):
    """Later starts build the GGUF model from its cached codes alone (no float weights read): the
    very model the full load (float weights, then the codes) builds."""
    from conftest import _REAL_HOME

    from simlab.models import from_codes
    from simlab.models import load as loading

    if _REAL_HOME:
        monkeypatch.setenv("SIMLAB_HOME", _REAL_HOME)
    else:
        monkeypatch.delenv("SIMLAB_HOME")
    built = []
    real = from_codes.load
    monkeypatch.setattr(from_codes, "load", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    quick = load_model("embedded", Settings(device="cpu"))
    assert built and built[0] is quick  # (the fixture's load made the cache)
    monkeypatch.setattr(loading, "_from_codes", lambda *a: None)
    full = load_model("embedded", Settings(device="cpu"))
    assert quick.info == full.info
    ids = torch.tensor([[2, 651, 2412, 563, 496, 1000, 2000, 3000]])
    with torch.inference_mode():
        assert torch.equal(quick.model(input_ids=ids).logits, full.model(input_ids=ids).logits)
    a, b = quick.model.state_dict(), full.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_lean_decode_step_gives_the_same_replies_as_the_models_forward(embedded_engine, monkeypatch):
    """The engine decodes Gemma 3 through models.lean.decode_step; the model's own forward gives
    the very same tokens and log-probabilities (siblings too)."""
    assert embedded_engine.lean
    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=40, seed=77)
    prompt = "Interviewer: Tell me about the storm.\nKeeper:"
    lean = embedded_engine.generate(prompt, params, n=2)
    monkeypatch.setattr(embedded_engine, "lean", False)
    own = embedded_engine.generate(prompt, params, n=2)
    for a, b in zip(lean, own):
        assert a.token_ids == b.token_ids and [t.logprob for t in a.tokens] == [t.logprob for t in b.tokens]


def test_a_long_prompt_cut_back_into_its_spilled_past_replays_exactly_on_the_real_model(
    embedded, tmp_path, monkeypatch
):
    """At the real model's window (512) a prompt of 1,500 tokens spills its sliding layers' past
    (engine.kvcache); a next prompt that shares only its first 700 tokens reads the past back and
    replies as a fresh engine given the same passes, tokens and log-probabilities to the last bit."""
    from simlab.engine import spill
    from simlab.engine.local import Engine
    from simlab.engine.prefix import pack, unpack

    monkeypatch.setattr(spill, "_FOLDER", [tmp_path])
    engine, fresh = Engine(embedded), Engine(embedded, reuse_prefix=False)
    words = "The keeper climbed the stair at dusk and lit the lamp, and wrote down the ships he saw. "
    ids = engine.encode(words * 80)[:1500]
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=8, seed=21)
    for prompt in (ids, ids[:700] + engine.encode(" Then the storm came.")):
        run = engine.start(prompt, params)
        list(run)
        again = fresh.start(prompt, params, passes=unpack(list(pack(run.passes))))
        list(again)
        [c], [d] = run.completions, again.completions
        assert d.token_ids == c.token_ids and [t.logprob for t in d.tokens] == [t.logprob for t in c.tokens]
        if len(prompt) == 1500:  # memory holds the window - 1, 256 more and under 512 more
            sliding = [layer for layer in engine.prefix.cache.layers if layer.is_sliding]
            assert all(layer._spill.count > 0 and layer.keys.shape[-2] < 511 + 256 + 512 for layer in sliding)
    assert run.stats.reused_tokens == 640  # the whole chunks of the shared start, read back from the spill
