"""Difference images on a common pixel grid: each exposure minus a static-sky template of the others.

The exposures of one CCD are shifted onto the grid of the first (sub-pixel, bilinear, the offsets
from the WCS at the CCD centre: dithers are pure shifts to a small fraction of a pixel across a
CCD); the template of exposure ``e`` is the median of the others (pixel by pixel, NaN-aware), its
variance ``pi/2 * mean(var) / n`` (the variance of a median of ``n`` Gaussian values).  Pixels near
saturated stars and where the template is itself very bright (residuals of stars) are masked.
Arrays are ``(ny, nx)``, 0-based, float32; masked pixels are NaN.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.ndimage import binary_dilation, gaussian_filter, shift

__all__ = ["align", "difference_images"]


def align(image: np.ndarray, dx: float, dy: float, *, integer: bool = True) -> np.ndarray:
    """``image`` moved by (dx, dy) pixels: by the nearest whole pixels (noise stays independent and its
    variance exact; the fraction is left to the trajectory grid) or bilinearly; NaN where no data."""
    if integer:
        ix, iy = int(round(dx)), int(round(dy))
        out = np.full(image.shape, np.nan, np.float32)
        ny, nx = image.shape
        ys, yd = slice(max(0, -iy), min(ny, ny - iy)), slice(max(0, iy), min(ny, ny + iy))
        xs, xd = slice(max(0, -ix), min(nx, nx - ix)), slice(max(0, ix), min(nx, nx + ix))
        out[yd, xd] = image[ys, xs]
        return out
    bad = ~np.isfinite(image)
    filled = np.where(bad, 0.0, image).astype(np.float64)
    out = shift(filled, (dy, dx), order=1, mode="constant", cval=np.nan, prefilter=False)
    spread = shift(bad.astype(np.float64), (dy, dx), order=1, mode="constant", cval=1.0, prefilter=False)
    out[spread > 1e-3] = np.nan
    return out.astype(np.float32)


def difference_images(images: list, variances: list, offsets: list, *, static_sigma: float = 3.0,
                      mask_grow: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Difference images and their variances on the first exposure's grid.

    Parameters
    ----------
    images, variances : list of ndarray (ny, nx)
        Background-subtracted pixels [ADU] (NaN where masked) and their noise variance [ADU^2],
        each in its own exposure's frame.
    offsets : list of (float, float)
        (dx, dy) [px] that carry each exposure's pixels onto the first exposure's grid.
    static_sigma : float
        Where the PSF-smoothed static sky (the median of all exposures) is significant at this level
        (stars, galaxies), pixels and ``mask_grow`` around them are masked: resampling an undersampled
        PSF leaves subtraction residuals there that would dominate a faint search.

    Returns
    -------
    diff, var : ndarray (n_exp, ny, nx) float32
    """
    n = len(images)
    aligned = np.stack([align(im, dx, dy) for im, (dx, dy) in zip(images, offsets)])
    avar = np.stack([align(v, dx, dy) for v, (dx, dy) in zip(variances, offsets)])
    diff = np.full_like(aligned, np.nan)
    var = np.full_like(aligned, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sky = np.nanmedian(aligned, axis=0)
        sky_var = np.nanmedian(avar, axis=0) * (np.pi / 2.0) / n
    smooth = gaussian_filter(np.nan_to_num(sky), 1.0)
    smooth_noise = np.sqrt(np.nan_to_num(sky_var, nan=np.inf)) / (2.0 * np.sqrt(np.pi))  # a 1-px Gaussian's noise gain
    static = smooth > static_sigma * smooth_noise
    if mask_grow and static.any():
        static = binary_dilation(static, iterations=mask_grow)
    for e in range(n):
        others = [k for k in range(n) if k != e]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN stacks at the edges
            template = np.nanmedian(aligned[others], axis=0)
            count = np.sum(np.isfinite(aligned[others]), axis=0)
            tvar = np.nanmean(avar[others], axis=0) * (np.pi / 2.0) / np.maximum(count, 1)
        d = aligned[e] - template
        v = avar[e] + tvar
        # a median of fewer than three values is a mean: one unmasked artefact in another exposure would print
        # itself into this difference
        bad = static | (count < min(3, n - 1)) | ~np.isfinite(d) | ~np.isfinite(v)
        diff[e] = np.where(bad, np.nan, d)
        var[e] = np.where(bad, np.nan, v)
    return diff, var
