"""Every row computed as if alone, on the real embedded model at its real length: siblings decoded
as one batch are, token for token and log-probability for log-probability, what each seed gives
alone; and `replay` reproduces every kind of sibling (a chat's /n, the Loom editor's `g` on a
document) exactly.

On an AMD EPYC with AVX-512 (VNNI, VBMI, BF16) torch's CPU attention gave row 0 of a batch other
bits than that row alone (its sums change with the batch, the threads and where the tensors lie),
and the seed-11 sibling below left its seed's reply at token 11; simlab's own attention
(models.native_attention.attend) sums each query alone."""

import pytest

from simlab.engine import kvcache
from simlab.engine.params import SamplingParams
from simlab.persona.library import find
from simlab.persona.schema import Persona
from simlab.replay import check_path
from simlab.session.store import SessionStore
from simlab.turns import sample_replies, start_session

pytestmark = pytest.mark.slow

TOKENS = 64


def siblings_as_alone(
    engine, params: SamplingParams, prompt: str = "The keeper wrote in his log that night:"
):
    """Three siblings as one batch, each checked against its seed sampled alone: the batch."""
    together = engine.generate(prompt, params, n=3)
    for k, sibling in enumerate(together):
        [alone] = engine.generate(prompt, params.with_overrides(seed=params.seed + k))
        assert sibling.token_ids == alone.token_ids, f"seed {params.seed + k}"
        assert [t.logprob for t in sibling.tokens] == [t.logprob for t in alone.tokens], (
            f"seed {params.seed + k}"
        )
        assert len(sibling.token_ids) > 40 or sibling.finish_reason == "eos"
    return together


def test_siblings_are_their_seeds_alone_token_and_logprob(embedded_engine):
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=TOKENS, seed=11)
    assert len(siblings_as_alone(embedded_engine, params)) == 3
    assert embedded_engine.rows_alone  # and they were one batch: the embedded model on simlab's kernel


def test_siblings_after_a_long_prompt_share_its_keys_and_are_their_seeds_alone(embedded_engine, monkeypatch):
    """Past the sliding window (700 tokens), four siblings read the prompt's full-attention keys
    where they lie (engine.kvcache.Shared: one copy for all, not four) and are still, token and
    log-probability, what each seed gives alone."""
    engine, shared = embedded_engine, []
    real = kvcache._shared
    monkeypatch.setattr(kvcache, "_shared", lambda *args: [shared.append(args[0]), real(*args)][1])
    ids = engine.encode("The keeper wrote in his log, night after night, what the sea did. " * 60)[:700]
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=TOKENS, seed=21)
    together = engine.generate(ids, params, n=4)
    assert len(shared) == sum(kind == "full_attention" for kind in engine.model.config.layer_types) == 3
    for k, sibling in enumerate(together):
        [alone] = engine.generate(ids, params.with_overrides(seed=21 + k))
        assert sibling.token_ids == alone.token_ids, f"seed {21 + k}"
        assert [t.logprob for t in sibling.tokens] == [t.logprob for t in alone.tokens], f"seed {21 + k}"


@pytest.mark.parametrize("kind", ["chat", "document"])
def test_replay_reproduces_every_sibling_exactly(kind, tmp_path, embedded_engine):
    """A chat's /n 4 and the Loom editor's `g` (4 continuations of a document) both sample siblings
    as one batch; `replay` re-runs each alone, with its own seed and its prompt's passes."""
    engine = embedded_engine
    if kind == "chat":
        persona = find("interview")
    else:
        persona = Persona(
            name="document", frame="The lighthouse keeper's log, 14 March 1911.\n\n", mode="document"
        )
    store = SessionStore(tmp_path / "sessions")
    with start_session(store, persona, kind) as session:
        parent = session.tree.cursor
        if kind == "chat":
            parent = session.add_child(
                parent, "user", "What did you see that night?", speaker=persona.user
            ).id
        params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=TOKENS, seed=40)
        speaker = persona.model if kind == "chat" else None
        siblings = sample_replies(engine, session, parent, params, n=4, speaker=speaker)
        assert len(siblings) == 4
        for node in siblings:
            [check] = check_path(engine, session, session.tree.path(node.id))
            assert check.reproduced and check.moved == 0, (node.seed, check.first_difference, check.moved)


def test_gguf_a8_siblings_are_their_seeds_alone_and_replay_exactly(
    embedded_a8_engine, embedded_engine, tmp_path
):
    """`--weights gguf-a8` (one level of 8-bit activation codes, a kernel path of its own): siblings
    are one batch and each its seed alone, replies record the weights, and `replay` reproduces them."""
    engine = embedded_a8_engine
    assert engine.info.weights == "gguf-a8"
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=TOKENS, seed=11)
    together = siblings_as_alone(engine, params)
    assert engine.rows_alone
    [precise] = embedded_engine.generate("The keeper wrote in his log that night:", params)
    assert [t.logprob for t in precise.tokens][:8] != [t.logprob for t in together[0].tokens][:8]
    persona = find("interview")
    store = SessionStore(tmp_path / "sessions")
    with start_session(store, persona, "a8") as session:
        user = session.add_child(session.tree.cursor, "user", "What did you see?", speaker=persona.user)
        siblings = sample_replies(
            engine, session, user.id, params.with_overrides(seed=40), n=4, speaker=persona.model
        )
        for node in siblings:
            assert node.weights == "gguf-a8"
            [check] = check_path(engine, session, session.tree.path(node.id))
            assert check.reproduced and check.moved == 0, (node.seed, check.first_difference, check.moved)


def test_a_prompt_past_the_window_gives_the_bits_of_a_call_for_each_pass(embedded, monkeypatch):
    """The prompt's first chunks share model calls (engine.prefix.calls) up to the sliding window
    (512 tokens here), one call a pass after it: a 700-token prompt's reply is, token and
    log-probability, what one call for each pass gives."""
    from simlab.engine import prefix
    from simlab.engine.local import Engine

    engine = Engine(embedded, reuse_prefix=False)
    assert prefix.shared_up_to(engine.model, engine.rows_alone) == engine.model.config.sliding_window == 512
    ids = engine.encode("The keeper wrote in his log, night after night, what the sea did. " * 60)[:700]
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=TOKENS, seed=5)
    replies, told = {}, {}
    for together in (prefix.TOGETHER, prefix.CHUNK):
        monkeypatch.setattr(prefix, "TOGETHER", together)
        run, told[together] = engine.start(ids, params), []
        run.on_prefill = lambda at, total, seen=told[together]: seen.append(at)
        list(run)
        [replies[together]] = run.completions
    assert told[4 * prefix.CHUNK][:4] == [0, 256, 512, 576] and told[prefix.CHUNK][:3] == [0, 64, 128]
    a, b = replies[4 * prefix.CHUNK], replies[prefix.CHUNK]
    assert a.token_ids == b.token_ids and [t.logprob for t in a.tokens] == [t.logprob for t in b.tokens]
