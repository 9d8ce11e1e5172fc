"""Steering vectors: the control-vector file by llama.cpp's rules, the library and its commands,
and `--steer` adding the vector at blocks' outputs exactly as an explicit hook does (the model's
forward and the lean decode step), at the positions asked for, never leaking through kept caches."""

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import run_cli, tiny_llama_style

from simlab.config import Settings
from simlab.engine.local import Engine
from simlab.engine.params import SamplingParams
from simlab.engine.steering import Steering, Term
from simlab.errors import SteerError
from simlab.models.load import load_model
from simlab.models.steering import block_list
from simlab.steer.vector import SteerVector, parse_use, read

GREEDY = SamplingParams(temperature=0, max_new_tokens=12)
PROMPT = "The keeper wrote in his log that night"


def directions(hidden: int, blocks, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {b: rng.standard_normal(hidden).astype(np.float32) for b in blocks}


def steering(vector: SteerVector, strength: float, positions: str = "all") -> Steering:
    return Steering((Term("v", vector.digest, strength, vector.directions),), positions)


def by_hand(engine: Engine, vector: SteerVector, strength: float):
    """repeng's way, written out: a forward hook on each block adding strength x direction to its
    output at every position, for the whole run (the engine itself told nothing)."""
    blocks = block_list(engine.model)[1]
    handles = []
    for block, direction in vector.directions.items():
        add = torch.from_numpy(np.float32(strength) * direction)

        def hook(module, args, output, add=add):
            return (output[0] + add, *output[1:]) if isinstance(output, tuple) else output + add

        handles.append(blocks[block].register_forward_hook(hook))
    kept = engine.lean, engine.prefix
    engine.lean = engine.prefix = None  # the hooks live in the model's forward; no cache kept before
    try:
        return engine.generate(PROMPT, GREEDY)[0]
    finally:
        engine.lean, engine.prefix = kept
        for handle in handles:
            handle.remove()


@pytest.fixture(scope="module")
def llama_engine(tiny_dir, tmp_path_factory):
    folder = tiny_llama_style(tmp_path_factory.mktemp("llama"), "llama", tiny_dir)
    return Engine(load_model(str(folder), Settings(device="cpu", dtype="float32")), reuse_prefix=True)


def test_the_file_is_a_control_vector_llama_cpp_reads_and_comes_back_whole(tmp_path):
    vector = SteerVector(
        directions(32, [1, 2]), {"name": "noir", "model": "tiny", "aggregate": "mean"}, "llama"
    )
    path = vector.write(tmp_path / "noir.gguf")
    reader = gguf.GGUFReader(str(path))
    arch = reader.get_field("general.architecture")
    assert bytes(arch.parts[-1]).decode() == "controlvector"
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.2"]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 and len(t.shape) == 1 for t in reader.tensors)
    back = read(path)
    assert back.digest == vector.digest and back.model_hint == "llama"
    assert back.meta["aggregate"] == "mean" and back.meta["hook"] == "block_out"
    assert all(np.array_equal(back.directions[b], vector.directions[b]) for b in (1, 2))


def write_like_repeng(path: Path, blocks, hidden: int = 32, extra=()) -> dict:
    """repeng 0.4's ControlVector.export_gguf, as its source writes the file."""
    made = directions(hidden, blocks, seed=9)
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", len(made))
    for layer in made:
        writer.add_tensor(f"direction.{layer}", made[layer])
    for name, data in extra:
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return made


def test_repengs_file_reads_and_bad_files_are_refused_in_one_line(tmp_path):
    made = write_like_repeng(tmp_path / "happy.gguf", [1, 2, 3])
    vector = read(tmp_path / "happy.gguf")
    assert vector.layers == [1, 2, 3] and np.array_equal(vector.directions[2], made[2])
    with pytest.raises(SteerError, match="direction.0 is not a layer llama.cpp steers"):
        write_like_repeng(tmp_path / "zero.gguf", [0, 1])
        read(tmp_path / "zero.gguf")
    write_like_repeng(tmp_path / "half.gguf", [1], extra=[("direction.2", np.zeros(32, np.float16))])
    with pytest.raises(SteerError, match="not a 1-D F32 tensor"):
        read(tmp_path / "half.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(SteerError, match="not a GGUF control vector"):
        read(tmp_path / "junk.gguf")
    with pytest.raises(SteerError, match="block 0 cannot be written"):
        SteerVector(directions(32, [0])).write(tmp_path / "z.gguf")
    wide = SteerVector(directions(64, [1]), {"name": "wide", "model": "Llama-3-8B"})
    with pytest.raises(SteerError, match="wide is 64 wide but tiny's residual stream is 32: .*Llama-3-8B"):
        wide.fit(3, 32, "tiny")
    with pytest.raises(SteerError, match="block 5 but tiny has blocks 0-2"):
        SteerVector(directions(32, [5])).fit(3, 32, "tiny")


def test_a_steering_vectors_save_imports_and_bad_saves_are_one_line(tmp_path):
    """steering-vectors has no file format: its users torch.save the layer_activations dict (read
    here without the package) or the SteeringVector (tests/model/test_steer_vectors.py)."""
    from simlab.steer import library

    layers = {i: torch.from_numpy(d) for i, d in directions(32, [0, 1, 2]).items()}
    torch.save(layers, tmp_path / "joy.pt")
    name, vector, left = library.import_file(tmp_path / "joy.pt", None, False)
    assert name == "joy" and vector.layers == [1, 2] and left and "block 0" in left[0]
    kept = library.find("joy")  # written into the library as a control-vector GGUF
    assert np.array_equal(kept.directions[2], layers[2].numpy()) and kept.meta["source"] == "steering-vectors"
    for content, expected in (
        (torch.ones(32), "not a steering-vectors save"),
        ({1: torch.ones(2, 32)}, "layer 1 is not one finite vector"),
        ({1: torch.ones(32), 2: torch.ones(16)}, "differ in width"),
        ({0: torch.ones(32)}, "only block 0"),
        ({1: ["a", "b"]}, "layer 1 is not a vector of numbers"),
    ):
        torch.save(content, tmp_path / "bad.pt")
        with pytest.raises(SteerError, match=expected):
            library.import_file(tmp_path / "bad.pt", None, True)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(SteerError, match="junk.pt: "):
        library.import_file(tmp_path / "junk.pt", None, True)


def test_a_strength_whose_addition_overflows_is_one_line(tiny_engine):
    from simlab.steer import library
    from simlab.steer.use import steering_of, uses_of

    SteerVector({1: np.full(32, 1e10, np.float32)}, {"name": "big"}).write(library.folder() / "big.gguf")
    with pytest.raises(SteerError, match="strength 1e\\+29 times block 1's direction overflows float32"):
        steering_of(uses_of(["big:1e29"]), tiny_engine)
    assert steering_of(uses_of(["big:1e20"]), tiny_engine) is not None


def test_the_use_spec_reads_name_strength_and_blocks():
    assert parse_use("noir") == ("noir", (1.0,), None)
    assert parse_use("noir:-0.5@1-3,5") == ("noir", (-0.5,), (1, 2, 3, 5))
    assert parse_use("./v.gguf@2") == ("./v.gguf", (1.0,), (2,))
    assert parse_use("noir:0,0.5,2@1") == ("noir", (0.0, 0.5, 2.0), (1,))  # one strength a sibling
    for bad in ("noir:x", "noir@3-1", ":2", "noir:inf", "noir:2@"):
        with pytest.raises(SteerError):
            parse_use(bad)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_steering_is_an_explicit_hook_at_the_blocks_outputs_bit_for_bit(kind, tiny_engine, llama_engine):
    """The engine's steering (hooks while the prompt goes in; on the lean step, its own addition)
    gives the very tokens and log-probabilities of repeng's hooks written out by hand."""
    engine = tiny_engine if kind == "gpt2" else llama_engine
    assert (kind == "llama") == bool(engine.lean)  # the llama decodes on the lean step
    vector = SteerVector(directions(engine.info.hidden_size, [1]))
    plain = engine.generate(PROMPT, GREEDY)[0]
    steered = engine.generate(PROMPT, GREEDY, steering=steering(vector, 4.0))[0]
    hand = by_hand(engine, vector, 4.0)
    assert [t.id for t in steered.tokens] == [t.id for t in hand.tokens]
    assert [t.logprob for t in steered.tokens] == [t.logprob for t in hand.tokens]
    assert [t.id for t in steered.tokens] != [t.id for t in plain.tokens]  # it does steer


def test_positions_choose_where_the_vector_is_added(llama_engine):
    vector = SteerVector(directions(32, [1, 2]))
    plain = llama_engine.generate(PROMPT, GREEDY)[0]
    every = llama_engine.generate(PROMPT, GREEDY, steering=steering(vector, 4.0))[0]
    prompt = llama_engine.generate(PROMPT, GREEDY, steering=steering(vector, 4.0, "prompt"))[0]
    reply = llama_engine.generate(PROMPT, GREEDY, steering=steering(vector, 4.0, "reply"))[0]
    assert prompt.tokens[0].logprob == every.tokens[0].logprob != plain.tokens[0].logprob
    assert reply.tokens[0].logprob == plain.tokens[0].logprob  # the first token reads an unsteered prompt
    assert [t.id for t in reply.tokens] != [t.id for t in plain.tokens]


def test_no_cache_carries_steering_from_one_run_to_another(llama_engine, tiny_dir, tmp_path):
    """A kept cache is read only by a run steered alike: the unsteered run after a steered one is
    the one before it, a steered run after an unsteered one is as on a fresh engine, and a second
    steered run reads the first's cache (a chat's next turn) and still gives the same bits."""
    vector = SteerVector(directions(32, [1]))
    before = llama_engine.generate(PROMPT, GREEDY)[0]
    steered = llama_engine.generate(PROMPT, GREEDY, steering=steering(vector, 3.0))[0]
    run = llama_engine.start(PROMPT, GREEDY, steering=steering(vector, 3.0))
    again = [list(run), run.completions[0]][1]
    assert run.stats.reused_tokens > 0 and [t.logprob for t in again.tokens] == [
        t.logprob for t in steered.tokens
    ]
    stronger = llama_engine.start(PROMPT, GREEDY, steering=steering(vector, 3.5))
    list(stronger)
    assert stronger.stats.reused_tokens == 0  # another strength: another cache
    after = llama_engine.generate(PROMPT, GREEDY)[0]
    assert [t.logprob for t in after.tokens] == [t.logprob for t in before.tokens]
    folder = tiny_llama_style(tmp_path / "again", "llama", tiny_dir)
    fresh = Engine(load_model(str(folder), Settings(device="cpu", dtype="float32")), reuse_prefix=False)
    alone = fresh.generate(PROMPT, GREEDY, steering=steering(vector, 3.0))[0]
    assert [t.logprob for t in steered.tokens] == [t.logprob for t in alone.tokens]


def test_the_steer_commands_and_generate_steer(capsys, tmp_path, tiny_dir):
    write_like_repeng(tmp_path / "happy.gguf", [1])
    code, out, _ = run_cli(capsys, "steer", "import", tmp_path / "happy.gguf")
    assert code == 0 and "imported happy: block 1, 32 wide" in out
    code, out, err = run_cli(capsys, "steer", "import", tmp_path / "happy.gguf")
    assert code == 2 and "--name NAME), or --force" in err
    code, out, _ = run_cli(capsys, "steer", "list")
    assert code == 0 and out.startswith("happy") and "block 1 · 32 wide · llama" in out
    code, out, _ = run_cli(capsys, "steer", "show", "happy", "--json")
    assert code == 0 and list(json.loads(out)["norms"]) == ["1"]
    flags = ["--model", tiny_dir, "--max-tokens", "6", "--temperature", "0", "--json"]
    code, out, _ = run_cli(capsys, "generate", PROMPT, "--steer", "happy:2.5", *flags)
    record = json.loads(out)["steering"]
    assert code == 0 and record["positions"] == "all"
    assert record["terms"][0]["strength"] == 2.5 and record["terms"][0]["blocks"] == [1]
    code, out, _ = run_cli(capsys, "generate", PROMPT, "--steer", "happy:0,2.5", *flags)
    sweep = json.loads(out)["completions"]  # one sibling a strength, without -n
    assert code == 0 and [c["steering"] and c["steering"]["terms"][0]["strength"] for c in sweep] == [
        None,
        2.5,
    ]
    code, _, err = run_cli(capsys, "generate", PROMPT, "--steer", "happy:0,2.5", "-n", "3", *flags)
    assert code == 2 and "2 strengths are one a sibling; sample 2 siblings" in err
    code, _, err = run_cli(capsys, "generate", PROMPT, "--steer", "happy@0", *flags)
    assert code == 2 and "happy has no direction for block 0 (it has 1)" in err
    code, _, err = run_cli(capsys, "generate", PROMPT, "--steer", "sad", *flags)
    assert code == 2 and "no steering vector 'sad'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "generate", PROMPT, "--steer", "happy:1e31", *flags)
    assert code == 2 and "a strength must be a finite number" in err
    code, _, err = run_cli(capsys, "steer", "export", "happy", "-o", tmp_path / "no" / "such" / "x.gguf")
    assert code == 2 and "cannot write" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run_cli(capsys, "steer", "export", "happy", "-o", tmp_path / "out.gguf")
    assert code == 0 and read(tmp_path / "out.gguf").digest == read(tmp_path / "happy.gguf").digest
    assert (
        run_cli(capsys, "steer", "rm", "happy")[0] == 0 and run_cli(capsys, "steer", "show", "happy")[0] == 2
    )


def test_a_trace_of_a_steered_reply_reads_the_steered_stream(tiny_engine):
    """The vector's hooks run before a trace's on the same block: block 1's recorded output at the
    last prompt position is the unsteered one plus the vector, block 0's is untouched."""
    from simlab.trace.config import TraceConfig
    from simlab.trace.record import Recorder

    vector = SteerVector(directions(tiny_engine.info.hidden_size, [1]))
    recorded = {}
    for name, steered in (("plain", None), ("steered", steering(vector, 2.0))):
        recorder = Recorder(tiny_engine.model, TraceConfig(dtype="float32"))
        extra = {"steering": steered} if steered else {}
        kept, tiny_engine.prefix = tiny_engine.prefix, None  # (each reads its prompt afresh)
        try:
            run = tiny_engine.start(PROMPT, GREEDY, recorder=recorder, **extra)
            list(run)
        finally:
            tiny_engine.prefix = kept
        recorded[name] = recorder.result(0)[0]
    plain, steered_ = recorded["plain"], recorded["steered"]
    assert torch.equal(plain["block.0"][0], steered_["block.0"][0])
    expected = plain["block.1"][0] + torch.from_numpy(np.float32(2.0) * vector.directions[1])
    assert torch.allclose(steered_["block.1"][0], expected, atol=1e-5)


@pytest.mark.parametrize("positions", ["all", "reply"])
def test_siblings_at_different_strengths_decode_as_one_batch_each_as_alone(llama_engine, positions):
    """A sweep of strengths (`keeper:0,2,4`) is one sibling a strength, decoded as one batch after a
    prefill per prompt steering; each sibling is the tokens and log-probabilities of that strength
    sampled alone with the run's seed (a sweep's siblings share it: the strengths on the same draws)."""
    vector = SteerVector(directions(32, [1, 2]))
    strengths = (0.0, 2.0, 4.0)
    rows = [steering(vector, x, positions) if x else None for x in strengths]
    params = SamplingParams(temperature=0.9, max_new_tokens=12, seed=21)
    kept, llama_engine.prefix = llama_engine.prefix, None  # (each prompt read afresh, alone or not)
    try:
        together = llama_engine.generate(PROMPT, params, n=3, steering=rows)
        for k, (row, strength) in enumerate(zip(together, strengths)):
            assert row.seed == 21
            alone_params = params.with_overrides(seed=21)
            extra = {"steering": rows[k]} if rows[k] else {}
            [alone] = llama_engine.generate(PROMPT, alone_params, **extra)
            assert row.token_ids == alone.token_ids, (strength, k)
            assert [t.logprob for t in row.tokens] == [t.logprob for t in alone.tokens], (strength, k)
    finally:
        llama_engine.prefix = kept
    assert len({tuple(t.logprob for t in c.tokens) for c in together}) == 3  # the strengths steer apart


def test_siblings_at_different_strengths_are_not_traced_together_and_say_so(tiny_engine):
    from simlab.errors import SteerError
    from simlab.trace.config import TraceConfig
    from simlab.trace.record import Recorder

    vector = SteerVector(directions(tiny_engine.info.hidden_size, [1]))
    recorder = Recorder(tiny_engine.model, TraceConfig(dtype="float32"))
    with pytest.raises(SteerError, match="not traced together"):
        tiny_engine.start(PROMPT, GREEDY, n=2, recorder=recorder, steering=[None, steering(vector, 2.0)])
