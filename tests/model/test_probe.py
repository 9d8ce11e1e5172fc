"""The capability probe (simlab/engine/probe.py) against scripted servers in vLLM's, SGLang's and
llama.cpp's shapes (tests/probe_server.py names where each behaviour comes from), and what it leaves
on a session. The real servers: tests/model/test_remote.py (transformers serve) and
tests/slow/test_remote_servers.py (llama-cpp-python's)."""

import json
import re

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
    assert "a request a token, among its best alternatives (Only no echo" in lines["prompt log-probs"]


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


def test_a_cache_that_changes_the_numbers_is_found():
    found = probed("llama-cpp-python")
    assert found.n is False and found.seeded is False
    assert "after another prompt sharing its start it does not" in found.why["seeded"]
    assert found.scores and found.prompt_logprobs == "echo"


# -- replay: children by the server's rule, drift where a reply differs ------------------------


@pytest.mark.parametrize("flavour", ["vllm", "sglang"])
def test_replay_draws_child_k_by_the_servers_rule(capsys, monkeypatch, tmp_path, flavour):
    with ProbeServer(flavour) as server:
        flags = ["--backend", "openai", "--base-url", server.url, "--sessions-dir", str(tmp_path / "s")]
        script = "The keeper wrote\n/n 3\n"
        code, _, err = run_cli(
            capsys,
            "chat",
            "--session",
            "kids",
            "--max-tokens",
            "6",
            *flags,
            stdin=script,
            monkeypatch=monkeypatch,
        )
        assert code == 0, err
        for child in ("2", "3"):  # the cursor is the last child; each sibling replays alone
            session = SessionStore(tmp_path / "s").open("kids", read_only=True)
            kids = [n for n in session.tree.nodes.values() if (n.backend or {}).get("choice") is not None]
            node = next(n for n in kids if n.backend["choice"] == int(child) - 1)
            session.close()
            code, out, err = run_cli(capsys, "replay", "kids", "--node", node.id, *flags[4:])
            assert code == 0, out + err
            assert "reproduced 2/2 replies exactly" in out or "reproduced 1/1" in out


def test_replay_scores_a_reply_a_cache_changed(capsys, monkeypatch, tmp_path):
    with ProbeServer("llama-cpp-python") as server:
        flags = ["--backend", "openai", "--base-url", server.url, "--sessions-dir", str(tmp_path / "s")]
        code, _, err = run_cli(
            capsys,
            "chat",
            "--session",
            "lcp",
            "--max-tokens",
            "6",
            *flags,
            stdin="The keeper wrote\n",
            monkeypatch=monkeypatch,
        )
        assert code == 0, err
        with SessionStore(tmp_path / "s").open("lcp", read_only=True) as session:
            frame = session.tree.roots[0].text
        engine = RemoteEngine(RemoteConfig(server.url))  # another prompt with the same start
        engine.generate(" ".join(frame.split()[:3]) + " zebra", SamplingParams(max_new_tokens=1, seed=1))
        code, out, err = run_cli(capsys, "replay", "lcp", *flags[4:])
    assert code == 1, out + err
    assert "when probed, it did not repeat a seeded request (back to back it repeats, after" in err
    assert "differs at character" in out
    assert "stored tokens scored there: 6/6 tokens compared, log-probability drift max 0.0000" in out


def test_replay_on_another_engine_reports_agreement_and_drift(capsys, monkeypatch, tmp_path, tiny_dir):
    (tmp_path / "calm.yaml").write_text(
        'name: calm\nframe: "A talk.\\n\\n"\nspeakers: {user: Guest, model: Sage}\n'
    )
    flags = ["--sessions-dir", str(tmp_path / "s"), "-m", str(tiny_dir), "--dtype", "float32"]
    code, _, err = run_cli(
        capsys,
        "chat",
        "--persona",
        str(tmp_path / "calm.yaml"),
        "--session",
        "here",
        "--max-tokens",
        "8",
        "--seed",
        "3",
        *flags,
        stdin="Hello\n",
        monkeypatch=monkeypatch,
    )
    assert code == 0, err
    code, out, err = run_cli(capsys, "replay", "here", "--on", "local", *flags)  # the same engine
    assert code == 0, out + err
    assert "the same text; 8/8 tokens compared, log-probability drift max" in out
    assert float(re.search(r"drift max ([0-9.]+)", out).group(1)) < 1e-3  # a pass teacher-forced, in float32
    with ProbeServer("vllm") as server:  # a server of another model: nothing splits alike
        code, out, err = run_cli(
            capsys, "replay", "here", "--on", server.url, "--sessions-dir", str(tmp_path / "s")
        )
    assert code == 0, out + err
    assert "replies drawn again the same" in out and "tokens compared" not in out.split("\n")[-2]
    code, _, err = run_cli(capsys, "replay", "here", "--on", "gpu-box:8000", *flags)
    assert code == 2 and "--on 'gpu-box:8000': give a server's URL" in err
    code, _, err = run_cli(capsys, "replay", "here", "--on", "", *flags)
    assert code == 2 and "--on: give a server's URL" in err


