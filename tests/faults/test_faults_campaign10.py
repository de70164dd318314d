"""The tenth fault campaign: frames of two observatories reported as one, a spacecraft position on some frames
only, a light frame taken as the bias, report fields the ADES schema refuses, the Python API taking a string letter
by letter, a truth table of another field scored as if it were this one's, library advice in messages.

A refused command exits 2 with one line naming the file or setting and writes nothing.
"""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from faultkit import cli, copy_inputs, set_header, snapshot


def _refused(outcome, *said):
    assert outcome.code == 2 and len(outcome.err) == 1, outcome.err
    for text in said:
        assert text in outcome.errors[0], outcome.errors[0]


@pytest.mark.parametrize("cards, said", [
    ({"MPCCODE": "500"}, "observatory code 500 differs from I41"),
    ({"TELESCOP": "OTHERSCOPE"}, "telescope 'OTHERSCOPE' (TELESCOP) differs"),
    ({"OBSPOS_X": 7000.0, "OBSPOS_Y": 0.0, "OBSPOS_Z": 0.0}, "no observer position"),
])
def test_frames_of_another_observer_are_refused(scene, tmp_path, capsys, cards, said):
    """E1, E8: frames with MPCCODE I41 and 500 (or another TELESCOP) were all reported as I41; a spacecraft position
    on one frame only mixed ground and space records of one object in the MPC file."""
    src = copy_inputs(scene, tmp_path / "in")
    for path in sorted(src.glob("exp_*.fits")):
        set_header(path, 0, MPCCODE="I41")
    set_header(src / "exp_01.fits", 0, **cards)
    before = snapshot(tmp_path)
    outcome = cli(capsys, "run", src, "--out", tmp_path / "out")
    _refused(outcome, said, "exp_0")
    assert snapshot(tmp_path) == before


def test_a_light_frame_given_as_the_bias_is_refused(scene, tmp_path, capsys):
    """E5: another exposure's light frame given as [calibrate] bias was subtracted from every light (sources lost,
    magnitudes 0.4 mag off) without a word; a frame whose type keyword says light is refused too."""
    src = copy_inputs(scene, tmp_path / "in")
    bias = tmp_path / "cal" / "bias.fits"
    bias.parent.mkdir()
    shutil.copy2(src / "exp_00.fits", bias)
    config = tmp_path / "c.toml"
    config.write_text(f'[calibrate]\nbias = ["{bias}"]\n')
    before = snapshot(tmp_path)
    _refused(cli(capsys, "run", src, "--out", tmp_path / "out", "--config", config), "bias.fits",
             "given as a bias frame, but its EXPTIME = 566 s")
    assert snapshot(tmp_path) == before
    set_header(bias, 1, IMAGETYP="LIGHT", EXPTIME=0.0)
    set_header(bias, 0, EXPTIME=0.0)  # (exposure times that disagree between the headers are a warning of their own)
    before = snapshot(tmp_path)
    _refused(cli(capsys, "run", src, "--out", tmp_path / "out", "--config", config), "bias.fits",
             "IMAGETYP = 'LIGHT' says light")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("text, said", [
    ("[report]\ntelescope_aperture = 0.004\n", "would be written as 0"),
    ("[report]\ntelescope_f_ratio = 0.01\n", "would be written as 0"),
    ("[report]\ntelescope_f_ratio = 1e7\n", "telescope_f_ratio"),
    ("[report]\nobserver_position = [1e12, 0, 0]\n", "no geocentric position"),
])
def test_report_settings_the_ades_schema_refuses_are_refused(scene, tmp_path, capsys, text, said):
    """E3, E4: an aperture of 0.004 m was written <aperture>0</aperture> and a position of 1e12 km with 4 decimals:
    both broke the ADES schema, with exit 0."""
    config = tmp_path / "c.toml"
    config.write_text(text)
    _refused(cli(capsys, "run", scene, "--out", tmp_path / "out", "--config", config), said)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("km", [0.0, -6378.137, 1.5e6, -2e8, 9.99e10, 1e11, 99999999.99996, -999999999.99999])
