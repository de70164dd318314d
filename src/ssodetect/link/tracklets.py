"""Linking detections that move linearly into tracklets.

Every pair of detections in two seed exposures whose implied motion lies in
the searched rate range seeds a hypothesis; it is propagated to every other
exposure (vectorised over the seeds), where the nearest detection within the
predicted uncertainty joins it.  Hypotheses with at least ``min_detections``
members are fitted with a weighted straight line in each tangent-plane
coordinate, the worst member dropped while the line does not fit, the line
propagated once more to collect what the seed's extrapolation missed, and kept
when the reduced chi-square, the fitted rate and the flux consistency pass.
Duplicates are resolved greedily: more detections first, then lower
chi-square; no detection belongs to two tracklets.

Seeds: every pair of exposures for short sequences; in long ones only pairs a
few exposures apart (see :func:`_seed_pairs`).  Cost for N exposures with n
candidates each and p partners within the rate reach: O(N g n p N log n) with
g the seed gap (O(N^2 n p N log n) for short sequences).  Positions in arcsec,
times in hours.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["Tracklet", "fit_linear_motion", "link_tracklets"]


@dataclass(frozen=True)
class Tracklet:
    """A linked set of detections.

    Attributes
    ----------
    members : tuple of int
        Indices into the candidate arrays, in time order.
    x0, y0 : float
        Position at ``t_ref`` [arcsec, tangent plane].
    vx, vy : float
        Motion [arcsec/h] (``vx`` to the East, ``vy`` to the North).
    cov : ndarray (4, 4)
        Covariance of ``(x0, y0, vx, vy)``.
    chi2 : float
        Chi-square of the fit.
    dof : int
        Degrees of freedom (2 n - 4).
    t_ref : float
        Reference time of the fit [h].
    """

    members: tuple
    x0: float
    y0: float
    vx: float
    vy: float
    cov: np.ndarray
    chi2: float
    dof: int
    t_ref: float

    @property
    def rate(self) -> float:
        """Total motion [arcsec/h]."""
        return float(np.hypot(self.vx, self.vy))

    @property
    def rate_err(self) -> float:
        r = self.rate
        if r == 0:
            return float(np.sqrt(0.5 * (self.cov[2, 2] + self.cov[3, 3])))
        g = np.array([self.vx / r, self.vy / r])
        return float(np.sqrt(g @ self.cov[2:, 2:] @ g))

    @property
    def position_angle(self) -> float:
        """Direction of motion [deg], from North through East."""
        return float(np.degrees(np.arctan2(self.vx, self.vy)) % 360.0)


def fit_linear_motion(t, x, y, sigma):
    """Weighted straight-line fit of ``x(t)``, ``y(t)``.

    Parameters
    ----------
    t : ndarray (n,)
        Times [h].
    x, y : ndarray (n,)
        Positions [arcsec].
    sigma : ndarray (n,)
        Per-point isotropic 1-sigma uncertainty [arcsec].

    Returns
    -------
    params : ndarray (4,)
        ``(x0, y0, vx, vy)`` at the weighted mean time ``t_ref``.
    cov : ndarray (4, 4)
    chi2 : float
    t_ref : float
    """
    w = 1.0 / np.asarray(sigma, float) ** 2
    t = np.asarray(t, float)
    t_ref = float(np.sum(w * t) / np.sum(w))
    dt = t - t_ref
    sw, swt2 = np.sum(w), np.sum(w * dt * dt)
    params = np.empty(4)
    cov = np.zeros((4, 4))
    chi2 = 0.0
    for k, v in enumerate((np.asarray(x, float), np.asarray(y, float))):
        p0 = np.sum(w * v) / sw
        vel = np.sum(w * dt * v) / swt2 if swt2 > 0 else 0.0
        params[k], params[k + 2] = p0, vel
        cov[k, k] = 1.0 / sw
        cov[k + 2, k + 2] = 1.0 / swt2 if swt2 > 0 else np.inf
        chi2 += float(np.sum(w * (v - p0 - vel * dt) ** 2))
    return params, cov, chi2, t_ref


def link_tracklets(
    exposure: np.ndarray,
    t_hours: np.ndarray,
    xi: np.ndarray,
    eta: np.ndarray,
    sigma: np.ndarray,
    flux: np.ndarray,
    flux_err: np.ndarray,
    *,
    min_rate: float,
    max_rate: float,
    min_detections: int = 3,
    match_sigma: float = 4.0,
    match_floor: float = 0.03,
    max_chi2_dof: float = 4.0,
    max_flux_ratio: float = 4.0,
    min_rate_significance: float = 5.0,
    min_fraction: float = 0.5,
) -> list[Tracklet]:
    """Link candidate detections into tracklets of linear motion.

    Parameters
    ----------
    exposure : ndarray (n,) int
        Exposure index of each candidate.
    t_hours : ndarray (n,)
        Mid-exposure time of each candidate [h].
    xi, eta : ndarray (n,)
        Tangent-plane position [arcsec].
    sigma : ndarray (n,)
        Isotropic position uncertainty [arcsec].
    flux, flux_err : ndarray (n,)
        Flux and uncertainty (any unit).
    min_rate, max_rate : float
        Searched motion range [arcsec/h].
    min_detections : int
        Detections (distinct exposures) needed.
    match_sigma, match_floor : float
        Prediction tolerance: ``match_sigma * sigma_combined + match_floor`` [arcsec].
    max_chi2_dof : float
        Largest accepted reduced chi-square.
    max_flux_ratio : float
        Largest accepted ratio between member fluxes (after allowing 3 sigma).
    min_rate_significance : float
        The fitted rate must exceed this many times its uncertainty.
    min_fraction : float
        A tracklet must be detected in at least this fraction of the exposures
        within its time span (in long sequences, three chance alignments
        spread over many exposures are not an object).

    Returns
    -------
    list of Tracklet
        Disjoint tracklets, best first.  Empty list when nothing links.
    """
    n = len(xi)
    if n == 0:
        return []
    pos = np.column_stack([xi, eta])
    exposures = np.unique(exposure)
    if exposures.size < min_detections:
        return []
    groups = {e: np.nonzero(exposure == e)[0] for e in exposures}
    trees = {e: cKDTree(pos[idx]) for e, idx in groups.items()}
    times = np.array([float(np.median(t_hours[groups[e]])) for e in exposures])
    sig_max = float(np.max(sigma))
    hypotheses: dict[frozenset, Tracklet] = {}
    evaluate = dict(min_rate=min_rate, max_rate=max_rate, max_chi2_dof=max_chi2_dof, max_flux_ratio=max_flux_ratio,
                    min_rate_significance=min_rate_significance, min_detections=min_detections)
    for c1, c2 in _seed_pairs(exposures.size, min_fraction):
        e1, e2 = exposures[c1], exposures[c2]
        dt = times[c2] - times[c1]
        if dt <= 0:
            continue
        reach = max_rate * dt + match_sigma * np.sqrt(2.0) * sig_max + match_floor
        near = trees[e1].query_ball_tree(trees[e2], reach)
        counts = np.array([len(b) for b in near])
        if counts.sum() == 0:
            continue
        ia = np.repeat(groups[e1], counts)
        ib = groups[e2][np.concatenate([np.asarray(b, int) for b in near if b])]
        v = (pos[ib] - pos[ia]) / dt
        speed = np.hypot(v[:, 0], v[:, 1])
        speed_tol = match_sigma * np.hypot(sigma[ia], sigma[ib]) / dt
        ok = (speed <= max_rate + speed_tol) & (speed >= min_rate - speed_tol)
        ia, ib, v = ia[ok], ib[ok], v[ok]
        if ia.size == 0:
            continue
        members = np.full((ia.size, exposures.size), -1, dtype=np.int64)
        members[:, c1], members[:, c2] = ia, ib
        for c3, e3 in enumerate(exposures):
            if c3 in (c1, c2):
                continue
            f = (times[c3] - times[c1]) / dt
            pred = pos[ia] + v * (times[c3] - times[c1])
            sig_pred = np.hypot(sigma[ia] * (1.0 - f), sigma[ib] * f)
            tol = match_sigma * np.hypot(sig_pred, sig_max) + match_floor
            d, k = trees[e3].query(pred, k=1)
            cand = groups[e3][np.minimum(k, groups[e3].size - 1)]
            hit = (d <= tol) & (d <= match_sigma * np.hypot(sig_pred, sigma[cand]))
            members[hit, c3] = cand[hit]
        found = members >= 0
        count = found.sum(axis=1)
        first = np.argmax(found, axis=1)
        last = exposures.size - 1 - np.argmax(found[:, ::-1], axis=1)
        keep = (count >= min_detections) & (count >= min_fraction * (last - first + 1))
        for row in np.nonzero(keep)[0]:
            key = frozenset(int(m) for m in members[row][found[row]])
            if key in hypotheses:
                continue
            trk = _evaluate(key, t_hours, xi, eta, sigma, flux, flux_err, **evaluate)
            if trk is not None:
                trk = _regrow(trk, exposures, groups, trees, times, pos, sigma, t_hours, xi, eta, flux, flux_err,
                              match_sigma, match_floor, evaluate)
            if trk is not None and len(trk.members) >= min_fraction * _spanned(
                exposures, {int(exposure[i]): i for i in trk.members}
            ):
                hypotheses[key] = trk
    ranked = sorted(hypotheses.values(), key=lambda t: (-len(t.members), t.chi2 / max(t.dof, 1)))
    used: set[int] = set()
    accepted = []
    for trk in ranked:
        if used.isdisjoint(trk.members):
            accepted.append(trk)
            used.update(trk.members)
    return accepted


def _seed_pairs(n_exposures: int, min_fraction: float) -> list[tuple[int, int]]:
    """Pairs of exposure columns that seed hypotheses.

    Few exposures: every pair.  Long sequences: pairs at most ``g`` exposures apart,
    ``g = max(3, ceil(1 / min_fraction) + 1)``: an object detected in at least
    ``min_fraction`` of the exposures it spans has two detections that close, so no
    object is lost, and the cost grows as O(N) seeds instead of O(N^2).
    """
    gap = max(3, int(np.ceil(1.0 / max(min_fraction, 1e-3))) + 1)
    if n_exposures <= 2 * gap:
        return [(a, b) for a in range(n_exposures) for b in range(a + 1, n_exposures)]
    return [(a, b) for a in range(n_exposures) for b in range(a + 1, min(a + gap + 1, n_exposures))]


def _regrow(trk, exposures, groups, trees, times, pos, sigma, t_hours, xi, eta, flux, flux_err, match_sigma,
            match_floor, evaluate):
    """Collect the detections along a fitted tracklet in every exposure and refit (a seed from two
    close exposures extrapolates poorly; the fitted line of all its members does not)."""
    for _ in range(2):
        members = []
        for c, e in enumerate(exposures):
            dt = times[c] - trk.t_ref
            pred = np.array([trk.x0 + trk.vx * dt, trk.y0 + trk.vy * dt])
            var = trk.cov[0, 0] + 2 * dt * trk.cov[0, 2] + dt * dt * trk.cov[2, 2]
            sig_pred = float(np.sqrt(max(var, 0.0)))
            d, k = trees[e].query(pred, k=1)
            idx = int(groups[e][min(k, groups[e].size - 1)])
            if d <= match_sigma * np.hypot(sig_pred, sigma[idx]) + match_floor:
                members.append(idx)
        if set(members) == set(trk.members) or len(members) < evaluate["min_detections"]:
            return trk
        grown = _evaluate(frozenset(members), t_hours, xi, eta, sigma, flux, flux_err, **evaluate)
        if grown is None or len(grown.members) < len(trk.members):
            return trk
        trk = grown
    return trk


def _spanned(exposures: np.ndarray, members: dict) -> int:
    """Exposures within the time span of a tracklet's members (``members`` keyed by exposure)."""
    first, last = min(members), max(members)
    return int(np.sum((exposures >= first) & (exposures <= last)))


