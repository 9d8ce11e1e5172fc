"""Importers: characters from text-generation-webui, Pygmalion, and Tavern cards V1-V3 (JSON or PNG).

Each becomes a simlab persona mapping (validated by `persona.from_dict`). Nothing is dropped
silently: a card's own `extensions` are kept as given, and every field simlab does not use goes
under `extensions.simlab_import.unused`, so the card can be rebuilt from the persona.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from simlab import safe_yaml
from simlab.errors import BadInput, PersonaError
from simlab.persona.png import CARD_LIMIT, PNG_SIGNATURE, card_from_png
from simlab.persona.schema import NAME, PLACEHOLDER, Persona, from_dict, read_yaml

TAVERN_V1 = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
SURROGATE = re.compile("[\ud800-\udfff]")


def import_file(path: Path | str, name: str | None = None, notes: Notes | None = None) -> tuple[Persona, str]:
    """Read a character file of any supported format; returns the persona and the format's name
    (what the import has to say about the card goes into `notes`)."""
    path = Path(path)
    try:
        raw = safe_yaml.read_bytes(path, "a character card", CARD_LIMIT)
    except BadInput as exc:
        raise PersonaError(str(exc)) from None
    if raw.startswith(PNG_SIGNATURE):
        data = card_from_png(raw, str(path))
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise PersonaError(f"{path}: not UTF-8 text, and not a PNG character card") from None
        data = _parse_text(text, str(path))
    if not isinstance(data, dict):
        raise PersonaError(
            f"{path}: a character file must hold an object (mapping), not {type(data).__name__}"
        )
    fmt, mapping = convert(data, str(path), notes)
    if not mapping.get("name"):  # SillyTavern takes a card with an empty name; so do we, named
        if not name:
            raise PersonaError(f"{path}: name: the card has no character name; give one with --name")
        mapping["speakers"]["model"] = name
    mapping["name"] = name or slug(mapping.get("name") or path.stem, str(path))
    return from_dict(mapping, source=str(path)), fmt


def _parse_text(text: str, where: str) -> Any:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise PersonaError(f"{where}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        except RecursionError:
            raise PersonaError(f"{where}: nested too deeply to read") from None
    data, _ = read_yaml(text, where)
    return data


def slug(name: str, where: str) -> str:
    """A persona name from a character name ("Dr. Who?" -> "dr.-who")."""
    out = re.sub(r"[^A-Za-z0-9_.-]+", "-", name.strip()).strip("-._").lower()[:64]
    if not NAME.fullmatch(out):
        raise PersonaError(f"{where}: cannot make a persona name from {name!r}; give one with --name")
    return out


# -- formats --------------------------------------------------------------------------------


def detect(data: dict[str, Any]) -> str:
    spec = data.get("spec")
    if spec == "chara_card_v3":
        return "tavern-v3"
    if spec == "chara_card_v2":
        return "tavern-v2"
    if "char_name" in data or "char_persona" in data:
        return "pygmalion"
    if (
        "instruction_template" in data
        or "turn_template" in data
        or "### Instruction:" in str(data.get("context"))
    ):
        return "instruction-template"
    if "first_mes" in data or "mes_example" in data:
        return "tavern-v1"
    if "context" in data or "your_name" in data:
        return "textgen"
    if isinstance(data.get("name"), str) and "description" in data:
        return "tavern-v1"  # SillyTavern imports a card of just a name and a description
    return "unknown"


def convert(data: dict[str, Any], where: str, notes: Notes | None = None) -> tuple[str, dict[str, Any]]:
    notes = notes if notes is not None else Notes()
    data = _clean(data)
    fmt = detect(data)
    if fmt in ("tavern-v2", "tavern-v3"):
        card = data.get("data")
        if not isinstance(card, dict):
            raise PersonaError(f"{where}: a {fmt} card needs a 'data' object")
        # a V2/V3 card repeats the V1 fields at its root for old readers: those are the card's own
        # fields (used from `data`), not unused ones, unless they say something else
        outer = {k: v for k, v in data.items() if k != "data" and not (k in TAVERN_V1 and card.get(k) == v)}
        mapping = _from_tavern(card, where, fmt, outer, notes)
    elif fmt == "tavern-v1":
        mapping = _from_tavern(data, where, fmt, {}, notes)
    elif fmt == "pygmalion":
        mapping = _from_pygmalion(data, where, notes)
    elif fmt == "textgen":
        mapping = _from_textgen(data, where, notes)
    elif fmt == "instruction-template":
        raise PersonaError(
            f"{where}: this is a text-generation-webui instruction template (how an instruct model's "
            "turns are formatted), not a character; there is nobody to import"
        )
    else:
        raise PersonaError(
            f"{where}: not a character format simlab knows (text-generation-webui, Pygmalion, "
            "Tavern V1/V2/V3); for a simlab persona use `simlab personas validate`"
        )
    if notes.names:  # macros kept as literal text: the persona allows them as such
        mapping.setdefault("extensions", {}).setdefault("simlab_import", {})["literal_macros"] = notes.names
    return fmt, mapping


def _clean(value: Any) -> Any:
    """A lone surrogate (half of a truncated emoji, "\\ud83d" in the JSON) is not text: U+FFFD."""
    if isinstance(value, str):
        return SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _text(card: dict[str, Any], key: str, where: str) -> str:
    value = card.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PersonaError(f"{where}: {key}: must be text, not {type(value).__name__}")
    return value


def _texts(card: dict[str, Any], key: str, where: str) -> list[str]:
    value = card.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PersonaError(f"{where}: {key}: must be a list of text items")
    return value


def _placeholders(text: str, key: str, where: str, notes: Notes | None = None) -> str:
    """A card's macros as the Character Card V3 spec and SillyTavern treat them: <BOT>, <CHAR> and
    <USER> (any case) are {{char}} and {{user}}; {{original}}, {{// ...}}, {{comment: ...}} and
    {{hidden_key: ...}} become nothing; {{reverse:A}} is A reversed; {{random:...}}, {{pick:...}},
    {{roll:...}} and any other macro stay as literal text, with one warning each (in `notes`)."""
    text = re.sub(r"<(BOT|CHAR)>", "{{char}}", text, flags=re.IGNORECASE)
    text = re.sub(r"<USER>", "{{user}}", text, flags=re.IGNORECASE)

    def macro(match: re.Match) -> str:
        body = match.group(1)
        name, _, arg = body.partition(":")
        name = name.strip().lower()
        if name in ("char", "user"):
            return "{{" + name + "}}"
        if name in ("original", "comment", "hidden_key") or body.lstrip().startswith("//"):
            return ""
        if name == "reverse" and arg:
            return arg[::-1]
        if notes is not None:
            notes.literal(match.group(0), key)
        return match.group(0)

    return re.sub(r"\{\{(.*?)\}\}", macro, text, flags=re.DOTALL)


class Notes:
    """What an import says about the card: macros left as literal text (SillyTavern leaves unknown
    ones as they are; {{random}}, {{pick}} and {{roll}} would draw anew per message, which a
    replayable session cannot), one warning per macro."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.names: list[str] = []

    def literal(self, macro: str, key: str) -> None:
        name = re.sub(r"[:\s].*", "", macro[2:-2].strip(), flags=re.DOTALL)
        if PLACEHOLDER.fullmatch(macro) and name not in self.names:
            self.names.append(name)
        what = (
            "is drawn anew per message in SillyTavern"
            if name.lower() in ("random", "pick", "roll")
            else "has no simlab equivalent"
        )
        line = f"{key}: the macro {macro[:60]} {what}; kept as literal text"
        if line not in self.warnings:
            self.warnings.append(line)


def _frame(parts: list[tuple[str, str]]) -> str:
    """A frame template from (label, field) parts, skipping empty fields."""
    lines = [label.format(f"{{{{{key}}}}}") for label, key in parts]
    return "\n\n".join(lines).rstrip("\n") + "\n\n"


def _from_tavern(
    card: dict[str, Any], where: str, fmt: str, outer: dict[str, Any], notes: Notes
) -> dict[str, Any]:
    used = {
        "name",
        "description",
        "personality",
        "scenario",
        "first_mes",
        "mes_example",
        "system_prompt",
        "post_history_instructions",
        "alternate_greetings",
        "tags",
        "creator",
        "character_version",
        "extensions",
    }
    if fmt == "tavern-v3":
        used.add("nickname")
    fields = {
        key: _placeholders(_text(card, src, where), src, where, notes)
        for key, src in (
            ("description", "description"),
            ("personality", "personality"),
            ("scenario", "scenario"),
            ("system_prompt", "system_prompt"),
            ("example_dialogue", "mes_example"),
            ("post_history_instructions", "post_history_instructions"),
        )
    }
    parts = [
        ("{}", "system_prompt"),
        ("{}", "description"),
        ("{{{{char}}}}'s personality: {}", "personality"),
        ("Scenario: {}", "scenario"),
        ("{}", "example_dialogue"),
    ]
    extensions = card.get("extensions") or {}
    if not isinstance(extensions, dict):
        raise PersonaError(f"{where}: extensions: must be an object")
    unused = {k: v for k, v in card.items() if k not in used}
    name = _text(card, "name", where).strip()
    # V3: the nickname is what {{char}} says in the prompt (V2 has none: it stays unused there)
    nickname = _text(card, "nickname", where).strip() if fmt == "tavern-v3" else ""
    version = card.get("character_version")
    depth = extensions.get("depth_prompt") if isinstance(extensions.get("depth_prompt"), dict) else {}
    inserts = []
    if isinstance(depth.get("prompt"), str) and depth["prompt"].strip():  # SillyTavern's character note
        level = depth.get("depth", 4)
        level = level if isinstance(level, int) and not isinstance(level, bool) and level >= 0 else 4
        inserts.append({"text": _placeholders(depth["prompt"], "depth_prompt", where, notes), "depth": level})
    mapping = {
        "name": name,
        "speakers": {"user": "User", "model": nickname or name},
        "inserts": inserts,
        "frame": _frame([(label, key) for label, key in parts if fields[key].strip()]),
        "greeting": _placeholders(_text(card, "first_mes", where), "first_mes", where, notes),
        "alternate_greetings": [
            _placeholders(g, "alternate_greetings", where, notes)
            for g in _texts(card, "alternate_greetings", where)
        ],
        "tags": [str(t) for t in _texts(card, "tags", where)],
        "creator": _text(card, "creator", where),
        "version": str(version)
        if isinstance(version, (int, float)) and not isinstance(version, bool)
        else _text(card, "character_version", where),
        **fields,
        "extensions": {
            **extensions,
            "simlab_import": {
                "format": fmt,
                **({"card_name": name} if name else {}),  # the display name, whatever the label
                "unused": {**unused, **outer},
            },
        },
    }
    return _drop_empty(mapping)


def _from_pygmalion(card: dict[str, Any], where: str, notes: Notes) -> dict[str, Any]:
    used = {"char_name", "char_persona", "world_scenario", "char_greeting", "example_dialogue"}
    name = _text(card, "char_name", where).strip()
    if not name:
        raise PersonaError(f"{where}: char_name: the character has no name")
    fields = {
        "personality": _placeholders(_text(card, "char_persona", where), "char_persona", where, notes),
        "scenario": _placeholders(_text(card, "world_scenario", where), "world_scenario", where, notes),
        "example_dialogue": _placeholders(
            _text(card, "example_dialogue", where), "example_dialogue", where, notes
        ),
    }
    parts = [
        ("{{{{char}}}}'s Persona: {}", "personality"),
        ("Scenario: {}", "scenario"),
        ("{}", "example_dialogue"),
    ]
    return _drop_empty(
        {
            "name": name,
            "speakers": {"user": "You", "model": name},
            "frame": _frame([(label, key) for label, key in parts if fields[key].strip()]),
            "greeting": _placeholders(_text(card, "char_greeting", where), "char_greeting", where, notes),
            **fields,
            "extensions": {
                "simlab_import": {
                    "format": "pygmalion",
                    "unused": {k: v for k, v in card.items() if k not in used},
                }
            },
        }
    )


def _from_textgen(card: dict[str, Any], where: str, notes: Notes) -> dict[str, Any]:
    used = {"name", "your_name", "context", "greeting", "example_dialogue"}
    name = _text(card, "name", where).strip()
    if not name:
        raise PersonaError(f"{where}: name: the character has no name")
    context = _placeholders(_text(card, "context", where), "context", where, notes)
    examples = _placeholders(_text(card, "example_dialogue", where), "example_dialogue", where, notes)
    frame = context.rstrip("\n") + ("\n\n{{example_dialogue}}" if examples.strip() else "")
    return _drop_empty(
        {
            "name": name,
            "speakers": {"user": _text(card, "your_name", where).strip() or "You", "model": name},
            "frame": frame.rstrip("\n") + "\n\n",
            "greeting": _placeholders(_text(card, "greeting", where), "greeting", where, notes),
            "example_dialogue": examples,
            "extensions": {
                "simlab_import": {
                    "format": "textgen",
                    "unused": {k: v for k, v in card.items() if k not in used},
                }
            },
        }
    )


def _drop_empty(mapping: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in mapping.items() if v not in ("", [], None)}
    unused = out.get("extensions", {}).get("simlab_import", {})
    if unused and not unused.get("unused"):
        unused.pop("unused")
    return out
