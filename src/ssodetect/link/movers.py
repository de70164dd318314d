"""From a field's detections to linked movers: candidate selection, slow and fast linking, vetting.

:func:`link_movers` is the whole of the ``link`` step's logic, as a pure function of the field's
detection table (every CCD exposure on the sky), the exposures' mid times and the configuration:

1. :func:`select_candidates`: usable detections (point, trail, extended; unflagged, on the sky) and
   their static (on the sky) and artefact (on the detector) flags;
2. slow movers: the moving point-like candidates linked by :func:`~ssodetect.link.tracklets.link_tracklets`
   (with its false-alarm control), vetted by occupancy (:func:`vet_occupancy`), by trail length
   (:func:`vet_trail_lengths`), by edge fits (:func:`vet_edge_fits`) and by combined S/N;
3. fast movers: the trails not in a slow tracklet linked by :func:`~ssodetect.link.streaks.link_streaks`
   (hypotheses and a one-to-one assignment), the centres of edge-cut members restored
   (:func:`restore_cut_centres`).

Everything counted on the way is returned in :attr:`MoverLinks.stats` (the run writes it to
``provenance.json``): nothing is dropped without a number.  Positions in arcsec on the tangent plane
of the field's median detection, times in hours from the first exposure's mid time.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from ssodetect.astrometry.tangent import TangentPlane
from ssodetect.columns import describe, empty_table
from ssodetect.config import Config
from ssodetect.detect.extract import FWHM_TO_SIGMA
from ssodetect.link.stationary import occupied_elsewhere, on_lines, static_on_detector, static_on_sky
from ssodetect.link.parallax import MIN_DISTANCE_KM, extend_tracklets
from ssodetect.link.streaks import link_streaks
from ssodetect.link.tracklets import Tracklet, detection_key, fit_linear_motion, link_tracklets, relative_sigma
from ssodetect.streaks.detect import EDGE_MIN_TRAIL_FWHM

__all__ = ["MoverLinks", "link_movers", "select_candidates", "vet_edge_fits", "vet_occupancy", "vet_trail_lengths",
           "restore_cut_centres", "link_fast", "Footprints", "streak_table", "STREAK_COLUMNS", "CUT_END_ERROR",
           "EDGE_CUT_ERROR", "trail_motions", "widen_trail_tolerance", "TRAIL_CENTRE_TOLERANCE",
           "with_trail_tolerance"]

log = logging.getLogger(__name__)

#: Centroid error [px] added (in quadrature) to a detection the detector edge cuts (``edge_cut``): a star cut in
#: half is measured ~1.4 px inside the outermost pixel centres, a short trail leaving the edge obliquely 1-1.5 px
#: along its axis.  Such a detection (``edge_weak``) never seeds a slow tracklet; it may complete one of at least
#: two other detections (a slow mover on the detector in only 3 exposures, one of them at the edge), its flux
#: uncertain by 100 %.
EDGE_CUT_ERROR = 1.5
#: A point source with more than this share of its core information on masked pixels (``masked_core``: cosmic-ray
#: hits, hot pixels) has its flux from a PSF fit of its wings (the extraction's ``cr_point`` photometry), where the
#: fit's Gaussian model is not the PSF (a Moffat's wings hold more light: 2.6x the true flux seen, 17 formal errors
#: off): for linking and in the reports its flux is uncertain by 100 %, as at the detector edge.  (Trails keep
#: their trail-fit or aperture flux.)
MASKED_CORE_FLUX = 0.5


@dataclass
class MoverLinks:
    """What :func:`link_movers` found.

    Attributes
    ----------
    plane : TangentPlane
        Projection of ``xi, eta``.
    t0_mjd : float
        MJD (UTC) of ``t_hours = 0``: the first exposure's mid time.
    candidates : Table
        Usable detections with ``xi, eta, t_hours, sigma, size, static, artefact``.
    moving : Table
        The candidates neither static nor artefacts nor extended.
    slow : Table
        The moving candidates the slow linker saw; ``slow_tracklets`` index it.
    slow_tracklets : list of Tracklet
    trails : Table
        The trails the fast linker saw; ``fast_tracklets`` index it.
    fast_tracklets : list of Tracklet
    doubtful_tracklets : list of Tracklet
        Slow tracklets refused by the false-alarm control by a small margin (``link.confirm_max_excess``), missing
        from some exposure: the occupancy step confirms them on the pixels or drops them (``slow`` indexes them).
    stats : dict
        Counts of every selection and cut, the slow linker's false-alarm control and the fast
        linker's bookkeeping.
    """

    plane: TangentPlane
    t0_mjd: float
    candidates: Table
    moving: Table
    slow: Table
    slow_tracklets: list
    trails: Table
    fast_tracklets: list
    stats: dict = field(default_factory=dict)
    doubtful_tracklets: list = field(default_factory=list)


def select_candidates(detections: Table, config: Config, plane: TangentPlane, t0_mjd: float) -> Table:
    """Usable detections (PSF-like, trailed or extended; unflagged) with their static flags.

    Moving-object candidates are the usable ones neither static on sky or
    detector nor extended; the extended ones still count as occupants of the sky.

    Adds ``xi, eta`` [arcsec], ``t_hours``, ``sigma`` (position error with ``link.position_floor``) and ``size`` [arcsec] columns and the
    flags ``static``, ``artefact`` and ``edge_weak`` to a copy of the usable detections.  On an exposure whose stars
    are trailed (``stars_trailed``) ``length`` and ``theta`` become the source's own motion (``own_length``,
    ``own_theta``: its trail less the stars') and ``detector_length`` keeps the trail's length.  Point sources and short
    trails the detector edge cuts (``edge_cut``) are usable as ``edge_weak``: their position errors widened by
    :data:`EDGE_CUT_ERROR` px, their flux errors by their flux.  Point sources with more than
    :data:`MASKED_CORE_FLUX` of their core information masked have their flux errors widened by their flux too
    (counted in ``meta["n_core_masked_flux"]``).
    """
    # long trails cross flagged pixels often; their measurement masks them, so they stay usable
    long_trail = (np.asarray(detections["kind"]) == "trail") & (
        np.asarray(detections["length"], float) >= config.streaks.min_length
    )
    # a source cut by the image edge within its core has a biased centroid (and a star drifting off the
    # edge looks like a mover): it may only complete a slow tracklet (``edge_weak``), with wide errors
    truncated = np.asarray(detections["edge_cut"], bool)
    # a masked pixel beside a point source biases its windowed centroid, not the PSF fit that skipped it (mask_fit)
    masked = np.asarray(detections["near_mask"], bool)
    if "mask_fit" in detections.colnames:
        masked &= ~np.asarray(detections["mask_fit"], bool)
    weak = truncated & ~masked & ~long_trail & np.isin(detections["kind"], ["point", "trail"])
    usable = (
        np.isin(detections["kind"], ["point", "trail", "extended"])
        & ((~masked & ~truncated) | long_trail | weak)
        & (np.asarray(detections["snr"]) > 0)
        & np.isfinite(np.asarray(detections["ra"], float))
    )
    cand = detections[usable]
    cand["edge_weak"] = weak[usable]
    if "own_length" in cand.colnames and "stars_trailed" in cand.colnames:
        # where the stars are trailed a source's trail is its own motion plus the drift: linking sees the motion
        trailed = np.asarray(cand["stars_trailed"], bool)
        cand["detector_length"] = np.asarray(cand["length"], float)
        cand["detector_theta"] = np.asarray(cand["theta"], float)
        cand["length"] = np.where(trailed, np.asarray(cand["own_length"], float), np.asarray(cand["length"], float))
        cand["theta"] = np.where(trailed, np.asarray(cand["own_theta"], float), np.asarray(cand["theta"], float))
    xi, eta = plane.to_plane(np.asarray(cand["ra"], float), np.asarray(cand["dec"], float))
    cand["xi"] = xi
    cand["eta"] = eta
    cand["t_hours"] = (np.asarray(cand["mjd"], float) - t0_mjd) * 24.0
    floor = config.link.position_floor * np.asarray(cand["pixel_scale"], float)
    cand["sigma"] = np.sqrt(0.5 * (np.asarray(cand["ra_err"]) ** 2 + np.asarray(cand["dec_err"]) ** 2) + floor**2)
    link = config.link
    # source size for the static-match radius: the full extent of galaxies, only the width of trails
    # (a trail's length says how far it moved, not where a static counterpart could sit)
    # (and nothing for point sources, whose isophotal size grows with brightness, not with centroid jitter)
    kind = np.asarray(cand["kind"])
    extent = np.where(kind == "trail", _trail_widths(cand), np.where(kind == "extended", np.asarray(cand["a"]), 0.0))
    cand["size"] = extent * np.asarray(cand["pixel_scale"])
    static_report: dict = {}
    cand["static"] = static_on_sky(
        np.asarray(cand["exposure"]), np.asarray(cand["t_hours"]), xi, eta, np.asarray(cand["sigma"]),
        radius=np.maximum(link.static_radius, 0.5 * np.asarray(cand["size"])), slack=drift_slack(cand),
        min_matches=link.static_min_matches,
        min_rate=link.min_rate, min_fraction=link.static_min_fraction,
        # between exposures of one CCD with the same uncorrected distortion, that error cancels (a slow mover
        # 0.2" from its neighbours' positions is not a star for a 0.05" error both share)
        shared=np.asarray(cand["sky_err_shared"], float) if "sky_err_shared" in cand.colnames else None,
        group=np.asarray(cand["ccd"]).astype(str),
        # a slow mover matches itself in the neighbouring exposures; its counterparts line up into a motion
        # as significant as the linker demands of a tracklet
        motion_significance=link.min_rate_significance, report=static_report,
    )
    cand.meta["n_moving_matches"] = static_report.get("n_moving_matches", 0)
    # a source trailed by more than min_length moved during the exposure: never static
    # (unless the telescope trailed everything: then stars are trails too)
    trailed_field = (np.asarray(cand["stars_trailed"], bool) if "stars_trailed" in cand.colnames
                     else np.full(len(cand), config.astrometry.trailed_stars is True))
    moved = ((np.asarray(cand["kind"]) == "trail") & (np.asarray(cand["length"], float) >= config.streaks.min_length)
             & ~trailed_field)
    cand["static"] = np.asarray(cand["static"]) & ~moved
    cand["artefact"] = static_on_detector(
        np.asarray(cand["exposure"]), np.asarray(cand["ccd"]), np.asarray(cand["x"]), np.asarray(cand["y"]), xi, eta,
        radius_px=link.detector_static_radius, min_sky_shift=3.0 * link.static_radius,
    )
    # pieces of satellites, diffraction spikes and bleed trails (and their ends) are not movers
    lines: dict = {}
    line_rows = np.isin(np.asarray(detections["kind"]), LINE_KINDS)
    for row in detections[line_rows]:
        lines.setdefault((int(row["exposure"]), str(row["ccd"])), []).append(
            (float(row["x"]), float(row["y"]), 0.5 * float(row["length"]), float(row["theta"])))
    point_like = np.asarray(cand["kind"]) != "trail"
    cand["artefact"] = np.asarray(cand["artefact"]) | (point_like & on_lines(
        np.asarray(cand["exposure"]), np.asarray(cand["ccd"]), np.asarray(cand["x"]), np.asarray(cand["y"]), lines))
    core_masked = (np.asarray(cand["kind"]) == "point") & (
        np.asarray(cand["masked_core"], float) > MASKED_CORE_FLUX if "masked_core" in cand.colnames
        else np.zeros(len(cand), bool))
    cand.meta["n_core_masked_flux"] = int(np.sum(core_masked))
    if np.any(core_masked):
        w = np.nonzero(core_masked)[0]
        _widen_flux(cand, w)
    if np.any(cand["edge_weak"]):
        # widened after the static tests (a slow mover's own positions in the other exposures would otherwise match
        # a cut detection of it within its wider error and call it static); the reports carry these errors too: the
        # edge may have taken EDGE_CUT_ERROR px of the centre and any share of the flux
        w = np.nonzero(np.asarray(cand["edge_weak"]))[0]
        extra = EDGE_CUT_ERROR * np.asarray(cand["pixel_scale"], float)[w]
        for col in ("ra_err", "dec_err"):
            cand[col][w] = np.hypot(np.asarray(cand[col], float)[w], extra)
        cand["sigma"][w] = np.hypot(np.asarray(cand["sigma"], float)[w], extra)
        _widen_flux(cand, w[~core_masked[w]])
    return cand


def drift_slack(cand: Table) -> np.ndarray:
    """Static-match slack [arcsec] of each detection made on an exposure whose stars are trailed: half the part of
    the stars' trail (``drift_length``) that its own trail on the detector (``detector_length``; 0 for a point or a
    blob) lacks, on the sky.  A faint star's trail is seen in pieces (a faint end lost, split in two, a blob of it):
    a piece's centre lies anywhere along the part it lacks (member 365 at a 12 px drift: a V 25 star's pieces of
    6.3, 8.8 and 12.2 px, their centres 0.14-0.28" apart, were linked as a 0.44"/h mover).  Zero elsewhere."""
    n = len(cand)
    if n == 0 or not {"stars_trailed", "drift_length", "detector_length"} <= set(cand.colnames):
        return np.zeros(n)
    trailed = np.asarray(cand["stars_trailed"], bool)
    lacking = np.clip(np.nan_to_num(np.asarray(cand["drift_length"], float))
                      - np.nan_to_num(np.asarray(cand["detector_length"], float)), 0.0, None)
    return np.where(trailed, 0.5 * lacking * np.asarray(cand["pixel_scale"], float), 0.0)


def widen_trail_tolerance(slow: Table) -> int:
    """Widen the linking tolerance ``sigma`` [arcsec] of the short trails among slow-linking candidates, in place, by
    :data:`TRAIL_CENTRE_TOLERANCE` of their own length (along the trail, shared between the two axes); returns
    how many.  A trail's centre moves along it with whatever changes the light along it (a masked hit cutting
    one end, a faint neighbour on it).  The reported errors stay the measurement's."""
    trail = np.asarray(slow["kind"]) == "trail"
    slow["sigma"][:] = with_trail_tolerance(slow["sigma"], slow["length"], slow["pixel_scale"], trail)
    return int(np.sum(trail & np.isfinite(np.asarray(slow["length"], float))))


