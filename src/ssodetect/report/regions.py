"""Region files for SAOImage DS9 and CARTA: each moving object's detections, track and name over the frames.

``objects.reg`` holds sky regions (ICRS, degrees) that any exposure with a WCS can load: a circle at every observation (radius three times its position error, at least
0.3"), a line from the object's first to its last observation, and its name (with the known designation) beside
the first.  Colours tell how a position was found: green slow movers (``linked``), cyan fast movers (``streak``,
the trail drawn as a line through the observation along its position angle), magenta a slow mover measured
beside a brighter source (``blend``), yellow shift-and-stack finds (``stacked``).  Written with the ``regions``
package (``objects.reg``, DS9 format).

``regions/e<exposure>_<ccd>.reg`` hold, per CCD exposure, image regions (pixel coordinates of that frame, 1-based
as DS9 counts): every detection kept as a moving candidate (small grey circles), every object's observation (a
circle coloured by kind, named), its fitted track through the exposures (a dashed line) and its predicted position
where it has no observation (a cross), and every trail with its status (a line along the trail, coloured by
status: cyan linked, orange single, red static, white satellite, grey bleed/spike/edge).
"""
from __future__ import annotations

import math

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from regions import (CirclePixelRegion, CircleSkyRegion, LinePixelRegion, LineSkyRegion, PixCoord, PointPixelRegion,
                     Regions, TextSkyRegion)

from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.columns import rows_by
from ssodetect.io.headers import world_to_pixels
from ssodetect.io.outputs import safe_name

__all__ = ["object_regions", "write_regions", "exposure_regions", "write_exposure_regions", "fitted_track",
           "region_file_name", "KIND_COLOURS", "TRAIL_COLOURS", "REGIONS_DIR"]

#: Folder of the per-exposure region files in a run's output directory.
REGIONS_DIR = "regions"
#: Colour of a trail by its status in ``streaks.ecsv``.
TRAIL_COLOURS = {"linked": "cyan", "single": "orange", "static": "red", "satellite": "white", "bleed": "gray",
                 "spike": "gray", "edge": "gray", "blend": "gray"}

KIND_COLOURS = {"linked": "green", "streak": "cyan", "blend": "magenta", "stacked": "yellow"}
#: Smallest circle drawn [arcsec].
MIN_RADIUS = 0.3


def object_regions(observations: Table, objects: Table) -> Regions:
    """Sky regions of every object with positions (see the module's description)."""
    out = []
    if not len(observations):
        return Regions(out)
    names = np.asarray(observations["object"]).astype(str)
    designation = {}
    if len(objects) and "designation" in objects.colnames:
        for r in objects:
            value = r["designation"]
            if not np.ma.is_masked(value) and str(value).strip() not in ("", "--"):
                designation[str(r["object"])] = str(value).strip()
    for name in dict.fromkeys(names):
        rows = observations[names == name]
        rows = rows[np.argsort(np.asarray(rows["mjd"], float))]
        ok = np.isfinite(np.asarray(rows["ra"], float)) & np.isfinite(np.asarray(rows["dec"], float))
        rows = rows[ok]
        if not len(rows):
            continue
        for row in rows:
            kind = str(row["kind"])
            colour = KIND_COLOURS.get(kind, "white")
            centre = SkyCoord(float(row["ra"]), float(row["dec"]), unit="deg")
            err = float(np.nanmax([row["ra_err"], row["dec_err"], 0.0]))
            radius = max(3.0 * err if math.isfinite(err) else 0.0, MIN_RADIUS) * u.arcsec
            out.append(CircleSkyRegion(centre, radius, meta={"text": f"{name} e{int(row['exposure'])}"},
                                       visual={"color": colour}))
            if kind == "streak" and math.isfinite(float(row["trail_pa"])):
                scale = 0.5 * float(row["rate"]) * float(row["exptime"]) / 3600.0  # half the trail [arcsec]
                if math.isfinite(scale) and scale > 0:
                    pa = float(row["trail_pa"]) * u.deg
                    out.append(LineSkyRegion(centre.directional_offset_by(pa, scale * u.arcsec),
                                             centre.directional_offset_by(pa + 180 * u.deg, scale * u.arcsec),
                                             visual={"color": colour}))
        first, last = rows[0], rows[-1]
        start = SkyCoord(float(first["ra"]), float(first["dec"]), unit="deg")
        if len(rows) > 1:
            out.append(LineSkyRegion(start, SkyCoord(float(last["ra"]), float(last["dec"]), unit="deg"),
                                     visual={"color": KIND_COLOURS.get(str(first["kind"]), "white"), "dash": 1}))
        label = name + (f" = {designation[name]}" if designation.get(name) else "")
        out.append(TextSkyRegion(start.directional_offset_by(0 * u.deg, 1.5 * u.arcsec), label,
                                 visual={"color": KIND_COLOURS.get(str(first["kind"]), "white")}))
    return Regions(out)


