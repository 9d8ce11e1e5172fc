"""Property-based fuzzing (hypothesis) of what reads untrusted input: the session loader, the persona
loader, the character-card and Loom importers, and the stop-string matcher. Runs in CI: 5,800 cases
in all, about a minute and a half here."""

import json
import string

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from simlab.engine.textstream import TextTracker, dangling_label
from simlab.errors import SessionError, SimlabError
from simlab.persona.schema import Persona, from_dict, read_yaml
from simlab.persona.writer import to_yaml
from simlab.session.journal import load_tree, state_records
from simlab.session.tree import ROLES

FUZZ = settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- the session loader ---------------------------------------------------------------------------

json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=8)
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
ids = st.sampled_from([f"n{i}" for i in range(12)])


@st.composite
def node_record(draw):
    node = {
        "id": draw(ids),
        "parent": draw(st.one_of(st.none(), ids)),
        "role": draw(st.sampled_from(ROLES)),
        "text": draw(st.text(max_size=20)),
    }
    for key in draw(
        st.lists(
            st.sampled_from(
                [
                    "seed",
                    "params",
                    "token_ids",
                    "logprobs",
                    "tags",
                    "hidden",
                    "window",
                    "speaker",
                    "origin",
                    "top",
                    "created",
                    "bogus",
                ]
            ),
            max_size=3,
            unique=True,
        )
    ):
        node[key] = draw(json_value)
    return {"type": "node", "node": node}


record = st.one_of(
    node_record(),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["tag", "hide", "cursor"]), "id": st.one_of(ids, json_value)},
        optional={"tag": json_value, "on": json_value, "hidden": json_value},
    ),
    st.dictionaries(st.text(max_size=6), json_value, max_size=4),
)
line = st.one_of(
    record.map(json.dumps),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    record.map(json.dumps).flatmap(lambda s: st.integers(0, len(s)).map(lambda k: s[:k])),
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def check_tree(tree) -> None:
    for node in tree.nodes.values():
        assert node.parent is None or node.parent in tree.nodes
        assert tree.path(node.id)[0].parent is None  # a root: no cycle survives loading
    assert tree.cursor is None or tree.cursor in tree.nodes


@settings(FUZZ, max_examples=1000)
@given(
    header=st.sampled_from(
        [{"type": "session", "schema": 3, "name": "x"}, {"type": "session", "schema": 1, "name": "x"}]
    ),
    lines=st.lists(line, max_size=25),
)
def test_the_session_loader_never_crashes_and_never_keeps_a_broken_tree(scratch, header, lines):
    path = scratch / "x.jsonl"
    path.write_text(
        "\n".join([json.dumps(header)] + [ln.replace("\n", " ") for ln in lines]) + "\n",
        encoding="utf-8",
        errors="surrogatepass",
    )
    try:
        tree, problems = load_tree(path)
    except SessionError:
        return
    check_tree(tree)
    rewritten = path.with_name("again.jsonl")  # what loaded saves and loads back the same
    rewritten.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in state_records("x", tree)))
    again, again_problems = load_tree(rewritten)
    assert not again_problems
    assert {n.id: n.to_record() for n in again.nodes.values()} == {
        n.id: n.to_record() for n in tree.nodes.values()
    }


@settings(FUZZ, max_examples=500)
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_are_a_session_error_or_a_tree(scratch, raw):
    path = scratch / "raw.jsonl"
    path.write_bytes(raw)
    try:
        tree, _ = load_tree(path)
    except SessionError:
        return
    check_tree(tree)


# -- the persona loader ---------------------------------------------------------------------------

KEYS = [
    "name",
    "description",
    "frame",
    "greeting",
    "alternate_greetings",
    "example_dialogue",
    "sample_turn",
    "speakers",
    "turn_template",
    "stop",
    "sampling",
    "mode",
    "tags",
    "personality",
    "scenario",
    "system_prompt",
    "extensions",
    "version",
    "creator",
    "bogus",
]
safe_text = st.text(alphabet=string.ascii_letters + string.digits + " .,:{}\n", max_size=30)
persona_value = st.one_of(
    json_value,
    safe_text,
    st.fixed_dictionaries({}, optional={"user": safe_text, "model": safe_text}),
    st.fixed_dictionaries(
        {},
        optional={
            "temperature": st.floats(-1, 3),
            "top_p": st.floats(-0.5, 1.5),
            "max_tokens": st.integers(-5, 5000),
            "top_k": st.integers(-1, 100),
        },
    ),
    st.sampled_from(["{speaker}: {text}\n", "{text}", "{nope}", "{{char}} says", "simulator", "chat"]),
)


@FUZZ
@given(data=st.dictionaries(st.sampled_from(KEYS), persona_value, max_size=8))
def test_the_persona_loader_accepts_or_names_the_problem(data):
    text = yaml.safe_dump(data, allow_unicode=True)
    try:
        parsed, lines = read_yaml(text, "fuzz.yaml")
        persona = from_dict(parsed, source="fuzz.yaml", lines=lines, default_name="fuzz")
    except SimlabError as exc:
        assert "\n" not in str(exc).strip() and str(exc).startswith("fuzz.yaml")
        return
    assert isinstance(persona, Persona)
    persona.render_frame()
    persona.sampling_params()
    parsed, lines = read_yaml(to_yaml(persona), "fuzz.yaml")
    again = from_dict(parsed, source="fuzz.yaml", lines=lines, default_name="fuzz")
    assert again == persona  # what loads, writes back to an equal persona


