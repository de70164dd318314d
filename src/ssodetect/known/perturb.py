"""Osculating elements moved to a new epoch through the planets' pull (numerical integration, offline).

Two-body motion from elements years away from the observations misses the planetary perturbations: a
main-belt orbit from elements 4 years old lands 8'-45' from where the asteroid is (measured on the NEOWISE
frames in ``../shared/data/real``).  :func:`advance_orbits` integrates every orbit's heliocentric motion from
its epoch to the new one with the Sun and the eight planets (positions from astropy's built-in ephemeris,
masses from the IAU values; the Earth and Moon as one body), then writes its osculating elements at that
epoch, which two-body motion (:mod:`ssodetect.known.propagate`) then carries over the nights near it.

Vectorised over orbits: one integration (scipy's DOP853, relative tolerance 1e-10) of all their states at
once.  Positions in the ICRS [au], times MJD TDB, elements referred to the J2000 ecliptic as read.
"""
from __future__ import annotations

import logging

import numpy as np
from astropy import units as u
from astropy.coordinates import get_body_barycentric
from astropy.table import Table
from astropy.time import Time
from scipy.integrate import solve_ivp
from scipy.interpolate import CubicSpline

from ssodetect.known.orbits import GAUSS_K
from ssodetect.known.propagate import ECLIPTIC_TO_ICRS, heliocentric_states

log = logging.getLogger(__name__)

__all__ = ["advance_orbits", "state_to_elements", "PLANET_MASS_RATIOS", "planet_positions"]

#: Sun-to-planet mass ratios (IAU 2009/2012; the Earth with the Moon).
PLANET_MASS_RATIOS = {"mercury": 6023597.4, "venus": 408523.72, "earth-moon-barycenter": 328900.56,
                      "mars": 3098703.6, "jupiter": 1047.348644, "saturn": 3497.9018, "uranus": 22902.98,
                      "neptune": 19412.26}
_K2 = GAUSS_K**2
#: Step of the tabulated planet positions [d] (interpolated with cubic splines in between).
PLANET_STEP = 2.0


def planet_positions(t0: float, t1: float, step: float = PLANET_STEP):
    """Cubic splines of the planets' heliocentric ICRS positions [au] over MJD TDB ``t0 .. t1``.

    Returns ``(splines, gm)``: one spline per planet giving (3,) positions at a time, and their GM [au^3/d^2]."""
    lo, hi = min(t0, t1) - 2 * step, max(t0, t1) + 2 * step
    grid = np.arange(lo, hi + step, step)
    times = Time(grid, format="mjd", scale="tdb")
    sun = get_body_barycentric("sun", times, ephemeris="builtin").xyz.to_value(u.au)
    splines, gm = [], []
    for name, ratio in PLANET_MASS_RATIOS.items():
        body = "earth" if name == "earth-moon-barycenter" else name
        pos = get_body_barycentric(body, times, ephemeris="builtin").xyz.to_value(u.au) - sun
        splines.append(CubicSpline(grid, pos.T, axis=0))
        gm.append(_K2 / ratio)
    return splines, np.array(gm)


def state_to_elements(state: np.ndarray, mjd_tdb: float) -> dict:
    """Osculating elements (J2000 ecliptic) of heliocentric ICRS states at ``mjd_tdb``.

    Parameters
    ----------
    state : ndarray (n, 6)
        Position [au] and velocity [au/d].

    Returns
    -------
    dict of ndarray (n,)
        ``q`` [au], ``e``, ``i``, ``node``, ``peri``, ``M`` [deg] (NaN for e >= 1) and ``tp`` [MJD TDB].
    """
    r = state[:, :3] @ ECLIPTIC_TO_ICRS  # ICRS -> ecliptic (the rotation's transpose)
    v = state[:, 3:] @ ECLIPTIC_TO_ICRS
    mu = _K2
    rn = np.linalg.norm(r, axis=1)
    hvec = np.cross(r, v)
    hn = np.linalg.norm(hvec, axis=1)
    evec = np.cross(v, hvec) / mu - r / rn[:, None]
    e = np.linalg.norm(evec, axis=1)
    inc = np.degrees(np.arccos(np.clip(hvec[:, 2] / hn, -1, 1)))
    nvec = np.column_stack([-hvec[:, 1], hvec[:, 0], np.zeros(len(r))])
    nn = np.linalg.norm(nvec, axis=1)
    node = np.where(nn > 1e-12, np.degrees(np.arctan2(nvec[:, 1], nvec[:, 0])) % 360.0, 0.0)
    # argument of perihelion: angle from the node to the perihelion in the orbital plane
    ref = np.where((nn > 1e-12)[:, None], nvec / np.maximum(nn, 1e-300)[:, None], np.array([1.0, 0.0, 0.0]))
    cosw = np.einsum("ij,ij->i", ref, evec) / np.maximum(e, 1e-300)
    sinw = np.einsum("ij,ij->i", np.cross(ref, evec), hvec / hn[:, None]) / np.maximum(e, 1e-300)
    peri = np.degrees(np.arctan2(sinw, cosw)) % 360.0
    cosnu = np.einsum("ij,ij->i", evec, r) / np.maximum(e * rn, 1e-300)
    sinnu = np.einsum("ij,ij->i", np.cross(evec, r), hvec / hn[:, None]) / np.maximum(e * rn, 1e-300)
    nu = np.arctan2(sinnu, cosnu)
    p = hn**2 / mu
    q = p / (1.0 + e)
    M = np.full(len(r), np.nan)
    tp = np.full(len(r), np.nan)
    ell = e < 1.0
    if ell.any():
        E = 2.0 * np.arctan2(np.sqrt(1 - e[ell]) * np.sin(nu[ell] / 2), np.sqrt(1 + e[ell]) * np.cos(nu[ell] / 2))
        Mell = E - e[ell] * np.sin(E)
        a = q[ell] / (1.0 - e[ell])
        n = GAUSS_K / a**1.5
        M[ell] = np.degrees(Mell) % 360.0
        tp[ell] = mjd_tdb - Mell / n
    hyp = ~ell
    if hyp.any():
        F = 2.0 * np.arctanh(np.sqrt((e[hyp] - 1) / (e[hyp] + 1)) * np.tan(nu[hyp] / 2))
        Mh = e[hyp] * np.sinh(F) - F
        a = q[hyp] / (e[hyp] - 1.0)
        tp[hyp] = mjd_tdb - Mh / (GAUSS_K / a**1.5)
    return {"q": q, "e": e, "i": inc, "node": node, "peri": peri, "M": M, "tp": tp}


