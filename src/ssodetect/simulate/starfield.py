"""Star lists with known astrometry, for testing and benchmarking plate solutions without images.

A true TAN-SIP WCS maps random pixel positions to the sky; the catalogue holds
those stars (some beyond the CCD), the "detections" are the same stars with
centroid noise plus unrelated sources, and the header WCS is the truth
perturbed by a pointing offset, a rotation and a scale error, with no distortion.
"""
from __future__ import annotations

import math

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS, Sip

__all__ = ["distorted_wcs", "perturbed_wcs", "star_lists", "wcs_difference"]


def distorted_wcs(shape=(2048, 2048), crval=(150.0, 25.0), scale=0.1, distortion=1.5) -> WCS:
    """TAN-SIP WCS about the CCD centre with ``distortion`` px (radial cubic + quadratic) at the corners.

    Parameters
    ----------
    shape : (ny, nx)
    crval : (ra, dec) [deg]
    scale : float
        [arcsec/px].
    distortion : float
        Displacement at the CCD corners [px].
    """
    ny, nx = shape
    crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    r = 0.5 * math.hypot(nx, ny)
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[3, 0] = a[1, 2] = b[2, 1] = b[0, 3] = 0.8 * distortion / r**3
    a[2, 0] = b[1, 1] = 0.2 * distortion / r**2
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = crpix
    w.wcs.cd = np.array([[-scale, 0.0], [0.0, scale]]) / 3600.0
    w.wcs.radesys = "ICRS"
    w.sip = Sip(a, b, None, None, crpix)
    w.wcs.set()
    return w


def perturbed_wcs(truth: WCS, *, shift=(30.0, -20.0), rotation=1.0, scale=1.0) -> WCS:
    """Plain TAN copy of ``truth`` off by ``shift`` (East, North) [arcsec], ``rotation`` [deg], a scale factor."""
    h = WCS(naxis=2)
    h.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    dec = truth.wcs.crval[1]
    h.wcs.crval = [truth.wcs.crval[0] + shift[0] / 3600.0 / math.cos(math.radians(dec)), dec + shift[1] / 3600.0]
    h.wcs.crpix = list(truth.wcs.crpix)
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    h.wcs.cd = np.array([[c, -s], [s, c]]) @ truth.wcs.cd * scale
    h.wcs.radesys = "ICRS"
    h.wcs.set()
    return h


def star_lists(rng, truth: WCS, shape=(2048, 2048), *, n_ref=30, n_extra=60, centroid=0.02, zeropoint=24.24,
               exptime=566.0, epoch=2026.2) -> tuple[Table, Table]:
    """A reference catalogue and a detection list for one CCD.

    Returns
    -------
    catalogue : Table
        Gaia-like columns; ``n_ref`` stars on the CCD plus ``n_ref // 2`` around
        it, G 17.5-21, errors 0.3 mas, no proper motion, ``ref_epoch = epoch``.
    sources : Table
        ``x, y, x_err, y_err, flux, flux_err`` (0-based px, ADU), brightest first:
        the catalogue stars on the CCD with Gaussian centroid noise ``centroid``
        [px] plus ``n_extra`` uncatalogued sources of mag 19-24.
    """
    ny, nx = shape
    n_out = n_ref // 2
    x = np.concatenate([rng.uniform(20, nx - 20, n_ref), rng.uniform(-600, nx + 600, n_out)])
    y = np.concatenate([rng.uniform(20, ny - 20, n_ref), rng.uniform(-600, ny + 600, n_out)])
    ra, dec = truth.all_pix2world(x, y, 0)
    g = rng.uniform(17.5, 21.0, x.size)
    catalogue = Table(
        {"ra": ra, "dec": dec, "ra_error": np.full(x.size, 0.3), "dec_error": np.full(x.size, 0.3),
         "pmra": np.zeros(x.size), "pmdec": np.zeros(x.size), "phot_g_mean_mag": g,
         "ref_epoch": np.full(x.size, epoch)}
    )
    on = (x >= 0) & (x < nx) & (y >= 0) & (y < ny)
    sx = np.concatenate([x[on] + rng.normal(0, centroid, on.sum()), rng.uniform(0, nx, n_extra)])
    sy = np.concatenate([y[on] + rng.normal(0, centroid, on.sum()), rng.uniform(0, ny, n_extra)])
    mag = np.concatenate([g[on], rng.uniform(19.0, 24.0, n_extra)])
    flux = exptime * 10 ** (-0.4 * (mag - zeropoint))
    sources = Table({"x": sx, "y": sy, "x_err": np.full(sx.size, centroid), "y_err": np.full(sx.size, centroid),
                     "flux": flux, "flux_err": 0.01 * flux})
    sources.sort("flux", reverse=True)
    return catalogue, sources


def wcs_difference(fitted: WCS, truth: WCS, shape=(2048, 2048), n=21) -> np.ndarray:
    """On-sky distance [mas] between two WCSs at an ``n x n`` grid of pixels over the CCD (flattened)."""
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, n), np.linspace(0, ny - 1, n))
    ra1, dec1 = truth.all_pix2world(gx, gy, 0)
    ra2, dec2 = fitted.all_pix2world(gx, gy, 0)
    return np.hypot((ra2 - ra1) * np.cos(np.radians(dec1)), dec2 - dec1).ravel() * 3.6e6
