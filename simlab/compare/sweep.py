"""A sweep: sampling every (variant, sample) of a compare spec into one session tree.

Each variant is a subtree of one session: its
frame as a root tagged `variant:NAME` and `spec:FINGERPRINT`, the first turn's replies as siblings
decoded in batches after one shared prefill, later turns below each reply. Sample i at turn t is
seeded `seed + STRIDE*t + i`, so a re-run finds what is done by seed and samples only the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from simlab.compare.spec import Spec, Variant
from simlab.compare.steer import steering_for
from simlab.errors import SweepInterrupted
from simlab.session.store import Session
from simlab.session.tree import Node
from simlab.turns import Replies, add_frame, start_replies

STRIDE = 1_000_003  # seed distance between turns; more samples than this per variant is not a use
MAX_BATCH = 16


@dataclass
class Progress:
    """Samples done of the total, and the rate since the sweep (not the resume) began."""

    total: int
    done: int = 0
    sampled: int = 0
    started: float = field(default_factory=time.perf_counter)
    report: Callable[[Progress, str], None] | None = None

    def advance(self, k: int, what: str, sampled: bool = True) -> None:
        self.done += k
        self.sampled += k if sampled else 0
        if self.report and k:
            self.report(self, what)

    def now(self, what: str) -> None:
        """Say what is being sampled now, before any of it is done."""
        if self.report:
            self.report(self, what)

    def clock(self) -> None:
        """Start timing here (after models load), unless sampling has begun."""
        if not self.sampled:
            self.started = time.perf_counter()

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.sampled / elapsed if elapsed > 0 else 0.0


@dataclass
class VariantRun:
    variant: Variant
    root: Node
    samples: list[list[Node]]  # per complete sample, its replies in turn order


def sample_key(sample, spec: Spec, i: int) -> int:
    """What pairs a sample across variants: its first reply's seed (its index where it has none)."""
    seed = sample[0].seed if sample else None
    return seed - spec.seed if isinstance(seed, int) else i


def seed_of(spec: Spec, turn: int, sample: int) -> int:
    return spec.seed + STRIDE * turn + sample


def run_sweep(
    spec: Spec,
    session: Session,
    engine_for: Callable[[str | None], Any],
    progress: Progress | None = None,
    tracer=None,
) -> list[VariantRun]:
    """Sample whatever the session does not hold yet; return every variant's complete samples."""
    progress = progress or Progress(total=len(spec.variants) * spec.samples * len(spec.turns))
    runs = []
    for variant in spec.variants:
        engine = engine_for(variant.model or spec.model)
        progress.clock()
        root, start = _variant_root(session, spec, variant, engine.info.revision)
        heads: list[Node | None] = [start] * spec.samples  # each sample's latest node
        for t, turn in enumerate(spec.turns):
            jobs: list[tuple[int, Node]] = []  # (sample, its user turn) still without a reply
            for i, head in enumerate(heads):
                if head is None:
                    continue
                user = _user(session, head, turn, variant)
                seed = seed_of(spec, t, i)
                found = [n for n in session.tree.children(user.id) if n.role == "model" and n.seed == seed]
                heads[i] = found[0] if found else None
                if found:
                    progress.advance(
                        1, f"all variants (now {variant.name}, turn {t + 1}, saved)", sampled=False
                    )
                else:
                    jobs.append((i, user))
            what = f"all variants (now {variant.name}, turn {t + 1})"
            if jobs:
                progress.now(what)
            if not engine.capabilities.local:  # a server: samples in flight at once, each its own request
                for i, node in _sample_remote(engine, session, variant, spec, t, jobs, progress, what):
                    heads[i] = node
                continue
            for group, nodes in _sample_local(engine, session, variant, spec, t, jobs, tracer):
                for i, node in zip(group, nodes):
                    heads[i] = node
                progress.advance(len(group), what)
        runs.append(VariantRun(variant, root, _complete_samples(session, spec, start)))
    first = next((run.samples[0][-1] for run in runs if run.samples), None)
    if first is not None and session.tree.cursor != first.id:
        session.goto(first.id)  # `simlab chat --resume` opens the first sample
    return runs


def _variant_root(session: Session, spec: Spec, variant: Variant, revision: str) -> tuple[Node, Node]:
    tags = {f"variant:{variant.name}", f"spec:{variant.fingerprint(spec, revision)}"}
    for root in session.tree.roots:
        if tags <= root.tags:
            kids = [n for n in session.tree.children(root.id) if n.role == "model" and n.params is None]
            return root, (kids[0] if kids and variant.persona.greetings() else root)
    start = add_frame(session, variant.persona)
    root = session.tree.path(start.id)[0]
    for tag in sorted(tags):
        root = session.set_tag(root.id, tag)
    return root, (start if start.id != root.id else root)


def _user(session: Session, parent: Node, text: str, variant: Variant) -> Node:
    for node in session.tree.children(parent.id):
        if node.role == "user" and node.text == text:
            return node
    return session.add_child(
        parent.id, "user", text, speaker=variant.persona.user, persona=variant.persona.name
    )


