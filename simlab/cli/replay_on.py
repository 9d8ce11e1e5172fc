"""`simlab replay ID --on URL|local`: a path's replies on another engine (a local session on a
server, a server's session here): each reply drawn again with its seed (how far the text agrees)
and its stored tokens scored there teacher-forced (the log-probability drift per reply)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from simlab.cli.common import load_engine, say, settings_of
from simlab.errors import SimlabError
from simlab.models.load import load_tokenizer
from simlab.repl.progress import Waiting
from simlab.replay import across
from simlab.turns.servers import server_map


def replay_on(args: argparse.Namespace, session, replies) -> int:
    engine, scoring = _other_engine(args, replies)
    tokenizer = engine.tokenizer if engine.capabilities.local else _stored_tokenizer(args, replies)
    where = engine.info.source if not engine.capabilities.local else f"{engine.info.spec} here"
    results = []
    with Waiting(f"replaying on {where}", len(replies)) as wait:
        for node in replies:
            results.append(across(engine, session, node, tokenizer, scoring))
            wait.advance(1)
    short = session.tree.short
    for r in results:
        size = len(r.node.text)
        agreed = "the same text" if r.agree >= size else f"agrees for {r.agree}/{size} characters"
        print(f"{short(r.node.id)}  {agreed}; " + (r.drift.line() if r.drift else f"not scored: {r.why}"))
    same = sum(r.agree >= len(r.node.text) for r in results)
    compared = [r.drift for r in results if r.drift and r.drift.aligned]
    line = f"on {where}: {same}/{len(results)} replies drawn again the same"
    if compared:
        tokens = sum(d.aligned for d in compared)
        mean = sum(d.mean_abs * d.aligned for d in compared) / tokens
        line += (
            f"; {tokens} stored tokens scored there, log-probability drift max "
            f"{max(d.max_abs for d in compared):.4f}, mean {mean:.4f}"
        )
    print(line)
    return 0


def _other_engine(args: argparse.Namespace, replies):
    """The engine --on names, and how a server scores prompts (its probe), said up front."""
    if args.on == "local":
        args.backend = "local"
        spec = args.model or next((n.model for n in reversed(replies) if n.model), None)
        return load_engine(args, spec=spec), ""
    if not args.on.startswith(("http://", "https://")):
        raise SimlabError(f"--on {args.on!r}: give a server's URL (http://host:8000/v1) or 'local'")
    args.backend, args.base_url = "openai", args.on
    engine = load_engine(args, spec=args.model)
    found = server_map(engine)
    if found is None:
        return engine, ""
    if not found.scoring:
        say(
            "simlab: note: the server gives no log-probabilities to score stored tokens with; only the "
            "new draws are compared"
        )
    elif found.scoring == "forced":
        say(
            "simlab: note: the server gives no prompt log-probabilities: each stored token is asked for alone"
        )
    if found.seeded is False:
        say("simlab: note: the server did not repeat a seeded request when probed: new draws may differ")
    return engine, found.scoring


def _stored_tokenizer(args: argparse.Namespace, replies):
    """The tokenizer of the local model the replies came from (their token texts), when they have ids."""
    local = [n for n in replies if n.token_ids and not (n.backend or {}).get("tokens")]
    if not local:
        return None
    settings = replace(settings_of(args), backend="local")
    return load_tokenizer(local[-1].model, settings, trust_remote_code=args.trust_remote_code)