def with_trail_tolerance(sigma, length, pixel_scale, trail) -> np.ndarray:
    """Linking errors [arcsec] ``sigma`` with the tolerance of the trails' centres added in quadrature:
    :data:`TRAIL_CENTRE_TOLERANCE` of each trail's ``length`` [px] on the sky (``pixel_scale`` [arcsec/px]), shared
    between the two axes, where ``trail`` is true and the length finite (the slow linker's and the blends step's
    tracklet fits alike)."""
    sigma, length = np.asarray(sigma, float), np.asarray(length, float)
    widened = np.asarray(trail, bool) & np.isfinite(length)
    tolerance = TRAIL_CENTRE_TOLERANCE * np.where(widened, length, 0.0) * np.asarray(pixel_scale, float) / math.sqrt(2.0)
    return np.where(widened, np.hypot(sigma, tolerance), sigma)


#: Share of a trail's own length [px] by which its centre may lie off its motion's line, for linking: a V 23.2
#: mover's 10.7 px trails (member 405) were 2.2 px off where a masked hit cut one and 1.2 px where a faint
#: neighbour lay on another, 4-7 times their centroid errors, and never linked.
TRAIL_CENTRE_TOLERANCE = 0.05


#: A trail's width counts for the static match up to this many times the median width of the point sources of its
#: CCD image (the PSF's): a blend fitted as a "trail" 66 px wide (member 294: a bright star's spikes and neighbours in
#: one 18,000 px footprint) otherwise made every source within 3.3" of it static, a slow V 20 mover among them.
TRAIL_WIDTH_CAP = 3.0


