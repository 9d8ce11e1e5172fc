"""Against llama.cpp's own server (`llama-server`) on the embedded GGUF, where one is installed: set
LLAMA_SERVER to its path, or have it on PATH (building it takes ~15 minutes on 2 cores, so CI does
not; tests/tokenize_server.py stands in for it there). Its /tokenize splits as the embedded
model's own tokenizer does, its context comes from /v1/models, and a chat longer than it slides."""

import os
import shutil
import subprocess

import pytest
from conftest import free_local_port, run_cli, wait_for_server

from simlab.config import Settings
from simlab.engine.remote import RemoteConfig, RemoteEngine
from simlab.models.gguf import source_file
from simlab.models.load import load_tokenizer
from simlab.session.store import SessionStore

pytestmark = pytest.mark.slow
BINARY = os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    if not BINARY:
        pytest.skip("llama.cpp's llama-server is not installed here (LLAMA_SERVER or PATH)")
    port = free_local_port()
    log = open(tmp_path_factory.mktemp("llama") / "server.log", "w")
    with source_file("embedded") as gguf:
        process = subprocess.Popen(
            [BINARY, "-m", str(gguf), "--port", str(port), "-c", "512", "-np", "1", "-t", "2"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        wait_for_server(process, url + "/health", "llama-server")
        yield url + "/v1"
        process.terminate()
        process.wait(timeout=30)


def test_its_tokenize_matches_the_embedded_tokenizer_and_says_its_context(llama_server):
    engine = RemoteEngine(RemoteConfig(llama_server))
    assert "llama.cpp" in engine.info.tokenizer
    assert engine.info.context_length == 512 and engine.info.context_from == "/v1/models"
    hf = load_tokenizer("embedded", Settings())
    for text in ["Hello, world", "naïve café — 😀 中文\n\n  spaces", "Interviewer: What now?\n\nMara:"]:
        pieces = engine.tokenizer.pieces(text)
        assert [p.id for p in pieces] == hf(text, add_special_tokens=False)["input_ids"]
        assert pieces[-1].end == len(text)
    assert engine.encode("Hi")[0] == hf.bos_token_id  # a prompt is counted as the server reads it


def test_a_long_chat_on_it_slides_instead_of_failing(capsys, monkeypatch, tmp_path, llama_server):
    turns = "".join(
        f"Tell me about item {k}: its size, colour, weight, age and what it is for.\n" for k in range(12)
    )
    code, out, err = run_cli(
        capsys, "chat", "--backend", "openai", "--base-url", llama_server, "--persona", "interview",
        "--session", "long", "--sessions-dir", tmp_path / "s", "--max-tokens", "40", "--seed", "1",
        stdin=turns + "/info\n", monkeypatch=monkeypatch,
    )  # fmt: skip
    assert code == 0 and "Traceback" not in err, err
    session = SessionStore(tmp_path / "s").open("long")
    replies = [n for n in session.tree.nodes.values() if n.origin == "sampled"]
    assert len(replies) == 12 and any(r.window for r in replies)
    assert "counted by the server's /tokenize (llama.cpp)" in out + err
    assert all(r.logprobs and len(r.backend["tokens"]) == len(r.logprobs) for r in replies)  # its format


def test_the_probe_finds_what_it_does(llama_server):
    """llama-server: n_probs log-probabilities with token ids, no echo (so stored tokens are scored a
    request a token), its context in /v1/models."""
    from simlab.engine.probe import probe

    found = probe(RemoteEngine(RemoteConfig(llama_server)))
    assert found.logprobs >= 1 and found.token_ids
    assert found.prompt_logprobs == "" and found.scoring == "forced"
    assert (found.context_length, found.context_from) == (512, "/v1/models")
