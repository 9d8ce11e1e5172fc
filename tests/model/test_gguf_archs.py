"""GGUF files of each architecture base-model users bring (Llama, Qwen2, Gemma 2), written as llama.cpp's
converter writes them (Llama's q and k rows with each head's rotary halves interleaved), read onto
simlab's kernel: every product from the file's own codes, the lean step, and siblings that are
their seeds alone."""

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from simlab.config import load_settings
from simlab.engine.local import Engine
from simlab.engine.params import SamplingParams
from simlab.models import native
from simlab.models.load import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from gguf_shapes import Shape, make  # noqa: E402

TINY = {
    "llama": Shape("llama", 64, 2, 4, 2, 128, 400, False),
    "qwen2": Shape("qwen2", 64, 2, 4, 2, 128, 400, True, 1_000_000.0, True, 1e-6),
    # softcapped attention and logits, a window of 8 on the first layer, heads of 32 (not 64 / 4)
    "gemma2": Shape("gemma2", 64, 2, 4, 2, 128, 400, True, eps=1e-6, head_dim=32, window=8),
}

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"no GGUF kernel here ({native.why()})")


@pytest.fixture(scope="module", params=[f"{arch}:{quant}" for arch in TINY for quant in ("Q8_0", "Q4_0")])
def gguf_file(request, tmp_path_factory) -> Path:
    arch, quant = request.param.split(":")
    return make(arch, quant, tmp_path_factory.mktemp("gguf"), shapes=TINY)


def test_every_product_reads_the_files_own_codes_and_decodes_lean(gguf_file):
    engine = Engine(load_model(str(gguf_file), load_settings(weights="gguf")))
    kinds = Counter(type(m).__name__ for m in engine.model.modules())
    assert kinds["Int8Linear"] == 0 and kinds["Linear"] == 0, kinds  # q and k too (their rows moved)
    assert kinds["NativeGroup"] == 2 * 2  # q/k/v and gate/up fused in each of the 2 blocks
    assert engine.lean and engine.rows_alone


def test_info_says_the_file_runs_whole_on_the_kernel(gguf_file, store):
    from test_repl import new_chat

    from simlab.repl.views import info_lines

    info = "\n".join(
        info_lines(new_chat(Engine(load_model(str(gguf_file), load_settings(weights="gguf"))), store))
    )
    assert "siblings  one batch" in info and "decode    lean step" in info and "simlab kernel" in info


