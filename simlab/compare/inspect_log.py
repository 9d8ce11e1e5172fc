"""Inspect interop: a compare run as an Inspect eval log, and Inspect logs read back as groups of
samples for simlab's paired statistics. Written and read as plain JSON in the shape of inspect_ai's
log schema (EvalLog, version 2; `.eval` files are zip archives of the same records), so inspect-ai
is needed only to view the log (`inspect view`), never to run simlab; the tests read every log
written here with inspect_ai.log.read_eval_log.

In a written log, a sample is one variant's run of the script with one seed: id the variant, epoch
the sample's number (the same epoch in every variant had the same seeds), the turns as messages, the
last reply as output, each per-sample metric as a score, and the nodes, seeds, persona and model
in its metadata. The results hold each metric's estimate with its 95% interval per variant, and
each paired difference from the baseline."""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from simlab.errors import SimlabError

FINISH = {"stop": "stop", "eos": "stop", "length": "max_tokens", "interrupted": "unknown"}
GRADES = {"C": 1.0, "I": 0.0, "P": 0.5, "N": 0.0, "yes": 1.0, "no": 0.0, True: 1.0, False: 0.0}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (str, bool)):
        return GRADES.get(value.strip() if isinstance(value, str) else value)
    return None


def eval_log(analysis, runs, keep: list[int]) -> dict[str, Any]:
    """The analysis (compare.stats.Analysis) and its runs as an Inspect EvalLog (a JSON object),
    the judge's scores (compare.judge) among each sample's scores as judge:METRIC."""
    from simlab.compare.sweep import sample_key

    spec, created = analysis.spec, _now()
    samples = []
    for run, stats in zip(runs, analysis.variants):
        by_key = {sample_key(s, spec, i): s for i, s in enumerate(run.samples)}
        for k, key in enumerate(keep):
            nodes = by_key[key]
            values = {m: v[k] for m, v in stats.values.items() if k < len(v)}
            judged = analysis.judged_values.get(stats.name) or {}
            values.update({f"judge:{m}": v[k] for m, v in judged.items() if k < len(v)})
            samples.append(_sample(spec, stats, nodes, k, values))
    return {
        "version": 2,
        "status": "success",
        "eval": {
            "eval_id": f"simlab-{spec.name}-{abs(hash((created, spec.name))) % 10**6:06d}",
            "run_id": f"simlab-{spec.name}",
            "created": created,
            "task": f"simlab/compare-{spec.name}",
            "task_id": spec.name,
            "task_version": 0,
            "dataset": {
                "name": spec.name,
                "samples": len(spec.variants),
                "sample_ids": [v.name for v in spec.variants],
            },
            "model": f"simlab/{analysis.variants[0].model if analysis.variants else spec.model}",
            "config": {"epochs": len(keep)},
            "metadata": {"simlab": {"turns": list(spec.turns), "seed": spec.seed, "notes": analysis.notes}},
        },
        "plan": {"name": "simlab compare", "steps": [{"solver": "simlab/sweep", "params": {}}]},
        "results": {
            "total_samples": len(samples),
            "completed_samples": len(samples),
            "scores": _results(analysis),
        },
        "stats": {"started_at": created, "completed_at": _now(), "model_usage": {}},
        "samples": samples,
    }


def _sample(spec, stats, nodes, k: int, values: dict[str, float]) -> dict[str, Any]:
    messages, last = [], nodes[-1] if nodes else None
    for turn, node in zip(spec.turns, nodes):
        messages.append({"role": "user", "content": turn, "source": "input"})
        messages.append(
            {"role": "assistant", "content": node.text, "source": "generate", "model": stats.model}
        )
    return {
        "id": stats.name,
        "epoch": k + 1,
        "input": spec.turns[0] if len(spec.turns) == 1 else [m for m in messages if m["role"] == "user"],
        "target": "",
        "messages": messages,
        "output": {
            "model": stats.model,
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": last.text if last else "",
                        "source": "generate",
                    },
                    "stop_reason": FINISH.get(last.finish_reason or "", "unknown") if last else "unknown",
                }
            ],
        },
        "scores": {m: {"value": v} for m, v in values.items() if math.isfinite(v)},  # (NaN: not scored)
        "metadata": {
            "variant": stats.name,
            "persona": stats.persona,
            "model": stats.model,
            "seed": nodes[0].seed if nodes else None,
            "seeds": [n.seed for n in nodes],
            "nodes": [n.id for n in nodes],
            "params": stats.params,
        },
    }


