"""From likelihood maps to vetted shift-and-stack candidates on one CCD.

:func:`search` runs the whole search on the difference images of one CCD.  Velocities lie on a
polar grid (:func:`~ssodetect.stack.search.velocity_grid`) and are grouped by the trail they draw
during an exposure: the point PSF while it is shorter than 1.5 sigma, else a trailed kernel per bin
of length and direction.  For each group the psi/phi images of every exposure are made (``2 n_exp``
images in memory at a time, plus the forward transforms: the memory bound, independent of the
number of trajectories) and the best trajectory per start pixel is kept over its velocities,
streamed in blocks.  Peaks of the best-significance map above ``threshold`` are candidates; each
is re-examined exposure by exposure (:func:`_vet`): enough unmasked exposures, pixels that look
like the (trailed) PSF in each (cosmic-ray tracks one pixel wide do not), no single high outlier,
positive fluxes that agree with each other, no exposure holding half of the signal.  Fragments and
duplicates of one mover are merged.

Positions are on the first exposure's pixel grid (0-based); velocities in px/h; times in hours
from the first exposure.
"""
from __future__ import annotations

import logging
import math

import numpy as np
from astropy.table import Table
from scipy.ndimage import label, maximum_position
from tqdm import tqdm

from ssodetect.errors import ConfigError
from ssodetect.stack.search import (Likelihood, stack_best, stack_best_torch, trail_kernel, trajectory_terms,
                                    velocity_count, velocity_grid)

log = logging.getLogger(__name__)

#: Most velocities (trajectories per pixel) the search tries: each is a pass over every pixel of the CCD (the default
#: 0.5-10"/h on a Euclid CCD over 0.92 h: ~7e3).
MAX_VELOCITIES = 2_000_000

__all__ = ["search", "CANDIDATE_COLUMNS"]

CANDIDATE_COLUMNS = ["x", "y", "vx", "vy", "nu", "flux", "flux_err", "n_good", "max_fraction"]


_LENGTH_RATIO = 1.3  # neighbouring trailed kernels differ in length by this factor


def _kernel_groups(velocities: np.ndarray, exptime_h: float, sigma: float) -> tuple[np.ndarray, dict]:
    """Kernel of each velocity: the point PSF while the trail is shorter than 1.5 sigma, else a trailed kernel per
    bin of length (geometric, ratio 1.3) and direction (the trail's ends stay within sigma of the bin's axis).

    Returns the group index of every velocity and ``{group: (length, angle)}`` [px, rad].
    """
    shortest = 1.5 * sigma

    def centre(lbin):  # geometric centre of a length bin [px]
        return shortest * _LENGTH_RATIO ** (np.asarray(lbin) - 0.5)

    def n_angles(lbin):  # direction bins over 180 deg for a length bin
        return np.maximum(4, np.ceil(np.pi * centre(lbin) / (4.0 * sigma))).astype(int)

    length = np.hypot(velocities[:, 0], velocities[:, 1]) * exptime_h
    angle = np.mod(np.arctan2(velocities[:, 1], velocities[:, 0]), np.pi)
    lbin = np.where(length < shortest, 0,
                    1 + np.floor(np.log(np.maximum(length, shortest) / shortest) / math.log(_LENGTH_RATIO))).astype(int)
    abin = np.where(lbin == 0, 0, np.floor(angle / (np.pi / n_angles(lbin))).astype(int) % n_angles(lbin))
    keys = sorted(set(zip(lbin.tolist(), abin.tolist())))
    index = {k: i for i, k in enumerate(keys)}
    groups = np.array([index[k] for k in zip(lbin.tolist(), abin.tolist())], dtype=int)
    params = {i: (0.0, 0.0) if lb == 0 else (float(centre(lb)), (ab + 0.5) * math.pi / int(n_angles(lb)))
              for (lb, ab), i in index.items()}
    return groups, params


def _stamp(diff: np.ndarray, var: np.ndarray, kernel: np.ndarray, x: int, y: int, r: int):
    """Pixels, variances, kernel values and validity of the ``2r+1`` square around ``(x, y)`` (clipped at the edges)."""
    ny, nx = diff.shape
    half = kernel.shape[0] // 2
    y0, y1, x0, x1 = max(0, y - r), min(ny, y + r + 1), max(0, x - r), min(nx, x + r + 1)
    d = diff[y0:y1, x0:x1]
    v = var[y0:y1, x0:x1]
    k = np.zeros(d.shape)
    ky0, kx0 = half - (y - y0), half - (x - x0)
    sub = kernel[max(ky0, 0) : ky0 + d.shape[0], max(kx0, 0) : kx0 + d.shape[1]]
    k[max(-ky0, 0) : max(-ky0, 0) + sub.shape[0], max(-kx0, 0) : max(-kx0, 0) + sub.shape[1]] = sub
    ok = np.isfinite(d) & np.isfinite(v) & (v > 0)
    return d, v, k, ok, (y - y0, x - x0)


