"""The remote backend against a real server: `transformers serve` started here on 127.0.0.1 with a
locally saved tiny GPT-2 (no downloads). That server ignores `n` and `logprobs`, so the fallbacks
are what runs. Only the logprob parsing, which it never produces, uses a recorded response."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from conftest import build_tiny_gpt2, run_cli

from simlab.engine.client import served_tokens as _tokens
from simlab.engine.params import SamplingParams
from simlab.engine.remote import RemoteConfig, RemoteEngine
from simlab.errors import RemoteError

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
SERVE = Path(sys.executable).parent / "transformers"
KEY = "sekrit-key-never-stored"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sampling_model(folder: Path, **kwargs) -> Path:
    """The tiny GPT-2, sampling by default (transformers serve samples only if generation_config says so)."""
    build_tiny_gpt2(folder, **kwargs)
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, "do_sample": True}))
    return folder


def start_server(folder: Path, tmp: Path):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf"), "TRANSFORMERS_VERBOSITY": "error"}
    log = open(tmp / f"serve-{port}.log", "w")
    process = subprocess.Popen(
        [
            str(SERVE),
            "serve",
            str(folder),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
            "--dtype",
            "float32",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"transformers serve exited: {(tmp / f'serve-{port}.log').read_text()[-2000:]}"
            )
        try:
            urllib.request.urlopen(url + "/models", timeout=2).read()
            return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("transformers serve did not come up in 120 s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not SERVE.exists():
        pytest.skip("the transformers command is not installed here")
    tmp = tmp_path_factory.mktemp("serve")
    folder = sampling_model(tmp / "tiny-served")
    process, url = start_server(folder, tmp)
    yield url, str(folder)
    process.terminate()
    process.wait(timeout=30)


def remote_flags(server):
    url, _ = server
    return ["--backend", "openai", "--base-url", url]


def test_generate_streams_and_a_seed_repeats(capsys, server):
    code, first, err = run_cli(
        capsys, "generate", "Hello there", *remote_flags(server), "--max-tokens", "12", "--seed", "7"
    )
    assert code == 0, err
    assert first.strip() and "Traceback" not in err
    _, again, _ = run_cli(
        capsys, "generate", "Hello there", *remote_flags(server), "--max-tokens", "12", "--seed", "7"
    )
    _, other, _ = run_cli(
        capsys, "generate", "Hello there", *remote_flags(server), "--max-tokens", "12", "--seed", "8"
    )
    assert again == first  # this server honours seed for one request at a time
    assert other != first


def test_n_falls_back_to_one_request_per_sibling(capsys, server):
    url, model = server
    engine = RemoteEngine(RemoteConfig(url))
    assert engine.info.name == model  # the server's only model, found through /v1/models
    params = SamplingParams(max_new_tokens=10, seed=20)
    completions = engine.generate("Once upon a time", params, n=3)
    assert engine.honoured["n"] is False  # the server answered one choice for n=3
    assert [c.seed for c in completions] == [20, 21, 22]
    [alone] = engine.generate("Once upon a time", params, n=1)
    # the first sibling is what it would be alone (streamed, this server drops a broken last character)
    assert alone.text.rstrip("\ufffd") == completions[0].text.rstrip("\ufffd")
    # (the others went out at once; this server shares one random generator across requests, so
    # concurrent siblings do not repeat exactly; vLLM seeds each request on its own)
    assert len({c.text for c in completions}) > 1
    assert all(
        c.finish_reason in ("length", "stop", "eos") and c.server["model"] == model for c in completions
    )
    assert "logprobs" not in engine.honoured  # it sent none, so none are recorded


def test_stop_strings_cut_the_text(server):
    url, _ = server
    engine = RemoteEngine(RemoteConfig(url))
    params = SamplingParams(max_new_tokens=30, seed=5)
    [full] = engine.generate("The sea", params)
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    assert stop.strip()
    run = engine.start("The sea", params.with_overrides(stop=(stop,)))
    streamed = "".join(delta.text for delta in run)
    [cut] = run.completions
    assert cut.text == streamed == full.text[: full.text.index(stop)]
    assert cut.finish_reason == "stop" and cut.stop_string == stop


def test_chat_through_the_server_records_it_and_never_the_key(tmp_path, server):
    url, model = server
    persona = tmp_path / "p.yaml"
    persona.write_text('name: p\nframe: "A chat.\\n\\n"\nspeakers: {user: User, model: Bot}\ngreeting: Hi.\n')
    env = {**os.environ, "SIMLAB_HOME": str(tmp_path / "home"), "NO_COLOR": "1", "SIMLAB_API_KEY": KEY}
    lines = "hello\n/n 2\nand then?\n/tokens\n"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "simlab",
            "chat",
            "--backend",
            "openai",
            "--base-url",
            url,
            "--persona",
            str(persona),
            "--session",
            "remote",
            "--sessions-dir",
            str(tmp_path / "s"),
            "--seed",
            "3",
            "--max-tokens",
            "8",
        ],
        input=lines,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "Traceback" not in done.stderr
    assert done.returncode == 2  # /tokens has nothing to show: one clear line, the rest ran
    assert "no log-probabilities from this server" in done.stderr
    text = (tmp_path / "s" / "remote.jsonl").read_text()
    assert KEY not in text
    replies = [
        r["node"]
        for r in map(json.loads, text.splitlines())
        if r["type"] == "node" and r["node"].get("origin") == "sampled"
    ]
    assert len(replies) == 4
    for reply in replies:
        assert reply["backend"]["base_url"] == url and reply["backend"]["model"] == model
        assert reply["model"] == model and "token_ids" not in reply and "dtype" not in reply
    assert [r["seed"] for r in replies] == [3, 4, 5, 6]

    # no --backend: the replies say which server they came from
    replay = subprocess.run(
        [sys.executable, "-m", "simlab", "replay", "remote", "--sessions-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "these replies came from a server" in replay.stderr
    assert "when probed, it repeated seeded requests" in replay.stderr  # (the map the chat stored)
    assert "reproduced 2/2 replies exactly" in replay.stdout, replay.stdout  # like with like: no label space
    assert "Traceback" not in replay.stderr

    resumed = subprocess.run(
        [sys.executable, "-m", "simlab", "chat", "--resume", "remote", "--sessions-dir", str(tmp_path / "s")],
        input="one more\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr
    last = [
        r["node"]
        for r in map(json.loads, (tmp_path / "s" / "remote.jsonl").read_text().splitlines())
        if r["type"] == "node"
    ][-1]
    assert last["backend"]["base_url"] == url  # the resumed chat went back to the server


def test_compare_fans_out_and_never_double_counts(capsys, tmp_path, server):
    for name, speaker in (("calm", "Sage"), ("loud", "Shouter")):
        (tmp_path / f"{name}.yaml").write_text(
            f'name: {name}\nframe: "A talk.\\n\\n"\nspeakers: {{user: Guest, model: {speaker}}}\n'
        )
    personas = f"{tmp_path / 'calm.yaml'},{tmp_path / 'loud.yaml'}"
    argv = [
        "compare",
        "--personas",
        personas,
        "--turn",
        "Hello?",
        "--turn",
        "And?",
        "--samples",
        "3",
        "--max-tokens",
        "6",
        "--sessions-dir",
        tmp_path / "s",
        "--report-dir",
        tmp_path / "r",
        "--json",
        *remote_flags(server),
    ]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    report = json.loads(out)
    assert "need a local model" in " ".join(report["notes"])
    [session] = (tmp_path / "s").glob("compare-*.jsonl")
    nodes = [r["node"] for r in map(json.loads, session.read_text().splitlines()) if r["type"] == "node"]
    replies = [n for n in nodes if n.get("origin") == "sampled"]
    assert len(replies) == 2 * 3 * 2
    code, _, err = run_cli(capsys, *argv)  # a rerun finds every sample saved and asks the server nothing
    assert code == 0 and "Traceback" not in err
    again = [r for r in session.read_text().splitlines() if '"origin":"sampled"' in r]
    assert len(again) == len(replies)


def test_local_only_features_say_so(capsys, tmp_path, server):
    code, _, err = run_cli(capsys, "generate", "Hi", *remote_flags(server), "--trace")
    assert code == 2 and "needs a local model" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--base-url", "http://127.0.0.1:{dead}/v1"], "cannot reach the server"),
        (["--base-url", "ftp://example.org"], "give an http(s) URL"),
        (["--base-url", "{url}", "--model", "no-such-model"], "does not serve 'no-such-model'"),
        ([], "needs the server's URL"),
    ],
)
def test_server_errors_are_one_line(capsys, server, argv, needle):
    url, _ = server
    argv = [a.format(url=url, dead=free_port()) for a in argv]
    code, _, err = run_cli(capsys, "generate", "Hi", "--backend", "openai", *argv)
    assert code == 2 and needle in err and err.count("\n") == 1, err


class Garbage(BaseHTTPRequestHandler):
    """A server that is not OpenAI-compatible: 200 with HTML, and a 503 that never recovers."""

    def do_GET(self):
        self._answer(200, b'{"data": [{"id": "m"}]}')

    def do_POST(self):
        if "broken" in self.server.mode:
            self._answer(503, b'{"error": {"message": "overloaded"}}')
        else:
            self._answer(200, b"<html>not json</html>")

    def _answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("mode, needle", [("html", "not JSON"), ("broken", "HTTP 503: overloaded")])
def test_a_server_that_answers_badly_is_one_line(capsys, mode, needle):
    httpd = HTTPServer(("127.0.0.1", 0), Garbage)
    httpd.mode = mode
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        started = time.perf_counter()
        code, _, err = run_cli(
            capsys,
            "generate",
            "Hi",
            "-n",
            "2",
            "--backend",
            "openai",
            "--base-url",
            f"http://127.0.0.1:{httpd.server_port}/v1",
        )
        assert code == 2 and needle in err and err.count("\n") == 1, err
        assert time.perf_counter() - started < 30  # the 503 was retried with backoff, a few times only
    finally:
        httpd.shutdown()


def test_a_server_killed_mid_stream_leaves_an_interrupted_partial_reply(tmp_path):
    """Through the REPL's own reply path: the partial reply is saved as an interrupted node."""
    import io

    from simlab.persona.schema import Persona
    from simlab.repl.screen import LineView
    from simlab.repl.state import Chat
    from simlab.session.store import SessionStore

    if not SERVE.exists():
        pytest.skip("the transformers command is not installed here")
    folder = sampling_model(tmp_path / "long", n_positions=4200, with_eos=False)
    process, url = start_server(folder, tmp_path)

    class KillsTheServer(io.StringIO):
        def write(self, text):
            if len(self.getvalue()) > 60 and process.poll() is None:
                process.kill()  # the stream is cut while the reply is being written
            return super().write(text)

    try:
        engine = RemoteEngine(RemoteConfig(url, timeout=20))
        persona = Persona(
            name="p",
            frame="A long story.\n\n",
            user="User",
            model="Teller",
            sampling={"max_tokens": 4000},
            stop=("~~never~~",),
        )
        out = KillsTheServer()
        chat = Chat.new(
            engine, SessionStore(tmp_path / "s"), persona, persona.sampling_params(seed=1), LineView(out)
        )
        [reply] = chat.user_turn("Tell me everything.")
        assert reply.finish_reason == "interrupted" and len(reply.text) > 20
        assert reply.backend["base_url"] == url
        assert "the stream from" in out.getvalue() or "cut" in out.getvalue()
        chat.session.close()
        reopened = SessionStore(tmp_path / "s").open(chat.session.name, read_only=True)
        assert reopened.tree.get(reply.id).text == reply.text
    finally:
        process.kill()
        process.wait()


