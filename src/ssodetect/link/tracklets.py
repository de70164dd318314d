"""Linking detections that move linearly into tracklets.

Every pair of detections in two seed exposures whose implied motion lies in
the searched rate range seeds a hypothesis; it is propagated to every other
exposure (vectorised over the seeds), where the nearest detection within the
predicted uncertainty joins it.  Hypotheses with at least ``min_detections``
members are fitted with a weighted straight line in each tangent-plane
coordinate, the worst member dropped while the line does not fit, the line
propagated once more to collect what the seed's extrapolation missed, and kept
when the reduced chi-square, the fitted rate and the flux consistency pass.
Duplicates are resolved greedily: more detections first, then lower
chi-square; no detection belongs to two tracklets.

False alarms are controlled explicitly: the seeds tried are counted, the chance
detections expected within all predictions' tolerances summed (from the local
density of candidates), and each tracklet's chance probability (how likely
unrelated candidates line up as well as its members) times the number of seeds
that could have started it must stay below ``max_false_alarms``, the expected
number of chance tracklets the caller accepts.  With fluxes, only the seeds whose
two members both pass the tracklet's flux test count (a bright tracklet is not
started by a pair of faint noise peaks, so the many faint seeds do not dilute
its significance); without, every seed.

Seeds: every pair of exposures for short sequences; in long ones only pairs a
few exposures apart (see :func:`_seed_pairs`).  Cost for N exposures with n
candidates each and p partners within the rate reach: O(N g n p N log n) with
g the seed gap (O(N^2 n p N log n) for short sequences).  Positions in arcsec,
times in hours.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from ssodetect.streaks.field import axial_difference

__all__ = ["Tracklet", "SlowLinks", "detection_key", "fit_linear_motion", "fit_linear_motion_along", "link_tracklets", "trails_agree", "chance_probability", "flux_deviation",
           "flux_level", "compatible_seeds", "relative_sigma"]


@dataclass(frozen=True)
class Tracklet:
    """A linked set of detections.

    Attributes
    ----------
    members : tuple of int
        Indices into the candidate arrays, in time order.
    x0, y0 : float
        Position at ``t_ref`` [arcsec, tangent plane].
    vx, vy : float
        Motion [arcsec/h] (``vx`` to the East, ``vy`` to the North).
    cov : ndarray (4, 4)
        Covariance of ``(x0, y0, vx, vy)``.
    chi2 : float
        Chi-square of the fit.
    dof : int
        Degrees of freedom (2 n - 4).
    t_ref : float
        Reference time of the fit [h].
    """

    members: tuple
    x0: float
    y0: float
    vx: float
    vy: float
    cov: np.ndarray
    chi2: float
    dof: int
    t_ref: float

    @property
    def rate(self) -> float:
        """Total motion [arcsec/h]."""
        return float(np.hypot(self.vx, self.vy))

    @property
    def rate_err(self) -> float:
        r = self.rate
        if r == 0:
            return float(np.sqrt(0.5 * (self.cov[2, 2] + self.cov[3, 3])))
        g = np.array([self.vx / r, self.vy / r])
        return float(np.sqrt(g @ self.cov[2:, 2:] @ g))

    @property
    def position_angle(self) -> float:
        """Direction of motion [deg], from North through East."""
        return float(np.degrees(np.arctan2(self.vx, self.vy)) % 360.0)


def detection_key(table, k: int) -> tuple:
    """A detection's identity across tables of candidates and observations: ``(exposure, CCD, x, y)``, the pixels
    to 1e-3 px."""
    return (int(table["exposure"][k]), str(table["ccd"][k]), round(float(table["x"][k]), 3),
            round(float(table["y"][k]), 3))


def fit_linear_motion(t, x, y, sigma):
    """Weighted straight-line fit of ``x(t)``, ``y(t)``.

    Parameters
    ----------
    t : ndarray (n,)
        Times [h].
    x, y : ndarray (n,)
        Positions [arcsec].
    sigma : ndarray (n,)
        Per-point isotropic 1-sigma uncertainty [arcsec].

    Returns
    -------
    params : ndarray (4,)
        ``(x0, y0, vx, vy)`` at the weighted mean time ``t_ref``.
    cov : ndarray (4, 4)
    chi2 : float
    t_ref : float
    """
    w = 1.0 / np.asarray(sigma, float) ** 2
    t = np.asarray(t, float)
    t_ref = float(np.sum(w * t) / np.sum(w))
    dt = t - t_ref
    sw, swt2 = np.sum(w), np.sum(w * dt * dt)
    params = np.empty(4)
    cov = np.zeros((4, 4))
    chi2 = 0.0
    for k, v in enumerate((np.asarray(x, float), np.asarray(y, float))):
        p0 = np.sum(w * v) / sw
        vel = np.sum(w * dt * v) / swt2 if swt2 > 0 else 0.0
        params[k], params[k + 2] = p0, vel
        cov[k, k] = 1.0 / sw
        cov[k + 2, k + 2] = 1.0 / swt2 if swt2 > 0 else np.inf
        chi2 += float(np.sum(w * (v - p0 - vel * dt) ** 2))
    return params, cov, chi2, t_ref


def _line_1d(dt: np.ndarray, v: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted fit of ``v = p0 + p1 dt``: ``(p, cov (2, 2), chi2)``."""
    normal = np.array([[np.sum(w), np.sum(w * dt)], [np.sum(w * dt), np.sum(w * dt * dt)]])
    try:
        cov = np.linalg.inv(normal)
    except np.linalg.LinAlgError:  # one time only: no velocity
        cov = np.array([[1.0 / np.sum(w), 0.0], [0.0, np.inf]])
        p = np.array([np.sum(w * v) / np.sum(w), 0.0])
        return p, cov, float(np.sum(w * (v - p[0]) ** 2))
    p = cov @ np.array([np.sum(w * v), np.sum(w * dt * v)])
    return p, cov, float(np.sum(w * (v - p[0] - p[1] * dt) ** 2))


