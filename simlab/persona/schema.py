"""Personas: the typed, validated YAML that sets up a simulation, and how it frames a transcript.

A persona says who speaks (the user and model labels), in what kind of document (the frame),
how each turn is written (the turn template) and where a reply ends (stop strings). Its frame
template may use {{char}} (the model's label), {{user}} (the user's label) and the persona's own
text fields ({{description}}, {{personality}}, {{scenario}}, {{system_prompt}},
{{example_dialogue}}), so cards imported from other tools keep their fields apart.
Imports no torch: listing and validating personas must be instant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from simlab import safe_yaml
from simlab.engine.params import BY_KEY, SamplingParams, from_keys
from simlab.errors import BadInput, PersonaError, SamplingError
from simlab.frame.framing import DEFAULT_TURN, MODES, Framing

TEXT_FIELDS = ("description", "personality", "scenario", "system_prompt", "example_dialogue")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Persona:
    name: str
    frame: str
    user: str = "User"
    model: str = "Assistant"
    description: str = ""
    tags: tuple[str, ...] = ()
    mode: str = "simulator"
    turn_template: str | dict[str, str] = DEFAULT_TURN  # or one per role: {user: ..., model: ...}
    greeting: str = ""
    alternate_greetings: tuple[str, ...] = ()
    example_dialogue: str = ""
    sample_turn: str = ""  # a user turn to try the persona with (`simlab personas render`, tests)
    stop: tuple[str, ...] | None = None  # None: either speaker's label on a new line
    sampling: dict[str, Any] = field(default_factory=dict)
    steer: tuple[str, ...] = ()  # --steer specs its replies are steered with (read by simlab.steer)
    # carried over from other formats; used only where the frame template names them
    personality: str = ""
    scenario: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""  # read after the conversation, just before each reply
    # more text read after the conversation: (text, depth), depth N = before the last N turns
    inserts: tuple[tuple[str, int], ...] = ()
    creator: str = ""
    version: str = ""
    extensions: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # where it was loaded from (not a YAML key)

    # -- rendering ----------------------------------------------------------------------------
    def fill(self, text: str) -> str:
        """Replace {{char}} and {{user}} with the speaker labels."""
        names = {"char": self.model, "user": self.user}
        return PLACEHOLDER.sub(lambda m: names.get(m.group(1).lower(), m.group(0)), text)

    def render_frame(self) -> str:
        """The frame text the model reads before the first turn."""

        def value(match: re.Match) -> str:
            key = match.group(1).lower()
            if key == "example_dialogue":
                return self.render_examples()
            return self.fill(getattr(self, key)) if key in TEXT_FIELDS else match.group(0)

        return self.fill(PLACEHOLDER.sub(value, self.frame))

    def render_examples(self) -> str:
        """Example dialogue with placeholders filled; Tavern's <START> separators become blank lines."""
        lines = [("" if ln.strip() == "<START>" else ln) for ln in self.example_dialogue.splitlines()]
        return self.fill("\n".join(lines).strip("\n"))

    def framing(self) -> Framing:
        """How this persona's transcripts are written and where its replies end."""
        after = ((self.post_history_instructions, 0),) if self.post_history_instructions.strip() else ()
        return Framing(self.user, self.model, self.turn_template, self.mode, self.stop, after + self.inserts)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return self.framing().stops()

    def greetings(self) -> list[str]:
        return [self.fill(g) for g in (self.greeting, *self.alternate_greetings) if g]

    def sampling_params(self, **overrides: Any) -> SamplingParams:
        """This persona's default sampling with its stop strings, then the overrides on top."""
        return SamplingParams(**{"stop": self.stop_strings, **from_keys(self.sampling, ""), **overrides})


# -- loading and validation -------------------------------------------------------------------


