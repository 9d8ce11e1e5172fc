"""Loading through transformers' from_pretrained: local folders and Hugging Face hub ids.

Safe by default: safetensors only (pickle weights can run code when unpickled, so they need
--allow-pickle), and remote code only with --trust-remote-code.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
import urllib.parse
from pathlib import Path

import torch

from simlab.errors import ModelUnavailableError, UnknownModelError
from simlab.models import bpe, tokenizer_json
from simlab.models.device import dtype_name
from simlab.models.info import LoadedModel, ModelInfo, hf_cache_dir

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})(/|$)")


def quiet_transformers() -> None:
    # The hub's safetensors-conversion bot would open a pull request over the network; never here.
    os.environ.setdefault("DISABLE_SAFETENSORS_CONVERSION", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()


def folder_weights(folder: Path) -> str:
    """'safetensors' or 'pickle'; raises when the folder holds no weights at all."""
    names = [p.name for p in folder.iterdir() if p.is_file()]
    if any(n.endswith(".safetensors") for n in names):
        return "safetensors"
    if any(n.endswith(_PICKLE_SUFFIXES) for n in names):
        return "pickle"
    if "config.json" not in names:
        raise UnknownModelError(
            f"model folder {folder}: no config.json; is this a transformers model folder?"
        )
    raise ModelUnavailableError(f"model folder {folder}: no weight files (*.safetensors) in it")


def _pickle_refused(where: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"{where} has only pickle weights (.bin), which can run code when loaded; "
        "pass --allow-pickle if you trust its source"
    )


def folder_revision(folder: Path) -> str:
    """The hub commit for a hub-cache snapshot, else a fingerprint of config and weight files."""
    match = _SNAPSHOT.search(str(folder.resolve()))
    if match:
        return match.group(1)
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    for path in sorted(folder.iterdir()):
        if path.suffix in (".safetensors",) + _PICKLE_SUFFIXES:
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return "local-" + digest.hexdigest()[:12]


def load_folder(
    folder: Path,
    *,
    spec: str,
    device: torch.device,
    dtype: torch.dtype,
    allow_pickle: bool,
    trust_remote_code: bool,
    revision: str | None = None,
    from_cache: bool = False,
    name: str | None = None,
    own_cache: bool = False,
) -> LoadedModel:
    """Load a model folder (config.json, weights, tokenizer files). `own_cache`: a folder simlab
    wrote itself (the embedded model), whose tokenizer.json is read straight into a fast tokenizer."""
    kind = folder_weights(folder)
    if kind == "pickle" and not allow_pickle:
        raise _pickle_refused(f"model folder {folder}")
    return _from_pretrained(
        str(folder),
        spec=spec,
        device=device,
        dtype=dtype,
        offline=True,
        use_safetensors=(kind == "safetensors"),
        trust_remote_code=trust_remote_code,
        revision=revision or folder_revision(folder),
        name=name or folder.name,
        from_cache=from_cache,
        own_cache=own_cache,
    )


def load_hub(
    model_id: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    offline: bool,
    allow_pickle: bool,
    trust_remote_code: bool,
) -> LoadedModel:
    """Load a hub id through the Hugging Face cache (HF_HOME), downloading unless offline."""
    return _from_pretrained(
        model_id,
        spec=model_id,
        device=device,
        dtype=dtype,
        offline=offline,
        use_safetensors=None if allow_pickle else True,
        trust_remote_code=trust_remote_code,
        revision=None,
        name=model_id,
        from_cache=False,
    )


def _hub_error(spec: str, exc: BaseException, offline: bool, what: str = "model") -> Exception:
    text = str(exc)
    if "not a valid model identifier" in text or "Repository Not Found" in text:
        return UnknownModelError(
            f"{what} {spec!r}: no such model on the Hugging Face hub (check the spelling; "
            "for a gated or private model run `hf auth login`)"
        )
    if "does not appear to have a file named" in text and "safetensors" in text:
        return _pickle_refused(f"model {spec!r}")
    if offline or "offline" in text.lower() or "couldn't connect" in text or "cached files" in text:
        home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        return ModelUnavailableError(
            f"{what} {spec!r} is not in the Hugging Face cache ({home}) and cannot be downloaded "
            "(offline or no network); download it once with network, or pass a local folder"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return ModelUnavailableError(f"{what} {spec!r} could not be loaded: {first}")


def _from_pretrained(
    source: str,
    *,
    spec: str,
    device: torch.device,
    dtype: torch.dtype,
    offline: bool,
    use_safetensors: bool | None,
    trust_remote_code: bool,
    revision: str | None,
    name: str,
    from_cache: bool,
    own_cache: bool = False,
) -> LoadedModel:
    quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline = offline or not _reachable(source)
    # cache_dir is resolved per call: huggingface_hub reads HF_HOME only once, at import.
    common = {
        "local_files_only": offline,
        "trust_remote_code": trust_remote_code,
        "cache_dir": str(hf_cache_dir()),
    }
    if Path(source).is_dir():  # loading a local folder takes seconds; a bar is noise
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        tokenizer = _own_tokenizer(Path(source)) if own_cache else _lean_gemma(Path(source))
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype,
            use_safetensors=use_safetensors,
            device_map=str(device) if device.type == "cuda" else None,
            **common,
        )
    except Exception as exc:  # noqa: BLE001 - any failure here is about the files; say which
        raise _files_error(
            source, spec, exc, offline, f"model folder {source} could not be loaded",
            "check that it is a complete causal-LM folder, or delete and re-create it",
        ) from None  # fmt: skip
    if device.type != "cuda":
        model.to(device)
    model.eval().requires_grad_(False)
    if revision is None:
        revision = _hub_commit(source, common["cache_dir"]) or "unknown"
    info = describe(model, spec=spec, name=name, revision=revision, source=source, from_cache=from_cache)
    return LoadedModel(model, tokenizer, info)


def load_tokenizer(
    source: str,
    *,
    spec: str,
    offline: bool,
    trust_remote_code: bool,
    own_cache: bool = False,
    gguf_file: str | None = None,
):
    """A model's tokenizer alone (no weights): a folder, a GGUF's metadata, or a hub id through the
    Hugging Face cache, downloading unless offline. For token counts (`--tokenizer`, `simlab tokens`)."""
    quiet_transformers()
    if own_cache:
        return _own_tokenizer(Path(source))
    lean = _lean_gemma(Path(source)) if gguf_file is None else None  # (a GGUF's own: from its metadata)
    if lean is not None:
        return lean
    from transformers import AutoTokenizer  # (transformers.models: 0.2 s of imports)

    offline = offline or not _reachable(source)
    try:
        return AutoTokenizer.from_pretrained(
            source,
            local_files_only=offline,
            trust_remote_code=trust_remote_code,
            cache_dir=str(hf_cache_dir()),
            **({"gguf_file": gguf_file} if gguf_file else {}),
        )
    except Exception as exc:  # noqa: BLE001 - any failure here is about the files; say which
        raise _files_error(
            source, spec, exc, offline, f"tokenizer of {spec} could not be read",
            "give a folder with tokenizer.json (or a Hugging Face model's tokenizer files)", what="tokenizer",
        ) from None  # fmt: skip


def _files_error(
    source: str, spec: str, exc: BaseException, offline: bool, head: str, advice: str, what="model"
):
    """One line for files that would not load: a folder's own problem, or the hub's."""
    if Path(source).is_dir():
        return ModelUnavailableError(f"{head} ({str(exc).strip().splitlines()[0][:200]}); {advice}")
    return _hub_error(spec, exc, offline, what=what)


def _reachable(source: str) -> bool:
    """A folder, or a hub id while the hub answers: without network a lookup retries for a minute."""
    return Path(source).is_dir() or hub_reachable()


@functools.cache
def hub_reachable() -> bool:
    """Whether the hub answers at all (3 s): without network, a lookup would retry for a minute."""
    from huggingface_hub import constants

    host = urllib.parse.urlsplit(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def _own_tokenizer(folder: Path):
    """The tokenizer of a folder simlab converted, from tokenizer.json and its special tokens:
    simlab's own (models.bpe) where it takes the file, as the embedded model's, else tokenizers'.

    AutoTokenizer builds the same tokenizer (tested on the embedded model, encode and decode) but
    parses the 33 MB tokenizer.json in Python on top of the Rust parse: 5.4 s against 2.5 s."""
    import json

    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    lean = bpe.load(folder, config)
    if lean is not None:
        return lean
    from transformers import PreTrainedTokenizerFast

    keep = (
        "bos_token",
        "eos_token",
        "unk_token",
        "pad_token",
        "mask_token",
        "chat_template",
        "model_max_length",
    )
    kwargs = {k: config[k] for k in keep if config.get(k) is not None}
    parsed = tokenizer_json.take(folder / "tokenizer.json")
    if parsed is not None:
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer_json.Given(parsed), **kwargs)
        if tokenizer.backend_tokenizer is parsed:
            return tokenizer
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **kwargs)


# what a GGUF's conversion writes in tokenizer_config.json for a Gemma: nothing that makes transformers'
# Gemma tokenizer other than its tokenizer.json (no chat template, no add_bos_token)
_PLAIN_GEMMA = frozenset(
    ("backend", "bos_token", "eos_token", "is_local", "local_files_only", "mask_token")
    + ("model_max_length", "pad_token", "tokenizer_class", "unk_token")
)


def _lean_gemma(folder: Path):
    """simlab's own tokenizer (models.bpe) for a folder whose tokenizer is a Gemma one configured
    by its tokenizer.json alone, as a GGUF's conversion writes it: AutoTokenizer's ids and text in
    about 85 MB less; else None."""
    import json

    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("tokenizer_class") != "GemmaTokenizer":
        return None
    named = all(config.get(f"{role}_token") for role in ("bos", "eos", "unk", "pad", "mask"))
    return bpe.load(folder, config) if set(config) <= _PLAIN_GEMMA and named else None


def _hub_commit(model_id: str, cache_dir: str) -> str | None:
    from transformers.utils import cached_file

    try:
        path = cached_file(model_id, "config.json", local_files_only=True, cache_dir=cache_dir)
    except OSError:
        return None
    match = _SNAPSHOT.search(str(path)) if path else None
    return match.group(1) if match else None


def describe(model, *, spec: str, name: str, revision: str, source: str, from_cache: bool) -> ModelInfo:
    """Summarise a loaded model's shape, place and provenance."""
    config = model.config.get_text_config()
    context = next(
        (
            getattr(config, key)
            for key in ("max_position_embeddings", "n_positions", "n_ctx")
            if isinstance(getattr(config, key, None), int)
        ),
        2048,
    )
    # (a model built from cached codes holds its embedding on the meta device until it is replaced)
    parameter = next((p for p in model.parameters() if p.device.type != "meta"), next(model.parameters()))
    return ModelInfo(
        spec=spec,
        name=name,
        revision=revision,
        architecture=(model.config.architectures or [type(model).__name__])[0],
        layers=int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0)),
        hidden_size=int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0)),
        vocab_size=int(config.vocab_size),
        context_length=int(context),
        device=str(parameter.device),
        dtype=dtype_name(parameter.dtype),
        parameters=sum(p.numel() for p in model.parameters()),
        source=source,
        from_cache=from_cache,
    )
