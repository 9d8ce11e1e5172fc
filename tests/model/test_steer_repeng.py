"""simlab's `--pairs` directions against repeng's own (its read_representations, pca_diff) on the same
tiny model and the same contrastive pairs: the same direction per block where the hook point is the
same, and where it is not (repeng reads the last block through the final norm), said. Needs repeng
and scikit-learn, which CI does not install: skipped there with the reason."""

import numpy as np
import pytest
from conftest import CONTRASTIVE_PAIRS as PAIRS
from conftest import tiny_llama_style

from simlab.config import Settings
from simlab.engine.local import Engine
from simlab.models.load import load_model
from simlab.steer import derive

sklearn = pytest.importorskip("sklearn", reason="scikit-learn (repeng's PCA) is not installed (not in CI)")
np.float_ = getattr(np, "float_", np.float64)  # (repeng 0.4 names a type NumPy 2 removed)
repeng = pytest.importorskip("repeng", reason="repeng is not installed (not in CI)")


def test_pca_directions_agree_with_repengs_on_the_same_pairs(tiny_dir, tmp_path):
    folder = tiny_llama_style(tmp_path / "llama", "llama", tiny_dir)
    loaded = load_model(str(folder), Settings(device="cpu", dtype="float32", weights="float"))
    engine = Engine(loaded)
    ours = derive.directions(derive.read_pairs(engine, PAIRS), "pca")
    from repeng.extract import DatasetEntry, read_representations

    entries = [DatasetEntry(positive=p, negative=n) for p, n in PAIRS]
    loaded.tokenizer.pad_token_id = 0  # (as repeng's README sets it; one prompt a batch: never padded)
    theirs = read_representations(
        loaded.model, loaded.tokenizer, entries, hidden_layers=[0, 1, 2], batch_size=1
    )
    cosine = {}
    for block in (0, 1, 2):
        a, b = ours[block].direction, theirs[block]
        cosine[block] = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    # blocks 0 and 1: both read the block's output (hidden_states[N + 1]): the same direction, sign too
    print(f"cosine with repeng per block: {cosine}")
    assert cosine[0] >= 0.99 and cosine[1] >= 0.99, cosine
    # block 2, the last: repeng reads hidden_states[-1], which transformers gives after the final norm;
    # simlab reads the block's own output, where a vector is added (and where llama.cpp adds it)
    assert cosine[2] < 0.99, cosine


def test_a_vector_repeng_exports_steers_as_its_control_model_does(tiny_dir, tmp_path, capsys):
    """repeng's export_gguf loads in simlab (steer import) and steers greedy decoding to the tokens
    repeng's ControlModel gives at the same coefficient (both add coeff x direction to block N's
    output; a new model each, since ControlModel rewires the one it wraps)."""
    import torch
    from conftest import run_cli
    from repeng import ControlModel, ControlVector

    from simlab.engine.params import SamplingParams
    from simlab.steer.use import steering_of, uses_of

    folder = tiny_llama_style(tmp_path / "llama", "llama", tiny_dir)
    settings = Settings(device="cpu", dtype="float32", weights="float")
    rng = np.random.default_rng(5)
    vector = ControlVector("llama", {i: (3 * rng.standard_normal(32)).astype(np.float32) for i in (1, 2)})
    vector.export_gguf(str(tmp_path / "calm.gguf"))
    code, out, _ = run_cli(capsys, "steer", "import", tmp_path / "calm.gguf")
    assert code == 0 and "imported calm: blocks 1-2" in out
    theirs_model = load_model(str(folder), settings)
    ids = theirs_model.tokenizer("The keeper wrote", add_special_tokens=False)["input_ids"]
    control = ControlModel(theirs_model.model, [1, 2])
    control.set_control(vector, 1.5)
    theirs = control.generate(
        torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None
    )[0, len(ids) :].tolist()
    engine = Engine(load_model(str(folder), settings))
    engine.eos_ids = frozenset()
    [ours] = engine.generate(
        ids,
        SamplingParams(temperature=0, max_new_tokens=12),
        steering=steering_of(uses_of(["calm:1.5"]), engine),
    )
    plain = engine.generate(ids, SamplingParams(temperature=0, max_new_tokens=12))[0].token_ids
    assert ours.token_ids == theirs and ours.token_ids != plain
