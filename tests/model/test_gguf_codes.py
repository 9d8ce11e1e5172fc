"""A GGUF's first use on the kernel read straight from the file (models.gguf_codes): the very model the
full float conversion gives, with no float copy of its weights written or held."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simlab.config import load_settings
from simlab.models import gguf, native
from simlab.models.load import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from gguf_shapes import make  # noqa: E402
from test_gguf_archs import TINY  # noqa: E402

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"no GGUF kernel here ({native.why()})")


@pytest.fixture(scope="module", params=[f"{arch}:{quant}" for arch in TINY for quant in ("Q8_0", "Q4_0")])
def gguf_file(request, tmp_path_factory) -> Path:
    arch, quant = request.param.split(":")
    return make(arch, quant, tmp_path_factory.mktemp("gguf"), shapes=TINY)


def _caches(home: Path) -> tuple[dict, dict, dict]:
    """(the codes cache, the folder's float tensors, its config) under a simlab home."""
    [codes] = (home / "models" / "quantized").glob("*.safetensors")
    [folder] = (home / "models").glob("gguf-*")
    floats = {}
    for file in folder.glob("*.safetensors"):
        floats.update(load_file(str(file)))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return load_file(str(codes)), floats, config


def _logits(model) -> torch.Tensor:
    ids = torch.randint(0, 399, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_the_first_use_reads_the_model_the_full_conversion_gives(gguf_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMLAB_HOME", str(tmp_path / "full"))
    gguf.cached_conversion(str(gguf_file), load_settings(), print)  # the float32 folder first: the old way
    full = load_model(str(gguf_file), load_settings(weights="gguf"))
    monkeypatch.setenv("SIMLAB_HOME", str(tmp_path / "codes"))
    said = []
    read = load_model(str(gguf_file), load_settings(weights="gguf"), progress=said.append)
    assert "reading its codes into a cache" in said[0] and not any("float32" in line for line in said)
    assert torch.equal(_logits(read.model), _logits(full.model))
    codes, floats, config = _caches(tmp_path / "codes")
    full_codes, full_floats, full_config = _caches(tmp_path / "full")
    assert codes.keys() == full_codes.keys() and all(torch.equal(codes[k], full_codes[k]) for k in codes)
    assert config == full_config
    # only what the codes do not replace is kept as floats (norms, biases, an embedding not shared)
    assert floats and all(torch.equal(v, full_floats[k]) for k, v in floats.items())
    assert not any(k.endswith("proj.weight") or k.startswith("lm_head") for k in floats)
    assert sum(v.numel() for v in floats.values()) < sum(v.numel() for v in full_floats.values()) / 2
    # the codes gone (a new layout's key, or removed): read again, and said so
    [cached] = (tmp_path / "codes" / "models" / "quantized").glob("*.safetensors")
    cached.unlink()
    said.clear()
    again = load_model(str(gguf_file), load_settings(weights="gguf"), progress=said.append)
    assert "into its cache again" in said[0] and "First use" not in " ".join(said)
    assert torch.equal(_logits(again.model), _logits(read.model)) and cached.is_file()


def _without(source: Path, target: Path, key: str) -> Path:
    """The GGUF with one metadata key left out (as older converters wrote some files)."""
    import gguf as gguf_py
    import numpy as np

    reader = gguf_py.GGUFReader(str(source))
    writer = gguf_py.GGUFWriter(str(target), "llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", key):
            continue
        kind = field.types[0]
        sub = {"sub_type": field.types[-1]} if kind == gguf_py.GGUFValueType.ARRAY else {}
        writer.add_key_value(field.name, field.contents(), kind, **sub)
    for t in reader.tensors:
        data = np.asarray(t.data)
        if t.tensor_type in (gguf_py.GGMLQuantizationType.F32, gguf_py.GGMLQuantizationType.F16):
            writer.add_tensor(t.name, data)
        else:
            writer.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def test_a_llama_file_without_its_key_value_heads_is_one_model_both_ways(tmp_path, monkeypatch):
    """transformers' loader moves q and k rows only when the file names its key-value heads; both
    ways read the rows as it does (the full way once put q and k in int8, its check failing)."""
    from gguf_shapes import Shape

    shape = {"mha": Shape("llama", 64, 2, 4, 4, 128, 400, False)}
    source = _without(
        make("mha", "Q8_0", tmp_path, shapes=shape), tmp_path / "old.gguf", "llama.attention.head_count_kv"
    )
    monkeypatch.setenv("SIMLAB_HOME", str(tmp_path / "full"))
    gguf.cached_conversion(str(source), load_settings(), print)
    full = load_model(str(source), load_settings(weights="gguf")).model
    monkeypatch.setenv("SIMLAB_HOME", str(tmp_path / "codes"))
    read = load_model(str(source), load_settings(weights="gguf")).model
    for model in (full, read):
        assert not any(type(m).__name__ == "Int8Linear" for m in model.modules())
    assert torch.equal(_logits(read), _logits(full))


def test_a_complete_folder_written_meanwhile_is_kept(gguf_file, isolated_home):
    """Another process's float32 conversion, which a process may be loading, is not replaced by the
    codes folder this one finishes later."""
    from functools import partial

    from simlab.models import gguf_codes
    from simlab.models.load import _codes_path

    settings = load_settings()
    folder, sha, _ = gguf.cached_conversion(str(gguf_file), settings, print)
    codes_of = partial(_codes_path, settings, dtype="float32", weights="gguf", kernel="native")
    assert gguf_codes.build(str(gguf_file), folder, codes_of, print) == sha
    assert gguf.read_marker(folder).get("weights", "float") == "float" and codes_of(sha).is_file()
    floats = load_model(str(gguf_file), load_settings(weights="float", dtype="float32"))
    assert type(floats.model.model.layers[0].self_attn.q_proj).__name__ == "Linear"


def test_the_codes_cache_is_read_again_from_the_file_when_deleted(gguf_file, isolated_home):
    first = load_model(str(gguf_file), load_settings(weights="gguf"))
    [codes] = (isolated_home / "models" / "quantized").glob("*.safetensors")
    codes.unlink()
    said = []
    again = load_model(str(gguf_file), load_settings(weights="gguf"), progress=said.append)
    assert codes.is_file() and any("reading the GGUF's own codes" in line for line in said)
    assert torch.equal(_logits(again.model), _logits(first.model))


def test_the_codes_cache_kept_before_the_16_row_layout_goes_when_the_new_one_is_made(
    gguf_file, isolated_home
):
    """The codes cache of kernels before 13 (each weight row's codes in a row) is never read again:
    reading the file into the new one removes it, and nothing else in the cache."""
    import hashlib

    first = load_model(str(gguf_file), load_settings(weights="gguf"))
    folder = isolated_home / "models" / "quantized"
    [codes] = folder.glob("*.safetensors")
    key = hashlib.sha256(f"{first.info.revision}:any:gguf:native:rows".encode()).hexdigest()[:16]
    old, other = folder / f"{key}-gguf.safetensors", folder / "0123456789abcdef-gguf.safetensors"
    old.write_bytes(b"the old layout"), other.write_bytes(b"another model's")
    codes.unlink()
    load_model(str(gguf_file), load_settings(weights="gguf"))
    assert codes.is_file() and not old.exists() and other.exists()


def test_models_say_whether_a_files_codes_are_still_cached(gguf_file, isolated_home):
    """`simlab models` counts a codes-only folder as cached only while its codes are there (the
    quantized cache is safe to delete), with their size."""
    from simlab.models.catalog import list_models

    load_model(str(gguf_file), load_settings(weights="gguf"))
    [row] = [r for r in list_models(load_settings()) if r["kind"] == "gguf"]
    assert "MiB of codes in the quantized cache" in row["state"] or "KiB of codes" in row["state"]
    [codes] = (isolated_home / "models" / "quantized").glob("*.safetensors")
    codes.unlink()
    [row] = [r for r in list_models(load_settings()) if r["kind"] == "gguf"]
    assert row["state"].startswith("its codes not cached (read from the file again")


def test_float_weights_after_the_codes_convert_the_whole_file_and_the_kernel_still_loads(
    gguf_file, isolated_home
):
    kernel = _logits(load_model(str(gguf_file), load_settings(weights="gguf")).model)
    floats = load_model(str(gguf_file), load_settings(weights="float", dtype="float32"))
    assert type(floats.model.model.layers[0].self_attn.q_proj).__name__ == "Linear"
    [folder] = (isolated_home / "models").glob("gguf-*")
    assert gguf.read_marker(folder).get("weights", "float") == "float"
    assert torch.equal(_logits(load_model(str(gguf_file), load_settings(weights="gguf")).model), kernel)


def test_a_file_whose_weights_the_kernel_does_not_read_is_converted_the_full_way(tmp_path, isolated_home):
    f16 = make("llama", "F16", tmp_path, shapes=TINY)  # float16 weights: no codes to read
    said = []
    loaded = load_model(str(f16), load_settings(weights="gguf"), progress=said.append)
    [folder] = (isolated_home / "models").glob("gguf-*")
    assert gguf.read_marker(folder).get("weights", "float") == "float"
    assert any("float32" in line for line in said) and not any("reading its codes" in line for line in said)
    assert type(loaded.model.model.layers[0].mlp.down_proj).__name__ == "Int8Linear"


@pytest.mark.slow
def test_the_embedded_models_first_start_reads_what_the_full_conversion_gave(tmp_path, monkeypatch):
    """At its real size: every code, scale and float tensor, and the config, as the full way's."""
    monkeypatch.setenv("SIMLAB_HOME", str(tmp_path / "full"))
    gguf.cached_conversion("embedded", load_settings(), print)
    full = load_model("embedded", load_settings(weights="gguf"))
    monkeypatch.setenv("SIMLAB_HOME", str(tmp_path / "codes"))
    read = load_model("embedded", load_settings(weights="gguf"))
    ids = torch.tensor([[2, 818, 5279, 529, 7001, 563]])
    with torch.inference_mode():
        assert torch.equal(read.model(input_ids=ids).logits, full.model(input_ids=ids).logits)
    folders = {}
    for name in ("full", "codes"):
        [folder] = (tmp_path / name / "models").glob("embedded-*")
        [codes] = (tmp_path / name / "models" / "quantized").glob("*.safetensors")
        folders[name] = folder, load_file(str(codes))
    (full_folder, full_codes), (folder, codes) = folders["full"], folders["codes"]
    assert codes.keys() == full_codes.keys() and all(torch.equal(codes[k], full_codes[k]) for k in codes)
    floats = load_file(str(folder / "model.safetensors"))
    full_floats = {}
    for file in full_folder.glob("*.safetensors"):
        full_floats.update(load_file(str(file)))
    assert all(torch.equal(v, full_floats[k]) for k, v in floats.items())
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).read_bytes() == (full_folder / name).read_bytes(), name
