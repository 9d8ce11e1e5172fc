"""Sessions on disk: one append-only JSON Lines file per session (session.journal), fsynced record
by record. A torn last line is skipped on loading and the file is never rewritten to "repair" it; the
next append starts on a fresh line. One process writes a session at a time (an advisory lock); others
may open it read-only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simlab.config import invoked_as
from simlab.errors import SessionError, SessionWriteError
from simlab.session.journal import encode, header, load_tree, state_records
from simlab.session.tree import Node, Tree, make_node

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SUFFIX = ".jsonl"


@dataclass(frozen=True)
class SessionSummary:
    name: str
    nodes: int
    modified: float
    first_text: str
    problems: int


def check_name(name: str) -> str:
    """Session names are plain file names: no '/', no '..', no NUL, no leading dot."""
    if not _NAME.fullmatch(name) or ".." in name or name.endswith(SUFFIX):
        raise SessionError(
            f"session name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
            "(up to 100, starting with a letter or digit)"
        )
    return name


class Session:
    """A tree bound to its file: each change is appended and fsynced before the method returns.

    When the disk refuses a write, the change stays in memory (`unsaved`) and the error is raised,
    unless `on_save_problem` is set: then it is told, and the session goes on in memory, writing
    the backlog with the next change once the disk takes it again. A session that could not be
    created on disk at all (`in_memory`) keeps everything in `unsaved`; `export` writes it anywhere.
    """

    def __init__(
        self, name: str, path: Path, tree: Tree, problems: list[str], handle=None, in_memory: bool = False
    ):
        self.name = name
        self.path = path
        self.tree = tree
        self.problems = problems
        self._handle = handle  # None when read-only (or in memory)
        self.in_memory = in_memory
        self.unsaved: list[bytes] = []  # records the disk has not taken yet, oldest first
        self.on_save_problem: Callable[[str], None] | None = None
        self._torn = False  # a failed write may have left part of a line: start the next on a new one
        self.exported_changes: int | None = None  # len(unsaved) when the whole session was last exported
        # one change at a time: `simlab loom` samples in a worker thread while keys move the cursor
        self.lock = threading.RLock()

    @property
    def safe_to_close(self) -> bool:
        """Everything is on disk, or was exported since the last change."""
        return not self.unsaved or self.exported_changes == len(self.unsaved)

    @property
    def read_only(self) -> bool:
        return self._handle is None and not self.in_memory

    # -- writes ----------------------------------------------------------------------------
    def _append(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.check_writable()
            self.unsaved.append(encode(record))
            if self.in_memory:
                return
            backlog = len(self.unsaved)
            lead = b"\n" if self._torn else b""
            view, written = memoryview(lead + b"".join(self.unsaved)), 0
            try:
                while view:
                    count = os.write(self._handle.fileno(), view)
                    view, written = view[count:], written + count
                os.fsync(self._handle.fileno())
            except OSError as exc:
                written -= len(lead)
                while self.unsaved and written >= len(self.unsaved[0]):  # records that made it whole
                    written -= len(self.unsaved.pop(0))
                self._torn = True
                message = (
                    f"cannot save session {self.name!r} to {self.path}: {exc.strerror}; "
                    f"{len(self.unsaved)} change(s) kept in memory"
                )
                if self.on_save_problem is None:
                    raise SessionWriteError(message) from None
                self.on_save_problem(message)
                return
            self.unsaved.clear()
            if self._torn:
                self._torn = False
                if self.on_save_problem is not None:
                    self.on_save_problem(
                        f"session {self.name!r} is saved again ({backlog} change(s) written)"
                    )

    def export(self, target: Path) -> Path:
        """The whole session as a session file at target (written beside it, then renamed into place):
        open it with `simlab sessions import`, or copy it into a sessions folder."""
        target = Path(target).expanduser()
        try:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as out:
                for record in state_records(self.name, self.tree):
                    out.write(encode(record))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
            self.exported_changes = len(self.unsaved)
        except (OSError, ValueError) as exc:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)
            raise SessionWriteError(
                f"cannot write {target}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        return target

    def add(self, node: Node) -> Node:
        with self.lock:
            self.check_writable()
            node = self.tree.add(node)
            self._append({"type": "node", "node": node.to_record()})
            return node

    def add_child(self, parent: str | None, role: str, text: str, **fields: Any) -> Node:
        return self.add(make_node(parent, role, text, **fields))

    def edit(self, node_id: str, text: str) -> Node:
        with self.lock:
            self.check_writable()
            node = self.tree.edit(node_id, text)
            self._append({"type": "node", "node": node.to_record()})
            return node

    def set_tag(self, node_id: str, tag: str, on: bool = True) -> Node:
        with self.lock:
            self.check_writable()
            node = self.tree.set_tag(node_id, tag, on)
            self._append({"type": "tag", "id": node.id, "tag": tag, "on": on})
            return node

    def set_hidden(self, node_id: str, hidden: bool = True) -> Node:
        with self.lock:
            self.check_writable()
            node = self.tree.set_hidden(node_id, hidden)
            self._append({"type": "hide", "id": node.id, "hidden": hidden})
            return node

    def save_settings(self, settings: dict[str, Any]) -> None:
        """The chat's settings (what the user chose with flags, /set and /seed), for the next resume."""
        if settings != self.tree.settings and not self.read_only:
            self._append({"type": "settings", "settings": settings})
            self.tree.settings = settings

    def save_multiverse(self, saved: dict[str, Any]) -> None:
        """A multiverse (session.multiverse.record) beside the node it grew from."""
        self._append({"type": "multiverse", "multiverse": saved})
        self.tree.multiverses.setdefault(saved["node"], []).append(saved)

    def save_server(self, found) -> None:
        """What a server did when probed (engine.probe.ServerMap), for the replies made on it."""
        if not self.read_only:
            self._append({"type": "server", "server": found.as_dict()})
            self.tree.servers.append(found)

    def server_of(self, node: Node):
        """The probe's map of the server a reply came from, as it was when the reply was made."""
        backend = node.backend or {}
        key = (backend.get("base_url"), node.model)
        maps = [m for m in self.tree.servers if m.key == key]
        before = [m for m in maps if node.created is None or m.probed_at <= node.created]
        return (before or maps or [None])[-1]

    def goto(self, node_id: str) -> Node:
        with self.lock:
            node = self.tree.goto(node_id)
            self._record_cursor()
            return node

    def move(self, where: str, include_hidden: bool = False) -> Node:
        with self.lock:
            node = self.tree.move(where, include_hidden)
            self._record_cursor()
            return node

    def _record_cursor(self) -> None:
        if not self.read_only:  # a read-only viewer may still move around
            self._append({"type": "cursor", "id": self.tree.cursor})

    def check_writable(self) -> None:
        """Raise when the session is open read-only (before work whose result could not be kept)."""
        if self.read_only:
            raise SessionError(
                f"session {self.name!r} is open read-only: nothing is added to it (open it without "
                "--read-only to add to it, once no other simlab writes it)"
            )

    def close(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SessionStore:
    """The sessions folder."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        path = self.folder / (check_name(name) + SUFFIX)
        if path.resolve().parent != self.folder.resolve():
            raise SessionError(f"session name {name!r} would leave the sessions folder {self.folder}")
        return path

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def new_name(self) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name, k = stamp, 1
        while self.exists(name):
            k += 1
            name = f"{stamp}-{k}"
        return name

    def create(self, name: str | None = None, **fields: Any) -> Session:
        """A new, empty session open for writing."""
        name = name or self.new_name()
        path = self.path(name)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except FileExistsError:
            raise SessionError(
                f"session {name!r} already exists in {self.folder}; pick another name"
            ) from None
        except OSError as exc:
            raise SessionWriteError(
                f"cannot create session {name!r} in {self.folder}: {exc.strerror}"
            ) from None
        handle = os.fdopen(fd, "ab")
        _lock(handle, name)
        session = Session(name, path, Tree(), [], handle)
        try:
            session._append(header(name, **fields))
            _fsync_dir(self.folder)
        except (SessionWriteError, OSError) as exc:
            session.close()
            with contextlib.suppress(OSError):
                path.unlink()
            raise SessionWriteError(
                f"cannot create session {name!r} in {self.folder}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        return session

    def create_in_memory(self, name: str | None = None, **fields: Any) -> Session:
        """A new session that lives in memory only (the folder cannot take it); see Session.export."""
        name = name or self.new_name()
        session = Session(name, self.path(name), Tree(), [], in_memory=True)
        session._append(header(name, **fields))
        return session

    def open(self, name: str, read_only: bool = False) -> Session:
        """Load a session; for writing unless read_only. Problems found are in session.problems."""
        path = self.path(name)
        if not path.exists():
            where = Path(self.folder).resolve()  # (a relative folder says where it was looked for)
            listing = f"{invoked_as()} sessions list --sessions-dir {shlex.quote(str(where))}"
            raise SessionError(f"no session {name!r} in {where} (see `{listing}`)")
        handle = None
        if not read_only:
            try:
                handle = open(path, "ab")
            except OSError as exc:
                raise SessionWriteError(
                    f"cannot open session {name!r} for writing: {exc.strerror}; open it read-only"
                ) from None
            _lock(handle, name)
        try:
            tree, problems = load_tree(path)
        except BaseException:
            if handle is not None:
                handle.close()
            raise
        if handle is not None and path.stat().st_size and not _ends_with_newline(path):
            handle.write(b"\n")  # a torn last line stays as it is; new records start after it
            handle.flush()
            os.fsync(handle.fileno())
        return Session(name, path, tree, problems, handle)

    def list(self) -> list[SessionSummary]:
        out = []
        if not self.folder.is_dir():
            return out
        for path in sorted(self.folder.glob("*" + SUFFIX)):
            name = path.name[: -len(SUFFIX)]
            try:
                tree, problems = load_tree(path)
            except SessionError:
                out.append(SessionSummary(name, 0, path.stat().st_mtime, "(unreadable)", 1))
                continue
            # the first thing the user said, not hidden (a Loom document, with no user turns: its first text)
            shown = [n for n in tree.nodes.values() if not n.hidden and n.text.strip()]
            first = next((n.text for n in shown if n.role == "user"), "") or next(
                (n.text for n in shown if n.role != "frame"), ""
            )
            out.append(SessionSummary(name, len(tree.nodes), path.stat().st_mtime, first, len(problems)))
        return out

    def remove(self, name: str) -> None:
        path = self.path(name)
        if not path.exists():
            raise SessionError(f"no session {name!r} in {self.folder}")
        with open(path, "ab") as handle:
            _lock(handle, name)  # never delete a session another process is writing
            path.unlink()

    def compact(self, name: str) -> int:
        """Rewrite a session as its current state (a new file renamed over the old); returns bytes saved."""
        with self.open(name) as session:
            before = session.path.stat().st_size
            tmp = session.path.with_name(f".{session.path.name}.compact-{os.getpid()}")
            with open(tmp, "wb") as out:
                for record in state_records(session.name, session.tree):
                    out.write(encode(record))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, session.path)
            _fsync_dir(self.folder)
            return before - session.path.stat().st_size


def _lock(handle, name: str) -> None:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        simlab = invoked_as()  # as it was run (.venv/bin/simlab where that is not on PATH)
        raise SessionError(
            f"session {name!r} is open for writing in another simlab process; close it there, or browse it "
            f"read-only: `{simlab} chat --resume {name} --read-only` (or `{simlab} loom {name} --read-only`)"
        ) from None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
