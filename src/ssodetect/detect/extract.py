"""Source extraction and measurement on one CCD image (sep).

Detection uses a PSF-matched filter (sep's ``filter_type="matched"`` with the
noise map), so the threshold is a signal-to-noise ratio of an optimally
weighted point-source flux: a per-pixel threshold stops 1.5-2 mag brighter.
Each detection is then measured: windowed centroid (SExtractor's XWIN),
position uncertainty, flux in a PSF-sized aperture (pill-shaped along trails)
with an aperture correction from bright stars, and the shape test of
:mod:`ssodetect.detect.shape` that recognises cosmic rays and hot pixels.

Pixel convention: 0-based, ``(ny, nx)`` arrays; fluxes in ADU.
"""
from __future__ import annotations

import logging
import math

import numba
import numpy as np
import sep
from astropy.table import Table
from scipy import ndimage
from scipy.special import ndtr

from ssodetect.columns import describe, empty_table
from ssodetect.config import DetectConfig
from ssodetect.detect.background import matched_noise_scale
from ssodetect.detect.cosmics import sharp_pixel_mask
from ssodetect.detect.shape import shape_and_photometry, shape_chi2

__all__ = ["DETECTION_COLUMNS", "empty_detections", "gaussian_kernel", "measure_psf_sigma", "image_psf_sigma",
           "masked_information", "near_edge", "halo_model", "halo_sources", "psf_centroid", "psf_centroid_reference",
           "extract_sources"]

log = logging.getLogger(__name__)

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))

#: Masked hits are filled from their neighbours for segmentation where every neighbour exceeds this many times
#: the pixel noise (inside a source); elsewhere they are background.
SOURCE_FILL_SNR = 3.0

#: Longest compact trail core taken out of a longer footprint (:func:`_compact_cores`) [FWHM]; it must also be
#: shorter than the footprint (Moffat wings lengthen a core's windowed moments: a 4.3 px trail measures 6.2 px in
#: a 7 px footprint, where the trail fits 4x better per pixel than the footprint's).
CORE_MAX_LENGTH_FWHM = 6.0

#: Columns of a detection table (name, dtype, unit, description).
DETECTION_COLUMNS = [
    ("x", "f8", "pix", "windowed centroid, 0-based"),
    ("y", "f8", "pix", "windowed centroid, 0-based"),
    ("x_err", "f8", "pix", "1-sigma centroid uncertainty"),
    ("y_err", "f8", "pix", "1-sigma centroid uncertainty"),
    ("flux", "f8", "adu", "aperture flux, aperture corrected"),
    ("flux_err", "f8", "adu", "flux uncertainty"),
    ("snr", "f8", "", "flux / flux_err"),
    ("a", "f8", "pix", "semi-major axis rms"),
    ("b", "f8", "pix", "semi-minor axis rms"),
    ("theta", "f8", "rad", "position angle of the major axis, from +x towards +y"),
    ("length", "f8", "pix", "trail length estimate sqrt(12 (a^2 - b^2))"),
    ("npix", "i8", "", "pixels above threshold"),
    ("peak", "f8", "adu", "peak pixel value above background"),
    ("chi2_psf", "f8", "", "chi2 of a PSF fit to the 5x5 stamp"),
    ("chi2_sharp", "f8", "", "chi2 of a sharp (cosmic-ray-like) fit"),
    ("chi2_broad", "f8", "", "chi2 of a fit twice as broad as the PSF (galaxies)"),
    ("sep_flag", "i8", "", "sep extraction flags"),
    ("near_mask", "bool", "", "a masked pixel lies inside the detection footprint"),
    ("kind", "U10", "", "point | trail | extended | sharp | streak | satellite | bleed | spike | edge | blend"),
    ("cut", "i8", "", "trail end at the detector edge: 0 none, 1 the end towards +theta, -1 the other, 2 both "
                      "(length and centre are then those of the visible part)"),
    ("edge_fit", "bool", "", "a point source whose core reaches the detector edge, centred and measured by a PSF "
                             "fit of its pixels on the detector (at most EDGE_FIT_MAX_INFO of its core information "
                             "beyond the edge at the fitted centre; its errors widened by that share): usable although "
                             "its footprint or aperture is truncated"),
    ("mask_fit", "bool", "", "a point source or a short trail with a masked detector pixel (hot pixel, bad column) "
                             "inside or next to its footprint, centred and measured by a PSF or trailed-PSF fit that "
                             "skips it, with at most half of its information on masked pixels: usable although "
                             "near_mask"),
    ("masked_core", "f8", "", "share of the source's core information (PSF-weighted) on masked cosmic-ray or hot "
                              "pixels: its centroid and flux come from fits that skip them, its errors are widened"),
    ("length_err", "f8", "pix", "1-sigma error of the trail length (trailed-PSF fit; NaN when not fitted)"),
    ("theta_err", "f8", "rad", "1-sigma error of the trail angle (trailed-PSF fit; NaN when not fitted)"),
]


#: The noise of a frame whose matched-filtered image scatters at least this many times what its per-pixel RMS
#: implies (:func:`~ssodetect.detect.background.matched_noise_scale`: correlated noise, a resampled or smoothed
#: frame) is scaled by that factor for detection and measurement.  Through their own kernels the simulated Euclid
#: CCDs read 0.95-0.98 (members 451-460), the 25 raw Luxembourg frames 0.94-1.25, the NEOWISE frames 1.09-1.18 and
#: the ASTRiDE satellite frame 1.27 (none scaled); frames smoothed by a Gaussian of sigma 0.8-2.5 px read 1.6-3.5.
CORRELATED_NOISE_MIN = 1.5

#: Largest over smallest of the three tail readings of the noise scale for it to be trusted (normal noise).
CORRELATED_NOISE_MAX_SPREAD = 1.15

#: Centroid error [px] added to the sources found as peaks in other footprints (:func:`halo_sources`).
PEAK_ERROR = 0.3

#: sep's flag of a photometric aperture truncated by the image boundary.
APER_TRUNC_FLAG = 16

#: A point source cut by the detector edge is used when at most this share of its core information (PSF^2) falls
#: beyond the edge at its PSF-fitted centre (which puts that centre on the detector, within the outer pixels'
#: boundaries ``(-0.5, n - 0.5)``).  The PSF fit measures the pixels that are there: on the tuning members, movers
#: centred 0.2-2 px from the edge were fitted within 0.05 px of the truth, and the old rule (centre 1 FWHM inside)
#: dropped their detection.  Centres between the outermost pixel centres and the boundary were once refused too:
#: on member 208 two slow movers on the detector in only 3 exposures, centred 0.2-0.3 px beyond the outermost pixel
#: centres in one, were lost; a Gaussian fit of a truncated Moffat PSF (beta 2-3.5, FWHM 1.4-2.2 px) centred 0-0.45
#: px beyond them leans 0.05-0.25 px inwards (0.01-0.02 px for a Gaussian core), within the errors that the
#: information lost widens.
EDGE_FIT_MAX_INFO = 0.35

#: sep's flag of a photometric aperture with masked pixels.
APER_MASKED_FLAG = 32

#: Largest share of a point source's core information (:func:`masked_information`) on masked detector pixels for
#: its PSF-fitted centre to be used (``mask_fit``).
MASK_FIT_MAX_INFO = 0.5


def _psf_stamp(image, variance, mask, x0, y0, sigma):
    """The stamp a PSF centroid fits: ``(stamp, var, good, xa, ya)`` or None (too few usable pixels)."""
    half = int(math.ceil(3.0 * sigma)) + 1
    ny, nx = image.shape
    ix, iy = int(round(x0)), int(round(y0))
    xa, xb, ya, yb = max(ix - half, 0), min(ix + half + 1, nx), max(iy - half, 0), min(iy + half + 1, ny)
    stamp, var = image[ya:yb, xa:xb].astype(np.float64), variance[ya:yb, xa:xb].astype(np.float64)
    good = ~mask[ya:yb, xa:xb] & np.isfinite(stamp) & (var > 0)
    if good.sum() < 8:
        return None
    return stamp, var, good, xa, ya


def psf_centroid_reference(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, x0: float, y0: float,
                           sigma: float) -> tuple[float, float] | None:
    """Numpy/scipy reference of :func:`psf_centroid` (``least_squares`` with a numerical Jacobian)."""
    from scipy.optimize import least_squares
    from scipy.special import erf

    cut = _psf_stamp(image, variance, mask, x0, y0, sigma)
    if cut is None:
        return None
    stamp, var, good, xa, ya = cut
    ex = np.arange(xa, xa + stamp.shape[1] + 1) - 0.5
    ey = np.arange(ya, ya + stamp.shape[0] + 1) - 0.5
    root2 = math.sqrt(2.0) * sigma
    weight = 1.0 / np.sqrt(var[good])

    def resid(p):
        px = np.diff(0.5 * erf((ex - p[0]) / root2))
        py = np.diff(0.5 * erf((ey - p[1]) / root2))
        return ((p[2] * np.outer(py, px) + p[3])[good] - stamp[good]) * weight

    flux0 = max(float(np.nansum(np.where(good, stamp, 0.0))), 1.0)
    fit = least_squares(resid, [x0, y0, flux0, 0.0], method="lm", max_nfev=200)
    if not fit.success or fit.x[2] <= 0:
        return None
    return float(fit.x[0]), float(fit.x[1])


@numba.njit(cache=True, nogil=True)
def _psf_fit_numba(stamp, var, good, xa, ya, x0, y0, flux0, sigma):
    """Levenberg-Marquardt fit of ``A * PSF(x, y) + B`` (pixel-integrated Gaussian, analytic Jacobian) to the good
    pixels (at most 100 iterations, stopping when chi2 and the centre no longer change).  Returns ``(x, y, A, ok)``,
    ``ok`` False for non-finite parameters."""
    ny, nx = stamp.shape
    s2 = math.sqrt(2.0) * sigma
    norm = 1.0 / (math.sqrt(2.0 * math.pi) * sigma)
    p = np.array([x0, y0, flux0, 0.0])
    px, py = np.empty(nx), np.empty(ny)
    dpx, dpy = np.empty(nx), np.empty(ny)

    def evaluate(q):
        for i in range(nx):
            lo, hi = xa + i - 0.5 - q[0], xa + i + 0.5 - q[0]
            px[i] = 0.5 * (math.erf(hi / s2) - math.erf(lo / s2))
            dpx[i] = -norm * (math.exp(-0.5 * (hi / sigma) ** 2) - math.exp(-0.5 * (lo / sigma) ** 2))
        for j in range(ny):
            lo, hi = ya + j - 0.5 - q[1], ya + j + 0.5 - q[1]
            py[j] = 0.5 * (math.erf(hi / s2) - math.erf(lo / s2))
            dpy[j] = -norm * (math.exp(-0.5 * (hi / sigma) ** 2) - math.exp(-0.5 * (lo / sigma) ** 2))
        chi2 = 0.0
        for j in range(ny):
            for i in range(nx):
                if good[j, i]:
                    r = q[2] * py[j] * px[i] + q[3] - stamp[j, i]
                    chi2 += r * r / var[j, i]
        return chi2

    lam = 1e-3
    chi2 = evaluate(p)
    for _ in range(100):
        jtj = np.zeros((4, 4))
        jtr = np.zeros(4)
        g = np.empty(4)
        for j in range(ny):
            for i in range(nx):
                if not good[j, i]:
                    continue
                w = 1.0 / var[j, i]
                r = p[2] * py[j] * px[i] + p[3] - stamp[j, i]
                g[0] = p[2] * py[j] * dpx[i]
                g[1] = p[2] * dpy[j] * px[i]
                g[2] = py[j] * px[i]
                g[3] = 1.0
                for a in range(4):
                    jtr[a] += w * g[a] * r
                    for b in range(4):
                        jtj[a, b] += w * g[a] * g[b]
        improved = False
        for _ in range(20):
            h = jtj.copy()
            for a in range(4):
                h[a, a] *= 1.0 + lam
                h[a, a] += 1e-12
            step = np.linalg.solve(h, -jtr)
            trial = p + step
            c = evaluate(trial)
            if c < chi2:
                lam = max(lam * 0.3, 1e-9)
                converged = abs(chi2 - c) < 1e-8 * max(chi2, 1.0) and abs(step[0]) < 1e-6 and abs(step[1]) < 1e-6
                p, chi2 = trial, c
                improved = True
                break
            lam *= 10.0
            evaluate(p)  # restore the profiles at p
        if not improved or converged:
            break
    return p[0], p[1], p[2], bool(np.all(np.isfinite(p)))


