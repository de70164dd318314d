"""Separating what sits still from what moves.

Two tests, both over the whole sequence:

* **static on the sky** (stars, galaxies): a detection with counterparts at the
  same sky position in enough other exposures.  A counterpart counts when it
  lies within ``max(radius, 3 sigma)``; it is decisive on its own when the
  exposures are so far apart in time that an object at the slowest searched
  rate would have left that radius (so slow movers are judged over the full
  time span, not between neighbouring exposures only).  A detection whose
  counterparts line up with it into a significant motion of at least the
  slowest searched rate is not static: a slow mover matches itself in the
  neighbouring exposures (0.5"/h moves 0.15" between exposures 1100 s apart,
  within 3 sigma of a bright source's 0.04" errors), but a star's counterparts
  scatter about one position.
* **static on the detector** (hot pixels, bad columns not in the flag map):
  detections at the same CCD pixel in exposures whose pointings differ; on the
  sky such artefacts "move" by the dither offsets.
* **on a line** (:func:`on_lines`): detections on a satellite trail, a diffraction
  spike or a bleed trail of their own CCD image, or at its end, are pieces of it
  (a line's end is poorly located along it and wanders between exposures).

Positions are tangent-plane coordinates ``xi, eta`` [arcsec]; times in hours.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["static_on_sky", "static_on_detector", "on_lines", "occupied_elsewhere"]

#: In the motion test of :func:`static_on_sky`, the share of a detection's position variance that the part its
#: CCD's exposures share may remove at most.
MAX_SHARED_SHARE = 0.9


def static_on_sky(
    exposure: np.ndarray,
    t_hours: np.ndarray,
    xi: np.ndarray,
    eta: np.ndarray,
    sigma: np.ndarray,
    *,
    radius,
    min_matches: int,
    min_rate: float,
    max_sigma: float = 1.0,
    min_fraction: float = 0.0,
    shared: np.ndarray | None = None,
    group: np.ndarray | None = None,
    motion_significance: float = 0.0,
    report: dict | None = None,
    slack: np.ndarray | None = None,
) -> np.ndarray:
    """Flag detections of sources fixed on the sky.

    Parameters
    ----------
    exposure : ndarray (n,) int
        Exposure index of each detection.
    t_hours : ndarray (n,)
        Time of each detection [h] (any origin).
    xi, eta : ndarray (n,)
        Tangent-plane position [arcsec].
    sigma : ndarray (n,)
        1-sigma position uncertainty [arcsec].  A counterpart's error counts up to
        the detection's own: a poorly measured neighbour cannot make a precise
        detection static from afar.
    radius : float or ndarray (n,)
        Match radius [arcsec], per detection for extended sources (whose
        centroids jitter by a fraction of their size); a pair uses the larger.
    min_matches : int
        Other exposures with a counterpart needed to call a detection static.
    min_rate : float
        Slowest motion searched [arcsec/h].
    max_sigma : float
        Uncertainties are capped at this [arcsec] for the matching.
    min_fraction : float
        In long sequences a slow mover matches itself in the neighbouring exposures;
        a static source matches in most of them: at least this fraction of the other
        exposures must match (when more than ``min_matches``).
    shared : ndarray (n,), optional
        Part of ``sigma`` [arcsec] common to every exposure of the same ``group``
        (an uncorrected distortion of a CCD solved only through its corrected header
        moves a source the same way in every exposure): between two detections of one
        group it cancels, so the pair's variance is
        ``sigma_i**2 + sigma_j**2 - 2 * shared_i * shared_j``.
    group : ndarray (n,), optional
        Group (CCD) of each detection; needed with ``shared``.
    motion_significance : float
        A detection matched in enough exposures (but with no decisive match) is
        still moving when the weighted linear fit through it and its nearest
        counterpart per matched exposure gives a rate of at least ``min_rate``
        and at least this many times its uncertainty (0: no motion test).
    report : dict, optional
        Receives ``n_moving_matches``: detections the motion test kept off the
        static list.
    slack : ndarray (n,), optional
        How far [arcsec] each detection's centre may lie from its source's (a piece
        of a trailed star: anywhere along the part of the trail it lacks); a
        detection with some matches its counterparts within at least the sum of
        theirs (one without keeps its radius), and the motion test counts it in
        the detection's error.

    Returns
    -------
    ndarray (n,) bool
        True for static detections.
    """
    n = len(xi)
    static = np.zeros(n, bool)
    if n == 0:
        return static
    pos = np.column_stack([xi, eta])
    radius = np.broadcast_to(np.asarray(radius, float), (n,))
    slack = np.zeros(n) if slack is None else np.nan_to_num(np.asarray(slack, float))
    # one badly measured detection must not make its whole neighbourhood static
    sigma = np.minimum(np.nan_to_num(np.asarray(sigma, float), nan=max_sigma), max_sigma)
    exposures, exp_col = np.unique(exposure, return_inverse=True)
    reach = max(float(np.max(radius)), 2.0 * float(np.max(slack)), 3.0 * np.sqrt(2.0) * float(np.max(sigma)))
    # every pair of detections within reach at once (one tree over all exposures: O(n log n) whatever
    # the number of exposures), then the per-pair radius
    pairs = cKDTree(pos).query_pairs(reach, output_type="ndarray")
    matches = np.zeros(n, int)
    decisive = np.zeros(n, bool)
    moving = np.zeros(n, bool)
    if len(pairs):
        i, j = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]])
        other = exp_col[i] != exp_col[j]
        i, j = i[other], j[other]
        d = np.hypot(xi[j] - xi[i], eta[j] - eta[i])
        # a counterpart measured worse than the detection widens the match only as far as the detection's own
        # error (a blend's trail fit with a 1.2" error beside a slow V 20 mover, member 294); the poorly measured
        # one still matches the precise ones around it
        sigma_j = np.minimum(sigma[j], sigma[i])
        var = sigma[i] ** 2 + sigma_j**2
        if shared is not None:
            common = np.minimum(np.nan_to_num(np.asarray(shared, float)), sigma)
            same = np.asarray(group)[i] == np.asarray(group)[j]
            var = var - np.where(same, 2.0 * common[i] * np.minimum(common[j], sigma_j), 0.0)
        sig = np.sqrt(np.maximum(var, 0.0))
        # (the slack widens only the matches of a detection that has some itself: a piece with a slack of 1" must
        # not make a whole mover's trail static - member 365 at a 25 px drift lost a V 20.2 mover to such pieces)
        r = np.maximum(np.maximum(np.maximum(radius[i], radius[j]), np.where(slack[i] > 0, slack[i] + slack[j], 0.0)),
                       3.0 * sig)
        ok = d <= r
        i, j, r, sig, d = i[ok], j[ok], r[ok], sig[ok], d[ok]
        # one match per other exposure
        keys = np.unique(i * len(exposures) + exp_col[j])
        np.add.at(matches, keys // len(exposures), 1)
        # a mover at min_rate would be farther than the match radius plus 3 sigma
        far = min_rate * np.abs(np.asarray(t_hours, float)[j] - np.asarray(t_hours, float)[i]) > r + 3.0 * sig
        decisive[i[far]] = True
        if motion_significance > 0:
            # (a detection's slack counts in its error there: uniform over +-slack, slack / sqrt(3))
            moving = _significant_motion(i, j, d, exp_col, len(exposures), np.asarray(t_hours, float), xi, eta,
                                         np.hypot(sigma, slack / math.sqrt(3.0)), shared, group, min_rate,
                                         motion_significance)
    needed = max(min_matches, int(math.ceil(min_fraction * (len(exposures) - 1))))
    matched = matches >= needed
    static = (matched & ~moving) | decisive
    if report is not None:
        report["n_moving_matches"] = int(np.sum(matched & moving & ~decisive))
    return static


def _significant_motion(i, j, d, exp_col, n_exposures, t_hours, xi, eta, sigma, shared, group, min_rate, significance):
    """True where a detection and its nearest counterpart per other exposure fit a significant motion.

    ``i, j`` index the matched pairs (each pair in both orders), ``d`` their separations [arcsec].  The
    fit is the weighted least-squares line through detection ``i`` and its counterparts (positions
    relative to ``i``, times relative to it [h]); when all counterparts are of ``i``'s group, the ``shared``
    part of their errors cancels in a motion and is removed from every weight.  Moving: the
    rate is at least ``min_rate`` [arcsec/h] and at least ``significance`` times its uncertainty.
    """
    n = len(xi)
    if len(i) == 0:  # no pair matched at all (e.g. one exposure holds no detection)
        return np.zeros(n, bool)
    # the nearest counterpart per (detection, other exposure)
    key = i * n_exposures + exp_col[j]
    order = np.lexsort((d, key))
    key, i, j = key[order], i[order], j[order]
    first = np.r_[True, key[1:] != key[:-1]]
    i, j = i[first], j[first]
    var_i = sigma**2
    var_j = sigma[j] ** 2
    if shared is not None:
        # (only when every counterpart is of the detection's own group does its shared error cancel)
        common = np.minimum(np.nan_to_num(np.asarray(shared, float)), sigma)
        same = np.asarray(group)[i] == np.asarray(group)[j]
        all_same = np.bincount(i, ~same, n) == 0
        var_i = var_i - np.where(all_same, common**2, 0.0)
        var_j = var_j - np.where(same & all_same[i], common[j] ** 2, 0.0)
    # (a shared part is never taken as more than MAX_SHARED_SHARE of a variance: an error model that puts it all
    # in the shared part would make any offset significant)
    w_i = 1.0 / np.maximum(var_i, (1.0 - MAX_SHARED_SHARE) * sigma**2 + 1e-12)
    w_j = 1.0 / np.maximum(var_j, (1.0 - MAX_SHARED_SHARE) * sigma[j] ** 2 + 1e-12)
    dt = t_hours[j] - t_hours[i]
    dx, dy = xi[j] - xi[i], eta[j] - eta[i]
    # weighted sums over {i} and its counterparts (i itself sits at dt = dx = dy = 0)
    s0 = w_i + np.bincount(i, w_j, n)
    st = np.bincount(i, w_j * dt, n)
    stt = np.bincount(i, w_j * dt**2, n)
    sx, sy = np.bincount(i, w_j * dx, n), np.bincount(i, w_j * dy, n)
    stx, sty = np.bincount(i, w_j * dt * dx, n), np.bincount(i, w_j * dt * dy, n)
    det = s0 * stt - st**2
    fit = (np.bincount(i, minlength=n) >= 2) & (det > 0)
    safe = np.where(fit, det, 1.0)
    vx = (s0 * stx - st * sx) / safe
    vy = (s0 * sty - st * sy) / safe
    rate = np.hypot(vx, vy)
    rate_err = np.sqrt(s0 / safe)
    return fit & (rate >= min_rate) & (rate >= significance * rate_err)


def static_on_detector(
    exposure: np.ndarray,
    ccd: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    xi: np.ndarray,
    eta: np.ndarray,
    *,
    radius_px: float,
    min_sky_shift: float,
    min_partners: int = 2,
) -> np.ndarray:
    """Flag detections at the same CCD pixel in dithered exposures.

    Parameters
    ----------
    exposure, ccd : ndarray (n,)
        Exposure index and CCD name of each detection.
    x, y : ndarray (n,)
        Pixel position on its CCD [px, 0-based].
    xi, eta : ndarray (n,)
        Tangent-plane position [arcsec].
    radius_px : float
        Pixel match radius.
    min_sky_shift : float
        The pair only counts when its sky positions differ by more than this
        [arcsec] (i.e. the pointing moved); without dithers the sky test
        already catches fixed artefacts.
    min_partners : int
        Other exposures with a detection at the same pixel needed (capped at
        the number of other exposures); two make a chance alignment of a mover
        with the dither offsets negligible.

    Returns
    -------
    ndarray (n,) bool
        True for detector artefacts.
    """
    n = len(x)
    flagged = np.zeros(n, bool)
    if n == 0:
        return flagged
    partners: dict[int, set] = {}
    for name in np.unique(ccd):
        on = np.nonzero(ccd == name)[0]
        tree = cKDTree(np.column_stack([x[on], y[on]]))
        for a, b in tree.query_pairs(radius_px):
            ia, ib = on[a], on[b]
            if exposure[ia] == exposure[ib]:
                continue
            if np.hypot(xi[ia] - xi[ib], eta[ia] - eta[ib]) > min_sky_shift:
                partners.setdefault(ia, set()).add(exposure[ib])
                partners.setdefault(ib, set()).add(exposure[ia])
    n_exposures = np.unique(exposure).size
    needed = min(min_partners, n_exposures - 1)
    for i, exps in partners.items():
        if len(exps) >= needed:
            flagged[i] = True
    return flagged


def on_lines(exposure, ccd, x, y, lines, *, margin: float = 3.0) -> np.ndarray:
    """Flag detections lying on line-like detections (satellites, spikes, bleeds) of the same CCD image.

    Parameters
    ----------
    exposure, ccd, x, y : ndarray (n,)
        The detections: exposure index, CCD name, pixel position [px, 0-based].
    lines : dict
        ``(exposure, ccd)`` -> ndarray (m, 4) of the lines' centres ``x, y`` [px], half-lengths [px] and
        angles [rad, from +x towards +y].
    margin : float
        Distance [px] across a line, and beyond its ends along it, that still counts as on it.

    Returns
    -------
    ndarray (n,) bool
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    flagged = np.zeros(x.size, bool)
    keys = np.array([f"{e}/{c}" for e, c in zip(np.asarray(exposure), np.asarray(ccd).astype(str))])
    for (e, c), seg in lines.items():
        rows = np.nonzero(keys == f"{e}/{c}")[0]
        if rows.size == 0 or len(seg) == 0:
            continue
        seg = np.asarray(seg, float)
        dx = x[rows, None] - seg[None, :, 0]
        dy = y[rows, None] - seg[None, :, 1]
        cos, sin = np.cos(seg[:, 3]), np.sin(seg[:, 3])
        along = np.abs(dx * cos + dy * sin)
        across = np.abs(-dx * sin + dy * cos)
        flagged[rows] = np.any((along <= seg[:, 2] + margin) & (across <= margin), axis=1)
    return flagged


