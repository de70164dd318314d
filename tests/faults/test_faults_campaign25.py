"""Fault campaign 25 (about 210 cases on commit c4cd5fb): the defects found, fixed and tested here."""
from __future__ import annotations

import logging
import math
import os

import numpy as np
import pytest
from astropy.table import Table

from faultkit import cli
from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.errors import ConfigError
from ssodetect.io import find_inputs
from ssodetect.link.parallax import MIN_DISTANCE_KM, extend_tracklets, fit_parallax_motion
from ssodetect.link.tracklets import Tracklet, fit_linear_motion
from ssodetect.profiles import load_profile


def test_a_pixel_scale_range_below_any_camera_is_refused_before_the_run(tmp_path, capsys):
    """D1: ``pixel_scale_range = [1e-6, 5.0]`` passed the configuration check and blind solving asked for 72 GiB
    (exit 3, MemoryError); 1e-5 ran with ~10 GB.  The range is bounded to 0.005-3600"/px, refused in one line."""
    for low in ("1e-6", "1e-300", "0.001"):
        config = tmp_path / "c.toml"
        config.write_text(f"[astrometry]\npixel_scale_range = [{low}, 5.0]\n")
        res = cli(capsys, "config", "--file", config)
        assert res.code == 2 and len(res.errors) == 1, res.err
        assert str(config) in res.errors[0] and "pixel_scale_range" in res.errors[0] and "0.005" in res.errors[0]
    config.write_text("[astrometry]\npixel_scale_range = [0.005, 3600.0]\n")
    assert cli(capsys, "config", "--file", config).code == 0


@pytest.mark.parametrize("text, problem", [
    ("[scale]\nmin_detections_fraction = nan\n", "min_detections_fraction must be a number above 0 and at most 1"),
    ("[scale]\nmin_detections_fraction = inf\n", "min_detections_fraction must be"),
    ("[scale]\nmin_detections_fraction = \"x\"\n", "min_detections_fraction must be"),
    ("[scale]\nmin_detections_fraction = -1.0\n", "min_detections_fraction must be"),
    ("[scale]\nlong_sequence = \"x\"\n", "long_sequence must be an integer"),
    ("[scale]\nlong_sequence = -5\n", "long_sequence must be an integer"),
    ("[scale]\nlong_sequence = 3\nfast_min_exposures_long = \"x\"\n", "fast_min_exposures_long must be an integer"),
    ("[scale]\nlong_sequence = 3\nfast_min_exposures_long = inf\n", "fast_min_exposures_long must be an integer"),
    ("[scale]\nmin_detections_range = [99999, 999999]\n", "min_detections_range must be two integers"),
    ("settings = \"x\"\n", "[settings] must be a table"),
    ("profile = [1]\n", "[profile] must be a table"),
    ("[settings]\nlink = 3\n", "[settings] holds link as a value"),
    ("[match]\ntelescope = 5\n", "[match] telescope must be a word or a list of words"),
    ("[match]\ntelescope = [\"\"]\n", "[match] telescope holds an empty word"),
    ("[match]\nmin_pixel_scale = \"x\"\n", "[match] min_pixel_scale must be a positive number"),
    ("[match]\nmin_exposures = 2.5\n", "[match] min_exposures must be an integer"),
    ("[profile]\ndescription = 5\n", "[profile] description must be text"),
    ("[settings.known]\nskybot = true\n", "cannot set known.skybot"),
])
def test_a_profile_value_of_the_wrong_kind_is_one_line_naming_the_file(tmp_path, text, problem):
    """D2: unchecked ``[scale]`` values and top-level kinds stopped the run with an internal error (NaN fraction,
    textual counts, ``settings = "x"``); D6: a profile could turn on the online SkyBoT query for any run its headers
    matched.  Each is refused when the profile is read, naming its file."""
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message, message


def test_a_telescope_given_as_one_word_is_that_word_not_its_letters(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[match]\ntelescope = \"NEOSSAT\"\n[scale]\nmin_detections_fraction = 0.5\nlong_sequence = 6\n")
    assert load_profile(path).match["telescope"] == ["NEOSSAT"]


