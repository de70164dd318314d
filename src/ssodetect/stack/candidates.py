"""From likelihood maps to vetted shift-and-stack candidates on one CCD.

:func:`search` runs the whole search on the difference images of one CCD: velocities on a grid
whose step moves a trajectory by at most ``grid_fraction`` of the PSF FWHM over the sequence;
velocities grouped by the trail they draw during an exposure (point PSF while the trail is shorter
than the PSF, else a trailed kernel per bin of length and direction); for each group the psi/phi
images of every exposure (``n_exp`` x 2 images in memory at a time: the memory bound) and the best
trajectory per start pixel over its velocities in blocks.  Peaks of the best-likelihood map above
``threshold`` are candidates; each is re-evaluated exposure by exposure and kept when its flux is
positive in (nearly) every exposure, no exposure dominates the sum and the significance after
sigma-G clipping of the per-exposure terms still passes and the per-exposure fluxes agree with
the combined one (chi-square, p > 0.001: cosmic-ray residuals strung along a trajectory do not);
duplicates (the same mover at neighbouring
start pixels and velocities) are merged.

Positions are on the first exposure's pixel grid (0-based); velocities in px/h; times in hours
from the first exposure.
"""
from __future__ import annotations

import logging
import math

import numpy as np
from astropy.table import Table
from scipy.ndimage import label, maximum_position

from ssodetect.stack.search import Likelihood, stack_best, trail_kernel, trajectory_terms, velocity_grid

log = logging.getLogger(__name__)

__all__ = ["search", "CANDIDATE_COLUMNS"]

CANDIDATE_COLUMNS = ["x", "y", "vx", "vy", "nu", "flux", "flux_err", "n_good", "max_fraction"]


_LENGTH_RATIO = 1.3  # neighbouring trailed kernels differ in length by this factor


def _kernel_groups(velocities: np.ndarray, exptime_h: float, sigma: float) -> tuple[np.ndarray, dict]:
    """Kernel of each velocity: the point PSF while the trail is shorter than 1.5 sigma, else a trailed kernel per
    bin of length (geometric, ratio 1.3) and direction (the trail's ends stay within sigma of the bin's axis).

    Returns the group index of every velocity and ``{group: (length, angle)}`` [px, rad].
    """
    length = np.hypot(velocities[:, 0], velocities[:, 1]) * exptime_h
    angle = np.mod(np.arctan2(velocities[:, 1], velocities[:, 0]), np.pi)
    shortest = 1.5 * sigma
    lbin = np.where(length < shortest, 0,
                    1 + np.floor(np.log(np.maximum(length, shortest) / shortest) / math.log(_LENGTH_RATIO))).astype(int)
    centre = shortest * _LENGTH_RATIO ** (lbin - 0.5)
    n_angles = np.maximum(4, np.ceil(np.pi * centre / (4.0 * sigma))).astype(int)
    abin = np.where(lbin == 0, 0, np.floor(angle / (np.pi / n_angles)).astype(int) % n_angles)
    keys = sorted(set(zip(lbin.tolist(), abin.tolist())))
    index = {k: i for i, k in enumerate(keys)}
    groups = np.array([index[k] for k in zip(lbin.tolist(), abin.tolist())], dtype=int)
    params = {}
    for (lb, ab), i in index.items():
        if lb == 0:
            params[i] = (0.0, 0.0)
        else:
            c = shortest * _LENGTH_RATIO ** (lb - 0.5)
            na = max(4, int(math.ceil(math.pi * c / (4.0 * sigma))))
            params[i] = (c, (ab + 0.5) * math.pi / na)
    return groups, params


def _vet(p: np.ndarray, f: np.ndarray, n_exp: int, threshold: float):
    """Exposure-by-exposure checks of one trajectory's terms; (nu, flux, flux_err, n_good, share) or None."""
    good = f > 0
    if good.sum() < max(2, n_exp - 1):
        return None
    lh = np.where(good, p / np.sqrt(np.where(good, f, 1.0)), 0.0)
    # sigma-G clipping of the per-exposure terms (robust to one bright artefact)
    q25, q50, q75 = np.percentile(lh[good], [25, 50, 75])
    keep = good & (np.abs(lh - q50) <= max(2.0 * 0.7413 * (q75 - q25), 1.0))
    if keep.sum() < max(2, n_exp - 1):
        return None
    nu = float(p[keep].sum() / math.sqrt(f[keep].sum()))
    # flux consistency: the per-exposure fluxes psi/phi (errors 1/sqrt(phi)) agree with the combined one
    flux = float(p[keep].sum() / f[keep].sum())
    if float(np.sum((p[keep] / f[keep] - flux) ** 2 * f[keep])) > chi2_max(int(keep.sum()) - 1):
        return None
    total = float(np.sum(np.clip(lh[keep], 0, None)))
    share = float(np.max(np.clip(lh[keep], 0, None)) / total) if total > 0 else 1.0
    if nu < threshold or share > 0.5 + 0.5 / n_exp or int(np.sum(p[keep] > 0)) < max(2, n_exp - 1):
        return None
    return nu, flux, 1.0 / math.sqrt(f[keep].sum()), int(keep.sum()), share


