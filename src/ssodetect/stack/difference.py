"""Difference images on a common pixel grid: each exposure minus a static-sky template of the others.

The exposures of one CCD are moved by whole pixels onto the grid of the first (the offsets from
the WCS at the CCD centre: dithers are pure shifts to a small fraction of a pixel across a CCD);
the template of exposure ``e`` is the mean of the others where they are valid.  Pixels where the
static sky cannot subtract cleanly (bright stars and galaxies, given the sub-pixel dither and PSF
changes) are masked.  Arrays are ``(ny, nx)``, 0-based, float32; masked pixels are NaN.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.ndimage import binary_dilation, gaussian_filter, laplace

__all__ = ["align", "difference_images"]


def align(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image`` moved by (dx, dy) rounded to whole pixels; NaN where no data."""
    ix, iy = int(round(dx)), int(round(dy))
    out = np.full(image.shape, np.nan, np.float32)
    ny, nx = image.shape
    ys, yd = slice(max(0, -iy), min(ny, ny - iy)), slice(max(0, iy), min(ny, ny + iy))
    xs, xd = slice(max(0, -ix), min(nx, nx - ix)), slice(max(0, ix), min(nx, nx + ix))
    out[yd, xd] = image[ys, xs]
    return out


def difference_images(images: list, variances: list, offsets: list, *, residual_sigma: float = 1.0,
                      psf_change: float = 0.1, mask_grow: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Difference images and their variances on the first exposure's grid.

    Each exposure is moved by the nearest whole pixels onto the first one's grid (noise stays
    independent and its variance exact); its template is the mean of the other exposures that are
    valid at that pixel (at least two; cosmic rays and other one-exposure artefacts must be masked
    beforehand).  Static sources do not subtract perfectly: the fractional part of the dither
    (up to half a pixel on an undersampled PSF) and PSF changes leave a residual of about
    ``delta . |grad S| + psf_change / 2 . |laplacian S|`` where ``S`` is the static sky (median of the
    exposures); pixels where it exceeds ``residual_sigma`` times the difference's noise, and
    ``mask_grow`` around them, are masked in every exposure.  Faint galaxies and the ghost a slow
    mover leaves in the median stay unmasked.

    Parameters
    ----------
    images, variances : list of ndarray (ny, nx)
        Background-subtracted pixels [ADU] (NaN where masked) and their noise variance [ADU^2],
        each in its own exposure's frame.
    offsets : list of (float, float)
        (dx, dy) [px] that carry each exposure's pixels onto the first exposure's grid (rounded
        here; the fractions set the expected residual).
    residual_sigma : float
        Expected subtraction residual, in units of the difference noise, above which pixels are masked.
    psf_change : float
        Change of the PSF's Gaussian sigma^2 between exposures [px^2] allowed for.

    Returns
    -------
    diff, var : ndarray (n_exp, ny, nx) float32
    """
    n = len(images)
    aligned = np.stack([align(im, dx, dy) for im, (dx, dy) in zip(images, offsets)])
    avar = np.stack([align(v, dx, dy) for v, (dx, dy) in zip(variances, offsets)])
    frac = np.array([(dx - round(dx), dy - round(dy)) for dx, dy in offsets])
    delta = np.ptp(frac, axis=0) if n > 1 else np.zeros(2)  # largest relative sub-pixel offset, x and y
    diff = np.full_like(aligned, np.nan)
    var = np.full_like(aligned, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN stacks at the edges
        sky = gaussian_filter(np.nan_to_num(np.nanmedian(aligned, axis=0)), 0.7)
        gy, gx = np.gradient(sky)
        residual = delta[0] * np.abs(gx) + delta[1] * np.abs(gy) + 0.5 * psf_change * np.abs(laplace(sky))
        static = residual > residual_sigma * np.sqrt(np.nan_to_num(2.0 * np.nanmedian(avar, axis=0), nan=np.inf))
    if mask_grow and static.any():
        static = binary_dilation(static, iterations=mask_grow)
    valid = np.isfinite(aligned) & np.isfinite(avar)
    total = np.where(valid, aligned, 0.0).sum(axis=0)
    total_var = np.where(valid, avar, 0.0).sum(axis=0)
    count = valid.sum(axis=0)
    for e in range(n):
        others = count - valid[e]
        with np.errstate(all="ignore"):
            template = (total - np.where(valid[e], aligned[e], 0.0)) / others
            tvar = (total_var - np.where(valid[e], avar[e], 0.0)) / others.astype(np.float32) ** 2
        d = aligned[e] - template
        v = avar[e] + tvar
        bad = static | (others < min(2, n - 1)) | ~valid[e]
        diff[e] = np.where(bad, np.nan, d)
        var[e] = np.where(bad, np.nan, v)
    return diff, var
