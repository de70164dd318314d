"""Movers passing a brighter source: measured in the pixels where the catalogue merged them.

A slow mover that passes within a few PSF widths of a brighter star or galaxy is not detected on
its own in those exposures: extraction measures one source, a blend, whose centroid stays near the
neighbour (a PSF or windowed fit down-weights the mover on its wing) and whose flux is the sum.
With clean detections in only two exposures the linker (three detections at least) cannot find it.

Here the pixels decide:

1. :func:`propose_pairs` takes pairs of clean, bright, unlinked detections in two exposures with a
   motion in the searched range and consistent fluxes, and predicts the mover into the other
   exposures.  An exposure is a *blend target* when a detection brighter than the pair (by more
   than its noise and half the pair's flux) lies within its own size of the prediction, and no
   clean detection matches the prediction (the linker judged that one already).
2. :func:`fit_beside_template` fits, on a stamp of the blended exposure around the prediction,
   the mover's own PSF swept along its motion plus a scaled template of the static sky (the other
   exposures, where the mover is elsewhere, resampled onto the stamp's pixels by
   :func:`resample_stamp`) plus a constant: flux, position and their errors.
3. :func:`accept_recovery` keeps a measurement whose flux is significant and consistent with the
   pair's and whose position lies where the pair predicted.

Positions are tangent-plane coordinates ``xi, eta`` [arcsec] and times hours for the proposals;
stamps are ``(ny, nx)`` pixel arrays, 0-based, with the PSF a pixel-integrated Gaussian of
``psf_sigma`` [px].  The pipeline step (:mod:`ssodetect.pipeline.blends`) reads the images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import map_coordinates
from scipy.optimize import minimize
from scipy.signal import fftconvolve
from scipy.spatial import cKDTree

from ssodetect.detect.shape import trailed_psf
from ssodetect.link.tracklets import Tracklet, fit_linear_motion

__all__ = ["BlendProposal", "merge_reach", "FOOTPRINT_REACH", "LOCAL_RADIUS_SIGMA", "propose_pairs", "propose_trails", "whole_trails", "trail_shows", "find_trail", "MAX_TRAIL_SEARCH",
           "resample_stamp", "fit_beside_template", "best_snr_beside_template", "best_snr_reference", "fit_with_static_sky",
           "accept_recovery", "TRAIL_SHOW_FRACTION",
           "choose_tracklets",
           "BLEND_MIN_EXCESS", "TEMPLATE_MISMATCH", "JOINT_MAX_CONTRAST", "MAX_SCALE_CHANGE", "MIN_SEPARATION_SIGMA", "MAX_FLUX_FACTOR",
           "POSITION_FLOOR_PX", "PRESCREEN_FRACTION", "MAX_TARGETS_PER_MPX", "within_budget"]

#: A blend target's detection must exceed the pair's flux by at least this fraction of it (and its noise).
BLEND_MIN_EXCESS = 0.5
#: Fraction of the template's pixel values added in quadrature to the noise: PSF changes between exposures and
#: the resampling of an undersampled PSF leave residuals of a few per cent of a static source's profile.
TEMPLATE_MISMATCH = 0.05
#: The fitted template scale must lie within this of 1 (the exposures of one CCD share their photometry to a few per
#: cent): a scale near 0 means the mover's PSF took the static source's place.
MAX_SCALE_CHANGE = 0.3
#: A measured mover closer than this many PSF sigmas to the template's peak is refused: there the fit trades the
#: two sources against each other (biased positions and fluxes at 1.5 sigma, the source itself at 0).
MIN_SEPARATION_SIGMA = 2.5
#: A mover fitted jointly with the static sky (:func:`fit_with_static_sky`) within :data:`MIN_SEPARATION_SIGMA` PSF
#: sigmas of a static peak this many times its own is refused: beyond, the static sky's differences between the
#: exposures (resampling an undersampled PSF) bias it beyond its errors (on a star 10x brighter, positions 0.6 px off
#: with errors of 0.12 px; up to 5x, within twice them).
JOINT_MAX_CONTRAST = 5.0
#: A blend measurement's flux must lie within this factor of the pair's (besides the 3-sigma test).
MAX_FLUX_FACTOR = 2.5
#: A blend target whose best flux signal-to-noise ratio over its reach (:func:`best_snr_beside_template`, the first
#: linear fit's) stays below this fraction of the acceptance's ``min_snr`` is refused as faint without the full fit.
#: Over the 3,209 blend measurements of member 441 (4 CCDs and a 1024^2 cut), the full fit's ratio reached at most
#: 1.39 times the first fit's best (99 % of them below 1.27: the second pass's weights, with the template's scale
#: and the mover's flux fitted, can lower the noise beside a bright star), and every accepted one had a best of 8.5
#: or more; at 0.6, 73 % of them were refused so.
PRESCREEN_FRACTION = 0.6
#: :func:`best_snr_beside_template` sums the stamp's windows directly up to this many products per sub-pixel phase
#: (positions within the reach times kernel pixels), by FFT over the whole stamp beyond.
DIRECT_SUMS_MAX = 2_000_000
#: Blend targets measured at most per CCD, per megapixel of its exposures (each a fit on a stamp, a few ms to tens
#: of ms).  Member 441 measured 45 per Mpx (3,014 over 16 CCD exposures of 4.2 Mpx); four 512^2 frames smoothed by
#: a Gaussian of FWHM 6 px, their noise blobs taken for movers, asked for 12,500 (13,039 measurements, 400 s).
#: Beyond it the proposals of the pairs with the lowest signal-to-noise ratios are not measured (counted, warned).
MAX_TARGETS_PER_MPX = 500.0
#: Systematic position error [px] added to a blend measurement (template residuals, resampling).
POSITION_FLOOR_PX = 0.1


@dataclass
class BlendProposal:
    """A pair of clean detections and the exposures where its mover sits on a brighter source.

    Attributes
    ----------
    pair : tuple of int
        Indices of the two detections (earlier first).
    vx, vy : float
        Motion [arcsec/h] between them.
    flux, flux_err : float
        The pair's weighted mean flux [ADU] and its error.
    targets : list of tuple
        ``(exposure, xi, eta, sigma)``: the predicted position [arcsec] and its 1-sigma error [arcsec].
    """

    pair: tuple
    vx: float
    vy: float
    flux: float
    flux_err: float
    targets: list = field(default_factory=list)


def _pair_flux(f, fe):
    w = 1.0 / np.maximum(fe, 1e-12) ** 2
    return float(np.sum(w * f) / np.sum(w)), float(1.0 / math.sqrt(np.sum(w)))


#: How far from a blend's centroid a mover merged into its footprint may sit, in radii of the circle of the
#: footprint's area (:func:`merge_reach`): a footprint reaches further towards the neighbour it swallowed (a V 23.5
#: mover 8.5 px from a V 18.7 star's centre, its 188 px footprint a circle of 7.7 px: member 405).
FOOTPRINT_REACH = 1.5


def merge_reach(npix, a, pixel_scale) -> np.ndarray:
    """How far [arcsec] from each detection's centroid a mover merged into it may sit: 2.5 times its major-axis rms
    size, or :data:`FOOTPRINT_REACH` radii of the circle of its footprint's area, whichever is larger (a V 23 mover
    10.7 px from the centre of a G 17.5 star, inside its 263 px footprint: member 294).

    Parameters
    ----------
    npix, a, pixel_scale : array_like (m,)
        Footprint area [px], major-axis rms [px] and pixel scale [arcsec/px] of the detections.
    """
    footprint = FOOTPRINT_REACH * np.sqrt(np.clip(np.nan_to_num(np.asarray(npix, float)), 0.0, None) / math.pi)
    return np.maximum(2.5 * np.asarray(a, float), footprint) * np.asarray(pixel_scale, float)


def propose_pairs(
    exposure: np.ndarray, group: np.ndarray, t_hours: np.ndarray, xi: np.ndarray, eta: np.ndarray,
    sigma: np.ndarray, flux: np.ndarray, flux_err: np.ndarray, pool: np.ndarray,
    blend_exposure: np.ndarray, blend_group: np.ndarray, blend_xi: np.ndarray, blend_eta: np.ndarray,
    blend_flux: np.ndarray, blend_flux_err: np.ndarray, blend_size: np.ndarray, t_exposures: dict, *,
    min_rate: float, max_rate: float, min_rate_significance: float, flux_scatter: float, match_sigma: float,
    match_floor: float, min_targets: int = 1,
) -> tuple[list, dict]:
    """Pairs of clean detections whose mover is predicted onto brighter sources in other exposures.

    Parameters
    ----------
    exposure, group, t_hours, xi, eta, sigma, flux, flux_err : ndarray (n,)
        Moving candidates (not static, not artefacts): exposure index, CCD (pairs and their blends
        stay on one CCD), time [h], position and its 1-sigma error [arcsec], flux and error [ADU].
    pool : ndarray (n,) bool
        Candidates that may form a pair (unlinked, bright, clean); all candidates count as clean
        matches of a prediction.
    blend_exposure, blend_group, blend_xi, blend_eta, blend_flux, blend_flux_err : ndarray (m,)
        Every detection of the run (static ones included): the possible blends.
    blend_size : ndarray (m,)
        How far [arcsec] from a blend's centroid a merged mover may sit (a few times its size).
    t_exposures : dict
        Exposure index -> time [h] of every exposure of the run.
    min_rate, max_rate : float
        Searched motion [arcsec/h].
    min_rate_significance : float
        The pair's displacement must exceed this many times its error.
    flux_scatter : float
        Relative flux scatter of a mover between exposures beyond its noise.
    match_sigma, match_floor : float
        A clean candidate within ``match_sigma`` combined sigma plus ``match_floor`` [arcsec] of a
        prediction, with a consistent flux, is the mover itself (no blend there).
    min_targets : int
        Blend targets a pair needs to be proposed.

    Returns
    -------
    proposals : list of BlendProposal
    stats : dict
        ``n_pool``, ``n_pairs`` (pairs with a motion and fluxes that fit), ``n_proposals``, ``n_targets``.
    """
    exposure = np.asarray(exposure)
    group = np.asarray(group).astype(str)
    t_hours, xi, eta = (np.asarray(a, float) for a in (t_hours, xi, eta))
    sigma, flux, flux_err = (np.asarray(a, float) for a in (sigma, flux, flux_err))
    pool = np.asarray(pool, bool)
    b_exp, b_grp = np.asarray(blend_exposure), np.asarray(blend_group).astype(str)
    b_pos = np.column_stack([np.asarray(blend_xi, float), np.asarray(blend_eta, float)])
    b_flux, b_ferr, b_size = (np.asarray(a, float) for a in (blend_flux, blend_flux_err, blend_size))
    stats = {"n_pool": int(pool.sum()), "n_pairs": 0, "n_proposals": 0, "n_targets": 0}
    proposals: list = []
    if pool.sum() < 2:
        return proposals, stats
    pos = np.column_stack([xi, eta])
    cand_trees = {}
    for key in set(zip(exposure.tolist(), group.tolist())):
        rows = np.nonzero((exposure == key[0]) & (group == key[1]))[0]
        cand_trees[key] = (cKDTree(pos[rows]), rows)
    blend_trees = {}
    for key in set(zip(b_exp.tolist(), b_grp.tolist())):
        rows = np.nonzero((b_exp == key[0]) & (b_grp == key[1]))[0]
        blend_trees[key] = (cKDTree(b_pos[rows]), rows)
    b_size = np.where(np.isfinite(b_size), b_size, 0.0)
    max_size = float(np.max(b_size)) if b_size.size else 0.0
    exposures = sorted(t_exposures)
    for g in np.unique(group[pool]):
        for a_i, ea in enumerate(exposures):
            ia = np.nonzero(pool & (group == g) & (exposure == ea))[0]
            if ia.size == 0:
                continue
            for eb in exposures[a_i + 1:]:
                ib = np.nonzero(pool & (group == g) & (exposure == eb))[0]
                if ib.size == 0:
                    continue
                dt = float(t_exposures[eb] - t_exposures[ea])
                if dt <= 0:
                    continue
                tree_b = cKDTree(pos[ib])
                for i, near in zip(ia, tree_b.query_ball_point(pos[ia], max_rate * dt)):
                    for j in ib[near]:
                        prop = _pair(i, j, dt, t_exposures, exposure, group, t_hours, pos, sigma, flux, flux_err,
                                     cand_trees, blend_trees, b_pos, b_flux, b_ferr, b_size, max_size,
                                     min_rate=min_rate, min_rate_significance=min_rate_significance,
                                     flux_scatter=flux_scatter, match_sigma=match_sigma, match_floor=match_floor)
                        if prop is None:
                            continue
                        stats["n_pairs"] += 1
                        if len(prop.targets) >= min_targets:
                            proposals.append(prop)
                            stats["n_targets"] += len(prop.targets)
    stats["n_proposals"] = len(proposals)
    return proposals, stats


def within_budget(priority: np.ndarray, cost: np.ndarray, group: np.ndarray, budget: dict) -> np.ndarray:
    """Which items are kept within their group's budget, the highest priority first.

    Parameters
    ----------
    priority : ndarray (n,)
        Larger first (ties: the earlier item first); NaN last.
    cost : ndarray (n,)
        Each item's cost (>= 0).
    group : ndarray (n,)
        Each item's group (a key of ``budget``; a group without a budget has none: all kept).
    budget : dict
        Group -> largest total cost of its kept items.

    Returns
    -------
    ndarray (n,) bool
        Per group, the items in priority order while the sum of their costs stays within the budget; the first
        item to pass it and every item after it are left out.
    """
    priority = np.nan_to_num(np.asarray(priority, float), nan=-np.inf)
    cost = np.clip(np.asarray(cost, float), 0.0, None)
    group = np.asarray(group)
    keep = np.ones(priority.size, bool)
    for key in dict.fromkeys(group.tolist()):
        if key not in budget:
            continue
        rows = np.nonzero(group == key)[0]
        rows = rows[np.argsort(-priority[rows], kind="stable")]
        keep[rows] = np.cumsum(cost[rows]) <= budget[key]  # costs >= 0: once passed, passed for the rest
    return keep


def propose_trails(
    exposure: np.ndarray, t_hours: np.ndarray, xi: np.ndarray, eta: np.ndarray, sigma: np.ndarray,
    rate: np.ndarray, rate_err: np.ndarray, pa: np.ndarray, pa_err: np.ndarray, flux: np.ndarray,
    flux_err: np.ndarray, pool: np.ndarray, t_exposures: dict, *, nearest: int | None = None,
) -> tuple[list, dict]:
    """Single whole trails predicted into every other exposure, both ways along their axis.

    A trail seen whole measures its motion up to its sign: the rate from its length and exposure time, the
    direction from its axis.  Where a fast mover's trail is crossed by a diffraction spike, a bleed or a star
    in the other exposures, extraction measures pieces whose lengths and axes the crossing source biases (a
    43 px trail crossed by a spike: 12 px pieces 11-23 deg off its axis), or merges them into the spike, and the
    streak linker cannot join them; the trail measured beside the static sky (:func:`fit_beside_template`) at the
    predicted positions can.  Each trail gives two proposals (``pair`` of one index), one per sign; at most one
    of them becomes an object (they share the trail).  Whether the pixels show a trail at a prediction at all
    (:func:`trail_shows`) is for the caller to check before measuring.

    Parameters
    ----------
    exposure, t_hours, xi, eta, sigma : ndarray (n,)
        Moving candidates: exposure index, mid-exposure time [h], trail centre and its 1-sigma error [arcsec].
    rate, rate_err : ndarray (n,)
        Rate implied by each trail's length over its exposure time and its error [arcsec/h].
    pa, pa_err : ndarray (n,)
        Trail axis position angle and its error [deg, N through E].
    flux, flux_err : ndarray (n,)
        [ADU].
    pool : ndarray (n,) bool
        Trails that may be proposed (whole, unlinked, bright).
    t_exposures : dict
        Exposure index -> time [h] of every exposure of the run.
    nearest : int, optional
        Predict into the ``nearest`` other exposures closest in time only (a long sequence: a trail predicted an
        hour away has a reach of its rate error times an hour, and NEOSSat's 43 exposures made 33,516 targets of
        399 trails); all by default.

    Returns
    -------
    proposals : list of BlendProposal
        Targets in every other exposure (or the ``nearest``), ``(exposure, xi, eta, sigma)`` with the prediction's
        error from the trail's position, length and axis errors.
    stats : dict
        ``n_pool`` (trails in the pool), ``n_proposals`` (two per trail), ``n_targets``, ``n_not_predicted``
        (predictions beyond the ``nearest`` exposures, not made).
    """
    pool = np.asarray(pool, bool)
    t_hours, xi, eta, sigma = (np.asarray(a, float) for a in (t_hours, xi, eta, sigma))
    rate, rate_err, pa, pa_err = (np.asarray(a, float) for a in (rate, rate_err, pa, pa_err))
    exposure = np.asarray(exposure)
    proposals: list = []
    skipped = 0
    for i in np.nonzero(pool)[0]:
        axis = np.array([math.sin(math.radians(pa[i])), math.cos(math.radians(pa[i]))])
        others = sorted((abs(te - t_hours[i]), e) for e, te in t_exposures.items() if e != exposure[i])
        chosen = {e for _, e in others[:nearest]} if nearest is not None else {e for _, e in others}
        skipped += 2 * (len(others) - len(chosen))
        for sign in (1.0, -1.0):
            v = sign * rate[i] * axis
            prop = BlendProposal((int(i),), float(v[0]), float(v[1]), float(flux[i]), float(flux_err[i]))
            for e, te in sorted(t_exposures.items()):
                if e == exposure[i] or e not in chosen:
                    continue
                dt = abs(te - t_hours[i])
                s_pred = math.sqrt(sigma[i] ** 2 + (dt * rate_err[i]) ** 2
                                   + (dt * rate[i] * math.radians(pa_err[i])) ** 2)
                prop.targets.append((int(e), float(xi[i] + v[0] * (te - t_hours[i])),
                                     float(eta[i] + v[1] * (te - t_hours[i])), float(s_pred)))
            proposals.append(prop)
    return proposals, {"n_pool": int(pool.sum()), "n_proposals": len(proposals),
                       "n_targets": int(sum(len(p.targets) for p in proposals)), "n_not_predicted": skipped}


#: Length and axis errors [px] assumed for a trail whose trailed-PSF fit failed (a star or a spike on it) and which
#: keeps the extraction's measurement without errors: the ends to about a PSF width, the axis to a pixel over its
#: length (3319 of 5001 trails of a crowded field had no fitted errors, and were never proposed: a V 21.8 fast
#: mover seen whole once, cut by stars in its other exposures, was lost).
UNFITTED_LENGTH_ERR_PX = 2.0
UNFITTED_AXIS_ERR_PX = 1.0


def whole_trails(candidates, allowed: np.ndarray, *, min_length: float, min_snr: float):
    """The trails of a candidate table that :func:`propose_trails` may propose, with their motion.

    A trail qualifies when ``allowed`` (unlinked, not cut by the edge as a point), seen whole (``cut`` 0), at least
    ``min_length`` px long, of S/N ``min_snr`` or more, with a finite length and axis.  A trail without fitted
    errors gets :data:`UNFITTED_LENGTH_ERR_PX` and :data:`UNFITTED_AXIS_ERR_PX` (its predictions' reach grows
    with them).

    Returns
    -------
    pool : ndarray (n,) bool
    rate, rate_err : ndarray (n,)
        Its length over its exposure time [arcsec/h] and the error.
    pa, pa_err : ndarray (n,)
        Its axis [deg, N through E] and the error.
    unfitted : ndarray (n,) bool
        Trails of the pool whose errors were assumed.
    """
    exptime_h = np.asarray(candidates["exptime"], float) / 3600.0
    arcsec = np.asarray(candidates["trail_arcsec"], float)
    length = np.asarray(candidates["length"], float)
    arcsec_err = np.asarray(candidates["trail_arcsec_err"], float)
    pa, pa_err = np.asarray(candidates["trail_pa"], float), np.asarray(candidates["trail_pa_err"], float)
    unfitted = ~(np.isfinite(arcsec_err) & np.isfinite(pa_err))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = arcsec / length  # [arcsec/px]
        arcsec_err = np.where(np.isfinite(arcsec_err), arcsec_err, UNFITTED_LENGTH_ERR_PX * scale)
        pa_err = np.where(np.isfinite(pa_err), pa_err,
                          np.degrees(np.arctan2(UNFITTED_AXIS_ERR_PX, np.maximum(length, 1.0))))
        rate = arcsec / exptime_h
        rate_err = arcsec_err / exptime_h
    pool = (np.asarray(allowed, bool) & (np.asarray(candidates["cut"]) == 0)
            & (np.asarray(candidates["kind"]).astype(str) == "trail")
            & (length >= min_length)
            & (np.asarray(candidates["snr"], float) >= min_snr)
            & np.isfinite(rate) & np.isfinite(rate_err) & np.isfinite(pa) & np.isfinite(pa_err))
    return pool, rate, rate_err, pa, pa_err, pool & unfitted


#: A prediction shows a trail when the median of the pixels along its centre line reaches this share of the level
#: the trail's flux gives there (:func:`trail_shows`).
TRAIL_SHOW_FRACTION = 0.5


def trail_shows(image: np.ndarray, mask: np.ndarray, x: float, y: float, length: float, theta: float,
                psf_sigma: float, flux: float, *, fraction: float = TRAIL_SHOW_FRACTION, search: float = 0.0) -> bool:
    """Whether the pixels along a predicted trail hold about the light of the trail (a cheap test before the fit);
    :func:`find_trail` with the same arguments finds where."""
    return find_trail(image, mask, x, y, length, theta, psf_sigma, flux, fraction=fraction, search=search) is not None


#: Steps [px] of :func:`find_trail`'s search across the trail (a fraction of the PSF sigma of 0.6-0.9 px: the
#: centre-line level falls to 0.8 of its peak half a pixel off a 0.75 px sigma).
TRAIL_SEARCH_STEP = 0.5
#: Largest search [px] of :func:`find_trail`, whatever the prediction's reach (its samples grow with the square of
#: the reach: frames months apart (NEOWISE) gave reaches of 10^4 px and a 22 GB sample grid).  A wider reach is
#: searched this far only (the caller counts it).
MAX_TRAIL_SEARCH = 12.0


def find_trail(image: np.ndarray, mask: np.ndarray, x: float, y: float, length: float, theta: float,
               psf_sigma: float, flux: float, *, fraction: float = TRAIL_SHOW_FRACTION,
               search: float = 0.0) -> tuple[float, float] | None:
    """Where within ``search`` px of a predicted trail the pixels hold about the light of the trail; None if nowhere.

    The median of the pixels sampled every pixel along the segment's centre line (bilinear; masked ones and those
    off the image left out) is compared with the centre-line level of a trail of ``flux`` [ADU]: ``flux /
    (length sqrt(2 pi) psf_sigma)``.  The median ignores a spike or a star crossing a small part of the segment; a
    segment on empty sky stays near 0.  A trail at S/N 10 (its centre line ~1.3 noise sigma) is above half that
    level by ~3.5 sigma of the median of 47 samples.  The centre line falls off the trail within a PSF sigma
    across it: a prediction 0.5 deg off in axis over 190 px (a whole trail's motion predicted two exposures away)
    misses it by 1.6 px and its median by 3x (a V 21.8 fast mover of a crowded field was lost so).  So the
    segment is also tried shifted across the trail (steps of :data:`TRAIL_SEARCH_STEP`) and along it (steps of
    one sample, at most half the length) within ``search`` px of the prediction, and the best segment is taken.

    Parameters
    ----------
    image : ndarray (ny, nx)
        Background-subtracted pixels [ADU].
    mask : ndarray (ny, nx) bool
        Bad pixels.
    x, y, length, theta : float
        The predicted trail: centre [px, 0-based], length [px], angle [rad from +x towards +y].
    psf_sigma, flux : float
        [px]; the trail's flux [ADU].
    fraction : float
        Share of the trail's centre-line level the median must reach.
    search : float
        Largest shift [px] of the segment from the prediction (the prediction's uncertainty); 0 tests the
        prediction only; at most :data:`MAX_TRAIL_SEARCH`.

    Returns
    -------
    (x, y) or None
        The centre [px, 0-based] of the best segment whose median reaches the level.
    """
    n = max(int(math.ceil(length)) + 1, 3)
    h = length / (n - 1)  # along-track sample spacing [px] (0 for a point)
    search = min(max(float(search), 0.0), MAX_TRAIL_SEARCH) if math.isfinite(search) else 0.0
    k = int(min(search, 0.5 * length) / h) if h > 0 else 0  # along-track shifts, in samples, each way
    m = int(search / TRAIL_SEARCH_STEP)  # across-track shifts each way
    along = (np.arange(-k, n + k) - 0.5 * (n - 1)) * h
    across = np.arange(-m, m + 1) * TRAIL_SEARCH_STEP
    c, s = math.cos(theta), math.sin(theta)
    xs = x + along[None, :] * c - across[:, None] * s
    ys = y + along[None, :] * s + across[:, None] * c
    ny, nx = image.shape
    inside = (xs >= 0) & (xs <= nx - 1) & (ys >= 0) & (ys <= ny - 1)
    if not inside.any():
        return None
    # bilinear sampling from the window the segments span (not a float copy of the whole image per call)
    x0, y0 = int(np.floor(xs[inside].min())), int(np.floor(ys[inside].min()))
    x1, y1 = int(np.floor(xs[inside].max())) + 2, int(np.floor(ys[inside].max())) + 2
    coords = [(ys - y0).ravel(), (xs - x0).ravel()]
    values = map_coordinates(np.asarray(image[y0:y1, x0:x1], float), coords, order=1, mode="nearest")
    bad = map_coordinates(np.asarray(mask[y0:y1, x0:x1], float), coords, order=1, mode="nearest") > 0
    values = np.where(bad.reshape(xs.shape) | ~inside, np.nan, values.reshape(xs.shape))
    # every segment of n samples: (across, along shift, sample); the median of its finite samples (NaNs sort last)
    windows = np.sort(np.lib.stride_tricks.sliding_window_view(values, n, axis=1), axis=-1)
    count = np.sum(np.isfinite(windows), axis=-1)
    lo = np.take_along_axis(windows, np.maximum(count - 1, 0)[..., None] // 2, axis=-1)[..., 0]
    hi = np.take_along_axis(windows, np.maximum(count, 1)[..., None] // 2, axis=-1)[..., 0]
    median = np.where(count >= 3, 0.5 * (lo + hi), -np.inf)
    level = flux / (max(length, 1.0) * math.sqrt(2.0 * math.pi) * psf_sigma)
    # only segments within `search` of the prediction
    shift_along = (np.arange(2 * k + 1) - k) * h
    median = np.where(np.hypot(across[:, None], shift_along[None, :]) <= search + 1e-9, median, -np.inf)
    i, j = np.unravel_index(int(np.argmax(median)), median.shape)
    if not median[i, j] >= fraction * level:
        return None
    return float(x + shift_along[j] * c - across[i] * s), float(y + shift_along[j] * s + across[i] * c)


def _consistent(f1, e1, f2, e2, scatter, nsigma=3.0):
    mean = 0.5 * (abs(f1) + abs(f2))
    return abs(f1 - f2) <= nsigma * math.sqrt(e1**2 + e2**2 + 2.0 * (scatter * mean) ** 2)


def _pair(i, j, dt, t_exposures, exposure, group, t_hours, pos, sigma, flux, flux_err, cand_trees, blend_trees,
          b_pos, b_flux, b_ferr, b_size, max_size, *, min_rate, min_rate_significance, flux_scatter, match_sigma,
          match_floor):
    """The proposal of the pair (i, j), None when its motion or fluxes do not fit."""
    step = pos[j] - pos[i]
    dist = float(np.hypot(*step))
    err = math.hypot(sigma[i], sigma[j])
    if dist < min_rate * dt or dist < min_rate_significance * err:
        return None
    if not _consistent(flux[i], flux_err[i], flux[j], flux_err[j], flux_scatter):
        return None
    f_pair, fe_pair = _pair_flux(flux[[i, j]], flux_err[[i, j]])
    if f_pair <= 0:
        return None
    v = step / dt
    g = group[i]
    prop = BlendProposal((int(i), int(j)), float(v[0]), float(v[1]), f_pair, fe_pair)
    for e, te in t_exposures.items():
        if e in (exposure[i], exposure[j]):
            continue
        u = (te - t_hours[i]) / dt
        p = pos[i] + v * (te - t_hours[i])
        s_pred = math.hypot(sigma[i] * (1.0 - u), sigma[j] * u)
        clean = cand_trees.get((e, g))
        if clean is not None:
            tree, rows = clean
            near = rows[np.asarray(tree.query_ball_point(p, match_sigma * math.hypot(s_pred, 1.0) + match_floor),
                                   dtype=np.intp)]
            if near.size:
                mean = 0.5 * (np.abs(flux[near]) + abs(f_pair))
                matched = (np.hypot(*(pos[near] - p).T) <= match_sigma * np.hypot(s_pred, sigma[near]) + match_floor) & (
                    np.abs(flux[near] - f_pair)
                    <= 3.0 * np.sqrt(flux_err[near] ** 2 + fe_pair**2 + 2.0 * (flux_scatter * mean) ** 2))
                if matched.any():
                    continue  # the mover itself, clean (see _consistent)
        blends = blend_trees.get((e, g))
        if blends is None:
            continue
        tree, rows = blends
        near = rows[np.asarray(tree.query_ball_point(p, max_size + 3.0 * s_pred), dtype=np.intp)]
        if not near.size:
            continue
        excess = b_flux[near] - f_pair
        if np.any((np.hypot(*(b_pos[near] - p).T) <= b_size[near] + 3.0 * s_pred) & (excess > BLEND_MIN_EXCESS * f_pair)
                  & (excess > 3.0 * np.hypot(b_ferr[near], fe_pair))):
            prop.targets.append((int(e), float(p[0]), float(p[1]), float(s_pred)))
    return prop


def resample_stamp(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, xs: np.ndarray, ys: np.ndarray):
    """An image's pixels at other positions (cubic spline; linear for the variance).

    Parameters
    ----------
    image, variance : ndarray (ny, nx)
        Pixels [ADU] and their variance [ADU^2].
    mask : ndarray (ny, nx) bool
        Bad pixels (cosmic-ray hits, masked, NaN).
    xs, ys : ndarray (h, w)
        0-based positions in ``image`` to sample.

    Returns
    -------
    values, var : ndarray (h, w)
        NaN where a bad pixel or the image's edge is within reach of the interpolation.
    """
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    ny, nx = image.shape
    if not (np.isfinite(xs).any() and np.isfinite(ys).any()):
        nan = np.full(xs.shape, np.nan)
        return nan, nan.copy()
    # the spline's prefilter runs over the array given: only the part the positions reach (plus its support)
    x_lo = int(np.clip(np.floor(np.nanmin(xs)) - 8, 0, nx))
    x_hi = int(np.clip(np.ceil(np.nanmax(xs)) + 9, x_lo, nx))
    y_lo = int(np.clip(np.floor(np.nanmin(ys)) - 8, 0, ny))
    y_hi = int(np.clip(np.ceil(np.nanmax(ys)) + 9, y_lo, ny))
    if x_hi - x_lo < 4 or y_hi - y_lo < 4:
        nan = np.full(xs.shape, np.nan)
        return nan, nan.copy()
    part = (slice(y_lo, y_hi), slice(x_lo, x_hi))
    bad = np.asarray(mask, bool)[part] | ~np.isfinite(image[part])
    filled = np.where(bad, 0.0, image[part]).astype(float)
    variance = np.asarray(variance)[part]
    coords = np.array([ys - y_lo, xs - x_lo])
    values = map_coordinates(filled, coords, order=3, mode="constant", cval=np.nan)
    var = map_coordinates(np.where(bad, 0.0, variance).astype(float), coords, order=1, mode="constant", cval=np.nan)
    touched = map_coordinates(bad.astype(float), coords, order=1, mode="constant", cval=1.0) > 0
    # the spline reaches two pixels out: a bad pixel next to the nearest ones also spoils the value
    py, px = bad.shape
    ix = np.clip(np.rint(xs - x_lo).astype(int), 0, px - 1)
    iy = np.clip(np.rint(ys - y_lo).astype(int), 0, py - 1)
    near_bad = np.zeros_like(touched)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near_bad |= bad[np.clip(iy + dy, 0, py - 1), np.clip(ix + dx, 0, px - 1)]
    spoiled = touched | near_bad | (xs < 1) | (ys < 1) | (xs > nx - 2) | (ys > ny - 2)
    values[spoiled] = np.nan
    var[spoiled] = np.nan
    return values, var


def _model_columns(x, y, length, theta, psf_sigma, template, n):
    return np.column_stack([trailed_psf(x, y, length, theta, psf_sigma, 0, 0, n).ravel(), template.ravel(),
                            np.ones(n * n)])


def _linear(d, w, cols):
    a = cols * np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(a, d * np.sqrt(w), rcond=None)
    resid = d - cols @ coef
    return coef, float(np.sum(w * resid**2))


#: Radius [PSF sigmas] around a fitted mover's trail within which its residuals are judged (``local_chi2_dof``).
LOCAL_RADIUS_SIGMA = 2.5
#: Normalised residual beyond which a pixel away from the mover's trail is left out of a fit beside a template (the
#: template does not describe it), and the fit made again.
OUTLIER_SIGMA = 5.0


def fit_beside_template(
    data: np.ndarray, variance: np.ndarray, template: np.ndarray, template_var: np.ndarray, *, x: float, y: float,
    length: float, theta: float, psf_sigma: float, gain: float, max_shift: float,
    mismatch: float = TEMPLATE_MISMATCH, start: tuple[float, float] | None = None,
) -> dict | None:
    """Fit a moving source's PSF plus a scaled static-sky template to one stamp.

    The model is ``flux * P(x, y) + scale * template + level``, ``P`` the pixel-integrated
    Gaussian of ``psf_sigma`` swept over ``length`` px at angle ``theta``; the pixel variance is the
    stamp's plus the template's (scaled), the Poisson noise of both sources and ``mismatch`` times
    the template in quadrature.  ``x, y`` start at the prediction and may move ``max_shift`` px.

    Parameters
    ----------
    data, variance : ndarray (n, n)
        The stamp [ADU, background subtracted; NaN where bad] and its noise variance [ADU^2].
    template, template_var : ndarray (n, n)
        The static sky at the stamp's pixels from the other exposures and its variance (NaN where bad).
    x, y : float
        Predicted position in the stamp [px, 0-based].
    length, theta : float
        Trail length [px] and angle [rad] of the motion during the exposure.
    psf_sigma, gain : float
        PSF Gaussian sigma [px]; gain [e-/ADU].
    max_shift : float
        Largest distance [px] of the fitted position from the prediction.
    mismatch : float
        Relative error of the template (its resampling and PSF differences).
    start : (x, y), optional
        Where the fit starts [px, stamp] (e.g. where :func:`find_trail` found the trail); default the prediction.

    Returns
    -------
    dict or None
        ``flux, flux_err`` [ADU], ``x, y, x_err, y_err`` [px, stamp; :data:`POSITION_FLOOR_PX` included],
        ``scale`` (and ``scale_all``, fitted over every usable pixel, before outliers were left out), ``chi2_dof``,
        ``local_chi2_dof`` (within :data:`LOCAL_RADIUS_SIGMA` PSF sigmas of the fitted trail), ``n_pixels``
        (fitted: pixels away from the trail whose residuals exceed :data:`OUTLIER_SIGMA` after a first fit are left
        out and the fit made again), ``separation`` [px] from the template's brightest fitted pixel near the fitted
        position, that pixel's value ``template_peak`` and the fitted mover's peak pixel ``mover_peak`` [ADU],
        ``off_track`` [px] (that pixel's distance from the fitted trail's segment), and the mover's
        flux and its error fitted with the template held at scale 1 (``unit_scale_flux``, ``unit_scale_flux_err``
        [ADU]); None when too few good pixels or the fit is singular.
    """
    n = data.shape[0]
    usable = (np.isfinite(data) & np.isfinite(variance) & np.isfinite(template) & np.isfinite(template_var)).ravel()
    if usable.sum() < 20:
        return None
    yy, xx = np.mgrid[0:n, 0:n]
    t = np.nan_to_num(template)
    g = max(float(gain), 1e-6)

    def solve(good):
        """The fit over the pixels ``good``: position, linear coefficients, chi2, model columns, weights."""
        d = np.nan_to_num(data).ravel()[good]
        v0 = np.nan_to_num(variance).ravel()[good]
        tv = np.nan_to_num(template_var).ravel()[good]
        tr = t.ravel()[good]

        def weights(coef, model_psf):
            f, s = coef[0], coef[1]
            var = v0 + s * s * tv + np.clip(f * model_psf, 0, None) / g + np.clip(s * tr, 0, None) / g + (
                mismatch * s * tr) ** 2
            return 1.0 / np.maximum(var, 1e-12)

        w = 1.0 / np.maximum(v0 + tv + np.clip(tr, 0, None) / g + (mismatch * tr) ** 2, 1e-12)

        def chi2(p, w):
            if math.hypot(p[0] - x, p[1] - y) > max_shift:
                return 1e30
            cols = _model_columns(p[0], p[1], length, theta, psf_sigma, t, n)[good]
            return _linear(d, w, cols)[1]

        p = np.array([x, y] if start is None else start, float)
        for _ in range(2):  # the weights depend on the fitted fluxes
            res = minimize(chi2, p, args=(w,), method="Nelder-Mead",
                           options={"xatol": 0.005, "fatol": 1e-3, "initial_simplex": [p, p + [0.5, 0], p + [0, 0.5]]})
            p = res.x
            cols = _model_columns(p[0], p[1], length, theta, psf_sigma, t, n)[good]
            coef, _ = _linear(d, w, cols)
            w = weights(coef, cols[:, 0])
        cols = _model_columns(p[0], p[1], length, theta, psf_sigma, t, n)[good]
        coef, c2 = _linear(d, w, cols)
        return p, coef, c2, cols, w, d, tr, weights

    def near_trail(p, good):
        """Pixels (of ``good``) within :data:`LOCAL_RADIUS_SIGMA` PSF sigmas of the trail fitted at ``p``."""
        along = (xx - p[0]) * math.cos(theta) + (yy - p[1]) * math.sin(theta)
        clipped = np.clip(along, -0.5 * length, 0.5 * length)
        return (np.hypot(xx - p[0] - clipped * math.cos(theta), yy - p[1] - clipped * math.sin(theta))
                <= LOCAL_RADIUS_SIGMA * psf_sigma).ravel()[good]

    good = usable.copy()
    p, coef, c2, cols, w, d, tr, weights = solve(good)
    scale_all = float(coef[1])
    # pixels away from the mover's trail that the template does not describe (a saturated star's core and bleed
    # resampled from dithered exposures: member 462's V 22.6 mover beside a G 15 star, its flux error inflated 30
    # times by those pixels' chi2, refused as faint) are left out and the fit is made again
    outliers = (np.sqrt(w) * np.abs(d - cols @ coef) > OUTLIER_SIGMA) & ~near_trail(p, good)
    if outliers.any() and good.sum() - outliers.sum() >= 20:
        good[np.nonzero(good)[0][outliers]] = False
        p, coef, c2, cols, w, d, tr, weights = solve(good)
    if math.hypot(p[0] - x, p[1] - y) > max_shift:
        return None
    # covariance of (flux, x, y, scale, level) from the Jacobian (finite differences in x and y)
    h = 0.01
    dpx = (_model_columns(p[0] + h, p[1], length, theta, psf_sigma, t, n)[good][:, 0]
           - _model_columns(p[0] - h, p[1], length, theta, psf_sigma, t, n)[good][:, 0]) / (2 * h) * coef[0]
    dpy = (_model_columns(p[0], p[1] + h, length, theta, psf_sigma, t, n)[good][:, 0]
           - _model_columns(p[0], p[1] - h, length, theta, psf_sigma, t, n)[good][:, 0]) / (2 * h) * coef[0]
    jac = np.column_stack([cols[:, 0], dpx, dpy, cols[:, 1], cols[:, 2]]) * np.sqrt(w)[:, None]
    dof = max(int(good.sum()) - 5, 1)
    try:
        cov = np.linalg.inv(jac.T @ jac) * max(1.0, c2 / dof)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(np.diag(cov))) or np.any(np.diag(cov) < 0):
        return None
    # the residuals where the mover's light is (within LOCAL_RADIUS_SIGMA PSF sigmas of its trail): a bright star's
    # wings the template leaves elsewhere in the stamp say nothing of the mover's measurement
    local = near_trail(p, good)
    resid = d - cols @ coef
    local_chi2 = float(np.sum(w[local] * resid[local] ** 2)) / max(int(local.sum()) - 3, 1)
    # the static source the mover is measured beside: the template's brightest fitted pixel near the fitted position
    # (a pixel left out as an outlier lies beyond the trail's own pixels: the mover's light cannot take its place)
    near = np.hypot(xx - p[0], yy - p[1]) <= 4.0 * psf_sigma + 0.5 * length
    peak = np.where(near & good.reshape(n, n), t, -np.inf)
    k = int(np.argmax(peak))
    separation = float(math.hypot(xx.ravel()[k] - p[0], yy.ravel()[k] - p[1])) if np.isfinite(peak.ravel()[k]) else np.inf
    # how far that source lies from the fitted trail's segment [px]
    if np.isfinite(peak.ravel()[k]):
        along = (xx.ravel()[k] - p[0]) * math.cos(theta) + (yy.ravel()[k] - p[1]) * math.sin(theta)
        nearest = np.clip(along, -0.5 * length, 0.5 * length)
        off_track = float(math.hypot(xx.ravel()[k] - p[0] - nearest * math.cos(theta),
                                     yy.ravel()[k] - p[1] - nearest * math.sin(theta)))
    else:
        off_track = float("inf")
    # the mover's flux with the template at its own level (scale 1): where the scale strays, whether the mover's
    # light stands without the template's help (see accept_recovery)
    unit = np.column_stack([cols[:, 0], cols[:, 2]])
    w1 = weights([coef[0], 1.0], cols[:, 0])  # (the template's noise at its own scale, not at the fitted one)
    unit_coef, unit_c2 = _linear(d - tr, w1, unit)
    try:
        unit_cov = np.linalg.inv((unit * w1[:, None]).T @ unit) * max(1.0, unit_c2 / max(int(good.sum()) - 2, 1))
        unit_err = float(math.sqrt(unit_cov[0, 0])) if unit_cov[0, 0] > 0 else float("nan")
    except np.linalg.LinAlgError:
        unit_err = float("nan")
    return {"flux": float(coef[0]), "flux_err": float(math.sqrt(cov[0, 0])), "x": float(p[0]), "y": float(p[1]),
            "x_err": float(math.hypot(math.sqrt(cov[1, 1]), POSITION_FLOOR_PX)),
            "y_err": float(math.hypot(math.sqrt(cov[2, 2]), POSITION_FLOOR_PX)), "scale": float(coef[1]),
            "scale_all": scale_all, "chi2_dof": float(c2 / dof), "local_chi2_dof": local_chi2,
            "n_pixels": int(good.sum()),
            "separation": separation,
            "template_peak": float(peak.ravel()[k]) if np.isfinite(peak.ravel()[k]) else 0.0,
            "mover_peak": float(coef[0] * np.max(cols[:, 0])),
            "off_track": off_track,
            "unit_scale_flux": float(unit_coef[0]), "unit_scale_flux_err": unit_err}


def _first_weights(variance, template, template_var, gain, mismatch):
    """The pixels a fit beside a template uses and their first weights (template at scale 1, no mover); 0 where bad."""
    good = np.isfinite(variance) & np.isfinite(template) & np.isfinite(template_var)
    t = np.where(good, template, 0.0)
    v = np.where(good, variance, 0.0) + np.where(good, template_var, 0.0) + np.clip(t, 0, None) / max(float(gain), 1e-6)
    w = np.where(good, 1.0 / np.maximum(v + (mismatch * t) ** 2, 1e-12), 0.0)
    return good, t, w


def best_snr_beside_template(
    data: np.ndarray, variance: np.ndarray, template: np.ndarray, template_var: np.ndarray, *, x: float, y: float,
    length: float, theta: float, psf_sigma: float, gain: float, max_shift: float,
    mismatch: float = TEMPLATE_MISMATCH,
) -> float:
    """The largest flux signal-to-noise ratio of :func:`fit_beside_template`'s first linear fit over the positions
    within ``max_shift`` px of ``(x, y)``, on a half-pixel grid through ``(x, y)``.

    The fit's model is ``flux * P(p) + scale * template + level`` with the first pass's weights; with the template
    and the level profiled out, the flux's signal-to-noise ratio at position ``p`` is
    ``P.W.r / sqrt(P.W.P - c' G^-1 c)`` (``r`` the residual of the template-and-level fit, ``G`` their Gram matrix,
    ``c`` their products with ``P``), which sums of the stamp's windows against the mover's trailed PSF give for
    every pixel within the reach at once (two sub-pixel phases per axis).  Where it stays far below the acceptance's
    ``min_snr`` everywhere within the reach, the full fit (two Nelder-Mead searches, ~100 linear fits) cannot find the
    mover there: most of a scene's blend targets hold nothing (2,841 of 3,014 measurements of a 4-CCD scene were
    refused as faint).  :func:`best_snr_reference` evaluates the same at each grid position directly (the parity
    test's reference).

    Parameters
    ----------
    data, variance, template, template_var : ndarray (n, n)
        As :func:`fit_beside_template` [ADU, ADU^2; NaN where bad].
    x, y : float
        Predicted position in the stamp [px, 0-based].
    length, theta, psf_sigma, gain, max_shift, mismatch : float
        As :func:`fit_beside_template` [px, rad, px, e-/ADU, px, -].

    Returns
    -------
    float
        The largest signal-to-noise ratio of a positive flux (``-inf`` when no position can be fitted).
    """
    data = np.asarray(data, float)
    if data.ndim != 2 or any(np.shape(a) != data.shape for a in (variance, template, template_var)):
        raise ValueError("best_snr_beside_template: data, variance, template and template_var must be 2-D arrays of "
                         f"one shape, not {[np.shape(a) for a in (data, variance, template, template_var)]}")
    if not all(math.isfinite(v) for v in (x, y, length, theta, psf_sigma, gain, mismatch)) or not (
            psf_sigma > 0 and length >= 0 and max_shift >= 0 and gain > 0 and mismatch >= 0):
        raise ValueError("best_snr_beside_template: x, y, theta must be finite, psf_sigma and gain > 0, length and "
                         "mismatch >= 0 (finite) and max_shift >= 0, not "
                         f"{(x, y, length, theta, psf_sigma, max_shift)}, gain {gain}, mismatch {mismatch}")
    max_shift = min(float(max_shift), math.hypot(*np.shape(data)) + abs(x) + abs(y))  # inf: anywhere on the stamp
    good, t, w = _first_weights(variance, template, template_var, gain, mismatch)
    good &= np.isfinite(data)
    w = np.where(good, w, 0.0)
    d = np.where(good, data, 0.0)
    t = np.where(good, t, 0.0)
    if good.sum() < 20:
        return -math.inf
    gram = np.array([[np.sum(w * t * t), np.sum(w * t)], [np.sum(w * t), np.sum(w)]])
    try:
        beta = np.linalg.solve(gram, [np.sum(w * t * d), np.sum(w * d)])
        inverse = np.linalg.inv(gram)
    except np.linalg.LinAlgError:
        return -math.inf
    r = d - beta[0] * t - beta[1]
    ny, nx = data.shape
    # the kernel reaches no further than from one side of the stamp to the other
    half = min(int(math.ceil(4.0 * psf_sigma + 0.5 * length)) + 1, max(ny, nx))
    size = 2 * half + 1
    quantities = (w * r, w, w * t)
    windows = [np.lib.stride_tricks.sliding_window_view(np.pad(q, half), (size, size)) for q in quantities]
    best = -math.inf
    for ox in sorted({x % 1.0, (x + 0.5) % 1.0}):
        # the pixels i whose position i + ox lies within the reach (and on the stamp)
        i0, i1 = max(int(math.floor(x - ox - max_shift)), 0), min(int(math.ceil(x - ox + max_shift)), nx - 1)
        for oy in sorted({y % 1.0, (y + 0.5) % 1.0}):
            j0, j1 = max(int(math.floor(y - oy - max_shift)), 0), min(int(math.ceil(y - oy + max_shift)), ny - 1)
            if i1 < i0 or j1 < j0:
                continue
            kernel = trailed_psf(half + ox, half + oy, length, theta, psf_sigma, 0, 0, size)
            if (j1 - j0 + 1) * (i1 - i0 + 1) * size * size <= DIRECT_SUMS_MAX:
                # the windows of the positions within the reach against the kernel
                wr, ww, wt = (v[j0:j1 + 1, i0:i1 + 1] for v in windows)
                a = np.einsum("jiyx,yx->ji", wr, kernel)
                b = np.einsum("jiyx,yx->ji", ww, kernel * kernel)
                c = np.einsum("jiyx,yx->ji", wt, kernel)
                e = np.einsum("jiyx,yx->ji", ww, kernel)
            else:
                # a wide reach or a long trail: the correlations over the whole stamp by FFT
                flipped = kernel[::-1, ::-1]
                part = (slice(j0, j1 + 1), slice(i0, i1 + 1))
                a, c = (fftconvolve(q, flipped, mode="same")[part] for q in (quantities[0], quantities[2]))
                b = fftconvolve(quantities[1], flipped * flipped, mode="same")[part]
                e = fftconvolve(quantities[1], flipped, mode="same")[part]
            left = b - (inverse[0, 0] * c * c + 2.0 * inverse[0, 1] * c * e + inverse[1, 1] * e * e)
            gy, gx = np.mgrid[j0:j1 + 1, i0:i1 + 1]
            reach = np.hypot(gx + ox - x, gy + oy - y) <= max_shift + 1e-9
            ok = reach & (left > 1e-12 * np.maximum(b, 1e-300)) & (a > 0)
            if ok.any():
                best = max(best, float(np.max(a[ok] / np.sqrt(left[ok]))))
    return best


def best_snr_reference(data, variance, template, template_var, *, x, y, length, theta, psf_sigma, gain, max_shift,
                       mismatch=TEMPLATE_MISMATCH) -> float:
    """:func:`best_snr_beside_template` by one linear fit (:func:`fit_beside_template`'s model and first weights)
    per position of the half-pixel grid through ``(x, y)`` within ``max_shift`` px (slow; the parity test's
    reference)."""
    good, t, w = _first_weights(variance, template, template_var, gain, mismatch)
    good &= np.isfinite(data)
    n = data.shape[0]
    if good.sum() < 20:
        return -math.inf
    flat = good.ravel()
    d, wv = np.nan_to_num(data).ravel()[flat], w.ravel()[flat]
    best = -math.inf
    steps = int(math.ceil(2.0 * max_shift)) + 1
    for i in range(-steps, steps + 1):
        for j in range(-steps, steps + 1):
            px, py = x + 0.5 * i, y + 0.5 * j
            if math.hypot(px - x, py - y) > max_shift + 1e-9 or not (0.0 <= px < n and 0.0 <= py < n):
                continue
            cols = _model_columns(px, py, length, theta, psf_sigma, t, n)[flat]
            a = cols * np.sqrt(wv)[:, None]
            try:
                cov = np.linalg.inv(a.T @ a)
            except np.linalg.LinAlgError:
                continue
            coef = cov @ (a.T @ (d * np.sqrt(wv)))
            if coef[0] > 0 and cov[0, 0] > 0:
                best = max(best, float(coef[0] / math.sqrt(cov[0, 0])))
    return best


def fit_with_static_sky(
    stamps: np.ndarray, variances: np.ndarray, positions: np.ndarray, *, target: int, length: float, theta: float,
    psf_sigma: float, gain: float, max_shift: float, mismatch: float = TEMPLATE_MISMATCH,
) -> dict | None:
    """Fit a slow mover in one exposure jointly with the static sky under it, over several exposures' stamps.

    Where a mover moves too little for any exposure to show the static sky without it (a 0.5-1"/h mover on a
    star or galaxy in two of four exposures: no template for :func:`fit_beside_template`), the exposures are
    fitted together: ``d_t(p) = S(p) + f_t P(p; x_t, y_t)``, one static sky ``S`` for all (a free value per pixel,
    profiled out: the weighted mean of ``d_t - f_t P_t`` over the exposures) and a flux ``f_t`` per exposure; the
    other exposures' positions are the predictions, the target's is fitted within ``max_shift`` px.  Only the
    target's flux ``f_target`` is the measurement: the others' light is not counted as the target's.  The fluxes are
    told apart by the mover's motion between the exposures alone, so their errors grow as the motion shrinks.

    Parameters
    ----------
    stamps, variances : ndarray (m, n, n)
        The exposures' pixels on the target stamp's grid [ADU, background subtracted; NaN where bad] (the target's
        own, the others resampled onto it: :func:`resample_stamp`) and their noise variance [ADU^2].
    positions : ndarray (m, 2)
        The mover's predicted ``(x, y)`` in each stamp [px, 0-based, stamp frame]; the target's is where its fit
        starts.
    target : int
        Index of the measured exposure in ``stamps``.
    length, theta : float
        Trail length [px] and angle [rad] of the motion during an exposure (the same in all).
    psf_sigma, gain : float
        PSF Gaussian sigma [px]; gain [e-/ADU].
    max_shift : float
        Largest distance [px] of the target's fitted position from its prediction.
    mismatch : float
        Relative error of the static sky between exposures (resampling an undersampled PSF, PSF changes).

    Returns
    -------
    dict or None
        As :func:`fit_beside_template` (``scale`` 1: the static sky is fitted, not scaled; the template is the fitted
        ``S``), plus ``spread`` [px]: the largest distance of the mover's position in another exposure from the
        target's (what tells the fluxes apart), and ``joint`` (True: :func:`accept_recovery` does not refuse it as
        too close to the static source, whose light the other exposures separate).  None with fewer than two exposures, too few pixels seen twice, or
        a singular fit.
    """
    stamps = np.asarray(stamps, float)
    variances = np.asarray(variances, float)
    positions = np.asarray(positions, float)
    m, n = stamps.shape[0], stamps.shape[1]
    if m < 2 or not 0 <= target < m:
        return None
    ok = np.isfinite(stamps) & np.isfinite(variances)
    twice = ok.sum(axis=0) >= 2  # (n, n): pixels two exposures see (the others hold no information on S)
    if twice.sum() < 20 or not ok[target][twice].sum() >= 10:
        return None
    d = np.where(ok, stamps, 0.0)[:, twice]  # (m, k)
    g = max(float(gain), 1e-6)
    sky = np.nanmedian(np.where(ok, stamps, np.nan)[:, twice], axis=0)  # (k,) the static sky, the mover aside
    var0 = np.where(ok, variances, 0.0)[:, twice] + np.clip(sky, 0.0, None) / g + (mismatch * sky) ** 2
    psfs = [trailed_psf(float(positions[t, 0]), float(positions[t, 1]), length, theta, psf_sigma, 0, 0, n)[twice]
            for t in range(m)]
    x0, y0 = float(positions[target, 0]), float(positions[target, 1])

    def weighting(var):
        w = np.where(ok[:, twice], 1.0 / np.maximum(var, 1e-12), 0.0)  # (m, k)
        share = w / np.maximum(w.sum(axis=0), 1e-300)
        return w, share, np.sqrt(w)

    def solve(p, w, share, sw):
        ps = list(psfs)
        ps[target] = trailed_psf(p[0], p[1], length, theta, psf_sigma, 0, 0, n)[twice]
        cols = np.zeros((m, d.shape[1], m))  # the columns of the fluxes, the sky profiled out
        for s_ in range(m):
            cols[:, :, s_] = -share[s_] * ps[s_]
            cols[s_, :, s_] += ps[s_]
        a = (cols * sw[:, :, None]).reshape(m * d.shape[1], m)
        rhs = ((d - np.sum(share * d, axis=0)) * sw).ravel()  # d_t less the weighted mean over t
        coef, *_ = np.linalg.lstsq(a, rhs, rcond=None)
        return coef, float(np.sum((rhs - a @ coef) ** 2)), a, ps

    def best(start, w, share, sw):
        def chi2(p):
            return 1e30 if math.hypot(p[0] - x0, p[1] - y0) > max_shift else solve(p, w, share, sw)[1]

        res = minimize(chi2, start, method="Nelder-Mead",
                       options={"xatol": 0.005, "fatol": 1e-3, "initial_simplex": [start, start + [0.5, 0],
                                                                                   start + [0, 0.5]]})
        return res.x

    # first the static sky's noise alone; then the movers' own (their photon noise, and the PSF model's mismatch
    # in every exposure: a bright mover is in all of them here, not masked as beside a template)
    w, share, sw = weighting(var0)
    p = best(np.array([x0, y0]), w, share, sw)
    coef, _, _, ps = solve(p, w, share, sw)
    mover = np.clip(coef[:, None] * np.array(ps), 0.0, None)
    w, share, sw = weighting(var0 + mover / g + (mismatch * mover) ** 2)
    p = best(p, w, share, sw)
    if math.hypot(p[0] - x0, p[1] - y0) > max_shift:
        return None
    coef, c2, a, ps = solve(p, w, share, sw)
    f = coef[target]
    h = 0.01
    dpx = (trailed_psf(p[0] + h, p[1], length, theta, psf_sigma, 0, 0, n)[twice]
           - trailed_psf(p[0] - h, p[1], length, theta, psf_sigma, 0, 0, n)[twice]) / (2 * h)
    dpy = (trailed_psf(p[0], p[1] + h, length, theta, psf_sigma, 0, 0, n)[twice]
           - trailed_psf(p[0], p[1] - h, length, theta, psf_sigma, 0, 0, n)[twice]) / (2 * h)

    def position_column(deriv):
        col = np.repeat((-share[target] * deriv * f)[None, :], m, axis=0)  # (m, k): through the profiled sky
        col[target] += deriv * f
        return (col * sw).ravel()

    jac = np.column_stack([a, position_column(dpx), position_column(dpy)])
    n_obs = int(ok[:, twice].sum())
    dof = max(n_obs - int(twice.sum()) - m - 2, 1)
    try:
        cov = np.linalg.inv(jac.T @ jac) * max(1.0, c2 / dof)
    except np.linalg.LinAlgError:
        return None
    diag = np.diag(cov)
    if not np.all(np.isfinite(diag)) or np.any(diag < 0):
        return None
    # the static sky fitted and its brightest pixel near the mover (see accept_recovery's "too close")
    psf_t = ps[target]
    static = np.full((n, n), np.nan)
    static[twice] = np.sum(share * (d - coef[:, None] * np.array(ps)), axis=0)
    yy, xx = np.mgrid[0:n, 0:n]
    near = np.hypot(xx - p[0], yy - p[1]) <= 4.0 * psf_sigma + 0.5 * length
    peak = np.where(near & np.isfinite(static), np.nan_to_num(static), -np.inf)
    k = int(np.argmax(peak))
    if np.isfinite(peak.ravel()[k]):
        px, py = xx.ravel()[k], yy.ravel()[k]
        separation = float(math.hypot(px - p[0], py - p[1]))
        along = float(np.clip((px - p[0]) * math.cos(theta) + (py - p[1]) * math.sin(theta), -0.5 * length,
                              0.5 * length))
        off_track = float(math.hypot(px - p[0] - along * math.cos(theta), py - p[1] - along * math.sin(theta)))
        static_peak = float(peak.ravel()[k])
    else:
        separation = off_track = float("inf")
        static_peak = 0.0
    spread = float(np.max(np.hypot(positions[:, 0] - p[0], positions[:, 1] - p[1])))
    flux_err = float(math.sqrt(diag[target]))
    return {"flux": float(f), "flux_err": flux_err, "x": float(p[0]), "y": float(p[1]),
            "x_err": float(math.hypot(math.sqrt(diag[m]), POSITION_FLOOR_PX)),
            "y_err": float(math.hypot(math.sqrt(diag[m + 1]), POSITION_FLOOR_PX)), "scale": 1.0,
            "chi2_dof": float(c2 / dof), "n_pixels": int(twice.sum()), "separation": separation,
            "template_peak": static_peak, "mover_peak": float(f * np.max(psf_t)) if psf_t.size else 0.0,
            "off_track": off_track, "unit_scale_flux": float(f), "unit_scale_flux_err": flux_err, "spread": spread,
            "joint": True}


def accept_recovery(fit: dict | None, pair_flux: float, pair_flux_err: float, *, min_snr: float, flux_scatter: float,
                    max_chi2_dof: float, max_position_error: float, psf_sigma: float = 1.0) -> str:
    """Why a blend measurement is refused, or ``"ok"``.

    Refusals: ``no fit``, ``faint`` (flux below ``min_snr`` times its error), ``scale`` (template scale more
    than :data:`MAX_SCALE_CHANGE` from 1 while the static source shows: the PSF took its place; unless that source
    lies off the mover's track (``fit["off_track"]`` beyond twice :data:`MIN_SEPARATION_SIGMA` PSF sigmas) and the
    flux fitted with the template at scale 1 is as significant and consistent with the pair's), ``too close``
    (within :data:`MIN_SEPARATION_SIGMA` PSF sigmas of a template peak brighter than the mover; for a joint fit,
    ``fit["joint"]``, only of one :data:`JOINT_MAX_CONTRAST` times brighter: :func:`fit_with_static_sky` separates
    the two sources by the other exposures, and its scale is 1), ``flux``
    (inconsistent with the pair's at 3 sigma given ``flux_scatter``, or beyond :data:`MAX_FLUX_FACTOR`),
    ``residuals`` (reduced chi2 of the stamp above ``max_chi2_dof``, and of the pixels around the mover's trail,
    ``local_chi2_dof`` when the fit gives it: the template did not take the static sky away where the mover is; a
    bright star's wings left elsewhere in the stamp do not refuse it), ``imprecise`` (position error above
    ``max_position_error`` px).
    """
    if fit is None:
        return "no fit"
    if not fit["flux"] > min_snr * fit["flux_err"]:
        return "faint"
    static_shows = fit["template_peak"] > 0.5 * fit["mover_peak"]
    joint = bool(fit.get("joint"))  # fitted with the static sky (fit_with_static_sky): no scale, no trade
    # (the scale fitted over the whole stamp: left out as outliers, a star's core no longer holds the scale at 1)
    if static_shows and not joint and abs(fit.get("scale_all", fit["scale"]) - 1.0) > MAX_SCALE_CHANGE:
        # the PSF may have taken the static source's place; not when that source lies off the mover's track
        # and the mover's flux stands as well with the template at its level (a V 23.4 fast mover's 116 px
        # trail, S/N 12, measured 38 px from a galaxy of the template at scale 0.39, was refused so and lost)
        unit, unit_err = fit.get("unit_scale_flux", np.nan), fit.get("unit_scale_flux_err", np.nan)
        beyond = fit.get("off_track", 0.0) > 2.0 * MIN_SEPARATION_SIGMA * psf_sigma
        if not (beyond and unit > min_snr * unit_err
                and _consistent(unit, unit_err, pair_flux, pair_flux_err, flux_scatter)):
            return "scale"
    contrast = JOINT_MAX_CONTRAST if joint else 1.0
    if fit["template_peak"] > contrast * fit["mover_peak"] and fit["separation"] < MIN_SEPARATION_SIGMA * psf_sigma:
        return "too close"
    if not _consistent(fit["flux"], fit["flux_err"], pair_flux, pair_flux_err, flux_scatter) or not (
            pair_flux / MAX_FLUX_FACTOR <= fit["flux"] <= pair_flux * MAX_FLUX_FACTOR):
        return "flux"
    if fit["chi2_dof"] > max_chi2_dof and fit.get("local_chi2_dof", math.inf) > max_chi2_dof:
        return "residuals"
    if math.hypot(fit["x_err"], fit["y_err"]) > max_position_error:
        return "imprecise"
    return "ok"


def choose_tracklets(groups: list, *, max_chi2_dof: float, min_rate: float, max_rate,
                     min_rate_significance: float) -> tuple[list, dict]:
    """The pairs whose measurements line up into a tracklet, each detection used once (more detections, then the
    better fit, first).

    Parameters
    ----------
    groups : list of tuple
        ``(keys, t, xi, eta, sigma)`` per pair with its measurements: ``keys`` a set naming the detections and
        measurements it uses (two groups sharing one conflict), times [h], positions and errors [arcsec] (n,).
    max_chi2_dof, min_rate, min_rate_significance : float
        The linker's acceptance of a linear motion.
    max_rate : float or sequence of float
        Fastest accepted motion [arcsec/h], for all groups or one per group.

    Returns
    -------
    chosen : list of (int, Tracklet)
        Index into ``groups`` and its fit (members in the order given), best first.
    counts : dict
        ``n_rejected_fit`` (not a motion the linker would accept), ``n_conflicts`` (sharing a detection with a
        better one).
    """
    counts = {"n_rejected_fit": 0, "n_conflicts": 0}
    fits = []
    limits = np.broadcast_to(np.asarray(max_rate, float), (len(groups),))
    for k, (keys, t, xi, eta, sigma) in enumerate(groups):
        params, cov, chi2, t_ref = fit_linear_motion(t, xi, eta, sigma)
        dof = 2 * len(t) - 4
        trk = Tracklet(tuple(range(len(t))), *params, cov, chi2, dof, t_ref)
        if chi2 / max(dof, 1) > max_chi2_dof or not min_rate <= trk.rate <= limits[k] or (
                trk.rate < min_rate_significance * trk.rate_err):
            counts["n_rejected_fit"] += 1
            continue
        fits.append((k, trk))
    fits.sort(key=lambda f: (-len(groups[f[0]][1]), f[1].chi2 / max(f[1].dof, 1)))
    taken: set = set()
    chosen = []
    for k, trk in fits:
        if groups[k][0] & taken:
            counts["n_conflicts"] += 1
            continue
        taken |= groups[k][0]
        chosen.append((k, trk))
    return chosen, counts
