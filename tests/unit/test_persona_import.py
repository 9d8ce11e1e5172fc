"""Importers: text-generation-webui, Pygmalion, Tavern V1/V2/V3 as JSON and as PNG text chunks."""

import base64
import json
import struct
import zlib

import pytest
from conftest import png_with_card

from simlab.errors import PersonaError
from simlab.persona.cards import PNG_SIGNATURE, import_file

V1 = {
    "name": "Captain Vell",
    "description": "{{char}} is an old sky-pirate.",
    "personality": "gruff, loyal",
    "scenario": "{{user}} stows away on <BOT>'s airship.",
    "first_mes": "Who let you aboard, {{user}}?",
    "mes_example": "<START>\n{{user}}: Where are we going?\n{{char}}: Wherever the wind pays best.",
}

V2 = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        **V1,
        "creator_notes": "Best at temperature 0.9",
        "system_prompt": "{{original}}Stay in character.",
        "post_history_instructions": "Keep replies short.",
        "alternate_greetings": ["Oi! Stowaway!"],
        "character_book": {
            "entries": [
                {
                    "keys": ["airship"],
                    "content": "The Gull, a patched zeppelin.",
                    "enabled": True,
                    "insertion_order": 0,
                    "extensions": {},
                }
            ]
        },
        "tags": ["pirate", "adventure"],
        "creator": "someone",
        "character_version": "1.2",
        "extensions": {"depth_prompt": {"depth": 4, "prompt": "..."}, "fav": True},
    },
}


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_tavern_v1_json(tmp_path):
    persona, fmt = import_file(write(tmp_path, "vell.json", json.dumps(V1)))
    assert fmt == "tavern-v1" and persona.name == "captain-vell" and persona.model == "Captain Vell"
    frame = persona.render_frame()
    assert (
        "Captain Vell is an old sky-pirate." in frame and "Captain Vell's personality: gruff, loyal" in frame
    )
    assert "Scenario: User stows away on Captain Vell's airship." in frame  # <BOT> became {{char}}
    assert "User: Where are we going?\nCaptain Vell: Wherever the wind pays best." in frame
    assert persona.greetings() == ["Who let you aboard, User?"]


def test_tavern_v2_keeps_everything_it_does_not_use(tmp_path):
    persona, fmt = import_file(write(tmp_path, "vell.json", json.dumps(V2)), name="vell")
    assert fmt == "tavern-v2" and persona.name == "vell"
    assert (
        persona.system_prompt == "Stay in character."
        and persona.post_history_instructions == "Keep replies short."
    )
    assert persona.greetings() == ["Who let you aboard, User?", "Oi! Stowaway!"]
    assert (
        persona.tags == ("pirate", "adventure") and persona.creator == "someone" and persona.version == "1.2"
    )
    ext = persona.extensions
    assert ext["depth_prompt"] == {"depth": 4, "prompt": "..."} and ext["fav"] is True  # as given
    unused = ext["simlab_import"]["unused"]
    assert unused["character_book"] == V2["data"]["character_book"]
    assert unused["creator_notes"] == "Best at temperature 0.9" and unused["spec"] == "chara_card_v2"
    assert persona.render_frame().startswith("Stay in character.\n\nCaptain Vell is an old sky-pirate.")


def test_tavern_v3_in_a_png_ccv3_chunk_wins_over_chara(tmp_path):
    v3 = {
        "spec": "chara_card_v3",
        "spec_version": "3.0",
        "data": {
            **V2["data"],
            "name": "Vell Three",
            "nickname": "V",
            "group_only_greetings": ["All hands!"],
            "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
            "creation_date": 1700000000,
        },
    }
    raw = png_with_card(V2, "chara")
    # add a ccv3 chunk before IEND, as SillyTavern writes both
    iend = raw.rindex(b"IEND") - 4
    body = b"ccv3\0" + base64.b64encode(json.dumps(v3).encode())
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    persona, fmt = import_file(write(tmp_path, "card.png", raw[:iend] + chunk + raw[iend:]))
    assert fmt == "tavern-v3" and persona.model == "V"  # V3: the nickname is {{char}} in the prompt
    unused = persona.extensions["simlab_import"]["unused"]
    assert "nickname" not in unused and unused["group_only_greetings"] == ["All hands!"]
    assert persona.extensions["simlab_import"]["card_name"] == "Vell Three"  # the display name is kept
    v2 = {"spec": "chara_card_v2", "data": {"name": "Ann Lee", "nickname": "Annie", "first_mes": "Hi."}}
    persona, _ = import_file(write(tmp_path, "v2.json", json.dumps(v2)))
    assert persona.model == "Ann Lee" and persona.extensions["simlab_import"]["unused"]["nickname"] == "Annie"
    assert unused["assets"][0]["uri"] == "ccdefault:" and unused["creation_date"] == 1700000000