def _evaluate(
    members, t_hours, xi, eta, sigma, flux, flux_err, *, min_rate, max_rate, max_chi2_dof, max_flux_ratio,
    min_rate_significance, min_detections=3,
):
    """Fit a candidate set; while the line does not fit, drop the worst-fitting member (long
    sequences: one blend or one mis-assigned detection must not lose the object)."""
    idx = np.array(sorted(members, key=lambda i: t_hours[i]))
    while True:
        params, cov, chi2, t_ref = fit_linear_motion(t_hours[idx], xi[idx], eta[idx], sigma[idx])
        dof = 2 * idx.size - 4
        if chi2 / max(dof, 1) <= max_chi2_dof:
            break
        if idx.size <= min_detections:
            return None
        dt = t_hours[idx] - t_ref
        resid = np.hypot(xi[idx] - params[0] - params[2] * dt, eta[idx] - params[1] - params[3] * dt) / sigma[idx]
        idx = np.delete(idx, int(np.argmax(resid)))
    rate = float(np.hypot(params[2], params[3]))
    rate_err = float(np.sqrt(0.5 * (cov[2, 2] + cov[3, 3])))
    if rate > max_rate + 2 * rate_err or rate < min_rate or rate < min_rate_significance * rate_err:
        return None
    f, fe = flux[idx], flux_err[idx]
    hi = np.max(f - 3.0 * fe)
    lo = np.min(f + 3.0 * fe)
    if lo <= 0 or hi / lo > max_flux_ratio:
        return None
    return Tracklet(tuple(int(i) for i in idx), params[0], params[1], params[2], params[3], cov, chi2, dof, t_ref)
