"""Two-body positions of known objects as seen by an observer.

Keplerian motion about the Sun (elliptic, parabolic and hyperbolic; vectorised over objects),
J2000 ecliptic elements rotated to the ICRS equator (obliquity 84381.448"; the ~20 mas frame bias
is ignored), the Earth's heliocentric position from astropy's built-in ephemeris (no download),
plus the observer's geocentric offset (a site on the Earth or a spacecraft), and light-time
iteration.  The result is the astrometric (ICRS) direction, as published ephemerides give it.
Two-body motion from osculating elements near the observation date is good to about an arcsecond
over weeks for main-belt orbits; planetary perturbations grow beyond that.

Times: observation times are MJD UTC; elements and propagation use TDB (TT, same to 2 ms).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.coordinates import EarthLocation, get_body_barycentric
from astropy.table import Table
from astropy.time import Time

from ssodetect.known.orbits import GAUSS_K

__all__ = ["Observer", "heliocentric_states", "predict", "apparent_magnitude", "C_AU_PER_DAY", "AU_KM", "ECLIPTIC_TO_ICRS"]

C_AU_PER_DAY = 173.1446326846693
AU_KM = 149597870.7
_EPS = math.radians(84381.448 / 3600.0)
#: Rotation from the J2000 ecliptic to the ICRS equator (v_icrs = ECLIPTIC_TO_ICRS @ v_ecl).
ECLIPTIC_TO_ICRS = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(_EPS), -math.sin(_EPS)], [0.0, math.sin(_EPS), math.cos(_EPS)]])


@dataclass(frozen=True)
class Observer:
    """Where the observations were made from.

    Attributes
    ----------
    site : tuple or None
        (east longitude [deg], latitude [deg], height [m]) of a ground station.
    positions : dict or None
        MJD (UTC, rounded to 1e-6 d) -> geocentric ICRS position [km] of a spacecraft.
    fixed_position : tuple or None
        A spacecraft position [km] used at every time (when ``positions`` has no entry).

    With none of them the observer is the geocentre.
    """

    site: tuple | None = None
    positions: dict | None = None
    fixed_position: tuple | None = None

    def geocentric_au(self, mjd_utc: np.ndarray) -> np.ndarray:
        """Geocentric ICRS offset of the observer [au], shape (n, 3)."""
        mjd_utc = np.atleast_1d(np.asarray(mjd_utc, float))
        out = np.zeros((mjd_utc.size, 3))
        if self.site is not None:
            lon, lat, height = self.site
            loc = EarthLocation.from_geodetic(lon * u.deg, lat * u.deg, height * u.m)
            pos, _ = loc.get_gcrs_posvel(Time(mjd_utc, format="mjd", scale="utc"))
            out = np.atleast_2d(pos.xyz.to_value(u.au).T)
        elif self.positions or self.fixed_position:
            for k, t in enumerate(mjd_utc):
                p = (self.positions or {}).get(round(float(t), 6), self.fixed_position)
                if p is not None:
                    out[k] = np.asarray(p, float) / AU_KM
        return out


def _solve_elliptic(M: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Eccentric anomaly E from M = E - e sin E, M in [-pi, pi) (Newton, vectorised)."""
    E = np.where(e < 0.8, M + e * np.sin(M), np.pi * np.sign(M))
    for _ in range(50):
        f = E - e * np.sin(E) - M
        d = f / (1.0 - e * np.cos(E))
        E = E - d
        if np.all(np.abs(d) < 1e-14):
            break
    return E


