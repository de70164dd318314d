"""Pipeline step: the shift-and-stack search on every CCD, its movers appended as ``kind = stacked``.

Per CCD: the exposures' images are read again, cleaned of one-exposure hits, moved onto the first
exposure's grid and differenced (:func:`ssodetect.stack.difference_images`); every object already
found is masked where it was seen; :func:`ssodetect.stack.search` finds the candidates, which
become objects unless they coincide with an observation already reported.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
from astropy.table import Table
from astropy.time import Time
from scipy.ndimage import binary_dilation

from ssodetect.config import Config
from ssodetect.detect.cosmics import sharp_pixel_mask
from ssodetect.io import common_ccds
from ssodetect.pipeline.ccd import lacosmic_mask
from ssodetect.stack import difference_images, search

log = logging.getLogger(__name__)

__all__ = ["stack_objects"]

DUPLICATE_RADIUS = 1.0  # [arcsec] a candidate this close to a reported observation is that object


def _offsets(wcss: list, shape: tuple) -> list:
    """(dx, dy) [px] carrying each exposure's pixels onto the first exposure's grid, from the WCS at the CCD centre."""
    ny, nx = shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    out = []
    for wcs in wcss:
        ra, dec = wcs.all_pix2world(cx, cy, 0)
        x0, y0 = wcss[0].all_world2pix(ra, dec, 0)
        out.append((float(x0 - cx), float(y0 - cy)))
    return out


def _clean(data: np.ndarray, rms: np.ndarray, gain: float, sigma: float, config: Config) -> np.ndarray:
    """``data`` with cosmic-ray and hot-pixel hits (and the pixel around them) set to NaN: one-exposure artefacts
    would otherwise stack into peaks (L.A.Cosmic, when installed, adds the faint wings of tracks)."""
    bad = ~np.isfinite(data)
    filled = np.nan_to_num(data)
    hits = sharp_pixel_mask(filled, rms, sigma, mask=bad)
    try:
        hits |= lacosmic_mask(filled, bad, gain, rms, config.clean)
    except ImportError:
        pass
    return np.where(binary_dilation(hits, iterations=1) | bad, np.nan, data).astype(np.float32)


def _mask_found(diff: np.ndarray, var: np.ndarray, found: Table, exposure_of: dict, offsets: list, sigma: float) -> None:
    """Mask (in place, every exposure) a disc of 4 FWHM + half the trail around each observation already reported:
    neither the object nor its imprint on the other exposures' templates is searched again."""
    _, ny, nx = diff.shape
    radius = 4.0 * 2.3548 * sigma
    for o in found:
        e = exposure_of[int(o["exposure"])]
        gx, gy = float(o["x"]) + offsets[e][0], float(o["y"]) + offsets[e][1]
        r = radius + 0.5 * float(np.nan_to_num(o["trail_length"]))
        x0, x1 = int(max(gx - r, 0)), int(min(gx + r + 1, nx))
        y0, y1 = int(max(gy - r, 0)), int(min(gy + r + 1, ny))
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        disc = np.hypot(xx - gx, yy - gy) <= r
        diff[:, y0:y1, x0:x1][:, disc] = np.nan
        var[:, y0:y1, x0:x1][:, disc] = np.nan


def _is_duplicate(positions: list, observations: Table) -> bool:
    """True when, in some exposure, a position (exposure index, ra, dec) lies within DUPLICATE_RADIUS of an
    observation already reported."""
    if not len(observations):
        return False
    exp = np.asarray(observations["exposure"])
    ra, dec = np.asarray(observations["ra"], float), np.asarray(observations["dec"], float)
    for index, r, d in positions:
        sel = exp == index
        if sel.any() and np.min(np.hypot((ra[sel] - r) * math.cos(math.radians(d)), dec[sel] - d)) * 3600.0 < DUPLICATE_RADIUS:
            return True
    return False


def _object_rows(name: str, cand, ccd: str, exposures: list, refs: list, wcss: list, infos: list, offsets: list,
                 times_h: np.ndarray, exptime_h: float, sigma: float, scale: float):
    """Observation rows and the object row of one candidate (positions from its trajectory, mid-exposure)."""
    snr = float(cand["nu"])
    err = max(math.sqrt(2.0) * sigma / snr, 0.35) * scale  # the trajectory grid: a third of a pixel at best
    flux, flux_err = float(cand["flux"]), float(cand["flux_err"])
    rate = float(math.hypot(cand["vx"], cand["vy"])) * scale
    pos = []
    for e in range(len(exposures)):
        x = float(cand["x"] + cand["vx"] * times_h[e]) - offsets[e][0]
        y = float(cand["y"] + cand["vy"] * times_h[e]) - offsets[e][1]
        ra, dec = (float(v) for v in wcss[e].all_pix2world(x, y, 0))
        pos.append((x, y, ra, dec))
    ra0, dec0 = pos[0][2], pos[0][3]
    xi = np.array([(p[2] - ra0) * math.cos(math.radians(dec0)) * 3600.0 for p in pos])
    eta = np.array([(p[3] - dec0) * 3600.0 for p in pos])
    v_ra, v_dec = np.polyfit(times_h, xi, 1)[0], np.polyfit(times_h, eta, 1)[0]
    pa = float(math.degrees(math.atan2(v_ra, v_dec)) % 360.0)
    obs, mags = [], []
    for e, (exp, (x, y, ra, dec)) in enumerate(zip(exposures, pos)):
        zp = (infos[e].get("astrometry") or {}).get("zeropoint")
        zp = float(zp) if zp is not None and np.isfinite(zp) else float(infos[e].get("zeropoint") or np.nan)
        mag = zp - 2.5 * math.log10(flux / max(refs[e].exptime, 1e-9)) if flux > 0 else np.nan
        mags.append(mag)
        wcs_kind = "fit" if (infos[e].get("astrometry") or {}).get("status") == "ok" else "header"
        obs.append({
            "object": name, "exposure": exp.index, "file": str(refs[e].path), "ccd": ccd,
            "obs_time": Time(float(exp.mid_time.mjd), format="mjd", scale="utc").isot,
            "mjd": float(exp.mid_time.mjd), "exptime": float(refs[e].exptime), "ra": ra, "dec": dec, "wcs": wcs_kind,
            "ra_err": err, "dec_err": err, "x": x, "y": y, "flux": flux, "flux_err": flux_err, "mag": mag,
            "mag_err": 1.0857 / snr, "snr": snr, "trail_length": rate * exptime_h / scale, "trail_pa": np.nan,
            "rate": rate, "pa": pa, "resid_ra": 0.0, "resid_dec": 0.0, "kind": "stacked",
        })
    t0_mjd = float(exposures[0].mid_time.mjd)
    obj = {
        "object": name, "n_obs": len(obs), "mjd_ref": t0_mjd, "ra": ra0, "dec": dec0, "rate": rate,
        "rate_err": float(math.sqrt(2.0) * err / max(float(np.ptp(times_h)), 1e-6)), "pa": pa, "v_ra": float(v_ra),
        "v_dec": float(v_dec), "chi2_dof": float("nan"), "rms_resid": 0.0,
        "mag": float(np.nanmean(mags)) if np.isfinite(mags).any() else np.nan, "snr": snr, "mjd_first": t0_mjd,
        "mjd_last": float(exposures[-1].mid_time.mjd), "kind": "stacked", "designation": "",
        "known_offset": float("nan"),
    }
    return [(e.index, p[2], p[3]) for e, p in zip(exposures, pos)], obs, obj


