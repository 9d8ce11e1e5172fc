"""Files from other people: each hostile input is one clear line and exit 2 (or a reported, skipped
record), never a traceback, never code run, and nothing already saved is lost."""

import base64
import json
import shutil
import struct
import time
import zlib

import pytest
from conftest import run_cli

from simlab.persona.cards import PNG_SIGNATURE


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


# -- persona YAML ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "frame: !!python/object/apply:os.system ['touch {marker}']\n",
        "frame: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n",
        "frame: !!python/name:os.system\n",
        "frame: !custom {{a: 1}}\n",
    ],
)
def test_yaml_tags_never_construct_objects(capsys, tmp_path, payload):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.yaml"
    path.write_text(
        "name: evil\nspeakers: {user: A, model: B}\ngreeting: hi\n" + payload.format(marker=marker)
    )
    code, _, err = run_cli(capsys, "personas", "show", path)
    assert_one_line_error(code, err, "evil.yaml:4", "is not allowed")
    assert not marker.exists()


def billion_laughs(levels=9) -> str:
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + f"\nname: bomb\nframe: hi\nextensions: *a{levels}\n"


def test_an_alias_bomb_is_refused_quickly(capsys, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "personas", "show", path)
    assert_one_line_error(code, err, "bomb.yaml", "alias")
    assert time.perf_counter() - started < 10  # it was not expanded


