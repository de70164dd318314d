"""Fault campaign 26 (about 250 cases on commit fa924d9): the defects found, fixed and tested here."""
from __future__ import annotations

import logging
import math
import os

import numpy as np
import pytest

from faultkit import cli, copy_run, snapshot
from ssodetect.config import AstrometryConfig
from ssodetect.errors import ConfigError
from ssodetect.io import find_inputs
from ssodetect.link.pixels import filter_response, response_stars, trail_overlap
from ssodetect.link.tracklets import fit_linear_motion, fit_linear_motion_along, trails_agree
from ssodetect.pipeline.batch import check_field_name
from ssodetect.profiles import load_profile, named_profile


def test_a_watchers_or_consoles_root_inside_another_commands_directory_is_refused(good_run, scene, tmp_path, capsys):
    """D1: ``watch --root RUN`` wrote its registry and job logs into the run, which could then not be rerun; each
    visit failed with exit 1.  A root that holds (or lies in) another command's products is refused up front."""
    run = copy_run(good_run.out, tmp_path / "R")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for root in (run, run / "logs", scene):
        before = snapshot(root)
        res = cli(capsys, "watch", inbox, "--root", root, "--once", "--settle", "0")
        assert res.code == 2 and len(res.errors) == 1 and str(root) in res.errors[0], res.err
        assert ("holds" in res.errors[0] or "inside" in res.errors[0]) and snapshot(root) == before


def test_a_user_profile_named_like_a_built_in_is_refused(tmp_path, monkeypatch):
    """D2: ``SSODETECT_PROFILE_PATH/euclid_vis.toml`` replaced the built-in in the automatic choice only (the name
    given by ``--profile`` meant the built-in): one name, two profiles.  Such a file is refused, naming it; a folder
    on the path that is missing or no directory is said (D13)."""
    folder = tmp_path / "pp"
    folder.mkdir()
    (folder / "euclid_vis.toml").write_text('[match]\ntelescope = "EUCLID"\n[settings.link]\nmin_rate = 5.0\n')
    monkeypatch.setenv("SSODETECT_PROFILE_PATH", str(folder))
    with pytest.raises(ConfigError, match="named like the built-in profile euclid_vis"):
        named_profile("mine")
    (folder / "euclid_vis.toml").rename(folder / "mine.toml")
    assert named_profile("mine").settings == {"link": {"min_rate": 5.0}}
    assert named_profile("euclid_vis").path.parent != folder


