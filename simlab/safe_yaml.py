"""Reading YAML and JSON that other people wrote: no object construction, bounded size and expansion.

SafeLoader already refuses tags that construct Python objects. What it does not refuse: alias
bombs (nine levels of ten aliases expand to 10^9 nodes the moment anything walks the data),
nesting deep enough to exhaust the recursion limit, and files large enough to take minutes in the
pure-Python parser. Each of those is a `BadInput` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from simlab.errors import BadInput

MAX_BYTES = 4 * 1024 * 1024  # a persona, spec or config file; frames must fit a model's context anyway
MAX_NODES = 200_000  # scalars, lists and mappings after expanding aliases, beyond 10 per distinct one


CAP = 10**12  # sizes stop growing here, so an alias bomb's arithmetic stays small


def read_text(path: Path, what: str, limit: int = MAX_BYTES) -> str:
    """A UTF-8 text file's contents, refusing one larger than `limit` before reading it."""
    try:
        return read_bytes(path, what, limit).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text (byte {exc.start}); is this the right file?") from None


def read_bytes(path: Path, what: str, limit: int) -> bytes:
    """A file's bytes, refusing one larger than `limit` before reading it."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise BadInput(
                f"{path}: {size / 2**20:.1f} MB is larger than simlab reads for {what} "
                f"({limit / 2**20:.0f} MB); is this the right file?"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: is a folder; give a file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise BadInput(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """How many nodes the document has with every alias expanded (memoised, no recursion; capped),
    and how many distinct ones."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_stack: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        kids = _children(node)
        if children_done or not kids:
            sizes[id(node)] = min(1 + sum(sizes.get(id(k), 1) for k in kids), CAP)
            on_stack.discard(id(node))
            continue
        if id(node) in on_stack:  # a recursive alias: the constructor builds a cycle, size stays finite
            sizes[id(node)] = 1
            continue
        on_stack.add(id(node))
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes[id(root)], len(sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def compose_and_load(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """Parse YAML (JSON is YAML) once: the data and its node tree (for line numbers)."""
    try:
        loader = yaml.SafeLoader(text)  # reads the whole stream: a NUL or other control character fails here
    except yaml.YAMLError as exc:
        raise BadInput(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        expanded, distinct = _expanded_size(node)
        if expanded > MAX_NODES + 10 * distinct:
            raise BadInput(
                f"{source}: the YAML expands to more than {MAX_NODES:,} values through its aliases "
                "(an alias bomb?); write the values out"
            )
        return loader.construct_document(node), node
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        tag = getattr(exc, "problem", "") or ""
        tag = tag[tag.find("'") :] if "'" in tag else "a tag"
        raise BadInput(
            f"{where}: YAML tag {tag} is not allowed; simlab reads plain YAML (no tags that build "
            "objects): remove it"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise BadInput(f"{where}: invalid YAML: {exc.problem or exc.context}; fix the syntax there") from None
    except yaml.YAMLError as exc:
        raise BadInput(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise BadInput(f"{source}: nested too deeply to read") from None
    finally:
        loader.dispose()
