"""`simlab sessions hide|unhide|bookmark|canonical ...`: marks set from the command line, kept in the
file and in a Loom export."""

import json

from conftest import run_cli

from simlab.persona.schema import Persona
from simlab.session.store import SessionStore
from simlab.turns import sample_replies, start_session

PERSONA = Persona(name="duo", frame="Two people talk.\n\n", user="Ann", model="Bo")


def test_marks_from_the_command_line(capsys, store, fake_engine):
    with start_session(store, PERSONA, "marked") as s:
        user = s.add_child(s.tree.cursor, "user", "hi", speaker="Ann")
        first, second = sample_replies(fake_engine, s, user.id, PERSONA.sampling_params(seed=1), n=2)
        s.goto(second.id)
    folder = ["--sessions-dir", store.folder]
    code, _, err = run_cli(capsys, "sessions", "canonical", "marked", first.id[:8], *folder)
    assert code == 0 and f"canonical: {first.id[:8]}" in err
    code, _, err = run_cli(capsys, "sessions", "hide", "marked", second.id[:8], *folder)
    assert code == 0
    tree = SessionStore(store.folder).open("marked", read_only=True).tree
    assert "canonical" in tree.get(first.id).tags and tree.get(second.id).hidden
    assert tree.cursor == user.id  # the cursor left the hidden branch
    code, out, _ = run_cli(capsys, "sessions", "export", "marked", "--format", "loom", *folder)
    loom = json.loads(out)
    assert first.id in loom["canonical"]
    code, out, _ = run_cli(capsys, "sessions", "show", "marked", "--tree", *folder)
    assert second.id[:8] not in out and "✓" in out
    code, _, _ = run_cli(capsys, "sessions", "unhide", "marked", second.id[:8], *folder)
    assert not SessionStore(store.folder).open("marked", read_only=True).tree.get(second.id).hidden
    code, _, err = run_cli(capsys, "sessions", "hide", "marked", "zzzz", *folder)
    assert code == 2 and "no node 'zzzz'" in err and "Traceback" not in err


def test_the_session_list_previews_what_is_not_hidden(store, fake_engine):
    with start_session(store, PERSONA, "preview") as s:
        first = s.add_child(s.tree.cursor, "user", "pruned away", speaker="Ann")
        s.add_child(s.tree.cursor, "user", "kept", speaker="Ann")
        s.set_hidden(first.id)
    [summary] = [r for r in SessionStore(store.folder).list() if r.name == "preview"]
    assert summary.first_text == "kept"