def fit_linear_motion_along(t, x, y, sigma, along, direction):
    """Straight-line fit of ``x(t)``, ``y(t)`` whose points are less certain along ``direction`` than across it.

    A trail fragment's centre may lie anywhere along the part of the trail it lacks: that uncertainty is
    along the motion only.  Spread over both axes (:func:`fit_linear_motion` with the combined error) it let a
    fragment 0.66" beside the line of two whole trails (14 times its own centroid error) join their chain, and the
    chain's predictions then missed the mover.  Here the positions are fitted in the frame of the motion: along it
    with ``hypot(sigma, along)``, across it with ``sigma``.

    Parameters
    ----------
    t, x, y, sigma : ndarray (n,)
        As :func:`fit_linear_motion`: times [h], positions [arcsec], isotropic 1-sigma uncertainties [arcsec].
    along : ndarray (n,)
        Per-point extra 1-sigma uncertainty along ``direction`` [arcsec].
    direction : (float, float)
        The motion's direction (any length but 0).

    Returns
    -------
    params, cov, chi2, t_ref
        As :func:`fit_linear_motion` (``cov`` with the correlations the two weightings leave), ``t_ref`` the time
        weighted by the across-track errors.
    normalised : ndarray (n,)
        Each point's residual in its own errors, ``hypot(r_along / s_along, r_across / s_across)``.
    """
    t, x, y = (np.asarray(v, float) for v in (t, x, y))
    sigma, along = np.asarray(sigma, float), np.asarray(along, float)
    direction = np.asarray(direction, float)
    if direction.shape != (2,) or not np.all(np.isfinite(direction)) or not np.any(direction != 0):
        raise ValueError(f"fit_linear_motion_along: direction must be two finite numbers, not both 0 ({direction})")
    if t.size == 0 or not (np.all(np.isfinite(sigma)) and np.all(sigma > 0) and np.all(np.isfinite(along))
                           and np.all(along >= 0)):
        raise ValueError("fit_linear_motion_along: points needed, errors > 0 and extra errors >= 0 (finite)")
    ux, uy = direction / float(np.hypot(*direction))
    s_along, s_across = np.hypot(sigma, along), sigma
    w_across = 1.0 / s_across**2
    t_ref = float(np.sum(w_across * t) / np.sum(w_across))
    dt = t - t_ref
    a, c = x * ux + y * uy, -x * uy + y * ux
    pa, cov_a, chi2_a = _line_1d(dt, a, 1.0 / s_along**2)
    pc, cov_c, chi2_c = _line_1d(dt, c, w_across)
    # back from (a0, c0, va, vc) to (x0, y0, vx, vy): x = a ux - c uy, y = a uy + c ux
    rot = np.array([[ux, -uy], [uy, ux]])
    big = np.zeros((4, 4))
    big[:2, :2] = big[2:, 2:] = rot
    params = big @ np.array([pa[0], pc[0], pa[1], pc[1]])
    cov_rot = np.zeros((4, 4))
    for (i, j), v in np.ndenumerate(cov_a):
        cov_rot[2 * i, 2 * j] = v
    for (i, j), v in np.ndenumerate(cov_c):
        cov_rot[2 * i + 1, 2 * j + 1] = v
    unmeasured = not np.all(np.isfinite(cov_rot[2:, 2:]))  # one time only: no velocity (0 * inf would be NaN)
    if unmeasured:
        cov_rot[2:, :] = cov_rot[:, 2:] = 0.0
    cov = big @ cov_rot @ big.T
    if unmeasured:  # as fit_linear_motion: the positions' variances, the velocity's unbounded
        cov[2, 2] = cov[3, 3] = np.inf
    normalised = np.hypot((a - pa[0] - pa[1] * dt) / s_along, (c - pc[0] - pc[1] * dt) / s_across)
    return params, cov, chi2_a + chi2_c, t_ref, normalised