def test_tavern_v2_in_a_png_chara_chunk(tmp_path):
    persona, fmt = import_file(write(tmp_path, "card.png", png_with_card(V2)))
    assert fmt == "tavern-v2" and persona.model == "Captain Vell"


def test_a_compressed_itxt_chunk_is_read(tmp_path):
    raw = png_with_card({"x": 1})
    iend = raw.rindex(b"IEND") - 4
    body = b"chara\0\x01\x00\0\0" + zlib.compress(base64.b64encode(json.dumps(V1).encode()))
    chunk = struct.pack(">I", len(body)) + b"iTXt" + body + struct.pack(">I", zlib.crc32(b"iTXt" + body))
    raw = raw.replace(b"tEXt", b"teXt")  # hide the first card: an unknown chunk type is skipped
    persona, _ = import_file(write(tmp_path, "c.png", raw[:iend] + chunk + raw[iend:]))
    assert persona.model == "Captain Vell"


def test_a_png_without_a_card_is_one_clear_error(tmp_path):
    raw = png_with_card({"x": 1}).replace(b"chara\0", b"other\0")
    with pytest.raises(
        PersonaError, match=r"c\.png: this PNG holds no character card \(no 'chara' or 'ccv3'"
    ):
        import_file(write(tmp_path, "c.png", raw))
    with pytest.raises(PersonaError, match="truncated"):
        import_file(write(tmp_path, "t.png", PNG_SIGNATURE + struct.pack(">I", 999) + b"tEXtabc"))


def test_pygmalion_json(tmp_path):
    card = {
        "char_name": "Mira",
        "char_persona": "A cheerful botanist.",
        "world_scenario": "A greenhouse.",
        "char_greeting": "Careful, that one bites!",
        "example_dialogue": "You: hi\nMira: hello!",
        "metadata": {"version": 1},
    }
    persona, fmt = import_file(write(tmp_path, "mira.json", json.dumps(card)))
    assert fmt == "pygmalion" and (persona.user, persona.model) == ("You", "Mira")
    assert persona.render_frame() == (
        "Mira's Persona: A cheerful botanist.\n\nScenario: A greenhouse.\n\nYou: hi\nMira: hello!\n\n"
    )
    assert persona.extensions["simlab_import"]["unused"] == {"metadata": {"version": 1}}


@pytest.mark.parametrize("suffix, dump", [(".yaml", None), (".json", json.dumps)])
def test_text_generation_webui_character(tmp_path, suffix, dump):
    card = {
        "name": "Ada",
        "your_name": "Charles",
        "context": "<BOT> is a mathematician writing to <USER>.",
        "greeting": "Dear {{user}}, the engine works.",
        "example_dialogue": "{{user}}: Does it?\n{{char}}: It does.",
    }
    import yaml

    text = dump(card) if dump else yaml.safe_dump(card)
    persona, fmt = import_file(write(tmp_path, f"ada{suffix}", text))
    assert fmt == "textgen" and (persona.user, persona.model) == ("Charles", "Ada")
    assert persona.render_frame() == (
        "Ada is a mathematician writing to Charles.\n\nCharles: Does it?\nAda: It does.\n\n"
    )
    assert persona.greetings() == ["Dear Charles, the engine works."]


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"hello": 1}', r"not a character format simlab knows"),
        ('{"name": "x", "first_mes": 3}', r"first_mes: must be text, not int"),
        ('{"spec": "chara_card_v2", "data": []}', r"a tavern-v2 card needs a 'data' object"),
        (
            '{"name": "x", "first_mes": "hi", "alternate_greetings": "no"}',
            r"alternate_greetings: must be a list",
        ),
        ('{"name": ', r"x\.json:1: invalid JSON"),
        ("[1, 2]", r"must hold an object"),
        ('{"name": "", "first_mes": "hi"}', r"name: the card has no character name; give one with --name"),
        (
            '{"name": "Alpaca", "instruction_template": "x"}',
            r"instruction template \(how .*\), not a character",
        ),
        ('{"context": "### Instruction:\\n", "name": "### Response:"}', r"instruction template"),
    ],
)
def test_bad_character_files_give_one_clear_line(tmp_path, content, expected):
    with pytest.raises(PersonaError, match=expected) as caught:
        import_file(write(tmp_path, "x.json", content))
    assert "\n" not in str(caught.value)


