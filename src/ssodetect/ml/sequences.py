"""Cutout sequences: one sky region, or one hypothesised track, seen in every exposure on a common grid.

Two frames of reference (``mode``):

* ``track``: the grid follows a hypothesised linear motion. In exposure ``i`` its centre is the
  track's position at that exposure's mid-time and its x axis points along the motion, so an object
  on the track sits at the centre of every frame, trailed along +x, whatever its rate; static
  sources drift across the frames instead.  Long trails are compressed along x (``stretch`` =
  along-track grid step / native pixel scale) so that a trail spans at most half the grid.
* ``sky``: one fixed sky position, north up and east left, native scale (the LSST slow-mover set-up,
  where a mover crosses the grid).

Resampling follows the WCS of every frame: each grid pixel centre goes to the sky through the grid's
own TAN WCS (:func:`grid_wcs`) and from the sky to the frame's pixels through the frame's WCS (SIP
included), linearised about the grid centre (Jacobian by central differences; at the corner of a 4k Euclid
CCD with 1.5 px of distortion the error stays below 0.01 px over the 130 px either side of the
centre that the grid of an 80"/h mover spans, 0 at the centre).  Pixel values are interpolated with
:func:`scipy.ndimage.map_coordinates`, as ``reproject.reproject_interp`` does for one image (a parity
test checks the two), but batched: one WCS transform per frame for all sequences.  A compressed grid
averages ``ceil(stretch)`` samples per pixel along x (anti-aliasing, flux conserved on average).

Pixel convention: 0-based, images ``(ny, nx)``; grids ``(size, size)`` indexed ``[y, x]`` with the
centre at ``((size - 1) / 2, (size - 1) / 2)``.  Times are MJD (UTC) of mid-exposure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from scipy.ndimage import map_coordinates
from scipy.special import erf

from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.simulate.render import DoubleGaussianPSF

__all__ = ["Frame", "GridSpec", "Sequences", "compression", "cut_sequences", "frame_pixels", "grid_wcs", "sample_pixels", "track_grids",
           "trail_template"]

MASK_WEIGHT = 0.25  # a grid pixel is masked when masked frame pixels carry this much of its interpolation weight


@dataclass
class Frame:
    """One exposure's image as the sequences see it.

    Attributes
    ----------
    data : ndarray (ny, nx) float32
        Background-subtracted image [ADU]; NaN where masked.
    rms : ndarray (ny, nx) or float
        Background noise [ADU].
    wcs : astropy.wcs.WCS
        Celestial WCS of the image.
    mjd : float
        Mid-exposure time [MJD, UTC].
    exptime : float
        Exposure time [s].
    gain : float
        [e-/ADU] (inf: no shot noise is added to injected sources).
    fwhm : float
        PSF FWHM [px].
    zeropoint : float
        Magnitude of 1 ADU/s (NaN when unknown).
    name : str
        Where the image came from (file and CCD), for metadata.
    psf_sigma : float
        PSF core sigma [px] as the pipeline's detection measures it (the classifier's template uses
        it); NaN: from ``fwhm``.
    """

    data: np.ndarray
    rms: np.ndarray | float
    wcs: WCS
    mjd: float
    exptime: float
    gain: float = math.inf
    fwhm: float = 1.7
    zeropoint: float = math.nan
    name: str = ""
    psf_sigma: float = math.nan

    @property
    def psf(self) -> DoubleGaussianPSF:
        return DoubleGaussianPSF(fwhm=self.fwhm)

    @property
    def scale(self) -> float:
        """Pixel scale [arcsec/px]."""
        return float(np.sqrt(abs(np.linalg.det(self.wcs.pixel_scale_matrix)))) * 3600.0

    def noise_at(self, x: float, y: float) -> float:
        """Background noise [ADU] at pixel ``(x, y)`` (the nearest pixel inside the image)."""
        if np.ndim(self.rms) == 0:
            return float(self.rms)
        ny, nx = self.data.shape
        value = float(self.rms[min(max(int(round(y)), 0), ny - 1), min(max(int(round(x)), 0), nx - 1)])
        return value if value > 0 and math.isfinite(value) else float(np.nanmedian(self.rms))


@dataclass
class GridSpec:
    """Where the grids of ``N`` sequences of ``T`` frames lie on the sky.

    Attributes
    ----------
    ra, dec : ndarray (N, T)
        Grid centre in each frame [deg].
    pa : ndarray (N,)
        Direction of the grid's +x axis on the sky [deg, north through east].
    stretch : ndarray (N,)
        Along-x grid step in units of ``scale`` (>= 1).
    scale : float
        Grid step across x (the native pixel scale) [arcsec].
    size : int
        Grid side [px].
    """

    ra: np.ndarray
    dec: np.ndarray
    pa: np.ndarray
    stretch: np.ndarray
    scale: float
    size: int = 32

    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors of the grid's x and y axes in (xi east, eta north): two (N, 2) arrays."""
        p = np.radians(self.pa)
        ex = np.column_stack([np.sin(p), np.cos(p)])
        ey = np.column_stack([np.cos(p), -np.sin(p)])
        return ex, ey


