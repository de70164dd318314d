"""Fault campaign 34 (200 cases on commit 10620ea): the defects found, fixed and tested here (the console's unknown
form settings in tests/test_console.py)."""
from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from faultkit import cli


def _refcat(scene, tmp_path, name: str, **columns) -> str:
    table = Table.read(scene / "refcat.ecsv")
    for column, values in columns.items():
        table[column] = values(table) if callable(values) else values
    path = tmp_path / name
    table.write(path)
    return str(path)


@pytest.mark.parametrize("name, column, make, words", [
    ("ra2d.fits", "ra", lambda t: np.stack([t["ra"]] * 2, 1), "column ra holds 2 values per row"),
    ("mag3d.ecsv", "phot_g_mean_mag", lambda t: np.stack([t["phot_g_mean_mag"]] * 3, 1),
     "column phot_g_mean_mag holds 3 values per row"),
    ("pm2d.ecsv", "pmra", lambda t: np.stack([np.zeros(len(t))] * 2, 1), "column pmra holds 2 values per row"),
    ("boolmag.ecsv", "phot_g_mean_mag", lambda t: np.ones(len(t), bool), "phot_g_mean_mag holds true/false values"),
    ("complexra.fits", "ra", lambda t: np.asarray(t["ra"], float) + 1j, "column ra holds complex numbers"),
])
def test_a_reference_column_that_is_no_number_per_row_is_refused_naming_the_file(scene, tmp_path, capsys, name, column,
                                                                                 make, words):
    """D1: a column of several values per row was an internal error (exit 3) naming no file; D3: a boolean magnitude
    was read as 1 for every star, a complex RA as its real part (exit 0)."""
    path = _refcat(scene, tmp_path, name, **{column: make})
    outcome = cli(capsys, "run", scene, "--out", tmp_path / "out", "--refcat", path, "--to-step", "ingest")
    assert outcome.code == 2 and len(outcome.errors) == 1, outcome.err
    assert path in outcome.errors[0] and words in outcome.errors[0], outcome.errors
    assert not (tmp_path / "out").exists()


