"""Which linked objects are known ones: predicted positions of catalogued orbits matched to tracklets.

1. Field search: every orbit is propagated (geocentric, no light time: cheap and vectorised) to the
   first and last observation times; orbits whose path passes within the field radius plus a
   margin (observer parallax, two-body error; wider for elements far from the frames) are kept.
2. Those whose elements lie more than :data:`ADVANCE_DAYS` from a group of frames are moved to it through
   the planets' pull (:mod:`ssodetect.known.perturb`), then all are predicted precisely (light time, the real
   observer) at every observation time.
3. A tracklet is the known object when the median separation of its observations from the
   prediction is within ``match_radius`` and its observed motion agrees with the predicted one as
   a vector (the difference within ``rate_tolerance`` of the predicted rate, or 5 sigma of the
   observed motion, or 0.05"/h: a two-body rate is far better than its position); each known
   object names at most one tracklet and each tracklet takes the closest.

Positions in degrees (ICRS), times MJD UTC, separations in arcsec.
"""
from __future__ import annotations

import logging

import numpy as np
from astropy.table import Table
from astropy.time import Time

from ssodetect.known.perturb import advance_orbits
from ssodetect.known.propagate import Observer, predict

log = logging.getLogger(__name__)

__all__ = ["KNOWN_COLUMNS", "ADVANCE_DAYS", "time_groups", "field_candidates", "identify", "match_predictions", "empty_known_table"]

KNOWN_COLUMNS = [
    ("designation", "U48", "", "known object"),
    ("number", "i8", "", "permanent number (-1 when unnumbered)"),
    ("provisional", "U16", "", "provisional designation"),
    ("ra", "f8", "deg", "predicted position at the middle of the sequence (astrometric ICRS)"),
    ("dec", "f8", "deg", "predicted position at the middle of the sequence"),
    ("predicted_mag", "f8", "mag", "predicted V (H-G)"),
    ("rate", "f8", "arcsec / h", "predicted rate of motion"),
    ("on_detector", "bool", "", "predicted on a CCD in at least one exposure (when footprints are known)"),
    ("matched", "U16", "", "linked object identified with it (empty: not found)"),
    ("offset", "f8", "arcsec", "median observed-minus-predicted separation"),
    ("offset_ra", "f8", "arcsec", "median observed-minus-predicted RA*cos(dec)"),
    ("offset_dec", "f8", "arcsec", "median observed-minus-predicted Dec"),
]


def empty_known_table() -> Table:
    from ssodetect.columns import empty_table

    return empty_table(KNOWN_COLUMNS)


def _sep_arcsec(ra1, dec1, ra2, dec2):
    """Angular separation [arcsec] (haversine)."""
    r1, d1, r2, d2 = (np.radians(np.asarray(v, float)) for v in (ra1, dec1, ra2, dec2))
    h = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))) * 3600.0


def field_candidates(orbits: Table, mjd_first: float, mjd_last: float, ra: float, dec: float, radius_deg: float,
                     *, margin_deg=0.3) -> np.ndarray:
    """Rows of ``orbits`` whose geocentric path between the two times passes near the field.

    ``margin_deg``: extra radius [deg], one for all orbits or one per orbit (an array).

    Returns
    -------
    ndarray of int
        Indices into ``orbits``.
    """
    if len(orbits) == 0:
        return np.zeros(0, int)
    a = predict(orbits, mjd_first, light_time=False)
    b = predict(orbits, mjd_last, light_time=False)
    da = _sep_arcsec(a["ra"], a["dec"], ra, dec) / 3600.0
    db = _sep_arcsec(b["ra"], b["dec"], ra, dec) / 3600.0
    path = _sep_arcsec(a["ra"], a["dec"], b["ra"], b["dec"]) / 3600.0
    near = np.minimum(da, db) <= radius_deg + margin_deg + path
    return np.nonzero(near)[0]


#: Elements farther than this from a group of frames [d] are moved to it through the planets' pull
#: (:func:`ssodetect.known.perturb.advance_orbits`): on the NEOWISE frames, elements 4.4 years away were 8'-43' off
#: in two-body motion, 2" after the integration.
ADVANCE_DAYS = 30.0
#: How far [deg per year between epoch and frames] two-body positions may stray, for the wider field search of
#: orbits whose elements are far from the frames (measured: up to 0.16 deg/yr for main-belt orbits).
DRIFT_DEG_PER_YEAR = 0.5


