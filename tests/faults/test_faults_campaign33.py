"""Fault campaign 33 (about 175 cases on commit 4463a50): the defects found, fixed and tested here (NUL bytes in the
Python API's paths in tests/faults/test_faults_campaign32.py)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from faultkit import cli, copy_run

#: Header keywords of a celestial WCS (what a frame stripped of its WCS lacks).
_WCS_PREFIXES = ("CTYPE", "CRVAL", "CRPIX", "CDELT", "CUNIT", "CD1_", "CD2_", "PC1_", "PC2_", "PV1_", "PV2_", "A_",
                 "B_", "AP_", "BP_", "WCSAXES", "LONPOLE", "LATPOLE", "RADESYS", "EQUINOX")


def test_a_damaged_run_manifest_is_named_and_a_start_that_is_no_time_not_listed_first(good_run, tmp_path, capsys):
    """D3: a truncated manifest.json vanished from ``runs`` with an INFO count, exit 0; D7: a manifest whose start was
    "not a date" was listed as the newest run."""
    root = tmp_path / "root"
    root.mkdir()
    copy_run(good_run.out, root / "good")
    (root / "cut").mkdir()
    (root / "cut" / "manifest.json").write_text('{"run_id": ')
    undated = copy_run(good_run.out, root / "undated")
    manifest = json.loads((undated / "manifest.json").read_text())
    manifest["started_utc"] = "not a date"
    (undated / "manifest.json").write_text(json.dumps(manifest))
    (root / "other").mkdir()  # another program's manifest: not ours, not said
    (root / "other" / "manifest.json").write_text('{"name": "a web app"}')
    outcome = cli(capsys, "runs", root)
    assert outcome.code == 1 and len(outcome.warnings) == 1, outcome.err
    said = outcome.warnings[0]
    assert "2 run manifest(s) unreadable or damaged" in said and str(root / "cut" / "manifest.json") in said
    assert "'not a date' is no time" in said and "other" not in said.split("not listed:")[1]
    listed = [line.split()[-1] for line in outcome.out[1:-1]]
    assert listed == ["good"], outcome.out


def test_a_batch_field_failing_on_bad_input_is_said_on_stderr(scene, tmp_path, capsys):
    """D5: a field whose input was missing failed with nothing on stderr (only the summary on stdout); D2: a NUL in a
    field's reference catalogue was an internal error."""
    manifest = tmp_path / "m.toml"
    manifest.write_text('[[field]]\nname = "f1"\ninputs = ["nonexist"]\n'
                        f'[[field]]\nname = "f2"\ninputs = ["{scene}"]\nrefcat = "ref\\u0000cat.ecsv"\n')
    outcome = cli(capsys, "batch", manifest, "--out", tmp_path / "b", "-q")
    assert outcome.code == 1, outcome.err
    failed = [line for line in outcome.err if line.startswith("ERROR")]
    assert len(failed) == 2 and not any("internal error" in line for line in outcome.err), outcome.err
    assert any("field f1 failed: " in line and "nonexist: no such file" in line for line in failed), failed
    assert any("ref\\x00cat.ecsv: no file can have this name" in line for line in failed), failed


def test_reference_rows_without_a_finite_position_are_warned(scene, tmp_path, caplog):
    """D4: rows with a NaN ra or an infinite dec were dropped with an INFO line; the run exited 0."""
    from ssodetect.astrometry.refcat import load_reference_catalogue

    table = Table.read(scene / "refcat.ecsv")
    table["ra"][3] = np.nan
    table["dec"][5] = np.inf
    table.write(tmp_path / "nanpos.ecsv")
    with caplog.at_level("WARNING", logger="ssodetect"):
        assert len(load_reference_catalogue(tmp_path / "nanpos.ecsv")) == len(table) - 2
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1 and "2 rows without a finite ra, dec, phot_g_mean_mag ignored" in said[0], said


def test_an_unknown_command_is_said_with_one_prefix(capsys):
    """D8: ``ssodetect: error: ssodetect: argument command: invalid choice ...``."""
    from ssodetect.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["bogus"])
    said = capsys.readouterr().err.splitlines()
    assert exited.value.code == 2 and len(said) == 1
    assert said[0].startswith("ssodetect: error: argument command: invalid choice: 'bogus'"), said


def test_escapes_in_an_input_path_stay_escaped_in_the_logs_and_report_and_a_frame_without_wcs_is_said(
        scene, tmp_path, capsys):
    """D6: an input folder named with an escape sequence was written raw into run.log (DEBUG lines) and report.html
    (stderr escaped it); D9: a frame stripped of its WCS among frames with one was solved blind and registered
    without a word, exit 0, and the profile line said nan"/px when it was the first."""
    folder = tmp_path / "e\x1b[31mred"
    shutil.copytree(scene, folder)
    with fits.open(folder / "exp_00.fits", mode="update") as hdul:
        for hdu in hdul[1:]:
            if hdu.name.endswith(".SCI"):
                for key in [k for k in hdu.header if k.startswith(_WCS_PREFIXES)]:
                    del hdu.header[key]
    out = tmp_path / "out"
    outcome = cli(capsys, "run", folder, "--out", out, "--refcat", scene / "refcat.ecsv", "-v")
    assert outcome.code == 1, outcome.err
    for name in ("run.log", "report.html"):
        text = (out / name).read_text()
        assert "\x1b" not in text and "e\\x1b[31mred" in text, name
    said = [line for line in outcome.warnings if "unusable header WCS solved blind" in line]
    assert len(said) == 1 and "exp_00.fits" in said[0] and "no celestial WCS" in said[0], outcome.warnings
    profile = [line for line in (out / "run.log").read_text().splitlines()
               if "exposures: " in line and "TELESCOP" in line]
    assert profile and "nan" not in profile[0], profile
