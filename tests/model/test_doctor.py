"""`simlab doctor`: one line per part of the installation, and an exit code that says if one fails."""

from simlab.cli.main import main


def test_doctor_reports_each_part_and_loads_a_model(capsys, tmp_path, tiny_dir, isolated_home):
    code = main(["doctor", "--model", str(tiny_dir), "--load", "--sessions-dir", str(tmp_path / "s")])
    out = capsys.readouterr().out
    assert code == 0
    lines = {line[6:22].strip(): line for line in out.splitlines()}
    assert lines["torch"].startswith("ok") and lines["transformers"].startswith("ok")
    assert "cpu" in lines["device"]
    assert lines["gguf kernel"].startswith("ok") and "simlab's own, built (" in lines["gguf kernel"]
    assert lines["simlab home"].startswith("ok") and str(isolated_home) in lines["simlab home"]
    assert lines["sessions folder"].startswith("ok") and "writable" in lines["sessions folder"]
    assert (
        lines["embedded model"].startswith("warn") and "not converted yet" in lines["embedded model"]
    )  # a fresh home
    assert lines["generation"].startswith("ok") and "tiny-gpt2" in lines["generation"]
    assert "offline" in lines["network"]  # HF_HUB_OFFLINE=1 in the tests
    assert "activations rounded to about 15 bits" in lines["gguf kernel"]


def test_doctor_says_how_gguf_a8_rounds_activations(capsys, tmp_path):
    assert main(["doctor", "--weights", "gguf-a8", "--sessions-dir", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "activations rounded to 8 bits (gguf-a8)" in out


def test_a_sessions_folder_that_cannot_be_written_is_a_warning(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # even root cannot make a folder inside a file
    assert main(["doctor", "--sessions-dir", str(blocker / "sessions")]) == 0
    out = capsys.readouterr().out
    assert "warn  sessions folder" in out and "use --sessions-dir or SIMLAB_SESSIONS" in out


def test_a_model_that_cannot_load_fails_the_doctor(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["doctor", "--model", str(empty), "--load"]) == 1
    assert "FAIL  generation" in capsys.readouterr().out
