"""The eleventh fault campaign: a logical header value read as the number 1, exposure times that disagree, a flat
with no signal, ``calibrate`` leaving masters behind after a failure or mixing two calls' masters, scores written over
a run's own table, reports rewritten with settings the run still records as the old ones, misleading messages.

A refused command exits 2 with one line naming the file or setting and writes nothing.
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from astropy.io import fits

from faultkit import cli, copy_inputs, copy_run, set_header, snapshot

NY, NX = 48, 64


def _refused(outcome, *said):
    assert outcome.code == 2 and len(outcome.err) == 1, outcome.err
    for text in said:
        assert text in outcome.errors[0], outcome.errors[0]


def _raw(path, kind, exptime, signal, rng, *, bias=1000.0):
    """A 16-bit raw frame (no overscan) of ``kind`` with ``signal`` ADU above ``bias``."""
    image = bias + signal + rng.normal(0.0, 3.0, (NY, NX))
    header = fits.Header()
    header["IMAGETYP"] = kind
    header["EXPTIME"] = exptime
    header["DATE-OBS"] = "2020-01-01T00:00:00"
    fits.PrimaryHDU(np.clip(np.round(image), 0, 65535).astype(np.uint16), header).writeto(path)
    return path


def _raw_set(folder, rng, *, flat_signal=20000.0, n_bias=3):
    folder.mkdir(parents=True)
    for i in range(n_bias):
        _raw(folder / f"b{i}.fits", "Bias Frame", 0.0, 0.0, rng)
    for i in range(3):
        _raw(folder / f"f{i}.fits", "Flat Field", 1.0, flat_signal, rng)
    return _raw(folder / "light.fits", "Light Frame", 60.0, 500.0, rng)


def test_a_flat_without_signal_is_refused(tmp_path, capsys):
    """D3: flats all zero (bias noise left around 0 after the bias) passed the median > 0 check about half the time:
    the master flat ran from -573 to +563 and every calibrated light was noise, with exit 0."""
    rng = np.random.default_rng(5)
    raw = tmp_path / "raw"
    _raw_set(raw, rng, flat_signal=0.0)
    for i in range(3):  # the flats' median a hair above the bias: "positive", and no signal
        data = fits.getdata(raw / f"f{i}.fits").astype(float) + 1.0
        fits.writeto(raw / f"f{i}.fits", data.astype(np.uint16), fits.getheader(raw / f"f{i}.fits"), overwrite=True)
    before = snapshot(tmp_path)
    _refused(cli(capsys, "calibrate", raw, "--out", tmp_path / "cal", "--lights"), "f0.fits",
             "flat frame has no positive signal")
    assert snapshot(tmp_path) == before
    # a real flat, vignetted to 5 % of its level at the corners, is taken (the re-check's N1: the pixels' scatter
    # about the median counted the vignetting as noise)
    good = tmp_path / "good"
    _raw_set(good, rng)
    y, x = np.mgrid[:NY, :NX]
    vignette = 1.0 - 0.95 * np.hypot((x - NX / 2) / (NX / 2), (y - NY / 2) / (NY / 2)) ** 2 / 2  # 5 % at corners
    for i in range(3):
        data = 1000.0 + 20000.0 * vignette + rng.normal(0, 3, (NY, NX))
        fits.writeto(good / f"f{i}.fits", data.astype(np.uint16), fits.getheader(good / f"f{i}.fits"), overwrite=True)
    assert cli(capsys, "calibrate", good, "--out", tmp_path / "cal2").code == 0
    assert (tmp_path / "cal2" / "master_flat.fits").is_file()


def test_calibrate_writes_all_or_nothing_and_never_mixes_two_calls(tmp_path, capsys):
    """D4, D5, D14: masters were committed before the lights were calibrated (a bad TRIMSEC on a light left them
    behind, exit 2); a second call with only biases replaced the bias beside the first call's flat; ``--out`` could
    be the raw directory itself."""
    rng = np.random.default_rng(6)
    raw = tmp_path / "raw"
    light = _raw_set(raw, rng)
    out = tmp_path / "cal"
    assert cli(capsys, "calibrate", raw, "--out", out, "--lights").code == 0
    assert {p.name for p in out.glob("master_*.fits")} == {"master_bias.fits", "master_flat.fits"}
    assert (out / "calibrated" / "light.fits").is_file()
    # a second call with biases only: OUT is replaced as a whole (no flat of the first call left beside the new bias)
    only_bias = tmp_path / "raw2"
    only_bias.mkdir()
    for i in range(2):
        _raw(only_bias / f"b{i}.fits", "Bias Frame", 0.0, 0.0, rng, bias=2000.0)
    assert cli(capsys, "calibrate", only_bias, "--out", out).code == 0
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} >= {"master_bias.fits"}
    assert not (out / "master_flat.fits").exists() and not (out / "calibrated").exists()
    assert float(np.median(fits.getdata(out / "master_bias.fits"))) == pytest.approx(2000.0, abs=2.0)
    # a light whose TRIMSEC cannot be applied: refused, and OUT as it was
    set_header(light, 0, TRIMSEC="[0:99999,1:10]")
    before = snapshot(tmp_path)
    outcome = cli(capsys, "calibrate", raw, "--out", out, "--lights")
    assert outcome.code == 2 and "light.fits" in outcome.errors[0], outcome.err
    assert snapshot(tmp_path) == before
    # the raw directory itself as OUT
    _refused(cli(capsys, "calibrate", raw, "--out", raw), "holds the calibration's input")
    assert snapshot(tmp_path) == before
    # a run's directory as OUT (the re-check's N3: it was replaced by three masters)
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    before = snapshot(tmp_path)
    _refused(cli(capsys, "calibrate", raw, "--out", run), "holds manifest.json, not a product of ssodetect calibrate")
    assert snapshot(tmp_path) == before
    # an OUT of the previous version's calibrate --lights (a record of its own in calibrated/) is replaced
    from ssodetect.io.outputs import OutputStage

    set_header(light, 0, TRIMSEC=f"[1:{NX},1:{NY}]")
    old = tmp_path / "old"
    with OutputStage(old) as stage:
        (stage.path / "master_bias.fits").write_bytes((out / "master_bias.fits").read_bytes())
    with OutputStage(old / "calibrated") as stage:
        (stage.path / "light.fits").write_bytes(b"x")
    assert cli(capsys, "calibrate", raw, "--out", old, "--lights").code == 0
    assert (old / "master_flat.fits").is_file() and (old / "calibrated" / "light.fits").stat().st_size > 2880
    # a run kept (by ssodetect, signed) in OUT/calibrated is no calibration's: refused, nothing touched (the second
    # re-check: it was adopted and deleted)
    held = tmp_path / "held"
    with OutputStage(held) as stage:
        (stage.path / "master_bias.fits").write_bytes((out / "master_bias.fits").read_bytes())
    with OutputStage(held / "calibrated") as stage:
        (stage.path / "manifest.json").write_text("{}")
        (stage.path / "light.fits").write_bytes(b"x")
    before = snapshot(tmp_path)
    outcome = cli(capsys, "calibrate", raw, "--out", held, "--lights")
    assert outcome.code == 2 and "calibrated/" in outcome.errors[0], outcome.err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("key", ["EXPTIME", "MJD-OBS"])
def test_a_logical_time_card_is_not_read_as_one(scene, tmp_path, capsys, key):
    """D6: EXPTIME = T was read as 1 s (the mover lost, mid-times 282 s off) and MJD-OBS = T as MJD 1 (1858), with no
    word of it."""
    src = copy_inputs(scene, tmp_path / "in")
    for path in sorted(src.glob("exp_*.fits")):
        set_header(path, 0, **{key: True})
        if key == "MJD-OBS":
            for k in ("DATE-OBS", "DATE-BEG", "MJD-BEG", "MJD-MID"):
                with fits.open(path, mode="update") as hdul:
                    hdul[0].header.remove(k, ignore_missing=True)
    before = snapshot(tmp_path)
    outcome = cli(capsys, "run", src, "--out", tmp_path / "out")
    _refused(outcome, "exp_00.fits", "T is not")
    assert snapshot(tmp_path) == before


def test_a_dark_with_a_logical_exposure_time_is_refused(tmp_path, capsys):
    """D6: dark frames with EXPTIME = T were scaled per second as if exposed 1 s."""
    rng = np.random.default_rng(7)
    raw = tmp_path / "raw"
    _raw_set(raw, rng)
    for i in range(2):
        _raw(raw / f"d{i}.fits", "Dark Frame", 60.0, 30.0, rng)
        set_header(raw / f"d{i}.fits", 0, EXPTIME=True)
    before = snapshot(tmp_path)
    _refused(cli(capsys, "calibrate", raw, "--out", tmp_path / "cal"), "d0.fits", "EXPTIME = T is not a number")
    assert snapshot(tmp_path) == before


def test_exposure_times_that_disagree_are_said(scene, tmp_path, caplog):
    """D8: primary EXPTIME = 566 and the SCI extension's EXPTIME = 30 (or two EXPTIME cards in one header): one was used
    without a word, the mover lost and mid-times 268 s off."""
    from ssodetect.config import IOConfig
    from ssodetect.io import scan_inputs

    src = copy_inputs(scene, tmp_path / "in")
    path = src / "exp_00.fits"
    set_header(path, 1, EXPTIME=30.0)
    with caplog.at_level(logging.WARNING, logger="ssodetect"):
        refs = scan_inputs([path], IOConfig())
    said = [r.getMessage() for r in caplog.records if "exposure times disagree" in r.getMessage()]
    assert said and str(path) in said[0] and "30 s (extension)" in said[0] and "566 s (primary header)" in said[0]
    assert refs[0].exptime == 30.0  # the image's own header, as before; now said
    # two cards in one header
    other = src / "exp_01.fits"
    with fits.open(other, mode="update") as hdul:
        hdul[0].header.append(("EXPTIME", 1.0), useblanks=False, bottom=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ssodetect"):
        scan_inputs([other], IOConfig())
    assert any("exposure times disagree" in r.getMessage() and "EXPTIME = 1 s" in r.getMessage()
               for r in caplog.records)
    # agreeing cards say nothing
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ssodetect"):
        scan_inputs([src / "exp_02.fits"], IOConfig())
    assert not any("disagree" in r.getMessage() for r in caplog.records)


def test_a_lower_case_ctype_is_read(tmp_path):
    """D9: CTYPE1 = 'ra---tan' dropped the header WCS (INFO "without WCS"), and the warning asked for a WCS the frames
    had."""
    from ssodetect.io.headers import celestial_wcs

    header = fits.Header({"CTYPE1": "ra---tan", "CTYPE2": "dec--tan", "CRVAL1": 150.0, "CRVAL2": 2.0,
                          "CRPIX1": 32.0, "CRPIX2": 24.0, "CD1_1": -2.8e-5, "CD1_2": 0.0, "CD2_1": 0.0,
                          "CD2_2": 2.8e-5})
    wcs, problem = celestial_wcs(header, shape=(NY, NX))
    assert problem == "" and wcs is not None
    ra, dec = wcs.all_pix2world([31.0], [23.0], 0)
    assert float(ra[0]) == pytest.approx(150.0) and float(dec[0]) == pytest.approx(2.0)


@pytest.mark.parametrize("extra", [b"\0" * 28800, b"\x8f\x13" * 50000])
def test_bytes_after_the_last_hdu_are_counted_in_the_message(scene, tmp_path, capsys, extra):
    """D10: ten zero blocks gave "damaged FITS file (Unexpected extra padding ...)" and 100 kB of random bytes "non-ASCII
    characters are present in the FITS file header", although the headers were fine."""
    src = copy_inputs(scene, tmp_path / "in")
    with open(src / "exp_02.fits", "ab") as handle:
        handle.write(extra)
    before = snapshot(tmp_path)
    _refused(cli(capsys, "run", src, "--out", tmp_path / "out"), "exp_02.fits",
             f"{len(extra)} bytes after its last HDU")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("make, said", [
    (lambda data: __import__("bz2").compress(data, 1), "bzip2-compressed; rename it .bz2"),
    (lambda data: __import__("gzip").compress(__import__("bz2").compress(data, 1), 1), "compressed twice"),
    (lambda data: __import__("gzip").compress(data + b"\0" * 5000, 1), "5000 bytes after its last HDU"),
])
def test_compressed_frames_are_named_for_what_they_hold(scene, tmp_path, capsys, make, said):
    """D13: a bzip2 stream in a .gz file was "not a readable FITS file (empty or truncated)"; the re-check's S3 (gzip of
    a bzip2 stream: the same) and S4 (zero bytes after the last HDU inside the gzip stream: "Unexpected extra
    padding")."""
    src = copy_inputs(scene, tmp_path / "in")
    path = src / "exp_03.fits"
    (src / "exp_03.fits.gz").write_bytes(make(path.read_bytes()))
    path.unlink()
    before = snapshot(tmp_path)
    _refused(cli(capsys, "run", src, "--out", tmp_path / "out"), "exp_03.fits.gz", said)
    assert snapshot(tmp_path) == before