def test_spacecraft_positions_fit_the_ades_field(km):
    """E4: OBSPOS_X = 2e8 km (within the header limit) was written with 4 decimals, 14 characters; the re-check's
    F1: 99999999.99996 rounds up to nine digits (counted before rounding: 14 characters again)."""
    from ssodetect.report.ades import _position

    text = _position(km)
    assert re.fullmatch(r"[+\-]?[0-9.]{1,13}", text), text
    assert float(text) == pytest.approx(km, abs=1e-4 * max(1.0, abs(km) / 1e8))


def test_runs_limit_beyond_sqlite_is_refused(tmp_path, capsys):
    """E2: --limit 1e23 reached SQLite and was an internal error (exit 3)."""
    _refused(cli(capsys, "runs", tmp_path, "--limit", "99999999999999999999999"), "--limit")


def test_run_pipeline_takes_a_path_a_dict_and_a_word(scene, tmp_path):
    """E6: run_pipeline('scene') was read letter by letter ('s: no such file'), keywords='night1' became six
    keywords, and a dict as config an AttributeError."""
    import json

    from ssodetect.errors import ConfigError
    from ssodetect.pipeline import run_pipeline

    result = run_pipeline(str(scene), tmp_path / "out", {"execution": {"progress": False}}, keywords="night1",
                          to_step="detect")
    assert result.steps
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()).get("keywords") == ["night1"]
    with pytest.raises(ConfigError, match="no configuration"):
        run_pipeline(scene, None, 42)
    with pytest.raises(ConfigError, match="invalid configuration.*unknown_section"):
        run_pipeline(scene, None, {"unknown_section": {}})
    with pytest.raises(ConfigError, match="is no path"):
        run_pipeline([scene, 3], None)


def test_a_wrong_kind_of_file_is_named_in_plain_words(scene, tmp_path, capsys):
    """E7: a text file among the frames said "OSError: No SIMPLE card found ... try with ignore_missing_simple=True"
    (an option the CLI does not have); an image given as the catalogue said "ValueError: No table found"."""
    src = copy_inputs(scene, tmp_path / "in")
    (src / "notes.fits").write_text("observing log\n")
    outcome = cli(capsys, "run", src, "--out", tmp_path / "out")
    _refused(outcome, "notes.fits", "not a FITS file")
    assert not re.search(r"Error|ignore_missing_simple|try with", outcome.errors[0]), outcome.errors[0]
    (src / "notes.fits").unlink()
    outcome = cli(capsys, "run", src, "--out", tmp_path / "out", "--refcat", src / "exp_00.fits")
    _refused(outcome, "exp_00.fits", "holds no table")
    assert "ValueError" not in outcome.errors[0]


def test_a_truth_table_of_another_field_is_refused(good_run, scene, tmp_path, capsys):
    """E9: a truth table 150 deg from the run's field was scored: 0 found, a WCS error of 1e8 mas, exit 0, and
    report.html redrawn from it."""
    from astropy.table import Table

    run = tmp_path / "run"
    shutil.copytree(good_run.out, run)
    truth = Table.read(scene / "truth.ecsv")
    truth["ra"] = (truth["ra"] + 150.0) % 360.0
    truth.write(tmp_path / "truth.ecsv")
    shutil.copy2(scene / "truth_wcs.ecsv", tmp_path / "truth_wcs.ecsv")
    before = snapshot(tmp_path)
    _refused(cli(capsys, "evaluate", run, tmp_path / "truth.ecsv"), "truth.ecsv", "a truth table of another field")
    assert snapshot(tmp_path) == before
    # campaigns: the truth's times were not read; a truth of the same field a night later was scored as this run's
    truth = Table.read(scene / "truth.ecsv")
    truth["mjd"] += 1.0
    truth.write(tmp_path / "truth.ecsv", overwrite=True)
    before = snapshot(tmp_path)
    _refused(cli(capsys, "evaluate", run, tmp_path / "truth.ecsv"), "truth.ecsv",
             "a truth table of another sequence: its exposure 0 is at MJD")
    assert snapshot(tmp_path) == before
    # campaign 14 (D3): an empty truth table, or one of NaN positions, scored NaN and every object false (exit 0)
    for rows in (truth[:0], truth):
        rows = rows.copy()
        rows["ra"] = np.nan
        rows.write(tmp_path / "truth.ecsv", overwrite=True)
        before = snapshot(tmp_path)
        _refused(cli(capsys, "evaluate", run, tmp_path / "truth.ecsv"), "truth.ecsv",
                 "a truth table with no mover at a finite position")
        assert snapshot(tmp_path) == before
    assert cli(capsys, "evaluate", run, scene / "truth.ecsv", "--no-write").code == 0


