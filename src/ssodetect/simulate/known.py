"""Known objects for simulated fields, from real orbital elements.

Real orbits almost never cross a given simulated field at a given time, so each chosen orbit keeps
its real size, shape, inclination and mean anomaly (a, e, i, M: its distance from the Sun and its
speed) and has its node and argument of perihelion turned so that the object sits on the line of
sight to a chosen point of the field at the reference time.  Its absolute magnitude is set so that
its apparent magnitude falls in the requested range.  The orbits file written for the run holds
these re-aimed orbits together with every other orbit of the source file unchanged (objects that
must not be found in the field).  The placed orbits' elements are first moved to the reference time through the
planets' pull (:func:`ssodetect.known.perturb.advance_orbits`), as the pipeline moves elements far from its frames.
Angles in degrees, distances in au, times MJD (UTC for
observations, TT for elements).
"""
from __future__ import annotations

import math

import numpy as np
from astropy.table import Table
from astropy.time import Time

from ssodetect.known.perturb import advance_orbits
from ssodetect.known.propagate import ECLIPTIC_TO_ICRS, Observer, earth_heliocentric, heliocentric_states, predict

__all__ = ["aim_orbit", "place_known_objects"]


def aim_orbit(row, mjd_utc: float, ra: float, dec: float, observer: Observer, rng) -> dict | None:
    """Elements of ``row`` turned (node, perihelion) so that the object is seen at (ra, dec) at ``mjd_utc``.

    Returns
    -------
    dict or None
        Updated ``node`` and ``peri`` [deg]; None when the orbit cannot reach that direction
        (ecliptic latitude beyond its inclination, or a heliocentric distance inside the observer's).
    """
    tdb = float(Time(mjd_utc, format="mjd", scale="utc").tdb.mjd)
    single = Table(row) if not isinstance(row, Table) else row
    pos = heliocentric_states(single, tdb)[0]
    r = float(np.linalg.norm(pos))
    # true anomaly now (from the orbit-plane position; independent of the node and perihelion)
    ecl = ECLIPTIC_TO_ICRS.T @ pos
    i, node, peri = (math.radians(float(single[c][0])) for c in ("i", "node", "peri"))
    u_now = math.atan2(ecl[2] / max(math.sin(i), 1e-12), ecl[0] * math.cos(node) + ecl[1] * math.sin(node))
    nu = u_now - peri
    obs = earth_heliocentric(np.array([mjd_utc]))[0] + observer.geocentric_au(np.array([mjd_utc]))[0]
    d = np.array([math.cos(math.radians(dec)) * math.cos(math.radians(ra)),
                  math.cos(math.radians(dec)) * math.sin(math.radians(ra)), math.sin(math.radians(dec))])
    b = float(obs @ d)
    disc = b * b - float(obs @ obs) + r * r
    if disc <= 0:
        return None
    rho = -b + math.sqrt(disc)
    if rho <= 0:
        return None
    target = ECLIPTIC_TO_ICRS.T @ (obs + rho * d)
    lam, beta = math.atan2(target[1], target[0]), math.asin(target[2] / r)
    if abs(math.sin(beta)) > math.sin(i) - 1e-9:
        return None
    u = math.asin(math.sin(beta) / math.sin(i))
    if rng.random() < 0.5:
        u = math.pi - u
    new_node = lam - math.atan2(math.cos(i) * math.sin(u), math.cos(u))
    return {"node": math.degrees(new_node) % 360.0, "peri": math.degrees(u - nu) % 360.0}


def place_known_objects(orbits: Table, n: int, mjd_ref: float, positions: list, mags: np.ndarray,
                        observer: Observer, rng) -> tuple[Table, list]:
    """Re-aim ``n`` orbits (elliptic, inclined enough) at the given sky positions.

    Parameters
    ----------
    orbits : Table
        Real orbits (:func:`ssodetect.known.orbits.read_orbits`).
    n : int
        Objects wanted.
    mjd_ref : float
        Reference time [MJD UTC].
    positions : list of (ra, dec)
        Target directions [deg], at least ``n``.
    mags : ndarray (n,)
        Apparent V magnitudes wanted.
    observer : Observer
    rng : numpy Generator

    Returns
    -------
    orbits_out : Table
        All of ``orbits``, the placed ones modified (node, peri, H).
    placed : list of int
        Rows of ``orbits_out`` that were placed, in the order of ``positions``.
    """
    out = orbits.copy()
    order = rng.permutation(len(orbits))
    order = order[(np.asarray(out["e"], float)[order] < 0.95) & (np.asarray(out["q"], float)[order] > 1.2)]
    # the candidates' elements moved to the reference time through the planets' pull, as the pipeline moves
    # elements far from its frames: the placed objects sit where the pipeline predicts them
    tdb = float(Time(mjd_ref, format="mjd", scale="utc").tdb.mjd)
    chunk = max(4 * n, 20)
    placed: list[int] = []
    k = 0
    for position, j in enumerate(order):
        if len(placed) >= n:
            break
        if position % chunk == 0:  # the next candidates moved, a chunk at a time (most orbits can be aimed)
            tries = order[position : position + chunk]
            moved, _ = advance_orbits(out[tries], tdb, min_days=0.0)
            for name in ("epoch", "q", "e", "i", "node", "peri", "M", "tp"):
                out[name][tries] = moved[name]
        ra, dec = positions[k]
        aim = aim_orbit(out[j : j + 1], mjd_ref, ra, dec, observer, rng)
        if aim is None:
            continue
        out["node"][j], out["peri"][j] = aim["node"], aim["peri"]
        out["H"][j] = 0.0
        v0 = float(predict(out[j : j + 1], mjd_ref, observer)["V"][0])
        out["H"][j] = float(mags[k]) - v0
        placed.append(int(j))
        k += 1
    return out, placed
