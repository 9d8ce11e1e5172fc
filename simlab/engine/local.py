"""The decode loop: prefill a prompt once, decode N sibling branches as one batch, stream text.

Not ``model.generate``: we need text deltas as they form, N siblings after a single prefill
(the prompt's KV cache is repeated, not recomputed), a generator per branch so that a
(prompt, params, seed) gives the same tokens alone or among siblings, per-token log-probabilities
with the top alternatives, and stop strings matched on decoded text across token boundaries.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator, Sequence

import torch

from simlab.engine import prefix as prefixes
from simlab.engine.logits import process_logits, sample
from simlab.engine.params import SamplingParams
from simlab.engine.protocol import LOCAL, drain
from simlab.engine.results import Completion, Delta, RunControl, RunStats, TokenInfo
from simlab.engine.textstream import TextTracker
from simlab.errors import ContextLengthError
from simlab.models.info import LoadedModel

TOP_ALTERNATIVES = 5


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
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.prefix = prefixes.PrefixCache() if reuse_prefix else None
        self.disk = prefixes.DiskPrefixes(prefix_dir, self.model) if reuse_prefix and prefix_dir else None

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
    ) -> Run:
        """Validate and prepare a run; iterate it to decode. `passes`: how a recorded reply fed its
        prompt (Completion.prefill unpacked), to feed it the same way (engine.prefix)."""
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
        run = Run(self, ids, params, n, max_new=min(params.max_new_tokens, room), recorder=recorder)
        run.wanted = prefixes.usable(list(passes) if passes else None, len(ids))
        return run

    def _forced(self, ids: list[int], start: int):
        """One teacher-forced pass: the log-distributions at the positions that predict ids[start:]
        (start >= 1), (T - start, V), and the log-probability of each of those tokens, (T - start,)."""
        if len(ids) > self.info.context_length:
            raise ContextLengthError(f"{len(ids)} tokens do not fit in {self.info.context_length}")
        logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0, start - 1 : -1]
        logprobs = logits.float().log_softmax(dim=-1)
        targets = torch.tensor(ids[start:], device=self.device).unsqueeze(-1)
        return logprobs, logprobs.gather(-1, targets).squeeze(-1)

    def score(self, ids: Sequence[int]) -> list[float]:
        """Teacher-forced log-probability of each token after the first, given those before it."""
        with torch.inference_mode():
            return self._forced(list(ids), 1)[1].tolist()

    def score_tokens(self, ids: Sequence[int], start: int) -> list[TokenInfo]:
        """Teacher-forced: each token from `start` on with its log-probability given those before it
        and the model's best alternatives there, as a sampled reply records them."""
        ids, start = list(ids), max(start, 1)
        with torch.inference_mode():
            logprobs, chosen = self._forced(ids, start)
            top = logprobs.topk(TOP_ALTERNATIVES, dim=-1)
        return [
            _token_info(self.tokenizer, t, lp, i, v)
            for t, lp, i, v in zip(ids[start:], chosen.tolist(), top.indices.tolist(), top.values.tolist())
        ]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and the character span of each in text (for scoring parts of a text)."""
        encoded = self.tokenizer(text, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]

    def next_token_probs(self, prompt: str | Sequence[int]):
        """The next-token distribution after the prompt (its last context_length tokens), (V,) numpy."""
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        ids = ids[-self.info.context_length :]
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids], device=self.device), logits_to_keep=1).logits[
                0, -1
            ]
            return logits.double().softmax(dim=-1).cpu().numpy()  # (V,)

    def provenance(self, completion: Completion) -> None:
        return None  # a local reply: its model, revision and dtype say where it came from

    def generate(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams,
        n: int = 1,
        recorder=None,
        passes: Sequence[int] | None = None,
    ) -> list[Completion]:
        """Decode to the end and return the completions."""
        return drain(self.start(prompt, params, n, recorder=recorder, passes=passes))


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
    ):
        super().__init__(params, n)
        self.engine = engine
        self.recorder = recorder  # a trace.Recorder: reads the residual stream of these same passes
        self.prompt_ids = prompt_ids
        self.max_new = max_new
        self.clipped = max_new < params.max_new_tokens
        self.stats = RunStats(prompt_tokens=len(prompt_ids))
        self.wanted: list[int] | None = None  # the passes to feed the prompt in (a replay's)
        self.passes: list[int] = []  # the passes it was fed in

    def __iter__(self) -> Iterator[Delta]:
        started = time.perf_counter()
        try:
            yield from self._decode()
        except KeyboardInterrupt:
            self.interrupt()
        finally:  # also when stopped early: the stats cover what was decoded
            self.stats.decode_seconds = time.perf_counter() - started - self.stats.prefill_seconds

    def _reused(self, model):
        """(cache, tokens it holds, their passes): the last run's, or kept on disk, or a new one."""
        engine, recorder = self.engine, self.recorder
        if not (recorder and recorder.config.prompt):  # a trace of the whole prompt feeds all of it
            for store in (engine.prefix, engine.disk):
                cache, start, done = store.take(self.prompt_ids, self.wanted) if store else (None, 0, [])
                if cache is not None:
                    return cache, start, done
        return prefixes.new_cache(model), 0, []

    def _decode(self) -> Iterator[Delta]:
        engine, params = self.engine, self.params
        model, device = engine.model, engine.device

        n = len(self.completions)
        generators = [torch.Generator(device=device).manual_seed(s) for s in self.seeds]
        trackers = [TextTracker(engine.tokenizer, self.prompt_ids, params.stop) for _ in range(n)]
        active = list(range(n))  # branch index of each batch row
        context = None
        if params.repetition_penalty != 1.0:
            context = torch.tensor([self.prompt_ids] * n, device=device)  # (n, T)
        started = time.perf_counter()
        recorder = self.recorder
        with torch.inference_mode(), recorder.attached() if recorder else contextlib.nullcontext():
            cache, start, done = self._reused(model)
            self.stats.reused_tokens = start
            todo = self.wanted[len(done) :] if self.wanted else prefixes.plan(start, len(self.prompt_ids))
            if recorder:
                recorder.prefill_started()
            logits = prefixes.feed(model, cache, self.prompt_ids, done, todo, engine.disk)
            self.passes = done + todo
            for completion in self.completions:
                completion.prefill = tuple(prefixes.pack(self.passes))
            if recorder:
                recorder.prefill_done(n, len(self.prompt_ids))
            fed = list(self.prompt_ids)  # the tokens the cache holds (for n == 1)
            if n > 1:  # siblings share the prefix: repeat its cache instead of recomputing it
                if engine.prefix is not None:
                    engine.prefix.keep(self.prompt_ids, copy.deepcopy(cache), self.passes)
                cache.batch_repeat_interleave(n)
                logits = logits.expand(n, -1)  # (n, V)
            self.stats.prefill_seconds = time.perf_counter() - started
            consistent = True
            try:
                for step in range(self.max_new):
                    if self._stop_requested:
                        return
                    logits = logits.float()
                    logprobs = logits.log_softmax(dim=-1)  # (B, V), the model's own distribution
                    processed = process_logits(logits, context, params)
                    picked = sample(
                        processed, [generators[b] for b in active], params.greedy, params.sampler
                    )  # (B,)
                    top = logprobs.topk(TOP_ALTERNATIVES, dim=-1)
                    chosen = logprobs.gather(-1, picked.unsqueeze(-1)).squeeze(-1)  # (B,)
                    if step == 0:
                        self.stats.first_token_seconds = time.perf_counter() - started
                    still = []
                    for row, branch in enumerate(active):
                        token = _token_info(
                            engine.tokenizer,
                            int(picked[row]),
                            float(chosen[row]),
                            top.indices[row].tolist(),
                            top.values[row].tolist(),
                        )
                        completion = self.completions[branch]
                        completion.tokens.append(token)
                        self.stats.generated_tokens += 1
                        if token.id in engine.eos_ids:
                            completion.finish_reason = "eos"
                            text = trackers[branch].finish()
                        else:
                            text = trackers[branch].add(token.id)
                            if trackers[branch].stop_string is not None:
                                completion.finish_reason = "stop"
                                completion.stop_string = trackers[branch].stop_string
                            elif step == self.max_new - 1:
                                completion.finish_reason = "length"
                                completion.truncated_to_context = self.clipped
                                text += trackers[branch].finish()
                        completion.text += text
                        if completion.finish_reason is None:
                            still.append(row)
                        yield Delta(branch, text, token)
                    if not still or step == self.max_new - 1:
                        break
                    if len(still) < len(active):  # drop finished branches from the batch and its cache
                        rows = torch.tensor(still, device=device)
                        cache.batch_select_indices(rows)
                        picked = picked[rows]
                        if context is not None:
                            context = context[rows]
                        active = [active[r] for r in still]
                    if context is not None:
                        context = torch.cat([context, picked.unsqueeze(-1)], dim=-1)
                    consistent = False  # an interrupt inside the forward pass leaves the cache half-updated
                    logits = model(input_ids=picked.unsqueeze(-1), cache=cache, use_cache=True).logits[
                        :, -1, :
                    ]
                    if n == 1:
                        fed.append(int(picked[0]))
                    consistent = True
                    if recorder:
                        recorder.step_done(active)
            finally:
                if n == 1 and consistent and engine.prefix is not None:
                    fed_passes = self.passes + [1] * (len(fed) - len(self.prompt_ids))
                    engine.prefix.keep(fed, cache, fed_passes)  # the next turn feeds only what is new


def _token_info(
    tokenizer, token_id: int, logprob: float, top_ids: list[int], top_logprobs: list[float]
) -> TokenInfo:
    decode = tokenizer.decode
    top = tuple((i, decode([i]), lp) for i, lp in zip(top_ids, top_logprobs))
    return TokenInfo(token_id, decode([token_id]), logprob, top)


def _eos_ids(model, tokenizer) -> frozenset[int]:
    """End-of-sequence ids from the generation config, the model config and the tokenizer."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
