"""Character cards inside PNG pictures: the card is base64 JSON in a text chunk (`chara` for V1/V2,
`ccv3` for V3), read as SillyTavern reads it."""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from typing import Any

from simlab.errors import PersonaError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_LIMIT = 64 * 1024 * 1024  # a PNG card carries its picture


def png_text_chunks(raw: bytes, where: str) -> dict[str, str]:
    """keyword (lower case) -> text of a PNG's tEXt, zTXt and iTXt chunks; as SillyTavern reads
    them, keywords match in any case and the first chunk of a keyword wins."""
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
                chunks.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
            elif kind == b"zTXt":
                key, _, rest = body.partition(b"\0")
                chunks.setdefault(key.decode("latin-1").lower(), _inflate(rest[1:], where).decode("latin-1"))
            elif kind == b"iTXt":
                key, _, rest = body.partition(b"\0")
                compressed, rest = rest[0], rest[2:]
                _lang, _, rest = rest.partition(b"\0")
                _translated, _, value = rest.partition(b"\0")
                text = (_inflate(value, where) if compressed else value).decode("utf-8")
                chunks.setdefault(key.decode("latin-1").lower(), text)
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
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:  # ValueError: non-ASCII base64
        raise PersonaError(f"{where}: the PNG's '{key}' chunk is not base64 JSON ({exc})") from None
