"""Pipeline step: name the linked objects that are known ones (thin I/O around :mod:`ssodetect.known`)."""
from __future__ import annotations

import logging

import numpy as np
from astropy import units as u
from astropy.coordinates import EarthLocation
from astropy.io import fits
from astropy.table import Table, vstack
from astropy.time import Time

from ssodetect.config import Config
from ssodetect.known import Observer, read_orbits
from ssodetect.known.identify import empty_known_table, identify, match_predictions
from ssodetect.known.skybot import predictions_from_skybot, skybot_cone
from ssodetect.io.headers import world_to_pixels

log = logging.getLogger(__name__)

__all__ = ["observer_for", "load_orbits", "identify_known", "recover_known"]


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


def _footprints(ccd_info: list, wcs_for) -> list:
    """(exposure, WCS, shape) of every CCD exposure with a WCS (the fitted one where there is one)."""
    out = []
    for info in ccd_info:
        wcs = wcs_for(int(info["exposure"]), str(info["ccd"]))
        if wcs is not None and info.get("shape"):
            out.append((int(info["exposure"]), wcs, tuple(info["shape"])))
    return out


def load_orbits(paths) -> Table | None:
    """The orbits of every file in ``paths`` (None when there is none).

    Raises
    ------
    InputError
        A file that cannot be read or holds no orbit (one line naming it).
    """
    tables = [read_orbits(p) for p in paths]
    return (vstack(tables) if len(tables) > 1 else tables[0]) if tables else None


