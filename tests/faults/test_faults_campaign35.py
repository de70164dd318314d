"""Fault campaign 35 (62 cases on commit 7f9ec7c): the defects found, fixed and tested here (all in how a truth
table and a catalogue's text cells are read)."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from faultkit import cli


def _truth(scene, tmp_path, change) -> str:
    truth = Table.read(scene / "truth.ecsv")
    change(truth)
    path = tmp_path / "truth.ecsv"
    truth.write(path, overwrite=True)
    return str(path)


def _set(name, values):
    return lambda t: t.__setitem__(name, values(t) if callable(values) else values)


def _unit(name, unit):
    return lambda t: setattr(t[name], "unit", unit)


@pytest.mark.parametrize("change, words", [
    (_set("on_detector", lambda t: np.array(["maybe"] * len(t))), "column on_detector: row 1 holds 'maybe'"),
    (_set("on_detector", lambda t: np.full(len(t), np.nan)), "column on_detector: row 1 holds 'nan'"),
    (_set("trail_length", lambda t: np.full(len(t), -1e6)), "trail_length -1e+06 is not within 0 to 100000 px"),
    (_set("trail_length", lambda t: np.full(len(t), np.inf)), "trail_length inf is not within 0 to 100000 px"),
    (_unit("trail_length", "deg"), "column trail_length in deg, not convertible to pix"),
    (_unit("mag", "Jy"), "column mag in Jy, not a magnitude"),
    (_set("mag", lambda t: np.full(len(t), -30.0)), "mag -30 is outside -5 to 40 mag"),
])
def test_evaluate_refuses_truth_values_it_would_score_wrongly(scene, good_run, tmp_path, capsys, change, words):
    """D1-D5: on_detector as text "False" or NaN was read as true; a negative trail length made every object false,
    an infinite one let any object match; trail lengths in degrees and magnitudes in Jy or of -30 were used as they
    were, exit 0 without a word."""
    path = _truth(scene, tmp_path, change)
    outcome = cli(capsys, "evaluate", good_run.out, path, "--no-write")
    assert outcome.code == 2 and len(outcome.errors) == 1, outcome.err
    assert path in outcome.errors[0] and words in outcome.errors[0], outcome.errors


def test_evaluate_reads_on_detector_written_as_text_or_integers(scene, good_run, tmp_path, capsys):
    """D1: the text "False" counts as false, as the booleans it stands for do."""
    base = cli(capsys, "evaluate", good_run.out, scene / "truth.ecsv", "--no-write")
    as_text = _truth(scene, tmp_path, _set("on_detector", lambda t: np.where(t["on_detector"], "True", "False")))
    assert cli(capsys, "evaluate", good_run.out, as_text, "--no-write").out == base.out
    as_int = _truth(scene, tmp_path, _set("on_detector", lambda t: np.asarray(t["on_detector"], int)))
    assert cli(capsys, "evaluate", good_run.out, as_int, "--no-write").out == base.out
    off = _truth(scene, tmp_path, _set("on_detector", lambda t: np.array(["False"] * len(t))))
    outcome = cli(capsys, "evaluate", good_run.out, off, "--no-write")
    assert outcome.out != base.out and not any("100.0 %" in line for line in outcome.out), outcome.out


@pytest.mark.parametrize("cell", ["1_4", "1_000.5"])
def test_a_catalogue_text_cell_python_reads_as_a_number_is_refused(scene, tmp_path, cell):
    """D5: "1_4" (Python's float() reads 14) was read as a magnitude without a word.  (Arabic-Indic digits are
    converted by astropy's own reader, as the number they write, before ssodetect sees the column.)"""
    from ssodetect.astrometry.refcat import load_reference_catalogue
    from ssodetect.errors import InputError

    table = Table.read(scene / "refcat.ecsv")
    rows = [f"{r['ra']:.9f},{r['dec']:.9f},{cell if k == 0 else format(r['phot_g_mean_mag'], '.3f')}"
            for k, r in enumerate(table)]
    path = tmp_path / "cells.csv"
    path.write_text("ra,dec,phot_g_mean_mag\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=f"{path}: column phot_g_mean_mag holds text that is no number"):
        load_reference_catalogue(path)
