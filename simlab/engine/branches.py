"""A run's branches while they decode: each its own generator (its seed), its text tracker, its
tokens so far; sampling a step's tokens from the batch's logits and dropping the branches that end."""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from simlab.engine.logits import choose
from simlab.engine.results import Delta, token_info
from simlab.engine.textstream import TextTracker
from simlab.models.ranking import top_k as best_of

TOP_ALTERNATIVES = 5


class Branches:
    """A run's branches while they decode: one generator per branch (its seed), the text trackers,
    which branches are still in the batch, and the tokens each one has so far (for the repetition
    penalty)."""

    def __init__(self, run, started: float):  # run: an engine.local.Run
        n, device = len(run.completions), run.engine.device
        self.run = run
        self.started = started
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in run.seeds]
        self.trackers = [TextTracker(run.engine.tokenizer, run.prompt_ids, run.params.stop) for _ in range(n)]
        self.active = list(range(n))  # branch index of each batch row
        self.still = list(range(n))  # the rows still decoding after the last sample
        self.picked = None  # (B,) the tokens last sampled
        self.context = None
        if run.params.repetition_penalty != 1.0:
            self.context = torch.tensor([run.prompt_ids] * n, device=device)  # (n, T)

    def sample(self, logits, step: int) -> Iterator[Delta]:
        """Sample each active branch's next token from logits (B, V); a Delta per branch."""
        run, params, engine = self.run, self.run.params, self.run.engine
        logits = logits.float()
        logprobs = logits.log_softmax(dim=-1)  # (B, V), the model's own distribution
        generators = [self.generators[b] for b in self.active]
        picked = choose(logits, self.context, params, generators)  # (B,)
        top_values, top_ids = best_of(logprobs, min(TOP_ALTERNATIVES, logprobs.shape[-1]))
        chosen = logprobs.gather(-1, picked.unsqueeze(-1)).squeeze(-1)  # (B,)
        if step == 0:
            run.stats.first_token_seconds = time.perf_counter() - self.started
        self.picked, self.still = picked, []
        for row, branch in enumerate(self.active):
            token = token_info(
                engine.tokenizer,
                int(picked[row]),
                float(chosen[row]),
                top_ids[row].tolist(),
                top_values[row].tolist(),
            )
            completion, tracker = run.completions[branch], self.trackers[branch]
            completion.tokens.append(token)
            run.stats.generated_tokens += 1
            if token.id in engine.eos_ids:
                completion.finish_reason = "eos"
                text = tracker.finish()
            else:
                text = tracker.add(token.id)
                if tracker.stop_string is not None:
                    completion.finish_reason = "stop"
                    completion.stop_string = tracker.stop_string
                elif step == run.max_new - 1:
                    completion.finish_reason = "length"
                    completion.truncated_to_context = run.clipped
                    text += tracker.finish()
            completion.text += text
            if completion.finish_reason is None:
                self.still.append(row)
            yield Delta(branch, text, token)

    def drop_finished(self, cache):
        """Drop finished branches from the batch (and from the cache, if given); the tokens to feed, (B,)."""
        picked = self.picked
        if len(self.still) < len(self.active):
            rows = torch.tensor(self.still, device=picked.device)
            if cache is not None:
                cache.batch_select_indices(rows)
            picked = picked[rows]
            if self.context is not None:
                self.context = self.context[rows]
            self.active = [self.active[r] for r in self.still]
        if self.context is not None:
            self.context = torch.cat([self.context, picked.unsqueeze(-1)], dim=-1)
        return picked
