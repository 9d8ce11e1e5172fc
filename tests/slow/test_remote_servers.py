"""Against llama-cpp-python's own server (`python -m llama_cpp.server`, the one many people start)
on the embedded GGUF, where llama-cpp-python is installed (a source build of 10-25 minutes on two
cores, so CI skips it: tests/probe_server.py and tests/tokenize_server.py stand in for its shape).
What the probe finds there, a chat's token counts, and a local session replayed on it."""

import re
import subprocess
import sys

import pytest
from conftest import free_local_port, run_cli, wait_for_server

from simlab.engine.probe import probe
from simlab.engine.remote import RemoteConfig, RemoteEngine
from simlab.models.gguf import source_file

pytestmark = pytest.mark.slow
pytest.importorskip(
    "llama_cpp.server.app",
    reason="llama-cpp-python[server] is not installed here (a source build; not in CI)",
)


@pytest.fixture(scope="module")
def lcp_server(tmp_path_factory):
    port = free_local_port()
    log = open(tmp_path_factory.mktemp("lcp") / "server.log", "w")
    with source_file("embedded") as gguf:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(port),
             "--n_ctx", "1024", "--n_threads", "2"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/v1"
        wait_for_server(process, url + "/models", "python -m llama_cpp.server")
        yield url
        process.terminate()
        process.wait(timeout=30)


def test_the_probe_finds_what_it_does(lcp_server):
    found = probe(RemoteEngine(RemoteConfig(lcp_server)))
    assert found.n is False  # one choice whatever n is
    assert (
        found.seeded is False and "after another prompt sharing its start it does not" in found.why["seeded"]
    )
    assert (found.logprobs, found.logprobs_kind) == (5, "raw")
    assert found.prompt_logprobs == "echo" and found.scores
    assert found.usage and "/extras/tokenize" in found.tokenizer and found.context_from == ""


def test_a_local_session_replayed_on_it_drifts_little(capsys, monkeypatch, tmp_path, lcp_server):
    flags = ["--sessions-dir", str(tmp_path / "s")]
    code, _, err = run_cli(
        capsys, "chat", "--persona", "interview", "--session", "here", "--max-tokens", "12", "--seed", "5",
        *flags, stdin="Where were you on the night of the storm?\n", monkeypatch=monkeypatch,
    )  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli(capsys, "replay", "here", "--on", lcp_server, *flags)
    assert code == 0, out + err
    compared, total = map(int, re.search(r"(\d+)/(\d+) tokens compared", out).groups())
    assert compared >= total - 1  # the same tokenizer splits the reply alike
    assert float(re.search(r"mean ([0-9.]+)\n", out).group(1)) < 0.2  # the same GGUF, other kernels
