"""`simlab compare SPEC.yaml` or `simlab compare --personas a,b --turn "..."`: run a sweep, report it."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

from simlab.cli.common import (
    add_model_flags,
    add_sampling_flags,
    add_sessions_dir,
    add_trace_flags,
    load_engine,
    make_tracer,
    open_store,
    sampling_overrides,
    say,
    settings_of,
    trace_config,
)
from simlab.cli.compare_interop import (
    add_interop_flags,
    check_inspect_log,
    from_inspect,
    judge_all,
    judge_engine,
    rubrics_of,
    write_inspect_log,
)
from simlab.compare.spec import build_spec, read_spec, sampling_differs
from simlab.engine.params import BY_FIELD
from simlab.errors import EXIT_INTERRUPTED, SimlabError, SpecError, SteerError, SweepInterrupted
from simlab.repl.progress import Waiting
from simlab.session.store import check_name


def add_command(commands) -> None:
    cmp = commands.add_parser("compare", help="sample persona variants on the same turns and compare them")
    cmp.add_argument("spec", nargs="?", help="a compare spec (YAML); or use --personas and --turn")
    cmp.add_argument("--personas", help="comma-separated persona names or files, one variant each")
    cmp.add_argument("--turn", action="append", help="a scripted user turn (repeatable, in order)")
    cmp.add_argument(
        "--samples",
        help="samples per variant (default 8), or auto: sample on until every variant's 95%% interval "
        "of --metric is at most --width wide (or --max-samples)",
    )
    cmp.add_argument("--width", type=float, help="with --samples auto: the widest interval to stop at")
    cmp.add_argument(
        "--metric",
        help="with --samples auto: the metric whose interval decides: length (default), logprob, cut, eos, "
        "stop, distinct-1, distinct-2, self-BLEU",
    )
    cmp.add_argument(
        "--max-samples", type=int, help="with --samples auto: stop here whatever the width (default 200)"
    )
    cmp.add_argument("--seed", type=int, help="base seed (default 0)")
    cmp.add_argument("--name", help="the sweep's name: session compare-NAME and report files NAME.*")
    cmp.add_argument(
        "--report-dir", default="reports", help="where NAME.md and NAME.html go (default ./reports)"
    )
    cmp.add_argument("--json", action="store_true", help="print the analysis as JSON instead of the table")
    cmp.add_argument(
        "--blind", metavar="SESSION", help="report the blind comparisons made in a session (B in the Loom)"
    )
    cmp.add_argument(
        "--wide", action="store_true", help="tables on one line per row (default: fit 80 columns)"
    )
    add_interop_flags(cmp)
    add_sessions_dir(cmp)
    group = cmp.add_argument_group("sampling for every variant (over the personas' defaults)")
    group.add_argument(
        "--same-sampling",
        action="store_true",
        help="every variant samples as the first one does (its persona's defaults and these flags), "
        "so only the framing differs; stop strings stay each persona's own",
    )
    add_sampling_flags(group, defaults=False)
    add_model_flags(cmp)
    add_trace_flags(cmp)
    cmp.set_defaults(run=cmd_compare)


def _blind(args: argparse.Namespace) -> int:
    """--blind SESSION: the preference rates its blind comparisons give, per variant and per pair."""
    from simlab.compare.blind import analyse, lines
    from simlab.session.blind import Picks

    if args.spec or args.personas or args.turn or args.samples:
        raise SimlabError("simlab compare --blind SESSION reports what was picked; it samples nothing")
    with open_store(args).open(args.blind, read_only=True) as session:
        report = analyse(Picks.of(session.tree))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print("\n".join(lines(report)))
    return 0


def spec_from_args(args: argparse.Namespace):
    if args.spec:
        path = Path(args.spec)
        data, lines = read_spec(path)
        source, default_name = str(path), path.stem
        if not isinstance(data, dict):
            data = {"": data}  # build_spec names the problem
    else:
        if not args.personas or not args.turn:
            raise SimlabError("simlab compare: give a spec file, or --personas a,b and at least one --turn")
        data, lines = {"variants": [p.strip() for p in args.personas.split(",") if p.strip()]}, {}
        data["turns"] = args.turn
        source, default_name = "command line", "-".join(Path(v).stem for v in data["variants"])[:60]
    if args.spec and args.turn:
        data["turns"] = args.turn
    if args.model:
        data["model"] = args.model  # the flag wins over the spec's default model
    for key in ("seed", "name"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.samples is not None:
        if args.samples != "auto" and not (args.samples.isdigit() and int(args.samples) >= 1):
            raise SimlabError(f"--samples {args.samples!r}: give a whole number >= 1, or auto (with --width)")
        data["samples"] = "auto" if args.samples == "auto" else int(args.samples)
    until = {
        k: v
        for k, v in (("width", args.width), ("metric", args.metric), ("most", args.max_samples))
        if v is not None
    }
    if until and data.get("samples") != "auto":
        raise SimlabError("--width, --metric and --max-samples go with --samples auto")
    if until:
        data["until"] = {**(data.get("until") or {}), **until}
    sampling = {
        BY_FIELD[k].key: v for k, v in sampling_overrides(args).items()
    }  # max_new_tokens -> max_tokens
    if sampling:
        data["sampling"] = {**(data.get("sampling") or {}), **sampling}
    if args.same_sampling:
        data["same_sampling"] = True
    return build_spec(data, source, lines, default_name=default_name)


def cmd_compare(args: argparse.Namespace) -> int:
    if args.blind is not None:
        return _blind(args)
    if args.from_inspect:
        return from_inspect(args)
    from simlab.compare.stats import analyse  # numpy: only when a sweep runs

    spec = spec_from_args(args)  # every mistake in the spec shows before a model loads
    rubrics = rubrics_of(args)
    check_inspect_log(args, spec)
    settings = settings_of(args)
    if spec.base_url and args.backend is None and args.base_url is None:
        settings = replace(settings, backend="openai", base_url=spec.base_url)
    tracer = make_tracer(trace_config(args), settings)
    store = open_store(args, settings)
    name = check_name(f"compare-{spec.name}")
    engines: dict = {}

    def engine_for(model: str | None):
        key = model or settings.model
        if key not in engines:
            engines[key] = load_engine(args, settings, key)
        return engines[key]

    judge = judge_engine(args, reuse=engine_for if settings.backend == "local" else None) if rubrics else None
    _check_steering(spec, engine_for)  # (a vector that does not fit: said before a session is made)
    session = store.open(name) if store.exists(name) else store.create(name, compare=spec.name)

    with session:
        notes: list[str] = [differs] if (differs := sampling_differs(spec)) else []
        if differs:
            width = shutil.get_terminal_size().columns  # (words and flags kept whole on a terminal)
            say(textwrap.fill(f"simlab compare: note: {differs}", width, break_on_hyphens=False))
        while True:
            runs = _sweep(spec, session, engine_for, tracer)
            if runs is None:
                return EXIT_INTERRUPTED
            if spec.until is None:
                break
            more = _more_samples(spec, runs, engine_for, notes)
            if more is None:
                break
            spec = replace(spec, samples=more)
        say("scoring: cross log-probabilities and next-token divergences ...")
        try:
            analysis = analyse(spec, runs, engine_for, seed=spec.seed)
        except KeyboardInterrupt:
            say(
                "simlab compare: interrupted while scoring; every sample is saved, and the same "
                "command again scores them and writes the report (it samples nothing)"
            )
            return EXIT_INTERRUPTED
        analysis.notes[:0] = notes
        if rubrics:
            judge_all(spec, runs, analysis, rubrics, session, judge)
    _write_reports(args, spec, analysis, name)
    write_inspect_log(args.inspect_log, spec, runs, analysis)
    return 0


def _check_steering(spec, engine_for) -> None:
    """Each steered variant's vectors against its model, before anything is sampled or saved."""
    from simlab.compare.steer import steering_for

    for variant in spec.variants:
        if variant.steer:
            try:
                steering_for(variant, engine_for(variant.model or spec.model))
            except SteerError as exc:
                raise SpecError(f"{variant.name}: steer: {str(exc).replace('--steer ', '', 1)}") from None


