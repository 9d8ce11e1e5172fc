"""compare's next-token distributions "as sampled" are the ones the engine's own logits steps give."""

import numpy as np
import pytest
import torch

from simlab.compare.metrics import as_sampled
from simlab.engine.logits import process_logits
from simlab.engine.params import SamplingParams


def test_as_sampled_matches_the_engines_own_logits_steps():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(50, 0.3))
    for params in (
        SamplingParams(temperature=0.7, top_p=0.9),
        SamplingParams(temperature=1.3, top_p=0.95, top_k=10),
        SamplingParams(temperature=1.0, top_p=1.0, min_p=0.05),
        SamplingParams(temperature=0.9, top_p=1.0, typical_p=0.8),
    ):
        logits = process_logits(torch.log(torch.tensor(p)).unsqueeze(0), None, params)
        expected = logits.softmax(-1).squeeze(0).numpy()
        assert as_sampled(p, params) == pytest.approx(expected, abs=1e-9)