@dataclass
class Sequences:
    """Resampled cutout sequences.

    Attributes
    ----------
    images : ndarray (N, T, size, size) float32
        Pixel values divided by the noise of one grid pixel (background-limited S/N units); 0 where masked.
    masks : ndarray (N, T, size, size) bool
        True where the frame had no usable pixel (masked, or off the image).
    noise : ndarray (N, T) float32
        The noise of one grid pixel [ADU] that ``images`` were divided by.
    mjd : ndarray (T,)
        Mid-exposure times [MJD UTC], increasing.
    spec : GridSpec
    """

    images: np.ndarray
    masks: np.ndarray
    noise: np.ndarray
    mjd: np.ndarray
    spec: GridSpec

    def __len__(self) -> int:
        return int(self.images.shape[0])


def track_grids(ra, dec, mjd_ref, v_ra, v_dec, mjds, exptime: float, scale: float, *, size: int = 32,
                mode: str = "track") -> GridSpec:
    """Grids following linear tracks (``mode="track"``) or fixed at their positions (``"sky"``).

    Parameters
    ----------
    ra, dec : array (N,)
        Track positions at ``mjd_ref`` [deg].
    mjd_ref : float or array (N,)
        Reference time [MJD UTC].
    v_ra, v_dec : array (N,)
        Motion [arcsec/h] in RA*cos(Dec) and Dec.
    mjds : array (T,)
        Mid-exposure times [MJD UTC].
    exptime : float
        Exposure time [s] (sets the trail length and so the along-track compression).
    scale : float
        Native pixel scale [arcsec/px].
    """
    ra, dec = np.atleast_1d(np.asarray(ra, float)), np.atleast_1d(np.asarray(dec, float))
    v_ra, v_dec = np.broadcast_to(np.asarray(v_ra, float), ra.shape), np.broadcast_to(np.asarray(v_dec, float), ra.shape)
    mjds = np.asarray(mjds, float)
    n = ra.size
    if mode == "sky":
        return GridSpec(np.repeat(ra[:, None], mjds.size, 1), np.repeat(dec[:, None], mjds.size, 1),
                        np.full(n, 270.0), np.ones(n), float(scale), size)
    if mode != "track":
        raise ValueError(f"unknown sequence mode {mode!r} (track or sky)")
    dt_h = (mjds[None, :] - np.asarray(mjd_ref, float).reshape(-1, 1)) * 24.0
    plane = TangentPlane(ra[:, None], dec[:, None])
    gra, gdec = plane.to_sky(v_ra[:, None] * dt_h, v_dec[:, None] * dt_h)
    rate = np.hypot(v_ra, v_dec)
    pa = np.degrees(np.arctan2(v_ra, v_dec)) % 360.0
    return GridSpec(gra, gdec, pa, compression(rate, exptime, scale, size), float(scale), size)