def test_bzip2_frames_are_found_in_a_folder_and_checked_as_a_stream(scene, tmp_path, capsys):
    """Campaign 9's leftover: ``.fits.bz2`` frames were read when named but not found in a folder; a bzip2 file is
    now checked as a stream like a gzip one (a small file that decompresses to 20 MB of zeros after its FITS is
    refused, not held in memory)."""
    import bz2

    src = tmp_path / "in"
    src.mkdir()
    for path in sorted(scene.glob("exp_*.fits")):
        (src / (path.name + ".bz2")).write_bytes(bz2.compress(path.read_bytes()))
    from ssodetect.config import IOConfig
    from ssodetect.io.frames import find_inputs, scan_inputs

    assert [p.name for p in find_inputs([src])] == [f"exp_0{i}.fits.bz2" for i in range(4)]
    assert len({ref.mjd for ref in scan_inputs(find_inputs([src]), IOConfig())}) == 4
    bomb = tmp_path / "bomb"
    bomb.mkdir()
    data = (scene / "exp_00.fits").read_bytes() + bytes(20 << 20)
    (bomb / "exp_00.fits.bz2").write_bytes(bz2.compress(data))
    before = snapshot(tmp_path)
    _refused(cli(capsys, "run", bomb, "--out", tmp_path / "out2"), "exp_00.fits.bz2", "decompresses to more than")
    assert snapshot(tmp_path) == before


def test_a_byte_order_mark_is_taken_in_a_configuration_and_named_in_a_catalogue(scene, tmp_path, capsys):
    """Campaign 9's leftover: a TOML file saved "UTF-8 with BOM" was refused as invalid TOML at line 1; an ECSV
    catalogue with a BOM was refused without saying why."""
    from ssodetect.config import load_config

    config = tmp_path / "c.toml"
    config.write_bytes(b"\xef\xbb\xbf[detect]\nthreshold = 2.5\n")
    assert load_config(config).detect.threshold == 2.5
    refcat = tmp_path / "ref.ecsv"
    refcat.write_bytes(b"\xef\xbb\xbf" + (scene / "refcat.ecsv").read_bytes())
    _refused(cli(capsys, "run", scene, "--out", tmp_path / "out", "--refcat", refcat), "ref.ecsv",
             "starts with a byte-order mark")
    assert not (tmp_path / "out").exists()


def test_exposure_grouping_beyond_a_day_is_refused(scene, tmp_path, capsys):
    """Campaign 9's leftover: exposure_grouping_s = 1e9 merged a sequence into one exposure."""
    config = tmp_path / "c.toml"
    config.write_text("[io]\nexposure_grouping_s = 1e9\n")
    _refused(cli(capsys, "run", scene, "--out", tmp_path / "out", "--config", config), "exposure_grouping_s")


