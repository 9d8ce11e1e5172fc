"""The tables of simlab's own Gemma tokenizer (models.bpe): which tokenizer.json shapes it takes, and
the file `tokenizer.simlab-bpe` it makes from one, beside it: a JSON header (the added tokens, the
template's ids, the 256 byte pieces, the array sizes) after a magic line, then the one-character
pieces' code points (sorted, uint64) and ids (uint32), each piece's end in the blob (uint32), the
merges' sorted keys (left << 32 | right) and values (rank << 32 | result, uint64), each padded to 8
bytes, and the pieces' UTF-8 blob.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from array import array
from pathlib import Path

TABLES = "tokenizer.simlab-bpe"
MAGIC = b"simlab-bpe 4\n"  # (a new number when the shapes it takes change: "fits": false is asked again)
SPACE = "\u2581"  # SentencePiece's visible space
NORMALIZER = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
SPLIT = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False}
DECODER = {
    "type": "Sequence",
    "decoders": [
        {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ],
}
ARRAYS = (("chars", "Q"), ("char_ids", "I"), ("offsets", "I"), ("keys", "Q"), ("values", "Q"))


def parsed(source: Path):
    """`tables` of the file; None for a file that is not JSON of the shape it reads (tokenizers'
    own load then says what is wrong with it)."""
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
        return tables(data) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None


def tables(data: dict) -> tuple[dict, dict[str, array], bytes] | None:
    """The header, arrays and piece blob of a tokenizer.json this encodes exactly, else None."""
    model = data.get("model") or {}
    fits = (
        model.get("type") == "BPE"
        and model.get("byte_fallback") is True
        and not model.get("dropout")
        and not model.get("continuing_subword_prefix")
        and not model.get("end_of_word_suffix")
        and not model.get("ignore_merges")
        and data.get("normalizer") == NORMALIZER
        and data.get("pre_tokenizer") in (None, SPLIT)  # (a no-op: no spaces are left to split on)
        and data.get("decoder") == DECODER
        and data.get("truncation") is None
        and data.get("padding") is None
        and isinstance(model.get("vocab"), dict)
    )
    vocab = model.get("vocab") if fits else {}
    pieces = sorted(vocab, key=vocab.get)
    if not fits or [vocab[p] for p in pieces] != list(range(len(pieces))):
        return None
    byte_ids = [vocab.get(f"<0x{b:02X}>") for b in range(256)]
    listed = data.get("added_tokens") or []
    plain = all(_plain(token, vocab) for token in listed)
    plain = plain and len({t["content"] for t in listed}) == len(listed)  # (each once)
    past = [t["id"] for t in listed if plain and t["id"] >= len(vocab)]
    plain = plain and past == list(range(len(vocab), len(vocab) + len(past)))  # (tokenizers numbers them so)
    around = _template(data.get("post_processor"))
    if None in byte_ids or not plain or around is None:
        return None
    merged: dict[int, int] = {}
    for rank, merge in enumerate(model.get("merges") or []):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if len(pair) != 2 or "".join(pair) not in vocab or pair[0] not in vocab or pair[1] not in vocab:
            return None  # (tokenizers refuses such a file)
        merged[vocab[pair[0]] << 32 | vocab[pair[1]]] = rank << 32 | vocab["".join(pair)]  # the last wins
    singles = sorted((ord(p), i) for p, i in vocab.items() if len(p) == 1)
    blob = "".join(pieces).encode("utf-8")
    offsets = array("I", [0])
    for piece in pieces:
        offsets.append(offsets[-1] + len(piece.encode("utf-8")))
    keys = sorted(merged)
    arrays = {
        "chars": array("Q", [c for c, _ in singles]),
        "char_ids": array("I", [i for _, i in singles]),
        "offsets": offsets,
        "keys": array("Q", keys),
        "values": array("Q", [merged[k] for k in keys]),
    }
    added = [(t["content"], t["id"], bool(t.get("special"))) for t in listed]
    header = {"bytes": byte_ids, "added": added, "before": around[0], "after": around[1]}
    return header, arrays, blob


def _plain(token: dict, vocab: dict) -> bool:
    """An added token matched as it is written, and either the vocabulary's own piece or past its
    end (tokenizers then counts it on top of the vocabulary)."""
    content, at = token.get("content"), token.get("id")
    if not isinstance(content, str) or not content or not isinstance(at, int):
        return False
    if token.get("normalized") or token.get("lstrip") or token.get("rstrip") or token.get("single_word"):
        return False
    return vocab.get(content) == at or (content not in vocab and at >= len(vocab))


def _template(processor: dict | None) -> tuple[list[int], list[int]] | None:
    """The ids a single sequence gets before and after it (TemplateProcessing), or None."""
    if processor is None:
        return [], []
    if processor.get("type") != "TemplateProcessing":
        return None
    special = processor.get("special_tokens") or {}
    before: list[int] = []
    after: list[int] = []
    side = before
    for item in processor.get("single") or []:
        if "Sequence" in item:
            if side is after or item["Sequence"].get("id") != "A":
                return None
            side = after
        elif "SpecialToken" in item and item["SpecialToken"].get("id") in special:
            side.extend(special[item["SpecialToken"]["id"]].get("ids") or [])
        else:
            return None
    return (before, after) if side is after else None


def layout(stamp: str, made) -> tuple[dict, list[bytes]]:
    """The header and the chunks after it (each array padded to 8 bytes, then the pieces' blob)."""
    header = {"stamp": stamp, "fits": made is not None}
    if made is None:
        return header, []
    more, arrays, blob = made
    header |= more | {"sizes": {name: len(arrays[name]) for name, _ in ARRAYS}, "blob": len(blob)}
    return header, [_padded(arrays[name].tobytes()) for name, _ in ARRAYS] + [blob]


def write(path: Path, header: dict, chunks: list[bytes]) -> None:
    head = json.dumps(header).encode("utf-8")
    work = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        with open(work, "wb") as out:
            out.write(MAGIC + struct.pack("<Q", len(head)) + head)
            for chunk in chunks:
                out.write(chunk)
        os.replace(work, path)
    except OSError:
        work.unlink(missing_ok=True)  # a folder it cannot write: each start makes them again


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 8)