def test_logprobs_in_the_legacy_format_are_parsed():
    # a vLLM /v1/completions choice with logprobs=2 (recorded; transformers serve sends none)
    recorded = {
        "text": " the sea",
        "index": 0,
        "finish_reason": "length",
        "stop_reason": None,
        "logprobs": {
            "text_offset": [0, 4],
            "tokens": [" the", " sea"],
            "token_logprobs": [-0.5, -1.25],
            "top_logprobs": [{" the": -0.5, " a": -1.5}, {" sea": -1.25, " sky": -0.75}],
        },
    }
    tokens = _tokens(recorded["logprobs"])
    assert [(t.id, t.text, t.logprob) for t in tokens] == [(-1, " the", -0.5), (-1, " sea", -1.25)]
    assert tokens[1].top == ((-1, " sky", -0.75), (-1, " sea", -1.25))  # best first
    assert _tokens({"tokens": [" a"], "token_logprobs": [None]}) == []  # partial: not recorded at all
    assert _tokens(None) == [] and _tokens({"tokens": "x"}) == []
    # llama.cpp's server (tools/server/server-task.cpp): chat-style entries with each token's bytes;
    # a token that ends inside a character has its text cut to whole characters, its bytes are all there
    llama = {
        "content": [
            {"id": 9, "token": " a", "bytes": [32, 97], "logprob": -0.25,
             "top_logprobs": [{"id": 9, "token": " a", "bytes": [32, 97], "logprob": -0.25},
                              {"id": 4, "token": " b", "bytes": [32, 98], "logprob": -2.0}]},
            {"id": 7, "token": " ", "bytes": [32, 0xF0, 0x9F], "logprob": -1.0, "top_logprobs": []},
            {"id": 8, "token": "", "bytes": [0x98, 0x80], "logprob": -0.5, "top_logprobs": []},
        ]
    }  # fmt: skip
    tokens = _tokens(llama)
    assert [(t.id, t.text, t.logprob) for t in tokens] == [
        (-1, " a", -0.25),
        (-1, " ", -1.0),
        (-1, "😀", -0.5),
    ]
    assert tokens[0].top == ((-1, " a", -0.25), (-1, " b", -2.0))
    assert _tokens({"content": [{"token": "x", "logprob": None}]}) == []


