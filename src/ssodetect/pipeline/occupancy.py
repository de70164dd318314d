"""Pipeline step helper: the pixel occupancy test of linked movers (:mod:`ssodetect.link.pixels`).

For every slow (``kind = linked``) and fast (``streak``) object the flux of its own PSF/trail
template is measured at each of its positions in every exposure: in the position's own exposure,
and in the others, where the object had moved on.  A static source strung into a "mover" (a
jittering faint galaxy, pieces of a diffraction spike) is still there; those objects are removed,
as are objects absent where they should have been in an exposure without a detection.  A doubtful
slow tracklet (refused by the linker's false-alarm control by a small margin) is kept only when its
light is there, where it should have been and was not detected, and it left nothing behind.  Reads
each CCD image holding such an object once (on the run's executor).
"""
from __future__ import annotations

import logging
import math
import time
from collections import defaultdict

import numpy as np
from astropy.table import Table

from ssodetect.astrometry.solve import pixel_scale
from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.config import Config
from ssodetect.detect.extract import FWHM_TO_SIGMA
from ssodetect.detect.shape import psf_photometry
from ssodetect.link.pixels import (RESPONSE_RADII, STATIC_CHECK_FWHM, light_left_there, measure_response,
                                   missing_confirms, missing_deficit, occupancy_scores, occupancy_verdict,
                                   shows_motion, stars_by_image, trail_overlap)
from ssodetect.pipeline.ccd import cleaned_pixels, place_on_ccds
from ssodetect.io.headers import world_to_pixels
from ssodetect.streaks.field import drift_of, with_drift

log = logging.getLogger(__name__)

__all__ = ["ForcedFlux", "occupancy_vet", "release_trails", "OCCUPANCY_MARGIN", "TESTED_KINDS"]

#: Kinds of objects tested (stacked ones come later and are not); ``doubtful`` slow tracklets (refused by the linker's
#: false-alarm control by a small margin) are kept only when confirmed.
TESTED_KINDS = ("linked", "streak", "doubtful")
#: Positions closer than this to a CCD edge [px] are not measured (the template's stamp would leave the image).
OCCUPANCY_MARGIN = 6


class ForcedFlux:
    """Picklable task: template fluxes at fixed positions of one CCD image, cosmic-ray hits masked, and the point
    template's response around the image's stars.

    Called with ``(ref, psf_sigma, xs, ys, lengths, thetas, star_x, star_y, noise_scale)`` (pixels 0-based, lengths
    [px], angles [rad]; ``noise_scale`` detection's factor for correlated noise); returns ``(flux, flux_err,
    response)``: fluxes [ADU], NaN where the stamp leaves the image, and
    :func:`ssodetect.link.pixels.filter_response` at :data:`~ssodetect.link.pixels.RESPONSE_RADII` [px] from the
    stars (None with too few).
    """

    def __init__(self, config: Config, masters: dict):
        self.config = config
        self.masters = masters

    def __call__(self, job):
        ref, sigma, xs, ys, lengths, thetas, star_x, star_y, noise_scale = job
        image, variance, mask, gain = cleaned_pixels(ref, self.config, self.masters.get(ref.ccd), sigma, noise_scale)
        flux, err = psf_photometry(image, variance, mask, xs, ys, lengths, thetas, sigma, gain)
        return flux, err, measure_response(image, variance, mask, star_x, star_y, sigma, gain)


