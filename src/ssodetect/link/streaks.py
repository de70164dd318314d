"""Linking trails (fast movers) across exposures.

A trail of sky length ``L`` [arcsec] in an exposure of ``T`` seconds implies a
rate ``L / T`` and a direction (its axis, sign unknown).  Two trails in
different exposures belong to one object when the displacement between their
centres agrees with both: its direction lies along both axes (within
``angle_tol`` plus the axis uncertainty of short trails), its length divided
by the time between them matches the implied rates (within ``rate_tol``
relative plus the length uncertainty), and their fluxes agree within
``max_flux_ratio``.  A measured trail may be shorter than the object's path
(cut by the detector edge or a mask, or its faint ends lost in the noise) but
never longer, so each implied rate is a lower bound on the rate between the
exposures, and at least one trail of a chain must match the chain's rate from
above as well (the one seen whole).  Consistent pairs are joined
into chains (one trail per exposure, at least ``min_exposures``), each fitted
with a straight line; while the line does not fit (reduced chi2 above
``max_chi2_dof``) the worst member is dropped, down to ``min_exposures``.  Positions in arcsec (tangent plane), times in hours.
"""
from __future__ import annotations

import math

import numpy as np

from ssodetect.link.tracklets import Tracklet, fit_linear_motion

__all__ = ["link_streaks"]


def _axis_diff(a, b):
    d = np.abs(a - b) % 180.0
    return np.minimum(d, 180.0 - d)


def link_streaks(
    exposure: np.ndarray,
    t_hours: np.ndarray,
    xi: np.ndarray,
    eta: np.ndarray,
    sigma: np.ndarray,
    length: np.ndarray,
    pa: np.ndarray,
    exptime: np.ndarray,
    *,
    flux: np.ndarray | None = None,
    whole: np.ndarray | None = None,
    min_exposures: int = 2,
    rate_tol: float = 0.1,
    length_err: float = 0.25,
    max_flux_ratio: float = 3.0,
    angle_tol: float = 3.0,
    max_chi2_dof: float = 10.0,
) -> list[Tracklet]:
    """Chains of consistent trails.

    Parameters
    ----------
    exposure, t_hours, xi, eta, sigma : ndarray (n,)
        Exposure index, mid-exposure time [h], position [arcsec], positional error [arcsec].
    length, pa : ndarray (n,)
        Trail length on the sky [arcsec] and axis position angle [deg, 0-180].
    exptime : ndarray (n,)
        Exposure times [s].
    flux : ndarray (n,), optional
        Trail fluxes; linked trails must agree within ``max_flux_ratio``.
    whole : ndarray (n,) bool, optional
        False for trails known to be cut (by the detector edge): never the member
        seen whole that a chain needs.  Default: all may be.
    min_exposures : int
        Fewest exposures in a chain.
    rate_tol : float
        Relative rate tolerance.
    length_err : float
        Absolute uncertainty of a trail length [arcsec] (PSF-limited ends).
    angle_tol : float
        Direction tolerance [deg].
    max_chi2_dof : float
        Largest reduced chi-square of the straight-line fit of a chain.
    max_flux_ratio : float
        Largest flux ratio between two linked trails.

    Returns
    -------
    list of Tracklet
        Members index the input arrays; longest chains first, no trail in two chains.
    """
    n = len(xi)
    if n < 2:
        return []
    rate = length / (exptime / 3600.0)  # arcsec/h
    length_rate_err = length_err / (exptime / 3600.0)
    flux = np.ones(n) if flux is None else np.asarray(flux, float)
    whole = np.ones(n, bool) if whole is None else np.asarray(whole, bool)
    axis_err = angle_tol + np.degrees(np.arctan2(0.3, np.maximum(length, 0.3)))
    adj: dict[int, set[int]] = {i: set() for i in range(n)}
    order = np.argsort(t_hours)
    for a_pos, i in enumerate(order):  # each trail against every later one (vectorised over the later ones)
        js = order[a_pos + 1 :]
        js = js[exposure[js] != exposure[i]]
        dt = t_hours[js] - t_hours[i]
        js, dt = js[dt > 0], dt[dt > 0]
        dx, dy = xi[js] - xi[i], eta[js] - eta[i]
        moved = np.hypot(dx, dy) / dt
        tol_i = rate_tol * np.maximum(moved, rate[i]) + length_rate_err[i]
        tol_j = rate_tol * np.maximum(moved, rate[js]) + length_rate_err[js]
        # a trail longer than the path between the exposures allows
        bad = (moved < rate[i] - tol_i) | (moved < rate[js] - tol_j)
        if flux[i] > 0:
            bad |= (flux[js] > 0) & (np.maximum(flux[i], flux[js]) > max_flux_ratio * np.minimum(flux[i], flux[js]))
        direction = np.degrees(np.arctan2(dx, dy)) % 180.0
        bad |= (_axis_diff(direction, pa[i]) > axis_err[i]) | (_axis_diff(direction, pa[js]) > axis_err[js])
        bad |= _axis_diff(pa[i], pa[js]) > axis_err[i] + axis_err[js]
        for j in js[~bad]:
            adj[int(i)].add(int(j))
            adj[int(j)].add(int(i))
    # connected components, one member per exposure (closest to the component's line)
    seen, chains = set(), []
    for start in range(n):
        if start in seen or not adj[start]:
            continue
        stack, comp = [start], []
        while stack:
            k = stack.pop()
            if k in seen:
                continue
            seen.add(k)
            comp.append(k)
            stack.extend(adj[k] - seen)
        chains.append(sorted(comp, key=lambda k: t_hours[k]))
    tracklets = []
    for comp in chains:
        remaining = list(comp)
        while len(remaining) >= min_exposures:
            best = _best_subset(remaining, adj, exposure, t_hours, xi, eta, sigma, rate, min_exposures, max_chi2_dof,
                                rate_tol, length_rate_err, whole)
            if best is None:
                break
            idx, params, cov, chi2, t_ref = best
            dof = 2 * idx.size - 4
            tracklets.append(Tracklet(tuple(int(k) for k in idx), params[0], params[1], params[2], params[3], cov,
                                      chi2, max(dof, 0), t_ref))
            remaining = [k for k in remaining if k not in set(idx.tolist())]
    tracklets.sort(key=lambda t: (-len(t.members), t.chi2))
    return tracklets


