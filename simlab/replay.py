"""Replay a path: re-run its user turns and compare (or re-sample) every model reply on it."""

from __future__ import annotations

from dataclasses import dataclass, fields

from simlab.engine.params import SamplingParams
from simlab.engine.prefix import unpack
from simlab.engine.protocol import Engine
from simlab.engine.scored import Drift, drift, pieces_of, score_ids, score_text, spans_of
from simlab.errors import SimlabError
from simlab.frame.render import PIECE, framing_of, open_turn, reply_prompt, reply_text
from simlab.frame.window import windowed
from simlab.persona.schema import Persona
from simlab.session.store import Session
from simlab.session.tree import Node, TreeError
from simlab.steer.use import steering_recorded
from simlab.turns import add_frame, is_piece, sample_replies, start_forced, start_piece
from simlab.turns.multiverse import Where, kept_under, rescored


@dataclass
class ReplyCheck:
    node: Node
    reproduced: bool
    first_difference: int | None = None  # token index (character index for a server's reply)
    expected: str | None = None
    got: str | None = None
    unit: str = "token"
    not_replayable: str | None = None  # why this reply on the path cannot be re-run
    chosen: bool = False  # a block kept from a multiverse: read again, not sampled
    drift: Drift | None = None  # a server's reply that differs: its stored tokens scored there
    scored: str = ""  # why a differing server reply was not scored
    moved: float = 0.0  # the same tokens, their log-probabilities by up to this (0: bit for bit)


RECORDED = object()  # replay_branch's default steering: each reply's own, as recorded


def params_of(node: Node, overrides: dict) -> SamplingParams:
    """The parameters a reply was sampled with (its seed too), with overrides on top."""
    known = {f.name for f in fields(SamplingParams)}
    stored = {k: v for k, v in (node.params or {}).items() if k in known}
    stored["seed"] = node.seed
    stored.setdefault("sampler", "multinomial")  # nodes from before the sampler was recorded
    if "stop" in stored:
        stored["stop"] = tuple(stored["stop"])
    return SamplingParams(**{**stored, **overrides})


def _drawn(session: Session, node: Node) -> Node | None:
    """The reply whose (params, seed) drew this one's text: itself, or for a /continue'd reply (two
    samplings joined, no one draw of the whole) the reply it continued, back to a sampled one."""
    seen = set()
    while node.params is None and "continued" in node.tags and node.edited_from and node.id not in seen:
        seen.add(node.id)
        try:
            node = session.tree.get(node.edited_from)
        except TreeError:
            return None
    return node if node.params is not None else None


def _params_under(session: Session, node: Node, overrides: dict) -> SamplingParams:
    """A reply's parameters for a replay under another persona; a /continue'd one's are those of the
    reply it continued, with room for the tokens the continuation added."""
    source = _drawn(session, node)
    params = params_of(source, overrides)
    if source is node or "max_new_tokens" in overrides:
        return params
    room = params.max_new_tokens + max(0, len(node.token_ids) or len(node.logprobs))
    return params.with_overrides(max_new_tokens=room)


def _forced_under(engine, session: Session, node: Node, parent: str, who: tuple, overrides, on_run) -> Node:
    """A /fork'ed reply replayed under another persona: the tokens the user chose first, as they
    were given (not sampled), then the rest sampled with the reply's seed and parameters."""
    given = node.forced["tokens"]
    params = params_of(node, overrides)
    replies = start_forced(
        engine, session, node, list(node.token_ids[:given]), node.forced.get("at", 0),
        node.forced.get("choice", "given"), params, (parent, *who), origin="replayed",
        steering=steering_recorded(node.steer, engine),
    )  # fmt: skip
    replies.decode()
    if on_run is not None:
        on_run(replies)
    [new] = replies.save(lambda c: True)
    return new


def model_replies(path: list[Node]) -> list[Node]:
    return [n for n in path if n.role == "model" and n.params is not None]


def chosen_replies(path: list[Node]) -> list[Node]:
    """Replies kept from a multiverse (turns.multiverse.keep): chosen, not sampled."""
    return [n for n in path if n.role == "model" and n.origin == "chosen" and n.token_ids]


