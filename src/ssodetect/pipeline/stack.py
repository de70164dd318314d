"""Pipeline step: shift-and-stack candidates per CCD, turned into objects (``kind = stacked``)."""
from __future__ import annotations

import logging
import math
import time

import numpy as np
from astropy.table import Table, vstack
from astropy.time import Time

from scipy.ndimage import binary_dilation

from ssodetect.config import Config
from ssodetect.detect.cosmics import sharp_pixel_mask
from ssodetect.pipeline.ccd import _astroscrappy
from ssodetect.stack import difference_images, search

log = logging.getLogger(__name__)

__all__ = ["stack_objects"]


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


def stack_objects(observations: Table, objects: Table, exposures: list, ccd_info: list, wcs_for, read_image,
                  config: Config, timings: dict) -> tuple[Table, Table]:
    """Run the stack search on every CCD seen in every exposure and append its movers.

    Candidates whose positions coincide (within 1") in some exposure with an observation of an
    object already found are left out (no duplicates).  Returns the updated tables.
    """
    from ssodetect.report.tables import OBJECT_COLUMNS, OBSERVATION_COLUMNS

    sc = config.stack
    t_start = time.perf_counter()
    info_by = {(int(i["exposure"]), str(i["ccd"])): i for i in ccd_info}
    ccds = sorted({r.ccd for e in exposures for r in e.ccds if all(
        any(q.ccd == r.ccd for q in ee.ccds) for ee in exposures)})
    t0_mjd = float(exposures[0].mid_time.mjd)
    times_h = np.array([(float(e.mid_time.mjd) - t0_mjd) * 24.0 for e in exposures])
    exptime_h = float(np.median([e.exptime for e in exposures])) / 3600.0
    new_obs, new_obj = [], []
    used = {str(n) for n in objects["object"]} if len(objects) else set()
    number = len(objects) + 1
    have_ra = np.asarray(observations["ra"], float) if len(observations) else np.zeros(0)
    have_dec = np.asarray(observations["dec"], float) if len(observations) else np.zeros(0)
    have_exp = np.asarray(observations["exposure"]) if len(observations) else np.zeros(0, int)
    for ccd in ccds:
        refs = [next(r for r in e.ccds if r.ccd == ccd) for e in exposures]
        wcss = [wcs_for(e.index, ccd) for e in exposures]
        infos = [info_by.get((e.index, ccd), {}) for e in exposures]
        if any(w is None for w in wcss) or any(not i.get("shape") for i in infos):
            log.info("stack: CCD %s skipped (no WCS in some exposure)", ccd)
            continue
        shape = tuple(infos[0]["shape"])
        sigma = float(np.median([float(i.get("psf_sigma") or 1.0) for i in infos]))
        loaded = [read_image(r) for r in refs]
        images = []
        DBG = []
        for data, rms, gain in loaded:  # cosmic-ray and hot-pixel hits (one exposure only) would stack into peaks
            bad = ~np.isfinite(data)
            hits = sharp_pixel_mask(np.nan_to_num(data), rms, sigma, mask=bad)
            DBG.append(hits.copy())
            try:  # L.A.Cosmic finds the faint wings of tracks that a trailed kernel would otherwise follow
                hits |= _astroscrappy(np.nan_to_num(data), bad, gain, rms, config.clean)
            except ImportError:
                pass
            DBG.append(hits.copy())
            hits = binary_dilation(hits, iterations=1)
            images.append(np.where(hits, np.nan, data).astype(np.float32))
        variances = [np.asarray(rms, np.float32) ** 2 for _, rms, _ in loaded]
        exact = _offsets(wcss, shape)
        diff, var = difference_images(images, variances, exact)
        offsets = [(float(round(dx)), float(round(dy))) for dx, dy in exact]  # the whole-pixel alignment it used
        del loaded, images, variances
        # movers already found (and their imprint on the templates of the other exposures) are not searched again:
        # mask a disc around each of their positions, on the common grid, in every exposure
        if len(observations):
            on = observations[np.asarray(observations["ccd"]).astype(str) == str(ccd)]
            yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
            radius = 4.0 * 2.3548 * sigma
            for o in on:
                e = next(k for k, exp in enumerate(exposures) if exp.index == int(o["exposure"]))
                gx, gy = float(o["x"]) + offsets[e][0], float(o["y"]) + offsets[e][1]
                r = radius + 0.5 * float(np.nan_to_num(o["trail_length"]))
                x0, x1 = int(max(gx - r, 0)), int(min(gx + r + 1, shape[1]))
                y0, y1 = int(max(gy - r, 0)), int(min(gy + r + 1, shape[0]))
                if x0 >= x1 or y0 >= y1:
                    continue
                disc = np.hypot(xx[y0:y1, x0:x1] - gx, yy[y0:y1, x0:x1] - gy) <= r
                diff[:, y0:y1, x0:x1][:, disc] = np.nan
                var[:, y0:y1, x0:x1][:, disc] = np.nan
        scale = float(np.sqrt(abs(np.linalg.det(wcss[0].pixel_scale_matrix)))) * 3600.0
        import os
        if os.environ.get("STACK_DUMP"): np.savez(os.environ["STACK_DUMP"], dbg=np.array(DBG), diff=diff, var=var, times_h=times_h, sigma=sigma, exptime_h=exptime_h, scale=scale, offsets=np.array(offsets))
        cands = search(diff, var, times_h, sigma, exptime_h, rate_min=sc.rate_min / scale, rate_max=sc.rate_max / scale,
                       threshold=sc.threshold, grid_fraction=sc.grid_fraction, block=sc.block)
        del diff, var
        for c in cands:
            rows = []
            for e, exp in enumerate(exposures):
                xg = float(c["x"] + c["vx"] * times_h[e])
                yg = float(c["y"] + c["vy"] * times_h[e])
                x, y = xg - offsets[e][0], yg - offsets[e][1]
                ra, dec = (float(v) for v in wcss[e].all_pix2world(x, y, 0))
                rows.append((e, exp, x, y, ra, dec))
            dup = False
            for e, exp, x, y, ra, dec in rows:
                sel = have_exp == exp.index
                if sel.any():
                    d = np.hypot((have_ra[sel] - ra) * math.cos(math.radians(dec)), have_dec[sel] - dec) * 3600.0
                    dup |= bool(np.min(d) < 1.0)
            if dup:
                continue
            while f"SD{number:05d}" in used:
                number += 1
            name = f"SD{number:05d}"
            used.add(name)
            snr = float(c["nu"])
            err = max(math.sqrt(2.0) * sigma / snr, 0.35) * scale  # trajectory grid: a third of a pixel at best
            flux, flux_err = float(c["flux"]), float(c["flux_err"])
            rate = float(math.hypot(c["vx"], c["vy"])) * scale
            xi = np.array([(r[4] - rows[0][4]) * math.cos(math.radians(rows[0][5])) * 3600.0 for r in rows])
            eta = np.array([(r[5] - rows[0][5]) * 3600.0 for r in rows])
            vx, _ = np.polyfit(times_h, xi, 1)
            vy, _ = np.polyfit(times_h, eta, 1)
            pa = float(math.degrees(math.atan2(vx, vy)) % 360.0)
            mags = []
            for e, exp, x, y, ra, dec in rows:
                zp = (infos[e].get("astrometry") or {}).get("zeropoint")
                zp = float(zp) if zp is not None and np.isfinite(zp) else float(infos[e].get("zeropoint") or np.nan)
                mag = zp - 2.5 * math.log10(flux / max(refs[e].exptime, 1e-9)) if flux > 0 else np.nan
                mags.append(mag)
                new_obs.append({
                    "object": name, "exposure": exp.index, "file": str(refs[e].path), "ccd": str(ccd),
                    "obs_time": Time(float(exp.mid_time.mjd), format="mjd", scale="utc").isot,
                    "mjd": float(exp.mid_time.mjd), "exptime": float(refs[e].exptime), "ra": ra, "dec": dec,
                    "wcs": "fit" if config.astrometry.enabled else "header", "ra_err": err, "dec_err": err, "x": x, "y": y,
                    "flux": flux, "flux_err": flux_err, "mag": mag, "mag_err": 1.0857 / snr, "snr": snr,
                    "trail_length": rate * exptime_h / scale, "trail_pa": np.nan, "rate": rate, "pa": pa,
                    "resid_ra": 0.0, "resid_dec": 0.0, "kind": "stacked",
                })
            new_obj.append({
                "object": name, "n_obs": len(rows), "mjd_ref": t0_mjd, "ra": rows[0][4], "dec": rows[0][5],
                "rate": rate, "rate_err": float(np.sqrt(2.0) * err / max(np.ptp(times_h), 1e-6)), "pa": pa,
                "v_ra": float(vx), "v_dec": float(vy), "chi2_dof": float("nan"), "rms_resid": 0.0,
                "mag": float(np.nanmean(mags)) if np.isfinite(mags).any() else np.nan, "snr": snr,
                "mjd_first": t0_mjd, "mjd_last": float(exposures[-1].mid_time.mjd), "kind": "stacked",
                "designation": "", "known_offset": float("nan"),
            })
        log.info("stack: CCD %s: %d candidates", ccd, len(cands))
    timings["stack"] = time.perf_counter() - t_start
    if not new_obj:
        return observations, objects
    log.info("stack: %d new movers", len(new_obj))
    obs_add = Table(rows=[[r[c[0]] for c in OBSERVATION_COLUMNS] for r in new_obs],
                    names=[c[0] for c in OBSERVATION_COLUMNS], dtype=[c[1] for c in OBSERVATION_COLUMNS])
    obj_add = Table(rows=[[r[c[0]] for c in OBJECT_COLUMNS] for r in new_obj],
                    names=[c[0] for c in OBJECT_COLUMNS], dtype=[c[1] for c in OBJECT_COLUMNS])
    return (vstack([observations, obs_add]) if len(observations) else obs_add,
            vstack([objects, obj_add]) if len(objects) else obj_add)