def _trail_widths(cand: Table) -> np.ndarray:
    """Minor-axis rms ``b`` [px] of each detection, capped at :data:`TRAIL_WIDTH_CAP` times the median ``b`` of the
    point sources of its exposure and CCD (uncapped where that image has none)."""
    b = np.asarray(cand["b"], float).copy()
    point = np.asarray(cand["kind"]) == "point"
    image = np.char.add(np.asarray(cand["exposure"]).astype(str), np.char.add("/", np.asarray(cand["ccd"]).astype(str)))
    for name in np.unique(image):
        rows = image == name
        if np.any(rows & point):
            b[rows] = np.minimum(b[rows], TRAIL_WIDTH_CAP * float(np.median(b[rows & point])))
    return b


def _widen_flux(cand: Table, rows: np.ndarray) -> None:
    """Add the flux itself in quadrature to the flux error of ``rows`` (and 1.086 mag to ``mag_err``), in place."""
    cand["flux_err"][rows] = np.hypot(np.asarray(cand["flux_err"], float)[rows], np.asarray(cand["flux"], float)[rows])
    if "mag_err" in cand.colnames:
        cand["mag_err"][rows] = np.hypot(np.asarray(cand["mag_err"], float)[rows], 2.5 / math.log(10.0))


def vet_occupancy(tracklets: list, moving: Table, usable: Table, t_exposures: dict, config: Config) -> list:
    """Drop tracklets whose positions stay occupied after the object moved on (static sources).

    Parameters
    ----------
    tracklets : list of Tracklet
        Indexing ``moving``.
    moving, usable : Table
        The linked candidates and every usable detection (``xi, eta, exposure``; ``sigma, size`` of ``moving``).
    t_exposures : dict
        Exposure index -> mid time [h] on the tracklets' time axis.
    """
    if not tracklets:
        return tracklets
    pos = np.column_stack([np.asarray(usable["xi"]), np.asarray(usable["eta"])])
    expo = np.asarray(usable["exposure"])
    trees = {e: cKDTree(pos[expo == e]) for e in t_exposures if np.any(expo == e)}
    sigma = np.asarray(moving["sigma"], float)
    # within one CCD, the error its exposures share (one placement registered onto all) does not move a source
    # between them (see link_tracklets)
    sigma_rel, gid = relative_sigma(
        sigma, np.asarray(moving["sky_err_shared"], float) if "sky_err_shared" in moving.colnames else None,
        np.asarray(moving["ccd"]) if "ccd" in moving.colnames else None)
    kept = []
    for trk in tracklets:
        idx = np.array(trk.members)
        one_ccd = gid is not None and np.all(gid[idx] == gid[idx[0]])
        radius = np.maximum.reduce([
            np.full(idx.size, config.link.static_radius),
            3.0 * (sigma_rel[idx] if one_ccd else sigma[idx]),
            np.asarray(moving["size"])[idx],
        ])
        predicted = {k: (trk.x0 + trk.vx * (t - trk.t_ref), trk.y0 + trk.vy * (t - trk.t_ref))
                     for k, t in t_exposures.items()}
        frac = occupied_elsewhere(
            np.asarray(moving["exposure"])[idx], np.asarray(moving["xi"])[idx], np.asarray(moving["eta"])[idx],
            radius, predicted, trees,
        )
        if not np.isfinite(frac) or frac > config.link.max_occupied_fraction:
            log.debug("tracklet at (%.1f, %.1f) rejected: occupancy %.2f (NaN: motion unresolved)", trk.x0, trk.y0, frac)
            continue
        kept.append(trk)
    return kept


def vet_edge_fits(tracklets: list, edge_fit: np.ndarray, max_fraction: float = 0.75) -> list:
    """Drop tracklets made mostly of sources cut by the detector edge.

    A point source whose core reaches the edge is measured by a PSF fit of the pixels that are there
    (``edge_fit``); one the edge cuts otherwise may complete a tracklet with wide errors (``edge_weak``).  Such
    members help a mover that left or entered the detector (on the family scenes a real mover had 2 of its 3
    detections at the edge); a tracklet made almost only of edge fits is a star sliding
    along the edge as the pointing drifts, its centres biased by the edge's own response (a dark first column on
    a real ground night: every member of its tracklets an edge fit) by amounts that change with its distance
    from the edge: a false slow mover.

    Parameters
    ----------
    tracklets : list of Tracklet
        Indexing ``edge_fit``.
    edge_fit : ndarray (n,) bool
        Members measured at the edge (edge fits and ``edge_weak`` detections).
    max_fraction : float
        Largest share of a tracklet's members that may be measured at the edge.

    Returns
    -------
    list of Tracklet
        Those kept, in their order.
    """
    edge_fit = np.asarray(edge_fit, bool)
    return [t for t in tracklets if np.sum(edge_fit[list(t.members)]) <= max_fraction * len(t.members)]