def link_tracklets(
    exposure: np.ndarray,
    t_hours: np.ndarray,
    xi: np.ndarray,
    eta: np.ndarray,
    sigma: np.ndarray,
    flux: np.ndarray,
    flux_err: np.ndarray,
    *,
    min_rate: float,
    max_rate: float,
    min_detections: int = 3,
    match_sigma: float = 4.0,
    match_floor: float = 0.03,
    max_chi2_dof: float = 4.0,
    max_flux_ratio: float = 4.0,
    min_rate_significance: float = 5.0,
    min_fraction: float = 0.5,
    max_false_alarms: float | None = None,
    flux_scatter: float = 0.25,
    shared: np.ndarray | None = None,
    group: np.ndarray | None = None,
    seed: np.ndarray | None = None,
    doubtful_factor: float = 0.0,
    trail: np.ndarray | None = None,
) -> "SlowLinks":
    """Link candidate detections into tracklets of linear motion.

    Parameters
    ----------
    exposure : ndarray (n,) int
        Exposure index of each candidate.
    t_hours : ndarray (n,)
        Mid-exposure time of each candidate [h].
    xi, eta : ndarray (n,)
        Tangent-plane position [arcsec].
    sigma : ndarray (n,)
        Isotropic position uncertainty [arcsec].
    flux, flux_err : ndarray (n,)
        Flux and uncertainty (any unit).
    min_rate, max_rate : float
        Searched motion range [arcsec/h].
    min_detections : int
        Detections (distinct exposures) needed.
    match_sigma, match_floor : float
        Prediction tolerance: ``match_sigma * sigma_combined + match_floor`` [arcsec].
    max_chi2_dof : float
        Largest accepted reduced chi-square.
    max_flux_ratio : float
        Largest accepted ratio between member fluxes (after allowing 3 sigma).
    flux_scatter : float
        Relative scatter of a mover's flux between exposures beyond its noise: a member whose flux
        lies more than 3 standard deviations (noise and this scatter combined) from the others' mean is
        dropped (or the tracklet refused when it cannot lose a member).
    min_rate_significance : float
        The fitted rate must exceed this many times its uncertainty.
    min_fraction : float
        A tracklet must be detected in at least this fraction of the exposures
        within its time span (in long sequences, three chance alignments
        spread over many exposures are not an object).
    max_false_alarms : float, optional
        Expected number of chance tracklets the call may accept (see :func:`chance_probability`):
        a tracklet is kept when the number of seeds that could have started it (both members within
        its flux test: :func:`compatible_seeds`) times its chance probability is at most this.  None:
        no such test.
    shared : ndarray (n,), optional
        Part of ``sigma`` [arcsec] common to every detection of the same ``group`` (a CCD's exposures
        registered onto one placement share its error): it shifts all members of a tracklet within one
        group alike, which the fitted position absorbs and the fitted rate never sees, so such a
        tracklet is fitted (and its chance probability measured) with ``sqrt(sigma**2 - shared**2)``;
        one spanning groups with the full ``sigma``.
    group : ndarray (n,), optional
        Group (CCD) of each detection; needed with ``shared``.
    doubtful_factor : float
        A tracklet refused by the false-alarm control whose expected chance count is at most this many times
        ``max_false_alarms`` is returned among ``doubtful`` (not accepted: for a check on the pixels where it
        should have been seen and was not detected).  0: none.
    seed : ndarray (n,) bool, optional
        Detections that may seed a hypothesis (default: all).  The others (detections the detector edge cut, their
        errors widened) may only join one: a tracklet keeps at least ``max(2, min_detections - 1)`` seeding
        members (``n_rejected_weak`` counts those refused).
    trail : ndarray (n, 4), optional
        Each detection's trail as a motion: ``rate`` implied by its length over its exposure [arcsec/h], its error,
        the position angle of its axis [deg, East of North] and its error; NaN rate for detections that are no
        trail.  A non-seeding trail whose rate and axis agree (:func:`trails_agree`) with a seeding trail and with
        their pair's motion seeds with it, and counts as seeding in a tracklet whose fitted motion it and a seeding
        member agree with: a trail whose end lies near the detector edge (not clear of it, so possibly cut) is whole
        when it is as long as the mover's other trails (``n_seeds_by_trail`` counts those pairs).

    Returns
    -------
    SlowLinks
        Disjoint tracklets, best first (iterable like a list; empty when nothing links), and ``stats``:
        ``n_seeds`` (seed pairs tried), ``n_hypotheses`` (distinct member sets that passed the fit), ``expected_chance`` (chance detections expected within the
        prediction tolerances of all seeds: the chance 3-detection hypotheses before any fit),
        ``chance_threshold`` (largest accepted chance probability of a tracklet every seed could have
        started, ``max_false_alarms / n_seeds``; a brighter one's is ``max_false_alarms`` over its
        compatible seeds: by the union bound, at most ``max_false_alarms`` chance tracklets are expected
        to pass), ``expected_false_accepted`` (the sum of the accepted tracklets' expected chance
        counts), ``n_rejected_false_alarm`` and ``n_doubtful`` (of those, the tracklets returned as ``doubtful``:
        disjoint from the accepted ones and from each other, best first).
    """
    n = len(xi)
    stats = {"n_seeds": 0, "expected_chance": 0.0, "chance_threshold": None, "n_hypotheses": 0,
             "n_rejected_false_alarm": 0, "n_rejected_weak": 0, "n_doubtful": 0, "n_seeds_by_trail": 0}
    if n == 0:
        return SlowLinks([], stats)
    pos = np.column_stack([xi, eta])
    exposures = np.unique(exposure)
    if exposures.size < min_detections:
        return SlowLinks([], stats)
    sigma = np.asarray(sigma, float)
    seed = np.ones(n, bool) if seed is None else np.asarray(seed, bool)
    trail = np.full((n, 4), np.nan) if trail is None else np.asarray(trail, float)
    half = ~seed & np.isfinite(trail[:, 0])  # may seed beside a seeding trail that agrees
    min_strong = max(2, min_detections - 1)
    sigma_rel, gid = relative_sigma(sigma, shared, group)
    groups = {e: np.nonzero(exposure == e)[0] for e in exposures}
    trees = {e: cKDTree(pos[idx]) for e, idx in groups.items()}
    times = np.array([float(np.median(t_hours[groups[e]])) for e in exposures])
    # the seeds' largest error sets the reach and the tolerance of the predictions (a non-seeding detection's wider
    # error does not widen them: it is admitted within that tolerance and its own, and by _regrow within its own)
    sig_max = float(np.max(sigma[seed])) if np.any(seed) else float(np.max(sigma))
    hypotheses: dict[frozenset, Tracklet] = {}
    weak_keys: set[frozenset] = set()
    seed_flux: list[np.ndarray] = []
    evaluate = dict(min_rate=min_rate, max_rate=max_rate, max_chi2_dof=max_chi2_dof, max_flux_ratio=max_flux_ratio,
                    min_rate_significance=min_rate_significance, min_detections=min_detections,
                    flux_scatter=flux_scatter, sigma_rel=sigma_rel, gid=gid)
    for c1, c2 in _seed_pairs(exposures.size, min_fraction):
        e1, e2 = exposures[c1], exposures[c2]
        dt = times[c2] - times[c1]
        if dt <= 0:
            continue
        reach = max_rate * dt + match_sigma * np.sqrt(2.0) * sig_max + match_floor
        near = trees[e1].query_ball_tree(trees[e2], reach)
        counts = np.array([len(b) for b in near])
        if counts.sum() == 0:
            continue
        ia = np.repeat(groups[e1], counts)
        ib = groups[e2][np.concatenate([np.asarray(b, int) for b in near if b])]
        v = (pos[ib] - pos[ia]) / dt
        speed = np.hypot(v[:, 0], v[:, 1])
        speed_tol = match_sigma * np.hypot(sigma[ia], sigma[ib]) / dt
        in_range = (speed <= max_rate + speed_tol) & (speed >= min_rate - speed_tol)
        ok = in_range & seed[ia] & seed[ib]
        by_trail = np.nonzero(in_range & ((seed[ia] & half[ib]) | (half[ia] & seed[ib])))[0]
        if by_trail.size:
            a, b = ia[by_trail], ib[by_trail]
            v_err = np.hypot(sigma[a], sigma[b]) / dt
            agree = (trails_agree(v[by_trail], v_err, trail[a]) & trails_agree(v[by_trail], v_err, trail[b])
                     & _rates_agree(trail[a], trail[b]))
            ok[by_trail[agree]] = True
            stats["n_seeds_by_trail"] += int(agree.sum())
        ia, ib, v = ia[ok], ib[ok], v[ok]
        if ia.size == 0:
            continue
        stats["n_seeds"] += int(ia.size)
        seed_flux.append(np.column_stack([flux[ia], flux_err[ia], flux[ib], flux_err[ib]]))
        members = np.full((ia.size, exposures.size), -1, dtype=np.int64)
        members[:, c1], members[:, c2] = ia, ib
        for c3, e3 in enumerate(exposures):
            if c3 in (c1, c2):
                continue
            f = (times[c3] - times[c1]) / dt
            pred = pos[ia] + v * (times[c3] - times[c1])
            sig_pred = np.hypot(sigma[ia] * (1.0 - f), sigma[ib] * f)
            tol = match_sigma * np.hypot(sig_pred, sig_max) + match_floor
            stats["expected_chance"] += float(np.sum(np.pi * tol**2 * _local_density(trees[e3], pred)))
            d, k = trees[e3].query(pred, k=1)
            cand = groups[e3][np.minimum(k, groups[e3].size - 1)]
            hit = (d <= tol) & (d <= match_sigma * np.hypot(sig_pred, sigma[cand]))
            members[hit, c3] = cand[hit]
        found = members >= 0
        count = found.sum(axis=1)
        first = np.argmax(found, axis=1)
        last = exposures.size - 1 - np.argmax(found[:, ::-1], axis=1)
        keep = (count >= min_detections) & (count >= min_fraction * (last - first + 1))
        for row in np.nonzero(keep)[0]:
            key = frozenset(int(m) for m in members[row][found[row]])
            if key in hypotheses or key in weak_keys:
                continue
            trk = _evaluate(key, t_hours, xi, eta, sigma, flux, flux_err, **evaluate)
            if trk is not None:
                trk = _regrow(trk, exposures, groups, trees, times, pos, sigma, t_hours, xi, eta, flux, flux_err,
                              match_sigma, match_floor, evaluate)
            if trk is not None and _n_strong(trk, seed, half, trail) < min_strong:
                weak_keys.add(key)
                stats["n_rejected_weak"] += 1
                continue
            if trk is not None and len(trk.members) >= min_fraction * _spanned(
                exposures, {int(exposure[i]): i for i in trk.members}
            ):
                hypotheses[key] = trk
    stats["n_hypotheses"] = len(hypotheses)
    ranked = sorted(hypotheses.values(), key=lambda t: (-len(t.members), t.chi2 / max(t.dof, 1)))
    if max_false_alarms is not None and stats["n_seeds"]:
        stats["chance_threshold"] = float(max_false_alarms) / stats["n_seeds"]
    seeds = np.concatenate(seed_flux) if seed_flux else np.zeros((0, 4))
    used: set[int] = set()
    accepted = []
    expected = []
    refused = []
    for trk in ranked:
        if not used.isdisjoint(trk.members):
            continue
        if stats["chance_threshold"] is not None:
            trials = compatible_seeds(trk, seeds, flux, flux_err, flux_scatter)
            n_false = trials * chance_probability(trk, exposure, t_hours, xi, eta, sigma, trees, groups, flux=flux,
                                                  flux_err=flux_err, flux_scatter=flux_scatter,
                                                  sigma_rel=sigma_rel, gid=gid, trail=trail)
            if n_false > max_false_alarms:
                stats["n_rejected_false_alarm"] += 1
                if n_false <= doubtful_factor * max_false_alarms:
                    refused.append(trk)
                continue
            expected.append(n_false)
        accepted.append(trk)
        used.update(trk.members)
    if expected:
        stats["expected_false_accepted"] = float(np.sum(expected))
    doubtful = []
    for trk in refused:  # (in rank order) those sharing no detection with an accepted or a better doubtful one
        if used.isdisjoint(trk.members):
            doubtful.append(trk)
            used.update(trk.members)
    stats["n_doubtful"] = len(doubtful)
    return SlowLinks(accepted, stats, doubtful)


