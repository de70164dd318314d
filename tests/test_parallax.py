"""Slow movers seen from an observer in orbit: the observer's parallax in the motion (link.parallax)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.table import Table

from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.link.parallax import extend_tracklets, fit_parallax_motion, parallax_factors
from ssodetect.link.tracklets import fit_linear_motion, Tracklet

AU_KM = 1.495978707e8
RA0, DEC0 = 182.5, 33.9


def _leo_sequence(delta_au=1.2, rate=(40.0, -45.0)):
    """43 exposures in three blocks over 111 min (NEOSSat's comet sequence), an observer in a 100 min orbit of
    7150 km radius, and a mover at ``delta_au``: its true tangent-plane positions [arcsec] and the times [h]."""
    minutes = np.concatenate([np.arange(8) * 1.58, 55.4 + np.arange(17) * 1.58, 82.3 + np.arange(18) * 1.58])
    t = minutes / 60.0
    phase = 2.0 * math.pi * minutes / 100.0
    inclination = math.radians(98.6)  # sun-synchronous
    observer = 7150.0 * np.column_stack([np.cos(phase), np.sin(phase) * math.cos(inclination),
                                         np.sin(phase) * math.sin(inclination)])
    factors = parallax_factors(observer, RA0, DEC0)
    w = 206265.0 / (delta_au * AU_KM)
    xi = 10.0 + rate[0] * t + w * factors[:, 0]
    eta = -5.0 + rate[1] * t + w * factors[:, 1]
    return t, xi, eta, observer, factors, w


def test_a_comet_seen_from_orbit_lies_on_its_motion_with_the_parallax_not_on_a_line():
    """The NEOSSat sequence's geometry: a straight line through an object's positions over two hours misses them by
    arcseconds (the observer's 7150 km at 1.2 AU is 8"); the five-parameter fit with the parallax recovers the
    distance and leaves only the measurement noise."""
    t, xi, eta, _, factors, w = _leo_sequence()
    rng = np.random.default_rng(1)
    sigma = np.full(t.size, 0.5)
    xi_m, eta_m = xi + rng.normal(0, 0.5, t.size), eta + rng.normal(0, 0.5, t.size)
    p, _, chi2_line, t_ref = fit_linear_motion(t, xi_m, eta_m, sigma)
    line = np.hypot(xi_m - p[0] - p[2] * (t - t_ref), eta_m - p[1] - p[3] * (t - t_ref))
    params, resid, chi2 = fit_parallax_motion(t, xi_m, eta_m, sigma, factors)
    assert np.max(line) > 4.0 and chi2_line / (2 * t.size - 4) > 10.0
    assert np.median(resid) < 0.8 and chi2 / (2 * t.size - 5) < 1.5
    assert params[4] == pytest.approx(w, rel=0.1)
    assert math.hypot(params[2], params[3]) == pytest.approx(math.hypot(40.0, -45.0), rel=0.02)


def test_a_tracklet_of_one_block_is_extended_into_the_others_and_nothing_else_joins():
    """A tracklet of 12 detections in the second block is extended into the first and the third block by its
    motion with the parallax (43 exposures: the object's own detections join, whatever their kind, among 60 noise
    detections per exposure); a straight extrapolation would have missed the first block by arcseconds."""
    t, xi, eta, observer, _, _ = _leo_sequence()
    rng = np.random.default_rng(2)
    n_noise = 60
    rows = []
    for e in range(t.size):
        rows.append((e, t[e], xi[e] + rng.normal(0, 0.3), eta[e] + rng.normal(0, 0.3), 0.6, "trail" if e % 3 else "point"))
        for _ in range(n_noise):
            rows.append((e, t[e], rng.uniform(-1500, 1500), rng.uniform(-1000, 1000), 0.6, "point"))
    pool = Table(rows=rows, names=["exposure", "t_hours", "xi", "eta", "sigma", "kind"])
    pool["ccd"] = "c"
    pool["x"] = np.arange(len(pool), dtype=float)
    pool["y"] = 0.0
    own = [k for k in range(len(pool)) if pool["x"][k] % (n_noise + 1) == 0 and 10 <= pool["exposure"][k] < 22]
    slow = pool[own]
    p, cov, chi2, t_ref = fit_linear_motion(np.asarray(slow["t_hours"]), np.asarray(slow["xi"]),
                                            np.asarray(slow["eta"]), np.asarray(slow["sigma"]))
    trk = Tracklet(tuple(range(len(slow))), p[0], p[1], p[2], p[3], cov, chi2, 2 * len(slow) - 4, t_ref)
    first = float(np.hypot(p[0] + p[2] * (t[0] - t_ref) - xi[0], p[1] + p[3] * (t[0] - t_ref) - eta[0]))
    assert first > 3.0  # the straight line misses the first block
    plane = TangentPlane(RA0, DEC0)
    observers = {e: tuple(observer[e]) for e in range(t.size)}
    out, grown, stats = extend_tracklets([trk], slow, pool, observers, plane)
    members = out[0].members
    assert stats["n_extended"] == 1 and stats["n_joined"] == t.size - len(slow), stats
    assert sorted(int(grown["exposure"][k]) for k in members) == list(range(t.size))
    assert all(grown["x"][k] % (n_noise + 1) == 0 for k in members)  # the object's own detections only
    assert 0.9 * 1.2 * 1.496e8 < stats["distances_km"][0] < 1.1 * 1.2 * 1.496e8
    # without observer positions nothing is extended
    same, kept, none = extend_tracklets([trk], slow, pool, {}, plane)
    assert same == [trk] and len(kept) == len(slow) and none["n_joined"] == 0


def test_observer_positions_that_give_no_parallax_extend_nothing():
    """Fault campaign 23 (D1): positions that do not move (a fixed position, as the simulator writes) or jump
    between frames (km, m and AU mixed) made the parallax term a constant offset or nonsense, the prediction's
    error unbounded, and the nearest candidate anywhere in an exposure joined: false positions 4-7" from any
    asteroid in the ADES file.  Such a run extends nothing and says why."""
    from ssodetect.link.parallax import observer_path_problem

    t, xi, eta, observer, _, _ = _leo_sequence()
    times = {e: float(t[e]) for e in range(t.size)}
    fixed = {e: (7000.0, 0.0, 0.0) for e in range(t.size)}
    assert "a fixed position: no parallax to fit" in observer_path_problem(times, fixed)
    mixed = {e: tuple(observer[e] * (1000.0 if e % 2 else 1.0)) for e in range(t.size)}
    assert "not a spacecraft's path; positions in another unit than km?" in observer_path_problem(times, mixed)
    assert observer_path_problem(times, {e: tuple(observer[e]) for e in range(t.size)}) is None
    pool = Table({"exposure": np.arange(t.size), "t_hours": t, "xi": xi, "eta": eta, "sigma": np.full(t.size, 0.5),
                  "ccd": ["c"] * t.size, "x": np.arange(t.size, dtype=float), "y": np.zeros(t.size)})
    slow = pool[10:22]
    p, cov, chi2, t_ref = fit_linear_motion(np.asarray(slow["t_hours"]), np.asarray(slow["xi"]),
                                            np.asarray(slow["eta"]), np.asarray(slow["sigma"]))
    trk = Tracklet(tuple(range(len(slow))), p[0], p[1], p[2], p[3], cov, chi2, 2 * len(slow) - 4, t_ref)
    for observers in (fixed, mixed):
        out, kept, stats = extend_tracklets([trk], slow, pool, observers, TangentPlane(RA0, DEC0))
        assert out == [trk] and len(kept) == len(slow) and stats["n_joined"] == 0 and stats["skipped"]
