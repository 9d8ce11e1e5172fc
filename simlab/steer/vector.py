"""A steering vector and its file: a GGUF control vector as llama.cpp reads it, simlab's own
metadata beside it in the same file. No torch here.

llama.cpp's rules, read from its loader (common_control_vector_load) and graph (build_cvec):
one F32, 1-D tensor `direction.N` per layer, all of one width; N >= 1 (direction.0 is refused: no
vector is ever added there); the vector of direction.N is added to the output of block N, counting
blocks from 0, at every position, prompt and reply alike; several tensors for one layer add up.
repeng's ControlModel adds its layer N's direction at the same point (its export writes direction.N
with the same N), and simlab's trace calls that point `block.N`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from simlab.errors import SteerError

ARCH = "controlvector"
HOOK = "block_out"  # the output of a block: the residual stream after it (llama.cpp's and repeng's point)
META_KEY = "simlab.meta"  # simlab's metadata, one JSON string (llama.cpp and repeng read past it)


@dataclass(frozen=True)
class SteerVector:
    """Directions by block (0-based, as direction.N names them), each a float32 (hidden,) array."""

    directions: dict[int, np.ndarray]
    meta: dict = field(default_factory=dict)  # model, revision, hook, aggregate, personas, sessions...
    model_hint: str = ""  # controlvector.model_hint: the model type repeng wrote (e.g. "llama")

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    @property
    def hidden(self) -> int:
        return int(next(iter(self.directions.values())).shape[0]) if self.directions else 0

    @cached_property
    def digest(self) -> str:
        """sha256 of the directions alone (layer numbers and float32 bytes): two files that steer
        alike have one digest whatever their metadata; a node records it."""
        h = hashlib.sha256()
        for layer in self.layers:
            h.update(layer.to_bytes(4, "little"))
            h.update(np.ascontiguousarray(self.directions[layer], dtype="<f4").tobytes())
        return h.hexdigest()

    def norms(self) -> dict[int, float]:
        return {layer: float(np.linalg.norm(self.directions[layer])) for layer in self.layers}

    def fit(self, layers: int, hidden: int, model: str) -> None:
        """Refuse, in one line, a vector that does not fit a model of `layers` blocks `hidden` wide."""
        name = self.meta.get("name", "the vector")
        if self.hidden != hidden:
            raise SteerError(
                f"{name} is {self.hidden} wide but {model}'s residual stream is {hidden}: it was made "
                f"for another model{self._made_for()}"
            )
        over = [layer for layer in self.layers if layer >= layers]
        if over:
            raise SteerError(
                f"{name} has directions for block {over[0]} but {model} has blocks 0-{layers - 1}: it "
                f"was made for another model{self._made_for()}"
            )

    def _made_for(self) -> str:
        made = self.meta.get("model") or self.model_hint
        return f" ({made})" if made else ""

    def write(self, path: Path) -> Path:
        """The file llama.cpp's --control-vector loads as it is, with simlab's metadata beside it."""
        import gguf

        if 0 in self.directions:
            raise SteerError(
                "a direction for block 0 cannot be written: llama.cpp refuses direction.0 (it adds no "
                "vector there); leave block 0 out of --layers"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", self.model_hint or str(self.meta.get("architecture", "")))
        writer.add_uint32(f"{ARCH}.layer_count", len(self.directions))
        writer.add_string(META_KEY, json.dumps({"hook": HOOK, **self.meta}, sort_keys=True))
        for layer in self.layers:
            writer.add_tensor(f"direction.{layer}", np.ascontiguousarray(self.directions[layer], "float32"))
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        tmp.replace(path)
        return path


def read(path: Path) -> SteerVector:
    """A control-vector GGUF (simlab's, repeng's export_gguf, llama.cpp's cvector-generator), checked
    by llama.cpp's rules; anything else is refused in one line."""
    import gguf

    where = str(path)
    if path.is_dir():
        raise SteerError(f"{where} is a folder; give a .gguf control-vector file")
    try:
        reader = gguf.GGUFReader(str(path))
    except FileNotFoundError:
        raise SteerError(f"{where}: no such file") from None
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise SteerError(f"{where}: not a GGUF control vector (not GGUF, or cut short)") from None
    arch = _string(reader, "general.architecture")
    if arch not in (None, ARCH):
        raise SteerError(f"{where} is a GGUF of a {arch!r} model, not a control vector (controlvector)")
    directions: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        layer = _layer(tensor.name, where)
        if layer is None:
            continue
        data = np.asarray(tensor.data)
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32 or data.ndim != 1:
            raise SteerError(f"{where}: {tensor.name} is not a 1-D F32 tensor, as llama.cpp requires")
        if not np.isfinite(data).all():
            raise SteerError(f"{where}: {tensor.name} holds NaN or infinite values")
        if directions and data.shape[0] != next(iter(directions.values())).shape[0]:
            raise SteerError(f"{where}: {tensor.name} is {data.shape[0]} wide, unlike the other directions")
        # several tensors for one layer add up, as llama.cpp adds them
        directions[layer] = directions.get(layer, 0) + data.astype(np.float32)
    if not directions:
        raise SteerError(f"{where}: no direction.N tensors; not a control vector")
    meta = _meta(reader, where)
    return SteerVector(directions, meta, _string(reader, f"{ARCH}.model_hint") or "")


def _layer(name: str, where: str) -> int | None:
    if not name.startswith("direction."):
        return None
    try:
        layer = int(name.split(".", 1)[1])
    except ValueError:
        raise SteerError(f"{where}: {name!r} has no layer number (direction.N)") from None
    if layer < 1:
        raise SteerError(
            f"{where}: {name} is not a layer llama.cpp steers (its direction.N start at 1: block 0 "
            "is never steered)"
        )
    return layer


def _string(reader, key: str) -> str | None:
    found = reader.get_field(key)
    if found is None or not len(found.parts):
        return None
    return bytes(found.parts[-1]).decode("utf-8", errors="replace")


def _meta(reader, where: str) -> dict:
    text = _string(reader, META_KEY)
    if text is None:
        return {}
    try:
        meta = json.loads(text)
    except ValueError:
        raise SteerError(f"{where}: its {META_KEY} is not JSON; the file was damaged") from None
    return meta if isinstance(meta, dict) else {}


def parse_use(spec: str) -> tuple[str, tuple[float, ...], tuple[int, ...] | None]:
    """`NAME[:STRENGTH[,STRENGTH...]][@LAYERS]` -> (name, strengths, layers): `noir`, `noir:0.5`,
    `noir:-2@6-10`, `v.gguf@4,6,8`; several strengths (`noir:0,0.5,1,2`) are one a sibling. LAYERS:
    blocks as N, N-M and commas (None: every block the vector has)."""
    name, at, layers_text = spec.partition("@")
    if at and not layers_text.strip():
        raise SteerError(f"--steer {spec}: name the blocks after @ (like @6-10 or @4,6,8), or leave @ out")
    name, colon, strength_text = name.rpartition(":") if ":" in name else (name, "", "")
    strengths = (1.0,)
    if colon:
        try:
            strengths = tuple(float(part) for part in strength_text.split(","))
        except ValueError:
            raise SteerError(
                f"--steer {spec}: {strength_text!r} is not a strength (a number: noir:0.5, or one a "
                "sibling: noir:0,0.5,1)"
            ) from None
        if not all(math.isfinite(x) and abs(x) < 1e30 for x in strengths):
            raise SteerError(f"--steer {spec}: a strength must be a finite number (its size under 1e30)")
    if not name:
        raise SteerError(f"--steer {spec}: name a vector (simlab steer list), e.g. --steer noir:0.5@6-10")
    return name, strengths, parse_layers(layers_text, f"--steer {spec}") if layers_text else None


def parse_layers(text: str, where: str) -> tuple[int, ...]:
    """`6-10`, `4,6,8`, `3,5-7` -> the block numbers, sorted."""
    blocks: set[int] = set()
    try:
        for part in text.split(","):
            low, dash, high = part.strip().partition("-")
            first, last = int(low), int(high) if dash else int(low)
            if first < 0 or last < first:
                raise ValueError
            blocks.update(range(first, last + 1))
    except ValueError:
        raise SteerError(f"{where}: {text!r} is not a list of blocks (like 6-10 or 4,6,8)") from None
    return tuple(sorted(blocks))
