"""simlab's `--pairs` directions against repeng's own (its read_representations, pca_diff) on the same
tiny model and the same contrastive pairs: the same direction per block where the hook point is the
same, and where it is not (repeng reads the last block through the final norm), said. Needs repeng
and scikit-learn, which CI does not install: skipped there with the reason."""

import numpy as np
import pytest
from conftest import tiny_llama_style

from simlab.config import Settings
from simlab.engine.local import Engine
from simlab.models.load import load_model
from simlab.steer import derive

sklearn = pytest.importorskip("sklearn", reason="scikit-learn (repeng's PCA) is not installed (not in CI)")
np.float_ = getattr(np, "float_", np.float64)  # (repeng 0.4 names a type NumPy 2 removed)
repeng = pytest.importorskip("repeng", reason="repeng is not installed (not in CI)")

PAIRS = [
    ("I am overjoyed, the sun is out and I could sing", "I am miserable, the rain will not stop"),
    ("What a wonderful morning at the lighthouse", "What a dreadful morning at the lighthouse"),
    ("She laughed and hugged her brother", "She wept and pushed her brother away"),
    ("The best day of my whole life", "The worst day of my whole life"),
    ("We won the match and cheered", "We lost the match and sulked"),
    ("Everything tastes sweet today", "Everything tastes bitter today"),
    ("He smiled at the fine old ship", "He scowled at the rotten old ship"),
    ("Joy, pure joy, in every step", "Grief, pure grief, in every step"),
]


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
