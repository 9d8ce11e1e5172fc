"""What models are available here: the embedded one, converted GGUF caches, the Hugging Face cache."""

from __future__ import annotations

from pathlib import Path

from simlab.config import Settings
from simlab.models.info import hf_cache_dir


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(size: int) -> str:
    """Bytes in binary units, named as such (du -h and the file managers count so)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


# derived caches under the models folder: each rebuilt when needed, so safe to delete
DERIVED = {
    "quantized": "each model's layers as simlab's kernel reads them (GGUF codes, int8/int4)",
    "prefixes": "the KV caches of prompts' first chunks, kept between processes",
}


def kept(marker: dict, settings: Settings) -> str:
    """What a model's cache folder holds: its float32 conversion, or (read straight from the file for
    simlab's kernel) config, tokenizer and norms, its codes in the quantized cache (if still there)."""
    from simlab.models.load import kernel_codes

    if marker.get("weights") != "codes":
        return "converted"
    codes = kernel_codes(settings, str(marker.get("gguf_sha256", "")))
    if not codes.is_file():
        return "its codes not cached (read from the file again at the next start, as at the first)"
    return f"cached for the kernel ({_human(codes.stat().st_size)} of codes in the quantized cache)"


def list_models(settings: Settings) -> list[dict]:
    """One row per model: spec to pass to --model, kind, and its local state. Imports no torch."""
    from simlab.models import gguf

    rows = []
    embedded = gguf.cache_folder("embedded", settings)
    state = (
        f"{kept(gguf.read_marker(embedded), settings)}, {_human(_size(embedded))} at {embedded}"
        if gguf.read_marker(embedded)
        else "not converted yet (the first start reads it into a cache, about 30 s)"
    )
    rows.append({"spec": "embedded", "kind": "embedded", "state": "default; " + state, "path": str(embedded)})
    if settings.models_dir.is_dir():
        for folder in sorted(settings.models_dir.glob("gguf-*")):
            marker = gguf.read_marker(folder)
            if marker:
                rows.append(
                    {
                        "spec": marker["source"],
                        "kind": "gguf",
                        "state": f"{kept(marker, settings)}, {_human(_size(folder))}",
                        "path": str(folder),
                    }
                )
    for name, what in DERIVED.items():
        folder = settings.models_dir / name
        if folder.is_dir():
            files = [p for p in folder.rglob("*") if p.is_file()]
            size = sum(p.stat().st_size for p in files)
            state = f"{_human(size)} in {len(files)} file(s): {what}; rebuilt when needed, safe to delete"
            rows.append({"spec": f"({name} cache)", "kind": "cache", "state": state, "path": str(folder)})
    hub = hf_cache_dir()
    if hub.is_dir():
        for repo in sorted(hub.glob("models--*")):
            snapshots = list((repo / "snapshots").glob("*/config.json"))
            if not snapshots:
                continue
            files = {p.name for p in snapshots[0].parent.iterdir()}
            safe = any(
                name.endswith(".safetensors") or name.endswith(".safetensors.index.json") for name in files
            )
            rows.append(
                {
                    "spec": repo.name.removeprefix("models--").replace("--", "/"),
                    "kind": "hf-cache",
                    "state": f"{_human(_size(repo))}, "
                    + ("safetensors" if safe else "pickle only (needs --allow-pickle)"),
                    "path": str(repo),
                }
            )
    return rows