def compatible_seeds(trk: Tracklet, seeds: np.ndarray, flux: np.ndarray, flux_err: np.ndarray,
                     flux_scatter: float) -> int:
    """Seed pairs that could have started ``trk``: both members' fluxes pass its flux test.

    ``seeds`` (m, 4): flux and error of each seed's two members.  A pair of faint noise peaks cannot grow
    into a bright tracklet (its members would fail the flux test), so the trials a bright tracklet's chance
    probability is multiplied by are the bright seeds only.  At least 1.
    """
    if seeds.size == 0:
        return 1
    idx = np.asarray(trk.members)
    mean = flux_level(np.asarray(flux, float)[idx], np.asarray(flux_err, float)[idx], flux_scatter)
    ok_a = flux_deviation(seeds[:, 0], seeds[:, 1], flux_scatter, reference=mean) <= FLUX_NSIGMA
    ok_b = flux_deviation(seeds[:, 2], seeds[:, 3], flux_scatter, reference=mean) <= FLUX_NSIGMA
    return max(int(np.sum(ok_a & ok_b)), 1)


@dataclass
class SlowLinks:
    """Tracklets of :func:`link_tracklets` (iterable like a list), the linker's counts (``stats``) and the doubtful
    tracklets (refused by the false-alarm control by a small margin: ``doubtful_factor``)."""

    tracklets: list
    stats: dict
    doubtful: list = field(default_factory=list)

    def __iter__(self):
        return iter(self.tracklets)

    def __len__(self) -> int:
        return len(self.tracklets)

    def __getitem__(self, k):
        return self.tracklets[k]