def stack_objects(observations: Table, objects: Table, exposures: list, ccd_info: list, wcs_for, read_image,
                  config: Config, timings: dict) -> tuple[Table, Table]:
    """Run the stack search on every CCD seen in every exposure and append its movers (``kind = stacked``).

    Parameters
    ----------
    observations, objects : Table
        What the run has found so far (masked in the search; candidates within 1" of one of its
        observations in some exposure are that object and are left out).
    exposures, ccd_info : list
        The run's exposures and per-CCD-exposure information (shape, PSF sigma, zero points).
    wcs_for : callable
        ``(exposure index, ccd) -> WCS`` (fitted or header).
    read_image : callable
        ``CCDRef -> (background-subtracted data, rms, gain)``.
    timings : dict
        ``timings["stack"]`` is set to the stage's wall time [s].

    Returns
    -------
    observations, objects : Table
    """
    from ssodetect.report.tables import append_objects

    sc = config.stack
    t_start = time.perf_counter()
    info_by = {(int(i["exposure"]), str(i["ccd"])): i for i in ccd_info}
    ccds = common_ccds(exposures)
    t0_mjd = float(exposures[0].mid_time.mjd)
    times_h = np.array([(float(e.mid_time.mjd) - t0_mjd) * 24.0 for e in exposures])
    exptime_h = float(np.median([e.exptime for e in exposures])) / 3600.0
    exposure_of = {e.index: k for k, e in enumerate(exposures)}
    used = {str(n) for n in objects["object"]} if len(objects) else set()
    number = len(objects) + 1
    new_obs, new_obj = [], []
    for ccd in ccds:
        refs = [next(r for r in e.ccds if r.ccd == ccd) for e in exposures]
        wcss = [wcs_for(e.index, ccd) for e in exposures]
        infos = [info_by.get((e.index, ccd), {}) for e in exposures]
        if any(w is None for w in wcss) or any(not i.get("shape") for i in infos):
            log.info("stack: CCD %s skipped (no WCS in some exposure)", ccd)
            continue
        shape = tuple(infos[0]["shape"])
        sigma = float(np.median([float(i.get("psf_sigma") or 1.0) for i in infos]))
        images, variances = [], []
        for ref in refs:
            data, rms, gain = read_image(ref)
            images.append(_clean(data, rms, gain, sigma, config))
            variances.append(np.asarray(rms, np.float32) ** 2)
        exact = _offsets(wcss, shape)
        diff, var = difference_images(images, variances, exact)
        offsets = [(float(round(dx)), float(round(dy))) for dx, dy in exact]  # the whole-pixel alignment it used
        del images, variances
        if len(observations):
            _mask_found(diff, var, observations[np.asarray(observations["ccd"]).astype(str) == str(ccd)], exposure_of,
                        offsets, sigma)
        scale = float(np.sqrt(abs(np.linalg.det(wcss[0].pixel_scale_matrix)))) * 3600.0
        cands = search(diff, var, times_h, sigma, exptime_h, rate_min=sc.rate_min / scale, rate_max=sc.rate_max / scale,
                       threshold=sc.threshold, grid_fraction=sc.grid_fraction, block=sc.block, backend=sc.backend,
                       progress=config.execution.progress)
        del diff, var
        n_new = 0
        for cand in cands:
            while f"SD{number:05d}" in used:
                number += 1
            name = f"SD{number:05d}"
            positions, obs, obj = _object_rows(name, cand, str(ccd), exposures, refs, wcss, infos, offsets, times_h,
                                               exptime_h, sigma, scale)
            if _is_duplicate(positions, observations):
                continue
            used.add(name)
            new_obs.extend(obs)
            new_obj.append(obj)
            n_new += 1
        log.info("stack: CCD %s: %d candidates, %d new movers", ccd, len(cands), n_new)
    timings["stack"] = time.perf_counter() - t_start
    return append_objects(observations, objects, new_obs, new_obj)
