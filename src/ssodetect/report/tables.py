"""Observation and object tables of a run (``observations.ecsv``, ``objects.ecsv``).

"Nothing found" is a table with every column and no rows.
"""
from __future__ import annotations

import numpy as np
from astropy.table import Table, vstack
from astropy.time import Time

from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.columns import describe, empty_table
from ssodetect.link.tracklets import Tracklet

__all__ = ["OBSERVATION_COLUMNS", "OBJECT_COLUMNS", "append_objects", "rows_table", "tracklet_tables"]

#: Floor [mag] of the per-detection magnitude errors when an object's magnitude is their weighted mean (a mover's
#: brightness changes between exposures beyond the noise of its brightest detections).
MAG_ERROR_FLOOR = 0.05

#: (name, dtype, unit, description)
OBSERVATION_COLUMNS = [
    ("object", "U8", "", "object identifier (ADES trkSub)"),
    ("exposure", "i8", "", "exposure index in time order"),
    ("file", "U256", "", "FITS file of the exposure"),
    ("ccd", "U32", "", "CCD identifier"),
    ("obs_time", "U32", "", "mid-exposure time, ISO-8601 UTC"),
    ("mjd", "f8", "d", "mid-exposure time, MJD UTC"),
    ("exptime", "f8", "s", "exposure time"),
    ("ra", "f8", "deg", "right ascension (ICRS, through the image WCS)"),
    ("dec", "f8", "deg", "declination"),
    ("wcs", "U8", "", "source of the position: fit (WCS refined against the reference catalogue) | header | relative"),
    ("ra_err", "f8", "arcsec", "1-sigma uncertainty in RA*cos(dec)"),
    ("dec_err", "f8", "arcsec", "1-sigma uncertainty in Dec"),
    ("x", "f8", "pix", "x on the CCD, 0-based"),
    ("y", "f8", "pix", "y on the CCD, 0-based"),
    ("flux", "f8", "adu", "aperture-corrected flux"),
    ("flux_err", "f8", "adu", "flux uncertainty"),
    ("mag", "f8", "mag", "calibrated magnitude (fitted zero point, else the header's)"),
    ("mag_err", "f8", "mag", "magnitude uncertainty"),
    ("snr", "f8", "", "signal-to-noise ratio"),
    ("trail_length", "f8", "pix", "measured trail length (on an exposure whose stars are trailed alike: the "
                                  "source's own motion, its trail less the stars')"),
    ("trail_pa", "f8", "deg", "position angle of the trail axis on the sky, N through E, 0-180 (of that motion)"),
    ("rate", "f8", "arcsec / h", "rate of motion of the object"),
    ("pa", "f8", "deg", "position angle of motion, N through E"),
    ("resid_ra", "f8", "arcsec", "residual from the linear fit, RA*cos(dec)"),
    ("resid_dec", "f8", "arcsec", "residual from the linear fit, Dec"),
    ("kind", "U8", "", "how the position was found: linked (slow mover) | streak (fast mover, trails linked) | "
     "blend (a slow mover measured beside a brighter source) | stacked (doubtful: a slow tracklet awaiting its "
     "confirmation on the pixels, between the link and occupancy steps only)"),
]

OBJECT_COLUMNS = [
    ("object", "U8", "", "object identifier (ADES trkSub)"),
    ("n_obs", "i8", "", "number of observations"),
    ("mjd_ref", "f8", "d", "reference time of the fit, MJD UTC"),
    ("ra", "f8", "deg", "position at mjd_ref"),
    ("dec", "f8", "deg", "position at mjd_ref"),
    ("rate", "f8", "arcsec / h", "rate of motion"),
    ("rate_err", "f8", "arcsec / h", "rate uncertainty"),
    ("pa", "f8", "deg", "position angle of motion, N through E"),
    ("v_ra", "f8", "arcsec / h", "motion in RA*cos(dec)"),
    ("v_dec", "f8", "arcsec / h", "motion in Dec"),
    ("chi2_dof", "f8", "", "reduced chi-square of the linear fit"),
    ("rms_resid", "f8", "arcsec", "rms of the fit residuals"),
    ("mag", "f8", "mag", "mean magnitude, weighted by the detections' errors (floor MAG_ERROR_FLOOR)"),
    ("snr", "f8", "", "median SNR of the observations"),
    ("mjd_first", "f8", "d", "first observation"),
    ("mjd_last", "f8", "d", "last observation"),
    ("kind", "U8", "", "how the object was found: linked | streak | stacked (doubtful: between the link and "
     "occupancy steps only)"),
    ("designation", "U48", "", "known object it was identified with (empty: not identified)"),
    ("known_offset", "f8", "arcsec", "median observed-minus-predicted separation from that known object"),
]


def rows_table(rows: list[dict], columns) -> Table:
    """A table of ``columns`` from dicts (every column even when ``rows`` is empty)."""
    if not rows:
        return empty_table(columns)
    table = Table(rows=[[r[c[0]] for c in columns] for r in rows], names=[c[0] for c in columns], dtype=[c[1] for c in columns])
    return describe(table, columns)


