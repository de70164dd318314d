"""Fault campaign 13 (on this stop's new surfaces: calibration CCD names, compressed orbit files, coarse catalogue
coordinates, the simulator's drift options): each defect found, fixed and tested here (D5-D7, D13 and D14 are in
tests/test_ml.py and tests/faults/test_faults_campaign12.py)."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from ssodetect.config import load_config
from ssodetect.errors import InputError
from ssodetect.io import scan_inputs
from ssodetect.pipeline.run import build_calibration


def _frame(path, kind, value, rng, shape=(40, 48), **keys):
    """A calibration or light frame of ``kind`` (IMAGETYP) near ``value`` ADU, with header ``keys``."""
    header = fits.Header({"IMAGETYP": kind, "EXPTIME": 0.0 if kind == "Bias Frame" else 30.0,
                          "DATE-OBS": "2020-01-01T00:00:00", **keys})
    fits.PrimaryHDU((value + rng.normal(0.0, 2.0, shape)).astype(np.float32), header).writeto(path)
    return path


def _config(tmp_path, text):
    (tmp_path / "c.toml").write_text(text)
    return load_config(tmp_path / "c.toml")


def test_calibration_frames_of_another_shape_are_named(tmp_path):
    """D1/D2: a 20x24 flat beside 40x48 biases failed to broadcast (internal error, exit 3); two masters of
    different shapes were refused without naming a file."""
    rng = np.random.default_rng(1)
    biases = [_frame(tmp_path / f"b{i}.fits", "Bias Frame", 1000.0, rng) for i in range(3)]
    flat = _frame(tmp_path / "f.fits", "Flat Field", 20000.0, rng, shape=(20, 24))
    light = _frame(tmp_path / "l.fits", "Light Frame", 1500.0, rng)
    config = _config(tmp_path, f'[calibrate]\nbias = {[str(b) for b in biases]!r}\nflat = ["{flat}"]\n'.replace("'", '"'))
    with pytest.raises(InputError, match=r"f\.fits: calibration frame of shape \(20, 24\), unlike .*b0\.fits"):
        build_calibration(scan_inputs([light], config.io), config)


def test_unnamed_calibration_frames_are_not_given_to_a_ccd_named_0(tmp_path):
    """D3: lights of CCDs named 0 and 1 (CCDID) and biases naming no CCD: the biases went to CCD 0 in silence (the
    placeholder name of an unnamed frame is "0")."""
    rng = np.random.default_rng(2)
    biases = [_frame(tmp_path / f"b{i}.fits", "Bias Frame", 1000.0, rng) for i in range(3)]
    lights = [_frame(tmp_path / f"l{c}.fits", "Light Frame", 1500.0, rng, CCDID=c) for c in (0, 1)]
    config = _config(tmp_path, "[calibrate]\nbias = [" + ", ".join(f'"{b}"' for b in biases) + "]\n")
    with pytest.raises(InputError, match=r"b0\.fits: this calibration frame names no CCD .* CCDs 0, 1"):
        build_calibration(scan_inputs(lights, config.io), config)
    # lights of the one CCD 0 take them
    refs, masters = build_calibration(scan_inputs(lights[:1], config.io), config)
    assert sorted(masters) == ["0"] and masters["0"].bias is not None


def test_masters_of_ccds_named_by_extname_alone_find_their_lights(tmp_path):
    """D4: with [io] detector_keys = ["EXTNAME"], masters were written with a CCDNAME the reader does not read:
    given back, both read as unnamed and were refused.  They are written in an extension named for their CCD."""
    from ssodetect.cli import main

    rng = np.random.default_rng(3)
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        hdus = [fits.PrimaryHDU(header=fits.Header({"IMAGETYP": "Bias Frame", "EXPTIME": 0.0,
                                                    "DATE-OBS": "2020-01-01T00:00:00"}))]
        for ccd, level in (("CCD1", 1000.0), ("CCD2", 1300.0)):
            hdus.append(fits.ImageHDU((level + rng.normal(0, 2, (40, 48))).astype(np.float32), name=ccd))
        fits.HDUList(hdus).writeto(raw / f"b{i}.fits")
    toml = tmp_path / "m.toml"
    toml.write_text('[io]\ndetector_keys = ["EXTNAME"]\n')
    assert main(["calibrate", str(raw), "--out", str(tmp_path / "cal"), "--config", str(toml), "-q"]) == 0
    files = [tmp_path / "cal" / f"ccd_{c}" / "master_bias.fits" for c in ("CCD1", "CCD2")]
    light = tmp_path / "light.fits"
    fits.HDUList([fits.PrimaryHDU(header=fits.Header({"DATE-OBS": "2020-01-01T00:00:00", "EXPTIME": 30.0}))]
                 + [fits.ImageHDU((1500.0 + rng.normal(0, 2, (40, 48))).astype(np.float32), name=c)
                    for c in ("CCD1", "CCD2")]).writeto(light)
    toml.write_text('[io]\ndetector_keys = ["EXTNAME"]\n[calibrate]\nbias = [' + ", ".join(f'"{f}"' for f in files)
                    + "]\n")
    config = load_config(toml)
    refs, masters = build_calibration(scan_inputs([light], config.io), config)
    assert sorted(masters) == ["CCD1", "CCD2"]
    assert abs(float(np.median(masters["CCD2"].bias)) - float(np.median(masters["CCD1"].bias)) - 300.0) < 2.0


def test_the_simulators_drift_options_are_bounded():
    """D8/D9: an infinite or huge drift, a NaN turn crashed the simulator (exit 3); a turn without a drift was
    ignored in silence."""
    from pydantic import ValidationError

    from ssodetect.simulate import SimulationConfig

    for bad in ({"tracking_drift": float("inf")}, {"tracking_drift": 3600.0},
                {"tracking_drift": 5.0, "tracking_angle_step": float("nan")}, {"tracking_angle_step": 30.0}):
        with pytest.raises(ValidationError):
            SimulationConfig(**bad)
    assert SimulationConfig(tracking_drift=5.0, tracking_angle_step=30.0).tracking_angle_step == 30.0


def test_reference_positions_stored_as_integers_or_in_radians_are_said(tmp_path, caplog):
    """D10: whole-degree columns said nothing; a float32 column in radians was judged as if in degrees."""
    from ssodetect.astrometry.refcat import load_reference_catalogue

    n = 20
    rng = np.random.default_rng(4)
    ints = Table({"ra": np.full(n, 150, np.int64), "dec": np.full(n, 25, np.int32),
                  "phot_g_mean_mag": rng.uniform(15, 20, n)})
    ints.write(tmp_path / "i.ecsv")
    radians = Table({"ra": np.radians(rng.uniform(280, 290, n)).astype(np.float32),
                     "dec": np.radians(rng.uniform(-1, 1, n)).astype(np.float32),
                     "phot_g_mean_mag": rng.uniform(15, 20, n)})
    radians["ra"].unit = radians["dec"].unit = "rad"
    radians.write(tmp_path / "r.fits")
    with caplog.at_level("WARNING"):
        load_reference_catalogue(tmp_path / "i.ecsv")
        load_reference_catalogue(tmp_path / "r.fits")
    said = caplog.text
    assert "i.ecsv: column ra is stored as integers, rounded to up to 3600000 mas" in said
    assert "r.fits: column ra is stored as 32-bit floats, rounded to up to 98 mas" in said


CERES = ("00001    3.4   0.15 K205V 162.68631   73.73161   80.28698   10.58862  0.0775571  0.21406009"
         "   2.7676569  0 MPO492748  6751 115 1801-2019 0.60 M-v 30h Williams   0000      (1) Ceres"
         "              20190915")


def test_orbit_rows_left_out_are_said_and_an_archive_that_expands_without_end_is_refused(tmp_path, caplog,
                                                                                        monkeypatch):
    """D11: rows with unusable elements were dropped in silence; D12: a 4 MB gzip expanding to 4 GB ran out of
    memory (internal error)."""
    import ssodetect.known.orbits as orbits

    broken = CERES[:70] + "xxxxxxxxx" + CERES[79:]
    path = tmp_path / "o.dat.gz"
    path.write_bytes(gzip.compress(("\n".join([CERES, broken, broken]) + "\n").encode()))
    with caplog.at_level("WARNING"):
        table = orbits.read_orbits(path)
    assert len(table) == 1 and "o.dat.gz: 2 of 3 orbits without usable elements" in caplog.text
    monkeypatch.setattr(orbits, "MAX_ORBIT_BYTES", 1000)
    path.write_bytes(gzip.compress(b" " * 5000))
    with pytest.raises(InputError, match="o.dat.gz: orbit file larger than"):
        orbits.read_orbits(path)
