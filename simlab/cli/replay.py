"""`simlab replay`: re-run a saved path, to check it reproduces or, with any override, as a new branch."""

from __future__ import annotations

import argparse

from simlab.cli.common import (
    add_model_flags,
    add_sampling_flags,
    add_sessions_dir,
    add_steer_flags,
    add_trace_flags,
    load_engine,
    make_tracer,
    open_store,
    sampling_overrides,
    say,
    settings_of,
    trace_config,
    warn,
)
from simlab.cli.replay_on import replay_on
from simlab.engine.open import recorded_server
from simlab.errors import SimlabError
from simlab.persona.library import find
from simlab.repl.progress import Waiting
from simlab.replay import RECORDED, check_path, chosen_replies, model_replies, params_of, replay_branch
from simlab.steer.use import no_server, steering_of, sweep_of, uses_of, uses_recorded


def add_command(commands) -> None:
    replay = add_sessions_dir(
        commands.add_parser("replay", help="re-run a saved path: check it reproduces, or re-sample it")
    )
    replay.add_argument("id", metavar="NAME")
    replay.add_argument("--node", help="replay the path to this node (default: the cursor)")
    group = replay.add_argument_group("overrides (any of them makes a new branch)")
    group.add_argument(
        "--persona", help="replay the path's user turns under this persona (name or YAML file)"
    )
    add_sampling_flags(group, defaults=False)
    group.add_argument("--seed", type=int)
    add_steer_flags(replay)  # (--steer off: every reply unsteered; else this steering for every reply)
    replay.add_argument(
        "--on",
        metavar="URL|local",
        help="draw the replies again on another engine (a server's URL, or 'local': -m or the replies' "
        "model) and score their stored tokens there: agreement and log-probability drift per reply",
    )
    add_model_flags(replay)
    add_trace_flags(replay)
    replay.set_defaults(run=cmd_replay)


def _nothing_to_replay(session, path) -> SimlabError:
    """Why a path has no reply to replay, in one line (replies reshaped by hand say so)."""
    made = [n for n in path if n.role == "model" and n.origin in ("edited", "sampled")]
    why = (
        f": its {len(made)} repl{'y was' if len(made) == 1 else 'ies were'} edited, split or continued, "
        "so no one seed draws the text (the reply each came from replays: --node ID)"
        if made
        else ""
    )
    return SimlabError(f"the path to {session.tree.short(path[-1].id)} has no sampled replies to replay{why}")


def cmd_replay(args: argparse.Namespace) -> int:
    overrides = sampling_overrides(args) | ({"seed": args.seed} if args.seed is not None else {})
    if args.on is not None and not args.on.strip():
        raise SimlabError("--on: give a server's URL (http://host:8000/v1) or 'local'")
    tracer = make_tracer(trace_config(args))
    persona = find(args.persona) if args.persona is not None else None  # fails before the model loads
    steer = _steer_override(args)
    changing = bool(overrides) or persona is not None or steer is not None
    changing = changing or (args.model is not None and not args.on)  # (--on -m: the engine to replay on)
    session = open_store(args).open(args.id, read_only=not changing)
    warn(session.problems)
    with session:
        tree = session.tree
        target = tree.resolve(args.node).id if args.node else tree.cursor
        if target is None:
            raise SimlabError(f"session {args.id!r} is empty; nothing to replay")
        path = tree.path(target)
        if path[-1].judged:
            return _rejudge(args, session, path[-1])
        replies = model_replies(path)
        if not replies and not (chosen_replies(path) and (not changing or persona is not None)):
            raise _nothing_to_replay(session, path)
        for node in replies:
            params_of(node, overrides)  # a bad override fails before the model loads
            if steer is None:
                uses_recorded(node.steer)  # and a recorded vector that is missing or changed
        if args.on:
            if changing:
                raise SimlabError("replay --on draws the replies as they were: leave out the overrides")
            return replay_on(args, session, replies)
        kept = len(chosen_replies(path))
        say(
            (
                "simlab: asking the server again for"
                if _served(args, replies)
                else "simlab: loading the model to re-run"
            )
            + f" the path's {_replies(len(replies))}"
            + (f" and read its {kept} kept block(s) again" if kept else "")
        )
        engine = _engine_for(args, replies or chosen_replies(path), session)
        if not changing:
            return _check(engine, session, path, replies, tracer)
        steering = RECORDED if steer is None else steering_of(steer, engine, args.steer_positions)
        added = replay_branch(
            engine, session, path, overrides, persona=persona, tracer=tracer, steering=steering
        )
        end, start = tree.short(added[-1].id), tree.short(target)
        print(
            f"new branch of {len(added)} node(s) ending at {end}; compare with: "
            f"simlab sessions show {session.name} --compare {start} {end}"
        )
        for node in added:
            print(f"  {node.speaker or node.role}: {' '.join(node.text.split())[:100]}")
        return 0


