"""`simlab compare`'s interop: Inspect logs out (--inspect-log) and in (--from-inspect), and the
judge (--judge MODEL|URL --rubric FILE)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

from simlab.cli.common import load_engine, say, settings_of
from simlab.errors import SimlabError
from simlab.models.load import EMBEDDED
from simlab.repl.progress import Waiting


def add_interop_flags(cmp) -> None:
    """Inspect logs out and in, and the judge."""
    cmp.add_argument(
        "--inspect-log",
        metavar="FILE.json|DIR/",
        help="also write the run as an Inspect eval log (read_eval_log reads it; in DIR/, named as Inspect "
        "names its logs, so that inspect view --log-dir DIR lists it)",
    )
    cmp.add_argument(
        "--judge",
        metavar="MODEL|URL",
        help="score every sample on the --rubric's questions by this model's teacher-forced probability "
        "of the answers (a local model, or a server with prompt log-probabilities)",
    )
    cmp.add_argument("--rubric", metavar="FILE", help="with --judge: the questions, a metric each (YAML)")
    cmp.add_argument(
        "--from-inspect",
        nargs="+",
        metavar="LOG",
        help="compare Inspect logs (.json or .eval) instead of sampling: each log (or each variant of a "
        "simlab log) a group, samples paired by id and epoch",
    )


def check_inspect_log(args: argparse.Namespace, spec) -> None:
    """--inspect-log before anything is sampled: a .json file (not one of the reports) whose folder
    can be made, or a folder (DIR/)."""
    given = args.inspect_log
    if given is None:
        return
    path = Path(given)
    folder = path if path.is_dir() or given.endswith(("/", os.sep)) else path.parent
    if folder is not path and path.suffix != ".json":
        raise SimlabError(
            f"--inspect-log {given}: give a FILE.json (Inspect reads .json logs) or a folder DIR/"
        )
    reports = {(Path(args.report_dir) / f"{spec.name}{ext}").resolve() for ext in (".md", ".html")}
    if path.resolve() in reports:
        raise SimlabError(f"--inspect-log {given}: that is the report's own file; give another name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SimlabError(
            f"--inspect-log {given}: cannot make its folder {folder} ({exc.strerror or exc})"
        ) from None


def rubrics_of(args: argparse.Namespace):
    if bool(args.judge) != bool(args.rubric):
        raise SimlabError("--judge MODEL and --rubric FILE go together")
    if not args.rubric:
        return []
    from simlab.compare.judge import read_rubric

    return read_rubric(Path(args.rubric))


def judge_engine(args: argparse.Namespace, flag: str = "--judge", reuse=None):
    """The judge (--judge MODEL|URL) and how it scores: a local model (`reuse`: the sweep's engine
    for a model spec, so a judge that is the sweep's model is loaded once), or a server whose probe
    found prompt log-probabilities."""
    from simlab.turns.servers import server_map

    local = not args.judge.startswith(("http://", "https://"))
    settings = replace(settings_of(args), backend="local", base_url="")
    if not local:  # (the server's only model: the embedded default's meaning for a server)
        settings = replace(settings, backend="openai", base_url=args.judge, model=EMBEDDED)
    if local and reuse is not None:
        return reuse(args.judge), ""
    engine = load_engine(args, settings, args.judge if local else None)
    if local:
        return engine, ""
    found = server_map(engine)
    if found is None or not found.scores:
        raise SimlabError(
            f"{flag} {args.judge}: the server gives no prompt log-probabilities to score answers with "
            "(echo with logprobs, or vLLM's prompt_logprobs; simlab doctor --backend openai --base-url "
            f"{args.judge} says what it has)"
        )
    return engine, found.prompt_logprobs


def judge_all(spec, runs, analysis, rubrics, session, judge) -> None:
    """Every paired sample judged on each rubric question (saved as notes, reused when run again)."""
    from simlab.compare.judge import add_to, judge_samples
    from simlab.compare.stats import paired_samples

    engine, how = judge
    keep = paired_samples(runs, spec)
    with Waiting("judging", len(runs) * len(keep), unit="samples"):
        values = judge_samples(spec, runs, keep, engine, rubrics, session, how)
    add_to(analysis, values, engine.info.spec, seed=spec.seed)


def write_inspect_log(given: str | None, spec, runs, analysis) -> None:
    """The run as an Inspect log: at PATH, or in a folder (PATH/ or an existing one) under the name
    Inspect gives its own (a timestamp first: `inspect view` lists .json logs only so named)."""
    if given is None:
        return
    import re

    from simlab.compare import inspect_log
    from simlab.compare.stats import paired_samples

    log, path = inspect_log.eval_log(analysis, runs, paired_samples(runs, spec)), Path(given)
    if path.is_dir() or given.endswith(("/", os.sep)):
        path.mkdir(parents=True, exist_ok=True)
        stamp = re.sub(r"[:.]", "-", log["eval"]["created"][:19]) + "+00-00"
        path = path / f"{stamp}_simlab-compare-{spec.name}_{log['eval']['eval_id'][-6:]}.json"
    inspect_log.write(log, path)
    listed = re.match(r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}", path.name)
    say(
        f"Inspect log: {path} (inspect_ai.log.read_eval_log reads it; "
        + (
            f"inspect view --log-dir {path.parent} shows it)"
            if listed
            else "inspect view lists only logs named as Inspect names them: give --inspect-log DIR/)"
        )
    )


def from_inspect(args: argparse.Namespace) -> int:
    """--from-inspect LOG...: simlab's paired statistics on Inspect logs' scores; nothing is sampled."""
    from simlab.compare import inspect_log

    if args.spec or args.personas or args.turn or args.samples or args.inspect_log:
        raise SimlabError(
            "simlab compare --from-inspect LOG... compares what the logs scored; it samples nothing"
        )
    groups = inspect_log.read([Path(p) for p in args.from_inspect])
    report = inspect_log.analyse(groups, seed=args.seed or 0)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        print("\n".join(inspect_log.lines(report)))
    return 0