def vet_trail_lengths(tracklets: list, slow: Table, min_detections: int, margin: float = 3.0) -> list:
    """Drop members (or whole slow tracklets) trailed far more than their motion allows.

    A mover at rate ``r`` draws ``r * exptime`` in an exposure (where the stars trail by a drift ``S``, ``|S + m|``:
    there the measured trail less ``|S|`` is compared, ``drift_length``); a member's measured trail may exceed
    that by ``margin`` [px] or four times the members' median minor-axis rms, whichever is larger
    (short trails and seeing-limited blobs are measured coarsely).  The margin was 1" until static galaxies,
    9 px "trails" at 0.1"/px, were strung into movers at 0.31-0.33"/h (members 322, 323 and 327: three of the
    eight false objects of members 321-330): a fixed angle is ten PSF widths at Euclid's scale and none on the
    ground.  Longer members are blends (a slow
    mover next to a star for part of a long sequence) whose footprint barycentre is biased: they are
    removed and the motion refitted when at least ``min_detections`` and a third of the members stay;
    otherwise the tracklet is dropped (a deblended galaxy or a string of blends).
    """
    trail = np.nan_to_num(np.asarray(slow["trail_arcsec"], float))
    exptime = np.asarray(slow["exptime"], float)
    # a blob's measured length is uncertain by a few PSF widths (seeing, blends): 4 minor-axis rms
    scale = np.asarray(slow["pixel_scale"], float)  # [arcsec/px]
    if "drift_length" in slow.colnames and "detector_length" in slow.colnames:
        # where the stars trail by a drift S a mover draws S + m, |S + m| - |S| <= |m|: a faint trail measured short
        # has no own motion to speak of (its own_motion, T - S, would be about S)
        drift = np.nan_to_num(np.asarray(slow["drift_length"], float))
        beyond = np.clip(np.nan_to_num(np.asarray(slow["detector_length"], float)) - drift, 0.0, None) * scale
        trail = np.where(drift > 0, beyond, trail)
    width = np.nan_to_num(np.asarray(slow["b"], float) * scale)
    t_h, xi, eta = (np.asarray(slow[c], float) for c in ("t_hours", "xi", "eta"))
    sigma = np.asarray(slow["sigma"], float)
    kept = []
    for trk in tracklets:
        idx = np.array(trk.members)
        slack = max(margin * float(np.median(scale[idx])), 4.0 * float(np.median(width[idx])))
        ok = trail[idx] <= trk.rate * exptime[idx] / 3600.0 + slack
        if ok.all():
            kept.append(trk)
            continue
        if ok.sum() < max(min_detections, math.ceil(idx.size / 3.0)):
            log.debug("tracklet at (%.1f, %.1f) rejected: trails %.1f\" for %.1f\"/h", trk.x0, trk.y0,
                      float(np.median(trail[idx])), trk.rate)
            continue
        sub = idx[ok]
        p, c, chi2, t_ref = fit_linear_motion(t_h[sub], xi[sub], eta[sub], sigma[sub])
        log.debug("tracklet at (%.1f, %.1f): %d blended members removed", trk.x0, trk.y0, int((~ok).sum()))
        kept.append(Tracklet(tuple(int(k) for k in sub), p[0], p[1], p[2], p[3], c, chi2, 2 * sub.size - 4, t_ref))
    return kept


#: Relative uncertainty of the part of a cut trail that lies beyond the detector edge: the far end of a
#: faint trail is measured short, which the restored centre inherits (bench_streaks, 6 seeds: the two
#: restored trails were off by 0.35 and 0.77 of the missing length).
CUT_END_ERROR = 0.5


def restore_cut_centres(trails: Table, trk: Tracklet, plane: TangentPlane, *, iterations: int = 5) -> Tracklet:
    """Move the centres of members cut by the detector edge to the object's mid-exposure position.

    The visible part of a cut trail ends at the object's true position at one end of the
    exposure; the whole trail is ``rate * exptime`` long, so its centre lies half the missing
    length further towards the cut end.  The rate comes from the tracklet's line, which the
    cut member's own position biases: shift, refit, shift again from the measured position
    (the bias shrinks by about half the exposure over the time between exposures each time).
    Updates ``xi, eta, ra, dec, x, y`` of those rows of ``trails`` (``x, y`` possibly off the
    detector); their along-track error grows by the rate uncertainty times half the exposure
    and by :data:`CUT_END_ERROR` of the missing length.  Returns the tracklet refitted.
    """
    # (on an exposure whose stars are trailed the cut trail is the motion plus the drift: its missing part is not
    # the motion's, and it is left where it was measured)
    drifted = (np.asarray(trails["stars_trailed"], bool) if "stars_trailed" in trails.colnames
               else np.zeros(len(trails), bool))
    cut = [k for k in trk.members if math.isfinite(float(trails["cut_pa"][k])) and not drifted[k]]
    if not cut:
        return trk
    idx = np.array(trk.members)
    seen = {k: (float(trails["xi"][k]), float(trails["eta"][k]), float(trails["x"][k]), float(trails["y"][k]))
            for k in cut}
    missing = {}

    def refit():
        p, c, chi2, t_ref = fit_linear_motion(np.asarray(trails["t_hours"], float)[idx], np.asarray(trails["xi"], float)[idx],
                                              np.asarray(trails["eta"], float)[idx], np.asarray(trails["sigma"], float)[idx])
        return Tracklet(trk.members, p[0], p[1], p[2], p[3], c, chi2, trk.dof, t_ref)

    for _ in range(iterations):
        rate = math.hypot(trk.vx, trk.vy)
        for k in cut:
            pa = math.radians(float(trails["cut_pa"][k]))
            missing[k] = max(rate * float(trails["exptime"][k]) / 3600.0 - float(trails["trail_arcsec"][k]), 0.0)
            shift = 0.5 * missing[k]
            xi0, eta0, x0, y0 = seen[k]
            trails["xi"][k], trails["eta"][k] = xi0 + shift * math.sin(pa), eta0 + shift * math.cos(pa)
            step = np.sign(int(trails["cut"][k])) * shift / float(trails["pixel_scale"][k])
            trails["x"][k] = x0 + step * math.cos(float(trails["theta"][k]))
            trails["y"][k] = y0 + step * math.sin(float(trails["theta"][k]))
        trk = refit()
    rate_err = math.sqrt(max(trk.cov[2, 2] + trk.cov[3, 3], 0.0))
    for k in cut:
        pa = math.radians(float(trails["cut_pa"][k]))
        ra, dec = plane.to_sky(np.array([trails["xi"][k]]), np.array([trails["eta"][k]]))
        trails["ra"][k], trails["dec"][k] = float(ra[0]), float(dec[0])
        # along-track error: the rate's, plus the far end's (faint ends fade)
        along = math.hypot(0.5 * rate_err * float(trails["exptime"][k]) / 3600.0, CUT_END_ERROR * missing[k])
        trails["ra_err"][k] = math.hypot(float(trails["ra_err"][k]), along * math.sin(pa))
        trails["dec_err"][k] = math.hypot(float(trails["dec_err"][k]), along * math.cos(pa))
        trails["sigma"][k] = math.hypot(float(trails["sigma"][k]), along / math.sqrt(2.0))
    return refit()