def test_empty_reference_cells_are_missing_values_not_zeros(scene, tmp_path, caplog):
    """D2: an empty CSV cell or a masked ECSV cell was read as 0 (a magnitude-0 star, RA 0) without a word."""
    from ssodetect.astrometry.refcat import load_reference_catalogue

    table = Table.read(scene / "refcat.ecsv")
    n = len(table)
    masked = Table(table, masked=True)
    masked["phot_g_mean_mag"].mask[2] = True
    masked["dec"].mask[4] = True
    masked["pmra"].mask[6] = True  # an optional value: its default, as a NaN gets
    masked.write(tmp_path / "masked.ecsv")
    with caplog.at_level("WARNING", logger="ssodetect"):
        read = load_reference_catalogue(tmp_path / "masked.ecsv")
    assert len(read) == n - 2
    mags = np.asarray(read["phot_g_mean_mag"], float)
    assert np.all(mags > 5) and np.all(np.isfinite(np.asarray(read["pmra"], float)))
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("2 rows without a finite ra, dec, phot_g_mean_mag ignored" in s for s in said), said
    csv = tmp_path / "empty.csv"
    csv.write_text("ra,dec,phot_g_mean_mag\n" + "\n".join(
        f"{r['ra']:.9f},{r['dec']:.9f},{'' if k == 1 else format(r['phot_g_mean_mag'], '.3f')}"
        for k, r in enumerate(table)) + "\n")
    caplog.clear()
    with caplog.at_level("WARNING", logger="ssodetect"):
        read = load_reference_catalogue(csv)
    assert len(read) == n - 1 and np.all(np.asarray(read["phot_g_mean_mag"], float) > 5)
    assert any("1 rows without a finite" in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.parametrize("key, second", [("MJD-OBS", None), ("FILTER", "R"), ("CCDID", "9-9")])
def test_conflicting_duplicate_header_cards_are_said(scene, tmp_path, capsys, key, second):
    """D4: a second MJD-OBS a day later, a second FILTER or CCDID: the first card was read with exit 0 and no word."""
    frames = tmp_path / "frames"
    shutil.copytree(scene, frames, ignore=shutil.ignore_patterns("*.ecsv"))
    path = frames / "exp_02.fits"
    with fits.open(path, mode="update") as hdul:
        hdu = next(h for h in hdul if key in h.header)
        first = hdu.header[key]
        value = first + 1.0 if second is None else second
        hdu.header.append((key, value), bottom=True)
    before = path.read_bytes()
    outcome = cli(capsys, "run", frames, "--out", tmp_path / "out", "--to-step", "ingest")
    assert outcome.code == 1, outcome.err
    said = [w for w in outcome.warnings if f"{key} is given 2 times with different values" in w]
    assert len(said) == 1 and str(path) in said[0] and "the first is used" in said[0], outcome.warnings
    assert path.read_bytes() == before


def test_repeated_header_cards_that_agree_are_not_said(scene, tmp_path):
    from ssodetect.config import IOConfig
    from ssodetect.io.headers import conflicting_cards

    header = fits.getheader(scene / "exp_00.fits", 1)
    header.append(("MYKEY", 1), bottom=True)
    header.append(("MYKEY", 2), bottom=True)  # (a keyword ssodetect does not read)
    header.append(("CRVAL1", float(header["CRVAL1"])), bottom=True)
    assert conflicting_cards(header, IOConfig()) == []
    header.append(("CRVAL1", float(header["CRVAL1"]) + 1e-3), bottom=True)
    notes = conflicting_cards(header, IOConfig())
    assert len(notes) == 1 and notes[0].startswith("CRVAL1 is given 3 times with different values"), notes


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs the [ml] extra (torch)")
def test_ml_train_exits_1_after_its_own_warning(scene, tmp_path, capsys):
    """D5: ``ml train`` warned that its validation split was too small to trust, and exited 0."""
    made = cli(capsys, "ml", "dataset", scene, "--out", tmp_path / "ds", "-n", "8", "-q")
    assert made.code == 0, made.err
    outcome = cli(capsys, "ml", "train", tmp_path / "ds", "--out", tmp_path / "model", "--epochs", "1", "--batch", "4",
                  "-q")
    assert outcome.code == 1, outcome.err
    assert any("validation" in w and "noisy" in w for w in outcome.warnings), outcome.warnings
    assert (tmp_path / "model" / "model.pt").is_file()


@pytest.mark.parametrize("change, words", [
    (lambda t: t.__setitem__("mag", np.nan), "every row has no finite magnitude (column mag)"),
    (lambda t: t.__setitem__("rate", -np.asarray(t["rate"], float)), "every row has no finite, non-negative rate"),
    (lambda t: t.__setitem__("ra", np.stack([t["ra"]] * 2, 1)), "column ra holds 2 values per row"),
    (lambda t: t.__setitem__("mag", np.stack([t["mag"]] * 2, 1)), "column mag holds 2 values per row"),
    (lambda t: setattr(t["rate"], "unit", "kg"), "column rate in kg, not convertible to arcsec / h"),
])
def test_evaluate_refuses_a_truth_table_it_cannot_score(scene, good_run, tmp_path, capsys, change, words):
    """D6 and D1: all-NaN magnitudes or negative rates were scored as "no mover that bright", exit 0; a column of two
    values per row was an internal error."""
    truth = Table.read(scene / "truth.ecsv")
    change(truth)
    truth.write(tmp_path / "truth.ecsv")
    outcome = cli(capsys, "evaluate", good_run.out, tmp_path / "truth.ecsv", "--no-write")
    assert outcome.code == 2 and len(outcome.errors) == 1, outcome.err
    assert str(tmp_path / "truth.ecsv") in outcome.errors[0] and words in outcome.errors[0], outcome.errors


def test_evaluate_converts_a_rate_in_another_unit_and_says_rows_it_cannot_score(scene, good_run, tmp_path, capsys):
    """D6: a rate in deg/s was read as arcsec/h without a word."""
    base = cli(capsys, "evaluate", good_run.out, scene / "truth.ecsv", "--no-write")
    truth = Table.read(scene / "truth.ecsv")
    truth["rate"] = np.asarray(truth["rate"], float) / 3600.0 / 3600.0
    truth["rate"].unit = "deg / s"
    truth.write(tmp_path / "deg.ecsv")
    converted = cli(capsys, "evaluate", good_run.out, tmp_path / "deg.ecsv", "--no-write")
    assert converted.code == base.code and converted.out == base.out, (base.out, converted.out)
    truth = Table.read(scene / "truth.ecsv")
    truth["mag"][truth["object"] == truth["object"][0]] = np.nan
    truth.write(tmp_path / "onenan.ecsv")
    outcome = cli(capsys, "evaluate", good_run.out, tmp_path / "onenan.ecsv", "--no-write")
    assert outcome.code == 1 and any("rows with no finite magnitude (column mag): their movers are not scored" in w
                                     for w in outcome.warnings), outcome.err


def test_a_positions_table_of_two_values_per_row_is_refused(scene, tmp_path, capsys):
    """D1: ``ml dataset --positions`` with a 2-D ra column was an internal error."""
    positions = tmp_path / "pos.ecsv"
    Table({"ra": np.stack([[150.0, 150.001]] * 2, 1), "dec": [25.0, 25.001]}).write(positions)
    outcome = cli(capsys, "ml", "dataset", scene, "--out", tmp_path / "ds", "--positions", positions, "-n", "4")
    assert outcome.code == 2 and f"{positions}: column ra holds 2 values per row" in outcome.errors[0], outcome.err
    assert not (tmp_path / "ds").exists()
