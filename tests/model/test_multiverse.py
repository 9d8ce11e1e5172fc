"""The block multiverse (engine.multiverse, `simlab multiverse`): every block above the cutoff, each
block's probability the product of its tokens' conditional probabilities as one sequence alone
gives them, under the sampler's settings or the model's own distribution."""

import json

import pytest
import torch
from conftest import run_cli

from simlab.engine.multiverse import distribution, grow
from simlab.engine.params import SamplingParams

PROMPT = "The keeper wrote in his log"


def one_sequence(engine, prompt: list[int], ids: tuple, params, raw) -> list[float]:
    """Each token's conditional probability, from one forward of the prompt and the tokens alone."""
    full = prompt + list(ids)
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([full])).logits[0]
    return [
        float(distribution(logits[len(prompt) - 1 + k], full[: len(prompt) + k], params, raw)[t])
        for k, t in enumerate(ids)
    ]


@pytest.mark.parametrize("raw, cutoff, depth", [(False, 0.01, 4), (True, 0.003, 2)])
def test_every_block_above_the_cutoff_with_its_exact_probability(tiny_engine, raw, cutoff, depth):
    # (the tiny random model's own distribution is nearly flat over 400 tokens: raw, one level)
    params = SamplingParams(temperature=0.5, top_p=0.9, top_k=5, repetition_penalty=1.2)
    prompt = tiny_engine.encode(PROMPT)
    universe = grow(
        tiny_engine, prompt, params, depth=depth, cutoff=cutoff, raw=raw, rows=3
    )  # (batches of 3)
    assert len(universe.covered) >= (1 if raw else 3) and universe.passes > (1 if raw else 3)
    stack, seen = [universe.root], 0
    while stack:
        block = stack.pop()
        stack.extend(block.children)
        if block is universe.root:
            continue
        seen += 1
        conditionals = one_sequence(tiny_engine, prompt, block.ids, params, raw)
        product = 1.0
        for q in conditionals:
            product *= q
        assert block.p == pytest.approx(product, rel=1e-5) and block.p >= cutoff  # (the issue: to 1e-5)
        assert block.conditional == pytest.approx(conditionals[-1], rel=1e-5)
        assert [c.p for c in block.children] == sorted((c.p for c in block.children), reverse=True)
    # nothing above the cutoff is left out: at depth 1, exactly the tokens of probability >= cutoff
    first = one_sequence(tiny_engine, prompt, (), params, raw)  # (no tokens: the next one's distribution)
    with torch.inference_mode():
        logits = tiny_engine.model(input_ids=torch.tensor([prompt])).logits[0, -1]
    q = distribution(logits, prompt, params, raw)
    assert first == [] and {b.ids[0] for b in universe.root.children} == set(
        torch.nonzero(q >= cutoff).flatten().tolist()
    )
    assert universe.covered[0] == pytest.approx(sum(b.p for b in universe.root.children))
    assert seen == sum(1 for _ in universe.leaves()) + sum(1 for b in _all(universe.root) if b.children) - 1


def test_greedy_is_one_path_the_sampler_would_take(tiny_engine):
    params = SamplingParams(temperature=0, repetition_penalty=1.3, max_new_tokens=5)
    prompt = tiny_engine.encode(PROMPT)
    universe = grow(tiny_engine, prompt, params, depth=5, cutoff=0.5)
    [leaf] = universe.leaves()
    [reply] = tiny_engine.generate(prompt, params)
    assert list(leaf.ids) == reply.token_ids[:5] and leaf.p == 1.0 and universe.covered == [1.0] * 5


def _all(block):
    yield block
    for child in block.children:
        yield from _all(child)


def test_the_command_draws_blocks_and_writes_json(capsys, tiny_dir):
    sharp = ["--temperature", "0.5", "--top-k", "5"]  # (the tiny random model is nearly flat)
    code, out, err = run_cli(
        capsys, "multiverse", "--text", PROMPT, "--model", tiny_dir, "--depth", "3", "--json", *sharp
    )
    assert code == 0, err
    tree = json.loads(out)
    assert tree["depth"] == 3 and tree["blocks"] and tree["covered"][0] <= 1.0 + 1e-9
    top = tree["blocks"][0]
    assert set(top) == {"ids", "token", "text", "p", "conditional", "children"} and top["p"] >= 0.01
    code, out, _ = run_cli(
        capsys,
        "multiverse",
        "--text",
        PROMPT,
        "--model",
        tiny_dir,
        "--depth",
        "2",
        "--raw",
        "--cutoff",
        "0.002",
    )
    assert (
        code == 0
        and "covers " in out
        and "the model's own distribution" in out
        and "%" in out.splitlines()[0]
    )
    server = ["--backend", "openai", "--base-url", "http://127.0.0.1:9/v1"]
    for flags, wanted in (
        (["--depth", "0"], "give 1 to 64 tokens"),
        (["--cutoff", "2"], "at most 1"),
        (server, "a multiverse"),
    ):
        code, _, err = run_cli(capsys, "multiverse", "--text", PROMPT, "--model", tiny_dir, *flags)
        assert code == 2 and wanted in err and len(err.strip().splitlines()) == 1
