"""`simlab loom` in a real pseudo-terminal at 80x24, read through a terminal emulator (pyte): open a
new document, sample 3 continuations, pick one, fork it at a token, edit, hide, bookmark, quit,
reopen: the same tree and cursor; resized, it redraws to the new size."""

import json
import re
import sys
import time
from pathlib import Path

import pytest
from conftest import pty_env

pexpect = pytest.importorskip("pexpect")
pyte = pytest.importorskip("pyte")

SIMLAB = Path(sys.executable).parent / "simlab"


class Terminal:
    def __init__(self, child, rows=24, cols=80):
        self.child, self.screen = child, pyte.Screen(cols, rows)
        self.stream = pyte.Stream(self.screen)

    def read(self) -> None:
        while True:
            try:
                self.stream.feed(self.child.read_nonblocking(65536, timeout=0.1))
            except pexpect.TIMEOUT:
                return

    def text(self) -> str:
        self.read()
        return "\n".join(self.screen.display)

    def wait(self, what, timeout=60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.text()
            if what(shown) if callable(what) else what in shown:
                return shown
        raise AssertionError(f"never shown: {what!r}; the screen:\n{self.text()}")

    def keys(self, *keys: str) -> None:
        for key in keys:
            self.child.send(key)
            time.sleep(0.2)
            self.read()


def spawn(tmp_path, model, *args, rows=24, cols=80):
    env = pty_env(tmp_path)
    argv = ["loom", *args, "--model", str(model), "--sessions-dir", str(tmp_path / "s")]
    child = pexpect.spawn(str(SIMLAB), argv, env=env, encoding="utf-8", timeout=60, dimensions=(rows, cols))
    return Terminal(child, rows, cols)


def records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "s" / "tale.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not SIMLAB.exists(), reason="the simlab command is not installed in this environment")
def test_a_document_grows_branches_and_comes_back_as_it_was(tmp_path, tiny_dir):
    term = spawn(
        tmp_path,
        tiny_dir,
        "--text",
        "Once upon a time",
        "--session",
        "tale",
        "--seed",
        "3",
        "--max-tokens",
        "6",
    )
    first = term.wait("? help")
    assert "Once upon a time" in first and len(first.splitlines()) == 24
    term.keys("g")
    shown = term.wait("3 saved")
    assert all(f"{i}. " in shown for i in (1, 2, 3))  # the sibling list
    term.keys("j", "t", "\x1b[C")  # the second continuation; the token view on its token 1
    assert "token 1 " in term.wait("token 1 ")
    term.keys("f")
    term.wait("branched")
    term.keys("t", "e", "\x1b[F", " THE END", "\x13")
    term.wait("edited")
    term.keys("b", "k", "!")
    term.wait("hidden")
    term.child.setwinsize(30, 100)
    term.screen.resize(30, 100)
    resized = term.wait(lambda s: len(s.splitlines()) == 30 and "? help" in s.splitlines()[-1])
    assert "Once upon a time" in resized
    term.keys("q")
    term.child.expect(pexpect.EOF)
    said = "\n".join(term.screen.display) + term.child.before  # (what the last keys' read took, and after)
    assert "saved: session tale" in said and "loom tale" in said  # how to open it again

    saved = records(tmp_path)
    nodes = {r["node"]["id"]: r["node"] for r in saved if r["type"] == "node"}
    sampled = [n for n in nodes.values() if n.get("origin") == "sampled"]
    assert len(sampled) == 4 and [n for n in sampled if n.get("forced")]  # 3 continuations and the fork
    [edited] = [n for n in nodes.values() if n.get("origin") == "edited"]
    assert edited["text"].endswith(" THE END")
    assert [r["tag"] for r in saved if r["type"] == "tag"] == ["bookmark"]
    assert len([r for r in saved if r["type"] == "hide"]) == 1
    cursor = [r["id"] for r in saved if r["type"] == "cursor"][-1]

    again = spawn(tmp_path, tiny_dir, "tale")
    reopened = again.wait("? help")
    assert nodes[cursor]["text"].replace("\n", "⏎")[:20] in reopened  # the cursor's node, in the tree
    again.keys("q")
    again.child.expect(pexpect.EOF)
    assert [r["id"] for r in records(tmp_path) if r["type"] == "cursor"][-1] == cursor


@pytest.mark.skipif(not SIMLAB.exists(), reason="the simlab command is not installed in this environment")
def test_blind_mode_hides_every_label_and_saves_the_ranking(tmp_path, tiny_dir, tiny_engine, capsys):
    from conftest import run_cli

    from simlab.engine.params import SamplingParams
    from simlab.persona.schema import Persona
    from simlab.session.store import SessionStore
    from simlab.turns import sample_replies, start_session

    store = SessionStore(tmp_path / "s")
    persona = Persona(name="quokka", frame="Two talk.\n\n", user="Ann", model="Bo")
    with start_session(store, persona, "tale") as session:
        user = session.add_child(session.tree.cursor, "user", "Say something.", speaker="Ann")
        replies = [
            sample_replies(
                tiny_engine, session, user.id, SamplingParams(temperature=t, seed=s, max_new_tokens=5)
            )[0]
            for t, s in ((0.5, 101), (0.9, 202), (1.3, 303))
        ]
        session.goto(replies[0].id)
    term = spawn(tmp_path, tiny_dir, "tale")
    term.wait("? help")
    term.keys("B")
    shown = term.wait("blind: 1-9 rank")
    body = shown.lower()
    for label in (
        "quokka",
        "seed",
        "t 0.",
        "t 1.",
        "101",
        "202",
        "303",
        "tiny-gpt2",
        "bo:",
        "? help",
        "depth",
    ):
        assert label not in body, (label, shown)  # persona, temperature, seed, model, speaker, status line
    assert all(f"│{k}." in shown for k in (1, 2, 3))  # every reply, by its text alone
    for reply in replies:
        assert re.findall(r"[A-Za-z]{3,}", reply.text)[0] in shown
    term.keys("2", "1")
    assert "(1st)" in term.text() and "(2nd)" in term.text()
    term.keys("\r")
    said = term.wait("saved (blind:")
    term.keys("q")
    term.child.expect(pexpect.EOF)
    tags = [r for r in records(tmp_path) if r["type"] == "tag"]
    ranks = {r["id"]: r["tag"].rsplit(":", 1)[1] for r in tags}
    assert (
        len(tags) == 3 and sorted(ranks.values()) == ["-", "1", "2"] and set(ranks) == {r.id for r in replies}
    )
    best = next(r for r in replies if ranks[r.id] == "1")
    assert f"seed {best.seed}" in " ".join(said.split())  # said once saved, not before
    code, out, err = run_cli(capsys, "compare", "--blind", "tale", "--sessions-dir", tmp_path / "s")
    temperature = best.params["temperature"]
    assert (
        code == 0
        and "1 blind comparison(s)" in out
        and f"quokka · T {temperature} · unsteered     1 of 1" in out
    ), out
