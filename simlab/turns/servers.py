"""A server's capability map on the session: probed (engine.probe) the first time a session keeps
replies from it, once per engine, quietly; replay and compare read it back (Session.server_of)."""

from __future__ import annotations

from simlab.engine.probe import ServerMap, probe
from simlab.errors import SimlabError
from simlab.session.store import Session


def server_map(engine) -> ServerMap | None:
    """The engine's server probed once (None for a local engine, or where the probe failed)."""
    if getattr(getattr(engine, "config", None), "base_url", None) is None:
        return None
    if not hasattr(engine, "server_map"):
        try:
            engine.server_map = probe(engine)
        except SimlabError:
            engine.server_map = None  # the replies are kept all the same; doctor says what failed
    return engine.server_map


def note_server(session: Session, engine) -> None:
    """Store what the server can do on the session, the first time the session uses it."""
    base_url = getattr(getattr(engine, "config", None), "base_url", None)
    if session.read_only or base_url is None:
        return
    key = (base_url, engine.info.name)
    if any(m.key == key for m in session.tree.servers):
        return
    found = server_map(engine)
    if found is not None:
        session.save_server(found)


def repeated_siblings(session: Session, nodes) -> str | None:
    """A line when siblings came back as one reply repeated, and why where the server's probe knows."""
    if len(nodes) < 2 or len({n.text for n in nodes}) > 1:
        return None
    found = session.server_of(nodes[0]) if nodes[0].backend else None
    why = (
        ": the server's probe found that another seed changes nothing there (it decodes greedily or "
        "ignores temperature and seed; transformers serve samples only where generation_config.json "
        "says do_sample)"
        if found is not None and found.seed_changes is False
        else ""
    )
    return f"the {len(nodes)} new replies are one reply repeated{why}"