#: Neighbours whose distance gives the local density of candidates (:func:`_local_density`).
DENSITY_NEIGHBOURS = 8


def _local_density(tree: cKDTree, points: np.ndarray, *, exclude_self: bool = False) -> np.ndarray:
    """Candidates per arcsec^2 around ``points`` (m, 2) from the distance to the k-th nearest one in ``tree``."""
    k = DENSITY_NEIGHBOURS + int(exclude_self)
    if tree.n < k:
        return np.full(len(points), tree.n / (np.pi * 3600.0**2))  # too few to tell: spread over a circle of 1 deg
    d, _ = tree.query(points, k=k)
    return DENSITY_NEIGHBOURS / (np.pi * np.maximum(d[:, -1], 1e-6) ** 2)


def relative_sigma(sigma: np.ndarray, shared, group) -> tuple[np.ndarray, np.ndarray | None]:
    """``sigma`` [arcsec] without the part ``shared`` within a group (``sqrt(sigma**2 - min(shared, sigma)**2)``),
    and each detection's group number (None, and ``sigma`` itself, without ``shared`` or ``group``)."""
    if shared is None or group is None:
        return sigma, None
    common = np.minimum(np.nan_to_num(np.asarray(shared, float)), sigma)
    gid = np.unique(np.asarray(group).astype(str), return_inverse=True)[1]
    return np.sqrt(np.maximum(sigma**2 - common**2, 0.0)), gid