def _one(engine: Engine, prompt, params: SamplingParams, tracer, passes=None, steer: dict | None = None):
    """One completion, with the recorder that traced it (or None); steered as `steer` records."""
    recorder = tracer.recorder(engine) if tracer else None
    steering = steering_recorded(steer, engine)
    run = engine.start(
        prompt, params, recorder=recorder, passes=passes, **({"steering": steering} if steering else {})
    )
    for _ in run:
        pass
    return run.completions[0], run, recorder


def check_path(
    engine: Engine, session: Session, path: list[Node], tracer=None, progress=None
) -> list[ReplyCheck]:
    """Regenerate each sampled reply on the path with its own params and seed and compare: token ids
    (a server's reply: its text); an interrupted reply over the part it stored. Replies that cannot be
    re-run (continued, edited) are listed with why. With a tracer, a reply reproduced exactly gets
    the trace of its regeneration. `progress(k, n)` is told before each reply."""
    checks = []
    replies = [n for n in model_replies(path) if not not_replayable(n)]
    for node in path:
        why = not_replayable(node)
        if why:
            checks.append(ReplyCheck(node, False, not_replayable=why))
    for k, node in enumerate(replies, 1):
        if progress is not None:
            progress(k, len(replies))
        checks.append(_check_one(engine, session, node, tracer))
    for node in chosen_replies(path):  # kept from a multiverse: its tokens read again where it was kept
        k = rescored(engine, session, node)
        checks.append(ReplyCheck(node, k is None, k, chosen=True))
    order = {node.id: i for i, node in enumerate(path)}
    return sorted(checks, key=lambda c: order[c.node.id])


def not_replayable(node: Node) -> str | None:
    """Why a reply on a path cannot be re-run (None: it can, or it is not a reply)."""
    if node.role != "model":
        return None
    if "continued" in node.tags:
        return "extended with /continue: two samplings joined, the continuation's seed is not recorded"
    if node.origin == "edited":
        return "edited by hand: the text is yours, not the model's"
    return None


def _check_one(engine: Engine, session: Session, node: Node, tracer) -> ReplyCheck:
    cut = node.finish_reason == "interrupted"
    given = node.forced["tokens"] if node.forced else 0  # /fork: tokens chosen, not sampled
    sampled = tuple(node.token_ids[given:])
    params = params_of(node, {"max_new_tokens": len(sampled)} if cut and sampled else {})
    path_before = session.tree.path(node.parent)
    if node.window:  # read what the reply read
        path_before = windowed(path_before, node.window.get("from", ""))
    # (the rest of a split turn read the turn up to where it goes on, with no label of its own)
    prompt = (
        open_turn(path_before)
        if is_piece(node)
        else reply_prompt(path_before, node.speaker, engine.tokenizer)
    )
    if given:
        prompt = (engine.encode(prompt) if isinstance(prompt, str) else list(prompt)) + list(
            node.token_ids[:given]
        )
    # fed as the reply's prompt was (engine.prefix): the same passes give the same last bits
    passes = unpack(node.prefill) if node.prefill else None
    if not engine.capabilities.local:
        return _check_served(engine, session, node, prompt, params, path_before)
    c, run, recorder = _one(engine, prompt, params, tracer, passes, node.steer)
    if not node.token_ids or c.token_ids and c.token_ids[0] < 0:  # a server's reply: compare text
        return _text_check(node, c, path_before)
    if c.token_ids[: len(sampled)] == list(sampled) and (cut or len(c.token_ids) == len(sampled)):
        pairs = zip(node.logprobs[given:], c.tokens[: len(sampled)])  # (none stored: none compared)
        moved = max((abs(a - t.logprob) for a, t in pairs), default=0.0)
        if recorder is not None and not cut and not given:
            tracer.save_node(session, node.id, recorder, run, c)
        return ReplyCheck(node, True, moved=moved)
    k = next(
        (i for i, (a, b) in enumerate(zip(c.token_ids, sampled)) if a != b),
        min(len(c.token_ids), len(sampled)),
    )
    decode = engine.tokenizer.decode
    return ReplyCheck(
        node,
        False,
        given + k,
        expected=decode([sampled[k]]) if k < len(sampled) else "(end)",
        got=decode([c.token_ids[k]]) if k < len(c.token_ids) else "(end)",
    )


