"""Gemma's tokenizer (a SentencePiece-style BPE with byte fallback) in a tenth of tokenizers' memory.

tokenizers holds the embedded model's 262,144 pieces twice (a map each way) and its 514,906
merges in a hash map: about 100 MB of a chat's 600. This holds the pieces once, as one blob, and
the merges as two sorted arrays (about 12 MB), and runs tokenizers' own algorithm (bpe.c): the
same ids, offsets and text for every input, checked against tokenizers on the same file. It takes
only the tokenizer.json shapes it was checked on (`_tables` says which); any other file, or a
machine without a C compiler, gets tokenizers.

The tables are made once from tokenizer.json (a few seconds), into `tokenizer.simlab-bpe` beside it.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import struct
import subprocess
from array import array
from pathlib import Path

from simlab.models import cbuild
from simlab.models.tokenizer_json import give_back_memory

SOURCE = Path(__file__).with_name("bpe.c")
TABLES = "tokenizer.simlab-bpe"
MAGIC = b"simlab-bpe 1\n"
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
_ARRAYS = (("chars", "I"), ("char_ids", "I"), ("offsets", "I"), ("keys", "Q"), ("values", "Q"))
_HEX = frozenset("0123456789abcdefABCDEF")
_state: dict[str, object] = {}


def library():
    """bpe.c built for this machine (ctypes.CDLL), or None without a compiler."""
    if "lib" not in _state:
        from simlab.config import simlab_home

        try:
            lib = ctypes.CDLL(str(cbuild.build(SOURCE, simlab_home() / "kernels", ["-O2"])))
            lib.simlab_bpe_encode.restype = ctypes.c_int64
            lib.simlab_bpe_encode.argtypes = (
                [ctypes.c_void_p, ctypes.c_int64]
                + [ctypes.c_void_p] * 2
                + [ctypes.c_int64]
                + [ctypes.c_void_p] * 3
                + [ctypes.c_int64]
                + [ctypes.c_void_p] * 2
            )
            _state["lib"] = lib
        except (OSError, subprocess.SubprocessError):
            _state["lib"] = None
    return _state["lib"]


def prepare(folder: Path) -> bool:
    """Make the folder's tables now if they are missing or older than its tokenizer.json (before
    torch is imported, so that the parse's scratch memory is not on top of it): whether `load`
    will give this tokenizer."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return _tables_of(folder, config) is not None


def load(folder: Path, config: dict) -> Tokenizer | None:
    """The folder's tokenizer, from its tables (made now when missing or older than tokenizer.json);
    None when its tokenizer.json is not a shape this takes, or bpe.c cannot be built here."""
    read = _tables_of(folder, config)
    return None if read is None else Tokenizer(*read, config, str(folder))


def _tables_of(folder: Path, config: dict) -> tuple[dict, bytearray] | None:
    source = folder / "tokenizer.json"
    if config.get("chat_template") or not source.is_file() or library() is None:
        return None
    stat = source.stat()
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    tables = folder / TABLES
    read = _read(tables, stamp)
    if read is None:
        header, chunks = _layout(stamp, _tables(json.loads(source.read_text(encoding="utf-8"))))
        _write(tables, header, chunks)  # (no tables: written as such, so later starts skip the parse)
        read = _read(tables, stamp) or (header, bytearray(b"".join(chunks)))  # (a folder it cannot write)
        del chunks
        give_back_memory()  # the parse's ~300 MB of scratch
    return None if read is None or not read[0].get("fits") else read


def _tables(data: dict) -> tuple[dict, dict[str, array], bytes] | None:
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
        and isinstance(model.get("vocab"), dict)
    )
    vocab = model.get("vocab") if fits else {}
    pieces = sorted(vocab, key=vocab.get)
    if not fits or [vocab[p] for p in pieces] != list(range(len(pieces))):
        return None
    byte_ids = [vocab.get(f"<0x{b:02X}>") for b in range(256)]
    added = [(t.get("content"), t.get("id"), bool(t.get("special"))) for t in data.get("added_tokens", [])]
    plain = all(
        vocab.get(t.get("content")) == t.get("id")
        and not (t.get("normalized") or t.get("lstrip") or t.get("rstrip") or t.get("single_word"))
        for t in data.get("added_tokens", [])
    )
    around = _template(data.get("post_processor"), vocab)
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
        "chars": array("I", [c for c, _ in singles]),
        "char_ids": array("I", [i for _, i in singles]),
        "offsets": offsets,
        "keys": array("Q", keys),
        "values": array("Q", [merged[k] for k in keys]),
    }
    header = {"bytes": byte_ids, "added": added, "before": around[0], "after": around[1]}
    return header, arrays, blob


