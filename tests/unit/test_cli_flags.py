"""Flags are whole words: an abbreviation (or a flag of another command that happens to be a prefix
of one here) is one clear line and exit 2, never a guess that loads something else."""

import pytest
from conftest import run_cli


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["generate", "--mode", "chat", "hi"], "--mode"),  # a prefix of --model: it once loaded model 'chat'
        (["chat", "--temp", "0.3"], "--temp"),
        (["compare", "--sam", "3"], "--sam"),
    ],
)
def test_an_abbreviated_or_foreign_flag_is_one_line_and_exit_2(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit:
        run_cli(capsys, *argv)
    out, err = capsys.readouterr()
    assert exit.value.code == 2 and out == "" and f"unrecognized arguments: {flag}" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # the line names the command whose flags they are, and its own help
    assert err.startswith(f"simlab {argv[0]}: ") and f"(see simlab {argv[0]} --help)" in err


def test_a_nested_commands_unknown_flag_names_that_command(capsys):
    with pytest.raises(SystemExit) as exit:
        run_cli(capsys, "sessions", "list", "--nosuch")
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith("simlab sessions list: unrecognized arguments: --nosuch")


@pytest.mark.parametrize(
    "argv", [["replay"], ["sessions", "show"], ["sessions", "rm"], ["sessions", "bookmark"]]
)
def test_a_missing_session_name_is_called_name_as_the_docs_call_it(capsys, argv):
    with pytest.raises(SystemExit) as exit:
        run_cli(capsys, *argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "the following arguments are required: NAME" in err
    assert len(err.strip().splitlines()) == 1
