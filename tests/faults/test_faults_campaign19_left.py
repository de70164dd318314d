"""What fault campaign 19 (about 190 cases on commit 06c7a1b) left open: fixed and tested here."""
from __future__ import annotations

import shutil

import pytest
from astropy.table import Table

from faultkit import cli, snapshot
from ssodetect.errors import InputError
from ssodetect.io.outputs import OutputStage
from ssodetect.simulate import simulate

from conftest import PERTURBED, small_scene_config


def test_a_link_made_in_the_path_while_a_command_ran_is_refused_at_the_commit(tmp_path, monkeypatch):
    """A command on ``new/out`` started before ``new`` existed; ``new`` then appeared as a link to another
    directory, where a second command held other locks (named by the path the link leads to).  The first
    command's commit renamed its stage through the link into the other directory.  It is refused (one line naming
    both paths), nothing is written there, the stage is gone and the lock given up."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stage = OutputStage(tmp_path / "new" / "out", replace=True)
    (stage.path / "objects.ecsv").write_text("# ours\n")
    (tmp_path / "new").symlink_to(elsewhere)
    with pytest.raises(InputError, match=r"its path now leads to .*elsewhere/out \(a link appeared in it"):
        stage.commit()
    assert not list(elsewhere.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "elsewhere", "new"]
    again = OutputStage(tmp_path / "new" / "out", replace=True)  # (free again; the link's directory now)
    (again.path / "objects.ecsv").write_text("# ours\n")
    again.commit()
    assert (elsewhere / "out" / "objects.ecsv").is_file()


@pytest.mark.parametrize("profile, said", [
    ('"nosuch"', "[profile] name: profile 'nosuch': no such profile"),
    ('"bad.toml"', "[profile] name: bad.toml: not a valid profile TOML"),
])
def test_a_bad_profile_in_a_configuration_file_names_the_file(tmp_path, capsys, monkeypatch, profile, said):
    """A ``[profile] name`` in a configuration file that names no profile, or a broken profile file, was said
    without naming the configuration file that named it (after the inputs were read).  The one line names it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("x = \n")
    (tmp_path / "c.toml").write_text(f"[profile]\nname = {profile}\n")
    res = cli(capsys, "run", tmp_path / "no_such_input", "--config", "c.toml", "--out", "out")
    assert res.code == 2 and res.errors == [f"ssodetect: error: c.toml: {said}" + res.errors[0].split(said, 1)[1]]
    assert not (tmp_path / "out").exists()
    res = cli(capsys, "run", tmp_path / "no_such_input", "--config", "c.toml", "--profile", "none", "--out", "out")
    assert res.code == 2 and "c.toml" not in res.errors[0] and "no_such_input" in res.errors[0], res.err


def test_ml_predict_out_an_existing_directory_is_named_a_directory(good_run, tmp_path, capsys):
    """``ml predict RUN --out DIR`` with DIR an existing directory (no trailing slash) failed at the commit with
    "cannot be written (Is a directory)" after the scoring.  Refused first: a directory, not a file name."""
    pytest.importorskip("torch")
    folder = tmp_path / "scores"
    folder.mkdir()
    res = cli(capsys, "ml", "predict", good_run.out, "--out", folder)
    assert res.code == 2 and res.errors == [f"ssodetect: error: --out {folder}: a directory, not a file name; give "
                                            "the scores file's name"], res.err
    assert not list(folder.iterdir())


def test_what_a_command_prints_cannot_carry_control_characters(good_run, tmp_path, capsys):
    """``ssodetect report DIR`` printed the paths it wrote as they are: a directory named with ESC sequences (or an
    object name, a header value) could rewrite the terminal.  Every line a command prints is shown with its control
    characters as escapes; the files are written where they belong."""
    out = tmp_path / "r\x1b[2Jx"
    shutil.copytree(good_run.out, out)
    res = cli(capsys, "report", out)
    assert res.code in (0, 1), res.err
    assert res.out and all("\x1b" not in line for line in res.out), res.out
    assert any(line.endswith("r\\x1b[2Jx/report.html") for line in res.out), res.out
    assert (out / "report.html").is_file()


def test_evaluate_refuses_the_truth_of_another_scene_of_the_same_field_and_times(good_run, scene, tmp_path, capsys):
    """A simulation of the same field and times with another seed passed every check (field, exposure times)
    and scored the run as if it had missed everything.  The truth records its frames' SHA-256; a run none of whose
    inputs is among them is refused, named, and nothing is written; the scene's own truth still scores."""
    other = tmp_path / "other"
    simulate(small_scene_config(12, **PERTURBED), other)
    out = tmp_path / "run"
    shutil.copytree(good_run.out, out)
    before = snapshot(out)
    res = cli(capsys, "evaluate", out, other / "truth.ecsv")
    assert res.code == 2 and len(res.errors) == 1, res.err
    assert res.errors[0].startswith(f"ssodetect: error: {other / 'truth.ecsv'}: a truth table of another scene: none "
                                    "of the run's "), res.err
    assert snapshot(out) == before
    truth = Table.read(scene / "truth.ecsv")
    assert set(truth.meta["frames"]) == {p.name for p in scene.glob("exp_*.fits")}
    res = cli(capsys, "evaluate", out, scene / "truth.ecsv", "--no-write")
    assert res.code in (0, 1) and not res.errors, res.err