def append_objects(observations: Table, objects: Table, new_obs: list[dict], new_obj: list[dict]) -> tuple[Table, Table]:
    """``observations`` and ``objects`` with rows (dicts of every column) of further objects appended."""
    if not new_obj:
        return observations, objects
    obs_add = rows_table(new_obs, OBSERVATION_COLUMNS)
    obj_add = rows_table(new_obj, OBJECT_COLUMNS)
    return (vstack([observations, obs_add]) if len(observations) else obs_add,
            vstack([objects, obj_add]) if len(objects) else obj_add)


def tracklet_tables(
    candidates: Table, tracklets: list[Tracklet], plane: TangentPlane, *, t0_mjd: float, kind: str = "linked",
    first_number: int = 1,
) -> tuple[Table, Table]:
    """Observation and object tables for linked tracklets.

    Parameters
    ----------
    candidates : Table
        Detections the tracklets index into (columns of the per-CCD step plus
        ``xi, eta, t_hours``).
    tracklets : list of Tracklet
    plane : TangentPlane
        Projection used for ``xi, eta``.
    t0_mjd : float
        MJD of ``t_hours = 0``.
    kind : str
        Value of the ``kind`` column.
    first_number : int
        Number of the first object (identifiers ``SD00001``...).

    Returns
    -------
    observations, objects : Table
        Columns :data:`OBSERVATION_COLUMNS` and :data:`OBJECT_COLUMNS`.
    """
    obs_rows: list[dict] = []
    obj_rows: list[dict] = []
    for number, trk in enumerate(tracklets, start=first_number):
        name = f"SD{number:05d}" if number < 100000 else f"S{number:07d}"
        idx = np.array(trk.members)
        rows = candidates[idx]
        dt = np.asarray(rows["t_hours"]) - trk.t_ref
        res_x = np.asarray(rows["xi"]) - (trk.x0 + trk.vx * dt)
        res_y = np.asarray(rows["eta"]) - (trk.y0 + trk.vy * dt)
        for k, row in enumerate(rows):
            obs_rows.append(
                {
                    "object": name,
                    "exposure": int(row["exposure"]),
                    "file": str(row["file"]),
                    "ccd": str(row["ccd"]),
                    "obs_time": Time(float(row["mjd"]), format="mjd", scale="utc").isot,
                    "mjd": float(row["mjd"]),
                    "exptime": float(row["exptime"]),
                    "ra": float(row["ra"]),
                    "dec": float(row["dec"]),
                    "wcs": str(row["wcs"]),
                    "ra_err": float(row["ra_err"]),
                    "dec_err": float(row["dec_err"]),
                    "x": float(row["x"]),
                    "y": float(row["y"]),
                    "flux": float(row["flux"]),
                    "flux_err": float(row["flux_err"]),
                    "mag": float(row["mag"]),
                    "mag_err": float(row["mag_err"]),
                    "snr": float(row["snr"]),
                    "trail_length": float(row["length"]),
                    "trail_pa": float(row["trail_pa"]),
                    "rate": trk.rate,
                    "pa": trk.position_angle,
                    "resid_ra": float(res_x[k]),
                    "resid_dec": float(res_y[k]),
                    "kind": kind,
                }
            )
        ra0, dec0 = plane.to_sky(np.array([trk.x0]), np.array([trk.y0]))
        # weighted by the magnitude errors (a detection the edge cut, its flux truncated, carries a 1.1 mag error)
        mags, mag_errs = np.asarray(rows["mag"], float), np.asarray(rows["mag_err"], float)
        good = np.isfinite(mags) & np.isfinite(mag_errs)
        weights = 1.0 / (mag_errs[good] ** 2 + MAG_ERROR_FLOOR**2)
        obj_rows.append(
            {
                "object": name,
                "n_obs": len(idx),
                "mjd_ref": t0_mjd + trk.t_ref / 24.0,
                "ra": float(ra0[0]),
                "dec": float(dec0[0]),
                "rate": trk.rate,
                "rate_err": trk.rate_err,
                "pa": trk.position_angle,
                "v_ra": trk.vx,
                "v_dec": trk.vy,
                "chi2_dof": trk.chi2 / max(trk.dof, 1),
                "rms_resid": float(np.sqrt(np.mean(res_x**2 + res_y**2))),
                "mag": (float(np.sum(weights * mags[good]) / np.sum(weights)) if good.any()
                        else float(np.nanmean(mags)) if np.isfinite(mags).any() else np.nan),
                "snr": float(np.median(rows["snr"])),
                "mjd_first": float(np.min(rows["mjd"])),
                "mjd_last": float(np.max(rows["mjd"])),
                "kind": kind,
                "designation": "",
                "known_offset": np.nan,
            }
        )
    return rows_table(obs_rows, OBSERVATION_COLUMNS), rows_table(obj_rows, OBJECT_COLUMNS)