def _fit_chi2(d, w, model) -> tuple[float, float]:
    """Chi-square of the best amplitude times ``model`` (weighted least squares) and the amplitude."""
    a = float(np.sum(w * model**2))
    if a <= 0:
        return float(np.sum(w * d**2)), 0.0
    amp = float(np.sum(w * model * d)) / a
    return float(np.sum(w * (d - amp * model) ** 2)), amp


def _exposure_tests(diff: np.ndarray, var: np.ndarray, kernel: np.ndarray, x: int, y: int, *, mismatch: float = 0.15,
                    line_half: int = 5) -> tuple[float, float, float, float]:
    """Measure and test one exposure of a candidate at ``(x, y)``: ``(flux, flux_err, excess, line_gain)``.

    ``flux``, ``flux_err``: ``flux * kernel + background`` fitted (weighted least squares) to a stamp
    of at least ``2 line_half + 1`` px covering the kernel: a local pedestal (background left by
    neighbouring objects) does not count as flux.
    ``excess``: the chi-square of the best-fitting ``flux * kernel`` on a stamp just covering the
    kernel's core, minus its degrees of freedom and ``mismatch * nu^2`` (a real source off the
    integer trajectory position by half a pixel leaves ~10 % of its chi-square), in sigma of that
    chi-square: hot pixels, blobs and residual edges give many sigma, a faint mover or noise ~0.
    ``line_gain``: how much better (in chi-square) a one-pixel-wide line across a ``2 line_half + 1``
    stamp, along a row, a column or a diagonal, fits than the kernel does: faint cosmic-ray tracks are
    such lines, while a PSF -- even trailed -- spreads into the neighbouring rows.
    All NaN when the stamps are mostly masked.
    """
    nan = (float("nan"),) * 4
    half = kernel.shape[0] // 2
    r = min(half, max(2, int(np.ceil(np.sqrt(np.sum(kernel > 0.05 * kernel.max())) / 2.0))))
    d, v, k, ok, _ = _stamp(diff, var, kernel, x, y, r)
    if ok.sum() < 0.5 * ok.size or ok.sum() < 6:
        return nan
    w = np.where(ok, 1.0 / np.where(ok, v, 1.0), 0.0)
    d = np.where(ok, d, 0.0)
    chi2, amp = _fit_chi2(d, w, k)
    dof = int(ok.sum()) - 1
    excess = (chi2 - dof - mismatch * amp**2 * float(np.sum(w * k**2))) / math.sqrt(2.0 * dof)
    d, v, k, ok, (cy, cx) = _stamp(diff, var, kernel, x, y, line_half)
    w = np.where(ok, 1.0 / np.where(ok, v, 1.0), 0.0)
    d = np.where(ok, d, 0.0)
    chi2_psf, _ = _fit_chi2(d, w, k)
    yy, xx = np.mgrid[0 : d.shape[0], 0 : d.shape[1]]
    lines = (yy == cy, xx == cx, (yy - cy) == (xx - cx), (yy - cy) == -(xx - cx))
    best_line = min(_fit_chi2(d, w, line.astype(float))[0] for line in lines)
    # flux and background together (normal equations of the two-parameter fit) on a stamp covering the kernel
    d, v, k, ok, _ = _stamp(diff, var, kernel, x, y, max(line_half, half))
    if ok.sum() < 0.5 * ok.size:
        return nan
    w = np.where(ok, 1.0 / np.where(ok, v, 1.0), 0.0)
    d = np.where(ok, d, 0.0)
    a = np.array([[np.sum(w * k * k), np.sum(w * k)], [np.sum(w * k), np.sum(w)]])
    b = np.array([np.sum(w * k * d), np.sum(w * d)])
    try:
        cov = np.linalg.inv(a)
    except np.linalg.LinAlgError:
        return nan
    flux = float((cov @ b)[0])
    return flux, float(math.sqrt(max(cov[0, 0], 1e-30))), float(excess), float(chi2_psf - best_line)