def _member_sigma(idx: np.ndarray, sigma: np.ndarray, sigma_rel: np.ndarray | None, gid: np.ndarray | None) -> np.ndarray:
    """The uncertainties to fit members ``idx`` with: relative ones when they all lie in one group."""
    if sigma_rel is None or gid is None or np.any(gid[idx] != gid[idx[0]]):
        return sigma[idx]
    return sigma_rel[idx]


def chance_probability(trk: Tracklet, exposure, t_hours, xi, eta, sigma, trees: dict, groups: dict, *,
                       flux=None, flux_err=None, flux_scatter: float = 0.25, sigma_rel=None, gid=None,
                       trail=None) -> float:
    """Probability that chance detections line up as well as ``trk``'s members, given one seed pair.

    Two members define a line; each further member ``k`` lies at distance ``d_k`` from the line
    fitted to the other members (its prediction error), where an unrelated candidate falls with
    probability ``p_k = min(1, rho_k pi d_k^2)``; ``rho_k`` is the local density of candidates of its exposure
    around it (from the distance to the 8th nearest) times, with ``flux``, the fraction of that
    exposure's candidates whose flux could pass the tracklet's flux test (within 3 standard deviations
    of its mean flux: a bright tracklet is not mimicked by faint junk).  The product over all members but the two with the smallest ``p_k``
    (taken as the seed, which is conservative) is the probability that one seed of chance
    detections yields this tracklet; times the number of seeds tried it is the expected number of
    such chance tracklets.  The factors combine as independent uniform variates (the probability
    that their product is as small), so that a long tracklet is not made significant by the number
    of its factors alone.  ``sigma_rel, gid``: see :func:`link_tracklets` (``shared``).  With ``trail`` (see
    :func:`link_tracklets`), a member whose trail is what the tracklet's motion leaves (:func:`trails_agree`) is
    mimicked only by a candidate whose trail is too: its density is taken times the fraction of its exposure's
    candidates whose trails agree with the motion (a V 22.8 mover at 9.3"/h, three 15 px trails along its motion
    among 195,000 stars per square degree, had been refused as a possible chance alignment of points).
    """
    idx = np.asarray(trk.members)
    sigma = np.asarray(sigma, float).copy()
    sigma[idx] = _member_sigma(idx, sigma, sigma_rel, gid)
    # each member's distance from the line of the others (a fit's own residuals are shrunk by its leverage)
    d = np.empty(idx.size)
    for pos, k in enumerate(idx):
        rest = np.delete(idx, pos)
        p, _, _, t_ref = fit_linear_motion(t_hours[rest], xi[rest], eta[rest], sigma[rest])
        dt = t_hours[k] - t_ref
        d[pos] = math.hypot(xi[k] - p[0] - p[2] * dt, eta[k] - p[1] - p[3] * dt)
    r = np.maximum(d, 0.1 * sigma[idx])
    rho = np.array([_local_density(trees[exposure[k]], np.array([[xi[k], eta[k]]]), exclude_self=True)[0]
                    for k in idx])
    if flux is not None:
        f = np.asarray(flux, float)
        fe = np.zeros_like(f) if flux_err is None else np.nan_to_num(np.asarray(flux_err, float))
        w = 1.0 / np.maximum(fe[idx] ** 2 + (flux_scatter * float(np.median(f[idx]))) ** 2, 1e-300)
        mean = float(np.sum(w * f[idx]) / np.sum(w))
        for pos, k in enumerate(idx):
            others = groups[exposure[k]]
            compatible = flux_deviation(f[others], fe[others], flux_scatter, reference=mean) <= FLUX_NSIGMA
            rho[pos] *= max(float(np.mean(compatible)), 1.0 / others.size)
    if trail is not None:
        trail = np.asarray(trail, float)
        v, v_err = np.array([[trk.vx, trk.vy]]), trk.rate_err
        agree = trails_agree(np.repeat(v, idx.size, axis=0), np.full(idx.size, v_err), trail[idx])
        for pos, k in enumerate(idx):
            if agree[pos]:
                others = groups[exposure[k]]
                alike = trails_agree(np.repeat(v, others.size, axis=0), np.full(others.size, v_err), trail[others])
                rho[pos] *= max(float(np.mean(alike)), 1.0 / others.size)
    p = np.minimum(1.0, rho * np.pi * r**2)
    p = np.sort(p)[2:]
    return _product_probability(p) if p.size else 1.0


def _product_probability(p: np.ndarray) -> float:
    """Probability that ``k`` independent uniform variates have a product at most that of ``p`` (k values).

    For chance alignments each factor is uniform on [0, 1]; their product alone would grow more
    significant with every factor added, evidence or not: ``P(prod <= x) = x sum_{j<k} (-ln x)^j / j!``.
    """
    # in logs: a 60-exposure tracklet's product of 58 factors underflows to 0 (math domain error in log)
    log_x = -float(np.sum(np.log(np.clip(np.asarray(p, float), 1e-300, 1.0))))
    if log_x <= 0.0:
        return 1.0
    j = np.arange(len(p), dtype=float)
    terms = -log_x + j * math.log(log_x) - np.array([math.lgamma(v + 1.0) for v in j])
    top = float(terms.max())
    return min(1.0, math.exp(top) * float(np.sum(np.exp(terms - top))))