def test_aliases_that_stay_small_still_work(capsys, tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("name: anchors\nframe: &f 'A talk.\n\n'\nscenario: *f\n")
    code, out, err = run_cli(capsys, "personas", "show", path)
    assert code == 0, err


def test_a_50_mb_field_is_refused_before_parsing(capsys, tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "w") as f:
        f.write('name: huge\nframe: "')
        f.write("x" * (50 * 2**20))
        f.write('"\n')
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "personas", "show", path)
    assert_one_line_error(code, err, "huge.yaml", "50.0 MB", "larger than")
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("name: x\nframe: hi\n  bad indent: [\n", "invalid YAML"),
        ("\x00\x01binary", "special characters are not allowed"),
        ("- a list\n- not a mapping\n", "mapping"),
    ],
)
def test_malformed_persona_files(capsys, tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, _, err = run_cli(capsys, "personas", "show", path)
    assert_one_line_error(code, err, "bad.yaml", needle)


def test_a_hostile_config_file_is_one_line(capsys, isolated_home):
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.yaml").write_text(billion_laughs().replace("extensions:", "model:"))
    code, _, err = run_cli(capsys, "models")
    assert_one_line_error(code, err, "config.yaml", "alias", "delete the file")


def test_a_hostile_compare_spec_is_one_line(capsys, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("turns: !!python/object/apply:os.getcwd []\n")
    code, _, err = run_cli(capsys, "compare", path)
    assert_one_line_error(code, err, "spec.yaml:1", "tag")


# -- character cards -------------------------------------------------------------------------


def png(*chunks: tuple[bytes, bytes]) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE + chunk(b"IHDR", ihdr) + b"".join(chunk(k, b) for k, b in chunks) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("list.json", b'[{"name": "x"}]', "must hold an object"),
        ("v2-data-list.json", b'{"spec": "chara_card_v2", "data": ["x"]}', "data"),
        ("name-int.json", b'{"name": 5, "description": "d", "first_mes": "hi"}', "name"),
        ("first-mes-list.json", b'{"name": "x", "first_mes": ["a", {"b": 1}]}', "first_mes"),
        ("deep.json", b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        ("not-utf8.json", b'{"name": "\xff\xfe"}', "UTF-8"),
        ("truncated.png", png((b"tEXt", b"chara\0" + base64.b64encode(b'{"name": "x"}')))[:40], "truncated"),
        ("bad-base64.png", png((b"tEXt", b"chara\0!!!not base64!!!")), "not base64 JSON"),
        ("bomb.png", png((b"zTXt", b"chara\0\0" + zlib.compress(b"A" * (80 * 2**20), 9))), "inflates past"),
        (
            "deep.png",
            png((b"tEXt", b"chara\0" + base64.b64encode(b"[" * 100_000 + b"]" * 100_000))),
            "nested too deeply",
        ),
    ],
)
def test_bad_cards_are_one_line(capsys, tmp_path, isolated_home, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    code, _, err = run_cli(capsys, "personas", "import", path)
    assert_one_line_error(code, err, name, needle)
    assert not (isolated_home / "personas").exists() or not list((isolated_home / "personas").iterdir())


# -- session files ---------------------------------------------------------------------------


def header(schema=3):
    return json.dumps({"type": "session", "schema": schema, "name": "x"})


def node(node_id, parent=None, role="user", text="t", **extra):
    return json.dumps(
        {"type": "node", "node": {"id": node_id, "parent": parent, "role": role, "text": text, **extra}}
    )


def write_session(store, name, lines) -> bytes:
    store.folder.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(lines) + "\n").encode()
    store.path(name).write_bytes(data)
    return data


def test_wrong_types_are_reported_and_skipped_and_the_file_is_kept(capsys, store):
    lines = [
        header(),
        node("a", role="frame"),
        node("b", "a", params="not a dict"),
        node("c", "a", seed="7"),
        node("d", "a", role=5),
        node("e", "a", token_ids="abc"),
        node("f", "a", tags=3),
        node("g", "a", hidden="yes"),
        node("h", "a", window=[1]),
        node("i", "a", created="today"),
        node("j", "a", top=5),
        json.dumps({"type": "node", "node": "a string"}),
        json.dumps({"type": "tag", "id": ["x"]}),
        json.dumps({"type": "cursor", "id": {"a": 1}}),
        json.dumps({"type": "teleport"}),
        node("ok", "a"),
    ]
    before = write_session(store, "types", lines)
    code, out, err = run_cli(capsys, "sessions", "show", "types", "--sessions-dir", store.folder)
    assert code == 0
    assert err.count("record skipped") == 13 and "Traceback" not in err
    assert "'params' must be dict" in err and "'seed' must be int" in err
    assert "a node record needs 'node' as a JSON object" in err and "unknown record type 'teleport'" in err
    assert store.path("types").read_bytes() == before  # reading never rewrites
    with store.open("types", read_only=True) as s:
        assert set(s.tree.nodes) == {"a", "ok"}


def test_cycles_in_parent_links_become_roots_not_hangs(store):
    # b and c point at each other; d hangs below the cycle; e's parent never existed
    lines = [
        header(),
        node("a", role="frame"),
        node("b", "c"),
        node("c", "b"),
        node("d", "c"),
        node("e", "zzz"),
        node("f", "e"),
    ]
    write_session(store, "cycle", lines)
    with store.open("cycle", read_only=True) as s:
        tree = s.tree
        assert set(tree.nodes) == set("abcdef")
        assert sum("cycle of parent links" in p for p in s.problems) == 1
        assert sum("missing parent zzz" in p for p in s.problems) == 1
        for node_id in "bcdf":
            tree.path(node_id)  # every path ends at a root: no cycle left
        assert tree.get("f").parent == "e" and tree.get("d").parent == "c"


def test_many_late_parents_load_in_linear_time(store):
    n = 20_000  # children written before their parents, as some imports do: was quadratic
    lines = [header(), node("n0", role="frame")] + [node(f"n{i}", f"n{i - 1}") for i in range(n, 0, -1)]
    write_session(store, "late", lines)
    started = time.perf_counter()
    with store.open("late", read_only=True) as s:
        assert len(s.tree.nodes) == n + 1 and not s.problems
    assert time.perf_counter() - started < 10


def test_duplicate_ids_keep_the_first(store):
    lines = [
        header(),
        node("a", role="frame"),
        node("b", "a", text="first"),
        node("b", "a", text="second"),
        node("c", "x"),
        node("c", "x"),
        node("x", "a"),
    ]
    write_session(store, "dupes", lines)
    with store.open("dupes", read_only=True) as s:
        assert s.tree.get("b").text == "first"
        assert sum("already exists" in p for p in s.problems) == 2
        assert len(s.tree.children("x")) == 1


def test_huge_lines_are_reported_and_the_rest_loads(capsys, store):
    garbage = "{" + "x" * (30 * 2**20)
    big_text = "y" * (10 * 2**20)
    lines = [header(), node("a", role="frame"), garbage, node("b", "a", text=big_text), node("c", "b")]
    write_session(store, "huge", lines)
    started = time.perf_counter()
    code, out, err = run_cli(capsys, "sessions", "show", "huge", "--sessions-dir", store.folder)
    assert code == 0 and "huge.jsonl:3: unreadable line skipped" in err
    with store.open("huge", read_only=True) as s:
        assert len(s.tree.get("b").text) == len(big_text) and set(s.tree.nodes) == {"a", "b", "c"}
    assert time.perf_counter() - started < 20


@pytest.mark.parametrize(
    "first_line, needle",
    [
        (json.dumps({"type": "session", "schema": 0}), "schema 0 is not a simlab session schema"),
        (json.dumps({"type": "session", "schema": -5}), "schema -5"),
        (json.dumps({"type": "session", "schema": "3"}), "not a simlab session file"),
        (json.dumps([1, 2]), "not a simlab session file"),
        (json.dumps({"type": "session", "schema": 10**9}), "newer simlab"),
    ],
)
def test_bad_headers_are_one_line(capsys, store, first_line, needle):
    before = write_session(store, "hdr", [first_line, node("a", role="frame")])
    code, _, err = run_cli(capsys, "sessions", "show", "hdr", "--sessions-dir", store.folder)
    assert_one_line_error(code, err, needle)
    assert store.path("hdr").read_bytes() == before


# -- Loom and simlab imports ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, needle",
    [
        ("[1, 2, 3]", "not a Loom tree"),
        ('{"root": "text"}', "not a Loom tree"),
        ('{"root": {"text": 5}}', "text string"),
        ('{"root": {"text": "a", "children": {"b": 1}}}', "'children' must be a list"),
        ('{"root": {"text": "a", "children": [7]}}', "not an object"),
        ('{"root": {"id": "r", "text": "a", "children": [{"id": "r", "text": "b"}]}}', "appears twice"),
        ('{"root": ' + '{"text": "a", "children": [' * 5000 + "]}" * 5000 + "}", "nested too deeply"),
        ("simlab_session: 1\nnodes: {a: 1}\n", "'nodes' must be a list"),
        ("simlab_session: 1\nnodes:\n  - {id: a, role: frame, text: 5}\n", "nodes[0] is malformed"),
        ("\x00\x01\x02", "neither JSON nor YAML"),
    ],
)
def test_bad_imports_are_one_line_and_nothing_is_created(capsys, store, tmp_path, content, needle):
    path = tmp_path / "in.json"
    path.write_text(content)
    code, _, err = run_cli(capsys, "sessions", "import", path, "--sessions-dir", store.folder)
    assert_one_line_error(code, err, needle)
    assert not store.folder.exists() or not list(store.folder.iterdir())


