"""Pixel occupancy: is a slow tracklet's source still where it was after the object left?

A slow "mover" strung from detections of a static source (a faint galaxy whose centroid
jitters from exposure to exposure, a faint companion on a star's wing) moves by less than
its own jitter.  The detection catalogue cannot tell: in the other exposures the source
may have been detected a few tenths of an arcsecond away, or not at all.  The pixels can:
the flux measured with the mover's own PSF/trail template at a member's position, in an
exposure taken when the object was elsewhere, is (nearly) zero for a mover and the full
flux for a static source.

Everything here is pure numpy over arrays (:func:`measure_response` applies the detection stage's PSF
photometry to an image given); the pipeline reads the images and measures the fluxes
(:mod:`ssodetect.pipeline.occupancy`).  Positions are tangent-plane offsets [arcsec].  How much
of a source a template placed beside it still measures is the filter's *response*: measured on
the image's own stars (:func:`filter_response`; a Moffat or double-Gaussian PSF's wings reach
further than the Gaussian template assumes) or, without enough stars, that of a Gaussian of
``sigma`` [arcsec]; a trail sweeps it along the motion during the exposure.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from ssodetect.detect.shape import psf_photometry

__all__ = ["trail_overlap", "occupancy_scores", "occupancy_verdict", "shows_motion", "missing_deficit",
           "RESPONSE_RADII", "RESPONSE_DIRECTIONS", "MIN_RESPONSE_STARS", "response_offsets", "filter_response",
           "response_stars", "stars_by_image", "measure_response", "light_left_there", "STATIC_CHECK_FWHM"]

#: Distances [px] from a star at which the template's flux is measured for :func:`filter_response` (beyond the last,
#: the response is taken as 0: ~4.5 FWHM of the widest PSF expected, where a Moffat beta 2 keeps ~1 % of its peak).
RESPONSE_RADII = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0])
#: Directions around each star averaged at each radius (the response is taken as round).
RESPONSE_DIRECTIONS = 8
#: Fewer stars measured than this: the Gaussian model's response is used.
MIN_RESPONSE_STARS = 5
#: A star's template flux must be this many sigma for its response to count.
RESPONSE_MIN_SNR = 30.0
#: Stars measured per image for the response (the brightest that qualify).
RESPONSE_MAX_STARS = 40
#: A star measured for the response has no other detection within this distance [px] (its neighbours' light would
#: read as its own wings).
RESPONSE_ISOLATION = 12.0


def response_stars(x: np.ndarray, y: np.ndarray, snr: np.ndarray, usable: np.ndarray, *,
                   max_stars: int = RESPONSE_MAX_STARS, isolation: float = RESPONSE_ISOLATION) -> np.ndarray:
    """The detections of one image to measure :func:`filter_response` on.

    Parameters
    ----------
    x, y : ndarray (n,)
        Every detection of the image [px, 0-based].
    snr : ndarray (n,)
        Their S/N.
    usable : ndarray (n,) of bool
        Point sources clear of masked pixels and flags (the caller's choice).
    max_stars, isolation
        At most this many, the brightest, with no other detection within ``isolation`` px.

    Returns
    -------
    ndarray of int
        Indices into the detections, brightest first.
    """
    if not (max_stars >= 0 and math.isfinite(isolation) and isolation >= 0):
        raise ValueError(f"response_stars: max_stars >= 0 and a finite isolation >= 0, not {max_stars}, {isolation}")
    x, y, snr = (np.asarray(v, float) for v in (x, y, snr))
    usable = np.asarray(usable, bool) & np.isfinite(x) & np.isfinite(y) & (snr >= RESPONSE_MIN_SNR)
    if not usable.any():
        return np.zeros(0, int)
    placed = np.isfinite(x) & np.isfinite(y)
    tree = cKDTree(np.column_stack([x[placed], y[placed]]))
    idx = np.nonzero(usable)[0]
    idx = idx[tree.query_ball_point(np.column_stack([x[idx], y[idx]]), isolation, return_length=True) <= 1]
    return idx[np.argsort(-snr[idx], kind="stable")][:max_stars]


def _samples(length: float, n: int) -> np.ndarray:
    return ((np.arange(n) + 0.5) / n - 0.5) * float(length)


def response_offsets(radii: np.ndarray = RESPONSE_RADII, n_directions: int = RESPONSE_DIRECTIONS
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Offsets [px] from a star at which :func:`filter_response` wants the template's flux.

    Returns
    -------
    dx, dy : ndarray (1 + (len(radii) - 1) * n_directions,)
        The star itself first (``radii[0]`` must be 0), then ``n_directions`` offsets at each further radius.
    """
    radii = np.asarray(radii, float)
    phi = 2.0 * np.pi * np.arange(n_directions) / n_directions
    dx = np.concatenate([[0.0], (radii[1:, None] * np.cos(phi)[None, :]).ravel()])
    dy = np.concatenate([[0.0], (radii[1:, None] * np.sin(phi)[None, :]).ravel()])
    return dx, dy


def filter_response(flux: np.ndarray, flux_err: np.ndarray, radii: np.ndarray = RESPONSE_RADII,
                    n_directions: int = RESPONSE_DIRECTIONS, *, min_stars: int = MIN_RESPONSE_STARS,
                    min_snr: float = RESPONSE_MIN_SNR) -> np.ndarray | None:
    """The template's response to a point source at each distance, measured on stars.

    Parameters
    ----------
    flux, flux_err : ndarray (n_stars, 1 + (len(radii) - 1) * n_directions)
        The template's flux and error [ADU] at each star's :func:`response_offsets`.
    radii : ndarray (n_r,)
        The distances [px] (``radii[0] == 0``).
    n_directions : int
        Offsets per radius.
    min_stars : int
        Fewer stars measured everywhere at ``min_snr`` or more: None.
    min_snr : float
        A star's flux on itself must be this many sigma.

    Returns
    -------
    ndarray (n_r,) or None
        Flux measured at each distance / flux on the star (the median over stars of the mean over directions),
        1 at 0, never increasing outwards, in [0, 1].
    """
    if min_stars < 1:
        raise ValueError(f"filter_response: min_stars must be at least 1, not {min_stars}")
    flux = np.atleast_2d(np.asarray(flux, float))
    flux_err = np.atleast_2d(np.asarray(flux_err, float))
    n_r = len(radii)
    if flux.shape[1] != 1 + (n_r - 1) * n_directions:
        raise ValueError(f"filter_response: {flux.shape[1]} offsets per star, expected {1 + (n_r - 1) * n_directions}")
    centre, centre_err = flux[:, 0], flux_err[:, 0]
    good = np.isfinite(flux).all(axis=1) & np.isfinite(centre_err) & (centre_err > 0) & (centre >= min_snr * centre_err)
    if int(good.sum()) < min_stars:
        return None
    rings = flux[good, 1:].reshape(int(good.sum()), n_r - 1, n_directions).mean(axis=2) / centre[good, None]
    response = np.concatenate([[1.0], np.median(rings, axis=0)])
    return np.clip(np.minimum.accumulate(response), 0.0, 1.0)


def stars_by_image(detections) -> dict:
    """``(exposure, ccd) -> (x, y)`` [px, 0-based] of each image's stars to measure :func:`filter_response` on: its
    isolated point sources clear of masked pixels and extraction flags (:func:`response_stars`).

    ``detections``: a table with ``exposure, ccd, x, y, snr, kind`` (and, when present, ``near_mask``,
    ``masked_core``, ``sep_flag``); None or empty gives {}."""
    if detections is None or not len(detections):
        return {}
    exp_ = np.asarray(detections["exposure"]).astype(int)
    ccd = np.asarray(detections["ccd"]).astype(str)
    x, y, snr = (np.asarray(detections[c], float) for c in ("x", "y", "snr"))
    usable = np.asarray(detections["kind"]).astype(str) == "point"
    for column in ("near_mask", "masked_core"):
        if column in detections.colnames:
            usable &= ~np.asarray(detections[column], bool)
    if "sep_flag" in detections.colnames:
        usable &= np.asarray(detections["sep_flag"], int) == 0
    out = {}
    for key in {(int(e), str(c)) for e, c in zip(exp_, ccd)}:
        rows = np.nonzero((exp_ == key[0]) & (ccd == key[1]))[0]
        pick = rows[response_stars(x[rows], y[rows], snr[rows], usable[rows])]
        out[key] = (x[pick], y[pick])
    return out


def measure_response(image, variance, mask, star_x, star_y, psf_sigma: float, gain: float) -> np.ndarray | None:
    """:func:`filter_response` of one image: the point template's flux (:func:`ssodetect.detect.shape.psf_photometry`)
    at :func:`response_offsets` around each star ``(star_x, star_y)`` [px, 0-based] of the image ``(ny, nx)``
    [ADU] with its ``variance`` [ADU^2] and ``mask``; None without stars or with too few measured."""
    if not len(star_x):
        return None
    dx, dy = response_offsets()
    sx = (np.asarray(star_x, float)[:, None] + dx[None, :]).ravel()
    sy = (np.asarray(star_y, float)[:, None] + dy[None, :]).ravel()
    zeros = np.zeros(sx.size)
    flux, err = psf_photometry(image, variance, mask, sx, sy, zeros, zeros, psf_sigma, gain)
    return filter_response(flux.reshape(len(star_x), -1), err.reshape(len(star_x), -1))


def trail_overlap(offset: np.ndarray, direction: np.ndarray, length: float, sigma: float, n_samples: int = 15,
                  response: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Fraction of a moving source's flux that a matched filter placed elsewhere still measures.

    The template is the source's own image (a Gaussian of ``sigma`` swept over ``length``
    along ``direction``) at the tested position; the source is the same image displaced by
    ``offset``.  The filter's response to a point at distance ``d`` is ``response`` (measured on
    the image's stars, :func:`filter_response`) or, for a Gaussian PSF, ``exp(-d**2 / (4 sigma**2))``
    of its response at ``d = 0``; trails average it over both segments.

    Parameters
    ----------
    offset : ndarray (n, 2)
        Source position minus tested position [arcsec].
    direction : ndarray (2,)
        Direction of motion (normalised here).
    length : float
        Trail length during one exposure [arcsec] (0 for a point source).
    sigma : float
        PSF Gaussian sigma [arcsec].
    n_samples : int
        Points along each trail.
    response : (ndarray, ndarray), optional
        Distances [arcsec] (increasing from 0) and the point-source response there (0 beyond the last); None: the
        Gaussian's.

    Returns
    -------
    ndarray (n,)
        Measured flux / true flux, in [0, 1].
    """
    offset = np.atleast_2d(np.asarray(offset, float))
    d = np.asarray(direction, float)
    norm = np.hypot(d[0], d[1])
    d = d / norm if norm > 0 else np.array([1.0, 0.0])
    ns = 1 if length <= 0 else int(n_samples)
    u = _samples(length, ns)
    a = u[:, None] * d  # (ns, 2) the template's points
    b = offset[:, None, :] + a[None, :, :]  # (n, ns, 2) the source's points
    diff = a[None, :, None, :] - b[:, None, :, :]  # (n, ns, ns, 2)
    if response is None:
        if not sigma > 0:
            raise ValueError(f"trail_overlap: the PSF's sigma must be above 0, not {sigma}")
        k = -1.0 / (4.0 * sigma**2)
        num = np.exp(k * np.sum(diff**2, axis=-1)).mean(axis=(1, 2))
        den = np.exp(k * (u[:, None] - u[None, :]) ** 2).mean()
    else:
        radii, values = (np.asarray(v, float) for v in response)
        num = np.interp(np.sqrt(np.sum(diff**2, axis=-1)), radii, values, right=0.0).mean(axis=(1, 2))
        den = np.interp(np.abs(u[:, None] - u[None, :]), radii, values, right=0.0).mean()
    return np.clip(num / den, 0.0, 1.0)


def occupancy_scores(
    own_flux: np.ndarray,
    own_err: np.ndarray,
    other_flux: np.ndarray,
    other_err: np.ndarray,
    overlap: np.ndarray,
    *,
    max_overlap: float = 0.3,
    min_snr: float = 2.0,
    flux_scatter: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """How much of each tested position's source stays there when the object has left.

    For position ``i`` (a tracklet member) and another exposure ``k`` the ratio
    ``r = other_flux / own_flux`` is the mover's own overlap ``A`` (it has moved away) or 1
    (a static source), so ``s = (r - A) / (1 - A)`` is 0 for a mover and 1 for a static
    source.  The pairs of a position are combined by inverse variance; from three pairs on, by
    their median (one exposure where a static source reads empty, masked or cut, or where a
    cosmic ray or another mover lands on a mover's old position, does not decide).  A position
    whose own flux could not be measured (at the detector's edge in its exposure) is compared
    with the object's flux in its other positions (their inverse-variance mean, uncertain by
    ``flux_scatter`` of it): pieces of a diffraction spike strung into a mover at the edge stay
    testable.

    Parameters
    ----------
    own_flux, own_err : ndarray (m,)
        Template flux and its 1-sigma error at each position in its own exposure [ADU].
    other_flux, other_err : ndarray (m, k)
        The same at each position in the other exposures (NaN: not measured).
    overlap : ndarray (m, k)
        :func:`trail_overlap` of the object's position in exposure ``k`` with position ``i``.
    max_overlap : float
        Pairs where the object still overlaps its old position more than this tell nothing.
    min_snr : float
        Positions whose own flux is below this many sigma tell nothing.
    flux_scatter : float
        Relative flux variation of a real object between exposures, for a position compared with the
        object's flux in the others.

    Returns
    -------
    score, score_err : ndarray (m,)
        ``s`` and its 1-sigma error (NaN where no pair could be tested).
    """
    own_flux = np.asarray(own_flux, float)
    own_err = np.asarray(own_err, float)
    other_flux = np.atleast_2d(np.asarray(other_flux, float))
    other_err = np.atleast_2d(np.asarray(other_err, float))
    overlap = np.atleast_2d(np.asarray(overlap, float))
    m = len(own_flux)
    score = np.full(m, np.nan)
    score_err = np.full(m, np.nan)
    measured = np.isfinite(own_flux) & np.isfinite(own_err) & (own_err > 0)
    if measured.any():  # the object's flux, for a position whose own exposure could not measure it
        w_own = 1.0 / own_err[measured] ** 2
        object_flux = float(np.sum(w_own * own_flux[measured]) / np.sum(w_own))
        object_err = float(np.hypot(1.0 / np.sqrt(np.sum(w_own)), flux_scatter * object_flux))
    for i in range(m):
        f, e = (own_flux[i], own_err[i]) if measured[i] else (object_flux, object_err) if measured.any() else \
            (np.nan, np.nan)
        if not (np.isfinite(f) and np.isfinite(e) and e > 0 and f >= min_snr * e):
            continue
        ok = np.isfinite(other_flux[i]) & np.isfinite(other_err[i]) & (other_err[i] > 0) & (overlap[i] <= max_overlap)
        if not ok.any():
            continue
        a = overlap[i, ok]
        r = other_flux[i, ok] / f
        s = (r - a) / (1.0 - a)
        s_err = np.hypot(other_err[i, ok] / f, r * e / f) / (1.0 - a)
        if s.size >= 3:
            score[i] = float(np.median(s))
            score_err[i] = 1.2533 * float(np.sqrt(np.mean(s_err**2))) / np.sqrt(s.size)
        else:
            w = 1.0 / s_err**2
            score[i] = float(np.sum(w * s) / np.sum(w))
            score_err[i] = float(1.0 / np.sqrt(np.sum(w)))
    return score, score_err


def occupancy_verdict(score: np.ndarray, score_err: np.ndarray, *, threshold: float = 0.35, nsigma: float = 3.0,
                      max_err: float = 0.35, min_positions: int = 2) -> tuple[str, float, float]:
    """Static, moving or untestable, from the scores of a tracklet's positions.

    A mover leaves nothing behind (score 0); the lower median over the positions measured well
    enough (``score_err <= max_err``) decides, so that one position on another source (a mover
    crossing a star) does not: of two positions, both must stay occupied.  A static source is called when that median is both above
    ``threshold`` (PSF-model and overlap errors bias a bright mover's score by a few hundredths)
    and ``nsigma`` standard errors above 0 (a faint mover's scores are noisy).

    Parameters
    ----------
    score, score_err : ndarray (m,)
        From :func:`occupancy_scores`.
    threshold : float
        Smallest median score called static.
    nsigma : float
        Significance of the median's departure from 0 needed.
    max_err : float
        Positions with a larger score error are not used.
    min_positions : int
        Fewer usable positions: ``"untestable"`` (the tracklet is kept), except that a single usable position whose
        score exceeds twice ``threshold`` (and ``nsigma`` standard errors) is ``"static"``: two pieces of a
        diffraction spike at the detector's edge linked as a fast mover (one position measurable, 1.1 +- 0.04 of
        its light still there) were kept as untestable.

    Returns
    -------
    verdict : str
        ``"static"``, ``"moving"`` or ``"untestable"``.
    median, median_err : float
        The lower median score and its standard error (``1.2533 * rms(score_err) / sqrt(n)``); NaN when untestable.
    """
    score = np.asarray(score, float)
    score_err = np.asarray(score_err, float)
    good = np.isfinite(score) & np.isfinite(score_err) & (score_err <= max_err)
    n = int(good.sum())
    if n == 1 and min_positions > 1:
        # one position left (the others off the detector or too noisy): no median can outvote it, so only a
        # position that mostly still holds its light after the object moved on (twice the threshold) calls it static
        single, single_err = float(score[good][0]), float(score_err[good][0])
        if single > 2.0 * threshold and single > nsigma * single_err:
            return "static", single, single_err
    if n < min_positions:
        return "untestable", float("nan"), float("nan")
    med = float(np.sort(score[good])[(n - 1) // 2])  # the lower median: of two positions, the smaller
    med_err = 1.2533 * float(np.sqrt(np.mean(score_err[good] ** 2))) / np.sqrt(n)
    return ("static" if med > threshold and med > nsigma * med_err else "moving"), med, med_err


def shows_motion(median: float, median_err: float, *, threshold: float = 0.35, nsigma: float = 2.0) -> bool:
    """Whether an occupancy median (:func:`occupancy_verdict`) shows that the object left nothing behind: below
    ``threshold`` by ``nsigma`` standard errors, not merely not above it (what a doubtful tracklet needs to be
    confirmed: a faint galaxy strung with two unflagged hits had a median 0.32 +- 0.08, "moving").  False when NaN."""
    return bool(np.isfinite(median) and np.isfinite(median_err) and median + nsigma * median_err < threshold)


def missing_deficit(member_flux: np.ndarray, member_err: np.ndarray, predicted_flux: np.ndarray,
                    predicted_err: np.ndarray, *, scatter: float = 0.25) -> float:
    """How far below the tracklet's flux the pixels are where it should have been but was not detected.

    A tracklet with fewer detections than exposures predicts the object in the others; a real
    mover is there (perhaps just under the detection threshold, or hit by a cosmic ray that was
    masked), a chance alignment of noise peaks or cosmic-ray residues is not.

    Parameters
    ----------
    member_flux, member_err : ndarray (m,)
        Template fluxes [ADU] of the tracklet's detections (measured like the predictions).
    predicted_flux, predicted_err : ndarray (k,)
        Template fluxes at the predicted positions in the exposures without a detection (NaN: not measured).
    scatter : float
        Relative flux variation of a real mover between exposures beyond the noise.

    Returns
    -------
    float
        ``(F - f) / sqrt(err_F**2 + err_f**2 + (scatter F)**2)`` with ``F`` the members' mean and
        ``f`` the predictions' inverse-variance mean: large and positive when the object is missing
        where it should be.  NaN when nothing was measured.
    """
    mf = np.asarray(member_flux, float)
    me = np.asarray(member_err, float)
    ok = np.isfinite(mf) & np.isfinite(me) & (me > 0)
    pf = np.asarray(predicted_flux, float)
    pe = np.asarray(predicted_err, float)
    pok = np.isfinite(pf) & np.isfinite(pe) & (pe > 0)
    if not ok.any() or not pok.any():
        return float("nan")
    big_f = float(np.mean(mf[ok]))
    big_e = float(np.sqrt(np.sum(me[ok] ** 2))) / ok.sum()
    w = 1.0 / pe[pok] ** 2
    f = float(np.sum(w * pf[pok]) / np.sum(w))
    e = float(1.0 / np.sqrt(np.sum(w)))
    return (big_f - f) / float(np.sqrt(big_e**2 + e**2 + (scatter * big_f) ** 2))


def light_left_there(predicted_flux: np.ndarray, predicted_err: np.ndarray, there_flux: np.ndarray,
                     there_err: np.ndarray, *, nsigma: float = 3.0, fraction: float = 0.5) -> bool:
    """Whether the light measured where a tracklet was predicted (in an exposure without a detection of it) is
    there in the other exposures too, when the object was far from that spot: a source that stays (a faint star or
    galaxy whose centroids wandered into a slow "motion", a bright star's wing), not the object.

    The inverse-variance mean of ``there_flux`` (the predicted position measured in exposures where the object was
    at least :data:`STATIC_CHECK_FWHM` PSF FWHM from it) is at least ``nsigma`` times its error and ``fraction``
    of the inverse-variance mean of ``predicted_flux``.  False when either was not measured.  (Member 474: two
    doubtful tracklets of V 25-26 were confirmed by the light of a faint static source and of a V 16.7 star's wing
    16 px away.)

    Parameters
    ----------
    predicted_flux, predicted_err : ndarray
        The template's flux [ADU] and error at the predicted positions, in the exposures without a detection.
    there_flux, there_err : ndarray
        The same sky positions measured in the exposures with a detection (NaN where too close to the object).
    """
    def mean(f, e):
        f, e = np.asarray(f, float), np.asarray(e, float)
        ok = np.isfinite(f) & np.isfinite(e) & (e > 0)
        if not ok.any():
            return math.nan, math.nan
        w = 1.0 / e[ok] ** 2
        return float(np.sum(w * f[ok]) / np.sum(w)), float(1.0 / np.sqrt(np.sum(w)))

    pf, _ = mean(predicted_flux, predicted_err)
    tf, te = mean(there_flux, there_err)
    if not (np.isfinite(pf) and np.isfinite(tf)):
        return False
    return bool(tf >= nsigma * te and tf >= fraction * pf)


#: How far [PSF FWHM, plus half the trail] the object must have been from its predicted position in an exposure for
#: that exposure to tell what stays there (:func:`light_left_there`).
STATIC_CHECK_FWHM = 3.0


def missing_confirms(member_flux: np.ndarray, member_err: np.ndarray, predicted_flux: np.ndarray,
                     predicted_err: np.ndarray, *, scatter: float = 0.25, min_snr: float = 5.0,
                     max_deviation: float = 3.0) -> bool:
    """Whether the pixels where a tracklet should have been, in the exposures without a detection of it, show its
    light: a flux measured there (inverse-variance mean over those exposures) at least ``min_snr`` times its error
    and within ``max_deviation`` standard deviations of the members' (:func:`missing_deficit`, above or below: a
    star at the predicted position shows too much).  False when nothing was measured.

    Parameters
    ----------
    member_flux, member_err, predicted_flux, predicted_err : ndarray
        As for :func:`missing_deficit` [ADU].
    scatter : float
        Relative flux variation of a real mover between exposures beyond the noise.
    min_snr, max_deviation : float
        The significance needed, the agreement needed [standard deviations].
    """
    pf = np.asarray(predicted_flux, float)
    pe = np.asarray(predicted_err, float)
    pok = np.isfinite(pf) & np.isfinite(pe) & (pe > 0)
    if not pok.any():
        return False
    w = 1.0 / pe[pok] ** 2
    f = float(np.sum(w * pf[pok]) / np.sum(w))
    e = float(1.0 / np.sqrt(np.sum(w)))
    deviation = missing_deficit(member_flux, member_err, predicted_flux, predicted_err, scatter=scatter)
    return bool(f >= min_snr * e and np.isfinite(deviation) and abs(deviation) <= max_deviation)