def occupied_elsewhere(
    members_exposure: np.ndarray,
    members_xi: np.ndarray,
    members_eta: np.ndarray,
    members_radius: np.ndarray,
    predicted: dict,
    trees: dict,
) -> float:
    """Fraction of a tracklet's positions that stay occupied after the object left.

    A moving object leaves its position empty in exposures taken when it was
    elsewhere; a static source that a linker strung into a "slow mover" (a
    galaxy whose centroid jitters between exposures) is still there.

    Parameters
    ----------
    members_exposure : ndarray (m,)
        Exposure index of each member.
    members_xi, members_eta : ndarray (m,)
        Member positions [arcsec].
    members_radius : ndarray (m,)
        Radius within which a detection counts as "the same source" [arcsec].
    predicted : dict
        Exposure index -> predicted (xi, eta) of the object in that exposure.
    trees : dict
        Exposure index -> cKDTree of every usable detection (moving or static)
        of that exposure.

    Returns
    -------
    float
        Over the (member, exposure) pairs where the object had moved more than
        two radii away, the fraction with a detection still at the member's
        position.  NaN when no such pair exists: the motion is not resolved
        against the size of the source, and cannot be told from centroid jitter.
    """
    tested = occupied = 0
    for e, x, y, r in zip(members_exposure, members_xi, members_eta, members_radius):
        for k, (px, py) in predicted.items():
            if k == e or k not in trees or np.hypot(px - x, py - y) <= 2.0 * r:
                continue
            tested += 1
            if trees[k].query_ball_point([x, y], r):
                occupied += 1
    return occupied / tested if tested else float("nan")