def psf_centroid(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, x0: float, y0: float,
                 sigma: float) -> tuple[float, float] | None:
    """Centre of a point source by a least-squares fit of a pixel-integrated Gaussian PSF (numba kernel).

    Masked pixels are left out of the fit (a windowed centroid would lean away from them).  The
    fit (amplitude, background and centre; Levenberg-Marquardt with the analytic Jacobian) takes
    ~20 us where :func:`psf_centroid_reference` (scipy, numerical Jacobian) takes ~20 ms.

    Parameters
    ----------
    image, variance, mask : ndarray (ny, nx)
        Background-subtracted image [ADU], its variance [ADU^2], unusable pixels.
    x0, y0 : float
        First guess [px, 0-based].
    sigma : float
        PSF Gaussian sigma [px] (fixed).  The core of a real PSF is fitted well enough for its
        centre even where its wings are not Gaussian (no goodness-of-fit cut).

    Returns
    -------
    (x, y) or None
        None when the fit diverges, finds no positive flux, or leaves the stamp.
    """
    cut = _psf_stamp(image, variance, mask, x0, y0, sigma)
    if cut is None:
        return None
    stamp, var, good, xa, ya = cut
    flux0 = max(float(np.nansum(np.where(good, stamp, 0.0))), 1.0)
    x, y, amp, ok = _psf_fit_numba(np.where(good, stamp, 0.0), var, good, xa, ya, float(x0), float(y0), flux0,
                                   float(sigma))
    if not (ok and amp > 0 and math.isfinite(x) and math.isfinite(y)):
        return None
    if not (xa - 0.5 <= x <= xa + stamp.shape[1] - 0.5 and ya - 0.5 <= y <= ya + stamp.shape[0] - 0.5):
        return None
    return float(x), float(y)


def fill_from_neighbours(image: np.ndarray, bad: np.ndarray, *, floor=None, passes: int = 3) -> np.ndarray:
    """Values for masked pixels from their unmasked neighbours (for segmentation only).

    Each pass gives every still-unfilled pixel the mean of its filled or unmasked 3x3 neighbours; pixels
    with none keep waiting for the next pass, and those left after ``passes`` get 0 (the background of a
    background-subtracted image).  With ``floor``, a pixel is filled only where every one of those
    neighbours exceeds it (the pixel lies inside a source); elsewhere it gets 0 and is no neighbour's value.

    Parameters
    ----------
    image : ndarray (ny, nx)
        Background-subtracted image [ADU].  Not modified.
    bad : ndarray (ny, nx) bool
        Pixels to fill.
    floor : ndarray (ny, nx) or float, optional
        [ADU].

    Returns
    -------
    ndarray (ny, nx) float32
        ``image`` with the ``bad`` pixels filled.
    """
    out = np.array(image, dtype=np.float32)
    todo = np.asarray(bad, bool).copy()
    out[todo] = 0.0
    ny, nx = out.shape
    ys, xs = np.nonzero(todo)  # only the masked pixels' neighbourhoods are read (a few per cent of the image)
    limit = None if floor is None else np.broadcast_to(np.asarray(floor, np.float32), out.shape)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    unknown = todo.copy()  # still to fill, or refused by the floor (never a neighbour's value)
    for _ in range(passes):
        if ys.size == 0:
            break
        total = np.zeros(ys.size, np.float64)
        lowest = np.full(ys.size, np.inf)
        count = np.zeros(ys.size, np.int64)
        for dy, dx in offsets:
            yy, xx = ys + dy, xs + dx
            inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
            yy, xx = np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)
            known = inside & ~unknown[yy, xx]
            value = out[yy, xx]
            total += np.where(known, value, 0.0)
            lowest = np.where(known, np.minimum(lowest, value), lowest)
            count += known
        ready = count > 0
        value = total[ready] / count[ready]
        accepted = np.ones(value.size, bool)
        if limit is not None:
            accepted = lowest[ready] > limit[ys[ready], xs[ready]]
            value = np.where(accepted, value, 0.0)
        ry, rx = ys[ready], xs[ready]
        out[ry, rx] = value.astype(np.float32)
        unknown[ry[accepted], rx[accepted]] = False
        ys, xs = ys[~ready], xs[~ready]
    return out


def windowed_shape(work: np.ndarray, mask: np.ndarray, x: float, y: float, window: float, psf_sigma: float):
    """Centre, trail length and angle of a compact source from Gaussian-windowed moments.

    The first and second moments of the (background-subtracted) light in a Gaussian window of
    ``window`` px around ``(x, y)`` are measured on the unmasked pixels; the window's own covariance is
    divided out (for a Gaussian source of covariance ``C`` the windowed covariance is ``(C^-1 + W^-1)^-1``),
    and a trail of length ``L`` adds ``L^2 / 12`` to the PSF's ``psf_sigma^2`` along its axis.  Light
    beyond a few ``window`` px (a galaxy the source sits on, another source) weighs little.

    Parameters
    ----------
    work : ndarray (ny, nx)
        Background-subtracted image [ADU].
    mask : ndarray (ny, nx) bool
        True where pixels are unusable.
    x, y : float
        Starting centre [px, 0-based].
    window : float
        Gaussian window sigma [px].
    psf_sigma : float
        [px].

    Returns
    -------
    (x, y, length, theta) or None
        Windowed centre [px], trail length [px] (0 for a point) and angle [rad, from +x towards +y, in
        ``[-pi/2, pi/2]``]; None where the window leaves the image, holds no positive light, or the
        deconvolved covariance is not positive (light extending over the whole window: a long trail).
    """
    half = int(math.ceil(4.0 * window))
    ci, cj = int(round(x)), int(round(y))
    ny, nx = work.shape
    if ci - half < 0 or cj - half < 0 or ci + half >= nx or cj + half >= ny:
        return None
    stamp = np.asarray(work[cj - half:cj + half + 1, ci - half:ci + half + 1], float)
    good = ~np.asarray(mask[cj - half:cj + half + 1, ci - half:ci + half + 1], bool)
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    dx, dy = xx + ci - x, yy + cj - y
    w = np.where(good, np.exp(-0.5 * (dx * dx + dy * dy) / window**2) * stamp, 0.0)
    total = w.sum()
    if not total > 0:
        return None
    mx, my = (w * dx).sum() / total, (w * dy).sum() / total
    dx, dy = dx - mx, dy - my
    m = np.array([[(w * dx * dx).sum(), (w * dx * dy).sum()], [(w * dx * dy).sum(), (w * dy * dy).sum()]]) / total
    try:
        inv = np.linalg.inv(m) - np.eye(2) / window**2
        values, vectors = np.linalg.eigh(inv)
    except np.linalg.LinAlgError:
        return None
    if not np.all(values > 0):
        return None
    # the smallest eigenvalue of the inverse is the major axis of the source's covariance
    major = 1.0 / values[0]
    theta = math.atan2(vectors[1, 0], vectors[0, 0])
    if theta > math.pi / 2:
        theta -= math.pi
    elif theta < -math.pi / 2:
        theta += math.pi
    length = math.sqrt(max(12.0 * (major - psf_sigma**2), 0.0))
    return x + mx, y + my, length, theta


def _compact_cores(work, variance, mask, objects, x, y, length, theta, psf_sigma, gain, among):
    """Elongated footprints that are a compact core on fainter extended light (a mover crossing a faint
    galaxy, a star on nebulosity, a blend): the windowed centroid started from the footprint's peak,
    kept when the trail model of the whole footprint fits badly (reduced chi2 > 2) and a point PSF fits
    there better, per pixel, however small the shift (blends bias barycentres by a fraction of a pixel).
    Where the point does not fit better, the core may be a short trail (a slow mover on a galaxy: member
    218's V 20.5 mover, 4.3 px long, measured 21-28 px long and 2.6-3.9 px off in two exposures): its
    centre, length and angle from windowed moments (:func:`windowed_shape`, window 2 PSF sigma), kept when
    that trail fits better per pixel, is shorter than the footprint and at most
    :data:`CORE_MAX_LENGTH_FWHM` FWHM long (a section of a long trail measures as long as its window allows
    and stays whole).  Only detections marked in ``among`` (bool (n,)) are examined.

    Returns ``(core, xq, yq, lq, tq)``: a boolean array (n,) marking those detections, the core positions
    [px], lengths [px] (0 for point cores) and angles [rad] (NaN where not evaluated).
    """
    n = len(x)
    core = np.zeros(n, bool)
    xq, yq = np.full(n, np.nan), np.full(n, np.nan)
    lq, tq = np.full(n, np.nan), np.full(n, np.nan)
    fwhm = psf_sigma / FWHM_TO_SIGMA
    wide = np.nonzero(among & (length >= 2.0 * fwhm))[0]
    if wide.size:
        xp = objects["xcpeak"][wide].astype(float)
        yp = objects["ycpeak"][wide].astype(float)
        xw, yw, flag = sep.winpos(work, xp, yp, np.full(wide.size, max(psf_sigma, 0.6)), mask=mask)
        # a masked hit inside the window is skipped by the centroid (a point core beside a cosmic ray had been left
        # in its footprint, 6 px long with the ray's unflagged fringe, and a slow mover of member 381 was vetted out)
        good = ((flag & ~sep.APER_HASMASKED) == 0) & np.isfinite(xw) & np.isfinite(yw)
        # and it stays by the peak it started from (a window half masked may drift to a neighbour's light)
        good &= np.hypot(np.nan_to_num(xw - xp, nan=np.inf), np.nan_to_num(yw - yp, nan=np.inf)) <= max(
            2.0 * psf_sigma, 1.5)
        xw, yw = np.where(good, xw, xp), np.where(good, yw, yp)
        c_point, _, n_point = shape_chi2(work, variance, mask, xw, yw, np.zeros(wide.size), theta[wide], psf_sigma, gain)
        c_trail, _, n_trail = shape_chi2(work, variance, mask, x[wide], y[wide], length[wide], theta[wide],
                                         psf_sigma, gain)
        per_trail = c_trail / np.maximum(n_trail - 5, 1)
        # a clean trail (fitted well by its own model) stays a trail even where it crosses a star
        bad_fit = per_trail > 2.0
        better = (c_point / np.maximum(n_point - 3, 1) < per_trail) & bad_fit
        pick = good & better & np.isfinite(c_point)
        core[wide[pick]] = True
        xq[wide], yq[wide] = xw, yw
        lq[wide[pick]] = 0.0
        tq[wide[pick]] = theta[wide[pick]]
        for j in np.nonzero(good & ~pick & bad_fit)[0]:
            k = wide[j]
            shape = windowed_shape(work, mask, float(xw[j]), float(yw[j]), 2.0 * psf_sigma, psf_sigma)
            if shape is None or math.hypot(shape[0] - xw[j], shape[1] - yw[j]) > psf_sigma:
                continue
            xc, yc, lc, tc = shape
            if lc >= min(length[k], CORE_MAX_LENGTH_FWHM * fwhm):
                continue
            c_core, _, n_core = shape_chi2(work, variance, mask, np.array([xc]), np.array([yc]), np.array([lc]),
                                           np.array([tc]), psf_sigma, gain)
            if np.isfinite(c_core[0]) and c_core[0] / max(n_core[0] - 5, 1) < per_trail[j]:
                core[k] = True
                xq[k], yq[k], lq[k], tq[k] = xc, yc, lc, tc
    return core, xq, yq, lq, tq


