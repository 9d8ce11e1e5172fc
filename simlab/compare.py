"""Sweeps of prompt variants: the spec, and sampling every (variant, sample) into a session tree.

A spec names scripted user turns, variants (a persona, optionally with its frame, sampling or model
overridden), samples per variant and a base seed. Each variant is a subtree of one session: its
frame as a root tagged `variant:NAME` and `spec:FINGERPRINT`, the first turn's replies as siblings
decoded in batches after one shared prefill, later turns below each reply. Sample i at turn t is
seeded `seed + STRIDE*t + i`, so a re-run finds what is done by seed and samples only the rest.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from simlab.conversation import add_frame, add_reply, fit_prompt, framing_of
from simlab.errors import SamplingError, SimlabError
from simlab.params import SamplingParams
from simlab.persona import SAMPLING_KEYS, Persona, PersonaError, find, read_file
from simlab.store import Session
from simlab.tree import Node

STRIDE = 1_000_003  # seed distance between turns; more samples than this per variant is not a use
MAX_BATCH = 16


class SpecError(SimlabError):
    """A compare spec that cannot be run as written."""


@dataclass(frozen=True)
class Variant:
    name: str
    persona: Persona
    params: SamplingParams  # seed unset: the sweep seeds each sample
    model: str | None = None

    def fingerprint(self, spec: "Spec", model_revision: str) -> str:
        """What the samples depend on (the model by its revision, however it was named); a changed
        variant gets a fresh subtree and the old one stays."""
        from simlab.persona import Framing

        data = {"frame": self.persona.render_frame(), "greetings": self.persona.greetings(),
                "framing": Framing.of(self.persona).to_dict(), "params": self.params.__dict__,
                "model": model_revision, "turns": spec.turns, "seed": spec.seed}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Spec:
    name: str
    turns: tuple[str, ...]
    variants: tuple[Variant, ...]
    samples: int = 8
    seed: int = 0
    model: str | None = None
    base_url: str | None = None  # sample from this OpenAI-compatible server (simlab.remote)


SPEC_KEYS = {"name", "turns", "variants", "samples", "seed", "sampling", "model", "base_url"}
VARIANT_KEYS = {"name", "persona", "frame", "sampling", "model"}


def _sampling(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: sampling must be a mapping of {', '.join([*SAMPLING_KEYS, 'stop'])}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "stop":
            if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
                raise SpecError(f"{where}: sampling.stop must be a list of non-empty texts")
            out["stop"] = tuple(value)
        elif key in SAMPLING_KEYS:
            out[SAMPLING_KEYS[key]] = value
        else:
            raise SpecError(f"{where}: sampling.{key}: unknown; use {', '.join([*SAMPLING_KEYS, 'stop'])}")
    return out


def build_spec(data: Any, source: str, lines: dict | None = None, default_name: str = "compare") -> Spec:
    """Validate a parsed spec; errors name the file, line and key."""
    lines = lines or {}

    def where(*key: Any) -> str:
        line = lines.get(tuple(str(k) for k in key)) or lines.get((str(key[0]),)) if key else None
        return f"{source}:{line}" if line else source

    if not isinstance(data, dict):
        raise SpecError(f"{source}: a compare spec is a mapping with turns and variants")
    for key in data:
        if key not in SPEC_KEYS:
            raise SpecError(f"{where(key)}: {key}: unknown key; use {', '.join(sorted(SPEC_KEYS))}")
    turns = data.get("turns")
    if isinstance(turns, str):
        turns = [turns]
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise SpecError(f"{where('turns')}: turns: give the scripted user turns as a list of texts")
    samples, seed = data.get("samples", 8), data.get("seed", 0)
    for key, value, low in (("samples", samples, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SpecError(f"{where(key)}: {key}: must be a whole number >= {low}")
    if samples > 10_000:
        raise SpecError(f"{where('samples')}: samples: at most 10000 per variant")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise SpecError(f"{where('model')}: model: must be a model spec (text)")
    base_url = data.get("base_url")
    if base_url is not None and not (isinstance(base_url, str) and base_url.startswith(("http://", "https://"))):
        raise SpecError(f"{where('base_url')}: base_url: must be a server's http(s) URL, e.g. http://host:8000/v1")
    common = _sampling(data.get("sampling"), f"{where('sampling')}")
    raw_variants = data.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise SpecError(f"{where('variants')}: variants: give a list, each with at least a persona")
    variants: list[Variant] = []
    for k, raw in enumerate(raw_variants):
        here = f"{where('variants')} (variant {k + 1})"
        if isinstance(raw, str):
            raw = {"persona": raw}
        if not isinstance(raw, dict) or not isinstance(raw.get("persona"), str):
            raise SpecError(f"{here}: each variant needs `persona: NAME` (or is just a persona name)")
        unknown = set(raw) - VARIANT_KEYS
        if unknown:
            raise SpecError(f"{here}: unknown key {sorted(unknown)[0]!r}; use {', '.join(sorted(VARIANT_KEYS))}")
        persona = find(raw["persona"])
        if "frame" in raw:
            if not isinstance(raw["frame"], str):
                raise SpecError(f"{here}: frame: must be text")
            persona = replace(persona, frame=raw["frame"])
        name = raw.get("name", persona.name)
        if not isinstance(name, str) or not name.strip() or any(v.name == name for v in variants):
            raise SpecError(f"{here}: name {name!r} is missing or used twice; give each variant its own name:")
        if raw.get("model") is not None and not isinstance(raw["model"], str):
            raise SpecError(f"{here}: model: must be a model spec (text)")
        try:
            params = persona.sampling_params(**{**common, **_sampling(raw.get("sampling"), here)})
        except (SamplingError, TypeError) as exc:
            raise SpecError(f"{here}: {exc}") from None
        variants.append(Variant(name, persona, params, raw.get("model")))
    name = data.get("name", default_name)
    if not isinstance(name, str):
        raise SpecError(f"{where('name')}: name: must be text")
    return Spec(name, tuple(turns), tuple(variants), samples, seed, model, base_url)


def load_spec(path: Path | str) -> Spec:
    path = Path(path)
    try:
        data, lines = read_file(path, "a compare spec")
    except PersonaError as exc:
        raise SpecError(str(exc)) from None
    return build_spec(data, str(path), lines, default_name=path.stem)


# -- the sweep --------------------------------------------------------------------------------

@dataclass
class Progress:
    """Samples done of the total, and the rate since the sweep (not the resume) began."""

    total: int
    done: int = 0
    sampled: int = 0
    started: float = field(default_factory=time.perf_counter)
    report: Callable[["Progress", str], None] | None = None

    def advance(self, k: int, what: str, sampled: bool = True) -> None:
        self.done += k
        self.sampled += k if sampled else 0
        if self.report and k:
            self.report(self, what)

    def clock(self) -> None:
        """Start timing here (after models load), unless sampling has begun."""
        if not self.sampled:
            self.started = time.perf_counter()

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.sampled / elapsed if elapsed > 0 else 0.0


class SweepInterrupted(SimlabError):
    """Ctrl-C during a sweep: finished samples are saved; running again resumes."""


@dataclass
class VariantRun:
    variant: Variant
    root: Node
    samples: list[list[Node]]  # per complete sample, its replies in turn order


def seed_of(spec: Spec, turn: int, sample: int) -> int:
    return spec.seed + STRIDE * turn + sample


def run_sweep(spec: Spec, session: Session, engine_for: Callable[[str | None], Any],
              progress: Progress | None = None, tracer=None) -> list[VariantRun]:
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
                    progress.advance(1, f"{variant.name}: turn {t + 1} (saved)", sampled=False)
                else:
                    jobs.append((i, user))
            what = f"{variant.name}: turn {t + 1}"
            if engine.model is None:  # a server: samples in flight at once, each its own request
                for i, node in _sample_remote(engine, session, variant, spec, t, jobs, progress, what):
                    heads[i] = node
                continue
            for group in _runs_of([i for i, _ in jobs]) if t == 0 else [[i] for i, _ in jobs]:
                user = dict(jobs)[group[0]]  # the first turn's user node is shared; later ones are per sample
                nodes = _sample(engine, session, user, variant, seed_of(spec, t, group[0]), len(group), tracer)
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
    return session.add_child(parent.id, "user", text, speaker=variant.persona.user, persona=variant.persona.name)


def _runs_of(indices: list[int]) -> list[list[int]]:
    """Consecutive indices in groups of at most MAX_BATCH: seeds seed..seed+n-1 decode as one batch."""
    groups: list[list[int]] = []
    for i in indices:
        if groups and groups[-1][-1] == i - 1 and len(groups[-1]) < MAX_BATCH:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _sample(engine, session: Session, user: Node, variant: Variant, seed: int, n: int, tracer=None) -> list[Node]:
    path = session.tree.path(user.id)
    framing = framing_of(path)
    params = variant.params.with_overrides(seed=seed)
    recorder = tracer.recorder(engine) if tracer else None
    fit = fit_prompt(path, framing.model, engine, params.max_new_tokens)
    run = engine.start(fit.prompt, params, n=n, recorder=recorder)
    for _ in run:
        pass
    nodes = []
    for c in run.completions:
        if c.finish_reason == "interrupted":
            continue
        node = add_reply(session, user.id, c, params, engine, framing, framing.model, persona=variant.persona.name,
                         window=fit.window)
        if recorder is not None:
            tracer.save_node(session, node.id, recorder, run, c, variant=variant.name)
        nodes.append(node)
    if run.interrupted:
        raise SweepInterrupted("interrupted; finished samples are saved, run the same command again to resume")
    return nodes


def _sample_remote(engine, session: Session, variant: Variant, spec: Spec, t: int, jobs: list[tuple[int, Node]],
                   progress: Progress, what: str) -> Iterator[tuple[int, Node]]:
    """One request per sample, at most `concurrency` in flight; each reply is saved (in this thread) as
    it arrives, so an interruption or a failed request keeps every finished sample and a rerun asks
    only for the rest. Transient failures were already retried by the client."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    def ask(i: int, user: Node):
        path = session.tree.path(user.id)
        params = variant.params.with_overrides(seed=seed_of(spec, t, i))
        prompt = fit_prompt(path, framing_of(path).model, engine, params.max_new_tokens)
        return i, user, params, prompt, engine.generate(prompt.prompt, params, n=1)[0]

    pool = ThreadPoolExecutor(max(1, engine.config.concurrency), thread_name_prefix="simlab-request")
    pending = {pool.submit(ask, i, user) for i, user in jobs}
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i, user, params, fit, completion = future.result()
                if completion.finish_reason == "interrupted":
                    raise SweepInterrupted(f"a reply was cut short ({completion.server or 'no answer'}); finished "
                                           "samples are saved, run the same command again to resume")
                framing = framing_of(session.tree.path(user.id))
                node = add_reply(session, user.id, completion, params, engine, framing, framing.model,
                                 persona=variant.persona.name, window=fit.window)
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
            nxt = [n for u in users for n in tree.children(u.id) if n.role == "model" and n.seed == seed_of(spec, t, i)]
            chain = chain + nxt[:1] if nxt else []
        if len(chain) == len(spec.turns):
            samples.append(chain)
    return samples