def _vet(f: np.ndarray, typical: np.ndarray, tests: np.ndarray, threshold: float, *, max_excess: float = 4.0,
         max_line_gain: float = 3.0):
    """Exposure-by-exposure checks of one trajectory; (nu, flux, flux_err, n_good, share) or None.

    ``f``: the trajectory's information (phi) in each exposure; an exposure counts when it is at
    least half the ``typical`` one (not masked, on the image).  ``tests`` (n, 4): flux, its error,
    shape excess and line gain from :func:`_exposure_tests`.  Exposures where the pixels do not
    look like the PSF (excess above ``max_excess`` sigma, or a one-pixel-wide line fitting better
    by more than ``max_line_gain``) or whose significance is a high outlier (sigma-G) are left out;
    at least ``max(3, 3/4 n)`` exposures (``n - 1`` of 4) must remain, with positive fluxes that
    agree (chi-square, p > 0.01), no exposure holding half of the signal and a combined
    significance (inverse-variance weighted flux over its error) >= ``threshold``.
    """
    n_exp = len(f)
    need = max(min(3, n_exp), int(math.ceil(0.75 * n_exp)))
    flux_e, err_e, excess, line_gain = tests.T
    good = (f >= 0.5 * typical) & np.isfinite(flux_e) & (err_e > 0)
    if good.sum() < need:
        return None
    lh = np.where(good, flux_e / np.where(good, err_e, 1.0), 0.0)
    q25, q50, q75 = np.percentile(lh[good], [25, 50, 75])
    artefact = (excess > max_excess) | (line_gain > max_line_gain)
    keep = good & (lh - q50 <= max(2.0 * 0.7413 * (q75 - q25), 1.0)) & ~artefact
    if keep.sum() < need or np.sum(lh[keep] > 0) < need:
        return None
    wgt = 1.0 / err_e[keep] ** 2
    flux = float(np.sum(wgt * flux_e[keep]) / wgt.sum())
    flux_err = float(1.0 / math.sqrt(wgt.sum()))
    nu = flux / flux_err
    if float(np.sum(wgt * (flux_e[keep] - flux) ** 2)) > chi2_max(int(keep.sum()) - 1):
        return None
    positive = np.clip(lh[keep], 0, None)
    share = float(positive.max() / positive.sum()) if positive.sum() > 0 else 1.0
    if nu < threshold or share > 0.5:
        return None
    return nu, flux, flux_err, int(keep.sum()), share


def chi2_max(dof: int, p_value: float = 0.01) -> float:
    """Chi-square a consistent set of ``dof + 1`` fluxes exceeds with probability ``p_value``."""
    from scipy.stats import chi2

    return float(chi2.isf(p_value, max(dof, 1)))


def _backend(name: str):
    """The stack kernel for ``name`` (numba, torch or auto)."""
    if name == "numba":
        return stack_best
    if name == "auto":
        try:
            import torch
        except ImportError:
            return stack_best
        return stack_best_torch if torch.cuda.is_available() else stack_best
    if name == "torch":
        return stack_best_torch
    raise ValueError(f"unknown stack backend {name!r} (numba, torch or auto)")


