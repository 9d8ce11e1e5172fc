"""Steering without a model: a server is refused in one line, naming the servers that could steer."""

import numpy as np
import pytest

from simlab.errors import NeedsLocalModel
from simlab.steer import library
from simlab.steer.use import steering_of, uses_of
from simlab.steer.vector import SteerVector


def test_a_server_cannot_be_steered_and_says_who_could(fake_engine):
    SteerVector({1: np.ones(8, np.float32)}, {"name": "v"}).write(library.folder() / "v.gguf")
    from conftest import FakeEngine

    server = FakeEngine(local=False)
    with pytest.raises(NeedsLocalModel, match="vLLM only with the vllm-lens plugin"):
        steering_of(uses_of(["v:2"]), server)