def edge_information(shape: tuple, x, y, psf_sigma: float) -> np.ndarray:
    """Share of each point source's positional information that falls beyond the detector edges.

    For a Gaussian PSF of ``psf_sigma`` centred at ``(x, y)``, the fraction of ``sum(P^2)`` (the Fisher
    information of flux and position, background-limited; ``P^2`` is a Gaussian of ``psf_sigma / sqrt(2)``)
    beyond the image's outer pixel boundaries (``-0.5`` and ``n - 0.5``): 0 well inside, 0.5 for a source
    centred on the edge itself.

    Parameters
    ----------
    shape : (int, int)
        Image shape ``(ny, nx)``.
    x, y : ndarray (n,)
        Centres [px, 0-based].
    psf_sigma : float
        [px].

    Returns
    -------
    ndarray (n,)
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ny, nx = shape
    s = max(psf_sigma, 1e-3) / math.sqrt(2.0)
    kept_x = ndtr((x + 0.5) / s) - ndtr((x - nx + 0.5) / s)
    kept_y = ndtr((y + 0.5) / s) - ndtr((y - ny + 0.5) / s)
    return np.clip(1.0 - kept_x * kept_y, 0.0, 1.0)


def near_edge(shape: tuple, x, y, psf_sigma: float) -> np.ndarray:
    """Whether point sources centred at ``(x, y)`` have their core near enough the detector edge to be cut.

    Within ``3 FWHM + 1`` px of the outermost pixel centres the edge can take part of a source's core (its windowed
    centroid leans inwards; the edge PSF fit measures it, ``edge_fit``); beyond, it can only truncate the isophotal
    footprint or the photometric aperture of a bright source.

    Parameters
    ----------
    shape : (ny, nx)
    x, y : ndarray (n,)
        Centres [px, 0-based].
    psf_sigma : float
        [px].

    Returns
    -------
    ndarray (n,) bool
    """
    ny, nx = shape
    x, y = np.asarray(x, float), np.asarray(y, float)
    return np.minimum.reduce([x, y, nx - 1 - x, ny - 1 - y]) < 3.0 * psf_sigma / FWHM_TO_SIGMA + 1.0


def masked_information(mask: np.ndarray, x, y, psf_sigma: float, *, radius: float = 2.5) -> np.ndarray:
    """Share of each point source's positional information that masked pixels take away.

    For a Gaussian PSF of ``psf_sigma`` centred at ``(x, y)``, the fraction of ``sum(P^2)`` (the
    Fisher information of flux and position, background-limited) that falls on masked pixels of the
    square of half-size ``radius`` sigma around it.  0 for a clean core; 0.5 when a cosmic ray hit the brightest pixels.

    Parameters
    ----------
    mask : ndarray (ny, nx) bool
    x, y : ndarray (n,)
        Centres [px, 0-based].
    psf_sigma : float
        [px].

    Returns
    -------
    ndarray (n,)
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    out = np.zeros(x.size)
    if x.size == 0 or not mask.any():
        return out
    ny, nx = mask.shape
    half = int(math.ceil(radius * psf_sigma))
    d = np.arange(-half, half + 1)
    dy, dx = (v.ravel() for v in np.meshgrid(d, d, indexing="ij"))
    ix, iy = np.floor(x + 0.5).astype(np.int64), np.floor(y + 0.5).astype(np.int64)
    px, py = ix[:, None] + dx[None, :], iy[:, None] + dy[None, :]
    inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    hit = np.zeros(px.shape, bool)
    hit[inside] = mask[py[inside], px[inside]]
    w = np.exp(-((px - x[:, None]) ** 2 + (py - y[:, None]) ** 2) / (psf_sigma**2))  # P^2 of a Gaussian
    w = np.where(inside, w, 0.0)
    total = w.sum(axis=1)
    return np.where(total > 0, (w * hit).sum(axis=1) / np.maximum(total, 1e-300), 0.0)


def halo_model(work: np.ndarray, objects, psf_sigma: float, *, min_npix: int, max_fraction: float = 0.2,
               segmap: np.ndarray | None = None, report: dict | None = None):
    """Local background of the largest footprints (bright stars, big galaxies), as an image.

    A source on the halo of a bright star lies inside the star's footprint, and sep's deblending
    never splits off a child fainter than ``deblend_cont`` of its parent's flux: a V = 20 mover
    within 40 px of a 14th-magnitude star is not detected at all.  In the bounding box of every
    footprint of at least ``min_npix`` pixels (not a streak: wide across, or filling a quarter of a box no
    thinner than a quarter of its length; smaller than ``max_fraction`` of the image) the image median-filtered over ``4 FWHM + 1`` px is the halo: a
    compact source covers too few pixels of that window to raise its median, so subtracting the halo
    leaves stars' cores and the sources on their wings on a flat background, where
    :func:`halo_sources` finds them; the halo is then subtracted around those sources only (the bright
    star keeps its wings for its own photometry).  With ``segmap`` the model covers the footprint's
    own pixels only (the other sources in its box keep theirs).

    Parameters
    ----------
    work : ndarray (ny, nx) float32
        Background-subtracted image, masked pixels set to 0.
    objects : structured array
        sep detections (``npix, xmin, xmax, ymin, ymax, a, b``).
    psf_sigma : float
        [px].
    min_npix : int
    max_fraction : float
        Largest box, as a share of the image.  In crowded fields with diffraction spikes one footprint joins a
        saturated star, its spikes and their neighbours over 5-10 % of a 2048^2 image (member 217: a V 20.3
        mover's 43 px trail on one was found only as a source on its halo).
    segmap : ndarray (ny, nx) int, optional
        sep's segmentation map (object ``k`` is ``k + 1``).
    report : dict, optional
        Receives ``n_halo_too_large``: footprints that qualified but whose box exceeds ``max_fraction``
        (not modelled: sources on them are not sought; logged).

    Returns
    -------
    halo : ndarray (ny, nx) float32
        Zero outside the footprints (or boxes); never negative.
    boxes : list of (k, x0, x1, y0, y1)
        The modelled footprints (index into ``objects``) and their boxes (0-based, end exclusive).
    """
    from scipy.ndimage import median_filter

    ny, nx = work.shape
    halo = np.zeros_like(work)
    if len(objects) == 0:
        return halo, []
    size = 2 * int(math.ceil(2.0 * psf_sigma / FWHM_TO_SIGMA)) + 1
    width = objects["xmax"] - objects["xmin"] + 1.0
    height = objects["ymax"] - objects["ymin"] + 1.0
    # not streaks (satellites, bleeds): wide across (the minor-axis rms of a spiky or haloed star or a galaxy), or,
    # for a bright compact star whose moments are those of its core whatever its halo, a footprint filling a
    # quarter of a box no thinner than a quarter of its length
    compact = (np.minimum(width, height) >= np.maximum(0.25 * np.maximum(width, height), size))
    compact &= objects["npix"] >= 0.25 * width * height
    round_ish = (objects["b"] >= 2.0 * size / 9.0) | compact
    qualified = (objects["npix"] >= min_npix) & round_ish
    big = np.nonzero(qualified & (width * height <= max_fraction * nx * ny))[0]
    too_large = int(qualified.sum()) - big.size
    if report is not None:
        report["n_halo_too_large"] = too_large
    if too_large:
        log.info("halo model: %d footprint(s) with boxes over %.0f %% of the image not modelled (no sources sought "
                 "on their halos)", too_large, 100 * max_fraction)
    boxes = []
    log.debug("halo model: %d footprints of >= %d px, %d of them streak-like or too large", int(np.sum(
        objects["npix"] >= min_npix)), min_npix, int(np.sum(objects["npix"] >= min_npix)) - big.size)
    for k in big:
        o = objects[k]
        x0, x1 = max(int(o["xmin"]) - size, 0), min(int(o["xmax"]) + size + 1, nx)
        y0, y1 = max(int(o["ymin"]) - size, 0), min(int(o["ymax"]) + size + 1, ny)
        model = np.clip(median_filter(work[y0:y1, x0:x1], size=size, mode="nearest"), 0.0, None)
        if segmap is not None:
            model = np.where(segmap[y0:y1, x0:x1] == k + 1, model, 0.0)
        np.maximum(halo[y0:y1, x0:x1], model, out=halo[y0:y1, x0:x1])
        boxes.append((int(k), x0, x1, y0, y1))
    return halo, boxes


#: Largest ratio of the major to the minor axis rms of a peak's surroundings for it to count as a source on a halo
#: (a slow mover's short trail is well below it; the end of a spike or a bleed, a line leaving the window, is above).
MAX_PEAK_ELONGATION = 2.5
#: An elongated peak is a spike's or a bleed's when its major axis points within this angle [deg] of the centre of
#: the star whose halo it lies on (spikes and bleeds radiate from it); a mover's trail on the halo points anywhere.
RADIAL_TOLERANCE = 20.0


#: Pixels this near [px] a large masked region (a bleed column, a saturated core: :data:`LARGE_MASK_NPIX` pixels or
#: more) are neither peaks on a halo nor part of the ring a peak must stand out above (:func:`halo_sources`): a
#: bleed's unflagged spill is no source and no part of a smooth rise.  Cosmic-ray hits (a few to ~20 px) keep their
#: neighbours: a source beside one is still sought.
RING_MASK_CLEARANCE = 2
LARGE_MASK_NPIX = 30


