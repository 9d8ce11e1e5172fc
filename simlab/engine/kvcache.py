"""KV cache layers that grow in place: transformers' DynamicLayer appends a step's keys with
`torch.cat`, which copies the whole cache every step (measured on the embedded model at 1,500
tokens: a 4-row decode step 51.0 ms with it, 32.2 ms without). These layers write the step into a
buffer with room to spare (a quarter more, at least 64 tokens, when full) and hand attention the
very values `torch.cat` would, as a view of it: the logits are the same bit for bit (tested).

Anything that replaces a layer's keys from outside (crop, a batch select or repeat, a prefix read
from disk) is taken as it is: the next step starts a new buffer from it.

A prompt's sliding-window layers keep their past so that a later prompt can be cut back to a shared
prefix, but decoding reads only the window: past the window and _KEEP more tokens, that past moves
out of memory into a temporary file (`Spill`), and only a cut back further than memory holds reads
it back, the same bytes (Gemma 3 270M at 20,000 tokens: its 15 sliding layers' 600 MB).
"""

from __future__ import annotations

import torch

from simlab.engine.spill import Spill

_ROOM = 64  # tokens of room a buffer has past what it holds, at least (else a quarter of that)
_KEEP = 256  # a sliding layer's past kept in memory beyond its window (a short cut back reads nothing)
_SPILL = 512  # tokens moved out at a time, at least


