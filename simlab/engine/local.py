"""The decode loop: prefill a prompt once, decode N sibling branches (one batch where the model
gives each row its bits alone, else one by one), stream text.

Not ``model.generate``: we need text deltas as they form, N siblings after a single prefill (the
prompt's KV cache repeated, not recomputed), a generator per branch so that a (prompt, params,
seed) gives the same tokens alone or among siblings, per-token log-probabilities with the top
alternatives, and stop strings matched on decoded text across token boundaries."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from simlab.engine import prefix as prefixes
from simlab.engine.branches import TOP_ALTERNATIVES, Branches
from simlab.engine.kvcache import Apart, joined, repeated
from simlab.engine.params import SamplingParams
from simlab.engine.protocol import LOCAL, drain
from simlab.engine.results import Completion, Delta, RunControl, RunStats, TokenInfo, token_info
from simlab.engine.steering import Steering, row_adds, uniform
from simlab.errors import ContextLengthError, SteerError
from simlab.models import lean
from simlab.models.info import LoadedModel, eos_ids
from simlab.models.ranking import top_k as best_of
from simlab.models.steering import Steered


class Engine:
    """Samples continuations from a loaded model (the Engine Protocol of simlab.engine.protocol)."""

    capabilities = LOCAL

    def __init__(self, loaded: LoadedModel, reuse_prefix: bool = True, prefix_dir=None):
        """`prefix_dir`: where the KV caches of prompts' first chunks are kept between processes
        (engine.prefix.DiskPrefixes); None keeps nothing on disk."""
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.info = loaded.info
        self.device = next(self.model.parameters()).device
        self.eos_ids = eos_ids(self.model, self.tokenizer)
        self.prefix = prefixes.PrefixCache() if reuse_prefix else None
        self.disk = prefixes.DiskPrefixes(prefix_dir, self.model) if reuse_prefix and prefix_dir else None
        self.lean = lean.steps_lean(self.model)  # decode steps without the module machinery (models.lean)
        self.rows_alone = lean.rows_alone(self.model)  # a batch gives each row its bits alone (else: apart)
        self.upto = prefixes.shared_up_to(self.model, self.rows_alone)  # (a prompt's passes share calls)
        self.steered = Steered(self.model)  # vectors added at blocks' outputs (models.steering)

    def step(self, tokens, cache, traced: bool = False, adds=None):
        """Feed one token per row (tokens (B,)) after the cache; the next logits, (B, V). A traced
        run goes through the model's own forward, where the recorder's hooks are. `adds`: block ->
        the vector added to its output (a steered reply)."""
        if self.lean and not traced:
            return lean.decode_step(self.model, cache, tokens.unsqueeze(-1), adds)[:, -1, :]
        with self.steered.adding(adds) if adds else contextlib.nullcontext():
            return self.model(input_ids=tokens.unsqueeze(-1), cache=cache, use_cache=True).logits[:, -1, :]

    def encode(self, text: str) -> list[int]:
        """Prompt text to ids, with the BOS token when the tokenizer adds one by default."""
        return list(self.tokenizer(text)["input_ids"])

    def start(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams,
        n: int = 1,
        recorder=None,
        passes: Sequence[int] | None = None,
        steering: Steering | None = None,
    ) -> Run:
        """Validate and prepare a run; iterate it to decode. `passes`: how a recorded reply fed its
        prompt (Completion.prefill unpacked), to feed it the same way (engine.prefix). `steering`:
        vectors added to the residual stream (models.steering), at the prompt's positions, the
        reply's or both."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ContextLengthError("the prompt is empty; give some text to continue")
        room = self.info.context_length - len(ids)
        if room < 1:
            raise ContextLengthError(
                f"the prompt is {len(ids)} tokens but {self.info.name} reads at most "
                f"{self.info.context_length}; shorten it"
            )
        run = Run(self, ids, params, n, min(params.max_new_tokens, room), recorder, steering)
        run.wanted = prefixes.usable(list(passes) if passes else None, len(ids))
        return run

    def _forced(self, ids: list[int], start: int, steering: Steering | None = None):
        """One teacher-forced pass (steered at every position when `steering` is given): the
        log-distributions at the positions that predict ids[start:] (start >= 1), (T - start, V),
        and the log-probability of each of those tokens, (T - start,)."""
        if len(ids) > self.info.context_length:
            raise ContextLengthError(f"{len(ids)} tokens do not fit in {self.info.context_length}")
        adds = steering.adds(self.model.dtype, self.device) if steering else None
        with self.steered.adding(adds):
            logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0, start - 1 : -1]
        logprobs = logits.float().log_softmax(dim=-1)
        targets = torch.tensor(ids[start:], device=self.device).unsqueeze(-1)
        return logprobs, logprobs.gather(-1, targets).squeeze(-1)

    def score(self, ids: Sequence[int]) -> list[float]:
        """Teacher-forced log-probability of each token after the first, given those before it."""
        with torch.inference_mode():
            return self._forced(list(ids), 1)[1].tolist()

    def score_tokens(
        self, ids: Sequence[int], start: int, steering: Steering | None = None
    ) -> list[TokenInfo]:
        """Teacher-forced: each token from `start` on with its log-probability given those before it
        and the model's best alternatives there, as a sampled reply records them."""
        ids, start = list(ids), max(start, 1)
        with torch.inference_mode():
            logprobs, chosen = self._forced(ids, start, steering)
            values, best = best_of(logprobs, min(TOP_ALTERNATIVES, logprobs.shape[-1]))
        return [
            token_info(self.tokenizer, t, lp, i, v)
            for t, lp, i, v in zip(ids[start:], chosen.tolist(), best.tolist(), values.tolist())
        ]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and the character span of each in text (for scoring parts of a text)."""
        encoded = self.tokenizer(text, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]

    def next_token_probs(self, prompt: str | Sequence[int], steering: Steering | None = None):
        """The next-token distribution after the prompt (its last context_length tokens), (V,) numpy;
        steered where `steering` adds to a prompt (a reply's first token is read from there)."""
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        ids = ids[-self.info.context_length :]
        adds = steering.adds(self.model.dtype, self.device) if steering and steering.on_prompt else None
        with torch.inference_mode(), self.steered.adding(adds):
            logits = self.model(input_ids=torch.tensor([ids], device=self.device), logits_to_keep=1).logits[
                0, -1
            ]
            return logits.double().softmax(dim=-1).cpu().numpy()  # (V,)

    def provenance(self, completion: Completion) -> None:
        return None  # a local reply: its model, revision and dtype say where it came from

    def decode_together(self, runs: Sequence[Run]) -> None:
        """Decode one-branch runs whose prompts differ (a sweep's later turns) to their ends as one
        batch, each reply the one its run gives alone (engine.ragged). Runs that cannot (siblings, a
        trace) and models ragged does not know decode one after another."""
        from simlab.engine import ragged

        apart = [r for r in runs if len(r.completions) > 1 or r.recorder is not None or r.steering]
        together = [r for r in runs if r not in apart]
        if len(together) < 2 or not ragged.supported(self.model) or not self.rows_alone:
            apart, together = list(runs), []
        for run in apart:
            drain(run)
        if together:
            _lockstep(self, together)

    def generate(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams,
        n: int = 1,
        recorder=None,
        passes: Sequence[int] | None = None,
        steering: Steering | None = None,
    ) -> list[Completion]:
        """Decode to the end and return the completions."""
        return drain(self.start(prompt, params, n, recorder=recorder, passes=passes, steering=steering))


class Run(RunControl):
    """One prefill and the lockstep decode of its branches; iterate for Deltas."""

    def __init__(
        self,
        engine: Engine,
        prompt_ids: list[int],
        params: SamplingParams,
        n: int,
        max_new: int,
        recorder=None,
        steering: Steering | None = None,
    ):
        super().__init__(params, n)
        self.engine, self.recorder = engine, recorder  # a trace.Recorder reads these same passes
        steering, self.rows = uniform(steering)  # rows: one steering per sibling, when they differ
        if self.rows is not None and len(self.rows) != n:
            raise ValueError(f"{len(self.rows)} steerings for {n} siblings")
        if self.rows is not None:  # a sweep: every strength on the run's one seed, paired as compare's
            self.seeds = [self.base_seed] * n
            for completion in self.completions:
                completion.seed = completion.seed if completion.seed is None else self.base_seed
        if self.rows is not None and recorder is not None:
            raise SteerError(
                "siblings at different strengths are not traced together: /trace off (or --trace left "
                "out), or sample each strength on its own"
            )
        self.steering = steering or self.rows
        self.row_adds = row_adds(self.rows, engine.model.dtype, engine.device) if self.rows else None
        adds = steering.adds(engine.model.dtype, engine.device) if steering else None
        self.prompt_adds = adds if steering and steering.on_prompt else None
        # the key of the kept cache it may read and leave: none unsteered; a steered run's only when
        # every position is steered alike (False: it reads and keeps no cache)
        self.cache_key = (steering.cache_key or False) if steering else False if self.rows else None
        self.reply_adds = adds if steering and steering.on_reply else None
        self.prompt_ids, self.max_new = prompt_ids, max_new
        self.clipped = max_new < params.max_new_tokens
        self.stats = RunStats(prompt_tokens=len(prompt_ids))
        self.wanted: list[int] | None = None  # the passes to feed the prompt in (a replay's)
        self.passes: list[int] = []  # the passes it was fed in
        self.on_prefill = None  # told (tokens fed, prompt tokens) as a long prompt goes in

    def __iter__(self) -> Iterator[Delta]:
        started = time.perf_counter()
        try:
            yield from self._decode()
        except KeyboardInterrupt:
            self.interrupt()
        finally:  # also when stopped early: the stats cover what was decoded
            self.stats.decode_seconds = time.perf_counter() - started - self.stats.prefill_seconds

    def _reused(self, model):
        """(cache, tokens it holds, their passes): the last run's or the chunks kept on disk, whichever
        holds more of the prompt (the last run's on a tie), or a new one."""
        engine, recorder = self.engine, self.recorder
        # a trace of the whole prompt feeds all of it; a steered prompt's cache is its own
        if not (recorder and recorder.config.prompt) and self.cache_key is not False:
            stores = [s for s in (engine.prefix, engine.disk) if s is not None]
            ids, wanted, told = self.prompt_ids, self.wanted, self._feeding()  # (the disk's read is told)
            cache, start, done = prefixes.take_longest(stores, ids, wanted, self.cache_key, told)
            if cache is not None:
                return cache, start, done
        return prefixes.new_cache(model), 0, []

    def _feeding(self):
        """What prefixes.feed tells as the prompt goes in: on_prefill, and False once a stop came."""
        told = self.on_prefill or (lambda at, total: None)  # a stop while the prompt goes in: no reply
        return lambda at, total: [told(at, total), not self._stop_requested][1]

    def prefill(self, model, started: float):
        """Feed the prompt (what a kept cache holds is not fed again); (cache, logits (n, V)), the
        cache repeated for n siblings."""
        if self.rows is not None:
            return self._prefill_rows(model, started)
        engine, recorder, n = self.engine, self.recorder, len(self.completions)
        cache, start, done = self._reused(model)
        self.stats.reused_tokens = start
        todo = self.wanted[len(done) :] if self.wanted else prefixes.plan(start, len(self.prompt_ids))
        if recorder:
            recorder.prefill_started()

        fed = self._feeding()
        disk = None if self.prompt_adds else engine.disk  # (no steered prompt is kept for another run)
        with engine.steered.adding(self.prompt_adds):
            logits = prefixes.feed(model, cache, self.prompt_ids, done, todo, disk, fed, engine.upto)
        if logits is None:
            return None, None
        self.passes = done + todo
        for completion in self.completions:
            completion.prefill = tuple(prefixes.pack(self.passes))
        if recorder:
            recorder.prefill_done(n, len(self.prompt_ids))
        if n > 1:  # siblings share the prefix: repeat its cache instead of recomputing it
            if engine.prefix is not None and self.cache_key is not False:  # the siblings decode on copies
                engine.prefix.keep(self.prompt_ids, cache, self.passes, self.cache_key)
            if engine.rows_alone:  # full layers' keys held once where the decode step reads them so
                cache = repeated(cache, n, engine.lean and not recorder and lean.in_blocks(model))
            else:
                cache = Apart([repeated(cache, 1) for _ in range(n)])
            logits = logits.expand(n, -1)  # (n, V)
        self.stats.prefill_seconds = time.perf_counter() - started
        return cache, logits

    def _prefill_rows(self, model, started: float):
        """Siblings steered apart: the prompt goes in once for each steering of the prompt among them
        (unsteered once for all those that steer only their reply), each fresh; the rows' caches
        then decode as one batch (engine.kvcache.joined), or apart where a batch would change bits."""
        caches, logits, device = {}, {}, self.engine.device
        self.passes, fed = prefixes.plan(0, len(self.prompt_ids)), self._feeding()
        for steering in self.rows:
            key = steering.prompt_key if steering else None
            if key not in caches:
                caches[key] = prefixes.new_cache(model)
                with self.engine.steered.adding(steering.adds(model.dtype, device) if key else None):
                    ids, upto = self.prompt_ids, self.engine.upto
                    done = prefixes.feed(model, caches[key], ids, [], self.passes, None, fed, upto)
                if done is None:
                    return None, None
                logits[key] = done
        keys = [r.prompt_key if r else None for r in self.rows]
        for completion in self.completions:
            completion.prefill = tuple(prefixes.pack(self.passes))
        rows = [caches[k] for k in keys]
        cache = joined(rows) if self.engine.rows_alone else Apart([repeated(c, 1) for c in rows])
        self.stats.prefill_seconds = time.perf_counter() - started
        return cache, torch.cat([logits[k] for k in keys])  # (n, V)

    def _decode(self) -> Iterator[Delta]:
        model, recorder = self.engine.model, self.recorder
        started = time.perf_counter()
        with torch.inference_mode(), recorder.attached() if recorder else contextlib.nullcontext():
            cache, logits = self.prefill(model, started)
            if cache is None:
                return
            branches = Branches(self, started)
            fed = list(self.prompt_ids)  # the tokens the cache holds (for n == 1)
            consistent = True
            try:
                for step in range(self.max_new):
                    if self._stop_requested:
                        return
                    yield from branches.sample(logits, step)
                    if not branches.still or step == self.max_new - 1:
                        break
                    picked = branches.drop_finished(cache)
                    consistent = False  # an interrupt inside the forward pass leaves the cache half-updated
                    logits = self._step(picked, cache, branches.active)
                    if len(self.completions) == 1:
                        fed.append(int(picked[0]))
                    consistent = True
            finally:
                if len(self.completions) == 1 and consistent:
                    self._keep(fed, cache)

    def _step(self, picked, cache, active: list[int]):
        """The next logits (B, V) after feeding picked (B,): as one batch, or row by row where the
        batch would not give each row the bits it gets alone (`Apart`)."""
        traced = self.recorder is not None
        rows = [(picked, cache, active)]
        if isinstance(cache, Apart):
            rows = [(picked[r : r + 1], own, [b]) for r, (b, own) in enumerate(zip(active, cache.caches))]
        logits = []
        for tokens, own, branches in rows:
            adds = self.reply_adds  # (siblings steered apart: each row's own)
            if self.row_adds is not None:
                adds = {b: t[branches] for b, t in self.row_adds.items()}
            logits.append(self.engine.step(tokens, own, traced=traced, adds=adds))
            if traced:
                self.recorder.step_done(branches)
        return torch.cat(logits) if len(logits) > 1 else logits[0]

    def _keep(self, fed: list[int], cache) -> None:
        """Keep the cache of a one-branch run's tokens: the next turn feeds only what is new (a steered
        run's under its steering's key: only a run steered alike reads it)."""
        if self.engine.prefix is not None and self.cache_key is not False:
            fed_passes = self.passes + [1] * (len(fed) - len(self.prompt_ids))
            self.engine.prefix.keep(fed, cache, fed_passes, self.cache_key)


@dataclass
class _Row:
    run: Run
    branches: Branches
    cache: object
    logits: torch.Tensor  # (1, V): what the row samples from next
    step: int = 0


def _lockstep(engine: Engine, runs: list[Run]) -> None:
    """Prefill each one-branch run as it would be alone, then decode them in lockstep: a row leaves
    the batch when its reply ends. Ctrl-C stops them all; each keeps what it has ('interrupted')."""
    from simlab.engine import ragged  # transformers' cache and attention: imported when first needed

    model, started = engine.model, time.perf_counter()  # decoding starts after the prefills
    rows: list[_Row] = []
    try:
        with torch.inference_mode():
            for run in runs:
                begun = time.perf_counter()
                cache, logits = run.prefill(model, begun)
                if cache is None:  # stopped while its prompt went in
                    continue
                if engine.prefix is not None:  # the next run's prompt starts as this one does
                    engine.prefix.keep(run.prompt_ids, copy.deepcopy(cache), run.passes)
                rows.append(_Row(run, Branches(run, begun), cache, logits))
            started = time.perf_counter()
            while rows:
                feeding = []
                for row in rows:
                    for _ in row.branches.sample(row.logits, row.step):  # a sweep reads the completions
                        pass
                    if row.branches.still and row.step < row.run.max_new - 1:
                        feeding.append(row)
                    row.step += 1
                if not feeding:
                    break
                tokens = torch.cat([row.branches.drop_finished(None) for row in feeding])  # (B,)
                logits = ragged.step(model, [row.cache for row in feeding], tokens, model.dtype)
                for b, row in enumerate(feeding):
                    row.logits = logits[b : b + 1]
                rows = feeding
    except KeyboardInterrupt:
        for run in runs:
            run.interrupt()
    finally:
        for run in runs:
            run.stats.decode_seconds = time.perf_counter() - started  # the batch's, shared