def test_a_loom_file_with_hostile_ids_cannot_write_traces_outside(store, tmp_path):
    from simlab.trace.files import node_trace_path

    session_path = store.folder / "s.jsonl"
    for bad in ("../../escape", "/etc/passwd", "a\x00b", "..", "x/y", ".hidden"):
        target = node_trace_path(session_path, bad)
        assert target.parent == store.folder / "s.traces" and target.name.startswith("id-")
    assert node_trace_path(session_path, "0123abcd").name == "0123abcd.safetensors"


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a\x00b", "..", ".hidden", "a/b", "ok\n"])
def test_bad_session_names_are_refused(capsys, store, name):
    for argv in (
        ["sessions", "show", name],
        ["sessions", "rm", name],
        ["chat", "--session", name],
        ["replay", name],
    ):
        code, _, err = run_cli(capsys, *argv, "--sessions-dir", store.folder)
        assert_one_line_error(code, err, "not allowed")
    assert not store.folder.exists() or not list(store.folder.iterdir())


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a\x00b", "ok\n", ".hidden"])
def test_bad_persona_names_are_refused(capsys, isolated_home, name):
    code, _, err = run_cli(capsys, "personas", "new", name)
    assert_one_line_error(code, err)
    assert not (isolated_home / "personas").exists() or not list((isolated_home / "personas").iterdir())


def test_a_persona_path_with_a_nul_byte_is_one_line(capsys):
    code, _, err = run_cli(capsys, "personas", "show", "./a\x00b.yaml")
    assert_one_line_error(code, err, "cannot read it")


# -- models ------------------------------------------------------------------------------------


def remote_code_folder(tmp_path, tiny_dir):
    folder = tmp_path / "remote"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "REMOTE-CODE-RAN"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder, marker


def test_remote_code_never_runs_without_the_flag(capsys, tmp_path, tiny_dir, isolated_home):
    folder, marker = remote_code_folder(tmp_path, tiny_dir)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"turns: [hi]\nsamples: 1\nmodel: {folder}\nvariants:\n  - persona: interview\n")
    for argv in (
        ["generate", "Hello", "--model", folder, "--max-tokens", "2"],
        ["models", "--load", folder],
        ["compare", spec, "--sessions-dir", tmp_path / "s", "--max-tokens", "2"],
    ):
        run_cli(capsys, *argv)
        assert not marker.exists(), argv


def test_pickle_only_folders_are_refused_everywhere(capsys, tmp_path, tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_dir, folder)
    (folder / "model.safetensors").unlink()
    torch.save(AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict(), folder / "pytorch_model.bin")
    for argv in (["generate", "Hello", "--model", folder], ["models", "--load", folder]):
        code, _, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, "pickle", "--allow-pickle")