def test_card_macros_as_the_v3_spec_and_sillytavern_treat_them(tmp_path):
    from simlab.persona.cards import Notes

    card = {
        "spec": "chara_card_v3",
        "spec_version": "3.0",
        "data": {
            "name": "Mira",
            "description": "{{// a note for the author}}<CHAR> keeps bees."
            "{{comment: hidden}}{{hidden_key:bees}}",
            "personality": "{{reverse:olleh}}, says <char> to <user>",
            "first_mes": "Hello {{random_user_1}}! {{random:a,b}}",
            "mes_example": "<START>\n{{user}}: hi\n{{char}}: {{roll:d6}}",
            "creator": None,
            "tags": None,
            "character_version": 2,
        },
    }
    notes = Notes()
    persona, fmt = import_file(write(tmp_path, "mira.json", json.dumps(card)), notes=notes)
    assert fmt == "tavern-v3" and persona.description == "{{char}} keeps bees."
    assert persona.personality == "hello, says {{char}} to {{user}}" and persona.version == "2"
    assert persona.greetings() == [
        "Hello {{random_user_1}}! {{random:a,b}}"
    ]  # literal, as SillyTavern leaves it
    assert "Mira keeps bees." in persona.render_frame() and "{{roll:d6}}" in persona.render_frame()
    assert len(notes.warnings) == 3 and any(
        "random_user_1" in w and "kept as literal" in w for w in notes.warnings
    )
    assert any("{{random:a,b}} is drawn anew per message" in w for w in notes.warnings)


def test_sillytavern_leniency_and_what_it_refuses(tmp_path):
    persona, fmt = import_file(write(tmp_path, "v1.json", '{"name": "Bo", "description": "A sailor."}'))
    assert fmt == "tavern-v1" and persona.description == "A sailor."
    empty = {"spec": "chara_card_v2", "data": {"name": "", "first_mes": "hi"}}
    persona, _ = import_file(write(tmp_path, "e.json", json.dumps(empty)), name="rescued")
    assert persona.name == "rescued" and persona.model == "rescued"
    broken = '{"name": "Em", "first_mes": "smile \\ud83d", "description": "x"}'  # a truncated emoji
    persona, _ = import_file(write(tmp_path, "s.json", broken))
    assert persona.greetings() == ["smile \ufffd"]
    persona.render_frame().encode("utf-8")  # renders and writes without a surrogate error


def test_png_text_chunks_as_sillytavern_reads_them(tmp_path):
    first = png_with_card({"name": "First", "first_mes": "a"}, "chara")
    iend = first.rindex(b"IEND") - 4
    body = b"Chara\0" + base64.b64encode(json.dumps({"name": "Second", "first_mes": "b"}).encode())
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    persona, _ = import_file(write(tmp_path, "two.png", first[:iend] + chunk + first[iend:]))
    assert persona.model == "First"  # the first chara chunk wins; keywords in any case are the same


def test_the_import_command_writes_ordinary_files_puts_a_big_lorebook_aside_and_leaves_nothing_on_failure(
    tmp_path, capsys
):
    import os
    import stat

    from conftest import run_cli

    from simlab.persona.library import find, user_dir

    entries = [{"keys": [f"k{i}"], "content": "lore " * 120, "enabled": True} for i in range(2500)]
    card = {
        "spec": "chara_card_v2",
        "data": {
            "name": "Big",
            "first_mes": "Hi {{random_user_1}}.",
            "character_book": {"name": "world", "entries": entries},
        },
    }
    path = write(tmp_path, "big.json", json.dumps(card))
    assert path.stat().st_size > 1_000_000
    code, out, err = run_cli(capsys, "personas", "import", str(path))
    assert code == 0 and "its lorebook is in big.lorebook.json beside it" in out
    assert "warning: first_mes: the macro {{random_user_1}} has no simlab equivalent" in err
    persona_file, book = user_dir() / "big.yaml", user_dir() / "big.lorebook.json"
    assert persona_file.stat().st_size < 100_000 and len(json.loads(book.read_text())["entries"]) == 2500
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(persona_file.stat().st_mode) == 0o666 & ~umask
    assert find("big").greetings() == ["Hi {{random_user_1}}."]
    before = sorted(p.name for p in user_dir().iterdir())
    huge = write(tmp_path, "huge.json", json.dumps({"name": "Huge", "description": "x" * 5_000_000}))
    code, _, err = run_cli(capsys, "personas", "import", str(huge))
    assert code == 2 and "over the 4 MB a persona may be; nothing written" in err
    assert sorted(p.name for p in user_dir().iterdir()) == before  # refused: nothing left behind