def _results(analysis) -> list[dict[str, Any]]:
    """Each estimate per variant, and each paired difference from the baseline, the judge's
    (judge:METRIC) beside the others, with the mean and the interval's ends where they exist."""

    def score(name: str, scorer: str, e, **metadata) -> dict[str, Any]:
        named = {
            "mean": (e.mean, {}),
            "ci_low": (e.low, {"level": 0.95}),
            "ci_high": (e.high, {"level": 0.95}),
        }
        metrics = {k: {"name": k, "value": v, "params": p} for k, (v, p) in named.items() if math.isfinite(v)}
        return {
            "name": name,
            "scorer": scorer,
            "scored_samples": e.n,
            "metrics": metrics,
            "metadata": metadata,
        }

    def merged(table: dict, judged: dict) -> dict[str, dict]:
        out = {name: dict(d) for name, d in table.items()}
        for name, d in judged.items():
            out.setdefault(name, {}).update({f"judge:{m}": e for m, e in d.items()})
        return out

    def judge(metric: str) -> dict:
        return {"judge": analysis.judge} if metric.startswith("judge:") else {}

    base = analysis.variants[0].name if analysis.variants else ""
    estimates = merged({v.name: v.estimates for v in analysis.variants}, analysis.judged)
    differences = merged(analysis.differences, analysis.judged_diff)
    out = [
        score(f"{m}/{v}", m, e, variant=v, method=e.method, **judge(m))
        for v, d in estimates.items()
        for m, e in d.items()
    ]
    out += [
        score(
            f"{m}/{n}-{base}",
            m,
            e,
            difference=[n, base],
            method=e.method,
            p=e.extra.get("p_holm", e.extra.get("p")),
        )
        for n, d in differences.items()
        for m, e in d.items()
    ]
    return out