def test_a_missing_profile_folder_is_said(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SSODETECT_PROFILE_PATH", str(tmp_path / "nowhere"))
    with caplog.at_level(logging.WARNING, logger="ssodetect.profiles"):
        with pytest.raises(ConfigError, match="no such profile"):
            named_profile("mine")
    assert any("nowhere is missing; no profiles read" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("text, problem", [
    ("[match]\nmin_pixel_scale = 2.0\nmax_pixel_scale = 0.1\n", "could never match"),
    ("[profile]\nname = \"other\"\n", "unknown key(s) in [profile]: name"),
    ("[match]\ntelescope = [\"EUCLID\", \"\"]\n", "holds an empty word"),
])
def test_profile_gaps_are_one_line_naming_the_file(tmp_path, text, problem):
    """D6: a profile that could never match, unknown keys in ``[profile]``, an empty word among the words."""
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert str(err.value).startswith(f"{path}: ") and problem in str(err.value)


def test_a_directory_given_as_the_profile_is_named_so(tmp_path):
    """D12: ``--profile DIR`` said "no such profile"."""
    with pytest.raises(ConfigError, match="a directory, not a profile TOML file"):
        named_profile(str(tmp_path))


def test_the_fit_along_the_motion_keeps_position_variances_without_a_velocity_and_refuses_nonsense():
    """D3: one time only gave an all-NaN covariance (0 * inf in the rotation), where the plain fit keeps the
    positions' variances; D4: a zero, NaN or infinite direction, or errors of 0, gave all-NaN results."""
    t, x, y = np.zeros(3), np.array([0.0, 1.0, 2.0]), np.zeros(3)
    plain = fit_linear_motion(t, x, y, np.full(3, 0.1))
    along = fit_linear_motion_along(t, x, y, np.full(3, 0.1), np.zeros(3), (1.0, 0.0))
    np.testing.assert_allclose(np.diag(along[1])[:2], np.diag(plain[1])[:2])
    assert np.isinf(along[1][2, 2]) and np.isinf(along[1][3, 3]) and not np.isnan(along[1]).any()
    np.testing.assert_allclose(along[0][:2], plain[0][:2])
    for direction in ((0.0, 0.0), (math.nan, 0.0), (math.inf, 0.0), (1.0, 0.0, 0.0)):
        with pytest.raises(ValueError, match="direction"):
            fit_linear_motion_along(t, x, y, np.full(3, 0.1), np.zeros(3), direction)
    for sigma, extra in ((np.zeros(3), np.zeros(3)), (np.full(3, 0.1), np.full(3, math.inf))):
        with pytest.raises(ValueError, match="errors > 0"):
            fit_linear_motion_along(t, x, y, sigma, extra, (1.0, 0.0))


def test_a_trail_with_an_infinite_error_agrees_with_no_motion():
    """D8: an infinite rate or axis error agreed with every motion (a NaN one with none)."""
    v = np.array([[20.0, 0.0]])
    good = np.array([[20.0, 0.5, 90.0, 1.0]])
    assert trails_agree(v, np.array([0.1]), good)[0]
    for bad in ([20.0, math.inf, 0.0, math.inf], [20.0, 0.5, 90.0, math.inf], [20.0, math.nan, 90.0, 1.0]):
        assert not trails_agree(v, np.array([0.1]), np.array([bad]))[0]


def test_response_helpers_refuse_parameters_out_of_range():
    """D9: ``min_stars = 0`` gave a NaN response, ``max_stars = -1`` dropped a star, a NaN isolation kept crowded
    ones, a sigma of 0 divided by zero."""
    with pytest.raises(ValueError, match="min_stars"):
        filter_response(np.zeros((0, 97)), np.zeros((0, 97)), min_stars=0)
    xy = np.array([0.0, 50.0])
    for kw in ({"max_stars": -1}, {"isolation": math.nan}, {"isolation": -1.0}):
        with pytest.raises(ValueError, match="response_stars"):
            response_stars(xy, xy, np.full(2, 100.0), np.ones(2, bool), **kw)
    with pytest.raises(ValueError, match="sigma"):
        trail_overlap(np.zeros((1, 2)), np.array([1.0, 0.0]), 0.0, 0.0)


def test_a_blind_pointing_radius_below_an_arcsecond_is_refused():
    """D7: ``blind_pointing = [10, 5, 1e-300]`` was accepted."""
    with pytest.raises(ValueError, match="radius 1"):
        AstrometryConfig(blind_pointing=[10.0, 5.0, 1e-300])
    assert AstrometryConfig(blind_pointing=[10.0, 5.0, 1.0 / 3600.0]).blind_pointing[2] > 0


def test_a_hard_link_to_an_input_is_the_same_file(tmp_path, caplog):
    """D10: a hard link to an input was read as a second frame (refused as a duplicate CCD) while a symbolic link was
    read once and said."""
    frame = tmp_path / "a.fits"
    frame.write_bytes(b"x")
    os.link(frame, tmp_path / "hard.fits")
    with caplog.at_level(logging.INFO, logger="ssodetect.io.frames"):
        found = find_inputs([frame, tmp_path / "hard.fits"])
    assert found == [frame.resolve()]
    assert any("1 input path(s) name a file already given" in r.getMessage() for r in caplog.records)


def test_batch_field_names_too_long_or_spaced_are_refused_for_that_reason():
    """D11: a 300-character name was refused for reasons it did not have; a name of one space was accepted."""
    with pytest.raises(Exception, match="300 bytes long"):
        check_field_name("x" * 300, "fields.toml")
    for name in (" ", " a", "a "):
        with pytest.raises(Exception, match="begins or ends with a space"):
            check_field_name(name, "fields.toml")
    assert check_field_name("field 1", "fields.toml") == "field 1"


def test_a_directory_at_the_lock_path_is_named(tmp_path, capsys):
    """D12: a directory where the lock file goes said "cannot write beside it (Is a directory)"."""
    out = tmp_path / "out"
    (tmp_path / ".out.lock").mkdir()
    res = cli(capsys, "simulate", "--size", "128", "--n-exposures", "2", out)
    assert res.code == 2 and len(res.errors) == 1, res.err
    assert "a directory where ssodetect keeps the lock" in res.errors[0] and not out.exists()
