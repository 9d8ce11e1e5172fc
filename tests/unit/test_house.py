"""The house rules, checked: imports only point down (and the contract would catch one that climbs), the
unit tier's modules import no torch, one table of sampling knobs feeds every place that names them,
and modules and command functions stay small enough to read."""

import argparse
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simlab.cli.common import add_sampling_flags
from simlab.cli.main import build_parser
from simlab.engine.params import KNOBS, SamplingParams, from_keys, parse_setting
from simlab.repl.state import SETTABLE

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "simlab"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(where: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=where,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(where), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def test_the_layers_hold_and_a_climbing_import_breaks_them(tmp_path):
    assert lint_imports(ROOT).returncode == 0
    shutil.copytree(PACKAGE, tmp_path / "simlab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    tree = tmp_path / "simlab" / "session" / "tree.py"
    tree.write_text(tree.read_text() + "\nfrom simlab.turns import add_frame  # climbs\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0 and "simlab.session.tree -> simlab.turns" in result.stdout


def test_the_logic_above_the_engine_imports_no_torch():
    modules = [
        "simlab.turns",
        "simlab.replay",
        "simlab.compare.sweep",
        "simlab.compare.stats",
        "simlab.repl.app",
        "simlab.repl.commands",
        "simlab.cli.main",
        "simlab.session.formats",
        "simlab.engine.remote",
    ]
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nassert 'torch' not in sys.modules, 'torch'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_knob_is_a_flag_a_persona_key_a_setting_and_in_the_views():
    parser = argparse.ArgumentParser()
    add_sampling_flags(parser, defaults=True)
    defaults = vars(parser.parse_args([]))
    for knob in KNOBS:
        assert defaults[knob.field] == knob.default == getattr(SamplingParams(), knob.field)
        assert knob.flag in build_parser()._subparsers._group_actions[0].choices["chat"].format_help()
        assert from_keys({knob.key: knob.default}, "") == {knob.field: knob.default}
        assert knob.key in SETTABLE and parse_setting(knob.key, str(knob.default))[0] == knob.field
        assert f"{knob.key} {knob.default}" in SamplingParams().describe()
    assert SamplingParams().top_p == 0.95  # one default everywhere


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_under_400_lines_and_commands_under_60_per_function(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 400
    if path.parent.name in ("cli", "repl"):
        for function in _functions(ast.parse(text)):
            assert function.end_lineno - function.lineno + 1 <= 60, function.name


def test_stop_strings_keep_every_character_but_the_three_escapes():
    from simlab.engine.params import decode_escapes

    assert decode_escapes("\\nÉtienne:") == "\nÉtienne:"
    assert decode_escapes("a\\tb\\\\n\\x41") == "a\tb\\n\\x41"


def test_a_bad_flag_fails_before_torch_is_imported():
    code = (
        "import sys\nfrom simlab.cli.main import main\n"
        "rc = main(['generate', 'hi', '--top-p', '2'])\n"
        "assert 'torch' not in sys.modules, 'torch imported'\nsys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "top_p=2.0 is invalid" in result.stderr, result.stderr
