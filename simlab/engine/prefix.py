"""Prompt prefixes whose KV cache is kept: in memory for the next run (the next turn, a sibling), on
disk for the next chat (a persona's frame), with the passes that built them.

A prompt goes into the model in passes, and how it is cut changes the last bits of what comes out:
torch's attention and float products sum in an order that depends on how many tokens a pass
holds. So a run records its passes (the lengths, in order), a reused cache is only ever cut where a
pass ended, and a replay given the recorded passes builds the very same cache, reused or not.

A fresh prompt goes in as whole CHUNKs from its start, then the rest but its last token, then that
token alone. Chunks end at the same places in every prompt, so two prompts that share their first
CHUNK tokens (two chats with one persona) share those passes, and the disk keeps them. After a kept
prefix that ends between chunks, a new part longer than LONG goes in to the next chunk's end first,
then in chunks (in one pass, a long document after a short reused start took gigabytes, showed no
progress and ignored Ctrl-C); a shorter one goes in whole. Where the cut changes no bit (every row
summed alone, within any sliding window), up to TOGETHER tokens of passes go through the model in one
call (`calls`): a 1B model's prefill reads its weights once for 256 tokens instead of four times.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

CHUNK = 64  # tokens per pass at the start of a fresh prompt
TOGETHER = 256  # tokens of passes that may go through the model in one call where the cut changes no bit
LONG = 8 * CHUNK  # tokens after an unaligned kept prefix past which they go in chunks too
MIN_REUSE = 8  # tokens; below this a fresh prefill costs as little as the bookkeeping


def plan(start: int, total: int) -> list[int]:
    """The passes that feed tokens start..total-1 after a cache holding the first `start`."""
    passes: list[int] = []
    at = start
    if at % CHUNK and total - 1 - at > LONG:  # to the next chunk's end, then chunks
        passes.append(CHUNK - at % CHUNK)
        at += passes[-1]
    if at % CHUNK == 0:
        while at + CHUNK <= total - 1:
            passes.append(CHUNK)
            at += CHUNK
    if total - 1 > at:
        passes.append(total - 1 - at)
    return [*passes, 1]


def pack(passes: list[int]) -> list[int]:
    """For a node's record: a run of k one-token passes (decoded tokens) becomes -k."""
    out: list[int] = []
    for length in passes:
        if length == 1 and out and out[-1] < 0:
            out[-1] -= 1
        else:
            out.append(-1 if length == 1 else length)
    return out


def unpack(packed) -> list[int] | None:
    """A node's record back to pass lengths; None for anything that is not one."""
    if not isinstance(packed, (list, tuple)) or not all(isinstance(p, int) and p != 0 for p in packed):
        return None
    return [length for p in packed for length in ([p] if p > 0 else [1] * -p)]


def usable(wanted: list[int] | None, total: int) -> list[int] | None:
    """Recorded passes that can feed a prompt of `total` tokens (they sum to it, the last alone)."""
    if wanted and sum(wanted) == total and wanted[-1] == 1 and min(wanted) > 0:
        return list(wanted)
    return None


def shared_passes(have: list[int], common: int, wanted: list[int] | None) -> int:
    """How many of the cached passes a prompt sharing `common` tokens can keep: whole passes only,
    and, when the passes are prescribed, only those that match them one for one."""
    kept = at = 0
    for i, length in enumerate(have):
        if at + length > common or (wanted is not None and (i >= len(wanted) or wanted[i] != length)):
            break
        at += length
        kept = i + 1
    return kept


def new_cache(model):
    """A DynamicCache whose sliding-window layers keep their past, so it can be cropped back, and
    whose layers append a step in place (engine.kvcache)."""
    from transformers import DynamicCache

    from simlab.engine.kvcache import grow_in_place

    cache = DynamicCache(config=model.config)
    for layer in getattr(cache, "layers", []):
        if hasattr(layer, "activate_past_recording"):
            layer.activate_past_recording()
    grow_in_place(cache)
    return cache


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    """The KV cache of the last run's tokens, kept so the next prompt that starts the same way
    (the next turn of a chat, a sibling of a reply) feeds only what is new."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.passes: list[int] = []
        self.cache = None
        self.key: str | None = None  # what was added to the residual stream as it was built (steering)

    def reusable(self, ids: list[int], wanted: list[int] | None = None, key: str | None = None) -> int:
        """How many of the prompt's tokens `take` would give (0: none)."""
        if self.cache is None or self.key != key:
            return 0
        common = min(_common(self.ids, ids), len(ids) - 1)  # one token at least goes through for logits
        at = sum(self.passes[: shared_passes(self.passes, common, wanted)])
        return at if at >= MIN_REUSE else 0

    def take(self, ids: list[int], wanted: list[int] | None = None, key: str | None = None):
        """(cache, tokens it holds, their passes) for the longest usable shared prefix, or (None, 0, []);
        only a cache built with the same `key` (the same steering at every position, or none)."""
        at = self.reusable(ids, wanted, key)
        cache, kept, passes = self.cache, self.ids, self.passes
        self.clear()  # the run owns it now
        if not at:
            return None, 0, []
        count = shared_passes(passes, at, wanted)
        if len(kept) > at:
            cache.crop(at - len(kept))  # a negative count: the tokens to drop
        return cache, at, passes[:count]

    def keep(self, ids: list[int], cache, passes: list[int], key: str | None = None) -> None:
        self.ids, self.cache, self.passes, self.key = list(ids), cache, list(passes), key

    def clear(self) -> None:
        self.ids, self.cache, self.passes, self.key = [], None, [], None