@pytest.mark.parametrize("flavour", ["vllm", "llama-server"])
def test_compares_cross_logprobs_on_a_server_that_scores_prompts(capsys, tmp_path, flavour):
    with ProbeServer(flavour) as server:
        code, out, err = run_cli(
            capsys, "compare", "--personas", "interview,stage-play", "--turn", "The keeper wrote",
            "--samples", "3", "--max-tokens", "5", "--backend", "openai", "--base-url", server.url,
            "--sessions-dir", tmp_path / "s", "--report-dir", tmp_path / "r", "--json",
        )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    notes = " ".join(report["notes"])
    if flavour == "vllm":  # echo with logprobs: each variant's replies scored under each frame there
        assert set(report["cross_logprob"]["interview"]) == {"interview", "stage-play"}
        assert report["cross_logprob"]["interview"]["stage-play"]["n"] == 3
        assert "cross log-probabilities scored on the server" in notes
    else:
        assert report["cross_logprob"] == {}
        assert "its probe found none at " + server.url in notes


def test_without_prompt_logprobs_a_token_is_scored_a_request_at_a_time():
    from probe_server import VOCAB, logprobs_after, words

    from simlab.engine.scored import score_text

    with ProbeServer("llama-server") as server:
        engine = RemoteEngine(RemoteConfig(server.url))
        found = probe(engine)
        assert found.scoring == "forced" and "a request a token" in found.rows()[3][2]
        prompt, pieces = "The keeper wrote", [" in", " the", " log", "."]
        spans = score_text(engine, prompt, "".join(pieces), found.scoring, pieces)
    context = words(prompt)
    for span, piece in zip(spans, pieces):
        assert span.text == piece  # (the word model's own log-probability, exactly)
        assert span.logprob == logprobs_after(context)[VOCAB.index(piece)]
        context.append(piece)
    assert [s.start for s in spans] == [0, 3, 7, 11]


def test_the_stored_tokens_compared_are_the_replys_own_not_its_stop():
    from simlab.replay import stored_tokens
    from simlab.session.tree import Node

    pieces = [" Hello", " there", ".", "\n", "User", ":"]
    node = Node("n", None, "model", "Hello there.", finish_reason="stop", logprobs=(-1.0,) * 6,
                backend={"tokens": pieces})  # fmt: skip
    assert stored_tokens(node) == (pieces[:3], [-1.0] * 3)
    cut = Node("m", None, "model", "Hello there.", finish_reason="length", logprobs=(-1.0,) * 4,
               backend={"tokens": pieces[:4]})  # fmt: skip
    assert stored_tokens(cut) == (pieces[:4], [-1.0] * 4)  # (cut at max tokens: all of them are its own)


def served_chat(capsys, monkeypatch, tmp_path, server, script: str) -> str:
    code, out, err = run_cli(
        capsys, "chat", "--backend", "openai", "--base-url", server.url, "--sessions-dir", tmp_path / "s",
        "--max-tokens", "5", stdin=script, monkeypatch=monkeypatch,
    )  # fmt: skip
    assert code == 0, err
    return out + err


def test_tokens_of_a_servers_reply_say_what_its_numbers_are(capsys, monkeypatch, tmp_path):
    with ProbeServer("vllm") as server:
        said = served_chat(capsys, monkeypatch, tmp_path, server, "The keeper wrote\n/tokens\n")
    assert (
        "tokens as the server split them, with the probabilities it sent: the model's own, before the sampler"
        in said
    )


def test_siblings_that_repeat_on_a_greedy_server_are_said_so(capsys, monkeypatch, tmp_path):
    with ProbeServer("vllm", greedy=True) as server:
        assert probe(RemoteEngine(RemoteConfig(server.url))).seed_changes is False
        said = served_chat(capsys, monkeypatch, tmp_path, server, "The keeper wrote\n/n 2\n")
    assert (
        "the 2 new replies are one reply repeated: the server's probe found that another seed changes nothing"
        in said
    )
