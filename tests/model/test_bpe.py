"""simlab's own Gemma-style BPE tokenizer (models.bpe) against tokenizers on the same tokenizer.json:
the same ids, offsets and decoded text, on vocabularies built to reach every rule of tokenizers'
merge loop (ties, stale queue entries, a pair listed twice, byte fallback, added tokens that overlap).
The embedded model's own tokenizer is checked in tests/slow/test_embedded.py."""

import itertools
import json
import random

import pytest
from tokenizers import Tokenizer

from simlab.models import bpe, bpe_tables, hub

SPACE = "\u2581"
SEQUENCE = {"id": "A", "type_id": 0}


def gemma_style(
    folder, *, seed=0, letters="ab" + SPACE + "c", longest=4, duplicate=False, extra=None, past=False
):
    """A tokenizer.json in the shape transformers writes for a Gemma GGUF, over a small alphabet:
    every string of the letters up to `longest` is a piece, merged from each of its splits in a
    random order (so one piece is reached by several merges, ranked apart)."""
    rng = random.Random(seed)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    plain_added = ["\n", "\n\n", "\n\n\n", "<b>", "<br>", "ab" + SPACE]
    pieces = specials + plain_added + [f"<0x{b:02X}>" for b in range(256)] + ["é", "日", "本", "本日"]
    words = ["".join(p) for n in range(1, longest + 1) for p in itertools.product(letters, repeat=n)]
    pieces += [w for w in words if w not in pieces]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = [[w[:k], w[k:]] for w in words if len(w) > 1 for k in range(1, len(w))]
    merges.append(["本", "日"])
    rng.shuffle(merges)
    if duplicate:  # a pair listed twice: tokenizers keeps the later rank
        merges += [merges[3], merges[0]]
    added = [
        {"id": vocab[p], "content": p, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": p in specials}
        for p in specials + plain_added
    ]  # fmt: skip
    data = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": bpe_tables.NORMALIZER,
        "pre_tokenizer": bpe_tables.SPLIT,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": SEQUENCE}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<bos>": {"id": "<bos>", "ids": [vocab["<bos>"]], "tokens": ["<bos>"]}},
        },
        "decoder": bpe_tables.DECODER,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
            "vocab": vocab, "merges": merges,
        },
    }  # fmt: skip
    if past:  # a special token past the vocabulary's end, as some converters write <mask>
        data["added_tokens"].append(added[0] | {"id": len(vocab), "content": "<extra>"})
    data |= extra or {}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    config = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"mask_token": "<mask>"}))
    return folder


def texts(seed, letters):
    rng = random.Random(seed)
    alphabet = [*letters, " ", "  ", "\n", "\n\n\n\n", "<b>", "<br>", "<br", "é", "日本日", "🐙", "\t"]
    alphabet.append("<eos>")
    out = ["", " ", "a", "<bos>", "ab ", "<0x41>", "x" * 40, "a" * 33, " " * 17, "ab " * 9, "本日本日"]
    out += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 50))) for _ in range(1500)]
    return out


def reference(folder):
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def same_as_tokenizers(ours, theirs, text):
    for special in (True, False):
        want = theirs.encode(text, add_special_tokens=special)
        got = ours(text, add_special_tokens=special, return_offsets_mapping=True)
        assert got["input_ids"] == want.ids, (text, special)
        assert got["offset_mapping"] == want.offsets, (text, special)
        assert ours.decode(want.ids) == theirs.decode(want.ids, skip_special_tokens=False), text
        assert ours.decode(want.ids, skip_special_tokens=True) == theirs.decode(want.ids), text


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_text_tokenizes_as_tokenizers_does(tmp_path, seed):
    folder = gemma_style(tmp_path / "t", seed=seed)
    ours, theirs = hub._own_tokenizer(folder), reference(folder)
    assert isinstance(ours, bpe.Tokenizer)
    for text in texts(seed, "ab" + SPACE + "c"):
        same_as_tokenizers(ours, theirs, text)


def test_a_pair_listed_twice_takes_its_later_rank(tmp_path):
    folder = gemma_style(tmp_path / "t", seed=4, duplicate=True)
    ours, theirs = hub._own_tokenizer(folder), reference(folder)
    assert isinstance(ours, bpe.Tokenizer)
    for text in texts(4, "ab" + SPACE + "c"):
        same_as_tokenizers(ours, theirs, text)


