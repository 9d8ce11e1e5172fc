"""Sessions on disk: one append-only JSON Lines file per session, fsynced record by record.

Line 1 is a header (`{"type": "session", "schema": N, ...}`); every later line is one change:
a node, a tag, a hide/restore, or a cursor move. Loading replays the lines into a Tree. A torn
or garbage line is reported with its line number and skipped, and the file is never rewritten
to "repair" it; the next append starts on a fresh line. One process writes a session at a time
(an advisory lock); others may open it read-only.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import orjson

from simlab.errors import SimlabError
from simlab.tree import Node, Tree, TreeError, make_node

SCHEMA = 3
# Upgrades of records from older schema versions: MIGRATIONS[n] turns a schema-n record into n+1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: lambda record: record,  # 2 added the optional `framing` of frame nodes; 1 files render as before
    2: lambda record: record,  # 3 added the optional context `window` and `backend` of replies
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SUFFIX = ".jsonl"


class SessionError(SimlabError):
    """A session that cannot be opened, named or written as asked."""


class SessionWriteError(SessionError):
    """The disk refused a write (full, read-only, permissions): what is in memory is still whole."""


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

    def __init__(self, name: str, path: Path, tree: Tree, problems: list[str], handle=None,
                 in_memory: bool = False):
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

    @property
    def safe_to_close(self) -> bool:
        """Everything is on disk, or was exported since the last change."""
        return not self.unsaved or self.exported_changes == len(self.unsaved)

    @property
    def read_only(self) -> bool:
        return self._handle is None and not self.in_memory

    # -- writes ----------------------------------------------------------------------------
    def _append(self, record: dict[str, Any]) -> None:
        self._check_writable()
        self.unsaved.append(orjson.dumps(record) + b"\n")
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
            message = (f"cannot save session {self.name!r} to {self.path}: {exc.strerror}; "
                       f"{len(self.unsaved)} change(s) kept in memory")
            if self.on_save_problem is None:
                raise SessionWriteError(message) from None
            self.on_save_problem(message)
            return
        self.unsaved.clear()
        if self._torn:
            self._torn = False
            if self.on_save_problem is not None:
                self.on_save_problem(f"session {self.name!r} is saved again ({backlog} change(s) written)")

    def export(self, target: Path) -> Path:
        """The whole session as a session file at target (written beside it, then renamed into place):
        open it with `simlab sessions import`, or copy it into a sessions folder."""
        target = Path(target).expanduser()
        try:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as out:
                for record in state_records(self):
                    out.write(orjson.dumps(record) + b"\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
            self.exported_changes = len(self.unsaved)
        except (OSError, ValueError) as exc:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)
            raise SessionWriteError(f"cannot write {target}: {getattr(exc, 'strerror', None) or exc}") from None
        return target

    def add(self, node: Node) -> Node:
        self._check_writable()
        node = self.tree.add(node)
        self._append({"type": "node", "node": node.to_record()})
        return node

    def add_child(self, parent: str | None, role: str, text: str, **fields: Any) -> Node:
        return self.add(make_node(parent, role, text, **fields))

    def edit(self, node_id: str, text: str) -> Node:
        self._check_writable()
        node = self.tree.edit(node_id, text)
        self._append({"type": "node", "node": node.to_record()})
        return node

    def set_tag(self, node_id: str, tag: str, on: bool = True) -> Node:
        self._check_writable()
        node = self.tree.set_tag(node_id, tag, on)
        self._append({"type": "tag", "id": node.id, "tag": tag, "on": on})
        return node

    def set_hidden(self, node_id: str, hidden: bool = True) -> Node:
        self._check_writable()
        node = self.tree.set_hidden(node_id, hidden)
        self._append({"type": "hide", "id": node.id, "hidden": hidden})
        return node

    def goto(self, node_id: str) -> Node:
        node = self.tree.goto(node_id)
        self._record_cursor()
        return node

    def move(self, where: str) -> Node:
        node = self.tree.move(where)
        self._record_cursor()
        return node

    def _record_cursor(self) -> None:
        if not self.read_only:  # a read-only viewer may still move around
            self._append({"type": "cursor", "id": self.tree.cursor})

    def _check_writable(self) -> None:
        if self.read_only:
            raise SessionError(f"session {self.name!r} is open read-only; nothing was saved")

    def close(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SessionStore:
    """The sessions folder."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        path = (self.folder / (check_name(name) + SUFFIX))
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

    def create(self, name: str | None = None, **header: Any) -> Session:
        """A new, empty session open for writing."""
        name = name or self.new_name()
        path = self.path(name)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except FileExistsError:
            raise SessionError(f"session {name!r} already exists in {self.folder}; pick another name") from None
        except OSError as exc:
            raise SessionWriteError(f"cannot create session {name!r} in {self.folder}: {exc.strerror}") from None
        handle = os.fdopen(fd, "ab")
        _lock(handle, name)
        session = Session(name, path, Tree(), [], handle)
        try:
            session._append({"type": "session", "schema": SCHEMA, "name": name, "created": time.time(), **header})
            _fsync_dir(self.folder)
        except (SessionWriteError, OSError) as exc:
            session.close()
            with contextlib.suppress(OSError):
                path.unlink()
            raise SessionWriteError(f"cannot create session {name!r} in {self.folder}: "
                                    f"{getattr(exc, 'strerror', None) or exc}") from None
        return session

    def create_in_memory(self, name: str | None = None, **header: Any) -> Session:
        """A new session that lives in memory only (the folder cannot take it); see Session.export."""
        name = name or self.new_name()
        session = Session(name, self.path(name), Tree(), [], in_memory=True)
        session._append({"type": "session", "schema": SCHEMA, "name": name, "created": time.time(), **header})
        return session

    def open(self, name: str, read_only: bool = False) -> Session:
        """Load a session; for writing unless read_only. Problems found are in session.problems."""
        path = self.path(name)
        if not path.exists():
            raise SessionError(f"no session {name!r} in {self.folder} (see `simlab sessions list`)")
        handle = None
        if not read_only:
            try:
                handle = open(path, "ab")
            except OSError as exc:
                raise SessionWriteError(f"cannot open session {name!r} for writing: {exc.strerror}; "
                                        "open it read-only") from None
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
            first = next((n.text for n in tree.nodes.values() if n.role == "user"), "")
            out.append(SessionSummary(name, len(tree.nodes), path.stat().st_mtime, first, len(problems)))
        return out

    def remove(self, name: str) -> None:
        path = self.path(name)
        if not path.exists():
            raise SessionError(f"no session {name!r} in {self.folder}")
        with open(path, "ab") as handle:
            _lock(handle, name)  # never delete a session another process is writing
            path.unlink()
        traces = path.with_name(name + ".traces")  # residual-stream traces of its nodes (simlab.trace)
        if traces.is_dir():
            shutil.rmtree(traces)

    def compact(self, name: str) -> int:
        """Rewrite a session as its current state (a new file renamed over the old); returns bytes saved."""
        with self.open(name) as session:
            before = session.path.stat().st_size
            tmp = session.path.with_name(f".{session.path.name}.compact-{os.getpid()}")
            with open(tmp, "wb") as out:
                for record in state_records(session):
                    out.write(orjson.dumps(record) + b"\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, session.path)
            _fsync_dir(self.folder)
            return before - session.path.stat().st_size


def state_records(session: Session) -> list[dict[str, Any]]:
    """Header, every node in parent-first order with its current tags and visibility, and the cursor."""
    tree = session.tree
    records: list[dict[str, Any]] = [{"type": "session", "schema": SCHEMA, "name": session.name,
                                      "created": time.time()}]
    stack = [n.id for n in reversed(tree.roots)]
    while stack:
        node = tree.nodes[stack.pop()]
        records.append({"type": "node", "node": node.to_record()})
        stack.extend(n.id for n in reversed(tree.children(node.id, include_hidden=True)))
    if tree.cursor:
        records.append({"type": "cursor", "id": tree.cursor})
    return records


def load_tree(path: Path) -> tuple[Tree, list[str]]:
    """Replay a session file into a Tree; returns it with the problems found (line by line)."""
    # A large session allocates ~10^6 small lists that all stay alive; with the cyclic GC on,
    # each collection re-walks them all and loading takes several times longer.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_tree(path)
    finally:
        if enabled:
            gc.enable()


def _load_tree(path: Path) -> tuple[Tree, list[str]]:
    tree = Tree()
    problems: list[str] = []
    pending: list[tuple[int, Node]] = []  # nodes whose parent was not (yet) there
    schema = None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SessionError(f"cannot read session file {path}: {exc.strerror}") from None
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = orjson.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:  # orjson.JSONDecodeError is a ValueError
            problems.append(f"{where}: unreadable line skipped (a torn write or garbage)")
            continue
        if schema is None:
            if record.get("type") != "session" or not isinstance(record.get("schema"), int):
                raise SessionError(f"{where}: not a simlab session file (no session header on its first line)")
            schema = record["schema"]
            if schema < 1:
                raise SessionError(f"{where}: schema {schema} is not a simlab session schema (1 to {SCHEMA})")
            if schema > SCHEMA:
                raise SessionError(f"{path}: written by a newer simlab (schema {schema}, this one reads up to "
                                   f"{SCHEMA}); upgrade simlab to open it. The file was not changed.")
            continue
        for version in range(schema, SCHEMA):
            record = MIGRATIONS[version](record)
        try:
            _apply(tree, record, pending, lineno)
        except (TreeError, TypeError, ValueError, KeyError) as exc:
            problems.append(f"{where}: record skipped ({exc})")
    if schema is None:
        raise SessionError(f"{path}: empty or not a simlab session file")
    _place_pending(tree, pending, problems, path)
    if tree.cursor is not None and tree.cursor not in tree.nodes:
        tree.cursor = None
    if tree.cursor is None and tree.nodes:
        tree.cursor = tree.leaf(tree.roots[0].id).id if tree.roots else None
    return tree, problems


def _place_pending(tree: Tree, pending: list[tuple[int, Node]], problems: list[str], path: Path) -> None:
    """Add nodes whose parent came later in the file (imports write children first), in linear time;
    a node whose parent never came, or whose parents form a cycle, is kept as a separate root."""
    waiting: dict[str, list[tuple[int, Node]]] = {}
    for item in pending:
        waiting.setdefault(item[1].parent, []).append(item)

    def add_with_descendants(lineno: int, node: Node, orphan: str | None) -> None:
        queue = [(lineno, node, orphan)]
        while queue:
            lineno, node, orphan = queue.pop()
            try:
                if orphan is None:
                    tree.add(node)
                else:
                    problems.append(f"{path}:{lineno}: node {node.id[:8]} {orphan}; kept as a separate root")
                    tree.add_orphan(node)
            except TreeError as exc:  # e.g. an id used twice
                problems.append(f"{path}:{lineno}: record skipped ({exc})")
                continue
            queue.extend((ln, child, None) for ln, child in reversed(waiting.pop(node.id, [])))

    for node_id in [n for n in waiting if n in tree.nodes]:
        for lineno, node in waiting.pop(node_id, []):
            add_with_descendants(lineno, node, None)
    waiting_ids = {node.id for items in waiting.values() for _, node in items}
    for parent in [p for p in waiting if p not in waiting_ids]:  # parents that never came
        for lineno, node in waiting.pop(parent, []):
            add_with_descendants(lineno, node, f"refers to missing parent {str(parent)[:8]}")
    by_id = {node.id: (lineno, node) for items in waiting.values() for lineno, node in items}
    while waiting:  # what is left hangs off cycles of parent links: break each cycle at a node on it
        node = waiting[next(iter(waiting))][0][1]
        seen = set()
        while node.id not in seen:  # walk up until the walk repeats: that node is on the cycle
            seen.add(node.id)
            node = by_id[node.parent][1]
        items = waiting[node.parent]
        lineno, node = items.pop(next(i for i, (_, n) in enumerate(items) if n.id == node.id))
        if not items:
            del waiting[node.parent]
        add_with_descendants(lineno, node, "is in a cycle of parent links")


def _apply(tree: Tree, record: dict[str, Any], pending: list, lineno: int) -> None:
    kind = record.get("type")
    fields = {"node": ("node", dict), "tag": ("id", str), "hide": ("id", str), "cursor": ("id", str)}
    if kind in fields:
        key, want = fields[kind]
        if not isinstance(record.get(key), want):
            raise ValueError(f"a {kind} record needs {key!r} as a {'JSON object' if want is dict else 'string'}")
    if kind == "node":
        node = Node.from_record(record["node"])
        if node.parent is not None and node.parent not in tree.nodes:
            pending.append((lineno, node))
        else:
            tree.add(node)
    elif kind == "tag":
        tree.set_tag(record["id"], str(record["tag"]), bool(record.get("on", True)))
    elif kind == "hide":
        tree.set_hidden(record["id"], bool(record.get("hidden", True)))
    elif kind == "cursor":
        tree.cursor = record["id"] if record["id"] in tree.nodes else tree.cursor
    else:
        raise ValueError(f"unknown record type {kind!r}")


def _lock(handle, name: str) -> None:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SessionError(
            f"session {name!r} is open for writing in another simlab process; "
            "close it there, or open this one read-only"
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
