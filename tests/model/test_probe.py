"""The capability probe (simlab/engine/probe.py) against scripted servers in vLLM's, SGLang's and
llama.cpp's shapes (tests/probe_server.py names where each behaviour comes from), and what it leaves
on a session. The real servers: tests/model/test_remote.py (transformers serve) and
tests/slow/test_remote_servers.py (llama-cpp-python's)."""

import orjson
import pytest
from conftest import run_cli
from probe_server import ProbeServer

from simlab.engine.params import SamplingParams
from simlab.engine.probe import ServerMap, probe
from simlab.engine.remote import RemoteConfig, RemoteEngine
from simlab.persona.library import find as load_persona
from simlab.session.store import SessionStore
from simlab.turns.replies import sample_replies, start_session


def probed(flavour: str, **how) -> ServerMap:
    with ProbeServer(flavour, **how) as server:
        return probe(RemoteEngine(RemoteConfig(server.url)))


def test_vllm_seeds_children_seed_plus_index_and_scores_prompts():
    found = probed("vllm")
    assert (found.n, found.child_seed) == (True, "seed+index")
    assert found.seeded and found.seeded_under_load
    assert (found.logprobs, found.logprobs_kind) == (5, "raw")
    assert found.prompt_logprobs == "echo" and found.scores
    assert found.token_ids  # return_tokens_as_token_ids
    assert (found.context_length, found.context_from) == (2048, "/v1/models")
    assert found.usage and found.tokenizer.startswith("the server's /tokenize")
    assert found.child_seed_of(10, 2) == 12


def test_sglang_children_are_not_what_their_seed_gives_alone():
    found = probed("sglang")
    assert (found.n, found.child_seed) == (True, "its own")
    assert found.child_seed_of(10, 2) is None  # replay cannot re-ask for one child alone
    assert found.prompt_logprobs == "echo" and not found.token_ids
    assert found.context_from == ""  # it did not say


def test_llama_server_refuses_echo_and_repeats_only_alone():
    found = probed("llama-server", delay=0.01)
    assert found.n and found.child_seed == "seed+index"
    assert found.seeded and found.seeded_under_load is False  # continuous batching
    assert found.token_ids and found.logprobs_kind == "raw"
    assert found.prompt_logprobs == "" and not found.scores
    assert "Only no echo is supported" in found.why["prompt_logprobs"]
    lines = {feature: what for _, feature, what in found.rows()}
    assert "not while another request runs" in lines["seeded replies"]
    assert "no teacher-forced scoring on the server (Only no echo" in lines["prompt log-probs"]


def test_doctor_prints_the_probe(capsys):
    with ProbeServer("vllm") as server:
        code, out, err = run_cli(capsys, "doctor", "--backend", "openai", "--base-url", server.url)
    assert code == 0, out + err
    assert "ok    n                 honoured: child k is what seed + k gives alone" in out
    assert "ok    prompt log-probs  echo with logprobs: stored tokens are scored teacher-forced" in out
    assert "ok    context           2048 tokens (from /v1/models)" in out


def test_a_session_keeps_the_map_once_and_finds_it_for_its_replies(tmp_path):
    store = SessionStore(tmp_path / "s")
    with ProbeServer("sglang") as server:
        engine = RemoteEngine(RemoteConfig(server.url))
        session = start_session(store, load_persona("interview"), "served")
        params = SamplingParams(max_new_tokens=5, seed=3)
        first = sample_replies(engine, session, session.tree.cursor, params, n=2)
        asked = len(server.bodies)
        again = sample_replies(engine, session, first[0].id, params)
        assert len(server.bodies) == asked + 1  # probed once: the second reply is one request
    session.close()
    reopened = store.open("served", read_only=True)
    assert len(reopened.tree.servers) == 1
    found = reopened.server_of(again[0])
    assert found.key == (server.url, "words") and found.child_seed == "its own"
    assert [n.backend["choice"] for n in first] == [0, 1]
    records = [orjson.loads(line) for line in (tmp_path / "s" / "served.jsonl").read_bytes().splitlines()]
    assert sum(r["type"] == "server" for r in records) == 1 and records[0]["schema"] == 9
    store.compact("served")  # compaction keeps the map
    assert store.open("served").tree.servers[0].as_dict() == found.as_dict()


def test_a_damaged_server_record_is_reported_and_skipped(tmp_path):
    store = SessionStore(tmp_path / "s")
    session = start_session(store, load_persona("interview"), "hurt")
    path = tmp_path / "s" / "hurt.jsonl"
    with path.open("ab") as f:
        f.write(orjson.dumps({"type": "server", "server": {"model": 3}}) + b"\n")
    session.close()
    reopened = store.open("hurt", read_only=True)
    assert reopened.tree.servers == [] and session.tree.cursor in reopened.tree.nodes
    assert any("server" in p and "base_url" in p for p in reopened.problems)


@pytest.mark.parametrize("flavour", ["vllm", "llama-server"])
def test_replies_record_the_choice_index_for_the_child_seed_rule(flavour):
    with ProbeServer(flavour) as server:
        engine = RemoteEngine(RemoteConfig(server.url))
        together = engine.generate("The keeper wrote", SamplingParams(max_new_tokens=6, seed=40), n=3)
        alone = engine.generate("The keeper wrote", SamplingParams(max_new_tokens=6, seed=42))
    assert [c.server["choice"] for c in together] == [0, 1, 2]
    assert together[2].text == alone[0].text  # child 2 is seed + 2 alone, as the probe found
