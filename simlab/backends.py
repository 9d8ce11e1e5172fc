"""One place that turns settings into an engine: the local model, or a server (simlab.remote)."""

from __future__ import annotations

from typing import Callable

from simlab.config import Settings
from simlab.models import EMBEDDED


def open_engine(settings: Settings, spec: str | None = None, trust_remote_code: bool = False,
                progress: Callable[[str], None] | None = None):
    """An Engine for the local model `spec` (default: the settings' model), or a RemoteEngine when the
    backend is openai (then `spec` is the server's model name; the embedded default means "the
    server's only model")."""
    spec = spec or settings.model
    if settings.backend == "openai":
        from simlab.remote import RemoteConfig, RemoteEngine

        return RemoteEngine(RemoteConfig(settings.base_url, None if spec == EMBEDDED else spec,
                                         api_key_env=settings.api_key_env))
    from simlab.engine import Engine
    from simlab.models import load_model

    return Engine(load_model(spec, settings, trust_remote_code=trust_remote_code, progress=progress))


def is_remote(engine) -> bool:
    return getattr(engine, "model", None) is None
