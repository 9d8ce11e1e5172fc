"""Residual-stream capture and the logit lens on the tiny GPT-2, a tiny Llama and a tiny Gemma 3."""

import io
import json
import re

import pytest
import torch
from conftest import tiny_llama_style

from simlab.config import Settings
from simlab.engine.local import Engine
from simlab.engine.params import SamplingParams
from simlab.errors import TraceError
from simlab.models.load import load_model
from simlab.trace.config import TraceConfig, parse_layers
from simlab.trace.files import remove_session
from simlab.trace.lens import Lens, diff_rows
from simlab.trace.record import Recorder, find_architecture, load, manifest, save


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma3"])
def model(request, tiny_dir, tmp_path_factory):
    folder = (
        tiny_dir
        if request.param == "gpt2"
        else tiny_llama_style(tmp_path_factory.mktemp(request.param), request.param, tiny_dir)
    )
    return load_model(str(folder), Settings(device="cpu", dtype="float32"))


PROMPT = "User: hello there\nBot:"


def test_captured_residuals_equal_hidden_states_of_a_plain_forward(model):
    engine = Engine(model)
    recorder = Recorder(model.model, TraceConfig(dtype="float32", prompt=True))
    completions = engine.generate(
        PROMPT, SamplingParams(max_new_tokens=7, seed=2, temperature=1.0), n=3, recorder=recorder
    )
    arch = find_architecture(model.model)
    for c in completions:
        tensors, positions = recorder.result(c.index)
        ids = engine.encode(PROMPT) + c.token_ids
        assert positions == list(range(len(ids) - 1))  # every state that predicted a token
        with torch.inference_mode():
            states = model.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        assert len(states) == arch.layers + 1
        torch.testing.assert_close(tensors["embed"], states[0][0, positions], atol=2e-5, rtol=1e-4)
        for i in range(arch.layers - 1):
            torch.testing.assert_close(
                tensors[f"block.{i}"], states[i + 1][0, positions], atol=2e-5, rtol=1e-4
            )
        torch.testing.assert_close(tensors["norm"], states[-1][0, positions], atol=2e-5, rtol=1e-4)


def test_the_lens_at_the_last_layer_reproduces_the_models_logits(model):
    engine = Engine(model)
    lens = Lens(model.model)  # its own check runs here, on this model
    recorder = Recorder(model.model, TraceConfig(dtype="float32"))
    [c] = engine.generate(PROMPT, SamplingParams(max_new_tokens=5, seed=1), recorder=recorder)
    tensors, positions = recorder.result(0)
    ids = engine.encode(PROMPT) + c.token_ids
    with torch.inference_mode():
        logits = model.model(input_ids=torch.tensor([ids])).logits[0, positions]
    last = f"block.{lens.arch.layers - 1}"
    torch.testing.assert_close(lens.logits(tensors["norm"], normed=True), logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lens.logits(tensors[last], normed=False), logits, atol=1e-4, rtol=1e-4)
    if type(model.model).__name__.startswith("Gemma3"):
        assert lens.arch.softcap == 3.0 and logits.abs().max() < 3.0  # softcapped, and the lens matched it
        raw = lens.arch.unembed(tensors["norm"]).float()
        assert not torch.allclose(raw, logits, atol=1e-3)  # without the softcap it would not


def test_the_lens_check_fails_loudly_when_its_assumption_breaks(model):
    lens = Lens(model.model)
    found = lens.arch.norm
    lens.arch.norm = torch.nn.Identity()  # as if the wrong module had been taken for the final norm
    with pytest.raises(TraceError, match="hidden_states\\[-1\\] is not the final norm"):
        lens.check()
    lens.arch.norm, lens.arch.softcap = found, 0.05  # a softcap the model does not apply
    with pytest.raises(TraceError, match="does not give the model's logits"):
        lens.check()


def test_hooks_are_gone_after_an_exception(model):
    recorder = Recorder(model.model, TraceConfig())
    modules = list(model.model.modules())

    def hooks() -> int:  # transformers keeps a few of its own; ours come and go
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)

    before = hooks()
    with pytest.raises(RuntimeError, match="boom"):
        with recorder.attached():
            assert hooks() == before + len(recorder.points)
            raise RuntimeError("boom")
    assert hooks() == before


def test_files_round_trip_with_their_manifest(model, tmp_path):
    engine = Engine(model)
    recorder = Recorder(model.model, TraceConfig(layers=(0, 1), embed=False, dtype="bfloat16"))
    run = engine.start(PROMPT, SamplingParams(max_new_tokens=4, seed=3), recorder=recorder)
    for _ in run:
        pass
    [c] = run.completions
    tensors, positions = recorder.result(0)
    info = manifest(recorder, engine.info, run.prompt_ids, c.token_ids, positions, node="abc")
    path = save(tmp_path / "t" / "abc.safetensors", tensors, info)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    again, info2 = load(path)
    assert info2 == json.loads(json.dumps(info)) and set(again) == {"block.0", "block.1", "norm"}
    assert all(torch.equal(again[k], tensors[k]) and again[k].dtype == torch.bfloat16 for k in tensors)
    assert info2["positions"] == [len(run.prompt_ids) - 1 + i for i in range(len(c.token_ids))]
    assert info2["points"][0]["meaning"].startswith("output of block 0")
    assert recorder.bytes_per_token() == 3 * engine.info.hidden_size * 2