def _text_check(node: Node, c, path_before) -> ReplyCheck:
    """A reply drawn again compared as text (a server's: no token ids of this session's), from
    the first differing character; an interrupted reply over the part it stored."""
    # stored without the label's space; a character cut at the last token (U+FFFD) is a
    # decoding artefact that a server shows or drops depending on streaming, not text
    got = reply_text(c.text, framing_of(path_before)).rstrip("\ufffd")
    stored = node.text.rstrip("\ufffd")
    if got == stored or node.finish_reason == "interrupted" and got.startswith(stored):
        return ReplyCheck(node, True)
    k = next((i for i, (a, b) in enumerate(zip(got, stored)) if a != b), min(len(got), len(stored)))
    return ReplyCheck(
        node, False, k, stored[k : k + 12] or "(end)", got[k : k + 12] or "(end)", unit="character"
    )


def _check_served(engine, session: Session, node: Node, prompt, params, path_before) -> ReplyCheck:
    """A reply drawn on a server again: child k of an n-request by the server's own rule (its
    probe), and where the text differs, its stored tokens scored on the server (the drift)."""
    found = session.server_of(node)
    choice = (node.backend or {}).get("choice")
    n = 1
    if found is not None and choice:
        seed = found.child_seed_of(node.seed, choice)
        if seed is None:  # the server's own rule: ask for the n again and take child k
            n = choice + 1
        params = params.with_overrides(seed=seed) if seed is not None else params
    check = _text_check(node, engine.generate(prompt, params, n=n)[n - 1], path_before)
    if check.reproduced:
        return check
    tokens = stored_tokens(node)
    if found is None or not found.scoring or tokens is None:
        check.scored = (
            "no stored log-probabilities"
            if tokens is None
            else "the server gives no log-probabilities to score with"
            if found is not None
            else "the server was not probed"
        )
        return check
    try:
        check.drift = drift(
            spans_of(*tokens), score_text(engine, prompt, "".join(tokens[0]), found.scoring, tokens[0])
        )
    except SimlabError as exc:
        check.scored = str(exc)
    return check


def replay_branch(
    engine: Engine,
    session: Session,
    path: list[Node],
    overrides: dict,
    persona: Persona | None = None,
    tracer=None,
    progress=None,
    on_run=None,
    steering=RECORDED,
) -> list[Node]:
    """Re-sample the path's replies under overrides as a new branch beside the original one
    (`on_run` gets each reply's decoded run, as `turns.sample_replies` gives it). `steering`: what
    every reply is steered with instead of what each recorded (None: unsteered).

    Without a persona the branch forks at the first sampled reply: each later user turn is copied
    (origin 'replayed') under the new reply before it, and each reply is sampled anew with its own
    seed. With a persona the branch is a new root: that persona's frame and greeting, then the
    path's turns spoken by its labels, each reply sampled with the original seed and parameters
    but the new persona's stop strings, so only the framing changes (a /continue'd reply with those
    of the reply it continued, and room for what the continuation added).
    """
    replies = model_replies(path)
    if persona is None:
        if not replies:
            raise SimlabError(
                "this path has no sampled replies to replay; pick a node below a reply with --node"
            )
        start = path.index(replies[0])
        parent = replies[0].parent
        turns = path[start:]
    else:
        turns = [n for n in path if n.role != "frame"]
        if turns and turns[0].role == "model" and turns[0].params is None and path[0].role == "frame":
            turns = turns[1:]  # the old persona's greeting; the new frame brings its own
        if not turns:
            raise SimlabError("this path has no turns to replay under another persona; pick a deeper node")
        parent = add_frame(session, persona).id
        overrides = {**overrides, "stop": persona.stop_strings}
    framing = framing_of(session.tree.path(parent))
    speaker = {"user": framing.user, "model": framing.model} if persona is not None else {}
    added = []

    def steered(node):
        return steering_recorded(node.steer, engine) if steering is RECORDED else steering

    sampled = [n for n in turns if n.role == "model" and n.params is not None]
    if persona is not None:  # a /continue'd reply is a reply too: sampled anew under the persona
        sampled = [n for n in turns if n.role == "model" and _drawn(session, n) is not None]
    for node in turns:
        if progress is not None and node in sampled:
            progress(sampled.index(node) + 1, len(sampled))
        who = speaker.get(node.role, node.speaker)
        name = persona.name if persona is not None else node.persona
        if node in sampled and node.forced and persona is not None:  # /fork: its chosen tokens again
            new = _forced_under(engine, session, node, parent, (who, name), overrides, on_run)
        elif node.origin == "chosen" and node.token_ids:  # a kept multiverse block: the same tokens
            new = kept_under(engine, session, node, Where(parent, who, name))
        elif node in sampled and is_piece(node):  # the rest of a split turn: on from the new first piece
            replies = start_piece(
                engine, session, session.tree.get(parent), _params_under(session, node, overrides),
                origin="replayed", steering=steered(node), tracer=tracer,
            )  # fmt: skip
            replies.decode()
            if on_run is not None:
                on_run(replies)
            [new] = replies.save(lambda c: True)
        elif node in sampled:
            [new] = sample_replies(
                engine,
                session,
                parent,
                _params_under(session, node, overrides),
                speaker=who,
                origin="replayed",
                persona=name,
                tracer=tracer,
                keep=lambda c: True,
                on_run=on_run,
                steering=steered(node),
            )
        else:
            new = session.add_child(  # (a piece of a split turn stays a piece: one turn, as it was)
                parent, node.role, node.text, speaker=who, origin="replayed", persona=name,
                tags=node.tags & {PIECE},
            )  # fmt: skip
        added.append(new)
        parent = new.id
    session.goto(added[-1].id)
    return added