def _seed_pairs(n_exposures: int, min_fraction: float) -> list[tuple[int, int]]:
    """Pairs of exposure columns that seed hypotheses.

    Few exposures: every pair.  Long sequences: pairs at most ``g`` exposures apart,
    ``g = max(3, ceil(1 / min_fraction) + 1)``: an object detected in at least
    ``min_fraction`` of the exposures it spans has two detections that close, so no
    object is lost, and the cost grows as O(N) seeds instead of O(N^2).
    """
    gap = max(3, int(np.ceil(1.0 / max(min_fraction, 1e-3))) + 1)
    if n_exposures <= 2 * gap:
        return [(a, b) for a in range(n_exposures) for b in range(a + 1, n_exposures)]
    return [(a, b) for a in range(n_exposures) for b in range(a + 1, min(a + gap + 1, n_exposures))]


def trails_agree(v, v_err, trail) -> np.ndarray:
    """Whether trails are what motions ``v`` leave in their exposures: rate and axis within 3 sigma.

    Parameters
    ----------
    v : ndarray (m, 2)
        Motions [arcsec/h] (East, North).
    v_err : ndarray (m,)
        Their isotropic errors [arcsec/h].
    trail : ndarray (m, 4)
        ``rate`` [arcsec/h] the trail's length implies, its error, axis position angle [deg, East of North], its
        error (see :func:`link_tracklets`).

    Returns
    -------
    ndarray (m,) bool
        False where a trail has no rate, or a rate or axis without a finite error.
    """
    v = np.atleast_2d(np.asarray(v, float))
    speed = np.hypot(v[:, 0], v[:, 1])
    v_err = np.asarray(v_err, float)
    rate, rate_err, pa, pa_err = (trail[:, k] for k in range(4))
    axis = np.degrees(np.arctan2(v[:, 0], v[:, 1]))
    axis_err = np.degrees(np.arctan2(v_err, np.maximum(speed, 1e-9)))
    with np.errstate(invalid="ignore"):
        # (an infinite error agreed with every motion, a NaN one with none: neither measures a trail)
        measured = np.isfinite(rate) & np.isfinite(rate_err) & np.isfinite(pa) & np.isfinite(pa_err)
        return (measured & (np.abs(speed - rate) <= 3.0 * np.hypot(v_err, rate_err))
                & (axial_difference(axis, pa) <= 3.0 * np.hypot(axis_err, pa_err)))


def _rates_agree(a, b) -> np.ndarray:
    """Whether two trails (rows of ``trail``, see :func:`link_tracklets`) have the same rate and axis within 3
    sigma (a trail the detector edge cut is shorter than the mover's others)."""
    with np.errstate(invalid="ignore"):
        return ((np.abs(a[:, 0] - b[:, 0]) <= 3.0 * np.hypot(a[:, 1], b[:, 1]))
                & (axial_difference(a[:, 2], b[:, 2]) <= 3.0 * np.hypot(a[:, 3], b[:, 3])))


def _n_strong(trk, seed, half, trail) -> int:
    """A tracklet's seeding members, with the non-seeding trails that agree with its fitted motion and with one of
    its seeding trails (:func:`trails_agree`, :func:`_rates_agree`)."""
    members = np.array(trk.members, int)
    n = int(np.sum(seed[members]))
    weak = members[half[members]]
    strong_trails = members[seed[members] & np.isfinite(trail[members, 0])]
    if weak.size == 0 or strong_trails.size == 0:
        return n
    v = np.array([[trk.vx, trk.vy]])
    v_err = np.array([math.sqrt(max(0.5 * (trk.cov[2, 2] + trk.cov[3, 3]), 0.0))])
    strong_trails = strong_trails[trails_agree(v, v_err, trail[strong_trails])]  # (those the motion confirms)
    if strong_trails.size == 0:
        return n
    for k in weak:
        if trails_agree(v, v_err, trail[[k]])[0] and _rates_agree(trail[[k] * strong_trails.size],
                                                                  trail[strong_trails]).any():
            n += 1
    return n


def _regrow(trk, exposures, groups, trees, times, pos, sigma, t_hours, xi, eta, flux, flux_err, match_sigma,
            match_floor, evaluate):
    """Collect the detections along a fitted tracklet in every exposure and refit (a seed from two
    close exposures extrapolates poorly; the fitted line of all its members does not)."""
    for _ in range(2):
        members = []
        for c, e in enumerate(exposures):
            dt = times[c] - trk.t_ref
            pred = np.array([trk.x0 + trk.vx * dt, trk.y0 + trk.vy * dt])
            var = trk.cov[0, 0] + 2 * dt * trk.cov[0, 2] + dt * dt * trk.cov[2, 2]
            sig_pred = float(np.sqrt(max(var, 0.0)))
            d, k = trees[e].query(pred, k=1)
            idx = int(groups[e][min(k, groups[e].size - 1)])
            if d <= match_sigma * np.hypot(sig_pred, sigma[idx]) + match_floor:
                members.append(idx)
        if set(members) == set(trk.members) or len(members) < evaluate["min_detections"]:
            return trk
        grown = _evaluate(frozenset(members), t_hours, xi, eta, sigma, flux, flux_err, **evaluate)
        if grown is None or len(grown.members) < len(trk.members):
            return trk
        trk = grown
    return trk


