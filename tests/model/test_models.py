"""Model specs, safe loading, the Hugging Face cache path, device/dtype, errors."""

import shutil
from pathlib import Path

import pytest
import torch

from simlab.config import Settings
from simlab.errors import ModelUnavailableError, UnknownModelError
from simlab.models.device import pick_device, pick_dtype
from simlab.models.load import classify_spec, load_model


def test_classify_spec(tmp_path, tiny_dir):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert classify_spec("embedded") == "embedded"
    assert classify_spec(str(gguf)) == "gguf"
    assert classify_spec(str(tiny_dir)) == "folder"
    assert classify_spec("gpt2") == "hub"
    assert classify_spec("openai-community/gpt2-xl") == "hub"
    for bad in ("./nope", "/abs/nope", "a/b/c", "what is this"):
        with pytest.raises(UnknownModelError):
            classify_spec(bad)


def test_device_auto_is_cpu_here_and_dtype_follows():
    device = pick_device("auto")
    expected = (
        "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    )
    assert device.type == expected
    assert pick_dtype("float16", torch.device("cpu")) == torch.float16


def test_cpu_dtype_auto_is_measured_once_and_cached(isolated_home, monkeypatch):
    import json

    from simlab.models import device as dev

    choice = pick_dtype("auto", torch.device("cpu"))
    assert choice in (torch.float32, torch.bfloat16)
    [(key, entry)] = json.loads((isolated_home / "cpu-dtype.json").read_text()).items()
    assert "torch" in key and set(entry["seconds"]) == {"float32", "bfloat16"}
    assert entry["bfloat16"] == (choice == torch.bfloat16)
    assert entry["bfloat16"] == (entry["seconds"]["bfloat16"] < 0.75 * entry["seconds"]["float32"])
    monkeypatch.setattr(dev.torch.nn.functional, "linear", None)  # a second call must not measure again
    assert pick_dtype("auto", torch.device("cpu")) == choice


def test_dtype_override_is_applied(tiny_dir):
    loaded = load_model(str(tiny_dir), Settings(device="cpu", dtype="bfloat16"))
    assert loaded.info.dtype == "bfloat16"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


@pytest.fixture
def pickle_only(tmp_path, tiny_dir):
    """The tiny model with its weights saved as a pickle (pytorch_model.bin) instead."""
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_dir, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_pickle_weights_are_refused_without_the_flag(pickle_only):
    with pytest.raises(ModelUnavailableError, match="only pickle weights.*--allow-pickle"):
        load_model(str(pickle_only), Settings(device="cpu"))


def test_pickle_weights_load_with_the_flag(pickle_only, tiny):
    loaded = load_model(str(pickle_only), Settings(device="cpu", dtype="float32", allow_pickle=True))
    for (name, a), b in zip(loaded.model.state_dict().items(), tiny.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_corrupt_weights_are_a_clear_error(tmp_path, tiny_dir):
    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_dir, folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelUnavailableError, match="could not be loaded"):
        load_model(str(folder), Settings(device="cpu"))


def test_folder_without_config_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownModelError, match="no config.json"):
        load_model(str(tmp_path / "empty"), Settings(device="cpu"))


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    """A file that is not a GGUF, or one cut short (a truncated download), is named as such before
    any conversion starts: not blamed on the disk."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from gguf_shapes import Shape, make

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    whole = make("tiny", "Q8_0", tmp_path, shapes={"tiny": Shape("llama", 64, 2, 4, 2, 128, 400, False)})
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ModelUnavailableError, match="broken.gguf is not a GGUF file .*pass a .gguf file"):
        load_model(str(bad), Settings(device="cpu"))  # not blamed on a download either
    with pytest.raises(ModelUnavailableError, match="cut.gguf is not a readable GGUF file .*fetch it again"):
        load_model(str(cut), Settings(device="cpu"))


def test_a_gguf_holding_q5_0_tensors_loads(tmp_path, monkeypatch):
    """Most Q4_K_M files hold some Q5_0 tensors (the embedded model's 81 of 236), a type
    transformers' own GGUF header reader refuses: the header check reads them, and the model loads
    and replies on the kernel."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from gguf_shapes import Shape, make

    monkeypatch.setenv("SIMLAB_HOME", str(tmp_path / "home"))
    path = make("tiny", "Q5_0", tmp_path, shapes={"tiny": Shape("llama", 64, 2, 4, 2, 128, 400, False)})
    loaded = load_model(str(path), Settings(device="cpu"))
    assert loaded.info.weights == "gguf"
    ids = torch.tensor([[5, 6, 7]])
    assert loaded.model(input_ids=ids).logits.shape == (1, 3, 400)


def _put_in_hf_cache(hf_home, repo_id, folder, commit="0123456789abcdef0123456789abcdef01234567"):
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)
    return commit


