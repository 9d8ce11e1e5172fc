"""The command line on the tiny GPT-2: output, JSON, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest
from conftest import run_cli

from simlab.cli.main import main

PROMPT = "User: hello there\nBot:"


def test_generate_streams_a_continuation(capsys, tiny_dir):
    code, out, err = run_cli(
        capsys, "generate", PROMPT, "--model", str(tiny_dir), "--max-tokens", "12", "--seed", "4"
    )
    assert code == 0
    assert out.endswith("\n") and len(out) > 1
    assert "tok/s" in err and "seed 4" in err


def test_generate_json_has_tokens_logprobs_and_alternatives(capsys, tiny_dir):
    code, out, _ = run_cli(
        capsys,
        "generate",
        PROMPT,
        "-m",
        str(tiny_dir),
        "-n",
        "3",
        "--json",
        "--max-tokens",
        "8",
        "--seed",
        "10",
        "--top-p",
        "0.9",
    )
    assert code == 0
    data = json.loads(out)
    assert data["model"]["architecture"] == "GPT2LMHeadModel"
    assert data["params"]["top_p"] == 0.9
    assert [c["seed"] for c in data["completions"]] == [10, 11, 12]
    for c in data["completions"]:
        assert c["finish_reason"] in ("length", "eos", "stop")
        token = c["tokens"][0]
        assert token["logprob"] <= 0 and len(token["top"]) == 5
        assert c["text"].startswith(token["text"].rstrip("\ufffd"))


def test_json_output_is_reproducible_with_a_seed(capsys, tiny_dir):
    args = ("generate", PROMPT, "-m", str(tiny_dir), "--json", "--max-tokens", "10", "--seed", "77")
    first = json.loads(run_cli(capsys, *args)[1])["completions"][0]["text"]
    second = json.loads(run_cli(capsys, *args)[1])["completions"][0]["text"]
    assert first == second


def test_generate_with_an_empty_stdin_asks_for_a_prompt_instead_of_sampling(capsys, tiny_dir, monkeypatch):
    code, out, err = run_cli(capsys, "generate", "-m", str(tiny_dir), stdin="", monkeypatch=monkeypatch)
    assert code == 2 and out == "" and "stdin was empty, so there is no prompt" in err


@pytest.mark.parametrize("dash", [[], ["-"]], ids=["no-prompt", "dash"])
def test_generate_reads_the_prompt_from_stdin(capsys, tiny_dir, monkeypatch, dash):
    code, out, _ = run_cli(
        capsys,
        "generate",
        *dash,
        "-m",
        str(tiny_dir),
        "--json",
        "--max-tokens",
        "3",
        stdin=PROMPT,
        monkeypatch=monkeypatch,
    )
    assert code == 0 and json.loads(out)["prompt"] == PROMPT


def test_several_branches_are_printed_numbered(capsys, tiny_dir):
    code, out, _ = run_cli(capsys, "generate", PROMPT, "-m", str(tiny_dir), "-n", "2", "--max-tokens", "5")
    assert code == 0 and "1/2" in out and "2/2" in out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["generate", "x", "--top-p", "2"], "top_p=2.0 is invalid"),
        (["generate", "x", "--temperature", "-1"], "temperature=-1.0 is invalid"),
        (["generate", "x", "-n", "0"], "-n 0 is invalid"),
        (["generate", "x", "--model", "./no/such/folder"], "no such model folder"),
        (["generate", "x", "--model", "missing.gguf"], "no such GGUF file"),
        (["generate", "x", "--model", "not a model!"], "is not a model spec"),
        (["generate", "x", "--model", "someone/not-cached"], "not in the Hugging Face cache"),
        (["generate", "x", "--device", "tpu"], "device 'tpu' is not valid"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, expected):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_flag_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", "x", "--no-such-flag"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in err and err.count("\n") == 1


def test_bad_config_file_is_reported_with_its_path(capsys, isolated_home):
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.yaml").write_text("model: [unclosed\n")
    code, _, err = run_cli(capsys, "models")
    assert code == 2 and "config.yaml:2: invalid YAML" in err and "delete the file" in err


def test_a_bad_value_in_the_config_file_names_the_file(capsys, isolated_home):
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.yaml").write_text("weights: gguf-a9\n")
    code, _, err = run_cli(capsys, "generate", "hi")
    assert code == 2 and err.count("\n") == 1
    assert "weights 'gguf-a9' is not one of" in err and f"(set by {isolated_home / 'config.yaml'})" in err


@pytest.mark.parametrize("flag", [["--weights", "gguf-a8"], ["--device", "cpu"], ["--dtype", "float32"]])
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_a_server_run_refuses_the_flags_that_would_do_nothing(capsys, isolated_home, flag, command):
    """--weights, --device and --dtype say how a model run here is kept; on a server they would be
    dropped without a word, so the run says so before anything is asked of the server."""
    url = "http://127.0.0.1:9/v1"  # (nothing listens: the refusal comes first)
    argv = [
        command,
        *(["hi"] if command == "generate" else []),
        "--backend",
        "openai",
        "--base-url",
        url,
        *flag,
    ]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and not out and err.count("\n") == 1
    assert f"{' '.join(flag)} is for a model run here" in err and f"drop {flag[0]}" in err


def test_unknown_config_key_is_reported(capsys, isolated_home):
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.yaml").write_text("modle: gpt2\n")
    code, _, err = run_cli(capsys, "models")
    assert code == 2 and "unknown setting 'modle'" in err


def test_models_lists_the_embedded_model_without_importing_torch(isolated_home):
    code = (
        "import sys; from simlab.cli.main import main; rc = main(['models', '--json']); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows[0]["spec"] == "embedded" and "not converted yet" in rows[0]["state"]


def test_models_keeps_its_columns_under_a_long_spec(capsys, monkeypatch):
    """A GGUF's path as a spec is longer than the spec column: it has a line of its own and its
    kind and state go under it, in the columns every other row uses."""
    import os

    from simlab.cli import models

    rows = [
        {"spec": "embedded", "kind": "embedded", "state": "default; not converted yet"},
        {"spec": "/home/me/models/" + "q" * 60 + ".gguf", "kind": "gguf", "state": "converted, 1.8 GiB"},
        {"spec": "gpt2", "kind": "hub", "state": "in the hub cache"},
    ]
    monkeypatch.setattr(models, "list_models", lambda settings: rows)
    monkeypatch.setattr("shutil.get_terminal_size", lambda *a: os.terminal_size((80, 24)))
    code, out, _ = run_cli(capsys, "models")
    lines = out.rstrip("\n").split("\n")
    assert code == 0 and len(lines) == 4 and lines[1] == rows[1]["spec"]
    rest = [(lines[0], "embedded"), (lines[2], "gguf"), (lines[3], "hub")]
    columns = [line.index(" " + kind) + 1 for line, kind in rest]  # where the kind column starts
    assert len(set(columns)) == 1 and lines[2].startswith(" ")


def test_models_load_describes_a_model(capsys, tiny_dir):
    code, out, _ = run_cli(capsys, "models", "--load", str(tiny_dir), "--json")
    info = json.loads(out)
    assert code == 0 and info["layers"] == 2 and info["context_length"] == 128
    from simlab.models.device import cpu_prefers_bfloat16

    auto = "bfloat16" if cpu_prefers_bfloat16() else "float32"  # measured on this CPU
    assert info["device"] == "cpu" and info["dtype"] == auto and info["revision"].startswith("local-")


def test_python_dash_m_reports_errors_without_traceback(tiny_dir):
    result = subprocess.run(
        [sys.executable, "-m", "simlab", "generate", "hi", "--model", str(tiny_dir / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("simlab: model") and "Traceback" not in result.stderr
