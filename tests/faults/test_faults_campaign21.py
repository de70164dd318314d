"""Fault campaign 21 (about 125 cases on commit 7961c25): the defects found, fixed and tested here."""
from __future__ import annotations

import os

import pytest

from faultkit import cli, copy_run, snapshot


def test_a_run_folder_named_with_bytes_that_are_no_text_is_skipped_not_a_crash(good_run, tmp_path, capsys):
    """D1: a run folder whose name is not valid UTF-8 made ``runs`` an internal error (exit 3) and the console's runs
    page a 500.  It is skipped with a warning naming it; the other runs are listed."""
    root = tmp_path / "root"
    root.mkdir()
    copy_run(good_run.out, root / "plain")
    copy_run(good_run.out, root / os.fsdecode(b"r\xff"))
    res = cli(capsys, "runs", root)
    assert res.code == 0, res.err
    assert any("not valid UTF-8 text; not listed (rename it)" in line and "r\\udcff" in line
               for line in res.warnings), res.err
    assert any("plain" in line for line in res.out), res.out


def test_a_profile_cannot_set_a_command_an_address_or_a_file(scene, tmp_path, capsys):
    """D3: a profile's ``[settings.alerts] command`` ran after the run (a profile on SSODETECT_PROFILE_PATH whose
    match fits the headers needs no option at all); it could set orbit and calibration files too.  Refused, in one
    line naming the profile file and the settings, before any work."""
    flag = tmp_path / "PWNED"
    profile = tmp_path / "myinst.toml"
    profile.write_text('[profile]\ndescription = "x"\n[match]\ntelescope = ["EUCLID"]\n[settings.alerts]\n'
                       f'command = ["touch", "{flag}"]\n[settings.known]\norbits = ["/etc/passwd"]\n')
    res = cli(capsys, "run", scene, "--out", tmp_path / "out", "--profile", profile)
    assert res.code == 2 and res.errors == [
        f"ssodetect: error: {profile}: a profile cannot set alerts.command, known.orbits (a command, an address or a "
        "file: it would act on any run whose headers match); put it in the configuration file"], res.err
    assert not flag.exists() and not (tmp_path / "out").exists()


def test_an_output_directory_inside_another_commands_directory_is_refused(good_run, tmp_path, capsys):
    """D4 and W1: a scene simulated into a run's ``steps/`` was refused as "files ssodetect did not write"; a batch
    into a run's directory wrote its fields inside it.  Both refused, naming the run; a batch's fields stay runs
    inside it."""
    run = copy_run(good_run.out, tmp_path / "R")
    before = snapshot(run)
    res = cli(capsys, "simulate", "--size", "128", "--n-exposures", "2", run / "steps" / "x")
    assert res.code == 2 and res.errors == [
        f"ssodetect: error: {run / 'steps' / 'x'}: inside a run ({run}), which its command replaces as a whole; "
        "choose an output directory outside it"], res.err
    assert snapshot(run) == before


def test_config_file_check_refuses_what_run_refuses(tmp_path, capsys):
    """D5: ``config --file`` said a file naming no profile was fine (exit 0), and ``run`` refused it."""
    path = tmp_path / "g.toml"
    path.write_text('[profile]\nname = "nosuchprofile"\n')
    res = cli(capsys, "config", "--file", path)
    assert res.code == 2 and res.errors[0].startswith(f"ssodetect: error: {path}: [profile] name: profile "
                                                      "'nosuchprofile': no such profile"), res.err


@pytest.mark.parametrize("argv, said", [
    (["simulate", "--size", "100", "X"], "ssodetect: error: simulate: invalid parameters (--size: Input should be "
                                         "greater than or equal to 128)"),
    (["simulate", "X", "--out", "Y"], "ssodetect: error: ssodetect simulate: unrecognized arguments: --out Y (see "
                                      "ssodetect simulate --help)"),
    (["runs", ""], "ssodetect: error: runs: an empty directory name; give the directory (. for this one)"),
])
def test_wording_names_the_option_and_the_command(tmp_path, capsys, monkeypatch, argv, said):
    """W2, W5, W6: ``simulate --size 100`` named the fields nx and ny; an unknown option of a subcommand was said by
    the top-level program; ``runs ""`` listed the working directory."""
    monkeypatch.chdir(tmp_path)
    try:
        res = cli(capsys, *argv)
        code, errors = res.code, res.errors
    except SystemExit as exc:  # (argparse's usage errors end the parse: exit 2)
        code, errors = exc.code, capsys.readouterr().err.strip().splitlines()
    assert code == 2 and errors == [said], errors
    assert not (tmp_path / "X").exists()


def test_a_scene_without_a_mover_says_so(tmp_path, capsys):
    """W3: ``--movers-per-ccd`` is per 2048^2 px: a 256 px scene asked for 1 drew none, exit 0 without a word.  A
    warning says what the option means and what it gave (exit 1)."""
    res = cli(capsys, "simulate", "--size", "256", "--n-exposures", "2", "--movers-per-ccd", "1", tmp_path / "s")
    assert res.code == 1 and any("no moving object drawn (--movers-per-ccd 1 per 2048^2 px" in w
                                 for w in res.warnings), res.err
