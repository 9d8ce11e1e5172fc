"""Importers: characters from text-generation-webui, Pygmalion, and Tavern cards V1-V3 (JSON or PNG).

Each becomes a simlab persona mapping (validated by `persona.from_dict`). Nothing is dropped
silently: a card's own `extensions` are kept as given, and every field simlab does not use goes
under `extensions.simlab_import.unused`, so the card can be rebuilt from the persona.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any

from simlab import safe_yaml
from simlab.errors import BadInput, PersonaError
from simlab.persona.schema import NAME, PLACEHOLDER, Persona, from_dict, read_yaml

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TAVERN_V1 = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
KNOWN_MACROS = {"char", "user", "original"}
CARD_LIMIT = 64 * 1024 * 1024  # a PNG card carries its picture


def import_file(path: Path | str, name: str | None = None) -> tuple[Persona, str]:
    """Read a character file of any supported format; returns the persona and the format's name."""
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
    fmt, mapping = convert(data, str(path))
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
    if "first_mes" in data or "mes_example" in data:
        return "tavern-v1"
    if "context" in data or "your_name" in data:
        return "textgen"
    return "unknown"


def convert(data: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    fmt = detect(data)
    if fmt in ("tavern-v2", "tavern-v3"):
        card = data.get("data")
        if not isinstance(card, dict):
            raise PersonaError(f"{where}: a {fmt} card needs a 'data' object")
        outer = {k: v for k, v in data.items() if k != "data"}
        return fmt, _from_tavern(card, where, fmt, outer)
    if fmt == "tavern-v1":
        return fmt, _from_tavern(data, where, fmt, {})
    if fmt == "pygmalion":
        return fmt, _from_pygmalion(data, where)
    if fmt == "textgen":
        return fmt, _from_textgen(data, where)
    raise PersonaError(
        f"{where}: not a character format simlab knows (text-generation-webui, Pygmalion, "
        "Tavern V1/V2/V3); for a simlab persona use `simlab personas validate`"
    )


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


def _placeholders(text: str, key: str, where: str) -> str:
    """The formats' <BOT>/<USER> become {{char}}/{{user}}; macros simlab cannot honour are errors."""
    text = re.sub(r"<BOT>", "{{char}}", text, flags=re.IGNORECASE)
    text = re.sub(r"<USER>", "{{user}}", text, flags=re.IGNORECASE)
    text = re.sub(r"\{\{\s*original\s*\}\}", "", text, flags=re.IGNORECASE)  # V2: "the default prompt"
    for match in re.finditer(r"\{\{([^}]*)\}\}", text):
        if match.group(1).strip().lower() not in KNOWN_MACROS:
            raise PersonaError(
                f"{where}: {key}: the macro {match.group(0)} has no simlab equivalent "
                "(only {{char}} and {{user}}); edit the card and import it again"
            )
    return text


def _frame(parts: list[tuple[str, str]]) -> str:
    """A frame template from (label, field) parts, skipping empty fields."""
    lines = [label.format(f"{{{{{key}}}}}") for label, key in parts]
    return "\n\n".join(lines).rstrip("\n") + "\n\n"


def _from_tavern(card: dict[str, Any], where: str, fmt: str, outer: dict[str, Any]) -> dict[str, Any]:
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
    fields = {
        key: _placeholders(_text(card, src, where), src, where)
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
    if not name:
        raise PersonaError(f"{where}: name: the card has no character name")
    mapping = {
        "name": name,
        "speakers": {"user": "User", "model": name},
        "frame": _frame([(label, key) for label, key in parts if fields[key].strip()]),
        "greeting": _placeholders(_text(card, "first_mes", where), "first_mes", where),
        "alternate_greetings": [
            _placeholders(g, "alternate_greetings", where) for g in _texts(card, "alternate_greetings", where)
        ],
        "tags": [str(t) for t in _texts(card, "tags", where)],
        "creator": _text(card, "creator", where),
        "version": _text(card, "character_version", where),
        **fields,
        "extensions": {**extensions, "simlab_import": {"format": fmt, "unused": {**unused, **outer}}},
    }
    return _drop_empty(mapping)


def _from_pygmalion(card: dict[str, Any], where: str) -> dict[str, Any]:
    used = {"char_name", "char_persona", "world_scenario", "char_greeting", "example_dialogue"}
    name = _text(card, "char_name", where).strip()
    if not name:
        raise PersonaError(f"{where}: char_name: the character has no name")
    fields = {
        "personality": _placeholders(_text(card, "char_persona", where), "char_persona", where),
        "scenario": _placeholders(_text(card, "world_scenario", where), "world_scenario", where),
        "example_dialogue": _placeholders(_text(card, "example_dialogue", where), "example_dialogue", where),
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
            "greeting": _placeholders(_text(card, "char_greeting", where), "char_greeting", where),
            **fields,
            "extensions": {
                "simlab_import": {
                    "format": "pygmalion",
                    "unused": {k: v for k, v in card.items() if k not in used},
                }
            },
        }
    )


def _from_textgen(card: dict[str, Any], where: str) -> dict[str, Any]:
    used = {"name", "your_name", "context", "greeting", "example_dialogue"}
    name = _text(card, "name", where).strip()
    if not name:
        raise PersonaError(f"{where}: name: the character has no name")
    context = _placeholders(_text(card, "context", where), "context", where)
    examples = _placeholders(_text(card, "example_dialogue", where), "example_dialogue", where)
    if PLACEHOLDER.search(context.replace("{{char}}", "").replace("{{user}}", "")):
        raise PersonaError(f"{where}: context: holds a placeholder other than {{{{char}}}} and {{{{user}}}}")
    frame = context.rstrip("\n") + ("\n\n{{example_dialogue}}" if examples.strip() else "")
    return _drop_empty(
        {
            "name": name,
            "speakers": {"user": _text(card, "your_name", where).strip() or "You", "model": name},
            "frame": frame.rstrip("\n") + "\n\n",
            "greeting": _placeholders(_text(card, "greeting", where), "greeting", where),
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


# -- PNG cards --------------------------------------------------------------------------------


def png_text_chunks(raw: bytes, where: str) -> dict[str, str]:
    """keyword -> text of a PNG's tEXt, zTXt and iTXt chunks."""
    if not raw.startswith(PNG_SIGNATURE):
        raise PersonaError(f"{where}: not a PNG file")
    chunks: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(raw):
        length, kind = struct.unpack(">I4s", raw[pos : pos + 8])
        body = raw[pos + 8 : pos + 8 + length]
        if len(body) < length:
            raise PersonaError(f"{where}: the PNG is truncated inside a {kind.decode('latin-1')} chunk")
        pos += 12 + length
        try:
            if kind == b"tEXt":
                key, _, value = body.partition(b"\0")
                chunks[key.decode("latin-1")] = value.decode("latin-1")
            elif kind == b"zTXt":
                key, _, rest = body.partition(b"\0")
                chunks[key.decode("latin-1")] = _inflate(rest[1:], where).decode("latin-1")
            elif kind == b"iTXt":
                key, _, rest = body.partition(b"\0")
                compressed, rest = rest[0], rest[2:]
                _lang, _, rest = rest.partition(b"\0")
                _translated, _, value = rest.partition(b"\0")
                chunks[key.decode("latin-1")] = (_inflate(value, where) if compressed else value).decode(
                    "utf-8"
                )
        except (zlib.error, UnicodeDecodeError, IndexError):
            raise PersonaError(f"{where}: a {kind.decode('latin-1')} text chunk is corrupt") from None
        if kind == b"IEND":
            break
    return chunks


def _inflate(data: bytes, where: str) -> bytes:
    """zlib-decompress a text chunk, refusing a decompression bomb."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, CARD_LIMIT)
    if inflater.unconsumed_tail:
        raise PersonaError(
            f"{where}: a compressed text chunk inflates past {CARD_LIMIT // 2**20} MB; not a card"
        )
    return out


def card_from_png(raw: bytes, where: str) -> Any:
    """The card JSON in a PNG: a `ccv3` chunk (V3) is preferred over `chara` (V1/V2)."""
    chunks = png_text_chunks(raw, where)
    key = "ccv3" if "ccv3" in chunks else "chara" if "chara" in chunks else None
    if key is None:
        raise PersonaError(f"{where}: this PNG holds no character card (no 'chara' or 'ccv3' text chunk)")
    try:
        return json.loads(base64.b64decode(chunks[key], validate=False).decode("utf-8"))
    except RecursionError:
        raise PersonaError(f"{where}: the PNG's '{key}' card is nested too deeply to read") from None
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersonaError(f"{where}: the PNG's '{key}' chunk is not base64 JSON ({exc})") from None
