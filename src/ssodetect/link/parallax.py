"""Slow movers seen from an observer in orbit: a straight motion on the sky plus the observer's parallax.

From a spacecraft in low Earth orbit (NEOSSat: 7150 km from the geocentre, a 100 min orbit) an object at a distance
of ``Delta`` km is displaced on the sky by the observer's geocentric position across the line of sight over
``Delta``: 7150 km at 1 AU is 10", and it turns with the orbit.  Over a sequence of blocks spread over two hours
a straight line then misses the object's positions by 5-40" (comet C/2021 A1 in the NEOSSat sequence: a straight
fit to 36 of its positions left 5.6" rms; with the parallax, 1.15").  The position on the tangent plane is

    xi(t)  = xi0  + vx (t - t_ref) + w * px(t)
    eta(t) = eta0 + vy (t - t_ref) + w * py(t)

with ``(px, py) = -(O . e_east, O . e_north)`` [km] the observer's geocentric position ``O`` across the line of
sight and ``w = 206265 / Delta_km`` [arcsec/km] one unknown: the model stays linear in its five parameters.  The
linker's tracklets (straight, within a block) are extended by it into the sequence's other exposures
(:func:`extend_tracklets`).  Times [h] since the run's first mid-exposure (UTC); positions [arcsec] on the run's
tangent plane; observer positions [km] in the geocentric ICRF.
"""
from __future__ import annotations

import logging
import math

import numpy as np
from astropy.table import Table, vstack

from ssodetect.link.tracklets import Tracklet, detection_key, fit_linear_motion

log = logging.getLogger(__name__)

__all__ = ["parallax_factors", "fit_parallax_motion", "prediction_error", "observer_path_problem", "extend_tracklets",
           "EXTEND_NSIGMA", "EXTEND_FLOOR", "EXTEND_MAX_REACH", "EXTEND_FLUX_FACTOR", "MIN_DISTANCE_KM",
           "MIN_OBSERVER_TRAVEL_KM", "MAX_OBSERVER_SPEED_KMS"]

#: A candidate joins a tracklet where the parallax model predicts it within this many combined sigmas ...
EXTEND_NSIGMA = 4.0
#: ... plus this floor [arcsec] (a comet's coma measured as a point in one exposure and as a short trail in the next:
#: 1-3" apart on NEOSSat's 3" pixels).
EXTEND_FLOOR = 1.0
#: Nearest distance [km] the parallax fit may give (the Moon's; closer objects are not in this model's scope).
MIN_DISTANCE_KM = 3.0e5
#: Widest reach [arcsec] of a prediction, whatever its error (a fit whose parallax could not be told from its offset
#: had an unbounded error and took the nearest candidate anywhere in the exposure; NEOSSat's comet predicted from
#: two blocks into the third, 55 minutes away, at 10-20").
EXTEND_MAX_REACH = 30.0
#: Observer positions that move less than this [km] across the sequence give no parallax to fit (a fixed position:
#: the parallax term is a constant offset): no tracklet is extended.
MIN_OBSERVER_TRAVEL_KM = 100.0
#: Fastest an observer may move between exposures [km/s] (a low orbit: 7.5; the Earth about the Sun: 30): faster, its
#: positions are not one spacecraft's path (units mixed between frames) and no tracklet is extended.
MAX_OBSERVER_SPEED_KMS = 100.0
#: A candidate joins a tracklet only with a flux within this factor of the tracklet's median (a comet's coma
#: measured as a point in one exposure and as a trail in the next: within 1.6; noise peaks: 10-100x fainter).
EXTEND_FLUX_FACTOR = 4.0