def occupancy_vet(observations: Table, objects: Table, exposures: list, ccd_info: list, wcs_for, masters: dict,
                  config: Config, executor, detections: Table | None = None) -> tuple[Table, Table, dict]:
    """Remove objects whose positions stay occupied after they left them, or that are absent where predicted.

    Parameters
    ----------
    observations, objects : Table
        The linkers' results: slow movers (``kind = linked``) and fast ones (``streak``: pieces of a diffraction
        spike or a satellite line seen in two exposures line up like a mover moving along its trail, and are
        still there in the others) are tested.
    exposures, ccd_info : list
        The run's exposures and per-CCD-exposure information (``psf_sigma`` [px], ``shape``).
    wcs_for : callable
        ``(exposure index, ccd) -> WCS`` the positions went through (None without).
    masters : dict
        CCD -> calibration masters (for :func:`ssodetect.pipeline.ccd.cleaned_pixels`).
    config : Config
        ``config.link`` holds the test's settings.
    executor
        The run's executor (``map(fn, items, progress=, desc=)``).
    detections : Table, optional
        The field's detections (``exposure, ccd, x, y, snr, kind``, flags): the isolated point sources of each image
        give the template's response beside a source (a Moffat or double-Gaussian PSF's wings reach further than the
        Gaussian template assumes: a bright mover at 0.6"/h, 1.8 px from its old position, left a score of 0.4 there
        and was removed as static); without, or with too few, the Gaussian's.

    Returns
    -------
    observations, objects : Table
        Without the static objects.
    stats : dict
        ``n_objects`` (linked and streak objects), ``n_tested``, ``n_untestable`` (kept), ``n_missing_tested``
        (objects measured where predicted in exposures without a detection), ``n_rejected_static``,
        ``n_rejected_missing``, ``n_rejected``, ``rejected`` (names), ``n_doubtful`` (``kind = doubtful``
        tracklets, not among ``n_objects``), ``n_doubtful_confirmed`` (kept, as ``linked``: their light measured
        where predicted in the exposures without a detection, :func:`ssodetect.link.pixels.missing_confirms`,
        and their positions empty after they moved on), ``n_doubtful_light_stays`` (their light where predicted is
        there when they were far from it too: :func:`ssodetect.link.pixels.light_left_there`; dropped),
        ``n_doubtful_dropped``, ``n_images`` (CCD images read),
        ``n_response_measured`` / ``n_response_gaussian`` (images whose template response was measured on their
        stars / taken from the Gaussian model), ``seconds``.
    """
    lc = config.link
    t_start = time.perf_counter()
    stats = {"n_objects": 0, "n_tested": 0, "n_untestable": 0, "n_missing_tested": 0, "n_rejected_static": 0,
             "n_rejected_missing": 0, "n_rejected": 0, "rejected": [], "n_doubtful": 0, "n_doubtful_confirmed": 0,
             "n_doubtful_light_stays": 0,
             "n_doubtful_dropped": 0, "n_images": 0, "n_response_measured": 0, "n_response_gaussian": 0,
             "seconds": 0.0}
    if not len(objects):
        return observations, objects, stats
    kinds = np.asarray(objects["kind"]).astype(str)
    doubtful = {str(n) for n, k in zip(objects["object"], kinds) if k == "doubtful"}
    stats["n_doubtful"] = len(doubtful)
    if not lc.occupancy_test:  # nothing confirms a doubtful tracklet
        stats["n_doubtful_dropped"] = len(doubtful)
        return _settle_doubtful(observations, objects, doubtful, set(), stats, t_start)
    names = [str(n) for n, k in zip(objects["object"], kinds) if k in TESTED_KINDS]
    stats["n_objects"] = len(names)
    if not names:
        return observations, objects, stats
    info_by = {(int(i["exposure"]), str(i["ccd"])): i for i in ccd_info}
    refs = {(e.index, r.ccd): r for e in exposures for r in e.ccds}
    ccds_of = {e.index: [r.ccd for r in e.ccds] for e in exposures}
    mjd_of = {e.index: float(e.mid_time.mjd) for e in exposures}
    wcs_cache: dict = {}

    def wcs(e, ccd):
        if (e, ccd) not in wcs_cache:
            wcs_cache[(e, ccd)] = wcs_for(e, ccd)
        return wcs_cache[(e, ccd)]

    def place(e, first_ccd, ra, dec):
        """(ccd, x, y) of a sky position in exposure e (its CCD first), None when off every CCD."""
        return place_on_ccds(ra, dec, ccds_of[e], lambda ccd: wcs(e, ccd),
                             lambda ccd: (info_by.get((e, ccd)) or {}).get("shape"), first_ccd, margin=OCCUPANCY_MARGIN)

    def drifted(e, ccd, plane, x, y, ex, ey):
        """The object's trail in exposure e's pixels, ``(length, theta, direction, length [arcsec])``, with the
        stars' drift there (streaks.field.star_trail) added to its motion ``ex, ey`` (a segment's end pixels); None
        where the stars are not trailed."""
        drift = drift_of((info_by.get((e, ccd)) or {}).get("star_trail"))
        if drift is None:
            return None
        tx, ty = with_drift(float(ex[1] - ex[0]), float(ey[1] - ey[0]), drift)
        ra, dec = wcs(e, ccd).all_pix2world(np.array([x - 0.5 * tx, x + 0.5 * tx]), np.array([y - 0.5 * ty, y + 0.5 * ty]), 0)
        pxi, peta = plane.to_plane(ra, dec)
        sky = np.array([pxi[1] - pxi[0], peta[1] - peta[0]])
        return math.hypot(tx, ty), math.atan2(ty, tx), sky, float(np.hypot(*sky))

    obs_names = np.asarray(observations["object"]).astype(str)
    exposure_list = sorted(mjd_of)
    jobs: dict = defaultdict(list)  # (exposure, ccd) -> [(object k, member i, column j, x, y, length, theta)]
    # (object k, member i, column j, image, offset [arcsec], direction, reach [arcsec], sigma [arcsec]): overlaps
    # computed once the images' responses are measured
    overlaps = []
    plans = []
    for k, name in enumerate(names):
        rows = observations[obs_names == name]
        rows = rows[np.argsort(np.asarray(rows["mjd"], float))]
        plane = TangentPlane(float(rows["ra"][0]), float(rows["dec"][0]))
        xi, eta = plane.to_plane(np.asarray(rows["ra"], float), np.asarray(rows["dec"], float))
        t = (np.asarray(rows["mjd"], float) - float(rows["mjd"][0])) * 24.0
        if len(rows) < 2 or np.ptp(t) <= 0:
            plans.append(None)
            continue
        vx, x0 = np.polyfit(t, xi, 1)
        vy, y0 = np.polyfit(t, eta, 1)
        direction = np.array([vx, vy])
        exp_h = float(np.median(np.asarray(rows["exptime"], float))) / 3600.0
        length = float(math.hypot(vx, vy)) * exp_h  # [arcsec]
        ccd0, e0 = str(rows["ccd"][0]), int(rows["exposure"][0])
        info0 = info_by.get((e0, ccd0), {})
        w0 = wcs(e0, ccd0)
        sigma = float(info0.get("psf_sigma") or 1.0) * (pixel_scale(w0) if w0 is not None else 0.1)
        predicted = {e: (x0 + vx * (mjd_of[e] - float(rows["mjd"][0])) * 24.0,
                         y0 + vy * (mjd_of[e] - float(rows["mjd"][0])) * 24.0) for e in exposure_list}
        m, n_exp = len(rows), len(exposure_list)
        overlap = np.full((m, n_exp), np.nan)
        own_col = np.full(m, -1)
        own_shape: dict = {}  # member -> its template (length [px], angle [rad]) in its own exposure
        # the template's half-length along the motion [arcsec], for its length and angle in each exposure's pixels
        ux, uy = direction / max(float(np.hypot(*direction)), 1e-12) * 0.5 * length
        for i in range(m):
            ei = int(rows["exposure"][i])
            ends = plane.to_sky(np.array([xi[i] - ux, xi[i] + ux]), np.array([eta[i] - uy, eta[i] + uy]))
            for j, e in enumerate(exposure_list):
                spot = place(e, str(rows["ccd"][i]), float(rows["ra"][i]), float(rows["dec"][i]))
                if spot is None:
                    continue
                ccd, x, y = spot
                ex, ey = world_to_pixels(wcs(e, ccd), ends[0], ends[1])
                seg_len = float(math.hypot(ex[1] - ex[0], ey[1] - ey[0]))
                theta = float(math.atan2(ey[1] - ey[0], ex[1] - ex[0]))
                # where the stars are trailed the object is too: its template is its motion plus the drift
                drift = drifted(e, ccd, plane, x, y, ex, ey)
                if drift is not None:
                    seg_len, theta = drift[0], drift[1]
                jobs[(e, ccd)].append((k, i, j, x, y, seg_len, theta))
                if e == ei:
                    own_col[i] = j
                    own_shape[i] = (seg_len, theta)
                else:
                    px, py = predicted[e]
                    way, reach = (direction, length) if drift is None else (drift[2], drift[3])
                    # a drifted (trailed) image's stars measure no point-source response: the Gaussian's there
                    overlaps.append((k, i, j, (e, ccd) if drift is None else None, (px - xi[i], py - eta[i]), way,
                                     reach, sigma))
        # where the object should be in the exposures without a detection of it
        seen = set(int(v) for v in rows["exposure"])
        missing = [j for j, e in enumerate(exposure_list) if e not in seen]
        far = STATIC_CHECK_FWHM * sigma / FWHM_TO_SIGMA + 0.5 * length  # [arcsec]
        for j, e in enumerate(exposure_list):
            if e in seen:
                continue
            if name in doubtful:  # the same sky spot in the exposures where the object was far from it: what stays
                q = m + 1 + missing.index(j)
                spot_ra, spot_dec = plane.to_sky(np.array([predicted[e][0]]), np.array([predicted[e][1]]))
                for i in range(m):
                    ei = int(rows["exposure"][i])
                    if math.hypot(predicted[e][0] - xi[i], predicted[e][1] - eta[i]) < far:
                        continue
                    spot = place(ei, str(rows["ccd"][i]), float(spot_ra[0]), float(spot_dec[0]))
                    if spot is not None and i in own_shape:  # (measured with the object's template there)
                        jobs[(ei, spot[0])].append((k, q, exposure_list.index(ei), spot[1], spot[2], *own_shape[i]))
            px, py = predicted[e]
            pra, pdec = plane.to_sky(np.array([px - ux, px, px + ux]), np.array([py - uy, py, py + uy]))
            nearest = int(np.argmin(np.abs(np.asarray(rows["mjd"], float) - mjd_of[e])))
            spot = place(e, str(rows["ccd"][nearest]), float(pra[1]), float(pdec[1]))
            if spot is None:
                continue
            ccd, x, y = spot
            ex, ey = world_to_pixels(wcs(e, ccd), pra[[0, 2]], pdec[[0, 2]])
            drift = drifted(e, ccd, plane, x, y, ex, ey)
            jobs[(e, ccd)].append((k, m, j, x, y, *((float(math.hypot(ex[1] - ex[0], ey[1] - ey[0])),
                                                     float(math.atan2(ey[1] - ey[0], ex[1] - ex[0])))
                                                    if drift is None else drift[:2])))
        # rows 0..m-1: the members' positions; row m: the predicted positions; row m + 1 + q (doubtful tracklets): the
        # predicted position of the q-th exposure without a detection, in the exposures where the object was far
        plans.append({"m": m, "overlap": overlap, "own_col": own_col, "blend": np.asarray(rows["kind"]) == "blend",
                      "missing": missing,
                      "flux": np.full((m + 1 + len(missing), n_exp), np.nan),
                      "err": np.full((m + 1 + len(missing), n_exp), np.nan)})
    keys = sorted(jobs, key=lambda key: (key[0], str(key[1])))
    stars = stars_by_image(detections)
    no_stars = (np.zeros(0), np.zeros(0))
    tasks = []
    for key in keys:
        entries = jobs[key]
        info = info_by.get(key, {})
        tasks.append((refs[key], float(info.get("psf_sigma") or 1.0), np.array([v[3] for v in entries]),
                      np.array([v[4] for v in entries]), np.array([v[5] for v in entries]),
                      np.array([v[6] for v in entries]), *stars.get(key, no_stars),
                      float(info.get("correlated_noise_scale") or 1.0)))
    results = executor.map(ForcedFlux(config, masters), tasks, progress=config.execution.progress, desc="occupancy")
    stats["n_images"] = len(tasks)
    responses = {}
    for key, (flux, err, response) in zip(keys, results):
        for (k, i, j, *_), f, s in zip(jobs[key], flux, err):
            plans[k]["flux"][i, j], plans[k]["err"][i, j] = f, s
        w = wcs(*key)
        if response is not None and w is not None:
            responses[key] = (RESPONSE_RADII * pixel_scale(w), response)
            log.debug("occupancy: exposure %d CCD %s: the template's response at %s px: %s", key[0], key[1],
                      RESPONSE_RADII.tolist(), np.round(response, 3).tolist())
    stats["n_response_measured"] = len(responses)
    stats["n_response_gaussian"] = len(keys) - len(responses)
    for k, i, j, key, offset, way, reach, sigma in overlaps:
        plans[k]["overlap"][i, j] = float(trail_overlap(np.array([offset]), way, reach, sigma,
                                                        response=responses.get(key))[0])
    rejected = []
    confirmed = set()
    for name, plan in zip(names, plans):
        if plan is None:
            if name not in doubtful:
                stats["n_untestable"] += 1
            continue
        m = plan["m"]
        rows_i = np.arange(m)
        own = plan["own_col"]
        has_own = own >= 0
        flux, err = plan["flux"][:m].copy(), plan["err"][:m].copy()
        # a position measured beside a brighter source (kind blend) holds that source in every exposure: not tested
        flux[plan["blend"]] = np.nan
        err[plan["blend"]] = np.nan
        own_flux = np.where(has_own, flux[rows_i, np.maximum(own, 0)], np.nan)
        own_err = np.where(has_own, err[rows_i, np.maximum(own, 0)], np.nan)
        other_flux = flux.copy()
        other_flux[rows_i[has_own], own[has_own]] = np.nan  # the own exposure is not an "other"
        score, score_err = occupancy_scores(own_flux, own_err, other_flux, err, plan["overlap"],
                                            max_overlap=lc.occupancy_max_overlap, flux_scatter=lc.flux_scatter)
        verdict, median, median_err = occupancy_verdict(score, score_err, threshold=lc.occupancy_threshold,
                                                        nsigma=lc.occupancy_nsigma, max_err=lc.occupancy_max_error)
        deficit = missing_deficit(own_flux, own_err, plan["flux"][m], plan["err"][m], scatter=lc.flux_scatter)
        log.debug("occupancy: %s median score %.2f +- %.2f (%s), missing-exposure deficit %.2f sigma", name, median,
                  median_err, verdict, deficit)
        if name in doubtful:
            # its light where it was not detected, and nothing left behind where it was: a mover, not a chance
            # alignment of unrelated candidates (those are absent at the prediction, or still there); "nothing left
            # behind" shown, not merely not refuted
            moved = verdict == "moving" and shows_motion(median, median_err, threshold=lc.occupancy_threshold)
            if moved and missing_confirms(own_flux, own_err, plan["flux"][m], plan["err"][m], scatter=lc.flux_scatter,
                                          min_snr=lc.confirm_min_snr, max_deviation=lc.missing_max_deficit):
                # ... and that light is not there when the object is far from the spot (a source that stays)
                stays = any(light_left_there(plan["flux"][m, [j]], plan["err"][m, [j]], plan["flux"][m + 1 + q],
                                             plan["err"][m + 1 + q]) for q, j in enumerate(plan["missing"]))
                if stays:
                    stats["n_doubtful_light_stays"] += 1
                else:
                    confirmed.add(name)
            continue
        if np.isfinite(deficit):
            stats["n_missing_tested"] += 1
        if verdict == "untestable" and not np.isfinite(deficit):
            stats["n_untestable"] += 1
            continue
        stats["n_tested"] += 1
        if verdict == "static":
            rejected.append(name)
            stats["n_rejected_static"] += 1
        elif np.isfinite(deficit) and deficit > lc.missing_max_deficit:
            rejected.append(name)
            stats["n_rejected_missing"] += 1
    stats["n_rejected"] = len(rejected)
    stats["rejected"] = rejected
    if rejected:
        gone = set(rejected)
        observations = observations[~np.isin(obs_names, list(gone))]
        objects = objects[~np.isin(np.asarray(objects["object"]).astype(str), list(gone))]
    stats["n_objects"] -= len(doubtful)
    stats["n_doubtful_confirmed"] = len(confirmed)
    stats["n_doubtful_dropped"] = len(doubtful) - len(confirmed)
    log.info("occupancy: the template's response measured on the stars of %d images, the Gaussian model's in %d",
             stats["n_response_measured"], stats["n_response_gaussian"])
    log.info("occupancy: %d objects, %d tested in %d images, %d untestable (kept); %d removed as static sources, "
             "%d as absent where predicted in an exposure without a detection; %d of %d doubtful tracklets confirmed "
             "(their light where predicted, nothing left behind), the others dropped", stats["n_objects"],
             stats["n_tested"], stats["n_images"], stats["n_untestable"], stats["n_rejected_static"],
             stats["n_rejected_missing"], len(confirmed), len(doubtful))
    return _settle_doubtful(observations, objects, doubtful, confirmed, stats, t_start)