def _line_map(node: yaml.Node, prefix: tuple = (), depth: int = 0) -> dict[tuple, int]:
    """1-based line of each key, for messages; two levels deep (anchors cannot blow it up)."""
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode) and depth < 2:
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                path = prefix + (key.value,)
                lines[path] = key.start_mark.line + 1
                lines.update(_line_map(value, path, depth + 1))
    return lines


def read_yaml(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """Safe-load YAML (bounded: see safe_yaml); errors name the file and line."""
    try:
        data, node = safe_yaml.compose_and_load(text, source)
    except BadInput as exc:
        raise PersonaError(str(exc)) from None
    return data, (_line_map(node) if node is not None else {})


def read_file(path: Path, what: str) -> tuple[Any, dict[tuple, int]]:
    """read_yaml of a file, refusing one too large to be what it claims to be."""
    try:
        text = safe_yaml.read_text(path, what)
    except BadInput as exc:
        raise PersonaError(str(exc)) from None
    return read_yaml(text, str(path))


def load_file(path: Path | str) -> Persona:
    """A persona from a YAML (or JSON) file, validated; the file name is its default name."""
    path = Path(path)
    data, lines = read_file(path, "a persona")
    return from_dict(data, source=str(path), lines=lines, default_name=path.stem)


_STR_FIELDS = (
    "name",
    "description",
    "frame",
    "greeting",
    "example_dialogue",
    "sample_turn",
    "personality",
    "scenario",
    "system_prompt",
    "post_history_instructions",
    "creator",
)


def from_dict(
    data: Any,
    source: str = "<persona>",
    lines: dict[tuple, int] | None = None,
    default_name: str | None = None,
) -> Persona:
    """Validate a parsed persona mapping: unknown keys, wrong types and bad templates are errors."""
    lines = lines or {}

    def fail(key: tuple | str, problem: str) -> PersonaError:
        path = key if isinstance(key, tuple) else (key,)
        line = lines.get(path) or lines.get(path[:1])
        where = f"{source}:{line}" if line else source
        return PersonaError(f"{where}: {'.'.join(path)}: {problem}")

    if not isinstance(data, dict):
        raise PersonaError(
            f"{source}: a persona must be a YAML mapping of keys to values, "
            f"not {type(data).__name__}; see `simlab personas new NAME` for a template"
        )
    known = {f.name for f in fields(Persona)} - {"source", "user", "model"} | {"speakers"}
    for key in data:
        if key not in known:
            close = [k for k in sorted(known) if k.startswith(str(key)[:3])]
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(sorted(known))}"
            raise fail(str(key), f"unknown key{hint}")
    values: dict[str, Any] = {}
    for key in _STR_FIELDS:
        if key in data:
            if not isinstance(data[key], str):
                raise fail(key, f"must be text, not {type(data[key]).__name__}")
            values[key] = data[key]
    if "version" in data:
        if not isinstance(data["version"], (str, int, float)) or isinstance(data["version"], bool):
            raise fail("version", "must be text")
        values["version"] = str(data["version"])
    values.setdefault("name", default_name or "")
    if not NAME.fullmatch(values["name"]):
        raise fail(
            "name",
            f"{values['name']!r} is not a usable name: use letters, digits, '-', '_' or '.' "
            "(up to 64, starting with a letter or digit)",
        )
    if "frame" not in values:
        raise fail("frame", "missing: every persona needs a frame (the text before the first turn)")
    if "steer" in data:  # (NAME:STRENGTH@BLOCKS, as --steer: the vectors are read when it is used)
        items = data["steer"] if isinstance(data["steer"], list) else [data["steer"]]
        if not all(isinstance(i, str) and i.strip() and "\n" not in i for i in items):
            raise fail("steer", "a steering vector as --steer takes it (keeper:0.5@10-15), or a list of them")
        values["steer"] = tuple(i.strip() for i in items)
    for key in ("tags", "alternate_greetings", "stop"):
        if key in data:
            items = data[key]
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise fail(key, "must be a list of text items")
            if key == "stop" and any(s == "" for s in items):
                raise fail(key, "stop strings must not be empty")
            values[key] = tuple(items)
    speakers = data.get("speakers", {})
    if not isinstance(speakers, dict):
        raise fail("speakers", "must be a mapping with keys user and model")
    for key, label in speakers.items():
        if key not in ("user", "model"):
            raise fail(("speakers", str(key)), "unknown speaker; use user and model")
        if not isinstance(label, str) or not label.strip() or "\n" in label:
            raise fail(("speakers", key), "must be a one-line, non-empty label")
        values[key] = label
    mode = data.get("mode", "simulator")
    if mode not in MODES:
        raise fail("mode", f"{mode!r} is not one of {', '.join(MODES)}")
    values["mode"] = mode
    template = data.get("turn_template", DEFAULT_TURN)
    if isinstance(template, dict):
        if set(template) != {"user", "model"}:
            raise fail("turn_template", "as a mapping it needs exactly the keys user and model")
        for role, each in template.items():
            _check_template(each, ("turn_template", role), fail)
        values["turn_template"] = dict(template)
    else:
        values["turn_template"] = _check_template(template, "turn_template", fail)
    if "inserts" in data:
        values["inserts"] = _inserts(data["inserts"], fail)
    for key in ("extensions",):
        if key in data:
            if not isinstance(data[key], dict):
                raise fail(key, "must be a mapping")
            values[key] = data[key]
    sampling = data.get("sampling", {})
    if not isinstance(sampling, dict):
        raise fail("sampling", f"must be a mapping of {', '.join(BY_KEY)}")
    for key, value in sampling.items():
        try:
            from_keys({key: value}, "")
        except SamplingError as exc:
            raise fail(("sampling", str(key)), str(exc).split(": ", 1)[1]) from None
    values["sampling"] = dict(sampling)
    imported = (values.get("extensions") or {}).get("simlab_import") or {}
    literal = [m.lower() for m in imported.get("literal_macros") or [] if isinstance(m, str)]
    texts = {
        key: values.get(key, "") for key in ("frame", *TEXT_FIELDS, "greeting", "post_history_instructions")
    }
    texts |= {f"inserts[{i + 1}]": text for i, (text, _) in enumerate(values.get("inserts", ()))}
    for key, text in texts.items():
        for match in PLACEHOLDER.finditer(text):
            allowed = ("char", "user", *TEXT_FIELDS) if key == "frame" else ("char", "user")
            allowed += tuple(literal)  # a card's macros simlab keeps as literal text
            if match.group(1).lower() not in allowed:
                raise fail(
                    key,
                    f"unknown placeholder {match.group(0)}; use "
                    f"{', '.join('{{' + a + '}}' for a in allowed)}",
                )
    return Persona(source=source, **values)


def _inserts(items: Any, fail) -> tuple[tuple[str, int], ...]:
    """`inserts: [{text: ..., depth: N}]`: text read after the conversation, N turns from its end."""
    if not isinstance(items, list):
        raise fail("inserts", "must be a list of {text, depth} mappings")
    out = []
    for i, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or set(item) - {"text", "depth"}
            or not isinstance(item.get("text"), str)
        ):
            raise fail("inserts", f"item {i + 1} must be a mapping with text (and depth)")
        depth = item.get("depth", 0)
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise fail(
                "inserts", f"item {i + 1}: depth must be a whole number from 0 (just before the reply)"
            )
        out.append((item["text"], depth))
    return tuple(out)


def _check_template(template: Any, key: tuple | str, fail) -> str:
    if not isinstance(template, str):
        raise fail(key, "must be text (or a mapping of user and model templates)")
    stray = re.sub(r"\{speaker\}|\{text\}", "", template)
    if template.count("{text}") != 1 or "{" in stray or "}" in stray:
        raise fail(
            key,
            f"{template!r} must hold {{text}} exactly once, optionally {{speaker}}, "
            'and no other braces; e.g. "{speaker}: {text}\\n"',
        )
    return template
