"""What a loaded model is (its description, weights and tokenizer), and where hub models live on disk.
No torch here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    spec: str  # what the user asked for
    name: str  # a readable name
    revision: str  # hub commit, GGUF sha256, or a fingerprint of a local folder
    architecture: str
    layers: int
    hidden_size: int
    vocab_size: int
    context_length: int
    device: str
    dtype: str
    parameters: int
    source: str  # where the weights were read from
    from_cache: bool = False  # True when a GGUF was not converted in this call
    weights: str = "float"  # how the linear layers hold their weights: float, int8 or int4 (models.quant)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel in eval mode
    tokenizer: Any  # a transformers tokenizer
    info: ModelInfo


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def eos_ids(model, tokenizer) -> frozenset[int]:
    """End-of-sequence ids from the generation config, the model config and the tokenizer."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
