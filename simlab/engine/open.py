"""One place that turns settings into an engine: the local model, or a server (engine.remote)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from simlab.config import Settings
from simlab.models.load import EMBEDDED


def open_engine(
    settings: Settings,
    spec: str | None = None,
    trust_remote_code: bool = False,
    progress: Callable[[str], None] | None = None,
):
    """An Engine for the local model `spec` (default: the settings' model), or a RemoteEngine when the
    backend is openai (then `spec` is the server's model name; the embedded default means "the
    server's only model")."""
    spec = spec or settings.model
    if settings.backend == "openai":
        from simlab.engine.remote import RemoteConfig, RemoteEngine

        def load_hf(name: str):
            from simlab.models.load import load_tokenizer

            return load_tokenizer(name, settings, trust_remote_code=trust_remote_code, progress=progress)

        return RemoteEngine(
            RemoteConfig(
                settings.base_url,
                None if spec == EMBEDDED else spec,
                api_key_env=settings.api_key_env,
                concurrency=int(settings.concurrency),
                tokenizer=settings.tokenizer,
                context=int(settings.context) if settings.context else None,
                offline=settings.offline,
            ),
            load_hf=load_hf,
        )
    from simlab.engine.local import Engine
    from simlab.models.load import load_model

    loaded = load_model(spec, settings, trust_remote_code=trust_remote_code, progress=progress)
    return Engine(loaded, prefix_dir=prefix_folder(settings, loaded.info))


def prefix_folder(settings: Settings, info):
    """Where this model's prompt chunks are kept on disk (engine.prefix.DiskPrefixes): one folder per
    revision, weights, dtype, device and kernel version, since each computes other bits; None
    without a revision."""
    import hashlib

    if not info.revision:
        return None
    key = f"{info.revision}:{info.weights}:{info.dtype}:{info.device}"
    if info.weights.startswith("gguf"):  # simlab's kernel computes the cache: a new version, other bits
        from simlab.models import native

        lib = native.library()
        key += f":kernel-{lib.simlab_qmatmul_version() if lib is not None else 'torch'}"
        key += ":tables-here"  # (models.lean.tables_here: chunks kept before may hold coarse rotary tables)
    return settings.models_dir / "prefixes" / hashlib.sha256(key.encode()).hexdigest()[:16]


def recorded_server(settings: Settings, nodes, backend_flag: str | None) -> Settings:
    """Settings pointing at the server the nodes' replies came from, when nothing says otherwise
    (no --backend, and the settings are local): a resumed chat or a replay goes back to it."""
    if backend_flag is not None or settings.backend != "local":
        return settings
    urls = [n.backend["base_url"] for n in nodes if n.backend and isinstance(n.backend.get("base_url"), str)]
    if not urls:
        return settings
    return replace(settings, backend="openai", base_url=urls[-1])