def identify_known(observations: Table, objects: Table, exposures: list, ccd_info: list, wcs_for,
                   orbits: Table | None, config: Config) -> tuple[Table, dict]:
    """Fill ``designation``/``known_offset`` of ``objects`` (in place).

    ``wcs_for(exposure, ccd)`` gives the WCS of each CCD exposure (fitted, else the header's; None without);
    ``orbits`` are the catalogued orbits (:func:`load_orbits`; None: SkyBoT when enabled).

    Returns
    -------
    known : Table
        The known objects predicted in the field (:data:`ssodetect.known.identify.KNOWN_COLUMNS`).
    predictions : dict
        Designation -> (times [MJD UTC], ra, dec [deg]) of each of them.
    """
    kc = config.known
    if orbits is None and not kc.skybot:
        return empty_known_table(), {}
    sky = observations[np.asarray(observations["wcs"]).astype(str) != "relative"] if len(observations) else observations
    prints = _footprints(ccd_info, wcs_for)
    if len(sky) == 0 and not prints:
        log.info("known objects: no observation and no CCD with sky coordinates; identification skipped")
        return empty_known_table(), {}
    if len(sky) == 0:
        log.info("known objects: nothing linked on the sky; the catalogued objects are predicted on the CCDs and "
                 "measured there")
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
                x, y = world_to_pixels(wcs, np.asarray(ra, float), np.asarray(dec, float))
            inside |= (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
        return inside

    if orbits is not None:
        identities, known, predictions = identify(
            sky, orbits, observer_for(exposures, config), centre=(ra0, dec0), radius_deg=radius,
            match_radius=kc.match_radius, rate_tolerance=kc.rate_tolerance,
            on_detector=on_detector if prints else None, margin_deg=kc.search_margin, times=list(times.values()),
        )
    else:  # SkyBoT alone
        mjd = np.asarray(sky["mjd"], float) if len(sky) else np.asarray(list(times.values()), float)
        t_mid = 0.5 * (float(mjd.min()) + float(mjd.max()))
        grid = np.unique(np.round(np.concatenate([mjd, list(times.values()), [t_mid]]), 8))
        station = config.report.station if config.report.station != "XXX" else "500"
        ident, pra, pdec, pV = predictions_from_skybot(skybot_cone(ra0, dec0, radius, t_mid, station), t_mid, grid)
        identities, known, predictions = match_predictions(
            sky, ident, grid, pra, pdec, pV, centre=(ra0, dec0), radius_deg=radius, match_radius=kc.match_radius,
            rate_tolerance=kc.rate_tolerance, on_detector=on_detector if prints else None,
        )
    for k, name in enumerate(np.asarray(objects["object"]).astype(str)):
        if name in identities:
            objects["designation"][k] = identities[name]["designation"]
            objects["known_offset"][k] = identities[name]["offset"]
    return known, predictions


#: Pixels a recovered position may lie from its prediction where the pixels are coarser than ``[known]
#: recovery_radius``: elements moved over years through the planets' pull predict within ~2.5" (NEOWISE frames).
RECOVERY_PIXELS = 1.5


def recover_known(observations: Table, objects: Table, known: Table, predictions: dict, exposures: list,
                  ccd_info: list, wcs_for, read_image, config: Config) -> tuple[Table, Table]:
    """Measure known objects that linking missed at their predicted positions (forced PSF centroids).

    A known object predicted on the detectors but not identified (blended with a galaxy in some
    exposures, or seen in too few) is looked for in every exposure: a PSF fit started at the
    prediction, kept when it converges within ``[known] recovery_radius`` (at least :data:`RECOVERY_PIXELS`
    pixels) of it with S/N >= 5.
    Seen in at least two exposures with a consistent observed-minus-predicted offset, it becomes
    an object of ``kind = known`` with those observations.

    Parameters
    ----------
    wcs_for : callable
        ``(exposure, ccd) -> WCS or None``.
    read_image : callable
        ``ref -> (data, rms, gain)``: background-subtracted pixels (NaN where masked) [ADU].

    Returns
    -------
    observations, objects : Table
        With the recovered objects appended (``known["matched"]`` filled in place).
    """
    from ssodetect.detect import psf_photometry
    from ssodetect.detect.extract import psf_centroid
    from ssodetect.report.tables import append_objects

    kc = config.known
    if len(known) == 0 or kc.recovery_radius <= 0:
        return observations, objects
    missing = [k for k in range(len(known)) if bool(known["on_detector"][k]) and not str(known["matched"][k])]
    if not missing:
        return observations, objects
    info_by = {(int(i["exposure"]), str(i["ccd"])): i for i in ccd_info}
    cache: dict = {}
    new_obs, new_obj = [], []
    used = {str(n) for n in objects["object"]} if len(objects) else set()
    number = len(objects) + 1
    for k in missing:
        desig = str(known["designation"][k])
        times, pra, pdec = predictions[desig]
        rows = []
        for e in exposures:
            t = float(e.mid_time.mjd)
            j = int(np.argmin(np.abs(times - t)))
            if abs(times[j] - t) > 1e-5:
                continue
            for ref in e.ccds:
                wcs = wcs_for(e.index, ref.ccd)
                info = info_by.get((e.index, ref.ccd))
                if wcs is None or info is None or not info.get("shape"):
                    continue
                x, y = (float(v) for v in world_to_pixels(wcs, pra[j], pdec[j]))
                ny, nx = info["shape"]
                if not (5 <= x < nx - 5 and 5 <= y < ny - 5):
                    continue
                if (e.index, ref.ccd) not in cache:
                    cache = {(e.index, ref.ccd): read_image(ref)}  # one CCD image in memory at a time
                data, rms, gain = cache[(e.index, ref.ccd)]
                sigma = float(info.get("psf_sigma") or 1.0)
                mask = ~np.isfinite(data)
                work = np.where(mask, 0.0, data).astype(np.float64)
                var = np.asarray(rms, np.float64) ** 2
                fit = psf_centroid(work, var, mask, x, y, sigma)
                if fit is None:
                    continue
                scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0
                # within the radius, or 1.5 px where pixels are coarser than it (2.75" for NEOWISE)
                if np.hypot(fit[0] - x, fit[1] - y) * scale > max(kc.recovery_radius, RECOVERY_PIXELS * scale):
                    continue
                flux, err = psf_photometry(work, var, mask, np.array([fit[0]]), np.array([fit[1]]), np.zeros(1),
                                           np.zeros(1), sigma, gain)
                snr = float(flux[0] / err[0]) if err[0] > 0 else 0.0
                if not snr >= 5.0:
                    continue
                ra, dec = (float(v) for v in wcs.all_pix2world(fit[0], fit[1], 0))
                pos_err = np.hypot(np.sqrt(2.0) * sigma / snr, config.detect.centroid_error_floor) * scale
                zp = (info.get("astrometry") or {}).get("zeropoint", info.get("zeropoint", np.nan))
                zp = float(zp) if zp is not None else np.nan
                mag = zp - 2.5 * np.log10(flux[0] / max(ref.exptime, 1e-9)) if flux[0] > 0 else np.nan
                rows.append({"exposure": e.index, "file": str(ref.path), "ccd": str(ref.ccd), "mjd": t,
                             "exptime": float(ref.exptime), "ra": ra, "dec": dec, "x": float(fit[0]), "y": float(fit[1]),
                             "err": float(pos_err), "flux": float(flux[0]), "flux_err": float(err[0]), "snr": snr,
                             "mag": float(mag), "mag_err": float(1.0857 / snr), "dra": (ra - pra[j]) * np.cos(np.radians(dec)) * 3600.0,
                             "ddec": (dec - pdec[j]) * 3600.0})
                break
        if len(rows) < 2:
            continue
        dra, ddec = np.array([r["dra"] for r in rows]), np.array([r["ddec"] for r in rows])
        spread = np.hypot(dra - np.median(dra), ddec - np.median(ddec))
        if np.max(spread) > 3.0 * max(r["err"] for r in rows) + 0.3:
            continue  # not one object moving as predicted
        while f"SD{number:05d}" in used:
            number += 1
        name = f"SD{number:05d}"
        used.add(name)
        t = np.array([r["mjd"] for r in rows])
        t_ref = float(np.mean(t))
        cosd = np.cos(np.radians(np.mean([r["dec"] for r in rows])))
        xi = np.array([(r["ra"] - rows[0]["ra"]) * cosd * 3600.0 for r in rows])
        eta = np.array([(r["dec"] - rows[0]["dec"]) * 3600.0 for r in rows])
        dt = (t - t_ref) * 24.0
        vx, x0 = np.polyfit(dt, xi, 1) if len(rows) > 1 else (0.0, xi[0])
        vy, y0 = np.polyfit(dt, eta, 1) if len(rows) > 1 else (0.0, eta[0])
        res = np.hypot(xi - (x0 + vx * dt), eta - (y0 + vy * dt))
        rate, pa = float(np.hypot(vx, vy)), float(np.degrees(np.arctan2(vx, vy)) % 360.0)
        for r, rx, ry in zip(rows, xi - (x0 + vx * dt), eta - (y0 + vy * dt)):
            new_obs.append({
                "object": name, "exposure": r["exposure"], "file": r["file"], "ccd": r["ccd"],
                "obs_time": Time(r["mjd"], format="mjd", scale="utc").isot, "mjd": r["mjd"], "exptime": r["exptime"],
                "ra": r["ra"], "dec": r["dec"], "wcs": "fit" if any(str(a) == "fit" for a in observations["wcs"]) else "header",
                "ra_err": r["err"], "dec_err": r["err"], "x": r["x"], "y": r["y"], "flux": r["flux"],
                "flux_err": r["flux_err"], "mag": r["mag"], "mag_err": r["mag_err"], "snr": r["snr"],
                "trail_length": 0.0, "trail_pa": np.nan, "rate": rate, "pa": pa, "resid_ra": float(rx),
                "resid_dec": float(ry), "kind": "known",
            })
        mags = np.array([r["mag"] for r in rows])
        new_obj.append({
            "object": name, "n_obs": len(rows), "mjd_ref": t_ref, "ra": rows[0]["ra"] + x0 / 3600.0 / cosd,
            "dec": rows[0]["dec"] + y0 / 3600.0, "rate": rate, "rate_err": float("nan"), "pa": pa, "v_ra": float(vx),
            "v_dec": float(vy), "chi2_dof": float("nan"), "rms_resid": float(np.sqrt(np.mean(res**2))),
            "mag": float(np.nanmean(mags)) if np.isfinite(mags).any() else np.nan,
            "snr": float(np.median([r["snr"] for r in rows])), "mjd_first": float(t.min()), "mjd_last": float(t.max()),
            "kind": "known", "designation": desig, "known_offset": float(np.median(np.hypot(dra, ddec))),
        })
        known["matched"][k] = name
        known["offset"][k] = float(np.median(np.hypot(dra, ddec)))
        known["offset_ra"][k], known["offset_dec"][k] = float(np.median(dra)), float(np.median(ddec))
    if new_obj:
        log.info("%d known objects recovered at their predicted positions", len(new_obj))
    return append_objects(observations, objects, new_obs, new_obj)


def _unit(ra, dec) -> np.ndarray:
    ra, dec = np.radians(np.atleast_1d(ra)), np.radians(np.atleast_1d(dec))
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
