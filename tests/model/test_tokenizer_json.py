"""A converted model's tokenizer.json parsed before torch (models.tokenizer_json): the tokenizer
built from that parse is the very object parsed, not a second parse, and tokenizes as one built from
the file does."""

import shutil

from simlab.models import heap, hub, tokenizer_json


def test_a_tokenizer_parsed_early_is_the_one_the_model_gets(tiny_dir, tmp_path):
    folder = tmp_path / "converted"
    shutil.copytree(tiny_dir, folder)
    path = folder / "tokenizer.json"
    tokenizer_json.parse_early(path)
    parsed = tokenizer_json._kept[path]
    early = hub._own_tokenizer(folder)
    assert early.backend_tokenizer is parsed  # handed over, not copied (a copy is a second parse)
    assert tokenizer_json.take(path) is None  # taken once
    late = hub._own_tokenizer(folder)  # nothing kept now: read from the file
    assert late.backend_tokenizer is not parsed
    text = "Hello, world! Ünïcödé and  two spaces\n\ttab"
    assert early(text)["input_ids"] == late(text)["input_ids"]
    assert early.decode(early(text)["input_ids"]) == late.decode(late(text)["input_ids"])
    assert (early.eos_token, early.bos_token) == (late.eos_token, late.bos_token)


def test_a_parse_not_taken_is_forgotten(tiny_dir):
    path = tiny_dir / "tokenizer.json"
    tokenizer_json.parse_early(path)
    tokenizer_json.forget()  # what load_model does after any load: nothing held for nobody
    assert tokenizer_json.take(path) is None


def test_parsing_early_is_nothing_without_the_file(tmp_path):
    tokenizer_json.parse_early(tmp_path / "tokenizer.json")
    assert tokenizer_json.take(tmp_path / "tokenizer.json") is None
    heap.give_back()  # harmless at any time
