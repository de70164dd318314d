"""Pipeline step helper: slow movers merged with brighter sources, measured in the pixels (:mod:`ssodetect.link.blends`).

Pairs of clean unlinked detections are predicted into the other exposures; where a brighter
detection sits on the prediction, the mover is fitted beside a template of the static sky made
from the exposures in which it was elsewhere, or, where it was nowhere else (a slow mover on a star in every
exposure), fitted with the static sky over all of them.  A pair with enough accepted measurements becomes
an object (``kind = linked``; the measured rows have ``kind = blend``).  A single trail seen whole
(a fast mover whose trails in the other exposures a diffraction spike, a bleed or a star cut into
pieces the streak linker cannot join) is predicted both ways along its axis; a direction whose
predictions show the trail's light (:func:`ssodetect.link.blends.find_trail`, within the prediction's reach) in
enough exposures is measured there the same way.  Every pair, trail, target and refusal is counted in
``provenance.json`` (``link`` -> ``blends``).
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter, OrderedDict

import numpy as np
from astropy.table import Table, vstack

from ssodetect.astrometry.solve import pixel_scale
from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.config import Config
from ssodetect.link.blends import (MAX_TARGETS_PER_MPX, MAX_TRAIL_SEARCH, PRESCREEN_FRACTION, accept_recovery,
                                   best_snr_beside_template, choose_tracklets, find_trail, fit_beside_template,
                                   fit_with_static_sky, merge_reach, propose_pairs, propose_trails, resample_stamp,
                                   whole_trails, within_budget)
from ssodetect.link.movers import with_trail_tolerance
from ssodetect.link.tracklets import detection_key
from ssodetect.pipeline.ccd import cleaned_pixels, place_on_ccds
from ssodetect.report.tables import tracklet_tables
from ssodetect.io.headers import world_to_pixels
from ssodetect.streaks.field import drift_of, with_drift

log = logging.getLogger(__name__)

__all__ = ["recover_blends", "claim_trails", "STAMP_HALF", "MAX_TEMPLATES", "EDGE_MARGIN"]
#: Half size [px] of the fitted stamp beyond half the trail's length.
STAMP_HALF = 7
#: Longest prediction [px] measured whatever ``streaks.max_length`` says (a stamp's memory grows as its square:
#: EXPTIME = 1e6 with max_length = 1e12 had taken gigabytes).
MAX_LENGTH = 2000.0
#: A mover is measured only where its predicted centre lies at least this far [px] inside the image (its stamp may
#: reach beyond the edge: those pixels are left out of the fit).
EDGE_MARGIN = 3.0
#: Share of a template exposure's pixels within 3 PSF sigmas (and half the length) of the mover's predicted position
#: that must be usable (not masked, not the mover's own image there) for the exposure to serve as a template.
MIN_TEMPLATE_CORE = 0.8
#: Exposures averaged into a template at most (those nearest in time: the static sky least changed).
MAX_TEMPLATES = 4


def _zeropoint(info: dict) -> float:
    zp = (info.get("astrometry") or {}).get("zeropoint")
    zp = zp if zp is not None and np.isfinite(zp) else info.get("zeropoint")
    return float(zp) if zp is not None and np.isfinite(zp) else float("nan")


def recover_blends(detections: Table, candidates: Table, observations: Table, objects: Table, exposures: list,
                   ccd_info: list, wcs_for, masters: dict, config: Config) -> tuple[Table, Table, dict]:
    """Add the slow movers found by measuring pairs' predictions in blends.

    Parameters
    ----------
    detections : Table
        Every detection of the run on the sky (the possible blends).
    candidates : Table
        The link step's moving candidates (not static, not artefacts).
    observations, objects : Table
        The linkers' results (their detections are not paired again).
    exposures, ccd_info : list
        The run's exposures and per-CCD-exposure information (``psf_sigma`` [px], ``shape``, zero points).
    wcs_for : callable
        ``(exposure index, ccd) -> WCS`` the positions went through (None without).
    masters : dict
        CCD -> calibration masters.
    config : Config

    Returns
    -------
    observations, objects : Table
        With the recovered objects appended.
    stats : dict
        The proposal counts of :func:`ssodetect.link.blends.propose_pairs`, ``n_measured`` (of which
        ``n_prescreened`` refused as faint by their best signal-to-noise ratio within the reach, below
        :data:`~ssodetect.link.blends.PRESCREEN_FRACTION` of ``[link] blend_min_snr``, without the full fit:
        :func:`ssodetect.link.blends.best_snr_beside_template`; and ``n_joint``
        fitted with the static sky over the exposures where the mover covers its own place, none other being free
        of it: :func:`ssodetect.link.blends.fit_with_static_sky`; ``n_joint_accepted`` of them kept;
        ``n_joint_exposures_left``: exposures beyond the :data:`MAX_TEMPLATES` a joint fit takes, left out), ``refused``
        (reason -> count), ``n_no_template``, ``n_off_image``, ``n_too_long`` (longer than
        ``streaks.max_length`` or :data:`MAX_LENGTH`: every target is one of measured, no template, off the image,
        too long),
        ``n_accepted`` (measurements), ``n_too_few`` (pairs with accepted measurements, too few for a tracklet),
        ``n_too_faint`` (enough, but below ``[link] min_total_snr`` together), ``n_rejected_fit`` (pairs whose
        measurements do not line up), ``n_conflicts`` (sharing a detection with a better one), ``n_objects`` (of
        which ``n_objects_from_trails`` from a single whole trail), ``n_images``, ``seconds``, and ``trails``: the
        whole single trails proposed (``n_pool``, of which ``n_unfitted`` with assumed length and axis errors,
        ``n_proposals``: two directions each, ``n_targets``; ``n_search_capped``: predictions whose reach was wider
        than the light was searched for, :data:`~ssodetect.link.blends.MAX_TRAIL_SEARCH`; ``n_not_predicted``:
        predictions beyond the exposures nearest in time, not made in a long sequence), the directions not
        measured because too few of their predictions showed the trail's light (``n_unsupported``) and their
        targets (``n_not_measured``); ``n_over_budget`` proposals (``n_targets_over_budget`` targets) of the pairs
        and trails with the lowest signal-to-noise ratios not placed nor measured, their CCD's targets beyond
        :data:`~ssodetect.link.blends.MAX_TARGETS_PER_MPX` of its exposures' pixels (warned).  Every target of a pair
        or of a trail is measured, without a template, off the image, too long, over the budget or not measured.
        (The pipeline step adds ``n_trails_claimed``: single trails of the
        streak linker that became members of the objects found here, marked linked in ``streaks.ecsv``.)
    """
    lk = config.link
    t_start = time.perf_counter()
    stats: dict = {"n_pool": 0, "n_pairs": 0, "n_proposals": 0, "n_targets": 0, "n_measured": 0,
                   "n_prescreened": 0, "n_over_budget": 0, "n_targets_over_budget": 0, "n_joint": 0,
                   "n_joint_accepted": 0, "n_joint_exposures_left": 0, "refused": {},
                   "n_no_template": 0, "n_off_image": 0, "n_too_long": 0, "n_accepted": 0, "n_too_few": 0,
                   "n_too_faint": 0,
                   "n_rejected_fit": 0, "n_conflicts": 0,
                   "n_objects": 0, "n_objects_from_trails": 0, "n_images": 0, "seconds": 0.0,
                   "trails": {"n_pool": 0, "n_unfitted": 0, "n_proposals": 0, "n_targets": 0, "n_search_capped": 0,
                              "n_unsupported": 0, "n_not_measured": 0, "n_not_predicted": 0}}
    if not len(candidates) or not len(detections) or len(exposures) < 3:
        return observations, objects, stats
    ra0, dec0 = float(np.median(candidates["ra"])), float(np.median(candidates["dec"]))
    plane = TangentPlane(ra0, dec0)
    t0_mjd = float(min(float(e.mid_time.mjd) for e in exposures))
    t_exposures = {e.index: (float(e.mid_time.mjd) - t0_mjd) * 24.0 for e in exposures}
    cxi, ceta = plane.to_plane(np.asarray(candidates["ra"], float), np.asarray(candidates["dec"], float))
    ct = (np.asarray(candidates["mjd"], float) - t0_mjd) * 24.0
    used = {detection_key(observations, k) for k in range(len(observations))}
    is_used = np.array([detection_key(candidates, k) in used for k in range(len(candidates))], bool)
    kind = np.asarray(candidates["kind"]).astype(str)
    reach = 1.5 * lk.max_rate * np.asarray(candidates["exptime"], float) / 3600.0 + 0.5
    short = (kind == "point") | ((kind == "trail") & (np.nan_to_num(np.asarray(candidates["trail_arcsec"], float)) <= reach))
    edge = np.asarray(candidates["edge_weak"], bool) if "edge_weak" in candidates.colnames else np.zeros(len(kind), bool)
    pool = ~is_used & short & ~edge & (np.asarray(candidates["snr"], float) >= lk.blend_min_snr)
    bkind = np.asarray(detections["kind"]).astype(str)
    bsel = np.isin(bkind, ("point", "trail", "extended")) & np.isfinite(np.asarray(detections["ra"], float))
    blends = detections[bsel]
    bxi, beta = plane.to_plane(np.asarray(blends["ra"], float), np.asarray(blends["dec"], float))
    bsize = merge_reach(blends["npix"], blends["a"], blends["pixel_scale"])
    proposals, pstats = propose_pairs(
        np.asarray(candidates["exposure"]), np.asarray(candidates["ccd"]).astype(str), ct, cxi, ceta,
        np.asarray(candidates["sigma"], float), np.asarray(candidates["flux"], float),
        np.asarray(candidates["flux_err"], float), pool,
        np.asarray(blends["exposure"]), np.asarray(blends["ccd"]).astype(str), bxi, beta,
        np.asarray(blends["flux"], float), np.asarray(blends["flux_err"], float), bsize, t_exposures,
        min_rate=lk.min_rate, max_rate=lk.max_rate, min_rate_significance=lk.min_rate_significance,
        flux_scatter=lk.flux_scatter, match_sigma=lk.match_sigma, match_floor=lk.match_floor,
        min_targets=max(1, lk.min_detections - 2))
    stats.update(pstats)
    # single whole trails (fast movers) measured where the others' pieces were cut by a spike, a bleed or a star
    # (trails are the streak stage's: with [streaks] enabled = false none is proposed, as none is linked)
    allowed = ~is_used & ~edge & config.streaks.enabled
    trail_pool, rate, rate_err, pa, pa_err, unfitted = whole_trails(candidates, allowed,
                                                                    min_length=config.streaks.min_length,
                                                                    min_snr=lk.blend_min_snr)
    # a whole trail needs `need` exposures besides its own to show it: predicted into the nearest in time, twice
    # as many and two more (all of a Euclid field's four)
    trail_props, tstats = propose_trails(np.asarray(candidates["exposure"]), ct, cxi, ceta,
                                         np.asarray(candidates["sigma"], float), rate, rate_err, pa, pa_err,
                                         np.asarray(candidates["flux"], float),
                                         np.asarray(candidates["flux_err"], float), trail_pool, t_exposures,
                                         nearest=2 * max(1, lk.min_detections - 1) + 2)
    if tstats["n_not_predicted"]:
        log.info("blends: whole single trails predicted into the %d exposures nearest in time only (%d predictions "
                 "farther away not made)", 2 * max(1, lk.min_detections - 1) + 2, tstats["n_not_predicted"])
    stats["trails"].update(tstats, n_unfitted=int(unfitted.sum()))
    proposals = proposals + trail_props
    if not proposals:
        stats["seconds"] = time.perf_counter() - t_start
        return observations, objects, stats
    info_by = {(int(i["exposure"]), str(i["ccd"])): i for i in ccd_info}
    refs = {(e.index, r.ccd): r for e in exposures for r in e.ccds}
    ccds_of = {e.index: [r.ccd for r in e.ccds] for e in exposures}
    refused: Counter = Counter()
    need = max(1, lk.min_detections - 1)  # exposures besides a whole trail's own that must show it
    # CCD images read on demand, the most recently used kept (a fast mover's predictions and their templates may
    # lie on other CCDs than its trail); proposals are taken CCD by CCD, so most reads are of the CCD at hand
    images: OrderedDict = OrderedDict()
    keep_images = len(exposures) + 2

    def pixels(e, ccd):
        if (e, ccd) not in images:
            info = info_by.get((e, ccd), {})
            images[(e, ccd)] = cleaned_pixels(refs[(e, ccd)], config, masters.get(ccd),
                                              float(info.get("psf_sigma") or 1.0),
                                              float(info.get("correlated_noise_scale") or 1.0))
            stats["n_images"] += 1
            while len(images) > keep_images:
                images.popitem(last=False)
        images.move_to_end((e, ccd))
        return images[(e, ccd)]

    def locate(prop, e, pxi, peta, first):
        """(ccd, placement) of a target in exposure e (the proposal's CCD first), None when on none."""
        for ccd in [first] + [c for c in ccds_of.get(e, []) if c != first]:
            placed = _place(prop, e, pxi, peta, ccd, plane, info_by, refs, wcs_for)
            if placed is not None:
                return ccd, placed
        return None

    def holding(t, ra, dec, first):
        """The CCD of exposure t whose image holds the sky position (ra, dec) (``first`` tried first)."""
        spot = place_on_ccds(ra, dec, ccds_of.get(t, []), lambda ccd: wcs_for(t, ccd),
                             lambda ccd: (info_by.get((t, ccd)) or {}).get("shape"), first)
        return spot[0] if spot is not None else None

    # proposals CCD by CCD (their order fixes the results'); the pixel work is then done in the order of the CCD and
    # exposure it reads, so that the images kept serve it (a fast mover's targets may lie on other CCDs)
    by_ccd: dict = {}
    for prop in proposals:
        by_ccd.setdefault(str(candidates["ccd"][prop.pair[0]]), []).append(prop)
    ordered = [(ccd, prop) for ccd, props in sorted(by_ccd.items()) for prop in props]
    # a budget of measurements per CCD (MAX_TARGETS_PER_MPX of its exposures' pixels), before any is placed: a field
    # whose noise or whose wrong PSF makes thousands of "movers" asks for hundreds of times a Euclid CCD's; the
    # proposals of the pairs and trails with the lowest signal-to-noise ratios beyond it are not measured (counted,
    # warned)
    area: dict = {}
    for (e, ccd), info in info_by.items():
        if info.get("shape"):
            area[ccd] = area.get(ccd, 0.0) + float(np.prod(info["shape"])) / 1e6
    kept = within_budget([prop.flux / prop.flux_err if prop.flux_err > 0 else np.nan for _, prop in ordered],
                         [len(prop.targets) for _, prop in ordered],
                         np.array([ccd for ccd, _ in ordered], dtype=object),
                         {ccd: MAX_TARGETS_PER_MPX * a for ccd, a in area.items()})
    stats["n_over_budget"] = int((~kept).sum())
    stats["n_targets_over_budget"] = int(sum(len(ordered[k][1].targets) for k in np.nonzero(~kept)[0]))
    if stats["n_over_budget"]:
        log.warning("blends: %d proposals (%d targets) of the faintest pairs and trails not measured: beyond the "
                    "budget of %g measurements per Mpx of a CCD's exposures (a Euclid-like CCD asks for up to ~50; "
                    "noise taken for sources, correlated noise or a wrong PSF?)", stats["n_over_budget"],
                    stats["n_targets_over_budget"], MAX_TARGETS_PER_MPX)
    placed = [[locate(prop, e, pxi, peta, ccd) if kept[k] else None for e, pxi, peta, _ in prop.targets]
              for k, (ccd, prop) in enumerate(ordered)]
    # a prediction longer than a trail can be (streaks.max_length: a satellite's) is not measured, its stamp would
    # grow with the length (counted)
    too_long = set()
    longest = min(config.streaks.max_length, MAX_LENGTH)
    for k, row in enumerate(placed):
        for j, where in enumerate(row):
            if where is not None and where[1][3] > longest:
                row[j] = None
                too_long.add((k, j))
    # proposals whose targets all lie on one CCD are judged and measured in that CCD's turn; those reaching over
    # several CCDs last
    turns: dict = {}
    for k, (ccd, _) in enumerate(ordered):
        if not kept[k]:
            continue
        touched = sorted({where[0] for where in placed[k] if where is not None}) or [ccd]
        turns.setdefault((len(touched) > 1, touched[0] if len(touched) == 1 else ""), []).append(k)
    rows_of: dict = {}
    found: dict = {}  # (proposal, target) -> where a whole trail's prediction showed its light [px]
    for turn in sorted(turns):
        members = turns[turn]
        shown: Counter = Counter()
        for _, _, k, j in sorted((placed[k][j][0], ordered[k][1].targets[j][0], k, j) for k in members
                                 if len(ordered[k][1].pair) == 1 for j in range(len(placed[k]))
                                 if placed[k][j] is not None):
            spot, capped = _shows(ordered[k][1], j, placed[k][j], candidates, info_by, refs, pixels, config)
            stats["trails"]["n_search_capped"] += capped
            if spot is not None:
                shown[k] += 1
                found[(k, j)] = spot
        work = []
        for k in members:
            prop = ordered[k][1]
            if len(prop.pair) == 1 and shown[k] < need:
                # a whole trail's direction whose predictions show too little light: not measured
                stats["trails"]["n_unsupported"] += 1
                stats["trails"]["n_not_measured"] += len(prop.targets)
                continue
            for j, where in enumerate(placed[k]):
                if (k, j) in too_long:
                    stats["n_too_long"] += 1
                elif where is None:
                    stats["n_off_image"] += 1
                else:
                    work.append((where[0], prop.targets[j][0], k, j))
        for _, _, k, j in sorted(work):
            prop = ordered[k][1]
            e, pxi, peta, s_pred = prop.targets[j]
            row = _measure(prop, e, pxi, peta, s_pred, placed[k][j], candidates, plane, t_exposures, t0_mjd,
                           info_by, refs, wcs_for, pixels, holding, config, stats, refused, found.get((k, j)))
            if row is not None:
                rows_of.setdefault(k, []).append((j, row))
    results = [(prop, [row for _, row in sorted(rows_of.get(k, []), key=lambda item: item[0])])
               for k, (_, prop) in enumerate(ordered)]
    images.clear()
    stats["refused"] = dict(refused)
    new_obs, new_obj = _objects(results, candidates, cxi, ceta, ct, plane, t0_mjd, objects, config, stats)
    if new_obj is not None:
        observations = vstack([observations, new_obs]) if len(observations) else new_obs
        objects = vstack([objects, new_obj]) if len(objects) else new_obj
    if stats["n_joint_exposures_left"]:
        log.info("blends: %d exposures left out of joint fits (each takes the %d where its mover lies farthest from "
                 "its place)", stats["n_joint_exposures_left"], MAX_TEMPLATES)
    stats["seconds"] = time.perf_counter() - t_start
    return observations, objects, stats


def _place(prop, e, pxi, peta, ccd, plane, info_by, refs, wcs_for):
    """``(wcs, x, y, length, theta, motion)`` of a proposal's mover in exposure ``e`` of ``ccd`` [px, 0-based; rad;
    px], None where there is no WCS or its centre lies within :data:`EDGE_MARGIN` px of the image's edge or beyond.
    ``length, theta`` are the trail seen: on an exposure whose stars trail (``star_trail``), the motion plus the drift
    (:func:`ssodetect.streaks.field.with_drift`); ``motion`` is the length of the motion alone (an observation's
    ``trail_length``)."""
    w = wcs_for(e, ccd)
    info = info_by.get((e, ccd), {})
    if w is None or not info.get("shape") or (e, ccd) not in refs:
        return None
    exp_h = float(refs[(e, ccd)].exptime or 0.0) / 3600.0
    ends_xi = pxi + prop.vx * exp_h * np.array([-0.5, 0.0, 0.5])
    ends_eta = peta + prop.vy * exp_h * np.array([-0.5, 0.0, 0.5])
    ra, dec = plane.to_sky(ends_xi, ends_eta)
    px, py = (np.asarray(v, float) for v in world_to_pixels(w, ra, dec))
    if not (np.all(np.isfinite(px)) and np.all(np.isfinite(py))):
        return None
    x, y = float(px[1]), float(py[1])
    dx, dy = float(px[2] - px[0]), float(py[2] - py[0])
    motion = float(math.hypot(dx, dy))
    drift = drift_of(info.get("star_trail"))
    if drift is not None:  # where the stars trail, the mover draws its motion plus the drift
        dx, dy = with_drift(dx, dy, drift)
    length, theta = float(math.hypot(dx, dy)), float(math.atan2(dy, dx))
    ny, nx = info["shape"]
    # the stamp may reach beyond the image (those pixels are left out of the fit), the mover's centre may not
    if not (EDGE_MARGIN <= x <= nx - 1 - EDGE_MARGIN and EDGE_MARGIN <= y <= ny - 1 - EDGE_MARGIN):
        return None
    return w, x, y, length, theta, motion


def _stamp(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, ix: int, iy: int, half: int):
    """The ``(2 half + 1)^2`` stamp centred on pixel ``(ix, iy)`` and its variance, NaN where masked or off the image."""
    n = 2 * half + 1
    data = np.full((n, n), np.nan)
    var = np.full((n, n), np.nan)
    ny, nx = image.shape
    y0, y1 = max(iy - half, 0), min(iy + half + 1, ny)
    x0, x1 = max(ix - half, 0), min(ix + half + 1, nx)
    if y1 > y0 and x1 > x0:
        inner = (slice(y0 - (iy - half), y1 - (iy - half)), slice(x0 - (ix - half), x1 - (ix - half)))
        part = (slice(y0, y1), slice(x0, x1))
        data[inner] = np.where(mask[part], np.nan, image[part])
        var[inner] = variance[part]
    return data, var


def _reach(lk, s_pred: float, scale: float) -> float:
    """How far [px] a measured position may lie from its prediction of error ``s_pred`` [arcsec] (pixels of
    ``scale`` arcsec)."""
    return lk.match_sigma * s_pred / scale + lk.match_floor / scale + 1.0


def _shows(prop, j, where, candidates, info_by, refs, pixels, config) -> tuple[tuple[float, float] | None, bool]:
    """Where a whole trail's prediction ``j`` (at ``where``: ``(ccd, placement)``) shows its light, searched within
    the reach of the measurement (:func:`ssodetect.link.blends.find_trail`) [px, 0-based], None if nowhere; and
    whether that reach was beyond :data:`~ssodetect.link.blends.MAX_TRAIL_SEARCH` (searched that far only)."""
    own = candidates[prop.pair[0]]
    own_exptime = float(own["exptime"])
    e = prop.targets[j][0]
    ccd, (w, x, y, length, theta, motion) = where
    image, _, mask, _ = pixels(e, ccd)
    # the light the trail would have there: the same rate, over that exposure's time
    flux = float(own["flux"]) * float(refs[(e, ccd)].exptime or own_exptime) / max(own_exptime, 1e-9)
    reach = _reach(config.link, prop.targets[j][3], pixel_scale(w))
    return (find_trail(image, mask, x, y, length, theta, float(info_by[(e, ccd)].get("psf_sigma") or 1.0), flux,
                       search=reach), not reach <= MAX_TRAIL_SEARCH)


def _measure(prop, e, pxi, peta, s_pred, where, candidates, plane, t_exposures, t0_mjd, info_by, refs, wcs_for, pixels,
             holding, config, stats, refused, start=None):
    """The measurement row of a proposal's mover in exposure ``e`` at ``where`` (``(ccd, placement)`` of
    :func:`_place`); None when refused (counted).  The template exposures' pixels come from the CCD of each that
    holds the stamp (``holding(t, ra, dec, ccd)``).  The fit starts at ``start`` [px] when given (where the trail's
    light was found), else at the prediction; either way it stays within the prediction's reach."""
    lk = config.link
    ccd, (w, x, y, length, theta, motion) = where
    info = info_by[(e, ccd)]
    scale = pixel_scale(w)
    half = STAMP_HALF + int(math.ceil(0.5 * length))
    ix, iy = int(round(x)), int(round(y))
    psf_sigma = float(info.get("psf_sigma") or 1.0)
    # template exposures: those where the mover's own image (masked there, within `hide` px) leaves the fitted
    # PSF's core free
    hide = 3.0 * psf_sigma + 0.5 * length + 1.0
    grid_y, grid_x = np.mgrid[iy - half:iy + half + 1, ix - half:ix + half + 1]
    core = np.hypot(grid_x - x, grid_y - y) <= 3.0 * psf_sigma + 0.5 * length
    sky = w.all_pix2world(grid_x.ravel().astype(float), grid_y.ravel().astype(float), 0)
    stamp_vals, stamp_var = [], []
    near = []  # (t, mover's x, y there [px of e]): exposures where the mover covers its own place in e

    def resampled(t):
        """Exposure t's pixels and variance on e's stamp grid; None where it does not see the stamp."""
        t_ccd = holding(t, sky[0][sky[0].size // 2], sky[1][sky[1].size // 2], ccd)
        wt = wcs_for(t, t_ccd) if t_ccd is not None and (t, t_ccd) in refs else None
        if wt is None:
            return None
        tx, ty = (np.asarray(v, float).reshape(grid_x.shape) for v in world_to_pixels(wt, sky[0], sky[1]))
        if not (np.isfinite(tx).any() and np.isfinite(ty).any()):
            return None  # that exposure does not see this part of the sky (another pointing)
        image, var, mask, _ = pixels(t, t_ccd)
        return resample_stamp(image, var, mask, tx, ty)

    for t, tt in sorted(t_exposures.items(), key=lambda item: abs(item[1] - t_exposures[e])):
        if len(stamp_vals) >= MAX_TEMPLATES:
            break
        if t == e:
            continue
        dt = tt - t_exposures[e]
        mra, mdec = plane.to_sky(np.array([pxi + prop.vx * dt]), np.array([peta + prop.vy * dt]))
        mx, my = (float(v[0]) for v in world_to_pixels(w, mra, mdec))
        if math.hypot(mx - x, my - y) < hide + 3.0 * psf_sigma + 0.5 * length:
            near.append((t, mx, my))
            continue
        got = resampled(t)
        if got is None:
            continue
        vals, vvar = got
        mover = np.hypot(grid_x - mx, grid_y - my) < hide
        vals[mover] = np.nan
        vvar[mover] = np.nan
        # half the stamp usable, or the mover's core: the rest may be masked (a slow mover 10 px from a saturated
        # G 16 star: the star's mask took 53 % of the stamp, and the only exposure the mover had left free was
        # refused, the mover lost)
        if np.isfinite(vals).sum() < 0.5 * vals.size and np.mean(np.isfinite(vals[core])) < MIN_TEMPLATE_CORE:
            continue
        stamp_vals.append(vals)
        stamp_var.append(vvar)
    if not stamp_vals:
        # the mover covers its own place in every other exposure (a slow one on a star): all fitted together
        return _measure_jointly(prop, e, s_pred, where, near, resampled, half, candidates, info_by, refs, pixels,
                                t_exposures, t0_mjd, plane, config, stats, refused)
    vals = np.array(stamp_vals)
    counts = np.sum(np.isfinite(vals), axis=0)
    template = np.nansum(vals, axis=0) / np.maximum(counts, 1)
    image, var, mask, gain = pixels(e, ccd)
    # the template's noise: the exposures' background noise and the static sources' own photon noise, averaged
    template_var = (np.nansum(np.array(stamp_var), axis=0) / np.maximum(counts, 1) ** 2
                    + np.clip(template, 0.0, None) / max(float(gain), 1e-6) / np.maximum(counts, 1))
    template[counts == 0] = np.nan
    template_var[counts == 0] = np.nan
    data, stamp_var = _stamp(image, var, mask, ix, iy, half)
    stats["n_measured"] += 1
    best = best_snr_beside_template(data, stamp_var, template, template_var, x=x - (ix - half), y=y - (iy - half),
                                    length=length, theta=theta, psf_sigma=psf_sigma, gain=gain,
                                    max_shift=_reach(lk, s_pred, scale))
    if not best >= PRESCREEN_FRACTION * lk.blend_min_snr:
        # nothing near the mover's signal-to-noise anywhere within the reach: faint, without the full fit
        stats["n_prescreened"] += 1
        refused["faint"] += 1
        return None
    fit = fit_beside_template(data, stamp_var, template, template_var, x=x - (ix - half),
                              y=y - (iy - half), length=length, theta=theta, psf_sigma=psf_sigma, gain=gain,
                              max_shift=_reach(lk, s_pred, scale),
                              start=None if start is None else (start[0] - (ix - half), start[1] - (iy - half)))
    if not _accepted(fit, prop, lk, scale, psf_sigma, stats, refused):
        return None
    return _row(fit, prop, e, where, ix, iy, half, candidates, info_by, refs, t_exposures, t0_mjd, plane, config)


def _accepted(fit, prop, lk, scale: float, psf_sigma: float, stats: dict, refused: Counter) -> bool:
    """Whether a blend measurement is kept (:func:`ssodetect.link.blends.accept_recovery`); a refusal is counted by
    its reason, an acceptance in ``n_accepted``."""
    verdict = accept_recovery(fit, prop.flux, prop.flux_err, min_snr=lk.blend_min_snr,
                              flux_scatter=lk.flux_scatter, max_chi2_dof=lk.max_chi2_dof,
                              max_position_error=max(1.0, 0.5 / scale), psf_sigma=psf_sigma)
    if verdict != "ok":
        refused[verdict] += 1
        return False
    stats["n_accepted"] += 1
    return True


def _measure_jointly(prop, e, s_pred, where, near, resampled, half, candidates, info_by, refs, pixels, t_exposures,
                     t0_mjd, plane, config, stats, refused):
    """The measurement row of a proposal's mover in exposure ``e`` fitted with the static sky over the exposures
    ``near`` (``(t, x, y)``: the mover's predicted place in each [px of e]) where it covers its own place in ``e``,
    at most :data:`MAX_TEMPLATES` of them, those where it lies farthest from that place
    (:func:`ssodetect.link.blends.fit_with_static_sky`); None when refused or when no other exposure sees the stamp
    (counted ``n_no_template``)."""
    lk = config.link
    ccd, (w, x, y, length, theta, motion) = where
    info = info_by[(e, ccd)]
    psf_sigma = float(info.get("psf_sigma") or 1.0)
    ix, iy = int(round(x)), int(round(y))
    image, var, mask, gain = pixels(e, ccd)
    data, data_var = _stamp(image, var, mask, ix, iy, half)
    stamps, variances, positions = [data], [data_var], [(x - (ix - half), y - (iy - half))]
    # the MAX_TEMPLATES exposures where the mover lies farthest from its place in e (they tell its light from the
    # static sky best; each more costs a flux in every step of the fit: 43 NEOSSat frames had made it minutes long)
    far = sorted(near, key=lambda item: -math.hypot(item[1] - x, item[2] - y))
    stats["n_joint_exposures_left"] += max(len(far) - MAX_TEMPLATES, 0)
    for t, mx, my in far[:MAX_TEMPLATES]:
        got = resampled(t)
        if got is not None and np.isfinite(got[0]).any():
            stamps.append(got[0])
            variances.append(got[1])
            positions.append((mx - (ix - half), my - (iy - half)))
    if len(stamps) < 2:
        stats["n_no_template"] += 1
        return None
    stats["n_measured"] += 1
    stats["n_joint"] += 1
    scale = pixel_scale(w)
    fit = fit_with_static_sky(np.array(stamps), np.array(variances), np.array(positions), target=0, length=length,
                              theta=theta, psf_sigma=psf_sigma, gain=gain, max_shift=_reach(lk, s_pred, scale))
    if not _accepted(fit, prop, lk, scale, psf_sigma, stats, refused):
        return None
    stats["n_joint_accepted"] += 1
    return _row(fit, prop, e, where, ix, iy, half, candidates, info_by, refs, t_exposures, t0_mjd, plane, config)


def _row(fit, prop, e, where, ix, iy, half, candidates, info_by, refs, t_exposures, t0_mjd, plane, config) -> dict:
    """The observation row of an accepted fit (stamp ``half`` px about pixel ``(ix, iy)`` of exposure ``e``)."""
    lk = config.link
    ccd, (w, x, y, length, theta, motion) = where
    info = info_by[(e, ccd)]
    scale = pixel_scale(w)
    ref = refs[(e, ccd)]
    fx, fy = fit["x"] + (ix - half), fit["y"] + (iy - half)
    fra, fdec = (float(v) for v in w.all_pix2world(fx, fy, 0))
    solution = info.get("astrometry") or {}
    wcs_error = float(solution.get("wcs_error") or 0.0) if solution.get("status") == "ok" else 0.0
    # as the clean detections: the centroid's error and the solution's, in quadrature
    err = math.hypot(math.hypot(fit["x_err"], fit["y_err"]) / math.sqrt(2.0) * scale,
                     wcs_error if math.isfinite(wcs_error) else 0.0)
    zp = _zeropoint(info)
    zp_err = float(solution.get("zeropoint_err") or 0.0)
    exptime = float(ref.exptime or 0.0)
    mag = zp - 2.5 * math.log10(fit["flux"] / max(exptime, 1e-9)) if fit["flux"] > 0 else float("nan")
    first = candidates[prop.pair[0]]
    mjd = t0_mjd + t_exposures[e] / 24.0
    fxi, feta = plane.to_plane(np.array([fra]), np.array([fdec]))
    return {"exposure": int(e), "file": str(ref.path), "ccd": ccd, "mjd": mjd, "exptime": exptime, "ra": fra,
            "dec": fdec, "wcs": "fit" if (info.get("astrometry") or {}).get("status") == "ok" else str(first["wcs"]),
            "ra_err": err, "dec_err": err, "x": fx, "y": fy, "flux": fit["flux"], "flux_err": fit["flux_err"],
            "mag": mag, "mag_err": math.hypot(1.0857 * fit["flux_err"] / fit["flux"], zp_err if math.isfinite(zp_err) else 0.0),
            "snr": fit["flux"] / fit["flux_err"],
            "length": motion, "trail_pa": float(first["trail_pa"]), "xi": float(fxi[0]), "eta": float(feta[0]),
            "t_hours": t_exposures[e], "sigma": math.hypot(err, lk.position_floor * scale), "pixel_scale": scale}


_ROW_COLUMNS = ("exposure", "file", "ccd", "mjd", "exptime", "ra", "dec", "wcs", "ra_err", "dec_err", "x", "y", "flux",
                "flux_err", "mag", "mag_err", "snr", "length", "trail_pa")


def _objects(results, candidates, cxi, ceta, ct, plane, t0_mjd, objects, config, stats):
    """Object and observation tables of the proposals whose pair and measurements line up
    (:func:`ssodetect.link.blends.choose_tracklets`)."""
    lk = config.link
    groups, members_of, rows_of, single_of = [], [], [], []
    for prop, rows in results:
        if len(prop.pair) + len(rows) < lk.min_detections:
            if rows:
                stats["n_too_few"] += 1  # some measurements kept, too few for a tracklet
            continue
        members = [{**{c: candidates[c][k] for c in _ROW_COLUMNS}, "xi": float(cxi[k]), "eta": float(ceta[k]),
                    "t_hours": float(ct[k]), "sigma": float(candidates["sigma"][k]),
                    "trail": str(candidates["kind"][k]) == "trail", "pixel_scale": float(candidates["pixel_scale"][k])}
                   for k in prop.pair] + rows  # (the measured rows themselves: they are told apart by identity below)
        members.sort(key=lambda r: r["t_hours"])
        # a trail's centre moves along it with whatever changes its light (a star's wing under a measured one): the
        # slow linker's tolerance (link.movers.with_trail_tolerance; member 437 lost a V 22.6 mover at 6.9"/h whose
        # three 11 px trails fitted at chi2/dof 5.2 without it); a measurement is its motion's trail
        link_sigma = with_trail_tolerance(*(np.array([r[c] for r in members], float) for c in
                                            ("sigma", "length", "pixel_scale")), [r.get("trail", True) for r in members])
        if math.sqrt(sum(float(r["snr"]) ** 2 for r in members)) < lk.min_total_snr:
            stats["n_too_faint"] += 1  # as the linker's tracklets: [link] min_total_snr
            continue
        keys = {("pair", k) for k in prop.pair} | {("blend", r["exposure"], r["ccd"], round(r["x"]), round(r["y"]))
                                                 for r in rows}
        groups.append((keys, *(np.array([r[c] for r in members], float) for c in ("t_hours", "xi", "eta")), link_sigma))
        members_of.append(members)
        rows_of.append(rows)
        single_of.append(len(prop.pair) == 1)
    # a whole trail's proposal is a fast mover: no upper rate (the streak linker has none either)
    chosen, counts = choose_tracklets(groups, max_chi2_dof=lk.max_chi2_dof, min_rate=lk.min_rate,
                                      max_rate=[math.inf if single else lk.max_rate for single in single_of],
                                      min_rate_significance=lk.min_rate_significance)
    stats.update(counts)
    names = {str(n) for n in objects["object"]} if len(objects) else set()
    number = len(objects) + 1
    obs_tables, obj_tables = [], []
    for k, trk in chosen:
        members, rows = members_of[k], rows_of[k]
        while f"SD{number:05d}" in names:
            number += 1
        table = Table(rows=[[r[c] for c in _ROW_COLUMNS + ("xi", "eta", "t_hours")] for r in members],
                      names=_ROW_COLUMNS + ("xi", "eta", "t_hours"))
        obs, obj = tracklet_tables(table, [trk], plane, t0_mjd=t0_mjd, first_number=number)
        measured = np.array([any(r is m for m in rows) for r in members])
        obs["kind"][measured] = "blend"
        names.add(f"SD{number:05d}")
        stats["n_objects_from_trails"] += int(single_of[k])
        obs_tables.append(obs)
        obj_tables.append(obj)
        log.info("blends: %s found from %s and %d measurements beside brighter sources (%.2f\"/h)",
                 f"SD{number:05d}", "a whole trail" if single_of[k] else "a pair", int(measured.sum()), trk.rate)
    stats["n_objects"] = len(obj_tables)
    if not obj_tables:
        return None, None
    return vstack(obs_tables), vstack(obj_tables)


def claim_trails(streaks: Table, observations: Table, objects: Table) -> Table:
    """``streaks`` with the single trails that became members of ``objects`` (a whole trail measured in the other
    exposures' pixels) marked ``linked`` to them: every trail stays accounted for."""
    if not len(streaks) or not len(observations) or not len(objects):
        return streaks
    names = set(np.asarray(objects["object"]).astype(str))
    key = {detection_key(observations, k): str(observations["object"][k]) for k in range(len(observations))
           if str(observations["object"][k]) in names and str(observations["kind"][k]) != "blend"}
    out = streaks.copy()
    for k in np.nonzero(np.asarray(out["status"]) == "single")[0]:
        name = key.get(detection_key(out, k))
        if name is not None:
            out["status"][k] = "linked"
            out["object"][k] = name
    return out
