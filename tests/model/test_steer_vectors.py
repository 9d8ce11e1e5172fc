"""simlab against steering-vectors (steering-vectors/steering-vectors) on the same tiny Llama: the same
mean-difference directions from the same contrastive pairs (its train_steering_vector reads each
prompt's last token at every decoder block's output, as `steer derive --pairs` does), and a vector it
trained, saved with torch.save and imported, steering as its own `apply` does. Needs
steering-vectors and scikit-learn, which CI does not install: skipped there with the reason."""

import numpy as np
import pytest
import torch
from conftest import CONTRASTIVE_PAIRS as PAIRS
from conftest import run_cli, tiny_llama_style

from simlab.config import Settings
from simlab.engine.local import Engine
from simlab.engine.params import SamplingParams
from simlab.models.load import load_model
from simlab.steer import derive, library

pytest.importorskip(
    "sklearn", reason="scikit-learn (steering-vectors' aggregators) is not installed (not in CI)"
)
sv = pytest.importorskip("steering_vectors", reason="steering-vectors is not installed (not in CI)")


@pytest.fixture(scope="module")
def loaded(tiny_dir, tmp_path_factory):
    folder = tiny_llama_style(tmp_path_factory.mktemp("llama"), "llama", tiny_dir)
    return load_model(str(folder), Settings(device="cpu", dtype="float32", weights="float"))


def test_mean_directions_are_steering_vectors_own_on_every_block(loaded):
    engine = Engine(loaded)
    ours = derive.directions(derive.read_pairs(engine, PAIRS), "mean")
    theirs = sv.train_steering_vector(loaded.model, loaded.tokenizer, PAIRS, layers=[0, 1, 2])
    for block in (0, 1, 2):  # the same hook point on every block (the last block's own output too)
        a, b = ours[block].direction, theirs.layer_activations[block].numpy()
        cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert cosine >= 0.99, (block, cosine)
        assert np.allclose(a, b, rtol=1e-4, atol=1e-5)  # the mean difference itself, not only its line


@pytest.mark.parametrize("saved", ["object", "layer_activations"])
def test_an_imported_vector_steers_as_steering_vectors_applies_it(loaded, tmp_path, capsys, saved):
    torch.manual_seed(4)
    vector = sv.SteeringVector({1: 3 * torch.randn(32), 2: 3 * torch.randn(32)}, "decoder_block")
    path = tmp_path / "joy.pt"
    torch.save(vector if saved == "object" else vector.layer_activations, path)
    code, out, _ = run_cli(capsys, "steer", "import", path)
    assert code == 0 and "imported joy: blocks 1-2, 32 wide" in out
    ids = loaded.tokenizer("The keeper wrote", add_special_tokens=False)["input_ids"]
    with vector.apply(loaded.model, multiplier=1.5):
        theirs = loaded.model.generate(
            torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None
        )[0, len(ids) :].tolist()
    from simlab.steer.use import steering_of, uses_of

    engine = Engine(loaded)
    engine.eos_ids = frozenset()
    steering = steering_of(uses_of(["joy:1.5"]), engine)
    [ours] = engine.generate(ids, SamplingParams(temperature=0, max_new_tokens=12), steering=steering)
    plain = engine.generate(ids, SamplingParams(temperature=0, max_new_tokens=12))[0].token_ids
    assert ours.token_ids == theirs and ours.token_ids != plain  # (the vector changes the reply)
    assert library.find("joy").meta["source"] == "steering-vectors"


def test_block_0_is_left_out_and_another_hook_point_refused(tmp_path, capsys):
    vector = sv.SteeringVector({0: torch.ones(32), 1: torch.ones(32)}, "decoder_block")
    torch.save(vector, tmp_path / "v.pt")
    code, out, _ = run_cli(capsys, "steer", "import", tmp_path / "v.pt")
    assert code == 0 and "left out: block 0" in out and library.find("v").layers == [1]
    torch.save(sv.SteeringVector({1: torch.ones(32)}, "mlp"), tmp_path / "m.pt")
    code, _, err = run_cli(capsys, "steer", "import", tmp_path / "m.pt")
    assert code == 2 and "'mlp' outputs" in err and len(err.strip().splitlines()) == 1
