"""Fault campaign 32 (about 107 cases on commit 641e3ac): the defects found, fixed and tested here (binning by
CCDSUM and as text in tests/test_calibrate.py)."""
from __future__ import annotations

import json

import pytest

from faultkit import cli
from ssodetect.errors import InputError
from ssodetect.known.orbits import read_orbits


@pytest.mark.parametrize("doc", [{"orbit": None}, {"orbit": {"elements": []}, "object": None},
                                 {"orbit": {"elements": []}, "phys_par": [1]}])
def test_an_orbit_document_with_null_or_odd_members_is_refused_in_one_line(tmp_path, doc):
    """`{"orbit": null}` was an internal error (AttributeError), exit 3."""
    path = tmp_path / "o.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="not an MPCORB or JPL SBDB orbit file"):
        read_orbits(path)


def test_an_orbit_without_its_node_is_left_out_and_said(tmp_path, caplog):
    """An SBDB row with a null node passed the usable-elements test (q, e, i, tp) and was dropped later without a
    word; it is now among the orbits "without usable elements", a warning."""
    fields = ["full_name", "epoch_mjd", "e", "q", "i", "om", "w", "ma", "tp", "H", "G"]
    good = ["(2020 AB1)", "60000.0", "0.1", "2.0", "5.0", "80.0", "120.0", "10.0", "2459000.5", "17.0", "0.15"]
    no_node = ["(2020 AB2)", *good[1:5], None, *good[6:]]
    path = tmp_path / "sbdb.json"
    path.write_text(json.dumps({"fields": fields, "data": [good, no_node]}))
    with caplog.at_level("WARNING"):
        table = read_orbits(path)
    assert len(table) == 1 and "1 of 2 orbits without usable elements" in caplog.text and "2020 AB2" in caplog.text


def test_a_line_break_in_a_scene_path_cannot_forge_a_printed_line(tmp_path, capsys):
    outcome = cli(capsys, "simulate", tmp_path / "x\nFAKE LINE", "--size", "128", "--nccd", "1", "--seed", "3")
    assert outcome.code in (0, 1), outcome.err
    assert outcome.out and not any(line.startswith("FAKE LINE") for line in outcome.out)


@pytest.mark.parametrize("inputs, outdir, refcat, said", [
    (["a\x00b"], None, None, r"a\x00b: no file can have this name"),
    (["x\x1b[2Jy.fits"], None, None, r"x\x1b[2Jy.fits: no such file"),
    ([], "o\x00ut", None, r"o\x00ut: no file can have this name"),
    ("a\x00b", "out", None, r"a\x00b: no file can have this name"),  # (campaign 33: with an outdir, a ValueError)
    ([], "out", "ref\x00cat.ecsv", r"ref\x00cat.ecsv: no file can have this name")])  # (campaign 33: the same)
def test_a_control_character_in_an_api_path_is_named_with_escapes(tmp_path, monkeypatch, inputs, outdir, refcat,
                                                                   said):
    """A NUL in a path given to the Python API was echoed raw in the error (the CLI escaped it); a NUL in the output
    directory, or in an input or the reference catalogue with an output directory, was Python's "embedded null byte"
    ValueError naming no path (through a batch manifest, an internal error)."""
    from ssodetect.config import load_config
    from ssodetect.pipeline import run_pipeline

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as caught:
        run_pipeline(inputs or [tmp_path], outdir, load_config(None), refcat=refcat)
    assert str(caught.value).startswith(said) and str(caught.value).isprintable()


def test_a_device_given_as_the_model_is_named_so():
    """`--model /dev/zero` said "model file not found" of a file that exists."""
    pytest.importorskip("torch")
    from ssodetect.ml.model import load_model

    with pytest.raises(InputError, match="/dev/zero: not a regular file"):
        load_model("/dev/zero")
