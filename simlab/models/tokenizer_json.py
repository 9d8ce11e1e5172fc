"""A converted model's tokenizer.json, parsed before torch is imported.

Parsing the embedded model's tokenizer (262,144 tokens, 514,906 merges) takes ~200 MB of scratch
memory on top of the ~100 MB it keeps. Parsed after torch and transformers are imported, that scratch
sat on top of theirs and set a chat's peak memory; parsed first, and the scratch handed back to the
system (`heap.give_back`), the peak is the model's own.
"""

from __future__ import annotations

from pathlib import Path

from simlab.models import heap

_kept: dict[Path, object] = {}


def parse_early(path: Path) -> None:
    """Parse tokenizer.json now and keep it for `take`; nothing when the file is not there."""
    if path in _kept or not path.is_file():
        return
    from tokenizers import Tokenizer

    _kept[path] = Tokenizer.from_file(str(path))
    heap.give_back()


def take(path: Path):
    """The tokenizers.Tokenizer parsed early from this file (once), or None."""
    return _kept.pop(path, None)


def forget() -> None:
    """Drop whatever was parsed early and not taken."""
    _kept.clear()


class Given:
    """A parsed tokenizer handed to transformers' PreTrainedTokenizerFast(tokenizer_object=...),
    which deep-copies what it is given (a second parse): the copy is the tokenizer itself."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __deepcopy__(self, memo):
        return self.tokenizer