def test_a_negative_simulation_seed_is_refused(tmp_path, capsys):
    """D1: --seed -5 was an internal error (exit 3)."""
    _refused(cli(capsys, "simulate", tmp_path / "s", "--nccd", "1", "--size", "256", "--seed", "-5"), "seed")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("refcat, outdir, said", [(5, "out", "refcat: 5 is no path"),
                                                   (None, 7, "outdir: 7 is no path")])
def test_api_paths_of_the_wrong_type_are_refused(scene, tmp_path, refcat, outdir, said):
    """D11: refcat=5 was opened as file descriptor 5 ("Bad file descriptor"; any file open there would be read); the
    re-check's S5: the same in run_astrometry."""
    from ssodetect.errors import ConfigError
    from ssodetect.pipeline import run_astrometry, run_pipeline

    out = tmp_path / outdir if isinstance(outdir, str) else outdir
    with pytest.raises(ConfigError, match=said):
        run_pipeline([scene], out, None, refcat=refcat)
    with pytest.raises(ConfigError, match=said):
        run_astrometry([scene], out, refcat if refcat is not None else scene / "refcat.ecsv")
    assert not (tmp_path / "out").exists()


def test_scores_are_never_written_over_the_runs_own_tables(good_run, tmp_path, capsys):
    """D2: ``ml predict RUN --out RUN/objects.ecsv`` replaced the run's objects table with the scores (exit 0), and
    ``report`` then failed with a KeyError."""
    run = copy_run(good_run.out, tmp_path / "run")
    before = snapshot(tmp_path)
    _refused(cli(capsys, "ml", "predict", run, "--out", run / "objects.ecsv"), "objects.ecsv",
             "a product of the run")
    assert snapshot(tmp_path) == before
    # nor over its record or its log (the re-check's S1, S2), nor into its subfolders (the second re-check)
    for name, said in ((".ssodetect-products.json", "a hidden name"), ("run.log", "a product of the run"),
                       ("steps/x.pkl", "inside a run"), ("logs/x.log", "inside a run")):
        _refused(cli(capsys, "ml", "predict", run, "--out", run / name), name, said)
    assert snapshot(tmp_path) == before
    # campaign 23 (D4): nor a scores file of its own beside the run's products (the next run there removed it);
    # beside the run's directory, written again by a second call
    _refused(cli(capsys, "ml", "predict", run, "--out", run / "scores.ecsv"), "scores.ecsv", "inside a run")
    for _ in range(2):
        outcome = cli(capsys, "ml", "predict", run, "--out", tmp_path / "scores.ecsv")
        assert outcome.code == 0, outcome.err
    assert (tmp_path / "scores.ecsv").is_file() and not (run / "scores.ecsv").exists()
    assert (run / "objects.ecsv").read_bytes() == (good_run.out / "objects.ecsv").read_bytes()