def identify(observations: Table, orbits: Table, observer: Observer | None = None, *, centre: tuple,
             radius_deg: float, match_radius: float = 10.0, rate_tolerance: float = 0.1,
             on_detector=None, margin_deg: float = 0.3, times=()) -> tuple[dict, Table, dict]:
    """Identify linked objects with known orbits.

    Parameters
    ----------
    observations : Table
        Observations with sky positions (``object, mjd, ra, dec, ra_err, dec_err``; rows on a relative
        WCS excluded).
    orbits : Table
        Catalogued orbits (:func:`ssodetect.known.orbits.read_orbits`).
    observer : Observer, optional
        Site or spacecraft (default geocentre).
    centre : (float, float)
        Field centre (ra, dec) [deg].
    radius_deg : float
        Field radius [deg] (centre to the farthest corner).
    match_radius : float
        Largest median separation [arcsec] for an identification.
    rate_tolerance : float
        Largest difference between observed and predicted motion vectors, relative to the predicted
        rate (or 5 sigma of the observed motion, whichever is larger).
    on_detector : callable, optional
        ``on_detector(ra, dec, mjd) -> bool array``: whether predicted positions fall on a CCD.
    margin_deg : float
        Extra radius of the field search [deg].
    times : sequence of float
        Further times [MJD UTC] at which ``on_detector`` is asked (the exposures without observations).

    Returns
    -------
    identities : dict
        Object -> dict(designation, number, provisional, offset, offset_ra, offset_dec).
    known : Table
        Columns :data:`KNOWN_COLUMNS`: every catalogued object predicted in the field.
    predictions : dict
        Designation -> (times [MJD UTC], ra, dec [deg]) for every row of ``known``.
    """
    known = empty_known_table()
    mjd = np.asarray(observations["mjd"], float) if len(observations) else np.asarray(times, float)
    if mjd.size == 0 or len(orbits) == 0:
        return {}, known, {}
    t_first, t_last = float(mjd.min()), float(mjd.max())
    # two-body positions from elements far from the frames can be degrees off: such orbits are searched wider
    # here, then moved through the planets' pull to the frames' epoch before they are predicted
    years = np.abs(np.asarray(orbits["epoch"], float) - 0.5 * (t_first + t_last)) / 365.25 \
        if "epoch" in orbits.colnames else np.zeros(len(orbits))
    drift = np.where(years * 365.25 > ADVANCE_DAYS, np.clip(DRIFT_DEG_PER_YEAR * np.nan_to_num(years), 0, 45), 0.0)
    cand = field_candidates(orbits, t_first, t_last, centre[0], centre[1], radius_deg, margin_deg=margin_deg + drift)
    log.info("%d of %d catalogued orbits pass near the field", cand.size, len(orbits))
    if cand.size == 0:
        return {}, known, {}
    sub = orbits[cand]
    times = np.unique(np.round(np.concatenate([mjd, np.asarray(times, float), [0.5 * (t_first + t_last)]]), 8))
    m = times.size
    ra, dec, V = (np.full((len(sub), m), np.nan) for _ in range(3))
    for cols in time_groups(times, ADVANCE_DAYS):
        t_mid = float(Time(0.5 * (times[cols].min() + times[cols].max()), format="mjd", scale="utc").tdb.mjd)
        moved, n_moved = advance_orbits(sub, t_mid, min_days=ADVANCE_DAYS)
        if n_moved:
            log.info("known objects: %d of %d orbits near the field moved from their epochs to MJD %.1f through the "
                     "planets' pull (numerical integration)", n_moved, len(sub), t_mid)
        pred = predict(moved, times[cols], observer)
        for column, target in (("ra", ra), ("dec", dec), ("V", V)):
            target[:, cols] = np.asarray(pred[column]).reshape(len(sub), cols.size)
    ident = {c: np.asarray(sub[c]) for c in ("designation", "number", "provisional")}
    return match_predictions(observations, ident, times, ra, dec, V, centre=centre, radius_deg=radius_deg,
                             match_radius=match_radius, rate_tolerance=rate_tolerance, on_detector=on_detector)


def time_groups(times: np.ndarray, gap_days: float) -> list[np.ndarray]:
    """Indices of sorted ``times`` [MJD] in groups separated by more than ``gap_days`` (the nights of a run
    spanning months are predicted from elements moved to each group's middle)."""
    times = np.asarray(times, float)
    if times.size == 0:
        return []
    breaks = np.nonzero(np.diff(times) > gap_days)[0] + 1
    return np.split(np.arange(times.size), breaks)