class DiskPrefixes:
    """The caches of the whole CHUNKs at the start of fresh prompts, one small safetensors file per
    chunk, named by the tokens up to its end, in a folder of their own per model (revision, weights,
    dtype). A prompt reads the chain of chunks it starts with; the newest MAX_FILES chunks are kept."""

    MAX_FILES = 256

    def __init__(self, folder: Path, model):
        self.folder = folder
        self.model = model
        self._chain: set[Path] = set()  # the files the prompt going in now reads or writes

    def _path(self, ids: list[int]) -> Path:
        digest = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:32]
        return self.folder / f"{digest}-{len(ids)}.safetensors"

    def _chunks(self, ids: list[int], wanted: list[int] | None) -> int:
        chunks = (len(ids) - 1) // CHUNK
        if wanted is not None:
            chunks = min(chunks, next((i for i, p in enumerate(wanted) if p != CHUNK), len(wanted)))
        return chunks

    def _chunk_paths(self, ids: list[int], wanted: list[int] | None):
        """The paths of the prompt's chunks in order, `_path` of each prefix, from one running hash
        (hashing each prefix anew took 0.3 s for a 20,000-token prompt)."""
        digest = hashlib.sha256()
        for k in range(self._chunks(ids, wanted)):
            part = ",".join(map(str, ids[k * CHUNK : (k + 1) * CHUNK]))
            digest.update(("," + part if k else part).encode())
            yield self.folder / f"{digest.hexdigest()[:32]}-{(k + 1) * CHUNK}.safetensors"

    def reusable(self, ids: list[int], wanted: list[int] | None = None, key: str | None = None) -> int:
        """How many of the prompt's tokens the chain of kept chunks holds (its files, not yet read)."""
        if key is not None:
            return 0
        count = 0
        for path in self._chunk_paths(ids, wanted):
            if not path.exists():
                break
            count += 1
        return count * CHUNK

    def take(self, ids: list[int], wanted: list[int] | None = None, key: str | None = None, on_chunk=None):
        """(cache, tokens, passes) for the longest chain of kept chunks the prompt starts with; none
        for a steered prompt (`key`: the disk keeps unsteered prompts only). The chunks are read one
        at a time into the cache, and `on_chunk(read, total)` is told after each: when it returns
        False the reading stops there (the cache holds whole chunks)."""
        from safetensors.torch import load_file

        self._chain = set()  # a new prompt: its own chain from here on
        if key is not None:
            return None, 0, []
        device = str(next(self.model.parameters()).device)
        cache, read = new_cache(self.model), 0
        for k, path in enumerate(self._chunk_paths(ids, wanted), start=1):
            try:
                part = load_file(str(path), device=device)
            except Exception:  # noqa: BLE001 - absent, damaged or foreign: the chain ends here
                break
            try:
                for i, layer in enumerate(cache.layers):
                    layer.update(part[f"{i}.keys"], part[f"{i}.values"])
            except (KeyError, RuntimeError):  # files of another model shape: ignore them
                return None, 0, []
            self._chain.add(path)
            with contextlib.suppress(OSError):
                os.utime(path)
            read = k * CHUNK
            if on_chunk is not None and not on_chunk(read, len(ids)):
                break
        if not read:
            return None, 0, []
        return cache, read, [CHUNK] * (read // CHUNK)

    def keep(self, ids: list[int], cache, held: int | None = None) -> None:
        """Save the CHUNK positions of the cache that end `ids`; it holds `held` tokens (default: just
        `ids`; more where later passes went in the same call). A prompt longer than MAX_FILES chunks
        keeps its first MAX_FILES: a chain is read from its start, so its start is what must stay
        (the oldest files of other prompts go first)."""
        from safetensors.torch import save_file

        from simlab.engine.kvcache import plain_dynamic

        path = self._path(ids)
        if len(ids) // CHUNK > self.MAX_FILES:
            return
        self._chain.add(path)
        if path.exists():
            return
        tensors = {}
        total = len(ids) if held is None else held
        for i, layer in enumerate(cache.layers):
            if not plain_dynamic(layer):
                return  # a cache this file format does not describe
            if layer.keys is None or layer.get_seq_length() != total or layer.keys.shape[0] != 1:
                return
            end = layer.keys.shape[-2] - (total - len(ids))  # where `ids` end in it
            if end < CHUNK:  # the rest in its spill (engine.kvcache): not whole here
                return
            tensors[f"{i}.keys"] = layer.keys[:, :, end - CHUNK : end].contiguous()
            tensors[f"{i}.values"] = layer.values[:, :, end - CHUNK : end].contiguous()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}")
            save_file(tensors, str(partial))
            os.replace(partial, path)
            self._prune()
        except OSError:  # a full or read-only disk: the next chat prefills again, that is all
            return

    def _prune(self) -> None:
        """The newest MAX_FILES files stay, and never one of the chain going in now (its first
        chunks are its oldest files)."""
        files = sorted(self.folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
        others = [f for f in files if f not in self._chain]
        for old in others[max(0, self.MAX_FILES - len(self._chain)) :]:
            with contextlib.suppress(OSError):
                old.unlink()


def take_longest(stores: list, ids: list[int], wanted: list[int] | None, key: str | None, on_chunk=None):
    """`take` from whichever store (a PrefixCache first, then DiskPrefixes) holds more of the prompt,
    the first on a tie; the PrefixCache is emptied when it is not the one (its cache would stay
    beside the new one). `on_chunk`: told as the disk's chunks are read (DiskPrefixes.take)."""
    if not stores:
        return None, 0, []
    best = max(stores, key=lambda store: store.reusable(ids, wanted, key))
    for store in stores:
        if store is not best and isinstance(store, PrefixCache):
            store.clear()
    if isinstance(best, DiskPrefixes):
        return best.take(ids, wanted, key, on_chunk)
    return best.take(ids, wanted, key)


def calls(passes: list[int], at: int = 0, upto: int = 0) -> list[int]:
    """How many of the passes (fed from position `at`) go through the model in each call: one each,
    or runs of passes before the last of up to TOGETHER tokens that end by position `upto` (see
    `shared_up_to`: where a pass ends changes no bit there). The passes stay what is recorded and
    kept."""
    counts: list[int] = []
    i = 0
    while i < len(passes):
        count, tokens = 1, passes[i]
        while i + count < len(passes) - 1 and tokens + passes[i + count] <= min(TOGETHER, upto - at):
            tokens += passes[i + count]
            count += 1
        counts.append(count)
        at += tokens
        i += count
    return counts


def shared_up_to(model, rows_alone: bool) -> int:
    """The position up to which a prompt's passes may share a model call (0: none may). Where the
    model gives every row the bits it gets alone (Engine.rows_alone) every query is summed alone,
    over keys from the prompt's start; but a sliding-window layer's keys start where its window
    does, which moves with where the passes end, and its sums with them: such a model shares calls
    only within its window (measured: a Gemma 2 with a window of 8 gave other log-probabilities).
    Layers of any other kind (chunked attention, ...) share none."""
    if not rows_alone:
        return 0
    config = getattr(model, "config", None)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    window = getattr(config, "sliding_window", None)
    window = window if isinstance(window, int) and window > 0 else 0
    if getattr(config, "attention_chunk_size", None):
        return 0
    kinds = set(getattr(config, "layer_types", None) or ["sliding_attention" if window else "full_attention"])
    if kinds == {"full_attention"}:
        return 1 << 62
    return window if kinds <= {"full_attention", "sliding_attention"} else 0


def feed(
    model,
    cache,
    ids: list[int],
    done: list[int],
    passes: list[int],
    disk: DiskPrefixes | None,
    on_pass=None,
    upto: int = 0,
):
    """Feed the prompt's tokens after those of the `done` passes, in `passes` (several in one call
    where they end by position `upto`: `calls`, `shared_up_to`); the logits of the last token,
    (1, V). Whole chunks fed from the prompt's start go to the disk as they complete. `on_pass(fed,
    total)` is told before the first call and after each; when it returns False the feeding stops
    there and None comes back (the cache then holds whole passes only)."""
    import torch

    device = next(model.parameters()).device
    at = sum(done)
    aligned = all(p == CHUNK for p in done)
    logits = None
    if on_pass is not None and passes and not on_pass(at, len(ids)):
        return None
    nothing = torch.zeros(0, dtype=torch.long, device=device)  # a pass before the last needs no logits
    first = 0
    for count in calls(passes, at, upto):
        length = sum(passes[first : first + count])
        chunk = torch.tensor([ids[at : at + length]], device=device)
        last = first + count == len(passes)
        out = model(input_ids=chunk, cache=cache, use_cache=True, logits_to_keep=1 if last else nothing)
        logits = out.logits[:, -1, :] if last else None
        held = at + length  # what the cache holds after this call
        for part in passes[first : first + count]:
            at += part
            aligned = aligned and part == CHUNK
            if disk is not None and aligned:
                disk.keep(ids[:at], cache, held)
        first += count
        if on_pass is not None and not on_pass(at, len(ids)):
            return None
    return logits