def _near_large_masks(bad: np.ndarray) -> np.ndarray:
    """Pixels within :data:`RING_MASK_CLEARANCE` px (8-connected steps) of a masked region of at least
    :data:`LARGE_MASK_NPIX` pixels (8-connected).  ``bad``: bool (ny, nx); returns the same shape."""
    from scipy.ndimage import binary_dilation, label

    if not bad.any():
        return np.zeros_like(bad)
    labels, n = label(bad, structure=np.ones((3, 3)))
    large = np.nonzero(np.bincount(labels.ravel(), minlength=n + 1)[1:] >= LARGE_MASK_NPIX)[0] + 1
    if large.size == 0:
        return np.zeros_like(bad)
    return binary_dilation(np.isin(labels, large), structure=np.ones((3, 3)), iterations=RING_MASK_CLEARANCE)


#: A run of this many pixels [px] below half the detection threshold on the way from a peak to its halo's star
#: separates the peak from the star: not the end of a spike or a bleed (they run continuously from the core).
SPIKE_GAP = 4


def _line_like(snr: np.ndarray, j: int, i: int, half: int, threshold: float, centre=None,
               bad: np.ndarray | None = None) -> bool:
    """Whether the pixels above half the threshold around peak ``(j, i)`` of a signal-to-noise map are elongated like
    a line (second moments' axis ratio above :data:`MAX_PEAK_ELONGATION`) that, when ``centre`` (x, y) of the halo's
    star is given, points at that centre (within :data:`RADIAL_TOLERANCE`) and reaches it: a spike or a bleed runs
    continuously from the star's core, a mover's trail pointing at the star lies beyond a gap (:func:`_gap_towards`;
    V 20.6 and V 23.4 movers 20-35 px from bright stars, their trails radial by chance, had been left out).
    ``bad`` (same shape): unusable pixels, never part of a gap."""
    shape = _peak_shape(snr, j, i, half, threshold)
    if shape is None:
        return False
    _, _, cxx, cyy, cxy = shape
    if not _elongated(cxx, cyy, cxy):
        return False
    if centre is None:
        return True
    axis = 0.5 * math.atan2(2.0 * cxy, cxx - cyy)
    radial = math.atan2(j - centre[1], i - centre[0])
    off = abs((axis - radial + math.pi / 2) % math.pi - math.pi / 2)
    if off > math.radians(RADIAL_TOLERANCE):
        return False
    # along the line's own axis, on the star's side, as far as the star
    ux, uy = math.cos(axis), math.sin(axis)
    if ux * (centre[0] - i) + uy * (centre[1] - j) < 0:
        ux, uy = -ux, -uy
    return not _gap_towards(snr, j, i, (ux, uy), math.hypot(centre[0] - i, centre[1] - j), 0.5 * threshold, bad)


def _peak_shape(snr: np.ndarray, j: int, i: int, half: int, threshold: float):
    """Centroid ``(mx, my)`` [px of the map] and second moments ``(cxx, cyy, cxy)`` [px^2] of the signal-to-noise
    above half the threshold in the window of half-size ``half`` around peak ``(j, i)``; None when it is empty."""
    ny, nx = snr.shape
    ya, yb, xa, xb = max(j - half, 0), min(j + half + 1, ny), max(i - half, 0), min(i + half + 1, nx)
    w = np.clip(snr[ya:yb, xa:xb] - 0.5 * threshold, 0.0, None)
    total = float(w.sum())
    if total <= 0:
        return None
    yy, xx = np.mgrid[ya:yb, xa:xb]
    mx, my = float(np.sum(w * xx)) / total, float(np.sum(w * yy)) / total
    cxx = float(np.sum(w * (xx - mx) ** 2)) / total
    cyy = float(np.sum(w * (yy - my) ** 2)) / total
    cxy = float(np.sum(w * (xx - mx) * (yy - my))) / total
    return mx, my, cxx, cyy, cxy


def _axes(cxx: float, cyy: float, cxy: float) -> tuple[float, float]:
    """Major and minor variances [px^2] of second moments."""
    root = math.sqrt(max(0.25 * (cxx - cyy) ** 2 + cxy**2, 0.0))
    return 0.5 * (cxx + cyy) + root, 0.5 * (cxx + cyy) - root


def _elongated(cxx: float, cyy: float, cxy: float) -> bool:
    """Axis ratio above :data:`MAX_PEAK_ELONGATION`."""
    major, minor = _axes(cxx, cyy, cxy)
    return major > MAX_PEAK_ELONGATION**2 * max(minor, 1e-3)


def _gap_towards(snr: np.ndarray, j: int, i: int, direction, distance: float, level: float,
                 bad: np.ndarray | None = None) -> bool:
    """Whether the path of ``distance`` px from pixel ``(j, i)`` along the unit vector ``direction`` (x, y) crosses
    :data:`SPIKE_GAP` consecutive steps of 1 px where the signal-to-noise map stays below ``level`` across a 3 px
    wide band (unusable pixels, and the map's outside, end a run)."""
    ny, nx = snr.shape
    steps = int(math.floor(distance))
    ux, uy = direction
    run = 0
    for k in range(1, steps):
        quiet = True
        for w in (-1.0, 0.0, 1.0):
            x, y = int(round(i + k * ux - w * uy)), int(round(j + k * uy + w * ux))
            if not (0 <= x < nx and 0 <= y < ny) or (bad is not None and bad[y, x]) or snr[y, x] >= level:
                quiet = False
                break
        run = run + 1 if quiet else 0
        if run >= SPIKE_GAP:
            return True
    return False


def halo_sources(work: np.ndarray, err: np.ndarray, mask: np.ndarray, objects, boxes: list, kernel: np.ndarray,
                 threshold: float, min_area: int):
    """Compact sources inside the footprints of :func:`halo_model`, as sep-like object records.

    In each box of the halo-subtracted image, the peaks of the matched-filtered signal-to-noise map
    that reach ``threshold`` and stand out by as much above the ring around them (so that the smooth
    rise of a diffraction spike or of what is left of a halo does not count; pixels near large masked regions, a
    bleed's unflagged spill, are neither peaks nor ring: :data:`RING_MASK_CLEARANCE`), at least 2 kernel
    widths from every segmented object's centre and peak, with ``min_area`` pixels above the
    threshold around them, and not elongated like the end of a line pointing at the footprint's peak (a
    spike's or a bleed's: a mover's trail on the halo points anywhere).  The records carry the peak as position, a
    PSF-sized round shape and the flux of the 5x5 pixels around it (all re-measured downstream like any detection);
    an elongated peak (a mover's trail on the halo) carries instead the centroid and second moments of its
    surroundings above half the threshold, so that it is measured as a trail piece (a V 21.2 trail of 34 px on a
    bright star's halo had been found as three point sources along it).

    Parameters
    ----------
    work, err, mask : ndarray (ny, nx)
        Halo-subtracted image (masked pixels 0), its noise and unusable pixels.
    objects : structured array
        The segmented detections (for their centres and the record layout).
    boxes : list
        From :func:`halo_model`.
    kernel : ndarray
        The matched filter (normalised PSF).
    threshold : float
        [sigma of the filtered image].
    min_area : int

    Returns
    -------
    structured array
        With ``objects``' dtype (possibly empty).
    """
    from scipy.ndimage import convolve, maximum_filter
    from scipy.spatial import cKDTree

    half = kernel.shape[0] // 2
    gain_k = float(np.sqrt(np.sum(kernel.astype(float) ** 2)))
    sep_xy = np.concatenate([np.column_stack([objects["x"], objects["y"]]),
                             np.column_stack([objects["xcpeak"], objects["ycpeak"]])]).astype(float)
    existing = cKDTree(sep_xy)
    radius = max(2.0 * half, 3.0)
    ring = np.zeros((2 * int(radius) + 3,) * 2, bool)
    yy, xx = np.mgrid[: ring.shape[0], : ring.shape[1]] - ring.shape[0] // 2
    rr = np.hypot(xx, yy)
    ring[(rr >= radius) & (rr < radius + 1.5)] = True
    found: dict = {}
    for k, x0, x1, y0, y1 in boxes:
        star_x, star_y = float(objects["xcpeak"][k]), float(objects["ycpeak"][k])
        sub = work[y0:y1, x0:x1].astype(float)
        noise = err[y0:y1, x0:x1].astype(float)
        bad = mask[y0:y1, x0:x1]
        snr = convolve(np.where(bad, 0.0, sub), kernel.astype(float), mode="constant") / (noise * gain_k)
        snr[bad] = 0.0
        peak = (snr == maximum_filter(snr, size=3)) & (snr >= threshold)
        # pixels within RING_MASK_CLEARANCE of unusable ones are neither peaks nor part of the ring: beside a masked
        # bleed column its unflagged spill (46,500 ADU next to the column) outshone a V 20.5 mover 4 px from it in the
        # ring (member 460), and is no source itself
        near_bad = _near_large_masks(bad)
        peak &= ~near_bad
        peak &= snr - maximum_filter(np.where(near_bad, 0.0, snr), footprint=ring, mode="nearest") >= threshold
        above = convolve((snr >= threshold).astype(float), np.ones((3, 3)), mode="constant")
        peak &= above >= min(min_area, 9)
        py, px = np.nonzero(peak)
        for j, i in zip(py, px):
            gx, gy = int(i + x0), int(j + y0)
            if existing.query_ball_point([gx, gy], radius, return_length=True) or (gx, gy) in found:
                continue
            if _line_like(snr, j, i, int(radius) + 1, threshold, centre=(star_x - x0, star_y - y0), bad=bad):
                continue  # the end of a diffraction spike or a bleed that the median filter left, not a source
            shape = _peak_shape(snr, j, i, int(radius) + 1, threshold)
            if shape is not None and _elongated(*shape[2:]):
                found[(gx, gy)] = (shape[0] + x0, shape[1] + y0, *shape[2:])
            else:
                found[(gx, gy)] = None
    rec = np.zeros(len(found), dtype=objects.dtype)
    ny, nx = work.shape
    for n, ((gx, gy), shape) in enumerate(sorted(found.items())):
        xa, xb, ya, yb = max(gx - 2, 0), min(gx + 3, nx), max(gy - 2, 0), min(gy + 3, ny)
        stamp = np.where(mask[ya:yb, xa:xb], 0.0, work[ya:yb, xa:xb])
        rec[n]["x"], rec[n]["y"] = gx, gy
        for name in ("xcpeak", "xpeak"):
            rec[n][name] = gx
        for name in ("ycpeak", "ypeak"):
            rec[n][name] = gy
        rec[n]["xmin"], rec[n]["xmax"], rec[n]["ymin"], rec[n]["ymax"] = xa, xb - 1, ya, yb - 1
        rec[n]["a"] = rec[n]["b"] = max(half / 2.0, 0.5)
        rec[n]["x2"] = rec[n]["y2"] = rec[n]["a"] ** 2
        rec[n]["npix"] = rec[n]["tnpix"] = int(np.sum(stamp > threshold * err[gy, gx]))
        rec[n]["flux"] = rec[n]["cflux"] = float(stamp.sum())
        rec[n]["peak"] = rec[n]["cpeak"] = float(work[gy, gx])
        rec[n]["thresh"] = threshold * float(err[gy, gx])
        if shape is not None:  # a trail piece: its centroid and moments
            mx, my, cxx, cyy, cxy = shape
            major, minor = _axes(cxx, cyy, cxy)
            rec[n]["x"], rec[n]["y"] = mx, my
            rec[n]["x2"], rec[n]["y2"], rec[n]["xy"] = cxx, cyy, cxy
            rec[n]["a"], rec[n]["b"] = math.sqrt(major), math.sqrt(max(minor, 0.0))
            rec[n]["theta"] = 0.5 * math.atan2(2.0 * cxy, cxx - cyy)
    return rec