def match_predictions(observations: Table, ident: dict, times: np.ndarray, pra: np.ndarray, pdec: np.ndarray,
                      pV: np.ndarray, *, centre: tuple, radius_deg: float, match_radius: float = 10.0,
                      rate_tolerance: float = 0.1, on_detector=None) -> tuple[dict, Table, dict]:
    """Match observations with predicted positions of known objects (the last steps of :func:`identify`).

    Parameters
    ----------
    ident : dict
        ``designation``, ``number``, ``provisional``: arrays (n,) naming the predicted objects.
    times : ndarray (m,)
        Prediction times [MJD UTC, rounded to 1e-8 d]: every observation time and the middle of the
        sequence among them.
    pra, pdec, pV : ndarray (n, m)
        Predicted positions [deg] and V magnitudes.

    Returns
    -------
    As :func:`identify`.
    """
    mjd = np.asarray(observations["mjd"], float)
    # without observations (nothing linked) the predictions are still made for every exposure (times)
    span = mjd if mjd.size else np.asarray(times, float)
    t_first, t_last = float(span.min()), float(span.max())
    n, m = pra.shape
    t_index = {round(float(t), 8): k for k, t in enumerate(times)}
    grid = np.asarray(times, float)

    def nearest(t: float) -> int:  # the grid's times are rounded to 1e-8 d; the span's ends and middle may not be
        return int(np.argmin(np.abs(grid - t)))

    mid = nearest(0.5 * (t_first + t_last))
    span_h = max((t_last - t_first) * 24.0, 1e-6)
    k0, k1 = nearest(t_first), nearest(t_last)
    pred_rate = _sep_arcsec(pra[:, k0], pdec[:, k0], pra[:, k1], pdec[:, k1]) / span_h
    in_field = _sep_arcsec(pra[:, mid], pdec[:, mid], centre[0], centre[1]) / 3600.0 <= radius_deg
    if on_detector is not None:
        on = np.zeros(n, bool)
        for k in range(m):
            on |= np.asarray(on_detector(pra[:, k], pdec[:, k], float(times[k])), bool)
    else:
        on = in_field
    # candidate pairs (object, known): median separation over the object's observations
    names = np.asarray(observations["object"]).astype(str)
    pairs = []
    for name in dict.fromkeys(names):
        rows = np.nonzero(names == name)[0]
        cols = np.array([t_index[round(float(t), 8)] for t in mjd[rows]])
        ora, odec = np.asarray(observations["ra"], float)[rows], np.asarray(observations["dec"], float)[rows]
        sep = _sep_arcsec(ora[None, :], odec[None, :], pra[:, cols], pdec[:, cols])
        med = np.median(sep, axis=1)
        close = np.nonzero(med <= match_radius)[0]
        if close.size == 0:
            continue
        order = np.argsort(mjd[rows])
        first, last = order[0], order[-1]
        dt_h = (mjd[rows][last] - mjd[rows][first]) * 24.0
        cos0 = np.cos(np.radians(odec[first]))
        v_obs = (np.array([((ora[last] - ora[first] + 180.0) % 360.0 - 180.0) * cos0, odec[last] - odec[first]])
                 * 3600.0 / dt_h if dt_h > 0 else None)
        # the observed motion's uncertainty from the position errors of the end points [arcsec/h]
        pos_err = np.hypot(np.asarray(observations["ra_err"], float)[rows], np.asarray(observations["dec_err"], float)[rows])
        sigma_v = np.sqrt(2.0) * float(np.nanmedian(pos_err)) / dt_h if dt_h > 0 else np.inf
        for j in close:
            if v_obs is not None:  # the motion must agree as a vector: rate and direction
                c0, c1 = cols[first], cols[last]
                v_pred = np.array([((pra[j, c1] - pra[j, c0] + 180.0) % 360.0 - 180.0) * cos0,
                                   pdec[j, c1] - pdec[j, c0]]) * 3600.0 / dt_h
                if np.hypot(*(v_obs - v_pred)) > max(rate_tolerance * np.hypot(*v_pred), 5.0 * sigma_v, 0.05):
                    continue
            cosd = np.cos(np.radians(odec))
            dra = np.median(((ora - pra[j, cols] + 180.0) % 360.0 - 180.0) * cosd) * 3600.0
            ddec = np.median(odec - pdec[j, cols]) * 3600.0
            pairs.append((float(med[j]), name, int(j), float(dra), float(ddec)))
    identities: dict = {}
    taken: set = set()
    matched = np.full(n, "", dtype="U16")
    offsets = np.full((n, 3), np.nan)
    for med, name, j, dra, ddec in sorted(pairs):
        if name in identities or j in taken:
            continue
        taken.add(j)
        identities[name] = {"designation": str(ident["designation"][j]), "number": int(ident["number"][j]),
                            "provisional": str(ident["provisional"][j]), "offset": med, "offset_ra": dra,
                            "offset_dec": ddec}
        matched[j] = name
        offsets[j] = (med, dra, ddec)
    keep = on | (matched != "")
    known = Table({
        "designation": np.asarray(ident["designation"]).astype(str)[keep], "number": np.asarray(ident["number"])[keep],
        "provisional": np.asarray(ident["provisional"]).astype(str)[keep], "ra": pra[keep, mid], "dec": pdec[keep, mid],
        "predicted_mag": pV[keep, mid], "rate": pred_rate[keep], "on_detector": on[keep], "matched": matched[keep],
        "offset": offsets[keep, 0], "offset_ra": offsets[keep, 1], "offset_dec": offsets[keep, 2],
    })
    from ssodetect.columns import describe

    describe(known, KNOWN_COLUMNS)
    predictions = {str(ident["designation"][j]): (times, pra[j], pdec[j]) for j in np.nonzero(keep)[0]}
    log.info("%d known objects predicted on the detectors, %d identified", int(on.sum()), len(identities))
    return identities, known, predictions
