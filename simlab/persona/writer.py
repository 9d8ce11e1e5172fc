"""Personas written back as YAML: a persona as a file that loads to an equal one, and the commented
template `simlab personas new` writes."""

from __future__ import annotations

from typing import Any

import yaml

from simlab.persona.schema import Persona


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    lines = value.split("\n")
    block = len(lines) > 2 and not value.startswith(("\n", " ")) and not any(ln.endswith(" ") for ln in lines)
    style = "|" if block else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(persona: Persona) -> str:
    """The persona as YAML that loads back to an equal persona; defaults are left out."""
    default = Persona(name=persona.name, frame="")
    data: dict[str, Any] = {"name": persona.name}
    if persona.description:
        data["description"] = persona.description
    if persona.tags:
        data["tags"] = list(persona.tags)
    if persona.mode != default.mode:
        data["mode"] = persona.mode
    data["speakers"] = {"user": persona.user, "model": persona.model}
    data["frame"] = persona.frame
    for key in (
        "turn_template",
        "greeting",
        "alternate_greetings",
        "example_dialogue",
        "sample_turn",
        "stop",
        "sampling",
        "steer",
        "personality",
        "scenario",
        "system_prompt",
        "post_history_instructions",
        "inserts",
        "creator",
        "version",
        "extensions",
    ):
        value = getattr(persona, key)
        if key == "inserts" and value:
            data[key] = [{"text": text, "depth": depth} for text, depth in value]
        elif value != getattr(default, key):
            data[key] = list(value) if isinstance(value, tuple) else value
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


TEMPLATE = """\
# A simlab persona: the document the model believes it is continuing.
# Check it with `simlab personas validate {path}` and see the exact prompt with
# `simlab personas render {name}`.
name: {name}
description: One line saying who the model plays and in what kind of document.
tags: [example]
# simulator: the model continues a transcript (base models); chat: the model's chat template
mode: simulator
speakers:
  user: Interviewer     # {{{{user}}}} in the texts below
  model: Guest          # {{{{char}}}} in the texts below
# The text before the first turn. Placeholders: {{{{char}}}}, {{{{user}}}}, {{{{description}}}},
# {{{{personality}}}}, {{{{scenario}}}}, {{{{system_prompt}}}}, {{{{example_dialogue}}}}.
frame: |
  The following is the transcript of an interview with {{{{char}}}}.

  {{{{example_dialogue}}}}

# How each turn is written: {{speaker}} and {{text}}. Or one per role:
#   turn_template: {{user: "> {{text}}\\n", model: "{{text}}\\n\\n"}}
turn_template: "{{speaker}}: {{text}}\\n"
# Optional: the model's first turn (and alternatives, kept as sibling branches).
greeting: Thanks for having me.
alternate_greetings: []
# Optional: turns shown in the frame where it says {{{{example_dialogue}}}}.
example_dialogue: |
  {{{{user}}}}: How did you start?
  {{{{char}}}}: By accident, like most things worth doing.
# A user turn to try the persona with (`simlab personas render`).
sample_turn: What are you working on now?
# Where a reply ends. Default: either speaker's label on a new line.
# stop: ["\\nInterviewer:"]
# Sampling defaults; flags and /set override them.
sampling:
  temperature: 0.8
  top_p: 0.95
  max_tokens: 120
"""


def template(name: str, path: str) -> str:
    return TEMPLATE.format(name=name, path=path)
