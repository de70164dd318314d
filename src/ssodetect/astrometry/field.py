"""Field-level astrometry: what the CCDs of one exposure and the exposures of one CCD share.

A CCD exposure that cannot be solved on its own (too few reference stars on it, a broken header)
is rarely alone:

* the **exposures of one CCD** see the same stars and galaxies a few arcseconds apart: a failed
  exposure is registered onto a solved one by its hundreds of sources (affine, clipped) and its WCS
  is the solved one composed with that registration (method ``registered``; the distortion is the
  solved exposure's, exact for a registration of the same CCD);
* the **CCDs of one exposure** share its pointing error: the header of every CCD is off by the same
  shift, rotation and scale on the sky.  The solved CCDs of an exposure measure that similarity
  (:func:`header_correction`); when none solved, the exposure's sources of all CCDs together are
  matched against the catalogue through the headers.  The failed CCD's header corrected by it is a
  guide through which the CCD is solved again, or, when it has too few stars, its WCS (method
  ``exposure``, without distortion terms; its uncertainty is the correction's scatter plus the
  distortion the header lacks).  Several exposures of one CCD placed so are then registered onto
  one of them (:func:`_tie_exposure_placements`): their relative positions come from their own
  sources, not from independent header corrections.

Pixel convention: 0-based ``(x, y)``; sky positions in degrees; tangent-plane offsets in arcsec.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from ssodetect.astrometry.match import PatternIndex, Similarity, fit_similarity, match_grid, match_nearest, match_offset
from ssodetect.astrometry.register import register_to_reference
from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.astrometry.solve import (GRID_MAX_ROTATION, GRID_MAX_SCALE, ExposureSolution, ExposureStars,
                                        pixel_scale, reference_at, solve_ccd)
from ssodetect.astrometry.wcsfit import MatchedStars, fit_wcs
from ssodetect.config import AstrometryConfig
from ssodetect.io.headers import wcs_from_header_string

__all__ = ["HeaderCorrection", "header_corrections", "focal_plane_correction", "corrected_wcs", "composed_wcs",
           "grid_points", "rescue_failed", "EXPOSURE_WCS_ERROR"]

log = logging.getLogger(__name__)


@dataclass
class HeaderCorrection:
    """How one exposure's header WCSs are off: ``true = transform(header)`` on the tangent plane ``plane``.

    Attributes
    ----------
    plane : TangentPlane
    transform : Similarity
        Maps header tangent-plane positions [arcsec] onto true ones.
    rms : float
        Scatter of the solved CCDs about the similarity (or of the matched stars) [arcsec].
    n_ccds : int
        Solved CCDs it was measured from (0: from a focal-plane pattern match).
    n_stars : int
        Stars behind it (focal-plane match only; 0 otherwise).
    """

    plane: TangentPlane
    transform: Similarity
    rms: float
    n_ccds: int
    n_stars: int = 0

    def describe(self) -> str:
        source = f"{self.n_ccds} solved CCDs" if self.n_ccds else f"{self.n_stars} stars over the focal plane"
        shift = math.hypot(self.transform.tx, self.transform.ty)
        return (f"header off by {shift:.1f}\", {self.transform.rotation:+.3f} deg, scale {self.transform.scale:.5f} "
                f"(from {source}, rms {1e3 * self.rms:.0f} mas)")


def grid_points(shape: tuple[int, int], n: int = 11) -> np.ndarray:
    """An ``n x n`` grid of 0-based pixel positions ``(n*n, 2)`` covering an image of ``shape`` (ny, nx)."""
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, n), np.linspace(0, ny - 1, n))
    return np.column_stack([gx.ravel(), gy.ravel()])


def _plane_of(headers: list[tuple[WCS, tuple[int, int]]]) -> TangentPlane:
    ras, decs = [], []
    for wcs, (ny, nx) in headers:
        ra, dec = wcs.all_pix2world([(nx - 1) / 2.0], [(ny - 1) / 2.0], 0)
        ras.append(float(ra[0]))
        decs.append(float(dec[0]))
    return TangentPlane(float(np.median(ras)), float(np.median(decs)))


def header_corrections(pairs: list[tuple[WCS, WCS, tuple[int, int]]], plane: TangentPlane, *,
                       tolerance: float = 1.0) -> list[HeaderCorrection]:
    """The similarities mapping header positions onto solved ones, from the solved CCDs of one exposure.

    Each solved CCD measures the similarity on a grid of its pixels.  CCDs whose corrections agree
    (each predicts the other's solved positions within ``tolerance`` [arcsec]) are fitted together;
    a CCD whose header is off differently from the others forms a group of its own.  Returns one
    correction per group, the best supported first (most CCDs, then the smallest scatter); usually
    there is one.

    Parameters
    ----------
    pairs : list of (header WCS, solved WCS, shape)
        One per solved CCD of the exposure.
    plane : TangentPlane
        The exposure's tangent plane (e.g. at the centre of its CCDs).
    tolerance : float
        [arcsec].
    """
    src, dst = [], []
    for header, solved, shape in pairs:
        xy = grid_points(shape)
        ra_h, dec_h = header.all_pix2world(xy[:, 0], xy[:, 1], 0)
        ra_s, dec_s = solved.all_pix2world(xy[:, 0], xy[:, 1], 0)
        src.append(np.column_stack(plane.to_plane(ra_h, dec_h)))
        dst.append(np.column_stack(plane.to_plane(ra_s, dec_s)))
    own = [fit_similarity(s_, d_) for s_, d_ in zip(src, dst)]
    left = list(range(len(src)))
    out = []
    while left:
        # the CCD whose correction fits most of the remaining ones seeds a group
        fits_ = {i: [k for k in left if float(np.median(np.hypot(*(own[i].apply(src[k]) - dst[k]).T))) <= tolerance]
                 for i in left}
        seed = max(left, key=lambda i: (len(fits_[i]), -i))
        group = sorted(set(fits_[seed]) | {seed})  # a CCD fits itself (up to distortion the header lacks)
        s_xy, d_xy = np.vstack([src[k] for k in group]), np.vstack([dst[k] for k in group])
        transform = fit_similarity(s_xy, d_xy)
        rms = float(np.sqrt(np.mean(np.sum((transform.apply(s_xy) - d_xy) ** 2, axis=1))))
        out.append(HeaderCorrection(plane, transform, rms, len(group)))
        left = [k for k in left if k not in group]
    if len(out) > 1:
        log.info("header correction: the solved CCDs disagree (%s)", "; ".join(c.describe() for c in out))
    return sorted(out, key=lambda c: (-c.n_ccds, c.rms))


def focal_plane_correction(ccds: list[tuple[WCS, np.ndarray, tuple[int, int]]], ref_ra: np.ndarray, ref_dec: np.ndarray,
                           config: AstrometryConfig, *, per_ccd: int = 40) -> HeaderCorrection | None:
    """The exposure's header correction from all its CCDs' sources matched together to the catalogue.

    For exposures where no CCD could be solved on its own (each too sparse): the brightest
    ``per_ccd`` star-like sources of every CCD, projected through their headers onto one tangent
    plane, against the reference stars there (brightest first): a right header is tested first, then
    offset voting, then offset voting over a grid of rotations and scales (as for one CCD).

    Parameters
    ----------
    ccds : list of (header WCS, sources (n, 2) 0-based px brightest first, shape (ny, nx))
    ref_ra, ref_dec : ndarray
        Reference stars at the exposure epoch [deg], brightest first.
    """
    if not ccds:
        return None
    plane = _plane_of([(wcs, shape) for wcs, _, shape in ccds])
    pts, flux_rank = [], []
    for wcs, xy, _ in ccds:
        xy = np.asarray(xy, float).reshape(-1, 2)[:per_ccd]
        if len(xy) == 0:
            continue
        ra, dec = wcs.all_pix2world(xy[:, 0], xy[:, 1], 0)
        pts.append(np.column_stack(plane.to_plane(ra, dec)))
        flux_rank.append(np.arange(len(xy)))
    if not pts:
        return None
    order = np.argsort(np.concatenate(flux_rank), kind="stable")  # brightest of each CCD first, interleaved
    src = np.vstack(pts)[order]
    rx, ry = plane.to_plane(np.asarray(ref_ra, float), np.asarray(ref_dec, float))
    span = float(np.max(np.hypot(src[:, 0], src[:, 1])))
    margin = config.max_pointing_error * 1.2 + 5.0
    near = np.hypot(rx, ry) <= span + margin
    ref_xy = np.column_stack([rx[near], ry[near]])
    if len(ref_xy) < config.min_stars or len(src) < config.min_stars:
        return None
    index = PatternIndex(ref_xy, n_ref=0, area=math.pi * (span + margin) ** 2)
    radius = config.pattern_radius
    min_matches = min(config.min_stars, 6)
    result = match_nearest(src, index, match_radius=min(radius, 2.0 * config.match_radius), min_matches=min_matches)
    if result is None:
        result = match_offset(src, index, max_shift=margin, match_radius=radius, n_src=60, n_ref=150,
                              min_matches=min_matches)
    if result is None:
        result = match_grid(src, index, centre=(0.0, 0.0), max_shift=margin,
                            max_rotation=min(config.max_rotation, GRID_MAX_ROTATION),
                            max_scale=min(config.max_scale_error, GRID_MAX_SCALE), match_radius=radius, n_src=80,
                            n_ref=150, min_matches=min_matches)
    if result is None or result.n_matched < config.min_stars:
        return None
    s, r = result.pairs[:, 0], result.pairs[:, 1]
    transform = fit_similarity(src[s], ref_xy[r])
    resid = transform.apply(src[s]) - ref_xy[r]
    rms = float(np.sqrt(np.mean(np.sum(resid**2, axis=1))))
    return HeaderCorrection(plane, transform, rms, 0, int(len(s)))


def _fit_to(xy: np.ndarray, ra: np.ndarray, dec: np.ndarray, shape: tuple[int, int], order: int) -> WCS:
    """A TAN(-SIP) WCS of ``order`` through exact positions (a grid): the composition of maps as one WCS."""
    ny, nx = shape
    crpix = ((nx + 1) / 2.0, (ny + 1) / 2.0)
    centre = np.argmin(np.hypot(xy[:, 0] - (nx - 1) / 2.0, xy[:, 1] - (ny - 1) / 2.0))
    stars = MatchedStars(x=xy[:, 0], y=xy[:, 1], ra=ra, dec=dec, sigma=np.full(len(xy), 1e-4),
                         crval=(float(ra[centre]), float(dec[centre])))
    return fit_wcs([stars], crpix=crpix, order=order, clip=1e9, inverse_extent=(nx, ny))[0].wcs


def _distortion_order(wcs: WCS) -> int:
    """The polynomial order a TAN-SIP refit of ``wcs`` needs: its SIP order, 3 for a TPV/PV distortion, else 1."""
    if wcs.sip is not None:
        return max(int(wcs.sip.a_order), 1)
    return 3 if len(wcs.wcs.get_pv()) else 1


def corrected_wcs(header: WCS, correction: HeaderCorrection, shape: tuple[int, int]) -> WCS:
    """``header`` with the exposure's correction applied on the sky, refitted as TAN-SIP of the header's distortion
    order (a TPV header's polynomial as SIP of order 3)."""
    xy = grid_points(shape)
    ra, dec = header.all_pix2world(xy[:, 0], xy[:, 1], 0)
    moved = correction.transform.apply(np.column_stack(correction.plane.to_plane(ra, dec)))
    ra2, dec2 = correction.plane.to_sky(moved[:, 0], moved[:, 1])
    return _fit_to(xy, ra2, dec2, shape, _distortion_order(header))


def composed_wcs(solved: WCS, registration, shape: tuple[int, int]) -> WCS:
    """The WCS of a frame registered onto a solved one: ``solved(registration(xy))``, refitted as TAN-SIP.

    A polynomial distortion composed with an affine map is a polynomial of the same order, so the
    refit (on a grid of the frame's pixels) reproduces the composition to numerical precision.
    """
    xy = grid_points(shape, n=15)
    moved = registration.apply(xy)
    ra, dec = solved.all_pix2world(moved[:, 0], moved[:, 1], 0)
    return _fit_to(xy, ra, dec, shape, _distortion_order(solved))


#: Uncertainty [arcsec] added to a WCS that is only a corrected header (method ``exposure``): the optical
#: distortion the header lacks (the simulated focal plane's is 0.15" at the corner of a 4k CCD).
EXPOSURE_WCS_ERROR = 0.05


def _xy(item: ExposureStars) -> np.ndarray:
    return np.column_stack([np.asarray(item.sources["x"], float), np.asarray(item.sources["y"], float)])


def _registered(item: ExposureStars, ccd: str, base: ExposureStars, solved: ExposureSolution,
                config: AstrometryConfig) -> ExposureSolution | None:
    """A failed exposure registered onto a solved exposure of the same CCD (None when they do not register)."""
    scale = pixel_scale(solved.wcs)
    src, ref = _xy(item), _xy(base)
    reg = register_to_reference(src, ref, match_radius=max(2.0, config.match_radius / scale),
                                min_stars=max(config.min_stars, 8))
    if reg is None:
        return None
    wcs = composed_wcs(solved.wcs, reg, item.shape)
    res = ExposureSolution(exposure=item.exposure, ccd=ccd, status="ok", method="registered", wcs=wcs,
                           n_matched=reg.n_stars, n_stars=reg.n_stars, sip_order=solved.sip_order,
                           pixel_scale=pixel_scale(wcs))
    reg_err = reg.rms * scale / math.sqrt(2.0)
    res.rms_ra, res.rms_dec = math.hypot(solved.rms_ra, reg_err), math.hypot(solved.rms_dec, reg_err)
    res.wcs_error = math.hypot(solved.wcs_error, reg_err / math.sqrt(max(reg.n_stars, 1)))
    res.wcs_error_shared = solved.wcs_error_shared
    # zero point: the solved exposure's, scaled by the flux ratio of the registered sources
    mapped = reg.apply(src)
    dist, j = cKDTree(ref).query(mapped, distance_upper_bound=max(3.0 * reg.rms, 0.5))
    ok = np.isfinite(dist)
    f_new = np.asarray(item.sources["flux"], float)[ok]
    f_old = np.asarray(base.sources["flux"], float)[j[ok]]
    good = (f_new > 0) & (f_old > 0)
    if math.isfinite(solved.zeropoint) and good.sum() >= config.min_zeropoint_stars:
        ratio = float(np.median(f_new[good] / f_old[good])) * base.exptime / max(item.exptime, 1e-9)
        res.zeropoint = solved.zeropoint + 2.5 * math.log10(ratio)
        res.zeropoint_err = math.hypot(solved.zeropoint_err, 1.2533 * 1.0857 * float(
            np.std(np.log(f_new[good] / f_old[good]))) / math.sqrt(good.sum()))
        res.n_zeropoint = int(good.sum())
    _header_comparison(res, item)
    return res


def _header_comparison(res: ExposureSolution, item: ExposureStars) -> None:
    if item.header_wcs is None or res.wcs is None:
        return
    ny, nx = item.shape
    res.header_scale = pixel_scale(res.wcs) / pixel_scale(item.header_wcs)
    ra_h, dec_h = item.header_wcs.all_pix2world([(nx - 1) / 2.0], [(ny - 1) / 2.0], 0)
    ra_s, dec_s = res.wcs.all_pix2world([(nx - 1) / 2.0], [(ny - 1) / 2.0], 0)
    dx, dy = TangentPlane(float(ra_s[0]), float(dec_s[0])).to_plane(ra_h, dec_h)
    res.header_offset = float(math.hypot(dx[0], dy[0]))
    cd_h = item.header_wcs.celestial.pixel_scale_matrix
    cd_s = res.wcs.celestial.pixel_scale_matrix
    rot = math.degrees(math.atan2(cd_s[1, 0], cd_s[1, 1]) - math.atan2(cd_h[1, 0], cd_h[1, 1]))
    res.header_rotation = (rot + 180.0) % 360.0 - 180.0


def _verified(guide: WCS, item: ExposureStars, reference, config: AstrometryConfig) -> tuple[bool, str]:
    """Whether a guide WCS agrees with the CCD exposure's own few catalogue stars (nothing to contradict it: yes)."""
    ref = reference_at(reference, item.mjd)
    ny, nx = item.shape
    x, y = guide.all_world2pix(ref.ra, ref.dec, 0, quiet=True)
    on = np.isfinite(x) & np.isfinite(y) & (x > 3) & (x < nx - 4) & (y > 3) & (y < ny - 4)
    if item.zeropoint is not None and len(item.sources):
        brightest = item.zeropoint - 2.5 * math.log10(max(float(np.max(item.sources["flux"])), 1e-9) / item.exptime)
        on &= ref.mag > brightest - 0.5  # saturated stars are not among the sources
    if on.sum() < 2 or len(item.sources) == 0:
        return True, f"{int(on.sum())} catalogue stars on the CCD"
    dist, _ = cKDTree(_xy(item)).query(np.column_stack([x[on], y[on]]))
    matched = int(np.sum(dist * pixel_scale(guide) <= config.pattern_radius))
    ok = matched >= max(1, on.sum() // 2)
    return ok, f"{matched} of {int(on.sum())} catalogue stars on the CCD found through it"


#: A CCD exposure's solution is doubted when its residual rms exceeds this many times the median of the same CCD's
#: other solutions (and :data:`OUTLIER_MIN_RMS`) while it rests on under :data:`OUTLIER_STAR_SHARE` of their median
#: number of stars: a chance match of a few stars (8 stars at 68 mas where the other exposures had 25 at 7 mas put
#: the CCD 6-13 px off, and every mover on it was lost) -- or, on any number of stars, when it exceeds
#: :data:`OUTLIER_CERTAIN_FACTOR` times theirs: no fit of real stars is that much worse than the same stars' in the
#: other exposures (report member 410: 8 stars at 63 mas where the others had 12-14 at 2-4 mas; 14 slow movers on
#: that CCD were lost).
OUTLIER_RMS_FACTOR = 4.0
OUTLIER_MIN_RMS = 0.03
OUTLIER_STAR_SHARE = 0.5
OUTLIER_CERTAIN_FACTOR = 10.0


def outlier_solutions(solutions: list) -> dict:
    """The solved CCD exposures whose fit is far worse, on far fewer stars, or very far worse on any number, than the
    same CCD's other solutions (at least two of them): ``(exposure, ccd) -> reason`` (see :data:`OUTLIER_RMS_FACTOR`).

    Parameters
    ----------
    solutions : list of ExposureSolution
    """
    out = {}
    ok = [s for s in solutions if s.ok and s.n_stars > 0 and math.isfinite(s.rms_ra) and math.isfinite(s.rms_dec)]
    for sol in ok:
        others = [o for o in ok if o.ccd == sol.ccd and o.exposure != sol.exposure]
        if len(others) < 2:
            continue
        rms = max(sol.rms_ra, sol.rms_dec)
        typical = float(np.median([max(o.rms_ra, o.rms_dec) for o in others]))
        stars = float(np.median([o.n_stars for o in others]))
        if rms > max(OUTLIER_RMS_FACTOR * typical, OUTLIER_MIN_RMS) and (
                sol.n_stars < OUTLIER_STAR_SHARE * stars or rms > OUTLIER_CERTAIN_FACTOR * typical):
            out[(sol.exposure, sol.ccd)] = (f"its solution ({sol.n_stars} stars, rms {1e3 * rms:.0f} mas) is far worse "
                                            f"than the CCD's other exposures' ({stars:.0f} stars, {1e3 * typical:.0f} "
                                            "mas): a chance match")
    return out


def recheck_outliers(groups: list, solutions: list, reference, config: AstrometryConfig) -> tuple[list, dict]:
    """:func:`rescue_failed`, the :func:`outlier_solutions` taken as failed first: each is solved again from its CCD's
    other exposures and its exposure's other CCDs, and kept as it was (its reason said) when that fails too.

    Returns
    -------
    solutions : list of ExposureSolution
    doubted : dict
        ``(exposure, ccd) -> (reason, replaced)``: the outliers, and whether another solution replaced theirs.
    """
    doubts = outlier_solutions(solutions)
    if not doubts:
        return rescue_failed(groups, solutions, reference, config)[0], {}
    originals = {(s.exposure, s.ccd): s for s in solutions}
    marked = []
    for s in solutions:
        if (s.exposure, s.ccd) in doubts:
            s = copy.copy(s)
            s.status, s.reason = "failed", doubts[(s.exposure, s.ccd)]
        marked.append(s)
    rescued, _ = rescue_failed(groups, marked, reference, config)
    out, doubted = [], {}
    for s in rescued:
        key = (s.exposure, s.ccd)
        if key in doubts:
            doubted[key] = (doubts[key], s.ok)
            if not s.ok:
                s = originals[key]  # nothing better: the original, its doubt said by the caller
        out.append(s)
    return out, doubted


def rescue_failed(groups: list, solutions: list, reference, config: AstrometryConfig) -> tuple[list, dict]:
    """Solve the CCD exposures that failed alone, from their CCD's other exposures and their exposure's other CCDs.

    1. every failed CCD exposure is registered onto a solved exposure of the same CCD (the one with the
       most sources, else the next one);
    2. each exposure's header correction is measured on its solved CCDs (those solved alone or
       registered), or, when none is solved, by matching all its CCDs' sources together;
    3. the CCD exposures still failed are solved again through their header corrected by their
       exposure's correction, or, when they have too few stars of their own, that corrected header is
       their WCS (method ``exposure``) provided it does not contradict the catalogue stars on the CCD;
    4. those still failed (no correction could be measured for their exposure) are registered onto an
       exposure of the same CCD placed in 2-3, whose placement error they then share.

    What stays failed keeps its reason, extended by what was tried.

    Parameters
    ----------
    groups : list of (ccd, list of ExposureStars)
        The per-CCD tasks (header WCSs as WCS objects or header strings).
    solutions : list of ExposureSolution
        The per-CCD solutions, failures included.
    reference : Table
        The reference catalogue.
    config : AstrometryConfig

    Returns
    -------
    solutions : list of ExposureSolution
        The same list with the rescued ones replaced.
    corrections : dict
        Exposure -> :meth:`HeaderCorrection.describe` text, for the exposures a correction was measured for.
    """
    by_key = {(s.exposure, s.ccd): copy.copy(s) for s in solutions}  # the caller's solutions stay as they were
    items: dict = {}
    for ccd, its in groups:
        for it in its:
            if isinstance(it.header_wcs, str):  # a task's header as text: read once, on a copy
                it = copy.copy(it)
                it.header_wcs = wcs_from_header_string(it.header_wcs)
            items[(it.exposure, ccd)] = it
    failed = [k for k, s in by_key.items() if not s.ok and k in items]
    corrections: dict = {}
    if not failed:
        return solutions, corrections
    tried: dict = {key: [] for key in failed}
    # 1. onto a solved exposure of the same CCD
    alone = {k for k, s in by_key.items() if s.ok}
    for key in failed:
        e, ccd = key
        bases = sorted(((len(items[(ee, c)].sources), ee) for (ee, c) in alone if c == ccd and (ee, c) in items),
                       reverse=True)
        for _, ee in bases[:2]:
            new = _registered(items[key], ccd, items[(ee, ccd)], by_key[(ee, ccd)], config)
            if new is not None:
                log.info("CCD %s exposure %d: registered onto exposure %d after failing alone (%s)", ccd, e, ee,
                         by_key[key].reason)
                by_key[key] = new
                break
        else:
            if bases:
                tried[key].append("not registered onto a solved exposure of this CCD")
    # 2. each exposure's header correction(s)
    still = [k for k in failed if not by_key[k].ok]
    measured: dict = {}
    for e in sorted({e for e, _ in still}):
        mine = [(c, it) for (ee, c), it in items.items() if ee == e and it.header_wcs is not None]
        if not mine:
            continue
        plane = _plane_of([(it.header_wcs, it.shape) for _, it in mine])
        solved = [(it.header_wcs, by_key[(e, c)].wcs, it.shape) for c, it in mine if by_key[(e, c)].ok]
        candidates = header_corrections(solved, plane) if solved else []
        if not candidates and len(mine) > 1:
            ref = reference_at(reference, mine[0][1].mjd)
            order = np.argsort(ref.mag)
            corr = focal_plane_correction([(it.header_wcs, _xy(it), it.shape) for _, it in mine], ref.ra[order],
                                          ref.dec[order], config)
            candidates = [corr] if corr is not None else []
        if candidates:
            measured[e] = candidates
            corrections[int(e)] = "; ".join(c.describe() for c in candidates)
            log.info("exposure %d: %s", e, corrections[int(e)])
    # 3. through a corrected header, or that header itself
    for key in still:
        e, ccd = key
        it, old = items[key], by_key[key]
        candidates = measured.get(e, [])
        if not candidates or it.header_wcs is None:
            if len([k for k in items if k[0] == e]) > 1:
                tried[key].append("no header correction for its exposure")
            old.reason = "; ".join([old.reason] + tried[key])
            continue
        guides = [(corr, corrected_wcs(it.header_wcs, corr, it.shape)) for corr in candidates]
        for corr, guide in guides:
            retry = ExposureStars(exposure=it.exposure, mjd=it.mjd, exptime=it.exptime, shape=it.shape,
                                  header_wcs=guide, sources=it.sources, zeropoint=it.zeropoint)
            solved = solve_ccd(ccd, [retry], reference, config.model_copy(update={"blind": False}), quiet=True)[0]
            if solved.ok:
                solved.method = "guided"
                _header_comparison(solved, it)
                log.info("CCD %s exposure %d: solved through its exposure's corrected header after failing alone (%s)",
                         ccd, e, old.reason)
                by_key[key] = solved
                break
        else:
            tried[key].append(f"through its exposure's corrected header: {solved.reason}")
            checks = [(corr, guide, *_verified(guide, it, reference, config)) for corr, guide in guides]
            agreeing = [c for c in checks if c[2]]
            if not agreeing:
                tried[key].append("the corrected header contradicts its own stars (" + checks[0][3] + ")")
                old.reason = "; ".join([old.reason] + tried[key])
                continue
            corr, guide, _, how = agreeing[0]
            new = ExposureSolution(exposure=it.exposure, ccd=ccd, status="ok", method="exposure", wcs=guide,
                                   pixel_scale=pixel_scale(guide))
            new.wcs_error = math.hypot(corr.rms, EXPOSURE_WCS_ERROR)
            # the distortion is the same in every exposure of the CCD (a dither moves a source by a few
            # per cent of the CCD): between two such exposures it cancels
            new.wcs_error_shared = EXPOSURE_WCS_ERROR
            zps = [by_key[(e, c)].zeropoint for (ee, c) in by_key if ee == e and by_key[(e, c)].ok]
            zps = [z for z in zps if math.isfinite(z)]
            if zps:
                new.zeropoint = float(np.median(zps))
                new.zeropoint_err = float(np.std(zps)) if len(zps) > 1 else float("nan")
            _header_comparison(new, it)
            log.info("CCD %s exposure %d: its exposure's corrected header as WCS (%s; %s) after failing alone (%s)",
                     ccd, e, corr.describe(), how, old.reason)
            by_key[key] = new
    _tie_exposure_placements(by_key, items, config)
    # 4. what is still failed, onto an exposure of its CCD placed in 2-3 (an exposure whose header correction
    #    could not be measured, on a field too sparse for the catalogue alone, is placed by its CCD's others)
    for key in [k for k in failed if not by_key[k].ok]:
        e, ccd = key
        bases = sorted((by_key[(ee, c)].wcs_error, -len(items[(ee, c)].sources), ee) for (ee, c) in by_key
                       if c == ccd and (ee, c) in items and (ee, c) not in alone and by_key[(ee, c)].ok)
        for _, _, ee in bases[:2]:
            base = by_key[(ee, ccd)]
            new = _registered(items[key], ccd, items[(ee, ccd)], base, config)
            if new is None:
                continue
            # the base's placement error is shared with it: between the two it cancels
            new.wcs_error_shared = max(base.wcs_error, base.wcs_error_shared)
            log.info("CCD %s exposure %d: registered onto exposure %d (placed by %s) after failing alone and "
                     "without a header correction (%s)", ccd, e, ee, base.method, by_key[key].reason)
            by_key[key] = new
            break
        else:
            if bases:
                by_key[key].reason += "; not registered onto the exposures of this CCD placed by their exposure"
    return [by_key[(s.exposure, s.ccd)] for s in solutions], corrections


def _tie_exposure_placements(by_key: dict, items: dict, config: AstrometryConfig) -> None:
    """Tie the exposures of a CCD placed only by their exposure's corrected header to one another.

    Each such placement carries its exposure's own header-correction error (0.05-0.3"), independent from
    one exposure to the next: a source fixed on the sky seems to move by it, and a slow mover's motion
    drowns in it.  Their sources register onto each other far better (hundreds of galaxies and faint
    stars, to a few mas): every exposure of the CCD placed so is registered onto one anchor (a solution of
    the CCD through its catalogue stars when there is one, else the placement with the smallest
    uncertainty), and the anchor's uncertainty becomes the part they share (``wcs_error_shared``).
    """
    for ccd in sorted({c for (_, c) in by_key}):
        mine = {e: s for (e, c), s in by_key.items() if c == ccd and s.ok and (e, c) in items}
        placed = sorted(e for e, s in mine.items() if s.method == "exposure")
        if not placed or len(mine) < 2:
            continue
        solved = [e for e in mine if mine[e].method != "exposure"]
        anchor = min(solved or placed, key=lambda e: (mine[e].wcs_error, -len(items[(e, ccd)].sources)))
        base = mine[anchor]
        tied = 0
        for e in placed:
            if e == anchor:
                continue
            new = _registered(items[(e, ccd)], ccd, items[(anchor, ccd)], base, config)
            if new is None:
                log.warning("CCD %s exposure %d: not registered onto exposure %d; it keeps its own placement by "
                            "its exposure's corrected header (%.2f\")", ccd, e, anchor, mine[e].wcs_error)
                continue
            new.method = "registered"
            new.wcs_error_shared = max(base.wcs_error, base.wcs_error_shared)
            if not math.isfinite(new.zeropoint):
                new.zeropoint, new.zeropoint_err = mine[e].zeropoint, mine[e].zeropoint_err
            by_key[(e, ccd)] = new
            tied += 1
            log.info("CCD %s exposure %d: registered onto exposure %d (placed by %s) instead of its own corrected "
                     "header (%.2f\" -> %.3f\" relative)", ccd, e, anchor, base.method, mine[e].wcs_error,
                     math.sqrt(max(new.wcs_error**2 - base.wcs_error**2, 0.0)))
        if tied and base.method == "exposure":
            base.wcs_error_shared = max(base.wcs_error, base.wcs_error_shared)
