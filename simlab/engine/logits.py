"""The pure logits steps that apply sampling parameters (defined in simlab.engine.params).

Each step is ``(logits, ...) -> logits`` over a (B, V) tensor, never changes its input in place,
and has the semantics of the transformers logits processor of the same name. They run in the
order transformers uses: repetition penalty, temperature, top-k, top-p, min-p, typical-p.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from simlab.engine.params import SamplingParams
from simlab.models import ranking
from simlab.models.ranking import top_k as best_of

# top-p looks for its nucleus among this many best tokens first; when they do not hold enough
# mass, among the tokens above a probability cut lowered 16-fold until they do, and sorts only
# those (a sort of all 262k tokens is ~30 ms; of the tokens above a cut, a few ms).
_NUCLEUS_PREFILTER = 1024
_CUT_STEP = 16.0
# `choose` works on each row's best tokens, this many first, then more, while they hold every token
# the filters keep (nearly always: a step's nucleus is a few to a few hundred tokens)
_CANDIDATES = (256, 4096)
# `_reach` counts a row's values in levels this far apart (a tenth in probability), this many of them
_LEVEL_STEP = math.log(1.1)
_LEVELS = 96


def apply_repetition_penalty(logits: torch.Tensor, context: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive (multiply negative) logits of tokens already in context (B, T) by penalty."""
    if penalty == 1.0:
        return logits
    seen = logits.gather(-1, context)  # (B, T)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(-1, context, seen)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1.0 else logits / temperature


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k best tokens (and any tied with the k-th)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, -math.inf)


def apply_top_p(logits: torch.Tensor, p: float, log_total: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the smallest set of best tokens whose mass reaches p (the token crossing p is kept);
    `log_total`: the rows' logsumexp (B, 1), where the caller has it."""
    if p >= 1.0:
        return logits
    vocab = logits.shape[-1]
    k = min(_NUCLEUS_PREFILTER, vocab)
    if log_total is None:
        log_total = torch.logsumexp(logits, dim=-1, keepdim=True)  # (B, 1)
    # the k best values first (one pass in C: the same values in the same order whatever order
    # ties come in), enough to tell a wide nucleus; torch's ids (its order of ties) where it is not
    best = best_of(logits, k)[0] if k < vocab else None
    if best is not None and bool(((best - log_total).exp().sum(-1) < p).any()):
        found = [
            _wide_cut(row, total, p, float(least))
            for row, total, least in zip(logits, log_total, best[:, -1])
        ]
        kept = ranking.nucleus_rows(logits, found, p)  # (the rows' passes in C, over the threads)
        if kept is not None:
            return kept
        return torch.stack([_top_p_wide(row, p, *cut) for row, cut in zip(logits, found)])
    best, best_ids = torch.topk(logits, k, dim=-1)  # (B, k), descending
    best_probs = (best - log_total).exp()
    return logits.masked_fill(~_nucleus(logits, best_probs, best_ids, p), -math.inf)


def _nucleus(logits: torch.Tensor, probs: torch.Tensor, ids: torch.Tensor, p: float) -> torch.Tensor:
    """The kept mask from candidates in descending order (probs, ids) that hold at least p.
    A token is dropped when the mass of the tokens ranked above it already reaches p,
    i.e. when the ascending cumulative mass up to it is <= 1 - p (transformers' rule)."""
    mass_above = probs.cumsum(-1) - probs
    drop = mass_above >= p
    drop[..., 0] = False
    return torch.zeros_like(logits, dtype=torch.bool).scatter(-1, ids, ~drop)


def _wide_cut(row: torch.Tensor, log_total: torch.Tensor, p: float, least: float):
    """A row (V,) whose nucleus is wider than the prefilter: (cut, values, probs), a logit cut lowered
    from the prefilter's `least` until the tokens at or above it (`values`, in the order of their
    ids, and their `probs`) hold p (every token above the cut is in, so the nucleus is among them)."""
    lowest = float(row.amin())  # the least finite value: one pass where no token is filtered out
    if not math.isfinite(lowest):
        lowest = float(torch.where(row.isfinite(), row, math.inf).amin())
    cut = least
    while True:
        cut = max(cut - math.log(_CUT_STEP), lowest)
        values = ranking.above(row, cut)  # row[row >= cut], in the order of their ids
        probs = (values - log_total).exp()
        if cut == lowest or float(probs.sum()) >= p:
            return cut, values, probs


def _top_p_wide(row: torch.Tensor, p: float, cut: float, values: torch.Tensor, probs: torch.Tensor):
    """The row with -inf past its nucleus, found among the tokens at or above `cut` in torch."""
    ids = (row >= cut).nonzero().squeeze(-1)
    order = descending(values)
    return row.masked_fill(~_nucleus(row, probs[order], ids[order], p), -math.inf)


def descending(values: torch.Tensor) -> torch.Tensor:
    """The order of float32 `values` (N,) from largest to smallest, equal values by position: what
    `torch.sort(values, descending=True, stable=True).indices` gives, from one sort of int64 keys
    (value's bits made to order as integers, then the position), ~7x faster on the CPU (a float
    sort of 49,152 values took 3.9 ms, the keys' 0.5). NaN is not expected (logits or -inf)."""
    bits = (values.float() + 0.0).view(torch.int32).long()  # (+ 0.0: -0.0 becomes 0.0, its equal)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # floats' order, as integers
    keys = ((-ordered) << 32) + torch.arange(len(values), device=values.device)
    return torch.sort(keys).values & 0xFFFFFFFF


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens less likely than min_p times the best token's probability."""
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, -math.inf)