def _best_subset(comp, adj, exposure, t_hours, xi, eta, sigma, rate, min_exposures, max_chi2_dof, rate_tol,
                 length_rate_err, whole):
    """The largest set of trails, one per exposure, all pairwise consistent, whose line fits
    and of which at least one is as long as the fitted rate implies.

    Among equally large sets the lowest chi-square wins (for pairs: the closest rate agreement).
    Components are small (a handful of trails); the search is exhaustive up to 14 trails and
    greedy (largest exposures first) beyond.
    """
    from itertools import combinations

    comp = sorted(comp, key=lambda k: t_hours[k])
    if len(comp) > 14:
        comp = comp[:14]
    for size in range(min(len({int(exposure[k]) for k in comp}), len(comp)), min_exposures - 1, -1):
        best = None
        for combo in combinations(comp, size):
            if len({int(exposure[k]) for k in combo}) < size:
                continue
            if any(b not in adj[a] for a, b in combinations(combo, 2)):
                continue
            idx = np.array(combo)
            params, cov, chi2, t_ref = fit_linear_motion(t_hours[idx], xi[idx], eta[idx], sigma[idx])
            dof = 2 * size - 4
            if dof > 0 and chi2 / dof > max_chi2_dof:
                continue
            moved = math.hypot(params[2], params[3])
            if not np.any(whole[idx] & (rate[idx] >= moved - rate_tol * moved - length_rate_err[idx])):
                continue  # every trail shorter than the motion: none seen whole
            score = chi2 if dof > 0 else float(np.sum(np.abs(rate[idx] - moved) / rate[idx]))
            if best is None or score < best[0]:
                best = (score, idx, params, cov, chi2, t_ref)
        if best is not None:
            return best[1:]
    return None
