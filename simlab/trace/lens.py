"""The logit lens: read any captured residual through the model's own final norm and unembedding
(with Gemma's final logit softcapping), and compare residuals of two nodes layer by layer."""

from __future__ import annotations

import math

import torch

from simlab.errors import TraceError
from simlab.trace.record import Architecture, find_architecture


class Lens:
    """Residual -> logits as the model itself would compute them from its last layer."""

    def __init__(self, model, check: bool = True):
        self.model = model
        self.arch: Architecture = find_architecture(model)
        if check:
            self.check()

    @torch.inference_mode()
    def logits(self, resid: torch.Tensor, normed: bool) -> torch.Tensor:
        """(P, d) -> (P, V) float32; `normed` residuals (the final norm's output) skip the norm."""
        weight = next(self.model.parameters())  # the residual stream's device and dtype (the unembedding
        x = resid.to(device=weight.device, dtype=weight.dtype)  # may hold int8/int4 buffers only)
        if not normed:
            x = self.arch.norm(x)
        logits = self.arch.unembed(x).float()
        if self.arch.softcap:
            logits = torch.tanh(logits / self.arch.softcap) * self.arch.softcap
        return logits

    @torch.inference_mode()
    def check(self) -> None:
        """On this very model: hidden_states[-1] is the final norm's output (so it must not be normed
        again), norm(last block) equals it, and the lens reproduces the model's logits from it."""
        device = next(self.model.parameters()).device
        vocab = self.model.get_input_embeddings().weight.shape[0]
        ids = torch.arange(1, 7, device=device).clamp(max=vocab - 1).unsqueeze(0)  # (1, 6)
        raw = {}
        handle = self.arch.blocks[-1].register_forward_hook(
            lambda m, a, out: raw.setdefault("last", (out[0] if isinstance(out, tuple) else out).detach())
        )
        try:
            out = self.model(input_ids=ids, output_hidden_states=True)
        finally:
            handle.remove()
        states = out.hidden_states
        name = type(self.model).__name__
        if states is None or len(states) != self.arch.layers + 1:
            raise TraceError(f"lens check failed on {name}: expected {self.arch.layers + 1} hidden states")
        normed = states[-1][0].float()
        if not torch.allclose(self.arch.norm(raw["last"])[0].float(), normed, atol=1e-4, rtol=1e-3):
            raise TraceError(
                f"lens check failed on {name}: hidden_states[-1] is not the final norm of the "
                "last block's output; the lens would read the wrong state"
            )
        lens_logits = self.logits(states[-1][0], normed=True)
        if not torch.allclose(lens_logits, out.logits[0].float(), atol=1e-3, rtol=1e-3):
            raise TraceError(
                f"lens check failed on {name}: the unembedding of the final state does not give "
                "the model's logits (an unhandled final transform?)"
            )


def top_tokens(
    lens: Lens, tensors: dict[str, torch.Tensor], points: list[str], chosen: list[int], k: int = 1
):
    """For each point and position: top-k (id, prob) and the probability of the chosen next token."""
    out = {}
    for name in points:
        probs = lens.logits(tensors[name], normed=name == "norm").softmax(dim=-1)  # (P, V)
        top = probs.topk(k, dim=-1)
        picked = probs[torch.arange(len(chosen)), torch.tensor(chosen)] if chosen else torch.empty(0)
        out[name] = (top.indices.tolist(), top.values.tolist(), picked.tolist())
    return out


def residual_norms(tensors: dict[str, torch.Tensor], points: list[str]) -> dict[str, list[float]]:
    return {name: tensors[name].float().norm(dim=-1).tolist() for name in points}


def diff_rows(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], index_a: int, index_b: int, points: list[str]
) -> list[tuple[str, float, float, float, float]]:
    """Per point: cosine distance, norm of the difference, and both norms, at one position each."""
    rows = []
    for name in points:
        x, y = a[name][index_a].float(), b[name][index_b].float()
        cos = float(torch.nn.functional.cosine_similarity(x, y, dim=0))
        rows.append((name, 1 - cos, float((x - y).norm()), float(x.norm()), float(y.norm())))
    return rows


# -- PNG without a plotting library ---------------------------------------------------------------

VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def color(value: float) -> tuple[int, int, int]:
    if value != value:  # NaN
        return (200, 200, 200)
    value = min(max(value, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(value), len(VIRIDIS) - 2)
    f = value - i
    return tuple(int(a + (b - a) * f) for a, b in zip(VIRIDIS[i], VIRIDIS[i + 1]))


def write_png(path, grid: list[list[tuple[int, int, int]]], cell: int = 12) -> None:
    """Each grid entry a cell x cell block of its colour."""
    import struct
    import zlib

    rows = []
    for line in grid:
        pixels = b"".join(bytes(c) * cell for c in line)
        rows += [b"\x00" + pixels] * cell
    height, width = len(grid) * cell, (len(grid[0]) if grid else 0) * cell

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )
    with open(path, "wb") as handle:
        handle.write(data)


def bars(values: list[float], height: int = 10) -> list[list[tuple[int, int, int]]]:
    """A bar chart as a grid: one column per value, scaled to the largest."""
    top = max((v for v in values if not math.isnan(v)), default=1.0) or 1.0
    grid = []
    for level in range(height, 0, -1):
        grid.append([color(0.75) if v / top * height >= level - 0.5 else (255, 255, 255) for v in values])
    return grid