def _rejudge(args: argparse.Namespace, session, note) -> int:
    """A judge's note (compare --judge) scored again by its model from its saved prompt."""
    from simlab.compare.judge import rescored

    if args.on is not None:  # another judge engine: a server's URL (with prompt log-probabilities), or local
        from simlab.cli.compare_interop import judge_engine

        args.judge = args.on if args.on != "local" else (args.model or note.model)
        engine, how = judge_engine(args, flag="--on")
    else:
        args.dtype = args.dtype or note.dtype  # the judge as it read: its dtype and weights
        args.weights = args.weights or note.weights or ("float" if note.dtype else None)
        server = recorded_server(settings_of(args), [note], args.backend)
        args.backend, args.base_url = server.backend, server.base_url or args.base_url
        engine = load_engine(args, spec=args.model or (note.model if server.backend == "local" else None))
        how = (note.backend or {}).get("scoring", "")
    same, again = rescored(engine, note, how)
    gaps = [abs(again["logprobs"][k] - v) for k, v in note.judged["logprobs"].items()]
    print(
        f"{session.tree.short(note.id)} judged {note.judged['metric']} again"
        + (f" on {args.on}" if args.on else "")
        + f": score {again['score']:.4f} "
        f"(stored {note.judged['score']:.4f}); "
        + (
            "every label's log-probability the same"
            if same
            else f"labels' log-probabilities differ by up to {max(gaps):.2g}"
        )
    )
    return 0 if same or args.on else 1  # (another engine is expected to differ: the figures say how)


def _steer_override(args: argparse.Namespace):
    """--steer as replay reads it: None (each reply as recorded), [] (--steer off: unsteered), or the
    uses every reply is steered with; the vectors' files read before the model loads."""
    if not args.steer:
        return None
    if args.steer == ["off"]:
        return []
    if args.backend == "openai":
        raise no_server()
    uses = uses_of(args.steer)
    if sweep_of(uses) > 1:
        raise SimlabError(
            "replay --steer: one strength (a replay has one reply a turn: no siblings to sweep)"
        )
    return uses


def _engine_for(args: argparse.Namespace, replies, session):
    """The engine the replies came from, unless the flags say otherwise: their model, dtype and server."""
    specs = sorted({n.model for n in replies if n.model})
    spec = args.model or (specs[0] if specs else None)
    if not args.model and len(specs) > 1:
        say(f"simlab: note: replies on this path came from {', '.join(specs)}; replaying with {spec}")
    dtypes = sorted({n.dtype for n in replies if n.dtype})
    if args.dtype is None and dtypes:
        args.dtype = dtypes[0]  # the dtype the replies were sampled in, or they cannot reproduce
    if args.weights is None:  # and their weights: int8 and int4 draw differently from float
        kinds = sorted(
            {n.weights or "float" for n in replies if n.params is not None or n.origin == "chosen"}
        )
        args.weights = kinds[0]
        if len(kinds) > 1:
            say(
                f"simlab: note: replies on this path came from weights {', '.join(kinds)}; replaying "
                f"with {kinds[0]} (--weights for another: the others' replies will differ)"
            )
    server = recorded_server(settings_of(args), replies, args.backend)
    args.backend, args.base_url = server.backend, server.base_url or args.base_url
    engine = load_engine(args, spec=spec)
    served = sorted({n.backend["base_url"] for n in replies if n.backend and "base_url" in n.backend})
    if served or not engine.capabilities.local:
        say(f"simlab: note: {_server_note(session, replies, served)}")
    return engine


def _served(args: argparse.Namespace, replies) -> bool:
    """The replay goes to a server: the flags or settings say so, or the replies came from one."""
    return recorded_server(settings_of(args), replies, args.backend).backend == "openai"