#: Detections drawn as lines (satellites, streaks, diffraction spikes, bleed trails) that can hide a mover along them.
LINE_KINDS = ("satellite", "streak", "spike", "bleed")


#: Detections whose whole extent, not just their centre, could hide a mover in an exposure (:class:`Footprints`): the
#: line-like ones and every trail (on member 287 a V 21.6 fast mover's path in two exposures ran along a bright
#: diffraction spike measured as a 56 px trail whose centre lay 2.6" off it: its two clean trails were refused as
#: "unseen" there).
HIDING_KINDS = LINE_KINDS + ("trail",)


class Footprints:
    """Where each exposure saw the sky: per CCD exposure, the convex hull of its detections' tangent-plane
    positions (a CCD's area up to its outermost detections, a few pixels inside its edges), and where it
    detected something (a source there, or a satellite or spike passing there, could hide a mover).

    ``detections`` need ``exposure, ccd, xi, eta`` [arcsec] and, for the line-like ones and trails
    (:data:`HIDING_KINDS`), ``kind, trail_arcsec, trail_pa``.
    """

    def __init__(self, detections: Table):
        from scipy.spatial import Delaunay, QhullError

        self.hulls: dict[int, list] = {}
        expo, ccd = np.asarray(detections["exposure"]), np.asarray(detections["ccd"]).astype(str)
        xi, eta = np.asarray(detections["xi"], float), np.asarray(detections["eta"], float)
        finite = np.isfinite(xi) & np.isfinite(eta)
        self.trees = {int(e): cKDTree(np.column_stack([xi[(expo == e) & finite], eta[(expo == e) & finite]]))
                      for e in np.unique(expo[finite])}
        lines = np.isin(np.asarray(detections["kind"]), HIDING_KINDS) & np.isfinite(xi)
        self.lines: dict[int, np.ndarray] = {}
        for k in np.nonzero(lines)[0]:
            pa = math.radians(float(detections["trail_pa"][k]))
            half = 0.5 * float(np.nan_to_num(detections["trail_arcsec"][k]))
            self.lines.setdefault(int(expo[k]), []).append((xi[k], eta[k], math.sin(pa), math.cos(pa), half))
        self.lines = {e: np.array(v) for e, v in self.lines.items()}
        for key in sorted(set(zip(expo.tolist(), ccd.tolist()))):
            sel = (expo == key[0]) & (ccd == key[1]) & np.isfinite(xi) & np.isfinite(eta)
            if sel.sum() < 10:
                continue
            try:
                self.hulls.setdefault(int(key[0]), []).append(Delaunay(np.column_stack([xi[sel], eta[sel]])))
            except QhullError:
                continue

    def covers(self, exposure: int, points: np.ndarray) -> bool:
        """Whether all ``points`` (m, 2) [arcsec] lie on one CCD of ``exposure``."""
        return any(np.all(hull.find_simplex(points) >= 0) for hull in self.hulls.get(int(exposure), []))

    def occupied(self, exposure: int, centre: np.ndarray, radius: float) -> bool:
        """Whether ``exposure`` detected anything within ``radius`` [arcsec] of ``centre`` (a line-like
        detection: anything along it)."""
        tree = self.trees.get(int(exposure))
        if tree is not None and tree.query_ball_point(centre, radius, return_length=True):
            return True
        lines = self.lines.get(int(exposure))
        if lines is None:
            return False
        d = np.asarray(centre, float) - lines[:, :2]
        along = d[:, 0] * lines[:, 2] + d[:, 1] * lines[:, 3]
        across = np.abs(d[:, 0] * lines[:, 3] - d[:, 1] * lines[:, 2])
        return bool(np.any((np.abs(along) <= lines[:, 4] + radius) & (across <= radius)))


#: Margin [arcsec] around a trail that must lie on a CCD for the trail to count as one the exposure would have seen.
UNSEEN_MARGIN = 1.0


def _seen_elsewhere(trk: Tracklet, trails: Table, footprints: Footprints, t_exposures: dict) -> list[int]:
    """Exposures without a member where the tracklet's whole trail (plus a margin) lay on a CCD with nothing
    detected on it (no source that could have hidden it)."""
    mine = {int(trails["exposure"][k]) for k in trk.members}
    exptime_h = float(np.median(np.asarray(trails["exptime"], float)[list(trk.members)])) / 3600.0
    rate = max(trk.rate, 1e-9)
    u = np.array([trk.vx, trk.vy]) / rate
    w = np.array([-u[1], u[0]])
    half = 0.5 * rate * exptime_h + UNSEEN_MARGIN
    seen = []
    for e, t in t_exposures.items():
        if e in mine:
            continue
        p = np.array([trk.x0 + trk.vx * (t - trk.t_ref), trk.y0 + trk.vy * (t - trk.t_ref)])
        box = np.array([p + half * u, p - half * u, p + UNSEEN_MARGIN * w, p - UNSEEN_MARGIN * w])
        if footprints.covers(e, box) and not footprints.occupied(e, p, half):
            seen.append(int(e))
    return seen


