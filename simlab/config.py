"""Settings: defaults < config file ($SIMLAB_HOME/config.yaml) < environment (SIMLAB_*) < flags.

All state lives under one directory, SIMLAB_HOME, so tests redirect everything with one setenv.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from simlab.errors import BadInput, ConfigError

DEVICES_HELP = "auto, cpu, cuda, cuda:N or mps"
DTYPES = ("auto", "float32", "bfloat16", "float16")
WEIGHTS = ("auto", "float", "int8", "int4", "gguf", "gguf-a8")  # auto: gguf for a GGUF on the CPU, else float


def simlab_home() -> Path:
    """The user's simlab directory: $SIMLAB_HOME, else the platform's user data directory."""
    env = os.environ.get("SIMLAB_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("simlab", appauthor=False))


@dataclass(frozen=True)
class Settings:
    model: str = "embedded"
    device: str = "auto"
    dtype: str = "auto"
    weights: str = "auto"
    offline: bool = False
    allow_pickle: bool = False
    sessions_dir: str = "sessions"
    persona: str = "interview"  # the chat's persona when none is given
    backend: str = "local"  # or "openai": an OpenAI-compatible server at base_url (simlab.engine.remote)
    base_url: str = ""
    api_key_env: str = "SIMLAB_API_KEY"  # the variable holding the server's API key (never stored)
    concurrency: str = "4"  # requests in flight at once to a server
    tokenizer: str = "auto"  # what counts a server's tokens (engine.tokenizers.choose)
    context: str = ""  # a server's context in tokens, when it does not say ("": ask it)

    @property
    def home(self) -> Path:
        return simlab_home()

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def __post_init__(self) -> None:
        validate_device(self.device)
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.weights not in WEIGHTS:
            raise ConfigError(f"weights {self.weights!r} is not one of {', '.join(WEIGHTS)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if not self.concurrency.isdigit() or not 1 <= int(self.concurrency) <= 256:
            raise ConfigError(
                f"concurrency {self.concurrency!r} is not valid; use a whole number from 1 to 256"
            )
        if self.context and (not self.context.isdigit() or int(self.context) < 16):
            raise ConfigError(f"context {self.context!r} is not valid; give the server's context in tokens")
        if not self.tokenizer.strip():
            raise ConfigError(
                "tokenizer is empty; use auto, server, tiktoken, none, or a tokenizer id/folder"
            )
        if self.backend == "openai" and not self.base_url:
            raise ConfigError("backend openai needs the server's URL: --base-url http://HOST:PORT/v1")


def validate_device(device: str) -> None:
    """Accept auto/cpu/mps/cuda/cuda:N; anything else is a ConfigError."""
    if device in ("auto", "cpu", "mps", "cuda"):
        return
    if device.startswith("cuda:") and device[5:].isdigit():
        return
    raise ConfigError(f"device {device!r} is not valid; use {DEVICES_HELP}")


BACKENDS = ("local", "openai")
_ENV = {
    "backend": "SIMLAB_BACKEND",
    "base_url": "SIMLAB_BASE_URL",
    "concurrency": "SIMLAB_CONCURRENCY",
    "tokenizer": "SIMLAB_TOKENIZER",
    "context": "SIMLAB_CONTEXT",
    "model": "SIMLAB_MODEL",
    "device": "SIMLAB_DEVICE",
    "dtype": "SIMLAB_DTYPE",
    "weights": "SIMLAB_WEIGHTS",
    "offline": "SIMLAB_OFFLINE",
    "sessions_dir": "SIMLAB_SESSIONS",
    "persona": "SIMLAB_PERSONA",
}


def _coerce(name: str, value: object, kind: type, where: str) -> object:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{where}: {name} must be true or false, not {value!r}")
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"{where}: {name} must be a string, not {type(value).__name__}")
    return str(value)


def load_settings(**flags: object) -> Settings:
    """Merge the layers; flags that are None are treated as not given."""
    kinds = {f.name: (bool if f.type in ("bool", bool) else str) for f in fields(Settings)}
    values: dict[str, object] = {}
    origin: dict[str, str] = {}  # where each value was set, for the error that names it
    path = simlab_home() / "config.yaml"
    if path.exists():
        from simlab import safe_yaml

        try:
            data = safe_yaml.compose_and_load(safe_yaml.read_text(path, "a config file"), str(path))[0] or {}
        except BadInput as exc:
            raise ConfigError(f"{exc} (or delete the file)") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        for key, value in data.items():
            if key not in kinds:
                raise ConfigError(f"{path}: unknown setting {key!r}; known: {', '.join(kinds)}")
            values[key], origin[key] = _coerce(key, value, kinds[key], str(path)), str(path)
    for name, var in _ENV.items():
        if var in os.environ:
            values[name] = _coerce(name, os.environ[var], kinds[name], f"environment {var}")
            origin[name] = f"the environment variable {var}"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        values["offline"] = True
    for name, value in flags.items():
        if name not in kinds:
            raise TypeError(f"unknown setting {name}")
        if value is not None:
            values[name], origin[name] = value, f"--{name.replace('_', '-')}"
    try:
        return dataclasses.replace(Settings(), **values)
    except ConfigError as exc:
        where = origin.get(str(exc).split(" ", 1)[0], f"{path}, the environment or a flag")
        raise ConfigError(f"{exc} (set by {where})") from None


def invoked_as(argv0: str | None = None) -> str:
    """How to run simlab again as it was run now: `simlab` where that is the one on PATH, else the
    path it was started by (`.venv/bin/simlab`, as the README runs it), so the line can be pasted."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    if Path(argv0).name != "simlab" or os.sep not in argv0:
        return "simlab"  # on PATH, or `python -m simlab`
    found = shutil.which("simlab")
    if found and os.path.realpath(found) == os.path.realpath(argv0):
        return "simlab"
    return shlex.quote(argv0)
