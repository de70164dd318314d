"""Image products for people: per-object cutout sequences and binned field overviews.

Cutouts are cut from the (calibrated) CCD images at each observation's position, one cube per
object; the overview is each CCD of the first exposure binned to at most ``overview_size`` pixels.
Both are written to FITS in the run's output directory (``cutouts.fits``, ``overview.fits``) so that
reports can be regenerated from a finished run without its inputs.  Pixel convention: 0-based,
``(ny, nx)`` arrays; stamp ``k`` of an object covers ``x0[k] .. x0[k] + size - 1`` on its CCD.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ssodetect.columns import rows_by
from ssodetect.safejson import open_regular
from ssodetect.errors import InputError, reason
from ssodetect.io.headers import fits_text

log = logging.getLogger(__name__)

__all__ = ["pixel_jacobian", "cut_stamp", "local_background", "bin_image", "extract_cutouts", "read_cutouts", "cutout_objects",
           "read_overview"]


def local_background(stamp: np.ndarray) -> float:
    """Sky level of a stamp [same unit]: the median of its finite pixels (0 when none).

    A source covers a small part of a cutout, so the median is the sky around it: cutouts need no
    full-frame background model (reading and modelling every CCD again cost ~0.4 s each).
    """
    finite = stamp[np.isfinite(stamp)]
    return float(np.median(finite)) if finite.size else 0.0


#: Columns of the ``INDEX`` table of ``cutouts.fits``: one row per plane of every object's cube, in plane
#: order: the object, its exposure, mid-exposure MJD (UTC), stamp origin [px] and the observation's
#: position [px, 0-based], and the local WCS there (``jac``: d(xi)/dx, d(xi)/dy, d(eta)/dx, d(eta)/dy [arcsec/px],
#: xi east, eta north; NaN without a WCS) for the stamps' north/east arrows and scale bar.  One table for all objects (a table HDU per object made a field's 4,000 objects
#: cost ~40 s to write and read again).
INDEX_NAME = "INDEX"


def _index_dtype(name_width: int) -> np.dtype:
    return np.dtype([("object", f"U{max(name_width, 1)}"), ("exposure", "i8"), ("mjd", "f8"), ("x0", "i8"),
                     ("y0", "i8"), ("x", "f8"), ("y", "f8"), ("jac", "f8", (4,))])


def pixel_jacobian(wcs, x: float, y: float) -> np.ndarray:
    """Local Jacobian of a WCS at pixel (x, y) [0-based]: ``d(xi)/dx, d(xi)/dy, d(eta)/dx, d(eta)/dy`` [arcsec/px]
    (xi east, eta north); NaN where the WCS fails."""
    xs, ys = np.array([x, x + 1.0, x]), np.array([y, y, y + 1.0])
    ra, dec = wcs.all_pix2world(xs, ys, 0)
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        return np.full(4, np.nan)
    dra = (np.asarray(ra[1:]) - ra[0] + 180.0) % 360.0 - 180.0
    cosd = math.cos(math.radians(float(dec[0])))
    dxi, deta = dra * cosd * 3600.0, (np.asarray(dec[1:]) - dec[0]) * 3600.0
    return np.array([dxi[0], dxi[1], deta[0], deta[1]])


def cut_stamp(image: np.ndarray, x: float, y: float, size: int) -> tuple[np.ndarray, int, int]:
    """A ``size`` x ``size`` stamp centred on pixel (x, y), NaN outside the image.

    Returns
    -------
    stamp : ndarray (size, size) float32
    x0, y0 : int
        Image pixel of the stamp's first column and row.
    """
    half = size // 2
    x0, y0 = int(math.floor(x + 0.5)) - half, int(math.floor(y + 0.5)) - half
    stamp = np.full((size, size), np.nan, np.float32)
    ny, nx = image.shape
    xa, xb, ya, yb = max(x0, 0), min(x0 + size, nx), max(y0, 0), min(y0 + size, ny)
    if xa < xb and ya < yb:
        stamp[ya - y0 : yb - y0, xa - x0 : xb - x0] = image[ya:yb, xa:xb]
    return stamp, x0, y0


def bin_image(image: np.ndarray, max_size: int) -> tuple[np.ndarray, int]:
    """Mean-bin an image by the smallest integer factor that fits ``max_size`` (NaN-aware).

    Returns
    -------
    binned : ndarray float32
    factor : int
    """
    ny, nx = image.shape
    factor = max(1, int(math.ceil(max(ny, nx) / max_size)))
    cy, cx = ny // factor * factor, nx // factor * factor
    blocks = image[:cy, :cx].reshape(cy // factor, factor, cx // factor, factor)
    with np.errstate(invalid="ignore"):
        count = np.isfinite(blocks).sum(axis=(1, 3))
        total = np.nansum(blocks, axis=(1, 3))
        binned = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return binned.astype(np.float32), factor


def extract_cutouts(observations: Table, exposures: list, read_image, *, size: int = 41, max_size: int = 201,
                    overview_size: int = 1024, wcs_for=None) -> tuple[fits.HDUList, fits.HDUList]:
    """Cut every observation's stamp and bin the first exposure's CCDs.

    Parameters
    ----------
    observations : Table
        ``observations.ecsv`` rows (``object, exposure, ccd, x, y, trail_length``).
    exposures : list of Exposure
        The run's exposures, for the CCD references.
    read_image : callable
        ``read_image(ref) -> ndarray (ny, nx)``: the calibrated pixels, NaN where masked; each stamp and
        each overview has its own sky level (:func:`local_background`) subtracted.
    size : int
        Stamp side [px] for point sources; trailed objects get ``trail + size`` up to ``max_size``.
    overview_size : int
        Largest side of a binned overview image [px].
    wcs_for : callable, optional
        ``wcs_for(exposure, ccd) -> WCS or None``: the WCS of a CCD image, stored (unbinned) with its
        overview so that tracks can be drawn from sky positions in the first exposure's frame, and as the
        local Jacobian of every stamp (``jac`` in the index).

    Returns
    -------
    cutouts : HDUList
        One float32 cube (n_obs, s, s) per object (EXTNAME = object name) and one table HDU ``INDEX``
        giving for each plane of every cube the object, exposure, MJD and stamp origin.
    overview : HDUList
        One binned image per CCD of the first exposure (EXTNAME = CCD id, keyword ``BINNING``).
    """
    refs = {(e.index, r.ccd): r for e in exposures for r in e.ccds}
    names = np.asarray(observations["object"]).astype(str) if len(observations) else np.array([], str)
    xs, ys = (np.asarray(observations[c], float) for c in ("x", "y"))
    wanted = defaultdict(list)
    for k, key in enumerate(zip(np.asarray(observations["exposure"]).tolist(),
                                np.asarray(observations["ccd"]).astype(str).tolist())):
        wanted[key].append(k)
    first = exposures[0].index if exposures else None
    for r in exposures[0].ccds if exposures else []:
        wanted.setdefault((first, r.ccd), [])
    sizes = {}
    by_object = rows_by(observations, "object")
    all_trails = np.nan_to_num(np.asarray(observations["trail_length"], float)) if len(observations) else np.zeros(0)
    for name, idx in by_object.items():
        trail = all_trails[idx]
        side = int(min(max_size, size + math.ceil(float(trail.max()) if trail.size else 0.0)))
        sizes[name] = side + (side + 1) % 2
    planes: dict = {k: None for k in range(len(observations))}
    overview = fits.HDUList([fits.PrimaryHDU()])
    for (exposure, ccd), rows in sorted(wanted.items()):
        ref = refs.get((exposure, ccd))
        if ref is None:
            continue
        image = read_image(ref)
        wcs = wcs_for(exposure, ccd) if wcs_for is not None else None
        for k in rows:
            stamp, x0, y0 = cut_stamp(image, float(xs[k]), float(ys[k]), sizes[names[k]])
            jac = pixel_jacobian(wcs, float(xs[k]), float(ys[k])) if wcs is not None else np.full(4, np.nan)
            planes[k] = (stamp - np.float32(local_background(stamp)), x0, y0, jac)
        if exposure == first:
            binned, factor = bin_image(image, overview_size)
            binned -= np.float32(local_background(binned))
            hdu = fits.ImageHDU(binned, name=str(ccd)[:68])
            hdu.header["BINNING"] = (factor, "image pixels per overview pixel")
            hdu.header["EXPOSURE"] = exposure
            hdu.header["FILE"] = fits_text(ref.path)
            if wcs is not None:
                hdu.header.update(wcs.to_header(relax=True))
            overview.append(hdu)
    cutouts = fits.HDUList([fits.PrimaryHDU()])
    order = []
    for name in dict.fromkeys(names):
        idx = [k for k in by_object[name] if planes[k] is not None]
        if not idx:
            continue
        cutouts.append(fits.ImageHDU(np.stack([planes[k][0] for k in idx]), name=name))
        order.extend(idx)
    index = np.zeros(len(order), dtype=_index_dtype(max((len(n) for n in names), default=1)))
    if order:
        index["object"] = names[order]
        index["exposure"] = np.asarray(observations["exposure"])[order]
        index["mjd"] = np.asarray(observations["mjd"], float)[order]
        index["x0"] = [planes[k][1] for k in order]
        index["y0"] = [planes[k][2] for k in order]
        index["x"] = xs[order]
        index["y"] = ys[order]
        index["jac"] = np.array([planes[k][3] for k in order]).reshape(len(order), 4)
    cutouts.append(fits.BinTableHDU(Table(index), name=INDEX_NAME))
    log.info("cutouts of %d objects, overview of %d CCDs", len(cutouts) - 2, len(overview) - 1)
    return cutouts, overview


def read_cutouts(path) -> dict:
    """``cutouts.fits`` -> {object: (cube (n, s, s), index of its n planes)}; empty when the file is absent.

    The index is a structured array with the columns of the ``INDEX`` table (a Table per object cost
    ~0.5 ms each).  Also reads the layout of earlier versions (a ``<object>_INDEX`` table per object)."""
    out = {}
    try:
        with open_regular(path) as handle, fits.open(handle, memmap=False) as hdul:
            by_name = {hdu.name: hdu for hdu in hdul[1:]}
            index = np.asarray(by_name[INDEX_NAME].data) if INDEX_NAME in by_name else None
            rows = rows_by(Table(index), "object") if index is not None else {}
            for name, hdu in by_name.items():
                if name == INDEX_NAME or name.endswith("_INDEX"):
                    continue
                planes = index[rows.get(name, [])] if index is not None else np.asarray(by_name[f"{name}_INDEX"].data)
                out[name] = (np.asarray(hdu.data, np.float32), planes)
    except FileNotFoundError:
        return {}
    except Exception as exc:  # truncated, emptied or edited (astropy raises, or warns, in many ways)
        raise InputError(f"{path}: not a readable cutouts file ({reason(exc, 150)})") from None
    return out


def cutout_objects(path) -> set[str]:
    """Names of the objects with a cube in ``cutouts.fits`` (no pixels read); empty when absent."""
    try:
        with open_regular(path) as handle, fits.open(handle, memmap=False) as hdul:
            return {hdu.name for hdu in hdul[1:] if hdu.name != INDEX_NAME and not hdu.name.endswith("_INDEX")}
    except FileNotFoundError:
        return set()
    except ValueError as exc:  # a pipe or a device in its place: never opened so as to block
        raise InputError(str(exc)) from None


def read_overview(path) -> list[tuple]:
    """``overview.fits`` -> [(ccd, binned image, binning factor, WCS of the unbinned CCD or None)];
    empty when the file is absent."""
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning

    out = []
    try:
        with open_regular(path) as handle, fits.open(handle, memmap=False) as hdul:
            for h in hdul[1:]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FITSFixedWarning)
                    wcs = WCS(h.header, relax=True) if "CTYPE1" in h.header else None
                out.append((h.name, np.asarray(h.data, np.float32), int(h.header.get("BINNING", 1)), wcs))
    except FileNotFoundError:
        return []
    except Exception as exc:  # as above
        raise InputError(f"{path}: not a readable overview file ({reason(exc, 150)})") from None
    return out
