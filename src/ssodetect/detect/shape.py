"""Per-detection shape test: is a detection sharper than the PSF?

Cosmic rays and hot pixels deposit charge in single pixels or one-pixel-wide
tracks; a star or a moving object is blurred by the PSF.  For every detection
two models are fitted by linear least squares to a stamp around its centroid
(background already subtracted), both drawn along the detection's measured
trail (length and angle from its second moments; a point for round sources):

* the PSF: a pixel-integrated Gaussian of the image's PSF sigma swept along
  the trail;
* a "sharp" model: the same with a Gaussian of sigma 0.3 px (charge in the
  pixels under the track, as a cosmic ray deposits it).

Each fit has one free amplitude; the pixel variance combines the noise map and
the Poisson noise of the model.  ``chi2_psf - chi2_sharp`` is large and positive
for cosmic rays and hot pixels, negative for PSF-like and extended sources.

The PSF fit's amplitude is also the optimal (PSF-weighted) flux of the source
(:func:`psf_photometry`): its signal-to-noise ratio is the detection's
significance, which an aperture large enough for accurate magnitudes loses by a
factor of about two for faint sources.

The kernel is numba-compiled; :func:`shape_chi2_reference` is the plain numpy
twin used by the parity test.  Pixel convention: 0-based, images ``[y, x]``.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from scipy.special import erf

__all__ = ["trailed_psf", "shape_chi2", "shape_chi2_reference", "psf_photometry", "psf_photometry_reference", "SHARP_SIGMA", "MAX_HALF"]

SHARP_SIGMA = 0.3
MIN_HALF = 2
MAX_HALF = 12
SUB_STEP = 0.25


def _half_size(length: float) -> int:
    return int(min(MAX_HALF, MIN_HALF + math.ceil(0.5 * length)))


def _samples(x, y, length, theta):
    n = max(1, int(math.ceil(length / SUB_STEP)))
    u = ((np.arange(n) + 0.5) / n - 0.5) * length
    return x + u * math.cos(theta), y + u * math.sin(theta)


def _model_reference(x, y, length, theta, sigma, x0, y0, n):
    sx, sy = _samples(x, y, length, theta)
    edges_x = np.arange(x0, x0 + n + 1) - 0.5
    edges_y = np.arange(y0, y0 + n + 1) - 0.5
    model = np.zeros((n, n))
    for cx, cy in zip(sx, sy):
        px = np.diff(0.5 * (1.0 + erf((edges_x - cx) / (math.sqrt(2.0) * sigma))))
        py = np.diff(0.5 * (1.0 + erf((edges_y - cy) / (math.sqrt(2.0) * sigma))))
        model += np.outer(py, px)
    return model / len(sx)


def trailed_psf(x: float, y: float, length: float, theta: float, sigma: float, x0: int, y0: int, n: int) -> np.ndarray:
    """Unit-flux image of a point source swept along a trail, on an ``n x n`` stamp.

    A pixel-integrated Gaussian of ``sigma`` [px] averaged over ``length`` [px] at angle ``theta``
    [rad, from +x towards +y] centred on ``(x, y)`` [px, 0-based, image frame]; the stamp's pixel
    ``[0, 0]`` is the image's ``(x0, y0)``.  Returns ``(n, n)``, summing to ~1 when the stamp holds the source.
    All the sub-steps at once (one product of their row and column profiles); :func:`_model_reference` is the
    loop it replaces, kept for the parity test.
    """
    sx, sy = _samples(x, y, length, theta)
    scale = math.sqrt(2.0) * sigma
    edges_x = np.arange(x0, x0 + n + 1) - 0.5
    edges_y = np.arange(y0, y0 + n + 1) - 0.5
    px = np.diff(erf((edges_x[None, :] - sx[:, None]) / scale), axis=1)  # (samples, n); 0.5 * (1 + erf) differenced
    py = np.diff(erf((edges_y[None, :] - sy[:, None]) / scale), axis=1)
    return (py.T @ px) * (0.25 / len(sx))


def _fit_reference(d, v_base, model, gain):
    """Fit ``d ~ A * model`` with variance ``v_base + A*model/gain`` (two iterations).

    Returns ``(chi2, A, sigma_A)``.
    """
    var = v_base.copy()
    amp = 0.0
    for _ in range(2):
        w = 1.0 / var
        denom = np.sum(w * model * model)
        amp = np.sum(w * model * d) / denom if denom > 0 else 0.0
        var = v_base + np.clip(amp * model, 0, None) / gain
    denom = np.sum(model * model / var)
    err = 1.0 / math.sqrt(denom) if denom > 0 else math.nan
    return float(np.sum((d - amp * model) ** 2 / var)), float(amp), err


def _stamps_reference(image, variance, mask, xs, ys, lengths, thetas, psf_sigma, gain):
    """Per detection: PSF fit ``(chi2, A, sigma_A)``, sharp fit ``chi2`` and pixels used (None: no stamp)."""
    ny, nx = image.shape
    for k in range(len(xs)):
        x, y, length, theta = float(xs[k]), float(ys[k]), float(lengths[k]), float(thetas[k])
        half = _half_size(length)
        n = 2 * half + 1
        ix, iy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
        x0, y0 = ix - half, iy - half
        if x0 < 0 or y0 < 0 or x0 + n > nx or y0 + n > ny:
            yield None
            continue
        d = image[y0 : y0 + n, x0 : x0 + n].astype(float)
        v = variance[y0 : y0 + n, x0 : x0 + n].astype(float)
        good = ~mask[y0 : y0 + n, x0 : x0 + n]
        if good.sum() < 6:
            yield None
            continue
        mp = _model_reference(x, y, length, theta, psf_sigma, x0, y0, n)
        ms = _model_reference(x, y, length, theta, SHARP_SIGMA, x0, y0, n)
        yield _fit_reference(d[good], v[good], mp[good], gain), _fit_reference(d[good], v[good], ms[good], gain)[0], int(good.sum())


def shape_chi2_reference(image, variance, mask, xs, ys, lengths, thetas, psf_sigma: float, gain: float):
    """Numpy reference of :func:`shape_chi2`.

    Parameters
    ----------
    image : ndarray (ny, nx)
        Background-subtracted image [ADU].
    variance : ndarray (ny, nx)
        Background noise variance per pixel [ADU^2].
    mask : ndarray (ny, nx) bool
        True where pixels are unusable (excluded from the fits).
    xs, ys : ndarray (n,)
        Centroids [px, 0-based].
    lengths, thetas : ndarray (n,)
        Trail length [px] (0 for a point) and angle [rad, from +x towards +y].
    psf_sigma : float
        Gaussian sigma of the PSF [px].
    gain : float
        [e-/ADU], for the Poisson variance of the source.

    Returns
    -------
    chi2_psf, chi2_sharp : ndarray (n,)
        Chi-square of the two fits (NaN where the stamp leaves the image or has
        fewer than 6 usable pixels).
    npix : ndarray (n,) int
        Number of pixels used.
    """
    count = len(xs)
    out_p = np.full(count, np.nan)
    out_s = np.full(count, np.nan)
    npix = np.zeros(count, np.int64)
    for k, fit in enumerate(_stamps_reference(image, variance, mask, xs, ys, lengths, thetas, psf_sigma, gain)):
        if fit is not None:
            out_p[k], out_s[k], npix[k] = fit[0][0], fit[1], fit[2]
    return out_p, out_s, npix


def psf_photometry_reference(image, variance, mask, xs, ys, lengths, thetas, psf_sigma: float, gain: float):
    """Numpy reference of :func:`psf_photometry`."""
    flux = np.full(len(xs), np.nan)
    err = np.full(len(xs), np.nan)
    for k, fit in enumerate(_stamps_reference(image, variance, mask, xs, ys, lengths, thetas, psf_sigma, gain)):
        if fit is not None:
            flux[k], err[k] = fit[0][1], fit[0][2]
    return flux, err


@numba.njit(cache=True, nogil=True)
def _model_nb(x, y, length, theta, sigma, x0, y0, n, sub_step, out, px, py):
    for q in range(n * n):
        out[q] = 0.0
    ns = max(1, int(math.ceil(length / sub_step)))
    s = math.sqrt(2.0) * sigma
    c = math.cos(theta)
    sn = math.sin(theta)
    for k in range(ns):
        u = ((k + 0.5) / ns - 0.5) * length
        cx = x + u * c
        cy = y + u * sn
        for i in range(n):
            lo = x0 + i - 0.5 - cx
            px[i] = 0.5 * (math.erf((lo + 1.0) / s) - math.erf(lo / s))
            lo = y0 + i - 0.5 - cy
            py[i] = 0.5 * (math.erf((lo + 1.0) / s) - math.erf(lo / s))
        for j in range(n):
            for i in range(n):
                out[j * n + i] += py[j] * px[i] / ns


@numba.njit(cache=True, nogil=True)
def _fit_nb(d, vb, model, good, m, gain, var):
    amp = 0.0
    for q in range(m):
        var[q] = vb[q]
    for _ in range(2):
        num = 0.0
        den = 0.0
        for q in range(m):
            if good[q]:
                num += model[q] * d[q] / var[q]
                den += model[q] * model[q] / var[q]
        amp = num / den if den > 0 else 0.0
        for q in range(m):
            extra = amp * model[q]
            var[q] = vb[q] + (extra if extra > 0 else 0.0) / gain
    chi2 = 0.0
    den = 0.0
    for q in range(m):
        if good[q]:
            r = d[q] - amp * model[q]
            chi2 += r * r / var[q]
            den += model[q] * model[q] / var[q]
    err = 1.0 / math.sqrt(den) if den > 0 else math.nan
    return chi2, amp, err


@numba.njit(cache=True, nogil=True)
def _shape_nb(image, variance, mask, xs, ys, lengths, thetas, psf_sigma, sharp_sigma, gain, out_p, out_s, npix, out_a, out_e):
    ny, nx = image.shape
    nmax = 2 * MAX_HALF + 1
    px = np.empty(nmax)
    py = np.empty(nmax)
    d = np.empty(nmax * nmax)
    vb = np.empty(nmax * nmax)
    var = np.empty(nmax * nmax)
    mp = np.empty(nmax * nmax)
    ms = np.empty(nmax * nmax)
    good = np.empty(nmax * nmax, dtype=np.bool_)
    for k in range(xs.shape[0]):
        x = xs[k]
        y = ys[k]
        length = lengths[k]
        half = min(MAX_HALF, MIN_HALF + int(math.ceil(0.5 * length)))
        n = 2 * half + 1
        ix = int(math.floor(x + 0.5))
        iy = int(math.floor(y + 0.5))
        x0 = ix - half
        y0 = iy - half
        if x0 < 0 or y0 < 0 or x0 + n > nx or y0 + n > ny:
            continue
        ngood = 0
        for j in range(n):
            for i in range(n):
                q = j * n + i
                d[q] = image[y0 + j, x0 + i]
                vb[q] = variance[y0 + j, x0 + i]
                good[q] = not mask[y0 + j, x0 + i]
                if good[q]:
                    ngood += 1
        if ngood < 6:
            continue
        _model_nb(x, y, length, thetas[k], psf_sigma, x0, y0, n, SUB_STEP, mp, px, py)
        _model_nb(x, y, length, thetas[k], sharp_sigma, x0, y0, n, SUB_STEP, ms, px, py)
        out_p[k], out_a[k], out_e[k] = _fit_nb(d, vb, mp, good, n * n, gain, var)
        out_s[k] = _fit_nb(d, vb, ms, good, n * n, gain, var)[0]
        npix[k] = ngood


def _pixels(a) -> np.ndarray:
    """``a`` C-contiguous as float32 or float64 (the kernel compiles for both; no float64 copy of a float32 CCD)."""
    a = np.asarray(a)
    return np.ascontiguousarray(a, dtype=a.dtype if a.dtype in (np.float32, np.float64) else np.float64)


def _run_kernel(image, variance, mask, xs, ys, lengths, thetas, psf_sigma, gain):
    xs = np.ascontiguousarray(xs, dtype=np.float64)
    out = [np.full(xs.size, np.nan) for _ in range(4)]
    npix = np.zeros(xs.size, np.int64)
    if xs.size:
        _shape_nb(
            _pixels(image),
            _pixels(variance),
            np.ascontiguousarray(mask, dtype=np.bool_),
            xs,
            np.ascontiguousarray(ys, dtype=np.float64),
            np.ascontiguousarray(lengths, dtype=np.float64),
            np.ascontiguousarray(thetas, dtype=np.float64),
            float(psf_sigma),
            SHARP_SIGMA,
            float(gain),
            out[0],
            out[1],
            npix,
            out[2],
            out[3],
        )
    return out[0], out[1], npix, out[2], out[3]


def shape_chi2(image, variance, mask, xs, ys, lengths, thetas, psf_sigma: float, gain: float):
    """Chi-square of PSF and sharp fits per detection (numba kernel).

    Same parameters and returns as :func:`shape_chi2_reference`.
    """
    return _run_kernel(image, variance, mask, xs, ys, lengths, thetas, psf_sigma, gain)[:3]


def shape_and_photometry(image, variance, mask, xs, ys, lengths, thetas, psf_sigma: float, gain: float):
    """:func:`shape_chi2` and :func:`psf_photometry` from one pass of the kernel (they share its stamps and fits).

    Returns
    -------
    chi2_psf, chi2_sharp, npix, flux, flux_err : ndarray (n,)
    """
    return _run_kernel(image, variance, mask, xs, ys, lengths, thetas, psf_sigma, gain)


def psf_photometry(image, variance, mask, xs, ys, lengths, thetas, psf_sigma: float, gain: float):
    """PSF-weighted (optimal) flux at fixed positions: the amplitude of the PSF model of
    :func:`shape_chi2` (a Gaussian swept along the trail) fitted to a stamp.

    Parameters are those of :func:`shape_chi2_reference`.

    Returns
    -------
    flux, flux_err : ndarray (n,)
        Total flux of the Gaussian model and its 1-sigma error [ADU] (NaN where the stamp leaves
        the image).  A real PSF's wings make ``flux`` a fixed fraction of the total: the caller
        calibrates that ratio on bright stars; the ratio of the two is the detection's S/N.
    """
    return _run_kernel(image, variance, mask, xs, ys, lengths, thetas, psf_sigma, gain)[3:]