def parallax_factors(observer_km: np.ndarray, ra0: float, dec0: float) -> np.ndarray:
    """``(px, py)`` [km] of each observer position across the line of sight towards ``(ra0, dec0)`` [deg]: the
    position on the tangent plane moves by ``w * (px, py)`` for an object at ``206265 / w`` km.

    Parameters
    ----------
    observer_km : ndarray (n, 3)
        Geocentric ICRF positions of the observer [km].

    Returns
    -------
    ndarray (n, 2)
    """
    a, d = math.radians(ra0), math.radians(dec0)
    east = np.array([-math.sin(a), math.cos(a), 0.0])
    north = np.array([-math.sin(d) * math.cos(a), -math.sin(d) * math.sin(a), math.cos(d)])
    o = np.asarray(observer_km, float).reshape(-1, 3)
    return np.column_stack([-(o @ east), -(o @ north)])


def _design(dt: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """The model's design matrix ``(2n, 5)``: xi rows then eta rows; columns ``xi0, eta0, vx, vy, w``."""
    n = dt.size
    design = np.zeros((2 * n, 5))
    design[:n, 0], design[:n, 2], design[:n, 4] = 1.0, dt, factors[:, 0]
    design[n:, 1], design[n:, 3], design[n:, 4] = 1.0, dt, factors[:, 1]
    return design


def fit_parallax_motion(t: np.ndarray, xi: np.ndarray, eta: np.ndarray, sigma: np.ndarray,
                        factors: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted least squares of ``(xi0, eta0, vx, vy, w)`` at the weighted mean time, ``w`` held within
    ``[0, 206265 / MIN_DISTANCE_KM]`` (refitted at the bound it leaves).

    Parameters
    ----------
    t, xi, eta, sigma : ndarray (n,)
        Times [h], positions and their isotropic errors [arcsec].
    factors : ndarray (n, 2)
        :func:`parallax_factors` of each position's exposure [km].

    Returns
    -------
    params : ndarray (6,)
        ``xi0, eta0, vx, vy, w, t_ref``; ``w`` [arcsec km] is the parallax's scale, ``206265 / distance [km]``
        (0 or ``206265 / MIN_DISTANCE_KM`` where held at a bound: no distance measured).

    Raises
    ------
    ValueError
        A non-finite time, position or factor, or an error that is not a positive number.
    residuals : ndarray (n,)
        Distance of each position from the model [arcsec].
    chi2 : float
    """
    t, xi, eta, sigma = (np.asarray(v, float) for v in (t, xi, eta, sigma))
    if not (np.all(np.isfinite(np.concatenate([t, xi, eta]))) and np.all(np.isfinite(sigma)) and np.all(sigma > 0)
            and np.all(np.isfinite(factors))):
        # (a NaN error stopped the least squares with "SVD did not converge")
        raise ValueError("fit_parallax_motion: times, positions and observer factors must be finite and errors > 0")
    wts = 1.0 / np.maximum(sigma, 1e-6) ** 2
    t_ref = float(np.sum(wts * t) / np.sum(wts))
    n = t.size
    design = _design(t - t_ref, factors)
    data = np.concatenate([xi, eta])
    sw = np.sqrt(np.concatenate([wts, wts]))
    w_max = 206265.0 / MIN_DISTANCE_KM
    coef, *_ = np.linalg.lstsq(design * sw[:, None], data * sw, rcond=None)
    if not 0.0 <= coef[4] <= w_max:  # held at the nearest bound, the other four refitted
        fixed = min(max(coef[4], 0.0), w_max)
        sub, *_ = np.linalg.lstsq(design[:, :4] * sw[:, None], (data - fixed * design[:, 4]) * sw, rcond=None)
        coef = np.append(sub, fixed)
    model = design @ coef
    resid = np.hypot(xi - model[:n], eta - model[n:])
    chi2 = float(np.sum(wts * resid**2))
    return np.append(coef, t_ref), resid, chi2


def prediction_error(t: np.ndarray, xi: np.ndarray, eta: np.ndarray, sigma: np.ndarray, factors: np.ndarray,
                     params: np.ndarray, t_new: float, factor_new: np.ndarray) -> float:
    """1-sigma error [arcsec] of :func:`fit_parallax_motion`'s prediction at ``t_new`` (per axis, the larger),
    from its parameters' covariance scaled by the fit's reduced chi2 when above 1."""
    t, sigma = np.asarray(t, float), np.asarray(sigma, float)
    wts = 1.0 / np.maximum(sigma, 1e-6) ** 2
    n = t.size
    design = _design(t - params[5], factors)
    normal = design.T @ (design * np.concatenate([wts, wts])[:, None])
    try:
        cov = np.linalg.inv(normal)
    except np.linalg.LinAlgError:
        return math.inf
    model = design @ params[:5]
    resid = np.concatenate([np.asarray(xi, float), np.asarray(eta, float)]) - model
    scale = max(1.0, float(np.sum(np.concatenate([wts, wts]) * resid**2)) / max(2 * n - 5, 1))
    dtn = t_new - params[5]
    gx = np.array([1.0, 0.0, dtn, 0.0, factor_new[0]])
    gy = np.array([0.0, 1.0, 0.0, dtn, factor_new[1]])
    var = max(float(gx @ cov @ gx), float(gy @ cov @ gy)) * scale
    return math.sqrt(max(var, 0.0))


def _predict(params: np.ndarray, t: float, factor: np.ndarray) -> tuple[float, float]:
    dt = t - params[5]
    return (float(params[0] + params[2] * dt + params[4] * factor[0]),
            float(params[1] + params[3] * dt + params[4] * factor[1]))


def observer_path_problem(times_h: dict, observers: dict) -> str | None:
    """Why the observer positions of a run give no parallax to fit, or None: they barely move
    (:data:`MIN_OBSERVER_TRAVEL_KM`), or jump faster than a spacecraft moves (:data:`MAX_OBSERVER_SPEED_KMS`: units
    mixed between frames).  ``times_h``, ``observers``: exposure -> time [h], geocentric position [km]."""
    exposures = sorted((e for e in observers if e in times_h), key=lambda e: times_h[e])  # (in time order)
    if len(exposures) < 2:
        return "fewer than two exposures with an observer position"
    pos = np.array([observers[e] for e in exposures], float)
    t = np.array([times_h[e] for e in exposures], float) * 3600.0
    travel = float(np.max(np.linalg.norm(pos - pos[0], axis=1)))
    if travel < MIN_OBSERVER_TRAVEL_KM:
        return f"the observer moves {travel:.3g} km over the sequence (a fixed position: no parallax to fit)"
    step = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    dt = np.maximum(np.diff(t), 1.0)
    speed = float(np.max(step / dt))
    if speed > MAX_OBSERVER_SPEED_KMS:
        k = int(np.argmax(step / dt))
        return (f"the observer's position jumps {step[k]:.3g} km in {dt[k]:.0f} s between exposures {exposures[k]} "
                f"and {exposures[k + 1]} ({speed:.3g} km/s: not a spacecraft's path; positions in another unit than km?)")
    return None


def extend_tracklets(tracklets: list, slow: Table, pool: Table, observers: dict, plane, *,
                     nsigma: float = EXTEND_NSIGMA, floor: float = EXTEND_FLOOR, min_members: int = 4,
                     rounds: int = 6, times_h: dict | None = None) -> tuple[list, Table, dict]:
    """Extend slow tracklets into the exposures they miss by their motion with the observer's parallax.

    Each tracklet of at least ``min_members`` members is fitted (:func:`fit_parallax_motion`); in every exposure it
    has no member, the nearest candidate of ``pool`` within ``nsigma`` combined sigmas plus ``floor`` of the
    prediction (at most :data:`EXTEND_MAX_REACH`), with a flux within :data:`EXTEND_FLUX_FACTOR` of the tracklet's,
    joins it (a candidate already in another tracklet never does); the joined ones are chosen again from each refit
    (the tracklet's own members stay), until nothing changes.  A tracklet whose fit finds no parallax is left as it
    was, and so is every tracklet when the observer's path gives none (:func:`observer_path_problem`).  Candidates that
    join are appended to ``slow`` (tracklets index it) and their tracklet's straight motion is refitted over all
    its members (its rate for the reports).

    Parameters
    ----------
    tracklets : list of Tracklet
        Indexing ``slow``.
    slow, pool : Table
        The slow linker's candidates, and the candidates that may join (not static; any kind: a comet is a point
        in one exposure, a trail or an extended source in the next, and a detector artefact where it moved less
        than the field drifted), both with ``exposure, t_hours, xi, eta, sigma, ccd, x, y`` (and ``flux``).
    observers : dict
        Exposure index -> geocentric ICRF position of the observer [km] (every exposure of the run).
    plane : TangentPlane
        The projection of ``xi, eta``.
    times_h : dict, optional
        Exposure index -> time [h] of every exposure (the observer's path is checked over all of them); by default
        the times of the exposures ``pool`` has candidates in.

    Returns
    -------
    tracklets : list of Tracklet
    slow : Table
        With the joined candidates appended.
    stats : dict
        ``n_fitted``, ``n_extended`` (tracklets that gained members), ``n_joined`` (candidates), ``n_left``
        (members that left), ``n_no_parallax`` (tracklets not extended because their fit found no parallax: a
        straight motion), ``n_at_bound`` (not extended because the fit held the distance at its bound,
        :data:`MIN_DISTANCE_KM`: nearer than the Moon's orbit, or a parallax its positions cannot tell, such as an
        observer moving along the line of sight), ``n_unfittable`` (members with a non-finite position or error),
        ``distances_km`` (the fitted distance of each extended tracklet), ``skipped`` (why no tracklet was extended,
        or empty).
    """
    stats = {"n_fitted": 0, "n_extended": 0, "n_joined": 0, "n_left": 0, "n_no_parallax": 0, "n_at_bound": 0,
             "n_unfittable": 0, "distances_km": [], "skipped": ""}
    if not tracklets or not len(pool) or not observers:
        return tracklets, slow, stats
    p_exp0, p_t0 = np.asarray(pool["exposure"]).astype(int), np.asarray(pool["t_hours"], float)
    if times_h is None:
        times_h = {int(e): float(np.median(p_t0[p_exp0 == e])) for e in np.unique(p_exp0)}
    problem = observer_path_problem(times_h, observers)
    if problem is not None:
        stats["skipped"] = problem
        return tracklets, slow, stats
    w_max = 206265.0 / MIN_DISTANCE_KM
    ra0, dec0 = plane.to_sky(np.array([0.0]), np.array([0.0]))
    exposures = sorted(observers)
    factor_of = dict(zip(exposures, parallax_factors(np.array([observers[e] for e in exposures]), float(ra0[0]),
                                                     float(dec0[0]))))
    p_exp = np.asarray(pool["exposure"]).astype(int)
    p_t, p_xi, p_eta, p_sig = (np.asarray(pool[c], float) for c in ("t_hours", "xi", "eta", "sigma"))
    p_flux = np.asarray(pool["flux"], float) if "flux" in pool.colnames else np.full(len(pool), np.nan)
    t_of = {int(e): float(np.median(p_t[p_exp == e])) for e in np.unique(p_exp)}
    key = [detection_key(pool, j) for j in range(len(pool))]
    taken_keys = {detection_key(slow, k) for trk in tracklets for k in trk.members}  # (never joins another)
    out, extra_rows = [], []
    for trk in tracklets:
        members = list(trk.members)
        if len(members) < min_members:
            out.append(trk)
            continue
        # the tracklet's own members (slow rows) and the joined ones (pool rows), as positions
        own = [(int(slow["exposure"][k]), float(slow["t_hours"][k]), float(slow["xi"][k]), float(slow["eta"][k]),
                float(slow["sigma"][k])) for k in members]
        if not all(math.isfinite(v) for row in own for v in row[1:]) or not all(row[4] > 0 for row in own):
            stats["n_unfittable"] += 1
            out.append(trk)
            continue
        joined: dict[int, int] = {}  # exposure -> pool row
        params = None
        level = float(np.nanmedian(np.asarray(slow["flux"], float)[members])) if "flux" in slow.colnames else np.nan
        for _ in range(rounds):
            rows = own + [(int(p_exp[j]), float(p_t[j]), float(p_xi[j]), float(p_eta[j]), float(p_sig[j]))
                          for j in joined.values()]
            e_, t_, x_, y_, s_ = (np.array(v) for v in zip(*rows))
            f_ = np.array([factor_of[int(e)] for e in e_])
            params, _, _ = fit_parallax_motion(t_, x_, y_, s_, f_)
            seen = {int(e) for e in e_[:len(own)]}
            new: dict[int, int] = {}
            for e in exposures:
                if e in seen or e not in t_of:
                    continue
                px, py = _predict(params, t_of[e], factor_of[e])
                here = np.nonzero(p_exp == e)[0]
                if not here.size:
                    continue
                here = here[np.isfinite(p_sig[here]) & (p_sig[here] > 0)]
                dist = np.hypot(p_xi[here] - px, p_eta[here] - py)
                s_pred = prediction_error(t_, x_, y_, s_, f_, params, t_of[e], factor_of[e])
                if not math.isfinite(s_pred):
                    continue  # (the parallax not told from the offset: the prediction says nothing)
                reach = np.minimum(nsigma * np.hypot(p_sig[here], s_pred) + floor, EXTEND_MAX_REACH)
                ok = (dist <= reach) & np.array([key[j] not in taken_keys for j in here])
                if math.isfinite(level) and level > 0:
                    flux = p_flux[here]
                    ok &= (flux >= level / EXTEND_FLUX_FACTOR) & (flux <= level * EXTEND_FLUX_FACTOR)
                if ok.any():
                    j = int(here[ok][np.argmin(dist[ok])])
                    new[e] = j
            if new == joined:
                break
            stats["n_left"] += len(set(joined) - set(new))
            joined = new
        stats["n_fitted"] += 1
        if not joined or not 0.0 < params[4] < w_max * (1.0 - 1e-9):
            # (no parallax in its positions: a straight motion, the linker's own business; hot pixels lined up with
            # the field's drift had grown so, by whatever lay on their line.  Held at the near bound: no distance
            # measured (an observer moving along the line of sight gives no parallax, and its bound had been said
            # as the fitted distance), or nearer than anything this extension is for)
            if joined:
                stats["n_no_parallax" if params[4] <= 0.0 else "n_at_bound"] += 1
            out.append(trk)
            continue
        stats["n_extended"] += 1
        stats["n_joined"] += len(joined)
        stats["distances_km"].append(float(round(206265.0 / params[4], 0)))
        first = len(slow) + len(extra_rows)
        extra_rows.extend(joined.values())
        taken_keys.update(key[j] for j in joined.values())
        all_members = members + list(range(first, first + len(joined)))
        rows = own + [(int(p_exp[j]), float(p_t[j]), float(p_xi[j]), float(p_eta[j]), float(p_sig[j]))
                      for j in joined.values()]
        order = np.argsort([r[1] for r in rows], kind="stable")
        all_members = [all_members[i] for i in order]
        t_, x_, y_, s_ = (np.array([rows[i][k] for i in order]) for k in (1, 2, 3, 4))
        p, cov, chi2, t_ref = fit_linear_motion(t_, x_, y_, s_)
        out.append(Tracklet(tuple(all_members), p[0], p[1], p[2], p[3], cov, chi2, 2 * len(all_members) - 4, t_ref))
    if extra_rows:
        added = pool[extra_rows]
        shared = [c for c in slow.colnames if c in added.colnames]
        slow = vstack([slow[shared], added[shared]], metadata_conflicts="silent")
    return out, slow, stats
