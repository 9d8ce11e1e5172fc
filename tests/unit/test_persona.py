"""Personas: schema validation, the shipped library, framing of transcripts, user overrides."""

import re
import textwrap

import pytest

from simlab.errors import PersonaError
from simlab.frame.framing import Framing
from simlab.frame.render import reply_prompt, reply_text
from simlab.persona.library import find, library, shipped_dir
from simlab.persona.schema import Persona, from_dict, load_file, read_yaml
from simlab.persona.writer import template, to_yaml
from simlab.session.store import SessionStore
from simlab.turns import add_frame, sample_replies, start_session

GOOD = textwrap.dedent("""\
    name: demo
    description: a demo
    speakers:
      user: Alice
      model: Bob
    frame: |
      A talk between {{user}} and {{char}}.
    sampling:
      temperature: 0.5
    """)


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path, text) -> str:
    with pytest.raises(PersonaError) as caught:
        load_file(write(tmp_path, text))
    return str(caught.value)


def test_a_good_persona_loads_and_renders(tmp_path):
    p = load_file(write(tmp_path, GOOD))
    assert (p.name, p.user, p.model, p.mode) == ("demo", "Alice", "Bob", "simulator")
    assert p.render_frame() == "A talk between Alice and Bob.\n"
    assert p.stop_strings == ("\nAlice:", "\nBob:")
    params = p.sampling_params(seed=3)
    assert (params.temperature, params.seed, params.stop) == (0.5, 3, ("\nAlice:", "\nBob:"))


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD + "frame: [unclosed\n", r"p\.yaml:\d+: invalid YAML"),
        ("name: demo\nframe: x\n  bad: indent\n", r"p\.yaml:3: invalid YAML"),
        (GOOD + "temprature: 1\n", r"p\.yaml:10: temprature: unknown key"),
        (GOOD + "greting: hi\n", r"p\.yaml:10: greting: unknown key \(did you mean 'greeting'\?\)"),
        (GOOD.replace("description: a demo", "description: [1, 2]"), r"p\.yaml:2: description: must be text"),
        (GOOD.replace("frame: |\n  A talk between {{user}} and {{char}}.\n", ""), r"frame: missing"),
        (GOOD.replace("{{user}}", "{{usr}}"), r"p\.yaml:6: frame: unknown placeholder \{\{usr\}\}"),
        (GOOD + "greeting: hi {{scenario}}\n", r"greeting: unknown placeholder \{\{scenario\}\}"),
        (GOOD + 'turn_template: "{speaker}: {txt}"\n', r"p\.yaml:10: turn_template: .* must hold \{text\}"),
        (GOOD + 'turn_template: {user: "{text}"}\n', r"turn_template: as a mapping it needs exactly"),
        (GOOD + "mode: robot\n", r"p\.yaml:10: mode: 'robot' is not one of simulator, chat"),
        (
            GOOD.replace("temperature: 0.5", "temperature: -1"),
            r"p\.yaml:9: sampling\.temperature: temperature=-1",
        ),
        (GOOD.replace("temperature: 0.5", "top_p: hot"), r"sampling\.top_p: must be a number"),
        (GOOD.replace("temperature: 0.5", "seed: 3"), r"sampling\.seed: unknown sampling key"),
        (GOOD.replace("user: Alice", "user: 7"), r"p\.yaml:4: speakers\.user: must be a one-line"),
        (GOOD.replace("user: Alice", "narrator: Alice"), r"speakers\.narrator: unknown speaker"),
        (GOOD + 'stop: [""]\n', r"stop: stop strings must not be empty"),
        (GOOD + "tags: solo\n", r"tags: must be a list of text items"),
        (GOOD.replace("name: demo", "name: ../evil"), r"name: '\.\./evil' is not a usable name"),
        ("- just\n- a list\n", r"must be a YAML mapping"),
        (GOOD + "extensions: 3\n", r"extensions: must be a mapping"),
    ],
)
def test_bad_personas_give_one_line_with_file_line_and_key(tmp_path, text, expected):
    message = error_of(tmp_path, text)
    assert re.search(expected, message), message
    assert "\n" not in message and "Traceback" not in message


def test_yaml_tags_that_construct_objects_are_refused(tmp_path):
    message = error_of(tmp_path, GOOD + "extensions: !!python/object/apply:os.system ['true']\n")
    assert "is not allowed" in message


def test_the_library_has_ten_kinds_of_document(tmp_path):
    names = set(library())
    assert {
        "interview",
        "forum-thread",
        "stage-play",
        "irc-log",
        "socratic-dialogue",
        "support-ticket",
        "letter-exchange",
        "text-adventure",
        "press-conference",
        "unix-mailing-list",
    } <= names


@pytest.mark.parametrize("name", sorted(p.stem for p in shipped_dir().glob("*.yaml")))
def test_every_shipped_persona_loads_renders_and_round_trips(tmp_path, name):
    persona = find(name)
    assert persona.name == name and persona.description and persona.sample_turn and persona.sampling
    frame = persona.render_frame()
    assert frame.strip() and "{{" not in frame and "<START>" not in frame
    params = persona.sampling_params()
    assert params.stop and all(params.stop)
    again = load_file(write(tmp_path, to_yaml(persona), f"{name}.yaml"))
    assert {**again.__dict__, "source": ""} == {**persona.__dict__, "source": ""}
    prompt = reply_prompt(_path_with_turn(persona), persona.model)
    assert prompt.startswith(frame) and persona.sample_turn.strip().split("\n")[0] in prompt
    assert not prompt.endswith(" ")  # the model writes the space before its first word