def _server_note(session, replies, served) -> str:
    """What the server's probe found about repeating a seeded request, said before replaying."""
    maps = {id(m): m for m in (session.server_of(n) for n in replies) if m is not None}.values()
    where = f"these replies came from a server ({', '.join(served)}); " if served else ""
    if not maps:
        return (
            where + "a server reproduces a reply only if it honours the seed and decodes deterministically, "
            "which vLLM, llama.cpp and transformers serve do not promise (batching changes the numbers)"
        )
    if any(m.seeded is False for m in maps):
        why = next((m.why.get("seeded") for m in maps if m.why.get("seeded")), "")
        return (
            where
            + "when probed, it did not repeat a seeded request"
            + (f" ({why})" if why else "")
            + ": a reply that differs has its stored tokens scored there instead"
        )
    scores = all(m.scoring for m in maps)
    then = (
        "a reply that differs is scored there"
        if scores
        else "it gives no log-probabilities, so a reply that differs is compared as text only"
    )
    if any(m.seed_changes is False for m in maps):
        return where + "when probed, another seed changed nothing there (it decodes greedily): a reply "
        "that repeats says only that; " + then
    return where + "when probed, it repeated seeded requests; " + then


def _check(engine, session, path, replies, tracer) -> int:
    with Waiting("re-running replies", len(replies)) as wait:
        checks = check_path(
            engine,
            session,
            path,
            tracer=tracer,
            progress=lambda k, n: wait.advance(1 if k > 1 else 0),
        )
        wait.advance(1)
    for check in checks:
        _say(session, check, engine.info.weights if engine.capabilities.local else None)
    rerun = [c for c in checks if not c.not_replayable and not c.chosen]
    kept = [c for c in checks if c.chosen]
    same = sum(c.reproduced for c in rerun)
    revisions = {n.model_revision for n in replies if n.model_revision} - {engine.info.revision}
    skipped = len(checks) - len(rerun) - len(kept)
    cut = sum(c.node.finish_reason == "interrupted" for c in rerun)
    kept_line = f"{sum(c.reproduced for c in kept)}/{len(kept)} kept blocks read the same" if kept else ""
    if not rerun and kept:
        print(kept_line)
    else:
        moved = [c.moved for c in rerun if c.reproduced and c.moved]
        exactly = (
            f", {len(moved)} of them with moved log-probabilities (listed above)" if moved else " exactly"
        )
        print(
            f"reproduced {same}/{len(rerun)} replies{exactly}"
            + (f" ({cut} interrupted: checked over the part they stored)" if cut else "")
            + (f"; {skipped} not replayable (listed above)" if skipped else "")
            + (f"; {kept_line}" if kept else "")
        )
    if revisions:
        print(
            f"note: the stored replies came from model revision(s) {', '.join(sorted(map(str, revisions)))}, "
            f"this is {engine.info.revision}"
        )
    return 0 if same == len(rerun) and all(c.reproduced for c in kept) else 1


def _say(session, check, weights: str | None) -> None:
    """One check's line (none for a reply that came back exactly); a local reply sampled with other
    weights than `weights` says so."""
    was = (
        (check.node.weights or "float") if check.node.params is not None and not check.node.backend else None
    )
    other = (
        f" (sampled with weights {was}, replayed with {weights})"
        if weights and was not in (None, weights)
        else ""
    )
    if check.not_replayable:
        print(f"{session.tree.short(check.node.id)} not replayable: {check.not_replayable}")
    elif check.chosen:
        p = (check.node.forced or {}).get("p", 0)
        how = "the same" if check.reproduced else f"differ from token {check.first_difference}"
        print(
            f"{session.tree.short(check.node.id)} kept from a multiverse (p {100 * p:.1f}%"
            f", chosen, not sampled): its {_tokens(len(check.node.token_ids))} read again, "
            f"log-probabilities {how}"
        )
    elif check.moved:  # (float products sum otherwise on another CPU: the last bits move)
        print(
            f"{session.tree.short(check.node.id)} the same tokens; log-probabilities moved by up "
            f"to {check.moved:.2g}{other}"
        )
    elif not check.reproduced:
        print(
            f"{session.tree.short(check.node.id)} differs at {check.unit} {check.first_difference}: "
            f"stored {check.expected!r}, replayed {check.got!r}{other}"
        )
        if check.drift or check.scored:
            print("  stored tokens scored there: " + (check.drift.line() if check.drift else check.scored))


def _tokens(count: int) -> str:
    return f"{count} token{'' if count == 1 else 's'}"


def _replies(count: int) -> str:
    return f"{count} sampled repl{'y' if count == 1 else 'ies'}"