def test_a_run_with_relative_inputs_names_them_when_they_are_not_found(tmp_path, capsys):
    """D12: a run made with relative paths, scored from another directory: "error: s512: no such file or directory"
    (not saying it was the run's recorded input).  Runs now record their inputs' absolute paths."""
    from ssodetect.errors import InputError
    from ssodetect.pipeline.ml import score_run
    from ssodetect.config import Config

    run = tmp_path / "run"
    run.mkdir()
    (run / "provenance.json").write_text(json.dumps({"inputs": ["s512"]}))
    for name in ("objects.ecsv", "observations.ecsv"):
        (run / name).write_text("# %ECSV 1.0\n# ---\n# datatype:\n# - {name: object, datatype: string}\nobject\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(InputError, match="the run's input s512 .*relative to the directory the run was started in"):
            score_run(run, Config())
    finally:
        os.chdir(cwd)


def test_report_with_another_config_records_the_settings_it_used(good_run, tmp_path, capsys):
    """D7: ``report RUN --config c.toml`` with another station wrote C51 into the ADES and MPC files, while config.toml,
    the manifest and the page's configuration still said XXX."""
    run = copy_run(good_run.out, tmp_path / "run")
    config = tmp_path / "c.toml"
    config.write_text('[report]\nstation = "C51"\n')
    outcome = cli(capsys, "report", run, "--config", config)
    assert outcome.code in (0, 1), outcome.err
    assert 'station = "C51"' in (run / "config.toml").read_text()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["report"]["station"] == "C51"
    assert manifest["config"]["detect"] == json.loads((good_run.out / "manifest.json").read_text())["config"]["detect"]
    assert "C51" in (run / "report.html").read_text()
    # the record still verifies: report reads the run again
    assert cli(capsys, "report", run).code in (0, 1)


def test_frames_named_in_upper_case_are_found_and_subfolders_said(scene, tmp_path, caplog):
    """Campaign 11's "debatable" items: ``.FITS`` in upper case was not found in a directory, and frames in a
    subfolder were skipped without a word."""
    from ssodetect.io import find_inputs

    src = copy_inputs(scene, tmp_path / "in")
    (src / "exp_00.fits").rename(src / "EXP_00.FITS")
    sub = src / "night2"
    sub.mkdir()
    (src / "exp_03.fits").rename(sub / "exp_03.fits")
    (src / ".hidden.fits").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="ssodetect"):
        found = find_inputs([src])
    assert [p.name for p in found] == ["EXP_00.FITS", "exp_01.fits", "exp_02.fits"]
    assert any("1 subfolder(s) with FITS files not searched (night2)" in r.getMessage() for r in caplog.records)