def _line_of_sight_case(sigma: float = 0.6):
    """The campaign's case: a slow mover seen from an observer moving 9000 km straight along the line of sight (no
    parallax to measure), 43 exposures in three blocks, 60 unrelated candidates per exposure."""
    ra0, dec0 = 182.5, 33.9
    t = np.concatenate([np.arange(8) * 1.58, 55.4 + np.arange(17) * 1.58, 82.3 + np.arange(18) * 1.58]) / 60
    a, d = map(math.radians, (ra0, dec0))
    los = np.array([math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d)])
    observer = (7150 + 5000 * t)[:, None] * los
    xi, eta = 10 + 40 * t, -5 - 45 * t
    rng = np.random.default_rng(2)
    rows = []
    for e in range(t.size):
        rows.append((e, t[e], xi[e] + rng.normal(0, 0.3), eta[e] + rng.normal(0, 0.3), sigma, 100.0))
        rows += [(e, t[e], rng.uniform(-1500, 1500), rng.uniform(-1000, 1000), sigma, 100.0) for _ in range(60)]
    pool = Table(rows=rows, names=["exposure", "t_hours", "xi", "eta", "sigma", "flux"])
    pool["ccd"] = "c"
    pool["x"] = np.arange(len(pool), dtype=float)
    pool["y"] = 0.0
    slow = pool[[k for k in range(len(pool)) if k % 61 == 0 and 10 <= pool["exposure"][k] < 22]]
    return t, observer, pool, slow, TangentPlane(ra0, dec0)


def test_a_parallax_held_at_its_bound_is_no_distance_and_extends_nothing():
    """D3: an observer moving along the line of sight gives no parallax; the fit held the scale at its bound and
    the run reported the bound, 300000 km, as the fitted distance.  Held at the bound, the tracklet is left to the
    straight linker, counted (``n_at_bound``) and no distance is said."""
    t, observer, pool, slow, plane = _line_of_sight_case()
    p, cov, chi2, t_ref = fit_linear_motion(*(np.asarray(slow[c]) for c in ("t_hours", "xi", "eta", "sigma")))
    trk = Tracklet(tuple(range(len(slow))), p[0], p[1], p[2], p[3], cov, chi2, 2 * len(slow) - 4, t_ref)
    out, grown, stats = extend_tracklets([trk], slow, pool, {e: tuple(observer[e]) for e in range(t.size)}, plane,
                                         times_h=dict(enumerate(map(float, t))))
    assert stats["n_fitted"] == 1 and stats["n_at_bound"] == 1 and stats["n_extended"] == 0
    assert stats["distances_km"] == [] and MIN_DISTANCE_KM not in stats["distances_km"]
    assert out == [trk] and len(grown) == len(slow)


def test_a_non_finite_error_is_refused_by_the_fit_and_skipped_by_the_extension():
    """D4: a NaN error stopped the parallax fit with "SVD did not converge"; an error of 0 gave NaN rates."""
    t, observer, pool, slow, plane = _line_of_sight_case(sigma=float("nan"))
    n = len(slow)
    factors = np.zeros((n, 2))
    with pytest.raises(ValueError, match="finite and errors > 0"):
        fit_parallax_motion(np.asarray(slow["t_hours"]), np.asarray(slow["xi"]), np.asarray(slow["eta"]),
                            np.asarray(slow["sigma"]), factors)
    trk = Tracklet(tuple(range(n)), 0.0, 0.0, 0.0, 0.0, np.eye(4), 0.0, 2 * n - 4, 0.0)
    for bad in (float("nan"), 0.0):
        slow["sigma"] = bad
        out, grown, stats = extend_tracklets([trk], slow, pool, {e: tuple(observer[e]) for e in range(t.size)},
                                             plane, times_h=dict(enumerate(map(float, t))))
        assert stats["n_unfittable"] == 1 and stats["n_fitted"] == 0 and out == [trk]


def test_a_file_given_twice_or_under_another_name_is_read_once_and_said(tmp_path, caplog):
    """D8: the same file given twice (or through a link) was read once without a word: 7 paths, "6 files"."""
    frame = tmp_path / "a.fits"
    frame.write_bytes(b"x")
    other = tmp_path / "b.fits"
    other.write_bytes(b"y")
    os.symlink(frame, tmp_path / "link.fits")
    with caplog.at_level(logging.INFO, logger="ssodetect.io.frames"):
        found = find_inputs([frame, other, frame, tmp_path / "link.fits"])
    assert found == [frame.resolve(), other.resolve()]
    said = [r.getMessage() for r in caplog.records if "already given" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("2 input path(s) name a file already given")
    assert f"{tmp_path / 'link.fits'} (as {frame})" in said[0]
