"""The ninth fault campaign: a negative image size that made the input check loop forever, a memory bound that a
setting could lift, catalogue values no star has, header numbers read wrongly (a logical as a gain, an overflowing
saturation level, an infinite reference pixel), settings without bounds.

A refused command exits 2 with one line naming the file or setting and writes nothing; a problem that does not stop
the work is a warning naming the file, and the command exits 1.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from faultkit import cli, copy_inputs, raw_card, snapshot


@pytest.mark.parametrize("key, value", [("NAXIS1", "-512"), ("NAXIS", "-2"), ("PCOUNT", "-2880")])
def test_a_negative_size_is_refused_not_looped_over(scene, tmp_path, key, value):
    """D1: NAXIS1 = -512 in a science extension moved the header walk backwards: the input check never ended (run
    in a process of its own with a time limit, so that a regression fails instead of hanging the suite)."""
    src = copy_inputs(scene, tmp_path / "in")
    raw_card(src / "exp_00.fits", 1, key, value)  # the SCI extension's card (the primary header's is first)
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-m", "ssodetect.cli", "run", str(src), "--out", str(tmp_path / "out"),
                           "-q"], capture_output=True, text=True, timeout=120)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, err
    assert "exp_00.fits" in err[0] and ("negative size" in err[0] or key in err[0]), err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("key, value, said", [
    ("GAIN", "T", "GAIN = T is not a number; the default gain"),
    ("SATURATE", "1E300", "SATURATE = 1e+300 is not a saturation level"),
])
def test_header_numbers_no_camera_has_are_named(scene, tmp_path, capsys, key, value, said):
    """D4: GAIN = T was read as a gain of 1 without a word; D5: SATURATE = 1e300 overflowed a float32 comparison
    (a numpy warning naming no file, exit 0)."""
    src = copy_inputs(scene, tmp_path / "in")
    from astropy.io import fits

    with fits.open(src / "exp_01.fits", mode="update") as hdul:
        for hdu in hdul:
            hdu.header.remove(key, ignore_missing=True, remove_all=True)
        hdul[0].header[key] = 1.0
    raw_card(src / "exp_01.fits", 0, key, value)
    outcome = cli(capsys, "run", src, "--out", tmp_path / "out", "--to-step", "detect")
    assert outcome.code == 1 and outcome.errors == [], outcome.err
    named = [line for line in outcome.warnings if said in line]
    assert len(named) == 1 and "exp_01.fits" in named[0], outcome.warnings
    assert not [line for line in outcome.warnings if "RuntimeWarning" in line or "overflow" in line]


def test_an_infinite_header_number_is_refused_naming_the_card(scene, tmp_path, capsys):
    """D6: CRPIX1 = 1E400 printed astropy's VerifyWarning lines naming no file, and the run exited 0."""
    src = copy_inputs(scene, tmp_path / "in")
    raw_card(src / "exp_02.fits", 0, "CRPIX1", "1E400")
    before = snapshot(tmp_path)
    outcome = cli(capsys, "run", src, "--out", tmp_path / "out")
    assert outcome.code == 2 and len(outcome.err) == 1, outcome.err
    assert "exp_02.fits" in outcome.errors[0] and "CRPIX1 = 1E400 is not a finite number" in outcome.errors[0]
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("text, said", [
    ("[streaks]\nmin_length = 1000\nmax_length = 10\n", "max_length must exceed min_length"),
    ("[streaks]\nmax_length = 1e12\n", "max_length"),
    ("[astrometry]\nblind_pointing = [400, 100, -1]\n", "blind_pointing"),
    ("[io]\ndefault_zeropoint = 1e30\n", "default_zeropoint"),
    ("[known]\nsite = [400, 100, -1e9]\n", "site"),
    ("[io]\ntime_keys = [" + ", ".join(['"MJD-OBS"'] * 5000) + "]\n", "a list setting holds at most 4096"),
])
def test_settings_without_bounds_are_refused(scene, tmp_path, capsys, text, said):
    """D2, D11-D15: settings accepted whatever their values (a 1e12 px streak length lifted the blend step's memory
    bound; 100,000 time keywords took 5 minutes; a pointing at RA 400 deg, a zero point of 1e30, a site 1e9 m
    under the ground)."""
    config = tmp_path / "c.toml"
    config.write_text(text)
    outcome = cli(capsys, "run", scene, "--out", tmp_path / "out", "--config", config)
    assert outcome.code == 2 and len(outcome.err) == 1 and said in outcome.errors[0], outcome.err
    assert "c.toml" in outcome.errors[0] and not (tmp_path / "out").exists()


def test_grouping_every_frame_into_one_exposure_names_the_setting(scene, tmp_path, capsys):
    """D9: ``exposure_grouping_s = 1e9`` merged the four exposures into one and the error blamed a good file for
    duplicating another (values beyond a day are now refused as settings; within a day the four exposures, 1100 s
    apart, still merge)."""
    config = tmp_path / "c.toml"
    config.write_text("[io]\nexposure_grouping_s = 80000\n")
    outcome = cli(capsys, "run", scene, "--out", tmp_path / "out", "--config", config)
    assert outcome.code == 2 and len(outcome.err) == 1, outcome.err
    assert "exposure_grouping_s = 80000" in outcome.errors[0]