def _solve_hyperbolic(M: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Hyperbolic anomaly H from M = e sinh H - H (Newton)."""
    H = np.arcsinh(M / e)
    for _ in range(100):
        f = e * np.sinh(H) - H - M
        d = f / (e * np.cosh(H) - 1.0)
        H = H - d
        if np.all(np.abs(d) < 1e-14):
            break
    return H


def heliocentric_states(orbits: Table, mjd_tdb) -> np.ndarray:
    """Heliocentric ICRS positions [au] of every orbit at the given TDB times.

    Parameters
    ----------
    orbits : Table
        Rows of :data:`ssodetect.known.orbits.ORBIT_COLUMNS`.
    mjd_tdb : float or ndarray (m,)
        Times [MJD TDB], one per orbit (shape (n,)) or broadcast.

    Returns
    -------
    ndarray (n, 3)
    """
    q = np.asarray(orbits["q"], float)
    e = np.asarray(orbits["e"], float)
    t = np.broadcast_to(np.asarray(mjd_tdb, float), q.shape)
    dt = t - np.asarray(orbits["tp"], float)  # days since perihelion
    x = np.empty_like(q)
    y = np.empty_like(q)
    ell = e < 1.0 - 1e-9
    hyp = e > 1.0 + 1e-9
    par = ~ell & ~hyp
    if ell.any():
        a = q[ell] / (1.0 - e[ell])
        n = GAUSS_K / a**1.5
        M = np.remainder(n * dt[ell] + np.pi, 2 * np.pi) - np.pi
        E = _solve_elliptic(M, e[ell])
        x[ell] = a * (np.cos(E) - e[ell])
        y[ell] = a * np.sqrt(1.0 - e[ell] ** 2) * np.sin(E)
    if hyp.any():
        a = q[hyp] / (e[hyp] - 1.0)
        n = GAUSS_K / a**1.5
        H = _solve_hyperbolic(n * dt[hyp], e[hyp])
        x[hyp] = a * (e[hyp] - np.cosh(H))
        y[hyp] = a * np.sqrt(e[hyp] ** 2 - 1.0) * np.sinh(H)
    if par.any():  # Barker's equation: tan(nu/2) = s, s^3 + 3 s = 3 k dt / sqrt(2 q^3)
        w = 3.0 * GAUSS_K * dt[par] / np.sqrt(2.0 * q[par] ** 3)
        z = np.cbrt(w / 2.0 + np.sqrt(w * w / 4.0 + 1.0))
        s = z - 1.0 / z
        x[par] = q[par] * (1.0 - s * s)
        y[par] = 2.0 * q[par] * s
    i, node, peri = (np.radians(np.asarray(orbits[c], float)) for c in ("i", "node", "peri"))
    cO, sO, ci, si, cw, sw = np.cos(node), np.sin(node), np.cos(i), np.sin(i), np.cos(peri), np.sin(peri)
    px = cO * cw - sO * sw * ci
    py = sO * cw + cO * sw * ci
    pz = sw * si
    qx = -cO * sw - sO * cw * ci
    qy = -sO * sw + cO * cw * ci
    qz = cw * si
    ecl = np.stack([x * px + y * qx, x * py + y * qy, x * pz + y * qz], axis=1)
    return ecl @ ECLIPTIC_TO_ICRS.T


def earth_heliocentric(mjd_utc: np.ndarray) -> np.ndarray:
    t = Time(np.atleast_1d(mjd_utc), format="mjd", scale="utc")
    earth = get_body_barycentric("earth", t).xyz.to_value(u.au)
    sun = get_body_barycentric("sun", t).xyz.to_value(u.au)
    return np.atleast_2d((earth - sun).T)


def predict(orbits: Table, mjd_utc, observer: Observer | None = None, *, light_time: bool = True) -> Table:
    """Astrometric positions of every orbit at every time.

    Parameters
    ----------
    orbits : Table
        Orbits (:func:`ssodetect.known.orbits.read_orbits`), n rows.
    mjd_utc : float or ndarray (m,)
        Observation times [MJD UTC].
    observer : Observer, optional
        Default: the geocentre.

    Returns
    -------
    Table
        n x m rows (object-major): ``index`` (row of ``orbits``), ``mjd``, ``ra``, ``dec`` [deg],
        ``delta`` (observer distance) and ``r`` (heliocentric distance) [au], ``phase`` [deg] and
        ``V`` (H-G magnitude; NaN without H).
    """
    observer = observer or Observer()
    times = np.atleast_1d(np.asarray(mjd_utc, float))
    n, m = len(orbits), times.size
    tdb = Time(times, format="mjd", scale="utc").tdb.mjd
    obs = earth_heliocentric(times) + observer.geocentric_au(times)  # (m, 3)
    idx = np.repeat(np.arange(n), m)
    t_rep = np.tile(tdb, n)
    o_rep = np.tile(obs, (n, 1))
    rows = orbits[idx] if n else orbits
    pos = heliocentric_states(rows, t_rep)
    if light_time:
        for _ in range(3):
            tau = np.linalg.norm(pos - o_rep, axis=1) / C_AU_PER_DAY
            pos = heliocentric_states(rows, t_rep - tau)
    rel = pos - o_rep
    delta = np.linalg.norm(rel, axis=1)
    r = np.linalg.norm(pos, axis=1)
    ra = np.degrees(np.arctan2(rel[:, 1], rel[:, 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(rel[:, 2] / np.maximum(delta, 1e-300), -1, 1)))
    cos_phase = np.einsum("ij,ij->i", pos, rel) / np.maximum(r * delta, 1e-300)
    phase = np.degrees(np.arccos(np.clip(cos_phase, -1, 1)))
    V = apparent_magnitude(np.asarray(rows["H"], float), np.asarray(rows["G"], float), r, delta, phase)
    return Table({"index": idx, "mjd": np.tile(times, n), "ra": ra, "dec": dec, "delta": delta, "r": r,
                  "phase": phase, "V": V})


def apparent_magnitude(H, G, r, delta, phase_deg):
    """IAU H-G magnitude: ``H + 5 log10(r delta) - 2.5 log10((1-G) phi1 + G phi2)``."""
    t = np.tan(np.radians(np.asarray(phase_deg, float)) / 2.0)
    phi1 = np.exp(-3.33 * t**0.63)
    phi2 = np.exp(-1.87 * t**1.22)
    with np.errstate(invalid="ignore", divide="ignore"):
        return H + 5.0 * np.log10(r * delta) - 2.5 * np.log10((1.0 - G) * phi1 + G * phi2)