def test_an_added_token_past_the_vocabulary_is_one_on_top(tmp_path):
    folder = gemma_style(tmp_path / "t", seed=5, past=True)
    ours, theirs = hub._own_tokenizer(folder), reference(folder)
    assert isinstance(ours, bpe.Tokenizer)
    extra = theirs.token_to_id("<extra>")
    for text in [*texts(5, "ab" + SPACE + "c")[:500], "a<extra>b", "<extra><extra>", "<extr a"]:
        same_as_tokenizers(ours, theirs, text)
    assert ours("a<extra>")["input_ids"][-1] == extra == theirs.get_vocab_size(with_added_tokens=False)
    assert ours.convert_ids_to_tokens([extra]) == ["<extra>"] and ours.vocab_size == extra
    assert len(ours) == theirs.get_vocab_size(with_added_tokens=True) == extra + 1
    assert ours.decode([extra + 1, extra, 9]) == theirs.decode(
        [extra + 1, extra, 9], skip_special_tokens=False
    )


def test_decoding_any_ids_gives_tokenizers_text(tmp_path):
    """Runs of <0xNN> pieces that are UTF-8, that are not (a U+FFFD each), ids past the vocabulary
    (left out), special tokens kept and skipped."""
    folder = gemma_style(tmp_path / "t")
    ours, theirs = hub._own_tokenizer(folder), reference(folder)
    byte = theirs.token_to_id("<0xC3>")
    rng = random.Random(5)
    cases = [[byte, byte + 0x29 - 0xC3], [byte], [byte, byte], [byte + 0x2F, 1, byte + 0x2F], [10**6, 2, 5]]
    size = theirs.get_vocab_size()
    cases += [[rng.randrange(size + 3) for _ in range(rng.randint(0, 12))] for _ in range(2000)]
    for ids in cases:
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    assert ours.convert_ids_to_tokens([0, 7, size - 1]) == [theirs.id_to_token(i) for i in (0, 7, size - 1)]


def test_special_tokens_are_named_as_transformers_names_them(tmp_path):
    from transformers import PreTrainedTokenizerFast

    folder = gemma_style(tmp_path / "t")
    ours = hub._own_tokenizer(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    theirs = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **config)
    names = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "all_special_ids", "vocab_size")
    for name in names:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert (len(ours), ours.chat_template) == (len(theirs), theirs.chat_template)
    assert ours.encode("ab c", add_special_tokens=False) == theirs.encode("ab c", add_special_tokens=False)
    how = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
    assert ours.decode([2, 9], **how) == theirs.decode([2, 9], **how)


