"""Background and noise maps (sep, SExtractor's algorithm)."""
from __future__ import annotations

import math

import numpy as np
import sep
from scipy import ndimage
from scipy.signal import fftconvolve

__all__ = ["estimate_background", "heavy_tail_correction", "matched_noise_scale"]

#: :func:`matched_noise_scale` filters directly with kernels of up to this many pixels, by FFT beyond.
DIRECT_KERNEL_MAX = 225

#: One-sided normal tail points (z, Phi(-z)) at which :func:`matched_noise_scale` reads the noise
_TAIL_POINTS = ((1.0, 0.15865525393145707), (1.5, 0.0668072012688581), (2.0, 0.022750131948179195))


def estimate_background(
    data: np.ndarray, *, mask: np.ndarray | None = None, box: int = 64, filter_size: int = 3
) -> tuple[np.ndarray, np.ndarray, float]:
    """Smooth background and its RMS.

    Parameters
    ----------
    data : ndarray (ny, nx)
        Image [ADU]. Not modified.
    mask : ndarray (ny, nx) bool, optional
        True where pixels are unusable.
    box : int
        Mesh size [px].
    filter_size : int
        Median filter on the mesh [meshes].

    Returns
    -------
    background, rms : ndarray (ny, nx) float32
        Background level and noise per pixel [ADU].
    global_rms : float
        Global noise level [ADU].
    """
    image = np.ascontiguousarray(data, dtype=np.float32)
    m = None
    if mask is not None:
        m = np.ascontiguousarray(mask, dtype=bool)
        if m.any():
            image = image.copy()
            image[m] = 0.0
    bkg = sep.Background(image, mask=m, bw=box, bh=box, fw=filter_size, fh=filter_size)
    return np.asarray(bkg.back(), np.float32), np.asarray(bkg.rms(), np.float32), float(bkg.globalrms)


