"""The multiverse, the kept block and the autoloom on the real embedded model: every block's
probability is the product of its tokens' conditionals read one sequence at a time (to 1e-5), a
kept block and the grown nodes replay exactly, at the real model's size."""

import pytest

from simlab.engine.multiverse import conditionals
from simlab.engine.params import SamplingParams
from simlab.frame.render import reply_prompt
from simlab.persona.library import find
from simlab.persona.schema import Persona
from simlab.replay import check_path
from simlab.session import multiverse as sm
from simlab.session.store import SessionStore
from simlab.turns import start_session
from simlab.turns.autoloom import Knobs, grow
from simlab.turns.multiverse import grow_at, keep

pytestmark = pytest.mark.slow


def test_a_persona_frames_multiverse_is_exact_and_a_kept_block_replays(embedded_engine, tmp_path):
    engine = embedded_engine
    store = SessionStore(tmp_path / "s")
    session = start_session(store, find("interview"), "mv")
    user = session.add_child(session.tree.cursor, "user", "What did you see out there last night?",
                             speaker="Interviewer")  # fmt: skip
    params = SamplingParams(temperature=0.8, top_p=0.95)
    saved = grow_at(engine, session, user.id, params, depth=6, cutoff=0.02)
    blocks = sm.rows(sm.tree(saved))
    assert len(blocks) >= 20 and saved["covered"][0] > 0.5
    prompt = engine.encode(reply_prompt(session.tree.path(user.id), "Dr. Okafor"))
    assert saved["prompt_tokens"] == len(prompt)
    for block in blocks:
        product = 1.0
        for q in conditionals(engine, prompt, list(block.ids), params, False):
            product *= q
        assert block.p == pytest.approx(product, rel=1e-5), block
    deepest = max(blocks, key=lambda b: (len(b.ids), b.p))
    kept = keep(engine, session, saved, deepest.ids)
    [check] = check_path(engine, session, session.tree.path(kept.id))
    assert check.chosen and check.reproduced
    session.close()


def test_the_autoloom_cuts_at_the_thresholds_and_replays(embedded_engine, tmp_path):
    engine = embedded_engine
    store = SessionStore(tmp_path / "s")
    doc = Persona(name="document", frame="The keeper wrote in his log that night:", mode="document")
    session = start_session(store, doc, "grown")
    seeds = iter(range(100, 10_000, 10))
    knobs = Knobs(conf_threshold=0.3, max_depth=2, budget=120)
    grown = grow(engine, session, session.tree.cursor, SamplingParams(temperature=0.8, top_p=0.95),
                 knobs, lambda k: next(seeds))  # fmt: skip
    assert grown.nodes and any(n.finish_reason == "fork" for n in grown.nodes)
    for node in grown.nodes:
        tops = [max(a[2] for a in alts) for alts in node.top]
        start = max(knobs.min_tokens, (node.forced or {}).get("tokens", 0) + 1)
        assert all(lp >= -1.2039728043259361 - 1e-9 for lp in tops[start:])  # log 0.3
        [check] = [c for c in check_path(engine, session, session.tree.path(node.id)) if c.node.id == node.id]
        assert check.reproduced and check.moved == 0, check
    session.close()