def search(diff: np.ndarray, var: np.ndarray, times_h: np.ndarray, sigma: float, exptime_h: float, *,
           rate_min: float, rate_max: float, threshold: float = 7.5, grid_fraction: float = 0.5,
           block: int = 512, max_candidates: int = 2000, backend: str = "numba", progress: bool = False) -> Table:
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
    grid_fraction : float
        Velocity grid tolerance (:func:`~ssodetect.stack.search.velocity_grid`).
    block : int
        Velocities per kernel call.
    max_candidates : int
        Peaks examined per kernel group, strongest first.
    backend : {"numba", "torch", "auto"}
        Stack kernel: numba on the CPU, PyTorch (a CUDA GPU when present), or "auto" (PyTorch when a
        CUDA GPU is usable, else numba).
    progress : bool
        Show a progress bar over the kernel groups.

    Returns
    -------
    Table
        :data:`CANDIDATE_COLUMNS`: start pixel (x, y) at ``times_h = 0``, velocity, significance,
        flux [ADU] and its error, exposures with positive flux, largest single-exposure share.
    """
    n_exp, ny, nx = diff.shape
    span = float(np.ptp(times_h))
    fwhm = 2.3548 * sigma
    count = velocity_count(rate_min, rate_max, span, fwhm, exptime=exptime_h, fraction=grid_fraction)
    if count > MAX_VELOCITIES:  # (each is a pass over every pixel: 1e6"/h had grown to 24 GB before any work)
        raise ConfigError(f"stack: the rates searched ({rate_min:g}-{rate_max:g} px/h over {span:.3g} h) make "
                          f"{count:.3g} trajectories per pixel, more than {MAX_VELOCITIES:.0e}: lower [stack] rate_max "
                          "or raise grid_fraction")
    velocities = velocity_grid(rate_min, rate_max, span, fwhm, exptime=exptime_h, fraction=grid_fraction)
    # the matched kernel is the PSF blurred by pixel integration and by rounding trajectories to whole pixels
    # (1/12 px^2 each): measured on simulated Euclid movers, +5 % in significance over the bare PSF sigma
    ksigma = math.sqrt(sigma**2 + 1.0 / 6.0)
    groups, params = _kernel_groups(velocities, exptime_h, ksigma)
    log.info("stack: %d velocities in %d kernel groups, %d x %d px, %d exposures",
             len(velocities), len(params), nx, ny, n_exp)
    likelihood = Likelihood(diff, var, ksigma, max_length=max(p[0] for p in params.values()))
    kernel_call = _backend(backend)
    rows = []
    for group, (length, angle) in tqdm(params.items(), desc="stack", unit="kernel", disable=not progress, leave=False):
        kernel = trail_kernel(ksigma, length, angle)
        psi, phi = likelihood.images(kernel)
        # psi/phi estimates flux * <K, P> / <K, K> for a source of (trailed) PSF P: undo that factor
        psf = trail_kernel(sigma, length, angle)
        cut = (kernel.shape[0] - psf.shape[0]) // 2
        flux_scale = float(np.sum(kernel**2) / np.sum(kernel[cut : cut + psf.shape[0], cut : cut + psf.shape[0]] * psf))
        typical = np.array([np.median(phi[e][phi[e] > 0]) if (phi[e] > 0).any() else np.inf for e in range(n_exp)])
        min_phi = 0.5 * float(typical[np.isfinite(typical)].sum())  # trajectories mostly off the image or masked
        idx = np.nonzero(groups == group)[0]
        best = None
        for start in range(0, idx.size, block):
            sub = idx[start : start + block]
            dx, dy = trajectory_terms(velocities[sub], times_h)
            best = kernel_call(psi, phi, dx, dy, best, v_offset=start, min_phi=min_phi)
        peaks = best["nu"] >= threshold
        if not peaks.any():
            continue
        labels, n = label(peaks)
        positions = maximum_position(best["nu"], labels, range(1, n + 1))
        order = np.argsort([-best["nu"][py, px] for py, px in positions])[:max_candidates]
        n_vetted = 0
        for j in order:
            py, px = positions[j]
            k = int(idx[best["v"][py, px]])
            dx, dy = trajectory_terms(velocities[k : k + 1], times_h)
            xs, ys = px + dx[0], py + dy[0]
            inside = (xs >= 0) & (xs < nx) & (ys >= 0) & (ys < ny)
            at = (np.arange(n_exp), np.clip(ys, 0, ny - 1), np.clip(xs, 0, nx - 1))
            p = np.where(inside, psi[at], 0.0)
            f = np.where(inside, phi[at], 0.0)
            tests = np.array([_exposure_tests(diff[e], var[e], kernel, int(xs[e]), int(ys[e])) if inside[e]
                              else (np.nan,) * 4 for e in range(n_exp)])
            row = _vet(f, typical, tests, threshold)
            if row is not None:
                nu_c, flux, flux_err, n_good, share = row
                rows.append((int(px), int(py), velocities[k, 0], velocities[k, 1], nu_c, flux * flux_scale,
                             flux_err * flux_scale, n_good, share))
                n_vetted += 1
                log.debug("stack: candidate x %d y %d v (%.1f, %.1f) nu %.1f; per exposure stacked nu %s, measured nu %s, "
                          "information %s, shape excess %s, line gain %s", px, py, velocities[k, 0], velocities[k, 1],
                          nu_c, np.round(p / np.sqrt(np.maximum(f, 1e-30)), 1), np.round(tests[:, 0] / tests[:, 1], 1),
                          np.round(f / typical, 2), np.round(tests[:, 2], 1), np.round(tests[:, 3], 1))
        log.debug("stack: kernel %.1f px at %.0f deg: %d peaks above %.1f, %d vetted", length, math.degrees(angle), n,
                  threshold, n_vetted)
    log.info("stack: %d vetted candidates", len(rows))
    table = Table(rows=rows, names=CANDIDATE_COLUMNS,
                  dtype=[float, float, float, float, float, float, float, int, float]) if rows else Table(
        names=CANDIDATE_COLUMNS, dtype=[float, float, float, float, float, float, float, int, float])
    return _merge(table, times_h, fwhm)


def _merge(table: Table, times_h: np.ndarray, fwhm: float) -> Table:
    """One candidate per mover: a trajectory within 3 FWHM of a stronger one in two exposures or more is the same mover
    (or a fragment of it) and is dropped."""
    if len(table) < 2:
        return table
    t = np.asarray(times_h)
    pos = {k: np.column_stack([table["x"][k] + table["vx"][k] * t, table["y"][k] + table["vy"][k] * t])
           for k in range(len(table))}
    kept: list[int] = []
    for k in np.argsort(-np.asarray(table["nu"])):
        if not any(np.sum(np.hypot(*(pos[k] - pos[m]).T) < 3.0 * fwhm) >= 2 for m in kept):
            kept.append(int(k))
    return table[kept]
