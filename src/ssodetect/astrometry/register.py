"""Registering frames to each other when no astrometric solution exists.

Frames of one field without a WCS (or whose WCS cannot be trusted) are tied to a
reference frame of the same CCD by their star patterns: triangle-invariant
matching (:func:`ssodetect.astrometry.match.match_patterns`, any rotation, scale
within a few per cent) followed by a clipped least-squares affine fit on all
matched stars.  Each frame then gets a *relative* TAN WCS: the reference frame's
pixel grid placed on the sky at the header pointing (``RA/DEC``, ``OBJCTRA/
OBJCTDEC``, ...; 0, 0 without one) with the nominal pixel scale (from
``XPIXSZ``/``FOCALLEN`` or configuration), North up and East left, composed with
the frame's affine.  Positions in this WCS are consistent between frames to the
registration accuracy (a few hundredths of a pixel for well-exposed fields), so
movers can be linked on it, but they are not astrometry: they are reported with
``wcs = "relative"`` and never written to ADES.

Pixel convention: 0-based ``(x, y)``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from astropy.coordinates import Angle
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from ssodetect.astrometry.match import PatternIndex, match_patterns

__all__ = ["Registration", "register_to_reference", "relative_wcs", "header_pointing", "nominal_pixel_scale",
           "registration_summary", "header_disagreement"]

log = logging.getLogger(__name__)


@dataclass
class Registration:
    """Affine map of a frame's pixels onto the reference frame's: ``ref = matrix @ xy + offset``.

    Attributes
    ----------
    matrix : ndarray (2, 2)
    offset : ndarray (2,)
        [px].
    n_stars : int
        Stars used in the final fit.
    rms : float
        Residual rms of the fit [px].
    """

    matrix: np.ndarray
    offset: np.ndarray
    n_stars: int
    rms: float

    def apply(self, xy: np.ndarray) -> np.ndarray:
        return np.asarray(xy, float) @ self.matrix.T + self.offset


def _fit_affine(src: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    design = np.column_stack([src, np.ones(len(src))])
    coef, *_ = np.linalg.lstsq(design, ref, rcond=None)
    return coef[:2].T, coef[2]


def register_to_reference(
    src_xy: np.ndarray, ref_xy: np.ndarray, *, index: PatternIndex | None = None, match_radius: float = 2.0,
    scale_range: tuple[float, float] = (0.97, 1.03), min_stars: int = 6, clip: float = 3.0,
) -> Registration | None:
    """Affine registration of one star list onto another.

    Parameters
    ----------
    src_xy, ref_xy : ndarray (n, 2)
        Star positions [px], brightest first.
    index : PatternIndex, optional
        Prebuilt from ``ref_xy`` (reused across frames).
    match_radius : float
        Matching radius [px] (seeing and drift of a few pixels allowed for the first match).
    scale_range : (float, float)
        Allowed relative scale.
    min_stars : int
        Fewest matched stars for a registration.
    clip : float
        Sigma clipping of the affine fit.

    Returns
    -------
    Registration or None
        None when no consistent pattern match exists.
    """
    src_xy = np.asarray(src_xy, float).reshape(-1, 2)
    ref_xy = np.asarray(ref_xy, float).reshape(-1, 2)
    if len(src_xy) < min_stars or len(ref_xy) < min_stars:
        return None
    index = index or PatternIndex(ref_xy, n_ref=40)
    match = match_patterns(src_xy, index, scale_range=scale_range, parities=(1,), match_radius=match_radius,
                           n_src=30, min_matches=min_stars)
    if match is None:
        return None
    tree = cKDTree(ref_xy)
    matrix, offset = _fit_affine(src_xy[match.pairs[:, 0]], ref_xy[match.pairs[:, 1]])
    radius = match_radius
    for _ in range(4):
        mapped = src_xy @ matrix.T + offset
        dist, j = tree.query(mapped, distance_upper_bound=radius)
        ok = np.isfinite(dist)
        if ok.sum() < min_stars:
            return None
        resid = dist[ok]
        sigma = max(1.4826 * float(np.median(resid)), 0.02)
        keep = np.nonzero(ok)[0][resid <= max(clip * sigma, 0.1)]
        if keep.size < min_stars:
            return None
        matrix, offset = _fit_affine(src_xy[keep], ref_xy[j[keep]])
        radius = max(min(radius, 5.0 * sigma), 0.5)
    mapped = src_xy[keep] @ matrix.T + offset
    rms = float(np.sqrt(np.mean(np.sum((mapped - ref_xy[j[keep]]) ** 2, axis=1))))
    return Registration(matrix, offset, int(keep.size), rms)


def _angle(value, unit: str) -> float | None:
    try:
        if isinstance(value, (int, float)):
            return float(value) * (15.0 if unit == "hourangle" else 1.0)
        return float(Angle(str(value).strip(), unit=unit).degree)
    except (ValueError, TypeError):
        return None


def header_pointing(header) -> tuple[float, float] | None:
    """Rough pointing (RA, Dec) [deg] from common telescope keywords, or None."""
    for ra_key, dec_key in (("RA", "DEC"), ("OBJCTRA", "OBJCTDEC"), ("TELRA", "TELDEC"), ("RA_OBJ", "DEC_OBJ")):
        if ra_key in header and dec_key in header:
            raw = header[ra_key]
            unit = "hourangle" if isinstance(raw, str) and (":" in raw or " " in raw.strip()) else "deg"
            ra, dec = _angle(raw, unit), _angle(header[dec_key], "deg")
            if ra is not None and dec is not None and -90.0 <= dec <= 90.0:
                return ra % 360.0, dec
    return None


def nominal_pixel_scale(header, default: float) -> float:
    """Pixel scale [arcsec/px] from ``SECPIX``/``PIXSCALE`` or pixel size and focal length; ``default`` otherwise."""
    for key in ("PIXSCALE", "SECPIX", "SECPIX1", "PIXSCAL1"):
        try:
            value = float(header[key])
            if value > 0:
                return value
        except (KeyError, TypeError, ValueError):
            continue
    try:
        pixel_um = float(header["XPIXSZ"])
        focal_mm = float(header["FOCALLEN"])
        if pixel_um > 0 and focal_mm > 0:
            return 206.264806 * pixel_um / focal_mm
    except (KeyError, TypeError, ValueError):
        pass
    return default


def relative_wcs(shape: tuple[int, int], pointing: tuple[float, float], scale: float) -> WCS:
    """TAN WCS placing a reference frame's pixel grid on the sky.

    The grid's centre sits at ``pointing`` [deg], with ``scale`` [arcsec/px], North up, East left.
    Frames registered onto this grid go through it at their registered pixel positions.
    """
    ny, nx = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [pointing[0], pointing[1]]
    wcs.wcs.cd = np.array([[-scale / 3600.0, 0.0], [0.0, scale / 3600.0]])
    wcs.wcs.crpix = [(nx - 1) / 2.0 + 1.0, (ny - 1) / 2.0 + 1.0]
    wcs.pixel_shape = (nx, ny)
    return wcs


def registration_summary(regs: list[Registration | None]) -> str:
    ok = [r for r in regs if r is not None]
    if not ok:
        return "no frame registered"
    return (f"{len(ok)}/{len(regs)} frames registered, median {int(np.median([r.n_stars for r in ok]))} stars, "
            f"median rms {np.median([r.rms for r in ok]):.3f} px, largest shift "
            f"{max(math.hypot(*r.offset) for r in ok):.1f} px")


def header_disagreement(reg: Registration, wcs_src, wcs_ref, xy: np.ndarray) -> float:
    """Median sky distance [arcsec] between two ways of placing a frame's points: through its own WCS, and
    through the registration onto the reference frame and that frame's WCS.

    Parameters
    ----------
    reg : Registration
        ``src`` pixels -> ``ref`` pixels.
    wcs_src, wcs_ref : astropy.wcs.WCS
        The two frames' header WCSs (0-based pixels).
    xy : ndarray (n, 2)
        Points of the source frame [px], e.g. its stars.

    Returns
    -------
    float
        Large when the header WCSs disagree with what the stars say (an offset, rotation or scale error of one
        header relative to the other); about the registration's own error otherwise.
    """
    from astropy.coordinates import SkyCoord

    xy = np.asarray(xy, float)
    if len(xy) == 0:
        return float("nan")
    ra1, dec1 = wcs_src.all_pix2world(xy[:, 0], xy[:, 1], 0)
    moved = reg.apply(xy)
    ra2, dec2 = wcs_ref.all_pix2world(moved[:, 0], moved[:, 1], 0)
    sep = SkyCoord(ra1, dec1, unit="deg").separation(SkyCoord(ra2, dec2, unit="deg")).arcsec
    return float(np.median(sep))