def test_a_persona_that_would_not_load_back_is_not_written(tmp_path, capsys, monkeypatch):
    from conftest import run_cli

    import simlab.cli.personas as cli
    from simlab.persona.library import user_dir

    def refuse(path):
        raise PersonaError(f"{path}: does not load")

    monkeypatch.setattr(cli, "load_file", refuse)
    code, _, err = run_cli(
        capsys, "personas", "import", str(write(tmp_path, "c.json", '{"name": "C", "first_mes": "x"}'))
    )
    assert code == 2 and "does not load" in err
    assert not user_dir().exists() or list(user_dir().iterdir()) == []


def test_post_history_instructions_and_the_depth_prompt_reach_the_prompt_where_sillytavern_puts_them(
    tmp_path,
):
    from simlab.frame.render import chat_messages, reply_prompt
    from simlab.turns import unsaved_path

    card = {
        "spec": "chara_card_v2",
        "name": "Nell",
        "description": "Nell keeps a lighthouse.",
        "data": {
            "name": "Nell",
            "description": "Nell keeps a lighthouse.",
            "first_mes": "Evening.",
            "post_history_instructions": "Stay in character as {{char}}.",
            "extensions": {"depth_prompt": {"prompt": "{{char}} is tired.", "depth": 2, "role": "system"}},
        },
    }
    persona, _ = import_file(write(tmp_path, "nell.json", json.dumps(card)))
    unused = persona.extensions["simlab_import"].get("unused", {})
    assert "name" not in unused and "description" not in unused  # the V1 mirrors are used, not unused
    path = unsaved_path(persona, [("one", "uno"), ("two", None)])
    prompt = reply_prompt(path, persona.model)
    assert prompt.endswith("User: two\nStay in character as Nell.\nNell:")
    assert "User: one\nNell is tired.\nNell: uno\nUser: two\n" in prompt  # before the last two turns
    messages = chat_messages(path, persona.model)
    assert messages[-1] == {"role": "system", "content": "Stay in character as Nell."}
    assert messages[-4] == {"role": "system", "content": "Nell is tired."}


def test_a_name_taken_is_refused_by_both_imports_with_the_way_out(tmp_path, capsys):
    """`personas import` and `sessions import` treat a clash alike: nothing is replaced or renamed
    behind the user's back; one line says how to import it under another name (a persona may also
    be replaced with --force), exit 2, and the first file is untouched."""
    from conftest import run_cli

    from simlab.persona.library import user_dir

    card = write(tmp_path, "vell.json", json.dumps(V2))
    assert run_cli(capsys, "personas", "import", card)[0] == 0
    first = (user_dir() / "captain-vell.yaml").read_text()
    code, _, err = run_cli(capsys, "personas", "import", card)
    assert code == 2 and "import it under another name with --name NAME, or --force" in err
    assert len(err.strip().splitlines()) == 1 and (user_dir() / "captain-vell.yaml").read_text() == first
    assert run_cli(capsys, "personas", "import", card, "--name", "vell2")[0] == 0

    loom = write(tmp_path, "story.json", json.dumps({"root": {"text": "Once", "children": []}}))
    folder = ["--sessions-dir", tmp_path / "sessions"]
    assert run_cli(capsys, "sessions", "import", loom, *folder)[0] == 0
    code, _, err = run_cli(capsys, "sessions", "import", loom, *folder)
    assert code == 2 and "session 'story' already exists" in err and "--name NAME" in err
    code, out, _ = run_cli(capsys, "sessions", "import", loom, "--name", "story-again", *folder)
    assert code == 0 and "as session 'story-again'" in out