class Growing:
    """`torch.cat([kept, new], dim=-2)` of one tensor of a layer, into a buffer with room to spare:
    copied when the room runs out (every 64 tokens, or a quarter of the length when longer), where
    `torch.cat` copies every step; never more than a quarter larger than what it holds, plus 64."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.view: torch.Tensor | None = None  # what the last `cat` returned: buffer[:, :, start:end]
        self.start = self.end = 0

    def cat(self, kept: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
        if self.buffer is None or kept is not self.view:  # set from outside: begin again from it
            self._restart(kept, new)
        if self.end + new.shape[-2] > self.buffer.shape[-2]:
            self._make_room(new.shape[-2])
        self.buffer.narrow(2, self.end, new.shape[-2]).copy_(new)  # (narrow: fewer steps than [:, :, a:b])
        self.end += new.shape[-2]
        self.view = self.buffer.narrow(2, self.start, self.end - self.start)
        return self.view

    def _restart(self, kept: torch.Tensor | None, new: torch.Tensor) -> None:
        length = kept.shape[-2] if kept is not None and kept.numel() else 0
        room = _room(length + new.shape[-2])
        self.buffer = new.new_empty((*new.shape[:2], room, new.shape[-1]))
        if length:
            self.buffer[:, :, :length] = kept
        self.start, self.end = 0, length

    def drop_oldest(self, count: int) -> torch.Tensor:
        """The view without its oldest `count` positions; the buffer is made anew, smaller, once what
        it no longer holds outgrows what it holds (after a long pass)."""
        self.start += count
        live = self.end - self.start
        if self.start > live:
            kept = self.buffer.narrow(2, self.start, live)
            self.buffer = kept.new_empty((*kept.shape[:2], _room(live), kept.shape[-1]))
            self.buffer.narrow(2, 0, live).copy_(kept)
            self.start, self.end = 0, live
        self.view = self.buffer.narrow(2, self.start, live)
        return self.view

    def _make_room(self, more: int) -> None:
        live = self.end - self.start
        room = _room(live + more)
        grown = self.buffer.new_empty((*self.buffer.shape[:2], room, self.buffer.shape[-1]))
        grown[:, :, :live] = self.buffer[:, :, self.start : self.end]
        self.buffer, self.start, self.end = grown, 0, live


def _room(tokens: int) -> int:
    return tokens + max(_ROOM, tokens // 4)


def _full_update(self, key_states, value_states, *args, **kwargs):
    """DynamicLayer.update with the appends in place."""
    if not self.is_initialized:
        self.lazy_initialization(key_states, value_states)
    self.keys = self._grown_keys.cat(self.keys, key_states)
    self.values = self._grown_values.cat(self.values, value_states)
    return self.keys, self.values


def _sliding_update(self, key_states, value_states, *args, **kwargs):
    """DynamicSlidingWindowLayer.update with the appends in place."""
    if not self.is_initialized:
        self.lazy_initialization(key_states, value_states)
    self.cumulative_length += key_states.shape[-2]
    full_keys = self._grown_keys.cat(self.keys, key_states)
    full_values = self._grown_values.cat(self.values, value_states)
    if not self.record_past:
        self.keys = full_keys[:, :, -self.sliding_window + 1 :, :]
        self.values = full_values[:, :, -self.sliding_window + 1 :, :]
        return full_keys, full_values
    self.keys, self.values = full_keys, full_values
    visible = self.sliding_window - 1 + key_states.shape[-2]
    out = full_keys[:, :, -visible:, :], full_values[:, :, -visible:, :]
    _spill_past(self)
    return out


def _spill_past(layer) -> None:
    """Move a recording sliding layer's keys and values older than its window and _KEEP more out to
    its Spill, _SPILL tokens or more at a time (memory keeps them where the disk refuses them)."""
    extra = layer.keys.shape[-2] - (layer.sliding_window - 1 + _KEEP)
    spill = getattr(layer, "_spill", None)
    whole = layer.cumulative_length == layer.keys.shape[-2] + (spill.count if spill else 0)
    grown = layer.keys is layer._grown_keys.view
    if extra < _SPILL or not whole or not grown or getattr(layer, "_refused", False):
        return  # (a full or read-only disk is not asked again)
    try:
        spill = spill or Spill(layer.keys, layer.values)
    except OSError:
        spill = None
    if spill is None or not spill.put(layer.keys[:, :, :extra], layer.values[:, :, :extra]):
        layer._refused = True
        return
    layer._spill = spill
    layer.keys = layer._grown_keys.drop_oldest(extra)
    layer.values = layer._grown_values.drop_oldest(extra)


def _sliding_crop(self, tokens_to_remove: int) -> None:
    """DynamicSlidingWindowLayer.crop, keeping the past: transformers' own, past the window, keeps only
    the last window - 1 keys, so a second crop further back (a later prompt that shares less: a
    replay of a path's third reply) left fewer keys than the masks count (a replay failed: mask 575
    against 561 keys). Recording layers keep every key (the oldest in their Spill, which gives back
    what the window and _KEEP need), and a crop only drops the newest."""
    if not self.record_past or not self.is_initialized or tokens_to_remove >= 0:
        return type(self).__mro__[1].crop(self, tokens_to_remove)
    spill = getattr(self, "_spill", None)
    if spill is None:
        self.keys = self.keys[:, :, :tokens_to_remove, :]
        self.values = self.values[:, :, :tokens_to_remove, :]
        self.cumulative_length = self.keys.shape[-2]
        return
    total = max(self.cumulative_length + tokens_to_remove, 0)  # what the spill and memory hold after
    in_memory = max(total - spill.count, 0)
    keys, values = self.keys[:, :, :in_memory, :], self.values[:, :, :in_memory, :]
    spill.truncate(total)
    back = min(total, self.sliding_window - 1 + _KEEP) - in_memory
    if back > 0:  # memory keeps the window and _KEEP: the rest of them comes back from the spill
        old_keys, old_values = spill.take(back)
        keys, values = torch.cat([old_keys, keys], dim=-2), torch.cat([old_values, values], dim=-2)
    self.keys, self.values, self.cumulative_length = keys, values, total


def _folding_back(name: str):
    """The base layer's `name`, after a spilled past comes back into memory (what changes the rows
    needs them all), or is forgotten (`reset`)."""

    def method(self, *args, **kwargs):
        spill = self.__dict__.pop("_spill", None)
        if name == "reset":  # (emptied: a disk that refused it may take the next past)
            self.__dict__.pop("_refused", None)
        elif spill is not None and spill.count:
            old_keys, old_values = spill.take(spill.count)
            self.keys = torch.cat([old_keys, self.keys], dim=-2)
            self.values = torch.cat([old_values, self.values], dim=-2)
        return getattr(type(self).__mro__[1], name)(self, *args, **kwargs)

    return method


def _subclass(base, update, crop=None, extra=()):
    methods = {"update": update, **({"crop": crop} if crop else {}), **{n: _folding_back(n) for n in extra}}
    return type("Growing" + base.__name__, (base,), methods)


_CLASSES: dict[type, type] = {}
_SHARED: dict[type, type] = {}  # a grown layer class -> its `Shared` one


def grow_in_place(cache) -> None:
    """Make the cache's DynamicLayer and DynamicSlidingWindowLayer layers append in place; other
    layer kinds are left as they are."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    if not _CLASSES:
        _CLASSES[DynamicLayer] = _subclass(DynamicLayer, _full_update)
        _CLASSES[DynamicSlidingWindowLayer] = _subclass(
            DynamicSlidingWindowLayer,
            _sliding_update,
            _sliding_crop,
            ("batch_repeat_interleave", "batch_select_indices", "reorder_cache", "reset"),
        )
    for layer in getattr(cache, "layers", []):
        grown = _CLASSES.get(type(layer))
        if grown is not None:
            layer.__class__ = grown
            layer._grown_keys, layer._grown_values = Growing(), Growing()


