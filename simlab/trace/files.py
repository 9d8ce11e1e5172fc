"""Where traces live: a folder beside their session (sessions/NAME.traces/NODE.safetensors), and
removing a session with its traces. No torch: listing and removing must not load it."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path


def trace_dir(session_path: Path) -> Path:
    """Traces live beside the session: sessions/NAME.traces/NODE.safetensors."""
    return session_path.with_name(session_path.name[: -len(session_path.suffix)] + ".traces")


_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def node_trace_path(session_path: Path, node_id: str) -> Path:
    """The node's trace file; an id that is not a plain file name (an imported file may hold any
    string, "../x" included) is named by its hash instead."""
    name = (
        node_id if _SAFE_ID.fullmatch(node_id) else "id-" + hashlib.sha256(node_id.encode()).hexdigest()[:32]
    )
    return trace_dir(session_path) / f"{name}.safetensors"


def remove_session(store, name: str) -> None:
    """Delete a session file (store.remove refuses one another process writes) and its traces."""
    store.remove(name)
    traces = trace_dir(store.path(name))
    if traces.is_dir():
        shutil.rmtree(traces)