def _path_with_turn(persona):
    from simlab.session.tree import Tree

    tree = Tree()
    frame = tree.add_child(None, "frame", persona.render_frame(), framing=persona.framing().to_dict())
    user = tree.add_child(frame.id, "user", persona.sample_turn, speaker=persona.user)
    return tree.path(user.id)


def test_framing_with_one_template_per_role():
    f = Framing(user="Player", model="Narrator", turn_template={"user": "> {text}\n", "model": "{text}\n\n"})
    assert f.label("model", "Narrator") == "" and f.label("user", "Player") == ">"
    assert f.default_stops() == ("\n>",)
    assert f.turn("user", "Player", "go north") == "> go north\n"
    assert reply_text("You see a door.\n", f) == "You see a door."


def test_labels_leave_the_space_to_the_model_and_reply_text_removes_it():
    f = Framing(user="Q", model="A", turn_template="{speaker}: {text}\n")
    assert f.label("model", "A") == "A:" and f.lead() == " "
    assert reply_text(" Yes.", f) == "Yes." and reply_text("Yes.", f) == "Yes."
    assert Framing(turn_template="{speaker}:\n{text}\n").lead() == ""


def test_a_user_persona_overrides_a_shipped_one_and_files_work_by_path(tmp_path, isolated_home):
    (isolated_home / "personas").mkdir(parents=True)
    (isolated_home / "personas" / "interview.yaml").write_text(GOOD.replace("name: demo", "name: interview"))
    (isolated_home / "personas" / "mine.yaml").write_text(GOOD.replace("name: demo", "name: mine"))
    assert find("interview").user == "Alice"  # yours wins
    assert find("mine").model == "Bob" and "stage-play" in library()
    path = write(tmp_path, GOOD)
    assert find(str(path)).name == "demo"
    with pytest.raises(PersonaError, match="unknown persona 'nope'; known: .*interview"):
        find("nope")


def test_the_new_template_is_a_valid_persona(tmp_path):
    data, lines = read_yaml(template("demo", "demo.yaml"), "demo.yaml")
    p = from_dict(data, "demo.yaml", lines)
    assert p.render_frame().startswith("The following is the transcript of an interview with Guest.")
    assert "Interviewer: How did you start?" in p.render_frame()


def test_a_session_records_its_framing_and_renders_by_it(tmp_path, fake_engine):
    store = SessionStore(tmp_path / "sessions")
    persona = Persona(
        name="game",
        frame="A game.\n\n",
        user="Player",
        model="Narrator",
        turn_template={"user": "> {text}\n", "model": "{text}\n\n"},
    )
    with start_session(store, persona, "game") as s:
        frame = s.tree.roots[0]
        assert frame.persona == "game" and frame.framing["turn_template"]["user"] == "> {text}\n"
        user = s.add_child(s.tree.cursor, "user", "open door", speaker=persona.user)
        [reply] = sample_replies(
            fake_engine, s, user.id, persona.sampling_params(seed=1, max_new_tokens=8), speaker=persona.model
        )
        assert reply.persona == "game" and reply.params["stop"] == ["\n>"]
        assert reply_prompt(s.tree.path(user.id), persona.model) == "A game.\n\n> open door\n"
    again = SessionStore(tmp_path / "sessions").open("game", read_only=True)
    from simlab.frame.render import render_path

    assert render_path(again.tree.path(reply.id)).endswith(f"> open door\n{reply.text}\n\n")


def test_greetings_become_model_turns_and_alternates_siblings(tmp_path):
    store = SessionStore(tmp_path / "sessions")
    persona = Persona(
        name="g", frame="F\n", greeting="Hi {{user}}.", alternate_greetings=("Yo.",), user="Ann"
    )
    with store.create("g") as s:
        first = add_frame(s, persona)
        assert first.text == "Hi Ann." and [n.text for n in s.tree.siblings(first.id)] == ["Hi Ann.", "Yo."]


def test_inserts_are_read_after_the_conversation_and_survive_the_writer():
    import yaml as _yaml

    from simlab.errors import PersonaError as _PersonaError
    from simlab.frame.render import reply_prompt
    from simlab.persona.schema import from_dict as _from_dict
    from simlab.persona.writer import to_yaml as _to_yaml
    from simlab.turns import unsaved_path

    data = {
        "name": "ins",
        "frame": "A talk.\n\n",
        "speakers": {"user": "Q", "model": "A"},
        "inserts": [{"text": "[{{char}} answers briefly]", "depth": 0}],
    }
    persona = _from_dict(data)
    prompt = reply_prompt(unsaved_path(persona, [("why?", None)]), persona.model)
    assert prompt == "A talk.\n\nQ: why?\n[A answers briefly]\nA:"
    assert _from_dict(_yaml.safe_load(_to_yaml(persona))) == persona
    with pytest.raises(_PersonaError, match="inserts: item 1: depth must be a whole number"):
        _from_dict({**data, "inserts": [{"text": "x", "depth": -1}]})


def test_a_persona_may_name_the_steering_its_replies_take(tmp_path):
    one = from_dict({"name": "k", "frame": "F.", "steer": "keeper:0.5@10-15"})
    assert one.steer == ("keeper:0.5@10-15",)
    two = from_dict({"name": "k", "frame": "F.", "steer": ["keeper:0.5", " calm:1 "]})
    assert two.steer == ("keeper:0.5", "calm:1")
    again = load_file(write(tmp_path, to_yaml(two), "k.yaml"))
    assert (
        again.steer == two.steer and "steer:" in to_yaml(two) and "steer:" not in to_yaml(find("interview"))
    )
    for bad in (3, ["keeper", ""], {"vector": "keeper"}, "a\nb"):
        with pytest.raises(PersonaError, match="steer: a steering vector as --steer takes it"):
            from_dict({"name": "k", "frame": "F.", "steer": bad})