def link_fast(moving: Table, used: set, config: Config, plane: TangentPlane, footprints: Footprints | None = None,
              t_exposures: dict | None = None) -> tuple[Table, list, dict]:
    """Trails long enough to measure, not already in a slow tracklet, linked across exposures.

    A chain of only two trails is weak evidence (two unrelated trails agree by chance in a busy field): it
    is kept only when no other exposure had the whole trail on a CCD with nothing detected on it
    (``footprints``): the object left the field, entered it, fell in a gap or was hidden by a source.

    Returns ``(trails, tracklets, stats)``: the trails the linker saw (cut centres of linked members
    restored), the chains indexing them in the order of their first trail, and the linker's counts
    (``n_pairs_unseen``: two-trail chains refused because another exposure should have seen the object).
    """
    sc = config.streaks
    keep = (np.asarray(moving["kind"]) == "trail") & (np.asarray(moving["length"], float) >= sc.min_length)
    keep &= ~np.isin(np.arange(len(moving)), list(used))
    timed = np.asarray(moving["exptime"], float) > 0  # a trail's rate needs its exposure time
    n_no_exptime = int(np.sum(keep & ~timed))
    if n_no_exptime:
        # named, so that the header to mend is found: the first few files, the rest counted
        files = np.asarray(moving["file"])[keep & ~timed].astype(str) if "file" in moving.colnames else []
        names = list(dict.fromkeys(files))
        where = (f" ({', '.join(names[:3])}" + (f" and {len(names) - 3} other file(s)" if len(names) > 3 else "")
                 + ")") if names else ""
        log.warning("%d trails from exposures without an exposure time%s left out of fast-mover linking (a trail "
                    "gives a rate only over a known exposure time)", n_no_exptime, where)
    trails = moving[keep & timed]
    links = link_streaks(
        np.asarray(trails["exposure"]), np.asarray(trails["t_hours"], float), np.asarray(trails["xi"], float),
        np.asarray(trails["eta"], float), np.asarray(trails["sigma"], float), np.asarray(trails["trail_arcsec"], float),
        np.asarray(trails["trail_pa"], float), np.asarray(trails["exptime"], float),
        flux=np.asarray(trails["flux"], float), whole=np.asarray(trails["cut"]) == 0,
        length_sigma=np.asarray(trails["trail_arcsec_err"], float), axis_sigma=np.asarray(trails["trail_pa_err"], float),
        cut_pa=np.asarray(trails["cut_pa"], float),
        min_exposures=sc.min_exposures, rate_tol=sc.rate_tolerance, angle_tol=sc.angle_tolerance,
        max_chi2_dof=sc.max_chi2_dof,
    )
    stats = dict(links.stats)
    stats["n_no_exptime"] = n_no_exptime
    chains = list(links.tracklets)
    stats["n_pairs_unseen"] = 0
    if footprints is not None and t_exposures:
        kept_chains = []
        for trk in chains:
            unseen = len(trk.members) == 2 and _seen_elsewhere(trk, trails, footprints, t_exposures)
            if unseen:
                stats["n_pairs_unseen"] += 1
                log.debug("two-trail chain at (%.1f, %.1f) refused: exposure(s) %s would have seen it", trk.x0, trk.y0,
                          unseen)
                continue
            kept_chains.append(trk)
        chains = kept_chains
        stats["n_chains"] = len(chains)
        stats["n_linked"] = sum(len(t.members) for t in chains)
        stats["n_unlinked"] = stats["n_trails"] - stats["n_linked"]
    # names in the order of the objects' first detections (row order, the same on every executor): float noise
    # between executors cannot reorder them, as it could a sort on fitted values
    kept = [restore_cut_centres(trails, trk, plane) for trk in chains]
    return trails, kept, stats


#: Columns of ``streaks.ecsv``: every trail and streak of the run and what became of it.
STREAK_COLUMNS = [
    ("exposure", "i8", "", "exposure index"),
    ("ccd", "U32", "", "CCD identifier"),
    ("x", "f8", "pix", "trail centre (mid-exposure position), 0-based"),
    ("y", "f8", "pix", "trail centre, 0-based"),
    ("ra", "f8", "deg", "trail centre"),
    ("dec", "f8", "deg", "trail centre"),
    ("length", "f8", "pix", "trail length"),
    ("trail_arcsec", "f8", "arcsec", "trail length on the sky"),
    ("trail_pa", "f8", "deg", "trail axis position angle, 0-180"),
    ("theta", "f8", "rad", "trail axis on the detector, from +x towards +y"),
    ("rate", "f8", "arcsec / h", "rate implied by the trail length and exposure time"),
    ("mag", "f8", "mag", "magnitude"),
    ("snr", "f8", "", "signal-to-noise ratio"),
    ("detector_length", "f8", "pix", "the trail as seen on the detector: where the stars are trailed, the source's "
     "motion plus the drift (length and theta are then its motion); elsewhere the same as length"),
    ("detector_theta", "f8", "rad", "its axis on the detector, from +x towards +y"),
    ("status", "U10", "", "linked (to object) | single (SSO-like trail seen in one exposure) | static (linked, then found still there "
     "after it moved on: occupancy test) | satellite | bleed | spike | edge | blend (a long footprint whose light lies "
     "in patches: stars joined by their wings)"),
    ("object", "U8", "", "object identifier when linked"),
]


def streak_table(detections: Table, trails: Table, fast: list, names: list[str]) -> Table:
    """Every measured trail (linked to ``names[i]`` of ``fast[i]``, or single) plus satellites and bleeds."""
    member_of = {k: names[n] for n, trk in enumerate(fast) for k in trk.members}
    rows = [(row, "linked" if k in member_of else "single", member_of.get(k, "")) for k, row in enumerate(trails)]
    if len(detections):
        others = detections[np.isin(np.asarray(detections["kind"]), ["satellite", "bleed", "spike", "edge", "blend"])]
        rows += [(row, str(row["kind"]), "") for row in others]
    if not rows:
        return empty_table(STREAK_COLUMNS)
    out = []
    for row, status, name in rows:
        rate = float(row["trail_arcsec"]) / max(float(row["exptime"]), 1e-9) * 3600.0
        theta = float(row["theta"]) if "theta" in row.colnames else float("nan")
        seen_length = float(row["detector_length"]) if "detector_length" in row.colnames else float(row["length"])
        seen_theta = float(row["detector_theta"]) if "detector_theta" in row.colnames else theta
        out.append((int(row["exposure"]), str(row["ccd"]), float(row["x"]), float(row["y"]), float(row["ra"]),
                    float(row["dec"]), float(row["length"]), float(row["trail_arcsec"]), float(row["trail_pa"]),
                    theta, rate, float(row["mag"]), float(row["snr"]), seen_length, seen_theta, status, name))
    table = Table(rows=out, names=[c[0] for c in STREAK_COLUMNS], dtype=[c[1] for c in STREAK_COLUMNS])
    return describe(table, STREAK_COLUMNS)