@settings(FUZZ, max_examples=500)
@given(text=st.text(max_size=200))
def test_arbitrary_text_is_a_persona_or_one_line(text):
    try:
        parsed, lines = read_yaml(text, "fuzz.yaml")
        from_dict(parsed, source="fuzz.yaml", lines=lines, default_name="fuzz")
    except SimlabError as exc:
        assert "\n" not in str(exc).strip()


# -- the stop-string matcher ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


STOP_ALPHABET = "ab\n é"


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_stop_matcher_releases_exactly_the_text_before_the_first_stop(tokenizer, data):
    vocab = sorted(tokenizer.get_vocab().values())
    # tokens that decode to the stop strings' characters, so stops do occur, and any others
    pieces = [i for i in vocab if set(tokenizer.decode([i])) <= set(STOP_ALPHABET + "\ufffd")]
    token = st.one_of(st.sampled_from(pieces), st.sampled_from(vocab))
    ids = data.draw(st.lists(token, max_size=40))
    prompt = data.draw(st.lists(st.sampled_from(vocab), min_size=1, max_size=6))
    stops = data.draw(st.lists(st.text(alphabet=STOP_ALPHABET, min_size=1, max_size=4), max_size=3))
    tracker = TextTracker(tokenizer, prompt, stops)
    released = ""
    fed = 0
    for token_id in ids:
        released += tracker.add(token_id)
        fed += 1
        assert not any(s in released for s in stops)  # a stop string is never shown
        assert tracker.text.startswith(released)  # what was shown never changes
        if tracker.stop_string is not None:
            break
    released += tracker.finish()
    text = tracker.text
    if tracker.stop_string is not None:
        first = min(text.find(s) for s in stops if s in text)
        assert released == text[:first] and text[first:].startswith(tracker.stop_string)
        before = TextTracker(tokenizer, prompt, stops)  # and it stopped at the first token that completed one
        for token_id in ids[: fed - 1]:
            before.add(token_id)
        assert before.stop_string is None
    else:  # all of it, but a last line that is only a stop's start (a cut-off label): never more
        cut = len(text) - dangling_label(text, stops)
        assert released == text[:cut] and not any(s in text for s in stops)
        assert cut == len(text) or text[cut] == "\n"  # what is left out starts a line


# -- the character card and Loom importers -------------------------------------------------------

card_text = st.one_of(
    st.none(),
    st.integers(),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0xDFFF), max_size=30),
    st.sampled_from(
        ["{{char}}", "<BOT>", "{{random:a,b}}", "{{// x}}", "{{reverse:ab}}", "{{x_1}}", "\ud83d"]
    ),
)
CARD_KEYS = [
    "name",
    "description",
    "personality",
    "scenario",
    "first_mes",
    "mes_example",
    "creator",
    "character_version",
    "nickname",
    "alternate_greetings",
    "tags",
    "system_prompt",
    "context",
]


@settings(FUZZ, max_examples=400)
@given(
    card=st.dictionaries(st.sampled_from(CARD_KEYS), card_text, max_size=8),
    wrapped=st.booleans(),
)
def test_the_card_importer_gives_a_persona_that_renders_or_one_line(card, wrapped):
    from simlab.persona.cards import convert

    data = {"spec": "chara_card_v2", "data": card} if wrapped else card
    try:
        _, mapping = convert(data, "card.json")
        mapping["name"] = "fuzzed"
        persona = from_dict(mapping, source="card.json")
    except SimlabError as exc:
        assert "\n" not in str(exc)
        return
    persona.render_frame().encode("utf-8")  # no lone surrogate survives
    for greeting in persona.greetings():
        greeting.encode("utf-8")
    from_dict(yaml.safe_load(to_yaml(persona)), source="back")  # what the import writes loads back


loom_node = st.recursive(
    st.fixed_dictionaries(
        {"text": st.text(max_size=10)},
        optional={"id": st.one_of(st.text(max_size=4), json_value), "meta": json_value},
    ),
    lambda inner: st.fixed_dictionaries(
        {"text": st.text(max_size=10), "children": st.lists(inner, max_size=3)},
        optional={"tags": json_value, "bookmark": json_value, "chapter_id": json_value},
    ),
    max_leaves=10,
)


@settings(FUZZ, max_examples=400)
@given(
    shape=st.one_of(
        loom_node,
        st.lists(loom_node, max_size=3),
        st.fixed_dictionaries(
            {"root": loom_node}, optional={"canonical": json_value, "selected_node_id": json_value}
        ),
    )
)
@example(shape=[{"text": "", "id": "\n"}, {"text": "", "id": "\n"}])  # a repeated id with a line break
def test_the_loom_importer_gives_a_tree_that_exports_or_one_line(shape):
    from simlab.session.loom import loom_to_tree, to_loom

    try:
        tree = loom_to_tree(shape, "tree.json")
    except SessionError as exc:
        assert "\n" not in str(exc)
        return
    json.dumps(to_loom(tree))  # what it writes is JSON again
    assert all(tree.path(n)[0].parent is None for n in tree.nodes)