def _template(processor: dict | None, vocab: dict) -> tuple[list[int], list[int]] | None:
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


def _layout(stamp: str, made) -> tuple[dict, list[bytes]]:
    """The header and the chunks after it (each array padded to 8 bytes, then the pieces' blob)."""
    header = {"stamp": stamp, "fits": made is not None}
    if made is None:
        return header, []
    more, arrays, blob = made
    header |= more | {"sizes": {name: len(arrays[name]) for name, _ in _ARRAYS}, "blob": len(blob)}
    return header, [_padded(arrays[name].tobytes()) for name, _ in _ARRAYS] + [blob]


def _write(path: Path, header: dict, chunks: list[bytes]) -> None:
    head = json.dumps(header).encode("utf-8")
    work = path.with_name(f".{path.name}.{os.getpid()}")
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


def _span(count: int, code: str) -> int:
    """The bytes an array of `count` items takes in the file (padded to 8)."""
    size = count * (8 if code == "Q" else 4)
    return size + -size % 8


def _read(path: Path, stamp: str) -> tuple[dict, bytearray] | None:
    try:
        with open(path, "rb") as file:
            if file.read(len(MAGIC)) != MAGIC:
                return None
            (size,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(size))
            if header.get("stamp") != stamp:
                return None
            buffer = bytearray(path.stat().st_size - file.tell())  # (ctypes reads a bytearray in place)
            if file.readinto(buffer) != len(buffer):
                return None
    except (OSError, ValueError, struct.error):
        return None
    arrays = sum(_span(header["sizes"][name], code) for name, code in _ARRAYS) if header.get("fits") else 0
    if header.get("fits") and len(buffer) != arrays + header["blob"]:
        return None
    return header, buffer


