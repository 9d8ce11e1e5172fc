"""Weight-only int8/int4 linear layers (--weights): the kernels' convention, closeness to the float model,
the cache that makes a reload (and a replay) use the very same weights, and what nodes record."""

import pytest
import torch
from conftest import run_cli, tiny_llama_style

from simlab.config import Settings, load_settings
from simlab.engine.local import Engine
from simlab.engine.params import SamplingParams
from simlab.errors import ConfigError
from simlab.models.load import load_model
from simlab.models.quant import GROUP, Int4Linear, Int8Linear, quantize
from simlab.session.store import SessionStore
from simlab.turns import sample_replies, start_session


@pytest.fixture(scope="module")
def llama_dir(tiny_dir, tmp_path_factory):
    return tiny_llama_style(tmp_path_factory.mktemp("tiny-llama"), "llama", tiny_dir)


def test_int4_codes_dequantise_as_the_kernel_multiplies():
    torch.manual_seed(0)
    weight = torch.randn(16, 64)
    layer = Int4Linear.of(weight, None)
    groups = weight.reshape(16, 64 // GROUP, GROUP)
    low, high = groups.amin(-1), groups.amax(-1)
    scale = ((high - low) / 15).to(torch.bfloat16).float()
    zero = (low + 8 * ((high - low) / 15)).to(torch.bfloat16).float()
    codes = torch.round((groups - low.unsqueeze(-1)) / ((high - low) / 15).unsqueeze(-1)).clamp(0, 15)
    expected = ((codes - 8) * scale.unsqueeze(-1) + zero.unsqueeze(-1)).reshape(16, 64)  # (N, K)
    got = layer(torch.eye(64)).t()  # row j of the identity picks input j: (K, N) -> (N, K)
    assert (got - expected).abs().max() < 0.02 * expected.abs().max()  # the kernel's bfloat16 output
    assert (expected - weight).abs().max() <= ((high - low) / 15).max() / 2 + 1e-3  # half a step at most


@pytest.mark.parametrize("weights, tolerance", [("int8", 0.02), ("int4", 0.15)])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_quantized_models_stay_close_to_float(kind, weights, tolerance, tiny_dir, llama_dir):
    folder = tiny_dir if kind == "gpt2" else llama_dir
    model = load_model(str(folder), Settings(device="cpu", dtype="float32")).model
    embedding = model.get_input_embeddings().weight.detach().clone()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    with torch.inference_mode():
        reference = model(input_ids=ids).logits.log_softmax(-1)
    stored = quantize(model, weights)
    with torch.inference_mode():
        got = model(input_ids=ids).logits.log_softmax(-1)
    layers = [m for m in model.modules() if isinstance(m, (Int4Linear, Int8Linear))]
    assert layers and len(stored) == sum(len(list(m.buffers())) for m in layers)
    assert any(isinstance(m, Int4Linear) for m in layers) == (weights == "int4")
    assert torch.equal(model.get_input_embeddings().weight, embedding)  # the lookup stays exact
    kl = (got.exp() * (got - reference)).sum(-1)  # of the next-token distributions
    assert kl.abs().max() < tolerance


def test_a_reload_reads_the_cache_and_decodes_the_same_tokens(llama_dir):
    notes = []
    settings = load_settings(device="cpu", dtype="bfloat16", weights="int4")
    first = Engine(load_model(str(llama_dir), settings, progress=notes.append))
    second = Engine(load_model(str(llama_dir), settings, progress=notes.append))
    assert sum("Converting" in n for n in notes) == 1 and first.info.weights == "int4"
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=4)
    [a] = first.generate("hello there", params)
    [b] = second.generate("hello there", params)
    assert a.token_ids == b.token_ids and [t.logprob for t in a.tokens] == [t.logprob for t in b.tokens]
    siblings = second.generate("hello there", params, n=3)
    assert siblings[0].token_ids == a.token_ids  # a branch is its seed, alone or among siblings
    assert siblings[2].token_ids == second.generate("hello there", params.with_overrides(seed=6))[0].token_ids


