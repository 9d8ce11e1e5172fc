"""A judge without an API: each rubric question scored by a judge model's teacher-forced probability
of its answer labels after the transcript, nothing sampled. Two labels ("Yes", "No"): the score is
P(first) / (P(first) + P(second)); more ("1".."5"): the expected value of the labels' numbers under
their probabilities, renormalised. Local judges and servers with prompt log-probabilities score
alike (engine.scored).

A rubric file (YAML), a metric per key:

    hostile:
      question: Does the speaker sound hostile?
    warmth:
      question: How warm is the speaker, from 1 (cold) to 5 (warm)?
      labels: ["1", "2", "3", "4", "5"]

Each score is saved as a note under the sample's last reply (speaker "judge", its prompt, model,
labels' log-probabilities and score in `judged`), so a sweep run again reuses it and `replay` of
the note scores it again."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simlab.engine.scored import score_text
from simlab.errors import SpecError

TEMPLATE = "Here is a conversation.\n\n{transcript}\n\nQuestion: {question} Answer {choices}.\nAnswer:"
KEYS = {"question", "labels", "template"}


@dataclass(frozen=True)
class Rubric:
    name: str
    question: str
    labels: tuple[str, ...] = ("Yes", "No")
    template: str = TEMPLATE

    @property
    def values(self) -> tuple[float, ...] | None:
        """The labels as numbers (a scale), or None (the first label's probability is the score)."""
        try:
            return tuple(float(label) for label in self.labels)
        except ValueError:
            return None

    def prompt(self, transcript: str) -> str:
        choices = " or ".join(self.labels) if len(self.labels) == 2 else ", ".join(self.labels)
        return self.template.format(transcript=transcript, question=self.question, choices=choices)


def read_rubric(path: Path) -> list[Rubric]:
    from simlab.compare.spec import read_spec

    data, lines = read_spec(path)
    where = lambda key: f"{path}:{lines.get(key, 1)}"  # noqa: E731
    if not isinstance(data, dict) or not data:
        raise SpecError(f"{path}: a rubric is a mapping of metric names to {{question: ..., labels: [...]}}")
    out = []
    for name, entry in data.items():
        if isinstance(entry, str):
            entry = {"question": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("question"), str) or not entry["question"]:
            raise SpecError(f"{where(name)}: {name}: give question: TEXT (and labels: [Yes, No] or a scale)")
        unknown = sorted(set(entry) - KEYS)
        if unknown:
            raise SpecError(
                f"{where(name)}: {name}: unknown key {unknown[0]!r}; known: {', '.join(sorted(KEYS))}"
            )
        labels = entry.get("labels", ["Yes", "No"])
        if not isinstance(labels, list) or len(labels) < 2 or len(set(map(str, labels))) != len(labels):
            raise SpecError(f"{where(name)}: {name}: labels: give two or more different answers")
        template = entry.get("template", TEMPLATE)
        try:
            template.format(transcript="", question="", choices="")
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise SpecError(
                f"{where(name)}: {name}: template: {exc.__class__.__name__} {exc}: use only {{transcript}}, "
                "{question} and {choices}, and write a brace as {{ or }}"
            ) from None
        if not isinstance(template, str) or "{transcript}" not in template:
            raise SpecError(f"{where(name)}: {name}: template: must contain {{transcript}}")
        if len(labels) > 2 and Rubric(str(name), "", tuple(map(str, labels))).values is None:
            raise SpecError(
                f"{where(name)}: {name}: labels: more than two answers make a scale, so each must be a "
                "number (two, such as Yes and No, score the first's probability)"
            )
        out.append(Rubric(str(name), entry["question"], tuple(str(x) for x in labels), template))
    return out


def transcript(turns: list[str], replies, user: str) -> str:
    """The sample's turns and replies as the judge reads them: no frame, speakers named."""
    return "\n".join(
        line
        for turn, reply in zip(turns, replies)
        for line in (f"{user}: {turn}", f"{reply.speaker}: {reply.text}")
    )


def judge(engine, rubric: Rubric, prompt: str, how: str = "") -> dict[str, Any]:
    """Each label's log-probability after the prompt (teacher-forced) and the score."""
    logprobs = {}
    for label in rubric.labels:
        spans = score_text(engine, prompt, " " + label, how)
        logprobs[label] = sum(s.logprob for s in spans)
    top = max(logprobs.values())
    weights = {k: math.exp(v - top) for k, v in logprobs.items()}
    total = sum(weights.values())
    values = rubric.values
    if values is not None and len(rubric.labels) > 2:
        score = sum(v * weights[k] / total for k, v in zip(rubric.labels, values))
    else:
        score = weights[rubric.labels[0]] / total
    return {
        "metric": rubric.name,
        "question": rubric.question,
        "labels": list(rubric.labels),
        "prompt": prompt,
        "logprobs": logprobs,
        "score": score,
    }


def judged_note(session, reply, engine, rubric: Rubric, prompt: str, how: str):
    """The judge's note on a reply for this rubric and judge model: the one saved, or a new one."""
    spec = engine.info.spec
    for note in session.tree.children(reply.id):
        j = note.judged or {}
        if (
            note.speaker == "judge"
            and note.model == spec
            and j.get("metric") == rubric.name
            and j.get("prompt") == prompt
        ):
            return note
    found = judge(engine, rubric, prompt, how)
    text = f"{rubric.name}: {found['score']:.3f} ({rubric.question})"
    where = getattr(getattr(engine, "config", None), "base_url", None)
    backend = {"kind": "openai", "base_url": where, "scoring": how} if where else None
    local = engine.capabilities.local
    return session.add_child(
        reply.id,
        "note",
        text,
        speaker="judge",
        model=spec,
        judged=found,
        backend=backend,
        dtype=engine.info.dtype if local else None,  # (replay loads the judge as it read)
        weights=None if not local or engine.info.weights == "float" else engine.info.weights,
    )


def judge_samples(spec, runs, keep: list[int], engine, rubrics: list[Rubric], session, how: str = "") -> dict:
    """Every paired sample of every variant judged on every rubric: {variant: {metric: [score...]}}."""
    from simlab.compare.sweep import sample_key

    out: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        by_key = {sample_key(s, spec, i): s for i, s in enumerate(run.samples)}
        scores = out.setdefault(run.variant.name, {r.name: [] for r in rubrics})
        for key in keep:
            nodes = by_key[key]
            text = transcript(list(spec.turns), nodes, run.variant.persona.user)
            for rubric in rubrics:
                note = judged_note(session, nodes[-1], engine, rubric, rubric.prompt(text), how)
                scores[rubric.name].append(float(note.judged["score"]))
    return out


def rescored(engine, note, how: str = "") -> tuple[bool, dict[str, Any]]:
    """A judge's note scored again from its saved prompt: whether every label's log-probability is
    the same to the bit, and the new figures."""
    j = note.judged
    rubric = Rubric(j["metric"], j["question"], tuple(j["labels"]))
    again = judge(engine, rubric, j["prompt"], how)
    return again["logprobs"] == j["logprobs"], again


def add_to(analysis, values: dict[str, dict[str, list[float]]], judge_model: str, seed: int = 0) -> None:
    """The judge's scores into the analysis: each variant's mean with its interval, and each
    variant's paired difference from the baseline (p-values Holm-corrected across them)."""
    from simlab.compare.inference import holm, paired, studentized_mean

    analysis.judge, analysis.judged_values = judge_model, values
    names = list(values)
    for name in names:
        analysis.judged[name] = {m: studentized_mean(v, seed=seed) for m, v in values[name].items()}
    base = values[names[0]] if names else {}
    for name in names[1:]:
        analysis.judged_diff[name] = {m: paired(base[m], v, seed=seed) for m, v in values[name].items()}
    tested = [e for d in analysis.judged_diff.values() for e in d.values() if "p" in e.extra]
    for e, p in zip(tested, holm([e.extra["p"] for e in tested])):
        e.extra["p_holm"] = p