def test_hub_id_loads_from_the_hf_cache_offline(tmp_path, monkeypatch, tiny_dir):
    hf_home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    commit = _put_in_hf_cache(hf_home, "simlab-test/tiny-gpt2", tiny_dir)
    loaded = load_model("simlab-test/tiny-gpt2", Settings(device="cpu", offline=True))
    assert loaded.info.revision == commit
    assert loaded.info.name == "simlab-test/tiny-gpt2"


def test_hub_id_with_only_pickle_weights_is_refused(tmp_path, monkeypatch, pickle_only):
    hf_home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    _put_in_hf_cache(hf_home, "simlab-test/pickled", pickle_only)
    with pytest.raises(ModelUnavailableError, match="--allow-pickle"):
        load_model("simlab-test/pickled", Settings(device="cpu", offline=True))
    loaded = load_model("simlab-test/pickled", Settings(device="cpu", offline=True, allow_pickle=True))
    assert loaded.info.layers == 2


def test_models_list_shows_hf_cache_entries(tmp_path, monkeypatch, tiny_dir, pickle_only):
    from simlab.models.catalog import list_models

    hf_home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    _put_in_hf_cache(hf_home, "simlab-test/tiny-gpt2", tiny_dir)
    _put_in_hf_cache(hf_home, "simlab-test/pickled", pickle_only)
    rows = {row["spec"]: row for row in list_models(Settings())}
    assert "safetensors" in rows["simlab-test/tiny-gpt2"]["state"]
    assert "pickle only" in rows["simlab-test/pickled"]["state"]


def test_trust_remote_code_is_off_unless_asked(tmp_path, tiny_dir):
    import json

    folder = tmp_path / "remote"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    loaded = load_model(str(folder), Settings(device="cpu"))  # auto_map ignored: the built-in class
    assert type(loaded.model).__name__ == "GPT2LMHeadModel"


def test_embedded_cache_folder_is_keyed_by_the_gguf_hash():
    from simlab.models import gguf

    folder = gguf.cache_folder("embedded", Settings())
    assert gguf.embedded_sha256()[:12] in folder.name
    assert gguf.read_marker(folder) is None  # nothing converted in an isolated home


def test_float16_is_refused_for_gemma_before_anything_loads(tmp_path, tiny_dir, capsys):
    from conftest import run_cli, tiny_llama_style

    folder = tiny_llama_style(tmp_path / "gemma", "gemma3", tiny_dir)
    llama = tiny_llama_style(tmp_path / "llama", "llama", tiny_dir)
    capsys.readouterr()  # (saving them printed progress)
    code, out, err = run_cli(capsys, "generate", "hi", "--model", str(folder), "--dtype", "float16")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Gemma activations outgrow float16" in err and "bfloat16" in err
    with pytest.raises(ModelUnavailableError, match="--dtype float16: embedded"):
        load_model("embedded", Settings(device="cpu", dtype="float16"))  # refused before converting
    # other models keep float16
    assert load_model(str(llama), Settings(device="cpu", dtype="float16")).info.dtype == "float16"


def test_models_list_counts_the_caches_a_model_leaves_and_sizes_in_binary_units(tiny_dir, tmp_path):
    """A GGUF's quantized layers and the prompts' cached prefixes take as much disk as the model:
    `simlab models` lists them with their size and says they are safe to delete."""
    from simlab.config import load_settings
    from simlab.engine.local import Engine
    from simlab.engine.params import SamplingParams
    from simlab.models.catalog import _human, list_models

    settings = load_settings(weights="int8", device="cpu")
    engine = Engine(load_model(str(tiny_dir), settings), prefix_dir=settings.models_dir / "prefixes")
    engine.generate("The quick brown fox jumps over the lazy dog. " * 3, SamplingParams(max_new_tokens=2))
    rows = {row["spec"]: row for row in list_models(settings)}
    quantized = rows["(quantized cache)"]
    files = list((settings.models_dir / "quantized").rglob("*.safetensors"))
    assert files and _human(sum(f.stat().st_size for f in files)) in quantized["state"]
    assert "safe to delete" in quantized["state"]
    assert _human(1_675_397_800) == "1.6 GiB" and _human(1536) == "1.5 KiB"