def heavy_tail_correction(data: np.ndarray, background: np.ndarray, rms: np.ndarray, mask: np.ndarray, *,
                          sigma: float = 1.5) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Background level and noise of a detector whose pixel noise is skewed and correlated (warm pixels).

    sep's background (a mode estimate, 2.5 median - 1.5 mean) sits below the sky when warm pixels
    below any hot-pixel cut skew the distribution, and its RMS describes the clipped core only: on
    NEOSSat frames the residual's median was +100 ADU and the PSF-filtered image's scatter 2.8 times
    what the RMS implies, so 82 % of a frame was one footprint above threshold and its bright stars
    were never measured.  The residual's median over the usable pixels is added to the background, and
    the RMS is scaled by the measured scatter of the image filtered with a Gaussian of ``sigma`` over the
    scatter white noise of that RMS would give through the same filter and mask (never below 1).  Sources
    and cosmic-ray hits count in the scatter: on a field crowded with them the scale errs high (fewer,
    surer detections).

    Parameters
    ----------
    data, background, rms : ndarray (ny, nx)
        Image, :func:`estimate_background`'s background and RMS [ADU].
    mask : ndarray (ny, nx) bool
        True where pixels are unusable (hot pixels included).
    sigma : float
        Gaussian sigma of the filter [px] (the PSF's).

    Returns
    -------
    background, rms : ndarray (ny, nx) float32
    level : float
        What was added to the background [ADU].
    scale : float
        The factor applied to the RMS.
    """
    good = ~np.asarray(mask, bool)
    if good.sum() < 100:
        return background, rms, 0.0, 1.0
    residual = np.asarray(data, np.float32) - background
    level = float(np.median(residual[good]))
    # sources and cosmic-ray hits stay in the scatter: leaving out the pixels 10 sigma out lowered NEOSSat's scale
    # from 2.9 to 2.4, and warm-pixel trails then made 7 false fast movers (0 with them in)
    quiet = good
    work = np.where(quiet, residual - level, 0.0).astype(np.float32)
    smooth = ndimage.gaussian_filter(work, sigma)[quiet]
    measured = 1.4826 * float(np.median(np.abs(smooth - np.median(smooth))))
    # white noise of the RMS through the same filter, with the left-out pixels at zero: sqrt(sum w^2 over quiet)
    size = 2 * int(math.ceil(4.0 * sigma)) + 1
    impulse = np.zeros((size, size))
    impulse[size // 2, size // 2] = 1.0
    weights = ndimage.gaussian_filter(impulse, sigma)
    carried = np.sqrt(ndimage.convolve(quiet.astype(np.float64), weights**2, mode="constant"))[quiet]
    expected = float(np.median(rms[quiet])) * float(np.median(carried))
    scale = max(1.0, measured / expected) if expected > 0 else 1.0
    corrected = (background + np.float32(level)).astype(np.float32)
    return corrected, (rms * np.float32(scale)).astype(np.float32), level, scale


def matched_noise_scale(residual: np.ndarray, rms: np.ndarray, mask: np.ndarray, kernel: np.ndarray, *,
                        max_side: int = 2048) -> tuple[float, float]:
    """The scatter of a PSF-matched-filtered image over the scatter its per-pixel RMS implies.

    A threshold in sigma of the matched-filtered image assumes white noise.  Noise correlated between neighbouring
    pixels (a resampled or smoothed frame, a co-add) scatters the filtered image more than the per-pixel RMS says:
    four 512^2 frames smoothed by a Gaussian of FWHM 6 px scattered 1.6 times as much through a 0.75 px kernel, and
    their noise made 400 "movers" per exposure.  The scatter is read from the negative side of the filtered image
    (the sources sit on the positive side), measured from its mode (a sky left a little off zero by the background
    shifts the mode, not the scatter) at the points where a normal distribution holding the fraction of pixels below
    the mode twice over reaches -1, -1.5 and -2 sigma; the three readings agree when the noise is normal.

    Parameters
    ----------
    residual : ndarray (ny, nx)
        Background-subtracted image [ADU] (masked pixels anything).
    rms : ndarray (ny, nx)
        Per-pixel background noise [ADU].
    mask : ndarray (ny, nx) bool
        True where pixels are unusable; the filtered pixels that reach one are left out.
    kernel : ndarray (k, k)
        The detection filter (odd sides).
    max_side : int
        The central ``max_side`` x ``max_side`` pixels at most are read (the cost stays that of a 4 Mpx image).

    Returns
    -------
    scale : float
        Median of the three readings; NaN when it cannot be read (fewer than 1000 pixels clear of the mask, no
        usable noise, or too little of the distribution below its mode).
    spread : float
        Largest over smallest reading (1.0 for normal noise; ``inf`` when unread).
    """
    ny, nx = residual.shape
    y0, x0 = max((ny - max_side) // 2, 0), max((nx - max_side) // 2, 0)
    crop = (slice(y0, y0 + max_side), slice(x0, x0 + max_side))
    rms_crop = np.asarray(rms)[crop]
    bad = np.asarray(mask, bool)[crop] | ~np.isfinite(residual[crop]) | ~(np.isfinite(rms_crop) & (rms_crop > 0))
    work = np.where(bad, 0.0, residual[crop]).astype(np.float32)
    k = np.asarray(kernel, np.float32)
    reach = k.shape[0] // 2
    far = ~ndimage.binary_dilation(bad, iterations=reach) if bad.any() and reach else ~bad
    norm = float(np.sqrt(np.sum(k.astype(np.float64) ** 2)))
    if far.sum() < 1000 or not (math.isfinite(norm) and norm > 0):
        return math.nan, math.inf
    # a wide kernel by FFT (scipy's direct filter took 1 GB for a 109 px kernel and 12 GB for a 201 px one)
    filtered = (ndimage.convolve(work, k, mode="constant") if k.size <= DIRECT_KERNEL_MAX
                else fftconvolve(work, k[::-1, ::-1], mode="same"))
    values = filtered[far] / (rms_crop[far] * norm)
    values = values[np.isfinite(values)]
    if values.size < 1000:
        return math.nan, math.inf
    # the mode: the peak of a histogram of bins a tenth of the rough scatter wide, smoothed over five bins
    middle = float(np.median(values))
    rough = 1.4826 * float(np.median(np.abs(values - middle)))
    if not rough > 0:
        return math.nan, math.inf
    counts, edges = np.histogram(values, bins=np.arange(middle - 4.0 * rough, middle + 2.0 * rough, 0.1 * rough))
    smooth = np.convolve(counts, np.ones(5), mode="same")
    centre = float(0.5 * (edges[np.argmax(smooth)] + edges[np.argmax(smooth) + 1]))
    below = float(np.mean(values < centre))
    if below <= 0.05:
        return math.nan, math.inf
    readings = np.array([(centre - float(np.quantile(values, min(2.0 * below * tail, 1.0)))) / z
                         for z, tail in _TAIL_POINTS])
    if not (np.all(np.isfinite(readings)) and np.all(readings > 0)):
        return math.nan, math.inf
    return float(np.median(readings)), float(readings.max() / readings.min())