def test_replies_record_their_weights_and_replay_loads_them(llama_dir, tmp_path, capsys):
    from simlab.persona.schema import Persona

    engine = Engine(load_model(str(llama_dir), load_settings(device="cpu", dtype="bfloat16", weights="int8")))
    persona = Persona(name="p", frame="A chat.\n\n", sampling={"max_tokens": 8, "temperature": 1.0})
    store = SessionStore(tmp_path / "sessions")
    with start_session(store, persona, "w") as session:
        user = session.add_child(session.tree.cursor, "user", "hi", speaker="User")
        [reply] = sample_replies(engine, session, user.id, persona.sampling_params(seed=3))
        session.goto(reply.id)
    assert reply.weights == "int8" and reply.to_record()["weights"] == "int8"
    assert SessionStore(store.folder).open("w", read_only=True).tree.get(reply.id).weights == "int8"
    code, out, err = run_cli(capsys, "replay", "w", "--sessions-dir", store.folder)
    assert code == 0 and "reproduced 1/1 replies exactly" in out, err


def test_weights_are_a_setting_with_one_line_errors(capsys, monkeypatch, tiny_dir):
    monkeypatch.setenv("SIMLAB_WEIGHTS", "int4")
    assert load_settings().weights == "int4"
    monkeypatch.setenv("SIMLAB_WEIGHTS", "int3")
    with pytest.raises(ConfigError, match="weights 'int3' is not one of auto, float, int8, int4") as bad:
        load_settings()
    assert str(bad.value).endswith("(set by the environment variable SIMLAB_WEIGHTS)")  # (not a file)
    monkeypatch.delenv("SIMLAB_WEIGHTS")
    with pytest.raises(ConfigError) as bad:
        load_settings(dtype="float99")
    assert str(bad.value).endswith("(set by --dtype)")
    argv = ["generate", "x", "--model", tiny_dir, "--weights", "int4", "--device", "cuda:0"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and "runs on the CPU" in err


def test_gguf_weights_need_a_gguf_and_auto_keeps_other_models_float(tiny_dir, capsys):
    assert load_model(str(tiny_dir), Settings(device="cpu", weights="auto")).info.weights == "float"
    code, out, err = run_cli(capsys, "generate", "hi", "--model", tiny_dir, "--weights", "gguf")
    assert code == 2 and not out and len(err.strip().splitlines()) == 1
    assert "weights gguf (--weights, SIMLAB_WEIGHTS or the config file) reads a GGUF" in err
    assert "use int8 or int4" in err
    code, out, err = run_cli(capsys, "generate", "hi", "--model", tiny_dir, "--weights", "gguf-a8")
    assert code == 2 and not out and len(err.strip().splitlines()) == 1
    assert "weights gguf-a8 (--weights, SIMLAB_WEIGHTS or the config file) reads a GGUF" in err


@pytest.mark.parametrize("kind", [Int8Linear, Int4Linear])
def test_layers_read_from_unaligned_memory_give_the_same_rows(kind):
    """A tensor read from a safetensors file can start anywhere; torch's AVX-512 int8 kernel
    crashed on such weights (37 output rows, a tail of 5), so the layers copy them to aligned memory."""
    torch.manual_seed(0)
    layer = kind.of(torch.randn(48 if kind is Int4Linear else 37, 64), None)
    buffers = dict(layer.named_buffers())
    moved = {}
    for name, tensor in buffers.items():  # each 8 bytes past an aligned start
        size = tensor.numel() * tensor.element_size()
        view = torch.zeros(size + 64, dtype=torch.uint8)[8 : 8 + size].view(tensor.dtype).view(tensor.shape)
        view.copy_(tensor)
        moved[name] = view
    if kind is Int8Linear:
        again = Int8Linear(moved["weight_int8"], moved["scale"], None)
    else:
        again = Int4Linear(moved["packed"], moved["scale_zero"], None, parts=int(moved["parts"]))
    x = torch.randn(3, 64)
    assert torch.equal(again(x), layer(x))
    assert all(b.data_ptr() % 64 == 0 for name, b in again.named_buffers() if name != "parts")
