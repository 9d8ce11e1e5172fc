"""The logit lens: read any captured residual through the model's own final norm and unembedding
(with Gemma's final logit softcapping), and compare residuals of two nodes layer by layer."""

from __future__ import annotations

import warnings

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
        vocab = self.model.get_input_embeddings().num_embeddings  # (a GGUF's may hold codes, no .weight)
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


def norm_heatmap(path) -> dict:
    """A trace file as a heatmap of residual norms (rows: capture points, columns: positions), for
    `sessions export --format html`; no model needed."""
    from simlab.trace.record import load

    tensors, info = load(path)
    points = [p["name"] for p in info["points"] if p["name"] in tensors]
    norms = residual_norms(tensors, points)
    return {
        "title": f"L2 norm of the residual stream ({info.get('model_name', '?')}, {info.get('dtype', '?')}): "
        "rows are capture points, columns the positions read; darker is larger, per row",
        "rows": points,
        "columns": [str(p) for p in info["positions"]],
        "values": [[round(v, 3) for v in norms[name]] for name in points],
    }


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


# -- PNG figures (matplotlib, imported only when one is written) ---------------------------------


def heatmap_png(path, values: list[list[float]], rows: list[str], columns: list[str], title: str) -> None:
    """A layers x positions heatmap with labelled axes and a colour bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(columns) + 2), max(3.0, 0.3 * len(rows) + 1.5)))
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("position (the token that came next)")
    ax.set_ylabel("layer (residual stream point)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="probability of the chosen token")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bars_png(path, values: list[float], labels: list[str], title: str) -> None:
    """One bar per residual point, labelled, with the value axis named."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(values) + 2), 3.5))
    ax.bar(range(len(values)), values, color="#21918c")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("layer (residual stream point)")
    ax.set_ylabel("cosine distance")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    # a token in a script the font lacks is drawn as a box; that is no reason to warn on the terminal
    warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)

    return plt
