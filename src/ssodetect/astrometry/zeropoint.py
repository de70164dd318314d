"""Photometric zero point from stars matched to the reference catalogue."""
from __future__ import annotations

import math

import numpy as np
from astropy.stats import sigma_clipped_stats

__all__ = ["fit_zeropoint"]


def fit_zeropoint(
    flux: np.ndarray,
    flux_err: np.ndarray,
    exptime: float,
    ref_mag: np.ndarray,
    *,
    colour: np.ndarray | None = None,
    colour_term: float = 0.0,
    min_stars: int = 5,
    clip: float = 3.0,
) -> tuple[float, float, int]:
    """Zero point ``zp`` with ``mag = zp - 2.5 log10(flux / exptime)`` from matched stars.

    Parameters
    ----------
    flux, flux_err : ndarray (n,)
        Measured fluxes and errors [ADU].
    exptime : float
        [s].
    ref_mag : ndarray (n,)
        Catalogue magnitudes (e.g. Gaia G).
    colour, colour_term : ndarray (n,), float
        Optional colour (e.g. BP-RP) and coefficient: the expected image
        magnitude is ``ref_mag + colour_term * colour``.
    min_stars : int
        Fewer usable stars give NaN.
    clip : float
        Sigma clipping threshold.

    Returns
    -------
    zp : float
        Sigma-clipped median [mag] (NaN when too few stars).
    zp_err : float
        Its standard error: 1.2533 * clipped std / sqrt(n) [mag].
    n : int
        Stars used.
    """
    flux = np.asarray(flux, float)
    ref = np.asarray(ref_mag, float)
    if colour is not None and colour_term:
        ref = ref + colour_term * np.nan_to_num(np.asarray(colour, float))
    ok = (flux > 0) & np.isfinite(ref) & (np.asarray(flux_err, float) < 0.1 * flux)
    if ok.sum() < min_stars:
        return float("nan"), float("nan"), int(ok.sum())
    values = ref[ok] + 2.5 * np.log10(flux[ok] / max(exptime, 1e-9))
    clipped = values[np.abs(values - np.median(values)) < 1.0]  # drop gross mismatches before clipping
    if clipped.size < min_stars:
        return float("nan"), float("nan"), int(clipped.size)
    _, median, std = sigma_clipped_stats(clipped, sigma=clip, maxiters=5)
    used = int(np.sum(np.abs(clipped - median) <= clip * max(std, 1e-6)))
    return float(median), float(1.2533 * std / math.sqrt(max(used, 1))), used
