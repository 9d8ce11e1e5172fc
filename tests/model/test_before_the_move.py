"""A session written by simlab before the one-house move (f1b0cb4) still loads, exports, checks and
replays byte for byte (log-probabilities to within float32's last bit, which moves between AVX2 and
AVX-512 CPUs): tests/fixtures/before-the-move/ holds the file, and what that simlab made of it.

replayed.jsonl was made again once since, when a prompt's last token started going through the model
alone (engine.local.Run.prefill): the same tokens, and each reply's first log-probability moved in its
last bits (e.g. -5.908044338 -> -5.908043861); and again when replies began to record those passes
(`prefill`), so a replay feeds a prompt as the reply's own run did. export.loom was made again
when Loom's `generation.logprobs.tokens` became each token's own part of the text (it had been the
best alternative's text, which is not the sampled token where that was not the likeliest): only
`tokens` lists changed."""

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import build_tiny_gpt2

FIXTURE = Path(__file__).parents[1] / "fixtures" / "before-the-move"
REVISION = "local-582ed962ae2a"  # the fixture model's folder when the fixture was made


@pytest.fixture(scope="module")
def fixture_engine(tmp_path_factory):
    """The tiny GPT-2 the fixture was sampled from (160-token context, no EOS), rebuilt from its seed."""
    from simlab.config import Settings
    from simlab.engine.local import Engine
    from simlab.models.load import load_model

    folder = build_tiny_gpt2(tmp_path_factory.mktemp("fixture-gpt2"), n_positions=160, with_eos=False)
    return Engine(load_model(str(folder), Settings(device="cpu", dtype="float32")))


@pytest.fixture
def folder(tmp_path):
    shutil.copy(FIXTURE / "session.jsonl", tmp_path / "session.jsonl")
    return tmp_path


@pytest.fixture
def utc(monkeypatch):
    """Loom's creation_timestamp is written in local time, as pyloom writes it: fix the zone."""
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


LOGPROB = re.compile(rb"-?[0-9]+\.[0-9]{6,}")


def logprobs_apart(raw: bytes) -> tuple[bytes, list[float]]:
    """The bytes with each log-probability as L, and the log-probabilities: float32 products round
    differently on AVX2 and AVX-512 CPUs, so their last bit moves (-5.908044338 -> -5.908043861)."""
    return LOGPROB.sub(b"L", raw), [float(x) for x in LOGPROB.findall(raw)]


def normalised(raw: bytes, model: str, revision: str) -> bytes:
    """The bytes with node ids numbered by first appearance, creation times zeroed and the model's
    folder (a temporary path) and revision (its files' times) named: the rest must match byte for byte."""
    names: dict[bytes, bytes] = {}
    raw = re.sub(rb'"created":[0-9.e+-]+', b'"created":0', raw)
    raw = raw.replace(json.dumps(model).encode(), b'"MODEL"').replace(json.dumps(revision).encode(), b'"REV"')
    return re.sub(rb"\b[0-9a-f]{32}\b", lambda m: names.setdefault(m.group(0), b"id%d" % len(names)), raw)


def test_the_file_opens_for_writing_and_closes_unchanged(folder):
    from simlab.session.store import SessionStore

    before = (folder / "session.jsonl").read_bytes()
    with SessionStore(folder).open("session") as session:
        assert not session.problems and len(session.tree.nodes) == 22
    assert (folder / "session.jsonl").read_bytes() == before


@pytest.mark.parametrize("fmt", ["md", "yaml", "loom"])
def test_exports_are_byte_identical(folder, fmt, capsys, utc):
    from simlab.cli.main import main

    assert main(["sessions", "export", "session", "--format", fmt, "--sessions-dir", str(folder)]) == 0
    assert capsys.readouterr().out == (FIXTURE / f"export.{fmt}").read_text(encoding="utf-8")


def test_every_path_checks_as_it_did(folder, fixture_engine):
    from simlab.replay import check_path
    from simlab.session.store import SessionStore

    session = SessionStore(folder).open("session", read_only=True)
    tree = session.tree
    leaves = [n for n in tree.nodes.values() if not tree.children(n.id, include_hidden=True)]
    checks = [c for leaf in leaves for c in check_path(fixture_engine, session, tree.path(leaf.id))]
    rows = sorted({(c.node.id, c.reproduced, c.first_difference) for c in checks})
    assert [list(r) for r in rows] == json.loads((FIXTURE / "checks.json").read_text())


def test_a_replayed_branch_writes_the_same_records(folder, fixture_engine):
    from simlab.replay import replay_branch
    from simlab.session.store import SessionStore

    before = (folder / "session.jsonl").read_bytes()
    with SessionStore(folder).open("session") as session:
        replay_branch(fixture_engine, session, session.tree.path(session.tree.cursor), {"temperature": 0.7})
    added = (folder / "session.jsonl").read_bytes()[len(before) :]
    expected = (FIXTURE / "replayed.jsonl").read_bytes()
    info = fixture_engine.info
    got, got_logprobs = logprobs_apart(normalised(added, info.spec, info.revision))
    want, want_logprobs = logprobs_apart(normalised(expected, "/tmp/fixture-gpt2", REVISION))
    assert got == want and len(want_logprobs) > 20
    assert got_logprobs == pytest.approx(want_logprobs, abs=1e-5)
