"""Local reference catalogues with Gaia DR3 column names, and a WCS check.

A catalogue file (ECSV, FITS, CSV or Parquet) holds ``ra, dec`` [deg] at
``ref_epoch`` [Julian year, TCB for Gaia], ``pmra`` (includes cos dec) and
``pmdec`` [mas/yr], ``phot_g_mean_mag``.  Positions are propagated linearly to
the observation epoch (parallax ignored: below a milliarcsecond for almost all
field stars).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table
from astropy.time import Time
from scipy.spatial import cKDTree

from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.errors import InputError

__all__ = ["REFCAT_REQUIRED", "load_reference_catalogue", "propagate", "compare_with_reference"]

REFCAT_REQUIRED = ("ra", "dec")


def load_reference_catalogue(path: str | Path) -> Table:
    """Read a reference catalogue; missing proper motions are taken as zero.

    Raises
    ------
    InputError
        Unreadable file, or no ``ra``/``dec`` columns.
    """
    path = Path(path)
    try:
        fmt = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".parquet": "parquet"}.get(path.suffix.lower())
        table = Table.read(path, format=fmt) if fmt else Table.read(path)
    except FileNotFoundError:
        raise InputError(f"{path}: reference catalogue not found") from None
    except Exception as exc:  # astropy's readers raise many types
        raise InputError(f"{path}: not a readable catalogue ({type(exc).__name__}: {exc})") from None
    missing = [c for c in REFCAT_REQUIRED if c not in table.colnames]
    if missing:
        raise InputError(f"{path}: reference catalogue lacks column(s) {', '.join(missing)}")
    for name in ("pmra", "pmdec"):
        if name not in table.colnames:
            table[name] = 0.0
    if "ref_epoch" not in table.colnames:
        table["ref_epoch"] = 2016.0
    return table


def propagate(catalogue: Table, epoch: Time) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec [deg] of catalogue stars at ``epoch`` (linear proper motion)."""
    years = epoch.jyear - np.asarray(catalogue["ref_epoch"], float)
    pmra = np.nan_to_num(np.asarray(catalogue["pmra"], float))
    pmdec = np.nan_to_num(np.asarray(catalogue["pmdec"], float))
    dec = np.asarray(catalogue["dec"], float) + pmdec * years / 3.6e6
    ra = np.asarray(catalogue["ra"], float) + pmra * years / 3.6e6 / np.cos(np.radians(dec))
    return ra, dec


def compare_with_reference(ra, dec, ref_ra, ref_dec, *, radius: float = 0.5) -> dict:
    """Offsets of detections from their nearest reference stars.

    Parameters
    ----------
    ra, dec : ndarray
        Detections [deg].
    ref_ra, ref_dec : ndarray
        Reference stars at the same epoch [deg].
    radius : float
        Match radius [arcsec].

    Returns
    -------
    dict
        ``n_matched``, median offsets ``dra``/``ddec`` and ``rms`` [arcsec]
        (NaN when nothing matches).
    """
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    if ra.size == 0 or len(ref_ra) == 0:
        return {"n_matched": 0, "dra": float("nan"), "ddec": float("nan"), "rms": float("nan")}
    plane = TangentPlane(float(np.median(ra)), float(np.median(dec)))
    x, y = plane.to_plane(ra, dec)
    rx, ry = plane.to_plane(ref_ra, ref_dec)
    dist, idx = cKDTree(np.column_stack([rx, ry])).query(np.column_stack([x, y]), distance_upper_bound=radius)
    ok = np.isfinite(dist)
    if not ok.any():
        return {"n_matched": 0, "dra": float("nan"), "ddec": float("nan"), "rms": float("nan")}
    dx = x[ok] - rx[idx[ok]]
    dy = y[ok] - ry[idx[ok]]
    return {
        "n_matched": int(ok.sum()),
        "dra": float(np.median(dx)),
        "ddec": float(np.median(dy)),
        "rms": float(np.sqrt(np.median(dx**2 + dy**2))),
    }
