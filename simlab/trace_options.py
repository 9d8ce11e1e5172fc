"""What a trace records, and its command-line flags. Imports no torch (the CLI parser uses it)."""

from __future__ import annotations

from dataclasses import dataclass

from simlab.errors import SimlabError

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


class TraceError(SimlabError):
    """A trace that cannot be captured, read or interpreted as asked."""


@dataclass(frozen=True)
class TraceConfig:
    embed: bool = True
    layers: tuple[int, ...] | None = None  # blocks to keep; None: all
    norm: bool = True
    prompt: bool = False  # keep every prompt position, not only the last
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_BYTES:
            raise TraceError(f"trace dtype {self.dtype!r}: use bfloat16 or float16 (float32 for exact checks)")

    def points(self, layers: int) -> list[str]:
        chosen = range(layers) if self.layers is None else self.layers
        for i in chosen:
            if not 0 <= i < layers:
                raise TraceError(f"trace layer {i}: this model has blocks 0..{layers - 1}")
        return (["embed"] if self.embed else []) + [f"block.{i}" for i in chosen] + (["norm"] if self.norm else [])

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


def add_flags(parser) -> None:
    group = parser.add_argument_group("residual-stream trace")
    group.add_argument("--trace", action="store_true", help="record the residual stream of each reply")
    group.add_argument("--trace-points", metavar="LIST", default="embed,blocks,norm",
                       help="what to record: any of embed (input to block 0), blocks, norm (final norm output)")
    group.add_argument("--trace-layers", metavar="LIST", help="blocks to record: all (default) or e.g. 0,4,8-11")
    group.add_argument("--trace-prompt", action="store_true", help="also record every prompt position")
    group.add_argument("--trace-dtype", choices=["bfloat16", "float16"], default="bfloat16")


def config_from(args) -> TraceConfig | None:
    if not getattr(args, "trace", False):
        return None
    points = {p.strip() for p in (args.trace_points or "").split(",") if p.strip()}
    unknown = points - {"embed", "blocks", "norm"}
    if unknown or not points:
        raise TraceError(f"--trace-points {args.trace_points!r}: use any of embed, blocks, norm (comma-separated)")
    layers = parse_layers(args.trace_layers) if "blocks" in points else ()
    return TraceConfig(embed="embed" in points, layers=layers, norm="norm" in points, prompt=args.trace_prompt,
                       dtype=args.trace_dtype)


def make_tracer(config: TraceConfig | None, say):
    """A trace.Tracer for the config (None when not tracing); imports torch only when tracing."""
    if config is None:
        return None
    from simlab.trace import Tracer

    return Tracer(config, say=say)