def test_options_and_diff_rows():
    assert parse_layers("all") is None and parse_layers("0,4,8-10") == (0, 4, 8, 9, 10)
    with pytest.raises(TraceError, match="use 'all'"):
        parse_layers("x")
    with pytest.raises(TraceError, match="bfloat16 or float16"):
        TraceConfig(dtype="int8")
    a = {"p": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    b = {"p": torch.tensor([[0.0, 2.0]])}
    [(name, dist, gap, na, nb)] = diff_rows(a, b, 0, 0, ["p"])
    assert (name, dist, na, nb) == ("p", pytest.approx(1.0), 1.0, 2.0) and gap == pytest.approx(5**0.5)


def test_a_traced_chat_writes_a_file_per_reply_and_trace_commands_read_them(tiny_engine, tmp_path, capsys):
    from simlab.cli.main import main
    from simlab.persona.schema import Persona
    from simlab.repl.commands import handle
    from simlab.repl.screen import LineView
    from simlab.repl.state import Chat
    from simlab.session.store import SessionStore

    store = SessionStore(tmp_path / "sessions")
    persona = Persona(name="t", frame="A chat.\n\n", user="User", model="Bot", sampling={"max_tokens": 5})
    out = io.StringIO()
    chat = Chat.new(tiny_engine, store, persona, persona.sampling_params(seed=4), LineView(out))
    handle(chat, "/trace on")
    chat.user_turn("hi")
    chat.alternatives(2)
    other = tmp_path / "o.yaml"
    other.write_text('name: o\nframe: "Q and A.\\n\\n"\nspeakers: {user: Q, model: A}\n')
    handle(chat, f"/persona {other}")
    name = chat.session.name
    chat.close()
    assert "bytes (" in out.getvalue() and "per token" in out.getvalue()
    folder = tmp_path / "sessions" / f"{name}.traces"
    replies = [
        n for n in store.open(name, read_only=True).tree.nodes.values() if n.role == "model" and n.seed
    ]
    assert sorted(p.stem for p in folder.glob("*.safetensors")) == sorted(n.id for n in replies)
    first, replayed = replies[0], replies[-1]
    code = main(
        [
            "trace",
            "show",
            name,
            first.id[:8],
            "--sessions-dir",
            str(tmp_path / "sessions"),
            "--png",
            str(tmp_path / "h.png"),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and "norm" in text and "block.1" in text and "residual norms" in text
    assert (tmp_path / "h.png").read_bytes().startswith(b"\x89PNG")
    # cells are apart: a probability is never run into the next cell's token
    assert not re.search(r"\d\.\d\d['\"]", text)
    code = main(
        [
            "trace",
            "diff",
            name,
            first.id[:8],
            replayed.id[:8],
            "--sessions-dir",
            str(tmp_path / "sessions"),
            "--png",
            str(tmp_path / "d.png"),
        ]
    )
    text = capsys.readouterr().out
    assert (
        code == 0
        and "cos dist" in text
        and len([ln for ln in text.splitlines() if ln.startswith("block.")]) == 2
    )
    code = main(["trace", "list", name, "--sessions-dir", str(tmp_path / "sessions")])
    assert code == 0 and capsys.readouterr().out.count("KiB") == len(replies)
    remove_session(store, name)
    assert not folder.exists()  # deleting a session deletes its traces


def test_trace_flags_choose_points_layers_positions_and_dtype():
    import argparse

    from simlab.cli.common import add_trace_flags, trace_config

    parser = argparse.ArgumentParser()
    add_trace_flags(parser)
    assert trace_config(parser.parse_args([])) is None
    config = trace_config(
        parser.parse_args(
            [
                "--trace",
                "--trace-points",
                "blocks,norm",
                "--trace-layers",
                "0-1",
                "--trace-prompt",
                "--trace-dtype",
                "float16",
            ]
        )
    )
    assert (config.embed, config.layers, config.norm, config.prompt, config.dtype) == (
        False,
        (0, 1),
        True,
        True,
        "float16",
    )
    assert config.points(4) == ["block.0", "block.1", "norm"]
    only_embed = trace_config(parser.parse_args(["--trace", "--trace-points", "embed"]))
    assert only_embed.points(4) == ["embed"]
    with pytest.raises(TraceError, match="use any of embed, blocks, norm"):
        trace_config(parser.parse_args(["--trace", "--trace-points", "attn"]))


def test_trace_figures_have_axes_labels_and_a_colour_bar(tmp_path):
    import matplotlib

    from simlab.trace.lens import bars_png, heatmap_png

    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text in the SVG, so it can be read back
    heatmap_png(
        tmp_path / "h.svg", [[0.1, 0.9], [0.5, 0.2]], ["embed", "block.0"], ["0 ' a'", "1 ' b'"], "lens"
    )
    svg = (tmp_path / "h.svg").read_text()
    for text in ("layer (residual stream point)", "position (the token that came next)", "block.0", "' b'"):
        assert text in svg
    assert "probability of the chosen token" in svg and "1.0" in svg  # the colour bar, 0..1
    bars_png(tmp_path / "d.png", [0.1, 0.3], ["embed", "block.0"], "a vs b")
    head = (tmp_path / "d.png").read_bytes()[:24]
    assert head.startswith(b"\x89PNG") and int.from_bytes(head[16:20], "big") >= 600  # a real figure


def test_a_long_token_is_cut_with_a_mark():
    from simlab.cli.trace import _short

    assert _short(" Obviously", 10) == "' Obvious…"
    assert _short(" I", 10) == "' I'"
