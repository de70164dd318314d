"""Fault campaign 15 (this stop's new surfaces, about 105 cases, on commit b1d3bd0): the defects found, fixed and
tested here (D1, D5-D7 in tests/test_ml.py)."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from faultkit import cli, copy_run, snapshot
from ssodetect.calibrate import build_masters
from ssodetect.config import IOConfig
from ssodetect.errors import InputError
from ssodetect.io.headers import tracking_rate
from ssodetect.pipeline.registry import REGISTRY_NAME, Registry


def _flat(path, rng, *, nan=0, biassec="[101:120,1:100]", trimsec="[1:100,1:100]"):
    """A 120x100 raw flat (overscan columns 101-120) with ``nan`` NaN pixels spread over it, overscan included."""
    data = 1000.0 + rng.normal(0.0, 3.0, (100, 120))
    data[:, :100] += 20000.0
    if nan:
        k = rng.choice(data.size, nan, replace=False)
        data.flat[k] = np.nan
    header = fits.Header({"IMAGETYP": "Flat Field", "EXPTIME": 1.0, "BIASSEC": biassec, "TRIMSEC": trimsec})
    fits.PrimaryHDU(data.astype(np.float32), header).writeto(path)
    return str(path)


def test_a_few_nan_pixels_in_the_overscan_do_not_blank_their_rows(tmp_path, caplog):
    """D2: one NaN in a row's overscan made the whole row NaN (the median was not NaN-robust): 10 NaN pixels (0.08 %)
    were refused as '2.1 %'.  They are a warning naming their count; too many are refused with the true share."""
    rng = np.random.default_rng(3)
    flats = [_flat(tmp_path / f"f{i}.fits", rng, nan=10 if i == 0 else 0) for i in range(3)]
    with caplog.at_level("WARNING", logger="ssodetect"):
        masters = build_masters({"flat": [(p, 0) for p in flats]})
    assert masters.flat.shape == (100, 100) and np.isfinite(masters.flat).sum() >= 100 * 100 - 10
    assert "f0.fits: flat frame has" in caplog.text and "pixels NaN or infinite (0.0" in caplog.text
    bad = _flat(tmp_path / "g.fits", rng, nan=300)  # ~2.5 % of the frame, ~2 % of its science pixels
    with pytest.raises(InputError, match=r"g\.fits: flat frame has 2\.\d % of its pixels NaN or infinite"):
        build_masters({"flat": [(bad, 0)]})


def test_a_section_past_the_image_end_is_cut_and_said(tmp_path, caplog):
    """D3: a TRIMSEC running past the image's end was cut to it without a word (meant for partial read-outs such as
    NEOSSat's, whose sections describe the whole detector); the cut is now said."""
    rng = np.random.default_rng(4)
    flats = [_flat(tmp_path / f"f{i}.fits", rng, trimsec="[1:100,1:500]") for i in range(3)]
    with caplog.at_level("INFO", logger="ssodetect"):
        masters = build_masters({"flat": [(p, 0) for p in flats]})
    assert masters.flat.shape == (100, 100)
    assert "f0.fits: TRIMSEC [1:100,1:500] runs past the 120x100 image: cut to it" in caplog.text


@pytest.mark.parametrize("content", ["empty", "foreign"])
def test_a_file_of_another_program_named_like_the_registry_is_never_migrated(good_run, tmp_path, capsys, content):
    """D4: an empty file, or another program's SQLite database, named .ssodetect-registry.sqlite in ROOT was turned
    into a registry (the registry's tables added to someone else's database)."""
    root = tmp_path / "root"
    copy_run(good_run.out, root / "night")
    path = root / REGISTRY_NAME
    if content == "empty":
        path.write_bytes(b"")
    else:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE foo (x INTEGER)")
        db.commit()
        db.close()
    before = snapshot(root)
    outcome = cli(capsys, "runs", root)
    assert outcome.code == 2 and len(outcome.errors) == 1 and "not a run registry" in outcome.errors[0], outcome.err
    assert snapshot(root) == before
    with pytest.raises(InputError, match="not a run registry"):
        Registry(root)


@pytest.mark.parametrize("keys, said", [
    (["", "DEC_RATE"], "is no FITS keyword"),
    (["RA RATE", "DEC=RATE"], "is no FITS keyword"),
    (["VERYLONGKEYWORDNAME", "DEC_RATE"], "is no FITS keyword"),
    (["RA_RATE", "RA_RATE"], "twice in one pair"),
])
def test_tracking_rate_keys_no_header_can_hold_are_refused(keys, said):
    """D8: keyword names no FITS header can hold (or one key twice in a pair) were accepted, and the comparison with
    the star trails silently never made."""
    with pytest.raises(ValueError, match=said):
        IOConfig(tracking_rate_keys=keys)
    assert IOConfig(tracking_rate_keys=["HIERARCH ESO TEL TRAK RA", "HIERARCH ESO TEL TRAK DEC"]).tracking_rate_keys


def test_half_a_tracking_rate_pair_is_said():
    """D8: a header with RA_RATE but no DEC_RATE gave no tracking rate and no word."""
    problems: list[str] = []
    assert tracking_rate(fits.Header({"RA_RATE": 30.0}), ["RA_RATE", "DEC_RATE"], problems=problems) is None
    assert problems == ["RA_RATE without DEC_RATE: no tracking rate read from them"]


def test_truth_rows_without_a_position_are_counted(good_run, scene, tmp_path, capsys, caplog):
    """D9: a truth row with a NaN position was left out of the matching without a word."""
    out = copy_run(good_run.out, tmp_path / "run")
    truth = Table.read(scene / "truth.ecsv")
    truth["ra"][0] = np.nan
    truth.write(tmp_path / "truth.ecsv")
    with caplog.at_level("WARNING"):
        outcome = cli(capsys, "evaluate", out, tmp_path / "truth.ecsv", "--no-write")
    assert outcome.code == 1, outcome.err
    assert "truth.ecsv: 1 of" in caplog.text and "truth rows without a finite position are not matched" in caplog.text