def test_a_compare_spec_can_name_the_server(capsys, tmp_path, server):
    url, _ = server
    (tmp_path / "calm.yaml").write_text(
        'name: calm\nframe: "A talk.\\n\\n"\nspeakers: {user: Guest, model: Sage}\n'
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"base_url: {url}\nturns: [Hi]\nsamples: 2\nvariants: [{tmp_path / 'calm.yaml'}]\n"
        "sampling: {max_tokens: 4}\n"
    )
    code, _, err = run_cli(
        capsys, "compare", spec, "--sessions-dir", tmp_path / "s", "--report-dir", tmp_path / "r"
    )
    assert code == 0, err
    [session] = (tmp_path / "s").glob("compare-*.jsonl")
    assert session.read_text().count(f'"base_url":"{url}"') == 3  # two replies and the server's map
    assert session.read_text().count('{"type":"server"') == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_url: localhost:8000\nturns: [Hi]\nvariants: [interview]\n")
    code, _, err = run_cli(capsys, "compare", bad)
    assert code == 2 and "base_url: must be a server's http(s) URL" in err


def test_a_server_that_never_answers_times_out_in_one_line():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections are queued, never answered
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        started = time.perf_counter()
        with pytest.raises(RemoteError, match="did not answer within 1 s"):
            RemoteEngine(RemoteConfig(url, timeout=1))
        assert time.perf_counter() - started < 10
    finally:
        silent.close()


