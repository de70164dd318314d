"""Pipeline step: name the linked objects that are known ones (thin I/O around :mod:`ssodetect.known`)."""
from __future__ import annotations

import logging

import numpy as np
from astropy import units as u
from astropy.coordinates import EarthLocation
from astropy.io import fits
from astropy.table import Table, vstack

from ssodetect.config import Config
from ssodetect.known import Observer, read_orbits
from ssodetect.known.identify import empty_known_table, identify
from ssodetect.pipeline.astrometry import wcs_from_header_string

log = logging.getLogger(__name__)

__all__ = ["observer_for", "identify_known"]


def _header_site(path: str) -> tuple | None:
    """(lon, lat, height) from the FITS OBSGEO-X/Y/Z keywords [m, ITRS], if present."""
    header = fits.getheader(path, 0)
    if all(k in header for k in ("OBSGEO-X", "OBSGEO-Y", "OBSGEO-Z")):
        loc = EarthLocation.from_geocentric(header["OBSGEO-X"], header["OBSGEO-Y"], header["OBSGEO-Z"], unit=u.m)
        return float(loc.lon.deg), float(loc.lat.deg), float(loc.height.to_value(u.m))
    return None


def observer_for(exposures: list, config: Config) -> Observer:
    """The observer of a run: spacecraft positions from the headers (per exposure) or [report]
    observer_position; else a ground site from [known] site or OBSGEO-X/Y/Z; else the geocentre."""
    positions = {round(float(e.mid_time.mjd), 6): r.observer for e in exposures for r in e.ccds if r.observer}
    fixed = tuple(config.report.observer_position) or None
    if positions or fixed:
        return Observer(positions=positions or None, fixed_position=fixed)
    site = tuple(config.known.site) or (_header_site(exposures[0].ccds[0].path) if exposures else None)
    return Observer(site=site)


def _footprints(ccd_info: list, astrometry: Table | None) -> list:
    """(exposure, mjd-less) WCS and shape of every CCD exposure: the fitted WCS when there is one."""
    fitted = {}
    if astrometry is not None:
        for row in astrometry:
            if str(row["status"]) == "ok" and str(row["wcs_header"]):
                fitted[(int(row["exposure"]), str(row["ccd"]))] = str(row["wcs_header"])
    out = []
    for info in ccd_info:
        text = fitted.get((int(info["exposure"]), str(info["ccd"])), info.get("wcs_header", ""))
        if not text or not info.get("shape"):
            continue
        wcs = wcs_from_header_string(text)
        out.append((int(info["exposure"]), wcs, tuple(info["shape"])))
    return out


def identify_known(observations: Table, objects: Table, exposures: list, ccd_info: list, astrometry: Table | None,
                   config: Config) -> Table:
    """Fill ``designation``/``known_offset`` of ``objects`` (in place) and return the known objects
    predicted in the field (:data:`ssodetect.known.identify.KNOWN_COLUMNS`)."""
    kc = config.known
    if not kc.orbits:
        return empty_known_table()
    orbits = vstack([read_orbits(p) for p in kc.orbits]) if len(kc.orbits) > 1 else read_orbits(kc.orbits[0])
    sky = observations[np.asarray(observations["wcs"]).astype(str) != "relative"] if len(observations) else observations
    if len(sky) == 0:
        log.info("known objects: no observation with sky coordinates; identification skipped")
        return empty_known_table()
    prints = _footprints(ccd_info, astrometry)
    corners = []
    for _, wcs, (ny, nx) in prints:
        corners.append(wcs.all_pix2world(np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1]]), 0))
    pts = np.concatenate(corners) if corners else np.column_stack([sky["ra"], sky["dec"]])
    centre_vec = np.mean(_unit(pts[:, 0], pts[:, 1]), axis=0)
    ra0 = float(np.degrees(np.arctan2(centre_vec[1], centre_vec[0])) % 360.0)
    dec0 = float(np.degrees(np.arcsin(centre_vec[2] / np.linalg.norm(centre_vec))))
    radius = float(np.max(np.degrees(np.arccos(np.clip(_unit(pts[:, 0], pts[:, 1]) @ _unit(ra0, dec0)[0], -1, 1)))))
    times = {int(e.index): float(e.mid_time.mjd) for e in exposures}

    def on_detector(ra, dec, mjd):
        inside = np.zeros(np.size(ra), bool)
        for exposure, wcs, (ny, nx) in prints:
            if abs(times.get(exposure, np.inf) - mjd) > 1e-6:
                continue
            with np.errstate(invalid="ignore"):
                x, y = wcs.all_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0, quiet=True)
            inside |= (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
        return inside

    identities, known = identify(
        sky, orbits, observer_for(exposures, config), centre=(ra0, dec0), radius_deg=radius,
        match_radius=kc.match_radius, rate_tolerance=kc.rate_tolerance,
        on_detector=on_detector if prints else None, margin_deg=kc.search_margin, times=list(times.values()),
    )
    for k, name in enumerate(np.asarray(objects["object"]).astype(str)):
        if name in identities:
            objects["designation"][k] = identities[name]["designation"]
            objects["known_offset"][k] = identities[name]["offset"]
    return known


def _unit(ra, dec) -> np.ndarray:
    ra, dec = np.radians(np.atleast_1d(ra)), np.radians(np.atleast_1d(dec))
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
