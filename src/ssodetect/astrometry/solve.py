"""Astrometric and photometric calibration of one CCD across the exposures of a field.

For every exposure: select star-like detections, find the reference stars
through the header WCS by pattern matching (tolerating pointing errors of
``max_pointing_error``, rotations of ``max_rotation`` and scale errors of
``max_scale_error``) or, without a usable header, by a blind solve; then refine:
re-match all stars, fit TAN+SIP (jointly over the exposures when configured),
clip, re-match within ``match_radius``, refit.  Solutions failing the quality
checks (too few stars, absurd rms or scale) are reported with the reason.  The
zero point comes from the same matched stars.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from ssodetect.astrometry.blind import blind_solve, build_sky_indexes
from ssodetect.astrometry.match import PatternIndex, match_grid, match_nearest, match_offset, match_patterns
from ssodetect.astrometry.refcat import propagate
from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.astrometry.wcsfit import MatchedStars, WCSSolution, fit_wcs, max_order_for, polynomial_terms
from ssodetect.astrometry.zeropoint import fit_zeropoint
from ssodetect.config import AstrometryConfig
from ssodetect.io.headers import world_to_pixels

__all__ = ["ExposureStars", "ExposureSolution", "star_like", "solve_ccd", "pixel_scale", "reference_at", "SOLUTION_COLUMNS"]

log = logging.getLogger(__name__)

#: Columns of the per-CCD-exposure solution table (``astrometry.ecsv``).
SOLUTION_COLUMNS = [
    ("exposure", "i8", "", "exposure index"),
    ("ccd", "U32", "", "CCD identifier"),
    ("status", "U8", "", "ok | failed"),
    ("method", "U10", "", "header (matched through the header WCS) | blind | registered (onto a solved exposure of "
                          "the CCD) | guided (through the header corrected by the exposure's other CCDs) | exposure "
                          "(that corrected header itself: too few stars of its own)"),
    ("reason", "U160", "", "why the solution failed (empty when ok)"),
    ("n_matched", "i8", "", "detections matched to reference stars"),
    ("n_stars", "i8", "", "stars used by the fit after clipping"),
    ("sip_order", "i8", "", "SIP order fitted (1 = TAN only)"),
    ("rms_ra", "f8", "arcsec", "residual rms in RA*cos(dec)"),
    ("rms_dec", "f8", "arcsec", "residual rms in Dec"),
    ("wcs_error", "f8", "arcsec", "per-axis uncertainty of the solution at a point"),
    ("wcs_error_shared", "f8", "arcsec", "part of wcs_error that the CCD's other exposures solved the same way share "
                                         "(the optical distortion a corrected header lacks): it cancels between them"),
    ("header_offset", "f8", "arcsec", "header WCS minus solution at the CCD centre"),
    ("header_rotation", "f8", "deg", "rotation of the solution relative to the header"),
    ("header_scale", "f8", "", "pixel scale of the solution / header pixel scale"),
    ("pixel_scale", "f8", "arcsec / pix", "pixel scale of the solution"),
    ("zeropoint", "f8", "mag", "fitted zero point: mag = zp - 2.5 log10(ADU/s)"),
    ("zeropoint_err", "f8", "mag", "standard error of the zero point"),
    ("n_zeropoint", "i8", "", "stars used for the zero point"),
    ("n_zeropoint_usable", "i8", "", "matched stars usable for it (positive flux at S/N >= 10, a catalogue "
                                     "magnitude): fewer than half of them used says the magnitudes are wrong"),
    ("stars_trailed", "bool", "", "reference stars taken from trails (trail centres): the stars are trailed "
                                  "([astrometry] trailed_stars, or found so by auto)"),
    ("star_trail_length", "f8", "pix", "length of the trail the bright compact sources share (NaN: none)"),
    ("star_trail_angle", "f8", "deg", "its axis, from +x towards +y, 0-180 (NaN: none)"),
]


#: Rotation [deg] and relative scale errors searched by offset voting on a grid (larger ones: triangles).
GRID_MAX_ROTATION = 1.0
GRID_MAX_SCALE = 0.01


@dataclass
class ExposureStars:
    """What the solver needs from one exposure of one CCD.

    Attributes
    ----------
    exposure : int
    mjd : float
        Mid-exposure time, MJD UTC (for proper motions).
    exptime : float
        [s].
    shape : (ny, nx)
    header_wcs : WCS or None
        WCS from the header (None when unusable).
    sources : Table
        Star-like detections, brightest first: ``x, y`` (0-based px), ``x_err,
        y_err`` [px], ``flux, flux_err`` [ADU].
    zeropoint : float or None
        Header zero point (to pre-select catalogue stars by brightness), None if unknown.
    """

    exposure: int
    mjd: float
    exptime: float
    shape: tuple[int, int]
    header_wcs: WCS | None
    sources: Table
    zeropoint: float | None = None


@dataclass
class ExposureSolution:
    """Calibration of one exposure of one CCD (see :data:`SOLUTION_COLUMNS`)."""

    exposure: int
    ccd: str
    status: str = "failed"
    method: str = ""
    reason: str = ""
    wcs: WCS | None = None
    n_matched: int = 0
    n_stars: int = 0
    sip_order: int = 0
    rms_ra: float = float("nan")
    rms_dec: float = float("nan")
    wcs_error: float = float("nan")
    wcs_error_shared: float = 0.0
    header_offset: float = float("nan")
    header_rotation: float = float("nan")
    header_scale: float = float("nan")
    pixel_scale: float = float("nan")
    zeropoint: float = float("nan")
    zeropoint_err: float = float("nan")
    n_zeropoint: int = 0
    n_zeropoint_usable: int = 0
    stars_trailed: bool = False
    star_trail_length: float = float("nan")
    star_trail_angle: float = float("nan")
    residuals: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def row(self) -> dict:
        """The values of :data:`SOLUTION_COLUMNS`."""
        return {name: getattr(self, name) for name, *_ in SOLUTION_COLUMNS}


#: With a header WCS, blind solving searches pixel scales within this factor of the header's (the header's
#: position may be far off, its scale rarely by more than a few per cent).
HEADER_SCALE_SLACK = 1.3


def pixel_scale(wcs: WCS) -> float:
    """Mean pixel scale [arcsec/px] at the reference pixel."""
    return float(np.sqrt(abs(np.linalg.det(wcs.celestial.pixel_scale_matrix))) * 3600.0)


def star_like(detections: Table, min_snr: float, *, trailed: bool = False) -> np.ndarray:
    """Detections usable as astrometric reference stars: unflagged, unmasked, SNR >= min_snr, and
    point-like (or, with ``trailed``, trails: stars trailed by the telescope, centred by the trail fit)."""
    return (
        (np.asarray(detections["kind"]) == ("trail" if trailed else "point"))
        & ~np.asarray(detections["near_mask"], bool)
        & (np.asarray(detections["snr"], float) >= min_snr)
        # deblended (1) and a masked pixel in the aperture (32, e.g. a flagged cosmic ray) are fine;
        # truncated at the edge, overflowed or all masked are not
        & (np.asarray(detections["sep_flag"]) & ~(1 | 32) == 0)
    )


@dataclass
class _Reference:
    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray
    sigma: np.ndarray  # [arcsec]
    colour: np.ndarray | None


def reference_at(reference: Table, mjd: float) -> _Reference:
    """The reference stars at ``mjd`` (UTC): positions propagated, per-axis errors [arcsec], G, colour."""
    ra, dec = propagate(reference, Time(mjd, format="mjd", scale="utc"))
    sigma = np.hypot(np.asarray(reference["ra_error"], float), np.asarray(reference["dec_error"], float)) / 1000.0
    colour = np.asarray(reference["bp_rp"], float) if "bp_rp" in reference.colnames else None
    return _Reference(ra, dec, np.asarray(reference["phot_g_mean_mag"], float), sigma / math.sqrt(2.0), colour)


def _source_mags(src: Table, exptime: float, zeropoint: float | None) -> np.ndarray | None:
    if zeropoint is None:
        return None
    flux = np.asarray(src["flux"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return zeropoint - 2.5 * np.log10(np.where(flux > 0, flux, np.nan) / max(exptime, 1e-9))


def _match_through_header(src: Table, ref: _Reference, item: ExposureStars, cfg: AstrometryConfig, wcs: WCS):
    """Pairs (source, reference) found by pattern matching through an approximate WCS, or a reason."""
    ny, nx = item.shape
    scale = pixel_scale(wcs)
    half_diag = 0.5 * math.hypot(nx, ny)
    ra_c, dec_c = wcs.all_pix2world([(nx - 1) / 2.0], [(ny - 1) / 2.0], 0)
    plane = TangentPlane(float(ra_c[0]), float(dec_c[0]))
    px, py = plane.to_plane(ref.ra, ref.dec)
    reach = half_diag * scale * (1 + cfg.max_scale_error) + cfg.max_pointing_error * 1.2 + 5.0
    near = np.nonzero(np.hypot(px, py) < reach)[0]
    if near.size < cfg.min_stars:
        return None, f"only {near.size} reference stars near the header footprint (need {cfg.min_stars})"
    x, y = world_to_pixels(wcs, ref.ra[near], ref.dec[near])  # NaN (not inside) where it does not converge
    margin = cfg.max_pointing_error / scale + half_diag * math.radians(cfg.max_rotation) + 10.0
    inside = (x > -margin) & (x < nx + margin) & (y > -margin) & (y < ny + margin)
    mags = _source_mags(src, item.exptime, item.zeropoint)
    if mags is not None and np.isfinite(mags).any():
        inside &= ref.mag[near] > np.nanmin(mags) - 1.0  # stars saturated in the image are not in the source list
    sel = near[inside]
    if sel.size < cfg.min_stars:
        return None, f"only {sel.size} unsaturated reference stars in the header footprint (need {cfg.min_stars})"
    order = np.argsort(ref.mag[sel])
    sel = sel[order]
    ref_xy = np.column_stack([x[inside][order], y[inside][order]])
    area = (nx + 2 * margin) * (ny + 2 * margin)
    n_src = min(25, len(src))
    n_ref = int(min(90, max(30, 1.5 * n_src * area / (nx * ny))))
    src_xy = np.column_stack([np.asarray(src["x"], float), np.asarray(src["y"], float)])
    radius = cfg.pattern_radius / scale
    min_matches = min(cfg.min_stars, 6)
    shifted = PatternIndex(ref_xy, n_ref=0, area=area)
    # 1. a right header is never lost: every source's nearest reference, before any pattern; 2. a header right up
    # to a shift (the usual case): offset voting, ~10x faster than triangles; 3. a shift, a small rotation and a
    # scale error: offset voting over a grid of rotations and scales
    result = match_nearest(src_xy, shifted, match_radius=min(radius, 2.0 * cfg.match_radius / scale),
                           min_matches=min_matches)
    if result is None:
        result = match_offset(src_xy, shifted, max_shift=margin, match_radius=radius, n_src=n_src, n_ref=n_ref,
                              min_matches=min_matches)
    if result is None and (cfg.max_rotation > 0 or cfg.max_scale_error > 0):
        result = match_grid(src_xy, shifted, centre=((nx - 1) / 2.0, (ny - 1) / 2.0), max_shift=margin,
                            max_rotation=min(cfg.max_rotation, GRID_MAX_ROTATION),
                            max_scale=min(cfg.max_scale_error, GRID_MAX_SCALE), match_radius=radius,
                            n_src=max(n_src, 60), n_ref=max(n_ref, 120), min_matches=min_matches)
    if result is not None:
        pairs = result.pairs.copy()
        pairs[:, 1] = sel[pairs[:, 1]]
        return pairs, ""
    index = PatternIndex(ref_xy, n_ref=n_ref, min_side=0.04 * math.hypot(nx, ny), area=area)
    d = cfg.max_scale_error
    result = match_patterns(
        src_xy, index, scale_range=(1.0 / (1.0 + d) - 1e-3, 1.0 / max(1.0 - d, 1e-3) + 1e-3),
        max_rotation=cfg.max_rotation + 0.25, parities=(1,), max_shift=margin,
        match_radius=cfg.pattern_radius / scale, n_src=n_src, tolerance=0.01,
        min_matches=min(cfg.min_stars, 6), min_side=0.04 * math.hypot(nx, ny),
    )
    if result is None:
        return None, f"no pattern match between {len(src)} stars and {sel.size} reference stars through the header WCS"
    pairs = result.pairs.copy()
    pairs[:, 1] = sel[pairs[:, 1]]
    return pairs, ""


#: A solution's matched stars must exceed what chance alignment of the same sources and reference stars gives by this
#: many Poisson sigma (on a field of 393 000 stars per square degree, blind solutions of 7-9 "matches" with scales
#: 0.56-2.3 times the true one and rotations of 60-150 degrees had been accepted).
CHANCE_SIGMA = 5.0


def chance_matches(n_sources: int, ref: _Reference, wcs: WCS, radius_px: float, shape: tuple[int, int]) -> float:
    """Expected number of sources within ``radius_px`` of a reference star by chance.

    Each of ``n_sources`` lies within ``radius_px`` [px] of one of the reference stars that ``wcs`` puts on the
    ``(ny, nx)`` image with probability ``min(1, density x pi r^2)``, the density being those stars per px^2.
    """
    ny, nx = shape
    x, y = wcs.all_world2pix(ref.ra, ref.dec, 0, quiet=True)
    inside = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    density = float(np.sum(inside)) / float(nx * ny)
    return n_sources * min(1.0, density * math.pi * radius_px**2)


def enough_matches(n: int, expected: float, min_stars: int) -> bool:
    """At least ``min_stars`` matches and :data:`CHANCE_SIGMA` Poisson sigma above the ``expected`` chance ones."""
    return n >= min_stars and n >= expected + CHANCE_SIGMA * math.sqrt(max(expected, 1.0))


def _match_stars(src: Table, ref: _Reference, wcs: WCS, radius_px: float) -> np.ndarray:
    """One-to-one (source, reference) pairs within ``radius_px`` through ``wcs``."""
    if len(src) == 0:
        return np.zeros((0, 2), np.int64)
    sx, sy = np.asarray(src["x"], float), np.asarray(src["y"], float)
    pad = 50.0 + radius_px
    x, y = wcs.all_world2pix(ref.ra, ref.dec, 0, quiet=True)
    ok = np.isfinite(x) & np.isfinite(y)
    ok &= (x > sx.min() - pad) & (x < sx.max() + pad) & (y > sy.min() - pad) & (y < sy.max() + pad)
    cand = np.nonzero(ok)[0]
    if cand.size == 0:
        return np.zeros((0, 2), np.int64)
    tree = cKDTree(np.column_stack([x[cand], y[cand]]))
    dist, idx = tree.query(np.column_stack([sx, sy]), distance_upper_bound=radius_px)
    good = np.isfinite(dist)
    s_idx = np.nonzero(good)[0]
    r_idx = cand[idx[good]]
    order = np.argsort(dist[good])
    _, first = np.unique(r_idx[order], return_index=True)
    keep = order[first]
    return np.column_stack([s_idx[keep], r_idx[keep]]).astype(np.int64)


def _matched(src: Table, ref: _Reference, pairs: np.ndarray, crval, scale: float) -> MatchedStars:
    s, r = pairs[:, 0], pairs[:, 1]
    centroid = np.hypot(np.asarray(src["x_err"], float)[s], np.asarray(src["y_err"], float)[s]) / math.sqrt(2.0) * scale
    return MatchedStars(
        x=np.asarray(src["x"], float)[s],
        y=np.asarray(src["y"], float)[s],
        ra=ref.ra[r],
        dec=ref.dec[r],
        sigma=np.sqrt(centroid**2 + ref.sigma[r] ** 2 + 0.002**2),
        crval=crval,
    )


def _fit(matched: list[MatchedStars], crpix, order: int, cfg: AstrometryConfig, shape) -> list[WCSSolution]:
    ny, nx = shape
    return fit_wcs(matched, crpix=crpix, order=order, clip=cfg.clip, inverse_extent=(nx, ny))


def _fit_best(matched: list[MatchedStars], crpix, cfg: AstrometryConfig, shape) -> list[WCSSolution]:
    """Fit every SIP order the stars allow (up to ``cfg.sip_order``); keep the best by cross-validation.

    The score is the mean squared leave-one-out residual, normalised by each
    star's error (residual / (1 - leverage) for the stars used, the plain
    residual for clipped ones, each capped at ``(2 clip)^2``): an order that
    only fits the noise, or leaves the distortion unmodelled, predicts the stars
    it did not see badly.  Orders that leave fewer than 1.5 stars per parameter
    after clipping are not considered.
    """
    n_min = min(len(m.x) for m in matched)
    top = max_order_for(n_min, cfg.sip_order, n_exposures=len(matched), stars_per_param=1.5)
    if top < 1:
        raise ValueError(f"{n_min} matched stars")
    best, best_score = None, np.inf
    for order in range(1, top + 1):
        sols = _fit(matched, crpix, order, cfg, shape)
        shared = len(polynomial_terms(order, 2)) if order > 1 else 0
        params = 3 * len(matched) + shared
        # after clipping, as before it (max_order_for): enough measurements, and enough distinct stars in each
        # exposure for the distortion (its copies in the other dithered exposures do not constrain it again)
        if order > 1 and (sum(sol.n_stars for sol in sols) < 1.5 * params
                          or min(sol.n_stars for sol in sols) < 1.5 * (3 + shared)):
            continue
        loo = []
        for sol, m in zip(sols, matched):
            chi = np.hypot(sol.residuals[:, 0], sol.residuals[:, 1]) / m.sigma
            chi = chi / np.maximum(1.0 - np.where(sol.used, sol.leverage, 0.0), 0.05)
            loo.append(np.minimum(chi**2, (2.0 * cfg.clip) ** 2))
        score = float(np.mean(np.concatenate(loo)))
        if score < best_score:
            best, best_score = sols, score
    return best


def _refine(src, ref, pairs, crval0, scale0, crpix, config, shape) -> tuple[WCSSolution | None, str]:
    """Linear solution from pattern pairs, then a wider re-match and the per-exposure fit."""
    try:
        lin = _fit([_matched(src, ref, pairs, crval0, scale0)], crpix, 1, config, shape)[0]
        wider = _match_stars(src, ref, lin.wcs, config.pattern_radius / scale0)
        return _fit_best([_matched(src, ref, wider, crval0, scale0)], crpix, config, shape)[0], ""
    except (ValueError, np.linalg.LinAlgError) as exc:
        return None, f"too few stars for a fit ({exc})"


def solve_ccd(ccd: str, items: list[ExposureStars], reference: Table, config: AstrometryConfig, *,
              quiet: bool = False) -> list[ExposureSolution]:
    """Calibrate the exposures of one CCD against the reference catalogue.

    Parameters
    ----------
    ccd : str
        CCD identifier (for messages and the result rows).
    items : list of ExposureStars
        The exposures of this CCD.
    reference : Table
        Reference catalogue with Gaia column names (:func:`load_reference_catalogue`).
    config : AstrometryConfig
    quiet : bool
        Failures are logged at debug level instead of as warnings (a second attempt whose caller reports).

    Returns
    -------
    list of ExposureSolution
        One per item, in order; failures carry ``status='failed'`` and a reason.
    """
    results = [ExposureSolution(exposure=it.exposure, ccd=ccd) for it in items]
    refs = [reference_at(reference, it.mjd) for it in items]
    indexes = None
    initial: dict[int, WCS] = {}
    for k, (it, ref, res) in enumerate(zip(items, refs, results)):
        src = it.sources
        ny, nx = it.shape
        crpix = ((nx + 1) / 2.0, (ny + 1) / 2.0)
        pairs = None
        reasons = []
        if len(src) < 3:
            res.reason = f"only {len(src)} star-like detections"
            continue
        guide = it.header_wcs
        if guide is None and initial:
            # no header: the previous exposure's solution is a good guide (dithers are small)
            guide = initial[max(initial)]
        if guide is not None:
            pairs, why = _match_through_header(src, ref, it, config, guide)
            if pairs is not None:
                res.method = "header" if it.header_wcs is not None else "blind"
                scale0 = pixel_scale(guide)
                crval0 = tuple(float(v[0]) for v in guide.all_pix2world([crpix[0] - 1], [crpix[1] - 1], 0))
            elif it.header_wcs is not None:
                reasons.append(why)
        if it.header_wcs is None:
            reasons.append("no usable header WCS")
        hopeless = it.header_wcs is not None and reasons and reasons[-1].startswith("only")
        if pairs is None and config.blind and not hopeless:
            if indexes is None:
                lo, hi = config.pixel_scale_range
                if guide is not None:  # a wrong header still gives the pixel scale to ~10 %: search near it only
                    near = pixel_scale(guide)
                    if lo <= near <= hi:
                        lo, hi = max(lo, near / HEADER_SCALE_SLACK), min(hi, near * HEADER_SCALE_SLACK)
                indexes = build_sky_indexes(ref.ra, ref.dec, ref.mag, it.shape, (lo, hi))
            pointing = tuple(config.blind_pointing) if config.blind_pointing else None
            if pointing is None and guide is not None:  # a wrong header still says roughly where: nearest tiles first
                centre = guide.all_pix2world([crpix[0] - 1], [crpix[1] - 1], 0)
                pointing = (float(centre[0][0]), float(centre[1][0]), 180.0)
            xy = np.column_stack([np.asarray(src["x"], float), np.asarray(src["y"], float)])

            def holds(candidate, src=src, ref=ref, crpix=crpix, shape=it.shape):
                """The candidate survives the refinement: enough stars within match_radius afterwards, far more
                than chance alignment gives."""
                crval = tuple(float(v) for v in candidate.wcs.wcs.crval)
                sol, _ = _refine(src, ref, candidate.pairs, crval, candidate.pixel_scale, crpix, config, shape)
                if sol is None:
                    return False
                radius = config.match_radius / candidate.pixel_scale
                final = _match_stars(src, ref, sol.wcs, radius)
                return enough_matches(len(final), chance_matches(len(src), ref, sol.wcs, radius, shape),
                                      config.min_stars)

            blind, why = blind_solve(
                xy, it.shape, indexes, pointing=pointing, match_radius=config.pattern_radius,
                min_matches=config.min_stars, accept=holds, max_tiles=config.blind_max_tiles,
            )
            if blind is not None:
                pairs = blind.pairs
                res.method = "blind"
                scale0 = blind.pixel_scale
                crval0 = tuple(float(v) for v in blind.wcs.wcs.crval)
            else:
                reasons.append(f"blind solve: {why}")
        if pairs is None:
            res.reason = "; ".join(reasons)
            continue
        sol, why = _refine(src, ref, pairs, crval0, scale0, crpix, config, it.shape)
        if sol is None:
            res.reason = why
            continue
        initial[k] = sol.wcs
        if res.method == "blind" and it.header_wcs is not None:  # a header that is wrong is said, not passed over
            off, turn, ratio = header_error(it.header_wcs, sol.wcs, it.shape)
            log.log(logging.DEBUG if quiet else logging.WARNING, "CCD %s exposure %d: the header WCS does not fit "
                    "the stars (%s); solved blind: the header is %.1f\" off at the centre, turned %.1f deg, its "
                    "scale x%.4f", ccd, res.exposure, "; ".join(reasons) or "no match", off, turn, ratio)
    # final matching within match_radius and the (joint) fit
    solved = sorted(initial)
    matched: dict[int, MatchedStars] = {}
    pairs_final: dict[int, np.ndarray] = {}
    for k in solved:
        it, ref = items[k], refs[k]
        scale = pixel_scale(initial[k])
        pairs = _match_stars(it.sources, ref, initial[k], config.match_radius / scale)
        results[k].n_matched = len(pairs)
        chance = chance_matches(len(it.sources), ref, initial[k], config.match_radius / scale, it.shape)
        if not enough_matches(len(pairs), chance, config.min_stars):
            results[k].reason = (f"only {len(pairs)} stars matched within {config.match_radius}\" (need {config.min_stars}, "
                                 f"and {CHANCE_SIGMA:g} sigma above the {chance:.1f} that chance alignment gives)")
            continue
        crval = tuple(float(v) for v in initial[k].wcs.crval)
        matched[k] = _matched(it.sources, ref, pairs, crval, scale)
        pairs_final[k] = pairs
    keys = sorted(matched)
    try:
        solutions = _final_fits(keys, items, matched, config)
    except (ValueError, np.linalg.LinAlgError) as exc:
        for k in keys:
            results[k].reason = f"fit failed ({exc})"
        solutions = {}
    for k, sol in solutions.items():
        _finish(results[k], items[k], refs[k], sol, pairs_final[k], config)
    inconsistent_with_anchor(results)
    for res in results:
        if not res.ok:
            res.wcs = None
            log.log(logging.DEBUG if quiet else logging.WARNING, "CCD %s exposure %d: astrometric solution failed: %s",
                    ccd, res.exposure, res.reason)
    return results


#: Exposures of one CCD share its pixel scale and orientation (dithers shift the pointing): a solution whose
#: rotation differs from the CCD's best solution by more than this [deg], or its scale by more than
#: :data:`SAME_CCD_SCALE`, is a chance alignment.
SAME_CCD_ROTATION = 2.0
SAME_CCD_SCALE = 0.03


def header_error(header: WCS, solved: WCS, shape: tuple[int, int]) -> tuple[float, float, float]:
    """How far a header WCS is from a solution: the offset [arcsec] of the image centre, the rotation [deg, -180 to
    180] and the pixel-scale ratio (header over solution); ``shape`` is (ny, nx)."""
    ny, nx = shape
    ra1, dec1 = (float(v) for v in header.all_pix2world((nx - 1) / 2.0, (ny - 1) / 2.0, 0))
    ra2, dec2 = (float(v) for v in solved.all_pix2world((nx - 1) / 2.0, (ny - 1) / 2.0, 0))
    a1, d1, a2, d2 = (math.radians(v) for v in (ra1, dec1, ra2, dec2))
    hav = math.sin(0.5 * (d2 - d1)) ** 2 + math.cos(d1) * math.cos(d2) * math.sin(0.5 * (a2 - a1)) ** 2
    off = math.degrees(2.0 * math.asin(min(1.0, math.sqrt(hav)))) * 3600.0
    (s1, r1, _), (s2, r2, _) = _orientation(header), _orientation(solved)
    return off, (r1 - r2 + 180.0) % 360.0 - 180.0, s1 / s2


def _orientation(wcs: WCS) -> tuple[float, float, float]:
    """Pixel scale [arcsec/px], rotation [deg] and parity (sign of the determinant) of a WCS."""
    cd = wcs.celestial.pixel_scale_matrix
    return pixel_scale(wcs), math.degrees(math.atan2(cd[1, 0], cd[1, 1])), float(np.sign(np.linalg.det(cd)))


def inconsistent_with_anchor(results: list[ExposureSolution]) -> list[int]:
    """Solutions of one CCD's exposures that disagree with its best one, marked failed (in place).

    The anchor is the solved exposure with the most matched stars.  Another solution whose rotation differs by more
    than :data:`SAME_CCD_ROTATION`, scale by more than :data:`SAME_CCD_SCALE` (relative) or parity from the anchor's
    cannot be the same detector: a blind solve's chance alignment (on a field of 393 000 stars per square degree,
    solutions of 8-9 "matches" rotated by 60-150 degrees had been accepted beside ones of 240).  Those exposures fail
    with the reason; the pipeline may then register them onto the anchor.  Returns their indices in ``results``.
    """
    solved = [k for k, res in enumerate(results) if res.ok and res.wcs is not None]
    if len(solved) < 2:
        return []
    anchor = max(solved, key=lambda k: results[k].n_matched)
    a_scale, a_rot, a_parity = _orientation(results[anchor].wcs)
    bad = []
    for k in solved:
        if k == anchor:
            continue
        scale, rot, parity = _orientation(results[k].wcs)
        turn = abs((rot - a_rot + 180.0) % 360.0 - 180.0)
        if parity != a_parity or turn > SAME_CCD_ROTATION or abs(scale / a_scale - 1.0) > SAME_CCD_SCALE:
            res = results[k]
            res.status, res.wcs = "failed", None
            res.reason = (f"{res.method} solution ({res.n_matched} stars) rotated by {turn:.1f} deg and scaled by "
                          f"{scale / a_scale:.3f} from exposure {results[anchor].exposure}'s ({results[anchor].n_matched} "
                          f"stars) of the same CCD")
            bad.append(k)
    return bad


def _final_fits(keys, items, matched, config) -> dict[int, WCSSolution]:
    """Joint (one shape, several exposures) or per-exposure fits of the final matches."""
    solutions: dict[int, WCSSolution] = {}
    if keys:
        if config.joint and len(keys) > 1 and len({items[k].shape for k in keys}) == 1:
            ny, nx = items[keys[0]].shape
            fits_ = _fit_best([matched[k] for k in keys], ((nx + 1) / 2.0, (ny + 1) / 2.0), config, items[keys[0]].shape)
            solutions = dict(zip(keys, fits_))
        else:
            for k in keys:
                ny, nx = items[k].shape
                solutions[k] = _fit_best([matched[k]], ((nx + 1) / 2.0, (ny + 1) / 2.0), config, items[k].shape)[0]
    return solutions


def _finish(res: ExposureSolution, it: ExposureStars, ref: _Reference, sol: WCSSolution, pairs, config) -> None:
    """Quality checks, header comparison and zero point of one solved exposure."""
    ny, nx = it.shape
    scale = pixel_scale(sol.wcs)
    res.n_stars, res.sip_order = sol.n_stars, sol.sip_order
    res.rms_ra, res.rms_dec = sol.rms_ra, sol.rms_dec
    res.wcs_error = sol.position_error
    res.pixel_scale = scale
    res.residuals = sol.residuals
    problems = []
    if sol.n_stars < config.min_stars:
        problems.append(f"only {sol.n_stars} stars after clipping (need {config.min_stars})")
    if max(sol.rms_ra, sol.rms_dec) > config.max_rms:
        problems.append(f"residual rms {max(sol.rms_ra, sol.rms_dec):.3f}\" exceeds {config.max_rms}\"")
    lo, hi = config.pixel_scale_range
    if it.header_wcs is not None:
        h_scale = pixel_scale(it.header_wcs)
        res.header_scale = scale / h_scale
        centre = ([(nx - 1) / 2.0], [(ny - 1) / 2.0])
        ra_h, dec_h = it.header_wcs.all_pix2world(*centre, 0)
        ra_s, dec_s = sol.wcs.all_pix2world(*centre, 0)
        dx, dy = TangentPlane(float(ra_s[0]), float(dec_s[0])).to_plane(ra_h, dec_h)
        res.header_offset = float(math.hypot(dx[0], dy[0]))
        cd_h = it.header_wcs.celestial.pixel_scale_matrix
        cd_s = sol.wcs.celestial.pixel_scale_matrix
        res.header_rotation = float(
            math.degrees(math.atan2(cd_s[1, 0], cd_s[1, 1]) - math.atan2(cd_h[1, 0], cd_h[1, 1]))
        )
        res.header_rotation = (res.header_rotation + 180.0) % 360.0 - 180.0
        if abs(res.header_scale - 1.0) > 2.0 * config.max_scale_error + 0.01 and res.method == "header":
            problems.append(f"pixel scale {scale:.4f}\"/px differs from the header's {h_scale:.4f}\"/px")
    if not (lo * 0.95 <= scale <= hi * 1.05):
        problems.append(f"pixel scale {scale:.4f}\"/px outside {lo}-{hi}\"/px")
    if problems:
        res.reason = "; ".join(problems)
        return
    res.status, res.wcs = "ok", sol.wcs
    if config.zeropoint:
        s, r = pairs[:, 0][sol.used], pairs[:, 1][sol.used]
        src = it.sources
        counts: dict = {}
        res.zeropoint, res.zeropoint_err, res.n_zeropoint = fit_zeropoint(
            np.asarray(src["flux"], float)[s], np.asarray(src["flux_err"], float)[s], it.exptime, ref.mag[r],
            colour=None if ref.colour is None else ref.colour[r], colour_term=config.colour_term,
            min_stars=config.min_zeropoint_stars, counts=counts,
        )
        res.n_zeropoint_usable = int(counts.get("n_usable", 0))
    log.debug(
        "CCD %s exposure %d: %s solution, %d stars, order %d, rms %.1f/%.1f mas, zp %.3f",
        res.ccd, res.exposure, res.method, res.n_stars, res.sip_order, 1e3 * res.rms_ra, 1e3 * res.rms_dec,
        res.zeropoint,
    )