def _settle_doubtful(observations: Table, objects: Table, doubtful: set, confirmed: set, stats: dict,
                     t_start: float) -> tuple[Table, Table, dict]:
    """The doubtful tracklets confirmed become ``linked`` objects; the others are removed."""
    if doubtful:
        obs_names = np.asarray(observations["object"]).astype(str)
        obj_names = np.asarray(objects["object"]).astype(str)
        dropped = list(doubtful - confirmed)
        observations = observations[~np.isin(obs_names, dropped)]
        objects = objects[~np.isin(obj_names, dropped)]
        if confirmed:
            observations["kind"][np.isin(np.asarray(observations["object"]).astype(str), list(confirmed))] = "linked"
            objects["kind"][np.isin(np.asarray(objects["object"]).astype(str), list(confirmed))] = "linked"
    stats["seconds"] = time.perf_counter() - t_start
    return observations, objects, stats


def release_trails(streaks: Table, removed: list) -> Table:
    """``streaks`` with the trails of removed objects marked ``static`` (object name cleared): every trail stays
    accounted for."""
    if not len(streaks) or not removed:
        return streaks
    out = streaks.copy()
    gone = np.isin(np.asarray(out["object"]).astype(str), list(removed)) & (np.asarray(out["status"]) == "linked")
    out["status"][gone] = "static"
    out["object"][gone] = ""
    return out