def test_the_kernel_gives_the_float_models_logits_to_its_rounding(gguf_file):
    kernel = load_model(str(gguf_file), load_settings(weights="gguf")).model
    floats = load_model(str(gguf_file), load_settings(weights="float", dtype="float32")).model
    ids = torch.randint(0, 399, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = kernel(input_ids=ids).logits, floats(input_ids=ids).logits
    # the kernel rounds activations to 8 bits per group; with q and k rows in another order than
    # the codes' the logits would be a different model's (differences of the order of the logits)
    assert (a - b).abs().max() < 0.05 * b.abs().max()


def test_gguf_a8_rounds_every_products_activations_once_and_keeps_apart(gguf_file, tmp_path):
    """`--weights gguf-a8`: the same codes, every product's activations rounded to one level of 8-bit
    codes (llama.cpp's precision): close to the float model, further from it than two levels, and
    its kept prompt chunks in a folder of their own (other bits)."""
    from simlab.engine.open import prefix_folder

    once = load_model(str(gguf_file), load_settings(weights="gguf-a8"))
    layers = [m for m in once.model.modules() if isinstance(m, native.NativeLinear)]
    assert layers and all(m.kernel_bits & ~native.HALF == m.bits + native.ONE_LEVEL for m in layers)
    twice = load_model(str(gguf_file), load_settings(weights="gguf"))
    floats = load_model(str(gguf_file), load_settings(weights="float", dtype="float32")).model
    ids = torch.randint(0, 399, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b, want = (
            once.model(input_ids=ids).logits,
            twice.model(input_ids=ids).logits,
            floats(input_ids=ids).logits,
        )
    assert (a - want).abs().max() < 0.05 * want.abs().max()
    assert (a - want).abs().mean() > 4 * (b - want).abs().mean()
    settings = load_settings()
    assert once.info.revision == twice.info.revision
    assert prefix_folder(settings, once.info) != prefix_folder(settings, twice.info)


def test_a_long_prompts_chunks_go_in_together_with_the_bits_of_a_call_each(gguf_file, tmp_path, monkeypatch):
    """On the kernel every row is computed alone, so a prompt's chunks go through the model four at a
    time (a 1B model's prefill: each call reads the weights once for 256 tokens, not 64): the passes
    recorded, the chunks the disk keeps, the progress told after each call, and the reply are what
    a call for each pass gives, bit for bit. A sliding window's keys start where the window does, so
    Gemma 2's layers with a window of 8 take one pass a call (together, they gave other bits)."""
    from simlab.engine import prefix

    ids = list(range(3, 3 + 5 * prefix.CHUNK + 10))  # five whole chunks, 9 tokens, the last alone
    params = SamplingParams(temperature=1.0, max_new_tokens=6, seed=3)
    runs, kept, told = {}, {}, {}
    for together in (prefix.TOGETHER, prefix.CHUNK):
        monkeypatch.setattr(prefix, "TOGETHER", together)
        disk = tmp_path / str(together)
        engine = Engine(load_model(str(gguf_file), load_settings(weights="gguf")), prefix_dir=disk)
        engine.eos_ids = frozenset()
        run, told[together] = engine.start(ids, params), []
        run.on_prefill = lambda at, total, seen=told[together]: seen.append(at)
        list(run)
        runs[together] = run
        kept[together] = {path.name: path.read_bytes() for path in disk.rglob("*.safetensors")}
    four, one = runs[4 * prefix.CHUNK], runs[prefix.CHUNK]
    assert four.passes == one.passes == [prefix.CHUNK] * 5 + [9, 1]
    assert told[prefix.CHUNK] == [0, 64, 128, 192, 256, 320, 329, 330]
    sliding = "gemma2" in gguf_file.name
    assert told[4 * prefix.CHUNK] == (told[prefix.CHUNK] if sliding else [0, 256, 329, 330])
    [a], [b] = four.completions, one.completions
    assert a.token_ids == b.token_ids and [t.logprob for t in a.tokens] == [t.logprob for t in b.tokens]
    assert len(kept[prefix.CHUNK]) == 5 and kept[4 * prefix.CHUNK] == kept[prefix.CHUNK]


def test_a_sliding_windows_passes_share_calls_within_the_window_only(gguf_file, tmp_path, monkeypatch):
    """With a window of 200 the first three chunks go in one call, the rest one a call, and the
    reply and the chunks kept on disk are what one call a pass gives, bit for bit (the window is
    read from the model's config)."""
    from simlab.engine import prefix

    if "gemma2" not in gguf_file.name:
        pytest.skip("a model with sliding-window layers")
    loaded = load_model(str(gguf_file), load_settings(weights="gguf"))
    loaded.model.config.sliding_window = 200
    assert prefix.shared_up_to(loaded.model, True) == 200 and prefix.shared_up_to(loaded.model, False) == 0
    ids = list(range(3, 3 + 5 * prefix.CHUNK + 10))
    params = SamplingParams(temperature=1.0, max_new_tokens=6, seed=3)
    replies, told, kept = {}, {}, {}
    for together in (prefix.TOGETHER, prefix.CHUNK):
        monkeypatch.setattr(prefix, "TOGETHER", together)
        disk = tmp_path / str(together)
        engine = Engine(loaded, prefix_dir=disk)
        engine.eos_ids = frozenset()
        run, told[together] = engine.start(ids, params), []
        run.on_prefill = lambda at, total, seen=told[together]: seen.append(at)
        list(run)
        [replies[together]] = run.completions
        kept[together] = {path.name: path.read_bytes() for path in disk.rglob("*.safetensors")}
    assert told[4 * prefix.CHUNK] == [0, 192, 256, 320, 329, 330]
    assert (
        len(kept[prefix.CHUNK]) == 5 and kept[4 * prefix.CHUNK] == kept[prefix.CHUNK]
    )  # (sliding layers too)
    a, b = replies[4 * prefix.CHUNK], replies[prefix.CHUNK]
    assert a.token_ids == b.token_ids and [t.logprob for t in a.tokens] == [t.logprob for t in b.tokens]


@pytest.mark.parametrize("weights", ["gguf", "gguf-a8"])
def test_siblings_are_their_seeds_alone(gguf_file, weights):
    engine = Engine(load_model(str(gguf_file), load_settings(weights=weights)))
    assert engine.rows_alone and engine.info.weights == weights
    engine.eos_ids = frozenset()
    params = SamplingParams(temperature=1.0, max_new_tokens=30, seed=7)
    together = engine.generate("The keeper wrote", params, n=3)
    for i, sibling in enumerate(together):
        alone = engine.generate("The keeper wrote", SamplingParams(**{**params.__dict__, "seed": 7 + i}))[0]
        assert sibling.token_ids == alone.token_ids
        assert [t.logprob for t in sibling.tokens] == [t.logprob for t in alone.tokens]


@pytest.mark.parametrize("positions", ["all", "reply"])
def test_siblings_steered_at_different_strengths_are_one_batch_each_as_alone(gguf_file, positions):
    """On the kernel a batch gives each row its bits alone: siblings at different steering strengths
    decode as one batch (their prompts' caches joined), each its strength sampled alone on the
    run's one seed (a sweep's siblings share it)."""
    import numpy as np

    from simlab.engine.steering import Steering, Term

    engine = Engine(load_model(str(gguf_file), load_settings(weights="gguf")))
    engine.eos_ids, engine.prefix = frozenset(), None
    assert engine.rows_alone
    rng = np.random.default_rng(1)
    direction = {1: rng.standard_normal(64).astype(np.float32)}
    rows = [None, *(Steering((Term("v", "x", s, direction),), positions) for s in (3.0, 6.0))]
    params = SamplingParams(temperature=1.0, max_new_tokens=20, seed=9)
    together = engine.generate("The keeper wrote", params, n=3, steering=rows)
    for k, sibling in enumerate(together):
        extra = {"steering": rows[k]} if rows[k] else {}
        [alone] = engine.generate("The keeper wrote", params, **extra)
        same = [t.logprob for t in sibling.tokens] == [t.logprob for t in alone.tokens]
        assert sibling.token_ids == alone.token_ids and same, k
    assert len({tuple(t.logprob for t in c.tokens) for c in together}) == 3 and {
        c.seed for c in together
    } == {9}


def test_a_gemma2_reads_what_llama_cpp_reads_from_its_file(tmp_path):
    """transformers' GGUF loader leaves Gemma 2's softcapping and query scale at its config's
    defaults (a scale of 1/16 for every size); simlab reads them from the file as llama.cpp does:
    the head size, or hidden size over heads for the 46-layer (27B) model."""
    from simlab.models.gguf import llama_cpp_reads

    shapes = {
        "small": Shape("gemma2", 64, 2, 4, 2, 128, 400, True, head_dim=32),
        "27b-like": Shape("gemma2", 64, 46, 4, 2, 128, 400, True, head_dim=32),
    }
    want = {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
    assert llama_cpp_reads(make("small", "Q8_0", tmp_path, shapes=shapes)) == {
        **want,
        "query_pre_attn_scalar": 32,
    }
    assert llama_cpp_reads(make("27b-like", "Q8_0", tmp_path, shapes=shapes))["query_pre_attn_scalar"] == 16
    model = load_model(
        str(tmp_path / "small-Q8_0.gguf"), load_settings(weights="float", dtype="float32")
    ).model
    assert model.model.layers[0].self_attn.scaling == 32**-0.5
    assert model.config.final_logit_softcapping == 30.0


def test_a_gemma2_on_the_kernel_caps_its_logits_once_as_transformers_does(tmp_path):
    """The final cap moved into the unembedding is applied once, as transformers' forward applies
    it: logits made large (a final norm scaled up) are capped as the float model caps them, where
    none (about 60) or two caps (about 22) would be far off."""
    path = str(make("gemma2", "Q8_0", tmp_path, shapes=TINY))
    kernel = load_model(path, load_settings(weights="gguf")).model
    floats = load_model(path, load_settings(weights="float", dtype="float32")).model
    assert kernel.config._attn_implementation == "simlab" and type(kernel.lm_head).__name__ == "RowSoftcap"
    ids = torch.randint(0, 399, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for model in (kernel, floats):
            model.model.norm.weight.fill_(300.0)  # Gemma's norm scales by 1 + weight
        got, want = kernel(input_ids=ids).logits, floats(input_ids=ids).logits
    assert want.abs().max() > 25.0  # the cap bites: tanh(x / 30) * 30 near its bound
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_replay_loads_the_weights_a_reply_was_sampled_with_and_names_a_mix(tmp_path, capsys, store):
    """A chat sampled under `--weights gguf-a8` replays under it (the session says so, no flag);
    a path whose replies came from gguf and gguf-a8 says which one the replay takes."""
    from conftest import run_cli

    from simlab.persona.schema import Persona
    from simlab.turns import sample_replies, start_session

    path = make("llama", "Q8_0", tmp_path / "gguf", shapes=TINY)
    persona = Persona(name="p", frame="A chat.\n\n", sampling={"max_tokens": 12, "temperature": 1.0})
    with start_session(store, persona, "a8") as session:
        parent = session.tree.cursor
        for weights in ("gguf-a8", "gguf-a8", "gguf"):
            engine = Engine(load_model(str(path), load_settings(weights=weights)))
            user = session.add_child(parent, "user", "hi", speaker="User")
            [reply] = sample_replies(engine, session, user.id, persona.sampling_params(seed=3))
            assert reply.weights == weights
            parent = reply.id
            if weights == "gguf-a8":
                session.goto(reply.id)
    code, out, err = run_cli(capsys, "replay", "a8", "--sessions-dir", store.folder)
    assert code == 0 and "reproduced 2/2 replies exactly" in out and "note" not in err, (out, err)
    session = store.open("a8")
    session.goto(parent)
    session.close()
    code, out, err = run_cli(capsys, "replay", "a8", "--sessions-dir", store.folder)
    assert "replies on this path came from weights gguf, gguf-a8; replaying with gguf" in err
    assert out.count("(sampled with weights gguf-a8, replayed with gguf)") == 2, out


def test_gguf_a8_without_the_kernel_is_one_line_before_anything_loads(tmp_path, monkeypatch, capsys):
    from conftest import run_cli

    path = make("llama", "Q8_0", tmp_path / "gguf", shapes=TINY)
    monkeypatch.setenv("SIMLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(native._state, "lib", None)
    monkeypatch.setitem(native._state, "why", "SIMLAB_NATIVE=0")
    code, out, err = run_cli(capsys, "generate", "hi", "--model", str(path), "--weights", "gguf-a8")
    assert code == 2 and not out and len(err.strip().splitlines()) == 1, err
    assert "--weights gguf-a8 rounds activations in simlab's kernel (SIMLAB_NATIVE=0)" in err
    assert not (tmp_path / "home" / "models").exists()  # nothing read or converted first


def test_a_resumed_chat_samples_with_the_weights_its_replies_were_sampled_with(tmp_path, capsys, monkeypatch):
    from conftest import run_cli

    path = make("llama", "Q8_0", tmp_path / "gguf", shapes=TINY)
    common = ["--model", str(path), "--sessions-dir", str(tmp_path / "s"), "--max-tokens", "4"]
    code, _, err = run_cli(
        capsys,
        "chat",
        "--session",
        "a8",
        "--weights",
        "gguf-a8",
        *common,
        stdin="hi\n",
        monkeypatch=monkeypatch,
    )
    assert code == 0, err
    code, out, err = run_cli(
        capsys, "chat", "--resume", "a8", *common, stdin="/info\n", monkeypatch=monkeypatch
    )
    assert code == 0 and "weights gguf-a8" in out, (out, err)
    code, out, _ = run_cli(
        capsys,
        "chat",
        "--resume",
        "a8",
        "--weights",
        "gguf",
        *common,
        stdin="/info\n",
        monkeypatch=monkeypatch,
    )
    assert code == 0 and "weights gguf (" in out