@pytest.mark.parametrize("cards, kind", [
    ({"IMAGETYP": ""}, "bias"),  # blank: says nothing
    ({"IMAGETYP": "", "OBSTYPE": "BIAS"}, "bias"),  # a blank first keyword does not hide the next
    ({"IMAGETYP": "TWILIGHT"}, "flat"),  # unknown words are not "light"
    ({"OBSTYPE": "SKY"}, "flat"),
    ({"IMAGETYP": "Dark Frame"}, "dark"),
])
def test_calibration_frames_whose_type_says_nothing_else_are_taken(tmp_path, cards, kind):
    """The re-check's F2: a listed calibration frame was refused whenever its type keyword did not name its kind
    (IMAGETYP = '' "says light", twilight flats refused); only a value naming another kind refuses it."""
    import numpy as np
    from astropy.io import fits

    from ssodetect.calibrate.masters import build_masters

    path = tmp_path / f"{kind}.fits"
    header = fits.Header(cards)
    header["EXPTIME"] = 0.0 if kind == "bias" else 10.0
    fits.PrimaryHDU(np.full((8, 8), 100.0, np.float32), header).writeto(path)
    masters = build_masters({kind: [(str(path), 0)]})
    assert getattr(masters, kind) is not None
    fits.setval(path, "IMAGETYP", value="OBJECT")
    with pytest.raises(Exception, match="says light"):
        build_masters({kind: [(str(path), 0)]})


def test_run_pipeline_refuses_keywords_the_cli_refuses(scene):
    """The re-check's F4: run_pipeline wrote keywords with a newline, 100 characters or none into the manifest (the
    CLI refused them)."""
    from ssodetect.errors import ConfigError
    from ssodetect.pipeline import run_pipeline

    for words in (("night\n1",), ("x" * 100,), ("",)):
        with pytest.raises(ConfigError, match="printable text of 1 to 64"):
            run_pipeline(scene, None, keywords=words)
    with pytest.raises(ConfigError, match="obs_id"):
        run_pipeline(scene, None, obs_id="a\tb")


def test_telescope_names_differing_in_case_are_one_telescope(scene, tmp_path, capsys):
    """The re-check's F5: TELESCOP 'NEOSSat' and 'NEOSSAT' on frames of one sequence were refused as two
    telescopes."""
    src = copy_inputs(scene, tmp_path / "in")
    set_header(src / "exp_01.fits", 0, TELESCOP="euclid")
    outcome = cli(capsys, "run", src, "--out", tmp_path / "out", "--to-step", "detect")
    assert outcome.code in (0, 1), outcome.err


@pytest.mark.parametrize("content, said", [
    (b"ra,dec\n", "not a table format that can be recognised"),
    (b"\x91\x92 binary \x00\x01", "not"),
])
def test_catalogue_messages_carry_no_library_advice(scene, tmp_path, capsys, content, said):
    """The re-check's F3: "please provide a 'format' argument", "(note: Astropy uses zero-based indexing)", a
    decode error with its quote cut off."""
    refcat = tmp_path / "ref.dat"
    refcat.write_bytes(content)
    outcome = cli(capsys, "run", scene, "--out", tmp_path / "out", "--refcat", refcat)
    _refused(outcome, "ref.dat", said)
    assert not re.search(r"please provide|format' argument|zero-based|codec|Error\b", outcome.errors[0]), outcome.errors


def test_nearest_truth_distance_across_ra_zero_and_without_positions():
    """The field check measures on the sphere: RA 359.9 and 0.1 are 0.2 deg apart at the equator; no valid position
    on either side gives NaN (not judged)."""
    import math

    from ssodetect.evaluate import nearest_truth_distance

    assert nearest_truth_distance([359.9], [0.0], [0.1, 150.0], [0.0, 0.0]) == pytest.approx(0.2, abs=1e-9)
    assert nearest_truth_distance([10.0], [60.0], [190.0], [60.0]) == pytest.approx(60.0, abs=1e-6)
    assert math.isnan(nearest_truth_distance([float("nan")], [0.0], [0.0], [0.0]))
    assert math.isnan(nearest_truth_distance([0.0], [0.0], [0.0], [95.0]))