def link_movers(detections: Table, exposure_mjd: dict, config: Config, observers: dict | None = None) -> MoverLinks:
    """Link a field's detections into slow and fast movers.

    Parameters
    ----------
    detections : Table
        Every CCD exposure's detections on the sky (``ra, dec`` through the fitted or header WCS).
    exposure_mjd : dict
        Exposure index -> mid-exposure MJD (UTC) of every exposure of the run, including those
        without detections (the occupancy test predicts into them).
    config : Config
    observers : dict, optional
        Exposure index -> geocentric ICRF position [km] of a space-based observer, for every exposure: slow
        tracklets are then extended into the exposures they miss by their motion with the observer's parallax
        (:func:`ssodetect.link.parallax.extend_tracklets`).

    Returns
    -------
    MoverLinks
    """
    if len(detections):
        ra0, dec0 = float(np.median(detections["ra"])), float(np.median(detections["dec"]))
    else:
        ra0, dec0 = 0.0, 0.0
    plane = TangentPlane(ra0, dec0)
    t0_mjd = float(exposure_mjd[min(exposure_mjd)]) if exposure_mjd else 0.0
    t_exposures = {int(e): (float(mjd) - t0_mjd) * 24.0 for e, mjd in exposure_mjd.items()}
    cand = select_candidates(detections, config, plane, t0_mjd)
    kind = np.asarray(cand["kind"])
    moving = cand[~np.asarray(cand["static"]) & ~np.asarray(cand["artefact"]) & (kind != "extended")]
    stats: dict = {"n_detections": len(detections), "n_usable": len(cand), "n_static": int(np.sum(cand["static"])),
                   "n_moving_matches": int(cand.meta.get("n_moving_matches", 0)),
                   "n_core_masked_flux": int(cand.meta.get("n_core_masked_flux", 0)),
                   "n_artefact": int(np.sum(cand["artefact"])), "n_moving": len(moving)}
    lk = config.link
    # trails longer than the fastest slow motion can draw are for the streak linking only; the
    # measured length of a short blob (a blend, a seeing-elongated source) is uncertain by a few PSF widths
    reach = 1.5 * lk.max_rate * np.asarray(moving["exptime"], float) / 3600.0 + np.maximum(
        0.5, 4.0 * np.asarray(moving["b"], float) * np.asarray(moving["pixel_scale"], float))
    long_trail = (np.asarray(moving["kind"]) == "trail") & (np.nan_to_num(np.asarray(moving["trail_arcsec"], float)) > reach)
    faint = np.asarray(moving["snr"], float) < lk.min_snr
    slow_idx = np.nonzero(~long_trail & ~faint)[0]
    stats["slow"] = {"n_candidates": int(slow_idx.size), "n_below_min_snr": int(np.sum(~long_trail & faint)),
                     "n_trails_too_long": int(long_trail.sum())}
    # trails too long for the slow linker go to the fast one when at least streaks.min_length px (and streaks are on)
    to_fast = long_trail & (np.asarray(moving["length"], float) >= config.streaks.min_length) & config.streaks.enabled
    stats["n_trails_linked_by_neither"] = int(np.sum(long_trail & ~to_fast))
    if stats["n_trails_linked_by_neither"]:
        log.info("%d trails too long for the slow linker and too short (< %g px) or disabled for the fast one: not "
                 "linked", stats["n_trails_linked_by_neither"], config.streaks.min_length)
    slow = moving[slow_idx]
    stats["slow"]["n_trails_widened"] = widen_trail_tolerance(slow)
    # the false-alarm budget is per CCD: a field of many CCDs tries as many more hypotheses
    n_ccds = max(len(np.unique(np.asarray(detections["ccd"]))), 1) if len(detections) else 1
    stats["slow"]["false_alarm_budget"] = lk.max_false_alarms * n_ccds
    linked = link_tracklets(
        np.asarray(slow["exposure"]), np.asarray(slow["t_hours"]), np.asarray(slow["xi"]),
        np.asarray(slow["eta"]), np.asarray(slow["sigma"]), np.asarray(slow["flux"]),
        np.asarray(slow["flux_err"]),
        min_rate=lk.min_rate, max_rate=lk.max_rate, min_detections=lk.min_detections, match_sigma=lk.match_sigma,
        match_floor=lk.match_floor, max_chi2_dof=lk.max_chi2_dof, max_flux_ratio=lk.max_flux_ratio,
        min_rate_significance=lk.min_rate_significance, min_fraction=lk.min_fraction,
        max_false_alarms=lk.max_false_alarms * n_ccds, flux_scatter=lk.flux_scatter,
        # a CCD's exposures placed through one shared solution move together: that error does not blur a motion
        shared=np.asarray(slow["sky_err_shared"], float) if "sky_err_shared" in slow.colnames else None,
        group=np.asarray(slow["ccd"]).astype(str),
        seed=~np.asarray(slow["edge_weak"], bool),
        # a trail near the edge as long as the mover's other trails is whole: it seeds with them
        trail=trail_motions(slow),
        # refused by a small margin and seen in fewer exposures than there are: confirmed or dropped on the pixels
        doubtful_factor=lk.confirm_max_excess if lk.occupancy_test else 0.0,
    )
    stats["slow"].update(linked.stats)
    stats["slow"]["n_edge_weak"] = int(np.sum(slow["edge_weak"]))
    tracklets, counts = _vet_slow(linked.tracklets, slow, cand, t_exposures, config)
    stats["slow"].update({f"n_rejected_{name}": n for name, n in counts.items()})
    if stats["slow"]["n_rejected_edge"]:
        log.info("%d slow tracklets made of more than three quarters detector-edge fits dropped (stars sliding along "
                 "an edge)", stats["slow"]["n_rejected_edge"])
    stats["slow"]["n_tracklets"] = len(tracklets)
    # a doubtful tracklet needs an exposure without a detection of it to be confirmed in
    doubtful = [t for t in linked.doubtful if len({int(slow["exposure"][k]) for k in t.members}) < len(t_exposures)]
    stats["slow"]["n_doubtful_seen_everywhere"] = len(linked.doubtful) - len(doubtful)
    doubtful, counts = _vet_slow(doubtful, slow, cand, t_exposures, config)
    stats["slow"]["n_doubtful_vetted"] = sum(counts.values())
    stats["slow"]["n_doubtful_kept"] = len(doubtful)
    used = {int(slow_idx[k]) for trk in tracklets + doubtful for k in trk.members}
    n_slow = len(slow)
    if observers and len(observers) > lk.min_detections and all(o is not None for o in observers.values()):
        # seen from orbit, a long sequence's blocks lie off one straight line by the observer's parallax: each
        # tracklet (straight within its block) is extended by its motion with the parallax into the others
        # (extended detector artefacts too: within a block NEOSSat's comet moved with the field's drift, and its coma
        # was taken for a source fixed on the detector; a hot pixel's compact footprint never joins)
        wide = np.asarray(cand["npix"], float) >= EXTENDED_JOIN_AREA * np.asarray(cand["b"], float) ** 2
        pool = cand[~np.asarray(cand["static"]) & (~np.asarray(cand["artefact"]) | wide)]
        tracklets, slow, stats["slow"]["parallax"] = extend_tracklets(tracklets, slow, pool, observers, plane,
                                                                      times_h=t_exposures)
        at = {detection_key(moving, k): k for k in range(len(moving))}
        used |= {at[key] for key in (detection_key(slow, k) for k in range(n_slow, len(slow))) if key in at}
        skipped = stats["slow"]["parallax"]["skipped"]
        if skipped:  # a path no spacecraft follows is a header problem, said; a fixed observer has no parallax
            (log.warning if "jumps" in skipped else log.info)("slow movers: no tracklet extended by the observer's "
                                                              "parallax: %s", skipped)
        px = stats["slow"]["parallax"]
        if px["n_joined"]:
            log.info("slow movers: %d tracklets extended by their motion with the observer's parallax into %d more "
                     "exposures (distances %s km)", px["n_extended"], px["n_joined"], px["distances_km"])
        elif px["n_fitted"]:
            log.info("slow movers: %d tracklets fitted with the observer's parallax, none extended", px["n_fitted"])
        if px["n_no_parallax"] or px["n_at_bound"] or px["n_unfittable"]:
            log.info("slow movers: not extended by the observer's parallax: %d whose fit found none (a straight "
                     "motion), %d held at the distance bound (%.0f km: no parallax told, or nearer), %d with a "
                     "non-finite position or error", px["n_no_parallax"], px["n_at_bound"], MIN_DISTANCE_KM,
                     px["n_unfittable"])
    elif observers and all(o is not None for o in observers.values()):
        log.info("slow movers: the observer's parallax not used: %d exposures, no more than link.min_detections "
                 "(%d), so every tracklet already holds them all", len(observers), lk.min_detections)
    trails, fast = moving[:0], []
    if config.streaks.enabled:
        everything = detections.copy(copy_data=False)
        everything["xi"], everything["eta"] = plane.to_plane(np.asarray(detections["ra"], float),
                                                             np.asarray(detections["dec"], float))
        trails, fast, stats["fast"] = link_fast(moving, used, config, plane, Footprints(everything), t_exposures)
    return MoverLinks(plane, t0_mjd, cand, moving, slow, tracklets, trails, fast, stats, doubtful)


