"""The twelfth fault campaign: ``calibrate`` writing through a CCD name outside its output, crashing on two lights of
one name or a CCD without masters, opening pipes, combining a frame twice or an all-NaN bias; ``ml dataset`` deleting
its own input frames; ``ml predict DATASET`` writing over a run's tables or the dataset; bounds on settings that hung
or crashed the run; ADES text settings that made reports invalid; a registry broken by one manifest or written through
a link; region files of two CCDs on one name; a truncated orbit file; an error cut at a newline in a file name.

A refused command exits 2 with one line naming the file or setting and writes nothing.
"""
from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
from astropy.io import fits

from faultkit import cli, copy_inputs, copy_run, snapshot
from ssodetect.config import load_config
from ssodetect.errors import ConfigError
from ssodetect.io.outputs import safe_name
from ssodetect.report.regions import region_file_name


def _refused(outcome, *said):
    assert outcome.code == 2 and len(outcome.err) == 1, outcome.err
    for text in said:
        assert text in outcome.errors[0], outcome.errors[0]


def _frames(folder, ccds, *, seed=0, bias_value=None):
    """Three bias and four light frames, 64x64, one image extension per CCD name (``CCDNAME``)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for kind, n, exptime, hour in (("BIAS", 3, 0.0, 18), ("LIGHT", 4, 60.0, 20)):
        for i in range(n):
            primary = fits.Header()
            primary["IMAGETYP"], primary["EXPTIME"] = kind, exptime
            primary["DATE-OBS"] = f"2024-01-01T{hour}:{10 * i:02d}:00"
            hdus = [fits.PrimaryHDU(header=primary)]
            for name in ccds:
                data = np.round(1000 + rng.normal(0, 5, (64, 64))).astype(np.float32)
                if kind == "BIAS" and bias_value is not None:
                    data[:] = bias_value
                hdus.append(fits.ImageHDU(data, fits.Header([("CCDNAME", name)])))
            fits.HDUList(hdus).writeto(folder / f"{kind.lower()}{i}.fits")
    return folder


def test_a_ccd_name_never_writes_outside_the_output(tmp_path, capsys):
    """A CCD named ``x/../../../escaped`` had its master written three levels above OUT (exit 0)."""
    raw = _frames(tmp_path / "deep" / "er" / "raw", ["x/../../../escaped", "B"])
    out = tmp_path / "deep" / "er" / "cal"
    outcome = cli(capsys, "calibrate", raw, "--out", out)
    assert outcome.code == 0, outcome.err
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["ccd_B", f"ccd_{safe_name('x/../../../escaped')}"] and "/" not in folders[1]
    assert (out / folders[1] / "master_bias.fits").is_file()


def test_two_lights_of_one_name_and_a_ccd_without_masters_are_refused(tmp_path, capsys):
    """Two lights named light0.fits in two folders crashed the commit (exit 3, 'already exists'); a light whose CCD
    has no master crashed with KeyError."""
    one, two = _frames(tmp_path / "n1", ["C"]), _frames(tmp_path / "n2", ["C"], seed=1)
    before = snapshot(tmp_path)
    _refused(cli(capsys, "calibrate", one, two, "--out", tmp_path / "cal", "--lights"), "light0.fits",
             "would be named light0.fits")
    assert snapshot(tmp_path) == before
    mixed = _frames(tmp_path / "m", ["A", "B"], seed=2)
    for path in mixed.glob("bias*.fits"):  # biases of CCD A only
        with fits.open(path) as hdul:
            fits.HDUList([hdul[0].copy(), hdul[1].copy()]).writeto(path, overwrite=True)
    _refused(cli(capsys, "calibrate", mixed, "--out", tmp_path / "cal2", "--lights"), "light0.fits",
             "CCD B has no bias, dark or flat")
    assert not (tmp_path / "cal2").exists()


def test_compressed_lights_keep_a_fits_name(tmp_path, capsys):
    raw = _frames(tmp_path / "raw", ["C"])
    for path in raw.glob("light*.fits"):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert cli(capsys, "calibrate", raw, "--out", tmp_path / "cal", "--lights").code == 0
    assert sorted(p.name for p in (tmp_path / "cal" / "calibrated").iterdir()) == [f"light{i}.fits" for i in range(4)]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_pipe_listed_as_a_calibration_frame_is_refused(tmp_path, capsys):
    """A FIFO in [calibrate] bias blocked calibrate for ever (run refused it)."""
    raw = _frames(tmp_path / "raw", ["C"])
    os.mkfifo(tmp_path / "p.fits")
    config = tmp_path / "c.toml"
    config.write_text(f'[calibrate]\nbias = ["{tmp_path / "p.fits"}"]\n')
    _refused(cli(capsys, "calibrate", raw, "--out", tmp_path / "cal", "--config", config), "p.fits",
             "not a regular file")


def test_an_all_nan_bias_is_refused_and_a_frame_given_twice_is_used_once(tmp_path, capsys, caplog):
    """An all-NaN bias made every calibrated pixel NaN with exit 0; a bias listed in [calibrate] and found among the
    inputs was combined twice ('bias from 4 frames' from 3 files)."""
    nan = _frames(tmp_path / "nan", ["C"], bias_value=np.nan)
    _refused(cli(capsys, "calibrate", nan, "--out", tmp_path / "cal", "--lights"), "bias0.fits",
             "NaN or infinite")
    assert not (tmp_path / "cal").exists()
    # campaigns: a bias with 45 % NaN was combined and cost 45 % of every light it calibrated
    part = _frames(tmp_path / "part", ["C"])
    with fits.open(part / "bias1.fits", mode="update") as hdul:
        hdul[1].data[:29] = np.nan
    _refused(cli(capsys, "calibrate", part, "--out", tmp_path / "cal", "--lights"), "bias1.fits",
             "45.3 % of its pixels NaN or infinite (at most 1 %: [calibrate] max_bad_fraction)")
    assert not (tmp_path / "cal").exists()
    raw = _frames(tmp_path / "raw", ["C"])
    config = tmp_path / "d.toml"
    config.write_text(f'[calibrate]\nbias = ["{raw / "bias0.fits"}"]\n')
    outcome = cli(capsys, "calibrate", raw, "--out", tmp_path / "cal2", "--config", config)
    # (a warning: exit 1 since campaign 31)
    assert outcome.code == 1 and "bias from 3 frames" in " ".join(outcome.out), outcome.out
    assert "given twice as a calibration frame" in caplog.text


def test_ml_dataset_never_writes_over_its_own_scene(scene, tmp_path, capsys):
    """``ml dataset SCENE --out SCENE`` replaced the scene's folder: its frames were deleted (exit 0)."""
    own = copy_inputs(scene, tmp_path / "s")
    before = snapshot(own)
    _refused(cli(capsys, "ml", "dataset", own, "--out", own, "-n", "4"), str(own), "holds the dataset's input")
    assert snapshot(own) == before