def _sweep(spec, session, engine_for, tracer):
    """The sweep's samples (those saved, and the rest sampled now); None when it was stopped."""
    from simlab.compare.sweep import Progress, run_sweep

    total = len(spec.variants) * spec.samples * len(spec.turns)
    wait = Waiting("sampling", total, unit="samples")
    progress = Progress(total=total, report=lambda p, what: wait.advance(p.done - wait.done, what))
    try:
        with wait:
            return run_sweep(spec, session, engine_for, progress, tracer=tracer)
    except SweepInterrupted as exc:
        say(f"simlab compare: {exc} ({progress.done}/{total} samples done)")
    except KeyboardInterrupt:
        say(
            f"simlab compare: interrupted; {progress.done}/{total} samples are saved, "
            "run the same command again to resume"
        )
    return None


def _more_samples(spec, runs, engine_for, notes: list[str]) -> int | None:
    """`samples: auto`: how many samples the next round needs (from how the widest interval shrinks,
    as 1/sqrt(n)), or None when every interval is narrow enough or the most is reached."""

    from simlab.compare.stats import METRICS, primary

    until, n = spec.until, spec.samples
    estimates = primary(spec, runs, engine_for, until.metric, spec.seed).values()
    # no interval: where every sample is equal more samples will not make one (width 0 here); where
    # most are, they may (more samples)
    widths = [e.high - e.low if math.isfinite(e.high - e.low) else _no_width(e) for e in estimates]
    widest = max(widths, default=math.inf)
    label = METRICS[until.metric][0]
    say(f"samples: auto: n = {n}, widest {label} interval {widest:.3g} (stop at {until.width:g})")
    if widest <= until.width or n >= until.most:
        reached = "every interval is narrow enough" if widest <= until.width else f"the most, {until.most}"
        notes.append(
            f"samples: auto stopped at {n} samples per variant ({reached}): the widest 95% interval "
            f"of {label} is {widest:.3g}, asked {until.width:g}"
        )
        return None
    wanted = n * (widest / until.width) ** 2 * 1.1 if math.isfinite(widest) else 2 * n
    return int(min(until.most, max(n + 4, min(4 * n, math.ceil(wanted)))))


def _no_width(e) -> float:
    return 0.0 if e.extra.get("why") == "all equal" else math.inf


def _write_reports(args: argparse.Namespace, spec, analysis, session_name: str) -> None:
    from simlab.compare.report import as_json, markdown, terminal
    from simlab.compare.report_html import html_report

    folder = Path(args.report_dir)
    replaced = (folder / f"{spec.name}.md").exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{spec.name}.md").write_text(markdown(analysis), encoding="utf-8")
        (folder / f"{spec.name}.html").write_text(html_report(analysis), encoding="utf-8")
    except OSError as exc:
        raise SimlabError(
            f"cannot write the report in {folder}: {exc.strerror}; the samples are saved in "
            f"session {session_name}"
        ) from None
    if args.json:
        json.dump(as_json(analysis), sys.stdout, indent=1, ensure_ascii=False, allow_nan=False)
        print()
    else:
        sys.stdout.write(terminal(analysis, width=None if args.wide else 80))
    say(
        f"report: {folder / (spec.name + '.md')}, {folder / (spec.name + '.html')}"
        + (" (replacing an earlier report of that name; --name keeps runs apart)" if replaced else "")
        + f"; samples in session {session_name}"
    )
