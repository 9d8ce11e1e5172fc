"""A converted model's tokenizer.json, parsed before torch is imported.

Parsing the embedded model's tokenizer (262,144 tokens, 514,906 merges) takes ~200 MB of scratch
memory on top of the ~100 MB it keeps. Parsed after torch and transformers are imported, that scratch
sat on top of theirs and set a chat's peak memory; parsed first, and the scratch handed back to the
system (`give_back_memory`), the peak is the model's own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

_kept: dict[Path, object] = {}


def parse_early(path: Path) -> None:
    """Parse tokenizer.json now and keep it for `take`; nothing when the file is not there."""
    if path in _kept or not path.is_file():
        return
    from tokenizers import Tokenizer

    _kept[path] = Tokenizer.from_file(str(path))
    give_back_memory()


def take(path: Path):
    """The tokenizers.Tokenizer parsed early from this file (once), or None."""
    return _kept.pop(path, None)


def forget() -> None:
    """Drop whatever was parsed early and not taken."""
    _kept.clear()


def give_back_memory() -> None:
    """Return the C heap's free memory to the system (glibc's malloc_trim; elsewhere nothing)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


class Given:
    """A parsed tokenizer handed to transformers' PreTrainedTokenizerFast(tokenizer_object=...),
    which deep-copies what it is given (a second parse): the copy is the tokenizer itself."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __deepcopy__(self, memo):
        return self.tokenizer