#: A candidate taken for a detector artefact may still join a tracklet seen from orbit when its footprint covers at
#: least this many times its minor-axis variance [px^2] (a comet's coma: 2500 px at b = 1.8 px; a hot pixel: 3-20).
EXTENDED_JOIN_AREA = 100.0


#: Floor [px] of a trail length's error as a motion (trails of one mover differ by this much between exposures
#: beyond their fit errors: PSF and sampling).
TRAIL_LENGTH_FLOOR = 0.3
#: Relative error of a trail length measured by moments (no trail fit, no error of its own).
TRAIL_MOMENTS_ERROR = 0.05


def trail_motions(cand: Table) -> np.ndarray:
    """Each candidate's trail as a motion, for :func:`~ssodetect.link.tracklets.link_tracklets` ``trail``.

    Parameters
    ----------
    cand : Table
        Candidates with ``kind``, ``length`` and ``b`` [px], ``trail_arcsec``, ``trail_pa`` [deg, East of North] and
        their errors (NaN without a trail fit), ``exptime`` [s], ``pixel_scale`` [arcsec/px].

    Returns
    -------
    ndarray (n, 4)
        Rate the trail's length implies over its exposure [arcsec/h], its error (fit error, or
        :data:`TRAIL_MOMENTS_ERROR` of the length, with :data:`TRAIL_LENGTH_FLOOR` px), axis [deg] and its error
        (fit error with the angle 1 px subtends over the length).  NaN rows for point sources and for trails
        shorter than :data:`~ssodetect.streaks.detect.EDGE_MIN_TRAIL_FWHM` of their own width's FWHM (a star cut
        in half by the edge looks like one).
    """
    n = len(cand)
    out = np.full((n, 4), np.nan)
    if n == 0 or "trail_arcsec" not in cand.colnames:
        return out
    scale = np.asarray(cand["pixel_scale"], float)
    length_px = np.asarray(cand["length"], float)
    fwhm = np.asarray(cand["b"], float) / FWHM_TO_SIGMA
    use = (np.asarray(cand["kind"]) == "trail") & (length_px >= EDGE_MIN_TRAIL_FWHM * fwhm)
    length = np.asarray(cand["trail_arcsec"], float)
    exptime = np.asarray(cand["exptime"], float)
    with np.errstate(divide="ignore", invalid="ignore"):  # (no exposure time: no rate from the trail)
        per_hour = np.where(exptime > 0, 3600.0 / exptime, np.nan)
    length_err = np.hypot(np.where(np.isfinite(cand["trail_arcsec_err"]), cand["trail_arcsec_err"],
                                   TRAIL_MOMENTS_ERROR * length), TRAIL_LENGTH_FLOOR * scale)
    pa_err = np.hypot(np.nan_to_num(np.asarray(cand["trail_pa_err"], float)),
                      np.degrees(np.arctan2(scale, np.maximum(length, 1e-9))))
    with np.errstate(invalid="ignore"):
        use &= np.isfinite(length) & (length > 0) & np.isfinite(per_hour)
    out[use] = np.column_stack([length * per_hour, length_err * per_hour, np.asarray(cand["trail_pa"], float),
                                pa_err])[use]
    return out


def _vet_slow(tracklets: list, slow: Table, cand: Table, t_exposures: dict, config: Config) -> tuple[list, dict]:
    """The slow tracklets that pass the catalogue-level vetting (occupancy of their positions by other
    candidates, trail lengths, detector-edge fits, total signal-to-noise), in the order of their first detections
    (the linker ranks by fit quality, where 1e-5 mas of float noise between serial and Dask runs swapped the
    names of two objects with equal chi2 in a full field), and how many each vetting removed."""
    lk = config.link
    counts = {}
    n0 = len(tracklets)
    tracklets = vet_occupancy(tracklets, slow, cand, t_exposures, config)
    counts["occupancy"] = n0 - len(tracklets)
    n0 = len(tracklets)
    tracklets = vet_trail_lengths(tracklets, slow, lk.min_detections)
    counts["trail_length"] = n0 - len(tracklets)
    n0 = len(tracklets)
    at_edge = np.asarray(slow["edge_weak"], bool)
    if "edge_fit" in slow.colnames:
        at_edge = at_edge | np.asarray(slow["edge_fit"], bool)
    tracklets = vet_edge_fits(tracklets, at_edge)
    counts["edge"] = n0 - len(tracklets)
    snr = np.asarray(slow["snr"], float)
    n0 = len(tracklets)
    tracklets = [t for t in tracklets if math.sqrt(float(np.sum(snr[list(t.members)] ** 2))) >= lk.min_total_snr]
    counts["total_snr"] = n0 - len(tracklets)
    tracklets.sort(key=lambda t: min(t.members))
    return tracklets, counts