#: Farthest apart [FWHM] two deblended pieces of one footprint may lie to be joined again across a masked hit
#: between them (:func:`rejoin_split_sources`), and the largest ratio of their fluxes.
REJOIN_MAX_SEPARATION_FWHM = 5.0
REJOIN_MAX_FLUX_RATIO = 2.5
#: Largest share of the image's pixels masked as hits for pieces to be joined across them: beyond, a hit lies between
#: two neighbouring sources by chance (NEOSSat's warm pixels: 16 % of a frame masked, and 1359 of 8369 pieces had been
#: joined to a neighbour).  The scene family's cosmic rays cover 1-4 %.
REJOIN_MAX_HIT_FRACTION = 0.06
#: A hit touching more pieces than this (a long track across a crowded field) pairs only the pieces that one of its
#: pixels touches itself.
REJOIN_MAX_PIECES_TOUCHED = 8


def rejoin_split_sources(objects: np.ndarray, segmap: np.ndarray, hits: np.ndarray, psf_sigma: float):
    """Pieces of one footprint that deblending split at a masked hit, joined again.

    A cosmic-ray hit on a faint trail is masked and, where its neighbours are not all bright (the trail's flanks),
    set to the background for segmentation: the hole is a valley that sep's deblending cuts the footprint at (a
    V 23 slow mover of members 381 and 384, its 6 px trail hit in the middle in two of its four exposures, became
    two point sources 1.9 px either side of its centre in both, and was lost; 16 of 20 such trails in a test), or
    the hole parts the footprint itself.  Two pieces are joined where a hit (an 8-connected cluster of masked
    pixels: a track 2 px wide has pixels that touch one piece only) touches both segments and lies between their
    centres (projected within the middle 70 % of the line joining them, within 1.5 px of it), the
    centres lie at most :data:`REJOIN_MAX_SEPARATION_FWHM` apart and their fluxes within
    :data:`REJOIN_MAX_FLUX_RATIO` of each other (a faint mover beside a star stays apart; at 4x, a star of a crowded
    field with a neighbour 4.6 px away had been joined to it and lost to the registration).  Two alike point
    sources 5 px apart with a hit exactly between them are joined too (rare: the hit must touch both footprints).
    Where hits cover more than :data:`REJOIN_MAX_HIT_FRACTION` of the image, none is joined (logged).
    Two pieces at most are joined (a chain of joins would carry neither limit); the joined piece's moments are
    the pieces' flux-weighted ones.

    Parameters
    ----------
    objects : structured ndarray (n,)
        sep's objects.
    segmap : ndarray (ny, nx) int
        sep's segmentation map (object ``k`` is ``k + 1``).
    hits : ndarray (ny, nx) bool
        The masked cosmic-ray and hot-pixel hits.
    psf_sigma : float
        [px].

    Returns
    -------
    objects : structured ndarray (m,)
        With each joined group in its first piece's place and the others removed.
    segmap : ndarray (ny, nx) int
        Relabelled to match.
    n_rejoined : int
        Pieces removed by joining.
    """
    n = len(objects)
    if n < 2 or not hits.any():
        return objects, segmap, 0
    if hits.mean() > REJOIN_MAX_HIT_FRACTION:
        log.info("%.1f %% of the image masked as hits (over %.0f %%): no pieces joined across them", 100 * hits.mean(),
                 100 * REJOIN_MAX_HIT_FRACTION)
        return objects, segmap, 0
    ny, nx = segmap.shape
    ys, xs = np.nonzero(hits)
    around = np.stack([segmap[np.clip(ys + dy, 0, ny - 1), np.clip(xs + dx, 0, nx - 1)]
                       for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=1)
    # a hit is its 8-connected cluster of masked pixels: a track 2 px wide or more has pixels that touch one piece
    # only, or none, and together they touch both
    labels, _ = ndimage.label(hits, structure=np.ones((3, 3), bool))
    cluster = labels[ys, xs]
    beside = np.nonzero(around.max(axis=1) > 0)[0]  # hit pixels with a segment around (most hits have none)
    cl = np.repeat(cluster[beside], around.shape[1])
    seg = around[beside].ravel()
    touch = np.unique(np.column_stack([cl[seg > 0], seg[seg > 0]]), axis=0)  # (cluster, segment id) pairs
    if not len(touch):
        return objects, segmap, 0
    starts = np.r_[0, np.nonzero(np.diff(touch[:, 0]))[0] + 1]
    pairs_by_cluster: dict = {}
    for a, b in zip(starts, np.r_[starts[1:], len(touch)]):
        segs = touch[a:b, 1]
        if 2 <= segs.size <= REJOIN_MAX_PIECES_TOUCHED:  # a long track across many sources joins none of them
            for i in range(segs.size):
                for j in range(i + 1, segs.size):
                    pairs_by_cluster.setdefault((int(segs[i]) - 1, int(segs[j]) - 1), []).append(int(touch[a, 0]))
    # and, whatever the cluster's size, a pixel touching two pieces itself pairs them
    hi = around.max(axis=1)
    lo = np.min(np.where(around > 0, around, hi[:, None]), axis=1)
    for k in np.nonzero((lo > 0) & (hi > lo))[0]:
        found = pairs_by_cluster.setdefault((int(lo[k]) - 1, int(hi[k]) - 1), [])
        if int(cluster[k]) not in found:
            found.append(int(cluster[k]))
    if not pairs_by_cluster:
        return objects, segmap, 0
    x, y = objects["x"].astype(float), objects["y"].astype(float)
    flux = np.maximum(objects["flux"].astype(float), 0.0)
    max_sep = REJOIN_MAX_SEPARATION_FWHM * psf_sigma / FWHM_TO_SIGMA
    parent = np.arange(n)

    def root(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    hx, hy = xs.astype(float), ys.astype(float)
    order = np.argsort(cluster, kind="stable")  # the hit pixels cluster by cluster
    sorted_cluster = cluster[order]
    size = np.ones(n, np.int64)
    for (p, q), clusters in sorted(pairs_by_cluster.items()):
        if not 0.0 < min(flux[p], flux[q]) or min(flux[p], flux[q]) * REJOIN_MAX_FLUX_RATIO < max(flux[p], flux[q]):
            continue
        if size[root(p)] > 1 or size[root(q)] > 1:
            continue  # two pieces at most: a chain of joins would carry neither limit (three stars in a row)
        d = math.hypot(x[q] - x[p], y[q] - y[p])
        if not 0.0 < d <= max_sep:
            continue
        ux, uy = (x[q] - x[p]) / d, (y[q] - y[p]) / d
        mine = np.concatenate([order[np.searchsorted(sorted_cluster, c, "left"):np.searchsorted(sorted_cluster, c, "right")]
                               for c in clusters])
        along = (hx[mine] - x[p]) * ux + (hy[mine] - y[p]) * uy
        across = -(hx[mine] - x[p]) * uy + (hy[mine] - y[p]) * ux
        if not np.any((along >= 0.15 * d) & (along <= 0.85 * d) & (np.abs(across) <= 1.5)):
            continue
        a, b = root(p), root(q)
        parent[max(a, b)] = min(a, b)  # the group in its first piece's place
        size[min(a, b)] += size[max(a, b)]
    roots = np.array([root(k) for k in range(n)])
    if np.all(roots == np.arange(n)):
        return objects, segmap, 0
    out = objects.copy()
    for r in np.unique(roots[roots != np.arange(n)]):
        group = np.nonzero(roots == r)[0]
        g = objects[group]
        w = np.maximum(g["flux"].astype(float), 1e-12)
        total = w.sum()
        gx, gy = g["x"].astype(float), g["y"].astype(float)
        mx, my = float(np.sum(w * gx) / total), float(np.sum(w * gy) / total)
        x2 = float(np.sum(w * (g["x2"] + (gx - mx) ** 2)) / total)
        y2 = float(np.sum(w * (g["y2"] + (gy - my) ** 2)) / total)
        xy = float(np.sum(w * (g["xy"] + (gx - mx) * (gy - my))) / total)
        half_sum, half_diff = 0.5 * (x2 + y2), math.sqrt((0.5 * (x2 - y2)) ** 2 + xy**2)
        det = max(x2 * y2 - xy**2, 1e-12)
        row = out[r]
        row["x"], row["y"], row["x2"], row["y2"], row["xy"] = mx, my, x2, y2, xy
        row["a"], row["b"] = math.sqrt(half_sum + half_diff), math.sqrt(max(half_sum - half_diff, 0.0))
        row["theta"] = 0.5 * math.atan2(2.0 * xy, x2 - y2)
        row["cxx"], row["cyy"], row["cxy"] = y2 / det, x2 / det, -2.0 * xy / det
        for name in ("errx2", "erry2", "errxy"):
            row[name] = float(np.sum(w**2 * g[name]) / total**2)
        for name in ("npix", "tnpix", "cflux", "flux"):
            row[name] = g[name].sum()
        for name in ("xmin", "ymin"):
            row[name] = g[name].min()
        for name in ("xmax", "ymax"):
            row[name] = g[name].max()
        brightest = int(np.argmax(g["peak"]))
        for name in ("cpeak", "peak", "xcpeak", "ycpeak", "xpeak", "ypeak"):
            row[name] = g[name][brightest]
        row["flag"] = np.bitwise_or.reduce(g["flag"])
    keep = roots == np.arange(n)
    new_id = np.zeros(n + 1, segmap.dtype)
    new_id[1:] = (np.cumsum(keep) * keep)[roots]  # each piece takes its group root's new label
    return out[keep], new_id[segmap], int(n - keep.sum())


def correlated_noise_note(info: dict) -> str:
    """What :func:`extract_sources` made of the noise correlation (its ``info``), for the log; "" when the noise read
    as independent between pixels."""
    measured, spread = info.get("correlated_noise_measured"), info.get("correlated_noise_spread")
    if measured is None:
        return ("noise correlation not measured (too few usable pixels, or no scatter below the filtered image's "
                "mode): the noise is taken as independent between pixels")
    if info.get("correlated_noise_scale", 1.0) != 1.0:
        return (f"noise correlated between pixels: the matched filter scatters {measured:.2f} times what the pixel RMS "
                "implies; the noise is scaled by it for detection and measurement")
    if measured >= CORRELATED_NOISE_MIN:
        return (f"the matched filter scatters {measured:.2f} times what the pixel RMS implies, but not like normal "
                f"noise (readings {spread:.2f} apart): the noise is not scaled")
    return ""


def empty_detections() -> Table:
    """A detection table with every column and no rows."""
    return empty_table(DETECTION_COLUMNS)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 2-D Gaussian matched-filter kernel of half-size ``ceil(2.5 sigma)``.

    The matched filter's S/N grows with the sum of the squared kernel, a Gaussian of width sigma / sqrt(2):
    2.5 sigma holds all but 4e-4 of it per axis, and for Euclid's sigma ~0.72 px makes a 5x5 kernel where
    3 sigma made a 7x7 one (sep's matched filtering of a 4k CCD: 1.97 -> 1.08 s; the same detections).
    """
    half = max(1, int(math.ceil(2.5 * sigma)))
    r = np.arange(-half, half + 1)
    g = np.exp(-0.5 * (r / sigma) ** 2)
    kernel = np.outer(g, g)
    return (kernel / kernel.sum()).astype(np.float32)


#: PSF Gaussian sigma [px] below which nothing is taken for a star (cosmic rays and hot pixels are sharper):
#: pixels sharper than a PSF this narrow allows are hits, and sources near them are left out of the PSF estimate.
SHARPEST_PSF_SIGMA = 0.45
#: The sharp-pixel test (margin 1.5) run with this PSF sigma flags what is sharper than a pixel-centred
#: Gaussian of ~0.45 px (:data:`SHARPEST_PSF_SIGMA`): the hits left out of the PSF estimate.
HIT_TEST_SIGMA = 0.55
#: S/N (flux over the noise of a 5x5 stamp) of the sources the PSF is measured on, when enough have it.
MIN_PSF_SNR = 50.0
#: Sources in the star locus (a 0.15 px window) from which its sigma is taken whatever it is; fewer: at most the
#: default (an overestimate masks star cores as cosmic rays; an underestimate costs little).
STRONG_PSF_PEAK = 8


def measure_psf_sigma(data, variance, mask, objects, *, gain: float, default: float | None = 0.75,
                      min_sources: int = 5, sharp: np.ndarray | None = None,
                      report: dict | None = None) -> float | None:
    """PSF Gaussian sigma [px] from the bright compact sources of an image.

    For up to 400 bright, round, unflagged detections a pixel-integrated
    Gaussian is fitted to the 5x5 stamp for each sigma of a grid (0.35-2.5 px);
    each source's best sigma is kept.  Cosmic rays and hot pixels prefer sigmas
    below 0.45 px and are excluded, and so is every source with a pixel of
    ``sharp`` (hits sharper than any PSF: :data:`HIT_TEST_SIGMA`) within 1 px:
    on a sparse field with 1.5 % cosmic rays, 390 of the 400 brightest compact
    sources were hits, which form a spread locus at 0.45-0.85 px.  Sources below
    S/N :data:`MIN_PSF_SNR` are left out too when enough remain.  The stars are
    the most compact population of the rest: the lowest-sigma peak of the
    histogram (0.15 px windows) that holds at least 4 sources, an eighth of the
    highest peak and at least the mean of the windows beside it (a star locus
    is narrow; leftover hits spread), not the highest peak: galaxies, 10x more
    common than stars on some fields, pile up at larger sigma (a double-Gaussian
    PSF fitting at 0.9 px had been measured as 1.4 px, and every star core
    masked as a cosmic ray).  An overestimate costs far more than an
    underestimate (cores masked, a matched filter too wide), so a field with
    only a handful of bright stars takes their small group, not the galaxies',
    a locus of fewer than :data:`STRONG_PSF_PEAK` sources gives at most
    ``default``, and a field without one (stars trailed by the tracking: all
    the compact sources left are galaxies) gets ``default``, as does one with
    fewer than ``min_sources`` suitable sources.  Hits in a source's 3x3 core
    leave it out, always; hits beside it are masked in its fit.

    Parameters
    ----------
    data : ndarray (ny, nx)
        Background-subtracted image.
    variance, mask : ndarray (ny, nx)
        Background variance and bad-pixel mask.
    objects : structured array
        sep detections (``x``, ``y``, ``a``, ``b``, ``flag``, ``cflux``).
    gain : float
        [e-/ADU].
    default : float or None
        Returned when the image holds no usable star locus [px]; a weak locus is capped at it (None: no cap,
        None returned).
    min_sources : int
        Fewest suitable sources to measure from.
    report : dict, optional
        Receives ``psf_status`` ("measured"; "weak": a locus of fewer than :data:`STRONG_PSF_PEAK`
        sources, its sigma capped at ``default``; "default": no locus or too few sources) and ``psf_locus``
        (sources in the locus's window, 0 without one).
    sharp : ndarray (ny, nx) bool, optional
        Pixels sharper than any PSF (:data:`HIT_TEST_SIGMA`): sources with one in their 3x3 core are left
        out, the others' fits skip them.

    Returns
    -------
    float or None
        PSF Gaussian sigma [px] (pixel-integrated); ``default`` (or less) when no strong star locus exists.
    """
    if len(objects) == 0:
        return _psf_result(report, default, "default", 0)
    compact = (objects["b"] / np.maximum(objects["a"], 1e-6) > 0.6) & (objects["flag"] == 0) & (objects["cflux"] > 0)
    ny, nx = np.shape(data)
    ix = np.clip(np.round(np.asarray(objects["x"], float)).astype(np.int64), 0, nx - 1)
    iy = np.clip(np.round(np.asarray(objects["y"], float)).astype(np.int64), 0, ny - 1)
    clean = np.ones(len(objects), bool)
    if sharp is not None and sharp.any():
        for dy in range(-1, 2):  # hits in the core: a cosmic ray itself, or a star it struck
            for dx in range(-1, 2):
                clean &= ~sharp[np.clip(iy + dy, 0, ny - 1), np.clip(ix + dx, 0, nx - 1)]
        mask = mask | sharp  # hits beside a source are left out of its fit
    # S/N over a 5x5 stamp: a faint source's shape is too poorly measured to tell a star from a cosmic ray the
    # sharp-pixel test could not flag at its S/N
    snr = np.asarray(objects["cflux"], float) / (5.0 * np.sqrt(np.maximum(np.asarray(variance)[iy, ix].astype(float), 1e-12)))
    cand = np.zeros(0, np.int64)
    for keep in (compact & clean & (snr >= MIN_PSF_SNR), compact & clean):  # the strictest that leaves enough
        cand = np.nonzero(keep)[0]
        if cand.size >= min_sources:
            break
    if cand.size < min_sources:
        return _psf_result(report, default, "default", 0)
    order = cand[np.argsort(objects["cflux"][cand])[::-1]][:400]
    xs, ys = objects["x"][order].astype(float), objects["y"][order].astype(float)
    grid = np.arange(0.35, 2.5, 0.025)
    zeros = np.zeros(xs.size)
    chi2 = np.stack([shape_chi2(data, variance, mask, xs, ys, zeros, zeros, sig, gain)[0] for sig in grid])
    valid = np.all(np.isfinite(chi2), axis=0)
    if valid.sum() < min_sources:
        return _psf_result(report, default, "default", 0)
    best = grid[np.argmin(chi2[:, valid], axis=0)]
    best = best[best > SHARPEST_PSF_SIGMA + 1e-6]  # the grid's 0.45 is 0.45000000000000007
    if best.size < min_sources:
        return _psf_result(report, default, "default", 0)
    hist, edges = np.histogram(best, bins=np.arange(SHARPEST_PSF_SIGMA, 2.5, 0.05))
    smooth = np.convolve(hist, np.ones(3), mode="same")  # sources within +-0.075 px of each bin
    padded = np.pad(smooth, 3)
    flanks = 0.5 * (padded[:-6] + padded[6:])  # the windows just below and just above
    peaks = np.nonzero((smooth >= padded[2:-4]) & (smooth >= padded[4:-2]) & (smooth >= flanks)
                       & (smooth >= max(4.0, smooth.max() / 8.0)))[0]
    if not peaks.size:  # no star locus (a field of trailed stars, or too few stars): not the galaxies' sigma
        return _psf_result(report, default, "default", 0)
    peak = int(peaks[0])
    centre = 0.5 * (edges[peak] + edges[peak + 1])
    near = best[np.abs(best - centre) < 0.1]
    sigma = float(np.median(near))  # the peak's window holds >= 4 of them
    if smooth[peak] < STRONG_PSF_PEAK:
        # a handful of sources may be a few galaxies of one size (a CCD with four bright stars and 3.7 % cosmic
        # rays was measured at 1.29 px, its other exposures at 0.81-0.90): never more than the default then
        return _psf_result(report, None if default is None else min(sigma, default), "weak", int(smooth[peak]))
    return _psf_result(report, sigma, "measured", int(smooth[peak]))


def _psf_result(report: dict | None, sigma, status: str, locus: int):
    """``sigma``, with how it was found written to ``report`` (when given)."""
    if report is not None:
        report["psf_status"], report["psf_locus"] = status, locus
    return sigma


def image_psf_sigma(work: np.ndarray, err: np.ndarray, mask: np.ndarray, *, gain: float, report: dict | None = None,
                    band_pixels: int = 4_000_000, min_stars: int = 30, default: float = 0.75) -> float:
    """PSF Gaussian sigma [px] of an image, from a central band of rows when that holds enough stars.

    The sources are those of a 20-sigma point-source detection (the image filtered with a Gaussian of
    0.8 px, a single noise level, no cleaning of spurious neighbours: the brightest compact sources are
    what :func:`measure_psf_sigma` takes; 0.19 s for a 4 Mpx band, where sep's matched filter with a noise
    map and cleaning took 0.38 s for the same estimate).  A band of ``band_pixels`` pixels holds enough
    stars on any field where stars are not rare: when :func:`measure_psf_sigma` finds at least
    ``min_stars`` star-like sources there, their PSF is the image's; else the whole image is searched.
    Each search also runs the sharp-pixel test once (:data:`HIT_TEST_SIGMA`; ~0.03 s per 4 Mpx) to leave
    cosmic-ray hits out.

    Parameters
    ----------
    work, err : ndarray (ny, nx) float32, C-contiguous
        Background-subtracted image with masked pixels zeroed, and its noise [ADU].
    mask : ndarray (ny, nx) bool
    gain : float
        [e-/ADU].
    """
    ny, nx = work.shape
    rows = max(band_pixels // max(nx, 1), 64)
    kernel = gaussian_kernel(0.8)
    # a filtered image's noise is the pixel noise x sqrt(sum K^2) (the kernel sums to 1): 20 sigma of it
    thresh = 20.0 * float(np.sqrt(np.sum(kernel.astype(np.float64) ** 2)))

    def stars(region):
        noise = float(np.median(err[region][::4, ::4]))
        return sep.extract(work[region], thresh, err=noise, mask=mask[region], minarea=5, filter_kernel=kernel,
                           filter_type="conv", deblend_cont=0.005, clean=False)

    def sharp(region):  # cosmic-ray and hot-pixel hits: sharper than any PSF
        return sharp_pixel_mask(work[region], err[region], HIT_TEST_SIGMA, mask=mask[region])

    if rows < ny:
        y0 = (ny - rows) // 2
        band = slice(y0, y0 + rows)
        sigma = measure_psf_sigma(work[band], err[band] ** 2, mask[band], stars(band), gain=gain, default=None,
                                  min_sources=min_stars, sharp=sharp(band), report=report)
        if sigma is not None:
            return sigma
    everything = slice(0, ny)
    return measure_psf_sigma(work, err**2, mask, stars(everything), gain=gain, sharp=sharp(everything), report=report,
                             default=default)


def extract_sources(
    data: np.ndarray,
    *,
    mask: np.ndarray,
    error: np.ndarray,
    gain: float,
    config: DetectConfig,
    psf_sigma: float | None = None,
    return_hits: bool = False,
    known_hits: np.ndarray | None = None,
) -> tuple[Table, dict]:
    """Detect and measure the sources of a background-subtracted image.

    Parameters
    ----------
    data : ndarray (ny, nx) float32
        Background-subtracted image [ADU]. Not modified.
    mask : ndarray (ny, nx) bool
        True where pixels are unusable.
    error : ndarray (ny, nx) float32
        Background noise per pixel [ADU].
    gain : float
        [e-/ADU], for the Poisson noise of sources.
    config : DetectConfig
    psf_sigma : float, optional
        PSF Gaussian sigma [px]; measured from the image when None.
    return_hits : bool
        Also return the mask of pixels sharper than the PSF (cosmic rays, hot
        pixels) as ``info["sharp_pixels"]`` (ndarray (ny, nx) bool).
    known_hits : ndarray (ny, nx) bool, optional
        Pixels known to be hits before looking (hot pixels found in the sequence's frames): treated
        like the sharp pixels found here (masked for the PSF, detection and measurement, filled for
        segmentation), not as the detector mask (a source beside one is not ``near_mask``).

    Returns
    -------
    detections : astropy.table.Table
        One row per detection, columns :data:`DETECTION_COLUMNS` (empty table
        with every column when nothing is found).
    info : dict
        ``psf_sigma``, ``aperture_correction``, counts per ``kind``, ``correlated_noise_measured``
        and ``correlated_noise_spread`` (None when not measured) and ``correlated_noise_scale`` (the factor applied to
        ``error``: 1
        unless the noise is correlated, :data:`CORRELATED_NOISE_MIN`).
    """
    image = np.ascontiguousarray(data, dtype=np.float32)
    err = np.ascontiguousarray(error, dtype=np.float32)
    m = np.ascontiguousarray(mask, dtype=bool)
    work = image.copy()
    work[m] = 0.0
    safe_err = err
    unusable = ~np.isfinite(err) | (err <= 0)
    if unusable.any():
        safe_err = err.copy()
        safe_err[unusable] = np.nanmedian(err[~m]) if (~m).any() else 1.0
    sep.set_extract_pixstack(max(1_000_000, image.size // 4))
    sep.set_sub_object_limit(4096)
    psf_report = {"psf_status": "given", "psf_locus": 0}
    known = np.zeros(m.shape, bool) if known_hits is None else np.asarray(known_hits, bool) & ~m
    if known.any():
        work[known] = 0.0
    if psf_sigma is None:
        psf_sigma = image_psf_sigma(work, safe_err, m | known, gain=gain, report=psf_report,
                                    default=config.psf_fallback_sigma)
        if psf_report["psf_status"] != "measured":
            log.info("PSF sigma %.2f px: %s (star locus of %d bright sources)", psf_sigma, psf_report["psf_status"],
                     psf_report["psf_locus"])
    kernel = gaussian_kernel(psf_sigma)
    noise_scale, spread = matched_noise_scale(work, safe_err, m | known, kernel)
    noise_report = {"correlated_noise_measured": round(noise_scale, 3) if math.isfinite(noise_scale) else None,
                    "correlated_noise_spread": round(spread, 3) if math.isfinite(spread) else None,
                    "correlated_noise_scale": 1.0}
    # (the caller, who knows the file, logs the outcome: correlated_noise_note)
    if noise_scale >= CORRELATED_NOISE_MIN and spread <= CORRELATED_NOISE_MAX_SPREAD:
        # correlated noise: the threshold stays one of the matched filter's true scatter, the errors its noise
        safe_err = (safe_err * np.float32(noise_scale)).astype(np.float32)
        noise_report["correlated_noise_scale"] = round(noise_scale, 3)
    # cosmic-ray / hot-pixel hits are masked for detection and measurement, but a
    # detection touching them is not "near a bad pixel" (that flag is for the detector mask)
    detector_mask = m
    hits = sharp_pixel_mask(work, safe_err, psf_sigma, mask=m | known) | known
    m = m | hits
    # sep's matched filter over masked pixels (noise set to infinity) renormalises their filtered value from the
    # neighbours: a masked cosmic-ray track between a star and a mover 17 px away became one footprint that was never
    # deblended.  The hits are set to the background for segmentation instead (the detector mask stays a mask),
    # except inside sources, where every unmasked neighbour is SOURCE_FILL_SNR above the noise: there they get their
    # neighbours' mean (a zeroed hit in the core of member 220's V 22.9 mover made a hole that split it into two
    # lobes 2.4 px from its centre).  Filling by the mean anywhere made 10 % more faint noise detections from the
    # unflagged fringes of cosmic-ray tracks, and grew a crowded field's largest footprint past the halo model's limit.
    work[hits] = fill_from_neighbours(work, hits | detector_mask, floor=SOURCE_FILL_SNR * safe_err)[hits]

    def extract(image):
        return sep.extract(image, config.threshold, err=safe_err, mask=detector_mask, minarea=config.min_area,
                           filter_kernel=kernel,
                           filter_type="matched", deblend_nthresh=config.deblend_nthresh,
                           deblend_cont=config.deblend_cont, clean=False, segmentation_map=True)

    objects, segmap = extract(work)
    objects, segmap, n_rejoined = rejoin_split_sources(objects, segmap, hits, psf_sigma)
    n_segmented = len(objects)
    boxes: list = []
    halo_report = {"n_halo_too_large": 0}
    if config.halo_npix > 0:
        halo, boxes = halo_model(work, objects, psf_sigma, min_npix=config.halo_npix, segmap=segmap,
                                 report=halo_report)
        if boxes:
            extra = halo_sources(work - halo, safe_err, m, objects, boxes, kernel, config.threshold, config.min_area)
            if len(extra):
                objects = np.concatenate([objects, extra])
                # the halo leaves the image only around the sources found on it: the bright stars themselves keep
                # their wings (their photometry feeds the aperture correction and the zero point)
                near = np.zeros(work.shape, bool)
                reach = int(math.ceil(config.aperture_radius_fwhm * psf_sigma / FWHM_TO_SIGMA)) + 3
                ny_img, nx_img = work.shape
                for gx, gy in zip(extra["x"].astype(int), extra["y"].astype(int)):
                    near[max(gy - reach, 0):gy + reach + 1, max(gx - reach, 0):gx + reach + 1] = True
                work[near] -= halo[near]
    info = {"psf_sigma": float(psf_sigma), **psf_report, **noise_report, "n_raw": int(len(objects)),
            "sharp_pixel_fraction": float(hits.mean()),
            "n_rejoined": n_rejoined, "n_halos": len(boxes), **halo_report,
            "n_halo_sources": int(len(objects) - n_segmented)}
    if return_hits:
        info["sharp_pixels"] = hits
    if len(objects) == 0:
        info["aperture_correction"] = 1.0
        return empty_detections(), info
    x, y = objects["x"].astype(float), objects["y"].astype(float)
    a = objects["a"].astype(float)
    b = objects["b"].astype(float)
    theta = np.nan_to_num(objects["theta"].astype(float), nan=0.0)
    theta = np.clip(theta, -math.pi / 2, math.pi / 2)
    length = np.nan_to_num(np.sqrt(np.clip(12.0 * (a**2 - b**2), 0, None)), nan=0.0)
    variance = safe_err * safe_err  # float32 like the image: the kernels compile for it, no float64 copies
    # residues of cosmic-ray and hot-pixel hits (~3/4 of a Euclid CCD's detections) are told by their shape at
    # the isophotal centroid already, and spared the measurements below
    chi2_p0, chi2_s0, _ = shape_chi2(work, variance, m, x, y, length, theta, psf_sigma, gain)
    live = ~(np.isfinite(chi2_p0) & (chi2_p0 - chi2_s0 > config.sharp_margin))
    # windowed centroids (XWIN); fall back to isophotal ones where sep flags a problem
    xw, yw = np.full(x.size, np.nan), np.full(x.size, np.nan)
    wflag = np.ones(x.size, np.int64)
    if live.any():
        xw[live], yw[live], wflag[live] = sep.winpos(work, x[live], y[live], np.full(int(live.sum()), max(psf_sigma, 0.6)),
                                                     mask=m)
    ok = (wflag == 0) & np.isfinite(xw) & np.isfinite(yw) & (np.hypot(xw - x, yw - y) < 2.0)
    # a PSF-sized window suits point sources; trails keep the barycentre of their whole footprint
    ok &= length < 2.0 * psf_sigma / FWHM_TO_SIGMA
    x = np.where(ok, xw, x)
    y = np.where(ok, yw, y)
    core, xq, yq, lq, tq = _compact_cores(work, variance, m, objects, x, y, length, theta, psf_sigma, gain, live)
    x[core], y[core] = xq[core], yq[core]
    length[core], theta[core] = lq[core], tq[core]
    b[core] = psf_sigma
    a[core] = np.sqrt(psf_sigma**2 + length[core] ** 2 / 12.0)
    info["n_cores"] = int(core.sum())
    info["n_trail_cores"] = int((core & (length > 0)).sum())
    # a masked pixel inside or next to the footprint (segment ids are 1-based)
    near_mask = np.zeros(x.size, bool)
    if detector_mask.any():
        # the segment ids on and around the masked pixels (their 3x3 neighbourhoods), without a full-frame dilation
        ys, xs = np.nonzero(detector_mask)
        ny, nx = segmap.shape
        seg_ids = np.unique(np.concatenate([
            segmap[np.clip(ys + dy, 0, ny - 1), np.clip(xs + dx, 0, nx - 1)] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]))
        seg_ids = seg_ids[seg_ids > 0]
        near_mask[seg_ids - 1] = True
        # sources found on halos have no segment: a masked pixel within 2 px of their peak
        if len(objects) > n_segmented:
            extra = np.arange(n_segmented, len(objects))
            near_mask[extra] = masked_information(detector_mask, x[extra], y[extra], 1.0, radius=2.0) > 0
    # masked pixels in a compact source's core bias its windowed centroid; a PSF fit that skips them does not
    # (masked pixels also stretch the footprint's moments: up to 8 FWHM, a source counts as compact when a
    # point PSF at the fitted centre fits, per pixel, better than the trail model of its footprint)
    fwhm = psf_sigma / FWHM_TO_SIGMA
    # cosmic-ray hits in a source's core (a few per cent of a Euclid exposure's pixels: most sources get one near
    # them) are masked: their share of the source's PSF information is lost, and its windowed centroid leans away
    hit_info = masked_information(hits, x, y, psf_sigma)
    cr_hit = live & (hit_info > 0.0)
    # a point PSF is the right model only for point sources: a short trail with a hit keeps its barycentre (and
    # the wider error below)
    cr_point = cr_hit & (length < 2.0 * fwhm)
    # point sources whose core reaches the detector edge: the pixels beyond it are missing like masked ones, and
    # a PSF fit of the rest measures them (the windowed centroid leans inwards); usable when at most
    # EDGE_FIT_MAX_INFO of their core information lies beyond the edge at the fitted centre (their errors are
    # widened by the information lost there, like those of masked pixels)
    edge_zone = live & (length < 2.0 * fwhm) & near_edge(work.shape, x, y, psf_sigma)
    edge_fit = np.zeros(x.size, bool)
    edge_info = np.zeros(x.size)
    # sources found as peaks (on halos, in blends) start from their peak pixel: a PSF fit centres them
    peak_found = np.zeros(x.size, bool)
    peak_found[n_segmented:] = True
    refit = np.nonzero((near_mask | cr_point | edge_zone | peak_found) & live & (length < 8.0 * fwhm))[0]
    mask_fit = np.zeros(x.size, bool)
    mask_info = np.zeros(x.size)
    n_refit = 0
    refit_shift = np.zeros(x.size)
    for k in refit:
        fitted = psf_centroid(work, variance, m, float(x[k]), float(y[k]), psf_sigma)
        if fitted is None or math.hypot(fitted[0] - x[k], fitted[1] - y[k]) >= 2.0 * psf_sigma:
            continue
        if edge_zone[k]:
            # (at most EDGE_FIT_MAX_INFO < 0.5 beyond the edge puts the fitted centre on the detector)
            edge_info[k] = float(edge_information(work.shape, fitted[0:1], fitted[1:2], psf_sigma)[0])
            edge_fit[k] = edge_info[k] <= EDGE_FIT_MAX_INFO
        # an elongated source (a trail piece found as a peak on a halo, too) is a point only where the point PSF
        # fits, per pixel, better than the trail model of its footprint
        if length[k] >= 4.0 * fwhm or (peak_found[k] and length[k] >= 2.0 * fwhm):
            c_point, _, n_point = shape_chi2(work, variance, m, np.array([fitted[0]]), np.array([fitted[1]]),
                                             np.zeros(1), theta[k : k + 1], psf_sigma, gain)
            c_trail, _, n_trail = shape_chi2(work, variance, m, x[k : k + 1], y[k : k + 1], length[k : k + 1],
                                             theta[k : k + 1], psf_sigma, gain)
            if not c_point[0] / max(n_point[0] - 3, 1) < c_trail[0] / max(n_trail[0] - 5, 1):
                continue
        if cr_point[k]:
            # the fit and the windowed centroid disagree where the hit took more than its share (a short trail
            # whose hit made it look round): half their difference joins the error
            refit_shift[k] = math.hypot(fitted[0] - x[k], fitted[1] - y[k])
        x[k], y[k] = fitted
        length[k] = 0.0
        a[k] = b[k] = psf_sigma
        n_refit += 1
        if near_mask[k]:
            # a masked pixel beside a point source (one hot pixel in its footprint's rim): the fit skipped it, so
            # the centre holds while most of the core is on good pixels
            mask_info[k] = float(masked_information(detector_mask, fitted[0:1], fitted[1:2], psf_sigma)[0])
            mask_fit[k] = mask_info[k] <= MASK_FIT_MAX_INFO
    info["n_mask_fit"] = int(mask_fit.sum())
    info["n_psf_refit"] = n_refit
    info["n_cosmic_in_core"] = int(cr_hit.sum())
    # pill-shaped aperture: PSF-sized radius, stretched along trails
    r_ap = config.aperture_radius_fwhm * psf_sigma / FWHM_TO_SIGMA
    semi_major = r_ap + 0.5 * length
    flux, flux_err, fflag = sep.sum_ellipse(
        work, x, y, semi_major, np.full(x.size, r_ap), theta, r=1.0, err=safe_err, mask=m, gain=gain, subpix=5
    )
    chi2_p, chi2_s, chi2_b = chi2_p0.copy(), chi2_s0.copy(), np.full(x.size, np.nan)
    psf_flux, psf_err = np.full(x.size, np.nan), np.full(x.size, np.nan)
    if live.any():
        at = (work, variance, m, x[live], y[live], length[live], theta[live])
        chi2_p[live], chi2_s[live], _, psf_flux[live], psf_err[live] = shape_and_photometry(*at, psf_sigma, gain)
        chi2_b[live] = shape_chi2(*at, 2.0 * psf_sigma, gain)[0]
    kind = np.full(x.size, "point", dtype="U10")
    kind[length >= 2.0 * psf_sigma / FWHM_TO_SIGMA] = "trail"
    # extended (galaxies): the broad model wins by a margin and by a fraction of SNR^2; only below
    # extended_max_snr, where the mismatch of the Gaussian PSF model itself does not dominate
    # (bright galaxies are detected in every exposure and removed as static)
    gain_broad = chi2_p - chi2_b
    snr_rough = flux / np.maximum(flux_err, 1e-9)
    extended = (
        np.isfinite(chi2_p)
        & (gain_broad > config.extended_margin)
        & (gain_broad > config.extended_fraction * snr_rough**2)
        & (snr_rough < config.extended_max_snr)
    )
    kind[extended] = "extended"
    kind[~live | (np.isfinite(chi2_p) & (chi2_p - chi2_s > config.sharp_margin))] = "sharp"
    kind[length > config.max_elongated_length] = "streak"
    # aperture correction from bright PSF-like point sources: ratio of a wide to the PSF aperture
    snr_rough = flux / np.maximum(flux_err, 1e-9)
    sel = (kind == "point") & (objects["flag"] == 0) & (fflag == 0) & (snr_rough > 50) & (snr_rough < 3000)
    if sel.any():
        big, _, bflag = sep.sum_circle(work, x[sel], y[sel], np.full(int(sel.sum()), 3.0 * r_ap), mask=m, subpix=5)
        sel[sel] = bflag == 0
        big = big[bflag == 0]
    apcor = 1.0
    if sel.sum() >= 5:
        ratio = big / flux[sel]
        ratio = ratio[np.isfinite(ratio) & (ratio > 0.8) & (ratio < 2.0)]
        if ratio.size >= 5:
            apcor = float(np.median(ratio))
    info["aperture_correction"] = apcor
    flux = flux * apcor
    flux_err = flux_err * apcor
    # the aperture sum skips masked cosmic-ray pixels (a hit in the core takes a large share of the flux): there the
    # PSF fit, which skips them too but models the whole profile, scaled to the aperture photometry of clean sources
    clean = (kind == "point") & ~cr_hit & ~near_mask & (fflag == 0) & np.isfinite(psf_flux) & (psf_flux > 0)
    clean &= flux / np.maximum(flux_err, 1e-9) > 20.0
    if clean.sum() >= 5:
        to_aperture = float(np.median(flux[clean] / psf_flux[clean]))
        hit_ap = (cr_point | (edge_fit & ((fflag & APER_TRUNC_FLAG) != 0)) | (mask_fit & ((fflag & APER_MASKED_FLAG) != 0)))
        hit_ap &= np.isfinite(psf_flux) & (psf_flux > 0)
        hit_ap &= length < 2.0 * fwhm
        flux[hit_ap] = psf_flux[hit_ap] * to_aperture
        flux_err[hit_ap] = np.hypot(flux_err[hit_ap], psf_err[hit_ap] * to_aperture)
        info["psf_to_aperture"] = to_aperture
    snr = np.where(flux_err > 0, flux / np.maximum(flux_err, 1e-12), 0.0)
    # significance: the PSF-weighted (optimal) flux's S/N, which the wide photometric aperture loses
    # for faint sources (about 2x at the detection limit); never below the aperture's S/N (a trail
    # longer than the fit stamp, a galaxy)
    snr_psf = np.where(np.isfinite(psf_flux) & (psf_err > 0), psf_flux / np.where(psf_err > 0, psf_err, 1.0), 0.0)
    snr = np.maximum(snr, snr_psf)
    # centroid uncertainty: the background-limited bound sqrt(2) sigma / SNR with sigma the source's
    # rms size across and along its major axis (the PSF for point sources; longer along trails,
    # larger for galaxies)
    snr_pos = np.clip(snr, 0.5, None)
    base = math.sqrt(2.0) * np.maximum(b, psf_sigma) / snr_pos
    along = math.sqrt(2.0) * np.maximum(a, np.sqrt(psf_sigma**2 + length**2 / 12.0)) / snr_pos
    ct, st = np.cos(theta), np.sin(theta)
    # trails also carry a systematic along-track error (footprint truncation, masked hits)
    along = np.hypot(along, config.trail_error_fraction * length)
    # the information masked hits (and, for edge fits, the detector edge) took from the core widens the centroid error
    lost = 1.0 / np.sqrt(np.clip(1.0 - hit_info - mask_info - np.where(edge_fit, edge_info, 0.0), 0.1, 1.0))
    base, along = base * lost, along * lost
    # a source found as a peak in another's footprint was centred by a point PSF whatever its own shape (a short
    # trail, what is left of the neighbour): a third of a pixel more
    base, along = np.hypot(base, PEAK_ERROR * peak_found), np.hypot(along, PEAK_ERROR * peak_found)
    base, along = np.hypot(base, 0.5 * refit_shift), np.hypot(along, 0.5 * refit_shift)
    x_err = np.sqrt((along * ct) ** 2 + (base * st) ** 2 + config.centroid_error_floor**2)
    y_err = np.sqrt((along * st) ** 2 + (base * ct) ** 2 + config.centroid_error_floor**2)
    table = Table(
        {
            "x": x,
            "y": y,
            "x_err": x_err,
            "y_err": y_err,
            "flux": flux,
            "flux_err": flux_err,
            "snr": snr,
            "a": a,
            "b": b,
            "theta": theta,
            "length": length,
            "npix": objects["npix"].astype(np.int64),
            "peak": objects["peak"].astype(float),
            "chi2_psf": chi2_p,
            "chi2_sharp": chi2_s,
            "chi2_broad": chi2_b,
            "sep_flag": objects["flag"].astype(np.int64) | fflag.astype(np.int64),
            "near_mask": near_mask,
            "kind": kind,
            "cut": np.zeros(x.size, np.int64),
            "masked_core": hit_info,
            "edge_fit": edge_fit,
            "mask_fit": mask_fit,
            "length_err": np.full(x.size, np.nan),
            "theta_err": np.full(x.size, np.nan),
        }
    )
    describe(table, DETECTION_COLUMNS)
    for k in ("point", "trail", "extended", "sharp", "streak"):
        info[f"n_{k}"] = int(np.sum(kind == k))
    return table, info
