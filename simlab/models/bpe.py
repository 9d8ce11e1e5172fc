"""Gemma's tokenizer (a SentencePiece-style BPE with byte fallback) in a tenth of tokenizers' memory.

tokenizers holds the embedded model's 262,144 pieces twice (a map each way) and its 514,906
merges in a hash map: about 100 MB of a chat's 600. This holds the pieces once, as one blob, and
the merges as two sorted arrays (about 12 MB), and runs tokenizers' own algorithm (bpe.c): the
same ids, offsets and text for every input, checked against tokenizers on the same file. It takes
only the tokenizer.json shapes it was checked on (`bpe_tables.tables` says which); any other file, or a
machine without a C compiler, gets tokenizers.

The tables are made once from tokenizer.json (a few seconds), into `tokenizer.simlab-bpe` beside it.
"""

from __future__ import annotations

import ctypes
import json
import re
import subprocess
from array import array
from pathlib import Path

from simlab.models import bpe_tables, cbuild, heap

SOURCE = Path(__file__).with_name("bpe.c")
SPACE = bpe_tables.SPACE
ROLES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
# files transformers reads beside tokenizer_config.json that this does not
ELSEWHERE = ("chat_template.jinja", "chat_template.json", "additional_chat_templates")
ELSEWHERE += ("special_tokens_map.json", "added_tokens.json")
_HEX = frozenset("0123456789abcdefABCDEF")
_state: dict[str, object] = {}


def library():
    """bpe.c built for this machine (ctypes.CDLL), or None without a compiler."""
    if "lib" not in _state:
        try:
            lib = ctypes.CDLL(str(cbuild.build(SOURCE, cbuild.kernels_folder(), ["-O2"])))
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
    return _tables_of(folder, config, arrays=False) is not None  # (`load` reads the arrays)


def load(folder: Path, config: dict) -> Tokenizer | None:
    """The folder's tokenizer, from its tables (made now when missing or older than tokenizer.json);
    None when its tokenizer.json is not a shape this takes, or bpe.c cannot be built here."""
    read = _tables_of(folder, config)
    if read is None or not _named_as_added(read[0], config):
        return None
    return Tokenizer(*read, config, str(folder))


def _named_as_added(header: dict, config: dict) -> bool:
    """Whether each token tokenizer_config.json names (bos, eos, ...) is a special added token of
    tokenizer.json, as transformers makes it: else transformers' tokenizer would differ."""
    special = {content for content, _, is_special in header["added"] if is_special}
    return all(_named(config, role) in special for role in ROLES if _named(config, role) is not None)


def _named(config: dict, role: str) -> str | None:
    """The token tokenizer_config.json names for a role (a string, or an AddedToken's dict)."""
    token = config.get(f"{role}_token")
    return token.get("content") if isinstance(token, dict) else token


def _tables_of(folder: Path, config: dict, arrays: bool = True) -> tuple[dict, bytearray | None] | None:
    source = folder / "tokenizer.json"
    if config.get("chat_template") or any((folder / name).exists() for name in ELSEWHERE):
        return None  # (a chat template, or special tokens set outside tokenizer.json: transformers')
    if not source.is_file() or library() is None:
        return None
    stat = source.stat()
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    tables = folder / bpe_tables.TABLES
    read = bpe_tables.read(tables, stamp, arrays)
    if read is None:
        header, chunks = bpe_tables.layout(stamp, bpe_tables.parsed(source))
        bpe_tables.write(tables, header, chunks)  # ("fits": false is written too: no parse next time)
        # (a folder it cannot write: this start's own tables)
        read = bpe_tables.read(tables, stamp, arrays) or (header, bytearray(b"".join(chunks)))
        del chunks
        heap.give_back()  # the parse's ~300 MB of scratch
    return None if read is None or not read[0].get("fits") else read


class Tokenizer:
    """What simlab calls on a transformers tokenizer: calling it (ids, offsets), `encode`, `decode`,
    `convert_ids_to_tokens`, the special tokens and their ids."""

    is_fast = True  # (it gives offsets)
    chat_template = None

    def __init__(self, header: dict, buffer: bytearray, config: dict, name: str):
        self.name_or_path = name
        self._buffer = buffer
        at = 0
        for field, code in bpe_tables.ARRAYS:
            count = header["sizes"][field]
            kind = ctypes.c_uint32 if code == "I" else ctypes.c_uint64
            setattr(self, "_" + field, (kind * count).from_buffer(buffer, at))
            at += bpe_tables.span(count, code)
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
        firsts = "".join(map(re.escape, self._lengths))
        self._starts = re.compile(f"[{firsts}]") if firsts else None
        self.vocab_size = len(self._offsets) - 1  # (transformers': the model's, without added tokens past it)
        self._past = {i: content for content, i in self._added.items() if i >= self.vocab_size}
        self.all_special_ids: list[int] = []  # (the named ones, in transformers' order)
        for role in ROLES:
            token = _named(config, role)
            setattr(self, f"{role}_token", token)
            setattr(self, f"{role}_token_id", self._added.get(token) if token is not None else None)
            if getattr(self, f"{role}_token_id") is not None:
                self.all_special_ids.append(getattr(self, f"{role}_token_id"))

    def __len__(self) -> int:
        return self.vocab_size + len(self._past)

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
        for match in self._starts.finditer(text) if self._starts is not None else ():
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
        """Each id's piece; None for an id it does not have (as transformers gives)."""
        if isinstance(ids, int):
            return self._known(ids)
        return [self._known(i) for i in _ints(ids)]

    def _known(self, token: int) -> str | None:
        return self._piece(token) if self._has(token) else None

    def _has(self, token: int) -> bool:
        return 0 <= token < self.vocab_size or token in self._past

    def _piece(self, token: int) -> str:
        if token >= self.vocab_size:
            return self._past[token]
        return bytes(self._blob[self._offsets[token] : self._offsets[token + 1]]).decode("utf-8")

    def _decoded(self, token: int) -> tuple[str, int | None]:
        """A piece as the decoder reads it: ▁ as a space, and the byte a <0xNN> piece stands for."""
        piece = self._piece(token).replace(SPACE, " ")
        return piece, _byte_of(piece)

    def token_bytes(self, ids) -> list[bytes]:
        """Each token's bytes as the decoder gives them: a <0xNN> piece its byte (part of a
        character), any other its text with ▁ as a space."""
        decoded = [self._decoded(token) for token in _ints(ids)]
        return [piece.encode("utf-8") if byte is None else bytes([byte]) for piece, byte in decoded]

    def decode(self, ids, skip_special_tokens: bool = False, **_) -> str:
        """As tokenizers decodes: unknown ids left out, then ▁ as a space, runs of <0xNN> pieces
        as their bytes (each byte U+FFFD where the run is not UTF-8), all joined."""
        out: list[str] = []
        run = bytearray()
        for token in _ints(ids):
            if not self._has(token) or (skip_special_tokens and token in self._special):
                continue
            piece, byte = self._decoded(token)
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
