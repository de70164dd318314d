"""Linking trails (fast movers) across exposures by hypotheses and a one-to-one assignment.

A trail of sky length ``L`` [arcsec] in an exposure of ``T`` seconds implies a rate ``L / T``
and a direction (its axis, sign unknown).  Two trails in different exposures are *consistent*
when the displacement between their centres agrees with both:

* its direction lies along both axes (within ``angle_tol`` plus each axis' uncertainty) and the
  axes agree with each other;
* its length divided by the time between them agrees with the trails' implied rates: neither
  trail is longer than the path allows, and at least one of them *measures* the rate: it is seen
  *whole* and its length matches the path two-sidedly (within ``rate_tol`` relative plus
  ``n_sigma`` times its length error).  A trail known to be shorter than the path (cut by the
  detector edge: ``whole`` False) or measured short (a fragment, a faint end lost, though never
  shorter than :data:`FRAGMENT_MIN_FRACTION` of the path) only bounds the rate from below, and two
  such trails are never a pair (they would join anything faster); a
  fragment's centre may lie anywhere along the part it lacks, so the displacement is tested with
  that slack (half the missing length, :meth:`_Trails.shortfall`), as are the seed's predictions
  into the other exposures and the line fit (an error along the motion only: across it a fragment's
  centre is as certain as a whole trail's);
* their fluxes per unit length agree within ``max_flux_ratio`` (a fragment holds the share of the
  flux its length is of the trail).

Every consistent pair (found with a k-d tree per exposure, within the reach its rate allows) seeds
a *hypothesis*: the line through the two centres is predicted into every other exposure and the
nearest trail there that is consistent with a seed joins it.  Each distinct hypothesis is
fitted with a straight line (trails cut by the edge carry their possible centre shift in their
error); while the line does not fit (reduced chi2 above ``max_chi2_dof``), or a member is longer
than the fitted motion allows, its worst member is dropped, down to ``min_exposures``.  A
hypothesis needs at least one whole member whose length matches the fitted motion; a chain of two
needs both (unless one is cut by the detector edge): a fragment joins only a longer chain.  Hypotheses are then assigned one-to-one: best first (more exposures,
then the lower combined chi-square of positions, rates and axes); a hypothesis that lost members to
a better one is refitted with what is left and competes again.  There is no cap on the number of
trails, pairs or hypotheses: the cost grows with the consistent pairs, not with a component size.
Positions in arcsec (tangent plane), times in hours.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from ssodetect.link.tracklets import Tracklet, fit_linear_motion, fit_linear_motion_along

__all__ = ["link_streaks", "StreakLinks"]


@dataclass
class StreakLinks:
    """Chains of trails and the bookkeeping of how they were found.

    Attributes
    ----------
    tracklets : list of Tracklet
        Members index the input arrays; no trail in two chains; in the order of their first member.
    stats : dict
        ``n_trails``, ``n_pairs_tested`` (trail pairs within reach), ``n_pairs`` (consistent pairs),
        ``n_hypotheses`` (distinct member sets evaluated), ``n_refitted`` (hypotheses refitted after
        losing members to a better one), ``n_chains``, ``n_linked`` (trails in a chain) and
        ``n_unlinked`` (the others; ``n_linked + n_unlinked == n_trails``).
    """

    tracklets: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def __iter__(self):
        return iter(self.tracklets)

    def __len__(self) -> int:
        return len(self.tracklets)


#: Shortest length [arcsec] a trail's flux is divided by for the flux test (a fragment barely longer than the PSF
#: holds more than its length's share: the PSF's own extent).
TRAIL_FLUX_FLOOR = 0.3


#: Shortest share of its path a trail not cut by the detector edge may be measured to be (a fragment: a faint end
#: lost, a piece split off by a star or masked pixels).  On members 451 and 459 (60 fast movers per CCD) and 456 the
#: true fast movers' whole trails were measured down to 0.18 of their paths (0.18, 0.22, 0.23, 0.30, ... of 393;
#: 0.28, 0.32, ... of 415; 0.28, 0.37, ... of 81); member 456's false object joined two noise trails of 13 px
#: (V 24.3-24.7), 0.023 of the path of a 554 px V 19.8 trail whose flux per unit length they matched: a fragment's
#: centre may lie anywhere along the part it lacks, so a short one agrees with any long trail nearby.
FRAGMENT_MIN_FRACTION = 0.1


def _axis_diff(a, b):
    d = np.abs(np.asarray(a, float) - np.asarray(b, float)) % 180.0
    return np.minimum(d, 180.0 - d)


class _Trails:
    """The per-trail arrays and the pair test shared by the hypothesis steps."""

    def __init__(self, exposure, t_hours, xi, eta, sigma, length, pa, exptime, flux, whole, length_sigma, axis_sigma,
                 cut_pa, rate_tol, length_err, max_flux_ratio, angle_tol, n_sigma):
        self.exposure = np.asarray(exposure)
        self.t = np.asarray(t_hours, float)
        self.pos = np.column_stack([np.asarray(xi, float), np.asarray(eta, float)])
        self.sigma = np.asarray(sigma, float)
        self.length = np.asarray(length, float)
        self.pa = np.asarray(pa, float) % 180.0
        self.exptime_h = np.asarray(exptime, float) / 3600.0
        n = self.t.size
        self.flux = np.ones(n) if flux is None else np.asarray(flux, float)
        self.whole = np.ones(n, bool) if whole is None else np.asarray(whole, bool)
        # unit vector (xi, eta) from a cut trail's visible centre towards its cut end (zero when unknown)
        cut = np.full(n, np.nan) if cut_pa is None else np.asarray(cut_pa, float)
        known = np.isfinite(cut) & ~self.whole
        self.cut_dir = np.where(known[:, None], np.column_stack([np.sin(np.radians(np.nan_to_num(cut))),
                                                                 np.cos(np.radians(np.nan_to_num(cut)))]), 0.0)
        self.rate = self.length / self.exptime_h  # arcsec/h implied by the trail
        l_sig = np.zeros(n) if length_sigma is None else np.nan_to_num(np.asarray(length_sigma, float), nan=0.0)
        # the rate's own uncertainty: the measured length error and the PSF-limited ends
        self.rate_sigma = np.hypot(l_sig, length_err) / self.exptime_h
        # axis tolerance [deg]: n_sigma measured errors, or (unmeasured) the width of a trail over its length
        geometric = np.degrees(np.arctan2(0.3, np.maximum(self.length, 0.3)))
        measured = np.full(n, np.nan) if axis_sigma is None else np.asarray(axis_sigma, float)
        self.axis_err = angle_tol + np.where(np.isfinite(measured), n_sigma * measured, geometric)
        self.rate_tol = rate_tol
        self.n_sigma = n_sigma
        self.max_flux_ratio = max_flux_ratio

    def missing(self, k, speed):
        """Length [arcsec] of trail(s) ``k`` beyond the detector edge for an object moving at ``speed`` [arcsec/h]."""
        return np.where(self.whole[k], 0.0, np.maximum(speed * self.exptime_h[k] - self.length[k], 0.0))

    def shortfall(self, k, speed):
        """How much shorter than the path [arcsec] whole trail(s) ``k`` were measured for an object at ``speed``:
        a fragment (a faint end lost, a blend) whose centre may lie anywhere along the missing part.  No
        tolerance is taken off: a trail 10 % short passes the rate test, yet the part it lacks may all be at
        one end (a V~22.8 trail measured 85 of 103 px, its centre 0.8" off, was refused by a fit that gave it
        0.06"); a trail measured whole gets the slack of its length's noise only."""
        return np.where(self.whole[k], np.maximum(speed * self.exptime_h[k] - self.length[k], 0.0), 0.0)

    def centre(self, k, speed):
        """Mid-exposure position(s) of trail(s) ``k`` at ``speed``: a cut trail's centre moved half its missing
        length towards the cut end (unchanged when the cut end is unknown)."""
        return self.pos[k] + (0.5 * self.missing(k, speed))[..., None] * self.cut_dir[k]

    def rate_tests(self, k, moved):
        """For trail(s) ``k`` and a motion of ``moved`` [arcsec/h]: ``(plausible, measures_it)``.

        No trail may be longer than the motion allows, nor may a trail not cut by the edge be shorter than
        :data:`FRAGMENT_MIN_FRACTION` of the path (a fragment); a whole trail whose length matches the motion
        (two-sided) *measures* it.
        """
        tol = self.rate_tol * np.maximum(moved, self.rate[k]) + self.n_sigma * self.rate_sigma[k]
        plausible = (moved >= self.rate[k] - tol) & (~self.whole[k] | (
            self.rate[k] + self.n_sigma * self.rate_sigma[k] >= FRAGMENT_MIN_FRACTION * moved))
        return plausible, plausible & self.whole[k] & (moved <= self.rate[k] + tol)

    def consistent(self, i, js):
        """Boolean mask: which of the trails ``js`` are consistent with trail ``i`` (different exposures).

        Neither trail may be longer than the path between them, and at least one (the anchor) must be
        seen whole and measure the rate two-sidedly: a pair of shortened trails bounds the rate from below
        only and would join anything faster.  The other's centre, when cut by the edge, is first moved to
        where the anchor's rate puts the object's mid-exposure position.
        """
        js = np.asarray(js, np.int64)
        dt = self.t[js] - self.t[i]
        base = (self.exposure[js] != self.exposure[i]) & (dt != 0)
        dts = np.abs(np.where(base, dt, 1.0))
        # fluxes per unit length: a fragment carries the share of the flux that its length is of the trail
        li, lj = max(self.length[i], TRAIL_FLUX_FLOOR), np.maximum(self.length[js], TRAIL_FLUX_FLOOR)
        fi, fj = self.flux[i] / li, self.flux[js] / lj
        if fi > 0:
            base &= ~((fj > 0) & (np.maximum(fi, fj) > self.max_flux_ratio * np.minimum(fi, fj)))
        base &= _axis_diff(self.pa[i], self.pa[js]) <= self.axis_err[i] + self.axis_err[js]
        out = np.zeros(js.size, bool)
        for anchor_is_i in (True, False):
            if anchor_is_i:
                if not self.whole[i]:
                    continue
                d = self.centre(js, np.full(js.size, self.rate[i])) - self.pos[i]
                # the other, when a fragment, has its centre anywhere along the part it lacks
                slack = 0.5 * self.shortfall(js, np.full(js.size, self.rate[i]))
                rate = np.full(js.size, self.rate[i])
            else:
                d = self.pos[js] - self.centre(np.full(js.size, i), self.rate[js])
                slack = 0.5 * self.shortfall(np.full(js.size, i), self.rate[js])
                rate = self.rate[js]
            moved = np.hypot(d[:, 0], d[:, 1]) / dts
            # the motion within that slack closest to the anchor's rate
            moved = np.clip(rate, np.maximum(moved - slack / dts, 0.0), moved + slack / dts)
            short_i, measures_i = self.rate_tests(i, moved)
            short_j, measures_j = self.rate_tests(js, moved)
            direction = np.degrees(np.arctan2(d[:, 0], d[:, 1])) % 180.0
            ok = base & short_i & short_j & (measures_i if anchor_is_i else measures_j)
            ok &= _axis_diff(direction, self.pa[i]) <= self.axis_err[i]
            ok &= _axis_diff(direction, self.pa[js]) <= self.axis_err[js]
            out |= ok
        return out


def link_streaks(
    exposure: np.ndarray,
    t_hours: np.ndarray,
    xi: np.ndarray,
    eta: np.ndarray,
    sigma: np.ndarray,
    length: np.ndarray,
    pa: np.ndarray,
    exptime: np.ndarray,
    *,
    flux: np.ndarray | None = None,
    whole: np.ndarray | None = None,
    length_sigma: np.ndarray | None = None,
    axis_sigma: np.ndarray | None = None,
    cut_pa: np.ndarray | None = None,
    min_exposures: int = 2,
    rate_tol: float = 0.1,
    length_err: float = 0.25,
    max_flux_ratio: float = 3.0,
    angle_tol: float = 3.0,
    max_chi2_dof: float = 10.0,
    n_sigma: float = 3.0,
    match_floor: float = 0.3,
) -> StreakLinks:
    """Chains of consistent trails, assigned one-to-one.

    Parameters
    ----------
    exposure, t_hours, xi, eta, sigma : ndarray (n,)
        Exposure index, mid-exposure time [h], position [arcsec], positional error [arcsec].
    length, pa : ndarray (n,)
        Trail length on the sky [arcsec] and axis position angle [deg, 0-180].
    exptime : ndarray (n,)
        Exposure times [s].
    flux : ndarray (n,), optional
        Trail fluxes; linked trails' fluxes per unit length (lengths of at least ``TRAIL_FLUX_FLOOR``) must
        agree within ``max_flux_ratio``.
    whole : ndarray (n,) bool, optional
        False for trails known to be shorter than the object's path (cut by the detector edge,
        crossing masked pixels): their length only bounds the rate from below, and they are never
        the member seen whole that a chain needs.  Default: all whole.
    length_sigma : ndarray (n,), optional
        1-sigma error of each length [arcsec] (the trail fit's); added to ``length_err``.
    axis_sigma : ndarray (n,), optional
        1-sigma error of each axis [deg]; default: the trail's width (0.3") over its length.
    cut_pa : ndarray (n,), optional
        For trails that are not whole: position angle [deg, N through E] from the visible centre towards
        the cut end (NaN when unknown).  A cut trail's centre is then moved to the object's mid-exposure
        position for the motion tested (half its missing length towards the cut end).
    min_exposures : int
        Fewest exposures in a chain.
    rate_tol : float
        Relative rate tolerance (systematics of the length measurement).
    length_err : float
        Floor of the length uncertainty [arcsec] (PSF-limited ends).
    max_flux_ratio : float
        Largest ratio of fluxes per unit length between two linked trails.
    angle_tol : float
        Direction tolerance [deg], added to ``n_sigma`` axis errors.
    max_chi2_dof : float
        Largest reduced chi-square of the straight-line fit of a chain.
    n_sigma : float
        Tolerance of the length, axis and position tests in standard deviations.
    match_floor : float
        Floor of the prediction radius [arcsec] when a hypothesis collects trails in other exposures.

    Returns
    -------
    StreakLinks
        The chains (iterable like a list) and the bookkeeping ``stats``.
    """
    n = len(xi)
    stats = {"n_trails": n, "n_pairs_tested": 0, "n_pairs": 0, "n_hypotheses": 0, "n_refitted": 0, "n_chains": 0,
             "n_linked": 0, "n_unlinked": n}
    if n < 2:
        return StreakLinks([], stats)
    tr = _Trails(exposure, t_hours, xi, eta, sigma, length, pa, exptime, flux, whole, length_sigma, axis_sigma,
                 cut_pa, rate_tol, length_err, max_flux_ratio, angle_tol, n_sigma)
    exposures = np.unique(tr.exposure)
    groups = {e: np.nonzero(tr.exposure == e)[0] for e in exposures}
    trees = {e: cKDTree(tr.pos[idx]) for e, idx in groups.items()}
    times = {e: float(np.median(tr.t[idx])) for e, idx in groups.items()}
    # 1. consistent pairs: each needs a whole trail that measures the motion, so every pair is found from its
    # anchor's side: the trails of the other exposure within the reach the anchor's rate allows
    reach_rate = tr.rate * (1.0 + rate_tol) + n_sigma * tr.rate_sigma
    partners: dict[int, set] = {i: set() for i in range(n)}
    tested: set[tuple[int, int]] = set()
    for ea in exposures:
        ia = groups[ea][tr.whole[groups[ea]]]
        if ia.size == 0:
            continue
        for eb in exposures:
            if eb == ea:
                continue
            dt = abs(times[eb] - times[ea])
            # a cut partner's (or a fragment's) visible centre lies up to half the path it draws beyond its
            # mid-exposure position
            cut_slack = 0.5 * float(np.max(tr.exptime_h[groups[eb]]))
            radius = (reach_rate[ia] * (dt + cut_slack)
                      + n_sigma * (tr.sigma[ia] + float(np.max(tr.sigma[groups[eb]]))) + match_floor)
            near = trees[eb].query_ball_point(tr.pos[ia], radius)
            for i, local in zip(ia, near):
                if not local:
                    continue
                js = groups[eb][np.asarray(local, np.int64)]
                fresh = np.array([(min(i, j), max(i, j)) not in tested for j in js], bool)
                js = js[fresh]
                if js.size == 0:
                    continue
                tested.update((min(i, j), max(i, j)) for j in js.tolist())
                for j in js[tr.consistent(int(i), js)]:
                    partners[int(i)].add(int(j))
                    partners[int(j)].add(int(i))
    stats["n_pairs_tested"] = len(tested)
    stats["n_pairs"] = sum(len(p) for p in partners.values()) // 2
    # 2. hypotheses: each consistent pair predicted into the other exposures
    hypotheses: set[frozenset] = set()
    for i in range(n):
        for j in partners[i]:
            if j < i:
                continue
            members = {int(tr.exposure[i]): i, int(tr.exposure[j]): j}
            # the seed's motion from its centres (a cut member's moved to where the other's rate puts it)
            speed0 = tr.rate[i] if tr.whole[i] and not tr.whole[j] else tr.rate[j] if tr.whole[j] and not tr.whole[i] \
                else 0.5 * (tr.rate[i] + tr.rate[j])
            ci, cj = tr.centre(i, speed0), tr.centre(j, speed0)
            dt = tr.t[j] - tr.t[i]
            v = (cj - ci) / dt
            speed = float(np.hypot(*v))
            # a fragment among the seeds moves the predicted line by up to half the part it lacks
            seed_slack = 0.5 * tr.shortfall(np.array([i, j]), np.full(2, speed))
            for e in exposures:
                if int(e) in members:
                    continue
                f = (times[e] - tr.t[i]) / dt
                pred = ci + v * (times[e] - tr.t[i])
                sig_pred = math.hypot(tr.sigma[i] * (1.0 - f), tr.sigma[j] * f)
                seed_shift = abs(1.0 - f) * float(seed_slack[0]) + abs(f) * float(seed_slack[1])
                # a cut trail's visible centre lags by up to half the path
                slack = 0.5 * speed * float(np.max(tr.exptime_h[groups[e]])) + seed_shift
                local = trees[e].query_ball_point(pred, n_sigma * (sig_pred + float(np.max(tr.sigma[groups[e]])))
                                                  + match_floor + slack)
                if not local:
                    continue
                ks = groups[e][np.asarray(local, np.int64)]
                # consistent with a seed (two fragments of one trail never are with each other: no anchor)
                ks = np.array([k for k in ks if k in partners[i] or k in partners[j]], np.int64)
                if ks.size == 0:
                    continue
                dist = np.hypot(*(tr.centre(ks, np.full(ks.size, speed)) - pred).T)
                # a cut trail without a known cut direction may lie anywhere along its missing half
                shift = np.where(np.any(tr.cut_dir[ks] != 0, axis=1), 0.0, 0.5 * tr.missing(ks, speed))
                shift = shift + 0.5 * tr.shortfall(ks, speed)
                tol = n_sigma * np.hypot(sig_pred, tr.sigma[ks]) + match_floor + shift + seed_shift
                fits_ = dist <= tol
                if fits_.any():
                    members[int(e)] = int(ks[fits_][np.argmin((dist / tol)[fits_])])
            hypotheses.add(frozenset(members.values()))
    stats["n_hypotheses"] = len(hypotheses)
    # 3. evaluation and one-to-one assignment, best first
    heap = []
    for key in sorted(hypotheses, key=sorted):
        ev = _evaluate(sorted(key), tr, min_exposures, max_chi2_dof, len(heap))
        if ev is not None:
            heapq.heappush(heap, ev)
    used: set[int] = set()
    chains = []
    while heap:
        ev = heapq.heappop(heap)
        members = ev[-1].members
        if used.isdisjoint(members):
            chains.append(ev[-1])
            used.update(members)
            continue
        left = [k for k in members if k not in used]
        if len(left) >= min_exposures:
            stats["n_refitted"] += 1
            again = _evaluate(left, tr, min_exposures, max_chi2_dof, stats["n_hypotheses"] + stats["n_refitted"])
            if again is not None:
                heapq.heappush(heap, again)
    chains.sort(key=lambda trk: min(trk.members))
    stats["n_chains"] = len(chains)
    stats["n_linked"] = len(used)
    stats["n_unlinked"] = n - len(used)
    return StreakLinks(chains, stats)


def _fit(idx: np.ndarray, tr: _Trails, speed: float | None, direction=None):
    """Line fit of members ``idx``; cut members' centres moved for ``speed`` (their far end's uncertainty in
    their error; without a cut direction, their whole possible shift); fragments (whole trails measured short)
    carry the shift their centre may have along the missing part in their error, along ``direction`` (the
    motion's) only: across it a fragment's centre is as certain as a whole trail's
    (:func:`~ssodetect.link.tracklets.fit_linear_motion_along`).  Returns ``((params, cov, chi2, t_ref),
    normalised residuals, positions)``."""
    sigma, pos = tr.sigma[idx], tr.pos[idx]
    along = np.zeros(idx.size)
    if speed is not None:
        missing = tr.missing(idx, speed)
        known = np.any(tr.cut_dir[idx] != 0, axis=1)
        pos = tr.centre(idx, np.full(idx.size, speed))
        along = np.hypot(np.where(known, 0.25, 1.0 / math.sqrt(12.0)) * missing,
                         tr.shortfall(idx, speed) / math.sqrt(12.0))
    if direction is not None and np.all(np.isfinite(direction)) and np.hypot(*direction) > 0 and np.any(along > 0):
        *fit, normalised = fit_linear_motion_along(tr.t[idx], pos[:, 0], pos[:, 1], sigma, along, direction)
        return tuple(fit), normalised, pos
    sigma = np.hypot(sigma, along)
    params, cov, chi2, t_ref = fit_linear_motion(tr.t[idx], pos[:, 0], pos[:, 1], sigma)
    dt = tr.t[idx] - t_ref
    normalised = np.hypot(pos[:, 0] - params[0] - params[2] * dt, pos[:, 1] - params[1] - params[3] * dt) / sigma
    return (params, cov, chi2, t_ref), normalised, pos


def _evaluate(members, tr: _Trails, min_exposures: int, max_chi2_dof: float, serial: int):
    """Fit a hypothesis, dropping its worst members while the line does not fit; its heap entry or None.

    The entry sorts best first: more members, then the lower reduced combined chi-square (positions,
    the rates of the whole members against the fitted motion, and the axes against its direction);
    ``serial`` breaks the remaining ties deterministically.
    """
    idx = np.array(sorted(members, key=lambda k: tr.t[k]), np.int64)
    if len({int(e) for e in tr.exposure[idx]}) < idx.size:
        return None
    speed = None
    while True:
        (params, cov, chi2, t_ref), resid, pos = _fit(idx, tr, speed)
        moved = float(math.hypot(params[2], params[3]))
        for _ in range(3):  # again with the cut members' centres and errors at this speed, along this direction
            if speed is not None and abs(moved - speed) <= 0.01 * moved:
                break
            speed = moved
            (params, cov, chi2, t_ref), resid, pos = _fit(idx, tr, speed, params[2:4])
            moved = float(math.hypot(params[2], params[3]))
        dof = 2 * idx.size - 4
        fit_ok = dof <= 0 or chi2 / dof <= max_chi2_dof
        rates, measures = tr.rate_tests(idx, moved)
        if fit_ok and rates.all() and measures.any():
            break
        if idx.size <= min_exposures:
            return None
        # drop the worst member: one longer than the motion first, else the largest position residual
        resid = np.where(rates, resid, np.inf)
        if rates.all() and fit_ok:  # nothing measures the motion: no member is the odd one out
            return None
        idx = np.delete(idx, int(np.argmax(resid)))
        speed = None
    if idx.size == 2 and not np.all(measures | ~tr.whole[idx]):
        return None  # a pair with a fragment (a whole trail measured short) is too easily two unrelated trails
    direction = math.degrees(math.atan2(params[2], params[3])) % 180.0
    # every member's length against the motion (a shortened one scores as far as it falls short)
    rate_chi2 = float(np.sum(((tr.rate[idx] - moved) / np.hypot(tr.rate_sigma[idx], 0.5 * tr.rate_tol * moved)) ** 2))
    axis_chi2 = float(np.sum((_axis_diff(direction, tr.pa[idx]) / (tr.axis_err[idx] / tr.n_sigma)) ** 2))
    score = (chi2 + rate_chi2 + axis_chi2) / max(2 * idx.size - 4 + 2 * idx.size, 1)
    trk = Tracklet(tuple(int(k) for k in idx), params[0], params[1], params[2], params[3], cov, chi2, max(dof, 0), t_ref)
    return (-idx.size, score, int(idx[0]), serial, trk)
