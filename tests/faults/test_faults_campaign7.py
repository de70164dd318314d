"""The seventh fault campaign: a spacecraft position the MPC 80-column format cannot hold, progress bars on a stderr
that is not a terminal, messages that did not name their file, exit 0 despite warnings, a watch root inside its
inbox.

A refused command exits 2 with one line naming the file or setting and writes nothing; a problem that does not stop
the work is a warning naming the file, and the command exits 1.
"""
from __future__ import annotations

import shutil

import pytest
from astropy.io import fits
from astropy.table import Table

from faultkit import cli, copy_inputs, set_header, snapshot
from ssodetect.cli import main


def _plain(capsys, *args):
    """``ssodetect ARGS`` without ``-q`` (progress bars asked for; stderr is pytest's, not a terminal)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err.splitlines(), captured.out.splitlines()


def _well_formed(err: list[str]) -> None:
    """Every stderr line is a whole log or error line: no progress-bar fragment glued to it."""
    for line in err:
        assert "%|" not in line and "\r" not in line, line
        assert line.startswith(("INFO ", "WARNING ", "ERROR ", "DEBUG ", "ssodetect: ")), line


# ----------------------------------------------------------------------------------------------------------
# D3: a spacecraft position out of the 80-column format's range


def test_a_spacecraft_position_no_format_holds_is_refused_naming_its_keywords(scene, tmp_path, capsys):
    """D3: JPOS2_1 = 1e30 km was an internal error in the 80-column writer, after the whole run."""
    src = copy_inputs(scene, tmp_path / "in")
    set_header(src / "exp_01.fits", 0, JPOS2_1=1e30, JPOS2_2=0.0, JPOS2_3=0.0)
    outcome = cli(capsys, "run", src, "--out", tmp_path / "out")
    assert outcome.code == 2 and len(outcome.errors) == 1, outcome.err
    assert "exp_01.fits" in outcome.errors[0] and "JPOS2_1" in outcome.errors[0], outcome.errors
    assert not (tmp_path / "out").exists()


def test_a_record_the_80_column_format_cannot_hold_is_left_out_with_a_warning(caplog):
    """D3, the writer's side: a position the 80-column fields cannot hold (even in au) leaves that record out, with a
    warning naming its file and the value; the other records are written."""
    from ssodetect.report.mpc80 import MPCRecord, format_mpc80

    good = MPCRecord(provisional="K26A00A", mjd=61120.5, ra=150.0, dec=2.0, code="C51", note2="S",
                     observer=(7000.0, 0.0, 0.0), source="a.fits")
    bad = MPCRecord(provisional="K26A00B", mjd=61120.5, ra=150.0, dec=2.0, code="C51", note2="S",
                    observer=(1e30, 0.0, 0.0), source="b.fits")
    with caplog.at_level("WARNING"):
        text = format_mpc80([good, bad])
    lines = text.splitlines()
    assert len(lines) == 2 and all(len(line) == 80 for line in lines) and "K26A00A" in lines[0]
    said = [r.getMessage() for r in caplog.records if "b.fits" in r.getMessage()]
    assert len(said) == 1 and "1e+30" in said[0] and "1 observation(s) left out" in said[0], said


# ----------------------------------------------------------------------------------------------------------
# D14: no progress bar on a stderr that is not a terminal; D21: trails without an exposure time named


def test_simulate_draws_no_progress_bar_into_a_pipe(tmp_path, capsys):
    code, err, _ = _plain(capsys, "simulate", tmp_path / "sim", "--seed", "5", "--nccd", "1", "--size", "256")
    assert code == 0, err
    _well_formed(err)


def test_trails_without_exposure_time_name_their_file_and_no_bar_is_glued(scene, tmp_path, capsys):
    src = copy_inputs(scene, tmp_path / "in")
    for hdu in (0, 1):
        set_header(src / "exp_02.fits", hdu, EXPTIME=0.0)
    code, err, _ = _plain(capsys, "run", src, "--out", tmp_path / "out")
    assert code == 1, err
    _well_formed(err)
    said = [line for line in err if "without an exposure time" in line]
    assert said and all(line.startswith("WARNING") and "exp_02.fits" in line for line in said), said


# ----------------------------------------------------------------------------------------------------------
# D24: batch and watch exit 1 after warnings


def test_batch_exits_1_when_its_fields_warned(scene, tmp_path, capsys):
    field = copy_inputs(scene, tmp_path / "f1")  # no reference catalogue, no station: the run warns
    out = tmp_path / "batch"
    outcome = cli(capsys, "batch", field, "--out", out)
    assert outcome.code == 1, outcome.err
    assert not outcome.errors, outcome.err
    assert "1 with warnings" in outcome.out[0], outcome.out
    summary = Table.read(out / "batch_summary.ecsv")
    assert list(summary["status"]) == ["done"] and summary["warnings"][0] > 0
    # N6 (eighth campaign): run again over the complete field, the batch said "skipped, 0 warnings" and exited 0
    again = cli(capsys, "batch", field, "--out", out)
    assert again.code == 1 and "1 with warnings" in again.out[0], (again.err, again.out)
    assert any("complete before, with" in line and "run.log" in line for line in again.warnings), again.err
    rerun = Table.read(out / "batch_summary.ecsv")
    assert list(rerun["status"]) == ["skipped"] and rerun["warnings"][0] == summary["warnings"][0]


def test_watch_once_exits_1_after_skipping_a_folder(scene, tmp_path, capsys):
    inbox = tmp_path / "inbox"
    (inbox / "bad\nvisit").mkdir(parents=True)
    shutil.copy(scene / "exp_00.fits", inbox / "bad\nvisit" / "exp_00.fits")
    outcome = cli(capsys, "watch", inbox, "--root", tmp_path / "root", "--once", "--settle", "0")
    assert outcome.code == 1, outcome.err
    assert any("bad\\nvisit" in w and "skipped" in w for w in outcome.warnings), outcome.err


# ----------------------------------------------------------------------------------------------------------
# D20: the unreadable files of a visit named


def test_watch_once_names_the_unreadable_files(scene, tmp_path, capsys):
    inbox = tmp_path / "inbox"
    (inbox / "v2").mkdir(parents=True)
    frames = sorted(scene.glob("exp_*.fits"))
    for path in frames[:3]:
        shutil.copy(path, inbox / "v2" / path.name)
    (inbox / "v2" / "exp_03.fits").write_bytes(frames[3].read_bytes()[:20000])  # truncated
    outcome = cli(capsys, "watch", inbox, "--root", tmp_path / "root", "--once", "--settle", "0")
    assert outcome.code == 1, outcome.err
    said = [w for w in outcome.warnings if "visit v2 not run" in w]
    assert len(said) == 1 and "1 file(s) unreadable" in said[0] and "exp_03.fits" in said[0], outcome.err
    (inbox / "v2" / "exp_04.fits").write_bytes(b"SIMPLE  =")  # a second broken file: counted
    outcome = cli(capsys, "watch", inbox, "--root", tmp_path / "root", "--once", "--settle", "0")
    said = [w for w in outcome.warnings if "visit v2 not run" in w]
    assert len(said) == 1 and "2 file(s) unreadable" in said[0] and "exp_03.fits and 1 other(s)" in said[0], said


# ----------------------------------------------------------------------------------------------------------
# D26: a watch root that is the inbox or inside it


def test_watch_root_inside_the_inbox_is_refused(scene, tmp_path, capsys):
    inbox = tmp_path / "inbox"
    (inbox / "v1").mkdir(parents=True)
    shutil.copy(scene / "exp_00.fits", inbox / "v1" / "exp_00.fits")
    before = snapshot(inbox)
    for root in (inbox, inbox / "runs", inbox / "v1"):
        outcome = cli(capsys, "watch", inbox, "--root", root, "--once", "--settle", "0")
        assert outcome.code == 2, outcome.err
        assert len(outcome.err) == 1 and outcome.err[0].startswith("ssodetect: error: --root"), outcome.err
        assert str(root) in outcome.err[0] and f"watched folder {inbox}" in outcome.err[0], outcome.err
        assert snapshot(inbox) == before


@pytest.mark.parametrize("argv", [["run"], ["bogus"], ["run", "x", "--out", "y", "--workers", "abc"]])
def test_usage_errors_are_one_line(argv, capsys):
    """D19: argparse printed its usage lines and then ``ssodetect run: error: ...``: several lines, not starting like
    every other error."""
    from ssodetect.cli import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("ssodetect: error: "), err


def test_a_filter_name_that_would_break_the_reports_is_no_band(scene, tmp_path, capsys):
    """A FILTER keyword is the reports' band unless [report] band is set: 'g|r' would add a field to every ADES PSV
    row (the same defect as D4, from a header).  Its magnitudes are left out, with a warning naming the file."""
    scene = copy_inputs(scene, tmp_path / "s")
    for frame in sorted(scene.glob("*.fits")):
        with fits.open(frame, mode="update") as hdul:
            hdul[0].header["FILTER"] = "g|r"
            for h in hdul[1:]:
                h.header.remove("FILTER", ignore_missing=True)
    outcome = cli(capsys, "run", scene, "--out", tmp_path / "o")
    assert outcome.code == 1 and outcome.errors == [], outcome.err
    assert any("'g|r'" in w and "magnitudes left out" in w for w in outcome.warnings), outcome.warnings
    psv = (tmp_path / "o" / "observations.psv").read_text().splitlines()
    rows = [line for line in psv if line and not line.startswith(("#", "!"))]
    assert rows and len({line.count("|") for line in rows}) == 1, rows[:3]


def test_an_alert_delivered_does_not_make_the_directory_foreign_to_the_next_run(scene, tmp_path, capsys):
    """Eighth campaign's N4: the delivery's lines were appended to run.log after the products record took its
    checksum, so the next run into the directory refused it ("holds files ssodetect did not write (run.log)")."""
    config = tmp_path / "alert.toml"
    config.write_text('[alerts]\ncommand = ["true"]\n')
    out = tmp_path / "out"
    first = cli(capsys, "run", scene, "--out", out, "--config", config, "--to-step", "report")
    assert first.code in (0, 1) and first.errors == [], first.err
    assert "alert" in (out / "run.log").read_text().lower()
    again = cli(capsys, "run", scene, "--out", out, "--config", config)
    assert again.code in (0, 1) and again.errors == [], again.err