def test_ml_dataset_positions_off_the_sky_are_refused(scene, tmp_path, capsys):
    positions = tmp_path / "pos.csv"
    positions.write_text("ra,dec\n150.0,25.0\n1e30,25.0\n")
    _refused(cli(capsys, "ml", "dataset", scene, "--out", tmp_path / "ds", "-n", "4", "--positions", positions),
             "pos.csv", "row 2", "no position on the sky")


def test_ml_predict_on_a_dataset_never_writes_over_a_run_or_the_dataset(good_run, tmp_path, capsys):
    """``ml predict DATASET --out RUN/objects.ecsv`` replaced the run's table, ``--out DATASET/meta.ecsv`` the
    dataset's metadata; ``--threshold nan`` and ``2`` were taken.  (Refused before the model or the dataset is read:
    the paths here need not hold one.)"""
    pytest.importorskip("torch")
    run = copy_run(good_run.out, tmp_path / "run")
    dataset = tmp_path / "ds"
    dataset.mkdir()
    (dataset / "dataset.json").write_text("{}")
    before = snapshot(tmp_path)
    _refused(cli(capsys, "ml", "predict", dataset, "--out", run / "objects.ecsv"), "objects.ecsv", "product of the run")
    _refused(cli(capsys, "ml", "predict", dataset, "--out", dataset / "meta.ecsv"), "meta.ecsv", "inside the dataset")
    for value in ("nan", "2"):
        _refused(cli(capsys, "ml", "predict", dataset, "--threshold", value), "--threshold", "between 0 and 1")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("section, key, value", [
    ("detect", "threshold", "1e-30"), ("detect", "aperture_radius_fwhm", "1e30"), ("detect", "psf_fwhm", "1000"),
    ("report", "astcat", '"Ga|ia"'), ("report", "astcat", '"Gaia3DR3x"'), ("report", "photcat", '"A|B"'),
    ("report", "time_rms", "123456789"), ("report", "time_rms", "0.0001"), ("report", "submitter", '"A|B"'),
    ("report", "submitter", '"   "'), ("report", "submitter", '"' + "x" * 150 + '"'),
    ("report", "telescope_design", '"' + "y" * 30 + '"'), ("report", "observers", '["Ann|Bob"]'),
])
def test_settings_that_crashed_hung_or_made_invalid_reports_are_refused(tmp_path, section, key, value):
    """threshold 1e-30 overflowed sep's deblending and aperture_radius_fwhm 1e30 an int (exit 3); psf_fwhm 1000 (then
    allowed) held a run for minutes beyond reach of SIGTERM; '|' in ADES text split PSV lines, and catalogue names of
    more than 8 characters, rmsTime beyond its 8 characters or written as 0.000, blank or 150-character names made
    observations.xml fail submit.xsd, all with exit 0."""
    config = tmp_path / "c.toml"
    config.write_text(f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        load_config(config)


def test_a_comment_chunk_of_blanks_is_no_ades_line():
    from ssodetect.config import ReportConfig
    from ssodetect.report.ades import ades_context

    context = ades_context(ReportConfig(comment="a" * 100 + " " * 100 + "b"), station="500")
    assert context["comment"] == ["a" * 100, "b"]


def test_one_bad_manifest_does_not_break_the_run_listing(good_run, tmp_path, capsys):
    """``"warnings": "many"`` in one run's manifest made ``runs ROOT`` an internal error listing nothing."""
    root = tmp_path / "root"
    root.mkdir()
    copy_run(good_run.out, root / "good")
    bad = copy_run(good_run.out, root / "bad")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["warnings"] = "many"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    outcome = cli(capsys, "runs", root)
    # (campaign 33: the damaged one is named in a warning, exit 1; it had vanished with an INFO count)
    assert outcome.code == 1 and len(outcome.warnings) == 1 and str(bad / "manifest.json") in outcome.warnings[0]
    assert any("good" in line for line in outcome.out) and not any(line.split()[:1] == ["bad"] for line in outcome.out)


def test_the_registry_is_never_written_through_a_link(good_run, tmp_path, capsys):
    root = tmp_path / "root"
    root.mkdir()
    copy_run(good_run.out, root / "good")
    elsewhere = tmp_path / "elsewhere.sqlite"
    (root / ".ssodetect-registry.sqlite").symlink_to(elsewhere)
    _refused(cli(capsys, "runs", root), ".ssodetect-registry.sqlite", "a link")
    assert not elsewhere.exists()


def test_region_files_of_two_ccds_never_share_a_name():
    """CCDs 'A.1' and 'A_1' (and two long names alike in their first 40 characters) wrote one region file."""
    names = {region_file_name(0, ccd) for ccd in ("A.1", "A_1", "x" * 70 + "a", "x" * 70 + "b", "1-1")}
    assert len(names) == 5 and "e0_1-1.reg" in names and "e0_A_1.reg" in names


def test_a_truncated_gzip_orbit_file_is_one_line(scene, tmp_path, capsys):
    orbits = tmp_path / "t.dat.gz"
    orbits.write_bytes(gzip.compress(b"x" * 5000)[:20])
    _refused(cli(capsys, "run", scene, "--out", tmp_path / "o", "--orbits", orbits), "t.dat.gz",
             "cannot read orbit file")
    assert not (tmp_path / "o").exists()


def test_an_error_about_a_file_with_a_newline_in_its_name_names_the_problem(scene, tmp_path, capsys):
    inputs = copy_inputs(scene, tmp_path / "in")
    (inputs / "bad\nname.fits").write_bytes(b"not a FITS file at all" * 200)
    outcome = cli(capsys, "run", inputs, "--out", tmp_path / "o")
    _refused(outcome, "bad\\nname.fits", "FITS")


# the re-check of the fixes above


def test_names_that_meet_after_being_made_safe_stay_apart(tmp_path, capsys):
    """'A.1' is made 'A_1-<hash>'; a CCD literally named so met it (calibrate: exit 3, 'already exists').  Two
    extensions of one CCD name in one file (every EXTNAME 'SCI') are refused, not combined twice."""
    from ssodetect.io import CCDRef
    from ssodetect.pipeline.ccd import intermediate_name

    hashed = safe_name("A.1")
    assert safe_name(hashed) != hashed and len({safe_name(n) for n in ("A.1", "A_1", hashed)}) == 3
    raw = _frames(tmp_path / "r1", ["A.1", hashed])
    assert cli(capsys, "calibrate", raw, "--out", tmp_path / "o1").code == 0
    assert len(list((tmp_path / "o1").glob("ccd_*/master_bias.fits"))) == 2
    same = _frames(tmp_path / "r2", ["SCI", "SCI"])
    _refused(cli(capsys, "calibrate", same, "--out", tmp_path / "o2", "--lights"), "two extensions of CCD SCI")
    refs = [CCDRef(path="f.fits", sci=1, rms=None, flg=None, ccd=c, mjd=0.0, exptime=1.0, filter="", instrument="",
                   time_source="", exposure=0) for c in ("A/1", "A_1")]
    assert len({intermediate_name(r) for r in refs}) == 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_an_orbit_file_that_is_a_pipe_is_refused_everywhere(tmp_path):
    from ssodetect.errors import InputError
    from ssodetect.known.orbits import read_orbits

    os.mkfifo(tmp_path / "orb.dat")
    with pytest.raises(InputError, match="not a regular file"):
        read_orbits(tmp_path / "orb.dat")


def test_an_empty_position_cell_is_refused(scene, tmp_path, capsys):
    """An empty dec cell was read as 0 (exit 0, the dataset drawn at dec 0)."""
    positions = tmp_path / "m.csv"
    positions.write_text("ra,dec\n150,\n")
    _refused(cli(capsys, "ml", "dataset", scene, "--out", tmp_path / "ds", "-n", "2", "--positions", positions),
             "m.csv", "row 1", "no dec")


@pytest.mark.parametrize("section, key, value", [
    ("report", "observatory_name", '"Obs|X"'), ("report", "observatory_name", '"   "'),
    ("report", "time_rms", "9999.9996"),
])
def test_more_ades_text_and_width_settings_are_refused(tmp_path, section, key, value):
    config = tmp_path / "c.toml"
    config.write_text(f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        load_config(config)


@pytest.mark.parametrize("option, value", [("--rate-max", "inf"), ("--rate-min", "1e300"), ("--fwhm", "1e6")])
def test_dataset_rates_and_fwhm_are_bounded(scene, tmp_path, capsys, option, value):
    _refused(cli(capsys, "ml", "dataset", scene, "--out", tmp_path / "ds", "-n", "2", option, value),
             "invalid dataset settings")


def test_ml_train_and_predict_refuse_what_crashed_them(tmp_path, capsys):
    """A validation fraction out of bounds is refused before anything is read or made (``0.999999`` had left no
    training sequence: ZeroDivisionError, an empty --out left); ``--out .`` crashed on the stage's name."""
    pytest.importorskip("torch")
    from ssodetect.ml.train import train

    with pytest.raises(ConfigError, match="val_fraction"):
        train([], tmp_path / "t", val_fraction=float("nan"))
    dataset = tmp_path / "ds"
    dataset.mkdir()
    (dataset / "dataset.json").write_text("{}")
    _refused(cli(capsys, "ml", "predict", dataset, "--out", "."), "a directory, not a file name")


def test_batch_failure_messages_are_whole_and_one_line(tmp_path):
    """A newline in a file name cut a failed field's message before its problem; long ones were cut at 256."""
    from ssodetect.config import Config
    from ssodetect.errors import InputError
    from ssodetect.pipeline.batch import Field, _field_task, check_field_name

    folder = tmp_path / "in" / ("d" * 150)
    folder.mkdir(parents=True)
    (folder / "bad\nname.fits").write_bytes(b"junk" * 100)
    row = _field_task(Field("f", (str(folder),)), str(tmp_path / "out"), Config())
    assert row["status"] == "failed" and "\n" not in row["message"] and "bad\\nname.fits" in row["message"]
    assert "FITS" in row["message"] and len(row["message"]) > 256
    for name in ("a\u2028b", "a\u2029b"):
        with pytest.raises(InputError):
            check_field_name(name, "b.toml")


def test_positions_on_no_frame_are_refused_and_each_ccd_draws_at_its_own(scene, tmp_path, capsys):
    """Re-check D4: positions on the sky but on no CCD gave blank (fully masked) sequences, exit 0."""
    from astropy.wcs import WCS

    from ssodetect.ml.dataset import positions_on_frames
    from ssodetect.ml.sequences import Frame

    with fits.open(scene / "exp_00.fits") as hdul:
        sci = next(h for h in hdul if h.header.get("EXTNAME", "").endswith("SCI"))
        ny, nx = sci.data.shape
        wcs = WCS(sci.header)
    ra, dec = (float(v) for v in wcs.all_pix2world(nx / 2.0, ny / 2.0, 0))
    positions = tmp_path / "p.csv"
    positions.write_text(f"ra,dec\n{ra!r},{dec!r}\n{ra!r},{dec + 1.0!r}\n")
    _refused(cli(capsys, "ml", "dataset", scene, "--out", tmp_path / "ds", "-n", "2", "--positions", positions),
             "p.csv", "row 2", "lies on no frame", "1 of 2 positions")
    assert not (tmp_path / "ds").exists()
    # the pure test, for two CCDs side by side: a position belongs to the frames that hold it
    frames = []
    for shift in (0.0, float(nx)):
        w = wcs.deepcopy()
        w.wcs.crpix = [w.wcs.crpix[0] - shift, w.wcs.crpix[1]]
        frames.append(Frame(data=np.zeros((ny, nx), np.float32), rms=1.0, wcs=w, mjd=60000.0, exptime=566.0,
                            gain=np.inf, fwhm=1.7, zeropoint=np.nan, name="f"))
    x = np.array([nx / 2.0, 1.5 * nx, 2.5 * nx, -0.6, -0.4])
    r, d = wcs.all_pix2world(x, np.full(x.size, ny / 2.0), 0)
    assert positions_on_frames(frames[:1], r, d).tolist() == [1, 0, 0, 0, 1]
    assert positions_on_frames(frames[1:], r, d).tolist() == [0, 1, 0, 0, 0]
    assert positions_on_frames(frames + frames[:1], r, d).tolist() == [2, 1, 0, 0, 2]
    assert positions_on_frames(frames, [(ra + 180.0) % 360.0], [-dec]).tolist() == [0]  # the far side
    # a corner that fewer than 3 of the 4 exposures hold (campaign 13, D13: 2 of 4 frames blank, exit 0)
    every = []
    for e in range(4):
        with fits.open(scene / f"exp_{e:02d}.fits") as hdul:
            h = next(h for h in hdul if h.header.get("EXTNAME", "").endswith("SCI"))
            every.append(Frame(data=np.zeros(h.data.shape, np.float32), rms=1.0, wcs=WCS(h.header), mjd=60000.0 + e,
                               exptime=566.0, gain=np.inf, fwhm=1.7, zeropoint=np.nan, name="f"))
    px = np.array([[x, y] for x in (0.0, 1.0, nx - 2.0, nx - 1.0) for y in (0.0, 1.0, ny - 2.0, ny - 1.0)])
    cr, cd = wcs.all_pix2world(px[:, 0], px[:, 1], 0)
    count = positions_on_frames(every, cr, cd)
    k = int(np.argmin(count))
    assert count[k] < 3, count  # (the dithers leave some corner on fewer than 3 frames)
    positions.write_text(f"ra,dec\n{ra!r},{dec!r}\n{float(cr[k])!r},{float(cd[k])!r}\n")
    _refused(cli(capsys, "ml", "dataset", scene, "--out", tmp_path / "ds2", "-n", "2", "--positions", positions),
             "p.csv", "row 2", "on fewer than 3 frames of any CCD")