def chi2_max(dof: int, p_value: float = 1e-3) -> float:
    """Chi-square a consistent set of ``dof + 1`` fluxes exceeds with probability ``p_value``."""
    from scipy.stats import chi2

    return float(chi2.isf(p_value, max(dof, 1)))


def _terms(psi, phi, x, y, dx, dy):
    n_exp, ny, nx = psi.shape
    p = np.zeros(n_exp)
    f = np.zeros(n_exp)
    for e in range(n_exp):
        xx, yy = x + dx[e], y + dy[e]
        if 0 <= xx < nx and 0 <= yy < ny:
            p[e], f[e] = psi[e, yy, xx], phi[e, yy, xx]
    return p, f


def search(diff: np.ndarray, var: np.ndarray, times_h: np.ndarray, sigma: float, exptime_h: float, *,
           rate_min: float, rate_max: float, threshold: float = 7.0, grid_fraction: float = 0.5,
           block: int = 512, max_candidates: int = 2000) -> Table:
    """Shift-and-stack search of one CCD.

    Parameters
    ----------
    diff, var : ndarray (n_exp, ny, nx)
        Difference images and variances on one grid (NaN masked).
    times_h : ndarray (n_exp,)
        Mid-exposure times [h] from the first exposure.
    sigma : float
        PSF Gaussian sigma [px].
    exptime_h : float
        Exposure time [h] (trail length = rate x exposure time).
    rate_min, rate_max : float
        Rates searched [px/h].
    threshold : float
        Significance a candidate needs [sigma] (raise it with the number of trajectories tried).

    Returns
    -------
    Table
        :data:`CANDIDATE_COLUMNS`: start pixel (x, y) at ``times_h = 0``, velocity, significance,
        flux [ADU] and its error, exposures with positive flux, largest single-exposure share.
    """
    n_exp, ny, nx = diff.shape
    span = float(np.ptp(times_h))
    fwhm = 2.3548 * sigma
    velocities = velocity_grid(rate_min, rate_max, span, fwhm, exptime=exptime_h, fraction=grid_fraction)
    groups, params = _kernel_groups(velocities, exptime_h, sigma)
    log.info("stack: %d velocities in %d kernel groups, %d x %d px, %d exposures",
             len(velocities), len(params), nx, ny, n_exp)
    likelihood = Likelihood(diff, var, sigma, max_length=max(p[0] for p in params.values()))
    rows = []
    negative: list[float] = []
    for group, (length, angle) in params.items():
        psi, phi = likelihood.images(trail_kernel(sigma, length, angle))
        min_phi = 0.5 * float(np.median(phi[phi > 0])) * n_exp  # trajectories mostly off the image or masked: skipped
        idx = np.nonzero(groups == group)[0]
        for sign in (1.0, -1.0):  # the sign-flipped search measures what noise and residuals alone reach
            best = None
            for start in range(0, idx.size, block):
                sub = idx[start : start + block]
                dx, dy = trajectory_terms(velocities[sub], times_h)
                best = stack_best(psi, phi, dx, dy, best, v_offset=start, min_phi=min_phi, sign=sign)
            peaks = best["nu"] >= threshold
            if not peaks.any():
                continue
            labels, n = label(peaks)
            positions = maximum_position(best["nu"], labels, range(1, n + 1))
            order = np.argsort([-best["nu"][py, px] for py, px in positions])[:max_candidates]
            for j in order:
                py, px = positions[j]
                k = int(idx[best["v"][py, px]])
                dx, dy = trajectory_terms(velocities[k : k + 1], times_h)
                p, f = _terms(sign * psi, phi, int(px), int(py), dx[0], dy[0])
                row = _vet(p, f, n_exp, threshold)
                if row is None:
                    continue
                if sign > 0:
                    rows.append((int(px), int(py), velocities[k, 0], velocities[k, 1]) + row)
                else:
                    negative.append(row[0])
    # the significance the sign-flipped search reaches after the same vetting: positives must beat it
    floor = max(negative) if negative else threshold
    log.info("stack: %d vetted candidates, %d in the sign-flipped search (up to nu %.1f)", len(rows), len(negative), floor)
    rows = [r for r in rows if r[4] > floor]
    table = Table(rows=rows, names=CANDIDATE_COLUMNS,
                  dtype=[float, float, float, float, float, float, float, int, float]) if rows else Table(
        names=CANDIDATE_COLUMNS, dtype=[float, float, float, float, float, float, float, int, float])
    return _merge(table, times_h, fwhm)


def _merge(table: Table, times_h: np.ndarray, fwhm: float) -> Table:
    """One candidate per mover: trajectories within 3 FWHM of each other in all exposures but one merge into the best."""
    if len(table) < 2:
        return table
    order = np.argsort(-np.asarray(table["nu"]))
    t = np.asarray(times_h)
    pos = [np.column_stack([table["x"][k] + table["vx"][k] * t, table["y"][k] + table["vy"][k] * t]) for k in order]
    kept: list[int] = []
    for j, k in enumerate(order):
        if any(np.sum(np.hypot(*(pos[j] - pos[list(order).index(m)]).T) < 3.0 * fwhm) >= max(2, len(t) - 1)
               for m in kept):
            continue
        kept.append(int(k))
    return table[sorted(kept, key=lambda m: -float(table["nu"][m]))]