# -- across engines: the same replies on another engine ------------------------------------


@dataclass
class Across:
    """A reply on another engine: how far its new draw agrees, and its stored tokens scored there."""

    node: Node
    agree: int  # characters the new draw shares with the stored reply from the start
    drift: Drift | None = None
    why: str = ""  # why the stored tokens were not scored


def reply_prompt_of(session: Session, node: Node, tokenizer=None):
    """The prompt a reply read (its window too)."""
    path_before = session.tree.path(node.parent)
    if node.window:
        path_before = windowed(path_before, node.window.get("from", ""))
    if is_piece(node):
        return open_turn(path_before), path_before
    return reply_prompt(path_before, node.speaker, tokenizer), path_before


def stored_tokens(node: Node, tokenizer=None) -> tuple[list[str], list[float]] | None:
    """A reply's token texts and log-probabilities as stored (a local reply's texts decoded by
    `tokenizer`); None without log-probabilities."""
    if not node.logprobs:
        return None
    served = (node.backend or {}).get("tokens")
    if served and len(served) == len(node.logprobs):
        pieces = list(served)
    elif tokenizer is None or len(node.token_ids) != len(node.logprobs):
        return None
    else:
        pieces = pieces_of(tokenizer, list(node.token_ids), 0)
    # the reply's own tokens: those after its text spelled the stop string
    joined = "".join(pieces)
    at = joined.find(node.text) if node.text and node.finish_reason == "stop" else -1
    end, kept, k = (at + len(node.text) if at >= 0 else len(joined)), 0, 0
    while k < len(pieces) and kept < end:
        kept, k = kept + len(pieces[k]), k + 1
    return pieces[:k], list(node.logprobs[:k])


def across(engine: Engine, session: Session, node: Node, tokenizer=None, scoring: str = "") -> Across:
    """Draw the reply again on `engine` with its params and seed, and score its stored tokens there
    (a server by `scoring`, its probe's prompt log-probabilities)."""
    prompt, path_before = reply_prompt_of(session, node, tokenizer if engine.capabilities.local else None)
    if not isinstance(prompt, str):
        raise SimlabError("replay --on: a reply read through a chat template has no text prompt for a server")
    c = engine.generate(prompt, params_of(node, {}))[0]
    got = reply_text(c.text, framing_of(path_before))
    agree = next((i for i, (a, b) in enumerate(zip(got, node.text)) if a != b), min(len(got), len(node.text)))
    stored = stored_tokens(node, tokenizer)
    if stored is None:
        return Across(node, agree, why="no stored log-probabilities to compare")
    if engine.capabilities.local and node.model == engine.info.spec and node.token_ids:
        scored, texts = score_ids(engine, prompt, node.token_ids)  # the same tokenizer: its own tokens
        return Across(node, agree, drift(spans_of(texts, stored[1]), scored))
    try:
        scored = score_text(engine, prompt, "".join(stored[0]), scoring, stored[0])
    except SimlabError as exc:
        return Across(node, agree, why=str(exc))
    return Across(node, agree, drift(spans_of(*stored), scored))