def _velocity_states(orbits: Table, mjd_tdb: np.ndarray) -> np.ndarray:
    """Two-body heliocentric ICRS position and velocity [au, au/d] of every orbit at its own time, (n, 6)."""
    h = 1e-3
    pos = heliocentric_states(orbits, mjd_tdb)
    vel = (heliocentric_states(orbits, mjd_tdb + h) - heliocentric_states(orbits, mjd_tdb - h)) / (2 * h)
    return np.hstack([pos, vel])


def _rhs(splines, gm):
    def rhs(t, y):
        s = y.reshape(-1, 6)
        r = s[:, :3]
        acc = -_K2 * r / np.linalg.norm(r, axis=1)[:, None] ** 3
        for spline, g in zip(splines, gm):
            p = spline(t)
            d = p[None, :] - r
            acc += g * (d / np.linalg.norm(d, axis=1)[:, None] ** 3 - p / np.linalg.norm(p) ** 3)
        return np.hstack([s[:, 3:], acc]).ravel()

    return rhs


def advance_orbits(orbits: Table, mjd_tdb: float, *, min_days: float = 30.0, grid_days: float = 10.0,
                   rtol: float = 1e-10) -> tuple[Table, int]:
    """The orbits with osculating elements at ``mjd_tdb`` [MJD TDB], integrated through the planets' pull.

    Orbits whose epoch is within ``min_days`` of ``mjd_tdb`` are kept as they are (two-body motion is good to
    about an arcsecond over weeks).  The others start from their two-body state at the nearest point of a
    ``grid_days`` grid (a few days of two-body motion: sub-arcsecond) and are integrated together: the states
    of the orbits whose epochs lie farthest from ``mjd_tdb`` first, the others joining as the integration
    passes their epochs, forwards for earlier epochs and backwards for later ones.  Returns the new table
    (same rows and order) and the number of orbits moved.
    """
    epoch = np.asarray(orbits["epoch"], float)
    finite = np.isfinite(epoch) & np.all([np.isfinite(np.asarray(orbits[c], float)) for c in ("q", "e", "tp")],
                                         axis=0)
    far = finite & (np.abs(epoch - mjd_tdb) > min_days)
    out = orbits.copy()
    if not far.any():
        return out, 0
    rows = np.nonzero(far)[0]
    start = np.round((epoch[rows] - mjd_tdb) / grid_days) * grid_days + mjd_tdb
    states = _velocity_states(orbits[rows], start)
    splines, gm = planet_positions(float(min(start.min(), mjd_tdb)), float(max(start.max(), mjd_tdb)))
    rhs = _rhs(splines, gm)
    result = np.full_like(states, np.nan)
    for side in (start < mjd_tdb, start > mjd_tdb):
        idx = np.nonzero(side)[0]
        if not idx.size:
            continue
        order = np.argsort(-np.abs(start[idx] - mjd_tdb), kind="stable")
        idx = idx[order]
        joined: list[int] = []
        y, t = np.zeros(0), None
        for t_join in dict.fromkeys(start[idx].tolist()):
            if t is not None and t_join != t and y.size:
                sol = solve_ivp(rhs, (t, t_join), y, method="DOP853", rtol=rtol, atol=1e-13)
                if not sol.success:
                    log.warning("orbit integration from MJD %.1f to %.1f failed (%s): those orbits kept as they are",
                                t, t_join, sol.message)
                    y, joined = np.zeros(0), []
                else:
                    y = sol.y[:, -1]
            new = idx[start[idx] == t_join]
            joined.extend(new.tolist())
            y = np.concatenate([y, states[new].ravel()])
            t = t_join
        if y.size:
            sol = solve_ivp(rhs, (t, mjd_tdb), y, method="DOP853", rtol=rtol, atol=1e-13)
            if sol.success:
                result[joined] = sol.y[:, -1].reshape(-1, 6)
            else:
                log.warning("orbit integration to MJD %.1f failed (%s): %d orbits kept as they are", mjd_tdb,
                            sol.message, len(joined))
    ok = np.all(np.isfinite(result), axis=1)
    elements = state_to_elements(result[ok], mjd_tdb)
    target = rows[ok]
    for name, values in elements.items():
        out[name][target] = values
    out["epoch"][target] = mjd_tdb
    return out, int(ok.sum())
