"""A compare spec: scripted user turns, variants (a persona, optionally with its frame, sampling or
model overridden), samples per variant and a base seed; validated with file, line and key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from simlab.compare.steer import expand, record
from simlab.engine.params import BY_KEY, SamplingParams
from simlab.errors import PersonaError, SamplingError, SimlabError, SpecError
from simlab.persona.library import find
from simlab.persona.schema import Persona, read_file
from simlab.steer.use import uses_of


@dataclass(frozen=True)
class Variant:
    name: str
    persona: Persona
    params: SamplingParams  # seed unset: the sweep seeds each sample
    model: str | None = None
    steer: tuple = ()  # steer.use.Use: vectors its replies are steered with (compare.steer)
    positions: str = "all"

    def fingerprint(self, spec: Spec, model_revision: str) -> str:
        """What the samples depend on (the model by its revision, however it was named); a changed
        variant gets a fresh subtree and the old one stays."""
        data = {
            "frame": self.persona.render_frame(),
            "greetings": self.persona.greetings(),
            "framing": self.persona.framing().to_dict(),
            "params": self.params.__dict__,
            "model": model_revision,
            "turns": spec.turns,
            "seed": spec.seed,
            **({"steer": record(self)} if self.steer else {}),
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Spec:
    name: str
    turns: tuple[str, ...]
    variants: tuple[Variant, ...]
    samples: int = 8
    seed: int = 0
    model: str | None = None
    base_url: str | None = None  # sample from this OpenAI-compatible server (simlab.engine.remote)
    until: Until | None = None  # samples: auto: sample on until this holds
    doses: tuple = ()  # compare.steer.Dose: each steered variant's strengths, for the dose-response


@dataclass(frozen=True)
class Until:
    """`samples: auto`: sample until every variant's 95% interval of `metric` is at most `width` wide,
    starting at `start` samples and stopping at `most` whatever the width."""

    metric: str = "length"
    width: float = 0.0
    most: int = 200
    start: int = 8


AUTO_LABELS = {  # the tables' labels -> the metrics' keys (the keys are accepted too)
    "length": "length",
    "logprob": "logprob",
    "cut": "cut_rate",
    "eos": "eos_rate",
    "stop": "stop_rate",
    "distinct-1": "distinct_1",
    "distinct-2": "distinct_2",
    "self-bleu": "self_bleu",
}
AUTO_METRICS = tuple(AUTO_LABELS.values())
SPEC_KEYS = {
    "name", "turns", "variants", "samples", "seed", "sampling", "model", "base_url", "until", "same_sampling",
    "steer",
}  # fmt: skip
VARIANT_KEYS = {"name", "persona", "frame", "sampling", "model"}


def _sampling(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: sampling must be a mapping of {', '.join([*BY_KEY, 'stop'])}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "stop":
            if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
                raise SpecError(f"{where}: sampling.stop must be a list of non-empty texts")
            out["stop"] = tuple(value)
        elif key in BY_KEY:
            out[BY_KEY[key].field] = value
        else:
            raise SpecError(f"{where}: sampling.{key}: unknown; use {', '.join([*BY_KEY, 'stop'])}")
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
    until = _until(data, where) if samples == "auto" else None
    if until is not None:
        samples = until.start
    elif "until" in data:
        raise SpecError(f"{where('until')}: until: goes with `samples: auto`")
    for key, value, low in (("samples", samples, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SpecError(f"{where(key)}: {key}: must be a whole number >= {low}")
    if samples > 10_000:
        raise SpecError(f"{where('samples')}: samples: at most 10000 per variant")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise SpecError(f"{where('model')}: model: must be a model spec (text)")
    base_url = data.get("base_url")
    if base_url is not None and not (
        isinstance(base_url, str) and base_url.startswith(("http://", "https://"))
    ):
        raise SpecError(
            f"{where('base_url')}: base_url: must be a server's http(s) URL, e.g. http://host:8000/v1"
        )
    common = _sampling(data.get("sampling"), f"{where('sampling')}")
    same = data.get("same_sampling", False)
    if not isinstance(same, bool):
        raise SpecError(f"{where('same_sampling')}: same_sampling: true or false")
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
            raise SpecError(
                f"{here}: unknown key {sorted(unknown)[0]!r}; use {', '.join(sorted(VARIANT_KEYS))}"
            )
        persona = find(raw["persona"])
        if "frame" in raw:
            if not isinstance(raw["frame"], str):
                raise SpecError(f"{here}: frame: must be text")
            persona = replace(persona, frame=raw["frame"])
        name = raw.get("name", persona.name)
        if not isinstance(name, str) or not name.strip() or any(v.name == name for v in variants):
            raise SpecError(
                f"{here}: name {name!r} is missing or used twice; give each variant its own name:"
            )
        if raw.get("model") is not None and not isinstance(raw["model"], str):
            raise SpecError(f"{here}: model: must be a model spec (text)")
        if same and raw.get("sampling"):
            raise SpecError(f"{here}: same_sampling gives every variant one sampling; drop this `sampling:`")
        try:
            params = persona.sampling_params(**{**common, **_sampling(raw.get("sampling"), here)})
            if same and variants:  # the first variant's (its persona's defaults and the common ones)
                params = replace(variants[0].params, stop=params.stop)  # stops belong to the framing
        except (SamplingError, TypeError) as exc:
            raise SpecError(f"{here}: {exc}") from None
        variants.append(Variant(name, persona, params, raw.get("model"), _persona_steer(persona, here)))
    variants, doses = expand(variants, data.get("steer"), where("steer"), find)
    name = data.get("name", default_name)
    if not isinstance(name, str):
        raise SpecError(f"{where('name')}: name: must be text")
    return Spec(name, tuple(turns), tuple(variants), samples, seed, model, base_url, until, doses)


def _persona_steer(persona, where: str) -> tuple:
    """The persona's own `steer:` (its vectors read now), which its variant's replies add."""
    try:
        return tuple(uses_of(list(persona.steer))) if persona.steer else ()
    except SimlabError as exc:
        raise SpecError(f"{where}: {persona.name}'s steer: {exc}") from None


def sampling_differs(spec: Spec) -> str | None:
    """A note when the variants sample differently (apart from their stops, which belong to each
    framing): the comparison then mixes framing with sampling."""
    first = spec.variants[0]
    differ = []
    for v in spec.variants[1:]:
        a, b = first.params.__dict__, v.params.__dict__
        keys = [k for k in a if k not in ("stop", "seed") and a[k] != b[k]]
        if keys:
            differ.append(
                f"{v.name} " + ", ".join(f"{k} {b[k]}" for k in keys)
                + f" (against {first.name}'s " + ", ".join(f"{a[k]}" for k in keys) + ")"
            )  # fmt: skip
    if not differ:
        return None
    return (
        "the variants sample differently, so a difference mixes framing with sampling: "
        + "; ".join(differ)
        + ". --same-sampling (or `same_sampling: true`) gives every variant the first one's sampling"
    )


def _until(data: dict, where) -> Until:
    raw = data.get("until")
    if isinstance(raw, dict) and _number(raw.get("width")) and raw["width"] <= 0:
        raise SpecError(
            f"{where('until')}: until: width must be more than 0 (the widest interval to stop at)"
        )
    if not isinstance(raw, dict) or not _number(raw.get("width")):
        raise SpecError(
            f"{where('until')}: samples: auto needs `until: {{width: W}}` (the widest 95% interval "
            "of the metric to stop at), and may say `metric:` (default length) and `most:` (default 200)"
        )
    unknown = set(raw) - {"width", "metric", "most", "start"}
    if unknown:
        raise SpecError(
            f"{where('until')}: until: unknown key {sorted(unknown)[0]!r}; use width, metric, most, start"
        )
    metric = raw.get("metric", "length")
    metric = AUTO_LABELS.get(metric.lower(), metric) if isinstance(metric, str) else metric
    if metric not in AUTO_METRICS:
        raise SpecError(
            f"{where('until')}: until: metric {raw.get('metric')!r} is not one of {', '.join(AUTO_LABELS)}"
        )
    most, start = raw.get("most", 200), raw.get("start", 8)
    for key, value in (("most", most), ("start", start)):
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 10_000:
            raise SpecError(f"{where('until')}: until: {key} must be a whole number from 2 to 10000")
    return Until(metric, float(raw["width"]), most, min(start, most))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_spec(path: Path | str) -> tuple[Any, dict]:
    """A spec file's parsed data and the line of each key (for messages)."""
    try:
        return read_file(Path(path), "a compare spec")
    except PersonaError as exc:
        raise SpecError(str(exc)) from None