class Tokenizer:
    """What simlab calls on a transformers tokenizer: calling it (ids, offsets), `encode`, `decode`,
    `convert_ids_to_tokens`, the special tokens and their ids."""

    is_fast = True  # (it gives offsets)
    chat_template = None

    def __init__(self, header: dict, buffer: bytearray, config: dict, name: str):
        self.name_or_path = name
        self._buffer = buffer
        at = 0
        for field, code in _ARRAYS:
            count = header["sizes"][field]
            kind = ctypes.c_uint32 if code == "I" else ctypes.c_uint64
            setattr(self, "_" + field, (kind * count).from_buffer(buffer, at))
            at += _span(count, code)
        self._blob = memoryview(buffer)[at:]
        self._bytes = (ctypes.c_uint32 * 256)(*header["bytes"])
        self._before, self._after = list(header["before"]), list(header["after"])
        self._added = {content: i for content, i, _ in header["added"]}
        self._special = frozenset(i for _, i, special in header["added"] if special)
        self._lengths: dict[str, list[int]] = {}  # first character -> added tokens' lengths, longest first
        for content in self._added:
            self._lengths.setdefault(content[0], []).append(len(content))
        for first, lengths in self._lengths.items():
            self._lengths[first] = sorted(set(lengths), reverse=True)
        self._starts = re.compile("[" + "".join(map(re.escape, self._lengths)) + "]")
        self.vocab_size = len(self._offsets) - 1
        self.all_special_ids: list[int] = []  # (the named ones, in transformers' order)
        for role in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
            token = config.get(f"{role}_token")
            token = token.get("content") if isinstance(token, dict) else token
            setattr(self, f"{role}_token", token)
            setattr(self, f"{role}_token_id", self._added.get(token) if token is not None else None)
            if getattr(self, f"{role}_token_id") is not None:
                self.all_special_ids.append(getattr(self, f"{role}_token_id"))

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(self, text: str, add_special_tokens: bool = True, return_offsets_mapping: bool = False):
        ids, spans = self._encode(text, return_offsets_mapping)
        if add_special_tokens:
            ids = self._before + ids + self._after
            spans = [(0, 0)] * len(self._before) + spans + [(0, 0)] * len(self._after)
        out = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if return_offsets_mapping:
            out["offset_mapping"] = spans
        return out

    def encode(self, text: str, add_special_tokens: bool = True, **_) -> list[int]:
        return self(text, add_special_tokens=add_special_tokens)["input_ids"]

    def _encode(self, text: str, offsets: bool) -> tuple[list[int], list[tuple[int, int]]]:
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        start = 0
        for at, end, token in [*self._added_in(text), (len(text), len(text), None)]:
            if at > start:
                self._words(text, start, at, ids, spans if offsets else None)
            if token is not None:
                ids.append(token)
                spans.append((at, end))
            start = end
        return ids, spans

    def _added_in(self, text: str):
        """(start, end, id) of each added token in the text, leftmost and then longest first (as
        tokenizers' Aho-Corasick matcher finds them), not overlapping."""
        after = 0
        for match in self._starts.finditer(text):
            at = match.start()
            if at < after:
                continue
            for length in self._lengths[text[at]]:
                token = self._added.get(text[at : at + length]) if at + length <= len(text) else None
                if token is not None:
                    yield at, at + length, token
                    after = at + length
                    break

    def _words(self, text: str, start: int, end: int, ids: list[int], spans: list | None) -> None:
        """The pieces of text[start:end] (no added token in it), onto ids (and spans)."""
        part = text[start:end].replace(" ", SPACE)
        data = part.encode("utf-8")
        if len(data) >= 1 << 31:
            raise ValueError("a text of 2 GB or more is past what this tokenizer takes")
        out, lengths = array("I", bytes(4 * len(data))), array("I", bytes(4 * len(data)))
        count = library().simlab_bpe_encode(
            data, len(data), self._chars, self._char_ids, len(self._chars), self._bytes,
            self._keys, self._values, len(self._keys), out.buffer_info()[0], lengths.buffer_info()[0],
        )  # fmt: skip
        if count < 0:
            raise MemoryError("no memory to tokenize this text")
        ids.extend(out[:count])
        if spans is None:
            return
        char_at = array("I")  # each byte of the part -> the character it belongs to
        for k, character in enumerate(part):
            char_at.extend([k] * len(character.encode("utf-8")))
        at = 0
        for length in lengths[:count]:
            spans.append((start + char_at[at], start + char_at[at + length - 1] + 1))
            at += length

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self._piece(ids)
        return [self._piece(i) for i in _ints(ids)]

    def _piece(self, token: int) -> str:
        return bytes(self._blob[self._offsets[token] : self._offsets[token + 1]]).decode("utf-8")

    def token_bytes(self, ids) -> list[bytes]:
        """Each token's bytes as the decoder gives them: a <0xNN> piece its byte (part of a
        character), any other its text with ▁ as a space."""
        out = []
        for token in _ints(ids):
            piece = self._piece(token).replace(SPACE, " ")
            byte = _byte_of(piece)
            out.append(piece.encode("utf-8") if byte is None else bytes([byte]))
        return out

    def decode(self, ids, skip_special_tokens: bool = False, **_) -> str:
        """As tokenizers decodes: unknown ids left out, then ▁ as a space, runs of <0xNN> pieces
        as their bytes (each byte U+FFFD where the run is not UTF-8), all joined."""
        out: list[str] = []
        run = bytearray()
        for token in _ints(ids):
            if not 0 <= token < self.vocab_size or (skip_special_tokens and token in self._special):
                continue
            piece = self._piece(token).replace(SPACE, " ")
            byte = _byte_of(piece)
            if byte is not None:
                run.append(byte)
                continue
            if run:
                out.append(_utf8(run))
                run.clear()
            out.append(piece)
        if run:
            out.append(_utf8(run))
        return "".join(out)


def _ints(ids) -> list[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return [ids] if isinstance(ids, int) else [int(i) for i in ids]


def _byte_of(piece: str) -> int | None:
    """The byte a <0xNN> piece stands for (Rust's u8::from_str_radix: an optional '+', hex digits)."""
    if len(piece.encode("utf-8")) != 6 or not piece.startswith("<0x") or not piece.endswith(">"):
        return None
    digits = piece[3:5].removeprefix("+")
    return int(digits, 16) if digits and set(digits) <= _HEX else None


def _utf8(run: bytearray) -> str:
    try:
        return run.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(run)
