"""`simlab multiverse`: every continuation above a probability, to a depth, exactly (engine.multiverse),
of a session node (saved beside it; a block of it kept as a real node with --keep) or of a bare text;
as numbered blocks with bars, or as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from simlab.cli.common import (
    add_model_flags,
    add_sampling_flags,
    add_sessions_dir,
    load_engine,
    open_store,
    sampling_overrides,
    say,
    warn,
)
from simlab.config import invoked_as
from simlab.engine.params import SamplingParams
from simlab.errors import SimlabError, needs_local
from simlab.session import multiverse as saved_multiverse
from simlab.session.started import persona_at


def add_command(commands) -> None:
    mv = add_sessions_dir(
        commands.add_parser(
            "multiverse",
            help="every continuation above a probability, to a depth, exactly (the block multiverse)",
        )
    )
    mv.add_argument("session", nargs="?", help="the session whose node to grow from (saved beside it)")
    mv.add_argument("--node", help="the node (default: the session's cursor)")
    mv.add_argument("--text", help="a bare text instead of a session ('-': standard input)")
    mv.add_argument("--depth", type=int, default=8, help="tokens deep (default 8)")
    mv.add_argument(
        "--cutoff", type=float, default=0.01, help="keep blocks of at least this probability (default 0.01)"
    )
    mv.add_argument(
        "--raw", action="store_true", help="the model's own distribution, not the sampling settings'"
    )
    mv.add_argument("--json", action="store_true", help="print the tree as JSON")
    mv.add_argument(
        "--keep",
        type=int,
        metavar="N",
        help="keep block N of the node's last multiverse as a reply (chosen, not sampled)",
    )
    mv.add_argument("--no-save", action="store_true", help="do not save the multiverse in the session")
    add_sampling_flags(
        mv.add_argument_group(
            "sampling (the distribution drawn, unless --raw; default: the session's, or the defaults)"
        ),
        defaults=False,
    )
    add_model_flags(mv)
    mv.set_defaults(run=cmd_multiverse)


def cmd_multiverse(args: argparse.Namespace) -> int:
    params = SamplingParams(**sampling_overrides(args))  # (checked before the model loads)
    if args.depth < 1 or args.depth > 64:
        raise SimlabError(f"multiverse: --depth {args.depth}: give 1 to 64 tokens")
    if not 0 < args.cutoff <= 1:
        raise SimlabError(f"multiverse: --cutoff {args.cutoff:g}: give a probability above 0, at most 1")
    if (args.text is None) == (args.session is None):
        raise SimlabError("multiverse: give a session (and --node) or --text TEXT, one of the two")
    if args.text is not None and (args.node or args.keep is not None):
        raise SimlabError("multiverse: --node and --keep need a session, not --text")
    if args.raw and sampling_overrides(args):
        given = ", ".join(f"--{k.replace('_', '-')}" for k in sampling_overrides(args))
        raise SimlabError(f"multiverse: --raw is the model's own distribution; {given} would change nothing")
    if args.keep is not None and (args.json or args.no_save or args.raw):
        raise SimlabError("multiverse --keep N keeps a block of the saved multiverse; it grows nothing")
    if args.backend == "openai":
        raise needs_local("a multiverse (every next-token distribution, from the weights)")
    if args.session is not None:
        return _of_session(args, params)
    from simlab.engine.multiverse import grow

    text = sys.stdin.read() if args.text == "-" else args.text
    engine = load_engine(args)
    ids = engine.encode(text)
    if not ids:
        raise SimlabError("multiverse: the text has no tokens; give some text to continue")
    if len(ids) + args.depth > engine.info.context_length:
        raise SimlabError(
            f"multiverse: {len(ids)} tokens and --depth {args.depth} do not fit the model's context "
            f"of {engine.info.context_length}; shorten the text"
        )
    say(f"simlab: multiverse of {len(ids)} tokens, depth {args.depth}, cutoff {args.cutoff:g}")
    grown = grow(engine, ids, params, args.depth, args.cutoff, raw=args.raw)
    shown = saved_multiverse.record(
        grown, engine.tokenizer.decode, "", len(ids), params.as_record(), engine.info.spec
    )
    _show(shown, args.json)
    return 0


def _of_session(args: argparse.Namespace, params: SamplingParams) -> int:
    from simlab.turns.multiverse import grow_at, keep, kept_before, where

    session = open_store(args).open(args.session, read_only=args.no_save and args.keep is None)
    warn(session.problems)
    with session:
        tree = session.tree
        node = tree.resolve(args.node) if args.node else tree.get(tree.cursor) if tree.cursor else None
        if node is None:
            raise SimlabError(f"session {args.session!r} is empty; nothing to grow from")
        at = where(session, node.id)
        params = _session_params(session, node.id, args)
        if args.keep is not None:
            saved = (tree.multiverses.get(at.parent) or [None])[-1]
            if saved is None:
                raise SimlabError(
                    f"multiverse --keep: no multiverse saved at {tree.short(node.id)}; "
                    f"grow one first: simlab multiverse {session.name} --node {tree.short(node.id)}"
                )
            rows = saved_multiverse.rows(saved_multiverse.tree(saved))
            if not 1 <= args.keep <= len(rows):
                raise SimlabError(f"multiverse --keep {args.keep}: give a block number from 1 to {len(rows)}")
            block = rows[args.keep - 1].ids
            kept = kept_before(session, saved, block)
            how = f"block {args.keep} was kept already as" if kept else f"kept block {args.keep} as"
            if kept is None:
                kept = keep(load_engine(args), session, saved, block)
            session.goto(kept.id)
            print(f"{how} {tree.short(kept.id)}: {kept.text!r}")
            return 0
        engine = load_engine(args)
        say(f"simlab: multiverse at {tree.short(node.id)}, depth {args.depth}, cutoff {args.cutoff:g}")
        saved = grow_at(
            engine, session, node.id, params, args.depth, args.cutoff, raw=args.raw, save=not args.no_save
        )
        _show(saved, args.json)
        if not args.no_save and not args.json:
            print(
                f"saved in {session.name}; keep a block as a reply: "
                f"{invoked_as()} multiverse {session.name} --node {tree.short(node.id)} --keep N"
            )
    return 0


def _session_params(session, node_id: str, args: argparse.Namespace) -> SamplingParams:
    """The sampling a reply at the node would have: its persona's, the session's /set, the flags."""
    recorded = dict(session.tree.settings.get("set") or {})
    chosen = {k: v for k, v in recorded.items() if k != "stop"} | sampling_overrides(args)
    try:
        return persona_at(session.tree.path(node_id)).sampling_params(**chosen)
    except (
        SimlabError,
        TypeError,
        ValueError,
    ):  # (settings another version saved): the flags over the persona's
        return persona_at(session.tree.path(node_id)).sampling_params(**sampling_overrides(args))


def _show(saved: dict, as_json: bool) -> None:
    if as_json:
        json.dump(saved_multiverse.as_json(saved), sys.stdout, ensure_ascii=False)
        print()
        return
    for line in saved_multiverse.drawn(saved, numbered=True):
        print(line)
    print(f"{saved['passes']} forward passes in {saved['seconds']:.2f} s")