def test_a_header_wcs_that_collapses_the_image_is_named(scene, tmp_path, capsys):
    """D10: CTYPE RA---TPV without PV terms (wcslib then maps every pixel to one point) failed astrometry on every
    exposure with "only 0 unsaturated reference stars in the header footprint".  Now that WCS is named unusable with
    its file, and the frames are solved blind from the catalogue."""
    from astropy.io import fits

    src = copy_inputs(scene, tmp_path / "in")
    for path in sorted(src.glob("exp_*.fits")):
        with fits.open(path, mode="update") as hdul:
            hdul[1].header["CTYPE1"], hdul[1].header["CTYPE2"] = "RA---TPV", "DEC--TPV"
    outcome = cli(capsys, "run", src, "--out", tmp_path / "out", "--refcat", scene / "refcat.ecsv",
                  "--to-step", "astrometry")
    assert outcome.code == 1 and outcome.errors == [], outcome.err
    named = [line for line in outcome.warnings if "image diagonal spans" in line and "RA---TPV" in line]
    assert named and all(".fits" in line for line in named), outcome.warnings
    assert not any("only 0 unsaturated reference stars" in line for line in outcome.warnings), outcome.warnings


@pytest.mark.parametrize("sig, code, line", [("SIGTERM", 143, "ssodetect: terminated"),
                                             ("SIGHUP", 129, "ssodetect: terminated (SIGHUP)")])
def test_sigterm_discards_the_stage_and_gives_up_the_lock(scene, tmp_path, sig, code, line):
    """D16: SIGTERM (kill, timeout, systemd) ended a run with no word and left its ``.lock`` file and ``.stage-``
    directory beside OUTDIR; the re-check found SIGHUP (a closed terminal) did the same.  Now they are handled like
    Ctrl-C: one line, exit 128 + the signal, nothing left."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "ssodetect.cli", "run", str(scene), "--out", str(tmp_path / "out"),
                             "--refcat", str(scene / "refcat.ecsv"), "-q"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".out.stage-") for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # well into the work
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and err.strip().splitlines() == [line], (proc.returncode, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_catalogue_with_a_byte_order_mark_and_a_setting_with_one(scene, tmp_path, capsys):
    """Campaign 9's notes: a CSV catalogue saved with a byte-order mark lacked "column ra" (it was "\\ufeffra"); a
    byte-order mark in [report] telescope_name was accepted into the reports."""
    from astropy.table import Table

    from ssodetect.astrometry.refcat import load_reference_catalogue

    csv = tmp_path / "ref.csv"
    Table.read(scene / "refcat.ecsv").write(csv, format="ascii.csv")
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())
    assert len(load_reference_catalogue(csv)) == len(Table.read(scene / "refcat.ecsv"))
    config = tmp_path / "c.toml"
    config.write_text('[report]\ntelescope_name = "\\ufeffC14"\n')
    outcome = cli(capsys, "run", scene, "--out", tmp_path / "out", "--config", config)
    assert outcome.code == 2 and "telescope_name" in outcome.errors[0] and "\\ufeff" in outcome.errors[0]


def test_a_catalogue_with_a_text_cell_is_refused_naming_the_column(scene, tmp_path, capsys):
    """The re-check of campaign 9: a CSV catalogue with 'abc' in one magnitude cell (or 'north' in one RA cell) was
    exit 3, "could not convert string to float"."""
    from astropy.table import Table

    table = Table.read(scene / "refcat.ecsv")
    table.write(tmp_path / "ref.csv", format="ascii.csv")
    lines = (tmp_path / "ref.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[2].split(",")
    cells[header.index("phot_g_mean_mag")] = "abc"
    lines[2] = ",".join(cells)
    (tmp_path / "ref.csv").write_text("\n".join(lines) + "\n")
    outcome = cli(capsys, "run", scene, "--out", tmp_path / "out", "--refcat", tmp_path / "ref.csv")
    assert outcome.code == 2 and len(outcome.err) == 1, outcome.err
    assert "ref.csv: column phot_g_mean_mag holds text that is no number ('abc')" in outcome.errors[0]


def test_a_card_not_to_the_fits_standard_prints_nothing(scene, tmp_path):
    """The re-check of campaign 9: EXPTIME = 1e5 (a lower-case exponent, not FITS standard) printed astropy's own
    three-line verification blocks, several times (the header WCS was built from a header holding it).  Now nothing
    (run as a user runs it: in a process of its own, astropy's log as it is set up there)."""
    src = copy_inputs(scene, tmp_path / "in")
    raw_card(src / "exp_01.fits", 0, "EXPTIME", "5.66e2")
    done = subprocess.run([sys.executable, "-m", "ssodetect.cli", "run", str(src), "--out", str(tmp_path / "out"),
                           "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    assert "VerifyWarning" not in done.stderr and "[astropy" not in done.stderr, done.stderr
    assert "5.66e2" not in done.stderr  # the value is read (566 s), nothing to say about it