def apply_typical_p(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling: keep tokens whose surprise is closest to the entropy, up to `mass`."""
    if mass >= 1.0:
        return logits
    logp = logits.log_softmax(dim=-1)
    entropy = -(logp * logp.exp()).nansum(-1, keepdim=True)  # (B, 1)
    shifted = (-logp - entropy).abs()
    sorted_shifted, sorted_ids = torch.sort(shifted, descending=False)
    cumulative = logits.gather(-1, sorted_ids).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=-1).clamp(max=logits.shape[-1] - 1)  # (B,)
    drop_sorted = sorted_shifted > sorted_shifted.gather(-1, last.unsqueeze(-1))
    drop_sorted[..., :1] = False
    drop = drop_sorted.scatter(-1, sorted_ids, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


def process_logits(
    logits: torch.Tensor, context: torch.Tensor | None, params: SamplingParams
) -> torch.Tensor:
    """All filters in transformers' order; `context` (B, T) is needed only for the repetition penalty."""
    if params.repetition_penalty != 1.0 and context is not None:
        logits = apply_repetition_penalty(logits, context, params.repetition_penalty)
    if params.greedy:
        return logits
    return _filters(apply_temperature(logits, params.temperature), params)


def _filters(
    scaled: torch.Tensor, params: SamplingParams, log_total: torch.Tensor | None = None
) -> torch.Tensor:
    """The steps after the temperature, on logits already divided by it (`log_total`: their
    logsumexp, where the caller has it)."""
    logits = apply_top_k(scaled, params.top_k)
    logits = apply_top_p(logits, params.top_p, log_total if logits is scaled else None)
    logits = apply_min_p(logits, params.min_p)
    return apply_typical_p(logits, params.typical_p)


def sample(
    logits: torch.Tensor, generators: Sequence[torch.Generator] | None, greedy: bool, method: str = "cdf"
) -> torch.Tensor:
    """One token per row (B,): argmax when greedy, else a draw from each row's own generator.

    "cdf" draws one uniform per row and finds it in the cumulative distribution of the tokens the
    filters kept (in vocabulary order), so its cost follows the kept set, not the vocabulary;
    "multinomial" is torch.multinomial over the whole vocabulary (~7 ms a row at 262k tokens).
    """
    if greedy:
        return logits.argmax(dim=-1)
    probs = logits.float().softmax(dim=-1)  # (B, V)
    if method == "multinomial":
        return torch.cat([torch.multinomial(row, 1, generator=gen) for row, gen in zip(probs, generators)])
    picks, drawn = [], ranking.draws(probs, generators) or [None] * len(probs)  # (the rows' passes in C)
    for row, gen, pick in zip(probs, generators, drawn):
        if pick is not None:
            picks.append(torch.tensor([pick], device=row.device))
            continue
        kept = row.nonzero().squeeze(-1)  # (K,) ascending ids
        cdf = row[kept].double().cumsum(0)  # (K,)
        u = torch.rand(1, generator=gen, dtype=torch.float64, device=row.device) * cdf[-1]
        index = torch.searchsorted(cdf, u, right=True).clamp(max=len(kept) - 1)
        picks.append(kept[index])
    return torch.cat(picks)


def choose(
    logits: torch.Tensor,
    context: torch.Tensor | None,
    params: SamplingParams,
    generators: Sequence[torch.Generator] | None,
) -> torch.Tensor:
    """One token per row (B,): `sample(process_logits(...))`, the same draw from each row's generator,
    worked on each row's best candidates (found in one pass over the vocabulary) when they hold
    every token the filters keep, instead of on the whole vocabulary (~0.5 ms a row at 262k tokens
    where the whole-vocabulary steps take ~2.4). The kept set is the same; the probabilities are
    normalised over it rather than over the whole row, which can move their last bit."""
    if params.repetition_penalty != 1.0 and context is not None:
        logits = apply_repetition_penalty(logits, context, params.repetition_penalty)
    if params.greedy:
        return logits.argmax(dim=-1)
    scaled = apply_temperature(logits, params.temperature)
    log_total = None
    if params.sampler == "cdf" and params.typical_p >= 1.0:
        if params.top_p < 1.0 or params.min_p > 0.0:  # (what top-p and min-p measure against)
            log_total = torch.logsumexp(scaled, dim=-1, keepdim=True)  # (B, 1)
        best = None
        for size in _CANDIDATES:
            if size >= scaled.shape[-1] or (
                best is not None and _too_flat(scaled, best[0], log_total, size, params)
            ):
                break
            best = best_of(scaled, size)  # descending
            found = _kept_among(scaled, best, params, log_total)
            if found is not None:
                return _draw(*found, generators)
    return sample(_filters(scaled, params, log_total), generators, False, params.sampler)


def _too_flat(
    scaled: torch.Tensor, values: torch.Tensor, log_total: torch.Tensor, size: int, params: SamplingParams
) -> bool:
    """Whether some row's `size` best tokens surely hold less than top-p's mass (a margin of 1e-3 over
    the sum's rounding), so that `_kept_among` would give up on them too: first from its best
    `values` (B, n < size), their mass plus the rest at the n-th's probability each; where that
    does not tell, from how the row's values lie below its best (`_reach`). A flat row (random
    weights: thousands of tokens in the nucleus) then skips the 4,096-token search."""
    if params.top_p >= 1.0 or 0 < params.top_k < scaled.shape[-1]:  # (a top-k narrows where top-p does not)
        return False
    probs = (values - log_total).exp()
    reach = probs.sum(-1) + (size - values.shape[-1]) * probs[:, -1]
    if bool((reach < params.top_p - 1e-3).any()):
        return True
    return bool((_reach(scaled, values[:, 0], log_total, size) < params.top_p - 1e-3).any())


def _reach(scaled: torch.Tensor, top: torch.Tensor, log_total: torch.Tensor, size: int) -> torch.Tensor:
    """At least the mass of each row's `size` best tokens (B,), float64: from the rows' values in
    levels of `_LEVEL_STEP` below their best `top` (one pass, `ranking.levels`), each of the best
    at its level's upper edge and those past the levels at their edge, with a margin for the
    levels' float arithmetic. Where a row's best or total is not finite, more than any mass."""
    counts = ranking.levels(scaled, top, _LEVEL_STEP, _LEVELS).cpu().double()  # (B, levels)
    upto = counts.cumsum(-1).clamp(max=size)
    taken = torch.diff(upto, dim=-1, prepend=torch.zeros_like(upto[:, :1]))  # the best, in each level
    below = torch.arange(_LEVELS + 1, dtype=torch.float64) * _LEVEL_STEP
    edges = (top.cpu().double()[:, None] - below - log_total.cpu().double()).exp()  # (B, levels + 1)
    reach = ((taken * edges[:, :-1]).sum(-1) + (size - upto[:, -1]) * edges[:, -1]) * (1 + 1e-4)
    return torch.where(reach.isnan(), math.inf, reach)


def _kept_among(scaled: torch.Tensor, best, params: SamplingParams, log_total: torch.Tensor | None):
    """(values, ids, kept) of each row's best tokens (`best`: values and ids, (B, size) each,
    descending) after top-k, top-p and min-p as the whole-row steps apply them; None when a row's
    kept set might reach past them. `log_total`: the rows' logsumexp (B, 1) (None where neither
    top-p nor min-p asks for it)."""
    values, ids = best
    size = values.shape[-1]
    if bool((ids < 0).any()):  # fewer than `size` values that are not NaN: the whole-row steps
        return None
    kept = torch.ones_like(values, dtype=torch.bool)
    narrowed = False  # whether every kept token is now among the candidates
    k = params.top_k
    if 0 < k < scaled.shape[-1]:
        if k >= size:
            return None
        kth = values[:, k - 1 : k]
        if bool((values[:, -1:] >= kth).any()):  # tokens tied with the k-th may lie past the candidates
            return None
        kept &= values >= kth
        narrowed = True
    if params.top_p < 1.0:
        probs = _probs(log_total, values, kept, narrowed)
        if not narrowed and bool((probs.sum(-1) < params.top_p).any()):
            return None
        mass_above = probs.cumsum(-1) - probs
        drop = mass_above >= params.top_p
        drop[:, 0] = False
        kept &= ~drop
        narrowed = True
    if params.min_p > 0.0:
        probs = _probs(log_total, values, kept, narrowed)
        threshold = params.min_p * probs[:, :1]
        if not narrowed and bool((probs[:, -1:] >= threshold).any()):
            return None
        kept &= probs >= threshold
    return values, ids, kept


def _probs(log_total: torch.Tensor, values: torch.Tensor, kept: torch.Tensor, narrowed: bool) -> torch.Tensor:
    """The candidates' probabilities under the row's distribution so far (kept tokens only; the
    whole row's logsumexp `log_total` until a step has narrowed it to the candidates)."""
    masked = values.masked_fill(~kept, -math.inf)
    total = torch.logsumexp(masked, dim=-1, keepdim=True) if narrowed else log_total
    return (masked - total).exp()


def _draw(values: torch.Tensor, ids: torch.Tensor, kept: torch.Tensor, generators) -> torch.Tensor:
    """`sample`'s cdf draw over each row's kept candidates, walked in vocabulary order as it walks them."""
    picks = []
    for row_values, row_ids, row_kept, gen in zip(values, ids, kept, generators):
        kept_ids, order = row_ids[row_kept].sort()
        cdf = row_values[row_kept][order].softmax(-1).double().cumsum(0)
        u = torch.rand(1, generator=gen, dtype=torch.float64, device=cdf.device) * cdf[-1]
        index = torch.searchsorted(cdf, u, right=True).clamp(max=len(kept_ids) - 1)
        picks.append(kept_ids[index])
    return torch.cat(picks)
