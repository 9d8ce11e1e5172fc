"""Interop: a steering vector written by simlab, loaded into llama.cpp by the rules of its own loader
(common_control_vector_load: direction.N, layer 1 at the buffer's start) and applied by its own
graph (llama_set_adapter_cvec, build_cvec at each block's output) on the same GGUF, steers greedy
decoding as simlab's steering does. Needs llama-cpp-python (never installed in CI: skipped there,
with the reason)."""

import ctypes

import numpy as np
import pytest

from simlab.engine.params import SamplingParams
from simlab.models.gguf import source_file
from simlab.steer.use import Use, steering_of
from simlab.steer.vector import SteerVector, read

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (never in CI)")
pytestmark = pytest.mark.slow

PROMPT = "Interviewer: How long have you kept this light?\nKeeper:"
TOKENS = 20


def llama_buffer(vector: SteerVector, strength: float, layers: int) -> np.ndarray:
    """common_control_vector_load's buffer: direction.N times the strength at [(N - 1) * n_embd]."""
    data = np.zeros(((layers - 1), vector.hidden), dtype=np.float32)
    for block, direction in vector.directions.items():
        data[block - 1] += direction * np.float32(strength)
    return data.ravel()


def greedy_llama(path, ids, buffer=None, hidden=0, layers=0) -> list[int]:
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, verbose=False)
    if buffer is not None:
        pointer = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        assert llama_cpp.llama_set_adapter_cvec(llm._ctx.ctx, pointer, buffer.size, hidden, 1, layers) == 0
    out = []
    for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        out.append(token)
        if len(out) == TOKENS:
            break
    del llm
    return out


def test_a_simlab_vector_steers_llama_cpp_as_it_steers_simlab(embedded_engine, tmp_path):
    engine = embedded_engine
    info = engine.info
    rng = np.random.default_rng(3)
    blocks = range(6, 13)
    directions = {b: rng.standard_normal(info.hidden_size).astype(np.float32) for b in blocks}
    vector = SteerVector(directions, {"name": "interop", "model": info.name})
    path = vector.write(tmp_path / "interop.gguf")
    back = read(path)
    strength = 6.0
    steering = steering_of([Use("interop", strength, None, back)], engine)
    ids = engine.encode(PROMPT)
    params = SamplingParams(temperature=0, max_new_tokens=TOKENS)
    ours_plain = engine.generate(ids, params)[0].token_ids
    ours = engine.generate(ids, params, steering=steering)[0].token_ids
    assert ours != ours_plain  # strong enough to change the greedy continuation
    with source_file("embedded") as gguf:
        theirs_plain = greedy_llama(gguf, ids)
        buffer = llama_buffer(back, strength, info.layers)
        theirs = greedy_llama(gguf, ids, buffer, info.hidden_size, info.layers)
    assert theirs != theirs_plain  # llama.cpp steered too
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    # the two kernels round differently: the same tokens for as long as the plain runs agree
    plain_same = next(
        (i for i, (a, b) in enumerate(zip(ours_plain, theirs_plain)) if a != b), len(ours_plain)
    )
    print(f"steered: the same first {same} of {TOKENS} tokens; unsteered: {plain_same}")
    decode = engine.tokenizer.decode
    assert same >= min(8, plain_same), (decode(ours), decode(theirs))
