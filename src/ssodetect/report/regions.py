"""Region files for SAOImage DS9 and CARTA: each moving object's detections, track and name over the frames.

Sky regions (ICRS, degrees): a circle at every observation (radius three times its position error, at least
0.3"), a line from the object's first to its last observation, and its name (with the known designation) beside
the first.  Colours tell how a position was found: green slow movers (``linked``), cyan fast movers (``streak``,
the trail drawn as a line through the observation along its position angle), magenta a slow mover measured
beside a brighter source (``blend``), yellow shift-and-stack finds (``stacked``).  Written with the ``regions``
package (``objects.reg``, DS9 format).
"""
from __future__ import annotations

import math

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from regions import CircleSkyRegion, LineSkyRegion, Regions, TextSkyRegion

__all__ = ["object_regions", "write_regions", "KIND_COLOURS"]

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