def write_regions(observations: Table, objects: Table, path) -> int:
    """Write :func:`object_regions` to ``path`` (DS9 format); returns the number of regions."""
    regions = object_regions(observations, objects)
    regions.write(str(path), format="ds9", overwrite=True)
    return len(regions)


def fitted_track(mjd: np.ndarray, ra: np.ndarray, dec: np.ndarray):
    """Linear fit of an object's sky motion: a function ``mjd -> (ra, dec)`` [deg] (None for < 2 positions).

    Fitted in the tangent plane of the first position (arcsec, xi east), a straight line in time (UTC MJD):
    what the linker fits, drawn over the stamps and the frames."""
    mjd, ra, dec = (np.asarray(v, float) for v in (mjd, ra, dec))
    ok = np.isfinite(mjd) & np.isfinite(ra) & np.isfinite(dec)
    if ok.sum() < 2 or np.ptp(mjd[ok]) <= 0:
        return None
    plane = TangentPlane(float(ra[ok][0]), float(dec[ok][0]))
    xi, eta = plane.to_plane(ra[ok], dec[ok])
    t = mjd[ok] - mjd[ok][0]
    px, py = np.polyfit(t, xi, 1), np.polyfit(t, eta, 1)
    t0 = float(mjd[ok][0])

    def at(times):
        tt = np.asarray(times, float) - t0
        return plane.to_sky(np.polyval(px, tt), np.polyval(py, tt))

    return at


def region_file_name(exposure: int, ccd: str) -> str:
    """``e<exposure>_<ccd>.reg`` with the CCD id reduced to ASCII letters, digits, ``-`` and ``_``
    (:func:`~ssodetect.io.outputs.safe_name`: a changed id gets a hash, so ``A.1`` and ``A_1`` keep two files)."""
    return f"e{int(exposure)}_{safe_name(ccd)}.reg"