def write(log: dict[str, Any], path: Path) -> None:
    try:
        path.write_text(json.dumps(log, indent=1, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    except OSError as exc:
        raise SimlabError(f"--inspect-log {path}: cannot write it ({exc.strerror or exc})") from None


# -- reading Inspect logs back -------------------------------------------------------------


@dataclass
class Group:
    """Samples of one variant (a written log's variant, or one log of someone else's)."""

    name: str
    model: str
    scores: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)  # (id, epoch) -> scores
    skipped: dict[str, int] = field(default_factory=dict)  # metric -> values that were not numbers


def read(paths: list[Path]) -> list[Group]:
    """Inspect logs (.json, or .eval archives) as groups of scored samples, in order."""
    groups: dict[str, Group] = {}
    loaded = [(path, *_load(path)) for path in paths]
    models = [str((log.get("eval") or {}).get("model", "")) for _, log, _ in loaded]
    for (path, log, samples), model in zip(loaded, models):
        task = (log.get("eval") or {}).get("task", path.stem)
        label = (
            model if models.count(model) == 1 else f"{model} ({path.name})"
        )  # (one model twice: its files)
        for s in samples:
            meta = s.get("metadata") if isinstance(s.get("metadata"), dict) else {}
            name = str(meta.get("variant") or label)
            item = "script" if meta.get("variant") else str(s.get("id"))
            group = groups.setdefault(name, Group(name, str(meta.get("model") or model)))
            values = {}
            for metric, score in (s.get("scores") or {}).items():
                value = score.get("value") if isinstance(score, dict) else None
                if isinstance(value, dict):  # several values under one scorer
                    values.update({f"{metric}.{k}": _number(v) for k, v in value.items()})
                else:
                    values[metric] = _number(value)
            for metric in (m for m, v in values.items() if v is None):
                group.skipped[metric] = group.skipped.get(metric, 0) + 1
            epoch = s.get("epoch", 1)
            if not isinstance(epoch, int) or isinstance(epoch, bool):
                raise SimlabError(
                    f"--from-inspect {path}: sample {s.get('id')!r}: epoch {epoch!r} is not a whole number"
                )
            group.scores[(item, epoch)] = {m: v for m, v in values.items() if v is not None}
        if not samples:
            raise SimlabError(f"{path}: an Inspect log without samples (task {task}); nothing to compare")
    return list(groups.values())


def _zstd() -> None:
    """Inspect writes `.eval` archives with zstd members; zipfile reads them from Python 3.14 on, and
    with zipfile-zstd (which adds the method to zipfile when imported) before that."""
    try:
        import zipfile_zstd  # noqa: F401
    except ImportError:
        pass


def _load(path: Path) -> tuple[dict, list[dict]]:
    try:
        if zipfile.is_zipfile(path):
            _zstd()
            with zipfile.ZipFile(path) as archive:
                header = json.loads(archive.read("header.json"))
                names = sorted(
                    n for n in archive.namelist() if n.startswith("samples/") and n.endswith(".json")
                )
                return header, [json.loads(archive.read(n)) for n in names]
        log = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SimlabError(f"--from-inspect {path}: no such file") from None
    except NotImplementedError:  # (a compression this Python's zipfile cannot read)
        raise SimlabError(
            f"--from-inspect {path}: its archive is compressed with zstd, which needs the zipfile-zstd "
            "package here (pip install zipfile-zstd), or convert it: inspect log convert --to json"
        ) from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise SimlabError(f"--from-inspect {path}: not an Inspect log ({exc})") from None
    if not isinstance(log, dict) or "eval" not in log:
        raise SimlabError(f"--from-inspect {path}: not an Inspect eval log (no 'eval' record)")
    samples = log.get("samples") or []
    return log, [s for s in samples if isinstance(s, dict)]


def analyse(groups: list[Group], seed: int = 0) -> dict[str, Any]:
    """Each score's mean with its 95% interval per group, and each group's paired difference from
    the first (samples paired by id and epoch: the same item and seed), p-values Holm-corrected."""
    from simlab.compare.inference import holm, paired, rate, studentized_mean

    metrics = sorted({m for g in groups for s in g.scores.values() for m in s})
    rows: list[dict[str, Any]] = []
    base = groups[0] if groups else None
    for metric in metrics:
        for g in groups:
            values = [s[metric] for s in g.scores.values() if metric in s]
            binary = bool(values) and all(v in (0.0, 1.0) for v in values)
            floor = 0.0 if values and min(values) >= 0 else -math.inf  # (a count or a length: not below 0)
            e = (
                rate(int(sum(values)), len(values))
                if binary
                else studentized_mean(values, seed=seed, floor=floor)
            )
            row = {"metric": metric, "group": g.name, "estimate": e.as_dict()}
            if g is not base and base is not None:
                keys = sorted(set(g.scores) & set(base.scores))
                a = [base.scores[k].get(metric, math.nan) for k in keys]
                b = [g.scores[k].get(metric, math.nan) for k in keys]
                d = paired(a, b, seed=seed)
                row["difference"] = {**d.as_dict(), "p": d.extra.get("p", math.nan)}
            rows.append(row)
    tested = [r for r in rows if "difference" in r]
    for r, p in zip(tested, holm([r["difference"]["p"] for r in tested])):
        r["difference"]["p_holm"] = p
    return {
        "groups": [{"name": g.name, "model": g.model, "samples": len(g.scores)} for g in groups],
        "rows": rows,
        "notes": [
            f"{g.name}: {k} value(s) of {metric} were not numbers (nor C/I/P/N grades) and were left out"
            for g in groups
            for metric, k in g.skipped.items()
        ],
    }


def lines(report: dict[str, Any]) -> list[str]:
    """The report as a terminal table."""

    def interval(e: dict) -> str:
        low, high = e.get("low"), e.get("high")
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            return "(no interval)"
        return f"[{low:.3g}, {high:.3g}]"

    base = report["groups"][0]["name"] if report["groups"] else ""
    out = [
        f"{len(report['groups'])} group(s): "
        + ", ".join(f"{g['name']} ({g['samples']} samples)" for g in report["groups"])
    ]
    out.append(f"{'metric':<18} {'group':<24} {'n':>4} {'mean':>8}  {'95% interval':<20} vs {base} (paired)")
    for r in report["rows"]:
        e = r["estimate"]
        line = (
            f"{r['metric'][:18]:<18} {r['group'][:24]:<24} {e['n']:>4} {e['mean']:>8.3g}  {interval(e):<20}"
        )
        if "difference" in r and not r["difference"]["n"]:
            line += " (no sample in both)"
        elif "difference" in r:
            d = r["difference"]
            p = d.get("p_holm")
            line += f" {d['mean']:+.3g} {interval(d)} {d['n']} pair{'s' * (d['n'] != 1)}" + (
                f", p {p:.3g} (Holm)" if p is not None and math.isfinite(p) else ""
            )
        out.append(line)
    return out + [f"note: {n}" for n in report["notes"]]