def _runs_of(indices: list[int]) -> list[list[int]]:
    """Consecutive indices in groups of at most MAX_BATCH: seeds seed..seed+n-1 decode as one batch."""
    groups: list[list[int]] = []
    for i in indices:
        if groups and groups[-1][-1] == i - 1 and len(groups[-1]) < MAX_BATCH:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _sample_local(
    engine, session: Session, variant: Variant, spec: Spec, t: int, jobs: list[tuple[int, Node]], tracer=None
) -> Iterator[tuple[list[int], list[Node]]]:
    """Each batch's samples and their new replies. The first turn's user node is shared: seeds
    seed..seed+n-1 are siblings after one prefill. Later turns have a user node per sample, each
    below its own history: their replies decode together, each with its own prompt."""
    if t == 0:
        user = jobs[0][1] if jobs else None
        for group in _runs_of([i for i, _ in jobs]):
            yield (
                group,
                _sample(engine, session, user, variant, seed_of(spec, t, group[0]), len(group), tracer),
            )
        return
    for k in range(0, len(jobs), MAX_BATCH):
        group = jobs[k : k + MAX_BATCH]
        yield [i for i, _ in group], _sample_apart(engine, session, group, variant, spec, t, tracer)


def _sample(
    engine, session: Session, user: Node, variant: Variant, seed: int, n: int, tracer=None
) -> list[Node]:
    replies = start_replies(
        engine,
        session,
        user.id,
        variant.params.with_overrides(seed=seed),
        n,
        persona=variant.persona.name,
        tracer=tracer,
        steering=steering_for(variant, engine),
    )
    replies.decode()
    nodes = replies.save(keep=lambda c: c.finish_reason != "interrupted", variant=variant.name)
    if replies.run.interrupted:
        raise SweepInterrupted(
            "interrupted; finished samples are saved, run the same command again to resume"
        )
    return nodes


def _sample_apart(
    engine, session: Session, jobs: list[tuple[int, Node]], variant: Variant, spec: Spec, t: int, tracer=None
) -> list[Node]:
    """A later turn's replies, one per (sample, its user node), each with its own prompt, decoded
    by the engine as one batch; every reply is the one its sample gives alone."""
    replies = [
        start_replies(
            engine,
            session,
            user.id,
            variant.params.with_overrides(seed=seed_of(spec, t, i)),
            persona=variant.persona.name,
            steering=steering_for(variant, engine),
            tracer=tracer,
        )
        for i, user in jobs
    ]
    try:
        engine.decode_together([r.run for r in replies])
    except KeyboardInterrupt:  # raised between runs: the engine catches its own
        for r in replies:
            r.run.interrupt()
    nodes = [r.save(keep=lambda c: c.finish_reason != "interrupted", variant=variant.name) for r in replies]
    if any(r.run.interrupted for r in replies):
        raise SweepInterrupted(
            "interrupted; finished samples are saved, run the same command again to resume"
        )
    return [found[0] for found in nodes]


def _sample_remote(
    engine,
    session: Session,
    variant: Variant,
    spec: Spec,
    t: int,
    jobs: list[tuple[int, Node]],
    progress: Progress,
    what: str,
) -> Iterator[tuple[int, Node]]:
    """One request per sample, at most `concurrency` in flight; each reply is saved (in this thread) as
    it arrives, so an interruption or a failed request keeps every finished sample and a rerun asks
    only for the rest. Transient failures were already retried by the client."""

    def ask(i: int, user: Node) -> tuple[int, Replies]:
        replies = start_replies(
            engine,
            session,
            user.id,
            variant.params.with_overrides(seed=seed_of(spec, t, i)),
            persona=variant.persona.name,
            steering=steering_for(variant, engine),
        )
        replies.decode()
        return i, replies

    pool = ThreadPoolExecutor(max(1, engine.capabilities.concurrency), thread_name_prefix="simlab-request")
    pending = {pool.submit(ask, i, user) for i, user in jobs}
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i, replies = future.result()
                [completion] = replies.run.completions
                if completion.finish_reason == "interrupted":
                    raise SweepInterrupted(
                        f"a reply was cut short ({completion.server or 'no answer'}); finished "
                        "samples are saved, run the same command again to resume"
                    )
                [node] = replies.save(keep=lambda c: True)
                progress.advance(1, what)
                yield i, node
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _complete_samples(session: Session, spec: Spec, start: Node) -> list[list[Node]]:
    tree = session.tree
    user = next((n for n in tree.children(start.id) if n.role == "user" and n.text == spec.turns[0]), None)
    if user is None:
        return []
    firsts = {n.seed: n for n in tree.children(user.id) if n.role == "model"}
    samples = []
    for i in range(spec.samples):
        reply = firsts.get(seed_of(spec, 0, i))
        chain = [reply] if reply else []
        for t in range(1, len(spec.turns)):
            if not chain:
                break
            users = [n for n in tree.children(chain[-1].id) if n.role == "user" and n.text == spec.turns[t]]
            nxt = [
                n
                for u in users
                for n in tree.children(u.id)
                if n.role == "model" and n.seed == seed_of(spec, t, i)
            ]
            chain = chain + nxt[:1] if nxt else []
        if len(chain) == len(spec.turns):
            samples.append(chain)
    return samples