def compression(rate, exptime: float, scale: float, size: int) -> np.ndarray:
    """Along-track stretch that fits a trail of ``rate`` [arcsec/h] over ``exptime`` [s] in half of ``size``."""
    length = np.asarray(rate, float) * exptime / 3600.0 / scale
    return np.maximum(1.0, length / (0.5 * size))


def grid_wcs(spec: GridSpec, n: int, i: int) -> WCS:
    """The TAN WCS of sequence ``n``'s grid in frame ``i`` (FITS 1-based CRPIX at the grid centre)."""
    ex, ey = spec.axes()
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(spec.ra[n, i]), float(spec.dec[n, i])]
    w.wcs.crpix = [(spec.size + 1) / 2.0, (spec.size + 1) / 2.0]
    sx, sy = spec.scale * spec.stretch[n] / 3600.0, spec.scale / 3600.0
    w.wcs.cd = np.array([[ex[n, 0] * sx, ey[n, 0] * sy], [ex[n, 1] * sx, ey[n, 1] * sy]])
    w.wcs.radesys = "ICRS"
    w.wcs.set()
    return w


def frame_pixels(frame: Frame, spec: GridSpec, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame pixel coordinates of every grid sample of frame ``i``.

    Returns
    -------
    cx, cy : ndarray (N,)
        Frame pixel of each grid centre.
    jac : ndarray (N, 2, 2)
        d(x, y) / d(xi, eta) [px/arcsec] at each centre.
    """
    ra, dec = spec.ra[:, i], spec.dec[:, i]
    plane = TangentPlane(ra, dec)
    h = 2.0  # arcsec
    pts = [(0.0, 0.0), (h, 0.0), (-h, 0.0), (0.0, h), (0.0, -h)]
    xs, ys = [], []
    for dxi, deta in pts:
        r, d = plane.to_sky(np.full(ra.shape, dxi), np.full(ra.shape, deta))
        x, y = frame.wcs.all_world2pix(r, d, 0)
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
    jac = np.empty((ra.size, 2, 2))
    jac[:, 0, 0] = (xs[1] - xs[2]) / (2 * h)
    jac[:, 1, 0] = (ys[1] - ys[2]) / (2 * h)
    jac[:, 0, 1] = (xs[3] - xs[4]) / (2 * h)
    jac[:, 1, 1] = (ys[3] - ys[4]) / (2 * h)
    return xs[0], ys[0], jac


def _sample_offsets(size: int, n_sub: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid sample offsets from the centre [grid px]: u along x with ``n_sub`` sub-samples per pixel, v along y."""
    c = (size - 1) / 2.0
    u = (np.arange(size)[:, None] + (np.arange(n_sub) + 0.5) / n_sub - 0.5).ravel() - c
    v = np.arange(size) - c
    return u, v


def sample_pixels(spec: GridSpec, n: int, n_sub: int, cx: float, cy: float, jac: np.ndarray):
    """Frame pixel coordinates ``(x, y)``, each (size, size * n_sub), of sequence ``n``'s grid samples.

    ``n_sub`` samples per grid pixel along x (pixel-major); ``(cx, cy)`` and ``jac`` from :func:`frame_pixels`.
    """
    ex, ey = spec.axes()
    u, v = _sample_offsets(spec.size, n_sub)
    du = u * spec.scale * spec.stretch[n]  # (xi, eta) offsets [arcsec] of the samples
    dv = v * spec.scale
    dxi = dv[:, None] * ey[n, 0] + du[None, :] * ex[n, 0]
    deta = dv[:, None] * ey[n, 1] + du[None, :] * ex[n, 1]
    return cx + jac[0, 0] * dxi + jac[0, 1] * deta, cy + jac[1, 0] * dxi + jac[1, 1] * deta


def cut_sequences(frames: list[Frame], spec: GridSpec, *, order: int = 3, paint=None) -> Sequences:
    """Resample every frame onto every sequence's grid.

    Parameters
    ----------
    frames : list of Frame
        The exposures, in time order (``T`` of them; ``spec`` has ``T`` columns).
    spec : GridSpec
        Where the ``N`` grids lie in each frame.
    order : int
        Spline order of the interpolation (1 bilinear, 3 bicubic).
    paint : callable, optional
        ``paint(n, i, window, x0, y0)`` adds injected sources (in ADU) to ``window``, a float64 copy of
        frame ``i``'s pixels whose lower-left pixel is ``(x0, y0)``, before sequence ``n`` is resampled.

    Returns
    -------
    Sequences
    """
    n_seq, n_frames = spec.ra.shape
    if n_frames != len(frames):
        raise ValueError(f"grid spec has {n_frames} frames, {len(frames)} given")
    size = spec.size
    images = np.zeros((n_seq, n_frames, size, size), np.float32)
    masks = np.ones((n_seq, n_frames, size, size), bool)
    noise = np.ones((n_seq, n_frames), np.float32)
    n_subs = np.ceil(spec.stretch - 1e-9).astype(int)
    for i, frame in enumerate(frames):
        cx, cy, jac = frame_pixels(frame, spec, i)
        ny, nx = frame.data.shape
        for n in range(n_seq):
            n_sub = int(n_subs[n])
            px, py = sample_pixels(spec, n, n_sub, cx[n], cy[n], jac[n])
            x0, x1 = max(int(math.floor(px.min())) - 3, 0), min(int(math.ceil(px.max())) + 4, nx)
            y0, y1 = max(int(math.floor(py.min())) - 3, 0), min(int(math.ceil(py.max())) + 4, ny)
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue  # off this frame: all masked
            window = np.asarray(frame.data[y0:y1, x0:x1], np.float64)
            bad = ~np.isfinite(window)
            window = np.where(bad, 0.0, window)
            if paint is not None:
                paint(n, i, window, x0, y0)
            coords = [py - y0, px - x0]
            values = map_coordinates(window, coords, order=order, mode="constant", cval=0.0, prefilter=order > 1)
            weight = map_coordinates(bad.astype(np.float64), coords, order=1, mode="constant", cval=1.0)
            values = values.reshape(size, size, n_sub).mean(axis=2)
            weight = weight.reshape(size, size, n_sub).mean(axis=2)
            sigma = frame.noise_at(cx[n], cy[n]) / math.sqrt(n_sub)
            noise[n, i] = sigma
            masked = weight > MASK_WEIGHT
            images[n, i] = np.where(masked, 0.0, values / sigma)
            masks[n, i] = masked
    return Sequences(images, masks, noise, np.array([f.mjd for f in frames]), spec)


def trail_template(length, sigma, stretch, size: int = 32) -> np.ndarray:
    """Expected image of a mover at the grid centre: a PSF core swept along x over the trail.

    Parameters
    ----------
    length : array (N,)
        Trail length [native px].
    sigma : array (N,)
        PSF core sigma [native px].
    stretch : array (N,)
        Along-x compression of each grid.

    Returns
    -------
    ndarray (N, size, size) float32
        Peak-normalised templates.
    """
    length = np.asarray(length, float).reshape(-1, 1)
    stretch = np.asarray(stretch, float).reshape(-1, 1)
    sigma = np.sqrt(np.asarray(sigma, float).reshape(-1, 1) ** 2 + 1.0 / 12.0)
    c = (size - 1) / 2.0
    x = (np.arange(size) - c)[None, :] * stretch  # native px along the track
    sx = np.sqrt(sigma**2 + (stretch**2 - 1.0) / 12.0)  # the along-x averaging widens the core
    half = 0.5 * length
    prof_x = np.where(
        half > 1e-3,
        erf((x + half) / (math.sqrt(2) * sx)) - erf((x - half) / (math.sqrt(2) * sx)),
        np.exp(-0.5 * (x / sx) ** 2),
    )
    prof_y = np.exp(-0.5 * ((np.arange(size) - c)[None, :] / sigma) ** 2)
    out = prof_y[:, :, None] * prof_x[:, None, :]
    out /= out.max(axis=(1, 2), keepdims=True)
    return out.astype(np.float32)