def test_doctor_checks_the_server(capsys, server):
    url, model = server
    code, out, _ = run_cli(capsys, "doctor", *remote_flags(server))
    assert f"ok    server            {url} serves {model}" in out
    assert "warn  n                 ignored: simlab sends one request per sibling" in out  # (the probe)
    code, out, _ = run_cli(
        capsys, "doctor", "--backend", "openai", "--base-url", f"http://127.0.0.1:{free_port()}/v1"
    )
    assert code == 1 and "FAIL  server" in out and "cannot reach the server" in out


def test_one_request_at_a_time_makes_every_sibling_repeat(capsys, server):
    common = [
        "generate",
        "Once upon a time",
        *remote_flags(server),
        "--max-tokens",
        "10",
        "--concurrency",
        "1",
    ]
    code, out, err = run_cli(capsys, *common, "-n", "3", "--seed", "20", "--json")
    assert code == 0, err
    siblings = json.loads(out)["completions"]
    assert [c["seed"] for c in siblings] == [20, 21, 22]
    for c in siblings:  # each as it would be alone (this server drops a broken last character when streaming)
        _, alone, _ = run_cli(capsys, *common, "--seed", str(c["seed"]))
        assert alone.rstrip("\n").rstrip("\ufffd") == c["text"].rstrip("\ufffd")
    code, _, err = run_cli(capsys, *common, "--concurrency", "0")
    assert code == 2 and "concurrency '0' is not valid" in err
