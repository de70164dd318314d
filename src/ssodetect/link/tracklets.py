"""Linking detections that move linearly into tracklets.

Every pair of detections in two exposures whose implied motion lies in the
searched rate range seeds a hypothesis; it is propagated to every other
exposure, where the nearest detection within the predicted uncertainty joins
it.  Hypotheses with at least ``min_detections`` members are fitted with a
weighted straight line in each tangent-plane coordinate and kept when the
reduced chi-square, the fitted rate and the flux consistency pass.  Duplicates
are resolved greedily: more detections first, then lower chi-square; no
detection belongs to two tracklets.

Cost: for N exposures with n candidates each and a mean number p of partners
within the rate reach, O(N^2 n p N log n).  Positions in arcsec, times in hours.
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
    times = {e: float(np.median(t_hours[groups[e]])) for e in exposures}
    sig_max = float(np.max(sigma))
    hypotheses: dict[frozenset, Tracklet] = {}
    for a_pos, e1 in enumerate(exposures):
        for e2 in exposures[a_pos + 1 :]:
            dt = times[e2] - times[e1]
            if dt <= 0:
                continue
            reach = max_rate * dt + match_sigma * np.sqrt(2.0) * sig_max + match_floor
            pairs = trees[e1].query_ball_tree(trees[e2], reach)
            for a, bs in enumerate(pairs):
                if not bs:
                    continue
                ia = groups[e1][a]
                for b in bs:
                    ib = groups[e2][b]
                    v = (pos[ib] - pos[ia]) / dt
                    speed = float(np.hypot(*v))
                    speed_tol = match_sigma * np.hypot(sigma[ia], sigma[ib]) / dt
                    if speed > max_rate + speed_tol or speed < min_rate - speed_tol:
                        continue
                    members = {e1: ia, e2: ib}
                    for e3 in exposures:
                        if e3 in members:
                            continue
                        f = (times[e3] - times[e1]) / dt
                        pred = pos[ia] + v * (times[e3] - times[e1])
                        sig_pred = np.hypot(sigma[ia] * (1.0 - f), sigma[ib] * f)
                        tol = match_sigma * np.hypot(sig_pred, sig_max) + match_floor
                        near = trees[e3].query_ball_point(pred, tol)
                        if not near:
                            continue
                        idx = groups[e3][np.asarray(near)]
                        d = np.hypot(*(pos[idx] - pred).T) / np.hypot(sig_pred, sigma[idx])
                        best = int(np.argmin(d))
                        if d[best] <= match_sigma:
                            members[e3] = int(idx[best])
                    if len(members) < min_detections or len(members) < min_fraction * _spanned(exposures, members):
                        continue
                    key = frozenset(members.values())
                    if key in hypotheses:
                        continue
                    trk = _evaluate(
                        key, t_hours, xi, eta, sigma, flux, flux_err,
                        min_rate=min_rate, max_rate=max_rate, max_chi2_dof=max_chi2_dof, max_flux_ratio=max_flux_ratio,
                        min_rate_significance=min_rate_significance, min_detections=min_detections,
                    )
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