def span(count: int, code: str) -> int:
    """The bytes an array of `count` items takes in the file (padded to 8)."""
    size = count * (8 if code == "Q" else 4)
    return size + -size % 8


def read(path: Path, stamp: str, arrays: bool = True) -> tuple[dict, bytearray | None] | None:
    """The header and the arrays after it (None with `arrays` false: the header alone, checked), or
    None for a file that is missing, stale or damaged."""
    try:
        with open(path, "rb") as file:
            if file.read(len(MAGIC)) != MAGIC:
                return None
            (size,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(size))
            if not isinstance(header, dict) or header.get("stamp") != stamp:
                return None
            rest = path.stat().st_size - file.tell()
            buffer = bytearray(rest) if arrays else None  # (ctypes reads a bytearray in place)
            if buffer is not None and file.readinto(buffer) != rest:
                return None
    except (OSError, ValueError, struct.error):
        return None
    if header.get("fits") is False:
        return header, buffer
    if not _whole(header) or rest != sum(span(header["sizes"][n], c) for n, c in ARRAYS) + header["blob"]:
        return None
    return header, buffer


def _whole(header) -> bool:
    """A header with every field `models.bpe` reads, of its type (else the tables are made again)."""

    def ints(items, width=None):
        return isinstance(items, list) and all(type(i) is int for i in items) and width in (None, len(items))

    sizes, added = header.get("sizes"), header.get("added")
    return (
        header.get("fits") is True
        and isinstance(sizes, dict)
        and all(type(sizes.get(name)) is int and sizes[name] >= 0 for name, _ in ARRAYS)
        and type(header.get("blob")) is int
        and ints(header.get("bytes"), 256)
        and ints(header.get("before"))
        and ints(header.get("after"))
        and isinstance(added, list)
        and all(
            isinstance(t, list) and len(t) == 3 and isinstance(t[0], str) and t[0] and type(t[1]) is int
            for t in added
        )
    )