def exposure_regions(exposure: int, ccd: str, *, candidates: Table | None, observations: Table,
                     streaks: Table | None, exposure_mjd: dict, wcs=None) -> Regions:
    """Image regions of one CCD exposure (see the module's description).

    Parameters
    ----------
    exposure, ccd
        The CCD exposure.
    candidates : Table or None
        The run's moving candidates (``exposure, ccd, x, y``; 0-based pixels).
    observations : Table
        ``observations.ecsv``.
    streaks : Table or None
        ``streaks.ecsv`` (``x, y, length, theta, status, object``; ``detector_length, detector_theta``, the trail as
        seen, drawn when present).
    exposure_mjd : dict
        Exposure index -> mid-exposure MJD (UTC): where each object's track is predicted.
    wcs : astropy.wcs.WCS, optional
        The frame's WCS (the one its positions went through): tracks and predicted positions need it.
    """
    out = []

    def here(table):
        if table is None or not len(table):
            return np.zeros(0, bool)
        return (np.asarray(table["exposure"]) == exposure) & (np.asarray(table["ccd"]).astype(str) == str(ccd))

    if candidates is not None and len(candidates):
        sel = here(candidates)
        for x, y in zip(np.asarray(candidates["x"], float)[sel], np.asarray(candidates["y"], float)[sel]):
            out.append(CirclePixelRegion(PixCoord(x, y), 4.0, visual={"color": "gray"}))
    if streaks is not None and len(streaks):
        sel = np.nonzero(here(streaks))[0]
        has_theta = "theta" in streaks.colnames
        # the trail as seen (on a trailed exposure its motion plus the drift), not the motion it stands for
        seen = "detector_length" in streaks.colnames and "detector_theta" in streaks.colnames
        for k in sel:
            row = streaks[k]
            colour = TRAIL_COLOURS.get(str(row["status"]), "white")
            centre = PixCoord(float(row["x"]), float(row["y"]))
            theta = float(row["detector_theta"]) if seen else float(row["theta"]) if has_theta else float("nan")
            half = 0.5 * float(row["detector_length"] if seen else row["length"])
            label = str(row["status"]) + (f" {row['object']}" if str(row["object"]).strip() else "")
            if math.isfinite(theta) and half > 0:
                dx, dy = half * math.cos(theta), half * math.sin(theta)
                out.append(LinePixelRegion(PixCoord(centre.x - dx, centre.y - dy), PixCoord(centre.x + dx, centre.y + dy),
                                           visual={"color": colour, "linewidth": 2}, meta={"text": label}))
            else:
                out.append(PointPixelRegion(centre, visual={"color": colour, "symbol": "diamond"}, meta={"text": label}))
    if len(observations):
        by_object = rows_by(observations, "object")
        exp = np.asarray(observations["exposure"])
        ccds = np.asarray(observations["ccd"]).astype(str)
        for name, idx in by_object.items():
            mine = idx[(exp[idx] == exposure) & (ccds[idx] == str(ccd))]
            kind = str(observations["kind"][idx[0]])
            colour = KIND_COLOURS.get(kind, "white")
            for k in mine:
                out.append(CirclePixelRegion(PixCoord(float(observations["x"][k]), float(observations["y"][k])), 8.0,
                                             visual={"color": colour}, meta={"text": name}))
            if wcs is None or len(idx) < 2:
                continue
            track = fitted_track(observations["mjd"][idx], observations["ra"][idx], observations["dec"][idx])
            if track is None:
                continue
            times = np.array([exposure_mjd[e] for e in sorted(exposure_mjd)], float)
            ra, dec = track(times)
            xs, ys = world_to_pixels(wcs, ra, dec)
            ny, nx = wcs.pixel_shape[::-1] if wcs.pixel_shape else (np.inf, np.inf)
            onframe = (xs > -0.5) & (ys > -0.5) & (xs < nx - 0.5) & (ys < ny - 0.5)
            if not mine.size and not onframe.any():
                continue  # the track passes elsewhere
            out.append(LinePixelRegion(PixCoord(float(xs[0]), float(ys[0])), PixCoord(float(xs[-1]), float(ys[-1])),
                                       visual={"color": colour, "dash": 1}, meta={"text": f"{name} track"}))
            if not mine.size:  # predicted here, not observed: a cross where it should be
                k = sorted(exposure_mjd).index(exposure) if exposure in exposure_mjd else None
                if k is not None and onframe[k]:
                    out.append(PointPixelRegion(PixCoord(float(xs[k]), float(ys[k])),
                                                visual={"color": colour, "symbol": "x"},
                                                meta={"text": f"{name} predicted"}))
    return Regions(out)


def write_exposure_regions(folder, keys, **kwargs) -> dict:
    """Write :func:`exposure_regions` of every (exposure, ccd) in ``keys`` into ``folder``
    (:func:`region_file_name`); ``kwargs['wcs_for'](exposure, ccd)`` gives each frame's WCS.  Returns
    {file name: number of regions}."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wcs_for = kwargs.pop("wcs_for", None)
    counts = {}
    for exposure, ccd in keys:
        wcs = wcs_for(exposure, ccd) if wcs_for is not None else None
        regions = exposure_regions(exposure, ccd, wcs=wcs, **kwargs)
        name = region_file_name(exposure, ccd)
        regions.write(str(folder / name), format="ds9", overwrite=True)
        counts[name] = len(regions)
    return counts
