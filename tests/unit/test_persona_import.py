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
    assert fmt == "tavern-v3" and persona.model == "Vell Three"
    unused = persona.extensions["simlab_import"]["unused"]
    assert unused["nickname"] == "V" and unused["group_only_greetings"] == ["All hands!"]
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
            '{"name": "x", "first_mes": "{{random:a,b}}"}',
            r"first_mes: the macro \{\{random:a,b\}\} has no simlab",
        ),
        (
            '{"name": "x", "first_mes": "hi", "alternate_greetings": "no"}',
            r"alternate_greetings: must be a list",
        ),
        ('{"name": ', r"x\.json:1: invalid JSON"),
        ("[1, 2]", r"must hold an object"),
        ('{"name": "", "first_mes": "hi"}', r"name: the card has no character name"),
    ],
)
def test_bad_character_files_give_one_clear_line(tmp_path, content, expected):
    with pytest.raises(PersonaError, match=expected) as caught:
        import_file(write(tmp_path, "x.json", content))
    assert "\n" not in str(caught.value)
