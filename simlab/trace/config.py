"""What a trace records. Imports no torch (the CLI validates trace flags before a model loads)."""

from __future__ import annotations

from dataclasses import dataclass

from simlab.errors import TraceError

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class TraceConfig:
    embed: bool = True
    layers: tuple[int, ...] | None = None  # blocks to keep; None: all
    norm: bool = True
    prompt: bool = False  # keep every prompt position, not only the last
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_BYTES:
            raise TraceError(
                f"trace dtype {self.dtype!r}: use bfloat16 or float16 (float32 for exact checks)"
            )

    def points(self, layers: int) -> list[str]:
        chosen = range(layers) if self.layers is None else self.layers
        for i in chosen:
            if not 0 <= i < layers:
                raise TraceError(f"trace layer {i}: this model has blocks 0..{layers - 1}")
        return (
            (["embed"] if self.embed else [])
            + [f"block.{i}" for i in chosen]
            + (["norm"] if self.norm else [])
        )

    def bytes_per_token(self, layers: int, hidden: int) -> int:
        return len(self.points(layers)) * hidden * DTYPE_BYTES[self.dtype]


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """'all' or None -> all; '0,4,8-11' -> (0, 4, 8, 9, 10, 11)."""
    if text is None or text.strip() in ("", "all"):
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise TraceError(f"trace layers {text!r}: use 'all' or numbers and ranges like 0,4,8-11") from None
    return tuple(sorted(set(out)))


def from_flags(points: str, layers: str | None, prompt: bool, dtype: str) -> TraceConfig:
    """The config --trace-points/--trace-layers/--trace-prompt/--trace-dtype describe."""
    chosen = {p.strip() for p in (points or "").split(",") if p.strip()}
    unknown = chosen - {"embed", "blocks", "norm"}
    if unknown or not chosen:
        raise TraceError(f"--trace-points {points!r}: use any of embed, blocks, norm (comma-separated)")
    return TraceConfig(
        embed="embed" in chosen,
        layers=parse_layers(layers) if "blocks" in chosen else (),
        norm="norm" in chosen,
        prompt=prompt,
        dtype=dtype,
    )