@pytest.mark.parametrize(
    "change",
    [
        {"normalizer": None},
        {"decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}},
        {"post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False}},
        {"pre_tokenizer": {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": "always"}},
    ],
    ids=["no-normalizer", "byte-level-decoder", "other-post-processor", "metaspace"],
)
def test_a_shape_it_was_not_checked_on_goes_to_tokenizers(tmp_path, change):
    folder = gemma_style(tmp_path / "t", extra=change)
    assert bpe.load(folder, {}) is None
    assert not isinstance(hub._own_tokenizer(folder), bpe.Tokenizer)
    kept = (folder / bpe_tables.TABLES).read_bytes()
    assert b'"fits": false' in kept  # said once: later starts do not parse tokenizer.json again
    assert not bpe.prepare(folder)


def test_a_chat_template_goes_to_transformers(tmp_path):
    folder = gemma_style(tmp_path / "t")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": "{{ messages }}"}))
    tokenizer = hub._own_tokenizer(folder)
    assert not isinstance(tokenizer, bpe.Tokenizer) and tokenizer.chat_template == "{{ messages }}"


def test_the_tables_are_made_once_and_again_when_tokenizer_json_changes(tmp_path):
    folder = gemma_style(tmp_path / "t", seed=1)
    assert bpe.prepare(folder)
    tables = folder / bpe_tables.TABLES
    made = tables.stat().st_mtime_ns
    assert bpe.prepare(folder) and tables.stat().st_mtime_ns == made  # read, not made again
    gemma_style(folder, seed=2)  # another tokenizer.json in its place
    ours = hub._own_tokenizer(folder)
    assert tables.stat().st_mtime_ns != made
    theirs = reference(folder)
    for text in texts(2, "ab" + SPACE + "c")[:300]:
        same_as_tokenizers(ours, theirs, text)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_tables_are_made_again(tmp_path, damage):
    folder = gemma_style(tmp_path / "t")
    assert bpe.prepare(folder)
    tables = folder / bpe_tables.TABLES
    data = tables.read_bytes()
    tables.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00" * 99, "empty": b""}[damage])
    ours = hub._own_tokenizer(folder)
    assert isinstance(ours, bpe.Tokenizer)
    assert ours("ab c\n\nab" + SPACE)["input_ids"] == reference(folder).encode("ab c\n\nab" + SPACE).ids
    assert tables.read_bytes() == data


def test_without_a_compiler_tokenizers_is_used(tmp_path, monkeypatch):
    folder = gemma_style(tmp_path / "t")
    monkeypatch.setattr(bpe, "_state", {"lib": None})
    tokenizer = hub._own_tokenizer(folder)
    assert not isinstance(tokenizer, bpe.Tokenizer)
    assert tokenizer("ab c")["input_ids"] == reference(folder).encode("ab c").ids


def test_a_folder_it_cannot_write_still_gets_its_tables(tmp_path, monkeypatch):
    folder = gemma_style(tmp_path / "t")
    monkeypatch.setattr(bpe_tables, "write", lambda path, header, chunks: None)  # as a read-only folder
    ours = hub._own_tokenizer(folder)
    assert isinstance(ours, bpe.Tokenizer) and not (folder / bpe_tables.TABLES).exists()
    assert ours("ab c\n\n本日")["input_ids"] == reference(folder).encode("ab c\n\n本日").ids


def test_a_c_build_is_said_when_it_runs_and_not_when_it_is_kept(tmp_path, monkeypatch):
    from simlab.models import cbuild, native

    said = []
    first = cbuild.build(bpe.SOURCE, tmp_path, ["-O2"], lambda: said.append("built"))
    again = cbuild.build(bpe.SOURCE, tmp_path, ["-O2"], lambda: said.append("again"))
    assert first == again and said == ["built"]

    def failing(source, folder, flags, say):  # the kernel's own build, said and then failing
        say()
        raise OSError("cc failed: no space")

    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(cbuild, "build", failing)
    messages = []
    assert native.library(tmp_path, say=messages.append) is None
    assert messages == [
        "Building simlab's kernel for this CPU (once for each version of it; about 15 s on 2 cores)."
    ]
    assert native.why() == "cc failed: no space"


def test_simlab_tokens_shows_a_characters_bytes_once_each(tmp_path):
    """A character the vocabulary lacks is one <0xNN> piece per byte: `pieces` shows each byte
    (\\xNN), not the whole character once per byte, and the pieces still cover the text."""
    from simlab.engine.tokenizers import HFCounter

    folder = gemma_style(tmp_path / "t")
    counter = HFCounter(hub._own_tokenizer(folder), "t")
    pieces = counter.pieces("ab 🐙c")
    assert [p.text for p in pieces][-5:] == ["\\xf0", "\\x9f", "\\x90", "\\x99", "c"]
    assert pieces[-2].end == pieces[-1].start == 4 and pieces[-1].end == 5


def gguf_conversion_config(folder):
    """tokenizer_config.json as transformers writes it for a Gemma GGUF's conversion."""
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config |= {"backend": "tokenizers", "is_local": True, "local_files_only": False}
    config |= {"model_max_length": 10**30, "tokenizer_class": "GemmaTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return config


def test_a_gemma_ggufs_folder_gets_it_and_matches_autotokenizer(tmp_path):
    """Another Gemma GGUF's converted folder (not the embedded model's): AutoTokenizer would make
    transformers' GemmaTokenizer from it; simlab's own gives that tokenizer's ids and text."""
    from transformers import AutoTokenizer

    folder = gemma_style(tmp_path / "t", seed=3)
    gguf_conversion_config(folder)
    ours = hub.load_tokenizer(str(folder), spec="x.gguf", offline=True, trust_remote_code=False)
    assert isinstance(ours, bpe.Tokenizer)
    theirs = AutoTokenizer.from_pretrained(folder)
    assert type(theirs).__name__ == "GemmaTokenizer"
    for text in texts(3, "ab" + SPACE + "c")[:600]:
        for special in (True, False):
            want = theirs(text, add_special_tokens=special, return_offsets_mapping=True)
            got = ours(text, add_special_tokens=special, return_offsets_mapping=True)
            assert got["input_ids"] == want["input_ids"], text
            assert got["offset_mapping"] == [tuple(o) for o in want["offset_mapping"]], text
        assert ours.decode(want["input_ids"]) == theirs.decode(want["input_ids"])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "all_special_ids"):
        assert getattr(ours, name) == getattr(theirs, name), name


@pytest.mark.parametrize(
    "more", [{"add_bos_token": False}, {"chat_template": "{{ x }}"}, {"tokenizer_class": "X"}]
)
def test_a_gemma_folder_configured_beyond_its_tokenizer_json_gets_autotokenizer(tmp_path, more):
    folder = gemma_style(tmp_path / "t")
    config = gguf_conversion_config(folder) | more
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert hub._lean_gemma(folder) is None


def test_a_tokenizer_json_that_is_not_json_is_left_to_tokenizers(tmp_path):
    folder = gemma_style(tmp_path / "t")
    (folder / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": [1, 2')
    assert not bpe.prepare(folder)  # no traceback here; tokenizers' own load says what is wrong
    assert bpe.load(folder, {}) is None


def test_a_folder_transformers_saved_with_a_chat_template_keeps_transformers(tmp_path):
    """transformers 5 writes a chat template to chat_template.jinja, not tokenizer_config.json:
    such a folder (an instruction-tuned Gemma's) keeps transformers' tokenizer and its template."""
    from transformers import AutoTokenizer

    folder = gemma_style(tmp_path / "t")
    gguf_conversion_config(folder)
    saved = tmp_path / "saved"
    AutoTokenizer.from_pretrained(folder, chat_template="{{ messages[0]['content'] }}").save_pretrained(saved)
    assert (saved / "chat_template.jinja").is_file()
    assert hub._lean_gemma(saved) is None
    tokenizer = hub.load_tokenizer(str(saved), spec="x", offline=True, trust_remote_code=False)
    assert not isinstance(tokenizer, bpe.Tokenizer) and tokenizer.chat_template
    (saved / "chat_template.jinja").unlink()  # the same folder without it: simlab's own
    assert isinstance(hub._lean_gemma(saved), bpe.Tokenizer)
    (saved / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<end_of_turn>"}))
    assert hub._lean_gemma(saved) is None  # special tokens set outside tokenizer.json


def test_shapes_tokenizers_reads_otherwise_go_to_it(tmp_path):
    """Added tokens past the vocabulary that are not numbered on from it (tokenizers renumbers
    them), a token named in tokenizer_config.json that tokenizer.json does not make special, and
    truncation set in tokenizer.json."""
    gaps = gemma_style(tmp_path / "gap", past=True)
    data = json.loads((gaps / "tokenizer.json").read_text())
    data["added_tokens"][-1]["id"] += 3
    (gaps / "tokenizer.json").write_text(json.dumps(data))
    assert bpe.load(gaps, {}) is None
    named = gemma_style(tmp_path / "named")
    config = json.loads((named / "tokenizer_config.json").read_text())
    assert isinstance(bpe.load(named, config), bpe.Tokenizer)
    assert bpe.load(named, config | {"mask_token": "<b>"}) is None  # an added token, not a special one
    cut = {"max_length": 4, "strategy": "LongestFirst", "stride": 0, "direction": "Right"}
    truncated = gemma_style(tmp_path / "cut", extra={"truncation": cut})
    assert bpe.load(truncated, {}) is None


def test_no_added_tokens_at_all(tmp_path):
    folder = gemma_style(tmp_path / "t", extra={"added_tokens": []})
    ours, theirs = bpe.load(folder, {}), reference(folder)
    assert isinstance(ours, bpe.Tokenizer)
    for text in texts(6, "ab" + SPACE + "c")[:300]:
        same_as_tokenizers(ours, theirs, text)
    assert ours.convert_ids_to_tokens([5, 10**6]) == [theirs.id_to_token(5), None]


def test_tables_whose_header_is_damaged_are_made_again(tmp_path):
    folder = gemma_style(tmp_path / "t")
    assert bpe.prepare(folder)
    tables = folder / bpe_tables.TABLES
    data = tables.read_bytes()
    size = int.from_bytes(data[len(bpe_tables.MAGIC) : len(bpe_tables.MAGIC) + 8], "little")
    start = len(bpe_tables.MAGIC) + 8
    header = json.loads(data[start : start + size])
    header["bytes"] = header["bytes"][:5]  # the right stamp and size, a field cut short
    head = json.dumps(header).encode()
    tables.write_bytes(
        data[: len(bpe_tables.MAGIC)] + len(head).to_bytes(8, "little") + head + data[start + size :]
    )
    ours = hub._own_tokenizer(folder)
    assert isinstance(ours, bpe.Tokenizer) and tables.read_bytes() == data
    assert ours("ab c\n\n🐙")["input_ids"] == reference(folder).encode("ab c\n\n🐙").ids
