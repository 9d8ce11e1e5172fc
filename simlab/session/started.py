"""What a session was started with: its persona (from the library, or rebuilt from the framing it
recorded), where its replies stop, and whether anything has happened in it since."""

from __future__ import annotations

from simlab.errors import PersonaError, SimlabError
from simlab.frame.render import framing_of
from simlab.persona.library import find
from simlab.persona.schema import Persona
from simlab.session.store import Session


def persona_of(session: Session) -> Persona:
    """The persona a session was started with: from the library if it is there, else rebuilt from the
    framing the session recorded (the rendering always follows the recorded framing)."""
    roots = session.tree.roots
    if not roots:
        raise SimlabError(f"session {session.name!r} is empty; start a new one with `simlab chat`")
    return persona_at(session.tree.path(session.tree.cursor) if session.tree.cursor else [roots[0]])


def persona_at(path: list) -> Persona:
    """The persona of the tree a path is in (a session can hold several: compare's variants,
    /persona branches): its root's, from the library, else rebuilt from the framing it recorded."""
    root = path[0]
    framing = framing_of(path)
    try:
        if root.persona:
            return find(root.persona)
    except PersonaError:
        pass
    return Persona(
        name=root.persona or ("document" if framing.mode == "document" else "session"),
        frame=root.text if root.role == "frame" else "",
        user=framing.user,
        model=framing.model,
        turn_template=framing.turn_template,
        mode=framing.mode,
        stop=framing.stop,
    )


def stops_of(session: Session | None, persona: Persona) -> tuple[str, ...]:
    """Where replies end: as the session's current path was framed, else as the persona says."""
    if session is None or session.tree.cursor is None:
        return persona.stop_strings
    return framing_of(session.tree.path(session.tree.cursor)).stops()


def untouched(session: Session) -> bool:
    """Nothing in the session but what starting it wrote: one frame and its greetings, unmarked (no
    reply sampled, nothing typed, edited, tagged or hidden)."""
    tree = session.tree
    if len(tree.roots) != 1:
        return False
    frame = tree.roots[0]
    for node in tree.nodes.values():
        greeting = (
            node.role == "model"
            and node.parent == frame.id
            and node.params is None
            and node.origin == "typed"
        )
        if not (node is frame or greeting) or node.tags or node.hidden:
            return False
    return True


def discarded(session: Session, keep: bool) -> bool:
    """Whether a chat's session is removed as it closes: one `simlab chat` started without a name
    (`keep` False) leaves nothing behind when nothing happened in it."""
    return not keep and not session.in_memory and untouched(session)