def _spanned(exposures: np.ndarray, members: dict) -> int:
    """Exposures within the time span of a tracklet's members (``members`` keyed by exposure)."""
    first, last = min(members), max(members)
    return int(np.sum((exposures >= first) & (exposures <= last)))


#: A member's flux may differ from the tracklet's mean by this many standard deviations (its own error and the
#: ``flux_scatter`` systematic combined).
FLUX_NSIGMA = 3.0


def flux_deviation(f: np.ndarray, fe: np.ndarray, scatter: float, reference: float | None = None) -> np.ndarray:
    """Deviation of each flux from the weighted mean (or ``reference``) in standard deviations of
    ``sqrt(fe^2 + (scatter * median)^2)``: measurement noise plus the ``scatter`` a mover's flux shows
    between exposures (blends, cosmic-ray hits, rotation)."""
    f, fe = np.asarray(f, float), np.nan_to_num(np.asarray(fe, float))
    level = float(np.median(f)) if reference is None else float(reference)
    var = fe**2 + (scatter * abs(level)) ** 2
    if reference is None:
        level = flux_level(f, fe, scatter)
    return np.abs(f - level) / np.sqrt(np.maximum(var, 1e-300))


def flux_level(f: np.ndarray, fe: np.ndarray, scatter: float) -> float:
    """A tracklet's flux level: the mean of its members' fluxes weighted by ``1 / (fe^2 + (scatter * median)^2)``."""
    f, fe = np.asarray(f, float), np.nan_to_num(np.asarray(fe, float))
    w = 1.0 / np.maximum(fe**2 + (scatter * abs(float(np.median(f)))) ** 2, 1e-300)
    return float(np.sum(w * f) / np.sum(w))


def _flux_ratio_ok(f: np.ndarray, fe: np.ndarray, max_flux_ratio: float) -> bool:
    """Whether the brightest and faintest member fluxes agree within ``max_flux_ratio`` (after 3 sigma each)."""
    hi = float(np.max(f - 3.0 * fe))
    lo = float(np.min(f + 3.0 * fe))
    return lo > 0 and hi / lo <= max_flux_ratio


def _flux_outlyingness(f: np.ndarray) -> np.ndarray:
    """|log| of each flux over the median of the others' (a mover's one blend or fragment stands out)."""
    f = np.maximum(np.asarray(f, float), 1e-30)
    out = np.empty(f.size)
    for k in range(f.size):
        out[k] = abs(math.log(f[k] / float(np.median(np.delete(f, k)))))
    return out


def _evaluate(
    members, t_hours, xi, eta, sigma, flux, flux_err, *, min_rate, max_rate, max_chi2_dof, max_flux_ratio,
    min_rate_significance, min_detections=3, flux_scatter=0.25, sigma_rel=None, gid=None,
):
    """Fit a candidate set; while the line does not fit, or a member's flux does not agree with the others',
    drop the worst member (long sequences: one blend or one mis-assigned detection must not lose the object).
    Members all in one group are fitted with their relative uncertainties (``sigma_rel``)."""
    idx = np.array(sorted(members, key=lambda i: t_hours[i]))
    while True:
        sig = _member_sigma(idx, sigma, sigma_rel, gid)
        params, cov, chi2, t_ref = fit_linear_motion(t_hours[idx], xi[idx], eta[idx], sig)
        dof = 2 * idx.size - 4
        if chi2 / max(dof, 1) <= max_chi2_dof:
            off = flux_deviation(flux[idx], flux_err[idx], flux_scatter)
            ratio_ok = _flux_ratio_ok(flux[idx], flux_err[idx], max_flux_ratio)
            if np.all(off <= FLUX_NSIGMA) and ratio_ok:
                break
            if idx.size <= min_detections:
                return None
            if not ratio_ok:
                # one blend or fragment far fainter or brighter than the others pulls the mean towards itself
                # (within 3 sigma of it) but breaks the ratio: the member farthest from the others' median goes
                off = _flux_outlyingness(flux[idx])
            idx = np.delete(idx, int(np.argmax(off)))
            continue
        if idx.size <= min_detections:
            return None
        dt = t_hours[idx] - t_ref
        resid = np.hypot(xi[idx] - params[0] - params[2] * dt, eta[idx] - params[1] - params[3] * dt) / sig
        idx = np.delete(idx, int(np.argmax(resid)))
    rate = float(np.hypot(params[2], params[3]))
    rate_err = float(np.sqrt(0.5 * (cov[2, 2] + cov[3, 3])))
    if rate > max_rate + 2 * rate_err or rate < min_rate or rate < min_rate_significance * rate_err:
        return None
    return Tracklet(tuple(int(i) for i in idx), params[0], params[1], params[2], params[3], cov, chi2, dof, t_ref)