def plain_dynamic(layer) -> bool:
    """Whether a cache layer is transformers' DynamicLayer or DynamicSlidingWindowLayer (grown in
    place or not): keys and values as (batch, heads, tokens, dim) and nothing else."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    return type(layer) in (DynamicLayer, DynamicSlidingWindowLayer, *_CLASSES.values())


def repeated(cache, n: int, share: bool = False):
    """A new cache with each row of `cache` repeated n times, `cache` left as it was: what a deep
    copy and `batch_repeat_interleave(n)` give for decoding, bit for bit, without the deep copy of
    every key and value, and with sliding-window layers holding only their window (Gemma 3 270M at
    18,000 tokens: 650 MB a sibling before, about 110 MB now). The new layers start fresh buffers;
    they cannot be cut back before their start (siblings' caches are not kept). `share`: the
    full-attention layers hold `cache`'s keys and values once for all rows (`Shared`), for a
    decode step that reads them where they lie (models.blocks)."""
    return joined([cache] * n, share)


class Shared:
    """What a full-attention layer of siblings' cache holds, in place of n copies of the prompt's
    keys and values: those once, (1, heads, P, dim), shared by every row, and each row's own since,
    in the layer's `keys` and `values` (n, heads, S, dim), appended in place. `update` gives the
    whole as one tensor (a copy: for a forward that reads only that); `update_own` appends and
    gives the rows' own part, for models.blocks, which reads the shared part where it lies."""

    def update_own(self, key_states, value_states):
        self.keys = self._grown_keys.cat(self.keys, key_states)
        self.values = self._grown_values.cat(self.values, value_states)
        return self.keys, self.values

    def update(self, key_states, value_states, *args, **kwargs):
        keys, values = self.update_own(key_states, value_states)
        rows, (k0, v0) = keys.shape[0], self.shared
        whole = [
            torch.cat([p.expand(rows, -1, -1, -1), own], dim=-2) for p, own in ((k0, keys), (v0, values))
        ]
        return whole[0], whole[1]

    def get_seq_length(self) -> int:
        return self.shared[0].shape[-2] + self.keys.shape[-2]

    def unshare(self) -> None:
        """Become the plain layer this was made from, the prompt's keys copied in front of the
        rows' own: what a crop or a reset needs (neither comes to siblings' caches today)."""
        rows, (k0, v0) = self.keys.shape[0], self.shared
        self.keys = torch.cat([k0.expand(rows, -1, -1, -1), self.keys], dim=-2)
        self.values = torch.cat([v0.expand(rows, -1, -1, -1), self.values], dim=-2)
        del self.shared
        self.__class__ = type(self).__mro__[1]

    def crop(self, tokens_to_remove: int) -> None:
        Shared.unshare(self)
        self.crop(tokens_to_remove)

    def reset(self) -> None:
        Shared.unshare(self)
        self.reset()


def _shared(layer, keys, values, rows: int) -> None:
    """Make a fresh full-attention layer of `joined`'s a `Shared` one over keys, values (1 row)."""
    base = type(layer)
    if base not in _SHARED:
        names = ("update_own", "update", "get_seq_length", "unshare", "crop", "reset")
        methods = {name: Shared.__dict__[name] for name in names}
        _SHARED[base] = type("Shared" + base.__name__, (base,), methods)  # (a mixin would change the layout)
    layer.__class__ = _SHARED[base]
    layer.shared = (keys, values)
    layer.keys = keys.new_empty((rows, keys.shape[1], 0, keys.shape[3]))
    layer.values = values.new_empty((rows, values.shape[1], 0, values.shape[3]))


def joined(caches: list, share: bool = False):
    """One cache whose row r is the one-row cache caches[r] (all of the same prompt length): the
    rows of siblings whose prompts went in apart (steered differently), decoded as one batch.
    Each is left as it was; the layers are `repeated`'s (fresh buffers, sliding layers' windows).
    `share` (every row the same cache): its full-attention layers are `Shared`."""
    import copy

    first = caches[0]
    share = share and all(c is first for c in caches)
    held = []
    for layer in first.layers:  # the tensors stay out of the deep copy, then come back
        names = ("keys", "values", "_grown_keys", "_grown_values", "_spill")
        held.append({k: getattr(layer, k, None) for k in names})
        for name in held[-1]:
            if hasattr(layer, name):
                setattr(layer, name, None)
    try:
        twin = copy.deepcopy(first)
    finally:
        for layer, kept in zip(first.layers, held):
            for name, value in kept.items():
                if hasattr(layer, name):
                    setattr(layer, name, value)
    for i, (layer, kept) in enumerate(zip(twin.layers, held)):
        if kept["keys"] is not None and share and shareable(layer) and kept["_grown_keys"] is not None:
            _shared(layer, kept["keys"], kept["values"], len(caches))
        elif kept["keys"] is not None:
            rows = [_window(layer, c.layers[i].keys, c.layers[i].values) for c in caches]
            layer.keys = torch.cat([k for k, _ in rows]) if len(rows) > 1 else rows[0][0].clone()
            layer.values = torch.cat([v for _, v in rows]) if len(rows) > 1 else rows[0][1].clone()
        if kept["_grown_keys"] is not None:
            layer._grown_keys, layer._grown_values = Growing(), Growing()
        layer._refused = True  # (siblings' caches are not cut back: their past needs no spill)
    return twin


def shareable(layer) -> bool:
    """Whether `joined` can share this layer's keys among rows: a full-attention layer that grows
    in place (a sliding one's rows hold only their window already)."""
    from transformers.cache_utils import DynamicLayer

    return type(layer) is _CLASSES.get(DynamicLayer) and not getattr(layer, "is_sliding", False)


def _window(layer, keys, values):
    """A sliding layer's keys and values as decoding reads them: only the last window - 1 (the masks
    count only those); a sliding layer's past stays with the prompt's cache, not with every sibling."""
    window = getattr(layer, "sliding_window", None)
    if getattr(layer, "is_sliding", False) and window and keys.shape[-2] >= window:
        return keys[:, :, 1 - window :], values[:, :, 1 - window :]
    return keys, values


class Apart:
    """Siblings' caches, one per branch still decoding, for a model whose batch does not give each
    row the bits it gets alone (`Engine.rows_alone` false): the engine feeds them one by one."""

    def __init__(self, caches: list):
        self.caches = caches

    def batch_select_indices(self, rows: torch.Tensor) -> None:
        self.caches = [self.caches[int(r)] for r in rows]
